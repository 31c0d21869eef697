//! One turn of the driver: queue what waits to be queued, submit, block
//! for as long as nothing waits for room, and hand the completions out.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ringfence::op::AsyncCancel;
use ringfence::{Completion, URingContext};

use super::{lock, Shared, TICK};
use crate::table::{Completed, CANCEL, DOORBELL};

impl Shared {
    /// How long this turn may block: `timeout`, but a tick at most while
    /// futures wait for room (see [`super::Room::driver_blocked`]) or
    /// cancellations wait to be queued.
    fn block_limit(&self, timeout: Option<Duration>, cancels_left: bool) -> Option<Duration> {
        let mut room = lock(&self.room);
        if cancels_left || !room.waiting.is_empty() {
            return Some(timeout.map_or(TICK, |timeout| timeout.min(TICK)));
        }
        room.driver_blocked = timeout.is_none();
        timeout
    }

    /// Queues the cancellations dropped futures asked for, as far as the
    /// ring has room; returns whether some are left for a later turn.
    fn queue_cancels(&self, ctx: &URingContext) -> bool {
        let mut cancels = lock(&self.cancels);
        while let Some(&key) = cancels.last() {
            match ctx.add(AsyncCancel::new(key), CANCEL) {
                Ok(()) => {
                    cancels.pop();
                }
                // Room comes with this turn's submit and completions.
                Err(_) => break,
            }
        }
        !cancels.is_empty()
    }

    /// One turn of the driver: submits what is queued, waits (for up to
    /// `timeout`, or until a completion or the doorbell) and hands the
    /// completions to their futures. Returns how many it handed over.
    pub(crate) fn turn(&self, timeout: Option<Duration>) -> ringfence::Result<usize> {
        let mut state = lock(&self.turn);
        let ctx = self.ctx();
        if !state.armed && state.doorbell_usable {
            // Multishot: one completion per ring, armed once.
            match ctx.add(self.doorbell.poll().multishot(), DOORBELL) {
                Ok(()) => state.armed = true,
                // Armed on a later turn; until then this turn waits a tick.
                Err(ringfence::Error::NoSpace) => {}
                Err(err) => return Err(err),
            }
        }
        let timeout = match (timeout, state.armed) {
            (timeout, true) => timeout,
            (timeout, false) => Some(timeout.map_or(TICK, |timeout| timeout.min(TICK))),
        };
        // SeqCst: see `kick`. Set before the cancellations are queued, so
        // that one asked for after that rings the doorbell.
        self.sleeping.store(true, Ordering::SeqCst);
        // Orders the store before the wait's (Acquire) load of the SQ tail:
        // SeqCst alone does not order a store before a later weaker load.
        std::sync::atomic::fence(Ordering::SeqCst);
        let cancels_left = self.queue_cancels(ctx);
        let timeout = self.block_limit(timeout, cancels_left);
        // The wait submits what is queued, then blocks.
        let reaped: ringfence::Result<Vec<Completion>> = match timeout {
            None => ctx.wait_completions().map(Iterator::collect),
            Some(timeout) => ctx.wait_timeout_completions(timeout).map(Iterator::collect),
        };
        self.sleeping.store(false, Ordering::SeqCst);
        lock(&self.room).driver_blocked = false;
        let reaped = reaped?;

        let mut wake = Vec::new();
        let mut release = Vec::new();
        {
            let mut table = lock(&self.table);
            for completion in &reaped {
                match completion.user_data() {
                    DOORBELL if !completion.more() => {
                        // The poll ended (a full completion ring ends a
                        // multishot poll): armed again next turn, unless
                        // refused (EACCES: the allowlist lacks PollAdd;
                        // EINVAL: a kernel before 5.13), then ticks.
                        state.armed = false;
                        state.doorbell_usable &= completion.result().is_ok();
                    }
                    DOORBELL | CANCEL => {}
                    key => match table.complete(key, completion.result()) {
                        Completed::Wake(waker) => wake.push(waker),
                        Completed::Release(keep, result) => release.push((keep, result)),
                        Completed::Nobody => {}
                    },
                }
            }
        }
        drop(state);
        // Outside the locks: dropping what an operation owned, and waking,
        // may run the caller's code.
        for (keep, result) in release {
            self.guarded(|| keep.abandoned(result));
        }
        for waker in wake {
            self.guarded(|| waker.wake());
        }
        self.made_room();
        Ok(reaped.len())
    }
}

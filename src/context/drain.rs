//! `close`, drop, and cancelling what is in flight.

use std::sync::atomic::Ordering;
use std::sync::PoisonError;
use std::time::Duration;

use super::completions::Completions;
use super::wait::Deadline;
use super::{is_errno, lock, URingContext};
use crate::abi::{Sqe, URingOperation};
use crate::error::{Error, Result};

/// How long drop waits for cancelled operations to finish before it gives up
/// and leaks their state.
const DROP_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one round of drain waits for completions before it looks
/// again (and cancels again what is still in flight).
const DRAIN_ROUND: Duration = Duration::from_millis(100);

/// How a drain ended.
enum Drained {
    /// Every operation completed: nothing is left in the kernel.
    All,
    /// This many were still in flight at the deadline.
    TimedOut(usize),
    /// This many were in flight on a ring that cannot cancel them.
    CannotCancel(usize),
}

impl URingContext {
    /// Cancels every operation in flight and waits for all of them to
    /// complete, for up to `timeout`; then closes the ring. Operations
    /// queued but never submitted are not carried out: they complete as
    /// nops. Completions reaped here are discarded.
    ///
    /// - `Ok(())`: the kernel is done with every operation; the memory
    ///   their iovecs pointed to may be reused.
    /// - [`Error::DrainTimedOut`]: some were still in the kernel at the
    ///   deadline. What they keep alive is leaked, and the memory their
    ///   iovecs point to must stay valid for the life of the process,
    ///   because the kernel may still write to it.
    /// - [`Error::CancelNotAllowed`]: the ring's allowlist lacks
    ///   `AsyncCancel` (or requires an SQE flag beyond `FIXED_FILE` and
    ///   `ASYNC`), so nothing could stop the operations still in
    ///   flight: close reaped what had already completed and leaked the
    ///   rest at once, without waiting for `timeout`.
    ///
    /// Dropping the context does the same with a 5 s timeout, without
    /// telling which way it went. In a child after `fork`, both leave the
    /// parent's operations alone.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ringfence::{EventType, URingContext};
    ///
    /// let ring = URingContext::new(8, None)?;
    /// // Nobody connects, so a poll for readable never fires on its own.
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// # use std::os::fd::AsRawFd;
    /// ring.add_poll_fd(listener.as_raw_fd(), EventType::Read, 1)?;
    /// ring.submit()?;
    /// ring.close(Duration::from_secs(1))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close(mut self, timeout: Duration) -> Result<()> {
        self.drain_or_leak(timeout)
    }

    /// Drains the ring, or leaks what the kernel may still use.
    fn drain_or_leak(&mut self, timeout: Duration) -> Result<()> {
        if self.check_process().is_err() {
            // A forked child's copy: the operations are the parent's, and
            // so is the memory the kernel uses for them; the child's copy of
            // that memory is never touched. Leave the ring alone, and take
            // no lock another thread of the parent may have held at fork.
            self.table_mut().forget_all();
            return Ok(());
        }
        let outcome = self.drain(timeout);
        // The kernel holds its own reference to a file once it has consumed
        // the SQE naming it, so leaking may close the files operations
        // held; but on an SQPOLL ring, SQEs still queued are read by the
        // kernel's thread on its own, and their descriptors must stay open
        // (and unreused) until the ring closes.
        let close_files = !(self.sqpoll && self.sq.queued().0 > 0);
        let mut leak = || self.table_mut().leak_all(close_files);
        match outcome {
            Drained::All => Ok(()),
            Drained::TimedOut(left) => {
                leak();
                Err(Error::DrainTimedOut(left))
            }
            Drained::CannotCancel(left) => {
                leak();
                Err(Error::CancelNotAllowed(left))
            }
        }
    }

    /// Reaps every completion in the CQ ring, discarding it (the
    /// operations are done); returns how many of the caller's operations
    /// are still in flight.
    fn discard_ready(&self) -> usize {
        Completions::new(self).for_each(drop);
        lock(&self.state).table.caller_ops()
    }

    /// Cancels every operation in flight and reaps completions until none
    /// is left, for up to `timeout` (at once on a ring that cannot cancel).
    ///
    /// A cancellation can come back without stopping its target (`ENOENT`
    /// while the target is still being issued, `EALREADY` while it runs), so
    /// each round cancels again whatever is still in flight and has no
    /// cancellation pending.
    ///
    /// `&mut self` is what makes this safe: no other thread holds the
    /// context, so no `io_uring_enter` runs but this one's, and no
    /// completions iterator is alive.
    fn drain(&mut self, timeout: Duration) -> Drained {
        // No iterator can be alive (`&mut self`), so completions claimed
        // and not yet yielded will never be: their operations are done.
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        state.table.release_all_claims(&self.claim_board);
        // Then the count is exact. With none of the caller's operations
        // left (an idle ring, or a drop after `close`), what may still be
        // queued or in the kernel is the context's own, which points at no
        // memory: nothing to wait for.
        if self.table_mut().caller_ops() == 0 {
            return Drained::All;
        }
        // An SQPOLL ring's kernel thread reads published SQEs on its own:
        // there, what is queued runs, and is cancelled like the rest.
        if !self.sqpoll {
            // SAFETY: `&mut self`: every enter goes through a `&self`
            // method, so none runs while this rewrites the queued SQEs, and
            // the ring has no SQPOLL thread (just checked).
            unsafe { lock(&self.state).sq.replace_queued_with_nops() };
        }
        let can_cancel = self.can_cancel.load(Ordering::Relaxed);
        let deadline = Deadline::after(if can_cancel { timeout } else { Duration::ZERO });
        loop {
            match self.submit() {
                // A disabled ring has never consumed an SQE: nothing is in
                // the kernel, and everything in flight can be released.
                Err(Error::Enter(e)) if is_errno(&e, libc::EBADFD) => {
                    let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
                    state.table.release_everything(&self.claim_board);
                    return Drained::All;
                }
                // Other failures are not fatal here: the deadline bounds us.
                _ => {}
            }
            // The queued operations, now nops, complete during the submit;
            // flush what the kernel holds back, then reap.
            let _ = self.poll_ring(Duration::ZERO);
            let left_in_flight = self.discard_ready();
            if left_in_flight == 0 {
                return Drained::All;
            }
            let left = deadline.left();
            if left.is_zero() {
                return if can_cancel {
                    Drained::TimedOut(left_in_flight)
                } else {
                    Drained::CannotCancel(left_in_flight)
                };
            }
            let targets = lock(&self.state).table.uncancelled();
            for target in targets {
                let cancel = Sqe::new(URingOperation::AsyncCancel);
                // May use the slot `add` leaves free (see `in_flight_cap`).
                if self
                    .queue_own(cancel, Some(target), self.in_flight_cap + 1)
                    .is_err()
                {
                    break; // No room: the next round submits and retries.
                }
            }
            // Send the cancellations now, and reap for the rest of the
            // round: a target whose cancellation came back (`EALREADY`
            // while it runs) is cancelled again next round, not at once.
            let _ = self.submit();
            let round = Deadline::after(left.min(DRAIN_ROUND));
            while !round.left().is_zero() {
                let _ = self.poll_ring(round.left());
                if self.discard_ready() == 0 {
                    return Drained::All;
                }
            }
        }
    }
}

impl URingContext {
    /// The op table, reached through `&mut self` without locking.
    fn table_mut(&mut self) -> &mut super::table::OpTable {
        &mut self
            .state
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .table
    }
}

impl Drop for URingContext {
    fn drop(&mut self) {
        // A leak is the safe outcome; `close` is for callers who must know.
        let _ = self.drain_or_leak(DROP_DRAIN_TIMEOUT);
    }
}

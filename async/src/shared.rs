//! What the driver and the futures share: the table of operations in
//! flight, the doorbell, the futures waiting for room, and one turn of the
//! driver, the one place that makes `io_uring_enter` calls and hands
//! completions to the futures waiting for them.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Duration;

use ringfence::op::Operation;
use ringfence::{URingAllowlist, URingContext, URingOperation};

use crate::doorbell::Doorbell;
use crate::error::not_allowed;
use crate::table::{Abandoned, InFlight, Key, Polled, Table};

mod turn;

/// How often a driver without a doorbell (the allowlist lacks `PollAdd`)
/// looks for newly queued operations.
const TICK: Duration = Duration::from_millis(1);

/// Places of the context's in-flight limit kept from the caller's
/// operations: the doorbell's poll, and one cancellation at a time (each
/// one frees its target, so the rest follow).
const RESERVED: usize = 2;

/// How long dropping the last handle waits for the kernel to finish the
/// operations still in flight (cancelled first) before leaking what they
/// own.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code panics while holding these locks with state half updated.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the driver and every future share.
pub(crate) struct Shared {
    /// `Some` until dropped.
    ctx: Option<URingContext>,
    allowlist: Option<URingAllowlist>,
    table: Mutex<Table>,
    pub(crate) doorbell: Doorbell,
    /// The driver's own state: one turn at a time.
    turn: Mutex<TurnState>,
    /// Set while the driver may be blocked in the kernel: the first add
    /// after that rings the doorbell.
    sleeping: AtomicBool,
    /// Futures waiting for room in the ring.
    room: Mutex<Room>,
    /// How many times the driver may have made room (each turn).
    room_epoch: AtomicU64,
    /// Set when the last handle is dropped: the driver thread exits.
    pub(crate) shutdown: AtomicBool,
    /// The last error a turn of the driver thread returned.
    pub(crate) last_error: Mutex<Option<io::Error>>,
    /// A panic of the caller's code run by a turn (see `guarded`).
    panicked: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// The most of the caller's operations in the kernel at once: the
    /// context's limit less room for the doorbell and a cancellation, so
    /// that a dropped future's operation can always be cancelled.
    max_in_kernel: usize,
    /// Dropped futures' operations to cancel, sent by the next turn.
    cancels: Mutex<Vec<Key>>,
    /// Registered buffers no [`FixedBuf`](crate::FixedBuf) holds.
    free_fixed: Mutex<Vec<u16>>,
}

#[derive(Default)]
struct Room {
    waiting: Vec<Waker>,
    /// The driver is (about to be) blocked with no time limit: the next
    /// future to wait for room rings the doorbell. While futures wait for
    /// room, the driver blocks a tick at most, so none waits longer for a
    /// room the driver's last submit made.
    driver_blocked: bool,
}

struct TurnState {
    /// The doorbell's poll is in the ring.
    armed: bool,
    /// The ring runs the doorbell's poll (its allowlist allows `PollAdd`).
    doorbell_usable: bool,
}

/// How [`Shared::start`] went.
pub(crate) enum Start<S> {
    InFlight(Key),
    /// No room in the ring: the future waits for the driver to make some.
    NoRoom(Box<S>),
    Failed(Box<S>, io::Error),
}

impl Shared {
    pub(crate) fn new(
        ctx: URingContext,
        allowlist: Option<URingAllowlist>,
        doorbell: Doorbell,
    ) -> Shared {
        let doorbell_usable = allowlist.as_ref().map_or(true, |list| {
            list.allows_submit_operation(URingOperation::PollAdd)
        });
        // Highest index last: `pop` hands out buffer 0 first.
        let registered = u16::try_from(ctx.registered_buffers()).unwrap_or(u16::MAX);
        let free_fixed = (0..registered).rev().collect();
        let max_in_kernel = ctx.max_in_flight().saturating_sub(RESERVED).max(1);
        Shared {
            max_in_kernel,
            cancels: Mutex::default(),
            ctx: Some(ctx),
            allowlist,
            table: Mutex::default(),
            doorbell,
            turn: Mutex::new(TurnState {
                armed: false,
                doorbell_usable,
            }),
            sleeping: AtomicBool::new(false),
            room: Mutex::default(),
            room_epoch: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
            last_error: Mutex::default(),
            panicked: Mutex::default(),
            free_fixed: Mutex::new(free_fixed),
        }
    }

    fn ctx(&self) -> &URingContext {
        self.ctx
            .as_ref()
            .expect("the context lives until the driver is dropped")
    }

    /// Whether the ring's allowlist (if it has one) allows `op`.
    fn allows(&self, op: URingOperation) -> bool {
        self.allowlist
            .as_ref()
            .map_or(true, |list| list.allows_submit_operation(op))
    }

    /// Wakes the driver if it is blocked in the kernel.
    fn kick(&self) {
        // SeqCst, pairing with the store in `turn`: either this swap sees
        // the driver asleep, or the driver's next submit (which takes the
        // context's lock after this thread's add released it) sees the
        // operation queued.
        // The fence orders this thread's publication of the SQ tail (a
        // Release store) before the swap, as the driver's fence orders its
        // store of `sleeping` before its load of the tail.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.sleeping.swap(false, Ordering::SeqCst) {
            self.doorbell.ring();
        }
    }

    pub(crate) fn room_epoch(&self) -> u64 {
        self.room_epoch.load(Ordering::SeqCst)
    }

    /// Wakes `waker` once the driver may have made room, or at once if it
    /// may have since `epoch`.
    pub(crate) fn wait_for_room(&self, epoch: u64, waker: &Waker) {
        let ring = {
            let mut room = lock(&self.room);
            // One waker per future, however often it is polled meanwhile.
            if !room.waiting.iter().any(|queued| queued.will_wake(waker)) {
                room.waiting.push(waker.clone());
            }
            std::mem::take(&mut room.driver_blocked)
        };
        if ring {
            self.doorbell.ring();
        }
        // Pairs with `made_room`: a turn that took the list before the
        // push above has moved the epoch.
        if self.room_epoch.load(Ordering::SeqCst) != epoch {
            waker.wake_by_ref();
        }
    }

    fn made_room(&self) {
        self.room_epoch.fetch_add(1, Ordering::SeqCst);
        let waiting = std::mem::take(&mut lock(&self.room).waiting);
        for waker in waiting {
            self.guarded(|| waker.wake());
        }
    }

    /// Runs the caller's code (a waker, a buffer's drop, on the driver's
    /// thread) so that a panic in it neither stops the driver nor loses
    /// the wakes after it; the first panic is kept for [`take_panic`](Self::take_panic).
    fn guarded(&self, f: impl FnOnce()) {
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            lock(&self.panicked).get_or_insert(panic);
        }
    }

    /// The first panic of the caller's code a turn caught, if any.
    pub(crate) fn take_panic(&self) -> Option<Box<dyn std::any::Any + Send>> {
        lock(&self.panicked).take()
    }

    /// Queues `spec`'s operation, which owns what the kernel will use, under
    /// a new key; the driver's next turn submits it.
    pub(crate) fn start<S: crate::op::OpSpec>(&self, mut spec: Box<S>, waker: &Waker) -> Start<S> {
        let opcode = <S::Kernel as Operation>::OPCODE;
        if !self.allows(opcode) {
            return Start::Failed(spec, not_allowed(opcode));
        }
        // SAFETY: `spec` stays in its box, untouched, from here until the
        // kernel is done with the operation: the box moves into the table
        // below and leaves it only through `remove_unsubmitted` (the add
        // failed, so the kernel never saw the operation), `Table::poll`
        // (its completion arrived), `Completed::Release` (likewise), or not
        // at all (the table is leaked when the ring cannot be drained).
        let op = match unsafe { spec.kernel_op() } {
            Ok(op) => op,
            Err(err) => return Start::Failed(spec, err.into()),
        };
        let inserted = lock(&self.table).insert(spec, waker.clone(), self.max_in_kernel);
        let key = match inserted {
            Ok(key) => key,
            Err(keep) => return Start::NoRoom(downcast(keep)),
        };
        match self.ctx().add(op, key) {
            Ok(()) => {
                self.kick();
                Start::InFlight(key)
            }
            Err(err) => {
                let (keep, _waker) = lock(&self.table).remove_unsubmitted(key);
                let spec = downcast(keep);
                match err {
                    ringfence::Error::NoSpace => Start::NoRoom(spec),
                    err => Start::Failed(spec, err.into()),
                }
            }
        }
    }

    /// The future of `key` polls: its result and what its operation owned,
    /// once completed.
    pub(crate) fn poll<S: crate::op::OpSpec>(
        &self,
        key: Key,
        waker: &Waker,
    ) -> Option<(io::Result<u32>, Box<S>)> {
        let polled = lock(&self.table).poll(key, waker);
        match polled {
            Polled::Ready(result, keep) => Some((result, downcast(keep))),
            // The waker replaced is dropped here, outside the lock.
            Polled::Pending(_replaced) => None,
        }
    }

    /// The future of `key` is dropped: cancel its operation if it is still
    /// in the kernel (what it owns is freed when its completion arrives),
    /// or release what it owns now if it completed already.
    pub(crate) fn abandon(&self, key: Key) {
        let found = lock(&self.table).abandon(key);
        match found {
            Abandoned::InKernel(_waker) if self.allows(URingOperation::AsyncCancel) => {
                // Sent by the driver's next turn, which finds room for it
                // (see `RESERVED`); this thread makes no enter call.
                lock(&self.cancels).push(key);
                self.kick();
            }
            Abandoned::Completed(keep, result) => keep.abandoned(result),
            // Without AsyncCancel the operation runs to its end; its slot
            // waits for that.
            Abandoned::InKernel(_) | Abandoned::Unknown => {}
        }
    }

    /// A registered buffer no one holds, taken.
    pub(crate) fn take_fixed(&self) -> Option<ringfence::RegisteredBuffer> {
        let index = lock(&self.free_fixed).pop()?;
        self.ctx().registered_buffer(index)
    }

    /// Registered buffer `index` is free again.
    pub(crate) fn give_back_fixed(&self, index: u16) {
        lock(&self.free_fixed).push(index);
    }

    /// Operations with a slot in the table.
    pub(crate) fn in_flight(&self) -> usize {
        lock(&self.table).len()
    }
}

fn downcast<S: crate::op::OpSpec>(keep: Box<dyn InFlight>) -> Box<S> {
    keep.into_any()
        .downcast::<S>()
        .expect("a slot holds the type its future put there")
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Every future is gone, so what is still in the kernel was
        // abandoned (and its cancellation queued): turn until the kernel
        // has given each back, so that each completion is handed in (an
        // accept's new descriptor closed) rather than drained unseen.
        let deadline = std::time::Instant::now() + CLOSE_TIMEOUT;
        while lock(&self.table).in_kernel() > 0 && std::time::Instant::now() < deadline {
            if self.turn(Some(Duration::from_millis(10))).is_err() {
                break;
            }
        }
        // A panic of a buffer's drop here has nobody to go to.
        drop(self.take_panic());
        let ctx = self.ctx.take().expect("dropped once");
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        // Cancels what is still in flight (the doorbell's poll, at least)
        // and waits for the kernel to finish with it. Only then may what
        // those operations own be freed.
        let closed = ctx.close(left.max(Duration::from_millis(100)));
        let table = self.table.get_mut().unwrap_or_else(PoisonError::into_inner);
        // Without AsyncCancel the doorbell's poll cannot be stopped, and
        // close says so; but if none of the table's operations is in the
        // kernel, the kernel holds nothing of the table's, and it is freed.
        if closed.is_err() && table.in_kernel() > 0 {
            // The kernel may still use it: leak it, kept reachable so that
            // leak checkers tell this deliberate leak from real ones.
            let table = std::mem::take(table);
            lock(&LEAKED).push(table);
        }
    }
}

/// Tables whose operations the kernel may still use when their ring was
/// closed: kept for the life of the process.
static LEAKED: Mutex<Vec<Table>> = Mutex::new(Vec::new());

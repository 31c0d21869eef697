//! [`URingContext`]: one ring behind `&self`, split by concern:
//!
//! - `setup.rs`: construction and register calls;
//! - `builder.rs`: [`URingBuilder`], the options `new` does not take;
//! - `probe.rs`: what the kernel supports ([`Probe`], features);
//! - `registered.rs`: registered files and buffers;
//! - `buffer_ring.rs`: provided-buffer rings and lending their buffers;
//! - `queue.rs`: the generic add path, batches, and the context's own SQEs;
//! - `crosvm.rs`: the crosvm-named `add_*` methods, one line each;
//! - `submit.rs`: `submit` and the one place that calls `io_uring_enter`;
//! - `wait.rs`: `wait`, `wait_timeout` and waiting on the ring fd;
//! - `completions.rs`: the iterator `wait` returns;
//! - `drain.rs`: `close`, drop, and cancelling what is in flight;
//! - `table.rs` and `labels.rs`: the bookkeeping of operations in flight.

mod buffer_ring;
mod builder;
mod completions;
mod crosvm;
mod drain;
#[cfg(test)]
mod fixed_file_refusals;
mod fork;
mod labels;
mod probe;
mod queue;
mod registered;
mod setup;
mod submit;
mod table;
mod wait;

pub use buffer_ring::ProvidedBuffer;
pub use completions::Completion;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::abi::IosqeFlags;
use crate::op::Target;
use crate::ring::{CompletionQueue, CqIndices, RingMemory, SqIndices, SubmissionQueue};
use crate::sys;
use table::{ClaimBoard, OpTable};

pub use builder::URingBuilder;
pub use probe::Probe;
pub use registered::{MAX_REGISTERED_BUFFERS, MAX_REGISTERED_BUFFER_LEN};

/// One io_uring instance, shared by any number of threads.
///
/// Operations are queued with [`add`](Self::add) (or the crosvm-named
/// `add_*` methods), sent to the kernel by [`submit`](Self::submit) or
/// [`wait`](Self::wait), and come back from the iterator `wait` returns as
/// `(user_data, result)`. Everything goes through `&self`: one lock, held
/// for one add or one claim of up to 65 completions, never across a system
/// call, so producers and reapers on different threads only contend
/// briefly.
///
/// ```
/// use ringfence::URingContext;
///
/// let ring = URingContext::new(16, None)?;
/// ring.add_nop(7)?;
/// let completions: Vec<_> = ring.wait()?.collect();
/// assert_eq!(completions.len(), 1);
/// assert_eq!(completions[0].0, 7);
/// assert_eq!(completions[0].1.as_ref().unwrap(), &0);
/// # Ok::<(), ringfence::Error>(())
/// ```
///
/// # User data
///
/// The `user_data` an operation is added with is the caller's label for
/// it, handed back with its completion; the SQE carries an identity of the
/// context's own, so a completion can only ever release the operation it
/// belongs to. Operations that pin no caller memory (nops, polls, fsyncs,
/// cancellations) may share a label, as crosvm's wake-up nops do. An add is
/// refused with [`Error::DuplicateUserData`](crate::Error::DuplicateUserData)
/// when it, or an operation in flight with the same label, pins caller
/// memory (a readv's or writev's buffers): the caller could not tell their
/// completions apart. An operation is in flight from its add until the
/// caller has its completion from the iterator (a multishot operation's
/// last one, without `IORING_CQE_F_MORE`), whether it is still queued, in
/// the kernel, or completed and waiting in the ring or in an iterator.
///
/// # Files
///
/// The kernel looks an operation's file descriptor up when it consumes the
/// SQE, which may be during another thread's `submit` or `wait`, well after
/// the add. A descriptor given to a crosvm-named method as a `RawFd` must
/// stay open, and must not be reused for another file, until the
/// operation has completed; [`op::Target`](crate::op::Target) built from an
/// `Arc` keeps it open for you.
///
/// # Threads that submit
///
/// The kernel ties each operation to the thread whose
/// [`submit`](Self::submit), [`wait`](Self::wait) or
/// [`wait_timeout`](Self::wait_timeout) call handed it over, and on a shared
/// ring that call may send other threads' operations too. When that thread
/// exits first (measured on Linux 6.18, `tests/threads.rs`):
///
/// - an operation waiting for readiness (a poll, a read from an empty
///   pipe) is not cancelled when the thread exits: it stays in flight,
///   holding its file and buffers, and completes with `ECANCELED` when it
///   would have completed, because the kernel finishes it as work of the
///   thread that is gone;
/// - blocking work the kernel runs on its worker threads (a fallocate)
///   runs to completion and completes with its normal result.
///
/// Submit from threads that outlive what they submit (long-lived workers,
/// not short-lived helper threads), or let the kernel's SQ thread submit
/// ([`URingBuilder::sqpoll`](crate::URingBuilder::sqpoll)).
///
/// # Dropping and closing
///
/// Dropping the context with operations in flight turns what was queued but
/// never submitted into nops (except on a ring with a kernel SQ thread,
/// [`URingBuilder::sqpoll`](crate::URingBuilder::sqpoll), which may be
/// reading them: there they run), cancels every operation in the kernel with
/// `IORING_OP_ASYNC_CANCEL` and waits for all of them to complete, for up
/// to 5 seconds, before it frees what they keep alive. If they do not all
/// complete in time, it leaks that state rather than free memory the
/// kernel may still use, then closes the ring, which makes the kernel
/// cancel what is left. On a restricted ring whose allowlist lacks
/// `AsyncCancel`, nothing can stop them, so drop leaks at once instead of
/// waiting. [`close`](Self::close) does the same and tells you which way
/// it went.
pub struct URingContext {
    // Field order is drop order: both queues point into `memory`, which must
    // outlive them, and the mappings are removed before the ring fd closes.
    state: Mutex<RingState>,
    /// The SQ indices, read without the lock.
    sq: SqIndices,
    /// The CQ indices, read without the lock.
    cq: CqIndices,
    /// The batches live iterators yield from without the lock, and how
    /// far each has got. Written by reapers for every completion they
    /// yield, so on cache lines of its own, apart from the lock that
    /// producers take.
    claim_board: ClaimBoard,
    /// Completions handed back and not yet claimed again (a copy of the
    /// table's count, read without the lock).
    returned: AtomicUsize,
    /// Operations of the context's own in flight (a copy of the table's
    /// count, read without the lock).
    internal_ops: AtomicUsize,
    /// A wake-up nop is owed: completions were handed back and the nop
    /// that makes the ring fd readable for them could not be queued yet.
    wake_owed: AtomicBool,
    /// The SQE flags the allowlist requires, carried by the context's own
    /// SQEs.
    required_flags: AtomicU8,
    /// The allowlist allows `AsyncCancel` (or there is none).
    can_cancel: AtomicBool,
    _memory: RingMemory,
    ring: sys::Ring,
    sq_entries: u32,
    /// A kernel thread polls the SQ (`IORING_SETUP_SQPOLL`): it consumes
    /// published SQEs on its own, with no enter.
    sqpoll: bool,
    cq_entries: u32,
    /// The most operations tracked at once, the caller's and the context's
    /// own (wake-up nops, the extra SQEs of a cancel by label, drain's
    /// cancellations) together: an add that would go past it fails with
    /// `NoSpace`. Drain's cancellations may go one over.
    in_flight_cap: usize,
    /// The fork count when the context was created: a forked child's copy
    /// must not touch the parent's ring (see `fork.rs`).
    fork_generation: u64,
    /// What `io_uring_setup` reported the kernel offers.
    features: crate::abi::FeatureFlags,
    /// The registered buffers' memory, after the ring in drop order.
    buffers: Option<registered::BufferMemory>,
    /// The provided-buffer rings, last: dropped after `Drop` has drained
    /// the ring (so no operation that may write their buffers is left,
    /// unless drain gave up and leaked that operation's share of the
    /// memory, which keeps it mapped) and after the ring fd is closed. The
    /// kernel pins a ring's entries itself, so their order against the
    /// ring's fd does not matter (see `buffer_ring.rs`).
    buffer_rings: Vec<buffer_ring::BufferRing>,
}

/// What the context's one lock guards: the SQ tail and SQE slots, the CQ
/// head, and the bookkeeping of every operation in flight. One lock, not
/// one per queue: an add must track its operation and publish its SQE
/// under the same lock (so a refusal leaves nothing behind and a completion
/// always finds its record), and a second lock pair cost each add about as
/// much as the rest of its bookkeeping.
struct RingState {
    sq: SubmissionQueue,
    cq: CompletionQueue,
    table: OpTable,
}

/// Locks `mutex`, ignoring poisoning: no code panics while it holds a ring
/// lock with the ring state half updated.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn is_errno(err: &io::Error, errno: i32) -> bool {
    err.raw_os_error() == Some(errno)
}

impl URingContext {
    /// Operations added and not yet handed to the caller by
    /// [`wait`](Self::wait)'s iterator, whether still queued, in the
    /// kernel, or completed and waiting in the ring or in an iterator. A
    /// multishot operation counts until its last completion, the one
    /// without `IORING_CQE_F_MORE`, has been handed over.
    pub fn in_flight(&self) -> usize {
        let mut side = lock(&self.state);
        side.table.settle_all(&self.claim_board);
        let in_flight = side.table.caller_ops();
        self.unlock(side);
        in_flight
    }

    /// The most operations in flight at once (see [`in_flight`](Self::in_flight)),
    /// the caller's and the context's own together: an add past it fails
    /// with [`Error::NoSpace`](crate::Error::NoSpace). 16 times the
    /// completion ring's entries with `IORING_FEAT_NODROP` (Linux 5.5),
    /// else one short of them.
    pub fn max_in_flight(&self) -> usize {
        self.in_flight_cap
    }

    /// How many operations the submission queue holds.
    pub fn sq_entries(&self) -> u32 {
        self.sq_entries
    }

    /// How many completions the completion ring holds.
    pub fn cq_entries(&self) -> u32 {
        self.cq_entries
    }

    /// Completions the kernel had to drop (the CQ ring's overflow counter).
    /// Always 0 on kernels with `IORING_FEAT_NODROP` (Linux 5.5) unless the
    /// kernel ran out of memory for overflowed completions.
    pub fn dropped_completions(&self) -> u32 {
        self.cq.dropped()
    }

    /// Fails with [`Error::Forked`](crate::Error::Forked) in a forked
    /// child: its copy of the context must not touch the parent's ring.
    #[inline]
    fn check_process(&self) -> crate::Result<()> {
        if fork::forked_since(self.fork_generation) {
            return Err(crate::Error::Forked);
        }
        Ok(())
    }

    /// The SQE flags the context's own SQEs carry: those the allowlist
    /// requires.
    fn own_sqe_flags(&self) -> IosqeFlags {
        IosqeFlags::from_bits_retain(
            self.required_flags
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Releases the lock, publishing the counts lock-free readers use,
    /// then drops the files of operations released under it: dropping an
    /// `Arc`'d file may run the caller's code, which must not run under the
    /// ring lock (it could call back into the context).
    #[inline]
    fn unlock(&self, mut side: MutexGuard<'_, RingState>) {
        self.publish_hints(&side.table);
        let files = side.table.take_released();
        drop(side);
        drop(files);
    }

    /// Publishes the table's counts that lock-free readers use.
    #[inline]
    fn publish_hints(&self, table: &OpTable) {
        use std::sync::atomic::Ordering::Relaxed;
        self.returned.store(table.returned(), Relaxed);
        self.internal_ops.store(table.internal_ops(), Relaxed);
    }
}

impl URingContext {
    /// This ring as the target of an operation on another ring
    /// ([`op::MsgRing`](crate::op::MsgRing)): the operation keeps this
    /// context, and so its ring fd, alive until its completion. A ring of
    /// the simulated kernel has no fd: the target is -1, which a real
    /// kernel refuses with `EBADF`.
    ///
    /// An operation on a ring that targets that same ring (a message to
    /// itself) holds the last `Arc` while in flight if the caller drops
    /// theirs: the context then lives until that operation completes, and
    /// for good if it never does. Keep an `Arc` while such an operation is
    /// in flight.
    pub fn as_target(self: &Arc<Self>) -> Target {
        if self.ring.as_fd().is_none() {
            return Target::raw_for_crosvm_api(-1);
        }
        Target::from(Arc::new(RingFd(Arc::clone(self))))
    }
}

/// A context as a file an operation holds open: its ring fd.
///
/// Invariant: the context's ring is a real kernel ring (`as_target` checks).
struct RingFd(Arc<URingContext>);

impl AsFd for RingFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0
            .ring
            .as_fd()
            .expect("a RingFd is only made for a kernel ring (type invariant)")
    }
}

impl AsRawFd for URingContext {
    /// The ring's file descriptor. It polls readable (epoll, poll) while a
    /// completion waits in the CQ ring, and also after an iterator handed
    /// completions back (the context posts a nop of its own for that).
    fn as_raw_fd(&self) -> RawFd {
        self.ring.raw_fd()
    }
}

impl std::fmt::Debug for URingContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("URingContext")
            .field("fd", &self.ring.raw_fd())
            .field("sq_entries", &self.sq_entries)
            .field("cq_entries", &self.cq_entries)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

// Compile-time proof of the thread-safety promise.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<URingContext>();
};

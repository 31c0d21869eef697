//! [`URingContext`]: the public front. Locking, and one small method per
//! operation; the ring arithmetic lives in `ring/`, the syscalls in `sys/`.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::allowlist::{RegisterOperation, SqeFlags, URingAllowlist};
use crate::batch::OpBatch;
use crate::bindings::*;
use crate::error::{enter_error, setup_error, Error, Result};
use crate::iobuf::{IoBufMut, KernelIovecs};
use crate::ring::{blank_sqe, CompleteQueueState, InFlight, RingMemory, SubmitProbe, SubmitQueue};
use crate::sys;

/// The value an operation carries from [`URingContext::add_nop`] and friends
/// to its completion in [`URingContext::wait`]. At most one operation in
/// flight may use a given value.
pub type UserData = u64;

/// The largest ring `io_uring_setup` accepts (the kernel's
/// `IORING_MAX_ENTRIES`).
pub const MAX_ENTRIES: usize = 32768;

/// The most iovecs one readv or writev takes (the kernel's `UIO_MAXIOV`).
pub const MAX_IOVECS: usize = 1024;

/// How long drop waits for cancelled operations to finish before it gives up
/// and leaks their pinned memory.
const DROP_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `wait` waits for work already in the kernel when the kernel
/// refuses new submissions for now (`EAGAIN`, `EBUSY`) before trying again.
const KERNEL_BUSY_BACKOFF: Duration = Duration::from_millis(10);

/// A point in time to stop waiting at; `None` when the timeout is too long
/// to represent, which means never.
#[derive(Clone, Copy)]
struct Deadline(Option<Instant>);

impl Deadline {
    fn after(timeout: Duration) -> Deadline {
        Deadline(Instant::now().checked_add(timeout))
    }

    /// The time left, zero once passed.
    fn left(self) -> Duration {
        match self.0 {
            Some(at) => at.saturating_duration_since(Instant::now()),
            None => Duration::MAX,
        }
    }
}

/// What [`URingContext::wait`] decides on, read at one instant.
struct RingState {
    /// SQEs published and not yet consumed by the kernel.
    queued: u32,
    /// A completion is in the CQ ring, or overflowed and waiting to be
    /// brought back.
    ready: bool,
    /// Operations added and not yet reaped (queued ones included).
    in_flight: usize,
}

/// `io_uring_setup`, in the running kernel ([`sys::setup`]) or a simulated
/// one.
pub(crate) type Setup<'a> = &'a dyn Fn(u32, &mut io_uring_params) -> io::Result<sys::Ring>;

/// What an operation keeps alive while it is in flight: the iovec array the
/// kernel reads, for readv and writev.
pub(crate) type OpState = Option<KernelIovecs>;

/// Which way poll waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Readable (`POLLIN`).
    Read,
    /// Writable (`POLLOUT`).
    Write,
    /// Readable or writable.
    ReadWrite,
}

impl EventType {
    fn poll_events(self) -> u32 {
        let events = match self {
            EventType::Read => libc::POLLIN,
            EventType::Write => libc::POLLOUT,
            EventType::ReadWrite => libc::POLLIN | libc::POLLOUT,
        };
        events as u32
    }
}

/// One io_uring instance, shared by any number of threads.
///
/// Operations are queued with the `add_*` methods, sent to the kernel by
/// [`submit`](Self::submit) or [`wait`](Self::wait), and come back from the
/// iterator `wait` returns as `(user_data, result)`. Everything goes through
/// `&self`: the submission queue and the completion queue each have their own
/// lock, so producers and reapers on different threads only contend briefly.
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
/// # Threads that submit
///
/// The kernel ties each operation to the thread whose
/// [`submit`](Self::submit), [`wait`](Self::wait) or
/// [`wait_timeout`](Self::wait_timeout) call handed it over, and on a shared
/// ring that call may send other threads' operations too. When that thread
/// exits, the kernel cancels what it handed over and is still pending:
/// polls and work on kernel worker threads complete with `ECANCELED`
/// instead of their result. Submit from threads that outlive what they
/// submit (long-lived workers, not short-lived helper threads).
///
/// # Dropping and closing
///
/// Dropping the context with operations in flight turns what was queued but
/// never submitted into nops, cancels every operation in the kernel with
/// `IORING_OP_ASYNC_CANCEL` and waits for all of them to complete, for up
/// to 5 seconds, before it frees their iovec arrays.
/// If they do not all complete in time (for example on a restricted ring
/// whose allowlist lacks `AsyncCancel`, with a poll that never fires), it
/// leaks their iovec arrays rather than free memory the kernel may still
/// use, then closes the ring, which makes the kernel cancel what is left.
/// [`close`](Self::close) does the same with a timeout of your choice and
/// tells you which way it went.
pub struct URingContext {
    // Field order is drop order: both queues point into `memory`, which must
    // outlive them, and the mappings are removed before the ring fd closes.
    submit: Mutex<SubmitQueue>,
    /// The SQ indices, read without the submit lock.
    sq_probe: SubmitProbe,
    complete: Mutex<CompleteQueueState<OpState>>,
    _memory: RingMemory,
    ring: sys::Ring,
    sq_entries: u32,
    cq_entries: u32,
    /// The most operations `add_*` may have in flight; drain may go one
    /// over.
    in_flight_cap: usize,
    /// The process that created the ring; after fork, a child's copy must
    /// not cancel the parent's operations.
    owner_pid: u32,
}

/// Locks `mutex`, ignoring poisoning: no code panics while it holds a ring
/// lock with the ring state half updated.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A CQE result as the caller sees it.
fn completion_result(res: i32) -> io::Result<u32> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as u32)
    }
}

fn is_errno(err: &io::Error, errno: i32) -> bool {
    err.raw_os_error() == Some(errno)
}

/// The error for an operation the in-flight state refused.
fn refusal_error(refusal: InFlight, user_data: UserData) -> Error {
    match refusal {
        InFlight::Duplicate => Error::DuplicateUserData(user_data),
        InFlight::Full => Error::NoSpace,
    }
}

// The SQE of each operation, one function each, shared by `URingContext`'s
// `add_*` methods and `OpBatch`'s.

/// A readv or writev of `iovecs`, and the state that keeps them alive.
pub(crate) fn rw_op(
    opcode: u32,
    iovecs: Pin<Box<[IoBufMut<'static>]>>,
    fd: RawFd,
    offset: Option<u64>,
    user_data: UserData,
) -> Result<(io_uring_sqe, OpState)> {
    if iovecs.len() > MAX_IOVECS {
        return Err(Error::TooManyIovecs(iovecs.len()));
    }
    let iovecs = KernelIovecs::new(iovecs);
    let mut sqe = blank_sqe(opcode, fd, user_data);
    // u64::MAX (-1) asks for the file's current position.
    sqe.__bindgen_anon_1.off = offset.unwrap_or(u64::MAX);
    // `IoBufMut` is `repr(transparent)` over `iovec`, and the array stays
    // put while the in-flight state keeps it.
    sqe.__bindgen_anon_2.addr = iovecs.addr();
    sqe.len = iovecs.len() as u32;
    Ok((sqe, Some(iovecs)))
}

pub(crate) fn nop_sqe(flags: SqeFlags, user_data: UserData) -> io_uring_sqe {
    let mut sqe = blank_sqe(IORING_OP_NOP, -1, user_data);
    sqe.flags = flags.bits();
    sqe
}

pub(crate) fn fsync_sqe(fd: RawFd, user_data: UserData) -> io_uring_sqe {
    blank_sqe(IORING_OP_FSYNC, fd, user_data)
}

pub(crate) fn fallocate_sqe(
    fd: RawFd,
    offset: u64,
    len: u64,
    mode: u32,
    user_data: UserData,
) -> io_uring_sqe {
    let mut sqe = blank_sqe(IORING_OP_FALLOCATE, fd, user_data);
    sqe.__bindgen_anon_1.off = offset;
    sqe.__bindgen_anon_2.addr = len;
    sqe.len = mode;
    sqe
}

pub(crate) fn poll_add_sqe(fd: RawFd, events: EventType, user_data: UserData) -> io_uring_sqe {
    let mut sqe = blank_sqe(IORING_OP_POLL_ADD, fd, user_data);
    let events = events.poll_events();
    // The kernel swaps the halfwords of poll32_events on big-endian.
    #[cfg(target_endian = "big")]
    let events = events.rotate_left(16);
    sqe.__bindgen_anon_3.poll32_events = events;
    sqe
}

pub(crate) fn poll_remove_sqe(target: UserData, user_data: UserData) -> io_uring_sqe {
    let mut sqe = blank_sqe(IORING_OP_POLL_REMOVE, -1, user_data);
    sqe.__bindgen_anon_2.addr = target;
    sqe
}

pub(crate) fn cancel_sqe(target: UserData, user_data: UserData) -> io_uring_sqe {
    let mut sqe = blank_sqe(IORING_OP_ASYNC_CANCEL, -1, user_data);
    sqe.__bindgen_anon_2.addr = target;
    sqe
}

/// `duration` in whole milliseconds for poll(2), rounded up so that a
/// short wait does not become a busy loop.
fn millis_rounded_up(duration: Duration) -> i32 {
    let millis = duration.as_nanos().div_ceil(1_000_000);
    millis.min(i32::MAX as u128) as i32
}

impl URingContext {
    /// Creates a ring with room for `num_entries` queued operations (rounded
    /// up to a power of two; the completion ring gets twice as many).
    ///
    /// With an `allowlist`, the ring is created disabled, the allowlist is
    /// registered as its restrictions, and then it is enabled: from then on
    /// the kernel refuses anything outside it (see [`URingAllowlist`]).
    ///
    /// Fails with [`Error::EntriesOutOfRange`] for 0 or more than
    /// [`MAX_ENTRIES`] entries, and with [`Error::IoUringUnavailable`],
    /// [`Error::IoUringDisabled`] or [`Error::OutOfLockedMemory`] when the
    /// kernel cannot give this process a ring.
    pub fn new(num_entries: usize, allowlist: Option<&URingAllowlist>) -> Result<URingContext> {
        Self::new_in(&sys::setup, num_entries, allowlist)
    }

    /// [`new`](Self::new), with the ring created by `setup`: the running
    /// kernel's or a simulated one.
    pub(crate) fn new_in(
        setup: Setup<'_>,
        num_entries: usize,
        allowlist: Option<&URingAllowlist>,
    ) -> Result<URingContext> {
        let Some(allowlist) = allowlist else {
            return Self::create(setup, num_entries, 0);
        };
        let ring = Self::create(setup, num_entries, IORING_SETUP_R_DISABLED)?;
        ring.register_restrictions(allowlist)?;
        ring.enable()?;
        Ok(ring)
    }

    /// Creates a ring that stays disabled (`IORING_SETUP_R_DISABLED`) until
    /// [`enable`](Self::enable): the window in which a sandboxed process
    /// registers what it needs (an eventfd, restrictions) before the kernel
    /// locks the ring down. Submitting to a disabled ring fails with
    /// `EBADFD`.
    ///
    /// ```
    /// use ringfence::{URingAllowlist, URingContext, URingOperation};
    ///
    /// let ring = URingContext::new_disabled(8)?;
    /// let mut allowlist = URingAllowlist::new();
    /// allowlist.allow_submit_operation(URingOperation::Nop);
    /// ring.register_restrictions(&allowlist)?;
    /// ring.enable()?;
    /// ring.add_nop(1)?;
    /// assert_eq!(ring.wait()?.next().unwrap().1.unwrap(), 0);
    /// # Ok::<(), ringfence::Error>(())
    /// ```
    pub fn new_disabled(num_entries: usize) -> Result<URingContext> {
        Self::create(&sys::setup, num_entries, IORING_SETUP_R_DISABLED)
    }

    /// Creates a ring with `setup` and maps it.
    pub(crate) fn create(
        setup: Setup<'_>,
        num_entries: usize,
        setup_flags: u32,
    ) -> Result<URingContext> {
        if num_entries == 0 || num_entries > MAX_ENTRIES {
            return Err(Error::EntriesOutOfRange(num_entries));
        }
        let mut params = io_uring_params {
            flags: setup_flags,
            ..Default::default()
        };
        let ring = setup(num_entries as u32, &mut params).map_err(setup_error)?;
        let memory = RingMemory::map(&ring, &params).map_err(Error::Mmap)?;
        // Without NODROP the kernel drops completions that do not fit in the
        // CQ ring, so never have more in flight than it holds, keeping one
        // slot for drain's cancellations: it can always cancel one more.
        let in_flight_cap = if params.features & IORING_FEAT_NODROP != 0 {
            usize::MAX - 1
        } else {
            params.cq_entries as usize - 1
        };
        // SAFETY: `memory` maps the ring `params` describes; the context
        // built below owns it and drops it after the queue (field order).
        let submit = unsafe { SubmitQueue::new(&memory, &params) }.map_err(Error::Mmap)?;
        // SAFETY: as above.
        let complete = unsafe { CompleteQueueState::new(&memory, &params) }.map_err(Error::Mmap)?;
        Ok(URingContext {
            sq_probe: submit.probe(),
            submit: Mutex::new(submit),
            complete: Mutex::new(complete),
            _memory: memory,
            ring,
            sq_entries: params.sq_entries,
            cq_entries: params.cq_entries,
            in_flight_cap,
            owner_pid: std::process::id(),
        })
    }

    /// Registers `allowlist` as the ring's restrictions. Only on a ring from
    /// [`new_disabled`](Self::new_disabled), once, before
    /// [`enable`](Self::enable): otherwise the kernel refuses with `EBADFD`
    /// (already enabled) or `EBUSY` (already registered).
    pub fn register_restrictions(&self, allowlist: &URingAllowlist) -> Result<()> {
        let entries = allowlist.restrictions();
        // SAFETY: `entries` is an array of `entries.len()` restriction
        // structs, alive for the whole call.
        unsafe {
            self.register(
                RegisterOperation::Restrictions,
                entries.as_ptr().cast(),
                entries.len() as u32,
            )
        }
    }

    /// Enables a ring created with [`new_disabled`](Self::new_disabled).
    /// Restrictions registered before take effect now.
    pub fn enable(&self) -> Result<()> {
        // SAFETY: ENABLE_RINGS takes no argument.
        unsafe { self.register(RegisterOperation::EnableRings, std::ptr::null(), 0) }
    }

    /// Makes the kernel signal `eventfd` whenever it posts a completion, for
    /// event loops that wait on an eventfd rather than the ring fd.
    pub fn register_eventfd(&self, eventfd: RawFd) -> Result<()> {
        // SAFETY: REGISTER_EVENTFD reads one `int`, which lives on our stack
        // for the whole call.
        unsafe {
            self.register(
                RegisterOperation::Eventfd,
                (&eventfd as *const RawFd).cast(),
                1,
            )
        }
    }

    /// Stops signalling the eventfd registered with
    /// [`register_eventfd`](Self::register_eventfd).
    pub fn unregister_eventfd(&self) -> Result<()> {
        // SAFETY: UNREGISTER_EVENTFD takes no argument.
        unsafe { self.register(RegisterOperation::UnregisterEventfd, std::ptr::null(), 0) }
    }

    /// # Safety
    ///
    /// `arg` must be what `call` expects for `nr_args` entries, valid for the
    /// duration of the call.
    unsafe fn register(
        &self,
        call: RegisterOperation,
        arg: *const libc::c_void,
        nr_args: u32,
    ) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { sys::register(&self.ring, call as u32, arg, nr_args) }
            .map(drop)
            .map_err(|source| Error::Register { call, source })
    }

    /// Queues `sqe`, keeping `state` alive until its completion is reaped.
    fn queue(&self, sqe: io_uring_sqe, state: OpState) -> Result<()> {
        self.queue_all(&mut [(sqe, state)], self.in_flight_cap)
    }

    /// Queues every operation in `ops`, or none, refusing with
    /// [`Error::NoSpace`] past `cap` operations in flight. Queued ones are
    /// left with no state (the context keeps it); refused ones keep theirs.
    ///
    /// Operations are recorded as in flight before their SQEs are published,
    /// so a completion always finds its record, and both happen under the
    /// submit lock, so a refusal leaves nothing behind.
    fn queue_all(&self, ops: &mut [(io_uring_sqe, OpState)], cap: usize) -> Result<()> {
        let count = u32::try_from(ops.len()).map_err(|_| Error::NoSpace)?;
        let mut submit = lock(&self.submit);
        let slots = submit.free_slots(count).ok_or(Error::NoSpace)?;
        let mut complete = lock(&self.complete);
        for i in 0..ops.len() {
            let user_data = ops[i].0.user_data;
            let state = ops[i].1.take();
            if let Err((refusal, state)) = complete.register(user_data, state, cap) {
                ops[i].1 = state;
                // Undo this call's registrations: none of `ops` goes.
                for (sqe, state) in &mut ops[..i] {
                    *state = complete.unregister(sqe.user_data).flatten();
                }
                return Err(refusal_error(refusal, user_data));
            }
        }
        drop(complete);
        submit.publish(slots, ops.iter().map(|(sqe, _)| sqe));
        Ok(())
    }

    /// Queues every operation in `batch` under one lock, or none of them:
    /// the way to add many operations at the cost of one. On success the
    /// batch is left empty (keeping its capacity, so reusing it allocates
    /// nothing); on failure it is left as it was.
    ///
    /// Fails with [`Error::NoSpace`] if the submission queue lacks room for
    /// the whole batch (submit, then retry; a batch larger than
    /// [`sq_entries`](Self::sq_entries) never fits), and with
    /// [`Error::DuplicateUserData`] if a user_data is in flight or appears
    /// twice in the batch.
    ///
    /// ```
    /// use ringfence::{OpBatch, URingContext};
    ///
    /// let ring = URingContext::new(32, None)?;
    /// let mut batch = OpBatch::with_capacity(32);
    /// for user_data in 0..32 {
    ///     batch.add_nop(user_data);
    /// }
    /// ring.add_batch(&mut batch)?;
    /// assert!(batch.is_empty());
    /// let mut reaped = 0;
    /// while ring.in_flight() > 0 {
    ///     reaped += ring.wait()?.count();
    /// }
    /// assert_eq!(reaped, 32);
    /// # Ok::<(), ringfence::Error>(())
    /// ```
    pub fn add_batch(&self, batch: &mut OpBatch) -> Result<()> {
        self.queue_all(batch.ops_mut(), self.in_flight_cap)?;
        batch.clear();
        Ok(())
    }

    /// # Safety
    ///
    /// As for [`add_readv`](Self::add_readv) (reads) or
    /// [`add_writev`](Self::add_writev) (writes).
    unsafe fn add_rw(
        &self,
        opcode: u32,
        iovecs: Pin<Box<[IoBufMut<'static>]>>,
        fd: RawFd,
        offset: Option<u64>,
        user_data: UserData,
    ) -> Result<()> {
        let (sqe, state) = rw_op(opcode, iovecs, fd, offset, user_data)?;
        self.queue(sqe, state)
    }

    /// Collects raw iovecs into the pinned form the in-flight state keeps.
    fn pin_iovecs<I: Iterator<Item = libc::iovec>>(
        iovecs: I,
    ) -> Result<Pin<Box<[IoBufMut<'static>]>>> {
        let iovecs: Vec<IoBufMut<'static>> = iovecs
            // SAFETY: the caller of `add_readv_iter` / `add_writev_iter`
            // guarantees each iovec stays valid as `from_raw_parts` requires.
            .map(|iov| unsafe { IoBufMut::from_raw_parts(iov.iov_base.cast(), iov.iov_len) })
            .collect();
        if iovecs.len() > MAX_IOVECS {
            return Err(Error::TooManyIovecs(iovecs.len()));
        }
        Ok(Box::into_pin(iovecs.into_boxed_slice()))
    }

    /// Queues a vectored read from `fd` into `iovecs`, at `offset` or, with
    /// `None`, at the file's current position (which it then advances).
    ///
    /// Completes with the number of bytes read.
    ///
    /// # Safety
    ///
    /// Each iovec must point to memory that is valid for writes and that
    /// nothing else reads or writes until the kernel is done with it: until
    /// this operation's completion has been returned by [`wait`](Self::wait),
    /// or [`close`](Self::close) has returned `Ok`, or drop has drained the
    /// ring. Drop cannot say whether it drained (see
    /// [Dropping and closing](Self#dropping-and-closing)): memory that must
    /// be reused after a drop with operations in flight should go through
    /// `close` instead, or live for the rest of the process.
    pub unsafe fn add_readv(
        &self,
        iovecs: Pin<Box<[IoBufMut<'static>]>>,
        fd: RawFd,
        offset: Option<u64>,
        user_data: UserData,
    ) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { self.add_rw(IORING_OP_READV, iovecs, fd, offset, user_data) }
    }

    /// Queues a vectored write of `iovecs` to `fd`, at `offset` or, with
    /// `None`, at the file's current position (which it then advances).
    ///
    /// Completes with the number of bytes written.
    ///
    /// # Safety
    ///
    /// Each iovec must point to memory that is valid for reads and that
    /// nothing writes until the kernel is done with it, as for
    /// [`add_readv`](Self::add_readv).
    pub unsafe fn add_writev(
        &self,
        iovecs: Pin<Box<[IoBufMut<'static>]>>,
        fd: RawFd,
        offset: Option<u64>,
        user_data: UserData,
    ) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { self.add_rw(IORING_OP_WRITEV, iovecs, fd, offset, user_data) }
    }

    /// [`add_readv`](Self::add_readv) from raw iovecs, which the context
    /// copies into an array it keeps until the completion.
    ///
    /// # Safety
    ///
    /// As for [`add_readv`](Self::add_readv), for the memory each iovec
    /// points to.
    pub unsafe fn add_readv_iter<I: Iterator<Item = libc::iovec>>(
        &self,
        iovecs: I,
        fd: RawFd,
        offset: Option<u64>,
        user_data: UserData,
    ) -> Result<()> {
        let iovecs = Self::pin_iovecs(iovecs)?;
        // SAFETY: forwarded from the caller.
        unsafe { self.add_rw(IORING_OP_READV, iovecs, fd, offset, user_data) }
    }

    /// [`add_writev`](Self::add_writev) from raw iovecs, which the context
    /// copies into an array it keeps until the completion.
    ///
    /// # Safety
    ///
    /// As for [`add_writev`](Self::add_writev), for the memory each iovec
    /// points to.
    pub unsafe fn add_writev_iter<I: Iterator<Item = libc::iovec>>(
        &self,
        iovecs: I,
        fd: RawFd,
        offset: Option<u64>,
        user_data: UserData,
    ) -> Result<()> {
        let iovecs = Self::pin_iovecs(iovecs)?;
        // SAFETY: forwarded from the caller.
        unsafe { self.add_rw(IORING_OP_WRITEV, iovecs, fd, offset, user_data) }
    }

    /// Queues an operation that does nothing and completes with 0: a cheap
    /// way to wake a thread blocked in [`wait`](Self::wait).
    pub fn add_nop(&self, user_data: UserData) -> Result<()> {
        self.add_nop_with_flags(SqeFlags::NONE, user_data)
    }

    /// Queues a nop that carries SQE `flags`, for ordering (`LINK`,
    /// `HARDLINK`) or to see what a restricted ring allows. A link joins this
    /// nop to whichever operation is queued next, by any thread, and a
    /// submit between the two ends the chain: link from one thread only.
    pub fn add_nop_with_flags(&self, flags: SqeFlags, user_data: UserData) -> Result<()> {
        self.queue(nop_sqe(flags, user_data), None)
    }

    /// Queues an `fsync` of `fd`. Completes with 0.
    pub fn add_fsync(&self, fd: RawFd, user_data: UserData) -> Result<()> {
        self.queue(fsync_sqe(fd, user_data), None)
    }

    /// Queues `fallocate(fd, mode, offset, len)`: `mode` 0 allocates, and
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE` deallocates (the range
    /// then reads as zeros). Completes with 0.
    pub fn add_fallocate(
        &self,
        fd: RawFd,
        offset: u64,
        len: u64,
        mode: u32,
        user_data: UserData,
    ) -> Result<()> {
        self.queue(fallocate_sqe(fd, offset, len, mode, user_data), None)
    }

    /// Queues a one-shot poll of `fd`. Completes with the `POLL*` events that
    /// are ready, once one of `events` is.
    pub fn add_poll_fd(&self, fd: RawFd, events: EventType, user_data: UserData) -> Result<()> {
        self.queue(poll_add_sqe(fd, events, user_data), None)
    }

    /// Queues the removal of the poll added with user_data `target`.
    ///
    /// This operation completes with 0 if the poll was removed (the poll then
    /// completes with `ECANCELED`), `ENOENT` if no poll with that user_data
    /// is pending, or `EALREADY` if it is already completing.
    pub fn remove_poll_fd(&self, target: UserData, user_data: UserData) -> Result<()> {
        self.queue(poll_remove_sqe(target, user_data), None)
    }

    /// Queues the cancellation of the operation added with user_data
    /// `target`.
    ///
    /// This operation completes with 0 if the target was cancelled (it then
    /// completes with `ECANCELED`), `ENOENT` if no operation with that
    /// user_data is in the kernel, or `EALREADY` if it is already running
    /// and cannot be stopped (it then completes normally).
    pub fn async_cancel(&self, target: UserData, user_data: UserData) -> Result<()> {
        self.queue(cancel_sqe(target, user_data), None)
    }

    /// Sends every queued operation to the kernel, without waiting for any
    /// to complete.
    ///
    /// If the kernel consumes fewer than offered (it stops at an SQE it
    /// rejects, whose completion then carries the error), the rest are
    /// offered again until none is left.
    ///
    /// - `EINTR` from `io_uring_enter` is retried.
    /// - `EAGAIN` and `EBUSY` return [`Error::KernelBusy`]: the kernel is
    ///   short of memory or of completion space. The operations it did not
    ///   take stay queued and go with the next `submit` or `wait`.
    /// - Anything else returns [`Error::Enter`] (`EBADFD`: the ring is still
    ///   disabled).
    pub fn submit(&self) -> Result<()> {
        loop {
            // One load of the head for both: if another thread's enter
            // consumed SQEs between two loads, a 0 from ours would look like
            // a stall.
            let (queued, head) = self.sq_probe.queued();
            if queued == 0 {
                return Ok(());
            }
            match sys::enter(&self.ring, queued, 0, 0) {
                Ok(0) => {
                    // Zero is only progress if another thread's enter
                    // consumed them meanwhile; otherwise the kernel stalls.
                    if self.sq_probe.kernel_head() == head {
                        return Err(Error::KernelBusy(io::Error::from_raw_os_error(
                            libc::EAGAIN,
                        )));
                    }
                }
                Ok(_) => {}
                Err(e) if is_errno(&e, libc::EINTR) => {}
                Err(e) => return Err(enter_error(e)),
            }
        }
    }

    /// Reads the ring's state, and reports completions the kernel dropped
    /// since the last report (each loss once). `queued` is read first, so
    /// an operation added meanwhile may count in `in_flight` but never in
    /// `queued` alone: `in_flight > queued` can overstate what is in the
    /// kernel (costing `wait` a short back-off) but never understate it.
    fn snapshot(&self) -> Result<RingState> {
        let (queued, _) = self.sq_probe.queued();
        let mut complete = lock(&self.complete);
        if complete.take_new_drops() {
            return Err(Error::CompletionsLost);
        }
        Ok(RingState {
            queued,
            ready: complete.has_completion(),
            in_flight: complete.in_flight(),
        })
    }

    /// Submits what is queued, waits until at least one completion is ready,
    /// and returns an iterator over every completion that is ready.
    ///
    /// Each completion is yielded exactly once, to whichever thread's
    /// iterator pops it first, as `(user_data, result)`; a negative kernel
    /// result becomes `Err(io::Error::from_raw_os_error(-res))`. Completions
    /// the kernel kept aside because the completion ring was full
    /// (`IORING_FEAT_NODROP`) are brought back by the iterator as the ring
    /// empties, so none is lost however many are in flight.
    ///
    /// `wait` does not block when a completion is already ready, nor when no
    /// operation is in flight at all: the iterator is then empty, so a
    /// single-threaded loop can never wait for something that cannot come.
    /// `wait` suits one reaping thread. With several, one can block until
    /// the next completion even though another took the one that woke it:
    /// reaper threads, and threads that may find nothing in flight, should
    /// use [`wait_timeout`](Self::wait_timeout).
    ///
    /// `EINTR` is retried. `EAGAIN` and `EBUSY` while submitting fall back to
    /// waiting briefly for an operation already in the kernel, then submit
    /// again; if there is none, they return [`Error::KernelBusy`] and the
    /// operations stay queued. Completions the kernel dropped for want of
    /// memory are reported once, as [`Error::CompletionsLost`].
    pub fn wait(&self) -> Result<impl Iterator<Item = (UserData, io::Result<u32>)> + '_> {
        loop {
            let state = self.snapshot()?;
            if state.in_flight == 0 {
                break;
            }
            if state.ready {
                // Send what is queued, but don't block: completions wait. A
                // busy kernel keeps the rest queued for the next call.
                if state.queued > 0 {
                    match self.submit() {
                        Ok(()) | Err(Error::KernelBusy(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                break;
            }
            match sys::enter(&self.ring, state.queued, 1, IORING_ENTER_GETEVENTS) {
                // Everything was submitted and the kernel waited: the usual
                // case, checked with one lock instead of a new snapshot.
                Ok(submitted) if submitted == state.queued => {
                    let mut completions = self.completions_ready();
                    if completions.refill() {
                        return Ok(completions);
                    }
                }
                // A short submit or an interrupted wait returns before a
                // completion is ready; look again.
                Ok(_) => continue,
                Err(e) if is_errno(&e, libc::EINTR) => continue,
                // The kernel dropped completions: the next snapshot reports
                // that once, from the overflow counter. The kernel may keep
                // refusing to wait from now on, so wait by polling instead.
                Err(e) if is_errno(&e, libc::EBADR) => self.poll_ring(KERNEL_BUSY_BACKOFF)?,
                Err(e) => match enter_error(e) {
                    Error::KernelBusy(e) => {
                        let state = self.snapshot()?;
                        if state.in_flight <= state.queued as usize {
                            return Err(Error::KernelBusy(e));
                        }
                        // Something already in the kernel will complete.
                        // Wait for it briefly, not for good: the queued
                        // operations may be what it is waiting for.
                        self.poll_ring(KERNEL_BUSY_BACKOFF)?;
                    }
                    other => return Err(other),
                },
            }
        }
        Ok(self.completions_ready())
    }

    /// Like [`wait`](Self::wait), but gives up after `timeout`, and blocks
    /// (up to `timeout`) even when nothing is in flight, until another
    /// thread's operation completes. The iterator is empty if nothing
    /// completed in time.
    ///
    /// This is the loop for a thread that only reaps:
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::time::Duration;
    /// use ringfence::URingContext;
    ///
    /// let ring = URingContext::new(16, None)?;
    /// let done = AtomicBool::new(false);
    /// std::thread::scope(|s| {
    ///     let reaper = s.spawn(|| {
    ///         let mut reaped = Vec::new();
    ///         while !done.load(Ordering::Acquire) || ring.in_flight() > 0 {
    ///             for (user_data, result) in ring.wait_timeout(Duration::from_millis(50))? {
    ///                 reaped.push((user_data, result?));
    ///             }
    ///         }
    ///         Ok::<_, std::io::Error>(reaped)
    ///     });
    ///     ring.add_nop(1)?;
    ///     ring.submit()?;
    ///     done.store(true, Ordering::Release);
    ///     assert_eq!(reaper.join().unwrap()?, [(1, 0)]);
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_timeout(
        &self,
        timeout: Duration,
    ) -> Result<impl Iterator<Item = (UserData, io::Result<u32>)> + '_> {
        let deadline = Deadline::after(timeout);
        loop {
            match self.submit() {
                Ok(()) | Err(Error::KernelBusy(_)) => {}
                Err(e) => return Err(e),
            }
            let ready = self.snapshot()?.ready;
            let left = deadline.left();
            if ready || left.is_zero() {
                break;
            }
            self.poll_ring(left)?;
        }
        Ok(self.completions_ready())
    }

    /// Blocks until the ring fd polls readable (a completion was posted) or
    /// `timeout` passes, then enters the kernel to run completion work
    /// pending for this thread and bring back overflowed completions.
    fn poll_ring(&self, timeout: Duration) -> Result<()> {
        match sys::poll_readable(&self.ring, millis_rounded_up(timeout)) {
            Err(e) if !is_errno(&e, libc::EINTR) => Err(Error::Poll(e)),
            _ => self.flush_completions(),
        }
    }

    /// Asks the kernel to move overflowed completions into the CQ ring (and
    /// run completion work it has pending for this thread).
    fn flush_completions(&self) -> Result<()> {
        loop {
            match sys::enter(&self.ring, 0, 0, IORING_ENTER_GETEVENTS) {
                Ok(_) => return Ok(()),
                Err(e) if is_errno(&e, libc::EINTR) => continue,
                Err(e) => return Err(enter_error(e)),
            }
        }
    }

    /// Operations added and not yet returned by [`wait`](Self::wait),
    /// whether still queued, in the kernel, or completed and waiting to be
    /// reaped.
    pub fn in_flight(&self) -> usize {
        lock(&self.complete).in_flight()
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
    /// Always 0 on kernels with `IORING_FEAT_NODROP` unless the kernel ran
    /// out of memory for overflowed completions.
    pub fn dropped_completions(&self) -> u32 {
        lock(&self.complete).dropped()
    }

    /// Cancels every operation in flight and waits for all of them to
    /// complete, for up to `timeout`; then closes the ring. Operations
    /// queued but never submitted are not carried out: they complete as
    /// nops.
    ///
    /// `Ok(())` means the kernel is done with every operation: the memory
    /// their iovecs pointed to may be reused. [`Error::DrainTimedOut`] means
    /// some were still in the kernel at the deadline: their iovec arrays
    /// are leaked, and the memory they point to must stay valid for the
    /// life of the process, because the kernel may still write to it.
    /// Completions reaped here are discarded.
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
    pub fn close(self, timeout: Duration) -> Result<()> {
        // SAFETY: `self` is owned here, so no other thread can use it.
        unsafe { self.cancel_and_drain_or_leak(timeout) }
    }

    /// # Safety
    ///
    /// As for [`cancel_and_drain`](Self::cancel_and_drain).
    unsafe fn cancel_and_drain_or_leak(&self, timeout: Duration) -> Result<()> {
        if std::process::id() != self.owner_pid {
            // A forked child's copy: the operations are the parent's, and
            // so is the memory the kernel uses for them; the child's copy of
            // that memory is never touched. Leave the ring alone.
            lock(&self.complete).leak_all();
            return Ok(());
        }
        // SAFETY: forwarded from the caller.
        if unsafe { self.cancel_and_drain(timeout) } {
            return Ok(());
        }
        let mut complete = lock(&self.complete);
        let left = complete.in_flight();
        // The kernel may still use what these operations pinned.
        complete.leak_all();
        Err(Error::DrainTimedOut(left))
    }

    /// A user_data that no operation in flight uses, for drain's own
    /// cancellations, searching down from `*from`.
    fn unused_user_data(complete: &CompleteQueueState<OpState>, from: &mut u64) -> u64 {
        while complete.is_in_flight(*from) {
            *from = from.wrapping_sub(1);
        }
        let found = *from;
        *from = from.wrapping_sub(1);
        found
    }

    /// Cancels every operation in flight and reaps completions until none is
    /// left, for up to `timeout`. Returns whether it got there.
    ///
    /// A cancellation can come back without stopping its target (`ENOENT`
    /// while the target is still being issued, `EALREADY` while it runs,
    /// `EACCES` on a ring whose allowlist lacks `AsyncCancel`), so each round
    /// cancels again whatever is still in flight and has no cancellation
    /// pending.
    ///
    /// # Safety
    ///
    /// The caller must have the context to itself (drop, or `close`, which
    /// takes it by value): queued SQEs are rewritten in place.
    unsafe fn cancel_and_drain(&self, timeout: Duration) -> bool {
        const ROUND: Duration = Duration::from_millis(100);
        let deadline = Deadline::after(timeout);
        // Operations never submitted are cancelled by never doing them.
        // SAFETY: the caller has the context to itself, so no enter runs.
        unsafe { lock(&self.submit).replace_queued_with_nops() };
        // Pending cancellations: their user_data, and their target's.
        let mut cancels: HashMap<u64, u64> = HashMap::new();
        let mut next_user_data = u64::MAX;
        loop {
            match self.submit() {
                // A disabled ring has never consumed an SQE: nothing is in
                // the kernel, and everything in flight can be freed.
                Err(Error::Enter(e)) if is_errno(&e, libc::EBADFD) => return true,
                // Other failures are not fatal here: the deadline bounds us.
                _ => {}
            }
            // Reap what completed (cancellations, their targets, and what
            // needs no cancellation), then see whether anything is left.
            for (user_data, _) in self.completions_ready() {
                cancels.remove(&user_data);
            }
            let left = deadline.left();
            let targets: Vec<u64> = {
                let complete = lock(&self.complete);
                if complete.in_flight() == 0 {
                    return true;
                }
                if left.is_zero() {
                    return false;
                }
                let targeted: HashSet<u64> = cancels.values().copied().collect();
                complete
                    .in_flight_user_data()
                    .filter(|ud| !cancels.contains_key(ud) && !targeted.contains(ud))
                    .collect()
            };
            for target in targets {
                let user_data = Self::unused_user_data(&lock(&self.complete), &mut next_user_data);
                // May use the slot `add_*` leave free (see `in_flight_cap`).
                let mut cancel = [(cancel_sqe(target, user_data), None)];
                if self.queue_all(&mut cancel, self.in_flight_cap + 1).is_err() {
                    break; // No room: the next round submits and retries.
                }
                cancels.insert(user_data, target);
            }
            // Send the cancellations now; the next round reaps them.
            let _ = self.submit();
            let _ = self.poll_ring(left.min(ROUND));
        }
    }

    /// The iterator [`wait`](Self::wait) returns, without waiting.
    fn completions_ready(&self) -> Completions<'_> {
        Completions {
            ring: self,
            batch: [(0, 0); COMPLETION_BATCH],
            next: 0,
            len: 0,
            drained: false,
        }
    }
}

impl Drop for URingContext {
    fn drop(&mut self) {
        // A leak is the safe outcome; `close` is for callers who must know.
        // SAFETY: `&mut self`: no other thread can use the context.
        let _ = unsafe { self.cancel_and_drain_or_leak(DROP_DRAIN_TIMEOUT) };
    }
}

impl AsRawFd for URingContext {
    /// The ring's file descriptor. It polls readable (epoll, poll) while a
    /// completion is ready.
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

/// How many completions [`Completions`] pops under one lock.
const COMPLETION_BATCH: usize = 16;

/// Pops ready completions; see [`URingContext::wait`]. It takes them from
/// the ring in batches, one lock for each, and hands back the ones it did
/// not yield when dropped, so a caller that stops early loses none. It ends
/// after a batch that emptied the ring rather than lock again for
/// completions that arrived since.
struct Completions<'a> {
    ring: &'a URingContext,
    batch: [(u64, i32); COMPLETION_BATCH],
    /// `batch[next..len]` are popped and not yet yielded.
    next: usize,
    len: usize,
    /// The last batch emptied the ring and the overflow list.
    drained: bool,
}

impl Iterator for Completions<'_> {
    type Item = (UserData, io::Result<u32>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next == self.len && !self.drained {
            self.refill();
        }
        let (user_data, result) = *self.batch[self.next..self.len].first()?;
        self.next += 1;
        Some((user_data, completion_result(result)))
    }
}

impl Completions<'_> {
    /// Pops the next batch, bringing overflowed completions back into the
    /// ring first if it is empty. Returns whether it got any.
    fn refill(&mut self) -> bool {
        let mut flushed = false;
        loop {
            let mut complete = lock(&self.ring.complete);
            self.next = 0;
            self.len = complete.pop_batch(&mut self.batch);
            let overflowed = complete.overflow_pending();
            self.drained = self.len < COMPLETION_BATCH && !overflowed;
            if self.len > 0 || flushed || !overflowed {
                return self.len > 0;
            }
            drop(complete);
            // An error here surfaces from the next `wait`.
            let _ = self.ring.flush_completions();
            flushed = true;
        }
    }
}

impl Drop for Completions<'_> {
    fn drop(&mut self) {
        if self.next < self.len {
            lock(&self.ring.complete).unpop(&self.batch[self.next..self.len]);
        }
    }
}

// Compile-time proof of the thread-safety promise.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<URingContext>();
};

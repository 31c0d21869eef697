//! What the real-kernel fuzz targets (`real_kernel_ops`, `restricted_ring`)
//! share: the per-user_data buffer pool, the files and the pipe their
//! operations use, the control operations (poll, poll removal,
//! cancellation) and which of them may stop which, and `World`: the ring
//! with the model's bookkeeping of the operations in flight and the
//! submission queue, and the submit / reap / drain loop that hands each
//! completion to the target's own checks (`State`).
//!
//! Not a fuzz target: each target includes it with `mod common;`.

use std::collections::HashMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ringfence::{Error, EventType, IoBufMut, URingAllowlist, URingContext};

/// Distinct user_data values: few, so that inputs hit duplicates often.
pub const USER_DATA_SPACE: u64 = 16;
/// Every buffer is this long.
pub const BUF_LEN: usize = 256;
/// readv/writev offsets in the memfds are multiples of this, so regions of
/// different operations overlap partly and often.
pub const OFFSET_STEP: usize = 16;
/// Every memfd is this long: a region `[step * OFFSET_STEP, + BUF_LEN)` fits
/// for every step an argument byte can pick.
pub const MEMFD_LEN: usize = 256 * OFFSET_STEP + BUF_LEN;
/// Submission queue entries of every ring.
const ENTRIES: usize = 8;
/// How long draining may take before a target calls it a hang.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// The start of the buffer pool: one `BUF_LEN` slot per user_data, living
/// for the whole process. Only the operation holding that user_data (at
/// most one in flight) uses its slot.
fn pool() -> *mut u8 {
    static POOL: OnceLock<usize> = OnceLock::new();
    let base = *POOL.get_or_init(|| {
        let pool = vec![0u8; BUF_LEN * USER_DATA_SPACE as usize].into_boxed_slice();
        Box::leak(pool).as_mut_ptr() as usize
    });
    base as *mut u8
}

fn slot_ptr(user_data: u64) -> *mut u8 {
    assert!(user_data < USER_DATA_SPACE);
    // SAFETY: the pool holds USER_DATA_SPACE slots of BUF_LEN bytes, and
    // user_data is below USER_DATA_SPACE, so the offset stays inside it.
    unsafe { pool().add(BUF_LEN * user_data as usize) }
}

/// A one-iovec array over the slot of `user_data`, for `add_readv` and
/// `add_writev`. Sound to hand to the context: it refuses a second
/// operation with a user_data already in flight, so no other operation
/// uses this slot (see `buffer`).
pub fn iovecs(user_data: u64) -> Pin<Box<[IoBufMut<'static>]>> {
    Box::pin([buffer(user_data)])
}

/// The iovec for the slot of `user_data`.
fn buffer(user_data: u64) -> IoBufMut<'static> {
    // SAFETY: the pool is leaked, so the slot lives forever; the context
    // refuses a second operation with the same user_data while one is in
    // flight, and a target only reads or writes a slot itself while no
    // operation with its user_data is in flight (see `slot`).
    unsafe { IoBufMut::from_raw_parts(slot_ptr(user_data), BUF_LEN) }
}

/// The slot of `user_data`, for filling before an operation or checking
/// after its completion.
///
/// # Safety
///
/// No operation with this user_data may be in flight, and the returned
/// slice must be dropped before one is added.
pub unsafe fn slot(user_data: u64) -> &'static mut [u8] {
    // SAFETY: the slot is BUF_LEN bytes of leaked, initialised memory; the
    // caller guarantees the kernel is not using it, and no other reference
    // to it is alive (a target holds at most one at a time).
    unsafe { std::slice::from_raw_parts_mut(slot_ptr(user_data), BUF_LEN) }
}

/// What the fixed memfd holds at `offset`. The period (251) is prime, so
/// reading at the wrong offset shows.
pub fn fixed_byte(offset: usize) -> u8 {
    (offset % 251) as u8
}

/// A memfd of `MEMFD_LEN` bytes holding `byte(offset)` at each offset.
pub fn memfd(byte: fn(usize) -> u8) -> File {
    // SAFETY: the name is a NUL-terminated literal; memfd_create returns a
    // new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"ringfence-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    let content: Vec<u8> = (0..MEMFD_LEN).map(byte).collect();
    std::os::unix::fs::FileExt::write_all_at(&file, &content, 0).expect("filling a memfd");
    file
}

/// Files that stay the same for every input.
pub struct Files {
    pub zero: File,
    /// Opened for writing.
    pub null: File,
    /// Holds `fixed_byte` everywhere; nothing ever writes it.
    pub fixed: File,
}

pub fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| Files {
        zero: File::open("/dev/zero").expect("/dev/zero"),
        null: OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .expect("/dev/null"),
        fixed: memfd(fixed_byte),
    })
}

/// A non-blocking pipe: polls and readv wait on `reader`, and writing to
/// `writer` wakes them.
pub struct Pipe {
    pub reader: OwnedFd,
    pub writer: OwnedFd,
}

impl Pipe {
    pub fn new() -> Pipe {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        assert_eq!(ret, 0, "pipe2: {}", io::Error::last_os_error());
        // SAFETY: pipe2 succeeded, so both descriptors are new and ours.
        let (reader, writer) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Pipe { reader, writer }
    }

    /// Makes the reader readable.
    pub fn poke(&self) {
        // SAFETY: writes one byte from a live literal; EAGAIN (pipe full) is
        // fine, the pipe is readable either way.
        unsafe { libc::write(self.writer.as_raw_fd(), b"x".as_ptr().cast(), 1) };
    }

    /// Empties the pipe.
    pub fn drain(&self) {
        let mut scratch = [0u8; 4096];
        // SAFETY: reads into a live local buffer of the stated length; the
        // pipe is non-blocking.
        while unsafe {
            libc::read(
                self.reader.as_raw_fd(),
                scratch.as_mut_ptr().cast(),
                scratch.len(),
            )
        } > 0
        {}
    }
}

/// A ring of `ENTRIES` entries, restricted by `allowlist`, or `None` when
/// the machine is out of memory or descriptors for now: not what these
/// targets test.
pub fn new_ring(allowlist: Option<&URingAllowlist>) -> Option<URingContext> {
    match URingContext::new(ENTRIES, allowlist) {
        Ok(ring) => Some(ring),
        Err(Error::OutOfLockedMemory) => None,
        Err(Error::Setup(e))
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOMEM | libc::EMFILE | libc::ENFILE)
            ) =>
        {
            None
        }
        Err(e) => panic!("creating a ring with {allowlist:?}: {e}"),
    }
}

pub fn errno(result: &io::Result<u32>) -> Option<i32> {
    result.as_ref().err().and_then(io::Error::raw_os_error)
}

/// The operations both targets add and check alike: a poll of the pipe,
/// and the two that aim at another operation by its user_data.
#[derive(Clone, Copy, Debug)]
pub enum Control {
    /// A poll of the pipe's reader for input.
    Poll,
    /// A poll removal aimed at the poll with user_data `target`.
    PollRemove { target: u64 },
    /// A cancellation aimed at the operation with user_data `target`.
    Cancel { target: u64 },
}

impl Control {
    /// Whether this operation, in flight at the same time, may make the
    /// operation with `user_data` (itself `victim`, if a control operation)
    /// complete with `ECANCELED`.
    fn may_stop(self, user_data: u64, victim: Option<Control>) -> bool {
        match self {
            Control::Cancel { target } => target == user_data,
            Control::PollRemove { target } => {
                target == user_data && matches!(victim, Some(Control::Poll))
            }
            Control::Poll => false,
        }
    }

    /// Whether `result` is one this operation may complete with, other than
    /// `ECANCELED`: a poll reports the pipe readable; a cancellation or poll
    /// removal gives 0 (found and stopped), `ENOENT` (nothing to stop) or
    /// `EALREADY` (already running).
    pub fn result_ok(self, result: &io::Result<u32>) -> bool {
        match self {
            Control::Poll => matches!(result, Ok(events) if events & libc::POLLIN as u32 != 0),
            Control::PollRemove { .. } | Control::Cancel { .. } => {
                matches!(result, Ok(0))
                    || matches!(errno(result), Some(libc::ENOENT | libc::EALREADY))
            }
        }
    }
}

/// Relates a new operation with `user_data` (`control`, if a control
/// operation) to the operations in flight, each given as its user_data, its
/// control operation if it is one, and its "may complete with `ECANCELED`"
/// flag: sets the flag of every one the new operation may stop, and returns
/// whether one of them may stop the new one.
pub fn aim<'a>(
    in_flight: impl Iterator<Item = (u64, Option<Control>, &'a mut bool)>,
    user_data: u64,
    control: Option<Control>,
) -> bool {
    let mut aimed_at = false;
    for (other, other_control, may_cancel) in in_flight {
        aimed_at |= other_control.is_some_and(|c| c.may_stop(user_data, control));
        if control.is_some_and(|c| c.may_stop(other, other_control)) {
            *may_cancel = true;
        }
    }
    aimed_at
}

/// Whether `data` is what the fixed memfd holds at `offset`.
pub fn is_fixed_data(offset: usize, data: &[u8]) -> bool {
    data.iter()
        .enumerate()
        .all(|(i, b)| *b == fixed_byte(offset + i))
}

/// What a target's model keeps besides the operations in flight and the
/// queue count, and how it checks a completion.
pub trait State {
    /// What the model keeps about one operation in flight.
    type Op: Debug;

    /// Checks the completion of `op`, the operation with `user_data`.
    fn completed(&mut self, user_data: u64, op: Self::Op, result: io::Result<u32>);

    /// Called after every submit.
    fn submitted(&mut self) {}
}

/// One input's world: the ring, the pipe its polls and pipe reads wait on,
/// and the model the context is checked against.
pub struct World<S: State> {
    pub ring: URingContext,
    pub pipe: Pipe,
    /// The operations in flight, by user_data.
    pub ops: HashMap<u64, S::Op>,
    /// SQEs added since the last submit, or `None` when a submit stopped
    /// short and the count is unknown.
    queued: Option<usize>,
    sq_entries: usize,
    pub state: S,
}

impl<S: State> World<S> {
    pub fn new(ring: URingContext, state: S) -> World<S> {
        World {
            sq_entries: ring.sq_entries() as usize,
            ring,
            pipe: Pipe::new(),
            ops: HashMap::new(),
            queued: Some(0),
            state,
        }
    }

    /// Checks the context's answer to an add of `user_data` against the
    /// model and counts it if accepted (the caller records the operation);
    /// submits if the queue was full. Returns whether the add was accepted.
    pub fn accepted(&mut self, user_data: u64, added: &ringfence::Result<()>) -> bool {
        let busy = self.ops.contains_key(&user_data);
        let full = self.queued == Some(self.sq_entries);
        match added {
            Ok(()) => {
                assert!(!busy, "duplicate user_data {user_data} accepted");
                assert!(!full, "add accepted with {} SQEs queued", self.sq_entries);
                self.queued = self.queued.map(|queued| queued + 1);
                true
            }
            // A full queue is checked before the user_data.
            Err(Error::NoSpace) => {
                assert!(
                    full || self.queued.is_none(),
                    "NoSpace with {:?} of {} SQEs queued",
                    self.queued,
                    self.sq_entries
                );
                self.submit();
                false
            }
            Err(Error::DuplicateUserData(refused)) => {
                assert_eq!(*refused, user_data, "refusal names another user_data");
                assert!(busy, "free user_data {user_data} refused as a duplicate");
                assert!(!full, "duplicate reported before a full queue");
                false
            }
            Err(e) => panic!("unexpected error adding {user_data}: {e}"),
        }
    }

    /// Adds `control` with `user_data`; a poll waits for the pipe's reader.
    pub fn add_control(&self, control: Control, user_data: u64) -> ringfence::Result<()> {
        match control {
            Control::Poll => {
                let fd = self.pipe.reader.as_raw_fd();
                self.ring.add_poll_fd(fd, EventType::Read, user_data)
            }
            Control::PollRemove { target } => self.ring.remove_poll_fd(target, user_data),
            Control::Cancel { target } => self.ring.async_cancel(target, user_data),
        }
    }

    pub fn submit(&mut self) {
        self.queued = match self.ring.submit() {
            Ok(()) => Some(0),
            Err(Error::KernelBusy(_)) => None,
            Err(e) => panic!("submit: {e}"),
        };
        self.state.submitted();
    }

    pub fn check_in_flight(&self) {
        assert_eq!(
            self.ring.in_flight(),
            self.ops.len(),
            "in_flight() disagrees with the model: {:?}",
            self.ops
        );
    }

    /// One `wait`: every pending operation can complete once the pipe has
    /// data, so it cannot block for good.
    pub fn reap(&mut self) {
        self.pipe.poke();
        self.submit();
        for (user_data, result) in self.ring.wait().expect("wait") {
            completed(&mut self.ops, &mut self.state, user_data, result);
        }
        self.pipe.drain();
    }

    /// Reaps until nothing is in flight.
    pub fn drain_all(&mut self) {
        let deadline = Instant::now() + DRAIN_DEADLINE;
        while !self.ops.is_empty() {
            assert!(
                Instant::now() < deadline,
                "operations never completed: {:?}",
                self.ops
            );
            self.pipe.poke();
            self.submit();
            let ready = self
                .ring
                .wait_timeout(Duration::from_millis(50))
                .expect("wait_timeout");
            for (user_data, result) in ready {
                completed(&mut self.ops, &mut self.state, user_data, result);
            }
        }
        self.pipe.drain();
    }
}

/// Hands one completion to `state` with the operation it belongs to.
fn completed<S: State>(
    ops: &mut HashMap<u64, S::Op>,
    state: &mut S,
    user_data: u64,
    result: io::Result<u32>,
) {
    let Some(op) = ops.remove(&user_data) else {
        panic!("completion for {user_data} not in flight: {result:?}");
    };
    state.completed(user_data, op, result);
}

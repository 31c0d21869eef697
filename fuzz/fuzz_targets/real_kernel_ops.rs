//! Random operation sequences against the real kernel, on a pipe, two
//! memfds, /dev/zero and /dev/null, checking the context against a model:
//!
//! - an add succeeds exactly when its user_data is free and the submission
//!   queue has room, and is refused with the matching error otherwise;
//! - every operation completes exactly once, with a result its kind allows
//!   (`ECANCELED` only if a cancellation or poll removal aimed at it);
//! - `in_flight()` always agrees with the model;
//! - readv data is right wherever the model knows it: zeros from /dev/zero,
//!   a fixed pattern from a memfd nothing writes, and in a scratch memfd
//!   whatever the completed writes and hole punches left there;
//! - pinned iovec arrays are freed exactly once and nothing leaks:
//!   cargo fuzz builds with AddressSanitizer, and libFuzzer runs
//!   LeakSanitizer after every input that allocated more than it freed.
//!
//! Input: 3-byte steps `[operation, user_data, argument]`; operation % 16:
//! 0-12 add an operation (see `World::add`; the argument picks an offset or
//! a cancellation target), 13 submit, 14 reap once, 15 reap everything.
#![no_main]

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ringfence::{Error, EventType, IoBufMut, URingContext};

/// Distinct user_data values: few, so that inputs hit duplicates often.
const USER_DATA_SPACE: u64 = 16;
/// Every buffer is this long.
const BUF_LEN: usize = 256;
/// readv/writev offsets in the memfds are multiples of this, so regions of
/// different operations overlap partly and often.
const OFFSET_STEP: usize = 16;
/// Both memfds are this long: every region `[step * 16, + BUF_LEN)` fits.
const MEMFD_LEN: usize = 256 * OFFSET_STEP + BUF_LEN;
const ENTRIES: usize = 8;
/// How long draining may take before the target calls it a hang.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

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

/// The iovec for the slot of `user_data`.
fn buffer(user_data: u64) -> IoBufMut<'static> {
    // SAFETY: the pool is leaked, so the slot lives forever; the context
    // refuses a second operation with the same user_data while one is in
    // flight, and the target only reads or writes a slot itself while no
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
unsafe fn slot(user_data: u64) -> &'static mut [u8] {
    // SAFETY: the slot is BUF_LEN bytes of leaked, initialised memory; the
    // caller guarantees the kernel is not using it, and no other reference
    // to it is alive (the target holds at most one at a time).
    unsafe { std::slice::from_raw_parts_mut(slot_ptr(user_data), BUF_LEN) }
}

/// What the read-only memfd holds at `offset`. The period (251) is prime,
/// so reading at the wrong offset shows.
fn fixed_byte(offset: usize) -> u8 {
    (offset % 251) as u8
}

/// What the scratch memfd starts with at `offset`.
fn scratch_initial_byte(offset: usize) -> u8 {
    (offset % 241) as u8 ^ 0x5a
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(ret, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both descriptors are new and ours.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A memfd of `MEMFD_LEN` bytes holding `byte(offset)` at each offset.
fn memfd(byte: fn(usize) -> u8) -> File {
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

fn poke(writer: &OwnedFd) {
    // SAFETY: writes one byte from a live literal; EAGAIN (pipe full) is
    // fine, the pipe is readable either way.
    unsafe { libc::write(writer.as_raw_fd(), b"x".as_ptr().cast(), 1) };
}

fn drain(reader: &OwnedFd) {
    let mut scratch = [0u8; 4096];
    // SAFETY: reads into a live local buffer of the stated length; the pipe
    // is non-blocking.
    while unsafe {
        libc::read(
            reader.as_raw_fd(),
            scratch.as_mut_ptr().cast(),
            scratch.len(),
        )
    } > 0
    {}
}

fn errno(result: &io::Result<u32>) -> Option<i32> {
    result.as_ref().err().and_then(io::Error::raw_os_error)
}

/// What an operation in flight is, and what its completion must look like.
#[derive(Debug)]
enum Kind {
    Nop,
    /// readv of /dev/zero: all zeros.
    ZeroRead,
    /// writev to /dev/null.
    NullWrite,
    /// fsync of /dev/null (which has no fsync: EINVAL) or of the scratch
    /// memfd (0).
    Fsync {
        null: bool,
    },
    Poll,
    /// A poll removal aimed at the poll with user_data `target`.
    PollRemove {
        target: u64,
    },
    /// A cancellation aimed at the operation with user_data `target`.
    Cancel {
        target: u64,
    },
    /// readv from the pipe: whatever pokes and pipe writes put there.
    PipeRead,
    PipeWrite,
    /// readv of the read-only memfd at `offset`.
    FixedRead {
        offset: usize,
    },
    /// readv of the scratch memfd at `offset`; `expected` is what it must
    /// read, if the model knows.
    ScratchRead {
        offset: usize,
        expected: Option<Vec<u8>>,
    },
    /// writev of `data` to the scratch memfd at `offset`, or (`punch`) a
    /// hole punched there, which reads back as zeros. `contested` once
    /// another write to an overlapping region was in flight at the same
    /// time: their order is unknown.
    ScratchWrite {
        offset: usize,
        data: Vec<u8>,
        punch: bool,
        contested: bool,
    },
}

#[derive(Debug)]
struct Op {
    kind: Kind,
    /// A cancellation (or, for a poll, a poll removal) aimed at this
    /// user_data while this operation was in flight: `ECANCELED` is allowed.
    targeted: bool,
}

fn overlaps(a: usize, b: usize) -> bool {
    a < b + BUF_LEN && b < a + BUF_LEN
}

struct Model {
    ops: HashMap<u64, Op>,
    /// SQEs added since the last submit, or `None` when a submit stopped
    /// short and the count is unknown.
    queued: Option<usize>,
    sq_entries: usize,
    /// What the scratch memfd holds, where known.
    scratch: Vec<Option<u8>>,
}

impl Model {
    fn new(sq_entries: usize) -> Model {
        Model {
            ops: HashMap::new(),
            queued: Some(0),
            sq_entries,
            scratch: (0..MEMFD_LEN)
                .map(|i| Some(scratch_initial_byte(i)))
                .collect(),
        }
    }

    /// Whether a cancellation or poll removal in flight aims at `user_data`
    /// and could stop an operation of `kind`.
    fn aimed_at(&self, user_data: u64, kind: &Kind) -> bool {
        self.ops.values().any(|op| match op.kind {
            Kind::Cancel { target } => target == user_data,
            Kind::PollRemove { target } => target == user_data && matches!(kind, Kind::Poll),
            _ => false,
        })
    }

    /// What a readv of the scratch memfd at `offset` must read, if the model
    /// knows: not while a write to an overlapping region is in flight.
    fn scratch_expectation(&self, offset: usize) -> Option<Vec<u8>> {
        let writing = self.ops.values().any(|op| {
            matches!(op.kind, Kind::ScratchWrite { offset: other, .. } if overlaps(offset, other))
        });
        if writing {
            return None;
        }
        self.scratch[offset..offset + BUF_LEN]
            .iter()
            .copied()
            .collect()
    }

    /// Checks the context's answer to an add of `user_data` against the
    /// model; returns whether it was accepted.
    fn check_add(&self, user_data: u64, added: &ringfence::Result<()>) -> bool {
        let busy = self.ops.contains_key(&user_data);
        let full = self.queued == Some(self.sq_entries);
        match added {
            Ok(()) => {
                assert!(!busy, "duplicate user_data {user_data} accepted");
                assert!(!full, "add accepted with {} SQEs queued", self.sq_entries);
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

    /// Records an operation the context accepted.
    fn added(&mut self, user_data: u64, mut kind: Kind) {
        let targeted = self.aimed_at(user_data, &kind);
        match &mut kind {
            Kind::Cancel { target } => {
                if let Some(op) = self.ops.get_mut(target) {
                    op.targeted = true;
                }
            }
            Kind::PollRemove { target } => {
                if let Some(op) = self.ops.get_mut(target) {
                    op.targeted |= matches!(op.kind, Kind::Poll);
                }
            }
            Kind::ScratchWrite {
                offset, contested, ..
            } => {
                for op in self.ops.values_mut() {
                    match &mut op.kind {
                        Kind::ScratchWrite {
                            offset: other,
                            contested: other_contested,
                            ..
                        } if overlaps(*offset, *other) => {
                            *other_contested = true;
                            *contested = true;
                        }
                        Kind::ScratchRead {
                            offset: other,
                            expected,
                        } if overlaps(*offset, *other) => *expected = None,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        self.queued = self.queued.map(|queued| queued + 1);
        self.ops.insert(user_data, Op { kind, targeted });
    }

    /// Checks one completion against the operation the model has for it.
    fn completed(&mut self, user_data: u64, result: io::Result<u32>) {
        let Some(op) = self.ops.remove(&user_data) else {
            panic!("completion for {user_data} not in flight: {result:?}");
        };
        if errno(&result) == Some(libc::ECANCELED) {
            assert!(
                op.targeted,
                "{op:?} ({user_data}) cancelled though nothing aimed at it"
            );
            if let Kind::ScratchWrite { offset, .. } = op.kind {
                self.scratch[offset..offset + BUF_LEN].fill(None);
            }
            return;
        }
        let full = Some(BUF_LEN as u32);
        let got = result.as_ref().ok().copied();
        // SAFETY: the operation with this user_data has just completed and
        // the model no longer has one in flight, so the kernel is done with
        // the slot; the slice is dropped at the end of this function.
        let read_back = || unsafe { &*slot(user_data) };
        match op.kind {
            Kind::Nop => assert_eq!(got, Some(0), "nop {user_data}: {result:?}"),
            Kind::ZeroRead => {
                assert_eq!(got, full, "readv of /dev/zero {user_data}: {result:?}");
                assert!(
                    read_back().iter().all(|b| *b == 0),
                    "readv of /dev/zero {user_data} read non-zero bytes"
                );
            }
            Kind::NullWrite | Kind::PipeWrite => {
                assert_eq!(got, full, "{op:?} {user_data}: {result:?}")
            }
            Kind::Fsync { null: true } => assert_eq!(
                errno(&result),
                Some(libc::EINVAL),
                "fsync of /dev/null {user_data}: {result:?}"
            ),
            Kind::Fsync { null: false } => {
                assert_eq!(got, Some(0), "fsync of a memfd {user_data}: {result:?}")
            }
            Kind::Poll => assert!(
                got.is_some_and(|events| events & libc::POLLIN as u32 != 0),
                "poll {user_data}: {result:?}"
            ),
            Kind::PollRemove { .. } | Kind::Cancel { .. } => assert!(
                got == Some(0) || matches!(errno(&result), Some(libc::ENOENT | libc::EALREADY)),
                "{op:?} {user_data}: {result:?}"
            ),
            Kind::PipeRead => assert!(
                got.is_some_and(|n| n > 0 && n <= BUF_LEN as u32)
                    || errno(&result) == Some(libc::EAGAIN),
                "readv of the pipe {user_data}: {result:?}"
            ),
            Kind::FixedRead { offset } => {
                assert_eq!(
                    got, full,
                    "readv of the fixed memfd {user_data}: {result:?}"
                );
                let expected: Vec<u8> = (offset..offset + BUF_LEN).map(fixed_byte).collect();
                assert!(
                    read_back() == expected.as_slice(),
                    "readv of the fixed memfd at {offset} ({user_data}) read wrong data"
                );
            }
            Kind::ScratchRead { offset, expected } => {
                assert_eq!(
                    got, full,
                    "readv of the scratch memfd {user_data}: {result:?}"
                );
                if let Some(expected) = expected {
                    assert!(
                        read_back() == expected.as_slice(),
                        "readv of the scratch memfd at {offset} ({user_data}) read wrong data"
                    );
                }
            }
            Kind::ScratchWrite {
                offset,
                data,
                punch,
                contested,
            } => {
                let want = if punch { Some(0) } else { full };
                assert_eq!(
                    got, want,
                    "write to the scratch memfd {user_data}: {result:?}"
                );
                let region = &mut self.scratch[offset..offset + BUF_LEN];
                if contested {
                    region.fill(None);
                } else {
                    for (known, byte) in region.iter_mut().zip(data) {
                        *known = Some(byte);
                    }
                }
            }
        }
    }
}

/// Files that stay the same for every input.
struct Fixed {
    zero: File,
    null: File,
    /// Holds `fixed_byte` everywhere; nothing ever writes it.
    memfd: File,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| Fixed {
        zero: File::open("/dev/zero").expect("/dev/zero"),
        null: OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .expect("/dev/null"),
        memfd: memfd(fixed_byte),
    })
}

/// One input's world: the ring, its model, and the per-input files.
struct World {
    ring: URingContext,
    model: Model,
    scratch: File,
    reader: OwnedFd,
    writer: OwnedFd,
}

impl World {
    fn submit(&mut self) {
        match self.ring.submit() {
            Ok(()) => self.model.queued = Some(0),
            Err(Error::KernelBusy(_)) => self.model.queued = None,
            Err(e) => panic!("submit: {e}"),
        }
    }

    fn check_in_flight(&self) {
        assert_eq!(
            self.ring.in_flight(),
            self.model.ops.len(),
            "in_flight() disagrees with the model: {:?}",
            self.model.ops
        );
    }

    /// One `wait`: every pending operation can complete once the pipe has
    /// data, so it cannot block for good.
    fn reap(&mut self) {
        poke(&self.writer);
        self.submit();
        for (user_data, result) in self.ring.wait().expect("wait") {
            self.model.completed(user_data, result);
        }
        drain(&self.reader);
    }

    /// Reaps until nothing is in flight.
    fn drain_all(&mut self) {
        let deadline = Instant::now() + DRAIN_DEADLINE;
        while !self.model.ops.is_empty() {
            assert!(
                Instant::now() < deadline,
                "operations never completed: {:?}",
                self.model.ops
            );
            poke(&self.writer);
            self.submit();
            let ready = self
                .ring
                .wait_timeout(Duration::from_millis(50))
                .expect("wait_timeout");
            for (user_data, result) in ready {
                self.model.completed(user_data, result);
            }
        }
        drain(&self.reader);
    }

    /// Adds the operation `op` with `user_data`, checks the answer against
    /// the model and records it. `arg` picks a target or an offset.
    fn add(&mut self, step: usize, op: u8, user_data: u64, arg: u8) {
        let fixed = fixed();
        let ring = &self.ring;
        let offset = usize::from(arg) * OFFSET_STEP;
        let target = u64::from(arg) % USER_DATA_SPACE;
        // The slot may be prepared only while no operation uses it.
        let free = !self.model.ops.contains_key(&user_data);
        let prepare = |fill: &dyn Fn(&mut [u8])| {
            if free {
                // SAFETY: no operation with this user_data is in flight, and
                // the slice is gone before the add below.
                fill(unsafe { slot(user_data) });
            }
        };
        let read_target = || prepare(&|buf| buf.fill(0xee));
        let iovecs = || Box::pin([buffer(user_data)]);
        let scratch = self.scratch.as_raw_fd();
        // SAFETY (for every readv and writev below): `buffer` hands out the
        // slot of this user_data, which no other operation in flight uses;
        // if one does, the context refuses the add (see `buffer`).
        let (kind, added) = match op {
            0 => (Kind::Nop, ring.add_nop(user_data)),
            1 => {
                read_target();
                let fd = fixed.zero.as_raw_fd();
                // SAFETY: see above.
                let added = unsafe { ring.add_readv(iovecs(), fd, Some(0), user_data) };
                (Kind::ZeroRead, added)
            }
            2 => {
                let fd = fixed.null.as_raw_fd();
                // SAFETY: see above.
                let added = unsafe { ring.add_writev(iovecs(), fd, None, user_data) };
                (Kind::NullWrite, added)
            }
            3 => {
                let fd = self.reader.as_raw_fd();
                (Kind::Poll, ring.add_poll_fd(fd, EventType::Read, user_data))
            }
            4 => (
                Kind::PollRemove { target },
                ring.remove_poll_fd(target, user_data),
            ),
            5 => (
                Kind::Cancel { target },
                ring.async_cancel(target, user_data),
            ),
            6 => {
                let null = arg & 1 == 0;
                let fd = if null {
                    fixed.null.as_raw_fd()
                } else {
                    scratch
                };
                (Kind::Fsync { null }, ring.add_fsync(fd, user_data))
            }
            7 => {
                read_target();
                let expected = self.model.scratch_expectation(offset);
                let kind = Kind::ScratchRead { offset, expected };
                // SAFETY: see above.
                let added =
                    unsafe { ring.add_readv(iovecs(), scratch, Some(offset as u64), user_data) };
                (kind, added)
            }
            8 => {
                let data: Vec<u8> = (0..BUF_LEN)
                    .map(|i| (step as u8).wrapping_mul(31) ^ (i as u8).wrapping_add(arg))
                    .collect();
                prepare(&|buf| buf.copy_from_slice(&data));
                // SAFETY: see above.
                let added =
                    unsafe { ring.add_writev(iovecs(), scratch, Some(offset as u64), user_data) };
                let kind = Kind::ScratchWrite {
                    offset,
                    data,
                    punch: false,
                    contested: false,
                };
                (kind, added)
            }
            9 => {
                let mode = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32;
                let added =
                    ring.add_fallocate(scratch, offset as u64, BUF_LEN as u64, mode, user_data);
                let kind = Kind::ScratchWrite {
                    offset,
                    data: vec![0; BUF_LEN],
                    punch: true,
                    contested: false,
                };
                (kind, added)
            }
            10 => {
                read_target();
                let fd = fixed.memfd.as_raw_fd();
                // SAFETY: see above.
                let added = unsafe { ring.add_readv(iovecs(), fd, Some(offset as u64), user_data) };
                (Kind::FixedRead { offset }, added)
            }
            11 => {
                read_target();
                let fd = self.reader.as_raw_fd();
                // SAFETY: see above.
                let added = unsafe { ring.add_readv(iovecs(), fd, None, user_data) };
                (Kind::PipeRead, added)
            }
            _ => {
                prepare(&|buf| buf.fill(b'w'));
                let fd = self.writer.as_raw_fd();
                // SAFETY: see above.
                let added = unsafe { ring.add_writev(iovecs(), fd, None, user_data) };
                (Kind::PipeWrite, added)
            }
        };
        if self.model.check_add(user_data, &added) {
            self.model.added(user_data, kind);
        } else if matches!(added, Err(Error::NoSpace)) {
            self.submit();
        }
    }
}

/// Operations 0..ADDS add; the rest submit, reap or drain.
const ADDS: u8 = 13;

fuzz_target!(|data: &[u8]| {
    let ring = match URingContext::new(ENTRIES, None) {
        Ok(ring) => ring,
        // Out of memory or descriptors for now: not what this target tests.
        Err(Error::OutOfLockedMemory) => return,
        Err(Error::Setup(e))
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOMEM | libc::EMFILE | libc::ENFILE)
            ) =>
        {
            return
        }
        Err(e) => panic!("creating a ring: {e}"),
    };
    let (reader, writer) = pipe();
    let mut world = World {
        model: Model::new(ring.sq_entries() as usize),
        ring,
        scratch: memfd(scratch_initial_byte),
        reader,
        writer,
    };

    for (step, chunk) in data.chunks(3).enumerate() {
        let byte = |i: usize| chunk.get(i).copied().unwrap_or(0);
        let op = byte(0) % (ADDS + 3);
        let user_data = u64::from(byte(1)) % USER_DATA_SPACE;
        match op {
            op if op < ADDS => world.add(step, op, user_data, byte(2)),
            ADDS => world.submit(),
            14 => world.reap(),
            _ => world.drain_all(),
        }
        world.check_in_flight();
    }
    // Every operation here can be cancelled, so closing must drain whatever
    // is still in flight (polls nobody fired, reads of an empty pipe).
    world
        .ring
        .close(DRAIN_DEADLINE)
        .expect("close left operations in the kernel");
});

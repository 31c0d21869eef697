//! A random allowlist plus random operations on the restricted ring it
//! makes, against the real kernel:
//!
//! - every operation outside the allowlist completes with `EACCES`, every
//!   operation inside it never does. "Inside" is computed here, from the
//!   kernel's rule, not with the allowlist's own methods: the opcode is
//!   allowed, the SQE carries every required flag, and no flag outside
//!   allowed | required;
//! - `register_eventfd` and `unregister_eventfd` are refused with `EACCES`
//!   exactly when the allowlist lacks them (before Linux 7.0 any restriction
//!   set closes register calls; from 7.0 only a set with register entries
//!   does), and otherwise follow the kernel's rules (`EBUSY` for a second
//!   eventfd, `ENXIO` when none is registered);
//! - allowed operations complete with the result their kind allows, readv
//!   data included, `ECANCELED` only when linked behind another SQE or aimed
//!   at by a cancellation;
//! - the context's bookkeeping agrees with a model throughout, as in
//!   `real_kernel_ops`.
//!
//! Nothing is left in flight at the end: polls are only ever on a pipe this
//! target writes to itself, so a ring without `AsyncCancel` still drains
//! quickly.
//!
//! Input: `[operations mask, flags and register bits]`, then 3-byte steps
//! `[operation, user_data, argument]`.
//!
//! - mask bit i allows `OPERATIONS[i]`;
//! - flags byte: bits 0-2 allow `FLAGS[0..3]`, bits 3-5 require them, bit 6
//!   allows `RegisterOperation::Eventfd`, bit 7 `UnregisterEventfd`;
//! - operation % 15: 0-9 add an operation (see `World::add`), 10 submit,
//!   11 reap once, 12 reap everything, 13 register the eventfd, 14
//!   unregister it.
#![no_main]

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ringfence::{
    Error, EventType, IoBufMut, RegisterOperation, SqeFlags, URingAllowlist, URingContext,
    URingOperation,
};

/// The operations the context can issue, in mask bit order.
const OPERATIONS: [URingOperation; 8] = [
    URingOperation::Nop,
    URingOperation::Readv,
    URingOperation::Writev,
    URingOperation::Fsync,
    URingOperation::Fallocate,
    URingOperation::PollAdd,
    URingOperation::PollRemove,
    URingOperation::AsyncCancel,
];
/// The SQE flags `add_nop_with_flags` takes, in bit order.
const FLAGS: [SqeFlags; 3] = [SqeFlags::LINK, SqeFlags::HARDLINK, SqeFlags::ASYNC];

const USER_DATA_SPACE: u64 = 16;
const BUF_LEN: usize = 256;
const OFFSET_STEP: usize = 16;
const MEMFD_LEN: usize = 128 * OFFSET_STEP + BUF_LEN;
const ENTRIES: usize = 8;
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// One `BUF_LEN` slot per user_data, for the whole process; only the
/// operation holding that user_data uses it.
fn slot_ptr(user_data: u64) -> *mut u8 {
    static POOL: OnceLock<usize> = OnceLock::new();
    let base = *POOL.get_or_init(|| {
        let pool = vec![0u8; BUF_LEN * USER_DATA_SPACE as usize].into_boxed_slice();
        Box::leak(pool).as_mut_ptr() as usize
    });
    assert!(user_data < USER_DATA_SPACE);
    (base + BUF_LEN * user_data as usize) as *mut u8
}

fn buffer(user_data: u64) -> IoBufMut<'static> {
    // SAFETY: the pool is leaked, so the slot lives forever; the context
    // refuses a second operation with the same user_data while one is in
    // flight, and the target touches a slot itself only while no operation
    // with its user_data is in flight (see `slot`).
    unsafe { IoBufMut::from_raw_parts(slot_ptr(user_data), BUF_LEN) }
}

/// The slot of `user_data`.
///
/// # Safety
///
/// No operation with this user_data may be in flight, and the returned
/// slice must be dropped before one is added.
unsafe fn slot(user_data: u64) -> &'static mut [u8] {
    // SAFETY: BUF_LEN bytes of leaked, initialised memory, which the caller
    // guarantees the kernel is not using; the target holds at most one
    // reference to a slot at a time.
    unsafe { std::slice::from_raw_parts_mut(slot_ptr(user_data), BUF_LEN) }
}

/// What the read-only memfd holds at `offset` (period 251, a prime, so a
/// read at the wrong offset shows).
fn fixed_byte(offset: usize) -> u8 {
    (offset % 251) as u8
}

fn memfd(fill: u8) -> File {
    // SAFETY: the name is a NUL-terminated literal; memfd_create returns a
    // new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"ringfence-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    let content: Vec<u8> = (0..MEMFD_LEN)
        .map(|i| if fill == 0 { fixed_byte(i) } else { fill })
        .collect();
    std::os::unix::fs::FileExt::write_all_at(&file, &content, 0).expect("filling a memfd");
    file
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(ret, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both descriptors are new and ours.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn eventfd() -> OwnedFd {
    // SAFETY: eventfd takes no pointers; it returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just returned by eventfd and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
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

/// Whether register calls answer to the allowlist on this kernel at all.
/// Before 7.0 any registered restriction set makes them do; from 7.0 only a
/// set with register entries.
fn registers_restricted(policy: &Policy) -> bool {
    static BEFORE_7: OnceLock<bool> = OnceLock::new();
    let before_7 = *BEFORE_7.get_or_init(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
        let major: u32 = release
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|major| major.parse().ok())
            .expect("kernel major version");
        major < 7
    });
    before_7 || policy.register_eventfd || policy.unregister_eventfd
}

fn errno(result: &io::Result<u32>) -> Option<i32> {
    result.as_ref().err().and_then(io::Error::raw_os_error)
}

/// The allowlist an input picked, as raw bits for the model.
#[derive(Debug)]
struct Policy {
    operations: u8,
    allowed_flags: u8,
    required_flags: u8,
    register_eventfd: bool,
    unregister_eventfd: bool,
}

fn flag_bits(mask: u8) -> u8 {
    FLAGS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .fold(0, |bits, (_, flag)| bits | flag.bits())
}

impl Policy {
    fn from_bytes(operations: u8, flags: u8) -> Policy {
        Policy {
            operations,
            allowed_flags: flag_bits(flags & 0b111),
            required_flags: flag_bits((flags >> 3) & 0b111),
            register_eventfd: flags & 0x40 != 0,
            unregister_eventfd: flags & 0x80 != 0,
        }
    }

    fn allowlist(&self) -> URingAllowlist {
        let mut allowlist = URingAllowlist::new();
        for (i, op) in OPERATIONS.iter().enumerate() {
            if self.operations & (1 << i) != 0 {
                allowlist.allow_submit_operation(*op);
            }
        }
        allowlist
            .allow_sqe_flags(self.allowed_flags)
            .require_sqe_flags(self.required_flags);
        if self.register_eventfd {
            allowlist.allow_register_operation(RegisterOperation::Eventfd);
        }
        if self.unregister_eventfd {
            allowlist.allow_register_operation(RegisterOperation::UnregisterEventfd);
        }
        allowlist
    }

    /// The kernel's rule: the opcode is allowed, every required flag is
    /// set, and no flag outside allowed | required.
    fn permits(&self, op: URingOperation, flags: u8) -> bool {
        let index = OPERATIONS.iter().position(|o| *o == op).expect("known op");
        self.operations & (1 << index) != 0
            && flags & self.required_flags == self.required_flags
            && flags & !(self.allowed_flags | self.required_flags) == 0
    }
}

#[derive(Debug)]
enum Kind {
    Nop,
    ZeroRead,
    FixedRead { offset: usize },
    Write,
    Fsync,
    Fallocate,
    Poll,
    PollRemove { target: u64 },
    Cancel { target: u64 },
}

impl Kind {
    fn operation(&self) -> URingOperation {
        match self {
            Kind::Nop => URingOperation::Nop,
            Kind::ZeroRead | Kind::FixedRead { .. } => URingOperation::Readv,
            Kind::Write => URingOperation::Writev,
            Kind::Fsync => URingOperation::Fsync,
            Kind::Fallocate => URingOperation::Fallocate,
            Kind::Poll => URingOperation::PollAdd,
            Kind::PollRemove { .. } => URingOperation::PollRemove,
            Kind::Cancel { .. } => URingOperation::AsyncCancel,
        }
    }
}

#[derive(Debug)]
struct Op {
    kind: Kind,
    /// The SQE's flags, for failure messages.
    #[allow(dead_code)] // Only read through Debug.
    flags: u8,
    /// Outside the allowlist: must complete with EACCES.
    refused: bool,
    /// In a link chain, or aimed at by a cancellation or poll removal:
    /// ECANCELED is allowed.
    may_cancel: bool,
}

struct Model {
    policy: Policy,
    ops: HashMap<u64, Op>,
    /// SQEs added since the last submit; `None` after a short submit.
    queued: Option<usize>,
    sq_entries: usize,
    /// The last SQE added since the last submit carried LINK or HARDLINK:
    /// the next one joins its chain.
    linking: bool,
    eventfd_registered: bool,
}

const LINK_FLAGS: u8 = SqeFlags::LINK.bits() | SqeFlags::HARDLINK.bits();

impl Model {
    fn aimed_at(&self, user_data: u64, kind: &Kind) -> bool {
        self.ops.values().any(|op| match op.kind {
            Kind::Cancel { target } => target == user_data,
            Kind::PollRemove { target } => target == user_data && matches!(kind, Kind::Poll),
            _ => false,
        })
    }

    /// Checks the context's answer to an add; returns whether it was
    /// accepted. Restrictions never refuse an add: the kernel does, later.
    fn check_add(&self, user_data: u64, added: &ringfence::Result<()>) -> bool {
        let busy = self.ops.contains_key(&user_data);
        let full = self.queued == Some(self.sq_entries);
        match added {
            Ok(()) => {
                assert!(!busy, "duplicate user_data {user_data} accepted");
                assert!(!full, "add accepted with {} SQEs queued", self.sq_entries);
                true
            }
            Err(Error::NoSpace) => {
                assert!(
                    full || self.queued.is_none(),
                    "NoSpace with {:?} queued",
                    self.queued
                );
                false
            }
            Err(Error::DuplicateUserData(refused)) => {
                assert_eq!(*refused, user_data, "refusal names another user_data");
                assert!(busy && !full, "{user_data} refused as a duplicate");
                false
            }
            Err(e) => panic!("unexpected error adding {user_data}: {e}"),
        }
    }

    fn added(&mut self, user_data: u64, kind: Kind, flags: u8) {
        let refused = !self.policy.permits(kind.operation(), flags);
        // Every SQE of a link chain, its head too, completes with ECANCELED
        // when another one in the chain fails.
        let may_cancel = self.linking || flags & LINK_FLAGS != 0 || self.aimed_at(user_data, &kind);
        match kind {
            Kind::Cancel { target } => {
                if let Some(op) = self.ops.get_mut(&target) {
                    op.may_cancel = true;
                }
            }
            Kind::PollRemove { target } => {
                if let Some(op) = self.ops.get_mut(&target) {
                    op.may_cancel |= matches!(op.kind, Kind::Poll);
                }
            }
            _ => {}
        }
        self.linking = flags & LINK_FLAGS != 0;
        self.queued = self.queued.map(|queued| queued + 1);
        let op = Op {
            kind,
            flags,
            refused,
            may_cancel,
        };
        self.ops.insert(user_data, op);
    }

    fn completed(&mut self, user_data: u64, result: io::Result<u32>) {
        let Some(op) = self.ops.remove(&user_data) else {
            panic!("completion for {user_data} not in flight: {result:?}");
        };
        let what = || format!("{op:?} ({user_data}) under {:?}: {result:?}", self.policy);
        if op.refused {
            assert_eq!(
                errno(&result),
                Some(libc::EACCES),
                "not refused: {}",
                what()
            );
            return;
        }
        assert_ne!(errno(&result), Some(libc::EACCES), "refused: {}", what());
        if errno(&result) == Some(libc::ECANCELED) {
            assert!(op.may_cancel, "cancelled: {}", what());
            return;
        }
        let got = result.as_ref().ok().copied();
        let full = Some(BUF_LEN as u32);
        // SAFETY: the operation with this user_data has just completed and
        // the model has none left in flight, so the kernel is done with the
        // slot.
        let read_back = || unsafe { &*slot(user_data) };
        let ok = match &op.kind {
            Kind::Nop | Kind::Fsync | Kind::Fallocate => got == Some(0),
            Kind::Write => got == full,
            Kind::ZeroRead => got == full && read_back().iter().all(|b| *b == 0),
            Kind::FixedRead { offset } => {
                got == full
                    && read_back()
                        .iter()
                        .enumerate()
                        .all(|(i, b)| *b == fixed_byte(*offset + i))
            }
            Kind::Poll => got.is_some_and(|events| events & libc::POLLIN as u32 != 0),
            Kind::PollRemove { .. } | Kind::Cancel { .. } => {
                got == Some(0) || matches!(errno(&result), Some(libc::ENOENT | libc::EALREADY))
            }
        };
        assert!(ok, "wrong result or data: {}", what());
    }

    /// Checks a register call's answer: refused exactly when not allowed,
    /// otherwise the kernel's own rules.
    fn registered(&mut self, unregister: bool, result: ringfence::Result<()>) {
        let allowed = if unregister {
            self.policy.unregister_eventfd
        } else {
            self.policy.register_eventfd
        };
        let expected = if registers_restricted(&self.policy) && !allowed {
            Some(libc::EACCES)
        } else if unregister {
            (!self.eventfd_registered).then_some(libc::ENXIO)
        } else {
            self.eventfd_registered.then_some(libc::EBUSY)
        };
        let got = match &result {
            Ok(()) => None,
            Err(Error::Register { source, .. }) => Some(source.raw_os_error().expect("errno")),
            Err(e) => panic!("register call failed oddly: {e}"),
        };
        assert_eq!(
            got,
            expected,
            "{} eventfd under {:?}: {result:?}",
            if unregister { "unregister" } else { "register" },
            self.policy
        );
        if got.is_none() {
            self.eventfd_registered = !unregister;
        }
    }
}

/// Files that stay the same for every input.
struct Fixed {
    zero: File,
    null: File,
    /// Holds `fixed_byte` everywhere; nothing ever writes it.
    memfd: File,
    /// Written, fsynced and fallocated; nobody checks what it holds.
    scratch: File,
    eventfd: OwnedFd,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| Fixed {
        zero: File::open("/dev/zero").expect("/dev/zero"),
        null: OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .expect("/dev/null"),
        memfd: memfd(0),
        scratch: memfd(0x5a),
        eventfd: eventfd(),
    })
}

struct World {
    ring: URingContext,
    model: Model,
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
        // A submit ends every link chain.
        self.model.linking = false;
    }

    fn reap(&mut self) {
        poke(&self.writer);
        self.submit();
        for (user_data, result) in self.ring.wait().expect("wait") {
            self.model.completed(user_data, result);
        }
        drain(&self.reader);
    }

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

    fn add(&mut self, op: u8, user_data: u64, arg: u8) {
        let fixed = fixed();
        let ring = &self.ring;
        let offset = usize::from(arg % 128) * OFFSET_STEP;
        let target = u64::from(arg) % USER_DATA_SPACE;
        if matches!(op, 2 | 3) && !self.model.ops.contains_key(&user_data) {
            // SAFETY: no operation with this user_data is in flight, and
            // the slice is gone before the add below.
            unsafe { slot(user_data) }.fill(0xee);
        }
        let iovecs = || Box::pin([buffer(user_data)]);
        let mut flags = 0;
        // SAFETY (for every readv and writev below): `buffer` hands out the
        // slot of this user_data, which no other operation in flight uses;
        // if one does, the context refuses the add.
        let (kind, added) = match op {
            0 => (Kind::Nop, ring.add_nop(user_data)),
            1 => {
                let chosen = FLAGS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| arg & (1 << i) != 0)
                    .fold(SqeFlags::NONE, |all, (_, flag)| all | *flag);
                flags = chosen.bits();
                (Kind::Nop, ring.add_nop_with_flags(chosen, user_data))
            }
            2 => {
                let fd = fixed.zero.as_raw_fd();
                // SAFETY: see above.
                let added = unsafe { ring.add_readv(iovecs(), fd, Some(0), user_data) };
                (Kind::ZeroRead, added)
            }
            3 => {
                let fd = fixed.memfd.as_raw_fd();
                // SAFETY: see above.
                let added = unsafe { ring.add_readv(iovecs(), fd, Some(offset as u64), user_data) };
                (Kind::FixedRead { offset }, added)
            }
            4 => {
                let (fd, at) = if arg & 1 == 0 {
                    (fixed.null.as_raw_fd(), None)
                } else {
                    (fixed.scratch.as_raw_fd(), Some(offset as u64))
                };
                // SAFETY: see above.
                let added = unsafe { ring.add_writev(iovecs(), fd, at, user_data) };
                (Kind::Write, added)
            }
            5 => (
                Kind::Fsync,
                ring.add_fsync(fixed.scratch.as_raw_fd(), user_data),
            ),
            6 => {
                let fd = fixed.scratch.as_raw_fd();
                let added = ring.add_fallocate(fd, offset as u64, BUF_LEN as u64, 0, user_data);
                (Kind::Fallocate, added)
            }
            7 => {
                let fd = self.reader.as_raw_fd();
                (Kind::Poll, ring.add_poll_fd(fd, EventType::Read, user_data))
            }
            8 => (
                Kind::PollRemove { target },
                ring.remove_poll_fd(target, user_data),
            ),
            _ => (
                Kind::Cancel { target },
                ring.async_cancel(target, user_data),
            ),
        };
        if self.model.check_add(user_data, &added) {
            self.model.added(user_data, kind, flags);
        } else if matches!(added, Err(Error::NoSpace)) {
            self.submit();
        }
    }
}

/// Operations 0..ADDS add; the rest submit, reap, drain or register.
const ADDS: u8 = 10;

fuzz_target!(|data: &[u8]| {
    let [operations, flags, steps @ ..] = data else {
        return;
    };
    let policy = Policy::from_bytes(*operations, *flags);
    let ring = match URingContext::new(ENTRIES, Some(&policy.allowlist())) {
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
        Err(e) => panic!("creating a ring with {policy:?}: {e}"),
    };
    let (reader, writer) = pipe();
    let mut world = World {
        model: Model {
            policy,
            ops: HashMap::new(),
            queued: Some(0),
            sq_entries: ring.sq_entries() as usize,
            linking: false,
            eventfd_registered: false,
        },
        ring,
        reader,
        writer,
    };

    for chunk in steps.chunks(3) {
        let byte = |i: usize| chunk.get(i).copied().unwrap_or(0);
        let op = byte(0) % (ADDS + 5);
        let user_data = u64::from(byte(1)) % USER_DATA_SPACE;
        match op {
            op if op < ADDS => world.add(op, user_data, byte(2)),
            ADDS => world.submit(),
            11 => world.reap(),
            12 => world.drain_all(),
            13 => {
                let result = world.ring.register_eventfd(fixed().eventfd.as_raw_fd());
                world.model.registered(false, result);
            }
            _ => {
                let result = world.ring.unregister_eventfd();
                world.model.registered(true, result);
            }
        }
        assert_eq!(
            world.ring.in_flight(),
            world.model.ops.len(),
            "in_flight() disagrees with the model: {:?}",
            world.model.ops
        );
    }
    // Drain here, not in drop: without AsyncCancel, drop could only wait.
    world.drain_all();
    world
        .ring
        .close(Duration::from_secs(1))
        .expect("close with nothing in flight");
});

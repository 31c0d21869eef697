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

mod common;

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;
use std::time::Duration;

use common::{
    errno, files, iovecs, is_fixed_data, memfd, slot, Control, BUF_LEN, OFFSET_STEP,
    USER_DATA_SPACE,
};
use libfuzzer_sys::fuzz_target;
use ringfence::{Error, RegisterOperation, SqeFlags, URingAllowlist, URingOperation};

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

fn eventfd() -> OwnedFd {
    // SAFETY: eventfd takes no pointers; it returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just returned by eventfd and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
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
    Control(Control),
}

impl Kind {
    /// The control operation this is, if it is one.
    fn control(&self) -> Option<Control> {
        let Kind::Control(control) = self else {
            return None;
        };
        Some(*control)
    }

    fn operation(&self) -> URingOperation {
        match self {
            Kind::Nop => URingOperation::Nop,
            Kind::ZeroRead | Kind::FixedRead { .. } => URingOperation::Readv,
            Kind::Write => URingOperation::Writev,
            Kind::Fsync => URingOperation::Fsync,
            Kind::Fallocate => URingOperation::Fallocate,
            Kind::Control(Control::Poll) => URingOperation::PollAdd,
            Kind::Control(Control::PollRemove { .. }) => URingOperation::PollRemove,
            Kind::Control(Control::Cancel { .. }) => URingOperation::AsyncCancel,
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

/// What the model knows beyond the operations in flight.
struct Restrictions {
    policy: Policy,
    /// The last SQE added since the last submit carried LINK or HARDLINK:
    /// the next one joins its chain.
    linking: bool,
    eventfd_registered: bool,
}

const LINK_FLAGS: u8 = SqeFlags::LINK.bits() | SqeFlags::HARDLINK.bits();

impl Restrictions {
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

impl common::State for Restrictions {
    type Op = Op;

    fn completed(&mut self, user_data: u64, op: Op, result: io::Result<u32>) {
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
        // slot; the slice is dropped at the end of this function.
        let read_back = || unsafe { &*slot(user_data) };
        let ok = match &op.kind {
            Kind::Nop | Kind::Fsync | Kind::Fallocate => got == Some(0),
            Kind::Write => got == full,
            Kind::ZeroRead => got == full && read_back().iter().all(|b| *b == 0),
            Kind::FixedRead { offset } => got == full && is_fixed_data(*offset, read_back()),
            Kind::Control(control) => control.result_ok(&result),
        };
        assert!(ok, "wrong result or data: {}", what());
    }

    /// A submit ends every link chain.
    fn submitted(&mut self) {
        self.linking = false;
    }
}

/// Files only this target uses, the same for every input.
struct OwnFiles {
    /// Written, fsynced and fallocated; nobody checks what it holds.
    scratch: File,
    eventfd: OwnedFd,
}

fn own_files() -> &'static OwnFiles {
    static OWN_FILES: OnceLock<OwnFiles> = OnceLock::new();
    OWN_FILES.get_or_init(|| OwnFiles {
        scratch: memfd(|_| 0x5a),
        eventfd: eventfd(),
    })
}

/// One input's world: the ring, its model, and the pipe its polls wait on.
type World = common::World<Restrictions>;

impl World {
    /// Records an operation the context accepted. Restrictions never refuse
    /// an add: the kernel does, later.
    fn added(&mut self, user_data: u64, kind: Kind, flags: u8) {
        let refused = !self.state.policy.permits(kind.operation(), flags);
        let in_flight = self
            .ops
            .iter_mut()
            .map(|(other, op)| (*other, op.kind.control(), &mut op.may_cancel));
        let aimed_at = common::aim(in_flight, user_data, kind.control());
        // Every SQE of a link chain, its head too, completes with ECANCELED
        // when another one in the chain fails.
        let may_cancel = self.state.linking || flags & LINK_FLAGS != 0 || aimed_at;
        self.state.linking = flags & LINK_FLAGS != 0;
        let op = Op {
            kind,
            flags,
            refused,
            may_cancel,
        };
        self.ops.insert(user_data, op);
    }

    fn add(&mut self, op: u8, user_data: u64, arg: u8) {
        let files = files();
        let scratch = own_files().scratch.as_raw_fd();
        let ring = &self.ring;
        let offset = usize::from(arg % 128) * OFFSET_STEP;
        let target = u64::from(arg) % USER_DATA_SPACE;
        if matches!(op, 2 | 3) && !self.ops.contains_key(&user_data) {
            // SAFETY: no operation with this user_data is in flight, and
            // the slice is gone before the add below.
            unsafe { slot(user_data) }.fill(0xee);
        }
        let iovecs = || iovecs(user_data);
        let control = |control| (Kind::Control(control), self.add_control(control, user_data));
        let mut flags = 0;
        // SAFETY (for every readv and writev below): `iovecs` hands out the
        // slot of this user_data, which no other operation in flight uses;
        // if one does, the context refuses the add (see `common::iovecs`).
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
                let fd = files.zero.as_raw_fd();
                // SAFETY: see above.
                let added = unsafe { ring.add_readv(iovecs(), fd, Some(0), user_data) };
                (Kind::ZeroRead, added)
            }
            3 => {
                let fd = files.fixed.as_raw_fd();
                // SAFETY: see above.
                let added = unsafe { ring.add_readv(iovecs(), fd, Some(offset as u64), user_data) };
                (Kind::FixedRead { offset }, added)
            }
            4 => {
                let (fd, at) = if arg & 1 == 0 {
                    (files.null.as_raw_fd(), None)
                } else {
                    (scratch, Some(offset as u64))
                };
                // SAFETY: see above.
                let added = unsafe { ring.add_writev(iovecs(), fd, at, user_data) };
                (Kind::Write, added)
            }
            5 => (Kind::Fsync, ring.add_fsync(scratch, user_data)),
            6 => {
                let added =
                    ring.add_fallocate(scratch, offset as u64, BUF_LEN as u64, 0, user_data);
                (Kind::Fallocate, added)
            }
            7 => control(Control::Poll),
            8 => control(Control::PollRemove { target }),
            _ => control(Control::Cancel { target }),
        };
        if self.accepted(user_data, &added) {
            self.added(user_data, kind, flags);
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
    let Some(ring) = common::new_ring(Some(&policy.allowlist())) else {
        return;
    };
    let restrictions = Restrictions {
        policy,
        linking: false,
        eventfd_registered: false,
    };
    let mut world = World::new(ring, restrictions);

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
                let eventfd = own_files().eventfd.as_raw_fd();
                let result = world.ring.register_eventfd(eventfd);
                world.state.registered(false, result);
            }
            _ => {
                let result = world.ring.unregister_eventfd();
                world.state.registered(true, result);
            }
        }
        world.check_in_flight();
    }
    // Drain here, not in drop: without AsyncCancel, drop could only wait.
    world.drain_all();
    world
        .ring
        .close(Duration::from_secs(1))
        .expect("close with nothing in flight");
});

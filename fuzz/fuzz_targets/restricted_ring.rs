//! A random allowlist plus random operations on the restricted ring it
//! makes, against the real kernel:
//!
//! - the allowlist ranges over every opcode the kernel knows
//!   (`URingOperation::ALL`: the operations the crate cannot issue may be
//!   allowed too, and must change nothing), every `IosqeFlags` bit allowed
//!   or required, and the eventfd register calls;
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
//!   data included, `ECANCELED` only when in a link chain or aimed at by a
//!   cancellation when added; the label rule, the submission queue's fill,
//!   `in_flight()` (through iterators dropped early or kept alive across an
//!   add too) and exactly-once
//!   completion are checked as in `real_kernel_ops` (`common/model.rs`);
//! - at the end, either everything is drained and `close` succeeds, or the
//!   ring is closed with polls pending: then `close` drains them if the
//!   ring can cancel (the allowlist allows `AsyncCancel` and requires no
//!   flag beyond FIXED_FILE and ASYNC), and otherwise fails at once with
//!   `CancelNotAllowed(n)`, `n` being the operations still in flight.
//!
//! Polls only ever wait on a pipe this target writes to itself.
//!
//! Input (decoded with `arbitrary`): `Input`.
#![no_main]

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::model::{
    in_flight_cap, Adder, CommonStep, Model, Offset, OpInput, Res, RingConfig, Spec, DRAIN_DEADLINE,
};
use common::pool::{buf, fill_slot, iovecs, statx_buf, Completed, BUF_LEN};
use common::{
    control_result_ok, files, is_fixed_data, memfd, past_end_read, poll_result_ok, Pipe,
    OFFSET_STEP,
};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use ringfence::op::{
    Close, EventType, Fadvise, Fallocate, FilesUpdate, Fsync, MsgRing, Nop, Openat, Openat2,
    PollAdd, Read, Readv, Splice, Statx, SyncFileRange, Target, Tee, Timeout, Write, Writev,
};
use ringfence::{
    Error, FallocateMode, IosqeFlags, RegisterOperation, URingAllowlist, URingOperation,
};
use ringfence::{ResolveFlags, SpliceFlags, SyncFileRangeFlags};

/// A path that exists nowhere, for the path operations.
const MISSING: &str = "/nonexistent/ringfence-fuzz";

#[derive(Arbitrary, Debug)]
struct Input {
    policy: PolicyInput,
    /// Close with whatever is still in flight, instead of draining first.
    close_early: bool,
    steps: Vec<Step>,
}

/// The allowlist.
#[derive(Arbitrary, Debug)]
struct PolicyInput {
    ops: OpSet,
    /// `allow_housekeeping()`: Nop and AsyncCancel.
    housekeeping: bool,
    /// `IosqeFlags` bits allowed and required.
    allowed_flags: u8,
    required_flags: u8,
    register_eventfd: bool,
    unregister_eventfd: bool,
}

/// Which of `URingOperation::ALL` to allow (indices modulo its length).
#[derive(Arbitrary, Debug)]
enum OpSet {
    /// Bit `i`: the `i`th operation.
    Mask(u64),
    /// One operation.
    Only(u8),
    /// Every operation but one.
    AllBut(u8),
}

#[derive(Arbitrary, Debug)]
enum Step {
    Common(CommonStep),
    RegisterEventfd,
    UnregisterEventfd,
}

fn eventfd() -> OwnedFd {
    // SAFETY: eventfd takes no pointers; it returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just returned by eventfd and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Files only this target uses, the same for every input.
struct OwnFiles {
    /// Written, fsynced and fallocated; nobody checks what it holds.
    scratch: Arc<File>,
    eventfd: OwnedFd,
}

fn own_files() -> &'static OwnFiles {
    static OWN_FILES: OnceLock<OwnFiles> = OnceLock::new();
    OWN_FILES.get_or_init(|| OwnFiles {
        scratch: Arc::new(memfd(|_| 0x5a)),
        eventfd: eventfd(),
    })
}

/// Whether this kernel is older than 7.0, where any registered restriction
/// set makes register calls answer to the allowlist.
fn before_linux_7() -> bool {
    static BEFORE_7: OnceLock<bool> = OnceLock::new();
    *BEFORE_7.get_or_init(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
        let major: u32 = release
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|major| major.parse().ok())
            .expect("kernel major version");
        major < 7
    })
}

/// The allowlist an input picked, as the model sees it.
#[derive(Debug)]
struct Policy {
    ops: BTreeSet<URingOperation>,
    allowed_flags: u8,
    required_flags: u8,
    register_eventfd: bool,
    unregister_eventfd: bool,
    housekeeping: bool,
}

impl Policy {
    fn new(input: &PolicyInput) -> Policy {
        let all = URingOperation::ALL;
        let ops: BTreeSet<_> = match input.ops {
            OpSet::Mask(mask) => all
                .iter()
                .enumerate()
                .filter(|(i, _)| *i < 64 && mask & (1 << i) != 0)
                .map(|(_, op)| *op)
                .collect(),
            OpSet::Only(i) => [all[usize::from(i) % all.len()]].into(),
            OpSet::AllBut(i) => {
                let but = all[usize::from(i) % all.len()];
                all.iter().copied().filter(|op| *op != but).collect()
            }
        };
        let valid = IosqeFlags::all().bits();
        Policy {
            ops,
            allowed_flags: input.allowed_flags & valid,
            required_flags: input.required_flags & valid,
            register_eventfd: input.register_eventfd,
            unregister_eventfd: input.unregister_eventfd,
            housekeeping: input.housekeeping,
        }
    }

    fn allowlist(&self) -> URingAllowlist {
        let mut allowlist = URingAllowlist::new();
        for op in &self.ops {
            allowlist.allow_submit_operation(*op);
        }
        if self.housekeeping {
            allowlist.allow_housekeeping();
        }
        allowlist
            .allow_sqe_flags(IosqeFlags::from_bits_truncate(self.allowed_flags))
            .require_sqe_flags(IosqeFlags::from_bits_truncate(self.required_flags));
        if self.register_eventfd {
            allowlist.allow_register_operation(RegisterOperation::Eventfd);
        }
        if self.unregister_eventfd {
            allowlist.allow_register_operation(RegisterOperation::UnregisterEventfd);
        }
        allowlist
    }

    /// Whether the kernel runs SQEs with opcode `op`: `allow_housekeeping`
    /// adds Nop and AsyncCancel.
    fn allows_op(&self, op: URingOperation) -> bool {
        self.ops.contains(&op)
            || (self.housekeeping
                && matches!(op, URingOperation::Nop | URingOperation::AsyncCancel))
    }

    /// The kernel's rule: the opcode is allowed, every required flag is
    /// set, and no flag outside allowed | required.
    fn permits(&self, op: URingOperation, flags: u8) -> bool {
        self.allows_op(op)
            && flags & self.required_flags == self.required_flags
            && flags & !(self.allowed_flags | self.required_flags) == 0
    }

    /// Whether drop and `close` can cancel: the allowlist allows
    /// AsyncCancel, and requires no SQE flag the context's own SQEs do not
    /// carry (they carry FIXED_FILE and ASYNC only, as
    /// `URingAllowlist::require_sqe_flags` documents).
    fn can_cancel(&self) -> bool {
        let carried = (IosqeFlags::FIXED_FILE | IosqeFlags::ASYNC).bits();
        self.allows_op(URingOperation::AsyncCancel) && self.required_flags & !carried == 0
    }

    /// Whether the ring requires `IOSQE_FIXED_FILE` on every SQE.
    fn requires_fixed_file(&self) -> bool {
        self.required_flags & IosqeFlags::FIXED_FILE.bits() != 0
    }

    /// Whether register calls answer to the allowlist on this kernel at all.
    fn registers_restricted(&self) -> bool {
        before_linux_7() || self.register_eventfd || self.unregister_eventfd
    }
}

#[derive(Debug)]
enum Kind {
    /// Completes with exactly this.
    Gives(Res),
    ZeroRead,
    FixedRead {
        offset: u64,
    },
    Poll,
    Control,
}

/// What the model knows beyond the operations in flight.
struct Restricted {
    policy: Policy,
    pipe: Pipe,
    eventfd_registered: bool,
}

impl Restricted {
    /// Checks a register call's answer: refused exactly when not allowed,
    /// otherwise the kernel's own rules.
    fn registered(&mut self, unregister: bool, result: ringfence::Result<()>) {
        let allowed = if unregister {
            self.policy.unregister_eventfd
        } else {
            self.policy.register_eventfd
        };
        let expected = if self.policy.registers_restricted() && !allowed {
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

    fn readv(&self, input: &OpInput, adder: &mut Adder<'_, Kind>) {
        let files = files();
        let label = adder.label();
        fill_slot(adder, |buf| buf.fill(0xee));
        if input.file & 1 == 0 {
            let offset = input.offset.refused();
            let op = Readv::new(iovecs(label), files.zero.as_fd(), offset);
            adder.push(op, Spec::new(Kind::ZeroRead).slot().offset(offset));
            return;
        }
        // Never the file position: other reads move it.
        let offset = input.offset.value(OFFSET_STEP).unwrap_or(0);
        let kind = match input.offset {
            Offset::NearMax(_) => Kind::Gives(past_end_read(offset, BUF_LEN)),
            _ => Kind::FixedRead { offset },
        };
        let op = Readv::new(iovecs(label), files.fixed.as_fd(), Some(offset));
        adder.push(op, Spec::new(kind).slot().offset(Some(offset)));
    }
}

impl Model for Restricted {
    type Kind = Kind;
    const CONTROL: Kind = Kind::Control;

    /// The one place this target knows its operations: a new opcode in
    /// `op::ISSUABLE` needs an arm here, and fails at the first input
    /// without one.
    fn build(&self, input: &OpInput, adder: &mut Adder<'_, Kind>) {
        let scratch = || Arc::clone(&own_files().scratch);
        // Offsets inside the scratch memfd, or ones the context must refuse.
        let scratch_offset = match input.offset {
            Offset::AboveMax(_) | Offset::Max => input.offset.value(1).expect("an offset"),
            Offset::At(n) => u64::from(n) * OFFSET_STEP,
            _ => 0,
        };
        let full = Ok(BUF_LEN as u32);
        match input.opcode() {
            URingOperation::Nop => {
                let flags = input.sqe_flags();
                adder.push(
                    Nop::new().flags(flags),
                    Spec::new(Kind::Gives(Ok(0))).flags(flags),
                );
            }
            URingOperation::Readv => self.readv(input, adder),
            URingOperation::Writev => {
                let label = adder.label();
                let (op, offset) = if input.file & 1 == 0 {
                    let offset = input.offset.refused();
                    (
                        Writev::new(iovecs(label), files().null.as_fd(), offset),
                        offset,
                    )
                } else {
                    let offset = Some(scratch_offset);
                    (Writev::new(iovecs(label), scratch(), offset), offset)
                };
                adder.push(op, Spec::new(Kind::Gives(full)).slot().offset(offset));
            }
            URingOperation::Fsync => {
                adder.push(Fsync::new(scratch()), Spec::new(Kind::Gives(Ok(0))))
            }
            URingOperation::Fallocate => {
                let op = Fallocate::new(
                    scratch(),
                    scratch_offset,
                    BUF_LEN as u64,
                    FallocateMode::empty(),
                );
                adder.push(
                    op,
                    Spec::new(Kind::Gives(Ok(0))).offset(Some(scratch_offset)),
                );
            }
            URingOperation::Timeout => {
                let op = Timeout::new(Duration::from_micros(100));
                adder.push(op, Spec::new(Kind::Gives(Err(libc::ETIME))));
            }
            URingOperation::PollAdd => {
                // A bare descriptor, not an `Arc`: closing a ring that cannot
                // cancel leaks what its polls hold, and LeakSanitizer would
                // report an `Arc` (and the descriptor would stay open).
                // SAFETY: the pipe lives in the model, which outlives the
                // ring (`close_early` and the end of the input close the ring
                // first, and the kernel drops its polls with it).
                let reader = unsafe { Target::from_raw_fd(self.pipe.reader.as_raw_fd()) };
                adder.push(PollAdd::new(reader, EventType::Read), Spec::new(Kind::Poll));
            }
            // On the scratch memfd, which is not a socket; `Socket` asks
            // for a protocol AF_UNIX lacks.
            opcode if common::net::is_net(opcode) => {
                let res = match opcode {
                    URingOperation::Socket => libc::EPROTONOSUPPORT,
                    _ => libc::ENOTSOCK,
                };
                let spec = Spec::new(Kind::Gives(Err(res)));
                common::net::push(opcode, scratch().into(), 0, true, spec, adder);
            }
            opcode if common::fixed::is_fixed(opcode) => {
                // No buffer is registered on this ring (common/fixed.rs).
                let spec = Spec::new(Kind::Gives(Err(common::fixed::without_buffers(opcode))));
                common::fixed::push(opcode, scratch().into(), spec, adder);
            }
            URingOperation::Read => {
                fill_slot(adder, |buf| buf.fill(0xee));
                let offset = input.offset.refused();
                let op = Read::new(buf(adder.label()), files().zero.as_fd(), offset);
                adder.push(op, Spec::new(Kind::ZeroRead).slot().offset(offset));
            }
            URingOperation::Write => {
                let offset = Some(scratch_offset);
                let op = Write::new(buf(adder.label()), scratch(), offset);
                adder.push(op, Spec::new(Kind::Gives(full)).slot().offset(offset));
            }
            URingOperation::SyncFileRange => {
                let op =
                    SyncFileRange::new(scratch(), 0, BUF_LEN as u64, SyncFileRangeFlags::WRITE);
                adder.push(op, Spec::new(Kind::Gives(Ok(0))));
            }
            URingOperation::Fadvise => {
                let op = Fadvise::new(scratch(), 0, BUF_LEN as u64, libc::POSIX_FADV_NORMAL);
                adder.push(op, Spec::new(Kind::Gives(Ok(0))));
            }
            // Paths that do not exist: nothing opened, nothing written.
            URingOperation::Openat => {
                let op = Openat::new(MISSING, libc::O_RDONLY | libc::O_CLOEXEC, 0);
                adder.push(op, Spec::new(Kind::Gives(Err(libc::ENOENT))));
            }
            URingOperation::Openat2 => {
                let op = Openat2::new(MISSING, libc::O_RDONLY, 0, ResolveFlags::empty());
                adder.push(op, Spec::new(Kind::Gives(Err(libc::ENOENT))));
            }
            URingOperation::Statx => {
                // SAFETY: the slot is the label's, kept to this operation
                // by the label rule (it pins caller memory); a missing path
                // leaves it unwritten.
                let op =
                    unsafe { Statx::new(MISSING, 0, libc::STATX_SIZE, statx_buf(adder.label())) };
                adder.push(op, Spec::new(Kind::Gives(Err(libc::ENOENT))).slot());
            }
            // No registered file table: ENXIO.
            // Not a ring: EBADFD. No file table: ENXIO.
            URingOperation::MsgRing => {
                let op = MsgRing::data(scratch(), 1, 0);
                adder.push(op, Spec::new(Kind::Gives(Err(libc::EBADFD))));
            }
            URingOperation::FilesUpdate => {
                let op = FilesUpdate::new(0, [None]);
                adder.push(op, Spec::new(Kind::Gives(Err(libc::ENXIO))));
            }
            URingOperation::Close => {
                adder.push(
                    Close::fixed_slot(0),
                    Spec::new(Kind::Gives(Err(libc::ENXIO))),
                );
            }
            // Neither end a pipe: EINVAL.
            URingOperation::Splice => {
                let op = Splice::new(
                    scratch(),
                    Some(0),
                    scratch(),
                    Some(0),
                    1,
                    SpliceFlags::empty(),
                );
                adder.push(op, Spec::new(Kind::Gives(Err(libc::EINVAL))));
            }
            URingOperation::Tee => {
                let op = Tee::new(scratch(), scratch(), 1, SpliceFlags::empty());
                adder.push(op, Spec::new(Kind::Gives(Err(libc::EINVAL))));
            }
            other => panic!(
                "{other:?} is in op::ISSUABLE, but restricted_ring has no arm for it: add one \
                 to `build`"
            ),
        }
    }

    fn accepts(&self, kind: &Kind, res: Res) -> bool {
        match kind {
            Kind::Gives(expected) => res == *expected,
            Kind::ZeroRead | Kind::FixedRead { .. } => res == Ok(BUF_LEN as u32),
            Kind::Poll => poll_result_ok(res),
            Kind::Control => control_result_ok(res),
        }
    }

    fn finished(&mut self, done: &Completed, kind: Kind, res: Option<Res>, _may_cancel: bool) {
        if res != Some(Ok(BUF_LEN as u32)) {
            return;
        }
        let label = done.label();
        match kind {
            Kind::ZeroRead => assert!(
                done.slot().iter().all(|b| *b == 0),
                "readv of /dev/zero ({label:#x}) read non-zero bytes"
            ),
            Kind::FixedRead { offset } => assert!(
                is_fixed_data(offset, done.slot()),
                "readv of the fixed memfd at {offset} ({label:#x}) read wrong data"
            ),
            _ => {}
        }
    }

    fn refuses(&self, opcode: URingOperation, flags: IosqeFlags) -> bool {
        !self.policy.permits(opcode, flags.bits())
    }

    /// On a ring that requires FIXED_FILE, the operations the kernel
    /// refuses it on (as `URingAllowlist::require_sqe_flags` documents).
    fn refused_at_add(&self, opcode: URingOperation) -> bool {
        use URingOperation as Op;
        self.policy.requires_fixed_file()
            && matches!(
                opcode,
                Op::Openat
                    | Op::Openat2
                    | Op::Close
                    | Op::Statx
                    | Op::FilesUpdate
                    | Op::TimeoutRemove
            )
    }

    /// On such a ring, the context gives FIXED_FILE to the operations
    /// that name no file.
    fn carried_flags(&self, opcode: URingOperation) -> IosqeFlags {
        use URingOperation as Op;
        let fileless = matches!(
            opcode,
            Op::Nop | Op::AsyncCancel | Op::PollRemove | Op::Timeout | Op::LinkTimeout
        );
        if self.policy.requires_fixed_file() && fileless {
            IosqeFlags::FIXED_FILE
        } else {
            IosqeFlags::empty()
        }
    }

    fn unblock(&mut self) {
        self.pipe.poke();
    }

    fn reaped(&mut self) {
        self.pipe.drain();
    }
}

type World = common::model::World<Restricted>;

/// How many operations in flight are surely polls that will not complete
/// (allowed, aimed at by no cancellation, of the pipe, which nobody writes
/// now): under each label, those in flight beyond the other operations.
fn pending_polls(world: &World) -> usize {
    world
        .book
        .labels_in_flight()
        .into_iter()
        .map(|(label, in_flight)| {
            let others = world
                .book
                .ops()
                .filter(|(l, op)| {
                    *l == label && (op.refused || op.may_cancel || !matches!(op.kind, Kind::Poll))
                })
                .count();
            in_flight.saturating_sub(others)
        })
        .sum()
}

/// Closes the ring with what is still in flight: polls of the empty pipe,
/// once everything else has completed.
fn close_early(mut world: World) {
    if world.book.model.policy.can_cancel() {
        world
            .ring
            .close(DRAIN_DEADLINE)
            .expect("close left operations in the kernel");
        return;
    }
    // Reap what completes by itself: until only polls can be left, or two
    // rounds bring nothing (what is left then is polls of the empty pipe,
    // plus at most what the kernel's workers are still finishing).
    world.submit();
    while world.reap_quietly(Duration::ZERO) > 0 {}
    let give_up = Instant::now() + DRAIN_DEADLINE;
    let mut quiet = 0;
    while quiet < 2 && world.book.in_flight() > pending_polls(&world) {
        assert!(Instant::now() < give_up, "completions never stopped coming");
        quiet = match world.reap_quietly(Duration::from_millis(20)) {
            0 => quiet + 1,
            _ => 0,
        };
    }
    let left = world.book.in_flight();
    let polls_left = pending_polls(&world);
    let result = world.ring.close(DRAIN_DEADLINE);
    match result {
        Ok(()) => assert_eq!(
            polls_left, 0,
            "close succeeded with {polls_left} polls pending"
        ),
        Err(Error::CancelNotAllowed(n)) => assert!(
            (polls_left.max(1)..=left).contains(&n),
            "close of a ring without AsyncCancel with {left} operations in flight, {polls_left} \
             of them polls nobody fires, reported {n}"
        ),
        Err(e) => panic!("close of a ring without AsyncCancel: {e}"),
    }
}

impl World {
    /// One `wait_timeout` without poking the pipe; returns how many
    /// completions it took.
    fn reap_quietly(&mut self, timeout: Duration) -> usize {
        let completions = match self.ring.wait_timeout(timeout) {
            Ok(completions) => completions,
            Err(Error::KernelBusy(_)) => return 0,
            Err(e) => panic!("wait_timeout: {e}"),
        };
        let mut taken = 0;
        for (label, result) in completions {
            self.book.received(label, result);
            taken += 1;
        }
        taken
    }
}

fuzz_target!(|input: Input| {
    let policy = Policy::new(&input.policy);
    let Some(ring) = common::new_ring(Some(&policy.allowlist())) else {
        return;
    };
    let config = RingConfig {
        // Every kernel with restrictions has IORING_FEAT_NODROP.
        cap: in_flight_cap(&ring, true),
    };
    let restricted = Restricted {
        policy,
        pipe: Pipe::new(),
        eventfd_registered: false,
    };
    let mut world = World::new(ring, restricted, config);

    for step in &input.steps {
        match step {
            Step::Common(step) => world.step(step),
            Step::RegisterEventfd => {
                let eventfd = own_files().eventfd.as_raw_fd();
                let result = world.ring.register_eventfd(eventfd);
                world.book.model.registered(false, result);
            }
            Step::UnregisterEventfd => {
                let result = world.ring.unregister_eventfd();
                world.book.model.registered(true, result);
            }
        }
        world.check_in_flight();
    }
    if input.close_early {
        close_early(world);
        return;
    }
    world.drain(DRAIN_DEADLINE);
    world
        .ring
        .close(DRAIN_DEADLINE)
        .expect("close with nothing in flight");
});

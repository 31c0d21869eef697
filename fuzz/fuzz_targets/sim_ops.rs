//! Random operation sequences with random faults against the simulated
//! kernel (`ringfence::sim`), checking the context against the model in
//! `common/model.rs`: the label rule (`DuplicateUserData` only when the new
//! operation, or one in flight with its label, pins caller memory), the
//! submission queue's fill and the in-flight cap, small without
//! `IORING_FEAT_NODROP` (`NoSpace`), `InvalidOffset` for offsets above
//! `i64::MAX` (`u64::MAX` included), batches queued whole or not at all,
//! every operation completing exactly once with a result its kind allows
//! (`ECANCELED` only if aimed at when added), reads returning the file's
//! bytes, writes and allocations near `i64::MAX` failing with `EFBIG` (past
//! the largest simulated file), `in_flight()` agreeing after every step,
//! and `close` draining everything.
//!
//! Iterators are also dropped after a few completions (the rest are handed
//! back and come with a later wait), kept alive while an operation is
//! added (`in_flight()` checked before and after), and `mem::forget`ten:
//! their claimed completions then stay in flight until `close`, the ring
//! keeps working for the others, and `wait` is no longer called blocking
//! (nothing says which operations will still complete).
//!
//! Faults: EINTR before and during the wait, EAGAIN, EBUSY, short submits,
//! completions held back and released in random order, CQ overflow (small
//! rings, reaping only when the input says). Dropped overflow entries are
//! left to the unit tests: they strand an operation by design, and the
//! leak that follows would be reported by LeakSanitizer.
//!
//! Input (decoded with `arbitrary`): `Input`.
#![no_main]

#[path = "common/fixed.rs"]
mod fixed;
#[path = "common/model.rs"]
mod model;
#[path = "common/net.rs"]
mod net;
#[path = "common/pool.rs"]
mod pool;

use std::os::fd::RawFd;
use std::time::Duration;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use model::{
    Adder, CommonStep, Model, Offset, OpInput, Reap, Res, RingConfig, Spec, DRAIN_DEADLINE,
};
use pool::{buf, fill_slot, iovecs, statx_buf, Completed, BUF_LEN};
use ringfence::op::{
    Close, EventType, Fadvise, Fallocate, FilesUpdate, Fsync, MsgRing, Nop, Openat, Openat2,
    PollAdd, Read, Readv, Splice, Statx, SyncFileRange, Target, Tee, Timeout, Write, Writev,
};
use ringfence::sim::{Fault, SimConfig, SimKernel};
use ringfence::{FallocateMode, ResolveFlags, SpliceFlags, SyncFileRangeFlags, URingOperation};

/// A path that exists nowhere, for the path operations.
const MISSING: &str = "/nonexistent/ringfence-fuzz";

#[derive(Arbitrary, Debug)]
struct Input {
    /// `SimConfig::nodrop`.
    nodrop: bool,
    /// `SimConfig::defer_completions`.
    defer: bool,
    /// `SimConfig::ext_arg`.
    ext_arg: bool,
    seed: u8,
    /// The ring has `1 << (entries % 4)` entries: small rings overflow.
    entries: u8,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Common(CommonStep),
    /// One wait, at most `n % 4` completions taken, the iterator forgotten.
    Forget(u8),
    Fault(FaultInput),
    /// Makes the pollable ready for input, or for nothing.
    SetReady(bool),
    /// Releases up to `n % 4` held-back completions.
    CompleteDeferred(u8),
}

#[derive(Arbitrary, Debug)]
enum FaultInput {
    Interrupted,
    InterruptedWait,
    Again,
    Busy,
    /// At most `1 + n % 4` SQEs consumed.
    ShortSubmit(u8),
}

/// The read-only file: byte `i` is `i as u8`.
const SOURCE_LEN: u64 = 600;
/// readv offsets in the source are multiples of this.
const OFFSET_STEP: u64 = 3;

#[derive(Debug)]
enum Kind {
    /// Completes with exactly this.
    Gives(Res),
    /// readv of the source at `offset`.
    Read {
        offset: u64,
    },
    /// readv of the source at its file position: a run of consecutive bytes.
    ReadAtPosition,
    Poll,
    /// A cancellation or poll removal: found it (0) or not (`ENOENT`); the
    /// simulated kernel never answers `EALREADY`.
    Control,
}

struct Sim {
    kernel: SimKernel,
    source: RawFd,
    sink: RawFd,
    pollable: RawFd,
}

/// A file of the simulated kernel: its descriptors mean nothing to the real
/// one, and the kernel never closes them.
fn sim_fd(fd: RawFd) -> Target {
    // SAFETY: the simulated kernel's files live as long as it does, which
    // is longer than the ring.
    unsafe { Target::from_raw_fd(fd) }
}

impl Model for Sim {
    type Kind = Kind;
    const CONTROL: Kind = Kind::Control;

    /// The one place this target knows its operations: a new opcode in
    /// `op::ISSUABLE` needs an arm here, and fails at the first input
    /// without one.
    fn build(&self, input: &OpInput, adder: &mut Adder<'_, Kind>) {
        let label = adder.label();
        match input.opcode() {
            URingOperation::Nop => {
                // The simulated kernel runs linked SQEs independently, and
                // holds back ASYNC ones.
                let flags = input.sqe_flags();
                adder.push(
                    Nop::new().flags(flags),
                    Spec::new(Kind::Gives(Ok(0))).flags(flags),
                );
            }
            URingOperation::Readv => {
                // A sentinel, so a read whose data never lands cannot pass
                // for one that did.
                fill_slot(adder, |buf| buf.fill(0xee));
                let offset = match input.offset {
                    Offset::At(n) => {
                        Some(u64::from(n) * OFFSET_STEP % (SOURCE_LEN + BUF_LEN as u64))
                    }
                    other => other.value(1),
                };
                let kind = match offset {
                    None => Kind::ReadAtPosition,
                    Some(offset) => Kind::Read { offset },
                };
                let op = Readv::new(iovecs(label), sim_fd(self.source), offset);
                adder.push(op, Spec::new(kind).slot().offset(offset));
            }
            URingOperation::Writev => {
                let offset = input.offset.value(1);
                let res = match input.offset {
                    // Past the largest simulated file (`MAX_SIM_FILE`).
                    Offset::NearMax(_) => Err(libc::EFBIG),
                    _ => Ok(BUF_LEN as u32),
                };
                let op = Writev::new(iovecs(label), sim_fd(self.sink), offset);
                adder.push(op, Spec::new(Kind::Gives(res)).slot().offset(offset));
            }
            URingOperation::Fsync => {
                adder.push(Fsync::new(sim_fd(self.sink)), Spec::new(Kind::Gives(Ok(0))));
            }
            URingOperation::Fallocate => {
                let punch = input.file & 1 == 0;
                let offset = input.offset.value(1).unwrap_or(0);
                let res = match input.offset {
                    // Allocating past the largest simulated file fails, as
                    // writing does; a punch past the end changes nothing.
                    Offset::NearMax(_) if !punch => Err(libc::EFBIG),
                    _ => Ok(0),
                };
                let mode = if punch {
                    FallocateMode::PUNCH_HOLE | FallocateMode::KEEP_SIZE
                } else {
                    FallocateMode::empty()
                };
                let op = Fallocate::new(sim_fd(self.sink), offset, 64, mode);
                adder.push(op, Spec::new(Kind::Gives(res)).offset(Some(offset)));
            }
            URingOperation::Timeout => {
                // Fires when `unblock` moves the simulated clock.
                let op = Timeout::new(Duration::from_millis(1));
                adder.push(op, Spec::new(Kind::Gives(Err(libc::ETIME))));
            }
            URingOperation::PollAdd => {
                let op = PollAdd::new(sim_fd(self.pollable), EventType::Read);
                adder.push(op, Spec::new(Kind::Poll));
            }
            // The simulated kernel has no sockets: it completes every socket
            // operation with EOPNOTSUPP (their work is tested on the real
            // kernel); the bookkeeping is what counts here.
            opcode if net::is_net(opcode) => {
                let spec = Spec::new(Kind::Gives(Err(libc::EOPNOTSUPP)));
                net::push(opcode, sim_fd(self.sink), 0, true, spec, adder);
            }
            opcode if fixed::is_fixed(opcode) => {
                // The simulated kernel models no registered buffers.
                let spec = Spec::new(Kind::Gives(Err(libc::EOPNOTSUPP)));
                fixed::push(opcode, sim_fd(self.sink), spec, adder);
            }
            URingOperation::Read => {
                fill_slot(adder, |buf| buf.fill(0xee));
                let offset = match input.offset {
                    Offset::At(n) => {
                        Some(u64::from(n) * OFFSET_STEP % (SOURCE_LEN + BUF_LEN as u64))
                    }
                    other => other.value(1),
                };
                let kind = match offset {
                    None => Kind::ReadAtPosition,
                    Some(offset) => Kind::Read { offset },
                };
                let op = Read::new(buf(label), sim_fd(self.source), offset);
                adder.push(op, Spec::new(kind).slot().offset(offset));
            }
            URingOperation::Write => {
                let offset = input.offset.value(1);
                let res = match input.offset {
                    Offset::NearMax(_) => Err(libc::EFBIG),
                    _ => Ok(BUF_LEN as u32),
                };
                let op = Write::new(buf(label), sim_fd(self.sink), offset);
                adder.push(op, Spec::new(Kind::Gives(res)).slot().offset(offset));
            }
            // The simulated kernel runs none of these (EOPNOTSUPP): what
            // is checked is the bookkeeping.
            URingOperation::SyncFileRange => {
                let op = SyncFileRange::new(
                    sim_fd(self.sink),
                    0,
                    BUF_LEN as u64,
                    SyncFileRangeFlags::WRITE,
                );
                adder.push(op, Spec::new(Kind::Gives(Err(libc::EOPNOTSUPP))));
            }
            URingOperation::Fadvise => {
                let op = Fadvise::new(
                    sim_fd(self.sink),
                    0,
                    BUF_LEN as u64,
                    libc::POSIX_FADV_NORMAL,
                );
                adder.push(op, Spec::new(Kind::Gives(Err(libc::EOPNOTSUPP))));
            }
            // Paths that do not exist: nothing opened, nothing written.
            URingOperation::Openat => {
                let op = Openat::new(MISSING, libc::O_RDONLY | libc::O_CLOEXEC, 0);
                adder.push(op, Spec::new(Kind::Gives(Err(libc::EOPNOTSUPP))));
            }
            URingOperation::Openat2 => {
                let op = Openat2::new(MISSING, libc::O_RDONLY, 0, ResolveFlags::empty());
                adder.push(op, Spec::new(Kind::Gives(Err(libc::EOPNOTSUPP))));
            }
            URingOperation::Statx => {
                // SAFETY: the slot is the label's, kept to this operation
                // by the label rule (it pins caller memory); a missing path
                // leaves it unwritten.
                let op =
                    unsafe { Statx::new(MISSING, 0, libc::STATX_SIZE, statx_buf(adder.label())) };
                adder.push(op, Spec::new(Kind::Gives(Err(libc::EOPNOTSUPP))).slot());
            }
            // No registered file table: ENXIO.
            // The simulated kernel has no other rings and no file table.
            URingOperation::MsgRing => {
                let op = MsgRing::data(sim_fd(self.sink), 1, 0);
                adder.push(op, Spec::new(Kind::Gives(Err(libc::EOPNOTSUPP))));
            }
            URingOperation::FilesUpdate => {
                let op = FilesUpdate::new(0, [None]);
                adder.push(op, Spec::new(Kind::Gives(Err(libc::EOPNOTSUPP))));
            }
            URingOperation::Close => {
                adder.push(
                    Close::fixed_slot(0),
                    Spec::new(Kind::Gives(Err(libc::EOPNOTSUPP))),
                );
            }
            // Neither end a pipe: EINVAL.
            URingOperation::Splice => {
                let op = Splice::new(
                    sim_fd(self.sink),
                    Some(0),
                    sim_fd(self.sink),
                    Some(0),
                    1,
                    SpliceFlags::empty(),
                );
                adder.push(op, Spec::new(Kind::Gives(Err(libc::EOPNOTSUPP))));
            }
            URingOperation::Tee => {
                let op = Tee::new(
                    sim_fd(self.sink),
                    sim_fd(self.sink),
                    1,
                    SpliceFlags::empty(),
                );
                adder.push(op, Spec::new(Kind::Gives(Err(libc::EOPNOTSUPP))));
            }
            other => panic!(
                "{other:?} is in op::ISSUABLE, but sim_ops has no arm for it: add one to `build`"
            ),
        }
    }

    fn accepts(&self, kind: &Kind, res: Res) -> bool {
        match kind {
            Kind::Gives(expected) => res == *expected,
            Kind::Read { offset } => {
                let left = SOURCE_LEN.saturating_sub(*offset);
                res == Ok(left.min(BUF_LEN as u64) as u32)
            }
            Kind::ReadAtPosition => matches!(res, Ok(n) if n as usize <= BUF_LEN),
            Kind::Poll => res == Ok(libc::POLLIN as u32),
            Kind::Control => matches!(res, Ok(0) | Err(libc::ENOENT)),
        }
    }

    fn finished(&mut self, done: &Completed, kind: Kind, res: Option<Res>, _may_cancel: bool) {
        let Some(Ok(n)) = res else {
            return;
        };
        let read = || &done.slot()[..n as usize];
        match kind {
            Kind::Read { offset } => {
                for (i, &byte) in read().iter().enumerate() {
                    assert_eq!(
                        byte,
                        (offset as usize + i) as u8,
                        "read at {offset}, byte {i}"
                    );
                }
            }
            Kind::ReadAtPosition => {
                let read = read();
                assert!(
                    read.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
                    "read at the file position: not a run of the source: {read:?}"
                );
            }
            _ => {}
        }
    }

    fn unblock(&mut self) {
        self.kernel.set_ready(self.pollable, libc::POLLIN as u32);
        self.kernel.fire_timeouts();
    }

    fn reaped(&mut self) {
        self.kernel.set_ready(self.pollable, 0);
    }

    fn drain_round(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn kernel_idle(&self) -> Option<bool> {
        Some(self.kernel.pending() == 0)
    }
}

type World = model::World<Sim>;

fuzz_target!(|input: Input| {
    let kernel = SimKernel::with_config(SimConfig {
        nodrop: input.nodrop,
        ext_arg: input.ext_arg,
        defer_completions: input.defer,
        seed: u64::from(input.seed),
    });
    let sim = Sim {
        source: kernel.create_file((0..SOURCE_LEN).map(|i| i as u8).collect()),
        sink: kernel.create_file(Vec::new()),
        pollable: kernel.create_pollable(),
        kernel: kernel.clone(),
    };
    let ring = kernel
        .new_context(1 << (input.entries % 4), None)
        .expect("simulated setup");
    let config = RingConfig {
        cap: model::in_flight_cap(&ring, input.nodrop),
    };
    let mut world = World::new(ring, sim, config);

    for step in &input.steps {
        match step {
            Step::Common(step) => world.step(step),
            Step::Forget(n) => {
                world.reap(Reap::Forget(usize::from(n % 4)));
            }
            Step::Fault(fault) => kernel.inject(match *fault {
                FaultInput::Interrupted => Fault::Interrupted,
                FaultInput::InterruptedWait => Fault::InterruptedWait,
                FaultInput::Again => Fault::Again,
                FaultInput::Busy => Fault::Busy,
                FaultInput::ShortSubmit(n) => Fault::ShortSubmit(1 + u32::from(n % 4)),
            }),
            Step::SetReady(ready) => kernel.set_ready(
                world.book.model.pollable,
                u32::from(*ready) * libc::POLLIN as u32,
            ),
            Step::CompleteDeferred(n) => {
                kernel.complete_deferred(usize::from(n % 4));
            }
        }
        world.check_in_flight();
    }
    // Every operation here can be cancelled or completes by itself, so
    // closing must drain them all, forgotten iterators' included. Faults
    // left over would each cost close a 100 ms round: it handles them, but
    // the fuzzer would crawl.
    kernel.clear_faults();
    world
        .ring
        .close(DRAIN_DEADLINE)
        .expect("close left operations in the kernel");
});

//! Random operation sequences against the real kernel, on a pipe, two
//! memfds, /dev/zero and /dev/null, checking the context against the model
//! in `common/model.rs`:
//!
//! - an add is accepted exactly when the label rule and the submission
//!   queue allow it (`DuplicateUserData` only when the new operation, or one
//!   in flight with its label, pins caller memory; `NoSpace` only when the
//!   queue lacks room, a cancellation by label taking one SQE per operation
//!   it aims at, or the in-flight cap is reached); an offset above `i64::MAX` (`u64::MAX` included) fails
//!   with `InvalidOffset` at once, alone or in a batch; a batch is queued
//!   whole or not at all;
//! - every operation completes exactly once, with a result its kind allows
//!   (`ECANCELED` only if a cancellation or poll removal aimed at it when it
//!   was added, or it is in a link chain); results under a shared label are
//!   matched to operations, not guessed;
//! - readv data is right wherever the model knows it: zeros from /dev/zero,
//!   a fixed pattern from a memfd nothing writes, and in a scratch memfd
//!   whatever the completed writes and hole punches left there; reads near
//!   `i64::MAX` are absolute (0 bytes or `EINVAL`), never the file position;
//! - `in_flight()` agrees with the model after every step, through
//!   iterators dropped early (their completions handed back) too, and while
//!   an iterator is alive (an operation added in the middle of a reap);
//! - the ring fd polls readable whenever `wait_timeout(0)` would return a
//!   completion (checked when every operation in flight completes inline,
//!   so no completion can arrive between the two);
//! - `close` drains whatever is left;
//! - pinned iovec arrays are freed exactly once and nothing leaks: cargo
//!   fuzz builds with AddressSanitizer, and libFuzzer runs LeakSanitizer
//!   after every input that allocated more than it freed.
//!
//! Input (decoded with `arbitrary`): a list of `Step`s; see `OpInput` for
//! what an added operation is made of, and `Real::build` for what each
//! opcode's `file` picks.
#![no_main]

mod common;

use std::cell::Cell;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;

use common::model::{
    in_flight_cap, Adder, CommonStep, Model, Offset, OpInput, Res, RingConfig, Spec, DRAIN_DEADLINE,
};
use common::pool::{buf, fill_slot, iovecs, statx_buf, Completed, BUF_LEN};
use common::{
    control_result_ok, files, is_fixed_data, memfd, past_end_read, poll_result_ok, Pipe, MEMFD_LEN,
    OFFSET_STEP,
};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use ringfence::op::{
    Close, EventType, Fadvise, Fallocate, FilesUpdate, Fsync, MsgRing, Nop, Openat, Openat2,
    PollAdd, Read, Readv, Splice, Statx, SyncFileRange, Tee, Timeout, Write, Writev,
};
use ringfence::{
    Error, FallocateMode, ResolveFlags, SpliceFlags, SqeFlags, SyncFileRangeFlags, URingOperation,
};

/// A path that exists nowhere, for the path operations.
const MISSING: &str = "/nonexistent/ringfence-fuzz";

#[derive(Arbitrary, Debug)]
struct Input {
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Common(CommonStep),
    /// Polls the ring fd, then `wait_timeout(0)`.
    PollFd,
}

/// What the scratch memfd starts with at `offset`.
fn scratch_initial_byte(offset: usize) -> u8 {
    (offset % 241) as u8 ^ 0x5a
}

fn overlaps(a: u64, b: u64) -> bool {
    a < b + BUF_LEN as u64 && b < a + BUF_LEN as u64
}

/// What an operation in flight is, and what its completion must look like.
#[derive(Debug)]
enum Kind {
    /// Completes with exactly this.
    Gives(Res),
    /// readv of /dev/zero: all zeros.
    ZeroRead,
    /// readv of the pipe: whatever pokes and pipe writes put there.
    PipeRead,
    PipeWrite,
    Poll,
    /// A cancellation or poll removal.
    Control,
    /// readv of the read-only memfd at `offset`.
    FixedRead {
        offset: u64,
    },
    /// readv of the scratch memfd at `offset`; `expected` is what it must
    /// read, if the model knows.
    ScratchRead {
        offset: u64,
        expected: Option<Vec<u8>>,
    },
    /// writev of `data` to the scratch memfd at `offset`. `contested` once
    /// another write or punch of an overlapping region was in the model at
    /// the same time: their order is unknown.
    ScratchWrite {
        offset: u64,
        data: Vec<u8>,
        contested: bool,
    },
    /// A hole punched in the scratch memfd at `offset`: reads back as zeros.
    Punch {
        offset: u64,
        contested: bool,
    },
    /// A send or sendmsg of one `SOCKET_BYTE` datagram into the socket
    /// pair, `MSG_DONTWAIT`: all of it, or `EAGAIN` when the queue is full.
    SocketSend,
    /// A recv or recvmsg from the socket pair, `MSG_DONTWAIT`: one whole
    /// datagram of `SOCKET_BYTE`s, or `EAGAIN` when none waits.
    SocketRecv,
}

/// What every datagram sent into the socket pair holds.
const SOCKET_BYTE: u8 = b's';

/// The model's own state: the pipe, the scratch memfd of this input and
/// what it holds.
struct Real {
    pipe: Pipe,
    /// A connected, non-blocking Unix datagram pair: sends go into `.0`,
    /// receives come from `.1`.
    sockets: (Arc<UnixDatagram>, Arc<UnixDatagram>),
    scratch: Arc<File>,
    /// What the scratch memfd holds, where known.
    known: Vec<Option<u8>>,
    /// Writes so far, so that each writes different bytes.
    writes: Cell<u8>,
}

impl Real {
    fn new() -> Real {
        let (tx, rx) = UnixDatagram::pair().expect("socketpair");
        for socket in [&tx, &rx] {
            socket.set_nonblocking(true).expect("O_NONBLOCK");
        }
        Real {
            pipe: Pipe::new(),
            sockets: (Arc::new(tx), Arc::new(rx)),
            scratch: Arc::new(memfd(scratch_initial_byte)),
            known: (0..MEMFD_LEN)
                .map(|i| Some(scratch_initial_byte(i)))
                .collect(),
            writes: Cell::new(0),
        }
    }

    fn readv(&self, input: &OpInput, adder: &mut Adder<'_, Kind>) {
        let files = files();
        // Offsets the context must refuse, whatever the file.
        let invalid = input.offset.refused();
        fill_slot(adder, |buf| buf.fill(0xee));
        let label = adder.label();
        match input.file % 4 {
            0 => {
                let op = Readv::new(iovecs(label), files.zero.as_fd(), invalid);
                adder.push(op, Spec::new(Kind::ZeroRead).slot().offset(invalid));
            }
            1 => {
                let pipe = Arc::clone(&self.pipe.reader);
                let op = Readv::new(iovecs(label), pipe, invalid);
                adder.push(op, Spec::new(Kind::PipeRead).slot().offset(invalid));
            }
            memfd => {
                let (offset, kind) = match input.offset {
                    Offset::NearMax(_) => {
                        let offset = input.offset.value(OFFSET_STEP).expect("an offset");
                        (offset, Kind::Gives(past_end_read(offset, BUF_LEN)))
                    }
                    Offset::Current | Offset::At(_) => {
                        // Never the file position: other reads move it.
                        let offset = input.offset.value(OFFSET_STEP).unwrap_or(0);
                        let kind = match memfd {
                            2 => Kind::FixedRead { offset },
                            _ => Kind::ScratchRead {
                                offset,
                                expected: None,
                            },
                        };
                        (offset, kind)
                    }
                    Offset::AboveMax(_) | Offset::Max => {
                        (invalid.expect("invalid"), Kind::Gives(Ok(0)))
                    }
                };
                let spec = Spec::new(kind).slot().offset(Some(offset));
                match memfd {
                    2 => adder.push(
                        Readv::new(iovecs(label), files.fixed.as_fd(), Some(offset)),
                        spec,
                    ),
                    _ => {
                        let scratch = Arc::clone(&self.scratch);
                        adder.push(Readv::new(iovecs(label), scratch, Some(offset)), spec)
                    }
                }
            }
        }
    }

    fn writev(&self, input: &OpInput, adder: &mut Adder<'_, Kind>) {
        let files = files();
        let label = adder.label();
        let invalid = input.offset.refused();
        match input.file % 3 {
            0 => {
                fill_slot(adder, |buf| buf.fill(b'n'));
                let op = Writev::new(iovecs(label), files.null.as_fd(), invalid);
                let spec = Spec::new(Kind::Gives(Ok(BUF_LEN as u32)));
                adder.push(op, spec.slot().offset(invalid));
            }
            1 => {
                fill_slot(adder, |buf| buf.fill(b'w'));
                let op = Writev::new(iovecs(label), Arc::clone(&self.pipe.writer), invalid);
                adder.push(op, Spec::new(Kind::PipeWrite).slot().offset(invalid));
            }
            _ => {
                let (offset, kind) = match input.offset {
                    // `offset + len` overflows loff_t: rw_verify_area refuses.
                    // (A write that fits below i64::MAX would make an 8 EiB
                    // sparse file: the read side covers those offsets.)
                    Offset::NearMax(k) if usize::from(k) < BUF_LEN => {
                        let offset = input.offset.value(OFFSET_STEP).expect("an offset");
                        (offset, Kind::Gives(Err(libc::EINVAL)))
                    }
                    Offset::AboveMax(_) | Offset::Max => {
                        (invalid.expect("invalid"), Kind::Gives(Ok(0)))
                    }
                    other => {
                        let n = match other {
                            Offset::At(n) => u64::from(n),
                            Offset::NearMax(k) => u64::from(k as u8),
                            _ => 0,
                        };
                        let offset = n * OFFSET_STEP;
                        let written = self.writes.get().wrapping_add(1);
                        self.writes.set(written);
                        let data: Vec<u8> = (0..BUF_LEN)
                            .map(|i| written.wrapping_mul(31) ^ (i as u8).wrapping_add(input.file))
                            .collect();
                        fill_slot(adder, |buf| buf.copy_from_slice(&data));
                        let kind = Kind::ScratchWrite {
                            offset,
                            data,
                            contested: false,
                        };
                        (offset, kind)
                    }
                };
                let op = Writev::new(iovecs(label), Arc::clone(&self.scratch), Some(offset));
                adder.push(op, Spec::new(kind).slot().offset(Some(offset)));
            }
        }
    }

    fn fallocate(&self, input: &OpInput, adder: &mut Adder<'_, Kind>) {
        let punch = input.file & 1 == 0;
        let (offset, kind) = match input.offset {
            Offset::AboveMax(_) | Offset::Max => (
                input.offset.value(1).expect("an offset"),
                Kind::Gives(Ok(0)),
            ),
            // `offset + len` overflows loff_t: EFBIG; else a punch past the
            // end of the file. (Allocating there would make an 8 EiB file.)
            Offset::NearMax(k) if punch => {
                let offset = input.offset.value(1).expect("an offset");
                let res = if usize::from(k) < BUF_LEN {
                    Err(libc::EFBIG)
                } else {
                    Ok(0)
                };
                (offset, Kind::Gives(res))
            }
            other => {
                let offset = match other {
                    Offset::At(n) => u64::from(n),
                    Offset::NearMax(k) => u64::from(k as u8),
                    _ => 0,
                } * OFFSET_STEP;
                let kind = if punch {
                    Kind::Punch {
                        offset,
                        contested: false,
                    }
                } else {
                    // Inside the file: allocates nothing new, changes no byte.
                    Kind::Gives(Ok(0))
                };
                (offset, kind)
            }
        };
        let mode = if punch {
            FallocateMode::PUNCH_HOLE | FallocateMode::KEEP_SIZE
        } else {
            FallocateMode::empty()
        };
        let op = Fallocate::new(Arc::clone(&self.scratch), offset, BUF_LEN as u64, mode);
        adder.push(op, Spec::new(kind).offset(Some(offset)));
    }

    /// A socket operation: send, recv, sendmsg and recvmsg through the
    /// socket pair (even `file`), data checked; any of them on the scratch
    /// memfd (odd `file`), which is not a socket.
    fn net(&self, input: &OpInput, adder: &mut Adder<'_, Kind>) {
        let opcode = input.opcode();
        let (target, kind, fill) = match opcode {
            URingOperation::Send | URingOperation::Sendmsg if input.file & 1 == 0 => (
                Arc::clone(&self.sockets.0).into(),
                Kind::SocketSend,
                SOCKET_BYTE,
            ),
            URingOperation::Recv | URingOperation::Recvmsg if input.file & 1 == 0 => {
                (Arc::clone(&self.sockets.1).into(), Kind::SocketRecv, 0xee)
            }
            // No protocol 99 in AF_UNIX: no descriptor is made.
            URingOperation::Socket => (
                Arc::clone(&self.scratch).into(),
                Kind::Gives(Err(libc::EPROTONOSUPPORT)),
                0,
            ),
            _ => (
                Arc::clone(&self.scratch).into(),
                Kind::Gives(Err(libc::ENOTSOCK)),
                0,
            ),
        };
        fill_slot(adder, |buf| buf.fill(fill));
        let to = !matches!(kind, Kind::SocketSend);
        let spec = Spec::new(kind);
        common::net::push(opcode, target, libc::MSG_DONTWAIT, to, spec, adder);
    }

    /// Sets the scratch memfd's region at `offset` to `bytes`, or unknown.
    fn learn(&mut self, offset: u64, bytes: Option<&[u8]>) {
        let region = &mut self.known[offset as usize..offset as usize + BUF_LEN];
        match bytes {
            Some(bytes) => {
                for (known, byte) in region.iter_mut().zip(bytes) {
                    *known = Some(*byte);
                }
            }
            None => region.fill(None),
        }
    }
}

impl Model for Real {
    type Kind = Kind;
    const CONTROL: Kind = Kind::Control;

    /// The one place this target knows its operations: a new opcode in
    /// `op::ISSUABLE` needs an arm here, and fails at the first input
    /// without one.
    fn build(&self, input: &OpInput, adder: &mut Adder<'_, Kind>) {
        let opcode = input.opcode();
        match opcode {
            URingOperation::Nop => {
                // Not LINK or HARDLINK here: restricted_ring covers chains.
                let flags = input.sqe_flags() & SqeFlags::ASYNC;
                let spec = Spec::new(Kind::Gives(Ok(0))).flags(flags);
                adder.push(Nop::new().flags(flags), spec);
            }
            URingOperation::Readv => self.readv(input, adder),
            URingOperation::Writev => self.writev(input, adder),
            URingOperation::Fsync => {
                if input.file & 1 == 0 {
                    // /dev/null has no fsync.
                    let op = Fsync::new(files().null.as_fd());
                    adder.push(op, Spec::new(Kind::Gives(Err(libc::EINVAL))));
                } else {
                    let op = Fsync::new(Arc::clone(&self.scratch));
                    adder.push(op, Spec::new(Kind::Gives(Ok(0))));
                }
            }
            URingOperation::Fallocate => self.fallocate(input, adder),
            URingOperation::Timeout => {
                let op = Timeout::new(Duration::from_micros(100));
                adder.push(op, Spec::new(Kind::Gives(Err(libc::ETIME))));
            }
            URingOperation::PollAdd => {
                let op = PollAdd::new(Arc::clone(&self.pipe.reader), EventType::Read);
                adder.push(op, Spec::new(Kind::Poll));
            }
            opcode if common::net::is_net(opcode) => self.net(input, adder),
            opcode if common::fixed::is_fixed(opcode) => {
                // No buffer is registered on this ring (common/fixed.rs).
                let spec = Spec::new(Kind::Gives(Err(common::fixed::without_buffers(opcode))));
                common::fixed::push(opcode, Arc::clone(&self.scratch).into(), spec, adder);
            }
            URingOperation::Read => {
                fill_slot(adder, |buf| buf.fill(0xee));
                let offset = input.offset.refused();
                let op = Read::new(buf(adder.label()), files().zero.as_fd(), offset);
                adder.push(op, Spec::new(Kind::ZeroRead).slot().offset(offset));
            }
            URingOperation::Write => {
                fill_slot(adder, |buf| buf.fill(b'n'));
                let offset = input.offset.refused();
                let op = Write::new(buf(adder.label()), files().null.as_fd(), offset);
                let spec = Spec::new(Kind::Gives(Ok(BUF_LEN as u32)));
                adder.push(op, spec.slot().offset(offset));
            }
            URingOperation::SyncFileRange => {
                let op = SyncFileRange::new(
                    Arc::clone(&self.scratch),
                    0,
                    BUF_LEN as u64,
                    SyncFileRangeFlags::WRITE,
                );
                adder.push(op, Spec::new(Kind::Gives(Ok(0))));
            }
            URingOperation::Fadvise => {
                let op = Fadvise::new(
                    Arc::clone(&self.scratch),
                    0,
                    BUF_LEN as u64,
                    libc::POSIX_FADV_NORMAL,
                );
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
                let op = MsgRing::data(Arc::clone(&self.scratch), 1, 0);
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
                    Arc::clone(&self.scratch),
                    Some(0),
                    Arc::clone(&self.scratch),
                    Some(0),
                    1,
                    SpliceFlags::empty(),
                );
                adder.push(op, Spec::new(Kind::Gives(Err(libc::EINVAL))));
            }
            URingOperation::Tee => {
                let op = Tee::new(
                    Arc::clone(&self.scratch),
                    Arc::clone(&self.scratch),
                    1,
                    SpliceFlags::empty(),
                );
                adder.push(op, Spec::new(Kind::Gives(Err(libc::EINVAL))));
            }
            other => panic!(
                "{other:?} is in op::ISSUABLE, but real_kernel_ops has no arm for it: add one \
                 to `build`"
            ),
        }
    }

    fn accepts(&self, kind: &Kind, res: Res) -> bool {
        let full = Ok(BUF_LEN as u32);
        match kind {
            Kind::Gives(expected) => res == *expected,
            Kind::ZeroRead
            | Kind::FixedRead { .. }
            | Kind::ScratchRead { .. }
            | Kind::ScratchWrite { .. } => res == full,
            Kind::PipeRead => {
                matches!(res, Ok(n) if n > 0 && n <= BUF_LEN as u32) || res == Err(libc::EAGAIN)
            }
            // The pipe may be full (then a write of less than PIPE_BUF
            // fails whole).
            Kind::PipeWrite => res == full || res == Err(libc::EAGAIN),
            Kind::Poll => poll_result_ok(res),
            Kind::Control => control_result_ok(res),
            Kind::Punch { .. } => res == Ok(0),
            Kind::SocketSend | Kind::SocketRecv => res == full || res == Err(libc::EAGAIN),
        }
    }

    fn on_add(&mut self, new: &mut Kind, others: Vec<&mut Kind>) {
        match new {
            Kind::ScratchRead { offset, expected } => {
                let writing = others.iter().any(|other| {
                    matches!(**other, Kind::ScratchWrite { offset: o, .. } | Kind::Punch { offset: o, .. } if overlaps(*offset, o))
                });
                let start = *offset as usize;
                *expected = match writing {
                    true => None,
                    false => self.known[start..start + BUF_LEN].iter().copied().collect(),
                };
            }
            Kind::ScratchWrite {
                offset, contested, ..
            }
            | Kind::Punch { offset, contested } => {
                for other in others {
                    match other {
                        Kind::ScratchWrite {
                            offset: o,
                            contested: c,
                            ..
                        }
                        | Kind::Punch {
                            offset: o,
                            contested: c,
                        } if overlaps(*offset, *o) => {
                            *c = true;
                            *contested = true;
                        }
                        Kind::ScratchRead {
                            offset: o,
                            expected,
                        } if overlaps(*offset, *o) => *expected = None,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }

    fn finished(&mut self, done: &Completed, kind: Kind, res: Option<Res>, may_cancel: bool) {
        let full = Some(Ok(BUF_LEN as u32));
        let label = done.label();
        match kind {
            Kind::ZeroRead if res == full => assert!(
                done.slot().iter().all(|b| *b == 0),
                "readv of /dev/zero ({label:#x}) read non-zero bytes"
            ),
            Kind::FixedRead { offset } if res == full => assert!(
                is_fixed_data(offset, done.slot()),
                "readv of the fixed memfd at {offset} ({label:#x}) read wrong data"
            ),
            Kind::ScratchRead {
                offset,
                expected: Some(expected),
            } if res == full => assert!(
                done.slot() == expected.as_slice(),
                "readv of the scratch memfd at {offset} ({label:#x}) read wrong data"
            ),
            Kind::ScratchWrite {
                offset,
                data,
                contested,
            } => {
                let written = res == full && !contested;
                self.learn(offset, written.then_some(data.as_slice()));
            }
            Kind::SocketRecv if res == full => assert!(
                done.slot().iter().all(|b| *b == SOCKET_BYTE),
                "recv from the socket pair ({label:#x}) got bytes no send sent"
            ),
            Kind::Punch { offset, contested } => {
                let zeros = [0; BUF_LEN];
                let punched = !contested && !may_cancel;
                self.learn(offset, punched.then_some(&zeros[..]));
            }
            _ => {}
        }
    }

    fn unblock(&mut self) {
        self.pipe.poke();
    }

    fn reaped(&mut self) {
        self.pipe.drain();
        // Room for more sends: what is left unread has no reader waiting.
        let mut scratch = [0u8; BUF_LEN];
        while self.sockets.1.recv(&mut scratch).is_ok() {}
    }
}

type World = common::model::World<Real>;

/// Checks that the ring fd polls readable when a completion is ready.
fn poll_fd(world: &mut World) {
    world.submit();
    // Only when every operation in flight completes inline, in this
    // thread's syscalls: nothing can complete between the poll and the wait.
    let inline = world.book.ops().all(|(_, op)| match op.kind {
        Kind::PipeRead | Kind::PipeWrite | Kind::Poll | Kind::Control => true,
        // MSG_DONTWAIT: done in the submitting call, or EAGAIN.
        Kind::SocketSend | Kind::SocketRecv => true,
        _ => op.opcode == URingOperation::Nop && !op.flags.contains(SqeFlags::ASYNC),
    });
    if !inline {
        return;
    }
    let mut pollfd = libc::pollfd {
        fd: world.ring.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, alive for the call.
    let polled = unsafe { libc::poll(&mut pollfd, 1, 0) };
    assert!(polled >= 0, "poll: {}", std::io::Error::last_os_error());
    let readable = pollfd.revents & libc::POLLIN != 0;
    let completions = match world.ring.wait_timeout(Duration::ZERO) {
        Ok(completions) => completions,
        Err(Error::KernelBusy(_)) => return,
        Err(e) => panic!("wait_timeout: {e}"),
    };
    let mut ready = 0;
    for (label, result) in completions {
        world.book.received(label, result);
        ready += 1;
    }
    assert!(
        readable || ready == 0,
        "the ring fd did not poll readable, but {ready} completions were ready"
    );
}

fuzz_target!(|input: Input| {
    let Some(ring) = common::new_ring(None) else {
        return;
    };
    let config = RingConfig {
        // Every kernel with restrictions has IORING_FEAT_NODROP.
        cap: in_flight_cap(&ring, true),
    };
    let mut world = World::new(ring, Real::new(), config);
    for step in &input.steps {
        match step {
            Step::Common(step) => world.step(step),
            Step::PollFd => poll_fd(&mut world),
        }
        world.check_in_flight();
    }
    // Every operation here can be cancelled, so closing must drain whatever
    // is still in flight (polls nobody fired, say).
    world
        .ring
        .close(DRAIN_DEADLINE)
        .expect("close left operations in the kernel");
});

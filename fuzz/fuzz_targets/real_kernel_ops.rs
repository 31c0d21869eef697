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

mod common;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use common::{
    errno, files, iovecs, is_fixed_data, memfd, slot, Control, BUF_LEN, DRAIN_DEADLINE, MEMFD_LEN,
    OFFSET_STEP, USER_DATA_SPACE,
};
use libfuzzer_sys::fuzz_target;

/// What the scratch memfd starts with at `offset`.
fn scratch_initial_byte(offset: usize) -> u8 {
    (offset % 241) as u8 ^ 0x5a
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
    /// A poll of the pipe, a poll removal or a cancellation.
    Control(Control),
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

impl Kind {
    /// The control operation this is, if it is one.
    fn control(&self) -> Option<Control> {
        let Kind::Control(control) = self else {
            return None;
        };
        Some(*control)
    }
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

/// What the model knows beyond the operations in flight: the scratch
/// memfd of this input and what it holds.
struct Scratch {
    file: File,
    /// What the scratch memfd holds, where known.
    known: Vec<Option<u8>>,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            file: memfd(scratch_initial_byte),
            known: (0..MEMFD_LEN)
                .map(|i| Some(scratch_initial_byte(i)))
                .collect(),
        }
    }
}

impl common::State for Scratch {
    type Op = Op;

    /// Checks one completion against the operation the model has for it.
    fn completed(&mut self, user_data: u64, op: Op, result: io::Result<u32>) {
        if errno(&result) == Some(libc::ECANCELED) {
            assert!(
                op.targeted,
                "{op:?} ({user_data}) cancelled though nothing aimed at it"
            );
            if let Kind::ScratchWrite { offset, .. } = op.kind {
                self.known[offset..offset + BUF_LEN].fill(None);
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
            Kind::Control(control) => assert!(
                control.result_ok(&result),
                "{control:?} {user_data}: {result:?}"
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
                assert!(
                    is_fixed_data(offset, read_back()),
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
                let region = &mut self.known[offset..offset + BUF_LEN];
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

/// One input's world: the ring, its model, and the per-input files.
type World = common::World<Scratch>;

impl World {
    /// What a readv of the scratch memfd at `offset` must read, if the model
    /// knows: not while a write to an overlapping region is in flight.
    fn scratch_expectation(&self, offset: usize) -> Option<Vec<u8>> {
        let writing = self.ops.values().any(|op| {
            matches!(op.kind, Kind::ScratchWrite { offset: other, .. } if overlaps(offset, other))
        });
        if writing {
            return None;
        }
        self.state.known[offset..offset + BUF_LEN]
            .iter()
            .copied()
            .collect()
    }

    /// Records an operation the context accepted.
    fn added(&mut self, user_data: u64, mut kind: Kind) {
        let in_flight = self
            .ops
            .iter_mut()
            .map(|(other, op)| (*other, op.kind.control(), &mut op.targeted));
        let targeted = common::aim(in_flight, user_data, kind.control());
        if let Kind::ScratchWrite {
            offset, contested, ..
        } = &mut kind
        {
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
        self.ops.insert(user_data, Op { kind, targeted });
    }

    /// Adds the operation `op` with `user_data`, checks the answer against
    /// the model and records it. `arg` picks a target or an offset.
    fn add(&mut self, step: usize, op: u8, user_data: u64, arg: u8) {
        let files = files();
        let ring = &self.ring;
        let pipe = &self.pipe;
        let offset = usize::from(arg) * OFFSET_STEP;
        let target = u64::from(arg) % USER_DATA_SPACE;
        // The slot may be prepared only while no operation uses it.
        let free = !self.ops.contains_key(&user_data);
        let prepare = |fill: &dyn Fn(&mut [u8])| {
            if free {
                // SAFETY: no operation with this user_data is in flight, and
                // the slice is gone before the add below.
                fill(unsafe { slot(user_data) });
            }
        };
        let read_target = || prepare(&|buf| buf.fill(0xee));
        let iovecs = || iovecs(user_data);
        let control = |control| (Kind::Control(control), self.add_control(control, user_data));
        let scratch = self.state.file.as_raw_fd();
        // SAFETY (for every readv and writev below): `iovecs` hands out the
        // slot of this user_data, which no other operation in flight uses;
        // if one does, the context refuses the add (see `common::iovecs`).
        let (kind, added) = match op {
            0 => (Kind::Nop, ring.add_nop(user_data)),
            1 => {
                read_target();
                let fd = files.zero.as_raw_fd();
                // SAFETY: see above.
                let added = unsafe { ring.add_readv(iovecs(), fd, Some(0), user_data) };
                (Kind::ZeroRead, added)
            }
            2 => {
                let fd = files.null.as_raw_fd();
                // SAFETY: see above.
                let added = unsafe { ring.add_writev(iovecs(), fd, None, user_data) };
                (Kind::NullWrite, added)
            }
            3 => control(Control::Poll),
            4 => control(Control::PollRemove { target }),
            5 => control(Control::Cancel { target }),
            6 => {
                let null = arg & 1 == 0;
                let fd = if null {
                    files.null.as_raw_fd()
                } else {
                    scratch
                };
                (Kind::Fsync { null }, ring.add_fsync(fd, user_data))
            }
            7 => {
                read_target();
                let expected = self.scratch_expectation(offset);
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
                let fd = files.fixed.as_raw_fd();
                // SAFETY: see above.
                let added = unsafe { ring.add_readv(iovecs(), fd, Some(offset as u64), user_data) };
                (Kind::FixedRead { offset }, added)
            }
            11 => {
                read_target();
                let fd = pipe.reader.as_raw_fd();
                // SAFETY: see above.
                let added = unsafe { ring.add_readv(iovecs(), fd, None, user_data) };
                (Kind::PipeRead, added)
            }
            _ => {
                prepare(&|buf| buf.fill(b'w'));
                let fd = pipe.writer.as_raw_fd();
                // SAFETY: see above.
                let added = unsafe { ring.add_writev(iovecs(), fd, None, user_data) };
                (Kind::PipeWrite, added)
            }
        };
        if self.accepted(user_data, &added) {
            self.added(user_data, kind);
        }
    }
}

/// Operations 0..ADDS add; the rest submit, reap or drain.
const ADDS: u8 = 13;

fuzz_target!(|data: &[u8]| {
    let Some(ring) = common::new_ring(None) else {
        return;
    };
    let mut world = World::new(ring, Scratch::new());

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

//! Cost as work grows: the nop loop at batch 32 with 0, 64, 1024 and 8192
//! other operations in flight (polls on a pipe that never becomes
//! readable), for ringfence and the `io-uring` crate.

mod common;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use common::{io_uring_round, ringfence_batch_round};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use io_uring::{opcode, types, IoUring};
use ringfence::{EventType, OpBatch, URingContext};

const BATCH: usize = 32;
const PENDING: [usize; 4] = [0, 64, 1024, 8192];
/// user_data of the pending polls start here, clear of the nops'.
const POLL_BASE: u64 = 1 << 32;
/// Ring entries for both libraries: ringfence caps operations in flight at
/// 16 completion rings (here 16 x 2048), so 8192 pending polls need a ring
/// larger than the other benchmarks' 128 entries.
const ENTRIES: u32 = 1024;

fn pipe() -> (File, File) {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two descriptors into the two-element array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are new and ours.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

fn ringfence_with_pending(pending: usize, fd: i32) -> URingContext {
    let ring = URingContext::new(ENTRIES as usize, None).unwrap();
    for i in 0..pending as u64 {
        if let Err(ringfence::Error::NoSpace) = ring.add_poll_fd(fd, EventType::Read, POLL_BASE + i)
        {
            ring.submit().unwrap();
            ring.add_poll_fd(fd, EventType::Read, POLL_BASE + i)
                .unwrap();
        }
    }
    ring.submit().unwrap();
    assert_eq!(ring.in_flight(), pending);
    ring
}

fn io_uring_with_pending(pending: usize, fd: i32) -> IoUring {
    let mut ring = IoUring::new(ENTRIES).unwrap();
    for i in 0..pending as u64 {
        let poll = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(POLL_BASE + i);
        // SAFETY: a poll references no memory.
        while unsafe { ring.submission().push(&poll) }.is_err() {
            ring.submit().unwrap();
        }
    }
    ring.submit().unwrap();
    ring
}

fn in_flight(c: &mut Criterion) {
    let (reader, _writer) = pipe();
    let fd = reader.as_raw_fd();
    let mut group = c.benchmark_group("in_flight");
    group.throughput(Throughput::Elements(BATCH as u64));
    for pending in PENDING {
        let ring = ringfence_with_pending(pending, fd);
        let mut ops = OpBatch::with_capacity(BATCH);
        group.bench_with_input(
            BenchmarkId::new("ringfence-batch", pending),
            &pending,
            |b, _| b.iter(|| ringfence_batch_round(&ring, &mut ops, BATCH)),
        );
        drop(ring); // Cancels the polls.
        let mut io_uring = io_uring_with_pending(pending, fd);
        group.bench_with_input(BenchmarkId::new("io-uring", pending), &pending, |b, _| {
            b.iter(|| io_uring_round(&mut io_uring, BATCH))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = in_flight
}
criterion_main!(benches);

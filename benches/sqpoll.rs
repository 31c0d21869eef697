//! The nop loop on an SQPOLL ring against a plain one, ringfence and the
//! `io-uring` crate, in one run, at batch 1 and 32: queue a batch of nops,
//! submit, wait for all.
//!
//! - `ringfence`: `URingContext::new(128, None)`; `ringfence-sqpoll`:
//!   `URingBuilder::new(128).sqpoll(100 ms)`. Both queue the batch with one
//!   `add_batch` (`OpBatch`), `submit`, then `wait` until all are back.
//!   On the SQPOLL ring `submit` enters the kernel only when its thread
//!   sleeps, and `wait` enters to block unless a completion is already
//!   there.
//! - `io-uring` and `io-uring-sqpoll`: `IoUring::new(128)` and
//!   `IoUring::builder().setup_sqpoll(100)`; `push` each nop,
//!   `submit_and_wait(batch)`.
//! - `ringfence-sqpoll-polling` and `io-uring-sqpoll-polling`: the SQPOLL
//!   rings as they are meant to be used, with no system call at all while
//!   the kernel's thread is awake: after the add (or `push` and `submit`),
//!   the caller spins on the completion queue (`wait_timeout(ZERO)`, or the
//!   crate's `completion()`) instead of blocking in `io_uring_enter`.
//!
//! The SQ thread of an SQPOLL ring spins on a CPU while it has work and for
//! its idle time, 100 ms here, after its last (`sq_thread_idle`; then it
//! sleeps until woken: `io_sq_thread` in the kernel's `io_uring/sqpoll.c`,
//! and `quick sqpoll` measures the CPU time it burns). On a machine with
//! few cores it competes with the benchmark's own thread, and keeps
//! spinning into whatever runs next: `quick sqpoll` pauses after each
//! SQPOLL round so the next one starts without it, and measures the CPU
//! time it takes.

mod common;

use common::{
    io_uring_nop_round, io_uring_polling_round, ringfence_polling_round, ringfence_submit_round,
    NopRings,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// One nop per submission, and a batch of 32.
const BATCHES: [usize; 2] = [1, 32];

fn sqpoll(c: &mut Criterion) {
    let NopRings {
        plain,
        sqpoll,
        mut io_uring,
        mut io_uring_sqpoll,
        mut ops,
    } = NopRings::new(None).unwrap();
    let mut group = c.benchmark_group("sqpoll");
    for batch in BATCHES {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("ringfence", batch), &batch, |b, &n| {
            b.iter(|| ringfence_submit_round(&plain, &mut ops, n).unwrap())
        });
        group.bench_with_input(
            BenchmarkId::new("ringfence-sqpoll", batch),
            &batch,
            |b, &n| b.iter(|| ringfence_submit_round(&sqpoll, &mut ops, n).unwrap()),
        );
        group.bench_with_input(
            BenchmarkId::new("ringfence-sqpoll-polling", batch),
            &batch,
            |b, &n| b.iter(|| ringfence_polling_round(&sqpoll, &mut ops, n).unwrap()),
        );
        group.bench_with_input(BenchmarkId::new("io-uring", batch), &batch, |b, &n| {
            b.iter(|| io_uring_nop_round(&mut io_uring, n).unwrap())
        });
        group.bench_with_input(
            BenchmarkId::new("io-uring-sqpoll", batch),
            &batch,
            |b, &n| b.iter(|| io_uring_nop_round(&mut io_uring_sqpoll, n).unwrap()),
        );
        group.bench_with_input(
            BenchmarkId::new("io-uring-sqpoll-polling", batch),
            &batch,
            |b, &n| b.iter(|| io_uring_polling_round(&mut io_uring_sqpoll, n).unwrap()),
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = sqpoll
}
criterion_main!(benches);

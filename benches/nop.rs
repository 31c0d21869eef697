//! One nop loop, side by side: push a batch of nops, submit and wait for
//! all, drain every completion. ringfence with one `add_nop` per op, with
//! one `add_batch` per batch (`OpBatch`), and with `add_batch` on a
//! restricted ring; the `io-uring` crate; and one blocking syscall per op
//! (`getppid`, the cheapest there is) as the floor without a ring.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use io_uring::{opcode, IoUring};
use ringfence::{OpBatch, URingAllowlist, URingContext, URingOperation};

fn ringfence_round(ring: &URingContext, batch: usize) {
    for user_data in 0..batch as u64 {
        ring.add_nop(user_data).unwrap();
    }
    drain(ring, batch);
}

fn drain(ring: &URingContext, batch: usize) {
    let mut reaped = 0;
    while reaped < batch {
        for (user_data, result) in ring.wait().unwrap() {
            black_box((user_data, result.unwrap()));
            reaped += 1;
        }
    }
}

fn ringfence_batch_round(ring: &URingContext, ops: &mut OpBatch, batch: usize) {
    for user_data in 0..batch as u64 {
        ops.add_nop(user_data);
    }
    ring.add_batch(ops).unwrap();
    drain(ring, batch);
}

fn io_uring_round(ring: &mut IoUring, batch: usize) {
    {
        let mut sq = ring.submission();
        for user_data in 0..batch as u64 {
            let nop = opcode::Nop::new().build().user_data(user_data);
            // SAFETY: a nop references no memory.
            unsafe { sq.push(&nop) }.unwrap();
        }
    }
    ring.submit_and_wait(batch).unwrap();
    let mut reaped = 0;
    while reaped < batch {
        for cqe in ring.completion() {
            black_box((cqe.user_data(), cqe.result()));
            reaped += 1;
        }
    }
}

fn nop(c: &mut Criterion) {
    let mut group = c.benchmark_group("nop");
    let ring = URingContext::new(common::RING_ENTRIES as usize, None).unwrap();
    let mut allowlist = URingAllowlist::new();
    allowlist.allow_submit_operation(URingOperation::Nop);
    let restricted = URingContext::new(common::RING_ENTRIES as usize, Some(&allowlist)).unwrap();
    let mut io_uring = IoUring::new(common::RING_ENTRIES).unwrap();
    for batch in common::BATCHES {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::new("ringfence", batch), &batch, |b, &n| {
            b.iter(|| ringfence_round(&ring, n))
        });
        let mut ops = OpBatch::with_capacity(batch);
        group.bench_with_input(
            BenchmarkId::new("ringfence-batch", batch),
            &batch,
            |b, &n| b.iter(|| ringfence_batch_round(&ring, &mut ops, n)),
        );
        group.bench_with_input(
            BenchmarkId::new("ringfence-batch-restricted", batch),
            &batch,
            |b, &n| b.iter(|| ringfence_batch_round(&restricted, &mut ops, n)),
        );
        group.bench_with_input(BenchmarkId::new("io-uring", batch), &batch, |b, &n| {
            b.iter(|| io_uring_round(&mut io_uring, n))
        });
        group.bench_with_input(BenchmarkId::new("syscall", batch), &batch, |b, &n| {
            b.iter(|| {
                for _ in 0..n {
                    // SAFETY: getppid takes no arguments and cannot fail.
                    black_box(unsafe { libc::syscall(libc::SYS_getppid) });
                }
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = nop
}
criterion_main!(benches);

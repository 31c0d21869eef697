//! One nop loop, side by side: push a batch of nops, submit and wait for
//! all, drain every completion. ringfence with one `add_nop` per op, with
//! one `add_batch` per batch (`OpBatch`), and with `add_batch` on a
//! restricted ring; the `io-uring` crate; and one blocking syscall per op
//! (`getppid`, the cheapest there is) as the floor without a ring.

mod common;

use std::hint::black_box;

use common::{drain, io_uring_round, ringfence_batch_round};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use io_uring::IoUring;
use ringfence::{OpBatch, URingAllowlist, URingContext, URingOperation};

fn ringfence_round(ring: &URingContext, batch: usize) {
    for user_data in 0..batch as u64 {
        ring.add_nop(user_data).unwrap();
    }
    drain(ring, batch);
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

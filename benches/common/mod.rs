//! What the benchmarks share: criterion settings and ring sizes.
#![allow(dead_code)]

use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use io_uring::{opcode, IoUring};
use ringfence::op::Nop;
use ringfence::{OpBatch, URingContext};

/// Batch sizes every batched benchmark runs.
pub const BATCHES: [usize; 4] = [1, 8, 32, 128];

/// Ring entries: room for the largest batch.
pub const RING_ENTRIES: u32 = 128;

/// Short runs: the machine is shared and noisy, so what matters is that
/// the contenders are measured side by side in one run.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args()
}

/// Reaps `batch` nop completions.
pub fn drain(ring: &URingContext, batch: usize) {
    let mut reaped = 0;
    while reaped < batch {
        for (user_data, result) in ring.wait().unwrap() {
            black_box((user_data, result.unwrap()));
            reaped += 1;
        }
    }
}

/// One nop round through a reused `OpBatch`: queue `batch` nops under
/// one lock, then reap them.
pub fn ringfence_batch_round(ring: &URingContext, ops: &mut OpBatch, batch: usize) {
    for user_data in 0..batch as u64 {
        ops.add(Nop::new(), user_data).unwrap();
    }
    ring.add_batch(ops).unwrap();
    drain(ring, batch);
}

/// One nop round with the `io-uring` crate: push `batch` nops, submit and
/// wait for all, drain the completion queue.
pub fn io_uring_round(ring: &mut IoUring, batch: usize) {
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

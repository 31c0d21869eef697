//! What the benchmarks share: criterion settings and ring sizes.
#![allow(dead_code)]

use std::time::Duration;

use criterion::Criterion;

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

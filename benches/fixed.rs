//! readv against read_fixed, ringfence against the `io-uring` crate, in
//! one run: 4 KiB reads at random offsets of a 64 MiB file on tmpfs (the
//! approach of `readv.rs`), at batch 1 and 32. Each iteration reads a batch
//! and waits for all of it; criterion reports the time per iteration,
//! `report.py` divides it into ns per read and prints the ratios
//! ringfence / io-uring for each form and read_fixed / readv within each
//! library.
//!
//! - `ringfence-readv`: `op::Readv` with a boxed one-iovec array per read,
//!   the file by its descriptor, through `OpBatch`;
//! - `ringfence-read-fixed`: `op::ReadFixed` on a ring built with
//!   `URingBuilder::files(&[file]).buffers(32, 4096)`, `Target::fixed(0)`
//!   into `registered_buffer(i)`, through `OpBatch`;
//! - `io-uring-readv`: the crate's `opcode::Readv`, a boxed iovec array per
//!   read, as in `readv.rs`;
//! - `io-uring-read-fixed`: the crate's `opcode::ReadFixed` with the same
//!   file and as many buffers registered (`register_files`,
//!   `register_buffers`), `types::Fixed(0)`.
//!
//! The set-up and the four round trips are `common::FixedReads`, which
//! `quick fixed` runs interleaved for the README's headline figures.

mod common;

use common::FixedReads;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// The batch sizes: one read per submission, and one per registered buffer.
const BATCHES: [usize; 2] = [1, common::FIXED_BUFFERS];

fn fixed(c: &mut Criterion) {
    let mut reads = FixedReads::new("fixed").unwrap();
    let mut group = c.benchmark_group("fixed");
    for batch in BATCHES {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::new("ringfence-readv", batch),
            &batch,
            |b, &n| b.iter(|| reads.ringfence_readv(n).unwrap()),
        );
        group.bench_with_input(
            BenchmarkId::new("ringfence-read-fixed", batch),
            &batch,
            |b, &n| b.iter(|| reads.ringfence_read_fixed(n).unwrap()),
        );
        group.bench_with_input(
            BenchmarkId::new("io-uring-readv", batch),
            &batch,
            |b, &n| b.iter(|| reads.io_uring_readv(n).unwrap()),
        );
        group.bench_with_input(
            BenchmarkId::new("io-uring-read-fixed", batch),
            &batch,
            |b, &n| b.iter(|| reads.io_uring_read_fixed(n).unwrap()),
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = fixed
}
criterion_main!(benches);

//! 4 KiB reads at random offsets of a page-cached 64 MiB file, side by side:
//! ringfence (`add_readv` per read, and `OpBatch`), the `io-uring` crate,
//! and one blocking `preadv` per read. Each iteration reads a batch and
//! waits for all of it.

mod common;

use std::fs::File;
use std::hint::black_box;
use std::io::Write;
use std::os::fd::AsRawFd;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use io_uring::{opcode, types, IoUring};
use ringfence::op::{Readv, Target};
use ringfence::{IoBufMut, OpBatch, URingContext};

const BLOCK: usize = 4096;
const FILE_LEN: usize = 64 << 20;

/// A file of `FILE_LEN` bytes, written once so that it sits in the page cache.
fn cached_file() -> File {
    let mut file = tempfile::tempfile().unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(|i| i as u8).collect();
    for _ in 0..FILE_LEN / chunk.len() {
        file.write_all(&chunk).unwrap();
    }
    file.sync_all().unwrap();
    file
}

/// Block-aligned offsets, from a fixed seed so every run reads the same.
struct Offsets(fastrand::Rng);

impl Offsets {
    fn new() -> Offsets {
        Offsets(fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15))
    }

    fn next(&mut self) -> u64 {
        self.0.u64(..(FILE_LEN / BLOCK) as u64) * BLOCK as u64
    }
}

/// `batch` block buffers; read `i` of a round goes to block `i`.
struct Buffers(Vec<u8>);

impl Buffers {
    fn new(batch: usize) -> Buffers {
        Buffers(vec![0; batch * BLOCK])
    }

    fn iovec(&mut self, i: usize) -> libc::iovec {
        libc::iovec {
            iov_base: self.0[i * BLOCK..].as_mut_ptr().cast(),
            iov_len: BLOCK,
        }
    }

    /// The pinned iovec array `add_readv` takes, over block `i`.
    fn pinned(&mut self, i: usize) -> std::pin::Pin<Box<[IoBufMut<'static>]>> {
        let iov = self.iovec(i);
        // SAFETY: the block lives as long as `self`, which outlives the
        // round that reads into it (each round waits for all its reads).
        Box::pin([unsafe { IoBufMut::from_raw_parts(iov.iov_base.cast(), BLOCK) }])
    }
}

fn drain(ring: &URingContext, batch: usize) {
    let mut reaped = 0;
    while reaped < batch {
        for (_, result) in ring.wait().unwrap() {
            assert_eq!(result.unwrap() as usize, BLOCK);
            reaped += 1;
        }
    }
}

fn readv(c: &mut Criterion) {
    let file = cached_file();
    let fd = file.as_raw_fd();
    let mut group = c.benchmark_group("readv");
    let ring = URingContext::new(common::RING_ENTRIES as usize, None).unwrap();
    let mut io_uring = IoUring::new(common::RING_ENTRIES).unwrap();
    for batch in common::BATCHES {
        group.throughput(Throughput::Elements(batch as u64));
        let mut bufs = Buffers::new(batch);
        let mut offsets = Offsets::new();
        group.bench_with_input(BenchmarkId::new("ringfence", batch), &batch, |b, &n| {
            b.iter(|| {
                for i in 0..n {
                    let iovecs = bufs.pinned(i);
                    // SAFETY: see `Buffers::pinned`.
                    unsafe { ring.add_readv(iovecs, fd, Some(offsets.next()), i as u64) }.unwrap();
                }
                drain(&ring, n);
            })
        });
        let mut ops = OpBatch::with_capacity(batch);
        group.bench_with_input(
            BenchmarkId::new("ringfence-batch", batch),
            &batch,
            |b, &n| {
                b.iter(|| {
                    for i in 0..n {
                        let iovecs = bufs.pinned(i);
                        // SAFETY: see `Buffers::pinned`; the file outlives
                        // the ring.
                        let target = unsafe { Target::from_raw_fd(fd) };
                        let read = Readv::new(iovecs, target, Some(offsets.next()));
                        ops.add(read, i as u64).unwrap();
                    }
                    ring.add_batch(&mut ops).unwrap();
                    drain(&ring, n);
                })
            },
        );
        // The io-uring crate leaves the iovec arrays to the caller: one
        // per read, alive for the round.
        let mut iovecs: Vec<libc::iovec> = (0..batch).map(|i| bufs.iovec(i)).collect();
        group.bench_with_input(BenchmarkId::new("io-uring", batch), &batch, |b, &n| {
            b.iter(|| {
                {
                    let mut sq = io_uring.submission();
                    for (i, iov) in iovecs.iter_mut().enumerate() {
                        let read = opcode::Readv::new(types::Fd(fd), iov, 1)
                            .offset(offsets.next())
                            .build()
                            .user_data(i as u64);
                        // SAFETY: the iovec and its block outlive the round.
                        unsafe { sq.push(&read) }.unwrap();
                    }
                }
                io_uring.submit_and_wait(n).unwrap();
                let mut reaped = 0;
                while reaped < n {
                    for cqe in io_uring.completion() {
                        assert_eq!(cqe.result() as usize, BLOCK);
                        reaped += 1;
                    }
                }
            })
        });
        group.bench_with_input(BenchmarkId::new("preadv", batch), &batch, |b, &n| {
            b.iter(|| {
                for iov in iovecs.iter().take(n) {
                    // SAFETY: one valid iovec over a live block.
                    let read = unsafe { libc::preadv(fd, iov, 1, offsets.next() as i64) };
                    assert_eq!(black_box(read) as usize, BLOCK);
                }
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = readv
}
criterion_main!(benches);

//! 4 KiB reads at random offsets of a 64 MiB file on tmpfs, side by side:
//! ringfence (`add_readv` per read, and `OpBatch`), the `io-uring` crate
//! (with a boxed one-iovec array per read, as ringfence's callers have, and
//! with one array reused for every round), and one blocking `preadv` per
//! read. Each iteration reads a batch and waits for all of it; criterion
//! reports the time per iteration, `report.py` divides it into ns per read.
//!
//! The file lives in `/dev/shm` because tmpfs pages are the file itself:
//! the kernel cannot drop them to disk and read them back later, so every
//! read is a copy from memory and the figures measure the rings, not the
//! disk. A disk file's page cache is reclaimed proactively on the machines
//! these benchmarks run on, so its reads partly go to the disk.

mod common;

use std::hint::black_box;
use std::os::fd::AsRawFd;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use io_uring::{opcode, types, IoUring};
use ringfence::op::{Readv, Target};
use ringfence::{IoBufMut, OpBatch, URingContext};

use common::{tmpfs_file, Offsets, BLOCK};

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

/// Submits what is queued on `ring` and reaps `batch` reads of `BLOCK`
/// bytes each.
fn io_uring_reap(ring: &mut IoUring, batch: usize) {
    ring.submit_and_wait(batch).unwrap();
    let mut reaped = 0;
    while reaped < batch {
        for cqe in ring.completion() {
            assert_eq!(cqe.result() as usize, BLOCK);
            reaped += 1;
        }
    }
}

fn readv(c: &mut Criterion) {
    let file = tmpfs_file("readv").expect("a file to read");
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
        // The io-uring crate leaves the iovec arrays to the caller. Doing
        // ringfence's work: a boxed one-iovec array per read (as
        // `Buffers::pinned` allocates for `add_readv`), kept alive until the
        // round's reads are reaped and then freed. The Vec that holds them
        // is reused across rounds, so only the boxes are allocated.
        let mut boxes: Vec<Box<[libc::iovec]>> = Vec::with_capacity(batch);
        group.bench_with_input(BenchmarkId::new("io-uring", batch), &batch, |b, &n| {
            b.iter(|| {
                {
                    let mut sq = io_uring.submission();
                    for i in 0..n {
                        let iov: Box<[libc::iovec]> = Box::new([bufs.iovec(i)]);
                        // Moving the box into `boxes` leaves its heap array
                        // where it is, so this pointer stays valid.
                        let read = opcode::Readv::new(types::Fd(fd), iov.as_ptr(), 1)
                            .offset(offsets.next())
                            .build()
                            .user_data(i as u64);
                        boxes.push(iov);
                        // SAFETY: the iovec array is in `boxes`, which is
                        // cleared only after all `n` reads are reaped below;
                        // block `i` of `bufs` outlives the round and only
                        // this read writes it; the file outlives the ring.
                        unsafe { sq.push(&read) }.unwrap();
                    }
                }
                io_uring_reap(&mut io_uring, n);
                boxes.clear();
            })
        });
        // Today's shape for a caller of the crate: one array of `batch`
        // iovecs, built once and reused by every round, so the difference
        // to `io-uring` is the cost of a box per read.
        let mut iovecs: Vec<libc::iovec> = (0..batch).map(|i| bufs.iovec(i)).collect();
        group.bench_with_input(
            BenchmarkId::new("io-uring-reused", batch),
            &batch,
            |b, &n| {
                b.iter(|| {
                    {
                        let mut sq = io_uring.submission();
                        for (i, iov) in iovecs.iter_mut().enumerate() {
                            let read = opcode::Readv::new(types::Fd(fd), iov, 1)
                                .offset(offsets.next())
                                .build()
                                .user_data(i as u64);
                            // SAFETY: `iovecs` outlives the round and is not
                            // touched while reads are in flight; block `i`
                            // of `bufs` outlives the round and only this
                            // read writes it; the file outlives the ring.
                            unsafe { sq.push(&read) }.unwrap();
                        }
                    }
                    io_uring_reap(&mut io_uring, n);
                })
            },
        );
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

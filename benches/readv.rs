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

use std::fs::File;
use std::hint::black_box;
use std::io::{self, Write};
use std::os::fd::AsRawFd;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use io_uring::{opcode, types, IoUring};
use ringfence::op::{Readv, Target};
use ringfence::{IoBufMut, OpBatch, URingContext};

const BLOCK: usize = 4096;
const FILE_LEN: usize = 64 << 20;

/// Where the file goes: tmpfs on every Linux system that mounts it.
const TMPFS_DIR: &str = "/dev/shm";

/// A file of `FILE_LEN` bytes on tmpfs, in [`TMPFS_DIR`]. If that
/// directory is missing, is not tmpfs or has no room for the file, falls
/// back to the default temporary directory (a disk file, whose reads may
/// reach the disk) and says so on stderr.
fn tmpfs_file() -> File {
    let on_tmpfs = tempfile::tempfile_in(TMPFS_DIR).and_then(|file| {
        if !is_tmpfs(&file)? {
            return Err(io::Error::other("not a tmpfs mount"));
        }
        fill(&file)?;
        Ok(file)
    });
    match on_tmpfs {
        Ok(file) => file,
        Err(e) => {
            let file = tempfile::tempfile().unwrap();
            fill(&file).unwrap();
            eprintln!(
                "readv: {TMPFS_DIR} is not usable ({e}); reading a file in {} instead, whose page cache may be reclaimed, so the figures may include disk reads",
                std::env::temp_dir().display()
            );
            file
        }
    }
}

/// Whether `file` is on tmpfs.
fn is_tmpfs(file: &File) -> io::Result<bool> {
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: the fd is open for the call (`file` is borrowed), and
    // `fs.as_mut_ptr()` points to writable memory of the struct's size,
    // which fstatfs fills in full when it returns 0.
    if unsafe { libc::fstatfs(file.as_raw_fd(), fs.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatfs returned 0, so it initialized the whole struct.
    let fs = unsafe { fs.assume_init() };
    Ok(fs.f_type == libc::TMPFS_MAGIC)
}

/// Writes `FILE_LEN` bytes of a repeating pattern to `file`. `sync_all`
/// matters only for the disk fallback: its pages are then clean, as a
/// page-cached file's usually are (on tmpfs it does nothing).
fn fill(mut file: &File) -> io::Result<()> {
    let chunk: Vec<u8> = (0..1 << 20).map(|i| i as u8).collect();
    for _ in 0..FILE_LEN / chunk.len() {
        file.write_all(&chunk)?;
    }
    file.sync_all()
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
    let file = tmpfs_file();
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

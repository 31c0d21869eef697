//! Two producer threads and one reaper on one ring: nops in batches of 32,
//! at most `WINDOW` in flight. A producer that finds no credit (the window
//! is full) blocks on a condition variable until the reaper returns some;
//! one that finds the submission queue full submits and retries. Both are
//! counted and printed. ringfence (`OpBatch`) against the `io-uring` crate
//! behind a `Mutex`, whose reaper waits in `io_uring_enter` outside the
//! lock. Every completion is checked to arrive exactly once.

mod common;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use io_uring::{opcode, IoUring};
use ringfence::op::Nop;
use ringfence::{Error, OpBatch, URingContext};

const PRODUCERS: u64 = 2;
const PER_PRODUCER: u64 = 16_384;
const BATCH: u64 = 32;
const WINDOW: usize = 512;
const TOTAL: u64 = PRODUCERS * PER_PRODUCER;
/// `io_uring_enter` flag: wait for `min_complete` completions.
const IORING_ENTER_GETEVENTS: u32 = 1;

/// In-flight credits: producers take them per batch, the reaper gives them
/// back per completion.
struct Credits {
    free: Mutex<usize>,
    returned: Condvar,
    /// Times a producer had to block for credits.
    waits: AtomicU64,
    /// Times a producer found the submission queue full.
    full: AtomicU64,
}

impl Credits {
    fn new() -> Credits {
        Credits {
            free: Mutex::new(WINDOW),
            returned: Condvar::new(),
            waits: AtomicU64::new(0),
            full: AtomicU64::new(0),
        }
    }

    fn take(&self, n: usize) {
        let mut free = self.free.lock().unwrap();
        if *free < n {
            self.waits.fetch_add(1, Ordering::Relaxed);
        }
        while *free < n {
            free = self.returned.wait(free).unwrap();
        }
        *free -= n;
    }

    fn give(&self, n: usize) {
        *self.free.lock().unwrap() += n;
        self.returned.notify_all();
    }
}

/// Marks `user_data` seen; panics on a duplicate or a stranger.
fn check_once(seen: &mut [bool], user_data: u64) {
    let index = (user_data >> 32) * PER_PRODUCER + (user_data & 0xffff_ffff);
    let slot = seen.get_mut(index as usize).expect("unknown user_data");
    assert!(!*slot, "user_data {user_data:#x} completed twice");
    *slot = true;
}

/// One run of `TOTAL` nops; returns its wall time.
fn ringfence_run(credits: &Credits) -> Duration {
    let ring = URingContext::new(common::RING_ENTRIES as usize, None).unwrap();
    let started = Instant::now();
    std::thread::scope(|s| {
        for producer in 0..PRODUCERS {
            let ring = &ring;
            s.spawn(move || {
                let mut ops = OpBatch::with_capacity(BATCH as usize);
                for first in (0..PER_PRODUCER).step_by(BATCH as usize) {
                    credits.take(BATCH as usize);
                    for i in first..first + BATCH {
                        ops.add(Nop::new(), producer << 32 | i).unwrap();
                    }
                    loop {
                        match ring.add_batch(&mut ops) {
                            Ok(()) => break,
                            Err(Error::NoSpace) => {
                                credits.full.fetch_add(1, Ordering::Relaxed);
                                ring.submit().unwrap();
                            }
                            Err(e) => panic!("add_batch: {e}"),
                        }
                    }
                    ring.submit().unwrap();
                }
            });
        }
        let mut seen = vec![false; TOTAL as usize];
        let mut reaped = 0;
        while reaped < TOTAL {
            let mut n = 0;
            for (user_data, result) in ring.wait_timeout(Duration::from_millis(100)).unwrap() {
                result.unwrap();
                check_once(&mut seen, user_data);
                n += 1;
            }
            reaped += n;
            credits.give(n as usize);
        }
    });
    started.elapsed()
}

/// `io_uring_enter` on the `io-uring` crate's ring fd, without its lock.
fn enter(fd: i32, to_submit: u32, min_complete: u32, flags: u32) {
    // SAFETY: io_uring_enter with no pointers (null sigset); the kernel
    // reads the SQ ring up to the tail the crate published under the lock.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_uring_enter,
            fd,
            to_submit,
            min_complete,
            flags,
            std::ptr::null::<libc::sigset_t>(),
            0,
        )
    };
    assert!(ret >= 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR));
}

fn io_uring_run(credits: &Credits) -> Duration {
    let ring = Mutex::new(IoUring::new(common::RING_ENTRIES).unwrap());
    let fd = ring.lock().unwrap().as_raw_fd();
    let started = Instant::now();
    std::thread::scope(|s| {
        for producer in 0..PRODUCERS {
            let ring = &ring;
            s.spawn(move || {
                for first in (0..PER_PRODUCER).step_by(BATCH as usize) {
                    credits.take(BATCH as usize);
                    {
                        let mut ring = ring.lock().unwrap();
                        for i in first..first + BATCH {
                            let nop = opcode::Nop::new().build().user_data(producer << 32 | i);
                            // SAFETY: a nop references no memory.
                            while unsafe { ring.submission().push(&nop) }.is_err() {
                                credits.full.fetch_add(1, Ordering::Relaxed);
                                ring.submit().unwrap();
                            }
                        }
                    }
                    // Submit outside the lock, as ringfence does: the kernel
                    // takes whatever is queued, whoever queued it.
                    enter(fd, common::RING_ENTRIES, 0, 0);
                }
            });
        }
        let mut seen = vec![false; TOTAL as usize];
        let mut reaped = 0;
        while reaped < TOTAL {
            let mut n = 0;
            {
                let mut ring = ring.lock().unwrap();
                for cqe in ring.completion() {
                    assert!(cqe.result() >= 0);
                    check_once(&mut seen, cqe.user_data());
                    n += 1;
                }
            }
            if n == 0 {
                // Wait outside the lock, so producers can go on.
                enter(fd, 0, 1, IORING_ENTER_GETEVENTS);
            }
            reaped += n;
            credits.give(n as usize);
        }
    });
    started.elapsed()
}

fn threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("threads");
    group.throughput(Throughput::Elements(TOTAL));
    group.sample_size(10);
    for (name, run) in [
        ("ringfence-batch", ringfence_run as fn(&Credits) -> Duration),
        ("io-uring-mutex", io_uring_run),
    ] {
        let credits = Credits::new();
        let mut runs = 0;
        group.bench_function(BenchmarkId::new(name, TOTAL), |b| {
            b.iter_custom(|iters| {
                runs += iters;
                (0..iters).map(|_| run(&credits)).sum()
            })
        });
        eprintln!(
            "threads/{name}: {runs} runs of {TOTAL} ops; producers blocked for credits {} times, \
             found the submission queue full {} times",
            credits.waits.load(Ordering::Relaxed),
            credits.full.load(Ordering::Relaxed),
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = threads
}
criterion_main!(benches);

//! Many futures at once: a ring far smaller than the work given to it,
//! and thousands of mixed operations on several threads with random
//! drops, every result checked.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use futures::StreamExt;
use ringfence_async::{Driver, File, UnixStream};

use common::{poll_once, CountingWaker, LIMIT};

/// Fails on the errors a full ring must never surface.
fn not_full(err: &std::io::Error, what: &str) {
    assert!(
        err.kind() != std::io::ErrorKind::WouldBlock && err.raw_os_error() != Some(libc::EBUSY),
        "{what}: a full ring leaked out as an error: {err}"
    );
}

#[test]
fn a_ring_of_four_entries_runs_hundreds_of_futures_at_once() {
    // 4 SQEs, 8 CQEs, at most 128 operations in the kernel: far fewer
    // than the futures. Those without room wait for it instead of
    // failing.
    const WRITES: u64 = 400;
    const PAIRS: usize = 64;
    let driver = driver!(4);
    let file = File::from_std(&driver, tempfile::tempfile().expect("tempfile"));
    let pairs: Vec<_> = (0..PAIRS)
        .map(|_| UnixStream::pair(&driver).expect("pair"))
        .collect();
    let pool = futures::executor::ThreadPool::builder()
        .pool_size(3)
        .create()
        .expect("pool");
    let mut handles = Vec::new();
    for i in 0..WRITES {
        let file = file.clone();
        let task = async move {
            let (written, _) = file.write_at(common::pattern(i, 512), i * 512).await;
            let written = written.unwrap_or_else(|e| {
                not_full(&e, "write");
                panic!("write {i}: {e}")
            });
            assert_eq!(written, 512);
            let (read, buf) = file.read_at(Vec::with_capacity(512), i * 512).await;
            let read = read.unwrap_or_else(|e| {
                not_full(&e, "read");
                panic!("read {i}: {e}")
            });
            assert_eq!(read, 512);
            assert!(buf == common::pattern(i, 512), "block {i}");
        };
        handles.push(futures::task::SpawnExt::spawn_with_handle(&pool, task).expect("spawn"));
    }
    // Receives first (they wait, holding room), then their sends.
    for (i, (a, b)) in pairs.into_iter().enumerate() {
        let task = async move {
            let recv = b.recv(Vec::with_capacity(16));
            let send = async {
                common::yield_now().await;
                a.send(format!("pair {i:03}").into_bytes()).await
            };
            let ((received, buf), (sent, _)) = futures::future::join(recv, send).await;
            let sent = sent.unwrap_or_else(|e| {
                not_full(&e, "send");
                panic!("send {i}: {e}")
            });
            assert_eq!(sent, 8);
            let received = received.unwrap_or_else(|e| {
                not_full(&e, "recv");
                panic!("recv {i}: {e}")
            });
            assert_eq!(received, 8);
            assert_eq!(buf, format!("pair {i:03}").as_bytes());
        };
        handles.push(futures::task::SpawnExt::spawn_with_handle(&pool, task).expect("spawn"));
    }
    let start = Instant::now();
    common::block_on("hundreds of futures on a ring of four", join_all(handles));
    eprintln!(
        "{} futures on a ring of 4 entries in {:?}",
        2 * WRITES as usize + 2 * PAIRS,
        start.elapsed()
    );
    common::wait_idle(&driver, "operations left");
}

const THREADS: u64 = 4;
const OPS_PER_THREAD: usize = 2000;
const BLOCK: usize = 1024;
/// Futures each thread keeps in flight at once.
const CONCURRENCY: usize = 32;

#[derive(Clone, Copy, Debug)]
enum Step {
    /// Write a block, read it back, check it.
    WriteRead,
    /// fsync the file.
    Fsync,
    /// Send a message on the thread's pair and receive it on the other end.
    Echo,
    /// Start a receive on a pair that never gets data, then drop it.
    DropRecv,
    /// Start a read, then drop it (mid-flight or done).
    DropRead,
    /// Write through the vectored form and read through the vectored form.
    Vectored,
}

fn pick(rng: &mut fastrand::Rng) -> Step {
    match rng.u32(0..100) {
        0..=39 => Step::WriteRead,
        40..=49 => Step::Fsync,
        50..=64 => Step::Echo,
        65..=74 => Step::DropRecv,
        75..=84 => Step::DropRead,
        _ => Step::Vectored,
    }
}

/// Counts of what was checked, across threads.
#[derive(Default)]
struct Tally {
    ops: AtomicUsize,
    bytes_checked: AtomicUsize,
    dropped: AtomicUsize,
}

/// One thread's work: `OPS_PER_THREAD` steps, `CONCURRENCY` at a time, on
/// its own file region and socket pairs.
fn thread_work(driver: Driver, file: File, thread: u64, seed: u64, tally: Arc<Tally>) {
    let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(thread));
    let steps: Vec<(usize, Step)> = (0..OPS_PER_THREAD).map(|i| (i, pick(&mut rng))).collect();
    // One pair carries the echoes in order (an async mutex keeps one
    // echo at a time on it); another never gets data, for dropped
    // receives.
    let (echo_a, echo_b) = UnixStream::pair(&driver).expect("pair");
    let echo = futures::lock::Mutex::new((echo_a, echo_b));
    let (idle, _idle_peer) = UnixStream::pair(&driver).expect("pair");
    let base = thread * (OPS_PER_THREAD * BLOCK) as u64;
    let work = futures::stream::iter(steps).for_each_concurrent(CONCURRENCY, |(i, step)| {
        let (file, tally, echo, idle) = (&file, &tally, &echo, &idle);
        let at = base + (i * BLOCK) as u64;
        let block = common::pattern(seed ^ (thread << 32) ^ i as u64, BLOCK);
        async move {
            match step {
                Step::WriteRead => {
                    let (written, _) = file.write_at(block.clone(), at).await;
                    assert_eq!(written.expect("write"), BLOCK);
                    let (read, buf) = file.read_at(Vec::with_capacity(BLOCK), at).await;
                    assert_eq!(read.expect("read"), BLOCK);
                    assert!(buf == block, "thread {thread} step {i}: wrong bytes");
                    tally.bytes_checked.fetch_add(BLOCK, Ordering::Relaxed);
                    tally.ops.fetch_add(2, Ordering::Relaxed);
                }
                Step::Vectored => {
                    let (head, tail) = block.split_at(100);
                    let bufs = vec![head.to_vec(), tail.to_vec()];
                    let (written, _) = file.writev_at(bufs, at).await;
                    assert_eq!(written.expect("writev"), BLOCK);
                    let bufs = vec![Vec::with_capacity(300), Vec::with_capacity(BLOCK - 300)];
                    let (read, bufs) = file.readv_at(bufs, at).await;
                    assert_eq!(read.expect("readv"), BLOCK);
                    assert!(bufs.concat() == block, "thread {thread} step {i}: readv");
                    tally.bytes_checked.fetch_add(BLOCK, Ordering::Relaxed);
                    tally.ops.fetch_add(2, Ordering::Relaxed);
                }
                Step::Fsync => {
                    file.fsync().await.expect("fsync");
                    tally.ops.fetch_add(1, Ordering::Relaxed);
                }
                Step::Echo => {
                    let pair = echo.lock().await;
                    let message = format!("t{thread} s{i:05}").into_bytes();
                    let (sent, _) = pair.0.send(message.clone()).await;
                    assert_eq!(sent.expect("send"), message.len());
                    let mut got = Vec::new();
                    while got.len() < message.len() {
                        let want = message.len() - got.len();
                        let (received, buf) = pair.1.recv(Vec::with_capacity(want)).await;
                        assert!(received.expect("recv") > 0, "the pair closed");
                        got.extend_from_slice(&buf);
                    }
                    assert_eq!(got, message, "thread {thread} step {i}: echo");
                    tally
                        .bytes_checked
                        .fetch_add(message.len(), Ordering::Relaxed);
                    tally.ops.fetch_add(2, Ordering::Relaxed);
                }
                Step::DropRecv => {
                    let mut recv = idle.recv(Vec::with_capacity(8));
                    let (_, waker) = CountingWaker::new();
                    assert!(
                        poll_once(&mut recv, &waker).is_pending(),
                        "idle pair had data"
                    );
                    // Let other steps run, so the cancel meets a submitted
                    // receive some of the time.
                    common::yield_now().await;
                    drop(recv);
                    tally.dropped.fetch_add(1, Ordering::Relaxed);
                    tally.ops.fetch_add(1, Ordering::Relaxed);
                }
                Step::DropRead => {
                    let mut read = file.read_at(Vec::with_capacity(BLOCK), at);
                    let (_, waker) = CountingWaker::new();
                    let _ = poll_once(&mut read, &waker);
                    drop(read);
                    tally.dropped.fetch_add(1, Ordering::Relaxed);
                    tally.ops.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    futures::executor::block_on(work);
}

#[test]
fn thousands_of_mixed_futures_on_several_threads_all_check_out() {
    let seed = match std::env::var("RINGFENCE_ASYNC_STRESS_SEED") {
        Ok(seed) => seed.parse().expect("RINGFENCE_ASYNC_STRESS_SEED: a u64"),
        Err(_) => 0x5eed_2026,
    };
    eprintln!("stress seed {seed} (set RINGFENCE_ASYNC_STRESS_SEED to replay another)");
    let driver = driver!(64);
    let file = File::from_std(&driver, tempfile::tempfile().expect("tempfile"));
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    common::bounded(LIMIT * 3, "stress", {
        let (driver, tally) = (driver.clone(), Arc::clone(&tally));
        move || {
            std::thread::scope(|s| {
                for thread in 0..THREADS {
                    let (driver, file, tally) = (driver.clone(), file.clone(), Arc::clone(&tally));
                    s.spawn(move || thread_work(driver, file, thread, seed, tally));
                }
            })
        }
    });
    let took = start.elapsed();
    let drained = common::wait_idle(&driver, "operations left after the stress");
    let (ops, bytes, dropped) = (
        tally.ops.load(Ordering::Relaxed),
        tally.bytes_checked.load(Ordering::Relaxed),
        tally.dropped.load(Ordering::Relaxed),
    );
    eprintln!(
        "stress: {THREADS} threads, {ops} operations ({dropped} dropped), \
         {bytes} bytes checked, in {took:?}; idle {drained:?} later"
    );
    assert!(ops >= THREADS as usize * OPS_PER_THREAD);
    assert!(dropped > 0 && bytes > 0);
    assert!(took < Duration::from_secs(40), "took {took:?}");
    assert!(driver.take_last_error().is_none());
}

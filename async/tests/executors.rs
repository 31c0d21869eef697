//! The same file workload on every executor the crate promises to run on,
//! a driver turned by the caller's own loop, and futures polled on threads
//! that exit before their operations complete.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::thread;
use std::time::{Duration, Instant};

use futures::future::join_all;
use ringfence::FallocateMode;
use ringfence_async::{Driver, File, UnixStream};

use common::{poll_once, CountingWaker, LIMIT};

const BLOCK: usize = 4096;
const BLOCKS: usize = 24;

/// Writes `BLOCKS` blocks at once (plain, vectored, boxed), syncs, reads
/// them back at once (plain and vectored) and checks every byte; `seed`
/// tells workloads sharing a file apart, and `base` is where this one's
/// blocks start. Returns the bytes checked.
async fn workload(file: File, seed: u64, base: u64) -> usize {
    let block = |i: usize| common::pattern(seed * 1000 + i as u64, BLOCK);
    let at = |i: usize| base + (i * BLOCK) as u64;

    file.fallocate(base, (BLOCKS * BLOCK) as u64, FallocateMode::empty())
        .await
        .expect("fallocate");
    let writes = (0..BLOCKS).map(|i| {
        let file = &file;
        async move {
            let written = match i % 3 {
                0 => file.write_at(block(i), at(i)).await.0,
                1 => file.write_at(block(i).into_boxed_slice(), at(i)).await.0,
                _ => {
                    let mut whole = block(i);
                    let tail = whole.split_off(1000);
                    file.writev_at(vec![whole, tail], at(i)).await.0
                }
            };
            assert_eq!(written.expect("write"), BLOCK, "block {i}");
        }
    });
    join_all(writes).await;
    file.fsync().await.expect("fsync");

    let reads = (0..BLOCKS).map(|i| {
        let file = &file;
        async move {
            let got = if i % 2 == 0 {
                let (read, buf) = file.read_at(Vec::with_capacity(BLOCK), at(i)).await;
                assert_eq!(read.expect("read"), BLOCK, "block {i}");
                buf
            } else {
                let bufs = vec![Vec::with_capacity(100), Vec::with_capacity(BLOCK - 100)];
                let (read, bufs) = file.readv_at(bufs, at(i)).await;
                assert_eq!(read.expect("readv"), BLOCK, "block {i}");
                bufs.concat()
            };
            assert!(got == block(i), "block {i} read back different bytes");
            got.len()
        }
    });
    join_all(reads).await.into_iter().sum()
}

fn scratch(driver: &Driver) -> File {
    File::from_std(driver, tempfile::tempfile().expect("tempfile"))
}

const TASKS: u64 = 4;
const SPAN: u64 = (BLOCKS * BLOCK) as u64;

#[test]
fn the_workload_runs_on_futures_block_on() {
    let driver = driver!(32);
    let file = scratch(&driver);
    let checked = common::block_on("block_on", workload(file, 1, 0));
    assert_eq!(checked, BLOCKS * BLOCK);
    common::wait_idle(&driver, "operations left");
}

#[test]
fn the_workload_runs_on_a_futures_thread_pool() {
    let driver = driver!(32);
    let file = scratch(&driver);
    let pool = futures::executor::ThreadPool::builder()
        .pool_size(3)
        .create()
        .expect("thread pool");
    let handles: Vec<_> = (0..TASKS)
        .map(|task| {
            let work = workload(file.clone(), task, task * SPAN);
            futures::task::SpawnExt::spawn_with_handle(&pool, work).expect("spawn")
        })
        .collect();
    let checked: usize = common::block_on("thread pool", join_all(handles))
        .into_iter()
        .sum();
    assert_eq!(checked, TASKS as usize * BLOCKS * BLOCK);
    common::wait_idle(&driver, "operations left");
}

/// Spawns `TASKS` workloads on `runtime` and waits for them all.
fn on_tokio(runtime: tokio::runtime::Runtime, file: File) -> usize {
    common::bounded(LIMIT, "tokio", move || {
        runtime.block_on(async move {
            let tasks: Vec<_> = (0..TASKS)
                .map(|task| tokio::spawn(workload(file.clone(), task, task * SPAN)))
                .collect();
            let mut checked = 0;
            for task in tasks {
                checked += task.await.expect("task panicked");
            }
            checked
        })
    })
}

#[test]
fn the_workload_runs_on_tokio_current_thread() {
    let driver = driver!(32);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let checked = on_tokio(runtime, scratch(&driver));
    assert_eq!(checked, TASKS as usize * BLOCKS * BLOCK);
    common::wait_idle(&driver, "operations left");
}

#[test]
fn the_workload_runs_on_tokio_multi_thread() {
    let driver = driver!(32);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let checked = on_tokio(runtime, scratch(&driver));
    assert_eq!(checked, TASKS as usize * BLOCKS * BLOCK);
    common::wait_idle(&driver, "operations left");
}

/// A driver with no thread of its own, made from `URingContext::new`.
fn manual(entries: usize) -> Option<(Driver, ringfence_async::ManualDriver)> {
    let ctx = common::usable_or_skip_ctx(entries)?;
    Some(Driver::builder(ctx).manual().expect("manual driver"))
}

#[test]
fn the_workload_runs_on_a_local_pool_with_a_manual_driver() {
    let Some((driver, manual)) = manual(32) else {
        return;
    };
    let file = scratch(&driver);
    let mut pool = futures::executor::LocalPool::new();
    let done = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for task in 0..TASKS {
        let work = workload(file.clone(), task, task * SPAN);
        let (done, checked) = (Arc::clone(&done), Arc::clone(&checked));
        futures::task::LocalSpawnExt::spawn_local(&pool.spawner(), async move {
            checked.fetch_add(work.await, Ordering::SeqCst);
            if checked.load(Ordering::SeqCst) == TASKS as usize * BLOCKS * BLOCK {
                done.store(true, Ordering::SeqCst);
            }
        })
        .expect("spawn");
    }
    // The caller's loop: run what is ready, then let the ring make progress.
    let start = Instant::now();
    let mut turns = 0;
    while !done.load(Ordering::SeqCst) {
        assert!(
            start.elapsed() < LIMIT,
            "manual loop: stuck after {turns} turns"
        );
        pool.run_until_stalled();
        if done.load(Ordering::SeqCst) {
            break;
        }
        manual.turn(Some(Duration::from_millis(100))).expect("turn");
        turns += 1;
    }
    assert_eq!(
        checked.load(Ordering::SeqCst),
        TASKS as usize * BLOCKS * BLOCK
    );
    assert!(turns > 0, "nothing was left to the ring");
    eprintln!("manual driver: {turns} turns");
    assert_eq!(driver.in_flight(), 0);
}

#[test]
fn a_manual_turn_ends_when_another_thread_queues_an_operation() {
    // The doorbell: a future polled on another thread queues its SQE and
    // wakes the caller's thread, blocked in `turn` with no timeout.
    let Some((driver, manual)) = manual(8) else {
        return;
    };
    let file = scratch(&driver);
    // Arm the doorbell (the first turn adds its poll), with nothing else
    // to do.
    manual.turn(Some(Duration::ZERO)).expect("first turn");
    let queued = thread::scope(|s| {
        let queuer = s.spawn(|| {
            thread::sleep(Duration::from_millis(100));
            let mut write = file.write_at(b"rung".to_vec(), 0);
            let (_, waker) = CountingWaker::new();
            assert!(poll_once(&mut write, &waker).is_pending());
            (Instant::now(), write)
        });
        // Far longer than the test runs if the doorbell works.
        manual.turn(Some(LIMIT)).expect("turn");
        let woken = Instant::now();
        let (queued, write) = queuer.join().expect("queuer panicked");
        (woken.saturating_duration_since(queued), write)
    });
    let (woke_after, mut write) = queued;
    eprintln!("turn returned {woke_after:?} after the operation was queued");
    assert!(
        woke_after < Duration::from_secs(2),
        "the turn slept on after an operation was queued ({woke_after:?})"
    );
    // And the operation completes on the following turns.
    let (counter, waker) = CountingWaker::new();
    let start = Instant::now();
    let mut waited = false;
    let written = loop {
        if let Poll::Ready((written, _)) = poll_once(&mut write, &waker) {
            break written;
        }
        waited = true;
        assert!(start.elapsed() < LIMIT, "the write never completed");
        manual.turn(Some(Duration::from_millis(100))).expect("turn");
    };
    assert_eq!(written.expect("write"), 4);
    // The turn the doorbell ended may have submitted and completed the
    // write already (its wait submits once more on waking); if not, the
    // completion woke the waker this thread polled with.
    assert!(!waited || counter.wakes() > 0, "the completion woke nobody");
}

/// A receive on a socket pair with nothing sent yet: its future polled
/// once on a thread that then exits, and its operation left in flight.
fn recv_polled_on_a_thread_that_exits(
    stream: &UnixStream,
) -> impl std::future::Future<Output = (std::io::Result<usize>, Vec<u8>)> + Send + Unpin {
    let recv = stream.recv(Vec::with_capacity(64));
    let (recv, _) = thread::spawn(move || {
        let mut recv = recv;
        let (counter, waker) = CountingWaker::new();
        assert!(
            poll_once(&mut recv, &waker).is_pending(),
            "no data was sent"
        );
        // Long enough for the driver to have submitted it while this
        // thread lives: were this thread the submitter, the kernel would
        // cancel the receive when it exits.
        thread::sleep(Duration::from_millis(50));
        (recv, counter)
    })
    .join()
    .expect("polling thread panicked");
    recv
}

#[test]
fn a_future_polled_on_a_thread_that_exited_completes_with_its_data_not_ecanceled() {
    // The case: the kernel ties an operation to the thread whose
    // io_uring_enter submitted it, and ends its wait when that thread exits
    // (see the companion test below). Futures only queue; the driver's
    // thread submits, so the thread that polled may come and go.
    let driver = driver!(8);
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let ours = UnixStream::from_std(&driver, ours);
    let recv = recv_polled_on_a_thread_that_exits(&ours);
    thread::sleep(Duration::from_millis(50));
    assert_eq!(
        driver.in_flight(),
        1,
        "the receive is still waiting for data"
    );
    (&theirs)
        .write_all(b"after the thread")
        .expect("peer write");
    let (received, buf) = common::block_on("finishing on another thread", recv);
    assert_eq!(
        received.expect("the receive failed (ECANCELED: the polling thread submitted it)"),
        16
    );
    assert_eq!(buf, b"after the thread");
    assert_eq!(driver.in_flight(), 0);
}

#[test]
fn many_futures_polled_on_short_lived_threads_all_complete() {
    // Each of these threads polls one receive and exits; the data comes
    // only after all of them are gone.
    const THREADS: usize = 16;
    let driver = driver!(32);
    let pairs: Vec<_> = (0..THREADS)
        .map(|_| {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
            (UnixStream::from_std(&driver, ours), theirs)
        })
        .collect();
    let recvs: Vec<_> = pairs
        .iter()
        .map(|(ours, _)| recv_polled_on_a_thread_that_exits(ours))
        .collect();
    for (i, (_, theirs)) in pairs.iter().enumerate() {
        // One write call: `write!` may split it, and a receive may end between.
        (&*theirs)
            .write_all(format!("peer {i:02}").as_bytes())
            .expect("peer write");
    }
    let results = common::block_on("finishing", join_all(recvs));
    for (i, (received, buf)) in results.into_iter().enumerate() {
        assert_eq!(received.expect("receive"), 7, "pair {i}");
        assert_eq!(buf, format!("peer {i:02}").as_bytes());
    }
}

#[test]
fn the_kernel_cancels_a_receive_whose_submitting_thread_exited() {
    // The kernel fact the driver's thread is there for, shown with the
    // context alone: the thread that adds and submits a receive exits, and
    // when data comes the receive completes with ECANCELED instead.
    let Some(ctx) = common::usable_or_skip_ctx(8) else {
        return;
    };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let ours = Arc::new(ours);
    let buf = common::leak(vec![0x5a; 64]);
    let ptr = buf.as_mut_ptr();
    // SAFETY: the buffer is leaked (it lives for the rest of the process)
    // and only read after the receive's completion.
    let io = unsafe { ringfence::IoBufMut::from_raw_parts(ptr, 64) };
    thread::scope(|s| {
        s.spawn(|| {
            let recv = ringfence::op::Recv::new(io, Arc::clone(&ours));
            ctx.add(recv, 7).expect("add");
            ctx.submit().expect("submit");
        })
        .join()
        .expect("submitter panicked");
    });
    assert_eq!(ctx.in_flight(), 1, "the receive waits for data");
    (&theirs).write_all(b"too late").expect("peer write");
    let completion = ctx
        .wait_timeout_completions(LIMIT)
        .expect("wait")
        .next()
        .expect("the receive completed");
    assert_eq!(completion.user_data(), 7);
    let result = completion.result();
    assert_eq!(
        result.as_ref().err().and_then(std::io::Error::raw_os_error),
        Some(libc::ECANCELED),
        "{result:?}"
    );
    // SAFETY: the receive has completed; the kernel is done with the buffer.
    let seen = unsafe { std::slice::from_raw_parts(ptr, 64) };
    assert!(seen.iter().all(|&b| b == 0x5a), "a cancelled receive wrote");
}

//! Kernel tests for sharing one ring between threads, and for completions
//! that outnumber the completion ring (`IORING_FEAT_NODROP`). That the
//! context is `Send + Sync` is checked at compile time in the crate itself.
// Needs the real kernel: Miri cannot make io_uring syscalls (the
// simulated-kernel tests in src/sim run under Miri instead).
#![cfg(not(miri))]

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{add_and_submit_without_reaping, leaked_buf, pinned, reap};
use ringfence::{Error, EventType, IoBufMut, URingContext};

const SUBMITTERS: u64 = 4;
const REAPERS: usize = 4;
/// Operations each submitter adds.
const OPS_PER_SUBMITTER: u64 = 3000;
/// One in this many operations is a readv of /dev/zero rather than a nop.
const READ_EVERY: u64 = 25;
const READ_LEN: usize = 96;
/// Fill byte of the read buffers before the kernel overwrites them with
/// zeros.
const FILL: u8 = 0xa5;
/// user_data of the nops that wake reapers at the end; no submitter uses it.
const WAKE_BASE: u64 = 1 << 62;

/// A user_data unique across all submitters.
fn user_data(submitter: u64, index: u64) -> u64 {
    (submitter << 32) | index
}

/// Decrements a counter when dropped, so a panicking thread still counts as
/// gone.
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Adds this submitter's operations, retrying after `submit()` while the
/// submission queue is full. Returns the read buffers by user_data.
fn submitter(
    ring: &URingContext,
    me: u64,
    zero: &File,
    deadline: Instant,
) -> Vec<(u64, &'static [u8])> {
    let mut reads = Vec::new();
    for index in 0..OPS_PER_SUBMITTER {
        let ud = user_data(me, index);
        let read_buf = (index % READ_EVERY == 0).then(|| {
            let (buf, view) = leaked_buf(READ_LEN, FILL);
            reads.push((ud, view));
            buf.as_ptr()
        });
        loop {
            let added = match read_buf {
                None => ring.add_nop(ud),
                Some(ptr) => {
                    // SAFETY: `ptr` is a leaked buffer of READ_LEN bytes that
                    // only the kernel touches until this read's completion
                    // has been reaped; the test reads it only after that. A
                    // refused add never hands it to the kernel.
                    let buf = unsafe { IoBufMut::from_raw_parts(ptr, READ_LEN) };
                    // SAFETY: as above, the buffer outlives the operation.
                    unsafe { ring.add_readv(pinned(vec![buf]), zero.as_raw_fd(), Some(0), ud) }
                }
            };
            match added {
                Ok(()) => break,
                Err(Error::NoSpace) => {
                    assert!(
                        Instant::now() < deadline,
                        "submitter {me} stuck on a full queue"
                    );
                    match ring.submit() {
                        Ok(()) | Err(Error::KernelBusy(_)) => {}
                        Err(e) => panic!("submit failed: {e}"),
                    }
                    thread::yield_now();
                }
                Err(e) => panic!("adding user_data {ud:#x} failed: {e}"),
            }
        }
    }
    match ring.submit() {
        Ok(()) | Err(Error::KernelBusy(_)) => {}
        Err(e) => panic!("final submit failed: {e}"),
    }
    reads
}

/// Reaps until every expected completion has been counted or `stop` is set,
/// with `wait()` or, if `timed`, with `wait_timeout()`.
fn reaper(
    ring: &URingContext,
    reaped: &AtomicUsize,
    expected: usize,
    stop: &AtomicBool,
    timed: bool,
) -> Vec<(u64, std::io::Result<u32>)> {
    let mut mine = Vec::new();
    while reaped.load(Ordering::SeqCst) < expected && !stop.load(Ordering::SeqCst) {
        let batch: Vec<_> = if timed {
            let batch = ring.wait_timeout(Duration::from_millis(20));
            batch.expect("wait_timeout failed").collect()
        } else {
            ring.wait().expect("wait failed").collect()
        };
        for (ud, result) in batch {
            if ud >= WAKE_BASE {
                continue;
            }
            reaped.fetch_add(1, Ordering::SeqCst);
            mine.push((ud, result));
        }
    }
    mine
}

#[test]
fn four_submitters_and_four_reapers_lose_and_duplicate_nothing() {
    let ring = ring!(32);
    let zero = File::open("/dev/zero").expect("open /dev/zero");
    let expected = (SUBMITTERS * OPS_PER_SUBMITTER) as usize;
    let deadline = Instant::now() + Duration::from_secs(60);

    let reaped = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let reapers_running = AtomicUsize::new(REAPERS);

    let (reads, completions) = thread::scope(|s| {
        let submitters: Vec<_> = (0..SUBMITTERS)
            .map(|me| {
                let (ring, zero) = (&ring, &zero);
                s.spawn(move || submitter(ring, me, zero, deadline))
            })
            .collect();
        // Half the reapers block in wait(), half in wait_timeout().
        let reapers: Vec<_> = (0..REAPERS)
            .map(|i| {
                let (ring, reaped, stop, running) = (&ring, &reaped, &stop, &reapers_running);
                s.spawn(move || {
                    let _running = Running(running);
                    reaper(ring, reaped, expected, stop, i % 2 == 1)
                })
            })
            .collect();

        while reaped.load(Ordering::SeqCst) < expected && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        // A reaper may be blocked in wait() for a completion another reaper
        // took: post nops until every reaper has seen the end and left.
        stop.store(true, Ordering::SeqCst);
        let wake_deadline = Instant::now() + Duration::from_secs(10);
        let mut wake = WAKE_BASE;
        while reapers_running.load(Ordering::SeqCst) > 0 && Instant::now() < wake_deadline {
            match ring.add_nop(wake) {
                Ok(()) => wake += 1,
                Err(Error::NoSpace) => {}
                Err(e) => panic!("wake nop failed: {e}"),
            }
            let _ = ring.submit();
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            reapers_running.load(Ordering::SeqCst),
            0,
            "reapers did not stop"
        );

        let reads: Vec<_> = submitters
            .into_iter()
            .flat_map(|h| h.join().expect("submitter panicked"))
            .collect();
        let completions: Vec<_> = reapers
            .into_iter()
            .flat_map(|h| h.join().expect("reaper panicked"))
            .collect();
        (reads, completions)
    });

    let mut seen: HashMap<u64, u32> = HashMap::new();
    for (ud, result) in &completions {
        let value = match result {
            Ok(v) => *v,
            Err(e) => panic!("user_data {ud:#x} failed: {e}"),
        };
        assert!(
            seen.insert(*ud, value).is_none(),
            "user_data {ud:#x} completed twice"
        );
    }
    assert_eq!(completions.len(), expected, "completions lost or extra");
    let read_uds: HashMap<u64, &[u8]> = reads.into_iter().collect();
    for me in 0..SUBMITTERS {
        for index in 0..OPS_PER_SUBMITTER {
            let ud = user_data(me, index);
            let value = *seen
                .get(&ud)
                .unwrap_or_else(|| panic!("user_data {ud:#x} never completed"));
            match read_uds.get(&ud) {
                Some(buf) => {
                    assert_eq!(value, READ_LEN as u32, "short read for {ud:#x}");
                    assert!(
                        buf.iter().all(|b| *b == 0),
                        "read {ud:#x} did not fill its buffer"
                    );
                }
                None => assert_eq!(value, 0, "nop {ud:#x} returned {value}"),
            }
        }
    }
}

/// Asserts that `completions` holds every user_data in `uds` exactly once,
/// each a successful nop.
fn assert_each_once(completions: &[(u64, std::io::Result<u32>)], uds: std::ops::Range<u64>) {
    let mut count: HashMap<u64, usize> = HashMap::new();
    for (ud, result) in completions {
        assert_eq!(
            *result
                .as_ref()
                .unwrap_or_else(|e| panic!("nop {ud} failed: {e}")),
            0
        );
        *count.entry(*ud).or_default() += 1;
    }
    for ud in uds.clone() {
        assert_eq!(
            count.get(&ud),
            Some(&1),
            "user_data {ud} completed {:?} times",
            count.get(&ud)
        );
    }
    assert_eq!(
        count.len(),
        (uds.end - uds.start) as usize,
        "unexpected user_data: {count:?}"
    );
}

#[test]
fn two_and_a_half_completion_rings_in_flight_are_all_delivered() {
    let ring = ring!(8);
    assert_eq!(ring.sq_entries(), 8);
    assert_eq!(ring.cq_entries(), 16);
    // Nops complete inside submit, so everything past the first 16 overflows.
    let total = 2 * u64::from(ring.cq_entries()) + u64::from(ring.sq_entries());
    add_and_submit_without_reaping(&ring, 0..total);
    assert_eq!(ring.in_flight(), total as usize);

    let completions = reap(&ring, total as usize);
    assert_eq!(completions.len(), total as usize);
    assert_each_once(&completions, 0..total);
    assert_eq!(ring.dropped_completions(), 0);
    assert_eq!(ring.in_flight(), 0);
    assert_eq!(
        ring.wait_timeout(Duration::from_millis(20))
            .expect("wait_timeout")
            .count(),
        0,
        "completions after the last one"
    );
}

#[test]
fn several_overflow_rounds_with_partial_reaping_deliver_everything() {
    let ring = ring!(8);
    let cq = u64::from(ring.cq_entries());
    let per_round = 2 * cq + 4;
    let rounds = 5;
    let mut completions = Vec::new();
    for round in 0..rounds {
        add_and_submit_without_reaping(&ring, round * per_round..(round + 1) * per_round);
        // Reap only part of what is there: the rest stays in the CQ ring or
        // in the kernel's overflow list while the next round overflows again.
        let take = (cq / 2) as usize;
        completions.extend(ring.wait().expect("wait").take(take));
        assert_eq!(completions.len(), take * (round as usize + 1));
    }
    let total = rounds * per_round;
    let rest = total as usize - completions.len();
    assert_eq!(ring.in_flight(), rest);
    completions.extend(reap(&ring, rest));
    assert_each_once(&completions, 0..total);
    assert_eq!(ring.dropped_completions(), 0);
    assert_eq!(ring.in_flight(), 0);
}

/// Threads that submit at the same time never see a stall: a 0 from
/// `io_uring_enter` because another thread's enter took the SQEs first must
/// not be reported as `KernelBusy`. (The check once loaded the kernel's
/// head twice, and a submit between the loads looked like a stall.)
#[test]
fn concurrent_submitters_never_report_a_busy_kernel() {
    const THREADS: u64 = 3;
    const OPS: u64 = 20_000;
    /// Counts a submitter as finished when it returns or panics.
    struct Finished<'a>(&'a AtomicUsize);
    impl Drop for Finished<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Release);
        }
    }
    let ring = ring!(64);
    let finished = AtomicUsize::new(0);
    let mut reaped = 0;
    thread::scope(|s| {
        for t in 0..THREADS {
            let (ring, finished) = (&ring, &finished);
            s.spawn(move || {
                let _finished = Finished(finished);
                for i in 0..OPS {
                    while let Err(Error::NoSpace) = ring.add_nop(t << 32 | i) {
                        ring.submit().expect("submit to make room");
                    }
                    ring.submit().expect("a concurrent submit reported a stall");
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        // Until every submitter is done and everything is reaped (a
        // submitter that panicked ends the loop too; the scope then
        // re-raises its panic).
        while finished.load(Ordering::Acquire) < THREADS as usize || ring.in_flight() > 0 {
            assert!(Instant::now() < deadline, "completions stopped coming");
            reaped += ring
                .wait_timeout(Duration::from_millis(10))
                .unwrap()
                .count();
        }
    });
    assert_eq!(reaped as u64, THREADS * OPS);
}

#[test]
fn a_poll_that_fires_after_the_thread_that_submitted_it_exited_completes_with_ecanceled() {
    // Why threads that submit must outlive what they submit: the
    // kernel runs a poll's completion as task work of the thread whose
    // io_uring_enter consumed it, and cancels it if that thread is gone.
    let ring = ring!(8);
    let (reader, writer) = common::pipe();
    thread::scope(|s| {
        let submitter = s.spawn(|| {
            ring.add_poll_fd(reader.as_raw_fd(), EventType::Read, 1)
                .expect("poll");
            ring.submit().expect("submit");
        });
        // An explicit join waits for the thread itself to end; the end of
        // the scope only waits for its closure to return.
        submitter.join().expect("submitter panicked");
    });
    // The submitting thread is gone; the poll is still pending.
    assert_eq!(ring.in_flight(), 1);
    (&writer).write_all(b"x").expect("write to the pipe");
    let (ud, result) = reap(&ring, 1).pop().unwrap();
    assert_eq!(ud, 1);
    assert_eq!(common::errno(&result), Some(libc::ECANCELED), "{result:?}");
}

/// Submits `add` from a thread that then exits, and waits until it has.
fn submit_from_a_thread_that_exits(ring: &URingContext, add: impl FnOnce(&URingContext) + Send) {
    thread::scope(|s| {
        let submitter = s.spawn(|| {
            add(ring);
            ring.submit().expect("submit");
        });
        submitter.join().expect("submitter panicked");
    });
}

#[test]
fn a_pipe_read_whose_submitting_thread_exited_stays_in_flight_and_completes_with_ecanceled() {
    // A read of an empty pipe waits for readiness, like a poll: the thread
    // exiting does not end it; it completes, cancelled, when data comes.
    let ring = ring!(8);
    let (reader, writer) = common::pipe();
    let (buf, view) = leaked_buf(8, 0x11);
    submit_from_a_thread_that_exits(&ring, |ring| {
        // SAFETY: the buffer is leaked; the test reads it only after the
        // read has completed.
        unsafe { ring.add_readv(pinned(vec![buf]), reader.as_raw_fd(), None, 1) }.expect("readv");
    });
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        ring.wait_timeout(Duration::from_millis(50))
            .unwrap()
            .count(),
        0,
        "the read ended when its thread exited"
    );
    assert_eq!(ring.in_flight(), 1);
    (&writer).write_all(b"12345678").expect("write");
    let (ud, result) = reap(&ring, 1).pop().unwrap();
    assert_eq!(ud, 1);
    assert_eq!(common::errno(&result), Some(libc::ECANCELED), "{result:?}");
    assert_eq!(view, [0x11; 8], "a cancelled read wrote its buffer");
}

#[test]
fn blocking_work_whose_submitting_thread_exited_completes_normally() {
    // fallocate cannot be done without blocking, so the kernel runs it on a
    // worker thread; there it runs to completion although the thread that
    // submitted it is gone.
    const LEN: u64 = 32 << 20;
    let ring = ring!(8);
    let file = common::memfd(0);
    submit_from_a_thread_that_exits(&ring, |ring| {
        ring.add_fallocate(file.as_raw_fd(), 0, LEN, 0, 1)
            .expect("fallocate");
    });
    let (ud, result) = reap(&ring, 1).pop().unwrap();
    assert_eq!((ud, result.ok()), (1, Some(0)));
    assert_eq!(file.metadata().expect("metadata").len(), LEN);
}

#[test]
fn operations_in_flight_are_capped_at_sixteen_completion_rings() {
    // The kernel keeps completions nobody reaps, without a limit of its own
    // (IORING_FEAT_NODROP): the cap bounds that memory.
    let ring = ring!(8);
    let cap = 16 * u64::from(ring.cq_entries());
    let mut added = 0;
    let refused = loop {
        match ring.add_nop(added) {
            Ok(()) => added += 1,
            Err(e) => break e,
        }
        if added % u64::from(ring.sq_entries()) == 0 {
            ring.submit().expect("submit");
        }
        assert!(added <= cap, "more than {cap} in flight");
    };
    assert!(matches!(refused, Error::NoSpace), "{refused}");
    assert_eq!(added, cap);
    assert_eq!(ring.in_flight(), cap as usize);
    let completions = reap(&ring, cap as usize);
    assert_each_once(&completions, 0..cap);
    ring.add_nop(cap).expect("room again once reaped");
    assert_eq!(reap(&ring, 1)[0].0, cap);
}

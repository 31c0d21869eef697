//! Kernel tests for when a completion belongs to the caller: an operation is
//! in flight until the caller has its completion from `wait`'s iterator,
//! whether it is still queued, in the kernel, in the CQ ring, in a live
//! iterator, or handed back by an iterator dropped early; and the ring fd
//! polls readable while such a completion waits. Also `wait`'s blocking.
// Needs the real kernel: Miri cannot make io_uring syscalls (the
// simulated-kernel tests in src/sim run under Miri instead).
#![cfg(not(miri))]

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::{
    add_and_submit_without_reaping, epoll_ready, epoll_watching, leaked_buf, pinned,
    readable_within, reap,
};
use ringfence::{Error, URingContext};

/// Adds an 8-byte readv of /dev/zero with `user_data` into a leaked buffer.
fn add_zero_read(ring: &URingContext, zero: &File, user_data: u64) -> ringfence::Result<()> {
    let (buf, _) = leaked_buf(8, 0xff);
    // SAFETY: the buffer is leaked, so it outlives the operation.
    unsafe { ring.add_readv(pinned(vec![buf]), zero.as_raw_fd(), Some(0), user_data) }
}

#[test]
fn a_completion_in_a_live_or_dropped_iterator_is_still_in_flight() {
    // The reported input: three reads with user_data 1, 2, 3; one taken.
    let ring = ring!(8);
    let zero = File::open("/dev/zero").expect("/dev/zero");
    for ud in 1..=3 {
        add_zero_read(&ring, &zero, ud).expect("readv");
    }
    ring.submit().expect("submit");
    {
        let mut completions = ring.wait().expect("wait");
        assert_eq!(completions.next().map(|(ud, _)| ud), Some(1));
        assert_eq!(completions.next().map(|(ud, _)| ud), Some(2));
        assert_eq!(ring.in_flight(), 1, "3 is not yet the caller's");
        assert!(
            matches!(
                add_zero_read(&ring, &zero, 3),
                Err(Error::DuplicateUserData(3))
            ),
            "a read with the label of one still in the iterator"
        );
    }
    assert_eq!(ring.in_flight(), 1, "handed back, still in flight");
    assert!(
        matches!(
            add_zero_read(&ring, &zero, 3),
            Err(Error::DuplicateUserData(3))
        ),
        "a read with the label of one handed back"
    );
    // 2 was handed to the caller: its label is free again.
    add_zero_read(&ring, &zero, 2).expect("the label of a yielded read");
    let mut rest: Vec<u64> = reap(&ring, 2).into_iter().map(|(ud, _)| ud).collect();
    rest.sort();
    assert_eq!(rest, [2, 3], "each once, and nothing else");
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn a_read_may_be_re_added_with_its_label_inside_the_loop_that_reaped_it() {
    let ring = ring!(8);
    let zero = File::open("/dev/zero").expect("/dev/zero");
    for ud in 0..4 {
        add_zero_read(&ring, &zero, ud).expect("readv");
    }
    let mut rounds = [0u32; 4];
    let deadline = Instant::now() + Duration::from_secs(10);
    while rounds.iter().any(|&n| n < 5) {
        assert!(Instant::now() < deadline, "reads stopped completing");
        for (ud, result) in ring.wait().expect("wait") {
            assert_eq!(result.expect("read"), 8);
            rounds[ud as usize] += 1;
            if rounds[ud as usize] < 5 {
                add_zero_read(&ring, &zero, ud).expect("the label just reaped is free");
            }
        }
    }
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn the_ring_fd_stays_readable_while_a_completion_waits_for_the_caller() {
    // The reported input: nops, one taken with `wait()?.next()`; the rest
    // stay in the completion ring.
    let ring = ring!(8);
    add_and_submit_without_reaping(&ring, 1..5);
    assert_eq!(ring.wait().expect("wait").next().map(|(ud, _)| ud), Some(1));
    assert!(
        readable_within(ring.as_raw_fd(), 100),
        "2 is ready but the fd is not readable"
    );
    // An iterator's second step claims a batch (2, 3, 4): dropped after 3,
    // it hands 4 back to the context, which must make the fd readable.
    let taken: Vec<u64> = ring
        .wait()
        .expect("wait")
        .take(2)
        .map(|(ud, _)| ud)
        .collect();
    assert_eq!(taken, [2, 3]);
    assert!(
        readable_within(ring.as_raw_fd(), 100),
        "4 was handed back but the fd is not readable"
    );
    assert_eq!(
        ring.wait()
            .expect("wait")
            .map(|(ud, _)| ud)
            .collect::<Vec<_>>(),
        [4]
    );
    assert!(
        !readable_within(ring.as_raw_fd(), 20),
        "readable with nothing ready"
    );
}

#[test]
fn an_epoll_loop_taking_one_completion_per_wake_up_never_sleeps_with_one_ready() {
    let ring = ring!(64);
    let epoll = epoll_watching(ring.as_raw_fd(), 0);
    const COUNT: u64 = 40;
    add_and_submit_without_reaping(&ring, 0..COUNT);
    let mut got = Vec::new();
    // Take one per wake-up, sometimes through an iterator that claimed a
    // batch and is dropped after two (handing the rest back).
    for round in 0.. {
        if epoll_ready(&epoll, 200).is_empty() {
            break;
        }
        let take = if round % 3 == 0 { 2 } else { 1 };
        got.extend(ring.wait().expect("wait").take(take).map(|(ud, _)| ud));
    }
    got.sort();
    assert_eq!(
        got,
        (0..COUNT).collect::<Vec<_>>(),
        "slept with completions ready"
    );
}

#[test]
fn completions_handed_back_come_first_in_order_and_none_is_lost() {
    let ring = ring!(32);
    add_and_submit_without_reaping(&ring, 0..20);
    let mut order = Vec::new();
    // First call claims one, the second a batch: stop inside the batch.
    order.extend(ring.wait().expect("wait").take(3).map(|(ud, _)| ud));
    assert_eq!(ring.in_flight(), 17);
    order.extend(ring.wait().expect("wait").take(5).map(|(ud, _)| ud));
    while order.len() < 20 {
        order.extend(ring.wait().expect("wait").map(|(ud, _)| ud));
    }
    assert_eq!(order, (0..20).collect::<Vec<_>>());
    assert_eq!(ring.in_flight(), 0);
    // The context's own wake-up nops are never handed to the caller.
    let late = ring
        .wait_timeout(Duration::from_millis(20))
        .expect("wait_timeout");
    assert_eq!(late.count(), 0);
}

#[test]
fn a_forgotten_iterator_does_not_stall_the_ring() {
    let ring = ring!(8);
    let cq = u64::from(ring.cq_entries());
    add_and_submit_without_reaping(&ring, 0..8);
    let mut completions = ring.wait().expect("wait");
    completions.next();
    completions.next();
    std::mem::forget(completions);
    // Its unyielded completions stay in flight (leaked until close)...
    assert_eq!(ring.in_flight(), 6);
    // ... and many times the completion ring still flows through.
    for round in 0..4 {
        let base = 100 + round * cq;
        add_and_submit_without_reaping(&ring, base..base + cq);
        let got = reap(&ring, cq as usize);
        assert_eq!(got.len(), cq as usize);
    }
    ring.close(Duration::from_secs(1))
        .expect("close releases them");
}

#[test]
fn wait_blocks_with_nothing_in_flight_until_another_thread_submits() {
    let ring = ring!(8);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let start = Instant::now();
            let got: Vec<u64> = ring.wait().expect("wait").map(|(ud, _)| ud).collect();
            (got, start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !waiter.is_finished(),
            "wait returned with nothing in flight"
        );
        ring.add_nop(9).expect("nop");
        ring.submit().expect("submit");
        let (got, waited) = waiter.join().expect("waiter panicked");
        assert_eq!(got, [9]);
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
    });
}

#[test]
fn a_worker_loop_that_waits_with_nothing_in_flight_sleeps_instead_of_spinning() {
    // The crosvm worker loop `loop { for c in ring.wait()? { .. } }` on an
    // idle ring: measured by the CPU time the thread uses while idle.
    let ring = ring!(8);
    const STOP: u64 = u64::MAX;
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let mut calls = 0u64;
            'outer: loop {
                calls += 1;
                for (ud, _) in ring.wait().expect("wait") {
                    if ud == STOP {
                        break 'outer;
                    }
                }
            }
            // SAFETY: getrusage writes one rusage into the zeroed value.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
            let cpu = Duration::from_micros(
                (usage.ru_utime.tv_sec * 1_000_000 + usage.ru_utime.tv_usec) as u64
                    + (usage.ru_stime.tv_sec * 1_000_000 + usage.ru_stime.tv_usec) as u64,
            );
            (calls, cpu)
        });
        std::thread::sleep(Duration::from_millis(300));
        ring.add_nop(STOP).expect("stop nop");
        ring.submit().expect("submit");
        let (calls, cpu) = worker.join().expect("worker panicked");
        assert!(calls <= 2, "{calls} wait() calls while idle");
        assert!(
            cpu < Duration::from_millis(100),
            "idle worker used {cpu:?} of CPU"
        );
    });
}

/// A file whose drop calls back into the ring that held it.
struct CallsBackOnDrop {
    file: File,
    ring: std::sync::Weak<URingContext>,
    in_flight_seen: std::sync::mpsc::Sender<usize>,
}

impl std::os::fd::AsFd for CallsBackOnDrop {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Drop for CallsBackOnDrop {
    fn drop(&mut self) {
        if let Some(ring) = self.ring.upgrade() {
            let _ = self.in_flight_seen.send(ring.in_flight());
        }
    }
}

#[test]
fn a_file_the_context_held_is_dropped_outside_its_locks() {
    // The context holds an `Arc`'d file until the caller has the
    // completion; its drop runs the caller's code, which may use the ring.
    let ring = std::sync::Arc::new(ring!(8));
    let (tx, rx) = std::sync::mpsc::channel();
    let file = CallsBackOnDrop {
        file: tempfile::tempfile().expect("tempfile"),
        ring: std::sync::Arc::downgrade(&ring),
        in_flight_seen: tx,
    };
    ring.add(ringfence::op::Fsync::new(std::sync::Arc::new(file)), 1)
        .expect("fsync");
    let reaper = {
        let ring = std::sync::Arc::clone(&ring);
        std::thread::spawn(move || reap(&ring, 1))
    };
    let seen = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the file's drop never ran, or deadlocked on the ring");
    assert_eq!(seen, 0);
    let done = reaper.join().expect("reaper panicked");
    assert_eq!((done[0].0, done[0].1.as_ref().ok()), (1, Some(&0)));
}

#[test]
fn a_cancel_by_label_does_not_aim_at_completions_the_caller_already_has() {
    // The reported input: four nops under one label, three handed to the
    // caller, one submission slot left: the cancel aims at one nop only.
    let ring = ring!(2);
    for _ in 0..2 {
        for _ in 0..2 {
            ring.add_nop(5).expect("nop");
        }
        ring.submit().expect("submit");
    }
    let mut completions = ring.wait().expect("wait");
    for _ in 0..3 {
        assert_eq!(completions.next().map(|(ud, _)| ud), Some(5));
    }
    ring.add_nop(9).expect("nop");
    ring.async_cancel(5, 6)
        .expect("one SQE for the one nop the caller does not have yet");
    drop(completions);
    let mut rest: Vec<u64> = reap(&ring, 3).into_iter().map(|(ud, _)| ud).collect();
    rest.sort();
    assert_eq!(rest, [5, 6, 9]);
}

#[test]
fn completions_handed_back_signal_a_registered_eventfd() {
    // The eventfd counts the kernel's posts; the wake-up nop the context
    // posts for completions handed back is one of them.
    let ring = ring!(32);
    let eventfd = common::eventfd();
    ring.register_eventfd(eventfd.as_raw_fd())
        .expect("register_eventfd");
    add_and_submit_without_reaping(&ring, 0..20);
    // The kernel signals once per batch of posts, not per completion.
    assert!(
        common::eventfd_count(&eventfd).is_some(),
        "the nops signalled nothing"
    );
    // One claimed alone, then a batch of which one is taken: the rest go
    // back, and the ring posts a wake-up.
    let taken = ring.wait().expect("wait").take(2).count();
    assert_eq!(taken, 2);
    assert!(
        common::eventfd_count(&eventfd).is_some(),
        "completions were handed back without a signal"
    );
    let rest = reap(&ring, 18);
    assert_eq!(rest.len(), 18);
}

//! Kernel tests for multishot operations (a multishot poll, Linux 5.13):
//! each completion with `IORING_CQE_F_MORE` is yielded but releases
//! nothing; the operation stays in flight, holding its file, until its
//! last completion, which cancelling, a full completion ring or dropping
//! the context brings.
// Needs the real kernel: Miri cannot make io_uring syscalls (the
// simulated-kernel tests in src/sim run under Miri instead).
#![cfg(not(miri))]

mod common;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{errno, eventfd, leaked_buf, pinned, pipe};
use ringfence::op::{PollAdd, Target};
use ringfence::{Completion, Error, EventType, URingContext};

const POLLIN: u32 = libc::POLLIN as u32;

/// Bounds every wait: a test that takes this long is broken, not slow.
const BOUND: Duration = Duration::from_secs(5);

/// Adds and submits a multishot poll for readable on `file`, which the
/// context keeps open until the poll's last completion.
fn multishot_poll(ring: &URingContext, file: &Arc<File>, label: u64) {
    let target: Target = Arc::clone(file).into();
    let poll = PollAdd::new(target, EventType::Read).multishot();
    ring.add(poll, label).expect("add a multishot poll");
    ring.submit().expect("submit");
}

/// Reaps exactly `count` completions with their flags, in order, within
/// [`BOUND`].
fn reap_completions(ring: &URingContext, count: usize) -> Vec<Completion> {
    let start = Instant::now();
    let mut reaped = Vec::new();
    while reaped.len() < count && start.elapsed() < BOUND {
        let completions = ring
            .wait_timeout_completions(Duration::from_millis(100))
            .expect("wait");
        reaped.extend(completions);
    }
    assert_eq!(reaped.len(), count, "completions: {reaped:?}");
    reaped
}

/// Reaps exactly `count` completions of one operation, in order, within
/// [`BOUND`], checking after each that the operation counts as in flight
/// until its completion without MORE, and no longer.
fn reap_checking_in_flight(ring: &URingContext, count: usize) -> Vec<Completion> {
    let start = Instant::now();
    let mut reaped = Vec::new();
    while reaped.len() < count && start.elapsed() < BOUND {
        let completions = ring
            .wait_timeout_completions(Duration::from_millis(100))
            .expect("wait");
        for completion in completions {
            let in_flight = usize::from(completion.more());
            assert_eq!(ring.in_flight(), in_flight, "after {completion:?}");
            reaped.push(completion);
        }
    }
    assert_eq!(reaped.len(), count, "completions: {reaped:?}");
    reaped
}

/// Adds 1 to an eventfd's counter: a wake-up for every poll on it.
fn signal(mut eventfd: &File) {
    eventfd
        .write_all(&1u64.to_ne_bytes())
        .expect("eventfd write");
}

/// How many holders `file` has besides the test: 1 while an operation in
/// flight keeps it open. Asks for `in_flight` first, which releases the
/// operations of completions already yielded.
fn held_by_the_context(ring: &URingContext, file: &Arc<File>) -> usize {
    let _ = ring.in_flight();
    Arc::strong_count(file) - 1
}

#[test]
fn a_multishot_poll_completes_once_per_event_with_more_and_stays_in_flight() {
    let ring = ring!(8);
    let efd = Arc::new(eventfd());
    multishot_poll(&ring, &efd, 7);
    for event in 0..3 {
        signal(&efd);
        let [completion] = reap_completions(&ring, 1)[..] else {
            unreachable!()
        };
        assert_eq!(completion.user_data(), 7);
        assert_eq!(
            completion.result().unwrap() & POLLIN,
            POLLIN,
            "event {event}"
        );
        assert!(completion.more(), "event {event}: {completion:?}");
        assert_eq!(completion.buffer_id(), None);
        assert_eq!(ring.in_flight(), 1, "event {event} released the poll");
        assert_eq!(held_by_the_context(&ring, &efd), 1, "event {event}");
    }
    // Its label stays taken: nothing that pins memory may share it.
    let (buf, _) = leaked_buf(8, 0);
    // SAFETY: the buffer is leaked, so it outlives the read if it is queued.
    let read = unsafe { ring.add_readv(pinned(vec![buf]), efd.as_raw_fd(), None, 7) };
    assert!(matches!(read, Err(Error::DuplicateUserData(7))), "{read:?}");
    ring.close(BOUND).expect("close");
}

#[test]
fn cancelling_a_multishot_poll_by_label_ends_it_with_a_completion_without_more() {
    let ring = ring!(8);
    let efd = Arc::new(eventfd());
    multishot_poll(&ring, &efd, 1);
    signal(&efd);
    assert!(reap_completions(&ring, 1)[0].more());

    ring.async_cancel(1, 2).expect("cancel");
    let mut done = reap_completions(&ring, 2);
    done.sort_by_key(Completion::user_data);
    assert_eq!(errno(&done[0].result()), Some(libc::ECANCELED), "{done:?}");
    assert!(!done[0].more(), "the last completion says no more");
    assert_eq!(done[1].result().unwrap(), 0, "the cancellation found it");
    assert_eq!(ring.in_flight(), 0, "the last completion released it");
    assert_eq!(held_by_the_context(&ring, &efd), 0, "the file was let go");
}

#[test]
fn a_multishot_poll_that_finds_the_completion_ring_full_ends_with_a_completion_without_more() {
    // Room for 4: the third and fourth completions with MORE are yielded
    // from the claim board, not straight from a claim.
    let ring = ring!(2);
    let cq = ring.cq_entries() as usize;
    let efd = Arc::new(eventfd());
    multishot_poll(&ring, &efd, 1);
    // One event more than the ring holds, reaping nothing: the kernel has
    // no room for the last with MORE, so it ends the poll.
    for _ in 0..=cq {
        signal(&efd);
    }
    let done = reap_checking_in_flight(&ring, cq + 1);
    let more: Vec<bool> = done.iter().map(Completion::more).collect();
    let mut expected = vec![true; cq];
    expected.push(false);
    assert_eq!(more, expected, "{done:?}");
    assert!(done.iter().all(|c| c.user_data() == 1), "{done:?}");
    let last = done[cq]
        .result()
        .expect("the last completion carries events");
    assert_eq!(last & POLLIN, POLLIN);
    assert_eq!(held_by_the_context(&ring, &efd), 0);
    // Ended for good: a further event brings nothing.
    signal(&efd);
    let after = ring
        .wait_timeout_completions(Duration::from_millis(50))
        .unwrap();
    assert_eq!(after.count(), 0);
}

#[test]
fn dropping_a_context_with_a_multishot_poll_in_flight_cancels_it_and_lets_the_file_go() {
    let ring = ring!(8);
    let (reader, mut writer) = pipe();
    let raw_reader = reader.as_raw_fd();
    // SAFETY: the read end stays open until the ring is dropped, below.
    let target = unsafe { Target::from_raw_fd(raw_reader) };
    ring.add(PollAdd::new(target, EventType::Read).multishot(), 1)
        .expect("add");
    ring.submit().expect("submit");
    // An event, left in the ring for drop to reap: its completion has MORE,
    // so drop must cancel the poll and wait on for the last one.
    writer.write_all(b"x").expect("write");

    // A second descriptor for the ring keeps it open after the drop, so
    // that closing the ring fd, which makes the kernel cancel what is left
    // on its own and in its own time, cannot do drop's work for it.
    // SAFETY: dup takes and returns plain integers.
    let ring_fd = unsafe { libc::dup(ring.as_raw_fd()) };
    assert!(ring_fd >= 0, "dup: {}", std::io::Error::last_os_error());
    // SAFETY: `ring_fd` was just returned by dup and nothing else owns it.
    let ring_fd = unsafe { OwnedFd::from_raw_fd(ring_fd) };

    let start = Instant::now();
    drop(ring);
    assert!(
        start.elapsed() < BOUND / 2,
        "drop took {:?}",
        start.elapsed()
    );
    // Drop returned after the poll's last completion, so the kernel holds
    // no reference to the read end: closing ours leaves no reader.
    drop(reader);
    let err = writer.write(b"y").expect_err("the pipe still has a reader");
    assert_eq!(err.raw_os_error(), Some(libc::EPIPE), "{err}");
    drop(ring_fd);
}

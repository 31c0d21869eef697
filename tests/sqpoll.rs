//! Kernel tests for rings with a kernel SQ polling thread
//! (`URingBuilder::sqpoll`): what is added gets submitted with no enter,
//! `submit` wakes the thread after it slept and waits for room when the
//! queue is full, and drop drains without rewriting published SQEs.
// Needs the real kernel: Miri cannot make io_uring syscalls.
#![cfg(not(miri))]

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{leaked_buf, pinned, pipe, readable_within, reap_by_user_data, scratch_file};
use ringfence::op::{Nop, PollAdd, Writev};
use ringfence::{Error, EventType, URingBuilder, URingContext};

fn sqpoll_ring(entries: usize, idle: Duration) -> Option<URingContext> {
    common::usable_or_skip(URingBuilder::new(entries).sqpoll(idle).build())
}

macro_rules! sqpoll_ring {
    ($entries:expr, $idle:expr) => {
        match sqpoll_ring($entries, $idle) {
            Some(ring) => ring,
            None => return,
        }
    };
}

#[test]
fn the_sq_thread_submits_what_is_added_with_no_enter() {
    let ring = sqpoll_ring!(8, Duration::from_secs(2));
    // Wake the thread once, so it is polling.
    ring.add(Nop::new(), 1).expect("add");
    ring.submit().expect("submit");
    reap_by_user_data(&ring, 1);
    // No submit, no wait: the thread takes the nop by itself, and its
    // completion makes the ring fd readable.
    ring.add(Nop::new(), 2).expect("add");
    assert!(
        readable_within(ring.as_raw_fd(), 2000),
        "the SQ thread did not submit the nop"
    );
    let done = reap_by_user_data(&ring, 1);
    assert_eq!(done[&2].as_ref().ok(), Some(&0));
}

#[test]
fn submit_wakes_the_sq_thread_after_it_slept() {
    let ring = sqpoll_ring!(8, Duration::from_millis(1));
    for round in 0..5 {
        // Long enough past the 1 ms idle time for the thread to sleep.
        std::thread::sleep(Duration::from_millis(20));
        ring.add(Nop::new(), round).expect("add");
        ring.submit().expect("submit");
        assert!(
            readable_within(ring.as_raw_fd(), 2000),
            "round {round}: the sleeping SQ thread was not woken"
        );
        let done = reap_by_user_data(&ring, 1);
        assert_eq!(done[&round].as_ref().ok(), Some(&0));
    }
}

#[test]
fn a_full_queue_has_room_again_after_submit() {
    let ring = sqpoll_ring!(4, Duration::from_millis(1));
    std::thread::sleep(Duration::from_millis(20));
    let mut added = 0;
    let start = Instant::now();
    while added < 64 {
        match ring.add(Nop::new(), added) {
            Ok(()) => added += 1,
            // Full: submit wakes the thread and waits until it took some.
            Err(Error::NoSpace) => ring.submit().expect("submit"),
            Err(e) => panic!("add: {e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "stuck at {added}"
        );
        if ring.in_flight() >= 32 {
            reap_by_user_data(&ring, ring.in_flight());
        }
    }
    reap_by_user_data(&ring, ring.in_flight());
}

#[test]
fn drop_with_a_pending_poll_and_queued_writes_is_prompt_and_releases_the_files() {
    let ring = sqpoll_ring!(8, Duration::from_secs(1));
    let (reader, mut writer) = pipe();
    let file = Arc::new(scratch_file(0));
    ring.add(PollAdd::new(Arc::new(reader), EventType::Read), 1)
        .expect("add poll");
    let (buf, _) = leaked_buf(512, 0x77);
    ring.add(
        Writev::new(pinned(vec![buf]), Arc::clone(&file), Some(0)),
        2,
    )
    .expect("add write");
    let start = Instant::now();
    drop(ring);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "drop took {took:?}");
    // The poll held the pipe's read end: with it gone, there is no reader.
    let err = writer.write(b"x").expect_err("a reader is left");
    assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    // The write was published to a thread that reads SQEs on its own: it
    // ran, or was cancelled, but the context let go of the file either way.
    assert_eq!(Arc::strong_count(&file), 1);
    let len = file.metadata().expect("metadata").len();
    assert!(len == 0 || len == 512, "a torn write: {len} bytes");
}

#[test]
fn the_sq_thread_can_be_pinned_to_a_cpu_and_an_offline_one_is_refused() {
    let Some(ring) = common::usable_or_skip(URingBuilder::new(4).sqpoll_cpu(0).build()) else {
        return;
    };
    ring.add(Nop::new(), 1).expect("add");
    let done = reap_by_user_data(&ring, 1);
    assert_eq!(done[&1].as_ref().ok(), Some(&0));
    match URingBuilder::new(4).sqpoll_cpu(100_000).build() {
        Err(Error::Setup(e)) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL)),
        other => panic!("an offline CPU: {other:?}"),
    }
}

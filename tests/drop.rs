//! Kernel tests for dropping a context: pending operations are cancelled
//! promptly and the kernel lets go of their files and buffers; queued,
//! unreaped and overflowed work does not slow drop down.
// Needs the real kernel: Miri cannot make io_uring syscalls (the
// simulated-kernel tests in src/sim run under Miri instead).
#![cfg(not(miri))]

mod common;

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::{add_and_submit_without_reaping, leaked_buf, pinned, pipe, set_nonblocking};
use ringfence::{EventType, URingContext};

/// Well under the context's 5 s drain timeout: a drop that took this long
/// waited for something it should have cancelled.
const PROMPT: Duration = Duration::from_secs(2);

/// Drops `ring` and returns how long that took.
fn timed_drop(ring: URingContext) -> Duration {
    let start = Instant::now();
    drop(ring);
    start.elapsed()
}

/// Makes sure SIGPIPE is ignored, so writing to a pipe without readers
/// returns EPIPE rather than killing the test process. The Rust runtime
/// already ignores it; this checks, and ignores it if something changed that.
fn ensure_sigpipe_ignored() {
    // SAFETY: a zeroed sigaction is a valid "no handler" value to read into.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only queries; `old` is valid for writes.
    let ret = unsafe { libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) };
    assert_eq!(ret, 0, "sigaction: {}", io::Error::last_os_error());
    if old.sa_sigaction != libc::SIG_IGN {
        // SAFETY: SIG_IGN installs no handler code; it only changes this
        // process's disposition of SIGPIPE.
        let prev = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        assert_ne!(
            prev,
            libc::SIG_ERR,
            "signal: {}",
            io::Error::last_os_error()
        );
    }
}

#[test]
fn drop_with_pending_poll_is_prompt_and_releases_the_file() {
    ensure_sigpipe_ignored();
    let ring = ring!(8);
    let (r, mut w) = pipe();
    ring.add_poll_fd(r.as_raw_fd(), EventType::Read, 1)
        .expect("poll");
    ring.submit().expect("submit");
    assert_eq!(ring.in_flight(), 1);

    let took = timed_drop(ring);
    assert!(took < PROMPT, "drop with a pending poll took {took:?}");

    // The poll held a reference to the read end. With it gone, closing our
    // descriptor leaves the pipe without readers.
    drop(r);
    let err = w
        .write(b"x")
        .expect_err("write to a pipe with no reader succeeded");
    assert_eq!(err.raw_os_error(), Some(libc::EPIPE), "{err}");
}

#[test]
fn drop_with_pending_readv_cancels_it_and_leaves_buffer_and_data_alone() {
    let ring = ring!(8);
    drop_cancels_a_pending_read_and_leaves_buffer_and_data_alone(ring);
}

/// Drops `ring` with a readv of an empty pipe in flight, then checks that
/// the drop was prompt and that the read was cancelled: data written after
/// the drop stays in the pipe and the buffer keeps its old bytes.
fn drop_cancels_a_pending_read_and_leaves_buffer_and_data_alone(ring: URingContext) {
    let (pipe, view) = pending_pipe_read(&ring);
    assert_eq!(ring.in_flight(), 1);

    let took = timed_drop(ring);
    assert!(took < PROMPT, "drop with a pending readv took {took:?}");
    assert_the_read_is_gone(&pipe, view, 0xab);
}

/// Checks that a read of `pipe` into `view` (filled with `fill`), pending
/// until the ring was dropped or closed, no longer runs: data written now
/// stays in the pipe, and the buffer keeps its bytes.
fn assert_the_read_is_gone((r, w): &(std::fs::File, std::fs::File), view: &[u8], fill: u8) {
    const DATA: &[u8; 8] = b"too late";
    let mut w: &std::fs::File = w;
    w.write_all(DATA).expect("write");
    // Give a read left pending in the kernel time to run, if there were one.
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        view.iter().all(|&b| b == fill),
        "the buffer was written after the ring let go of the read"
    );
    // The data is still in the pipe (non-blocking, so a pipe emptied by a
    // stray read fails instead of hanging).
    set_nonblocking(r.as_raw_fd());
    let mut got = [0u8; 8];
    let mut r: &std::fs::File = r;
    r.read_exact(&mut got)
        .expect("the data is no longer in the pipe");
    assert_eq!(&got, DATA);
}

#[test]
fn drop_with_completions_never_reaped_is_prompt() {
    let ring = ring!(8);
    for ud in 0..8 {
        ring.add_nop(ud).expect("nop");
    }
    ring.submit().expect("submit");
    // Nops complete during submit: everything is posted, nothing reaped.
    assert_eq!(ring.in_flight(), 8);

    let took = timed_drop(ring);
    assert!(
        took < PROMPT,
        "drop with unreaped completions took {took:?}"
    );
}

#[test]
fn drop_with_overflowed_completions_never_reaped_is_prompt() {
    let ring = ring!(4);
    let total = 3 * u64::from(ring.cq_entries());
    add_and_submit_without_reaping(&ring, 0..total);
    // More posted than the completion ring holds: the kernel keeps the rest.
    assert_eq!(ring.in_flight() as u64, total);

    let took = timed_drop(ring);
    assert!(
        took < PROMPT,
        "drop with overflowed completions took {took:?}"
    );
}

#[test]
fn dropping_an_idle_ring_is_immediate() {
    // Never used.
    let ring = ring!(8);
    let took = timed_drop(ring);
    assert!(
        took < Duration::from_millis(250),
        "dropping a fresh ring took {took:?}"
    );

    // Used, with everything reaped.
    let ring = ring!(8);
    ring.add_nop(1).expect("nop");
    assert_eq!(common::reap(&ring, 1).len(), 1);
    assert_eq!(ring.in_flight(), 0);
    let took = timed_drop(ring);
    assert!(
        took < Duration::from_millis(250),
        "dropping an idle ring took {took:?}"
    );
}

#[test]
fn close_cancels_pending_operations_and_reports_success() {
    let (reader, writer) = pipe();
    let ring = ring!(8);
    ring.add_poll_fd(reader.as_raw_fd(), EventType::Read, 1)
        .unwrap();
    let (buf, view) = leaked_buf(16, 0x5a);
    // SAFETY: the buffer is leaked, so it outlives the read whatever happens.
    unsafe { ring.add_readv(pinned(vec![buf]), reader.as_raw_fd(), None, 2) }.unwrap();
    ring.submit().unwrap();
    assert_eq!(ring.in_flight(), 2);

    let start = Instant::now();
    ring.close(PROMPT)
        .expect("close reported operations left in the kernel");
    assert!(start.elapsed() < PROMPT, "close took {:?}", start.elapsed());
    // Ok means the kernel is done with the read.
    assert_the_read_is_gone(&(reader, writer), view, 0x5a);
}

/// An allowlist for pipe reads, with or without the housekeeping pair.
fn pipe_read_allowlist(housekeeping: bool) -> ringfence::URingAllowlist {
    let mut allowlist = ringfence::URingAllowlist::new();
    allowlist.allow_submit_operation(ringfence::URingOperation::Readv);
    if housekeeping {
        allowlist.allow_housekeeping();
    }
    allowlist
}

/// Queues and submits a read from an empty pipe that only a write (or a
/// cancellation) can complete; returns the pipe and a view of the buffer.
fn pending_pipe_read(ring: &URingContext) -> ((std::fs::File, std::fs::File), &'static [u8]) {
    let (r, w) = pipe();
    let (buf, view) = leaked_buf(16, 0xab);
    // SAFETY: the buffer is leaked, so it outlives the operation (even if
    // drop leaks it), and the test only reads it.
    unsafe { ring.add_readv(pinned(vec![buf]), r.as_raw_fd(), None, 1) }.expect("readv");
    ring.submit().expect("submit");
    ((r, w), view)
}

#[test]
fn close_on_a_ring_that_cannot_cancel_leaks_at_once_and_says_why() {
    let ring = ring!(8, Some(&pipe_read_allowlist(false)));
    let _pipe = pending_pipe_read(&ring);

    let timeout = Duration::from_secs(3);
    let start = Instant::now();
    let err = ring
        .close(timeout)
        .expect_err("the read cannot have been cancelled");
    let took = start.elapsed();
    assert!(
        matches!(err, ringfence::Error::CancelNotAllowed(1)),
        "{err}"
    );
    assert!(err.to_string().contains("AsyncCancel"), "{err}");
    assert!(took < PROMPT, "waited for what cannot come: {took:?}");
}

#[test]
fn drop_of_a_ring_that_cannot_cancel_is_prompt() {
    let ring = ring!(8, Some(&pipe_read_allowlist(false)));
    let (_pipe, _view) = pending_pipe_read(&ring);
    let took = timed_drop(ring);
    assert!(took < PROMPT, "drop without AsyncCancel took {took:?}");
}

#[test]
fn drop_of_a_ring_with_the_housekeeping_pair_cancels_a_pending_read() {
    let ring = ring!(8, Some(&pipe_read_allowlist(true)));
    drop_cancels_a_pending_read_and_leaves_buffer_and_data_alone(ring);
}

#[test]
fn close_of_a_ring_with_the_housekeeping_pair_drains_a_pending_read() {
    let ring = ring!(8, Some(&pipe_read_allowlist(true)));
    let (pipe, view) = pending_pipe_read(&ring);
    ring.close(Duration::from_secs(2))
        .expect("AsyncCancel is allowed, so close drains");
    assert_the_read_is_gone(&pipe, view, 0xab);
}

#[test]
fn drop_never_carries_out_operations_that_were_only_queued() {
    // A write to a pipe with room completes as soon as it is submitted, so
    // only not submitting it keeps the pipe empty. The poll and readv on
    // the same empty pipe would never complete if they were submitted and
    // not cancelled.
    let (reader, writer) = pipe();
    let ring = ring!(8);
    for ud in 0..5 {
        ring.add_nop(ud).expect("nop");
    }
    ring.add_poll_fd(reader.as_raw_fd(), EventType::Read, 10)
        .expect("poll");
    let (read_buf, read_view) = leaked_buf(8, 0xcd);
    // SAFETY: the buffers are leaked, so they outlive the operations.
    unsafe { ring.add_readv(pinned(vec![read_buf]), reader.as_raw_fd(), None, 11) }.expect("readv");
    let (write_buf, _) = leaked_buf(8, b'X');
    // SAFETY: as above.
    unsafe { ring.add_writev(pinned(vec![write_buf]), writer.as_raw_fd(), None, 12) }
        .expect("writev");
    assert_eq!(ring.in_flight(), 8);

    let took = timed_drop(ring);
    assert!(took < PROMPT, "drop with queued operations took {took:?}");
    assert_eq!(read_view, [0xcd; 8]);
    set_nonblocking(reader.as_raw_fd());
    let mut got = [0u8; 8];
    let read = (&reader).read(&mut got);
    assert!(
        matches!(&read, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
        "the queued write reached the pipe: {read:?}"
    );
}

#[test]
fn close_accepts_an_unbounded_timeout() {
    let (reader, _writer) = pipe();
    let ring = ring!(8);
    ring.add_poll_fd(reader.as_raw_fd(), EventType::Read, 1)
        .unwrap();
    ring.submit().unwrap();
    ring.close(Duration::MAX).expect("close");
}

#[test]
fn a_forked_child_dropping_its_copy_leaves_the_parents_operations_alone() {
    let (reader, writer) = pipe();
    let ring = ring!(8);
    ring.add_poll_fd(reader.as_raw_fd(), EventType::Read, 7)
        .unwrap();
    ring.submit().unwrap();

    // SAFETY: the child only drops its copy of the ring (no allocation, no
    // lock another thread could hold: the ring is this test's alone) and
    // leaves with _exit.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork: {}", io::Error::last_os_error());
    if child == 0 {
        drop(ring);
        // SAFETY: ends the child without running the parent's exit hooks.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a live local.
    let waited = unsafe { libc::waitpid(child, &mut status, 0) };
    assert_eq!(waited, child);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);

    // The poll is still pending in the parent: it fires on data.
    assert_eq!(ring.in_flight(), 1);
    (&writer).write_all(b"x").unwrap();
    let got: Vec<_> = ring.wait_timeout(PROMPT).unwrap().collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, 7);
    let events = *got[0].1.as_ref().expect("the child cancelled the poll");
    assert_ne!(events & libc::POLLIN as u32, 0);
}

#[test]
fn a_forked_child_cannot_use_its_copy_so_the_parents_completions_stay_its_own() {
    let (reader, writer) = pipe();
    let ring = ring!(8);
    let (buf, view) = leaked_buf(4, 0);
    // SAFETY: the buffer is leaked; the test reads it only after the read
    // completed.
    unsafe { ring.add_readv(pinned(vec![buf]), reader.as_raw_fd(), None, 1) }.unwrap();
    ring.submit().unwrap();

    // SAFETY: the child only calls methods that fail before touching the
    // ring or taking a lock, builds no heap value, and leaves with _exit.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork: {}", io::Error::last_os_error());
    if child == 0 {
        let forked =
            |result: ringfence::Result<()>| matches!(result, Err(ringfence::Error::Forked));
        let ok = forked(ring.add_nop(77))
            && forked(ring.submit())
            && forked(ring.wait_timeout(Duration::ZERO).map(drop))
            && forked(ring.wait().map(drop))
            && forked(ring.register_eventfd(0));
        std::mem::forget(ring);
        // SAFETY: ends the child without running the parent's exit hooks.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a live local.
    let waited = unsafe { libc::waitpid(child, &mut status, 0) };
    assert_eq!(waited, child);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child could use the parent's ring"
    );

    // Nothing the child did completes as the parent's next operation.
    let (buf, view2) = leaked_buf(4, 0);
    // SAFETY: as above.
    unsafe { ring.add_readv(pinned(vec![buf]), reader.as_raw_fd(), None, 3) }.unwrap();
    ring.submit().unwrap();
    let early: Vec<_> = ring
        .wait_timeout(Duration::from_millis(50))
        .unwrap()
        .collect();
    assert!(early.is_empty(), "{early:?}");
    (&writer).write_all(b"abcdefgh").unwrap();
    let mut done: Vec<_> = common::reap(&ring, 2)
        .into_iter()
        .map(|(ud, r)| (ud, r.ok()))
        .collect();
    done.sort();
    assert_eq!(done, [(1, Some(4)), (3, Some(4))]);
    // The pipe serves the two reads in either order.
    let mut halves = [view, view2];
    halves.sort();
    assert_eq!(halves, [&b"abcd"[..], &b"efgh"[..]]);
}

//! Kernel tests of the individual operations of [`URingContext`]: readv and
//! writev (pinned and raw iovecs, explicit offsets and the file position),
//! index wrap-around, a full submission queue, fallocate and fsync, poll and
//! its removal, cancellation, waking waiters, eventfd and ring-fd
//! readiness, and how a failed completion's errno reaches the caller.
// Needs the real kernel: Miri cannot make io_uring syscalls (the
// simulated-kernel tests in src/sim run under Miri instead).
#![cfg(not(miri))]

mod common;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    epoll_ready, epoll_watching, eventfd, eventfd_count, leaked_buf, pattern, pinned, pipe,
    readable_within, reap, reap_by_user_data,
};
use ringfence::{Error, EventType, IoBufMut, URingContext};

/// How long a test waits for something that should happen promptly.
const PROMPTLY: Duration = Duration::from_secs(5);

/// A copy of `data` that lives for the rest of the process, as the iovec of
/// a writev must.
fn leaked_bytes(data: &[u8]) -> IoBufMut<'static> {
    IoBufMut::new(common::leak(data.to_vec()))
}

/// Reaps exactly one completion, checks it is `user_data`'s, and returns
/// its result.
fn only(ring: &URingContext, user_data: u64) -> io::Result<u32> {
    let mut got = reap(ring, 1);
    assert_eq!(got.len(), 1, "expected only user_data {user_data}: {got:?}");
    let (ud, result) = got.pop().unwrap();
    assert_eq!(ud, user_data, "unexpected completion: {result:?}");
    result
}

/// The position of `file`'s open file description.
fn position(file: &File) -> u64 {
    let mut file = file;
    file.stream_position().unwrap()
}

#[test]
fn writev_and_readv_with_one_iovec_round_trip_a_pattern() {
    let file = tempfile::tempfile().unwrap();
    let fd = file.as_raw_fd();
    let ring = ring!(8);
    let data = pattern(4096, 1);

    // SAFETY: the buffer is leaked, so it outlives the operation, and
    // nothing writes it.
    unsafe { ring.add_writev(pinned(vec![leaked_bytes(&data)]), fd, Some(0), 1) }.unwrap();
    assert_eq!(only(&ring, 1).unwrap(), 4096);
    let mut on_disk = vec![0; 4096];
    file.read_exact_at(&mut on_disk, 0).unwrap();
    assert_eq!(on_disk, data, "writev wrote other bytes");
    assert_eq!(file.metadata().unwrap().len(), 4096);

    let (buf, view) = leaked_buf(4096, 0);
    // SAFETY: the buffer is leaked and only read after the completion.
    unsafe { ring.add_readv(pinned(vec![buf]), fd, Some(0), 2) }.unwrap();
    assert_eq!(only(&ring, 2).unwrap(), 4096);
    assert_eq!(view, &data[..], "readv read other bytes");
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn writev_and_readv_scatter_and_gather_across_several_iovecs_of_different_sizes() {
    let file = tempfile::tempfile().unwrap();
    let fd = file.as_raw_fd();
    let ring = ring!(8);
    let parts = [pattern(100, 2), pattern(4096, 3), pattern(7, 4)];
    let whole: Vec<u8> = parts.concat();
    let offset = 512;

    let iovecs = parts.iter().map(|part| leaked_bytes(part)).collect();
    // SAFETY: the buffers are leaked and nothing writes them.
    unsafe { ring.add_writev(pinned(iovecs), fd, Some(offset), 10) }.unwrap();
    assert_eq!(only(&ring, 10).unwrap(), whole.len() as u32);
    let on_disk = {
        let mut bytes = Vec::new();
        (&file).seek(SeekFrom::Start(0)).unwrap();
        (&file).read_to_end(&mut bytes).unwrap();
        bytes
    };
    assert_eq!(on_disk.len(), offset as usize + whole.len());
    assert!(
        on_disk[..offset as usize].iter().all(|&b| b == 0),
        "bytes before the offset were written"
    );
    assert_eq!(
        &on_disk[offset as usize..],
        &whole[..],
        "gathered write is not the concatenation"
    );

    // Read back split differently from how it was written.
    let sizes = [1000, 3000, whole.len() - 4000];
    let (bufs, views): (Vec<_>, Vec<_>) = sizes.iter().map(|&len| leaked_buf(len, 0xAA)).unzip();
    // SAFETY: the buffers are leaked and only read after the completion.
    unsafe { ring.add_readv(pinned(bufs), fd, Some(offset), 11) }.unwrap();
    assert_eq!(only(&ring, 11).unwrap(), whole.len() as u32);
    let mut start = 0;
    for (view, len) in views.iter().zip(sizes) {
        assert_eq!(
            *view,
            &whole[start..start + len],
            "iovec at {start} holds other bytes"
        );
        start += len;
    }
}

#[test]
fn writev_with_no_offset_appends_at_the_file_position_and_advances_it() {
    let temp = tempfile::NamedTempFile::new().unwrap();
    let file = temp.as_file();
    let fd = file.as_raw_fd();
    let ring = ring!(8);
    // Move the position with a plain write first: the ring must start there.
    (&*file).write_all(b"head:").unwrap();
    let first = pattern(300, 5);
    let second = [pattern(120, 6), pattern(80, 7)];

    // SAFETY: the buffers are leaked and nothing writes them.
    unsafe { ring.add_writev(pinned(vec![leaked_bytes(&first)]), fd, None, 1) }.unwrap();
    assert_eq!(only(&ring, 1).unwrap(), 300);
    assert_eq!(
        position(file),
        305,
        "writev did not advance the file position"
    );
    let iovecs = second.iter().map(|part| leaked_bytes(part)).collect();
    // SAFETY: as above.
    unsafe { ring.add_writev(pinned(iovecs), fd, None, 2) }.unwrap();
    assert_eq!(only(&ring, 2).unwrap(), 200);
    assert_eq!(
        position(file),
        505,
        "writev did not advance the file position"
    );

    let expected = [&b"head:"[..], &first, &second[0], &second[1]].concat();
    assert_eq!(std::fs::read(temp.path()).unwrap(), expected);
}

#[test]
fn readv_with_no_offset_reads_from_the_file_position_and_advances_it() {
    let file = tempfile::tempfile().unwrap();
    let fd = file.as_raw_fd();
    let ring = ring!(8);
    let data = pattern(1000, 8);
    file.write_all_at(&data, 0).unwrap();
    (&file).seek(SeekFrom::Start(100)).unwrap();

    let (a, a_view) = leaked_buf(50, 0);
    let (b, b_view) = leaked_buf(70, 0);
    // SAFETY: the buffers are leaked and only read after the completion.
    unsafe { ring.add_readv(pinned(vec![a, b]), fd, None, 1) }.unwrap();
    assert_eq!(only(&ring, 1).unwrap(), 120);
    assert_eq!(a_view, &data[100..150]);
    assert_eq!(b_view, &data[150..220]);
    assert_eq!(position(&file), 220);

    let (c, c_view) = leaked_buf(80, 0);
    // SAFETY: as above.
    unsafe { ring.add_readv(pinned(vec![c]), fd, None, 2) }.unwrap();
    assert_eq!(only(&ring, 2).unwrap(), 80);
    assert_eq!(
        c_view,
        &data[220..300],
        "the second read did not continue where the first stopped"
    );
    assert_eq!(position(&file), 300);
}

#[test]
fn writev_iter_and_readv_iter_take_raw_iovecs() {
    let file = tempfile::tempfile().unwrap();
    let fd = file.as_raw_fd();
    let out = [pattern(300, 9), pattern(1200, 10), pattern(1, 11)];
    let mut back = [vec![0u8; 900], vec![0u8; 601]];
    // Declared after the buffers, so it is dropped (and drained) before them
    // even if an assertion fails with an operation in flight.
    let ring = ring!(8);

    let iovecs: Vec<libc::iovec> = out
        .iter()
        .map(|part| libc::iovec {
            iov_base: part.as_ptr() as *mut libc::c_void,
            iov_len: part.len(),
        })
        .collect();
    // SAFETY: `out` is only read, by the kernel, and outlives the operation:
    // its completion is reaped below, and otherwise the ring is dropped first.
    unsafe { ring.add_writev_iter(iovecs.into_iter(), fd, Some(0), 1) }.unwrap();
    assert_eq!(only(&ring, 1).unwrap(), 1501);
    let whole = out.concat();
    let mut on_disk = vec![0; whole.len()];
    file.read_exact_at(&mut on_disk, 0).unwrap();
    assert_eq!(on_disk, whole);

    let iovecs: Vec<libc::iovec> = back
        .iter_mut()
        .map(|part| libc::iovec {
            iov_base: part.as_mut_ptr().cast(),
            iov_len: part.len(),
        })
        .collect();
    // SAFETY: `back` is not touched until the completion is reaped, and
    // outlives the operation as above.
    unsafe { ring.add_readv_iter(iovecs.into_iter(), fd, Some(0), 2) }.unwrap();
    assert_eq!(only(&ring, 2).unwrap(), 1501);
    assert_eq!(back[0], whole[..900]);
    assert_eq!(back[1], whole[900..]);
}

#[test]
fn sequential_reads_past_the_ring_size_wrap_the_indices_correctly() {
    const BLOCK: usize = 512;
    const READS: usize = 150;
    let file = tempfile::tempfile().unwrap();
    let fd = file.as_raw_fd();
    let data = pattern(BLOCK * READS, 12);
    file.write_all_at(&data, 0).unwrap();
    let mut bufs = vec![vec![0u8; BLOCK]; 4];
    // Declared after the buffers, so it is dropped (and drained) first.
    let ring = ring!(4);
    let slots = ring.sq_entries() as usize;
    assert_eq!(slots, 4);

    let mut next = 0;
    let mut batch = 1;
    let mut rounds = 0;
    while next < READS {
        // 1, 2, 3, 4, 1, 2, ... reads at a time, so the wrap happens at
        // every alignment.
        let count = batch.min(READS - next).min(slots);
        for (i, buf) in bufs.iter_mut().take(count).enumerate() {
            buf.fill(0);
            let block = next + i;
            let iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: BLOCK,
            };
            // SAFETY: `buf` is not touched until this batch is reaped below,
            // and outlives the ring.
            unsafe {
                ring.add_readv_iter(
                    std::iter::once(iov),
                    fd,
                    Some((block * BLOCK) as u64),
                    block as u64,
                )
            }
            .unwrap();
        }
        let done = reap_by_user_data(&ring, count);
        for (i, buf) in bufs.iter().enumerate().take(count) {
            let block = next + i;
            let result = done
                .get(&(block as u64))
                .unwrap_or_else(|| panic!("no completion for block {block}"));
            assert_eq!(*result.as_ref().unwrap(), BLOCK as u32, "block {block}");
            assert_eq!(
                buf[..],
                data[block * BLOCK..][..BLOCK],
                "block {block} holds other bytes"
            );
        }
        next += count;
        batch = batch % slots + 1;
        rounds += 1;
    }
    assert!(
        rounds > 2 * ring.cq_entries() as usize,
        "too few rounds to wrap: {rounds}"
    );
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn full_submission_queue_refuses_with_nospace_and_loses_nothing() {
    let ring = ring!(8);
    let n = u64::from(ring.sq_entries());
    for user_data in 0..n {
        ring.add_nop(user_data).unwrap();
    }
    let refused = ring.add_nop(n);
    assert!(
        matches!(refused, Err(Error::NoSpace)),
        "add to a full queue: {refused:?}"
    );
    assert_eq!(ring.in_flight(), n as usize, "the refused add was counted");

    let done = reap_by_user_data(&ring, n as usize);
    assert_eq!(
        done.keys().copied().collect::<BTreeSet<_>>(),
        (0..n).collect()
    );
    assert!(done.values().all(|r| matches!(r, Ok(0))), "{done:?}");
    assert_eq!(ring.in_flight(), 0);
    let late = ring
        .wait_timeout(Duration::from_millis(50))
        .unwrap()
        .count();
    assert_eq!(late, 0, "a refused nop completed");

    // Room again, including for the user_data that was refused.
    for user_data in n..2 * n {
        ring.add_nop(user_data).unwrap();
    }
    let done = reap_by_user_data(&ring, n as usize);
    assert_eq!(
        done.keys().copied().collect::<BTreeSet<_>>(),
        (n..2 * n).collect()
    );
    assert!(done.values().all(|r| matches!(r, Ok(0))), "{done:?}");
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn fallocate_allocates_the_given_range_and_fsync_completes() {
    let file = tempfile::tempfile().unwrap();
    let fd = file.as_raw_fd();
    let ring = ring!(8);
    let (offset, len) = (1u64 << 20, 64u64 << 10);

    ring.add_fallocate(fd, offset, len, 0, 1).unwrap();
    assert_eq!(only(&ring, 1).unwrap(), 0);
    ring.add_fsync(fd, 2).unwrap();
    assert_eq!(only(&ring, 2).unwrap(), 0);

    let meta = file.metadata().unwrap();
    assert_eq!(
        meta.len(),
        offset + len,
        "fallocate mode 0 extends the file to the range's end"
    );
    // Only the range is allocated, not everything up to it (which would
    // mean offset and length were mixed up).
    let allocated = meta.blocks() * 512;
    assert!(
        allocated >= len && allocated < offset,
        "{allocated} bytes allocated"
    );
}

/// Writes three blocks through the ring, punches a hole in the middle one
/// and checks what reads back. `Err` only if the filesystem cannot punch
/// holes.
fn punch_hole_in(ring: &URingContext, file: &File) -> io::Result<()> {
    const BLOCK: usize = 4096;
    let fd = file.as_raw_fd();
    let data = pattern(3 * BLOCK, 13);
    // SAFETY: the buffer is leaked and nothing writes it.
    unsafe { ring.add_writev(pinned(vec![leaked_bytes(&data)]), fd, Some(0), 1) }.unwrap();
    assert_eq!(only(ring, 1).unwrap(), data.len() as u32);
    ring.add_fsync(fd, 2).unwrap();
    assert_eq!(only(ring, 2).unwrap(), 0);

    let mode = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32;
    ring.add_fallocate(fd, BLOCK as u64, BLOCK as u64, mode, 3)
        .unwrap();
    match only(ring, 3) {
        Ok(res) => assert_eq!(res, 0),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Err(e),
        Err(e) => panic!("punching a hole failed: {e}"),
    }
    assert_eq!(
        file.metadata().unwrap().len(),
        data.len() as u64,
        "KEEP_SIZE changed the size"
    );

    let (buf, view) = leaked_buf(data.len(), 0xFF);
    // SAFETY: the buffer is leaked and only read after the completion.
    unsafe { ring.add_readv(pinned(vec![buf]), fd, Some(0), 4) }.unwrap();
    assert_eq!(only(ring, 4).unwrap(), data.len() as u32);
    assert_eq!(view[..BLOCK], data[..BLOCK], "data before the hole changed");
    assert!(
        view[BLOCK..2 * BLOCK].iter().all(|&b| b == 0),
        "the hole does not read as zeros"
    );
    assert_eq!(
        view[2 * BLOCK..],
        data[2 * BLOCK..],
        "data after the hole changed"
    );
    Ok(())
}

#[test]
fn fallocate_punch_hole_zeroes_the_range_and_keeps_the_rest() {
    let ring = ring!(8);
    let file = tempfile::tempfile().unwrap();
    if let Err(e) = punch_hole_in(&ring, &file) {
        eprintln!("the temp filesystem cannot punch holes ({e}); using /dev/shm");
        let file = tempfile::tempfile_in("/dev/shm").unwrap();
        punch_hole_in(&ring, &file).expect("tmpfs punches holes");
    }
}

#[test]
fn poll_for_read_completes_only_once_the_pipe_has_data_with_pollin() {
    let (read_end, mut write_end) = pipe();
    let ring = ring!(8);
    ring.add_poll_fd(read_end.as_raw_fd(), EventType::Read, 1)
        .unwrap();
    ring.submit().unwrap();

    // Give a wrong completion time to happen, then reap whatever is ready
    // behind a nop (so the wait is bounded): only the nop may be there.
    thread::sleep(Duration::from_millis(100));
    ring.add_nop(2).unwrap();
    let early: Vec<_> = ring.wait().unwrap().collect();
    assert_eq!(early.len(), 1, "{early:?}");
    assert_eq!(
        early[0].0, 2,
        "the poll completed on an empty pipe: {early:?}"
    );
    assert_eq!(ring.in_flight(), 1);

    write_end.write_all(b"x").unwrap();
    let events = only(&ring, 1).unwrap();
    assert_ne!(events & libc::POLLIN as u32, 0, "events {events:#x}");
}

#[test]
fn poll_for_write_on_an_empty_pipe_completes_at_once_with_pollout() {
    let (_read_end, write_end) = pipe();
    let ring = ring!(8);
    let start = Instant::now();
    ring.add_poll_fd(write_end.as_raw_fd(), EventType::Write, 1)
        .unwrap();
    let events = only(&ring, 1).unwrap();
    assert_ne!(events & libc::POLLOUT as u32, 0, "events {events:#x}");
    assert!(start.elapsed() < PROMPTLY, "took {:?}", start.elapsed());
}

/// A way to stop the operation with user_data `target`, queued as an
/// operation of its own with user_data `user_data`.
type Stop = fn(&URingContext, u64, u64) -> ringfence::Result<()>;

/// Stops a pending poll with `stop`: the stop completes with 0 and the
/// poll with ECANCELED.
fn assert_stops_a_pending_poll(stop: Stop) {
    let (read_end, _write_end) = pipe();
    let ring = ring!(8);
    ring.add_poll_fd(read_end.as_raw_fd(), EventType::Read, 1)
        .unwrap();
    ring.submit().unwrap();
    stop(&ring, 1, 2).unwrap();
    let done = reap_by_user_data(&ring, 2);
    assert!(matches!(done[&2], Ok(0)), "stop: {:?}", done[&2]);
    assert_eq!(
        common::errno(&done[&1]),
        Some(libc::ECANCELED),
        "poll: {:?}",
        done[&1]
    );
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn remove_poll_fd_cancels_a_pending_poll() {
    assert_stops_a_pending_poll(URingContext::remove_poll_fd);
}

#[test]
fn async_cancel_cancels_a_pending_poll() {
    assert_stops_a_pending_poll(URingContext::async_cancel);
}

#[test]
fn remove_poll_fd_of_an_unknown_user_data_fails_with_enoent() {
    let (read_end, _write_end) = pipe();
    let ring = ring!(8);
    // A pending poll with another user_data must not be removed either.
    ring.add_poll_fd(read_end.as_raw_fd(), EventType::Read, 1)
        .unwrap();
    ring.submit().unwrap();
    ring.remove_poll_fd(0xdead_beef, 2).unwrap();
    assert_eq!(common::errno(&only(&ring, 2)), Some(libc::ENOENT));
    assert_eq!(ring.in_flight(), 1, "the other poll went too");
    ring.remove_poll_fd(1, 3).unwrap();
    let done = reap_by_user_data(&ring, 2);
    assert_eq!(common::errno(&done[&1]), Some(libc::ECANCELED));
}

#[test]
fn async_cancel_of_an_unknown_user_data_fails_with_enoent() {
    let ring = ring!(8);
    ring.async_cancel(0xdead_beef, 1).unwrap();
    assert_eq!(common::errno(&only(&ring, 1)), Some(libc::ENOENT));
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn ring_fd_is_readable_in_epoll_exactly_while_a_completion_is_ready() {
    let ring = ring!(8);
    let epoll = epoll_watching(ring.as_raw_fd(), 77);

    assert_eq!(
        epoll_ready(&epoll, 50),
        vec![],
        "readable with nothing queued"
    );
    ring.add_nop(1).unwrap();
    assert_eq!(
        epoll_ready(&epoll, 50),
        vec![],
        "readable before the nop was submitted"
    );
    ring.submit().unwrap();
    let ready = epoll_ready(&epoll, PROMPTLY.as_millis() as i32);
    assert_eq!(ready.len(), 1, "not readable after the nop completed");
    assert_eq!(ready[0].1, 77);
    assert_ne!(
        ready[0].0 & libc::EPOLLIN as u32,
        0,
        "events {:#x}",
        ready[0].0
    );

    assert!(only(&ring, 1).is_ok());
    assert_eq!(
        epoll_ready(&epoll, 0),
        vec![],
        "still readable after reaping"
    );
}

/// What the waiting thread reports.
enum Waiter {
    /// Its kernel thread id, before it calls `wait`.
    Tid(libc::pid_t),
    /// What its `wait` returned, with errors as errnos.
    Returned(Vec<(u64, Result<u32, Option<i32>>)>),
}

/// Whether thread `tid` of this process is inside `io_uring_enter`, or
/// `None` if /proc does not say.
fn in_io_uring_enter(tid: libc::pid_t) -> Option<bool> {
    let syscall = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    let number = syscall.split_whitespace().next()?.parse::<i64>().ok()?;
    Some(number == libc::SYS_io_uring_enter)
}

#[test]
fn nop_wakes_a_thread_blocked_in_wait() {
    let (read_end, mut write_end) = pipe();
    let ring = Arc::new(ring!(8));
    ring.add_poll_fd(read_end.as_raw_fd(), EventType::Read, 1)
        .unwrap();
    ring.submit().unwrap();

    let (tx, rx) = mpsc::channel();
    let waiter = {
        let ring = Arc::clone(&ring);
        thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            let _ = tx.send(Waiter::Tid(tid));
            let returned = ring
                .wait()
                .expect("wait failed")
                .map(|(ud, r)| (ud, r.map_err(|e| e.raw_os_error())))
                .collect();
            let _ = tx.send(Waiter::Returned(returned));
        })
    };
    // Nothing below may panic before the join: the waiter must be freed.
    let tid = match rx.recv_timeout(PROMPTLY) {
        Ok(Waiter::Tid(tid)) => Some(tid),
        _ => None,
    };
    // Until it is blocked in the kernel (if /proc can tell), then ~100 ms.
    let deadline = Instant::now() + PROMPTLY;
    while tid.and_then(in_io_uring_enter) == Some(false) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(100));
    let early = rx.try_recv();
    let blocked = tid.and_then(in_io_uring_enter);

    let added = ring.add_nop(2).and_then(|()| ring.submit());
    let woken = rx.recv_timeout(PROMPTLY);
    if woken.is_err() {
        // Free the waiter (the poll completes) so it can be joined.
        let _ = write_end.write_all(b"x");
    }
    waiter.join().expect("the waiter panicked");

    assert!(tid.is_some(), "the waiter did not start");
    added.expect("adding and submitting the nop");
    assert!(
        early.is_err(),
        "wait returned with only a never-ready poll in flight"
    );
    assert_ne!(
        blocked,
        Some(false),
        "the waiter was not blocked in io_uring_enter"
    );
    match woken {
        Ok(Waiter::Returned(returned)) => assert_eq!(returned, vec![(2, Ok(0))]),
        Ok(Waiter::Tid(_)) => unreachable!(),
        Err(e) => panic!("the nop did not wake the waiter: {e}"),
    }

    ring.async_cancel(1, 3).unwrap();
    let done = reap_by_user_data(&ring, 2);
    assert_eq!(common::errno(&done[&1]), Some(libc::ECANCELED));
    assert!(matches!(done[&3], Ok(0)));
}

#[test]
fn registered_eventfd_is_signalled_when_a_nop_completes() {
    let ring = ring!(8);
    let efd = eventfd();
    ring.register_eventfd(efd.as_raw_fd()).unwrap();
    assert_eq!(
        eventfd_count(&efd),
        None,
        "signalled before anything completed"
    );

    ring.add_nop(1).unwrap();
    assert_eq!(only(&ring, 1).unwrap(), 0);
    assert!(
        readable_within(efd.as_raw_fd(), PROMPTLY.as_millis() as i32),
        "never signalled"
    );
    // One completion, one signal.
    assert_eq!(eventfd_count(&efd), Some(1));
}

#[test]
fn unregistered_eventfd_is_no_longer_signalled() {
    let ring = ring!(8);
    let efd = eventfd();
    ring.register_eventfd(efd.as_raw_fd()).unwrap();
    ring.add_nop(1).unwrap();
    assert_eq!(only(&ring, 1).unwrap(), 0);
    assert!(
        readable_within(efd.as_raw_fd(), PROMPTLY.as_millis() as i32),
        "never signalled"
    );
    assert!(eventfd_count(&efd).is_some());

    ring.unregister_eventfd().unwrap();
    ring.add_nop(2).unwrap();
    assert_eq!(only(&ring, 2).unwrap(), 0);
    assert!(
        !readable_within(efd.as_raw_fd(), 50),
        "signalled after unregistering"
    );
}

/// Checks that `result` is the error `errno`, as `from_raw_os_error` makes it.
fn assert_os_error(result: io::Result<u32>, errno: i32, what: &str) {
    let err = result.expect_err(what);
    let expected = io::Error::from_raw_os_error(errno);
    assert_eq!(err.raw_os_error(), Some(errno), "{what}: {err}");
    assert_eq!(err.kind(), expected.kind(), "{what}");
    assert_eq!(err.to_string(), expected.to_string(), "{what}");
}

#[test]
fn failed_completions_carry_the_kernels_errno_as_an_io_error() {
    let temp = tempfile::NamedTempFile::new().unwrap();
    temp.as_file().write_all_at(&pattern(4096, 14), 0).unwrap();
    let write_only = OpenOptions::new().write(true).open(temp.path()).unwrap();
    let read_only = File::open(temp.path()).unwrap();
    let (_read_end, write_end) = pipe();
    let ring = ring!(8);

    let (buf, _) = leaked_buf(512, 0);
    // SAFETY: the buffer is leaked, so it outlives the operation.
    unsafe { ring.add_readv(pinned(vec![buf]), write_only.as_raw_fd(), Some(0), 1) }.unwrap();
    assert_os_error(only(&ring, 1), libc::EBADF, "readv on a write-only fd");

    // SAFETY: as above.
    unsafe {
        ring.add_writev(
            pinned(vec![leaked_bytes(b"nope")]),
            read_only.as_raw_fd(),
            Some(0),
            2,
        )
    }
    .unwrap();
    assert_os_error(only(&ring, 2), libc::EBADF, "writev on a read-only fd");

    // No process can have an fd this large open (fs.nr_open caps at 2^30).
    let (buf, _) = leaked_buf(512, 0);
    // SAFETY: as above.
    unsafe { ring.add_readv(pinned(vec![buf]), i32::MAX, Some(0), 3) }.unwrap();
    assert_os_error(
        only(&ring, 3),
        libc::EBADF,
        "readv on an fd that is not open",
    );

    ring.add_fallocate(write_end.as_raw_fd(), 0, 4096, 0, 4)
        .unwrap();
    assert_os_error(only(&ring, 4), libc::ESPIPE, "fallocate on a pipe");
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn wait_timeout_with_nothing_in_flight_blocks_until_the_timeout() {
    let ring = ring!(8);
    let timeout = Duration::from_millis(150);
    let start = Instant::now();
    assert_eq!(ring.wait_timeout(timeout).unwrap().count(), 0);
    let took = start.elapsed();
    assert!(took >= timeout, "returned after {took:?}");
    assert!(took < PROMPTLY, "overran: {took:?}");
}

/// On 5.11 and later the kernel times the wait (`IORING_ENTER_EXT_ARG`),
/// to the nanosecond; poll(2), the fallback, rounds up to a millisecond.
/// The shortest of a few 100 µs waits shows which one ran.
#[test]
fn wait_timeout_has_sub_millisecond_resolution_on_this_kernel() {
    let ring = ring!(8);
    let timeout = Duration::from_micros(100);
    let shortest = (0..20)
        .map(|_| {
            let start = Instant::now();
            assert_eq!(ring.wait_timeout(timeout).unwrap().count(), 0);
            start.elapsed()
        })
        .min()
        .unwrap();
    assert!(shortest >= timeout, "returned after {shortest:?}");
    assert!(
        shortest < Duration::from_micros(900),
        "the shortest 100 µs wait took {shortest:?}: rounded to milliseconds?"
    );
}

#[test]
fn wait_timeout_wakes_for_a_nop_from_another_thread() {
    let ring = ring!(8);
    thread::scope(|s| {
        let waiter = s.spawn(|| {
            let start = Instant::now();
            let got: Vec<_> = ring.wait_timeout(PROMPTLY).unwrap().collect();
            (got, start.elapsed())
        });
        thread::sleep(Duration::from_millis(100));
        ring.add_nop(9).unwrap();
        ring.submit().unwrap();
        let (got, took) = waiter.join().unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, 9);
        assert!(took < PROMPTLY, "woke only at the timeout: {took:?}");
    });
}

#[test]
fn wait_timeout_returns_a_poll_completed_by_another_thread() {
    // The poll's completion is posted by work the kernel queues for the
    // submitting thread, which is blocked in wait_timeout meanwhile.
    let (read_end, write_end) = pipe();
    let ring = ring!(8);
    ring.add_poll_fd(read_end.as_raw_fd(), EventType::Read, 4)
        .unwrap();
    thread::scope(|s| {
        s.spawn(|| {
            thread::sleep(Duration::from_millis(100));
            (&write_end).write_all(b"x").unwrap();
        });
        let start = Instant::now();
        let got: Vec<_> = ring.wait_timeout(PROMPTLY).unwrap().collect();
        assert!(start.elapsed() < PROMPTLY, "took {:?}", start.elapsed());
        assert_eq!(got.len(), 1, "{got:?}");
        let events = *got[0].1.as_ref().unwrap();
        assert_eq!(got[0].0, 4);
        assert_ne!(events & libc::POLLIN as u32, 0, "events {events:#x}");
    });
}

#[test]
fn wait_timeout_accepts_an_unbounded_timeout() {
    let ring = ring!(8);
    ring.add_nop(3).unwrap();
    let got: Vec<_> = ring.wait_timeout(Duration::MAX).unwrap().collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, 3);
}

/// Signals the SIGUSR1 handler installed by
/// [`wait_keeps_waiting_when_a_signal_interrupts_it`] has caught.
static SIGNALS_CAUGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Completions as plain values, with a failure's errno, to pass between
/// threads and compare.
type Reaped = Vec<(u64, Result<u32, Option<i32>>)>;

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS_CAUGHT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

#[test]
fn wait_keeps_waiting_when_a_signal_interrupts_it() {
    use std::os::unix::thread::JoinHandleExt;
    use std::sync::atomic::Ordering;

    // A handler without SA_RESTART, so the blocked io_uring_enter returns
    // EINTR to ringfence, which must wait again rather than fail or return.
    // SAFETY: a zeroed sigaction is valid; the handler only touches an
    // atomic, which is async-signal-safe, and no other test uses SIGUSR1.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = count_signal as *const () as usize;
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
            0
        );
    }
    let (read_end, write_end) = pipe();
    let ring = Arc::new(ring!(8));
    ring.add_poll_fd(read_end.as_raw_fd(), EventType::Read, 1)
        .unwrap();
    ring.submit().unwrap();

    let (sender, receiver) = mpsc::channel();
    let waiter = {
        let ring = Arc::clone(&ring);
        thread::spawn(move || {
            let got: Result<Reaped, String> = ring
                .wait()
                .map(|completions| {
                    completions
                        .map(|(ud, r)| (ud, r.map_err(|e| e.raw_os_error())))
                        .collect()
                })
                .map_err(|e| e.to_string());
            sender.send(got).unwrap();
        })
    };
    let before = SIGNALS_CAUGHT.load(Ordering::SeqCst);
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(30));
        // SAFETY: the thread is alive (it has not sent yet) and SIGUSR1 has
        // a handler installed above.
        let sent = unsafe { libc::pthread_kill(waiter.as_pthread_t(), libc::SIGUSR1) };
        assert_eq!(sent, 0);
    }
    let early = receiver.recv_timeout(Duration::from_millis(100));
    assert!(early.is_err(), "wait returned on a signal: {early:?}");
    assert!(
        SIGNALS_CAUGHT.load(Ordering::SeqCst) >= before + 3,
        "the signals never reached the waiting thread"
    );

    (&write_end).write_all(b"x").unwrap();
    let got = receiver
        .recv_timeout(PROMPTLY)
        .expect("the waiter never woke")
        .expect("wait failed after being interrupted");
    waiter.join().unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, 1);
    let events = *got[0].1.as_ref().unwrap();
    assert_ne!(events & libc::POLLIN as u32, 0, "events {events:#x}");
}

#[test]
fn cancelling_a_shared_label_cancels_every_operation_and_reports_the_oldest() {
    let ring = ring!(8);
    let (r1, _w1) = pipe();
    let (r2, _w2) = pipe();
    // Completed operations free their slots, which are reused last freed
    // first: the three below are stored in the reverse of the order they
    // are added in, the newest (a nop that completes at once) first.
    for ud in 1..=3 {
        ring.add_nop(ud).unwrap();
    }
    reap_by_user_data(&ring, 3);
    ring.add_poll_fd(r1.as_raw_fd(), EventType::Read, 7)
        .unwrap();
    ring.add_poll_fd(r2.as_raw_fd(), EventType::Read, 7)
        .unwrap();
    ring.add_nop(7).unwrap();
    ring.submit().unwrap();
    ring.async_cancel(7, 70).unwrap();
    let done = reap(&ring, 4);
    let cancel = done.iter().find(|(ud, _)| *ud == 70).expect("the cancel");
    assert_eq!(
        cancel.1.as_ref().ok(),
        Some(&0),
        "the oldest (a poll) was cancelled"
    );
    let sevens: Vec<Option<i32>> = done
        .iter()
        .filter(|(ud, _)| *ud == 7)
        .map(|(_, result)| common::errno(result))
        .collect();
    assert_eq!(
        sevens
            .iter()
            .filter(|e| **e == Some(libc::ECANCELED))
            .count(),
        2,
        "{done:?}"
    );
    assert_eq!(
        sevens.iter().filter(|e| e.is_none()).count(),
        1,
        "the nop: {done:?}"
    );
    assert_eq!(ring.in_flight(), 0);
    // With nothing under the label, the cancel finds nothing.
    ring.async_cancel(7, 71).unwrap();
    assert_eq!(common::errno(&only(&ring, 71)), Some(libc::ENOENT));
}

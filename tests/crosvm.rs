//! crosvm's own `io_uring` test suite (`io_uring/tests/uring.rs`), ported:
//! the same scenarios, written the way a crosvm user would port them, to
//! show their loops run unchanged. Where crosvm's tests read its private
//! fields, these ask the public API; where they leave threads blocked for
//! the OS to clean up, these wake and join them. crosvm's `add_read` /
//! `add_write` (single buffer) tests are not here: those operations come
//! with a later release.
// Needs the real kernel: Miri cannot make io_uring syscalls.
#![cfg(not(miri))]

mod common;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, IoSliceMut, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use ringfence::{
    Error, EventType, IoBufMut, URingAllowlist, URingContext, URingOperation, UserData,
};

/// One read of `len` bytes at `ptr`, as crosvm's tests add them.
///
/// # Safety
///
/// `ptr..ptr + len` must stay valid and untouched until the read's
/// completion has been returned by `wait`.
unsafe fn add_one_read(
    ring: &URingContext,
    ptr: *mut u8,
    len: usize,
    fd: RawFd,
    offset: Option<u64>,
    user_data: UserData,
) -> ringfence::Result<()> {
    // SAFETY: forwarded from the caller.
    let iovecs = Pin::from(vec![unsafe { IoBufMut::from_raw_parts(ptr, len) }].into_boxed_slice());
    // SAFETY: as above.
    unsafe { ring.add_readv(iovecs, fd, offset, user_data) }
}

/// One write of `len` bytes at `ptr`.
///
/// # Safety
///
/// As for [`add_one_read`], for reads.
unsafe fn add_one_write(
    ring: &URingContext,
    ptr: *const u8,
    len: usize,
    fd: RawFd,
    offset: Option<u64>,
    user_data: UserData,
) -> ringfence::Result<()> {
    // SAFETY: forwarded from the caller; the kernel only reads the buffer.
    let iovecs = Pin::from(
        vec![unsafe { IoBufMut::from_raw_parts(ptr.cast_mut(), len) }].into_boxed_slice(),
    );
    // SAFETY: as above.
    unsafe { ring.add_writev(iovecs, fd, offset, user_data) }
}

/// `IoSlice`s as the iovecs crosvm's `_iter` methods take, for writes.
fn iovecs_of<'a>(slices: impl IntoIterator<Item = IoSlice<'a>>) -> Vec<libc::iovec> {
    slices
        .into_iter()
        .map(|slice| libc::iovec {
            iov_base: slice.as_ptr() as *mut libc::c_void,
            iov_len: slice.len(),
        })
        .collect()
}

/// `IoSliceMut`s as the iovecs crosvm's `_iter` methods take, for reads.
fn iovecs_of_mut<'a>(slices: impl IntoIterator<Item = IoSliceMut<'a>>) -> Vec<libc::iovec> {
    slices
        .into_iter()
        .map(|mut slice| libc::iovec {
            iov_base: slice.as_mut_ptr().cast(),
            iov_len: slice.len(),
        })
        .collect()
}

#[test]
fn read_parallel() {
    // More reads than the queue holds; on NoSpace, reap one and move on.
    const QUEUE: usize = 10;
    const BLOCK: usize = 0x1000;
    // Declared before the ring, so that even a panic drops (and drains)
    // the ring before the buffer it reads into.
    let mut buf = vec![0u8; BLOCK * QUEUE];
    let ring = ring!(QUEUE);
    let file = common::scratch_file((BLOCK * QUEUE) as u64);
    for i in 0..QUEUE * 64 {
        let offset = (i % QUEUE) * BLOCK;
        // SAFETY: `buf` outlives the ring, which is dropped (and drained)
        // first at the end of the test. (crosvm's test shares the blocks
        // between reads in flight; the data is never checked.)
        match unsafe {
            add_one_read(
                &ring,
                buf[offset..].as_mut_ptr(),
                BLOCK,
                file.as_raw_fd(),
                Some(offset as u64),
                i as u64,
            )
        } {
            Ok(()) => {}
            Err(Error::NoSpace) => {
                let (_, result) = ring.wait().expect("wait").next().expect("a completion");
                assert_eq!(result.expect("read"), BLOCK as u32);
            }
            Err(e) => panic!("add: {e}"),
        }
    }
    drop(ring);
}

#[test]
fn read_readv() {
    let queue = 128;
    let mut buf = [0u8; 0x1000];
    let ring = ring!(queue);
    let file = common::scratch_file(0x1000 * 2);
    for i in 0..queue * 2 {
        let index = i as u64;
        let iovecs = iovecs_of_mut([IoSliceMut::new(&mut buf)]);
        // SAFETY: `wait` returns this read's completion before `buf` is
        // touched again.
        let (user_data, result) = unsafe {
            ring.add_readv_iter(
                iovecs.into_iter(),
                file.as_raw_fd(),
                Some((index % 2) * 0x1000),
                index,
            )
            .expect("readv");
            ring.wait().expect("wait").next().expect("a completion")
        };
        assert_eq!(user_data, index);
        assert_eq!(result.expect("read"), buf.len() as u32);
    }
}

#[test]
fn readv_vec() {
    const LEN: usize = 0x2000;
    let ring = ring!(128);
    let (mut a, mut b, mut c) = ([0u8; LEN], [0u8; LEN], [0u8; LEN]);
    let iovecs = iovecs_of_mut([
        IoSliceMut::new(&mut a),
        IoSliceMut::new(&mut b),
        IoSliceMut::new(&mut c),
    ]);
    let total: usize = iovecs.iter().map(|iov| iov.iov_len).sum();
    let file = common::scratch_file(total as u64 * 2);
    // SAFETY: `wait` returns the completion before the buffers are used.
    let (user_data, result) = unsafe {
        ring.add_readv_iter(iovecs.into_iter(), file.as_raw_fd(), Some(0), 55)
            .expect("readv");
        ring.wait().expect("wait").next().expect("a completion")
    };
    assert_eq!(user_data, 55);
    assert_eq!(result.expect("read"), total as u32);
}

#[test]
fn write_one_block() {
    let buf = [0u8; 4096];
    let ring = ring!(16);
    let mut file = common::scratch_file(0);
    file.write_all(&buf).expect("write");
    file.write_all(&buf).expect("write");
    // SAFETY: `wait` returns the completion before `buf` goes away.
    let (user_data, result) = unsafe {
        add_one_write(
            &ring,
            buf.as_ptr(),
            buf.len(),
            file.as_raw_fd(),
            Some(0),
            55,
        )
        .expect("writev");
        ring.wait().expect("wait").next().expect("a completion")
    };
    assert_eq!(user_data, 55);
    assert_eq!(result.expect("write"), buf.len() as u32);
}

#[test]
fn write_one_submit_poll() {
    let buf = [0u8; 4096];
    let ring = ring!(16);
    let mut file = common::scratch_file(0);
    file.write_all(&buf).expect("write");
    let epoll = common::epoll_watching(ring.as_raw_fd(), 1);
    let ready = common::epoll_ready(&epoll, 1);
    assert!(ready.is_empty(), "readable before anything completed");
    // SAFETY: `wait` returns the completion before `buf` goes away.
    unsafe {
        add_one_write(
            &ring,
            buf.as_ptr(),
            buf.len(),
            file.as_raw_fd(),
            Some(0),
            55,
        )
    }
    .expect("writev");
    ring.submit().expect("submit");
    let ready = common::epoll_ready(&epoll, 5000);
    assert_eq!(ready.len(), 1, "not readable after the write completed");
    assert_eq!(ready[0].1, 1, "the ring's token");
    let (user_data, result) = ring.wait().expect("wait").next().expect("a completion");
    assert_eq!(user_data, 55);
    assert_eq!(result.expect("write"), buf.len() as u32);
}

#[test]
fn writev_vec() {
    const LEN: usize = 0x2000;
    const OFFSET: u64 = 0x2000;
    let ring = ring!(128);
    let (a, b, c) = ([0xaau8; LEN], [0xffu8; LEN], [0x55u8; LEN]);
    let iovecs = iovecs_of([IoSlice::new(&a), IoSlice::new(&b), IoSlice::new(&c)]);
    let total: usize = iovecs.iter().map(|iov| iov.iov_len).sum();
    let mut file = common::scratch_file(total as u64 * 2);
    // SAFETY: `wait` returns the completion before the buffers go away.
    let (user_data, result) = unsafe {
        ring.add_writev_iter(iovecs.into_iter(), file.as_raw_fd(), Some(OFFSET), 55)
            .expect("writev");
        ring.wait().expect("wait").next().expect("a completion")
    };
    assert_eq!(user_data, 55);
    assert_eq!(result.expect("write"), total as u32);
    let mut back = [0u8; LEN];
    file.seek(SeekFrom::Start(OFFSET)).expect("seek");
    for fill in [0xaa, 0xff, 0x55] {
        file.read_exact(&mut back).expect("read");
        assert!(back.iter().all(|&byte| byte == fill));
    }
}

#[test]
fn fallocate_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("test");
    std::fs::write(&path, [0u8; 4096]).expect("write");
    let initial = std::fs::metadata(&path).expect("metadata").len();
    let size = initial + 50 * 1024 * 1024;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");

    let buf = [0u8; 4096];
    let ring = ring!(16);
    ring.add_fallocate(file.as_raw_fd(), 0, size, 0, 66)
        .expect("fallocate");
    let (user_data, result) = ring.wait().expect("wait").next().expect("a completion");
    assert_eq!(user_data, 66);
    assert_eq!(result.expect("fallocate"), 0);

    // A few writes, then an fsync.
    let mut pending = BTreeSet::new();
    for (user_data, offset) in [(67u64, 0u64), (68, 4096), (69, 8192)] {
        // SAFETY: `buf` outlives the loop below, which reaps every write.
        unsafe {
            add_one_write(
                &ring,
                buf.as_ptr(),
                buf.len(),
                file.as_raw_fd(),
                Some(offset),
                user_data,
            )
        }
        .expect("writev");
        pending.insert(user_data);
    }
    ring.add_fsync(file.as_raw_fd(), 70).expect("fsync");
    pending.insert(70);
    let mut waits = 0;
    while !pending.is_empty() && waits < 5 {
        for (user_data, result) in ring.wait().expect("wait") {
            assert!(result.is_ok(), "{user_data}: {result:?}");
            assert!(pending.remove(&user_data), "{user_data} came twice");
        }
        waits += 1;
    }
    assert!(pending.is_empty(), "{pending:?} never completed");

    let punch = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32;
    ring.add_fallocate(file.as_raw_fd(), initial, size - initial, punch, 68)
        .expect("punch");
    let (user_data, result) = ring.wait().expect("wait").next().expect("a completion");
    assert_eq!(user_data, 68);
    assert_eq!(result.expect("punch"), 0);
    drop(file);
    assert_eq!(std::fs::metadata(&path).expect("metadata").len(), size);
}

#[test]
fn dev_zero_readable() {
    let zero = File::open("/dev/zero").expect("/dev/zero");
    let ring = ring!(16);
    ring.add_poll_fd(zero.as_raw_fd(), EventType::Read, 454)
        .expect("poll");
    let (user_data, result) = ring.wait().expect("wait").next().expect("a completion");
    assert_eq!(user_data, 454);
    assert_eq!(result.expect("poll"), 1);
}

#[test]
fn queue_many_ebusy_retry() {
    // crosvm's name: on a kernel with NODROP (5.5 and later) the overflow
    // below never makes submit fail with EBUSY; what this checks is that
    // completions past the ring are all delivered.
    // Three queues of polls that complete at once: more than the
    // completion ring holds. The first wait returns what the ring holds;
    // the next brings back the rest (kept by the kernel) and the late one.
    let entries = 16;
    let zero = File::open("/dev/zero").expect("/dev/zero");
    let ring = ring!(entries);
    for batch in 0..3 {
        for i in 0..entries {
            ring.add_poll_fd(
                zero.as_raw_fd(),
                EventType::Read,
                (batch * entries + i) as u64,
            )
            .expect("poll");
        }
        ring.submit().expect("submit");
    }
    ring.add_poll_fd(zero.as_raw_fd(), EventType::Read, (entries * 3) as u64)
        .expect("poll");
    {
        let mut results = ring.wait().expect("wait");
        for _ in 0..entries * 2 {
            assert_eq!(results.next().expect("a completion").1.expect("poll"), 1);
        }
        assert!(results.next().is_none());
    }
    let mut results = ring.wait().expect("wait");
    for _ in 0..entries + 1 {
        assert_eq!(results.next().expect("a completion").1.expect("poll"), 1);
    }
    assert!(results.next().is_none());
}

#[test]
fn wake_with_nop() {
    const PIPE_READ: UserData = 0;
    const NOP: UserData = 1;
    const DATA: [u8; 16] = [0xf4; 16];
    let ring = Arc::new(ring!(4));
    let (reader, mut writer) = common::pipe();
    let (tx, rx) = channel();
    let waiter = {
        let ring = Arc::clone(&ring);
        thread::spawn(move || {
            let mut buf = [0u8; DATA.len()];
            // SAFETY: this thread waits for the read's completion below
            // before `buf` goes away.
            unsafe {
                add_one_read(
                    &ring,
                    buf.as_mut_ptr(),
                    buf.len(),
                    reader.as_raw_fd(),
                    Some(0),
                    PIPE_READ,
                )
            }
            .expect("readv");
            tx.send(()).expect("send");
            let (user_data, result) = ring.wait().expect("wait").next().expect("a completion");
            assert_eq!((user_data, result.expect("nop")), (NOP, 0));
            tx.send(()).expect("send");
            let (user_data, result) = ring.wait().expect("wait").next().expect("a completion");
            assert_eq!(user_data, PIPE_READ);
            assert_eq!(result.expect("read"), buf.len() as u32);
            assert_eq!(buf, DATA);
        })
    };
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the waiter started");
    ring.add_nop(NOP).expect("nop");
    ring.submit().expect("submit");
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the nop woke the waiter");
    writer.write_all(&DATA).expect("write");
    waiter.join().expect("waiter panicked");
}

#[test]
fn complete_from_any_thread() {
    const THREADS: usize = 7;
    let entries = 16;
    let total = entries * 3;
    let ring = Arc::new(ring!(entries));
    for batch in 0..3 {
        for i in 0..entries {
            ring.add_nop((batch * entries + i) as u64).expect("nop");
        }
        ring.submit().expect("submit");
    }
    let completed = Arc::new(Mutex::new(BTreeSet::new()));
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (ring, completed, barrier) = (
                Arc::clone(&ring),
                Arc::clone(&completed),
                Arc::clone(&barrier),
            );
            thread::spawn(move || {
                barrier.wait();
                'wait: while completed.lock().unwrap().len() < total {
                    for (user_data, result) in ring.wait().expect("wait") {
                        assert_eq!(result.expect("nop"), 0);
                        if user_data >= total as u64 {
                            continue; // A wake-up for the end of the test.
                        }
                        let mut completed = completed.lock().unwrap();
                        assert!(completed.insert(user_data), "{user_data} came twice");
                        if completed.len() >= total {
                            break 'wait;
                        }
                    }
                }
            })
        })
        .collect();
    // crosvm leaves threads still blocked in wait() for the OS to clean up;
    // here a nop for each wakes them so they can be joined.
    let mut wake = total as u64;
    while threads.iter().any(|t| !t.is_finished()) {
        if completed.lock().unwrap().len() >= total {
            if ring.add_nop(wake).is_ok() {
                wake += 1;
            }
            let _ = ring.submit();
        }
        thread::sleep(Duration::from_millis(5));
    }
    for t in threads {
        t.join().expect("reaper panicked");
    }
    assert_eq!(completed.lock().unwrap().len(), total);
}

/// Blocks while more than `entries` operations are in flight.
fn wait_for_room(in_flight: &Mutex<isize>, room: &Condvar, entries: isize) {
    let mut in_flight = in_flight.lock().unwrap();
    while *in_flight > entries {
        in_flight = room.wait(in_flight).unwrap();
    }
}

/// Submitters add nops (several threads' nops share user_data values, as
/// in crosvm's test) while `reapers` threads reap.
fn submit_and_reap_from_many_threads(submitters: usize, reapers: usize) {
    const ITERATIONS: usize = 113;
    const ENTRIES: usize = 16;
    let ring = Arc::new(ring!(ENTRIES));
    let in_flight = Arc::new(Mutex::new(0isize));
    let room = Arc::new(Condvar::new());
    let total = submitters * ITERATIONS;
    let completed = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for idx in 0..submitters {
        let (ring, in_flight, room) =
            (Arc::clone(&ring), Arc::clone(&in_flight), Arc::clone(&room));
        threads.push(thread::spawn(move || {
            for iter in 0..ITERATIONS {
                loop {
                    match ring.add_nop((idx * submitters + iter) as UserData) {
                        Ok(()) => *in_flight.lock().unwrap() += 1,
                        Err(Error::NoSpace) => {
                            wait_for_room(&in_flight, &room, ENTRIES as isize);
                            continue;
                        }
                        Err(e) => panic!("add_nop: {e}"),
                    }
                    match ring.submit() {
                        Ok(()) | Err(Error::KernelBusy(_)) => break,
                        Err(e) => panic!("submit: {e}"),
                    }
                }
            }
        }));
    }
    let reap = {
        let (ring, in_flight, room, completed) = (
            Arc::clone(&ring),
            Arc::clone(&in_flight),
            Arc::clone(&room),
            Arc::clone(&completed),
        );
        move || {
            while completed.load(Ordering::SeqCst) < total {
                for (user_data, result) in ring.wait().expect("wait") {
                    assert_eq!(result.expect("nop"), 0);
                    if user_data == u64::MAX {
                        continue; // A wake-up for the end of the test.
                    }
                    completed.fetch_add(1, Ordering::SeqCst);
                    let mut count = in_flight.lock().unwrap();
                    *count -= 1;
                    let notify = *count <= ENTRIES as isize;
                    drop(count);
                    if notify {
                        room.notify_all();
                    }
                }
            }
        }
    };
    let reaper_threads: Vec<_> = (0..reapers).map(|_| thread::spawn(reap.clone())).collect();
    for t in threads {
        t.join().expect("submitter panicked");
    }
    // Wake reapers blocked in wait() for a completion another one took.
    while reaper_threads.iter().any(|t| !t.is_finished()) {
        if completed.load(Ordering::SeqCst) >= total {
            let _ = ring.add_nop(u64::MAX);
            let _ = ring.submit();
        }
        thread::sleep(Duration::from_millis(5));
    }
    for t in reaper_threads {
        t.join().expect("reaper panicked");
    }
    assert_eq!(completed.load(Ordering::SeqCst), total);
    assert_eq!(*in_flight.lock().unwrap(), 0);
}

#[test]
fn submit_from_any_thread() {
    submit_and_reap_from_many_threads(7, 1);
}

#[test]
fn multi_thread_submit_and_complete() {
    // Ignored in crosvm (b/183722981); it runs here.
    submit_and_reap_from_many_threads(7, 3);
}

#[test]
fn restrict_ops() {
    const DATA: &[u8; 4] = b"foo!";
    let mut allowlist = URingAllowlist::new();
    allowlist.allow_submit_operation(URingOperation::Readv);
    let mut buf = [0u8; 4];
    let ring = ring!(128, Some(&allowlist));

    let mut file = common::scratch_file(4);
    file.write_all(DATA).expect("write");
    // SAFETY: `wait` returns the completion before `buf` is read.
    unsafe {
        add_one_read(
            &ring,
            buf.as_mut_ptr(),
            buf.len(),
            file.as_raw_fd(),
            Some(0),
            0,
        )
    }
    .expect("readv");
    let (_, result) = ring.wait().expect("wait").next().expect("a completion");
    assert!(result.is_ok(), "the read is allowed: {result:?}");
    assert_eq!(&buf, DATA);

    let mut file = common::scratch_file(4);
    // SAFETY: as above.
    unsafe { add_one_write(&ring, buf.as_ptr(), buf.len(), file.as_raw_fd(), Some(0), 0) }
        .expect("writev");
    let (_, result) = ring.wait().expect("wait").next().expect("a completion");
    assert_eq!(
        result.expect_err("the write is refused").raw_os_error(),
        Some(libc::EACCES)
    );
    let mut written = Vec::new();
    file.seek(SeekFrom::Start(0)).expect("seek");
    file.read_to_end(&mut written).expect("read");
    assert_eq!(written, [0; 4], "the refused write wrote");
    // This ring's allowlist lacks AsyncCancel: dropping it with nothing in
    // flight is the only clean way out.
    assert_eq!(ring.in_flight(), 0);
}

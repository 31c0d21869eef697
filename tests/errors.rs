//! Kernel tests for errors and bad input: refused arguments, io_uring
//! refused by the kernel, duplicate user_data, too many iovecs, a disabled
//! ring, and errno preservation in `From<Error> for io::Error`.
// Needs the real kernel: Miri cannot make io_uring syscalls (the
// simulated-kernel tests in src/sim run under Miri instead).
#![cfg(not(miri))]

mod common;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use common::{leaked_buf, pinned, pipe, reap, set_nonblocking};
use ringfence::{
    Error, EventType, IoBufMut, RegisterOperation, URingContext, MAX_ENTRIES, MAX_IOVECS,
};

#[test]
fn bad_entry_counts_are_errors_naming_the_range() {
    for entries in [0, MAX_ENTRIES + 1, usize::MAX] {
        for result in [
            URingContext::new(entries, None),
            URingContext::new_disabled(entries),
        ] {
            match result {
                Err(err @ Error::EntriesOutOfRange(n)) => {
                    assert_eq!(n, entries);
                    let msg = err.to_string();
                    assert!(msg.contains(&format!("1 to {MAX_ENTRIES}")), "{msg}");
                    assert!(msg.contains(&entries.to_string()), "{msg}");
                    assert_eq!(io::Error::from(err).kind(), io::ErrorKind::InvalidInput);
                }
                other => panic!("{entries} entries: expected EntriesOutOfRange, got {other:?}"),
            }
        }
    }
}

#[test]
fn max_entries_is_accepted() {
    // Skips (or fails under CI) only if io_uring itself is missing.
    drop(ring!(1));
    match URingContext::new(MAX_ENTRIES, None) {
        Ok(ring) => {
            assert_eq!(ring.sq_entries() as usize, MAX_ENTRIES);
            assert_eq!(ring.cq_entries() as usize, 2 * MAX_ENTRIES);
            ring.add_nop(1).expect("add_nop");
            assert_eq!(reap(&ring, 1)[0].0, 1);
        }
        Err(Error::OutOfLockedMemory) => {
            // Under CI a green run must mean the ring was created.
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{MAX_ENTRIES} entries: not enough locked memory under CI"
            );
            eprintln!("{MAX_ENTRIES} entries: not enough locked memory")
        }
        Err(e) => panic!("{MAX_ENTRIES} entries refused: {e}"),
    }
}

/// io_uring refused by a seccomp filter, on the architectures seccompiler
/// builds filters for. Its filters check each call's `AUDIT_ARCH` and kill
/// the process on a call made through another architecture's ABI (such as
/// 32-bit `int 0x80` on x86_64); the filtered thread makes none.
#[cfg(all(
    target_endian = "little",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )
))]
mod seccomp {
    use super::*;

    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

    /// Makes `io_uring_setup` fail with `errno` on the calling thread, and
    /// allows every other system call. `apply_filter` installs the filter
    /// without `SECCOMP_FILTER_FLAG_TSYNC`, so it applies to this thread (and
    /// threads it would spawn) only, not to the rest of the test process.
    fn fail_io_uring_setup_on_this_thread(errno: i32) {
        let arch = std::env::consts::ARCH
            .try_into()
            .expect("seccompiler supports the architectures this module is built for");
        let filter: BpfProgram = SeccompFilter::new(
            [(libc::SYS_io_uring_setup, vec![])].into(),
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch,
        )
        .and_then(BpfProgram::try_from)
        .expect("building the seccomp filter");
        seccompiler::apply_filter(&filter).expect("installing the seccomp filter");
    }

    /// An errno for io_uring_setup, how to recognise the error it must become,
    /// and what that error's message must mention.
    type SetupCase = (i32, fn(&Error) -> bool, &'static [&'static str]);

    #[test]
    fn refused_io_uring_setup_gives_an_error_naming_cause_and_remedy() {
        let cases: [SetupCase; 3] = [
            (
                libc::ENOSYS,
                |e| matches!(e, Error::IoUringUnavailable),
                &["ENOSYS", "seccomp"],
            ),
            (
                libc::EPERM,
                |e| matches!(e, Error::IoUringDisabled),
                &["EPERM", "kernel.io_uring_disabled", "set it to 0"],
            ),
            (
                libc::ENOMEM,
                |e| matches!(e, Error::OutOfLockedMemory),
                &["ENOMEM", "RLIMIT_MEMLOCK", "fewer entries"],
            ),
        ];
        // Skips (or fails under CI) only if io_uring itself is missing.
        drop(ring!(8));
        for (errno, is_expected_variant, needles) in cases {
            let result = std::thread::spawn(move || {
                fail_io_uring_setup_on_this_thread(errno);
                // Both ways to create a ring go through io_uring_setup.
                (
                    URingContext::new(8, None).err(),
                    URingContext::new_disabled(8).err(),
                )
            })
            .join()
            .expect("seccomp thread panicked");
            for err in [result.0, result.1] {
                let err = err
                    .unwrap_or_else(|| panic!("io_uring_setup was not refused with errno {errno}"));
                assert!(is_expected_variant(&err), "errno {errno}: got {err:?}");
                let msg = err.to_string();
                for needle in needles {
                    assert!(
                        msg.contains(needle),
                        "errno {errno}: {msg:?} does not mention {needle:?}"
                    );
                }
                assert_eq!(io::Error::from(err).raw_os_error(), Some(errno));
            }
        }
        // The filter stayed on its thread: this one still gets rings.
        URingContext::new(8, None).expect("io_uring_setup refused outside the filtered thread");
    }
}

/// Tries to add every kind of operation with `ud`, and asserts that those
/// that pin caller memory (readv, writev) are refused as sharing a label,
/// and, when `pinned_in_flight`, every other kind too; refusals leave
/// `in_flight` unchanged.
fn assert_label_rule(
    ring: &URingContext,
    ud: u64,
    pinned_in_flight: bool,
    pipe_fd: RawFd,
    file_fd: RawFd,
) {
    let before = ring.in_flight();
    let refused = |what: &str, result: ringfence::Result<()>| match result {
        Err(Error::DuplicateUserData(got)) => assert_eq!(got, ud, "{what}"),
        other => panic!(
            "{what} with in-flight user_data {ud}: expected DuplicateUserData, got {other:?}"
        ),
    };
    let buf = || leaked_buf(8, 0x5a);
    // SAFETY: the buffer is leaked, so it outlives any operation using it;
    // a refused add never reaches the kernel.
    refused("readv", unsafe {
        ring.add_readv(pinned(vec![buf().0]), pipe_fd, None, ud)
    });
    // SAFETY: as above.
    refused("writev", unsafe {
        ring.add_writev(pinned(vec![buf().0]), pipe_fd, None, ud)
    });
    let iov = buf().0.as_iovec();
    // SAFETY: the iovec describes a leaked buffer.
    refused("readv_iter", unsafe {
        ring.add_readv_iter(std::iter::once(iov), pipe_fd, None, ud)
    });
    // SAFETY: as above.
    refused("writev_iter", unsafe {
        ring.add_writev_iter(std::iter::once(iov), pipe_fd, None, ud)
    });
    if pinned_in_flight {
        refused("nop", ring.add_nop(ud));
        refused("fsync", ring.add_fsync(file_fd, ud));
        refused("fallocate", ring.add_fallocate(file_fd, 0, 4096, 0, ud));
        refused("poll", ring.add_poll_fd(pipe_fd, EventType::Read, ud));
        refused("remove_poll_fd", ring.remove_poll_fd(ud, ud));
        refused("async_cancel", ring.async_cancel(ud, ud));
    }
    assert_eq!(
        ring.in_flight(),
        before,
        "a refused add changed what is in flight"
    );
}

#[test]
fn sharing_a_label_with_memory_pinned_is_refused_for_every_kind_and_disturbs_nothing() {
    let ring = ring!(32);
    let file = tempfile::tempfile().expect("tempfile");
    let (poll_r, mut poll_w) = pipe();
    let (read_r, mut read_w) = pipe();
    const POLL: u64 = 10;
    const READ: u64 = 20;
    const QUEUED: u64 = 30;
    const POSTED: u64 = 40;

    // A poll that has not fired, a readv waiting on an empty pipe, a nop
    // whose completion is posted but not reaped, and a nop queued but not
    // yet submitted.
    ring.add_poll_fd(poll_r.as_raw_fd(), EventType::Read, POLL)
        .expect("poll");
    let (buf, view) = leaked_buf(16, 0xee);
    // SAFETY: the buffer is leaked; the test reads it only after the readv
    // has completed.
    unsafe { ring.add_readv(pinned(vec![buf]), read_r.as_raw_fd(), None, READ) }.expect("readv");
    ring.add_nop(POSTED).expect("nop");
    ring.submit().expect("submit");
    ring.add_nop(QUEUED).expect("queued nop");
    assert_eq!(ring.in_flight(), 4);

    for ud in [POLL, READ, QUEUED, POSTED] {
        let pinned_in_flight = ud == READ;
        assert_label_rule(
            &ring,
            ud,
            pinned_in_flight,
            read_r.as_raw_fd(),
            file.as_raw_fd(),
        );
    }

    // Only the nops can complete yet, once each: the refused adds queued
    // nothing.
    let mut first = reap(&ring, 2);
    first.sort_by_key(|(ud, _)| *ud);
    assert_eq!(first.len(), 2, "{first:?}");
    assert_eq!((first[0].0, first[0].1.as_ref().ok()), (QUEUED, Some(&0)));
    assert_eq!((first[1].0, first[1].1.as_ref().ok()), (POSTED, Some(&0)));
    assert_eq!(ring.in_flight(), 2);

    // The originals complete normally, with their own results.
    read_w
        .write_all(b"for the original")
        .expect("write read pipe");
    poll_w.write_all(b"x").expect("write poll pipe");
    let mut done = reap(&ring, 2);
    done.sort_by_key(|(ud, _)| *ud);
    assert_eq!(done.len(), 2, "{done:?}");
    assert_eq!(done[0].0, POLL);
    let revents = *done[0].1.as_ref().expect("poll");
    assert_ne!(
        revents & libc::POLLIN as u32,
        0,
        "poll revents {revents:#x}"
    );
    assert_eq!(done[1].0, READ);
    assert_eq!(*done[1].1.as_ref().expect("readv"), 16);
    assert_eq!(view, b"for the original");
    assert_eq!(ring.in_flight(), 0);

    // Once completed, a user_data is free again, for any kind, pinning
    // memory or not.
    ring.add_nop(POLL).expect("reuse after completion");
    let (buf, _) = leaked_buf(4, 0);
    // SAFETY: the buffer is leaked.
    unsafe { ring.add_readv(pinned(vec![buf]), file.as_raw_fd(), Some(0), READ) }
        .expect("reuse after completion");
    ring.add_fsync(file.as_raw_fd(), QUEUED)
        .expect("reuse after completion");
    ring.add_fallocate(file.as_raw_fd(), 0, 4096, 0, POSTED)
        .expect("reuse after completion");
    let mut reused = reap(&ring, 4);
    reused.sort_by_key(|(ud, _)| *ud);
    let uds: Vec<u64> = reused.iter().map(|(ud, _)| *ud).collect();
    assert_eq!(uds, [POLL, READ, QUEUED, POSTED]);
    for (ud, result) in &reused {
        assert!(result.is_ok(), "reused user_data {ud}: {result:?}");
    }
}

#[test]
fn operations_that_pin_nothing_share_a_label_and_each_completes() {
    let ring = ring!(32);
    let file = tempfile::tempfile().expect("tempfile");
    let (r, mut w) = pipe();
    const SHARED: u64 = 3;
    ring.add_nop(SHARED).expect("nop");
    ring.add_nop(SHARED)
        .expect("a second nop with the same label");
    ring.add_fsync(file.as_raw_fd(), SHARED).expect("fsync");
    ring.add_fallocate(file.as_raw_fd(), 0, 4096, 0, SHARED)
        .expect("fallocate");
    ring.add_poll_fd(r.as_raw_fd(), EventType::Read, SHARED)
        .expect("poll");
    ring.add_poll_fd(r.as_raw_fd(), EventType::Read, SHARED)
        .expect("a second poll");
    ring.submit().expect("submit");
    assert_eq!(ring.in_flight(), 6);
    // Nothing that pins memory may join them.
    assert_label_rule(&ring, SHARED, false, r.as_raw_fd(), file.as_raw_fd());
    w.write_all(b"x").expect("write");
    let done = reap(&ring, 6);
    assert!(
        done.iter()
            .all(|(ud, result)| *ud == SHARED && result.is_ok()),
        "{done:?}"
    );
    assert_eq!(ring.in_flight(), 0);
}

/// `count` one-byte iovecs into one leaked buffer, and a view of it.
fn one_byte_iovecs(count: usize, fill: u8) -> (Vec<IoBufMut<'static>>, &'static [u8]) {
    let (buf, view) = leaked_buf(count, fill);
    let base = buf.as_ptr();
    let iovecs = (0..count)
        // SAFETY: each iovec is one distinct byte of a leaked buffer, used
        // only by the operation it is handed to until its completion.
        .map(|i| unsafe { IoBufMut::from_raw_parts(base.add(i), 1) })
        .collect();
    (iovecs, view)
}

#[test]
fn more_than_max_iovecs_is_refused_and_max_iovecs_works() {
    let ring = ring!(8);
    let zero = File::open("/dev/zero").expect("/dev/zero");
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");

    let too_many = MAX_IOVECS + 1;
    let expect_refused = |what: &str, result: ringfence::Result<()>| match result {
        Err(err @ Error::TooManyIovecs(n)) => {
            assert_eq!(n, too_many, "{what}");
            assert!(err.to_string().contains(&MAX_IOVECS.to_string()), "{err}");
        }
        other => panic!("{what} with {too_many} iovecs: expected TooManyIovecs, got {other:?}"),
    };
    let (iovecs, _) = one_byte_iovecs(too_many, 0);
    let raw: Vec<libc::iovec> = iovecs.iter().map(IoBufMut::as_iovec).collect();
    // SAFETY: the iovecs describe a leaked buffer.
    expect_refused("readv", unsafe {
        ring.add_readv(pinned(iovecs), zero.as_raw_fd(), Some(0), 1)
    });
    let (iovecs, _) = one_byte_iovecs(too_many, 0);
    // SAFETY: as above.
    expect_refused("writev", unsafe {
        ring.add_writev(pinned(iovecs), null.as_raw_fd(), Some(0), 1)
    });
    // SAFETY: as above.
    expect_refused("readv_iter", unsafe {
        ring.add_readv_iter(raw.iter().copied(), zero.as_raw_fd(), Some(0), 1)
    });
    // SAFETY: as above.
    expect_refused("writev_iter", unsafe {
        ring.add_writev_iter(raw.iter().copied(), null.as_raw_fd(), Some(0), 1)
    });
    assert_eq!(
        ring.in_flight(),
        0,
        "a refused add left something in flight"
    );

    // Exactly MAX_IOVECS is fine, and the kernel fills every one.
    let (iovecs, view) = one_byte_iovecs(MAX_IOVECS, 0x77);
    // SAFETY: as above; the view is read only after the completion.
    unsafe { ring.add_readv(pinned(iovecs), zero.as_raw_fd(), Some(0), 1) }
        .expect("readv of MAX_IOVECS");
    let raw: Vec<libc::iovec> = one_byte_iovecs(MAX_IOVECS, 0)
        .0
        .iter()
        .map(IoBufMut::as_iovec)
        .collect();
    // SAFETY: as above.
    unsafe { ring.add_writev_iter(raw.into_iter(), null.as_raw_fd(), Some(0), 2) }
        .expect("writev_iter of MAX_IOVECS");
    let mut done = reap(&ring, 2);
    done.sort_by_key(|(ud, _)| *ud);
    assert_eq!(done.len(), 2);
    assert_eq!(*done[0].1.as_ref().expect("readv"), MAX_IOVECS as u32);
    assert_eq!(*done[1].1.as_ref().expect("writev_iter"), MAX_IOVECS as u32);
    assert!(view.iter().all(|b| *b == 0), "readv left iovecs unfilled");
}

#[test]
fn io_error_from_error_keeps_the_kernel_errno() {
    let ring = ring!(8);
    // Enabling an enabled ring: EBADFD.
    let err = ring.enable().expect_err("enable on an enabled ring");
    match &err {
        Error::Register { call, source } => {
            assert_eq!(*call, RegisterOperation::EnableRings);
            assert_eq!(source.raw_os_error(), Some(libc::EBADFD));
        }
        other => panic!("expected Error::Register, got {other:?}"),
    }
    assert_eq!(io::Error::from(err).raw_os_error(), Some(libc::EBADFD));

    // Registering a file descriptor that is not open: EBADF.
    let err = ring.register_eventfd(-1).expect_err("register_eventfd(-1)");
    assert!(
        matches!(
            err,
            Error::Register {
                call: RegisterOperation::Eventfd,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(io::Error::from(err).raw_os_error(), Some(libc::EBADF));
}

#[test]
fn refused_duplicate_readv_never_reaches_the_kernel() {
    // A refused duplicate readv must not have been handed to the kernel: the
    // data written afterwards goes to the original readv, and data beyond it
    // stays in the pipe for a plain read.
    let ring = ring!(8);
    let (mut r, mut w) = pipe();
    let (buf, view) = leaked_buf(4, 0);
    // SAFETY: the buffer is leaked and read only after the completion.
    unsafe { ring.add_readv(pinned(vec![buf]), r.as_raw_fd(), None, 5) }.expect("readv");
    ring.submit().expect("submit");
    let (dup, dup_view) = leaked_buf(4, 0x33);
    // SAFETY: as above; the add is refused.
    let refused = unsafe { ring.add_readv(pinned(vec![dup]), r.as_raw_fd(), None, 5) };
    assert!(
        matches!(refused, Err(Error::DuplicateUserData(5))),
        "{refused:?}"
    );
    w.write_all(b"abcdEFGH").expect("write");
    let done = reap(&ring, 1);
    assert_eq!((done[0].0, done[0].1.as_ref().ok()), (5, Some(&4)));
    assert_eq!(view, b"abcd");
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        dup_view, [0x33; 4],
        "the refused readv's buffer was written"
    );
    // Non-blocking, so a pipe emptied behind our back fails instead of hanging.
    set_nonblocking(r.as_raw_fd());
    let mut rest = [0u8; 4];
    r.read_exact(&mut rest).expect("plain read");
    assert_eq!(&rest, b"EFGH");
}

#[test]
fn an_offset_the_kernel_cannot_take_is_refused_at_add_time_and_never_read_as_none() {
    let ring = ring!(8);
    let file = tempfile::tempfile().expect("tempfile");
    (&file).write_all(b"0123456789").expect("write");
    for offset in [u64::MAX, u64::MAX - 1, ringfence::MAX_FILE_OFFSET + 1] {
        let (buf, view) = leaked_buf(4, 0xcc);
        // SAFETY: the buffer is leaked; a refused add never reaches the
        // kernel.
        let added = unsafe { ring.add_readv(pinned(vec![buf]), file.as_raw_fd(), Some(offset), 1) };
        match added {
            Err(err @ Error::InvalidOffset(got)) => {
                assert_eq!(got, offset);
                assert!(err.to_string().contains("None"), "{err}");
                assert_eq!(io::Error::from(err).kind(), io::ErrorKind::InvalidInput);
            }
            other => panic!("readv at {offset:#x}: {other:?}"),
        }
        let (buf, _) = leaked_buf(4, 0xcc);
        // SAFETY: as above.
        let added =
            unsafe { ring.add_writev(pinned(vec![buf]), file.as_raw_fd(), Some(offset), 2) };
        assert!(
            matches!(added, Err(Error::InvalidOffset(_))),
            "writev at {offset:#x}: {added:?}"
        );
        let added = ring.add_fallocate(file.as_raw_fd(), offset, 1, 0, 3);
        assert!(
            matches!(added, Err(Error::InvalidOffset(_))),
            "fallocate at {offset:#x}: {added:?}"
        );
        assert_eq!(view, [0xcc; 4]);
    }
    assert_eq!(ring.in_flight(), 0);
    // The largest offset is accepted and is absolute: far past the end,
    // where a read at the current position (back at 0) would find data.
    (&file).seek(SeekFrom::Start(0)).expect("seek");
    let (buf, _) = leaked_buf(4, 0xcc);
    // SAFETY: the buffer is leaked.
    unsafe {
        ring.add_readv(
            pinned(vec![buf]),
            file.as_raw_fd(),
            Some(ringfence::MAX_FILE_OFFSET - 8),
            4,
        )
    }
    .expect("the largest offset");
    let (ud, result) = reap(&ring, 1).pop().unwrap();
    assert_eq!(
        (ud, result.ok()),
        (4, Some(0)),
        "end of file, not the current position"
    );
}

//! How the path operations encode their SQEs.

use super::*;
use crate::abi::IosqeFlags;

fn raw(fd: i32) -> Target {
    Target::raw_for_crosvm_api(fd)
}

/// The NUL-terminated string at `addr`.
fn string_at(addr: u64) -> Vec<u8> {
    // SAFETY: the tests only pass addresses of paths their `Prepared`
    // still keeps alive.
    unsafe { std::ffi::CStr::from_ptr(addr as usize as *const libc::c_char) }
        .to_bytes()
        .to_vec()
}

#[test]
fn openat_carries_its_directory_path_flags_and_mode() {
    let prepared = Openat::new("a/b", libc::O_RDONLY | libc::O_CLOEXEC, 0o640)
        .dir(raw(7))
        .prepare()
        .unwrap();
    let sqe = &prepared.sqe;
    assert_eq!((sqe.fd(), sqe.len(), sqe.file_index()), (7, 0o640, 0));
    assert_eq!(sqe.op_flags(), (libc::O_RDONLY | libc::O_CLOEXEC) as u32);
    assert_eq!(string_at(sqe.addr()), b"a/b");
    assert!(prepared.keep_alive.owned.is_some(), "the path is kept");
    let cwd = Openat::new("/x", 0, 0).prepare().unwrap().sqe;
    assert_eq!(cwd.fd(), libc::AT_FDCWD);
}

#[test]
fn an_open_into_a_slot_encodes_the_slot_plus_one_and_alloc_as_the_all_ones_index() {
    let at = |install: fn(Openat) -> Openat| install(Openat::new("f", 0, 0)).prepare();
    assert_eq!(at(|o| o.fixed_slot(0)).unwrap().sqe.file_index(), 1);
    assert_eq!(at(|o| o.fixed_slot(9)).unwrap().sqe.file_index(), 10);
    assert_eq!(
        at(Openat::fixed_slot_alloc).unwrap().sqe.file_index(),
        u32::MAX
    );
    for index in [u32::MAX - 1, u32::MAX] {
        assert!(matches!(
            Openat::new("f", 0, 0).fixed_slot(index).prepare(),
            Err(Error::FixedSlotOutOfRange(i)) if i == index
        ));
    }
    let two = Openat2::new("f", 0, 0, ResolveFlags::empty())
        .fixed_slot(4)
        .prepare()
        .unwrap();
    assert_eq!(two.sqe.file_index(), 5);
}

#[test]
fn openat2_points_at_an_open_how_it_keeps() {
    let prepared = Openat2::new(
        "dir/file",
        libc::O_CREAT | libc::O_WRONLY,
        0o600,
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )
    .prepare()
    .unwrap();
    let sqe = &prepared.sqe;
    assert_eq!((sqe.fd(), sqe.len()), (libc::AT_FDCWD, 24));
    assert_eq!(string_at(sqe.addr()), b"dir/file");
    // `off` and `addr2` are one field.
    // SAFETY: the `Prepared` keeps the `open_how` alive.
    let how = unsafe { &*(sqe.offset() as usize as *const OpenHow) };
    assert_eq!(how.flags, (libc::O_CREAT | libc::O_WRONLY) as u64);
    assert_eq!((how.mode, how.resolve), (0o600, 0x0c));
}

#[test]
fn close_never_sets_fixed_file_and_a_slot_goes_in_file_index_with_fd_0() {
    let slot = Close::fixed_slot(2).prepare().unwrap().sqe;
    assert_eq!((slot.fd(), slot.file_index()), (0, 3));
    assert_eq!(slot.flags(), IosqeFlags::empty());
    assert!(matches!(
        Close::fixed_slot(u32::MAX).prepare(),
        Err(Error::FixedSlotOutOfRange(u32::MAX))
    ));
    let file = std::fs::File::open("/dev/null").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let sqe = Close::new(OwnedFd::from(file)).prepare().unwrap().sqe;
    assert_eq!((sqe.fd(), sqe.file_index()), (fd, 0));
    assert_eq!(sqe.flags(), IosqeFlags::empty());
    // The SQE never reached a kernel: close the descriptor it took.
    // SAFETY: `fd` was released by the close's `prepare` and nothing else
    // owns it.
    drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
}

#[test]
fn statx_carries_path_mask_buffer_and_flags() {
    let mut buf = std::mem::MaybeUninit::<libc::statx>::uninit();
    // SAFETY: the SQE is only inspected, never submitted.
    let statx = unsafe { Statx::new("p", libc::AT_SYMLINK_NOFOLLOW, 0x7ff, buf.as_mut_ptr()) };
    let prepared = statx.dir(raw(4)).prepare().unwrap();
    let sqe = &prepared.sqe;
    assert_eq!((sqe.fd(), sqe.len()), (4, 0x7ff));
    assert_eq!(sqe.offset(), buf.as_mut_ptr() as u64, "addr2 is the buffer");
    assert_eq!(sqe.op_flags(), libc::AT_SYMLINK_NOFOLLOW as u32);
    assert_eq!(string_at(sqe.addr()), b"p");
}

#[test]
fn a_fixed_directory_and_a_nul_in_a_path_are_refused_at_add_time() {
    let fixed = Target::fixed(0);
    assert!(matches!(
        Openat::new("f", 0, 0).dir(fixed.clone()).prepare(),
        Err(Error::FixedFileNotSupported(URingOperation::Openat))
    ));
    assert!(matches!(
        Openat2::new("f", 0, 0, ResolveFlags::empty())
            .dir(fixed.clone())
            .prepare(),
        Err(Error::FixedFileNotSupported(URingOperation::Openat2))
    ));
    // SAFETY: refused before any SQE is built.
    let statx = unsafe { Statx::new("f", 0, 0, std::ptr::null_mut()) };
    assert!(matches!(
        statx.dir(fixed).prepare(),
        Err(Error::FixedFileNotSupported(URingOperation::Statx))
    ));
    match Openat::new("a\0b", 0, 0).prepare() {
        Err(Error::NulInPath(path)) => assert_eq!(path, Path::new("a\0b")),
        other => panic!("{:?}", other.err()),
    }
}

/// What the kernel answers when the four operations that refuse a
/// registered file at add time are sent with `IOSQE_FIXED_FILE` anyway:
/// `EBADF`, and a close so refused leaves its descriptor open. The public
/// API cannot build such an SQE (that is the point), so this test lives
/// here, where it can, rather than in `tests/`; it runs on the real kernel
/// and skips (failing under CI) where io_uring is unusable, as
/// `tests/common` does.
#[test]
#[cfg_attr(miri, ignore = "needs the real kernel's io_uring")]
fn the_kernel_refuses_fixed_file_on_openat_openat2_close_and_statx_with_ebadf() {
    use crate::op::OpBatch;
    use std::os::fd::{AsRawFd, FromRawFd};

    let ring = match crate::URingContext::new(8, None) {
        Ok(ring) => ring,
        Err(
            e @ (Error::IoUringUnavailable | Error::IoUringDisabled | Error::OutOfLockedMemory),
        ) => {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "io_uring must be usable under CI: {e}"
            );
            eprintln!("skipping: {e}");
            return;
        }
        Err(e) => panic!("creating a ring failed: {e}"),
    };
    let file = std::fs::File::open("/dev/null").unwrap();
    let fd = file.as_raw_fd();
    let mut buf = std::mem::MaybeUninit::<libc::statx>::uninit();
    let flags = libc::O_RDONLY | libc::O_CLOEXEC;
    // SAFETY: `buf` outlives the ring, which reaps the statx below (and
    // the kernel refuses it before writing anything).
    let statx = unsafe { Statx::new("/dev/null", 0, libc::STATX_SIZE, buf.as_mut_ptr()) };
    let prepared = [
        Openat::new("/dev/null", flags, 0).prepare(),
        Openat2::new("/dev/null", flags, 0, ResolveFlags::empty()).prepare(),
        Close::new(OwnedFd::from(file)).prepare(),
        statx.prepare(),
    ];
    let mut batch = OpBatch::new();
    for (ud, op) in prepared.into_iter().enumerate() {
        let op = op.unwrap().with_flags(IosqeFlags::FIXED_FILE);
        batch.ops_mut().push((op, ud as u64));
    }
    ring.add_batch(&mut batch).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut results = std::collections::HashMap::new();
    while results.len() < 4 && std::time::Instant::now() < deadline {
        results.extend(
            ring.wait_timeout(std::time::Duration::from_secs(1))
                .unwrap(),
        );
    }
    assert_eq!(results.len(), 4, "{results:?}");
    for (ud, op) in ["openat", "openat2", "close", "statx"].iter().enumerate() {
        let errno = results[&(ud as u64)]
            .as_ref()
            .err()
            .and_then(|e| e.raw_os_error());
        assert_eq!(
            errno,
            Some(libc::EBADF),
            "{op} with FIXED_FILE: {:?}",
            results[&(ud as u64)]
        );
    }
    // The refused close closed nothing: the descriptor is still open.
    // SAFETY: F_GETFD takes no pointer.
    let still_open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
    assert!(still_open, "the refused close closed it");
    // SAFETY: the close's `prepare` gave the descriptor up and the kernel
    // refused it, so nothing else owns it.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
}

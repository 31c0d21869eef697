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
    // A real descriptor needs the OS, which Miri isolates.
    if cfg!(miri) {
        return;
    }
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

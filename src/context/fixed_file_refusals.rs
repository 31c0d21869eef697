//! What the kernel answers when operations that refuse a registered file
//! are sent with `IOSQE_FIXED_FILE` anyway. It sits with the context, which
//! may use the operations' crate-private parts, because the public API
//! cannot build such an SQE (that is the point).

use std::os::fd::OwnedFd;

use crate::abi::IosqeFlags;
use crate::op::{Close, Openat, Openat2, Operation, Statx};
use crate::Error;
use crate::ResolveFlags;

/// The four operations that refuse a registered file at add time, sent
/// with `IOSQE_FIXED_FILE` anyway: the kernel fails each with `EBADF`, and
/// a close so refused leaves its descriptor open. Runs on the real kernel
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

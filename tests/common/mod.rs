//! Helpers shared by the kernel tests.
#![allow(dead_code)]

use std::pin::Pin;

use ringfence::{Error, IoBufMut, URingAllowlist, URingContext};

/// Creates a ring, or returns `None` (after saying why) when this machine
/// has no usable io_uring. Under CI (`CI=true`) a missing io_uring fails the
/// test instead, so a green CI run always means the kernel path ran.
pub fn ring_or_skip(entries: usize, allowlist: Option<&URingAllowlist>) -> Option<URingContext> {
    match URingContext::new(entries, allowlist) {
        Ok(ring) => Some(ring),
        Err(
            e @ (Error::IoUringUnavailable | Error::IoUringDisabled | Error::OutOfLockedMemory),
        ) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "io_uring must be usable under CI: {e}"
            );
            eprintln!("skipping: {e}");
            None
        }
        Err(e) => panic!("URingContext::new({entries}) failed: {e}"),
    }
}

/// Creates a ring or returns from the calling test, skipping it (see
/// [`ring_or_skip`]).
#[macro_export]
macro_rules! ring {
    ($entries:expr) => {
        $crate::ring!($entries, None)
    };
    ($entries:expr, $allowlist:expr) => {
        match $crate::common::ring_or_skip($entries, $allowlist) {
            Some(ring) => ring,
            None => return,
        }
    };
}

/// A heap buffer of `len` bytes that lives for the rest of the process, as
/// `IoBufMut<'static>` requires. Returns the buffer and a raw view of it for
/// checking its contents after the operation has completed.
pub fn leaked_buf(len: usize, fill: u8) -> (IoBufMut<'static>, &'static [u8]) {
    let buf: &'static mut [u8] = Box::leak(vec![fill; len].into_boxed_slice());
    let ptr = buf.as_mut_ptr();
    // SAFETY: the leaked buffer lives forever; the shared view is only read
    // by tests after the operation writing it has completed.
    let view = unsafe { std::slice::from_raw_parts(ptr, len) };
    (IoBufMut::new(buf), view)
}

/// Pins iovecs the way `add_readv` / `add_writev` take them.
pub fn pinned(bufs: Vec<IoBufMut<'static>>) -> Pin<Box<[IoBufMut<'static>]>> {
    Box::into_pin(bufs.into_boxed_slice())
}

/// Waits until `count` completions have been reaped, returning them in the
/// order they came. Panics after 10 s rather than hang the test run.
pub fn reap(ring: &URingContext, count: usize) -> Vec<(u64, std::io::Result<u32>)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out with {} of {count} completions",
            out.len()
        );
        out.extend(ring.wait().expect("wait failed"));
    }
    out
}

/// The running kernel's (major, minor) version, from uname.
pub fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts
        .next()
        .and_then(|p| p.parse().ok())
        .expect("kernel major");
    let minor = parts
        .next()
        .and_then(|p| p.parse().ok())
        .expect("kernel minor");
    (major, minor)
}

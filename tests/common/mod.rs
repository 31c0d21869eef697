//! Helpers shared by the kernel tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;

use ringfence::{Error, IoBufMut, URingAllowlist, URingContext};

/// The ring `create` made, or `None` (after saying why) when this machine
/// has no usable io_uring. Under CI (`CI=true`) a missing io_uring fails the
/// test instead, so a green CI run always means the kernel path ran.
pub fn usable_or_skip(created: ringfence::Result<URingContext>) -> Option<URingContext> {
    match created {
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
        Err(e) => panic!("creating a ring failed: {e}"),
    }
}

/// `URingContext::new`, or `None` when io_uring is unusable here (see
/// [`usable_or_skip`]).
pub fn ring_or_skip(entries: usize, allowlist: Option<&URingAllowlist>) -> Option<URingContext> {
    usable_or_skip(URingContext::new(entries, allowlist))
}

/// Creates a ring or returns from the calling test, skipping it (see
/// [`usable_or_skip`]).
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

/// Creates a disabled ring (`URingContext::new_disabled`) or returns from
/// the calling test, skipping it (see [`usable_or_skip`]).
#[macro_export]
macro_rules! disabled_ring {
    ($entries:expr) => {
        match $crate::common::usable_or_skip(ringfence::URingContext::new_disabled($entries)) {
            Some(ring) => ring,
            None => return,
        }
    };
}

/// A pipe: (read end, write end), both blocking.
pub fn pipe() -> (File, File) {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two descriptors into the two-element array.
    let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(ret, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both are new descriptors nothing else owns.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// The errno of a completion's result, if it failed with one.
pub fn errno(result: &io::Result<u32>) -> Option<i32> {
    result.as_ref().err().and_then(io::Error::raw_os_error)
}

/// A scratch file of `len` bytes (zeros), removed when closed.
pub fn scratch_file(len: u64) -> File {
    let file = tempfile::tempfile().expect("tempfile");
    file.set_len(len).expect("set_len");
    file
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: RawFd) {
    // SAFETY: F_GETFL/F_SETFL on an open descriptor take and return plain
    // integers.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    assert!(ok, "fcntl: {}", io::Error::last_os_error());
}

/// A non-blocking eventfd with counter 0.
pub fn eventfd() -> File {
    // SAFETY: eventfd takes no pointers; it returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just returned by eventfd and nothing else owns it.
    unsafe { File::from_raw_fd(fd) }
}

/// Reads (and resets) an eventfd's counter; `None` if it is 0.
pub fn eventfd_count(mut eventfd: &File) -> Option<u64> {
    let mut bytes = [0u8; 8];
    match eventfd.read(&mut bytes) {
        Ok(8) => Some(u64::from_ne_bytes(bytes)),
        Ok(n) => panic!("short eventfd read of {n} bytes"),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => panic!("eventfd read: {e}"),
    }
}

/// The address of every buffer [`leak`] handed out. Keeping them in a
/// static keeps the buffers reachable, so that LeakSanitizer (`.ci/asan`)
/// tells these deliberate leaks from real ones. Plain addresses suffice:
/// LeakSanitizer treats any word that points into a block as a reference.
static LEAKED: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

/// `bytes`, leaked so that they live for the rest of the process as
/// `IoBufMut<'static>` requires, and recorded in [`LEAKED`].
pub fn leak(bytes: Vec<u8>) -> &'static mut [u8] {
    let buf: &'static mut [u8] = Box::leak(bytes.into_boxed_slice());
    LEAKED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(buf.as_ptr() as usize);
    buf
}

/// `value`, leaked for the rest of the process and recorded in [`LEAKED`]
/// (as [`leak`] does for bytes): for memory an operation writes, such as a
/// statx buffer.
pub fn leak_value<T>(value: T) -> &'static mut T {
    let value: &'static mut T = Box::leak(Box::new(value));
    LEAKED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(std::ptr::from_mut(value) as usize);
    value
}

/// A heap buffer of `len` bytes that lives for the rest of the process, as
/// `IoBufMut<'static>` requires. Returns the buffer and a raw view of it for
/// checking its contents after the operation has completed.
pub fn leaked_buf(len: usize, fill: u8) -> (IoBufMut<'static>, &'static [u8]) {
    let buf: &'static mut [u8] = leak(vec![fill; len]);
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
        // `wait` could block for good on a completion that never comes;
        // `wait_timeout` keeps the deadline.
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        out.extend(ring.wait_timeout(left).expect("wait failed"));
    }
    out
}

/// Reaps exactly `count` completions, keyed by user_data; each user_data
/// must come once.
pub fn reap_by_user_data(ring: &URingContext, count: usize) -> HashMap<u64, io::Result<u32>> {
    let got = reap(ring, count);
    assert_eq!(got.len(), count, "more completions than expected: {got:?}");
    let mut by_user_data = HashMap::new();
    for (user_data, result) in got {
        assert!(
            by_user_data.insert(user_data, result).is_none(),
            "user_data {user_data} completed twice"
        );
    }
    by_user_data
}

/// Adds nops with user_data `uds` in batches of at most the SQ size,
/// submitting after each batch and never reaping: past the completion
/// ring's size, the kernel keeps the rest on its overflow list.
pub fn add_and_submit_without_reaping(ring: &URingContext, uds: std::ops::Range<u64>) {
    let mut next = uds.start;
    while next < uds.end {
        let batch_end = (next + u64::from(ring.sq_entries())).min(uds.end);
        for ud in next..batch_end {
            ring.add_nop(ud)
                .unwrap_or_else(|e| panic!("add_nop({ud}) failed: {e}"));
        }
        ring.submit()
            .expect("submit with a full completion ring failed");
        next = batch_end;
    }
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

/// `len` pseudo-random bytes, different for each `seed`, so a misplaced
/// block or a short transfer never matches by accident.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0; len];
    fastrand::Rng::with_seed(seed).fill(&mut bytes);
    bytes
}

/// Whether `fd` polls readable within `timeout_ms` (`EINTR` retried).
pub fn readable_within(fd: RawFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    for _ in 0..100 {
        // SAFETY: `pfd` is one valid pollfd, alive for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        match n {
            0 => return false,
            1 => return pfd.revents & libc::POLLIN != 0,
            _ if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => continue,
            _ => panic!("poll: {}", io::Error::last_os_error()),
        }
    }
    panic!("poll kept failing with EINTR");
}

/// An epoll instance watching `fd` for readable, reporting `data` for it.
pub fn epoll_watching(fd: RawFd, data: u64) -> OwnedFd {
    // SAFETY: epoll_create1 has no memory preconditions.
    let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(raw >= 0, "epoll_create1: {}", io::Error::last_os_error());
    // SAFETY: `raw` is a new fd that nothing else owns.
    let epoll = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut interest = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: data,
    };
    // SAFETY: both fds are open and `interest` is a valid epoll_event.
    let rc = unsafe { libc::epoll_ctl(raw, libc::EPOLL_CTL_ADD, fd, &mut interest) };
    assert_eq!(rc, 0, "epoll_ctl: {}", io::Error::last_os_error());
    epoll
}

/// Waits up to `timeout_ms` on `epoll` and returns the ready events as
/// (events, data) (`EINTR` retried).
pub fn epoll_ready(epoll: &OwnedFd, timeout_ms: i32) -> Vec<(u32, u64)> {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
    for _ in 0..100 {
        // SAFETY: `events` is a writable array of 4 epoll_events.
        let n = unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), 4, timeout_ms) };
        if n >= 0 {
            return events[..n as usize]
                .iter()
                .map(|e| (e.events, e.u64))
                .collect();
        }
        let err = io::Error::last_os_error();
        assert_eq!(err.raw_os_error(), Some(libc::EINTR), "epoll_wait: {err}");
    }
    panic!("epoll_wait kept failing with EINTR");
}

/// An anonymous in-memory file (memfd) of `len` zero bytes.
pub fn memfd(len: u64) -> File {
    // SAFETY: the name is a NUL-terminated literal; memfd_create takes no
    // other pointer and returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"ringfence-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len).expect("sizing the memfd");
    file
}

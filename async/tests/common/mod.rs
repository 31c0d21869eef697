//! Helpers shared by the async layer's kernel tests.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use ringfence::{Error, URingAllowlist, URingContext};
use ringfence_async::{Driver, OwnedBufMut};

/// How long any one test waits for something that should take
/// milliseconds, before failing instead of hanging.
pub const LIMIT: Duration = Duration::from_secs(20);

/// `Ok` passed through; `None` (after saying why) when `made` failed
/// because this machine has no usable io_uring, which under CI
/// (`CI=true`) fails the test instead, so a green CI run always means the
/// kernel path ran. Any other error fails the test.
fn usable_or_skip<T>(made: std::io::Result<T>, entries: usize) -> Option<T> {
    let err = match made {
        Ok(made) => return Some(made),
        Err(err) => err,
    };
    // The driver's error is an `io::Error`: ask the context which of the
    // "io_uring is missing here" errors it was.
    match URingContext::new(entries, None) {
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
        _ => panic!("making the driver failed: {err}"),
    }
}

/// How long one test binary may run in all. Dropping a driver waits for
/// its thread, and every test drops one at its end: a driver that never
/// stops would hang the binary in a wait no test can bound by itself.
pub const BINARY_LIMIT: Duration = Duration::from_secs(300);

/// Starts, once per test binary, a thread that aborts the process (with a
/// message) if it is still running after [`BINARY_LIMIT`]. The one thread
/// in these tests that is never joined: it dies with the process.
pub fn watchdog() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        std::thread::spawn(|| {
            std::thread::sleep(BINARY_LIMIT);
            eprintln!(
                "watchdog: this test binary still runs after {BINARY_LIMIT:?}; a test hangs \
                 (a driver that never stops, or an unbounded wait): aborting"
            );
            std::process::abort();
        });
    });
}

/// `Driver::new(entries)`, or `None` when io_uring is unusable here.
pub fn driver_or_skip(entries: usize) -> Option<Driver> {
    watchdog();
    usable_or_skip(Driver::new(entries), entries)
}

/// `Driver::with_allowlist(entries, allowlist)`, or `None` when io_uring
/// is unusable here.
pub fn restricted_or_skip(entries: usize, allowlist: &URingAllowlist) -> Option<Driver> {
    watchdog();
    usable_or_skip(Driver::with_allowlist(entries, allowlist), entries)
}

/// A driver thread over a new ring, or returns from the calling test,
/// skipping it (see `usable_or_skip`).
#[macro_export]
macro_rules! driver {
    ($entries:expr) => {
        match $crate::common::driver_or_skip($entries) {
            Some(driver) => driver,
            None => return,
        }
    };
    ($entries:expr, $allowlist:expr) => {
        match $crate::common::restricted_or_skip($entries, $allowlist) {
            Some(driver) => driver,
            None => return,
        }
    };
}

/// Runs `f` on a thread of its own and returns what it returns, failing
/// the test if that takes longer than `limit` (a hang is a failure, not a
/// stuck test run). On success the thread is joined; on timeout the test
/// panics and the process ends with the thread.
pub fn bounded<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(value) => {
            worker
                .join()
                .expect("the bounded thread panicked after sending");
            value
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // It panicked: show its message as this test's.
            match worker.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(()) => unreachable!("it sent nothing and did not panic"),
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: not done within {limit:?}"),
    }
}

/// `futures::executor::block_on(future)` on a thread of its own, bounded
/// by [`LIMIT`].
pub fn block_on<T: Send + 'static>(
    what: &str,
    future: impl Future<Output = T> + Send + 'static,
) -> T {
    bounded(LIMIT, what, move || futures::executor::block_on(future))
}

/// Polls `cond` every millisecond until it holds, failing the test after
/// `limit`. Returns how long it took.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    start.elapsed()
}

/// Waits until `driver` has no operation left (see
/// [`Driver::in_flight`]), failing the test after [`LIMIT`].
pub fn wait_idle(driver: &Driver, what: &str) -> Duration {
    wait_until(LIMIT, what, || driver.in_flight() == 0)
}

/// A waker that counts its wakes.
#[derive(Default)]
pub struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl CountingWaker {
    pub fn new() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(Arc::clone(&counter));
        (counter, waker)
    }

    pub fn wakes(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Polls `future` once with `waker`.
pub fn poll_once<F: Future + Unpin>(future: &mut F, waker: &Waker) -> Poll<F::Output> {
    Pin::new(future).poll(&mut Context::from_waker(waker))
}

/// `len` bytes that differ with `seed` and position, so a block read from
/// the wrong place or a stale buffer shows.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut bytes = vec![0; len];
    rng.fill(&mut bytes);
    bytes
}

/// A buffer that reports when it is dropped, and what it held then: for
/// telling when the driver frees what a dropped future's operation owned.
pub struct TrackedBuf {
    bytes: Box<[u8]>,
    dropped: mpsc::Sender<Vec<u8>>,
}

impl TrackedBuf {
    /// `len` bytes of `fill`, and where its contents go when it is
    /// dropped.
    pub fn new(len: usize, fill: u8) -> (TrackedBuf, mpsc::Receiver<Vec<u8>>) {
        let (dropped, rx) = mpsc::channel();
        let buf = TrackedBuf {
            bytes: vec![fill; len].into_boxed_slice(),
            dropped,
        };
        (buf, rx)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for TrackedBuf {
    fn drop(&mut self) {
        let _ = self.dropped.send(self.bytes.to_vec());
    }
}

// SAFETY: the bytes live in the boxed slice's own heap allocation, which
// moving the `TrackedBuf` does not move, and which it owns alone; every
// byte is initialised and writable. The `Sender` beside it is never
// reached through the pointer.
unsafe impl OwnedBufMut for TrackedBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.bytes.as_mut_ptr()
    }

    fn bytes_total(&self) -> usize {
        self.bytes.len()
    }

    unsafe fn set_init(&mut self, _len: usize) {}
}

/// The address of everything [`forget_reachably`] forgot. Keeping them in
/// a static keeps the memory reachable, so that LeakSanitizer
/// (`.ci/asan`) tells these deliberate leaks from real ones.
static FORGOTTEN: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// `mem::forget` of `value`, boxed so that its memory stays reachable from
/// [`FORGOTTEN`]: its destructor never runs, as with a bare `mem::forget`,
/// but what it owns (a driver handle, a buffer) is not reported as leaked.
pub fn forget_reachably<T>(value: T) {
    let boxed = Box::new(value);
    FORGOTTEN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(std::ptr::from_ref::<T>(&boxed) as usize);
    std::mem::forget(boxed);
}

/// `URingContext::new(entries, None)`, or `None` when io_uring is unusable
/// here (skipping as the driver helpers do).
pub fn usable_or_skip_ctx(entries: usize) -> Option<URingContext> {
    watchdog();
    match URingContext::new(entries, None) {
        Ok(ctx) => Some(ctx),
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

/// The address of every buffer [`leak`] handed out, kept reachable for
/// LeakSanitizer as [`FORGOTTEN`] is.
static LEAKED: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// `bytes`, leaked for the rest of the process (the kernel may write them
/// at any time until a completion the test may never see), and recorded
/// in [`LEAKED`].
pub fn leak(bytes: Vec<u8>) -> &'static mut [u8] {
    let buf: &'static mut [u8] = Box::leak(bytes.into_boxed_slice());
    LEAKED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(buf.as_ptr() as usize);
    buf
}

/// Returns `Pending` once, having woken its task: lets the executor run
/// other futures before this one goes on (`futures::pending!` does not
/// wake, so a lone task would never be polled again).
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

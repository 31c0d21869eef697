//! Attacks on ringfence-async's safety and liveness claims, from the review
//! of the first version: futures dropped, forgotten or polled at awkward
//! times, buffers whose aliasing Miri checks (with the `sim` feature),
//! rings of one or two entries under many futures and threads, wakers and
//! buffer drops that panic or drop the last handle, and the driver dropped
//! with operations in flight.
//!
//! Tests marked `#[ignore = "finding N"]` fail on the reviewed version; N
//! is the finding in the review report that says what breaks and the fix.
//! Every wait is bounded: a hang fails the test instead of stalling it.

#![cfg(target_os = "linux")]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::task::{waker, ArcWake};
use ringfence_async::{Driver, OwnedBufMut};

/// A buffer that counts its drops (and may panic in its drop), to see
/// exactly when the crate frees what an operation owned.
struct Tracked {
    bytes: Vec<u8>,
    drops: Arc<AtomicUsize>,
    panic_on_drop: bool,
}

impl Tracked {
    fn new(len: usize, drops: &Arc<AtomicUsize>) -> Tracked {
        Tracked {
            bytes: Vec::with_capacity(len),
            drops: Arc::clone(drops),
            panic_on_drop: false,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
        if self.panic_on_drop {
            panic!("a buffer's drop panicked (on purpose)");
        }
    }
}

// SAFETY: the bytes live in the `Vec`'s heap allocation, which moving the
// `Tracked` does not move; nothing else reaches them.
unsafe impl OwnedBufMut for Tracked {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.bytes.as_mut_ptr()
    }

    fn bytes_total(&self) -> usize {
        self.bytes.capacity()
    }

    unsafe fn set_init(&mut self, len: usize) {
        // SAFETY: forwarded: the first `len` bytes were written.
        unsafe { self.bytes.set_len(len) }
    }
}

/// A waker that counts its wakes.
#[derive(Default)]
struct Flag(AtomicUsize);

impl ArcWake for Flag {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn poll_once<F: Future + Unpin>(fut: &mut F, waker: &Waker) -> Poll<F::Output> {
    Pin::new(fut).poll(&mut Context::from_waker(waker))
}

/// Tests over the simulated kernel: deterministic, and run under Miri
/// (`cargo +nightly miri test -p ringfence-async --features sim --test
/// review_attacks sim::`), which checks that no buffer is used after it is
/// freed and that the pointers handed to the kernel stay valid under
/// Stacked and Tree Borrows while the boxes holding them move.
#[cfg(feature = "sim")]
mod sim {
    use super::*;
    use ringfence::op::Target;
    use ringfence::sim::{SimConfig, SimKernel};
    use ringfence_async::{File, ManualDriver};

    fn kernel(defer: bool) -> SimKernel {
        SimKernel::with_config(SimConfig {
            defer_completions: defer,
            ..SimConfig::default()
        })
    }

    fn manual(kernel: &SimKernel, entries: usize) -> (Driver, ManualDriver) {
        let ctx = kernel.new_context(entries, None).unwrap();
        Driver::builder(ctx).sim(kernel).manual().unwrap()
    }

    fn file(kernel: &SimKernel, driver: &Driver, contents: Vec<u8>) -> File {
        let fd = kernel.create_file(contents);
        // SAFETY: the simulated kernel keeps its file for as long as the
        // kernel lives, which the driver's context keeps alive.
        File::from_target(driver, unsafe { Target::from_raw_fd(fd) })
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    /// A read whose future is dropped while the kernel holds its work: the
    /// kernel then writes into the buffer (deferred work released after the
    /// drop), and only the completion frees it. Freed early, Miri reports
    /// the kernel's write as a use after free.
    #[test]
    fn dropped_read_keeps_its_buffer_until_the_kernel_has_written_it() {
        let kernel = kernel(true);
        let (driver, turns) = manual(&kernel, 8);
        let file = file(&kernel, &driver, pattern(256));
        let drops = Arc::new(AtomicUsize::new(0));
        let mut read = file.read_at(Tracked::new(256, &drops), 0);
        let flag = Arc::new(Flag::default());
        assert!(poll_once(&mut read, &waker(flag.clone())).is_pending());
        turns.turn(Some(Duration::ZERO)).unwrap();
        // The doorbell's poll, and the read's work held back.
        assert_eq!(kernel.pending(), 2);
        drop(read); // queues a cancellation, not yet submitted
        assert_eq!(drops.load(Ordering::SeqCst), 0, "kept while in flight");
        assert_eq!(driver.in_flight(), 1);
        // The kernel does the work now, writing into the buffer.
        assert_eq!(kernel.complete_deferred(usize::MAX), 1);
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        for _ in 0..10 {
            if driver.in_flight() == 0 {
                break;
            }
            turns.turn(Some(Duration::ZERO)).unwrap();
        }
        assert_eq!(driver.in_flight(), 0, "the completion releases it");
        assert_eq!(drops.load(Ordering::SeqCst), 1, "freed once");
    }

    /// The same with the cancellation reaching the kernel first: the
    /// held-back read is cancelled (ECANCELED) and never writes.
    #[test]
    fn dropped_read_cancelled_in_the_kernel_is_freed_by_its_completion() {
        let kernel = kernel(true);
        let (driver, turns) = manual(&kernel, 8);
        let file = file(&kernel, &driver, pattern(64));
        let drops = Arc::new(AtomicUsize::new(0));
        let mut read = file.read_at(Tracked::new(64, &drops), 0);
        assert!(poll_once(&mut read, &futures::task::noop_waker()).is_pending());
        turns.turn(Some(Duration::ZERO)).unwrap();
        drop(read);
        for _ in 0..10 {
            if driver.in_flight() == 0 {
                break;
            }
            turns.turn(Some(Duration::ZERO)).unwrap();
        }
        assert_eq!(driver.in_flight(), 0);
        assert_eq!(
            kernel.pending(),
            1,
            "the cancellation removed the work, the doorbell's poll is left"
        );
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    /// Boxed slices (noalias under Stacked Borrows) as read, readv and write
    /// buffers, with many operations in flight at once so that the table's
    /// slot vector reallocates while the kernel holds pointers into earlier
    /// operations' buffers. The completions come in a random order.
    #[test]
    fn boxed_slices_stay_valid_while_the_table_grows_under_them() {
        let count = if cfg!(miri) { 12 } else { 64 };
        let kernel = kernel(true);
        let (driver, turns) = manual(&kernel, 128);
        let contents = pattern(count * 16);
        let file = file(&kernel, &driver, contents.clone());
        let noop = futures::task::noop_waker();
        let mut reads: Vec<_> = (0..count)
            .map(|i| file.read_at(vec![0u8; 16].into_boxed_slice(), (i * 16) as u64))
            .collect();
        for read in &mut reads {
            assert!(poll_once(read, &noop).is_pending());
        }
        let bufs: Vec<Box<[u8]>> = vec![vec![0u8; 5].into(), vec![0u8; 11].into()];
        let mut readv = file.readv_at(bufs, 16);
        assert!(poll_once(&mut readv, &noop).is_pending());
        let mut write = file.write_at(vec![0xEEu8; 8].into_boxed_slice(), (count * 16) as u64);
        assert!(poll_once(&mut write, &noop).is_pending());
        assert_eq!(driver.in_flight(), count + 2);
        let mut results = vec![None; count];
        let mut readv_out = None;
        let mut write_out = None;
        for _ in 0..1000 {
            turns.turn(Some(Duration::ZERO)).unwrap();
            kernel.complete_deferred(3);
            for (i, read) in reads.iter_mut().enumerate() {
                if results[i].is_none() {
                    if let Poll::Ready((n, buf)) = poll_once(read, &noop) {
                        assert_eq!(n.unwrap(), 16);
                        results[i] = Some(buf);
                    }
                }
            }
            if readv_out.is_none() {
                if let Poll::Ready(out) = poll_once(&mut readv, &noop) {
                    readv_out = Some(out);
                }
            }
            if write_out.is_none() {
                if let Poll::Ready(out) = poll_once(&mut write, &noop) {
                    write_out = Some(out);
                }
            }
            if results.iter().all(Option::is_some) && readv_out.is_some() && write_out.is_some() {
                break;
            }
        }
        for (i, buf) in results.into_iter().enumerate() {
            assert_eq!(&*buf.expect("completed"), &contents[i * 16..][..16]);
        }
        let (n, bufs) = readv_out.expect("completed");
        assert_eq!(n.unwrap(), 16);
        assert_eq!(&*bufs[0], &contents[16..21]);
        assert_eq!(&*bufs[1], &contents[21..32]);
        let (n, buf) = write_out.expect("completed");
        assert_eq!(n.unwrap(), 8);
        assert_eq!(&*buf, &[0xEE; 8]);
        assert_eq!(driver.in_flight(), 0);
    }

    /// A completion that arrives before the future polls again wakes it,
    /// and the next poll takes the result.
    #[test]
    fn completion_before_the_next_poll_wakes_and_is_taken() {
        let kernel = kernel(false);
        let (driver, turns) = manual(&kernel, 4);
        let file = file(&kernel, &driver, pattern(32));
        let flag = Arc::new(Flag::default());
        let w = waker(flag.clone());
        let mut read = file.read_at(Vec::with_capacity(32), 0);
        assert!(poll_once(&mut read, &w).is_pending());
        turns.turn(Some(Duration::ZERO)).unwrap();
        assert_eq!(flag.0.load(Ordering::SeqCst), 1, "woken by the completion");
        match poll_once(&mut read, &w) {
            Poll::Ready((n, buf)) => {
                assert_eq!(n.unwrap(), 32);
                assert_eq!(buf, pattern(32));
            }
            Poll::Pending => panic!("the completion was lost"),
        }
        assert_eq!(driver.in_flight(), 0);
    }

    /// A ring of one entry, sixteen futures, polled only when woken: the
    /// ones refused for want of room must be woken when room is made, or
    /// they wait for good.
    #[test]
    fn one_entry_ring_wakes_every_future_that_waited_for_room() {
        let futures_count = if cfg!(miri) { 6 } else { 16 };
        let kernel = kernel(false);
        let (driver, turns) = manual(&kernel, 1);
        let contents = pattern(futures_count * 8);
        let file = file(&kernel, &driver, contents.clone());
        let mut reads: Vec<_> = (0..futures_count)
            .map(|i| file.read_at(Vec::with_capacity(8), (i * 8) as u64))
            .collect();
        let flags: Vec<Arc<Flag>> = (0..futures_count).map(|_| Arc::default()).collect();
        let mut done = vec![None; futures_count];
        let mut polled = vec![0usize; futures_count];
        // Every future is polled once; after that only when woken.
        for (i, read) in reads.iter_mut().enumerate() {
            assert!(poll_once(read, &waker(flags[i].clone())).is_pending());
        }
        for _ in 0..(futures_count * 20) {
            turns.turn(Some(Duration::ZERO)).unwrap();
            for (i, read) in reads.iter_mut().enumerate() {
                let wakes = flags[i].0.load(Ordering::SeqCst);
                if done[i].is_some() || wakes == polled[i] {
                    continue;
                }
                polled[i] = wakes;
                if let Poll::Ready((n, buf)) = poll_once(read, &waker(flags[i].clone())) {
                    assert_eq!(n.unwrap(), 8);
                    done[i] = Some(buf);
                }
            }
            if done.iter().all(Option::is_some) {
                break;
            }
        }
        for (i, buf) in done.into_iter().enumerate() {
            let buf = buf.unwrap_or_else(|| panic!("future {i} never woken"));
            assert_eq!(
                buf,
                &contents[i * 8..][..8],
                "future {i} got another's bytes"
            );
        }
        assert_eq!(driver.in_flight(), 0);
    }

    /// The driver's own thread, several threads polling with `block_on`,
    /// a ring of two entries, and half the futures dropped after one poll:
    /// every completed read has its own bytes, and every dropped one is
    /// freed once the kernel is done.
    #[test]
    fn threads_over_a_two_entry_ring_with_drops() {
        let (threads, per_thread) = if cfg!(miri) { (2, 4) } else { (4, 50) };
        let kernel = kernel(true);
        let ctx = kernel.new_context(2, None).unwrap();
        let driver = Driver::builder(ctx).sim(&kernel).spawn().unwrap();
        let contents = Arc::new(pattern(threads * per_thread * 4));
        let file = file(&kernel, &driver, contents.to_vec());
        let drops = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let file = file.clone();
                let contents = Arc::clone(&contents);
                let drops = Arc::clone(&drops);
                std::thread::spawn(move || {
                    for i in 0..per_thread {
                        let at = (t * per_thread + i) * 4;
                        let mut read = file.read_at(Tracked::new(4, &drops), at as u64);
                        if i % 2 == 1 {
                            let _ = poll_once(&mut read, &futures::task::noop_waker());
                            drop(read);
                            continue;
                        }
                        let (n, buf) = futures::executor::block_on(read);
                        assert_eq!(n.unwrap(), 4);
                        assert_eq!(buf.bytes, &contents[at..at + 4]);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        let total = threads * per_thread;
        for _ in 0..100_000 {
            if drops.load(Ordering::SeqCst) == total && driver.in_flight() == 0 {
                break;
            }
            std::thread::yield_now();
        }
        assert_eq!(driver.in_flight(), 0);
        assert_eq!(drops.load(Ordering::SeqCst), total);
    }
}

/// Tests on the real kernel. Not under Miri (it cannot make the syscalls).
#[cfg(not(miri))]
mod kernel {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream as StdUnixStream;

    use std::sync::{mpsc, Mutex};
    use std::time::Instant;

    use ringfence_async::{File, UnixStream};

    /// Runs `f` on a thread of its own and waits at most `limit` for it: a hang
    /// fails the calling test (the stuck thread is left behind, as nothing can
    /// stop it) instead of stalling the run.
    fn within<T: Send + 'static>(
        limit: Duration,
        what: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        within_saying(limit, what, String::new, f)
    }

    /// [`within`], adding what `state` says to the failure message.
    fn within_saying<T: Send + 'static>(
        limit: Duration,
        what: &str,
        state: impl FnOnce() -> String,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        match rx.recv_timeout(limit) {
            Ok(value) => {
                thread.join().expect("finished");
                value
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{what}: no progress in {limit:?} {}", state())
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::panic::resume_unwind(thread.join().expect_err("it panicked"))
            }
        }
    }

    /// Waits (bounded) until `cond` holds.
    fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A receive on a socket pair that stays in flight until the peer
    /// writes; the peer is returned to end it.
    fn pending_recv(
        driver: &Driver,
        buf: Tracked,
    ) -> (
        impl Future<Output = (std::io::Result<usize>, Tracked)> + Unpin,
        UnixStream,
        StdUnixStream,
    ) {
        let (ours, peer) = StdUnixStream::pair().unwrap();
        let ours = UnixStream::from_std(driver, ours);
        let recv = ours.recv(buf);
        (recv, ours, peer)
    }

    /// Drops a future while its receive is in flight, with the driver
    /// thread running: the buffer lives until the cancellation's
    /// completion, and is freed then, once.
    #[test]
    fn dropped_recv_is_cancelled_and_its_buffer_freed_once() {
        let driver = Driver::new(8).unwrap();
        let drops = Arc::new(AtomicUsize::new(0));
        let (mut recv, _ours, _peer) = pending_recv(&driver, Tracked::new(64, &drops));
        assert!(poll_once(&mut recv, &futures::task::noop_waker()).is_pending());
        eventually(Duration::from_secs(5), "in flight", || {
            driver.in_flight() == 1
        });
        drop(recv);
        eventually(Duration::from_secs(5), "cancelled and freed", || {
            driver.in_flight() == 0
        });
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    /// `mem::forget` of a future in flight leaks its buffer and never
    /// frees it, even after the kernel wrote into it.
    #[test]
    fn forgotten_future_leaks_its_buffer_and_never_frees_it() {
        /// Forgotten values' addresses: a deliberate leak that
        /// LeakSanitizer still sees referenced, so it reports none.
        static FORGOTTEN: Mutex<Vec<usize>> = Mutex::new(Vec::new());
        fn forget_reachably<T>(value: T) {
            let boxed = Box::new(value);
            let address = std::ptr::from_ref::<T>(&boxed) as usize;
            FORGOTTEN.lock().unwrap().push(address);
            std::mem::forget(boxed);
        }

        let ctx = ringfence::URingContext::new(8, None).unwrap();
        let (driver, turns) = Driver::builder(ctx).manual().unwrap();
        let drops = Arc::new(AtomicUsize::new(0));
        let (mut recv, _ours, mut peer) = pending_recv(&driver, Tracked::new(64, &drops));
        assert!(poll_once(&mut recv, &futures::task::noop_waker()).is_pending());
        forget_reachably(recv);
        turns.turn(Some(Duration::ZERO)).unwrap();
        peer.write_all(b"into a forgotten buffer").unwrap();
        turns.turn(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(driver.in_flight(), 1, "completed, never taken");
        assert_eq!(drops.load(Ordering::SeqCst), 0, "leaked, not freed");
    }

    /// Dropping every handle with receives in flight (their futures
    /// dropped, cancellations queued) stops the driver, drains the ring and
    /// frees every buffer by the time the last drop returns.
    #[test]
    fn last_handle_dropped_with_operations_in_flight_frees_after_the_kernel() {
        let driver = Driver::new(16).unwrap();
        let drops = Arc::new(AtomicUsize::new(0));
        let mut keep = Vec::new();
        for _ in 0..8 {
            let (mut recv, ours, peer) = pending_recv(&driver, Tracked::new(64, &drops));
            assert!(poll_once(&mut recv, &futures::task::noop_waker()).is_pending());
            keep.push((recv, ours, peer));
        }
        eventually(Duration::from_secs(5), "all in flight", || {
            driver.in_flight() == 8
        });
        let mut peers = Vec::new();
        for (recv, ours, peer) in keep {
            drop(recv);
            drop(ours);
            peers.push(peer);
        }
        within(
            Duration::from_secs(10),
            "dropping the last handle",
            move || drop(driver),
        );
        assert_eq!(drops.load(Ordering::SeqCst), 8);
    }

    /// A receive future dropped while the submission queue is full: its
    /// cancellation finds no room. It must still be cancelled soon (the
    /// socket it holds open, and its buffer, are otherwise kept until the
    /// peer writes or the driver is dropped).
    #[test]
    fn cancellation_refused_for_want_of_room_is_retried() {
        let ctx = ringfence::URingContext::new(1, None).unwrap();
        assert_eq!(ctx.sq_entries(), 1);
        let (driver, turns) = Driver::builder(ctx).manual().unwrap();
        let drops = Arc::new(AtomicUsize::new(0));
        let noop = futures::task::noop_waker();
        let (mut a, _a_ours, mut a_peer) = pending_recv(&driver, Tracked::new(16, &drops));
        assert!(poll_once(&mut a, &noop).is_pending());
        turns.turn(Some(Duration::ZERO)).unwrap();
        // The one SQE slot is taken by another receive, not yet submitted.
        let (mut b, _b_ours, mut b_peer) = pending_recv(&driver, Tracked::new(16, &drops));
        assert!(poll_once(&mut b, &noop).is_pending());
        assert_eq!(driver.in_flight(), 2);
        drop(a); // its cancellation meets a full submission queue
        for _ in 0..20 {
            turns.turn(Some(Duration::from_millis(5))).unwrap();
        }
        let cancelled = driver.in_flight() == 1 && drops.load(Ordering::SeqCst) == 1;
        // Clean up either way: end both receives.
        a_peer.write_all(b"x").unwrap();
        b_peer.write_all(b"x").unwrap();
        drop(b);
        for _ in 0..100 {
            if driver.in_flight() == 0 {
                break;
            }
            turns.turn(Some(Duration::from_millis(10))).unwrap();
        }
        assert_eq!(driver.in_flight(), 0);
        assert!(cancelled, "the dropped receive was never cancelled");
    }

    /// A waker that panics when the driver thread wakes it must not stop
    /// the driver: other futures still complete.
    #[test]
    fn panicking_waker_does_not_stop_the_driver() {
        struct Bomb;
        impl ArcWake for Bomb {
            fn wake_by_ref(_: &Arc<Self>) {
                panic!("a waker panicked (on purpose)");
            }
        }
        let driver = Driver::new(8).unwrap();
        let drops = Arc::new(AtomicUsize::new(0));
        let (mut recv, _ours, mut peer) = pending_recv(&driver, Tracked::new(16, &drops));
        assert!(poll_once(&mut recv, &waker(Arc::new(Bomb))).is_pending());
        eventually(PANIC_REPORTED, "in flight", || driver.in_flight() == 1);
        peer.write_all(b"wake the bomb").unwrap();
        let file = File::from_std(&driver, tempfile::tempfile().unwrap());
        let (n, _) = within(PANIC_REPORTED, "a write after the panic", move || {
            futures::executor::block_on(file.write_at(vec![1u8; 8], 0))
        });
        assert_eq!(n.unwrap(), 8);
        drop(recv);
    }

    /// How long a test that panics on the driver thread on purpose waits:
    /// the panic hook prints a backtrace there first, which under
    /// AddressSanitizer (a debug std to symbolize) takes seconds.
    const PANIC_REPORTED: Duration = Duration::from_secs(60);

    /// A buffer whose drop panics, freed by the driver thread when its
    /// abandoned operation completes, must not stop the driver either.
    #[test]
    fn panicking_buffer_drop_does_not_stop_the_driver() {
        let driver = Driver::new(8).unwrap();
        let drops = Arc::new(AtomicUsize::new(0));
        let mut bomb = Tracked::new(16, &drops);
        bomb.panic_on_drop = true;
        let (mut recv, _ours, _peer) = pending_recv(&driver, bomb);
        assert!(poll_once(&mut recv, &futures::task::noop_waker()).is_pending());
        eventually(PANIC_REPORTED, "in flight", || driver.in_flight() == 1);
        drop(recv); // cancelled; the driver thread frees the buffer
        eventually(PANIC_REPORTED, "freed", || {
            drops.load(Ordering::SeqCst) == 1
        });
        let file = File::from_std(&driver, tempfile::tempfile().unwrap());
        let (n, _) = within(PANIC_REPORTED, "a write after the panic", move || {
            futures::executor::block_on(file.write_at(vec![1u8; 8], 0))
        });
        assert_eq!(n.unwrap(), 8);
    }

    /// A waker whose drop drops another operation's future, dropped by the
    /// crate while it holds its table's lock: the other future's drop
    /// takes that lock again, on the same thread.
    #[test]
    fn waker_dropped_by_the_crate_may_drop_another_operation() {
        // Holds what its drop drops.
        struct Owner(#[allow(dead_code)] Mutex<Option<Box<dyn Send>>>);
        impl ArcWake for Owner {
            fn wake_by_ref(_: &Arc<Self>) {}
        }
        let driver = Driver::new(8).unwrap();
        let drops = Arc::new(AtomicUsize::new(0));
        let noop = futures::task::noop_waker();
        let (mut other, other_ours, _other_peer) = pending_recv(&driver, Tracked::new(16, &drops));
        assert!(poll_once(&mut other, &noop).is_pending());
        let (mut recv, ours, _peer) = pending_recv(&driver, Tracked::new(16, &drops));
        let owner = Arc::new(Owner(Mutex::new(Some(Box::new((other, other_ours))))));
        assert!(poll_once(&mut recv, &waker(owner.clone())).is_pending());
        drop(owner); // the slot's clone of the waker is the last
        eventually(Duration::from_secs(5), "in flight", || {
            driver.in_flight() == 2
        });
        within(Duration::from_secs(5), "dropping the future", move || {
            drop(recv); // drops the waker, which drops `other`
            drop(ours);
        });
        eventually(Duration::from_secs(5), "both freed", || {
            drops.load(Ordering::SeqCst) == 2
        });
    }

    /// A task whose waker drops it, and with it the last handle, on the
    /// driver thread (an executor cancelling a task when it is woken): the
    /// driver thread must neither join itself nor hang, and the ring is
    /// closed and the buffer freed.
    #[test]
    fn waker_on_the_driver_thread_drops_the_last_handle() {
        type Task = Mutex<Option<Pin<Box<dyn Future<Output = ()> + Send>>>>;
        struct Cancel {
            task: Task,
            thread: Mutex<Option<String>>,
            done: mpsc::SyncSender<()>,
        }
        impl ArcWake for Cancel {
            fn wake_by_ref(arc_self: &Arc<Self>) {
                let name = std::thread::current().name().map(str::to_owned);
                *arc_self.thread.lock().unwrap() = name;
                drop(arc_self.task.lock().unwrap().take());
                let _ = arc_self.done.send(());
            }
        }
        let driver = Driver::new(8).unwrap();
        let drops = Arc::new(AtomicUsize::new(0));
        let (recv, ours, mut peer) = pending_recv(&driver, Tracked::new(16, &drops));
        drop(driver); // the stream and the future hold the only handles
        let fut = async move {
            let _ours = ours;
            let _ = recv.await;
        };
        let (tx, rx) = mpsc::sync_channel(1);
        let task = Arc::new(Cancel {
            task: Mutex::new(Some(Box::pin(fut))),
            thread: Mutex::new(None),
            done: tx,
        });
        let w = waker(task.clone());
        {
            let mut guard = task.task.lock().unwrap();
            let fut = guard.as_mut().unwrap();
            assert!(fut.as_mut().poll(&mut Context::from_waker(&w)).is_pending());
        }
        drop(w);
        peer.write_all(b"complete it").unwrap();
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the completion woke the task");
        assert_eq!(
            task.thread.lock().unwrap().as_deref(),
            Some("ringfence-driver")
        );
        eventually(Duration::from_secs(10), "the buffer freed", || {
            drops.load(Ordering::SeqCst) == 1
        });
    }

    /// Rings of two and four entries (one entry: see the next test), eight threads, reads and writes of
    /// distinct bytes at distinct offsets, a third of the futures dropped
    /// after one poll: every completed operation has its own result, no
    /// thread waits for good (a lost doorbell or room wake-up would hang
    /// one), and every dropped operation is freed once the kernel is done.
    #[test]
    fn tiny_rings_many_threads_no_lost_wakeup_no_crossed_completion() {
        for entries in [2, 4] {
            let driver = Driver::new(entries).unwrap();
            let file = File::from_std(&driver, tempfile::tempfile().unwrap());
            let drops = Arc::new(AtomicUsize::new(0));
            let threads = 8;
            let per_thread = 150;
            let workers = {
                let file = file.clone();
                let drops = Arc::clone(&drops);
                let watched = driver.clone();
                let state =
                    move || format!("(entries {entries}, in flight {})", watched.in_flight());
                within_saying(
                    Duration::from_secs(120),
                    "the stress run",
                    state,
                    move || {
                        let workers: Vec<_> = (0..threads)
                            .map(|t| {
                                let file = file.clone();
                                let drops = Arc::clone(&drops);
                                std::thread::spawn(move || {
                                    let mut rng = fastrand::Rng::with_seed(t as u64);
                                    let mut dropped = 0;
                                    for i in 0..per_thread {
                                        let at = ((t * per_thread + i) * 8) as u64;
                                        let bytes = at.to_le_bytes().to_vec();
                                        let (n, _) =
                                            futures::executor::block_on(file.write_at(bytes, at));
                                        assert_eq!(n.unwrap(), 8);
                                        let mut read = file.read_at(Tracked::new(8, &drops), at);
                                        if rng.u8(..3) == 0 {
                                            let _ =
                                                poll_once(&mut read, &futures::task::noop_waker());
                                            drop(read);
                                            dropped += 1;
                                            continue;
                                        }
                                        let (n, buf) = futures::executor::block_on(read);
                                        assert_eq!(n.unwrap(), 8);
                                        assert_eq!(
                                            buf.bytes,
                                            at.to_le_bytes(),
                                            "crossed completion"
                                        );
                                    }
                                    dropped
                                })
                            })
                            .collect();
                        workers
                            .into_iter()
                            .map(|w| w.join().unwrap())
                            .sum::<usize>()
                    },
                )
            };
            let _ = workers;
            eventually(Duration::from_secs(10), "every dropped read freed", || {
                driver.in_flight() == 0 && drops.load(Ordering::SeqCst) == threads * per_thread
            });
        }
    }

    /// A ring of one entry, one thread writing over and over: the driver's
    /// own doorbell poll can take the one SQE slot just as the future adds
    /// its operation, so the future waits for room; the driver's wait then
    /// submits the poll (making room) and blocks with nothing else in
    /// flight, and no one tells the future. Seen hanging once in about
    /// 10-40 runs of 1200 writes; this makes 100 000, which hung in 4 of 6 runs here.
    #[test]
    fn one_entry_ring_room_made_by_the_drivers_wait_is_announced() {
        let driver = Driver::new(1).unwrap();
        let file = File::from_std(&driver, tempfile::tempfile().unwrap());
        let watched = driver.clone();
        let state = move || format!("(in flight {})", watched.in_flight());
        within_saying(
            Duration::from_secs(30),
            "100 000 writes",
            state,
            move || {
                for i in 0..100_000u64 {
                    let (n, _) =
                        futures::executor::block_on(file.write_at(i.to_le_bytes().to_vec(), 0));
                    assert_eq!(n.unwrap(), 8);
                }
            },
        );
    }

    /// A future polled again and again while it waits for room must not
    /// queue a waker per poll (the list is only emptied by the driver's
    /// next turn). Checked through the waker's clone count.
    #[test]
    fn future_waiting_for_room_keeps_one_waker_however_often_polled() {
        struct Counted;
        impl ArcWake for Counted {
            fn wake_by_ref(_: &Arc<Self>) {}
        }
        let ctx = ringfence::URingContext::new(1, None).unwrap();
        let (driver, turns) = Driver::builder(ctx).manual().unwrap();
        let file = File::from_std(&driver, tempfile::tempfile().unwrap());
        let noop = futures::task::noop_waker();
        // Fills the one SQE slot; no turn submits it.
        let mut first = file.write_at(vec![1u8; 8], 0);
        assert!(poll_once(&mut first, &noop).is_pending());
        let counted = Arc::new(Counted);
        let w = waker(counted.clone());
        let mut second = file.write_at(vec![2u8; 8], 8);
        for _ in 0..1000 {
            assert!(poll_once(&mut second, &w).is_pending());
        }
        // Besides `counted` and `w`, the room list holds clones of `w`:
        // one is enough.
        let clones = Arc::strong_count(&counted) - 2;
        turns.turn(Some(Duration::ZERO)).unwrap();
        drop((first, second));
        assert!(clones <= 2, "{clones} wakers queued for one future");
    }

    /// The flag type is used by the sim tests; keep it exercised here too.
    #[test]
    fn completion_wakes_the_waker_stored_last() {
        let driver = Driver::new(4).unwrap();
        let drops = Arc::new(AtomicUsize::new(0));
        let (mut recv, _ours, mut peer) = pending_recv(&driver, Tracked::new(16, &drops));
        let first = Arc::new(Flag::default());
        let second = Arc::new(Flag::default());
        assert!(poll_once(&mut recv, &waker(first.clone())).is_pending());
        eventually(Duration::from_secs(5), "in flight", || {
            driver.in_flight() == 1
        });
        assert!(poll_once(&mut recv, &waker(second.clone())).is_pending());
        peer.write_all(b"abc").unwrap();
        eventually(Duration::from_secs(5), "woken", || {
            second.0.load(Ordering::SeqCst) == 1
        });
        assert_eq!(
            first.0.load(Ordering::SeqCst),
            0,
            "the old waker is replaced"
        );
        match poll_once(&mut recv, &futures::task::noop_waker()) {
            Poll::Ready((n, buf)) => {
                assert_eq!(n.unwrap(), 3);
                assert_eq!(buf.bytes, b"abc");
            }
            Poll::Pending => panic!("woken but not ready"),
        }
    }
}

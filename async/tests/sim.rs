//! The async layer on ringfence's simulated kernel: what happens to an
//! operation's buffer when its future is dropped before submission, in
//! the kernel, on another thread, forgotten, or when the driver closes
//! with operations held; a full ring; results and buffers given back; a
//! slot reused while an old cancellation is still queued.
//!
//! Every buffer here is a [`TrackingBuf`]: its allocation is registered,
//! its `Drop` counts frees, runs a check of what the kernel must have done
//! by then, and poisons the bytes instead of freeing them (quarantine), so
//! that a kernel access after the free is seen by [`Registry::finish`]
//! rather than being undefined behaviour. Under Miri the same tests also
//! check every pointer the kernel and the driver use.
//!
//! Most tests drive the ring by hand ([`ManualDriver`]) with a zero
//! timeout: the simulated kernel releases held-back completions when a
//! thread waits, and a zero-timeout turn never waits, so completions come
//! only when a test calls `complete_deferred`. Their rings' allowlists
//! leave out `PollAdd` (no doorbell poll), so `SimKernel::pending()` counts
//! exactly the operations of the test that the kernel holds.
#![cfg(feature = "sim")]

use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use ringfence::op::Target;
use ringfence::sim::{Fault, SimConfig, SimKernel};
use ringfence::{URingAllowlist, URingOperation};
use ringfence_async::{Driver, File, ManualDriver, OwnedBuf, OwnedBufMut};

/// What a read buffer holds before the kernel writes into it: no file
/// byte of these tests equals it (see [`pattern`]).
const FILL: u8 = 0xaa;
/// What a freed buffer holds from its `Drop` on.
const POISON: u8 = 0xdd;
/// How long a wait for another thread may take before the test fails.
/// Miri's clock runs fast (it advances with each basic block
/// interpreted), so its deadline is longer.
const DEADLINE: Duration = Duration::from_secs(if cfg!(miri) { 3600 } else { 20 });
/// How many driver turns an operation may take before the test fails.
const TURNS: usize = 100;

/// `len` file bytes, all in `1..=0x7f` (never [`FILL`], [`POISON`] or 0),
/// different for each `seed`.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed as usize + i * 7) as u8 % 0x7f + 1)
        .collect()
}

/// Counts scaled down under Miri, which runs these tests thousands of
/// times slower.
fn scaled(native: usize, miri: usize) -> usize {
    if cfg!(miri) {
        miri
    } else {
        native
    }
}

// ---------------------------------------------------------------------------
// Tracking buffers

/// What the kernel must have done before a buffer may be freed, checked
/// in its `Drop` with the buffer's bytes (all `bytes_total` of them).
type DropCheck = Box<dyn Fn(&[u8]) -> Result<(), String> + Send>;

/// An allocation a [`TrackingBuf`] owns, as the registry remembers it.
struct Alloc {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the registry only touches the bytes after the owning buffer was
// dropped (to check the poison, then to free them), under its lock.
unsafe impl Send for Alloc {}

struct Entry {
    alloc: Alloc,
    drops: usize,
    /// The name of the thread that dropped it.
    freed_on: Option<String>,
    check: Option<DropCheck>,
}

#[derive(Default)]
struct Inner {
    entries: Vec<Entry>,
    violations: Vec<String>,
}

/// Every [`TrackingBuf`] of a test: how often each was dropped, and what
/// went wrong (recorded, not panicked: a buffer may be dropped on the
/// driver's thread).
#[derive(Default)]
struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A buffer of `contents`, `init` of them initialised (what a write
    /// sends), checked by `check` when dropped.
    fn buf(
        self: &Arc<Self>,
        contents: &[u8],
        init: usize,
        check: Option<DropCheck>,
    ) -> TrackingBuf {
        assert!(!contents.is_empty() && init <= contents.len());
        let len = contents.len();
        let ptr = NonNull::new(Box::into_raw(Box::<[u8]>::from(contents)).cast::<u8>())
            .expect("a box is never null");
        let mut inner = self.inner();
        let id = inner.entries.len();
        inner.entries.push(Entry {
            alloc: Alloc { ptr, len },
            drops: 0,
            freed_on: None,
            check,
        });
        TrackingBuf {
            ptr,
            len,
            init,
            id,
            registry: Arc::clone(self),
        }
    }

    /// A buffer for a read of `len` bytes, all [`FILL`].
    fn read_buf(self: &Arc<Self>, len: usize, check: Option<DropCheck>) -> TrackingBuf {
        self.buf(&vec![FILL; len], 0, check)
    }

    /// A buffer that sends `data`.
    fn write_buf(self: &Arc<Self>, data: &[u8], check: Option<DropCheck>) -> TrackingBuf {
        self.buf(data, data.len(), check)
    }

    fn drops(&self, id: usize) -> usize {
        self.inner().entries[id].drops
    }

    fn freed_on(&self, id: usize) -> Option<String> {
        self.inner().entries[id].freed_on.clone()
    }

    fn violations(&self) -> Vec<String> {
        self.inner().violations.clone()
    }

    fn assert_no_violations(&self) {
        let violations = self.violations();
        assert!(violations.is_empty(), "{violations:#?}");
    }

    /// Checks that every buffer but those in `leaked` was freed exactly
    /// once (those never), that nothing touched a freed buffer after its
    /// `Drop` (the poison is intact), and that no check failed; frees the
    /// quarantined allocations. Leaked buffers stay allocated: what leaked
    /// them may still point at them.
    fn finish(&self, leaked: &[usize]) {
        let mut inner = self.inner();
        let mut violations = std::mem::take(&mut inner.violations);
        for (id, entry) in inner.entries.iter_mut().enumerate() {
            let expected = usize::from(!leaked.contains(&id));
            if entry.drops != expected {
                violations.push(format!("buffer {id} freed {} times", entry.drops));
            }
            if entry.drops == 0 {
                continue;
            }
            // SAFETY: the buffer was dropped, so the registry alone reaches
            // these bytes (the allocation `buf` made, never freed yet).
            let bytes =
                unsafe { std::slice::from_raw_parts(entry.alloc.ptr.as_ptr(), entry.alloc.len) };
            if bytes.iter().any(|&byte| byte != POISON) {
                violations.push(format!("buffer {id} was written after it was freed"));
            }
            let raw = std::ptr::slice_from_raw_parts_mut(entry.alloc.ptr.as_ptr(), entry.alloc.len);
            // SAFETY: `raw` is the `Box<[u8]>` that `buf` turned into a
            // pointer, freed once: its entry is left with no bytes.
            drop(unsafe { Box::from_raw(raw) });
            entry.alloc.len = 0;
        }
        inner.entries.retain(|entry| entry.alloc.len != 0);
        assert!(violations.is_empty(), "{violations:#?}");
    }
}

/// A heap buffer whose frees the [`Registry`] counts.
///
/// Invariant: `ptr` is the start of a `len`-byte allocation (made by
/// [`Registry::buf`]) that only this value reaches until it is dropped,
/// and `init <= len`.
struct TrackingBuf {
    ptr: NonNull<u8>,
    len: usize,
    init: usize,
    id: usize,
    registry: Arc<Registry>,
}

// SAFETY: the value owns its allocation alone (the invariant); moving it
// to another thread moves that ownership.
unsafe impl Send for TrackingBuf {}

impl TrackingBuf {
    /// The initialised bytes.
    fn bytes(&self) -> &[u8] {
        // SAFETY: by the invariant, the first `init` of the `len` bytes
        // are this value's alone, and all are initialised.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.init) }
    }
}

// SAFETY: the bytes live in an allocation of their own that moving the
// value does not move, are only changed through `&mut self` methods
// (`set_init` changes no byte), and are freed only by `Drop` (quarantined:
// poisoned, not even freed).
unsafe impl OwnedBuf for TrackingBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.init
    }
}

// SAFETY: as for `OwnedBuf`; all `len` bytes are allocated, initialised and
// writable, and nothing but this value reaches them.
unsafe impl OwnedBufMut for TrackingBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn bytes_total(&self) -> usize {
        self.len
    }

    unsafe fn set_init(&mut self, len: usize) {
        assert!(len <= self.len);
        self.init = len;
    }
}

impl Drop for TrackingBuf {
    fn drop(&mut self) {
        let thread = std::thread::current().name().unwrap_or("?").to_owned();
        let check = {
            let mut inner = self.registry.inner();
            let entry = &mut inner.entries[self.id];
            entry.drops += 1;
            entry.freed_on = Some(thread);
            let drops = entry.drops;
            let check = entry.check.take();
            if drops > 1 {
                inner
                    .violations
                    .push(format!("buffer {} dropped {drops} times", self.id));
            }
            check
        };
        // SAFETY: by the invariant the `len` bytes are this value's alone,
        // and it is being dropped: nothing else may touch them (a kernel
        // that does is what the check and the poison are there to catch).
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) };
        if let Some(check) = check {
            if let Err(err) = check(bytes) {
                let mut inner = self.registry.inner();
                inner
                    .violations
                    .push(format!("buffer {} freed too early: {err}", self.id));
            }
        }
        bytes.fill(POISON);
    }
}

/// A drop check: the kernel ran the read into this buffer, which holds
/// `expected` then [`FILL`] (a read still held, or cancelled, leaves it
/// all [`FILL`]).
fn kernel_read(expected: Vec<u8>) -> Option<DropCheck> {
    Some(Box::new(move |bytes: &[u8]| {
        let (head, rest) = bytes.split_at(expected.len());
        if head == expected && rest.iter().all(|&b| b == FILL) {
            Ok(())
        } else {
            Err(format!(
                "it holds {:?}..., not what the kernel's read puts there ({:?}...): \
                 the read had not run",
                &bytes[..bytes.len().min(8)],
                &expected[..expected.len().min(8)]
            ))
        }
    }))
}

/// A drop check: the simulated kernel holds no operation (the tests
/// using it hold no other).
fn kernel_holds_nothing(kernel: &SimKernel) -> Option<DropCheck> {
    let kernel = kernel.clone();
    Some(Box::new(move |_: &[u8]| match kernel.pending() {
        0 => Ok(()),
        held => Err(format!("the kernel still holds {held} operations")),
    }))
}

// ---------------------------------------------------------------------------
// Rings, drivers, polling

fn kernel(defer: bool, seed: u64) -> SimKernel {
    SimKernel::with_config(SimConfig {
        defer_completions: defer,
        seed,
        ..SimConfig::default()
    })
}

/// The file operations; `AsyncCancel` if `cancel`. No `PollAdd`: the
/// driver then runs without a doorbell, and `pending()` counts only the
/// test's operations.
fn allowlist(cancel: bool) -> URingAllowlist {
    let mut list = URingAllowlist::new();
    for op in [
        URingOperation::Nop,
        URingOperation::Read,
        URingOperation::Write,
        URingOperation::Readv,
        URingOperation::Writev,
        URingOperation::Fsync,
        URingOperation::Fallocate,
    ] {
        list.allow_submit_operation(op);
    }
    if cancel {
        list.allow_submit_operation(URingOperation::AsyncCancel);
    }
    list
}

/// A ring of `entries` in `kernel`, restricted to [`allowlist`], driven
/// by hand.
fn manual(kernel: &SimKernel, entries: usize, cancel: bool) -> (Driver, ManualDriver) {
    let list = allowlist(cancel);
    let ctx = kernel.new_context(entries, Some(&list)).unwrap();
    Driver::builder(ctx)
        .allowlist(&list)
        .sim(kernel)
        .manual()
        .unwrap()
}

/// A file of `kernel` holding `contents`, and its descriptor.
fn sim_file(driver: &Driver, kernel: &SimKernel, contents: Vec<u8>) -> (File, RawFd) {
    let fd = kernel.create_file(contents);
    // SAFETY: the simulated kernel's files are never closed: the
    // descriptor names this file for the kernel's life.
    let target = unsafe { Target::from_raw_fd(fd) };
    (File::from_target(driver, target), fd)
}

/// A waker that counts its wake-ups.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn poll_with<F: Future + Unpin>(fut: &mut F, waker: &Waker) -> Poll<F::Output> {
    Pin::new(fut).poll(&mut Context::from_waker(waker))
}

fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    poll_with(fut, &futures::task::noop_waker())
}

/// One turn that never waits: submits, and hands over what completed;
/// the simulated kernel releases nothing it holds back.
fn turn(driver: &ManualDriver) {
    driver.turn(Some(Duration::ZERO)).unwrap();
}

/// Polls `fut` to its end, releasing every held-back completion and
/// turning `driver` between polls; at most [`TURNS`] turns.
fn run<F: Future + Unpin>(kernel: &SimKernel, driver: &ManualDriver, mut fut: F) -> F::Output {
    for _ in 0..TURNS {
        if let Poll::Ready(output) = poll_once(&mut fut) {
            return output;
        }
        kernel.complete_deferred(usize::MAX);
        turn(driver);
    }
    panic!("the operation did not complete in {TURNS} turns");
}

/// Keeps what a forgotten future leaked (its driver) reachable, as leak
/// checkers (Miri's, LeakSanitizer) want: a forgotten future never gives
/// it back.
static FORGOTTEN: Mutex<Vec<Driver>> = Mutex::new(Vec::new());

// ---------------------------------------------------------------------------
// Tests

#[test]
fn a_future_dropped_before_submission_frees_its_buffer_once_and_never_reaches_the_kernel() {
    let kernel = kernel(false, 1);
    let registry = Arc::<Registry>::default();
    // One SQ entry: a second operation finds no room until a turn.
    let (driver, manual) = manual(&kernel, 1, true);
    let (file, _) = sim_file(&driver, &kernel, pattern(1, 64));

    // Never polled.
    let never = registry.read_buf(16, None);
    let never_id = never.id;
    drop(file.read_at(never, 0));
    assert_eq!(registry.drops(never_id), 1);
    assert_eq!(driver.in_flight(), 0);

    // Polled once while the ring had no room.
    let first = registry.read_buf(16, kernel_read(pattern(1, 16)));
    let first_id = first.id;
    let mut first = file.read_at(first, 0);
    assert!(poll_once(&mut first).is_pending());
    let refused = registry.read_buf(16, None);
    let refused_id = refused.id;
    let mut refused = file.read_at(refused, 16);
    assert!(poll_once(&mut refused).is_pending());
    let waiting = registry.read_buf(16, kernel_read(pattern(1, 64)[32..48].to_vec()));
    let mut waiting = file.read_at(waiting, 32);
    let waker = Arc::new(CountingWaker::default());
    assert!(poll_with(&mut waiting, &Waker::from(Arc::clone(&waker))).is_pending());
    assert_eq!(driver.in_flight(), 1, "the refused adds took no slot");
    assert_eq!(
        registry.drops(refused_id),
        0,
        "the future still owns its buffer"
    );
    drop(refused);
    assert_eq!(registry.drops(refused_id), 1, "freed with its future");

    turn(&manual);
    assert!(
        waker.0.load(Ordering::SeqCst) > 0,
        "a future waiting for room is woken when the driver makes some"
    );
    let (read, buf) = run(&kernel, &manual, first);
    assert_eq!(read.unwrap(), 16);
    assert_eq!(buf.bytes(), pattern(1, 16));
    drop(buf);
    assert_eq!(registry.drops(first_id), 1);
    let (read, buf) = run(&kernel, &manual, waiting);
    assert_eq!(read.unwrap(), 16);
    drop(buf);
    assert_eq!(
        kernel.stats().sqes_consumed,
        2,
        "the refused read never reached the kernel"
    );
    assert_eq!(driver.in_flight(), 0);
    drop((file, driver, manual));
    registry.finish(&[]);
}

/// The kernel holds the read (no cancellation on this ring): the buffer
/// stays allocated until the completion, then is freed once.
#[test]
fn a_future_dropped_in_the_kernel_keeps_its_buffer_until_the_completion_then_frees_it_once() {
    let kernel = kernel(true, 2);
    let registry = Arc::<Registry>::default();
    let (driver, manual) = manual(&kernel, 4, false);
    let (file, _) = sim_file(&driver, &kernel, pattern(2, 64));

    let buf = registry.read_buf(32, kernel_read(pattern(2, 64)[8..40].to_vec()));
    let id = buf.id;
    let mut read = file.read_at(buf, 8);
    assert!(poll_once(&mut read).is_pending());
    turn(&manual);
    assert_eq!(kernel.pending(), 1, "the kernel holds the read");
    drop(read);
    for _ in 0..3 {
        turn(&manual);
    }
    assert_eq!(
        registry.drops(id),
        0,
        "freed while the kernel held the read"
    );
    assert_eq!(driver.in_flight(), 1, "the abandoned read keeps its slot");

    assert_eq!(kernel.complete_deferred(1), 1);
    assert_eq!(
        registry.drops(id),
        0,
        "freed before the completion was reaped"
    );
    turn(&manual);
    assert_eq!(registry.drops(id), 1, "freed once its completion came");
    assert_eq!(driver.in_flight(), 0);
    turn(&manual);
    assert_eq!(registry.drops(id), 1);
    registry.assert_no_violations();
    drop((file, driver, manual));
    registry.finish(&[]);
}

/// With `AsyncCancel` allowed, dropping the future cancels the held write:
/// it never reaches the file, and the buffer is freed once, after the
/// kernel's `ECANCELED` completion.
#[test]
fn dropping_a_future_in_the_kernel_cancels_its_operation_and_frees_the_buffer_after() {
    let kernel = kernel(true, 3);
    let registry = Arc::<Registry>::default();
    let (driver, manual) = manual(&kernel, 4, true);
    let (file, fd) = sim_file(&driver, &kernel, vec![0; 16]);

    let buf = registry.write_buf(&pattern(3, 8), kernel_holds_nothing(&kernel));
    let id = buf.id;
    let mut write = file.write_at(buf, 4);
    assert!(poll_once(&mut write).is_pending());
    turn(&manual);
    assert_eq!(kernel.pending(), 1);
    drop(write);
    assert_eq!(registry.drops(id), 0, "freed before the cancellation ran");
    turn(&manual);
    assert_eq!(kernel.pending(), 0, "cancelled");
    assert_eq!(registry.drops(id), 1);
    assert_eq!(driver.in_flight(), 0);
    assert_eq!(
        kernel.file_contents(fd).unwrap(),
        vec![0; 16],
        "never written"
    );
    registry.assert_no_violations();
    drop((file, driver, manual));
    registry.finish(&[]);
}

#[test]
fn a_forgotten_future_leaks_its_buffer_and_the_driver_keeps_working() {
    let kernel = kernel(true, 4);
    let registry = Arc::<Registry>::default();
    let (driver, manual) = manual(&kernel, 4, false);
    let (file, _) = sim_file(&driver, &kernel, pattern(4, 64));

    // Forgotten in the kernel, then completed: nobody takes the result.
    let buf = registry.read_buf(16, None);
    let forgotten_id = buf.id;
    let mut forgotten = file.read_at(buf, 0);
    assert!(poll_once(&mut forgotten).is_pending());
    turn(&manual);
    std::mem::forget(forgotten);
    FORGOTTEN.lock().unwrap().push(driver.clone());
    assert_eq!(kernel.complete_deferred(1), 1);
    turn(&manual);
    assert_eq!(
        registry.drops(forgotten_id),
        0,
        "a forgotten future's buffer is leaked"
    );

    // Others run as before, in their own slots.
    for round in 0..scaled(4, 2) {
        let offset = 16 * round as u64;
        let buf = registry.read_buf(16, None);
        let id = buf.id;
        let (read, buf) = run(&kernel, &manual, file.read_at(buf, offset));
        assert_eq!(read.unwrap(), 16);
        assert_eq!(buf.bytes(), &pattern(4, 64)[offset as usize..][..16]);
        drop(buf);
        assert_eq!(registry.drops(id), 1);
    }
    assert_eq!(driver.in_flight(), 1, "the forgotten read's slot");

    drop((file, driver, manual));
    assert_eq!(
        registry.drops(forgotten_id),
        0,
        "still leaked after the last handle"
    );
    registry.finish(&[forgotten_id]);
}

/// Futures polled on one thread and dropped on a second: those whose
/// completion was reaped already are freed by the thread that drops them;
/// those the kernel still holds are freed by the thread that drives the
/// ring, when it reaps their completions.
#[test]
fn futures_dropped_on_one_thread_are_released_by_the_thread_that_reaps() {
    let kernel = kernel(true, 5);
    let registry = Arc::<Registry>::default();
    let (driver, manual) = manual(&kernel, 8, false);
    let (file, _) = sim_file(&driver, &kernel, pattern(5, 256));
    let count = scaled(8, 3);
    let on_thread = |name: &str, f: Box<dyn FnOnce() + Send + '_>| {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn_scoped(s, f)
                .unwrap()
                .join()
                .unwrap();
        });
    };
    let start_reads = || {
        let mut futures = Vec::new();
        let mut ids = Vec::new();
        for i in 0..count {
            let expected = pattern(5, 256)[i * 8..][..8].to_vec();
            let buf = registry.read_buf(8, kernel_read(expected));
            ids.push(buf.id);
            let mut read = file.read_at(buf, 8 * i as u64);
            assert!(poll_once(&mut read).is_pending());
            futures.push(read);
        }
        (futures, ids)
    };

    // Completed and reaped, then dropped: freed by the dropping thread.
    let (done, done_ids) = start_reads();
    on_thread("reaper", Box::new(|| turn(&manual)));
    assert_eq!(kernel.complete_deferred(count), count);
    on_thread("reaper", Box::new(|| turn(&manual)));
    on_thread("dropper", Box::new(move || drop(done)));
    for &id in &done_ids {
        assert_eq!(registry.drops(id), 1);
        assert_eq!(registry.freed_on(id).as_deref(), Some("dropper"));
    }

    // Held in the kernel when dropped: freed by the reaping thread.
    let (held, held_ids) = start_reads();
    on_thread("reaper", Box::new(|| turn(&manual)));
    on_thread("dropper", Box::new(move || drop(held)));
    for &id in &held_ids {
        assert_eq!(
            registry.drops(id),
            0,
            "freed while the kernel held its read"
        );
    }
    assert_eq!(kernel.complete_deferred(count), count);
    on_thread("reaper", Box::new(|| turn(&manual)));
    for &id in &held_ids {
        assert_eq!(registry.drops(id), 1);
        assert_eq!(registry.freed_on(id).as_deref(), Some("reaper"));
    }
    registry.assert_no_violations();
    drop((file, driver, manual));
    registry.finish(&[]);
}

/// Runs `f` on a thread of its own and fails if it takes longer than
/// [`DEADLINE`] (the thread is then left behind: the test has failed).
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || tx.send(f()).unwrap());
    let output = rx
        .recv_timeout(DEADLINE)
        .expect("the futures did not complete in time");
    thread.join().unwrap();
    output
}

/// A driver thread reaps while two other threads poll futures a random
/// number of times and drop them at random points (some in the kernel,
/// whose cancellation and release then happen on the driver's thread).
#[test]
fn futures_dropped_on_other_threads_while_the_driver_thread_reaps() {
    let kernel = kernel(true, 6);
    let registry = Arc::<Registry>::default();
    let ctx = kernel.new_context(16, None).unwrap();
    let driver = Driver::builder(ctx).sim(&kernel).spawn().unwrap();
    let (file, _) = sim_file(&driver, &kernel, pattern(6, 256));
    let per_thread = scaled(12, 2);
    std::thread::scope(|s| {
        for seed in 0..2u64 {
            let (file, registry) = (file.clone(), Arc::clone(&registry));
            s.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(seed);
                for i in 0..per_thread {
                    let offset = rng.usize(0..240);
                    let buf = registry.read_buf(16, None);
                    let mut read = file.read_at(buf, offset as u64);
                    match rng.u8(0..4) {
                        0 => drop(read),
                        1 => {
                            let _ = poll_once(&mut read);
                            drop(read);
                        }
                        2 => {
                            let _ = poll_once(&mut read);
                            std::thread::sleep(Duration::from_micros(rng.u64(0..500)));
                            drop(read);
                        }
                        _ => {
                            let started = Instant::now();
                            let (result, buf) = loop {
                                if let Poll::Ready(output) = poll_once(&mut read) {
                                    break output;
                                }
                                assert!(started.elapsed() < DEADLINE, "read {i} never completed");
                                std::thread::sleep(Duration::from_micros(200));
                            };
                            assert_eq!(result.unwrap(), 16);
                            assert_eq!(buf.bytes(), &pattern(6, 256)[offset..][..16]);
                        }
                    }
                }
            });
        }
    });
    drop((file, driver));
    let inner = registry.inner();
    assert_eq!(inner.entries.len(), 2 * per_thread);
    for (id, entry) in inner.entries.iter().enumerate() {
        assert_eq!(entry.drops, 1, "buffer {id}");
    }
    drop(inner);
    registry.finish(&[]);
}

/// Two SQ entries and, without `IORING_FEAT_NODROP`, three operations in
/// flight at most: many futures at once must wait for room, and each
/// completes (none fails with `NoSpace`).
#[test]
fn a_full_ring_makes_futures_wait_for_room_and_every_one_completes() {
    let kernel = SimKernel::with_config(SimConfig {
        nodrop: false,
        ..SimConfig::default()
    });
    let registry = Arc::<Registry>::default();
    let ctx = kernel.new_context(2, None).unwrap();
    let driver = Driver::builder(ctx).sim(&kernel).spawn().unwrap();
    let count = scaled(48, 6);
    let (file, fd) = sim_file(&driver, &kernel, vec![0; 8 * count]);

    let writes: Vec<_> = (0..count)
        .map(|i| file.write_at(registry.write_buf(&pattern(i as u8, 8), None), 8 * i as u64))
        .collect();
    let written = bounded(move || futures::executor::block_on(futures::future::join_all(writes)));
    for (i, (result, buf)) in written.into_iter().enumerate() {
        assert_eq!(result.unwrap(), 8, "write {i}");
        assert_eq!(buf.bytes(), pattern(i as u8, 8));
    }
    let contents = kernel.file_contents(fd).unwrap();
    let reads: Vec<_> = (0..count)
        .map(|i| file.read_at(registry.read_buf(8, None), 8 * i as u64))
        .collect();
    let read = bounded(move || futures::executor::block_on(futures::future::join_all(reads)));
    for (i, (result, buf)) in read.into_iter().enumerate() {
        assert_eq!(result.unwrap(), 8, "read {i}");
        assert_eq!(buf.bytes(), pattern(i as u8, 8));
        assert_eq!(buf.bytes(), &contents[8 * i..][..8]);
    }
    assert_eq!(driver.in_flight(), 0);
    drop((file, driver));
    registry.assert_no_violations();
    registry.finish(&[]);
}

#[test]
fn reads_writes_vectored_forms_and_fsync_give_back_results_and_buffers() {
    let kernel = kernel(false, 7);
    let registry = Arc::<Registry>::default();
    let (driver, manual) = manual(&kernel, 8, true);
    let (file, fd) = sim_file(&driver, &kernel, pattern(7, 32));
    let mut expected = pattern(7, 32);

    // A write past the end extends the file.
    let data = pattern(70, 12);
    let buf = registry.write_buf(&data, None);
    let id = buf.id;
    let (written, buf) = run(&kernel, &manual, file.write_at(buf, 30));
    assert_eq!(written.unwrap(), 12);
    assert_eq!(
        (buf.id, buf.bytes()),
        (id, &data[..]),
        "the same buffer, unchanged"
    );
    drop(buf);
    expected.truncate(30);
    expected.extend_from_slice(&data);
    assert_eq!(kernel.file_contents(fd).unwrap(), expected);

    // A short read, near the end; a `Vec` gets its length.
    let (read, buf) = run(
        &kernel,
        &manual,
        file.read_at(registry.read_buf(16, None), 36),
    );
    assert_eq!(read.unwrap(), 6);
    assert_eq!(buf.bytes(), &expected[36..]);
    drop(buf);
    let (read, vec) = run(&kernel, &manual, file.read_at(Vec::with_capacity(10), 0));
    assert_eq!(read.unwrap(), 10);
    assert_eq!(vec, &expected[..10]);
    let (read, buf) = run(
        &kernel,
        &manual,
        file.read_at(registry.read_buf(4, None), 42),
    );
    assert_eq!(read.unwrap(), 0, "at the end of the file");
    assert!(buf.bytes().is_empty());
    drop(buf);

    // Vectored: the buffers in turn.
    let bufs = vec![
        registry.write_buf(b"ab", None),
        registry.write_buf(b"cde", None),
    ];
    let ids: Vec<_> = bufs.iter().map(|b| b.id).collect();
    let (written, bufs) = run(&kernel, &manual, file.writev_at(bufs, 2));
    assert_eq!(written.unwrap(), 5);
    assert_eq!(bufs.iter().map(|b| b.id).collect::<Vec<_>>(), ids);
    expected[2..7].copy_from_slice(b"abcde");
    assert_eq!(kernel.file_contents(fd).unwrap(), expected);
    drop(bufs);
    let bufs: Vec<_> = [1, 4, 8]
        .into_iter()
        .map(|len| registry.read_buf(len, None))
        .collect();
    let (read, bufs) = run(&kernel, &manual, file.readv_at(bufs, 1));
    assert_eq!(read.unwrap(), 13);
    assert_eq!(bufs[0].bytes(), &expected[1..2]);
    assert_eq!(bufs[1].bytes(), &expected[2..6]);
    assert_eq!(bufs[2].bytes(), &expected[6..14]);
    drop(bufs);
    let vecs = vec![Vec::with_capacity(2), Vec::with_capacity(8)];
    let (read, vecs) = run(&kernel, &manual, file.readv_at(vecs, 38));
    assert_eq!(read.unwrap(), 4);
    assert_eq!(vecs, [&expected[38..40], &expected[40..42]]);

    run(&kernel, &manual, file.fsync()).unwrap();
    run(
        &kernel,
        &manual,
        file.fallocate(0, 64, ringfence::FallocateMode::empty()),
    )
    .unwrap();
    assert_eq!(kernel.file_contents(fd).unwrap().len(), 64);

    // An error gives the buffer back too.
    // SAFETY: no file of the simulated kernel has this descriptor: the
    // read fails, and touches no real file.
    let unknown = File::from_target(&driver, unsafe { Target::from_raw_fd(7) });
    let buf = registry.read_buf(4, None);
    let id = buf.id;
    let (read, buf) = run(&kernel, &manual, unknown.read_at(buf, 0));
    assert_eq!(read.unwrap_err().raw_os_error(), Some(libc::EBADF));
    assert_eq!(buf.id, id);
    drop(buf);
    assert_eq!(driver.in_flight(), 0);
    registry.assert_no_violations();
    drop((file, unknown, driver, manual));
    registry.finish(&[]);
}

/// A read is dropped while the kernel holds it: its cancellation is queued,
/// the read completes anyway, and a turn whose submit the kernel refuses
/// (`EBUSY`) reaps it, freeing its slot while the cancellation is still
/// queued. The next read takes that slot; the old cancellation, submitted
/// with it, must not reach it: it completes with its data.
#[test]
fn a_stale_cancel_never_reaches_the_next_operation_in_the_same_slot() {
    let kernel = kernel(true, 9);
    let registry = Arc::<Registry>::default();
    let (driver, manual) = manual(&kernel, 4, true);
    let (file, _) = sim_file(&driver, &kernel, pattern(9, 128));

    let old = registry.read_buf(8, kernel_read(pattern(9, 8)));
    let old_id = old.id;
    let mut old = file.read_at(old, 0);
    assert!(poll_once(&mut old).is_pending());
    turn(&manual);
    assert_eq!(kernel.complete_deferred(1), 1, "completed, not yet reaped");
    // Dropping it queues the cancellation.
    drop(old);
    // The turn queues the cancellation's SQE, and its one submit is
    // refused: the SQE stays queued while the turn reaps the read.
    kernel.inject(Fault::Busy);
    turn(&manual);
    assert_eq!(
        kernel.stats().faults_injected,
        1,
        "the cancellation was not submitted"
    );
    assert_eq!(registry.drops(old_id), 1, "released by its completion");
    assert_eq!(driver.in_flight(), 0, "its slot is free");

    let new = registry.read_buf(8, kernel_read(pattern(9, 128)[64..72].to_vec()));
    let mut new = file.read_at(new, 64);
    assert!(poll_once(&mut new).is_pending());
    turn(&manual); // The old cancellation and the new read.
    assert_eq!(kernel.pending(), 1, "the new read was not cancelled");
    assert_eq!(kernel.complete_deferred(1), 1);
    let (read, buf) = run(&kernel, &manual, new);
    assert_eq!(read.unwrap(), 8);
    assert_eq!(buf.bytes(), &pattern(9, 128)[64..72]);
    drop(buf);
    registry.assert_no_violations();
    drop((file, driver, manual));
    registry.finish(&[]);
}

/// The last handle goes while the kernel holds reads and writes whose
/// futures were dropped: closing cancels them, and only then are their
/// buffers freed, each once.
#[test]
fn closing_the_driver_cancels_what_the_kernel_holds_and_frees_the_buffers_after() {
    let kernel = kernel(true, 10);
    let registry = Arc::<Registry>::default();
    let (driver, manual) = manual(&kernel, 16, true);
    let (file, fd) = sim_file(&driver, &kernel, pattern(10, 64));
    let count = scaled(6, 3);
    let mut ids = Vec::new();
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    for i in 0..count {
        let buf = registry.read_buf(8, kernel_holds_nothing(&kernel));
        ids.push(buf.id);
        reads.push(file.read_at(buf, 8 * i as u64));
        let buf = registry.write_buf(&[0x80 + i as u8; 4], kernel_holds_nothing(&kernel));
        ids.push(buf.id);
        writes.push(file.write_at(buf, 8 * i as u64));
    }
    reads
        .iter_mut()
        .for_each(|f| assert!(poll_once(f).is_pending()));
    writes
        .iter_mut()
        .for_each(|f| assert!(poll_once(f).is_pending()));
    turn(&manual);
    assert_eq!(kernel.pending(), 2 * count);
    drop((reads, writes, file));
    drop(driver);
    for &id in &ids {
        assert_eq!(registry.drops(id), 0, "freed while the kernel held it");
    }
    drop(manual); // The last handle: closes the ring.
    for &id in &ids {
        assert_eq!(registry.drops(id), 1);
    }
    assert_eq!(kernel.stats().abandoned, 0, "the ring was closed drained");
    // Closing runs some held writes before it cancels the rest.
    let contents = kernel.file_contents(fd).unwrap();
    for i in 0..count {
        let region = &contents[8 * i..][..4];
        assert!(
            region == [0x80 + i as u8; 4] || region == &pattern(10, 64)[8 * i..][..4],
            "write {i} half done: {region:?}"
        );
    }
    registry.assert_no_violations();
    registry.finish(&[]);
}

/// Without `AsyncCancel`, closing cannot stop what the kernel holds: the
/// buffers are either all freed, after the kernel ran their reads (when
/// the close found every one completed), or all leaked, never freed
/// early. Ignored under Miri, whose leak check would report the leak.
#[test]
#[cfg_attr(miri, ignore = "leaks the table by design")]
fn closing_the_driver_without_cancellation_leaks_what_the_kernel_holds() {
    for seed in 11..15 {
        let kernel = kernel(true, seed);
        let registry = Arc::<Registry>::default();
        let (driver, manual) = manual(&kernel, 8, false);
        let (file, _) = sim_file(&driver, &kernel, pattern(11, 64));
        let mut ids = Vec::new();
        let mut reads = Vec::new();
        for i in 0..6 {
            let expected = pattern(11, 64)[8 * i..][..8].to_vec();
            let buf = registry.read_buf(8, kernel_read(expected));
            ids.push(buf.id);
            let mut read = file.read_at(buf, 8 * i as u64);
            assert!(poll_once(&mut read).is_pending());
            reads.push(read);
        }
        turn(&manual);
        drop((reads, file, driver, manual));
        let freed: Vec<_> = ids.iter().map(|&id| registry.drops(id)).collect();
        let leaked = kernel.stats().abandoned > 0;
        assert_eq!(freed, [usize::from(!leaked); 6], "seed {seed}");
        registry.assert_no_violations();
        if !leaked {
            registry.finish(&[]);
        }
    }
}

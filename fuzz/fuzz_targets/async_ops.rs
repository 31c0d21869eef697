//! Random operations through the async layer (`ringfence-async`) on the
//! simulated kernel, with completions held back until the input releases
//! them: futures polled a random number of times, dropped before their
//! first poll, after it, in the kernel or after their completion,
//! forgotten (`mem::forget`), with faults on `io_uring_enter` and small
//! rings that refuse adds (`NoSpace`: the future waits for room).
//!
//! Checked:
//! - every future that completes returns its own buffers and the right
//!   result: a read the file's bytes, a write its count (and the file
//!   then holds its bytes), an fsync `Ok`; no error at all (nothing is
//!   cancelled but what was dropped);
//! - every buffer is freed exactly once, except those of forgotten
//!   futures, never freed;
//! - never while the simulated kernel held its operation. Each buffer's
//!   `Drop` checks that: the kernel holds no more operations than there
//!   are operations whose buffers are all alive (plus the fsyncs that may
//!   still be held); and, on rings without `AsyncCancel` (where no
//!   operation that reached the ring is cancelled), that the kernel ran it
//!   (a read's bytes are in the buffer, a write's in its file). Freed
//!   buffers are poisoned and kept (quarantined), and the poison checked
//!   at the end: a kernel access after the free shows;
//! - the driver's turns never fail, and at the end (everything released)
//!   the kernel holds nothing and the driver's table only the forgotten
//!   futures' operations.
//!
//! The driver is driven by hand with a zero timeout, which never waits:
//! the simulated kernel releases held-back completions only when the input
//! says. Its rings' allowlists leave out `PollAdd` (no doorbell), so the
//! kernel's `pending()` counts the input's operations only.
//!
//! Input (decoded with `arbitrary`): `Input`.
#![no_main]

use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use ringfence::op::Target;
use ringfence::sim::{Fault, SimConfig, SimKernel};
use ringfence::{URingAllowlist, URingOperation};
use ringfence_async::{Driver, File, ManualDriver, OwnedBuf, OwnedBufMut};

#[derive(Arbitrary, Debug)]
struct Input {
    /// `SimConfig::seed`: which held-back completions a release picks.
    seed: u8,
    /// The ring has `1 << (entries % 4)` SQ entries.
    entries: u8,
    /// `SimConfig::nodrop`; without it, at most `2 * entries - 1`
    /// operations are in flight.
    nodrop: bool,
    /// The ring allows `AsyncCancel`: dropped futures cancel their
    /// operations.
    cancel: bool,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// A new future, not polled yet.
    Start(OpInput),
    /// Polls future `which` (modulo the live ones) `1 + times % 3` times.
    Poll {
        which: u8,
        times: u8,
    },
    /// Drops future `which`.
    Drop(u8),
    /// Forgets future `which` if its operation reached the ring (a future
    /// never added owns its buffers in a box of its own, which forgetting
    /// would leak out of every checker's reach), and fewer than
    /// [`MAX_FORGETTING_INPUTS`] inputs forgot one; else drops it.
    Forget(u8),
    /// One turn of the driver, without waiting.
    Turn,
    /// Releases up to `n % 4` held-back completions.
    Release(u8),
    Fault(FaultInput),
}

#[derive(Arbitrary, Debug)]
enum FaultInput {
    Interrupted,
    Again,
    Busy,
    /// At most `1 + n % 4` SQEs consumed.
    ShortSubmit(u8),
}

/// Offsets are `offset % 256` into the source (reads) or `offset % 64`
/// into a file of the write's own; lengths `1 + len % 32`.
#[derive(Arbitrary, Debug)]
enum OpInput {
    Read { offset: u8, len: u8 },
    Write { offset: u8, len: u8 },
    Readv { offset: u8, lens: [u8; 2] },
    Writev { offset: u8, lens: [u8; 2] },
    Fsync,
}

/// The source file's length; byte `i` is [`source_byte`]`(i)`.
const SOURCE_LEN: usize = 256;
/// What a read buffer holds before the kernel writes into it (no source
/// byte equals it).
const FILL: u8 = 0xaa;
/// What a freed buffer holds from its `Drop` on.
const POISON: u8 = 0xdd;
/// Turns at the end, each after releasing every held completion.
const FINAL_TURNS: usize = 4;

fn source_byte(i: usize) -> u8 {
    (i * 7 % 0x7f) as u8 + 1
}

fn len(n: u8) -> usize {
    1 + usize::from(n % 32)
}

/// Keeps what forgotten futures leaked (their driver, and through it the
/// ring, the table and the buffers) reachable, so that LeakSanitizer does
/// not report the leak `mem::forget` is documented to cause.
static FORGOTTEN: Mutex<Vec<Driver>> = Mutex::new(Vec::new());
/// Inputs that may forget futures, per process. Each keeps its ring and
/// kernel for good, and makes LeakSanitizer scan the whole heap after it
/// (libFuzzer does when an input's allocations and frees differ), which
/// costs more than the input itself: past this `Forget` drops, so a run
/// keeps its speed and stays under libFuzzer's RSS limit. An input
/// replayed alone forgets as it did.
const MAX_FORGETTING_INPUTS: usize = 64;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// Tracking buffers

/// What the kernel must have done to a buffer before it is freed, on a
/// ring without cancellation.
#[derive(Clone)]
enum Proof {
    /// Its read ran: the buffer holds these bytes, then [`FILL`].
    Read(Vec<u8>),
    /// Its write ran: file `fd` holds the buffer's bytes at `at`.
    Written { fd: RawFd, at: usize },
}

struct Entry {
    ptr: NonNull<u8>,
    len: usize,
    drops: usize,
    group: usize,
    proof: Proof,
}

/// One operation's buffers.
#[derive(Default)]
struct Group {
    /// Its operation was added to the ring: the kernel may hold it.
    added: bool,
    /// One of its buffers was dropped.
    freed: bool,
    forgotten: bool,
}

struct Inner {
    entries: Vec<Entry>,
    groups: Vec<Group>,
    /// Groups added and not freed: operations whose buffers are alive.
    holding: usize,
    /// Fsyncs added whose futures did not return: the kernel may hold
    /// them.
    fsyncs: usize,
}

/// Every buffer of one input.
struct Registry {
    kernel: SimKernel,
    /// No cancellation: every added operation runs before it completes.
    proofs: bool,
    inner: Mutex<Inner>,
}

// SAFETY: the raw pointers in `Inner` are only dereferenced after the
// owning buffer was dropped (checking the poison, then freeing), under the
// mutex.
unsafe impl Send for Registry {}
// SAFETY: as above; every access goes through the mutex.
unsafe impl Sync for Registry {}

impl Registry {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    fn group(&self) -> usize {
        let mut inner = self.inner();
        inner.groups.push(Group::default());
        inner.groups.len() - 1
    }

    fn buf(
        self: &Arc<Self>,
        group: usize,
        contents: Vec<u8>,
        init: usize,
        proof: Proof,
    ) -> TrackingBuf {
        let len = contents.len();
        let ptr = NonNull::new(Box::into_raw(contents.into_boxed_slice()).cast::<u8>())
            .expect("a box is never null");
        let mut inner = self.inner();
        inner.entries.push(Entry {
            ptr,
            len,
            drops: 0,
            group,
            proof,
        });
        TrackingBuf {
            ptr,
            len,
            init,
            id: inner.entries.len() - 1,
            registry: Arc::clone(self),
        }
    }

    fn added(&self, group: usize) {
        let mut inner = self.inner();
        assert!(!inner.groups[group].added);
        inner.groups[group].added = true;
        inner.holding += 1;
    }

    /// A buffer is being dropped: checks it may be.
    fn dropping(&self, id: usize, bytes: &[u8]) {
        let mut inner = self.inner();
        let entry = &mut inner.entries[id];
        entry.drops += 1;
        assert_eq!(entry.drops, 1, "buffer {id} dropped twice");
        let (group, proof) = (entry.group, entry.proof.clone());
        let state = &mut inner.groups[group];
        assert!(
            !state.forgotten,
            "a forgotten future's buffer {id} was freed"
        );
        let added = state.added;
        if added && !state.freed {
            state.freed = true;
            inner.holding -= 1;
        }
        if !added {
            return;
        }
        let held = self.kernel.pending();
        assert!(
            held <= inner.holding + inner.fsyncs,
            "buffer {id} freed while the kernel holds {held} operations, and only {} \
             (+ {} fsyncs) still have their buffers",
            inner.holding,
            inner.fsyncs
        );
        if !self.proofs {
            return;
        }
        match proof {
            Proof::Read(expected) => {
                let (head, rest) = bytes.split_at(expected.len());
                assert!(
                    head == expected && rest.iter().all(|&b| b == FILL),
                    "buffer {id} freed before the kernel ran its read"
                );
            }
            Proof::Written { fd, at } => {
                let file = self.kernel.file_contents(fd).unwrap();
                assert!(
                    file.get(at..at + bytes.len()) == Some(bytes),
                    "buffer {id} freed before the kernel ran its write"
                );
            }
        }
    }

    /// At the end: every buffer freed once but the forgotten ones, the
    /// poison intact; frees the quarantined allocations.
    fn finish(&self) {
        let mut inner = self.inner();
        let inner = &mut *inner;
        for (id, entry) in inner.entries.iter().enumerate() {
            let group = &inner.groups[entry.group];
            if group.forgotten && group.added {
                assert_eq!(entry.drops, 0, "forgotten buffer {id} freed");
                continue;
            }
            assert_eq!(entry.drops, 1, "buffer {id} never freed");
            // SAFETY: the buffer was dropped: only the registry reaches its
            // bytes now (the allocation `buf` made, not freed yet).
            let bytes = unsafe { std::slice::from_raw_parts(entry.ptr.as_ptr(), entry.len) };
            assert!(
                bytes.iter().all(|&b| b == POISON),
                "buffer {id} was written after it was freed"
            );
            let raw = std::ptr::slice_from_raw_parts_mut(entry.ptr.as_ptr(), entry.len);
            // SAFETY: `raw` is the boxed slice `buf` made, freed here once
            // (the entries are dropped below).
            drop(unsafe { Box::from_raw(raw) });
        }
        inner.entries.clear();
    }
}

/// A heap buffer whose frees the [`Registry`] checks.
///
/// Invariant: `ptr` starts a `len`-byte allocation (from
/// [`Registry::buf`]) that only this value reaches until it is dropped;
/// `init <= len`.
struct TrackingBuf {
    ptr: NonNull<u8>,
    len: usize,
    init: usize,
    id: usize,
    registry: Arc<Registry>,
}

// SAFETY: the value owns its allocation alone (the invariant).
unsafe impl Send for TrackingBuf {}

impl TrackingBuf {
    fn bytes(&self) -> &[u8] {
        // SAFETY: by the invariant, the first `init` bytes are this
        // value's, initialised.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.init) }
    }
}

// SAFETY: the bytes live in an allocation of their own, which moving the
// value does not move; they only change through `&mut self`, and are
// freed only by `Drop` (quarantined, in fact).
unsafe impl OwnedBuf for TrackingBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.init
    }
}

// SAFETY: as for `OwnedBuf`; all `len` bytes are initialised and
// writable.
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
        // SAFETY: by the invariant the bytes are this value's alone, and
        // it is being dropped.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) };
        self.registry.dropping(self.id, bytes);
        bytes.fill(POISON);
    }
}

// ---------------------------------------------------------------------------
// Futures

type Boxed<T> = Box<dyn Future<Output = T> + Send + Unpin>;

enum Fut {
    One(Boxed<(io::Result<usize>, TrackingBuf)>),
    Many(Boxed<(io::Result<usize>, Vec<TrackingBuf>)>),
    Fsync(Boxed<io::Result<()>>),
}

/// What a completed future must return.
enum Expect {
    /// A read of the source: each buffer's bytes.
    Read(Vec<Vec<u8>>),
    /// A write of these buffers to file `fd` at `at`.
    Write {
        fd: RawFd,
        at: usize,
        data: Vec<Vec<u8>>,
    },
    Fsync,
}

struct Live {
    fut: Fut,
    group: usize,
    added: bool,
    expect: Expect,
}

/// Frees `boxed`'s memory without dropping its value: `mem::forget` of
/// the future, without leaking the box around it.
fn forget_boxed<T: ?Sized>(boxed: Box<T>) {
    let layout = std::alloc::Layout::for_value(&*boxed);
    let raw = Box::into_raw(boxed);
    if layout.size() != 0 {
        // SAFETY: `raw` is a box's allocation from the global allocator,
        // of this layout; the value in it is never used again (nor
        // dropped: forgotten). The futures are `Unpin`, so nothing
        // promised to drop them in place.
        unsafe { std::alloc::dealloc(raw.cast::<u8>(), layout) };
    }
}

struct World {
    kernel: SimKernel,
    registry: Arc<Registry>,
    driver: Option<Driver>,
    manual: Option<ManualDriver>,
    source: File,
    live: Vec<Live>,
    /// Forgotten futures whose operations reached the ring: their slots
    /// stay in the driver's table.
    forgotten: usize,
}

/// What the kernel's read of `lens` bytes at `offset` of the source puts
/// in each buffer.
fn read_result(offset: usize, lens: &[usize]) -> Vec<Vec<u8>> {
    let mut at = offset;
    lens.iter()
        .map(|&len| {
            let end = (at + len).min(SOURCE_LEN);
            let bytes = (at..end).map(source_byte).collect();
            at = end;
            bytes
        })
        .collect()
}

impl World {
    fn driver(&self) -> &Driver {
        self.driver.as_ref().unwrap()
    }

    fn turn(&self) {
        let turn = self.manual.as_ref().unwrap().turn(Some(Duration::ZERO));
        turn.expect("a driver turn failed");
    }

    fn start(&mut self, input: &OpInput) {
        let group = self.registry.group();
        let reg = &self.registry;
        let (fut, expect) = match *input {
            OpInput::Read { offset, len: n } => {
                let offset = usize::from(offset);
                let expect = read_result(offset, &[len(n)]);
                let buf = reg.buf(group, vec![FILL; len(n)], 0, Proof::Read(expect[0].clone()));
                let fut = self.source.read_at(buf, offset as u64);
                (Fut::One(Box::new(fut)), Expect::Read(expect))
            }
            OpInput::Readv { offset, lens } => {
                let offset = usize::from(offset);
                let lens = lens.map(len);
                let expect = read_result(offset, &lens);
                let bufs = lens
                    .iter()
                    .zip(&expect)
                    .map(|(&n, e)| reg.buf(group, vec![FILL; n], 0, Proof::Read(e.clone())))
                    .collect();
                let fut = self.source.readv_at(bufs, offset as u64);
                (Fut::Many(Box::new(fut)), Expect::Read(expect))
            }
            OpInput::Write { offset, len: n } => self.write(group, offset, &[len(n)]),
            OpInput::Writev { offset, lens } => self.write(group, offset, &lens.map(len)),
            OpInput::Fsync => (Fut::Fsync(Box::new(self.source.fsync())), Expect::Fsync),
        };
        self.live.push(Live {
            fut,
            group,
            added: false,
            expect,
        });
    }

    /// A write (vectored if `lens` has two) to a file of its own.
    fn write(&mut self, group: usize, offset: u8, lens: &[usize]) -> (Fut, Expect) {
        let fd = self.kernel.create_file(vec![0; 64]);
        // SAFETY: the simulated kernel's files are never closed.
        let file = File::from_target(self.driver(), unsafe { Target::from_raw_fd(fd) });
        let at = usize::from(offset % 64);
        let mut data = Vec::new();
        let mut bufs = Vec::new();
        let mut here = at;
        for &n in lens {
            let bytes: Vec<u8> = (0..n).map(|i| 0x80 + (group + i) as u8 % 0x20).collect();
            let proof = Proof::Written { fd, at: here };
            bufs.push(self.registry.buf(group, bytes.clone(), n, proof));
            data.push(bytes);
            here += n;
        }
        let expect = Expect::Write { fd, at, data };
        let fut = if bufs.len() == 1 {
            Fut::One(Box::new(file.write_at(bufs.pop().unwrap(), at as u64)))
        } else {
            Fut::Many(Box::new(file.writev_at(bufs, at as u64)))
        };
        (fut, expect)
    }

    fn poll(&mut self, which: usize, times: u8) {
        let driver = self.driver().clone();
        for _ in 0..1 + times % 3 {
            let before = driver.in_flight();
            let live = &mut self.live[which];
            let mut cx = Context::from_waker(Waker::noop());
            let done = match &mut live.fut {
                Fut::One(f) => match Pin::new(f).poll(&mut cx) {
                    Poll::Ready((result, buf)) => Some((result, vec![buf])),
                    Poll::Pending => None,
                },
                Fut::Many(f) => match Pin::new(f).poll(&mut cx) {
                    Poll::Ready((result, bufs)) => Some((result, bufs)),
                    Poll::Pending => None,
                },
                Fut::Fsync(f) => match Pin::new(f).poll(&mut cx) {
                    Poll::Ready(result) => Some((result.map(|()| 0), Vec::new())),
                    Poll::Pending => None,
                },
            };
            match done {
                None => {
                    let after = driver.in_flight();
                    if !live.added && after == before + 1 {
                        live.added = true;
                        if matches!(live.fut, Fut::Fsync(_)) {
                            self.registry.inner().fsyncs += 1;
                        } else {
                            self.registry.added(live.group);
                        }
                    } else {
                        assert_eq!(after, before, "a poll moved the table");
                    }
                }
                Some((result, bufs)) => {
                    let live = self.live.swap_remove(which);
                    assert!(
                        live.added,
                        "completed without reaching the ring: {result:?}"
                    );
                    self.check(live, result, bufs);
                    return;
                }
            }
        }
    }

    /// A completed future's result and buffers.
    fn check(&self, live: Live, result: io::Result<usize>, bufs: Vec<TrackingBuf>) {
        let count = result.expect("an operation not cancelled failed");
        let group_ids: Vec<_> = bufs.iter().map(|b| b.id).collect();
        let inner = self.registry.inner();
        for id in &group_ids {
            assert_eq!(
                inner.entries[*id].group, live.group,
                "another operation's buffer"
            );
        }
        drop(inner);
        match live.expect {
            Expect::Read(expect) => {
                assert_eq!(count, expect.iter().map(Vec::len).sum::<usize>());
                assert_eq!(bufs.len(), expect.len());
                for (buf, expect) in bufs.iter().zip(&expect) {
                    assert_eq!(buf.bytes(), &expect[..], "read bytes");
                }
            }
            Expect::Write { fd, at, data } => {
                let total: usize = data.iter().map(Vec::len).sum();
                assert_eq!(count, total);
                let flat: Vec<u8> = data.concat();
                let file = self.kernel.file_contents(fd).unwrap();
                assert_eq!(&file[at..at + total], &flat[..], "written bytes");
                for (buf, data) in bufs.iter().zip(&data) {
                    assert_eq!(buf.bytes(), &data[..], "a write changed its buffer");
                }
            }
            Expect::Fsync => {
                assert_eq!(count, 0);
                self.registry.inner().fsyncs -= 1;
            }
        }
    }

    fn forget(&mut self, which: usize) {
        if !self.live[which].added {
            self.live.swap_remove(which);
            return;
        }
        if self.forgotten == 0 {
            let mut kept = lock(&FORGOTTEN);
            if kept.len() >= MAX_FORGETTING_INPUTS {
                self.live.swap_remove(which);
                return;
            }
            kept.push(self.driver().clone());
        }
        let live = self.live.swap_remove(which);
        self.registry.inner().groups[live.group].forgotten = true;
        self.forgotten += 1;
        match live.fut {
            Fut::One(f) => forget_boxed(f),
            Fut::Many(f) => forget_boxed(f),
            Fut::Fsync(f) => forget_boxed(f),
        }
    }

    /// Drops every future, lets the kernel finish everything, and drops
    /// the driver.
    fn end(mut self) {
        self.live.clear();
        self.kernel.clear_faults();
        for _ in 0..FINAL_TURNS {
            self.kernel.complete_deferred(usize::MAX);
            self.turn();
        }
        assert_eq!(
            self.kernel.pending(),
            0,
            "the kernel still holds operations"
        );
        assert_eq!(
            self.driver().in_flight(),
            self.forgotten,
            "slots left but the forgotten futures'"
        );
        let registry = Arc::clone(&self.registry);
        drop(self);
        registry.finish();
    }
}

fn ring(input: &Input, kernel: &SimKernel) -> (Driver, ManualDriver) {
    let mut list = URingAllowlist::new();
    for op in [
        URingOperation::Read,
        URingOperation::Write,
        URingOperation::Readv,
        URingOperation::Writev,
        URingOperation::Fsync,
    ] {
        list.allow_submit_operation(op);
    }
    if input.cancel {
        list.allow_submit_operation(URingOperation::AsyncCancel);
    }
    let ctx = kernel
        .new_context(1 << (input.entries % 4), Some(&list))
        .expect("simulated setup");
    Driver::builder(ctx)
        .allowlist(&list)
        .sim(kernel)
        .manual()
        .expect("a driver")
}

fuzz_target!(|input: Input| {
    let kernel = SimKernel::with_config(SimConfig {
        nodrop: input.nodrop,
        defer_completions: true,
        seed: u64::from(input.seed),
        ..SimConfig::default()
    });
    let (driver, manual) = ring(&input, &kernel);
    let source_fd = kernel.create_file((0..SOURCE_LEN).map(source_byte).collect());
    // SAFETY: the simulated kernel's files are never closed.
    let source = File::from_target(&driver, unsafe { Target::from_raw_fd(source_fd) });
    let registry = Arc::new(Registry {
        kernel: kernel.clone(),
        proofs: !input.cancel,
        inner: Mutex::new(Inner {
            entries: Vec::new(),
            groups: Vec::new(),
            holding: 0,
            fsyncs: 0,
        }),
    });
    let mut world = World {
        kernel: kernel.clone(),
        registry,
        driver: Some(driver),
        manual: Some(manual),
        source,
        live: Vec::new(),
        forgotten: 0,
    };
    for step in &input.steps {
        let pick = |n: u8| usize::from(n) % world.live.len().max(1);
        match *step {
            Step::Start(ref op) => world.start(op),
            Step::Poll { which, times } if !world.live.is_empty() => world.poll(pick(which), times),
            Step::Drop(which) if !world.live.is_empty() => {
                world.live.swap_remove(pick(which));
            }
            Step::Forget(which) if !world.live.is_empty() => world.forget(pick(which)),
            Step::Poll { .. } | Step::Drop(_) | Step::Forget(_) => {}
            Step::Turn => world.turn(),
            Step::Release(n) => {
                kernel.complete_deferred(usize::from(n % 4));
            }
            Step::Fault(ref fault) => kernel.inject(match *fault {
                FaultInput::Interrupted => Fault::Interrupted,
                FaultInput::Again => Fault::Again,
                FaultInput::Busy => Fault::Busy,
                FaultInput::ShortSubmit(n) => Fault::ShortSubmit(1 + u32::from(n % 4)),
            }),
        }
    }
    world.end();
});

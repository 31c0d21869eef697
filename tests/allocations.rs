//! Heap allocations per operation, counted by a global allocator: in steady
//! state a nop round trip (`add_nop` or a reused [`OpBatch`], then `wait`)
//! allocates nothing, a readv allocates only the iovec box its caller
//! builds, and `add_readv_iter` allocates exactly one iovec array per
//! operation.
//!
//! The counting allocator wraps [`System`] and counts per thread, so the
//! test harness's other threads (and the other tests, which run in parallel)
//! never disturb a measurement: each test measures only what its own thread
//! does. It is this test binary's global allocator and no other's.
// Needs the real kernel: Miri cannot make io_uring syscalls.
#![cfg(not(miri))]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use ringfence::{IoBufMut, OpBatch, URingContext};

/// Rounds run before measuring, so that the in-flight table and any other
/// buffer reach the size the loop needs.
const WARM_UP_ROUNDS: usize = 1_000;

/// Rounds measured.
const ROUNDS: usize = 10_000;

/// Ring size for every test: room for a batch of 32 with plenty to spare.
const RING_ENTRIES: usize = 64;

/// How long one test's loops may take before it fails rather than hang
/// (the loops take well under a second; AddressSanitizer makes them a few
/// times slower).
const DEADLINE: Duration = Duration::from_secs(60);

/// Heap calls made by one thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    /// `alloc` and `alloc_zeroed` calls.
    allocs: u64,
    /// `realloc` calls.
    reallocs: u64,
    /// `dealloc` calls.
    frees: u64,
}

impl Counts {
    /// Calls that allocate: `alloc`, `alloc_zeroed` and `realloc`.
    fn allocations(self) -> u64 {
        self.allocs + self.reallocs
    }

    /// The calls made between `earlier` and `self`.
    fn since(self, earlier: Counts) -> Counts {
        Counts {
            allocs: self.allocs - earlier.allocs,
            reallocs: self.reallocs - earlier.reallocs,
            frees: self.frees - earlier.frees,
        }
    }
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.allocs += other.allocs;
        self.reallocs += other.reallocs;
        self.frees += other.frees;
    }
}

thread_local! {
    /// This thread's heap calls so far. Const-initialised and without a
    /// destructor, so reaching it never allocates (which would recurse into
    /// the allocator) and works at any point of a thread's life.
    static COUNTS: Cell<Counts> = const {
        Cell::new(Counts { allocs: 0, reallocs: 0, frees: 0 })
    };
}

/// Adds one call to this thread's counts.
fn record(update: fn(&mut Counts)) {
    // `try_with` cannot fail for a const-initialised key with no destructor,
    // but an allocator must not panic, so a failure is ignored.
    let _ = COUNTS.try_with(|counts| {
        let mut now = counts.get();
        update(&mut now);
        counts.set(now);
    });
}

/// The calling thread's heap calls so far.
fn counts() -> Counts {
    COUNTS.with(Cell::get)
}

/// [`System`], counting each call on the calling thread.
struct CountingAllocator;

// SAFETY: every method forwards to `System` with the arguments it was given,
// so `System`'s guarantees are ours; the counting around it touches only a
// thread-local `Cell`, which neither allocates nor unwinds.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(|c| c.allocs += 1);
        // SAFETY: forwarded from our caller, who guarantees `layout` has a
        // non-zero size.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(|c| c.allocs += 1);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(|c| c.reallocs += 1);
        // SAFETY: forwarded from our caller: `ptr` came from this allocator
        // (that is, from `System`) with `layout`, and `new_size` is valid.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(|c| c.frees += 1);
        // SAFETY: forwarded from our caller: `ptr` came from this allocator
        // (that is, from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// What [`drain`] reaped.
#[derive(Debug, Default, PartialEq, Eq)]
struct Reaped {
    completions: usize,
    /// Sum of the user_data values (wrapping).
    user_data_sum: u64,
    /// Sum of the successful results.
    result_sum: u64,
}

/// Waits for and reaps every operation in flight, without allocating
/// (unless a completion failed, which panics). Fails after `deadline`.
fn drain(ring: &URingContext, deadline: Instant) -> Reaped {
    let mut reaped = Reaped::default();
    while ring.in_flight() > 0 {
        assert!(
            Instant::now() < deadline,
            "timed out with {} operations in flight",
            ring.in_flight()
        );
        for (user_data, result) in ring.wait().expect("wait failed") {
            let result = result.unwrap_or_else(|e| panic!("user_data {user_data} failed: {e}"));
            reaped.completions += 1;
            reaped.user_data_sum = reaped.user_data_sum.wrapping_add(user_data);
            reaped.result_sum += u64::from(result);
        }
    }
    reaped
}

/// The sum of `first..first + count`, as `Reaped::user_data_sum` adds them.
fn user_data_sum(first: u64, count: usize) -> u64 {
    (first..first + count as u64).fold(0, u64::wrapping_add)
}

/// Runs `rounds` rounds of `batch` nops with `add_nop`, each drained with
/// `wait`, using user_data from `*next` on. Returns the heap calls made.
fn add_nop_rounds(ring: &URingContext, batch: usize, rounds: usize, next: &mut u64) -> Counts {
    let deadline = Instant::now() + DEADLINE;
    let before = counts();
    for _ in 0..rounds {
        let first = *next;
        for _ in 0..batch {
            ring.add_nop(*next).expect("add_nop failed");
            *next += 1;
        }
        let reaped = drain(ring, deadline);
        assert!(
            reaped.completions == batch && reaped.user_data_sum == user_data_sum(first, batch),
            "a round of {batch} nops from user_data {first} reaped {reaped:?}"
        );
    }
    counts().since(before)
}

/// Like [`add_nop_rounds`], through one reused [`OpBatch`].
fn op_batch_rounds(
    ring: &URingContext,
    ops: &mut OpBatch,
    batch: usize,
    rounds: usize,
    next: &mut u64,
) -> Counts {
    let deadline = Instant::now() + DEADLINE;
    let before = counts();
    for _ in 0..rounds {
        let first = *next;
        for _ in 0..batch {
            ops.add(ringfence::op::Nop::new(), *next)
                .expect("a nop is valid");
            *next += 1;
        }
        ring.add_batch(ops).expect("add_batch failed");
        let reaped = drain(ring, deadline);
        assert!(
            reaped.completions == batch && reaped.user_data_sum == user_data_sum(first, batch),
            "a batch of {batch} nops from user_data {first} reaped {reaped:?}"
        );
    }
    counts().since(before)
}

/// Bytes each readv reads.
const READ_LEN: usize = 4096;

/// A scratch file holding `contents`.
fn file_with(contents: &[u8]) -> std::fs::File {
    let mut file = tempfile::tempfile().expect("tempfile");
    file.write_all(contents).expect("writing the scratch file");
    file
}

/// How one readv round's heap calls split between the caller and the
/// context.
#[derive(Debug, Default)]
struct ReadvCounts {
    /// Building the iovec box (the caller's part).
    caller: Counts,
    /// Adding the read and reaping its completion (the context's part).
    context: Counts,
}

#[test]
fn counting_allocator_counts_this_threads_calls() {
    let before = counts();
    let mut grown = std::hint::black_box(Vec::<u64>::with_capacity(1));
    grown.extend(0..64);
    drop(std::hint::black_box(grown));
    let counted = counts().since(before);
    // One alloc, at least one realloc to grow to 64, one free.
    assert!(
        counted.allocs == 1 && counted.reallocs >= 1 && counted.frees == 1,
        "a Vec allocated, grown and dropped was counted as {counted:?}"
    );
}

#[test]
fn counting_allocator_ignores_other_threads() {
    const CHILD_ALLOCATIONS: u64 = 1_000;
    let barrier = Barrier::new(2);
    let (ours, childs) = std::thread::scope(|s| {
        let child = s.spawn(|| {
            barrier.wait();
            barrier.wait();
            let before = counts();
            for _ in 0..CHILD_ALLOCATIONS {
                drop(std::hint::black_box(Vec::<u8>::with_capacity(8)));
            }
            let childs = counts().since(before);
            barrier.wait();
            childs
        });
        // The child allocates only between the second and third barrier,
        // and we measure across exactly that.
        barrier.wait();
        let before = counts();
        barrier.wait();
        barrier.wait();
        let ours = counts().since(before);
        (ours, child.join().expect("child thread panicked"))
    });
    assert_eq!(
        childs.allocations(),
        CHILD_ALLOCATIONS,
        "the child counted {childs:?} for its own allocations"
    );
    assert_eq!(
        ours,
        Counts::default(),
        "this thread counted {ours:?} while only another thread allocated"
    );
}

#[test]
fn nop_round_trips_allocate_nothing_in_steady_state() {
    let ring = ring!(RING_ENTRIES);
    let mut next = 0;
    for batch in [1, 32] {
        add_nop_rounds(&ring, batch, WARM_UP_ROUNDS, &mut next);
        let counted = add_nop_rounds(&ring, batch, ROUNDS, &mut next);
        eprintln!("add_nop, batch {batch}, {ROUNDS} rounds: {counted:?}");
        assert_eq!(
            counted,
            Counts::default(),
            "{ROUNDS} rounds of {batch} add_nop + wait made heap calls: {counted:?}"
        );
    }
}

#[test]
fn reused_op_batch_round_trips_allocate_nothing_in_steady_state() {
    let ring = ring!(RING_ENTRIES);
    let mut next = 0;
    for batch in [1, 32] {
        let mut ops = OpBatch::new();
        // The warm-up grows the batch (and the in-flight table) once.
        op_batch_rounds(&ring, &mut ops, batch, WARM_UP_ROUNDS, &mut next);
        let counted = op_batch_rounds(&ring, &mut ops, batch, ROUNDS, &mut next);
        eprintln!("OpBatch, batch {batch}, {ROUNDS} rounds: {counted:?}");
        assert_eq!(
            counted,
            Counts::default(),
            "{ROUNDS} rounds of a reused OpBatch of {batch} nops + wait made heap calls: \
             {counted:?}"
        );
    }
}

/// Runs `rounds` readv rounds of [`READ_LEN`] bytes from `file` into the
/// buffer at `buf`, each with its own `Box::pin`ned iovec array, and checks
/// each read got `expected`.
///
/// # Safety
///
/// `buf` must be valid for reads and writes of [`READ_LEN`] bytes for the
/// rest of the process, and nothing else may access it.
unsafe fn readv_rounds(
    ring: &URingContext,
    file: &std::fs::File,
    buf: *mut u8,
    expected: &[u8],
    rounds: usize,
) -> ReadvCounts {
    let deadline = Instant::now() + DEADLINE;
    let mut counted = ReadvCounts::default();
    for round in 0..rounds {
        let user_data = round as u64;
        // SAFETY: no read is in flight (the last round was drained), so
        // nothing else uses the buffer, which is valid for `READ_LEN` bytes.
        unsafe { std::ptr::write_bytes(buf, 0, READ_LEN) };

        let before = counts();
        // SAFETY: the buffer is valid for reads and writes for the rest of
        // the process, and only this read uses it until it is drained.
        let iovecs = Box::pin([unsafe { IoBufMut::from_raw_parts(buf, READ_LEN) }]);
        let boxed = counts();
        // SAFETY: as above: the buffer outlives the read, and nothing else
        // touches it until `drain` has reaped its completion.
        unsafe { ring.add_readv(iovecs, file.as_raw_fd(), Some(0), user_data) }
            .expect("add_readv failed");
        let reaped = drain(ring, deadline);
        let done = counts();
        counted.caller += boxed.since(before);
        counted.context += done.since(boxed);

        assert!(
            reaped.completions == 1
                && reaped.user_data_sum == user_data
                && reaped.result_sum == READ_LEN as u64,
            "readv {user_data} reaped {reaped:?}"
        );
        // SAFETY: the read has completed, so the kernel no longer writes
        // the buffer; it is valid for `READ_LEN` bytes.
        let got = unsafe { std::slice::from_raw_parts(buf, READ_LEN) };
        assert!(got == expected, "readv {user_data} read the wrong bytes");
    }
    counted
}

#[test]
fn readv_allocates_only_the_callers_box_in_steady_state() {
    let ring = ring!(RING_ENTRIES);
    let expected = common::pattern(READ_LEN, 1);
    let file = file_with(&expected);
    let buf = common::leak(vec![0; READ_LEN]).as_mut_ptr();
    // SAFETY: `buf` is leaked, so it lives for the rest of the
    // process, and only these reads use it.
    unsafe { readv_rounds(&ring, &file, buf, &expected, WARM_UP_ROUNDS) };
    // SAFETY: as above.
    let counted = unsafe { readv_rounds(&ring, &file, buf, &expected, ROUNDS) };
    eprintln!("readv, {ROUNDS} rounds: {counted:?}");
    let rounds = ROUNDS as u64;
    // The caller boxes one iovec array per read, and nothing else.
    assert_eq!(
        counted.caller,
        Counts {
            allocs: rounds,
            reallocs: 0,
            frees: 0
        },
        "building {ROUNDS} iovec boxes: {counted:?}"
    );
    // The context allocates nothing, and frees each box at its completion.
    assert_eq!(
        counted.context,
        Counts {
            allocs: 0,
            reallocs: 0,
            frees: rounds
        },
        "{ROUNDS} rounds of add_readv + wait: {counted:?}"
    );
    let total = counted.caller.allocations() + counted.context.allocations();
    assert_eq!(
        total, rounds,
        "{ROUNDS} readv rounds made {total} allocations: {counted:?}"
    );
}

/// Iovecs per `add_readv_iter` call: the read is split into this many
/// pieces, all copied into one array.
const ITER_IOVECS: usize = 4;

/// Runs `rounds` rounds of one `add_readv_iter` of [`READ_LEN`] bytes from
/// `file` into the buffer at `buf`, in [`ITER_IOVECS`] iovecs, each drained
/// with `wait`; checks each read got `expected`. Returns the heap calls of
/// adding and reaping.
///
/// # Safety
///
/// As for [`readv_rounds`].
unsafe fn readv_iter_rounds(
    ring: &URingContext,
    file: &std::fs::File,
    buf: *mut u8,
    expected: &[u8],
    rounds: usize,
) -> Counts {
    const PIECE: usize = READ_LEN / ITER_IOVECS;
    let deadline = Instant::now() + DEADLINE;
    let mut counted = Counts::default();
    for round in 0..rounds {
        let user_data = round as u64;
        // SAFETY: no read is in flight, so nothing else uses the buffer,
        // which is valid for `READ_LEN` bytes.
        unsafe { std::ptr::write_bytes(buf, 0, READ_LEN) };
        let iovecs = (0..ITER_IOVECS).map(|i| libc::iovec {
            // The pieces stay within the `READ_LEN` bytes at `buf`.
            iov_base: buf.wrapping_add(i * PIECE).cast(),
            iov_len: PIECE,
        });

        let before = counts();
        // SAFETY: each iovec lies in the buffer, which is valid for the rest
        // of the process, and nothing else touches it until `drain` has
        // reaped this read.
        unsafe { ring.add_readv_iter(iovecs, file.as_raw_fd(), Some(0), user_data) }
            .expect("add_readv_iter failed");
        let reaped = drain(ring, deadline);
        counted += counts().since(before);

        assert!(
            reaped.completions == 1
                && reaped.user_data_sum == user_data
                && reaped.result_sum == READ_LEN as u64,
            "readv_iter {user_data} reaped {reaped:?}"
        );
        // SAFETY: the read has completed, so the kernel no longer writes
        // the buffer; it is valid for `READ_LEN` bytes.
        let got = unsafe { std::slice::from_raw_parts(buf, READ_LEN) };
        assert!(
            got == expected,
            "readv_iter {user_data} read the wrong bytes"
        );
    }
    counted
}

/// `add_readv_iter` copies the iovecs into an array the context boxes and
/// keeps until the completion: with an iterator that knows its length (as
/// here), that is exactly one allocation per operation however many iovecs
/// it has, and no reallocation; the array is freed at the completion.
#[test]
fn readv_iter_allocates_one_iovec_array_per_op_in_steady_state() {
    let ring = ring!(RING_ENTRIES);
    let expected = common::pattern(READ_LEN, 1);
    let file = file_with(&expected);
    let buf = common::leak(vec![0; READ_LEN]).as_mut_ptr();
    // SAFETY: `buf` is leaked, so it lives for the rest of the
    // process, and only these reads use it.
    unsafe { readv_iter_rounds(&ring, &file, buf, &expected, WARM_UP_ROUNDS) };
    // SAFETY: as above.
    let counted = unsafe { readv_iter_rounds(&ring, &file, buf, &expected, ROUNDS) };
    eprintln!("readv_iter ({ITER_IOVECS} iovecs), {ROUNDS} rounds: {counted:?}");
    let rounds = ROUNDS as u64;
    assert_eq!(
        counted,
        Counts {
            allocs: rounds,
            reallocs: 0,
            frees: rounds
        },
        "{ROUNDS} rounds of add_readv_iter ({ITER_IOVECS} iovecs) + wait: expected one \
         iovec array allocated and freed per read, measured {counted:?}"
    );
}

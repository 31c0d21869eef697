//! Stress test against the real kernel: producer threads add a random mix of
//! operations (nop, readv/writev on a memfd at random offsets, poll on pipes
//! that the producers fire, async_cancel and poll removal of their own
//! earlier operations, fsync) to one shared ring, in random batches, for a
//! bounded time, while reaper threads collect the completions with
//! `wait_timeout`. Every operation added must complete exactly once, with a
//! result its kind allows, and reads must return what the model says the
//! memfd holds.
//!
//! - `RINGFENCE_STRESS_SECS`: how long the producers run (default 3).
//! - `RINGFENCE_STRESS_SEED`: the seed of the producers' random choices
//!   (decimal or `0x` hex; printed at the start of every run). The same seed
//!   gives each producer the same sequence of choices; the interleaving of
//!   threads still differs between runs.
//!
//! The figures go to stderr: `cargo test --release --test stress -- --nocapture`.
// Needs the real kernel: Miri cannot make io_uring syscalls (the
// simulated-kernel tests in src/sim run under Miri instead).
#![cfg(not(miri))]

mod common;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use common::{pinned, pipe, set_nonblocking};
use ringfence::{Error, EventType, IoBufMut, URingContext};

const PRODUCERS: usize = 4;
const REAPERS: usize = 2;
/// Small, so that the submission queue fills up and `NoSpace` is exercised.
const RING_ENTRIES: usize = 32;
/// The memfd is cut into blocks; each producer owns `BLOCKS_PER_PRODUCER` of
/// them and is the only one to read or write them.
const BLOCK: usize = 256;
const BLOCKS_PER_PRODUCER: usize = 64;
/// A readv or writev covers 1 to this many consecutive blocks...
const MAX_OP_BLOCKS: usize = 3;
/// ... split into 1 to this many iovecs.
const MAX_OP_IOVECS: usize = 4;
/// Producers add 1 to this many operations between two `submit` calls:
/// more than the submission queue holds, so that adds meet `NoSpace`.
const MAX_BATCH: u64 = 48;
/// Producers pause while this many operations are in flight: far more than
/// the completion ring holds (so completions overflow and come back), but
/// bounded, so the reapers keep up and blocks get free for writes.
const MAX_IN_FLIGHT: usize = 1024;
/// How many of its latest polls and fsyncs a producer may cancel.
const RECENT: usize = 32;
/// How long a reaper's `wait_timeout` blocks at most.
const REAP_SLICE: Duration = Duration::from_millis(20);
/// How long after the producers stop everything must have been reaped, and
/// how long one operation may stay refused for want of space.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Fill of read buffers, before the kernel overwrites them.
const READ_FILL: u8 = 0xee;
/// user_data is `(producer + 1) << INDEX_BITS | index`: disjoint per
/// producer, and never 0.
const INDEX_BITS: u32 = 48;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;

/// The contents of global block `block` after the write of `version`;
/// version 0 is the zeros of a fresh memfd.
fn block_pattern(block: usize, version: u64, out: &mut [u8]) {
    if version == 0 {
        out.fill(0);
        return;
    }
    // A generator seeded with the (block, version) pair: the same bytes each
    // time they are asked for (written, then checked against a read), and
    // different for every other block or version.
    fastrand::Rng::with_seed(((block as u64) << 32) ^ version).fill(out);
}

/// A heap buffer handed to the kernel by a readv or writev. It is freed by
/// [`Buf::into_vec`] only after its operation's completion has been reaped;
/// a `Buf` that is simply dropped (a failing test) leaks its memory, so the
/// kernel can never write to freed memory.
struct Buf(*mut [u8]);

// SAFETY: a `Buf` owns its allocation alone (nothing else frees it, and the
// only other user is the kernel, through the iovecs of one operation), and
// it is moved between threads, never shared.
unsafe impl Send for Buf {}

impl Buf {
    fn new(bytes: Vec<u8>) -> Buf {
        Buf(Box::into_raw(bytes.into_boxed_slice()))
    }

    /// The buffer cut into iovecs at `cuts` (increasing offsets inside it).
    fn iovecs(&self, cuts: &[usize]) -> Vec<libc::iovec> {
        let base = self.0.cast::<u8>();
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(self.0.len());
        bounds
            .windows(2)
            .map(|w| libc::iovec {
                // `wrapping_add` stays inside the allocation: w[0] <= len.
                iov_base: base.wrapping_add(w[0]).cast(),
                iov_len: w[1] - w[0],
            })
            .collect()
    }

    /// Takes the buffer back.
    ///
    /// # Safety
    ///
    /// The operation it was handed to must have completed, and its
    /// completion must have been reaped.
    unsafe fn into_vec(self) -> Vec<u8> {
        // SAFETY: `self.0` came from `Box::into_raw` in `new` and is freed
        // only here, once; the caller guarantees the kernel is done with it.
        unsafe { Box::from_raw(self.0) }.into_vec()
    }
}

/// An operation added and not yet reaped: what its completion is checked
/// against.
enum Op {
    Nop,
    Fsync,
    Poll,
    Cancel {
        target: u64,
    },
    RemovePoll {
        target: u64,
    },
    Write {
        block: usize,
        blocks: usize,
        buf: Buf,
    },
    Read {
        block: usize,
        blocks: usize,
        buf: Buf,
        expected: Vec<u8>,
    },
}

impl Op {
    fn kind(&self) -> Kind {
        match self {
            Op::Nop => Kind::Nop,
            Op::Fsync => Kind::Fsync,
            Op::Poll => Kind::Poll,
            Op::Cancel { .. } => Kind::Cancel,
            Op::RemovePoll { .. } => Kind::RemovePoll,
            Op::Write { .. } => Kind::Write,
            Op::Read { .. } => Kind::Read,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Nop,
    Fsync,
    Poll,
    Cancel,
    RemovePoll,
    Write,
    Read,
}

const KINDS: [Kind; 7] = [
    Kind::Nop,
    Kind::Fsync,
    Kind::Poll,
    Kind::Cancel,
    Kind::RemovePoll,
    Kind::Write,
    Kind::Read,
];

/// What a producer hands to the ring for one operation; plain data, so a
/// refused add can be retried.
enum Issue {
    Nop,
    Fsync,
    Poll,
    Cancel(u64),
    RemovePoll(u64),
    Write(u64, Vec<libc::iovec>, bool),
    Read(u64, Vec<libc::iovec>, bool),
}

/// One producer's cancellations and the operations that ended cancelled:
/// at the end each must match the other.
#[derive(Default)]
struct Cancellations {
    /// target -> the result of every cancellation (async_cancel or poll
    /// removal) aimed at it: 0 or an errno.
    attempts: HashMap<u64, Vec<i32>>,
    /// Operations that completed with `ECANCELED`.
    cancelled: HashMap<u64, Kind>,
}

#[derive(Default)]
struct Stats {
    added: [AtomicU64; KINDS.len()],
    completed: AtomicU64,
    no_space: AtomicU64,
    kernel_busy: AtomicU64,
    submits: AtomicU64,
    max_in_flight: AtomicUsize,
    throttled: AtomicU64,
    cancel_ok: AtomicU64,
    cancel_enoent: AtomicU64,
    cancel_ealready: AtomicU64,
    polls_fired: AtomicU64,
    polls_cancelled: AtomicU64,
    fsyncs_cancelled: AtomicU64,
    bytes_checked: AtomicU64,
    pipe_fires: AtomicU64,
    ops_skipped: AtomicU64,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Everything the threads share. The ring is the first field, so it is
/// dropped (and drained) before the pipes, memfd and buffers it may use.
struct Shared {
    ring: URingContext,
    memfd: File,
    /// Per producer: (read end, write end) of the pipe its polls wait on.
    /// Both ends are non-blocking.
    pipes: Vec<(File, File)>,
    /// Per producer: its operations added and not yet reaped, by user_data.
    /// A record is made before the add, so a completion always finds it.
    pending: Vec<Mutex<HashMap<u64, Op>>>,
    /// Per producer: indices below this have been handed out as user_data.
    issued: Vec<AtomicU64>,
    /// Per global block: readv / writev operations in flight on it.
    block_reads: Vec<AtomicU32>,
    block_writes: Vec<AtomicU32>,
    cancellations: Vec<Mutex<Cancellations>>,
    stats: Stats,
    /// Producers that may still add operations.
    producers_adding: AtomicUsize,
    /// Set when any thread panics, so that the others stop at once.
    abort: AtomicBool,
}

/// Sets `abort` if the thread unwinds, so a failure anywhere stops the test
/// promptly instead of leaving the other threads to their deadlines.
struct AbortOnPanic<'a>(&'a AtomicBool);

impl Drop for AbortOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// Counts a producer as done adding when dropped, even by unwinding.
struct ProducerAdding<'a>(&'a AtomicUsize);

impl Drop for ProducerAdding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn user_data(producer: usize, index: u64) -> u64 {
    ((producer as u64 + 1) << INDEX_BITS) | index
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={value:?} is not a number: {e}")))
}

/// `ring.submit()`, counting the kernel's refusals, which leave the
/// operations queued for the next submit.
fn submit(shared: &Shared) {
    count(&shared.stats.submits);
    match shared.ring.submit() {
        Ok(()) => {}
        Err(Error::KernelBusy(_)) => count(&shared.stats.kernel_busy),
        Err(e) => panic!("submit failed: {e}"),
    }
}

/// Hands `issue` to the ring as user_data `ud`, submitting and backing off
/// while the submission queue is full.
fn add(shared: &Shared, ud: u64, issue: &Issue) {
    let ring = &shared.ring;
    let since = Instant::now();
    let mut refusals = 0u32;
    loop {
        let added = match issue {
            Issue::Nop => ring.add_nop(ud),
            Issue::Fsync => ring.add_fsync(shared.memfd.as_raw_fd(), ud),
            Issue::Poll => {
                let producer = ((ud >> INDEX_BITS) - 1) as usize;
                let fd = shared.pipes[producer].0.as_raw_fd();
                ring.add_poll_fd(fd, EventType::Read, ud)
            }
            Issue::Cancel(target) => ring.async_cancel(*target, ud),
            Issue::RemovePoll(target) => ring.remove_poll_fd(*target, ud),
            Issue::Write(offset, iovecs, raw) => {
                let fd = shared.memfd.as_raw_fd();
                if *raw {
                    // SAFETY: the iovecs cut a `Buf` that is kept in the
                    // pending record until this operation's completion has
                    // been reaped, and nothing writes it meanwhile.
                    unsafe { ring.add_writev_iter(iovecs.iter().copied(), fd, Some(*offset), ud) }
                } else {
                    // SAFETY: as above.
                    unsafe { ring.add_writev(pinned_iovecs(iovecs), fd, Some(*offset), ud) }
                }
            }
            Issue::Read(offset, iovecs, raw) => {
                let fd = shared.memfd.as_raw_fd();
                if *raw {
                    // SAFETY: the iovecs cut a `Buf` that is kept in the
                    // pending record until this operation's completion has
                    // been reaped, and nothing else touches it meanwhile.
                    unsafe { ring.add_readv_iter(iovecs.iter().copied(), fd, Some(*offset), ud) }
                } else {
                    // SAFETY: as above.
                    unsafe { ring.add_readv(pinned_iovecs(iovecs), fd, Some(*offset), ud) }
                }
            }
        };
        match added {
            Ok(()) => return,
            Err(Error::NoSpace) => {
                count(&shared.stats.no_space);
                refusals += 1;
                assert!(
                    since.elapsed() < DRAIN_TIMEOUT,
                    "user_data {ud:#x} refused for want of space for {DRAIN_TIMEOUT:?} \
                     ({refusals} times), with {} operations in flight",
                    ring.in_flight()
                );
                assert!(
                    !shared.abort.load(Ordering::SeqCst),
                    "another thread failed"
                );
                submit(shared);
                if refusals % 8 == 0 {
                    thread::sleep(Duration::from_micros(100));
                } else {
                    thread::yield_now();
                }
            }
            Err(e) => panic!("adding user_data {ud:#x} failed: {e}"),
        }
    }
}

/// Raw iovecs in the form `add_readv` and `add_writev` take.
fn pinned_iovecs(iovecs: &[libc::iovec]) -> std::pin::Pin<Box<[IoBufMut<'static>]>> {
    pinned(
        iovecs
            .iter()
            // SAFETY: each iovec cuts a live `Buf`; see the callers.
            .map(|iov| unsafe { IoBufMut::from_raw_parts(iov.iov_base.cast(), iov.iov_len) })
            .collect(),
    )
}

/// One producer's own state: which blocks hold what, and what it may
/// cancel.
struct Producer<'a> {
    shared: &'a Shared,
    me: usize,
    rng: fastrand::Rng,
    next_index: u64,
    /// Per owned block: the version of the last write added to it.
    versions: Vec<u64>,
    next_version: u64,
    recent_polls: VecDeque<u64>,
    recent_fsyncs: VecDeque<u64>,
}

impl Producer<'_> {
    fn first_block(&self) -> usize {
        self.me * BLOCKS_PER_PRODUCER
    }

    /// Records `op` as pending under a fresh user_data, then adds it.
    fn issue(&mut self, op: Op, issue: Issue) -> u64 {
        let shared = self.shared;
        let ud = user_data(self.me, self.next_index);
        self.next_index += 1;
        shared.issued[self.me].store(self.next_index, Ordering::SeqCst);
        let kind = op.kind();
        if let Op::Read { block, blocks, .. } | Op::Write { block, blocks, .. } = &op {
            let counters = match kind {
                Kind::Read => &shared.block_reads,
                _ => &shared.block_writes,
            };
            for counter in &counters[*block..*block + *blocks] {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
        let previous = lock(&shared.pending[self.me]).insert(ud, op);
        assert!(previous.is_none(), "user_data {ud:#x} handed out twice");
        add(shared, ud, &issue);
        count(&shared.stats.added[kind as usize]);
        ud
    }

    /// A random run of owned blocks, as (global first block, count).
    fn random_range(&mut self) -> (usize, usize) {
        let blocks = self.rng.usize(1..=MAX_OP_BLOCKS);
        let start = self.rng.usize(..=BLOCKS_PER_PRODUCER - blocks);
        (self.first_block() + start, blocks)
    }

    /// Where to cut `len` bytes into 1 to `MAX_OP_IOVECS` iovecs.
    fn random_cuts(&mut self, len: usize) -> Vec<usize> {
        let pieces = self.rng.usize(1..=MAX_OP_IOVECS);
        let mut cuts: Vec<usize> = (1..pieces).map(|_| self.rng.usize(1..len)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        cuts
    }

    /// Adds a writev of new versions of a random run of blocks, if one is
    /// free of other reads and writes; returns whether it did.
    fn write(&mut self) -> bool {
        let shared = self.shared;
        let (block, blocks) = self.random_range();
        let busy = (block..block + blocks).any(|b| {
            shared.block_reads[b].load(Ordering::SeqCst) != 0
                || shared.block_writes[b].load(Ordering::SeqCst) != 0
        });
        if busy {
            return false;
        }
        let mut data = vec![0u8; blocks * BLOCK];
        let first = self.first_block();
        for (i, chunk) in data.chunks_mut(BLOCK).enumerate() {
            let version = self.next_version;
            self.next_version += 1;
            self.versions[block + i - first] = version;
            block_pattern(block + i, version, chunk);
        }
        let buf = Buf::new(data);
        let iovecs = buf.iovecs(&self.random_cuts(blocks * BLOCK));
        let raw = self.rng.bool();
        let offset = (block * BLOCK) as u64;
        let op = Op::Write { block, blocks, buf };
        self.issue(op, Issue::Write(offset, iovecs, raw));
        true
    }

    /// Adds a readv of a random run of blocks, if no write to them is in
    /// flight (so that their contents are known); returns whether it did.
    fn read(&mut self) -> bool {
        let shared = self.shared;
        let (block, blocks) = self.random_range();
        if (block..block + blocks).any(|b| shared.block_writes[b].load(Ordering::SeqCst) != 0) {
            return false;
        }
        // No write is in flight and only this thread adds writes to these
        // blocks, so the last write added to each has completed.
        let mut expected = vec![0u8; blocks * BLOCK];
        for (i, chunk) in expected.chunks_mut(BLOCK).enumerate() {
            let version = self.versions[block + i - self.first_block()];
            block_pattern(block + i, version, chunk);
        }
        let buf = Buf::new(vec![READ_FILL; blocks * BLOCK]);
        let iovecs = buf.iovecs(&self.random_cuts(blocks * BLOCK));
        let raw = self.rng.bool();
        let offset = (block * BLOCK) as u64;
        let op = Op::Read {
            block,
            blocks,
            buf,
            expected,
        };
        self.issue(op, Issue::Read(offset, iovecs, raw));
        true
    }

    fn remember(recent: &mut VecDeque<u64>, ud: u64) {
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(ud);
    }

    fn pick(&mut self, from_polls: bool) -> Option<u64> {
        let recent = if from_polls || self.recent_fsyncs.is_empty() {
            &self.recent_polls
        } else {
            &self.recent_fsyncs
        };
        if recent.is_empty() {
            return None;
        }
        let index = self.rng.usize(..recent.len());
        Some(recent[index])
    }

    /// One random step: an operation, or firing or emptying a pipe.
    fn step(&mut self) {
        let shared = self.shared;
        let roll = self.rng.u32(..100);
        let done = match roll {
            0..=19 => {
                self.issue(Op::Nop, Issue::Nop);
                true
            }
            20..=34 => self.write(),
            35..=49 => self.read(),
            50..=64 => {
                let ud = self.issue(Op::Poll, Issue::Poll);
                Self::remember(&mut self.recent_polls, ud);
                true
            }
            65..=71 => {
                let from_polls = self.rng.u32(..4) != 0;
                match self.pick(from_polls) {
                    Some(target) => {
                        self.issue(Op::Cancel { target }, Issue::Cancel(target));
                        true
                    }
                    None => false,
                }
            }
            72..=78 => match self.pick(true) {
                Some(target) => {
                    self.issue(Op::RemovePoll { target }, Issue::RemovePoll(target));
                    true
                }
                None => false,
            },
            79..=85 => {
                let ud = self.issue(Op::Fsync, Issue::Fsync);
                Self::remember(&mut self.recent_fsyncs, ud);
                true
            }
            86..=92 => {
                // Fire some producer's pipe: its pending polls complete.
                let whose = self.rng.usize(..PRODUCERS);
                fire(&shared.pipes[whose].1);
                count(&shared.stats.pipe_fires);
                true
            }
            _ => {
                // Empty our own pipe, so that later polls wait.
                let mut sink = [0u8; 64];
                loop {
                    match (&shared.pipes[self.me].0).read(&mut sink) {
                        Ok(0) => panic!("pipe write end closed"),
                        Ok(_) => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("reading the pipe: {e}"),
                    }
                }
                true
            }
        };
        if !done {
            count(&shared.stats.ops_skipped);
        }
    }
}

/// Writes a byte to a non-blocking pipe; a full pipe is readable already.
fn fire(mut writer: &File) {
    match writer.write(b"!") {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => panic!("writing the pipe: {e}"),
    }
}

fn produce(shared: &Shared, me: usize, seed: u64, stop_at: Instant) {
    let _abort = AbortOnPanic(&shared.abort);
    let adding = ProducerAdding(&shared.producers_adding);
    let mut producer = Producer {
        shared,
        me,
        // One stream per producer, all from the one seed.
        rng: fastrand::Rng::with_seed(seed ^ (me as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407)),
        next_index: 0,
        versions: vec![0; BLOCKS_PER_PRODUCER],
        next_version: 1,
        recent_polls: VecDeque::new(),
        recent_fsyncs: VecDeque::new(),
    };
    while Instant::now() < stop_at && !shared.abort.load(Ordering::SeqCst) {
        let batch = producer.rng.u64(1..=MAX_BATCH);
        for _ in 0..batch {
            producer.step();
        }
        submit(shared);
        let in_flight = shared.ring.in_flight();
        shared
            .stats
            .max_in_flight
            .fetch_max(in_flight, Ordering::Relaxed);
        if in_flight >= MAX_IN_FLIGHT {
            count(&shared.stats.throttled);
            while shared.ring.in_flight() >= MAX_IN_FLIGHT
                && Instant::now() < stop_at
                && !shared.abort.load(Ordering::SeqCst)
            {
                thread::sleep(Duration::from_micros(100));
            }
        }
    }
    // Leave nothing queued.
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        match shared.ring.submit() {
            Ok(()) => break,
            Err(Error::KernelBusy(_)) => {
                count(&shared.stats.kernel_busy);
                assert!(
                    Instant::now() < deadline,
                    "the kernel refused the last submissions for {DRAIN_TIMEOUT:?}"
                );
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("final submit failed: {e}"),
        }
    }
    drop(adding);
    // The kernel ties each request to the thread whose io_uring_enter
    // consumed it: a poll that fires after that thread has exited completes
    // with ECANCELED (see the test below). Any thread's submit may have
    // consumed any producer's poll, so stay until nothing is in flight:
    // once no producer empties a pipe any more, fire them all, which
    // completes every poll.
    let all_stopped = |shared: &Shared| shared.producers_adding.load(Ordering::SeqCst) == 0;
    wait_until(shared, deadline, "the other producers to stop", all_stopped);
    for (_, writer) in &shared.pipes {
        fire(writer);
    }
    let drained = |shared: &Shared| shared.ring.in_flight() == 0;
    wait_until(shared, deadline, "every operation to complete", drained);
}

/// Sleeps until `done` or another thread fails; panics at `deadline`.
fn wait_until(shared: &Shared, deadline: Instant, what: &str, done: impl Fn(&Shared) -> bool) {
    while !done(shared) && !shared.abort.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "waited {DRAIN_TIMEOUT:?} for {what}; {} operations in flight",
            shared.ring.in_flight()
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Checks one completion against its pending record, and frees what the
/// operation kept alive.
fn check(shared: &Shared, ud: u64, result: io::Result<u32>) {
    let stats = &shared.stats;
    let producer = (ud >> INDEX_BITS) as usize;
    assert!(
        (1..=PRODUCERS).contains(&producer),
        "completion for user_data {ud:#x}, which no producer uses: {result:?}"
    );
    let producer = producer - 1;
    let Some(op) = lock(&shared.pending[producer]).remove(&ud) else {
        let issued = shared.issued[producer].load(Ordering::SeqCst);
        if ud & INDEX_MASK < issued {
            panic!("user_data {ud:#x} completed a second time: {result:?}");
        }
        panic!("completion for user_data {ud:#x}, which was never added: {result:?}");
    };
    count(&stats.completed);
    let errno = common::errno(&result);
    let cancelled = |kind| {
        let earlier = lock(&shared.cancellations[producer])
            .cancelled
            .insert(ud, kind);
        assert!(
            earlier.is_none(),
            "user_data {ud:#x} recorded as cancelled twice"
        );
    };
    match op {
        Op::Nop => assert_eq!(result.ok(), Some(0), "nop {ud:#x}"),
        Op::Fsync => match (&result, errno) {
            (Ok(0), _) => {}
            (_, Some(libc::ECANCELED)) => {
                count(&stats.fsyncs_cancelled);
                cancelled(Kind::Fsync);
            }
            _ => panic!("fsync {ud:#x} completed with {result:?}"),
        },
        Op::Poll => match (&result, errno) {
            (Ok(events), _) => {
                assert_ne!(
                    events & libc::POLLIN as u32,
                    0,
                    "poll {ud:#x} completed without POLLIN: {events:#x}"
                );
                count(&stats.polls_fired);
            }
            (_, Some(libc::ECANCELED)) => {
                count(&stats.polls_cancelled);
                cancelled(Kind::Poll);
            }
            _ => panic!("poll {ud:#x} completed with {result:?}"),
        },
        Op::Cancel { target } | Op::RemovePoll { target } => {
            let code = match (&result, errno) {
                (Ok(0), _) => {
                    count(&stats.cancel_ok);
                    0
                }
                (_, Some(libc::ENOENT)) => {
                    count(&stats.cancel_enoent);
                    libc::ENOENT
                }
                (_, Some(libc::EALREADY)) => {
                    count(&stats.cancel_ealready);
                    libc::EALREADY
                }
                _ => panic!("cancellation {ud:#x} of {target:#x} completed with {result:?}"),
            };
            lock(&shared.cancellations[producer])
                .attempts
                .entry(target)
                .or_default()
                .push(code);
        }
        Op::Write { block, blocks, buf } => {
            // SAFETY: this is the write's completion, just reaped.
            let data = unsafe { buf.into_vec() };
            assert_eq!(
                result.as_ref().ok(),
                Some(&(data.len() as u32)),
                "writev {ud:#x} of blocks {block}+{blocks}"
            );
            for counter in &shared.block_writes[block..block + blocks] {
                counter.fetch_sub(1, Ordering::SeqCst);
            }
        }
        Op::Read {
            block,
            blocks,
            buf,
            expected,
        } => {
            // SAFETY: this is the read's completion, just reaped.
            let data = unsafe { buf.into_vec() };
            assert_eq!(
                result.as_ref().ok(),
                Some(&(data.len() as u32)),
                "readv {ud:#x} of blocks {block}+{blocks}"
            );
            if let Some(at) = data.iter().zip(&expected).position(|(a, b)| a != b) {
                panic!(
                    "readv {ud:#x} of blocks {block}+{blocks}: byte {at} is {:#04x}, \
                     the model says {:#04x}",
                    data[at], expected[at]
                );
            }
            stats
                .bytes_checked
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            for counter in &shared.block_reads[block..block + blocks] {
                counter.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// Reaps with `wait_timeout` until the producers have stopped and nothing
/// is in flight. Returns how many completions this reaper took.
fn reap(shared: &Shared, deadline: Instant) -> u64 {
    let _abort = AbortOnPanic(&shared.abort);
    let mut reaped = 0;
    while !shared.abort.load(Ordering::SeqCst) {
        // Read before reaping: once no producer runs, nothing new is added,
        // and an empty ring after this batch means everything was reaped.
        let producers_done = shared.producers_adding.load(Ordering::SeqCst) == 0;
        let batch = shared
            .ring
            .wait_timeout(REAP_SLICE)
            .unwrap_or_else(|e| panic!("wait_timeout failed: {e}"));
        for (ud, result) in batch {
            check(shared, ud, result);
            reaped += 1;
        }
        if producers_done && shared.ring.in_flight() == 0 {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "{} operations still in flight {DRAIN_TIMEOUT:?} after the producers \
                 stopped; some pending: {}",
                shared.ring.in_flight(),
                describe_pending(shared)
            );
        }
    }
    reaped
}

/// A few pending records, for failure messages.
fn describe_pending(shared: &Shared) -> String {
    let mut out = Vec::new();
    for pending in &shared.pending {
        for (ud, op) in lock(pending).iter().take(8) {
            out.push(format!("{ud:#x} ({:?})", op.kind()));
        }
    }
    out.join(", ")
}

#[test]
fn random_operations_from_four_producers_each_complete_exactly_once() {
    let secs = env_u64("RINGFENCE_STRESS_SECS").unwrap_or(3);
    // A fresh seed for each run unless one is given, printed so that a
    // failure can be replayed.
    let seed = env_u64("RINGFENCE_STRESS_SEED").unwrap_or_else(|| fastrand::u64(..));
    eprintln!(
        "stress: seed {seed:#x} (RINGFENCE_STRESS_SEED replays it), {secs} s, \
         {PRODUCERS} producers, {REAPERS} reapers, ring of {RING_ENTRIES}"
    );

    let ring = ring!(RING_ENTRIES);
    let pipes = (0..PRODUCERS)
        .map(|_| {
            let (reader, writer) = pipe();
            set_nonblocking(reader.as_raw_fd());
            set_nonblocking(writer.as_raw_fd());
            (reader, writer)
        })
        .collect();
    let blocks = PRODUCERS * BLOCKS_PER_PRODUCER;
    let shared = Shared {
        ring,
        memfd: common::memfd((blocks * BLOCK) as u64),
        pipes,
        pending: (0..PRODUCERS).map(|_| Mutex::default()).collect(),
        issued: (0..PRODUCERS).map(|_| AtomicU64::new(0)).collect(),
        block_reads: (0..blocks).map(|_| AtomicU32::new(0)).collect(),
        block_writes: (0..blocks).map(|_| AtomicU32::new(0)).collect(),
        cancellations: (0..PRODUCERS).map(|_| Mutex::default()).collect(),
        stats: Stats::default(),
        producers_adding: AtomicUsize::new(PRODUCERS),
        abort: AtomicBool::new(false),
    };

    let start = Instant::now();
    let stop_at = start + Duration::from_secs(secs);
    let reap_deadline = stop_at + DRAIN_TIMEOUT;
    let per_reaper: Vec<u64> = thread::scope(|s| {
        let shared = &shared;
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|me| s.spawn(move || produce(shared, me, seed, stop_at)))
            .collect();
        let reapers: Vec<_> = (0..REAPERS)
            .map(|_| s.spawn(move || reap(shared, reap_deadline)))
            .collect();
        // Join everything before reporting the first failure.
        let produced: Vec<_> = producers.into_iter().map(|p| p.join()).collect();
        let reaped: Vec<_> = reapers.into_iter().map(|r| r.join()).collect();
        for result in produced {
            if let Err(panic) = result {
                std::panic::resume_unwind(panic);
            }
        }
        reaped
            .into_iter()
            .map(|r| r.unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });
    let elapsed = start.elapsed();

    let stats = &shared.stats;
    let added: Vec<u64> = stats.added.iter().map(get).collect();
    let total_added: u64 = added.iter().sum();
    let completed = get(&stats.completed);
    let secs_f = elapsed.as_secs_f64();
    eprintln!(
        "stress: {completed} completions in {secs_f:.2} s ({:.0} ops/s), split {per_reaper:?} \
         between reapers",
        completed as f64 / secs_f
    );
    let by_kind: Vec<String> = KINDS
        .iter()
        .zip(&added)
        .map(|(kind, n)| format!("{kind:?} {n}"))
        .collect();
    eprintln!("stress: added {total_added}: {}", by_kind.join(", "));
    eprintln!(
        "stress: NoSpace retries {}, KernelBusy {}, submit calls {}, max in flight {} \
         (producers paused {} times at {MAX_IN_FLIGHT}), steps skipped (blocks busy, \
         nothing to cancel) {}",
        get(&stats.no_space),
        get(&stats.kernel_busy),
        get(&stats.submits),
        stats.max_in_flight.load(Ordering::Relaxed),
        get(&stats.throttled),
        get(&stats.ops_skipped)
    );
    eprintln!(
        "stress: polls fired {} / cancelled {}, fsyncs cancelled {}, cancellations \
         ok {} / ENOENT {} / EALREADY {}, pipe fires {}, bytes read and checked {}",
        get(&stats.polls_fired),
        get(&stats.polls_cancelled),
        get(&stats.fsyncs_cancelled),
        get(&stats.cancel_ok),
        get(&stats.cancel_enoent),
        get(&stats.cancel_ealready),
        get(&stats.pipe_fires),
        get(&stats.bytes_checked)
    );

    let removed_twice: usize = shared
        .cancellations
        .iter()
        .map(|c| {
            let c = lock(c);
            let successes = |codes: &Vec<i32>| codes.iter().filter(|&&code| code == 0).count();
            c.attempts
                .values()
                .filter(|codes| successes(codes) > 1)
                .count()
        })
        .sum();
    eprintln!("stress: targets that two cancellations both reported removing: {removed_twice}");

    // Exactly once: nothing pending, as many completions as adds (a
    // duplicate or unknown completion has already failed in `check`).
    for (producer, pending) in shared.pending.iter().enumerate() {
        let pending = lock(pending);
        assert!(
            pending.is_empty(),
            "producer {producer}: {} operations never completed",
            pending.len()
        );
    }
    assert_eq!(completed, total_added, "completions != operations added");
    assert_eq!(per_reaper.iter().sum::<u64>(), completed);
    assert_eq!(
        shared.ring.in_flight(),
        0,
        "in_flight() after the last completion"
    );
    for (block, (reads, writes)) in shared
        .block_reads
        .iter()
        .zip(&shared.block_writes)
        .enumerate()
    {
        assert_eq!(
            (reads.load(Ordering::SeqCst), writes.load(Ordering::SeqCst)),
            (0, 0),
            "block {block} still has operations counted in flight"
        );
    }
    // Cancellations agree with what was cancelled: every operation a
    // cancellation reported removing (0) ended with ECANCELED, and every
    // operation that ended with ECANCELED was the target of a cancellation
    // that reported removing it, or that found it already running
    // (EALREADY: io-wq may flag work it has picked up but not started,
    // which then completes cancelled).
    let mut mismatches = Vec::new();
    let mut cancelled_while_running = 0;
    for cancellations in &shared.cancellations {
        let cancellations = lock(cancellations);
        for (target, codes) in &cancellations.attempts {
            let ended_cancelled = cancellations.cancelled.contains_key(target);
            if codes.contains(&0) && !ended_cancelled {
                mismatches.push(format!(
                    "{target:#x} did not end with ECANCELED; cancellations: {codes:?}"
                ));
            }
        }
        for (target, kind) in &cancellations.cancelled {
            let codes = cancellations.attempts.get(target);
            let explained =
                codes.is_some_and(|codes| codes.iter().any(|&c| c == 0 || c == libc::EALREADY));
            if codes.is_some_and(|codes| !codes.contains(&0)) {
                cancelled_while_running += 1;
            }
            if !explained {
                mismatches.push(format!(
                    "{kind:?} {target:#x} ended with ECANCELED; cancellations: {codes:?}"
                ));
            }
        }
    }
    eprintln!(
        "stress: operations that ended with ECANCELED after only EALREADY from their \
         cancellations: {cancelled_while_running}"
    );
    assert!(
        mismatches.is_empty(),
        "{} operations where cancellations and ECANCELED completions disagree: {}",
        mismatches.len(),
        mismatches.join("; ")
    );
    // The run did what it is for: every kind of operation, a full
    // submission queue, more in flight than the completion ring holds, and
    // polls both fired and cancelled.
    for (kind, n) in KINDS.iter().zip(&added) {
        assert!(*n > 0, "no {kind:?} was added in {secs} s");
    }
    assert!(get(&stats.no_space) > 0, "adds never found the queue full");
    assert!(
        stats.max_in_flight.load(Ordering::Relaxed) > 2 * RING_ENTRIES,
        "never more in flight than the completion ring holds"
    );
    assert!(get(&stats.cancel_ok) > 0, "no cancellation ever succeeded");
    assert!(get(&stats.polls_fired) > 0, "no poll fired");
    assert!(get(&stats.polls_cancelled) > 0, "no poll was cancelled");
}

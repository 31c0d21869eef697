//! A sandboxed block-device worker, as a virtual machine monitor would run
//! one: random reads and writes against a disk image through a ring the
//! kernel restricts to the few operations a virtio-blk device needs.
//!
//! It shows:
//!
//! - a ring built with a [`URingAllowlist`] of exactly `Readv`, `Writev`,
//!   `Fsync`, `Nop`, `PollAdd` and `AsyncCancel` (the last so that dropping
//!   the ring on an error path can cancel what is still in flight);
//! - a queue of up to 32 requests in flight, each read or write using its
//!   own buffer from a pool the program allocates once and owns, handed to
//!   the ring as `IoBufMut<'static>`, with the `unsafe` contract spelled out
//!   where each buffer is lent to the kernel and where it comes back;
//! - `user_data` as the request id, matched up again in [`URingContext::wait`];
//! - `Error::NoSpace` handled by reaping completions first, and an fsync
//!   after every 64 completed writes;
//! - every byte of every read checked against an in-memory shadow copy of the
//!   disk, and the whole image checked against it at the end with plain
//!   `std::fs` reads;
//! - an operation outside the allowlist (a hole-punching `fallocate` that
//!   would zero part of the disk) consumed but refused by the kernel with
//!   `EACCES`.
//!
//! Run it with
//!
//! ```text
//! cargo run --release --example blockdev [-- [IMAGE [REQUESTS]]]
//! ```
//!
//! Without arguments the 16 MiB image goes into a temporary directory that
//! is removed at exit. With `IMAGE`, the image is created at that path
//! (which must not exist yet) and left there. `REQUESTS` (or the environment
//! variable `BLOCKDEV_REQUESTS`) sets how many read/write requests to serve,
//! 4000 by default, and `BLOCKDEV_SEED` changes the fixed seed of the
//! pseudo-random image pattern, offsets and lengths. (Which requests have to
//! be redrawn because they overlap one in flight depends on the order
//! completions arrive in, so the exact mix varies a little from run to run.)
//! The program exits non-zero on any mismatch or unexpected error.

use std::collections::HashMap;
use std::error::Error;
use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use ringfence::{IoBufMut, URingAllowlist, URingContext, URingOperation};

/// Size of the disk image.
const IMAGE_SIZE: usize = 16 << 20;
/// The unit of every offset and length, as for a real disk.
const SECTOR: usize = 512;
/// The largest request; also the size of each buffer in the pool.
const MAX_REQUEST: usize = 64 << 10;
/// Requests in flight at most, and so the number of buffers.
const QUEUE_DEPTH: usize = 32;
/// Queue an fsync after this many completed writes.
const FSYNC_EVERY: u64 = 64;
/// Read/write requests served unless told otherwise.
const DEFAULT_REQUESTS: u64 = 4000;
/// Seed of the pseudo-random generator unless `BLOCKDEV_SEED` says otherwise.
const DEFAULT_SEED: u64 = 0x9e37_79b9_7f4a_7c15;
/// Random draws before giving up on finding a request that does not overlap
/// one in flight (and reaping a completion first instead).
const MAX_DRAWS: usize = 16;

type BoxError = Box<dyn Error>;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blockdev: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), BoxError> {
    let config = Config::from_env()?;

    // The disk image, filled with a known pattern. The shadow copy starts as
    // the same bytes and follows every completed write.
    let mut rng = XorShift64::new(config.seed);
    let mut shadow = vec![0u8; IMAGE_SIZE];
    rng.fill(&mut shadow);
    let tempdir;
    let (path, kept) = match &config.image {
        Some(path) => (path.clone(), "left in place"),
        None => {
            tempdir = tempfile::tempdir()?;
            (tempdir.path().join("disk.img"), "removed at exit")
        }
    };
    let mut disk = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    disk.write_all(&shadow)?;
    println!(
        "disk image: {} ({} MiB, seed {:#x}, {kept})",
        path.display(),
        IMAGE_SIZE >> 20,
        config.seed
    );

    // The ring: the kernel will refuse anything not on this list. The
    // housekeeping pair (Nop to wake a blocked thread, AsyncCancel for drop
    // to stop what is in flight) comes first.
    let mut allowlist = URingAllowlist::new();
    allowlist.allow_housekeeping();
    for op in [
        URingOperation::Readv,
        URingOperation::Writev,
        URingOperation::Fsync,
        URingOperation::PollAdd,
    ] {
        allowlist.allow_submit_operation(op);
    }
    let ring = URingContext::new(QUEUE_DEPTH, Some(&allowlist))?;
    let allowed: Vec<_> = URingOperation::ALL
        .iter()
        .filter(|op| allowlist.allows_submit_operation(**op))
        .collect();
    println!(
        "ring: {} entries, restricted to {allowed:?}",
        ring.sq_entries()
    );

    let mut worker = Worker::new(&ring, disk.as_raw_fd(), shadow, rng);
    let start = Instant::now();
    worker.serve(config.requests)?;
    // Flush before shutting down, as a device does when the guest goes away.
    worker.queue_fsync()?;
    worker.drain()?;
    let elapsed = start.elapsed();

    worker.show_allowlist_enforced()?;
    let stats = &worker.stats;
    let ops = stats.reads + stats.writes + stats.fsyncs;
    println!(
        "served {} requests ({} reads, {} writes) and {} fsyncs in {:.2?}: {:.0} ops/s",
        stats.reads + stats.writes,
        stats.reads,
        stats.writes,
        stats.fsyncs,
        elapsed,
        ops as f64 / elapsed.as_secs_f64()
    );
    println!(
        "read {:.1} MiB, wrote {:.1} MiB; {} overlapping requests redrawn, \
         submission queue full {} times",
        mib(stats.bytes_read),
        mib(stats.bytes_written),
        stats.redrawn,
        stats.queue_full
    );

    verify_image(&path, &worker.shadow)?;
    println!("every read matched the shadow copy; all {IMAGE_SIZE} bytes of the image verified");
    Ok(())
}

/// Reads the image back with plain `std::fs` and compares it with the
/// shadow copy.
fn verify_image(path: &Path, shadow: &[u8]) -> Result<(), BoxError> {
    let on_disk = std::fs::read(path)?;
    if on_disk.len() != shadow.len() {
        let (len, expected) = (on_disk.len(), shadow.len());
        return Err(format!("the image is {len} bytes, expected {expected}").into());
    }
    if let Some(i) = first_difference(&on_disk, shadow) {
        return Err(format!(
            "the image differs from the shadow copy at offset {i}: \
             {:#04x} on disk, {:#04x} expected",
            on_disk[i], shadow[i]
        )
        .into());
    }
    Ok(())
}

/// What the command line and environment ask for.
struct Config {
    image: Option<PathBuf>,
    requests: u64,
    seed: u64,
}

impl Config {
    fn from_env() -> Result<Config, BoxError> {
        let usage = "usage: blockdev [IMAGE [REQUESTS]]";
        let mut args = std::env::args_os().skip(1);
        let image = args.next().map(PathBuf::from);
        if image
            .as_deref()
            .is_some_and(|p| p == Path::new("-h") || p == Path::new("--help"))
        {
            println!("{usage}\nenvironment: BLOCKDEV_REQUESTS, BLOCKDEV_SEED");
            std::process::exit(0);
        }
        let requests = match args.next() {
            Some(arg) => Some(arg.to_string_lossy().into_owned()),
            None => std::env::var("BLOCKDEV_REQUESTS").ok(),
        };
        let requests = match requests {
            Some(s) => s
                .parse()
                .map_err(|_| format!("REQUESTS must be a number, not {s:?}; {usage}"))?,
            None => DEFAULT_REQUESTS,
        };
        let seed = match std::env::var("BLOCKDEV_SEED") {
            Ok(s) => parse_seed(&s).ok_or_else(|| {
                format!("BLOCKDEV_SEED must be a non-zero number (0x for hex), not {s:?}")
            })?,
            Err(_) => DEFAULT_SEED,
        };
        if args.next().is_some() {
            return Err(usage.into());
        }
        Ok(Config {
            image,
            requests,
            seed,
        })
    }
}

/// One request the worker has queued and not yet reaped, keyed by its id
/// (the operation's `user_data`).
enum Request {
    Io(Io),
    Fsync,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Read,
    Write,
}

/// A read or write of `len` bytes at byte `offset`, through pool buffer
/// `slot`.
#[derive(Clone, Copy)]
struct Io {
    dir: Dir,
    offset: usize,
    len: usize,
    slot: usize,
}

impl Io {
    /// Whether `self` and `other` touch a common sector.
    fn overlaps(&self, other: &Io) -> bool {
        self.offset < other.offset + other.len && other.offset < self.offset + self.len
    }
}

impl fmt::Display for Io {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = match self.dir {
            Dir::Read => "read",
            Dir::Write => "write",
        };
        write!(f, "{dir} of {} bytes at offset {}", self.len, self.offset)
    }
}

#[derive(Default)]
struct Stats {
    reads: u64,
    writes: u64,
    fsyncs: u64,
    bytes_read: u64,
    bytes_written: u64,
    /// Requests drawn again because they overlapped one in flight.
    redrawn: u64,
    /// Times an add found the submission queue full and reaped first.
    queue_full: u64,
}

/// The device: the ring, the disk, the buffers, and the shadow copy.
struct Worker<'a> {
    ring: &'a URingContext,
    disk: RawFd,
    pool: BufferPool,
    shadow: Vec<u8>,
    rng: XorShift64,
    in_flight: HashMap<u64, Request>,
    next_id: u64,
    fsync_due: bool,
    writes_since_fsync: u64,
    stats: Stats,
}

impl<'a> Worker<'a> {
    fn new(ring: &'a URingContext, disk: RawFd, shadow: Vec<u8>, rng: XorShift64) -> Worker<'a> {
        Worker {
            ring,
            disk,
            pool: BufferPool::new(),
            shadow,
            rng,
            in_flight: HashMap::new(),
            next_id: 1,
            fsync_due: false,
            writes_since_fsync: 0,
            stats: Stats::default(),
        }
    }

    /// Serves `requests` random reads and writes, at most [`QUEUE_DEPTH`] in
    /// flight, and reaps them all.
    fn serve(&mut self, requests: u64) -> Result<(), BoxError> {
        let mut issued = 0;
        while issued < requests || !self.in_flight.is_empty() {
            // Fill the queue: every free buffer gets a request.
            while issued < requests && self.pool.has_free() {
                if self.fsync_due {
                    self.queue_fsync()?;
                }
                let Some(io) = self.draw_request() else {
                    break; // Everything drawn overlaps a request in flight.
                };
                self.queue_io(io)?;
                issued += 1;
            }
            // Submit, wait for at least one completion, handle them all.
            self.reap()?;
        }
        Ok(())
    }

    /// Reaps until nothing is in flight.
    fn drain(&mut self) -> Result<(), BoxError> {
        while !self.in_flight.is_empty() {
            self.reap()?;
        }
        Ok(())
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// A random read or write of 512 B to 64 KiB at a random sector, that
    /// overlaps no request in flight it could race with: two reads may share
    /// sectors, but a write shares none with any other request, so what a
    /// read returns is always exactly what the shadow copy holds. `None` if
    /// [`MAX_DRAWS`] draws all overlapped. The buffer is chosen later.
    fn draw_request(&mut self) -> Option<Io> {
        for _ in 0..MAX_DRAWS {
            let sectors = 1 + self.rng.below(MAX_REQUEST / SECTOR);
            let sector = self.rng.below(IMAGE_SIZE / SECTOR - sectors + 1);
            let dir = if self.rng.below(2) == 0 {
                Dir::Read
            } else {
                Dir::Write
            };
            let io = Io {
                dir,
                offset: sector * SECTOR,
                len: sectors * SECTOR,
                slot: usize::MAX,
            };
            let conflict = self.in_flight.values().any(|request| match request {
                Request::Io(other) => {
                    (io.dir == Dir::Write || other.dir == Dir::Write) && io.overlaps(other)
                }
                Request::Fsync => false,
            });
            if !conflict {
                return Some(io);
            }
            self.stats.redrawn += 1;
        }
        None
    }

    /// Takes a buffer for `io` (filling it with fresh data for a write) and
    /// queues the operation.
    fn queue_io(&mut self, mut io: Io) -> Result<(), BoxError> {
        io.slot = self.pool.take().expect("serve() checked for a free buffer");
        if io.dir == Dir::Write {
            self.rng.fill(&mut self.pool.block_mut(io.slot)[..io.len]);
        }
        let id = self.take_id();
        self.push(id, Request::Io(io))
    }

    fn queue_fsync(&mut self) -> Result<(), BoxError> {
        self.fsync_due = false;
        let id = self.take_id();
        self.push(id, Request::Fsync)
    }

    /// Adds `request` to the ring as operation `id`, reaping completions
    /// first for as long as the submission queue is full.
    fn push(&mut self, id: u64, request: Request) -> Result<(), BoxError> {
        loop {
            let added = match &request {
                Request::Fsync => self.ring.add_fsync(self.disk, id),
                &Request::Io(io) => {
                    let iovecs = Box::pin([self.pool.lend(io.slot, io.len)]);
                    let offset = Some(io.offset as u64);
                    match io.dir {
                        // SAFETY: the iovec covers the first `io.len` bytes
                        // of pool block `io.slot`, which is leaked (valid for
                        // the rest of the process) and now lent: nothing
                        // reads or writes the block, nor lends it to another
                        // request, until `complete` has reaped this request's
                        // completion from `wait`. If we bail out with
                        // requests in flight, the ring's drop cancels them,
                        // and the blocks, being leaked, stay valid for any
                        // late access by the kernel.
                        Dir::Read => unsafe { self.ring.add_readv(iovecs, self.disk, offset, id) },
                        // SAFETY: as for the read; the kernel only reads the
                        // block, which we filled before lending it.
                        Dir::Write => unsafe {
                            self.ring.add_writev(iovecs, self.disk, offset, id)
                        },
                    }
                }
            };
            match added {
                Ok(()) => {
                    self.in_flight.insert(id, request);
                    return Ok(());
                }
                // Make room: `wait` submits what is queued and returns what
                // has completed. (The refused add dropped its iovec array,
                // never the buffer; the next turn lends the block again.)
                Err(ringfence::Error::NoSpace) if !self.in_flight.is_empty() => {
                    self.stats.queue_full += 1;
                    self.reap()?;
                }
                Err(e) => return Err(format!("queueing request {id}: {e}").into()),
            }
        }
    }

    /// With nothing in flight, runs a nop (allowed) and a hole-punching
    /// fallocate (not allowed) on the disk, and checks that the kernel
    /// refuses the second with `EACCES`. Were it allowed, it would zero the
    /// first MiB of the image, and the final verification would fail.
    fn show_allowlist_enforced(&mut self) -> Result<(), BoxError> {
        let id = self.take_id();
        self.ring.add_nop(id)?;
        let nop = wait_for(self.ring, id)??;
        println!("nop: allowed, completed with {nop}");

        let id = self.take_id();
        let punch_hole = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32;
        self.ring
            .add_fallocate(self.disk, 0, 1 << 20, punch_hole, id)?;
        match wait_for(self.ring, id)? {
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                println!("fallocate (punch hole): not allowed, refused by the kernel with EACCES");
                Ok(())
            }
            other => Err(format!(
                "fallocate is not on the allowlist, yet it completed with {other:?}"
            )
            .into()),
        }
    }

    /// Submits what is queued, waits for at least one completion, and
    /// handles every completion that is ready.
    fn reap(&mut self) -> Result<(), BoxError> {
        // Collected first: handling a completion needs `&mut self`, while
        // the iterator borrows the ring.
        let completions: Vec<_> = self.ring.wait()?.collect();
        for (id, result) in completions {
            self.complete(id, result)?;
        }
        Ok(())
    }

    /// Handles the completion of request `id`: checks a read against the
    /// shadow copy, applies a write to it, and returns the buffer to the
    /// pool.
    fn complete(&mut self, id: u64, result: io::Result<u32>) -> Result<(), BoxError> {
        let request = self
            .in_flight
            .remove(&id)
            .ok_or_else(|| format!("completion for unknown request {id}"))?;
        let io = match request {
            Request::Fsync => {
                result.map_err(|e| format!("fsync (request {id}) failed: {e}"))?;
                self.stats.fsyncs += 1;
                return Ok(());
            }
            Request::Io(io) => io,
        };
        // SAFETY: `wait` has just returned this request's completion, so the
        // kernel is done with the block it was lent (whatever the result).
        unsafe { self.pool.give_back(io.slot) };
        let done = result.map_err(|e| format!("{io} (request {id}) failed: {e}"))? as usize;
        if done != io.len {
            return Err(format!("short {io} (request {id}): {done} bytes").into());
        }
        let data = &self.pool.block_mut(io.slot)[..io.len];
        let expected = &mut self.shadow[io.offset..io.offset + io.len];
        match io.dir {
            Dir::Read => {
                if let Some(i) = first_difference(data, expected) {
                    return Err(format!(
                        "data mismatch in {io} (request {id}) at disk offset {}: \
                         read {:#04x}, expected {:#04x}",
                        io.offset + i,
                        data[i],
                        expected[i]
                    )
                    .into());
                }
                self.stats.reads += 1;
                self.stats.bytes_read += io.len as u64;
            }
            Dir::Write => {
                expected.copy_from_slice(data);
                self.stats.writes += 1;
                self.stats.bytes_written += io.len as u64;
                self.writes_since_fsync += 1;
                if self.writes_since_fsync == FSYNC_EVERY {
                    // An fsync covers the writes that completed before it.
                    self.writes_since_fsync = 0;
                    self.fsync_due = true;
                }
            }
        }
        Ok(())
    }
}

/// The worker's I/O buffers: one page-aligned 64 KiB block per request in
/// flight, allocated once and leaked, so that they live as long as the
/// process, as `IoBufMut<'static>` asks.
///
/// Each block is either *free*, and the worker may use it through
/// [`block_mut`](Self::block_mut), or *lent* to one readv/writev in flight,
/// and only the kernel touches it. It becomes free again only through
/// [`give_back`](Self::give_back), once that operation's completion has
/// been reaped.
struct BufferPool {
    /// [`QUEUE_DEPTH`] blocks, leaked: valid for the life of the process.
    /// Kept as a raw pointer, since the kernel writes to lent blocks while
    /// the pool exists.
    blocks: *mut Block,
    lent: [bool; QUEUE_DEPTH],
    free: Vec<usize>,
}

/// Page-aligned, so the same buffers would also do for `O_DIRECT`.
#[derive(Clone)]
#[repr(C, align(4096))]
struct Block([u8; MAX_REQUEST]);

impl BufferPool {
    fn new() -> BufferPool {
        let blocks = vec![Block([0; MAX_REQUEST]); QUEUE_DEPTH].into_boxed_slice();
        BufferPool {
            blocks: Box::leak(blocks).as_mut_ptr(),
            lent: [false; QUEUE_DEPTH],
            free: (0..QUEUE_DEPTH).collect(),
        }
    }

    fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    /// A free block, reserved for the caller.
    fn take(&mut self) -> Option<usize> {
        self.free.pop()
    }

    /// The contents of block `slot`, which must not be lent.
    fn block_mut(&mut self, slot: usize) -> &mut [u8; MAX_REQUEST] {
        assert!(!self.lent[slot], "block {slot} is lent to the kernel");
        // SAFETY: `slot` < QUEUE_DEPTH (indexing `lent` checked it), so this
        // is one of the leaked blocks, valid for the life of the process.
        // It is not lent, so the kernel is not using it, and the returned
        // reference borrows the pool mutably, so it is the only one.
        unsafe { &mut (*self.blocks.add(slot)).0 }
    }

    /// Marks block `slot` lent and describes its first `len` bytes for
    /// readv/writev.
    fn lend(&mut self, slot: usize, len: usize) -> IoBufMut<'static> {
        assert!(len <= MAX_REQUEST);
        self.lent[slot] = true;
        // SAFETY: the block is leaked, so valid for the rest of the process,
        // and `len` bytes fit in it. While it is lent, `block_mut` refuses
        // it, and only `give_back`, whose contract is that the kernel is done
        // with it, makes it usable again.
        unsafe { IoBufMut::from_raw_parts(self.blocks.add(slot).cast::<u8>(), len) }
    }

    /// Returns block `slot` to the free list.
    ///
    /// # Safety
    ///
    /// The operation the block was lent to must be finished: its completion
    /// has been returned by [`URingContext::wait`].
    unsafe fn give_back(&mut self, slot: usize) {
        self.lent[slot] = false;
        self.free.push(slot);
    }
}

/// A tiny pseudo-random generator (xorshift64), so the example needs no
/// dependency. Not for anything that needs real randomness.
struct XorShift64(u64);

impl XorShift64 {
    fn new(seed: u64) -> XorShift64 {
        assert_ne!(seed, 0, "zero is xorshift's fixed point: use another seed");
        XorShift64(seed)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (slightly biased, which is fine here).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes()[..chunk.len()]);
        }
    }
}

/// Waits for the completion of `id`, the only operation in flight.
fn wait_for(ring: &URingContext, id: u64) -> Result<io::Result<u32>, BoxError> {
    // `wait` blocks until something completes; a few turns are plenty.
    for _ in 0..100 {
        if let Some((user_data, result)) = ring.wait()?.next() {
            if user_data != id {
                return Err(format!("expected completion {id}, got {user_data}").into());
            }
            return Ok(result);
        }
    }
    Err(format!("no completion for operation {id}").into())
}

/// A non-zero decimal number, or a hexadecimal one after `0x`.
fn parse_seed(s: &str) -> Option<u64> {
    let seed = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    };
    seed.filter(|&seed| seed != 0)
}

/// The index of the first byte where `a` and `b` differ.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len())),
    )
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

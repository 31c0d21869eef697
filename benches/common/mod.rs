//! What the benchmarks share: criterion settings and ring sizes, the nop
//! loops, and the set-ups of the fixed-read and SQPOLL comparisons (used
//! by their criterion benches and by `quick fixed` / `quick sqpoll`).
#![allow(dead_code)]

use std::alloc::Layout;
use std::fs::File;
use std::hint::black_box;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use criterion::Criterion;
use io_uring::{opcode, types, IoUring};
use ringfence::op::{Nop, ReadFixed, Readv, RegisteredBuffer, Target};
use ringfence::{IoBufMut, OpBatch, URingBuilder, URingContext};

/// Batch sizes every batched benchmark runs.
pub const BATCHES: [usize; 4] = [1, 8, 32, 128];

/// Ring entries: room for the largest batch.
pub const RING_ENTRIES: u32 = 128;

/// Short runs: the machine is shared and noisy, so what matters is that
/// the contenders are measured side by side in one run.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args()
}

/// Reaps `batch` nop completions.
pub fn drain(ring: &URingContext, batch: usize) {
    let mut reaped = 0;
    while reaped < batch {
        for (user_data, result) in ring.wait().unwrap() {
            black_box((user_data, result.unwrap()));
            reaped += 1;
        }
    }
}

/// One nop round through a reused `OpBatch`: queue `batch` nops under
/// one lock, then reap them.
pub fn ringfence_batch_round(ring: &URingContext, ops: &mut OpBatch, batch: usize) {
    for user_data in 0..batch as u64 {
        ops.add(Nop::new(), user_data).unwrap();
    }
    ring.add_batch(ops).unwrap();
    drain(ring, batch);
}

/// One nop round with the `io-uring` crate: push `batch` nops, submit and
/// wait for all, drain the completion queue.
pub fn io_uring_round(ring: &mut IoUring, batch: usize) {
    {
        let mut sq = ring.submission();
        for user_data in 0..batch as u64 {
            let nop = opcode::Nop::new().build().user_data(user_data);
            // SAFETY: a nop references no memory.
            unsafe { sq.push(&nop) }.unwrap();
        }
    }
    ring.submit_and_wait(batch).unwrap();
    let mut reaped = 0;
    while reaped < batch {
        for cqe in ring.completion() {
            black_box((cqe.user_data(), cqe.result()));
            reaped += 1;
        }
    }
}

/// Reaps `batch` completions of `ring` with `wait`, failing unless each is
/// a success of `expect` (0 for a nop, the block size for a read).
fn reap(ring: &URingContext, batch: usize, expect: u32) -> io::Result<()> {
    let mut reaped = 0;
    while reaped < batch {
        for (user_data, result) in ring.wait()? {
            let n = result?;
            if n != expect {
                return Err(io::Error::other(format!(
                    "operation {user_data} completed with {n}, not {expect}"
                )));
            }
            reaped += 1;
        }
    }
    Ok(())
}

/// Submits what is queued on `ring` and reaps `batch` completions, each a
/// success of `expect`.
fn io_uring_reap(ring: &mut IoUring, batch: usize, expect: i32) -> io::Result<()> {
    ring.submit_and_wait(batch)?;
    let mut reaped = 0;
    while reaped < batch {
        for cqe in ring.completion() {
            if cqe.result() != expect {
                let (user_data, result) = (cqe.user_data(), cqe.result());
                return Err(io::Error::other(format!(
                    "operation {user_data} completed with {result}, not {expect}"
                )));
            }
            reaped += 1;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------
// SQPOLL: the nop loop with an explicit submit, for a ring whose kernel
// thread submits and for one whose caller does.

/// How long the kernel's SQ thread of the SQPOLL rings polls an empty
/// queue before it sleeps (`sq_thread_idle`): 100 ms, for ringfence and
/// the io-uring crate alike.
pub const SQPOLL_IDLE: Duration = Duration::from_millis(100);

/// One nop round trip as a caller of an SQPOLL ring writes it: queue
/// `batch` nops through `ops` under one lock, `submit` (on an SQPOLL ring
/// an enter only if the kernel's thread sleeps, on a plain ring the enter
/// that submits), then `wait` until all `batch` are back, each `Ok(0)`.
pub fn ringfence_submit_round(
    ring: &URingContext,
    ops: &mut OpBatch,
    batch: usize,
) -> io::Result<()> {
    for user_data in 0..batch as u64 {
        ops.add(Nop::new(), user_data)?;
    }
    ring.add_batch(ops)?;
    ring.submit()?;
    reap(ring, batch, 0)
}

/// [`io_uring_round`], failing instead of panicking: push `batch` nops,
/// `submit_and_wait(batch)` (the crate sets `IORING_ENTER_SQ_WAKEUP` on an
/// SQPOLL ring whose thread sleeps, and enters to wait either way), drain
/// the completion queue, each result 0.
pub fn io_uring_nop_round(ring: &mut IoUring, batch: usize) -> io::Result<()> {
    {
        let mut sq = ring.submission();
        for user_data in 0..batch as u64 {
            let nop = opcode::Nop::new().build().user_data(user_data);
            // SAFETY: a nop references no memory.
            unsafe { sq.push(&nop) }.map_err(io::Error::other)?;
        }
    }
    io_uring_reap(ring, batch, 0)
}

/// How long a polling round trip spins for its completions before it
/// gives up with an error instead of hanging.
const POLL_LIMIT: Duration = Duration::from_secs(5);

/// One nop round trip that never blocks in the kernel, as a caller of an
/// SQPOLL ring who polls writes it: queue `batch` nops through `ops`, then
/// `wait_timeout(Duration::ZERO)` in a loop until all `batch` are back,
/// each `Ok(0)`. That call submits (on an SQPOLL ring without an enter
/// unless the kernel's thread sleeps) and only looks at the completion
/// queue, so a round trip makes no system call while the thread is awake.
pub fn ringfence_polling_round(
    ring: &URingContext,
    ops: &mut OpBatch,
    batch: usize,
) -> io::Result<()> {
    for user_data in 0..batch as u64 {
        ops.add(Nop::new(), user_data)?;
    }
    ring.add_batch(ops)?;
    let (start, mut spins, mut reaped) = (Instant::now(), 0u32, 0);
    while reaped < batch {
        for (user_data, result) in ring.wait_timeout(Duration::ZERO)? {
            match result? {
                0 => reaped += 1,
                n => {
                    return Err(io::Error::other(format!(
                        "nop {user_data} completed with {n}"
                    )))
                }
            }
        }
        spins = spins.wrapping_add(1);
        if spins % 4096 == 0 && start.elapsed() > POLL_LIMIT {
            return Err(io::Error::other("no completion after polling for 5 s"));
        }
        std::hint::spin_loop();
    }
    Ok(())
}

/// [`ringfence_polling_round`] with the io-uring crate: push `batch` nops,
/// `submit()` (on an SQPOLL ring an enter only if the kernel's thread
/// sleeps), then look at the completion queue in a loop until all are
/// back, each with result 0.
pub fn io_uring_polling_round(ring: &mut IoUring, batch: usize) -> io::Result<()> {
    {
        let mut sq = ring.submission();
        for user_data in 0..batch as u64 {
            let nop = opcode::Nop::new().build().user_data(user_data);
            // SAFETY: a nop references no memory.
            unsafe { sq.push(&nop) }.map_err(io::Error::other)?;
        }
    }
    ring.submit()?;
    let (start, mut spins, mut reaped) = (Instant::now(), 0u32, 0);
    while reaped < batch {
        for cqe in ring.completion() {
            if cqe.result() != 0 {
                let (user_data, result) = (cqe.user_data(), cqe.result());
                return Err(io::Error::other(format!(
                    "nop {user_data} completed with {result}"
                )));
            }
            reaped += 1;
        }
        spins = spins.wrapping_add(1);
        if spins % 4096 == 0 && start.elapsed() > POLL_LIMIT {
            return Err(io::Error::other("no completion after polling for 5 s"));
        }
        std::hint::spin_loop();
    }
    Ok(())
}

/// The four nop rings of the SQPOLL comparison, each of [`RING_ENTRIES`]:
/// ringfence and the io-uring crate, each plain and with a kernel SQ
/// thread idling for [`SQPOLL_IDLE`].
pub struct NopRings {
    pub plain: URingContext,
    pub sqpoll: URingContext,
    pub io_uring: IoUring,
    pub io_uring_sqpoll: IoUring,
    pub ops: OpBatch,
}

impl NopRings {
    /// The rings; with `sq_cpu`, both SQ threads are pinned to that CPU
    /// (`URingBuilder::sqpoll_cpu`, the crate's `setup_sqpoll_cpu`).
    pub fn new(sq_cpu: Option<u32>) -> io::Result<NopRings> {
        let mut sqpoll = URingBuilder::new(RING_ENTRIES as usize).sqpoll(SQPOLL_IDLE);
        let mut io_uring_sqpoll = IoUring::builder();
        io_uring_sqpoll.setup_sqpoll(SQPOLL_IDLE.as_millis() as u32);
        if let Some(cpu) = sq_cpu {
            sqpoll = sqpoll.sqpoll_cpu(cpu);
            io_uring_sqpoll.setup_sqpoll_cpu(cpu);
        }
        Ok(NopRings {
            plain: URingContext::new(RING_ENTRIES as usize, None)?,
            sqpoll: sqpoll.build()?,
            io_uring: IoUring::new(RING_ENTRIES)?,
            io_uring_sqpoll: io_uring_sqpoll.build(RING_ENTRIES)?,
            ops: OpBatch::with_capacity(RING_ENTRIES as usize),
        })
    }
}

// ---------------------------------------------------------------------
// 4 KiB reads at random offsets of a 64 MiB tmpfs file: readv against
// read_fixed on registered buffers (the approach of readv.rs, whose
// helpers these copy).

/// The size of one read, and of each registered buffer.
pub const BLOCK: usize = 4096;

/// The size of the file read.
pub const FILE_LEN: usize = 64 << 20;

/// Registered buffers per ring: one per read of the largest batch the
/// fixed-read comparison runs.
pub const FIXED_BUFFERS: usize = 32;

/// Where the file goes: tmpfs on every Linux system that mounts it.
const TMPFS_DIR: &str = "/dev/shm";

/// A file of [`FILE_LEN`] bytes on tmpfs, in [`TMPFS_DIR`], so that every
/// read is a copy from memory (tmpfs pages cannot be dropped and read back
/// from a disk). If that directory is missing, is not tmpfs or has no room,
/// falls back to the default temporary directory (a disk file, whose reads
/// may reach the disk) and says so on stderr, naming `who`.
pub fn tmpfs_file(who: &str) -> io::Result<File> {
    let on_tmpfs = tempfile::tempfile_in(TMPFS_DIR).and_then(|file| {
        if !is_tmpfs(&file)? {
            return Err(io::Error::other("not a tmpfs mount"));
        }
        fill(&file)?;
        Ok(file)
    });
    match on_tmpfs {
        Ok(file) => Ok(file),
        Err(e) => {
            let file = tempfile::tempfile()?;
            fill(&file)?;
            eprintln!(
                "{who}: {TMPFS_DIR} is not usable ({e}); reading a file in {} instead, whose page cache may be reclaimed, so the figures may include disk reads",
                std::env::temp_dir().display()
            );
            Ok(file)
        }
    }
}

/// Whether `file` is on tmpfs.
fn is_tmpfs(file: &File) -> io::Result<bool> {
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: the fd is open for the call (`file` is borrowed), and
    // `fs.as_mut_ptr()` points to writable memory of the struct's size,
    // which fstatfs fills in full when it returns 0.
    if unsafe { libc::fstatfs(file.as_raw_fd(), fs.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatfs returned 0, so it initialized the whole struct.
    let fs = unsafe { fs.assume_init() };
    Ok(fs.f_type == libc::TMPFS_MAGIC)
}

/// Writes [`FILE_LEN`] bytes of a repeating pattern to `file`; `sync_all`
/// matters only for the disk fallback, whose pages are then clean.
fn fill(mut file: &File) -> io::Result<()> {
    let chunk: Vec<u8> = (0..1 << 20).map(|i| i as u8).collect();
    for _ in 0..FILE_LEN / chunk.len() {
        file.write_all(&chunk)?;
    }
    file.sync_all()
}

/// Block-aligned offsets into the file, from a fixed seed so every run
/// reads the same.
pub struct Offsets(fastrand::Rng);

impl Offsets {
    pub fn new() -> Offsets {
        Offsets(fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15))
    }

    pub fn next(&mut self) -> u64 {
        self.0.u64(..(FILE_LEN / BLOCK) as u64) * BLOCK as u64
    }
}

/// [`FIXED_BUFFERS`] page-aligned blocks of [`BLOCK`] bytes: the io-uring
/// crate's registered buffers (ringfence's are the context's own, also
/// page-aligned, so both libraries read into memory of the same shape).
///
/// Invariant: `ptr` is a live, zeroed allocation of `LAYOUT`, owned by
/// this value and freed on drop; Rust code reaches it only through raw
/// pointers, so the kernel writing it aliases no reference.
struct Blocks {
    ptr: NonNull<u8>,
}

impl Blocks {
    const LAYOUT: Layout = match Layout::from_size_align(FIXED_BUFFERS * BLOCK, 4096) {
        Ok(layout) => layout,
        Err(_) => panic!("bad layout"),
    };

    fn new() -> Blocks {
        // SAFETY: the layout's size is not zero.
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::LAYOUT) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(Self::LAYOUT));
        Blocks { ptr }
    }

    /// The start of block `i`, which must be below [`FIXED_BUFFERS`].
    fn block(&self, i: usize) -> *mut u8 {
        assert!(i < FIXED_BUFFERS, "block {i} of {FIXED_BUFFERS}");
        // SAFETY: `i * BLOCK` is inside the allocation (invariant), as
        // `i < FIXED_BUFFERS` and it is `FIXED_BUFFERS * BLOCK` bytes.
        unsafe { self.ptr.as_ptr().add(i * BLOCK) }
    }

    fn iovec(&self, i: usize) -> libc::iovec {
        libc::iovec {
            iov_base: self.block(i).cast(),
            iov_len: BLOCK,
        }
    }
}

impl Drop for Blocks {
    fn drop(&mut self) {
        // SAFETY: the allocation is ours, of `LAYOUT` (invariant); the
        // ring that registered it is dropped before (field order of
        // `FixedReads`) with no read in flight.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::LAYOUT) };
    }
}

/// The fixed-read comparison's set-up, shared by `benches/fixed.rs` and
/// `quick fixed`: a 64 MiB tmpfs file; a ringfence ring with that file
/// registered at index 0 and [`FIXED_BUFFERS`] buffers of [`BLOCK`] bytes
/// (`URingBuilder::files` and `buffers`); an io-uring crate ring with the
/// same file and as many buffers of its own registered
/// (`register_files`, `register_buffers`). Both rings have
/// [`RING_ENTRIES`] entries.
///
/// Four round trips read `batch` blocks (at most [`FIXED_BUFFERS`]) at
/// random offsets, read `i` into buffer `i` of its library, then wait for
/// all, each a success of [`BLOCK`] bytes. Within each library, readv and
/// read_fixed read into the same memory, so the two differ only in the
/// operation: readv names the file by its descriptor and its memory by an
/// iovec array (a box per read, as `add_readv`'s callers have), read_fixed
/// names both by their registered indices.
pub struct FixedReads {
    // Field order is drop order: the rings go before the buffers they
    // registered and the file the readv forms name by descriptor.
    ringfence: URingContext,
    io_uring: IoUring,
    blocks: Blocks,
    ops: OpBatch,
    boxes: Vec<Box<[libc::iovec]>>,
    offsets: Offsets,
    file: File,
}

impl FixedReads {
    pub fn new(who: &str) -> io::Result<FixedReads> {
        let file = tmpfs_file(who)?;
        let ringfence = URingBuilder::new(RING_ENTRIES as usize)
            .files(&[file.as_fd()])
            .buffers(FIXED_BUFFERS, BLOCK)
            .build()?;
        let io_uring = IoUring::new(RING_ENTRIES)?;
        let blocks = Blocks::new();
        io_uring.submitter().register_files(&[file.as_raw_fd()])?;
        let iovecs: Vec<libc::iovec> = (0..FIXED_BUFFERS).map(|i| blocks.iovec(i)).collect();
        // SAFETY: each iovec is a block of `blocks`, which outlives the
        // ring (field order of `FixedReads`) and is reached only by the
        // reads of `io_uring_read_fixed`, one per block at a time.
        unsafe { io_uring.submitter().register_buffers(&iovecs) }?;
        Ok(FixedReads {
            ringfence,
            io_uring,
            blocks,
            ops: OpBatch::with_capacity(FIXED_BUFFERS),
            boxes: Vec::with_capacity(FIXED_BUFFERS),
            offsets: Offsets::new(),
            file,
        })
    }

    /// ringfence `op::Readv`: one boxed one-iovec array per read, over the
    /// context's registered buffer `i` (the memory `read_fixed` reads
    /// into), the file by its descriptor, queued with one `add_batch`.
    pub fn ringfence_readv(&mut self, batch: usize) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        for i in 0..batch {
            let buffer = self.registered(i)?;
            // SAFETY: registered buffer `i` is the context's memory, valid
            // until the context is dropped, which is after this round's
            // reads complete (the round waits for all of them). In this
            // round only this read writes it, no fixed read is in flight
            // on it (rounds run one at a time) and no Rust code reads it.
            let iov =
                unsafe { IoBufMut::from_raw_parts(buffer.as_ptr().cast::<u8>().as_ptr(), BLOCK) };
            // SAFETY: `file` outlives the ring (field order), so the
            // descriptor stays open and names the file.
            let target = unsafe { Target::from_raw_fd(fd) };
            let read = Readv::new(Box::pin([iov]), target, Some(self.offsets.next()));
            self.ops.add(read, i as u64)?;
        }
        self.ringfence.add_batch(&mut self.ops)?;
        reap(&self.ringfence, batch, BLOCK as u32)
    }

    /// ringfence `op::ReadFixed`: registered file 0 (`Target::fixed(0)`)
    /// into registered buffer `i`, queued with one `add_batch`.
    pub fn ringfence_read_fixed(&mut self, batch: usize) -> io::Result<()> {
        for i in 0..batch {
            let buffer = self.registered(i)?;
            let read = ReadFixed::new(
                Target::fixed(0),
                buffer,
                0..BLOCK,
                Some(self.offsets.next()),
            )?;
            self.ops.add(read, i as u64)?;
        }
        self.ringfence.add_batch(&mut self.ops)?;
        reap(&self.ringfence, batch, BLOCK as u32)
    }

    /// The io-uring crate's `opcode::Readv` doing ringfence's work, as in
    /// `benches/readv.rs`: a boxed one-iovec array per read over block
    /// `i`, kept until the round's reads are reaped; the file by its
    /// descriptor.
    pub fn io_uring_readv(&mut self, batch: usize) -> io::Result<()> {
        let fd = types::Fd(self.file.as_raw_fd());
        {
            let mut sq = self.io_uring.submission();
            for i in 0..batch {
                let iov: Box<[libc::iovec]> = Box::new([self.blocks.iovec(i)]);
                // Moving the box into `boxes` leaves its heap array where
                // it is, so this pointer stays valid.
                let read = opcode::Readv::new(fd, iov.as_ptr(), 1)
                    .offset(self.offsets.next())
                    .build()
                    .user_data(i as u64);
                self.boxes.push(iov);
                // SAFETY: the iovec array is in `boxes`, cleared only
                // after the round's reads are reaped; block `i` outlives
                // the ring and only this read writes it meanwhile; the
                // file outlives the ring.
                unsafe { sq.push(&read) }.map_err(io::Error::other)?;
            }
        }
        let reaped = io_uring_reap(&mut self.io_uring, batch, BLOCK as i32);
        self.boxes.clear();
        reaped
    }

    /// The io-uring crate's `opcode::ReadFixed`: registered file 0
    /// (`types::Fixed(0)`) into registered buffer `i`.
    pub fn io_uring_read_fixed(&mut self, batch: usize) -> io::Result<()> {
        {
            let mut sq = self.io_uring.submission();
            for i in 0..batch {
                let read = opcode::ReadFixed::new(
                    types::Fixed(0),
                    self.blocks.block(i),
                    BLOCK as u32,
                    i as u16,
                )
                .offset(self.offsets.next())
                .build()
                .user_data(i as u64);
                // SAFETY: block `i` is registered buffer `i` of this ring
                // and outlives it; only this read writes it until the round
                // reaps it; file 0 is registered.
                unsafe { sq.push(&read) }.map_err(io::Error::other)?;
            }
        }
        io_uring_reap(&mut self.io_uring, batch, BLOCK as i32)
    }

    /// The context's registered buffer `i`.
    fn registered(&self, i: usize) -> io::Result<RegisteredBuffer> {
        u16::try_from(i)
            .ok()
            .and_then(|i| self.ringfence.registered_buffer(i))
            .ok_or_else(|| {
                io::Error::other(format!(
                    "no registered buffer {i}: batches of at most {FIXED_BUFFERS}"
                ))
            })
    }
}

//! 4 KiB reads at random block-aligned offsets of a 64 MiB file whose
//! pages are in memory, through ringfence's raw context, through the safe
//! async layer (`ringfence-async`, with its driver thread and with a
//! manual driver), through tokio's file API, through tokio-uring and
//! through blocking `pread`, interleaved in rounds in one process.
//!
//! `cargo bench -p ringfence-benches --bench async_read [-- ROUNDS]`
//! (ROUNDS defaults to 11; about 15 s). The file is in the temporary
//! directory (`TMPDIR`), filled, synced and read once before the rounds so
//! that its pages are cached; `ASYNC_READ_TMPFS=1` puts it on tmpfs
//! (`/dev/shm`) instead, as `readv.rs` and `quick fixed` do.
//!
//! At queue depth 1 each contender reads one block and waits for it; at
//! queue depth 32 it starts 32 reads and waits for all of them. Every read
//! is checked to return 4096 bytes. The contenders:
//!
//! - **raw context**: `URingContext::add(op::Read)` into one of 32 buffers
//!   allocated once, the file by its descriptor, then `wait()` until the
//!   batch is back. No executor, no thread but the caller's.
//! - **async, driver thread**: `Driver::new(64)`, `File::read_at(Vec,
//!   offset)`, on `futures::executor::block_on` (one read, or `join_all`
//!   of 32). Each read's future queues its SQE and rings the driver
//!   thread's eventfd, the driver thread submits, reaps and wakes the
//!   polling thread.
//! - **async, manual driver**: the same futures on a
//!   `Driver::builder(..).manual()` ring, polled by a loop that calls
//!   `ManualDriver::turn` on the same thread (`async_common::run_manual`):
//!   no thread hop.
//! - **tokio::fs**: `tokio::fs::File`, `seek` then `read_exact`, on a
//!   current-thread runtime (both go to tokio's blocking pool). Queue
//!   depth 1 only: a tokio `File` runs one operation at a time.
//! - **tokio-uring**: `tokio_uring::fs::File::read_at(Vec, offset)` on its
//!   runtime (one read, or `join_all` of 32).
//! - **pread**: `FileExt::read_at`, blocking; queue depth 1 only.
//!
//! `async_read only WHICH DEPTH OPS` runs one contender (its column, from
//! 0) alone, untimed, for a profiler.

use std::fs::File;
use std::io::{Read as _, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use futures::future::join_all;
use ringfence::op::{Read, Target};
use ringfence::{IoBufMut, URingContext};
use ringfence_async::{Driver, ManualDriver};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

#[path = "async_common/mod.rs"]
mod async_common;
#[path = "common/mod.rs"]
mod common;

use async_common::{run_contest, run_manual, Contest, Result};
use common::{Offsets, BLOCK, FILE_LEN};

/// Ring entries of every ring: room for the deeper queue.
const ENTRIES: usize = 64;

/// The queue depths measured.
const DEPTHS: [usize; 2] = [1, 32];

const NAMES: [&str; 6] = [
    "raw context",
    "async, driver thread",
    "async, manual driver",
    "tokio::fs",
    "tokio-uring",
    "pread",
];

struct Reads {
    file: File,
    offsets: Vec<Offsets>,
    raw: URingContext,
    /// The raw context's buffers, one per read of a batch. Reached only
    /// through raw pointers while their reads are in flight.
    raw_bufs: Vec<Box<[u8]>>,
    threaded: ringfence_async::File,
    manual_file: ringfence_async::File,
    manual: ManualDriver,
    /// Each async contender's buffers, given back with each result.
    async_bufs: Vec<Vec<Vec<u8>>>,
    tokio_rt: tokio::runtime::Runtime,
    tokio_file: tokio::fs::File,
    uring_rt: tokio_uring::Runtime,
    uring_file: Option<tokio_uring::fs::File>,
    pread_buf: Vec<u8>,
    // Keep the drivers' handles last: dropping them closes their rings.
    _drivers: (Driver, Driver),
}

fn check(n: std::io::Result<usize>, who: &str) -> Result<()> {
    match n? {
        BLOCK => Ok(()),
        n => Err(format!("{who}: read {n} bytes, not {BLOCK}").into()),
    }
}

impl Reads {
    fn new() -> Result<Reads> {
        let file = if std::env::var_os("ASYNC_READ_TMPFS").is_some() {
            common::tmpfs_file("async_read")?
        } else {
            page_cached_file()?
        };
        let threaded_driver = Driver::new(ENTRIES)?;
        let (manual_driver, manual) =
            Driver::builder(URingContext::new(ENTRIES, None)?).manual()?;
        let tokio_rt = tokio::runtime::Builder::new_current_thread().build()?;
        let tokio_file = tokio::fs::File::from_std(file.try_clone()?);
        let uring_rt = tokio_uring::Runtime::new(tokio_uring::builder().entries(ENTRIES as u32))?;
        let uring_file = Some(tokio_uring::fs::File::from_std(file.try_clone()?));
        let new_bufs = || {
            (0..32)
                .map(|_| Vec::with_capacity(BLOCK))
                .collect::<Vec<_>>()
        };
        Ok(Reads {
            offsets: (0..NAMES.len()).map(|_| Offsets::new()).collect(),
            raw: URingContext::new(ENTRIES, None)?,
            raw_bufs: (0..32)
                .map(|_| vec![0u8; BLOCK].into_boxed_slice())
                .collect(),
            threaded: ringfence_async::File::from_std(&threaded_driver, file.try_clone()?),
            manual_file: ringfence_async::File::from_std(&manual_driver, file.try_clone()?),
            manual,
            async_bufs: (0..NAMES.len()).map(|_| new_bufs()).collect(),
            tokio_rt,
            tokio_file,
            uring_rt,
            uring_file,
            pread_buf: vec![0u8; BLOCK],
            _drivers: (threaded_driver, manual_driver),
            file,
        })
    }

    fn raw(&mut self, depth: usize) -> Result<()> {
        let fd = self.file.as_raw_fd();
        for (i, buf) in self.raw_bufs[..depth].iter_mut().enumerate() {
            // SAFETY: the buffer is a live allocation of `raw_bufs`, which
            // outlives the ring's use of it: this function waits below for
            // every read it adds before it returns, and nothing else
            // touches the buffer meanwhile.
            let buf = unsafe { IoBufMut::from_raw_parts(buf.as_mut_ptr(), BLOCK) };
            // SAFETY: `self.file` stays open while the read is in flight
            // (it is waited for below).
            let target = unsafe { Target::from_raw_fd(fd) };
            let offset = self.offsets[0].next();
            self.raw
                .add(Read::new(buf, target, Some(offset)), i as u64)?;
        }
        let mut reaped = 0;
        while reaped < depth {
            for (_, result) in self.raw.wait()? {
                check(result.map(|n| n as usize), "raw context")?;
                reaped += 1;
            }
        }
        Ok(())
    }

    /// The async contenders: `which` 1 (driver thread) or 2 (manual).
    fn layer(&mut self, which: usize, depth: usize) -> Result<()> {
        let file = if which == 1 {
            &self.threaded
        } else {
            &self.manual_file
        };
        let offsets = &mut self.offsets[which];
        let bufs = &mut self.async_bufs[which];
        if depth == 1 {
            let read = file.read_at(bufs.pop().expect("32 buffers"), offsets.next());
            let (n, buf) = if which == 1 {
                futures::executor::block_on(read)
            } else {
                run_manual(&self.manual, read)?
            };
            bufs.push(buf);
            return check(n, NAMES[which]);
        }
        let reads = join_all(
            bufs.drain(..depth)
                .map(|buf| file.read_at(buf, offsets.next())),
        );
        let done = if which == 1 {
            futures::executor::block_on(reads)
        } else {
            run_manual(&self.manual, reads)?
        };
        for (n, buf) in done {
            bufs.push(buf);
            check(n, NAMES[which])?;
        }
        Ok(())
    }

    fn tokio_fs(&mut self) -> Result<()> {
        let offset = self.offsets[3].next();
        let (file, buf) = (&mut self.tokio_file, &mut self.pread_buf);
        self.tokio_rt.block_on(async {
            file.seek(SeekFrom::Start(offset)).await?;
            file.read_exact(buf).await
        })?;
        Ok(())
    }

    fn tokio_uring(&mut self, depth: usize) -> Result<()> {
        let file = self.uring_file.as_ref().expect("closed only on drop");
        let offsets = &mut self.offsets[4];
        let bufs = &mut self.async_bufs[4];
        let reads = bufs
            .drain(..depth)
            .map(|buf| file.read_at(buf, offsets.next()));
        let done = self.uring_rt.block_on(join_all(reads));
        for (n, buf) in done {
            bufs.push(buf);
            check(n, "tokio-uring")?;
        }
        Ok(())
    }

    fn pread(&mut self) -> Result<()> {
        let offset = self.offsets[5].next();
        check(self.file.read_at(&mut self.pread_buf, offset), "pread")
    }
}

impl Drop for Reads {
    fn drop(&mut self) {
        // tokio-uring closes a file through its ring: on its runtime.
        if let Some(file) = self.uring_file.take() {
            let _ = self.uring_rt.block_on(file.close());
        }
    }
}

impl Contest for Reads {
    fn names(&self) -> Vec<String> {
        NAMES.iter().map(|n| n.to_string()).collect()
    }

    fn runs(&self, which: usize, depth: usize) -> bool {
        depth == 1 || which < 3 || which == 4
    }

    fn once(&mut self, which: usize, depth: usize) -> Result<usize> {
        match which {
            0 => self.raw(depth)?,
            1 | 2 => self.layer(which, depth)?,
            3 => self.tokio_fs()?,
            4 => self.tokio_uring(depth)?,
            _ => self.pread()?,
        }
        Ok(depth)
    }
}

/// A file of [`FILE_LEN`] bytes in the temporary directory, written,
/// synced (so writeback does not run during the rounds) and read once, so
/// that its pages are in the page cache.
fn page_cached_file() -> Result<File> {
    use std::io::Write;
    let mut file = tempfile::tempfile()?;
    let chunk: Vec<u8> = (0..1 << 20).map(|i| i as u8).collect();
    for _ in 0..FILE_LEN / chunk.len() {
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    let mut sink = vec![0u8; 1 << 20];
    let mut reader = &file;
    std::io::Seek::seek(&mut reader, SeekFrom::Start(0))?;
    while reader.read(&mut sink)? > 0 {}
    Ok(file)
}

/// `only WHICH DEPTH OPS`: runs contender WHICH (its index in the
/// tables, 0 to 5) alone for OPS reads at queue depth DEPTH, untimed, for
/// `perf record` or `perf stat`.
fn run_only(which: &str, depth: &str, ops: &str) -> Result<()> {
    let which: usize = which.parse()?;
    let depth: usize = depth.parse()?;
    let ops: usize = ops.parse()?;
    let mut reads = Reads::new()?;
    if which >= NAMES.len() || !reads.runs(which, depth) || !DEPTHS.contains(&depth) {
        return Err(format!("contender {which} does not run at queue depth {depth}").into());
    }
    let mut done = 0;
    while done < ops {
        done += reads.once(which, depth)?;
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("async_read: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [only, which, depth, ops] = args.as_slice() {
        if only == "only" {
            return run_only(which, depth, ops);
        }
    }
    let rounds = async_common::rounds_from_args(11)?;
    let mut reads = Reads::new()?;
    println!(
        "4 KiB reads at random aligned offsets of a {} MiB file ({}), rings of {ENTRIES} entries.\n",
        FILE_LEN >> 20,
        if std::env::var_os("ASYNC_READ_TMPFS").is_some() {
            "tmpfs"
        } else {
            "page cache of the temporary directory's file system"
        },
    );
    run_contest(&mut reads, &DEPTHS, "queue depth", rounds, 0)
}

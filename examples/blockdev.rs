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
//! With `--fixed` the same worker runs the way a VMM that registers its
//! resources up front would, and shows:
//!
//! - the image registered as file 0 of the ring's file table
//!   ([`URingBuilder::files`]) and the 32 buffers registered with the kernel
//!   ([`URingBuilder::buffers`]), before the allowlist applies;
//! - an allowlist of `ReadFixed`, `WriteFixed`, `Fsync`, `Nop` and
//!   `AsyncCancel` that also requires `IOSQE_FIXED_FILE` on every SQE, so
//!   the ring reaches only the files registered at setup;
//! - I/O with [`op::ReadFixed`], [`op::WriteFixed`] and [`op::Fsync`] on
//!   [`Target::fixed(0)`](Target::fixed), no `unsafe` needed to lend a
//!   buffer (the context owns the registered memory);
//! - completions signalled through an eventfd ([`URingBuilder::eventfd`])
//!   that the worker sleeps on with `epoll_wait`, as an event loop watching
//!   many sources would, then reaps with `wait_timeout(Duration::ZERO)`;
//! - an fsync on a plain descriptor of the same image refused by the kernel
//!   with `EACCES`, because it does not name a registered file.
//!
//! Run it with
//!
//! ```text
//! cargo run --release --example blockdev [-- [--fixed] [--requests N] [--seed N] [IMAGE [REQUESTS]]]
//! cargo run --release --example blockdev -- --help
//! ```
//!
//! Without `IMAGE` a new 16 MiB image goes into a temporary directory that
//! is removed at exit. With `IMAGE`: a path that does not exist gets a new
//! image, left there afterwards; an existing regular file of exactly 16 MiB
//! is reused, its contents read in as the shadow copy's starting point;
//! anything else (a directory, a device, a file of another size) is refused.
//!
//! `--requests N` (or a second positional argument, `REQUESTS`) sets how many
//! read/write requests to serve, 4000 by default; `--seed N` (decimal, or hex
//! after `0x`) changes the fixed seed (of a `fastrand::Rng`) behind the new
//! image's pattern, the offsets, lengths and written data. The environment
//! variables `BLOCKDEV_REQUESTS` and `BLOCKDEV_SEED` are still read as
//! fallbacks when the option is not given. (Which requests have to be
//! redrawn because they overlap one in flight depends on the order
//! completions arrive in, so the exact mix varies a little from run to run.)
//! Runs longer than a second report progress on stderr once a second.
//!
//! Exit status: 0 when every check passed, 1 on a mismatch, a refused image
//! or an I/O error, 2 on a bad command line (an unknown option is never taken
//! for a path; put `--` before an `IMAGE` that starts with `-`).

use std::collections::HashMap;
use std::error::Error;
use std::ffi::OsString;
use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lexopt::prelude::*;
use ringfence::op::{self, Target};
use ringfence::{
    FallocateMode, IoBufMut, IosqeFlags, URingAllowlist, URingBuilder, URingContext, URingOperation,
};

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
/// Seed of the pseudo-random generator unless told otherwise.
const DEFAULT_SEED: u64 = 0x9e37_79b9_7f4a_7c15;
/// Random draws before giving up on finding a request that does not overlap
/// one in flight (and reaping a completion first instead).
const MAX_DRAWS: usize = 16;
/// How often a long run reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// With `--fixed`, how long to sleep in `epoll_wait` for a completion
/// before giving up: far longer than any request takes.
const EPOLL_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn Error>;

fn main() -> ExitCode {
    let config = match Config::from_args() {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            print!("{}", help());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("blockdev (ringfence {})", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("blockdev: {e}\nrun `blockdev --help` for the arguments and options");
            return ExitCode::from(2);
        }
    };
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blockdev: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Config) -> Result<(), BoxError> {
    // The disk image and the shadow copy, which starts as the same bytes and
    // follows every completed write.
    let mut rng = fastrand::Rng::with_seed(config.seed);
    let mut shadow = vec![0u8; IMAGE_SIZE];
    let tempdir;
    let (path, disk, origin) = match &config.image {
        Some(path) => {
            let (disk, origin) = open_image(path, &mut rng, &mut shadow)?;
            (path.clone(), disk, origin)
        }
        None => {
            tempdir = tempfile::tempdir()?;
            let path = tempdir.path().join("disk.img");
            let disk = create_image(&path, &mut rng, &mut shadow)?;
            (path, disk, "new, removed at exit")
        }
    };
    println!(
        "disk image: {} ({} MiB, {origin}; seed {:#x})",
        path.display(),
        IMAGE_SIZE >> 20,
        config.seed
    );

    // The ring: the kernel will refuse anything not on this list. The
    // housekeeping pair (Nop to wake a blocked thread, AsyncCancel for drop
    // to stop what is in flight) comes first.
    let mut allowlist = URingAllowlist::new();
    allowlist.allow_housekeeping();
    let (ring, mode) = if config.fixed {
        // Everything the ring will ever touch is registered now, before
        // the allowlist applies: the image as file 0, the buffers, the
        // eventfd. Requiring FIXED_FILE then confines the ring to file 0.
        for op in [
            URingOperation::ReadFixed,
            URingOperation::WriteFixed,
            URingOperation::Fsync,
        ] {
            allowlist.allow_submit_operation(op);
        }
        allowlist.require_sqe_flags(IosqeFlags::FIXED_FILE);
        let notifier = Notifier::new()?;
        let ring = URingBuilder::new(QUEUE_DEPTH)
            .files(&[disk.as_fd()])
            .buffers(QUEUE_DEPTH, MAX_REQUEST)
            .eventfd(notifier.eventfd.as_fd())
            .allowlist(&allowlist)
            .build()?;
        // A second descriptor of the same image, only to show the kernel
        // refusing it (see `show_allowlist_enforced`).
        let plain = Arc::new(disk.try_clone()?);
        (ring, Mode::Fixed { notifier, plain })
    } else {
        for op in [
            URingOperation::Readv,
            URingOperation::Writev,
            URingOperation::Fsync,
            URingOperation::PollAdd,
        ] {
            allowlist.allow_submit_operation(op);
        }
        (
            URingContext::new(QUEUE_DEPTH, Some(&allowlist))?,
            Mode::Plain,
        )
    };
    let allowed: Vec<_> = URingOperation::ALL
        .iter()
        .filter(|op| allowlist.allows_submit_operation(**op))
        .collect();
    println!(
        "ring: {} entries, restricted to {allowed:?}",
        ring.sq_entries()
    );
    if config.fixed {
        println!(
            "fixed mode: every SQE must carry IOSQE_FIXED_FILE; the image is registered \
             file 0, {QUEUE_DEPTH} buffers of {} KiB are registered, and completions \
             are signalled through an eventfd watched with epoll",
            MAX_REQUEST >> 10
        );
    }

    let mut worker = Worker::new(&ring, disk.as_raw_fd(), mode, shadow, rng);
    let start = Instant::now();
    worker.serve(config.requests)?;
    // Flush before shutting down, as a device does when the guest goes away.
    worker.queue_fsync()?;
    worker.drain()?;
    let elapsed = start.elapsed();

    // Reported in the order it happened: serving (each read was checked as
    // it completed), then the allowlist, then the whole image.
    let stats = &worker.stats;
    let ops = stats.reads + stats.writes + stats.fsyncs;
    println!(
        "served {} requests ({} reads, {} writes) and {} in {:.2?}: {:.0} operations/s, fsyncs included",
        stats.reads + stats.writes,
        stats.reads,
        stats.writes,
        plural(stats.fsyncs, "fsync"),
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
    if stats.reads == 0 {
        println!("no reads, so nothing to check against the shadow copy during serving");
    } else {
        println!("every read matched the shadow copy");
    }

    if let Mode::Fixed { notifier, .. } = &worker.mode {
        println!(
            "eventfd: {} wake-ups from epoll_wait, {} signals counted for {} completions \
             (the kernel may signal once for several completions posted together)",
            notifier.wakeups.get(),
            notifier.signalled.get(),
            ops
        );
    }

    worker.show_allowlist_enforced()?;

    verify_image(&path, &worker.shadow)?;
    println!("all {IMAGE_SIZE} bytes of the image match the shadow copy");
    if config.fixed {
        println!(
            "fixed mode: all I/O went through registered file 0 and registered buffers, \
             completions were seen through the eventfd, and the kernel refused the \
             plain descriptor"
        );
    }
    Ok(())
}

/// Creates a new image at `path` (which must not exist yet), filled with
/// random bytes, and makes `shadow` the same bytes.
fn create_image(path: &Path, rng: &mut fastrand::Rng, shadow: &mut [u8]) -> Result<File, BoxError> {
    let mut disk = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    rng.fill(shadow);
    disk.write_all(shadow)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(disk)
}

/// Creates the image at `path` if nothing is there, or opens an existing one
/// and reads it into `shadow`. Returns the file and, for the banner, what
/// was done.
fn open_image(
    path: &Path,
    rng: &mut fastrand::Rng,
    shadow: &mut [u8],
) -> Result<(File, &'static str), BoxError> {
    // Look before opening: opening a FIFO would block, and a device or a
    // directory is never an image.
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Ok((create_image(path, rng, shadow)?, "new, left in place"))
        }
        Err(e) => Err(format!("cannot inspect {}: {e}", path.display()).into()),
        Ok(found) => {
            check_image(path, &found)?;
            let mut disk = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            // Check again what was opened, in case the path changed since.
            check_image(path, &disk.metadata()?)?;
            disk.read_exact(shadow)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Ok((disk, "existing, contents read in, left in place"))
        }
    }
}

/// Refuses anything but a regular file of exactly [`IMAGE_SIZE`] bytes,
/// saying what was found.
fn check_image(path: &Path, found: &Metadata) -> Result<(), BoxError> {
    let kind = found.file_type();
    let what = if kind.is_file() {
        if found.len() == IMAGE_SIZE as u64 {
            return Ok(());
        }
        format!("a regular file of {} bytes", found.len())
    } else if kind.is_dir() {
        "a directory".to_string()
    } else if kind.is_char_device() {
        "a character device".to_string()
    } else if kind.is_block_device() {
        "a block device".to_string()
    } else if kind.is_fifo() {
        "a FIFO".to_string()
    } else if kind.is_socket() {
        "a socket".to_string()
    } else {
        "not a regular file".to_string()
    };
    Err(format!(
        "{} is {what}; IMAGE must be a regular file of exactly {IMAGE_SIZE} bytes \
         ({} MiB) to reuse, or a path that does not exist yet to create one",
        path.display(),
        IMAGE_SIZE >> 20
    )
    .into())
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

/// What the command line asks for.
enum Command {
    Run(Config),
    Help,
    Version,
}

/// What to run.
struct Config {
    image: Option<PathBuf>,
    requests: u64,
    seed: u64,
    /// Registered file and buffers, fixed-file-only ring, eventfd (`--fixed`).
    fixed: bool,
}

/// The options. The parser looks every flag up through [`Opt::ALL`], and
/// `--help` lists the same array, so the two cannot disagree.
#[derive(Clone, Copy)]
enum Opt {
    Fixed,
    Requests,
    Seed,
    Help,
    Version,
}

impl Opt {
    const ALL: [Opt; 5] = [
        Opt::Fixed,
        Opt::Requests,
        Opt::Seed,
        Opt::Help,
        Opt::Version,
    ];

    /// Short name, long name, and the value's placeholder if it takes one.
    fn names(self) -> (Option<char>, &'static str, Option<&'static str>) {
        match self {
            Opt::Fixed => (None, "fixed", None),
            Opt::Requests => (None, "requests", Some("N")),
            Opt::Seed => (None, "seed", Some("N")),
            Opt::Help => (Some('h'), "help", None),
            Opt::Version => (Some('V'), "version", None),
        }
    }

    fn help(self) -> String {
        match self {
            Opt::Fixed => "register the image and the buffers, require registered\n\
                           files (ReadFixed, WriteFixed, Fsync on file 0), watch\n\
                           completions through an eventfd with epoll, and show a\n\
                           plain descriptor refused"
                .into(),
            Opt::Requests => format!(
                "read/write requests to serve; decimal, or hex after 0x\n\
                 [default: $BLOCKDEV_REQUESTS, else {DEFAULT_REQUESTS}]"
            ),
            Opt::Seed => format!(
                "seed of the new image's bytes, the offsets, lengths and\n\
                 written data (which requests are redrawn still depends on\n\
                 completion order, so the exact mix varies between runs);\n\
                 decimal, or hex after 0x\n\
                 [default: $BLOCKDEV_SEED, else {DEFAULT_SEED:#x}]"
            ),
            Opt::Help => "print this help and exit".into(),
            Opt::Version => "print the version and exit".into(),
        }
    }

    fn find(arg: &lexopt::Arg<'_>) -> Option<Opt> {
        Opt::ALL.into_iter().find(|opt| match (arg, opt.names()) {
            (Short(c), (Some(short), _, _)) => *c == short,
            (Long(name), (_, long, _)) => *name == long,
            _ => false,
        })
    }
}

fn help() -> String {
    let mut text = format!(
        "A sandboxed block-device worker: random reads and writes against a disk image\n\
         through an io_uring the kernel restricts to an allowlist, every read checked.\n\
         \n\
         usage: blockdev [OPTIONS] [IMAGE [REQUESTS]]\n\
         \n\
         arguments:\n\
         \x20 IMAGE     the disk image (optional). Created ({mib} MiB) if the path does not\n\
         \x20           exist, and left there; reused if it is a regular file of exactly\n\
         \x20           {IMAGE_SIZE} bytes, its contents the starting point; anything else is\n\
         \x20           refused. Without IMAGE, a new image goes into a temporary directory\n\
         \x20           removed at exit.\n\
         \x20 REQUESTS  the same as --requests (optional)\n\
         \n\
         options:\n",
        mib = IMAGE_SIZE >> 20
    );
    for opt in Opt::ALL {
        let (short, long, value) = opt.names();
        let short = short.map_or("    ".to_string(), |c| format!("-{c}, "));
        let value = value.map_or(String::new(), |v| format!(" {v}"));
        let names = format!("{short}--{long}{value}");
        // Continuation lines of a help text line up under its first line.
        let help = opt.help().replace('\n', &format!("\n{:22}", ""));
        text += &format!("  {names:<20}{help}\n");
    }
    text += "\nexit status: 0 if every check passed, 1 on a mismatch, a refused image or\n\
             an I/O error, 2 on a bad command line.\n";
    text
}

impl Config {
    fn from_args() -> Result<Command, lexopt::Error> {
        let mut parser = lexopt::Parser::from_env();
        let mut image = None;
        let mut positional_requests = None;
        let mut requests = None;
        let mut seed = None;
        let mut fixed = false;
        while let Some(arg) = parser.next()? {
            match arg {
                Value(value) if image.is_none() => image = Some(PathBuf::from(value)),
                Value(value) if positional_requests.is_none() => {
                    positional_requests = Some(parse_number(&value, "REQUESTS")?);
                }
                Value(value) => return Err(Value(value).unexpected()),
                Short(_) | Long(_) => match Opt::find(&arg) {
                    Some(Opt::Requests) => {
                        requests = Some(parse_number(&parser.value()?, "--requests")?);
                    }
                    Some(Opt::Seed) => seed = Some(parse_number(&parser.value()?, "--seed")?),
                    Some(Opt::Fixed) => fixed = true,
                    Some(Opt::Help) => return Ok(Command::Help),
                    Some(Opt::Version) => return Ok(Command::Version),
                    None => return Err(arg.unexpected()),
                },
            }
        }
        if requests.is_some() && positional_requests.is_some() {
            return Err("give the number of requests once: --requests N or REQUESTS".into());
        }
        let requests = requests.or(positional_requests);
        // Options first, then the environment, then the defaults.
        let requests = match requests {
            Some(n) => n,
            None => env_number("BLOCKDEV_REQUESTS")?.unwrap_or(DEFAULT_REQUESTS),
        };
        let seed = match seed {
            Some(n) => n,
            None => env_number("BLOCKDEV_SEED")?.unwrap_or(DEFAULT_SEED),
        };
        Ok(Command::Run(Config {
            image,
            requests,
            seed,
            fixed,
        }))
    }
}

/// `value` as a number (decimal, or hex after `0x`), with `what` named in
/// the error.
fn parse_number(value: &OsString, what: &str) -> Result<u64, lexopt::Error> {
    let number = value.to_str().and_then(|s| match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    });
    number.ok_or_else(|| {
        format!("{what} must be a number (decimal, or hex after 0x), not {value:?}").into()
    })
}

/// Environment variable `name` as a number, if it is set.
fn env_number(name: &str) -> Result<Option<u64>, lexopt::Error> {
    std::env::var_os(name)
        .map(|value| parse_number(&value, name))
        .transpose()
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

/// How the worker reaches the disk and learns of completions.
enum Mode {
    /// Readv and writev on the image's descriptor, from buffers the worker
    /// owns; [`URingContext::wait`] blocks for completions.
    Plain,
    /// `--fixed`: ReadFixed and WriteFixed on registered file 0 through the
    /// registered buffers; the eventfd says when completions are ready.
    Fixed {
        notifier: Notifier,
        /// A plain descriptor of the image, for the ring to refuse.
        plain: Arc<File>,
    },
}

/// The device: the ring, the disk, the buffers, and the shadow copy.
struct Worker<'a> {
    ring: &'a URingContext,
    disk: RawFd,
    mode: Mode,
    pool: BufferPool<'a>,
    shadow: Vec<u8>,
    rng: fastrand::Rng,
    in_flight: HashMap<u64, Request>,
    next_id: u64,
    fsync_due: bool,
    writes_since_fsync: u64,
    stats: Stats,
}

impl<'a> Worker<'a> {
    fn new(
        ring: &'a URingContext,
        disk: RawFd,
        mode: Mode,
        shadow: Vec<u8>,
        rng: fastrand::Rng,
    ) -> Worker<'a> {
        let pool = match mode {
            Mode::Plain => BufferPool::leaked(),
            Mode::Fixed { .. } => BufferPool::registered(ring),
        };
        Worker {
            ring,
            disk,
            mode,
            pool,
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
    /// flight, and reaps them all. Reports progress on stderr every
    /// [`PROGRESS_EVERY`], so a short run prints nothing.
    fn serve(&mut self, requests: u64) -> Result<(), BoxError> {
        let start = Instant::now();
        let mut next_report = start + PROGRESS_EVERY;
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
            if Instant::now() >= next_report {
                next_report += PROGRESS_EVERY;
                let served = self.stats.reads + self.stats.writes;
                eprintln!(
                    "blockdev: {served}/{requests} requests served ({}%) in {:.1?}",
                    served * 100 / requests.max(1),
                    start.elapsed()
                );
            }
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
            let sectors = self.rng.usize(1..=MAX_REQUEST / SECTOR);
            let sector = self.rng.usize(..=IMAGE_SIZE / SECTOR - sectors);
            let dir = if self.rng.bool() {
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
            let added = match (&self.mode, &request) {
                (Mode::Plain, Request::Fsync) => self.ring.add_fsync(self.disk, id),
                (Mode::Fixed { .. }, Request::Fsync) => {
                    self.ring.add(op::Fsync::new(Target::fixed(0)), id)
                }
                // No `unsafe` here: the registered buffers belong to the
                // ring, and Rust code reaches them only through the pool,
                // which keeps its hands off a lent block.
                (Mode::Fixed { .. }, &Request::Io(io)) => {
                    let buffer = self.pool.lend_registered(io.slot, self.ring);
                    let (range, offset) = (0..io.len, Some(io.offset as u64));
                    match io.dir {
                        Dir::Read => op::ReadFixed::new(Target::fixed(0), buffer, range, offset)
                            .and_then(|read| self.ring.add(read, id)),
                        Dir::Write => op::WriteFixed::new(Target::fixed(0), buffer, range, offset)
                            .and_then(|write| self.ring.add(write, id)),
                    }
                }
                (Mode::Plain, &Request::Io(io)) => {
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
                // A refused fixed add leaves its block marked lent: the next
                // turn lends it again, and `complete` gives it back.
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
    ///
    /// With `--fixed`, an fsync of registered file 0 (allowed) and one of
    /// a plain descriptor of the image (refused, the ring requiring
    /// registered files) come first; the nop is left out, since a nop of
    /// ours carries no `FIXED_FILE` either and would be refused too.
    fn show_allowlist_enforced(&mut self) -> Result<(), BoxError> {
        match &self.mode {
            Mode::Plain => {
                let id = self.take_id();
                self.ring.add_nop(id)?;
                let nop = self.wait_for(id)??;
                println!("nop: allowed, completed with {nop}");
            }
            Mode::Fixed { plain, .. } => {
                let plain = Arc::clone(plain);
                let id = self.take_id();
                self.ring.add(op::Fsync::new(Target::fixed(0)), id)?;
                let fsync = self.wait_for(id)??;
                println!("fsync of registered file 0: allowed, completed with {fsync}");

                let fd = plain.as_raw_fd();
                let id = self.take_id();
                self.ring.add(op::Fsync::new(plain), id)?;
                match self.wait_for(id)? {
                    Err(e) if e.raw_os_error() == Some(libc::EACCES) => println!(
                        "fsync of plain descriptor {fd} (the same image): refused by the kernel \
                         with EACCES ({e}), because the ring requires registered files"
                    ),
                    other => {
                        return Err(format!(
                            "the ring requires registered files, yet an fsync of plain \
                             descriptor {fd} completed with {other:?}"
                        )
                        .into())
                    }
                }
            }
        }

        let id = self.take_id();
        let punch_hole = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32;
        match self.mode {
            Mode::Plain => self
                .ring
                .add_fallocate(self.disk, 0, 1 << 20, punch_hole, id)?,
            Mode::Fixed { .. } => {
                let mode = FallocateMode::from_bits_retain(punch_hole);
                let fallocate = op::Fallocate::new(Target::fixed(0), 0, 1 << 20, mode);
                self.ring.add(fallocate, id)?;
            }
        }
        match self.wait_for(id)? {
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
        for (id, result) in self.completions()? {
            self.complete(id, result)?;
        }
        Ok(())
    }

    /// Submits what is queued and waits for at least one completion:
    /// blocked in [`URingContext::wait`], or with `--fixed` asleep in
    /// `epoll_wait` until the eventfd says the kernel posted one. Collected
    /// into a `Vec`: handling a completion needs `&mut self`, while the
    /// iterator borrows the ring.
    fn completions(&self) -> Result<Vec<(u64, io::Result<u32>)>, BoxError> {
        let Mode::Fixed { notifier, .. } = &self.mode else {
            return Ok(self.ring.wait()?.collect());
        };
        self.ring.submit()?;
        loop {
            // As an event loop would: sleep until the eventfd is readable,
            // then reap without blocking. No completion is missed: each one
            // bumps the counter when it is posted, and the counter is reset
            // before looking. A wake-up may find nothing new (the previous
            // look reaped completions posted after that counter was read):
            // then sleep again.
            notifier.sleep(EPOLL_TIMEOUT)?;
            let ready: Vec<_> = self.ring.wait_timeout(Duration::ZERO)?.collect();
            if !ready.is_empty() {
                return Ok(ready);
            }
        }
    }

    /// Waits for the completion of `id`, the only operation in flight.
    fn wait_for(&self, id: u64) -> Result<io::Result<u32>, BoxError> {
        // `wait` blocks until something completes; a few turns are plenty.
        for _ in 0..100 {
            let mut completions = self.completions()?.into_iter();
            match (completions.next(), completions.next()) {
                (None, _) => continue,
                (Some((user_data, result)), None) if user_data == id => return Ok(result),
                (Some((user_data, _)), _) => {
                    return Err(format!("expected only completion {id}, got {user_data}").into())
                }
            }
        }
        Err(format!("no completion for operation {id}").into())
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
/// flight. By default they are allocated once and leaked, so that they live
/// as long as the process, as `IoBufMut<'static>` asks; with `--fixed` they
/// are the ring's registered buffers, which the ring owns and keeps until
/// it is dropped, and `'a` (the ring's borrow) keeps the pool from
/// outliving them.
///
/// Each block is either *free*, and the worker may use it through
/// [`block_mut`](Self::block_mut), or *lent* to one read or write in
/// flight, and only the kernel touches it. It becomes free again only
/// through [`give_back`](Self::give_back), once that operation's completion
/// has been reaped.
struct BufferPool<'a> {
    /// [`QUEUE_DEPTH`] blocks of [`MAX_REQUEST`] bytes each, valid for `'a`
    /// (leaked ones for the life of the process). Kept as raw pointers,
    /// since the kernel writes to lent blocks while the pool exists.
    blocks: Vec<NonNull<u8>>,
    /// Whether the blocks were leaked, and so may be lent as
    /// `IoBufMut<'static>`; registered blocks live only as long as the ring.
    leaked: bool,
    lent: [bool; QUEUE_DEPTH],
    free: Vec<usize>,
    _memory: PhantomData<&'a URingContext>,
}

/// Page-aligned, so the same buffers would also do for `O_DIRECT`.
#[derive(Clone)]
#[repr(C, align(4096))]
struct Block([u8; MAX_REQUEST]);

impl BufferPool<'static> {
    /// Blocks the pool allocates and leaks.
    fn leaked() -> BufferPool<'static> {
        let blocks = vec![Block([0; MAX_REQUEST]); QUEUE_DEPTH].into_boxed_slice();
        let blocks = Box::leak(blocks)
            .iter_mut()
            .map(|block| NonNull::from(&mut block.0).cast())
            .collect();
        BufferPool::with(blocks, true)
    }
}

impl<'a> BufferPool<'a> {
    /// The ring's registered buffers, block `i` being buffer `i`.
    fn registered(ring: &'a URingContext) -> BufferPool<'a> {
        let blocks = (0..QUEUE_DEPTH as u16)
            .map(|i| {
                let buffer = ring
                    .registered_buffer(i)
                    .expect("the ring registered QUEUE_DEPTH buffers");
                assert_eq!(buffer.len(), MAX_REQUEST);
                buffer.as_ptr().cast()
            })
            .collect();
        BufferPool::with(blocks, false)
    }

    fn with(blocks: Vec<NonNull<u8>>, leaked: bool) -> BufferPool<'a> {
        BufferPool {
            blocks,
            leaked,
            lent: [false; QUEUE_DEPTH],
            free: (0..QUEUE_DEPTH).collect(),
            _memory: PhantomData,
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
    fn block_mut(&mut self, slot: usize) -> &mut [u8] {
        assert!(!self.lent[slot], "block {slot} is lent to the kernel");
        // SAFETY: `blocks[slot]` is valid for MAX_REQUEST bytes for `'a`,
        // which outlasts `self`. It is not lent, so the kernel is not using
        // it, and the returned reference borrows the pool mutably, so it is
        // the only one.
        unsafe { std::slice::from_raw_parts_mut(self.blocks[slot].as_ptr(), MAX_REQUEST) }
    }

    /// Marks leaked block `slot` lent and describes its first `len` bytes
    /// for readv/writev.
    fn lend(&mut self, slot: usize, len: usize) -> IoBufMut<'static> {
        assert!(
            self.leaked,
            "only leaked blocks live as long as IoBufMut<'static> asks"
        );
        assert!(len <= MAX_REQUEST);
        self.lent[slot] = true;
        // SAFETY: the block is leaked, so valid for the rest of the process,
        // and `len` bytes fit in it. While it is lent, `block_mut` refuses
        // it, and only `give_back`, whose contract is that the kernel is done
        // with it, makes it usable again.
        unsafe { IoBufMut::from_raw_parts(self.blocks[slot].as_ptr(), len) }
    }

    /// Marks registered block `slot` lent, and returns the ring's handle to
    /// it for a fixed read or write.
    fn lend_registered(&mut self, slot: usize, ring: &URingContext) -> op::RegisteredBuffer {
        assert!(!self.leaked, "a leaked block is not registered");
        self.lent[slot] = true;
        ring.registered_buffer(slot as u16)
            .expect("the ring registered QUEUE_DEPTH buffers")
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

/// With `--fixed`, how the worker learns that completions are ready: an
/// eventfd the kernel signals when it posts completions, watched by an
/// epoll instance, as a VMM's event loop watches its devices' eventfds
/// alongside everything else.
struct Notifier {
    /// The eventfd, non-blocking; a `File` so that reading its counter
    /// needs no `unsafe`.
    eventfd: File,
    epoll: OwnedFd,
    /// Times `epoll_wait` returned with the eventfd readable.
    wakeups: std::cell::Cell<u64>,
    /// The sum of the counters read: how often the kernel signalled, at
    /// most once per completion (it may signal once for several completions
    /// posted together).
    signalled: std::cell::Cell<u64>,
}

impl Notifier {
    fn new() -> io::Result<Notifier> {
        // SAFETY: eventfd(2) takes no pointers.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let eventfd = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // SAFETY: epoll_create1(2) takes no pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as for the eventfd.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        // SAFETY: both descriptors are open (we own them), and `event` is
        // a valid epoll_event, which the kernel only reads.
        let added = unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                eventfd.as_raw_fd(),
                &mut event,
            )
        };
        if added < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Notifier {
            eventfd,
            epoll,
            wakeups: Default::default(),
            signalled: Default::default(),
        })
    }

    /// Sleeps in `epoll_wait` until the eventfd is readable, for at most
    /// `timeout`, then reads (and so resets) its counter.
    fn sleep(&self, timeout: Duration) -> Result<(), BoxError> {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        let timeout_ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        loop {
            // SAFETY: `event` has room for the one event `maxevents` allows,
            // and the epoll descriptor is open.
            let ready =
                unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), &mut event, 1, timeout_ms) };
            match ready {
                1 => break,
                0 => {
                    return Err(format!(
                        "no completion signalled through the eventfd in {timeout:?}"
                    )
                    .into())
                }
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(format!("epoll_wait: {e}").into());
                    }
                }
            }
        }
        self.wakeups.set(self.wakeups.get() + 1);
        let mut counter = [0u8; 8];
        match (&self.eventfd).read(&mut counter) {
            Ok(8) => {
                self.signalled
                    .set(self.signalled.get() + u64::from_ne_bytes(counter));
                Ok(())
            }
            // Read already (the counter is 0): nothing to add.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Ok(n) => Err(format!("short read of {n} bytes from the eventfd").into()),
            Err(e) => Err(format!("reading the eventfd: {e}").into()),
        }
    }
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

/// `count` and `noun`, with an "s" unless `count` is 1.
fn plural(count: u64, noun: &str) -> String {
    let s = if count == 1 { "" } else { "s" };
    format!("{count} {noun}{s}")
}

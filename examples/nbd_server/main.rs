//! `nbd_server`: a sandboxed NBD block server. It serves one raw image to
//! real NBD clients (tried with qemu-io, qemu-img, nbdcopy, nbdinfo and
//! fio's nbd engine) with every byte of client traffic and of disk
//! I/O going through ringfence rings, each restricted by a
//! [`URingAllowlist`](ringfence::URingAllowlist), and the process confined
//! by a seccomp filter once its rings exist.
//!
//! # Command line
//!
//! ```text
//! nbd_server --socket PATH [--size BYTES] [options] IMAGE
//! nbd_server --tcp ADDR:PORT [--size BYTES] [options] IMAGE
//!   --size BYTES          create IMAGE (sparse) with that size if it is missing
//!                         (a suffix K, M, G or T multiplies by powers of 1024);
//!                         without it IMAGE must exist. The export's size is
//!                         the file's size.
//!   --no-seccomp          no seccomp filter (comparison, debugging)
//!   --workers N           threads, each with its own ring [default: 2]
//!   --max-connections N   connections served at once [default: 16]; more
//!                         wait in the listen backlog until one closes
//!   -h, --help
//! ```
//!
//! Once it accepts connections it prints one line on stdout,
//! `listening on nbd+unix:///?socket=PATH` (or `listening on
//! nbd://ADDR:PORT`, the port the one bound, so `--tcp 127.0.0.1:0`
//! works). Log lines go to stderr, one per event (connection opened and
//! closed, each option, each bad request, each I/O error). Exit status: 0
//! after SIGINT or SIGTERM, 1 on a runtime error, 2 on a bad command line.
//! An existing socket file at PATH is replaced; the socket file is left
//! behind at exit (unlinking it is not a system call the sandbox allows).
//!
//! # Protocol
//!
//! Fixed newstyle handshake (server flags FIXED_NEWSTYLE | NO_ZEROES); one
//! export, named ""; options NBD_OPT_EXPORT_NAME, NBD_OPT_ABORT,
//! NBD_OPT_LIST, NBD_OPT_INFO and NBD_OPT_GO (NBD_INFO_EXPORT and
//! NBD_INFO_BLOCK_SIZE: minimum 1, preferred 4096, maximum 32 MiB), any
//! other answered NBD_REP_ERR_UNSUP (structured replies are not offered).
//! Transmission flags HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM,
//! SEND_WRITE_ZEROES, CAN_MULTI_CONN; commands READ, WRITE (FUA), FLUSH,
//! TRIM (a punched hole), WRITE_ZEROES (FUA, NO_HOLE), DISC, with simple
//! replies. Bad input is logged and answered as `proto.rs` and the
//! contract say: a wrong request magic or a WRITE over 32 MiB closes the
//! connection; a request past the export's end is refused (EINVAL, or
//! ENOSPC for writes, whose payload is read and dropped first); an unknown
//! command gets EINVAL. Other clients never notice.
//!
//! # Design: workers, rings, connections
//!
//! `--workers N` threads each own one ring and run one event loop over up
//! to their share of `--max-connections` (the bound split as evenly as it
//! goes, so the total is exact; workers beyond the bound are not started).
//! Every worker keeps its own `Accept` armed on the one listening socket
//! while it has room, and the kernel hands each connection to one of them:
//! no descriptor ever passes between threads or rings. `--workers 1` is one
//! ring shared by every connection; `--workers M --max-connections M` is a
//! ring per connection: the ring-sharing choice is measured by changing the
//! two numbers. The kernel does not balance (connections arriving together
//! would all go to the worker that re-arms its accept first, taking them
//! from the backlog), so a worker re-arms its accept only while no other
//! worker with room has fewer connections open, and otherwise looks again
//! every 20 ms (or at its next completion) in case that one filled up.
//!
//! A connection pipelines: each receive fills a 256 KiB buffer; every
//! complete request in it gets a request slot (up to 128 per connection,
//! holding up to 64 MiB of READ and WRITE data beyond the first request;
//! the rest wait unparsed, which stops receiving until a slot frees) and its
//! disk operation at once: `Read` or `Write` at the request's offset into
//! or from the slot's buffer (short ones are continued), `Fallocate`
//! (PUNCH_HOLE | KEEP_SIZE) for TRIM and WRITE_ZEROES (writes of zeros
//! with NO_HOLE, or where holes cannot be punched), `Fsync` (DATASYNC)
//! after a FUA write's data is in, and for FLUSH once every write-like
//! request received before it on the connection has completed (so FLUSH
//! covers every write already acknowledged, on any connection: an fsync
//! flushes the whole file). A write's payload is received whole (the rest
//! of a long one straight into its slot's buffer) before its `Write` is
//! queued: a client that vanishes mid-payload never gets a partial write
//! applied. A slot's buffer holds the 16-byte reply header right before
//! the data, so a READ reply goes out without a copy; replies are sent as
//! their operations complete, one send in flight per connection, the
//! replies ready at that point gathered into one `Sendmsg` (up to 64;
//! `Send` for one), a partial send continued from where it stopped. Each
//! loop turn makes one `io_uring_enter`: `wait` submits what the previous
//! turn queued and waits for completions.
//!
//! On tmpfs (`/dev/shm`) the kernel runs every `Read` and `Write` on its
//! io-wq worker threads, not inline (shmem files lack `FMODE_NOWAIT`;
//! measured with the `io_uring:io_uring_queue_async_work` tracepoint on
//! Linux 6.18): each request then costs a thread hand-off in the kernel,
//! which shows most at queue depth 1.
//!
//! # Sandbox
//!
//! Each worker ring's allowlist is exactly Accept, Recv, Send, Sendmsg,
//! Read, Write, Fsync, Fallocate, PollAdd and Close, plus the housekeeping
//! pair Nop and AsyncCancel; main's ring (which flushes the image at exit)
//! allows Fsync, Nop and AsyncCancel. No operation that can hand a file to
//! another ring (MsgRing) or install one (fixed-file updates, direct
//! accepts) is allowed, and no register operation is (registration is over
//! before the ring is enabled).
//!
//! Every ring and every thread is created before the seccomp filter is
//! installed on all threads at once (`SECCOMP_FILTER_FLAG_TSYNC`): a ring
//! created afterwards would have no restrictions, and io_uring's operations
//! never pass through seccomp, so the filter denies `io_uring_setup` along
//! with every other call not listed here. A call outside the list kills
//! the process (`SECCOMP_RET_KILL_PROCESS`): a compromised worker dies
//! rather than probing. The list (`sandbox.rs`), each for a reason:
//!
//! - `io_uring_enter`: submitting and waiting, all I/O;
//! - `futex`: the rings' locks, the start channel, joining threads;
//! - `write` with fd 1 or 2 only: the listening line and the log;
//! - `mmap` and `mprotect` without `PROT_EXEC`, `munmap`, `mremap`, `brk`,
//!   `madvise`: the allocator (and thread stacks at exit);
//! - `close`: dropping a drained ring; `fcntl` with `F_GETFD` only: std's
//!   debug builds check that a descriptor is open before closing it;
//! - `sigaltstack`, `rt_sigprocmask`, `exit`: a thread ending; `exit_group`;
//! - `sched_yield`: lock back-off;
//! - `openat` (and `open`) fail with `EACCES` instead of killing: glibc's
//!   malloc opens `/proc/sys/vm/overcommit_memory` the first time it
//!   shrinks a thread's heap, and takes the failure as "keep the pages".
//!
//! Not allowed, among everything else: `io_uring_setup`,
//! `io_uring_register`, `socket`, `connect`, `accept`,
//! `execve`, `fork`/`clone`, `ptrace`, `kill`, `read`/`pread`/`recv` and
//! `send` (all I/O goes through the rings), `poll`/`ppoll`: the timed waits
//! (stopping, balancing) wait inside `io_uring_enter` on kernels with
//! `IORING_FEAT_EXT_ARG` (Linux 5.11); the context would poll the ring fd
//! only on older kernels or after the kernel dropped completions for want
//! of memory, and the filter would then kill the process (run such kernels
//! with `--no-seccomp`).
//!
//! What it protects: a compromised process can make no new ring, open no
//! file, make no socket or connection, run no program; its rings can run
//! only the operations listed. What it does not protect: the rings use
//! plain descriptors (no fixed files), so an allowed operation can address
//! any descriptor the process holds: the image (read, write, punch, sync
//! any part of it), the listening socket (accepting connections), the
//! signalfd, every client's connection on any worker (reading or writing
//! another client's stream), and a ring's `Close` can close any of them.
//! The filter cannot look into the rings, and `write` to the log can carry
//! anything to stdout and stderr.
//!
//! # Shutdown
//!
//! SIGINT and SIGTERM are blocked in every thread before any is spawned,
//! and a signalfd is made for them. Each worker keeps a `PollAdd` on it in
//! its ring; nobody reads the signalfd, so the pending signal makes every
//! worker's poll complete. A worker then cancels its accept and every
//! connection's receive, serves the requests already received (complete
//! ones left in a receive buffer included; a write whose payload had not
//! all arrived is dropped), sends their replies, closes each connection,
//! drains its ring and ends. A client that does not take its replies
//! within 10 s of the signal has its send cancelled and the rest dropped,
//! so a stalled client cannot keep the server from exiting. Main joins the
//! workers, flushes the image (`Fsync` through its own ring) and exits 0.
//!
//! # Files
//!
//! `main.rs` the command line and the set-up order; `sandbox.rs` the
//! allowlists, the signal mask and the seccomp filter; `worker.rs` a
//! worker's loop, accepts, balancing and stop; `conn.rs` a connection
//! (parser, request slots, disk operations, replies, close); `proto.rs`
//! the NBD wire format; `buf.rs` the buffers lent to the kernel.
//!
//! # Memory lent to the kernel
//!
//! Every buffer an operation uses is a [`buf::KernelBuf`]: a heap block that
//! does not move, marked lent from the add until the operation's
//! completion has been yielded by `wait`, never read, written or freed
//! meanwhile (dropping a lent one leaks it). A connection is closed (its
//! buffers freed) only once none of its operations is in flight: its
//! receive is cancelled and its disk operations and send awaited first.

use std::error::Error;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use lexopt::prelude::*;
use ringfence::op::Fsync;
use ringfence::URingBuilder;

/// Writes one log line to stderr, in one `write` (formatted first, so
/// lines of different threads never mix).
macro_rules! log {
    ($($arg:tt)*) => {
        eprint!("{}", format!("nbd_server: {}\n", format_args!($($arg)*)))
    };
}

mod buf;
mod conn;
mod proto;
mod sandbox;
mod worker;

type BoxError = Box<dyn Error + Send + Sync>;

/// Submission queue entries of each worker's ring.
const SQ_ENTRIES: usize = 256;

/// Where to listen.
enum Listen {
    Unix(PathBuf),
    Tcp(String),
}

/// What to run.
struct Config {
    listen: Listen,
    size: Option<u64>,
    seccomp: bool,
    workers: usize,
    max_connections: usize,
    image: PathBuf,
}

const HELP: &str = "\
A sandboxed NBD server: one raw image, every byte through restricted io_uring rings.

usage: nbd_server --socket PATH [--size BYTES] [options] IMAGE
       nbd_server --tcp ADDR:PORT [--size BYTES] [options] IMAGE

options:
  --socket PATH          listen on a Unix socket
  --tcp ADDR:PORT        listen on TCP
  --size BYTES           create IMAGE (sparse) with this size if it is missing
  --no-seccomp           no seccomp filter (for comparison and debugging)
  --workers N            threads, each with its own ring [default: 2]
  --max-connections N    connections served at once [default: 16]
  -h, --help             print this help and exit
";

fn main() -> ExitCode {
    let config = match Config::from_args() {
        Ok(Some(config)) => config,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("nbd_server: {e}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

impl Config {
    /// The command line's configuration, or `None` for `--help`.
    fn from_args() -> Result<Option<Config>, lexopt::Error> {
        let (mut listen, mut size, mut seccomp) = (None, None, true);
        let (mut workers, mut max_connections, mut image) = (2usize, 16usize, None);
        let mut parser = lexopt::Parser::from_env();
        while let Some(arg) = parser.next()? {
            match arg {
                Long("socket") | Long("tcp") if listen.is_some() => {
                    return Err("give one of --socket and --tcp, once".into())
                }
                Long("socket") => listen = Some(Listen::Unix(parser.value()?.into())),
                Long("tcp") => listen = Some(Listen::Tcp(parser.value()?.string()?)),
                Long("size") => size = Some(parse_size(&parser.value()?.string()?)?),
                Long("no-seccomp") => seccomp = false,
                Long("workers") => workers = parser.value()?.parse()?,
                Long("max-connections") => max_connections = parser.value()?.parse()?,
                Short('h') | Long("help") => return Ok(None),
                Value(value) if image.is_none() => image = Some(PathBuf::from(value)),
                _ => return Err(arg.unexpected()),
            }
        }
        let listen = listen.ok_or("give --socket PATH or --tcp ADDR:PORT")?;
        let image = image.ok_or("give the IMAGE to serve")?;
        if workers == 0 || max_connections == 0 {
            return Err("--workers and --max-connections must be at least 1".into());
        }
        if max_connections > 1 << 20 {
            return Err("--max-connections must be at most 1048576".into());
        }
        Ok(Some(Config {
            listen,
            size,
            seccomp,
            workers,
            max_connections,
            image,
        }))
    }
}

/// A byte count: a number, optionally followed by K, M, G or T (powers
/// of 1024).
fn parse_size(value: &str) -> Result<u64, lexopt::Error> {
    let (digits, shift) = match value.char_indices().last() {
        Some((at, 'K' | 'k')) => (&value[..at], 10),
        Some((at, 'M' | 'm')) => (&value[..at], 20),
        Some((at, 'G' | 'g')) => (&value[..at], 30),
        Some((at, 'T' | 't')) => (&value[..at], 40),
        _ => (value, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("--size {value}: not a byte count").into())
}

/// The listening socket, and the URI for the listening line.
fn listen(listen: &Listen) -> Result<(Box<dyn AsFd + Send + Sync>, String), BoxError> {
    match listen {
        Listen::Unix(path) => {
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                std::fs::remove_file(path)?;
            }
            let listener =
                UnixListener::bind(path).map_err(|e| format!("binding {}: {e}", path.display()))?;
            let uri = format!("nbd+unix:///?socket={}", path.display());
            Ok((Box::new(listener), uri))
        }
        Listen::Tcp(addr) => {
            let listener =
                TcpListener::bind(addr.as_str()).map_err(|e| format!("binding {addr}: {e}"))?;
            // Accepted sockets inherit TCP_NODELAY from the listener
            // (Linux copies the socket), so replies go out at once, with no
            // setsockopt after confinement.
            set_nodelay(&listener)?;
            let local: SocketAddr = listener.local_addr()?;
            Ok((Box::new(listener), format!("nbd://{local}")))
        }
    }
}

/// Sets TCP_NODELAY on `listener`.
fn set_nodelay(listener: &TcpListener) -> std::io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `&one`,
    // a live local; the descriptor is the listener's, open for the call.
    let r = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Opens IMAGE, or creates it with `--size`; returns it and its size.
fn open_image(config: &Config) -> Result<(File, u64), BoxError> {
    let path = &config.image;
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(size) = config.size else {
                return Err(format!(
                    "{}: no such image (give --size to create it)",
                    path.display()
                )
                .into());
            };
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| format!("creating {}: {e}", path.display()))?;
            file.set_len(size)?;
            log!("created {} ({size} bytes, sparse)", path.display());
            file
        }
        Err(e) => return Err(format!("opening {}: {e}", path.display()).into()),
    };
    let size = file.seek(SeekFrom::End(0))?;
    Ok((file, size))
}

/// Splits `max` connections among `workers` as evenly as it goes.
fn shares(max: usize, workers: usize) -> Vec<usize> {
    let workers = workers.min(max);
    (0..workers)
        .map(|i| max / workers + usize::from(i < max % workers))
        .collect()
}

/// Completion ring entries for a worker serving `connections`: room for
/// every operation it can have in flight, so completions never overflow.
fn cq_entries(connections: usize) -> usize {
    let in_flight = connections * (conn::MAX_REQUESTS + 4) + 4;
    in_flight.max(2 * SQ_ENTRIES).next_power_of_two().min(65536)
}

fn run(config: &Config) -> Result<(), BoxError> {
    let (image, size) = open_image(config)?;
    let (listener, uri) = listen(&config.listen)?;
    let signal = sandbox::block_signals().map_err(|e| format!("signalfd: {e}"))?;
    // Open for the life of the process: the workers' operations name them
    // by descriptor.
    let image: &'static File = Box::leak(Box::new(image));
    let listener: &'static (dyn AsFd + Send + Sync) = Box::leak(listener);
    let signal: &'static std::os::fd::OwnedFd = Box::leak(Box::new(signal));
    let shared = worker::Shared {
        listener: listener.as_fd(),
        image: image.as_fd(),
        signal: signal.as_fd(),
        size,
    };

    // Every ring before any confinement.
    let worker_allowlist = sandbox::allowlist(sandbox::WORKER_OPERATIONS);
    let shares = shares(config.max_connections, config.workers);
    let balance = std::sync::Arc::new(worker::Balance::new(shares.clone()));
    let mut workers = Vec::with_capacity(shares.len());
    for (index, &share) in shares.iter().enumerate() {
        let ring = URingBuilder::new(SQ_ENTRIES)
            .cq_entries(cq_entries(share))
            .allowlist(&worker_allowlist)
            .build()
            .map_err(|e| format!("creating worker {index}'s ring: {e}"))?;
        workers.push(worker::Worker::new(
            ring,
            index,
            shared,
            Arc::clone(&balance),
        ));
    }
    let main_allowlist = sandbox::allowlist(sandbox::MAIN_OPERATIONS);
    let main_ring = URingBuilder::new(4)
        .allowlist(&main_allowlist)
        .build()
        .map_err(|e| format!("creating main's ring: {e}"))?;

    // Every thread before confinement too. Each says it is ready once it
    // has allocated (glibc gives a thread its malloc arena on its first
    // allocation, with system calls the filter does not allow), then
    // waits for the word to go.
    let (done_tx, done_rx) = mpsc::channel::<(usize, Result<(), String>)>();
    let (ready_tx, ready_rx) = mpsc::channel::<usize>();
    let mut starts = Vec::with_capacity(workers.len());
    for worker in workers {
        let (start_tx, start_rx) = mpsc::channel::<bool>();
        let (done_tx, ready_tx) = (done_tx.clone(), ready_tx.clone());
        let index = starts.len();
        std::thread::Builder::new()
            .name(format!("nbd-worker-{index}"))
            .spawn(move || {
                let _ = ready_tx.send(index);
                let result = match start_rx.recv() {
                    Ok(true) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        worker.run().map_err(|e| e.to_string())
                    }))
                    .unwrap_or_else(|_| Err("panicked".to_string())),
                    _ => Ok(()),
                };
                let _ = done_tx.send((index, result));
            })?;
        starts.push(start_tx);
    }
    for _ in 0..starts.len() {
        ready_rx.recv()?;
    }
    drop(done_tx);

    if config.seccomp {
        if let Err(e) = sandbox::confine() {
            for start in &starts {
                let _ = start.send(false);
            }
            return Err(format!("installing the seccomp filter: {e}").into());
        }
    }
    for start in &starts {
        start.send(true)?;
    }
    log!(
        "{} worker(s) serving {} ({size} bytes), up to {} connection(s) ({:?} each); seccomp {}",
        starts.len(),
        config.image.display(),
        config.max_connections,
        shares,
        if config.seccomp { "on" } else { "off" }
    );
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {uri}")?;
    stdout.flush()?;
    drop(stdout);

    let mut failed = None;
    for _ in 0..starts.len() {
        let (index, result) = done_rx.recv()?;
        if let Err(e) = result {
            log!("worker {index}: {e}");
            failed = Some(format!("worker {index} failed: {e}"));
            break;
        }
    }
    flush_image(&main_ring, image.as_fd())?;
    match failed {
        Some(e) => Err(e.into()),
        None => {
            log!("stopped; image flushed");
            Ok(())
        }
    }
}

/// Flushes the image through main's ring.
fn flush_image(ring: &ringfence::URingContext, image: BorrowedFd<'static>) -> Result<(), BoxError> {
    ring.add(Fsync::new(image), 0)?;
    loop {
        if let Some((_, result)) = ring.wait_timeout(Duration::from_secs(60))?.next() {
            result.map_err(|e| format!("flushing the image: {e}"))?;
            return Ok(());
        }
    }
}

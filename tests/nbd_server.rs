//! The NBD server example (`examples/nbd_server`, issue 11) against real
//! NBD clients (qemu-io, qemu-img, nbdcopy, nbdinfo, fio), and against a
//! minimal client written here ([`Nbd`]) for what real clients never send:
//! a wrong magic, requests past the end or over the 32 MiB limit, unknown
//! commands, a payload cut short, SIGTERM with writes in flight.
//!
//! Each test starts its own server on a temporary socket and image
//! ([`Server`], killed when dropped) and bounds every wait. The server is
//! the example binary beside the test binary (target/PROFILE/examples/
//! nbd_server), brought up to date once per run by `cargo build --example
//! nbd_server`, so `cargo test --test nbd_server` never runs a missing or
//! stale one. `NBD_SERVER_BIN=/path/to/binary` runs that binary instead
//! (one built from another checkout, or anything with the same command
//! line), without building.
//!
//! Skips, each with a printed reason: under a sanitizer build and where
//! io_uring is unusable (as tests/examples.rs does), where the example's
//! source is missing (a published crate), and where a client program is
//! not installed. Under CI (`CI=true`) a missing io_uring, example or
//! client fails the test instead; `.ci/run` installs the clients.
// Needs the real kernel: Miri cannot make io_uring syscalls.
#![cfg(not(miri))]

mod common;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::pattern;

const MIB: usize = 1 << 20;
/// The contract's maximum request length (and NBD_INFO_BLOCK_SIZE maximum).
const MAX_REQUEST: u32 = 32 << 20;

/// How long the server may take to print its `listening on` line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one client program may run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a raw socket read or write may block.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may take to exit after SIGTERM or SIGINT.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long building the example may take (cold, on a slow machine).
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

// The NBD protocol's numbers (doc/proto.md), by their spec names.
const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const NBD_OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;
const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;
const NBD_OPT_EXPORT_NAME: u32 = 1;
const NBD_OPT_ABORT: u32 = 2;
const NBD_OPT_GO: u32 = 7;
const NBD_REP_ACK: u32 = 1;
const NBD_REP_INFO: u32 = 3;
const NBD_REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const NBD_REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
const NBD_INFO_EXPORT: u16 = 0;
const NBD_CMD_READ: u16 = 0;
const NBD_CMD_WRITE: u16 = 1;
const NBD_CMD_TRIM: u16 = 4;
const NBD_CMD_WRITE_ZEROES: u16 = 6;
const NBD_EINVAL: u32 = 22;
const NBD_ENOSPC: u32 = 28;
const NBD_ESHUTDOWN: u32 = 108;

/// Whether this test can run here: not under a sanitizer build, io_uring
/// usable, and every program in `clients` installed. Otherwise says why
/// and returns false, or, under CI, fails the test.
fn ready(clients: &[&str]) -> bool {
    // As in tests/examples.rs: under `.ci/asan` the inherited RUSTFLAGS
    // would build the example with the sanitizer but without its
    // `--target`; the examples are not what that run checks.
    if std::env::var("RUSTFLAGS").is_ok_and(|flags| flags.contains("-Zsanitizer")) {
        eprintln!("skipping: the NBD server is not run under a sanitizer build");
        return false;
    }
    if common::ring_or_skip(1, None).is_none() {
        return false;
    }
    if std::env::var_os("NBD_SERVER_BIN").is_none() && !Path::new(EXAMPLE_MAIN).is_file() {
        assert!(
            !under_ci(),
            "no nbd_server example: {EXAMPLE_MAIN} is missing"
        );
        eprintln!("skipping: no nbd_server example here ({EXAMPLE_MAIN} is missing)");
        return false;
    }
    for client in clients {
        if !installed(client) {
            let package = match *client {
                "qemu-io" | "qemu-img" => "qemu-utils",
                "nbdcopy" | "nbdinfo" => "libnbd-bin",
                other => other,
            };
            assert!(
                !under_ci(),
                "{client} is not installed: CI must have it (apt-get install {package}, see .ci/run)"
            );
            eprintln!("skipping: {client} is not installed (apt-get install {package})");
            return false;
        }
    }
    true
}

/// The example's source, which a published crate does not ship.
const EXAMPLE_MAIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/nbd_server/main.rs");

/// Whether this is a CI run (`CI=true`), where skipping is failing.
fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Whether `program` is an executable file in a directory of `PATH`.
fn installed(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| {
        fs::metadata(dir.join(program)).is_ok_and(|meta| meta.is_file() && meta.mode() & 0o111 != 0)
    })
}

/// The server binary: `NBD_SERVER_BIN` if set, else the example beside this
/// test binary, built (or found up to date) once per run.
fn server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("NBD_SERVER_BIN") {
            eprintln!("NBD_SERVER_BIN: testing {}", Path::new(&path).display());
            return PathBuf::from(path);
        }
        // This binary is TARGET_DIR/PROFILE_DIR/deps/nbd_server-HASH; cargo
        // puts examples in TARGET_DIR/PROFILE_DIR/examples.
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in PROFILE_DIR/deps");
        let target_dir = profile_dir.parent().expect("PROFILE_DIR has a parent");
        let profile = match profile_dir.file_name().and_then(OsStr::to_str) {
            Some("debug") => "dev",
            Some(name) => name,
            None => panic!("unexpected profile directory {}", profile_dir.display()),
        };
        // `cargo test` has built it already (this costs a no-op check);
        // `cargo test --test nbd_server` has not.
        let build = run(
            env!("CARGO"),
            &[
                OsStr::new("build"),
                OsStr::new("--quiet"),
                OsStr::new("--example"),
                OsStr::new("nbd_server"),
                OsStr::new("--profile"),
                OsStr::new(profile),
                OsStr::new("--target-dir"),
                target_dir.as_os_str(),
                OsStr::new("--manifest-path"),
                OsStr::new(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")),
            ],
            BUILD_TIMEOUT,
        );
        assert!(
            build.status.success(),
            "building the nbd_server example failed:\n{}",
            build.stderr
        );
        let binary = profile_dir.join("examples").join("nbd_server");
        assert!(binary.is_file(), "no server at {}", binary.display());
        binary
    })
}

/// What a finished program left behind.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Reads `pipe` to its end on a thread of its own, so the writer never
/// blocks on a full pipe.
fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// The child's exit status, or `None` if it is still running after
/// `timeout`.
fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `program` with `args`, killing it (and failing the test) after
/// `timeout`.
fn run<S: AsRef<OsStr>>(program: &str, args: &[S], timeout: Duration) -> Finished {
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let stdout = drain(child.stdout.take().expect("piped"));
    let stderr = drain(child.stderr.take().expect("piped"));
    let Some(status) = wait_bounded(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{program} {shown:?} still running after {timeout:?}: killed");
    };
    Finished {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// [`run`] with [`CLIENT_TIMEOUT`], failing the test unless the program
/// exits with status 0.
fn run_ok<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Finished {
    let done = run(program, args, CLIENT_TIMEOUT);
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    assert!(
        done.status.success(),
        "{program} {shown:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        done.status,
        done.stdout,
        done.stderr
    );
    done
}

/// qemu-io on the raw export at `uri`, one `-c` per command (discards
/// passed through to the server), which must all succeed: qemu-io exits
/// non-zero when a command fails, a `read -P` pattern check included.
fn qemu_io(uri: &str, commands: &[String]) -> Finished {
    let mut args = vec!["--discard=unmap", "-f", "raw"];
    for command in commands {
        args.extend(["-c", command.as_str()]);
    }
    args.push(uri);
    let done = run_ok("qemu-io", &args);
    assert!(
        !done.stdout.contains("verification failed"),
        "{}",
        done.stdout
    );
    done
}

/// The image a server starts on.
enum Image {
    /// Missing: the server creates it, sparse, with `--size` (bytes).
    Created(u64),
    /// Written before the server starts.
    Holding(Vec<u8>),
}

/// Where a server listens.
enum Listen {
    /// `--socket` on a socket in the server's temporary directory.
    Unix,
    /// `--tcp` on this address.
    Tcp(SocketAddr),
}

/// A running `nbd_server` on its own temporary directory (socket and
/// image), killed and reaped when dropped.
struct Server {
    child: Child,
    /// The export size (the image's length).
    size: u64,
    image: PathBuf,
    /// The Unix socket (`None` over TCP).
    socket: Option<PathBuf>,
    /// The URI it announced (`listening on URI`).
    uri: String,
    /// Whatever the server printed on stdout after its one line.
    more_stdout: Option<JoinHandle<Vec<String>>>,
    /// The server's stderr so far (its log), for failure messages.
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<JoinHandle<()>>,
    /// Removed after the server is killed (fields drop after `drop`).
    _dir: tempfile::TempDir,
}

impl Server {
    /// A server on a Unix socket, default options.
    fn start(image: Image) -> Server {
        Self::start_with(image, Listen::Unix, &[])
    }

    /// Starts the server and waits (bounded) for its `listening on` line,
    /// which must name `listen`'s URI exactly.
    fn start_with(image: Image, listen: Listen, options: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let image_path = dir.path().join("image.raw");
        let mut command = Command::new(server_binary());
        let (socket, uri) = match listen {
            Listen::Unix => {
                let socket = dir.path().join("nbd.sock");
                command.arg("--socket").arg(&socket);
                let uri = format!("nbd+unix:///?socket={}", socket.display());
                (Some(socket), uri)
            }
            Listen::Tcp(addr) => {
                command.arg("--tcp").arg(addr.to_string());
                (None, format!("nbd://{addr}"))
            }
        };
        let size = match image {
            Image::Created(size) => {
                command.arg("--size").arg(size.to_string());
                size
            }
            Image::Holding(bytes) => {
                fs::write(&image_path, &bytes).expect("writing the image");
                bytes.len() as u64
            }
        };
        let mut child = command
            .args(options)
            .arg(&image_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server_binary().display()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_reader = {
            let log = Arc::clone(&stderr);
            let pipe = BufReader::new(child.stderr.take().expect("piped"));
            thread::spawn(move || {
                for line in pipe.lines().map_while(Result::ok) {
                    let mut log = log
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    log.push_str(&line);
                    log.push('\n');
                }
            })
        };
        let (first_line, first_line_rx) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let more_stdout = thread::spawn(move || {
            let mut lines = stdout.lines().map_while(Result::ok);
            let _ = first_line.send(lines.next());
            lines.collect()
        });
        // From here on a panic kills the server (Drop).
        let mut server = Server {
            child,
            size,
            image: image_path,
            socket,
            uri,
            more_stdout: Some(more_stdout),
            stderr,
            stderr_reader: Some(stderr_reader),
            _dir: dir,
        };
        match first_line_rx.recv_timeout(READY_TIMEOUT) {
            Ok(Some(line)) => assert_eq!(
                line,
                format!("listening on {}", server.uri),
                "the server's first stdout line\nstderr:\n{}",
                server.log()
            ),
            Ok(None) => {
                let status = wait_bounded(&mut server.child, EXIT_TIMEOUT);
                panic!(
                    "the server closed stdout without a listening line (exit: {status:?})\nstderr:\n{}",
                    server.log()
                );
            }
            Err(_) => panic!(
                "no listening line from the server within {READY_TIMEOUT:?}\nstderr:\n{}",
                server.log()
            ),
        }
        server
    }

    /// The server's stderr so far (for failure messages); after it exited,
    /// all of it.
    fn log(&mut self) -> String {
        if self.child.try_wait().ok().flatten().is_some() {
            join_bounded(&mut self.stderr_reader);
        }
        self.stderr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The Unix socket (the raw client's tests run on one).
    fn socket(&self) -> &Path {
        self.socket.as_deref().expect("a server on a Unix socket")
    }

    /// Sends `signal` to the server (unless it has already been reaped).
    fn signal(&mut self, signal: libc::c_int) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "the server exited before signal {signal}\nstderr:\n{}",
            self.log()
        );
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill takes no pointers; `pid` is our child, not yet
        // reaped (checked above), so it names no other process.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill: {}", io::Error::last_os_error());
    }

    /// Waits (bounded) for the server to exit, which must be with status 0.
    fn wait_exit_0(&mut self, after: &str) {
        let Some(status) = wait_bounded(&mut self.child, EXIT_TIMEOUT) else {
            panic!(
                "the server still runs {EXIT_TIMEOUT:?} after {after}\nstderr:\n{}",
                self.log()
            );
        };
        assert_eq!(
            status.code(),
            Some(0),
            "the server's exit after {after}: {status}\nstderr:\n{}",
            self.log()
        );
        // The contract: exactly one line on stdout.
        let more = self
            .more_stdout
            .take()
            .map(|reader| reader.join().expect("stdout reader"))
            .unwrap_or_default();
        assert!(
            more.is_empty(),
            "more on stdout after the first line: {more:?}"
        );
    }

    /// Stops the server with `signal` (SIGTERM or SIGINT), checks it exits
    /// with 0, and returns the image's bytes.
    fn stop_with(mut self, signal: libc::c_int) -> Vec<u8> {
        self.signal(signal);
        self.wait_exit_0(&format!("signal {signal}"));
        fs::read(&self.image).expect("reading the image")
    }

    /// [`Server::stop_with`] SIGTERM.
    fn stop(self) -> Vec<u8> {
        self.stop_with(libc::SIGTERM)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // No-ops if it has exited and been reaped already.
        let _ = self.child.kill();
        let _ = self.child.wait();
        join_bounded(&mut self.stderr_reader);
        join_bounded(&mut self.more_stdout);
        if thread::panicking() {
            // The test failed: the server's side of the story.
            eprintln!("the server's stderr:\n{}", self.log());
        }
    }
}

/// Joins a pipe reader once its pipe has closed (the server exited), but
/// waits at most a few seconds: a process the server started could hold
/// the pipe open, and then the thread is left to end with it.
fn join_bounded<T>(reader: &mut Option<JoinHandle<T>>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while reader.as_ref().is_some_and(|r| !r.is_finished()) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    if reader.as_ref().is_some_and(JoinHandle::is_finished) {
        let _ = reader.take().expect("checked").join();
    }
}

/// A loopback port nobody listens on now (the server binds it next).
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.local_addr().expect("local_addr").port()
}

/// Writes `len` copies of `byte` at `offset` of `image`.
fn fill(image: &mut [u8], offset: usize, len: usize, byte: u8) {
    image[offset..offset + len].fill(byte);
}

/// Fails with the first differing offset (not 16 MiB of bytes) when
/// `actual` and `expected` differ.
fn assert_image(actual: &[u8], expected: &[u8], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    // A slice comparison is one memcmp, quick even unoptimized; the search
    // for the offset runs only on failure.
    if actual == expected {
        return;
    }
    if let Some(at) = actual.iter().zip(expected).position(|(a, e)| a != e) {
        let end = (at + 16).min(actual.len());
        panic!(
            "{what}: first difference at offset {at}: {:02x?} where {:02x?} was expected",
            &actual[at..end],
            &expected[at..end]
        );
    }
}

/// A simple reply's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reply {
    error: u32,
    cookie: u64,
}

/// A request header (28 bytes) with request magic `magic`.
fn header(magic: u32, kind: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(28);
    bytes.extend(magic.to_be_bytes());
    bytes.extend(0u16.to_be_bytes()); // command flags
    bytes.extend(kind.to_be_bytes());
    bytes.extend(cookie.to_be_bytes());
    bytes.extend(offset.to_be_bytes());
    bytes.extend(length.to_be_bytes());
    bytes
}

/// Reads one simple reply's header from `stream`.
fn read_reply(stream: &mut impl Read) -> io::Result<Reply> {
    let mut bytes = [0u8; 16];
    stream.read_exact(&mut bytes)?;
    let magic = u32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes"));
    assert_eq!(magic, NBD_SIMPLE_REPLY_MAGIC, "reply magic in {bytes:02x?}");
    Ok(Reply {
        error: u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes")),
        cookie: u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes")),
    })
}

/// A minimal NBD client over a Unix socket: fixed newstyle handshake, then
/// requests by hand. Every read and write times out after [`IO_TIMEOUT`].
struct Nbd {
    stream: UnixStream,
    next_cookie: u64,
}

impl Nbd {
    /// Connects with NBD_OPT_GO on the default export.
    fn connect(server: &Server) -> Nbd {
        Self::negotiate(server, true)
    }

    /// Connects with NBD_OPT_EXPORT_NAME on the default export.
    fn connect_export_name(server: &Server) -> Nbd {
        Self::negotiate(server, false)
    }

    fn negotiate(server: &Server, go: bool) -> Nbd {
        let mut nbd = Nbd::greet(server);
        let size = if go {
            nbd.go("")
                .unwrap_or_else(|reply| panic!("NBD_OPT_GO refused: reply type {reply:#x}"))
        } else {
            nbd.option(NBD_OPT_EXPORT_NAME, b"");
            let size = nbd.u64();
            let _transmission_flags = nbd.u16();
            size
        };
        assert_eq!(size, server.size, "the export size the handshake reported");
        nbd
    }

    /// Connects and takes the greeting: the option phase.
    fn greet(server: &Server) -> Nbd {
        let stream = UnixStream::connect(server.socket()).expect("connecting to the server");
        Nbd::greet_on(stream)
    }

    /// Takes the greeting on a connected `stream` and sends the client's
    /// flags.
    fn greet_on(stream: UnixStream) -> Nbd {
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let mut nbd = Nbd {
            stream,
            next_cookie: 1,
        };
        assert_eq!(nbd.u64(), NBDMAGIC, "greeting");
        assert_eq!(nbd.u64(), IHAVEOPT, "greeting: not newstyle");
        assert_eq!(
            nbd.u16(),
            NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES,
            "handshake flags"
        );
        nbd.send(&(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES).to_be_bytes());
        nbd
    }

    /// NBD_OPT_GO on export `name`, no information requests: the export
    /// size (from NBD_INFO_EXPORT), or the error reply's type.
    fn go(&mut self, name: &str) -> Result<u64, u32> {
        let mut data = u32::try_from(name.len())
            .expect("short")
            .to_be_bytes()
            .to_vec();
        data.extend(name.as_bytes());
        data.extend(0u16.to_be_bytes());
        self.option(NBD_OPT_GO, &data);
        let mut size = None;
        loop {
            let (option, reply, data) = self.option_reply();
            assert_eq!(option, NBD_OPT_GO, "option reply to another option");
            match reply {
                NBD_REP_ACK => {
                    return Ok(size.expect("no NBD_INFO_EXPORT before NBD_REP_ACK"));
                }
                NBD_REP_INFO if data[..2] == NBD_INFO_EXPORT.to_be_bytes() => {
                    size = Some(u64::from_be_bytes(data[2..10].try_into().expect("8")));
                }
                NBD_REP_INFO => {}
                error => return Err(error),
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("sending {} bytes to the server: {e}", bytes.len()));
    }

    fn receive(&mut self, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        self.stream
            .read_exact(&mut bytes)
            .unwrap_or_else(|e| panic!("receiving {len} bytes from the server: {e}"));
        bytes
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.receive(2).try_into().expect("2 bytes"))
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.receive(4).try_into().expect("4 bytes"))
    }

    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.receive(8).try_into().expect("8 bytes"))
    }

    fn option(&mut self, option: u32, data: &[u8]) {
        let mut bytes = Vec::new();
        bytes.extend(IHAVEOPT.to_be_bytes());
        bytes.extend(option.to_be_bytes());
        bytes.extend(u32::try_from(data.len()).expect("short").to_be_bytes());
        bytes.extend(data);
        self.send(&bytes);
    }

    /// One option reply: (option, reply type, data).
    fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        assert_eq!(self.u64(), NBD_OPT_REPLY_MAGIC, "option reply magic");
        let option = self.u32();
        let reply = self.u32();
        let len = self.u32() as usize;
        (option, reply, self.receive(len))
    }

    /// Sends a request (header and `payload`) and returns its reply's error
    /// (0 on success), checking the cookie.
    fn request(&mut self, kind: u16, offset: u64, length: u32, payload: &[u8]) -> u32 {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let mut bytes = header(NBD_REQUEST_MAGIC, kind, cookie, offset, length);
        bytes.extend(payload);
        self.send(&bytes);
        let reply = read_reply(&mut self.stream)
            .unwrap_or_else(|e| panic!("no reply to command {kind} at {offset}+{length}: {e}"));
        assert_eq!(reply.cookie, cookie, "the reply's cookie");
        reply.error
    }

    /// NBD_CMD_READ: the data, or the reply's error.
    fn read(&mut self, offset: u64, length: u32) -> Result<Vec<u8>, u32> {
        match self.request(NBD_CMD_READ, offset, length, &[]) {
            0 => Ok(self.receive(length as usize)),
            error => Err(error),
        }
    }

    /// NBD_CMD_READ of `expected.len()` bytes at `offset`, which must
    /// succeed and return `expected`.
    fn read_back(&mut self, offset: u64, expected: &[u8]) {
        let length = u32::try_from(expected.len()).expect("a short read");
        match self.read(offset, length) {
            Ok(data) => assert_image(&data, expected, &format!("read at {offset}+{length}")),
            Err(error) => panic!("read at {offset}+{length} failed with {error}"),
        }
    }

    /// NBD_CMD_READ that must fail: its error.
    fn read_error(&mut self, offset: u64, length: u32) -> u32 {
        match self.read(offset, length) {
            Ok(_) => panic!("read at {offset}+{length} succeeded"),
            Err(error) => error,
        }
    }

    /// NBD_CMD_WRITE of `data`: `Ok` or the reply's error.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), u32> {
        let length = u32::try_from(data.len()).expect("a short write");
        match self.request(NBD_CMD_WRITE, offset, length, data) {
            0 => Ok(()),
            error => Err(error),
        }
    }

    /// Waits (bounded) for the server to close the connection, returning
    /// whatever it sent first.
    fn until_closed(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let kept_open = || {
                panic!(
                    "the server kept the connection open for {IO_TIMEOUT:?} (received {got:02x?})"
                )
            };
            match self.stream.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return got,
                // A socket with a receive timeout is not restarted after a
                // signal: read again, within the same deadline.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    if Instant::now() > deadline {
                        kept_open();
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    kept_open();
                }
                Err(e) => panic!("reading from the server: {e}"),
            }
        }
    }
}

/// A new client (NBD_OPT_GO, or NBD_OPT_EXPORT_NAME when `export_name`)
/// writes `block` at `offset`, reads it back, and the image model
/// `expected` records it: the server still serves.
fn still_serves(server: &Server, expected: &mut [u8], offset: usize, seed: u64, export_name: bool) {
    let mut nbd = if export_name {
        Nbd::connect_export_name(server)
    } else {
        Nbd::connect(server)
    };
    let block = pattern(4096, seed);
    assert_eq!(nbd.write(offset as u64, &block), Ok(()));
    nbd.read_back(offset as u64, &block);
    expected[offset..offset + block.len()].copy_from_slice(&block);
}

// ---------------------------------------------------------------------
// Real clients

#[test]
fn qemu_io_writes_aligned_and_unaligned_patterns_and_reads_them_back() {
    if !ready(&["qemu-io"]) {
        return;
    }
    let size = 16 * MIB;
    let server = Server::start(Image::Created(size as u64));
    let mut expected = vec![0u8; size];
    // (offset, length, pattern byte, FUA)
    let writes = [
        (0, 4096, 0x11, false),
        (4097, 3000, 0x5a, false),
        (65535, 2, 0xa5, false),
        (MIB - 7, 70000, 0xc3, false),
        (3 * MIB + 1, MIB, 0x3c, true),
        (5 * MIB, 4096, 0x4d, true),
        (size - 512, 511, 0x77, false),
        (size - 1, 1, 0x78, false),
    ];
    let mut commands = Vec::new();
    for &(offset, len, byte, fua) in &writes {
        let fua = if fua { "-f " } else { "" };
        commands.push(format!("write {fua}-P {byte:#04x} {offset} {len}"));
        fill(&mut expected, offset, len, byte);
    }
    // Zeroes in the middle of the 0x5a run (NBD_CMD_WRITE_ZEROES).
    commands.push("write -z 5000 100".into());
    fill(&mut expected, 5000, 100, 0);
    commands.push("flush".into());
    qemu_io(&server.uri, &commands);

    // Read back by a second process, so nothing comes from the first's
    // memory; `read -P` fails qemu-io on any differing byte.
    let mut reads: Vec<String> = writes
        .iter()
        .filter(|&&(offset, ..)| offset != 4097)
        .map(|&(offset, len, byte, _)| format!("read -P {byte:#04x} {offset} {len}"))
        .collect();
    reads.extend(
        [
            "read -P 0x5a 4097 903",
            "read -P 0 5000 100",
            "read -P 0x5a 5100 1997",
            // The untouched bytes around them.
            "read -P 0 4096 1",
            "read -P 0 7097 58438",
            "read -P 0 65537 983032",
        ]
        .map(String::from),
    );
    qemu_io(&server.uri, &reads);

    // The acknowledged writes are in the file while the server runs, and
    // nothing else changed.
    let live = fs::read(&server.image).expect("reading the image");
    assert_image(&live, &expected, "the image file while serving");
    assert_image(&server.stop(), &expected, "the image file after SIGTERM");
}

#[test]
fn nbdcopy_copies_random_data_in_and_out_byte_for_byte() {
    if !ready(&["nbdcopy"]) {
        return;
    }
    let size = 16 * MIB;
    let server = Server::start(Image::Created(size as u64));
    let scratch = tempfile::tempdir().expect("tempdir");
    let source = scratch.path().join("source.raw");
    let copy = scratch.path().join("copy.raw");
    let data = pattern(size, 0x6e62_6463);
    fs::write(&source, &data).expect("writing the source");

    let source_arg = source.to_str().expect("UTF-8 path");
    run_ok("nbdcopy", &[source_arg, &server.uri]);
    run_ok(
        "nbdcopy",
        &[&server.uri, copy.to_str().expect("UTF-8 path")],
    );

    let copied = fs::read(&copy).expect("reading the copy");
    assert_image(&copied, &data, "nbdcopy out of the server");
    assert_image(&server.stop(), &data, "the image after nbdcopy in");
}

#[test]
fn qemu_img_compare_agrees_with_a_reference_after_a_random_workload() {
    if !ready(&["qemu-io", "qemu-img"]) {
        return;
    }
    let size = 16 * MIB;
    let server = Server::start(Image::Created(size as u64));
    let scratch = tempfile::tempdir().expect("tempdir");
    let reference = scratch.path().join("reference.raw");
    let mut expected = vec![0u8; size];
    let mut rng = fastrand::Rng::with_seed(0x0071_656d_7569_6d67);
    let mut commands = Vec::new();
    for _ in 0..200 {
        let len = rng.usize(1..=128 * 1024);
        let offset = rng.usize(0..=size - len);
        match rng.u8(0..10) {
            // Mostly data, at any offset and length.
            0..=6 => {
                let byte = rng.u8(1..=255);
                let fua = if rng.bool() { "-f " } else { "" };
                commands.push(format!("write {fua}-P {byte:#04x} {offset} {len}"));
                fill(&mut expected, offset, len, byte);
            }
            // NBD_CMD_WRITE_ZEROES, with and without NO_HOLE.
            7 | 8 => {
                let unmap = if rng.bool() { "-u " } else { "" };
                commands.push(format!("write -z {unmap}{offset} {len}"));
                fill(&mut expected, offset, len, 0);
            }
            // NBD_CMD_TRIM, whole 64 KiB blocks: the server punches a hole,
            // so they read back as zeros.
            _ => {
                let block = 64 * 1024;
                let offset = offset / block * block;
                let len = len.div_ceil(block) * block;
                let len = len.min(size - offset);
                commands.push(format!("discard {offset} {len}"));
                fill(&mut expected, offset, len, 0);
            }
        }
    }
    commands.push("flush".into());
    qemu_io(&server.uri, &commands);
    fs::write(&reference, &expected).expect("writing the reference");

    let compare = run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            reference.to_str().expect("UTF-8 path"),
            &server.uri,
        ],
        CLIENT_TIMEOUT,
    );
    assert_eq!(
        compare.status.code(),
        Some(0),
        "qemu-img compare: the export differs from the reference\nstdout:\n{}\nstderr:\n{}",
        compare.stdout,
        compare.stderr
    );
    assert!(
        compare.stdout.contains("Images are identical"),
        "{}",
        compare.stdout
    );
    assert_image(&server.stop(), &expected, "the image after the workload");
}

#[test]
fn fio_randwrite_at_depth_16_verifies_every_block_with_crc32c() {
    if !ready(&["fio"]) {
        return;
    }
    let size = 16 * MIB;
    let server = Server::start(Image::Created(size as u64));
    let uri = format!("--uri={}", server.uri);
    let fio = run_ok(
        "fio",
        &[
            "--name=nbd-verify",
            "--ioengine=nbd",
            &uri,
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--verify=crc32c",
            "--verify_fatal=1",
            // No verify-state file left in the working directory.
            "--verify_state_save=0",
            "--size=16m",
            "--randseed=11",
        ],
    );
    let output = format!("{}{}", fio.stdout, fio.stderr);
    assert!(
        output.contains("err= 0"),
        "fio reported an error:\n{output}"
    );
    assert!(!output.contains("verify: bad"), "{output}");
    // Every block written once, then read back and checked once.
    let blocks = size / 4096;
    assert!(
        output.contains(&format!("issued rwts: total={blocks},{blocks},")),
        "fio did not write and verify all {blocks} blocks:\n{output}"
    );
    server.stop();
}

/// The values of `"key": value` in nbdinfo's JSON, in order.
fn json_values<'a>(json: &'a str, key: &str) -> Vec<&'a str> {
    let quoted = format!("\"{key}\":");
    json.lines()
        .filter_map(|line| line.trim().strip_prefix(quoted.as_str()))
        .map(|value| value.trim().trim_end_matches(',').trim())
        .collect()
}

#[test]
fn nbdinfo_reports_the_size_and_the_contract_flags() {
    if !ready(&["nbdinfo"]) {
        return;
    }
    let size = 24 * MIB as u64 + 4097;
    let server = Server::start(Image::Created(size));
    let info = run_ok("nbdinfo", &["--json", &server.uri]);
    let size = size.to_string();
    for (key, value) in [
        ("export-name", "\"\""),
        ("export-size", size.as_str()),
        ("is_read_only", "false"),
        ("is_rotational", "false"),
        ("can_flush", "true"),
        ("can_fua", "true"),
        ("can_trim", "true"),
        ("can_zero", "true"),
        ("can_multi_conn", "true"),
        ("block_size_minimum", "1"),
        ("block_size_preferred", "4096"),
        ("block_size_maximum", "33554432"),
    ] {
        assert_eq!(
            json_values(&info.stdout, key),
            [value],
            "nbdinfo's {key}:\n{}",
            info.stdout
        );
    }
    server.stop();
}

#[test]
fn nbdinfo_lists_the_one_export() {
    if !ready(&["nbdinfo"]) {
        return;
    }
    let server = Server::start(Image::Created(MIB as u64));
    let list = run_ok("nbdinfo", &["--list", "--json", &server.uri]);
    assert_eq!(
        json_values(&list.stdout, "export-name"),
        ["\"\""],
        "exports listed:\n{}",
        list.stdout
    );
    server.stop();
}

#[test]
fn two_clients_at_once_write_and_verify_disjoint_ranges() {
    if !ready(&["qemu-io"]) {
        return;
    }
    let size = 16 * MIB;
    let server = Server::start(Image::Created(size as u64));
    let mut expected = vec![0u8; size];
    let chunk = 256 * 1024;
    let half = size / 2;
    // Each client's commands: 32 writes across its half (an odd offset, so
    // none is aligned), then all of them read back.
    let mut scripts = Vec::new();
    for client in 0..2 {
        let mut commands = Vec::new();
        let mut reads = Vec::new();
        for i in 0..32 {
            let offset = client * half + i * chunk + 3;
            let len = chunk - 7;
            let byte = u8::try_from(0x10 + client * 0x80 + i).expect("a byte");
            commands.push(format!("write -P {byte:#04x} {offset} {len}"));
            reads.push(format!("read -P {byte:#04x} {offset} {len}"));
            fill(&mut expected, offset, len, byte);
        }
        commands.extend(reads);
        scripts.push(commands);
    }
    let start = Arc::new(Barrier::new(2));
    let uri = server.uri.clone();
    let clients: Vec<_> = scripts
        .into_iter()
        .map(|commands| {
            let start = Arc::clone(&start);
            let uri = uri.clone();
            thread::spawn(move || {
                start.wait();
                qemu_io(&uri, &commands);
            })
        })
        .collect();
    for client in clients {
        client
            .join()
            .expect("a client failed (see its panic above)");
    }
    assert_image(&server.stop(), &expected, "the image after both clients");
}

/// A qemu-io write at an unaligned offset, read back and found in the
/// image after the server stops with `signal`.
fn qemu_io_round_trip(server: Server, signal: libc::c_int) {
    let mut expected = vec![0u8; usize::try_from(server.size).expect("small")];
    qemu_io(
        &server.uri,
        &["write -P 0x6b 12345 200000".into(), "flush".into()],
    );
    qemu_io(
        &server.uri,
        &[
            "read -P 0x6b 12345 200000".into(),
            "read -P 0 0 12345".into(),
        ],
    );
    fill(&mut expected, 12345, 200000, 0x6b);
    assert_image(&server.stop_with(signal), &expected, "the image");
}

#[test]
fn no_seccomp_serves_a_qemu_io_round_trip() {
    if !ready(&["qemu-io"]) {
        return;
    }
    let server = Server::start_with(
        Image::Created(4 * MIB as u64),
        Listen::Unix,
        &["--no-seccomp"],
    );
    qemu_io_round_trip(server, libc::SIGTERM);
}

#[test]
fn tcp_listener_serves_a_qemu_io_round_trip_and_stops_on_sigint() {
    if !ready(&["qemu-io"]) {
        return;
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let server = Server::start_with(Image::Created(4 * MIB as u64), Listen::Tcp(addr), &[]);
    qemu_io_round_trip(server, libc::SIGINT);
}

// ---------------------------------------------------------------------
// The server's own contract, by hand

#[test]
fn size_creates_a_missing_image_sparse_and_of_that_size() {
    if !ready(&[]) {
        return;
    }
    let size = 20 * MIB as u64 + 4097;
    let server = Server::start(Image::Created(size));
    let meta = fs::metadata(&server.image).expect("the image exists");
    assert_eq!(meta.len(), size, "the created image's length");
    assert!(
        meta.blocks() * 512 < size / 2,
        "the created image is not sparse: {} blocks of 512 bytes",
        meta.blocks()
    );
    // Nbd::connect checks the size the handshake reports.
    let mut nbd = Nbd::connect(&server);
    nbd.read_back(size - 4097, &[0; 4097]);
    drop(nbd);
    assert_image(&server.stop(), &vec![0; size as usize], "the created image");
}

#[test]
fn a_bad_command_line_exits_2() {
    if !ready(&[]) {
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let socket = scratch.path().join("nbd.sock");
    let socket = socket.to_str().expect("UTF-8 path");
    let image = scratch.path().join("image.raw");
    let image = image.to_str().expect("UTF-8 path");
    let binary = server_binary().to_str().expect("UTF-8 path");
    for args in [
        &["--socket", socket][..],
        &["--socket", socket, "--size", "lots", image],
        &["--socket", socket, "--no-such-option", image],
        &[image],
    ] {
        let done = run(binary, args, EXIT_TIMEOUT);
        assert_eq!(
            done.status.code(),
            Some(2),
            "nbd_server {args:?}: {}\nstdout:\n{}\nstderr:\n{}",
            done.status,
            done.stdout,
            done.stderr
        );
        assert!(!done.stdout.contains("listening"), "{}", done.stdout);
    }
}

/// An image of `len` bytes (a multiple of 4 KiB) in which every 4 KiB
/// block differs from every other and from zeros, so that a stray or
/// misplaced write never matches by accident: 1 MiB of pseudo-random bytes
/// repeated, each block stamped with its index. (Cheaper than `len` random
/// bytes in an unoptimized test build.)
fn random_image(len: usize, seed: u64) -> Vec<u8> {
    let tile = pattern(MIB, seed);
    let mut image = Vec::with_capacity(len);
    while image.len() < len {
        let take = (len - image.len()).min(MIB);
        image.extend_from_slice(&tile[..take]);
    }
    for (index, block) in image.chunks_mut(4096).enumerate() {
        block[..8].copy_from_slice(&(index as u64).to_le_bytes());
    }
    image
}

#[test]
fn raw_options_refuse_unknown_options_and_export_names() {
    if !ready(&[]) {
        return;
    }
    let server = Server::start(Image::Created(MIB as u64));
    let mut nbd = Nbd::greet(&server);
    let unknown_option = 0x4242;
    nbd.option(unknown_option, b"");
    let (option, reply, _) = nbd.option_reply();
    assert_eq!(
        (option, reply),
        (unknown_option, NBD_REP_ERR_UNSUP),
        "the reply to an unknown option"
    );
    assert_eq!(
        nbd.go("other"),
        Err(NBD_REP_ERR_UNKNOWN),
        "NBD_OPT_GO on another export"
    );
    // Neither ended the option phase: the default export is served.
    assert_eq!(nbd.go(""), Ok(MIB as u64));
    nbd.read_back(MIB as u64 - 512, &[0; 512]);

    // NBD_OPT_EXPORT_NAME cannot refuse but by closing.
    let mut other = Nbd::greet(&server);
    other.option(NBD_OPT_EXPORT_NAME, b"other");
    assert_eq!(
        other.until_closed(),
        [0u8; 0],
        "NBD_OPT_EXPORT_NAME on another export"
    );

    // NBD_OPT_ABORT: closed, after an NBD_REP_ACK if any.
    let mut abort = Nbd::greet(&server);
    abort.option(NBD_OPT_ABORT, b"");
    let got = abort.until_closed();
    if !got.is_empty() {
        let mut ack = NBD_OPT_REPLY_MAGIC.to_be_bytes().to_vec();
        ack.extend(NBD_OPT_ABORT.to_be_bytes());
        ack.extend(NBD_REP_ACK.to_be_bytes());
        ack.extend(0u32.to_be_bytes());
        assert_eq!(got, ack, "the reply to NBD_OPT_ABORT");
    }
    still_serves(&server, &mut vec![0; MIB], 0, 20, true);
    drop(nbd);
    server.stop();
}

#[test]
fn max_connections_keeps_extra_clients_waiting_until_a_slot_frees() {
    if !ready(&[]) {
        return;
    }
    let mut expected = vec![0; MIB];
    let server = Server::start_with(
        Image::Created(MIB as u64),
        Listen::Unix,
        &["--max-connections", "1"],
    );
    let first = Nbd::connect(&server);
    // The listen backlog takes the second connection, but the server does
    // not serve it (no greeting) while the first holds the one slot.
    let second = UnixStream::connect(server.socket()).expect("connect");
    assert!(
        !common::readable_within(second.as_raw_fd(), 500),
        "a second client was greeted while the first held the only slot"
    );
    drop(first);
    assert!(
        common::readable_within(second.as_raw_fd(), 10_000),
        "the second client was not greeted after the first left"
    );
    let mut second = Nbd::greet_on(second);
    assert_eq!(second.go(""), Ok(MIB as u64));
    let block = pattern(4096, 21);
    assert_eq!(second.write(8192, &block), Ok(()));
    expected[8192..8192 + 4096].copy_from_slice(&block);
    drop(second);
    still_serves(&server, &mut expected, 0, 22, false);
    assert_image(&server.stop(), &expected, "the image");
}

#[test]
fn raw_wrong_request_magic_closes_only_that_connection() {
    if !ready(&[]) {
        return;
    }
    let mut expected = random_image(16 * MIB, 1);
    let server = Server::start(Image::Holding(expected.clone()));
    let mut bystander = Nbd::connect(&server);
    let mut bad = Nbd::connect(&server);
    // A write of 4 KiB at 0, but for one bit of its magic.
    let mut request = header(NBD_REQUEST_MAGIC ^ 1, NBD_CMD_WRITE, 7, 0, 4096);
    request.extend([0xee; 4096]);
    // The server may close before taking the payload.
    let _ = bad.stream.write_all(&request);
    assert_eq!(
        bad.until_closed(),
        [0u8; 0],
        "a reply to a request with a wrong magic"
    );

    // The other connection goes on, and new ones are served.
    let block = pattern(4096, 2);
    assert_eq!(bystander.write(MIB as u64, &block), Ok(()));
    expected[MIB..MIB + 4096].copy_from_slice(&block);
    bystander.read_back(0, &expected[..8192]);
    still_serves(&server, &mut expected, 2 * MIB, 3, true);
    drop(bystander);
    assert_image(&server.stop(), &expected, "the image");
}

#[test]
fn raw_read_past_the_end_gets_einval_and_the_connection_continues() {
    if !ready(&[]) {
        return;
    }
    let mut expected = random_image(16 * MIB, 4);
    let size = expected.len() as u64;
    let server = Server::start(Image::Holding(expected.clone()));
    let mut nbd = Nbd::connect(&server);
    for (offset, length) in [(size - 100, 4096), (size, 1), (u64::MAX - 10, 4096)] {
        assert_eq!(
            nbd.read_error(offset, length),
            NBD_EINVAL,
            "read at {offset}+{length}"
        );
    }
    // Up to the last byte is fine, on the same connection.
    nbd.read_back(size - 100, &expected[expected.len() - 100..]);
    still_serves(&server, &mut expected, 0, 5, false);
    drop(nbd);
    assert_image(&server.stop(), &expected, "the image");
}

#[test]
fn raw_write_past_the_end_gets_enospc_and_its_payload_is_discarded() {
    if !ready(&[]) {
        return;
    }
    let mut expected = random_image(16 * MIB, 6);
    let size = expected.len() as u64;
    let server = Server::start(Image::Holding(expected.clone()));
    let mut nbd = Nbd::connect(&server);
    for (offset, length) in [(size - 100, 4096), (size, 1), (u64::MAX - 10, 4096)] {
        let payload = vec![0xee; length];
        assert_eq!(
            nbd.write(offset, &payload),
            Err(NBD_ENOSPC),
            "write at {offset}+{length}"
        );
    }
    // Had the server not consumed the payloads, the next request would be
    // read from the middle of one.
    let tail = expected.len() - 4096;
    nbd.read_back(size - 4096, &expected[tail..]);
    let block = pattern(4096, 7);
    assert_eq!(
        nbd.write(size - 4096, &block),
        Ok(()),
        "a write ending at the last byte"
    );
    expected[tail..].copy_from_slice(&block);
    still_serves(&server, &mut expected, 0, 8, true);
    drop(nbd);
    assert_image(&server.stop(), &expected, "the image");
}

#[test]
fn raw_write_zeroes_past_the_end_gets_enospc_and_trim_einval() {
    if !ready(&[]) {
        return;
    }
    let mut expected = random_image(16 * MIB, 9);
    let size = expected.len() as u64;
    let server = Server::start(Image::Holding(expected.clone()));
    let mut nbd = Nbd::connect(&server);
    assert_eq!(
        nbd.request(NBD_CMD_WRITE_ZEROES, size - 100, 4096, &[]),
        NBD_ENOSPC
    );
    assert_eq!(nbd.request(NBD_CMD_TRIM, size - 100, 4096, &[]), NBD_EINVAL);
    // In range, both work (and zero: TRIM punches a hole).
    assert_eq!(nbd.request(NBD_CMD_WRITE_ZEROES, 4096, 8192, &[]), 0);
    assert_eq!(nbd.request(NBD_CMD_TRIM, 64 * 1024, 64 * 1024, &[]), 0);
    fill(&mut expected, 4096, 8192, 0);
    fill(&mut expected, 64 * 1024, 64 * 1024, 0);
    nbd.read_back(0, &expected[..128 * 1024]);
    still_serves(&server, &mut expected, MIB, 10, false);
    drop(nbd);
    assert_image(&server.stop(), &expected, "the image");
}

#[test]
fn raw_read_over_32_mib_gets_einval_and_a_32_mib_read_succeeds() {
    if !ready(&[]) {
        return;
    }
    let mut expected = random_image(40 * MIB, 11);
    let server = Server::start(Image::Holding(expected.clone()));
    let mut nbd = Nbd::connect(&server);
    assert_eq!(nbd.read_error(0, MAX_REQUEST + 1), NBD_EINVAL);
    assert_eq!(nbd.read_error(MIB as u64, u32::MAX), NBD_EINVAL);
    // Exactly 32 MiB is allowed.
    nbd.read_back(MIB as u64, &expected[MIB..MIB + MAX_REQUEST as usize]);
    still_serves(&server, &mut expected, 0, 12, false);
    drop(nbd);
    assert_image(&server.stop(), &expected, "the image");
}

#[test]
fn raw_write_over_32_mib_closes_the_connection() {
    if !ready(&[]) {
        return;
    }
    let mut expected = random_image(40 * MIB, 13);
    let server = Server::start(Image::Holding(expected.clone()));
    let mut bystander = Nbd::connect(&server);
    let mut bad = Nbd::connect(&server);
    let mut request = header(NBD_REQUEST_MAGIC, NBD_CMD_WRITE, 99, 0, MAX_REQUEST + 1);
    // The start of its payload (what fits in the socket's buffer); the
    // server may close before taking it all.
    request.extend(vec![0xee; 64 * 1024]);
    let _ = bad.stream.write_all(&request);
    let got = bad.until_closed();
    // Closed without a reply, or after an error reply: never a success.
    if !got.is_empty() {
        let reply = read_reply(&mut &got[..]).expect("a whole reply header");
        assert!(
            got.len() == 16 && reply.cookie == 99 && reply.error != 0,
            "the server answered an over-long write with {got:02x?}"
        );
    }
    let block = pattern(4096, 14);
    assert_eq!(bystander.write(MIB as u64, &block), Ok(()));
    expected[MIB..MIB + 4096].copy_from_slice(&block);
    still_serves(&server, &mut expected, 3 * MIB, 15, true);
    drop(bystander);
    assert_image(&server.stop(), &expected, "the image");
}

#[test]
fn raw_unknown_command_gets_einval_and_the_connection_continues() {
    if !ready(&[]) {
        return;
    }
    let mut expected = random_image(16 * MIB, 16);
    let server = Server::start(Image::Holding(expected.clone()));
    let mut nbd = Nbd::connect(&server);
    for kind in [0x77, 0x3fff] {
        assert_eq!(
            nbd.request(kind, 0, 4096, &[]),
            NBD_EINVAL,
            "command type {kind:#x}"
        );
    }
    nbd.read_back(0, &expected[..4096]);
    still_serves(&server, &mut expected, 5 * MIB, 17, false);
    drop(nbd);
    assert_image(&server.stop(), &expected, "the image");
}

#[test]
fn raw_client_closing_mid_write_payload_leaves_the_image_unchanged() {
    if !ready(&[]) {
        return;
    }
    let mut expected = random_image(16 * MIB, 18);
    let server = Server::start(Image::Holding(expected.clone()));
    let mut bystander = Nbd::connect(&server);
    let mut cut = Nbd::connect(&server);
    let offset = MIB + 3;
    // A 1 MiB write, of which only the first half is sent.
    let mut request = header(
        NBD_REQUEST_MAGIC,
        NBD_CMD_WRITE,
        5,
        offset as u64,
        MIB as u32,
    );
    request.extend(vec![0xee; MIB / 2]);
    cut.send(&request);
    cut.stream
        .shutdown(std::net::Shutdown::Both)
        .expect("shutdown");
    drop(cut);

    // The range of the cut write.
    bystander.read_back(offset as u64, &expected[offset..offset + MIB]);
    still_serves(&server, &mut expected, 4 * MIB, 19, true);
    drop(bystander);
    // Read once the server has exited: a partial write it made late shows
    // here too.
    assert_image(&server.stop(), &expected, "the image");
}

#[test]
fn sigterm_with_writes_in_flight_exits_0_with_every_acknowledged_write_in_the_image() {
    if !ready(&[]) {
        return;
    }
    const BLOCK: usize = 4096;
    const WRITES: usize = 8192;
    let mut server = Server::start(Image::Created((WRITES * BLOCK) as u64));
    // Every request built beforehand, so the writer outpaces the server:
    // each block its own pattern, its index as cookie.
    let requests: Vec<Vec<u8>> = (0..WRITES)
        .map(|i| {
            let offset = (i * BLOCK) as u64;
            let mut request = header(NBD_REQUEST_MAGIC, NBD_CMD_WRITE, i as u64, offset, 4096);
            request.extend(pattern(BLOCK, i as u64));
            request
        })
        .collect();
    let nbd = Nbd::connect(&server);
    let mut sender = nbd.stream.try_clone().expect("try_clone");
    let mut receiver = nbd.stream;
    // One thread pipelines the writes, another collects the replies.
    let sent = Arc::new(AtomicUsize::new(0));
    let writer = {
        let sent = Arc::clone(&sent);
        thread::spawn(move || {
            for request in &requests {
                if sender.write_all(request).is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let replied = Arc::new(AtomicUsize::new(0));
    let reader = {
        let replied = Arc::clone(&replied);
        thread::spawn(move || {
            let mut replies = Vec::new();
            loop {
                match read_reply(&mut receiver) {
                    Ok(reply) => {
                        replies.push(reply);
                        replied.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(end) => return (replies, end),
                }
            }
        })
    };
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    while sent.load(Ordering::Relaxed) < WRITES / 4 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    let replied_before = replied.load(Ordering::Relaxed);
    let sent_before = sent.load(Ordering::Relaxed);
    assert!(
        sent_before >= WRITES / 4,
        "only {sent_before} writes sent in {CLIENT_TIMEOUT:?}"
    );
    server.signal(libc::SIGTERM);
    server.wait_exit_0("SIGTERM with writes in flight");
    writer.join().expect("the writer");
    let sent = sent.load(Ordering::Relaxed);
    let (replies, end) = reader.join().expect("the reader");
    assert!(
        matches!(
            end.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
        ),
        "after the server exited, the connection was not closed but: {end}"
    );
    let mut acknowledged = HashSet::new();
    for reply in &replies {
        assert!(
            reply.cookie < sent as u64,
            "a reply to a write never sent: {reply:?}"
        );
        match reply.error {
            0 => assert!(
                acknowledged.insert(reply.cookie),
                "two replies to {reply:?}"
            ),
            NBD_ESHUTDOWN => {}
            error => panic!("write {} failed with {error}", reply.cookie),
        }
    }
    eprintln!(
        "at SIGTERM {sent_before} writes sent, {replied_before} replied; in all {sent} sent, {} acknowledged",
        acknowledged.len()
    );
    let image = fs::read(&server.image).expect("reading the image");
    for &cookie in &acknowledged {
        let i = cookie as usize;
        assert!(
            image[i * BLOCK..(i + 1) * BLOCK] == pattern(BLOCK, cookie),
            "acknowledged write {i} is not in the image"
        );
    }
}

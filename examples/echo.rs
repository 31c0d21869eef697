//! A TCP echo server on loopback, driven by one restricted ring, with its
//! clients as threads of the same process.
//!
//! It shows:
//!
//! - a ring whose allowlist is `Accept`, `Recv`, `Send`, `Close`, `Nop` and
//!   `AsyncCancel` (the last two are the housekeeping pair the context
//!   itself uses): the server's whole life is those four operations;
//! - [`op::Accept`] on the listener, armed again after each connection
//!   (io_uring's multishot accept is not offered by ringfence);
//! - [`op::Recv`] and [`op::Send`] on each connection, one at a time, from a
//!   buffer the connection owns: partial sends are finished by sending the
//!   rest, and a receive of 0 bytes (the client closed its side) closes the
//!   connection with [`op::Close`];
//! - buffers lent to the kernel safely: each connection's buffer is a heap
//!   block that stays where it is, is not touched while an operation on it is
//!   in flight, and is freed only once that operation's completion has been
//!   reaped ([`KernelBuf`]);
//! - a clean stop: once every client is served, [`op::AsyncCancel`] cancels
//!   the pending accept, the server reaps both completions, and exits 0.
//!
//! Each client thread connects, sends random messages (of random lengths,
//! longer than the server's buffer so they come back in pieces) with
//! `std::net::TcpStream`, and checks that every byte comes back.
//!
//! ```text
//! cargo run --release --example echo [-- [--clients N] [--messages N] [--seed N]]
//! ```
//!
//! It ends with one line: connections, messages, bytes, elapsed time. Exit
//! status: 0 when every message came back intact, 1 on an error or a
//! mismatch, 2 on a bad command line. Every wait is bounded (10 s), so a
//! fault ends the run instead of hanging it.

use std::error::Error;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lexopt::prelude::*;
use ringfence::op::{Accept, AsyncCancel, Close, Recv, Send};
use ringfence::{IoBufMut, URingAllowlist, URingBuilder, URingContext, URingOperation};

/// Clients (connections) unless told otherwise.
const DEFAULT_CLIENTS: usize = 8;
/// Messages each client sends unless told otherwise.
const DEFAULT_MESSAGES: usize = 200;
/// The seed of the clients' random messages unless told otherwise.
const DEFAULT_SEED: u64 = 0x5eed;
/// The longest message a client sends.
const MAX_MESSAGE: usize = 16 << 10;
/// Each connection's buffer on the server: shorter than the longest
/// message, so that those are received and echoed in several pieces.
const BUFFER: usize = 4 << 10;
/// The longest the server or a client waits for anything.
const TIMEOUT: Duration = Duration::from_secs(10);

/// `user_data` of the accept (there is one pending at a time).
const ACCEPT: u64 = u64::MAX;
/// `user_data` of the cancellation of the last accept.
const CANCEL: u64 = u64::MAX - 1;
// Any other `user_data` is the slot of a connection, which has one
// operation in flight at a time.

type BoxError = Box<dyn Error + std::marker::Send + Sync>;

fn main() -> ExitCode {
    let config = match Config::from_args() {
        Ok(Some(config)) => config,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("echo: {e}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Config) -> Result<(), BoxError> {
    let listener = Arc::new(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?);
    let address = listener.local_addr()?;

    let mut allowlist = URingAllowlist::new();
    allowlist.allow_housekeeping();
    for op in [
        URingOperation::Accept,
        URingOperation::Recv,
        URingOperation::Send,
        URingOperation::Close,
    ] {
        allowlist.allow_submit_operation(op);
    }
    // Room for every connection's operation, the accept and its cancel.
    let ring = URingBuilder::new((config.clients + 2).next_power_of_two())
        .allowlist(&allowlist)
        .build()?;
    let allowed: Vec<_> = URingOperation::ALL
        .iter()
        .filter(|op| allowlist.allows_submit_operation(**op))
        .collect();
    println!(
        "echo server on {address}, one ring restricted to {allowed:?}; \
         {} clients x {} messages",
        config.clients, config.messages
    );

    let start = Instant::now();
    let clients: Vec<_> = (0..config.clients)
        .map(|i| {
            let (messages, seed) = (config.messages, config.seed.wrapping_add(i as u64));
            std::thread::spawn(move || client(address, messages, seed))
        })
        .collect();

    let mut server = Server::new(&ring);
    server.serve(&listener, config.clients)?;

    let mut sent = 0;
    for (i, client) in clients.into_iter().enumerate() {
        let bytes = client
            .join()
            .map_err(|_| format!("client {i} panicked"))?
            .map_err(|e| format!("client {i}: {e}"))?;
        sent += bytes;
    }
    let elapsed = start.elapsed();
    if sent != server.echoed {
        return Err(format!(
            "clients sent {sent} bytes, the server echoed {}",
            server.echoed
        )
        .into());
    }
    println!(
        "echo: {} connections, {} messages, {sent} bytes echoed in {elapsed:.2?} \
         ({} recvs, {} sends of which {} partial); pending accept cancelled, \
         every message came back intact",
        server.accepted,
        config.clients * config.messages,
        server.recvs,
        server.sends,
        server.partial_sends
    );
    Ok(())
}

/// One client: sends `messages` random messages to `address`, each
/// checked as it comes back, then closes. Returns the bytes sent.
fn client(address: std::net::SocketAddr, messages: usize, seed: u64) -> Result<u64, BoxError> {
    let mut stream = TcpStream::connect(address)?;
    // Send each message at once, rather than wait for the server's ACK of
    // the previous (Nagle), which delayed ACKs stretch to 40 ms.
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut message = vec![0; MAX_MESSAGE];
    let mut echo = vec![0; MAX_MESSAGE];
    let mut bytes = 0;
    for i in 0..messages {
        let len = rng.usize(1..=MAX_MESSAGE);
        rng.fill(&mut message[..len]);
        // Loopback's socket buffers hold a whole message each way, so the
        // server can echo all of it before we read.
        stream.write_all(&message[..len])?;
        stream
            .read_exact(&mut echo[..len])
            .map_err(|e| format!("reading the echo of message {i} ({len} bytes): {e}"))?;
        if echo[..len] != message[..len] {
            return Err(format!("message {i} ({len} bytes) came back different").into());
        }
        bytes += len as u64;
    }
    // Dropping the stream closes it: the server's next receive gets 0.
    Ok(bytes)
}

/// The server's state: its connections, and what it counted.
struct Server<'a> {
    ring: &'a URingContext,
    /// The slab: connection `i` is `connections[i]`, `None` once closed.
    /// Slots are never reused, so a slot number names one connection.
    /// The `Vec` may move the `Connection` values as it grows, but not
    /// their buffers, which are separate heap blocks (see [`KernelBuf`]).
    connections: Vec<Option<Connection>>,
    /// Connections accepted so far, and closed so far.
    accepted: usize,
    closed: usize,
    /// Bytes sent back, receives and sends completed, partial sends.
    echoed: u64,
    recvs: u64,
    sends: u64,
    partial_sends: u64,
}

/// One accepted connection.
struct Connection {
    /// The socket, shared with the operation in flight on it (an `Arc`
    /// target keeps it open until the operation's completion is reaped);
    /// `None` once handed to the kernel to close.
    socket: Option<Arc<OwnedFd>>,
    buf: KernelBuf,
    state: State,
}

/// What the one operation in flight on a connection is.
enum State {
    /// A receive into the whole buffer.
    Receiving,
    /// A send of `buf[sent..len]`, the rest of what was received.
    Sending { sent: usize, len: usize },
    /// The close of its socket.
    Closing,
}

impl<'a> Server<'a> {
    fn new(ring: &'a URingContext) -> Server<'a> {
        Server {
            ring,
            connections: Vec::new(),
            accepted: 0,
            closed: 0,
            echoed: 0,
            recvs: 0,
            sends: 0,
            partial_sends: 0,
        }
    }

    /// Accepts `clients` connections and echoes on them until each has
    /// been closed by its client, then cancels the accept still pending.
    fn serve(&mut self, listener: &Arc<TcpListener>, clients: usize) -> Result<(), BoxError> {
        self.ring.add(Accept::new(Arc::clone(listener)), ACCEPT)?;
        while self.closed < clients {
            for (user_data, result) in self.reap()? {
                match user_data {
                    ACCEPT => {
                        let fd = result.map_err(|e| format!("accept failed: {e}"))?;
                        // SAFETY: an accept completes with the descriptor
                        // of a new connection, which the caller owns.
                        let socket = unsafe { OwnedFd::from_raw_fd(fd as i32) };
                        self.open(socket)?;
                        // Armed again: the last one is cancelled below.
                        self.ring.add(Accept::new(Arc::clone(listener)), ACCEPT)?;
                    }
                    slot => self.advance(slot as usize, result)?,
                }
            }
        }

        // Every client is served: stop accepting. The accept completes
        // with ECANCELED, the cancel with 0.
        self.ring.add(AsyncCancel::new(ACCEPT), CANCEL)?;
        let (mut accept, mut cancel) = (None, None);
        while accept.is_none() || cancel.is_none() {
            for (user_data, result) in self.reap()? {
                match user_data {
                    ACCEPT => accept = Some(result),
                    CANCEL => cancel = Some(result),
                    other => return Err(format!("unexpected completion {other}").into()),
                }
            }
        }
        match accept {
            Some(Err(e)) if e.raw_os_error() == Some(libc::ECANCELED) => {}
            other => return Err(format!("the cancelled accept completed with {other:?}").into()),
        }
        cancel
            .expect("reaped above")
            .map_err(|e| format!("cancelling the accept failed: {e}"))?;
        Ok(())
    }

    /// Submits what is queued and returns the completions that are ready,
    /// waiting for at least one for up to [`TIMEOUT`].
    fn reap(&self) -> Result<Vec<(u64, io::Result<u32>)>, BoxError> {
        let ready: Vec<_> = self.ring.wait_timeout(TIMEOUT)?.collect();
        if ready.is_empty() {
            return Err(format!("nothing completed in {TIMEOUT:?}").into());
        }
        Ok(ready)
    }

    /// Takes a new connection into the slab and starts receiving on it.
    fn open(&mut self, socket: OwnedFd) -> Result<(), BoxError> {
        // The echo of a long message goes out in pieces: send each at
        // once (no Nagle), as the client does.
        let socket = TcpStream::from(socket);
        socket.set_nodelay(true)?;
        let socket = OwnedFd::from(socket);
        let slot = self.connections.len();
        self.connections.push(Some(Connection {
            socket: Some(Arc::new(socket)),
            buf: KernelBuf::new(BUFFER),
            state: State::Receiving,
        }));
        self.accepted += 1;
        self.recv(slot)
    }

    /// Handles the completion of connection `slot`'s operation, and queues
    /// its next one.
    fn advance(&mut self, slot: usize, result: io::Result<u32>) -> Result<(), BoxError> {
        let connection = self
            .connections
            .get_mut(slot)
            .and_then(Option::as_mut)
            .ok_or_else(|| format!("completion for unknown connection {slot}"))?;
        // SAFETY: this is the completion of the one operation in flight on
        // this connection, the only one its buffer was lent to.
        unsafe { connection.buf.give_back() };
        let done = result.map_err(|e| format!("connection {slot}: operation failed: {e}"))?;
        let done = done as usize;
        match connection.state {
            State::Receiving if done == 0 => {
                // The client closed its side: close ours. Our `Arc` is the
                // only one left (the receive's went with its completion),
                // so the descriptor can be handed to the kernel.
                let socket = connection.socket.take().expect("open until now");
                let socket = Arc::try_unwrap(socket)
                    .map_err(|_| format!("connection {slot}: socket still shared"))?;
                connection.state = State::Closing;
                self.ring.add(Close::new(socket), slot as u64)?;
                Ok(())
            }
            State::Receiving => {
                self.recvs += 1;
                connection.state = State::Sending { sent: 0, len: done };
                self.send(slot, 0, done)
            }
            State::Sending { sent, len } => {
                self.sends += 1;
                self.echoed += done as u64;
                let sent = sent + done;
                if sent < len {
                    // A partial send: send the rest.
                    self.partial_sends += 1;
                    connection.state = State::Sending { sent, len };
                    self.send(slot, sent, len)
                } else {
                    connection.state = State::Receiving;
                    self.recv(slot)
                }
            }
            State::Closing => {
                // The kernel closed the socket. Nothing is in flight on
                // this connection any more: its slot and buffer can go.
                self.connections[slot] = None;
                self.closed += 1;
                Ok(())
            }
        }
    }

    /// Connection `slot`'s buffer and (a share of) its socket.
    fn connection(&mut self, slot: usize) -> (&mut KernelBuf, Arc<OwnedFd>) {
        let connection = self.connections[slot].as_mut().expect("an open connection");
        let socket = connection.socket.as_ref().expect("a socket not closing");
        (&mut connection.buf, Arc::clone(socket))
    }

    /// Receives on connection `slot` into its whole buffer.
    fn recv(&mut self, slot: usize) -> Result<(), BoxError> {
        let (buf, socket) = self.connection(slot);
        let recv = Recv::new(buf.lend(0..BUFFER), socket);
        self.ring.add(recv, slot as u64)?;
        Ok(())
    }

    /// Sends `buf[sent..len]` on connection `slot`.
    fn send(&mut self, slot: usize, sent: usize, len: usize) -> Result<(), BoxError> {
        let (buf, socket) = self.connection(slot);
        let send = Send::new(buf.lend(sent..len), socket);
        self.ring.add(send, slot as u64)?;
        Ok(())
    }
}

/// A heap buffer that can be lent to the kernel as an `IoBufMut<'static>`.
///
/// It holds its block through a raw pointer, not a `Box`: the block never
/// moves when the `KernelBuf` does, and moving a `Box` would assert that
/// it is the only way to the block while the kernel holds its address.
///
/// Invariant: `block` comes from `Box::into_raw` and is freed only by drop,
/// and only if it is not lent; while `lent`, nothing but the kernel reads
/// or writes it.
struct KernelBuf {
    block: NonNull<[u8]>,
    lent: bool,
}

impl KernelBuf {
    fn new(len: usize) -> KernelBuf {
        let block = Box::into_raw(vec![0u8; len].into_boxed_slice());
        KernelBuf {
            // SAFETY: `Box::into_raw` never returns null.
            block: unsafe { NonNull::new_unchecked(block) },
            lent: false,
        }
    }

    /// Lends `range` of the block to one operation, until
    /// [`give_back`](Self::give_back).
    fn lend(&mut self, range: std::ops::Range<usize>) -> IoBufMut<'static> {
        assert!(!self.lent, "the buffer is already lent to an operation");
        assert!(range.start <= range.end && range.end <= self.block.len());
        self.lent = true;
        // SAFETY: by the type invariant the block stays allocated while it
        // is lent (drop leaks it rather than free it then), and nothing else
        // touches it until `give_back`, whose caller says the kernel is
        // done. `range` lies inside the block (checked above).
        unsafe {
            let start = self.block.cast::<u8>().as_ptr().add(range.start);
            IoBufMut::from_raw_parts(start, range.len())
        }
    }

    /// Ends the loan.
    ///
    /// # Safety
    ///
    /// The operation the buffer was lent to must be finished: its
    /// completion has been reaped from the ring.
    unsafe fn give_back(&mut self) {
        self.lent = false;
    }
}

impl Drop for KernelBuf {
    fn drop(&mut self) {
        if self.lent {
            // Only on an error path, with the operation perhaps still in
            // the kernel: leak the block rather than free memory it may
            // still write.
            return;
        }
        // SAFETY: by the type invariant the block came from `Box::into_raw`
        // and is not lent, so this frees it once, with nothing using it.
        drop(unsafe { Box::from_raw(self.block.as_ptr()) });
    }
}

/// What to run.
struct Config {
    clients: usize,
    messages: usize,
    seed: u64,
}

const HELP: &str = "\
A TCP echo server on loopback driven by one restricted io_uring, and its
clients (threads of the same process), every echoed byte checked.

usage: echo [--clients N] [--messages N] [--seed N]

options:
  --clients N    clients, each on its own connection (1 to 1000) [default: 8]
  --messages N   messages each client sends [default: 200]
  --seed N       seed of the messages' lengths and bytes [default: 0x5eed]
  -h, --help     print this help and exit
";

impl Config {
    /// The command line's configuration, or `None` for `--help`.
    fn from_args() -> Result<Option<Config>, lexopt::Error> {
        let mut config = Config {
            clients: DEFAULT_CLIENTS,
            messages: DEFAULT_MESSAGES,
            seed: DEFAULT_SEED,
        };
        let mut parser = lexopt::Parser::from_env();
        while let Some(arg) = parser.next()? {
            match arg {
                Long("clients") => config.clients = parser.value()?.parse()?,
                Long("messages") => config.messages = parser.value()?.parse()?,
                Long("seed") => {
                    let value = parser.value()?.string()?;
                    let seed = match value.strip_prefix("0x") {
                        Some(hex) => u64::from_str_radix(hex, 16),
                        None => value.parse(),
                    };
                    config.seed = seed.map_err(|e| format!("--seed {value}: {e}"))?;
                }
                Short('h') | Long("help") => return Ok(None),
                _ => return Err(arg.unexpected()),
            }
        }
        if !(1..=1000).contains(&config.clients) {
            return Err(format!("--clients must be 1 to 1000, not {}", config.clients).into());
        }
        Ok(Some(config))
    }
}

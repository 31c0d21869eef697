//! A TCP echo server written with `async`/`await` over ringfence-async, on
//! a ring the kernel restricts to the operations the server uses, serving
//! its clients concurrently on a `futures` thread pool.
//!
//! ```text
//! cargo run -p ringfence-async --example async_echo
//! ```
//!
//! (Named `async_echo`, not `echo`: the root package has an `echo` example
//! already, and two examples of one name in a workspace overwrite each
//! other's binary.)
//!
//! It runs a self-check and exits 0 if every step held:
//!
//! - The **server's ring** allows `Accept`, `Recv` and `Send`, plus the
//!   driver's own `PollAdd` (its doorbell) and the housekeeping pair `Nop`
//!   and `AsyncCancel` (to cancel a dropped future's operation). The
//!   **clients' ring** is a second one, allowing `Connect` instead of
//!   `Accept`.
//! - The server accepts [`CLIENTS`] connections and echoes each in a task
//!   of its own, with the owned-buffer calls: `recv` takes a buffer and
//!   gives it back filled, `send` takes it and gives it back with the
//!   count sent (finishing a short send by sending the rest).
//! - Each client sends [`BYTES`] seeded random bytes through the
//!   `futures-io` traits (`write_all`, `read`) while reading the echo, then
//!   shuts down its side and checks that every byte came back. No client
//!   shuts down before every client has had an echo: so all of them were
//!   open and served at once (a server that served one at a time would
//!   stall here, and the watchdog would fail the run after [`WATCHDOG`]).
//! - A dropped `accept` future is cancelled: its operation leaves the
//!   driver's table once the kernel completes it with `ECANCELED`.
//! - A file read on the server's ring fails before reaching the kernel,
//!   with an error naming the operation (`NotAllowed`).
//!
//! Everything it prints is the same from run to run except the port and
//! the time taken; `async/tests/examples.rs` checks those lines.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::executor::{block_on, ThreadPool};
use futures::future::{FutureExt, Shared};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::task::SpawnExt;
use ringfence::{URingAllowlist, URingOperation};
use ringfence_async::{Driver, File, NotAllowed, TcpListener, TcpStream};

/// Clients, each its own connection and task.
const CLIENTS: usize = 8;
/// Bytes each client sends and expects back.
const BYTES: usize = 256 * 1024;
/// The server's receive buffer per connection: smaller than what a client
/// sends, so each echo goes in many pieces.
const SERVER_BUFFER: usize = 16 * 1024;
/// Submission entries per ring.
const ENTRIES: usize = 64;
/// The whole run must finish in this time, or it fails.
const WATCHDOG: Duration = Duration::from_secs(60);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Every wait below is bounded by this: a stall fails the run.
    std::thread::spawn(|| {
        std::thread::sleep(WATCHDOG);
        eprintln!("error: still running after {WATCHDOG:?}: a step stalled");
        std::process::exit(1);
    });

    let server = restricted_driver("server", URingOperation::Accept)?;
    let client = restricted_driver("client", URingOperation::Connect)?;
    let pool = ThreadPool::builder().pool_size(2).create()?;

    let listener = Arc::new(TcpListener::bind(&server, "127.0.0.1:0")?);
    let addr = listener.local_addr()?;
    println!("server: listening on {addr}");

    let start = Instant::now();
    let served = pool.spawn_with_handle(serve(Arc::clone(&listener), pool.clone()))?;
    let all_echoing = Barrier::new(CLIENTS);
    let clients = (0..CLIENTS)
        .map(|id| {
            let client = client.clone();
            let all_echoing = all_echoing.clone();
            pool.spawn_with_handle(async move {
                let stream = TcpStream::connect(&client, addr).await?;
                run_client(stream, id, all_echoing).await
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let received: usize = block_on(futures::future::try_join_all(clients))?
        .into_iter()
        .sum();
    let echoed = block_on(served)?;
    println!(
        "echoed {CLIENTS} clients x {BYTES} bytes, all {CLIENTS} connections open and echoing \
         at once: {received} bytes back, every one matched ({echoed} sent by the server) in \
         {:.0?}",
        start.elapsed()
    );
    if received != CLIENTS * BYTES || echoed != received {
        return Err("the byte counts disagree".into());
    }

    cancel_an_accept(&server, &listener)?;
    refuse_a_file_read(&server)?;
    Ok(())
}

/// A driver on a ring allowed `Recv`, `Send`, `own` (`Accept` for the
/// server, `Connect` for the clients), the driver's doorbell (`PollAdd`)
/// and housekeeping (`Nop`, `AsyncCancel`).
fn restricted_driver(name: &str, own: URingOperation) -> io::Result<Driver> {
    let mut allowlist = URingAllowlist::new();
    allowlist.allow_housekeeping();
    for op in [
        own,
        URingOperation::Recv,
        URingOperation::Send,
        URingOperation::PollAdd,
    ] {
        allowlist.allow_submit_operation(op);
    }
    let allowed: Vec<_> = URingOperation::ALL
        .iter()
        .filter(|op| allowlist.allows_submit_operation(**op))
        .collect();
    println!("{name} ring: restricted to {allowed:?}");
    Driver::with_allowlist(ENTRIES, &allowlist)
}

/// Accepts [`CLIENTS`] connections, echoes each in a task of its own, and
/// returns the bytes echoed once every connection has ended.
async fn serve(listener: Arc<TcpListener>, pool: ThreadPool) -> io::Result<usize> {
    let mut connections = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let (stream, _peer) = listener.accept().await?;
        let echo = pool
            .spawn_with_handle(echo(stream))
            .map_err(io::Error::other)?;
        connections.push(echo);
    }
    let echoed = futures::future::try_join_all(connections).await?;
    Ok(echoed.into_iter().sum())
}

/// Sends back what `stream` receives until the peer shuts down its side,
/// then shuts down this side. Returns the bytes echoed.
///
/// The buffer goes to the kernel with each operation and comes back with
/// its result: one allocation for the connection's whole life.
async fn echo(stream: TcpStream) -> io::Result<usize> {
    let mut buf = Vec::with_capacity(SERVER_BUFFER);
    let mut echoed = 0;
    loop {
        let (received, back) = stream.recv(buf).await;
        buf = back;
        if received? == 0 {
            break;
        }
        // A send may take fewer bytes than offered: send the rest.
        while !buf.is_empty() {
            let (sent, back) = stream.send(buf).await;
            buf = back;
            let sent = sent?;
            if sent == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf.drain(..sent);
            echoed += sent;
        }
    }
    stream.shutdown(Shutdown::Write)?;
    Ok(echoed)
}

/// Sends [`BYTES`] seeded random bytes while reading the echo, arrives at
/// `all_echoing` on its first echoed bytes and waits there before sending
/// its last byte, then shuts down its side and checks everything came
/// back. Returns the bytes received.
async fn run_client(stream: TcpStream, id: usize, all_echoing: Barrier) -> io::Result<usize> {
    let mut rng = fastrand::Rng::with_seed(id as u64);
    let sent: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(BYTES).collect();
    let (mut reader, mut writer) = stream.split();
    let write = async {
        // All but the last byte, then the last only once every client has
        // had an echo: each connection stays open until all are served.
        writer.write_all(&sent[..BYTES - 1]).await?;
        all_echoing.wait().await;
        writer.write_all(&sent[BYTES - 1..]).await?;
        // Flushes, then shuts down the writing half: the server's recv
        // returns 0 and it ends the connection.
        writer.close().await
    };
    let read = async {
        let mut received = Vec::with_capacity(BYTES);
        let mut chunk = vec![0; 64 * 1024];
        loop {
            let n = reader.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            if received.is_empty() {
                all_echoing.arrive();
            }
            received.extend_from_slice(&chunk[..n]);
        }
        Ok(received)
    };
    let ((), received) = futures::try_join!(write, read)?;
    if received != sent {
        return Err(io::Error::other(format!(
            "client {id}: {} bytes came back, not the {} sent, or not the same ones",
            received.len(),
            sent.len()
        )));
    }
    Ok(received.len())
}

/// Starts an `accept` with no client coming, drops its future, and waits
/// (bounded) for the driver to release it: the drop queued an
/// `AsyncCancel`, and the kernel completed the accept with `ECANCELED`.
fn cancel_an_accept(server: &Driver, listener: &TcpListener) -> io::Result<()> {
    let before = server.in_flight();
    let mut accept = Box::pin(listener.accept());
    // One poll queues the accept; no one connects, so it stays pending.
    if block_on(async { futures::poll!(&mut accept) }).is_ready() {
        return Err(io::Error::other("an accept completed with no client"));
    }
    let queued = server.in_flight();
    drop(accept);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.in_flight() > before {
        if Instant::now() > deadline {
            return Err(io::Error::other(
                "the dropped accept is still in flight after 5 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "a dropped accept: cancelled, operations in flight {before} -> {queued} -> {}",
        server.in_flight()
    );
    Ok(())
}

/// A file read on the server's ring, whose allowlist lacks `Read`: refused
/// before it reaches the kernel, with an error that names the operation.
fn refuse_a_file_read(server: &Driver) -> Result<(), Box<dyn std::error::Error>> {
    let file = File::open(server, "/dev/zero")?;
    let (result, _buf) = block_on(file.read_at(Vec::with_capacity(16), 0));
    let err = result
        .err()
        .ok_or("a read on the server's ring succeeded")?;
    let refused = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<NotAllowed>())
        .ok_or_else(|| format!("not a NotAllowed error: {err}"))?;
    println!(
        "a file read on the server's ring: {:?}, NotAllowed {{ op: {:?} }}: {err}",
        err.kind(),
        refused.op
    );
    Ok(())
}

/// Lets tasks wait until `count` of them have arrived.
#[derive(Clone)]
struct Barrier {
    arrived: Arc<AtomicUsize>,
    count: usize,
    open: Arc<Mutex<Option<oneshot::Sender<()>>>>,
    opened: Shared<oneshot::Receiver<()>>,
}

impl Barrier {
    fn new(count: usize) -> Barrier {
        let (open, opened) = oneshot::channel();
        Barrier {
            arrived: Arc::default(),
            count,
            open: Arc::new(Mutex::new(Some(open))),
            opened: opened.shared(),
        }
    }

    /// Counts one arrival; the last opens the barrier.
    fn arrive(&self) {
        if self.arrived.fetch_add(1, Ordering::SeqCst) + 1 == self.count {
            if let Some(open) = self.open.lock().unwrap().take() {
                let _ = open.send(());
            }
        }
    }

    /// Resolves once `count` arrivals have been counted.
    async fn wait(&self) {
        let _ = self.opened.clone().await;
    }
}

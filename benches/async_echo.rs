//! A loopback TCP echo round trip, one connection per contender: the
//! client sends a message, the server receives it and sends it back, the
//! client receives all of it and checks it. Server and client run on one
//! runtime of each kind, interleaved in rounds in one process:
//!
//! `cargo bench -p ringfence-benches --bench async_echo [-- ROUNDS]`
//! (ROUNDS defaults to 11; about 20 s).
//!
//! - **tokio**: `tokio::net::TcpStream` on a current-thread runtime (the
//!   server a task spawned on it, the client in `block_on`), with
//!   `write_all` and `read_exact`.
//! - **async, driver thread**: `ringfence_async::TcpStream` on
//!   `Driver::new(64)`, `send`/`recv` of owned `Vec`s, the server a task
//!   of a `futures` `LocalPool`, the client in its `run_until`. Each
//!   operation goes through the driver thread (eventfd doorbell, submit,
//!   reap, wake).
//! - **async, manual driver**: the same futures on a manual driver, whose
//!   `turn` the polling thread calls between polls: one thread.
//! - **tokio-uring**: its `TcpStream`, `write_all` and `read` of owned
//!   `Vec`s, the server a task spawned on its runtime.
//!
//! Both ends of every connection have `TCP_NODELAY`; connections are made
//! with `std` before the rounds. The two message sizes are the table's
//! rows; ns/op is one round trip.

use std::future::Future;
use std::net::{TcpListener, TcpStream};
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use ringfence::URingContext;
use ringfence_async::{Driver, ManualDriver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "async_common/mod.rs"]
mod async_common;

use async_common::{run_contest, Contest, Result, TURN_LIMIT};

/// The message sizes measured, bytes.
const SIZES: [usize; 2] = [64, 4096];

/// The largest message: the servers' buffers.
const MAX: usize = 4096;

/// Ring entries of the ringfence and tokio-uring rings.
const ENTRIES: usize = 64;

const NAMES: [&str; 4] = [
    "tokio",
    "async, driver thread",
    "async, manual driver",
    "tokio-uring",
];

/// A connected pair over loopback, `TCP_NODELAY` on both ends: (client,
/// server).
fn pair() -> Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    Ok((client, server))
}

/// The ringfence echo server: receive, send back what came, until the peer
/// shuts down.
async fn ringfence_server(stream: ringfence_async::TcpStream) {
    let mut buf = Vec::with_capacity(MAX);
    loop {
        buf.clear();
        let (n, back) = stream.recv(buf).await;
        buf = back;
        match n {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        match send_all(&stream, buf).await {
            Ok(back) => buf = back,
            Err(_) => return,
        }
    }
}

/// Sends all of `buf`'s bytes, and gives the buffer back.
async fn send_all(stream: &ringfence_async::TcpStream, mut buf: Vec<u8>) -> Result<Vec<u8>> {
    loop {
        let len = buf.len();
        let (n, back) = stream.send(buf).await;
        buf = back;
        let n = n?;
        if n == len {
            return Ok(buf);
        }
        if n == 0 {
            return Err("send sent nothing".into());
        }
        // Rare on loopback: send the rest.
        buf.drain(..n);
    }
}

/// One ringfence client round trip of `size` bytes.
async fn ringfence_client(
    stream: &ringfence_async::TcpStream,
    msg: &mut Option<Vec<u8>>,
    reply: &mut Vec<u8>,
    size: usize,
) -> Result<()> {
    let mut out = msg.take().expect("message given back");
    out.clear();
    out.extend((0..size).map(|i| i as u8));
    let out = send_all(stream, out).await?;
    reply.clear();
    let mut buf = Vec::with_capacity(MAX);
    while reply.len() < size {
        buf.clear();
        let (n, back) = stream.recv(buf).await;
        buf = back;
        if n? == 0 {
            return Err("the server closed the connection".into());
        }
        reply.extend_from_slice(&buf);
    }
    let same = *reply == out;
    *msg = Some(out);
    if same {
        Ok(())
    } else {
        Err("the echo differs from the message".into())
    }
}

struct Echo {
    tokio_rt: tokio::runtime::Runtime,
    tokio_client: tokio::net::TcpStream,
    threaded_pool: LocalPool,
    threaded_client: ringfence_async::TcpStream,
    manual_pool: LocalPool,
    manual_client: ringfence_async::TcpStream,
    manual: ManualDriver,
    uring_rt: tokio_uring::Runtime,
    uring_client: Option<tokio_uring::net::TcpStream>,
    msg: Option<Vec<u8>>,
    reply: Vec<u8>,
    tokio_buf: Vec<u8>,
    _drivers: (Driver, Driver),
}

impl Echo {
    fn new() -> Result<Echo> {
        let tokio_rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let tokio_client = {
            let (client, server) = pair()?;
            client.set_nonblocking(true)?;
            server.set_nonblocking(true)?;
            let _guard = tokio_rt.enter();
            let server = tokio::net::TcpStream::from_std(server)?;
            tokio_rt.spawn(async move {
                let mut server = server;
                let mut buf = vec![0u8; MAX];
                loop {
                    match server.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if server.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            tokio::net::TcpStream::from_std(client)?
        };

        let threaded_driver = Driver::new(ENTRIES)?;
        let threaded_pool = LocalPool::new();
        let (client, server) = pair()?;
        threaded_pool.spawner().spawn_local(ringfence_server(
            ringfence_async::TcpStream::from_std(&threaded_driver, server),
        ))?;
        let threaded_client = ringfence_async::TcpStream::from_std(&threaded_driver, client);

        let (manual_driver, manual) =
            Driver::builder(URingContext::new(ENTRIES, None)?).manual()?;
        let manual_pool = LocalPool::new();
        let (client, server) = pair()?;
        manual_pool.spawner().spawn_local(ringfence_server(
            ringfence_async::TcpStream::from_std(&manual_driver, server),
        ))?;
        let manual_client = ringfence_async::TcpStream::from_std(&manual_driver, client);

        let uring_rt = tokio_uring::Runtime::new(tokio_uring::builder().entries(ENTRIES as u32))?;
        let (client, server) = pair()?;
        let uring_client = uring_rt.block_on(async move {
            let server = tokio_uring::net::TcpStream::from_std(server);
            tokio_uring::spawn(async move {
                let mut buf = Vec::with_capacity(MAX);
                loop {
                    buf.clear();
                    let (n, back) = server.read(buf).await;
                    buf = back;
                    match n {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let (sent, back) = server.write_all(buf).await;
                    buf = back;
                    if sent.is_err() {
                        return;
                    }
                }
            });
            tokio_uring::net::TcpStream::from_std(client)
        });

        Ok(Echo {
            tokio_rt,
            tokio_client,
            threaded_pool,
            threaded_client,
            manual_pool,
            manual_client,
            manual,
            uring_rt,
            uring_client: Some(uring_client),
            msg: Some(Vec::with_capacity(MAX)),
            reply: Vec::with_capacity(MAX),
            tokio_buf: vec![0u8; MAX],
            _drivers: (threaded_driver, manual_driver),
        })
    }

    fn tokio(&mut self, size: usize) -> Result<()> {
        let msg: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let (client, reply) = (&mut self.tokio_client, &mut self.tokio_buf[..size]);
        self.tokio_rt.block_on(async {
            client.write_all(&msg).await?;
            client.read_exact(reply).await
        })?;
        if reply != &msg[..] {
            return Err("tokio: the echo differs from the message".into());
        }
        Ok(())
    }

    fn threaded(&mut self, size: usize) -> Result<()> {
        let (client, msg, reply) = (&self.threaded_client, &mut self.msg, &mut self.reply);
        self.threaded_pool
            .run_until(ringfence_client(client, msg, reply, size))
    }

    fn manual(&mut self, size: usize) -> Result<()> {
        let (client, msg, reply) = (&self.manual_client, &mut self.msg, &mut self.reply);
        run_manual_pool(
            &self.manual,
            &mut self.manual_pool,
            ringfence_client(client, msg, reply, size),
        )?
    }

    fn tokio_uring(&mut self, size: usize) -> Result<()> {
        let client = self.uring_client.as_ref().expect("closed only on drop");
        let mut out = self.msg.take().expect("message given back");
        out.clear();
        out.extend((0..size).map(|i| i as u8));
        let reply = &mut self.reply;
        let (result, out): (Result<()>, Vec<u8>) = self.uring_rt.block_on(async {
            let (sent, out) = client.write_all(out).await;
            if let Err(e) = sent {
                return (Err(e.into()), out);
            }
            reply.clear();
            let mut buf = Vec::with_capacity(MAX);
            while reply.len() < size {
                buf.clear();
                let (n, back) = client.read(buf).await;
                buf = back;
                match n {
                    Ok(0) => return (Err("the server closed the connection".into()), out),
                    Ok(_) => reply.extend_from_slice(&buf),
                    Err(e) => return (Err(e.into()), out),
                }
            }
            (Ok(()), out)
        });
        let same = *reply == out;
        self.msg = Some(out);
        result?;
        if !same {
            return Err("tokio-uring: the echo differs from the message".into());
        }
        Ok(())
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        // tokio-uring closes a socket through its ring: on its runtime.
        if let Some(client) = self.uring_client.take() {
            self.uring_rt.block_on(async move { drop(client) });
        }
    }
}

impl Contest for Echo {
    fn names(&self) -> Vec<String> {
        NAMES.iter().map(|n| n.to_string()).collect()
    }

    fn once(&mut self, which: usize, size: usize) -> Result<usize> {
        match which {
            0 => self.tokio(size)?,
            1 => self.threaded(size)?,
            2 => self.manual(size)?,
            _ => self.tokio_uring(size)?,
        }
        Ok(1)
    }
}

/// Runs `future` to completion with the tasks of `pool` (the server) on
/// this thread, turning the manual driver whenever neither can progress.
fn run_manual_pool<F: Future>(
    manual: &ManualDriver,
    pool: &mut LocalPool,
    future: F,
) -> Result<F::Output> {
    let flag = Arc::new(async_common::Flag::new());
    let waker = futures::task::waker(Arc::clone(&flag));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if flag.0.swap(false, Ordering::Acquire) {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return Ok(output);
            }
        }
        pool.run_until_stalled();
        if !flag.0.load(Ordering::Acquire) {
            manual.turn(Some(TURN_LIMIT))?;
        }
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("async_echo: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let rounds = async_common::rounds_from_args(11)?;
    let mut echo = Echo::new()?;
    println!(
        "Loopback TCP echo round trip, one connection per contender, server and client on one \
         runtime; rows: message size, bytes.\n"
    );
    run_contest(&mut echo, &SIZES, "message bytes", rounds, 0)
}

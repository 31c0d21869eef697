//! Sockets through the ring: echo over the futures-io traits, transfers
//! of several MiB checked byte for byte, end of stream, refused connects.

mod common;

use std::io::Write;

use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use ringfence_async::{TcpListener, TcpStream, UnixStream};

/// Echoes what `stream` reads until the end of the stream, then closes
/// its writing half. Returns the bytes echoed.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> usize {
    let mut buf = vec![0u8; 50_000];
    let mut total = 0;
    loop {
        let n = stream.read(&mut buf).await.expect("server read");
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n]).await.expect("server write");
        total += n;
    }
    stream.flush().await.expect("server flush");
    stream.close().await.expect("server close");
    total
}

/// Writes `data` through `stream` (then closes the writing half) while
/// reading the echo back to the end; returns what came back.
async fn through_echo<S: AsyncRead + AsyncWrite + Unpin>(stream: S, data: Vec<u8>) -> Vec<u8> {
    let (mut reader, mut writer) = stream.split();
    let send = async move {
        // Uneven pieces, so that the stream's own buffering is crossed at
        // odd places.
        let mut rng = fastrand::Rng::with_seed(7);
        let mut at = 0;
        while at < data.len() {
            let piece = rng.usize(1..=100_000).min(data.len() - at);
            writer
                .write_all(&data[at..at + piece])
                .await
                .expect("client write");
            at += piece;
        }
        writer.flush().await.expect("client flush");
        writer.close().await.expect("client close");
    };
    let receive = async move {
        // Not `read_to_end`: futures' zeroes the whole spare capacity on
        // each poll after a `Pending`, which makes a transfer of MiBs
        // quadratic.
        let mut back = Vec::new();
        let mut piece = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut piece).await.expect("client read");
            if n == 0 {
                break back;
            }
            back.extend_from_slice(&piece[..n]);
        }
    };
    futures::future::join(send, receive).await.1
}

const LARGE: usize = 6 << 20;

fn check_echo(sent: &[u8], back: &[u8]) {
    assert_eq!(back.len(), sent.len(), "the echo's length");
    if let Some(at) = sent.iter().zip(back).position(|(a, b)| a != b) {
        panic!("the echo differs from byte {at}");
    }
}

#[test]
fn tcp_echo_of_several_mib_comes_back_byte_for_byte() {
    let driver = driver!(64);
    let listener = TcpListener::bind(&driver, "127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let data = common::pattern(11, LARGE);
    let sent = data.clone();
    let (echoed, back) = common::block_on("tcp echo", {
        let driver = driver.clone();
        async move {
            let server = async {
                let (stream, peer) = listener.accept().await.expect("accept");
                assert!(peer.ip().is_loopback());
                echo(stream).await
            };
            let client = async {
                let stream = TcpStream::connect(&driver, addr).await.expect("connect");
                assert_eq!(stream.peer_addr().expect("peer_addr"), addr);
                through_echo(stream, data).await
            };
            futures::future::join(server, client).await
        }
    });
    assert_eq!(echoed, LARGE);
    check_echo(&sent, &back);
    common::wait_idle(&driver, "operations left");
}

#[test]
fn unix_echo_of_several_mib_comes_back_byte_for_byte() {
    let driver = driver!(64);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("echo.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    // Connect through the ring; the listen backlog completes it before
    // the std accept below.
    let client = common::block_on("connect", {
        let (driver, path) = (driver.clone(), path.clone());
        async move { UnixStream::connect(&driver, path).await.expect("connect") }
    });
    let (server, _) = listener.accept().expect("accept");
    let server = UnixStream::from_std(&driver, server);
    let data = common::pattern(12, LARGE);
    let sent = data.clone();
    let (echoed, back) = common::block_on(
        "unix echo",
        futures::future::join(echo(server), through_echo(client, data)),
    );
    assert_eq!(echoed, LARGE);
    check_echo(&sent, &back);
    common::wait_idle(&driver, "operations left");
}

#[test]
fn the_echo_runs_across_tokio_worker_threads() {
    // Server and client in separate tasks of a multi-thread runtime, so
    // that reads and writes of one stream are polled on different threads.
    let driver = driver!(64);
    let listener = TcpListener::bind(&driver, "127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let data = common::pattern(13, 2 << 20);
    let sent = data.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let back = common::bounded(common::LIMIT, "tokio echo", {
        let driver = driver.clone();
        move || {
            runtime.block_on(async move {
                let server = tokio::spawn(async move {
                    let (stream, _) = listener.accept().await.expect("accept");
                    echo(stream).await
                });
                let client = tokio::spawn(async move {
                    let stream = TcpStream::connect(&driver, addr).await.expect("connect");
                    through_echo(stream, data).await
                });
                assert_eq!(server.await.expect("server task"), 2 << 20);
                client.await.expect("client task")
            })
        }
    });
    check_echo(&sent, &back);
}

#[test]
fn reads_end_after_the_peer_shuts_down_its_side() {
    let driver = driver!(8);
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let mut ours = UnixStream::from_std(&driver, ours);
    (&theirs).write_all(b"last words").expect("peer write");
    theirs
        .shutdown(std::net::Shutdown::Write)
        .expect("peer shutdown");
    let (rest, again, recv) = common::block_on("read to end", async move {
        let mut rest = Vec::new();
        ours.read_to_end(&mut rest).await.expect("read_to_end");
        let mut byte = [0u8; 1];
        let again = ours.read(&mut byte).await.expect("read after the end");
        let (recv, _) = ours.recv(Vec::with_capacity(8)).await;
        (rest, again, recv)
    });
    assert_eq!(rest, b"last words");
    assert_eq!(again, 0, "the end of the stream stays the end");
    assert_eq!(recv.expect("recv after the end"), 0);
    drop(theirs);
}

#[test]
fn closing_our_writing_half_ends_the_peer_s_stream() {
    let driver = driver!(8);
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let mut ours = UnixStream::from_std(&driver, ours);
    common::block_on("write and close", async move {
        ours.write_all(b"bye").await.expect("write_all");
        ours.close().await.expect("close");
    });
    let mut got = Vec::new();
    theirs
        .set_read_timeout(Some(common::LIMIT))
        .expect("set_read_timeout");
    std::io::Read::read_to_end(&mut &theirs, &mut got).expect("peer read");
    assert_eq!(got, b"bye");
}

#[test]
fn send_and_recv_take_and_give_back_owned_buffers() {
    let driver = driver!(8);
    let (a, b) = UnixStream::pair(&driver).expect("pair");
    let (sent, received, buf) = common::block_on("send/recv", async move {
        let (sent, _) = a.send(b"owned".to_vec().into_boxed_slice()).await;
        let (received, buf) = b.recv(vec![0u8; 16].into_boxed_slice()).await;
        (sent, received, buf)
    });
    assert_eq!(sent.expect("send"), 5);
    assert_eq!(received.expect("recv"), 5);
    assert_eq!(&buf[..5], b"owned");
    assert_eq!(&buf[5..], &[0u8; 11]);
}

#[test]
fn connecting_to_a_closed_port_is_refused() {
    let driver = driver!(8);
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("local_addr")
    };
    let err = common::block_on("connect", async move {
        TcpStream::connect(&driver, addr)
            .await
            .expect_err("nobody listens there")
    });
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
}

#[test]
fn a_send_to_a_closed_peer_fails_with_epipe_not_sigpipe() {
    let driver = driver!(8);
    let (ours, theirs) = UnixStream::pair(&driver).expect("pair");
    drop(theirs);
    let (sent, _) = common::block_on("send", ours.send(vec![1u8; 10]));
    let err = sent.expect_err("the peer is gone");
    assert_eq!(err.raw_os_error(), Some(libc::EPIPE), "{err}");
}

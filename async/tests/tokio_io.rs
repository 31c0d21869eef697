//! tokio's `AsyncRead`/`AsyncWrite` on the streams (the `tokio` feature),
//! through tokio's own helpers (`read_exact`, `write_all`, `shutdown`,
//! `tokio::io::copy`) on tokio's runtimes, against the real kernel.
//!
//! The streams' inherent `shutdown(how)` (the direct `shutdown(2)`) takes
//! precedence over `AsyncWriteExt::shutdown`, so that one is called by its
//! path here.
#![cfg(feature = "tokio")]
// Needs the real kernel: Miri cannot make io_uring syscalls.
#![cfg(not(miri))]

use std::future::Future;
use std::time::Duration;

use ringfence_async::{Driver, TcpListener, TcpStream, UnixStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every test's whole run is bounded by this.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A driver, or `None` (the test then skips) when io_uring is unusable
/// here. Under CI (`CI=true`) it must be: the test fails instead.
fn driver() -> Option<Driver> {
    match Driver::new(64) {
        Ok(driver) => Some(driver),
        Err(err) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "io_uring must be usable under CI: {err}"
            );
            eprintln!("skipping: io_uring is not usable here: {err}");
            None
        }
    }
}

/// `future`, failing the test if it takes longer than [`TIMEOUT`].
async fn bounded<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .expect("still running after the timeout")
}

/// `len` seeded random bytes.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    std::iter::repeat_with(|| rng.u8(..)).take(len).collect()
}

#[tokio::test]
async fn unix_stream_pair_round_trips_with_read_exact_and_write_all_then_shutdown_ends_it() {
    let Some(driver) = driver() else { return };
    let (mut a, mut b) = UnixStream::pair(&driver).unwrap();
    bounded(async {
        // Several times the stream's 64 KiB buffer: many writes and reads.
        let sent = bytes(1, 300 * 1024);
        let mut received = vec![0; sent.len()];
        let (written, read) = tokio::join!(a.write_all(&sent), b.read_exact(&mut received));
        written.unwrap();
        assert_eq!(read.unwrap(), sent.len());
        assert!(received == sent, "the bytes read differ from those written");

        // And back the other way, then end of stream after a shutdown.
        b.write_all(b"pong").await.unwrap();
        AsyncWriteExt::shutdown(&mut b).await.unwrap();
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"pong");
        // End of stream stays so: a read into a non-empty buffer gives 0.
        assert_eq!(a.read(&mut [0; 8]).await.unwrap(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_io_copy_moves_every_byte_between_unix_streams() {
    let Some(driver) = driver() else { return };
    // source -> (from -> copy -> to) -> sink
    let (mut source, mut from) = UnixStream::pair(&driver).unwrap();
    let (mut to, mut sink) = UnixStream::pair(&driver).unwrap();
    let sent = bytes(2, 1024 * 1024 + 17);
    bounded(async {
        let write = async {
            source.write_all(&sent).await?;
            AsyncWriteExt::shutdown(&mut source).await
        };
        let copy = async {
            let copied = tokio::io::copy(&mut from, &mut to).await?;
            AsyncWriteExt::shutdown(&mut to).await?;
            Ok::<_, std::io::Error>(copied)
        };
        let read = async {
            let mut received = Vec::new();
            sink.read_to_end(&mut received).await?;
            Ok::<_, std::io::Error>(received)
        };
        let (written, copied, received) = tokio::join!(write, copy, read);
        written.unwrap();
        assert_eq!(copied.unwrap(), sent.len() as u64);
        let received = received.unwrap();
        assert_eq!(received.len(), sent.len());
        assert!(received == sent, "the bytes copied differ from those sent");
    })
    .await;
}

#[tokio::test]
async fn tcp_stream_round_trips_through_tokio_io() {
    let Some(driver) = driver() else { return };
    let listener = TcpListener::bind(&driver, "127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    bounded(async {
        let (accepted, connected) =
            tokio::join!(listener.accept(), TcpStream::connect(&driver, addr));
        let (mut server, _) = accepted.unwrap();
        let mut client = connected.unwrap();
        let sent = bytes(3, 200 * 1024);
        // The server reads all, then sends it back and ends its side.
        let echo = async {
            let mut received = Vec::new();
            server.read_to_end(&mut received).await?;
            server.write_all(&received).await?;
            AsyncWriteExt::shutdown(&mut server).await?;
            Ok::<_, std::io::Error>(received.len())
        };
        let talk = async {
            client.write_all(&sent).await?;
            AsyncWriteExt::shutdown(&mut client).await?;
            let mut back = Vec::new();
            client.read_to_end(&mut back).await?;
            Ok::<_, std::io::Error>(back)
        };
        let (echoed, back) = tokio::join!(echo, talk);
        assert_eq!(echoed.unwrap(), sent.len());
        assert!(
            back.unwrap() == sent,
            "the bytes echoed differ from those sent"
        );
    })
    .await;
}

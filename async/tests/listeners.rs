//! A Unix listener accepts through the ring, and the stream it gives
//! carries bytes both ways.

use futures::executor::block_on;
use ringfence_async::{Driver, UnixListener, UnixStream};

#[test]
fn a_unix_listener_accepts_a_connection_made_through_the_ring() {
    let driver = Driver::new(16).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("socket");
    let listener = UnixListener::bind(&driver, &path).unwrap();
    let (server, client) = block_on(futures::future::join(
        listener.accept(),
        UnixStream::connect(&driver, &path),
    ));
    let (server, client) = (server.unwrap(), client.unwrap());
    let (sent, _) = block_on(client.send(b"ping".to_vec()));
    assert_eq!(sent.unwrap(), 4);
    let (received, buf) = block_on(server.recv(Vec::with_capacity(16)));
    assert_eq!(received.unwrap(), 4);
    assert_eq!(buf, b"ping");
    drop((server, client, listener));
    assert_eq!(driver.in_flight(), 0);
}

#[test]
fn connecting_to_no_listener_fails_with_the_errno() {
    let driver = Driver::new(4).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = block_on(UnixStream::connect(&driver, dir.path().join("nobody"))).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
}

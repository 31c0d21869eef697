//! Rings restricted to an allowlist (`Driver::with_allowlist`): allowed
//! operations work, refused ones fail before the kernel with an error
//! naming them, and the driver does without the operations it lacks.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use futures::future::join_all;
use ringfence::{URingAllowlist, URingContext, URingOperation};
use ringfence_async::{Driver, File, NotAllowed, TcpStream, UnixStream};

use common::{poll_once, CountingWaker, TrackedBuf, LIMIT};

fn allowlist(ops: &[URingOperation]) -> URingAllowlist {
    let mut list = URingAllowlist::new();
    for &op in ops {
        list.allow_submit_operation(op);
    }
    list
}

fn scratch(driver: &Driver) -> File {
    File::from_std(driver, tempfile::tempfile().expect("tempfile"))
}

/// The operation a refusal names, checking its kind on the way.
fn refused_op(err: &std::io::Error) -> URingOperation {
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    let not_allowed = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<NotAllowed>())
        .unwrap_or_else(|| panic!("no NotAllowed inside: {err:?}"));
    assert!(
        err.to_string().contains(&format!("{:?}", not_allowed.op)),
        "the message names the operation: {err}"
    );
    not_allowed.op
}

#[test]
fn allowed_operations_work_and_refused_ones_name_themselves() {
    use URingOperation::*;
    let driver = driver!(16, &allowlist(&[Read, Write, Send, PollAdd, AsyncCancel]));
    let file = scratch(&driver);
    let (a, b) = UnixStream::pair(&driver).expect("pair");
    let (read, buf, fsync, fallocate, readv, sent, recv, connect) =
        common::block_on("restricted", {
            let driver = driver.clone();
            async move {
                let (written, _) = file.write_at(b"allowed".to_vec(), 0).await;
                assert_eq!(written.expect("write"), 7);
                let (read, buf) = file.read_at(Vec::with_capacity(16), 0).await;
                let fsync = file.fsync().await;
                let fallocate = file
                    .fallocate(0, 4096, ringfence::FallocateMode::empty())
                    .await;
                let (readv, _) = file.readv_at(vec![Vec::with_capacity(4)], 0).await;
                let (sent, _) = a.send(b"x".to_vec()).await;
                let (recv, _) = b.recv(Vec::with_capacity(4)).await;
                let addr = "127.0.0.1:9".parse().expect("address");
                let connect = TcpStream::connect(&driver, addr).await.map(drop);
                (read, buf, fsync, fallocate, readv, sent, recv, connect)
            }
        });
    assert_eq!(read.expect("read"), 7);
    assert_eq!(buf, b"allowed");
    assert_eq!(sent.expect("send"), 1);
    assert_eq!(refused_op(&fsync.expect_err("fsync")), Fsync);
    assert_eq!(refused_op(&fallocate.expect_err("fallocate")), Fallocate);
    assert_eq!(refused_op(&readv.expect_err("readv")), Readv);
    assert_eq!(refused_op(&recv.expect_err("recv")), Recv);
    assert_eq!(refused_op(&connect.expect_err("connect")), Connect);
    assert_eq!(driver.in_flight(), 0, "refused operations take no slot");
}

/// Runs `ROUNDS` writes and reads, each polled first on another thread
/// while the driver sleeps, and returns how long they took.
fn round_trips(driver: &Driver) -> Duration {
    const ROUNDS: u64 = 50;
    let file = scratch(driver);
    let start = Instant::now();
    for round in 0..ROUNDS {
        // The driver has nothing to do between rounds: each operation
        // has to wake it (or wait for its tick).
        std::thread::sleep(Duration::from_millis(2));
        let file = file.clone();
        let (written, read) = common::block_on("round", async move {
            let (written, _) = file.write_at(round.to_le_bytes().to_vec(), round * 8).await;
            let (read, buf) = file.read_at(Vec::with_capacity(8), round * 8).await;
            assert_eq!(buf, round.to_le_bytes());
            (written, read)
        });
        assert_eq!(written.expect("write"), 8);
        assert_eq!(read.expect("read"), 8);
    }
    start.elapsed()
}

#[test]
fn without_poll_add_the_driver_ticks_and_operations_still_complete() {
    use URingOperation::*;
    let driver = driver!(8, &allowlist(&[Read, Write]));
    let took = round_trips(&driver);
    let with_doorbell = round_trips(&driver!(8));
    eprintln!("50 rounds without a doorbell: {took:?}; with one: {with_doorbell:?}");
    common::wait_idle(&driver, "operations left");
    assert!(driver.take_last_error().is_none());
}

#[test]
fn a_driver_not_told_of_the_allowlist_falls_back_when_the_kernel_refuses_its_poll() {
    // The context is restricted but the builder was not given the list:
    // the doorbell's poll goes to the kernel and comes back EACCES, and
    // the driver falls back to ticks instead of spinning or stopping.
    use URingOperation::*;
    let list = allowlist(&[Read, Write]);
    // An unrestricted ring first, only to skip where io_uring is unusable.
    if common::usable_or_skip_ctx(8).is_none() {
        return;
    }
    let ctx = URingContext::new(8, Some(&list)).expect("restricted ring");
    let driver = Driver::builder(ctx).spawn().expect("driver");
    let took = round_trips(&driver);
    eprintln!("50 rounds after the doorbell was refused: {took:?}");
    assert!(driver.take_last_error().is_none());
}

#[test]
fn without_async_cancel_dropped_futures_are_freed_when_their_operations_end() {
    use URingOperation::*;
    const PENDING: usize = 8;
    let driver = driver!(16, &allowlist(&[Recv, PollAdd]));
    let (ours, theirs): (Vec<_>, Vec<_>) = (0..PENDING)
        .map(|_| {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
            (UnixStream::from_std(&driver, ours), theirs)
        })
        .unzip();
    let (_, waker) = CountingWaker::new();
    let mut freed = Vec::new();
    for stream in &ours {
        let (buf, was_freed) = TrackedBuf::new(8, 0);
        let mut recv = stream.recv(buf);
        assert!(poll_once(&mut recv, &waker).is_pending());
        drop(recv);
        freed.push(was_freed);
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        driver.in_flight(),
        PENDING,
        "nothing could cancel them: they wait for data"
    );
    assert!(freed.iter().all(|f| f.try_recv().is_err()), "freed early");
    for (i, peer) in theirs.iter().enumerate() {
        // One write call: `write!` may split it, and a receive may end between.
        (&*peer)
            .write_all(format!("data {i}").as_bytes())
            .expect("peer write");
    }
    common::wait_idle(&driver, "the dropped receives ended");
    for (i, was_freed) in freed.iter().enumerate() {
        let contents = was_freed.recv_timeout(LIMIT).expect("freed");
        assert_eq!(&contents[..6], format!("data {i}").as_bytes());
    }
    // And a new receive on the same streams works (the data went to the
    // dropped ones: that loss is the documented one).
    (&theirs[0]).write_all(b"more").expect("peer write");
    let first = ours.into_iter().next().expect("one stream");
    let received = common::block_on("after", first.recv(Vec::with_capacity(8)));
    let (received, buf) = received;
    assert_eq!(received.expect("recv"), 4);
    assert_eq!(buf, b"more");
}

#[test]
fn a_full_restricted_ring_of_four_entries_runs_hundreds_of_operations() {
    use URingOperation::*;
    const OPS: u64 = 300;
    let driver = driver!(4, &allowlist(&[Write, Read, PollAdd]));
    let file = scratch(&driver);
    let results = common::block_on(
        "full ring",
        join_all((0..OPS).map(move |i| {
            let file = file.clone();
            async move {
                let (written, _) = file.write_at(i.to_le_bytes().to_vec(), i * 8).await;
                let (read, buf) = file.read_at(Vec::with_capacity(8), i * 8).await;
                (written.map(|n| n as u64), read, buf)
            }
        })),
    );
    for (i, (written, read, buf)) in results.into_iter().enumerate() {
        assert_eq!(written.expect("write"), 8, "op {i}");
        assert_eq!(read.expect("read"), 8, "op {i}");
        assert_eq!(buf, (i as u64).to_le_bytes());
    }
}

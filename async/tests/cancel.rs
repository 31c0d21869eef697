//! Futures dropped before their operations complete: the operation is
//! cancelled, what it owns is freed only when the kernel's completion
//! arrives, and the driver carries on.

mod common;

use std::io::{Read, Write};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use futures::future::{self, Either};
use ringfence::{URingAllowlist, URingOperation};
use ringfence_async::{File, TcpListener, UnixStream};

use common::{poll_once, CountingWaker, TrackedBuf, LIMIT};

#[test]
fn a_receive_dropped_while_it_waits_is_cancelled_and_leaves_the_table() {
    let driver = driver!(8);
    let (ours, _theirs) = UnixStream::pair(&driver).expect("pair");
    let (buf, freed) = TrackedBuf::new(32, 0);
    let mut recv = ours.recv(buf);
    let (_, waker) = CountingWaker::new();
    assert!(
        poll_once(&mut recv, &waker).is_pending(),
        "no data was sent"
    );
    // Let the driver submit it: the cancellation then has to reach the
    // kernel, not just an unsubmitted SQE.
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(driver.in_flight(), 1);
    drop(recv);
    let took = common::wait_idle(&driver, "the cancelled receive left the table");
    eprintln!("cancelled and freed in {took:?}");
    let contents = freed
        .recv_timeout(LIMIT)
        .expect("the buffer was freed with its slot");
    assert!(contents.iter().all(|&b| b == 0), "nothing was received");
}

/// A ring without `AsyncCancel`: a dropped future's operation runs to its
/// end, at a moment the test chooses.
fn no_cancel_allowlist() -> URingAllowlist {
    let mut list = URingAllowlist::new();
    list.allow_submit_operation(URingOperation::PollAdd)
        .allow_submit_operation(URingOperation::Recv)
        .allow_submit_operation(URingOperation::Send);
    list
}

#[test]
fn a_dropped_future_s_buffer_is_freed_only_after_the_kernel_wrote_it() {
    // The rio bug (RUSTSEC-2020-0021) was freeing at drop what the kernel
    // still writes. Here nothing can cancel the receive, so its buffer must
    // live until data comes, and must be freed after the kernel wrote it.
    let driver = driver!(8, &no_cancel_allowlist());
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let ours = UnixStream::from_std(&driver, ours);
    let (buf, freed) = TrackedBuf::new(32, 0);
    let mut recv = ours.recv(buf);
    let (_, waker) = CountingWaker::new();
    assert!(poll_once(&mut recv, &waker).is_pending());
    drop(recv);
    assert_eq!(
        freed.recv_timeout(Duration::from_millis(200)),
        Err(RecvTimeoutError::Timeout),
        "the buffer was freed while the kernel could still write it"
    );
    assert_eq!(
        driver.in_flight(),
        1,
        "the abandoned receive keeps its slot"
    );
    (&theirs).write_all(b"written late").expect("peer write");
    let contents = freed
        .recv_timeout(LIMIT)
        .expect("the buffer was freed on completion");
    assert_eq!(
        &contents[..12],
        b"written late",
        "the kernel wrote it first"
    );
    common::wait_idle(&driver, "the slot was freed");
}

#[test]
fn a_read_dropped_mid_flight_leaves_the_file_and_driver_usable() {
    const LEN: usize = 8 << 20;
    let driver = driver!(8);
    let file = File::from_std(&driver, tempfile::tempfile().expect("tempfile"));
    let data = common::pattern(3, LEN);
    let (written, _) = common::block_on("write", file.write_at(data.clone(), 0));
    assert_eq!(written.expect("write"), LEN);
    for _ in 0..20 {
        let (buf, freed) = TrackedBuf::new(LEN, 0);
        let mut read = file.read_at(buf, 0);
        let (_, waker) = CountingWaker::new();
        if poll_once(&mut read, &waker).is_ready() {
            continue;
        }
        drop(read);
        freed.recv_timeout(LIMIT).expect("the buffer was freed");
        common::wait_idle(&driver, "the dropped read left the table");
    }
    let (read, buf) = common::block_on("read", file.read_at(Vec::with_capacity(LEN), 0));
    assert_eq!(read.expect("read"), LEN);
    assert!(buf == data, "the file changed");
}

#[test]
fn an_accept_dropped_by_select_after_the_kernel_accepted_closes_that_connection() {
    // The documented loss: accept is not cancellation-safe. A connection
    // the kernel accepted for a future that another select! branch then
    // drops is closed; its client sees the end of the stream.
    let driver = driver!(8);
    let listener = TcpListener::bind(&driver, "127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let mut accept = Box::pin(listener.accept());
    let (woken, waker) = CountingWaker::new();
    assert!(poll_once(&mut accept, &waker).is_pending());
    let mut client = std::net::TcpStream::connect(addr).expect("connect");
    common::wait_until(LIMIT, "the accept completed", || woken.wakes() > 0);
    // Another branch wins the select, and the accept future is dropped.
    let timer_fired = future::ready("timer");
    match futures::executor::block_on(future::select(timer_fired, accept)) {
        Either::Left(("timer", accept)) => drop(accept),
        _ => panic!("the ready branch is polled first"),
    }
    common::wait_idle(&driver, "the dropped accept left the table");
    client
        .set_read_timeout(Some(LIMIT))
        .expect("set_read_timeout");
    let mut byte = [0u8; 1];
    match client.read(&mut byte) {
        Ok(0) => {}
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the accepted connection was not closed: {other:?}"),
    }
}

#[test]
fn one_accept_future_kept_across_select_turns_loses_no_connection() {
    // The pattern the docs give instead: pin one accept future outside the
    // loop; the other branch may win any number of turns.
    let driver = driver!(8);
    let listener = TcpListener::bind(&driver, "127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let accepted = common::block_on("accept across turns", async move {
        let mut accept = Box::pin(listener.accept());
        let mut turns = 0;
        let mut client = None;
        loop {
            let tick = futures::future::ready(());
            match future::select(accept.as_mut(), tick).await {
                Either::Right(((), _)) => {
                    turns += 1;
                    if turns == 3 {
                        client = Some(std::net::TcpStream::connect(addr).expect("connect"));
                    }
                    // Give the kernel a moment, then go around.
                    std::thread::sleep(Duration::from_millis(5));
                    assert!(turns < 2000, "the accept never completed");
                }
                Either::Left((accepted, _)) => {
                    let (stream, _peer) = accepted.expect("accept");
                    break (stream, client.expect("connected"), turns);
                }
            }
        }
    });
    let (stream, mut client, turns) = accepted;
    eprintln!("accepted after {turns} turns");
    let (sent, _) = common::block_on("send", stream.send(b"kept".to_vec()));
    assert_eq!(sent.expect("send"), 4);
    let mut got = [0u8; 4];
    client.read_exact(&mut got).expect("client read");
    assert_eq!(&got, b"kept");
}

#[test]
fn buffers_come_back_with_results_and_errors() {
    let driver = driver!(8);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    std::fs::write(&path, b"0123456789").expect("write");
    // Opened read-only: writes fail with EBADF.
    let file = File::open(&driver, &path).expect("open");
    let (read, buf, failed, boxed) = common::block_on("ops", async move {
        let buf = Vec::with_capacity(64);
        let ptr = buf.as_ptr() as usize;
        let (read, buf) = file.read_at(buf, 2).await;
        assert_eq!(buf.as_ptr() as usize, ptr, "the same buffer came back");
        let boxed: Box<[u8]> = vec![9u8; 16].into_boxed_slice();
        let ptr = boxed.as_ptr() as usize;
        let (failed, boxed) = file.write_at(boxed, 0).await;
        assert_eq!(boxed.as_ptr() as usize, ptr, "the same buffer came back");
        (read, buf, failed, boxed)
    });
    assert_eq!(read.expect("read"), 8);
    assert_eq!(buf, b"23456789", "the Vec's length is the count read");
    let err = failed.expect_err("a write to a read-only file");
    assert_eq!(err.raw_os_error(), Some(libc::EBADF), "{err}");
    assert_eq!(&boxed[..], &[9u8; 16], "the failed write's buffer, intact");
    assert_eq!(driver.in_flight(), 0);
}

#[test]
fn forgetting_a_future_leaks_its_operation_but_the_driver_carries_on() {
    let driver = driver!(8);
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let ours = UnixStream::from_std(&driver, ours);
    let (buf, freed) = TrackedBuf::new(16, 0);
    let mut recv = ours.recv(buf);
    let (_, waker) = CountingWaker::new();
    assert!(poll_once(&mut recv, &waker).is_pending());
    common::forget_reachably(recv);
    // Its operation completes, but nobody takes the result: the slot
    // (and buffer) stay, and are never freed early.
    (&theirs).write_all(b"to nobody").expect("peer write");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        driver.in_flight(),
        1,
        "the forgotten operation keeps its slot"
    );
    assert!(freed.try_recv().is_err(), "the forgotten buffer was freed");
    // Everything else works as before.
    let file = File::from_std(&driver, tempfile::tempfile().expect("tempfile"));
    let work = async move {
        for i in 0..50u8 {
            let (written, _) = file.write_at(vec![i; 100], u64::from(i) * 100).await;
            assert_eq!(written.expect("write"), 100);
        }
        let (read, buf) = file.read_at(Vec::with_capacity(5000), 0).await;
        assert_eq!(read.expect("read"), 5000);
        buf
    };
    let buf = common::block_on("work after forget", work);
    assert!(buf
        .chunks(100)
        .enumerate()
        .all(|(i, c)| c == [i as u8; 100]));
    let (send_ours, mut recv_theirs) = UnixStream::pair(&driver).expect("pair");
    let (sent, _) = common::block_on("send", send_ours.send(b"still".to_vec()));
    assert_eq!(sent.expect("send"), 5);
    let mut got = [0u8; 5];
    common::block_on("read", async move {
        futures::io::AsyncReadExt::read_exact(&mut recv_theirs, &mut got)
            .await
            .expect("read");
        assert_eq!(&got, b"still");
    });
    assert_eq!(driver.in_flight(), 1, "only the forgotten one is left");
}

/// Whether the peer of every socket in `peers` sees its end closed: then
/// nothing (stream, future, operation, driver table) holds it any more.
fn all_closed(peers: &[std::os::unix::net::UnixStream]) {
    for peer in peers {
        peer.set_read_timeout(Some(LIMIT))
            .expect("set_read_timeout");
        let mut byte = [0u8; 1];
        assert_eq!(
            (&*peer).read(&mut byte).expect("peer read"),
            0,
            "still open: something still holds the socket"
        );
    }
}

#[test]
fn dropping_the_driver_with_operations_in_flight_returns_in_bounded_time() {
    // The futures are dropped first (each holds the driver), their
    // cancellations barely queued; then the last handle: the driver thread
    // stops and the ring is closed, cancelling and waiting for what is in
    // the kernel.
    const PENDING: usize = 32;
    let driver = driver!(64);
    let (ours, theirs): (Vec<_>, Vec<_>) = (0..PENDING)
        .map(|_| {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
            (UnixStream::from_std(&driver, ours), theirs)
        })
        .unzip();
    let (_, waker) = CountingWaker::new();
    let mut recvs: Vec<_> = ours
        .iter()
        .map(|ours| ours.recv(Vec::with_capacity(64)))
        .collect();
    for recv in &mut recvs {
        assert!(poll_once(recv, &waker).is_pending());
    }
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(driver.in_flight(), PENDING);
    drop(recvs);
    drop(ours);
    let dropped = common::bounded(LIMIT, "dropping the driver", move || {
        let start = Instant::now();
        drop(driver);
        start.elapsed()
    });
    eprintln!("the driver was dropped in {dropped:?}");
    assert!(
        dropped < Duration::from_secs(2),
        "dropping the driver took {dropped:?}"
    );
    all_closed(&theirs);
}

#[test]
fn dropping_a_runtime_with_a_pending_future_then_the_driver_frees_everything() {
    // A task pending on a receive is dropped with its runtime (its future
    // then cancels the operation), then the last driver handle.
    let driver = driver!(16);
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let ours = UnixStream::from_std(&driver, ours);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let (started_tx, started) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let recv = ours.recv(Vec::with_capacity(8));
        started_tx.send(()).expect("started");
        let _ = recv.await;
    });
    started.recv_timeout(LIMIT).expect("the task ran");
    common::wait_until(LIMIT, "the receive was queued", || driver.in_flight() == 1);
    let dropped = common::bounded(LIMIT, "dropping the runtime and driver", move || {
        let start = Instant::now();
        drop(runtime);
        drop(driver);
        start.elapsed()
    });
    eprintln!("the runtime and driver were dropped in {dropped:?}");
    assert!(dropped < Duration::from_secs(2), "took {dropped:?}");
    all_closed(&[theirs]);
}

/// Polls a receive on each of `count` fresh socket pairs that never get
/// data, until all are in flight or the ring takes no more (the driver's
/// limit), and drops them all at once. Returns how many were in flight,
/// and the pairs (kept open, so only a cancellation can end the
/// receives).
fn drop_waiting_receives(
    driver: &ringfence_async::Driver,
    count: usize,
) -> (usize, Vec<(UnixStream, UnixStream)>) {
    let pairs: Vec<_> = (0..count)
        .map(|_| UnixStream::pair(driver).expect("pair"))
        .collect();
    let (_, waker) = CountingWaker::new();
    let mut recvs: Vec<_> = pairs
        .iter()
        .map(|(ours, _)| ours.recv(Vec::with_capacity(8)))
        .collect();
    // Those that found no room wait to be woken: poll them all again
    // until all are in flight, or none got in for 200 ms.
    let start = Instant::now();
    let (mut most, mut grew) = (0, Instant::now());
    loop {
        for recv in &mut recvs {
            assert!(poll_once(recv, &waker).is_pending());
        }
        let now = driver.in_flight();
        if now == count || (now == most && grew.elapsed() > Duration::from_millis(200)) {
            break;
        }
        if now > most {
            (most, grew) = (now, Instant::now());
        }
        assert!(start.elapsed() < LIMIT, "the receives were never queued");
        std::thread::sleep(Duration::from_millis(1));
    }
    let in_flight = driver.in_flight();
    drop(recvs);
    (in_flight, pairs)
}

/// Waits until every operation of `driver` has ended, failing with how
/// many were left.
fn all_cancelled(driver: &ringfence_async::Driver) {
    let start = Instant::now();
    while driver.in_flight() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{} dropped receives were never cancelled",
            driver.in_flight()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn waiting_futures_dropped_all_at_once_on_a_small_ring_are_all_cancelled() {
    // More cancellations than a ring of 4 SQEs holds at once: the ones
    // that find the queue full must still be sent, not given up.
    let driver = driver!(4);
    let (in_flight, _pairs) = drop_waiting_receives(&driver, 32);
    assert_eq!(in_flight, 32);
    all_cancelled(&driver);
}

#[test]
fn waiting_futures_dropped_when_the_ring_is_at_its_in_flight_cap_are_all_cancelled() {
    // A ring of 4 entries has 8 CQEs and takes at most 16 x 8 = 128
    // operations in flight. With 128 receives waiting for data that never
    // comes, there must still be room for the cancellations of the
    // futures dropped.
    let driver = driver!(4);
    let (in_flight, _pairs) = drop_waiting_receives(&driver, 140);
    eprintln!("{in_flight} receives in flight when dropped");
    assert!(in_flight > 100, "only {in_flight} got in");
    all_cancelled(&driver);
}

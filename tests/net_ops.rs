//! Kernel tests of the socket operations (`ringfence::op::net`): send and
//! recv, sendmsg and recvmsg (scatter-gather, a UDP destination and the
//! sender's address), accept (into a descriptor and into registered file
//! slots), connect (TCP and Unix), shutdown, socket, and their errors, all
//! on loopback. Every wait is bounded: completions are reaped with a
//! deadline (`common::reap`), and the std side's sockets have timeouts.
// Needs the real kernel: Miri cannot make io_uring syscalls.
#![cfg(not(miri))]

mod common;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use common::{errno, leak, leaked_buf, pattern, pinned, reap_by_user_data};
use ringfence::op::{
    Accept, Connect, Recv, Recvmsg, Send, Sendmsg, Shutdown, SockAddr, Socket, SocketFlags, Target,
};
use ringfence::{Error, IoBufMut, URingContext};

/// How long a std-side read or accept may wait before the test fails.
const PROMPTLY: Duration = Duration::from_secs(5);

/// A connected TCP pair on loopback: (client, server), both with read and
/// write timeouts.
fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    for stream in [&client, &server] {
        stream.set_read_timeout(Some(PROMPTLY)).unwrap();
        stream.set_write_timeout(Some(PROMPTLY)).unwrap();
    }
    (client, server)
}

/// A Unix stream pair with read timeouts.
fn unix_pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    for stream in [&a, &b] {
        stream.set_read_timeout(Some(PROMPTLY)).unwrap();
    }
    (a, b)
}

/// A copy of `data` that lives for the rest of the process.
fn leaked_bytes(data: &[u8]) -> IoBufMut<'static> {
    IoBufMut::new(leak(data.to_vec()))
}

/// Adds every `(op, user_data)` and reaps their completions (bounded).
fn run(ring: &URingContext, count: usize) -> HashMap<u64, io::Result<u32>> {
    reap_by_user_data(ring, count)
}

/// The descriptor an accept or socket completed with, owned.
fn owned(result: &io::Result<u32>) -> OwnedFd {
    let fd = *result.as_ref().expect("a new descriptor") as RawFd;
    // SAFETY: the kernel just created `fd` for us, and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Whether `fd` has `FD_CLOEXEC`.
fn cloexec(fd: RawFd) -> bool {
    // SAFETY: F_GETFD takes no pointer and returns the flags or -1.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    assert!(flags >= 0, "fcntl: {}", io::Error::last_os_error());
    flags & libc::FD_CLOEXEC != 0
}

/// Registers a sparse table of `slots` empty files on `ring`, with a raw
/// `io_uring_register(IORING_REGISTER_FILES)`: the crate has no call for
/// it yet.
fn register_sparse_files(ring: &URingContext, slots: usize) {
    let fds = vec![-1 as RawFd; slots];
    // SAFETY: `fds` holds `slots` descriptors (-1: empty) and outlives the
    // call, which copies them; IORING_REGISTER_FILES is 2 in the uapi.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.as_raw_fd(),
            2,
            fds.as_ptr(),
            slots as libc::c_uint,
        )
    };
    assert_eq!(ret, 0, "register files: {}", io::Error::last_os_error());
}

#[test]
fn send_and_recv_carry_data_both_ways_over_tcp() {
    let ring = ring!(8);
    let (client, server) = tcp_pair();
    let (client, server) = (Arc::new(client), Arc::new(server));
    for (seed, from, to) in [(1, &client, &server), (2, &server, &client)] {
        let data = pattern(3000, seed);
        let (buf, view) = leaked_buf(3000, 0);
        ring.add(Send::new(leaked_bytes(&data), Arc::clone(from)), 1)
            .unwrap();
        // MSG_WAITALL: loopback TCP may deliver the bytes in pieces.
        let recv = Recv::new(buf, Arc::clone(to)).msg_flags(libc::MSG_WAITALL);
        ring.add(recv, 2).unwrap();
        let done = run(&ring, 2);
        assert_eq!(done[&1].as_ref().unwrap(), &3000, "send {seed}");
        assert_eq!(done[&2].as_ref().unwrap(), &3000, "recv {seed}");
        assert_eq!(view, &data[..], "recv {seed} got other bytes");
    }
}

#[test]
fn a_send_longer_than_u32_max_is_refused_at_add_with_nothing_queued() {
    let ring = ring!(8);
    let (a, _b) = unix_pair();
    let len = u32::MAX as usize + 1;
    // SAFETY: never read: the add refuses the length before any SQE is
    // written.
    let buf = unsafe { IoBufMut::from_raw_parts(std::ptr::NonNull::dangling().as_ptr(), len) };
    let err = ring.add(Send::new(buf, Arc::new(a)), 1).unwrap_err();
    assert!(matches!(err, Error::BufferTooLong(l) if l == len), "{err}");
    assert_eq!(ring.in_flight(), 0);
}

#[test]
fn sendmsg_gathers_and_recvmsg_scatters_across_iovecs_of_different_sizes() {
    let ring = ring!(8);
    let (a, b) = unix_pair();
    let data = pattern(15, 3);
    let gather = pinned(vec![
        leaked_bytes(&data[..3]),
        leaked_bytes(&data[3..8]),
        leaked_bytes(&data[8..]),
    ]);
    let (first, first_view) = leaked_buf(6, 0);
    let (second, second_view) = leaked_buf(9, 0);
    ring.add(Sendmsg::new(gather, Arc::new(a)), 1).unwrap();
    let recvmsg = Recvmsg::new(pinned(vec![first, second]), Arc::new(b));
    ring.add(recvmsg.msg_flags(libc::MSG_WAITALL), 2).unwrap();
    let done = run(&ring, 2);
    assert_eq!(done[&1].as_ref().unwrap(), &15);
    assert_eq!(done[&2].as_ref().unwrap(), &15);
    assert_eq!(first_view, &data[..6], "the first iovec");
    assert_eq!(second_view, &data[6..], "the second iovec");
}

#[test]
fn sendmsg_to_a_udp_address_arrives_and_recvmsg_reports_the_senders_address() {
    let ring = ring!(8);
    let sender = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let receiver = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let (to, from) = (receiver.local_addr().unwrap(), sender.local_addr().unwrap());
    let data = pattern(100, 4);
    let datagram = pinned(vec![leaked_bytes(&data[..40]), leaked_bytes(&data[40..])]);
    ring.add(Sendmsg::new(datagram, Arc::new(sender)).to(to), 1)
        .unwrap();
    let (buf, view) = leaked_buf(100, 0);
    let (source, source_view) = leaked_buf(128, 0);
    let recvmsg = Recvmsg::new(pinned(vec![buf]), Arc::new(receiver)).source_into(source);
    ring.add(recvmsg, 2).unwrap();
    let done = run(&ring, 2);
    assert_eq!(done[&1].as_ref().unwrap(), &100);
    assert_eq!(done[&2].as_ref().unwrap(), &100);
    assert_eq!(view, &data[..]);
    assert_eq!(SockAddr::decode_inet(source_view), Some(from));
}

#[test]
fn sendmsg_without_a_destination_on_an_unconnected_udp_socket_fails_with_edestaddrreq() {
    let ring = ring!(8);
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let sendmsg = Sendmsg::new(pinned(vec![leaked_bytes(b"x")]), Arc::new(socket));
    ring.add(sendmsg, 1).unwrap();
    assert_eq!(errno(&run(&ring, 1)[&1]), Some(libc::EDESTADDRREQ));
}

#[test]
fn accept_yields_a_descriptor_that_reads_what_the_peer_wrote() {
    let ring = ring!(8);
    let listener = Arc::new(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap());
    ring.add(
        Accept::new(Arc::clone(&listener)).flags(SocketFlags::CLOEXEC),
        1,
    )
    .unwrap();
    ring.submit().unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    client.write_all(b"hello over accept").unwrap();
    let done = run(&ring, 1);
    let fd = owned(&done[&1]);
    assert!(cloexec(fd.as_raw_fd()), "SOCK_CLOEXEC was not applied");
    let mut accepted = TcpStream::from(fd);
    accepted.set_read_timeout(Some(PROMPTLY)).unwrap();
    assert_eq!(accepted.peer_addr().unwrap(), client.local_addr().unwrap());
    let mut got = [0; 17];
    accepted.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello over accept");
}

#[test]
fn accept_into_a_fixed_slot_and_into_any_free_slot_gives_files_recv_can_use() {
    let ring = ring!(8);
    register_sparse_files(&ring, 4);
    let listener = Arc::new(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap());
    let addr = listener.local_addr().unwrap();
    ring.add(Accept::new(Arc::clone(&listener)).fixed_slot(2), 1)
        .unwrap();
    ring.submit().unwrap();
    let mut first = TcpStream::connect(addr).unwrap();
    assert_eq!(run(&ring, 1)[&1].as_ref().unwrap(), &0, "a fixed slot");
    ring.add(Accept::new(Arc::clone(&listener)).any_fixed_slot(), 2)
        .unwrap();
    ring.submit().unwrap();
    let mut second = TcpStream::connect(addr).unwrap();
    let slot = *run(&ring, 1)[&2].as_ref().unwrap();
    assert!(slot < 4 && slot != 2, "allocated slot {slot}");

    first.write_all(b"first").unwrap();
    second.write_all(b"second").unwrap();
    let (buf2, view2) = leaked_buf(5, 0);
    let (buf_any, view_any) = leaked_buf(6, 0);
    let waitall = libc::MSG_WAITALL;
    ring.add(Recv::new(buf2, Target::fixed(2)).msg_flags(waitall), 3)
        .unwrap();
    ring.add(
        Recv::new(buf_any, Target::fixed(slot)).msg_flags(waitall),
        4,
    )
    .unwrap();
    let done = run(&ring, 2);
    assert_eq!((done[&3].as_ref().unwrap(), view2), (&5, &b"first"[..]));
    assert_eq!((done[&4].as_ref().unwrap(), view_any), (&6, &b"second"[..]));
}

#[test]
fn accept_into_a_slot_of_a_ring_without_registered_files_fails_with_enxio() {
    let ring = ring!(8);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    ring.add(Accept::new(Arc::new(listener)).fixed_slot(0), 1)
        .unwrap();
    ring.submit().unwrap();
    // The kernel checks the table only once a connection is there.
    let _client = TcpStream::connect(addr).unwrap();
    assert_eq!(errno(&run(&ring, 1)[&1]), Some(libc::ENXIO));
}

/// A TCP socket neither bound nor connected, made with `socket(2)`.
fn unconnected_tcp_socket() -> OwnedFd {
    // SAFETY: socket takes no pointers and returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just created and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[test]
fn connect_reaches_a_tcp_listener_and_the_connection_carries_bytes_both_ways() {
    let ring = ring!(8);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let socket = Arc::new(unconnected_tcp_socket());
    ring.add(
        Connect::new(Arc::clone(&socket), listener.local_addr().unwrap()),
        1,
    )
    .unwrap();
    assert_eq!(run(&ring, 1)[&1].as_ref().unwrap(), &0);
    // Connected: the connection is in the listener's queue already.
    listener.set_nonblocking(true).unwrap();
    let (mut server, peer) = listener.accept().unwrap();
    let mut client = TcpStream::from(Arc::into_inner(socket).unwrap());
    assert_eq!(peer, client.local_addr().unwrap());
    server.set_nonblocking(false).unwrap();
    server.set_read_timeout(Some(PROMPTLY)).unwrap();
    client.set_read_timeout(Some(PROMPTLY)).unwrap();
    client.write_all(b"ping").unwrap();
    let mut got = [0; 4];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    server.write_all(b"pong").unwrap();
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
}

#[test]
fn connect_reaches_unix_listeners_by_path_and_by_abstract_name() {
    use std::os::linux::net::SocketAddrExt;
    let ring = ring!(8);
    let dir = tempfile::tempdir().unwrap();
    let by_path = UnixListener::bind(dir.path().join("listener")).unwrap();
    let name = format!("ringfence-net-ops-{}", std::process::id());
    let abstract_addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
    let by_name = UnixListener::bind_addr(&abstract_addr).unwrap();
    for (i, listener) in [by_path, by_name].into_iter().enumerate() {
        let addr = listener.local_addr().unwrap();
        // SAFETY: socket takes no pointers and returns a new descriptor or -1.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        // SAFETY: `fd` was just created and nothing else owns it.
        let socket = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        ring.add(Connect::new(Arc::clone(&socket), &addr), 1)
            .unwrap();
        assert_eq!(run(&ring, 1)[&1].as_ref().unwrap(), &0, "listener {i}");
        listener.set_nonblocking(true).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.set_nonblocking(false).unwrap();
        server.set_read_timeout(Some(PROMPTLY)).unwrap();
        let mut client = UnixStream::from(Arc::into_inner(socket).unwrap());
        client.write_all(b"unix").unwrap();
        let mut got = [0; 4];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"unix", "listener {i}");
    }
}

#[test]
fn connect_to_a_closed_port_fails_with_econnrefused() {
    let ring = ring!(8);
    let closed: SocketAddr = {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.local_addr().unwrap()
    };
    ring.add(Connect::new(Arc::new(unconnected_tcp_socket()), closed), 1)
        .unwrap();
    assert_eq!(errno(&run(&ring, 1)[&1]), Some(libc::ECONNREFUSED));
}

#[test]
fn shutdown_of_writing_makes_the_peer_read_the_end_of_the_stream() {
    let ring = ring!(8);
    let (a, mut b) = unix_pair();
    let a = Arc::new(a);
    ring.add(Shutdown::new(Arc::clone(&a), std::net::Shutdown::Write), 1)
        .unwrap();
    assert_eq!(run(&ring, 1)[&1].as_ref().unwrap(), &0);
    // std's read times out (an error) if the stream has not ended.
    assert_eq!(b.read(&mut [0; 8]).unwrap(), 0, "std read after shutdown");
    let b = Arc::new(b);
    let (buf, _) = leaked_buf(8, 0);
    ring.add(Recv::new(buf, Arc::clone(&b)), 2).unwrap();
    assert_eq!(
        run(&ring, 1)[&2].as_ref().unwrap(),
        &0,
        "recv after shutdown"
    );
    // Only writing was shut, and `b` is open: `a` still reads, and has
    // nothing to read.
    let (buf, _) = leaked_buf(8, 0);
    ring.add(
        Recv::new(buf, Arc::clone(&a)).msg_flags(libc::MSG_DONTWAIT),
        3,
    )
    .unwrap();
    assert_eq!(errno(&run(&ring, 1)[&3]), Some(libc::EAGAIN));
}

#[test]
fn shutdown_of_an_unconnected_socket_fails_with_enotconn() {
    let ring = ring!(8);
    let socket = Arc::new(unconnected_tcp_socket());
    ring.add(Shutdown::new(socket, std::net::Shutdown::Both), 1)
        .unwrap();
    assert_eq!(errno(&run(&ring, 1)[&1]), Some(libc::ENOTCONN));
}

#[test]
fn socket_creates_a_tcp_socket_std_can_listen_and_accept_on() {
    let ring = ring!(8);
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    let socket = Socket::new(libc::AF_INET, libc::SOCK_STREAM, 0).flags(flags);
    ring.add(socket, 1).unwrap();
    let fd = owned(&run(&ring, 1)[&1]);
    assert!(cloexec(fd.as_raw_fd()), "SOCK_CLOEXEC was not applied");
    // SAFETY: F_GETFL takes no pointer and returns the flags or -1.
    let status = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    assert!(
        status & libc::O_NONBLOCK != 0,
        "SOCK_NONBLOCK was not applied"
    );
    // std has no bind for a socket it did not make: bind and listen with
    // libc, then use it as a std listener.
    let addr = SockAddr::from(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    // SAFETY: `addr`'s bytes are a sockaddr_in of `addr.len()` bytes,
    // alive for the call; listen takes no pointers.
    let bound = unsafe {
        libc::bind(fd.as_raw_fd(), addr.as_bytes().as_ptr().cast(), addr.len()) == 0
            && libc::listen(fd.as_raw_fd(), 1) == 0
    };
    assert!(bound, "bind/listen: {}", io::Error::last_os_error());
    let listener = TcpListener::from(fd);
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    client.write_all(b"made by io_uring").unwrap();
    let (mut server, _) = listener.accept().unwrap();
    server.set_nonblocking(false).unwrap();
    server.set_read_timeout(Some(PROMPTLY)).unwrap();
    let mut got = [0; 16];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"made by io_uring");
}

#[test]
fn socket_creates_a_unix_datagram_socket_that_sends() {
    let ring = ring!(8);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("receiver");
    let receiver = UnixDatagram::bind(&path).unwrap();
    receiver.set_read_timeout(Some(PROMPTLY)).unwrap();
    ring.add(Socket::new(libc::AF_UNIX, libc::SOCK_DGRAM, 0), 1)
        .unwrap();
    let sender = UnixDatagram::from(owned(&run(&ring, 1)[&1]));
    sender.send_to(b"datagram", &path).unwrap();
    let mut got = [0; 16];
    assert_eq!(receiver.recv(&mut got).unwrap(), 8);
    assert_eq!(&got[..8], b"datagram");
}

#[test]
fn socket_into_a_fixed_slot_then_connect_through_the_slot() {
    let ring = ring!(8);
    register_sparse_files(&ring, 2);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let socket = Socket::new(libc::AF_INET, libc::SOCK_STREAM, 0).fixed_slot(1);
    ring.add(socket, 1).unwrap();
    assert_eq!(run(&ring, 1)[&1].as_ref().unwrap(), &0);
    let connect = Connect::new(Target::fixed(1), listener.local_addr().unwrap());
    ring.add(connect, 2).unwrap();
    assert_eq!(run(&ring, 1)[&2].as_ref().unwrap(), &0);
    listener.set_nonblocking(true).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    server.set_nonblocking(false).unwrap();
    server.set_read_timeout(Some(PROMPTLY)).unwrap();
    ring.add(Send::new(leaked_bytes(b"slot"), Target::fixed(1)), 3)
        .unwrap();
    assert_eq!(run(&ring, 1)[&3].as_ref().unwrap(), &4);
    let mut got = [0; 4];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"slot");
}

#[test]
fn socket_with_a_protocol_the_domain_lacks_fails_with_eprotonosupport() {
    let ring = ring!(8);
    ring.add(Socket::new(libc::AF_UNIX, libc::SOCK_STREAM, 99), 1)
        .unwrap();
    assert_eq!(errno(&run(&ring, 1)[&1]), Some(libc::EPROTONOSUPPORT));
}

/// A descriptor number that is not open: the highest the process may
/// have, checked closed.
fn closed_fd() -> RawFd {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the live local.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(got, 0, "getrlimit: {}", io::Error::last_os_error());
    let fd = (limit.rlim_cur.min(65536) - 1) as RawFd;
    // SAFETY: F_GETFD takes no pointer; it fails with EBADF on a closed fd.
    let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
    assert!(!open, "descriptor {fd} is open");
    fd
}

#[test]
fn recv_on_a_closed_descriptor_fails_with_ebadf() {
    let ring = ring!(8);
    let (buf, _) = leaked_buf(8, 0);
    // SAFETY: the descriptor is closed: the kernel finds no file there
    // (I/O safety: nothing opens one at this number, the process's highest).
    let target = unsafe { Target::from_raw_fd(closed_fd()) };
    ring.add(Recv::new(buf, target), 1).unwrap();
    assert_eq!(errno(&run(&ring, 1)[&1]), Some(libc::EBADF));
}

#[test]
fn socket_operations_on_a_file_that_is_not_a_socket_fail_with_enotsock() {
    let ring = ring!(8);
    let file = Arc::new(tempfile::tempfile().unwrap());
    let to: SocketAddr = (Ipv4Addr::LOCALHOST, 9).into();
    ring.add(Send::new(leaked_bytes(b"x"), Arc::clone(&file)), 1)
        .unwrap();
    ring.add(Recv::new(leaked_buf(1, 0).0, Arc::clone(&file)), 2)
        .unwrap();
    let one = || pinned(vec![leaked_buf(1, 0).0]);
    ring.add(Sendmsg::new(one(), Arc::clone(&file)).to(to), 3)
        .unwrap();
    ring.add(Recvmsg::new(one(), Arc::clone(&file)), 4).unwrap();
    ring.add(Accept::new(Arc::clone(&file)), 5).unwrap();
    ring.add(Connect::new(Arc::clone(&file), to), 6).unwrap();
    ring.add(
        Shutdown::new(Arc::clone(&file), std::net::Shutdown::Both),
        7,
    )
    .unwrap();
    let done = run(&ring, 7);
    for ud in 1..=7 {
        assert_eq!(errno(&done[&ud]), Some(libc::ENOTSOCK), "user_data {ud}");
    }
}

#[test]
fn fixed_slots_past_the_table_with_cloexec_or_none_free_are_refused() {
    let ring = ring!(8);
    register_sparse_files(&ring, 1);
    let tcp = || Socket::new(libc::AF_INET, libc::SOCK_STREAM, 0);
    ring.add(tcp().fixed_slot(1), 1).unwrap();
    // u32::MAX has no file_index of its own: sent past any table.
    ring.add(tcp().fixed_slot(u32::MAX), 2).unwrap();
    ring.add(tcp().flags(SocketFlags::CLOEXEC).fixed_slot(0), 3)
        .unwrap();
    let done = run(&ring, 3);
    for ud in 1..=3 {
        assert_eq!(errno(&done[&ud]), Some(libc::EINVAL), "user_data {ud}");
    }
    ring.add(tcp().any_fixed_slot(), 4).unwrap();
    assert_eq!(run(&ring, 1)[&4].as_ref().unwrap(), &0, "the one free slot");
    ring.add(tcp().any_fixed_slot(), 5).unwrap();
    assert_eq!(errno(&run(&ring, 1)[&5]), Some(libc::ENFILE), "none free");
}

#[test]
fn recv_and_send_pin_their_buffers_and_share_no_label_while_accepts_share_one() {
    let ring = ring!(8);
    let (a, b) = unix_pair();
    let (a, b) = (Arc::new(a), Arc::new(b));
    let listener = Arc::new(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap());
    // Nothing to read yet: the recv stays in flight, its buffer pinned.
    ring.add(Recv::new(leaked_buf(4, 0).0, Arc::clone(&b)), 7)
        .unwrap();
    let err = ring.add(Accept::new(Arc::clone(&listener)), 7).unwrap_err();
    assert!(matches!(err, Error::DuplicateUserData(7)), "{err}");
    // A send pins its buffer: it takes no label in flight either.
    ring.add(Accept::new(Arc::clone(&listener)), 6).unwrap();
    let err = ring
        .add(Send::new(leaked_bytes(b"late"), Arc::clone(&a)), 6)
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateUserData(6)), "{err}");
    // Accepts pin nothing: two may share a label.
    ring.add(Accept::new(Arc::clone(&listener)), 8).unwrap();
    ring.add(Accept::new(Arc::clone(&listener)), 8).unwrap();
    let addr = listener.local_addr().unwrap();
    let _clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    ring.add(Send::new(leaked_bytes(b"done"), a), 9).unwrap();
    let done = common::reap(&ring, 5);
    let accepted: Vec<OwnedFd> = done
        .iter()
        .filter(|(ud, _)| *ud == 6 || *ud == 8)
        .map(|(_, result)| owned(result))
        .collect();
    assert_eq!(accepted.len(), 3);
    assert!(done
        .iter()
        .any(|(ud, result)| *ud == 7 && result.as_ref().ok() == Some(&4)));
}

//! The socket operations' SQE encodings, field by field, as io_uring/net.c
//! reads them; their work is tested on the real kernel (tests/net_ops.rs).

use std::net::{SocketAddr, SocketAddrV6};

use super::*;
use crate::abi::IosqeFlags;
use crate::op::{Operation, Target};
use crate::{Error, IoBufMut};

fn raw(fd: i32) -> Target {
    Target::raw_for_crosvm_api(fd)
}

/// Buffers the tests hand out for the life of the process, kept reachable
/// here (rather than leaked) so that Miri's leak check stays quiet.
static KEPT: std::sync::Mutex<Vec<Box<[u8]>>> = std::sync::Mutex::new(Vec::new());

/// A zeroed buffer of `len` bytes that lives as long as the process.
fn leaked(len: usize) -> IoBufMut<'static> {
    let mut kept = KEPT.lock().unwrap();
    kept.push(vec![0u8; len].into_boxed_slice());
    let buf = kept.last_mut().expect("just pushed");
    // SAFETY: the box lives in `KEPT` for the rest of the process, and is
    // never touched again (a growing `Vec` moves the box, not its bytes).
    unsafe { IoBufMut::from_raw_parts(buf.as_mut_ptr(), buf.len()) }
}

#[test]
fn send_and_recv_point_at_the_buffer_with_its_length_and_msg_flags() {
    let buf = leaked(100);
    let ptr = buf.as_ptr() as u64;
    let sqe = Send::new(buf, raw(7))
        .msg_flags(libc::MSG_MORE)
        .prepare()
        .unwrap()
        .sqe;
    assert_eq!((sqe.fd(), sqe.addr(), sqe.len()), (7, ptr, 100));
    assert_eq!(sqe.op_flags(), libc::MSG_MORE as u32);
    let buf = leaked(5);
    let ptr = buf.as_ptr() as u64;
    let prepared = Recv::new(buf, Target::fixed(3))
        .msg_flags(libc::MSG_WAITALL)
        .prepare()
        .unwrap();
    let sqe = &prepared.sqe;
    assert_eq!((sqe.fd(), sqe.addr(), sqe.len()), (3, ptr, 5));
    assert_eq!(sqe.flags(), IosqeFlags::FIXED_FILE);
    assert_eq!(sqe.op_flags(), libc::MSG_WAITALL as u32);
    assert!(prepared.pins_caller_memory);
}

#[test]
fn a_buffer_longer_than_u32_max_is_refused_before_the_kernel_sees_it() {
    let len = u32::MAX as usize + 1;
    // SAFETY: never dereferenced: prepare refuses the length first.
    let buf = unsafe { IoBufMut::from_raw_parts(std::ptr::NonNull::dangling().as_ptr(), len) };
    let err = Send::new(buf, raw(0)).prepare().err().unwrap();
    assert!(
        matches!(err, Error::BufferTooLong(l) if l == len),
        "{err:?}"
    );
    assert!(err.to_string().contains("split it"), "{err}");
}

#[test]
fn sendmsg_points_at_a_msghdr_over_the_iovecs_and_its_own_destination() {
    let iovecs: std::pin::Pin<Box<[IoBufMut<'static>]>> = Box::pin([leaked(3), leaked(4)]);
    let first = iovecs[0].as_ptr();
    let to: SocketAddr = "10.1.2.3:4567".parse().unwrap();
    let prepared = Sendmsg::new(iovecs, raw(9))
        .to(to)
        .msg_flags(libc::MSG_DONTWAIT)
        .prepare()
        .unwrap();
    let sqe = &prepared.sqe;
    assert_eq!((sqe.fd(), sqe.len()), (9, 1));
    assert_eq!(sqe.op_flags(), libc::MSG_DONTWAIT as u32);
    // SAFETY: the SQE points at the msghdr in `prepared.keep_alive.owned`,
    // alive and unmoved while `prepared` is.
    let msghdr = unsafe { &*(sqe.addr() as usize as *const libc::msghdr) };
    assert_eq!((msghdr.msg_iovlen, msghdr.msg_controllen), (2, 0));
    assert!(msghdr.msg_control.is_null());
    // SAFETY: as above, for the iovec array in `keep_alive.iovecs`.
    let iov = unsafe { &*msghdr.msg_iov };
    assert_eq!((iov.iov_base.cast::<u8>(), iov.iov_len), (first, 3));
    assert_eq!(msghdr.msg_namelen, 16);
    // SAFETY: as above: `msg_name` points at 16 bytes of the same box.
    let name = unsafe { std::slice::from_raw_parts(msghdr.msg_name.cast::<u8>(), 16) };
    assert_eq!(SockAddr::decode_inet(name), Some(to));
    assert!(prepared.keep_alive.owned.is_some() && prepared.keep_alive.iovecs.is_some());
}

#[test]
fn recvmsg_names_the_callers_source_buffer_up_to_sockaddr_storage() {
    let iovecs: std::pin::Pin<Box<[IoBufMut<'static>]>> = Box::pin([leaked(8)]);
    let source = leaked(200);
    let source_ptr = source.as_ptr();
    let prepared = Recvmsg::new(iovecs, raw(4))
        .source_into(source)
        .prepare()
        .unwrap();
    // SAFETY: as in the sendmsg test.
    let msghdr = unsafe { &*(prepared.sqe.addr() as usize as *const libc::msghdr) };
    assert_eq!(msghdr.msg_name.cast::<u8>(), source_ptr);
    assert_eq!(msghdr.msg_namelen, 128);
    let iovecs: std::pin::Pin<Box<[IoBufMut<'static>]>> = Box::pin([leaked(8)]);
    let prepared = Recvmsg::new(iovecs, raw(4)).prepare().unwrap();
    // SAFETY: as in the sendmsg test.
    let msghdr = unsafe { &*(prepared.sqe.addr() as usize as *const libc::msghdr) };
    assert!(msghdr.msg_name.is_null());
    assert_eq!(msghdr.msg_namelen, 0);
}

#[test]
fn more_iovecs_than_uio_maxiov_are_refused() {
    let iovecs: Vec<IoBufMut<'static>> = (0..=crate::MAX_IOVECS).map(|_| leaked(1)).collect();
    let err = Recvmsg::new(Box::into_pin(iovecs.into_boxed_slice()), raw(0))
        .prepare()
        .err()
        .unwrap();
    assert!(matches!(err, Error::TooManyIovecs(n) if n == crate::MAX_IOVECS + 1));
}

#[test]
fn accept_encodes_flags_and_the_slot_plus_one_or_alloc() {
    let sqe = Accept::new(raw(5))
        .flags(SocketFlags::CLOEXEC | SocketFlags::NONBLOCK)
        .prepare()
        .unwrap()
        .sqe;
    assert_eq!((sqe.fd(), sqe.addr(), sqe.offset()), (5, 0, 0));
    let flags = (libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) as u32;
    assert_eq!((sqe.op_flags(), sqe.file_index()), (flags, 0));
    let slot = |accept: Accept| accept.prepare().unwrap().sqe.file_index();
    assert_eq!(slot(Accept::new(raw(5)).fixed_slot(0)), 1);
    assert_eq!(slot(Accept::new(raw(5)).fixed_slot(41)), 42);
    assert_eq!(slot(Accept::new(raw(5)).any_fixed_slot()), u32::MAX);
    // No slot of their own: past any table, never IORING_FILE_INDEX_ALLOC.
    assert_eq!(
        slot(Accept::new(raw(5)).fixed_slot(u32::MAX - 1)),
        u32::MAX - 1
    );
    assert_eq!(slot(Accept::new(raw(5)).fixed_slot(u32::MAX)), u32::MAX - 1);
}

#[test]
fn connect_puts_the_address_in_addr_and_its_length_in_addr2() {
    let to: SocketAddr = SocketAddrV6::new("fe80::1".parse().unwrap(), 80, 7, 3).into();
    let prepared = Connect::new(raw(6), to).prepare().unwrap();
    let sqe = &prepared.sqe;
    // `addr2` shares its field with `off`.
    assert_eq!((sqe.fd(), sqe.offset(), sqe.len()), (6, 28, 0));
    // SAFETY: the SQE points at the address in `keep_alive.owned`, 28
    // bytes, alive and unmoved while `prepared` is.
    let bytes = unsafe { std::slice::from_raw_parts(sqe.addr() as usize as *const u8, 28) };
    assert_eq!(SockAddr::decode_inet(bytes), Some(to));
}

#[test]
fn shutdown_puts_how_in_len() {
    for (how, raw_how) in [
        (std::net::Shutdown::Read, libc::SHUT_RD),
        (std::net::Shutdown::Write, libc::SHUT_WR),
        (std::net::Shutdown::Both, libc::SHUT_RDWR),
    ] {
        let sqe = Shutdown::new(raw(2), how).prepare().unwrap().sqe;
        assert_eq!((sqe.fd(), sqe.len()), (2, raw_how as u32));
    }
}

#[test]
fn socket_puts_domain_in_fd_type_and_flags_in_off_protocol_in_len() {
    let prepared = Socket::new(libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_UDP)
        .flags(SocketFlags::NONBLOCK)
        .any_fixed_slot()
        .prepare()
        .unwrap();
    let sqe = &prepared.sqe;
    assert_eq!(sqe.fd(), libc::AF_INET6);
    let socket_type = (libc::SOCK_DGRAM | libc::SOCK_NONBLOCK) as u64;
    assert_eq!(
        (sqe.offset(), sqe.len()),
        (socket_type, libc::IPPROTO_UDP as u32)
    );
    assert_eq!(
        (sqe.file_index(), sqe.flags()),
        (u32::MAX, IosqeFlags::empty())
    );
    assert!(prepared.keep_alive.is_empty());
}

#[test]
fn socket_addresses_have_the_kernels_layout() {
    let v4 = SockAddr::from("192.168.0.1:258".parse::<SocketAddr>().unwrap());
    let family = (libc::AF_INET as u16).to_ne_bytes();
    assert_eq!(
        v4.as_bytes(),
        [family[0], family[1], 1, 2, 192, 168, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    let path = std::os::unix::net::SocketAddr::from_pathname("/tmp/s").unwrap();
    let unix = SockAddr::from(&path);
    // The family, the path, its NUL.
    assert_eq!(unix.len(), 2 + 6 + 1);
    assert_eq!(&unix.as_bytes()[2..], b"/tmp/s\0");
    use std::os::linux::net::SocketAddrExt;
    let abstract_name = std::os::unix::net::SocketAddr::from_abstract_name(b"ring").unwrap();
    assert_eq!(&SockAddr::from(&abstract_name).as_bytes()[2..], b"\0ring");
    assert_eq!(SockAddr::decode_inet(&family[..1]), None);
    assert_eq!(SockAddr::decode_inet(&unix.as_bytes()[..2]), None);
}

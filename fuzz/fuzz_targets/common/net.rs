//! The socket operations, built the same way by every target: which ones
//! there are, and how each is made on a given file.

use std::net::{Ipv4Addr, SocketAddr};

use ringfence::op::{Accept, Connect, Recv, Recvmsg, Send, Sendmsg, Shutdown, Socket, Target};
use ringfence::URingOperation;

use super::model::{Adder, Spec};
use super::pool::{buf, iovecs};

/// Whether `opcode` is a socket operation (the ones [`push`] builds).
pub fn is_net(opcode: URingOperation) -> bool {
    matches!(
        opcode,
        URingOperation::Send
            | URingOperation::Recv
            | URingOperation::Sendmsg
            | URingOperation::Recvmsg
            | URingOperation::Accept
            | URingOperation::Connect
            | URingOperation::Shutdown
            | URingOperation::Socket
    )
}

/// The protocol a socket operation asks of `AF_UNIX`: none exists, so the
/// real kernel fails it with `EPROTONOSUPPORT` and no descriptor is made
/// (one that is could not be closed: a shared label hides whose result is
/// whose).
pub const NO_SUCH_PROTOCOL: i32 = 99;

/// Pushes the socket operation `opcode` on `target` (the label's slot for
/// those that move bytes; `msg_flags` for those), checked as `spec`.
/// A sendmsg names a destination only if `to` (on a connected socket the
/// kernel would refuse one). `Socket` has no target: it asks for
/// [`NO_SUCH_PROTOCOL`].
pub fn push<K>(
    opcode: URingOperation,
    target: Target,
    msg_flags: i32,
    to: bool,
    spec: Spec<K>,
    adder: &mut Adder<'_, K>,
) {
    let label = adder.label();
    let addr: SocketAddr = (Ipv4Addr::LOCALHOST, 9).into();
    match opcode {
        URingOperation::Send => {
            let op = Send::new(buf(label), target).msg_flags(msg_flags);
            adder.push(op, spec.slot());
        }
        URingOperation::Recv => {
            let op = Recv::new(buf(label), target).msg_flags(msg_flags);
            adder.push(op, spec.slot());
        }
        URingOperation::Sendmsg => {
            let op = Sendmsg::new(iovecs(label), target).msg_flags(msg_flags);
            let op = if to { op.to(addr) } else { op };
            adder.push(op, spec.slot());
        }
        URingOperation::Recvmsg => {
            let op = Recvmsg::new(iovecs(label), target).msg_flags(msg_flags);
            adder.push(op, spec.slot());
        }
        URingOperation::Accept => adder.push(Accept::new(target), spec),
        URingOperation::Connect => adder.push(Connect::new(target, addr), spec),
        URingOperation::Shutdown => {
            adder.push(Shutdown::new(target, std::net::Shutdown::Both), spec)
        }
        URingOperation::Socket => {
            let op = Socket::new(libc::AF_UNIX, libc::SOCK_STREAM, NO_SUCH_PROTOCOL);
            adder.push(op, spec);
        }
        other => panic!("{other:?} is not a socket operation"),
    }
}

//! [`Accept`], [`Connect`], [`Shutdown`] and [`Socket`]: making, joining
//! and ending connections.

use super::{FileSlot, SockAddr, SocketFlags};
use crate::abi::{Sqe, URingOperation};
use crate::op::{KeepAlive, KernelMemory, Operation, Prepared, Target};
use crate::Result;

/// `IORING_OP_ACCEPT` (Linux 5.5, `io_uring_enter(2)`): `accept4(2)` on a
/// listening socket.
///
/// Completes with the new connection's descriptor, which the caller owns
/// (wrap it with `OwnedFd::from_raw_fd` and close it), or the errno
/// `accept4(2)` gives: `EINVAL` for a socket that is not listening,
/// `ENOTSOCK`, `EOPNOTSUPP` for a socket type without connections (UDP),
/// `EMFILE` at the descriptor limit, `EAGAIN` for a non-blocking listener
/// with no connection waiting. Waits for a connection otherwise.
///
/// The peer's address is not asked for (`addr` is null): read it with
/// `getpeername(2)` on the new descriptor. If the context drains the
/// completion itself (close or drop with the accept in flight), the
/// descriptor it carried stays open: cancel accepts before closing.
///
/// With [`fixed_slot`](Self::fixed_slot) or
/// [`any_fixed_slot`](Self::any_fixed_slot) the connection goes into the
/// ring's registered file table instead of a descriptor.
#[derive(Debug)]
pub struct Accept {
    target: Target,
    flags: SocketFlags,
    slot: FileSlot,
}

impl Accept {
    /// Accepts a connection on `target`, a listening socket; the new
    /// descriptor has no flags.
    pub fn new(target: impl Into<Target>) -> Accept {
        Accept {
            target: target.into(),
            flags: SocketFlags::empty(),
            slot: FileSlot::Descriptor,
        }
    }

    /// The same, the new descriptor carrying `flags`.
    pub fn flags(self, flags: SocketFlags) -> Accept {
        Accept { flags, ..self }
    }

    /// The same, the connection installed in slot `index` of the ring's
    /// registered file table (replacing what the slot held), for
    /// [`Target::fixed`] to address; it completes with 0 (Linux 5.15,
    /// `io_uring_prep_accept_direct(3)`). `ENXIO` if the ring has no
    /// registered table, `EINVAL` for an index past it, or with
    /// [`SocketFlags::CLOEXEC`].
    pub fn fixed_slot(self, index: u32) -> Accept {
        Accept {
            slot: FileSlot::Fixed(index),
            ..self
        }
    }

    /// The same, in a free slot of the registered file table that the
    /// kernel picks (`IORING_FILE_INDEX_ALLOC`); it completes with that
    /// slot's index, or `ENFILE` when none is free (Linux 5.19,
    /// `io_uring_prep_accept_direct(3)`).
    pub fn any_fixed_slot(self) -> Accept {
        Accept {
            slot: FileSlot::Any,
            ..self
        }
    }
}

impl Operation for Accept {
    const OPCODE: URingOperation = URingOperation::Accept;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        let mut sqe = Sqe::new(Self::OPCODE);
        self.target.fill(&mut sqe);
        // `addr` and `addr2` (the peer address and its length) stay null.
        sqe.set_op_flags(self.flags.bits());
        sqe.set_file_index(self.slot.file_index());
        Ok(Prepared::new::<Self>(sqe, KeepAlive::target(self.target)))
    }
}

/// `IORING_OP_CONNECT` (Linux 5.5, `io_uring_enter(2)`): `connect(2)` of
/// a socket to `addr`.
///
/// Completes with 0 once connected, or the errno `connect(2)` gives:
/// `ECONNREFUSED` when nothing listens there, `ETIMEDOUT`,
/// `ENETUNREACH`, `EAFNOSUPPORT` for an address of another family than
/// the socket's, `EISCONN` if already connected, `ENOENT` for a Unix path
/// that does not exist, `ENOTSOCK`. The address is the operation's own
/// memory, kept until the completion.
#[derive(Debug)]
pub struct Connect {
    target: Target,
    addr: SockAddr,
}

impl Connect {
    /// Connects `target` to `addr` (a [`std::net::SocketAddr`], or a
    /// `&std::os::unix::net::SocketAddr` for a Unix socket).
    pub fn new(target: impl Into<Target>, addr: impl Into<SockAddr>) -> Connect {
        Connect {
            target: target.into(),
            addr: addr.into(),
        }
    }
}

impl Operation for Connect {
    const OPCODE: URingOperation = URingOperation::Connect;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        let len = self.addr.len();
        let (addr, at) = KernelMemory::new(self.addr);
        let mut sqe = Sqe::new(Self::OPCODE);
        self.target.fill(&mut sqe);
        // The kernel reads the address from `addr` and its length from
        // `addr2` (io_uring/net.c, `io_connect_prep`). The storage is the
        // first bytes the kernel reads; the cast exposes the provenance.
        sqe.set_addr(SockAddr::storage_ptr(at) as usize as u64);
        sqe.set_addr2(u64::from(len));
        let keep_alive = KeepAlive {
            owned: Some(addr),
            ..KeepAlive::target(self.target)
        };
        Ok(Prepared::new::<Self>(sqe, keep_alive))
    }
}

/// `IORING_OP_SHUTDOWN` (Linux 5.11, `io_uring_enter(2)`): `shutdown(2)`
/// of one or both directions of a connection.
///
/// Completes with 0, or the errno `shutdown(2)` gives: `ENOTCONN` for a
/// socket that is not connected, `ENOTSOCK`. After a shutdown of writing,
/// the peer's reads see the end of the stream (0 bytes).
#[derive(Debug)]
pub struct Shutdown {
    target: Target,
    how: std::net::Shutdown,
}

impl Shutdown {
    /// Shuts down `how` (`Read`: `SHUT_RD`, `Write`: `SHUT_WR`, `Both`:
    /// `SHUT_RDWR`) of `target`.
    pub fn new(target: impl Into<Target>, how: std::net::Shutdown) -> Shutdown {
        Shutdown {
            target: target.into(),
            how,
        }
    }
}

impl Operation for Shutdown {
    const OPCODE: URingOperation = URingOperation::Shutdown;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        let how = match self.how {
            std::net::Shutdown::Read => libc::SHUT_RD,
            std::net::Shutdown::Write => libc::SHUT_WR,
            std::net::Shutdown::Both => libc::SHUT_RDWR,
        };
        let mut sqe = Sqe::new(Self::OPCODE);
        self.target.fill(&mut sqe);
        sqe.set_len(how as u32);
        Ok(Prepared::new::<Self>(sqe, KeepAlive::target(self.target)))
    }
}

/// `IORING_OP_SOCKET` (Linux 5.19, `io_uring_enter(2)`): `socket(2)`.
///
/// Completes with the new socket's descriptor, which the caller owns (wrap
/// it with `OwnedFd::from_raw_fd`), or the errno `socket(2)` gives:
/// `EAFNOSUPPORT` for an unknown domain, `EPROTONOSUPPORT` for a protocol
/// the domain lacks, `EINVAL` for an unknown type, `EMFILE` at the
/// descriptor limit, `EACCES`. As with [`Accept`], a descriptor in a
/// completion the context drains itself stays open.
#[derive(Debug)]
pub struct Socket {
    domain: libc::c_int,
    socket_type: libc::c_int,
    protocol: libc::c_int,
    flags: SocketFlags,
    slot: FileSlot,
}

impl Socket {
    /// A socket of `domain` (`AF_INET`, `AF_INET6`, `AF_UNIX`, ...),
    /// `socket_type` (`SOCK_STREAM`, `SOCK_DGRAM`, ...) and `protocol` (0
    /// for the domain's default), with no flags.
    pub fn new(domain: libc::c_int, socket_type: libc::c_int, protocol: libc::c_int) -> Socket {
        Socket {
            domain,
            socket_type,
            protocol,
            flags: SocketFlags::empty(),
            slot: FileSlot::Descriptor,
        }
    }

    /// The same, the new descriptor carrying `flags`.
    pub fn flags(self, flags: SocketFlags) -> Socket {
        Socket { flags, ..self }
    }

    /// The same, the socket installed in slot `index` of the ring's
    /// registered file table; it completes with 0 (Linux 5.19,
    /// `io_uring_prep_socket_direct(3)`). Errors as for
    /// [`Accept::fixed_slot`].
    pub fn fixed_slot(self, index: u32) -> Socket {
        Socket {
            slot: FileSlot::Fixed(index),
            ..self
        }
    }

    /// The same, in a free slot the kernel picks; it completes with the
    /// slot's index, or `ENFILE` when none is free (Linux 5.19,
    /// `io_uring_prep_socket_direct_alloc(3)`).
    pub fn any_fixed_slot(self) -> Socket {
        Socket {
            slot: FileSlot::Any,
            ..self
        }
    }
}

impl Operation for Socket {
    const OPCODE: URingOperation = URingOperation::Socket;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        // io_uring/net.c, `io_socket_prep`: the domain in `fd`, the type
        // and its flags in `off`, the protocol in `len`. No file: `fd` is
        // not a descriptor, and no `FIXED_FILE`.
        let mut sqe = Sqe::new(Self::OPCODE);
        sqe.set_fd(self.domain);
        sqe.set_offset(u64::from(self.socket_type as u32 | self.flags.bits()));
        sqe.set_len(self.protocol as u32);
        sqe.set_file_index(self.slot.file_index());
        Ok(Prepared::new::<Self>(sqe, KeepAlive::default()))
    }
}

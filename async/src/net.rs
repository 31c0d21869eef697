//! Sockets: [`TcpListener`], [`TcpStream`] and [`UnixStream`], whose
//! accept, connect, send and receive go through the ring.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ringfence::op::{self, SockAddr, Target};

use crate::buf::{OwnedBuf, OwnedBufMut};
use crate::op::Op;
use crate::spec::{Accept, Plain, RecvBuf, SendBuf};
use crate::stream::{ReadState, WriteState};
use crate::Driver;

/// A connected socket's ring operations, shared by the stream types.
#[derive(Clone)]
struct Socket {
    driver: Driver,
    fd: Arc<OwnedFd>,
}

impl Socket {
    fn target(&self) -> Target {
        Target::from(Arc::clone(&self.fd))
    }

    /// Sends `buf[from..]`.
    fn send<B: OwnedBuf>(&self, buf: B, from: usize) -> Op<SendBuf<B>> {
        Op::new(
            &self.driver,
            SendBuf {
                buf,
                from,
                target: self.target(),
            },
        )
    }

    fn recv<B: OwnedBufMut>(&self, buf: B) -> Op<RecvBuf<B>> {
        Op::new(
            &self.driver,
            RecvBuf {
                buf,
                target: self.target(),
            },
        )
    }

    /// The next connection on `listener`, accepted through `driver`'s ring.
    fn accept(
        driver: &Driver,
        listener: impl Into<Target>,
    ) -> impl Future<Output = io::Result<Socket>> + std::marker::Send + 'static {
        let accept = Op::new(
            driver,
            Accept {
                target: listener.into(),
            },
        );
        let driver = driver.clone();
        async move {
            let fd = Arc::new(accept.await?);
            Ok(Socket { driver, fd })
        }
    }

    /// A new socket of `domain`, connected to `addr` through the ring.
    async fn connect(driver: &Driver, domain: libc::c_int, addr: SockAddr) -> io::Result<Socket> {
        // SAFETY: socket(2) takes no pointers.
        let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socket(2) just returned this descriptor; no one else owns it.
        let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let target = Target::from(Arc::clone(&fd));
        let make = move || op::Connect::new(target.clone(), addr);
        Op::new(driver, Plain::new(make)).await?;
        Ok(Socket {
            driver: driver.clone(),
            fd,
        })
    }
}

/// A TCP socket listening for connections, accepted through the ring.
#[derive(Debug)]
pub struct TcpListener {
    driver: Driver,
    listener: Arc<std::net::TcpListener>,
}

impl TcpListener {
    /// Binds to `addr` (with `std`'s `bind` and `listen`).
    pub fn bind(driver: &Driver, addr: impl std::net::ToSocketAddrs) -> io::Result<TcpListener> {
        Ok(TcpListener::from_std(
            driver,
            std::net::TcpListener::bind(addr)?,
        ))
    }

    /// Accepts through `driver`'s ring on `listener`.
    pub fn from_std(driver: &Driver, listener: std::net::TcpListener) -> TcpListener {
        TcpListener {
            driver: driver.clone(),
            listener: Arc::new(listener),
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Waits for a connection (`IORING_OP_ACCEPT`, Linux 5.5) and returns
    /// it with the peer's address.
    ///
    /// Not cancellation-safe: dropping this future after the kernel
    /// accepted a connection (say, when another branch of a `select!`
    /// wins) closes that connection. Keep one accept future alive across
    /// loop turns (pin it outside the `select!`), or accept in a task of its
    /// own that hands connections over a channel.
    pub fn accept(
        &self,
    ) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + std::marker::Send + 'static
    {
        let accepted = Socket::accept(&self.driver, Arc::clone(&self.listener));
        async move {
            let stream = TcpStream::from_socket(accepted.await?);
            let peer = stream.peer_addr()?;
            Ok((stream, peer))
        }
    }
}

/// A Unix stream socket listening for connections, accepted through the
/// ring.
#[derive(Debug)]
pub struct UnixListener {
    driver: Driver,
    listener: Arc<std::os::unix::net::UnixListener>,
}

impl UnixListener {
    /// Binds to `path` (with `std`'s `bind` and `listen`; the socket file
    /// must not exist yet).
    pub fn bind(driver: &Driver, path: impl AsRef<std::path::Path>) -> io::Result<UnixListener> {
        Ok(UnixListener::from_std(
            driver,
            std::os::unix::net::UnixListener::bind(path)?,
        ))
    }

    /// Accepts through `driver`'s ring on `listener`.
    pub fn from_std(driver: &Driver, listener: std::os::unix::net::UnixListener) -> UnixListener {
        UnixListener {
            driver: driver.clone(),
            listener: Arc::new(listener),
        }
    }

    /// Waits for a connection (`IORING_OP_ACCEPT`, Linux 5.5). Not
    /// cancellation-safe, as [`TcpListener::accept`] is not.
    pub fn accept(
        &self,
    ) -> impl Future<Output = io::Result<UnixStream>> + std::marker::Send + 'static {
        let accepted = Socket::accept(&self.driver, Arc::clone(&self.listener));
        async move { Ok(UnixStream::from_socket(accepted.await?)) }
    }
}

macro_rules! stream_type {
    ($(#[$doc:meta])* $name:ident, $std:ty) => {
        $(#[$doc])*
        pub struct $name {
            socket: Socket,
            reader: ReadState<Op<RecvBuf<Vec<u8>>>>,
            writer: WriteState<Op<SendBuf<Vec<u8>>>>,
        }

        impl $name {
            fn from_socket(socket: Socket) -> $name {
                $name {
                    socket,
                    reader: ReadState::default(),
                    writer: WriteState::default(),
                }
            }

            /// Its I/O goes through `driver`'s ring from now on. Blocking
            /// or not, either works: the kernel waits for readiness itself.
            pub fn from_std(driver: &Driver, stream: $std) -> $name {
                $name::from_socket(Socket {
                    driver: driver.clone(),
                    fd: Arc::new(OwnedFd::from(stream)),
                })
            }

            /// Sends the initialised bytes of `buf` (`IORING_OP_SEND`, Linux
            /// 5.6, with `MSG_NOSIGNAL`). Returns the count sent (possibly
            /// fewer) and the buffer.
            ///
            /// Dropping the future early cancels the send; bytes the kernel
            /// had queued by then are sent anyway, and their count is lost.
            pub fn send<B: OwnedBuf>(
                &self,
                buf: B,
            ) -> impl Future<Output = (io::Result<usize>, B)> + std::marker::Send + Unpin + 'static {
                self.socket.send(buf, 0)
            }

            /// Receives into `buf` (`IORING_OP_RECV`, Linux 5.6): up to
            /// [`bytes_total`](OwnedBufMut::bytes_total) bytes. Returns the
            /// count (0 when the peer has shut down its side) and the buffer.
            ///
            /// Dropping the future early cancels the receive; if the
            /// kernel had already received bytes into the buffer, they are
            /// lost with it. To read across `select!` turns without loss,
            /// keep one future alive, or use the
            /// [`AsyncRead`](futures_io::AsyncRead) impl, which keeps its
            /// receive in flight between polls.
            pub fn recv<B: OwnedBufMut>(
                &self,
                buf: B,
            ) -> impl Future<Output = (io::Result<usize>, B)> + std::marker::Send + Unpin + 'static {
                self.socket.recv(buf)
            }

            /// Shuts down the reading, writing or both halves
            /// (`shutdown(2)`, called directly: it does not wait).
            pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
                shutdown(self.socket.fd.as_fd(), how)
            }
        }

        impl AsFd for $name {
            fn as_fd(&self) -> BorrowedFd<'_> {
                self.socket.fd.as_fd()
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("fd", &self.socket.fd.as_raw_fd())
                    .finish()
            }
        }

        impl futures_io::AsyncRead for $name {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                out: &mut [u8],
            ) -> Poll<io::Result<usize>> {
                let this = self.get_mut();
                let socket = &this.socket;
                this.reader.poll_read(cx, out, |buf| socket.recv(buf))
            }
        }

        impl futures_io::AsyncWrite for $name {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                data: &[u8],
            ) -> Poll<io::Result<usize>> {
                let this = self.get_mut();
                let socket = &this.socket;
                this.writer.poll_write(cx, data, |buf, from| socket.send(buf, from))
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                let this = self.get_mut();
                let socket = &this.socket;
                this.writer.poll_flush(cx, |buf, from| socket.send(buf, from))
            }

            fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                std::task::ready!(self.as_mut().poll_flush(cx))?;
                Poll::Ready(self.shutdown(std::net::Shutdown::Write))
            }
        }
    };
}

stream_type!(
    /// A TCP connection whose I/O goes through the ring: owned-buffer
    /// [`send`](Self::send) and [`recv`](Self::recv), and the futures-io
    /// [`AsyncRead`](futures_io::AsyncRead) and
    /// [`AsyncWrite`](futures_io::AsyncWrite) traits, over buffers of its
    /// own (64 KiB each way). Bytes `poll_write` took and did not send yet
    /// are lost if the stream is dropped before `flush` or `close`.
    ///
    /// Errors are as [`File`](crate::File)'s: the kernel's errno, or
    /// `InvalidInput`, `PermissionDenied` carrying
    /// [`NotAllowed`](crate::NotAllowed), before the kernel.
    TcpStream,
    std::net::TcpStream
);

stream_type!(
    /// A Unix stream socket whose I/O goes through the ring, as
    /// [`TcpStream`]'s does.
    UnixStream,
    std::os::unix::net::UnixStream
);

impl TcpStream {
    /// Connects to `addr` (`IORING_OP_CONNECT`, Linux 5.5).
    pub async fn connect(driver: &Driver, addr: SocketAddr) -> io::Result<TcpStream> {
        let domain = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        Ok(TcpStream::from_socket(
            Socket::connect(driver, domain, SockAddr::from(addr)).await?,
        ))
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.with_std(|stream| stream.peer_addr())
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.with_std(|stream| stream.local_addr())
    }

    /// Runs `f` on a `std` view of the socket (which is not closed after).
    fn with_std<T>(&self, f: impl FnOnce(&std::net::TcpStream) -> T) -> T {
        // SAFETY: the descriptor is open (`self` owns it) for the whole
        // call, and the `ManuallyDrop` never closes it.
        let stream = std::mem::ManuallyDrop::new(unsafe {
            std::net::TcpStream::from_raw_fd(self.socket.fd.as_raw_fd())
        });
        f(&stream)
    }
}

impl UnixStream {
    /// Connects to the socket at `path` (`IORING_OP_CONNECT`, Linux 5.5).
    pub async fn connect(
        driver: &Driver,
        path: impl AsRef<std::path::Path>,
    ) -> io::Result<UnixStream> {
        let addr = std::os::unix::net::SocketAddr::from_pathname(path)?;
        let socket = Socket::connect(driver, libc::AF_UNIX, SockAddr::from(&addr)).await?;
        Ok(UnixStream::from_socket(socket))
    }

    /// A connected pair (`socketpair(2)`, through `std`).
    pub fn pair(driver: &Driver) -> io::Result<(UnixStream, UnixStream)> {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        Ok((
            UnixStream::from_std(driver, a),
            UnixStream::from_std(driver, b),
        ))
    }
}

fn shutdown(fd: BorrowedFd<'_>, how: std::net::Shutdown) -> io::Result<()> {
    let how = match how {
        std::net::Shutdown::Read => libc::SHUT_RD,
        std::net::Shutdown::Write => libc::SHUT_WR,
        std::net::Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: shutdown(2) takes no pointers; the descriptor is open.
    if unsafe { libc::shutdown(fd.as_raw_fd(), how) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

//! tokio's [`AsyncRead`](tokio::io::AsyncRead) and
//! [`AsyncWrite`](tokio::io::AsyncWrite) for the streams, with the `tokio`
//! feature: each forwards to the stream's `futures-io` impl, so both
//! families share one receive and one send buffer per stream, and behave
//! alike (a receive stays in flight between polls; a write is taken into
//! the stream's buffer and sent from there).
#![cfg(feature = "tokio")]

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::ReadBuf;

use crate::{TcpStream, UnixStream};

macro_rules! tokio_io {
    ($name:ty) => {
        impl tokio::io::AsyncRead for $name {
            /// Fills `buf`'s unfilled part from what the stream received
            /// (zeroing it first where tokio has not initialised it, once
            /// per buffer). Nothing added means the peer shut down its
            /// side.
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                let out = buf.initialize_unfilled();
                let n = ready!(futures_io::AsyncRead::poll_read(self, cx, out))?;
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
        }

        impl tokio::io::AsyncWrite for $name {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                data: &[u8],
            ) -> Poll<io::Result<usize>> {
                futures_io::AsyncWrite::poll_write(self, cx, data)
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                futures_io::AsyncWrite::poll_flush(self, cx)
            }

            /// Flushes, then shuts down the writing half (`shutdown(2)`
            /// with `SHUT_WR`): the peer reads end of stream.
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                futures_io::AsyncWrite::poll_close(self, cx)
            }
        }
    };
}

tokio_io!(TcpStream);
tokio_io!(UnixStream);

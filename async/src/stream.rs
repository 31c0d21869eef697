//! The byte-stream traits over owned-buffer operations: a stream keeps a
//! buffer of its own each way, which the kernel fills or drains while the
//! caller's slices stay the caller's.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// Each direction's buffer.
pub(crate) const BUFFER: usize = 64 * 1024;

/// A receive in flight, or received bytes not yet read.
pub(crate) struct ReadState<F> {
    /// The buffer, when no receive has it; `consumed` of its bytes were
    /// read out.
    buf: Option<Vec<u8>>,
    consumed: usize,
    receiving: Option<F>,
}

impl<F> Default for ReadState<F> {
    fn default() -> Self {
        ReadState {
            buf: Some(Vec::with_capacity(BUFFER)),
            consumed: 0,
            receiving: None,
        }
    }
}

impl<F: Future<Output = (io::Result<usize>, Vec<u8>)> + Unpin> ReadState<F> {
    /// `AsyncRead::poll_read`: copies out received bytes, or receives more
    /// with `recv` (one receive at a time, kept in flight across polls, so
    /// a caller that stops polling loses nothing).
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut [u8],
        recv: impl FnOnce(Vec<u8>) -> F,
    ) -> Poll<io::Result<usize>> {
        if out.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.receiving.is_none() {
            let buf = self
                .buf
                .as_mut()
                .expect("the buffer is here when no receive has it");
            if self.consumed < buf.len() {
                return Poll::Ready(Ok(self.copy_out(out)));
            }
            let mut buf = self.buf.take().expect("checked above");
            buf.clear();
            self.consumed = 0;
            self.receiving = Some(recv(buf));
        }
        let receiving = self.receiving.as_mut().expect("started above");
        let (result, buf) = ready!(Pin::new(receiving).poll(cx));
        self.receiving = None;
        self.buf = Some(buf);
        match result {
            // 0: the peer shut down its side.
            Ok(_) => Poll::Ready(Ok(self.copy_out(out))),
            Err(err) => Poll::Ready(Err(err)),
        }
    }

    /// Forgets received bytes not yet read, and cancels a receive in
    /// flight (a file's position moved under them).
    pub(crate) fn discard(&mut self) {
        if self.receiving.take().is_some() {
            self.buf = Some(Vec::with_capacity(BUFFER));
        }
        self.consumed = self.buf.as_ref().map_or(0, Vec::len);
    }

    fn copy_out(&mut self, out: &mut [u8]) -> usize {
        let buf = self.buf.as_ref().expect("called with the buffer here");
        let ready = &buf[self.consumed..];
        let n = ready.len().min(out.len());
        out[..n].copy_from_slice(&ready[..n]);
        self.consumed += n;
        n
    }
}

/// Bytes taken from the caller and not yet all sent.
pub(crate) struct WriteState<F> {
    /// The buffer, when no send has it: `sent` of its bytes are sent.
    buf: Option<Vec<u8>>,
    sent: usize,
    sending: Option<F>,
}

impl<F> Default for WriteState<F> {
    fn default() -> Self {
        WriteState {
            buf: Some(Vec::with_capacity(BUFFER)),
            sent: 0,
            sending: None,
        }
    }
}

impl<F: Future<Output = (io::Result<usize>, Vec<u8>)> + Unpin> WriteState<F> {
    /// `AsyncWrite::poll_write`: once earlier bytes are all sent, copies
    /// up to the buffer's size of `data` and starts sending it, and
    /// returns the count taken. An error sending earlier bytes is returned
    /// here (or by `poll_flush`), once; those bytes are dropped.
    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
        send: impl Fn(Vec<u8>, usize) -> F,
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_flush(cx, &send))?;
        let mut buf = self.buf.take().expect("flushed: the buffer is here");
        let n = data.len().min(buf.capacity().max(BUFFER));
        buf.clear();
        buf.extend_from_slice(&data[..n]);
        self.sent = 0;
        self.sending = Some(send(buf, 0));
        // Started: its completion is collected by the next write or flush.
        if let Some(sending) = self.sending.as_mut() {
            if let Poll::Ready(done) = Pin::new(sending).poll(cx) {
                self.sending = None;
                self.sent_some(done)?;
            }
        }
        Poll::Ready(Ok(n))
    }

    /// `AsyncWrite::poll_flush`: sends what is left of the buffer.
    pub(crate) fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
        send: impl Fn(Vec<u8>, usize) -> F,
    ) -> Poll<io::Result<()>> {
        loop {
            if let Some(sending) = self.sending.as_mut() {
                let done = ready!(Pin::new(sending).poll(cx));
                self.sending = None;
                self.sent_some(done)?;
            }
            let buf = self.buf.take().expect("no send has it");
            if self.sent >= buf.len() {
                self.buf = Some(buf);
                return Poll::Ready(Ok(()));
            }
            let from = self.sent;
            self.sending = Some(send(buf, from));
        }
    }

    /// Takes back the buffer from a send that completed.
    fn sent_some(&mut self, (result, mut buf): (io::Result<usize>, Vec<u8>)) -> io::Result<()> {
        let outcome = match result {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the socket took no bytes",
            )),
            Ok(n) => {
                self.sent += n;
                Ok(())
            }
            Err(err) => Err(err),
        };
        if outcome.is_err() {
            // The rest is dropped: a failed stream is not written again.
            buf.clear();
            self.sent = 0;
        }
        self.buf = Some(buf);
        outcome
    }
}

//! [`File`] as a byte stream with one position: the futures-io
//! `AsyncRead`, `AsyncWrite` and `AsyncSeek` traits over positional reads
//! and writes.

use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use ringfence::op::Target;

use crate::fs::{ReadAt, WriteAt};
use crate::op::Op;
use crate::stream::{ReadState, WriteState};
use crate::{Driver, File};

/// A file's stream position and buffers.
#[derive(Default)]
pub(crate) struct Cursor {
    /// Where the caller's next byte is read or written: bytes read ahead
    /// are not counted, bytes written and not yet sent are.
    position: u64,
    reader: ReadState<Op<ReadAt<Vec<u8>>>>,
    writer: WriteState<Op<WriteAt<Vec<u8>>>>,
    /// Where the writer's buffer starts in the file.
    write_base: u64,
}

impl Cursor {
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// Sends what the writer holds, where it was written.
    fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
        driver: &Driver,
        target: &Target,
    ) -> Poll<io::Result<()>> {
        let base = self.write_base;
        self.writer.poll_flush(cx, write_at(driver, target, base))
    }
}

/// The writer's sends: `buf[from..]` to the file at `base + from`.
fn write_at<'a>(
    driver: &'a Driver,
    target: &'a Target,
    base: u64,
) -> impl Fn(Vec<u8>, usize) -> Op<WriteAt<Vec<u8>>> + 'a {
    move |buf, from| {
        let offset = base + from as u64;
        Op::new(
            driver,
            WriteAt {
                buf,
                from,
                target: target.clone(),
                offset,
            },
        )
    }
}

impl futures_io::AsyncRead for File {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let File {
            driver,
            target,
            cursor,
            ..
        } = self.get_mut();
        // Bytes written earlier must be in the file before reading there.
        ready!(cursor.poll_flush(cx, driver, target))?;
        let at = cursor.position;
        let read = ready!(cursor.reader.poll_read(cx, out, |buf| {
            Op::new(
                driver,
                ReadAt {
                    buf,
                    target: target.clone(),
                    offset: at,
                },
            )
        }))?;
        cursor.position += read as u64;
        Poll::Ready(Ok(read))
    }
}

impl futures_io::AsyncWrite for File {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let File {
            driver,
            target,
            cursor,
            ..
        } = self.get_mut();
        ready!(cursor.poll_flush(cx, driver, target))?;
        // Bytes read ahead are stale once the file is written.
        cursor.reader.discard();
        let base = cursor.position;
        cursor.write_base = base;
        let taken = ready!(cursor
            .writer
            .poll_write(cx, data, write_at(driver, target, base)))?;
        cursor.position += taken as u64;
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let File {
            driver,
            target,
            cursor,
            ..
        } = self.get_mut();
        cursor.poll_flush(cx, driver, target)
    }

    /// Flushes; the file is closed when the last of it and its operations
    /// is dropped.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

impl futures_io::AsyncSeek for File {
    /// Flushes, forgets what was read ahead, and moves the position.
    /// Seeking from the end needs the file's size: only a `File` made from
    /// a `std::fs::File` can (`Unsupported` otherwise).
    fn poll_seek(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        pos: SeekFrom,
    ) -> Poll<io::Result<u64>> {
        let File {
            driver,
            target,
            cursor,
            std,
        } = self.get_mut();
        ready!(cursor.poll_flush(cx, driver, target))?;
        let (base, delta) =
            match pos {
                SeekFrom::Start(at) => (at, 0),
                SeekFrom::Current(delta) => (cursor.position, delta),
                SeekFrom::End(delta) => match std {
                    Some(file) => (file.metadata()?.len(), delta),
                    None => return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "seeking from the end needs the file's size: make the File with from_std",
                    ))),
                },
            };
        let Some(position) = base.checked_add_signed(delta) else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            )));
        };
        cursor.reader.discard();
        cursor.position = position;
        Poll::Ready(Ok(position))
    }
}

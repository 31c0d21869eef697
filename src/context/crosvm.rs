//! The crosvm-named methods, one line each over [`URingContext::add`].
//!
//! They take `RawFd`, as crosvm's do: the caller keeps each descriptor open,
//! and refers to the same file, until the operation has completed (see
//! [Files](URingContext#files)).

use std::os::fd::RawFd;
use std::pin::Pin;

use super::URingContext;
use crate::abi::{FallocateMode, SqeFlags, UserData};
use crate::iobuf::IoBufMut;
use crate::op::{
    pin_raw_iovecs, AsyncCancel, EventType, Fallocate, Fsync, Nop, PollAdd, PollRemove, Readv,
    Target, Writev,
};
use crate::Result;

/// A crosvm-style descriptor as an operation target.
fn raw(fd: RawFd) -> Target {
    Target::raw_for_crosvm_api(fd)
}

impl URingContext {
    /// Queues a vectored read from `fd` into `iovecs`, at byte `offset` or,
    /// with `None`, at the file's current position (which it then
    /// advances): [`op::Readv`](crate::op::Readv). Completes with the
    /// number of bytes read.
    ///
    /// `offset` is absolute; one above
    /// [`MAX_FILE_OFFSET`](crate::MAX_FILE_OFFSET) is refused with
    /// [`Error::InvalidOffset`](crate::Error::InvalidOffset). Other errors
    /// as for [`add`](Self::add).
    ///
    /// # Safety
    ///
    /// Each iovec must point to memory that is valid for writes and that
    /// nothing else reads or writes until the kernel is done with it: until
    /// this operation's completion has been returned by
    /// [`wait`](Self::wait), or [`close`](Self::close) has returned `Ok`,
    /// or drop has drained the ring. Drop cannot say whether it drained
    /// (see [Dropping and closing](Self#dropping-and-closing)): memory that
    /// must be reused after a drop with operations in flight should go
    /// through `close` instead, or live for the rest of the process.
    ///
    /// This is the promise [`IoBufMut::from_raw_parts`] already asks for
    /// (an `IoBufMut::new` over a `&'static mut` buffer keeps it by
    /// itself); the method stays `unsafe` as crosvm's is, so ported code
    /// compiles unchanged. [`add`](Self::add) with
    /// [`op::Readv`](crate::op::Readv) is the safe form.
    pub unsafe fn add_readv(
        &self,
        iovecs: Pin<Box<[IoBufMut<'static>]>>,
        fd: RawFd,
        offset: Option<u64>,
        user_data: UserData,
    ) -> Result<()> {
        self.add(Readv::new(iovecs, raw(fd), offset), user_data)
    }

    /// Queues a vectored write of `iovecs` to `fd`, at byte `offset` or,
    /// with `None`, at the file's current position (which it then
    /// advances): [`op::Writev`](crate::op::Writev). Completes with the
    /// number of bytes written. Errors as for
    /// [`add_readv`](Self::add_readv).
    ///
    /// # Safety
    ///
    /// Each iovec must point to memory that is valid for reads and that
    /// nothing writes until the kernel is done with it, as for
    /// [`add_readv`](Self::add_readv).
    pub unsafe fn add_writev(
        &self,
        iovecs: Pin<Box<[IoBufMut<'static>]>>,
        fd: RawFd,
        offset: Option<u64>,
        user_data: UserData,
    ) -> Result<()> {
        self.add(Writev::new(iovecs, raw(fd), offset), user_data)
    }

    /// [`add_readv`](Self::add_readv) from raw iovecs, which the context
    /// copies into an array it keeps until the completion.
    ///
    /// # Safety
    ///
    /// As for [`add_readv`](Self::add_readv), for the memory each iovec
    /// points to.
    pub unsafe fn add_readv_iter<I: Iterator<Item = libc::iovec>>(
        &self,
        iovecs: I,
        fd: RawFd,
        offset: Option<u64>,
        user_data: UserData,
    ) -> Result<()> {
        // SAFETY: forwarded from the caller.
        let iovecs = unsafe { pin_raw_iovecs(iovecs) };
        self.add(Readv::new(iovecs, raw(fd), offset), user_data)
    }

    /// [`add_writev`](Self::add_writev) from raw iovecs, which the context
    /// copies into an array it keeps until the completion.
    ///
    /// # Safety
    ///
    /// As for [`add_writev`](Self::add_writev), for the memory each iovec
    /// points to.
    pub unsafe fn add_writev_iter<I: Iterator<Item = libc::iovec>>(
        &self,
        iovecs: I,
        fd: RawFd,
        offset: Option<u64>,
        user_data: UserData,
    ) -> Result<()> {
        // SAFETY: forwarded from the caller.
        let iovecs = unsafe { pin_raw_iovecs(iovecs) };
        self.add(Writev::new(iovecs, raw(fd), offset), user_data)
    }

    /// Queues an operation that does nothing and completes with 0:
    /// [`op::Nop`](crate::op::Nop). Once submitted ([`submit`](Self::submit),
    /// or any thread's [`wait`](Self::wait)), its completion wakes a thread
    /// blocked in `wait`: queueing alone wakes nobody.
    pub fn add_nop(&self, user_data: UserData) -> Result<()> {
        self.add(Nop::new(), user_data)
    }

    /// Queues a nop that carries SQE `flags` (`ASYNC`), to see what a
    /// restricted ring allows. Links are not SQE flags of a single add:
    /// they would join this nop to whatever any thread queues next; build
    /// chains in an [`OpBatch`](crate::OpBatch).
    pub fn add_nop_with_flags(&self, flags: SqeFlags, user_data: UserData) -> Result<()> {
        self.add(Nop::new().flags(flags), user_data)
    }

    /// Queues an `fsync` of `fd`: [`op::Fsync`](crate::op::Fsync).
    /// Completes with 0.
    pub fn add_fsync(&self, fd: RawFd, user_data: UserData) -> Result<()> {
        self.add(Fsync::new(raw(fd)), user_data)
    }

    /// Queues `fallocate(fd, mode, offset, len)`:
    /// [`op::Fallocate`](crate::op::Fallocate). `mode` 0 allocates, and
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE` deallocates (the range
    /// then reads as zeros); `mode` is passed to the kernel as it is (see
    /// [`FallocateMode`](crate::FallocateMode) for the bits). Completes
    /// with 0.
    pub fn add_fallocate(
        &self,
        fd: RawFd,
        offset: u64,
        len: u64,
        mode: u32,
        user_data: UserData,
    ) -> Result<()> {
        self.add(
            Fallocate::new(raw(fd), offset, len, FallocateMode::from_bits_retain(mode)),
            user_data,
        )
    }

    /// Queues a one-shot poll of `fd`: [`op::PollAdd`](crate::op::PollAdd).
    /// Completes with the `POLL*` events that are ready, once one of
    /// `events` is.
    pub fn add_poll_fd(&self, fd: RawFd, events: EventType, user_data: UserData) -> Result<()> {
        self.add(PollAdd::new(raw(fd), events), user_data)
    }

    /// Queues the removal of the polls added with user_data `target`:
    /// [`op::PollRemove`](crate::op::PollRemove), which acts on every poll
    /// in flight with that user_data.
    ///
    /// This operation completes with 0 if a poll was removed (the poll then
    /// completes with `ECANCELED`), `ENOENT` if no poll with that user_data
    /// is pending, or `EALREADY` if it is already completing; with several
    /// polls under that user_data, the result is the oldest one's.
    ///
    /// crosvm's takes `(fd, events, user_data)` and cannot name the poll
    /// it removes; this one names it by its user_data.
    pub fn remove_poll_fd(&self, target: UserData, user_data: UserData) -> Result<()> {
        self.add(PollRemove::new(target), user_data)
    }

    /// Queues the cancellation of the operations added with user_data
    /// `target`: [`op::AsyncCancel`](crate::op::AsyncCancel), which acts on
    /// every operation in flight with that user_data.
    ///
    /// This operation completes with 0 if the target was cancelled (it then
    /// completes with `ECANCELED`), `ENOENT` if no operation with that
    /// user_data is in the kernel, or `EALREADY` if it is already running
    /// and cannot be stopped (it then completes normally); with several
    /// operations under that user_data, the result is the oldest one's.
    pub fn async_cancel(&self, target: UserData, user_data: UserData) -> Result<()> {
        self.add(AsyncCancel::new(target), user_data)
    }
}

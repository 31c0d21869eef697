//! [`OpBatch`]: operations gathered without any lock, queued together by
//! [`URingContext::add_batch`](crate::URingContext::add_batch).

use std::os::fd::RawFd;
use std::pin::Pin;

use crate::bindings::{io_uring_sqe, IORING_OP_READV, IORING_OP_WRITEV};
use crate::context::{
    cancel_sqe, fallocate_sqe, fsync_sqe, nop_sqe, poll_add_sqe, poll_remove_sqe, rw_op, OpState,
};
use crate::{EventType, IoBufMut, Result, SqeFlags, UserData};

/// Operations to queue together with
/// [`URingContext::add_batch`](crate::URingContext::add_batch): one lock for
/// the lot instead of one per operation, and all or none of them queued.
///
/// Each method mirrors the `add_*` method of the same name on
/// [`URingContext`](crate::URingContext), with the same meaning; errors that depend on the ring
/// (no room, a duplicate user_data) come from `add_batch`. A batch keeps
/// its capacity when `add_batch` empties it, so one reused batch allocates
/// nothing after the first round.
#[derive(Default)]
pub struct OpBatch {
    ops: Vec<(io_uring_sqe, OpState)>,
}

impl OpBatch {
    /// An empty batch.
    pub fn new() -> OpBatch {
        OpBatch::default()
    }

    /// An empty batch with room for `capacity` operations.
    pub fn with_capacity(capacity: usize) -> OpBatch {
        OpBatch {
            ops: Vec::with_capacity(capacity),
        }
    }

    /// Operations in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Drops every operation in the batch (and the iovecs of its reads and
    /// writes, which the kernel never saw).
    pub fn clear(&mut self) {
        self.ops.clear();
    }

    pub(crate) fn ops_mut(&mut self) -> &mut [(io_uring_sqe, OpState)] {
        &mut self.ops
    }

    fn push(&mut self, sqe: io_uring_sqe, state: OpState) -> &mut Self {
        self.ops.push((sqe, state));
        self
    }

    /// See [`URingContext::add_nop`](crate::URingContext::add_nop).
    pub fn add_nop(&mut self, user_data: UserData) -> &mut Self {
        self.add_nop_with_flags(SqeFlags::NONE, user_data)
    }

    /// See [`URingContext::add_nop_with_flags`](crate::URingContext::add_nop_with_flags).
    pub fn add_nop_with_flags(&mut self, flags: SqeFlags, user_data: UserData) -> &mut Self {
        self.push(nop_sqe(flags, user_data), None)
    }

    /// See [`URingContext::add_fsync`](crate::URingContext::add_fsync).
    pub fn add_fsync(&mut self, fd: RawFd, user_data: UserData) -> &mut Self {
        self.push(fsync_sqe(fd, user_data), None)
    }

    /// See [`URingContext::add_fallocate`](crate::URingContext::add_fallocate).
    pub fn add_fallocate(
        &mut self,
        fd: RawFd,
        offset: u64,
        len: u64,
        mode: u32,
        user_data: UserData,
    ) -> &mut Self {
        self.push(fallocate_sqe(fd, offset, len, mode, user_data), None)
    }

    /// See [`URingContext::add_poll_fd`](crate::URingContext::add_poll_fd).
    pub fn add_poll_fd(&mut self, fd: RawFd, events: EventType, user_data: UserData) -> &mut Self {
        self.push(poll_add_sqe(fd, events, user_data), None)
    }

    /// See [`URingContext::remove_poll_fd`](crate::URingContext::remove_poll_fd).
    pub fn remove_poll_fd(&mut self, target: UserData, user_data: UserData) -> &mut Self {
        self.push(poll_remove_sqe(target, user_data), None)
    }

    /// See [`URingContext::async_cancel`](crate::URingContext::async_cancel).
    pub fn async_cancel(&mut self, target: UserData, user_data: UserData) -> &mut Self {
        self.push(cancel_sqe(target, user_data), None)
    }

    /// See [`URingContext::add_readv`](crate::URingContext::add_readv).
    /// Fails only with [`Error::TooManyIovecs`](crate::Error::TooManyIovecs).
    ///
    /// # Safety
    ///
    /// As for [`URingContext::add_readv`](crate::URingContext::add_readv),
    /// from the moment `add_batch` queues it. A read that never gets queued
    /// (the batch is cleared or dropped first) never touches its iovecs.
    pub unsafe fn add_readv(
        &mut self,
        iovecs: Pin<Box<[IoBufMut<'static>]>>,
        fd: RawFd,
        offset: Option<u64>,
        user_data: UserData,
    ) -> Result<&mut Self> {
        let (sqe, state) = rw_op(IORING_OP_READV, iovecs, fd, offset, user_data)?;
        Ok(self.push(sqe, state))
    }

    /// See [`URingContext::add_writev`](crate::URingContext::add_writev).
    /// Fails only with [`Error::TooManyIovecs`](crate::Error::TooManyIovecs).
    ///
    /// # Safety
    ///
    /// As for [`URingContext::add_writev`](crate::URingContext::add_writev),
    /// from the moment `add_batch` queues it.
    pub unsafe fn add_writev(
        &mut self,
        iovecs: Pin<Box<[IoBufMut<'static>]>>,
        fd: RawFd,
        offset: Option<u64>,
        user_data: UserData,
    ) -> Result<&mut Self> {
        let (sqe, state) = rw_op(IORING_OP_WRITEV, iovecs, fd, offset, user_data)?;
        Ok(self.push(sqe, state))
    }
}

impl std::fmt::Debug for OpBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpBatch")
            .field("len", &self.ops.len())
            .finish()
    }
}

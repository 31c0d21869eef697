//! `submit`, and the one place the context calls `io_uring_enter`.

use std::io;

use super::{is_errno, URingContext};
use crate::bindings::{IORING_ENTER_SQ_WAIT, IORING_ENTER_SQ_WAKEUP};
use crate::error::{enter_error, Error, Result};
use crate::sys;

impl URingContext {
    /// `io_uring_enter` on this ring, offering the kernel every SQE
    /// published when it looks (`submit`) or none.
    ///
    /// Offering all is what keeps a chain whole: the kernel takes
    /// `min(to_submit, tail - head)` SQEs (`io_submit_sqes`), and a count
    /// taken from an earlier look at the tail could end inside a chain
    /// another thread has published since, which the kernel would then
    /// issue cut short (a link timeout split from its read fails, and the
    /// read runs with no deadline). Chains are published with one tail
    /// store, so offering the whole ring's worth never cuts one.
    pub(super) fn enter(&self, submit: bool, min_complete: u32, flags: u32) -> io::Result<u32> {
        self.enter_for(submit, min_complete, flags, None)
    }

    /// [`enter`](Self::enter), waiting at most `timeout` for `min_complete`
    /// completions when it is `Some` (`IORING_ENTER_EXT_ARG`: only on a
    /// ring with `IORING_FEAT_EXT_ARG`).
    pub(super) fn enter_for(
        &self,
        submit: bool,
        min_complete: u32,
        flags: u32,
        timeout: Option<std::time::Duration>,
    ) -> io::Result<u32> {
        let to_submit = if submit { self.sq_entries } else { 0 };
        // With SQPOLL the kernel's thread submits; an enter only wakes it,
        // and only needs to when it sleeps.
        let flags = if submit && self.sqpoll && self.sq.sq_thread_sleeps() {
            flags | IORING_ENTER_SQ_WAKEUP
        } else {
            flags
        };
        // SAFETY: every SQE published on this ring was written by `queue`,
        // `queue_one` or `queue_own`, which track what the operation keeps
        // alive (its iovec array, its file) in the op table before
        // publishing, in the process whose table it is (every public method
        // refuses in a forked child before reaching here); the table
        // keeps it until the operation's completion has been handed to the
        // caller, or drain has seen every completion, or leaks it. The
        // memory the iovecs describe is the caller's, kept valid by
        // `IoBufMut`'s contract. SQEs that drain rewrote are nops, which
        // point at nothing.
        unsafe { sys::enter(&self.ring, to_submit, min_complete, flags, timeout) }
    }

    /// Sends every queued operation to the kernel, without waiting for any
    /// to complete.
    ///
    /// If the kernel consumes fewer than offered (it stops at an SQE it
    /// rejects, whose completion then carries the error), the rest are
    /// offered again until none is left.
    ///
    /// - `EINTR` from `io_uring_enter` is retried.
    /// - `EAGAIN` and `EBUSY` return [`Error::KernelBusy`]: the kernel is
    ///   short of memory or of completion space. The operations it did not
    ///   take stay queued and go with the next `submit` or `wait`.
    /// - Anything else returns [`Error::Enter`] (`EBADFD`: the ring is still
    ///   disabled).
    ///
    /// On a ring with a kernel SQ thread
    /// ([`URingBuilder::sqpoll`](crate::URingBuilder::sqpoll)), that thread
    /// submits on its own: `submit` only wakes it if it went to sleep
    /// (`IORING_SQ_NEED_WAKEUP`), and with the queue full waits until it has
    /// taken some (`IORING_ENTER_SQ_WAIT`), then returns.
    pub fn submit(&self) -> Result<()> {
        self.check_process()?;
        self.pay_wake_owed();
        self.submit_queued()?;
        // A wake-up owed because the queue was full has room now.
        if self.wake_owed.load(std::sync::atomic::Ordering::Relaxed) {
            self.pay_wake_owed();
            self.submit_queued()?;
        }
        Ok(())
    }

    /// Offers every queued SQE to the kernel until it has consumed them
    /// all; see [`submit`](Self::submit). On an SQPOLL ring, wakes the
    /// kernel's SQ thread if it sleeps, and returns: that thread consumes
    /// them, and enter's result there is what it was offered, not what was
    /// consumed.
    fn submit_queued(&self) -> Result<()> {
        if self.sqpoll {
            return self.wake_sq_thread();
        }
        loop {
            // One load of the head for both: if another thread's enter
            // consumed SQEs between two loads, a 0 from ours would look like
            // a stall.
            let (queued, head) = self.sq.queued();
            if queued == 0 {
                return Ok(());
            }
            match self.enter(true, 0, 0) {
                Ok(0) => {
                    // Zero is only progress if another thread's enter
                    // consumed them meanwhile; otherwise the kernel stalls.
                    if self.sq.kernel_head() == head {
                        return Err(Error::KernelBusy(io::Error::from_raw_os_error(
                            libc::EAGAIN,
                        )));
                    }
                }
                Ok(_) => {}
                Err(e) if is_errno(&e, libc::EINTR) => {}
                Err(e) => return Err(enter_error(e)),
            }
        }
    }
}

impl URingContext {
    /// On an SQPOLL ring: wakes the kernel's SQ thread if SQEs are queued
    /// and it sleeps (`IORING_ENTER_SQ_WAKEUP`); with the queue full, also
    /// waits until it has taken some (`IORING_ENTER_SQ_WAIT`, Linux 5.10),
    /// so a caller retrying an add after `NoSpace` does not spin.
    fn wake_sq_thread(&self) -> Result<()> {
        let (queued, _) = self.sq.queued();
        if queued == 0 {
            return Ok(());
        }
        let wait = if queued >= self.sq_entries {
            IORING_ENTER_SQ_WAIT
        } else {
            0
        };
        if wait == 0 && !self.sq.sq_thread_sleeps() {
            return Ok(());
        }
        loop {
            match self.enter(true, 0, wait) {
                Ok(_) => return Ok(()),
                Err(e) if is_errno(&e, libc::EINTR) => {}
                Err(e) => return Err(enter_error(e)),
            }
        }
    }
}

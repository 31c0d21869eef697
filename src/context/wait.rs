//! Waiting: `wait`, `wait_timeout`, and waiting on the ring fd.

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::completions::{as_item, Completion, Completions};
use super::{is_errno, lock, URingContext};
use crate::abi::UserData;
use crate::bindings::IORING_ENTER_GETEVENTS;
use crate::error::{enter_error, Error, Result};
use crate::sys;

/// How long `wait` waits for work already in the kernel when the kernel
/// refuses new submissions for now (`EAGAIN`, `EBUSY`) before trying again.
const KERNEL_BUSY_BACKOFF: Duration = Duration::from_millis(10);

/// A point in time to stop waiting at; `None` when the timeout is too long
/// to represent, which means never.
#[derive(Clone, Copy)]
pub(super) struct Deadline(Option<Instant>);

impl Deadline {
    pub(super) fn after(timeout: Duration) -> Deadline {
        Deadline(Instant::now().checked_add(timeout))
    }

    /// The time left, zero once passed.
    pub(super) fn left(self) -> Duration {
        match self.0 {
            Some(at) => at.saturating_duration_since(Instant::now()),
            None => Duration::MAX,
        }
    }
}

/// `duration` in whole milliseconds for poll(2), rounded up so that a
/// short wait does not become a busy loop.
fn millis_rounded_up(duration: Duration) -> i32 {
    let millis = duration.as_nanos().div_ceil(1_000_000);
    millis.min(i32::MAX as u128) as i32
}

impl URingContext {
    /// Submits what is queued, blocks until a completion is ready, and
    /// returns an iterator over the completions that are ready.
    ///
    /// Each completion is yielded exactly once, to whichever thread's
    /// iterator claims it first, as `(user_data, result)`; a negative
    /// kernel result becomes `Err(io::Error::from_raw_os_error(-res))`.
    /// [`wait_completions`](Self::wait_completions) yields the same
    /// completions with their flags.
    ///
    /// An operation is in flight (its user_data taken, what it keeps alive
    /// kept) until the caller has its last completion from an iterator. For
    /// most operations that is their only completion. A multishot operation
    /// ([`PollAdd::multishot`](crate::op::PollAdd::multishot)) completes
    /// once per event with `IORING_CQE_F_MORE` set and stays in flight; the
    /// first completion without MORE is its last, when it is cancelled,
    /// fails, or finds the completion ring full. The
    /// iterator yields what is in the completion ring (and what earlier
    /// iterators handed back); completions the kernel kept aside because
    /// the ring was full (`IORING_FEAT_NODROP`) come back with the next
    /// `wait`, so none is lost however many are in flight. Dropping the
    /// iterator early hands the rest back for the next `wait`. Forgetting
    /// it (`mem::forget`) leaks the completions it had not yielded: their
    /// operations stay in flight (and their user_data taken) until
    /// [`close`](Self::close) or drop; the ring itself keeps working.
    ///
    /// `wait` blocks also when nothing is in flight, as crosvm's, liburing's
    /// `io_uring_wait_cqe` and the io-uring crate's `submit_and_wait(1)` do:
    /// another thread's operation (a nop from [`add_nop`](Self::add_nop)
    /// plus [`submit`](Self::submit), say) wakes it. A thread alone with
    /// the ring must therefore not call `wait` with nothing in flight: it
    /// would block for good. Use [`wait_timeout`](Self::wait_timeout) for a
    /// bounded wait (`Duration::ZERO` does not block at all). With several
    /// reaper threads, the completion that woke one may be claimed by
    /// another: the iterator is then empty, and the loop waits again.
    ///
    /// `EINTR` is retried. `EAGAIN` and `EBUSY` while submitting fall back to
    /// waiting briefly for an operation already in the kernel, then submit
    /// again; if there is none, they return [`Error::KernelBusy`] and the
    /// operations stay queued. Completions the kernel dropped for want of
    /// memory are reported once, as [`Error::CompletionsLost`].
    #[inline]
    pub fn wait(&self) -> Result<impl Iterator<Item = (UserData, io::Result<u32>)> + '_> {
        Ok(self.wait_claims()?.map(as_item))
    }

    /// Like [`wait`](Self::wait), blocking and failing alike, but yields
    /// each completion as a [`Completion`], with its flags: whether more
    /// will follow ([`Completion::more`]), a provided buffer's id.
    ///
    /// ```
    /// use ringfence::URingContext;
    ///
    /// let ring = URingContext::new(8, None)?;
    /// ring.add_nop(3)?;
    /// let completion = ring.wait_completions()?.next().unwrap();
    /// assert_eq!(completion.user_data(), 3);
    /// assert_eq!(completion.result()?, 0);
    /// assert!(!completion.more(), "a nop completes once");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn wait_completions(&self) -> Result<impl Iterator<Item = Completion> + '_> {
        Ok(self.wait_claims()?.map(Completion::from))
    }

    /// [`wait`](Self::wait)'s waiting, and the iterator of what it claims.
    #[inline]
    fn wait_claims(&self) -> Result<Completions<'_>> {
        self.check_process()?;
        loop {
            self.check_drops()?;
            // Before sampling `queued`, so an owed wake-up nop goes with
            // this call's enter instead of waiting for the next one.
            self.pay_wake_owed();
            let (queued, _) = self.sq.queued();
            if self.completion_ready() {
                // Send what is queued, but don't block: completions wait. A
                // busy kernel keeps the rest queued for the next call.
                if queued > 0 {
                    match self.submit() {
                        Ok(()) | Err(Error::KernelBusy(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                return Ok(Completions::new(self));
            }
            match self.enter(queued > 0, 1, IORING_ENTER_GETEVENTS) {
                // A completion arrived (or overflowed ones were flushed), or
                // a short submit or a signal ended the wait early: look
                // again.
                Ok(_) => {}
                Err(e) if is_errno(&e, libc::EINTR) => {}
                // The kernel dropped completions: the next check reports
                // that once, from the overflow counter. The kernel may keep
                // refusing to wait from now on, so wait by polling instead.
                Err(e) if is_errno(&e, libc::EBADR) => self.poll_ring(KERNEL_BUSY_BACKOFF)?,
                Err(e) => match enter_error(e) {
                    Error::KernelBusy(e) => {
                        let in_kernel = lock(&self.state).table.tracked();
                        if in_kernel <= self.sq.queued().0 as usize {
                            return Err(Error::KernelBusy(e));
                        }
                        // Something already in the kernel will complete.
                        // Wait for it briefly, not for good: the queued
                        // operations may be what it is waiting for.
                        self.poll_ring(KERNEL_BUSY_BACKOFF)?;
                    }
                    other => return Err(other),
                },
            }
        }
    }

    /// Like [`wait`](Self::wait), but gives up after `timeout`. The
    /// iterator is empty if nothing completed in time; `Duration::ZERO`
    /// only looks.
    ///
    /// This is the loop for a thread that only reaps and must notice a
    /// stop flag:
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::time::Duration;
    /// use ringfence::URingContext;
    ///
    /// let ring = URingContext::new(16, None)?;
    /// let done = AtomicBool::new(false);
    /// std::thread::scope(|s| {
    ///     let reaper = s.spawn(|| {
    ///         let mut reaped = Vec::new();
    ///         while !done.load(Ordering::Acquire) || ring.in_flight() > 0 {
    ///             for (user_data, result) in ring.wait_timeout(Duration::from_millis(50))? {
    ///                 reaped.push((user_data, result?));
    ///             }
    ///         }
    ///         Ok::<_, std::io::Error>(reaped)
    ///     });
    ///     ring.add_nop(1)?;
    ///     ring.submit()?;
    ///     done.store(true, Ordering::Release);
    ///     assert_eq!(reaper.join().unwrap()?, [(1, 0)]);
    ///     Ok::<(), Box<dyn std::error::Error>>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// The kernel waits, with nanosecond resolution, where it can
    /// (`IORING_ENTER_EXT_ARG`, Linux 5.11); on older kernels the context
    /// waits with poll(2) on the ring fd instead, to the millisecond,
    /// rounded up.
    pub fn wait_timeout(
        &self,
        timeout: Duration,
    ) -> Result<impl Iterator<Item = (UserData, io::Result<u32>)> + '_> {
        Ok(self.wait_timeout_claims(timeout)?.map(as_item))
    }

    /// Like [`wait_timeout`](Self::wait_timeout), but yields each
    /// completion as a [`Completion`], with its flags, as
    /// [`wait_completions`](Self::wait_completions) does.
    pub fn wait_timeout_completions(
        &self,
        timeout: Duration,
    ) -> Result<impl Iterator<Item = Completion> + '_> {
        Ok(self.wait_timeout_claims(timeout)?.map(Completion::from))
    }

    /// [`wait_timeout`](Self::wait_timeout)'s waiting, and the iterator of
    /// what it claims.
    fn wait_timeout_claims(&self, timeout: Duration) -> Result<Completions<'_>> {
        self.check_process()?;
        let deadline = Deadline::after(timeout);
        loop {
            match self.submit() {
                Ok(()) | Err(Error::KernelBusy(_)) => {}
                Err(e) => return Err(e),
            }
            self.check_drops()?;
            if self.completion_ready() {
                break;
            }
            if self.cq.overflow_pending() {
                // Completions the ring had no room for: bring them in.
                self.flush_completions()?;
                continue;
            }
            let left = deadline.left();
            if left.is_zero() {
                break;
            }
            self.wait_for_completion(left)?;
        }
        Ok(Completions::new(self))
    }

    /// Blocks until a completion is posted or `timeout` passes: in the
    /// kernel with `IORING_ENTER_EXT_ARG` where the ring has it, else with
    /// poll(2) on the ring fd.
    fn wait_for_completion(&self, timeout: Duration) -> Result<()> {
        if !self.features.contains(crate::abi::FeatureFlags::EXT_ARG) {
            return self.poll_ring(timeout);
        }
        match self.enter_for(false, 1, IORING_ENTER_GETEVENTS, Some(timeout)) {
            Ok(_) => Ok(()),
            // Time is up, or a signal came: the caller looks again.
            Err(e) if is_errno(&e, libc::ETIME) || is_errno(&e, libc::EINTR) => Ok(()),
            // The kernel dropped completions (the caller reports that once)
            // and may refuse to wait from now on: poll instead.
            Err(e) if is_errno(&e, libc::EBADR) => self.poll_ring(timeout),
            Err(e) => Err(enter_error(e)),
        }
    }

    /// Reports completions the kernel dropped since the last report, once.
    #[inline]
    fn check_drops(&self) -> Result<()> {
        // The counter is almost always 0: look without the lock first.
        if self.cq.dropped() != 0 {
            return self.report_new_drops();
        }
        Ok(())
    }

    /// [`check_drops`](Self::check_drops) once the kernel has dropped some.
    #[cold]
    fn report_new_drops(&self) -> Result<()> {
        if lock(&self.state).cq.take_new_drops() {
            return Err(Error::CompletionsLost);
        }
        Ok(())
    }

    /// Whether a completion for the caller waits to be claimed: handed back
    /// by an iterator, or in the CQ ring. Completions of the context's own
    /// at the front of the ring are swallowed first, so that they never
    /// make `wait` return an empty iterator.
    #[inline]
    fn completion_ready(&self) -> bool {
        if self.returned.load(Ordering::Relaxed) > 0 {
            return true;
        }
        if self.cq.ready() == 0 {
            return false;
        }
        if self.internal_ops.load(Ordering::Relaxed) == 0 {
            return true;
        }
        self.completion_ready_past_own()
    }

    /// [`completion_ready`](Self::completion_ready) while operations of the
    /// context's own are in flight: swallows theirs at the front first.
    #[cold]
    fn completion_ready_past_own(&self) -> bool {
        let mut guard = lock(&self.state);
        let side = &mut *guard;
        side.table.swallow_own_at_front(&mut side.cq);
        let ready = side.table.has_unclaimed(&side.cq);
        self.unlock(guard);
        ready
    }

    /// Blocks until the ring fd polls readable (a completion was posted) or
    /// `timeout` passes, then enters the kernel to run completion work
    /// pending for this thread and bring back overflowed completions.
    pub(super) fn poll_ring(&self, timeout: Duration) -> Result<()> {
        match sys::poll_readable(&self.ring, millis_rounded_up(timeout)) {
            Err(e) if !is_errno(&e, libc::EINTR) => Err(Error::Poll(e)),
            _ => self.flush_completions(),
        }
    }

    /// Asks the kernel to move overflowed completions into the CQ ring (and
    /// run completion work it has pending for this thread).
    fn flush_completions(&self) -> Result<()> {
        loop {
            match self.enter(false, 0, IORING_ENTER_GETEVENTS) {
                Ok(_) => return Ok(()),
                Err(e) if is_errno(&e, libc::EINTR) => continue,
                Err(e) => return Err(enter_error(e)),
            }
        }
    }
}

//! [`Timeout`], [`TimeoutRemove`] and [`LinkTimeout`].

use std::time::Duration;

use super::{KeepAlive, KernelMemory, Operation, Prepared};
use crate::abi::{Sqe, URingOperation};
use crate::bindings::{
    __kernel_timespec, IORING_TIMEOUT_ABS, IORING_TIMEOUT_BOOTTIME, IORING_TIMEOUT_REALTIME,
};
use crate::Result;

/// The clock a timeout is measured on (`IORING_TIMEOUT_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Clock {
    /// `CLOCK_MONOTONIC`, the default: does not jump, stops in suspend.
    #[default]
    Monotonic,
    /// `CLOCK_BOOTTIME` (`IORING_TIMEOUT_BOOTTIME`, Linux 5.15): counts
    /// time in suspend too.
    Boottime,
    /// `CLOCK_REALTIME` (`IORING_TIMEOUT_REALTIME`, Linux 5.15): wall-clock
    /// time, for absolute deadlines.
    Realtime,
}

impl Clock {
    fn timeout_flags(self) -> u32 {
        match self {
            Clock::Monotonic => 0,
            Clock::Boottime => IORING_TIMEOUT_BOOTTIME,
            Clock::Realtime => IORING_TIMEOUT_REALTIME,
        }
    }
}

/// When a timer fires: after a duration, or at an absolute time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Timer {
    time: Duration,
    absolute: bool,
    clock: Clock,
}

impl Timer {
    fn after(time: Duration) -> Timer {
        Timer {
            time,
            absolute: false,
            clock: Clock::Monotonic,
        }
    }

    /// The SQE for `O`, pointing at the timespec it keeps alive, with the
    /// timer's flags.
    fn prepare<O: Operation>(self, count: u64) -> Prepared {
        let (timespec, at) = KernelMemory::new(__kernel_timespec {
            // Durations past i64::MAX seconds (292 billion years) saturate.
            tv_sec: i64::try_from(self.time.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(self.time.subsec_nanos()),
        });
        let mut sqe = Sqe::new(O::OPCODE);
        // The cast exposes the address's provenance, for a simulated kernel
        // that turns it back into a pointer.
        sqe.set_addr(at.as_ptr() as usize as u64);
        sqe.set_len(1);
        sqe.set_offset(count);
        let absolute = if self.absolute { IORING_TIMEOUT_ABS } else { 0 };
        sqe.set_op_flags(absolute | self.clock.timeout_flags());
        let keep_alive = KeepAlive {
            owned: Some(timespec),
            ..KeepAlive::default()
        };
        Prepared::new::<O>(sqe, keep_alive)
    }
}

/// `IORING_OP_TIMEOUT` (Linux 5.4): a timer on the ring.
///
/// Completes with `ETIME` when the time has passed, or with 0 once
/// [`count`](Self::count) other completions have been posted first (if a
/// count was set), or with `ECANCELED` when removed by
/// [`TimeoutRemove`] or [`AsyncCancel`](super::AsyncCancel). It pins no
/// caller memory: the context keeps the timespec the kernel reads.
///
/// ```
/// use std::time::{Duration, Instant};
/// use ringfence::op::Timeout;
/// use ringfence::URingContext;
///
/// let ring = URingContext::new(4, None)?;
/// let start = Instant::now();
/// ring.add(Timeout::new(Duration::from_millis(5)), 1)?;
/// let (user_data, result) = ring.wait()?.next().expect("one completion");
/// assert_eq!(user_data, 1);
/// assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::ETIME));
/// assert!(start.elapsed() >= Duration::from_millis(5));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Timeout {
    timer: Timer,
    count: u64,
}

impl Timeout {
    /// Fires `after` from when the kernel consumes the SQE (not from the
    /// add), with nanosecond resolution, on the monotonic clock.
    pub fn new(after: Duration) -> Timeout {
        Timeout {
            timer: Timer::after(after),
            count: 0,
        }
    }

    /// Fires at `deadline` instead, a time on the timeout's
    /// [`clock`](Self::clock) since that clock's epoch
    /// (`IORING_TIMEOUT_ABS`): for the monotonic clock, as
    /// `clock_gettime(CLOCK_MONOTONIC)` counts it.
    pub fn at(deadline: Duration) -> Timeout {
        Timeout {
            timer: Timer {
                absolute: true,
                ..Timer::after(deadline)
            },
            count: 0,
        }
    }

    /// The clock the time is measured on (Linux 5.15 for other than
    /// monotonic; older kernels complete the timeout with `EINVAL`).
    pub fn clock(mut self, clock: Clock) -> Timeout {
        self.timer.clock = clock;
        self
    }

    /// Completes early, with 0, once `count` other completions have been
    /// posted on the ring after this one was submitted (any operation's,
    /// the context's own wake-up nops included). 0, the default, means only
    /// the time counts.
    pub fn count(mut self, count: u32) -> Timeout {
        self.count = u64::from(count);
        self
    }
}

impl Operation for Timeout {
    const OPCODE: URingOperation = URingOperation::Timeout;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        Ok(self.timer.prepare::<Self>(self.count))
    }
}

/// `IORING_OP_TIMEOUT_REMOVE` (Linux 5.5): removes the [`Timeout`]s added
/// with a given user_data.
///
/// Acts on every timeout in flight with that user_data. Completes with 0 if
/// one was removed (it then completes with `ECANCELED`), `ENOENT` if none
/// is pending in the kernel, or `EALREADY` if it is already firing; with
/// several under one user_data, the result is the oldest one's, and the
/// others are removed alongside. The kernel refuses it with
/// `IOSQE_FIXED_FILE` (`EINVAL`), so a ring that requires `FIXED_FILE`
/// cannot remove timeouts this way: use [`AsyncCancel`](super::AsyncCancel),
/// which also finds timeouts.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutRemove {
    target_user_data: u64,
}

impl TimeoutRemove {
    /// Removes the timeouts added with user_data `target_user_data`.
    pub fn new(target_user_data: u64) -> TimeoutRemove {
        TimeoutRemove { target_user_data }
    }
}

impl Operation for TimeoutRemove {
    const OPCODE: URingOperation = URingOperation::TimeoutRemove;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        Ok(Prepared::targeting_label::<Self>(self.target_user_data))
    }
}

/// `IORING_OP_LINK_TIMEOUT` (Linux 5.5): a deadline for the operation
/// before it in a chain.
///
/// Added right after an operation linked with
/// [`OpBatch::add_linked`](crate::OpBatch::add_linked) (anywhere else the
/// add fails with [`Error::InvalidChain`](crate::Error::InvalidChain)). If
/// that operation has not completed within the time, the kernel cancels it
/// (it completes with `ECANCELED`, or with what it got so far) and the link
/// timeout completes with `ETIME`; if it completes first, the link timeout
/// completes with `ECANCELED`. The time counts from when the operation
/// starts.
#[derive(Clone, Copy, Debug)]
pub struct LinkTimeout {
    timer: Timer,
}

impl LinkTimeout {
    /// Cancels the linked operation if it has not completed `after` it
    /// started, with nanosecond resolution, on the monotonic clock.
    pub fn new(after: Duration) -> LinkTimeout {
        LinkTimeout {
            timer: Timer::after(after),
        }
    }

    /// The clock the time is measured on (see [`Timeout::clock`]).
    pub fn clock(mut self, clock: Clock) -> LinkTimeout {
        self.timer.clock = clock;
        self
    }
}

impl Operation for LinkTimeout {
    const OPCODE: URingOperation = URingOperation::LinkTimeout;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        Ok(self.timer.prepare::<Self>(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_points_at_a_timespec_it_keeps_with_its_count_and_flags() {
        let prepared = Timeout::new(Duration::new(3, 250))
            .count(7)
            .clock(Clock::Boottime)
            .prepare()
            .unwrap();
        assert!(prepared.keep_alive.owned.is_some(), "the timespec is kept");
        let kept = prepared.sqe.addr() as usize as *const __kernel_timespec;
        // SAFETY: the SQE's address is the timespec `owned` keeps, exposed
        // when it was written, and nothing writes it.
        let timespec = unsafe { &*kept };
        assert_eq!((timespec.tv_sec, timespec.tv_nsec), (3, 250));
        assert_eq!(prepared.sqe.len(), 1);
        assert_eq!(prepared.sqe.offset(), 7);
        assert_eq!(prepared.sqe.op_flags(), IORING_TIMEOUT_BOOTTIME);
        let absolute = Timeout::at(Duration::from_secs(1)).prepare().unwrap();
        assert_eq!(absolute.sqe.op_flags(), IORING_TIMEOUT_ABS);
    }
}

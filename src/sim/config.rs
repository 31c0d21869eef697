//! How a simulated kernel behaves ([`SimConfig`]), the faults it injects
//! ([`Fault`]) and what it counts ([`SimStats`]).

/// A fault the simulated kernel injects, in the order injected: each
/// `io_uring_enter` takes the next enter fault, and each completion that
/// overflows the CQ ring takes the next [`Fault::DropOverflow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// `io_uring_enter` fails with `EINTR` before doing anything, as when a
    /// signal arrives first.
    Interrupted,
    /// `io_uring_enter` submits, then a signal interrupts its wait: it
    /// returns the number submitted, or `EINTR` if that is 0.
    InterruptedWait,
    /// `io_uring_enter` fails with `EAGAIN` (no memory for requests).
    Again,
    /// `io_uring_enter` fails with `EBUSY` (completions backed up).
    Busy,
    /// `io_uring_enter` consumes at most this many SQEs.
    ShortSubmit(u32),
    /// The next completion that does not fit in the CQ ring is dropped even
    /// with `IORING_FEAT_NODROP`, as when the kernel cannot allocate an
    /// overflow entry: the overflow counter rises and, from then on, every
    /// `io_uring_enter` that would wait fails with `EBADR`.
    DropOverflow,
}

/// How a [`SimKernel`](super::SimKernel) behaves.
#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    /// Advertise `IORING_FEAT_NODROP`: completions that do not fit in the CQ
    /// ring wait on an overflow list instead of being dropped.
    pub nodrop: bool,
    /// Advertise `IORING_FEAT_EXT_ARG` and take a timeout with
    /// `io_uring_enter` (`IORING_ENTER_EXT_ARG`, Linux 5.11): without it,
    /// [`wait_timeout`](crate::URingContext::wait_timeout) waits with poll.
    pub ext_arg: bool,
    /// Hold the completions of nops, reads, writes, fsyncs and fallocates
    /// back, and release them in a random order: some whenever a thread
    /// waits for a completion and none is ready, or when
    /// [`SimKernel::complete_deferred`](super::SimKernel::complete_deferred) is called. Operations carrying
    /// `IOSQE_ASYNC` are always held back.
    pub defer_completions: bool,
    /// Seeds the choices made at random (which completions to release, and
    /// in which order).
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodrop: true,
            ext_arg: true,
            defer_completions: false,
            seed: 0x5eed,
        }
    }
}

/// What a [`SimKernel`](super::SimKernel) has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// `io_uring_enter` calls.
    pub enters: u64,
    /// SQEs consumed.
    pub sqes_consumed: u64,
    /// CQEs written into a CQ ring, directly or from the overflow list.
    pub completions_posted: u64,
    /// Completions put on an overflow list.
    pub overflowed: u64,
    /// Completions dropped.
    pub dropped: u64,
    /// Faults taken from the queue filled by [`SimKernel::inject`](super::SimKernel::inject).
    pub faults_injected: u64,
    /// Operations a ring still held (pending polls, held-back work) when it
    /// was closed: a drain that finished leaves none.
    pub abandoned: u64,
}

//! The handles: [`Driver`], shared by everything that uses the ring, and
//! how a ring is driven (a thread of the driver's own, or the caller's
//! loop with [`ManualDriver`]).

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ringfence::{URingAllowlist, URingContext};

use crate::doorbell::Doorbell;
use crate::shared::{lock, Shared};

/// A handle to a ring and the driver that submits its operations and hands
/// their completions to the futures waiting for them.
///
/// Cheap to clone: every clone, every I/O object and every future made
/// from it share one ring. When the last one is dropped, the driver thread
/// stops, the ring is closed (operations still in flight are cancelled,
/// and waited for up to 5 s), and what their operations owned is freed, or
/// leaked if the kernel did not finish with it in that time. That drop
/// blocks for as long (inside a task, it blocks the executor's thread):
/// drop the last handle outside async code where that matters.
///
/// ```
/// use ringfence_async::{Driver, File};
///
/// let driver = Driver::new(32)?;
/// let file = File::from_std(&driver, tempfile::tempfile()?);
/// let (written, _) = futures::executor::block_on(file.write_at(b"hello".to_vec(), 0));
/// assert_eq!(written?, 5);
/// let (read, buf) = futures::executor::block_on(file.read_at(Vec::with_capacity(16), 0));
/// assert_eq!(read?, 5);
/// assert_eq!(buf, b"hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Driver {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.doorbell.ring();
        if let Some(thread) = self.thread.take() {
            // The driver thread itself may drop the last handle (a waker
            // it wakes can own a future): it then exits by itself.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl Driver {
    /// A ring of `entries` submission entries (`io_uring_setup(2)`; the
    /// kernel rounds up to a power of two, at most
    /// [`MAX_ENTRIES`](ringfence::MAX_ENTRIES)), with no allowlist, and a
    /// driver thread.
    ///
    /// `entries` bounds the operations queued between two turns of the
    /// driver; the operations in the kernel at once are bounded by
    /// [`URingContext::max_in_flight`] (16 times the completion ring with
    /// `IORING_FEAT_NODROP`, Linux 5.5), less two places the driver keeps
    /// for its doorbell and a cancellation. Past either bound a future
    /// waits for room; it never fails for want of it.
    ///
    /// The driver thread runs the callers' wakers, and the `Drop` of
    /// buffers (and the closing of descriptors) of operations whose
    /// futures were dropped early: these must not block on this driver's
    /// operations. A panic in one is caught and reported by
    /// [`take_last_error`](Self::take_last_error).
    ///
    /// Fails as [`URingContext::new`] does (the error converted to
    /// `io::Error`, errno kept), or if the eventfd or the thread cannot be
    /// made.
    pub fn new(entries: usize) -> io::Result<Driver> {
        DriverBuilder::new(URingContext::new(entries, None)?).spawn()
    }

    /// A ring restricted to `allowlist` (`IORING_REGISTER_RESTRICTIONS`,
    /// Linux 5.10), and a driver thread.
    ///
    /// Besides the operations the caller uses, the driver uses:
    /// `PollAdd` to wake itself when another thread queues an operation
    /// (a multishot poll, Linux 5.13; without it, or on an older kernel,
    /// it looks every millisecond instead), and `AsyncCancel`
    /// to cancel the operation of a future dropped early (without it, the
    /// operation runs to its end, still owning its buffer). An operation
    /// the allowlist does not allow fails at once, with an error saying so
    /// ([`NotAllowed`](crate::NotAllowed)).
    pub fn with_allowlist(entries: usize, allowlist: &URingAllowlist) -> io::Result<Driver> {
        DriverBuilder::new(URingContext::new(entries, Some(allowlist))?)
            .allowlist(allowlist)
            .spawn()
    }

    /// A driver for a context made otherwise ([`URingContext::builder`]:
    /// SQPOLL, registered buffers, more completion entries), with options.
    /// For a context created with an allowlist, pass that allowlist to
    /// [`DriverBuilder::allowlist`]: otherwise an operation outside it
    /// fails with the kernel's bare `EACCES`, and the driver learns only
    /// from that refusal that its doorbell's poll is not allowed.
    pub fn builder(ctx: URingContext) -> DriverBuilder {
        DriverBuilder::new(ctx)
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Operations started through this driver whose completion has not yet
    /// been taken by their future: in the kernel, completed and waiting, or
    /// abandoned by a dropped future and waiting for the kernel to finish.
    /// What they own is alive, and is freed as each leaves this count.
    /// Futures still waiting for room in the ring are not counted.
    pub fn in_flight(&self) -> usize {
        self.shared().in_flight()
    }

    /// One of the ring's registered buffers ([`URingBuilder::buffers`](ringfence::URingBuilder::buffers)),
    /// for [`File::read_fixed`](crate::File::read_fixed) and
    /// [`File::write_fixed`](crate::File::write_fixed); `None` when every
    /// one is held (or the ring has none). Dropping the [`FixedBuf`](crate::FixedBuf)
    /// gives it back.
    pub fn fixed_buffer(&self) -> Option<crate::FixedBuf> {
        let buffer = self.shared().take_fixed()?;
        Some(crate::FixedBuf::new(self.clone(), buffer))
    }

    /// Takes the last error the driver thread met since the last call, if
    /// any: `io_uring_enter` failing for a reason it cannot retry by itself
    /// (the errno kept; the thread tries again 10 ms later), or a waker or
    /// buffer `Drop` that panicked on the driver thread (kind `Other`; the
    /// driver carries on with the next one).
    pub fn take_last_error(&self) -> Option<io::Error> {
        lock(&self.shared().last_error).take()
    }
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// How to drive a context: [`Driver::builder`].
pub struct DriverBuilder {
    ctx: URingContext,
    allowlist: Option<URingAllowlist>,
    #[cfg(feature = "sim")]
    sim: Option<ringfence::sim::SimKernel>,
}

impl DriverBuilder {
    fn new(ctx: URingContext) -> DriverBuilder {
        DriverBuilder {
            ctx,
            allowlist: None,
            #[cfg(feature = "sim")]
            sim: None,
        }
    }

    /// The allowlist the context was created with: operations it does not
    /// allow then fail before reaching the kernel, with an error that says
    /// so, and the driver does without the operations it lacks (see
    /// [`Driver::with_allowlist`]).
    pub fn allowlist(mut self, allowlist: &URingAllowlist) -> DriverBuilder {
        self.allowlist = Some(allowlist.clone());
        self
    }

    /// The context is a ring of this simulated kernel (made by
    /// [`SimKernel::new_context`](ringfence::sim::SimKernel::new_context)
    /// of the same kernel): the doorbell is one of its pollables instead
    /// of an eventfd.
    #[cfg(feature = "sim")]
    pub fn sim(mut self, kernel: &ringfence::sim::SimKernel) -> DriverBuilder {
        self.sim = Some(kernel.clone());
        self
    }

    fn shared(self) -> io::Result<Arc<Shared>> {
        #[cfg(feature = "sim")]
        let doorbell = match &self.sim {
            Some(kernel) => Doorbell::sim(kernel),
            None => Doorbell::eventfd()?,
        };
        #[cfg(not(feature = "sim"))]
        let doorbell = Doorbell::eventfd()?;
        Ok(Arc::new(Shared::new(self.ctx, self.allowlist, doorbell)))
    }

    /// Starts the driver thread, which makes every `io_uring_enter` call
    /// of this ring: operations are then tied to that thread (the kernel
    /// cancels an operation when the thread that submitted it exits), not
    /// to whichever thread polled the future.
    pub fn spawn(self) -> io::Result<Driver> {
        let shared = self.shared()?;
        let thread = std::thread::Builder::new()
            .name("ringfence-driver".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || drive(&shared)
            })?;
        Ok(Driver {
            handle: Arc::new(Handle {
                shared,
                thread: Some(thread),
            }),
        })
    }

    /// No thread: the caller drives the ring with
    /// [`ManualDriver::turn`], on a thread that outlives the operations
    /// (see [`spawn`](Self::spawn) for why).
    pub fn manual(self) -> io::Result<(Driver, ManualDriver)> {
        let shared = self.shared()?;
        let driver = Driver {
            handle: Arc::new(Handle {
                shared: Arc::clone(&shared),
                thread: None,
            }),
        };
        Ok((driver, ManualDriver { shared }))
    }
}

/// The driver thread's loop.
fn drive(shared: &Shared) {
    while !shared.shutdown.load(Ordering::SeqCst) {
        let turned = shared.turn(None);
        if let Some(panic) = shared.take_panic() {
            let what = panic_message(&*panic);
            *lock(&shared.last_error) = Some(io::Error::other(format!(
                "a waker or a buffer's drop panicked on the driver thread: {what}"
            )));
        }
        if let Err(err) = turned {
            *lock(&shared.last_error) = Some(err.into());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A panic's message, when it is a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    match panic.downcast_ref::<&str>() {
        Some(message) => message,
        None => panic
            .downcast_ref::<String>()
            .map_or("(not a string)", String::as_str),
    }
}

/// Drives a ring from the caller's own loop ([`DriverBuilder::manual`]):
/// no driver thread, so no hop between threads for each operation. The
/// thread that turns it makes the `io_uring_enter` calls, so it must
/// outlive the operations (the kernel cancels an operation when the
/// thread that submitted it exits).
///
/// ```
/// use std::task::{Context, Poll};
/// use ringfence::URingContext;
/// use ringfence_async::{Driver, File};
///
/// let (driver, manual) = Driver::builder(URingContext::new(8, None)?).manual()?;
/// let file = File::from_std(&driver, tempfile::tempfile()?);
/// let mut write = file.write_at(b"turned by hand".to_vec(), 0);
/// let waker = futures::task::noop_waker();
/// let mut cx = Context::from_waker(&waker);
/// let written = loop {
///     // Poll the future (it queues its SQE), then turn: submit and reap.
///     if let Poll::Ready((written, _buf)) = std::pin::Pin::new(&mut write).poll(&mut cx) {
///         break written?;
///     }
///     manual.turn(None)?;
/// };
/// assert_eq!(written, 14);
/// # use std::future::Future;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ManualDriver {
    shared: Arc<Shared>,
}

impl ManualDriver {
    /// Submits what the futures queued, waits until a completion arrives,
    /// another thread queues an operation, or `timeout` passes (`None`:
    /// no limit; `Some(Duration::ZERO)`: only look), and wakes the futures
    /// whose operations completed. It returns after a millisecond at most
    /// while futures wait for room or cancellations for a place, or when
    /// the ring runs no doorbell (its allowlist lacks `PollAdd`). Returns how many completions it
    /// handed over (the driver's own included).
    ///
    /// Errors are [`URingContext::submit`]'s and [`URingContext::wait`]'s.
    /// Wakers and the `Drop`s of buffers whose futures were dropped run in
    /// here; if one panics, the turn still wakes every other future, then
    /// resumes that panic.
    pub fn turn(&self, timeout: Option<Duration>) -> ringfence::Result<usize> {
        let turned = self.shared.turn(timeout);
        if let Some(panic) = self.shared.take_panic() {
            std::panic::resume_unwind(panic);
        }
        turned
    }
}

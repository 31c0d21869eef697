//! [`Op`]: one io_uring operation as a future, owning what the kernel uses
//! until the kernel is done with it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use ringfence::op::Operation;

use crate::driver::Driver;
use crate::shared::Start;
use crate::table::{InFlight, Key};

/// One operation: what it owns while in flight, how it becomes the
/// context's operation, and what its future returns.
pub(crate) trait OpSpec: Send + Sized + 'static {
    /// The context's operation.
    type Kernel: Operation;
    /// What the future returns.
    type Output;

    /// The context's operation, pointing into `self` where the kernel
    /// reads or writes; an error (a bad offset, say) fails the future
    /// without reaching the kernel.
    ///
    /// # Safety
    ///
    /// The caller keeps `self` where it is (in its box), and neither moves
    /// nor touches it, from this call until the kernel is done with the
    /// operation: its completion has arrived, or the context refused to add
    /// it. Only then may `self` be moved or dropped; otherwise it is leaked.
    unsafe fn kernel_op(&mut self) -> ringfence::Result<Self::Kernel>;

    /// The output for the operation's result (a negative result is the
    /// `Err`).
    fn finish(self, result: io::Result<u32>) -> Self::Output;

    /// The output when the operation never reached the kernel.
    fn fail(self, err: io::Error) -> Self::Output {
        self.finish(Err(err))
    }

    /// The operation completed after its future was dropped: release what
    /// the result carries (an accept's descriptor).
    fn abandoned(self, result: io::Result<u32>) {
        let _ = result;
    }
}

impl<S: OpSpec> InFlight for S {
    fn abandoned(self: Box<Self>, result: io::Result<u32>) {
        OpSpec::abandoned(*self, result);
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

/// A future of one io_uring operation.
///
/// The operation is queued when the future is first polled, and submitted
/// by the driver. Until its completion, the operation's buffer (and file)
/// are owned by the driver's table, not by the future: dropping the future
/// then cancels the operation (`IORING_OP_ASYNC_CANCEL`, where the
/// allowlist allows it) and the driver frees the buffer once the kernel's
/// completion arrives. `mem::forget` of the future leaks the buffer (and
/// its handle to the driver, which keeps the ring); it
/// never frees it early.
#[must_use = "an operation does nothing until polled"]
pub(crate) struct Op<S: OpSpec> {
    driver: Driver,
    state: State<S>,
}

enum State<S> {
    /// Not yet queued.
    Idle(Box<S>),
    InFlight(Key),
    Done,
}

impl<S: OpSpec> Op<S> {
    pub(crate) fn new(driver: &Driver, spec: S) -> Op<S> {
        Op {
            driver: driver.clone(),
            state: State::Idle(Box::new(spec)),
        }
    }
}

impl<S: OpSpec> Future for Op<S> {
    type Output = S::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<S::Output> {
        let this = self.get_mut();
        let shared = this.driver.shared();
        match std::mem::replace(&mut this.state, State::Done) {
            State::Idle(spec) => {
                let epoch = shared.room_epoch();
                match shared.start(spec, cx.waker()) {
                    Start::InFlight(key) => this.state = State::InFlight(key),
                    Start::NoRoom(spec) => {
                        this.state = State::Idle(spec);
                        shared.wait_for_room(epoch, cx.waker());
                    }
                    Start::Failed(spec, err) => return Poll::Ready(spec.fail(err)),
                }
                Poll::Pending
            }
            State::InFlight(key) => match shared.poll::<S>(key, cx.waker()) {
                Some((result, spec)) => Poll::Ready(spec.finish(result)),
                None => {
                    this.state = State::InFlight(key);
                    Poll::Pending
                }
            },
            State::Done => panic!("an io_uring operation's future was polled after it completed"),
        }
    }
}

impl<S: OpSpec> Drop for Op<S> {
    fn drop(&mut self) {
        if let State::InFlight(key) = self.state {
            self.driver.shared().abandon(key);
        }
    }
}

impl<S: OpSpec> std::fmt::Debug for Op<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Idle(_) => "idle",
            State::InFlight(_) => "in flight",
            State::Done => "done",
        };
        f.debug_struct("Op")
            .field("op", &<S::Kernel as Operation>::OPCODE)
            .field("state", &state)
            .finish()
    }
}

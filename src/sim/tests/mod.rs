//! The ring core on the simulated kernel: every operation the model knows,
//! every fault it injects, the bookkeeping of operations in flight, and
//! threads posting completions while others add. These run natively with
//! `cargo test` and under Miri (`cargo +nightly miri test`), which checks
//! the core's pointer arithmetic, its memory ordering against the simulated
//! kernel's, and that every pinned iovec array is freed exactly once and
//! nothing leaks.
//!
//! - `operations.rs`: what each operation does, restrictions, register
//!   calls, batches;
//! - `faults.rs`: injected faults, overflow, completions held back;
//! - `bookkeeping.rs`: labels, what counts as in flight, iterators stopped
//!   short, dropped or forgotten, completions the context did not issue;
//! - `chains.rs`: timeouts and linked chains;
//! - `lifecycle.rs`: drop and `close`;
//! - `multishot.rs`: operations that complete more than once;
//! - `removals.rs`: cancelling by file or everything, poll updates;
//! - `threads.rs`: several threads on one ring (the tests Miri runs under
//!   many scheduler seeds have `another_thread` in their names).
//!
//! `wait()` blocks until a completion is ready, also with nothing in
//! flight; on the simulated kernel a wait that can never be satisfied
//! panics after a 30 s watchdog. Tests only call it when something will
//! complete, and use `wait_timeout` otherwise.

mod bookkeeping;
mod chains;
mod faults;
mod lifecycle;
mod multishot;
mod operations;
mod removals;
mod threads;

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::time::Duration;

use super::{model, SimKernel};
use crate::op::Target;
use crate::{Error, IoBufMut, URingContext};

/// `native` iterations natively, `miri` under Miri, which is far slower.
const fn scaled(native: usize, miri: usize) -> usize {
    if cfg!(miri) {
        miri
    } else {
        native
    }
}

/// How long a threaded test may take before it fails instead of hanging.
const TEST_DEADLINE: Duration = Duration::from_secs(30);

/// Pins iovecs over `bufs` the way `add_readv` / `add_writev` take them.
///
/// # Safety
///
/// Each buffer must outlive the operation the iovecs go to and not be used
/// until its completion is reaped.
unsafe fn iovecs(bufs: &mut [&mut Vec<u8>]) -> Pin<Box<[IoBufMut<'static>]>> {
    let iovecs: Vec<_> = bufs
        .iter_mut()
        // SAFETY: forwarded from the caller.
        .map(|buf| unsafe { IoBufMut::from_raw_parts(buf.as_mut_ptr(), buf.len()) })
        .collect();
    Box::into_pin(iovecs.into_boxed_slice())
}

/// A simulated descriptor as an operation target.
fn raw(fd: RawFd) -> Target {
    // SAFETY: simulated descriptors live as long as their kernel, which
    // outlives every ring of a test.
    unsafe { Target::from_raw_fd(fd) }
}

/// Reaps exactly `count` completions with `wait`, in the order they are
/// yielded. Gives up after a bounded number of waits rather than hang; only
/// call it when `count` completions will come (`wait` blocks).
fn reap_in_order(ring: &URingContext, count: usize) -> Vec<(u64, io::Result<u32>)> {
    let mut reaped = Vec::new();
    for _ in 0..10 * count + 10 {
        if reaped.len() >= count {
            break;
        }
        reaped.extend(ring.wait().expect("wait"));
    }
    assert_eq!(reaped.len(), count, "completions: {reaped:?}");
    reaped
}

/// Reaps exactly `count` completions, keyed by user_data; each must come
/// once, and nothing may be left in flight.
fn reap(ring: &URingContext, count: usize) -> HashMap<u64, io::Result<u32>> {
    let mut reaped = HashMap::new();
    for (user_data, result) in reap_in_order(ring, count) {
        assert!(
            reaped.insert(user_data, result).is_none(),
            "user_data {user_data} completed twice"
        );
    }
    assert_eq!(ring.in_flight(), 0);
    reaped
}

/// The labels of `completions`, in order.
fn labels<'a>(completions: impl IntoIterator<Item = &'a (u64, io::Result<u32>)>) -> Vec<u64> {
    completions.into_iter().map(|(label, _)| *label).collect()
}

fn errno(result: &io::Result<u32>) -> Option<i32> {
    result.as_ref().err().and_then(io::Error::raw_os_error)
}

/// Adds nops `0..count` without reaping, submitting one SQ-full at a time.
fn add_without_reaping(ring: &URingContext, count: u64) {
    for user_data in 0..count {
        if let Err(Error::NoSpace) = ring.add_nop(user_data) {
            ring.submit().unwrap();
            ring.add_nop(user_data).unwrap();
        }
    }
    ring.submit().unwrap();
}

/// The id of the one ring created in `kernel` (tests that look inside the
/// model use one ring per kernel).
fn only_ring(world: &super::World) -> usize {
    assert_eq!(world.rings.len(), 1, "the test made one ring");
    0
}

/// Whether the simulated ring fd polls readable now: the condition the
/// simulated `poll_readable` returns on without blocking.
fn ring_fd_readable(kernel: &SimKernel) -> bool {
    let mut world = kernel.shared.world();
    let id = only_ring(&world);
    model::ring_mut(&mut world, id).readable()
}

/// The user_data (the context's identities) of the SQEs the kernel holds
/// back, oldest first.
fn held_back_identities(kernel: &SimKernel) -> Vec<u64> {
    let mut world = kernel.shared.world();
    let id = only_ring(&world);
    let ring = model::ring_mut(&mut world, id);
    ring.deferred.iter().map(|sqe| sqe.user_data()).collect()
}

/// Posts a CQE with `user_data` and `res` into the ring as the kernel
/// would, without any SQE behind it: what another ring's `msg_ring` does.
fn post_foreign_cqe(kernel: &SimKernel, user_data: u64, res: i32) {
    let mut world = kernel.shared.world();
    let id = only_ring(&world);
    model::post(&mut world, id, user_data, res);
    drop(world);
    kernel.shared.posted.notify_all();
}

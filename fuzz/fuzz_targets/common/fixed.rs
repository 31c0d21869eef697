//! The registered-buffer operations, built the same way by every target:
//! on a ring with no registered buffers, so that the kernel fails each
//! (with `EFAULT`; the simulated one, which models no registered buffers,
//! with `EOPNOTSUPP`) and touches no memory. tests/setup.rs runs them on
//! real buffers.

use std::ptr::NonNull;

use ringfence::op::{ReadFixed, ReadvFixed, Target, WriteFixed, WritevFixed};
use ringfence::{RegisteredBuffer, URingOperation};

use super::model::{Adder, Spec};
use super::pool::BUF_LEN;

/// Whether `opcode` is a registered-buffer operation (the ones [`push`]
/// builds).
pub fn is_fixed(opcode: URingOperation) -> bool {
    matches!(
        opcode,
        URingOperation::ReadFixed
            | URingOperation::WriteFixed
            | URingOperation::ReadvFixed
            | URingOperation::WritevFixed
    )
}

/// Pushes the registered-buffer operation `opcode` on `target`, through
/// buffer index 0 (which nothing is registered at), checked as `spec`.
pub fn push<K>(opcode: URingOperation, target: Target, spec: Spec<K>, adder: &mut Adder<'_, K>) {
    let buffer = RegisteredBuffer::from_raw_parts(
        0,
        NonNull::slice_from_raw_parts(NonNull::dangling(), BUF_LEN),
    );
    let (whole, halves) = (0..BUF_LEN, [0..BUF_LEN / 2, BUF_LEN / 2..BUF_LEN]);
    match opcode {
        URingOperation::ReadFixed => {
            let op = ReadFixed::new(target, buffer, whole, Some(0));
            adder.push(op.expect("a valid range"), spec);
        }
        URingOperation::WriteFixed => {
            let op = WriteFixed::new(target, buffer, whole, Some(0));
            adder.push(op.expect("a valid range"), spec);
        }
        URingOperation::ReadvFixed => {
            let op = ReadvFixed::new(target, buffer, &halves, Some(0));
            adder.push(op.expect("valid ranges"), spec);
        }
        URingOperation::WritevFixed => {
            let op = WritevFixed::new(target, buffer, &halves, Some(0));
            adder.push(op.expect("valid ranges"), spec);
        }
        other => unreachable!("{other:?} is not a registered-buffer operation"),
    }
}

/// What the real kernel completes `opcode` with on a ring with no
/// registered buffers: `EFAULT`, or `EINVAL` on a kernel older than the
/// operation.
#[allow(dead_code)] // The simulated kernel's target has its own answer.
pub fn without_buffers(opcode: URingOperation) -> i32 {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let mut next = || {
        parts
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .expect("a version")
    };
    if (next(), next()) < opcode.since() {
        libc::EINVAL
    } else {
        libc::EFAULT
    }
}

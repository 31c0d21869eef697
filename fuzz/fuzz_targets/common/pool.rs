//! The buffers readv and writev use: one `BUF_LEN` slot per label of
//! `model::LABELS`, living for the whole process.
//!
//! Why handing a slot to the kernel is sound: only an operation that pins
//! caller memory is given its label's slot (the model's `Adder::push`
//! checks `Operation::PINS_CALLER_MEMORY`), and the context refuses to let
//! such an operation share its label with any other operation in flight
//! (`DuplicateUserData`), so at most one operation in flight uses a slot. A
//! target reads or writes a slot itself only while no operation that pins
//! it is in flight (`Adder::slot_free`, or in `Model::finished` for the
//! operation that just completed). Labels map to slots one to one.

use std::pin::Pin;
use std::sync::OnceLock;

use ringfence::IoBufMut;

use super::model::{label_index, LABELS};

/// Every buffer is this long.
pub const BUF_LEN: usize = 256;

/// The start of the pool, leaked.
fn pool() -> *mut u8 {
    static POOL: OnceLock<usize> = OnceLock::new();
    let base = *POOL.get_or_init(|| {
        let pool = vec![0u8; BUF_LEN * LABELS.len()].into_boxed_slice();
        Box::leak(pool).as_mut_ptr() as usize
    });
    base as *mut u8
}

fn slot_ptr(label: u64) -> *mut u8 {
    // SAFETY: the pool holds one BUF_LEN slot per label, and `label_index`
    // is below LABELS.len(), so the offset stays inside it.
    unsafe { pool().add(BUF_LEN * label_index(label)) }
}

/// A one-iovec array over the slot of `label`, for a readv or writev with
/// that label (see the module docs for why that is sound).
pub fn iovecs(label: u64) -> Pin<Box<[IoBufMut<'static>]>> {
    // SAFETY: the pool is leaked, so the slot lives forever; the label rule
    // keeps it to this operation while it is in flight, and the target
    // touches it only while no such operation is (module docs).
    Box::pin([unsafe { IoBufMut::from_raw_parts(slot_ptr(label), BUF_LEN) }])
}

/// The slot of `label`, to fill before an operation or check after its
/// completion.
///
/// # Safety
///
/// No operation that pins memory may be in flight with this label, and the
/// slice must be gone before one is added.
pub unsafe fn slot(label: u64) -> &'static mut [u8] {
    // SAFETY: the slot is BUF_LEN bytes of leaked, initialised memory; the
    // caller guarantees the kernel is not using it, and a target holds at
    // most one reference to a slot at a time.
    unsafe { std::slice::from_raw_parts_mut(slot_ptr(label), BUF_LEN) }
}

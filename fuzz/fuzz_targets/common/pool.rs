//! The buffers readv and writev use: one `BUF_LEN` slot per label of
//! `model::LABELS`, living for the whole process.
//!
//! Why handing a slot to the kernel is sound: only an operation that pins
//! caller memory is given its label's slot (the model's `Adder::push`
//! checks `Operation::PINS_CALLER_MEMORY`), and the context refuses to let
//! such an operation share its label with any other operation in flight
//! (`DuplicateUserData`), so at most one operation in flight uses a slot. A
//! target touches a slot itself only through [`fill_slot`] (while no
//! operation that pins it is in flight, `Adder::slot_free`) and
//! [`Completed::slot`] (once every operation under its label has
//! completed). Labels map to slots one to one.

use std::pin::Pin;
use std::sync::OnceLock;

use ringfence::IoBufMut;

use super::model::{label_index, Adder, LABELS};

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

/// The slot of `label` as one buffer, for a one-buffer read, write, send
/// or recv with that label (sound for the same reason as [`iovecs`]).
#[allow(dead_code)] // Used by some targets only.
pub fn buf(label: u64) -> IoBufMut<'static> {
    // SAFETY: as in `iovecs`.
    unsafe { IoBufMut::from_raw_parts(slot_ptr(label), BUF_LEN) }
}

/// The slot of `label` as a statx buffer (256 bytes, as the slot is), for
/// an operation added with `Spec::slot`. Never dereferenced here; the
/// kernel copies into it byte-wise.
#[allow(dead_code)] // Used by some targets only.
pub fn statx_buf(label: u64) -> *mut libc::statx {
    const _: () = assert!(size_of::<libc::statx>() <= BUF_LEN);
    slot_ptr(label).cast()
}

/// Fills the slot of `adder`'s label with `fill` before the add, unless an
/// operation that pins the slot is in flight (the add is then refused with
/// `DuplicateUserData`, and the slot is the kernel's).
pub fn fill_slot<K>(adder: &Adder<'_, K>, fill: impl FnOnce(&mut [u8])) {
    if !adder.slot_free() {
        return;
    }
    // SAFETY: the slot is BUF_LEN bytes of leaked, initialised memory; no
    // operation that pins it is in flight (`slot_free`), and none is added
    // while `fill` runs: adds go through `adder`, borrowed here, and the
    // slice cannot outlive the call.
    fill(unsafe { std::slice::from_raw_parts_mut(slot_ptr(adder.label()), BUF_LEN) });
}

/// A label whose operations have all completed, as `Model::finished` gets
/// it: its slot holds what the last operation that pinned it left there.
///
/// Invariant: while the value lives, no operation with the label is in
/// flight and no `Adder` exists (so neither the kernel nor [`fill_slot`]
/// writes the slot).
pub struct Completed {
    label: u64,
}

impl Completed {
    /// # Safety
    ///
    /// No operation with `label` may be in flight, and no `Adder` may be
    /// made, while the value lives.
    pub unsafe fn new(label: u64) -> Completed {
        Completed { label }
    }

    #[allow(dead_code)] // Used by some targets only.
    pub fn label(&self) -> u64 {
        self.label
    }

    /// What the label's slot holds.
    pub fn slot(&self) -> &[u8] {
        // SAFETY: the slot is BUF_LEN bytes of leaked, initialised memory,
        // and nothing writes it while `self`, which the slice borrows, lives
        // (the type's invariant).
        unsafe { std::slice::from_raw_parts(slot_ptr(self.label), BUF_LEN) }
    }
}

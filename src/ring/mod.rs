//! The unsafe core: the only code that reads or writes ring memory.
//!
//! [`RingMemory`] owns the three mappings a ring needs.
//! [`SubmissionQueue`] and [`CompletionQueue`] hold pointers into them,
//! computed once by [`QueuePointers`] from the offsets the kernel reported
//! and checked against the mapping lengths. The context owns the memory and
//! both queues, and drops the memory last.

mod complete;
mod submit;

pub(crate) use complete::{CompletionQueue, CqIndices};
pub(crate) use submit::{SqIndices, SubmissionQueue};

use std::io;
use std::mem::{align_of, size_of};

use crate::bindings::{
    io_uring_cqe, io_uring_params, io_uring_sqe, IORING_OFF_CQ_RING, IORING_OFF_SQES,
    IORING_OFF_SQ_RING,
};
use crate::sys::{Mapping, Ring};

/// The ring's three shared mappings: the SQ ring (head, tail, flags, index
/// array), the CQ ring (head, tail, CQEs) and the SQE array.
pub(crate) struct RingMemory {
    sq_ring: Mapping,
    cq_ring: Mapping,
    sqes: Mapping,
}

impl RingMemory {
    /// Maps the rings of `ring` with the sizes `params` (as filled in by
    /// `io_uring_setup`) implies.
    pub(crate) fn map(ring: &Ring, params: &io_uring_params) -> io::Result<RingMemory> {
        let sq_len = params.sq_off.array as usize + params.sq_entries as usize * size_of::<u32>();
        let cq_len =
            params.cq_off.cqes as usize + params.cq_entries as usize * size_of::<io_uring_cqe>();
        let sqes_len = params.sq_entries as usize * size_of::<io_uring_sqe>();
        Ok(RingMemory {
            sq_ring: Mapping::new(ring, IORING_OFF_SQ_RING.into(), sq_len)?,
            cq_ring: Mapping::new(ring, IORING_OFF_CQ_RING.into(), cq_len)?,
            sqes: Mapping::new(ring, IORING_OFF_SQES.into(), sqes_len)?,
        })
    }
}

/// Checked pointer arithmetic into one mapping at kernel-reported offsets.
struct QueuePointers<'a> {
    map: &'a Mapping,
}

impl<'a> QueuePointers<'a> {
    fn new(map: &'a Mapping) -> Self {
        QueuePointers { map }
    }

    /// A pointer to `count` values of `T` at byte `offset`, after checking
    /// that they lie inside the mapping and are aligned for `T`.
    fn array<T>(&self, offset: u32, count: u32) -> io::Result<*mut T> {
        let offset = offset as usize;
        let bytes = (count as usize).checked_mul(size_of::<T>());
        let in_bounds = bytes
            .and_then(|b| offset.checked_add(b))
            .is_some_and(|end| end <= self.map.len());
        if !in_bounds || offset % align_of::<T>() != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the kernel reported a ring offset outside its mapping",
            ));
        }
        // SAFETY: `offset` is within the mapping (checked above), so the
        // result stays inside the same allocation.
        Ok(unsafe { self.map.as_ptr().add(offset) }.cast())
    }

    /// A pointer to one `T` at byte `offset`, checked like [`Self::array`].
    fn field<T>(&self, offset: u32) -> io::Result<*mut T> {
        self.array(offset, 1)
    }

    /// Reads a `u32` the kernel wrote once at setup and never changes
    /// (`ring_mask`, `ring_entries`).
    fn constant(&self, offset: u32) -> io::Result<u32> {
        let ptr = self.field::<u32>(offset)?;
        // SAFETY: `ptr` is in bounds and aligned (checked by `field`); the
        // value was written by the kernel before `io_uring_setup` returned and
        // is never written again, so a plain read does not race.
        Ok(unsafe { ptr.read() })
    }

    /// Reads `ring_entries` and `ring_mask` at the given offsets and checks
    /// that they agree with each other and with `expected` entries.
    fn ring_size(
        &self,
        entries_at: u32,
        mask_at: u32,
        expected: u32,
        what: &str,
    ) -> io::Result<u32> {
        let entries = self.constant(entries_at)?;
        let mask = self.constant(mask_at)?;
        if !entries.is_power_of_two() || mask != entries - 1 || entries != expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("inconsistent {what} ring size"),
            ));
        }
        Ok(entries)
    }
}

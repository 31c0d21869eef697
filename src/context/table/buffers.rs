//! Marking the provided buffers a completion names, so that
//! [`URingContext::provided_buffer`](crate::URingContext::provided_buffer)
//! lends only those the kernel is done with (see `context/buffer_ring.rs`).

use super::OpTable;
use crate::abi::{CqeFlags, CQE_BUFFER_SHIFT};

impl OpTable {
    /// Marks the provided buffer a completion of `slot` names as completed
    /// with, if the operation holds a group's marks (only those select
    /// buffers: callers cannot set `IOSQE_BUFFER_SELECT`). A CQE whose
    /// user_data is not one of ours (a msg_ring's) never gets here.
    ///
    /// Not with `IORING_CQE_F_BUF_MORE`, which says the kernel goes on
    /// writing the buffer: the context never registers the incremental
    /// rings that set it, and if one did, its buffers must not be lent.
    #[cold]
    pub(super) fn mark_completed_buffer(&self, slot: u32, flags: CqeFlags) {
        if !self.slots[slot as usize].keeps || flags.contains(CqeFlags::BUF_MORE) {
            return;
        }
        if let Some(completed) = &self.kept[slot as usize].completed {
            completed.mark((flags.bits() >> CQE_BUFFER_SHIFT) as u16);
        }
    }
}

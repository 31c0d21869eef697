//! Ending the table's life: what drain cancels, and releasing, leaking or
//! forgetting everything at once.

use super::super::labels::{LabelTable, UnpinnedCounts};
use super::super::lock;
use super::{ClaimBoard, OpTable, Owner, Slot, NO_SLOT};
use crate::iobuf::KernelIovecs;

/// The memory contexts leaked because the kernel might still use it, kept
/// for the life of the process. Holding it here rather than forgetting it
/// keeps it reachable, so leak checkers (LeakSanitizer, Miri) tell these
/// deliberate leaks from real ones.
static LEAKED: std::sync::Mutex<Leaked> = std::sync::Mutex::new(Leaked {
    iovecs: Vec::new(),
    owned: Vec::new(),
    files: Vec::new(),
});

/// What [`LEAKED`] holds: each kind of memory a [`KeepAlive`] can point
/// the kernel at.
///
/// [`KeepAlive`]: crate::op::KeepAlive
struct Leaked {
    iovecs: Vec<KernelIovecs>,
    owned: Vec<crate::op::KernelMemory>,
    files: Vec<crate::op::SharedFd>,
}

impl OpTable {
    /// The identities of the caller's operations in flight that no
    /// cancellation of the context's own is aimed at.
    pub(crate) fn uncancelled(&self) -> Vec<u64> {
        let targeted: std::collections::HashSet<u64> =
            self.slots.iter().filter_map(Slot::cancels).collect();
        (0..self.slots.len() as u32)
            .filter(|&slot| self.slots[slot as usize].caller().is_some())
            .map(|slot| self.identity(slot))
            .filter(|identity| !targeted.contains(identity))
            .collect()
    }

    /// Releases every operation, dropping what it keeps alive: for a ring
    /// the kernel never consumed an SQE of (it is still disabled).
    pub(crate) fn release_everything(&mut self, board: &ClaimBoard) {
        self.release_all_claims(board);
        for slot in 0..self.slots.len() as u32 {
            if self.slots[slot as usize].owner != Owner::Free {
                self.release(slot);
            }
        }
    }

    /// Stops tracking every operation without freeing the memory the
    /// kernel may still use: the iovec arrays and the operations' own
    /// memory (with any file it holds) go to [`LEAKED`], where they stay
    /// for the life of the process. With `close_files`, the files the
    /// operations' targets held are closed (the kernel holds its own
    /// reference to a file once it has consumed the SQE naming it);
    /// otherwise they are leaked too.
    pub(crate) fn leak_all(&mut self, close_files: bool) {
        let kept = std::mem::take(&mut self.kept);
        let mut files = Vec::new();
        let mut leaked = lock(&LEAKED);
        for keep_alive in kept {
            // Every field by name: a new kind of memory must be leaked too.
            let crate::op::KeepAlive {
                iovecs,
                file,
                owned,
                // Marks only, which the kernel never reads or writes: freed.
                completed: _,
            } = keep_alive;
            leaked.iovecs.extend(iovecs);
            leaked.owned.extend(owned);
            if close_files {
                files.extend(file);
            } else {
                leaked.files.extend(file);
            }
        }
        drop(leaked);
        // Closed once the lock is released: dropping a caller's `Arc` may
        // run its code, which may drop another context that leaks too.
        drop(files);
        self.clear();
    }

    /// Forgets every operation, dropping nothing it keeps alive and taking
    /// no lock: for a forked child's copy, whose state is the parent's.
    pub(crate) fn forget_all(&mut self) {
        for keep_alive in &mut self.kept {
            std::mem::forget(std::mem::take(keep_alive));
        }
        self.clear();
    }

    /// Empties the table once every slot has been taken care of.
    fn clear(&mut self) {
        self.slots.clear();
        self.kept.clear();
        self.added.clear();
        self.free_head = NO_SLOT;
        self.tracked = 0;
        self.pinned = LabelTable::new();
        self.unpinned = UnpinnedCounts::new();
        self.records
            .iter_mut()
            .for_each(|record| record.in_use = false);
        self.returned.clear();
    }
}

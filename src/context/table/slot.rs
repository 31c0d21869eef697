//! [`Slot`]: one operation's record in the op table, and [`Owner`]: who
//! the operation is for.

use crate::abi::UserData;

/// Who a slot's operation is for. One byte, so that a slot is 16.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Owner {
    /// No operation: the slot is free.
    #[default]
    Free,
    /// The caller, under the slot's `label`; it pins no caller memory.
    Caller,
    /// The caller, under the slot's `label`; it pins caller memory.
    CallerPinning,
    /// The context itself (a wake-up nop): its completion is swallowed.
    Internal,
    /// The context's own cancellation (drain's, or a further target of a
    /// cancel by label) of the identity in the slot's `label`: its
    /// completion is swallowed.
    InternalCancel,
}

impl Owner {
    pub(super) fn caller(pins: bool) -> Owner {
        if pins {
            Owner::CallerPinning
        } else {
            Owner::Caller
        }
    }

    pub(super) fn is_internal(self) -> bool {
        matches!(self, Owner::Internal | Owner::InternalCancel)
    }
}

/// One operation's place in the table: 16 bytes and `Copy`, written when
/// an operation is tracked and read when its completion comes back, often
/// by threads on different cores, so four fit in a cache line. What the
/// operation keeps alive lives apart, in the table's `kept`, touched only
/// by operations that keep something, and its order in the table's
/// `added`.
#[derive(Clone, Copy, Default)]
pub(super) struct Slot {
    /// The caller's label, or the identity an internal cancellation aims
    /// at.
    pub(super) label: u64,
    /// A free slot: the next free one ([`NO_SLOT`](super::NO_SLOT) ends the list). A
    /// caller's operation that pins no memory: its label's bucket in the
    /// unpinned counts, so releasing it needs no second hash.
    pub(super) link: u32,
    pub(super) generation: u16,
    pub(super) owner: Owner,
    /// The operation's [`KeepAlive`](crate::op::KeepAlive) is in the
    /// table's `kept` at this slot's index.
    pub(super) keeps: bool,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 16);

impl Slot {
    /// The caller's label, if this is a caller's operation, and whether it
    /// pins memory.
    pub(super) fn caller(&self) -> Option<(UserData, bool)> {
        match self.owner {
            Owner::Caller => Some((self.label, false)),
            Owner::CallerPinning => Some((self.label, true)),
            _ => None,
        }
    }

    /// The identity this slot's internal cancellation aims at.
    pub(super) fn cancels(&self) -> Option<u64> {
        (self.owner == Owner::InternalCancel).then_some(self.label)
    }
}

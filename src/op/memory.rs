//! [`KernelMemory`]: memory of an operation's own that the kernel reads or
//! writes through an address in the SQE.

use std::ptr::NonNull;

/// A value on the heap whose address an SQE carries (a timespec, a socket
/// address, a `msghdr`, a path), owned through a raw pointer as
/// [`KernelIovecs`](crate::iobuf::KernelIovecs) owns an iovec array.
///
/// Not a `Box`: moving a `Box` asserts unique access to what it holds,
/// which would invalidate the address the SQE already carries (and the
/// kernel may write there, as recvmsg does into its `msghdr`). Rust code
/// never touches the value again once [`new`](Self::new) has handed out its
/// address: it is only dropped, after the operation's completion, or
/// leaked.
///
/// Invariant: `value` comes from `Box::into_raw` and is freed only by drop.
pub(crate) struct KernelMemory {
    value: NonNull<dyn Send>,
}

impl KernelMemory {
    /// Moves `value` to the heap; returns its owner and its address, from
    /// which the SQE's addresses (and any pointers inside `value` to other
    /// parts of it) are to be derived.
    pub(crate) fn new<T: Send + 'static>(value: T) -> (KernelMemory, NonNull<T>) {
        let raw = Box::into_raw(Box::new(value));
        // SAFETY: `Box::into_raw` never returns null.
        let at = unsafe { NonNull::new_unchecked(raw) };
        let value: NonNull<dyn Send> = at;
        (KernelMemory { value }, at)
    }
}

impl Drop for KernelMemory {
    fn drop(&mut self) {
        // SAFETY: by the type invariant, from `Box::into_raw`, and freed
        // only here, once.
        drop(unsafe { Box::from_raw(self.value.as_ptr()) });
    }
}

// SAFETY: it owns a `dyn Send` value, as a `Box<dyn Send>` would, and hands
// out no access to it.
unsafe impl Send for KernelMemory {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_handed_out_is_the_value_and_drop_frees_it_once() {
        let counted = std::sync::Arc::new(());
        let (memory, at) = KernelMemory::new((7u64, std::sync::Arc::clone(&counted)));
        // SAFETY: `at` points at the value `memory` owns, untouched since.
        assert_eq!(unsafe { at.as_ref() }.0, 7);
        assert_eq!(std::sync::Arc::strong_count(&counted), 2);
        drop(memory);
        assert_eq!(std::sync::Arc::strong_count(&counted), 1);
    }
}

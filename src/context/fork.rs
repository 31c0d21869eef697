//! Telling a forked child's copy of a context from the original.
//!
//! After `fork`, the child has a copy of the context (its table, identities
//! and free slots) over the same shared ring memory and ring fd as the
//! parent. If the child queued or reaped, its identities would collide with
//! the parent's and a completion could release the wrong operation. A
//! `pthread_atfork` child handler counts forks; a context refuses to touch
//! the ring once the count differs from the one it was created under.
//! (A raw `clone` that bypasses the C library runs no handler; `vfork` and
//! `posix_spawn` children only exec.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

/// Forks of this process (in the child) since the handler was registered.
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_fork_in_child() {
    // An atomic add is async-signal-safe, as a handler run in a child of a
    // multi-threaded process must be.
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// The fork count now, registering the handler first if this is the first
/// call: what a new context remembers.
pub(super) fn generation() -> u64 {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: the handler is an `extern "C" fn` that lives for the
        // whole program and only touches an atomic; the other two handlers
        // are none.
        let ret = unsafe { libc::pthread_atfork(None, None, Some(count_fork_in_child)) };
        assert_eq!(ret, 0, "pthread_atfork failed: {ret}");
    });
    FORKS.load(Ordering::Relaxed)
}

/// Whether a context created under `generation` is in a forked child now.
pub(super) fn forked_since(generation: u64) -> bool {
    // Relaxed: the count only changes in the child, on the thread that
    // forked, before `fork` returns there.
    FORKS.load(Ordering::Relaxed) != generation
}

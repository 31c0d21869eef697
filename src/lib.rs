//! ringfence: one Linux io_uring instance behind a small, thread-safe
//! context, with a kernel-enforced allowlist of what the ring may do.
//!
//! It is built for virtual machine monitors and sandboxed device processes:
//! a virtio-blk worker that only ever needs readv, writev, fsync and poll can
//! create its ring with a [`URingAllowlist`], and the kernel then refuses
//! everything else on that ring, even if the process is compromised.
//!
//! ```
//! use std::fs::File;
//! use std::os::fd::AsRawFd;
//! use ringfence::{IoBufMut, URingAllowlist, URingContext, URingOperation};
//!
//! let mut allowlist = URingAllowlist::new();
//! allowlist
//!     .allow_submit_operation(URingOperation::Readv)
//!     .allow_submit_operation(URingOperation::Nop);
//! let ring = URingContext::new(32, Some(&allowlist))?;
//!
//! let file = File::open("/dev/zero")?;
//! let block: &'static mut [u8] = Box::leak(vec![0xffu8; 4096].into_boxed_slice());
//! let iovecs = Box::pin([IoBufMut::new(block)]);
//! // SAFETY: the buffer is leaked, so it outlives the operation.
//! unsafe { ring.add_readv(iovecs, file.as_raw_fd(), Some(0), 1)? };
//! for (user_data, result) in ring.wait()? {
//!     assert_eq!((user_data, result?), (1, 4096));
//! }
//!
//! // Not in the allowlist: the kernel consumes the fsync but refuses it.
//! ring.add_fsync(file.as_raw_fd(), 2)?;
//! let (_, result) = ring.wait()?.next().unwrap();
//! assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EACCES));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Safety model
//!
//! The unsafe code lives in two places: `sys` (the three io_uring syscalls
//! and the ring mappings) and `ring` (the only code that reads or writes ring
//! memory). The context above them keeps these invariants:
//!
//! - **Ring memory outlives every pointer into it.** The mappings are owned
//!   by the context, declared after the queues that point into them, and
//!   unmapped only when the context is dropped.
//! - **Pinned iovecs live until their completion.** Each readv/writev keeps
//!   its iovec array in the completion state, keyed by user_data, until its
//!   completion is popped; a failed `io_uring_enter` never frees it. The
//!   record is made before the SQE is published, so a completion always
//!   finds it.
//! - **No two operations in flight share a user_data.** An add that would
//!   reuse one fails with [`Error::DuplicateUserData`], so one completion can
//!   never free another operation's iovecs.
//! - **One writer per ring index.** Only the holder of the submit lock writes
//!   SQEs and the SQ tail, and never a slot the kernel has not consumed;
//!   only the holder of the completion lock reads CQEs and moves the CQ head.
//!   The kernel's indices (SQ head, CQ tail) are loaded with Acquire and
//!   ours (SQ tail, CQ head) stored with Release, pairing with the kernel's
//!   barriers.
//! - **Drop drains.** Dropping the context cancels what is in flight and
//!   waits for the kernel to finish with it; if it cannot, it leaks the
//!   pinned memory rather than free memory the kernel may still use.
//!
//! The `unsafe` in the public API is the caller's half of the bargain: the
//! buffers handed to [`URingContext::add_readv`] and friends must stay valid
//! until their completion is returned by `wait`, or
//! [`URingContext::close`] has returned `Ok`. A plain drop cannot report
//! whether it drained the ring, so after a drop with operations in flight
//! their buffers must live for the rest of the process.
//!
//! A context belongs to the process that created it: a child after `fork`
//! must not use it, and dropping it there leaks the child's copy without
//! touching the parent's operations.

mod allowlist;
mod batch;
#[rustfmt::skip]
#[allow(
    dead_code,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc,
    unsafe_op_in_unsafe_fn
)]
#[path = "../bindings/io_uring.rs"]
mod bindings;
mod context;
mod error;
mod iobuf;
mod ring;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
mod sys;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use allowlist::{RegisterOperation, SqeFlags, URingAllowlist, URingOperation};
pub use batch::OpBatch;
pub use context::{EventType, URingContext, UserData, MAX_ENTRIES, MAX_IOVECS};
pub use error::{Error, Result};
pub use iobuf::IoBufMut;

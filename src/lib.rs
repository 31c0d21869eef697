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
//!     .allow_housekeeping() // Nop and AsyncCancel, which the context uses.
//!     .allow_submit_operation(URingOperation::Readv);
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
//! // EACCES, which `std::io` reports as PermissionDenied.
//! assert_eq!(result.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
#![doc = include_str!("guide-kernel-versions.md")]
//!
//! # Waiting
//!
//! [`URingContext::wait`] blocks until a completion is ready, also when
//! nothing is in flight, as crosvm's does: another thread's nop (or any
//! operation it submits) wakes it. A thread alone with a ring must not wait
//! with nothing in flight; [`URingContext::wait_timeout`] bounds the wait
//! (`Duration::ZERO` only looks). The next section shows a worker thread
//! that waits, and how another thread stops it.
//!
#![doc = include_str!("guide-worker-loop.md")]
//!
#![doc = include_str!("guide-owning-buffers.md")]
//!
#![doc = include_str!("guide-linux-7.md")]
//!
//! # Safety model
//!
//! The context keeps these invariants:
//!
//! - **Ring memory outlives every pointer into it.** The mappings are owned
//!   by the context, declared after the queues that point into them, and
//!   unmapped only when the context is dropped.
//! - **What an operation keeps alive lives until its completion.** Each
//!   operation's state (its iovec array, a file held open) is recorded in
//!   the context's table under an identity of the context's own before its
//!   SQE is published, and released only once the caller has its last
//!   completion, the first without `IORING_CQE_F_MORE` (a multishot
//!   operation completes many times), or drain has seen it, or leaks it;
//!   a failed `io_uring_enter` never frees it.
//! - **A completion releases only its own operation.** The SQE carries
//!   the context's identity (tag, generation, slot), not the caller's
//!   user_data, which is only a label. A completion the context did not
//!   issue releases nothing. Labels may be shared by operations that pin no
//!   caller memory; one that pins memory shares its label with nothing in
//!   flight, so the caller can always tell which buffer a completion frees.
//! - **One writer per ring index.** Only the holder of the context's lock
//!   writes SQEs and the SQ tail, and never a slot the kernel has not
//!   consumed, and only it reads CQEs and moves the CQ head. The kernel's
//!   indices (SQ head, CQ tail) are loaded with Acquire and ours (SQ tail,
//!   CQ head) stored with Release, pairing with the kernel's barriers.
//! - **Drop drains.** Dropping the context cancels what is in flight and
//!   waits for the kernel to finish with it; if it cannot, it leaks that
//!   state rather than free memory the kernel may still use.
//!
//! Where the unsafe code lives, each block with its `SAFETY` argument:
//!
//! - `sys`: the three io_uring syscalls, `poll(2)` and the ring mappings.
//!   `io_uring_enter` is an `unsafe fn` whose obligation is that every
//!   published SQE points only at memory valid until its completion;
//!   `context/submit.rs` is the one caller, and argues it from the table.
//! - `ring`: the only code that reads or writes ring memory (SQEs, CQEs,
//!   the indices).
//! - `abi`: the SQE and restriction newtypes, the only code that names
//!   bindgen's unions.
//! - `iobuf`: the iovec array the kernel reads, owned by raw pointer while
//!   it is in flight.
//! - `context/setup.rs`: the register calls and the pointers they pass.
//! - `context/submit.rs`: the one call of `io_uring_enter` (see `sys`).
//! - `context/drain.rs`: turning queued, unsubmitted SQEs into nops before
//!   cancelling, which needs `&mut self` (no enter can run meanwhile).
//! - `context/registered.rs`: the anonymous mapping that holds registered
//!   buffers, and the register calls for files and buffers;
//!   `context/probe.rs`: the probe register call.
//! - `context/fork.rs`: registering the `pthread_atfork` handler that tells
//!   a forked child's copy of a context from the original.
//! - `context/crosvm.rs`: the crosvm-named `unsafe fn`s (below), which
//!   forward their caller's promise to `op`'s raw-iovec conversion.
//! - `op`: turning raw iovecs into [`IoBufMut`]s, an `unsafe fn`
//!   (`op/rw.rs`), and [`op::Target::from_raw_fd`] (`op/target.rs`).
//! - `sim` (tests and the `sim` feature): the simulated kernel's memory.
//!
//! The `unsafe` in the public API is the caller's half of the bargain:
//! [`IoBufMut::from_raw_parts`], [`op::Target::from_raw_fd`] and the
//! crosvm-named readv/writev methods, which keep crosvm's `unsafe`
//! signatures (see their `# Safety` sections).
//!
//! A context belongs to the process that created it: in a child after
//! `fork`, every call that would touch the ring fails with
//! [`Error::Forked`] (its identities would collide with the parent's), and
//! dropping it there forgets the child's copy without touching the parent's
//! operations.
//!
//! # Porting from crosvm
//!
//! The `io_uring` crate in crosvm is this crate's model; a loop written for
//! it runs here with the changes below (each a hole closed):
//!
//! - **User data is a label.** crosvm puts the caller's user_data in the
//!   SQE and frees an operation's iovecs by it, so two operations with one
//!   user_data can free each other's memory. Here operations that pin
//!   memory (readv, writev) get [`Error::DuplicateUserData`] for a label in
//!   flight; others (nops, polls) may share one, as crosvm's tests do.
//! - **In flight until the caller has the completion.** crosvm counts an
//!   operation done once its CQE is off the ring; here it stays in flight
//!   (and its label taken) while the completion waits in an iterator or was
//!   handed back by one dropped early, and the ring fd polls readable for
//!   completions handed back.
//! - **Offsets.** `Some(u64::MAX)` reads at the current position in crosvm
//!   (it is the kernel's -1); here `Some(offset)` is always absolute and an
//!   offset above [`MAX_FILE_OFFSET`] is refused with
//!   [`Error::InvalidOffset`]. Pass `None` for the current position.
//! - **`remove_poll_fd(target, user_data)`** names the poll to remove by its
//!   user_data; crosvm's takes `(fd, events, user_data)` and, leaving the
//!   SQE's address 0, removes the poll whose user_data is 0.
//! - **Cancelling or removing by a shared user_data acts on all of them.**
//!   In crosvm the kernel looks the target up by user_data and stops at
//!   the first operation it finds (crosvm does not set
//!   `IORING_ASYNC_CANCEL_ALL`, Linux 5.19, `io_uring_prep_cancel(3)`). Here [`async_cancel`](URingContext::async_cancel) and
//!   [`remove_poll_fd`](URingContext::remove_poll_fd) act on every
//!   operation in flight with that user_data whose completion the caller
//!   does not have yet: the context sends one SQE of its own for each
//!   further one, whose completions it swallows (they count against the
//!   in-flight cap, and [`Error::NoSpace`] refuses the whole add when they
//!   do not fit). The caller's operation completes with the result for the
//!   oldest of them (the first added): 0, `ENOENT` or `EALREADY`, and
//!   `ENOENT` when none is in flight.
//! - **Short submits and busy kernels.** crosvm counts a short submit as
//!   complete; here the rest stay queued and are offered again, and
//!   `EAGAIN`/`EBUSY` from `submit` are [`Error::KernelBusy`] with nothing
//!   lost.
//! - **Drop drains.** crosvm frees the iovecs with the context while the
//!   kernel may still use them; here drop cancels and waits, or leaks.
//! - **Errors** are one [`Error`] enum (`Error::RingEnter(errno)` in
//!   crosvm is [`Error::Enter`] or [`Error::KernelBusy`] here).
//! - **More than crosvm:** allowlists can also restrict register calls and
//!   SQE flags; [`URingContext::add`] and [`OpBatch`] take operations as
//!   values ([`op`]); [`URingContext::wait_timeout`] and
//!   [`URingContext::close`].

#[cfg(not(target_os = "linux"))]
compile_error!(
    "ringfence drives Linux io_uring (io_uring_setup, io_uring_enter, io_uring_register): \
     it builds for Linux targets only"
);

mod abi;
mod allowlist;
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
pub mod op;
mod ring;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
mod sys;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use abi::{
    FallocateMode, FeatureFlags, FsyncFlags, IosqeFlags, RegisterOperation, ResolveFlags,
    SpliceFlags, SqeFlags, SyncFileRangeFlags, URingOperation, UserData, MAX_BUF_RING_ENTRIES,
    MAX_ENTRIES, MAX_FILE_OFFSET, MAX_IOVECS,
};
pub use allowlist::URingAllowlist;
pub use context::{
    Completion, Probe, ProvidedBuffer, URingBuilder, URingContext, MAX_REGISTERED_BUFFERS,
    MAX_REGISTERED_BUFFER_LEN,
};
pub use error::{Error, Result};
pub use iobuf::IoBufMut;
pub use op::{BufferGroup, EventType, OpBatch, RegisteredBuffer};

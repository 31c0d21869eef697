//! The crate's error type.

use std::io;

use crate::abi::{RegisterOperation, MAX_ENTRIES, MAX_FILE_OFFSET, MAX_IOVECS};

/// Everything that can go wrong in ringfence.
#[remain::sorted]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// All 65536 buffer group ids are taken by the process's buffer rings
    /// (an id stays taken while an operation that may write the group's
    /// buffers is in flight, for ever if its context leaked it).
    #[error(
        "every buffer group id (65536 of them) is taken by this process's buffer rings: drop \
         contexts you no longer need, or give each fewer buffer rings"
    )]
    BufferGroupsExhausted,
    /// [`URingBuilder::buffer_ring`](crate::URingBuilder::buffer_ring) was
    /// asked for a ring whose entry count is not a power of two from 1 to
    /// [`MAX_BUF_RING_ENTRIES`](crate::MAX_BUF_RING_ENTRIES) (the kernel's
    /// limits, `io_uring/kbuf.c`), for buffers of 0 bytes, or for more
    /// memory than the address space holds.
    #[error(
        "a buffer ring of {count} buffers of {len} bytes is out of range: give a power of two \
         from 1 to 32768 buffers of at least 1 byte each"
    )]
    BufferRingOutOfRange {
        /// The number of buffers (ring entries) asked for.
        count: u16,
        /// Their length, in bytes.
        len: u32,
    },
    /// A buffer longer than one operation takes: the SQE's length is a
    /// `u32`, so at most `u32::MAX` bytes. Split it over several
    /// operations.
    #[error(
        "a buffer of {0} bytes is longer than one operation takes (at most u32::MAX = \
         4294967295 bytes): split it"
    )]
    BufferTooLong(usize),
    /// [`URingContext::close`](crate::URingContext::close) found operations
    /// still in flight on a ring whose allowlist lacks
    /// [`URingOperation::AsyncCancel`](crate::URingOperation::AsyncCancel),
    /// or requires an SQE flag the context's own SQEs cannot carry (see
    /// [`require_sqe_flags`](crate::URingAllowlist::require_sqe_flags)):
    /// nothing can stop them, so their state was leaked at once (the
    /// memory their buffers point to must stay valid for the life of the
    /// process). Allow the housekeeping pair with
    /// [`URingAllowlist::allow_housekeeping`](crate::URingAllowlist::allow_housekeeping),
    /// and require no flag beyond `FIXED_FILE` and `ASYNC`.
    #[error(
        "{0} operations were still in flight on a ring that cannot cancel (its allowlist \
         lacks AsyncCancel, or requires an SQE flag beyond FIXED_FILE and ASYNC): their \
         state was leaked and the memory their buffers point to must stay valid for the \
         life of the process; allow AsyncCancel (URingAllowlist::allow_housekeeping) and \
         require no other flag to let close and drop cancel them"
    )]
    CancelNotAllowed(usize),
    /// The kernel dropped completions it had no memory to keep (its CQ
    /// overflow counter rose; a waiting `io_uring_enter` fails with
    /// `EBADR`): the operations they belonged to stay in flight forever,
    /// and a later drop waits its full timeout for them.
    #[error(
        "the kernel dropped completions it had no memory to keep (EBADR): some operations \
         will never complete; close the ring and create a new one, with fewer operations \
         in flight or more memory for the process"
    )]
    CompletionsLost,
    /// [`URingBuilder::cq_entries`](crate::URingBuilder::cq_entries) asked
    /// for a completion ring smaller than the submission ring, of 0, or
    /// past the kernel's 65536 without
    /// [`clamp`](crate::URingBuilder::clamp).
    #[error(
        "a completion ring of {cq_entries} entries does not fit a ring of {entries}: ask for \
         at least as many completion entries as submission entries, and at most 65536 (or \
         set clamp)"
    )]
    CqEntriesOutOfRange {
        /// The completion ring size asked for.
        cq_entries: usize,
        /// The submission ring size asked for.
        entries: usize,
    },
    /// [`URingContext::close`](crate::URingContext::close) gave up waiting:
    /// this many operations were still in the kernel, and what they keep
    /// alive (iovec arrays, files) was leaked.
    #[error(
        "{0} operations were still in the kernel when close gave up waiting: their state \
         was leaked, and the memory their buffers point to must stay valid for the life of \
         the process"
    )]
    DrainTimedOut(usize),
    /// The add was refused because an operation that pins caller memory
    /// would share this user_data with another operation in flight (either
    /// the new one pins memory, or one in flight with this user_data does):
    /// the caller could not tell their completions apart.
    #[error(
        "user_data {0} is already used by an operation in flight, and one of the two pins \
         caller memory (iovecs, buffers), so their completions could not be told apart: wait \
         for its completion or use another user_data"
    )]
    DuplicateUserData(u64),
    /// `io_uring_enter` failed with an error other than the transient ones.
    #[error("io_uring_enter failed: {0}{hint}", hint = enter_hint(.0))]
    Enter(io::Error),
    /// The ring size asked of [`URingContext::new`](crate::URingContext::new)
    /// is 0 or above the kernel's limit.
    #[error(
        "a ring of {0} entries is out of range: io_uring takes 1 to {max} entries",
        max = MAX_ENTRIES
    )]
    EntriesOutOfRange(usize),
    /// The operation was given a registered file
    /// ([`Target::fixed`](crate::op::Target::fixed)), or added to a ring
    /// whose allowlist requires `FIXED_FILE`, but cannot take one: the
    /// kernel refuses `IOSQE_FIXED_FILE` on it (openat, openat2, close and
    /// statx with `EBADF`; files_update and timeout_remove with `EINVAL`).
    /// On such a ring it cannot run at all: leave it out of the allowlist.
    #[error(
        "{0:?} cannot address a registered (fixed) file: the kernel refuses IOSQE_FIXED_FILE \
         on it; give it a plain descriptor, and on a ring that requires FIXED_FILE, do \
         without it"
    )]
    FixedFileNotSupported(crate::URingOperation),
    /// A fixed-file slot index with no `file_index` encoding: the SQE
    /// carries the slot plus one, and `u32::MAX` there means "let the
    /// kernel pick" (`IORING_FILE_INDEX_ALLOC`), so an open's slot must be
    /// below `u32::MAX - 1` and a close's below `u32::MAX`. No file table
    /// is that large (at most 2^20 files on Linux 6.18).
    #[error(
        "fixed-file slot {0} is out of range: the SQE encodes slot + 1 in 32 bits, with \
         u32::MAX reserved for a kernel-picked slot; use an index inside the registered \
         file table"
    )]
    FixedSlotOutOfRange(u32),
    /// The context was used in a child after `fork`: it belongs to the
    /// process that created it, and the child's copy must not touch the
    /// parent's ring. Create a new context in the child.
    #[error(
        "this io_uring context was created by the parent of this forked process and cannot be \
         used here: create a new context in the child"
    )]
    Forked,
    /// A [`ReadFixed`](crate::op::ReadFixed) or
    /// [`WriteFixed`](crate::op::WriteFixed) byte range that ends before it
    /// starts, or is longer than 4 GiB - 1 (the SQE's `len` is 32 bits).
    #[error(
        "the buffer range {start}..{end} is not a range one fixed read or write can take: \
         give start <= end, at most 4 GiB - 1 bytes long"
    )]
    InvalidBufferRange {
        /// Where the range starts, in bytes into the buffer.
        start: usize,
        /// Where it ends.
        end: usize,
    },
    /// A chain of linked operations that the kernel would cut or
    /// misread: one whose last operation is linked to whatever is queued
    /// next, or a [`LinkTimeout`](crate::op::LinkTimeout) that does not
    /// follow a linked operation. Chains are built in an
    /// [`OpBatch`](crate::OpBatch) (see its Chains section).
    #[error("invalid chain of linked operations: {0}")]
    InvalidChain(&'static str),
    /// A file offset the kernel cannot take: above
    /// [`MAX_FILE_OFFSET`](crate::MAX_FILE_OFFSET) (`i64::MAX`), it would be
    /// negative to the kernel, and `u64::MAX` would mean "the current file
    /// position". Pass `None` for the current position.
    #[error(
        "file offset {0} is out of range: offsets go up to {max} (i64::MAX); \
         pass None to use the file's current position",
        max = MAX_FILE_OFFSET
    )]
    InvalidOffset(u64),
    /// The kernel refuses io_uring to this process (EPERM).
    #[error(
        "io_uring is disabled for this process (EPERM): the sysctl kernel.io_uring_disabled \
         is set; set it to 0, or to 1 and add the process to kernel.io_uring_group"
    )]
    IoUringDisabled,
    /// The kernel has no io_uring, or a seccomp filter hides it (ENOSYS).
    #[error(
        "io_uring is not available (ENOSYS): the kernel is older than 5.1 or built without \
         CONFIG_IO_URING, or a seccomp filter blocks io_uring_setup"
    )]
    IoUringUnavailable,
    /// The kernel cannot take more submissions right now (EAGAIN or EBUSY).
    /// Nothing is lost: the operations stay queued.
    #[error(
        "the kernel cannot take more submissions now ({0}): the operations stay queued; \
         reap completions with wait() and submit again"
    )]
    KernelBusy(io::Error),
    /// A buffer or range longer than the operation's SQE can carry: its
    /// length field is 32 bits, so one read, write, splice or
    /// sync_file_range covers at most `u32::MAX` bytes (the kernel moves at
    /// most `MAX_RW_COUNT`, about 2 GiB, per read or write anyway).
    #[error(
        "a length of {0} bytes is more than one operation carries (at most {max}, u32::MAX): \
         split it into several operations",
        max = u32::MAX
    )]
    LengthTooLong(u64),
    /// Mapping the ring memory failed.
    #[error("mapping the io_uring rings failed: {0}")]
    Mmap(io::Error),
    /// The submission queue is full, or as many operations are in flight
    /// as the context allows: 16 times the completion ring's entries with
    /// `IORING_FEAT_NODROP` (Linux 5.5), which bounds the kernel memory
    /// kept for completions nobody reaps, or one short of the completion
    /// ring without it.
    #[error(
        "no room for another operation: the submission queue is full or the most operations \
         the ring allows are in flight; submit() and reap completions with wait(), or create \
         the ring with more entries"
    )]
    NoSpace,
    /// A path with a NUL byte inside: the kernel reads paths as
    /// NUL-terminated strings, so it would see another, shorter path.
    #[error("path {0:?} contains a NUL byte, which no Linux path can hold")]
    NulInPath(std::path::PathBuf),
    /// An allowlist given to
    /// [`URingBuilder::allowlist`](crate::URingBuilder::allowlist) (or
    /// [`URingContext::new`](crate::URingContext::new)) allows an operation
    /// the running kernel does not support ([`URingContext::probe`](crate::URingContext::probe)),
    /// which every SQE of it would then fail with `EINVAL`.
    #[error(
        "the allowlist allows {op:?}, which this kernel does not support (it was added in \
         Linux {}.{}): run a newer kernel or leave it out of the allowlist",
        since.0,
        since.1
    )]
    OperationNotSupported {
        /// The operation.
        op: crate::URingOperation,
        /// The Linux release that added it, `(major, minor)`.
        since: (u32, u32),
    },
    /// A [`URingBuilder`](crate::URingBuilder) option the running kernel
    /// refuses (`io_uring_setup` failed with `EINVAL` with it, and
    /// succeeded without it).
    #[error(
        "this kernel does not support the ring option {option} (added in Linux {}.{}): \
         {source}; run a newer kernel or build the ring without it",
        since.0,
        since.1
    )]
    OptionNotSupported {
        /// The builder method and the kernel flag.
        option: &'static str,
        /// The Linux release that added it, `(major, minor)`.
        since: (u32, u32),
        /// The kernel's error (`EINVAL`).
        source: io::Error,
    },
    /// Not enough locked memory for the rings (ENOMEM).
    #[error(
        "not enough locked memory for the io_uring rings (ENOMEM): raise RLIMIT_MEMLOCK \
         (ulimit -l) or ask for fewer entries"
    )]
    OutOfLockedMemory,
    /// Waiting for the ring fd with poll(2) failed.
    #[error("polling the io_uring fd failed: {0}")]
    Poll(io::Error),
    /// An `io_uring_register` call failed.
    #[error("io_uring_register({call:?}) failed: {source}{hint}", hint = register_hint(*.call, .source))]
    Register {
        /// The register call that failed.
        call: RegisterOperation,
        /// The kernel's error.
        source: io::Error,
    },
    /// [`URingBuilder::buffers`](crate::URingBuilder::buffers) asked for 0
    /// or more than [`MAX_REGISTERED_BUFFERS`](crate::MAX_REGISTERED_BUFFERS)
    /// buffers, or buffers of 0 bytes or more than
    /// [`MAX_REGISTERED_BUFFER_LEN`](crate::MAX_REGISTERED_BUFFER_LEN).
    #[error(
        "{count} registered buffers of {len} bytes are out of range: register 1 to 16384 \
         buffers of 1 byte to 1 GiB each"
    )]
    RegisteredBuffersOutOfRange {
        /// The number of buffers asked for.
        count: usize,
        /// Their length, in bytes.
        len: usize,
    },
    /// A [`MsgRing`](crate::op::MsgRing) user_data with bit 63 set: every
    /// identity a context puts in its own SQEs has that bit, so a
    /// completion carrying it could pass for one of the target's own
    /// operations and release what the kernel still uses.
    #[error(
        "user_data {0:#x} has bit 63 set, which a context's own identities use: a msg_ring \
         completion with it could pass for one of the target ring's operations; send a \
         value below 1 << 63"
    )]
    ReservedUserData(u64),
    /// `io_uring_setup` failed for a reason without its own variant.
    #[error("io_uring_setup failed: {0}")]
    Setup(io::Error),
    /// More iovecs than one readv or writev takes.
    #[error("{0} iovecs is more than one operation takes (at most {max})", max = MAX_IOVECS)]
    TooManyIovecs(usize),
}

fn enter_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EBADFD) => " (the ring is still disabled: enable it first)",
        _ => "",
    }
}

fn register_hint(call: RegisterOperation, err: &io::Error) -> &'static str {
    match (call, err.raw_os_error()) {
        (RegisterOperation::Restrictions, Some(libc::EBADFD)) => {
            " (restrictions can only be registered on a ring created disabled, before it is enabled)"
        }
        (RegisterOperation::Restrictions, Some(libc::EBUSY)) => {
            " (restrictions were already registered on this ring; they can be set only once)"
        }
        (RegisterOperation::EnableRings, Some(libc::EBADFD)) => " (the ring is already enabled)",
        (_, Some(libc::EACCES)) => {
            " (the ring's allowlist does not allow this register call; do all registration \
             before the ring is enabled)"
        }
        _ => "",
    }
}

/// Results of ringfence calls.
pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for io::Error {
    #[remain::check]
    fn from(err: Error) -> io::Error {
        #[remain::sorted]
        match err {
            Error::BufferGroupsExhausted => io::Error::from_raw_os_error(libc::ENOSPC),
            Error::BufferRingOutOfRange { .. } => io::Error::new(io::ErrorKind::InvalidInput, err),
            Error::BufferTooLong(_) => io::Error::new(io::ErrorKind::InvalidInput, err),
            Error::CancelNotAllowed(_) => io::Error::other(err),
            Error::CompletionsLost => io::Error::from_raw_os_error(libc::EBADR),
            Error::CqEntriesOutOfRange { .. } => io::Error::new(io::ErrorKind::InvalidInput, err),
            Error::DrainTimedOut(_) => io::Error::new(io::ErrorKind::TimedOut, err),
            Error::DuplicateUserData(_) => io::Error::new(io::ErrorKind::AlreadyExists, err),
            Error::Enter(e) => e,
            Error::EntriesOutOfRange(_) => io::Error::new(io::ErrorKind::InvalidInput, err),
            Error::FixedFileNotSupported(_) => io::Error::new(io::ErrorKind::InvalidInput, err),
            Error::FixedSlotOutOfRange(_) => io::Error::new(io::ErrorKind::InvalidInput, err),
            Error::Forked => io::Error::other(err),
            Error::InvalidBufferRange { .. } => io::Error::new(io::ErrorKind::InvalidInput, err),
            Error::InvalidChain(_) => io::Error::new(io::ErrorKind::InvalidInput, err),
            Error::InvalidOffset(_) => io::Error::new(io::ErrorKind::InvalidInput, err),
            Error::IoUringDisabled => io::Error::from_raw_os_error(libc::EPERM),
            Error::IoUringUnavailable => io::Error::from_raw_os_error(libc::ENOSYS),
            Error::KernelBusy(e) => e,
            Error::LengthTooLong(_) => io::Error::new(io::ErrorKind::InvalidInput, err),
            Error::Mmap(e) => e,
            Error::NoSpace => io::Error::new(io::ErrorKind::WouldBlock, err),
            Error::NulInPath(_) => io::Error::new(io::ErrorKind::InvalidInput, err),
            Error::OperationNotSupported { .. } => io::Error::new(io::ErrorKind::Unsupported, err),
            Error::OptionNotSupported { source, .. } => source,
            Error::OutOfLockedMemory => io::Error::from_raw_os_error(libc::ENOMEM),
            Error::Poll(e) => e,
            Error::Register { source, .. } => source,
            Error::RegisteredBuffersOutOfRange { .. } => {
                io::Error::new(io::ErrorKind::InvalidInput, err)
            }
            Error::ReservedUserData(_) => io::Error::new(io::ErrorKind::InvalidInput, err),
            Error::Setup(e) => e,
            Error::TooManyIovecs(_) => io::Error::new(io::ErrorKind::InvalidInput, err),
        }
    }
}

/// The error for a failed `io_uring_enter` (after `EINTR` was retried).
pub(crate) fn enter_error(err: io::Error) -> Error {
    match err.raw_os_error() {
        Some(libc::EAGAIN | libc::EBUSY) => Error::KernelBusy(err),
        _ => Error::Enter(err),
    }
}

/// The error for a failed `io_uring_setup`: the causes a user can act on get
/// their own variant and message.
pub(crate) fn setup_error(err: io::Error) -> Error {
    match err.raw_os_error() {
        Some(libc::ENOSYS) => Error::IoUringUnavailable,
        Some(libc::EPERM) => Error::IoUringDisabled,
        Some(libc::ENOMEM) => Error::OutOfLockedMemory,
        _ => Error::Setup(err),
    }
}

#[cfg(test)]
mod tests;

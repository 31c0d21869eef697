//! Flag types over the kernel's bit constants.
//!
//! The header defines the `IOSQE_*` masks as shifts of enum values, which
//! bindgen cannot evaluate, so they are built here from the `_BIT` values.

use bitflags::bitflags;

use crate::bindings::*;

bitflags! {
    /// SQE flags a caller may set on an operation it adds.
    ///
    /// Only flags that cannot break the context's bookkeeping are offered:
    /// not `IOSQE_CQE_SKIP_SUCCESS` (the operation would never complete,
    /// and its state would never be released), nor `IOSQE_FIXED_FILE` or
    /// `IOSQE_BUFFER_SELECT` (an operation sets those itself, from what it
    /// addresses), nor `IOSQE_IO_DRAIN`, which holds back every later SQE,
    /// including the cancellations drop relies on, until everything before
    /// it has completed. Nor the links, `IOSQE_IO_LINK` and
    /// `IOSQE_IO_HARDLINK`: on a single add they would join the operation
    /// to whatever another thread queues next; chains are built in an
    /// [`OpBatch`](crate::OpBatch) instead. [`IosqeFlags`] names every bit,
    /// for allowlists.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct SqeFlags: u8 {
        /// `IOSQE_ASYNC`: always run from a kernel worker thread.
        const ASYNC = 1 << IOSQE_ASYNC_BIT;
    }
}

bitflags! {
    /// Every `IOSQE_*` bit, as a [`URingAllowlist`](crate::URingAllowlist)
    /// may name it allowed or required (`IORING_RESTRICTION_SQE_FLAGS_*`).
    ///
    /// This is wider than [`SqeFlags`]: a ring may require `FIXED_FILE`
    /// (every operation then addresses a registered file) even though
    /// callers never set it by hand.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct IosqeFlags: u8 {
        /// `IOSQE_FIXED_FILE`: the SQE's fd is an index into the
        /// registered file table (Linux 5.1).
        const FIXED_FILE = 1 << IOSQE_FIXED_FILE_BIT;
        /// `IOSQE_IO_DRAIN`: start only after every earlier SQE completed
        /// (Linux 5.2).
        const IO_DRAIN = 1 << IOSQE_IO_DRAIN_BIT;
        /// `IOSQE_IO_LINK` (Linux 5.3).
        const IO_LINK = 1 << IOSQE_IO_LINK_BIT;
        /// `IOSQE_IO_HARDLINK` (Linux 5.5).
        const IO_HARDLINK = 1 << IOSQE_IO_HARDLINK_BIT;
        /// `IOSQE_ASYNC` (Linux 5.6).
        const ASYNC = 1 << IOSQE_ASYNC_BIT;
        /// `IOSQE_BUFFER_SELECT`: pick a buffer from a provided group
        /// (Linux 5.7).
        const BUFFER_SELECT = 1 << IOSQE_BUFFER_SELECT_BIT;
        /// `IOSQE_CQE_SKIP_SUCCESS`: post no completion on success
        /// (Linux 5.17).
        const CQE_SKIP_SUCCESS = 1 << IOSQE_CQE_SKIP_SUCCESS_BIT;
    }
}

impl From<SqeFlags> for IosqeFlags {
    fn from(flags: SqeFlags) -> IosqeFlags {
        // Every `SqeFlags` bit is the `IOSQE_*` bit of the same name. Only
        // the named ones pass: `SqeFlags::from_bits_retain` can carry any
        // bit, and `CQE_SKIP_SUCCESS` or `IO_DRAIN` smuggled through it
        // would break the bookkeeping this type exists to protect.
        IosqeFlags::from_bits_retain((flags & SqeFlags::all()).bits())
    }
}

bitflags! {
    /// Flags for [`op::Fsync`](crate::op::Fsync) (`IORING_FSYNC_*`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct FsyncFlags: u32 {
        /// `IORING_FSYNC_DATASYNC`: `fdatasync(2)` instead of `fsync(2)`.
        const DATASYNC = IORING_FSYNC_DATASYNC;
    }
}

bitflags! {
    /// The mode of [`op::Fallocate`](crate::op::Fallocate): `fallocate(2)`'s
    /// `FALLOC_FL_*` bits (`include/uapi/linux/falloc.h`). Empty allocates
    /// the range (and extends the file past its end). Which modes a file
    /// system supports is its own choice: an unsupported one completes with
    /// `EOPNOTSUPP`, a combination `fallocate(2)` forbids with `EINVAL`.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct FallocateMode: u32 {
        /// `FALLOC_FL_KEEP_SIZE`: allocate without changing the file's size
        /// (Linux 2.6.23).
        const KEEP_SIZE = libc::FALLOC_FL_KEEP_SIZE as u32;
        /// `FALLOC_FL_PUNCH_HOLE`: deallocate the range, which then reads as
        /// zeros; must come with `KEEP_SIZE` (Linux 2.6.38).
        const PUNCH_HOLE = libc::FALLOC_FL_PUNCH_HOLE as u32;
        /// `FALLOC_FL_COLLAPSE_RANGE`: remove the range, shifting what
        /// follows down; offset and length must be multiples of the file
        /// system's block size (Linux 3.15).
        const COLLAPSE_RANGE = libc::FALLOC_FL_COLLAPSE_RANGE as u32;
        /// `FALLOC_FL_ZERO_RANGE`: make the range read as zeros, allocated
        /// (Linux 3.15).
        const ZERO_RANGE = libc::FALLOC_FL_ZERO_RANGE as u32;
        /// `FALLOC_FL_INSERT_RANGE`: insert a hole of the range's length at
        /// its offset, shifting what follows up; block-size multiples
        /// (Linux 4.1).
        const INSERT_RANGE = libc::FALLOC_FL_INSERT_RANGE as u32;
        /// `FALLOC_FL_UNSHARE_RANGE`: unshare blocks shared with other
        /// files (reflinks) in the range (Linux 4.5).
        const UNSHARE_RANGE = libc::FALLOC_FL_UNSHARE_RANGE as u32;
    }
}

bitflags! {
    /// Flags for [`op::SyncFileRange`](crate::op::SyncFileRange):
    /// `sync_file_range(2)`'s `SYNC_FILE_RANGE_*` bits. `WRITE` alone
    /// starts writeback without waiting; all three wait for the range to
    /// reach the device (but flush no metadata and no disk cache: it is no
    /// `fdatasync`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct SyncFileRangeFlags: u32 {
        /// `SYNC_FILE_RANGE_WAIT_BEFORE`: first wait for writeback already
        /// under way in the range.
        const WAIT_BEFORE = libc::SYNC_FILE_RANGE_WAIT_BEFORE;
        /// `SYNC_FILE_RANGE_WRITE`: start writeback of the range's dirty
        /// pages.
        const WRITE = libc::SYNC_FILE_RANGE_WRITE;
        /// `SYNC_FILE_RANGE_WAIT_AFTER`: then wait for that writeback.
        const WAIT_AFTER = libc::SYNC_FILE_RANGE_WAIT_AFTER;
    }
}

bitflags! {
    /// How [`op::Openat2`](crate::op::Openat2) resolves its path:
    /// `open_how.resolve`'s `RESOLVE_*` bits (`openat2(2)`, Linux 5.6).
    /// A path the rules forbid fails with `EXDEV` (leaving the tree,
    /// crossing a mount), `ELOOP` (a symlink) or `EAGAIN` (`CACHED`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct ResolveFlags: u64 {
        /// `RESOLVE_NO_XDEV`: never cross a mount point.
        const NO_XDEV = libc::RESOLVE_NO_XDEV;
        /// `RESOLVE_NO_MAGICLINKS`: no `/proc/*/fd/*`-style links.
        const NO_MAGICLINKS = libc::RESOLVE_NO_MAGICLINKS;
        /// `RESOLVE_NO_SYMLINKS`: no symbolic links at all.
        const NO_SYMLINKS = libc::RESOLVE_NO_SYMLINKS;
        /// `RESOLVE_BENEATH`: stay inside the directory the path is
        /// relative to (no `..` above it, no absolute paths or links).
        const BENEATH = libc::RESOLVE_BENEATH;
        /// `RESOLVE_IN_ROOT`: treat that directory as `/` (a chroot for
        /// this one lookup).
        const IN_ROOT = libc::RESOLVE_IN_ROOT;
        /// `RESOLVE_CACHED`: only from the dentry cache, else `EAGAIN`
        /// (Linux 5.12).
        const CACHED = libc::RESOLVE_CACHED;
    }
}

bitflags! {
    /// Flags for [`op::Splice`](crate::op::Splice) and
    /// [`op::Tee`](crate::op::Tee): `splice(2)`'s `SPLICE_F_*` bits. The
    /// io_uring-only `SPLICE_F_FD_IN_FIXED` is not here: the operation sets
    /// it itself when its input is a [`Target::fixed`](crate::op::Target::fixed).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct SpliceFlags: u32 {
        /// `SPLICE_F_MOVE`: move pages rather than copy (a hint).
        const MOVE = libc::SPLICE_F_MOVE;
        /// `SPLICE_F_NONBLOCK`: do not block on the pipes (`EAGAIN`).
        const NONBLOCK = libc::SPLICE_F_NONBLOCK;
        /// `SPLICE_F_MORE`: more data follows (a hint for sockets).
        const MORE = libc::SPLICE_F_MORE;
        /// `SPLICE_F_GIFT`: unused by splice (vmsplice only).
        const GIFT = libc::SPLICE_F_GIFT;
    }
}

/// `SPLICE_F_FD_IN_FIXED` (`include/uapi/linux/io_uring.h`, `1U << 31`):
/// splice's and tee's input is a registered file's index. The bindings
/// leave it out (the generator takes `IORING_*` names only).
pub(crate) const SPLICE_F_FD_IN_FIXED: u32 = 1 << 31;

bitflags! {
    /// `io_uring_setup` flags (`IORING_SETUP_*`) the context uses.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub(crate) struct SetupFlags: u32 {
        /// `IORING_SETUP_R_DISABLED`: created disabled, for restrictions
        /// (Linux 5.10).
        const R_DISABLED = IORING_SETUP_R_DISABLED;
        /// `IORING_SETUP_CQSIZE`: the completion ring's size is
        /// `cq_entries` (Linux 5.5).
        const CQSIZE = IORING_SETUP_CQSIZE;
        /// `IORING_SETUP_CLAMP`: sizes past the kernel's limits are clamped
        /// rather than refused (Linux 5.6).
        const CLAMP = IORING_SETUP_CLAMP;
        /// `IORING_SETUP_SUBMIT_ALL`: a refused SQE does not end the batch
        /// (Linux 5.18).
        const SUBMIT_ALL = IORING_SETUP_SUBMIT_ALL;
        /// `IORING_SETUP_COOP_TASKRUN`: no interrupt to run completion
        /// work, it runs at the next enter (Linux 5.19).
        const COOP_TASKRUN = IORING_SETUP_COOP_TASKRUN;
        /// `IORING_SETUP_SQPOLL`: a kernel thread polls the SQ and submits
        /// what is published (Linux 5.1; without privileges from 5.11).
        const SQPOLL = IORING_SETUP_SQPOLL;
        /// `IORING_SETUP_SQ_AFF`: that thread runs on `sq_thread_cpu`
        /// (Linux 5.1).
        const SQ_AFF = IORING_SETUP_SQ_AFF;
    }
}

bitflags! {
    /// What the running kernel's io_uring offers: the `IORING_FEAT_*` bits
    /// `io_uring_setup` reports in `io_uring_params.features` (see
    /// `io_uring_setup(2)`, which gives the release of each), as
    /// [`URingContext::features`](crate::URingContext::features) returns
    /// them. Bits a newer kernel sets that these bindings do not name are
    /// kept.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct FeatureFlags: u32 {
        /// `IORING_FEAT_SINGLE_MMAP`: one mapping serves both rings (5.4).
        const SINGLE_MMAP = IORING_FEAT_SINGLE_MMAP;
        /// `IORING_FEAT_NODROP`: completions that do not fit are kept, not
        /// dropped (5.5).
        const NODROP = IORING_FEAT_NODROP;
        /// `IORING_FEAT_SUBMIT_STABLE`: the kernel has copied what an SQE
        /// points at by the time submit returns (5.5).
        const SUBMIT_STABLE = IORING_FEAT_SUBMIT_STABLE;
        /// `IORING_FEAT_RW_CUR_POS`: offset -1 reads and writes at the
        /// file's current position (5.6).
        const RW_CUR_POS = IORING_FEAT_RW_CUR_POS;
        /// `IORING_FEAT_CUR_PERSONALITY`: operations run with the
        /// credentials of the task that submits them (5.6).
        const CUR_PERSONALITY = IORING_FEAT_CUR_PERSONALITY;
        /// `IORING_FEAT_FAST_POLL`: readiness-based operations wait on a
        /// poll rather than a worker thread (5.7).
        const FAST_POLL = IORING_FEAT_FAST_POLL;
        /// `IORING_FEAT_POLL_32BITS`: polls take all 32 bits of events
        /// (5.9).
        const POLL_32BITS = IORING_FEAT_POLL_32BITS;
        /// `IORING_FEAT_SQPOLL_NONFIXED`: an SQPOLL ring may use plain
        /// descriptors (5.11).
        const SQPOLL_NONFIXED = IORING_FEAT_SQPOLL_NONFIXED;
        /// `IORING_FEAT_EXT_ARG`: `IORING_ENTER_EXT_ARG` (a timeout on
        /// enter) (5.11).
        const EXT_ARG = IORING_FEAT_EXT_ARG;
        /// `IORING_FEAT_NATIVE_WORKERS`: workers are threads of the
        /// submitting process (5.12).
        const NATIVE_WORKERS = IORING_FEAT_NATIVE_WORKERS;
        /// `IORING_FEAT_RSRC_TAGS`: registered files and buffers take tags
        /// (5.13).
        const RSRC_TAGS = IORING_FEAT_RSRC_TAGS;
        /// `IORING_FEAT_CQE_SKIP`: `IOSQE_CQE_SKIP_SUCCESS` (5.17).
        const CQE_SKIP = IORING_FEAT_CQE_SKIP;
        /// `IORING_FEAT_LINKED_FILE`: a linked SQE's file is looked up when
        /// it starts, not when it is submitted (5.17).
        const LINKED_FILE = IORING_FEAT_LINKED_FILE;
        // Bits newer kernels set (REG_REG_RING, 6.3, and later) are kept
        // by `from_bits_retain`.
        const _ = !0;
    }
}

bitflags! {
    /// Flags a completion carries (`IORING_CQE_F_*`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub(crate) struct CqeFlags: u32 {
        /// `IORING_CQE_F_MORE`: the operation is still in flight and will
        /// complete again (multishot; Linux 5.13).
        const MORE = IORING_CQE_F_MORE;
        /// `IORING_CQE_F_BUFFER`: the operation picked a provided buffer,
        /// whose id is in the flags' upper 16 bits
        /// ([`CQE_BUFFER_SHIFT`]) (Linux 5.7).
        const BUFFER = IORING_CQE_F_BUFFER;
        /// `IORING_CQE_F_SOCK_NONEMPTY`: the socket had more data to read
        /// when the receive completed (Linux 5.19).
        const SOCK_NONEMPTY = IORING_CQE_F_SOCK_NONEMPTY;
        /// `IORING_CQE_F_NOTIF`: a zero-copy send's notification that the
        /// kernel is done with the buffer (Linux 6.0).
        const NOTIF = IORING_CQE_F_NOTIF;
        /// `IORING_CQE_F_BUF_MORE` (Linux 6.12, newer than the bindings):
        /// the kernel will go on writing the provided buffer named, as it
        /// does on a ring registered with `IOU_PBUF_RING_INC`, which the
        /// context never asks for.
        const BUF_MORE = 1 << 4;
    }
}

/// Where a completion's flags keep the id of the provided buffer it used
/// (`IORING_CQE_BUFFER_SHIFT`): the upper 16 bits.
pub(crate) const CQE_BUFFER_SHIFT: u32 = IORING_CQE_BUFFER_SHIFT;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqe_flags_are_the_iosqe_bits_of_the_same_name() {
        assert_eq!(IosqeFlags::from(SqeFlags::ASYNC), IosqeFlags::ASYNC);
        assert_eq!(SqeFlags::all().bits(), IosqeFlags::ASYNC.bits());
        // Unnamed bits, however made, never reach an SQE.
        let smuggled = SqeFlags::from_bits_retain(IosqeFlags::all().bits());
        assert_eq!(IosqeFlags::from(smuggled), IosqeFlags::ASYNC);
        // The kernel's seven flags, bits 0 to 6.
        assert_eq!(IosqeFlags::all().bits(), 0x7f);
    }
}

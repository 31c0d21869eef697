//! Operations on rings and their file tables: [`MsgRing`] and
//! [`FilesUpdate`].

use super::{KeepAlive, KernelMemory, Operation, Prepared, Target};
use crate::abi::{Sqe, URingOperation};
use crate::bindings::IORING_MSG_DATA;
use crate::{Error, Result};

/// `IORING_MSG_RING_FLAGS_PASS` (Linux 6.3): the target's CQE flags come
/// from the SQE's `file_index`, as liburing's
/// `io_uring_prep_msg_ring_cqe_flags(3)` sets them. Newer than the
/// bindings' header (6.1): `1U << 1` in `include/uapi/linux/io_uring.h`.
const IORING_MSG_RING_FLAGS_PASS: u32 = 1 << 1;

/// `IORING_OP_MSG_RING` (Linux 5.18), in its data form: posts a
/// completion on another ring, to wake it or hand it work, without a
/// syscall on that ring.
///
/// The target ring's completion carries the `user_data` and `result`
/// chosen here (and, from Linux 6.3, CQE `flags`). The target's allowlist
/// is not consulted: restrictions govern what a ring submits, not what it
/// receives. A [`URingContext`](crate::URingContext) that receives one
/// yields it from [`wait`](crate::URingContext::wait) as `(user_data,
/// Ok(result))` (or `Err` for a negative result) and releases nothing for
/// it: its own operations carry identities of the context's own, all with
/// bit 63 set, and this operation refuses such a user_data
/// ([`Error::ReservedUserData`]), so no message sent with this crate can
/// pass for one of the target's operations and release what the kernel
/// still uses. (Code that holds the target's ring fd and posts completions
/// by other means, another io_uring library or a hand-made SQE, could forge
/// one; holding a ring fd also lets it map that ring and write its
/// completion queue directly.)
///
/// Completes, on this ring, with 0 once posted, or (from
/// `io_uring_prep_msg_ring(3)`) `EBADFD` if the target is not an io_uring,
/// `EOVERFLOW` if the target's completion ring could take no more,
/// `ENOMEM`, or `EINVAL` for a bad field (flags on a kernel without them).
///
/// The file-passing form (`IORING_MSG_SEND_FD`) is not offered: it moves a
/// registered file into another ring's table, which breaks what a ring
/// restricted to registered files promises (see
/// [`URingAllowlist`](crate::URingAllowlist)). An allowlist that allows
/// `MsgRing` allows both forms, though: the kernel does not tell them
/// apart.
///
/// ```
/// use std::sync::Arc;
/// use ringfence::op::MsgRing;
/// use ringfence::URingContext;
///
/// let sender = URingContext::new(4, None)?;
/// let target = Arc::new(URingContext::new(4, None)?);
/// sender.add(MsgRing::data(target.as_target(), 42, 7), 1)?;
/// assert_eq!(sender.wait()?.next().unwrap().1?, 0);
/// let (user_data, result) = target.wait()?.next().unwrap();
/// assert_eq!((user_data, result?), (42, 7));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct MsgRing {
    target: Target,
    user_data: u64,
    result: i32,
    flags: Option<u32>,
}

impl MsgRing {
    /// Posts a completion with `user_data` (below `1 << 63`, else the add
    /// fails with [`Error::ReservedUserData`]) and `result` on the ring
    /// behind `target`: a context's
    /// [`as_target`](crate::URingContext::as_target), any io_uring fd, or
    /// a registered one.
    pub fn data(target: impl Into<Target>, user_data: u64, result: i32) -> MsgRing {
        MsgRing {
            target: target.into(),
            user_data,
            result,
            flags: None,
        }
    }

    /// The same, with CQE `flags` on the target's completion
    /// (`IORING_MSG_RING_FLAGS_PASS`, Linux 6.3; older kernels fail it with
    /// `EINVAL`). A target context reads them from
    /// [`Completion`](crate::Completion); `IORING_CQE_F_MORE` among them
    /// still releases nothing there.
    pub fn cqe_flags(self, flags: u32) -> MsgRing {
        MsgRing {
            flags: Some(flags),
            ..self
        }
    }
}

impl Operation for MsgRing {
    const OPCODE: URingOperation = URingOperation::MsgRing;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        if self.user_data >> 63 != 0 {
            return Err(Error::ReservedUserData(self.user_data));
        }
        let mut sqe = Sqe::new(Self::OPCODE);
        self.target.fill(&mut sqe);
        sqe.set_addr(u64::from(IORING_MSG_DATA));
        // The target's completion: `res` from `len`, user_data from `off`.
        sqe.set_len(self.result as u32);
        sqe.set_offset(self.user_data);
        if let Some(flags) = self.flags {
            sqe.set_op_flags(IORING_MSG_RING_FLAGS_PASS);
            sqe.set_file_index(flags);
        }
        Ok(Prepared::new::<Self>(sqe, KeepAlive::target(self.target)))
    }
}

/// `IORING_OP_FILES_UPDATE` (Linux 5.6): replaces entries of the ring's
/// registered file table from a submitted operation, as the register call
/// `IORING_REGISTER_FILES_UPDATE` does from a syscall.
///
/// Completes with the number of entries updated, or `EINVAL` (no file
/// table, or entries past its end), `EBADF` (a descriptor that is not
/// open), `ENXIO` (no table registered). The kernel refuses it with
/// `IOSQE_FIXED_FILE` (`EINVAL`), so a ring that requires `FIXED_FILE`
/// cannot run it; on a restricted ring, allowing it lets the process put
/// any file it can open into the table (see
/// [`URingAllowlist`](crate::URingAllowlist)).
pub struct FilesUpdate {
    offset: u32,
    files: Vec<Option<Target>>,
}

impl FilesUpdate {
    /// Sets the table's entries from index `offset` (below `u32::MAX`, else
    /// the add fails with [`Error::FixedSlotOutOfRange`]) on to `files`, in
    /// order: `Some` registers that file (the table keeps its own
    /// reference, so the caller may close its descriptor once this has
    /// completed), `None` clears the entry. The files stay open until the
    /// completion.
    pub fn new(offset: u32, files: impl IntoIterator<Item = Option<Target>>) -> FilesUpdate {
        FilesUpdate {
            offset,
            files: files.into_iter().collect(),
        }
    }
}

/// What a [`FilesUpdate`] keeps alive: the descriptor array the kernel
/// reads, and the files behind it.
struct UpdateArray {
    fds: Box<[i32]>,
    _files: Vec<super::SharedFd>,
}

impl Operation for FilesUpdate {
    const OPCODE: URingOperation = URingOperation::FilesUpdate;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        if self.files.iter().flatten().any(Target::is_fixed) {
            return Err(Error::FixedFileNotSupported(Self::OPCODE));
        }
        // `u32::MAX` is `IORING_FILE_INDEX_ALLOC`: the kernel would pick the
        // slots and write them back into the array, which this operation
        // neither offers nor lets the kernel write.
        if self.offset == u32::MAX {
            return Err(Error::FixedSlotOutOfRange(self.offset));
        }
        // -1 clears an entry (`io_sqe_files_update`).
        let fds: Box<[i32]> = self
            .files
            .iter()
            .map(|file| file.as_ref().map_or(-1, Target::raw_fd))
            .collect();
        // More than u32::MAX entries is past any table: the kernel refuses
        // what does not fit it.
        let len = u32::try_from(fds.len()).unwrap_or(u32::MAX);
        let (array, at) = KernelMemory::new(UpdateArray {
            _files: self
                .files
                .into_iter()
                .flatten()
                .filter_map(Target::keep_alive)
                .collect(),
            fds,
        });
        let mut sqe = Sqe::new(Self::OPCODE);
        // SAFETY: `at` points at the array `array` owns, which only the
        // kernel reads from now on (it writes it back only for
        // `IORING_FILE_INDEX_ALLOC`, refused above); a shared borrow to find
        // the descriptors changes nothing. The cast exposes the provenance.
        sqe.set_addr(unsafe { at.as_ref() }.fds.as_ptr() as usize as u64);
        sqe.set_len(len);
        sqe.set_offset(u64::from(self.offset));
        let keep_alive = KeepAlive {
            owned: Some(array),
            ..KeepAlive::default()
        };
        Ok(Prepared::new::<Self>(sqe, keep_alive))
    }
}

impl std::fmt::Debug for FilesUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilesUpdate")
            .field("offset", &self.offset)
            .field("files", &self.files.len())
            .finish()
    }
}

//! [`Fsync`] and [`Fallocate`].

use super::{KeepAlive, Operation, Prepared, Target};
use crate::abi::{FallocateMode, FsyncFlags, Sqe, URingOperation};
use crate::Result;

/// `IORING_OP_FSYNC` (Linux 5.1): `fsync(2)`, or with
/// [`FsyncFlags::DATASYNC`] `fdatasync(2)`. Completes with 0.
#[derive(Debug)]
pub struct Fsync {
    target: Target,
    flags: FsyncFlags,
}

impl Fsync {
    /// Flushes `target`'s data and metadata to its device.
    pub fn new(target: impl Into<Target>) -> Fsync {
        Fsync {
            target: target.into(),
            flags: FsyncFlags::empty(),
        }
    }

    /// The same, with `flags` (`DATASYNC`: data only, as `fdatasync`).
    pub fn flags(self, flags: FsyncFlags) -> Fsync {
        Fsync { flags, ..self }
    }
}

impl Operation for Fsync {
    const OPCODE: URingOperation = URingOperation::Fsync;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        let mut sqe = Sqe::new(Self::OPCODE);
        self.target.fill(&mut sqe);
        sqe.set_op_flags(self.flags.bits());
        Ok(Prepared::new::<Self>(sqe, KeepAlive::target(self.target)))
    }
}

/// `IORING_OP_FALLOCATE` (Linux 5.6): `fallocate(2)`. Completes with 0.
#[derive(Debug)]
pub struct Fallocate {
    target: Target,
    offset: u64,
    len: u64,
    mode: FallocateMode,
}

impl Fallocate {
    /// `fallocate(fd, mode, offset, len)` on `target`, `offset` and `len`
    /// in bytes: an empty `mode` allocates (and extends the file), and
    /// `PUNCH_HOLE | KEEP_SIZE` deallocates (the range then reads as
    /// zeros); see [`FallocateMode`] for the rest. An `offset` above
    /// [`MAX_FILE_OFFSET`](crate::MAX_FILE_OFFSET) fails the add with
    /// [`Error::InvalidOffset`](crate::Error::InvalidOffset). The
    /// completion carries `fallocate(2)`'s errno: `EOPNOTSUPP` for a mode
    /// the file system lacks, `EINVAL` for a forbidden combination or a
    /// zero `len`, `ENOSPC`, `EFBIG`.
    pub fn new(target: impl Into<Target>, offset: u64, len: u64, mode: FallocateMode) -> Fallocate {
        Fallocate {
            target: target.into(),
            offset,
            len,
            mode,
        }
    }
}

impl Operation for Fallocate {
    const OPCODE: URingOperation = URingOperation::Fallocate;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        let offset = super::file_offset(self.offset)?;
        let mut sqe = Sqe::new(Self::OPCODE);
        self.target.fill(&mut sqe);
        sqe.set_offset(offset);
        // For fallocate the kernel reads the length from `addr` and the
        // mode from `len`.
        sqe.set_addr(self.len);
        sqe.set_len(self.mode.bits());
        Ok(Prepared::new::<Self>(sqe, KeepAlive::target(self.target)))
    }
}

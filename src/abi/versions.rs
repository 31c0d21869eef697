//! The Linux release that added each operation.

use super::opcode::URingOperation;

impl URingOperation {
    /// The Linux release that added this operation, as `(major, minor)`:
    /// an older kernel completes its SQEs with `EINVAL` and leaves it out
    /// of [`Probe`](crate::Probe).
    ///
    /// Source: the "Available since" line of each opcode in
    /// `io_uring_enter(2)` (liburing's `man/io_uring_enter.2`); the eight
    /// opcodes it lists without one (`NOP` to `POLL_REMOVE`) are the set
    /// io_uring shipped with, in 5.1. The operations after `SendmsgZc`,
    /// which the man page predates, from the kernel's release notes
    /// (kernelnewbies.org, "Linux 6.7" to "Linux 6.16", io_uring sections)
    /// and the merge that added each to `include/uapi/linux/io_uring.h`.
    ///
    /// ```
    /// use ringfence::URingOperation;
    ///
    /// assert_eq!(URingOperation::Readv.since(), (5, 1));
    /// assert_eq!(URingOperation::AsyncCancel.since(), (5, 5));
    /// ```
    pub const fn since(self) -> (u32, u32) {
        use URingOperation::*;
        match self {
            Nop | Readv | Writev | Fsync | ReadFixed | WriteFixed | PollAdd | PollRemove => (5, 1),
            SyncFileRange => (5, 2),
            Sendmsg | Recvmsg => (5, 3),
            Timeout => (5, 4),
            TimeoutRemove | Accept | AsyncCancel | LinkTimeout | Connect => (5, 5),
            Fallocate | Openat | Close | FilesUpdate | Statx | Read | Write | Fadvise | Madvise
            | Send | Recv | Openat2 | EpollCtl => (5, 6),
            Splice | ProvideBuffers | RemoveBuffers => (5, 7),
            Tee => (5, 8),
            Shutdown | Renameat | Unlinkat => (5, 11),
            Mkdirat | Symlinkat | Linkat => (5, 15),
            MsgRing => (5, 18),
            Fsetxattr | Setxattr | Fgetxattr | Getxattr | Socket | UringCmd => (5, 19),
            SendZc => (6, 0),
            SendmsgZc => (6, 1),
            ReadMultishot | Waitid | FutexWait | FutexWake | FutexWaitv => (6, 7),
            FixedFdInstall => (6, 8),
            Ftruncate => (6, 9),
            Bind | Listen => (6, 11),
            RecvZc | EpollWait | ReadvFixed | WritevFixed => (6, 15),
            Pipe => (6, 16),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_a_release_and_releases_never_go_back() {
        // The match above is exhaustive, so every operation has one; the
        // kernel numbers opcodes in the order they were added, so a
        // release earlier than the one before it is a typo.
        let releases: Vec<_> = URingOperation::ALL.iter().map(|op| op.since()).collect();
        assert_eq!(releases.len(), URingOperation::ALL.len());
        for (op, pair) in URingOperation::ALL.iter().skip(1).zip(releases.windows(2)) {
            assert!(
                pair[0] <= pair[1],
                "{op:?}: {:?} after {:?}",
                pair[1],
                pair[0]
            );
            assert!(pair[1] >= (5, 1), "{op:?}");
        }
        assert_eq!(URingOperation::SendmsgZc.since(), (6, 1));
        assert_eq!(URingOperation::ReadvFixed.since(), (6, 15));
    }
}

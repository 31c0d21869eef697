//! The kernel's operation and register-call numbers as enums.

use crate::bindings::*;

// Operations newer than the committed bindings (Linux 6.1's header ends at
// `IORING_OP_SENDMSG_ZC`, 48), numbered by hand in the order of
// `enum io_uring_op` in the kernel's `include/uapi/linux/io_uring.h`
// (Linux 6.16); `URingOperation::since` gives each one's release. The
// kernel numbers opcodes by their place in that enum, so the order is the
// number: `tests/setup.rs` checks 60 and 61 by moving data with them and
// 62 as the last opcode a 6.18 probe reports. Local items shadow the glob
// import above, so a regenerated header that has them changes nothing.
const IORING_OP_READ_MULTISHOT: u32 = 49;
const IORING_OP_WAITID: u32 = 50;
const IORING_OP_FUTEX_WAIT: u32 = 51;
const IORING_OP_FUTEX_WAKE: u32 = 52;
const IORING_OP_FUTEX_WAITV: u32 = 53;
const IORING_OP_FIXED_FD_INSTALL: u32 = 54;
const IORING_OP_FTRUNCATE: u32 = 55;
const IORING_OP_BIND: u32 = 56;
const IORING_OP_LISTEN: u32 = 57;
const IORING_OP_RECV_ZC: u32 = 58;
const IORING_OP_EPOLL_WAIT: u32 = 59;
const IORING_OP_READV_FIXED: u32 = 60;
const IORING_OP_WRITEV_FIXED: u32 = 61;
const IORING_OP_PIPE: u32 = 62;

/// Declares a fieldless `u8` enum over kernel constants, in kernel
/// numbering, with `ALL` (every variant, in order) and `from_raw`.
macro_rules! kernel_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $value:ident,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u8)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vmeta])* #[doc = concat!("`", stringify!($value), "`")] $variant = $value as u8,)*
        }

        impl $name {
            /// Every variant, in kernel numbering.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The variant with kernel number `raw`, if the bindings know it.
            pub fn from_raw(raw: u8) -> Option<$name> {
                Self::ALL.get(usize::from(raw)).copied()
            }
        }
    };
}

kernel_enum! {
    /// An io_uring operation (an SQE opcode): the kernel's `IORING_OP_*`
    /// without the prefix, in CamelCase.
    pub enum URingOperation {
        Nop = IORING_OP_NOP,
        Readv = IORING_OP_READV,
        Writev = IORING_OP_WRITEV,
        Fsync = IORING_OP_FSYNC,
        ReadFixed = IORING_OP_READ_FIXED,
        WriteFixed = IORING_OP_WRITE_FIXED,
        PollAdd = IORING_OP_POLL_ADD,
        PollRemove = IORING_OP_POLL_REMOVE,
        SyncFileRange = IORING_OP_SYNC_FILE_RANGE,
        Sendmsg = IORING_OP_SENDMSG,
        Recvmsg = IORING_OP_RECVMSG,
        Timeout = IORING_OP_TIMEOUT,
        TimeoutRemove = IORING_OP_TIMEOUT_REMOVE,
        Accept = IORING_OP_ACCEPT,
        AsyncCancel = IORING_OP_ASYNC_CANCEL,
        LinkTimeout = IORING_OP_LINK_TIMEOUT,
        Connect = IORING_OP_CONNECT,
        Fallocate = IORING_OP_FALLOCATE,
        Openat = IORING_OP_OPENAT,
        Close = IORING_OP_CLOSE,
        FilesUpdate = IORING_OP_FILES_UPDATE,
        Statx = IORING_OP_STATX,
        Read = IORING_OP_READ,
        Write = IORING_OP_WRITE,
        Fadvise = IORING_OP_FADVISE,
        Madvise = IORING_OP_MADVISE,
        Send = IORING_OP_SEND,
        Recv = IORING_OP_RECV,
        Openat2 = IORING_OP_OPENAT2,
        EpollCtl = IORING_OP_EPOLL_CTL,
        Splice = IORING_OP_SPLICE,
        ProvideBuffers = IORING_OP_PROVIDE_BUFFERS,
        RemoveBuffers = IORING_OP_REMOVE_BUFFERS,
        Tee = IORING_OP_TEE,
        Shutdown = IORING_OP_SHUTDOWN,
        Renameat = IORING_OP_RENAMEAT,
        Unlinkat = IORING_OP_UNLINKAT,
        Mkdirat = IORING_OP_MKDIRAT,
        Symlinkat = IORING_OP_SYMLINKAT,
        Linkat = IORING_OP_LINKAT,
        MsgRing = IORING_OP_MSG_RING,
        Fsetxattr = IORING_OP_FSETXATTR,
        Setxattr = IORING_OP_SETXATTR,
        Fgetxattr = IORING_OP_FGETXATTR,
        Getxattr = IORING_OP_GETXATTR,
        Socket = IORING_OP_SOCKET,
        UringCmd = IORING_OP_URING_CMD,
        SendZc = IORING_OP_SEND_ZC,
        SendmsgZc = IORING_OP_SENDMSG_ZC,
        ReadMultishot = IORING_OP_READ_MULTISHOT,
        Waitid = IORING_OP_WAITID,
        FutexWait = IORING_OP_FUTEX_WAIT,
        FutexWake = IORING_OP_FUTEX_WAKE,
        FutexWaitv = IORING_OP_FUTEX_WAITV,
        FixedFdInstall = IORING_OP_FIXED_FD_INSTALL,
        Ftruncate = IORING_OP_FTRUNCATE,
        Bind = IORING_OP_BIND,
        Listen = IORING_OP_LISTEN,
        RecvZc = IORING_OP_RECV_ZC,
        EpollWait = IORING_OP_EPOLL_WAIT,
        ReadvFixed = IORING_OP_READV_FIXED,
        WritevFixed = IORING_OP_WRITEV_FIXED,
        Pipe = IORING_OP_PIPE,
    }
}

kernel_enum! {
    /// An `io_uring_register` call: the kernel's `IORING_REGISTER_*` without
    /// the prefix (`IORING_UNREGISTER_*` keep `Unregister`), in CamelCase.
    pub enum RegisterOperation {
        Buffers = IORING_REGISTER_BUFFERS,
        UnregisterBuffers = IORING_UNREGISTER_BUFFERS,
        Files = IORING_REGISTER_FILES,
        UnregisterFiles = IORING_UNREGISTER_FILES,
        Eventfd = IORING_REGISTER_EVENTFD,
        UnregisterEventfd = IORING_UNREGISTER_EVENTFD,
        FilesUpdate = IORING_REGISTER_FILES_UPDATE,
        EventfdAsync = IORING_REGISTER_EVENTFD_ASYNC,
        Probe = IORING_REGISTER_PROBE,
        Personality = IORING_REGISTER_PERSONALITY,
        UnregisterPersonality = IORING_UNREGISTER_PERSONALITY,
        Restrictions = IORING_REGISTER_RESTRICTIONS,
        EnableRings = IORING_REGISTER_ENABLE_RINGS,
        Files2 = IORING_REGISTER_FILES2,
        FilesUpdate2 = IORING_REGISTER_FILES_UPDATE2,
        Buffers2 = IORING_REGISTER_BUFFERS2,
        BuffersUpdate = IORING_REGISTER_BUFFERS_UPDATE,
        IowqAff = IORING_REGISTER_IOWQ_AFF,
        UnregisterIowqAff = IORING_UNREGISTER_IOWQ_AFF,
        IowqMaxWorkers = IORING_REGISTER_IOWQ_MAX_WORKERS,
        RingFds = IORING_REGISTER_RING_FDS,
        UnregisterRingFds = IORING_UNREGISTER_RING_FDS,
        PbufRing = IORING_REGISTER_PBUF_RING,
        UnregisterPbufRing = IORING_UNREGISTER_PBUF_RING,
        SyncCancel = IORING_REGISTER_SYNC_CANCEL,
        FileAllocRange = IORING_REGISTER_FILE_ALLOC_RANGE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_follow_kernel_numbering() {
        // The bindings' operations, then the hand-numbered ones after them.
        assert_eq!(URingOperation::SendmsgZc as u32 + 1, IORING_OP_LAST);
        assert_eq!(URingOperation::ALL.len(), IORING_OP_PIPE as usize + 1);
        for (i, op) in URingOperation::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i);
            assert_eq!(URingOperation::from_raw(i as u8), Some(*op));
        }
        assert_eq!(URingOperation::AsyncCancel as u32, IORING_OP_ASYNC_CANCEL);
        assert_eq!(
            URingOperation::from_raw(URingOperation::ALL.len() as u8),
            None
        );
        assert_eq!(RegisterOperation::ALL.len(), IORING_REGISTER_LAST as usize);
        for (i, op) in RegisterOperation::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i);
            assert_eq!(RegisterOperation::from_raw(i as u8), Some(*op));
        }
        assert_eq!(
            RegisterOperation::EnableRings as u32,
            IORING_REGISTER_ENABLE_RINGS
        );
    }
}

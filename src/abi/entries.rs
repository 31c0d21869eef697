//! The kernel's ring entries and restriction entries, as newtypes: the only
//! code in the crate that names bindgen's unions.

use super::flags::{CqeFlags, IosqeFlags};
use super::opcode::URingOperation;
use crate::bindings::{
    io_uring_cqe, io_uring_params, io_uring_restriction, io_uring_restriction__bindgen_ty_1,
    io_uring_sqe, IORING_RESTRICTION_REGISTER_OP, IORING_RESTRICTION_SQE_FLAGS_ALLOWED,
    IORING_RESTRICTION_SQE_FLAGS_REQUIRED, IORING_RESTRICTION_SQE_OP,
};

// The kernel ABI: an SQE is 64 bytes, a CQE 16, the setup parameters 120
// and a restriction 16 (without IORING_SETUP_SQE128 / CQE32, which we never
// set).
const _: () = assert!(size_of::<io_uring_sqe>() == 64);
const _: () = assert!(size_of::<io_uring_cqe>() == 16);
const _: () = assert!(size_of::<io_uring_params>() == 120);
const _: () = assert!(size_of::<io_uring_restriction>() == 16);

/// One submission queue entry, built in memory of our own and then copied
/// into the ring.
///
/// Every field starts zeroed, as the kernel requires of the fields an
/// operation does not use; setters fill the union members by the meaning an
/// operation gives them.
#[repr(transparent)]
pub(crate) struct Sqe(io_uring_sqe);

impl Clone for Sqe {
    fn clone(&self) -> Sqe {
        // SAFETY: `io_uring_sqe` is plain old data with no drop glue (bindgen
        // leaves out `Copy` only for its trailing zero-length array), so a
        // bitwise copy is a valid, independent value.
        Sqe(unsafe { std::ptr::read(&self.0) })
    }
}

impl Sqe {
    /// An SQE for `opcode` with no file (`fd` -1) and every other field
    /// zero.
    pub(crate) fn new(opcode: URingOperation) -> Sqe {
        // SAFETY: `io_uring_sqe` is plain old data (integers, unions of
        // integers and zero-sized markers), for which all-zero bytes are a
        // valid value.
        let mut sqe: io_uring_sqe = unsafe { std::mem::MaybeUninit::zeroed().assume_init() };
        sqe.opcode = opcode as u8;
        sqe.fd = -1;
        Sqe(sqe)
    }

    /// The SQE as the ring holds it.
    pub(crate) fn as_raw(&self) -> &io_uring_sqe {
        &self.0
    }

    /// The SQE as the ring holds it, by value.
    pub(crate) fn into_raw(self) -> io_uring_sqe {
        self.0
    }

    /// Reads an SQE out of ring memory (as a simulated kernel does).
    ///
    /// # Safety
    ///
    /// `raw` must be valid for a read of one `io_uring_sqe` that nothing
    /// writes concurrently.
    #[cfg_attr(not(any(test, feature = "sim")), allow(dead_code))]
    pub(crate) unsafe fn read(raw: *const io_uring_sqe) -> Sqe {
        // SAFETY: forwarded from the caller; every bit pattern is a valid
        // `io_uring_sqe`.
        Sqe(unsafe { raw.read() })
    }

    pub(crate) fn set_fd(&mut self, fd: i32) {
        self.0.fd = fd;
    }

    /// The SQE flags (`IOSQE_*`), replacing any set before.
    pub(crate) fn set_flags(&mut self, flags: IosqeFlags) {
        self.0.flags = flags.bits();
    }

    /// `off`: the file offset of a read, write or fallocate.
    pub(crate) fn set_offset(&mut self, offset: u64) {
        self.0.__bindgen_anon_1.off = offset;
    }

    /// `addr`: an address in our memory (an iovec array), or the
    /// user_data a cancellation targets, or fallocate's length.
    pub(crate) fn set_addr(&mut self, addr: u64) {
        self.0.__bindgen_anon_2.addr = addr;
    }

    /// `len`: an iovec count, a length, or fallocate's mode.
    pub(crate) fn set_len(&mut self, len: u32) {
        self.0.len = len;
    }

    /// `addr2`: a second address (connect's and accept's address length,
    /// a timeout removal's new timespec), sharing the field with `off`.
    pub(crate) fn set_addr2(&mut self, addr2: u64) {
        self.0.__bindgen_anon_1.addr2 = addr2;
    }

    /// `addr3`: a third address (the kernel's `addr3`, the first word of
    /// the SQE's last union).
    #[allow(dead_code)] // For the operations being added (issue 10).
    pub(crate) fn set_addr3(&mut self, addr3: u64) {
        // bindgen spells this union as its storage, two `u64`s: `addr3`
        // is the first.
        self.0.__bindgen_anon_6.bindgen_union_field[0] = addr3;
    }

    /// `buf_index`: which registered buffer a fixed read or write uses.
    pub(crate) fn set_buf_index(&mut self, index: u16) {
        self.0.__bindgen_anon_4.buf_index = index;
    }

    /// `buf_group`: the provided-buffer group a `BUFFER_SELECT` operation
    /// picks from.
    #[allow(dead_code)] // For the operations being added (issue 10).
    pub(crate) fn set_buf_group(&mut self, group: u16) {
        self.0.__bindgen_anon_4.buf_group = group;
    }

    /// `file_index`: the fixed-file slot an open, accept or socket installs
    /// its file into, plus one (0 means "a plain descriptor").
    pub(crate) fn set_file_index(&mut self, index: u32) {
        self.0.__bindgen_anon_5.file_index = index;
    }

    /// `splice_fd_in`: splice's and tee's source descriptor.
    pub(crate) fn set_splice_fd_in(&mut self, fd: i32) {
        self.0.__bindgen_anon_5.splice_fd_in = fd;
    }

    /// `ioprio`: for several operations, their own extra flags (multishot
    /// accept, recv's poll-first, send's zero-copy flags).
    #[allow(dead_code)] // For the operations being added (issue 10).
    pub(crate) fn set_ioprio(&mut self, ioprio: u16) {
        self.0.ioprio = ioprio;
    }

    /// The operation's own flags (`rw_flags`, `fsync_flags`, `cancel_flags`
    /// ...: one `u32` union member, named by each operation).
    pub(crate) fn set_op_flags(&mut self, flags: u32) {
        self.0.__bindgen_anon_3.rw_flags = flags;
    }

    /// `poll32_events`: the `POLL*` events a poll waits for.
    pub(crate) fn set_poll_events(&mut self, events: u32) {
        // The kernel swaps the halfwords of poll32_events on big-endian.
        #[cfg(target_endian = "big")]
        let events = events.rotate_left(16);
        self.0.__bindgen_anon_3.poll32_events = events;
    }

    pub(crate) fn set_user_data(&mut self, user_data: u64) {
        self.0.user_data = user_data;
    }

    pub(crate) fn opcode(&self) -> u8 {
        self.0.opcode
    }

    pub(crate) fn flags(&self) -> IosqeFlags {
        IosqeFlags::from_bits_retain(self.0.flags)
    }

    pub(crate) fn fd(&self) -> i32 {
        self.0.fd
    }

    #[cfg_attr(not(any(test, feature = "sim")), allow(dead_code))]
    pub(crate) fn offset(&self) -> u64 {
        // SAFETY: every member of this union is a plain integer.
        unsafe { self.0.__bindgen_anon_1.off }
    }

    #[cfg_attr(not(any(test, feature = "sim")), allow(dead_code))]
    pub(crate) fn addr(&self) -> u64 {
        // SAFETY: every member of this union is a plain integer.
        unsafe { self.0.__bindgen_anon_2.addr }
    }

    #[cfg_attr(not(any(test, feature = "sim")), allow(dead_code))]
    pub(crate) fn len(&self) -> u32 {
        self.0.len
    }

    #[cfg_attr(not(any(test, feature = "sim")), allow(dead_code))]
    pub(crate) fn op_flags(&self) -> u32 {
        // SAFETY: every member of this union is a plain integer.
        unsafe { self.0.__bindgen_anon_3.rw_flags }
    }

    /// `file_index` (the fixed-file slot plus one), as the kernel reads it.
    #[cfg(test)]
    pub(crate) fn file_index(&self) -> u32 {
        // SAFETY: every member of this union is a plain integer.
        unsafe { self.0.__bindgen_anon_5.file_index }
    }

    #[cfg(test)]
    pub(crate) fn splice_fd_in(&self) -> i32 {
        self.file_index() as i32 // The same 32 bits.
    }

    #[cfg_attr(not(any(test, feature = "sim")), allow(dead_code))]
    pub(crate) fn poll_events(&self) -> u32 {
        // SAFETY: every member of this union is a plain integer.
        let events = unsafe { self.0.__bindgen_anon_3.poll32_events };
        #[cfg(target_endian = "big")]
        let events = events.rotate_right(16);
        events
    }

    pub(crate) fn user_data(&self) -> u64 {
        self.0.user_data
    }
}

impl std::fmt::Debug for Sqe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sqe")
            .field("opcode", &URingOperation::from_raw(self.opcode()))
            .field("flags", &self.flags())
            .field("fd", &self.fd())
            .field("user_data", &self.user_data())
            .finish_non_exhaustive()
    }
}

/// One completion queue entry, copied out of the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cqe {
    pub(crate) user_data: u64,
    /// The result: non-negative on success, `-errno` on failure.
    pub(crate) res: i32,
    pub(crate) flags: CqeFlags,
}

impl Cqe {
    /// Reads a CQE out of ring memory, field by field, without creating a
    /// reference to it.
    ///
    /// # Safety
    ///
    /// `raw` must be valid for a read of one `io_uring_cqe` that nothing
    /// writes concurrently.
    pub(crate) unsafe fn read(raw: *const io_uring_cqe) -> Cqe {
        // SAFETY: forwarded from the caller.
        unsafe {
            Cqe {
                user_data: (*raw).user_data,
                res: (*raw).res,
                flags: CqeFlags::from_bits_retain((*raw).flags),
            }
        }
    }

    /// The entry as the kernel lays it out, for a simulated kernel to write.
    #[cfg_attr(not(any(test, feature = "sim")), allow(dead_code))]
    pub(crate) fn to_raw(self) -> io_uring_cqe {
        io_uring_cqe {
            user_data: self.user_data,
            res: self.res,
            flags: self.flags.bits(),
            ..Default::default()
        }
    }
}

/// What one restriction entry restricts (`IORING_RESTRICTION_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RestrictionKind {
    /// Allows one `io_uring_register` opcode.
    RegisterOp,
    /// Allows one SQE opcode.
    SqeOp,
    /// The SQE flags allowed besides the required ones.
    SqeFlagsAllowed,
    /// The SQE flags every SQE must carry.
    SqeFlagsRequired,
}

impl RestrictionKind {
    /// Every kind, for decoding.
    const ALL: [RestrictionKind; 4] = [
        RestrictionKind::RegisterOp,
        RestrictionKind::SqeOp,
        RestrictionKind::SqeFlagsAllowed,
        RestrictionKind::SqeFlagsRequired,
    ];

    fn raw(self) -> u32 {
        match self {
            RestrictionKind::RegisterOp => IORING_RESTRICTION_REGISTER_OP,
            RestrictionKind::SqeOp => IORING_RESTRICTION_SQE_OP,
            RestrictionKind::SqeFlagsAllowed => IORING_RESTRICTION_SQE_FLAGS_ALLOWED,
            RestrictionKind::SqeFlagsRequired => IORING_RESTRICTION_SQE_FLAGS_REQUIRED,
        }
    }
}

/// One entry of the array `IORING_REGISTER_RESTRICTIONS` takes.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct Restriction(io_uring_restriction);

/// The entry restricting `kind` to `value` (an opcode or flag bits).
pub(crate) fn restriction(kind: RestrictionKind, value: u8) -> Restriction {
    Restriction(io_uring_restriction {
        opcode: kind.raw() as u16,
        // All three union members are the same byte.
        __bindgen_anon_1: io_uring_restriction__bindgen_ty_1 { sqe_op: value },
        // The kernel requires the reserved fields to be zero.
        resv: 0,
        resv2: [0; 3],
    })
}

impl Restriction {
    /// What the entry restricts (`None` for an unknown kind) and its value.
    pub(crate) fn parts(&self) -> (Option<RestrictionKind>, u8) {
        let kind = RestrictionKind::ALL
            .into_iter()
            .find(|kind| kind.raw() == u32::from(self.0.opcode));
        // SAFETY: every member of this union is the same `u8`.
        (kind, unsafe { self.0.__bindgen_anon_1.sqe_op })
    }
}

impl std::fmt::Debug for Restriction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, value) = self.parts();
        f.debug_tuple("Restriction")
            .field(&kind)
            .field(&value)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqe_setters_and_getters_agree() {
        let mut sqe = Sqe::new(URingOperation::Readv);
        assert_eq!(sqe.fd(), -1);
        sqe.set_fd(7);
        sqe.set_offset(1 << 40);
        sqe.set_addr(0xdead_beef);
        sqe.set_len(3);
        sqe.set_op_flags(0x11);
        sqe.set_user_data(u64::MAX);
        sqe.set_flags(IosqeFlags::ASYNC);
        assert_eq!(sqe.opcode(), URingOperation::Readv as u8);
        assert_eq!(
            (
                sqe.fd(),
                sqe.offset(),
                sqe.addr(),
                sqe.len(),
                sqe.op_flags()
            ),
            (7, 1 << 40, 0xdead_beef, 3, 0x11)
        );
        assert_eq!(
            (sqe.user_data(), sqe.flags()),
            (u64::MAX, IosqeFlags::ASYNC)
        );
        sqe.set_poll_events(libc::POLLIN as u32);
        assert_eq!(sqe.poll_events(), libc::POLLIN as u32);
        // The raw union member, as the kernel reads it on little-endian.
        #[cfg(target_endian = "little")]
        assert_eq!(sqe.op_flags(), libc::POLLIN as u32);
    }

    #[test]
    fn restrictions_round_trip() {
        for (kind, raw) in [
            (RestrictionKind::RegisterOp, IORING_RESTRICTION_REGISTER_OP),
            (RestrictionKind::SqeOp, IORING_RESTRICTION_SQE_OP),
            (
                RestrictionKind::SqeFlagsAllowed,
                IORING_RESTRICTION_SQE_FLAGS_ALLOWED,
            ),
            (
                RestrictionKind::SqeFlagsRequired,
                IORING_RESTRICTION_SQE_FLAGS_REQUIRED,
            ),
        ] {
            let entry = restriction(kind, 9);
            assert_eq!(u32::from(entry.0.opcode), raw, "{kind:?}");
            assert_eq!(entry.parts(), (Some(kind), 9));
        }
    }
}

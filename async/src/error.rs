//! The error an operation the ring's allowlist refuses fails with.

use std::io;

use ringfence::URingOperation;

/// The ring's allowlist does not allow this operation, so it was not sent
/// to the kernel (which would refuse it with a bare `EACCES`, "Permission
/// denied", that reads like a file's mode bits).
///
/// Carried inside an [`io::Error`] of kind
/// [`PermissionDenied`](io::ErrorKind::PermissionDenied): find it with
/// `err.get_ref().and_then(|e| e.downcast_ref::<NotAllowed>())`. To allow
/// the operation, add it to the allowlist the ring is created with
/// ([`URingAllowlist::allow_submit_operation`](ringfence::URingAllowlist::allow_submit_operation)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotAllowed {
    /// The operation refused.
    pub op: URingOperation,
}

impl std::fmt::Display for NotAllowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "io_uring operation {:?} is not in this ring's allowlist (the ring was created \
             restricted; allow it with URingAllowlist::allow_submit_operation)",
            self.op
        )
    }
}

impl std::error::Error for NotAllowed {}

pub(crate) fn not_allowed(op: URingOperation) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, NotAllowed { op })
}

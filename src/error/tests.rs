//! The error type's errno mapping and messages.

use super::*;

#[test]
fn setup_errnos_name_their_cause() {
    for (errno, needle) in [
        (libc::ENOSYS, "seccomp"),
        (libc::EPERM, "io_uring_disabled"),
        (libc::ENOMEM, "RLIMIT_MEMLOCK"),
    ] {
        let err = setup_error(io::Error::from_raw_os_error(errno));
        assert!(err.to_string().contains(needle), "{err}");
        assert_eq!(io::Error::from(err).raw_os_error(), Some(errno));
    }
    let other = setup_error(io::Error::from_raw_os_error(libc::EINVAL));
    assert!(matches!(other, Error::Setup(_)));
    assert_eq!(io::Error::from(other).raw_os_error(), Some(libc::EINVAL));
}

#[test]
fn enter_errnos_are_classified() {
    let classify = |errno| enter_error(io::Error::from_raw_os_error(errno));
    assert!(matches!(classify(libc::EAGAIN), Error::KernelBusy(_)));
    assert!(matches!(classify(libc::EBUSY), Error::KernelBusy(_)));
    assert!(matches!(classify(libc::EBADFD), Error::Enter(_)));
    let lost = Error::CompletionsLost;
    assert!(lost.to_string().contains("create a new one"), "{lost}");
    assert_eq!(io::Error::from(lost).raw_os_error(), Some(libc::EBADR));
}

#[test]
fn register_errors_keep_the_errno_and_explain() {
    let err = Error::Register {
        call: RegisterOperation::Restrictions,
        source: io::Error::from_raw_os_error(libc::EBADFD),
    };
    assert!(err.to_string().contains("created disabled"), "{err}");
    assert_eq!(io::Error::from(err).raw_os_error(), Some(libc::EBADFD));
}

//! Creating the builder's ring with its setup options, and naming the one
//! a kernel lacks.

use super::URingBuilder;
use crate::abi::SetupFlags;
use crate::bindings::io_uring_params;
use crate::context::URingContext;
use crate::error::{Error, Result};
use crate::sys::Setup;

/// The setup flags a caller can ask for, newest first: the order in which
/// [`unsupported_option`] drops them to find the one a kernel refuses.
const OPTIONS: [(SetupFlags, &str, (u32, u32)); 5] = [
    (
        SetupFlags::COOP_TASKRUN,
        "coop_taskrun (IORING_SETUP_COOP_TASKRUN)",
        (5, 19),
    ),
    (
        SetupFlags::SUBMIT_ALL,
        "submit_all (IORING_SETUP_SUBMIT_ALL)",
        (5, 18),
    ),
    (
        SetupFlags::R_DISABLED,
        "allowlist (IORING_SETUP_R_DISABLED)",
        (5, 10),
    ),
    (SetupFlags::CLAMP, "clamp (IORING_SETUP_CLAMP)", (5, 6)),
    (
        SetupFlags::CQSIZE,
        "cq_entries (IORING_SETUP_CQSIZE)",
        (5, 5),
    ),
];

/// Which of the options in `flags` the kernel lacks: drops them newest
/// first until `creates` succeeds, and names the last one dropped.
fn unsupported_option(
    mut flags: SetupFlags,
    mut creates: impl FnMut(SetupFlags) -> bool,
) -> Option<(&'static str, (u32, u32))> {
    for (flag, name, since) in OPTIONS {
        if flags.contains(flag) {
            flags.remove(flag);
            if creates(flags) {
                return Some((name, since));
            }
        }
    }
    None
}

impl URingBuilder<'_> {
    /// Creates the ring with the setup flags asked for, dropping a default
    /// `SUBMIT_ALL` the kernel refuses, and naming an option it refuses.
    pub(super) fn create(&self, setup: Setup<'_>) -> Result<URingContext> {
        let mut flags = SetupFlags::empty();
        flags.set(SetupFlags::R_DISABLED, self.allowlist.is_some());
        flags.set(SetupFlags::CQSIZE, self.cq_entries.is_some());
        flags.set(SetupFlags::CLAMP, self.clamp);
        flags.set(SetupFlags::COOP_TASKRUN, self.coop_taskrun);
        flags.set(SetupFlags::SUBMIT_ALL, self.submit_all != Some(false));
        flags.set(SetupFlags::SQPOLL, self.sqpoll.is_some());
        let (idle, cpu) = self.sqpoll.unwrap_or_default();
        flags.set(SetupFlags::SQ_AFF, cpu.is_some());
        let try_create = |flags: SetupFlags| {
            let params = io_uring_params {
                flags: flags.bits(),
                // Only read with CQSIZE; CLAMP clamps anything past u32 too.
                cq_entries: u32::try_from(self.cq_entries.unwrap_or(0)).unwrap_or(u32::MAX),
                sq_thread_idle: u32::try_from(idle.as_millis()).unwrap_or(u32::MAX),
                sq_thread_cpu: cpu.unwrap_or(0),
                ..Default::default()
            };
            URingContext::create_with(setup, self.entries, params)
        };
        let first = try_create(flags);
        let Err(Error::Setup(err)) = first else {
            return first;
        };
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(Error::Setup(err));
        }
        if self.submit_all.is_none() {
            flags.remove(SetupFlags::SUBMIT_ALL);
            let second = try_create(flags);
            match &second {
                Err(Error::Setup(e)) if e.raw_os_error() == Some(libc::EINVAL) => {}
                _ => return second,
            }
        }
        let unsupported = unsupported_option(flags, |flags| try_create(flags).is_ok());
        Err(match unsupported {
            Some((option, since)) => Error::OptionNotSupported {
                option,
                since,
                source: err,
            },
            None => Error::Setup(err),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_option_a_kernel_refuses_is_named() {
        // A 5.15 kernel: no SUBMIT_ALL (5.18) nor COOP_TASKRUN (5.19).
        let known = SetupFlags::R_DISABLED | SetupFlags::CQSIZE | SetupFlags::CLAMP;
        let kernel = |flags: SetupFlags| known.contains(flags);
        let asked = SetupFlags::COOP_TASKRUN | SetupFlags::CQSIZE;
        assert_eq!(
            unsupported_option(asked, kernel),
            Some(("coop_taskrun (IORING_SETUP_COOP_TASKRUN)", (5, 19)))
        );
        let asked = SetupFlags::SUBMIT_ALL | SetupFlags::R_DISABLED;
        assert_eq!(
            unsupported_option(asked, kernel),
            Some(("submit_all (IORING_SETUP_SUBMIT_ALL)", (5, 18)))
        );
        // Nothing to blame: the refusal had another cause.
        assert_eq!(unsupported_option(SetupFlags::CQSIZE, |_| false), None);
    }
}

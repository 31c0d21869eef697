//! The builder's setup options, and naming the one a kernel lacks.

use crate::abi::SetupFlags;

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
pub(super) fn unsupported_option(
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

//! [`URingBuilder`]: a ring with its options, registrations and allowlist,
//! set up in the order the kernel needs.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use super::registered::BufferMemory;
use super::URingContext;
use crate::abi::{SetupFlags, MAX_ENTRIES};
use crate::error::{Error, Result};
use crate::sys::{self, Setup};
use crate::URingAllowlist;

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

/// The largest completion ring: the kernel's `IORING_MAX_CQ_ENTRIES`
/// (`io_uring/io_uring.c`, twice [`MAX_ENTRIES`]).
const MAX_CQ_ENTRIES: usize = 2 * MAX_ENTRIES;

/// Builds a [`URingContext`] with options [`URingContext::new`] does not
/// take: the completion ring's size, setup flags, an eventfd, registered
/// files and buffers, and an allowlist, set up in the order the kernel
/// needs.
///
/// [`build`](Self::build) creates the ring (disabled when there is an
/// allowlist: `IORING_SETUP_R_DISABLED`, Linux 5.10), checks the allowlist
/// against what the kernel supports ([`URingContext::probe`]), registers
/// the eventfd, the files and the buffers, then the allowlist's
/// restrictions, and enables the ring. All registration thus happens before
/// restrictions apply, which works the same before and after Linux 7.0
/// (see [Linux 7.0 and allowlists](crate#linux-70-and-allowlists)).
///
/// ```
/// use std::os::fd::AsFd;
/// use std::sync::Arc;
/// use ringfence::op::{Fsync, ReadFixed, Target, WriteFixed};
/// use ringfence::{IosqeFlags, URingAllowlist, URingBuilder, URingOperation};
///
/// let file = tempfile::tempfile()?;
/// let mut allowlist = URingAllowlist::new();
/// allowlist
///     .allow_housekeeping()
///     .allow_submit_operation(URingOperation::ReadFixed)
///     .allow_submit_operation(URingOperation::WriteFixed)
///     .allow_submit_operation(URingOperation::Fsync)
///     .require_sqe_flags(IosqeFlags::FIXED_FILE);
/// let ring = URingBuilder::new(16)
///     .files(&[file.as_fd()])
///     .buffers(2, 4096)
///     .allowlist(&allowlist)
///     .build()?;
/// drop(file); // The kernel holds its own reference to the registered file.
///
/// let buffer = ring.registered_buffer(0).unwrap();
/// // SAFETY: no fixed operation on this buffer is in flight.
/// unsafe { buffer.as_ptr().cast::<u8>().write_bytes(0xab, 512) };
/// ring.add(WriteFixed::new(Target::fixed(0), buffer, 0..512, Some(0))?, 1)?;
/// assert_eq!(ring.wait()?.next().unwrap().1?, 512);
/// ring.add(Fsync::new(Target::fixed(0)), 2)?;
/// assert_eq!(ring.wait()?.next().unwrap().1?, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
#[doc = include_str!("../guide-fixed-files.md")]
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct URingBuilder<'a> {
    entries: usize,
    cq_entries: Option<usize>,
    allowlist: Option<&'a URingAllowlist>,
    eventfd: Option<BorrowedFd<'a>>,
    files: Vec<BorrowedFd<'a>>,
    sparse_files: usize,
    buffers: Option<(usize, usize)>,
    submit_all: Option<bool>,
    coop_taskrun: bool,
    clamp: bool,
}

impl<'a> URingBuilder<'a> {
    /// A ring with room for `entries` queued operations, rounded up to a
    /// power of two (1 to [`MAX_ENTRIES`]; [`build`](Self::build) fails
    /// with [`Error::EntriesOutOfRange`] otherwise), and no option set.
    pub fn new(entries: usize) -> URingBuilder<'a> {
        URingBuilder {
            entries,
            cq_entries: None,
            allowlist: None,
            eventfd: None,
            files: Vec::new(),
            sparse_files: 0,
            buffers: None,
            submit_all: None,
            coop_taskrun: false,
            clamp: false,
        }
    }

    /// A completion ring of `cq_entries` (`IORING_SETUP_CQSIZE`, Linux 5.5,
    /// `io_uring_setup(2)`), rounded up to a power of two by the kernel
    /// ([`URingContext::cq_entries`] tells what it got), instead of twice
    /// the submission ring. At least `entries`, at most 65536 (the
    /// kernel's `IORING_MAX_CQ_ENTRIES`; more only with
    /// [`clamp`](Self::clamp)): [`build`](Self::build) fails with
    /// [`Error::CqEntriesOutOfRange`] otherwise. The context allows 16
    /// operations in flight per completion ring entry.
    pub fn cq_entries(mut self, cq_entries: usize) -> Self {
        self.cq_entries = Some(cq_entries);
        self
    }

    /// Clamps ring sizes past the kernel's limits to those limits instead
    /// of failing (`IORING_SETUP_CLAMP`, Linux 5.6).
    pub fn clamp(mut self, clamp: bool) -> Self {
        self.clamp = clamp;
        self
    }

    /// Whether an SQE the kernel refuses ends the batch it came in
    /// (`IORING_SETUP_SUBMIT_ALL`, Linux 5.18, `io_uring_setup(2)`).
    ///
    /// On by default where the kernel has it (the builder tries it and, on
    /// `EINVAL`, creates the ring without it): on a ring shared by threads,
    /// one thread's refused SQE should not hold back the others' until the
    /// next submit. [`submit`](URingContext::submit) offers what is left
    /// either way. `submit_all(true)` makes it required:
    /// [`build`](Self::build) then fails with
    /// [`Error::OptionNotSupported`] on older kernels.
    pub fn submit_all(mut self, submit_all: bool) -> Self {
        self.submit_all = Some(submit_all);
        self
    }

    /// Runs completion work at the next transition into the kernel
    /// instead of interrupting the task that submitted it
    /// (`IORING_SETUP_COOP_TASKRUN`, Linux 5.19, `io_uring_setup(2)`).
    /// Fewer interrupts; completions of operations that finish on their
    /// own (a poll, a pipe read) may wait for the next `wait` or `submit`.
    ///
    /// Not offered: `IORING_SETUP_SINGLE_ISSUER` (Linux 6.0), which lets
    /// only one task submit (any other gets `EEXIST`), where a
    /// [`URingContext`] submits from whichever thread calls `submit` or
    /// `wait`; and `IORING_SETUP_DEFER_TASKRUN` (Linux 6.1), which needs
    /// `SINGLE_ISSUER` and runs completion work only when the submitting
    /// task waits.
    pub fn coop_taskrun(mut self, coop_taskrun: bool) -> Self {
        self.coop_taskrun = coop_taskrun;
        self
    }

    /// Restricts the ring to `allowlist` (see [`URingAllowlist`]): the
    /// ring is created disabled, every other registration of this builder
    /// is done, then the restrictions, then the ring is enabled
    /// (Linux 5.10). [`build`](Self::build) first checks that the kernel
    /// supports every operation the allowlist allows, and fails with
    /// [`Error::OperationNotSupported`] naming the first it lacks (not on
    /// kernels before 5.6, which cannot say: there such an operation
    /// completes with `EINVAL`).
    pub fn allowlist(mut self, allowlist: &'a URingAllowlist) -> Self {
        self.allowlist = Some(allowlist);
        self
    }

    /// Makes the kernel signal `eventfd` whenever it posts a completion
    /// (`IORING_REGISTER_EVENTFD`, Linux 5.2, `io_uring_register(2)`), as
    /// [`URingContext::register_eventfd`] does, but before any allowlist
    /// applies.
    ///
    /// Borrowed for the builder only: the kernel takes its own reference
    /// to the eventfd (`io_eventfd_register`, `io_uring/eventfd.c`), so it
    /// keeps signalling it even after you close your descriptor; the
    /// context holds nothing. Unregister with
    /// [`unregister_eventfd`](URingContext::unregister_eventfd) (on a
    /// restricted ring, before Linux 7.0, only if the allowlist allows it).
    pub fn eventfd(mut self, eventfd: BorrowedFd<'a>) -> Self {
        self.eventfd = Some(eventfd);
        self
    }

    /// Registers `files` as the ring's file table, slot `i` holding
    /// `files[i]` (`IORING_REGISTER_FILES`, Linux 5.1,
    /// `io_uring_register(2)`); operations address them with
    /// [`Target::fixed(i)`](crate::op::Target::fixed).
    ///
    /// The kernel takes its own reference to each file: closing your
    /// descriptor afterwards does not close the registered file, which
    /// stays open until its slot is emptied or replaced
    /// ([`update_files`](URingContext::update_files)) or the ring is
    /// closed. An empty slot fails an operation with `EBADF`. Registration
    /// fails with [`Error::Register`]: `EBADF` for a bad descriptor,
    /// `EMFILE` past the process's `RLIMIT_NOFILE`.
    pub fn files(mut self, files: &[BorrowedFd<'a>]) -> Self {
        self.files = files.to_vec();
        self
    }

    /// Makes the file table at least `slots` long, the slots past
    /// [`files`](Self::files) empty (registered as -1: sparse tables,
    /// Linux 5.5), for [`update_files`](URingContext::update_files) to
    /// fill later.
    pub fn sparse_files(mut self, slots: usize) -> Self {
        self.sparse_files = slots;
        self
    }

    /// Registers `count` buffers of `len` bytes each
    /// (`IORING_REGISTER_BUFFERS`, Linux 5.1, `io_uring_register(2)`), for
    /// [`op::ReadFixed`](crate::op::ReadFixed) and
    /// [`op::WriteFixed`](crate::op::WriteFixed).
    ///
    /// The context allocates them (zeroed, each page aligned, in one
    /// anonymous mapping) and owns them until it is dropped, so they
    /// outlive every operation; the kernel pins their pages for as long as
    /// they are registered, which counts against `RLIMIT_MEMLOCK` for
    /// unprivileged users. [`URingContext::registered_buffer`] hands out
    /// their addresses. `count` from 1 to 16384 and `len` from 1 byte to
    /// 1 GiB (the kernel's limits): [`build`](Self::build) fails with
    /// [`Error::RegisteredBuffersOutOfRange`] otherwise.
    pub fn buffers(mut self, count: usize, len: usize) -> Self {
        self.buffers = Some((count, len));
        self
    }

    /// Creates the ring. Fails as [`URingContext::new`] does, with the
    /// errors each option names, with [`Error::OptionNotSupported`]
    /// naming an option the kernel refuses (`EINVAL` from
    /// `io_uring_setup`) and the release that added it, and with
    /// [`Error::Register`] for a registration the kernel refuses.
    pub fn build(self) -> Result<URingContext> {
        self.build_in(&sys::setup)
    }

    /// [`build`](Self::build), with the ring created by `setup`.
    pub(crate) fn build_in(self, setup: Setup<'_>) -> Result<URingContext> {
        if let Some(cq) = self.cq_entries {
            if cq == 0 || cq < self.entries || (cq > MAX_CQ_ENTRIES && !self.clamp) {
                return Err(Error::CqEntriesOutOfRange {
                    cq_entries: cq,
                    entries: self.entries,
                });
            }
        }
        let buffers = match self.buffers {
            Some((count, len)) => Some(BufferMemory::new(count, len)?),
            None => None,
        };
        let mut ring = self.create(setup)?;
        if let Some(allowlist) = self.allowlist {
            match ring.probe_ring() {
                Ok(probe) => probe.check(allowlist)?,
                // Before 5.6 there is no probe: such an operation
                // completes with EINVAL.
                Err(Error::Register { source, .. })
                    if source.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(eventfd) = self.eventfd {
            ring.register_eventfd(eventfd.as_raw_fd())?;
        }
        let slots = self.files.len().max(self.sparse_files);
        if slots > 0 {
            let mut fds: Vec<RawFd> = self.files.iter().map(|fd| fd.as_raw_fd()).collect();
            fds.resize(slots, -1);
            ring.register_files(&fds)?;
        }
        if let Some(buffers) = buffers {
            ring.register_buffers(buffers)?;
        }
        if let Some(allowlist) = self.allowlist {
            ring.register_restrictions(allowlist)?;
            ring.enable()?;
        }
        Ok(ring)
    }

    /// Creates the ring with the setup flags asked for, dropping a default
    /// `SUBMIT_ALL` the kernel refuses, and naming an option it refuses.
    fn create(&self, setup: Setup<'_>) -> Result<URingContext> {
        let mut flags = SetupFlags::empty();
        flags.set(SetupFlags::R_DISABLED, self.allowlist.is_some());
        flags.set(SetupFlags::CQSIZE, self.cq_entries.is_some());
        flags.set(SetupFlags::CLAMP, self.clamp);
        flags.set(SetupFlags::COOP_TASKRUN, self.coop_taskrun);
        flags.set(SetupFlags::SUBMIT_ALL, self.submit_all != Some(false));
        let cq_entries = self.cq_entries.unwrap_or(0);
        let try_create = |flags| URingContext::create_with(setup, self.entries, flags, cq_entries);
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

impl URingContext {
    /// A [`URingBuilder`] for a ring of `entries`: the same as
    /// [`URingBuilder::new`].
    pub fn builder<'a>(entries: usize) -> URingBuilder<'a> {
        URingBuilder::new(entries)
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

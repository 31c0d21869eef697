//! [`URingBuilder`]: a ring with its options, registrations and allowlist,
//! set up in the order the kernel needs.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use super::buffer_ring::BufferRing;
use super::registered::BufferMemory;
use super::URingContext;
use crate::abi::MAX_ENTRIES;
use crate::error::{Error, Result};
use crate::sys::{self, Setup};
use crate::URingAllowlist;

mod options;

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
/// the eventfd, the files, the buffers and the buffer rings, then the
/// allowlist's restrictions, and enables the ring. All registration thus happens before
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
    buffer_rings: Vec<(u16, u32)>, // (count, len)
    submit_all: Option<bool>,
    coop_taskrun: bool,
    clamp: bool,
    /// SQPOLL's idle time before its thread sleeps, and its CPU.
    sqpoll: Option<(Duration, Option<u32>)>,
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
            buffer_rings: Vec::new(),
            submit_all: None,
            coop_taskrun: false,
            clamp: false,
            sqpoll: None,
        }
    }

    /// A kernel thread that polls the submission queue
    /// (`IORING_SETUP_SQPOLL`, Linux 5.1; from 5.11 without privileges,
    /// before that `io_uring_setup` fails with `EPERM` for an unprivileged
    /// process). It submits what is added without any enter: `submit` only
    /// wakes it when it has slept, after `idle` (millisecond resolution,
    /// `sq_thread_idle`) without work. Operations are then submitted by
    /// that thread, never by the caller's, so a caller's thread may exit
    /// with operations in flight (see
    /// [Threads that submit](URingContext#threads-that-submit)). The thread
    /// spins while it has work: it costs a CPU. On such a ring, dropping
    /// the context cannot turn queued operations into nops (the thread may
    /// be reading them): they run, and are cancelled like the rest.
    pub fn sqpoll(mut self, idle: Duration) -> Self {
        let cpu = self.sqpoll.and_then(|(_, cpu)| cpu);
        self.sqpoll = Some((idle, cpu));
        self
    }

    /// With [`sqpoll`](Self::sqpoll), pins the kernel's SQ thread to `cpu`
    /// (`IORING_SETUP_SQ_AFF`, Linux 5.1). A CPU that is not online fails
    /// the build with [`Error::Setup`] (`EINVAL`). Alone, it turns SQPOLL
    /// on with a 1 s idle time.
    pub fn sqpoll_cpu(mut self, cpu: u32) -> Self {
        let idle = self.sqpoll.map_or(Duration::from_secs(1), |(idle, _)| idle);
        self.sqpoll = Some((idle, Some(cpu)));
        self
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
    /// The counter counts signals, not completions: several completions
    /// posted together may signal it once (`blockdev --fixed` saw about
    /// 2,300 signals for 4,031 completions), so read it as "something
    /// completed", then reap everything ready.
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

    /// Registers a ring of `count` provided buffers of `len` bytes as a
    /// buffer group (`IORING_REGISTER_PBUF_RING`, Linux 5.19,
    /// `io_uring_register(2)`, `io_uring_setup_buf_ring(3)`), for
    /// [`Recv::multishot`](crate::op::Recv::multishot); the group of call
    /// `n` (from 0) is [`URingContext::buffer_group(n)`](URingContext::buffer_group).
    ///
    /// The context maps the ring and the buffers (zeroed) and puts every
    /// buffer in the ring. The kernel may write any buffer of the group that
    /// is in the ring until the ring is unregistered, so the memory lives as
    /// long as the context and every operation that may select from the
    /// group (leaked with one that dropping the context gives up on). A
    /// completion that names a buffer lets the context lend it, once
    /// ([`URingContext::provided_buffer`], safe: a buffer still in the
    /// ring is never lent); dropping the guard gives it back.
    ///
    /// `count` a power of two up to [`MAX_BUF_RING_ENTRIES`](crate::MAX_BUF_RING_ENTRIES),
    /// `len` at least 1 byte, or [`build`](Self::build) fails with
    /// [`Error::BufferRingOutOfRange`]; [`Error::Mmap`] if the memory cannot
    /// be mapped, [`Error::Register`] when the kernel refuses the
    /// ring (`EINVAL` before 5.19), [`Error::BufferGroupsExhausted`] past
    /// 65536 groups in the process.
    pub fn buffer_ring(mut self, count: u16, len: u32) -> Self {
        self.buffer_rings.push((count, len));
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
        let buffer_rings: Vec<_> = (self.buffer_rings.iter())
            .map(|&(count, len)| BufferRing::new(count, len))
            .collect::<Result<_>>()?;
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
        for buffer_ring in buffer_rings {
            ring.register_buffer_ring(buffer_ring)?;
        }
        if let Some(allowlist) = self.allowlist {
            ring.register_restrictions(allowlist)?;
            ring.enable()?;
        }
        Ok(ring)
    }
}

impl URingContext {
    /// A [`URingBuilder`] for a ring of `entries`: the same as
    /// [`URingBuilder::new`].
    pub fn builder<'a>(entries: usize) -> URingBuilder<'a> {
        URingBuilder::new(entries)
    }
}

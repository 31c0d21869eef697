//! A simulated kernel: a userspace model of io_uring that the ring core runs
//! over instead of the real syscalls, so that Miri can check the unsafe core
//! and tests can inject the faults a real kernel only produces under
//! pressure.
//!
//! Only the seam in `sys` differs: the simulated kernel implements its
//! backend trait for the three syscalls, waiting and the ring mappings. A [`URingContext`] made by [`SimKernel::new_context`] runs the
//! same ring code as one made by [`URingContext::new`], over memory the
//! simulated kernel allocates and lays out with offsets of its own (not the
//! real kernel's, so code that ignored the reported offsets would break).
//!
//! The model consumes SQEs and posts CQEs with the kernel's memory
//! ordering: it loads the SQ tail with Acquire and stores the SQ head with
//! Release once it has read the SQEs, writes each CQE before a Release store
//! of the CQ tail, and loads the CQ head with Acquire before reusing a
//! slot. Completions can be posted from any thread (see
//! [`SimKernel::set_ready`] and [`SimKernel::complete_deferred`]).
//!
//! It models:
//! - `NOP`; `READV` and `WRITEV` over in-memory files
//!   ([`SimKernel::create_file`]), at an offset or the file position;
//!   `FSYNC`; `FALLOCATE` (allocate, punch hole);
//! - `POLL_ADD`, one-shot or multishot (`IORING_POLL_ADD_MULTI`: a
//!   completion with `IORING_CQE_F_MORE` per wake-up, ended without MORE
//!   by a cancellation or a full CQ ring), on pollables whose readiness the
//!   test sets ([`SimKernel::create_pollable`], [`SimKernel::set_ready`]),
//!   `POLL_REMOVE` and `ASYNC_CANCEL` of pending polls, deferred work and
//!   timeouts;
//! - `TIMEOUT` (with a count of completions), `TIMEOUT_REMOVE` and
//!   `LINK_TIMEOUT`, on a clock that moves when the test calls
//!   [`SimKernel::fire_timeouts`], or when a thread waits without a
//!   deadline with nothing else to complete;
//! - chains (`IOSQE_IO_LINK`, `IOSQE_IO_HARDLINK`): each member starts when
//!   the one before completes, a failed soft-linked member cancels the rest
//!   (`ECANCELED`), a refused member fails the whole chain, and a chain cut
//!   short by the end of a submission is issued as far as it got;
//! - disabled rings, `IORING_REGISTER_RESTRICTIONS` (`EACCES` for
//!   operations, SQE flags and register calls outside the allowlist, with
//!   submission stopping at the refused SQE as the kernel's does),
//!   `ENABLE_RINGS` and eventfd registration;
//! - the CQ overflow list with `IORING_FEAT_NODROP` (the `IORING_SQ_CQ_OVERFLOW`
//!   flag, flushed by `io_uring_enter` with `GETEVENTS`), or dropped
//!   completions and the overflow counter without it;
//! - injected faults ([`Fault`]), and completions held back and released in
//!   a random order ([`SimConfig::defer_completions`]).
//!
//! It models every operation in [`op::ISSUABLE`](crate::op::ISSUABLE) (a
//! test checks that), and no other opcode (they complete with `EINVAL`);
//! nor fixed files or buffers. Of the socket, registered-buffer, path,
//! pipe and hint operations (sync_file_range, fadvise, the opens, close,
//! statx, splice, tee) it keeps the bookkeeping only: they complete with
//! `EOPNOTSUPP`.
//!
//! ```
//! use ringfence::sim::{Fault, SimKernel};
//!
//! let kernel = SimKernel::new();
//! let ring = kernel.new_context(8, None)?;
//! kernel.inject(Fault::Interrupted); // The first io_uring_enter fails with EINTR.
//! ring.add_nop(1)?;
//! let completions: Vec<_> = ring.wait()?.collect();
//! assert_eq!(completions[0].0, 1);
//! assert_eq!(kernel.stats().faults_injected, 1);
//! # Ok::<(), ringfence::Error>(())
//! ```

mod config;
mod model;
mod region;
#[cfg(test)]
mod tests;

pub use config::{Fault, SimConfig, SimStats};
use model::SimRing;
use region::Region;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::abi::SetupFlags;
use crate::bindings::io_uring_params;
use crate::context::URingContext;
use crate::sys::Ring;
use crate::{Result, URingAllowlist};
use model::RingModel;

/// A simulated io_uring kernel: in-memory files and pollables, the rings
/// created in it, and the faults it will inject. Clones share one kernel.
#[derive(Clone, Default)]
pub struct SimKernel {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    world: Mutex<World>,
    /// Signalled whenever a completion is posted or work is released.
    posted: Condvar,
}

impl Shared {
    /// Locks the kernel's state, ignoring poisoning: a test that panicked
    /// mid-call has already failed.
    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An in-memory file.
#[derive(Default)]
struct SimFile {
    data: Vec<u8>,
    position: u64,
}

/// Everything the simulated kernel knows, under one lock (its
/// `completion_lock` and `uring_lock` in one).
#[derive(Default)]
struct World {
    config: SimConfig,
    rng: u64,
    files: HashMap<RawFd, SimFile>,
    /// Pollables and the events they are ready for.
    pollables: HashMap<RawFd, u32>,
    next_fd: RawFd,
    enter_faults: VecDeque<Fault>,
    overflow_drops: u32,
    /// Rings by id; `None` once closed.
    rings: Vec<Option<RingModel>>,
    stats: SimStats,
}

impl World {
    /// A pseudo-random number (xorshift64*), for choices the config leaves
    /// to chance. Its own generator rather than fastrand: the `sim` feature
    /// ships in the library, whose dependencies stay the ring core's four,
    /// and six lines replay a seed the same way on every version.
    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A pseudo-random index below `len` (which must not be 0).
    fn random_below(&mut self, len: usize) -> usize {
        (self.random() % len as u64) as usize
    }

    fn new_fd(&mut self) -> RawFd {
        self.next_fd += 1;
        self.next_fd
    }
}

impl SimKernel {
    /// A kernel with the default [`SimConfig`]: `IORING_FEAT_NODROP`,
    /// completions posted as soon as their SQE is consumed.
    pub fn new() -> SimKernel {
        SimKernel::with_config(SimConfig::default())
    }

    /// A kernel that behaves as `config` says.
    pub fn with_config(config: SimConfig) -> SimKernel {
        let world = World {
            config,
            // xorshift must not start at 0.
            rng: config.seed | 1,
            // Well above any descriptor a test could confuse it with.
            next_fd: 1 << 20,
            ..World::default()
        };
        SimKernel {
            shared: Arc::new(Shared {
                world: Mutex::new(world),
                posted: Condvar::new(),
            }),
        }
    }

    /// [`URingContext::new`] in this kernel.
    pub fn new_context(
        &self,
        num_entries: usize,
        allowlist: Option<&URingAllowlist>,
    ) -> Result<URingContext> {
        URingContext::new_in(
            &|entries, params| self.setup(entries, params),
            num_entries,
            allowlist,
        )
    }

    /// [`URingContext::new_disabled`] in this kernel.
    pub fn new_disabled_context(&self, num_entries: usize) -> Result<URingContext> {
        URingContext::create(
            &|entries, params| self.setup(entries, params),
            num_entries,
            SetupFlags::R_DISABLED,
        )
    }

    /// `io_uring_setup` in this kernel.
    fn setup(&self, entries: u32, params: &mut io_uring_params) -> io::Result<Ring> {
        let mut world = self.shared.world();
        let ring = RingModel::new(entries, params, world.config.nodrop)?;
        if world.config.ext_arg {
            params.features |= crate::bindings::IORING_FEAT_EXT_ARG;
        }
        world.rings.push(Some(ring));
        let id = world.rings.len() - 1;
        Ok(Ring::Other(Box::new(SimRing::new(
            Arc::clone(&self.shared),
            id,
        ))))
    }

    /// Creates an in-memory file holding `contents`, positioned at 0, and
    /// returns its descriptor (valid in this kernel only).
    pub fn create_file(&self, contents: Vec<u8>) -> RawFd {
        let mut world = self.shared.world();
        let fd = world.new_fd();
        let file = SimFile {
            data: contents,
            position: 0,
        };
        world.files.insert(fd, file);
        fd
    }

    /// A copy of the contents of the file `fd`, or `None` if there is none.
    pub fn file_contents(&self, fd: RawFd) -> Option<Vec<u8>> {
        self.shared
            .world()
            .files
            .get(&fd)
            .map(|file| file.data.clone())
    }

    /// Creates a pollable, ready for nothing, and returns its descriptor
    /// (valid in this kernel only).
    pub fn create_pollable(&self) -> RawFd {
        let mut world = self.shared.world();
        let fd = world.new_fd();
        world.pollables.insert(fd, 0);
        fd
    }

    /// Makes the pollable `fd` ready for `events` (`POLLIN`, `POLLOUT`...,
    /// level-triggered: it stays so until set otherwise), completing every
    /// pending poll on it that waits for one of them; a multishot poll
    /// completes with `IORING_CQE_F_MORE` and stays pending, so each call
    /// is one wake-up for it.
    pub fn set_ready(&self, fd: RawFd, events: u32) {
        let mut world = self.shared.world();
        let Some(ready) = world.pollables.get_mut(&fd) else {
            panic!("set_ready: {fd} is not a pollable of this kernel");
        };
        *ready = events;
        for id in 0..world.rings.len() {
            model::fire_polls(&mut world, id, fd, events);
        }
        self.shared.posted.notify_all();
    }

    /// Queues `fault` for injection (see [`Fault`] for when each is taken).
    pub fn inject(&self, fault: Fault) {
        let mut world = self.shared.world();
        match fault {
            Fault::DropOverflow => world.overflow_drops += 1,
            _ => world.enter_faults.push_back(fault),
        }
    }

    /// Forgets the faults queued by [`inject`](Self::inject) and not yet
    /// injected.
    pub fn clear_faults(&self) {
        let mut world = self.shared.world();
        world.enter_faults.clear();
        world.overflow_drops = 0;
    }

    /// Releases up to `max` held-back completions, across all rings, in a
    /// random order; returns how many it released.
    pub fn complete_deferred(&self, max: usize) -> usize {
        let mut world = self.shared.world();
        let mut released = 0;
        for id in 0..world.rings.len() {
            released += model::release_deferred(&mut world, id, max - released);
        }
        self.shared.posted.notify_all();
        released
    }

    /// Fires every timer, in all rings: each pending
    /// [`Timeout`](crate::op::Timeout) completes with `ETIME`, and each
    /// [`LinkTimeout`](crate::op::LinkTimeout) cancels the operation it
    /// bounds (`ECANCELED`) and completes with `ETIME`. The model has no
    /// clock: this is how its time passes. Returns how many fired.
    pub fn fire_timeouts(&self) -> usize {
        let mut world = self.shared.world();
        let mut fired = 0;
        for id in 0..world.rings.len() {
            fired += model::fire_timeouts(&mut world, id);
        }
        self.shared.posted.notify_all();
        fired
    }

    /// Operations the kernel holds: pending polls, held-back work,
    /// timeouts and the unstarted rest of chains, in all rings.
    pub fn pending(&self) -> usize {
        let world = self.shared.world();
        world.rings.iter().flatten().map(RingModel::pending).sum()
    }

    /// What the kernel has done so far.
    pub fn stats(&self) -> SimStats {
        self.shared.world().stats
    }
}

impl std::fmt::Debug for SimKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimKernel")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

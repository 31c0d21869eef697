//! Consuming SQEs and running the operations the model knows.

use std::mem::size_of;
use std::sync::atomic::Ordering;

use super::{
    cancel, chains, post, post_more, ring_mut, PendingPoll, World, SQ_ARRAY, SQ_DROPPED, SQ_HEAD,
    SQ_TAIL,
};
use crate::abi::{IosqeFlags, Sqe, URingOperation, MAX_IOVECS};
use crate::bindings::{io_uring_sqe, IORING_POLL_ADD_MULTI};

/// Consumes up to `limit` SQEs of ring `id`; returns how many. Like the
/// kernel, it stops after an SQE it refuses (its completion carries the
/// error), and a chain cut short by `limit` is issued as far as it got.
pub(super) fn submit(world: &mut World, id: usize, limit: u32) -> u32 {
    let ring = ring_mut(world, id);
    // Acquire pairs with the application's Release store of the tail: the
    // SQEs (and index array entries) it covers are visible.
    let tail = ring
        .sq_ring
        .atomic(SQ_TAIL as usize)
        .load(Ordering::Acquire);
    let available = tail.wrapping_sub(ring.sq_head).min(limit);
    let mut consumed = 0;
    let mut chain = Vec::new();
    while consumed < available {
        consumed += 1;
        let Some(sqe) = consume_one(world, id) else {
            continue;
        };
        world.stats.sqes_consumed += 1;
        let links = chains::links_next(&sqe);
        chain.push(sqe);
        if links && consumed < available {
            continue;
        }
        if chains::issue(world, id, std::mem::take(&mut chain)).is_err() {
            break;
        }
    }
    let ring = ring_mut(world, id);
    // Release: our reads of the consumed SQEs happen before the application
    // may reuse their slots.
    ring.sq_ring
        .atomic(SQ_HEAD as usize)
        .store(ring.sq_head, Ordering::Release);
    consumed
}

/// Consumes the SQE at the head of ring `id`'s SQ; `None` (counted as
/// dropped) if its index array entry is out of range.
fn consume_one(world: &mut World, id: usize) -> Option<Sqe> {
    let ring = ring_mut(world, id);
    let mask = ring.sq_entries - 1;
    let position = ring.sq_head & mask;
    let array_offset = SQ_ARRAY as usize + position as usize * size_of::<u32>();
    // SAFETY: `at` checks bounds and alignment; the application wrote
    // this entry before the tail `submit` loaded with Acquire.
    let index = unsafe { ring.sq_ring.at::<u32>(array_offset).read() };
    ring.sq_head = ring.sq_head.wrapping_add(1);
    if index >= ring.sq_entries {
        ring.sq_ring
            .atomic(SQ_DROPPED as usize)
            .fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let sqe_offset = index as usize * size_of::<io_uring_sqe>();
    // SAFETY: as above for the SQE slot; the application does not
    // rewrite it until `submit`'s Release store of the head passes it.
    Some(unsafe { Sqe::read(ring.sqes.at::<io_uring_sqe>(sqe_offset)) })
}

/// Checks one consumed SQE as `io_init_req` does: an `Err` is a refusal
/// (its errno), which fails the SQE and stops submission.
pub(super) fn check(world: &mut World, id: usize, sqe: &Sqe) -> Result<(), i32> {
    URingOperation::from_raw(sqe.opcode()).ok_or(libc::EINVAL)?;
    if !IosqeFlags::all().contains(sqe.flags()) {
        return Err(libc::EINVAL);
    }
    ring_mut(world, id).check_restrictions(sqe)
}

/// Starts one checked SQE: completes it, holds it back, or leaves it
/// pending.
pub(super) fn start(world: &mut World, id: usize, sqe: Sqe) {
    let Some(op) = URingOperation::from_raw(sqe.opcode()) else {
        unreachable!("checked SQEs have a known opcode");
    };
    let user_data = sqe.user_data();
    if !models(op) {
        post(world, id, user_data, -libc::EINVAL);
        return;
    }
    match op {
        URingOperation::PollAdd => {
            let ready = if world.files.contains_key(&sqe.fd()) {
                (libc::POLLIN | libc::POLLOUT) as u32
            } else if let Some(&ready) = world.pollables.get(&sqe.fd()) {
                ready
            } else {
                post(world, id, user_data, -libc::EBADF);
                return;
            };
            let events = sqe.poll_events();
            let multishot = sqe.len() & IORING_POLL_ADD_MULTI != 0;
            let pending = PendingPoll {
                user_data,
                fd: sqe.fd(),
                events,
                multishot,
            };
            if ready & events == 0 {
                ring_mut(world, id).polls.push(pending);
            } else if !multishot {
                post(world, id, user_data, (ready & events) as i32);
            } else if post_more(world, id, user_data, (ready & events) as i32) {
                // Ready when armed: it completes once and stays armed.
                ring_mut(world, id).polls.push(pending);
            } else {
                post(world, id, user_data, (ready & events) as i32);
            }
        }
        URingOperation::PollRemove
        | URingOperation::AsyncCancel
        | URingOperation::TimeoutRemove => cancel::start(world, id, op, &sqe),
        URingOperation::Timeout => chains::start_timeout(world, id, &sqe),
        // A link timeout is taken into its chain when the chain starts; one
        // that follows no linked SQE is invalid (`io_link_timeout_prep`).
        URingOperation::LinkTimeout => post(world, id, user_data, -libc::EINVAL),
        URingOperation::Nop
        | URingOperation::Readv
        | URingOperation::Writev
        | URingOperation::Read
        | URingOperation::Write
        | URingOperation::Fsync
        | URingOperation::Fallocate => {
            let forced_async = sqe.flags().contains(IosqeFlags::ASYNC);
            if world.config.defer_completions || forced_async {
                ring_mut(world, id).deferred.push(sqe);
            } else {
                let res = run(world, &sqe).unwrap_or_else(|errno| -errno);
                post(world, id, user_data, res);
            }
        }
        // The model checks the bookkeeping of one-shot operations only: it
        // has no sockets, registered buffers or files, paths, pipes or
        // other rings, and the work of these is tested on the real kernel
        // (tests/net_ops.rs, tests/setup.rs, tests/fs_ops.rs,
        // tests/ring_ops.rs).
        URingOperation::ReadFixed
        | URingOperation::WriteFixed
        | URingOperation::SyncFileRange
        | URingOperation::Sendmsg
        | URingOperation::Recvmsg
        | URingOperation::Accept
        | URingOperation::Connect
        | URingOperation::Openat
        | URingOperation::Close
        | URingOperation::FilesUpdate
        | URingOperation::Statx
        | URingOperation::Fadvise
        | URingOperation::Send
        | URingOperation::Recv
        | URingOperation::Openat2
        | URingOperation::Splice
        | URingOperation::Tee
        | URingOperation::Shutdown
        | URingOperation::MsgRing
        | URingOperation::Socket
        | URingOperation::ReadvFixed
        | URingOperation::WritevFixed => post(world, id, user_data, -libc::EOPNOTSUPP),
        _ => unreachable!("{op:?} is issuable, but the simulated kernel has no model of it"),
    }
}

/// Whether the model runs `op` rather than failing it with `EINVAL`: it
/// runs exactly the operations the crate can issue ([`op::ISSUABLE`]), and
/// `issue` has an arm for each (a missing one panics in the tests that
/// issue every opcode).
///
/// [`op::ISSUABLE`]: crate::op::ISSUABLE
pub(in crate::sim) fn models(op: URingOperation) -> bool {
    crate::op::ISSUABLE.contains(&op)
}

/// The largest simulated file, in bytes: a write or an allocation past it
/// fails with `EFBIG`, as past a file system's limit, rather than make the
/// simulation allocate that much.
const MAX_SIM_FILE: usize = 1 << 30;

/// Does the work of a nop, readv, writev, read, write, fsync or fallocate;
/// returns its result.
pub(super) fn run(world: &mut World, sqe: &Sqe) -> Result<i32, i32> {
    let op = URingOperation::from_raw(sqe.opcode()).ok_or(libc::EINVAL)?;
    if op == URingOperation::Nop {
        return Ok(0);
    }
    let (offset, addr, len) = (sqe.offset(), sqe.addr(), sqe.len());
    let file = world.files.get_mut(&sqe.fd()).ok_or(libc::EBADF)?;
    match op {
        URingOperation::Fsync => Ok(0),
        URingOperation::Fallocate => {
            // For fallocate, `len` carries the mode and `addr` the length.
            let end = offset.checked_add(addr).ok_or(libc::EINVAL)?;
            let end = usize::try_from(end).map_err(|_| libc::EFBIG)?;
            let punch = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32;
            match len {
                0 if end > MAX_SIM_FILE => return Err(libc::EFBIG),
                0 if end > file.data.len() => file.data.resize(end, 0),
                0 => {}
                mode if mode == punch => {
                    let start = (offset as usize).min(file.data.len());
                    let end = end.min(file.data.len());
                    file.data[start..end].fill(0);
                }
                _ => return Err(libc::EOPNOTSUPP),
            }
            Ok(0)
        }
        URingOperation::Readv
        | URingOperation::Writev
        | URingOperation::Read
        | URingOperation::Write => {
            let vectored = matches!(op, URingOperation::Readv | URingOperation::Writev);
            if vectored && len as usize > MAX_IOVECS {
                return Err(libc::EINVAL);
            }
            let reading = matches!(op, URingOperation::Readv | URingOperation::Read);
            let at_position = offset == u64::MAX;
            let start = if at_position { file.position } else { offset };
            let start = usize::try_from(start).map_err(|_| libc::EINVAL)?;
            // The address in the SQE is the only link back to the iovec
            // array (or the one buffer): turning it into a pointer takes
            // the provenance the context exposed when it wrote the address.
            let iovecs = addr as usize as *const libc::iovec;
            let count = if vectored { len as usize } else { 1 };
            let mut done = 0usize;
            for i in 0..count {
                let iov = if vectored {
                    // SAFETY: the context keeps the iovec array of `len`
                    // entries alive and unmoved until this operation's
                    // completion is reaped, which happens after this runs.
                    unsafe { iovecs.add(i).read() }
                } else {
                    // A one-buffer read or write: the SQE is the iovec.
                    libc::iovec {
                        iov_base: addr as usize as *mut libc::c_void,
                        iov_len: len as usize,
                    }
                };
                let at = start + done;
                let base = iov.iov_base.cast::<u8>();
                if reading {
                    let n = iov.iov_len.min(file.data.len().saturating_sub(at));
                    if n > 0 {
                        // SAFETY: the caller of `add_readv` (or of
                        // `Read::new`, through `IoBufMut`) promised that
                        // each iovec is valid for writes and untouched by
                        // anything else until the completion; `n` > 0 is
                        // within both it and the file's data (so `at` is
                        // inside that allocation), a separate allocation.
                        unsafe {
                            std::ptr::copy_nonoverlapping(file.data.as_ptr().add(at), base, n)
                        };
                    }
                    done += n;
                    if n < iov.iov_len {
                        break; // End of file.
                    }
                } else {
                    let end = at + iov.iov_len;
                    if end > MAX_SIM_FILE {
                        return Err(libc::EFBIG);
                    }
                    if end > file.data.len() {
                        file.data.resize(end, 0);
                    }
                    // SAFETY: the caller of `add_writev` (or `Write::new`)
                    // promised that each iovec is valid for reads until the
                    // completion; the destination was just sized to hold it.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            base,
                            file.data.as_mut_ptr().add(at),
                            iov.iov_len,
                        )
                    };
                    done += iov.iov_len;
                }
            }
            if at_position {
                file.position += done as u64;
            }
            Ok(done as i32)
        }
        _ => Err(libc::EINVAL),
    }
}

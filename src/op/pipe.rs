//! Moving bytes through pipes without copying them to user space:
//! [`Splice`] and [`Tee`].

use super::{KeepAlive, KernelMemory, Operation, Prepared, Target};
use crate::abi::{SpliceFlags, Sqe, URingOperation, SPLICE_F_FD_IN_FIXED};
use crate::Result;

/// Writes the input end of a splice or tee: `splice_fd_in`, and for a
/// registered file `SPLICE_F_FD_IN_FIXED` in `flags` (the SQE's
/// `IOSQE_FIXED_FILE` speaks for the output alone; `io_splice_get_file` in
/// `io_uring/splice.c`). Returns the splice flags to encode.
fn fill_input(input: &Target, flags: SpliceFlags, sqe: &mut Sqe) -> u32 {
    sqe.set_splice_fd_in(input.raw_fd());
    // The bit is the operation's to set, from what the input is.
    let flags = flags.bits() & !SPLICE_F_FD_IN_FIXED;
    if input.is_fixed() {
        flags | SPLICE_F_FD_IN_FIXED
    } else {
        flags
    }
}

/// What a splice or tee keeps alive: both files, if their targets hold
/// them open (the input's in `owned`).
fn keep_both(input: Target, output: Target) -> KeepAlive {
    KeepAlive {
        owned: input.keep_alive().map(|file| KernelMemory::new(file).0),
        ..KeepAlive::target(output)
    }
}

/// `IORING_OP_SPLICE` (Linux 5.7, `io_uring_enter(2)`): `splice(2)`,
/// moving up to `len` bytes from one file to another, one of which must be
/// a pipe.
///
/// Completes with the number of bytes moved (0 at end of input), or
/// `splice(2)`'s errno: `EINVAL` when neither end is a pipe or a file
/// cannot splice, `ESPIPE` for an offset on a pipe, `EBADF`, `EAGAIN` with
/// [`SpliceFlags::NONBLOCK`] on an empty or full pipe.
///
/// ```
/// use std::io::Write as _;
/// use std::os::fd::{FromRawFd, OwnedFd};
/// use ringfence::op::Splice;
/// use ringfence::{SpliceFlags, URingContext};
///
/// let mut fds = [0; 2];
/// // SAFETY: pipe2 writes two new descriptors into `fds`.
/// assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
/// // SAFETY: both are new descriptors nothing else owns.
/// let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
/// std::fs::File::from(write_end).write_all(b"piped")?;
/// let file = std::sync::Arc::new(tempfile::tempfile()?);
/// let ring = URingContext::new(4, None)?;
/// ring.add(Splice::new(read_end, None, file, Some(0), 5, SpliceFlags::empty()), 1)?;
/// assert_eq!(ring.wait()?.next().expect("one completion").1?, 5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Splice {
    input: Target,
    off_in: Option<u64>,
    output: Target,
    off_out: Option<u64>,
    len: u32,
    flags: SpliceFlags,
}

impl Splice {
    /// Moves up to `len` bytes from `input` at `off_in` to `output` at
    /// `off_out`. An offset of `None` is what a pipe takes, and on a file
    /// means its current position (which the splice then advances); an
    /// offset above [`MAX_FILE_OFFSET`](crate::MAX_FILE_OFFSET) fails the
    /// add with [`Error::InvalidOffset`](crate::Error::InvalidOffset).
    ///
    /// Either end may be a [`Target::fixed`]: the operation marks each the
    /// way the kernel reads it.
    pub fn new(
        input: impl Into<Target>,
        off_in: Option<u64>,
        output: impl Into<Target>,
        off_out: Option<u64>,
        len: u32,
        flags: SpliceFlags,
    ) -> Splice {
        Splice {
            input: input.into(),
            off_in,
            output: output.into(),
            off_out,
            len,
            flags,
        }
    }
}

impl Operation for Splice {
    const OPCODE: URingOperation = URingOperation::Splice;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        let (off_in, off_out) = (
            super::offset_or_current(self.off_in)?,
            super::offset_or_current(self.off_out)?,
        );
        let mut sqe = Sqe::new(Self::OPCODE);
        self.output.fill(&mut sqe);
        let flags = fill_input(&self.input, self.flags, &mut sqe);
        // `splice_off_in` shares `addr`; the output's offset is `off`
        // (`io_splice_prep`).
        sqe.set_addr(off_in);
        sqe.set_offset(off_out);
        sqe.set_len(self.len);
        sqe.set_op_flags(flags);
        Ok(Prepared::new::<Self>(
            sqe,
            keep_both(self.input, self.output),
        ))
    }
}

/// `IORING_OP_TEE` (Linux 5.8, `io_uring_enter(2)`): `tee(2)`, copying up
/// to `len` bytes from one pipe to another without consuming them.
///
/// Completes with the number of bytes copied (0 when the input pipe is
/// empty and has no writer), or `tee(2)`'s errno: `EINVAL` unless both
/// ends are pipes (or both are the same pipe), `EAGAIN` with
/// [`SpliceFlags::NONBLOCK`].
#[derive(Debug)]
pub struct Tee {
    input: Target,
    output: Target,
    len: u32,
    flags: SpliceFlags,
}

impl Tee {
    /// Copies up to `len` bytes from the pipe `input` to the pipe
    /// `output`; either may be a [`Target::fixed`].
    pub fn new(
        input: impl Into<Target>,
        output: impl Into<Target>,
        len: u32,
        flags: SpliceFlags,
    ) -> Tee {
        Tee {
            input: input.into(),
            output: output.into(),
            len,
            flags,
        }
    }
}

impl Operation for Tee {
    const OPCODE: URingOperation = URingOperation::Tee;
    const PINS_CALLER_MEMORY: bool = false;

    fn prepare(self) -> Result<Prepared> {
        let mut sqe = Sqe::new(Self::OPCODE);
        self.output.fill(&mut sqe);
        let flags = fill_input(&self.input, self.flags, &mut sqe);
        // Both offsets stay 0, as `io_tee_prep` requires.
        sqe.set_len(self.len);
        sqe.set_op_flags(flags);
        Ok(Prepared::new::<Self>(
            sqe,
            keep_both(self.input, self.output),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::IosqeFlags;

    #[test]
    fn a_fixed_input_is_marked_in_the_splice_flags_and_a_fixed_output_in_the_sqe() {
        let sqe = Splice::new(
            Target::fixed(3),
            Some(8),
            Target::fixed(4),
            None,
            100,
            SpliceFlags::MOVE,
        )
        .prepare()
        .unwrap()
        .sqe;
        assert_eq!((sqe.fd(), sqe.splice_fd_in()), (4, 3));
        assert_eq!(sqe.flags(), IosqeFlags::FIXED_FILE);
        assert_eq!(sqe.op_flags(), SPLICE_F_FD_IN_FIXED | libc::SPLICE_F_MOVE);
        assert_eq!((sqe.addr(), sqe.offset(), sqe.len()), (8, u64::MAX, 100));

        let raw = Target::raw_for_crosvm_api;
        // A caller cannot smuggle the fixed bit in for a plain input.
        let smuggled = SpliceFlags::from_bits_retain(SPLICE_F_FD_IN_FIXED);
        let sqe = Tee::new(raw(5), raw(6), 7, smuggled).prepare().unwrap().sqe;
        assert_eq!((sqe.fd(), sqe.splice_fd_in(), sqe.op_flags()), (6, 5, 0));
        assert_eq!(
            (sqe.flags(), sqe.addr(), sqe.offset()),
            (IosqeFlags::empty(), 0, 0)
        );
    }
}

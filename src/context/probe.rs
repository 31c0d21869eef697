//! [`Probe`]: which operations the running kernel supports, and the
//! features it reported at setup.

use std::sync::OnceLock;

use super::URingContext;
use crate::abi::{FeatureFlags, RegisterOperation, SetupFlags, URingOperation};
use crate::bindings::{io_uring_probe, io_uring_probe_op, IO_URING_OP_SUPPORTED};
use crate::error::{Error, Result};
use crate::{sys, URingAllowlist};

/// The operations a kernel supports, from `IORING_REGISTER_PROBE` (Linux
/// 5.6, `io_uring_register(2)`).
///
/// ```
/// use ringfence::{URingContext, URingOperation};
///
/// let probe = URingContext::probe()?;
/// assert!(probe.supports(URingOperation::Readv));
/// assert!(probe.last_op() >= URingOperation::SendmsgZc as u8); // Linux 6.1 on
/// # Ok::<(), ringfence::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Bit `n`: opcode `n` is supported.
    supported: [u64; 4],
    last_op: u8,
}

/// The probe array's size: every opcode a `u8` can name.
const PROBE_OPS: usize = 256;

/// What `IORING_REGISTER_PROBE` fills: the header, then one entry per
/// opcode (the kernel's `struct io_uring_probe` with its flexible array).
#[repr(C)]
struct ProbeBuffer {
    header: io_uring_probe,
    ops: [io_uring_probe_op; PROBE_OPS],
}

impl Probe {
    /// Whether the kernel supports `op`.
    pub fn supports(&self, op: URingOperation) -> bool {
        self.supports_raw(op as u8)
    }

    /// Whether the kernel supports opcode `opcode`, one the bindings may
    /// not name (those past [`URingOperation::ALL`]).
    pub fn supports_raw(&self, opcode: u8) -> bool {
        self.supported[usize::from(opcode / 64)] & (1 << (opcode % 64)) != 0
    }

    /// The highest opcode the kernel knows (`last_op`): on Linux 6.16 to
    /// 6.18, [`URingOperation::Pipe`], the last the crate names.
    pub fn last_op(&self) -> u8 {
        self.last_op
    }

    /// A probe from the opcodes `supported`, as a kernel would report them
    /// (for tests).
    #[cfg(test)]
    pub(crate) fn from_ops(supported: &[URingOperation]) -> Probe {
        let mut probe = Probe {
            supported: [0; 4],
            last_op: 0,
        };
        for op in supported {
            let n = *op as u8;
            probe.supported[usize::from(n / 64)] |= 1 << (n % 64);
            probe.last_op = probe.last_op.max(n);
        }
        probe
    }

    /// The first operation `allowlist` allows that this kernel lacks, as
    /// [`Error::OperationNotSupported`].
    pub(crate) fn check(&self, allowlist: &URingAllowlist) -> Result<()> {
        match URingOperation::ALL
            .iter()
            .find(|op| allowlist.allows_submit_operation(**op) && !self.supports(**op))
        {
            Some(&op) => Err(Error::OperationNotSupported {
                op,
                since: op.since(),
            }),
            None => Ok(()),
        }
    }
}

/// The running kernel's probe, once taken.
static PROBE: OnceLock<Probe> = OnceLock::new();

impl URingContext {
    /// Which operations the running kernel supports
    /// (`IORING_REGISTER_PROBE`, Linux 5.6), probed once on a throwaway
    /// unrestricted ring of one entry and then cached for the process.
    ///
    /// Fails as [`URingContext::new`] does when the kernel gives no ring,
    /// and with [`Error::Register`] (`EINVAL`) on kernels before 5.6,
    /// which have no probe. [`URingOperation::since`] gives the release
    /// that added each operation.
    pub fn probe() -> Result<Probe> {
        if let Some(probe) = PROBE.get() {
            return Ok(*probe);
        }
        let ring = Self::create(&sys::setup, 1, SetupFlags::empty())?;
        let probe = ring.probe_ring()?;
        Ok(*PROBE.get_or_init(|| probe))
    }

    /// Probes this ring (also a disabled one with no restrictions yet:
    /// register calls are checked against restrictions only once the ring
    /// is enabled).
    pub(super) fn probe_ring(&self) -> Result<Probe> {
        let mut buffer = ProbeBuffer {
            header: io_uring_probe::default(),
            ops: [io_uring_probe_op::default(); PROBE_OPS],
        };
        // SAFETY: PROBE writes a header and up to `PROBE_OPS` entries into
        // `buffer`, which is laid out as the kernel's struct with its
        // flexible array and is zeroed as the kernel requires, exclusively
        // borrowed for the call.
        unsafe {
            self.register_value(
                RegisterOperation::Probe,
                (&mut buffer as *mut ProbeBuffer).cast_const().cast(),
                PROBE_OPS as u32,
            )
        }?;
        let mut probe = Probe {
            supported: [0; 4],
            last_op: buffer.header.last_op,
        };
        let len = usize::from(buffer.header.ops_len).min(PROBE_OPS);
        for entry in &buffer.ops[..len] {
            if u32::from(entry.flags) & IO_URING_OP_SUPPORTED != 0 {
                probe.supported[usize::from(entry.op / 64)] |= 1 << (entry.op % 64);
            }
        }
        Ok(probe)
    }

    /// What the kernel's io_uring offers, as `io_uring_setup` reported it
    /// for this ring (`io_uring_params.features`, `io_uring_setup(2)`).
    pub fn features(&self) -> FeatureFlags {
        self.features
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allowlisted_operation_the_kernel_lacks_is_named_with_its_release() {
        let probe = Probe::from_ops(&[
            URingOperation::Nop,
            URingOperation::Readv,
            URingOperation::AsyncCancel,
        ]);
        let mut list = URingAllowlist::new();
        list.allow_housekeeping()
            .allow_submit_operation(URingOperation::Readv);
        probe.check(&list).unwrap();
        list.allow_submit_operation(URingOperation::SendZc);
        let err = probe.check(&list).unwrap_err();
        assert!(
            matches!(
                err,
                Error::OperationNotSupported {
                    op: URingOperation::SendZc,
                    since: (6, 0)
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("6.0"), "{err}");
        assert!(!probe.supports_raw(URingOperation::SendZc as u8));
        assert_eq!(probe.last_op(), URingOperation::AsyncCancel as u8);
    }
}

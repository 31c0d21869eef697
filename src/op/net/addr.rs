//! [`SockAddr`]: a socket address laid out as the kernel reads it.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::linux::net::SocketAddrExt;

/// The bytes of a `sockaddr_storage` (`include/uapi/linux/socket.h`:
/// 128 bytes), aligned as it is. The kernel copies an address in with
/// `copy_from_user`, byte by byte, so plain bytes are all it needs.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(super) struct Storage(pub(super) [u8; STORAGE_LEN]);

/// `sizeof(struct sockaddr_storage)`.
pub(super) const STORAGE_LEN: usize = 128;

/// Where `sun_path` starts in a `sockaddr_un`, after `sun_family`.
const SUN_PATH: usize = 2;
/// `sizeof(struct sockaddr_un)`: the family and 108 bytes of path.
const SOCKADDR_UN_LEN: usize = SUN_PATH + 108;

/// A socket address for [`Connect`](super::Connect) and
/// [`Sendmsg::to`](super::Sendmsg::to): an IPv4 or IPv6 address and port
/// (`sockaddr_in`, `sockaddr_in6`), or a Unix socket's path, abstract name
/// or no name (`sockaddr_un`), built from the `std` types.
///
/// ```
/// use ringfence::op::SockAddr;
///
/// let addr = SockAddr::from("127.0.0.1:8080".parse::<std::net::SocketAddr>()?);
/// assert_eq!(addr.len(), 16); // sizeof(struct sockaddr_in)
/// assert_eq!(SockAddr::decode_inet(addr.as_bytes()), Some("127.0.0.1:8080".parse()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy)]
pub struct SockAddr {
    storage: Storage,
    /// How many bytes of `storage` the address takes (`socklen_t`).
    len: u32,
}

impl SockAddr {
    /// The address as the kernel reads it: `len()` bytes, the family
    /// (`AF_*`, native endian) in the first two.
    pub fn as_bytes(&self) -> &[u8] {
        &self.storage.0[..self.len as usize]
    }

    /// Its length in bytes: 16 for IPv4, 28 for IPv6, 2 to 110 for Unix.
    #[allow(clippy::len_without_is_empty)] // Never empty: the family is there.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Reads an IPv4 or IPv6 address out of the bytes of a `sockaddr_in` or
    /// `sockaddr_in6`, as [`Recvmsg::source_into`](super::Recvmsg::source_into)
    /// leaves them; `None` for another family, or too few bytes for its own.
    pub fn decode_inet(bytes: &[u8]) -> Option<SocketAddr> {
        let family = i32::from(u16::from_ne_bytes(bytes.get(0..2)?.try_into().ok()?));
        let port = u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?);
        match family {
            libc::AF_INET => {
                let ip: [u8; 4] = bytes.get(4..8)?.try_into().ok()?;
                Some(SocketAddrV4::new(Ipv4Addr::from(ip), port).into())
            }
            libc::AF_INET6 => {
                let flowinfo = u32::from_ne_bytes(bytes.get(4..8)?.try_into().ok()?);
                let ip: [u8; 16] = bytes.get(8..24)?.try_into().ok()?;
                let scope_id = u32::from_ne_bytes(bytes.get(24..28)?.try_into().ok()?);
                Some(SocketAddrV6::new(Ipv6Addr::from(ip), port, flowinfo, scope_id).into())
            }
            _ => None,
        }
    }

    /// An address of `family` whose bytes after the family `fill` writes,
    /// `len` bytes in all.
    fn build(family: i32, len: usize, fill: impl FnOnce(&mut [u8])) -> SockAddr {
        let mut storage = Storage([0; STORAGE_LEN]);
        storage.0[0..2].copy_from_slice(&(family as u16).to_ne_bytes());
        fill(&mut storage.0[2..len]);
        SockAddr {
            storage,
            len: len as u32,
        }
    }

    /// Where the SQE points at it: its heap copy must stay put.
    pub(super) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The address of the bytes the kernel reads, for a `SockAddr` at
    /// `at`, derived without a reference (the kernel's view of the memory
    /// must not be asserted through one).
    pub(super) fn storage_ptr(at: std::ptr::NonNull<SockAddr>) -> *const u8 {
        // SAFETY: `at` points at a live `SockAddr` (the caller's value), so
        // the field projection stays inside it.
        unsafe { std::ptr::addr_of!((*at.as_ptr()).storage.0) }.cast()
    }
}

impl From<SocketAddrV4> for SockAddr {
    /// A `sockaddr_in`: port and address in network byte order.
    fn from(addr: SocketAddrV4) -> SockAddr {
        SockAddr::build(libc::AF_INET, size_of::<libc::sockaddr_in>(), |rest| {
            rest[0..2].copy_from_slice(&addr.port().to_be_bytes());
            rest[2..6].copy_from_slice(&addr.ip().octets());
        })
    }
}

impl From<SocketAddrV6> for SockAddr {
    /// A `sockaddr_in6`: port and address in network byte order, the flow
    /// label and scope id as `std` holds them (as `std` passes them to the
    /// kernel).
    fn from(addr: SocketAddrV6) -> SockAddr {
        SockAddr::build(libc::AF_INET6, size_of::<libc::sockaddr_in6>(), |rest| {
            rest[0..2].copy_from_slice(&addr.port().to_be_bytes());
            rest[2..6].copy_from_slice(&addr.flowinfo().to_ne_bytes());
            rest[6..22].copy_from_slice(&addr.ip().octets());
            rest[22..26].copy_from_slice(&addr.scope_id().to_ne_bytes());
        })
    }
}

impl From<SocketAddr> for SockAddr {
    fn from(addr: SocketAddr) -> SockAddr {
        match addr {
            SocketAddr::V4(addr) => addr.into(),
            SocketAddr::V6(addr) => addr.into(),
        }
    }
}

impl From<&std::os::unix::net::SocketAddr> for SockAddr {
    /// A `sockaddr_un`: a path (NUL-terminated, counted with its NUL as
    /// `bind(2)` does), an abstract name (a leading NUL byte, then the
    /// name), or no name (the family alone). `std` checked the length when
    /// it made the address (`SocketAddr::from_pathname`,
    /// `from_abstract_name`): it fits `sun_path`.
    fn from(addr: &std::os::unix::net::SocketAddr) -> SockAddr {
        use std::os::unix::ffi::OsStrExt;
        // The name as it goes into `sun_path`, and the bytes after it.
        let (name, nul): (&[u8], usize) = if let Some(path) = addr.as_pathname() {
            (path.as_os_str().as_bytes(), 1)
        } else if let Some(name) = addr.as_abstract_name() {
            (name, 0)
        } else {
            (&[], 0)
        };
        let abstract_nul = usize::from(addr.as_abstract_name().is_some());
        let room = SOCKADDR_UN_LEN - SUN_PATH - abstract_nul - nul;
        let name = &name[..name.len().min(room)];
        let len = SUN_PATH + abstract_nul + name.len() + nul;
        SockAddr::build(libc::AF_UNIX, len, |path| {
            // Zeroed already: the abstract name's leading NUL and a path's
            // trailing one are there.
            path[abstract_nul..abstract_nul + name.len()].copy_from_slice(name);
        })
    }
}

impl std::fmt::Debug for SockAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match SockAddr::decode_inet(self.as_bytes()) {
            Some(inet) => write!(f, "SockAddr({inet})"),
            None => f
                .debug_struct("SockAddr")
                .field("bytes", &self.as_bytes())
                .finish(),
        }
    }
}

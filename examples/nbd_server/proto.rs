//! The NBD protocol's wire format (doc/proto.md of the NBD project): the
//! fixed newstyle handshake and the transmission phase's simple replies.
//! Pure byte handling, no I/O: the worker feeds it received bytes and
//! sends what it produces.

/// "NBDMAGIC", the greeting's first word.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT", the greeting's second word and every option's first.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The first word of an option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// The first word of a request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// The first word of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flags (server): NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES.
pub const HANDSHAKE_FLAGS: u16 = 1 | 2;
/// Client flag NBD_FLAG_C_FIXED_NEWSTYLE.
pub const C_FIXED_NEWSTYLE: u32 = 1;
/// Client flag NBD_FLAG_C_NO_ZEROES.
pub const C_NO_ZEROES: u32 = 2;

/// Transmission flags: HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_TRIM |
/// SEND_WRITE_ZEROES | CAN_MULTI_CONN.
pub const TRANSMISSION_FLAGS: u16 = 1 | (1 << 2) | (1 << 3) | (1 << 5) | (1 << 6) | (1 << 8);

/// Option types.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;

/// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

/// Information types of NBD_REP_INFO.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Block size constraints: minimum, preferred, maximum.
pub const MIN_BLOCK: u32 = 1;
pub const PREFERRED_BLOCK: u32 = 4096;
/// The longest request payload (and READ) the server takes: 32 MiB.
pub const MAX_REQUEST: u32 = 32 << 20;

/// Command types.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1;
pub const CMD_FLAG_NO_HOLE: u16 = 2;

/// NBD error values (they are Linux's errno numbers).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;

/// The length of a request header and of a simple reply header.
pub const REQUEST_LEN: usize = 28;
pub const REPLY_LEN: usize = 16;
/// The length of an option header (magic, option, length).
pub const OPTION_HEADER_LEN: usize = 16;
/// The longest option data the server reads; longer ones close the
/// connection (an export name is at most 4096 bytes).
pub const MAX_OPTION_LEN: u32 = 64 << 10;

/// The server's greeting: magic, IHAVEOPT, handshake flags.
pub fn greeting() -> [u8; 18] {
    let mut out = [0; 18];
    out[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..].copy_from_slice(&HANDSHAKE_FLAGS.to_be_bytes());
    out
}

/// Appends an option reply to `out`.
pub fn option_reply(out: &mut Vec<u8>, option: u32, reply: u32, data: &[u8]) {
    out.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// What the handshake does next after an option.
#[derive(Debug, PartialEq, Eq)]
pub enum OptionOutcome {
    /// More options may follow; the reply's name, for the log.
    Continue(&'static str),
    /// The transmission phase starts after the reply (GO, EXPORT_NAME).
    Transmission,
    /// Send the reply (if any), then close (ABORT, EXPORT_NAME of an
    /// unknown export).
    Close(&'static str),
}

/// Answers option `option` with data `data` for an export of `size` bytes,
/// appending the reply bytes to `out`. `no_zeroes`: the client set
/// NBD_FLAG_C_NO_ZEROES (EXPORT_NAME's reply then has no 124 zero bytes).
pub fn answer_option(
    option: u32,
    data: &[u8],
    size: u64,
    no_zeroes: bool,
    out: &mut Vec<u8>,
) -> OptionOutcome {
    match option {
        OPT_EXPORT_NAME => {
            if !data.is_empty() {
                return OptionOutcome::Close("NBD_OPT_EXPORT_NAME of an unknown export");
            }
            out.extend_from_slice(&size.to_be_bytes());
            out.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
            if !no_zeroes {
                out.extend_from_slice(&[0; 124]);
            }
            OptionOutcome::Transmission
        }
        OPT_ABORT => {
            option_reply(out, option, REP_ACK, &[]);
            OptionOutcome::Close("NBD_OPT_ABORT")
        }
        OPT_LIST => {
            if !data.is_empty() {
                option_reply(out, option, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data");
                return OptionOutcome::Continue("NBD_REP_ERR_INVALID");
            }
            // One export, named "": a name length of 0.
            option_reply(out, option, REP_SERVER, &0u32.to_be_bytes());
            option_reply(out, option, REP_ACK, &[]);
            OptionOutcome::Continue("NBD_REP_SERVER, NBD_REP_ACK")
        }
        OPT_INFO | OPT_GO => {
            let Some(name) = info_request_name(data) else {
                option_reply(out, option, REP_ERR_INVALID, b"malformed NBD_OPT_INFO/GO");
                return OptionOutcome::Continue("NBD_REP_ERR_INVALID");
            };
            if !name.is_empty() {
                option_reply(out, option, REP_ERR_UNKNOWN, b"only the export \"\" exists");
                return OptionOutcome::Continue("NBD_REP_ERR_UNKNOWN");
            }
            let mut export = Vec::with_capacity(12);
            export.extend_from_slice(&INFO_EXPORT.to_be_bytes());
            export.extend_from_slice(&size.to_be_bytes());
            export.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
            option_reply(out, option, REP_INFO, &export);
            let mut block = Vec::with_capacity(14);
            block.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
            block.extend_from_slice(&MIN_BLOCK.to_be_bytes());
            block.extend_from_slice(&PREFERRED_BLOCK.to_be_bytes());
            block.extend_from_slice(&MAX_REQUEST.to_be_bytes());
            option_reply(out, option, REP_INFO, &block);
            option_reply(out, option, REP_ACK, &[]);
            if option == OPT_GO {
                OptionOutcome::Transmission
            } else {
                OptionOutcome::Continue("NBD_REP_INFO, NBD_REP_ACK")
            }
        }
        _ => {
            option_reply(out, option, REP_ERR_UNSUP, &[]);
            OptionOutcome::Continue("NBD_REP_ERR_UNSUP")
        }
    }
}

/// The export name of an NBD_OPT_INFO or NBD_OPT_GO's data (name length,
/// name, count of information requests, the requests), or `None` if the
/// lengths do not add up.
fn info_request_name(data: &[u8]) -> Option<&[u8]> {
    let name_len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4usize.checked_add(name_len)?)?;
    let rest = &data[4 + name_len..];
    let count = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    (rest.len() == 2 + 2 * count).then_some(name)
}

/// A request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

impl Request {
    /// Parses a request header, or `None` for a wrong magic.
    pub fn parse(bytes: &[u8; REQUEST_LEN]) -> Option<Request> {
        let word = |range: std::ops::Range<usize>| -> u64 {
            bytes[range]
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        };
        if word(0..4) as u32 != REQUEST_MAGIC {
            return None;
        }
        Some(Request {
            flags: word(4..6) as u16,
            command: word(6..8) as u16,
            cookie: word(8..16),
            offset: word(16..24),
            len: word(24..28) as u32,
        })
    }

    /// Whether `offset + len` lies inside an export of `size` bytes.
    pub fn in_bounds(&self, size: u64) -> bool {
        self.offset
            .checked_add(u64::from(self.len))
            .is_some_and(|end| end <= size)
    }
}

/// Writes a simple reply header into `out`.
pub fn simple_reply(out: &mut [u8], error: u32, cookie: u64) {
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
}

/// The NBD error for an I/O error from the image.
pub fn nbd_error(err: &std::io::Error) -> u32 {
    match err.raw_os_error() {
        Some(libc::EPERM) => EPERM,
        Some(libc::ENOMEM) => ENOMEM,
        Some(libc::EINVAL) => EINVAL,
        Some(libc::ENOSPC) => ENOSPC,
        Some(libc::EOVERFLOW) => EOVERFLOW,
        _ => EIO,
    }
}

/// The name of an option, for log lines.
pub fn option_name(option: u32) -> String {
    let name = match option {
        OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
        OPT_ABORT => "NBD_OPT_ABORT",
        OPT_LIST => "NBD_OPT_LIST",
        4 => "NBD_OPT_PEEK_EXPORT",
        5 => "NBD_OPT_STARTTLS",
        OPT_INFO => "NBD_OPT_INFO",
        OPT_GO => "NBD_OPT_GO",
        8 => "NBD_OPT_STRUCTURED_REPLY",
        9 => "NBD_OPT_LIST_META_CONTEXT",
        10 => "NBD_OPT_SET_META_CONTEXT",
        11 => "NBD_OPT_EXTENDED_HEADERS",
        _ => return format!("option {option}"),
    };
    name.to_string()
}

/// The name of a command type, for log lines.
pub fn command_name(command: u16) -> &'static str {
    match command {
        CMD_READ => "NBD_CMD_READ",
        CMD_WRITE => "NBD_CMD_WRITE",
        CMD_DISC => "NBD_CMD_DISC",
        CMD_FLUSH => "NBD_CMD_FLUSH",
        CMD_TRIM => "NBD_CMD_TRIM",
        CMD_WRITE_ZEROES => "NBD_CMD_WRITE_ZEROES",
        _ => "unknown command",
    }
}

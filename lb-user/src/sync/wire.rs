//! The sync protocol on the wire: frames over a TCP connection.
//!
//! Every multi-byte integer is big-endian (network byte order); addresses
//! are IPv4, four bytes as on the wire. Nothing is padded or aligned
//! implicitly: every byte of a frame is named below, and a reserved byte or
//! bit that is not zero makes the frame invalid (so a later version can give
//! it a meaning without being misread by this one).
//!
//! # Frame
//!
//! ```text
//! offset size  field
//!      0    4  magic      0x4C425359 ("LBSY")
//!      4    1  version    1
//!      5    1  kind       see below
//!      6    1  flags      bit 0: AUTH, a 32-byte tag follows the body;
//!                         bits 1-7 zero
//!      7    1  reserved   zero
//!      8    4  sequence   this frame's number in its direction of its
//!                         connection: 0 for the HELLO, then 1, 2, ...
//!                         with no gap
//!     12    4  length     bytes of body (the tag not included),
//!                         at most 32,768
//!     16    …  body       as the kind says
//!      …   32  tag        HMAC-SHA256 of the header and the body under the
//!                         connection's key for this direction; present
//!                         exactly when AUTH is set (see [`super::auth`])
//! ```
//!
//! # Kinds
//!
//! | kind | name             | sent by | body |
//! |-----:|------------------|---------|------|
//! |    1 | `HELLO`          | both    | 48 bytes, below; always first, never AUTH |
//! |    2 | `RECORDS`        | writer  | 1 to 1,024 records of 32 bytes: new flows, closes, refreshes |
//! |    3 | `BULK_START`     | writer  | 8 bytes: `tables` (u64), the identity of the writer's tables (see [`super::store`]) |
//! |    4 | `BULK`           | writer  | 1 to 1,024 records of 32 bytes, part of the bulk resync |
//! |    5 | `BULK_END`       | writer  | 8 bytes: `records` (u64), how many `BULK` records the resync had |
//! |    6 | `KEEPALIVE`      | both    | empty |
//! |    7 | `RESYNC_REQUEST` | reader  | empty: please send a bulk resync |
//!
//! A connection carries flows one way: the *writer* (the lbd that dialled)
//! sends its flows, the *reader* (the lbd that accepted) applies them and
//! sends back only keepalives and resync requests. Each lbd dials the other,
//! so a pair has two connections, one per direction.
//!
//! # HELLO body (48 bytes)
//!
//! ```text
//! offset size  field
//!      0   32  challenge     random, fresh for this connection
//!     32    8  instance      random, fixed for the life of the lbd process
//!                            (a new value means the peer restarted)
//!     40    4  keepalive_ms  the sender's keepalive interval
//!     44    1  role          1 = writer (dialled), 2 = reader (accepted)
//!     45    1  auth          1 = the sender has a key and tags every later
//!                            frame; 0 = it has none. The two must agree.
//!     46    2  reserved      zero
//! ```
//!
//! # Record (32 bytes)
//!
//! ```text
//! offset size  field
//!      0    1  kind          1 = update, 2 = close
//!      1    1  state         bit 0: handshake completed, bit 1: client FIN,
//!                            bit 2: backend FIN, bit 3: RST, bit 4: the
//!                            backend's FIN came first (it may hold the
//!                            tuple in TIME_WAIT: the NAT port hold
//!                            applies), only with bit 2; bits 5-7 zero.
//!                            A close has a FIN or the RST bit.
//!      2    1  protocol      6 (TCP)
//!      3    1  reserved      zero
//!      4    4  client address
//!      8    4  VIP address
//!     12    4  backend address
//!     16    4  NAT address
//!     20    2  client port
//!     22    2  VIP port
//!     24    2  backend port
//!     26    2  NAT port
//!     28    4  age_ms        milliseconds since the flow's last packet on
//!                            the writer when the record was made (saturated
//!                            at 2^32 - 1)
//! ```
//!
//! No address may be 0.0.0.0 and no port 0.
//!
//! A frame of 1,024 records is 16 + 32,768 + 32 bytes: 32.05 bytes per flow.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::{
    auth::DirectionKey,
    record::{FlowRecord, FlowState, RecordKind},
};

/// "LBSY".
pub const MAGIC: u32 = 0x4c42_5359;
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 16;
pub const TAG_LEN: usize = 32;
pub const RECORD_LEN: usize = 32;
pub const HELLO_LEN: usize = 48;
pub const CHALLENGE_LEN: usize = 32;
/// Records in one `RECORDS` or `BULK` frame, at most.
pub const MAX_RECORDS: usize = 1024;
/// The largest body of any frame.
pub const MAX_BODY: usize = MAX_RECORDS * RECORD_LEN;
/// The largest frame.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_BODY + TAG_LEN;

/// Header flag: a tag follows the body.
const FLAG_AUTH: u8 = 1;

const STATE_ESTABLISHED: u8 = 1;
const STATE_FIN_CLIENT: u8 = 2;
const STATE_FIN_BACKEND: u8 = 4;
const STATE_RST: u8 = 8;
const STATE_BACKEND_FIRST: u8 = 16;
const STATE_KNOWN: u8 =
    STATE_ESTABLISHED | STATE_FIN_CLIENT | STATE_FIN_BACKEND | STATE_RST | STATE_BACKEND_FIRST;

const RECORD_UPDATE: u8 = 1;
const RECORD_CLOSE: u8 = 2;
const IPPROTO_TCP: u8 = 6;

/// A frame's kind (byte 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Hello = 1,
    Records = 2,
    BulkStart = 3,
    Bulk = 4,
    BulkEnd = 5,
    Keepalive = 6,
    ResyncRequest = 7,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Hello,
        Kind::Records,
        Kind::BulkStart,
        Kind::Bulk,
        Kind::BulkEnd,
        Kind::Keepalive,
        Kind::ResyncRequest,
    ];

    fn from_u8(v: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u8 == v)
    }

    /// Its name in the documentation and in errors.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hello => "HELLO",
            Kind::Records => "RECORDS",
            Kind::BulkStart => "BULK_START",
            Kind::Bulk => "BULK",
            Kind::BulkEnd => "BULK_END",
            Kind::Keepalive => "KEEPALIVE",
            Kind::ResyncRequest => "RESYNC_REQUEST",
        }
    }
}

/// Which end of a connection a HELLO comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Dialled, and sends its flows.
    Writer = 1,
    /// Accepted, and applies the writer's flows.
    Reader = 2,
}

/// The first frame each end sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hello {
    pub challenge: [u8; CHALLENGE_LEN],
    pub instance: u64,
    pub keepalive_ms: u32,
    pub role: Role,
    pub auth: bool,
}

/// A frame's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Records(Vec<FlowRecord>),
    BulkStart { tables: u64 },
    Bulk(Vec<FlowRecord>),
    BulkEnd { records: u64 },
    Keepalive,
    ResyncRequest,
}

impl Message {
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello(_) => Kind::Hello,
            Message::Records(_) => Kind::Records,
            Message::BulkStart { .. } => Kind::BulkStart,
            Message::Bulk(_) => Kind::Bulk,
            Message::BulkEnd { .. } => Kind::BulkEnd,
            Message::Keepalive => Kind::Keepalive,
            Message::ResyncRequest => Kind::ResyncRequest,
        }
    }
}

/// Why bytes are not a valid frame (or not the frame expected next).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad magic {0:#010x} (not an lb sync peer?)")]
    Magic(u32),
    #[error("protocol version {0}; this lbd speaks version {VERSION}")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("unknown flags {0:#04x}")]
    Flags(u8),
    #[error("reserved header byte is {0}, not 0")]
    Reserved(u8),
    #[error("{kind} frame of {len} bytes (the largest allowed is {MAX_BODY})")]
    TooLong { kind: &'static str, len: u32 },
    #[error("{kind} frame with a body of {len} bytes: {why}")]
    Length {
        kind: &'static str,
        len: usize,
        why: &'static str,
    },
    #[error("frame number {got}, expected {expected}")]
    Sequence { expected: u32, got: u32 },
    #[error("HELLO frame with the AUTH flag (a HELLO is never tagged)")]
    TaggedHello,
    #[error("untagged frame: this lbd has a key (sync.key_file) and refuses frames without a tag")]
    Untagged,
    #[error("tagged frame, but this lbd has no key (sync.key_file) to check it with")]
    UnexpectedTag,
    #[error("bad tag (wrong key, or the frame was altered or replayed)")]
    BadTag,
    #[error("HELLO: {0}")]
    Hello(&'static str),
    #[error("record {index}: {why}")]
    Record { index: usize, why: &'static str },
}

impl WireError {
    /// The frame failed authentication (as opposed to being malformed).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            WireError::Untagged | WireError::UnexpectedTag | WireError::BadTag
        )
    }
}

/// A frame's header (the first 16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub auth: bool,
    pub sequence: u32,
    /// Body length (the tag not included).
    pub len: u32,
}

impl Header {
    /// Reads and checks a header: magic, version, kind, flags, reserved
    /// byte, and a length that is possible for the kind.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Header, WireError> {
        let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if magic != MAGIC {
            return Err(WireError::Magic(magic));
        }
        if b[4] != VERSION {
            return Err(WireError::Version(b[4]));
        }
        let kind = Kind::from_u8(b[5]).ok_or(WireError::UnknownKind(b[5]))?;
        if b[6] & !FLAG_AUTH != 0 {
            return Err(WireError::Flags(b[6]));
        }
        if b[7] != 0 {
            return Err(WireError::Reserved(b[7]));
        }
        let len = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
        if len as usize > MAX_BODY {
            return Err(WireError::TooLong {
                kind: kind.name(),
                len,
            });
        }
        let header = Header {
            kind,
            auth: b[6] & FLAG_AUTH != 0,
            sequence: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            len,
        };
        if header.kind == Kind::Hello && header.auth {
            return Err(WireError::TaggedHello);
        }
        check_body_len(kind, len as usize)?;
        Ok(header)
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC.to_be_bytes());
        out.push(VERSION);
        out.push(self.kind as u8);
        out.push(if self.auth { FLAG_AUTH } else { 0 });
        out.push(0);
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
    }

    /// Bytes that follow the header: the body and the tag, if any.
    pub fn rest_len(&self) -> usize {
        self.len as usize + if self.auth { TAG_LEN } else { 0 }
    }
}

fn check_body_len(kind: Kind, len: usize) -> Result<(), WireError> {
    let why = match kind {
        Kind::Hello if len != HELLO_LEN => "a HELLO has 48",
        Kind::Records | Kind::Bulk if len == 0 => "no records",
        Kind::Records | Kind::Bulk if !len.is_multiple_of(RECORD_LEN) => {
            "not a whole number of 32-byte records"
        }
        Kind::BulkStart if len != 8 => "a BULK_START has 8",
        Kind::BulkEnd if len != 8 => "a BULK_END has 8",
        Kind::Keepalive | Kind::ResyncRequest if len != 0 => "this kind has an empty body",
        _ => return Ok(()),
    };
    Err(WireError::Length {
        kind: kind.name(),
        len,
        why,
    })
}

/// Appends `record`'s 32 bytes to `out`.
pub fn put_record(r: &FlowRecord, out: &mut Vec<u8>) {
    out.push(match r.kind {
        RecordKind::Update => RECORD_UPDATE,
        RecordKind::Close => RECORD_CLOSE,
    });
    let s = &r.state;
    let mut state = 0;
    for (set, bit) in [
        (s.established, STATE_ESTABLISHED),
        (s.fin_client, STATE_FIN_CLIENT),
        (s.fin_backend, STATE_FIN_BACKEND),
        (s.rst, STATE_RST),
        (s.backend_first, STATE_BACKEND_FIRST),
    ] {
        if set {
            state |= bit;
        }
    }
    out.push(state);
    out.push(IPPROTO_TCP);
    out.push(0);
    for a in [r.client, r.vip, r.backend, r.nat] {
        out.extend_from_slice(&a.ip().octets());
    }
    for a in [r.client, r.vip, r.backend, r.nat] {
        out.extend_from_slice(&a.port().to_be_bytes());
    }
    out.extend_from_slice(&r.age_ms.to_be_bytes());
}

/// Reads one record, checking every rule of the format.
pub fn get_record(b: &[u8; RECORD_LEN]) -> Result<FlowRecord, &'static str> {
    let kind = match b[0] {
        RECORD_UPDATE => RecordKind::Update,
        RECORD_CLOSE => RecordKind::Close,
        _ => return Err("unknown record kind"),
    };
    if b[1] & !STATE_KNOWN != 0 {
        return Err("unknown state bits");
    }
    if b[2] != IPPROTO_TCP {
        return Err("protocol is not TCP");
    }
    if b[3] != 0 {
        return Err("reserved byte is not 0");
    }
    let state = FlowState {
        established: b[1] & STATE_ESTABLISHED != 0,
        fin_client: b[1] & STATE_FIN_CLIENT != 0,
        fin_backend: b[1] & STATE_FIN_BACKEND != 0,
        rst: b[1] & STATE_RST != 0,
        backend_first: b[1] & STATE_BACKEND_FIRST != 0,
    };
    if state.backend_first && !state.fin_backend {
        return Err("backend FIN first without a backend FIN");
    }
    if kind == RecordKind::Close && !state.closing() {
        return Err("a close with neither FIN nor RST");
    }
    let addr = |i: usize| Ipv4Addr::new(b[4 + 4 * i], b[5 + 4 * i], b[6 + 4 * i], b[7 + 4 * i]);
    let port = |i: usize| u16::from_be_bytes([b[20 + 2 * i], b[21 + 2 * i]]);
    let mut ends = [SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0); 4];
    for (i, end) in ends.iter_mut().enumerate() {
        if addr(i).is_unspecified() {
            return Err("address 0.0.0.0");
        }
        if port(i) == 0 {
            return Err("port 0");
        }
        *end = SocketAddrV4::new(addr(i), port(i));
    }
    Ok(FlowRecord {
        kind,
        client: ends[0],
        vip: ends[1],
        backend: ends[2],
        nat: ends[3],
        age_ms: u32::from_be_bytes([b[28], b[29], b[30], b[31]]),
        state,
    })
}

/// Appends one frame carrying `msg` to `out`, numbered `sequence`, tagged
/// with `key` if there is one (a HELLO never is).
///
/// # Panics
/// If a record message has no records or more than [`MAX_RECORDS`]: the
/// callers batch.
pub fn encode(msg: &Message, sequence: u32, key: Option<&DirectionKey>, out: &mut Vec<u8>) {
    let start = out.len();
    let key = if matches!(msg, Message::Hello(_)) {
        None
    } else {
        key
    };
    let mut header = Header {
        kind: msg.kind(),
        auth: key.is_some(),
        sequence,
        len: 0,
    };
    header.write(out);
    let body_start = out.len();
    match msg {
        Message::Hello(h) => {
            out.extend_from_slice(&h.challenge);
            out.extend_from_slice(&h.instance.to_be_bytes());
            out.extend_from_slice(&h.keepalive_ms.to_be_bytes());
            out.push(h.role as u8);
            out.push(u8::from(h.auth));
            out.extend_from_slice(&[0, 0]);
        }
        Message::Records(rs) | Message::Bulk(rs) => {
            assert!(
                !rs.is_empty() && rs.len() <= MAX_RECORDS,
                "{} records in one frame",
                rs.len()
            );
            for r in rs {
                put_record(r, out);
            }
        }
        Message::BulkStart { tables } => out.extend_from_slice(&tables.to_be_bytes()),
        Message::BulkEnd { records } => out.extend_from_slice(&records.to_be_bytes()),
        Message::Keepalive | Message::ResyncRequest => {}
    }
    header.len = (out.len() - body_start) as u32;
    out[start + 12..start + 16].copy_from_slice(&header.len.to_be_bytes());
    if let Some(key) = key {
        let tag = key.tag(&out[start..]);
        out.extend_from_slice(&tag);
    }
}

/// The body of a frame whose header has been checked.
fn decode_body(kind: Kind, body: &[u8]) -> Result<Message, WireError> {
    Ok(match kind {
        Kind::Hello => {
            let mut challenge = [0u8; CHALLENGE_LEN];
            challenge.copy_from_slice(&body[..32]);
            let role = match body[44] {
                1 => Role::Writer,
                2 => Role::Reader,
                _ => return Err(WireError::Hello("unknown role")),
            };
            let auth = match body[45] {
                0 => false,
                1 => true,
                _ => return Err(WireError::Hello("auth is neither 0 nor 1")),
            };
            if body[46] != 0 || body[47] != 0 {
                return Err(WireError::Hello("reserved bytes are not 0"));
            }
            let keepalive_ms = u32::from_be_bytes([body[40], body[41], body[42], body[43]]);
            if keepalive_ms == 0 {
                return Err(WireError::Hello("keepalive interval 0"));
            }
            let mut instance = [0u8; 8];
            instance.copy_from_slice(&body[32..40]);
            Message::Hello(Hello {
                challenge,
                instance: u64::from_be_bytes(instance),
                keepalive_ms,
                role,
                auth,
            })
        }
        Kind::Records | Kind::Bulk => {
            let mut records = Vec::with_capacity(body.len() / RECORD_LEN);
            for (index, chunk) in body.chunks_exact(RECORD_LEN).enumerate() {
                let b: &[u8; RECORD_LEN] = chunk.try_into().expect("chunks of RECORD_LEN");
                records.push(get_record(b).map_err(|why| WireError::Record { index, why })?);
            }
            if kind == Kind::Records {
                Message::Records(records)
            } else {
                Message::Bulk(records)
            }
        }
        Kind::BulkStart | Kind::BulkEnd => {
            let mut n = [0u8; 8];
            n.copy_from_slice(body);
            let n = u64::from_be_bytes(n);
            if kind == Kind::BulkStart {
                Message::BulkStart { tables: n }
            } else {
                Message::BulkEnd { records: n }
            }
        }
        Kind::Keepalive => Message::Keepalive,
        Kind::ResyncRequest => Message::ResyncRequest,
    })
}

/// Checks the rest of a frame whose header is `header`: `rest` is the body
/// and the tag ([`Header::rest_len`] bytes), `raw_header` the header's
/// bytes. The frame must be number `expected`, tagged exactly when `key`
/// is given (a HELLO: never), and the tag must be right; then its body is
/// decoded.
pub fn open(
    raw_header: &[u8; HEADER_LEN],
    header: &Header,
    rest: &[u8],
    expected: u32,
    key: Option<&DirectionKey>,
) -> Result<Message, WireError> {
    debug_assert_eq!(rest.len(), header.rest_len());
    let body = &rest[..header.len as usize];
    if header.kind != Kind::Hello {
        match (key, header.auth) {
            (Some(_), false) => return Err(WireError::Untagged),
            (None, true) => return Err(WireError::UnexpectedTag),
            (Some(key), true) => key.verify(raw_header, body, &rest[header.len as usize..])?,
            (None, false) => {}
        }
    }
    // The sequence is checked after the tag: a number that fails is then
    // a replay or a loss, not damage.
    if header.sequence != expected {
        return Err(WireError::Sequence {
            expected,
            got: header.sequence,
        });
    }
    decode_body(header.kind, body)
}

/// Decodes the first frame in `buf`: `Ok(None)` if `buf` holds only part
/// of it, else the message and the bytes it took. The same checks as a
/// connection makes, for tests and fuzzing over byte strings.
pub fn decode(
    buf: &[u8],
    expected: u32,
    key: Option<&DirectionKey>,
) -> Result<Option<(Message, usize)>, WireError> {
    let Some(raw) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let raw: &[u8; HEADER_LEN] = raw.try_into().expect("HEADER_LEN bytes");
    let header = Header::parse(raw)?;
    let end = HEADER_LEN + header.rest_len();
    let Some(rest) = buf.get(HEADER_LEN..end) else {
        return Ok(None);
    };
    open(raw, &header, rest, expected, key).map(|m| Some((m, end)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::auth::{DirectionKey, Key};
    use proptest::prelude::*;

    pub(crate) fn sample(i: u32) -> FlowRecord {
        let b = i.to_be_bytes();
        FlowRecord {
            kind: RecordKind::Update,
            client: SocketAddrV4::new(
                Ipv4Addr::new(10, b[1], b[2], b[3].max(1)),
                1024 + (i % 60000) as u16,
            ),
            vip: "10.0.1.100:80".parse().unwrap(),
            backend: "10.0.2.11:8080".parse().unwrap(),
            nat: SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 101), 20000 + (i % 40000) as u16),
            age_ms: i,
            state: FlowState {
                established: true,
                ..FlowState::default()
            },
        }
    }

    fn key() -> DirectionKey {
        Key::from_bytes(b"0123456789abcdef0123456789abcdef".to_vec())
            .unwrap()
            .session(&[1; 64], &[2; 64])
            .0
    }

    #[test]
    fn a_record_is_32_bytes_in_network_order() {
        let r = FlowRecord {
            kind: RecordKind::Close,
            client: "192.0.2.1:40000".parse().unwrap(),
            vip: "198.51.100.10:443".parse().unwrap(),
            backend: "10.0.0.5:8443".parse().unwrap(),
            nat: "10.0.0.1:20001".parse().unwrap(),
            age_ms: 0x0102_0304,
            state: FlowState {
                established: true,
                fin_client: true,
                fin_backend: false,
                rst: true,
                backend_first: false,
            },
        };
        let mut out = Vec::new();
        put_record(&r, &mut out);
        assert_eq!(
            out,
            [
                2, 0b1011, 6, 0, // kind, state, protocol, reserved
                192, 0, 2, 1, 198, 51, 100, 10, 10, 0, 0, 5, 10, 0, 0, 1, // addresses
                0x9c, 0x40, 0x01, 0xbb, 0x20, 0xfb, 0x4e, 0x21, // ports
                1, 2, 3, 4, // age
            ]
        );
        assert_eq!(get_record(out.as_slice().try_into().unwrap()), Ok(r));
    }

    #[test]
    fn a_header_is_16_bytes_in_network_order() {
        let mut out = Vec::new();
        encode(
            &Message::BulkEnd { records: 7 },
            0x0a0b_0c0d,
            None,
            &mut out,
        );
        assert_eq!(
            out,
            [
                0x4c, 0x42, 0x53, 0x59, 1, 5, 0, 0, 0x0a, 0x0b, 0x0c, 0x0d, 0, 0, 0, 8, //
                0, 0, 0, 0, 0, 0, 0, 7
            ]
        );
        let mut tagged = Vec::new();
        encode(&Message::Keepalive, 3, Some(&key()), &mut tagged);
        assert_eq!(tagged.len(), HEADER_LEN + TAG_LEN);
        assert_eq!(tagged[6], 1, "AUTH flag");
    }

    #[test]
    fn a_full_frame_has_1024_records() {
        let rs: Vec<_> = (0..MAX_RECORDS as u32).map(sample).collect();
        let mut out = Vec::new();
        encode(&Message::Bulk(rs.clone()), 9, Some(&key()), &mut out);
        assert_eq!(out.len(), MAX_FRAME);
        let (m, used) = decode(&out, 9, Some(&key())).unwrap().unwrap();
        assert_eq!((m, used), (Message::Bulk(rs), MAX_FRAME));
    }

    /// Re-encodes a valid keepalive after `f` changed its header bytes.
    fn header_damage(f: impl Fn(&mut [u8])) -> WireError {
        let mut out = Vec::new();
        encode(&Message::Keepalive, 1, None, &mut out);
        f(&mut out);
        decode(&out, 1, None).unwrap_err()
    }

    #[test]
    fn every_header_rule_is_enforced() {
        assert_eq!(header_damage(|b| b[0] = 0), WireError::Magic(0x0042_5359));
        assert_eq!(header_damage(|b| b[4] = 2), WireError::Version(2));
        assert_eq!(header_damage(|b| b[5] = 0), WireError::UnknownKind(0));
        assert_eq!(header_damage(|b| b[5] = 8), WireError::UnknownKind(8));
        assert_eq!(header_damage(|b| b[6] = 2), WireError::Flags(2));
        assert_eq!(header_damage(|b| b[7] = 1), WireError::Reserved(1));
        assert_eq!(
            header_damage(|b| b[11] = 2),
            WireError::Sequence {
                expected: 1,
                got: 2
            }
        );
        assert!(matches!(
            header_damage(|b| b[12] = 1),
            WireError::TooLong {
                len: 0x0100_0000,
                ..
            }
        ));
        assert!(matches!(
            header_damage(|b| b[15] = 1),
            WireError::Length { len: 1, .. }
        ));
        // A HELLO is never tagged; a frame after it is tagged exactly when
        // there is a key.
        let hello = Message::Hello(Hello {
            challenge: [7; 32],
            instance: 1,
            keepalive_ms: 1000,
            role: Role::Writer,
            auth: true,
        });
        let mut out = Vec::new();
        encode(&hello, 0, Some(&key()), &mut out);
        assert_eq!(out.len(), HEADER_LEN + HELLO_LEN, "not tagged");
        out[6] = 1;
        assert_eq!(decode(&out, 0, None).unwrap_err(), WireError::TaggedHello);
        let mut plain = Vec::new();
        encode(&Message::Keepalive, 1, None, &mut plain);
        assert_eq!(
            decode(&plain, 1, Some(&key())).unwrap_err(),
            WireError::Untagged
        );
        let mut tagged = Vec::new();
        encode(&Message::Keepalive, 1, Some(&key()), &mut tagged);
        assert_eq!(
            decode(&tagged, 1, None).unwrap_err(),
            WireError::UnexpectedTag
        );
    }

    #[test]
    fn every_body_length_rule_is_enforced() {
        let cases: [(Kind, &[usize], &[usize]); 7] = [
            (Kind::Hello, &[48], &[0, 47, 49]),
            (Kind::Records, &[32, 64, MAX_BODY], &[0, 31, 33, 48]),
            (Kind::Bulk, &[32, MAX_BODY], &[0, 16]),
            (Kind::BulkStart, &[8], &[0, 1, 16]),
            (Kind::BulkEnd, &[8], &[0, 7, 9]),
            (Kind::Keepalive, &[0], &[4]),
            (Kind::ResyncRequest, &[0], &[32]),
        ];
        for (kind, good, bad) in cases {
            for &len in good {
                assert_eq!(check_body_len(kind, len), Ok(()), "{kind:?} {len}");
            }
            for &len in bad {
                assert!(check_body_len(kind, len).is_err(), "{kind:?} {len}");
            }
        }
    }

    #[test]
    fn every_record_rule_is_enforced() {
        let mut good = Vec::new();
        put_record(&sample(5), &mut good);
        let damaged = |at: usize, v: u8| {
            let mut b: [u8; RECORD_LEN] = good.as_slice().try_into().unwrap();
            b[at] = v;
            get_record(&b)
        };
        assert_eq!(damaged(0, 0), Err("unknown record kind"));
        assert_eq!(damaged(0, 3), Err("unknown record kind"));
        assert_eq!(damaged(1, 0x20), Err("unknown state bits"));
        assert_eq!(
            damaged(1, 0x11),
            Err("backend FIN first without a backend FIN")
        );
        assert!(damaged(1, 0x15).unwrap().state.backend_first);
        assert_eq!(damaged(2, 17), Err("protocol is not TCP"));
        assert_eq!(damaged(3, 1), Err("reserved byte is not 0"));
        // A close must say how it closed.
        assert_eq!(damaged(0, 2), Err("a close with neither FIN nor RST"));
        let mut b: [u8; RECORD_LEN] = good.as_slice().try_into().unwrap();
        b[0] = 2;
        b[1] = 8;
        assert!(get_record(&b).unwrap().state.rst);
        for i in 0..4 {
            let mut b: [u8; RECORD_LEN] = good.as_slice().try_into().unwrap();
            b[4 + 4 * i..8 + 4 * i].fill(0);
            assert_eq!(get_record(&b), Err("address 0.0.0.0"), "address {i}");
            let mut b: [u8; RECORD_LEN] = good.as_slice().try_into().unwrap();
            b[20 + 2 * i..22 + 2 * i].fill(0);
            assert_eq!(get_record(&b), Err("port 0"), "port {i}");
        }
        // The index of the bad record is reported.
        let mut body = good.clone();
        body.extend_from_slice(&good);
        body[32 + 2] = 17;
        assert_eq!(
            decode_body(Kind::Records, &body).unwrap_err(),
            WireError::Record {
                index: 1,
                why: "protocol is not TCP"
            }
        );
    }

    #[test]
    fn every_hello_rule_is_enforced() {
        let hello = Message::Hello(Hello {
            challenge: [7; 32],
            instance: 0x0102_0304_0506_0708,
            keepalive_ms: 250,
            role: Role::Reader,
            auth: false,
        });
        let mut out = Vec::new();
        encode(&hello, 0, None, &mut out);
        assert_eq!(
            &out[HEADER_LEN + 32..],
            [1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 250, 2, 0, 0, 0]
        );
        assert_eq!(decode(&out, 0, None).unwrap().unwrap().0, hello);
        let damaged = |at: usize, v: u8| {
            let mut b = out.clone();
            b[HEADER_LEN + at] = v;
            decode(&b, 0, None).unwrap_err()
        };
        assert_eq!(damaged(44, 3), WireError::Hello("unknown role"));
        assert_eq!(damaged(45, 2), WireError::Hello("auth is neither 0 nor 1"));
        assert_eq!(damaged(46, 1), WireError::Hello("reserved bytes are not 0"));
        assert_eq!(damaged(43, 0), WireError::Hello("keepalive interval 0"));
    }

    #[test]
    fn a_truncated_frame_asks_for_more() {
        let mut out = Vec::new();
        encode(
            &Message::Records(vec![sample(1), sample(2)]),
            4,
            Some(&key()),
            &mut out,
        );
        for cut in 0..out.len() {
            assert_eq!(
                decode(&out[..cut], 4, Some(&key())),
                Ok(None),
                "cut at {cut}"
            );
        }
        assert!(decode(&out, 4, Some(&key())).unwrap().is_some());
    }

    fn any_addr() -> impl Strategy<Value = SocketAddrV4> + Clone {
        (1u32.., 1u16..).prop_map(|(a, p)| SocketAddrV4::new(Ipv4Addr::from(a), p))
    }

    fn any_record() -> impl Strategy<Value = FlowRecord> + Clone {
        (
            any::<bool>(),
            any_addr(),
            any_addr(),
            any_addr(),
            any_addr(),
            any::<u32>(),
            any::<[bool; 5]>(),
        )
            .prop_map(|(close, client, vip, backend, nat, age_ms, s)| {
                let mut state = FlowState {
                    established: s[0],
                    fin_client: s[1],
                    fin_backend: s[2],
                    rst: s[3],
                    backend_first: s[2] && s[4],
                };
                if close && !state.closing() {
                    state.rst = true;
                }
                FlowRecord {
                    kind: if close {
                        RecordKind::Close
                    } else {
                        RecordKind::Update
                    },
                    client,
                    vip,
                    backend,
                    nat,
                    age_ms,
                    state,
                }
            })
    }

    fn any_message() -> impl Strategy<Value = Message> {
        let records = proptest::collection::vec(any_record(), 1..40);
        prop_oneof![
            (
                any::<[u8; 32]>(),
                any::<u64>(),
                1u32..,
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(challenge, instance, keepalive_ms, writer, auth)| {
                    Message::Hello(Hello {
                        challenge,
                        instance,
                        keepalive_ms,
                        role: if writer { Role::Writer } else { Role::Reader },
                        auth,
                    })
                }),
            records.clone().prop_map(Message::Records),
            records.prop_map(Message::Bulk),
            any::<u64>().prop_map(|tables| Message::BulkStart { tables }),
            any::<u64>().prop_map(|records| Message::BulkEnd { records }),
            Just(Message::Keepalive),
            Just(Message::ResyncRequest),
        ]
    }

    proptest! {
        #[test]
        fn fuzz_sync_frames_round_trip(
            msgs in proptest::collection::vec(any_message(), 1..6),
            first in any::<u32>(),
            tagged in any::<bool>(),
        ) {
            let key = tagged.then(key);
            let mut stream = Vec::new();
            for (i, m) in msgs.iter().enumerate() {
                encode(m, first.wrapping_add(i as u32), key.as_ref(), &mut stream);
            }
            let mut at = 0;
            for (i, m) in msgs.iter().enumerate() {
                let (got, used) = decode(&stream[at..], first.wrapping_add(i as u32), key.as_ref())
                    .unwrap()
                    .unwrap();
                prop_assert_eq!(&got, m);
                at += used;
            }
            prop_assert_eq!(at, stream.len());
        }

        #[test]
        fn fuzz_sync_any_bytes_decode_or_are_refused(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            seq in 0u32..3,
            tagged in any::<bool>(),
        ) {
            let key = tagged.then(key);
            let _ = decode(&bytes, seq, key.as_ref());
        }

        #[test]
        fn fuzz_sync_plausible_headers_decode_or_are_refused(
            kind in 0u8..9,
            flags in 0u8..3,
            len in prop_oneof![0u32..100, Just(MAX_BODY as u32), Just(MAX_BODY as u32 + 1), any::<u32>()],
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut b = Vec::new();
            b.extend_from_slice(&MAGIC.to_be_bytes());
            b.extend_from_slice(&[VERSION, kind, flags, 0, 0, 0, 0, 0]);
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(&body);
            let _ = decode(&b, 0, None);
            let _ = decode(&b, 0, Some(&key()));
        }

        /// Any change to any byte of a tagged frame is refused: the tag
        /// covers the header and the body.
        #[test]
        fn fuzz_sync_tampered_tagged_frames_are_refused(
            msg in any_message().prop_filter("tagged kinds", |m| !matches!(m, Message::Hello(_))),
            at in any::<prop::sample::Index>(),
            flip in 1u8..,
        ) {
            let mut out = Vec::new();
            encode(&msg, 5, Some(&key()), &mut out);
            let i = at.index(out.len());
            out[i] ^= flip;
            prop_assert!(!matches!(decode(&out, 5, Some(&key())), Ok(Some(_))));
        }

        /// Damage to a record's fixed bytes is refused even without a key.
        #[test]
        fn fuzz_sync_records_round_trip_or_are_refused(bytes in any::<[u8; RECORD_LEN]>()) {
            if let Ok(r) = get_record(&bytes) {
                let mut out = Vec::new();
                put_record(&r, &mut out);
                prop_assert_eq!(out.as_slice(), bytes.as_slice());
            }
        }
    }
}

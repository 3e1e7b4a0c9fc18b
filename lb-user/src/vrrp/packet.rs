//! The VRRPv3 advertisement (RFC 5798, section 5) for IPv4: building one,
//! and reading one out of a raw IP datagram with every check of section 7.1
//! that does not need the instance's state.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! |(rsvd) |     Max Adver Int     |          Checksum             |
//! |                       IPv4 Address(es)                        |
//! ```
//!
//! The checksum covers an IPv4 pseudo-header (source, destination, zero,
//! protocol 112, VRRP length) and the message, so a unicast advertisement is
//! checksummed once per peer.

use std::net::Ipv4Addr;

/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;
/// The only TTL a valid advertisement may arrive with.
pub const VRRP_TTL: u8 = 255;
const VERSION: u8 = 3;
const TYPE_ADVERTISEMENT: u8 = 1;
const HEADER_LEN: usize = 8;
/// Max Adver Int is a 12-bit count of centiseconds.
pub const MAX_ADVER_INT_CS: u16 = 0x0fff;

/// One advertisement's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    pub vrid: u8,
    pub priority: u8,
    /// Max Adver Int, in centiseconds.
    pub interval_cs: u16,
    pub addresses: Vec<Ipv4Addr>,
}

/// An advertisement as received: the sender and what it said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub from: Ipv4Addr,
    pub to: Ipv4Addr,
    pub advert: Advert,
}

/// Why a received datagram is not a usable advertisement.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("truncated ({0} bytes)")]
    Truncated(usize),
    #[error("not IPv4 protocol 112")]
    NotVrrp,
    #[error("TTL {0}, not 255 (RFC 5798 drops it: it may come from off the link)")]
    Ttl(u8),
    #[error("VRRP version {0}; lb speaks version 3 (keepalived: `vrrp_version 3`)")]
    Version(u8),
    #[error("type {0} is not an advertisement")]
    Type(u8),
    #[error("bad checksum")]
    Checksum,
    #[error("advertisement interval 0")]
    ZeroInterval,
}

impl Invalid {
    /// A stable name for counting refusals by reason (metrics, status).
    pub fn label(&self) -> &'static str {
        match self {
            Invalid::Truncated(_) => "truncated",
            Invalid::NotVrrp => "not_vrrp",
            Invalid::Ttl(_) => "ttl",
            Invalid::Version(_) => "version",
            Invalid::Type(_) => "type",
            Invalid::Checksum => "checksum",
            Invalid::ZeroInterval => "zero_interval",
        }
    }
}

/// The internet checksum of `parts`, concatenated (each of even length but
/// the last).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0..4].copy_from_slice(&src.octets());
    p[4..8].copy_from_slice(&dst.octets());
    p[9] = IPPROTO_VRRP;
    p[10..12].copy_from_slice(&(len as u16).to_be_bytes());
    p
}

impl Advert {
    /// The VRRP message (no IP header) from `src` to `dst`, checksummed.
    pub fn encode(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let count = self.addresses.len().min(255);
        let mut m = Vec::with_capacity(HEADER_LEN + 4 * count);
        m.push((VERSION << 4) | TYPE_ADVERTISEMENT);
        m.push(self.vrid);
        m.push(self.priority);
        m.push(count as u8);
        m.extend_from_slice(&(self.interval_cs & MAX_ADVER_INT_CS).to_be_bytes());
        m.extend_from_slice(&[0, 0]);
        for a in &self.addresses[..count] {
            m.extend_from_slice(&a.octets());
        }
        let sum = checksum(&[&pseudo_header(src, dst, m.len()), &m]);
        m[6..8].copy_from_slice(&sum.to_be_bytes());
        m
    }
}

/// The source address of an IPv4 datagram, if it is long enough to have
/// one (to name the sender of a packet that is refused).
pub fn source(datagram: &[u8]) -> Option<Ipv4Addr> {
    let a = datagram.get(12..16)?;
    Some(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
}

/// Reads an advertisement out of an IPv4 datagram as a raw socket returns
/// it (IP header included).
pub fn parse(datagram: &[u8]) -> Result<Received, Invalid> {
    if datagram.len() < 20 {
        return Err(Invalid::Truncated(datagram.len()));
    }
    let ihl = usize::from(datagram[0] & 0x0f) * 4;
    if datagram[0] >> 4 != 4 || ihl < 20 || datagram[9] != IPPROTO_VRRP {
        return Err(Invalid::NotVrrp);
    }
    let total = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    if total < ihl + HEADER_LEN || total > datagram.len() {
        return Err(Invalid::Truncated(datagram.len()));
    }
    let ttl = datagram[8];
    let from = Ipv4Addr::new(datagram[12], datagram[13], datagram[14], datagram[15]);
    let to = Ipv4Addr::new(datagram[16], datagram[17], datagram[18], datagram[19]);
    let m = &datagram[ihl..total];
    let version = m[0] >> 4;
    if version != VERSION {
        return Err(Invalid::Version(version));
    }
    let kind = m[0] & 0x0f;
    if kind != TYPE_ADVERTISEMENT {
        return Err(Invalid::Type(kind));
    }
    if ttl != VRRP_TTL {
        return Err(Invalid::Ttl(ttl));
    }
    let count = usize::from(m[3]);
    if m.len() < HEADER_LEN + 4 * count {
        return Err(Invalid::Truncated(datagram.len()));
    }
    if checksum(&[&pseudo_header(from, to, m.len()), m]) != 0 {
        return Err(Invalid::Checksum);
    }
    let interval_cs = u16::from_be_bytes([m[4], m[5]]) & MAX_ADVER_INT_CS;
    if interval_cs == 0 {
        return Err(Invalid::ZeroInterval);
    }
    let addresses = m[HEADER_LEN..HEADER_LEN + 4 * count]
        .chunks_exact(4)
        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
        .collect();
    Ok(Received {
        from,
        to,
        advert: Advert {
            vrid: m[1],
            priority: m[2],
            interval_cs,
            addresses,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 21);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 22);

    /// An IPv4 header around `m`, as the kernel hands it to a raw socket.
    fn datagram(m: &[u8], ttl: u8) -> Vec<u8> {
        let total = (20 + m.len()) as u16;
        let mut d = vec![0x45, 0];
        d.extend_from_slice(&total.to_be_bytes());
        d.extend_from_slice(&[0, 0, 0x40, 0, ttl, IPPROTO_VRRP, 0, 0]);
        d.extend_from_slice(&SRC.octets());
        d.extend_from_slice(&DST.octets());
        d.extend_from_slice(m);
        d
    }

    fn advert() -> Advert {
        Advert {
            vrid: 51,
            priority: 101,
            interval_cs: 100,
            addresses: vec![Ipv4Addr::new(10, 9, 0, 100)],
        }
    }

    /// keepalived 2.2.7's advertisement for VRID 51, priority 101, advert_int
    /// 1, one address 10.9.0.100, from 10.9.0.21 to 10.9.0.22, captured with
    /// tcpdump on this machine: the checksum is keepalived's, not this code's.
    const KEEPALIVED_ADVERT: [u8; 12] = [
        0x31, 0x33, 0x65, 0x01, 0x00, 0x64, 0x4a, 0x41, 0x0a, 0x09, 0x00, 0x64,
    ];

    #[test]
    fn encodes_as_keepalived_does() {
        assert_eq!(advert().encode(SRC, DST), KEEPALIVED_ADVERT);
    }

    #[test]
    fn round_trips() {
        let a = Advert {
            vrid: 7,
            priority: 0,
            interval_cs: 4095,
            addresses: vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)],
        };
        let r = parse(&datagram(&a.encode(SRC, DST), 255)).unwrap();
        assert_eq!((r.from, r.to, r.advert), (SRC, DST, a));
    }

    #[test]
    fn refuses_what_rfc_5798_drops() {
        let good = advert().encode(SRC, DST);
        assert_eq!(parse(&datagram(&good, 64)), Err(Invalid::Ttl(64)));
        let mut v2 = good.clone();
        v2[0] = 0x21;
        assert_eq!(parse(&datagram(&v2, 255)), Err(Invalid::Version(2)));
        let mut corrupt = good.clone();
        corrupt[2] ^= 1;
        assert_eq!(parse(&datagram(&corrupt, 255)), Err(Invalid::Checksum));
        // Checksummed for another destination (the pseudo-header counts).
        let elsewhere = advert().encode(SRC, Ipv4Addr::new(10, 9, 0, 23));
        assert_eq!(parse(&datagram(&elsewhere, 255)), Err(Invalid::Checksum));
        let mut zero = advert();
        zero.interval_cs = 0;
        assert_eq!(
            parse(&datagram(&zero.encode(SRC, DST), 255)),
            Err(Invalid::ZeroInterval)
        );
        let mut counted_more = good.clone();
        counted_more[3] = 2;
        assert!(matches!(
            parse(&datagram(&counted_more, 255)),
            Err(Invalid::Truncated(_))
        ));
        assert!(matches!(parse(&[0x45; 10]), Err(Invalid::Truncated(10))));
        let mut tcp = datagram(&good, 255);
        tcp[9] = 6;
        assert_eq!(parse(&tcp), Err(Invalid::NotVrrp));
    }
}

/// Fuzz-style tests: any datagram a raw socket may hand over is either a
/// valid advertisement or refused with a reason, never a panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn valid() -> impl Strategy<Value = (Advert, Ipv4Addr, Ipv4Addr)> {
        (
            any::<u8>(),
            any::<u8>(),
            1u16..=MAX_ADVER_INT_CS,
            proptest::collection::vec(any::<u32>(), 0..20),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(|(vrid, priority, interval_cs, addrs, src, dst)| {
                (
                    Advert {
                        vrid,
                        priority,
                        interval_cs,
                        addresses: addrs.into_iter().map(Ipv4Addr::from).collect(),
                    },
                    Ipv4Addr::from(src),
                    Ipv4Addr::from(dst),
                )
            })
    }

    fn datagram(m: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let total = (20 + m.len()) as u16;
        let mut d = vec![0x45, 0];
        d.extend_from_slice(&total.to_be_bytes());
        d.extend_from_slice(&[0, 0, 0x40, 0, VRRP_TTL, IPPROTO_VRRP, 0, 0]);
        d.extend_from_slice(&src.octets());
        d.extend_from_slice(&dst.octets());
        d.extend_from_slice(m);
        d
    }

    proptest! {
        #[test]
        fn fuzz_vrrp_any_bytes_parse_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
            let _ = source(&bytes);
        }

        #[test]
        fn fuzz_vrrp_adverts_round_trip((a, src, dst) in valid()) {
            let r = parse(&datagram(&a.encode(src, dst), src, dst)).unwrap();
            prop_assert_eq!(r.advert, a);
            prop_assert_eq!((r.from, r.to), (src, dst));
        }

        #[test]
        fn fuzz_vrrp_damaged_adverts_never_panic(
            (a, src, dst) in valid(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut d = datagram(&a.encode(src, dst), src, dst);
            for (at, x) in flips {
                let i = at.index(d.len());
                d[i] ^= x.max(1);
            }
            let keep = cut.index(d.len() + 1);
            let _ = parse(&d[..keep]);
            let _ = parse(&d);
        }
    }
}

//! Building test frames and checking what the XDP program made of them.
//!
//! The checksum code here is deliberately independent of `lb_ebpf::csum`: it
//! sums whole headers byte by byte, so an error in the program's incremental
//! updates cannot hide behind the same error here.

use std::net::Ipv4Addr;

pub type Mac = [u8; 6];

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// RFC 1071 sum of `bytes` (big-endian 16-bit words), not yet complemented.
fn sum16(bytes: &[u8]) -> u32 {
    let mut sum = 0u32;
    for chunk in bytes.chunks(2) {
        let hi = chunk[0] as u32;
        let lo = chunk.get(1).copied().unwrap_or(0) as u32;
        sum += (hi << 8) | lo;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `bytes`.
pub fn checksum(bytes: &[u8]) -> u16 {
    !fold(sum16(bytes))
}

/// The TCP/UDP checksum of `segment` (header + payload) between two addresses.
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.push(0);
    pseudo.push(proto);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    !fold(sum16(&pseudo) + sum16(segment))
}

/// A frame to build. Defaults: a TCP SYN with no payload, TTL 64, DF set.
#[derive(Clone, Debug)]
pub struct Frame {
    pub dst_mac: Mac,
    pub src_mac: Mac,
    pub vlan: Option<u16>,
    /// A second 802.1Q tag inside the first (QinQ), which the program does not parse.
    pub inner_vlan: Option<u16>,
    pub ether_type: u16,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    /// IPv4 options (padded to a multiple of 4 by the builder).
    pub ip_options: Vec<u8>,
    /// Raw flags/fragment-offset field (0x4000 = DF).
    pub frag: u16,
    /// Overrides the IHL nibble (for malformed packets).
    pub ihl_override: Option<u8>,
    /// Overrides the IPv4 total length.
    pub tot_len_override: Option<u16>,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// TCP options, padded with EOL to a multiple of 4 by the builder.
    pub tcp_options: Vec<u8>,
    /// Overrides the TCP data offset nibble (for malformed packets).
    pub doff_override: Option<u8>,
    pub payload: Vec<u8>,
}

/// A TCP MSS option (kind 2, length 4).
pub fn mss_option(mss: u16) -> Vec<u8> {
    let mut o = vec![2, 4];
    o.extend_from_slice(&mss.to_be_bytes());
    o
}

impl Frame {
    pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Frame {
        Frame {
            dst_mac: [0x02, 0, 0, 0, 0, 0xfe],
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            vlan: None,
            inner_vlan: None,
            ether_type: ETH_P_IP,
            src: src.0,
            dst: dst.0,
            proto: 6,
            ttl: 64,
            ip_options: Vec::new(),
            frag: 0x4000,
            ihl_override: None,
            tot_len_override: None,
            sport: src.1,
            dport: dst.1,
            tcp_flags: flags,
            seq: 1000,
            ack: if flags & ACK != 0 { 2000 } else { 0 },
            tcp_options: Vec::new(),
            doff_override: None,
            payload: Vec::new(),
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        if let Some(tag) = self.vlan {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&tag.to_be_bytes());
        }
        if let Some(tag) = self.inner_vlan {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&tag.to_be_bytes());
        }
        f.extend_from_slice(&self.ether_type.to_be_bytes());
        if self.ether_type != ETH_P_IP {
            // Some non-IPv4 body of plausible size.
            f.extend_from_slice(&[0u8; 40]);
            return f;
        }
        let mut opts = self.ip_options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(0); // end of options list
        }
        let ip_hdr_len = 20 + opts.len();
        let l4 = self.l4_segment();
        let tot_len = self
            .tot_len_override
            .unwrap_or((ip_hdr_len + l4.len()) as u16);
        let ihl = self.ihl_override.unwrap_or((ip_hdr_len / 4) as u8);
        let mut ip = vec![0u8; 20];
        ip[0] = 0x40 | (ihl & 0x0f);
        ip[2..4].copy_from_slice(&tot_len.to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[6..8].copy_from_slice(&self.frag.to_be_bytes());
        ip[8] = self.ttl;
        ip[9] = self.proto;
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        ip.extend_from_slice(&opts);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&l4);
        f
    }

    /// An ICMP "fragmentation needed" (type 3, code 4) from `router` to
    /// `to`, quoting the IPv4 header and first 8 bytes of `quoted`'s
    /// segment, with `mtu` as the next-hop MTU.
    pub fn icmp_frag_needed(router: Ipv4Addr, to: Ipv4Addr, quoted: &Frame, mtu: u16) -> Frame {
        let q = quoted.build();
        let mut icmp = vec![3, 4, 0, 0, 0, 0];
        icmp.extend_from_slice(&mtu.to_be_bytes());
        icmp.extend_from_slice(&q[14..14 + 20 + 8]);
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        Frame {
            proto: 1,
            payload: icmp,
            ..Frame::tcp((router, 0), (to, 0), 0)
        }
    }

    fn l4_segment(&self) -> Vec<u8> {
        if self.proto == 1 {
            // ICMP: the payload is the whole message, checksum included.
            return self.payload.clone();
        }
        let mut s = Vec::new();
        s.extend_from_slice(&self.sport.to_be_bytes());
        s.extend_from_slice(&self.dport.to_be_bytes());
        if self.proto == 17 {
            s.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            s.extend_from_slice(&[0, 0]);
            s.extend_from_slice(&self.payload);
            let c = l4_checksum(self.src, self.dst, 17, &s);
            s[6..8].copy_from_slice(&c.to_be_bytes());
            return s;
        }
        s.extend_from_slice(&self.seq.to_be_bytes());
        s.extend_from_slice(&self.ack.to_be_bytes());
        let mut opts = self.tcp_options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(0); // end of options list
        }
        let doff = self.doff_override.unwrap_or((5 + opts.len() / 4) as u8);
        s.push(doff << 4);
        s.push(self.tcp_flags);
        s.extend_from_slice(&64240u16.to_be_bytes());
        s.extend_from_slice(&[0, 0, 0, 0]);
        s.extend_from_slice(&opts);
        s.extend_from_slice(&self.payload);
        let c = l4_checksum(self.src, self.dst, 6, &s);
        s[16..18].copy_from_slice(&c.to_be_bytes());
        s
    }
}

/// The interesting fields of an output frame, parsed independently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub dst_mac: Mac,
    pub src_mac: Mac,
    pub vlan: Option<u16>,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub seq: u32,
    /// The TCP options (the header beyond its first 20 bytes).
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Parsed {
    /// The value of the MSS option, if the options have one (walked as TCP
    /// does: EOL ends them, NOP is one byte, others give their length).
    pub fn mss(&self) -> Option<u16> {
        let o = &self.options;
        let mut i = 0;
        while i < o.len() {
            match o[i] {
                0 => return None,
                1 => i += 1,
                kind => {
                    let len = *o.get(i + 1)? as usize;
                    if len < 2 || i + len > o.len() {
                        return None;
                    }
                    if kind == 2 && len == 4 {
                        return Some(u16::from_be_bytes([o[i + 2], o[i + 3]]));
                    }
                    i += len;
                }
            }
        }
        None
    }
}

/// Parses an Ethernet/[VLAN]/IPv4/TCP frame and verifies both checksums;
/// panics with a description of what is wrong.
pub fn parse_tcp(frame: &[u8]) -> Parsed {
    assert!(frame.len() >= 14, "frame of {} bytes", frame.len());
    let mut off = 12;
    let mut vlan = None;
    let mut et = u16::from_be_bytes([frame[off], frame[off + 1]]);
    if et == ETH_P_8021Q {
        vlan = Some(u16::from_be_bytes([frame[off + 2], frame[off + 3]]));
        off += 4;
        et = u16::from_be_bytes([frame[off], frame[off + 1]]);
    }
    assert_eq!(et, ETH_P_IP, "not IPv4");
    let ip = &frame[off + 2..];
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let tot_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    assert_eq!(checksum(&ip[..ihl]), 0, "IPv4 header checksum is wrong");
    assert_eq!(ip[9], 6, "not TCP");
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let seg = &ip[ihl..tot_len];
    assert_eq!(
        l4_checksum(src, dst, 6, seg),
        0,
        "TCP checksum is wrong ({src} -> {dst})"
    );
    let doff = (seg[12] >> 4) as usize * 4;
    Parsed {
        dst_mac: frame[0..6].try_into().unwrap(),
        src_mac: frame[6..12].try_into().unwrap(),
        vlan,
        src,
        dst,
        ttl: ip[8],
        sport: u16::from_be_bytes([seg[0], seg[1]]),
        dport: u16::from_be_bytes([seg[2], seg[3]]),
        tcp_flags: seg[13],
        seq: u32::from_be_bytes([seg[4], seg[5], seg[6], seg[7]]),
        options: seg[20..doff].to_vec(),
        payload: seg[doff..].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_carry_valid_checksums() {
        let mut f = Frame::tcp(
            (Ipv4Addr::new(10, 0, 0, 1), 1234),
            (Ipv4Addr::new(10, 0, 0, 2), 80),
            SYN,
        );
        f.payload = b"hello, odd length".to_vec();
        let p = parse_tcp(&f.build());
        assert_eq!(p.sport, 1234);
        assert_eq!(p.payload, b"hello, odd length");
        f.vlan = Some(7);
        f.ip_options = vec![1, 1, 1];
        let p = parse_tcp(&f.build());
        assert_eq!(p.vlan, Some(7));
        assert_eq!(p.mss(), None);
        f.tcp_options = [vec![1], mss_option(1460), vec![1, 3, 3, 7]].concat();
        let p = parse_tcp(&f.build());
        assert_eq!(p.options.len(), 12);
        assert_eq!(p.mss(), Some(1460));
        assert_eq!(p.payload, b"hello, odd length");
    }

    #[test]
    fn checksum_of_a_known_header() {
        // Example IPv4 header with checksum 0xb861.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&hdr), 0xb861);
    }
}

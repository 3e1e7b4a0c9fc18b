//! Header parsing with strict bounds checks. Every raw pointer handed out here
//! has been checked to lie entirely before `data_end`.

use aya_ebpf::programs::XdpContext;
use core::mem::size_of;
use lb_ebpf::IPPROTO_TCP;
use network_types::{eth::EthHdr, ip::Ipv4Hdr, tcp::TcpHdr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const VLAN_HDR_LEN: usize = 4;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A pointer to a `T` at `offset`, if the whole `T` lies inside the packet.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Why a packet is not a parsed IPv4/TCP packet.
pub enum NotTcp {
    /// Not IPv4 (after at most one VLAN tag).
    NotIpv4,
    /// IPv4 but another protocol (ICMP is looked at: see `icmp`).
    OtherProto(OtherIp),
    /// A header is cut short, or IPv4 version/IHL is invalid.
    Malformed,
    /// A non-first fragment: no TCP header to read.
    LaterFragment,
}

/// An IPv4 packet of another protocol than TCP: its headers so far.
pub struct OtherIp {
    pub eth: *mut EthHdr,
    /// Bounds-checked for a header without options (IHL is at least 5).
    pub ip: *mut Ipv4Hdr,
    /// Offset of the IPv4 header in the frame.
    pub l3: usize,
}

/// The parsed headers of an IPv4/TCP packet.
pub struct Packet {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    pub tcp: *mut TcpHdr,
    /// IPv4 header length in bytes (20 without options).
    pub ip_hdr_len: usize,
    /// More-fragments set: the first fragment of a fragmented datagram.
    pub first_fragment: bool,
    /// TCP flags byte.
    pub tcp_flags: u8,
}

impl Packet {
    /// IPv4 header with options.
    #[inline(always)]
    pub fn has_ip_options(&self) -> bool {
        self.ip_hdr_len != Ipv4Hdr::LEN
    }

    /// The IPv4 total length and TCP data offset agree with the headers.
    #[inline(always)]
    pub fn lengths_consistent(&self) -> bool {
        // SAFETY: `ip` and `tcp` were bounds-checked by `parse`.
        let (tot_len, doff) = unsafe { ((*self.ip).tot_len(), (*self.tcp).doff()) };
        doff >= 5 && tot_len as usize >= self.ip_hdr_len + doff as usize * 4
    }

    /// The frame ends before the IPv4 total length says (`data_end` is the
    /// frame's end): its TCP options or data are cut off. With
    /// [`Packet::lengths_consistent`], the whole TCP header, options
    /// included, then lies inside the frame.
    #[inline(always)]
    pub fn truncated(&self, data_end: usize) -> bool {
        // SAFETY: `ip` was bounds-checked by `parse`.
        let tot_len = unsafe { (*self.ip).tot_len() } as usize;
        self.ip as usize + tot_len > data_end
    }
}

/// Parses Ethernet (at most one 802.1Q tag), IPv4 and TCP.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, NotTcp> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(NotTcp::Malformed)?;
    // SAFETY: `eth` is bounds-checked just above.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut l3 = EthHdr::LEN;
    if ether_type == ETH_P_8021Q {
        // TCI (2 bytes) then the inner ethertype.
        let inner: *const [u8; 2] = ptr_at(ctx, EthHdr::LEN + 2).ok_or(NotTcp::Malformed)?;
        // SAFETY: `inner` is bounds-checked just above.
        ether_type = u16::from_be_bytes(unsafe { *inner });
        l3 += VLAN_HDR_LEN;
    }
    if ether_type != ETH_P_IP {
        return Err(NotTcp::NotIpv4);
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, l3).ok_or(NotTcp::Malformed)?;
    // SAFETY: `ip` is bounds-checked just above.
    let (vihl, proto, frags) =
        unsafe { ((*ip).vihl, (*ip).proto, u16::from_be_bytes((*ip).frags)) };
    let ihl = (vihl & 0x0f) as usize;
    if vihl >> 4 != 4 || ihl < 5 {
        return Err(NotTcp::Malformed);
    }
    if proto != IPPROTO_TCP {
        return Err(NotTcp::OtherProto(OtherIp { eth, ip, l3 }));
    }
    if frags & 0x1fff != 0 {
        return Err(NotTcp::LaterFragment);
    }
    let ip_hdr_len = ihl * 4;
    let tcp: *mut TcpHdr = ptr_at(ctx, l3 + ip_hdr_len).ok_or(NotTcp::Malformed)?;
    // The flags byte is the 14th of the TCP header, inside the checked `TcpHdr`.
    // SAFETY: `tcp` is bounds-checked just above and `TcpHdr::LEN` is 20.
    let tcp_flags = unsafe { *(tcp as *const u8).add(13) };
    Ok(Packet {
        eth,
        ip,
        tcp,
        ip_hdr_len,
        first_fragment: frags & 0x2000 != 0,
        tcp_flags,
    })
}

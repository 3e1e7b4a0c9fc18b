//! What VRRP does to the host, and its sockets: the raw IPv4 socket
//! advertisements go through, floating addresses added and removed through
//! rtnetlink, gratuitous ARP through a packet socket, and the facts about
//! the interface it needs (index, MAC, addresses). The sockets are
//! socket2's; the `unsafe` left is for what it does not cover (interface
//! ioctls, getifaddrs, a link-layer address, registering with tokio).

use std::{
    ffi::CString,
    io::{self, Read as _},
    mem::size_of,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd,
};

use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};
use tokio::io::{unix::AsyncFd, Interest};

use super::packet::{IPPROTO_VRRP, VRRP_TTL};

/// DSCP CS6 (network control), as keepalived marks advertisements.
const TOS_NETWORK_CONTROL: u32 = 0xc0;

/// The raw IPv4 socket for IP protocol 112 on one interface: advertisements
/// go out from the source address with TTL 255, and every VRRP packet that
/// arrives on the interface can be read (IP header included).
pub struct VrrpSocket(Socket);

impl VrrpSocket {
    pub fn open(iface: &Interface, source: Ipv4Addr) -> Result<VrrpSocket> {
        let socket = Socket::new(
            Domain::IPV4,
            Type::RAW.nonblocking(),
            Some(Protocol::from(i32::from(IPPROTO_VRRP))),
        )
        .context("opening a raw socket for VRRP (IP protocol 112; lbd must run as root)")?;
        socket
            .bind_device(Some(iface.name.as_bytes()))
            .with_context(|| format!("binding the VRRP socket to {}", iface.name))?;
        socket
            .set_ttl_v4(VRRP_TTL.into())
            .context("setting TTL 255 on the VRRP socket")?;
        socket
            .set_tos_v4(TOS_NETWORK_CONTROL)
            .context("setting the TOS of the VRRP socket")?;
        socket
            .bind(&SocketAddrV4::new(source, 0).into())
            .with_context(|| format!("binding the VRRP socket to {source}"))?;
        Ok(VrrpSocket(socket))
    }

    /// Sends `advert` (a VRRP packet; the kernel adds the IP header) to
    /// `peer`.
    pub fn send_to(&self, advert: &[u8], peer: Ipv4Addr) -> io::Result<()> {
        self.0
            .send_to(advert, &SocketAddrV4::new(peer, 0).into())
            .map(drop)
    }

    /// The next packet waiting, IP header included; `None` when there is
    /// none.
    pub fn recv<'a>(&self, buf: &'a mut [u8]) -> io::Result<Option<&'a [u8]>> {
        loop {
            match (&self.0).read(buf) {
                Ok(n) => return Ok(Some(&buf[..n])),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// A second handle on the socket, registered with tokio to wait until
    /// packets are waiting (they are read with [`VrrpSocket::recv`]).
    pub fn readiness(&self) -> io::Result<AsyncFd<Socket>> {
        let clone = self.0.try_clone()?;
        // SAFETY: the clone owns its descriptor (a dup), which stays open
        // and the same for as long as the AsyncFd holds the clone.
        unsafe { AsyncFd::register_with_interest(clone, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
    }
}

/// The interface advertisements go out of and floating addresses live on.
#[derive(Clone, Debug)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
}

impl Interface {
    pub fn lookup(name: &str) -> Result<Interface> {
        let c = CString::new(name).context("interface name")?;
        // SAFETY: a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if index == 0 {
            bail!("vrrp.interface: there is no interface {name:?} on this host");
        }
        // Asked of a socket, not read from /sys/class/net: sysfs shows the
        // interfaces of the namespace it was mounted in, which need not be
        // lbd's (`nsenter --net`, containers).
        let mac = hardware_address(name)
            .with_context(|| format!("reading the Ethernet address of {name}"))?;
        Ok(Interface {
            name: name.to_owned(),
            index,
            mac,
        })
    }

    /// The IPv4 addresses on the interface now.
    pub fn addresses(&self) -> Result<Vec<Ipv4Addr>> {
        addresses_of(&self.name)
    }
}

/// The interface's Ethernet address (`SIOCGIFHWADDR`), in the caller's
/// network namespace.
fn hardware_address(name: &str) -> Result<[u8; 6]> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None).context("socket")?;
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: a valid fd and an ifreq naming the interface (NUL-terminated:
    // names are at most 15 bytes).
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } != 0 {
        return Err(io::Error::last_os_error()).context("SIOCGIFHWADDR");
    }
    // SAFETY: SIOCGIFHWADDR filled in the hardware address.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    if sa.sa_family != libc::ARPHRD_ETHER {
        bail!(
            "{name} is not an Ethernet interface (ARP hardware type {})",
            sa.sa_family
        );
    }
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *m = *b as u8;
    }
    Ok(mac)
}

/// Whether interface `name` is up with a carrier (`IFF_UP` and
/// `IFF_RUNNING`, from `SIOCGIFFLAGS` in the caller's namespace). An
/// interface that does not exist is not up.
pub fn is_running(name: &str) -> bool {
    let Ok(socket) = Socket::new(Domain::IPV4, Type::DGRAM, None) else {
        return false;
    };
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().take(15).zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: a valid fd and an ifreq naming the interface.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return false;
    }
    // SAFETY: SIOCGIFFLAGS filled in the flags.
    let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
    flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0
}

/// The IPv4 addresses of interface `name`, in the kernel's order (the
/// primary first).
pub fn addresses_of(name: &str) -> Result<Vec<Ipv4Addr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error()).context("getifaddrs");
    }
    let mut out = Vec::new();
    let mut p = head;
    while !p.is_null() {
        // SAFETY: a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*p };
        p = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: non-null pointers into the list.
        let (family, ifname) = unsafe {
            (
                (*ifa.ifa_addr).sa_family,
                std::ffi::CStr::from_ptr(ifa.ifa_name),
            )
        };
        if i32::from(family) != libc::AF_INET || ifname.to_bytes() != name.as_bytes() {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[repr(C)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
struct IfAddrMsg {
    family: u8,
    prefixlen: u8,
    flags: u8,
    scope: u8,
    index: u32,
}

/// Adds (`add`) or removes `addr`/32 on interface `index` through
/// rtnetlink. Returns whether anything changed: adding an address that is
/// there, or removing one that is not, is not an error.
pub fn set_address(index: u32, addr: Ipv4Addr, add: bool) -> io::Result<bool> {
    let socket = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::RAW,
        Some(Protocol::from(libc::NETLINK_ROUTE)),
    )?;
    let mut msg = Vec::with_capacity(48);
    let attr_len = 4 + 4;
    let len = size_of::<NlMsgHdr>() + size_of::<IfAddrMsg>() + 2 * attr_len;
    let (kind, extra) = if add {
        (libc::RTM_NEWADDR, libc::NLM_F_CREATE | libc::NLM_F_EXCL)
    } else {
        (libc::RTM_DELADDR, 0)
    };
    let hdr = NlMsgHdr {
        len: len as u32,
        kind,
        flags: (libc::NLM_F_REQUEST | libc::NLM_F_ACK | extra) as u16,
        seq: 1,
        pid: 0,
    };
    msg.extend_from_slice(&hdr.len.to_ne_bytes());
    msg.extend_from_slice(&hdr.kind.to_ne_bytes());
    msg.extend_from_slice(&hdr.flags.to_ne_bytes());
    msg.extend_from_slice(&hdr.seq.to_ne_bytes());
    msg.extend_from_slice(&hdr.pid.to_ne_bytes());
    let ifa = IfAddrMsg {
        family: libc::AF_INET as u8,
        prefixlen: 32,
        flags: 0,
        scope: libc::RT_SCOPE_UNIVERSE,
        index,
    };
    msg.extend_from_slice(&[ifa.family, ifa.prefixlen, ifa.flags, ifa.scope]);
    msg.extend_from_slice(&ifa.index.to_ne_bytes());
    for attr in [libc::IFA_LOCAL, libc::IFA_ADDRESS] {
        msg.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        msg.extend_from_slice(&attr.to_ne_bytes());
        msg.extend_from_slice(&addr.octets());
    }
    debug_assert_eq!(msg.len(), len);
    // Without an address, a netlink message goes to the kernel.
    socket.send(&msg)?;
    let mut buf = [0u8; 1024];
    let n = (&socket).read(&mut buf)?;
    if n < size_of::<NlMsgHdr>() + 4 {
        return Err(io::Error::other("short rtnetlink answer"));
    }
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    if kind != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::other(format!(
            "unexpected rtnetlink answer type {kind}"
        )));
    }
    let errno = -i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
    match errno {
        0 => Ok(true),
        libc::EEXIST if add => Ok(false),
        libc::EADDRNOTAVAIL if !add => Ok(false),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// A packet socket for gratuitous ARP on one interface.
pub struct Announcer {
    socket: Socket,
    /// The interface's link-layer broadcast address.
    to: SockAddr,
    mac: [u8; 6],
}

const ETH_P_ARP: u16 = 0x0806;

impl Announcer {
    pub fn new(iface: &Interface) -> io::Result<Announcer> {
        let socket = Socket::new(
            Domain::PACKET,
            Type::DGRAM.nonblocking(),
            Some(Protocol::from(i32::from(ETH_P_ARP.to_be()))),
        )?;
        Ok(Announcer {
            socket,
            to: link_broadcast(iface.index, ETH_P_ARP),
            mac: iface.mac,
        })
    }

    /// Broadcasts a gratuitous ARP request for `addr` (sender and target
    /// both `addr`, sender hardware address ours): neighbours that know
    /// `addr` point it at this host.
    pub fn announce(&self, addr: Ipv4Addr) -> io::Result<()> {
        self.socket
            .send_to(&garp(self.mac, addr), &self.to)
            .map(drop)
    }
}

/// The Ethernet broadcast address on interface `index` for `protocol`, as a
/// packet socket's `sockaddr_ll` (socket2 has no constructor for it).
fn link_broadcast(index: u32, protocol: u16) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: sockaddr_ll is one of the platform's socket address types.
    let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = protocol.to_be();
    ll.sll_ifindex = index as i32;
    ll.sll_halen = 6;
    ll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: the storage holds an AF_PACKET address, a sockaddr_ll, and the
    // length is that of a sockaddr_ll.
    unsafe {
        SockAddr::new(
            storage,
            size_of::<libc::sockaddr_ll>() as socket2::socklen_t,
        )
    }
}

/// The ARP payload of a gratuitous request.
pub fn garp(mac: [u8; 6], addr: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&addr.octets());
    // Target hardware address: zero (RFC 5227); target protocol address: ours.
    p[24..28].copy_from_slice(&addr.octets());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gratuitous_request_names_the_address_twice() {
        let p = garp([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(&p[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&p[8..14], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&p[14..18], &[10, 0, 0, 100]);
        assert_eq!(&p[18..24], &[0; 6]);
        assert_eq!(&p[24..28], &[10, 0, 0, 100]);
    }
}

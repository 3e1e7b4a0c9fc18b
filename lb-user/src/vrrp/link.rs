//! What VRRP does to the host: floating addresses added and removed through
//! rtnetlink, gratuitous ARP through a packet socket, and the facts about
//! the interface it needs (index, MAC, addresses).

use std::{
    ffi::CString,
    io,
    mem::size_of,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{bail, Context, Result};

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
    // SAFETY: plain socket call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket");
    }
    // SAFETY: a fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: a valid fd and an ifreq naming the interface (NUL-terminated:
    // names are at most 15 bytes).
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } != 0 {
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
    // SAFETY: plain socket call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: a fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().take(15).zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: a valid fd and an ifreq naming the interface.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
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
    // SAFETY: plain socket call; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
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
    // SAFETY: an all-zero sockaddr_nl addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    send_to(&fd, &msg, &kernel)?;
    let mut buf = [0u8; 1024];
    // SAFETY: valid buffer.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
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
    fd: OwnedFd,
    iface: Interface,
}

const ETH_P_ARP: u16 = 0x0806;

impl Announcer {
    pub fn new(iface: &Interface) -> io::Result<Announcer> {
        // SAFETY: plain socket call; the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                i32::from(ETH_P_ARP.to_be()),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Announcer {
            // SAFETY: a fresh fd owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            iface: iface.clone(),
        })
    }

    /// Broadcasts a gratuitous ARP request for `addr` (sender and target
    /// both `addr`, sender hardware address ours): neighbours that know
    /// `addr` point it at this host.
    pub fn announce(&self, addr: Ipv4Addr) -> io::Result<()> {
        let frame = garp(self.iface.mac, addr);
        // SAFETY: a zeroed sockaddr_ll, filled in below.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = ETH_P_ARP.to_be();
        to.sll_ifindex = self.iface.index as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        send_to(&self.fd, &frame, &to)
    }
}

/// `sendto(2)` of `buf` on `fd` to `to` (a `sockaddr_in`, `sockaddr_ll`,
/// ...: any plain socket address struct).
pub fn send_to<A>(fd: &OwnedFd, buf: &[u8], to: &A) -> io::Result<()> {
    // SAFETY: valid buffer and address, with their sizes, for the call's
    // duration.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (to as *const A).cast(),
            size_of::<A>() as u32,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

//! Link-layer and raw sockets for the takeover: an AF_PACKET socket bound to
//! one interface (gratuitous ARP out, SYNs in, SYN-ACK replay out), a raw
//! IPv4 socket with a caller-built header (the peer's FIN injected into the
//! local stack, crafted ACKs), and one NETLINK_ROUTE request/ack exchange
//! (adding or removing an address without spawning `ip`).
//!
//! Invariants: frames and packets are plain byte slices built and parsed by
//! safe code elsewhere; every receive is bounded by a caller's timeout; every
//! socket is an [`OwnedFd`] closed exactly once.

use super::{Errno, Result, SysError, check};
use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// `PACKET_IGNORE_OUTGOING` (Linux >= 4.20).
const PACKET_IGNORE_OUTGOING: i32 = 23;
/// `SO_RCVBUFFORCE`.
const SO_RCVBUFFORCE: i32 = 33;

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel as a new descriptor that
    // nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// The index of interface `name` (`if_nametoindex`).
pub fn ifindex(name: &str) -> Result<i32> {
    let c = CString::new(name).map_err(|_| SysError::new("if_nametoindex", name, Errno(libc::EINVAL)))?;
    // SAFETY: `c` is a NUL-terminated string alive for the call.
    let r = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if r == 0 { Err(SysError::last("if_nametoindex", name)) } else { Ok(r as i32) }
}

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct BpfInsn {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant.
    pub k: u32,
}

/// An AF_PACKET (SOCK_RAW) socket bound to one interface: whole Ethernet
/// frames in and out.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
    mac: [u8; 6],
    ifname: String,
}

impl PacketSocket {
    /// Opens a packet socket on `ifname` for EtherType `protocol` (e.g.
    /// `ETH_P_ARP`, `ETH_P_IP`, `ETH_P_ALL`), bound to that interface, and
    /// reads the interface's MAC address from the bound socket.
    pub fn open(ifname: &str, protocol: u16) -> Result<PacketSocket> {
        let index = ifindex(ifname)?;
        let proto_be = protocol.to_be();
        // SAFETY: plain socket creation.
        let fd = check(
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto_be)) } as _,
            "socket",
            format!("AF_PACKET on {ifname}"),
        )
        .map(owned)?;
        // SAFETY: sockaddr_ll is plain old data; zeroed is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto_be;
        sll.sll_ifindex = index;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `sll` is a valid sockaddr_ll of `len` bytes.
        let r = unsafe { libc::bind(fd.as_raw_fd(), (&sll as *const libc::sockaddr_ll).cast(), len) };
        check(r as _, "bind", format!("AF_PACKET to {ifname}"))?;
        // SAFETY: as above, for the out-parameter.
        let mut got: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut glen = len;
        // SAFETY: `got`/`glen` are valid out-pointers of the advertised size.
        let r = unsafe { libc::getsockname(fd.as_raw_fd(), (&mut got as *mut libc::sockaddr_ll).cast(), &mut glen) };
        check(r as _, "getsockname", format!("AF_PACKET on {ifname}"))?;
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&got.sll_addr[..6]);
        Ok(PacketSocket { fd, ifindex: index, mac, ifname: ifname.to_string() })
    }

    /// The interface's hardware address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The interface index.
    pub fn ifindex(&self) -> i32 {
        self.ifindex
    }

    /// Stop receiving the frames this host sends itself.
    pub fn ignore_outgoing(&self) -> Result<()> {
        let one: i32 = 1;
        // SAFETY: `one` is a live i32 of the advertised size.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                (&one as *const i32).cast(),
                4,
            )
        };
        check(r as _, "setsockopt", format!("PACKET_IGNORE_OUTGOING on {}", self.ifname)).map(drop)
    }

    /// Raises the receive buffer (`SO_RCVBUFFORCE`).
    pub fn set_rcvbuf(&self, bytes: i32) -> Result<()> {
        // SAFETY: `bytes` is a live i32 of the advertised size.
        let r = unsafe {
            libc::setsockopt(self.fd.as_raw_fd(), libc::SOL_SOCKET, SO_RCVBUFFORCE, (&bytes as *const i32).cast(), 4)
        };
        check(r as _, "setsockopt", format!("SO_RCVBUFFORCE={bytes} on {}", self.ifname)).map(drop)
    }

    /// Attaches a classic BPF program (`SO_ATTACH_FILTER`).
    pub fn attach_filter(&self, prog: &[BpfInsn]) -> Result<()> {
        let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut libc::sock_filter };
        let len = std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t;
        // SAFETY: `fprog` points at `prog`, a live slice of `#[repr(C)]`
        // sock_filter-compatible instructions; the kernel copies it.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&fprog as *const libc::sock_fprog).cast(),
                len,
            )
        };
        check(r as _, "setsockopt", format!("SO_ATTACH_FILTER ({} insns) on {}", prog.len(), self.ifname)).map(drop)
    }

    /// Sends one whole Ethernet frame out of the interface.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: `frame` is a live slice of `frame.len()` bytes; the socket is bound.
        let r = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        check(r as _, "send", format!("{}-byte frame on {}", frame.len(), self.ifname)).map(drop)
    }

    /// Receives one frame into `buf`, waiting at most `timeout`; `Ok(None)`
    /// when nothing arrived in time. The length returned is the frame's.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>> {
        if !wait_readable(self.fd.as_fd(), timeout)? {
            return Ok(None);
        }
        // SAFETY: `buf` is a live slice of `buf.len()` writable bytes.
        let r = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if r < 0 {
            let e = Errno::last();
            if e.0 == libc::EAGAIN || e.0 == libc::EINTR {
                return Ok(None);
            }
            return Err(SysError::new("recv", format!("AF_PACKET on {}", self.ifname), e));
        }
        Ok(Some(r as usize))
    }
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `poll` for readability; `Ok(false)` on timeout or EINTR.
pub fn wait_readable(fd: BorrowedFd, timeout: Duration) -> Result<bool> {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `p` is one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    if r < 0 {
        let e = Errno::last();
        if e.0 == libc::EINTR {
            return Ok(false);
        }
        return Err(SysError::new("poll", format!("fd {}", fd.as_raw_fd()), e));
    }
    Ok(r > 0)
}

/// A raw IPv4 socket whose packets carry the caller's own IP header
/// (`IPPROTO_RAW` implies `IP_HDRINCL`). Sending to a local address loops
/// the packet into the local stack, as if it had arrived.
#[derive(Debug)]
pub struct RawIpSocket {
    fd: OwnedFd,
}

impl RawIpSocket {
    /// Opens the socket (CAP_NET_RAW).
    pub fn open() -> Result<RawIpSocket> {
        // SAFETY: plain socket creation.
        let fd = check(
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) } as _,
            "socket",
            "AF_INET SOCK_RAW IPPROTO_RAW",
        )
        .map(owned)?;
        Ok(RawIpSocket { fd })
    }

    /// Sends one complete IPv4 packet (header included) toward `dst`.
    pub fn send(&self, packet: &[u8], dst: Ipv4Addr) -> Result<()> {
        let sa = super::tcp_repair::sockaddr_in(std::net::SocketAddrV4::new(dst, 0));
        // SAFETY: `packet` and `sa` are live for the call; `sa` is a sockaddr_in.
        let r = unsafe {
            libc::sendto(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len(), 0, sa.as_ptr().cast(), 16)
        };
        check(r as _, "sendto", format!("raw {}-byte packet to {dst}", packet.len())).map(drop)
    }
}

/// Sends one NETLINK_ROUTE request (`msg`: a complete `nlmsghdr` + body
/// with `NLM_F_ACK`) and waits up to `timeout` for its acknowledgement;
/// a negative error in the ack becomes a [`SysError`] carrying that errno.
pub fn netlink_route_request(msg: &[u8], what: &str, timeout: Duration) -> Result<()> {
    // SAFETY: plain socket creation.
    let fd = check(
        unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) } as _,
        "socket",
        "AF_NETLINK NETLINK_ROUTE",
    )
    .map(owned)?;
    // SAFETY: sockaddr_nl is plain old data; zeroed = the kernel as peer.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    let salen = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: `msg` and `sa` are live for the call.
    let r = unsafe {
        libc::sendto(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0, (&sa as *const libc::sockaddr_nl).cast(), salen)
    };
    check(r as _, "sendto", format!("netlink {what}"))?;
    let mut buf = [0u8; 4096];
    for _ in 0..16 {
        if !wait_readable(fd.as_fd(), timeout)? {
            return Err(SysError::new("recv", format!("netlink ack for {what} (timeout)"), Errno(libc::ETIMEDOUT)));
        }
        // SAFETY: `buf` is a live writable buffer of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = check(n as _, "recv", format!("netlink ack for {what}"))? as usize;
        // nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32; NLMSG_ERROR = 2
        // carries a negative errno (0 = ack) right after the header.
        if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == 2 {
            let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            return if err == 0 { Ok(()) } else { Err(SysError::new("netlink", what, Errno(-err))) };
        }
    }
    Err(SysError::new("recv", format!("netlink ack for {what} (no ack)"), Errno(libc::EPROTO)))
}

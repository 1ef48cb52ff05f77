//! Raw netlink sockets: the system calls under NFQUEUE (`NETLINK_NETFILTER`).
//!
//! This file only moves bytes: it opens, binds and configures an
//! `AF_NETLINK` socket and sends and receives whole datagrams. Building and
//! parsing netlink messages is safe code in `crate::net::nfqueue`.
//!
//! Invariants:
//! - every `unsafe` block has a `// SAFETY:` line; every buffer handed to the
//!   kernel is a live slice whose length is the length passed;
//! - the socket is an [`OwnedFd`] (closed exactly once, `SOCK_CLOEXEC`);
//! - [`NetlinkSocket::recv`] reports the datagram's real length (`MSG_TRUNC`),
//!   so a caller can tell a truncated message from a whole one, and the
//!   sender's port id, so a caller can refuse messages not sent by the kernel;
//! - errors are [`SysError`]s naming the call and what it was for.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::{Errno, Result, SysError, check};

/// `NETLINK_NETFILTER`, the protocol of nfnetlink (NFQUEUE, conntrack, …).
pub const NETLINK_NETFILTER: i32 = libc::NETLINK_NETFILTER;

/// One received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The datagram's full length; larger than the buffer if it was truncated.
    pub len: usize,
    /// The sender's netlink port id (0 for the kernel).
    pub sender: u32,
}

/// An `AF_NETLINK` raw socket bound to a kernel-assigned port id.
#[derive(Debug)]
pub struct NetlinkSocket {
    fd: OwnedFd,
}

fn zeroed_sockaddr_nl() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    sa
}

impl std::os::fd::AsFd for NetlinkSocket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl NetlinkSocket {
    /// `socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol)` and `bind` to
    /// port id 0 (the kernel picks one), no multicast groups.
    pub fn open(protocol: i32) -> Result<NetlinkSocket> {
        // SAFETY: plain socket creation; no pointers.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        let fd = check(fd as _, "socket", format_args!("AF_NETLINK protocol {protocol}"))?;
        // SAFETY: the kernel just returned this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let sa = zeroed_sockaddr_nl();
        let len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `sa` is a valid sockaddr_nl of `len` bytes for the call.
        let r = unsafe { libc::bind(fd.as_raw_fd(), (&sa as *const libc::sockaddr_nl).cast(), len) };
        check(r as _, "bind", "netlink socket")?;
        Ok(NetlinkSocket { fd })
    }

    /// `setsockopt(level, name, &value)` for an `int` option; `what` names
    /// the option in errors.
    pub fn set_int_option(&self, level: i32, name: i32, value: i32, what: &str) -> Result<()> {
        let len = std::mem::size_of::<i32>() as libc::socklen_t;
        // SAFETY: `value` is a live i32 of the advertised size.
        let r = unsafe { libc::setsockopt(self.fd.as_raw_fd(), level, name, (&value as *const i32).cast(), len) };
        check(r as _, "setsockopt", format_args!("netlink {what}={value}")).map(drop)
    }

    /// `SO_RCVBUFFORCE` (needs CAP_NET_ADMIN): the receive buffer, in bytes.
    pub fn set_recv_buffer_force(&self, bytes: usize) -> Result<()> {
        let v = i32::try_from(bytes).unwrap_or(i32::MAX);
        self.set_int_option(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, v, "SO_RCVBUFFORCE")
    }

    /// `SO_RCVTIMEO`: a blocking [`NetlinkSocket::recv`] fails with `EAGAIN`
    /// after `timeout` without a message (zero means wait forever).
    pub fn set_recv_timeout(&self, timeout: Duration) -> Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        let len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
        // SAFETY: `tv` is a live timeval of the advertised size.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                len,
            )
        };
        check(r as _, "setsockopt", format_args!("netlink SO_RCVTIMEO={timeout:?}")).map(drop)
    }

    /// Sends `msg` (one or more netlink messages) to the kernel as one
    /// datagram. A short send is an `EMSGSIZE` error.
    pub fn send(&self, msg: &[u8]) -> Result<()> {
        let sa = zeroed_sockaddr_nl();
        let len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        loop {
            // SAFETY: `msg` is a live slice of `msg.len()` bytes and `sa` a
            // valid sockaddr_nl of `len` bytes for the duration of the call.
            let r = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    msg.as_ptr().cast(),
                    msg.len(),
                    0,
                    (&sa as *const libc::sockaddr_nl).cast(),
                    len,
                )
            };
            if r < 0 && Errno::last().0 == libc::EINTR {
                continue;
            }
            let sent = check(r as _, "sendto", format_args!("netlink, {} bytes", msg.len()))?;
            if sent as usize != msg.len() {
                return Err(SysError::new(
                    "sendto",
                    format_args!("netlink, {sent} of {} bytes", msg.len()),
                    Errno(libc::EMSGSIZE),
                ));
            }
            return Ok(());
        }
    }

    /// Receives one datagram into `buf`. With `nonblock`, fails with
    /// `EAGAIN` at once when none is queued; otherwise waits (up to the
    /// receive timeout). `Received::len > buf.len()` means the datagram was
    /// truncated to `buf.len()`. `ENOBUFS` means the kernel dropped messages
    /// because the receive buffer was full.
    pub fn recv(&self, buf: &mut [u8], nonblock: bool) -> Result<Received> {
        let mut sa = zeroed_sockaddr_nl();
        let mut sa_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        let flags = libc::MSG_TRUNC | if nonblock { libc::MSG_DONTWAIT } else { 0 };
        // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes; `sa`
        // is a writable sockaddr_nl and `sa_len` its size.
        let r = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags,
                (&mut sa as *mut libc::sockaddr_nl).cast(),
                &mut sa_len,
            )
        };
        let len = check(r as _, "recvfrom", "netlink")?;
        Ok(Received { len: len as usize, sender: sa.nl_pid })
    }
}

impl AsRawFd for NetlinkSocket {
    fn as_raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

//! TCP_REPAIR socket options; built by the TCP takeover work.

use super::{Result, SysError, check};
use std::os::fd::{FromRawFd, OwnedFd};

/// The placeholder contract shared by replay and takeover: a TCP socket in
/// TCP_REPAIR mode with `IP_TRANSPARENT`, bound to the service address
/// `local` (a raw `sockaddr_in`/`sockaddr_in6`), not connected (TCP_CLOSE).
/// The supervisor installs it in the replica at the recorded fd number; a
/// takeover later sets its sequence numbers, connects it in repair mode and
/// releases it. Creating it needs CAP_NET_ADMIN, which the supervisor has
/// and the replica's processes may lack.
pub fn placeholder(local: &[u8], nonblock: bool) -> Result<OwnedFd> {
    let family = if local.len() >= 2 { u16::from_ne_bytes([local[0], local[1]]) as i32 } else { -1 };
    let (level, opt) = match family {
        libc::AF_INET => (libc::SOL_IP, libc::IP_TRANSPARENT),
        libc::AF_INET6 => (libc::SOL_IPV6, libc::IPV6_TRANSPARENT),
        _ => {
            return Err(SysError::new(
                "placeholder",
                format!("address family {family}"),
                super::Errno(libc::EAFNOSUPPORT),
            ));
        }
    };
    let mut ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    if nonblock {
        ty |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: plain socket creation; no pointers.
    let fd = check(unsafe { libc::socket(family, ty, 0) } as _, "socket", "placeholder")?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let one: i32 = 1;
    for (lvl, o, name) in [(libc::SOL_TCP, libc::TCP_REPAIR, "TCP_REPAIR"), (level, opt, "IP_TRANSPARENT")] {
        // SAFETY: `one` is a live i32 of the advertised size.
        let r = unsafe { libc::setsockopt(fd as i32, lvl, o, (&one as *const i32).cast(), 4) };
        check(r as _, "setsockopt", format!("placeholder {name}"))?;
    }
    // SAFETY: `local` is a caller-supplied sockaddr of `local.len()` bytes.
    let r = unsafe { libc::bind(fd as i32, local.as_ptr().cast(), local.len() as libc::socklen_t) };
    check(r as _, "bind", "placeholder to the service address")?;
    Ok(sock)
}

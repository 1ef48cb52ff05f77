//! Sockets: accept (a new client is an input), bind/listen on the service
//! address, socket options, names and shutdown on boundary sockets, and
//! ioctls on boundary descriptors.
//!
//! On the backup nothing here touches the network: accepted connections are
//! TCP_REPAIR placeholders ([`placeholder`]), and bind, listen, shutdown and
//! option calls are answered from the log (the takeover applies them).

use super::super::fds::Kind;
use super::io::open;
use super::{Ctx, Done, Outcome, Result, Supervisor, err, read_u32};
use crate::replica::log::{Answer, Mem};
use crate::sys::{self, fd as sfd};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// A placeholder socket for a connection the recording accepted.
pub fn placeholder(local: &[u8]) -> Result<OwnedFd> {
    Ok(sys::tcp_repair::placeholder(local, false)?)
}

/// A placeholder with the file status the replica asked for.
pub fn placeholder_for(local: &[u8], nonblock: bool) -> Result<OwnedFd> {
    Ok(sys::tcp_repair::placeholder(local, nonblock)?)
}

/// Whether the process has no free descriptor below its RLIMIT_NOFILE (an
/// accept would fail with EMFILE). Counting the open descriptors costs a
/// listing of `/proc/PID/fd`, milliseconds with 10,000 connections open,
/// so it is done only when the descriptor table is already as large as
/// the limit: a smaller table can still grow, so its first number past the
/// end is free.
fn no_room(tgid: i32) -> bool {
    let limit = std::fs::read_to_string(format!("/proc/{tgid}/limits"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Max open files")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse::<usize>().ok()));
    let Some(limit) = limit else { return false };
    let table = std::fs::read_to_string(format!("/proc/{tgid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("FDSize:").and_then(|v| v.trim().parse::<usize>().ok())));
    if table.is_some_and(|t| t < limit) {
        return false;
    }
    let open = std::fs::read_dir(format!("/proc/{tgid}/fd")).map(|d| d.count()).unwrap_or(0);
    open >= limit
}

pub fn record_accept(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    let (fd, addr, lenp) = (ctx.a[0] as i32, ctx.a[1], ctx.a[2]);
    let flags = if ctx.nr as i64 == libc::SYS_accept4 { ctx.a[3] as i32 } else { 0 };
    let (copy, kind) = match open(s, ctx, fd) {
        Ok(c) => c,
        Err(r) => return Ok(Outcome::Done(Done::ret(r))),
    };
    match kind {
        Kind::Listener { unix: false } => {}
        Kind::Listener { unix: true } => {
            return Err(s.refused(
                ctx,
                "accepting clients on a unix socket is not supported (connections cannot be taken over)",
            ));
        }
        _ => return Ok(Outcome::Done(Done::cont())),
    }
    let nonblock_listener = s.fds.nonblock(ctx.pvid, fd, &copy);
    if sfd::poll_one(copy.as_fd(), libc::POLLIN, 0).unwrap_or(0) == 0 {
        if nonblock_listener {
            return Ok(Outcome::Done(Done::ret(-(libc::EAGAIN as i64))));
        }
        return super::io::block_on(s, ctx, &copy, (libc::EPOLLIN | libc::EPOLLERR) as u32);
    }
    if no_room(ctx.tgid) {
        // The kernel would refuse before dequeuing the connection, so it stays
        // queued for a later accept.
        return Ok(Outcome::Done(Done::ret(-(libc::EMFILE as i64))));
    }
    let mut peer = [0u8; 128];
    let (sock, plen) = match sfd::accept4(copy.as_fd(), (flags & libc::SOCK_NONBLOCK) | libc::SOCK_CLOEXEC, &mut peer) {
        Ok(x) => x,
        Err(e) if e.0 == libc::EAGAIN && !nonblock_listener => {
            return super::io::block_on(s, ctx, &copy, (libc::EPOLLIN | libc::EPOLLERR) as u32);
        }
        Err(e) => return Ok(Outcome::Done(Done::ret(err(e)))),
    };
    let mut local = [0u8; 128];
    let llen = sfd::sockname(sock.as_fd(), false, &mut local).unwrap_or(0);
    let mut mem = vec![];
    if addr != 0 && lenp != 0 {
        let room = read_u32(ctx, lenp)? as usize;
        mem.push(Mem { addr, bytes: peer[..plen.min(room)].to_vec() });
        mem.push(Mem { addr: lenp, bytes: (plen as u32).to_le_bytes().to_vec() });
    }
    Ok(Outcome::Done(Done {
        answer: Answer::Accepted {
            fd: -1,
            cloexec: flags & libc::SOCK_CLOEXEC != 0,
            nonblock: flags & libc::SOCK_NONBLOCK != 0,
            local: local[..llen].to_vec(),
            peer: peer[..plen].to_vec(),
        },
        mem,
        check: None,
        newfd: Some(sock),
    }))
}

fn family_at(ctx: &Ctx, addr: u64, len: u64) -> Result<i32> {
    if addr == 0 || len < 2 {
        return Ok(-1);
    }
    let b = sys::mem::read(ctx.tid, addr, 2)?;
    Ok(u16::from_ne_bytes([b[0], b[1]]) as i32)
}

fn describe_sockaddr(b: &[u8]) -> String {
    let fam = if b.len() >= 2 { u16::from_ne_bytes([b[0], b[1]]) as i32 } else { -1 };
    if b.len() >= 8 && fam == libc::AF_INET {
        let port = u16::from_be_bytes([b[2], b[3]]);
        return format!("{}.{}.{}.{}:{port}", b[4], b[5], b[6], b[7]);
    }
    if b.len() >= 24 && fam == libc::AF_INET6 {
        let port = u16::from_be_bytes([b[2], b[3]]);
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[8..24]);
        return format!("[{}]:{port}", std::net::Ipv6Addr::from(a));
    }
    format!("an address of family {fam}")
}

pub fn record_sock(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    let fd = ctx.a[0] as i32;
    let (copy, kind) = match open(s, ctx, fd) {
        Ok(c) => c,
        Err(r) => return Ok(Outcome::Done(Done::ret(r))),
    };
    let boundary = matches!(kind, Kind::Boundary(_) | Kind::Listener { .. });
    let raw = copy.as_raw_fd() as u64;
    let done = match ctx.nr as i64 {
        libc::SYS_connect => {
            let fam = family_at(ctx, ctx.a[1], ctx.a[2])?;
            let dgram =
                sfd::getsockopt_int(copy.as_fd(), libc::SOL_SOCKET, libc::SO_TYPE).ok() == Some(libc::SOCK_DGRAM);
            if dgram && (fam == libc::AF_INET || fam == libc::AF_INET6 || fam == libc::AF_UNSPEC) {
                // Connecting a datagram socket sends nothing: it picks a route
                // (glibc's getaddrinfo sorts addresses this way).
                let sa = sys::mem::read(ctx.tid, ctx.a[1], (ctx.a[2] as usize).min(128))?;
                Done::ret(sfd::raw_syscall6(libc::SYS_connect, [raw, sa.as_ptr() as u64, sa.len() as u64, 0, 0, 0]))
            } else if fam == libc::AF_INET || fam == libc::AF_INET6 {
                let sa = sys::mem::read(ctx.tid, ctx.a[1], (ctx.a[2] as usize).min(128))?;
                let why = format!(
                    "outbound network connections from the replica are not covered yet (connect to {})",
                    describe_sockaddr(&sa)
                );
                return Err(s.refused(ctx, &why));
            } else {
                Done::cont()
            }
        }
        libc::SYS_bind => {
            let fam = family_at(ctx, ctx.a[1], ctx.a[2])?;
            if fam == libc::AF_INET || fam == libc::AF_INET6 {
                let sa = sys::mem::read(ctx.tid, ctx.a[1], (ctx.a[2] as usize).min(128))?;
                Done::ret(sfd::raw_syscall6(libc::SYS_bind, [raw, sa.as_ptr() as u64, sa.len() as u64, 0, 0, 0]))
            } else {
                Done::cont()
            }
        }
        libc::SYS_listen if boundary => {
            let r = sfd::raw_syscall6(libc::SYS_listen, [raw, ctx.a[1], 0, 0, 0, 0]);
            s.fds.forget(ctx.pvid, fd);
            Done::ret(r)
        }
        libc::SYS_shutdown if boundary => Done::ret(sfd::raw_syscall6(libc::SYS_shutdown, [raw, ctx.a[1], 0, 0, 0, 0])),
        libc::SYS_getsockname | libc::SYS_getpeername if boundary => {
            let (addr, lenp) = (ctx.a[1], ctx.a[2]);
            let mut buf = [0u8; 128];
            match sfd::sockname(copy.as_fd(), ctx.nr as i64 == libc::SYS_getpeername, &mut buf) {
                Err(e) => Done::ret(err(e)),
                Ok(n) => {
                    let room = read_u32(ctx, lenp)? as usize;
                    Done::ret(0)
                        .with_mem(addr, buf[..n.min(room)].to_vec())
                        .with_mem(lenp, (n as u32).to_le_bytes().to_vec())
                }
            }
        }
        libc::SYS_setsockopt if boundary => {
            let len = (ctx.a[4] as usize).min(1024);
            let val = sys::mem::read(ctx.tid, ctx.a[3], len)?;
            let r =
                sfd::raw_syscall6(libc::SYS_setsockopt, [raw, ctx.a[1], ctx.a[2], val.as_ptr() as u64, len as u64, 0]);
            Done::ret(r)
        }
        libc::SYS_getsockopt if boundary => {
            let (optval, lenp) = (ctx.a[3], ctx.a[4]);
            let room = (read_u32(ctx, lenp)? as usize).min(1024);
            let mut buf = vec![0u8; room];
            let mut len = room as u32;
            let a = [raw, ctx.a[1], ctx.a[2], buf.as_mut_ptr() as u64, &mut len as *mut u32 as u64, 0];
            let r = sfd::raw_syscall6(libc::SYS_getsockopt, a);
            if r < 0 {
                Done::ret(r)
            } else {
                let n = (len as usize).min(room);
                Done::ret(r).with_mem(optval, buf[..n].to_vec()).with_mem(lenp, len.to_le_bytes().to_vec())
            }
        }
        _ => Done::cont(),
    };
    Ok(Outcome::Done(done))
}

const FIONBIO: u64 = 0x5421;
const FIOCLEX: u64 = 0x5451;
const FIONCLEX: u64 = 0x5450;
const FIONREAD: u64 = 0x541b;
const TIOCOUTQ: u64 = 0x5411;
const SIOCATMARK: u64 = 0x8905;
const TCGETS: u64 = 0x5401;
const TIOCGWINSZ: u64 = 0x5413;

pub fn record_ioctl(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    let (fd, req, arg) = (ctx.a[0] as i32, ctx.a[1] & 0xffff_ffff, ctx.a[2]);
    // These change only the replica's own descriptor or file flags: native
    // on both nodes (so a placeholder gets the same O_NONBLOCK).
    if matches!(req, FIONBIO | FIOCLEX | FIONCLEX) {
        s.fds.forget_flags();
        return Ok(Outcome::Done(Done::cont()));
    }
    let (copy, kind) = match open(s, ctx, fd) {
        Ok(c) => c,
        Err(r) => return Ok(Outcome::Done(Done::ret(r))),
    };
    if !matches!(kind, Kind::Boundary(_) | Kind::Listener { .. }) {
        return Ok(Outcome::Done(Done::cont()));
    }
    let size = match req {
        FIONREAD | TIOCOUTQ | SIOCATMARK => 4,
        TCGETS => 36,
        TIOCGWINSZ => 8,
        _ => {
            return Err(
                s.refused(ctx, &format!("ioctl request {req:#x} on fd {fd}, which crosses the tree's boundary"))
            );
        }
    };
    let mut buf = vec![0u8; size];
    let r = sfd::raw_syscall6(libc::SYS_ioctl, [copy.as_raw_fd() as u64, req, buf.as_mut_ptr() as u64, 0, 0, 0]);
    let done = if r < 0 { Done::ret(r) } else { Done::ret(r).with_mem(arg, buf) };
    Ok(Outcome::Done(done))
}

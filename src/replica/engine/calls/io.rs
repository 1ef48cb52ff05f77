//! Reads and writes: the read and write families, sendfile, and descriptor
//! bookkeeping (close, dup2, dup3, close_range, fcntl, flock).
//!
//! By descriptor kind (see `fds`):
//! - boundary: the primary performs the call on a copy (never blocking the
//!   supervisor: sockets get MSG_DONTWAIT, others are polled first) and logs
//!   the result and the input bytes; outputs are logged as digests only;
//! - regular files: reads are performed by the supervisor on both nodes and
//!   the bytes digested and compared (a changed file is named in the report);
//!   writes run natively on both, digested;
//! - inside the tree: native on both (digested when written), after the
//!   primary made sure a blocking call would not block holding the token.

use super::super::fds::{self, Boundary, Kind};
use super::super::report::describe_bytes;
use super::super::threads::Wait;
use super::{Ctx, Done, EngineError, Outcome, Result, Supervisor, err, gather, read_iovec, read_u64, scatter};
use crate::replica::digest::Digest;
use crate::replica::log::{Answer, Call, Check, CheckKind};
use crate::sys::{self, fd as sfd};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;

/// The arguments of a read or write call, normalized.
#[derive(Debug, Default)]
pub struct IoArgs {
    pub fd: i32,
    pub iov: Vec<(u64, usize)>,
    /// An explicit file offset (pread/pwrite).
    pub offset: Option<i64>,
    /// send/recv flags.
    pub flags: i32,
    /// recvfrom/sendto: address pointer and address length (or its pointer).
    pub addr: u64,
    pub addrlen: u64,
    /// recvmsg/sendmsg: the msghdr address.
    pub msg: u64,
    pub name: u64,
    pub namelen: u32,
    pub control: u64,
    pub controllen: u64,
}

impl IoArgs {
    pub fn total(&self) -> usize {
        self.iov.iter().map(|x| x.1).sum()
    }
}

#[allow(non_upper_case_globals)]
pub fn io_args(ctx: &Ctx) -> Result<IoArgs> {
    use libc::*;
    let a = ctx.a;
    let mut x = IoArgs { fd: a[0] as i32, ..Default::default() };
    match ctx.nr as i64 {
        SYS_read | SYS_write => x.iov = vec![(a[1], a[2] as usize)],
        SYS_pread64 | SYS_pwrite64 => {
            x.iov = vec![(a[1], a[2] as usize)];
            x.offset = Some(a[3] as i64);
        }
        SYS_readv | SYS_writev => x.iov = read_iovec(ctx, a[1], a[2])?,
        SYS_preadv | SYS_pwritev => {
            x.iov = read_iovec(ctx, a[1], a[2])?;
            x.offset = Some(a[3] as i64);
        }
        SYS_preadv2 | SYS_pwritev2 => {
            x.iov = read_iovec(ctx, a[1], a[2])?;
            x.offset = (a[3] as i64 != -1).then_some(a[3] as i64);
        }
        SYS_recvfrom | SYS_sendto => {
            x.iov = vec![(a[1], a[2] as usize)];
            x.flags = a[3] as i32;
            x.addr = a[4];
            x.addrlen = a[5];
        }
        SYS_recvmsg | SYS_sendmsg => {
            x.msg = a[1];
            x.flags = a[2] as i32;
            let m = sys::mem::read(ctx.tid, a[1], 56)?;
            let u = |o: usize| {
                u64::from_le_bytes([m[o], m[o + 1], m[o + 2], m[o + 3], m[o + 4], m[o + 5], m[o + 6], m[o + 7]])
            };
            x.name = u(0);
            x.namelen = u32::from_le_bytes([m[8], m[9], m[10], m[11]]);
            x.iov = read_iovec(ctx, u(16), u(24))?;
            x.control = u(32);
            x.controllen = u(40);
        }
        _ => return Err(EngineError::Internal(format!("io_args for syscall {}", ctx.nr))),
    }
    if x.total() > super::MAX_IO {
        return Err(EngineError::Refused {
            call: crate::replica::table::name(ctx.nr),
            process: format!("thread {}", ctx.vid),
            why: format!("{} bytes in one call (ftnet moves at most {} per call)", x.total(), super::MAX_IO),
        });
    }
    Ok(x)
}

fn is_socket(k: &Kind) -> bool {
    matches!(k, Kind::Boundary(Boundary::Tcp | Boundary::Unix | Boundary::Dgram | Boundary::Netlink))
}

fn nonblocking(s: &Supervisor, ctx: &Ctx, fd: i32, copy: &OwnedFd, flags: i32) -> bool {
    flags & libc::MSG_DONTWAIT != 0 || s.fds.nonblock(ctx.pvid, fd, copy)
}

fn ready(copy: &OwnedFd, events: i16) -> bool {
    sfd::poll_one(copy.as_fd(), events, 0).map(|r| r != 0).unwrap_or(true)
}

/// The supervisor's copy of `fd` of the calling process and its kind, or the
/// answer the call gets if it cannot be copied (EBADF).
pub fn open(s: &mut Supervisor, ctx: &Ctx, fd: i32) -> std::result::Result<(Rc<OwnedFd>, Kind), i64> {
    let pidfd = s.tree.p(ctx.pvid).pidfd.as_ref();
    s.fds.get(ctx.pvid, ctx.tgid, pidfd, fd).map_err(err)
}

/// The copy alone (for calls that do not care about the kind).
pub fn copy_of(s: &mut Supervisor, ctx: &Ctx, fd: i32) -> std::result::Result<Rc<OwnedFd>, i64> {
    open(s, ctx, fd).map(|(c, _)| c)
}

fn stream_offset(s: &mut Supervisor, ctx: &Ctx, fd: i32, n: i64) -> u64 {
    let e = s.offsets.entry((ctx.pvid, fd)).or_insert(0);
    let at = *e;
    if n > 0 {
        *e += n as u64;
    }
    at
}

/// Parks the caller until `copy` signals `events` (a `dup` of the cached
/// copy is registered, so the wait's registration is its own).
pub fn block_on(s: &mut Supervisor, ctx: &Ctx, copy: &OwnedFd, events: u32) -> Result<Outcome> {
    let dup = copy
        .try_clone()
        .map_err(|e| sys::SysError::new("dup", "a copy to wait on", sys::Errno(e.raw_os_error().unwrap_or(0))))?;
    s.waits.add(&s.ep, ctx.vid, dup, events)?;
    Ok(Outcome::Block(Wait::Ready { deadline: None }))
}

const IN: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
const OUT: u32 = (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32;

// -------------------------------------------------------------------- reads

pub fn record_read(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    let x = io_args(ctx)?;
    let (copy, kind) = match open(s, ctx, x.fd) {
        Ok(c) => c,
        Err(r) => return Ok(Outcome::Done(Done::ret(r))),
    };
    match kind {
        Kind::Internal | Kind::Epoll | Kind::Listener { .. } => {
            if !nonblocking(s, ctx, x.fd, &copy, x.flags) && !ready(&copy, libc::POLLIN) {
                return block_on(s, ctx, &copy, IN);
            }
            Ok(Outcome::Done(Done::cont()))
        }
        Kind::File => {
            let (r, data, offset) = read_file(&copy, &x);
            let n = r.max(0) as usize;
            Ok(Outcome::Done(Done {
                answer: Answer::Ret(r),
                mem: scatter(&x.iov, &data[..n]),
                check: Some(Check { kind: CheckKind::FileInput, offset, digest: Digest::of(&data[..n]) }),
                newfd: None,
            }))
        }
        ref k if is_socket(k) => {
            let (r, mem) = recv_socket(ctx, &copy, &x)?;
            if r == -(libc::EAGAIN as i64) && !nonblocking(s, ctx, x.fd, &copy, x.flags) {
                return block_on(s, ctx, &copy, IN);
            }
            stream_offset(s, ctx, x.fd, r);
            Ok(Outcome::Done(Done { answer: Answer::Ret(r), mem, check: None, newfd: None }))
        }
        Kind::Boundary(_) => {
            if !nonblocking(s, ctx, x.fd, &copy, 0) && !ready(&copy, libc::POLLIN) {
                return block_on(s, ctx, &copy, IN);
            }
            let (r, data, _) = read_file(&copy, &x);
            stream_offset(s, ctx, x.fd, r);
            let n = r.max(0) as usize;
            Ok(Outcome::Done(Done {
                answer: Answer::Ret(r),
                mem: scatter(&x.iov, &data[..n]),
                check: None,
                newfd: None,
            }))
        }
    }
}

/// Reads like the replica's call would on a file-like descriptor: returns
/// the result, the bytes and the file position the read started at.
fn read_file(copy: &OwnedFd, x: &IoArgs) -> (i64, Vec<u8>, u64) {
    let mut buf = vec![0u8; x.total()];
    let (r, at) = match x.offset {
        Some(off) => (sfd::pread(copy.as_fd(), &mut buf, off), off.max(0) as u64),
        None => {
            let at = sfd::tell(copy.as_fd()).unwrap_or(0).max(0) as u64;
            (sfd::read(copy.as_fd(), &mut buf), at)
        }
    };
    (r, buf, at)
}

/// Receives from a boundary socket without blocking; returns the result and
/// the memory writes (data, source address, msghdr fields).
fn recv_socket(ctx: &Ctx, copy: &OwnedFd, x: &IoArgs) -> Result<(i64, Vec<crate::replica::log::Mem>)> {
    let flags = x.flags | libc::MSG_DONTWAIT;
    let mut buf = vec![0u8; x.total()];
    let mut mem = vec![];
    match ctx.nr as i64 {
        libc::SYS_recvfrom if x.addr != 0 && x.addrlen != 0 => {
            let alen = super::read_u32(ctx, x.addrlen)? as usize;
            let mut addr = vec![0u8; 128];
            let (r, got) = sfd::recvfrom(copy.as_fd(), &mut buf, flags, &mut addr);
            if r >= 0 {
                mem = scatter(&x.iov, &buf[..r as usize]);
                mem.push(crate::replica::log::Mem { addr: x.addr, bytes: addr[..got.min(alen)].to_vec() });
                mem.push(crate::replica::log::Mem { addr: x.addrlen, bytes: (got as u32).to_le_bytes().to_vec() });
            }
            Ok((r, mem))
        }
        libc::SYS_recvmsg => {
            if x.controllen > 0 {
                return Err(EngineError::Refused {
                    call: "recvmsg".into(),
                    process: format!("thread {}", ctx.vid),
                    why: "ancillary data from a socket that crosses the tree is not supported".into(),
                });
            }
            let mut addr = vec![0u8; 128];
            let (r, got) = sfd::recvfrom(copy.as_fd(), &mut buf, flags, &mut addr);
            if r >= 0 {
                mem = scatter(&x.iov, &buf[..r as usize]);
                if x.name != 0 {
                    mem.push(crate::replica::log::Mem {
                        addr: x.name,
                        bytes: addr[..got.min(x.namelen as usize)].to_vec(),
                    });
                }
                mem.push(crate::replica::log::Mem { addr: x.msg + 8, bytes: (got as u32).to_le_bytes().to_vec() });
                mem.push(crate::replica::log::Mem { addr: x.msg + 40, bytes: 0u64.to_le_bytes().to_vec() });
                mem.push(crate::replica::log::Mem { addr: x.msg + 48, bytes: 0i32.to_le_bytes().to_vec() });
            }
            Ok((r, mem))
        }
        libc::SYS_pread64 | libc::SYS_preadv | libc::SYS_preadv2 if x.offset.is_some() => {
            Ok((-(libc::ESPIPE as i64), mem))
        }
        _ => {
            let r = sfd::recv(copy.as_fd(), &mut buf, flags);
            if r >= 0 {
                mem = scatter(&x.iov, &buf[..r as usize]);
            }
            Ok((r, mem))
        }
    }
}

/// Replay: re-reads a local file the recording read, checks the bytes and
/// answers with them.
pub fn replay_file_input(s: &mut Supervisor, ctx: &Ctx, c: Call) -> Result<Done> {
    let x = io_args(ctx)?;
    let copy = match copy_of(s, ctx, x.fd) {
        Ok(c) => c,
        Err(r) => {
            let d = s.divergence(ctx, &format!("fd {} is not open (error {r})", x.fd));
            return Err(EngineError::Divergence(Box::new(d)));
        }
    };
    let (r, data, offset) = read_file(&copy, &x);
    let n = r.max(0) as usize;
    let expected = c.check.as_ref().map(|ch| ch.digest.clone()).unwrap_or_else(|| Digest::of(&[]));
    let logged = match c.answer {
        Answer::Ret(v) => v,
        _ => -1,
    };
    if r != logged || Digest::of(&data[..n]) != expected {
        let mut d = s.divergence(ctx, "a file read returned different bytes than in the recording");
        d.fd = Some(x.fd);
        d.path = fds::path_of(ctx.tgid, x.fd);
        describe_bytes(&mut d, &expected, &data[..n], offset);
        if r != logged {
            d.what.push_str(&format!("; the read returned {r}, the recording {logged}"));
        }
        return Err(EngineError::Divergence(Box::new(d)));
    }
    Ok(Done { answer: Answer::Ret(r), mem: scatter(&x.iov, &data[..n]), check: None, newfd: None })
}

// ------------------------------------------------------------------- writes

pub fn record_write(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    let x = io_args(ctx)?;
    let (copy, kind) = match open(s, ctx, x.fd) {
        Ok(c) => c,
        Err(r) => return Ok(Outcome::Done(Done::ret(r))),
    };
    let total = x.total();
    match kind {
        Kind::Internal => {
            if !nonblocking(s, ctx, x.fd, &copy, x.flags) && !ready(&copy, libc::POLLOUT) {
                return block_on(s, ctx, &copy, OUT);
            }
            let data = gather(ctx, &x.iov, total)?;
            let offset = stream_offset(s, ctx, x.fd, total as i64);
            Ok(Outcome::Done(output(Done::cont(), offset, &data)))
        }
        Kind::File | Kind::Epoll | Kind::Listener { .. } => {
            let data = gather(ctx, &x.iov, total)?;
            let offset = x.offset.map(|o| o.max(0) as u64).or_else(|| sfd::tell(copy.as_fd()).map(|o| o as u64));
            Ok(Outcome::Done(output(Done::cont(), offset.unwrap_or(0), &data)))
        }
        ref k if is_socket(k) => send_socket(s, ctx, &x, &copy, k),
        Kind::Boundary(_) => {
            let data = gather(ctx, &x.iov, total)?;
            let r = match x.offset {
                Some(off) => {
                    let a = [copy.as_raw_fd() as u64, data.as_ptr() as u64, data.len() as u64, off as u64, 0, 0];
                    sfd::raw_syscall6(libc::SYS_pwrite64, a)
                }
                None => sfd::write(copy.as_fd(), &data),
            };
            if r == -(libc::EPIPE as i64) {
                queue_sigpipe(s, ctx)?;
            }
            let offset = stream_offset(s, ctx, x.fd, r);
            let n = r.max(0) as usize;
            Ok(Outcome::Done(output(Done::ret(r), offset, &data[..n])))
        }
    }
}

fn output(mut d: Done, offset: u64, data: &[u8]) -> Done {
    d.check = Some(Check { kind: CheckKind::Output, offset, digest: Digest::of(data) });
    d
}

fn queue_sigpipe(s: &mut Supervisor, ctx: &Ctx) -> Result<()> {
    let nspid = s.tree.p(ctx.pvid).nspid;
    let mut info = super::super::signals::user_info(libc::SIGPIPE, 0);
    info[16..20].copy_from_slice(&nspid.to_ne_bytes());
    s.queue_suppressed(ctx.vid, libc::SIGPIPE, info, true)
}

/// Sends on a boundary socket without blocking the supervisor. A blocking
/// socket's send is completed across wake-ups (progress kept in the thread),
/// as the kernel would block until everything is queued.
fn send_socket(s: &mut Supervisor, ctx: &Ctx, x: &IoArgs, copy: &OwnedFd, kind: &Kind) -> Result<Outcome> {
    if x.controllen > 0 {
        return Err(EngineError::Refused {
            call: crate::replica::table::name(ctx.nr),
            process: s.tree.describe(ctx.vid),
            why: "ancillary data to a socket that crosses the tree is not supported".into(),
        });
    }
    if x.offset.is_some() {
        return Ok(Outcome::Done(Done::ret(-(libc::ESPIPE as i64))));
    }
    if matches!(kind, Kind::Boundary(Boundary::Dgram)) {
        return Err(s.refused(ctx, &format!("fd {}: datagrams from the replica are not covered yet", x.fd)));
    }
    let data = gather(ctx, &x.iov, x.total())?;
    let mut progress = s.tree.t(ctx.vid).progress as usize;
    let flags = x.flags | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    let blocking = !nonblocking(s, ctx, x.fd, copy, x.flags);
    let mut result = 0i64;
    while progress < data.len() || data.is_empty() {
        let r = if (x.addr != 0 && x.nr_is_sendto(ctx)) || x.name != 0 {
            let (addr, alen) = if x.name != 0 { (x.name, x.namelen as usize) } else { (x.addr, x.addrlen as usize) };
            let sa = sys::mem::read(ctx.tid, addr, alen.min(128))?;
            let a = [
                copy.as_raw_fd() as u64,
                data[progress..].as_ptr() as u64,
                (data.len() - progress) as u64,
                flags as u64,
                sa.as_ptr() as u64,
                sa.len() as u64,
            ];
            sfd::raw_syscall6(libc::SYS_sendto, a)
        } else {
            sfd::send(copy.as_fd(), &data[progress..], flags)
        };
        if r > 0 {
            progress += r as usize;
            if !blocking || !matches!(kind, Kind::Boundary(Boundary::Tcp | Boundary::Unix)) {
                break;
            }
            continue;
        }
        result = r;
        break;
    }
    let again = result == -(libc::EAGAIN as i64);
    if blocking && progress < data.len() && (again || result == 0) {
        let w = Wait::Ready { deadline: None };
        if progress > 0
            && let Some(_) = s.interrupt(ctx, &w)?
        {
            // A signal ends the blocking send early: report what went out.
        } else {
            s.tree.tm(ctx.vid).progress = progress as u64;
            return block_on(s, ctx, copy, OUT);
        }
    }
    let r = if progress > 0 { progress as i64 } else { result };
    if r == -(libc::EPIPE as i64) && x.flags & libc::MSG_NOSIGNAL == 0 {
        queue_sigpipe(s, ctx)?;
    }
    let offset = stream_offset(s, ctx, x.fd, r);
    Ok(Outcome::Done(output(Done::ret(r), offset, &data[..progress])))
}

impl IoArgs {
    fn nr_is_sendto(&self, ctx: &Ctx) -> bool {
        ctx.nr as i64 == libc::SYS_sendto
    }
}

/// Replay: checks that the replica wrote the same bytes as in the recording;
/// returns them.
pub fn verify_output(s: &mut Supervisor, ctx: &Ctx, c: &Call) -> Result<Vec<u8>> {
    let Some(check) = &c.check else { return Ok(vec![]) };
    let (fd, data) = if ctx.nr as i64 == libc::SYS_sendfile {
        (ctx.a[0] as i32, sendfile_bytes(s, ctx, c)?)
    } else {
        let x = io_args(ctx)?;
        let n = match c.answer {
            Answer::Ret(r) => r.max(0) as usize,
            Answer::Continue => x.total(),
            _ => 0,
        };
        (x.fd, gather(ctx, &x.iov, n)?)
    };
    let actual = Digest::of(&data);
    if actual != check.digest {
        let mut d = s.divergence(ctx, "the replica wrote different bytes than in the recording");
        d.fd = Some(fd);
        d.path = fds::path_of(ctx.tgid, fd);
        describe_bytes(&mut d, &check.digest, &data, check.offset);
        return Err(EngineError::Divergence(Box::new(d)));
    }
    Ok(data)
}

// ------------------------------------------------------------------ sendfile

pub fn record_sendfile(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    let (out_fd, in_fd, off_ptr, count) = (ctx.a[0] as i32, ctx.a[1] as i32, ctx.a[2], ctx.a[3] as usize);
    let (out, ko) = match open(s, ctx, out_fd) {
        Ok(c) => c,
        Err(r) => return Ok(Outcome::Done(Done::ret(r))),
    };
    let (inp, ki) = match open(s, ctx, in_fd) {
        Ok(c) => c,
        Err(r) => return Ok(Outcome::Done(Done::ret(r))),
    };
    match (&ko, &ki) {
        (Kind::Internal | Kind::File, Kind::File | Kind::Internal) => {
            if !nonblocking(s, ctx, out_fd, &out, 0) && !ready(&out, libc::POLLOUT) {
                return block_on(s, ctx, &out, OUT);
            }
            Ok(Outcome::Done(Done::cont()))
        }
        (k, Kind::File) if is_socket(k) => {
            let pos = if off_ptr != 0 { read_u64(ctx, off_ptr)? as i64 } else { sfd::tell(inp.as_fd()).unwrap_or(0) };
            let mut data = vec![0u8; count.min(4 << 20)];
            let n = sfd::pread(inp.as_fd(), &mut data, pos);
            if n < 0 {
                return Ok(Outcome::Done(Done::ret(n)));
            }
            data.truncate(n as usize);
            let r = sfd::send(out.as_fd(), &data, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL);
            if r == -(libc::EAGAIN as i64) && !nonblocking(s, ctx, out_fd, &out, 0) {
                return block_on(s, ctx, &out, OUT);
            }
            if r == -(libc::EPIPE as i64) {
                queue_sigpipe(s, ctx)?;
            }
            let sent = r.max(0);
            let mut done = Done::ret(r);
            if sent > 0 {
                if off_ptr != 0 {
                    done = done.with_mem(off_ptr, ((pos + sent) as u64).to_le_bytes().to_vec());
                } else {
                    let a = [inp.as_raw_fd() as u64, (pos + sent) as u64, libc::SEEK_SET as u64, 0, 0, 0];
                    sfd::raw_syscall6(libc::SYS_lseek, a);
                }
            }
            let offset = stream_offset(s, ctx, out_fd, r);
            Ok(Outcome::Done(output(done, offset, &data[..sent as usize])))
        }
        _ => Err(s.refused(ctx, "sendfile between these kinds of descriptors is not supported")),
    }
}

/// Replay: the bytes a logged sendfile sent, read from the local file.
fn sendfile_bytes(s: &mut Supervisor, ctx: &Ctx, c: &Call) -> Result<Vec<u8>> {
    let n = match c.answer {
        Answer::Ret(r) => r.max(0) as usize,
        _ => 0,
    };
    let Ok(inp) = copy_of(s, ctx, ctx.a[1] as i32) else {
        return Err(EngineError::Divergence(Box::new(s.divergence(ctx, "sendfile's input is not open"))));
    };
    let pos = if ctx.a[2] != 0 { read_u64(ctx, ctx.a[2])? as i64 } else { sfd::tell(inp.as_fd()).unwrap_or(0) };
    let mut data = vec![0u8; n];
    let got = sfd::pread(inp.as_fd(), &mut data, pos);
    data.truncate(got.max(0) as usize);
    Ok(data)
}

/// Replay: a sendfile without an offset pointer advanced the input file.
pub fn replay_sendfile_offset(s: &mut Supervisor, ctx: &Ctx, sent: i64) -> Result<()> {
    if ctx.a[2] != 0 || sent <= 0 {
        return Ok(());
    }
    if let Ok(inp) = copy_of(s, ctx, ctx.a[1] as i32) {
        let pos = sfd::tell(inp.as_fd()).unwrap_or(0);
        let a = [inp.as_raw_fd() as u64, (pos + sent) as u64, libc::SEEK_SET as u64, 0, 0, 0];
        sfd::raw_syscall6(libc::SYS_lseek, a);
    }
    Ok(())
}

/// recvmmsg, sendmmsg, splice, tee, vmsplice: native inside the tree,
/// refused on descriptors that cross it.
pub fn record_other_io(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    let fds: Vec<i32> = match ctx.nr as i64 {
        libc::SYS_splice => vec![ctx.a[0] as i32, ctx.a[2] as i32],
        libc::SYS_tee => vec![ctx.a[0] as i32, ctx.a[1] as i32],
        _ => vec![ctx.a[0] as i32],
    };
    for fd in fds {
        let kind = match open(s, ctx, fd) {
            Ok((_, k)) => k,
            Err(r) => return Ok(Outcome::Done(Done::ret(r))),
        };
        if !matches!(kind, Kind::Internal | Kind::File) {
            return Err(
                s.refused(ctx, &format!("fd {fd} crosses the tree's boundary; this call is not supported on it"))
            );
        }
    }
    Ok(Outcome::Done(Done::cont()))
}

// --------------------------------------------------------- fd bookkeeping

/// Forgets what the supervisor knew about descriptors a call replaces.
pub fn forget_fds(s: &mut Supervisor, ctx: &Ctx) {
    match ctx.nr as i64 {
        libc::SYS_close => {
            s.fds.forget(ctx.pvid, ctx.a[0] as i32);
            s.offsets.remove(&(ctx.pvid, ctx.a[0] as i32));
        }
        libc::SYS_dup2 | libc::SYS_dup3 => {
            s.fds.forget(ctx.pvid, ctx.a[1] as i32);
            s.offsets.remove(&(ctx.pvid, ctx.a[1] as i32));
        }
        libc::SYS_close_range => {
            let (lo, hi) = (ctx.a[0] as u32, ctx.a[1] as u32);
            s.fds.forget_range(ctx.pvid, lo, hi);
            s.offsets.retain(|&(p, fd), _| p != ctx.pvid || (fd as u32) < lo || (fd as u32) > hi);
        }
        _ => {}
    }
}

pub fn record_fdops(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    forget_fds(s, ctx);
    match ctx.nr as i64 {
        libc::SYS_fcntl => {
            s.fds.forget_flags();
            let cmd = ctx.a[1] as i32;
            if cmd == libc::F_SETLKW || cmd == libc::F_OFD_SETLKW {
                return Err(
                    s.refused(ctx, "a blocking record lock (F_SETLKW) can block holding the token; not supported")
                );
            }
            Ok(Outcome::Done(Done::cont()))
        }
        libc::SYS_flock => {
            let op = ctx.a[1] as i32;
            if op & libc::LOCK_NB != 0 || op & libc::LOCK_UN != 0 {
                return Ok(Outcome::Done(Done::cont()));
            }
            let copy = match copy_of(s, ctx, ctx.a[0] as i32) {
                Ok(c) => c,
                Err(r) => return Ok(Outcome::Done(Done::ret(r))),
            };
            // flock locks belong to the open file description, which the copy
            // shares: taking it here takes it for the replica, and the
            // native call then finds it already held (a no-op) on both nodes.
            let a = [copy.as_raw_fd() as u64, (op | libc::LOCK_NB) as u64, 0, 0, 0, 0];
            let r = sfd::raw_syscall6(libc::SYS_flock, a);
            if r == -(libc::EWOULDBLOCK as i64) {
                let now = sfd::clock_ns(libc::CLOCK_MONOTONIC);
                return Ok(Outcome::Block(Wait::Sleep { deadline: now + 10_000_000 }));
            }
            Ok(Outcome::Done(Done::cont()))
        }
        _ => Ok(Outcome::Done(Done::cont())),
    }
}

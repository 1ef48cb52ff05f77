//! Handlers for intercepted calls, by family.
//!
//! Each family has a record side (the primary decides the answer, usually by
//! performing the call itself on a `pidfd_getfd` copy) and a replay side (the
//! backup answers as the log says, after checking outputs and re-reading
//! local files). The record side must log everything the replay side needs;
//! the replay side must never perform an operation with effects outside the
//! replica (no network I/O, no writes to descriptors that cross the tree).

pub mod host;
pub mod io;
pub mod net;
pub mod poll;
pub mod sync;

use super::{Ctx, Done, EngineError, Outcome, Result, Supervisor};
use crate::replica::log::{Answer, Call, CheckKind};
use crate::sys;

/// Decides an intercepted call on the primary.
#[allow(non_upper_case_globals)]
pub fn record(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    use libc::*;
    match ctx.nr as i64 {
        SYS_read | SYS_readv | SYS_pread64 | SYS_preadv | SYS_preadv2 | SYS_recvfrom | SYS_recvmsg => {
            io::record_read(s, ctx)
        }
        SYS_write | SYS_writev | SYS_pwrite64 | SYS_pwritev | SYS_pwritev2 | SYS_sendto | SYS_sendmsg => {
            io::record_write(s, ctx)
        }
        SYS_sendfile => io::record_sendfile(s, ctx),
        SYS_recvmmsg | SYS_sendmmsg | SYS_splice | SYS_tee | SYS_vmsplice => io::record_other_io(s, ctx),
        SYS_accept | SYS_accept4 => net::record_accept(s, ctx),
        SYS_connect | SYS_bind | SYS_listen | SYS_shutdown | SYS_getsockname | SYS_getpeername | SYS_setsockopt
        | SYS_getsockopt => net::record_sock(s, ctx),
        SYS_ioctl => net::record_ioctl(s, ctx),
        SYS_epoll_wait | SYS_epoll_pwait | SYS_epoll_pwait2 => poll::record_epoll(s, ctx),
        SYS_poll | SYS_ppoll | SYS_select | SYS_pselect6 => poll::record_poll(s, ctx),
        SYS_close | SYS_dup2 | SYS_dup3 | SYS_close_range | SYS_fcntl | SYS_flock => io::record_fdops(s, ctx),
        SYS_futex => sync::record_futex(s, ctx),
        SYS_wait4 | SYS_waitid => sync::record_wait(s, ctx),
        SYS_sched_yield => sync::record_yield(s, ctx),
        SYS_nanosleep | SYS_clock_nanosleep => sync::record_sleep(s, ctx),
        SYS_pause | SYS_rt_sigsuspend => sync::record_sigwait(s, ctx),
        SYS_alarm | SYS_setitimer | SYS_getitimer => sync::record_itimer(s, ctx),
        SYS_exit_group => {
            sync::note_exit_group(s, ctx);
            Ok(Outcome::Done(Done::cont()))
        }
        SYS_personality | SYS_prctl | SYS_seccomp => sync::record_self_control(s, ctx),
        SYS_kill | SYS_tkill | SYS_tgkill | SYS_rt_sigqueueinfo | SYS_rt_tgsigqueueinfo | SYS_pidfd_send_signal => {
            sync::record_kill(s, ctx)
        }
        _ => host::record(s, ctx),
    }
}

/// Rebuilds the answer of a logged call on the backup.
#[allow(non_upper_case_globals)]
pub fn replay(s: &mut Supervisor, ctx: &Ctx, c: Call) -> Result<Done> {
    use libc::*;
    // Bookkeeping that both nodes keep.
    match ctx.nr as i64 {
        SYS_close | SYS_dup2 | SYS_dup3 | SYS_close_range => io::forget_fds(s, ctx),
        SYS_exit_group => sync::note_exit_group(s, ctx),
        _ => {}
    }
    let mut written = vec![];
    if let Some(check) = &c.check {
        match check.kind {
            CheckKind::FileInput => return io::replay_file_input(s, ctx, c),
            CheckKind::Output => written = io::verify_output(s, ctx, &c)?,
        }
    }
    if let Answer::Ret(r) = c.answer
        && r >= 0
        && matches!(ctx.nr as i64, SYS_sendfile)
    {
        io::replay_sendfile_offset(s, ctx, r)?;
    }
    if s.live.is_some() {
        note_for_takeover(s, ctx, &c, &written)?;
    }
    Ok(Done { answer: c.answer, mem: c.mem, check: c.check, newfd: None })
}

/// Backup: keeps what a takeover needs (see `live`).
#[allow(non_upper_case_globals)]
fn note_for_takeover(s: &mut Supervisor, ctx: &Ctx, c: &Call, written: &[u8]) -> Result<()> {
    use libc::*;
    let Some(live) = s.live.clone() else { return Ok(()) };
    let mut st = live.lock().map_err(|_| EngineError::Internal("live state poisoned".into()))?;
    let (pvid, a) = (ctx.pvid, ctx.a);
    let ret = match c.answer {
        Answer::Ret(r) => r,
        _ => -1,
    };
    match ctx.nr as i64 {
        SYS_accept | SYS_accept4 => {
            if let Answer::Accepted { fd, local, peer, nonblock, .. } = &c.answer {
                st.accepted(pvid, *fd, local, peer, *nonblock);
            }
        }
        SYS_bind if ret == 0 => {
            let sa = sys::mem::read(ctx.tid, a[1], (a[2] as usize).min(128))?;
            st.bound(pvid, a[0] as i32, &sa);
        }
        SYS_listen if ret == 0 => st.listened(pvid, a[0] as i32, a[1] as i32),
        // A peek (nginx peeks one byte to tell TLS from plain HTTP) consumes
        // nothing.
        SYS_recvfrom if ret > 0 && (a[3] as i32) & MSG_PEEK == 0 => st.read(pvid, a[0] as i32, ret as u64),
        SYS_recvmsg if ret > 0 && (a[2] as i32) & MSG_PEEK == 0 => st.read(pvid, a[0] as i32, ret as u64),
        SYS_read | SYS_readv if ret > 0 => st.read(pvid, a[0] as i32, ret as u64),
        SYS_write | SYS_writev | SYS_sendto | SYS_sendmsg | SYS_sendfile if ret > 0 => {
            st.wrote(pvid, a[0] as i32, written)
        }
        SYS_shutdown if ret == 0 => st.shutdown(pvid, a[0] as i32, a[1] as i32),
        SYS_close => st.closed(pvid, a[0] as i32),
        SYS_dup2 | SYS_dup3 => st.closed(pvid, a[1] as i32),
        SYS_close_range => {
            let fds: Vec<i32> = st
                .conns
                .keys()
                .chain(st.listeners.keys())
                .filter(|k| k.0 == pvid && (k.1 as u64) >= a[0] && (k.1 as u64) <= a[1])
                .map(|k| k.1)
                .collect();
            for fd in fds {
                st.closed(pvid, fd);
            }
        }
        SYS_clock_gettime if ret == 0 => {
            if let Some(m) = c.mem.first()
                && m.bytes.len() >= 16
            {
                let b = &m.bytes;
                let sec = i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                let nsec = i64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
                let now = crate::sys::fd::clock_ns(CLOCK_MONOTONIC);
                st.clocks.insert(a[0] as i32, (sec * 1_000_000_000 + nsec, now));
            }
        }
        _ => {}
    }
    Ok(())
}

// ------------------------------------------------------------------ helpers

/// Reads a little-endian integer from the replica.
pub fn read_u64(ctx: &Ctx, addr: u64) -> Result<u64> {
    let b = sys::mem::read(ctx.tid, addr, 8)?;
    Ok(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
}

pub fn read_u32(ctx: &Ctx, addr: u64) -> Result<u32> {
    let b = sys::mem::read(ctx.tid, addr, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The most bytes one intercepted call may move through the supervisor.
pub const MAX_IO: usize = 64 << 20;

/// An iovec array from the replica: `(base, len)` pairs.
pub fn read_iovec(ctx: &Ctx, addr: u64, count: u64) -> Result<Vec<(u64, usize)>> {
    if count > 1024 {
        return Err(EngineError::Refused {
            call: crate::replica::table::name(ctx.nr),
            process: format!("thread {}", ctx.vid),
            why: format!("an iovec of {count} entries (more than IOV_MAX)"),
        });
    }
    let raw = sys::mem::read(ctx.tid, addr, 16 * count as usize)?;
    let mut out = Vec::with_capacity(count as usize);
    for c in raw.chunks_exact(16) {
        let base = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let len = u64::from_le_bytes([c[8], c[9], c[10], c[11], c[12], c[13], c[14], c[15]]) as usize;
        out.push((base, len));
    }
    let total: usize = out.iter().map(|x| x.1).sum();
    if total > MAX_IO {
        return Err(EngineError::Refused {
            call: crate::replica::table::name(ctx.nr),
            process: format!("thread {}", ctx.vid),
            why: format!("{total} bytes in one call (ftnet moves at most {MAX_IO} per call)"),
        });
    }
    Ok(out)
}

/// Splits `data` over `iov` as the kernel fills buffers: memory writes.
pub fn scatter(iov: &[(u64, usize)], data: &[u8]) -> Vec<crate::replica::log::Mem> {
    let mut out = vec![];
    let mut at = 0;
    for &(base, len) in iov {
        if at >= data.len() {
            break;
        }
        let take = len.min(data.len() - at);
        if take > 0 {
            out.push(crate::replica::log::Mem { addr: base, bytes: data[at..at + take].to_vec() });
        }
        at += take;
    }
    out
}

/// Gathers `iov` from the replica, up to `limit` bytes.
pub fn gather(ctx: &Ctx, iov: &[(u64, usize)], limit: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for &(base, len) in iov {
        if out.len() >= limit {
            break;
        }
        let take = len.min(limit - out.len());
        if take > 0 {
            out.extend_from_slice(&sys::mem::read(ctx.tid, base, take)?);
        }
    }
    Ok(out)
}

/// `-errno` as a call result.
pub fn err(e: sys::Errno) -> i64 {
    -(e.0 as i64)
}

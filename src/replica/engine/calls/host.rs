//! Host facts and time: clocks, randomness, uname, sysinfo, resource usage,
//! the stat family, directory listings, links, CPU affinity, pending
//! signals, timerfd times.
//!
//! The primary performs each call for the replica (paths are resolved in the
//! replica's mount namespace through `/proc/TID/root` and `/proc/TID/cwd`)
//! and logs the bytes it wrote into the replica; the backup writes the same
//! bytes. Any call of a recorded class without a handler here is refused, so
//! nothing nondeterministic slips through unlogged.

use super::io::copy_of;
use super::{Ctx, Done, Outcome, Result, Supervisor, err};
use crate::sys::{self, fd as sfd};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

const NS: i64 = 1_000_000_000;

fn ts_bytes(ns: i64) -> Vec<u8> {
    let mut b = ns.div_euclid(NS).to_le_bytes().to_vec();
    b.extend_from_slice(&ns.rem_euclid(NS).to_le_bytes());
    b
}

/// The value of clock `clk` as the replica would read it, in ns (after a
/// takeover, offset so the replica's clocks continue the log's).
fn clock_value(s: &Supervisor, ctx: &Ctx, clk: i32) -> Option<i64> {
    raw_clock_value(ctx, clk).map(|v| v + s.offset_of(clk))
}

fn raw_clock_value(ctx: &Ctx, clk: i32) -> Option<i64> {
    match clk {
        libc::CLOCK_REALTIME
        | libc::CLOCK_MONOTONIC
        | libc::CLOCK_MONOTONIC_RAW
        | libc::CLOCK_REALTIME_COARSE
        | libc::CLOCK_MONOTONIC_COARSE
        | libc::CLOCK_BOOTTIME
        | libc::CLOCK_REALTIME_ALARM
        | libc::CLOCK_BOOTTIME_ALARM
        | libc::CLOCK_TAI => Some(sfd::clock_ns(clk)),
        libc::CLOCK_PROCESS_CPUTIME_ID => {
            // MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
            let id = ((!(ctx.tgid as libc::clockid_t)) << 3) | 2;
            Some(sfd::clock_ns(id))
        }
        libc::CLOCK_THREAD_CPUTIME_ID => {
            let s = std::fs::read_to_string(format!("/proc/{}/task/{}/schedstat", ctx.tgid, ctx.tid)).ok()?;
            s.split_whitespace().next()?.parse().ok()
        }
        _ => None,
    }
}

/// Fields of `/proc/PID/stat` after the command name (1-based as in proc(5)).
fn stat_fields(path: &str) -> Vec<i64> {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    // Field 3 (state) is the first after ')'.
    let mut v = vec![0, 0];
    v.extend(rest.split_whitespace().map(|x| x.parse::<i64>().unwrap_or(0)));
    v
}

fn status_kb(path: &str, key: &str) -> i64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// `struct rusage` for the replica, built from /proc.
fn rusage(ctx: &Ctx, who: i32) -> Option<Vec<u8>> {
    let tick_us = 1_000_000 / 100;
    let (stat, status) = match who {
        libc::RUSAGE_SELF | libc::RUSAGE_CHILDREN => {
            (format!("/proc/{}/stat", ctx.tgid), format!("/proc/{}/status", ctx.tgid))
        }
        libc::RUSAGE_THREAD => {
            (format!("/proc/{}/task/{}/stat", ctx.tgid, ctx.tid), format!("/proc/{}/task/{}/status", ctx.tgid, ctx.tid))
        }
        _ => return None,
    };
    let f = stat_fields(&stat);
    let g = |i: usize| f.get(i).copied().unwrap_or(0);
    let (ut, st, minflt, majflt) =
        if who == libc::RUSAGE_CHILDREN { (g(16), g(17), g(11), g(13)) } else { (g(14), g(15), g(10), g(12)) };
    let mut b = vec![];
    for ticks in [ut, st] {
        let us = ticks * tick_us;
        b.extend_from_slice(&(us / 1_000_000).to_le_bytes());
        b.extend_from_slice(&(us % 1_000_000).to_le_bytes());
    }
    let maxrss = if who == libc::RUSAGE_CHILDREN { 0 } else { status_kb(&status, "VmHWM:") };
    let vcsw = status_kb(&status, "voluntary_ctxt_switches:");
    let ivcsw = status_kb(&status, "nonvoluntary_ctxt_switches:");
    for v in [maxrss, 0, 0, 0, minflt, majflt, 0, 0, 0, 0, 0, 0, vcsw, ivcsw] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    Some(b)
}

/// A directory handle and relative path that resolve `path` (relative to
/// `dirfd`) the way the replica would, in its own mount namespace.
fn resolve(
    s: &mut Supervisor,
    ctx: &Ctx,
    dirfd: i32,
    path_ptr: u64,
) -> Result<std::result::Result<(Rc<OwnedFd>, CString), i64>> {
    let Ok(mut path) = sys::mem::read_cstr(ctx.tid, path_ptr, 4096) else {
        return Ok(Err(-(libc::EFAULT as i64)));
    };
    let ns = s.tree.p(ctx.pvid).nspid;
    let nstid = s.tree.t(ctx.vid).nstid;
    for (prefix, real) in
        [(&b"/proc/self"[..], format!("/proc/{ns}")), (&b"/proc/thread-self"[..], format!("/proc/{ns}/task/{nstid}"))]
    {
        if path.starts_with(prefix) && matches!(path.get(prefix.len()), None | Some(b'/')) {
            let mut p = real.into_bytes();
            p.extend_from_slice(&path[prefix.len()..]);
            path = p;
        }
    }
    let (base, rel): (std::result::Result<Rc<OwnedFd>, i64>, Vec<u8>) = if path.first() == Some(&b'/') {
        let rel = path.iter().skip_while(|&&c| c == b'/').copied().collect::<Vec<_>>();
        (open_path(&format!("/proc/{}/root", ctx.tid)).map(Rc::new), if rel.is_empty() { b".".to_vec() } else { rel })
    } else if dirfd == libc::AT_FDCWD {
        (open_path(&format!("/proc/{}/cwd", ctx.tid)).map(Rc::new), path)
    } else {
        (copy_of(s, ctx, dirfd), path)
    };
    let base = match base {
        Ok(b) => b,
        Err(e) => return Ok(Err(e)),
    };
    let rel = if rel.is_empty() { Vec::new() } else { rel };
    Ok(Ok((base, CString::new(rel).unwrap_or_default())))
}

fn open_path(p: &str) -> std::result::Result<OwnedFd, i64> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(p)
        .map(OwnedFd::from)
        .map_err(|e| -(e.raw_os_error().unwrap_or(libc::EIO) as i64))
}

use std::os::unix::fs::OpenOptionsExt;

/// Performs a path call (`f(dirfd, path)`) for the replica.
fn at_call(s: &mut Supervisor, ctx: &Ctx, dirfd: i32, path: u64, f: impl FnOnce(u64, u64) -> i64) -> Result<i64> {
    Ok(match resolve(s, ctx, dirfd, path)? {
        Ok((base, rel)) => f(base.as_raw_fd() as u64, rel.as_ptr() as u64),
        Err(e) => e,
    })
}

#[allow(non_upper_case_globals)]
pub fn record(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    use libc::*;
    let a = ctx.a;
    let done = match ctx.nr as i64 {
        SYS_clock_gettime => match clock_value(s, ctx, a[0] as i32) {
            Some(v) if a[1] != 0 => Done::ret(0).with_mem(a[1], ts_bytes(v)),
            Some(_) => Done::ret(-(EFAULT as i64)),
            None => Done::ret(-(EINVAL as i64)),
        },
        SYS_gettimeofday => {
            let ns = sfd::clock_ns(CLOCK_REALTIME);
            let mut tv = (ns / NS).to_le_bytes().to_vec();
            tv.extend_from_slice(&((ns % NS) / 1000).to_le_bytes());
            Done::ret(0).with_mem(a[0], tv).with_mem(a[1], vec![0; 8])
        }
        SYS_time => {
            let secs = sfd::clock_ns(CLOCK_REALTIME) / NS;
            Done::ret(secs).with_mem(a[0], secs.to_le_bytes().to_vec())
        }
        SYS_getrandom => {
            let len = (a[1] as usize).min(super::MAX_IO);
            let mut buf = vec![0u8; len];
            let flags = a[2] & (GRND_NONBLOCK | GRND_RANDOM | 0x4) as u64;
            let r = sfd::raw_syscall6(SYS_getrandom, [buf.as_mut_ptr() as u64, len as u64, flags, 0, 0, 0]);
            let d = Done::ret(r);
            if r > 0 { d.with_mem(a[0], buf[..r as usize].to_vec()) } else { d }
        }
        SYS_uname => {
            let mut buf = vec![0u8; 390];
            let r = sfd::raw_syscall6(SYS_uname, [buf.as_mut_ptr() as u64, 0, 0, 0, 0, 0]);
            Done::ret(r).with_mem(a[0], buf)
        }
        SYS_sysinfo => Done::ret(0).with_mem(a[0], sfd::sysinfo_bytes()),
        SYS_getrusage => match rusage(ctx, a[0] as i32) {
            Some(b) => Done::ret(0).with_mem(a[1], b),
            None => Done::ret(-(EINVAL as i64)),
        },
        SYS_times => {
            let f = stat_fields(&format!("/proc/{}/stat", ctx.tgid));
            let g = |i: usize| f.get(i).copied().unwrap_or(0);
            let mut b = vec![];
            for v in [g(14), g(15), g(16), g(17)] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            let ticks = sfd::clock_ns(CLOCK_BOOTTIME) / (NS / 100);
            Done::ret(ticks).with_mem(a[0], b)
        }
        SYS_stat | SYS_lstat => {
            let flags = if ctx.nr as i64 == SYS_lstat { AT_SYMLINK_NOFOLLOW } else { 0 };
            stat_at(s, ctx, AT_FDCWD, a[0], a[1], flags)?
        }
        SYS_newfstatat => stat_at(s, ctx, a[0] as i32, a[1], a[2], a[3] as i32)?,
        SYS_fstat => match copy_of(s, ctx, a[0] as i32) {
            Ok(c) => {
                let mut buf = vec![0u8; 144];
                let r = sfd::raw_syscall6(SYS_fstat, [c.as_raw_fd() as u64, buf.as_mut_ptr() as u64, 0, 0, 0, 0]);
                Done::ret(r).with_mem(a[1], buf)
            }
            Err(r) => Done::ret(r),
        },
        SYS_statx => {
            let mut buf = vec![0u8; 256];
            let flags = a[2] as i32;
            let r = if flags & AT_EMPTY_PATH != 0 && sys::mem::read(ctx.tid, a[1], 1).is_ok_and(|b| b[0] == 0) {
                match copy_of(s, ctx, a[0] as i32) {
                    Ok(c) => {
                        let empty = c"";
                        let args =
                            [c.as_raw_fd() as u64, empty.as_ptr() as u64, a[2], a[3], buf.as_mut_ptr() as u64, 0];
                        sfd::raw_syscall6(SYS_statx, args)
                    }
                    Err(r) => r,
                }
            } else {
                at_call(s, ctx, a[0] as i32, a[1], |d, p| {
                    sfd::raw_syscall6(SYS_statx, [d, p, a[2], a[3], buf.as_mut_ptr() as u64, 0])
                })?
            };
            if r == 0 { Done::ret(0).with_mem(a[4], buf) } else { Done::ret(r) }
        }
        SYS_statfs => {
            let mut buf = vec![0u8; 120];
            let r = at_call(s, ctx, AT_FDCWD, a[0], |d, p| {
                // statfs has no *at form: open the path, then fstatfs it.
                let fd = sfd::raw_syscall6(SYS_openat, [d, p, (O_PATH | O_CLOEXEC) as u64, 0, 0, 0]);
                if fd < 0 {
                    return fd;
                }
                // SAFETY-free: wrap the new fd so it is closed.
                let owned = owned_fd(fd);
                sfd::raw_syscall6(SYS_fstatfs, [owned.as_raw_fd() as u64, buf.as_mut_ptr() as u64, 0, 0, 0, 0])
            })?;
            if r == 0 { Done::ret(0).with_mem(a[1], buf) } else { Done::ret(r) }
        }
        SYS_fstatfs => match copy_of(s, ctx, a[0] as i32) {
            Ok(c) => {
                let mut buf = vec![0u8; 120];
                let r = sfd::raw_syscall6(SYS_fstatfs, [c.as_raw_fd() as u64, buf.as_mut_ptr() as u64, 0, 0, 0, 0]);
                if r == 0 { Done::ret(0).with_mem(a[1], buf) } else { Done::ret(r) }
            }
            Err(r) => Done::ret(r),
        },
        SYS_getdents | SYS_getdents64 => match copy_of(s, ctx, a[0] as i32) {
            Ok(c) => {
                let len = (a[2] as usize).min(1 << 20);
                let mut buf = vec![0u8; len];
                let r = sfd::raw_syscall6(
                    ctx.nr as i64,
                    [c.as_raw_fd() as u64, buf.as_mut_ptr() as u64, len as u64, 0, 0, 0],
                );
                if r > 0 { Done::ret(r).with_mem(a[1], buf[..r as usize].to_vec()) } else { Done::ret(r) }
            }
            Err(r) => Done::ret(r),
        },
        SYS_readlink | SYS_readlinkat => {
            let (dirfd, path, bufp, size) = if ctx.nr as i64 == SYS_readlink {
                (AT_FDCWD, a[0], a[1], a[2])
            } else {
                (a[0] as i32, a[1], a[2], a[3])
            };
            let size = (size as usize).min(4096);
            let mut buf = vec![0u8; size];
            let r = at_call(s, ctx, dirfd, path, |d, p| {
                sfd::raw_syscall6(SYS_readlinkat, [d, p, buf.as_mut_ptr() as u64, size as u64, 0, 0])
            })?;
            if r > 0 { Done::ret(r).with_mem(bufp, buf[..r as usize].to_vec()) } else { Done::ret(r) }
        }
        SYS_sched_getaffinity => {
            let pid = a[0] as i32;
            let host = if pid == 0 { Some(ctx.tid) } else { host_tid(s, pid) };
            match host {
                None => Done::ret(-(ESRCH as i64)),
                Some(h) => {
                    let len = (a[1] as usize).min(1024);
                    let mut buf = vec![0u8; len];
                    let r = sfd::raw_syscall6(
                        SYS_sched_getaffinity,
                        [h as u64, len as u64, buf.as_mut_ptr() as u64, 0, 0, 0],
                    );
                    if r > 0 { Done::ret(r).with_mem(a[2], buf[..r as usize].to_vec()) } else { Done::ret(r) }
                }
            }
        }
        // The tree stays pinned to its CPU: accept the request without
        // acting on it, identically on both nodes.
        SYS_sched_setaffinity => Done::ret(0),
        SYS_getcpu => {
            let f = stat_fields(&format!("/proc/{}/task/{}/stat", ctx.tgid, ctx.tid));
            let cpu = f.get(39).copied().unwrap_or(0) as u32;
            Done::ret(0).with_mem(a[0], cpu.to_le_bytes().to_vec()).with_mem(a[1], 0u32.to_le_bytes().to_vec())
        }
        SYS_rt_sigpending => {
            let m = super::super::signals::masks(ctx.tid);
            let set = (m.pending | m.shared) & m.blocked;
            Done::ret(0).with_mem(a[0], set.to_le_bytes()[..(a[1] as usize).min(8)].to_vec())
        }
        SYS_timerfd_settime | SYS_timerfd_gettime => match copy_of(s, ctx, a[0] as i32) {
            Ok(c) => {
                let mut old = vec![0u8; 32];
                let (r, out) = if ctx.nr as i64 == SYS_timerfd_gettime {
                    (
                        sfd::raw_syscall6(
                            SYS_timerfd_gettime,
                            [c.as_raw_fd() as u64, old.as_mut_ptr() as u64, 0, 0, 0, 0],
                        ),
                        a[1],
                    )
                } else {
                    let new = sys::mem::read(ctx.tid, a[2], 32)?;
                    let args = [c.as_raw_fd() as u64, a[1], new.as_ptr() as u64, old.as_mut_ptr() as u64, 0, 0];
                    (sfd::raw_syscall6(SYS_timerfd_settime, args), a[3])
                };
                if r == 0 { Done::ret(0).with_mem(out, old) } else { Done::ret(r) }
            }
            Err(r) => Done::ret(r),
        },
        _ => {
            return Err(s.refused(ctx, "ftnet's supervisor has no handler for this call, so it cannot be replicated"));
        }
    };
    Ok(Outcome::Done(done))
}

fn stat_at(s: &mut Supervisor, ctx: &Ctx, dirfd: i32, path: u64, out: u64, flags: i32) -> Result<Done> {
    let mut buf = vec![0u8; 144];
    let empty = flags & libc::AT_EMPTY_PATH != 0 && sys::mem::read(ctx.tid, path, 1).is_ok_and(|b| b[0] == 0);
    let r = if empty {
        match copy_of(s, ctx, dirfd) {
            Ok(c) => sfd::raw_syscall6(libc::SYS_fstat, [c.as_raw_fd() as u64, buf.as_mut_ptr() as u64, 0, 0, 0, 0]),
            Err(r) => r,
        }
    } else {
        at_call(s, ctx, dirfd, path, |d, p| {
            sfd::raw_syscall6(libc::SYS_newfstatat, [d, p, buf.as_mut_ptr() as u64, flags as u64, 0, 0])
        })?
    };
    Ok(if r == 0 { Done::ret(0).with_mem(out, buf) } else { Done::ret(r) })
}

fn host_tid(s: &Supervisor, nstid: i32) -> Option<i32> {
    s.tree.live().find(|t| t.nstid == nstid).map(|t| t.tid)
}

fn owned_fd(fd: i64) -> OwnedFd {
    sys::fd::own(fd as i32)
}

#[allow(dead_code)]
fn unused(e: sys::Errno) -> i64 {
    err(e)
}

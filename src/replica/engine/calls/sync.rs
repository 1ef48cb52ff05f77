//! Waiting and scheduling: futexes, wait4/waitid, sched_yield, sleeps,
//! pause/sigsuspend, interval timers, exit_group, and calls that would let
//! the replica escape supervision (personality, prctl, seccomp, kill).
//!
//! Every wait is emulated on the primary (the thread is parked in its
//! notification and the token moves on), so no replica thread ever blocks
//! inside the kernel while holding the token. On the backup these calls are
//! answered from the log.

use super::super::signals::{bit, interrupts, masks};
use super::super::threads::{At, FutexKey, Pvid, Wait};
use super::{Ctx, Done, Outcome, Result, Supervisor, read_u32, read_u64};
use crate::sys::{self, fd as sfd};

const NS: i64 = 1_000_000_000;

fn now() -> i64 {
    sfd::clock_ns(libc::CLOCK_MONOTONIC)
}

/// The futex key of `addr` in the caller's address space.
fn futex_key(ctx: &Ctx, addr: u64, private: bool) -> FutexKey {
    if private {
        return FutexKey::Private(ctx.pvid, addr);
    }
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{}/maps", ctx.tgid)) else {
        return FutexKey::Private(ctx.pvid, addr);
    };
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms), Some(off), Some(dev), Some(ino)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Some((lo, hi)) = range.split_once('-') else { continue };
        let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16)) else { continue };
        if addr < lo || addr >= hi {
            continue;
        }
        if !perms.ends_with('s') {
            return FutexKey::Private(ctx.pvid, addr);
        }
        let off = u64::from_str_radix(off, 16).unwrap_or(0);
        let dev = dev.split(':').fold(0u64, |acc, p| (acc << 20) | u64::from_str_radix(p, 16).unwrap_or(0));
        let ino = ino.parse().unwrap_or(0);
        return FutexKey::Shared { dev, ino, offset: off + (addr - lo) };
    }
    FutexKey::Private(ctx.pvid, addr)
}

const FUTEX_WAIT: u64 = 0;
const FUTEX_WAKE: u64 = 1;
const FUTEX_REQUEUE: u64 = 3;
const FUTEX_CMP_REQUEUE: u64 = 4;
const FUTEX_WAKE_OP: u64 = 5;
const FUTEX_WAIT_BITSET: u64 = 9;
const FUTEX_WAKE_BITSET: u64 = 10;
const FUTEX_PRIVATE: u64 = 128;
const FUTEX_CLOCK_REALTIME: u64 = 256;

pub fn record_futex(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    let (uaddr, op, val, uaddr2, val3) = (ctx.a[0], ctx.a[1], ctx.a[2] as u32, ctx.a[4], ctx.a[5] as u32);
    let private = op & FUTEX_PRIVATE != 0;
    let cmd = op & !(FUTEX_PRIVATE | FUTEX_CLOCK_REALTIME);
    let key = futex_key(ctx, uaddr, private);
    let ret = |v: i64| Ok(Outcome::Done(Done::ret(v)));
    match cmd {
        FUTEX_WAIT | FUTEX_WAIT_BITSET => {
            if s.tree.t(ctx.vid).woken {
                return ret(0);
            }
            let bitset = if cmd == FUTEX_WAIT { u32::MAX } else { val3 };
            if bitset == 0 {
                return ret(-(libc::EINVAL as i64));
            }
            if s.tree.t(ctx.vid).deadline.is_none() && ctx.a[3] != 0 {
                let sec = read_u64(ctx, ctx.a[3])? as i64;
                let nsec = read_u64(ctx, ctx.a[3] + 8)? as i64;
                let t = sec.saturating_mul(NS).saturating_add(nsec);
                let dl = if cmd == FUTEX_WAIT {
                    now() + t
                } else if op & FUTEX_CLOCK_REALTIME != 0 {
                    t - sfd::clock_ns(libc::CLOCK_REALTIME) + now()
                } else {
                    t - s.offset_of(libc::CLOCK_MONOTONIC)
                };
                s.tree.tm(ctx.vid).deadline = Some(dl);
            }
            let dl = s.tree.t(ctx.vid).deadline;
            if dl.is_some_and(|d| d <= now()) {
                return ret(-(libc::ETIMEDOUT as i64));
            }
            let cur = match read_u32(ctx, uaddr) {
                Ok(v) => v,
                Err(_) => return ret(-(libc::EFAULT as i64)),
            };
            if cur != val {
                return ret(-(libc::EAGAIN as i64));
            }
            Ok(Outcome::Block(Wait::Futex { key, addr: uaddr, val, bitset, deadline: dl }))
        }
        FUTEX_WAKE | FUTEX_WAKE_BITSET => {
            let bitset = if cmd == FUTEX_WAKE { u32::MAX } else { val3 };
            if bitset == 0 {
                return ret(-(libc::EINVAL as i64));
            }
            ret(s.futex_wake(key, val, bitset) as i64)
        }
        FUTEX_REQUEUE | FUTEX_CMP_REQUEUE => {
            if cmd == FUTEX_CMP_REQUEUE && read_u32(ctx, uaddr).ok() != Some(val3) {
                return ret(-(libc::EAGAIN as i64));
            }
            let key2 = futex_key(ctx, uaddr2, private);
            let woke = s.futex_wake(key, val, u32::MAX);
            let moved = s.futex_requeue(key, key2, ctx.a[3] as u32);
            ret((woke + moved) as i64)
        }
        FUTEX_WAKE_OP => {
            let key2 = futex_key(ctx, uaddr2, private);
            let oldv = match read_u32(ctx, uaddr2) {
                Ok(v) => v,
                Err(_) => return ret(-(libc::EFAULT as i64)),
            };
            let mut opn = (val3 >> 28) & 0xf;
            let cmp = (val3 >> 24) & 0xf;
            let sext = |v: u32| ((v << 20) as i32 >> 20) as u32;
            let mut oparg = sext((val3 >> 12) & 0xfff);
            let cmparg = sext(val3 & 0xfff);
            if opn & 8 != 0 {
                opn &= 7;
                oparg = 1u32.checked_shl(oparg).unwrap_or(0);
            }
            let newv = match opn {
                0 => oparg,
                1 => oldv.wrapping_add(oparg),
                2 => oldv | oparg,
                3 => oldv & !oparg,
                4 => oldv ^ oparg,
                _ => return ret(-(libc::ENOSYS as i64)),
            };
            sys::mem::write(ctx.tid, uaddr2, &newv.to_ne_bytes())?;
            let (o, c) = (oldv as i32, cmparg as i32);
            let hit = match cmp {
                0 => o == c,
                1 => o != c,
                2 => o < c,
                3 => o <= c,
                4 => o > c,
                5 => o >= c,
                _ => return ret(-(libc::ENOSYS as i64)),
            };
            let mut n = s.futex_wake(key, val, u32::MAX);
            if hit {
                n += s.futex_wake(key2, ctx.a[3] as u32, u32::MAX);
            }
            ret(n as i64)
        }
        // PI futexes and requeue-to-PI are not emulated; callers learn so.
        _ => ret(-(libc::ENOSYS as i64)),
    }
}

/// Whether process `pvid` has a child that `wait4(pid, ...)` could reap now,
/// or no children at all (the call fails at once with ECHILD). A child
/// whose threads all exited is a zombie until its parent reaps it; once
/// its zombie is gone it is dropped from the parent's list for good.
fn wait_ready(s: &mut Supervisor, pvid: Pvid, pid: i32) -> bool {
    let parent_tgid = s.tree.p(pvid).tgid;
    let kids = std::mem::take(&mut s.tree.pm(pvid).children);
    let kids: Vec<Pvid> =
        kids.into_iter().filter(|&k| !s.tree.p(k).exited || is_zombie_of(s.tree.p(k).tgid, parent_tgid)).collect();
    s.tree.pm(pvid).children = kids;
    let kids: Vec<&super::super::threads::Proc> =
        s.tree.p(pvid).children.iter().map(|&k| s.tree.p(k)).filter(|p| pid <= 0 || p.nspid == pid).collect();
    kids.is_empty() || kids.iter().any(|p| p.exited)
}

/// Whether `tgid` is still a zombie child of `parent` (not reaped, and not
/// a reused pid).
fn is_zombie_of(tgid: i32, parent: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{tgid}/stat")) else { return false };
    // "pid (comm) S ppid ...": comm may hold spaces and parentheses.
    let mut rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("").split_whitespace();
    rest.next() == Some("Z") && rest.next().and_then(|p| p.parse::<i32>().ok()) == Some(parent)
}

pub fn record_wait(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    let (pid, options) = if ctx.nr as i64 == libc::SYS_wait4 {
        (ctx.a[0] as i32, ctx.a[2] as i32)
    } else {
        let idtype = ctx.a[0] as u32;
        (if idtype == libc::P_PID { ctx.a[1] as i32 } else { -1 }, ctx.a[3] as i32)
    };
    if options & libc::WNOHANG != 0 || wait_ready(s, ctx.pvid, pid) {
        return Ok(Outcome::Done(Done::cont()));
    }
    Ok(Outcome::Block(Wait::Child))
}

/// Marker for a yielding thread: the token passes to the next ready thread
/// and the call is answered when this one runs again.
pub fn record_yield(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    let t = s.tree.t(ctx.vid);
    if t.yielded || !s.tree.live().any(|o| o.vid != ctx.vid && o.sched == super::super::threads::Sched::Ready) {
        return Ok(Outcome::Done(Done::ret(0)));
    }
    s.tree.tm(ctx.vid).yielded = true;
    Ok(Outcome::Yield)
}

pub fn record_sleep(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    let nanosleep = ctx.nr as i64 == libc::SYS_nanosleep;
    let (clock, flags, req, rem) = if nanosleep {
        (libc::CLOCK_MONOTONIC, 0, ctx.a[0], ctx.a[1])
    } else {
        (ctx.a[0] as i32, ctx.a[1] as i32, ctx.a[2], ctx.a[3])
    };
    if s.tree.t(ctx.vid).deadline.is_none() {
        let sec = read_u64(ctx, req)? as i64;
        let nsec = read_u64(ctx, req + 8)? as i64;
        if sec < 0 || !(0..NS).contains(&nsec) {
            return Ok(Outcome::Done(Done::ret(-(libc::EINVAL as i64))));
        }
        let t = sec.saturating_mul(NS).saturating_add(nsec);
        let dl = if flags & libc::TIMER_ABSTIME != 0 {
            if !matches!(clock, libc::CLOCK_REALTIME | libc::CLOCK_MONOTONIC | libc::CLOCK_BOOTTIME | libc::CLOCK_TAI) {
                return Ok(Outcome::Done(Done::ret(-(libc::EINVAL as i64))));
            }
            t - s.replica_clock(clock) + now()
        } else {
            now().saturating_add(t)
        };
        s.tree.tm(ctx.vid).deadline = Some(dl);
    }
    let dl = s.tree.t(ctx.vid).deadline.unwrap_or(0);
    let left = dl - now();
    if left <= 0 {
        return Ok(Outcome::Done(Done::ret(0)));
    }
    let w = Wait::Sleep { deadline: dl };
    if s.interrupt(ctx, &w)?.is_some() {
        let mut d = Done::ret(-(libc::EINTR as i64));
        if rem != 0 && flags & libc::TIMER_ABSTIME == 0 {
            let mut ts = ((left / NS) as u64).to_le_bytes().to_vec();
            ts.extend_from_slice(&((left % NS) as u64).to_le_bytes());
            d = d.with_mem(rem, ts);
        }
        return Ok(Outcome::Done(d));
    }
    Ok(Outcome::Block(w))
}

/// pause and rt_sigsuspend: they return only when a signal is handled, which
/// the supervisor arranges by injecting it and letting the call run natively.
pub fn record_sigwait(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    let mask = if ctx.nr as i64 == libc::SYS_rt_sigsuspend {
        if ctx.a[1] != 8 {
            return Ok(Outcome::Done(Done::ret(-(libc::EINVAL as i64))));
        }
        let m = read_u64(ctx, ctx.a[0])? & !(bit(libc::SIGKILL) | bit(libc::SIGSTOP));
        s.tree.tm(ctx.vid).sigmask = Some(m);
        m
    } else {
        masks(ctx.tid).blocked
    };
    // Signals the kernel already holds for us count too.
    s.tree.pm(ctx.pvid).check_pending = true;
    s.check_pending_signals()?;
    let w = Wait::Signal { mask };
    if s.interrupt(ctx, &w)?.is_some() {
        return Ok(Outcome::Done(Done::cont()));
    }
    Ok(Outcome::Block(w))
}

pub fn record_itimer(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    let n = now();
    let old = s.tree.p(ctx.pvid).itimer;
    let left = old.map(|(d, _)| (d - n).max(1_000)).unwrap_or(0);
    let interval = old.map(|(_, i)| i).unwrap_or(0);
    let tv = |ns: i64| {
        let mut b = ((ns / NS) as u64).to_le_bytes().to_vec();
        b.extend_from_slice((((ns % NS) / 1000) as u64).to_le_bytes().as_slice());
        b
    };
    let mut old_val = tv(interval);
    old_val.extend_from_slice(&tv(left));
    match ctx.nr as i64 {
        libc::SYS_alarm => {
            let secs = ctx.a[0] as u32 as i64;
            s.tree.pm(ctx.pvid).itimer = (secs > 0).then_some((n + secs * NS, 0));
            let mut r = left / NS;
            if (r == 0 && left > 0) || left % NS >= NS / 2 {
                r += 1;
            }
            Ok(Outcome::Done(Done::ret(r)))
        }
        _ if ctx.a[0] as i32 != libc::ITIMER_REAL => {
            Err(s.refused(ctx, "only ITIMER_REAL interval timers are emulated"))
        }
        libc::SYS_getitimer => Ok(Outcome::Done(Done::ret(0).with_mem(ctx.a[1], old_val))),
        _ => {
            let (new, oldp) = (ctx.a[1], ctx.a[2]);
            let mut it = None;
            if new != 0 {
                let b = sys::mem::read(ctx.tid, new, 32)?;
                let w = |o: usize| {
                    i64::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3], b[o + 4], b[o + 5], b[o + 6], b[o + 7]])
                };
                let (isec, iusec, vsec, vusec) = (w(0), w(8), w(16), w(24));
                if !(0..1_000_000).contains(&iusec) || !(0..1_000_000).contains(&vusec) {
                    return Ok(Outcome::Done(Done::ret(-(libc::EINVAL as i64))));
                }
                let value = vsec * NS + vusec * 1000;
                if value > 0 {
                    it = Some((n + value, isec * NS + iusec * 1000));
                }
            }
            s.tree.pm(ctx.pvid).itimer = it;
            Ok(Outcome::Done(Done::ret(0).with_mem(oldp, old_val)))
        }
    }
}

/// The whole process is about to exit: wait for every thread of it.
pub fn note_exit_group(s: &mut Supervisor, ctx: &Ctx) {
    s.tree.pm(ctx.pvid).exiting = true;
    let threads = s.tree.p(ctx.pvid).threads.clone();
    for v in threads {
        if v != ctx.vid && s.tree.t(v).at != At::Dead {
            s.tree.tm(v).dying = true;
        }
    }
}

pub fn record_self_control(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    match ctx.nr as i64 {
        libc::SYS_personality => {
            let p = ctx.a[0] as u32;
            if p != 0xffff_ffff && p & libc::ADDR_NO_RANDOMIZE as u32 == 0 {
                return Err(s.refused(ctx, "clearing ADDR_NO_RANDOMIZE would re-enable address randomization"));
            }
        }
        libc::SYS_prctl if ctx.a[0] as i32 == libc::PR_SET_TSC => {
            return Err(s.refused(ctx, "PR_SET_TSC would let rdtsc run untrapped"));
        }
        libc::SYS_seccomp if ctx.a[0] as u32 == libc::SECCOMP_SET_MODE_FILTER && ctx.a[1] & (1 << 3) != 0 => {
            return Err(s.refused(ctx, "a seccomp listener of the replica's own would take notifications away"));
        }
        _ => {}
    }
    Ok(Outcome::Done(Done::cont()))
}

/// kill and friends run natively; afterwards the target may hold a pending
/// signal that must interrupt a blocked call, so it is checked before the
/// next scheduling decision.
pub fn record_kill(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    let target = match ctx.nr as i64 {
        libc::SYS_kill
        | libc::SYS_rt_sigqueueinfo
        | libc::SYS_tkill
        | libc::SYS_tgkill
        | libc::SYS_rt_tgsigqueueinfo => ctx.a[0] as i32,
        _ => 0,
    };
    let tkill = ctx.nr as i64 == libc::SYS_tkill;
    for pvid in s.tree.live_pvids() {
        let p = s.tree.pm(pvid);
        // tkill names a thread, not a process: check every process.
        let hit = target <= 0 || tkill || p.nspid == target;
        if hit {
            p.check_pending = true;
        }
    }
    let _ = interrupts;
    Ok(Outcome::Done(Done::cont()))
}

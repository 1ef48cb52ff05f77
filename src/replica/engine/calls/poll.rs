//! Readiness: epoll_wait/epoll_pwait/epoll_pwait2, poll/ppoll,
//! select/pselect6.
//!
//! The primary harvests readiness on copies of the replica's descriptors with
//! a zero timeout (an epoll set harvested through a copy consumes edges and
//! one-shot arms exactly as the replica's own call would), logs the result,
//! and parks the thread when nothing is ready. The backup never calls the
//! real epoll_wait: its placeholders' readiness means nothing until takeover.
//!
//! A pending call's deadline is kept in the thread across wake-ups, so a
//! woken thread that finds nothing (another thread consumed it) waits only
//! for what is left of its timeout.

use super::super::threads::Wait;
use super::io::copy_of;
use super::{Ctx, Done, Outcome, Result, Supervisor, read_u64};
use crate::sys::{self, fd as sfd};
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

const NS: i64 = 1_000_000_000;

fn now() -> i64 {
    sfd::clock_ns(libc::CLOCK_MONOTONIC)
}

/// The deadline of the pending call: kept from the first time it was seen.
fn deadline(s: &mut Supervisor, ctx: &Ctx, timeout_ns: Option<i64>) -> Option<i64> {
    let t = s.tree.tm(ctx.vid);
    if t.deadline.is_none() {
        t.deadline = Some(timeout_ns.map(|d| now() + d).unwrap_or(i64::MAX));
    }
    t.deadline.filter(|&d| d != i64::MAX)
}

fn timespec_ns(ctx: &Ctx, addr: u64) -> Result<Option<i64>> {
    if addr == 0 {
        return Ok(None);
    }
    let sec = read_u64(ctx, addr)? as i64;
    let nsec = read_u64(ctx, addr + 8)? as i64;
    Ok(Some(sec.saturating_mul(NS).saturating_add(nsec).max(0)))
}

pub fn record_epoll(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    let (epfd, events, max) = (ctx.a[0] as i32, ctx.a[1], ctx.a[2] as i32);
    let timeout_ns = match ctx.nr as i64 {
        libc::SYS_epoll_pwait2 => timespec_ns(ctx, ctx.a[3])?,
        _ => {
            let ms = ctx.a[3] as i32;
            if ms < 0 { None } else { Some(ms as i64 * 1_000_000) }
        }
    };
    let copy = match copy_of(s, ctx, epfd) {
        Ok(c) => c,
        Err(r) => return Ok(Outcome::Done(Done::ret(r))),
    };
    if max <= 0 || max > (i32::MAX / 12) {
        return Ok(Outcome::Done(Done::ret(-(libc::EINVAL as i64))));
    }
    let cap = (max as usize).min(4096);
    let mut buf = vec![0u8; cap * 12];
    let a = [copy.as_raw_fd() as u64, buf.as_mut_ptr() as u64, cap as u64, 0, 0, 0];
    let n = sfd::raw_syscall6(libc::SYS_epoll_wait, a);
    if n != 0 || timeout_ns == Some(0) {
        let mut d = Done::ret(n);
        if n > 0 {
            d = d.with_mem(events, buf[..n as usize * 12].to_vec());
        }
        return Ok(Outcome::Done(d));
    }
    let dl = deadline(s, ctx, timeout_ns);
    if dl.is_some_and(|d| d <= now()) {
        return Ok(Outcome::Done(Done::ret(0)));
    }
    let out = super::io::block_on(s, ctx, &copy, libc::EPOLLIN as u32)?;
    let _ = out;
    Ok(Outcome::Block(Wait::Ready { deadline: dl }))
}

/// One descriptor of a poll or select call.
struct Polled {
    fd: i32,
    events: i16,
    copy: Option<Rc<OwnedFd>>,
    revents: i16,
}

fn to_epoll(events: i16) -> u32 {
    let mut e = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
    if events & libc::POLLIN != 0 {
        e |= libc::EPOLLIN as u32;
    }
    if events & libc::POLLOUT != 0 {
        e |= libc::EPOLLOUT as u32;
    }
    if events & libc::POLLPRI != 0 {
        e |= libc::EPOLLPRI as u32;
    }
    if events & libc::POLLRDHUP != 0 {
        e |= libc::EPOLLRDHUP as u32;
    }
    e
}

/// Polls every entry once (zero timeout); returns how many are ready.
fn poll_once(list: &mut [Polled]) -> usize {
    let mut raw: Vec<libc::pollfd> = list
        .iter()
        .map(|p| libc::pollfd {
            fd: p.copy.as_ref().map(|c| c.as_raw_fd()).unwrap_or(-1),
            events: p.events,
            revents: 0,
        })
        .collect();
    let _ = sfd::poll_raw(&mut raw);
    let mut n = 0;
    for (p, r) in list.iter_mut().zip(&raw) {
        p.revents = if p.fd >= 0 && p.copy.is_none() { libc::POLLNVAL } else { r.revents };
        if p.revents != 0 {
            n += 1;
        }
    }
    n
}

fn park_on(s: &mut Supervisor, ctx: &Ctx, list: Vec<Polled>, dl: Option<i64>) -> Result<Outcome> {
    for p in list {
        if let Some(c) = p.copy {
            let dup = c.try_clone().map_err(|e| {
                sys::SysError::new("dup", "a copy to wait on", sys::Errno(e.raw_os_error().unwrap_or(0)))
            })?;
            s.waits.add(&s.ep, ctx.vid, dup, to_epoll(p.events))?;
        }
    }
    Ok(Outcome::Block(Wait::Ready { deadline: dl }))
}

pub fn record_poll(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    match ctx.nr as i64 {
        libc::SYS_poll | libc::SYS_ppoll => record_pollfds(s, ctx),
        _ => record_select(s, ctx),
    }
}

fn record_pollfds(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    let (fds_ptr, nfds) = (ctx.a[0], ctx.a[1] as usize);
    let timeout_ns = if ctx.nr as i64 == libc::SYS_poll {
        let ms = ctx.a[2] as i32;
        if ms < 0 { None } else { Some(ms as i64 * 1_000_000) }
    } else {
        timespec_ns(ctx, ctx.a[2])?
    };
    if nfds > 65536 {
        return Ok(Outcome::Done(Done::ret(-(libc::EINVAL as i64))));
    }
    let raw = sys::mem::read(ctx.tid, fds_ptr, nfds * 8)?;
    let mut list: Vec<Polled> = raw
        .chunks_exact(8)
        .map(|c| {
            let fd = i32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            let events = i16::from_ne_bytes([c[4], c[5]]);
            Polled { fd, events, copy: None, revents: 0 }
        })
        .collect();
    for p in list.iter_mut().filter(|p| p.fd >= 0) {
        p.copy = copy_of(s, ctx, p.fd).ok();
    }
    let n = poll_once(&mut list);
    if n > 0 || timeout_ns == Some(0) || deadline_passed(s, ctx, timeout_ns) {
        let mut out = raw.clone();
        for (i, p) in list.iter().enumerate() {
            out[i * 8 + 6..i * 8 + 8].copy_from_slice(&p.revents.to_ne_bytes());
        }
        return Ok(Outcome::Done(Done::ret(n as i64).with_mem(fds_ptr, out)));
    }
    let dl = deadline(s, ctx, timeout_ns);
    park_on(s, ctx, list, dl)
}

fn deadline_passed(s: &mut Supervisor, ctx: &Ctx, timeout_ns: Option<i64>) -> bool {
    deadline(s, ctx, timeout_ns).is_some_and(|d| d <= now())
}

fn record_select(s: &mut Supervisor, ctx: &Ctx) -> Result<Outcome> {
    let nfds = ctx.a[0] as i32;
    if !(0..=1024).contains(&nfds) {
        return Ok(Outcome::Done(Done::ret(-(libc::EINVAL as i64))));
    }
    let nfds = nfds as usize;
    let bytes = nfds.div_ceil(64) * 8;
    let sets: Vec<Option<Vec<u8>>> = (1..=3)
        .map(|i| if ctx.a[i] != 0 && bytes > 0 { sys::mem::read(ctx.tid, ctx.a[i], bytes).ok() } else { None })
        .collect();
    let (tv_ptr, pselect) = (ctx.a[4], ctx.nr as i64 == libc::SYS_pselect6);
    let timeout_ns = if tv_ptr == 0 {
        None
    } else if pselect {
        timespec_ns(ctx, tv_ptr)?
    } else {
        let sec = read_u64(ctx, tv_ptr)? as i64;
        let usec = read_u64(ctx, tv_ptr + 8)? as i64;
        Some(sec.saturating_mul(NS).saturating_add(usec * 1000).max(0))
    };
    let isset = |set: &Option<Vec<u8>>, fd: usize| set.as_ref().is_some_and(|b| b[fd / 8] & (1 << (fd % 8)) != 0);
    let mut list = vec![];
    for fd in 0..nfds {
        let mut ev = 0;
        if isset(&sets[0], fd) {
            ev |= libc::POLLIN;
        }
        if isset(&sets[1], fd) {
            ev |= libc::POLLOUT;
        }
        if isset(&sets[2], fd) {
            ev |= libc::POLLPRI;
        }
        if ev != 0 {
            match copy_of(s, ctx, fd as i32) {
                Ok(c) => list.push(Polled { fd: fd as i32, events: ev, copy: Some(c), revents: 0 }),
                Err(r) => return Ok(Outcome::Done(Done::ret(r))),
            }
        }
    }
    poll_once(&mut list);
    let mut out = vec![vec![0u8; bytes]; 3];
    let mut n = 0;
    for p in &list {
        let fd = p.fd as usize;
        let hits = [
            p.events & libc::POLLIN != 0 && p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0,
            p.events & libc::POLLOUT != 0 && p.revents & (libc::POLLOUT | libc::POLLERR) != 0,
            p.events & libc::POLLPRI != 0 && p.revents & libc::POLLPRI != 0,
        ];
        for (i, hit) in hits.iter().enumerate() {
            if *hit {
                out[i][fd / 8] |= 1 << (fd % 8);
                n += 1;
            }
        }
    }
    let passed = deadline_passed(s, ctx, timeout_ns);
    if n > 0 || timeout_ns == Some(0) || passed {
        let mut d = Done::ret(n);
        for i in 0..3 {
            if sets[i].is_some() {
                d = d.with_mem(ctx.a[i + 1], out[i].clone());
            }
        }
        if tv_ptr != 0 && !pselect {
            let left = s.tree.t(ctx.vid).deadline.filter(|&x| x != i64::MAX).map(|x| (x - now()).max(0)).unwrap_or(0);
            let mut tv = ((left / NS) as u64).to_le_bytes().to_vec();
            tv.extend_from_slice(&(((left % NS) / 1000) as u64).to_le_bytes());
            d = d.with_mem(tv_ptr, tv);
        }
        return Ok(Outcome::Done(d));
    }
    let dl = deadline(s, ctx, timeout_ns);
    park_on(s, ctx, list, dl)
}

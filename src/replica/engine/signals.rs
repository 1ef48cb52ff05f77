//! Signals on the primary: the queue of signals waiting for a syscall
//! boundary, and when a blocked call must be interrupted.
//!
//! Invariants:
//! - standard signals (< 32) are queued at most once per target, as the
//!   kernel does; real-time signals queue every instance;
//! - a queued signal is injected only into a thread that does not block it,
//!   and only at a boundary (the thread is parked), so the backup can inject
//!   it at the same point;
//! - a blocked call is interrupted only by a signal that would run a handler
//!   or end the process, never by one that is ignored.

use super::threads::{Pvid, Sched, Tree, Wait};
use super::{Ctx, Done, Result, Supervisor};
use crate::replica::log::Vid;
use std::collections::HashMap;

pub const ERESTARTSYS: i64 = 512;
pub const ERESTARTNOHAND: i64 = 514;

#[derive(Clone, Debug)]
pub struct Queued {
    pub sig: i32,
    /// The siginfo to deliver; `None` keeps the kernel's.
    pub info: Option<[u8; 128]>,
    /// Adopted from the kernel's shared pending set: the original stays
    /// pending there, so after our injection it arrives once more and must
    /// be swallowed.
    pub shared: bool,
}

#[derive(Default)]
pub struct Queues {
    thread: HashMap<Vid, Vec<Queued>>,
    process: HashMap<Pvid, Vec<Queued>>,
    /// Per (process, signal): originals still pending in the kernel whose
    /// injected copy was already delivered.
    swallow: HashMap<(Pvid, i32), u32>,
}

/// Signal masks of a thread, from `/proc/TID/status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Masks {
    pub pending: u64,
    pub shared: u64,
    pub blocked: u64,
    pub ignored: u64,
    pub caught: u64,
}

pub fn bit(sig: i32) -> u64 {
    1u64 << ((sig - 1) as u64 & 63)
}

/// Reads the signal masks of `tid`.
pub fn masks(tid: i32) -> Masks {
    let mut m = Masks::default();
    let Ok(s) = std::fs::read_to_string(format!("/proc/{tid}/status")) else { return m };
    for line in s.lines() {
        let mut it = line.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next()) else { continue };
        let v = u64::from_str_radix(v, 16).unwrap_or(0);
        match k {
            "SigPnd:" => m.pending = v,
            "ShdPnd:" => m.shared = v,
            "SigBlk:" => m.blocked = v,
            "SigIgn:" => m.ignored = v,
            "SigCgt:" => m.caught = v,
            _ => {}
        }
    }
    m
}

/// Whether delivering `sig` runs a handler or ends the process (and so must
/// interrupt a blocking call).
pub fn interrupts(m: &Masks, sig: i32) -> bool {
    if m.caught & bit(sig) != 0 {
        return true;
    }
    if m.ignored & bit(sig) != 0 {
        return false;
    }
    !matches!(
        sig,
        libc::SIGCHLD
            | libc::SIGURG
            | libc::SIGWINCH
            | libc::SIGCONT
            | libc::SIGSTOP
            | libc::SIGTSTP
            | libc::SIGTTIN
            | libc::SIGTTOU
    )
}

fn push(q: &mut Vec<Queued>, item: Queued) {
    if item.sig < 32 && q.iter().any(|x| x.sig == item.sig) {
        return;
    }
    q.push(item);
}

/// Queues a signal seen pending in the kernel, once: the kernel's mask says
/// only that some instance is pending, and the scan that reads it runs
/// every 100 ms while the signal stays blocked (a real-time signal would
/// otherwise gain ten entries a second).
fn adopt(q: &mut Vec<Queued>, sig: i32, shared: bool) {
    if !q.iter().any(|x| x.sig == sig && x.info.is_none()) {
        push(q, Queued { sig, info: None, shared });
    }
}

/// A siginfo as `kill` from outside the namespace produces it (si_pid 0).
pub fn user_info(sig: i32, code: i32) -> [u8; 128] {
    let mut i = [0u8; 128];
    i[0..4].copy_from_slice(&sig.to_ne_bytes());
    i[8..12].copy_from_slice(&code.to_ne_bytes());
    i
}

impl Queues {
    pub fn is_empty_for(&self, tree: &Tree, vid: Vid) -> bool {
        let pvid = tree.t(vid).pvid;
        self.thread.get(&vid).is_none_or(|q| q.is_empty()) && self.process.get(&pvid).is_none_or(|q| q.is_empty())
    }

    /// The first queued signal `vid` can take now (not blocked by its mask,
    /// or by `t.sigmask` while a sigsuspend-like call is pending).
    pub fn peek_deliverable(&self, tree: &Tree, vid: Vid) -> Result<Option<(i32, bool)>> {
        if self.is_empty_for(tree, vid) {
            return Ok(None);
        }
        let t = tree.t(vid);
        let blocked = t.sigmask.unwrap_or_else(|| masks(t.tid).blocked);
        let ok = |q: &Queued| blocked & bit(q.sig) == 0 || q.sig == libc::SIGKILL;
        let found = self
            .thread
            .get(&vid)
            .and_then(|q| q.iter().find(|x| ok(x)))
            .or_else(|| self.process.get(&t.pvid).and_then(|q| q.iter().find(|x| ok(x))));
        Ok(found.map(|q| (q.sig, q.shared)))
    }

    /// Notes that the kernel still holds the original of an injected
    /// shared-pending signal.
    pub fn expect_duplicate(&mut self, pvid: Pvid, sig: i32) {
        *self.swallow.entry((pvid, sig)).or_default() += 1;
    }

    /// Whether a natural delivery of `sig` in `pvid` is such an original;
    /// consumes the note.
    pub fn swallow(&mut self, pvid: Pvid, sig: i32) -> bool {
        match self.swallow.get_mut(&(pvid, sig)) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    /// Removes the entry for `sig` being delivered to `vid`; returns its info.
    pub fn take_info(&mut self, tree: &Tree, vid: Vid, sig: i32) -> Option<[u8; 128]> {
        let pvid = tree.t(vid).pvid;
        for q in [self.thread.get_mut(&vid), self.process.get_mut(&pvid)].into_iter().flatten() {
            if let Some(i) = q.iter().position(|x| x.sig == sig) {
                return q.remove(i).info;
            }
        }
        None
    }

    pub fn forget_process(&mut self, pvid: Pvid) {
        self.process.remove(&pvid);
        self.swallow.retain(|&(p, _), _| p != pvid);
    }
}

impl Supervisor {
    /// Queues a signal the primary suppressed at its delivery stop.
    pub fn queue_suppressed(&mut self, vid: Vid, sig: i32, info: [u8; 128], thread_directed: bool) -> Result<()> {
        let pvid = self.tree.t(vid).pvid;
        let item = Queued { sig, info: Some(info), shared: false };
        if thread_directed {
            push(self.sigq.thread.entry(vid).or_default(), item);
        } else {
            push(self.sigq.process.entry(pvid).or_default(), item);
        }
        self.wake_for_signals(pvid);
        Ok(())
    }

    /// Queues a process-directed signal generated by the supervisor (SIGTERM
    /// at shutdown, SIGALRM from an interval timer).
    pub fn queue_process_signal(&mut self, pvid: Pvid, sig: i32) -> Result<()> {
        let code = if sig == libc::SIGALRM { 0x80 } else { 0 };
        push(
            self.sigq.process.entry(pvid).or_default(),
            Queued { sig, info: Some(user_info(sig, code)), shared: false },
        );
        self.wake_for_signals(pvid);
        Ok(())
    }

    /// Makes blocked threads of `pvid` ready when a queued signal would
    /// interrupt them.
    fn wake_for_signals(&mut self, pvid: Pvid) {
        let threads = self.tree.p(pvid).threads.clone();
        for v in threads {
            let t = self.tree.t(v);
            let Sched::Blocked(w) = &t.sched else { continue };
            let m = masks(t.tid);
            let blocked = if let Wait::Signal { mask } = w { *mask } else { m.blocked };
            let candidates = self
                .sigq
                .thread
                .get(&v)
                .into_iter()
                .flatten()
                .chain(self.sigq.process.get(&pvid).into_iter().flatten());
            let wake = candidates.into_iter().any(|q| blocked & bit(q.sig) == 0 && interrupts(&m, q.sig));
            if wake {
                self.tree.tm(v).sched = Sched::Ready;
                let _ = self.waits.drop_thread(&self.ep, v);
            }
        }
    }

    /// Adopts signals the kernel holds pending for processes that may have
    /// received one (a child exited, a replica process called kill) into the
    /// queues, and wakes threads they interrupt.
    pub fn check_pending_signals(&mut self) -> Result<()> {
        let flagged: Vec<Pvid> = self.tree.live_procs().filter(|p| p.check_pending).map(|p| p.pvid).collect();
        for pvid in flagged {
            self.tree.pm(pvid).check_pending = false;
            let threads = self.tree.p(pvid).threads.clone();
            let mut shared = 0u64;
            for v in threads {
                let t = self.tree.t(v);
                if t.at == super::threads::At::Dead {
                    continue;
                }
                let m = masks(t.tid);
                shared |= m.shared;
                for sig in 1..=64 {
                    if m.pending & bit(sig) != 0 {
                        adopt(self.sigq.thread.entry(v).or_default(), sig, false);
                    }
                }
            }
            for sig in 1..=64 {
                let pending_dup = self.sigq.swallow.get(&(pvid, sig)).is_some_and(|&n| n > 0);
                if shared & bit(sig) != 0 && !pending_dup {
                    adopt(self.sigq.process.entry(pvid).or_default(), sig, true);
                }
            }
            self.wake_for_signals(pvid);
        }
        Ok(())
    }

    /// When a call is about to block: the answer to give instead if a queued
    /// signal must interrupt it now.
    pub fn interrupt(&mut self, ctx: &Ctx, wait: &Wait) -> Result<Option<Done>> {
        if self.sigq.is_empty_for(&self.tree, ctx.vid) {
            return Ok(None);
        }
        let m = masks(ctx.tid);
        let blocked = if let Wait::Signal { mask } = wait { *mask } else { m.blocked };
        let pvid = ctx.pvid;
        let due = self
            .sigq
            .thread
            .get(&ctx.vid)
            .into_iter()
            .flatten()
            .chain(self.sigq.process.get(&pvid).into_iter().flatten())
            .any(|q| blocked & bit(q.sig) == 0 && interrupts(&m, q.sig));
        if !due {
            return Ok(None);
        }
        Ok(Some(interrupted(ctx, wait)))
    }
}

/// The result a blocking call returns when a signal interrupts it.
pub fn interrupted(ctx: &Ctx, wait: &Wait) -> Done {
    let name = crate::replica::table::name(ctx.nr);
    match name.as_str() {
        "epoll_wait" | "epoll_pwait" | "epoll_pwait2" | "nanosleep" | "clock_nanosleep" => {
            Done::ret(-(libc::EINTR as i64))
        }
        "poll" | "ppoll" | "select" | "pselect6" => Done::ret(-ERESTARTNOHAND),
        "pause" | "rt_sigsuspend" => Done::cont(),
        "futex" if matches!(wait, Wait::Futex { deadline: Some(_), .. }) => Done::ret(-(libc::EINTR as i64)),
        _ => Done::ret(-ERESTARTSYS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_signals_coalesce_realtime_queue() {
        let mut q = vec![];
        let q0 = |sig| Queued { sig, info: None, shared: false };
        push(&mut q, q0(libc::SIGCHLD));
        push(&mut q, q0(libc::SIGCHLD));
        push(&mut q, q0(40));
        push(&mut q, q0(40));
        assert_eq!(q.iter().filter(|x| x.sig == libc::SIGCHLD).count(), 1);
        assert_eq!(q.iter().filter(|x| x.sig == 40).count(), 2);
    }

    #[test]
    fn a_signal_seen_pending_is_adopted_once_however_often_the_scan_sees_it() {
        let mut q = vec![Queued { sig: 40, info: Some([0; 128]), shared: false }];
        for _ in 0..10 {
            adopt(&mut q, 40, false);
            adopt(&mut q, libc::SIGUSR1, true);
        }
        assert_eq!(q.iter().filter(|x| x.sig == 40).count(), 2, "the sent one and one adopted");
        assert_eq!(q.iter().filter(|x| x.sig == libc::SIGUSR1).count(), 1);
    }

    #[test]
    fn ignored_and_default_ignored_signals_do_not_interrupt() {
        let m = Masks { caught: bit(libc::SIGUSR1), ignored: bit(libc::SIGPIPE), ..Default::default() };
        assert!(interrupts(&m, libc::SIGUSR1));
        assert!(!interrupts(&m, libc::SIGPIPE));
        assert!(!interrupts(&m, libc::SIGCHLD));
        assert!(interrupts(&m, libc::SIGTERM), "default action terminates");
    }

    #[test]
    fn masks_of_self_parse() {
        let m = masks(std::process::id() as i32);
        assert_eq!(m.caught & bit(libc::SIGKILL), 0);
    }
}

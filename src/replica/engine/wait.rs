//! Blocked threads on the primary: descriptor readiness through the
//! supervisor's epoll, deadlines, futex queues, children and timers.
//!
//! Invariants:
//! - a copy registered for a blocked thread is removed from the supervisor's
//!   epoll (EPOLL_CTL_DEL) before it is closed, because the replica still
//!   holds the same file and the registration would otherwise outlive the
//!   copy;
//! - a thread's registrations are dropped when it wakes, dies, or one of the
//!   descriptors is closed by the replica.

use super::threads::{At, FutexKey, Pvid, Sched, Wait};
use super::{Result, Supervisor};
use crate::replica::log::Vid;
use crate::sys::fd as sfd;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

#[derive(Default)]
pub struct Waits {
    by_thread: HashMap<Vid, Vec<OwnedFd>>,
    seq: u64,
}

impl Waits {
    /// Registers `copy` for `vid`: the thread becomes ready when any of
    /// `events` is signalled.
    pub fn add(&mut self, ep: &OwnedFd, vid: Vid, copy: OwnedFd, events: u32) -> Result<()> {
        sfd::epoll_ctl(ep.as_fd(), libc::EPOLL_CTL_ADD, copy.as_fd(), events, vid as u64)?;
        self.by_thread.entry(vid).or_default().push(copy);
        Ok(())
    }

    /// Drops every registration of `vid`.
    pub fn drop_thread(&mut self, ep: &OwnedFd, vid: Vid) -> Result<()> {
        if let Some(fds) = self.by_thread.remove(&vid) {
            for f in fds {
                let _ = sfd::epoll_ctl(ep.as_fd(), libc::EPOLL_CTL_DEL, f.as_fd(), 0, 0);
            }
        }
        Ok(())
    }

    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

fn deadline_of(w: &Wait) -> Option<i64> {
    match w {
        Wait::Ready { deadline } | Wait::Futex { deadline, .. } => *deadline,
        Wait::Sleep { deadline } => Some(*deadline),
        Wait::Child | Wait::Signal { .. } => None,
    }
}

impl Supervisor {
    /// A registered copy became ready: wake its thread.
    pub fn on_wait_ready(&mut self, tag: u64) -> Result<()> {
        let vid = tag as Vid;
        if (vid as usize) < self.tree.threads.len() && matches!(self.tree.t(vid).sched, Sched::Blocked(_)) {
            self.tree.tm(vid).sched = Sched::Ready;
        }
        self.waits.drop_thread(&self.ep, vid)
    }

    /// Parks the holder on `wait`.
    pub fn block(&mut self, vid: Vid, wait: Wait) {
        let seq = self.waits.next_seq();
        let t = self.tree.tm(vid);
        t.sched = Sched::Blocked(wait);
        t.blocked_seq = seq;
        if self.holder == Some(vid) {
            self.holder = None;
        }
    }

    /// The earliest deadline among blocked threads and interval timers.
    pub fn next_deadline(&self) -> Option<i64> {
        let threads = self.tree.live().filter_map(|t| match &t.sched {
            Sched::Blocked(w) => deadline_of(w),
            _ => None,
        });
        let timers = self.tree.live_procs().filter_map(|p| p.itimer.map(|(d, _)| d));
        threads.chain(timers).min()
    }

    /// Wakes threads whose deadline passed.
    pub fn expire_deadlines(&mut self) -> Result<()> {
        let now = sfd::clock_ns(libc::CLOCK_MONOTONIC);
        let due: Vec<Vid> = self
            .tree
            .live()
            .filter(|t| matches!(&t.sched, Sched::Blocked(w) if deadline_of(w).is_some_and(|d| d <= now)))
            .map(|t| t.vid)
            .collect();
        for v in due {
            self.tree.tm(v).sched = Sched::Ready;
            self.waits.drop_thread(&self.ep, v)?;
        }
        self.fire_timers()
    }

    /// Fires expired ITIMER_REAL timers as SIGALRM.
    pub fn fire_timers(&mut self) -> Result<()> {
        let now = sfd::clock_ns(libc::CLOCK_MONOTONIC);
        let due: Vec<Pvid> =
            self.tree.live_procs().filter(|p| p.itimer.is_some_and(|(d, _)| d <= now)).map(|p| p.pvid).collect();
        for p in due {
            let (d, interval) = self.tree.p(p).itimer.unwrap_or((now, 0));
            self.tree.pm(p).itimer = if interval > 0 {
                let missed = (now - d) / interval + 1;
                Some((d + missed * interval, interval))
            } else {
                None
            };
            self.queue_process_signal(p, libc::SIGALRM)?;
        }
        Ok(())
    }

    /// Wakes threads of process `pvid` waiting for a child.
    pub fn wake_child_waiters(&mut self, pvid: Pvid) -> Result<()> {
        let threads = self.tree.p(pvid).threads.clone();
        for v in threads {
            if self.tree.t(v).sched == Sched::Blocked(Wait::Child) {
                self.tree.tm(v).sched = Sched::Ready;
            }
        }
        Ok(())
    }

    /// Wakes up to `n` waiters on `key` whose bitset intersects `bitset`, in
    /// the order they blocked. Returns how many woke.
    pub fn futex_wake(&mut self, key: FutexKey, n: u32, bitset: u32) -> u32 {
        let mut waiters: Vec<(u64, Vid)> = self
            .tree
            .live()
            .filter(|t| matches!(&t.sched, Sched::Blocked(Wait::Futex { key: k, bitset: b, .. }) if *k == key && b & bitset != 0))
            .map(|t| (t.blocked_seq, t.vid))
            .collect();
        waiters.sort();
        let mut woke = 0;
        for (_, v) in waiters.into_iter().take(n as usize) {
            let t = self.tree.tm(v);
            t.sched = Sched::Ready;
            t.woken = true;
            woke += 1;
        }
        woke
    }

    /// Moves up to `n` waiters from `from` to `to` (FUTEX_REQUEUE).
    pub fn futex_requeue(&mut self, from: FutexKey, to: FutexKey, n: u32) -> u32 {
        let mut moved = 0;
        for vid in self.tree.live_vids() {
            if moved >= n {
                break;
            }
            if let Sched::Blocked(Wait::Futex { key, .. }) = &mut self.tree.tm(vid).sched
                && *key == from
            {
                *key = to;
                moved += 1;
            }
        }
        moved
    }

    /// After a thread of `pvid` exited, the kernel cleared its tid word and
    /// woke waiters on it (CLONE_CHILD_CLEARTID) behind our back: re-read
    /// every parked futex word of the process and wake those that changed.
    pub fn recheck_futex_words(&mut self, pvid: Pvid) {
        let Some(reader) = self.tree.p(pvid).threads.iter().copied().find(|&v| self.tree.t(v).at != At::Dead) else {
            return;
        };
        let tid = self.tree.t(reader).tid;
        let parked: Vec<(Vid, u64, u32)> = self
            .tree
            .live()
            .filter(|t| t.pvid == pvid)
            .filter_map(|t| match t.sched {
                Sched::Blocked(Wait::Futex { addr, val, .. }) => Some((t.vid, addr, val)),
                _ => None,
            })
            .collect();
        for (v, addr, val) in parked {
            let now = crate::sys::mem::read(tid, addr, 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            if now.ok() != Some(val) {
                let t = self.tree.tm(v);
                t.sched = Sched::Ready;
                t.woken = true;
            }
        }
    }
}

//! The supervisor's view of the replica tree: threads and processes, keyed by
//! virtual id and by host tid.
//!
//! Invariants:
//! - virtual ids are assigned in creation order (the root thread is 0), so
//!   the primary and the backup give every thread the same id;
//! - a thread is `Parked` whenever it is not the token holder: waiting in an
//!   unanswered notification or stopped at a ptrace stop, so it cannot run
//!   user code;
//! - a process's pidfd lives exactly as long as the process does in our table.

use crate::replica::log::Vid;
use crate::sys::seccomp::Notif;
use std::collections::{BTreeSet, HashMap};
use std::os::fd::OwnedFd;

/// Index of a process in [`Tree::procs`] (creation order).
pub type Pvid = u32;

/// Where a thread is, as far as the kernel is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// Created; its first ptrace stop has not been seen yet.
    Unborn,
    /// Running user code or inside a native syscall (only the holder).
    Running,
    /// Waiting in an intercepted call we have not answered.
    Notif(Notif),
    /// Stopped at a ptrace stop.
    Stop(StopKind),
    /// Inside vfork, waiting for its child to exec or exit.
    InVfork,
    /// Exit seen (or expected, for `dying`).
    Dead,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopKind {
    /// The stop every new tracee starts with.
    Initial,
    /// `PTRACE_EVENT_EXEC` (replay keeps the thread here until the log's
    /// exec record supplies AT_RANDOM); the value is the tid before exec.
    Exec(i32),
    /// `PTRACE_EVENT_VFORK_DONE`.
    VforkDone,
    /// A signal-delivery stop.
    Signal(i32),
    /// A SIGSEGV from a trapped rdtsc/rdtscp (replay waits for the log).
    Rdtsc,
}

/// What a blocked thread waits for (primary only).
#[derive(Clone, Debug, PartialEq)]
pub enum Wait {
    /// Readiness of descriptors (copies registered in the supervisor's
    /// epoll), or the deadline.
    Ready { deadline: Option<i64> },
    /// A futex wake on `key` (the word at `addr` held `val`), or the deadline.
    Futex { key: FutexKey, addr: u64, val: u32, bitset: u32, deadline: Option<i64> },
    /// A child exiting.
    Child,
    /// Only a signal (pause, sigsuspend with this mask).
    Signal { mask: u64 },
    /// Until this CLOCK_MONOTONIC time (ns).
    Sleep { deadline: i64 },
}

/// Identifies a futex word the way the kernel would.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FutexKey {
    /// A private mapping: the process and the address.
    Private(Pvid, u64),
    /// A shared mapping: the backing object and the offset.
    Shared { dev: u64, ino: u64, offset: u64 },
}

/// Scheduling state on the primary.
#[derive(Clone, Debug, PartialEq)]
pub enum Sched {
    /// Holds the token.
    Holder,
    /// May take the token.
    Ready,
    /// Waits; not runnable until the condition holds.
    Blocked(Wait),
    /// Not schedulable (unborn, in vfork, dead).
    Idle,
}

pub struct Thread {
    pub vid: Vid,
    pub tid: i32,
    /// The thread id inside the replica's PID namespace.
    pub nstid: i32,
    pub pvid: Pvid,
    pub at: At,
    pub sched: Sched,
    /// The exit is expected (group exit, fatal signal) but not yet reported.
    pub dying: bool,
    /// A signal we injected and whose delivery stop we await.
    pub inject: Option<i32>,
    /// A signal this thread just sent to its own process (delivered
    /// synchronously when it arrives).
    pub self_signal: Option<i32>,
    /// The signal mask a pending sigsuspend-like call will wait with.
    pub sigmask: Option<u64>,
    /// Order in which threads blocked (futex wake order is FIFO).
    pub blocked_seq: u64,
    /// Futex waits satisfied by a wake: answer 0 when scheduled.
    pub woken: bool,
    /// Set when the thread yielded once at its pending sched_yield.
    pub yielded: bool,
    /// Nanoseconds (CLOCK_MONOTONIC) when it got the token.
    pub since: i64,
    /// Result progress of a partially done blocking call (bytes written).
    pub progress: u64,
    /// Deadline (CLOCK_MONOTONIC ns) of the pending call, kept across
    /// wake-ups; `i64::MAX` for none.
    pub deadline: Option<i64>,
    /// For a vfork child: the parent waiting for it.
    pub vfork_parent: Option<Vid>,
}

pub struct Proc {
    pub pvid: Pvid,
    pub tgid: i32,
    pub nspid: i32,
    pub parent: Option<Pvid>,
    /// Children its `wait4` may still reap: pruned once reaped (see
    /// `calls::sync`), so a wait never walks every child it ever had.
    pub children: Vec<Pvid>,
    pub threads: Vec<Vid>,
    pub pidfd: Option<OwnedFd>,
    /// Exit of the whole process is under way (exit_group, fatal signal).
    pub exiting: bool,
    pub exited: bool,
    /// ITIMER_REAL: next expiry (CLOCK_MONOTONIC ns) and interval (ns).
    pub itimer: Option<(i64, i64)>,
    /// Check the kernel's pending signals of this process before the next
    /// scheduling decision.
    pub check_pending: bool,
}

/// All threads and processes ever seen. Dead ones keep their place (vids
/// and pvids index these vectors), but the per-call scans walk only the
/// living ([`Tree::live`], [`Tree::live_procs`]): a server that forks a
/// child a minute (redis saving) would otherwise make every intercepted
/// call slower with every child it ever had.
#[derive(Default)]
pub struct Tree {
    pub threads: Vec<Thread>,
    pub procs: Vec<Proc>,
    /// Threads not yet marked dead, in vid order (scans keep their order).
    alive: BTreeSet<Vid>,
    /// Processes not yet marked exited, in pvid order.
    running: BTreeSet<Pvid>,
    /// Host tid of every thread not yet reaped: a dead thread's tid is
    /// forgotten, so a new thread that reuses it is never taken for it.
    by_tid: HashMap<i32, Vid>,
    /// How each dead thread ended.
    pub exits: HashMap<Vid, crate::replica::log::Exit>,
}

impl Tree {
    /// Adds a thread (and, when `new_process`, its process) and returns its vid.
    pub fn add(&mut self, tid: i32, nspid: i32, pvid_of_parent: Option<Pvid>, new_process: bool) -> Vid {
        let nstid = nspid;
        let vid = self.threads.len() as Vid;
        let pvid = if new_process {
            let pvid = self.procs.len() as Pvid;
            self.procs.push(Proc {
                pvid,
                tgid: tid,
                nspid,
                parent: pvid_of_parent,
                children: vec![],
                threads: vec![],
                pidfd: crate::sys::pidfd::open(tid).ok(),
                exiting: false,
                exited: false,
                itimer: None,
                check_pending: false,
            });
            self.running.insert(pvid);
            if let Some(parent) = pvid_of_parent {
                self.procs[parent as usize].children.push(pvid);
            }
            pvid
        } else {
            pvid_of_parent.unwrap_or(0)
        };
        self.procs[pvid as usize].threads.push(vid);
        self.threads.push(Thread {
            vid,
            tid,
            nstid,
            pvid,
            at: At::Unborn,
            sched: Sched::Idle,
            dying: false,
            inject: None,
            self_signal: None,
            sigmask: None,
            blocked_seq: 0,
            woken: false,
            yielded: false,
            since: 0,
            progress: 0,
            deadline: None,
            vfork_parent: None,
        });
        self.by_tid.insert(tid, vid);
        self.alive.insert(vid);
        vid
    }

    /// The thread is gone (reaped, or replaced by an exec): it leaves the
    /// scans, and its tid stops naming it.
    pub fn mark_dead(&mut self, vid: Vid) {
        let tid = self.threads[vid as usize].tid;
        self.threads[vid as usize].at = At::Dead;
        self.alive.remove(&vid);
        if self.by_tid.get(&tid) == Some(&vid) {
            self.by_tid.remove(&tid);
        }
    }

    /// Every thread of the process is dead.
    pub fn mark_exited(&mut self, pvid: Pvid) {
        self.procs[pvid as usize].exited = true;
        self.running.remove(&pvid);
    }

    pub fn vid_of(&self, tid: i32) -> Option<Vid> {
        self.by_tid.get(&tid).copied()
    }

    /// Renames a thread after a non-leader exec took over the leader's tid.
    pub fn retid(&mut self, vid: Vid, tid: i32) {
        let old = self.threads[vid as usize].tid;
        self.by_tid.remove(&old);
        self.by_tid.insert(tid, vid);
        self.threads[vid as usize].tid = tid;
    }

    pub fn t(&self, vid: Vid) -> &Thread {
        &self.threads[vid as usize]
    }

    pub fn tm(&mut self, vid: Vid) -> &mut Thread {
        &mut self.threads[vid as usize]
    }

    pub fn p(&self, pvid: Pvid) -> &Proc {
        &self.procs[pvid as usize]
    }

    pub fn pm(&mut self, pvid: Pvid) -> &mut Proc {
        &mut self.procs[pvid as usize]
    }

    /// The process of thread `vid`.
    pub fn proc_of(&self, vid: Vid) -> &Proc {
        self.p(self.t(vid).pvid)
    }

    /// Threads still alive, in vid order.
    pub fn live(&self) -> impl Iterator<Item = &Thread> + Clone {
        self.alive.iter().map(|&v| &self.threads[v as usize]).filter(|t| t.at != At::Dead)
    }

    /// Vids of the threads still alive, in order (for loops that change them).
    pub fn live_vids(&self) -> Vec<Vid> {
        self.live().map(|t| t.vid).collect()
    }

    /// Processes not exited, in pvid order.
    pub fn live_procs(&self) -> impl Iterator<Item = &Proc> + Clone {
        self.running.iter().map(|&p| &self.procs[p as usize]).filter(|p| !p.exited)
    }

    /// Pvids of the processes not exited, in order.
    pub fn live_pvids(&self) -> Vec<Pvid> {
        self.live_procs().map(|p| p.pvid).collect()
    }

    /// True when some thread's transition is still in flight: born but not
    /// yet stopped, or expected to exit but not yet reported.
    pub fn unsettled(&self) -> bool {
        self.live().any(|t| t.at == At::Unborn || t.dying)
    }

    /// A short name for messages: `pid 2 (nginx) thread 3`.
    pub fn describe(&self, vid: Vid) -> String {
        let t = self.t(vid);
        let p = self.p(t.pvid);
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", p.tgid)).unwrap_or_default();
        format!("pid {} ({}) thread {}", p.nspid, comm.trim(), vid)
    }

    /// Host tid of a namespace pid, if the process is ours.
    pub fn host_of_nspid(&self, nspid: i32) -> Option<&Proc> {
        self.live_procs().find(|p| p.nspid == nspid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Host tids above any pid_max, so no pidfd is opened for them.
    const T: i32 = 5_000_000;

    #[test]
    fn the_dead_leave_the_scans_and_their_tids_name_nobody() {
        let mut tree = Tree::default();
        let root = tree.add(T, 1, None, true);
        let worker = tree.add(T + 1, 2, Some(0), true);
        let thread = tree.add(T + 2, 3, Some(1), false);
        let child = tree.add(T + 3, 4, Some(1), true);
        assert_eq!(tree.live_vids(), [root, worker, thread, child]);
        tree.mark_dead(child);
        tree.mark_exited(tree.t(child).pvid);
        assert_eq!(tree.live_vids(), [root, worker, thread], "vid order kept");
        assert_eq!(tree.live_pvids(), [0, 1]);
        assert_eq!(tree.vid_of(T + 3), None, "a reaped thread's tid is free for a new thread");
        assert_eq!(tree.t(child).at, At::Dead, "its record stays, at its vid");
        // The kernel hands the tid to a new thread of the tree.
        let reused = tree.add(T + 3, 5, Some(1), true);
        assert_eq!(tree.vid_of(T + 3), Some(reused));
        assert!(tree.host_of_nspid(4).is_none() && tree.host_of_nspid(5).is_some());
        assert!(tree.unsettled(), "the new thread is unborn");
    }

    #[test]
    fn an_exec_that_takes_the_leaders_tid_keeps_it_for_the_execer() {
        let mut tree = Tree::default();
        let leader = tree.add(T, 1, None, true);
        let execer = tree.add(T + 1, 2, Some(0), false);
        tree.mark_dead(leader);
        tree.retid(execer, T);
        assert_eq!(tree.vid_of(T), Some(execer));
        assert_eq!(tree.vid_of(T + 1), None);
        assert_eq!(tree.live_vids(), [execer]);
    }
}

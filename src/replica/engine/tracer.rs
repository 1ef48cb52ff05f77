//! ptrace stops: new threads and processes, exec (auxv rewriting), exits,
//! signal-delivery stops and the rdtsc fault.
//!
//! Signal policy (both nodes apply it identically, so it is deterministic):
//! - a signal we injected is delivered at its stop (its siginfo logged on
//!   the primary, restored from the log on the backup);
//! - faults (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS with a kernel
//!   si_code) and signals a replica process sent (si_pid inside the tree,
//!   except SIGCHLD) are delivered where they arrive: both nodes reach that
//!   point in the same state;
//! - a SIGSEGV from a trapped rdtsc/rdtscp is emulated: the primary reads the
//!   TSC and logs it, the backup uses the logged value;
//! - everything else (signals from outside, SIGCHLD, whose timing depends on
//!   when the supervisor reaped the child) is suppressed: the primary queues
//!   it and injects it at a syscall boundary, the backup drops it.

use super::threads::{At, Sched, StopKind};
use super::{EngineError, Result, Supervisor};
use crate::replica::log::{Event, Exit, Vid};
use crate::sys::{self, ptrace};
use std::io::Read;

const AT_NULL: u64 = 0;
const AT_IGNORE: u64 = 1;
const AT_RANDOM: u64 = 25;
const AT_SYSINFO_EHDR: u64 = 33;
const SI_KERNEL: i32 = 0x80;

/// The id of host tid `tid` inside its (innermost) PID namespace.
pub fn nspid_of(tid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

fn tgid_of(tid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Tgid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// How a dead thread ended, if we saw it.
pub fn exit_of(tree: &super::threads::Tree, vid: Vid) -> Option<Exit> {
    tree.exits.get(&vid).copied()
}

fn siginfo_i32(info: &[u8; 128], off: usize) -> i32 {
    i32::from_ne_bytes([info[off], info[off + 1], info[off + 2], info[off + 3]])
}

impl Supervisor {
    /// Handles one `waitpid` report.
    pub fn on_stop(&mut self, pid: i32, status: i32) -> Result<()> {
        if pid == self.init_pid {
            if matches!(ptrace::decode(status), ptrace::Stop::Exited(_) | ptrace::Stop::Killed(_)) {
                self.init_pid = -1;
            }
            return Ok(());
        }
        let Some(vid) = self.tree.vid_of(pid) else {
            // A new thread's first stop can arrive before its parent's event.
            self.early_stops.push((pid, status));
            return Ok(());
        };
        tracing::trace!("thread {vid} (tid {pid}): {:?}", ptrace::decode(status));
        match ptrace::decode(status) {
            ptrace::Stop::Exited(c) => self.on_exit(vid, Exit::Code(c)),
            ptrace::Stop::Killed(s) => self.on_exit(vid, Exit::Signal(s)),
            ptrace::Stop::Event(ev) => self.on_event(vid, ev),
            ptrace::Stop::GroupStop(_) => {
                let t = self.tree.tm(vid);
                if t.at == At::Unborn {
                    t.at = At::Stop(StopKind::Initial);
                    if t.sched == Sched::Idle {
                        t.sched = Sched::Ready;
                    }
                    Ok(())
                } else {
                    // A group-stop we did not ask for: keep the thread going.
                    Ok(ptrace::cont(pid, 0)?)
                }
            }
            ptrace::Stop::Signal(sig) => self.on_signal_stop(vid, sig),
        }
    }

    fn on_event(&mut self, vid: Vid, ev: i32) -> Result<()> {
        let tid = self.tree.t(vid).tid;
        match ev {
            libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK | libc::PTRACE_EVENT_CLONE => self.on_spawn(vid, ev),
            libc::PTRACE_EVENT_EXEC => self.on_exec_stop(vid),
            libc::PTRACE_EVENT_VFORK_DONE => {
                let t = self.tree.tm(vid);
                t.at = At::Stop(StopKind::VforkDone);
                t.sched = Sched::Ready;
                Ok(())
            }
            libc::PTRACE_EVENT_EXIT => {
                self.tree.tm(vid).dying = true;
                Ok(ptrace::cont(tid, 0)?)
            }
            _ => Ok(ptrace::cont(tid, 0)?),
        }
    }

    fn on_spawn(&mut self, parent: Vid, ev: i32) -> Result<()> {
        let ptid = self.tree.t(parent).tid;
        let ppvid = self.tree.t(parent).pvid;
        let newtid = ptrace::event_msg(ptid)? as i32;
        let ptgid = self.tree.p(ppvid).tgid;
        let thread = ev == libc::PTRACE_EVENT_CLONE && tgid_of(newtid) == Some(ptgid);
        let nspid = nspid_of(newtid).unwrap_or(0);
        let child = self.tree.add(newtid, nspid, Some(ppvid), !thread);
        if !thread {
            self.fds.tree_pids.insert(newtid);
        }
        self.log(&Event::Spawn { parent, child, nspid, thread })?;
        if ev == libc::PTRACE_EVENT_VFORK {
            self.tree.tm(child).vfork_parent = Some(parent);
            let p = self.tree.tm(parent);
            p.at = At::InVfork;
            p.sched = Sched::Idle;
            if self.holder == Some(parent) {
                self.holder = None;
            }
        } else {
            self.tree.tm(parent).at = At::Running;
        }
        if let Some(i) = self.early_stops.iter().position(|&(p, _)| p == newtid) {
            let (p, st) = self.early_stops.remove(i);
            self.on_stop(p, st)?;
        }
        ptrace::cont(ptid, 0)?;
        Ok(())
    }

    fn on_exec_stop(&mut self, vid: Vid) -> Result<()> {
        let tid = self.tree.t(vid).tid;
        let old = ptrace::event_msg(tid)? as i32;
        let mut vid = vid;
        if old != tid
            && let Some(execer) = self.tree.vid_of(old)
        {
            // A non-leader thread exec'd and took over the leader's tid.
            self.tree.mark_dead(vid);
            self.tree.retid(execer, tid);
            vid = execer;
        }
        let pvid = self.tree.t(vid).pvid;
        for &other in &self.tree.p(pvid).threads.clone() {
            if other != vid && self.tree.t(other).at != At::Dead {
                self.tree.tm(other).dying = true;
            }
        }
        self.fds.forget_process(pvid);
        // The exec ends a vfork: the child no longer holds its parent.
        self.tree.tm(vid).vfork_parent = None;
        if self.recording() {
            let (exe, digest) = exe_digest(tid)?;
            let random = rewrite_auxv(tid, None)?;
            self.log(&Event::Exec { tid: vid, exe, digest, random })?;
            self.tree.tm(vid).at = At::Running;
            ptrace::cont(tid, 0)?;
        } else {
            self.tree.tm(vid).at = At::Stop(StopKind::Exec(old));
        }
        Ok(())
    }

    /// Replay: completes the exec stop with the logged AT_RANDOM block after
    /// checking that the same executable was loaded.
    pub fn replay_exec(&mut self, vid: Vid, exe: &[u8], digest: &[u8; 32], random: &[u8; 16]) -> Result<()> {
        self.replay_until(vid, "an execve", |t| matches!(t.at, At::Stop(StopKind::Exec(_))))?;
        let tid = self.tree.t(vid).tid;
        let (here, hdigest) = exe_digest(tid)?;
        if here != exe || &hdigest != digest {
            return Err(EngineError::Setup(format!(
                "the replica executed {} whose contents differ from the recording's {} (the executables on both \
                 nodes must be identical)",
                String::from_utf8_lossy(&here),
                String::from_utf8_lossy(exe)
            )));
        }
        rewrite_auxv(tid, Some(random))?;
        self.tree.tm(vid).at = At::Running;
        ptrace::cont(tid, 0)?;
        Ok(())
    }

    /// Replay: checks that the holder created the logged thread or process.
    pub fn replay_spawn(&mut self, parent: Vid, child: Vid, nspid: i32, thread: bool) -> Result<()> {
        self.replay_until(parent, "a fork or clone", |_| true)?;
        let deadline = std::time::Instant::now() + self.opts.stall;
        while self.tree.threads.len() <= child as usize {
            if let At::Notif(n) = self.tree.t(parent).at {
                let msg = format!(
                    "the thread called {}; the log expects it to create thread {child}",
                    crate::replica::table::name(n.data.nr as u32)
                );
                return Err(self.diverged_simple(parent, &msg));
            }
            if std::time::Instant::now() > deadline {
                return Err(self.diverged_simple(parent, "the thread did not fork or clone as the log expects"));
            }
            self.pump(200)?;
            self.drain_stops()?;
        }
        let c = self.tree.t(child);
        let is_thread = self.tree.p(c.pvid).threads.first() != Some(&child);
        if c.nstid != nspid || is_thread != thread {
            return Err(self.diverged_simple(
                child,
                &format!(
                    "created as pid {} (thread: {is_thread}); the recording had pid {nspid} (thread: {thread})",
                    c.nstid
                ),
            ));
        }
        Ok(())
    }

    fn on_exit(&mut self, vid: Vid, how: Exit) -> Result<()> {
        self.tree.exits.insert(vid, how);
        let pvid = self.tree.t(vid).pvid;
        {
            self.tree.mark_dead(vid);
            let t = self.tree.tm(vid);
            t.sched = Sched::Idle;
            t.dying = false;
        }
        self.waits.drop_thread(&self.ep, vid)?;
        let group = matches!(how, Exit::Signal(_)) || self.tree.p(pvid).exiting;
        let threads = self.tree.p(pvid).threads.clone();
        if group {
            for &o in &threads {
                if self.tree.t(o).at != At::Dead {
                    self.tree.tm(o).dying = true;
                }
            }
        }
        // A vfork child leaving frees its parent (VFORK_DONE follows).
        if let Some(parent) = self.tree.t(vid).vfork_parent {
            let _ = parent;
        }
        if self.recording() && !group {
            // CLONE_CHILD_CLEARTID woke futex waiters behind our back.
            self.recheck_futex_words(pvid);
        }
        if threads.iter().all(|&o| self.tree.t(o).at == At::Dead) {
            self.tree.mark_exited(pvid);
            let p = self.tree.pm(pvid);
            p.pidfd = None;
            p.itimer = None;
            self.fds.forget_process(pvid);
            self.sigq.forget_process(pvid);
            if pvid == 0 {
                self.root_exit = Some(how);
            }
            if let Some(live) = &self.live
                && let Ok(mut st) = live.lock()
            {
                st.process_gone(pvid);
            }
            if let Some(parent) = self.tree.p(pvid).parent {
                self.tree.pm(parent).check_pending = true;
                self.wake_child_waiters(parent)?;
            }
        }
        if self.holder == Some(vid) {
            self.log(&Event::Exited { tid: vid, how })?;
            if self.recording() {
                self.holder = None;
            }
        }
        Ok(())
    }

    fn on_signal_stop(&mut self, vid: Vid, sig: i32) -> Result<()> {
        let tid = self.tree.t(vid).tid;
        let info = ptrace::get_siginfo(tid)?;
        let code = siginfo_i32(&info, 8);
        let sender = siginfo_i32(&info, 16);
        if self.tree.t(vid).inject == Some(sig) {
            if self.recording() {
                if let Some(queued) = self.sigq.take_info(&self.tree, vid, sig) {
                    ptrace::set_siginfo(tid, &queued)?;
                }
                let info = ptrace::get_siginfo(tid)?;
                self.log(&Event::Deliver { tid: vid, sig, info: info.to_vec() })?;
                let t = self.tree.tm(vid);
                t.inject = None;
                t.at = At::Running;
                ptrace::cont(tid, sig)?;
            } else {
                self.tree.tm(vid).at = At::Stop(StopKind::Signal(sig));
            }
            return Ok(());
        }
        if sig == libc::SIGSEGV
            && code == SI_KERNEL
            && let Some(len) = rdtsc_at(tid)?
        {
            if self.recording() {
                let (tsc, aux) = sys::tsc::read();
                let aux = (len == 3).then_some(aux);
                emulate_rdtsc(tid, tsc, aux, len)?;
                self.stats.rdtsc += 1;
                self.log(&Event::Rdtsc { tid: vid, tsc, aux })?;
                ptrace::cont(tid, 0)?;
            } else {
                self.tree.tm(vid).at = At::Stop(StopKind::Rdtsc);
            }
            return Ok(());
        }
        let fault =
            matches!(sig, libc::SIGSEGV | libc::SIGBUS | libc::SIGFPE | libc::SIGILL | libc::SIGTRAP | libc::SIGSYS)
                && code > 0
                && code != SI_KERNEL;
        let from_tree = code <= 0 && sig != libc::SIGCHLD && self.tree.host_of_nspid(sender).is_some() && sender != 0;
        if fault || from_tree {
            self.tree.tm(vid).at = At::Running;
            ptrace::cont(tid, sig)?;
            return Ok(());
        }
        // From outside the tree, or SIGCHLD: suppress; the primary injects it
        // at a syscall boundary.
        let pvid = self.tree.t(vid).pvid;
        if self.recording() && !self.sigq.swallow(pvid, sig) {
            let thread_directed = code == libc::SI_TKILL;
            self.queue_suppressed(vid, sig, info, thread_directed)?;
        }
        let t = self.tree.tm(vid);
        if !matches!(t.at, At::Notif(_)) {
            t.at = At::Running;
        }
        ptrace::cont(tid, 0)?;
        Ok(())
    }

    /// Replay: emulates a trapped rdtsc with the logged value.
    pub fn replay_rdtsc(&mut self, vid: Vid, tsc: u64, aux: Option<u32>) -> Result<()> {
        self.replay_until(vid, "an rdtsc", |t| t.at == At::Stop(StopKind::Rdtsc))?;
        let tid = self.tree.t(vid).tid;
        let Some(len) = rdtsc_at(tid)? else {
            return Err(self.diverged_simple(vid, "stopped at a fault that is not rdtsc"));
        };
        if (len == 3) != aux.is_some() {
            return Err(self.diverged_simple(vid, "rdtsc and rdtscp differ from the recording"));
        }
        emulate_rdtsc(tid, tsc, aux, len)?;
        self.stats.rdtsc += 1;
        self.tree.tm(vid).at = At::Running;
        ptrace::cont(tid, 0)?;
        Ok(())
    }
}

/// The length of the rdtsc (2) or rdtscp (3) instruction at the thread's
/// instruction pointer, if that is what faulted.
fn rdtsc_at(tid: i32) -> Result<Option<u64>> {
    let regs = ptrace::get_regs(tid)?;
    let Ok(code) = sys::mem::read(tid, regs.rip, 3) else { return Ok(None) };
    Ok(match code.as_slice() {
        [0x0f, 0x31, _] => Some(2),
        [0x0f, 0x01, 0xf9] => Some(3),
        _ => None,
    })
}

fn emulate_rdtsc(tid: i32, tsc: u64, aux: Option<u32>, len: u64) -> Result<()> {
    let mut regs = ptrace::get_regs(tid)?;
    regs.rax = tsc & 0xffff_ffff;
    regs.rdx = tsc >> 32;
    if let Some(a) = aux {
        regs.rcx = a as u64;
    }
    regs.rip += len;
    ptrace::set_regs(tid, &regs)?;
    Ok(())
}

/// The path and BLAKE3 digest of the executable a thread runs.
pub fn exe_digest(tid: i32) -> Result<(Vec<u8>, [u8; 32])> {
    let link = format!("/proc/{tid}/exe");
    let path = std::fs::read_link(&link).map(|p| p.into_os_string().into_encoded_bytes()).unwrap_or_default();
    let mut f = std::fs::File::open(&link).map_err(|e| EngineError::Setup(format!("{link}: {e}")))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| EngineError::Setup(format!("{link}: {e}")))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok((path, *h.finalize().as_bytes()))
}

/// At an exec stop: hides the vDSO (AT_SYSINFO_EHDR becomes AT_IGNORE) and
/// reads (record) or writes (replay) the 16 AT_RANDOM bytes.
pub fn rewrite_auxv(tid: i32, random: Option<&[u8; 16]>) -> Result<[u8; 16]> {
    let sp = ptrace::get_regs(tid)?.rsp;
    let word = |i: u64| -> Result<u64> {
        let b = sys::mem::read(tid, sp + 8 * i, 8)?;
        Ok(u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    };
    let argc = word(0)?;
    let mut i = argc + 2; // argc, argv[argc], NULL
    while word(i)? != 0 {
        i += 1;
        if i > 1 << 20 {
            return Err(EngineError::Internal("unterminated environment on the new stack".into()));
        }
    }
    i += 1;
    let mut rand_addr = None;
    for _ in 0..512 {
        let ty = word(i)?;
        if ty == AT_NULL {
            break;
        }
        if ty == AT_SYSINFO_EHDR {
            sys::mem::write(tid, sp + 8 * i, &AT_IGNORE.to_ne_bytes())?;
        } else if ty == AT_RANDOM {
            rand_addr = Some(word(i + 1)?);
        }
        i += 2;
    }
    let Some(addr) = rand_addr else {
        return Err(EngineError::Internal("the new program's auxv has no AT_RANDOM".into()));
    };
    let mut out = [0u8; 16];
    match random {
        Some(r) => {
            sys::mem::write(tid, addr, r)?;
            out = *r;
        }
        None => out.copy_from_slice(&sys::mem::read(tid, addr, 16)?),
    }
    Ok(out)
}

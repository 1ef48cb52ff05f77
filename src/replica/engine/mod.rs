//! The supervisor: one tracer thread that owns the replica tree and runs one
//! of its threads at a time.
//!
//! The same engine records (primary) and replays (backup):
//! - **record**: the token holder runs until it makes an intercepted call;
//!   the supervisor performs or answers the call ([`calls::record`]), logs
//!   the answer, and either lets the holder go on or hands the token to
//!   another ready thread (logged as [`Event::Switch`]). Blocking calls park
//!   their thread ([`Sched::Blocked`]) and the token moves on.
//! - **replay**: the log drives everything. Each event names the thread it
//!   belongs to; the supervisor lets exactly that thread run to the point the
//!   event describes and answers as the log says ([`calls::replay`]),
//!   checking every output digest on the way.
//!
//! Invariants:
//! - only the token holder ever runs user code; every other thread is parked
//!   in an unanswered notification or at a ptrace stop (see `threads`);
//! - all ptrace calls come from the thread that runs [`Supervisor::run`];
//! - the log is one ordered stream: the order events are appended on the
//!   primary is the order they are applied on the backup;
//! - before the token moves, in-flight transitions (new threads' first stops,
//!   exits) are settled, so waits on children see the same state on both.

pub mod calls;
pub mod fds;
pub mod live;
pub mod report;
pub mod signals;
pub mod threads;
pub mod tracer;
pub mod wait;

use crate::replica::log::{Answer, Call, Check, Event, Mem, Vid};
use crate::replica::table::{self, Class};
use crate::sys::{self, fd as sfd, seccomp};
pub use report::{Divergence, EngineError, Result};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;
use threads::{At, Pvid, Sched, StopKind, Tree};

/// How often blocked processes are checked for signals from outside.
const SIGNAL_SCAN_NS: i64 = 100_000_000;

/// epoll tags in the supervisor's own set.
const TAG_NOTIF: u64 = u64::MAX;
const TAG_SIGNAL: u64 = u64::MAX - 1;
const TAG_COMMAND: u64 = u64::MAX - 2;

/// Requests from other threads of the daemon to the engine's thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Deliver this signal to the replica's top processes at a recorded
    /// point (record mode), as an operator's `kill` would.
    Signal(i32),
}

/// The queue other threads post [`Command`]s to.
#[derive(Clone)]
pub struct Commands {
    pub wake: std::sync::Arc<OwnedFd>,
    pub queue: std::sync::Arc<std::sync::Mutex<Vec<Command>>>,
}

impl Commands {
    pub fn new() -> Result<Commands> {
        Ok(Commands { wake: std::sync::Arc::new(sfd::eventfd()?), queue: Default::default() })
    }
    pub fn post(&self, c: Command) {
        if let Ok(mut q) = self.queue.lock() {
            q.push(c);
        }
        sfd::eventfd_signal(self.wake.as_fd());
    }
}

/// Where the engine's log goes or comes from.
pub enum Mode {
    Record(crate::replica::log::Writer<Box<dyn crate::replica::log::Sink>>),
    Replay(Box<crate::replica::log::Reader<Box<dyn std::io::Read>>>),
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The replica tree is gone; the status `ftnet record` exits with.
    Exited(i32),
    /// Replay reached the end of a live stream that was cut (takeover).
    LogCut,
}

/// Tunables.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long replay waits for the replica to reach the next logged event.
    pub stall: Duration,
    /// Longest time a thread keeps the token while others are ready (ns).
    pub slice_ns: i64,
    /// Replaying a live stream: its end without an end record is a takeover,
    /// not an error.
    pub live: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { stall: Duration::from_secs(30), slice_ns: 20_000_000, live: false }
    }
}

/// Counters reported at the end of a run.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub calls: u64,
    pub switches: u64,
    pub continued: u64,
    pub signals: u64,
    pub rdtsc: u64,
    pub supervisor_ns: u64,
}

/// A notification being handled.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    pub vid: Vid,
    pub tid: i32,
    pub pvid: Pvid,
    pub tgid: i32,
    pub id: u64,
    pub nr: u32,
    pub a: [u64; 6],
}

/// A call's answer as decided on the primary (or rebuilt on the backup).
#[derive(Debug)]
pub struct Done {
    pub answer: Answer,
    pub mem: Vec<Mem>,
    pub check: Option<Check>,
    /// Primary only: the descriptor to install (accept).
    pub newfd: Option<OwnedFd>,
}

impl Done {
    pub fn ret(v: i64) -> Done {
        Done { answer: Answer::Ret(v), mem: vec![], check: None, newfd: None }
    }
    pub fn cont() -> Done {
        Done { answer: Answer::Continue, mem: vec![], check: None, newfd: None }
    }
    pub fn with_mem(mut self, addr: u64, bytes: Vec<u8>) -> Done {
        if addr != 0 {
            self.mem.push(Mem { addr, bytes });
        }
        self
    }
}

/// What a record handler decided.
pub enum Outcome {
    Done(Done),
    Block(threads::Wait),
    /// The thread gives up the token but stays ready (sched_yield).
    Yield,
}

pub struct Supervisor {
    pub mode: Mode,
    pub opts: Options,
    pub tree: Tree,
    pub listener: OwnedFd,
    pub ep: OwnedFd,
    pub sigfd: OwnedFd,
    pub holder: Option<Vid>,
    pub init_pid: i32,
    pub root_exit: Option<crate::replica::log::Exit>,
    pub fds: fds::Fds,
    pub waits: wait::Waits,
    pub sigq: signals::Queues,
    pub stats: Stats,
    /// Shutdown requests seen (SIGINT/SIGTERM to ftnet).
    pub shutdown: u8,
    /// Threads stopped before we knew them (a child's first stop can arrive
    /// before its parent's clone event).
    pub early_stops: Vec<(i32, i32)>,
    pub warned: std::collections::HashSet<u32>,
    /// Byte counts moved per (process, fd), for offsets in reports.
    pub offsets: std::collections::HashMap<(Pvid, i32), u64>,
    /// Replay: the event read but not yet applied.
    pub peeked: Option<Event>,
    /// Record: when to next look for signals sent from outside the tree.
    pub next_signal_scan: i64,
    /// Backup: what a takeover needs (set by the node before running).
    pub live: Option<live::Shared>,
    /// Requests from the daemon's other threads.
    pub commands: Option<Commands>,
    /// Added to CLOCK_MONOTONIC-family and CLOCK_BOOTTIME-family values the
    /// replica sees after going live, so its clocks continue the log's.
    pub clock_offset: i64,
    pub boot_offset: i64,
}

impl Supervisor {
    pub fn new(mode: Mode, opts: Options, listener: OwnedFd, sigfd: OwnedFd, init_pid: i32) -> Result<Supervisor> {
        let ep = sfd::epoll_create()?;
        sfd::epoll_ctl(ep.as_fd(), libc::EPOLL_CTL_ADD, listener.as_fd(), libc::EPOLLIN as u32, TAG_NOTIF)?;
        sfd::epoll_ctl(ep.as_fd(), libc::EPOLL_CTL_ADD, sigfd.as_fd(), libc::EPOLLIN as u32, TAG_SIGNAL)?;
        let mut fds = fds::Fds::default();
        fds.note_inherited();
        Ok(Supervisor {
            mode,
            opts,
            tree: Tree::default(),
            listener,
            ep,
            sigfd,
            holder: None,
            init_pid,
            root_exit: None,
            fds,
            waits: wait::Waits::default(),
            sigq: signals::Queues::default(),
            stats: Stats::default(),
            shutdown: 0,
            early_stops: vec![],
            warned: Default::default(),
            offsets: Default::default(),
            peeked: None,
            next_signal_scan: 0,
            live: None,
            commands: None,
            clock_offset: 0,
            boot_offset: 0,
        })
    }

    pub fn recording(&self) -> bool {
        matches!(self.mode, Mode::Record(_))
    }

    /// Appends an event (record mode; a no-op when replaying).
    pub fn log(&mut self, e: &Event) -> Result<()> {
        if let Mode::Record(w) = &mut self.mode {
            w.event(e)?;
        }
        Ok(())
    }

    /// Registers the root thread (host tid `tid`, running towards its
    /// execve) as the first token holder.
    pub fn adopt_root(&mut self, tid: i32) -> Vid {
        let nspid = tracer::nspid_of(tid).unwrap_or(2);
        let vid = self.tree.add(tid, nspid, None, true);
        self.fds.tree_pids.insert(tid);
        let t = self.tree.tm(vid);
        t.at = At::Running;
        t.sched = Sched::Holder;
        t.since = sfd::clock_ns(libc::CLOCK_MONOTONIC);
        self.holder = Some(vid);
        vid
    }

    /// Runs the replica to the end. Returns the status `ftnet record`/
    /// `ftnet replay` exits with, or [`RunEnd::LogCut`] when replaying a
    /// stream that ended without an end record while `Options::live` is set
    /// (the primary is gone: the caller takes over and calls
    /// [`Supervisor::go_live`], then `run` again).
    pub fn run(&mut self) -> Result<RunEnd> {
        if self.recording() {
            return self.run_record().map(RunEnd::Exited);
        }
        match self.run_replay() {
            Ok(status) => Ok(RunEnd::Exited(status)),
            Err(EngineError::Log(crate::replica::log::LogError::NoEnd(_))) if self.opts.live => Ok(RunEnd::LogCut),
            Err(e) => Err(e),
        }
    }

    /// The replica's view of `clock` now (ns), offsets included.
    pub fn replica_clock(&self, clock: libc::clockid_t) -> i64 {
        sfd::clock_ns(clock) + self.offset_of(clock)
    }

    /// The offset added to `clock` for the replica.
    pub fn offset_of(&self, clock: libc::clockid_t) -> i64 {
        match clock {
            libc::CLOCK_MONOTONIC | libc::CLOCK_MONOTONIC_RAW | libc::CLOCK_MONOTONIC_COARSE => self.clock_offset,
            libc::CLOCK_BOOTTIME | libc::CLOCK_BOOTTIME_ALARM => self.boot_offset,
            _ => 0,
        }
    }

    // ---------------------------------------------------------------- record

    fn run_record(&mut self) -> Result<i32> {
        loop {
            self.drain_stops()?;
            if self.holder.is_none() {
                if self.tree.unsettled() {
                    self.wait_one_stop()?;
                    continue;
                }
                self.scan_for_outside_signals();
                self.check_pending_signals()?;
                self.fire_timers()?;
                if let Some(v) = self.pick() {
                    self.give_token(v)?;
                    continue;
                }
                if self.tree.live().next().is_none() {
                    break;
                }
            }
            let scan = self.blocked_any().then_some(self.next_signal_scan);
            let deadline = match (self.next_deadline(), scan) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            self.wait_events(deadline)?;
            self.expire_deadlines()?;
        }
        let status = self.final_status();
        self.log(&Event::End { status })?;
        if let Mode::Record(w) = &mut self.mode {
            w.sink.flush()?;
        }
        Ok(status)
    }

    fn blocked_any(&self) -> bool {
        self.tree.live().any(|t| matches!(t.sched, Sched::Blocked(_)))
    }

    /// A signal sent from outside the tree to a parked thread stays pending
    /// in the kernel without any event reaching us (the thread waits
    /// killably in its notification). Every 100 ms, processes with blocked
    /// threads are checked for such signals.
    fn scan_for_outside_signals(&mut self) {
        let now = sfd::clock_ns(libc::CLOCK_MONOTONIC);
        if now < self.next_signal_scan {
            return;
        }
        self.next_signal_scan = now + SIGNAL_SCAN_NS;
        let blocked: Vec<Pvid> =
            self.tree.live().filter(|t| matches!(t.sched, Sched::Blocked(_))).map(|t| t.pvid).collect();
        for p in blocked {
            self.tree.pm(p).check_pending = true;
        }
    }

    fn final_status(&self) -> i32 {
        match self.root_exit {
            Some(crate::replica::log::Exit::Code(c)) => c,
            Some(crate::replica::log::Exit::Signal(s)) => 128 + s,
            None => 1,
        }
    }

    /// The next thread to run: round-robin over ready threads by vid, after
    /// the last holder; a vfork child first.
    fn pick(&self) -> Option<Vid> {
        let ready = self.tree.live().filter(|t| t.sched == Sched::Ready && matches!(t.at, At::Notif(_) | At::Stop(_)));
        if let Some(t) = ready.clone().find(|t| t.vfork_parent.is_some()) {
            return Some(t.vid);
        }
        // Least recently given the token first.
        ready.min_by_key(|t| (t.since, t.vid)).map(|t| t.vid)
    }

    /// Hands the token to `vid` and lets it run.
    fn give_token(&mut self, vid: Vid) -> Result<()> {
        tracing::trace!("token -> thread {vid} ({:?})", self.tree.t(vid).at);
        self.log(&Event::Switch { to: vid })?;
        self.stats.switches += 1;
        self.holder = Some(vid);
        let now = sfd::clock_ns(libc::CLOCK_MONOTONIC);
        let t = self.tree.tm(vid);
        t.sched = Sched::Holder;
        t.since = now;
        match t.at {
            At::Notif(n) => self.handle_record(vid, n),
            At::Stop(kind) => self.resume_stop(vid, kind),
            other => Err(EngineError::Internal(format!("thread {vid} got the token while {other:?}"))),
        }
    }

    /// A notification arrived (record mode).
    fn on_notif_record(&mut self, vid: Vid, n: seccomp::Notif) -> Result<()> {
        self.tree.tm(vid).at = At::Notif(n);
        if self.holder != Some(vid) {
            return Err(EngineError::Internal(format!(
                "{} made {} without holding the token",
                self.tree.describe(vid),
                table::name(n.data.nr as u32)
            )));
        }
        let now = sfd::clock_ns(libc::CLOCK_MONOTONIC);
        let t = self.tree.t(vid);
        if now - t.since > self.opts.slice_ns && self.others_ready(vid) {
            self.park_ready(vid);
            return Ok(());
        }
        self.handle_record(vid, n)
    }

    fn others_ready(&self, vid: Vid) -> bool {
        self.tree.live().any(|t| t.vid != vid && t.sched == Sched::Ready)
    }

    /// Takes the token from `vid`, leaving it ready with its call pending.
    pub fn park_ready(&mut self, vid: Vid) {
        self.tree.tm(vid).sched = Sched::Ready;
        self.holder = None;
    }

    fn ctx(&self, vid: Vid, n: &seccomp::Notif) -> Ctx {
        let t = self.tree.t(vid);
        Ctx {
            vid,
            tid: t.tid,
            pvid: t.pvid,
            tgid: self.tree.p(t.pvid).tgid,
            id: n.id,
            nr: n.data.nr as u32,
            a: n.data.args,
        }
    }

    /// Decides a notification of the holder (record mode).
    fn handle_record(&mut self, vid: Vid, n: seccomp::Notif) -> Result<()> {
        let started = sfd::clock_ns(libc::CLOCK_MONOTONIC);
        let ctx = self.ctx(vid, &n);
        tracing::trace!("thread {vid}: {} {:x?}", table::name(ctx.nr), &ctx.a[..3]);
        if n.data.arch != 0xc000_003e || ctx.nr >= 0x4000_0000 {
            return Err(self.refused(&ctx, "a system call through the i386 or x32 ABI"));
        }
        let class = table::lookup(ctx.nr).map(|e| e.class);
        let outcome = match class {
            None => return Err(self.refused(&ctx, "the call is not in ftnet's syscall table")),
            Some(Class::Refuse) => {
                let why = table::lookup(ctx.nr).map(|e| e.why).unwrap_or_default();
                return Err(self.refused(&ctx, why));
            }
            Some(Class::Enosys) => {
                self.warn_enosys(&ctx);
                Outcome::Done(Done::ret(-(libc::ENOSYS as i64)))
            }
            Some(Class::Execute) => Outcome::Done(Done::cont()),
            Some(_) => calls::record(self, &ctx)?,
        };
        let outcome = match outcome {
            Outcome::Block(w) => match self.interrupt(&ctx, &w)? {
                Some(done) => {
                    self.waits.drop_thread(&self.ep, vid)?;
                    Outcome::Done(done)
                }
                None => Outcome::Block(w),
            },
            o => o,
        };
        match outcome {
            Outcome::Done(done) => {
                tracing::trace!("thread {vid}: answered {:?}", done.answer);
                self.finish(&ctx, done)?
            }
            Outcome::Block(w) => {
                tracing::trace!("thread {vid}: blocks on {w:?}");
                self.block(vid, w)
            }
            Outcome::Yield => self.park_ready(vid),
        }
        self.stats.supervisor_ns += (sfd::clock_ns(libc::CLOCK_MONOTONIC) - started) as u64;
        Ok(())
    }

    fn warn_enosys(&mut self, ctx: &Ctx) {
        if self.warned.insert(ctx.nr) {
            let why = table::lookup(ctx.nr).map(|e| e.why).unwrap_or_default();
            let who = self.tree.describe(ctx.vid);
            let name = table::name(ctx.nr);
            // glibc probes rseq and clone3 at every start and falls back
            // silently; anything else is worth telling the operator.
            if matches!(ctx.nr as i64, libc::SYS_rseq | libc::SYS_clone3) {
                tracing::debug!("{who} called {name}: answered ENOSYS ({why})");
            } else {
                tracing::warn!("{who} called {name}: answered ENOSYS ({why})");
            }
        }
    }

    pub fn refused(&self, ctx: &Ctx, why: &str) -> EngineError {
        EngineError::Refused { call: table::name(ctx.nr), process: self.tree.describe(ctx.vid), why: why.to_string() }
    }

    /// Answers the holder's call: injects a due signal, logs, writes memory,
    /// responds.
    pub fn finish(&mut self, ctx: &Ctx, done: Done) -> Result<()> {
        if self.recording()
            && let Some((sig, shared)) = self.sigq.peek_deliverable(&self.tree, ctx.vid)?
        {
            self.inject(ctx.vid, sig)?;
            if shared {
                self.sigq.expect_duplicate(ctx.pvid, sig);
            }
        }
        for m in &done.mem {
            sys::mem::write(ctx.tid, m.addr, &m.bytes)?;
        }
        let mut answer = done.answer;
        let ok = match (&mut answer, done.newfd) {
            (Answer::Ret(v), _) => seccomp::respond(self.listener.as_fd(), ctx.id, *v)?,
            (Answer::Continue, _) => {
                self.stats.continued += 1;
                seccomp::respond_continue(self.listener.as_fd(), ctx.id)?
            }
            (Answer::Accepted { fd, cloexec, .. }, Some(sock)) => {
                match seccomp::addfd(self.listener.as_fd(), ctx.id, sock.as_fd(), None, *cloexec, true) {
                    Ok(n) => {
                        *fd = n;
                        true
                    }
                    Err(e) if e.0 == libc::ENOENT => false,
                    Err(e) => {
                        // No room in the replica's table: answer the error the
                        // kernel would have given; the connection is dropped
                        // only after being logged as refused.
                        let r = -(e.0 as i64);
                        answer = Answer::Ret(r);
                        seccomp::respond(self.listener.as_fd(), ctx.id, r)?
                    }
                }
            }
            (Answer::Accepted { fd, cloexec, local, nonblock, .. }, None) => {
                let sock = calls::net::placeholder_for(local, *nonblock)?;
                match seccomp::addfd(self.listener.as_fd(), ctx.id, sock.as_fd(), Some(*fd), *cloexec, true) {
                    Ok(_) => true,
                    Err(e) if e.0 == libc::ENOENT => false,
                    Err(e) => {
                        return Err(sys::SysError::new("seccomp addfd", format!("placeholder at fd {fd}"), e).into());
                    }
                }
            }
        };
        self.stats.calls += 1;
        // Bytes read from a local file are not logged: the backup reads its own.
        let file_input = done.check.as_ref().is_some_and(|c| c.kind == crate::replica::log::CheckKind::FileInput);
        self.log(&Event::Call(Call {
            tid: ctx.vid,
            nr: ctx.nr as u16,
            args: args_crc(&ctx.a),
            answer,
            mem: if file_input { vec![] } else { done.mem },
            check: done.check,
        }))?;
        let t = self.tree.tm(ctx.vid);
        if ok {
            t.at = At::Running;
        }
        t.yielded = false;
        t.woken = false;
        t.progress = 0;
        t.deadline = None;
        t.sigmask = None;
        Ok(())
    }

    /// Makes `sig` pending on `vid` (parked) and logs it.
    pub fn inject(&mut self, vid: Vid, sig: i32) -> Result<()> {
        let t = self.tree.t(vid);
        let tgid = self.tree.p(t.pvid).tgid;
        sfd::tgkill(tgid, t.tid, sig)?;
        self.tree.tm(vid).inject = Some(sig);
        self.stats.signals += 1;
        self.log(&Event::Inject { tid: vid, sig })
    }

    /// Resumes a thread parked at a ptrace stop (it holds the token). Queued
    /// signals wait for its next intercepted call: injections happen only at
    /// notifications, so the backup knows where each one goes.
    fn resume_stop(&mut self, vid: Vid, kind: StopKind) -> Result<()> {
        let t = self.tree.tm(vid);
        let tid = t.tid;
        t.at = At::Running;
        let _ = kind;
        sys::ptrace::cont(tid, 0)?;
        Ok(())
    }

    // ---------------------------------------------------------------- events

    /// Waits for and handles events until `deadline` (CLOCK_MONOTONIC ns) or
    /// the first batch of events.
    fn wait_events(&mut self, deadline: Option<i64>) -> Result<()> {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let now = sfd::clock_ns(libc::CLOCK_MONOTONIC);
                ((d - now).max(0) / 1_000_000 + 1).min(i32::MAX as i64) as i32
            }
        };
        self.pump(timeout).map(drop)
    }

    /// One round of the supervisor's epoll. Returns whether anything happened.
    pub fn pump(&mut self, timeout_ms: i32) -> Result<bool> {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 16];
        let n = sfd::epoll_wait(self.ep.as_fd(), &mut evs, timeout_ms)?;
        for ev in &evs[..n] {
            match ev.u64 {
                TAG_NOTIF => {
                    if let Some(notif) = seccomp::recv(self.listener.as_fd())? {
                        self.on_notif(notif)?;
                    }
                }
                TAG_SIGNAL => self.on_signalfd()?,
                TAG_COMMAND => self.on_commands()?,
                tag => self.on_wait_ready(tag)?,
            }
        }
        Ok(n > 0)
    }

    fn on_notif(&mut self, n: seccomp::Notif) -> Result<()> {
        let Some(vid) = self.tree.vid_of(n.pid as i32) else {
            return Err(EngineError::Internal(format!("notification from unknown thread {}", n.pid)));
        };
        if self.recording() {
            self.on_notif_record(vid, n)
        } else {
            self.tree.tm(vid).at = At::Notif(n);
            Ok(())
        }
    }

    /// Accepts requests from the daemon's other threads.
    pub fn set_commands(&mut self, c: Commands) -> Result<()> {
        sfd::epoll_ctl(self.ep.as_fd(), libc::EPOLL_CTL_ADD, c.wake.as_fd(), libc::EPOLLIN as u32, TAG_COMMAND)?;
        self.commands = Some(c);
        Ok(())
    }

    fn on_commands(&mut self) -> Result<()> {
        let Some(c) = self.commands.clone() else { return Ok(()) };
        sfd::eventfd_drain(c.wake.as_fd());
        let todo: Vec<Command> = c.queue.lock().map(|mut q| std::mem::take(&mut *q)).unwrap_or_default();
        for cmd in todo {
            match cmd {
                Command::Signal(sig) if self.recording() => {
                    for p in self.top_processes() {
                        self.queue_process_signal(p, sig)?;
                    }
                }
                Command::Signal(_) => {}
            }
        }
        Ok(())
    }

    /// Processes whose parent is not in the tree (the root, and anything
    /// reparented to ftnet's init).
    fn top_processes(&self) -> Vec<Pvid> {
        self.tree.live_procs().filter(|p| p.parent.is_none_or(|pp| self.tree.p(pp).exited)).map(|p| p.pvid).collect()
    }

    fn on_signalfd(&mut self) -> Result<()> {
        while let Some(info) = sfd::signalfd_read(self.sigfd.as_fd())? {
            match info.ssi_signo as i32 {
                libc::SIGCHLD => self.drain_stops()?,
                libc::SIGINT | libc::SIGTERM | libc::SIGHUP => self.request_shutdown()?,
                _ => {}
            }
        }
        self.drain_stops()
    }

    /// Handles every ptrace stop and exit that is ready.
    pub fn drain_stops(&mut self) -> Result<()> {
        loop {
            match sfd::waitpid(-1, libc::WNOHANG) {
                Ok(Some((pid, status))) => self.on_stop(pid, status)?,
                Ok(None) => return Ok(()),
                Err(e) if e.0 == libc::ECHILD => return Ok(()),
                Err(e) if e.0 == libc::EINTR => continue,
                Err(e) => return Err(sys::SysError::new("waitpid", "-1", e).into()),
            }
        }
    }

    /// Blocks until one stop or exit arrives and handles it.
    pub fn wait_one_stop(&mut self) -> Result<()> {
        loop {
            match sfd::waitpid(-1, 0) {
                Ok(Some((pid, status))) => return self.on_stop(pid, status),
                Ok(None) => return Ok(()),
                Err(e) if e.0 == libc::EINTR => continue,
                Err(e) if e.0 == libc::ECHILD => {
                    // Nothing left to wait for: whatever was in flight is gone.
                    for vid in self.tree.live_vids() {
                        let t = self.tree.tm(vid);
                        if t.at == At::Unborn || t.dying {
                            t.sched = Sched::Idle;
                            self.tree.mark_dead(vid);
                        }
                    }
                    return Ok(());
                }
                Err(e) => return Err(sys::SysError::new("waitpid", "-1", e).into()),
            }
        }
    }

    /// Settles in-flight transitions (replay: before each switch).
    pub fn settle(&mut self) -> Result<()> {
        self.drain_stops()?;
        while self.tree.unsettled() {
            self.wait_one_stop()?;
        }
        Ok(())
    }

    fn request_shutdown(&mut self) -> Result<()> {
        self.shutdown += 1;
        if !self.recording() {
            return Ok(());
        }
        if self.shutdown == 1 {
            tracing::info!("stopping the replica: SIGTERM at the next syscall boundary");
            for p in self.top_processes() {
                self.queue_process_signal(p, libc::SIGTERM)?;
            }
        } else {
            tracing::warn!("second stop request: killing the replica tree; the log will end early");
            for p in self.tree.live_procs() {
                let _ = sfd::kill(p.tgid, libc::SIGKILL);
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- replay

    fn run_replay(&mut self) -> Result<i32> {
        loop {
            let ev = self.next_event()?;
            match ev {
                Event::Switch { to } => {
                    // The old holder gave the token up at a syscall boundary
                    // on the primary: let it reach that same point first.
                    if let Some(old) = self.holder
                        && old != to
                        && self.tree.t(old).at != At::Dead
                    {
                        self.replay_until(old, "the point where it gave up the token", |t| {
                            matches!(t.at, At::Notif(_) | At::Stop(_) | At::Dead | At::InVfork)
                        })?;
                    }
                    self.settle()?;
                    self.stats.switches += 1;
                    if self.tree.threads.get(to as usize).is_none_or(|t| t.at == At::Dead) {
                        return Err(self.diverged_simple(to, "the log hands the token to a thread that does not exist"));
                    }
                    self.holder = Some(to);
                    // A holder given the token at a ptrace stop ran from there
                    // on the primary.
                    let t = self.tree.t(to);
                    if let At::Stop(StopKind::Initial | StopKind::VforkDone) = t.at {
                        let tid = t.tid;
                        self.tree.tm(to).at = At::Running;
                        sys::ptrace::cont(tid, 0)?;
                    }
                }
                Event::Call(c) => self.replay_call(c)?,
                Event::Inject { tid, sig } => {
                    self.replay_until(tid, "a signal injection point", |t| matches!(t.at, At::Notif(_)))?;
                    let t = self.tree.t(tid);
                    sfd::tgkill(self.tree.p(t.pvid).tgid, t.tid, sig)?;
                    self.tree.tm(tid).inject = Some(sig);
                    self.stats.signals += 1;
                }
                Event::Deliver { tid, sig, info } => self.replay_deliver(tid, sig, &info)?,
                Event::Rdtsc { tid, tsc, aux } => self.replay_rdtsc(tid, tsc, aux)?,
                Event::Exec { tid, exe, digest, random } => self.replay_exec(tid, &exe, &digest, &random)?,
                Event::Spawn { parent, child, nspid, thread } => self.replay_spawn(parent, child, nspid, thread)?,
                Event::Exited { tid, how } => self.replay_exited(tid, how)?,
                Event::End { status } => {
                    self.replay_end()?;
                    return Ok(status);
                }
            }
        }
    }

    fn next_event(&mut self) -> Result<Event> {
        if let Some(e) = self.peeked.take() {
            return Ok(e);
        }
        let Mode::Replay(r) = &mut self.mode else { return Err(EngineError::Internal("not replaying".into())) };
        match r.next_frame()? {
            Some(crate::replica::log::Frame::Event(e)) => Ok(e),
            Some(_) => Err(crate::replica::log::LogError::Corrupt {
                offset: r.offset(),
                what: "header or state frame after the first event".into(),
            }
            .into()),
            None => Err(crate::replica::log::LogError::NoEnd(r.offset()).into()),
        }
    }

    /// Runs `vid` until `done` holds for it, resuming it from harmless stops.
    pub fn replay_until(&mut self, vid: Vid, what: &str, done: impl Fn(&threads::Thread) -> bool) -> Result<()> {
        let deadline = std::time::Instant::now() + self.opts.stall;
        loop {
            let t = self.tree.t(vid);
            if done(t) {
                return Ok(());
            }
            match t.at {
                At::Dead => {
                    return Err(self.diverged_simple(vid, &format!("the thread exited; the log expects {what}")));
                }
                At::Stop(StopKind::Initial | StopKind::VforkDone) => {
                    let tid = t.tid;
                    self.tree.tm(vid).at = At::Running;
                    sys::ptrace::cont(tid, 0)?;
                }
                At::Stop(k) => {
                    return Err(
                        self.diverged_simple(vid, &format!("the thread stopped at {k:?}; the log expects {what}"))
                    );
                }
                At::Notif(n) => {
                    let msg = format!("the thread called {}; the log expects {what}", table::name(n.data.nr as u32));
                    return Err(self.diverged_simple(vid, &msg));
                }
                At::Running | At::Unborn | At::InVfork => {
                    if std::time::Instant::now() > deadline {
                        return Err(self.diverged_simple(
                            vid,
                            &format!("the thread did not reach {what} within {:?}", self.opts.stall),
                        ));
                    }
                    self.pump(200)?;
                    self.drain_stops()?;
                }
            }
        }
    }

    fn replay_call(&mut self, c: Call) -> Result<()> {
        if self.holder != Some(c.tid) {
            return Err(self.diverged_simple(c.tid, "the log names a call of a thread that does not hold the token"));
        }
        let vid = c.tid;
        let want = table::name(c.nr as u32);
        self.replay_until(vid, &format!("syscall {want}"), |t| matches!(t.at, At::Notif(_)))?;
        let At::Notif(n) = self.tree.t(vid).at else {
            return Err(EngineError::Internal("thread left its notification".into()));
        };
        let ctx = self.ctx(vid, &n);
        if ctx.nr != c.nr as u32 || args_crc(&ctx.a) != c.args {
            let mut d = self.divergence(&ctx, "the replica made a different system call");
            d.expected = format!("{want} (argument checksum {:08x})", c.args);
            d.actual =
                format!("{} (argument checksum {:08x}) args {:x?}", table::name(ctx.nr), args_crc(&ctx.a), ctx.a);
            return Err(EngineError::Divergence(Box::new(d)));
        }
        let started = sfd::clock_ns(libc::CLOCK_MONOTONIC);
        let done = calls::replay(self, &ctx, c)?;
        self.finish(&ctx, done)?;
        self.stats.supervisor_ns += (sfd::clock_ns(libc::CLOCK_MONOTONIC) - started) as u64;
        Ok(())
    }

    fn replay_deliver(&mut self, vid: Vid, sig: i32, info: &[u8]) -> Result<()> {
        self.replay_until(vid, &format!("delivery of signal {sig}"), |t| t.at == At::Stop(StopKind::Signal(sig)))?;
        let tid = self.tree.t(vid).tid;
        let mut raw = [0u8; 128];
        let n = info.len().min(128);
        raw[..n].copy_from_slice(&info[..n]);
        sys::ptrace::set_siginfo(tid, &raw)?;
        let t = self.tree.tm(vid);
        t.inject = None;
        t.at = At::Running;
        sys::ptrace::cont(tid, sig)?;
        Ok(())
    }

    fn replay_exited(&mut self, vid: Vid, how: crate::replica::log::Exit) -> Result<()> {
        let deadline = std::time::Instant::now() + self.opts.stall;
        while self.tree.t(vid).at != At::Dead {
            let t = self.tree.t(vid);
            if let At::Stop(StopKind::Initial | StopKind::VforkDone) = t.at {
                let tid = t.tid;
                self.tree.tm(vid).at = At::Running;
                sys::ptrace::cont(tid, 0)?;
            } else if let At::Notif(n) = t.at {
                let msg = format!("the thread called {}; the log expects it to exit", table::name(n.data.nr as u32));
                return Err(self.diverged_simple(vid, &msg));
            }
            if std::time::Instant::now() > deadline {
                return Err(self.diverged_simple(vid, "the thread did not exit as the log expects"));
            }
            self.pump(200)?;
            self.drain_stops()?;
        }
        let seen = tracer::exit_of(&self.tree, vid);
        if let Some(seen) = seen
            && seen != how
        {
            return Err(self.diverged_simple(vid, &format!("the thread ended {seen:?}; the recording ended {how:?}")));
        }
        if self.holder == Some(vid) {
            self.holder = None;
        }
        Ok(())
    }

    fn replay_end(&mut self) -> Result<()> {
        let deadline = std::time::Instant::now() + self.opts.stall;
        while self.tree.live().next().is_some() {
            if std::time::Instant::now() > deadline {
                let v = self.tree.live().next().map(|t| t.vid).unwrap_or(0);
                return Err(self.diverged_simple(v, "the log ends but this thread is still running"));
            }
            self.pump(100)?;
            self.settle()?;
        }
        Ok(())
    }

    /// A divergence without call details.
    pub fn diverged_simple(&self, vid: Vid, what: &str) -> EngineError {
        let thread =
            if (vid as usize) < self.tree.threads.len() { self.tree.describe(vid) } else { format!("thread {vid}") };
        EngineError::Divergence(Box::new(Divergence {
            thread,
            index: Some(self.stats.calls),
            what: what.to_string(),
            expected: "see above".into(),
            actual: "see above".into(),
            ..Default::default()
        }))
    }

    /// A divergence at the call `ctx`.
    pub fn divergence(&self, ctx: &Ctx, what: &str) -> Divergence {
        Divergence {
            thread: self.tree.describe(ctx.vid),
            index: Some(self.stats.calls),
            syscall: table::name(ctx.nr),
            what: what.to_string(),
            ..Default::default()
        }
    }
}

/// CRC32 of a call's six raw arguments.
pub fn args_crc(a: &[u64; 6]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for x in a {
        h.update(&x.to_le_bytes());
    }
    h.finalize()
}

/// Reads the replica's memory (helper for handlers).
pub fn peek(ctx: &Ctx, addr: u64, len: usize) -> Result<Vec<u8>> {
    Ok(sys::mem::read(ctx.tid, addr, len)?)
}

/// Raw descriptor number helper for messages.
pub fn raw(fd: &OwnedFd) -> i32 {
    fd.as_raw_fd()
}

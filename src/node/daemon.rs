//! `ftnet up`: one node of the pair.
//!
//! Threads: the main loop (events, OS signals, failure detection, status),
//! the engine (record or replay, owns the replica tree), the link (connect,
//! writer, reader), heartbeats (sender, one receiver per path), output
//! commit (primary), the tracker sync (backup) and the control socket.
//!
//! Invariants:
//! - the primary releases nothing to a client until the backup acknowledged
//!   it (output commit), and when it must stop speaking (fenced, replaced,
//!   its replica killed from outside) it drops everything until its replica
//!   and every copy of its sockets are gone;
//! - the backup promotes only after a session existed, the primary has been
//!   silent on every heartbeat path for the timeout and the policy allows it
//!   (or on a planned switchover, after the primary fenced itself), and never
//!   while its replica has diverged unless forced;
//! - a replica that exits by itself does so on both nodes (it is
//!   deterministic): that ends both daemons, it never promotes.

use super::config::{Config, Policy};
use super::heartbeat::{self, Heartbeats};
use super::shared::{LinkState, NodeEvent, Shared, Status};
use super::{control, linkmgr, pipe, takeover};
use crate::link::{Fence, FenceReason, Hello, Key, Message, PeerState, ReplicaIdentity, Role};
use crate::net::commit::{Commit, CommitConfig, Mode};
use crate::net::takeover::{Armed, TakeoverConfig};
use crate::replica::engine::{Command, Commands, EngineError, Options, RunEnd};
use crate::replica::launch::{self, Program};
use crate::sys::fd as sfd;
use anyhow::{Context, anyhow, bail};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The NFQUEUE queue output commit uses.
const QUEUE: u16 = 7;

struct Node {
    shared: Arc<Shared>,
    /// Output commit's counters, refreshed by the main loop for `status`.
    commit_stats: CommitStatsHandle,
    hb: Arc<Heartbeats>,
    events: Receiver<NodeEvent>,
    signals: std::os::fd::OwnedFd,
    /// Host pid of the replica's init (0 before start).
    init: Arc<AtomicI32>,
    commit: Option<Commit>,
    promoted_at: Option<Instant>,
    stop_requested: bool,
}

fn identity(header: &crate::replica::log::Header) -> ReplicaIdentity {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpu.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    let cpu_flags = ["rdrand", "rdseed", "avx512f", "avx2", "sha_ni", "aes", "adx", "bmi2"]
        .iter()
        .filter(|f| flags.split_whitespace().any(|x| x == **f))
        .map(|f| f.to_string())
        .collect();
    ReplicaIdentity {
        exe: header.exe.clone(),
        files: header
            .files
            .iter()
            .map(|f| crate::link::FileDigest { path: f.path.clone(), blake3: f.blake3 })
            .collect(),
        argv: header.argv.clone(),
        env: header.env.clone(),
        cwd: header.cwd.clone(),
        kernel: header.kernel.clone(),
        thp: header.thp.clone(),
        cpu_flags,
        extra: vec![],
    }
}

/// Runs a node until its replica ends (its exit status) or it is stopped.
pub fn up(config_path: &Path, role: Role) -> anyhow::Result<i32> {
    if !crate::sys::spawn::is_root() {
        bail!("ftnet up must run as root (namespaces, ptrace, NFQUEUE, the VIP)");
    }
    // Every thread inherits these blocked: SIGCHLD reaches the engine's
    // signalfd, SIGINT/SIGTERM/SIGHUP the main loop's.
    sfd::block_signals(&[libc::SIGCHLD, libc::SIGINT, libc::SIGTERM, libc::SIGHUP])?;
    sfd::ignore_signal(libc::SIGPIPE, true)?;
    launch::DAEMON.store(true, Ordering::Relaxed);
    let signals = sfd::signalfd_for(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])?;
    let cfg = Config::load(config_path)?;
    let key = Key::from_file(&cfg.link.key_file)?;
    let program = Program::with_clean_env(&cfg.service.command, &cfg.service.env, &cfg.service.cwd)?;
    let (header, _) = launch::header_for(&program, &[])?;
    let hello = Hello::new(role, &cfg.node.name, 0, cfg.digest(), identity(&header));
    let (tx, events) = std::sync::mpsc::channel();
    let status =
        Status { node: cfg.node.name.clone(), role: role.to_string(), state: "starting".into(), ..Default::default() };
    let services: Vec<std::net::SocketAddrV4> = {
        let (vip, _) = cfg.vip().ok_or_else(|| anyhow!("service.vip"))?;
        cfg.service.ports.iter().map(|p| std::net::SocketAddrV4::new(vip, *p)).collect()
    };
    let shared = Arc::new(Shared {
        cfg,
        role: Mutex::new(role),
        status: Mutex::new(status),
        link: LinkState::new(0)?,
        events: Mutex::new(tx),
        started: Instant::now(),
        tracker: Arc::new(Mutex::new(crate::tcpstate::Tracker::new(&services))),
        live: crate::replica::engine::live::shared(),
        commands: Mutex::new(None),
    });
    let hb = Arc::new(Heartbeats::new(&shared));
    let mut node = Node {
        shared,
        commit_stats: Arc::new(Mutex::new(None)),
        hb,
        events,
        signals,
        init: Arc::new(AtomicI32::new(0)),
        commit: None,
        promoted_at: None,
        stop_requested: false,
    };
    let (s2, h2, c2) = (node.shared.clone(), node.hb.clone(), node.commit_stats.clone());
    control::spawn(node.shared.clone(), Arc::new(move || status_json(&s2, &h2, &c2)))
        .context("starting the control socket")?;
    heartbeat::spawn(node.shared.clone(), node.hb.clone());
    let code = match role {
        Role::Primary => node.run_primary(key, hello, header),
        Role::Backup => node.run_backup(key, hello),
    };
    node.shutdown();
    code
}

type CommitStatsHandle = Arc<Mutex<Option<crate::net::commit::CommitStats>>>;

fn status_json(shared: &Shared, hb: &Heartbeats, commit: &CommitStatsHandle) -> serde_json::Value {
    let mut st = shared.status.lock().map(|s| s.clone()).unwrap_or_default();
    st.role = shared.role().to_string();
    st.peer_state = match hb.peer() {
        None => "unknown".into(),
        Some(p) => format!("{p:?}").to_lowercase(),
    };
    st.last_heartbeat_ms_ago = hb.peer().map(|_| hb.silence().as_millis() as u64);
    if let Ok(s) = shared.link.sender.lock() {
        st.epoch = s.epoch();
        st.log_position = s.position().saturating_sub(1);
        st.acked = s.acked_through();
        let lag = s.lag(Instant::now());
        st.lag_frames = lag.unapplied_frames;
        st.lag_bytes = lag.unapplied_bytes;
        st.lag_ms = lag.oldest_unapplied.map(|d| d.as_millis() as u64).unwrap_or(0);
    }
    st.received = shared.link.received.load(Ordering::Acquire);
    st.applied = shared.link.applied.load(Ordering::Acquire);
    if shared.role() == Role::Backup
        && let Some(b) = hb.last_beat()
    {
        st.lag_frames = b.position.saturating_sub(st.applied);
    }
    st.connections_tracked = shared.tracker.lock().map(|t| t.len()).unwrap_or(0);
    st.rejected_frames = shared.link.counters.snapshot();
    st.output_commit = commit.lock().ok().and_then(|c| *c);
    serde_json::to_value(&st).unwrap_or_default()
}

impl Node {
    fn refresh_commit_stats(&self) {
        if let Some(c) = &self.commit
            && let Ok(mut s) = self.commit_stats.lock()
        {
            *s = Some(c.stats());
        }
    }

    /// Waits up to `timeout` for the next event; also turns SIGINT/SIGTERM/
    /// SIGHUP into [`NodeEvent::Stop`].
    fn next_event(&mut self, timeout: Duration) -> Option<NodeEvent> {
        if let Ok(Some(info)) = sfd::signalfd_read(self.signals.as_fd()) {
            tracing::info!("signal {} received: stopping", info.ssi_signo);
            return Some(NodeEvent::Stop);
        }
        self.refresh_commit_stats();
        match self.events.recv_timeout(timeout) {
            Ok(e) => Some(e),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(NodeEvent::Stop),
        }
    }

    fn post(&self, c: Command) {
        if let Ok(g) = self.shared.commands.lock()
            && let Some(cmds) = g.as_ref()
        {
            cmds.post(c);
        }
    }

    /// Kills the replica tree (its init's death takes the PID namespace).
    fn kill_replica(&self) {
        let pid = self.init.load(Ordering::Acquire);
        if pid > 0 {
            let _ = sfd::kill(pid, libc::SIGKILL);
        }
    }

    fn shutdown(&mut self) {
        if let Some(c) = self.commit.take() {
            if c.mode() == Mode::Commit {
                // Let what the backup already has go out.
                std::thread::sleep(Duration::from_millis(50));
            }
            c.stop();
        }
        self.shared.set_state("stopped");
        let _ = std::fs::remove_file(&self.shared.cfg.node.control_socket);
    }

    fn vip(&self) -> anyhow::Result<crate::net::vip::Vip> {
        let (addr, prefix) = self.shared.cfg.vip().ok_or_else(|| anyhow!("service.vip"))?;
        Ok(crate::net::takeover::vip(addr, prefix, &self.shared.cfg.service.interface))
    }

    // ------------------------------------------------------------- primary

    fn run_primary(&mut self, key: Key, hello: Hello, header: crate::replica::log::Header) -> anyhow::Result<i32> {
        let shared = self.shared.clone();
        linkmgr::spawn(shared.clone(), key, hello, self.hb.clone(), Arc::new(on_frame_primary), true);
        shared.set_state("pairing");
        let mut waited = Instant::now();
        loop {
            match self.next_event(Duration::from_millis(100)) {
                Some(NodeEvent::LinkUp(peer)) => {
                    tracing::info!("paired with {peer}");
                    if let Ok(mut s) = shared.status.lock() {
                        s.peer = peer;
                    }
                    break;
                }
                Some(NodeEvent::Refused(diff)) => {
                    shared.note(format!("the backup refused to pair:\n  {}", diff.join("\n  ")));
                }
                Some(NodeEvent::Stop) => return Ok(0),
                _ => {}
            }
            if waited.elapsed() > Duration::from_secs(5) {
                tracing::info!("waiting for the backup to connect on {}", shared.cfg.node.link);
                waited = Instant::now();
            }
        }
        let vip = self.vip()?;
        vip.add().or_else(|e| if e.to_string().contains("File exists") { Ok(()) } else { Err(e) })?;
        let commit = Commit::start(
            CommitConfig {
                queue: QUEUE,
                vip: vip.addr,
                ports: shared.cfg.service.ports.clone(),
                iptables: "iptables".into(),
            },
            Box::new(pipe::LinkForward { shared: shared.clone() }),
            Mode::Commit,
        )?;
        if let Ok(mut w) = shared.link.commit_wake.lock() {
            *w = Some(commit.waker());
        }
        self.commit = Some(commit);
        self.spawn_recording_engine(header)?;
        shared.set_state("replicating");
        loop {
            let ev = self.next_event(Duration::from_millis(10));
            match ev {
                Some(NodeEvent::LinkUp(p)) => tracing::info!("link to {p} up again"),
                Some(NodeEvent::LinkDown(why)) => tracing::warn!("link down: {why}"),
                Some(NodeEvent::ReplicaExited(status)) => {
                    tracing::info!("the replica exited with status {status}; waiting for the backup to have it all");
                    self.wait_acked(Duration::from_secs(10));
                    if let Ok(mut s) = shared.status.lock() {
                        s.replica_exit = Some(status);
                    }
                    let _ = vip.remove();
                    return Ok(status);
                }
                Some(NodeEvent::EngineFailed(e)) => {
                    shared.note(format!("the recording failed: {e}"));
                    self.fence_and_die(&vip);
                    return Ok(1);
                }
                Some(NodeEvent::Superseded(epoch)) => {
                    shared.note(format!("replaced by a node at epoch {epoch}: stopping at once"));
                    self.fence_and_die(&vip);
                    return Ok(1);
                }
                Some(NodeEvent::SwitchoverRequested) => {
                    // A planned switchover asked for by the backup.
                    self.switchover(&vip)?;
                    return Ok(0);
                }
                Some(NodeEvent::GoAlone) => self.go_alone("the operator said so (ftnet promote --force)"),
                Some(NodeEvent::SignalRequested(sig)) => self.post(Command::Signal(sig)),
                Some(NodeEvent::Stop) if !self.stop_requested => {
                    self.stop_requested = true;
                    self.hb.stopping.store(true, Ordering::Release);
                    self.post(Command::Signal(libc::SIGTERM));
                }
                Some(NodeEvent::Stop) => {
                    self.fence_and_die(&vip);
                    return Ok(1);
                }
                _ => {}
            }
            self.check_backup();
        }
    }

    /// The backup stopped answering: go on alone or hold, as the policy says.
    fn check_backup(&mut self) {
        let dead = self.hb.peer() == Some(PeerState::Dead);
        let solo = self.shared.link.solo.load(Ordering::Acquire);
        if dead && !solo {
            match self.shared.cfg.policy {
                Policy::PreferAvailability => self.go_alone("the backup is gone (policy prefer-availability)"),
                Policy::PreferConsistency => {
                    self.shared.set_state("holding: backup unreachable, output held (policy prefer-consistency)");
                }
            }
        }
    }

    /// Stops waiting for the backup: output flows without its acks and the
    /// link is closed for good (a new backup cannot join a running primary).
    fn go_alone(&mut self, why: &str) {
        if self.shared.link.solo.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.note(format!("going on alone, unprotected: {why}"));
        self.shared.link.acked_cv.notify_all();
        self.shared.link.close();
        if let Some(c) = &self.commit {
            c.set_mode(Mode::Solo);
        }
        self.shared.set_state("alone");
    }

    fn wait_acked(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            let (pos, acked) = match self.shared.link.sender.lock() {
                Ok(s) => (s.position().saturating_sub(1), s.acked_through()),
                Err(_) => return false,
            };
            if acked >= pos || self.shared.link.solo.load(Ordering::Acquire) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Stops speaking for the replica: drop all output, kill the replica,
    /// wait until no copy of its sockets is left, give up the VIP.
    fn fence_and_die(&mut self, vip: &crate::net::vip::Vip) {
        self.hb.fenced.store(true, Ordering::Release);
        if let Some(c) = &self.commit {
            c.set_mode(Mode::Fenced);
        }
        self.shared.set_state("fenced");
        let _ = vip.remove();
        self.kill_replica();
        std::thread::sleep(Duration::from_millis(200));
    }

    /// Planned switchover from the primary's side: fence the output, freeze
    /// the log (nothing after this point may reach the backup: it would
    /// replay it), hand the backup the end of the stream, then give up the
    /// VIP and stop the replica, whose last words are dropped.
    fn switchover(&mut self, vip: &crate::net::vip::Vip) -> anyhow::Result<()> {
        self.shared.set_state("switching over");
        self.hb.fenced.store(true, Ordering::Release);
        if let Some(c) = &self.commit {
            c.set_mode(Mode::Fenced);
        }
        let position = {
            let mut s = self.shared.link.sender.lock().map_err(|_| anyhow!("sender lock"))?;
            self.shared.link.frozen.store(true, Ordering::Release);
            let end = s.position().saturating_sub(1);
            let fence = Message::Fence(Fence {
                reason: FenceReason::Switchover,
                position: end,
                detail: "planned switchover".into(),
            });
            s.push_message(&fence, Instant::now())?;
            end
        };
        self.shared.link.wake_writer();
        if !self.wait_acked(Duration::from_secs(10)) {
            self.shared.note(format!("switchover: the backup did not acknowledge position {position}"));
        }
        let _ = vip.remove();
        self.kill_replica();
        std::thread::sleep(Duration::from_millis(200));
        self.shared.set_state("fenced");
        Ok(())
    }

    fn spawn_recording_engine(&self, header: crate::replica::log::Header) -> anyhow::Result<()> {
        let shared = self.shared.clone();
        let init = self.init.clone();
        let cmds = Commands::new()?;
        if let Ok(mut c) = shared.commands.lock() {
            *c = Some(cmds.clone());
        }
        let bound = crate::link::LagBound {
            frames: u64::MAX,
            bytes: shared.cfg.link.max_lag_bytes,
            age: Duration::from_secs(2),
        };
        std::thread::Builder::new().name("ftnet-engine".into()).spawn(move || {
            let sink = Box::new(pipe::LinkSink { shared: shared.clone(), bound, unflushed: 0 });
            let cpu = Some(shared.cfg.node.cpu);
            let r = launch::start_recording(&header, &[], sink, cpu, Options::default()).and_then(|mut sup| {
                init.store(sup.init_pid, Ordering::Release);
                sup.set_commands(cmds)?;
                sup.run()
            });
            match r {
                Ok(RunEnd::Exited(s)) => shared.event(NodeEvent::ReplicaExited(s)),
                Ok(RunEnd::LogCut) => {
                    shared.event(NodeEvent::EngineFailed("internal: a recording cannot be cut".into()))
                }
                Err(e) => shared.event(NodeEvent::EngineFailed(e.to_string())),
            }
        })?;
        Ok(())
    }

    // -------------------------------------------------------------- backup

    fn run_backup(&mut self, key: Key, hello: Hello) -> anyhow::Result<i32> {
        let shared = self.shared.clone();
        let (log_tx, log_pipe) = pipe::log_pipe(shared.clone());
        shared.link.in_pipe.fetch_add(1, Ordering::AcqRel);
        log_tx.send((0, crate::replica::log::preamble())).map_err(|_| anyhow!("log pipe"))?;
        let feed = Arc::new(Mutex::new(Some(log_tx)));
        let feed2 = feed.clone();
        let on_frame: linkmgr::OnFrame = Arc::new(move |s: &Shared, f| on_frame_backup(s, &feed2, f));
        linkmgr::spawn(shared.clone(), key, hello, self.hb.clone(), on_frame, false);
        let armed = crate::net::takeover::arm(TakeoverConfig::new(self.vip()?))?;
        let armed = Arc::new(Mutex::new(Some(armed)));
        let force = Arc::new(AtomicBool::new(false));
        self.spawn_replay_engine(log_pipe, armed, force.clone())?;
        spawn_tracker_sync(shared.clone());
        shared.set_state("pairing");
        let mut diverged = false;
        let mut promoting = false;
        let mut fence_wait: Option<(u64, Instant)> = None;
        loop {
            let ev = self.next_event(Duration::from_millis(5));
            match ev {
                Some(NodeEvent::LinkUp(peer)) => {
                    if let Ok(mut s) = shared.status.lock() {
                        s.peer = peer;
                    }
                    if !promoting && !diverged {
                        shared.set_state("replicating");
                    }
                }
                Some(NodeEvent::LinkDown(why)) => tracing::warn!("link down: {why}"),
                Some(NodeEvent::Refused(diff)) => {
                    shared.note(format!("pairing refused:\n  {}", diff.join("\n  ")));
                    shared.set_state("refused");
                }
                Some(NodeEvent::PeerFenced(pos)) => {
                    tracing::info!("the primary fenced itself; its stream ends at {pos}");
                    if diverged && !force.load(Ordering::Acquire) {
                        shared.note("the primary fenced itself but this backup diverged: not promoting".into());
                    } else {
                        fence_wait = Some((pos, Instant::now()));
                    }
                }
                Some(NodeEvent::ReplicaExited(status)) => {
                    if promoting || self.promoted_at.is_some() {
                        tracing::info!("the replica exited with status {status}");
                    } else {
                        tracing::info!(
                            "the replica exited by itself with status {status} (as on the primary): not promoting"
                        );
                    }
                    if let Ok(mut s) = shared.status.lock() {
                        s.replica_exit = Some(status);
                    }
                    return Ok(status);
                }
                Some(NodeEvent::EngineFailed(e)) => {
                    diverged = true;
                    shared.set_state("diverged");
                    if let Ok(mut s) = shared.status.lock() {
                        s.divergences.push(e.clone());
                    }
                    shared
                        .note(format!("the backup's replica diverged or failed; automatic promotion is refused:\n{e}"));
                }
                Some(NodeEvent::Promoted) => {
                    shared.set_state("live");
                    if let Some(t) = self.promoted_at {
                        tracing::info!("promoted: live {:.1} ms after the decision", t.elapsed().as_secs_f64() * 1e3);
                    }
                }
                Some(NodeEvent::PromoteRequested { force: f }) => {
                    force.store(f, Ordering::Release);
                    if diverged && !f {
                        shared.note("promote refused: this backup diverged (use ftnet promote --force)".into());
                    } else if shared.link.connected.load(Ordering::Acquire)
                        && !diverged
                        && self.hb.peer() != Some(PeerState::Dead)
                    {
                        // Planned switchover: ask the primary to fence first.
                        if let Ok(mut s) = shared.link.sender.lock() {
                            let m = Message::Fence(Fence {
                                reason: FenceReason::Switchover,
                                position: 0,
                                detail: "promote requested".into(),
                            });
                            let _ = s.push_message(&m, Instant::now());
                        }
                        shared.link.wake_writer();
                        shared.set_state("switchover requested");
                    } else {
                        self.promote(&feed, "requested by the operator", &mut promoting);
                    }
                }
                Some(NodeEvent::Superseded(e)) => {
                    shared.note(format!("a frame from epoch {e}: the primary was replaced"))
                }
                Some(NodeEvent::SignalRequested(_)) => shared.note("signals go to the primary's replica".into()),
                Some(NodeEvent::Stop) => {
                    self.kill_replica();
                    return Ok(0);
                }
                _ => {}
            }
            if let Some((pos, since)) = fence_wait
                && (shared.link.received.load(Ordering::Acquire) >= pos || since.elapsed() > Duration::from_secs(5))
            {
                fence_wait = None;
                self.promote(&feed, "planned switchover", &mut promoting);
            }
            // The heartbeats decide: a dead host's TCP connection can look
            // alive for minutes (no FIN or RST ever comes).
            if !promoting && !diverged && self.promoted_at.is_none() && self.hb.peer() == Some(PeerState::Dead) {
                match shared.cfg.policy {
                    Policy::PreferAvailability => {
                        let silence = self.hb.silence();
                        if let Ok(mut s) = shared.status.lock() {
                            s.detect_ms = Some(silence.as_secs_f64() * 1e3);
                        }
                        self.promote(&feed, &format!("the primary has been silent for {silence:?}"), &mut promoting);
                    }
                    Policy::PreferConsistency => {
                        shared.set_state("primary unreachable: not promoting (policy prefer-consistency)")
                    }
                }
            }
        }
    }

    /// Ends the log here (the engine replays what it has, then takes over).
    fn promote(&mut self, feed: &Feed, why: &str, promoting: &mut bool) {
        if *promoting {
            return;
        }
        *promoting = true;
        self.promoted_at = Some(Instant::now());
        tracing::info!("promoting: {why}");
        self.shared.set_state("promoting");
        if let Ok(mut r) = self.shared.role.lock() {
            *r = Role::Primary;
        }
        if let Ok(mut s) = self.shared.link.sender.lock() {
            let e = s.epoch() + 1;
            s.set_epoch(e);
        }
        if let Ok(mut f) = feed.lock() {
            f.take();
        }
        self.shared.link.close();
    }

    fn spawn_replay_engine(
        &self,
        log: pipe::LogPipe,
        armed: Arc<Mutex<Option<Armed>>>,
        force: Arc<AtomicBool>,
    ) -> anyhow::Result<()> {
        let shared = self.shared.clone();
        let init = self.init.clone();
        let cmds = Commands::new()?;
        if let Ok(mut c) = shared.commands.lock() {
            *c = Some(cmds.clone());
        }
        std::thread::Builder::new().name("ftnet-engine".into()).spawn(move || {
            let opts = Options { live: true, ..Options::default() };
            let cpu = Some(shared.cfg.node.cpu);
            let mut rep = match launch::start_replay(Box::new(log), cpu, opts) {
                Ok(r) => r,
                Err(e) => return shared.event(NodeEvent::EngineFailed(e.to_string())),
            };
            init.store(rep.sup.init_pid, Ordering::Release);
            rep.sup.live = Some(shared.live.clone());
            if let Err(e) = rep.sup.set_commands(cmds) {
                return shared.event(NodeEvent::EngineFailed(e.to_string()));
            }
            loop {
                match rep.sup.run() {
                    Ok(RunEnd::Exited(s)) => return shared.event(NodeEvent::ReplicaExited(s)),
                    Ok(RunEnd::LogCut) => {}
                    Err(e @ EngineError::Divergence(_)) => {
                        shared.event(NodeEvent::EngineFailed(e.to_string()));
                        // Wait for a forced promotion (the replica stays parked).
                        while !force.load(Ordering::Acquire) {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                    Err(e) => return shared.event(NodeEvent::EngineFailed(e.to_string())),
                }
                let Some(armed) = armed.lock().ok().and_then(|mut a| a.take()) else {
                    return shared.event(NodeEvent::EngineFailed("takeover: not armed".into()));
                };
                let started = Instant::now();
                match takeover::take_over(&shared, &rep.sup, armed) {
                    Ok((report, failed)) => {
                        if let Ok(mut s) = shared.status.lock() {
                            s.takeover_ms = Some(started.elapsed().as_secs_f64() * 1e3);
                            s.notes.extend(failed);
                        }
                        tracing::info!(
                            "takeover: {} connections in {:.1} ms (build {:.1} ms, VIP {:.1} ms, ARP {:.1} ms, release {:.1} ms)",
                            report.connections,
                            report.total_ns as f64 / 1e6,
                            report.build_ns as f64 / 1e6,
                            report.vip_ns as f64 / 1e6,
                            report.garp_ns as f64 / 1e6,
                            report.release_ns as f64 / 1e6
                        );
                    }
                    Err(e) => shared.note(format!("takeover failed: {e}")),
                }
                if let Err(e) = rep.sup.go_live(Box::new(crate::replica::log::NullSink)) {
                    return shared.event(NodeEvent::EngineFailed(e.to_string()));
                }
                shared.event(NodeEvent::Promoted);
            }
        })?;
        Ok(())
    }
}

fn on_frame_primary(shared: &Shared, f: crate::link::Frame) {
    match f.msg {
        Message::Ack(a) => shared.link.on_ack(a.received, a.applied),
        Message::Fence(fence) if fence.reason == FenceReason::Switchover => {
            shared.event(NodeEvent::SwitchoverRequested)
        }
        Message::Promoted(p) => shared.event(NodeEvent::Superseded(p.epoch)),
        other => tracing::debug!("primary: ignoring {:?} from the backup", other.kind()),
    }
}

type Feed = Arc<Mutex<Option<std::sync::mpsc::SyncSender<(u64, Vec<u8>)>>>>;

fn on_frame_backup(shared: &Shared, feed: &Feed, f: crate::link::Frame) {
    // After a fence nothing of the primary's stream counts any more.
    if shared.link.fenced_at.load(Ordering::Acquire) < f.seq {
        return;
    }
    match f.msg {
        Message::Log(bytes) => {
            let tx = feed.lock().ok().and_then(|g| g.clone());
            if let Some(tx) = tx {
                shared.link.in_pipe.fetch_add(1, Ordering::AcqRel);
                if tx.send((f.seq, bytes)).is_err() {
                    shared.link.in_pipe.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
        Message::Segment(bytes) => {
            if let Ok(Some((fr, _))) = crate::net::forward::Frame::parse(&bytes)
                && let Ok(mut t) = shared.tracker.lock()
            {
                let now = sfd::clock_ns(libc::CLOCK_MONOTONIC).max(0) as u64;
                let _ = t.observe(now, fr.packet);
            }
        }
        Message::Fence(fence) => {
            shared.link.fenced_at.store(fence.position, Ordering::Release);
            shared.event(NodeEvent::PeerFenced(fence.position))
        }
        Message::Promoted(p) => shared.event(NodeEvent::Superseded(p.epoch)),
        Message::Ack(_) => {}
        other => tracing::debug!("backup: ignoring {:?}", other.kind()),
    }
}

fn spawn_tracker_sync(shared: Arc<Shared>) {
    let _ = std::thread::Builder::new().name("ftnet-tracker".into()).spawn(move || {
        while shared.role() == Role::Backup {
            takeover::sync_tracker(&shared);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

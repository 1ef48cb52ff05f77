//! `ftnet up`: one node of the pair. This file sets the node up and holds
//! what both roles share; `primary.rs` and `backup.rs` hold each role's
//! main loop and state their invariants.
//!
//! Threads: the main loop (events, OS signals, failure detection, status),
//! the engine (record or replay, owns the replica tree), the link (connect,
//! writer, reader), heartbeats (sender, one receiver per path), the lease
//! (with a witness), output commit (primary), the tracker sync (backup) and
//! the control socket.
//!
//! Invariants kept here:
//! - a node serving alone with a witness lets output out only while its
//!   lease is held (`Node::enforce_lease`). A promoted node, whose output
//!   does not pass through output commit, keeps the kernel's output gate
//!   timed to its lease (`Node::refresh_gate`), so a stalled or frozen main
//!   loop cannot let its sockets speak past the lease;
//! - a node replaced (a newer epoch, a refused renewal) drops all output
//!   before anything else.

use super::config::Config;
use super::control;
use super::heartbeat::{self, Heartbeats};
use super::lease::Lease;
use super::shared::{LinkState, NodeEvent, Shared, Status};
use crate::link::{Hello, Key, ReplicaIdentity, Role};
use crate::net::commit::{Commit, Mode};
use crate::replica::engine::Command;
use crate::replica::launch::{self, Program};
use crate::sys::fd as sfd;
use anyhow::{Context, anyhow, bail};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The NFQUEUE queue output commit uses.
pub(super) const QUEUE: u16 = 7;

pub(super) struct Node {
    pub(super) shared: Arc<Shared>,
    /// Output commit's counters, refreshed by the main loop for `status`.
    pub(super) commit_stats: CommitStatsHandle,
    pub(super) hb: Arc<Heartbeats>,
    pub(super) events: Receiver<NodeEvent>,
    pub(super) signals: std::os::fd::OwnedFd,
    /// Host pid of the replica's init (0 before start).
    pub(super) init: Arc<AtomicI32>,
    pub(super) commit: Option<Commit>,
    pub(super) promoted_at: Option<Instant>,
    pub(super) stop_requested: bool,
    /// The witness lease, when the configuration names a witness.
    pub(super) lease: Option<Arc<Lease>>,
    /// Output is suspended (dropped, VIP given up) because the lease lapsed
    /// while this node served alone.
    pub(super) suspended: bool,
    /// The kernel's output gate on the lease (see `Node::refresh_gate`).
    pub(super) gate: Gate,
    /// Primary: asked the witness to go on alone, not granted yet.
    pub(super) want_solo: bool,
    /// The witness's silence was noted once.
    pub(super) witness_noted: bool,
    /// Primary: the acknowledged position and when it last moved.
    pub(super) last_acked: (u64, Instant),
    /// Primary: since when it has looked cut off from the service network
    /// (see `Node::check_service_network`).
    pub(super) cut_off_since: Option<Instant>,
}

/// What the main loop knows of the kernel's output gate
/// (`crate::net::vip::gate_install`).
#[derive(Default)]
pub(super) struct Gate {
    /// The gate's rule is in place.
    pub(super) installed: bool,
    /// The lease deadline (CLOCK_BOOTTIME ns) last handed to the kernel,
    /// or tried: the next attempt waits for a renewal that moves it.
    pub(super) tried_until: u64,
    /// The last attempt failed (said once until one succeeds).
    pub(super) failing: bool,
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
    // A fence left by an earlier run of this node guarded that run's
    // sockets, which died with it: this run starts unfenced.
    if let Err(e) = crate::net::vip::fence_remove() {
        tracing::warn!("removing an earlier run's fence ({}): {e}", crate::net::vip::FENCE_TABLE);
    }
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
    let lease = match &shared.cfg.witness {
        Some(w) => {
            let client = crate::witness::connect(w, &key).context("connecting to the witness")?;
            Some(Lease::spawn(shared.clone(), client, super::lease::describe(w)).context("starting the lease thread")?)
        }
        None => None,
    };
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
        lease,
        suspended: false,
        gate: Gate::default(),
        want_solo: false,
        witness_noted: false,
        last_acked: (0, Instant::now()),
        cut_off_since: None,
    };
    let (s2, h2, c2, l2) = (node.shared.clone(), node.hb.clone(), node.commit_stats.clone(), node.lease.clone());
    control::spawn(node.shared.clone(), Arc::new(move || status_json(&s2, &h2, &c2, l2.as_deref())))
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

fn status_json(
    shared: &Shared,
    hb: &Heartbeats,
    commit: &CommitStatsHandle,
    lease: Option<&Lease>,
) -> serde_json::Value {
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
    let mut v = serde_json::to_value(&st).unwrap_or_default();
    v["lease"] = lease.map(|l| l.status()).unwrap_or(serde_json::Value::Null);
    v
}

impl Node {
    pub(super) fn refresh_commit_stats(&self) {
        if let Some(c) = &self.commit
            && let Ok(mut s) = self.commit_stats.lock()
        {
            *s = Some(c.stats());
        }
    }

    /// Waits up to `timeout` for the next event; also turns SIGINT/SIGTERM/
    /// SIGHUP into [`NodeEvent::Stop`].
    pub(super) fn next_event(&mut self, timeout: Duration) -> Option<NodeEvent> {
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

    pub(super) fn post(&self, c: Command) {
        if let Ok(g) = self.shared.commands.lock()
            && let Some(cmds) = g.as_ref()
        {
            cmds.post(c);
        }
    }

    /// Kills the replica tree (its init's death takes the PID namespace).
    pub(super) fn kill_replica(&self) {
        let pid = self.init.load(Ordering::Acquire);
        if pid > 0 {
            let _ = sfd::kill(pid, libc::SIGKILL);
        }
    }

    pub(super) fn shutdown(&mut self) {
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

    /// Asks the witness for `want` and waits for the grant (its epoch);
    /// `None` if the node is stopped first. Says every few seconds why it
    /// still waits.
    pub(super) fn acquire(&mut self, want: super::lease::Want, state: &str) -> anyhow::Result<Option<u64>> {
        let Some(lease) = self.lease.clone() else { bail!("no witness configured") };
        self.shared.set_state(state);
        lease.want(want);
        let mut said = Instant::now();
        loop {
            match self.next_event(Duration::from_millis(50)) {
                Some(NodeEvent::LeaseGranted(epoch)) => {
                    tracing::info!("the witness granted the lease at epoch {epoch}");
                    return Ok(Some(epoch));
                }
                Some(NodeEvent::Stop) => return Ok(None),
                Some(NodeEvent::LeaseStale(why)) | Some(NodeEvent::LeaseLost(why)) => {
                    bail!("the witness refused the lease: {why}")
                }
                _ => {}
            }
            if said.elapsed() > Duration::from_secs(5) {
                let st = lease.status();
                tracing::info!(
                    "still waiting for the lease: {}",
                    st["last_denial"].as_str().or(st["last_error"].as_str()).unwrap_or("no answer yet")
                );
                said = Instant::now();
            }
        }
    }

    /// Our epoch: the witness's for our history, or counted locally.
    pub(super) fn epoch(&self) -> u64 {
        self.shared.link.sender.lock().map(|s| s.epoch()).unwrap_or(0)
    }

    /// A heartbeat from a primary at a newer epoch than ours: we were
    /// replaced (the frames that would say so may never reach us).
    pub(super) fn replaced_by_heartbeat(&self) -> Option<u64> {
        let b = self.hb.last_beat()?;
        (b.role == Role::Primary && b.epoch > self.epoch()).then_some(b.epoch)
    }

    /// Serving alone with a witness: output flows only while the lease is
    /// held. A lapse drops all output and gives up the VIP; a renewal
    /// brings both back.
    pub(super) fn enforce_lease(&mut self, vip: &crate::net::vip::Vip) {
        let Some(lease) = self.lease.clone() else { return };
        let valid = lease.valid();
        if !valid && !self.suspended {
            self.suspended = true;
            self.shared.note(format!(
                "the lease lapsed while serving alone: output dropped and the VIP given up until the witness renews it ({})",
                lease.status()["last_error"].as_str().unwrap_or("no answer")
            ));
            self.set_output(false, vip);
            self.shared.set_state("suspended: no lease");
        } else if valid && self.suspended {
            self.suspended = false;
            self.shared.note("the lease is renewed: serving again".into());
            self.set_output(true, vip);
            self.shared.set_state("alone");
        }
        if !self.suspended {
            self.refresh_gate(vip);
        }
    }

    /// A node serving without output commit and with a lease: hands each
    /// renewal to the kernel's output gate (installing it the first time),
    /// so output stops at the lease's deadline even if this loop does not
    /// run. The kernel counts from when the `nft` call commits, a few ms
    /// after the lease was read, so the gate may outlive our view of the
    /// lease by as long as the call took: half the witness's margin
    /// (`crate::witness::margin`, 20 ms for a 400 ms lease) is allowed. A
    /// call that took longer (the node stalled in it) is made again with
    /// what is left then; if that is late too the node fences itself until
    /// the next renewal (a short output pause, said once per streak).
    pub(super) fn refresh_gate(&mut self, vip: &crate::net::vip::Vip) {
        let Some(lease) = self.lease.clone() else { return };
        if self.commit.is_some() {
            return;
        }
        let (_, until) = lease.valid_for();
        if (self.gate.installed || self.gate.failing) && until <= self.gate.tried_until {
            return;
        }
        self.gate.tried_until = until;
        let slack = crate::witness::margin(Duration::from_millis(self.shared.cfg.link.lease_ms)) / 2;
        let was_failing = self.gate.failing;
        // Ok(true): set in time; Ok(false): set, but late twice.
        let mut outcome = Ok(false);
        for _ in 0..2 {
            let (left, _) = lease.valid_for();
            let asked = Instant::now();
            let r = if self.gate.installed {
                crate::net::vip::gate_renew(vip.addr, left)
            } else {
                crate::net::vip::gate_install(vip.addr, left)
            };
            if let Err(e) = r {
                outcome = Err(e);
                break;
            }
            self.gate.installed = true;
            if asked.elapsed() <= slack {
                outcome = Ok(true);
                break;
            }
            tracing::warn!("the output gate took {:?} to set: setting it again", asked.elapsed());
        }
        match outcome {
            Ok(true) => self.gate.failing = false,
            Ok(false) => {
                // Install afresh at the next renewal; drop everything now.
                if let Err(e) = crate::net::vip::fence_install(vip.addr) {
                    self.shared.note(format!("fencing after a slow output gate: {e}"));
                }
                self.gate = Gate { installed: false, tried_until: until, failing: true };
                if !was_failing {
                    self.shared
                        .note("the output gate was set too late twice: output dropped until the next renewal".into());
                }
            }
            Err(e) => {
                if !was_failing {
                    self.shared.note(format!(
                        "the kernel's output gate on the lease ({e}): the main loop alone enforces the lease"
                    ));
                }
                // Install afresh next time (the table may be gone).
                self.gate.installed = false;
                self.gate.failing = true;
            }
        }
    }

    /// Lets this node's output out (and holds the VIP), or drops it all
    /// (and gives the VIP up).
    pub(super) fn set_output(&mut self, on: bool, vip: &crate::net::vip::Vip) {
        use crate::net::vip as v;
        let r = if on {
            let a =
                vip.add().map(|_| ()).or_else(|e| if e.to_string().contains("File exists") { Ok(()) } else { Err(e) });
            let _ = v::announce(&vip.ifname, vip.addr, 3);
            match &self.commit {
                Some(c) => {
                    c.set_mode(Mode::Solo);
                    a
                }
                None if self.lease.is_some() => {
                    // Gated on the lease from the start (see refresh_gate).
                    self.gate = Gate::default();
                    self.refresh_gate(vip);
                    a
                }
                None => a.and(v::fence_remove()),
            }
        } else {
            self.gate = Gate::default();
            let f = match &self.commit {
                Some(c) => {
                    c.set_mode(Mode::Fenced);
                    Ok(())
                }
                None => v::fence_install(vip.addr),
            };
            f.and(vip.remove())
        };
        if let Err(e) = r {
            self.shared.note(format!("output {}: {e}", if on { "on" } else { "off" }));
        }
    }

    pub(super) fn vip(&self) -> anyhow::Result<crate::net::vip::Vip> {
        let (addr, prefix) = self.shared.cfg.vip().ok_or_else(|| anyhow!("service.vip"))?;
        Ok(crate::net::takeover::vip(addr, prefix, &self.shared.cfg.service.interface))
    }
}

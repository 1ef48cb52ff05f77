//! The primary's side of `ftnet up`: pair, take the lease (with a witness),
//! add the VIP, record the server with output commit, and decide what to do
//! when the backup is lost.
//!
//! Invariants:
//! - nothing reaches a client before the backup acknowledged it, unless the
//!   node went on alone: with a witness only while it holds the lease at a
//!   newer epoch (a lapse suspends output and gives up the VIP until the
//!   lease is renewed), without one only as the policy allows;
//! - going on alone retires the link for good: the backup's log can never
//!   again be completed, so it must never be promoted (the new epoch tells
//!   it and the witness);
//! - a node that learns it was replaced (a newer epoch on a frame or a
//!   heartbeat, or the witness refusing a renewal) drops all output and
//!   stops at once;
//! - a primary that hears neither its witness nor its backup on the service
//!   network, while the backup (on the replication link) says it hears the
//!   witness, is the one cut off from clients: it hands the service over
//!   like a planned switchover, so the backup's log is complete.

use super::config::Policy;
use super::daemon::{Node, QUEUE};
use super::lease::Want;
use super::linkmgr;
use super::pipe;
use super::shared::{NodeEvent, Shared};
use crate::link::{Fence, FenceReason, Hello, Key, Message, Path, PeerState, Role};
use crate::net::commit::{Commit, CommitConfig, Mode};
use crate::replica::engine::{Command, Commands, Options, RunEnd};
use crate::replica::launch;
use anyhow::anyhow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl Node {
    pub(super) fn run_primary(
        &mut self,
        key: Key,
        mut hello: Hello,
        header: crate::replica::log::Header,
    ) -> anyhow::Result<i32> {
        let shared = self.shared.clone();
        if self.lease.is_some() {
            // A new history: the witness numbers it, and no other node may
            // serve while we hold it.
            let Some(epoch) = self.acquire(Want::Start, "acquiring the lease to start")? else { return Ok(0) };
            hello.epoch = epoch;
            if let Ok(mut s) = shared.link.sender.lock() {
                s.set_epoch(epoch);
            }
        }
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
            self.lease.as_ref().map(|l| l.deadline()),
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
                    if let Some(epoch) = self.replaced_by_heartbeat() {
                        shared.note(format!("a primary at epoch {epoch} is heard: we were replaced; stopping at once"));
                        self.fence_and_die(&vip);
                        return Ok(1);
                    }
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
                Some(NodeEvent::LeaseLost(why)) => {
                    shared.note(format!("the witness refused our lease: {why}; stopping at once"));
                    self.fence_and_die(&vip);
                    return Ok(1);
                }
                Some(NodeEvent::LeaseGranted(epoch)) if self.want_solo => self.go_alone_at(epoch, &vip),
                Some(NodeEvent::SwitchoverRequested) if self.want_solo => {
                    // A Solo grant in flight would make the backup's log
                    // useless at the witness: the backup could not take over.
                    shared.note("switchover refused: this primary is asking the witness to go on alone".into());
                }
                Some(NodeEvent::SwitchoverRequested) => {
                    // A planned switchover asked for by the backup.
                    self.switchover(&vip)?;
                    return Ok(0);
                }
                Some(NodeEvent::GoAlone) => self.ask_to_go_alone("the operator said so (ftnet promote --force)", &vip),
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
            if let Some(epoch) = self.replaced_by_heartbeat() {
                shared.note(format!("a primary at epoch {epoch} is heard: we were replaced; stopping at once"));
                self.fence_and_die(&vip);
                return Ok(1);
            }
            if self.check_service_network() {
                self.switchover(&vip)?;
                return Ok(0);
            }
            self.check_backup(&vip);
            if shared.link.solo.load(Ordering::Acquire) {
                self.enforce_lease(&vip);
            } else if self.want_solo && !self.suspended && self.lease.as_ref().is_some_and(|l| !l.valid()) {
                // No backup and no lease: another node may soon hold it.
                // Output stays cut off; give up the address too.
                self.suspended = true;
                shared.note("no backup and no lease: the VIP is given up, output dropped".into());
                self.set_output(false, &vip);
                shared.set_state("holding: backup lost, no lease");
            } else if let Some(l) = &self.lease
                && !l.valid()
                && !self.witness_noted
            {
                self.witness_noted = true;
                shared.note(
                    "the witness does not renew our lease: the pair runs on, but a failover needs it back".into(),
                );
            }
        }
    }

    /// The backup is lost when it is silent on every heartbeat path, or
    /// when output waits and no acknowledgement has come for three
    /// heartbeat timeouts or a second, whichever is longer (the replication
    /// link alone was cut). Then: go on alone with the witness's lease, or
    /// as the policy says.
    pub(super) fn check_backup(&mut self, vip: &crate::net::vip::Vip) {
        if self.shared.link.solo.load(Ordering::Acquire) || self.want_solo {
            return;
        }
        // Acknowledgements that still advance, however slowly (a loaded
        // machine), mean the backup is there.
        let acked = self.shared.link.acked.load(Ordering::Acquire);
        if acked != self.last_acked.0 {
            self.last_acked = (acked, Instant::now());
        }
        let waited = self.commit.as_ref().map(|c| c.stats().oldest_held_ms).unwrap_or(0);
        let stall = Duration::from_millis((3 * self.shared.cfg.link.heartbeat_timeout_ms).max(1000));
        let why = if self.hb.peer() == Some(PeerState::Dead) {
            format!("the backup has been silent for {:?}", self.hb.silence())
        } else if u128::from(waited) > stall.as_millis() && self.last_acked.1.elapsed() > stall {
            format!("output has waited {waited} ms and no acknowledgement came for {:?}", self.last_acked.1.elapsed())
        } else {
            return;
        };
        if self.lease.is_some() {
            self.ask_to_go_alone(&why, vip);
            return;
        }
        match self.shared.cfg.policy {
            Some(Policy::PreferAvailability) => {
                self.shared.note(format!("going on alone, unprotected: {why} (policy prefer-availability)"));
                self.go_alone_at(self.epoch() + 1, vip);
            }
            _ => self.shared.set_state("holding: backup unreachable, output held (policy prefer-consistency)"),
        }
    }

    /// With a witness: whether this primary has been cut off from the
    /// service network (its clients) for long enough to hand over: the
    /// witness has not answered for a lease TTL and the backup's service
    /// heartbeats are silent, yet the backup is heard on the replication
    /// link and says it hears the witness. It must hold for
    /// max(3 x heartbeat timeout, lease TTL) without a break.
    pub(super) fn check_service_network(&mut self) -> bool {
        let Some(lease) = &self.lease else { return false };
        let b = self.hb.last_beat();
        let cut_off = !self.shared.link.solo.load(Ordering::Acquire)
            && !self.want_solo
            && !lease.reachable()
            && self.hb.path_state(Path::Service) == Some(PeerState::Dead)
            && self.hb.path_state(Path::Replication) == Some(PeerState::Alive)
            && b.is_some_and(|b| b.role == Role::Backup && b.witness_ok);
        if !cut_off {
            self.cut_off_since = None;
            return false;
        }
        let since = *self.cut_off_since.get_or_insert_with(Instant::now);
        let cfg = &self.shared.cfg.link;
        let hold = Duration::from_millis((3 * cfg.heartbeat_timeout_ms).max(cfg.lease_ms));
        if since.elapsed() < hold {
            return false;
        }
        self.shared.note(format!(
            "cut off from the service network for {:?} (no answer from the witness, no backup heartbeat there; \
             the backup hears the witness): handing the service over to the backup",
            since.elapsed()
        ));
        true
    }

    /// With a witness: ask for the lease at a new epoch; output stays held
    /// until it is granted. Without: go on alone now.
    pub(super) fn ask_to_go_alone(&mut self, why: &str, vip: &crate::net::vip::Vip) {
        match &self.lease {
            Some(l) => {
                if !self.want_solo && !self.shared.link.solo.load(Ordering::Acquire) {
                    self.want_solo = true;
                    self.shared.note(format!("{why}: asking the witness to go on alone"));
                    self.shared.set_state("holding: backup lost, asking the witness");
                    l.want(Want::Solo);
                }
            }
            None => {
                self.shared.note(format!("going on alone, unprotected: {why}"));
                self.go_alone_at(self.epoch() + 1, vip);
            }
        }
    }

    /// Stops waiting for the backup, at `epoch`: output flows without its
    /// acks and the link is retired for good (the backup's log now misses
    /// what follows; a new backup cannot join a running primary).
    pub(super) fn go_alone_at(&mut self, epoch: u64, vip: &crate::net::vip::Vip) {
        if self.shared.link.solo.swap(true, Ordering::AcqRel) {
            return;
        }
        self.want_solo = false;
        self.suspended = false;
        if let Ok(mut s) = self.shared.link.sender.lock() {
            s.set_epoch(epoch);
        }
        self.shared.link.retire();
        self.shared.link.acked_cv.notify_all();
        if self.lease.is_some() {
            self.shared.note(format!("going on alone at epoch {epoch}, holding the witness's lease"));
        }
        self.set_output(true, vip);
        self.shared.set_state("alone");
    }

    /// Waits until the backup acknowledged everything sent, we went alone,
    /// or the backup is heard promoted (a backup stops acknowledging once it
    /// decides to promote, so the last acks may never come); false after
    /// `limit`.
    pub(super) fn wait_acked(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            let (pos, acked) = match self.shared.link.sender.lock() {
                Ok(s) => (s.position().saturating_sub(1), s.acked_through()),
                Err(_) => return false,
            };
            if acked >= pos || self.shared.link.solo.load(Ordering::Acquire) {
                return true;
            }
            if let Some(epoch) = self.replaced_by_heartbeat() {
                tracing::info!("the backup is live at epoch {epoch}: no more acknowledgements will come");
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Stops speaking for the replica: drop all output, kill the replica,
    /// wait until no copy of its sockets is left, give up the VIP.
    pub(super) fn fence_and_die(&mut self, vip: &crate::net::vip::Vip) {
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
    pub(super) fn switchover(&mut self, vip: &crate::net::vip::Vip) -> anyhow::Result<()> {
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
        if let Some(l) = &self.lease
            && l.reachable()
        {
            // Hand the lease over: the backup's takeover waits for it (or
            // for its lapse, when we cannot reach the witness).
            l.want(Want::Release);
            let until = Instant::now() + Duration::from_secs(2);
            while l.epoch() != 0 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = vip.remove();
        self.kill_replica();
        std::thread::sleep(Duration::from_millis(200));
        self.shared.set_state("fenced");
        Ok(())
    }

    pub(super) fn spawn_recording_engine(&self, header: crate::replica::log::Header) -> anyhow::Result<()> {
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

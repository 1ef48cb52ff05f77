//! The backup's side of `ftnet up`: replay the primary's log live, track
//! its connections, and promote when the primary is gone (or fenced itself
//! for a switchover): finish the log, rebuild every connection, take the
//! VIP, go live.
//!
//! Invariants:
//! - it promotes only after a session existed and the primary has been
//!   silent on every heartbeat path for the timeout, or fenced itself, or on
//!   the operator's word; never while its replica has diverged unless
//!   forced; with a witness only once the witness granted the lease at the
//!   epoch of its log (so never after the primary went on alone);
//! - once it decides to promote it acknowledges nothing more (the link is
//!   retired), so the primary cannot release output the backup will not
//!   reproduce;
//! - a replica that exits by itself does so on both nodes: that ends the
//!   daemon, it never promotes.

use super::config::Policy;
use super::daemon::Node;
use super::lease::Want;
use super::shared::{NodeEvent, Shared};
use super::{linkmgr, pipe, takeover};
use crate::link::{Fence, FenceReason, Hello, Key, Message, Path, PeerState, Role};
use crate::net::takeover::{Armed, TakeoverConfig};
use crate::replica::engine::{Commands, EngineError, Options, RunEnd};
use crate::replica::launch;
use crate::sys::fd as sfd;
use anyhow::anyhow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the backup stands on promoting.
#[derive(Default)]
pub(super) struct Decision {
    diverged: bool,
    /// The log was cut and the takeover started.
    promoting: bool,
    /// Decided, waiting for the witness's grant (the reason).
    awaiting_lease: Option<String>,
    /// Live: the replica serves.
    live: bool,
    /// The primary went on alone since our log: never promote.
    stale: bool,
    /// A planned switchover: promote once the stream reached this position.
    fence_wait: Option<(u64, Instant)>,
}

impl Decision {
    fn busy(&self) -> bool {
        self.promoting || self.awaiting_lease.is_some() || self.live
    }
}

impl Node {
    pub(super) fn run_backup(&mut self, key: Key, hello: Hello) -> anyhow::Result<i32> {
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
        let vip = self.vip()?;
        let mut st = Decision::default();
        loop {
            let ev = self.next_event(Duration::from_millis(5));
            match ev {
                Some(NodeEvent::LinkUp(peer)) => {
                    if let Ok(mut s) = shared.status.lock() {
                        s.peer = peer;
                    }
                    if !st.busy() && !st.diverged {
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
                    if st.diverged && !force.load(Ordering::Acquire) {
                        shared.note("the primary fenced itself but this backup diverged: not promoting".into());
                    } else {
                        st.fence_wait = Some((pos, Instant::now()));
                    }
                }
                Some(NodeEvent::ReplicaExited(status)) => {
                    if st.promoting || self.promoted_at.is_some() {
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
                    st.diverged = true;
                    shared.set_state("diverged");
                    if let Ok(mut s) = shared.status.lock() {
                        s.divergences.push(e.clone());
                    }
                    shared
                        .note(format!("the backup's replica diverged or failed; automatic promotion is refused:\n{e}"));
                }
                Some(NodeEvent::Promoted) => {
                    st.live = true;
                    shared.set_state("live");
                    if let Some(t) = self.promoted_at {
                        tracing::info!("promoted: live {:.1} ms after the decision", t.elapsed().as_secs_f64() * 1e3);
                    }
                }
                Some(NodeEvent::PromoteRequested { force: f }) => {
                    force.store(f, Ordering::Release);
                    if st.diverged && !f {
                        shared.note("promote refused: this backup diverged (use ftnet promote --force)".into());
                    } else if shared.link.connected.load(Ordering::Acquire)
                        && !st.diverged
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
                        self.decide(&feed, "requested by the operator", &mut st);
                    }
                }
                Some(NodeEvent::LeaseGranted(epoch)) => {
                    if let Some(why) = st.awaiting_lease.take() {
                        self.promote(&feed, &why, Some(epoch), &mut st);
                    }
                }
                Some(NodeEvent::LeaseStale(why)) => {
                    st.awaiting_lease = None;
                    st.stale = true;
                    shared.note(format!("this backup can never promote: {why}"));
                    shared.set_state("stale: the primary went on without this backup");
                }
                Some(NodeEvent::LeaseLost(why)) => {
                    shared.note(format!("the witness refused our lease: {why}; stopping at once"));
                    self.set_output(false, &vip);
                    self.kill_replica();
                    return Ok(1);
                }
                Some(NodeEvent::Superseded(e)) if st.live => {
                    shared.note(format!("replaced by a node at epoch {e}: stopping at once"));
                    self.set_output(false, &vip);
                    self.kill_replica();
                    return Ok(1);
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
            if let Some((pos, since)) = st.fence_wait
                && (shared.link.received.load(Ordering::Acquire) >= pos || since.elapsed() > Duration::from_secs(5))
            {
                st.fence_wait = None;
                self.decide(&feed, "planned switchover", &mut st);
            }
            if let Some(l) = &self.lease {
                // A primary silent on the service network but heard on the
                // replication link may be cut off from its clients: find out
                // whether we reach the witness and say so in our heartbeats
                // (the primary then hands over; see check_service_network).
                // A diverged backup never invites that: it would not promote.
                let probe = !st.busy()
                    && !st.stale
                    && !st.diverged
                    && self.hb.path_state(Path::Service) == Some(PeerState::Dead);
                l.probe(probe);
                self.hb.witness_ok.store(probe && l.reachable(), Ordering::Release);
            }
            if st.live {
                if let Some(epoch) = self.replaced_by_heartbeat() {
                    shared.note(format!("a primary at epoch {epoch} is heard: we were replaced; stopping at once"));
                    self.set_output(false, &vip);
                    self.kill_replica();
                    return Ok(1);
                }
                self.enforce_lease(&vip);
                continue;
            }
            if !st.busy()
                && !st.stale
                && let Some(epoch) = self.replaced_by_heartbeat()
            {
                // The primary went on alone (a newer epoch): our log misses
                // what it served since, so we must never promote.
                st.stale = true;
                shared.note(format!("the primary went on alone at epoch {epoch}: this backup can never promote"));
                shared.set_state("stale: the primary went on without this backup");
            }
            // The heartbeats decide: a dead host's TCP connection can look
            // alive for minutes (no FIN or RST ever comes).
            if !st.busy() && !st.diverged && !st.stale && self.hb.peer() == Some(PeerState::Dead) {
                let silence = self.hb.silence();
                if self.lease.is_some() || shared.cfg.policy == Some(Policy::PreferAvailability) {
                    if let Ok(mut s) = shared.status.lock() {
                        s.detect_ms = Some(silence.as_secs_f64() * 1e3);
                    }
                    self.decide(&feed, &format!("the primary has been silent for {silence:?}"), &mut st);
                } else {
                    shared.set_state("primary unreachable: not promoting (policy prefer-consistency)")
                }
            }
        }
    }

    /// The decision to promote. Without a witness: at once. With one: stop
    /// acknowledging (retire the link) and ask for the lease at our log's
    /// epoch; [`NodeEvent::LeaseGranted`] then promotes.
    pub(super) fn decide(&mut self, feed: &Feed, why: &str, st: &mut Decision) {
        if st.busy() {
            return;
        }
        if st.stale {
            self.shared.note(format!("not promoting ({why}): this backup is stale"));
            return;
        }
        let Some(lease) = self.lease.clone() else {
            return self.promote(feed, why, None, st);
        };
        self.promoted_at = Some(Instant::now());
        self.shared.link.retire();
        let log_epoch = self.epoch();
        tracing::info!("{why}: asking the witness for the lease at epoch {log_epoch}");
        lease.want(Want::Takeover { log_epoch });
        st.awaiting_lease = Some(why.to_string());
        self.shared.set_state("promoting: waiting for the witness's lease");
    }

    /// Ends the log here (the engine replays what it has, then takes over)
    /// and moves to `epoch` (the witness's, or ours + 1).
    pub(super) fn promote(&mut self, feed: &Feed, why: &str, epoch: Option<u64>, st: &mut Decision) {
        if st.promoting {
            return;
        }
        st.promoting = true;
        if self.promoted_at.is_none() {
            self.promoted_at = Some(Instant::now());
        }
        tracing::info!("promoting: {why}");
        self.shared.set_state("promoting");
        if let Ok(mut r) = self.shared.role.lock() {
            *r = Role::Primary;
        }
        if let Ok(mut s) = self.shared.link.sender.lock() {
            let e = epoch.unwrap_or(s.epoch() + 1);
            s.set_epoch(e);
        }
        if let Ok(mut f) = feed.lock() {
            f.take();
        }
        self.shared.link.retire();
    }

    pub(super) fn spawn_replay_engine(
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
                        }
                        // Each failure was noted by take_over (status keeps
                        // the last 20 notes, the log all of them).
                        tracing::info!(
                            "takeover: {} connections ({} could not be rebuilt) in {:.1} ms (build {:.1} ms, VIP {:.1} ms, ARP {:.1} ms, release {:.1} ms)",
                            report.connections,
                            failed.len(),
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

/// A tracked connection silent this long that no socket of the replica
/// refers to (open, or closed but still rebuildable) is forgotten: nothing
/// would rebuild it. Far beyond the backup's bounded lag, so a connection
/// the backup's replica is about to accept is never taken for one.
const UNCLAIMED_AFTER: Duration = Duration::from_secs(120);

/// Feeds the tracker what the replica consumed every 50 ms, and once a
/// second forgets the connections that are done
/// ([`crate::tcpstate::ExpiryPolicy::BACKUP`], [`UNCLAIMED_AFTER`]), so a
/// long-running pair keeps room for new ones.
fn spawn_tracker_sync(shared: Arc<Shared>) {
    let _ = std::thread::Builder::new().name("ftnet-tracker".into()).spawn(move || {
        let mut expired = Instant::now();
        while shared.role() == Role::Backup {
            takeover::sync_tracker(&shared);
            if expired.elapsed() >= Duration::from_secs(1) {
                expired = Instant::now();
                let now = sfd::clock_ns(libc::CLOCK_MONOTONIC).max(0) as u64;
                // Lock order as in sync_tracker: live state, then tracker.
                // Without the replica's view (a poisoned lock) nothing counts
                // as unclaimed.
                let claimed: Option<std::collections::HashSet<crate::tcpstate::FourTuple>> =
                    shared.live.lock().ok().map(|l| {
                        l.conns
                            .values()
                            .chain(&l.closed)
                            .filter_map(|c| c.endpoints())
                            .map(|(client, server)| crate::tcpstate::FourTuple { client, server })
                            .collect()
                    });
                if let Ok(mut t) = shared.tracker.lock() {
                    t.expire(now, &crate::tcpstate::ExpiryPolicy::BACKUP);
                    if let Some(claimed) = claimed {
                        t.expire_unclaimed(now, UNCLAIMED_AFTER.as_nanos() as u64, |c| claimed.contains(c));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

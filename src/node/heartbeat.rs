//! Heartbeats: small authenticated UDP datagrams both ways, over the
//! replication network and over the service network, so bulk log traffic
//! never delays them into a false failover.
//!
//! Invariants: a datagram is only believed after authentication with the
//! current (or previous) session's keys and a fresh counter; until the first
//! link session there are no keys, so the peer counts as unknown (never
//! dead) — a node never fails over from a peer it has not paired with.

use super::shared::Shared;
use crate::link::{Beat, Detector, DetectorConfig, HeartbeatRx, HeartbeatTx, Path, PeerState, Role};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Heartbeats {
    tx: Mutex<Option<HeartbeatTx>>,
    rx: Mutex<HeartbeatRx>,
    detector: Mutex<Detector>,
    /// A session existed and the peer was heard at least once.
    paired: AtomicBool,
    /// We tell the peer we are fenced or stopping.
    pub fenced: AtomicBool,
    pub stopping: AtomicBool,
    /// We tell the peer our witness answered within one lease TTL.
    pub witness_ok: AtomicBool,
}

impl Heartbeats {
    pub fn new(shared: &Shared) -> Heartbeats {
        let cfg = DetectorConfig::new(
            Duration::from_millis(shared.cfg.link.heartbeat_interval_ms),
            Duration::from_millis(shared.cfg.link.heartbeat_timeout_ms),
        );
        Heartbeats {
            tx: Mutex::new(None),
            rx: Mutex::new(HeartbeatRx::new(shared.link.counters.clone())),
            detector: Mutex::new(Detector::new(cfg, Instant::now())),
            paired: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            witness_ok: AtomicBool::new(false),
        }
    }

    /// A new link session: its keys seal and open heartbeats from now on.
    pub fn install(&self, keys: crate::link::crypto::HeartbeatKeys) {
        if let Ok(mut rx) = self.rx.lock() {
            rx.install(keys.clone());
        }
        if let Ok(mut tx) = self.tx.lock() {
            *tx = Some(HeartbeatTx::new(keys));
        }
    }

    /// The peer's state; `None` before we ever heard it.
    pub fn peer(&self) -> Option<PeerState> {
        if !self.paired.load(Ordering::Acquire) {
            return None;
        }
        self.detector.lock().ok().map(|d| d.state(Instant::now()))
    }

    /// The peer's state on one path; `None` before we ever heard it.
    pub fn path_state(&self, path: Path) -> Option<PeerState> {
        if !self.paired.load(Ordering::Acquire) {
            return None;
        }
        self.detector.lock().ok().map(|d| d.path_state(path, Instant::now()))
    }

    /// Silence since the peer was last heard.
    pub fn silence(&self) -> Duration {
        self.detector.lock().map(|d| d.silence(Instant::now())).unwrap_or_default()
    }

    pub fn last_beat(&self) -> Option<Beat> {
        self.detector.lock().ok().and_then(|d| d.last_beat().copied())
    }
}

fn bind(addr: std::net::SocketAddr, what: &str, shared: &Shared) -> Option<UdpSocket> {
    match UdpSocket::bind(addr) {
        Ok(s) => {
            let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
            Some(s)
        }
        Err(e) => {
            shared.note(format!("heartbeats: cannot bind {what} {addr}: {e}"));
            None
        }
    }
}

/// Starts the sender and receiver threads.
pub fn spawn(shared: Arc<Shared>, hb: Arc<Heartbeats>) {
    let repl = bind(shared.cfg.node.link, "replication", &shared);
    let svc = bind(shared.cfg.node.service, "service", &shared);
    let peers = [(Path::Replication, shared.cfg.node.peer_link), (Path::Service, shared.cfg.node.peer_service)];
    let sockets: Vec<(Path, UdpSocket)> =
        [(Path::Replication, repl), (Path::Service, svc)].into_iter().filter_map(|(p, s)| s.map(|s| (p, s))).collect();
    let interval = Duration::from_millis(shared.cfg.link.heartbeat_interval_ms);
    let senders: Vec<(Path, UdpSocket)> =
        sockets.iter().filter_map(|(p, s)| s.try_clone().ok().map(|s| (*p, s))).collect();
    let (s2, hb2) = (shared.clone(), hb.clone());
    let _ = std::thread::Builder::new().name("ftnet-hb-tx".into()).spawn(move || {
        loop {
            let beat = Beat {
                role: s2.role(),
                fenced: hb2.fenced.load(Ordering::Acquire),
                stopping: hb2.stopping.load(Ordering::Acquire),
                witness_ok: hb2.witness_ok.load(Ordering::Acquire),
                epoch: s2.link.sender.lock().map(|s| s.epoch()).unwrap_or(0),
                position: match s2.role() {
                    Role::Primary => s2.link.sender.lock().map(|s| s.position()).unwrap_or(0),
                    Role::Backup => s2.link.received.load(Ordering::Acquire),
                },
                applied: s2.link.applied.load(Ordering::Acquire),
            };
            if let Ok(mut tx) = hb2.tx.lock()
                && let Some(tx) = tx.as_mut()
            {
                for (path, sock) in &senders {
                    let Some(dst) = peers.iter().find(|(p, _)| p == path).map(|(_, a)| *a) else { continue };
                    if let Ok(d) = tx.seal(*path, &beat) {
                        let _ = sock.send_to(&d, dst);
                    }
                }
            }
            std::thread::sleep(interval);
        }
    });
    for (path, sock) in sockets {
        let hb3 = hb.clone();
        let _ = std::thread::Builder::new().name(format!("ftnet-hb-rx-{path}")).spawn(move || {
            let mut buf = [0u8; 256];
            loop {
                let Ok((n, _from)) = sock.recv_from(&mut buf) else { continue };
                let beat = hb3.rx.lock().ok().and_then(|mut rx| rx.open(&buf[..n], path).ok());
                if let Some(beat) = beat
                    && let Ok(mut d) = hb3.detector.lock()
                {
                    d.heard(path, beat, Instant::now());
                    hb3.paired.store(true, Ordering::Release);
                }
            }
        });
    }
}

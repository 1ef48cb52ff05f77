//! Heartbeats: small sealed UDP datagrams on their own paths, and the
//! failure detector, sans-IO.
//!
//! Each node sends a [`Beat`] every interval over the replication network
//! *and* over the service network (two [`Path`]s), so a bulk upload in the
//! log stream never delays them into a false failover, and a cut of one
//! network is told apart from a dead peer.
//!
//! Datagram (72 bytes, big-endian):
//! | offset | size | field | rule |
//! |---|---|---|---|
//! | 0 | 4 | magic | `b"FTHB"` |
//! | 4 | 1 | version | 1 |
//! | 5 | 1 | path | 1 replication, 2 service; must match the socket it came in on |
//! | 6 | 2 | reserved | 0 |
//! | 8 | 8 | session | the link session whose heartbeat keys sealed it |
//! | 16 | 8 | counter | per (session, sender, path), strictly increasing from 0 |
//! | 24 | 32 | beat | sealed: role, flags (1 fenced, 2 stopping, 4 witness heard), 6 zero bytes, epoch, position, applied |
//! | 56 | 16 | tag | Poly1305 over bytes 0..24 (associated data) and the beat |
//!
//! Keys come from the link session (one per direction, apart from the
//! stream keys), so a heartbeat from an earlier session cannot pass as a
//! current one, and heartbeats flow only once the pair has handshaken; they
//! keep flowing with that session's keys while the TCP link is down. The
//! nonce is `[direction, 4, path, 0] ‖ counter`; per path the counter
//! strictly increases ([`HeartbeatTx`] refuses to wrap), so it never repeats
//! under a key. The receiver drops (and counts) a datagram whose counter is
//! not above the last one accepted on that path: replays and reordered
//! datagrams. After a reconnect the previous session's heartbeats are
//! accepted on a path until the new session's first one arrives there.
//!
//! Known limit: an attacker who can delay datagrams on a path can make a
//! dead peer look alive for as long as it trickles out datagrams it held
//! back (they were authentic and unseen); the witness lease (issue 5), not
//! heartbeats, guards against two primaries.
//!
//! Invariants: a datagram is parsed only if it has exactly [`HB_LEN`]
//! bytes; the beat is decoded only after it authenticates; no panics.

use super::crypto::HeartbeatKeys;
use super::wire::TAG_LEN;
use super::{Counters, LinkError, Role};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const HB_MAGIC: [u8; 4] = *b"FTHB";
pub const HB_VERSION: u8 = 1;
const HB_HEADER_LEN: usize = 24;
const HB_BODY_LEN: usize = 32;
/// Bytes of a heartbeat datagram.
pub const HB_LEN: usize = HB_HEADER_LEN + HB_BODY_LEN + TAG_LEN;

/// Which network a heartbeat travels over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Path {
    Replication = 1,
    Service = 2,
}

impl Path {
    fn index(self) -> usize {
        self as usize - 1
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Path::Replication => "replication",
            Path::Service => "service",
        })
    }
}

/// What a heartbeat says about its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    pub role: Role,
    /// The sender was fenced (it no longer releases output).
    pub fenced: bool,
    /// The sender is stopping (with its server, or on request).
    pub stopping: bool,
    /// The sender heard its witness within one lease TTL (lets a primary
    /// cut off from the service network know the backup could take over).
    pub witness_ok: bool,
    pub epoch: u64,
    /// The sender's stream position (frames it has queued).
    pub position: u64,
    /// How far the sender applied the peer's stream.
    pub applied: u64,
}

impl Beat {
    fn emit(&self) -> [u8; HB_BODY_LEN] {
        let mut b = [0u8; HB_BODY_LEN];
        b[0] = match self.role {
            Role::Primary => 1,
            Role::Backup => 2,
        };
        b[1] = u8::from(self.fenced) | u8::from(self.stopping) << 1 | u8::from(self.witness_ok) << 2;
        b[8..16].copy_from_slice(&self.epoch.to_be_bytes());
        b[16..24].copy_from_slice(&self.position.to_be_bytes());
        b[24..32].copy_from_slice(&self.applied.to_be_bytes());
        b
    }

    fn parse(b: &[u8; HB_BODY_LEN]) -> Result<Beat, LinkError> {
        let [role, flags, r0, r1, r2, r3, r4, r5, rest @ ..] = *b;
        let [e0, e1, e2, e3, e4, e5, e6, e7, p0, p1, p2, p3, p4, p5, p6, p7, a0, a1, a2, a3, a4, a5, a6, a7] = rest;
        let role = match role {
            1 => Role::Primary,
            2 => Role::Backup,
            r => return Err(LinkError::Heartbeat(format!("unknown role {r}"))),
        };
        if flags & !7 != 0 || [r0, r1, r2, r3, r4, r5] != [0; 6] {
            return Err(LinkError::Heartbeat(format!("unknown flags {flags:#04x} or reserved bytes set")));
        }
        Ok(Beat {
            role,
            fenced: flags & 1 != 0,
            stopping: flags & 2 != 0,
            witness_ok: flags & 4 != 0,
            epoch: u64::from_be_bytes([e0, e1, e2, e3, e4, e5, e6, e7]),
            position: u64::from_be_bytes([p0, p1, p2, p3, p4, p5, p6, p7]),
            applied: u64::from_be_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
        })
    }
}

/// Seals our heartbeats.
#[derive(Debug)]
pub struct HeartbeatTx {
    keys: HeartbeatKeys,
    next: [u64; 2],
}

impl HeartbeatTx {
    pub fn new(keys: HeartbeatKeys) -> HeartbeatTx {
        HeartbeatTx { keys, next: [0; 2] }
    }

    pub fn session(&self) -> [u8; 8] {
        self.keys.session
    }

    /// The datagram to send on `path`.
    pub fn seal(&mut self, path: Path, beat: &Beat) -> Result<[u8; HB_LEN], LinkError> {
        let counter = self.next[path.index()];
        if counter == u64::MAX {
            return Err(LinkError::NonceReuse { counter, last: counter });
        }
        let mut d = [0u8; HB_LEN];
        d[..4].copy_from_slice(&HB_MAGIC);
        d[4] = HB_VERSION;
        d[5] = path as u8;
        d[8..16].copy_from_slice(&self.keys.session);
        d[16..24].copy_from_slice(&counter.to_be_bytes());
        let (ad, rest) = d.split_at_mut(HB_HEADER_LEN);
        let (body, tag) = rest.split_at_mut(HB_BODY_LEN);
        body.copy_from_slice(&beat.emit());
        let t = self.keys.seal(path as u8, counter, ad, body).ok_or(LinkError::Heartbeat("sealing failed".into()))?;
        tag.copy_from_slice(&t);
        self.next[path.index()] = counter + 1;
        Ok(d)
    }
}

struct RxSession {
    keys: HeartbeatKeys,
    /// Last counter accepted, per path.
    last: [Option<u64>; 2],
}

/// Opens the peer's heartbeats, with replay protection.
pub struct HeartbeatRx {
    /// Oldest first; at most two (the current session and the previous).
    sessions: Vec<RxSession>,
    counters: Arc<Counters>,
}

impl HeartbeatRx {
    pub fn new(counters: Arc<Counters>) -> HeartbeatRx {
        HeartbeatRx { sessions: Vec::new(), counters }
    }

    /// A new link session: its heartbeats become current; the previous
    /// session's are still accepted on a path until the new one is heard there.
    pub fn install(&mut self, keys: HeartbeatKeys) {
        if self.sessions.iter().any(|s| s.keys.session == keys.session) {
            return;
        }
        self.sessions.push(RxSession { keys, last: [None; 2] });
        if self.sessions.len() > 2 {
            self.sessions.remove(0);
        }
    }

    /// Verifies a datagram that arrived on `arrived_on`. Every rejection is
    /// counted; the datagram is then dropped.
    pub fn open(&mut self, datagram: &[u8], arrived_on: Path) -> Result<Beat, LinkError> {
        let r = self.check(datagram, arrived_on);
        if let Err(e) = &r {
            self.counters.count(e);
        }
        r
    }

    fn check(&mut self, datagram: &[u8], arrived_on: Path) -> Result<Beat, LinkError> {
        let bad = |what: String| Err(LinkError::Heartbeat(what));
        let Ok(d) = <[u8; HB_LEN]>::try_from(datagram) else {
            return bad(format!("{} bytes, expected {HB_LEN}", datagram.len()));
        };
        if d[..4] != HB_MAGIC {
            return bad(format!("bad magic {:02x?}", &d[..4]));
        }
        if d[4] != HB_VERSION {
            return bad(format!("version {}, this ftnet speaks {HB_VERSION}", d[4]));
        }
        let path = match d[5] {
            1 => Path::Replication,
            2 => Path::Service,
            p => return bad(format!("unknown path {p}")),
        };
        if path != arrived_on {
            return bad(format!("sent on the {path} path but arrived on the {arrived_on} path"));
        }
        if d[6..8] != [0, 0] {
            return bad("reserved bytes set".into());
        }
        let mut session = [0u8; 8];
        session.copy_from_slice(&d[8..16]);
        let mut c = [0u8; 8];
        c.copy_from_slice(&d[16..24]);
        let counter = u64::from_be_bytes(c);
        let n = self.sessions.len();
        let Some(i) = self.sessions.iter().position(|s| s.keys.session == session) else {
            return bad(format!("unknown session {session:02x?}"));
        };
        let p = path.index();
        if i + 1 < n && self.sessions[n - 1].last[p].is_some() {
            return bad(format!("session {session:02x?} was replaced on the {path} path"));
        }
        let s = &mut self.sessions[i];
        if let Some(last) = s.last[p]
            && counter <= last
        {
            return Err(LinkError::HeartbeatStale { path, counter, last });
        }
        let (ad, rest) = d.split_at(HB_HEADER_LEN);
        let mut body = [0u8; HB_BODY_LEN];
        body.copy_from_slice(&rest[..HB_BODY_LEN]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&rest[HB_BODY_LEN..]);
        if !s.keys.open(path as u8, counter, ad, &mut body, tag) {
            return Err(LinkError::HeartbeatMac);
        }
        s.last[p] = Some(counter);
        Beat::parse(&body)
    }
}

/// Failure detector timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectorConfig {
    /// How often each node sends a heartbeat on each path.
    pub interval: Duration,
    /// Silence after which the peer is suspect (shown in status; no action).
    pub suspect_after: Duration,
    /// Silence after which the peer is dead.
    pub timeout: Duration,
}

impl Default for DetectorConfig {
    /// 20 ms heartbeats, suspect after 50 ms, dead after 100 ms.
    fn default() -> Self {
        DetectorConfig::new(Duration::from_millis(20), Duration::from_millis(100))
    }
}

impl DetectorConfig {
    /// Suspect after 2.5 intervals (at most the timeout).
    pub fn new(interval: Duration, timeout: Duration) -> DetectorConfig {
        DetectorConfig { interval, suspect_after: (interval * 5 / 2).min(timeout), timeout }
    }

    /// A readable complaint if the timings cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval.is_zero() {
            return Err("heartbeat interval must be above zero".into());
        }
        if self.timeout < self.interval * 2 {
            return Err(format!(
                "heartbeat timeout {:?} must be at least twice the interval {:?} (one lost datagram must not kill)",
                self.timeout, self.interval
            ));
        }
        if self.suspect_after < self.interval || self.suspect_after > self.timeout {
            return Err(format!(
                "suspect-after {:?} must lie between the interval {:?} and the timeout {:?}",
                self.suspect_after, self.interval, self.timeout
            ));
        }
        Ok(())
    }
}

/// What the detector thinks of the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerState {
    Alive,
    Suspect,
    Dead,
}

/// Per-path last-heard times and the peer's latest beat.
#[derive(Clone, Debug)]
pub struct Detector {
    cfg: DetectorConfig,
    since: Instant,
    heard: [Option<Instant>; 2],
    last: Option<Beat>,
}

impl Detector {
    /// Silence is counted from `now` until the first heartbeat.
    pub fn new(cfg: DetectorConfig, now: Instant) -> Detector {
        Detector { cfg, since: now, heard: [None; 2], last: None }
    }

    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// An authenticated heartbeat arrived on `path`.
    pub fn heard(&mut self, path: Path, beat: Beat, now: Instant) {
        let slot = &mut self.heard[path.index()];
        *slot = Some(slot.map_or(now, |t| t.max(now)));
        self.last = Some(beat);
    }

    /// The latest beat, from either path.
    pub fn last_beat(&self) -> Option<&Beat> {
        self.last.as_ref()
    }

    /// When the peer was last heard on `path`.
    pub fn last_heard(&self, path: Path) -> Option<Instant> {
        self.heard[path.index()]
    }

    /// Silence on the better path (since creation if never heard).
    pub fn silence(&self, now: Instant) -> Duration {
        let last = self.heard.iter().flatten().max().copied().unwrap_or(self.since);
        now.saturating_duration_since(last)
    }

    fn classify(&self, silence: Duration) -> PeerState {
        if silence >= self.cfg.timeout {
            PeerState::Dead
        } else if silence >= self.cfg.suspect_after {
            PeerState::Suspect
        } else {
            PeerState::Alive
        }
    }

    /// The peer's state: alive if either path is.
    pub fn state(&self, now: Instant) -> PeerState {
        self.classify(self.silence(now))
    }

    /// One path's state (to tell a cut network from a dead peer).
    pub fn path_state(&self, path: Path, now: Instant) -> PeerState {
        let last = self.heard[path.index()].unwrap_or(self.since);
        self.classify(now.saturating_duration_since(last))
    }
}

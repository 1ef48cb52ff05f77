//! `ftnet witness`: the lease server on UDP.
//!
//! Invariants:
//! - a datagram is acted on only if it authenticates ([`super::proto`]); one
//!   that does not, or is malformed, is dropped without an answer, counted,
//!   and logged (at most once per second, with the number suppressed);
//! - a request is acted on only if its timestamp is within [`MAX_SKEW`] of
//!   the witness's clock and, except for a query, strictly newer than the
//!   last accepted one from the same node (and than the witness's own start,
//!   so a request captured before a restart is refused after it too);
//!   otherwise it is answered `Refused` (authenticated, so the node learns
//!   its clock is off) and counted;
//! - a changed lease is on disk before its answer is sent ([`Store`]);
//! - one thread owns the socket and the store: requests are decided one at
//!   a time, so two racing nodes cannot both be granted.

use super::proto::{AnswerBody, MAX_DATAGRAM, Op, WireError, WireKeys};
use super::state::Store;
use super::{Answer, WitnessError, ms};
use crate::link::Key;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// How far a request's timestamp may be from the witness's clock.
pub const MAX_SKEW_MS: u64 = 30_000;
/// [`MAX_SKEW_MS`] as a duration.
pub const MAX_SKEW: Duration = Duration::from_millis(MAX_SKEW_MS);

/// What the server saw (shared; read with [`Counters::snapshot`]).
#[derive(Debug, Default)]
pub struct Counters {
    accepted: AtomicU64,
    bad_mac: AtomicU64,
    malformed: AtomicU64,
    stale: AtomicU64,
    refused: AtomicU64,
}

/// A copy of the [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    /// Requests acted on (granted, denied or queried).
    pub accepted: u64,
    /// Datagrams that failed authentication.
    pub bad_mac: u64,
    /// Datagrams with a bad header or (authentic) body.
    pub malformed: u64,
    /// Authentic requests with a replayed, old or skewed timestamp.
    pub stale: u64,
    /// Authentic requests refused otherwise (invalid, state not written).
    pub refused: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CountersSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            accepted: g(&self.accepted),
            bad_mac: g(&self.bad_mac),
            malformed: g(&self.malformed),
            stale: g(&self.stale),
            refused: g(&self.refused),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Logs at most once per second, counting what it held back.
#[derive(Debug, Default)]
struct RateLog {
    last: Option<Instant>,
    held: u64,
}

impl RateLog {
    fn warn(&mut self, now: Instant, msg: impl FnOnce() -> String) {
        if self.last.is_some_and(|l| now.duration_since(l) < Duration::from_secs(1)) {
            self.held += 1;
            return;
        }
        let held = std::mem::take(&mut self.held);
        self.last = Some(now);
        if held > 0 {
            warn!("{} (and {held} more rejections in the last second)", msg());
        } else {
            warn!("{}", msg());
        }
    }
}

/// The witness server: one UDP socket, one [`Store`].
#[derive(Debug)]
pub struct Server {
    sock: UdpSocket,
    addr: SocketAddr,
    keys: WireKeys,
    store: Store,
    /// Last accepted timestamp per node.
    last: HashMap<String, u64>,
    /// Just before the witness's start (CLOCK_REALTIME ms): the floor for
    /// every node.
    floor_ms: u64,
    counters: Arc<Counters>,
    log: RateLog,
}

impl Server {
    /// Loads the state file (`init`: a new witness, no file yet) and binds
    /// `listen`.
    pub fn bind(listen: SocketAddr, key: &Key, state: &Path, init: bool) -> Result<Server, WitnessError> {
        let store = Store::open(state, Instant::now(), init)?;
        let addr = listen.to_string();
        let sock =
            UdpSocket::bind(listen).map_err(|source| WitnessError::Io { addr: addr.clone(), op: "bind", source })?;
        let addr = sock.local_addr().map_err(|source| WitnessError::Io { addr, op: "local address", source })?;
        Ok(Server {
            sock,
            addr,
            keys: WireKeys::new(key),
            store,
            last: HashMap::new(),
            // Requests stamped in the witness's first millisecond pass.
            floor_ms: super::realtime_ms().saturating_sub(1),
            counters: Arc::default(),
            log: RateLog::default(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Serves until `stop` is set (checked every 100 ms).
    pub fn serve(&mut self, stop: &AtomicBool) -> Result<(), WitnessError> {
        let addr = self.addr.to_string();
        self.sock.set_read_timeout(Some(Duration::from_millis(100))).map_err(|source| WitnessError::Io {
            addr: addr.clone(),
            op: "set timeout",
            source,
        })?;
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut io_log = RateLog::default();
        while !stop.load(Ordering::Relaxed) {
            let (n, from) = match self.sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    io_log.warn(Instant::now(), || format!("witness {addr}: receive: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let Some(reply) = self.handle_datagram(Instant::now(), super::realtime_ms(), from, &buf[..n]) else {
                continue;
            };
            if let Err(e) = self.sock.send_to(&reply, from) {
                io_log.warn(Instant::now(), || format!("witness {addr}: answering {from}: {e}"));
            }
        }
        Ok(())
    }

    /// Handles one datagram from `from` at `now` (`now_ms` on the real-time
    /// clock); returns the sealed answer, if any.
    pub fn handle_datagram(&mut self, now: Instant, now_ms: u64, from: SocketAddr, d: &[u8]) -> Option<Vec<u8>> {
        let (id, req) = match self.keys.open_request(d) {
            Ok(x) => x,
            Err(e) => {
                let c = &self.counters;
                if e == WireError::Mac {
                    bump(&c.bad_mac)
                } else {
                    bump(&c.malformed)
                }
                let s = c.snapshot();
                self.log.warn(now, || {
                    format!(
                        "witness: dropped a datagram from {from}: {e} (totals: {} bad MAC, {} malformed, {} stale)",
                        s.bad_mac, s.malformed, s.stale
                    )
                });
                return None;
            }
        };
        let answer = self.answer(now, now_ms, from, req);
        let salt = match super::random::<16>() {
            Ok(s) => s,
            Err(e) => {
                error!("witness: cannot answer {from}: {e}");
                return None;
            }
        };
        match self.keys.seal_answer(id, salt, &answer) {
            Ok(d) => Some(d),
            Err(e) => {
                error!("witness: cannot seal the answer to {from}: {e}");
                None
            }
        }
    }

    fn answer(&mut self, now: Instant, now_ms: u64, from: SocketAddr, req: super::proto::RequestBody) -> AnswerBody {
        let skew = now_ms.abs_diff(req.time_ms);
        let stale = if skew > MAX_SKEW_MS {
            Some(format!(
                "timestamp {} is {skew} ms off the witness's clock ({now_ms}); at most {MAX_SKEW_MS} ms is accepted",
                req.time_ms
            ))
        } else if req.op != Op::Query {
            let last = self.last.get(&req.node).copied();
            let floor = last.unwrap_or(self.floor_ms);
            (req.time_ms <= floor).then(|| match last {
                Some(l) => format!(
                    "timestamp {} is not newer than the last accepted from node {} ({l}): a replay?",
                    req.time_ms, req.node
                ),
                None => format!(
                    "timestamp {} is not newer than the witness's start ({floor}): sent before it started, or the \
                     node's clock is behind",
                    req.time_ms
                ),
            })
        } else {
            None
        };
        if let Some(reason) = stale {
            bump(&self.counters.stale);
            let s = self.counters.snapshot();
            self.log
                .warn(now, || format!("witness: refused a request from {from}: {reason} ({} stale in all)", s.stale));
            return AnswerBody::Refused { reason };
        }
        let Some(request) = req.op.request() else {
            bump(&self.counters.accepted);
            let v = self.store.query(&req.service, now);
            return AnswerBody::State {
                holder: v.holder,
                epoch: v.epoch,
                solo: v.solo,
                remaining_ms: v.remaining.map(ms),
            };
        };
        if super::check_name("node", &req.node).is_ok() {
            self.last.insert(req.node.clone(), req.time_ms);
        }
        let ttl = Duration::from_millis(req.ttl_ms);
        match self.store.handle(now, &req.service, &req.node, request, ttl) {
            Ok(a) => {
                bump(&self.counters.accepted);
                match &a {
                    Answer::Granted { epoch, .. } => {
                        if !matches!(request, super::Request::Renew { .. }) {
                            info!("witness: {} {request:?} on {}: granted, epoch {epoch}", req.node, req.service);
                        }
                    }
                    Answer::Denied { reason, .. } => {
                        info!("witness: {} {request:?} on {}: denied: {reason}", req.node, req.service);
                    }
                }
                match a {
                    Answer::Granted { epoch, ttl } => AnswerBody::Granted { epoch, ttl_ms: ms(ttl) },
                    Answer::Denied { holder, epoch, remaining, reason } => {
                        AnswerBody::Denied { holder, epoch, remaining_ms: ms(remaining), reason }
                    }
                }
            }
            Err(e) => {
                bump(&self.counters.refused);
                if matches!(e, WitnessError::StateIo { .. }) {
                    error!("witness: {} {request:?} on {}: {e}", req.node, req.service);
                } else {
                    self.log.warn(now, || format!("witness: refused a request from {from}: {e}"));
                }
                AnswerBody::Refused { reason: e.to_string() }
            }
        }
    }
}

/// `ftnet witness`: loads the key and the state, binds, and serves forever.
pub fn run(listen: SocketAddr, key_file: &Path, state: &Path, init: bool) -> Result<(), WitnessError> {
    let key = Key::from_file(key_file).map_err(|e| WitnessError::Key(e.to_string()))?;
    let mut server = Server::bind(listen, &key, state, init)?;
    info!(
        "ftnet witness: listening on {}, state {} ({} services)",
        server.local_addr(),
        state.display(),
        server.store.len()
    );
    server.serve(&AtomicBool::new(false))
}

#[cfg(test)]
mod tests {
    use super::super::proto::tests::keys;
    use super::super::proto::{RequestBody, WireKeys};
    use super::*;

    struct T {
        _dir: tempfile::TempDir,
        server: Server,
        keys: WireKeys,
        from: SocketAddr,
        t: Instant,
        ms: u64,
    }

    fn setup() -> T {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::from_bytes(&[1; 32]).unwrap();
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), &key, &dir.path().join("state"), true).unwrap();
        let ms = server.floor_ms + 1000;
        T { _dir: dir, server, keys: keys(1), from: "127.0.0.1:9".parse().unwrap(), t: Instant::now(), ms }
    }

    impl T {
        fn send(&mut self, id: u8, time_ms: u64, node: &str, op: Op) -> Option<AnswerBody> {
            let body = RequestBody { time_ms, service: "svc".into(), node: node.into(), ttl_ms: 400, op };
            let d = self.keys.seal_request([id; 16], [id; 16], &body).unwrap();
            let reply = self.server.handle_datagram(self.t, self.ms, self.from, &d)?;
            let (rid, a) = self.keys.open_answer(&reply).unwrap();
            assert_eq!(rid, [id; 16], "the answer echoes the request id");
            Some(a)
        }
    }

    #[test]
    fn replayed_and_skewed_requests_are_refused() {
        let mut t = setup();
        let now = t.ms;
        assert_eq!(t.send(1, now, "a", Op::Start), Some(AnswerBody::Granted { epoch: 1, ttl_ms: 400 }));
        // The same datagram again (a capture): refused, the lease untouched.
        let again = t.send(1, now, "a", Op::Start).unwrap();
        assert!(matches!(&again, AnswerBody::Refused { reason } if reason.contains("not newer")), "{again:?}");
        let older = t.send(2, now - 5, "a", Op::Renew { epoch: 1 }).unwrap();
        assert!(matches!(older, AnswerBody::Refused { .. }), "{older:?}");
        // Too far off the witness's clock, either way.
        for off in [now - MAX_SKEW_MS - 1, now + MAX_SKEW_MS + 1] {
            let a = t.send(3, off, "b", Op::Start).unwrap();
            assert!(matches!(&a, AnswerBody::Refused { reason } if reason.contains("off the witness")), "{a:?}");
        }
        // Sent before the witness started (a capture from before a restart).
        let a = t.send(4, t.server.floor_ms, "c", Op::Start).unwrap();
        assert!(matches!(&a, AnswerBody::Refused { reason } if reason.contains("witness's start")), "{a:?}");
        // Each node has its own clock floor; a newer request is fine.
        assert_eq!(
            t.send(5, now + 1, "a", Op::Renew { epoch: 1 }),
            Some(AnswerBody::Granted { epoch: 1, ttl_ms: 400 })
        );
        let a = t.send(6, now - 100, "b", Op::Start).unwrap();
        assert!(matches!(&a, AnswerBody::Denied { holder: Some(h), epoch: 1, .. } if h == "a"), "{a:?}");
        // Queries are not ordered (they change nothing).
        let q = t.send(7, now - 100, "", Op::Query).unwrap();
        assert_eq!(q, AnswerBody::State { holder: Some("a".into()), epoch: 1, solo: false, remaining_ms: Some(400) });
        let s = t.server.counters().snapshot();
        assert_eq!((s.accepted, s.stale, s.bad_mac, s.malformed), (4, 5, 0, 0));
        // An invalid node name is refused, not acted on.
        let a = t.send(8, now + 2, "a b", Op::Start).unwrap();
        assert!(matches!(&a, AnswerBody::Refused { reason } if reason.contains("node name")), "{a:?}");
    }

    #[test]
    fn unauthentic_and_malformed_datagrams_get_no_answer() {
        let mut t = setup();
        let body = RequestBody { time_ms: t.ms, service: "svc".into(), node: "a".into(), ttl_ms: 400, op: Op::Start };
        let wrong = keys(2).seal_request([1; 16], [1; 16], &body).unwrap();
        assert!(t.server.handle_datagram(t.t, t.ms, t.from, &wrong).is_none());
        let mut flipped = t.keys.seal_request([1; 16], [1; 16], &body).unwrap();
        flipped[50] ^= 4;
        assert!(t.server.handle_datagram(t.t, t.ms, t.from, &flipped).is_none());
        assert!(t.server.handle_datagram(t.t, t.ms, t.from, b"hello").is_none());
        let junk = t.keys.seal(super::super::proto::Kind::Request, [1; 16], [1; 16], &[0xff; 5]).unwrap();
        assert!(t.server.handle_datagram(t.t, t.ms, t.from, &junk).is_none());
        let s = t.server.counters().snapshot();
        assert_eq!((s.bad_mac, s.malformed, s.accepted), (2, 2, 0));
        // Nothing changed.
        let q = t.send(9, t.ms, "", Op::Query).unwrap();
        assert_eq!(q, AnswerBody::State { holder: None, epoch: 0, solo: false, remaining_ms: None });
    }

    #[test]
    fn rate_log_holds_back() {
        let mut l = RateLog::default();
        let t = Instant::now();
        l.warn(t, || "one".into());
        l.warn(t + Duration::from_millis(10), || "two".into());
        l.warn(t + Duration::from_millis(20), || "three".into());
        assert_eq!(l.held, 2);
        l.warn(t + Duration::from_secs(2), || "four".into());
        assert_eq!(l.held, 0);
    }
}

//! The ftnet witness client: one sealed datagram per call, answered or
//! timed out.
//!
//! Invariants:
//! - every call returns within its timeout (the socket's receive timeout is
//!   what is left of it before each wait);
//! - only an answer that authenticates and echoes this call's random id is
//!   taken; anything else (late answers to earlier calls, forgeries) is
//!   skipped, and the first such problem is named if the call times out;
//! - timestamps strictly increase per client even if the clock does not
//!   move between two calls.
//!
//! A call sends exactly one datagram and never retransmits: a retransmitted
//! Start could be granted twice (two epochs) with only one answer seen. The
//! caller retries on its next round; see the module docs of [`super`] for
//! which requests are idempotent.

use super::proto::{AnswerBody, MAX_DATAGRAM, Op, RequestBody, WireKeys};
use super::{Answer, LeaseClient, LeaseView, Request, WitnessError, check_name, check_request, ms};
use crate::link::Key;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// A client of one `ftnet witness`.
#[derive(Debug)]
pub struct UdpClient {
    sock: UdpSocket,
    server: SocketAddr,
    keys: WireKeys,
    last_ms: u64,
}

impl UdpClient {
    /// A client of the witness at `server`, sealing with `key`.
    pub fn new(server: SocketAddr, key: &Key) -> Result<UdpClient, WitnessError> {
        let addr = server.to_string();
        let io = |op, source| WitnessError::Io { addr: addr.clone(), op, source };
        let local: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .map_err(|_| WitnessError::Invalid("unspecified address".into()))?;
        let sock = UdpSocket::bind(local).map_err(|e| io("bind", e))?;
        sock.connect(server).map_err(|e| io("connect", e))?;
        Ok(UdpClient { sock, server, keys: WireKeys::new(key), last_ms: 0 })
    }

    /// One exchange: sends `op`, waits for its answer until `timeout`.
    fn exchange(
        &mut self,
        service: &str,
        node: &str,
        op: Op,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<AnswerBody, WitnessError> {
        let addr = self.server.to_string();
        let deadline = Instant::now() + timeout;
        let time_ms = super::realtime_ms().max(self.last_ms + 1);
        self.last_ms = time_ms;
        let id = super::random::<16>()?;
        let salt = super::random::<16>()?;
        let body = RequestBody { time_ms, service: service.into(), node: node.into(), ttl_ms: ms(ttl).max(1), op };
        let d = self.keys.seal_request(id, salt, &body).map_err(|source| WitnessError::Wire {
            addr: addr.clone(),
            from: self.server,
            source,
        })?;
        // Drain answers to earlier calls that came in after they timed out.
        let _ = self.sock.set_nonblocking(true);
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        while self.sock.recv(&mut buf).is_ok() {}
        let _ = self.sock.set_nonblocking(false);
        self.sock.send(&d).map_err(|source| WitnessError::Io { addr: addr.clone(), op: "send", source })?;
        let mut problem = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WitnessError::Timeout { addr, after: timeout, detail: problem });
            }
            self.sock.set_read_timeout(Some(left)).map_err(|source| WitnessError::Io {
                addr: addr.clone(),
                op: "set timeout",
                source,
            })?;
            let n = match self.sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(WitnessError::Io { addr, op: "receive", source }),
            };
            match self.keys.open_answer(&buf[..n]) {
                Ok((rid, a)) if rid == id => return Ok(a),
                Ok(_) => {}
                Err(e) => {
                    if problem.is_empty() {
                        problem = format!(" (meanwhile a datagram from {}: {e})", self.server);
                    }
                }
            }
        }
    }
}

impl LeaseClient for UdpClient {
    fn request(
        &mut self,
        service: &str,
        node: &str,
        req: Request,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<Answer, WitnessError> {
        check_request(service, node, ttl)?;
        let addr = self.server.to_string();
        match self.exchange(service, node, Op::from(req), ttl, timeout)? {
            AnswerBody::Granted { epoch, ttl_ms } => Ok(Answer::Granted { epoch, ttl: Duration::from_millis(ttl_ms) }),
            AnswerBody::Denied { holder, epoch, remaining_ms, reason } => {
                Ok(Answer::Denied { holder, epoch, remaining: Duration::from_millis(remaining_ms), reason })
            }
            AnswerBody::Refused { reason } => Err(WitnessError::Refused { addr, reason }),
            other => Err(WitnessError::Protocol { addr, what: format!("{other:?} to a {req:?}") }),
        }
    }

    fn query(&mut self, service: &str, timeout: Duration) -> Result<LeaseView, WitnessError> {
        check_name("service", service)?;
        let addr = self.server.to_string();
        match self.exchange(service, "", Op::Query, Duration::from_millis(1), timeout)? {
            AnswerBody::State { holder, epoch, solo, remaining_ms } => {
                Ok(LeaseView { holder, epoch, solo, remaining: remaining_ms.map(Duration::from_millis) })
            }
            AnswerBody::Refused { reason } => Err(WitnessError::Refused { addr, reason }),
            other => Err(WitnessError::Protocol { addr, what: format!("{other:?} to a query") }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::server::Server;
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A server on a thread, stopped on drop.
    struct Running {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<Server>>,
        counters: Arc<super::super::server::Counters>,
        _dir: tempfile::TempDir,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn run(key: &Key) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), key, &dir.path().join("state"), true).unwrap();
        let (addr, counters) = (server.local_addr(), server.counters());
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            server.serve(&s).unwrap();
            server
        });
        Running { addr, stop, thread: Some(thread), counters, _dir: dir }
    }

    const TTL: Duration = Duration::from_millis(300);
    const WAIT: Duration = Duration::from_secs(2);

    #[test]
    fn a_lease_over_loopback() {
        let key = Key::from_bytes(&[3; 32]).unwrap();
        let w = run(&key);
        let mut a = UdpClient::new(w.addr, &key).unwrap();
        let mut b = UdpClient::new(w.addr, &key).unwrap();
        let Answer::Granted { epoch, ttl } = a.request("svc", "a", Request::Start, TTL, WAIT).unwrap() else {
            panic!("start denied")
        };
        assert_eq!((epoch, ttl), (1, TTL));
        // Back-to-back calls in the same millisecond are still ordered.
        for _ in 0..20 {
            assert!(matches!(a.request("svc", "a", Request::Renew { epoch }, TTL, WAIT), Ok(Answer::Granted { .. })));
        }
        let d = b.request("svc", "b", Request::Takeover { log_epoch: epoch }, TTL, WAIT).unwrap();
        assert!(matches!(&d, Answer::Denied { holder: Some(h), .. } if h == "a"), "{d:?}");
        let v = b.query("svc", WAIT).unwrap();
        assert_eq!((v.holder.as_deref(), v.epoch, v.solo), (Some("a"), 1, false));
        assert!(v.remaining.is_some_and(|r| r <= TTL));
        assert!(matches!(a.request("svc", "a", Request::Release { epoch }, TTL, WAIT), Ok(Answer::Granted { .. })));
        let g = b.request("svc", "b", Request::Takeover { log_epoch: epoch }, TTL, WAIT).unwrap();
        assert_eq!(g, Answer::Granted { epoch: 2, ttl: TTL });
        assert!(a.request("svc", "bad name", Request::Start, TTL, WAIT).unwrap_err().to_string().contains("node name"));
        assert_eq!(w.counters.snapshot().bad_mac, 0);
    }

    #[test]
    fn wrong_key_times_out_and_is_counted() {
        let key = Key::from_bytes(&[3; 32]).unwrap();
        let w = run(&key);
        let mut c = UdpClient::new(w.addr, &Key::from_bytes(&[4; 32]).unwrap()).unwrap();
        let t = Instant::now();
        let e = c.request("svc", "a", Request::Start, TTL, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, WitnessError::Timeout { .. }), "{e}");
        assert!(t.elapsed() >= Duration::from_millis(200) && t.elapsed() < Duration::from_secs(1));
        assert_eq!(w.counters.snapshot().bad_mac, 1);
        assert_eq!(w.counters.snapshot().accepted, 0);
    }

    #[test]
    fn nobody_listening_fails_fast_or_times_out() {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        drop(sock);
        let mut c = UdpClient::new(addr, &Key::from_bytes(&[3; 32]).unwrap()).unwrap();
        let t = Instant::now();
        let e = c.request("svc", "a", Request::Start, TTL, Duration::from_millis(300)).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }
}

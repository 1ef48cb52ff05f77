//! What runs after the takeover itself: answering retransmitted SYNs of
//! connections that were still in their handshake, and owning orphans
//! (connections whose server already closed) until they drain.
//!
//! Invariants: both run on their own thread with a hard deadline and a
//! bounded loop; both report what they did through `join`; the responder
//! only ever sends the recorded SYN-ACK of a tuple it was given, and
//! removes the takeover's rule table (its SYN-drop rules) when it ends; the keeper drains
//! an orphan's receive queue before closing it (closing with unread data
//! would send an RST) and closes it once everything, FIN included, is
//! acknowledged, or at the deadline.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::takeover::Rebuilt;
use super::vip::guard_remove;
use crate::sys::packet::{BpfInsn, PacketSocket, RawIpSocket};
use crate::sys::tcp_repair as tr;
use crate::tcpstate::FourTuple;
use crate::tcpstate::wire::{Ipv4Packet, fill_checksums};

/// Classic BPF: accept IPv4 TCP first fragments whose flags have SYN set
/// and ACK and RST clear; drop everything else.
pub fn syn_filter() -> Vec<BpfInsn> {
    let i = |code, jt, jf, k| BpfInsn { code, jt, jf, k };
    vec![
        i(0x30, 0, 0, 23),     // ldb [23]: IP protocol
        i(0x15, 0, 7, 6),      // jeq TCP ? next : drop
        i(0x28, 0, 0, 20),     // ldh [20]: flags + fragment offset
        i(0x45, 5, 0, 0x1fff), // jset offset ? drop : next
        i(0xb1, 0, 0, 14),     // ldxb 4*([14]&0xf): IP header length
        i(0x50, 0, 0, 27),     // ldb [x+27]: TCP flags
        i(0x54, 0, 0, 0x16),   // and SYN|RST|ACK
        i(0x15, 0, 1, 0x02),   // jeq SYN ? accept : drop
        i(0x06, 0, 0, 0x40000),
        i(0x06, 0, 0, 0),
    ]
}

/// What a [`SynResponder`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SynReplayStats {
    /// SYNs seen for tuples in the handshake table.
    pub syns_seen: u64,
    /// SYN-ACKs replayed.
    pub syn_acks_sent: u64,
    /// Errors (send failures, rule removal), as text.
    pub errors: Vec<String>,
}

/// Answers retransmitted SYNs with the recorded SYN-ACK for a while.
#[derive(Debug)]
pub struct SynResponder {
    handle: JoinHandle<SynReplayStats>,
}

impl SynResponder {
    /// Starts the responder thread on the packet socket opened at arm
    /// time (so SYNs that arrived during the takeover are answered too).
    pub fn spawn(
        syns: PacketSocket,
        raw: RawIpSocket,
        table: Vec<(FourTuple, Vec<u8>)>,
        duration: Duration,
    ) -> SynResponder {
        let handle = std::thread::spawn(move || respond(&syns, &raw, table, duration));
        SynResponder { handle }
    }

    /// Waits for the responder to end (at most its duration).
    pub fn join(self) -> SynReplayStats {
        self.handle
            .join()
            .unwrap_or_else(|_| SynReplayStats { errors: vec!["responder panicked".into()], ..Default::default() })
    }
}

fn respond(
    syns: &PacketSocket,
    raw: &RawIpSocket,
    table: Vec<(FourTuple, Vec<u8>)>,
    duration: Duration,
) -> SynReplayStats {
    let mut stats = SynReplayStats::default();
    let mut map: HashMap<FourTuple, Vec<u8>> = HashMap::new();
    for (t, mut p) in table {
        if fill_checksums(&mut p).is_ok() {
            map.insert(t, p);
        }
    }
    let deadline = Instant::now() + duration;
    let mut buf = vec![0u8; 2048];
    // One iteration per received frame or per 50 ms: bounded by the deadline.
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let n = match syns.recv(&mut buf, left.min(Duration::from_millis(50))) {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(e) => {
                stats.errors.push(e.to_string());
                break;
            }
        };
        let Some(frame) = buf.get(14..n) else { continue };
        let Ok(ip) = Ipv4Packet::parse(frame) else { continue };
        let Ok(tcp) = ip.tcp() else { continue };
        let tuple = FourTuple {
            client: std::net::SocketAddrV4::new(ip.src_addr(), tcp.src_port()),
            server: std::net::SocketAddrV4::new(ip.dst_addr(), tcp.dst_port()),
        };
        if let Some(p) = map.get(&tuple) {
            stats.syns_seen += 1;
            match raw.send(p, ip.src_addr()) {
                Ok(()) => stats.syn_acks_sent += 1,
                Err(e) => stats.errors.push(e.to_string()),
            }
        }
    }
    if let Err(e) = guard_remove() {
        stats.errors.push(e.to_string());
    }
    stats
}

/// What an [`OrphanKeeper`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrphanStats {
    /// Orphans closed after everything was acknowledged.
    pub drained: usize,
    /// Orphans closed at the deadline with data still unacknowledged.
    pub timed_out: usize,
    /// Time until the last orphan drained.
    pub last_drained_after: Duration,
    /// Errors, as text.
    pub errors: Vec<String>,
}

/// Owns orphans until their send queue (FIN included) is acknowledged.
#[derive(Debug)]
pub struct OrphanKeeper {
    handle: JoinHandle<OrphanStats>,
}

impl OrphanKeeper {
    /// Starts the keeper thread.
    pub fn spawn(orphans: Vec<Rebuilt>, timeout: Duration) -> OrphanKeeper {
        let handle = std::thread::spawn(move || keep(orphans, timeout));
        OrphanKeeper { handle }
    }

    /// Waits until every orphan is closed (at most the timeout).
    pub fn join(self) -> OrphanStats {
        self.handle
            .join()
            .unwrap_or_else(|_| OrphanStats { errors: vec!["keeper panicked".into()], ..Default::default() })
    }
}

fn keep(mut orphans: Vec<Rebuilt>, timeout: Duration) -> OrphanStats {
    let start = Instant::now();
    let mut stats = OrphanStats::default();
    let mut sink = vec![0u8; 64 << 10];
    let tick = Duration::from_millis(5);
    let rounds = (timeout.as_millis() / tick.as_millis()).max(1) as u64;
    for _ in 0..rounds {
        orphans.retain_mut(|o| {
            let fd = o.fd.as_fd();
            // Finish a tail that did not fit at takeover.
            if !o.tail_rest.is_empty() {
                match tr::send_once(fd, &o.tail_rest, true) {
                    Ok(Some(n)) => {
                        o.tail_rest.drain(..n);
                    }
                    Ok(None) => {}
                    Err(e) => stats.errors.push(e.to_string()),
                }
            }
            if o.tail_rest.is_empty() && o.shutdown_pending {
                o.shutdown_pending = false;
                if let Err(e) = tr::shutdown_write(fd) {
                    stats.errors.push(e.to_string());
                }
            }
            // Discard whatever the client still sends (bounded per round).
            for _ in 0..16 {
                match tr::recv_once(fd, &mut sink) {
                    Ok(Some(n)) if n > 0 => continue,
                    _ => break,
                }
            }
            let done = o.tail_rest.is_empty() && !o.shutdown_pending && matches!(tr::outq(fd), Ok(0));
            if done {
                stats.drained += 1;
                stats.last_drained_after = start.elapsed();
            }
            !done
        });
        if orphans.is_empty() {
            break;
        }
        std::thread::sleep(tick);
    }
    stats.timed_out = orphans.len();
    stats
}

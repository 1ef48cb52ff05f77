//! Property tests with a deterministic PRNG: arbitrary and mutated bytes
//! never panic, and a randomly reordered, duplicated stream reassembles to
//! exactly the bytes sent.

use super::super::options::{OptionIter, OptionSummary};
use super::super::wire::{Ipv4Packet, TcpPacket, TcpRepr};
use super::super::{Tracker, TrackerConfig};
use super::{ACK, Flow, Rng, packet, server_addr};

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng::new(0x5eed);
    let mut tracker = Tracker::new(&[server_addr()]);
    for i in 0..20_000u64 {
        let len = rng.below(100);
        let mut bytes = rng.bytes(len);
        // Make a good share look like IPv4/TCP so deeper code runs.
        if len > 0 && rng.below(2) == 0 {
            bytes[0] = 0x45;
        }
        if len > 9 && rng.below(2) == 0 {
            bytes[9] = 6;
        }
        let _ = tracker.observe(i, &bytes);
        let _ = OptionIter::new(&bytes).count();
        let _ = OptionSummary::parse(&bytes);
        if let Ok(seg) = TcpPacket::parse(&bytes) {
            let _ = TcpRepr::parse(&seg);
        }
    }
}

#[test]
fn mutated_packets_never_panic() {
    let mut rng = Rng::new(42);
    let mut flow = Flow::new(u32::MAX - 1000, 7);
    flow.handshake();
    for _ in 0..200 {
        flow.client_send(b"some request bytes");
    }
    let base = packet(flow.client, flow.server, flow.c_nxt, flow.s_nxt, ACK, 100, &[], b"payload!");
    for i in 0..20_000u64 {
        let mut p = base.clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(p.len());
            p[at] = rng.next_u64() as u8;
        }
        if rng.below(4) == 0 {
            p.truncate(rng.below(p.len() + 1));
        }
        let _ = flow.tracker.observe(i, &p);
        if let Ok(ip) = Ipv4Packet::parse(&p) {
            let _ = ip.tcp();
        }
    }
    // Whatever happened, the accounting invariant holds.
    let sum: usize = flow.tracker.iter().map(|c| c.buffered_bytes()).sum();
    assert_eq!(flow.tracker.buffered_bytes(), sum);
}

/// Sends a stream in random segments, delivered out of order with random
/// duplicates and overlaps, across the 2^32 wrap; the tracker must end up
/// with the exact stream, and consuming it in random steps must release it.
#[test]
fn reordered_duplicated_stream_reassembles() {
    for seed in 1..=20u64 {
        let mut rng = Rng::new(seed);
        let mut flow = Flow::with_config(u32::MAX - 3000, 100, TrackerConfig::default());
        flow.handshake();
        let stream = rng.bytes(20_000);
        let start = flow.c_nxt;
        let mut segs = Vec::new();
        let mut off = 0;
        while off < stream.len() {
            let len = (1 + rng.below(1400)).min(stream.len() - off);
            segs.push((off, len));
            off += len;
        }
        // Duplicates and overlapping copies.
        for _ in 0..segs.len() / 3 {
            let a = rng.below(stream.len());
            let len = (1 + rng.below(3000)).min(stream.len() - a);
            segs.push((a, len));
        }
        for i in (1..segs.len()).rev() {
            segs.swap(i, rng.below(i + 1));
        }
        for (off, len) in segs {
            let r = flow.inbound_raw(start + off as u32, flow.s_nxt, ACK, 1000, &stream[off..off + len]);
            assert!(!r.notes.conflict, "identical copies never conflict");
        }
        let conn = flow.conn();
        assert_eq!(conn.client_next(), start + stream.len() as u32);
        assert_eq!(conn.client_out_of_order().count(), 0);
        assert_eq!(conn.client_unacked(), &stream[..], "seed {seed}");
        // The server acks everything; consume it in random steps.
        flow.c_nxt = start + stream.len() as u32;
        flow.server_ack(flow.c_nxt);
        assert_eq!(flow.conn().client_acked_unread().unwrap(), &stream[..]);
        let mut read = 0;
        while read < stream.len() {
            let n = (1 + rng.below(5000)).min(stream.len() - read);
            flow.tracker.consume(&flow.tuple(), n as u64).unwrap();
            read += n;
            assert_eq!(flow.conn().client_acked_unread().unwrap(), &stream[read..]);
            assert_eq!(flow.conn().read_seq(), start + read as u32);
        }
        assert_eq!(flow.tracker.buffered_bytes(), 0);
    }
}

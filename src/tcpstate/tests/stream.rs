//! Data-path tests: both directions, wrap-around, retransmission,
//! reordering, overlaps, SACK, windows, probes, consume, GSO, bounds,
//! timestamps and the repair snapshot.

use super::super::options::{SackBlocks, TcpOption};
use super::super::seq::SeqNum;
use super::super::{ConnState, MissingBytes, SnapshotError, TrackerConfig, TsClock};
use super::{ACK, Flow, PSH, packet};

#[test]
fn data_both_ways() {
    let mut f = Flow::new(10_000, 20_000);
    f.handshake();
    let r = f.client_send(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(r.new_client_bytes, 18);
    let c = f.conn();
    assert_eq!(c.client_next(), SeqNum(10_019));
    assert_eq!(c.client_acked_unread().unwrap(), b"", "not acked yet");
    assert_eq!(c.client_unacked(), b"GET / HTTP/1.1\r\n\r\n");
    // The server acks with its response.
    f.server_send(b"HTTP/1.1 200 OK\r\n\r\n");
    let c = f.conn();
    assert_eq!(c.server_ack(), Some(SeqNum(10_019)));
    assert_eq!(c.rcv_nxt(), SeqNum(10_019));
    assert_eq!(c.client_acked_unread().unwrap(), b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(c.client_unacked(), b"");
    assert_eq!(c.snd_nxt(), Some(SeqNum(20_020)));
    assert_eq!(c.snd_una(), Some(SeqNum(20_001)));
    assert_eq!(c.server_window(), 500 << 9);
    // The client acks the response.
    f.client_ack(f.s_nxt, 2000);
    let c = f.conn();
    assert_eq!(c.snd_una(), Some(SeqNum(20_020)));
    assert_eq!(c.send_queue_seq(), Some(SeqNum(20_020)));
    assert_eq!(c.client_window(), 2000 << 7);
    // The replica reads the request.
    f.tracker.consume(&f.tuple(), 18).unwrap();
    let c = f.conn();
    assert_eq!(c.read_seq(), SeqNum(10_019));
    assert_eq!(c.client_acked_unread().unwrap(), b"");
    assert_eq!(c.buffered_bytes(), 0);
    assert_eq!(c.stats().client_bytes, 18);
}

#[test]
fn sequence_wrap_around_both_directions() {
    let c_isn = u32::MAX - 10;
    let s_isn = u32::MAX - 3;
    let mut f = Flow::new(c_isn, s_isn);
    f.handshake();
    let a = [b'a'; 30];
    let b = [b'b'; 30];
    f.client_send(&a); // crosses 2^32
    f.client_send(&b);
    f.server_send(&[b'x'; 50]); // crosses 2^32, acks everything
    let c = f.conn();
    assert_eq!(c.client_next(), SeqNum(c_isn.wrapping_add(61)));
    assert_eq!(c.rcv_nxt(), SeqNum(50));
    assert_eq!(c.client_acked_unread().unwrap().len(), 60);
    assert_eq!(&c.client_acked_unread().unwrap()[28..32], b"aabb");
    assert_eq!(c.snd_nxt(), Some(SeqNum(s_isn.wrapping_add(51))));
    assert_eq!(c.snd_nxt(), Some(SeqNum(47)));
    f.tracker.consume(&f.tuple(), 40).unwrap();
    let c = f.conn();
    assert_eq!(c.read_seq(), SeqNum(30));
    assert_eq!(c.client_acked_unread().unwrap(), &[b'b'; 20]);
    let snap = c.snapshot().unwrap();
    assert_eq!(snap.recv_queue_seq, SeqNum(30));
    assert_eq!(snap.rcv_nxt, SeqNum(50));
    assert_eq!(snap.recv_queue.len(), 20);
    assert_eq!(snap.send_queue_seq, SeqNum(u32::MAX - 2), "client acked nothing of the 50 bytes");
    assert_eq!(snap.snd_nxt, SeqNum(47));
}

#[test]
fn more_than_four_gib_through_the_buffer() {
    // Stream offsets are 64-bit: push > 2^32 bytes of sequence space through
    // (1 MiB BIG TCP segments, acknowledged and consumed as we go). One
    // template packet is re-stamped with each sequence number.
    let mut f = Flow::new(123, 456);
    f.timestamps = false;
    f.handshake();
    let chunk = vec![0x5au8; 1 << 20];
    let mut pkt = packet(f.client, f.server, f.c_nxt, f.s_nxt, ACK, 1000, &[], &chunk);
    for _ in 0..4200 {
        pkt[24..28].copy_from_slice(&f.c_nxt.0.to_be_bytes());
        f.c_nxt = f.c_nxt + chunk.len() as u32;
        f.feed(&pkt);
        f.server_ack(f.c_nxt);
        f.tracker.consume(&f.tuple(), chunk.len() as u64).unwrap();
    }
    let c = f.conn();
    assert_eq!(c.read_seq(), f.c_nxt);
    assert_eq!(c.rcv_nxt(), f.c_nxt);
    assert_eq!(c.buffered_bytes(), 0);
    assert_eq!(c.stats().client_bytes, 4200 << 20);
    assert_eq!(c.stats().client_bytes_duplicate, 0);
}

#[test]
fn retransmissions_are_recognized() {
    let mut f = Flow::new(1, 1_000_000);
    f.handshake();
    let seq = f.c_nxt;
    f.client_send(b"hello world");
    let r = f.inbound_raw(seq, f.s_nxt, ACK | PSH, 1000, b"hello world");
    assert!(r.notes.retransmit);
    assert_eq!(r.new_client_bytes, 0);
    assert_eq!(f.conn().stats().client_bytes_duplicate, 11);
    // Retransmission after the replica consumed part of it.
    f.server_ack(f.c_nxt);
    f.tracker.consume(&f.tuple(), 5).unwrap();
    let r = f.inbound_raw(seq, f.s_nxt, ACK | PSH, 1000, b"hello world");
    assert!(r.notes.retransmit && !r.notes.conflict);
    assert_eq!(f.conn().client_acked_unread().unwrap(), b" world");
    // Server retransmission.
    let s = f.s_nxt;
    f.server_send(b"reply");
    let r = f.outbound_raw(s, f.c_nxt, ACK, 500, b"reply");
    assert!(r.notes.retransmit);
    assert_eq!(f.conn().snd_nxt(), Some(s + 5));
    assert_eq!(f.conn().stats().server_bytes_retransmitted, 5);
}

#[test]
fn reordering_is_buffered_and_resolved() {
    let mut f = Flow::new(u32::MAX - 5, 9);
    f.handshake();
    let base = f.c_nxt;
    let r = f.inbound_raw(base + 10, f.s_nxt, ACK, 1000, b"KLMNO");
    assert!(r.notes.out_of_order);
    let r = f.inbound_raw(base + 5, f.s_nxt, ACK, 1000, b"FGHIJ");
    assert!(r.notes.out_of_order);
    let ooo: Vec<_> = f.conn().client_out_of_order().collect();
    assert_eq!(ooo, vec![(base + 5, &b"FGHIJKLMNO"[..])]);
    assert_eq!(f.conn().client_unacked(), b"");
    // The server's ACK still says `base` (duplicate ACKs).
    f.server_ack(base);
    assert_eq!(f.conn().client_acked_unread().unwrap(), b"");
    f.inbound_raw(base, f.s_nxt, ACK, 1000, b"ABCDE");
    assert_eq!(f.conn().client_out_of_order().count(), 0);
    assert_eq!(f.conn().client_unacked(), b"ABCDEFGHIJKLMNO");
    f.server_ack(base + 15);
    assert_eq!(f.conn().client_acked_unread().unwrap(), b"ABCDEFGHIJKLMNO");
    // An older server ACK arriving late does not move rcv_nxt back.
    f.server_ack(base + 5);
    assert_eq!(f.conn().server_ack(), Some(base + 15));
}

#[test]
fn overlapping_retransmits_first_copy_wins() {
    let mut f = Flow::new(500, 600);
    f.handshake();
    let base = f.c_nxt;
    f.inbound_raw(base, f.s_nxt, ACK, 1000, b"0123456789");
    // Overlap that extends: identical overlap, new tail.
    let r = f.inbound_raw(base + 5, f.s_nxt, ACK, 1000, b"56789abcde");
    assert_eq!(r.new_client_bytes, 5);
    assert!(!r.notes.conflict && !r.notes.retransmit);
    // Overlap with different bytes: reported, first copy kept.
    let r = f.inbound_raw(base + 11, f.s_nxt, ACK, 1000, b"bcdXfgh");
    assert!(r.notes.conflict);
    assert_eq!(r.new_client_bytes, 3);
    assert_eq!(f.conn().client_unacked(), b"0123456789abcdefgh");
    assert_eq!(f.conn().stats().conflicts, 1);
}

#[test]
fn sack_blocks_do_not_move_snd_una() {
    let mut f = Flow::new(1, 2);
    f.handshake();
    let una = f.s_nxt;
    f.server_send(&[1; 100]);
    f.server_send(&[2; 100]);
    f.server_send(&[3; 100]);
    // The client lost the first segment: duplicate ACK with SACK of the rest.
    let sack = SackBlocks::from_slice(&[(una + 100, una + 300)]).unwrap();
    let pkt = packet(
        f.client,
        f.server,
        f.c_nxt,
        una,
        ACK,
        1000,
        &[TcpOption::NoOp, TcpOption::NoOp, TcpOption::Timestamps { tsval: 5000, tsecr: 1 }, TcpOption::Sack(sack)],
        b"",
    );
    let r = f.feed(&pkt);
    assert_eq!(r.notes.option_error, None);
    let c = f.conn();
    assert_eq!(c.snd_una(), Some(una));
    assert_eq!(c.snd_nxt(), Some(una + 300));
    assert_eq!(c.client_timestamp().unwrap().tsval, 5000);
    // Retransmission fills the hole; the cumulative ACK jumps.
    f.outbound_raw(una, f.c_nxt, ACK, 500, &[1; 100]);
    f.client_ack(una + 300, 1000);
    assert_eq!(f.conn().snd_una(), Some(una + 300));
    assert_eq!(f.conn().state(), ConnState::Established);
}

#[test]
fn zero_window_probe_and_window_update() {
    let mut f = Flow::new(100, 200);
    f.handshake();
    f.server_send(&[9; 1000]);
    // The client's buffer is full: zero window.
    let r = f.client_ack(f.s_nxt, 0);
    assert!(r.notes.zero_window && r.notes.window_update);
    assert_eq!(f.conn().client_window(), 0);
    assert_eq!(f.conn().repair_window().unwrap().snd_wnd, 0);
    // Linux probes with seq = snd_una - 1 and no data.
    let r = f.outbound_raw(f.s_nxt - 1, f.c_nxt, ACK, 500, b"");
    assert!(r.notes.keepalive);
    assert_eq!(f.conn().snd_nxt(), Some(f.s_nxt));
    // A pure window update (same ACK, same seq, bigger window) is taken.
    let r = f.client_ack(f.s_nxt, 64);
    assert!(r.notes.window_update && !r.notes.zero_window);
    assert_eq!(f.conn().client_window(), 64 << 7);
    let w = f.conn().repair_window().unwrap();
    assert_eq!(w.snd_wl1, f.c_nxt);
    assert_eq!(w.max_window, 1000 << 7);
    assert_eq!(w.rcv_wnd, 500 << 9);
    assert_eq!(w.rcv_wup, f.c_nxt);
    // A smaller window at the same (seq, ack) is not an update (Linux rule).
    let r = f.client_ack(f.s_nxt, 10);
    assert!(!r.notes.window_update);
    assert_eq!(f.conn().client_window(), 64 << 7);
    // A client zero-window probe byte beyond the server's window is kept as
    // unacked data; the server does not ack it.
    f.server_ack(f.c_nxt);
    let r = f.inbound_raw(f.c_nxt, f.s_nxt, ACK, 64, b"Z");
    assert_eq!(r.new_client_bytes, 1);
    assert_eq!(f.conn().client_unacked(), b"Z");
}

#[test]
fn keepalives_are_not_stored() {
    let mut f = Flow::new(7, 8);
    f.handshake();
    f.client_send(b"abc");
    f.server_ack(f.c_nxt);
    // Keep-alive with one garbage byte at rcv_nxt - 1 (BSD/Windows style).
    let r = f.inbound_raw(f.c_nxt - 1, f.s_nxt, ACK, 1000, b"\0");
    assert!(r.notes.keepalive && !r.notes.conflict);
    // And with no data (Linux style).
    let r = f.inbound_raw(f.c_nxt - 1, f.s_nxt, ACK, 1000, b"");
    assert!(r.notes.keepalive);
    assert_eq!(f.conn().client_acked_unread().unwrap(), b"abc");
    assert_eq!(f.conn().stats().keepalives, 2);
    // The server's keep-alive.
    let r = f.outbound_raw(f.s_nxt - 1, f.c_nxt, ACK, 500, b"");
    assert!(r.notes.keepalive);
    assert_eq!(f.conn().snd_nxt(), Some(f.s_nxt));
}

#[test]
fn consume_trims_and_checks() {
    let mut f = Flow::new(1_000, 2_000);
    f.handshake();
    f.client_send(b"0123456789");
    f.client_send(b"abcdef");
    // Delayed ACK: the replica read 12 bytes, the server acked only 10.
    f.server_ack(f.c_isn + 11);
    f.tracker.consume(&f.tuple(), 12).unwrap();
    let c = f.conn();
    assert_eq!(c.read_seq(), f.c_isn + 13);
    assert_eq!(c.rcv_nxt(), f.c_isn + 13, "rcv_nxt never below what the replica read");
    assert_eq!(c.client_acked_unread().unwrap(), b"");
    assert_eq!(c.client_unacked(), b"cdef");
    assert_eq!(f.tracker.buffered_bytes(), 4);
    // Consuming more than the client sent fails and changes nothing.
    let err = f.tracker.consume(&f.tuple(), 5).unwrap_err();
    assert_eq!(
        err,
        super::super::ConsumeError::BeyondClientData {
            tuple: f.tuple(),
            requested: 5,
            available: 4,
            read_seq: f.c_isn + 13
        }
    );
    assert_eq!(f.conn().read_seq(), f.c_isn + 13);
    let mut other = f.tuple();
    other.client.set_port(1);
    assert!(f.tracker.consume(&other, 1).is_err());
    f.tracker.consume(&f.tuple(), 4).unwrap();
    assert_eq!(f.tracker.buffered_bytes(), 0);
}

#[test]
fn gso_super_segments() {
    let mut f = Flow::new(4_000_000_000, 3);
    f.handshake();
    let big: Vec<u8> = (0..60_000u32).map(|i| i as u8).collect();
    let r = f.client_send(&big);
    assert_eq!(r.new_client_bytes, 60_000);
    let out = vec![1u8; 64_000];
    f.server_send(&out);
    let c = f.conn();
    assert_eq!(c.client_acked_unread().unwrap(), &big[..]);
    assert_eq!(c.snd_nxt(), Some(SeqNum(3 + 1 + 64_000)));
    // BIG TCP: > 64 KiB with total length 0.
    let huge = vec![2u8; 150_000];
    let r = f.client_send(&huge);
    assert_eq!(r.new_client_bytes, 150_000);
    assert_eq!(f.conn().client_unacked().len(), 150_000);
}

#[test]
fn memory_bound_flags_overflow_then_missing() {
    let cfg = TrackerConfig { max_conn_buffer: 16, ..TrackerConfig::default() };
    let mut f = Flow::with_config(10, 20, cfg);
    f.handshake();
    let r = f.client_send(b"0123456789abcdefXYZ");
    assert!(r.notes.overflow);
    assert_eq!(r.new_client_bytes, 16);
    assert_eq!(f.conn().stats().client_bytes_dropped, 3);
    assert_eq!(f.tracker.buffered_bytes(), 16);
    let r = f.server_ack(f.c_nxt);
    assert!(r.notes.missing_acked);
    let missing = MissingBytes { from: f.c_isn + 17, to: f.c_isn + 20 };
    assert_eq!(f.conn().client_acked_unread(), Err(missing));
    assert_eq!(f.conn().snapshot(), Err(SnapshotError::Missing { tuple: f.tuple(), missing }));
    // Once the replica has read past the hole, the connection is whole again.
    f.tracker.consume(&f.tuple(), 19).unwrap();
    assert_eq!(f.conn().client_acked_unread().unwrap(), b"");
    assert!(f.conn().snapshot().is_ok());
    // Total bound across connections.
    let cfg = TrackerConfig { max_total_buffer: 5, ..TrackerConfig::default() };
    let mut f = Flow::with_config(10, 20, cfg);
    f.handshake();
    assert_eq!(f.client_send(b"0123456789").new_client_bytes, 5);
    assert_eq!(f.tracker.buffered_bytes(), 5);
}

#[test]
fn capture_loss_is_detected() {
    let mut f = Flow::new(10, 20);
    f.handshake();
    f.c_nxt = f.c_nxt + 100; // 100 client bytes never captured
    f.client_send(b"tail");
    let r = f.server_ack(f.c_nxt);
    assert!(r.notes.missing_acked);
    assert!(f.conn().client_acked_unread().is_err());
    assert_eq!(f.conn().client_out_of_order().next(), Some((f.c_isn + 101, &b"tail"[..])));
}

#[test]
fn ack_of_unsent_data_is_ignored() {
    let mut f = Flow::new(10, 20);
    f.handshake();
    f.server_send(b"abc");
    let r = f.client_ack(f.s_nxt + 1000, 1000);
    assert!(r.notes.ack_of_unsent);
    assert_eq!(f.conn().snd_una(), Some(f.s_isn + 1));
    assert_eq!(f.conn().stats().ignored_acks, 1);
}

#[test]
fn timestamp_extrapolation() {
    let mut f = Flow::new(10, 20);
    f.s_ts = u32::MAX - 5; // the server's clock is about to wrap
    f.handshake();
    f.server_send(b"x");
    let seen = f.conn().server_timestamp().unwrap();
    assert_eq!(seen.tsval, u32::MAX - 3);
    let t0 = seen.at_ns;
    assert_eq!(f.conn().server_ts_at(t0, TsClock::Millis), Some(u32::MAX - 3));
    assert_eq!(f.conn().server_ts_at(t0 + 10_000_000, TsClock::Millis), Some(6));
    assert_eq!(f.conn().server_ts_at(t0 + 10_000_000, TsClock::Micros), Some(9_996));
    assert_eq!(f.conn().server_ts_at(t0 - 1, TsClock::Millis), Some(u32::MAX - 3), "time never goes back");
    // The client echoes a TSval we never saw (a lost capture): the floor
    // rises to it so the client's PAWS check still passes.
    let pkt = packet(
        f.client,
        f.server,
        f.c_nxt,
        f.s_nxt,
        ACK,
        1000,
        &[TcpOption::Timestamps { tsval: 99_999, tsecr: 40 }],
        b"",
    );
    f.feed(&pkt);
    let ts = f.conn().client_timestamp().unwrap();
    assert_eq!((ts.tsval, ts.tsecr), (99_999, Some(40)));
    assert_eq!(f.conn().server_ts_at(t0 + 10_000_000, TsClock::Millis), Some(40));
    assert_eq!(f.conn().server_ts_at(t0 + 50_000_000, TsClock::Millis), Some(46));
    // Reordered older timestamps do not go back.
    f.outbound_raw(f.s_nxt, f.c_nxt, ACK, 500, b"");
    let old = TcpOption::Timestamps { tsval: u32::MAX - 100, tsecr: 0 };
    let pkt = packet(f.server, f.client, f.s_nxt, f.c_nxt, ACK, 500, &[old], b"");
    f.feed(&pkt);
    assert_eq!(f.conn().server_timestamp().unwrap().tsval, u32::MAX - 2);
}

#[test]
fn snapshot_collects_repair_values() {
    let mut f = Flow::new(1_000, 5_000);
    f.handshake();
    f.client_send(b"request-1");
    f.server_send(b"response-1-part-a");
    f.client_send(b"request-2");
    f.server_send(b"response-1-part-b");
    f.tracker.consume(&f.tuple(), 9).unwrap();
    let c = f.conn();
    let s = c.snapshot().unwrap();
    assert_eq!(s.state, ConnState::Established);
    assert_eq!(s.options, c.negotiated().unwrap());
    assert_eq!(s.recv_queue_seq, SeqNum(1_010));
    assert_eq!(s.rcv_nxt, SeqNum(1_019));
    assert_eq!(s.recv_queue, b"request-2");
    assert_eq!(s.rcv_nxt.since(s.recv_queue_seq) as usize, s.recv_queue.len());
    // The client acked part a (with request-2) but not part b.
    assert_eq!(s.send_queue_seq, SeqNum(5_018));
    assert_eq!(s.snd_nxt, SeqNum(5_035));
    assert!(!s.client_fin_acked && !s.server_fin_sent);
    assert_eq!(s.window, c.repair_window().unwrap());
}

//! Closing tests: FINs each way, RSTs, replacement and expiry.

use super::super::seq::SeqNum;
use super::super::{ConnState, ExpiryPolicy, Ignored, Observed, ResetInfo, Side, SnapshotError, TrackerConfig};
use super::{ACK, FIN, Flow, PSH, RST};

#[test]
fn client_fin_half_close() {
    let mut f = Flow::new(100, 200);
    f.handshake();
    f.client_send(b"last request");
    // Client shuts down writing.
    let fin_seq = f.c_nxt;
    let r = f.inbound_raw(fin_seq, f.s_nxt, ACK | FIN, 1000, b"");
    assert!(r.notes.fin);
    f.c_nxt = fin_seq + 1;
    let c = f.conn();
    assert_eq!(c.state(), ConnState::CloseWait);
    assert_eq!(c.client_fin().unwrap().seq, fin_seq);
    assert!(!c.client_fin().unwrap().acked);
    assert_eq!(c.rcv_nxt(), f.c_isn + 1, "nothing acked yet");
    // The server acks data and FIN, and keeps sending (half-closed).
    f.server_send(b"response part 1");
    let c = f.conn();
    assert!(c.client_fin().unwrap().acked);
    assert_eq!(c.server_ack(), Some(fin_seq + 1), "wire value counts the FIN");
    assert_eq!(c.rcv_nxt(), fin_seq, "rcv_nxt excludes the FIN");
    assert_eq!(c.client_acked_unread().unwrap(), b"last request");
    f.server_send(b"response part 2");
    f.client_ack(f.s_nxt, 1000);
    let s = f.conn().snapshot().unwrap();
    assert_eq!(s.state, ConnState::CloseWait);
    assert!(s.client_fin_acked && !s.server_fin_sent);
    assert_eq!(s.rcv_nxt, fin_seq);
    assert_eq!(s.recv_queue, b"last request");
    assert_eq!(s.send_queue_seq, f.s_nxt);
    // Data after the FIN is not part of the stream.
    let r = f.inbound_raw(fin_seq, f.s_nxt, ACK | PSH, 1000, b"bogus");
    assert_eq!(r.new_client_bytes, 0);
    assert_eq!(f.conn().stats().client_bytes_after_fin, 5);
    // Consuming up to the FIN is fine, past it is not.
    f.tracker.consume(&f.tuple(), 12).unwrap();
    assert!(f.tracker.consume(&f.tuple(), 1).is_err());
}

#[test]
fn server_shutdown_then_full_close() {
    let mut f = Flow::new(1_000, u32::MAX);
    f.handshake();
    f.server_send(b"bye");
    let fin_seq = f.s_nxt;
    let r = f.outbound_raw(fin_seq, f.c_nxt, ACK | FIN, 500, b"");
    assert!(r.notes.fin);
    f.s_nxt = fin_seq + 1;
    let c = f.conn();
    assert_eq!(c.state(), ConnState::FinWait);
    assert_eq!(c.snd_nxt(), Some(fin_seq + 1), "snd_nxt counts the FIN");
    assert_eq!(c.server_fin().unwrap().seq, fin_seq);
    // The client acks the data only, then data + FIN.
    f.client_ack(fin_seq, 1000);
    assert!(!f.conn().server_fin().unwrap().acked);
    assert_eq!(f.conn().send_queue_seq(), Some(fin_seq));
    f.client_ack(fin_seq + 1, 1000);
    let c = f.conn();
    assert!(c.server_fin().unwrap().acked);
    assert_eq!(c.snd_una(), Some(fin_seq + 1));
    assert_eq!(c.send_queue_seq(), Some(fin_seq), "FIN excluded from the queue seq");
    let s = c.snapshot().unwrap();
    assert!(s.server_fin_sent);
    assert_eq!(s.snd_nxt, fin_seq);
    // A retransmitted FIN does not move anything.
    let r = f.outbound_raw(fin_seq, f.c_nxt, ACK | FIN, 500, b"");
    assert!(!r.notes.fin);
    assert_eq!(f.conn().snd_nxt(), Some(fin_seq + 1));
    // Client closes too.
    let c_fin = f.c_nxt;
    f.inbound_raw(c_fin, f.s_nxt, ACK | FIN, 1000, b"");
    assert_eq!(f.conn().state(), ConnState::Closing);
    assert_eq!(f.conn().ended_ns(), None);
    f.server_ack(c_fin + 1);
    assert_eq!(f.conn().state(), ConnState::Closed);
    let ended = f.conn().ended_ns().unwrap();
    // Expiry removes it after the linger time, not before.
    let policy = ExpiryPolicy { ended_after_ns: 1_000, handshake_after_ns: u64::MAX, idle_after_ns: None };
    assert!(f.tracker.expire(ended + 999, &policy).is_empty());
    let gone = f.tracker.expire(ended + 1_000, &policy);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].tuple(), f.tuple());
    assert!(f.tracker.is_empty());
}

#[test]
fn client_rst_in_range_ends_connection() {
    let mut f = Flow::new(10, 20);
    f.handshake();
    f.client_send(b"unacked");
    // RST at the client's snd_nxt: between the server's ACK and the end of
    // client data, so it can be the kernel's rcv_nxt.
    let r = f.inbound_raw(f.c_nxt, SeqNum(0), RST, 0, b"");
    assert!(r.notes.reset);
    let c = f.conn();
    assert_eq!(c.state(), ConnState::Reset(Side::Client));
    assert_eq!(c.reset(), Some(ResetInfo { by: Side::Client, seq: f.c_nxt, at_ns: f.now }));
    assert_eq!(c.ended_ns(), Some(f.now));
    assert_eq!(c.snapshot(), Err(SnapshotError::Reset { tuple: f.tuple(), by: Side::Client }));
    // Later segments are ignored.
    let r = f.client_send(b"more");
    assert!(r.notes.after_reset);
    assert_eq!(r.new_client_bytes, 0);
    let r = f.server_send(b"late");
    assert!(r.notes.after_reset);
}

#[test]
fn client_rst_out_of_range_is_ignored() {
    let mut f = Flow::new(10, 20);
    f.handshake();
    f.client_send(b"abc");
    f.server_ack(f.c_nxt);
    // Blind RST far in the window.
    let r = f.inbound_raw(f.c_nxt + 5000, SeqNum(0), RST, 0, b"");
    assert!(r.notes.ignored_rst && !r.notes.reset);
    // RST below the server's ACK.
    let r = f.inbound_raw(f.c_nxt - 2, SeqNum(0), RST, 0, b"");
    assert!(r.notes.ignored_rst);
    assert_eq!(f.conn().state(), ConnState::Established);
    assert_eq!(f.conn().stats().ignored_rsts, 2);
}

#[test]
fn server_rst_ends_connection() {
    let mut f = Flow::new(10, 20);
    f.handshake();
    f.client_send(b"abc");
    let r = f.outbound_raw(f.s_nxt, f.c_nxt, RST | ACK, 0, b"");
    assert!(r.notes.reset);
    assert_eq!(f.conn().state(), ConnState::Reset(Side::Server));
    // Closed connections are dropped by expiry; buffered bytes released.
    assert_eq!(f.tracker.buffered_bytes(), 3);
    let policy = ExpiryPolicy { ended_after_ns: 0, handshake_after_ns: u64::MAX, idle_after_ns: None };
    assert_eq!(f.tracker.expire(f.now, &policy).len(), 1);
    assert_eq!(f.tracker.buffered_bytes(), 0);
}

#[test]
fn rst_during_handshake() {
    let mut f = Flow::new(10, 20);
    let syn = super::packet(f.client, f.server, SeqNum(10), SeqNum(0), super::SYN, 100, &[], b"");
    f.feed(&syn);
    let sa = super::packet(f.server, f.client, SeqNum(20), SeqNum(11), super::SYN | ACK, 100, &[], b"");
    f.feed(&sa);
    // RST at the client's next sequence number is acceptable in SYN-RECEIVED.
    let r = f.inbound_raw(SeqNum(11), SeqNum(0), RST, 0, b"");
    assert!(r.notes.reset);
    assert_eq!(f.conn().state(), ConnState::Reset(Side::Client));
}

#[test]
fn expiry_of_stuck_handshakes_and_idle_connections() {
    let mut f = Flow::new(10, 20);
    let syn = super::packet(f.client, f.server, SeqNum(10), SeqNum(0), super::SYN, 100, &[], b"");
    f.feed(&syn);
    let t0 = f.now;
    let policy = ExpiryPolicy { ended_after_ns: u64::MAX, handshake_after_ns: 5_000, idle_after_ns: None };
    assert!(f.tracker.expire(t0 + 4_999, &policy).is_empty());
    assert_eq!(f.tracker.expire(t0 + 5_000, &policy).len(), 1);

    let mut f = Flow::new(10, 20);
    f.handshake();
    let t1 = f.now;
    let policy = ExpiryPolicy { ended_after_ns: u64::MAX, handshake_after_ns: 0, idle_after_ns: Some(60) };
    assert!(f.tracker.expire(t1 + 59, &policy).is_empty(), "established is not a stuck handshake");
    assert_eq!(f.tracker.expire(t1 + 60, &policy).len(), 1);
}

#[test]
fn the_backup_policy_makes_room_for_new_connections_and_keeps_idle_ones() {
    use super::SYN;
    let mut f = Flow::with_config(10, 20, TrackerConfig { max_connections: 2, ..TrackerConfig::default() });
    f.handshake();
    f.outbound_raw(f.s_nxt, f.c_nxt, RST | ACK, 0, b"");
    let ended = f.conn().ended_ns().expect("reset ends it");
    let (server, idle, third) = (f.server, port_after(&f, 1), port_after(&f, 2));
    // An idle connection (established, then silent) takes the second place.
    for (from, to, seq, ack, flags) in
        [(idle, server, 99, 0, SYN), (server, idle, 500, 100, SYN | ACK), (idle, server, 100, 501, ACK)]
    {
        let pkt = super::packet(from, to, SeqNum(seq), SeqNum(ack), flags, 100, &[], b"");
        assert!(matches!(f.tracker.observe(ended, &pkt), Ok(Observed::Tracked(_))));
    }
    let syn = super::packet(third, server, SeqNum(7), SeqNum(0), SYN, 100, &[], b"");
    let full = f.tracker.observe(ended, &syn).expect("parse");
    assert!(matches!(full, Observed::Ignored(Ignored::ConnectionLimit(_))), "{full:?}");
    let p = ExpiryPolicy::BACKUP;
    assert!(f.tracker.expire(ended + p.ended_after_ns - 1, &p).is_empty(), "a minute of grace");
    let gone = f.tracker.expire(ended + p.ended_after_ns, &p);
    assert_eq!(gone.iter().map(|c| c.tuple()).collect::<Vec<_>>(), [f.tuple()], "only the ended one goes");
    let later = ended + p.ended_after_ns;
    assert!(matches!(f.tracker.observe(later, &syn), Ok(Observed::Tracked(_))), "room again");
    // A handshake stuck for two minutes goes; an idle connection stays, even a day later.
    assert!(f.tracker.expire(later + p.handshake_after_ns - 1, &p).is_empty());
    assert_eq!(f.tracker.expire(later + p.handshake_after_ns, &p).len(), 1);
    assert!(f.tracker.expire(later + 86_400_000_000_000, &p).is_empty());
    assert_eq!(f.tracker.len(), 1);
}

#[test]
fn unclaimed_connections_go_once_idle_claimed_ones_stay() {
    let mut f = Flow::new(10, 20);
    f.handshake();
    // The server closed; its FIN is out but the client never answers.
    f.outbound_raw(f.s_nxt, f.c_nxt, ACK | FIN, 500, b"");
    let quiet = f.now;
    assert!(f.tracker.expire(quiet + 86_400_000_000_000, &ExpiryPolicy::BACKUP).is_empty(), "never ended");
    let tuple = f.tuple();
    assert!(f.tracker.expire_unclaimed(quiet + 1_000, 1_000, |t| *t == tuple).is_empty(), "claimed");
    assert!(f.tracker.expire_unclaimed(quiet + 999, 1_000, |_| false).is_empty(), "not idle long enough");
    assert_eq!(f.tracker.expire_unclaimed(quiet + 1_000, 1_000, |_| false).len(), 1);
    assert!(f.tracker.is_empty());
}

fn port_after(f: &Flow, n: u16) -> std::net::SocketAddrV4 {
    std::net::SocketAddrV4::new(*f.client.ip(), f.client.port() + n)
}

#[test]
fn remove_returns_state() {
    let mut f = Flow::new(10, 20);
    f.handshake();
    f.client_send(b"abc");
    let c = f.tracker.remove(&f.tuple()).unwrap();
    assert_eq!(c.client_unacked(), b"abc");
    assert_eq!(f.tracker.buffered_bytes(), 0);
    assert!(f.tracker.remove(&f.tuple()).is_none());
}

//! Handshake, options, and connection-table tests.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::super::options::TcpOption;
use super::super::seq::SeqNum;
use super::super::wire::Ipv4Packet;
use super::super::{ConnState, Direction, FourTuple, Ignored, Negotiated, Observed, Tracker, TrackerConfig};
use super::{ACK, Flow, RST, SYN, client_addr, packet, server_addr};

#[test]
fn handshake_records_isns_and_options() {
    let mut f = Flow::new(1_000, 900_000);
    f.handshake();
    let c = f.conn();
    assert_eq!(c.state(), ConnState::Established);
    assert_eq!(c.client_isn(), SeqNum(1_000));
    assert_eq!(c.server_isn(), Some(SeqNum(900_000)));
    assert_eq!(c.client_syn().mss, Some(1460));
    assert_eq!(c.client_syn().window_scale, Some(7));
    assert_eq!(c.client_syn().window, 64_240);
    assert_eq!(c.server_syn().unwrap().mss, Some(1400));
    let n = c.negotiated().unwrap();
    assert_eq!(
        n,
        Negotiated {
            client_mss: Some(1460),
            server_mss: Some(1400),
            window_scaling: true,
            client_wscale: 7,
            server_wscale: 9,
            sack: true,
            timestamps: true,
        }
    );
    assert_eq!(n.mss_clamp(), 1460);
    assert_eq!(n.repair_wscale(), Some(7 | (9 << 16)));
    // After the handshake: nothing sent, nothing read.
    assert_eq!(c.snd_una(), Some(SeqNum(900_001)));
    assert_eq!(c.snd_nxt(), Some(SeqNum(900_001)));
    assert_eq!(c.send_queue_seq(), Some(SeqNum(900_001)));
    assert_eq!(c.server_ack(), Some(SeqNum(1_001)));
    assert_eq!(c.rcv_nxt(), SeqNum(1_001));
    assert_eq!(c.read_seq(), SeqNum(1_001));
    assert_eq!(c.client_acked_unread().unwrap(), b"");
    // The final ACK's window is scaled by the client's shift.
    assert_eq!(c.client_window(), 1000 << 7);
    // The SYN-ACK's window is never scaled.
    assert_eq!(c.server_window(), 65_160);
    assert_eq!(c.client_timestamp().unwrap().tsval, 1_002);
    assert_eq!(c.client_timestamp().unwrap().tsecr, Some(50_001));
    assert_eq!(c.server_timestamp().unwrap().tsval, 50_001);
    // The raw SYN-ACK is kept whole.
    let raw = c.syn_ack_packet().unwrap();
    let seg = Ipv4Packet::parse(raw).unwrap().tcp().unwrap();
    assert!(seg.flags().syn() && seg.flags().ack());
    assert_eq!(seg.seq(), SeqNum(900_000));
    assert_eq!(seg.ack(), SeqNum(1_001));
    assert_eq!(seg.options().filter_map(Result::ok).filter(|o| *o == TcpOption::WindowScale(9)).count(), 1);
}

#[test]
fn state_steps_through_the_handshake() {
    let mut t = Tracker::new(&[server_addr()]);
    let tuple = FourTuple { client: client_addr(), server: server_addr() };
    let syn = packet(client_addr(), server_addr(), SeqNum(5), SeqNum(0), SYN, 100, &[], b"");
    let Observed::Tracked(tr) = t.observe(10, &syn).unwrap() else { panic!() };
    assert_eq!(tr.direction, Direction::Inbound);
    assert!(tr.notes.new_connection);
    assert_eq!(t.get(&tuple).unwrap().state(), ConnState::SynSent);
    assert_eq!(t.get(&tuple).unwrap().snd_una(), None);
    assert!(t.get(&tuple).unwrap().snapshot().is_err());
    let sa = packet(server_addr(), client_addr(), SeqNum(70), SeqNum(6), SYN | ACK, 200, &[], b"");
    let Observed::Tracked(tr) = t.observe(11, &sa).unwrap() else { panic!() };
    assert_eq!(tr.direction, Direction::Outbound);
    assert_eq!(t.get(&tuple).unwrap().state(), ConnState::SynReceived);
    let ack = packet(client_addr(), server_addr(), SeqNum(6), SeqNum(71), ACK, 300, &[], b"");
    t.observe(12, &ack).unwrap();
    let c = t.get(&tuple).unwrap();
    assert_eq!(c.state(), ConnState::Established);
    // No options: no scaling, default MSS, no SACK, no timestamps.
    let n = c.negotiated().unwrap();
    assert!(!n.window_scaling && !n.sack && !n.timestamps);
    assert_eq!(n.mss_clamp(), 536);
    assert_eq!(n.repair_wscale(), None);
    assert_eq!(c.client_window(), 300);
    assert_eq!(c.server_ts_at(100, super::super::TsClock::Millis), None);
    assert_eq!(c.first_seen_ns(), 10);
    assert_eq!(c.last_seen_ns(), 12);
}

#[test]
fn window_scale_only_when_both_sides_offer_and_clamped() {
    let mut t = Tracker::new(&[server_addr()]);
    let tuple = FourTuple { client: client_addr(), server: server_addr() };
    let syn = packet(client_addr(), server_addr(), SeqNum(5), SeqNum(0), SYN, 100, &[TcpOption::WindowScale(20)], b"");
    t.observe(1, &syn).unwrap();
    let sa =
        packet(server_addr(), client_addr(), SeqNum(70), SeqNum(6), SYN | ACK, 200, &[TcpOption::WindowScale(3)], b"");
    t.observe(2, &sa).unwrap();
    let n = t.get(&tuple).unwrap().negotiated().unwrap();
    assert_eq!((n.client_wscale, n.server_wscale), (14, 3));
    assert_eq!(t.get(&tuple).unwrap().client_syn().window_scale, Some(20), "raw value kept");

    // Server does not echo window scale: no scaling either way.
    let mut t = Tracker::new(&[server_addr()]);
    t.observe(1, &syn).unwrap();
    let sa = packet(server_addr(), client_addr(), SeqNum(70), SeqNum(6), SYN | ACK, 200, &[], b"");
    t.observe(2, &sa).unwrap();
    let ack = packet(client_addr(), server_addr(), SeqNum(6), SeqNum(71), ACK, 300, &[], b"");
    t.observe(3, &ack).unwrap();
    let c = t.get(&tuple).unwrap();
    assert!(!c.negotiated().unwrap().window_scaling);
    assert_eq!(c.client_window(), 300);
}

#[test]
fn retransmitted_syn_and_syn_ack() {
    let mut f = Flow::new(77, 88);
    let syn = packet(f.client, f.server, SeqNum(77), SeqNum(0), SYN, 100, &[TcpOption::Mss(1000)], b"");
    assert!(f.feed(&syn).notes.new_connection);
    let again = f.feed(&syn);
    assert!(again.notes.syn_retransmit && !again.notes.new_connection);
    let sa1 = packet(f.server, f.client, SeqNum(88), SeqNum(78), SYN | ACK, 1, &[TcpOption::Mss(900)], b"");
    assert!(f.feed(&sa1).notes.syn_ack);
    let sa2 = packet(f.server, f.client, SeqNum(88), SeqNum(78), SYN | ACK, 2, &[TcpOption::Mss(900)], b"");
    assert!(f.feed(&sa2).notes.syn_ack_retransmit);
    assert_eq!(f.conn().syn_ack_packet().unwrap(), &sa2[..], "latest SYN-ACK kept");
    // A client SYN retransmitted after the SYN-ACK (lost SYN-ACK) is flagged
    // so the backup can answer it with the recorded SYN-ACK.
    assert!(f.feed(&syn).notes.syn_retransmit);
    assert_eq!(f.conn().stats().syn_retransmits, 2);
    assert_eq!(f.conn().stats().syn_ack_retransmits, 1);
    assert_eq!(f.conn().state(), ConnState::SynReceived);
    // A SYN-ACK that does not acknowledge this SYN is not ours.
    let stray = packet(f.server, f.client, SeqNum(99), SeqNum(5), SYN | ACK, 2, &[], b"");
    assert!(f.feed(&stray).notes.unexpected_syn);
    assert_eq!(f.conn().server_isn(), Some(SeqNum(88)));
}

#[test]
fn syn_with_new_isn_replaces_only_finished_connections() {
    let mut f = Flow::new(1_000, 2_000);
    f.handshake();
    f.client_send(b"abc");
    // Live connection: a SYN with another ISN is ignored.
    let syn = packet(f.client, f.server, SeqNum(555), SeqNum(0), SYN, 100, &[], b"");
    let r = f.feed(&syn);
    assert!(r.notes.unexpected_syn && !r.notes.new_connection);
    assert_eq!(f.conn().client_isn(), SeqNum(1_000));
    assert_eq!(f.tracker.buffered_bytes(), 3);
    // After a reset the same four-tuple may start again.
    f.outbound_raw(f.s_nxt, f.c_nxt, RST | ACK, 0, b"");
    assert_eq!(f.conn().state(), ConnState::Reset(super::super::Side::Server));
    let r = f.feed(&syn);
    assert!(r.notes.new_connection && r.notes.replaced_previous);
    assert_eq!(f.conn().client_isn(), SeqNum(555));
    assert_eq!(f.conn().state(), ConnState::SynSent);
    assert_eq!(f.tracker.buffered_bytes(), 0);
}

#[test]
fn unknown_connections_and_limits() {
    let cfg = TrackerConfig { max_connections: 1, ..TrackerConfig::default() };
    let mut t = Tracker::with_config(&[server_addr()], cfg);
    let syn = packet(client_addr(), server_addr(), SeqNum(5), SeqNum(0), SYN, 100, &[], b"");
    t.observe(1, &syn).unwrap();
    let other = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 3), 50_000);
    let syn2 = packet(other, server_addr(), SeqNum(5), SeqNum(0), SYN, 100, &[], b"");
    let tuple2 = FourTuple { client: other, server: server_addr() };
    assert_eq!(t.observe(2, &syn2), Ok(Observed::Ignored(Ignored::ConnectionLimit(tuple2))));
    // Mid-stream traffic of an untracked connection is ignored, both ways.
    let data = packet(other, server_addr(), SeqNum(9), SeqNum(9), ACK, 100, &[], b"hello");
    assert_eq!(t.observe(3, &data), Ok(Observed::Ignored(Ignored::UnknownConnection(tuple2))));
    let out = packet(server_addr(), other, SeqNum(9), SeqNum(9), SYN | ACK, 100, &[], b"");
    assert_eq!(t.observe(3, &out), Ok(Observed::Ignored(Ignored::UnknownConnection(tuple2))));
    assert_eq!(t.len(), 1);
}

#[test]
fn wildcard_service_address_matches_any_ip() {
    let svc = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 443);
    let t = Tracker::new(&[svc]);
    assert!(t.is_service(server_addr()));
    assert!(!t.is_service(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 80)));
    let (tuple, dir) = t.classify(server_addr(), client_addr()).unwrap();
    assert_eq!(dir, Direction::Outbound);
    assert_eq!(tuple, FourTuple { client: client_addr(), server: server_addr() });
}

#[test]
fn client_ack_before_syn_ack_is_ignored() {
    let mut t = Tracker::new(&[server_addr()]);
    let tuple = FourTuple { client: client_addr(), server: server_addr() };
    t.observe(1, &packet(client_addr(), server_addr(), SeqNum(5), SeqNum(0), SYN, 100, &[], b"")).unwrap();
    t.observe(2, &packet(client_addr(), server_addr(), SeqNum(6), SeqNum(1234), ACK, 100, &[], b"")).unwrap();
    let c = t.get(&tuple).unwrap();
    assert_eq!(c.state(), ConnState::SynSent);
    assert_eq!(c.stats().ignored_acks, 1);
}

//! Wire-format tests: round trips, cross-checks with etherparse, and every
//! malformed-header case returning its error.

use std::net::Ipv4Addr;

use super::super::options::{OptionError, SackBlocks, TcpOption};
use super::super::seq::SeqNum;
use super::super::wire::{
    Ipv4Packet, Ipv4Repr, TcpPacket, TcpRepr, WireError, emit_ipv4_tcp, fill_checksums, tcp_checksum,
};
use super::super::{Ignored, Observed, Tracker};
use super::{ACK, FIN, PSH, SYN, client_addr, packet, server_addr};

fn sample_repr(payload: &[u8]) -> (Ipv4Repr, TcpRepr<'_>) {
    let ip = Ipv4Repr {
        src: Ipv4Addr::new(192, 0, 2, 1),
        dst: Ipv4Addr::new(198, 51, 100, 7),
        ident: 0x1234,
        ttl: 61,
        dont_frag: true,
    };
    let sack = SackBlocks::from_slice(&[(SeqNum(10), SeqNum(20)), (SeqNum(u32::MAX - 3), SeqNum(7))]).unwrap();
    let tcp = TcpRepr {
        src_port: 55_000,
        dst_port: 443,
        seq: SeqNum(0xfedc_ba98),
        ack: SeqNum(0x0123_4567),
        flags: ACK | PSH,
        window: 1234,
        urgent: 0,
        options: vec![TcpOption::Timestamps { tsval: 1, tsecr: 2 }, TcpOption::Sack(sack)],
        payload,
    };
    (ip, tcp)
}

#[test]
fn round_trip_ipv4_tcp() {
    let payload = b"GET / HTTP/1.1\r\n\r\n";
    let (ip, tcp) = sample_repr(payload);
    let pkt = emit_ipv4_tcp(&ip, &tcp).unwrap();
    let view = Ipv4Packet::parse(&pkt).unwrap();
    assert_eq!(view.header_len(), 20);
    assert_eq!(view.total_len(), pkt.len());
    assert_eq!(view.ttl(), 61);
    assert!(view.dont_frag() && !view.more_frags());
    assert_eq!(Ipv4Repr::parse(&view), ip);
    let seg = view.tcp().unwrap();
    assert_eq!(seg.header_len(), 20 + 10 + 18);
    assert_eq!(seg.payload(), payload);
    assert_eq!(seg.seq_len(), payload.len() as u64);
    assert_eq!(TcpRepr::parse(&seg).unwrap(), tcp);
}

#[test]
fn emitted_packets_agree_with_etherparse() {
    let payload = vec![0xa5u8; 333];
    let (ip, tcp) = sample_repr(&payload);
    let pkt = emit_ipv4_tcp(&ip, &tcp).unwrap();
    let sliced = etherparse::SlicedPacket::from_ip(&pkt).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ipv4)) = &sliced.net else { panic!("not ipv4") };
    let h = ipv4.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum());
    assert_eq!(h.source, [192, 0, 2, 1]);
    let Some(etherparse::TransportSlice::Tcp(t)) = &sliced.transport else { panic!("not tcp") };
    assert_eq!(t.sequence_number(), 0xfedc_ba98);
    assert_eq!(t.acknowledgment_number(), 0x0123_4567);
    assert_eq!(t.window_size(), 1234);
    assert!(t.ack() && t.psh() && !t.syn());
    assert_eq!(t.payload(), &payload[..]);
    let expected = t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap();
    assert_eq!(t.checksum(), expected);
}

#[test]
fn fill_checksums_repairs_offloaded_packet() {
    let (ip, tcp) = sample_repr(b"abc");
    let good = emit_ipv4_tcp(&ip, &tcp).unwrap();
    let mut bad = good.clone();
    bad[10] = 0;
    bad[11] = 0;
    bad[36] = 0;
    bad[37] = 0;
    fill_checksums(&mut bad).unwrap();
    assert_eq!(bad, good);
    let seg = &good[20..];
    let stored = TcpPacket::parse(seg).unwrap().checksum();
    assert_eq!(tcp_checksum(ip.src, ip.dst, seg), stored);
}

#[test]
fn padding_after_total_length_is_ignored() {
    let mut pkt = packet(client_addr(), server_addr(), SeqNum(1), SeqNum(2), ACK, 10, &[], b"xy");
    pkt.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let view = Ipv4Packet::parse(&pkt).unwrap();
    assert_eq!(view.tcp().unwrap().payload(), b"xy");
    assert_eq!(view.as_bytes().len(), pkt.len() - 6);
}

#[test]
fn big_tcp_zero_total_length() {
    let payload = vec![7u8; 100_000];
    let (ip, tcp) = sample_repr(&payload);
    let pkt = emit_ipv4_tcp(&ip, &tcp).unwrap();
    assert_eq!(&pkt[2..4], &[0, 0]);
    let view = Ipv4Packet::parse(&pkt).unwrap();
    assert_eq!(view.tcp().unwrap().payload().len(), 100_000);
    // Zero total length on a small buffer is malformed.
    let mut small = packet(client_addr(), server_addr(), SeqNum(1), SeqNum(2), ACK, 10, &[], b"");
    small[2] = 0;
    small[3] = 0;
    assert!(matches!(Ipv4Packet::parse(&small), Err(WireError::BadTotalLength { total_len: 0, .. })));
}

/// Every malformed header is a typed error from `observe`, and changes
/// nothing in the tracker.
#[test]
fn malformed_headers_are_errors() {
    let good = packet(client_addr(), server_addr(), SeqNum(1), SeqNum(0), SYN, 10, &[TcpOption::Mss(1460)], b"");
    let mut t = Tracker::new(&[server_addr()]);
    let mut check = |bytes: &[u8], want: WireError| {
        assert_eq!(t.observe(5, bytes), Err(want), "bytes {bytes:02x?}");
        assert!(t.is_empty());
    };
    check(&good[..19], WireError::Ipv4Truncated { len: 19 });
    check(&[], WireError::Ipv4Truncated { len: 0 });
    let mut v6 = good.clone();
    v6[0] = 0x65;
    check(&v6, WireError::NotIpv4 { version: 6 });
    let mut ihl = good.clone();
    ihl[0] = 0x44;
    check(&ihl, WireError::BadIhl { ihl: 4 });
    let mut ihl_far = good.clone();
    ihl_far[0] = 0x4f; // 60-byte header, 44-byte packet
    check(&ihl_far, WireError::Ipv4HeaderBeyondPacket { header_len: 60, len: 44 });
    let mut short_total = good.clone();
    short_total[2..4].copy_from_slice(&10u16.to_be_bytes());
    check(&short_total, WireError::BadTotalLength { total_len: 10, header_len: 20, len: 44 });
    let mut long_total = good.clone();
    long_total[2..4].copy_from_slice(&100u16.to_be_bytes());
    check(&long_total, WireError::BadTotalLength { total_len: 100, header_len: 20, len: 44 });
    let mut frag = good.clone();
    frag[6] = 0x20; // more fragments
    check(&frag, WireError::Fragmented { offset: 0, more: true });
    // TCP header cut short: total length says 30 bytes.
    let mut tcp_short = good[..30].to_vec();
    tcp_short[2..4].copy_from_slice(&30u16.to_be_bytes());
    check(&tcp_short, WireError::TcpTruncated { len: 10 });
    let mut off_small = good.clone();
    off_small[32] = 0x40;
    check(&off_small, WireError::BadDataOffset { offset: 4 });
    let mut off_far = good.clone();
    off_far[32] = 0xf0; // 60-byte TCP header in a 24-byte segment
    check(&off_far, WireError::TcpHeaderBeyondSegment { header_len: 60, len: 24 });
}

#[test]
fn malformed_options_are_reported_not_fatal() {
    let mut t = Tracker::new(&[server_addr()]);
    // SYN whose options area is [MSS 1460][kind 30, length 0]: the MSS is
    // kept, the rest ignored, as Linux does.
    let mut syn = packet(
        client_addr(),
        server_addr(),
        SeqNum(1),
        SeqNum(0),
        SYN,
        10,
        &[TcpOption::Mss(1460), TcpOption::Unknown { kind: 30, data: &[0, 0] }],
        b"",
    );
    syn[45] = 0; // length byte of the unknown option
    let Observed::Tracked(tr) = t.observe(1, &syn).unwrap() else { panic!("ignored") };
    assert_eq!(tr.notes.option_error, Some(OptionError::LengthTooShort { kind: 30, at: 4, len: 0 }));
    let conn = t.get(&tr.tuple).unwrap();
    assert_eq!(conn.client_syn().mss, Some(1460));
    assert_eq!(conn.stats().option_errors, 1);
    // Strict reading of the same segment fails, naming the option.
    let seg = Ipv4Packet::parse(&syn).unwrap().tcp().unwrap();
    assert_eq!(TcpRepr::parse(&seg), Err(WireError::Option(OptionError::LengthTooShort { kind: 30, at: 4, len: 0 })));

    // Overflowing option length.
    let mut ovf = packet(client_addr(), server_addr(), SeqNum(2), SeqNum(0), ACK, 10, &[TcpOption::Mss(1)], b"");
    ovf[41] = 9;
    let seg = Ipv4Packet::parse(&ovf).unwrap().tcp().unwrap();
    assert_eq!(
        TcpRepr::parse(&seg),
        Err(WireError::Option(OptionError::Overflow { kind: 2, at: 0, len: 9, remaining: 4 }))
    );
}

#[test]
fn non_tcp_and_non_service_are_ignored() {
    let mut t = Tracker::new(&[server_addr()]);
    let mut udp = packet(client_addr(), server_addr(), SeqNum(1), SeqNum(0), SYN, 10, &[], b"");
    udp[9] = 17;
    assert_eq!(t.observe(1, &udp), Ok(Observed::Ignored(Ignored::NotTcp { protocol: 17 })));
    let other = std::net::SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 80);
    let pkt = packet(client_addr(), other, SeqNum(1), SeqNum(0), SYN, 10, &[], b"");
    assert_eq!(t.observe(1, &pkt), Ok(Observed::Ignored(Ignored::NotService)));
    let pkt = packet(server_addr(), server_addr(), SeqNum(1), SeqNum(0), SYN, 10, &[], b"");
    assert_eq!(t.observe(1, &pkt), Ok(Observed::Ignored(Ignored::BothEndsAreServices)));
    let pkt = packet(client_addr(), server_addr(), SeqNum(1), SeqNum(9), ACK | FIN, 10, &[], b"");
    assert!(matches!(t.observe(1, &pkt), Ok(Observed::Ignored(Ignored::UnknownConnection(_)))));
    assert!(t.is_empty());
}

//! Tracker tests: segment sequences built with the wire emitter and fed
//! through [`Tracker::observe`], with assertions on the resulting values.

mod close;
mod fuzz;
mod handshake;
mod stream;
mod wire_tests;

use std::net::{Ipv4Addr, SocketAddrV4};

use super::options::TcpOption;
use super::seq::SeqNum;
use super::wire::{Ipv4Repr, TcpFlags, TcpRepr, emit_ipv4_tcp};
use super::{Conn, FourTuple, Observed, Tracked, Tracker, TrackerConfig};

pub(super) const ACK: TcpFlags = TcpFlags::ACK;
pub(super) const SYN: TcpFlags = TcpFlags::SYN;
pub(super) const FIN: TcpFlags = TcpFlags::FIN;
pub(crate) const RST: TcpFlags = TcpFlags::RST;
pub(super) const PSH: TcpFlags = TcpFlags::PSH;

pub(super) fn client_addr() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40_000)
}

pub(super) fn server_addr() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), 443)
}

/// Builds one IPv4+TCP packet.
#[allow(clippy::too_many_arguments, reason = "mirrors the header fields one to one")]
pub(super) fn packet(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: SeqNum,
    ack: SeqNum,
    flags: TcpFlags,
    window: u16,
    options: &[TcpOption<'_>],
    payload: &[u8],
) -> Vec<u8> {
    let ip = Ipv4Repr { src: *src.ip(), dst: *dst.ip(), ident: 1, ttl: 64, dont_frag: true };
    let tcp = TcpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
        seq,
        ack,
        flags,
        window,
        urgent: 0,
        options: options.to_vec(),
        payload,
    };
    emit_ipv4_tcp(&ip, &tcp).expect("test packet emits")
}

/// A scripted connection: tracks both sides' next sequence numbers and
/// timestamp clocks so tests only say what happens.
pub(crate) struct Flow {
    pub tracker: Tracker,
    pub client: SocketAddrV4,
    pub server: SocketAddrV4,
    pub c_isn: SeqNum,
    pub s_isn: SeqNum,
    /// Client's next sequence number to send.
    pub c_nxt: SeqNum,
    /// Server's next sequence number to send.
    pub s_nxt: SeqNum,
    /// Client's TSval clock.
    pub c_ts: u32,
    /// Server's TSval clock.
    pub s_ts: u32,
    pub now: u64,
    /// Timestamps option on data segments.
    pub timestamps: bool,
}

impl Flow {
    pub fn new(c_isn: u32, s_isn: u32) -> Flow {
        Self::with_config(c_isn, s_isn, TrackerConfig::default())
    }

    pub fn with_config(c_isn: u32, s_isn: u32, config: TrackerConfig) -> Flow {
        Flow {
            tracker: Tracker::with_config(&[server_addr()], config),
            client: client_addr(),
            server: server_addr(),
            c_isn: SeqNum(c_isn),
            s_isn: SeqNum(s_isn),
            c_nxt: SeqNum(c_isn),
            s_nxt: SeqNum(s_isn),
            c_ts: 1_000,
            s_ts: 50_000,
            now: 1_000_000_000,
            timestamps: true,
        }
    }

    pub fn tuple(&self) -> FourTuple {
        FourTuple { client: self.client, server: self.server }
    }

    pub fn conn(&self) -> &Conn {
        self.tracker.get(&self.tuple()).expect("connection tracked")
    }

    pub fn feed(&mut self, pkt: &[u8]) -> Tracked {
        self.now += 1_000_000;
        match self.tracker.observe(self.now, pkt).expect("packet parses") {
            Observed::Tracked(t) => t,
            Observed::Ignored(why) => panic!("packet ignored: {why:?}"),
        }
    }

    /// A client segment with explicit numbers (does not move `c_nxt`).
    pub fn inbound_raw(&mut self, seq: SeqNum, ack: SeqNum, flags: TcpFlags, window: u16, payload: &[u8]) -> Tracked {
        self.c_ts += 1;
        let ts = [TcpOption::Timestamps { tsval: self.c_ts, tsecr: self.s_ts }];
        let opts: &[TcpOption<'_>] = if self.timestamps { &ts } else { &[] };
        let pkt = packet(self.client, self.server, seq, ack, flags, window, opts, payload);
        self.feed(&pkt)
    }

    /// A server segment with explicit numbers (does not move `s_nxt`).
    pub fn outbound_raw(&mut self, seq: SeqNum, ack: SeqNum, flags: TcpFlags, window: u16, payload: &[u8]) -> Tracked {
        self.s_ts += 1;
        let ts = [TcpOption::Timestamps { tsval: self.s_ts, tsecr: self.c_ts }];
        let opts: &[TcpOption<'_>] = if self.timestamps { &ts } else { &[] };
        let pkt = packet(self.server, self.client, seq, ack, flags, window, opts, payload);
        self.feed(&pkt)
    }

    /// SYN (MSS 1460, WS 7, SACK, TS), SYN-ACK (MSS 1400, WS 9, SACK, TS),
    /// ACK. Windows: client raw 1000 (<<7), server raw 500 (<<9).
    pub fn handshake(&mut self) {
        self.c_ts += 1;
        let syn = packet(
            self.client,
            self.server,
            self.c_isn,
            SeqNum(0),
            SYN,
            64_240,
            &[
                TcpOption::Mss(1460),
                TcpOption::SackPermitted,
                TcpOption::Timestamps { tsval: self.c_ts, tsecr: 0 },
                TcpOption::NoOp,
                TcpOption::WindowScale(7),
            ],
            &[],
        );
        assert!(self.feed(&syn).notes.new_connection);
        self.c_nxt = self.c_isn + 1;
        self.s_ts += 1;
        let syn_ack = packet(
            self.server,
            self.client,
            self.s_isn,
            self.c_nxt,
            SYN | ACK,
            65_160,
            &[
                TcpOption::Mss(1400),
                TcpOption::SackPermitted,
                TcpOption::Timestamps { tsval: self.s_ts, tsecr: self.c_ts },
                TcpOption::NoOp,
                TcpOption::WindowScale(9),
            ],
            &[],
        );
        assert!(self.feed(&syn_ack).notes.syn_ack);
        self.s_nxt = self.s_isn + 1;
        let t = self.inbound_raw(self.c_nxt, self.s_nxt, ACK, 1000, &[]);
        assert!(t.notes.established);
    }

    /// The client sends `data` in one segment acking all server data.
    pub fn client_send(&mut self, data: &[u8]) -> Tracked {
        let seq = self.c_nxt;
        self.c_nxt = seq + data.len() as u32;
        self.inbound_raw(seq, self.s_nxt, ACK | PSH, 1000, data)
    }

    /// The server sends `data` in one segment acking all client data.
    pub fn server_send(&mut self, data: &[u8]) -> Tracked {
        let seq = self.s_nxt;
        self.s_nxt = seq + data.len() as u32;
        self.outbound_raw(seq, self.c_nxt, ACK | PSH, 500, data)
    }

    /// A pure server ACK of `ack`.
    pub fn server_ack(&mut self, ack: SeqNum) -> Tracked {
        self.outbound_raw(self.s_nxt, ack, ACK, 500, &[])
    }

    /// A pure client ACK of `ack` with raw window `window`.
    pub fn client_ack(&mut self, ack: SeqNum, window: u16) -> Tracked {
        self.inbound_raw(self.c_nxt, ack, ACK, window, &[])
    }
}

/// Deterministic xorshift64* PRNG for property tests.
pub(super) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

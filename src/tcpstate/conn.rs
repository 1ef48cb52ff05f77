//! One tracked connection: what the backup needs to rebuild the server's
//! socket, and accessors that name each value exactly.
//!
//! Vocabulary. The *client* is the remote peer, the *server* is the
//! replica's socket on a service endpoint. Send-side names (`snd_una`,
//! `snd_nxt`) and receive-side names (`rcv_nxt`) are the server's, as in
//! Linux's `struct tcp_sock`, because that is the socket a takeover builds.
//!
//! Invariants kept by this type (the segment logic is in `update.rs`):
//! - every sequence comparison is wrapping ([`SeqNum`]); client bytes are
//!   stored by 64-bit stream offset (0 = `client_isn + 1`), unwrapped
//!   relative to the read position, so streams longer than 4 GiB and ISNs
//!   near 2^32 need no special case.
//! - `read_seq() <= client_next()`: the replica cannot have read bytes the
//!   client never sent ([`ConsumeError::BeyondClientData`] otherwise).
//! - client bytes are first-copy-wins; a differing retransmission is counted
//!   as a conflict and never replaces stored bytes.
//! - `snd_una` and the server's ACK only move forward; a client ACK for data
//!   the server has not sent is ignored and counted.
//! - once reset, a connection ignores every later segment; only a new SYN
//!   (handled by the tracker) replaces it.

use std::fmt;
use std::net::SocketAddrV4;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::buffer::StreamBuf;
use super::options::{MAX_WINDOW_SCALE, OptionError};
use super::seq::{SeqNum, ts_after};

/// Default MSS when the client sent none (RFC 9293 §3.7.1).
pub const DEFAULT_MSS: u16 = 536;

/// One end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Side {
    /// The remote peer.
    Client,
    /// The replica's socket on the service endpoint.
    Server,
}

/// Which way a segment travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// Client to server.
    Inbound,
    /// Server to client.
    Outbound,
}

/// A connection's endpoints. The server is a configured service endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FourTuple {
    /// The remote peer.
    pub client: SocketAddrV4,
    /// The local service endpoint (the VIP side).
    pub server: SocketAddrV4,
}

impl fmt::Display for FourTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.client, self.server)
    }
}

/// Options one side put in its SYN (or SYN-ACK), as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SynOptions {
    /// MSS the sender can receive.
    pub mss: Option<u16>,
    /// Window-scale shift as sent (not clamped).
    pub window_scale: Option<u8>,
    /// SACK-permitted option present.
    pub sack_permitted: bool,
    /// Timestamps option present.
    pub timestamps: bool,
    /// Raw window field of the SYN (never scaled).
    pub window: u16,
}

/// What the handshake negotiated; maps onto `TCP_REPAIR_OPTIONS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Negotiated {
    /// MSS the client advertised: what the server may send
    /// (`TCPOPT_MSS`, Linux's `mss_clamp`). See [`Negotiated::mss_clamp`].
    pub client_mss: Option<u16>,
    /// MSS the server advertised.
    pub server_mss: Option<u16>,
    /// Both sides sent window scale.
    pub window_scaling: bool,
    /// Shift the client applies to the windows it advertises; the server
    /// scales client windows by it (Linux `snd_wscale`). Clamped to 14; 0
    /// without window scaling.
    pub client_wscale: u8,
    /// Shift the server applies to its own advertised windows (Linux
    /// `rcv_wscale`). Clamped to 14; 0 without window scaling.
    pub server_wscale: u8,
    /// Both sides sent SACK-permitted (`TCPOPT_SACK_PERM`).
    pub sack: bool,
    /// Both sides sent timestamps (`TCPOPT_TIMESTAMP`).
    pub timestamps: bool,
}

impl Negotiated {
    /// Value for `TCPOPT_MSS`: the client's MSS, or 536 if it sent none.
    pub fn mss_clamp(&self) -> u16 {
        self.client_mss.unwrap_or(DEFAULT_MSS)
    }

    /// Value for `TCPOPT_WINDOW`: `snd_wscale | rcv_wscale << 16`, or
    /// `None` without window scaling.
    pub fn repair_wscale(&self) -> Option<u32> {
        self.window_scaling.then(|| u32::from(self.client_wscale) | (u32::from(self.server_wscale) << 16))
    }
}

/// Coarse state, from the server's point of view, derived from what was
/// seen on the wire. "Seen" means the segment crossed the capture point;
/// whether the peer accepted a FIN is [`FinInfo::acked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnState {
    /// Client SYN seen, no SYN-ACK yet.
    SynSent,
    /// SYN-ACK seen, the client has not acknowledged it yet.
    SynReceived,
    /// Handshake complete, no FIN either way.
    Established,
    /// Only the client's FIN seen (server in CLOSE-WAIT once it acks it).
    CloseWait,
    /// Only the server's FIN seen (server in FIN-WAIT-1/2).
    FinWait,
    /// Both FINs seen, at least one not yet acknowledged.
    Closing,
    /// Both FINs seen and acknowledged.
    Closed,
    /// An accepted RST ended the connection.
    Reset(Side),
}

/// A FIN seen from one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinInfo {
    /// Sequence number the FIN occupies (= end of that side's data).
    pub seq: SeqNum,
    /// The other side's ACK covers it (ack >= seq + 1).
    pub acked: bool,
}

/// How a connection was reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetInfo {
    /// Who sent the RST.
    pub by: Side,
    /// Its sequence number.
    pub seq: SeqNum,
    /// When it was observed.
    pub at_ns: u64,
}

/// The latest timestamp option from one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TsObservation {
    /// Highest TSval seen (wrapping comparison).
    pub tsval: u32,
    /// TSecr of the segment that carried it; `None` without ACK (a SYN's
    /// TSecr means nothing).
    pub tsecr: Option<u32>,
    /// Caller's monotonic time when that segment was observed.
    pub at_ns: u64,
}

/// The server's timestamp clock rate, to extrapolate TSval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TsClock {
    /// 1 ms per tick (Linux default).
    Millis,
    /// 1 µs per tick (kernels >= 6.7 with `tcp_usec_ts`; for
    /// `TCP_TIMESTAMP` the caller sets bit 0 of the value it writes).
    Micros,
}

impl TsClock {
    fn ns_per_tick(self) -> u64 {
        match self {
            TsClock::Millis => 1_000_000,
            TsClock::Micros => 1_000,
        }
    }
}

/// The fields of Linux's `struct tcp_repair_window`, from the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairWindow {
    /// Client sequence number of the segment that last updated the
    /// client's window.
    pub snd_wl1: SeqNum,
    /// The client's window, scaled (bytes).
    pub snd_wnd: u32,
    /// Largest client window seen, scaled.
    pub max_window: u32,
    /// The server's last advertised window, scaled.
    pub rcv_wnd: u32,
    /// The server's ACK number when it advertised `rcv_wnd`.
    pub rcv_wup: SeqNum,
}

/// Acknowledged client bytes the tracker never saw (capture loss or the
/// memory bound): the connection cannot be rebuilt byte-exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error, Serialize, Deserialize)]
#[error("client bytes {from}..{to} were acknowledged by the server but never captured")]
pub struct MissingBytes {
    /// First missing sequence number.
    pub from: SeqNum,
    /// End (exclusive) of the acknowledged range.
    pub to: SeqNum,
}

/// Why [`crate::tcpstate::Tracker::consume`] failed. State is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ConsumeError {
    /// No such connection.
    #[error("consume on untracked connection {0}")]
    UnknownConnection(FourTuple),
    /// The replica read more than the client has sent.
    #[error("{tuple}: replica consumed {requested} bytes at {read_seq}, but the client sent only {available} past it")]
    BeyondClientData {
        /// The connection.
        tuple: FourTuple,
        /// Bytes the caller asked to consume.
        requested: u64,
        /// Bytes the client has sent past the read position.
        available: u64,
        /// The read position.
        read_seq: SeqNum,
    },
}

/// Why a connection cannot be snapshotted for repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SnapshotError {
    /// The handshake is not complete.
    #[error("{tuple}: handshake not complete ({state:?})")]
    Handshake {
        /// The connection.
        tuple: FourTuple,
        /// Its state.
        state: ConnState,
    },
    /// The connection was reset.
    #[error("{tuple}: reset by the {:?}", by)]
    Reset {
        /// The connection.
        tuple: FourTuple,
        /// Who reset it.
        by: Side,
    },
    /// Acknowledged client bytes are missing.
    #[error("{tuple}: {missing}")]
    Missing {
        /// The connection.
        tuple: FourTuple,
        /// What is missing.
        missing: MissingBytes,
    },
}

/// Everything a `TCP_REPAIR` rebuild needs, at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairSnapshot<'a> {
    /// The connection.
    pub tuple: FourTuple,
    /// Its state (FINs are restored separately, see the two flags below).
    pub state: ConnState,
    /// Negotiated options for `TCP_REPAIR_OPTIONS`.
    pub options: Negotiated,
    /// `TCP_QUEUE_SEQ` for the send queue: the client's cumulative ACK,
    /// excluding an acknowledged server FIN. The replica's unacknowledged
    /// output starts at this sequence number.
    pub send_queue_seq: SeqNum,
    /// Highest server data sequence sent, FIN excluded (`>= send_queue_seq`).
    pub snd_nxt: SeqNum,
    /// `TCP_QUEUE_SEQ` for the receive queue: `rcv_nxt - recv_queue.len()`,
    /// the first client byte the replica has not read.
    pub recv_queue_seq: SeqNum,
    /// The rebuilt socket's `rcv_nxt`, client FIN excluded.
    pub rcv_nxt: SeqNum,
    /// Client bytes to restore into the receive queue.
    pub recv_queue: &'a [u8],
    /// Values for `TCP_REPAIR_WINDOW` (optional to restore).
    pub window: RepairWindow,
    /// The server acknowledged the client's FIN: inject it after repair.
    pub client_fin_acked: bool,
    /// The server sent a FIN (the replica closed or shut down writing).
    pub server_fin_sent: bool,
}

/// What one segment did. Several flags can be set at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentNotes {
    /// A client SYN created this connection.
    pub new_connection: bool,
    /// It replaced a closed connection with the same four-tuple.
    pub replaced_previous: bool,
    /// Retransmitted client SYN (answer it with the recorded SYN-ACK after
    /// takeover).
    pub syn_retransmit: bool,
    /// First SYN-ACK.
    pub syn_ack: bool,
    /// Retransmitted SYN-ACK (the recorded copy was replaced by it).
    pub syn_ack_retransmit: bool,
    /// A SYN that does not fit the connection (other ISN, SYN+ACK from the
    /// client, SYN from the server); ignored.
    pub unexpected_syn: bool,
    /// This segment completed the handshake.
    pub established: bool,
    /// First FIN of its sender.
    pub fin: bool,
    /// An accepted RST: the connection ended.
    pub reset: bool,
    /// An RST outside the acceptable range; ignored (the kernel would send a
    /// challenge ACK).
    pub ignored_rst: bool,
    /// Keep-alive or zero-window probe (0 or 1 byte at `snd_una - 1`).
    pub keepalive: bool,
    /// The segment's data was all seen before.
    pub retransmit: bool,
    /// Client bytes stored beyond a hole.
    pub out_of_order: bool,
    /// Retransmitted client bytes differ from the first copy (kept).
    pub conflict: bool,
    /// Client bytes not stored because of the memory bounds.
    pub overflow: bool,
    /// After this (server) segment, the server's ACK covers client bytes the
    /// tracker never saw (set on every server segment while that lasts).
    pub missing_acked: bool,
    /// Client ACK for data the server never sent; ignored.
    pub ack_of_unsent: bool,
    /// The client's window changed.
    pub window_update: bool,
    /// The client advertised a zero window.
    pub zero_window: bool,
    /// Segment for a connection already reset; ignored.
    pub after_reset: bool,
    /// First malformed TCP option (options after it were ignored).
    pub option_error: Option<OptionError>,
}

/// Counters per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConnStats {
    /// Client-to-server segments.
    pub segments_in: u64,
    /// Server-to-client segments.
    pub segments_out: u64,
    /// New client bytes stored.
    pub client_bytes: u64,
    /// Client bytes seen again (retransmissions, overlaps).
    pub client_bytes_duplicate: u64,
    /// Client bytes dropped by the memory bounds.
    pub client_bytes_dropped: u64,
    /// Client bytes past the client's FIN, dropped.
    pub client_bytes_after_fin: u64,
    /// Segments whose bytes conflicted with stored ones.
    pub conflicts: u64,
    /// Client segments stored out of order.
    pub out_of_order_segments: u64,
    /// Server bytes retransmitted.
    pub server_bytes_retransmitted: u64,
    /// Keep-alives and zero-window probes, both ways.
    pub keepalives: u64,
    /// Client SYN retransmissions.
    pub syn_retransmits: u64,
    /// SYN-ACK retransmissions.
    pub syn_ack_retransmits: u64,
    /// Client ACKs ignored (before the SYN-ACK, or for unsent data).
    pub ignored_acks: u64,
    /// RSTs ignored.
    pub ignored_rsts: u64,
    /// Segments with a malformed option.
    pub option_errors: u64,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub(super) scaled: u32,
    pub(super) wl1: SeqNum,
    pub(super) max: u32,
}

/// One tracked connection. Read it through the tracker; it changes only by
/// observed segments and [`crate::tcpstate::Tracker::consume`].
#[derive(Debug, Clone)]
pub struct Conn {
    pub(super) tuple: FourTuple,
    pub(super) first_seen_ns: u64,
    pub(super) last_seen_ns: u64,
    pub(super) ended_ns: Option<u64>,
    pub(super) client_isn: SeqNum,
    pub(super) client_syn: SynOptions,
    pub(super) server_isn: Option<SeqNum>,
    pub(super) server_syn: Option<SynOptions>,
    pub(super) syn_ack: Option<Vec<u8>>,
    pub(super) established: bool,
    // Client -> server.
    pub(super) rx: StreamBuf,
    pub(super) client_next: SeqNum,
    pub(super) client_fin: Option<SeqNum>,
    pub(super) server_ack: Option<SeqNum>,
    pub(super) server_wnd: u32,
    pub(super) rcv_wup: SeqNum,
    pub(super) client_ts: Option<TsObservation>,
    // Server -> client.
    pub(super) snd_una: SeqNum,
    pub(super) snd_nxt: SeqNum,
    pub(super) server_fin: Option<SeqNum>,
    pub(super) client_wnd: Window,
    pub(super) server_ts: Option<TsObservation>,
    pub(super) reset: Option<ResetInfo>,
    pub(super) stats: ConnStats,
}

impl Conn {
    /// The endpoints.
    pub fn tuple(&self) -> FourTuple {
        self.tuple
    }
    /// Time of the first segment (the client's SYN).
    pub fn first_seen_ns(&self) -> u64 {
        self.first_seen_ns
    }
    /// Time of the latest segment either way.
    pub fn last_seen_ns(&self) -> u64 {
        self.last_seen_ns
    }
    /// Time the connection became [`ConnState::Closed`] or was reset.
    pub fn ended_ns(&self) -> Option<u64> {
        self.ended_ns
    }
    /// Counters.
    pub fn stats(&self) -> &ConnStats {
        &self.stats
    }

    /// Current coarse state.
    pub fn state(&self) -> ConnState {
        if let Some(r) = self.reset {
            return ConnState::Reset(r.by);
        }
        if self.server_isn.is_none() {
            return ConnState::SynSent;
        }
        if !self.established {
            return ConnState::SynReceived;
        }
        match (self.client_fin(), self.server_fin()) {
            (None, None) => ConnState::Established,
            (Some(_), None) => ConnState::CloseWait,
            (None, Some(_)) => ConnState::FinWait,
            (Some(c), Some(s)) if c.acked && s.acked => ConnState::Closed,
            (Some(_), Some(_)) => ConnState::Closing,
        }
    }

    /// How the connection was reset, if it was.
    pub fn reset(&self) -> Option<ResetInfo> {
        self.reset
    }

    /// The client's initial sequence number (its SYN's seq).
    pub fn client_isn(&self) -> SeqNum {
        self.client_isn
    }
    /// The server's initial sequence number, once the SYN-ACK was seen.
    pub fn server_isn(&self) -> Option<SeqNum> {
        self.server_isn
    }
    /// Options of the client's SYN.
    pub fn client_syn(&self) -> &SynOptions {
        &self.client_syn
    }
    /// Options of the server's SYN-ACK.
    pub fn server_syn(&self) -> Option<&SynOptions> {
        self.server_syn.as_ref()
    }
    /// The latest SYN-ACK as captured: IPv4 header, TCP header with options,
    /// payload (normally none). Checksums may be unset (offload); fix them
    /// with [`crate::tcpstate::wire::fill_checksums`] before sending.
    pub fn syn_ack_packet(&self) -> Option<&[u8]> {
        self.syn_ack.as_deref()
    }

    /// What the handshake negotiated, once the SYN-ACK was seen.
    pub fn negotiated(&self) -> Option<Negotiated> {
        let s = self.server_syn.as_ref()?;
        let c = &self.client_syn;
        let ws = match (c.window_scale, s.window_scale) {
            (Some(cw), Some(sw)) => Some((cw.min(MAX_WINDOW_SCALE), sw.min(MAX_WINDOW_SCALE))),
            _ => None,
        };
        Some(Negotiated {
            client_mss: c.mss,
            server_mss: s.mss,
            window_scaling: ws.is_some(),
            client_wscale: ws.map_or(0, |w| w.0),
            server_wscale: ws.map_or(0, |w| w.1),
            sack: c.sack_permitted && s.sack_permitted,
            timestamps: c.timestamps && s.timestamps,
        })
    }

    // ---- client -> server (the server's receive side) ----

    /// Sequence number of the first client data byte (`client_isn + 1`).
    pub fn client_stream_start(&self) -> SeqNum {
        self.client_isn + 1
    }

    /// First client byte the replica has not consumed: `client_isn + 1 +`
    /// total bytes passed to `consume`.
    pub fn read_seq(&self) -> SeqNum {
        // Truncation to u32 is the intended mod 2^32.
        self.client_stream_start() + self.rx.read() as u32
    }

    /// The latest ACK number the server sent, exactly as on the wire (the
    /// primary kernel's `rcv_nxt` when it sent it; it counts the client's
    /// FIN once acknowledged). `None` before the SYN-ACK.
    pub fn server_ack(&self) -> Option<SeqNum> {
        self.server_ack
    }

    /// The `rcv_nxt` a rebuilt socket must have, client FIN excluded:
    /// the server's latest ACK (minus the FIN if it covers it), or
    /// [`Conn::read_seq`] if the replica already read further (delayed ACK).
    /// Bytes `[read_seq, rcv_nxt)` are [`Conn::client_acked_unread`].
    pub fn rcv_nxt(&self) -> SeqNum {
        let acked = match (self.server_ack, self.client_fin) {
            (None, _) => self.client_stream_start(),
            (Some(a), Some(f)) if a.after(f) => f,
            (Some(a), _) => a,
        };
        acked.latest(self.read_seq())
    }

    /// Client bytes the server acknowledged that the replica has not read,
    /// starting at [`Conn::read_seq`]: the receive queue of a rebuilt
    /// socket. Fails if some of them were never captured.
    pub fn client_acked_unread(&self) -> Result<&[u8], MissingBytes> {
        let n = self.rcv_nxt().since(self.read_seq()) as usize;
        let held = self.rx.contiguous();
        held.get(..n).ok_or(MissingBytes { from: self.read_seq() + held.len() as u32, to: self.rcv_nxt() })
    }

    /// Contiguous client bytes seen after [`Conn::rcv_nxt`] but not (yet)
    /// acknowledged by the server. Queuing them too would be safe (a
    /// sequence number's byte never changes) but the primary's kernel never
    /// vouched for them; the client will retransmit them anyway.
    pub fn client_unacked(&self) -> &[u8] {
        let n = self.rcv_nxt().since(self.read_seq()) as usize;
        self.rx.contiguous().get(n..).unwrap_or(&[])
    }

    /// Client bytes held beyond a hole, as `(first seq, bytes)` in order.
    pub fn client_out_of_order(&self) -> impl Iterator<Item = (SeqNum, &[u8])> {
        let base = self.client_stream_start();
        self.rx.out_of_order().map(move |(off, b)| (base + off as u32, b))
    }

    /// Client bytes held in memory (acked-unread, unacked, out of order).
    pub fn buffered_bytes(&self) -> usize {
        self.rx.buffered()
    }

    /// End of the client's data seen so far: highest `seq + len` of client
    /// data, FIN excluded (the client's `snd_nxt` as far as we know).
    pub fn client_next(&self) -> SeqNum {
        self.client_next
    }

    /// The client's FIN, if seen; acked when the server's ACK covers it.
    pub fn client_fin(&self) -> Option<FinInfo> {
        let seq = self.client_fin?;
        Some(FinInfo { seq, acked: self.server_ack.is_some_and(|a| a.after(seq)) })
    }

    /// The server's last advertised window, scaled (bytes).
    pub fn server_window(&self) -> u32 {
        self.server_wnd
    }

    /// The client's latest timestamp option.
    pub fn client_timestamp(&self) -> Option<TsObservation> {
        self.client_ts
    }

    // ---- server -> client (the server's send side) ----

    /// The client's latest cumulative ACK, as on the wire (it counts the
    /// server's SYN and, once acknowledged, its FIN). Equals the server ISN
    /// until the client acknowledges the SYN-ACK. `None` before the SYN-ACK.
    pub fn snd_una(&self) -> Option<SeqNum> {
        self.server_isn.map(|_| self.snd_una)
    }

    /// Highest `seq + len` the server sent, counting SYN and FIN (the
    /// primary kernel's `snd_nxt`). `None` before the SYN-ACK.
    pub fn snd_nxt(&self) -> Option<SeqNum> {
        self.server_isn.map(|_| self.snd_nxt)
    }

    /// `TCP_QUEUE_SEQ` for the send queue: [`Conn::snd_una`] with SYN and
    /// FIN taken out, i.e. the first server data byte the client has not
    /// acknowledged. `None` before the SYN-ACK.
    pub fn send_queue_seq(&self) -> Option<SeqNum> {
        let isn = self.server_isn?;
        let mut seq = self.snd_una.latest(isn + 1);
        if let Some(f) = self.server_fin {
            seq = seq.earliest(f);
        }
        Some(seq)
    }

    /// The server's FIN, if seen; acked when the client's ACK covers it.
    pub fn server_fin(&self) -> Option<FinInfo> {
        let seq = self.server_fin?;
        Some(FinInfo { seq, acked: self.server_isn.is_some() && self.snd_una.after(seq) })
    }

    /// The client's advertised window in bytes (scaled by the negotiated
    /// shift; a SYN's window is never scaled).
    pub fn client_window(&self) -> u32 {
        self.client_wnd.scaled
    }

    /// Values for `TCP_REPAIR_WINDOW`. `None` before the SYN-ACK.
    pub fn repair_window(&self) -> Option<RepairWindow> {
        self.server_isn?;
        Some(RepairWindow {
            snd_wl1: self.client_wnd.wl1,
            snd_wnd: self.client_wnd.scaled,
            max_window: self.client_wnd.max,
            rcv_wnd: self.server_wnd,
            rcv_wup: self.rcv_wup,
        })
    }

    /// The server's latest timestamp option.
    pub fn server_timestamp(&self) -> Option<TsObservation> {
        self.server_ts
    }

    /// The server's TSval extrapolated to `now_ns` (same clock as the
    /// observation times) at `clock`'s rate: the last TSval plus elapsed
    /// ticks, never below the last server TSval seen nor below the last
    /// TSecr the client echoed (so the client's PAWS check passes). `None`
    /// without timestamps. The value is raw: for `TCP_TIMESTAMP` the caller
    /// subtracts its own clock and, in µs mode, sets bit 0 of the option
    /// value it writes.
    pub fn server_ts_at(&self, now_ns: u64, clock: TsClock) -> Option<u32> {
        let seen = self.server_ts?;
        let ticks = now_ns.saturating_sub(seen.at_ns) / clock.ns_per_tick();
        // Timestamp arithmetic is mod 2^32.
        let guess = seen.tsval.wrapping_add(ticks as u32);
        let mut floor = seen.tsval;
        if let Some(echo) = self.client_ts.and_then(|c| c.tsecr)
            && ts_after(echo, floor)
        {
            floor = echo;
        }
        Some(if ts_after(floor, guess) { floor } else { guess })
    }

    /// All values a `TCP_REPAIR` rebuild needs; fails if the handshake is
    /// incomplete, the connection was reset, or acknowledged bytes are
    /// missing.
    pub fn snapshot(&self) -> Result<RepairSnapshot<'_>, SnapshotError> {
        let tuple = self.tuple;
        let state = self.state();
        let handshake = SnapshotError::Handshake { tuple, state };
        match state {
            ConnState::SynSent | ConnState::SynReceived => return Err(handshake),
            ConnState::Reset(by) => return Err(SnapshotError::Reset { tuple, by }),
            _ => {}
        }
        let options = self.negotiated().ok_or(handshake)?;
        let send_queue_seq = self.send_queue_seq().ok_or(handshake)?;
        let window = self.repair_window().ok_or(handshake)?;
        let recv_queue = self.client_acked_unread().map_err(|missing| SnapshotError::Missing { tuple, missing })?;
        let snd_nxt = match self.server_fin {
            Some(f) => f,
            None => self.snd_nxt,
        };
        Ok(RepairSnapshot {
            tuple,
            state,
            options,
            send_queue_seq,
            snd_nxt: snd_nxt.latest(send_queue_seq),
            recv_queue_seq: self.read_seq(),
            rcv_nxt: self.rcv_nxt(),
            recv_queue,
            window,
            client_fin_acked: self.client_fin().is_some_and(|f| f.acked),
            server_fin_sent: self.server_fin.is_some(),
        })
    }
}

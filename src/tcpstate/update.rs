//! How one observed segment changes a [`Conn`].
//!
//! Invariants (besides those listed in `conn.rs`):
//! - the tracker is an observer, not a TCP stack: it never rejects client
//!   bytes for being outside a window (bytes at a sequence number are the
//!   same in every copy, so holding extra ones is harmless), but it decides
//!   which ACKs, RSTs and FINs count the way Linux does, so that its numbers
//!   match the primary kernel's.
//! - a client ACK moves `snd_una` only forward and only up to `snd_nxt`
//!   (Linux drops ACKs of unsent data); the client's window follows Linux's
//!   `tcp_may_update_window` rule, scaled by the negotiated shift.
//! - a client RST counts only if its sequence number lies between the
//!   server's latest ACK and the end of what the client sent (the range that
//!   can hold the kernel's `rcv_nxt`, RFC 5961 §3.2); any other is ignored as
//!   the kernel would answer it with a challenge ACK. A server RST always
//!   counts: the primary kernel only sends one for a socket it dropped.
//! - a keep-alive or zero-window probe (0 or 1 byte at `ack - 1`) is never
//!   stored: its byte may be garbage.
//! - timestamps only move forward (wrapping comparison).

use super::conn::{
    Conn, ConnState, ConsumeError, FourTuple, ResetInfo, SegmentNotes, Side, SynOptions, TsObservation, Window,
};
use super::options::OptionSummary;
use super::seq::{SeqNum, ts_after};
use super::wire::{Ipv4Packet, TcpPacket};

/// Memory bounds for one insertion.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budget {
    /// Most client bytes this connection may hold after the insertion.
    pub(super) limit: usize,
    /// Most out-of-order runs it may hold.
    pub(super) max_runs: usize,
}

fn shifted(raw: u16, shift: u8) -> u32 {
    u32::from(raw) << shift
}

fn newer_ts(prev: Option<TsObservation>, tsval: u32) -> bool {
    prev.is_none_or(|p| !ts_after(p.tsval, tsval))
}

impl Conn {
    /// A connection created by the client's SYN `tcp` (not yet fed through
    /// [`Conn::on_inbound`], which the tracker does next).
    pub(super) fn from_syn(now_ns: u64, tuple: FourTuple, tcp: &TcpPacket<'_>, opts: &OptionSummary) -> Conn {
        let isn = tcp.seq();
        Conn {
            tuple,
            first_seen_ns: now_ns,
            last_seen_ns: now_ns,
            ended_ns: None,
            client_isn: isn,
            client_syn: SynOptions {
                mss: opts.mss,
                window_scale: opts.window_scale,
                sack_permitted: opts.sack_permitted,
                timestamps: opts.timestamps.is_some(),
                window: tcp.window(),
            },
            server_isn: None,
            server_syn: None,
            syn_ack: None,
            established: false,
            rx: Default::default(),
            client_next: isn + 1,
            client_fin: None,
            server_ack: None,
            server_wnd: 0,
            rcv_wup: isn + 1,
            client_ts: None,
            snd_una: SeqNum(0),
            snd_nxt: SeqNum(0),
            server_fin: None,
            client_wnd: Window { scaled: u32::from(tcp.window()), wl1: isn, max: u32::from(tcp.window()) },
            server_ts: None,
            reset: None,
            stats: Default::default(),
        }
    }

    /// Whether a new client SYN with another ISN may replace this
    /// connection: it is over (reset, or FINs both ways) or never answered.
    pub(super) fn replaceable(&self) -> bool {
        self.reset.is_some() || self.server_isn.is_none() || (self.client_fin.is_some() && self.server_fin.is_some())
    }

    fn mark_ended(&mut self, now_ns: u64) {
        if self.ended_ns.is_none() && matches!(self.state(), ConnState::Closed | ConnState::Reset(_)) {
            self.ended_ns = Some(now_ns);
        }
    }

    fn offset_of(&self, seq: SeqNum) -> i64 {
        let read = i64::try_from(self.rx.read()).unwrap_or(i64::MAX);
        read + i64::from(seq.diff(self.read_seq()))
    }

    /// A client-to-server segment. Returns the number of new client bytes
    /// stored.
    pub(super) fn on_inbound(
        &mut self,
        now_ns: u64,
        tcp: &TcpPacket<'_>,
        opts: &OptionSummary,
        budget: Budget,
        notes: &mut SegmentNotes,
    ) -> usize {
        self.last_seen_ns = now_ns;
        self.stats.segments_in += 1;
        if opts.error.is_some() {
            self.stats.option_errors += 1;
        }
        if self.reset.is_some() {
            notes.after_reset = true;
            return 0;
        }
        let flags = tcp.flags();
        let seq = tcp.seq();
        if flags.syn() {
            if flags.ack() || seq != self.client_isn {
                notes.unexpected_syn = true;
                return 0;
            }
            if self.stats.segments_in > 1 {
                notes.syn_retransmit = true;
                self.stats.syn_retransmits += 1;
            }
        }
        if flags.rst() {
            self.client_rst(now_ns, seq, notes);
            return 0;
        }
        if let Some((tsval, tsecr)) = opts.timestamps
            && newer_ts(self.client_ts, tsval)
        {
            self.client_ts = Some(TsObservation { tsval, tsecr: flags.ack().then_some(tsecr), at_ns: now_ns });
        }
        if flags.ack() {
            self.client_ack(seq, tcp.ack(), tcp.window(), notes);
        }
        let data_seq = seq + u32::from(flags.syn());
        let payload = tcp.payload();
        let mut new = 0;
        let probe =
            payload.len() <= 1 && !flags.syn() && !flags.fin() && self.server_ack.is_some_and(|a| data_seq == a - 1);
        if probe {
            notes.keepalive = true;
            self.stats.keepalives += 1;
        } else if !payload.is_empty() {
            new = self.client_data(data_seq, payload, budget, notes);
        }
        if flags.fin() {
            let fin = data_seq + payload.len() as u32;
            if self.client_fin.is_none() {
                self.client_fin = Some(fin);
                notes.fin = true;
            }
        }
        self.mark_ended(now_ns);
        new
    }

    fn client_rst(&mut self, now_ns: u64, seq: SeqNum, notes: &mut SegmentNotes) {
        let accept = match self.server_ack {
            None => true,
            Some(lo) => {
                let end = self.client_fin.map_or(self.client_next, |f| f + 1);
                seq.within(lo, end.latest(lo))
            }
        };
        if accept {
            self.reset = Some(ResetInfo { by: Side::Client, seq, at_ns: now_ns });
            notes.reset = true;
            self.mark_ended(now_ns);
        } else {
            notes.ignored_rst = true;
            self.stats.ignored_rsts += 1;
        }
    }

    fn client_ack(&mut self, seq: SeqNum, ack: SeqNum, raw_window: u16, notes: &mut SegmentNotes) {
        let Some(isn) = self.server_isn else {
            self.stats.ignored_acks += 1;
            return;
        };
        if ack.after(self.snd_nxt) {
            notes.ack_of_unsent = true;
            self.stats.ignored_acks += 1;
            return;
        }
        if ack.before(self.snd_una) {
            return; // an old ACK, reordered: Linux neither moves snd_una nor the window
        }
        let advanced = ack.after(self.snd_una);
        if !self.established && ack.after(isn) {
            self.established = true;
            notes.established = true;
        }
        let shift = self.negotiated().map_or(0, |n| n.client_wscale);
        let wnd = shifted(raw_window, shift);
        let w = self.client_wnd;
        if advanced || seq.after(w.wl1) || (seq == w.wl1 && (wnd > w.scaled || wnd == 0)) {
            notes.window_update |= wnd != w.scaled;
            notes.zero_window |= wnd == 0;
            self.client_wnd = Window { scaled: wnd, wl1: seq, max: w.max.max(wnd) };
        }
        if advanced {
            self.snd_una = ack;
        }
    }

    fn client_data(&mut self, data_seq: SeqNum, payload: &[u8], budget: Budget, notes: &mut SegmentNotes) -> usize {
        let mut payload = payload;
        if let Some(fin) = self.client_fin {
            let room = if data_seq.after(fin) { 0 } else { fin.since(data_seq) as usize };
            if payload.len() > room {
                self.stats.client_bytes_after_fin += (payload.len() - room) as u64;
                payload = payload.get(..room).unwrap_or(&[]);
            }
        }
        if payload.is_empty() {
            return 0;
        }
        let out = self.rx.insert(self.offset_of(data_seq), payload, budget.limit, budget.max_runs);
        self.client_next = self.client_next.latest(data_seq + payload.len() as u32);
        self.stats.client_bytes += out.new as u64;
        self.stats.client_bytes_duplicate += out.duplicate as u64;
        self.stats.client_bytes_dropped += out.dropped as u64;
        if out.conflict {
            self.stats.conflicts += 1;
            notes.conflict = true;
        }
        if out.out_of_order {
            self.stats.out_of_order_segments += 1;
            notes.out_of_order = true;
        }
        notes.overflow |= out.dropped > 0;
        notes.retransmit |= out.new == 0 && out.dropped == 0 && out.duplicate > 0;
        out.new
    }

    /// A server-to-client segment.
    pub(super) fn on_outbound(
        &mut self,
        now_ns: u64,
        ip: &Ipv4Packet<'_>,
        tcp: &TcpPacket<'_>,
        opts: &OptionSummary,
        notes: &mut SegmentNotes,
    ) {
        self.last_seen_ns = now_ns;
        self.stats.segments_out += 1;
        if opts.error.is_some() {
            self.stats.option_errors += 1;
        }
        if self.reset.is_some() {
            notes.after_reset = true;
            return;
        }
        let flags = tcp.flags();
        let seq = tcp.seq();
        if flags.rst() {
            self.reset = Some(ResetInfo { by: Side::Server, seq, at_ns: now_ns });
            notes.reset = true;
            self.mark_ended(now_ns);
            return;
        }
        if flags.syn() && !self.on_syn_ack(ip, tcp, opts, notes) {
            return;
        }
        if self.server_isn.is_none() {
            // Server segment before any SYN-ACK: nothing to anchor it to.
            notes.unexpected_syn |= flags.syn();
            return;
        }
        if let Some((tsval, tsecr)) = opts.timestamps
            && newer_ts(self.server_ts, tsval)
        {
            self.server_ts = Some(TsObservation { tsval, tsecr: flags.ack().then_some(tsecr), at_ns: now_ns });
        }
        if flags.ack() {
            self.server_acks(tcp.ack(), tcp.window(), flags.syn());
        }
        let data_seq = seq + u32::from(flags.syn());
        let len = tcp.payload().len() as u32;
        let end = data_seq + len + u32::from(flags.fin());
        if !flags.syn() && !flags.fin() && len <= 1 && data_seq == self.snd_una - 1 {
            notes.keepalive = true;
            self.stats.keepalives += 1;
        } else if len > 0 && end.before_eq(self.snd_nxt) {
            notes.retransmit = true;
            self.stats.server_bytes_retransmitted += u64::from(len);
        }
        self.snd_nxt = self.snd_nxt.latest(end);
        if flags.fin() && self.server_fin.is_none() {
            self.server_fin = Some(data_seq + len);
            notes.fin = true;
        }
        if self.client_acked_unread().is_err() {
            notes.missing_acked = true;
        }
        self.mark_ended(now_ns);
    }

    /// Handles a SYN-ACK; false if it does not belong to this connection.
    fn on_syn_ack(
        &mut self,
        ip: &Ipv4Packet<'_>,
        tcp: &TcpPacket<'_>,
        opts: &OptionSummary,
        notes: &mut SegmentNotes,
    ) -> bool {
        let seq = tcp.seq();
        if !tcp.flags().ack() || tcp.ack() != self.client_isn + 1 {
            notes.unexpected_syn = true;
            return false;
        }
        match self.server_isn {
            None => {
                self.server_isn = Some(seq);
                self.server_syn = Some(SynOptions {
                    mss: opts.mss,
                    window_scale: opts.window_scale,
                    sack_permitted: opts.sack_permitted,
                    timestamps: opts.timestamps.is_some(),
                    window: tcp.window(),
                });
                self.snd_una = seq;
                self.snd_nxt = seq + 1;
                notes.syn_ack = true;
            }
            Some(isn) if isn == seq => {
                notes.syn_ack_retransmit = true;
                self.stats.syn_ack_retransmits += 1;
            }
            Some(_) => {
                notes.unexpected_syn = true;
                return false;
            }
        }
        self.syn_ack = Some(ip.as_bytes().to_vec());
        true
    }

    fn server_acks(&mut self, ack: SeqNum, raw_window: u16, syn: bool) {
        if self.server_ack.is_some_and(|prev| ack.before(prev)) {
            return; // reordered older segment: keep the newer ACK and window
        }
        let shift = if syn { 0 } else { self.negotiated().map_or(0, |n| n.server_wscale) };
        self.server_ack = Some(ack);
        self.server_wnd = shifted(raw_window, shift);
        self.rcv_wup = ack;
    }

    /// The replica read `n` more client bytes.
    pub(super) fn consume(&mut self, n: u64) -> Result<(), ConsumeError> {
        let available = u64::from(self.client_next.since(self.read_seq()));
        if n > available {
            return Err(ConsumeError::BeyondClientData {
                tuple: self.tuple,
                requested: n,
                available,
                read_seq: self.read_seq(),
            });
        }
        self.rx.consume(n);
        Ok(())
    }
}

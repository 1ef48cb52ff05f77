//! Building live sockets with `TCP_REPAIR` from what the tracker observed.
//!
//! A [`RepairPlan`] is everything one rebuild needs, owned and checked: the
//! tracker's [`RepairSnapshot`] (or, for a connection still in its
//! handshake, the ISNs and options), the server's TSval to present, and the
//! server's unacknowledged output (the *tail*, which the tracker never keeps:
//! the caller supplies it, starting exactly at `send_queue_seq`).
//!
//! [`fill`] applies a plan to a placeholder made by
//! [`crate::sys::tcp_repair::placeholder`] (TCP_REPAIR on, `IP_TRANSPARENT`,
//! bound to the service address, unconnected); [`build`] makes the
//! placeholder itself first. The order is the one verified on this kernel
//! (DESIGN.md, "Verified placeholder recipe"), and every step that fails is
//! named in the [`BuildError`]:
//!
//! 1. `SO_SNDBUFFORCE` / `SO_RCVBUFFORCE` sized for the queues (re-queuing
//!    more than 16 KiB into a fresh socket's default buffers fails);
//! 2. receive `TCP_QUEUE_SEQ` = `rcv_nxt - inq` (= `recv_queue_seq`);
//! 3. send `TCP_QUEUE_SEQ` = `snd_una` (= `send_queue_seq`);
//! 4. `connect(client)` in repair mode (completes at once, sends nothing);
//! 5. `TCP_REPAIR_OPTIONS` (MSS always; window scale, SACK, timestamps as
//!    negotiated);
//! 6. `TCP_TIMESTAMP` = the server's TSval, never below what the client saw,
//!    encoded for the primary's clock ([`timestamp_option_value`]);
//! 7. the receive-queue bytes, written with the receive queue selected;
//! 8. the tail bytes the primary had already sent (`snd_una..snd_nxt`),
//!    written with the send queue selected, so they count as sent: the
//!    rebuilt `snd_nxt` is the primary's (see [`RepairPlan::sent_len`]);
//! 9. `TCP_REPAIR_WINDOW` (optional: a value the kernel rejects is skipped
//!    and reported, the window probe at release re-learns it);
//! 10. repair queue back to none.
//!
//! Release ([`release`], `TCP_REPAIR` off with its window probe) is a later,
//! separate step of the takeover, after which [`write_tail`] sends the rest
//! of the tail (output the primary never sent) as new data, and
//! [`RepairPlan::resend_packets`] gives the in-flight bytes as ready-made
//! segments to send at once, so they do not wait for the fresh socket's
//! 1 s initial retransmission timer. Invariants: no function here sends anything to the network
//! before [`release`]; a socket is filled at most once (a second fill fails
//! with the kernel's EPERM/EISCONN and is reported, never retried silently).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use thiserror::Error;

use super::conn::{Conn, ConnState, FourTuple, Negotiated, RepairSnapshot, RepairWindow, SnapshotError, TsClock};
use super::options::{TcpOption, kind};
use super::seq::SeqNum;
use super::wire::{EmitError, Ipv4Repr, TcpFlags, TcpRepr, emit_ipv4_tcp};
use crate::sys::SysError;
use crate::sys::tcp_repair::{self as tr, RawRepairWindow, RepairMode, RepairOpt, RepairQueue};

/// A step of a rebuild, for error messages and timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Creating the placeholder ([`build`] only).
    Placeholder,
    /// `SO_SNDBUFFORCE` / `SO_RCVBUFFORCE`.
    ForceBuffers,
    /// Receive `TCP_QUEUE_SEQ`.
    RecvQueueSeq,
    /// Send `TCP_QUEUE_SEQ`.
    SendQueueSeq,
    /// Repair-mode `connect`.
    Connect,
    /// `TCP_REPAIR_OPTIONS`.
    Options,
    /// `TCP_TIMESTAMP`.
    Timestamp,
    /// Writing the receive-queue bytes.
    RecvQueue,
    /// Re-queuing the bytes the primary had sent, as sent.
    SendQueue,
    /// `TCP_REPAIR_WINDOW`.
    Window,
    /// `TCP_REPAIR_QUEUE` = none.
    QueueNone,
    /// `TCP_REPAIR` off.
    Release,
    /// Writing the tail as new data.
    Tail,
    /// `shutdown(SHUT_WR)` for a server FIN.
    Shutdown,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Why a rebuild failed.
#[derive(Debug, Error)]
pub enum BuildError {
    /// A repair step's system call failed.
    #[error("{tuple}: repair step {step} failed: {source}")]
    Step {
        /// The connection.
        tuple: FourTuple,
        /// The step.
        step: Step,
        /// The failed call and its errno.
        #[source]
        source: SysError,
    },
    /// The tracker cannot give a snapshot.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A handshake rebuild needs the SYN-ACK (server ISN and options).
    #[error("{tuple}: no SYN-ACK seen ({state:?}); nothing to rebuild")]
    NoSynAck {
        /// The connection.
        tuple: FourTuple,
        /// Its state.
        state: ConnState,
    },
    /// A packet could not be built.
    #[error("{tuple}: cannot build a packet: {source}")]
    Emit {
        /// The connection.
        tuple: FourTuple,
        /// Why.
        #[source]
        source: EmitError,
    },
}

/// Everything one rebuild needs, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairPlan {
    /// The connection.
    pub tuple: FourTuple,
    /// Send `TCP_QUEUE_SEQ`: the first server byte the client has not acknowledged.
    pub send_queue_seq: SeqNum,
    /// Receive `TCP_QUEUE_SEQ`: the first client byte the server has not read.
    pub recv_queue_seq: SeqNum,
    /// Client bytes to restore into the receive queue, from `recv_queue_seq`.
    pub recv_queue: Vec<u8>,
    /// Negotiated options.
    pub options: Negotiated,
    /// The server TSval to present (`None` without timestamps).
    pub tsval: Option<u32>,
    /// The primary's timestamp clock.
    pub ts_clock: TsClock,
    /// `TCP_REPAIR_WINDOW` values, if known.
    pub window: Option<RepairWindow>,
    /// The server's unacknowledged output, from `send_queue_seq`. The first
    /// [`RepairPlan::sent_len`] bytes go into the send queue in repair mode
    /// (as already sent), the rest is written as new data after release.
    pub tail: Vec<u8>,
    /// How many tail bytes the primary had sent (`snd_nxt - snd_una`): they
    /// are re-queued as sent so the rebuilt `snd_nxt` equals the primary's
    /// and an ACK the client sent to the dead primary is not taken for an
    /// ACK of unsent data (which the kernel drops, window update included).
    pub sent_len: usize,
    /// The server acknowledged the client's FIN: inject it after release.
    pub client_fin: bool,
    /// The server sent a FIN: `shutdown(SHUT_WR)` after the tail.
    pub server_fin: bool,
}

impl RepairPlan {
    /// A plan from a snapshot. `tsval` is the server TSval to present, e.g.
    /// [`Conn::server_ts_at`] at the time of the fill; `tail` starts at
    /// `snap.send_queue_seq`.
    pub fn from_snapshot(snap: &RepairSnapshot<'_>, tsval: Option<u32>, clock: TsClock, tail: Vec<u8>) -> RepairPlan {
        RepairPlan {
            tuple: snap.tuple,
            send_queue_seq: snap.send_queue_seq,
            recv_queue_seq: snap.recv_queue_seq,
            recv_queue: snap.recv_queue.to_vec(),
            options: snap.options,
            tsval: if snap.options.timestamps { tsval } else { None },
            ts_clock: clock,
            window: Some(snap.window),
            sent_len: (snap.snd_nxt.since(snap.send_queue_seq) as usize).min(tail.len()),
            tail,
            client_fin: snap.client_fin_acked,
            server_fin: snap.server_fin_sent,
        }
    }

    /// A plan for `conn` as of `now_ns` (the tracker's clock): its snapshot,
    /// the extrapolated server TSval, and `tail`. A connection still in its
    /// handshake with a SYN-ACK seen gets [`RepairPlan::for_handshake`].
    pub fn from_conn(conn: &Conn, now_ns: u64, clock: TsClock, tail: Vec<u8>) -> Result<RepairPlan, BuildError> {
        if conn.state() == ConnState::SynReceived {
            return RepairPlan::for_handshake(conn, now_ns, clock);
        }
        let snap = conn.snapshot()?;
        Ok(RepairPlan::from_snapshot(&snap, conn.server_ts_at(now_ns, clock), clock, tail))
    }

    /// A plan for a connection whose SYN-ACK was sent but not yet
    /// acknowledged: an established socket at `server_isn + 1` /
    /// `client_isn + 1` with empty queues. The client either already has the
    /// SYN-ACK (its ACK or data then finds this socket) or gets the recorded
    /// one replayed.
    pub fn for_handshake(conn: &Conn, now_ns: u64, clock: TsClock) -> Result<RepairPlan, BuildError> {
        let tuple = conn.tuple();
        let state = conn.state();
        let (Some(isn), Some(options)) = (conn.server_isn(), conn.negotiated()) else {
            return Err(BuildError::NoSynAck { tuple, state });
        };
        Ok(RepairPlan {
            tuple,
            send_queue_seq: isn + 1,
            recv_queue_seq: conn.client_stream_start(),
            recv_queue: Vec::new(),
            options,
            tsval: if options.timestamps { conn.server_ts_at(now_ns, clock) } else { None },
            ts_clock: clock,
            window: None,
            tail: Vec::new(),
            sent_len: 0,
            client_fin: false,
            server_fin: false,
        })
    }

    /// The rebuilt socket's `rcv_nxt` (end of the restored receive queue).
    pub fn rcv_nxt(&self) -> SeqNum {
        self.recv_queue_seq + self.recv_queue.len() as u32
    }

    /// `TCP_REPAIR_OPTIONS` for this plan.
    pub fn repair_options(&self) -> Vec<RepairOpt> {
        let o = &self.options;
        let mut v = vec![RepairOpt { code: u32::from(kind::MSS), value: u32::from(o.mss_clamp()) }];
        if let Some(ws) = o.repair_wscale() {
            v.push(RepairOpt { code: u32::from(kind::WINDOW_SCALE), value: ws });
        }
        if o.sack {
            v.push(RepairOpt { code: u32::from(kind::SACK_PERMITTED), value: 0 });
        }
        if o.timestamps {
            v.push(RepairOpt { code: u32::from(kind::TIMESTAMPS), value: 0 });
        }
        v
    }

    /// The `TCP_REPAIR_WINDOW` values, as the kernel takes them.
    pub fn raw_window(&self) -> Option<RawRepairWindow> {
        self.window.map(|w| RawRepairWindow {
            snd_wl1: w.snd_wl1.0,
            snd_wnd: w.snd_wnd,
            max_window: w.max_window.max(w.snd_wnd),
            rcv_wnd: w.rcv_wnd,
            rcv_wup: w.rcv_wup.0,
        })
    }

    /// Send and receive buffer sizes to force before queuing: room for the
    /// tail and for the receive queue plus the window the primary advertised.
    pub fn buffer_sizes(&self) -> (i32, i32) {
        let clamp = |n: usize| i32::try_from(n.min(1 << 30)).unwrap_or(1 << 30);
        let rcv_wnd = self.window.map_or(0, |w| w.rcv_wnd as usize);
        (clamp(2 * self.tail.len() + (256 << 10)), clamp(2 * (self.recv_queue.len() + rcv_wnd) + (256 << 10)))
    }

    /// The client's FIN as the client sent it, to inject into the local
    /// stack after release: `seq` = the rebuilt `rcv_nxt`, `ack` =
    /// `send_queue_seq`, the client's last window, no options (a stale
    /// TSval would fail PAWS; a segment without one is accepted).
    pub fn client_fin_packet(&self) -> Result<Vec<u8>, BuildError> {
        let shift = self.options.client_wscale;
        let window = self.window.map_or(u16::MAX, |w| u16::try_from(w.snd_wnd >> shift).unwrap_or(u16::MAX));
        let ip =
            Ipv4Repr { src: *self.tuple.client.ip(), dst: *self.tuple.server.ip(), ident: 0, ttl: 64, dont_frag: true };
        let tcp = TcpRepr {
            src_port: self.tuple.client.port(),
            dst_port: self.tuple.server.port(),
            seq: self.rcv_nxt(),
            ack: self.send_queue_seq,
            flags: TcpFlags(TcpFlags::FIN.0 | TcpFlags::ACK.0),
            window,
            urgent: 0,
            options: Vec::new(),
            payload: &[],
        };
        emit_ipv4_tcp(&ip, &tcp).map_err(|source| BuildError::Emit { tuple: self.tuple, source })
    }

    /// A pure ACK from the rebuilt socket to the client at `seq`, `ack` =
    /// [`RepairPlan::rcv_nxt`], optionally with SACK blocks and a
    /// TSval/TSecr (also used by nudging experiments).
    pub fn server_ack_packet(
        &self,
        seq: SeqNum,
        window: u16,
        sack: &[(SeqNum, SeqNum)],
        ts: Option<(u32, u32)>,
    ) -> Result<Vec<u8>, BuildError> {
        let mut options = Vec::new();
        if let Some((tsval, tsecr)) = ts {
            options.push(TcpOption::Timestamps { tsval, tsecr });
        }
        if let Some(blocks) = super::options::SackBlocks::from_slice(sack).filter(|_| !sack.is_empty()) {
            options.push(TcpOption::Sack(blocks));
        }
        let ip =
            Ipv4Repr { src: *self.tuple.server.ip(), dst: *self.tuple.client.ip(), ident: 0, ttl: 64, dont_frag: true };
        let tcp = TcpRepr {
            src_port: self.tuple.server.port(),
            dst_port: self.tuple.client.port(),
            seq,
            ack: self.rcv_nxt(),
            flags: TcpFlags::ACK,
            window,
            urgent: 0,
            options,
            payload: &[],
        };
        emit_ipv4_tcp(&ip, &tcp).map_err(|source| BuildError::Emit { tuple: self.tuple, source })
    }
}

impl RepairPlan {
    /// The bytes the primary had in flight (`tail[..sent_len]`) as complete
    /// IPv4/TCP segments from the rebuilt socket, to send once right after
    /// release: `tsval` is the socket's current TSval (read back with
    /// `TCP_TIMESTAMP`), `ack` its `rcv_nxt`, at most `max_bytes` bytes.
    /// The client drops what it already has (a D-SACK) and takes the rest;
    /// its ACKs then fall inside the rebuilt `[snd_una, snd_nxt]`.
    pub fn resend_packets(&self, tsval: Option<u32>, max_bytes: usize) -> Result<Vec<Vec<u8>>, BuildError> {
        let ts_len = if self.options.timestamps { 12 } else { 0 };
        let seg = usize::from(self.options.mss_clamp()).saturating_sub(ts_len).max(64);
        let window = self
            .window
            .map_or(u16::MAX, |w| u16::try_from(w.rcv_wnd >> self.options.server_wscale).unwrap_or(u16::MAX));
        let sent = self.tail.get(..self.sent_len.min(max_bytes)).unwrap_or(&[]);
        let ip =
            Ipv4Repr { src: *self.tuple.server.ip(), dst: *self.tuple.client.ip(), ident: 0, ttl: 64, dont_frag: true };
        let mut out = Vec::with_capacity(sent.len() / seg + 1);
        for (i, chunk) in sent.chunks(seg).enumerate() {
            let mut options = Vec::new();
            if let (true, Some(v)) = (self.options.timestamps, tsval) {
                options.push(TcpOption::Timestamps { tsval: v, tsecr: 0 });
            }
            let tcp = TcpRepr {
                src_port: self.tuple.server.port(),
                dst_port: self.tuple.client.port(),
                seq: self.send_queue_seq + (i * seg) as u32,
                ack: self.rcv_nxt(),
                flags: TcpFlags(TcpFlags::ACK.0 | TcpFlags::PSH.0),
                window,
                urgent: 0,
                options,
                payload: chunk,
            };
            out.push(emit_ipv4_tcp(&ip, &tcp).map_err(|source| BuildError::Emit { tuple: self.tuple, source })?);
        }
        Ok(out)
    }
}

impl RepairPlan {
    /// Not a handshake rebuild (those have nothing to acknowledge yet).
    pub fn syn_ack_free(&self) -> bool {
        self.window.is_some()
    }

    /// A pure ACK from the rebuilt socket at its `snd_nxt` (`send_queue_seq`
    /// plus `sent_len`, in the client's window), acknowledging
    /// [`RepairPlan::rcv_nxt`], with the socket's current TSval and the
    /// plan's window.
    pub fn ack_from_snd_nxt(&self, tsval: Option<u32>) -> Result<Vec<u8>, BuildError> {
        let seq = self.send_queue_seq + self.sent_len as u32;
        let window = self
            .window
            .map_or(u16::MAX, |w| u16::try_from(w.rcv_wnd >> self.options.server_wscale).unwrap_or(u16::MAX));
        let ts = if self.options.timestamps { tsval.map(|v| (v, 0)) } else { None };
        self.server_ack_packet(seq, window, &[], ts)
    }
}

/// The value to write to `TCP_TIMESTAMP` so the socket's next TSval is at
/// least `tsval` in the primary's clock mode: bit 0 is the µs flag on
/// kernels >= 6.7, so a ms value is rounded up to even and a µs value is
/// made odd (rounding up). Never below `tsval` (mod 2^32).
pub fn timestamp_option_value(tsval: u32, clock: TsClock) -> u32 {
    match clock {
        TsClock::Millis => tsval.wrapping_add(tsval & 1),
        TsClock::Micros => tsval | 1,
    }
}

/// What [`fill`] did besides the mandatory steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FillReport {
    /// `TCP_REPAIR_WINDOW` was applied (false: not known, or rejected).
    pub window_applied: bool,
    /// The errno if the kernel rejected `TCP_REPAIR_WINDOW`.
    pub window_rejected: Option<i32>,
    /// The value written to `TCP_TIMESTAMP`.
    pub timestamp_written: Option<u32>,
    /// Nanoseconds the fill took.
    pub elapsed_ns: u64,
}

fn step<T>(tuple: FourTuple, step: Step, r: crate::sys::Result<T>) -> Result<T, BuildError> {
    r.map_err(|source| BuildError::Step { tuple, step, source })
}

/// Fills a placeholder (repair mode on, bound to the service address,
/// unconnected) with `plan`, in the order of the module docs. The socket
/// stays in repair mode; nothing is sent.
pub fn fill(sock: BorrowedFd<'_>, plan: &RepairPlan) -> Result<FillReport, BuildError> {
    let t0 = Instant::now();
    let t = plan.tuple;
    let mut report = FillReport::default();
    let (snd, rcv) = plan.buffer_sizes();
    step(t, Step::ForceBuffers, tr::force_buffers(sock, Some(snd), Some(rcv)))?;
    step(t, Step::RecvQueueSeq, tr::set_repair_queue(sock, RepairQueue::Recv))?;
    step(t, Step::RecvQueueSeq, tr::set_queue_seq(sock, plan.recv_queue_seq.0))?;
    step(t, Step::SendQueueSeq, tr::set_repair_queue(sock, RepairQueue::Send))?;
    step(t, Step::SendQueueSeq, tr::set_queue_seq(sock, plan.send_queue_seq.0))?;
    step(t, Step::Connect, tr::connect_v4(sock, t.client))?;
    step(t, Step::Options, tr::set_repair_options(sock, &plan.repair_options()))?;
    if let Some(ts) = plan.tsval {
        let v = timestamp_option_value(ts, plan.ts_clock);
        step(t, Step::Timestamp, tr::set_timestamp(sock, v))?;
        report.timestamp_written = Some(v);
    }
    if !plan.recv_queue.is_empty() {
        step(t, Step::RecvQueue, tr::set_repair_queue(sock, RepairQueue::Recv))?;
        queue_bytes(sock, t, Step::RecvQueue, &plan.recv_queue)?;
    }
    let sent = plan.tail.get(..plan.sent_len).unwrap_or(&[]);
    if !sent.is_empty() {
        step(t, Step::SendQueue, tr::set_repair_queue(sock, RepairQueue::Send))?;
        queue_bytes(sock, t, Step::SendQueue, sent)?;
    }
    if let Some(w) = plan.raw_window() {
        match tr::set_repair_window(sock, &w) {
            Ok(()) => report.window_applied = true,
            Err(e) if e.errno.0 == libc::EINVAL => report.window_rejected = Some(e.errno.0),
            Err(source) => return Err(BuildError::Step { tuple: t, step: Step::Window, source }),
        }
    }
    step(t, Step::QueueNone, tr::set_repair_queue(sock, RepairQueue::None))?;
    report.elapsed_ns = t0.elapsed().as_nanos() as u64;
    Ok(report)
}

/// Writes `bytes` into the selected repair queue (each send queues at most
/// MAX_SKB_FRAGS pages or one send-buffer's worth; bounded by the length).
fn queue_bytes(sock: BorrowedFd<'_>, t: FourTuple, which: Step, bytes: &[u8]) -> Result<(), BuildError> {
    let mut off = 0;
    for _ in 0..=bytes.len() {
        if off >= bytes.len() {
            break;
        }
        match step(t, which, tr::send_once(sock, &bytes[off..], true))? {
            Some(n) if n > 0 => off += n,
            _ => {
                let e = crate::sys::Errno(libc::ENOBUFS);
                let what = format!("{which} stuck at {off} of {} bytes", bytes.len());
                return Err(BuildError::Step { tuple: t, step: which, source: SysError::new("send", what, e) });
            }
        }
    }
    Ok(())
}

/// Builds a socket for `plan` from scratch: a new placeholder bound to the
/// service address (non-blocking), then [`fill`]. Still in repair mode.
pub fn build(plan: &RepairPlan) -> Result<(OwnedFd, FillReport), BuildError> {
    let local = tr::sockaddr_in(plan.tuple.server);
    let sock = step(plan.tuple, Step::Placeholder, tr::placeholder(&local, true))?;
    let report = fill(sock.as_fd(), plan)?;
    Ok((sock, report))
}

/// Leaves repair mode; the kernel sends a window probe, whose answer
/// re-learns the client's window (and is the nudge the takeover relies on).
pub fn release(sock: BorrowedFd<'_>, tuple: FourTuple) -> Result<(), BuildError> {
    step(tuple, Step::Release, tr::set_repair(sock, RepairMode::Off))
}

/// Writes `tail` (the part of the plan's tail after `sent_len`) as new
/// data on a released socket without blocking; returns
/// the bytes written (less than `tail.len()` only if the send buffer is
/// full — the caller keeps the rest).
pub fn write_tail(sock: BorrowedFd<'_>, tuple: FourTuple, tail: &[u8]) -> Result<usize, BuildError> {
    let mut off = 0;
    for _ in 0..=tail.len() {
        if off >= tail.len() {
            break;
        }
        match step(tuple, Step::Tail, tr::send_once(sock, &tail[off..], true))? {
            Some(n) if n > 0 => off += n,
            _ => break,
        }
    }
    Ok(off)
}

/// `shutdown(SHUT_WR)` for a connection whose server had sent its FIN.
pub fn shutdown_write(sock: BorrowedFd<'_>, tuple: FourTuple) -> Result<(), BuildError> {
    step(tuple, Step::Shutdown, tr::shutdown_write(sock))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcpstate::wire::Ipv4Packet;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn plan() -> RepairPlan {
        RepairPlan {
            tuple: FourTuple {
                client: SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 10), 40000),
                server: SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 100), 7000),
            },
            send_queue_seq: SeqNum(u32::MAX - 1000),
            recv_queue_seq: SeqNum(500),
            recv_queue: vec![7; 300],
            options: Negotiated {
                client_mss: Some(1460),
                server_mss: Some(1460),
                window_scaling: true,
                client_wscale: 7,
                server_wscale: 9,
                sack: true,
                timestamps: true,
            },
            tsval: Some(41),
            ts_clock: TsClock::Millis,
            window: Some(RepairWindow {
                snd_wl1: SeqNum(500),
                snd_wnd: 128 * 100,
                max_window: 128 * 50,
                rcv_wnd: 512 * 20,
                rcv_wup: SeqNum(700),
            }),
            tail: (0..5000u32).map(|i| i as u8).collect(),
            sent_len: 3000,
            client_fin: true,
            server_fin: false,
        }
    }

    #[test]
    fn timestamp_value_never_below_and_encodes_the_clock() {
        assert_eq!(timestamp_option_value(40, TsClock::Millis), 40);
        assert_eq!(timestamp_option_value(41, TsClock::Millis), 42);
        assert_eq!(timestamp_option_value(u32::MAX, TsClock::Millis), 0, "wraps forward, not back");
        assert_eq!(timestamp_option_value(40, TsClock::Micros), 41);
        assert_eq!(timestamp_option_value(41, TsClock::Micros), 41);
    }

    #[test]
    fn repair_options_follow_the_handshake() {
        let p = plan();
        let o = p.repair_options();
        assert_eq!(o[0], RepairOpt { code: 2, value: 1460 });
        assert_eq!(o[1], RepairOpt { code: 3, value: 7 | (9 << 16) });
        assert_eq!(o[2], RepairOpt { code: 4, value: 0 });
        assert_eq!(o[3], RepairOpt { code: 8, value: 0 });
        let mut q = plan();
        q.options.sack = false;
        q.options.timestamps = false;
        q.options.window_scaling = false;
        assert_eq!(q.repair_options().len(), 1);
    }

    #[test]
    fn window_keeps_max_at_least_snd_wnd_and_buffers_fit_the_queues() {
        let p = plan();
        let w = p.raw_window().unwrap();
        assert_eq!(w.max_window, w.snd_wnd);
        assert_eq!(p.rcv_nxt(), SeqNum(800));
        let (snd, rcv) = p.buffer_sizes();
        assert!(snd as usize >= 2 * p.tail.len());
        assert!(rcv as usize >= 2 * (p.recv_queue.len() + 512 * 20));
    }

    #[test]
    fn client_fin_is_from_the_client_at_rcv_nxt() {
        let p = plan();
        let pkt = p.client_fin_packet().unwrap();
        let ip = Ipv4Packet::parse(&pkt).unwrap();
        let tcp = ip.tcp().unwrap();
        assert_eq!(ip.src_addr(), *p.tuple.client.ip());
        assert_eq!(tcp.seq(), p.rcv_nxt());
        assert_eq!(tcp.ack(), p.send_queue_seq);
        assert!(tcp.flags().fin() && tcp.flags().ack());
        assert_eq!(tcp.window(), 100, "scaled down by the client's shift");
        assert!(tcp.options_bytes().is_empty(), "no stale TSval");
    }

    #[test]
    fn resend_covers_exactly_the_in_flight_bytes_across_the_wrap() {
        let p = plan();
        let pkts = p.resend_packets(Some(99), usize::MAX).unwrap();
        let mut next = p.send_queue_seq;
        let mut bytes = Vec::new();
        for pkt in &pkts {
            let ip = Ipv4Packet::parse(pkt).unwrap();
            let tcp = ip.tcp().unwrap();
            assert_eq!(tcp.seq(), next);
            assert!(tcp.payload().len() <= 1460 - 12);
            next = next + tcp.payload().len() as u32;
            bytes.extend_from_slice(tcp.payload());
        }
        assert_eq!(bytes, p.tail[..3000]);
        assert_eq!(p.resend_packets(None, 100).unwrap().len(), 1);
    }
}

//! The backup's promote, once replay has reached the end of the log: bind
//! the replica's listeners, rebuild every connection the replica holds (and
//! the orphans it closed while the primary's kernel still sent), take the
//! VIP, release, and let the replica run live.
//!
//! The order is DESIGN's promote sequence (the network part lives in
//! `net::takeover`): DROP stray VIP traffic (armed in advance) → fill every
//! placeholder and build the other sockets → add the VIP, gratuitous ARP →
//! open the DROP rule → release repair mode → send each unacknowledged tail
//! → go live.
//!
//! Invariants:
//! - a connection is rebuilt from the tracker's view of the wire plus the
//!   backup's own replica's output (the log carries only digests): the
//!   receive queue holds exactly the client bytes the primary acknowledged
//!   and the replica had not read, the send queue starts at the client's
//!   acknowledgement;
//! - a connection that cannot be rebuilt byte-exact (bytes missing from the
//!   tracker, output over the budget) is reported and left in repair mode,
//!   which sends nothing (the client's connection then times out rather
//!   than seeing wrong bytes).

use super::shared::Shared;
use crate::net::takeover::{Armed, Rebuild, TakeoverReport};
use crate::replica::engine::Supervisor;
use crate::replica::engine::live::{LiveConn, LiveState};
use crate::sys::{self, fd as sfd};
use crate::tcpstate::build::RepairPlan;
use crate::tcpstate::{FourTuple, TsClock};
use std::collections::HashSet;
use std::net::SocketAddrV4;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// Stream offset of sequence number `seq` in a stream whose first byte is
/// `isn + 1`, given that `written` bytes exist (offsets are 64-bit, sequence
/// numbers wrap at 2^32: the offset is the one within 2^31 below `written`).
pub fn offset_of(seq: u32, isn: u32, written: u64) -> u64 {
    let rel = seq.wrapping_sub(isn.wrapping_add(1));
    let back = (written as u32).wrapping_sub(rel) as u64;
    written.saturating_sub(back)
}

/// Feeds the tracker what the replica consumed and trims output tails the
/// client acknowledged (runs periodically during replay and at takeover).
/// What was already fed is kept per connection, so calls from different
/// threads never feed the same bytes twice.
pub fn sync_tracker(shared: &Shared) {
    let (Ok(mut live), Ok(mut tracker)) = (shared.live.lock(), shared.tracker.lock()) else { return };
    sync(&mut live, &mut tracker);
}

/// [`sync_tracker`] on the states themselves. Then forgets every closed
/// connection a takeover would never rebuild as an orphan (see
/// [`take_over`]): its output all acknowledged (a tail only shrinks), too
/// large to hold, its wire connection ended or forgotten, or its 4-tuple
/// reused by a newer connection of the replica. Without this the list
/// grows with every connection the server ever closed, and this pass with
/// it.
fn sync(st: &mut LiveState, tracker: &mut crate::tcpstate::Tracker) {
    let conns = st.conns.values_mut().chain(st.closed.iter_mut());
    for c in conns {
        let Some((client, server)) = c.endpoints() else { continue };
        let tuple = FourTuple { client, server };
        if c.read > c.consumed {
            match tracker.consume(&tuple, c.read - c.consumed) {
                Ok(()) => c.consumed = c.read,
                Err(e @ crate::tcpstate::ConsumeError::UnknownConnection(_)) => {
                    // Never seen, or expired (ended on the wire a minute
                    // ago): there is nothing to feed, now or later. Said once.
                    tracing::warn!("tracker: {tuple}: the replica read {} bytes: {e}", c.read);
                    c.consumed = c.read;
                }
                Err(e) => tracing::warn!("tracker: {tuple}: the replica read {} bytes: {e}", c.read),
            }
        }
        if let Some(conn) = tracker.get(&tuple)
            && let (Some(una), Some(isn)) = (conn.send_queue_seq(), conn.server_isn())
        {
            c.trim(offset_of(una.0, isn.0, c.written));
        }
    }
    let open: HashSet<(SocketAddrV4, SocketAddrV4)> = st.conns.values().filter_map(|c| c.endpoints()).collect();
    st.closed.retain(|c| {
        let Some((client, server)) = c.endpoints() else { return false };
        let wire_open = tracker.get(&FourTuple { client, server }).is_some_and(|conn| {
            !matches!(conn.state(), crate::tcpstate::ConnState::Closed | crate::tcpstate::ConnState::Reset(_))
        });
        c.read > c.consumed
            || (wire_open && !c.overflow && c.tail_base < c.written && !open.contains(&(client, server)))
    });
}

fn copy(tgid: i32, fd: i32) -> Option<OwnedFd> {
    let pidfd = sys::pidfd::open(tgid).ok()?;
    sys::pidfd::getfd(pidfd.as_fd(), fd).ok()
}

fn plan_for(c: &LiveConn, tracker: &crate::tcpstate::Tracker, now: u64) -> Result<(FourTuple, RepairPlan), String> {
    let (client, server) = c.endpoints().ok_or("not an IPv4 connection")?;
    let tuple = FourTuple { client, server };
    let conn = tracker.get(&tuple).ok_or(format!("{tuple}: never seen on the wire"))?;
    let tail = match (conn.send_queue_seq(), conn.server_isn()) {
        (Some(una), Some(isn)) => {
            let from = offset_of(una.0, isn.0, c.written);
            c.unacked_from(from).map(|t| t.to_vec()).ok_or(format!(
                "{tuple}: the replica's unacknowledged output from offset {from} is no longer held (budget exceeded)"
            ))?
        }
        _ => vec![],
    };
    let plan = RepairPlan::from_conn(conn, now, TsClock::Millis, tail).map_err(|e| format!("{tuple}: {e}"))?;
    Ok((tuple, plan))
}

/// Binds and listens the replica's listeners on the VIP.
fn open_listeners(shared: &Shared, sup: &Supervisor) -> Vec<String> {
    let mut problems = vec![];
    let Ok(live) = shared.live.lock() else { return vec!["live state poisoned".into()] };
    for l in live.listeners.values().filter(|l| l.listening) {
        let Some(tgid) = sup.tree.procs.get(l.pvid as usize).filter(|p| !p.exited).map(|p| p.tgid) else { continue };
        let Some(sock) = copy(tgid, l.fd) else {
            problems.push(format!("listener fd {} of process {}: cannot be copied", l.fd, l.pvid));
            continue;
        };
        let f = sock.as_fd();
        let _ = sfd::setsockopt_int(f, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
        let _ = sfd::setsockopt_int(f, libc::SOL_IP, libc::IP_FREEBIND, 1);
        let raw = sock.as_raw_fd() as u64;
        let r = sfd::raw_syscall6(libc::SYS_bind, [raw, l.addr.as_ptr() as u64, l.addr.len() as u64, 0, 0, 0]);
        let r2 =
            if r == 0 { sfd::raw_syscall6(libc::SYS_listen, [raw, l.backlog.max(1) as u64, 0, 0, 0, 0]) } else { r };
        if r2 != 0 {
            problems.push(format!("listener fd {}: bind/listen failed: {}", l.fd, sys::Errno(-r2 as i32)));
        }
    }
    problems
}

/// Performs the takeover. Returns the report and the connections that could
/// not be taken over, with why.
pub fn take_over(shared: &Shared, sup: &Supervisor, armed: Armed) -> Result<(TakeoverReport, Vec<String>), String> {
    sync_tracker(shared);
    for p in open_listeners(shared, sup) {
        shared.note(format!("takeover: {p}"));
    }
    let now = sfd::clock_ns(libc::CLOCK_MONOTONIC).max(0) as u64;
    let mut rebuilds = vec![];
    let mut failed = vec![];
    {
        let live = shared.live.lock().map_err(|_| "live state poisoned")?;
        let tracker = shared.tracker.lock().map_err(|_| "tracker poisoned")?;
        for c in live.conns.values() {
            let Some(tgid) = sup.tree.procs.get(c.pvid as usize).filter(|p| !p.exited).map(|p| p.tgid) else {
                continue;
            };
            match plan_for(c, &tracker, now) {
                Ok((tuple, plan)) => {
                    tracing::info!(
                        "takeover {tuple}: read {} written {} recv queue {} bytes, tail {} bytes, mss {:?}/{:?} ts {:?} wscale {:?}",
                        c.read,
                        c.written,
                        plan.recv_queue.len(),
                        plan.tail.len(),
                        plan.options.client_mss,
                        plan.options.server_mss,
                        plan.tsval,
                        plan.options.window_scaling
                    );
                    let placeholder = copy(tgid, c.fd);
                    rebuilds.push(Rebuild { plan, placeholder, syn_ack: None, orphan: false });
                }
                Err(e) => failed.push(e),
            }
        }
        // Orphans: closed by the replica while the primary's kernel still had
        // output the client had not acknowledged.
        for c in &live.closed {
            let Ok((tuple, plan)) = plan_for(c, &tracker, now) else { continue };
            let Some(conn) = tracker.get(&tuple) else { continue };
            let open =
                !matches!(conn.state(), crate::tcpstate::ConnState::Closed | crate::tcpstate::ConnState::Reset(_));
            if open && !plan.tail.is_empty() {
                rebuilds.push(Rebuild { plan, placeholder: None, syn_ack: None, orphan: true });
            }
        }
    }
    for f in &failed {
        shared.note(format!("takeover: {f}"));
    }
    let takeover = armed.execute(rebuilds).map_err(|e| e.to_string())?;
    let report = takeover.report.clone();
    for (t, why) in &report.failed {
        failed.push(format!("{t}: {why}"));
        shared.note(format!("takeover: {t}: {why}"));
    }
    // The rebuilt sockets are copies of the replica's own fds (filled in
    // place): finish any tail that did not fit, then drop the copies so the
    // replica's close is the last reference again. The responder and the
    // orphan keeper run on their own threads for a while.
    for r in takeover.live {
        if !r.tail_rest.is_empty() {
            finish_tail(&r.fd, &r.tail_rest);
        }
        if r.shutdown_pending {
            let _ = sfd::raw_syscall6(libc::SYS_shutdown, [r.fd.as_raw_fd() as u64, libc::SHUT_WR as u64, 0, 0, 0, 0]);
        }
    }
    if let Some(r) = takeover.responder {
        std::mem::forget(r);
    }
    if let Some(k) = takeover.keeper {
        std::mem::forget(k);
    }
    Ok((report, failed))
}

/// Writes what of a tail did not fit the send buffer at release: the send
/// buffer is grown to hold it, then it is written (bounded wait).
fn finish_tail(fd: &OwnedFd, rest: &[u8]) {
    let f = fd.as_fd();
    let cur = sfd::getsockopt_int(f, libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap_or(0);
    let _ =
        sfd::setsockopt_int(f, libc::SOL_SOCKET, 32 /* SO_SNDBUFFORCE */, cur.saturating_add(rest.len() as i32));
    let mut at = 0;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while at < rest.len() && std::time::Instant::now() < until {
        let n = sfd::send(f, &rest[at..], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL);
        if n > 0 {
            at += n as usize;
        } else if n == -(libc::EAGAIN as i64) {
            let _ = sfd::poll_one(f, libc::POLLOUT, 100);
        } else {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{offset_of, sync};
    use crate::replica::engine::live::LiveState;
    use crate::tcpstate::ConnState;
    use crate::tcpstate::tests::{Flow, RST};
    use std::net::SocketAddrV4;

    /// A raw `sockaddr_in`, as the engine stores it.
    fn raw(a: SocketAddrV4) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        b[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        b[2..4].copy_from_slice(&a.port().to_be_bytes());
        b[4..8].copy_from_slice(&a.ip().octets());
        b
    }

    /// A connection the replica accepted, answered with `reply` and closed.
    fn closed_after_reply(f: &mut Flow, reply: &[u8]) -> LiveState {
        f.handshake();
        let mut st = LiveState { budget: 1 << 20, ..Default::default() };
        st.accepted(3, 7, &raw(f.server), &raw(f.client), true);
        st.wrote(3, 7, reply);
        f.server_send(reply);
        st.closed(3, 7);
        st
    }

    #[test]
    fn a_closed_connection_is_kept_while_the_client_lacks_its_output() {
        let mut f = Flow::new(10, 20);
        let mut st = closed_after_reply(&mut f, b"bye");
        sync(&mut st, &mut f.tracker);
        assert_eq!(st.closed.len(), 1, "an orphan: the client has not acknowledged its last bytes");
        f.client_ack(f.s_nxt, 1000);
        sync(&mut st, &mut f.tracker);
        assert!(st.closed.is_empty(), "all acknowledged: nothing a takeover would rebuild");
    }

    #[test]
    fn a_closed_connection_is_forgotten_once_the_wire_ends_or_its_tuple_is_reused() {
        let mut f = Flow::new(10, 20);
        let mut st = closed_after_reply(&mut f, b"bye");
        f.inbound_raw(f.c_nxt, f.s_isn, RST, 0, b"");
        assert!(matches!(f.conn().state(), ConnState::Reset(_)));
        sync(&mut st, &mut f.tracker);
        assert!(st.closed.is_empty(), "reset on the wire");

        let mut f = Flow::new(10, 20);
        let mut st = closed_after_reply(&mut f, b"bye");
        st.accepted(3, 8, &raw(f.server), &raw(f.client), true);
        sync(&mut st, &mut f.tracker);
        assert!(st.closed.is_empty(), "the replica accepted the same 4-tuple again");
        assert_eq!(st.conns.len(), 1);
    }

    #[test]
    fn offsets_follow_sequence_numbers_across_wraps() {
        assert_eq!(offset_of(1001, 1000, 0), 0);
        assert_eq!(offset_of(1011, 1000, 50), 10);
        let isn = u32::MAX - 5;
        assert_eq!(offset_of(isn.wrapping_add(1).wrapping_add(100), isn, 200), 100);
        let written = (5u64 << 32) + 77;
        let seq = 1000u32.wrapping_add(1).wrapping_add((written - 10) as u32);
        assert_eq!(offset_of(seq, 1000, written), written - 10);
    }
}

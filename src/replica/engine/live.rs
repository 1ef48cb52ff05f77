//! The backup's side of a takeover: what replay keeps so every connection
//! can be rebuilt, and the switch from replay to live execution.
//!
//! While replaying, the engine notes for every connection the replica
//! accepted (a TCP_REPAIR placeholder at a recorded fd): its addresses, how
//! many client bytes the replica consumed, and every byte the replica wrote
//! that the client may not have acknowledged yet (the log carries only
//! digests of output, so the backup keeps its own replica's bytes). It also
//! notes listeners (bound and listened only at takeover) and the last value
//! each clock had in the log.
//!
//! Invariants:
//! - [`LiveState`] is shared (`Arc<Mutex<_>>`) with the node, which trims
//!   output tails as the client acknowledges them and rebuilds the sockets at
//!   takeover; the engine only appends;
//! - a connection's tail holds exactly the bytes `[tail_base, written)` of
//!   the replica's output stream on it; a connection whose tail would exceed
//!   the budget is marked `overflow` (it cannot be taken over byte-exact),
//!   never silently truncated;
//! - a closed connection is moved to `closed`, keeping its tail: the primary's
//!   kernel may still be sending it (an orphan).

use super::threads::{At, Pvid, Sched};
use super::{Mode, Result, Supervisor};
use crate::replica::log::{Sink, Writer};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};

/// Default budget of unacknowledged output kept per connection.
pub const TAIL_BUDGET: usize = 64 << 20;

/// One connection the replica accepted.
#[derive(Clone, Debug, Default)]
pub struct LiveConn {
    pub pvid: Pvid,
    pub fd: i32,
    /// Raw `sockaddr` of the service side and of the client.
    pub local: Vec<u8>,
    pub peer: Vec<u8>,
    /// Client bytes the replica has read.
    pub read: u64,
    /// Of those, how many the tracker was told about (`Tracker::consume`).
    pub consumed: u64,
    /// Server bytes the replica has written.
    pub written: u64,
    /// Stream offset of `tail[0]`.
    pub tail_base: u64,
    pub tail: Vec<u8>,
    pub overflow: bool,
    /// The replica shut the connection down for writing (or closed it).
    pub shut_wr: bool,
    /// `O_NONBLOCK` requested at accept.
    pub nonblock: bool,
}

impl LiveConn {
    /// The connection's IPv4 endpoints (client, server), if IPv4.
    pub fn endpoints(&self) -> Option<(SocketAddrV4, SocketAddrV4)> {
        Some((sockaddr_v4(&self.peer)?, sockaddr_v4(&self.local)?))
    }

    /// Drops output the client has acknowledged (`acked` is a stream offset).
    pub fn trim(&mut self, acked: u64) {
        if acked > self.tail_base {
            let n = ((acked - self.tail_base) as usize).min(self.tail.len());
            self.tail.drain(..n);
            self.tail_base += n as u64;
        }
    }

    /// Output from stream offset `from` on, if still held.
    pub fn unacked_from(&self, from: u64) -> Option<&[u8]> {
        if from < self.tail_base || self.overflow {
            return None;
        }
        self.tail.get((from - self.tail_base) as usize..)
    }
}

/// Parses a raw `sockaddr_in`.
pub fn sockaddr_v4(b: &[u8]) -> Option<SocketAddrV4> {
    if b.len() < 8 || u16::from_ne_bytes([b[0], b[1]]) as i32 != libc::AF_INET {
        return None;
    }
    Some(SocketAddrV4::new(Ipv4Addr::new(b[4], b[5], b[6], b[7]), u16::from_be_bytes([b[2], b[3]])))
}

/// A listening socket of the replica: bound and listened at takeover.
#[derive(Clone, Debug)]
pub struct LiveListener {
    pub pvid: Pvid,
    pub fd: i32,
    pub addr: Vec<u8>,
    pub backlog: i32,
    pub listening: bool,
}

#[derive(Debug, Default)]
pub struct LiveState {
    pub conns: HashMap<(Pvid, i32), LiveConn>,
    pub closed: Vec<LiveConn>,
    pub listeners: HashMap<(Pvid, i32), LiveListener>,
    /// Per clock id: the last value the log gave the replica and our
    /// CLOCK_MONOTONIC when it was applied (ns).
    pub clocks: HashMap<i32, (i64, i64)>,
    pub budget: usize,
}

pub type Shared = Arc<Mutex<LiveState>>;

pub fn shared() -> Shared {
    Arc::new(Mutex::new(LiveState { budget: TAIL_BUDGET, ..Default::default() }))
}

impl LiveState {
    pub fn accepted(&mut self, pvid: Pvid, fd: i32, local: &[u8], peer: &[u8], nonblock: bool) {
        if let Some(old) = self.conns.remove(&(pvid, fd)) {
            self.closed.push(old);
        }
        let c = LiveConn { pvid, fd, local: local.to_vec(), peer: peer.to_vec(), nonblock, ..Default::default() };
        self.conns.insert((pvid, fd), c);
    }

    pub fn read(&mut self, pvid: Pvid, fd: i32, n: u64) {
        if let Some(c) = self.conns.get_mut(&(pvid, fd)) {
            c.read += n;
        }
    }

    pub fn wrote(&mut self, pvid: Pvid, fd: i32, data: &[u8]) {
        let budget = self.budget;
        if let Some(c) = self.conns.get_mut(&(pvid, fd)) {
            c.written += data.len() as u64;
            if c.tail.len() + data.len() > budget {
                c.overflow = true;
            } else if !c.overflow {
                c.tail.extend_from_slice(data);
            }
        }
    }

    pub fn shutdown(&mut self, pvid: Pvid, fd: i32, how: i32) {
        if let Some(c) = self.conns.get_mut(&(pvid, fd))
            && how != libc::SHUT_RD
        {
            c.shut_wr = true;
        }
    }

    /// The replica closed `fd` (close, or dup2/dup3 over it).
    pub fn closed(&mut self, pvid: Pvid, fd: i32) {
        if let Some(mut c) = self.conns.remove(&(pvid, fd)) {
            c.shut_wr = true;
            self.closed.push(c);
        }
        self.listeners.remove(&(pvid, fd));
    }

    pub fn bound(&mut self, pvid: Pvid, fd: i32, addr: &[u8]) {
        self.listeners.insert((pvid, fd), LiveListener { pvid, fd, addr: addr.to_vec(), backlog: 0, listening: false });
    }

    pub fn listened(&mut self, pvid: Pvid, fd: i32, backlog: i32) {
        if let Some(l) = self.listeners.get_mut(&(pvid, fd)) {
            l.backlog = backlog;
            l.listening = true;
        }
    }

    pub fn process_gone(&mut self, pvid: Pvid) {
        let fds: Vec<i32> = self.conns.keys().filter(|k| k.0 == pvid).map(|k| k.1).collect();
        for fd in fds {
            self.closed(pvid, fd);
        }
        self.listeners.retain(|k, _| k.0 != pvid);
    }
}

impl Supervisor {
    /// Ends replay and lets the replica run live, recording to `sink` (the
    /// new primary keeps a log for the next backup, or a null sink). Parked
    /// threads keep their pending calls, which the record side now handles;
    /// the clocks the replica sees continue from the values in the log.
    pub fn go_live(&mut self, sink: Box<dyn Sink>) -> Result<()> {
        let now = crate::sys::fd::clock_ns(libc::CLOCK_MONOTONIC);
        if let Some(live) = &self.live {
            let st = live.lock().map_err(|_| super::EngineError::Internal("live state poisoned".into()))?;
            // CLOCK_MONOTONIC family: the replica's clock was `value` at local
            // time `at`; keep it running from there.
            let mono = [libc::CLOCK_MONOTONIC, libc::CLOCK_MONOTONIC_RAW, libc::CLOCK_MONOTONIC_COARSE]
                .iter()
                .filter_map(|c| st.clocks.get(c))
                .max_by_key(|(_, at)| *at);
            if let Some(&(value, at)) = mono {
                self.clock_offset = value - at;
            }
            if let Some(&(value, at)) = st.clocks.get(&libc::CLOCK_BOOTTIME) {
                let boot_now = crate::sys::fd::clock_ns(libc::CLOCK_BOOTTIME);
                self.boot_offset = value + (now - at) - boot_now;
            }
        }
        self.mode = Mode::Record(Writer::new(sink));
        for vid in self.tree.live_vids() {
            let holder = self.holder == Some(vid);
            let t = self.tree.tm(vid);
            t.sched = match t.at {
                At::Notif(_) | At::Stop(_) => Sched::Ready,
                At::Running if holder => Sched::Holder,
                _ => Sched::Idle,
            };
            t.since = 0;
        }
        if self.holder.is_some_and(|h| self.tree.t(h).at != At::Running) {
            self.holder = None;
        }
        tracing::info!("replay reached the end of the log: the replica now runs live");
        Ok(())
    }
}

//! The connection table: classifies each captured packet and feeds it to its
//! connection.
//!
//! Invariants:
//! - sans-IO: input is bytes and the caller's monotonic time; the tracker
//!   never reads a clock, never blocks, never allocates without a bound.
//! - a connection exists only from a client SYN to a service endpoint; any
//!   other segment of an unknown four-tuple is ignored (the backup cannot
//!   take over a connection whose handshake it did not see).
//! - direction comes from the configured services: destination is a service
//!   ⇒ inbound, source is a service ⇒ outbound. A packet between two service
//!   endpoints is ignored, since its direction is ambiguous.
//! - memory: at most `max_connections` connections; each holds at most
//!   `max_conn_buffer` client bytes and `max_out_of_order_runs` runs, and all
//!   together at most `max_total_buffer` bytes. Bytes beyond are dropped and
//!   flagged ([`SegmentNotes::overflow`]); if the server then acknowledges
//!   them the connection reports [`MissingBytes`](super::MissingBytes) and
//!   cannot be snapshotted, rather than restored wrong.
//! - `buffered_bytes()` always equals the sum of the connections'
//!   `buffered_bytes()`.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use super::conn::{Conn, ConnState, ConsumeError, Direction, FourTuple, SegmentNotes};
use super::options::OptionSummary;
use super::update::Budget;
use super::wire::{Ipv4Packet, PROTO_TCP, WireError};

/// Memory bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Most connections tracked at once; further SYNs are ignored.
    pub max_connections: usize,
    /// Most client bytes held per connection.
    pub max_conn_buffer: usize,
    /// Most client bytes held in total.
    pub max_total_buffer: usize,
    /// Most out-of-order runs held per connection.
    pub max_out_of_order_runs: usize,
}

impl Default for TrackerConfig {
    /// 65,536 connections; 32 MiB per connection (Linux's default
    /// `tcp_rmem` maximum is 6 MiB, and 11 MiB queues were measured under
    /// saturation); 1 GiB in total; 1,024 out-of-order runs.
    fn default() -> Self {
        TrackerConfig {
            max_connections: 65_536,
            max_conn_buffer: 32 << 20,
            max_total_buffer: 1 << 30,
            max_out_of_order_runs: 1_024,
        }
    }
}

/// Why a packet did not reach a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Not TCP.
    NotTcp {
        /// The IP protocol number.
        protocol: u8,
    },
    /// Neither endpoint is a service endpoint.
    NotService,
    /// Both endpoints are service endpoints; direction is ambiguous.
    BothEndsAreServices,
    /// Not a client SYN, and no connection with this four-tuple.
    UnknownConnection(FourTuple),
    /// A new SYN while `max_connections` are tracked.
    ConnectionLimit(FourTuple),
}

/// A segment that reached its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    /// The connection.
    pub tuple: FourTuple,
    /// Which way the segment went.
    pub direction: Direction,
    /// New client bytes stored by this segment.
    pub new_client_bytes: usize,
    /// What the segment did.
    pub notes: SegmentNotes,
}

/// Result of [`Tracker::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The packet is not part of a tracked connection.
    Ignored(Ignored),
    /// The packet was applied to a connection.
    Tracked(Tracked),
}

impl Observed {
    /// The `Tracked` part, if any.
    pub fn tracked(&self) -> Option<&Tracked> {
        match self {
            Observed::Tracked(t) => Some(t),
            Observed::Ignored(_) => None,
        }
    }
}

/// When [`Tracker::expire`] removes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryPolicy {
    /// Remove connections reset or closed (both FINs acked) this long ago.
    pub ended_after_ns: u64,
    /// Remove connections whose handshake has not completed after this long.
    pub handshake_after_ns: u64,
    /// Remove any connection silent this long, if set.
    pub idle_after_ns: Option<u64>,
}

impl ExpiryPolicy {
    /// The live backup's policy. A connection that ended on the wire (reset,
    /// or both FINs acknowledged) leaves nothing to rebuild; a minute later
    /// the backup's replica, at most the bounded lag behind, has seen its
    /// end too. A handshake never completed is dropped after two minutes
    /// (Linux gives up its SYN-ACK retransmissions after about 63 s). Idle
    /// connections are kept whatever their age: keep-alive clients must
    /// survive a failover. Without expiry the tracker fills up with ended
    /// connections to `max_connections` and then ignores new ones, which a
    /// failover could not rebuild.
    pub const BACKUP: ExpiryPolicy =
        ExpiryPolicy { ended_after_ns: 60_000_000_000, handshake_after_ns: 120_000_000_000, idle_after_ns: None };
}

/// Passive tracker of the TCP connections to a set of service endpoints.
#[derive(Debug, Clone)]
pub struct Tracker {
    services: Vec<SocketAddrV4>,
    config: TrackerConfig,
    conns: BTreeMap<FourTuple, Conn>,
    buffered: usize,
}

impl Tracker {
    /// A tracker for `services` with default bounds. A service address of
    /// `0.0.0.0` matches its port on any address.
    pub fn new(services: &[SocketAddrV4]) -> Self {
        Self::with_config(services, TrackerConfig::default())
    }

    /// A tracker with explicit bounds.
    pub fn with_config(services: &[SocketAddrV4], config: TrackerConfig) -> Self {
        Tracker { services: services.to_vec(), config, conns: BTreeMap::new(), buffered: 0 }
    }

    /// The configured service endpoints.
    pub fn services(&self) -> &[SocketAddrV4] {
        &self.services
    }

    /// The bounds.
    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    /// `addr` is a configured service endpoint.
    pub fn is_service(&self, addr: SocketAddrV4) -> bool {
        self.services.iter().any(|s| s.port() == addr.port() && (s.ip().is_unspecified() || s.ip() == addr.ip()))
    }

    /// The connection and direction of a packet from `src` to `dst`.
    pub fn classify(&self, src: SocketAddrV4, dst: SocketAddrV4) -> Result<(FourTuple, Direction), Ignored> {
        match (self.is_service(src), self.is_service(dst)) {
            (false, true) => Ok((FourTuple { client: src, server: dst }, Direction::Inbound)),
            (true, false) => Ok((FourTuple { client: dst, server: src }, Direction::Outbound)),
            (false, false) => Err(Ignored::NotService),
            (true, true) => Err(Ignored::BothEndsAreServices),
        }
    }

    /// Feeds one captured IPv4 packet, observed at `now_ns` (caller's
    /// monotonic clock). Malformed IPv4/TCP headers are an error and change
    /// nothing; malformed TCP options are read like Linux does and reported
    /// in [`SegmentNotes::option_error`]. Checksums are not checked.
    pub fn observe(&mut self, now_ns: u64, packet: &[u8]) -> Result<Observed, WireError> {
        let ip = Ipv4Packet::parse(packet)?;
        if ip.protocol() != PROTO_TCP {
            return Ok(Observed::Ignored(Ignored::NotTcp { protocol: ip.protocol() }));
        }
        let tcp = ip.tcp()?;
        let src = SocketAddrV4::new(ip.src_addr(), tcp.src_port());
        let dst = SocketAddrV4::new(ip.dst_addr(), tcp.dst_port());
        let (tuple, direction) = match self.classify(src, dst) {
            Ok(c) => c,
            Err(why) => return Ok(Observed::Ignored(why)),
        };
        let opts = OptionSummary::parse(tcp.options_bytes());
        let mut notes = SegmentNotes { option_error: opts.error, ..SegmentNotes::default() };
        let flags = tcp.flags();

        if direction == Direction::Inbound && flags.syn() && !flags.ack() && !flags.rst() {
            let replace = match self.conns.get(&tuple) {
                None => false,
                Some(c) => c.client_isn() != tcp.seq() && c.replaceable(),
            };
            if replace {
                self.remove(&tuple);
                notes.replaced_previous = true;
            }
            if !self.conns.contains_key(&tuple) {
                if self.conns.len() >= self.config.max_connections {
                    return Ok(Observed::Ignored(Ignored::ConnectionLimit(tuple)));
                }
                self.conns.insert(tuple, Conn::from_syn(now_ns, tuple, &tcp, &opts));
                notes.new_connection = true;
            }
        }

        let room = self.config.max_total_buffer.saturating_sub(self.buffered);
        let Some(conn) = self.conns.get_mut(&tuple) else {
            return Ok(Observed::Ignored(Ignored::UnknownConnection(tuple)));
        };
        let before = conn.buffered_bytes();
        let budget = Budget {
            limit: self.config.max_conn_buffer.min(before.saturating_add(room)),
            max_runs: self.config.max_out_of_order_runs,
        };
        let new_client_bytes = match direction {
            Direction::Inbound => conn.on_inbound(now_ns, &tcp, &opts, budget, &mut notes),
            Direction::Outbound => {
                conn.on_outbound(now_ns, &ip, &tcp, &opts, &mut notes);
                0
            }
        };
        let after = conn.buffered_bytes();
        self.buffered = self.buffered.saturating_sub(before) + after;
        Ok(Observed::Tracked(Tracked { tuple, direction, new_client_bytes, notes }))
    }

    /// The connection with these endpoints.
    pub fn get(&self, tuple: &FourTuple) -> Option<&Conn> {
        self.conns.get(tuple)
    }

    /// All connections, ordered by four-tuple.
    pub fn iter(&self) -> impl Iterator<Item = &Conn> {
        self.conns.values()
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// No connections.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Client bytes held over all connections.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// The replica read `n` more bytes of `tuple`'s client stream: they are
    /// released, and [`Conn::read_seq`] advances by `n`. Fails, changing
    /// nothing, if the client has not sent that much.
    pub fn consume(&mut self, tuple: &FourTuple, n: u64) -> Result<(), ConsumeError> {
        let conn = self.conns.get_mut(tuple).ok_or(ConsumeError::UnknownConnection(*tuple))?;
        let before = conn.buffered_bytes();
        let result = conn.consume(n);
        self.buffered = self.buffered.saturating_sub(before) + conn.buffered_bytes();
        result
    }

    /// Stops tracking `tuple`, returning its last state.
    pub fn remove(&mut self, tuple: &FourTuple) -> Option<Conn> {
        let conn = self.conns.remove(tuple)?;
        self.buffered = self.buffered.saturating_sub(conn.buffered_bytes());
        Some(conn)
    }

    /// Removes the connections silent for `idle_ns` that `claimed` does not
    /// claim, returning them. The backup uses it for connections no
    /// replica socket refers to any more: a wire connection that never
    /// ends cleanly (a peer that vanished while the server's FIN was out)
    /// would otherwise stay forever, as idle connections are never expired.
    pub fn expire_unclaimed(&mut self, now_ns: u64, idle_ns: u64, claimed: impl Fn(&FourTuple) -> bool) -> Vec<Conn> {
        let done: Vec<FourTuple> = self
            .conns
            .values()
            .filter(|c| now_ns.saturating_sub(c.last_seen_ns()) >= idle_ns && !claimed(&c.tuple()))
            .map(Conn::tuple)
            .collect();
        done.iter().filter_map(|t| self.remove(t)).collect()
    }

    /// Removes the connections `policy` says are done, returning them.
    pub fn expire(&mut self, now_ns: u64, policy: &ExpiryPolicy) -> Vec<Conn> {
        let age = |t: u64| now_ns.saturating_sub(t);
        let done: Vec<FourTuple> = self
            .conns
            .values()
            .filter(|c| {
                let ended = c.ended_ns().is_some_and(|t| age(t) >= policy.ended_after_ns);
                let stuck = matches!(c.state(), ConnState::SynSent | ConnState::SynReceived)
                    && age(c.first_seen_ns()) >= policy.handshake_after_ns;
                let idle = policy.idle_after_ns.is_some_and(|i| age(c.last_seen_ns()) >= i);
                ended || stuck || idle
            })
            .map(Conn::tuple)
            .collect();
        done.iter().filter_map(|t| self.remove(t)).collect()
    }
}

//! Passive TCP connection tracking (and, later, TCP_REPAIR socket building).
//!
//! The [`Tracker`] is sans-IO: it is fed every IPv4 TCP segment seen on the
//! primary for the service endpoints, both directions, in capture order, as
//! raw IPv4 packets (NFQUEUE's payload: possibly GSO super-segments, possibly
//! with checksums left to offload) together with the caller's monotonic time.
//! For every connection it keeps what the backup needs to take it over with
//! `TCP_REPAIR` in the primary's sequence space:
//!
//! | need | accessor |
//! |---|---|
//! | endpoints, state, how it ended | [`Conn::tuple`], [`Conn::state`], [`Conn::reset`], [`Conn::client_fin`], [`Conn::server_fin`] |
//! | ISNs, handshake options, the raw SYN-ACK | [`Conn::client_isn`], [`Conn::server_isn`], [`Conn::negotiated`], [`Conn::syn_ack_packet`] |
//! | receive queue: `TCP_QUEUE_SEQ` and bytes | [`Conn::read_seq`], [`Conn::rcv_nxt`], [`Conn::client_acked_unread`] |
//! | send queue: `TCP_QUEUE_SEQ` | [`Conn::send_queue_seq`] (from [`Conn::snd_una`]); [`Conn::snd_nxt`] |
//! | `TCP_REPAIR_WINDOW` | [`Conn::repair_window`] |
//! | `TCP_TIMESTAMP` | [`Conn::server_ts_at`] |
//! | all of the above at once | [`Conn::snapshot`] |
//!
//! Sequence numbers, exactly (client stream = client → server bytes):
//! - `read_seq` = first client byte the replica has not read
//!   (`client_isn + 1 +` bytes passed to [`Tracker::consume`]);
//! - `server_ack` = the last ACK number the server sent, as on the wire;
//! - `rcv_nxt` = `max(server_ack without the client FIN, read_seq)`;
//!   `client_acked_unread` = bytes `[read_seq, rcv_nxt)`, so the receive
//!   queue's `TCP_QUEUE_SEQ` is `rcv_nxt - len = read_seq`;
//! - `snd_una` = the client's latest cumulative ACK, as on the wire;
//!   `send_queue_seq` = the same without SYN/FIN, the first server data byte
//!   the client has not acknowledged; `snd_nxt` = highest server
//!   `seq + len (+1 for FIN)` observed.
//!
//! Invariants of the module (each file states its own in detail):
//! - no panics on any input: parsers check lengths once and then read
//!   through fixed arrays or pre-split slices; malformed headers are a
//!   [`WireError`] naming the field; there is no `unwrap` outside tests and no
//!   `unsafe`.
//! - wrapping sequence arithmetic everywhere ([`SeqNum`] has no `Ord`);
//!   client bytes are kept by 64-bit stream offset.
//! - client bytes are first-copy-wins; differing copies are reported
//!   ([`SegmentNotes::conflict`]), never silently merged.
//! - acknowledged client bytes that were never captured (loss or the memory
//!   bound) make [`Conn::client_acked_unread`] and [`Conn::snapshot`] fail
//!   with [`MissingBytes`]: a connection is never rebuilt with a wrong stream.
//! - memory is bounded by [`TrackerConfig`].
//! - the tracker never reads a clock; all times are the caller's `now_ns`.

mod buffer;
pub mod build;
mod conn;
pub mod options;
pub mod seq;
mod tracker;
mod update;
pub mod wire;

#[cfg(test)]
pub(crate) mod tests;

pub use conn::{
    Conn, ConnState, ConnStats, ConsumeError, DEFAULT_MSS, Direction, FinInfo, FourTuple, MissingBytes, Negotiated,
    RepairSnapshot, RepairWindow, ResetInfo, SegmentNotes, Side, SnapshotError, SynOptions, TsClock, TsObservation,
};
pub use options::{OptionError, SackBlocks, TcpOption};
pub use seq::SeqNum;
pub use tracker::{ExpiryPolicy, Ignored, Observed, Tracked, Tracker, TrackerConfig};
pub use wire::WireError;

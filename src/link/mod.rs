//! The replication link between the two ftnet daemons, sans-IO.
//!
//! One TCP connection carries, in each direction, one sealed stream of frames:
//! the log and forwarded segments from the primary, acks (and the rare
//! control message) from the backup. Heartbeats travel separately as UDP
//! datagrams ([`heartbeat`]) so bulk log traffic never delays them.
//!
//! # A connection
//! 1. Each side sends a cleartext **greeting** (a frame header of kind
//!    `Greeting` plus a fresh 32-byte random salt; [`crypto::Handshake`]).
//! 2. Both derive the session keys from the pre-shared key and *both*
//!    greetings (the transcript).
//! 3. Each side sends a sealed [`Hello`] (protocol and software version,
//!    role, node, epoch, config digest, replica identity, and its stream
//!    positions); each compares the peer's with [`hello_diff`] and refuses
//!    with the diff (after a `Bye` naming it) when it is not empty. A wrong
//!    key or a tampered greeting shows up here as a Hello that fails
//!    authentication.
//! 4. Sealed frames follow. The sender resumes at the position the peer's
//!    Hello asks for ([`Sender::resume`]): frames are retained until acked,
//!    so a reconnect loses nothing.
//!
//! # Frame header (28 bytes, big-endian, [`wire::Header`])
//! | offset | size | field | rule |
//! |---|---|---|---|
//! | 0 | 4 | magic | `b"FTLK"` |
//! | 4 | 1 | version | [`wire::VERSION`] (1) |
//! | 5 | 1 | kind | [`Kind`]: 0 greeting, 1 hello, 2 log, 3 segment, 4 ack, 5 fence, 6 promoted, 7 bye |
//! | 6 | 2 | flags | 0 (reserved; any bit set is rejected) |
//! | 8 | 8 | epoch | the sender's lease epoch when it sealed the frame |
//! | 16 | 8 | seq | stream position; for acks and byes a per-connection counter; 0 for hello and greeting |
//! | 24 | 4 | len | plaintext body length, at most [`Kind::max_body`] for the kind |
//! | 28 | len | body | ciphertext (ChaCha20 of the body) |
//! | 28+len | 16 | tag | Poly1305 tag over header (associated data) and ciphertext |
//!
//! The greeting is the one unsealed frame: header with kind 0, `len` 32, then
//! the salt, no tag. The whole header is checked (magic, version, kind,
//! flags, length against the kind's limit) before any byte of the body is
//! looked at or anything allocated.
//!
//! # Keys and nonces
//! `Key::from_file` normalizes the file's bytes to a 32-byte master key
//! (blake3 `derive_key`). For a connection, `secret = derive_key(session
//! context, master ‖ greeting_initiator ‖ greeting_responder)`, then one
//! ChaCha20-Poly1305 key per (purpose, direction): stream i→r, stream r→i,
//! heartbeat i→r, heartbeat r→i, plus an 8-byte session id. "Initiator" is
//! the side that made the TCP connection.
//!
//! Why a (key, nonce) pair never repeats: the nonce is `[direction, purpose,
//! path, 0] ‖ counter` (96 bits). (a) Across connections, the key depends on
//! both salts; each side draws its own salt fresh from the OS, so *its*
//! sending keys are new even if the peer (or an attacker replaying an old
//! greeting) reuses a salt — two sessions share a key only if a 256-bit
//! random salt repeats. (b) Within a session, each key encrypts one
//! direction only, and per purpose (hello, stream, control, heartbeat on a
//! path) the counter strictly increases: the sealers refuse to seal a
//! counter that is not above the last one sealed ([`LinkError::NonceReuse`]),
//! and a u64 counter is never exhausted in practice (it is refused at the
//! end all the same). Stream positions are reused across connections when
//! frames are retransmitted, which is safe because the key changed.
//!
//! # Rejection policy
//! A TCP stream whose framing or authenticity is in doubt cannot be resumed
//! in place: every rejection (bad magic, wrong version, unknown kind, flags,
//! oversized length, failed authentication, replayed or out-of-order
//! sequence, older epoch, malformed body, protocol violation) is counted in
//! [`Counters`], returned as a [`LinkError`] naming what failed, and poisons
//! the [`Receiver`]'s connection: later calls return [`LinkError::Closed`]
//! until the next [`Receiver::attach`]. The caller closes the TCP connection
//! and reconnects; the new session has new keys, and the sender retransmits
//! everything the receiver did not have. A frame that fails authentication
//! is never parsed further (its body is never decoded). A frame from a
//! *newer* epoch is not a rejection: it is delivered as
//! [`Incoming::NewerEpoch`] and the caller must stop serving at once.
//!
//! # For the node
//! - Keep one [`Sender`] and one [`Receiver`] per peer for the life of the
//!   pair (they carry positions across reconnects); per connection call
//!   [`establish`] (blocking) or drive [`Handshake`] and `attach` yourself.
//! - Epochs: [`Sender::set_epoch`] and [`Receiver::set_epoch`] are separate;
//!   set both when the lease changes. Frames are stamped with the sender's
//!   epoch when sealed, so retransmitted frames carry the current one.
//! - Output commit: stamp a held segment with [`Sender::position`]; release
//!   it when [`Sender::acked_through`] reaches the stamp. Apply every
//!   [`Ack`] the reader delivers with [`Sender::on_ack`].
//! - Backup: send [`Receiver::ack`] often (every few ms or frames) through
//!   [`Sender::queue_ack`]; flow control counts *applied* frames.
//! - Heartbeats use the keys of the latest session ([`Established`]'s
//!   `heartbeat`): [`HeartbeatTx::new`] and [`HeartbeatRx::install`].
//!
//! Invariants:
//! - nothing is allocated or decrypted before the fixed header is valid and
//!   the whole frame is buffered; no parser panics on any input;
//! - every frame but the greeting is sealed; its header is authenticated;
//! - stream frames are delivered exactly once, in order, across reconnects;
//!   acks never claim more than was received;
//! - no `unsafe` (the module is `#![forbid(unsafe_code)]`-clean).
#![forbid(unsafe_code)]

pub mod crypto;
pub mod heartbeat;
pub mod msg;
pub mod receiver;
pub mod sender;
pub mod stream;
pub mod wire;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

pub use crypto::{Handshake, Key, Session};
pub use heartbeat::{Beat, Detector, DetectorConfig, HeartbeatRx, HeartbeatTx, Path, PeerState};
pub use msg::{Ack, Bye, Fence, FenceReason, FileDigest, Hello, Message, Promoted, ReplicaIdentity, hello_diff};
pub use receiver::{Frame, Incoming, Receiver};
pub use sender::{Lag, LagBound, Sender};
pub use stream::{Established, LinkReader, LinkWriter, establish};
pub use wire::{Header, Kind};

/// The role a node plays in the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Primary,
    Backup,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
        })
    }
}

/// Which end of the TCP connection this node is: the initiator connected,
/// the responder accepted. It selects the key of each direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Initiator,
    Responder,
}

/// Everything that can go wrong on the link, naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link frame: bad magic {found:02x?} (expected \"FTLK\": not an ftnet link, or framing lost)")]
    BadMagic { found: [u8; 4] },
    #[error(
        "link frame: version {found}, this ftnet speaks version {} (run the same ftnet on both nodes)",
        wire::VERSION
    )]
    Version { found: u8 },
    #[error("link frame: unknown kind {found}")]
    UnknownKind { found: u8 },
    #[error("link frame: unknown flags {found:#06x}")]
    Flags { found: u16 },
    #[error("link frame: {kind:?} body of {len} bytes exceeds the limit of {max}")]
    Oversize { kind: Kind, len: u64, max: u64 },
    #[error(
        "link frame {kind:?} seq {seq} failed authentication (wrong key file, or the link is tampered with); dropped"
    )]
    BadMac { kind: Kind, seq: u64 },
    #[error("link frame {kind:?}: sequence {found}, expected {expected} ({})", if found < expected { "replayed" } else { "gap or reordered" })]
    Sequence { kind: Kind, expected: u64, found: u64 },
    #[error("link frame {kind:?} from older epoch {theirs} (ours is {ours}): the peer was superseded")]
    StaleEpoch { kind: Kind, ours: u64, theirs: u64 },
    #[error("link frame {kind:?}: malformed body: {what}")]
    Body { kind: Kind, what: String },
    #[error("link protocol violation: {0}")]
    Protocol(String),
    #[error("link connection closed after an earlier rejection; reconnect")]
    Closed,
    #[error("the peer is incompatible: {}", .0.join("; "))]
    Incompatible(Vec<String>),
    #[error("the peer said goodbye: {0}")]
    PeerBye(String),
    #[error("key file {path}: {what}")]
    Key { path: String, what: String },
    #[error("key file {path}: {source}")]
    KeyIo { path: String, source: std::io::Error },
    #[error("no randomness from the OS: {0}")]
    Random(String),
    #[error("link {what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error("link closed by the peer{}", if *.mid_frame { " in the middle of a frame" } else { "" })]
    Eof { mid_frame: bool },
    #[error("refusing to reuse nonce counter {counter} (last sealed {last}): this is a bug")]
    NonceReuse { counter: u64, last: u64 },
    #[error("heartbeat datagram rejected: {0}")]
    Heartbeat(String),
    #[error("heartbeat datagram failed authentication (wrong key or tampered); dropped")]
    HeartbeatMac,
    #[error("heartbeat on the {path} path: counter {counter} not above {last} (replayed or stale); dropped")]
    HeartbeatStale { path: Path, counter: u64, last: u64 },
}

/// Rejection counters, shared by the receivers of a node and read by
/// `ftnet status` (atomics: readers need no lock).
#[derive(Debug, Default)]
pub struct Counters {
    pub rejected_mac: AtomicU64,
    pub rejected_version: AtomicU64,
    pub rejected_oversize: AtomicU64,
    pub rejected_epoch: AtomicU64,
    pub rejected_sequence: AtomicU64,
    /// Bad magic, unknown kind or flags, malformed body, protocol violation.
    pub rejected_other: AtomicU64,
    pub heartbeat_rejected_mac: AtomicU64,
    pub heartbeat_replayed: AtomicU64,
    pub heartbeat_rejected_other: AtomicU64,
}

/// A copy of [`Counters`] for status output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterSnapshot {
    pub rejected_mac: u64,
    pub rejected_version: u64,
    pub rejected_oversize: u64,
    pub rejected_epoch: u64,
    pub rejected_sequence: u64,
    pub rejected_other: u64,
    pub heartbeat_rejected_mac: u64,
    pub heartbeat_replayed: u64,
    pub heartbeat_rejected_other: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            rejected_mac: g(&self.rejected_mac),
            rejected_version: g(&self.rejected_version),
            rejected_oversize: g(&self.rejected_oversize),
            rejected_epoch: g(&self.rejected_epoch),
            rejected_sequence: g(&self.rejected_sequence),
            rejected_other: g(&self.rejected_other),
            heartbeat_rejected_mac: g(&self.heartbeat_rejected_mac),
            heartbeat_replayed: g(&self.heartbeat_replayed),
            heartbeat_rejected_other: g(&self.heartbeat_rejected_other),
        }
    }

    /// Counts a rejected stream frame under the counter its error belongs to.
    pub(crate) fn count(&self, e: &LinkError) {
        let c = match e {
            LinkError::BadMac { .. } => &self.rejected_mac,
            LinkError::Version { .. } => &self.rejected_version,
            LinkError::Oversize { .. } => &self.rejected_oversize,
            LinkError::StaleEpoch { .. } => &self.rejected_epoch,
            LinkError::Sequence { .. } => &self.rejected_sequence,
            LinkError::HeartbeatMac => &self.heartbeat_rejected_mac,
            LinkError::HeartbeatStale { .. } => &self.heartbeat_replayed,
            LinkError::Heartbeat(_) => &self.heartbeat_rejected_other,
            _ => &self.rejected_other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

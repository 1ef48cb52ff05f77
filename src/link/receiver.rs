//! The receiving side of the link, sans-IO: verify, decode, order, epoch.
//!
//! A [`Receiver`] outlives connections: it knows the next stream position
//! it expects (what it acknowledges) and its own epoch. Per connection it
//! gets an [`Opener`] ([`Receiver::attach`]) and then decodes frames from
//! the bytes the caller read ([`Receiver::decode`]).
//!
//! Order of checks for one frame (each failure counted, the connection
//! poisoned, see the [rejection policy](super)):
//! 1. header: magic, version, kind, flags, length against the kind's limit,
//!    before anything is allocated — as soon as the deciding bytes are in;
//! 2. wait for the whole frame (`Ok(None)`: "need more bytes");
//! 3. authentication of header and body: on failure the frame is dropped,
//!    never parsed further;
//! 4. state: the first frame of a connection is a hello, and only the first;
//! 5. sequence: hello 0; stream frames exactly the next position (a lower
//!    one is a replay, a higher one a gap or reordering); control frames
//!    the next control counter;
//! 6. epoch: older than ours is rejected; newer is delivered as
//!    [`Incoming::NewerEpoch`] (the caller must stop serving at once);
//! 7. body decoding (postcard for structured kinds).

use super::crypto::Opener;
use super::msg::{Ack, Message};
use super::wire::{Header, Kind, Space};
use super::{Counters, LinkError};
use std::sync::Arc;

/// An authenticated, in-order frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub epoch: u64,
    /// Stream position, control counter, or 0 for a hello.
    pub seq: u64,
    pub msg: Message,
}

/// What [`Receiver::decode`] delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    Frame(Frame),
    /// A valid frame whose epoch is newer than ours: we were superseded and
    /// must stop serving at once. Our epoch is not changed (call
    /// [`Receiver::set_epoch`] to accept the new one).
    NewerEpoch {
        ours: u64,
        frame: Frame,
    },
}

impl Incoming {
    pub fn frame(&self) -> &Frame {
        match self {
            Incoming::Frame(f) | Incoming::NewerEpoch { frame: f, .. } => f,
        }
    }

    pub fn into_frame(self) -> Frame {
        match self {
            Incoming::Frame(f) | Incoming::NewerEpoch { frame: f, .. } => f,
        }
    }
}

struct Conn {
    opener: Opener,
    hello_seen: bool,
    control: u64,
    poisoned: bool,
}

/// See the module docs.
pub struct Receiver {
    epoch: u64,
    next: u64,
    counters: Arc<Counters>,
    conn: Option<Conn>,
}

impl Receiver {
    /// A receiver expecting stream position `start` next, at `epoch`.
    pub fn new(start: u64, epoch: u64, counters: Arc<Counters>) -> Receiver {
        Receiver { epoch, next: start, counters, conn: None }
    }

    /// Our epoch (never lowered).
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = self.epoch.max(epoch);
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Every stream frame before this position has been received.
    pub fn position(&self) -> u64 {
        self.next
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// The ack to send: everything received, and `applied` (clamped to
    /// what was received).
    pub fn ack(&self, applied: u64) -> Ack {
        Ack { received: self.next, applied: applied.min(self.next) }
    }

    /// A new connection: its first frame must be a hello.
    pub fn attach(&mut self, opener: Opener) {
        self.conn = Some(Conn { opener, hello_seen: false, control: 0, poisoned: false });
    }

    pub fn detach(&mut self) {
        self.conn = None;
    }

    /// Decodes the frame at the start of `buf`: `Ok(None)` when more bytes
    /// are needed, else the frame and how many bytes it used. After an
    /// error the connection is unusable ([`LinkError::Closed`]).
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Incoming, usize)>, LinkError> {
        let Some(conn) = self.conn.as_mut() else { return Err(LinkError::Closed) };
        if conn.poisoned {
            return Err(LinkError::Closed);
        }
        let r = Self::check(conn, self.epoch, &mut self.next, buf);
        if let Err(e) = &r {
            conn.poisoned = true;
            self.counters.count(e);
        }
        r
    }

    fn check(conn: &mut Conn, epoch: u64, next: &mut u64, buf: &[u8]) -> Result<Option<(Incoming, usize)>, LinkError> {
        let Some(h) = Header::parse_prefix(buf)? else { return Ok(None) };
        let len = h.frame_len();
        let Some(frame) = buf.get(..len) else { return Ok(None) };
        if h.kind == Kind::Greeting {
            return Err(LinkError::Protocol("a greeting after the handshake".into()));
        }
        let Some(body) = conn.opener.open(&h, frame) else {
            return Err(LinkError::BadMac { kind: h.kind, seq: h.seq });
        };
        match (conn.hello_seen, h.kind) {
            (false, Kind::Hello) => conn.hello_seen = true,
            (false, k) => return Err(LinkError::Protocol(format!("{k:?} before the hello"))),
            (true, Kind::Hello) => return Err(LinkError::Protocol("a second hello".into())),
            (true, _) => {}
        }
        let expected = match h.kind.space() {
            Space::Handshake => 0,
            Space::Stream => *next,
            Space::Control => conn.control,
        };
        if h.seq != expected {
            return Err(LinkError::Sequence { kind: h.kind, expected, found: h.seq });
        }
        if h.epoch < epoch {
            return Err(LinkError::StaleEpoch { kind: h.kind, ours: epoch, theirs: h.epoch });
        }
        let msg = Message::decode(h.kind, body)?;
        match h.kind.space() {
            Space::Handshake => {}
            Space::Stream => *next += 1,
            Space::Control => conn.control += 1,
        }
        let frame = Frame { epoch: h.epoch, seq: h.seq, msg };
        let incoming =
            if h.epoch > epoch { Incoming::NewerEpoch { ours: epoch, frame } } else { Incoming::Frame(frame) };
        Ok(Some((incoming, len)))
    }
}

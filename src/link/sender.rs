//! The sending side of the link, sans-IO: positions, retention, acks and
//! flow control.
//!
//! A [`Sender`] outlives connections. Every stream message gets the next
//! *position* (its `seq`), is retained until the peer acknowledges it, and
//! is sealed when a connection is open ([`Sender::transmit`]). After a
//! reconnect, [`Sender::resume`] rewinds to what the peer reports it has,
//! and the retained frames go out again under the new session's keys.
//!
//! Output commit: stamp a held segment with [`Sender::position`] when it
//! appears; release it once [`Sender::acked_through`] `>=` that stamp
//! (every frame before the stamp is then at the backup).
//!
//! Flow control: [`Sender::should_wait`] says when the backup is more than
//! a [`LagBound`] behind in *applied* frames, bytes or age; the primary then
//! holds its replica back, which bounds both the retained memory and the
//! promote drain.
//!
//! Invariants:
//! - positions are dense and increase by one per stream frame, across
//!   connections; `applied <= acked <= position`;
//! - an ack that claims more than was sent is a protocol error, never
//!   believed;
//! - frames `[acked, position)` are retained; frames before `acked` are not;
//! - within a connection, a position is sealed at most once.

use super::LinkError;
use super::crypto::Sealer;
use super::msg::{Ack, Hello, Message, encode_hello};
use super::wire::{Kind, Space};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far the backup may fall behind (in applied frames) before the primary
/// waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LagBound {
    pub frames: u64,
    pub bytes: u64,
    /// Age of the oldest frame not yet applied.
    pub age: Duration,
}

impl Default for LagBound {
    fn default() -> Self {
        LagBound { frames: 1 << 20, bytes: 256 << 20, age: Duration::from_secs(2) }
    }
}

/// The backup's lag as the primary sees it (for status and flow control).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lag {
    /// Next position to be queued.
    pub position: u64,
    pub acked: u64,
    pub applied: u64,
    pub unacked_frames: u64,
    pub unacked_bytes: u64,
    pub unapplied_frames: u64,
    pub unapplied_bytes: u64,
    /// How long the oldest frame not yet applied has been queued.
    pub oldest_unapplied: Option<Duration>,
}

struct Meta {
    /// Body bytes queued up to and including this frame.
    end_bytes: u64,
    queued_at: Instant,
}

struct Retained {
    kind: Kind,
    body: Vec<u8>,
}

struct Conn {
    sealer: Sealer,
    /// Next position to seal; `None` until the peer's hello said where.
    cursor: Option<u64>,
    control: u64,
    pending_ack: Option<Ack>,
}

/// See the module docs.
pub struct Sender {
    epoch: u64,
    next: u64,
    acked: u64,
    applied: u64,
    /// Cumulative body bytes at `applied`, `acked` and `next`.
    applied_bytes: u64,
    acked_bytes: u64,
    total_bytes: u64,
    /// Frames `[applied, next)`.
    meta: VecDeque<Meta>,
    /// Frames `[acked, next)`.
    retained: VecDeque<Retained>,
    conn: Option<Conn>,
}

impl Sender {
    /// A sender whose first frame will have position `start` (0 for a
    /// fresh stream), stamping frames with `epoch`.
    pub fn new(start: u64, epoch: u64) -> Sender {
        Sender {
            epoch,
            next: start,
            acked: start,
            applied: start,
            applied_bytes: 0,
            acked_bytes: 0,
            total_bytes: 0,
            meta: VecDeque::new(),
            retained: VecDeque::new(),
            conn: None,
        }
    }

    /// Frames sealed from now on carry `epoch` (never lowered).
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = self.epoch.max(epoch);
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Position of the next stream frame (= frames queued so far).
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The peer has every stream frame before this position.
    pub fn acked_through(&self) -> u64 {
        self.acked
    }

    /// The peer has applied every stream frame before this position.
    pub fn applied_through(&self) -> u64 {
        self.applied
    }

    /// Whether a connection is attached and resumed (frames flow).
    pub fn is_open(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.cursor.is_some())
    }

    /// Queues a stream message (log, segment, fence, promoted); returns its
    /// position. Hellos, acks and byes have their own calls.
    pub fn push(&mut self, kind: Kind, body: Vec<u8>, now: Instant) -> Result<u64, LinkError> {
        if kind.space() != Space::Stream {
            return Err(LinkError::Protocol(format!("{kind:?} is not a stream message")));
        }
        if body.len() as u64 > u64::from(kind.max_body()) {
            return Err(LinkError::Oversize { kind, len: body.len() as u64, max: u64::from(kind.max_body()) });
        }
        let pos = self.next;
        self.total_bytes += body.len() as u64;
        self.meta.push_back(Meta { end_bytes: self.total_bytes, queued_at: now });
        self.retained.push_back(Retained { kind, body });
        self.next += 1;
        Ok(pos)
    }

    /// [`Sender::push`] of a typed message.
    pub fn push_message(&mut self, msg: &Message, now: Instant) -> Result<u64, LinkError> {
        self.push(msg.kind(), msg.encode(), now)
    }

    /// A new connection: seal with `sealer` from now on. Nothing of the
    /// stream is sent until [`Sender::resume`].
    pub fn attach(&mut self, sealer: Sealer) {
        self.conn = Some(Conn { sealer, cursor: None, control: 0, pending_ack: None });
    }

    /// The connection is gone.
    pub fn detach(&mut self) {
        self.conn = None;
    }

    /// Seals our hello into `out` (once per connection, first).
    pub fn hello(&mut self, hello: &Hello, out: &mut Vec<u8>) -> Result<(), LinkError> {
        let epoch = self.epoch;
        let c = self.conn.as_mut().ok_or_else(|| LinkError::Protocol("hello without a connection".into()))?;
        c.sealer.seal(Kind::Hello, epoch, 0, &encode_hello(hello), out)
    }

    /// The peer has every frame before `from` (its hello's `resume_from`):
    /// acknowledge those and send from there.
    pub fn resume(&mut self, from: u64) -> Result<(), LinkError> {
        if from < self.acked {
            return Err(LinkError::Protocol(format!(
                "the peer resumes at position {from}, but frames before {} were acknowledged and are no longer \
                 kept: the peer lost its state and must start over",
                self.acked
            )));
        }
        if from > self.next {
            return Err(LinkError::Protocol(format!(
                "the peer claims to have {from} frames, but only {} were sent: it paired with another primary",
                self.next
            )));
        }
        let Some(c) = self.conn.as_mut() else {
            return Err(LinkError::Protocol("resume without a connection".into()));
        };
        c.cursor = Some(from);
        self.advance_acked(from);
        Ok(())
    }

    /// Seals a bye into `out` at once (it may follow a refused hello; the
    /// caller closes the connection after writing it).
    pub fn bye(&mut self, reason: &str, out: &mut Vec<u8>) -> Result<(), LinkError> {
        let epoch = self.epoch;
        let c = self.conn.as_mut().ok_or_else(|| LinkError::Protocol("bye without a connection".into()))?;
        c.sealer.seal(Kind::Bye, epoch, c.control, &Message::Bye(super::msg::Bye::new(reason)).encode(), out)?;
        c.control += 1;
        Ok(())
    }

    /// Sends `ack` with the next transmit (a later ack replaces it).
    pub fn queue_ack(&mut self, ack: Ack) {
        if let Some(c) = self.conn.as_mut() {
            c.pending_ack = Some(ack);
        }
    }

    /// Whether a stream frame or an ack waits to be transmitted.
    pub fn has_untransmitted(&self) -> bool {
        match &self.conn {
            Some(Conn { cursor: Some(c), pending_ack, .. }) => {
                pending_ack.is_some() || (*c).max(self.acked) < self.next
            }
            _ => false,
        }
    }

    /// Seals the pending ack and every unsent stream frame into `out`;
    /// returns the number of frames sealed (0 when no connection is open).
    pub fn transmit(&mut self, out: &mut Vec<u8>) -> Result<usize, LinkError> {
        let epoch = self.epoch;
        let Some(c) = self.conn.as_mut() else { return Ok(0) };
        let Some(cursor) = c.cursor else { return Ok(0) };
        let mut n = 0;
        if let Some(ack) = c.pending_ack.take() {
            c.sealer.seal(Kind::Ack, epoch, c.control, &Message::Ack(ack).encode(), out)?;
            c.control += 1;
            n += 1;
        }
        let skip = usize::try_from(cursor.saturating_sub(self.acked)).unwrap_or(usize::MAX);
        let mut pos = cursor.max(self.acked);
        for r in self.retained.iter().skip(skip) {
            c.sealer.seal(r.kind, epoch, pos, &r.body, out)?;
            pos += 1;
            n += 1;
            c.cursor = Some(pos);
        }
        Ok(n)
    }

    /// Applies the peer's ack.
    pub fn on_ack(&mut self, ack: Ack) -> Result<(), LinkError> {
        if ack.received > self.next || ack.applied > ack.received {
            return Err(LinkError::Protocol(format!(
                "ack of received {} / applied {} but only {} frames were sent",
                ack.received, ack.applied, self.next
            )));
        }
        self.advance_acked(ack.received);
        self.note_applied(ack.applied);
        Ok(())
    }

    /// The peer's applied position from a heartbeat (it may run ahead of
    /// the acks seen so far: it is clamped to them).
    pub fn note_applied(&mut self, applied: u64) {
        let to = applied.min(self.acked);
        while self.applied < to {
            match self.meta.pop_front() {
                Some(m) => self.applied_bytes = m.end_bytes,
                None => break,
            }
            self.applied += 1;
        }
    }

    fn advance_acked(&mut self, to: u64) {
        let to = to.min(self.next);
        if to <= self.acked {
            return;
        }
        let n = usize::try_from(to - self.acked).unwrap_or(usize::MAX);
        self.retained.drain(..n.min(self.retained.len()));
        let idx = usize::try_from(to - self.applied - 1).unwrap_or(usize::MAX);
        self.acked_bytes = self.meta.get(idx).map_or(self.total_bytes, |m| m.end_bytes);
        self.acked = to;
        if let Some(c) = self.conn.as_mut()
            && let Some(cur) = c.cursor
        {
            c.cursor = Some(cur.max(to));
        }
    }

    pub fn lag(&self, now: Instant) -> Lag {
        Lag {
            position: self.next,
            acked: self.acked,
            applied: self.applied,
            unacked_frames: self.next - self.acked,
            unacked_bytes: self.total_bytes - self.acked_bytes,
            unapplied_frames: self.next - self.applied,
            unapplied_bytes: self.total_bytes - self.applied_bytes,
            oldest_unapplied: self.meta.front().map(|m| now.saturating_duration_since(m.queued_at)),
        }
    }

    /// True when the peer is more than `bound` behind: the primary should
    /// hold its replica until acks catch up.
    pub fn should_wait(&self, bound: &LagBound, now: Instant) -> bool {
        let l = self.lag(now);
        l.unapplied_frames > bound.frames
            || l.unapplied_bytes > bound.bytes
            || l.oldest_unapplied.is_some_and(|a| a > bound.age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::crypto::{Handshake, Key};
    use crate::link::{Frame, Incoming, Receiver, Side};
    use std::sync::Arc;

    fn pair() -> (Sealer, crate::link::crypto::Opener) {
        let key = Key::from_bytes(&[5; 32]).unwrap();
        let a = Handshake::new(Side::Initiator, &key, 0, [1; 32]);
        let b = Handshake::new(Side::Responder, &key, 0, [2; 32]);
        (a.finish(b.greeting()).unwrap().tx, b.finish(a.greeting()).unwrap().rx)
    }

    #[test]
    fn positions_acks_and_lag() {
        let t0 = Instant::now();
        let mut s = Sender::new(0, 1);
        assert_eq!(s.lag(t0), Lag::default());
        for i in 0..10u64 {
            let at = t0 + Duration::from_millis(i);
            assert_eq!(s.push(Kind::Log, vec![0; 100], at).unwrap(), i);
        }
        assert_eq!((s.position(), s.acked_through(), s.applied_through()), (10, 0, 0));
        let l = s.lag(t0 + Duration::from_millis(50));
        assert_eq!((l.unacked_frames, l.unacked_bytes, l.unapplied_bytes), (10, 1000, 1000));
        assert_eq!(l.oldest_unapplied, Some(Duration::from_millis(50)));

        s.on_ack(Ack { received: 6, applied: 2 }).unwrap();
        let l = s.lag(t0 + Duration::from_millis(50));
        assert_eq!((l.acked, l.applied, l.unacked_frames, l.unacked_bytes), (6, 2, 4, 400));
        assert_eq!((l.unapplied_frames, l.unapplied_bytes), (8, 800));
        assert_eq!(l.oldest_unapplied, Some(Duration::from_millis(48)));
        // Stale acks change nothing; heartbeat progress is clamped to acks.
        s.on_ack(Ack { received: 3, applied: 1 }).unwrap();
        assert_eq!((s.acked_through(), s.applied_through()), (6, 2));
        s.note_applied(9);
        assert_eq!(s.applied_through(), 6);
        // Lies are refused.
        assert!(s.on_ack(Ack { received: 11, applied: 0 }).is_err());
        assert!(s.on_ack(Ack { received: 7, applied: 8 }).is_err());
        s.on_ack(Ack { received: 10, applied: 10 }).unwrap();
        let l = s.lag(t0);
        assert_eq!((l.unacked_frames, l.unapplied_frames, l.unapplied_bytes, l.oldest_unapplied), (0, 0, 0, None));
        // Hellos and acks are not stream messages; limits apply.
        assert!(s.push(Kind::Ack, vec![], t0).is_err());
        assert!(s.push(Kind::Hello, vec![], t0).is_err());
        assert!(matches!(s.push(Kind::Segment, vec![0; 70_000], t0), Err(LinkError::Oversize { .. })));
        assert_eq!(s.position(), 10);
    }

    #[test]
    fn flow_control_bounds() {
        let t0 = Instant::now();
        let bound = LagBound { frames: 5, bytes: 1000, age: Duration::from_millis(100) };
        let mut s = Sender::new(0, 0);
        for _ in 0..5 {
            s.push(Kind::Log, vec![0; 10], t0).unwrap();
        }
        assert!(!s.should_wait(&bound, t0));
        s.push(Kind::Log, vec![0; 10], t0).unwrap();
        assert!(s.should_wait(&bound, t0), "6 frames behind");
        s.on_ack(Ack { received: 6, applied: 1 }).unwrap();
        assert!(!s.should_wait(&bound, t0), "acked but only applying counts: 5 behind is fine");
        assert!(s.should_wait(&bound, t0 + Duration::from_millis(101)), "too old");
        s.on_ack(Ack { received: 6, applied: 6 }).unwrap();
        assert!(!s.should_wait(&bound, t0 + Duration::from_secs(10)));
        s.push(Kind::Segment, vec![0; 1001], t0).unwrap();
        assert!(s.should_wait(&bound, t0), "too many bytes");
    }

    #[test]
    fn transmit_resume_and_retransmit() {
        let t0 = Instant::now();
        let mut s = Sender::new(0, 3);
        let counters = Arc::new(crate::link::Counters::default());
        for i in 0..5u8 {
            s.push(Kind::Log, vec![i; 3], t0).unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(s.transmit(&mut out).unwrap(), 0, "no connection");
        let (tx, rx) = pair();
        s.attach(tx);
        s.hello(&crate::link::msg::tests::hello(crate::link::Role::Primary, "a"), &mut out).unwrap();
        assert_eq!(s.transmit(&mut out).unwrap(), 0, "not resumed yet");
        assert!(s.resume(6).is_err(), "the peer cannot have more than was sent");
        s.resume(2).unwrap();
        assert_eq!(s.acked_through(), 2);
        s.queue_ack(Ack { received: 0, applied: 0 });
        assert_eq!(s.transmit(&mut out).unwrap(), 4, "ack + frames 2, 3, 4");
        assert_eq!(s.transmit(&mut out).unwrap(), 0, "nothing twice");
        let mut r = Receiver::new(2, 3, counters);
        r.attach(rx);
        let (hello, mut at) = r.decode(&out).unwrap().unwrap();
        assert!(matches!(hello, Incoming::Frame(Frame { msg: Message::Hello(_), .. })));
        let mut got = Vec::new();
        while let Some((inc, used)) = r.decode(&out[at..]).unwrap() {
            at += used;
            let Incoming::Frame(f) = inc else { panic!() };
            got.push((f.seq, f.msg));
        }
        assert_eq!(got[0], (0, Message::Ack(Ack::default())));
        assert_eq!(
            got[1..],
            [(2, Message::Log(vec![2; 3])), (3, Message::Log(vec![3; 3])), (4, Message::Log(vec![4; 3]))]
        );
        assert!(s.resume(1).is_err(), "frames before 2 are gone");
    }
}

//! Deferred NFQUEUE verdicts, sans-IO: which queued packets have been
//! decided, and the fewest verdict messages that apply those decisions.
//!
//! A packet enters with [`VerdictQueue::push`], either decided at once or
//! held; a held packet is decided later with [`VerdictQueue::decide`]
//! (output commit will hold outbound segments until the backup acknowledges
//! them). [`VerdictQueue::emit`] turns decisions into messages.
//!
//! Invariants:
//! - a batch verdict (`NFQNL_MSG_VERDICT_BATCH`, which the kernel applies to
//!   *every* queued packet with an id up to the given one) is emitted only
//!   for a run of decided packets at the front of the pending list, all with
//!   the same verdict, so it can never touch a held packet: every packet with
//!   a lower id was delivered to us earlier and is already decided and
//!   emitted, and packets not yet delivered to us have higher ids;
//! - a decided packet behind a held one gets a single verdict;
//! - ids are compared by wrapping distance from the oldest pending id (the
//!   kernel's ids are a per-queue `u32` counter), so wrap-around is harmless;
//! - every pushed id is emitted exactly once; unknown or already decided ids
//!   are reported, never guessed.

use std::collections::VecDeque;

use super::nfqueue::{NF_ACCEPT, NF_DROP, verdict};

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it continue through the stack.
    Accept,
    /// Drop it (TCP retransmits).
    Drop,
}

impl Verdict {
    fn raw(self) -> u32 {
        match self {
            Verdict::Accept => NF_ACCEPT,
            Verdict::Drop => NF_DROP,
        }
    }
}

/// How verdicts are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerdictMode {
    /// Batch verdicts for runs at the front (one message per run).
    #[default]
    Batch,
    /// One message per packet, each sent on its own (one `sendmsg` per
    /// packet, as a per-packet consumer such as the `nfq` crate does); for
    /// comparison.
    PerPacket,
}

/// A problem with a [`VerdictQueue::decide`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// No pending packet has this id.
    #[error("packet id {0} is not pending")]
    NotPending(u32),
    /// The packet was already decided.
    #[error("packet id {0} was already decided")]
    AlreadyDecided(u32),
}

/// What [`VerdictQueue::emit`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Emitted {
    /// Verdict messages appended.
    pub messages: usize,
    /// Packets they cover.
    pub accepted: usize,
    /// Packets dropped.
    pub dropped: usize,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    id: u32,
    verdict: Option<Verdict>,
}

/// Packets delivered by one queue and not yet given a verdict.
#[derive(Debug, Clone)]
pub struct VerdictQueue {
    queue: u16,
    mode: VerdictMode,
    pending: VecDeque<Pending>,
    held: usize,
    /// Decisions made while a held packet was ahead of them (a hint that
    /// [`VerdictQueue::emit`] must look past the front).
    decided_behind_held: usize,
}

impl VerdictQueue {
    /// An empty list for queue number `queue`.
    pub fn new(queue: u16, mode: VerdictMode) -> Self {
        VerdictQueue { queue, mode, pending: VecDeque::new(), held: 0, decided_behind_held: 0 }
    }

    /// How verdicts are sent.
    pub fn mode(&self) -> VerdictMode {
        self.mode
    }

    /// Packets pending (held or decided but not emitted).
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Nothing pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Packets held (not decided).
    pub fn held(&self) -> usize {
        self.held
    }

    /// A packet delivered by the kernel, in delivery order; `None` holds it.
    pub fn push(&mut self, id: u32, verdict: Option<Verdict>) {
        match verdict {
            None => self.held += 1,
            Some(_) if self.held > 0 => self.decided_behind_held += 1,
            Some(_) => {}
        }
        self.pending.push_back(Pending { id, verdict });
    }

    fn index_of(&self, id: u32) -> Option<usize> {
        let front = self.pending.front()?.id;
        let key = id.wrapping_sub(front);
        self.pending.binary_search_by_key(&key, |p| p.id.wrapping_sub(front)).ok()
    }

    /// Decides a held packet.
    pub fn decide(&mut self, id: u32, verdict: Verdict) -> Result<(), DecideError> {
        let i = self.index_of(id).ok_or(DecideError::NotPending(id))?;
        let p = &mut self.pending[i];
        if p.verdict.is_some() {
            return Err(DecideError::AlreadyDecided(id));
        }
        p.verdict = Some(verdict);
        self.held = self.held.saturating_sub(1);
        if i > 0 {
            self.decided_behind_held += 1;
        }
        Ok(())
    }

    /// Decides every held packet (e.g. on shutdown).
    pub fn decide_all(&mut self, verdict: Verdict) {
        for p in self.pending.iter_mut().filter(|p| p.verdict.is_none()) {
            p.verdict = Some(verdict);
        }
        self.held = 0;
        self.decided_behind_held = self.pending.len();
    }

    /// Appends verdict messages for every decided packet to `out` and forgets
    /// those packets.
    pub fn emit(&mut self, out: &mut Vec<u8>) -> Emitted {
        let mut e = Emitted::default();
        let count = |e: &mut Emitted, v: Verdict, n: usize| match v {
            Verdict::Accept => e.accepted += n,
            Verdict::Drop => e.dropped += n,
        };
        // Runs of decided packets at the front.
        while let Some(Pending { verdict: Some(v), .. }) = self.pending.front().copied() {
            let mut n = 0;
            let mut last = 0;
            while let Some(p) = self.pending.front().copied() {
                if p.verdict != Some(v) {
                    break;
                }
                self.pending.pop_front();
                last = p.id;
                n += 1;
                if self.mode == VerdictMode::PerPacket {
                    verdict(out, self.queue, p.id, v.raw(), false);
                    e.messages += 1;
                }
            }
            if self.mode == VerdictMode::Batch {
                verdict(out, self.queue, last, v.raw(), true);
                e.messages += 1;
            }
            count(&mut e, v, n);
        }
        // Decided packets behind a held one: single verdicts.
        if self.decided_behind_held > 0 {
            let queue = self.queue;
            self.pending.retain(|p| match p.verdict {
                Some(v) => {
                    verdict(out, queue, p.id, v.raw(), false);
                    e.messages += 1;
                    count(&mut e, v, 1);
                    false
                }
                None => true,
            });
            self.decided_behind_held = 0;
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::super::nfqueue::{VerdictMsg, parse_verdicts};
    use super::*;

    fn emitted(q: &mut VerdictQueue) -> (Vec<VerdictMsg>, Emitted) {
        let mut out = Vec::new();
        let e = q.emit(&mut out);
        (parse_verdicts(&out).unwrap(), e)
    }

    fn v(id: u32, verdict: u32, batch: bool) -> VerdictMsg {
        VerdictMsg { queue: 4, id, verdict, batch }
    }

    #[test]
    fn runs_at_the_front_become_batches() {
        let mut q = VerdictQueue::new(4, VerdictMode::Batch);
        for id in 10..15 {
            q.push(id, Some(Verdict::Accept));
        }
        q.push(15, Some(Verdict::Drop));
        q.push(16, Some(Verdict::Accept));
        let (msgs, e) = emitted(&mut q);
        assert_eq!(msgs, vec![v(14, NF_ACCEPT, true), v(15, NF_DROP, true), v(16, NF_ACCEPT, true)]);
        assert_eq!(e, Emitted { messages: 3, accepted: 6, dropped: 1 });
        assert!(q.is_empty());
        assert_eq!(emitted(&mut q).0, vec![]);
    }

    #[test]
    fn per_packet_mode_sends_one_each() {
        let mut q = VerdictQueue::new(4, VerdictMode::PerPacket);
        for id in 1..4 {
            q.push(id, Some(Verdict::Accept));
        }
        let (msgs, e) = emitted(&mut q);
        assert_eq!(msgs, vec![v(1, NF_ACCEPT, false), v(2, NF_ACCEPT, false), v(3, NF_ACCEPT, false)]);
        assert_eq!(e.messages, 3);
    }

    #[test]
    fn a_held_packet_is_never_covered_by_a_batch() {
        let mut q = VerdictQueue::new(4, VerdictMode::Batch);
        q.push(1, Some(Verdict::Accept));
        q.push(2, None);
        q.push(3, Some(Verdict::Accept));
        q.push(4, None);
        q.push(5, Some(Verdict::Drop));
        let (msgs, _) = emitted(&mut q);
        // 1 as a batch (nothing below it), 3 and 5 singly; 2 and 4 stay held.
        assert_eq!(msgs, vec![v(1, NF_ACCEPT, true), v(3, NF_ACCEPT, false), v(5, NF_DROP, false)]);
        assert_eq!(q.held(), 2);
        assert_eq!(q.decide(3, Verdict::Accept), Err(DecideError::NotPending(3)));
        q.decide(4, Verdict::Accept).unwrap();
        assert_eq!(q.decide(4, Verdict::Drop), Err(DecideError::AlreadyDecided(4)));
        let (msgs, _) = emitted(&mut q);
        assert_eq!(msgs, vec![v(4, NF_ACCEPT, false)]);
        q.push(6, Some(Verdict::Accept));
        q.decide(2, Verdict::Accept).unwrap();
        let (msgs, e) = emitted(&mut q);
        assert_eq!(msgs, vec![v(6, NF_ACCEPT, true)]);
        assert_eq!(e.accepted, 2);
        assert!(q.is_empty());
    }

    #[test]
    fn ids_wrap() {
        let mut q = VerdictQueue::new(4, VerdictMode::Batch);
        for id in [u32::MAX - 1, u32::MAX, 0, 1] {
            q.push(id, None);
        }
        q.decide(0, Verdict::Drop).unwrap();
        q.decide(u32::MAX - 1, Verdict::Accept).unwrap();
        q.decide(u32::MAX, Verdict::Accept).unwrap();
        assert_eq!(q.decide(2, Verdict::Accept), Err(DecideError::NotPending(2)));
        let (msgs, _) = emitted(&mut q);
        assert_eq!(msgs, vec![v(u32::MAX, NF_ACCEPT, true), v(0, NF_DROP, true)]);
        q.decide_all(Verdict::Drop);
        assert_eq!(emitted(&mut q).0, vec![v(1, NF_DROP, true)]);
    }
}

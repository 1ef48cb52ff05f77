//! Output commit on the primary: no segment leaves for a client until the
//! backup has everything that existed when the segment appeared.
//!
//! Every segment to or from the VIP's service ports passes through NFQUEUE
//! (the rules of [`super::rules`]: inbound at INPUT, outbound at the last
//! hook, POSTROUTING). Each is copied to the backup through a [`Forward`],
//! which returns the copy's position in the replication stream. Inbound
//! segments are accepted at once (they only feed our own kernel); outbound
//! ones are held until the backup acknowledged that position. Because the
//! log and the segments share one stream, a held segment is released only
//! after the backup has every log record and every inbound segment that
//! preceded it — including the replica's close or shutdown behind a FIN.
//!
//! Invariants:
//! - a held segment is released only when `acked() >= its position` (mode
//!   [`Mode::Commit`]), all at once when the node may go on alone
//!   ([`Mode::Solo`]; with a witness only before the lease's deadline,
//!   checked per packet on CLOCK_BOOTTIME, else dropped), and never when
//!   fenced ([`Mode::Fenced`]: dropped);
//! - held segments are released in the order they were queued;
//! - no `--queue-bypass`: if this process dies, the VIP's packets are
//!   dropped by the kernel, so a dead primary's kernel never speaks for its
//!   replica;
//! - the rules are removed when the loop stops (also on drop).

use super::capture::CaptureError;
use super::forward::FrameHeader;
use super::nfqueue::{HOOK_LOCAL_IN, HOOK_LOCAL_OUT, HOOK_POST_ROUTING, HOOK_PRE_ROUTING, PacketMsg};
use super::queue::{Disposition, Handler, Notice, Queue, QueueConfig};
use super::rules::{Rules, RulesConfig};
use super::verdict::{Verdict, VerdictMode, VerdictQueue};
use crate::sys::fd as sfd;
use crate::tcpstate::Direction;
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::thread::JoinHandle;

/// Where copies of segments go (the replication link).
pub trait Forward: Send {
    /// Queues a copy for the backup; returns its position in the stream.
    fn forward(&mut self, frame: Vec<u8>) -> u64;
    /// Sends what is queued now (called once per batch that holds output:
    /// the log records and segments before it travel in the same send).
    fn flush(&mut self);
    /// The stream position the backup has acknowledged receiving.
    fn acked(&self) -> u64;
}

/// What happens to outbound segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Hold each until the backup acknowledged it.
    Commit = 0,
    /// No backup to wait for (the node holds the right to go on alone):
    /// release everything, forward nothing.
    Solo = 1,
    /// This node must not speak for its replica: drop everything.
    Fenced = 2,
}

#[derive(Debug, Default)]
pub struct CommitCounters {
    pub inbound: AtomicU64,
    pub outbound: AtomicU64,
    pub held: AtomicU64,
    pub released: AtomicU64,
    pub dropped: AtomicU64,
    pub overruns: AtomicU64,
    /// Longest time a segment waited for its acknowledgement (ns).
    pub max_hold_ns: AtomicU64,
    /// When the oldest segment still held was queued (CLOCK_MONOTONIC ns;
    /// 0: nothing held).
    pub oldest_held_ns: AtomicU64,
}

/// A snapshot of [`CommitCounters`].
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct CommitStats {
    pub inbound: u64,
    pub outbound: u64,
    pub held_now: u64,
    pub released: u64,
    pub dropped: u64,
    pub overruns: u64,
    /// How long the oldest segment still held has waited.
    pub oldest_held_ms: u64,
    pub max_hold_us: u64,
}

/// How to run output commit.
#[derive(Clone, Debug)]
pub struct CommitConfig {
    pub queue: u16,
    pub vip: Ipv4Addr,
    pub ports: Vec<u16>,
    pub iptables: String,
}

struct Hold {
    counters: Arc<CommitCounters>,
    mode: Arc<AtomicU8>,
    /// Solo output flows only before this CLOCK_BOOTTIME ns (a witness's
    /// lease; 0: the lease is not held); `None`: no witness, no limit.
    solo_until: Option<Arc<AtomicU64>>,
    forward: Box<dyn Forward>,
    /// Held outbound packets: (packet id, stream position, queued at ns).
    held: VecDeque<(u32, u64, u64)>,
    seq: u64,
    /// Output was forwarded in this batch and not flushed yet.
    unflushed: bool,
}

fn mode_of(v: u8) -> Mode {
    match v {
        0 => Mode::Commit,
        1 => Mode::Solo,
        _ => Mode::Fenced,
    }
}

impl Hold {
    /// Alone, output flows only while the lease is held, checked here for
    /// every packet so a late main loop cannot let anything out after it.
    fn solo_open(&self) -> bool {
        self.solo_until.as_ref().is_none_or(|u| {
            let until = u.load(Ordering::Acquire);
            until != 0 && (sfd::clock_ns(libc::CLOCK_BOOTTIME).max(0) as u64) < until
        })
    }
}

impl Handler for Hold {
    fn packet(&mut self, p: &PacketMsg<'_>, now_ns: u64) -> Disposition {
        let mode = mode_of(self.mode.load(Ordering::Acquire));
        let direction = match p.hook {
            HOOK_LOCAL_IN | HOOK_PRE_ROUTING => Direction::Inbound,
            HOOK_LOCAL_OUT | HOOK_POST_ROUTING => Direction::Outbound,
            _ => return Disposition::Drop,
        };
        let c = &self.counters;
        match direction {
            Direction::Inbound => c.inbound.fetch_add(1, Ordering::Relaxed),
            Direction::Outbound => c.outbound.fetch_add(1, Ordering::Relaxed),
        };
        match mode {
            Mode::Fenced => {
                c.dropped.fetch_add(1, Ordering::Relaxed);
                return Disposition::Drop;
            }
            Mode::Solo if self.solo_open() => return Disposition::Accept,
            Mode::Solo => {
                c.dropped.fetch_add(1, Ordering::Relaxed);
                return Disposition::Drop;
            }
            Mode::Commit => {}
        }
        if !p.is_whole() {
            // A truncated copy cannot be forwarded; TCP retransmits it.
            c.dropped.fetch_add(1, Ordering::Relaxed);
            return Disposition::Drop;
        }
        self.seq += 1;
        let Ok(h) = FrameHeader::new(direction, self.seq, now_ns, p.payload) else {
            c.dropped.fetch_add(1, Ordering::Relaxed);
            return Disposition::Drop;
        };
        let mut frame = Vec::with_capacity(h.emit().len() + p.payload.len());
        frame.extend_from_slice(&h.emit());
        frame.extend_from_slice(p.payload);
        let pos = self.forward.forward(frame);
        match direction {
            Direction::Inbound => Disposition::Accept,
            Direction::Outbound => {
                self.unflushed = true;
                self.held.push_back((p.id, pos, now_ns));
                c.held.fetch_add(1, Ordering::Relaxed);
                Disposition::Hold
            }
        }
    }

    fn batch_end(&mut self, verdicts: &mut VerdictQueue) {
        if std::mem::take(&mut self.unflushed) {
            self.forward.flush();
        }
        let mode = mode_of(self.mode.load(Ordering::Acquire));
        let acked = self.forward.acked();
        let now = sfd::clock_ns(libc::CLOCK_MONOTONIC).max(0) as u64;
        let c = Arc::clone(&self.counters);
        let solo_open = mode == Mode::Solo && self.solo_open();
        while let Some(&(id, pos, at)) = self.held.front() {
            let verdict = match mode {
                Mode::Fenced => Verdict::Drop,
                Mode::Solo if solo_open => Verdict::Accept,
                Mode::Solo => Verdict::Drop,
                Mode::Commit if pos <= acked => Verdict::Accept,
                Mode::Commit => break,
            };
            self.held.pop_front();
            c.held.fetch_sub(1, Ordering::Relaxed);
            if verdict == Verdict::Accept {
                c.released.fetch_add(1, Ordering::Relaxed);
                c.max_hold_ns.fetch_max(now.saturating_sub(at), Ordering::Relaxed);
            } else {
                c.dropped.fetch_add(1, Ordering::Relaxed);
            }
            if let Err(e) = verdicts.decide(id, verdict) {
                tracing::error!("output commit: verdict bookkeeping: {e}");
            }
        }
        c.oldest_held_ns.store(self.held.front().map_or(0, |&(_, _, at)| at.max(1)), Ordering::Relaxed);
    }

    fn notice(&mut self, notice: Notice) {
        match notice {
            Notice::Overrun => {
                self.counters.overruns.fetch_add(1, Ordering::Relaxed);
            }
            other => tracing::warn!("output commit queue: {other:?}"),
        }
    }
}

/// The running output-commit loop.
pub struct Commit {
    stop: Arc<AtomicBool>,
    mode: Arc<AtomicU8>,
    wake: Arc<OwnedFd>,
    counters: Arc<CommitCounters>,
    thread: Option<JoinHandle<()>>,
    rules: Option<Rules>,
}

impl Commit {
    /// Binds the queue, starts its thread, then installs the rules.
    /// `solo_until`: with a witness, the lease's deadline
    /// ([`crate::node`]'s `Lease::deadline`), which limits [`Mode::Solo`].
    pub fn start(
        cfg: CommitConfig,
        forward: Box<dyn Forward>,
        mode: Mode,
        solo_until: Option<Arc<AtomicU64>>,
    ) -> Result<Commit, CaptureError> {
        let mut queue = Queue::open(&QueueConfig::new(cfg.queue)).map_err(CaptureError::from)?;
        let wake = Arc::new(sfd::eventfd().map_err(|e| CaptureError::Thread {
            what: "output-commit wake-up (eventfd)",
            source: std::io::Error::from_raw_os_error(e.errno.0),
        })?);
        let stop = Arc::new(AtomicBool::new(false));
        let modev = Arc::new(AtomicU8::new(mode as u8));
        let counters = Arc::new(CommitCounters::default());
        let mut handler = Hold {
            counters: counters.clone(),
            mode: modev.clone(),
            solo_until,
            forward,
            held: VecDeque::new(),
            seq: 0,
            unflushed: false,
        };
        let (stop2, wake2) = (stop.clone(), wake.clone());
        let thread = std::thread::Builder::new()
            .name("ftnet-commit".into())
            .spawn(move || {
                let mut verdicts = VerdictQueue::new(queue.num(), VerdictMode::Batch);
                loop {
                    let stopping = stop2.load(Ordering::Acquire);
                    let ready = sfd::poll_in(&[queue.fd(), wake2.as_fd()], if stopping { 0 } else { 20 });
                    if ready.get(1) == Some(&true) {
                        sfd::eventfd_drain(wake2.as_fd());
                    }
                    let mut n = 0;
                    while n < 64 {
                        match queue.process(false, &mut handler, &mut verdicts) {
                            Ok(true) => n += 1,
                            Ok(false) => break,
                            Err(e) => {
                                tracing::error!("output commit queue failed: {e}");
                                return;
                            }
                        }
                    }
                    if stopping {
                        handler.mode.store(Mode::Fenced as u8, Ordering::Release);
                    }
                    handler.batch_end(&mut verdicts);
                    if let Err(e) = queue.send_verdicts(&mut verdicts) {
                        tracing::error!("output commit verdicts failed: {e}");
                        return;
                    }
                    if stopping && n == 0 {
                        return;
                    }
                }
            })
            .map_err(|source| CaptureError::Thread { what: "output commit", source })?;
        let rules =
            Rules::install(RulesConfig { iptables: cfg.iptables, queue: cfg.queue, vip: cfg.vip, ports: cfg.ports })
                .map_err(CaptureError::from)?;
        Ok(Commit { stop, mode: modev, wake, counters, thread: Some(thread), rules: Some(rules) })
    }

    /// Wakes the loop (call when acknowledgements arrive).
    pub fn waker(&self) -> Arc<OwnedFd> {
        self.wake.clone()
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Release);
        sfd::eventfd_signal(self.wake.as_fd());
    }

    pub fn mode(&self) -> Mode {
        mode_of(self.mode.load(Ordering::Acquire))
    }

    pub fn stats(&self) -> CommitStats {
        let c = &self.counters;
        CommitStats {
            inbound: c.inbound.load(Ordering::Relaxed),
            outbound: c.outbound.load(Ordering::Relaxed),
            held_now: c.held.load(Ordering::Relaxed),
            released: c.released.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            overruns: c.overruns.load(Ordering::Relaxed),
            max_hold_us: c.max_hold_ns.load(Ordering::Relaxed) / 1000,
            oldest_held_ms: match c.oldest_held_ns.load(Ordering::Relaxed) {
                0 => 0,
                at => (sfd::clock_ns(libc::CLOCK_MONOTONIC).max(0) as u64).saturating_sub(at) / 1_000_000,
            },
        }
    }

    /// Removes the rules first (no new packets), then stops the loop; what
    /// it still holds is dropped.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(r) = self.rules.take()
            && let Err(e) = r.remove()
        {
            tracing::error!("removing the output-commit rules: {e}");
        }
        self.stop.store(true, Ordering::Release);
        sfd::eventfd_signal(self.wake.as_fd());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Commit {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::nfqueue::{HOOK_LOCAL_OUT, PacketMsg};

    struct NoBackup;
    impl Forward for NoBackup {
        fn forward(&mut self, _: Vec<u8>) -> u64 {
            1
        }
        fn flush(&mut self) {}
        fn acked(&self) -> u64 {
            0
        }
    }

    fn hold(mode: Mode, solo_until: Option<Arc<AtomicU64>>) -> Hold {
        Hold {
            counters: Arc::new(CommitCounters::default()),
            mode: Arc::new(AtomicU8::new(mode as u8)),
            solo_until,
            forward: Box::new(NoBackup),
            held: VecDeque::new(),
            seq: 0,
            unflushed: false,
        }
    }

    fn out(id: u32, payload: &[u8]) -> PacketMsg<'_> {
        PacketMsg {
            queue: 0,
            id,
            hook: HOOK_LOCAL_OUT,
            hw_protocol: 0x0800,
            payload,
            cap_len: None,
            skb_info: 0,
            indev: None,
            outdev: None,
        }
    }

    fn boot_ns() -> u64 {
        sfd::clock_ns(libc::CLOCK_BOOTTIME) as u64
    }

    #[test]
    fn alone_output_flows_only_before_the_lease_deadline() {
        let pkt = [0x45u8; 40];
        // Without a witness, alone means alone.
        assert_eq!(hold(Mode::Solo, None).packet(&out(1, &pkt), 0), Disposition::Accept);
        let until = Arc::new(AtomicU64::new(boot_ns() + 10_000_000_000));
        let mut h = hold(Mode::Solo, Some(until.clone()));
        assert_eq!(h.packet(&out(2, &pkt), 0), Disposition::Accept, "the lease is held");
        until.store(boot_ns() - 1, Ordering::Release);
        assert_eq!(h.packet(&out(3, &pkt), 0), Disposition::Drop, "the lease lapsed");
        until.store(0, Ordering::Release);
        assert_eq!(h.packet(&out(4, &pkt), 0), Disposition::Drop, "the lease was lost");
        assert_eq!(h.counters.dropped.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn held_output_is_dropped_when_going_alone_after_the_lease_lapsed() {
        let pkt = [0x45u8; 40];
        let until = Arc::new(AtomicU64::new(0));
        let mut h = hold(Mode::Commit, Some(until.clone()));
        let mut v = VerdictQueue::new(0, VerdictMode::Batch);
        for id in [7, 8] {
            assert_eq!(h.packet(&out(id, &pkt), 0), Disposition::Hold);
            v.push(id, None);
        }
        // Not acknowledged: still held.
        h.batch_end(&mut v);
        assert_eq!(v.held(), 2);
        // Alone without a live lease: dropped, never released.
        h.mode.store(Mode::Solo as u8, Ordering::Release);
        h.batch_end(&mut v);
        assert_eq!(v.held(), 0);
        let c = &h.counters;
        assert_eq!((c.released.load(Ordering::Relaxed), c.dropped.load(Ordering::Relaxed)), (0, 2));
    }
}

//! An NFQUEUE consumer: binds one queue over netlink and runs the receive /
//! handle / verdict loop on the calling thread.
//!
//! The loop waits for one packet, then drains whatever else is queued on the
//! socket without blocking (up to a batch limit), lets the [`Handler`] finish
//! the batch (flush what it forwarded, decide held packets), and sends all
//! verdicts of the batch in one datagram — batch verdicts by default.
//!
//! Invariants:
//! - the queue is configured to copy whole packets, to pass GSO
//!   super-segments whole (`NFQA_CFG_F_GSO`) and never to fail open
//!   (`NFQA_CFG_F_FAIL_OPEN` is explicitly cleared): a packet that overflows
//!   the queue, or arrives while no consumer is bound, is dropped;
//! - only messages sent by the kernel (netlink port id 0) are parsed;
//! - every packet the handler sees is pushed to the [`VerdictQueue`] exactly
//!   once; a packet it holds is decided later or, when the loop ends, dropped
//!   (closing the socket makes the kernel drop whatever is still queued);
//! - verdicts are sent only after [`Handler::batch_end`], so whatever the
//!   handler does at the end of a batch (flushing forwarded copies) happens
//!   before any packet of that batch is released.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::nfqueue::{
    self, CFG_F_FAIL_OPEN, CFG_F_GSO, CMD_BIND, COPY_PACKET, MAX_COPY_RANGE, Message, MessageError, PacketMsg,
};
use super::verdict::{Emitted, Verdict, VerdictMode, VerdictQueue};
use crate::sys::netlink::{NETLINK_NETFILTER, NetlinkSocket};
use crate::sys::{Errno, SysError};

/// Receive buffer: one whole packet message (copy range plus headers).
const RECV_BUF: usize = 128 << 10;

/// How a queue is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// The queue number (`--queue-num` of the iptables rule).
    pub num: u16,
    /// Most packets waiting for a verdict in the kernel; more are dropped.
    pub max_len: u32,
    /// Netlink receive buffer in bytes (`SO_RCVBUFFORCE`); packets that do
    /// not fit are dropped by the kernel and reported as an overrun.
    pub recv_buffer: usize,
    /// Pass GSO super-segments whole (`NFQA_CFG_F_GSO`). Without it the
    /// kernel segments them in software (about 10× slower).
    pub gso: bool,
    /// How long a blocking receive waits before the loop checks its stop flag.
    pub poll: Duration,
}

impl QueueConfig {
    /// Defaults for queue `num`: 4,096 packets, 16 MiB buffer, GSO, 50 ms poll.
    pub fn new(num: u16) -> Self {
        QueueConfig { num, max_len: 4096, recv_buffer: 16 << 20, gso: true, poll: Duration::from_millis(50) }
    }
}

/// A failure of the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A system call on the netlink socket failed.
    #[error("NFQUEUE {queue}: {source}")]
    Sys {
        /// The queue.
        queue: u16,
        /// The call.
        #[source]
        source: SysError,
    },
    /// The kernel refused a configuration request (`EBUSY`: another process
    /// is bound to the queue; `EPERM`: no CAP_NET_ADMIN).
    #[error("NFQUEUE {queue}: the kernel refused {what}: {errno}")]
    Refused {
        /// The queue.
        queue: u16,
        /// The request.
        what: &'static str,
        /// The errno it returned.
        errno: Errno,
    },
    /// No answer to a configuration request.
    #[error("NFQUEUE {queue}: no answer to {what} within {waited:?}")]
    NoAnswer {
        /// The queue.
        queue: u16,
        /// The request.
        what: &'static str,
        /// How long we waited.
        waited: Duration,
    },
    /// The kernel sent a malformed message.
    #[error("NFQUEUE {queue}: {source}")]
    Malformed {
        /// The queue.
        queue: u16,
        /// What was wrong.
        #[source]
        source: MessageError,
    },
}

/// What the handler wants done with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Accept now (sent at the end of the batch).
    Accept,
    /// Drop now (sent at the end of the batch).
    Drop,
    /// Decide later with [`VerdictQueue::decide`].
    Hold,
}

/// Something the loop noticed and carried on from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// `ENOBUFS`: the socket's receive buffer overflowed and the kernel
    /// dropped packets (they never reached us).
    Overrun,
    /// A datagram longer than the receive buffer; its packets stay queued
    /// until the socket closes, then are dropped.
    TruncatedDatagram {
        /// Its length.
        len: usize,
    },
    /// A datagram not sent by the kernel, ignored.
    NotFromKernel {
        /// The sender's port id.
        sender: u32,
    },
    /// The kernel rejected a verdict (e.g. `ENOENT` for an id no longer queued).
    VerdictRejected {
        /// The errno.
        errno: i32,
    },
    /// A malformed message; the rest of its datagram was skipped.
    Malformed(MessageError),
}

/// The consumer of a queue's packets.
pub trait Handler {
    /// One queued packet, read at `now_ns` (CLOCK_MONOTONIC).
    fn packet(&mut self, packet: &PacketMsg<'_>, now_ns: u64) -> Disposition;
    /// The end of a batch: the socket had nothing more queued, the batch
    /// limit was reached, or the receive timed out. Called before the batch's
    /// verdicts are sent; may decide held packets in `verdicts`.
    fn batch_end(&mut self, verdicts: &mut VerdictQueue);
    /// Verdicts were sent.
    fn sent(&mut self, emitted: Emitted) {
        let _ = emitted;
    }
    /// Something the loop carried on from.
    fn notice(&mut self, notice: Notice);
}

/// A bound NFQUEUE queue.
#[derive(Debug)]
pub struct Queue {
    sock: NetlinkSocket,
    num: u16,
    seq: u32,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl Queue {
    /// Opens a netlink socket, binds queue `config.num` and configures it.
    /// Must happen before the iptables rules send packets to the queue.
    pub fn open(config: &QueueConfig) -> Result<Queue, QueueError> {
        let num = config.num;
        let sys = |source| QueueError::Sys { queue: num, source };
        let sock = NetlinkSocket::open(NETLINK_NETFILTER).map_err(sys)?;
        sock.set_recv_buffer_force(config.recv_buffer).map_err(sys)?;
        sock.set_recv_timeout(config.poll).map_err(sys)?;
        let mut q = Queue { sock, num, seq: 0, buf: vec![0; RECV_BUF], out: Vec::with_capacity(4096) };
        q.request("bind", |out, seq| nfqueue::config_cmd(out, seq, num, CMD_BIND, libc::AF_INET as u16))?;
        q.request("copy mode", |out, seq| nfqueue::config_params(out, seq, num, MAX_COPY_RANGE, COPY_PACKET))?;
        q.request("queue length", |out, seq| nfqueue::config_maxlen(out, seq, num, config.max_len))?;
        let flags = if config.gso { CFG_F_GSO } else { 0 };
        q.request("flags", |out, seq| nfqueue::config_flags(out, seq, num, flags, CFG_F_GSO | CFG_F_FAIL_OPEN))?;
        Ok(q)
    }

    /// The queue number.
    pub fn num(&self) -> u16 {
        self.num
    }

    /// The netlink socket, to poll it together with other wake-ups.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.sock)
    }

    /// Sends one configuration message and waits for its acknowledgement.
    /// Packets delivered meanwhile (none, if the rules come after `open`)
    /// are dropped.
    fn request(&mut self, what: &'static str, build: impl FnOnce(&mut Vec<u8>, u32)) -> Result<(), QueueError> {
        let num = self.num;
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.out.clear();
        build(&mut self.out, seq);
        self.sock.send(&self.out).map_err(|source| QueueError::Sys { queue: num, source })?;
        let started = Instant::now();
        let limit = Duration::from_secs(2);
        while started.elapsed() < limit {
            let got = match self.sock.recv(&mut self.buf, false) {
                Ok(r) => r,
                Err(e) if matches!(e.errno.0, libc::EAGAIN | libc::EINTR | libc::ENOBUFS) => continue,
                Err(source) => return Err(QueueError::Sys { queue: num, source }),
            };
            if got.sender != 0 || got.len > self.buf.len() {
                continue;
            }
            let mut drops = Vec::new();
            let mut answer = None;
            for m in nfqueue::messages(&self.buf[..got.len]) {
                match m.map_err(|source| QueueError::Malformed { queue: num, source })? {
                    Message::Ack { seq: s } if s == seq => answer = Some(Ok(())),
                    Message::Error { seq: s, errno } if s == seq => {
                        answer = Some(Err(QueueError::Refused { queue: num, what, errno: Errno(errno) }))
                    }
                    Message::Packet(p) => drops.push(p.id),
                    _ => {}
                }
            }
            if !drops.is_empty() {
                self.out.clear();
                for id in drops {
                    nfqueue::verdict(&mut self.out, num, id, nfqueue::NF_DROP, false);
                }
                self.sock.send(&self.out).map_err(|source| QueueError::Sys { queue: num, source })?;
            }
            if let Some(a) = answer {
                return a;
            }
        }
        Err(QueueError::NoAnswer { queue: num, what, waited: limit })
    }

    /// Receives one datagram (waiting up to the poll interval if `block`) and
    /// hands its packets to `handler`, pushing each to `verdicts`. Returns
    /// `false` if nothing was queued (timeout, `EAGAIN`, `EINTR`).
    pub fn process(
        &mut self,
        block: bool,
        handler: &mut impl Handler,
        verdicts: &mut VerdictQueue,
    ) -> Result<bool, QueueError> {
        let num = self.num;
        let got = match self.sock.recv(&mut self.buf, !block) {
            Ok(r) => r,
            Err(e) if matches!(e.errno.0, libc::EAGAIN | libc::EINTR) => return Ok(false),
            Err(e) if e.errno.0 == libc::ENOBUFS => {
                handler.notice(Notice::Overrun);
                return Ok(true);
            }
            Err(source) => return Err(QueueError::Sys { queue: num, source }),
        };
        if got.sender != 0 {
            handler.notice(Notice::NotFromKernel { sender: got.sender });
            return Ok(true);
        }
        if got.len > self.buf.len() {
            handler.notice(Notice::TruncatedDatagram { len: got.len });
            return Ok(true);
        }
        let now_ns = crate::sys::fd::clock_ns(libc::CLOCK_MONOTONIC).max(0) as u64;
        for m in nfqueue::messages(&self.buf[..got.len]) {
            match m {
                Ok(Message::Packet(p)) => {
                    let d = handler.packet(&p, now_ns);
                    verdicts.push(
                        p.id,
                        match d {
                            Disposition::Accept => Some(Verdict::Accept),
                            Disposition::Drop => Some(Verdict::Drop),
                            Disposition::Hold => None,
                        },
                    );
                }
                Ok(Message::Error { errno, .. }) => handler.notice(Notice::VerdictRejected { errno }),
                Ok(Message::Ack { .. } | Message::Other { .. }) => {}
                Err(e) => handler.notice(Notice::Malformed(e)),
            }
        }
        Ok(true)
    }

    /// Sends the verdicts decided so far: in one datagram, or one datagram
    /// per message in [`VerdictMode::PerPacket`].
    pub fn send_verdicts(&mut self, verdicts: &mut VerdictQueue) -> Result<Emitted, QueueError> {
        self.out.clear();
        let e = verdicts.emit(&mut self.out);
        let sys = |source| QueueError::Sys { queue: self.num, source };
        if verdicts.mode() == VerdictMode::PerPacket {
            for msg in nfqueue::split_messages(&self.out) {
                self.sock.send(msg).map_err(sys)?;
            }
        } else if !self.out.is_empty() {
            self.sock.send(&self.out).map_err(sys)?;
        }
        Ok(e)
    }

    /// Runs the loop until `stop` is set, then drains what is still queued
    /// on the socket, sends the last verdicts and drops whatever the handler
    /// still holds. At most `max_batch` datagrams per batch.
    pub fn run(
        &mut self,
        handler: &mut impl Handler,
        verdicts: &mut VerdictQueue,
        stop: &AtomicBool,
        max_batch: usize,
    ) -> Result<(), QueueError> {
        loop {
            let stopping = stop.load(Ordering::Acquire);
            let mut n = 0;
            let mut block = !stopping;
            while n < max_batch.max(1) && self.process(block, handler, verdicts)? {
                n += 1;
                block = false;
            }
            handler.batch_end(verdicts);
            handler.sent(self.send_verdicts(verdicts)?);
            if stopping && n == 0 {
                verdicts.decide_all(Verdict::Drop);
                handler.sent(self.send_verdicts(verdicts)?);
                return Ok(());
            }
        }
    }
}

/// A queue's counters as the kernel keeps them
/// (`/proc/net/netfilter/nfnetlink_queue`, in the reader's namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelQueueStats {
    /// The queue.
    pub queue: u16,
    /// The bound consumer's netlink port id.
    pub portid: u32,
    /// Packets waiting for a verdict now.
    pub waiting: u32,
    /// Packets dropped because the queue was full.
    pub queue_dropped: u32,
    /// Packets dropped because the consumer's socket buffer was full.
    pub user_dropped: u32,
    /// The last packet id handed out.
    pub id_sequence: u32,
}

/// Parses `/proc/net/netfilter/nfnetlink_queue` text for `queue`.
pub fn parse_kernel_stats(text: &str, queue: u16) -> Option<KernelQueueStats> {
    text.lines().find_map(|line| {
        let f: Vec<u64> = line.split_whitespace().map_while(|w| w.parse().ok()).collect();
        if f.len() < 8 || f[0] != u64::from(queue) {
            return None;
        }
        let u = |i: usize| u32::try_from(f[i]).unwrap_or(u32::MAX);
        Some(KernelQueueStats {
            queue,
            portid: u(1),
            waiting: u(2),
            queue_dropped: u(5),
            user_dropped: u(6),
            id_sequence: u(7),
        })
    })
}

/// The kernel's counters for `queue` in this network namespace; `None` if
/// no consumer is bound to it.
pub fn kernel_stats(queue: u16) -> std::io::Result<Option<KernelQueueStats>> {
    let text = std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue")?;
    Ok(parse_kernel_stats(&text, queue))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_counters() {
        let text =
            "    0  12345     0 2 65531     0     0        0  1\n    7   4127     3 2 65531    11    22     1234  1\n";
        assert_eq!(parse_kernel_stats(text, 3), None);
        let s = parse_kernel_stats(text, 0).unwrap();
        assert_eq!((s.portid, s.waiting, s.id_sequence), (12345, 0, 0));
        let s = parse_kernel_stats(text, 7).unwrap();
        assert_eq!((s.portid, s.waiting, s.queue_dropped, s.user_dropped, s.id_sequence), (4127, 3, 11, 22, 1234));
    }
}

//! Capture on the primary: every TCP segment to or from the VIP's service
//! ports goes through NFQUEUE, is copied to the backup over a TCP connection
//! (one [`forward`](super::forward) frame per packet, both directions) and
//! then released.
//!
//! [`Capture::start`] binds the queue, connects to the backup, starts the
//! queue thread (a dedicated OS thread, blocking sockets) and installs the
//! iptables rules ([`rules`](super::rules)); [`Capture::stop`] — or dropping
//! the `Capture`, also while unwinding — removes the rules, drains the queue
//! and joins the threads.
//!
//! Per batch of queued packets the thread writes each packet's frame into a
//! buffer, flushes the buffer to the backup, and only then sends the batch's
//! verdicts (batch verdicts by default). So a packet is released only after
//! its copy was handed to the kernel's TCP send buffer toward the backup;
//! output commit (waiting for the backup's acknowledgement) builds on this by
//! holding the verdict longer ([`Disposition::Hold`]).
//!
//! When a packet cannot be forwarded — the link to the backup is down, the
//! copy is truncated (a super-segment over 65,531 bytes, i.e. BIG TCP), or it
//! came from an unexpected hook — [`UnforwardedPolicy`] decides: `Accept`
//! (issue 3's behaviour: the service keeps running unreplicated, counted in
//! [`CaptureStats::not_forwarded`]) or `Drop` (fail closed; TCP retransmits).
//! The link is lost when a write fails or when the backup closes it (a
//! connector thread watches the connection — the backup sends nothing yet —
//! so a dead backup is noticed within one poll interval even when no packet
//! flows); it is re-established by the same thread, never blocking the
//! queue thread. Frames carry a capture sequence number, so the backup sees
//! the gap.
//!
//! Invariants:
//! - rules are installed only after the queue is bound and the link is up,
//!   and are removed before the queue thread stops; the rules never bypass
//!   the queue, so if this process dies the VIP's packets are dropped (fail
//!   closed) until the rules are removed or a new consumer binds;
//! - every queued packet gets exactly one verdict; a batch's verdicts are
//!   sent after its frames were flushed (or after the link failed, then per
//!   the policy);
//! - a write error takes the link down at once (a half-written frame breaks
//!   the stream), and the packets of that batch count as not forwarded;
//! - frame sequence numbers increase by one per captured packet.

use std::io::{self, BufWriter, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::forward::FrameHeader;
use super::nfqueue::{HOOK_LOCAL_IN, HOOK_LOCAL_OUT, HOOK_POST_ROUTING, HOOK_PRE_ROUTING, PacketMsg, SKB_GSO};
use super::queue::{self, Disposition, Handler, KernelQueueStats, Notice, Queue, QueueConfig, QueueError};
use super::rules::{Rules, RulesConfig, RulesError};
use super::verdict::{Emitted, Verdict, VerdictMode, VerdictQueue};
use crate::tcpstate::Direction;

/// What happens to a packet that could not be forwarded to the backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnforwardedPolicy {
    /// Release it anyway (the backup misses it; counted). Issue 3's default.
    #[default]
    Accept,
    /// Drop it; TCP retransmits once the link is back.
    Drop,
}

impl UnforwardedPolicy {
    fn verdict(self) -> Verdict {
        match self {
            UnforwardedPolicy::Accept => Verdict::Accept,
            UnforwardedPolicy::Drop => Verdict::Drop,
        }
    }
}

/// How to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// NFQUEUE queue number.
    pub queue: u16,
    /// The service address.
    pub vip: Ipv4Addr,
    /// The service's TCP ports.
    pub ports: Vec<u16>,
    /// The backup's receiver.
    pub forward_to: SocketAddr,
    /// What to do with packets that cannot be forwarded.
    pub unforwarded: UnforwardedPolicy,
    /// Batch or per-packet verdicts.
    pub verdicts: VerdictMode,
    /// The iptables command (`iptables`, `iptables-legacy`, …).
    pub iptables: String,
    /// Bound on each connection attempt to the backup.
    pub connect_timeout: Duration,
    /// Pause between reconnection attempts.
    pub reconnect_interval: Duration,
    /// A write to the backup blocked this long takes the link down.
    pub write_timeout: Duration,
    /// Most packets waiting for a verdict in the kernel.
    pub queue_max_len: u32,
    /// Netlink receive buffer (bytes).
    pub recv_buffer: usize,
    /// `NFQA_CFG_F_GSO` (on unless measuring).
    pub gso: bool,
    /// Most datagrams read per batch.
    pub max_batch: usize,
}

impl CaptureConfig {
    /// Defaults: accept unforwarded packets, batch verdicts, `iptables`,
    /// 1 s connect timeout, 200 ms between reconnects, 5 s write timeout,
    /// 4,096-packet queue, 16 MiB buffer, GSO, 64 datagrams per batch.
    pub fn new(queue: u16, vip: Ipv4Addr, ports: Vec<u16>, forward_to: SocketAddr) -> Self {
        CaptureConfig {
            queue,
            vip,
            ports,
            forward_to,
            unforwarded: UnforwardedPolicy::Accept,
            verdicts: VerdictMode::Batch,
            iptables: "iptables".into(),
            connect_timeout: Duration::from_secs(1),
            reconnect_interval: Duration::from_millis(200),
            write_timeout: Duration::from_secs(5),
            queue_max_len: 4096,
            recv_buffer: 16 << 20,
            gso: true,
            max_batch: 64,
        }
    }
}

/// A failure of the capture.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The configuration cannot work.
    #[error("capture configuration: {0}")]
    Config(&'static str),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Installing or removing the iptables rules failed.
    #[error(transparent)]
    Rules(#[from] RulesError),
    /// The first connection to the backup failed.
    #[error("connecting to the backup's receiver at {addr}: {source}")]
    Connect {
        /// The backup's address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A thread could not be started.
    #[error("starting the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The queue thread panicked.
    #[error("the NFQUEUE thread of queue {queue} panicked")]
    Panicked {
        /// The queue.
        queue: u16,
    },
}

/// Counters of a capture (a snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CaptureStats {
    /// Packets to the service captured.
    pub packets_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Packets from the service captured.
    pub packets_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// Captured GSO super-segments (both ways).
    pub gso_packets: u64,
    /// Packets whose frame was flushed to the backup.
    pub forwarded: u64,
    /// Their bytes (packets only).
    pub forwarded_bytes: u64,
    /// Packets not forwarded (link down, truncated, unknown hook); the
    /// [`UnforwardedPolicy`] decided them.
    pub not_forwarded: u64,
    /// Of those, copies truncated by NFQUEUE.
    pub truncated: u64,
    /// Times the link to the backup was lost (a write failed, or the
    /// backup closed it).
    pub link_losses: u64,
    /// Connections to the backup made (the first one included).
    pub connects: u64,
    /// Packets accepted.
    pub accepted: u64,
    /// Packets dropped.
    pub dropped: u64,
    /// Receive-buffer overruns (`ENOBUFS`: the kernel dropped packets).
    pub overruns: u64,
    /// Verdicts the kernel rejected.
    pub verdict_errors: u64,
    /// Malformed, foreign or truncated netlink datagrams.
    pub bad_datagrams: u64,
}

#[derive(Debug, Default)]
struct Counters {
    packets_in: AtomicU64,
    bytes_in: AtomicU64,
    packets_out: AtomicU64,
    bytes_out: AtomicU64,
    gso_packets: AtomicU64,
    forwarded: AtomicU64,
    forwarded_bytes: AtomicU64,
    not_forwarded: AtomicU64,
    truncated: AtomicU64,
    link_losses: AtomicU64,
    connects: AtomicU64,
    accepted: AtomicU64,
    dropped: AtomicU64,
    overruns: AtomicU64,
    verdict_errors: AtomicU64,
    bad_datagrams: AtomicU64,
    link_up: AtomicBool,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> CaptureStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CaptureStats {
            packets_in: g(&self.packets_in),
            bytes_in: g(&self.bytes_in),
            packets_out: g(&self.packets_out),
            bytes_out: g(&self.bytes_out),
            gso_packets: g(&self.gso_packets),
            forwarded: g(&self.forwarded),
            forwarded_bytes: g(&self.forwarded_bytes),
            not_forwarded: g(&self.not_forwarded),
            truncated: g(&self.truncated),
            link_losses: g(&self.link_losses),
            connects: g(&self.connects),
            accepted: g(&self.accepted),
            dropped: g(&self.dropped),
            overruns: g(&self.overruns),
            verdict_errors: g(&self.verdict_errors),
            bad_datagrams: g(&self.bad_datagrams),
        }
    }
}

/// Connects to the backup and sets the stream up for forwarding.
fn connect(addr: SocketAddr, timeout: Duration, write_timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(write_timeout))?;
    Ok(s)
}

/// What the connector thread tells the queue thread.
enum LinkEvent {
    /// The watched connection ended (the backup closed it, or it failed).
    Down(io::Error),
    /// A new connection.
    Up(TcpStream),
}

/// The background connector. It watches the current connection by reading
/// from a clone of it (the backup sends nothing yet, so any end of stream
/// or error means the link is gone) and reports `Down`; on request it
/// retries until connected and reports `Up`. A connection's `Down` is
/// always sent before the next `Up`. Ends when the queue thread goes away
/// (its channels close, and it shuts the connection down) or on `stop`.
fn connector(
    addr: SocketAddr,
    cfg: (Duration, Duration, Duration),
    first: Option<TcpStream>,
    requests: mpsc::Receiver<()>,
    events: mpsc::Sender<LinkEvent>,
    stop: Arc<AtomicBool>,
) {
    let (timeout, interval, write_timeout) = cfg;
    let mut watched = first;
    loop {
        if let Some(mut s) = watched.take() {
            let mut buf = [0u8; 256];
            let why = loop {
                match s.read(&mut buf) {
                    Ok(0) => break io::Error::new(io::ErrorKind::UnexpectedEof, "the backup closed the link"),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break e,
                }
            };
            if events.send(LinkEvent::Down(why)).is_err() {
                return;
            }
        }
        if requests.recv().is_err() {
            return;
        }
        let mut failures = 0u64;
        loop {
            if stop.load(Ordering::Acquire) {
                return;
            }
            match connect(addr, timeout, write_timeout) {
                Ok(s) => {
                    watched = s.try_clone().ok();
                    if events.send(LinkEvent::Up(s)).is_err() {
                        return;
                    }
                    break;
                }
                Err(e) => {
                    if failures == 0 {
                        tracing::warn!("reconnecting to the backup at {addr}: {e}");
                    }
                    failures += 1;
                    let until = Instant::now() + interval;
                    while Instant::now() < until && !stop.load(Ordering::Acquire) {
                        thread::sleep(Duration::from_millis(10).min(interval));
                    }
                }
            }
        }
    }
}

/// The queue thread's handler: frames each packet into the link's buffer
/// and decides the batch once the buffer is flushed.
struct Forwarder {
    link: Option<BufWriter<TcpStream>>,
    requests: mpsc::Sender<()>,
    events: mpsc::Receiver<LinkEvent>,
    reconnecting: bool,
    counters: Arc<Counters>,
    policy: UnforwardedPolicy,
    seq: u64,
    /// Packets of this batch written to the link's buffer: (id, bytes).
    batch: Vec<(u32, usize)>,
    /// Packets of this batch written to a link that failed.
    lost: Vec<u32>,
}

const LINK_BUFFER: usize = 256 << 10;

impl Forwarder {
    fn link_down(&mut self, e: &io::Error) {
        if let Some(w) = self.link.take() {
            // Discard the buffer: the stream is broken mid-frame anyway.
            let (stream, _) = w.into_parts();
            let _ = stream.shutdown(std::net::Shutdown::Both);
            tracing::warn!("link to the backup lost: {e}");
        }
        add(&self.counters.link_losses, 1);
        self.counters.link_up.store(false, Ordering::Relaxed);
        self.lost.extend(self.batch.drain(..).map(|(id, _)| id));
    }

    fn unforwarded(&self) -> Disposition {
        add(&self.counters.not_forwarded, 1);
        match self.policy {
            UnforwardedPolicy::Accept => Disposition::Accept,
            UnforwardedPolicy::Drop => Disposition::Drop,
        }
    }

    /// Applies the connector's news; asks for a new connection if down.
    fn poll_link(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            match event {
                LinkEvent::Down(e) => {
                    if self.link.is_some() {
                        self.link_down(&e);
                    }
                }
                LinkEvent::Up(s) => {
                    self.reconnecting = false;
                    if self.link.is_none() {
                        self.link = Some(BufWriter::with_capacity(LINK_BUFFER, s));
                        add(&self.counters.connects, 1);
                        self.counters.link_up.store(true, Ordering::Relaxed);
                        tracing::info!("link to the backup re-established");
                    }
                }
            }
        }
        if self.link.is_none() && !self.reconnecting {
            self.reconnecting = self.requests.send(()).is_ok();
        }
    }
}

impl Drop for Forwarder {
    /// Flushes what is buffered and shuts the connection down, which also
    /// ends the connector's watch on it.
    fn drop(&mut self) {
        if let Some(mut w) = self.link.take() {
            let _ = w.flush();
            let _ = w.get_ref().shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Handler for Forwarder {
    fn packet(&mut self, p: &PacketMsg<'_>, now_ns: u64) -> Disposition {
        let seq = self.seq;
        self.seq += 1;
        let len = p.cap_len.map_or(p.payload.len() as u64, u64::from);
        let c = &self.counters;
        if p.skb_info & SKB_GSO != 0 {
            add(&c.gso_packets, 1);
        }
        let direction = match p.hook {
            HOOK_LOCAL_IN | HOOK_PRE_ROUTING => {
                add(&c.packets_in, 1);
                add(&c.bytes_in, len);
                Direction::Inbound
            }
            HOOK_LOCAL_OUT | HOOK_POST_ROUTING => {
                add(&c.packets_out, 1);
                add(&c.bytes_out, len);
                Direction::Outbound
            }
            _ => return self.unforwarded(),
        };
        if !p.is_whole() {
            add(&c.truncated, 1);
            return self.unforwarded();
        }
        let Ok(header) = FrameHeader::new(direction, seq, now_ns, p.payload) else {
            return self.unforwarded();
        };
        let Some(w) = self.link.as_mut() else {
            return self.unforwarded();
        };
        match w.write_all(&header.emit()).and_then(|()| w.write_all(p.payload)) {
            Ok(()) => {
                self.batch.push((p.id, p.payload.len()));
                Disposition::Hold
            }
            Err(e) => {
                self.link_down(&e);
                self.unforwarded()
            }
        }
    }

    fn batch_end(&mut self, verdicts: &mut VerdictQueue) {
        if !self.batch.is_empty() {
            let flushed = match self.link.as_mut() {
                Some(w) => w.flush(),
                None => Err(io::Error::from(io::ErrorKind::NotConnected)),
            };
            if let Err(e) = flushed {
                self.link_down(&e);
            }
        }
        let c = Arc::clone(&self.counters);
        for (id, bytes) in self.batch.drain(..) {
            add(&c.forwarded, 1);
            add(&c.forwarded_bytes, bytes as u64);
            // Ids were pushed as held just before; a failure would be a bug.
            if let Err(e) = verdicts.decide(id, Verdict::Accept) {
                tracing::error!("NFQUEUE verdict bookkeeping: {e}");
            }
        }
        let fallback = self.policy.verdict();
        for id in self.lost.drain(..) {
            add(&c.not_forwarded, 1);
            if let Err(e) = verdicts.decide(id, fallback) {
                tracing::error!("NFQUEUE verdict bookkeeping: {e}");
            }
        }
        self.poll_link();
    }

    fn sent(&mut self, emitted: Emitted) {
        add(&self.counters.accepted, emitted.accepted as u64);
        add(&self.counters.dropped, emitted.dropped as u64);
    }

    fn notice(&mut self, notice: Notice) {
        let c = &self.counters;
        match notice {
            Notice::Overrun => add(&c.overruns, 1),
            Notice::VerdictRejected { .. } => add(&c.verdict_errors, 1),
            Notice::TruncatedDatagram { .. } | Notice::NotFromKernel { .. } | Notice::Malformed(_) => {
                add(&c.bad_datagrams, 1)
            }
        }
        tracing::warn!("NFQUEUE: {notice:?}");
    }
}

/// A running capture; stopped (rules removed, threads joined) on drop.
#[derive(Debug)]
pub struct Capture {
    queue: u16,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<Result<(), QueueError>>>,
    connector: Option<JoinHandle<()>>,
    rules: Option<Rules>,
}

impl Capture {
    /// Binds the queue, connects to `config.forward_to` (failing if it
    /// cannot), starts the queue and connector threads, and installs the
    /// iptables rules in this process's network namespace.
    pub fn start(config: CaptureConfig) -> Result<Capture, CaptureError> {
        if config.ports.is_empty() {
            return Err(CaptureError::Config("no service ports"));
        }
        if config.vip.is_unspecified() || config.vip.is_broadcast() {
            return Err(CaptureError::Config("the VIP must be a unicast address"));
        }
        let mut qcfg = QueueConfig::new(config.queue);
        qcfg.max_len = config.queue_max_len;
        qcfg.recv_buffer = config.recv_buffer;
        qcfg.gso = config.gso;
        let mut queue = Queue::open(&qcfg)?;
        let addr = config.forward_to;
        let stream = connect(addr, config.connect_timeout, config.write_timeout)
            .map_err(|source| CaptureError::Connect { addr, source })?;
        let counters = Arc::new(Counters::default());
        add(&counters.connects, 1);
        counters.link_up.store(true, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));

        let (req_tx, req_rx) = mpsc::channel();
        let (event_tx, event_rx) = mpsc::channel();
        let timing = (config.connect_timeout, config.reconnect_interval, config.write_timeout);
        let stop2 = Arc::clone(&stop);
        let watched = stream.try_clone().map_err(|source| CaptureError::Connect { addr, source })?;
        let connector = thread::Builder::new()
            .name("ftnet-connector".into())
            .spawn(move || connector(addr, timing, Some(watched), req_rx, event_tx, stop2))
            .map_err(|source| CaptureError::Thread { what: "connector", source })?;

        let mut forwarder = Forwarder {
            link: Some(BufWriter::with_capacity(LINK_BUFFER, stream)),
            requests: req_tx,
            events: event_rx,
            reconnecting: false,
            counters: Arc::clone(&counters),
            policy: config.unforwarded,
            seq: 0,
            batch: Vec::new(),
            lost: Vec::new(),
        };
        let stop3 = Arc::clone(&stop);
        let (num, mode, max_batch) = (config.queue, config.verdicts, config.max_batch);
        let spawned = thread::Builder::new().name(format!("ftnet-nfq{num}")).spawn(move || {
            let mut verdicts = VerdictQueue::new(num, mode);
            queue.run(&mut forwarder, &mut verdicts, &stop3, max_batch)
        });
        let mut capture =
            Capture { queue: config.queue, stop, counters, thread: None, connector: Some(connector), rules: None };
        match spawned {
            Ok(t) => capture.thread = Some(t),
            Err(source) => return Err(CaptureError::Thread { what: "NFQUEUE", source }),
        }
        let rules = RulesConfig {
            iptables: config.iptables.clone(),
            queue: config.queue,
            vip: config.vip,
            ports: config.ports.clone(),
        };
        capture.rules = Some(Rules::install(rules)?);
        Ok(capture)
    }

    /// The queue number.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Current counters.
    pub fn stats(&self) -> CaptureStats {
        self.counters.snapshot()
    }

    /// The link to the backup is up.
    pub fn link_up(&self) -> bool {
        self.counters.link_up.load(Ordering::Relaxed)
    }

    /// The queue thread is still running (it stops only on [`Capture::stop`]
    /// or a fatal netlink error; then the rules stay and drop the VIP's
    /// packets until the capture is stopped).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// The kernel's counters for the queue (queue-full and socket-full drops).
    pub fn kernel_queue_stats(&self) -> io::Result<Option<KernelQueueStats>> {
        queue::kernel_stats(self.queue)
    }

    /// Removes the rules, drains the queue, joins the threads and returns the
    /// final counters; the first error met, if any, after doing all of it.
    pub fn stop(mut self) -> Result<CaptureStats, CaptureError> {
        self.shutdown()?;
        Ok(self.counters.snapshot())
    }

    fn shutdown(&mut self) -> Result<(), CaptureError> {
        let mut first: Option<CaptureError> = None;
        if let Some(rules) = self.rules.take()
            && let Err(e) = rules.remove()
        {
            first.get_or_insert(e.into());
        }
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first.get_or_insert(e.into());
                }
                Err(_) => {
                    first.get_or_insert(CaptureError::Panicked { queue: self.queue });
                }
            }
        }
        if let Some(c) = self.connector.take() {
            let _ = c.join();
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!("stopping the capture of queue {}: {e}", self.queue);
        }
    }
}

//! The backup's end of packet forwarding: accepts the primary's forwarding
//! connection, decodes [`forward`](super::forward) frames and feeds each
//! packet to a [`Tracker`].
//!
//! The tracker is shared as `Arc<Mutex<Tracker>>` ([`Receiver::tracker`]):
//! the receiver takes the lock once per read from the socket, applies every
//! whole frame that read completed, and lets go, so another thread (replay,
//! promote) can read connection state or call [`Tracker::consume`] between
//! reads. The tracker infers each packet's direction itself; the frame's
//! direction is only cross-checked and counted.
//!
//! Time given to the tracker ([`TimeBase`]): by default the backup's own
//! CLOCK_MONOTONIC when the frame was decoded, so that at takeover the
//! backup extrapolates timestamps from its own clock; the primary's capture
//! time is the alternative.
//!
//! Invariants:
//! - one primary connection is served at a time; frames are applied in
//!   stream order;
//! - a malformed frame ends that connection with an error naming the field
//!   (the stream cannot be resynchronised); a malformed *packet* inside a
//!   good frame is counted and skipped;
//! - capture sequence numbers are checked across connections: a jump
//!   forward is counted as missed packets, a jump back as a restarted
//!   capture; nothing is ever applied twice on purpose;
//! - nothing here panics on input; the lock is never held across a read.

use std::io::{self, ErrorKind};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::forward::{FrameDecoder, FrameError};
use crate::tcpstate::{Observed, Tracker, TrackerConfig};

/// Which clock the tracker's `now_ns` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeBase {
    /// The backup's CLOCK_MONOTONIC when the frame was decoded.
    #[default]
    Receive,
    /// The primary's CLOCK_MONOTONIC at capture (from the frame).
    Capture,
}

/// How the receiver runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// The service endpoints the tracker follows (VIP:port; `0.0.0.0:port`
    /// matches any address).
    pub services: Vec<SocketAddrV4>,
    /// The tracker's memory bounds.
    pub tracker: TrackerConfig,
    /// The tracker's clock.
    pub time: TimeBase,
    /// How often a background receiver checks its stop flag.
    pub poll: Duration,
}

impl ReceiverConfig {
    /// Defaults for `services`.
    pub fn new(services: Vec<SocketAddrV4>) -> Self {
        ReceiverConfig {
            services,
            tracker: TrackerConfig::default(),
            time: TimeBase::Receive,
            poll: Duration::from_millis(50),
        }
    }
}

/// A receiver failure.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// Cannot listen.
    #[error("listening for the primary on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Accepting failed.
    #[error("accepting the primary's connection: {0}")]
    Accept(#[source] io::Error),
    /// Reading failed.
    #[error("reading frames from the primary at {peer}: {source}")]
    Read {
        /// The primary.
        peer: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A malformed frame (the connection was closed).
    #[error("frame from the primary at {peer}: {source}")]
    Frame {
        /// The primary.
        peer: SocketAddr,
        /// What was wrong.
        #[source]
        source: FrameError,
    },
    /// The receiver thread could not be started.
    #[error("starting the receiver thread: {0}")]
    Thread(#[source] io::Error),
    /// The receiver thread panicked.
    #[error("the receiver thread panicked")]
    Panicked,
    /// A thread holding the tracker panicked.
    #[error("the tracker's lock is poisoned (a thread panicked while holding it)")]
    Poisoned,
}

/// Receiver counters (a snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReceiverStats {
    /// Primary connections accepted.
    pub connections: u64,
    /// Inbound frames (client → server).
    pub frames_in: u64,
    /// Outbound frames.
    pub frames_out: u64,
    /// Packet bytes received.
    pub bytes: u64,
    /// Packets applied to a tracked connection.
    pub tracked: u64,
    /// Packets the tracker ignored (not a tracked connection).
    pub ignored: u64,
    /// Packets the tracker rejected as malformed.
    pub malformed_packets: u64,
    /// Tracked packets whose frame direction disagreed with the tracker's.
    pub direction_mismatches: u64,
    /// Captured packets the primary did not forward (sequence gaps, also
    /// before the first frame this receiver saw).
    pub missed: u64,
    /// Times the sequence went backwards (a restarted capture).
    pub restarts: u64,
    /// Connections ended by a malformed frame or read error.
    pub failed_connections: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    bytes: AtomicU64,
    tracked: AtomicU64,
    ignored: AtomicU64,
    malformed_packets: AtomicU64,
    direction_mismatches: AtomicU64,
    missed: AtomicU64,
    restarts: AtomicU64,
    failed_connections: AtomicU64,
    /// The next expected capture sequence number (a capture starts at 0).
    next_seq: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ReceiverStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ReceiverStats {
            connections: g(&self.connections),
            frames_in: g(&self.frames_in),
            frames_out: g(&self.frames_out),
            bytes: g(&self.bytes),
            tracked: g(&self.tracked),
            ignored: g(&self.ignored),
            malformed_packets: g(&self.malformed_packets),
            direction_mismatches: g(&self.direction_mismatches),
            missed: g(&self.missed),
            restarts: g(&self.restarts),
            failed_connections: g(&self.failed_connections),
        }
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// What one primary connection delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// The primary's address.
    pub peer: SocketAddr,
    /// Frames applied.
    pub frames: u64,
}

/// Listens for the primary and feeds its frames to a tracker.
#[derive(Debug)]
pub struct Receiver {
    listener: TcpListener,
    addr: SocketAddr,
    config: ReceiverConfig,
    tracker: Arc<Mutex<Tracker>>,
    counters: Arc<Counters>,
}

impl Receiver {
    /// Listens on `addr` with a tracker for `services` and default settings.
    pub fn listen(addr: SocketAddr, services: &[SocketAddrV4]) -> Result<Receiver, ReceiveError> {
        Self::with_config(addr, ReceiverConfig::new(services.to_vec()))
    }

    /// Listens on `addr` with `config`.
    pub fn with_config(addr: SocketAddr, config: ReceiverConfig) -> Result<Receiver, ReceiveError> {
        let listener = TcpListener::bind(addr).map_err(|source| ReceiveError::Listen { addr, source })?;
        let addr = listener.local_addr().map_err(|source| ReceiveError::Listen { addr, source })?;
        let tracker = Arc::new(Mutex::new(Tracker::with_config(&config.services, config.tracker)));
        Ok(Receiver { listener, addr, config, tracker, counters: Arc::default() })
    }

    /// The bound address (with the actual port if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The tracker the frames are fed to.
    pub fn tracker(&self) -> Arc<Mutex<Tracker>> {
        Arc::clone(&self.tracker)
    }

    /// Current counters.
    pub fn stats(&self) -> ReceiverStats {
        self.counters.snapshot()
    }

    /// Accepts one primary and applies its frames until it closes the
    /// connection (blocking).
    pub fn serve_one(&self) -> Result<Session, ReceiveError> {
        let (stream, peer) = self.listener.accept().map_err(ReceiveError::Accept)?;
        self.session(stream, peer, None)
    }

    /// Serves primaries one after another until `stop` is set, checking it
    /// every `poll`. A failed connection is logged and counted; the next one
    /// is accepted.
    pub fn serve_until(&self, stop: &AtomicBool) -> Result<(), ReceiveError> {
        self.listener.set_nonblocking(true).map_err(ReceiveError::Accept)?;
        while !stop.load(Ordering::Acquire) {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    stream.set_nonblocking(false).map_err(ReceiveError::Accept)?;
                    stream.set_read_timeout(Some(self.config.poll)).map_err(ReceiveError::Accept)?;
                    match self.session(stream, peer, Some(stop)) {
                        Ok(_) => {}
                        Err(ReceiveError::Poisoned) => return Err(ReceiveError::Poisoned),
                        Err(e) => tracing::warn!("{e}"),
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    thread::sleep(self.config.poll.min(Duration::from_millis(20)));
                }
                Err(e) => return Err(ReceiveError::Accept(e)),
            }
        }
        Ok(())
    }

    /// Runs [`Receiver::serve_until`] on a thread of its own.
    pub fn spawn(self) -> Result<ReceiverHandle, ReceiveError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tracker, counters, addr) = (self.tracker(), Arc::clone(&self.counters), self.addr);
        let stop2 = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("ftnet-receiver".into())
            .spawn(move || self.serve_until(&stop2))
            .map_err(ReceiveError::Thread)?;
        Ok(ReceiverHandle { stop, thread: Some(thread), tracker, counters, addr })
    }

    fn now_ns() -> u64 {
        crate::sys::fd::clock_ns(libc::CLOCK_MONOTONIC).max(0) as u64
    }

    fn session(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        stop: Option<&AtomicBool>,
    ) -> Result<Session, ReceiveError> {
        add(&self.counters.connections, 1);
        let mut dec = FrameDecoder::new();
        let mut frames = 0u64;
        let result = loop {
            if stop.is_some_and(|s| s.load(Ordering::Acquire)) {
                break Ok(());
            }
            match dec.read_from(&mut stream) {
                Ok(0) => break dec.finish().map_err(|source| ReceiveError::Frame { peer, source }),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                    continue;
                }
                Err(source) => break Err(ReceiveError::Read { peer, source }),
            }
            match self.apply(&mut dec, peer) {
                Ok(n) => frames += n,
                Err(e) => break Err(e),
            }
        };
        if result.is_err() {
            add(&self.counters.failed_connections, 1);
        }
        result.map(|()| Session { peer, frames })
    }

    /// Applies every whole frame buffered in `dec` under one lock.
    fn apply(&self, dec: &mut FrameDecoder, peer: SocketAddr) -> Result<u64, ReceiveError> {
        let c = &self.counters;
        let mut tracker = self.tracker.lock().map_err(|_| ReceiveError::Poisoned)?;
        let recv_ns = Self::now_ns();
        let mut n = 0;
        while let Some(f) = dec.next_frame().map_err(|source| ReceiveError::Frame { peer, source })? {
            n += 1;
            let h = f.header;
            match h.direction {
                crate::tcpstate::Direction::Inbound => add(&c.frames_in, 1),
                crate::tcpstate::Direction::Outbound => add(&c.frames_out, 1),
            }
            add(&c.bytes, u64::from(h.len));
            let expected = c.next_seq.swap(h.seq.wrapping_add(1), Ordering::Relaxed);
            if h.seq > expected {
                add(&c.missed, h.seq - expected);
            } else if h.seq < expected {
                add(&c.restarts, 1);
            }
            let now = match self.config.time {
                TimeBase::Receive => recv_ns,
                TimeBase::Capture => h.capture_ns,
            };
            match tracker.observe(now, f.packet) {
                Ok(Observed::Tracked(t)) => {
                    add(&c.tracked, 1);
                    if t.direction != h.direction {
                        add(&c.direction_mismatches, 1);
                    }
                }
                Ok(Observed::Ignored(_)) => add(&c.ignored, 1),
                Err(_) => add(&c.malformed_packets, 1),
            }
        }
        Ok(n)
    }
}

/// A receiver running on its own thread.
#[derive(Debug)]
pub struct ReceiverHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), ReceiveError>>>,
    tracker: Arc<Mutex<Tracker>>,
    counters: Arc<Counters>,
    addr: SocketAddr,
}

impl ReceiverHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The tracker the frames are fed to.
    pub fn tracker(&self) -> Arc<Mutex<Tracker>> {
        Arc::clone(&self.tracker)
    }

    /// Current counters.
    pub fn stats(&self) -> ReceiverStats {
        self.counters.snapshot()
    }

    /// Stops the thread (within one poll interval) and returns the counters.
    pub fn stop(mut self) -> Result<ReceiverStats, ReceiveError> {
        self.stop.store(true, Ordering::Release);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(ReceiveError::Panicked),
            _ => Ok(self.counters.snapshot()),
        }
    }
}

impl Drop for ReceiverHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

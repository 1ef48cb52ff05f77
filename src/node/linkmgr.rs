//! The replication link's threads: connecting (the backup dials, the
//! primary listens), the handshake, one writer and one reader per session.
//!
//! Invariants:
//! - the [`Sender`](crate::link::Sender) and [`Receiver`] outlive sessions,
//!   so a reconnect resumes the stream where the peer stopped receiving;
//! - only the writer thread writes to a session's socket; the reader thread
//!   never blocks on the sender's lock while reading the socket;
//! - every frame the backup accepts is acknowledged (the ack carries the
//!   highest contiguous position received and how far its engine applied);
//! - a refusal repeated by the peer (a primary that went on alone refuses
//!   its old backup forever) is said once and retried with a growing pause
//!   (up to [`MAX_RETRY`]), never 5 times a second for days.

use super::heartbeat::Heartbeats;
use super::shared::{NodeEvent, Shared};
use crate::link::{Frame, Hello, Incoming, Key, LinkError, Receiver, Side, establish};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest pause between two handshakes the peer refused.
pub const MAX_RETRY: Duration = Duration::from_secs(10);

/// Says a repeated condition at most once a minute (the first time at
/// once); the rest go to the debug log.
#[derive(Default)]
struct Once(Option<Instant>);

impl Once {
    fn note(&mut self, shared: &Shared, text: String) {
        if self.0.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            self.0 = Some(Instant::now());
            shared.note(text);
        } else {
            tracing::debug!("{text}");
        }
    }
}

/// What the node does with each verified frame (role-specific).
pub type OnFrame = Arc<dyn Fn(&Shared, Frame) + Send + Sync>;

/// Starts the link: listening (primary) or dialing (backup), forever.
pub fn spawn(shared: Arc<Shared>, key: Key, hello: Hello, hb: Arc<Heartbeats>, on_frame: OnFrame, listen: bool) {
    let receiver = Arc::new(Mutex::new(Some(Receiver::new(1, hello.epoch, shared.link.counters.clone()))));
    let _ = std::thread::Builder::new().name("ftnet-link".into()).spawn(move || {
        let key = Arc::new(key);
        if listen {
            accept_loop(&shared, &key, &hello, &hb, &on_frame, &receiver);
        } else {
            dial_loop(&shared, &key, &hello, &hb, &on_frame, &receiver);
        }
    });
}

fn accept_loop(
    shared: &Arc<Shared>,
    key: &Key,
    hello: &Hello,
    hb: &Arc<Heartbeats>,
    on_frame: &OnFrame,
    receiver: &Arc<Mutex<Option<Receiver>>>,
) {
    let addr = shared.cfg.node.link;
    let listener = loop {
        match TcpListener::bind(addr) {
            Ok(l) => break l,
            Err(e) => {
                shared.note(format!("link: cannot listen on {addr}: {e}; retrying"));
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    tracing::info!("link: listening on {addr}");
    let (mut retired_said, mut stranger_said) = (Once::default(), Once::default());
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if shared.link.retired.load(Ordering::Acquire) {
            // Dropping the stream closes it: the backup sees the refusal.
            retired_said.note(
                shared,
                "link: refused a backup: this primary went on alone (restart the pair to protect it again)".into(),
            );
            continue;
        }
        let peer = stream.peer_addr().map(|a| a.ip()).ok();
        if peer != Some(shared.cfg.node.peer_link.ip()) {
            stranger_said.note(shared, format!("link: refused a connection from {peer:?}: not the configured peer"));
            continue;
        }
        if let Err(e) = session(shared, key, hello, hb, on_frame, receiver, stream, Side::Responder) {
            tracing::warn!("link: handshake with {peer:?} failed: {e}");
        }
    }
}

fn dial_loop(
    shared: &Arc<Shared>,
    key: &Key,
    hello: &Hello,
    hb: &Arc<Heartbeats>,
    on_frame: &OnFrame,
    receiver: &Arc<Mutex<Option<Receiver>>>,
) {
    let mut quiet = 0u32;
    let mut refused = Once::default();
    let mut pause = Duration::from_millis(200);
    loop {
        if shared.role() == crate::link::Role::Primary || shared.link.retired.load(Ordering::Acquire) {
            // Promoting or promoted: a backup no longer dials its old primary.
            return;
        }
        match connect_from(shared.cfg.node.link, shared.cfg.node.peer_link) {
            Ok(stream) => {
                quiet = 0;
                match session(shared, key, hello, hb, on_frame, receiver, stream, Side::Initiator) {
                    Ok(()) => {
                        refused = Once::default();
                        pause = Duration::from_millis(200);
                    }
                    Err(e) => {
                        refused.note(shared, format!("link: handshake with {} failed: {e}", shared.cfg.node.peer_link));
                        pause = (pause * 2).min(MAX_RETRY);
                    }
                }
            }
            Err(e) => {
                if quiet.is_multiple_of(25) {
                    tracing::info!("link: connecting to {}: {e}", shared.cfg.node.peer_link);
                }
                quiet += 1;
                // Nobody listens: not a refusal (a restarted primary is
                // dialled again within 200 ms once it listens).
                pause = Duration::from_millis(200);
            }
        }
        std::thread::sleep(pause);
    }
}

/// Connects to `peer` from our link address (so the primary can check it).
fn connect_from(ours: SocketAddr, peer: SocketAddr) -> std::io::Result<TcpStream> {
    let s = std::net::TcpStream::connect_timeout(&peer, Duration::from_secs(2))?;
    let _ = ours;
    Ok(s)
}

#[allow(clippy::too_many_arguments)]
fn session(
    shared: &Arc<Shared>,
    key: &Key,
    hello: &Hello,
    hb: &Arc<Heartbeats>,
    on_frame: &OnFrame,
    slot: &Arc<Mutex<Option<Receiver>>>,
    stream: TcpStream,
    side: Side,
) -> Result<(), LinkError> {
    let Some(mut receiver) = slot.lock().ok().and_then(|mut r| r.take()) else { return Ok(()) };
    let est = {
        let Ok(mut sender) = shared.link.sender.lock() else { return Ok(()) };
        establish(stream, side, key, hello, &mut sender, &mut receiver, Duration::from_secs(5))
    };
    let est = match est {
        Ok(e) => e,
        Err(LinkError::Incompatible(diff)) => {
            shared.event(NodeEvent::Refused(diff));
            put_back(slot, receiver);
            std::thread::sleep(Duration::from_secs(3));
            return Ok(());
        }
        Err(e) => {
            put_back(slot, receiver);
            return Err(e);
        }
    };
    if est.superseded && shared.role() == crate::link::Role::Backup && est.peer.role == crate::link::Role::Primary {
        // The witness numbers the primary's history: a backup follows it.
        tracing::info!("link: following the primary's epoch {}", est.peer.epoch);
        receiver.set_epoch(est.peer.epoch);
        if let Ok(mut s) = shared.link.sender.lock() {
            s.set_epoch(est.peer.epoch);
        }
    } else if est.superseded {
        shared.event(NodeEvent::Superseded(est.peer.epoch));
    }
    hb.install(est.heartbeat.clone());
    shared.link.connected.store(true, Ordering::Release);
    shared.link.sessions.fetch_add(1, Ordering::Relaxed);
    shared.event(NodeEvent::LinkUp(est.peer.node.clone()));
    let mut writer = est.writer;
    let mut reader = est.reader;
    let _ = reader.socket().set_read_timeout(None);
    let sock = writer.socket().try_clone().ok();
    if let Ok(mut cur) = shared.link.socket.lock() {
        *cur = writer.socket().try_clone().ok();
    }
    let writer_shared = shared.clone();
    let writer_thread = std::thread::Builder::new().name("ftnet-link-tx".into()).spawn(move || {
        let s = &writer_shared.link;
        loop {
            if !s.connected.load(Ordering::Acquire) {
                return;
            }
            // Frames queued without a wake-up (log records between two
            // outputs: nothing the client sees waits for them) go out
            // within a few milliseconds.
            let pending = s.sender.lock().map(|x| x.has_untransmitted()).unwrap_or(false);
            crate::sys::fd::poll_in(&[s.writer_wake.as_fd()], if pending { 1 } else { 5 });
            crate::sys::fd::eventfd_drain(s.writer_wake.as_fd());
            if let Err(e) = writer.flush_shared(&s.sender) {
                tracing::warn!("link: send failed: {e}");
                s.connected.store(false, Ordering::Release);
                return;
            }
        }
    });
    let why = loop {
        match reader.recv(&mut receiver) {
            Ok(Incoming::Frame(f)) => {
                if matches!(f.msg, crate::link::Message::Bye(_)) {
                    break "the peer said goodbye".to_string();
                }
                on_frame(shared, f);
                // The backup acknowledges once per burst: when the next
                // frame is not here yet (so the primary never waits on a
                // frame we already hold).
                if shared.role() == crate::link::Role::Backup
                    && !reader.frame_buffered()
                    && !shared.link.retired.load(Ordering::Acquire)
                {
                    // Everything received is applied unless log frames still
                    // wait for the engine (segments are applied on receipt).
                    let received = receiver.ack(0).received;
                    let applied = if shared.link.in_pipe.load(Ordering::Acquire) == 0 {
                        received
                    } else {
                        shared.link.applied.load(Ordering::Acquire)
                    };
                    let ack = receiver.ack(applied);
                    shared.link.received.store(ack.received, Ordering::Release);
                    if let Ok(mut s) = shared.link.sender.lock() {
                        s.queue_ack(ack);
                    }
                    shared.link.wake_writer();
                }
            }
            Ok(Incoming::NewerEpoch { frame, .. }) => {
                shared.event(NodeEvent::Superseded(frame.epoch));
                break format!("a frame from the newer epoch {}", frame.epoch);
            }
            Err(e) => break e.to_string(),
        }
        if !shared.link.connected.load(Ordering::Acquire) {
            break "the writer stopped".into();
        }
        if shared.link.retired.load(Ordering::Acquire) {
            break "the link was retired".into();
        }
    };
    shared.link.connected.store(false, Ordering::Release);
    shared.link.wake_writer();
    if let Some(s) = sock {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    if let Ok(t) = writer_thread {
        let _ = t.join();
    }
    put_back(slot, receiver);
    shared.event(NodeEvent::LinkDown(why));
    Ok(())
}

fn put_back(slot: &Arc<Mutex<Option<Receiver>>>, r: Receiver) {
    if let Ok(mut s) = slot.lock() {
        *s = Some(r);
    }
}

//! State shared by the daemon's threads, and its status report.
//!
//! Invariants:
//! - positions only grow: `received` and `applied` (backup), the sender's
//!   acked position (primary);
//! - the status is a snapshot assembled on request from counters; no thread
//!   blocks on another to produce it.

use crate::link::{Counters, Role, Sender};
use crate::node::config::Config;
use serde::Serialize;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// Something the main loop must react to.
#[derive(Debug)]
pub enum NodeEvent {
    /// A link session is up (the peer's node name).
    LinkUp(String),
    /// The link session ended (why).
    LinkDown(String),
    /// The peer refused to pair (the diff).
    Refused(Vec<String>),
    /// The primary fenced itself for a switchover; its stream ends at this
    /// position.
    PeerFenced(u64),
    /// A frame from a newer epoch: we were replaced.
    Superseded(u64),
    /// The replica tree ended by itself, with this status.
    ReplicaExited(i32),
    /// The engine stopped on an error (divergence or other).
    EngineFailed(String),
    /// The backup finished its takeover.
    Promoted,
    /// An operator asked this backup to take over (control socket).
    PromoteRequested { force: bool },
    /// The backup asked this primary to fence itself for a planned
    /// switchover (link).
    SwitchoverRequested,
    /// An operator told this primary to stop waiting for a lost backup and
    /// go on alone (`ftnet promote --force` on the primary).
    GoAlone,
    /// The witness granted the lease at this epoch (Start, Solo, Takeover).
    LeaseGranted(u64),
    /// The witness refused to renew: someone else holds the lease, or the
    /// epoch moved past ours. We were replaced.
    LeaseLost(String),
    /// A takeover was refused because the primary went on alone after our
    /// log: this backup can never promote.
    LeaseStale(String),
    /// An operator asked for a signal to the replica.
    SignalRequested(i32),
    /// Stop the node.
    Stop,
}

/// Link-side state shared by the link threads, the engine and output commit.
pub struct LinkState {
    pub sender: Mutex<Sender>,
    /// Signalled when acknowledgements arrive (flow control waits on it).
    pub acked_cv: Condvar,
    /// Wakes the writer thread: frames or an ack are pending.
    pub writer_wake: OwnedFd,
    pub counters: Arc<Counters>,
    /// Mirror of the sender's acked position, for lock-free readers.
    pub acked: AtomicU64,
    pub connected: AtomicBool,
    /// Output commit's wake-up, signalled on every acknowledgement.
    pub commit_wake: Mutex<Option<Arc<OwnedFd>>>,
    /// Backup: the peer's stream received and applied (by the engine).
    pub received: AtomicU64,
    pub applied: AtomicU64,
    /// Backup: log frames queued for the engine and not yet read by it.
    pub in_pipe: AtomicU64,
    /// The primary no longer replicates: log and segments are not queued.
    pub solo: AtomicBool,
    /// The primary handed over: nothing more may reach the backup.
    pub frozen: AtomicBool,
    /// Backup: the primary's fence position (frames after it are ignored);
    /// `u64::MAX` before any fence.
    pub fenced_at: AtomicU64,
    /// Frames rejected per reason are in `counters`; sessions established.
    pub sessions: AtomicU64,
    /// The current session's socket (to cut it from another thread).
    pub socket: Mutex<Option<std::net::TcpStream>>,
    /// The link is over for good: the primary went on alone or the backup
    /// is promoting. No session is accepted, dialed or acknowledged again
    /// (a stream cannot resume across a gap it never carried).
    pub retired: AtomicBool,
}

impl LinkState {
    pub fn new(epoch: u64) -> crate::sys::Result<LinkState> {
        Ok(LinkState {
            sender: Mutex::new(Sender::new(1, epoch)),
            acked_cv: Condvar::new(),
            writer_wake: crate::sys::fd::eventfd()?,
            counters: Arc::new(Counters::default()),
            acked: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            commit_wake: Mutex::new(None),
            received: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            in_pipe: AtomicU64::new(0),
            solo: AtomicBool::new(false),
            frozen: AtomicBool::new(false),
            fenced_at: AtomicU64::new(u64::MAX),
            sessions: AtomicU64::new(0),
            socket: Mutex::new(None),
            retired: AtomicBool::new(false),
        })
    }

    /// Ends the link for good (see [`LinkState::retired`]).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.close();
    }

    /// Ends the current session (its threads see the socket close).
    pub fn close(&self) {
        self.connected.store(false, Ordering::Release);
        if let Ok(mut s) = self.socket.lock()
            && let Some(s) = s.take()
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        self.wake_writer();
    }

    pub fn wake_writer(&self) {
        crate::sys::fd::eventfd_signal(self.writer_wake.as_fd());
    }

    /// Applies an acknowledgement (primary).
    pub fn on_ack(&self, received: u64, applied: u64) {
        if let Ok(mut s) = self.sender.lock() {
            if let Err(e) = s.on_ack(crate::link::Ack { received, applied }) {
                tracing::warn!("link: {e}");
            }
            self.acked.store(s.acked_through(), Ordering::Release);
        }
        self.acked_cv.notify_all();
        if let Ok(w) = self.commit_wake.lock()
            && let Some(w) = w.as_ref()
        {
            crate::sys::fd::eventfd_signal(w.as_fd());
        }
    }
}

/// What `ftnet status` shows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub node: String,
    pub role: String,
    /// starting, pairing, replicating, alone, promoting, live, diverged,
    /// fenced, stopped.
    pub state: String,
    pub peer: String,
    pub peer_state: String,
    pub last_heartbeat_ms_ago: Option<u64>,
    pub epoch: u64,
    pub log_position: u64,
    pub acked: u64,
    pub received: u64,
    pub applied: u64,
    pub lag_frames: u64,
    pub lag_bytes: u64,
    pub lag_ms: u64,
    pub connections_tracked: usize,
    pub divergences: Vec<String>,
    pub rejected_frames: crate::link::CounterSnapshot,
    pub output_commit: Option<crate::net::commit::CommitStats>,
    pub replica_exit: Option<i32>,
    pub takeover_ms: Option<f64>,
    pub detect_ms: Option<f64>,
    pub notes: Vec<String>,
}

/// Everything the threads share.
pub struct Shared {
    pub cfg: Config,
    pub role: Mutex<Role>,
    pub status: Mutex<Status>,
    pub link: LinkState,
    pub events: Mutex<std::sync::mpsc::Sender<NodeEvent>>,
    pub started: Instant,
    /// Backup: the tracker fed by forwarded segments.
    pub tracker: Arc<Mutex<crate::tcpstate::Tracker>>,
    /// Backup: what a takeover needs, kept by the replaying engine.
    pub live: crate::replica::engine::live::Shared,
    /// Requests to the engine thread.
    pub commands: Mutex<Option<crate::replica::engine::Commands>>,
}

impl Shared {
    pub fn event(&self, e: NodeEvent) {
        if let Ok(tx) = self.events.lock() {
            let _ = tx.send(e);
        }
    }

    pub fn set_state(&self, state: &str) {
        if let Ok(mut s) = self.status.lock()
            && s.state != state
        {
            tracing::info!("node state: {} -> {state}", s.state);
            s.state = state.to_string();
        }
    }

    pub fn role(&self) -> Role {
        self.role.lock().map(|r| *r).unwrap_or(Role::Backup)
    }

    pub fn note(&self, n: String) {
        tracing::warn!("{n}");
        if let Ok(mut s) = self.status.lock() {
            s.notes.push(n);
            if s.notes.len() > 20 {
                s.notes.remove(0);
            }
        }
    }
}

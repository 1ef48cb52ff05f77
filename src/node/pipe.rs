//! Byte streams between the link and the engine.
//!
//! [`LogPipe`] is the backup's log: the engine reads it like a log file
//! (preamble, header, events) while the link thread feeds it frames as they
//! arrive; dropping the feeding side ends it (the engine sees a cut stream:
//! the takeover). [`LinkSink`] is the primary's log: every record the engine
//! writes becomes a stream frame, and the engine waits when the backup is
//! too far behind (so the primary slows its replica rather than let the
//! lag grow). [`LinkForward`] hands output commit's segment copies to the
//! same stream.
//!
//! Invariant: a frame's bytes reach the engine whole and in stream order,
//! and its position counts as applied once the engine has read all of it.

use super::shared::Shared;
use crate::link::{Kind, LagBound};
use crate::replica::log::{FrameKind, LogError, Sink, frame};
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

/// The backup's end: frames in, bytes out.
pub struct LogPipe {
    rx: Receiver<(u64, Vec<u8>)>,
    cur: Vec<u8>,
    pos: usize,
    seq: u64,
    shared: Arc<Shared>,
}

/// Creates the pipe; the sender's first frame should be the log preamble.
pub fn log_pipe(shared: Arc<Shared>) -> (SyncSender<(u64, Vec<u8>)>, LogPipe) {
    let (tx, rx) = std::sync::mpsc::sync_channel(1 << 16);
    (tx, LogPipe { rx, cur: vec![], pos: 0, seq: 0, shared })
}

impl Read for LogPipe {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok((seq, bytes)) => {
                    self.cur = bytes;
                    self.pos = 0;
                    self.seq = seq;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        if self.pos == self.cur.len() {
            // The whole frame is in the engine's hands.
            let link = &self.shared.link;
            link.applied.fetch_max(self.seq, Ordering::AcqRel);
            link.in_pipe.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(n)
    }
}

/// The primary's log: records become stream frames.
pub struct LinkSink {
    pub shared: Arc<Shared>,
    pub bound: LagBound,
    /// Bytes queued since the writer was last woken.
    pub unflushed: usize,
}

/// The writer is woken for log records only past this many queued bytes;
/// otherwise output commit's flush (before any output can leave) or the
/// writer's short timer carries them.
const LOG_FLUSH_BYTES: usize = 64 << 10;

impl Sink for LinkSink {
    fn put(&mut self, kind: FrameKind, body: &[u8]) -> Result<(), LogError> {
        let link = &self.shared.link;
        if link.solo.load(Ordering::Acquire) || link.frozen.load(Ordering::Acquire) {
            return Ok(());
        }
        let bytes = frame(kind, body);
        let Ok(mut s) = link.sender.lock() else {
            return Err(LogError::Corrupt { offset: 0, what: "the link's sender lock is poisoned".into() });
        };
        // Checked again under the lock: a switchover freezes the stream
        // while holding it, and nothing may follow its fence.
        if link.frozen.load(Ordering::Acquire) {
            return Ok(());
        }
        // Flow control: the replica waits while the backup is too far behind.
        let mut waited = false;
        while s.should_wait(&self.bound, Instant::now()) && !link.solo.load(Ordering::Acquire) {
            waited = true;
            s = match link.acked_cv.wait_timeout(s, Duration::from_millis(10)) {
                Ok((g, _)) => g,
                Err(_) => {
                    return Err(LogError::Corrupt { offset: 0, what: "the link's sender lock is poisoned".into() });
                }
            };
        }
        if waited {
            tracing::debug!("link: the replica waited for the backup to catch up");
        }
        self.unflushed += bytes.len();
        s.push(Kind::Log, bytes, Instant::now())
            .map_err(|e| LogError::Corrupt { offset: 0, what: format!("link: {e}") })?;
        drop(s);
        if waited || self.unflushed >= LOG_FLUSH_BYTES {
            self.unflushed = 0;
            link.wake_writer();
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), LogError> {
        self.unflushed = 0;
        self.shared.link.wake_writer();
        Ok(())
    }
}

/// Output commit's segment copies go into the same stream.
pub struct LinkForward {
    pub shared: Arc<Shared>,
}

impl crate::net::commit::Forward for LinkForward {
    fn forward(&mut self, frame: Vec<u8>) -> u64 {
        let link = &self.shared.link;
        if link.frozen.load(Ordering::Acquire) {
            return u64::MAX;
        }
        match link.sender.lock() {
            Ok(_) if link.frozen.load(Ordering::Acquire) => u64::MAX,
            Ok(mut s) => s.push(Kind::Segment, frame, Instant::now()).unwrap_or(u64::MAX),
            Err(_) => u64::MAX,
        }
    }

    fn flush(&mut self) {
        self.shared.link.wake_writer();
    }

    fn acked(&self) -> u64 {
        self.shared.link.acked.load(Ordering::Acquire)
    }
}

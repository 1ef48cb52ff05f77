//! The node's side of the witness lease (see `crate::witness`): one thread
//! that asks the witness for what the main loop wants and keeps renewing
//! what it holds.
//!
//! What the main loop may want ([`Want`]):
//! - `Start`: a primary starting a new history (epoch + 1);
//! - `Hold`: keep renewing the epoch we hold;
//! - `Solo`: the primary goes on without its backup (epoch + 1, so no log
//!   of the older epoch can ever be promoted);
//! - `Takeover { log_epoch }`: a backup promotes; granted only when the
//!   primary's lease lapsed and the witness is still at the epoch of our log;
//! - `Release`: a planned switchover hands the lease over.
//!
//! Invariants:
//! - the lease counts as held only until `sent + ttl - margin` of the
//!   request that was granted ([`crate::witness::valid_until`]), so our view
//!   lapses before the witness's. The deadline is kept on CLOCK_BOOTTIME
//!   (which counts a suspended machine's sleep) in an atomic that output
//!   commit also reads for every packet it lets out alone
//!   ([`Lease::deadline`]), so a stalled main loop cannot extend it;
//! - a grant is reported once ([`NodeEvent::LeaseGranted`]); a renewal the
//!   witness refuses (someone else holds it, or the epoch moved) is reported
//!   as [`NodeEvent::LeaseLost`] and renewing stops; a takeover refused
//!   because the epoch moved past our log is [`NodeEvent::LeaseStale`];
//! - unreachable witness: nothing is reported but the lapse (the caller asks
//!   [`Lease::valid`]); requests never block longer than a quarter TTL;
//! - a Start denied because someone (even this node, before a restart)
//!   holds the lease is asked again only after that lease and one TTL more,
//!   so the backup of that history wins its lapse with a Takeover;
//! - a grant that moved the epoch is recorded even if the main loop wanted
//!   something else meanwhile (a Release must name the epoch we hold);
//! - while nothing is wanted, [`Lease::probe`] makes the thread query the
//!   witness each quarter TTL, so [`Lease::reachable`] says whether it
//!   answered within one TTL (a backup tells its primary so).

use super::shared::{NodeEvent, Shared};
use crate::witness::{Answer, LeaseClient, Request};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the main loop wants from the witness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Idle,
    Start,
    Hold,
    Solo,
    Takeover { log_epoch: u64 },
    Release,
}

#[derive(Debug)]
struct Inner {
    want: Want,
    /// The epoch we hold (0: none).
    epoch: u64,
    /// The last answer's view of the lease.
    holder: Option<String>,
    witness_epoch: u64,
    solo: bool,
    /// Query the witness while nothing is wanted.
    probe: bool,
    /// A denied Start asks again only after the holder's lease and one TTL
    /// more, so a backup's Takeover of that history wins the lapse.
    start_after: Option<Instant>,
    last_error: Option<String>,
    last_denial: Option<String>,
    requests: u64,
    failures: u64,
    last_ok: Option<Instant>,
}

/// The lease and its thread (see the module docs).
pub struct Lease {
    inner: Mutex<Inner>,
    /// CLOCK_BOOTTIME ns until which we hold the lease (0: not held).
    until: Arc<AtomicU64>,
    cv: Condvar,
    ttl: Duration,
    witness: String,
}

impl Lease {
    /// Starts the lease thread with `client`; nothing is requested until
    /// [`Lease::want`].
    pub fn spawn(shared: Arc<Shared>, client: Box<dyn LeaseClient>, witness: String) -> std::io::Result<Arc<Lease>> {
        let ttl = Duration::from_millis(shared.cfg.link.lease_ms);
        let lease = Arc::new(Lease {
            until: Arc::new(AtomicU64::new(0)),
            inner: Mutex::new(Inner {
                want: Want::Idle,
                epoch: 0,
                holder: None,
                witness_epoch: 0,
                solo: false,
                probe: false,
                start_after: None,
                last_error: None,
                last_denial: None,
                requests: 0,
                failures: 0,
                last_ok: None,
            }),
            cv: Condvar::new(),
            ttl,
            witness,
        });
        let l2 = lease.clone();
        std::thread::Builder::new().name("ftnet-lease".into()).spawn(move || l2.run(&shared, client))?;
        Ok(lease)
    }

    /// Asks for `w` now (the thread wakes at once).
    pub fn want(&self, w: Want) {
        if let Ok(mut g) = self.inner.lock() {
            if g.want != w {
                g.want = w;
                g.last_denial = None;
                g.start_after = None;
            }
            self.cv.notify_all();
        }
    }

    /// Whether we hold the lease right now (by our own, earlier-lapsing
    /// clock).
    pub fn valid(&self) -> bool {
        let until = self.until.load(Ordering::Acquire);
        until != 0 && boot_ns() < until && self.epoch() > 0
    }

    /// The CLOCK_BOOTTIME deadline (ns) of the lease we hold, 0 when none:
    /// for output commit's per-packet check.
    pub fn deadline(&self) -> Arc<AtomicU64> {
        self.until.clone()
    }

    /// How long we still hold the lease (zero when we do not), and the
    /// CLOCK_BOOTTIME deadline that says so.
    pub fn valid_for(&self) -> (Duration, u64) {
        let until = self.until.load(Ordering::Acquire);
        let left = if self.epoch() > 0 { until.saturating_sub(boot_ns()) } else { 0 };
        (Duration::from_nanos(left), until)
    }

    fn set_until(&self, sent_boot: u64, sent: Instant, ttl: Duration) {
        let left = crate::witness::valid_until(sent, ttl).saturating_duration_since(sent);
        self.until.store(sent_boot + left.as_nanos() as u64, Ordering::Release);
    }

    /// Query the witness while nothing is wanted (see [`Lease::reachable`]).
    pub fn probe(&self, on: bool) {
        if let Ok(mut g) = self.inner.lock()
            && g.probe != on
        {
            g.probe = on;
            self.cv.notify_all();
        }
    }

    /// Whether the witness answered (anything) within one TTL.
    pub fn reachable(&self) -> bool {
        self.inner.lock().map(|g| g.last_ok.is_some_and(|t| t.elapsed() < self.ttl)).unwrap_or(false)
    }

    /// The epoch we hold (0: none).
    pub fn epoch(&self) -> u64 {
        self.inner.lock().map(|g| g.epoch).unwrap_or(0)
    }

    /// For `ftnet status`.
    pub fn status(&self) -> serde_json::Value {
        let Ok(g) = self.inner.lock() else { return serde_json::Value::Null };
        let now = Instant::now();
        let (until, now_boot) = (self.until.load(Ordering::Acquire), boot_ns());
        serde_json::json!({
            "witness": self.witness,
            "ttl_ms": self.ttl.as_millis() as u64,
            "wanted": format!("{:?}", g.want),
            "held": g.epoch > 0 && until != 0 && now_boot < until,
            "epoch": g.epoch,
            "valid_for_ms": (until != 0).then(|| until.saturating_sub(now_boot) / 1_000_000),
            "holder": g.holder,
            "witness_epoch": g.witness_epoch,
            "solo": g.solo,
            "reachable": g.last_ok.is_some_and(|t| now.duration_since(t) < self.ttl),
            "last_answer_ms_ago": g.last_ok.map(|t| now.duration_since(t).as_millis() as u64),
            "requests": g.requests,
            "failures": g.failures,
            "last_error": g.last_error,
            "last_denial": g.last_denial,
        })
    }

    fn run(&self, shared: &Shared, mut client: Box<dyn LeaseClient>) {
        let service = hex(&shared.cfg.digest());
        let node = shared.cfg.node.name.clone();
        let period = (self.ttl / 4).max(Duration::from_millis(5));
        loop {
            let (want, epoch, probe, start_after) = match self.inner.lock() {
                Ok(g) => (g.want, g.epoch, g.probe, g.start_after),
                Err(_) => return,
            };
            let round = Instant::now();
            if want == Want::Start
                && let Some(t) = start_after
                && round < t
            {
                let Ok(g) = self.inner.lock() else { return };
                let _ = self.cv.wait_timeout_while(g, t - round, |g| g.want == want);
                continue;
            }
            let req = match want {
                Want::Idle => None,
                Want::Start => Some(Request::Start),
                Want::Hold => Some(Request::Renew { epoch }),
                Want::Solo => Some(Request::Solo { epoch }),
                Want::Takeover { log_epoch } => Some(Request::Takeover { log_epoch }),
                Want::Release => Some(Request::Release { epoch }),
            };
            if let Some(req) = req {
                let (sent_boot, sent) = (boot_ns(), Instant::now());
                let answer = client.request(&service, &node, req, self.ttl, period);
                self.apply(shared, want, (sent_boot, sent), answer);
            } else if probe {
                let view = client.query(&service, period);
                self.observe(view);
            }
            // One round per period from its start: a request that timed out
            // is retried at once, not a period later.
            let Ok(g) = self.inner.lock() else { return };
            let rest = period.saturating_sub(round.elapsed());
            let _ = self.cv.wait_timeout_while(g, rest, |g| g.want == want && g.probe == probe);
        }
    }

    /// A probe's answer: only the view of the lease and the reachability.
    fn observe(&self, view: Result<crate::witness::LeaseView, crate::witness::WitnessError>) {
        let Ok(mut g) = self.inner.lock() else { return };
        g.requests += 1;
        match view {
            Ok(v) => {
                g.last_ok = Some(Instant::now());
                g.last_error = None;
                g.holder = v.holder;
                g.witness_epoch = v.epoch;
            }
            Err(e) => {
                g.failures += 1;
                g.last_error = Some(e.to_string());
            }
        }
    }

    fn apply(
        &self,
        shared: &Shared,
        want: Want,
        (sent_boot, sent): (u64, Instant),
        answer: Result<Answer, crate::witness::WitnessError>,
    ) {
        let Ok(mut g) = self.inner.lock() else { return };
        g.requests += 1;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                g.failures += 1;
                if g.last_error.as_deref() != Some(&e.to_string()) {
                    tracing::warn!("witness {}: {e}", self.witness);
                }
                g.last_error = Some(e.to_string());
                return;
            }
        };
        g.last_ok = Some(Instant::now());
        g.last_error = None;
        if g.want != want {
            // The main loop changed its mind while we asked: the next round
            // asks for the new thing. A grant that moved the epoch is still
            // ours and must be known (a Release, say, names the epoch).
            if let Answer::Granted { epoch, ttl } = answer
                && matches!(want, Want::Start | Want::Solo | Want::Takeover { .. })
            {
                g.epoch = epoch;
                g.witness_epoch = epoch;
                g.holder = Some(shared.cfg.node.name.clone());
                self.set_until(sent_boot, sent, ttl.min(self.ttl));
            }
            return;
        }
        match answer {
            Answer::Granted { epoch, ttl } => {
                let fresh = epoch != g.epoch || matches!(want, Want::Start | Want::Solo | Want::Takeover { .. });
                g.epoch = epoch;
                g.witness_epoch = epoch;
                g.holder = Some(shared.cfg.node.name.clone());
                self.set_until(sent_boot, sent, ttl.min(self.ttl));
                g.last_denial = None;
                match want {
                    Want::Release => {
                        g.epoch = 0;
                        self.until.store(0, Ordering::Release);
                        g.holder = None;
                        g.want = Want::Idle;
                    }
                    Want::Solo => {
                        g.solo = true;
                        g.want = Want::Hold;
                    }
                    Want::Start | Want::Takeover { .. } => g.want = Want::Hold,
                    _ => {}
                }
                if fresh && want != Want::Release {
                    drop(g);
                    shared.event(NodeEvent::LeaseGranted(epoch));
                }
            }
            Answer::Denied { holder, epoch, remaining, reason } => {
                let text = format!(
                    "{reason} (holder {}, epoch {epoch}, {} ms left)",
                    holder.as_deref().unwrap_or("none"),
                    remaining.as_millis()
                );
                g.holder = holder;
                g.witness_epoch = epoch;
                g.last_denial = Some(text.clone());
                match want {
                    Want::Hold | Want::Solo => {
                        g.want = Want::Idle;
                        g.epoch = 0;
                        self.until.store(0, Ordering::Release);
                        drop(g);
                        shared.event(NodeEvent::LeaseLost(text));
                    }
                    Want::Takeover { log_epoch } if epoch != log_epoch => {
                        g.want = Want::Idle;
                        drop(g);
                        shared.event(NodeEvent::LeaseStale(text));
                    }
                    Want::Release => {
                        g.want = Want::Idle;
                        g.epoch = 0;
                        self.until.store(0, Ordering::Release);
                    }
                    Want::Start if g.holder.is_some() => {
                        g.start_after = Some(Instant::now() + remaining + self.ttl);
                    }
                    // Takeover waits for the holder's lease to lapse.
                    _ => {}
                }
            }
        }
    }
}

/// The witness, for logs and status.
pub fn describe(w: &crate::witness::WitnessConfig) -> String {
    match w {
        crate::witness::WitnessConfig::Ftnet { address } => format!("ftnet witness at {address}"),
        crate::witness::WitnessConfig::Etcd { endpoints, .. } => format!("etcd at {}", endpoints.join(",")),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// CLOCK_BOOTTIME in ns: runs on while the machine is suspended.
fn boot_ns() -> u64 {
    crate::sys::fd::clock_ns(libc::CLOCK_BOOTTIME).max(0) as u64
}

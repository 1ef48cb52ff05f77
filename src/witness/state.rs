//! The lease state machine ([`decide`], pure) and the ftnet witness's
//! persistent store ([`Store`]).
//!
//! Invariants:
//! - [`decide`] is the only place that says whether a request is granted;
//!   both backends (the ftnet witness and etcd) call it, so they agree;
//! - a granted Start, Solo or Takeover yields an epoch strictly above the
//!   stored one, and nothing ever lowers it ([`WitnessError::EpochOverflow`]
//!   rather than wrap);
//! - [`Store::handle`] writes a changed state to disk (temp file, fsync,
//!   rename, fsync of the directory) *before* it changes its memory or
//!   returns the answer; if writing fails, nothing changed;
//! - [`Store::open`] either reads back exactly what was written (a blake3
//!   checksum covers the content) or fails naming the file; only `init`
//!   starts empty, and only where no file exists (a witness pointed at a
//!   wrong path must not restart every epoch at 1). Every holder read back
//!   holds for its full TTL from the load.

use super::{Answer, LeaseView, Request, WitnessError, check_name, check_ttl, ms};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The persisted part of a lease.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub epoch: u64,
    pub holder: Option<String>,
    pub solo: bool,
}

/// What [`decide`] says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Granted: `next` is the new persisted state (equal to the current one
    /// when nothing changes); the expiry becomes now + ttl (Release: none).
    Grant { next: Lease },
    /// Denied, with the reason for the node's log.
    Deny { reason: String },
}

/// Whether `node`'s `req` is granted, given the current lease, how long its
/// holder has left (`live`: none when free or expired) and whether it lapsed
/// less than one TTL ago (`lapsed_recently`: a Start waits that out so a
/// backup of that history takes over first; etcd cannot tell and passes
/// false).
pub fn decide(
    cur: &Lease,
    live: Option<Duration>,
    lapsed_recently: bool,
    node: &str,
    req: &Request,
) -> Result<Verdict, String> {
    let mine = cur.holder.as_deref() == Some(node);
    let bump = || cur.epoch.checked_add(1).ok_or_else(|| format!("epoch {} cannot grow", cur.epoch));
    let held_by_other = || match (&cur.holder, live) {
        (Some(h), Some(left)) => format!("held by {h} for {} ms more", ms(left)),
        (Some(h), None) => format!("held by {h} (expired), not by {node}"),
        (None, _) => format!("the lease is free (released or never granted), not held by {node}"),
    };
    let grant = |next: Lease| Ok(Verdict::Grant { next });
    let deny = |reason: String| Ok(Verdict::Deny { reason });
    match *req {
        Request::Start => match (&cur.holder, live) {
            (Some(_), Some(_)) => deny(held_by_other()),
            (Some(h), None) if lapsed_recently => deny(format!(
                "{h}'s lease lapsed less than a TTL ago: a new history waits one TTL more, so a backup of epoch {} \
                 can take over first",
                cur.epoch
            )),
            _ => grant(Lease { epoch: bump()?, holder: Some(node.into()), solo: false }),
        },
        Request::Renew { epoch } | Request::Solo { epoch } | Request::Release { epoch } => {
            let solo = matches!(req, Request::Solo { .. });
            if mine && cur.epoch == epoch {
                return match req {
                    Request::Renew { .. } => grant(cur.clone()),
                    Request::Solo { .. } => grant(Lease { epoch: bump()?, holder: Some(node.into()), solo: true }),
                    _ => grant(Lease { holder: None, ..cur.clone() }),
                };
            }
            // Retries after a lost answer (see the module docs).
            if solo && mine && cur.solo && Some(cur.epoch) == epoch.checked_add(1) {
                return grant(cur.clone());
            }
            if matches!(req, Request::Release { .. }) && cur.holder.is_none() && cur.epoch == epoch {
                return grant(cur.clone());
            }
            if !mine {
                deny(held_by_other())
            } else {
                deny(format!("your epoch is {epoch} but the lease is at epoch {}", cur.epoch))
            }
        }
        Request::Takeover { log_epoch } => {
            if mine && !cur.solo && Some(cur.epoch) == log_epoch.checked_add(1) {
                return grant(cur.clone());
            }
            if let (Some(_), Some(_)) = (&cur.holder, live) {
                return deny(held_by_other());
            }
            if cur.epoch != log_epoch {
                let why = if cur.epoch < log_epoch {
                    "newer than the lease: wrong witness, or the witness lost its state"
                } else if cur.solo {
                    "the primary went on alone since"
                } else {
                    "a newer history started since"
                };
                return deny(format!(
                    "your log is from epoch {log_epoch} but the lease is at epoch {}: {why}",
                    cur.epoch
                ));
            }
            grant(Lease { epoch: bump()?, holder: Some(node.into()), solo: false })
        }
    }
}

/// One service as the ftnet witness keeps it on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub epoch: u64,
    pub holder: Option<String>,
    pub solo: bool,
    /// The TTL last granted (a restart holds the holder this long).
    pub ttl_ms: u64,
}

impl Record {
    fn lease(&self) -> Lease {
        Lease { epoch: self.epoch, holder: self.holder.clone(), solo: self.solo }
    }
}

const FORMAT: &str = "ftnet-witness-state";
const VERSION: u32 = 1;
/// Most services one witness keeps.
pub const MAX_SERVICES: usize = 10_000;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: String,
    version: u32,
    services: BTreeMap<String, Record>,
    /// blake3 of the canonical JSON of `services`, hex.
    check: String,
}

fn checksum(services: &BTreeMap<String, Record>) -> String {
    let bytes = serde_json::to_vec(services).unwrap_or_default();
    blake3::hash(&bytes).to_hex().to_string()
}

/// The ftnet witness's leases and their state file.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    services: BTreeMap<String, Record>,
    expiry: HashMap<String, Instant>,
}

impl Store {
    /// Loads `path`; with `init`, creates it empty where no file exists yet.
    /// Every holder read back holds until `now` + its TTL.
    pub fn open(path: &Path, now: Instant, init: bool) -> Result<Store, WitnessError> {
        let name = path.display().to_string();
        let corrupt = |what: String| WitnessError::StateCorrupt { path: name.clone(), what };
        let services = match std::fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && init => {
                write_atomic(path, &BTreeMap::new())?;
                BTreeMap::new()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(WitnessError::StateMissing { path: name });
            }
            Ok(_) if init => return Err(WitnessError::StateExists { path: name }),
            Err(source) => return Err(WitnessError::StateIo { path: name, source }),
            Ok(bytes) => {
                let f: File = serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not a state file: {e}")))?;
                if f.format != FORMAT || f.version != VERSION {
                    return Err(corrupt(format!(
                        "format {:?} version {}, expected {FORMAT:?} version {VERSION}",
                        f.format, f.version
                    )));
                }
                if checksum(&f.services) != f.check {
                    return Err(corrupt("checksum mismatch (the content was altered or damaged)".into()));
                }
                for (s, r) in &f.services {
                    check_name("service", s).map_err(|e| corrupt(e.to_string()))?;
                    if let Some(h) = &r.holder {
                        check_name("node", h).map_err(|e| corrupt(e.to_string()))?;
                    }
                    check_ttl(Duration::from_millis(r.ttl_ms)).map_err(|e| corrupt(format!("service {s}: {e}")))?;
                }
                f.services
            }
        };
        let expiry = services
            .iter()
            .filter(|(_, r)| r.holder.is_some())
            .map(|(s, r)| (s.clone(), now + Duration::from_millis(r.ttl_ms)))
            .collect();
        Ok(Store { path: path.to_path_buf(), services, expiry })
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many services the store knows.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    fn live(&self, service: &str, now: Instant) -> Option<Duration> {
        let r = self.services.get(service)?;
        r.holder.as_ref()?;
        let exp = self.expiry.get(service)?;
        (*exp > now).then(|| *exp - now)
    }

    /// Decides `node`'s `req` on `service` at `now`; a changed state is on
    /// disk before this returns.
    pub fn handle(
        &mut self,
        now: Instant,
        service: &str,
        node: &str,
        req: Request,
        ttl: Duration,
    ) -> Result<Answer, WitnessError> {
        check_name("service", service)?;
        check_name("node", node)?;
        check_ttl(ttl)?;
        let cur = self.services.get(service).cloned().unwrap_or_default();
        let live = self.live(service, now);
        let lapsed_recently = live.is_none()
            && cur.holder.is_some()
            && self.expiry.get(service).is_some_and(|e| now < *e + Duration::from_millis(cur.ttl_ms));
        let verdict = decide(&cur.lease(), live, lapsed_recently, node, &req)
            .map_err(|_| WitnessError::EpochOverflow { service: service.into() })?;
        match verdict {
            Verdict::Deny { reason } => Ok(Answer::Denied {
                holder: cur.holder.clone(),
                epoch: cur.epoch,
                remaining: live.unwrap_or_default(),
                reason,
            }),
            Verdict::Grant { next } => {
                let release = matches!(req, Request::Release { .. });
                let ttl_ms = if release { cur.ttl_ms } else { ms(ttl).max(1) };
                let rec = Record { epoch: next.epoch, holder: next.holder, solo: next.solo, ttl_ms };
                if rec != cur {
                    if !self.services.contains_key(service) && self.services.len() >= MAX_SERVICES {
                        return Err(WitnessError::Invalid(format!(
                            "the witness already keeps {MAX_SERVICES} services"
                        )));
                    }
                    let mut all = self.services.clone();
                    all.insert(service.to_string(), rec.clone());
                    write_atomic(&self.path, &all)?;
                    self.services = all;
                }
                if release {
                    self.expiry.remove(service);
                    Ok(Answer::Granted { epoch: rec.epoch, ttl: Duration::ZERO })
                } else {
                    self.expiry.insert(service.to_string(), now + ttl);
                    Ok(Answer::Granted { epoch: rec.epoch, ttl })
                }
            }
        }
    }

    /// The lease of `service` at `now`.
    pub fn query(&self, service: &str, now: Instant) -> LeaseView {
        let r = self.services.get(service).cloned().unwrap_or_default();
        LeaseView { holder: r.holder, epoch: r.epoch, solo: r.solo, remaining: self.live(service, now) }
    }
}

/// Writes the state file atomically: a temp file beside it, fsync, rename
/// over it, fsync of the directory.
fn write_atomic(path: &Path, services: &BTreeMap<String, Record>) -> Result<(), WitnessError> {
    use std::io::Write;
    let name = path.display().to_string();
    let io = |source| WitnessError::StateIo { path: name.clone(), source };
    let file = File { format: FORMAT.into(), version: VERSION, services: services.clone(), check: checksum(services) };
    let mut text = serde_json::to_vec_pretty(&file).map_err(|e| io(std::io::Error::other(e)))?;
    text.push(b'\n');
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&text).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_millis(400);

    fn ms_(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn granted(a: &Answer) -> u64 {
        match a {
            Answer::Granted { epoch, .. } => *epoch,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    fn denied(a: &Answer) -> &str {
        match a {
            Answer::Denied { reason, .. } => reason,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    fn store() -> (tempfile::TempDir, Store, Instant) {
        let d = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let s = Store::open(&d.path().join("state.json"), t, true).unwrap();
        (d, s, t)
    }

    #[test]
    fn epochs_strictly_increase() {
        let (_d, mut s, t) = store();
        let e1 = granted(&s.handle(t, "svc", "a", Request::Start, TTL).unwrap());
        assert_eq!(e1, 1);
        // Not even its holder starts a new history while the lease lives (a
        // primary restarted at once must not cut off its backup's log).
        let d = s.handle(t + ms_(10), "svc", "a", Request::Start, TTL).unwrap();
        assert!(denied(&d).contains("held by a"), "{d:?}");
        // Nor right after it lapsed: a backup of epoch 1 may take over first.
        let d = s.handle(t + TTL + ms_(1), "svc", "a", Request::Start, TTL).unwrap();
        assert!(denied(&d).contains("lapsed less than a TTL ago"), "{d:?}");
        let t1 = t + TTL * 2 + ms_(1);
        let e2 = granted(&s.handle(t1, "svc", "a", Request::Start, TTL).unwrap());
        let e3 = granted(&s.handle(t1, "svc", "a", Request::Solo { epoch: e2 }, TTL).unwrap());
        let t2 = t1 + TTL + ms_(1);
        let e4 = granted(&s.handle(t2, "svc", "b", Request::Takeover { log_epoch: e3 }, TTL).unwrap());
        assert!(e1 < e2 && e2 < e3 && e3 < e4, "{e1} {e2} {e3} {e4}");
        assert_eq!(granted(&s.handle(t2, "svc", "b", Request::Renew { epoch: e4 }, TTL).unwrap()), e4);
        let v = s.query("svc", t2);
        assert_eq!((v.holder.as_deref(), v.epoch, v.solo, v.remaining), (Some("b"), e4, false, Some(TTL)));
        // Services are independent.
        assert_eq!(granted(&s.handle(t2, "other", "b", Request::Start, TTL).unwrap()), 1);
    }

    #[test]
    fn takeover_waits_for_expiry_and_needs_the_right_log_epoch() {
        let (_d, mut s, t) = store();
        let e = granted(&s.handle(t, "svc", "a", Request::Start, TTL).unwrap());
        // Held and not expired: denied, with who and for how long.
        let a = s.handle(t + ms_(100), "svc", "b", Request::Takeover { log_epoch: e }, TTL).unwrap();
        assert_eq!(
            a,
            Answer::Denied {
                holder: Some("a".into()),
                epoch: e,
                remaining: ms_(300),
                reason: "held by a for 300 ms more".into()
            }
        );
        let a = s.handle(t + ms_(100), "svc", "b", Request::Start, TTL).unwrap();
        assert!(denied(&a).contains("held by a for 300 ms"), "{a:?}");
        // Expired: only the right log epoch wins.
        let late = t + TTL;
        let a = s.handle(late, "svc", "b", Request::Takeover { log_epoch: e - 1 }, TTL).unwrap();
        assert!(denied(&a).contains("your log is from epoch 0 but the lease is at epoch 1"), "{a:?}");
        let a = s.handle(late, "svc", "b", Request::Takeover { log_epoch: e + 5 }, TTL).unwrap();
        assert!(denied(&a).contains("wrong witness"), "{a:?}");
        assert_eq!(granted(&s.handle(late, "svc", "b", Request::Takeover { log_epoch: e }, TTL).unwrap()), e + 1);
        // The old primary cannot come back.
        let a = s.handle(late, "svc", "a", Request::Renew { epoch: e }, TTL).unwrap();
        assert!(denied(&a).contains("held by b for 400 ms more"), "{a:?}");
        let a = s.handle(late, "svc", "a", Request::Solo { epoch: e }, TTL).unwrap();
        assert!(denied(&a).contains("held by b"), "{a:?}");
        let a = s.handle(late, "svc", "c", Request::Takeover { log_epoch: e }, TTL).unwrap();
        assert!(denied(&a).contains("held by b"), "{a:?}");
    }

    #[test]
    fn solo_makes_older_logs_useless() {
        let (_d, mut s, t) = store();
        let e = granted(&s.handle(t, "svc", "a", Request::Start, TTL).unwrap());
        let es = granted(&s.handle(t, "svc", "a", Request::Solo { epoch: e }, TTL).unwrap());
        assert_eq!(es, e + 1);
        assert!(s.query("svc", t).solo);
        let late = t + TTL * 2;
        let a = s.handle(late, "svc", "b", Request::Takeover { log_epoch: e }, TTL).unwrap();
        let r = denied(&a);
        assert!(
            r.contains("your log is from epoch 1 but the lease is at epoch 2: the primary went on alone since"),
            "{r}"
        );
        match a {
            Answer::Denied { holder, epoch, remaining, .. } => {
                assert_eq!((holder.as_deref(), epoch, remaining), (Some("a"), 2, Duration::ZERO))
            }
            _ => unreachable!(),
        }
        // A retried Solo (its answer lost) is granted again without a new epoch.
        assert_eq!(granted(&s.handle(late, "svc", "a", Request::Solo { epoch: e }, TTL).unwrap()), es);
        // A Renew with the old epoch is not.
        let a = s.handle(late, "svc", "a", Request::Renew { epoch: e }, TTL).unwrap();
        assert!(denied(&a).contains("your epoch is 1 but the lease is at epoch 2"), "{a:?}");
    }

    #[test]
    fn release_then_takeover() {
        let (_d, mut s, t) = store();
        let e = granted(&s.handle(t, "svc", "a", Request::Start, TTL).unwrap());
        let a = s.handle(t, "svc", "b", Request::Release { epoch: e }, TTL).unwrap();
        assert!(denied(&a).contains("held by a"), "{a:?}");
        let a = s.handle(t, "svc", "a", Request::Release { epoch: e + 1 }, TTL).unwrap();
        assert!(denied(&a).contains("your epoch is 2"), "{a:?}");
        assert_eq!(
            s.handle(t, "svc", "a", Request::Release { epoch: e }, TTL).unwrap(),
            Answer::Granted { epoch: e, ttl: Duration::ZERO }
        );
        let v = s.query("svc", t);
        assert_eq!((v.holder, v.epoch, v.remaining), (None, e, None));
        // Released: the holder cannot renew; a retried release is fine.
        let a = s.handle(t, "svc", "a", Request::Renew { epoch: e }, TTL).unwrap();
        assert!(denied(&a).contains("free"), "{a:?}");
        assert_eq!(granted(&s.handle(t, "svc", "a", Request::Release { epoch: e }, TTL).unwrap()), e);
        // The backup takes over at once, no waiting.
        assert_eq!(granted(&s.handle(t, "svc", "b", Request::Takeover { log_epoch: e }, TTL).unwrap()), e + 1);
        // A retried takeover (answer lost) gets the same epoch.
        assert_eq!(granted(&s.handle(t, "svc", "b", Request::Takeover { log_epoch: e }, TTL).unwrap()), e + 1);
        assert_eq!(s.query("svc", t).epoch, e + 1);
    }

    #[test]
    fn renew_after_expiry_when_nobody_took_it() {
        let (_d, mut s, t) = store();
        let e = granted(&s.handle(t, "svc", "a", Request::Start, TTL).unwrap());
        let late = t + TTL * 3;
        assert_eq!(s.query("svc", late).remaining, None);
        assert_eq!(
            s.handle(late, "svc", "a", Request::Renew { epoch: e }, TTL).unwrap(),
            Answer::Granted { epoch: e, ttl: TTL }
        );
        assert_eq!(s.query("svc", late).remaining, Some(TTL));
        // Renew with a wrong epoch or by someone else is denied.
        assert!(denied(&s.handle(late, "svc", "a", Request::Renew { epoch: e + 1 }, TTL).unwrap()).contains("epoch"));
        assert!(denied(&s.handle(late, "svc", "b", Request::Renew { epoch: e }, TTL).unwrap()).contains("held by a"));
    }

    #[test]
    fn bad_requests_are_errors() {
        let (_d, mut s, t) = store();
        assert!(s.handle(t, "svc", "a b", Request::Start, TTL).is_err());
        assert!(s.handle(t, "", "a", Request::Start, TTL).is_err());
        assert!(s.handle(t, "svc", "a", Request::Start, Duration::ZERO).is_err());
        let cur = Lease { epoch: u64::MAX, holder: None, solo: false };
        assert!(decide(&cur, None, false, "a", &Request::Start).is_err());
        assert!(decide(&cur, None, false, "a", &Request::Takeover { log_epoch: u64::MAX }).is_err());
        assert!(s.is_empty());
    }

    #[test]
    fn state_survives_a_reload_and_a_restart_holds_for_one_ttl() {
        let (d, mut s, t) = store();
        let e = granted(&s.handle(t, "svc", "a", Request::Start, TTL).unwrap());
        let e = granted(&s.handle(t, "svc", "a", Request::Solo { epoch: e }, TTL).unwrap());
        granted(&s.handle(t, "free", "x", Request::Start, TTL).unwrap());
        granted(&s.handle(t, "free", "x", Request::Release { epoch: 1 }, TTL).unwrap());
        let path = d.path().join("state.json");
        // The witness restarts long after the lease expired: it holds anyway.
        let t2 = t + Duration::from_secs(60);
        let mut s2 = Store::open(&path, t2, false).unwrap();
        assert_eq!(s2.len(), 2);
        assert_eq!(
            s2.query("svc", t2),
            LeaseView { holder: Some("a".into()), epoch: e, solo: true, remaining: Some(TTL) }
        );
        assert_eq!(s2.query("free", t2).remaining, None);
        let a = s2.handle(t2 + ms_(399), "svc", "b", Request::Takeover { log_epoch: e }, TTL).unwrap();
        assert!(denied(&a).contains("held by a for 1 ms more"), "{a:?}");
        assert_eq!(granted(&s2.handle(t2 + TTL, "svc", "b", Request::Takeover { log_epoch: e }, TTL).unwrap()), e + 1);
        // The epoch never goes back: a third load sees the takeover.
        let s3 = Store::open(&path, t2, false).unwrap();
        assert_eq!(s3.query("svc", t2).epoch, e + 1);
        assert_eq!(s3.query("svc", t2).holder.as_deref(), Some("b"));
        // A renew does not rewrite the file (same ttl), a ttl change does.
        let before = std::fs::read(&path).unwrap();
        granted(&s2.handle(t2 + TTL, "svc", "b", Request::Renew { epoch: e + 1 }, TTL).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), before);
        granted(&s2.handle(t2 + TTL, "svc", "b", Request::Renew { epoch: e + 1 }, TTL * 2).unwrap());
        let s4 = Store::open(&path, t2, false).unwrap();
        assert_eq!(s4.query("svc", t2).remaining, Some(TTL * 2));
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file() {
        let (d, mut s, t) = store();
        granted(&s.handle(t, "svc", "a", Request::Start, TTL).unwrap());
        let path = d.path().join("state.json");
        let good = std::fs::read_to_string(&path).unwrap();
        let name = path.display().to_string();
        let cases = [
            good.replace("\"epoch\": 1", "\"epoch\": 7"),
            good[..good.len() / 2].to_string(),
            String::new(),
            good.replace("ftnet-witness-state", "something-else"),
            good.replace("\"version\": 1", "\"version\": 2"),
            "\u{0}\u{1}garbage".into(),
        ];
        for (i, bad) in cases.iter().enumerate() {
            assert_ne!(*bad, good, "case {i} must change the file");
            std::fs::write(&path, bad).unwrap();
            let e = Store::open(&path, t, false).unwrap_err().to_string();
            assert!(e.contains(&name) && e.contains("never be reused"), "case {i}: {e}");
        }
        // A directory where the file should be is an I/O error naming it.
        let e = Store::open(d.path(), t, false).unwrap_err().to_string();
        assert!(e.contains(&d.path().display().to_string()), "{e}");
        // No file is an error unless a new witness is asked for, and a new
        // witness never overwrites an old one's state.
        let missing = d.path().join("missing.json");
        let e = Store::open(&missing, t, false).unwrap_err().to_string();
        assert!(e.contains("missing.json does not exist: start a new witness with --init"), "{e}");
        std::fs::write(&path, &good).unwrap();
        let e = Store::open(&path, t, true).unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), good);
        // A new witness's file is written at once (a restart finds it).
        let e = Store::open(&d.path().join("no/such/dir/state.json"), t, true).unwrap_err().to_string();
        assert!(e.contains("no/such/dir/state.json"), "{e}");
        let fresh = d.path().join("fresh.json");
        Store::open(&fresh, t, true).unwrap();
        assert!(Store::open(&fresh, t, false).unwrap().is_empty());
        // Writing fails cleanly too: nothing changes in memory.
        let mut s = Store::open(&fresh, t, false).unwrap();
        std::fs::remove_file(&fresh).unwrap();
        std::fs::create_dir(&fresh).unwrap();
        let e = s.handle(t, "svc", "a", Request::Start, TTL).unwrap_err().to_string();
        assert!(e.contains("fresh.json"), "{e}");
        assert_eq!(s.query("svc", t).epoch, 0);
    }
}

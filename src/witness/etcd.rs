//! The witness on an existing etcd v3 cluster, through its HTTP/JSON gateway
//! (`/v3/kv/range`, `/v3/kv/txn`, `/v3/lease/{grant,keepalive,revoke,
//! timetolive}`), with a small blocking HTTP/1.1 client.
//!
//! # Keys, per service
//! | key | etcd lease | value |
//! |---|---|---|
//! | `{prefix}/{service}/epoch` | none | the last epoch granted, decimal |
//! | `{prefix}/{service}/owner` | none | `NODE EPOCH SOLO` of the last grant; NODE is `-` after a release |
//! | `{prefix}/{service}/holder` | the holder's | `NODE EPOCH SOLO`, present while the lease is live |
//!
//! The lease is the [`super::LeaseView`] `{ holder: owner's node, epoch,
//! solo }`, live while the holder key exists (etcd deletes it when its lease
//! expires). The `owner` key is what lets "Renew after expiry when nobody
//! took it" and Release behave exactly as on the ftnet witness.
//!
//! # How a request runs
//! Read the three keys (one linearizable range), decide with the same
//! [`decide`] as the ftnet witness, then commit with one transaction that
//! compares the `mod_revision` of all three keys with what was read (0 for a
//! missing key) and writes the new values. If any key changed in between
//! (another node, or the holder key expiring), the transaction fails and the
//! request starts over from the read, so two racing nodes can never both be
//! granted: etcd serializes the transactions and only the first one's
//! comparisons hold. A grant that moves the holder first grants a fresh etcd
//! lease and attaches the holder key to it (revoking the old lease after the
//! commit, or the fresh one if the commit failed). A Renew of a live lease
//! keeps the existing etcd lease alive, then checks with a compare-only
//! transaction that none of the keys changed meanwhile.
//!
//! # How this differs from the ftnet witness
//! - TTLs are whole seconds: the requested TTL is rounded up, and etcd
//!   raises it to its minimum (`ceil(1.5 × election timeout)`: 2 s with the
//!   default 1 s election timeout). [`super::Answer::Granted`] reports the TTL
//!   etcd really granted. So a failover waits at least that minimum (plus
//!   up to 0.5 s, etcd's expiry check interval) before the backup's
//!   Takeover can be granted. The holder still counts its lease valid only
//!   for the TTL it asked for ([`super::valid_until`]), which is shorter, so
//!   the safety rule is unchanged.
//! - `remaining` times are whole seconds, an upper bound (etcd's
//!   `timetolive` truncates).
//! - etcd extends every lease when its leader changes: a holder may keep the
//!   lease longer than its TTL (never shorter), so failover is slower then.
//! - No authentication or TLS: plain HTTP. Use an etcd reachable only from
//!   the nodes' trusted network. The pre-shared key is not used.
//! - A request costs several round trips (range, then keepalive and a
//!   transaction, or lease grant, transaction and revoke).

use super::http::{Http, b64decode, b64encode};
use super::state::{Lease, Verdict, decide};
use super::{Answer, LeaseClient, LeaseView, Request, WitnessError, check_name, check_request};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// How many times a request re-reads and retries after losing a race.
const MAX_ROUNDS: usize = 8;

/// A key as read: value, revision, etcd lease.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Kv {
    value: String,
    mod_revision: i64,
    lease: i64,
}

/// The three keys of a service.
#[derive(Clone, Debug, Default)]
struct Keys {
    epoch: Option<Kv>,
    owner: Option<Kv>,
    holder: Option<Kv>,
}

/// A client of an etcd cluster.
#[derive(Debug)]
pub struct EtcdClient {
    http: Http,
    prefix: String,
}

/// An int64 that the gateway writes as a string (or a number).
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn parse_value(v: &str) -> Option<(Option<String>, u64, bool)> {
    let mut it = v.split(' ');
    let (node, epoch, solo) = (it.next()?, it.next()?.parse().ok()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    let solo = match solo {
        "solo" => true,
        "backed" => false,
        _ => return None,
    };
    Some(((node != "-").then(|| node.to_string()), epoch, solo))
}

fn value(node: Option<&str>, epoch: u64, solo: bool) -> String {
    format!("{} {epoch} {}", node.unwrap_or("-"), if solo { "solo" } else { "backed" })
}

impl EtcdClient {
    /// A client of the etcd cluster at `endpoints` (`http://HOST:PORT`),
    /// keeping its keys under `prefix`.
    pub fn new(endpoints: &[String], prefix: &str) -> Result<EtcdClient, WitnessError> {
        Ok(EtcdClient { http: Http::new(endpoints)?, prefix: prefix.to_string() })
    }

    fn err(&self, what: String) -> WitnessError {
        WitnessError::Etcd { endpoint: self.http.endpoint().to_string(), what }
    }

    fn key(&self, service: &str, name: &str) -> String {
        format!("{}/{service}/{name}", self.prefix)
    }

    fn post(&mut self, path: &str, body: Value, deadline: Instant) -> Result<Value, WitnessError> {
        Ok(self.http.post(path, &body, deadline)?.1)
    }

    /// Reads the three keys of `service` (one linearizable range).
    fn read(&mut self, service: &str, deadline: Instant) -> Result<Keys, WitnessError> {
        let start = format!("{}/{service}/", self.prefix);
        let end = format!("{}/{service}0", self.prefix);
        let v = self.post(
            "/v3/kv/range",
            json!({"key": b64encode(start.as_bytes()), "range_end": b64encode(end.as_bytes())}),
            deadline,
        )?;
        let mut keys = Keys::default();
        for kv in v["kvs"].as_array().into_iter().flatten() {
            let field = |name: &str| kv[name].as_str().and_then(b64decode);
            let (Some(k), Some(val)) = (field("key"), field("value").or(Some(Vec::new()))) else {
                return Err(self.err(format!("range under {start}: bad key in {kv}")));
            };
            let k = String::from_utf8_lossy(&k).into_owned();
            let entry = Kv {
                value: String::from_utf8_lossy(&val).into_owned(),
                mod_revision: int(&kv["mod_revision"]).unwrap_or(0),
                lease: int(&kv["lease"]).unwrap_or(0),
            };
            match k.strip_prefix(&start) {
                Some("epoch") => keys.epoch = Some(entry),
                Some("owner") => keys.owner = Some(entry),
                Some("holder") => keys.holder = Some(entry),
                _ => {}
            }
        }
        Ok(keys)
    }

    /// The lease the keys describe, and whether the holder key is present.
    fn lease(&self, service: &str, keys: &Keys) -> Result<Lease, WitnessError> {
        let epoch = match &keys.epoch {
            None => 0,
            Some(kv) => kv.value.parse::<u64>().map_err(|_| {
                self.err(format!(
                    "{} holds {:?}, not an epoch (refusing to guess)",
                    self.key(service, "epoch"),
                    kv.value
                ))
            })?,
        };
        let parse = |name: &str, kv: &Kv| {
            parse_value(&kv.value).ok_or_else(|| {
                self.err(format!("{} holds {:?}, not \"NODE EPOCH solo|backed\"", self.key(service, name), kv.value))
            })
        };
        let (holder, solo) = match &keys.owner {
            None => (None, false),
            Some(kv) => {
                let (node, e, solo) = parse("owner", kv)?;
                if e != epoch {
                    return Err(self.err(format!(
                        "{} is at epoch {e} but the epoch key says {epoch}",
                        self.key(service, "owner")
                    )));
                }
                (node, solo)
            }
        };
        if let Some(h) = &keys.holder {
            let owner = keys.owner.as_ref().map(|o| o.value.as_str());
            if parse("holder", h)?.0.is_none() || Some(h.value.as_str()) != owner {
                return Err(self.err(format!(
                    "{} holds {:?} but the owner key {:?}: keys written by something else?",
                    self.key(service, "holder"),
                    h.value,
                    owner
                )));
            }
        }
        Ok(Lease { epoch, holder, solo })
    }

    /// How long etcd lease `id` has left at most; none if it is gone.
    /// etcd truncates to whole seconds (a live lease with 0.9 s left says
    /// 0, a gone one -1), so this is the next whole second, capped at the
    /// lease's granted TTL.
    fn time_to_live(&mut self, id: i64, deadline: Instant) -> Result<Option<Duration>, WitnessError> {
        let v = self.post("/v3/lease/timetolive", json!({"ID": id.to_string()}), deadline)?;
        // The gateway leaves out zero values: no TTL means 0 (live).
        let ttl = int(&v["TTL"]).unwrap_or(0);
        let granted = int(&v["grantedTTL"]).unwrap_or(i64::MAX);
        Ok((ttl >= 0).then(|| Duration::from_secs(ttl.saturating_add(1).min(granted).max(0) as u64)))
    }

    /// Keeps etcd lease `id` alive; its granted TTL, none if it is gone.
    fn keep_alive(&mut self, id: i64, deadline: Instant) -> Result<Option<Duration>, WitnessError> {
        let v = self.post("/v3/lease/keepalive", json!({"ID": id.to_string()}), deadline)?;
        let r = if v.get("result").is_some() { &v["result"] } else { &v };
        if let Some(e) = v.get("error") {
            return Err(self.err(format!("keepalive of lease {id}: {e}")));
        }
        let ttl = int(&r["TTL"]).unwrap_or(0);
        Ok((ttl > 0).then(|| Duration::from_secs(ttl as u64)))
    }

    fn grant(&mut self, ttl: Duration, deadline: Instant) -> Result<(i64, Duration), WitnessError> {
        let secs = ttl.as_millis().div_ceil(1000).max(1);
        let v = self.post("/v3/lease/grant", json!({"TTL": secs.to_string()}), deadline)?;
        match (int(&v["ID"]), int(&v["TTL"])) {
            (Some(id), Some(t)) if id != 0 && t > 0 => Ok((id, Duration::from_secs(t as u64))),
            _ => Err(self.err(format!("lease grant of {secs} s: unexpected answer {v}"))),
        }
    }

    /// Revokes etcd lease `id`, best effort (an unrevoked lease expires).
    fn revoke(&mut self, id: i64, deadline: Instant) {
        let _ = self.post("/v3/lease/revoke", json!({"ID": id.to_string()}), deadline);
    }

    /// Runs a transaction that holds only if none of the keys changed since
    /// `keys` was read; true if it did.
    fn commit(&mut self, service: &str, keys: &Keys, ops: Vec<Value>, deadline: Instant) -> Result<bool, WitnessError> {
        let cmp = |name: &str, kv: &Option<Kv>| {
            json!({
                "key": b64encode(self.key(service, name).as_bytes()),
                "target": "MOD",
                "result": "EQUAL",
                "mod_revision": kv.as_ref().map_or(0, |k| k.mod_revision).to_string(),
            })
        };
        let compare = vec![cmp("epoch", &keys.epoch), cmp("owner", &keys.owner), cmp("holder", &keys.holder)];
        let v = self.post("/v3/kv/txn", json!({"compare": compare, "success": ops}), deadline)?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    fn put(&self, service: &str, name: &str, value: &str, lease: Option<i64>) -> Value {
        let mut p = json!({"key": b64encode(self.key(service, name).as_bytes()), "value": b64encode(value.as_bytes())});
        if let Some(l) = lease {
            p["lease"] = json!(l.to_string());
        }
        json!({ "request_put": p })
    }

    fn live(&mut self, keys: &Keys, deadline: Instant) -> Result<Option<Duration>, WitnessError> {
        match &keys.holder {
            None => Ok(None),
            Some(h) => self.time_to_live(h.lease, deadline),
        }
    }

    /// One round: read, decide, commit. `None` if it lost a race.
    fn round(
        &mut self,
        service: &str,
        node: &str,
        req: Request,
        ttl: Duration,
        deadline: Instant,
    ) -> Result<Option<Answer>, WitnessError> {
        let keys = self.read(service, deadline)?;
        let cur = self.lease(service, &keys)?;
        // Whether the holder is live decides; how long only matters for a
        // denial, so ask etcd then.
        let present = keys.holder.as_ref().map(|_| Duration::from_secs(1));
        let next = match decide(&cur, present, false, node, &req).map_err(|e| self.err(e))? {
            Verdict::Grant { next } => next,
            Verdict::Deny { .. } => {
                let live = self.live(&keys, deadline)?;
                let reason = match decide(&cur, live, false, node, &req).map_err(|e| self.err(e))? {
                    Verdict::Deny { reason } => reason,
                    // The holder's etcd lease has run out, but etcd has not
                    // deleted its key yet (it checks every 500 ms).
                    Verdict::Grant { .. } => format!(
                        "held by {}: its etcd lease just ran out; etcd removes the holder key within about 500 ms",
                        cur.holder.as_deref().unwrap_or("-")
                    ),
                };
                let remaining = live.unwrap_or_default();
                return Ok(Some(Answer::Denied { holder: cur.holder, epoch: cur.epoch, remaining, reason }));
            }
        };
        let old_lease = keys.holder.as_ref().map(|h| h.lease);
        if let Request::Release { .. } = req {
            let ops = vec![
                self.put(service, "owner", &value(None, next.epoch, next.solo), None),
                json!({"request_delete_range": {"key": b64encode(self.key(service, "holder").as_bytes())}}),
            ];
            if !self.commit(service, &keys, ops, deadline)? {
                return Ok(None);
            }
            if let Some(l) = old_lease {
                self.revoke(l, deadline);
            }
            return Ok(Some(Answer::Granted { epoch: next.epoch, ttl: Duration::ZERO }));
        }
        // Same state and a live holder key: keep its etcd lease alive.
        if next == cur
            && let Some(l) = old_lease
            && let Some(granted) = self.keep_alive(l, deadline)?
        {
            if !self.commit(service, &keys, vec![], deadline)? {
                return Ok(None);
            }
            return Ok(Some(Answer::Granted { epoch: next.epoch, ttl: granted }));
        }
        // Otherwise (or if that etcd lease just ran out, its key not removed
        // yet) the holder key gets a fresh etcd lease.
        let (lease, granted) = self.grant(ttl, deadline)?;
        let v = value(next.holder.as_deref(), next.epoch, next.solo);
        let mut ops = vec![self.put(service, "owner", &v, None), self.put(service, "holder", &v, Some(lease))];
        if next.epoch != cur.epoch {
            ops.push(self.put(service, "epoch", &next.epoch.to_string(), None));
        }
        match self.commit(service, &keys, ops, deadline) {
            Ok(true) => {
                if let Some(l) = old_lease {
                    self.revoke(l, deadline);
                }
                Ok(Some(Answer::Granted { epoch: next.epoch, ttl: granted }))
            }
            Ok(false) => {
                self.revoke(lease, deadline);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

impl LeaseClient for EtcdClient {
    fn request(
        &mut self,
        service: &str,
        node: &str,
        req: Request,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<Answer, WitnessError> {
        check_request(service, node, ttl)?;
        let deadline = Instant::now() + timeout;
        for _ in 0..MAX_ROUNDS {
            if let Some(a) = self.round(service, node, req, ttl, deadline)? {
                return Ok(a);
            }
        }
        Err(self.err(format!("{req:?} on {service}: the keys kept changing ({MAX_ROUNDS} rounds lost); try again")))
    }

    fn query(&mut self, service: &str, timeout: Duration) -> Result<LeaseView, WitnessError> {
        check_name("service", service)?;
        let deadline = Instant::now() + timeout;
        let keys = self.read(service, deadline)?;
        let lease = self.lease(service, &keys)?;
        let remaining = self.live(&keys, deadline)?;
        Ok(LeaseView { holder: lease.holder, epoch: lease.epoch, solo: lease.solo, remaining })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        assert_eq!(value(Some("a"), 3, true), "a 3 solo");
        assert_eq!(value(None, 0, false), "- 0 backed");
        assert_eq!(parse_value("a 3 solo"), Some((Some("a".into()), 3, true)));
        assert_eq!(parse_value("- 7 backed"), Some((None, 7, false)));
        for bad in ["", "a", "a 3", "a x solo", "a 3 maybe", "a 3 solo x", "a  3 solo"] {
            assert_eq!(parse_value(bad), None, "{bad:?}");
        }
        assert_eq!(int(&json!("12")), Some(12));
        assert_eq!(int(&json!(12)), Some(12));
        assert_eq!(int(&json!("x")), None);
    }

    #[test]
    fn inconsistent_keys_are_errors() {
        let c = EtcdClient::new(&["http://127.0.0.1:1".into()], "/ftnet").unwrap();
        let kv = |v: &str| Some(Kv { value: v.into(), mod_revision: 1, lease: 0 });
        let ok = Keys { epoch: kv("3"), owner: kv("a 3 backed"), holder: kv("a 3 backed") };
        assert_eq!(c.lease("s", &ok).unwrap(), Lease { epoch: 3, holder: Some("a".into()), solo: false });
        let empty = Keys::default();
        assert_eq!(c.lease("s", &empty).unwrap(), Lease::default());
        for (keys, what) in [
            (Keys { epoch: kv("x"), ..ok.clone() }, "/ftnet/s/epoch holds \"x\""),
            (Keys { owner: kv("a 2 backed"), ..ok.clone() }, "epoch 2 but the epoch key says 3"),
            (Keys { holder: kv("b 3 backed"), ..ok.clone() }, "/ftnet/s/holder holds"),
            (Keys { owner: kv("junk"), ..ok.clone() }, "/ftnet/s/owner holds"),
        ] {
            let e = c.lease("s", &keys).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
    }
}

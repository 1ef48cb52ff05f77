//! The witness: a lease with an epoch that keeps the pair from ever having
//! two primaries (split brain).
//!
//! Two nodes cannot tell "peer dead" from "link cut". A third party, the
//! witness, holds one lease per service (the node passes the hex of its
//! config digest as the service id). A node serves as primary, promotes, or
//! goes on without its backup only while it holds the lease. Two backends
//! give the same answers through [`LeaseClient`]:
//!
//! - `ftnet witness` ([`server`], [`client`]): authenticated UDP, one small
//!   process on a third host, state in one file;
//! - an existing etcd v3 cluster ([`etcd`]) through its HTTP/JSON gateway
//!   (coarser: whole-second TTLs, see that module).
//!
//! # What the witness keeps per service
//! Persisted: `epoch` (the last epoch granted: never reused, never
//! decreases), `holder` (the node holding it, or none after a release) and
//! `solo` (the holder went on without its backup). In memory: the expiry.
//! Every change of a persisted field is on stable storage before the answer
//! leaves.
//!
//! # Requests ([`Request`]) and when they are granted ([`state::decide`])
//! - `Start`: the lease is free, or expired for at least one more TTL (even
//!   when this node held it: a primary restarted within its old lease must
//!   not cut off a backup that holds that history's log; etcd cannot see
//!   how long ago a lease lapsed, so there only "expired" counts). epoch +=
//!   1, holder = node, solo = false. A node denied a Start also waits out
//!   the holder's lease and one TTL more before asking again
//!   (`crate::node::lease`), so a backup's Takeover wins the lapse.
//! - `Renew { epoch }`: holder == node and the epoch matches, even if it
//!   expired meanwhile, as long as nobody else took it. Epoch unchanged.
//! - `Solo { epoch }`: as Renew; then epoch += 1 and solo = true, which makes
//!   every backup log of the older epoch useless (see Takeover).
//! - `Takeover { log_epoch }`: the lease is free or expired and its epoch ==
//!   `log_epoch`. epoch += 1, holder = node, solo = false.
//! - `Release { epoch }`: holder == node and the epoch matches: holder =
//!   none, epoch unchanged, so the backup's `Takeover { log_epoch: epoch }`
//!   succeeds right after a planned switchover. [`Answer::Granted`] carries
//!   a zero TTL.
//!
//! A granted request (but Release) sets expiry = now + ttl. Denials say why
//! (held by X for N ms more; your log is from epoch E but the lease is at
//! epoch F: the primary went on alone since; ...).
//!
//! Retries after a lost answer: a request is one datagram (or one HTTP
//! exchange) per call; the caller retries on its next round. So that a lost
//! answer cannot strand a node, three requests are idempotent: `Solo
//! { epoch: e }` is granted again (without a new epoch) while the lease is
//! held by the same node, solo, at `e + 1`; `Takeover { log_epoch: e }`
//! likewise while held by the same node, not solo, at `e + 1`; `Release`
//! while the lease is free at that epoch. A `Start` whose answer was lost
//! is denied while its own lease lives; the node gets a newer epoch once it
//! lapsed (a one-TTL delay, only then).
//!
//! # Invariants
//! 1. At any instant at most one node holds an unexpired lease per service,
//!    and an epoch is granted to at most one history: epochs strictly
//!    increase across Start, Solo and Takeover, including across witness
//!    restarts (the state file is written atomically and a corrupt or
//!    unreadable one is an error naming it, never a silent reset).
//! 2. After a witness restart every persisted holder holds for one full TTL
//!    from the restart: the witness does not know how long was left, so it
//!    assumes the longest.
//! 3. The holder's view expires before the witness's: the node counts its
//!    lease valid until [`valid_until`]`(request_sent_at, ttl)` =
//!    `sent_at + ttl - margin` (margin 10 % of ttl, at least 5 ms) on its
//!    own monotonic clock, from when it *sent* the request, never from when
//!    the answer arrived. The witness starts the TTL when the request
//!    arrives, which is later; so by the time anyone else can be granted,
//!    the old holder has stopped (clock rates differ by far less than 10 %).
//! 4. Every ftnet witness datagram is sealed (ChaCha20-Poly1305 under keys
//!    derived from the pre-shared key with the witness's own contexts), and
//!    a request is accepted only if its timestamp is newer than the last
//!    accepted from that node and within 30 s of the witness's clock: a
//!    captured request cannot be replayed to keep a dead node's lease alive
//!    ([`proto`], [`server`]).
//! 5. No request blocks longer than its timeout (the node calls every ttl/4).
//!
//! # For the node
//! - Keep one [`LeaseClient`] per node process: the ftnet witness wants each
//!   node's request timestamps strictly increasing, and a client only
//!   orders its own (two clients of one node in the same millisecond: the
//!   second is refused).
//! - Count a grant valid until [`valid_until`]`(sent_at, ttl asked for)`,
//!   not the TTL in the answer (etcd's is longer).
//! - [`WitnessError::Refused`] is the ftnet witness saying no without
//!   deciding (clock more than 30 s off, a node clock behind the witness's
//!   restart time, invalid names, state not written); it is an error, not a
//!   denial. Node and service names: see [`check_name`].

pub mod client;
pub mod etcd;
mod http;
pub mod proto;
pub mod server;
pub mod state;

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Longest TTL a request may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// Longest node or service name, in bytes.
pub const MAX_NAME: usize = 128;

/// Where the witness is (the `[witness]` table of the node config).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum WitnessConfig {
    /// `kind = "ftnet"`, `address = "10.79.0.3:7800"`: an `ftnet witness`.
    Ftnet { address: SocketAddr },
    /// `kind = "etcd"`, `endpoints = ["http://10.79.0.3:2379"]`, `prefix =
    /// "/ftnet"` (the default).
    Etcd {
        endpoints: Vec<String>,
        #[serde(default = "default_prefix")]
        prefix: String,
    },
}

fn default_prefix() -> String {
    "/ftnet".into()
}

impl WitnessConfig {
    /// Checks what serde cannot: etcd endpoints are `http://HOST:PORT` and
    /// the prefix starts with `/` and does not end with one.
    pub fn validate(&self) -> Result<(), WitnessError> {
        match self {
            WitnessConfig::Ftnet { .. } => Ok(()),
            WitnessConfig::Etcd { endpoints, prefix } => {
                if endpoints.is_empty() {
                    return Err(WitnessError::Invalid("witness.endpoints names no etcd endpoint".into()));
                }
                for e in endpoints {
                    http::Endpoint::parse(e)?;
                }
                if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.chars().any(char::is_whitespace) {
                    return Err(WitnessError::Invalid(format!(
                        "witness.prefix {prefix:?} must start with '/', not end with one, and hold no whitespace"
                    )));
                }
                Ok(())
            }
        }
    }
}

/// What a node asks the witness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Start,
    Renew { epoch: u64 },
    Solo { epoch: u64 },
    Takeover { log_epoch: u64 },
    Release { epoch: u64 },
}

/// The witness's answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The node holds the lease at `epoch` for `ttl` from when the witness
    /// saw the request (etcd: the TTL it really granted, whole seconds, at
    /// least what was asked; Release: zero). Count it valid only until
    /// [`valid_until`]`(sent_at, ttl asked for)`.
    Granted { epoch: u64, ttl: Duration },
    /// Not granted: the state seen and why.
    Denied { holder: Option<String>, epoch: u64, remaining: Duration, reason: String },
}

/// A service's lease as the witness sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    /// The node holding it (also while expired, until someone else takes
    /// it); none if never granted or released.
    pub holder: Option<String>,
    /// The last epoch granted (0: never).
    pub epoch: u64,
    /// The holder went on without its backup.
    pub solo: bool,
    /// How long the holder has left; none when free or expired.
    pub remaining: Option<Duration>,
}

/// A connection to a witness. Every call returns by its `timeout` (the
/// etcd client may overrun it only while resolving a host name).
pub trait LeaseClient: Send {
    /// Sends `req` for `node` on `service`, asking for `ttl`.
    fn request(
        &mut self,
        service: &str,
        node: &str,
        req: Request,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<Answer, WitnessError>;
    /// Reads the lease of `service`.
    fn query(&mut self, service: &str, timeout: Duration) -> Result<LeaseView, WitnessError>;
}

/// A client for the configured witness. The key is the pair's pre-shared
/// key (used by the ftnet witness; etcd has no use for it).
pub fn connect(cfg: &WitnessConfig, key: &crate::link::Key) -> Result<Box<dyn LeaseClient>, WitnessError> {
    cfg.validate()?;
    Ok(match cfg {
        WitnessConfig::Ftnet { address } => Box::new(client::UdpClient::new(*address, key)?),
        WitnessConfig::Etcd { endpoints, prefix } => Box::new(etcd::EtcdClient::new(endpoints, prefix)?),
    })
}

/// The margin the holder subtracts from its TTL: 10 % of it, at least 5 ms.
pub fn margin(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_millis(5))
}

/// Until when a node may count on a lease granted for `ttl` by a request
/// it *sent* at `sent_at` (its own monotonic clock): `sent_at + ttl -
/// margin(ttl)`, never before `sent_at`.
pub fn valid_until(sent_at: Instant, ttl: Duration) -> Instant {
    sent_at + ttl.saturating_sub(margin(ttl))
}

/// Everything that can go wrong talking to or running a witness.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("witness {addr}: {op}: {source}")]
    Io { addr: String, op: &'static str, source: std::io::Error },
    #[error("witness {addr}: no answer within {} ms{detail}", after.as_millis())]
    Timeout { addr: String, after: Duration, detail: String },
    #[error("witness {addr}: bad datagram from {from}: {source}")]
    Wire { addr: String, from: SocketAddr, source: proto::WireError },
    #[error("witness {addr} refused the request: {reason}")]
    Refused { addr: String, reason: String },
    #[error("witness {addr}: unexpected answer: {what}")]
    Protocol { addr: String, what: String },
    #[error("etcd {endpoint}: {what}: HTTP {status}: {body}")]
    EtcdStatus { endpoint: String, what: String, status: u16, body: String },
    #[error("etcd {endpoint}: {what}")]
    Etcd { endpoint: String, what: String },
    #[error("witness state file {path}: {source}")]
    StateIo { path: String, source: std::io::Error },
    #[error(
        "witness state file {path}: {what} (refusing to start: an epoch must never be reused; restore the file or move it away only if no node holds a lease)"
    )]
    StateCorrupt { path: String, what: String },
    #[error(
        "witness state file {path} does not exist: start a new witness with --init (never one that has served: its epochs would start again at 1)"
    )]
    StateMissing { path: String },
    #[error("witness state file {path} already exists: --init only creates a new witness's state")]
    StateExists { path: String },
    #[error("witness: epoch overflow on service {service}")]
    EpochOverflow { service: String },
    #[error("witness key: {0}")]
    Key(String),
    #[error("witness: randomness: {0}")]
    Random(String),
    #[error("witness: {0}")]
    Invalid(String),
}

/// Checks a node or service name: 1 to [`MAX_NAME`] bytes of
/// `[A-Za-z0-9._:@+-]`, and not `-` (which the etcd backend uses for "no
/// holder").
pub fn check_name(what: &str, name: &str) -> Result<(), WitnessError> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "._:@+-".contains(c);
    if name.is_empty() || name.len() > MAX_NAME || name == "-" || !name.chars().all(ok) {
        return Err(WitnessError::Invalid(format!(
            "{what} name {name:?} must be 1 to {MAX_NAME} characters of [A-Za-z0-9._:@+-] and not \"-\""
        )));
    }
    Ok(())
}

/// Checks a requested TTL: above zero and at most [`MAX_TTL`].
pub fn check_ttl(ttl: Duration) -> Result<(), WitnessError> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(WitnessError::Invalid(format!("ttl {ttl:?} must be above zero and at most {MAX_TTL:?}")));
    }
    Ok(())
}

/// Checks what every lease request names, before any backend sends it:
/// the service and node names and the TTL.
pub fn check_request(service: &str, node: &str, ttl: Duration) -> Result<(), WitnessError> {
    check_name("service", service)?;
    check_name("node", node)?;
    check_ttl(ttl)
}

/// Random bytes from the OS.
pub(crate) fn random<const N: usize>() -> Result<[u8; N], WitnessError> {
    use chacha20poly1305::aead::rand_core::RngCore;
    let mut b = [0u8; N];
    chacha20poly1305::aead::OsRng.try_fill_bytes(&mut b).map_err(|e| WitnessError::Random(e.to_string()))?;
    Ok(b)
}

/// Milliseconds since the Unix epoch (CLOCK_REALTIME); 0 before 1970.
pub(crate) fn realtime_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Whole milliseconds of `d`, saturating.
pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_rule() {
        let t = Instant::now();
        assert_eq!(valid_until(t, Duration::from_millis(400)), t + Duration::from_millis(360));
        assert_eq!(valid_until(t, Duration::from_millis(30)), t + Duration::from_millis(25));
        assert_eq!(valid_until(t, Duration::from_millis(3)), t);
        assert_eq!(valid_until(t, Duration::from_secs(2)), t + Duration::from_millis(1800));
    }

    #[test]
    fn config_tables() {
        #[derive(Deserialize, Debug)]
        struct Top {
            witness: WitnessConfig,
        }
        let t: Top = toml::from_str("[witness]\nkind = \"ftnet\"\naddress = \"10.79.0.3:7800\"\n").unwrap();
        assert_eq!(t.witness, WitnessConfig::Ftnet { address: "10.79.0.3:7800".parse().unwrap() });
        let t: Top = toml::from_str("[witness]\nkind = \"etcd\"\nendpoints = [\"http://10.79.0.3:2379\"]\n").unwrap();
        assert_eq!(
            t.witness,
            WitnessConfig::Etcd { endpoints: vec!["http://10.79.0.3:2379".into()], prefix: "/ftnet".into() }
        );
        t.witness.validate().unwrap();
        let e = toml::from_str::<Top>("[witness]\nkind = \"ftnet\"\naddress = \"10.79.0.3:7800\"\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        assert!(toml::from_str::<Top>("[witness]\nkind = \"zk\"\n").is_err());
        let bad = WitnessConfig::Etcd { endpoints: vec!["https://x:1".into()], prefix: "/p".into() };
        assert!(bad.validate().unwrap_err().to_string().contains("https://x:1"));
        let bad = WitnessConfig::Etcd { endpoints: vec!["http://x:1".into()], prefix: "p/".into() };
        assert!(bad.validate().unwrap_err().to_string().contains("prefix"));
        assert!(WitnessConfig::Etcd { endpoints: vec![], prefix: "/p".into() }.validate().is_err());
    }

    #[test]
    fn names() {
        check_name("node", "a").unwrap();
        check_name("service", &"0f".repeat(32)).unwrap();
        for bad in ["", "-", "a b", "a\n", "é", &"x".repeat(MAX_NAME + 1)] {
            assert!(check_name("node", bad).is_err(), "{bad:?}");
        }
        assert!(check_ttl(Duration::ZERO).is_err());
        assert!(check_ttl(MAX_TTL + Duration::from_millis(1)).is_err());
        check_ttl(Duration::from_millis(1)).unwrap();
    }
}

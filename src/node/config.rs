//! The pair's configuration: one TOML file, the same on both hosts except
//! the `[node]` section (the node's name and its own addresses).
//!
//! Invariants:
//! - everything outside `[node]` is covered by [`Config::digest`], which the
//!   two nodes compare at handshake, so a mismatch is refused, not guessed;
//! - parsing rejects unknown keys and every value that cannot work (an empty
//!   command, a timeout not above the interval, a missing key file) with a
//!   message naming the key.

use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: String, source: Box<toml::de::Error> },
    #[error("{path}: {key}: {why}")]
    Invalid { path: String, key: &'static str, why: String },
}

/// What runs, and where it is served.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The server command and its arguments.
    pub command: Vec<String>,
    /// Its working directory.
    #[serde(default = "root")]
    pub cwd: PathBuf,
    /// Extra environment (the rest is ftnet's own, which must match).
    #[serde(default)]
    pub env: Vec<String>,
    /// The service address with its prefix length, e.g. "10.77.0.100/24".
    pub vip: String,
    /// The interface the VIP lives on.
    pub interface: String,
    /// TCP ports served on the VIP.
    pub ports: Vec<u16>,
}

fn root() -> PathBuf {
    PathBuf::from("/")
}

/// Timings and bounds of the replication link.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// The pre-shared key file (32+ bytes, mode 0600).
    pub key_file: PathBuf,
    #[serde(default = "interval")]
    pub heartbeat_interval_ms: u64,
    #[serde(default = "timeout")]
    pub heartbeat_timeout_ms: u64,
    /// The primary slows its replica when the backup is this many log bytes
    /// behind.
    #[serde(default = "lag")]
    pub max_lag_bytes: u64,
    /// The witness lease's time to live (renewed every quarter of it). A
    /// failover waits for the dead primary's lease to lapse.
    #[serde(default = "lease")]
    pub lease_ms: u64,
}

fn lease() -> u64 {
    400
}

fn interval() -> u64 {
    20
}
fn timeout() -> u64 {
    100
}
fn lag() -> u64 {
    64 << 20
}

/// What a node does when it cannot reach its peer (and there is no witness).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Never go on alone and never promote on silence: a lost peer stalls
    /// the service until an operator decides (no split brain possible).
    PreferConsistency,
    /// Go on alone / promote after the heartbeat timeout: service continues,
    /// but a cut link with both nodes alive gives two primaries.
    PreferAvailability,
}

/// The node's own part: differs between the two hosts.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    /// This node's replication link address (the primary listens, the
    /// backup connects from it).
    pub link: SocketAddr,
    /// The peer's replication link address.
    pub peer_link: SocketAddr,
    /// This node's and the peer's service-network addresses (heartbeats take
    /// this second path too).
    pub service: SocketAddr,
    pub peer_service: SocketAddr,
    /// The control socket for `ftnet status` and `ftnet promote`.
    #[serde(default = "control")]
    pub control_socket: PathBuf,
    /// Where the node keeps its runtime files (logs of a promoted node).
    #[serde(default = "run_dir")]
    pub run_dir: PathBuf,
    /// The CPU this node's replica tree runs on (the replica sees the
    /// primary's recorded affinity either way).
    #[serde(default)]
    pub cpu: usize,
}

fn control() -> PathBuf {
    PathBuf::from("/run/ftnet/ftnet.sock")
}
fn run_dir() -> PathBuf {
    PathBuf::from("/run/ftnet")
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub service: Service,
    pub link: Link,
    /// Required when there is no witness, refused when there is one (the
    /// lease decides then).
    #[serde(default)]
    pub policy: Option<Policy>,
    /// The third party that grants the lease (an `ftnet witness` or etcd).
    #[serde(default)]
    pub witness: Option<crate::witness::WitnessConfig>,
    pub node: Node,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
        let c: Config =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: p.clone(), source: Box::new(e) })?;
        c.check(&p)?;
        Ok(c)
    }

    fn check(&self, path: &str) -> Result<(), ConfigError> {
        let bad = |key: &'static str, why: String| Err(ConfigError::Invalid { path: path.to_string(), key, why });
        if self.service.command.is_empty() {
            return bad("service.command", "is empty".into());
        }
        if self.vip().is_none() {
            return bad(
                "service.vip",
                format!("{:?} is not ADDRESS/PREFIX (IPv4; IPv6 VIPs are not covered yet)", self.service.vip),
            );
        }
        if self.service.ports.is_empty() {
            return bad("service.ports", "names no port".into());
        }
        if self.link.heartbeat_interval_ms == 0 || self.link.heartbeat_timeout_ms <= self.link.heartbeat_interval_ms {
            return bad("link.heartbeat_timeout_ms", "must be above link.heartbeat_interval_ms".into());
        }
        match (&self.policy, &self.witness) {
            (None, None) => {
                return bad(
                    "policy",
                    "is required without a [witness]: \"prefer-consistency\" (never go on alone or promote on \
                     silence) or \"prefer-availability\" (do both, accepting two primaries if the nodes are cut \
                     apart); see README, \"When the peer is unreachable\""
                        .into(),
                );
            }
            (Some(_), Some(_)) => {
                return bad("policy", "must not be set with a [witness]: the witness's lease decides".into());
            }
            _ => {}
        }
        if let Some(w) = &self.witness
            && let Err(e) = w.validate()
        {
            return bad("witness", e.to_string());
        }
        if self.witness.is_some() && self.link.lease_ms < 4 * self.link.heartbeat_interval_ms {
            return bad("link.lease_ms", "must be at least four heartbeat intervals".into());
        }
        if self.link.lease_ms > crate::witness::MAX_TTL.as_millis() as u64 {
            return bad("link.lease_ms", format!("must be at most {} ms", crate::witness::MAX_TTL.as_millis()));
        }
        if !self.link.key_file.exists() {
            return bad("link.key_file", format!("{} does not exist", self.link.key_file.display()));
        }
        Ok(())
    }

    /// The VIP and its prefix length.
    pub fn vip(&self) -> Option<(Ipv4Addr, u8)> {
        let (a, p) = self.service.vip.split_once('/')?;
        let p: u8 = p.parse().ok()?;
        (p <= 32).then_some((a.parse().ok()?, p))
    }

    /// A digest of everything both nodes must agree on (all but `[node]`).
    pub fn digest(&self) -> [u8; 32] {
        let shared = (
            &self.service,
            &self.link.heartbeat_interval_ms,
            &self.link.heartbeat_timeout_ms,
            &self.link.lease_ms,
            &self.policy,
            &self.witness,
        );
        *blake3::hash(&postcard::to_allocvec(&shared).unwrap_or_default()).as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, body: &str) -> PathBuf {
        let key = dir.join("key");
        std::fs::write(&key, [7u8; 32]).expect("key");
        let p = dir.join("ftnet.toml");
        std::fs::write(&p, body.replace("KEY", key.to_str().expect("utf8"))).expect("write");
        p
    }

    const GOOD: &str = r#"
policy = "prefer-availability"
[service]
command = ["nginx", "-c", "/etc/nginx/ftnet.conf"]
vip = "10.77.0.100/24"
interface = "svc0"
ports = [443]
[link]
key_file = "KEY"
[node]
name = "a"
link = "10.78.0.1:7700"
peer_link = "10.78.0.2:7700"
service = "10.77.0.1:7701"
peer_service = "10.77.0.2:7701"
"#;

    #[test]
    fn parses_and_digests_only_the_shared_part() {
        let d = tempfile::tempdir().expect("tempdir");
        let a = Config::load(&write(d.path(), GOOD)).expect("config a");
        assert_eq!(a.vip(), Some((Ipv4Addr::new(10, 77, 0, 100), 24)));
        assert_eq!(a.link.heartbeat_interval_ms, 20);
        let b_text = GOOD.replace("name = \"a\"", "name = \"b\"").replace("10.78.0.1:7700", "10.78.0.9:7700");
        let b = Config::load(&write(d.path(), &b_text)).expect("config b");
        assert_eq!(a.digest(), b.digest(), "node-specific parts do not count");
        let c = Config::load(&write(d.path(), &GOOD.replace("[443]", "[8443]"))).expect("config c");
        assert_ne!(a.digest(), c.digest());
    }

    #[test]
    fn bad_values_are_named() {
        let d = tempfile::tempdir().expect("tempdir");
        let e = Config::load(&write(d.path(), &GOOD.replace("10.77.0.100/24", "10.77.0.100"))).unwrap_err();
        assert!(e.to_string().contains("service.vip"), "{e}");
        let e = Config::load(&write(d.path(), &GOOD.replace("[service]", "[service]\nbogus = 1"))).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = Config::load(&write(d.path(), &GOOD.replace("prefer-availability", "whatever"))).unwrap_err();
        assert!(e.to_string().contains("policy") || e.to_string().contains("variant"), "{e}");
        let text = GOOD.replace("[link]", "[link]\nheartbeat_interval_ms = 100\nheartbeat_timeout_ms = 50");
        let e = Config::load(&write(d.path(), &text)).unwrap_err();
        assert!(e.to_string().contains("heartbeat_timeout_ms"), "{e}");
        let e = Config::load(&write(d.path(), &GOOD.replace("policy = \"prefer-availability\"", ""))).unwrap_err();
        assert!(e.to_string().contains("policy: is required without a [witness]"), "{e}");
    }

    #[test]
    fn a_witness_replaces_the_policy() {
        let d = tempfile::tempdir().expect("tempdir");
        let w = "[witness]\nkind = \"ftnet\"\naddress = \"10.77.0.20:7800\"\n[node]";
        let with = GOOD.replace("policy = \"prefer-availability\"", "").replace("[node]", w);
        let c = Config::load(&write(d.path(), &with)).expect("config with a witness");
        assert!(c.witness.is_some() && c.policy.is_none());
        assert_eq!(c.link.lease_ms, 400);
        let a = Config::load(&write(d.path(), GOOD)).expect("config a");
        assert_ne!(a.digest(), c.digest(), "the witness is part of what both nodes must agree on");
        let e = Config::load(&write(d.path(), &GOOD.replace("[node]", w))).unwrap_err();
        assert!(e.to_string().contains("policy: must not be set with a [witness]"), "{e}");
        for (lease, what) in [("60", "at least four heartbeat intervals"), ("3600001", "at most 3600000 ms")] {
            let e = Config::load(&write(d.path(), &with.replace("[link]", &format!("[link]\nlease_ms = {lease}"))))
                .unwrap_err();
            assert!(e.to_string().contains("link.lease_ms") && e.to_string().contains(what), "{e}");
        }
    }
}

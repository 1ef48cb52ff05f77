//! The messages frames carry, and the handshake's compatibility check.
//!
//! Structured bodies are postcard; `Log` and `Segment` bodies are raw bytes
//! that are already framed by their producers (`replica::log::frame` and
//! `net::forward`), opaque to the link.
//!
//! Invariants:
//! - `Message::decode(m.kind(), m.encode()) == m` for every message;
//! - decoding a structured body rejects trailing bytes; it never panics;
//! - [`hello_diff`] is empty exactly when the two nodes may pair; each entry
//!   names one difference and never prints an environment value (it may be
//!   a secret), only the variable's name.

use super::wire::Kind;
use super::{LinkError, Role};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The link protocol version carried in [`Hello`] (the same as the frame
/// header's).
pub const PROTOCOL: u16 = super::wire::VERSION as u16;

/// A file that must be identical on both nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub path: Vec<u8>,
    pub blake3: [u8; 32],
}

/// What must be identical for the backup to replay the primary's replica.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaIdentity {
    /// The executable's path (its digest is among `files`).
    pub exe: Vec<u8>,
    /// The executable, its interpreter and its libraries.
    pub files: Vec<FileDigest>,
    pub argv: Vec<Vec<u8>>,
    pub env: Vec<Vec<u8>>,
    pub cwd: Vec<u8>,
    /// Kernel release.
    pub kernel: String,
    /// Transparent hugepage mode.
    pub thp: String,
    /// CPU flags relevant to determinism (rdrand, rdseed, avx512f, ...).
    pub cpu_flags: Vec<String>,
    /// Anything else that must match, by name (glibc, OpenSSL, rlimits, ...).
    pub extra: Vec<(String, String)>,
}

/// The first sealed message in each direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL`].
    pub protocol: u16,
    /// The ftnet version (log records must decode the same on both nodes).
    pub software: String,
    pub role: Role,
    pub node: String,
    pub epoch: u64,
    /// Digest of the configuration (computed by the caller without the
    /// node's own addresses).
    pub config_digest: [u8; 32],
    pub replica: ReplicaIdentity,
    /// Position of the next stream frame this node will queue.
    pub next_position: u64,
    /// This node has received every stream frame of the peer's before this
    /// position: the peer resumes sending here.
    pub resume_from: u64,
    /// This node has applied the peer's stream up to here.
    pub applied: u64,
}

impl Hello {
    /// A hello with this build's protocol and software version and zero
    /// positions (the handshake fills those in).
    pub fn new(role: Role, node: &str, epoch: u64, config_digest: [u8; 32], replica: ReplicaIdentity) -> Hello {
        Hello {
            protocol: PROTOCOL,
            software: env!("CARGO_PKG_VERSION").to_string(),
            role,
            node: node.to_string(),
            epoch,
            config_digest,
            replica,
            next_position: 0,
            resume_from: 0,
            applied: 0,
        }
    }
}

/// The receiver's progress: every stream frame before `received` arrived;
/// frames before `applied` were applied (replayed, tracked).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub received: u64,
    pub applied: u64,
}

/// Why the primary fenced itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FenceReason {
    /// `ftnet promote`: a planned switchover; the backup takes over.
    Switchover,
    /// The primary gave up (lost its lease, or is failing).
    GaveUp,
    /// The primary is stopping with its server.
    Stopping,
}

/// The primary stopped releasing output; its stream ends at `position`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub reason: FenceReason,
    /// Position after the last stream frame the primary will send.
    pub position: u64,
    pub detail: String,
}

/// The sender took over the service at `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promoted {
    pub epoch: u64,
    pub node: String,
}

/// An orderly close.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bye {
    pub reason: String,
}

impl Bye {
    /// A bye whose reason is cut (at a character boundary) to fit a frame.
    pub fn new(reason: &str) -> Bye {
        let mut end = reason.len().min(3000);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Bye { reason: reason[..end].to_string() }
    }
}

/// A decoded frame body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Hello(Box<Hello>),
    /// A `replica::log::frame` (kind, length, crc, record).
    Log(Vec<u8>),
    /// A `net::forward` frame (header and IPv4 packet).
    Segment(Vec<u8>),
    Ack(Ack),
    Fence(Fence),
    Promoted(Promoted),
    Bye(Bye),
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs into a growable vector cannot fail.
    postcard::to_allocvec(v).unwrap_or_default()
}

fn decode<T: for<'a> Deserialize<'a>>(kind: Kind, body: &[u8]) -> Result<T, LinkError> {
    let bad = |what: String| LinkError::Body { kind, what };
    let (v, rest) = postcard::take_from_bytes(body).map_err(|e| bad(e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad(format!("{} trailing bytes", rest.len())));
    }
    Ok(v)
}

/// The body of a hello frame.
pub(crate) fn encode_hello(h: &Hello) -> Vec<u8> {
    encode(h)
}

impl Message {
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello(_) => Kind::Hello,
            Message::Log(_) => Kind::Log,
            Message::Segment(_) => Kind::Segment,
            Message::Ack(_) => Kind::Ack,
            Message::Fence(_) => Kind::Fence,
            Message::Promoted(_) => Kind::Promoted,
            Message::Bye(_) => Kind::Bye,
        }
    }

    /// The frame body.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Hello(h) => encode(h),
            Message::Log(b) | Message::Segment(b) => b.clone(),
            Message::Ack(a) => encode(a),
            Message::Fence(f) => encode(f),
            Message::Promoted(p) => encode(p),
            Message::Bye(b) => encode(b),
        }
    }

    /// Decodes an authenticated body of `kind`.
    pub fn decode(kind: Kind, body: Vec<u8>) -> Result<Message, LinkError> {
        Ok(match kind {
            Kind::Greeting => return Err(LinkError::Protocol("a greeting is not a sealed message".into())),
            Kind::Hello => Message::Hello(Box::new(decode(kind, &body)?)),
            Kind::Log => Message::Log(body),
            Kind::Segment => Message::Segment(body),
            Kind::Ack => Message::Ack(decode(kind, &body)?),
            Kind::Fence => Message::Fence(decode(kind, &body)?),
            Kind::Promoted => Message::Promoted(decode(kind, &body)?),
            Kind::Bye => Message::Bye(decode(kind, &body)?),
        })
    }
}

fn show(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

fn hex8(d: &[u8; 32]) -> String {
    d[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// The differences between two hellos that forbid pairing, one readable
/// line each ("executable /usr/sbin/nginx differs", "argv\[2\]: 'a' vs 'b'",
/// "config digest differs", ...); empty when the nodes are compatible.
/// Roles must differ, node names must differ; epochs and positions are not
/// compared (the epoch rules handle those).
pub fn hello_diff(ours: &Hello, theirs: &Hello) -> Vec<String> {
    let mut d = Vec::new();
    if ours.protocol != theirs.protocol {
        d.push(format!("link protocol {} vs {}", ours.protocol, theirs.protocol));
    }
    if ours.software != theirs.software {
        d.push(format!("ftnet version {} vs {}", ours.software, theirs.software));
    }
    if ours.role == theirs.role {
        d.push(format!("both nodes claim role {}", ours.role));
    }
    if ours.node == theirs.node {
        d.push(format!("both nodes are named '{}'", ours.node));
    }
    if ours.config_digest != theirs.config_digest {
        d.push(format!(
            "config digest differs ({}… vs {}…): the configuration files are not the same",
            hex8(&ours.config_digest),
            hex8(&theirs.config_digest)
        ));
    }
    replica_diff(&ours.replica, &theirs.replica, &mut d);
    d
}

fn replica_diff(a: &ReplicaIdentity, b: &ReplicaIdentity, d: &mut Vec<String>) {
    if a.exe != b.exe {
        d.push(format!("executable '{}' vs '{}'", show(&a.exe), show(&b.exe)));
    }
    let what = |p: &[u8]| if p == a.exe.as_slice() || p == b.exe.as_slice() { "executable" } else { "library" };
    let fa: BTreeMap<&[u8], &[u8; 32]> = a.files.iter().map(|f| (f.path.as_slice(), &f.blake3)).collect();
    let fb: BTreeMap<&[u8], &[u8; 32]> = b.files.iter().map(|f| (f.path.as_slice(), &f.blake3)).collect();
    for (p, da) in &fa {
        match fb.get(p) {
            Some(db) if db != da => d.push(format!("{} {} differs", what(p), show(p))),
            Some(_) => {}
            None => d.push(format!("{} {} is used only on this node", what(p), show(p))),
        }
    }
    for p in fb.keys().filter(|p| !fa.contains_key(*p)) {
        d.push(format!("{} {} is used only on the peer", what(p), show(p)));
    }
    list_diff("argv", &a.argv, &b.argv, d, |i, x, y| format!("argv[{i}]: '{}' vs '{}'", show(x), show(y)));
    list_diff("env", &a.env, &b.env, d, |i, x, y| {
        let name = |v: &[u8]| show(v.split(|&c| c == b'=').next().unwrap_or_default());
        let (nx, ny) = (name(x), name(y));
        if nx == ny { format!("env[{i}]: the value of {nx} differs") } else { format!("env[{i}]: {nx} vs {ny}") }
    });
    if a.cwd != b.cwd {
        d.push(format!("cwd '{}' vs '{}'", show(&a.cwd), show(&b.cwd)));
    }
    if a.kernel != b.kernel {
        d.push(format!("kernel release '{}' vs '{}'", a.kernel, b.kernel));
    }
    if a.thp != b.thp {
        d.push(format!("transparent hugepage mode '{}' vs '{}'", a.thp, b.thp));
    }
    let (ca, cb): (BTreeSet<&String>, BTreeSet<&String>) = (a.cpu_flags.iter().collect(), b.cpu_flags.iter().collect());
    let only = |x: &BTreeSet<&String>, y: &BTreeSet<&String>| {
        x.difference(y).map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
    };
    let (oa, ob) = (only(&ca, &cb), only(&cb, &ca));
    if !oa.is_empty() {
        d.push(format!("CPU flags only on this node: {oa}"));
    }
    if !ob.is_empty() {
        d.push(format!("CPU flags only on the peer: {ob}"));
    }
    let ea: BTreeMap<&str, &str> = a.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let eb: BTreeMap<&str, &str> = b.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for k in ea.keys().chain(eb.keys().filter(|k| !ea.contains_key(*k))) {
        match (ea.get(k), eb.get(k)) {
            (Some(x), Some(y)) if x != y => d.push(format!("{k} '{x}' vs '{y}'")),
            (Some(x), None) => d.push(format!("{k} '{x}' vs none on the peer")),
            (None, Some(y)) => d.push(format!("{k} none on this node vs '{y}'")),
            _ => {}
        }
    }
}

fn list_diff(
    name: &str,
    a: &[Vec<u8>],
    b: &[Vec<u8>],
    d: &mut Vec<String>,
    entry: impl Fn(usize, &[u8], &[u8]) -> String,
) {
    if a.len() != b.len() {
        d.push(format!("{name} has {} entries vs {}", a.len(), b.len()));
    }
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x != y {
            d.push(entry(i, x, y));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn identity() -> ReplicaIdentity {
        ReplicaIdentity {
            exe: b"/usr/sbin/nginx".to_vec(),
            files: vec![
                FileDigest { path: b"/usr/sbin/nginx".to_vec(), blake3: [1; 32] },
                FileDigest { path: b"/lib/x86_64-linux-gnu/libc.so.6".to_vec(), blake3: [2; 32] },
            ],
            argv: vec![b"nginx".to_vec(), b"-g".to_vec(), b"daemon off;".to_vec()],
            env: vec![b"PATH=/usr/bin".to_vec(), b"SECRET=hunter2".to_vec()],
            cwd: b"/".to_vec(),
            kernel: "6.18.0".into(),
            thp: "madvise".into(),
            cpu_flags: vec!["rdrand".into(), "rdseed".into()],
            extra: vec![("glibc".into(), "2.36".into())],
        }
    }

    pub(crate) fn hello(role: Role, node: &str) -> Hello {
        Hello::new(role, node, 1, [9; 32], identity())
    }

    #[test]
    fn every_message_round_trips() {
        let msgs = [
            Message::Hello(Box::new(hello(Role::Primary, "a"))),
            Message::Log(vec![3, 0, 0, 0, 0, 1, 2, 3, 4]),
            Message::Log(vec![]),
            Message::Segment(vec![0x45; 60]),
            Message::Ack(Ack { received: u64::MAX, applied: 7 }),
            Message::Fence(Fence { reason: FenceReason::Switchover, position: 42, detail: "ftnet promote".into() }),
            Message::Fence(Fence { reason: FenceReason::GaveUp, position: 0, detail: String::new() }),
            Message::Fence(Fence { reason: FenceReason::Stopping, position: 1, detail: "x".into() }),
            Message::Promoted(Promoted { epoch: 9, node: "b".into() }),
            Message::Bye(Bye::new("shutting down")),
        ];
        for m in msgs {
            assert_eq!(Message::decode(m.kind(), m.encode()).unwrap(), m);
        }
        assert!(Message::decode(Kind::Greeting, vec![0; 32]).is_err());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let mut b = Message::Ack(Ack { received: 1, applied: 1 }).encode();
        b.push(0);
        assert!(matches!(Message::decode(Kind::Ack, b), Err(LinkError::Body { kind: Kind::Ack, .. })));
        assert!(matches!(Message::decode(Kind::Hello, vec![0xff; 10]), Err(LinkError::Body { .. })));
        assert!(matches!(Message::decode(Kind::Fence, vec![]), Err(LinkError::Body { .. })));
        assert!(matches!(Message::decode(Kind::Fence, vec![9, 0, 0]), Err(LinkError::Body { .. })));
    }

    #[test]
    fn bye_is_cut_to_fit() {
        let long = "é".repeat(5000);
        let b = Bye::new(&long);
        assert!(b.reason.len() <= 3000 && !b.reason.is_empty());
        assert!(Message::Bye(b).encode().len() as u32 <= Kind::Bye.max_body());
    }

    #[test]
    fn hello_diff_cases() {
        let a = hello(Role::Primary, "a");
        let b = hello(Role::Backup, "b");
        assert!(hello_diff(&a, &b).is_empty());
        // Epochs and positions do not matter.
        let mut b2 = b.clone();
        b2.epoch = 77;
        b2.resume_from = 5;
        b2.next_position = 9;
        assert!(hello_diff(&a, &b2).is_empty());

        let diff = |f: &dyn Fn(&mut Hello)| {
            let mut t = b.clone();
            f(&mut t);
            hello_diff(&a, &t)
        };
        assert_eq!(diff(&|t| t.replica.files[0].blake3 = [0; 32]), ["executable /usr/sbin/nginx differs"]);
        assert_eq!(diff(&|t| t.replica.files[1].blake3 = [0; 32]), ["library /lib/x86_64-linux-gnu/libc.so.6 differs"]);
        assert_eq!(
            diff(&|t| t.replica.files.push(FileDigest { path: b"/lib/libssl.so.3".to_vec(), blake3: [0; 32] })),
            ["library /lib/libssl.so.3 is used only on the peer"]
        );
        assert_eq!(diff(&|t| t.replica.argv[2] = b"b".to_vec()), ["argv[2]: 'daemon off;' vs 'b'"]);
        assert_eq!(diff(&|t| t.replica.argv.push(b"-q".to_vec())), ["argv has 3 entries vs 4"]);
        let d = diff(&|t| t.replica.env[1] = b"SECRET=swordfish".to_vec());
        assert_eq!(d, ["env[1]: the value of SECRET differs"]);
        assert!(!d[0].contains("hunter2") && !d[0].contains("swordfish"));
        assert_eq!(diff(&|t| t.replica.env[1] = b"OTHER=1".to_vec()), ["env[1]: SECRET vs OTHER"]);
        assert_eq!(diff(&|t| t.replica.cwd = b"/srv".to_vec()), ["cwd '/' vs '/srv'"]);
        assert_eq!(diff(&|t| t.replica.kernel = "6.1".into()), ["kernel release '6.18.0' vs '6.1'"]);
        assert_eq!(diff(&|t| t.replica.thp = "always".into()), ["transparent hugepage mode 'madvise' vs 'always'"]);
        assert_eq!(
            diff(&|t| t.replica.cpu_flags = vec!["rdrand".into(), "avx512f".into()]),
            ["CPU flags only on this node: rdseed", "CPU flags only on the peer: avx512f"]
        );
        assert_eq!(diff(&|t| t.replica.extra[0].1 = "2.41".into()), ["glibc '2.36' vs '2.41'"]);
        assert_eq!(diff(&|t| t.replica.extra.clear()), ["glibc '2.36' vs none on the peer"]);
        let d = diff(&|t| t.config_digest = [8; 32]);
        assert_eq!(d.len(), 1);
        assert!(d[0].starts_with("config digest differs"), "{d:?}");
        assert_eq!(diff(&|t| t.role = Role::Primary), ["both nodes claim role primary"]);
        assert_eq!(diff(&|t| t.node = "a".into()), ["both nodes are named 'a'"]);
        assert_eq!(diff(&|t| t.protocol = 2), ["link protocol 1 vs 2"]);
        assert_eq!(diff(&|t| t.software = "9.9.9".into()), [format!("ftnet version {} vs 9.9.9", a.software)]);
        let d = diff(&|t| {
            t.replica.exe = b"/usr/local/sbin/nginx".to_vec();
            t.replica.files[0].path = b"/usr/local/sbin/nginx".to_vec();
        });
        assert_eq!(
            d,
            [
                "executable '/usr/sbin/nginx' vs '/usr/local/sbin/nginx'",
                "executable /usr/sbin/nginx is used only on this node",
                "executable /usr/local/sbin/nginx is used only on the peer",
            ]
        );
        // Non-UTF-8 bytes are shown escaped.
        assert_eq!(diff(&|t| t.replica.argv[0] = vec![0xff, b'x']), ["argv[0]: 'nginx' vs '\\xffx'"]);
    }
}

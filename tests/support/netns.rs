//! Isolated network-namespace topologies for integration tests (testing tier 3).
//!
//! Include it with `#[path = "support/netns.rs"] mod netns;`. [`Topo::up`] builds
//! one topology with `netns-scripts/topo` under a name unique to this process
//! and call (tests run in parallel under nextest, one process per test):
//!
//! - a client, host a, host b and a witness host on the service network
//!   10.77.0.0/24 (one bridge in a switch namespace), plus a direct
//!   replication link between a and b (10.78.0.0/24);
//! - each host with its own hostname, time namespace (CLOCK_MONOTONIC and
//!   CLOCK_BOOTTIME shifted by [`CLOCK_OFFSET_A`] / [`CLOCK_OFFSET_B`]) and a
//!   private tmpfs at [`STATE_DIR`];
//! - no link to the root namespace and no default route.
//!
//! Invariants: the topology is always removed — [`Topo`]'s `Drop` runs
//! `topo down`, also when the test body panics; no address is ever assigned to
//! the [`VIP`] by the harness; [`Topo::kill`] freezes a host, cuts its links and
//! only then kills it, so a dead host sends no FIN or RST. Layout, paths and
//! the kill sequence are documented in `netns-scripts/README.md`.
//!
//! [`Topo::cut`] / [`Topo::heal`] drop and restore all traffic on one [`Link`]
//! (both ways) without changing any address, route, carrier or the VIP on the
//! hosts: they only see traffic vanish, as behind a failed switch port or
//! cable segment that keeps link. See `netns-scripts/README.md`, "topo cut".
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

/// The client's address on the service network (interface [`SERVICE_IF`]).
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);
/// Host a's own address on the service network.
pub const SERVICE_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Host b's own address on the service network.
pub const SERVICE_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The witness host's address on the service network (its only link).
pub const WITNESS: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 20);
/// The service address clients connect to. The harness never assigns it:
/// add it with e.g. `ip addr add 10.77.0.100/24 dev svc0` on the primary.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
/// Prefix length of the service network 10.77.0.0/24.
pub const SERVICE_PREFIX_LEN: u8 = 24;
/// Host a's address on the replication link (interface [`REPL_IF`]).
pub const REPL_A: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
/// Host b's address on the replication link.
pub const REPL_B: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
/// Prefix length of the replication network 10.78.0.0/24.
pub const REPL_PREFIX_LEN: u8 = 24;
/// Service-network interface name inside client, a, b and the witness.
pub const SERVICE_IF: &str = "svc0";
/// Replication-link interface name inside a and b.
pub const REPL_IF: &str = "repl0";
/// Each host's private state directory (a tmpfs; same path on every host).
pub const STATE_DIR: &str = "/var/lib/ftnet-test";
/// Seconds added to CLOCK_MONOTONIC and CLOCK_BOOTTIME on the client.
pub const CLOCK_OFFSET_CLIENT: u64 = 0;
/// Seconds added to CLOCK_MONOTONIC and CLOCK_BOOTTIME on host a.
pub const CLOCK_OFFSET_A: u64 = 1_000_000;
/// Seconds added to CLOCK_MONOTONIC and CLOCK_BOOTTIME on host b.
pub const CLOCK_OFFSET_B: u64 = 2_500_000;
/// Seconds added to CLOCK_MONOTONIC and CLOCK_BOOTTIME on the witness.
pub const CLOCK_OFFSET_W: u64 = 0;
/// Where `topo` keeps per-topology bookkeeping (`RUN_DIR/NAME/`).
pub const RUN_DIR: &str = "/run/ftnet-topo";
/// Parent of the per-topology freezer cgroups (`FREEZER_DIR/NAME/{client,a,b,w}`).
pub const FREEZER_DIR: &str = "/sys/fs/cgroup/freezer/ftnet-topo";

/// One machine of a topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// The client (10.77.0.10).
    Client,
    /// Host a, the usual primary (10.77.0.1, replication 10.78.0.1).
    A,
    /// Host b, the usual backup (10.77.0.2, replication 10.78.0.2).
    B,
    /// The witness (10.77.0.20): a third host on the service network only,
    /// for tie-breaking; same kind of host as client, a and b.
    W,
    /// The switch: a namespace holding only the bridge. No holder, no private
    /// mounts; `cmd` works, `kill` does not.
    Switch,
}

impl Host {
    /// Every host of a topology, switch included.
    pub const ALL: [Host; 5] = [Host::Client, Host::A, Host::B, Host::W, Host::Switch];
    /// The hosts proper (everything but the switch): each has a holder, a
    /// hostname, clocks and a state directory of its own, and can be killed.
    pub const MACHINES: [Host; 4] = [Host::Client, Host::A, Host::B, Host::W];

    /// The suffix of the host's name and namespace: `client`, `a`, `b`, `w`, `sw`.
    pub fn suffix(self) -> &'static str {
        match self {
            Host::Client => "client",
            Host::A => "a",
            Host::B => "b",
            Host::W => "w",
            Host::Switch => "sw",
        }
    }

    /// The host's own address on the service network (`None` for the switch).
    pub fn service_addr(self) -> Option<Ipv4Addr> {
        match self {
            Host::Client => Some(CLIENT),
            Host::A => Some(SERVICE_A),
            Host::B => Some(SERVICE_B),
            Host::W => Some(WITNESS),
            Host::Switch => None,
        }
    }

    /// The host's replication-link address (`Some` only for a and b).
    pub fn repl_addr(self) -> Option<Ipv4Addr> {
        match self {
            Host::A => Some(REPL_A),
            Host::B => Some(REPL_B),
            _ => None,
        }
    }
}

/// One cable of a topology, for [`Topo::cut`] and [`Topo::heal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Link {
    /// The direct replication veth between a and b (10.78.0.0/24).
    Repl,
    /// a's service link: a loses the client, b and the witness on 10.77.0.0/24.
    ASvc,
    /// b's service link.
    BSvc,
    /// The witness's service link (its only link).
    WSvc,
    /// The client's service link.
    ClientSvc,
}

impl Link {
    /// Every link of a topology.
    pub const ALL: [Link; 5] = [Link::Repl, Link::ASvc, Link::BSvc, Link::WSvc, Link::ClientSvc];

    /// The `LINK` argument of `topo cut` / `topo heal`: `repl`, `a-svc`,
    /// `b-svc`, `w-svc`, `client-svc`.
    pub fn name(self) -> &'static str {
        match self {
            Link::Repl => "repl",
            Link::ASvc => "a-svc",
            Link::BSvc => "b-svc",
            Link::WSvc => "w-svc",
            Link::ClientSvc => "client-svc",
        }
    }

    /// `host`'s service link (`None` for the switch).
    pub fn service(host: Host) -> Option<Link> {
        match host {
            Host::Client => Some(Link::ClientSvc),
            Host::A => Some(Link::ASvc),
            Host::B => Some(Link::BSvc),
            Host::W => Some(Link::WSvc),
            Host::Switch => None,
        }
    }
}

/// Path of `netns-scripts/topo` in this checkout.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("netns-scripts").join("topo")
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A topology that exists until this value is dropped (or [`Topo::down`]).
#[derive(Debug)]
pub struct Topo {
    name: String,
    removed: bool,
}

impl Topo {
    /// Builds a topology named `PREFIX<pid>n<counter>`; `prefix` is 1–8
    /// characters of `[a-z0-9]`. Panics with the script's message on failure
    /// (after which nothing of it is left).
    pub fn up(prefix: &str) -> Topo {
        match Topo::try_up(prefix) {
            Ok(topo) => topo,
            Err(e) => panic!("netns topology: {e:#}"),
        }
    }

    /// Like [`Topo::up`], returning the error instead of panicking.
    pub fn try_up(prefix: &str) -> anyhow::Result<Topo> {
        let valid =
            (1..=8).contains(&prefix.len()) && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !valid {
            bail!("bad topology prefix {prefix:?}: use 1-8 characters [a-z0-9]");
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}{}n{n}", std::process::id());
        run_script(&["up", &name])?;
        Ok(Topo { name, removed: false })
    }

    /// The topology's name (the `NAME` of `netns-scripts/topo`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's name: its network namespace (`ip -n NAME-a …`), its
    /// hostname, and the `HOST` argument of `topo exec` / `topo kill`.
    pub fn host(&self, host: Host) -> String {
        format!("{}-{}", self.name, host.suffix())
    }

    /// A command that runs `argv` inside `host` (its network, mount, UTS and
    /// time namespaces, in its freezer cgroup), with the caller's working
    /// directory and environment. The spawned child's pid is the pid of
    /// `argv[0]` itself: `topo exec` and `nsenter` exec without forking.
    /// Panics if `argv` is empty.
    pub fn cmd(&self, host: Host, argv: &[&str]) -> Command {
        assert!(!argv.is_empty(), "Topo::cmd: empty argv");
        let mut cmd = Command::new(script());
        cmd.arg("exec").arg(self.host(host)).arg("--").args(argv);
        cmd
    }

    /// Runs `argv` inside `host` to completion and returns its output,
    /// whatever its exit status. Stdin is empty.
    pub fn output(&self, host: Host, argv: &[&str]) -> Output {
        let mut cmd = self.cmd(host, argv);
        cmd.stdin(Stdio::null());
        match cmd.output() {
            Ok(out) => out,
            Err(e) => panic!("cannot start {argv:?} on {}: {e}", self.host(host)),
        }
    }

    /// Runs `argv` inside `host`, panicking with its stderr unless it exits 0.
    pub fn run(&self, host: Host, argv: &[&str]) -> Output {
        let out = self.output(host, argv);
        if !out.status.success() {
            panic!(
                "{argv:?} on {} failed ({}): stderr: {} stdout: {}",
                self.host(host),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        out
    }

    /// [`Topo::run`] and return its stdout as text, trimmed.
    pub fn stdout(&self, host: Host, argv: &[&str]) -> String {
        String::from_utf8_lossy(&self.run(host, argv).stdout).trim().to_string()
    }

    /// Copies `src` (a file or directory of the shared file system) to `dest`
    /// inside `host` with `cp -a`, so each host gets its own copy (own inodes,
    /// own device). `dest` is usually under [`STATE_DIR`].
    pub fn copy_in(&self, host: Host, src: &Path, dest: &str) {
        let src = src.to_str().unwrap_or_else(|| panic!("copy_in: non-UTF-8 path {}", src.display()));
        self.run(host, &["cp", "-a", "--", src, dest]);
    }

    /// Adds the [`VIP`] (as 10.77.0.100/24) to `host`'s [`SERVICE_IF`]. The
    /// harness never does this on its own; no gratuitous ARP is sent.
    pub fn add_vip(&self, host: Host) {
        let vip = format!("{VIP}/{SERVICE_PREFIX_LEN}");
        self.run(host, &["ip", "addr", "add", &vip, "dev", SERVICE_IF]);
    }

    /// Simulates the death of `host` (client, a, b or w): freezes all its
    /// processes, cuts its links, then SIGKILLs them (`topo kill`). The host
    /// sends no FIN or RST. Panics on failure.
    pub fn kill(&self, host: Host) {
        if let Err(e) = run_script(&["kill", &self.host(host)]) {
            panic!("netns topology: {e:#}");
        }
    }

    /// Freezes every process of `host` (client, a, b or w) and leaves its
    /// kernel and links running: it still ACKs, retransmits and answers ARP,
    /// as a host whose userspace stalls does. Removing the topology thaws
    /// and kills them. Panics on failure.
    pub fn freeze(&self, host: Host) {
        let state = format!("{FREEZER_DIR}/{}/{}/freezer.state", self.name, host.suffix());
        if let Err(e) = std::fs::write(&state, "FROZEN") {
            panic!("freezing {}: {state}: {e}", self.host(host));
        }
    }

    /// Drops all traffic on `link`, both ways, until [`Topo::heal`]. Addresses,
    /// routes, carrier and the VIP stay as they are on every host. Cutting a
    /// cut link changes nothing. Takes ~10 ms. Panics with the script's
    /// message on failure (e.g. the link's host was killed).
    pub fn cut(&self, link: Link) {
        if let Err(e) = self.try_cut(link) {
            panic!("netns topology: {e:#}");
        }
    }

    /// Restores `link` exactly as `up` built it; a no-op if it is not cut.
    /// Panics with the script's message on failure.
    pub fn heal(&self, link: Link) {
        if let Err(e) = self.try_heal(link) {
            panic!("netns topology: {e:#}");
        }
    }

    /// Like [`Topo::cut`], returning the error instead of panicking.
    pub fn try_cut(&self, link: Link) -> anyhow::Result<()> {
        run_script(&["cut", &self.name, link.name()])
    }

    /// Like [`Topo::heal`], returning the error instead of panicking.
    pub fn try_heal(&self, link: Link) -> anyhow::Result<()> {
        run_script(&["heal", &self.name, link.name()])
    }

    /// Removes the topology now and reports failure (`Drop` does the same
    /// silently, printing errors to stderr).
    pub fn down(mut self) -> anyhow::Result<()> {
        self.removed = true;
        run_script(&["down", &self.name])
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        if !self.removed {
            self.removed = true;
            if let Err(e) = run_script(&["down", &self.name]) {
                eprintln!("netns topology {}: teardown failed: {e:#}", self.name);
            }
        }
    }
}

/// Runs `netns-scripts/topo ARGS`, turning a non-zero exit into an error
/// carrying its stderr.
fn run_script(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {} {args:?}", script().display()))?;
    if !out.status.success() {
        bail!("topo {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

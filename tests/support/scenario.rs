//! Runs one takeover scenario in its own topology (test-only): server on a,
//! wire tap of a (switch namespace) feeding the backup role on b, client
//! with a capture; kills a, lets b take over, collects what every role saw.
//!
//! Every process is started by this module and killed by pid on drop; every
//! wait is bounded; the topology goes away with the `Topo`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use super::detsvc::wall_ns;
use super::netns::{self, Host, Topo};

/// A role or helper process with its `@@` lines.
pub struct Proc {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Proc {
    fn start(name: &str, mut cmd: Command, stdin: Stdio) -> Proc {
        cmd.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let out = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(i) = line.find("@@")
                    && tx.send(line[i..].to_string()).is_err()
                {
                    break;
                }
            }
        });
        Proc { name: name.to_string(), child, stdin, lines: rx, seen: Vec::new() }
    }

    /// Waits for a line starting with `prefix`; panics on timeout.
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        match self.wait(prefix, timeout) {
            Some(l) => l,
            None => panic!("{}: no {prefix:?} within {timeout:?}; saw {:#?}", self.name, self.seen),
        }
    }

    /// Waits for a line starting with `prefix`.
    pub fn wait(&mut self, prefix: &str, timeout: Duration) -> Option<String> {
        if let Some(l) = self.seen.iter().find(|l| l.starts_with(prefix)) {
            return Some(l.clone());
        }
        let end = Instant::now() + timeout;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return Some(l);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Sends one control line.
    pub fn send(&mut self, line: &str) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "{line}");
        }
    }

    /// All lines so far starting with `prefix` (drains what has arrived).
    pub fn all(&mut self, prefix: &str) -> Vec<String> {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        self.seen.iter().filter(|l| l.starts_with(prefix)).cloned().collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `key=value` from a line.
pub fn field(line: &str, key: &str) -> Option<String> {
    let k = format!("{key}=");
    line.split_whitespace().find_map(|w| w.strip_prefix(&k).map(str::to_string))
}

/// Numeric `key=value` from a line (0 if absent).
pub fn num(line: &str, key: &str) -> u64 {
    field(line, key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// One scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub prefix: &'static str,
    pub client: &'static str,
    pub server_a: &'static str,
    pub server_b: &'static str,
    pub conns: usize,
    pub total: u64,
    pub limit: u64,
    /// Kill this long after the client reports ready.
    pub settle: Duration,
    /// Send `go` to the client after the takeover.
    pub go: bool,
    /// Wait for a `@@conn` line from a's server before the kill (it closed).
    pub wait_server_close: bool,
    /// Shape every service interface to this rate (tc tbf), e.g. "200mbit".
    pub shape: Option<&'static str>,
    /// Drop SYN-ACKs at the client until after the takeover.
    pub handshake: bool,
    /// Backup: also queue captured, unacknowledged client bytes.
    pub queue_unacked: bool,
    /// Overall bound for the client.
    pub client_secs: u64,
    /// Backup experiment: crafted nudge segments after the takeover.
    pub nudge: &'static str,
    /// Feed b from the real capture (`ftnet::net::capture` on a, `Receiver`
    /// on b) rather than the wire tap. Default: `FT_FEED=tap` selects the tap.
    pub capture: bool,
}

impl Scenario {
    pub fn new(prefix: &'static str, client: &'static str, server: &'static str) -> Scenario {
        Scenario {
            prefix,
            client,
            server_a: server,
            server_b: server,
            conns: 1,
            total: 0,
            limit: 0,
            settle: Duration::from_millis(300),
            go: false,
            wait_server_close: false,
            shape: None,
            handshake: false,
            queue_unacked: false,
            client_secs: 60,
            nudge: "none",
            capture: std::env::var("FT_FEED").map_or(true, |v| v != "tap"),
        }
    }
}

/// What a scenario produced.
#[derive(Debug)]
pub struct Outcome {
    pub client: Vec<String>,
    pub backup: Vec<String>,
    pub server_a: Vec<String>,
    pub rst_to_client: usize,
    pub tap_stderr: String,
    pub kill_ns: u64,
}

impl Outcome {
    pub fn takeover(&self) -> &str {
        self.backup.iter().find(|l| l.starts_with("@@takeover")).map(String::as_str).unwrap_or("")
    }
    pub fn summary(&self) -> &str {
        self.client.iter().find(|l| l.starts_with("@@summary")).map(String::as_str).unwrap_or("")
    }
    /// Asserts the common must-shows: no client error, no RST toward the
    /// client, no byte mismatch anywhere, no failed takeover, no tap drop.
    pub fn assert_clean(&self, name: &str) {
        if std::env::var_os("FT_DEBUG").is_some() {
            eprintln!("{name}: {self:#?}");
        }
        // First: a tap that lost packets gave b a wrong picture (the real
        // forwarder's output commit rules that out); say so before anything else.
        assert!(
            self.tap_stderr == "capture" || self.tap_stderr.lines().any(|l| l.trim() == "0 packets dropped by kernel"),
            "{name}: the wire tap (test stand-in for the forwarder) dropped packets: {}",
            self.tap_stderr
        );
        let t = self.takeover();
        assert!(!t.is_empty(), "{name}: no takeover; backup said {:#?}", self.backup);
        assert_eq!(num(t, "failed"), 0, "{name}: failed connections: {:#?}", self.backup);
        assert!(!self.backup.iter().any(|l| l.starts_with("@@error")), "{name}: {:#?}", self.backup);
        let s = self.summary();
        assert!(!s.is_empty(), "{name}: no client summary: {:#?} backup {:#?}", self.client, self.backup);
        assert_eq!(num(s, "failed"), 0, "{name}: client errors: {:#?}", self.client);
        for l in self.client.iter().filter(|l| l.starts_with("@@result")) {
            assert_eq!(num(l, "ok"), 1, "{name}: {l}");
        }
        for l in self.backup.iter().chain(&self.server_a) {
            assert!(!l.starts_with("@@mismatch"), "{name}: {l}");
            if l.starts_with("@@conn") {
                assert_eq!(num(l, "mismatch"), 0, "{name}: {l}");
            }
        }
        assert_eq!(self.rst_to_client, 0, "{name}: RST toward the client");
    }

    /// One line for the record: stalls and takeover times.
    pub fn report(&self, name: &str) -> String {
        let t = self.takeover();
        let s = self.summary();
        let kill_to_done_ms = num(t, "done").saturating_sub(self.kill_ns) as f64 / 1e6;
        let line = format!(
            "STALL {name}: client rx(server->client) max={:.1}ms med={:.1}ms tx(client->server) max={:.1}ms med={:.1}ms | kill->t_eof {:.1}ms kill->takeover-done {kill_to_done_ms:.1}ms (takeover itself {:.2}ms: build {:.2} vip {:.2} garp {:.3} rules {:.2} release {:.2} tail {:.2})",
            num(s, "rx_stall_max_us") as f64 / 1e3,
            num(s, "rx_stall_med_us") as f64 / 1e3,
            num(s, "tx_stall_max_us") as f64 / 1e3,
            num(s, "tx_stall_med_us") as f64 / 1e3,
            num(t, "t_eof").saturating_sub(self.kill_ns) as f64 / 1e6,
            num(t, "total_us") as f64 / 1e3,
            num(t, "build_us") as f64 / 1e3,
            num(t, "vip_us") as f64 / 1e3,
            num(t, "garp_us") as f64 / 1e3,
            num(t, "rules_us") as f64 / 1e3,
            num(t, "release_us") as f64 / 1e3,
            num(t, "tail_us") as f64 / 1e3,
        );
        eprintln!("{line}");
        line
    }
}

fn role(topo: &Topo, host: Host, role: &str, env: &[(&str, String)]) -> Command {
    let exe = std::env::current_exe().expect("test executable");
    let exe = exe.to_str().expect("utf-8 path").to_string();
    let mut cmd = topo.cmd(host, &[&exe, "--exact", "role", "--nocapture", "--test-threads", "1"]);
    cmd.env("FTNET_ROLE", role);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `s` end to end.
pub fn run(s: &Scenario) -> Outcome {
    let topo = Topo::up(s.prefix);
    let vip = netns::VIP.to_string();
    let port = "7000".to_string();
    topo.add_vip(Host::A);
    if let Some(rate) = s.shape {
        for h in [Host::Client, Host::A, Host::B] {
            topo.run(
                h,
                &["tc", "qdisc", "add", "dev", "svc0", "root", "tbf", "rate", rate, "burst", "64kb", "latency", "20ms"],
            );
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = dir.path().join("client.pcap");
    let pcap = pcap.to_str().expect("path").to_string();
    let mut client_cap = topo
        .cmd(
            Host::Client,
            &["tcpdump", "-i", "svc0", "-n", "-U", "--immediate-mode", "-Z", "root", "-s", "128", "-w", &pcap, "tcp"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client tcpdump");
    let mut cap_err = BufReader::new(client_cap.stderr.take().expect("stderr"));
    wait_listening(&mut cap_err, "client tcpdump");

    let listen = format!("{}:7700", netns::REPL_B);
    let mut tap = None;
    let mut tap_err = None;
    let backup_stdin = if s.capture {
        Stdio::piped()
    } else {
        let mut tap_cmd = topo.cmd(
            Host::Switch,
            &[
                "tcpdump",
                "-i",
                "p-a",
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "0",
                "-B",
                "262144",
                "-w",
                "-",
                "tcp",
                "and",
                "host",
                &vip,
            ],
        );
        tap_cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut t = tap_cmd.spawn().expect("spawn tap");
        let mut err = BufReader::new(t.stderr.take().expect("stderr"));
        wait_listening(&mut err, "wire tap");
        let out = t.stdout.take().expect("tap stdout");
        tap = Some(t);
        tap_err = Some(err);
        Stdio::from(out)
    };

    let common = |extra: &[(&'static str, String)]| -> Vec<(&'static str, String)> {
        let mut v = vec![("FT_VIP", vip.clone()), ("FT_PORT", port.clone())];
        v.extend(extra.iter().cloned());
        v
    };
    let mut backup = Proc::start(
        "backup",
        role(
            &topo,
            Host::B,
            "backup",
            &common(&[
                ("FT_SPEC_A", s.server_a.to_string()),
                ("FT_SPEC_B", s.server_b.to_string()),
                ("FT_QUEUE_UNACKED", u8::from(s.queue_unacked).to_string()),
                ("FT_NUDGE", s.nudge.to_string()),
                ("FT_SERVE_SECS", s.client_secs.to_string()),
                ("FT_LISTEN", if s.capture { listen.clone() } else { String::new() }),
            ]),
        ),
        backup_stdin,
    );
    backup.expect("@@armed", Duration::from_secs(10));
    let mut capture = None;
    if s.capture {
        backup.expect("@@receiving", Duration::from_secs(10));
        let mut c = Proc::start(
            "capture-a",
            role(&topo, Host::A, "capture", &common(&[("FT_FORWARD", listen.clone())])),
            Stdio::piped(),
        );
        c.expect("@@capture-ready", Duration::from_secs(10));
        capture = Some(c);
    }
    let mut server = Proc::start(
        "server-a",
        role(&topo, Host::A, "server", &common(&[("FT_SPEC", s.server_a.to_string())])),
        Stdio::null(),
    );
    server.expect("@@listening", Duration::from_secs(10));
    if s.handshake {
        topo.run(
            Host::Client,
            &["iptables", "-I", "INPUT", "-p", "tcp", "--tcp-flags", "SYN,ACK", "SYN,ACK", "-j", "DROP"],
        );
    }
    let mut client = Proc::start(
        "client",
        role(
            &topo,
            Host::Client,
            "client",
            &common(&[
                ("FT_SCENARIO", s.client.to_string()),
                ("FT_CONNS", s.conns.to_string()),
                ("FT_TOTAL", s.total.to_string()),
                ("FT_LIMIT", s.limit.to_string()),
                ("FT_SECS", s.client_secs.to_string()),
            ]),
        ),
        Stdio::piped(),
    );
    if s.handshake {
        client.expect("@@connecting", Duration::from_secs(10));
    } else {
        client.expect("@@ready", Duration::from_secs(30));
    }
    if s.wait_server_close {
        server.expect("@@conn", Duration::from_secs(30));
    }
    std::thread::sleep(s.settle);
    let kill_ns = wall_ns();
    topo.kill(Host::A);
    client.send(&format!("kill {kill_ns}"));
    if s.capture {
        backup.send("takeover");
    }
    backup.expect("@@takeover", Duration::from_secs(30));
    if s.handshake {
        topo.run(
            Host::Client,
            &["iptables", "-D", "INPUT", "-p", "tcp", "--tcp-flags", "SYN,ACK", "SYN,ACK", "-j", "DROP"],
        );
    }
    if s.go {
        client.send("go");
    }
    client.wait("@@done", Duration::from_secs(s.client_secs + 30));
    backup.wait("@@backup-done", Duration::from_secs(s.client_secs + 10));
    // Stop the captures (SIGINT so tcpdump writes out and reports drops).
    let _ = Command::new("kill").args(["-INT", &client_cap.id().to_string()]).status();
    let _ = client_cap.wait();
    let mut tap_stderr = String::from("capture");
    if let (Some(mut t), Some(mut err)) = (tap, tap_err) {
        let _ = t.kill();
        let _ = t.wait();
        tap_stderr.clear();
        let _ = std::io::Read::read_to_string(&mut err, &mut tap_stderr);
    }
    drop(capture);
    let rst = Command::new("tcpdump")
        .args(["-r", &pcap, "-n", &format!("tcp[tcpflags] & tcp-rst != 0 and dst host {}", netns::CLIENT)])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(usize::MAX);
    if let Some(keep) = std::env::var_os("FT_KEEP_PCAP") {
        let _ = std::fs::copy(&pcap, keep);
    }
    let out = Outcome {
        client: client.all("@@"),
        backup: backup.all("@@"),
        server_a: server.all("@@"),
        rst_to_client: rst,
        tap_stderr,
        kill_ns,
    };
    drop(client);
    drop(backup);
    drop(server);
    drop(topo);
    out
}

fn wait_listening(r: &mut impl BufRead, what: &str) {
    let mut line = String::new();
    for _ in 0..10 {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line.contains("listening on") {
            break;
        }
    }
    assert!(line.contains("listening on"), "{what} did not start: {line}");
}

/// The keepalived baseline: the echo server on a and b (`ip_nonlocal_bind`),
/// keepalived (VRRPv3, 0.1 s adverts, configs in `bench/takeover/`) moving
/// the VIP, the `reconnect` client. Returns the client's lines, RSTs seen
/// toward the client, and when b had the VIP (ms after the kill).
pub fn run_keepalived(prefix: &str) -> (Vec<String>, usize, f64) {
    let topo = Topo::up(prefix);
    let vip = netns::VIP.to_string();
    let bench = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench").join("takeover");
    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = dir.path().join("client.pcap");
    let pcap = pcap.to_str().expect("path").to_string();
    let mut cap = topo
        .cmd(
            Host::Client,
            &["tcpdump", "-i", "svc0", "-n", "-U", "--immediate-mode", "-Z", "root", "-s", "128", "-w", &pcap, "tcp"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client tcpdump");
    let mut cap_err = BufReader::new(cap.stderr.take().expect("stderr"));
    wait_listening(&mut cap_err, "client tcpdump");
    let mut kas = Vec::new();
    let mut servers = Vec::new();
    for (h, conf) in [(Host::A, "keepalived-a.conf"), (Host::B, "keepalived-b.conf")] {
        topo.run(h, &["sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1"]);
        topo.copy_in(h, &bench.join(conf), &format!("{}/keepalived.conf", netns::STATE_DIR));
        let sd = netns::STATE_DIR;
        let ka = topo
            .cmd(
                h,
                &[
                    "keepalived",
                    "-n",
                    "-l",
                    "-P",
                    "-f",
                    &format!("{sd}/keepalived.conf"),
                    "-p",
                    &format!("{sd}/keepalived.pid"),
                    "-r",
                    &format!("{sd}/vrrp.pid"),
                ],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn keepalived");
        kas.push(ka);
        let common = vec![("FT_VIP", vip.clone()), ("FT_PORT", "7000".to_string()), ("FT_SPEC", "echo=1".to_string())];
        let mut srv = Proc::start("server", role(&topo, h, "server", &common), Stdio::null());
        srv.expect("@@listening", Duration::from_secs(10));
        servers.push(srv);
    }
    let has_vip = |h: Host| topo.stdout(h, &["ip", "-4", "-o", "addr", "show", "dev", "svc0"]).contains(&vip);
    let until = Instant::now() + Duration::from_secs(15);
    while !has_vip(Host::A) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(has_vip(Host::A), "keepalived did not give a the VIP");
    let env = vec![
        ("FT_VIP", vip.clone()),
        ("FT_PORT", "7000".to_string()),
        ("FT_SCENARIO", "reconnect".to_string()),
        ("FT_SECS", "15".to_string()),
    ];
    let mut client = Proc::start("client", role(&topo, Host::Client, "client", &env), Stdio::piped());
    client.expect("@@ready", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let kill_ns = wall_ns();
    topo.kill(Host::A);
    client.send(&format!("kill {kill_ns}"));
    let until = Instant::now() + Duration::from_secs(10);
    while !has_vip(Host::B) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    let vip_ms = wall_ns().saturating_sub(kill_ns) as f64 / 1e6;
    client.wait("@@done", Duration::from_secs(30));
    let _ = Command::new("kill").args(["-INT", &cap.id().to_string()]).status();
    let _ = cap.wait();
    let rst = Command::new("tcpdump")
        .args(["-r", &pcap, "-n", &format!("tcp[tcpflags] & tcp-rst != 0 and dst host {}", netns::CLIENT)])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(usize::MAX);
    let lines = client.all("@@");
    for mut k in kas {
        let _ = k.kill();
        let _ = k.wait();
    }
    drop(client);
    drop(servers);
    drop(topo);
    (lines, rst, vip_ms)
}

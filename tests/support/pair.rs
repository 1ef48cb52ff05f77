//! A failover pair in a test topology: `ftnet up` on host a (primary) and
//! host b (backup) serving a server from each host's private state
//! directory, a client with helpers to download, run request loops and
//! capture, and status queries. Every process it starts is killed when the
//! pair drops (the topology's own teardown kills the rest).
#![allow(dead_code)]

use crate::netns::{Host, STATE_DIR, Topo, VIP, WITNESS};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::cli::{content, ftnet};

/// One daemon and its log file.
pub struct Daemon {
    pub child: Option<Child>,
    pub log: PathBuf,
    pub socket: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct Pair {
    pub topo: Topo,
    pub dir: tempfile::TempDir,
    pub a: Option<Daemon>,
    pub b: Option<Daemon>,
    pub bg: Vec<Child>,
    pub guard: Guard,
    /// The witness (`ftnet witness` or etcd) on host w.
    pub witness: Option<Child>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        for c in self.bg.iter_mut().chain(self.witness.as_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What keeps the pair from having two primaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// No witness: `policy = "..."`.
    Policy(&'static str),
    /// `ftnet witness` on host w (10.77.0.20:7800).
    Witness,
    /// etcd on host w (10.77.0.20:2379).
    Etcd,
}

/// The witness's lease time in the tests.
pub const LEASE_MS: u64 = 400;

/// What the pair serves.
pub enum Server {
    /// nginx with HTTPS on the VIP:443 (TLS 1.2 and 1.3), master + 1 worker.
    Nginx,
    /// redis-server on the VIP:6379.
    Redis,
}

const NGINX_CONF: &str = r#"daemon off;
master_process on;
worker_processes 1;
pid STATE/nginx.pid;
error_log STATE/error.log info;
events { worker_connections 512; }
http {
  access_log STATE/access.log;
  client_body_temp_path STATE/body;
  keepalive_timeout 120s;
  keepalive_requests 100000;
  server {
    listen VIP:443 ssl;
    ssl_certificate STATE/cert.pem;
    ssl_certificate_key STATE/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    root STATE/www;
  }
}
"#;

pub fn sha256(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or("").to_string()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Pair {
    /// Builds the topology, the key, both configurations and each host's
    /// own copy of the server's files. `tweak_b` may change b's copy (to
    /// make it diverge).
    pub fn new(
        prefix: &str,
        server: Server,
        policy: &'static str,
        big_len: usize,
        tweak_b: Option<&dyn Fn(&Path)>,
    ) -> Pair {
        Pair::guarded(prefix, server, Guard::Policy(policy), big_len, tweak_b)
    }

    /// [`Pair::new`] with a witness or a policy; a witness is started on
    /// host w (its state file lives in the test's directory, so a restarted
    /// witness keeps its epochs).
    pub fn guarded(
        prefix: &str,
        server: Server,
        guard: Guard,
        big_len: usize,
        tweak_b: Option<&dyn Fn(&Path)>,
    ) -> Pair {
        let topo = Topo::up(prefix);
        let dir = tempfile::Builder::new().prefix("ftnet-pair-").tempdir_in("/tmp").expect("tempdir");
        let d = dir.path();
        let key = d.join("key");
        let hex: String = content(32, 99).iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&key, hex).expect("key");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
        let (command, port) = match server {
            Server::Nginx => (format!(r#"["nginx", "-c", "{STATE_DIR}/nginx.conf"]"#), 443),
            Server::Redis => (
                format!(
                    r#"["redis-server", "--bind", "{VIP}", "--port", "6379", "--save", "", "--appendonly", "no", "--dir", "{STATE_DIR}", "--daemonize", "no", "--protected-mode", "no"]"#
                ),
                6379,
            ),
        };
        let files = d.join("files");
        std::fs::create_dir_all(files.join("www")).expect("files");
        if matches!(server, Server::Nginx) {
            let st = Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=ftnet-test"])
                .arg("-keyout")
                .arg(files.join("key.pem"))
                .arg("-out")
                .arg(files.join("cert.pem"))
                .stderr(Stdio::null())
                .status()
                .expect("openssl");
            assert!(st.success());
            let conf = NGINX_CONF.replace("STATE", STATE_DIR).replace("VIP", &VIP.to_string());
            std::fs::write(files.join("nginx.conf"), conf).expect("conf");
            std::fs::write(files.join("www/big.bin"), content(big_len, 7)).expect("big");
            std::fs::write(files.join("www/index.html"), "<html>ftnet pair</html>\n").expect("index");
        }
        for (host, name, me, peer, me_s, peer_s) in [
            (Host::A, "a", "10.78.0.1", "10.78.0.2", "10.77.0.1", "10.77.0.2"),
            (Host::B, "b", "10.78.0.2", "10.78.0.1", "10.77.0.2", "10.77.0.1"),
        ] {
            let guard_toml = match guard {
                Guard::Policy(p) => format!("policy = \"{p}\"\n"),
                _ => String::new(),
            };
            let witness_toml = match guard {
                Guard::Policy(_) => String::new(),
                Guard::Witness => format!("[witness]\nkind = \"ftnet\"\naddress = \"{WITNESS}:7800\"\n"),
                Guard::Etcd => format!("[witness]\nkind = \"etcd\"\nendpoints = [\"http://{WITNESS}:2379\"]\n"),
            };
            let cfg = format!(
                r#"{guard_toml}[service]
command = {command}
vip = "{VIP}/24"
interface = "svc0"
ports = [{port}]
[link]
key_file = "{key}"
heartbeat_interval_ms = 20
heartbeat_timeout_ms = 100
lease_ms = {LEASE_MS}
{witness_toml}[node]
name = "{name}"
link = "{me}:7700"
peer_link = "{peer}:7700"
service = "{me_s}:7701"
peer_service = "{peer_s}:7701"
control_socket = "{d}/{name}.sock"
cpu = 0
"#,
                key = key.display(),
                d = d.display()
            );
            std::fs::write(d.join(format!("{name}.toml")), cfg).expect("config");
            let _ = host;
        }
        for host in [Host::A, Host::B] {
            let copy = format!(
                "cp -a {f}/. {STATE_DIR}/ && chmod -R a+rX {STATE_DIR} && chmod 777 {STATE_DIR}",
                f = files.display()
            );
            topo.run(host, &["sh", "-c", &copy]);
        }
        if let Some(t) = tweak_b {
            // b's own copy differs: write it through b's mount namespace.
            let alt = d.join("b-files");
            std::fs::create_dir_all(&alt).expect("alt");
            t(&alt);
            topo.run(Host::B, &["sh", "-c", &format!("cp -a {}/. {STATE_DIR}/www/", alt.display())]);
        }
        let mut p = Pair { topo, dir, a: None, b: None, bg: vec![], guard, witness: None };
        p.start_witness();
        p
    }

    /// Starts the witness on host w (no-op without one) and waits until it
    /// answers.
    pub fn start_witness(&mut self) {
        let d = self.dir.path().to_path_buf();
        let state = d.join("witness.state");
        let mut argv: Vec<String> = match self.guard {
            Guard::Policy(_) => return,
            Guard::Witness => vec![
                ftnet().into(),
                "witness".into(),
                "--listen".into(),
                format!("{WITNESS}:7800"),
                "--key".into(),
                d.join("key").display().to_string(),
                "--state".into(),
                state.display().to_string(),
            ],
            Guard::Etcd => vec![
                "etcd".into(),
                "--name".into(),
                "w".into(),
                "--data-dir".into(),
                d.join("etcd").display().to_string(),
                "--listen-client-urls".into(),
                format!("http://{WITNESS}:2379"),
                "--advertise-client-urls".into(),
                format!("http://{WITNESS}:2379"),
                "--listen-peer-urls".into(),
                "http://127.0.0.1:2380".into(),
                "--initial-advertise-peer-urls".into(),
                "http://127.0.0.1:2380".into(),
                "--initial-cluster".into(),
                "w=http://127.0.0.1:2380".into(),
                // A 1 s minimum lease instead of 2 s (see src/witness/etcd.rs).
                "--heartbeat-interval".into(),
                "20".into(),
                "--election-timeout".into(),
                "100".into(),
            ],
        };
        if self.guard == Guard::Witness && !state.exists() {
            // A new witness; a restart reads back its state.
            argv.push("--init".into());
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(d.join("witness.log")).expect("log");
        let args: Vec<&str> = argv.iter().map(|s| s.as_str()).collect();
        let mut c = self.topo.cmd(Host::W, &args);
        c.stdout(log.try_clone().expect("dup")).stderr(log).stdin(Stdio::null());
        self.witness = Some(c.spawn().expect("spawn the witness"));
        let probe = match self.guard {
            Guard::Etcd => {
                format!("import urllib.request; urllib.request.urlopen('http://{WITNESS}:2379/health', timeout=1)")
            }
            _ => "import time; time.sleep(0.2)".to_string(),
        };
        let until = Instant::now() + Duration::from_secs(20);
        while !self.topo.output(Host::W, &["python3", "-c", &probe]).status.success() {
            assert!(Instant::now() < until, "the witness did not come up: {}", self.witness_log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills the witness process (its state file stays).
    pub fn kill_witness(&mut self) {
        if let Some(mut c) = self.witness.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn witness_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("witness.log")).unwrap_or_default()
    }

    /// Who sent from the VIP, in a client capture: (time, host) for every
    /// TCP segment and ARP packet whose source is the VIP, `host` being
    /// "a", "b" or the MAC.
    pub fn vip_senders(&self, pcap: &Path) -> Vec<(f64, String)> {
        let o = Command::new("tcpdump")
            .args(["-tt", "-e", "-n", "-r", pcap.to_str().expect("utf8")])
            .arg(format!("(src host {VIP} and tcp) or (arp and arp[14:4] = 0x{:08x})", u32::from(VIP)))
            .stderr(Stdio::null())
            .output()
            .expect("tcpdump -r");
        text(&o.stdout)
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let t: f64 = w.next()?.parse().ok()?;
                let mac = w.next()?.to_string();
                let who = match mac.as_str() {
                    "02:77:00:00:00:01" => "a".to_string(),
                    "02:77:00:00:00:02" => "b".to_string(),
                    _ => mac,
                };
                Some((t, who))
            })
            .collect()
    }

    fn start(&self, host: Host, name: &str, role: &str) -> Daemon {
        let d = self.dir.path();
        let log = d.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log");
        let cfg = d.join(format!("{name}.toml"));
        let mut c = self.topo.cmd(host, &[ftnet(), "up", "--config", cfg.to_str().expect("utf8"), "--role", role]);
        c.stdout(out.try_clone().expect("dup")).stderr(out).stdin(Stdio::null());
        let child = c.spawn().expect("spawn ftnet up");
        Daemon { child: Some(child), log, socket: format!("{}/{name}.sock", d.display()) }
    }

    /// Starts both daemons and waits until they replicate.
    pub fn up(&mut self) {
        self.a = Some(self.start(Host::A, "a", "primary"));
        self.b = Some(self.start(Host::B, "b", "backup"));
        self.wait_state(Host::A, "replicating", Duration::from_secs(30));
        self.wait_state(Host::B, "replicating", Duration::from_secs(30));
    }

    /// SIGKILLs the node's `ftnet up` (its replica dies with it: the tracer
    /// kills its tracees) and starts it again at once in `role`, as a
    /// service manager would; the host, its kernel and links stay.
    pub fn restart(&mut self, host: Host, role: &str) {
        let (name, slot) = match host {
            Host::A => ("a", &mut self.a),
            _ => ("b", &mut self.b),
        };
        drop(slot.take());
        let d = self.start(host, name, role);
        match host {
            Host::A => self.a = Some(d),
            _ => self.b = Some(d),
        }
    }

    pub fn daemon(&self, host: Host) -> &Daemon {
        match host {
            Host::A => self.a.as_ref().expect("a started"),
            _ => self.b.as_ref().expect("b started"),
        }
    }

    pub fn log(&self, host: Host) -> String {
        std::fs::read_to_string(&self.daemon(host).log).unwrap_or_default()
    }

    /// `ftnet status --json` of a node (through its control socket).
    pub fn status(&self, host: Host) -> serde_json::Value {
        let o = self.topo.output(host, &[ftnet(), "status", "--json", "--socket", &self.daemon(host).socket]);
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// `ftnet status` of a node, as an operator reads it.
    pub fn status_text(&self, host: Host) -> String {
        let o = self.topo.output(host, &[ftnet(), "status", "--socket", &self.daemon(host).socket]);
        text(&o.stdout)
    }

    pub fn wait_state(&self, host: Host, state: &str, limit: Duration) -> serde_json::Value {
        let until = Instant::now() + limit;
        loop {
            let s = self.status(host);
            if s["state"] == state {
                return s;
            }
            if Instant::now() > until {
                panic!("{host:?} did not reach state {state} (status {s}); log:\n{}", self.log(host));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for a daemon to exit; its status code.
    pub fn wait_exit(&mut self, host: Host, limit: Duration) -> Option<i32> {
        let d = match host {
            Host::A => self.a.as_mut(),
            _ => self.b.as_mut(),
        }?;
        let c = d.child.as_mut()?;
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Runs `argv` in the client namespace in the background.
    pub fn client_bg(&mut self, argv: &[&str], out: &Path) -> usize {
        let f = std::fs::File::create(out).expect("out");
        let mut c = self.topo.cmd(Host::Client, argv);
        c.stdout(f.try_clone().expect("dup")).stderr(f).stdin(Stdio::null());
        self.bg.push(c.spawn().expect("spawn client"));
        self.bg.len() - 1
    }

    /// Waits until the background client writing `out` has printed `text`;
    /// panics with what it printed after `limit`.
    pub fn wait_printed(&self, out: &Path, text: &str, limit: Duration) {
        let until = Instant::now() + limit;
        while !std::fs::read_to_string(out).unwrap_or_default().contains(text) {
            assert!(Instant::now() < until, "client: {}", std::fs::read_to_string(out).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_bg(&mut self, i: usize, limit: Duration) -> Option<i32> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Ok(Some(st)) = self.bg[i].try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Starts a capture of the client's traffic with the VIP.
    pub fn capture(&mut self) -> PathBuf {
        let pcap = self.dir.path().join("client.pcap");
        let mut c = self.topo.cmd(
            Host::Client,
            &["tcpdump", "-ni", "svc0", "-s", "96", "-U", "-w", pcap.to_str().expect("utf8"), "host", &VIP.to_string()],
        );
        c.stdout(Stdio::null()).stderr(Stdio::null());
        self.bg.push(c.spawn().expect("tcpdump"));
        std::thread::sleep(Duration::from_millis(500));
        pcap
    }

    /// Resets and FINs the VIP sent to the client in a capture.
    pub fn rst_and_fin_from_vip(&self, pcap: &Path) -> (usize, usize) {
        let count = |filter: &str| {
            let o = Command::new("tcpdump")
                .args(["-nr", pcap.to_str().expect("utf8"), &format!("src host {VIP} and ({filter})")])
                .stderr(Stdio::null())
                .output()
                .expect("tcpdump -r");
            text(&o.stdout).lines().count()
        };
        (count("tcp[tcpflags] & tcp-rst != 0"), count("tcp[tcpflags] & tcp-fin != 0"))
    }

    /// Path for a client-side file.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A request loop over ONE persistent HTTPS connection (python's ssl +
/// http.client): every `gap` seconds until `secs` pass, GET `path`, check
/// the body; prints `ok N errors E connections C max_gap_ms G`.
pub const REQUEST_LOOP: &str = r#"
import http.client, ssl, sys, time
host, path, secs, gap, expect = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5].encode()
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
conn = http.client.HTTPSConnection(host, 443, context=ctx, timeout=30)
ok = errors = 0; socks = set(); last = time.time(); max_gap = 0
end = time.time() + secs
while time.time() < end:
    try:
        conn.request("GET", path)
        r = conn.getresponse(); body = r.read()
        socks.add(conn.sock.getsockname()[1])
        if r.status == 200 and body == expect: ok += 1
        else: errors += 1
    except Exception as e:
        errors += 1; print("error", repr(e), flush=True)
        conn.close()
    now = time.time(); max_gap = max(max_gap, now - last); last = now
    time.sleep(gap)
print(f"ok {ok} errors {errors} connections {len(socks)} max_gap_ms {int(max_gap*1000)}", flush=True)
"#;

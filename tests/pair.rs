//! The live pair in namespaces: `ftnet up` on host a (primary) and host b
//! (backup), clients on the service network. Each test builds its own
//! topology (removed even on failure). Timings are reported, not asserted.
//! Needs root, nginx, redis-server, openssl, curl, tcpdump, python3.

#[path = "support/ftnet.rs"]
mod cli;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/pair.rs"]
mod pair;

use netns::{Host, VIP};
use pair::*;
use std::time::Duration;

const BIG: usize = 60 << 20;

fn start_download(p: &mut Pair, rate: &str) -> (usize, std::path::PathBuf, std::path::PathBuf) {
    let out = p.path("got.bin");
    let meta = p.path("curl.out");
    let url = format!("https://{VIP}/big.bin");
    let w = "%{http_code} %{size_download} %{local_port} %{num_connects}\n";
    let i = p.client_bg(
        &["curl", "-sk", "--max-time", "120", "--limit-rate", rate, "-o", out.to_str().expect("utf8"), "-w", w, &url],
        &meta,
    );
    (i, out, meta)
}

fn start_request_loop(p: &mut Pair, secs: &str) -> (usize, std::path::PathBuf) {
    let script = p.path("loop.py");
    std::fs::write(&script, REQUEST_LOOP).expect("script");
    let out = p.path("loop.out");
    let i = p.client_bg(
        &[
            "python3",
            script.to_str().expect("utf8"),
            &VIP.to_string(),
            "/index.html",
            secs,
            "0.02",
            "<html>ftnet pair</html>\n",
        ],
        &out,
    );
    (i, out)
}

fn check_download(p: &mut Pair, i: usize, out: &std::path::Path, meta: &std::path::Path) -> String {
    assert_eq!(
        p.wait_bg(i, Duration::from_secs(150)),
        Some(0),
        "curl failed: {}",
        std::fs::read_to_string(meta).unwrap_or_default()
    );
    let m = std::fs::read_to_string(meta).expect("curl meta");
    let f: Vec<&str> = m.split_whitespace().collect();
    assert_eq!(f.first(), Some(&"200"), "{m}");
    assert_eq!(f.get(1), Some(&BIG.to_string().as_str()), "every byte arrived: {m}");
    assert_eq!(f.get(3), Some(&"1"), "one TCP connection, no reconnect: {m}");
    let want = {
        let t = p.path("want.bin");
        std::fs::write(&t, content(BIG, 7)).expect("want");
        sha256(&t)
    };
    assert_eq!(sha256(out), want, "the download is byte-exact");
    m
}

fn check_loop(p: &mut Pair, i: usize, out: &std::path::Path) -> String {
    assert_eq!(p.wait_bg(i, Duration::from_secs(120)), Some(0));
    let s = std::fs::read_to_string(out).expect("loop output");
    let last = s.lines().last().unwrap_or("").to_string();
    assert!(last.contains("errors 0 connections 1"), "the request loop saw an error or reconnected: {s}");
    last
}

#[test]
fn nginx_https_survives_the_death_of_host_a() {
    let mut p = Pair::new("pk", Server::Nginx, "prefer-availability", BIG, None);
    p.up();
    let pcap = p.capture();
    let (d, out, meta) = start_download(&mut p, "8M");
    let (l, lout) = start_request_loop(&mut p, "14");
    std::thread::sleep(Duration::from_secs(4));
    p.topo.kill(Host::A);
    let st = p.wait_state(Host::B, "live", Duration::from_secs(10));
    let m = check_download(&mut p, d, &out, &meta);
    let last = check_loop(&mut p, l, &lout);
    let (rst, _) = p.rst_and_fin_from_vip(&pcap);
    assert_eq!(rst, 0, "no RST reached the client");
    eprintln!("download {m}; loop {last}; detect_ms {} takeover_ms {}", st["detect_ms"], st["takeover_ms"]);
}

#[test]
fn no_fin_or_rst_when_ftnet_and_the_replica_die_but_the_kernel_lives() {
    let mut p = Pair::new("pf", Server::Nginx, "prefer-availability", BIG, None);
    p.up();
    let pcap = p.capture();
    let (d, out, meta) = start_download(&mut p, "8M");
    std::thread::sleep(Duration::from_secs(4));
    // SIGKILL every process of host a, leaving its kernel and links alive.
    let pids = p.topo.stdout(Host::Client, &["ip", "netns", "pids", &p.topo.host(Host::A)]);
    let pids: Vec<&str> = pids.split_whitespace().collect();
    let _ = std::process::Command::new("kill").arg("-KILL").args(&pids).status();
    p.wait_state(Host::B, "live", Duration::from_secs(10));
    check_download(&mut p, d, &out, &meta);
    let (rst, fin) = p.rst_and_fin_from_vip(&pcap);
    assert_eq!(rst, 0, "no RST from a's kernel or anyone");
    assert!(fin <= 1, "at most the server's own final FIN after the download: {fin}");
}

const REDIS_LOOP: &str = r#"
import socket, sys, time
host, secs = sys.argv[1], float(sys.argv[2])
s = socket.create_connection((host, 6379), timeout=30)
f = s.makefile("rb")
def cmd(*a):
    return b"*%d\r\n" % len(a) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in a)
last = None; acked = {}; gaps = 0; n = 0; errors = 0
end = time.time() + secs
while time.time() < end:
    batch = []
    for _ in range(10):
        n += 1
        batch.append(cmd(b"INCR", b"counter")); batch.append(cmd(b"SET", b"k%d" % n, b"v%d" % n))
    s.sendall(b"".join(batch))
    for j in range(10):
        line = f.readline()
        if not line.startswith(b":"): errors += 1; continue
        v = int(line[1:])
        if last is not None and v != last + 1: gaps += 1
        last = v
        ok = f.readline()
        if ok.strip() == b"+OK": acked[b"k%d" % (n - 9 + j)] = b"v%d" % (n - 9 + j)
        else: errors += 1
    time.sleep(0.01)
lost = 0
for k, v in acked.items():
    s.sendall(cmd(b"GET", k)); f.readline(); got = f.readline().strip()
    if got != v: lost += 1
print(f"counter {last} acked {len(acked)} gaps {gaps} lost {lost} errors {errors}", flush=True)
"#;

#[test]
fn redis_acknowledged_writes_survive_and_the_counter_continues() {
    let mut p = Pair::new("pr", Server::Redis, "prefer-availability", 0, None);
    p.up();
    let script = p.path("redis.py");
    std::fs::write(&script, REDIS_LOOP).expect("script");
    let out = p.path("redis.out");
    let i = p.client_bg(&["python3", script.to_str().expect("utf8"), &VIP.to_string(), "8"], &out);
    std::thread::sleep(Duration::from_secs(3));
    p.topo.kill(Host::A);
    p.wait_state(Host::B, "live", Duration::from_secs(10));
    assert_eq!(p.wait_bg(i, Duration::from_secs(60)), Some(0), "{}", std::fs::read_to_string(&out).unwrap_or_default());
    let s = std::fs::read_to_string(&out).expect("out");
    assert!(s.contains("gaps 0 lost 0 errors 0"), "{s}");
    eprintln!("{s}");
}

#[test]
fn killing_the_backup_leaves_the_primary_serving() {
    let mut p = Pair::new("pb", Server::Nginx, "prefer-availability", BIG, None);
    p.up();
    let (d, out, meta) = start_download(&mut p, "10M");
    std::thread::sleep(Duration::from_secs(3));
    p.topo.kill(Host::B);
    p.wait_state(Host::A, "alone", Duration::from_secs(10));
    check_download(&mut p, d, &out, &meta);
}

#[test]
fn a_planned_promote_keeps_the_connections() {
    let mut p = Pair::new("pp", Server::Nginx, "prefer-availability", BIG, None);
    p.up();
    let (d, out, meta) = start_download(&mut p, "8M");
    let (l, lout) = start_request_loop(&mut p, "12");
    std::thread::sleep(Duration::from_secs(3));
    let sock = p.daemon(Host::B).socket.clone();
    let o = p.topo.output(Host::B, &[ftnet(), "promote", "--socket", &sock]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    p.wait_state(Host::B, "live", Duration::from_secs(15));
    assert_eq!(
        p.wait_exit(Host::A, Duration::from_secs(15)),
        Some(0),
        "the old primary steps down: {}",
        p.log(Host::A)
    );
    check_download(&mut p, d, &out, &meta);
    check_loop(&mut p, l, &lout);
}

/// Size of a file that is being written (0 if absent).
fn size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn prefer_consistency_primary_holds_output_until_told_to_go_alone() {
    let mut p = Pair::new("pc", Server::Nginx, "prefer-consistency", BIG, None);
    p.up();
    let (d, out, meta) = start_download(&mut p, "10M");
    std::thread::sleep(Duration::from_secs(2));
    p.topo.kill(Host::B);
    let st = p.wait_state(
        Host::A,
        "holding: backup unreachable, output held (policy prefer-consistency)",
        Duration::from_secs(10),
    );
    // Held means held: nothing more reaches the client.
    std::thread::sleep(Duration::from_millis(500));
    let before = size(&out);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(size(&out), before, "no byte leaves an unprotected primary: {st}");
    let sock = p.daemon(Host::A).socket.clone();
    let o = p.topo.output(Host::A, &[ftnet(), "promote", "--socket", &sock]);
    assert!(!o.status.success() && text(&o.stderr).contains("this node is the primary"), "{}", text(&o.stderr));
    let o = p.topo.output(Host::A, &[ftnet(), "promote", "--force", "--socket", &sock]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    p.wait_state(Host::A, "alone", Duration::from_secs(5));
    check_download(&mut p, d, &out, &meta);
}

#[test]
fn prefer_consistency_backup_waits_for_the_operator_then_takes_over() {
    let mut p = Pair::new("pw", Server::Nginx, "prefer-consistency", BIG, None);
    p.up();
    let (d, out, meta) = start_download(&mut p, "10M");
    std::thread::sleep(Duration::from_secs(3));
    p.topo.kill(Host::A);
    p.wait_state(Host::B, "primary unreachable: not promoting (policy prefer-consistency)", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    let addrs = p.topo.stdout(Host::B, &["ip", "-4", "addr", "show", "svc0"]);
    assert!(!addrs.contains(&VIP.to_string()), "b did not take the VIP on its own: {addrs}");
    let sock = p.daemon(Host::B).socket.clone();
    let o = p.topo.output(Host::B, &[ftnet(), "promote", "--force", "--socket", &sock]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    p.wait_state(Host::B, "live", Duration::from_secs(15));
    check_download(&mut p, d, &out, &meta);
}

#[test]
fn the_server_stopping_by_itself_stops_both_without_promotion() {
    let mut p = Pair::new("ps", Server::Nginx, "prefer-availability", 1 << 20, None);
    p.up();
    let o = p.topo.output(Host::Client, &["curl", "-sk", "--max-time", "10", &format!("https://{VIP}/index.html")]);
    assert_eq!(text(&o.stdout), "<html>ftnet pair</html>\n");
    let sock = p.daemon(Host::A).socket.clone();
    let o = p.topo.output(Host::A, &[ftnet(), "signal", "--socket", &sock, "3"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(p.wait_exit(Host::A, Duration::from_secs(20)), Some(0), "{}", p.log(Host::A));
    assert_eq!(p.wait_exit(Host::B, Duration::from_secs(20)), Some(0), "{}", p.log(Host::B));
    let b = p.log(Host::B);
    assert!(b.contains("not promoting") && !b.contains("promoting:"), "{b}");
}

#[test]
fn a_divergence_is_reported_and_refuses_automatic_promotion() {
    let tweak = |d: &std::path::Path| {
        std::fs::write(d.join("index.html"), "<html>b's different copy</html>\n").expect("tweak");
    };
    let mut p = Pair::new("pd", Server::Nginx, "prefer-availability", 1 << 20, Some(&tweak));
    p.up();
    let o = p.topo.output(Host::Client, &["curl", "-sk", "--max-time", "10", &format!("https://{VIP}/index.html")]);
    assert_eq!(text(&o.stdout), "<html>ftnet pair</html>\n", "the primary serves its own copy");
    let st = p.wait_state(Host::B, "diverged", Duration::from_secs(15));
    let div = st["divergences"].to_string();
    assert!(div.contains("index.html"), "the report names the file: {div}");
    p.topo.kill(Host::A);
    std::thread::sleep(Duration::from_secs(2));
    let st = p.status(Host::B);
    assert_eq!(st["state"], "diverged", "no automatic promotion: {st}");
    let addrs = p.topo.stdout(Host::B, &["ip", "-4", "addr", "show", "svc0"]);
    assert!(!addrs.contains(&VIP.to_string()), "b did not take the VIP: {addrs}");
}

const BAD_FRAMES: &str = r#"
import os, socket, struct, sys, time
host = sys.argv[1]
def hdr(ver, kind, ln):
    return b"FTLK" + struct.pack(">BBHQQI", ver, kind, 0, 0, 0, ln)
def conn():
    return socket.create_connection((host, 7700), timeout=3)
# A wrong protocol version in the very first header.
s = conn(); s.sendall(hdr(9, 0, 32) + os.urandom(32)); time.sleep(0.3); s.close()
# A valid greeting, then a frame announcing an absurd length.
s = conn(); s.sendall(hdr(1, 0, 32) + os.urandom(32)); s.recv(100); s.sendall(hdr(1, 1, 0x7fffffff)); time.sleep(0.3); s.close()
# A valid greeting, then a sealed frame whose tag cannot verify (no key).
s = conn(); s.sendall(hdr(1, 0, 32) + os.urandom(32)); s.recv(100); s.sendall(hdr(1, 1, 64) + os.urandom(80)); time.sleep(0.3); s.close()
print("sent", flush=True)
"#;

#[test]
fn bad_frames_are_rejected_counted_and_survived() {
    let mut p = Pair::new("pj", Server::Nginx, "prefer-availability", 1 << 20, None);
    p.a = Some({
        let d = p.dir.path();
        let log = d.join("a.log");
        let out = std::fs::File::create(&log).expect("log");
        let cfg = d.join("a.toml");
        let mut c = p.topo.cmd(Host::A, &[ftnet(), "up", "--config", cfg.to_str().expect("utf8"), "--role", "primary"]);
        c.stdout(out.try_clone().expect("dup")).stderr(out);
        Daemon { child: Some(c.spawn().expect("spawn")), log, socket: format!("{}/a.sock", d.display()) }
    });
    p.wait_state(Host::A, "pairing", Duration::from_secs(20));
    let script = p.path("bad.py");
    std::fs::write(&script, BAD_FRAMES).expect("script");
    // From b's replication address: the primary only talks to its peer.
    let o = p.topo.output(Host::B, &["python3", script.to_str().expect("utf8"), "10.78.0.1"]);
    assert!(text(&o.stdout).contains("sent"), "{} {}", text(&o.stdout), text(&o.stderr));
    std::thread::sleep(Duration::from_millis(500));
    let st = p.status(Host::A);
    assert_eq!(st["state"], "pairing", "the primary is still up and waiting: {st}");
    let r = &st["rejected_frames"];
    for k in ["rejected_version", "rejected_oversize", "rejected_mac"] {
        assert!(r[k].as_u64().unwrap_or(0) >= 1, "{k} counted: {r}");
    }
    let log = p.log(Host::A);
    for k in ["version 9", "exceeds the limit", "failed authentication"] {
        assert!(log.to_lowercase().contains(k), "a log line names {k}: {log}");
    }
}

/// Forty short connections to redis (PING, then close) and one kept open,
/// used again once the file `argv[2]` exists.
const SHORT_AND_ONE_LONG: &str = r#"
import os, socket, sys, time
host = sys.argv[1]
def ping(s):
    s.sendall(b"PING\r\n")
    assert s.recv(64) == b"+PONG\r\n"
keep = socket.create_connection((host, 6379), timeout=5); ping(keep)
for _ in range(40):
    s = socket.create_connection((host, 6379), timeout=5); ping(s); s.close()
print("ready", flush=True)
end = time.time() + 120
while not os.path.exists(sys.argv[2]) and time.time() < end:
    time.sleep(0.1)
ping(keep)
print("kept connection ok", flush=True)
"#;

/// The backup forgets connections a minute after they ended on the wire
/// (or its tracker would fill up and ignore new ones), and keeps idle ones:
/// the connection kept open across the minute still fails over.
#[test]
fn the_backup_forgets_ended_connections_and_keeps_idle_ones() {
    let mut p = Pair::new("pf", Server::Redis, "prefer-availability", 0, None);
    p.up();
    let script = p.path("short.py");
    std::fs::write(&script, SHORT_AND_ONE_LONG).expect("script");
    let out = p.path("short.out");
    let go = p.path("go");
    let i =
        p.client_bg(&["python3", script.to_str().expect("utf8"), &VIP.to_string(), go.to_str().expect("utf8")], &out);
    p.wait_printed(&out, "ready", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(1));
    let before = p.status(Host::B)["connections_tracked"].as_u64().expect("connections_tracked");
    assert!(before >= 41, "the backup tracks every connection it saw: {before}");
    std::thread::sleep(Duration::from_secs(62));
    let after = p.status(Host::B)["connections_tracked"].as_u64().expect("connections_tracked");
    assert_eq!(after, 1, "a minute after they closed only the open connection is left (was {before})");
    p.topo.kill(Host::A);
    p.wait_state(Host::B, "live", Duration::from_secs(10));
    std::fs::write(&go, "").expect("go");
    assert_eq!(p.wait_bg(i, Duration::from_secs(30)), Some(0), "{}", std::fs::read_to_string(&out).unwrap_or_default());
    assert!(std::fs::read_to_string(&out).unwrap_or_default().contains("kept connection ok"));
}

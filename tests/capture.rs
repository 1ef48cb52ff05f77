//! NFQUEUE capture on the primary and the tracker fed on the backup, in
//! network namespaces (testing tier 3; needs root, iptables, tcpdump).
//!
//! Each test builds its own topology (`tests/support/netns.rs`), adds the
//! VIP on host a, and runs its processes inside the hosts by re-executing
//! this test binary with a role (see `capture/roles.rs`): the capture on a,
//! the receiver on b (forwarding over the replication link 10.78.0.1 →
//! 10.78.0.2), the service on a bound to the VIP, the client in the client
//! namespace. Every wait is bounded; the topology (and every process in it)
//! is removed when the test ends, also on failure.

#[path = "support/netns.rs"]
mod netns;
#[path = "capture/roles.rs"]
mod roles;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use netns::{Host, REPL_B, SERVICE_IF, Topo, VIP};

const PORT: u16 = 7000;
const LINK_PORT: u16 = 7700;

/// Not a test: the entry point of the processes the tests start inside the
/// namespaces (passes trivially when run as a test).
#[test]
fn role_entry() {
    if roles::run_from_env() {
        std::process::exit(0);
    }
}

/// A process started inside a host, with its output lines collected.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(mut cmd: Command, name: &str) -> Proc {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for (stream, tag) in [(Box::new(out) as Box<dyn std::io::Read + Send>, ""), (Box::new(err), "stderr: ")] {
            let (tx, log) = (tx.clone(), Arc::clone(&log));
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    // libtest prints "test role_entry ... " before the role's first line.
                    let line = line.strip_prefix("test role_entry ... ").map(str::to_string).unwrap_or(line);
                    log.lock().unwrap().push(format!("{tag}{line}"));
                    let _ = tx.send(line);
                }
            });
        }
        let stdin = child.stdin.take();
        Proc { name: name.to_string(), child, stdin, lines, log }
    }

    /// This test binary in `role` inside `host`.
    fn role(topo: &Topo, host: Host, role: &str, args: &[(&str, String)]) -> Proc {
        let exe = std::env::current_exe().unwrap();
        let exe = exe.to_str().unwrap();
        let mut cmd = topo.cmd(host, &[exe, "--exact", "role_entry", "--nocapture", "--test-threads", "1"]);
        let joined: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        cmd.env(roles::ROLE_ENV, role).env(roles::ARGS_ENV, joined.join(";"));
        Proc::spawn(cmd, &format!("{role}@{host:?}"))
    }

    fn dump(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for an output line starting with `prefix`.
    fn expect(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(e) => panic!("{}: no line {prefix:?} ({e:?}); output:\n{}", self.name, self.dump()),
            }
        }
    }

    /// Collects `REPORT k=v` lines up to `END`.
    fn report(&self, timeout: Duration) -> HashMap<String, String> {
        let deadline = Instant::now() + timeout;
        let mut m = HashMap::new();
        loop {
            let l = self.expect("", deadline.saturating_duration_since(Instant::now()));
            if l == "END" {
                return m;
            }
            if let Some((k, v)) = l.strip_prefix("REPORT ").and_then(|kv| kv.split_once('=')) {
                m.insert(k.to_string(), v.to_string());
            }
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill").args(["-s", sig, &self.child.id().to_string()]).status();
    }

    /// Waits (bounded) for the process to exit successfully.
    fn wait_ok(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{} exited with {status}; output:\n{}", self.name, self.dump());
                return;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{} did not exit within {timeout:?}; output:\n{}", self.name, self.dump());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// tcpdump of the service port on `host`'s service interface into `file`.
fn tcpdump(topo: &Topo, host: Host, file: &Path) -> Proc {
    let f = file.to_str().unwrap();
    let filter = format!("tcp port {PORT}");
    let cmd = topo.cmd(
        host,
        &[
            "tcpdump",
            "--immediate-mode",
            "-Z",
            "root",
            "-i",
            SERVICE_IF,
            "-n",
            "-U",
            "-s",
            "128",
            "-B",
            "16384",
            "-w",
            f,
            &filter,
        ],
    );
    let p = Proc::spawn(cmd, &format!("tcpdump@{host:?}"));
    p.expect("tcpdump: listening on", Duration::from_secs(10));
    p
}

/// Stops a tcpdump and checks it dropped nothing.
fn stop_tcpdump(mut p: Proc) {
    p.signal("INT");
    p.wait_ok(Duration::from_secs(10));
    let out = p.dump();
    assert!(out.contains(" 0 packets dropped by kernel"), "tcpdump dropped packets:\n{out}");
}

/// One TCP segment of a pcap file.
#[derive(Debug, Clone, Copy)]
struct Seg {
    /// Capture time, seconds since the epoch.
    ts: f64,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: u32,
    flags: u8,
}

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// Parses an Ethernet pcap (µs timestamps) written by tcpdump.
fn read_pcap(path: &Path) -> Vec<Seg> {
    let b = std::fs::read(path).unwrap();
    assert!(b.len() >= 24 && b[..4] == 0xa1b2_c3d4u32.to_le_bytes(), "not a little-endian µs pcap");
    assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 1, "link type not Ethernet");
    let u32le = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let mut off = 24;
    let mut out = Vec::new();
    while off + 16 <= b.len() {
        let (sec, usec, incl) = (u32le(off), u32le(off + 4), u32le(off + 8) as usize);
        let p = &b[off + 16..off + 16 + incl];
        off += 16 + incl;
        if p.len() < 14 + 20 || p[12..14] != [0x08, 0x00] || p[14 + 9] != 6 {
            continue;
        }
        let ip = &p[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let tcp = &ip[ihl..];
        let addr = |a: &[u8]| Ipv4Addr::new(a[0], a[1], a[2], a[3]);
        let port = |a: &[u8]| u16::from_be_bytes([a[0], a[1]]);
        out.push(Seg {
            ts: f64::from(sec) + f64::from(usec) / 1e6,
            src: SocketAddrV4::new(addr(&ip[12..16]), port(&tcp[0..2])),
            dst: SocketAddrV4::new(addr(&ip[16..20]), port(&tcp[2..4])),
            seq: u32::from_be_bytes(tcp[4..8].try_into().unwrap()),
            flags: tcp[13],
        });
    }
    out
}

fn parse_kv(line: &str) -> HashMap<String, u64> {
    line.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.into(), v.parse().unwrap())).collect()
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn vip_service() -> String {
    format!("{VIP}:{PORT}")
}

fn start_capture(topo: &Topo) -> Proc {
    start_capture_with(topo, "accept")
}

fn start_capture_with(topo: &Topo, policy: &str) -> Proc {
    let args = [
        ("queue", "3".to_string()),
        ("vip", VIP.to_string()),
        ("ports", PORT.to_string()),
        ("forward", format!("{REPL_B}:{LINK_PORT}")),
        ("policy", policy.to_string()),
    ];
    let p = Proc::role(topo, Host::A, "capture", &args);
    p.expect("READY", Duration::from_secs(20));
    p
}

const T: Duration = Duration::from_secs(30);

#[test]
fn forwards_both_directions_to_the_backup_tracker() {
    let (up, down) = (4usize << 20, 4usize << 20);
    let topo = Topo::up("capfw");
    topo.add_vip(Host::A);
    let dir = tempfile::tempdir().unwrap();
    let mut rx = Proc::role(
        &topo,
        Host::B,
        "receiver",
        &[("listen", format!("{REPL_B}:{LINK_PORT}")), ("services", vip_service()), ("mode", "one".into())],
    );
    rx.expect("READY", T);
    let (pcap_a, pcap_c) = (dir.path().join("a.pcap"), dir.path().join("client.pcap"));
    let td_a = tcpdump(&topo, Host::A, &pcap_a);
    let td_c = tcpdump(&topo, Host::Client, &pcap_c);
    let sizes = [("up", up.to_string()), ("down", down.to_string())];
    let mut srv = Proc::role(
        &topo,
        Host::A,
        "server",
        &[&[("listen", vip_service()), ("mode", "exchange".into())][..], &sizes].concat(),
    );
    srv.expect("READY", T);
    let mut cap = start_capture(&topo);
    let mut cl = Proc::role(
        &topo,
        Host::Client,
        "client",
        &[&[("connect", vip_service()), ("mode", "exchange".into())][..], &sizes].concat(),
    );
    let done = cl.expect("DONE", Duration::from_secs(60));
    srv.expect("SERVED", T);
    let client: SocketAddrV4 = done.trim_start_matches("DONE local=").parse().unwrap();
    // Let the last delayed ACKs go out before the capture stops.
    std::thread::sleep(Duration::from_millis(500));

    cap.close_stdin();
    let stats = parse_kv(&cap.expect("STATS", T));
    cap.wait_ok(T);
    let report = rx.report(T);
    rx.wait_ok(T);
    stop_tcpdump(td_a);
    stop_tcpdump(td_c);
    cl.close_stdin();
    cl.wait_ok(T);
    srv.wait_ok(T);

    let server = SocketAddrV4::new(VIP, PORT);
    let segs_c = read_pcap(&pcap_c);
    let syn = segs_c.iter().find(|s| s.src == client && s.flags & (SYN | ACK) == SYN).expect("client SYN");
    let syn_ack = segs_c.iter().find(|s| s.src == server && s.flags & (SYN | ACK) == SYN | ACK).expect("SYN-ACK");
    let (client_isn, server_isn) = (syn.seq, syn_ack.seq);
    let segs_a = read_pcap(&pcap_a);
    let seen_in = segs_a.iter().filter(|s| s.src == client && s.dst == server).count() as u64;
    let seen_out = segs_a.iter().filter(|s| s.src == server && s.dst == client).count() as u64;
    eprintln!("capture: {stats:?}\nreport: {report:?}\ntcpdump on a: in {seen_in} out {seen_out}");

    let r = |k: &str| report.get(k).unwrap_or_else(|| panic!("report has no {k}: {report:?}")).as_str();
    let n = |k: &str| r(k).parse::<u64>().unwrap_or_else(|e| panic!("{k}={}: {e}", r(k)));
    let s = |k: &str| stats[k];
    // The tracker on b has exactly this connection, with the ISNs the client saw.
    assert_eq!(n("conns"), 1);
    assert_eq!(r("client"), client.to_string());
    assert_eq!(r("server"), server.to_string());
    assert_eq!(r("state"), "Established");
    assert_eq!(n("client_isn"), u64::from(client_isn));
    assert_eq!(n("server_isn"), u64::from(server_isn));
    // Every client byte the server acknowledged is held, unread, byte-exact.
    let client_stream = roles::exchange_client_stream(up);
    let client_total = client_stream.len() as u32;
    let server_total = ((roles::REQS + 1) * roles::MSG + down) as u32;
    assert_eq!(n("read_seq"), u64::from(client_isn.wrapping_add(1)));
    assert_eq!(n("rcv_nxt"), u64::from(client_isn.wrapping_add(1).wrapping_add(client_total)));
    assert_eq!(n("server_ack"), n("rcv_nxt"));
    assert_eq!(n("acked_unread_len"), u64::from(client_total));
    assert_eq!(r("acked_unread_b3"), blake3::hash(&client_stream).to_hex().as_str());
    // The client acknowledged everything the server sent.
    let server_end = u64::from(server_isn.wrapping_add(1).wrapping_add(server_total));
    assert_eq!(n("snd_nxt"), server_end);
    assert_eq!(n("snd_una"), server_end);
    assert_eq!(r("snapshot_ok"), "true");
    // Every segment tcpdump saw on a's svc0 was captured and forwarded once.
    assert_eq!((n("segments_in"), n("segments_out")), (seen_in, seen_out));
    assert_eq!((n("frames_in"), n("frames_out")), (s("packets_in"), s("packets_out")));
    assert_eq!((s("packets_in"), s("packets_out")), (seen_in, seen_out));
    assert_eq!(s("forwarded"), seen_in + seen_out);
    assert_eq!(s("accepted"), seen_in + seen_out);
    for k in ["missed", "restarts", "mismatches", "malformed", "ignored"] {
        assert_eq!(n(k), 0, "receiver {k}");
    }
    for k in ["not_forwarded", "truncated", "link_losses", "dropped", "overruns", "verdict_errors", "bad"] {
        assert_eq!(s(k), 0, "capture {k}");
    }
    assert!(s("gso") > 0, "bulk transfer produced no GSO super-segment: {stats:?}");
    assert!(s("bytes_in") > up as u64 && s("bytes_out") > down as u64);
}

#[test]
fn dead_capture_drops_packets_and_the_connection_survives() {
    let topo = Topo::up("capkill");
    topo.add_vip(Host::A);
    let dir = tempfile::tempdir().unwrap();
    let mut rx = Proc::role(
        &topo,
        Host::B,
        "receiver",
        &[("listen", format!("{REPL_B}:{LINK_PORT}")), ("services", vip_service()), ("mode", "until-eof".into())],
    );
    rx.expect("READY", T);
    let pcap_c = dir.path().join("client.pcap");
    let td_c = tcpdump(&topo, Host::Client, &pcap_c);
    let mut srv = Proc::role(&topo, Host::A, "server", &[("listen", vip_service()), ("mode", "echo".into())]);
    srv.expect("READY", T);
    let mut cap = start_capture(&topo);
    let mut cl = Proc::role(&topo, Host::Client, "client", &[("connect", vip_service()), ("mode", "echo".into())]);
    let client: SocketAddrV4 = cl.expect("CONNECTED", T).trim_start_matches("CONNECTED local=").parse().unwrap();
    cl.send("SEND 0");
    cl.send("RECV 0 5000");
    assert_eq!(cl.expect("GOT 0", T), "GOT 0");
    srv.expect("ECHO 0", T);

    // The capture dies: nothing removes its rules, nothing consumes the queue.
    cap.child.kill().unwrap();
    cap.child.wait().unwrap();
    let killed_at = now_secs();
    let rules = topo.stdout(Host::A, &["iptables", "-t", "mangle", "-S"]);
    assert!(rules.contains("FTNET-IN-q3") && !rules.contains("bypass"), "{rules}");
    cl.send("SEND 1");
    cl.expect("SENT 1", T);
    cl.send("RECV 1 1500");
    assert_eq!(cl.expect("", T), "NOREPLY 1", "a packet passed the dead queue");
    assert!(!srv.dump().contains("ECHO 1"), "the server got data while no consumer existed");

    // A new consumer: its rules replace the stale ones; the client's
    // retransmission gets through.
    let restarted_at = now_secs();
    let mut cap = start_capture(&topo);
    cl.send("RECV 1 15000");
    assert_eq!(cl.expect("", Duration::from_secs(20)), "GOT 1");
    cl.send("SEND 2");
    cl.send("RECV 2 5000");
    assert_eq!(cl.expect("GOT", T), "GOT 2");
    cap.close_stdin();
    let stats = parse_kv(&cap.expect("STATS", T));
    cap.wait_ok(T);
    assert!(!topo.stdout(Host::A, &["iptables", "-t", "mangle", "-S"]).contains("FTNET"));
    rx.close_stdin();
    let report = rx.report(T);
    rx.wait_ok(T);
    stop_tcpdump(td_c);
    eprintln!("capture: {stats:?}\nreport: {report:?}");
    assert!(!cl.dump().contains("ERROR"), "client: {}", cl.dump());

    let server = SocketAddrV4::new(VIP, PORT);
    let segs = read_pcap(&pcap_c);
    let resets: Vec<_> = segs.iter().filter(|s| s.flags & RST != 0).collect();
    assert!(resets.is_empty(), "resets reached the client: {resets:?}");
    // Nothing from the service while no consumer existed (20 ms margin
    // for segments already in flight at the kill).
    let leaked: Vec<_> =
        segs.iter().filter(|s| s.src == server && s.ts > killed_at + 0.02 && s.ts < restarted_at).collect();
    assert!(leaked.is_empty(), "segments left the primary with no consumer: {leaked:?}");
    // The client retransmitted request 1 (its first copy was dropped).
    let from_client = segs.iter().filter(|s| s.src == client).count();
    assert!(from_client >= 6, "{segs:?}");
    // The backup saw both captures and holds all three requests.
    let r = |k: &str| report[k].as_str();
    assert_eq!(r("connections"), "2");
    assert_eq!(r("restarts"), "1");
    assert_eq!(r("conns"), "1");
    assert_eq!(r("client"), client.to_string());
    let mut stream = Vec::new();
    for i in 0..3 {
        stream.extend_from_slice(&roles::request(i));
    }
    assert_eq!(r("acked_unread_len"), stream.len().to_string());
    assert_eq!(r("acked_unread_b3"), blake3::hash(&stream).to_hex().as_str());
    cl.close_stdin();
    cl.wait_ok(T);
    srv.wait_ok(T);
}

fn start_receiver(topo: &Topo) -> Proc {
    let args =
        [("listen", format!("{REPL_B}:{LINK_PORT}")), ("services", vip_service()), ("mode", "until-eof".to_string())];
    let p = Proc::role(topo, Host::B, "receiver", &args);
    p.expect("READY", T);
    p
}

/// The backup's receiver dies and comes back, under each policy: `accept`
/// keeps the service running unreplicated (counted), `drop` holds the
/// client back until the link returns. Frames after a reconnection show
/// the gap; the new receiver never saw the handshake, so it tracks nothing.
#[test]
fn link_loss_follows_the_unforwarded_policy() {
    let topo = Topo::up("caplink");
    topo.add_vip(Host::A);
    let mut rx = start_receiver(&topo);
    let mut srv = Proc::role(&topo, Host::A, "server", &[("listen", vip_service()), ("mode", "echo".into())]);
    srv.expect("READY", T);
    let mut cap = start_capture_with(&topo, "accept");
    rx.expect("CONN 1", T);
    let mut cl = Proc::role(&topo, Host::Client, "client", &[("connect", vip_service()), ("mode", "echo".into())]);
    cl.expect("CONNECTED", T);
    let echo = |cl: &mut Proc, i: usize, ms: u64| {
        cl.send(&format!("SEND {i}"));
        cl.expect(&format!("SENT {i}"), T);
        cl.send(&format!("RECV {i} {ms}"));
        cl.expect("", Duration::from_millis(ms) + T)
    };
    assert_eq!(echo(&mut cl, 0, 5000), "GOT 0");

    // Policy accept: the receiver dies, the service goes on.
    rx.child.kill().unwrap();
    rx.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(echo(&mut cl, 1, 5000), "GOT 1");
    let mut rx = start_receiver(&topo);
    rx.expect("CONN 1", T);
    assert_eq!(echo(&mut cl, 2, 5000), "GOT 2");
    cap.close_stdin();
    let stats = parse_kv(&cap.expect("STATS", T));
    cap.wait_ok(T);
    eprintln!("accept: {stats:?}");
    assert_eq!((stats["connects"], stats["link_losses"], stats["dropped"]), (2, 1, 0));
    assert!(stats["not_forwarded"] >= 2, "request 1 and its answer were not forwarded: {stats:?}");
    assert_eq!(stats["accepted"], stats["packets_in"] + stats["packets_out"]);

    // Policy drop: while the link is down the client gets nothing; once a
    // receiver is back its retransmission goes through.
    let mut cap = start_capture_with(&topo, "drop");
    rx.expect("CONN 2", T);
    assert_eq!(echo(&mut cl, 3, 5000), "GOT 3");
    rx.child.kill().unwrap();
    rx.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(echo(&mut cl, 4, 1500), "NOREPLY 4");
    assert!(!srv.dump().contains("ECHO 4"), "a dropped packet reached the server");
    let mut rx = start_receiver(&topo);
    rx.expect("CONN 1", T);
    cl.send("RECV 4 15000");
    assert_eq!(cl.expect("", Duration::from_secs(20)), "GOT 4");
    cap.close_stdin();
    let stats = parse_kv(&cap.expect("STATS", T));
    cap.wait_ok(T);
    eprintln!("drop: {stats:?}");
    assert_eq!((stats["connects"], stats["link_losses"]), (2, 1));
    assert!(stats["dropped"] >= 1 && stats["not_forwarded"] >= stats["dropped"], "{stats:?}");
    rx.close_stdin();
    let report = rx.report(T);
    rx.wait_ok(T);
    eprintln!("receiver: {report:?}");
    assert_eq!(report["conns"], "0", "a receiver that missed the handshake tracks nothing");
    assert_ne!(report["ignored"], "0");
    assert_ne!(report["missed"], "0", "the gap is visible");
    assert!(!cl.dump().contains("ERROR"), "client: {}", cl.dump());
    cl.close_stdin();
    cl.wait_ok(T);
    srv.wait_ok(T);
}

#[test]
fn rules_are_removed_after_stop_drop_and_unwinding() {
    let topo = Topo::up("caprules");
    topo.add_vip(Host::A);
    let mut p = Proc::role(&topo, Host::A, "rules", &[("vip", VIP.to_string())]);
    p.expect("RULES-OK", Duration::from_secs(60));
    p.wait_ok(T);
    let listing = topo.stdout(Host::A, &["iptables", "-t", "mangle", "-S"]);
    assert!(!listing.contains("FTNET"), "{listing}");
    assert!(!topo.stdout(Host::Client, &["iptables", "-t", "mangle", "-S"]).contains("FTNET"));
}

//! The processes `tests/capture.rs` runs inside the test namespaces, and the
//! benchmark's (`bench/capture/run.sh`) too.
//!
//! The test binary re-executes itself: `topo exec HOST -- <test binary>
//! --exact role_entry --nocapture` with `FTNET_CAPTURE_ROLE=<role>` and
//! `FTNET_CAPTURE_ARGS="k=v;k=v"` in the environment. `role_entry` is an
//! ordinary (trivially passing) test when the variable is absent. A role
//! talks to the test over stdout lines (`READY …`, `DONE …`, `STATS k=v …`,
//! `REPORT k=v`) and stops when its stdin reaches EOF (the test closes it).
//!
//! Roles: `capture` (ftnet's Capture on host a), `receiver` (Receiver on
//! host b), `server` and `client` (the service and its client: an
//! `exchange` of small requests plus a bidirectional bulk transfer, an
//! `echo` driven step by step, and the benchmark modes `bulk` / `rr`),
//! `rules` (rule installation checks inside a namespace).

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::str::FromStr;
use std::time::{Duration, Instant};

use ftnet::net::capture::{Capture, CaptureConfig, UnforwardedPolicy};
use ftnet::net::receiver::Receiver;
use ftnet::net::rules::{self, Rules, RulesConfig};
use ftnet::net::verdict::VerdictMode;

pub const ROLE_ENV: &str = "FTNET_CAPTURE_ROLE";
pub const ARGS_ENV: &str = "FTNET_CAPTURE_ARGS";

/// Size of each request and response of the exchange and echo protocols.
pub const MSG: usize = 32;
/// Requests before the bulk phase of the exchange.
pub const REQS: usize = 20;

/// Deterministic bytes for `seed` (xorshift64*).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Request `i` of the exchange / echo protocols.
pub fn request(i: usize) -> [u8; MSG] {
    let mut m = [b'.'; MSG];
    let s = format!("req {i:06} from the client");
    m[..s.len()].copy_from_slice(s.as_bytes());
    m
}

/// Response `i`.
pub fn response(i: usize) -> [u8; MSG] {
    let mut m = [b'-'; MSG];
    let s = format!("resp {i:06} from the server");
    m[..s.len()].copy_from_slice(s.as_bytes());
    m
}

/// Every byte the client sends in an exchange with `up` bulk bytes.
pub fn exchange_client_stream(up: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..REQS {
        v.extend_from_slice(&request(i));
    }
    v.extend(pattern(1, up));
    v.extend_from_slice(&request(REQS));
    v
}

/// Parsed `FTNET_CAPTURE_ARGS`.
pub struct Args(HashMap<String, String>);

impl Args {
    fn from_env() -> Args {
        let raw = std::env::var(ARGS_ENV).unwrap_or_default();
        Args(
            raw.split(';')
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn str(&self, k: &str) -> &str {
        self.0.get(k).unwrap_or_else(|| panic!("role argument {k} missing"))
    }

    fn opt(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn get<T: FromStr>(&self, k: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        self.str(k).parse().unwrap_or_else(|e| panic!("role argument {k}={}: {e:?}", self.str(k)))
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

fn wait_stdin_eof() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

/// Runs the role named by `FTNET_CAPTURE_ROLE`, if set; returns false if not.
pub fn run_from_env() -> bool {
    let Ok(role) = std::env::var(ROLE_ENV) else { return false };
    let args = Args::from_env();
    match role.as_str() {
        "capture" => capture(&args),
        "receiver" => receiver(&args),
        "server" => server(&args),
        "client" => client(&args),
        "rules" => rules_checks(&args),
        other => panic!("unknown role {other}"),
    }
    true
}

fn capture_config(a: &Args) -> CaptureConfig {
    let ports = a.str("ports").split(',').map(|p| p.parse().unwrap()).collect();
    let mut c = CaptureConfig::new(a.get("queue"), a.get("vip"), ports, a.get("forward"));
    if a.opt("policy") == Some("drop") {
        c.unforwarded = UnforwardedPolicy::Drop;
    }
    if a.opt("verdicts") == Some("single") {
        c.verdicts = VerdictMode::PerPacket;
    }
    if a.opt("gso") == Some("off") {
        c.gso = false;
    }
    c
}

/// Runs a capture until stdin closes, then prints its counters.
fn capture(a: &Args) {
    let cap = Capture::start(capture_config(a)).unwrap_or_else(|e| panic!("Capture::start: {e}"));
    say("READY capture");
    wait_stdin_eof();
    let kernel = cap.kernel_queue_stats().ok().flatten();
    let s = cap.stop().unwrap_or_else(|e| panic!("Capture::stop: {e}"));
    let k = kernel.map_or((0, 0), |k| (k.queue_dropped, k.user_dropped));
    say(&format!(
        "STATS packets_in={} packets_out={} bytes_in={} bytes_out={} gso={} forwarded={} not_forwarded={} \
         truncated={} link_losses={} connects={} accepted={} dropped={} overruns={} verdict_errors={} bad={} \
         queue_dropped={} user_dropped={}",
        s.packets_in,
        s.packets_out,
        s.bytes_in,
        s.bytes_out,
        s.gso_packets,
        s.forwarded,
        s.not_forwarded,
        s.truncated,
        s.link_losses,
        s.connects,
        s.accepted,
        s.dropped,
        s.overruns,
        s.verdict_errors,
        s.bad_datagrams,
        k.0,
        k.1
    ));
}

/// Feeds a tracker from the primary's frames; `mode=one` serves one
/// connection, otherwise connections until stdin closes. Then prints the
/// tracker's view of its only connection as `REPORT k=v` lines.
fn receiver(a: &Args) {
    let listen: SocketAddr = a.get("listen");
    let services: Vec<SocketAddrV4> = a.str("services").split(',').map(|s| s.parse().unwrap()).collect();
    let rx = Receiver::listen(listen, &services).unwrap_or_else(|e| panic!("{e}"));
    say(&format!("READY {}", rx.local_addr()));
    let (tracker, stats) = if a.opt("mode") == Some("one") {
        rx.serve_one().unwrap_or_else(|e| panic!("serve_one: {e}"));
        (rx.tracker(), rx.stats())
    } else {
        let h = rx.spawn().unwrap();
        let (eof_tx, eof) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            wait_stdin_eof();
            let _ = eof_tx.send(());
        });
        // Announce each primary connection as it is accepted.
        let mut seen = 0;
        while eof.recv_timeout(Duration::from_millis(10)).is_err() {
            let n = h.stats().connections;
            if n > seen {
                seen = n;
                say(&format!("CONN {n}"));
            }
        }
        let t = h.tracker();
        (t, h.stop().unwrap_or_else(|e| panic!("receiver: {e}")))
    };
    let t = tracker.lock().unwrap();
    let r = |k: &str, v: String| say(&format!("REPORT {k}={v}"));
    r("conns", t.len().to_string());
    r("frames_in", stats.frames_in.to_string());
    r("frames_out", stats.frames_out.to_string());
    r("tracked", stats.tracked.to_string());
    r("ignored", stats.ignored.to_string());
    r("malformed", stats.malformed_packets.to_string());
    r("mismatches", stats.direction_mismatches.to_string());
    r("missed", stats.missed.to_string());
    r("restarts", stats.restarts.to_string());
    r("connections", stats.connections.to_string());
    if let Some(c) = t.iter().next() {
        let opt = |s: Option<ftnet::tcpstate::SeqNum>| s.map_or("none".into(), |s| s.0.to_string());
        r("client", c.tuple().client.to_string());
        r("server", c.tuple().server.to_string());
        r("state", format!("{:?}", c.state()));
        r("client_isn", c.client_isn().0.to_string());
        r("server_isn", opt(c.server_isn()));
        r("read_seq", c.read_seq().0.to_string());
        r("rcv_nxt", c.rcv_nxt().0.to_string());
        r("server_ack", opt(c.server_ack()));
        r("snd_una", opt(c.snd_una()));
        r("snd_nxt", opt(c.snd_nxt()));
        match c.client_acked_unread() {
            Ok(b) => {
                r("acked_unread_len", b.len().to_string());
                r("acked_unread_b3", blake3::hash(b).to_hex().to_string());
            }
            Err(e) => r("acked_unread_error", format!("{e:?}").replace(' ', "_")),
        }
        r("segments_in", c.stats().segments_in.to_string());
        r("segments_out", c.stats().segments_out.to_string());
        r("snapshot_ok", c.snapshot().is_ok().to_string());
    }
    say("END");
}

fn read_msg(s: &mut TcpStream) -> Option<[u8; MSG]> {
    let mut m = [0u8; MSG];
    s.read_exact(&mut m).ok().map(|()| m)
}

/// Copies `len` bytes of `data` to `s` in 64 KiB writes.
fn send_all(s: &mut TcpStream, data: &[u8]) {
    for chunk in data.chunks(64 << 10) {
        s.write_all(chunk).unwrap();
    }
}

/// Reads exactly `len` bytes and returns their BLAKE3.
fn recv_digest(s: &mut TcpStream, len: usize) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut left = len;
    while left > 0 {
        let n = s.read(&mut buf[..left.min(64 << 10)]).unwrap();
        assert!(n > 0, "peer closed with {left} bytes to go");
        h.update(&buf[..n]);
        left -= n;
    }
    h.finalize()
}

fn server(a: &Args) {
    let listen: SocketAddr = a.get("listen");
    let l = TcpListener::bind(listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
    say("READY server");
    match a.str("mode") {
        "exchange" => {
            let (mut s, _) = l.accept().unwrap();
            let (up, down): (usize, usize) = (a.get("up"), a.get("down"));
            for i in 0..REQS {
                assert_eq!(read_msg(&mut s), Some(request(i)));
                s.write_all(&response(i)).unwrap();
            }
            let mut w = s.try_clone().unwrap();
            let sender = std::thread::spawn(move || send_all(&mut w, &pattern(2, down)));
            let got = recv_digest(&mut s, up);
            sender.join().unwrap();
            assert_eq!(got, blake3::hash(&pattern(1, up)), "client bulk bytes differ");
            assert_eq!(read_msg(&mut s), Some(request(REQS)));
            s.write_all(&response(REQS)).unwrap();
            say("SERVED");
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        }
        "echo" => {
            let (mut s, _) = l.accept().unwrap();
            let mut i = 0;
            while let Some(m) = read_msg(&mut s) {
                assert_eq!(m, request(i));
                say(&format!("ECHO {i}"));
                s.write_all(&response(i)).unwrap();
                i += 1;
            }
        }
        // Benchmark: each connection starts with one byte: 'U' the client
        // uploads until it closes, 'D' we send until it closes, 'R'
        // request/response of MSG bytes.
        "bench" => {
            for conn in l.incoming() {
                let Ok(mut s) = conn else { continue };
                std::thread::spawn(move || {
                    let _ = s.set_nodelay(true);
                    let mut mode = [0u8];
                    if s.read_exact(&mut mode).is_err() {
                        return;
                    }
                    let mut buf = vec![0u8; 256 << 10];
                    match mode[0] {
                        b'U' => while s.read(&mut buf).is_ok_and(|n| n > 0) {},
                        b'D' => while s.write_all(&buf).is_ok() {},
                        _ => {
                            let mut m = [0u8; MSG];
                            while s.read_exact(&mut m).is_ok() && s.write_all(&m).is_ok() {}
                        }
                    }
                });
            }
        }
        m => panic!("server mode {m}"),
    }
}

fn client(a: &Args) {
    let to: SocketAddr = a.get("connect");
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect {to}: {e}"));
    match a.str("mode") {
        "exchange" => {
            let (up, down): (usize, usize) = (a.get("up"), a.get("down"));
            for i in 0..REQS {
                s.write_all(&request(i)).unwrap();
                assert_eq!(read_msg(&mut s), Some(response(i)));
            }
            let mut w = s.try_clone().unwrap();
            let sender = std::thread::spawn(move || send_all(&mut w, &pattern(1, up)));
            let got = recv_digest(&mut s, down);
            sender.join().unwrap();
            assert_eq!(got, blake3::hash(&pattern(2, down)), "server bulk bytes differ");
            s.write_all(&request(REQS)).unwrap();
            assert_eq!(read_msg(&mut s), Some(response(REQS)));
            say(&format!("DONE local={}", s.local_addr().unwrap()));
            wait_stdin_eof();
        }
        "echo" => echo_client(s),
        "bulk" => {
            let secs: f64 = a.get("secs");
            let dir = a.str("dir");
            s.write_all(if dir == "up" { b"U" } else { b"D" }).unwrap();
            let mut buf = vec![0u8; 256 << 10];
            let start = Instant::now();
            let mut total = 0u64;
            while start.elapsed().as_secs_f64() < secs {
                let n = if dir == "up" { s.write(&buf).unwrap() } else { s.read(&mut buf).unwrap() };
                total += n as u64;
            }
            let gbit = total as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9;
            let _ = s.shutdown(Shutdown::Both);
            say(&format!("RESULT gbit={gbit:.3} bytes={total}"));
        }
        "rr" => {
            let n: usize = a.get("count");
            s.set_nodelay(true).unwrap();
            s.write_all(b"R").unwrap();
            let mut lat = Vec::with_capacity(n);
            let m = request(0);
            for _ in 0..n {
                let t = Instant::now();
                s.write_all(&m).unwrap();
                assert_eq!(read_msg(&mut s), Some(m));
                lat.push(t.elapsed().as_nanos() as u64);
            }
            lat.sort_unstable();
            let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
            say(&format!("RESULT p50_us={:.1} p90_us={:.1} p99_us={:.1}", p(0.5), p(0.9), p(0.99)));
        }
        m => panic!("client mode {m}"),
    }
}

/// Step-by-step echo client: stdin lines `SEND i` and `RECV i TIMEOUT_MS`;
/// prints `SENT i`, `GOT i` or `NOREPLY i`, and `ERROR …` if the connection
/// fails (it must not). A reply that times out is kept waiting for.
fn echo_client(mut s: TcpStream) {
    say(&format!("CONNECTED local={}", s.local_addr().unwrap()));
    let mut partial = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["SEND", i] => {
                let i: usize = i.parse().unwrap();
                match s.write_all(&request(i)) {
                    Ok(()) => say(&format!("SENT {i}")),
                    Err(e) => say(&format!("ERROR send {i}: {e}")),
                }
            }
            ["RECV", i, ms] => {
                let (i, ms): (usize, u64) = (i.parse().unwrap(), ms.parse().unwrap());
                let deadline = Instant::now() + Duration::from_millis(ms);
                let mut buf = [0u8; MSG];
                let outcome = loop {
                    if partial.len() >= MSG {
                        let m: Vec<u8> = partial.drain(..MSG).collect();
                        break if m == response(i) { format!("GOT {i}") } else { format!("ERROR wrong reply {i}") };
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break format!("NOREPLY {i}");
                    }
                    s.set_read_timeout(Some(left)).unwrap();
                    match s.read(&mut buf) {
                        Ok(0) => break format!("ERROR closed waiting for {i}"),
                        Ok(n) => partial.extend_from_slice(&buf[..n]),
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        }
                        Err(e) => break format!("ERROR recv {i}: {e}"),
                    }
                };
                say(&outcome);
            }
            _ => say(&format!("ERROR bad command {line}")),
        }
    }
}

/// Rule installation checks, run inside host a (asserts; exits non-zero on
/// failure). Ports 7000 and 7001 on queue 9.
fn rules_checks(a: &Args) {
    let vip: Ipv4Addr = a.get("vip");
    let cfg = RulesConfig { iptables: "iptables".into(), queue: 9, vip, ports: vec![7000, 7001] };
    let count = || rules::installed("iptables", 9).unwrap().len();
    // 2 chains + 2 jumps + 2 × 2 NFQUEUE rules.
    let full = 8;
    assert_eq!(count(), 0, "no rules at the start");

    let r = Rules::install(cfg.clone()).unwrap();
    assert_eq!(count(), full);
    let listing = rules::listing("iptables").unwrap();
    assert!(!listing.contains("bypass"), "{listing}");
    assert!(listing.contains("-A INPUT -d 10.77.0.100/32 -p tcp -j FTNET-IN-q9"), "{listing}");
    assert!(listing.contains("-A POSTROUTING -s 10.77.0.100/32 -p tcp -j FTNET-OUT-q9"), "{listing}");
    // A process that dies without cleaning up: the next install replaces
    // its rules instead of adding to them.
    std::mem::forget(r);
    assert_eq!(count(), full);
    let r = Rules::install(cfg.clone()).unwrap();
    assert_eq!(count(), full, "reinstalling over leftovers does not duplicate");
    r.remove().unwrap();
    assert_eq!(count(), 0, "removed by remove()");

    let r = Rules::install(cfg.clone()).unwrap();
    drop(r);
    assert_eq!(count(), 0, "removed by drop");

    let c2 = cfg.clone();
    let unwound = std::panic::catch_unwind(move || {
        let _r = Rules::install(c2).unwrap();
        panic!("crash while the rules are installed");
    });
    assert!(unwound.is_err());
    assert_eq!(count(), 0, "removed while unwinding");

    // The same through Capture (forwarding to a receiver on loopback).
    let rx = Receiver::listen("127.0.0.1:0".parse().unwrap(), &[SocketAddrV4::new(vip, 7000)]).unwrap();
    let to = rx.local_addr();
    let h = rx.spawn().unwrap();
    let cc = || CaptureConfig::new(9, vip, vec![7000, 7001], to);
    let cap = Capture::start(cc()).unwrap();
    assert_eq!(count(), full);
    assert!(cap.is_running() && cap.link_up());
    cap.stop().unwrap();
    assert_eq!(count(), 0, "removed by Capture::stop");
    drop(Capture::start(cc()).unwrap());
    assert_eq!(count(), 0, "removed by dropping a Capture");
    let unwound = std::panic::catch_unwind(move || {
        let _c = Capture::start(cc()).unwrap();
        panic!("crash while capturing");
    });
    assert!(unwound.is_err());
    assert_eq!(count(), 0, "removed while unwinding a Capture");
    // A failed start (nobody listening) leaves nothing behind either.
    let refused = CaptureConfig::new(9, vip, vec![7000], "127.0.0.1:1".parse().unwrap());
    assert!(Capture::start(refused).is_err());
    assert_eq!(count(), 0);
    h.stop().unwrap();
    say("RULES-OK");
}

//! Never two primaries: the pair with a witness (an `ftnet witness` on host
//! w, or etcd) under link cuts, witness death and node death, with a redis
//! client counting (INCR) and a client-side capture of everything sent from
//! the VIP. Each test builds its own topology (removed even on failure);
//! timings are reported, not asserted. Needs root, redis-server, etcd,
//! tcpdump, python3.

#[path = "support/ftnet.rs"]
mod cli;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/pair.rs"]
mod pair;

use netns::{Host, Link, VIP};
use pair::*;
use std::time::Duration;

/// A redis client on one connection: pipelined INCR + SET in batches of 10
/// until `secs` pass, waiting as long as it takes for each reply (a cut may
/// stall it); then GETs back every acknowledged SET if the server answers.
/// Prints one JSON line.
const COUNTER: &str = r#"
import json, socket, sys, time
host, secs = sys.argv[1], float(sys.argv[2])
s = socket.create_connection((host, 6379), timeout=5)
s.settimeout(0.5)
buf = b""
def cmd(*a):
    return b"*%d\r\n" % len(a) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in a)
def readline(deadline):
    global buf
    while b"\r\n" not in buf:
        if time.time() > deadline: return None
        try:
            d = s.recv(65536)
        except socket.timeout:
            continue
        if not d: return None
        buf += d
    line, buf = buf.split(b"\r\n", 1)
    return line
end = time.time() + secs
last = None; acked = {}; gaps = repeats = errors = 0; n = 0; max_wait = 0.0; last_reply = time.time(); done = False
while time.time() < end and not done:
    batch = []
    for _ in range(10):
        n += 1
        batch.append(cmd(b"INCR", b"counter")); batch.append(cmd(b"SET", b"k%d" % n, b"v%d" % n))
    try:
        s.sendall(b"".join(batch))
    except OSError:
        errors += 1; break
    for j in range(10):
        line = readline(end + 20)
        if line is None: done = True; break
        now = time.time(); max_wait = max(max_wait, now - last_reply); last_reply = now
        if not line.startswith(b":"): errors += 1; continue
        v = int(line[1:])
        if last is not None and v != last + 1:
            if v <= last: repeats += 1
            else: gaps += 1
        last = v
        ok = readline(end + 20)
        if ok is None: done = True; break
        if ok == b"+OK": acked[b"k%d" % (n - 9 + j)] = b"v%d" % (n - 9 + j)
        else: errors += 1
    time.sleep(0.005)
lost = None
if not done:
    lost = 0
    for k, v in acked.items():
        s.sendall(cmd(b"GET", k)); readline(time.time() + 5); got = readline(time.time() + 5)
        if got != v: lost += 1
print(json.dumps({"counter": last, "acked": len(acked), "gaps": gaps, "repeats": repeats, "lost": lost,
                  "errors": errors, "stalled_to_the_end": done, "max_wait_ms": int(max_wait * 1000)}), flush=True)
"#;

fn start_counter(p: &mut Pair, secs: u32) -> (usize, std::path::PathBuf) {
    let script = p.path("counter.py");
    std::fs::write(&script, COUNTER).expect("script");
    let out = p.path("counter.out");
    let i = p.client_bg(&["python3", script.to_str().expect("utf8"), &VIP.to_string(), &secs.to_string()], &out);
    (i, out)
}

fn counter_result(p: &mut Pair, i: usize, out: &std::path::Path) -> serde_json::Value {
    assert_eq!(p.wait_bg(i, Duration::from_secs(90)), Some(0), "{}", std::fs::read_to_string(out).unwrap_or_default());
    let s = std::fs::read_to_string(out).expect("counter output");
    let v: serde_json::Value = serde_json::from_str(s.lines().last().unwrap_or("")).expect("counter json");
    eprintln!("counter: {v}");
    v
}

/// The counter the client saw acknowledged has no gap or repeat, and (when
/// the service answered at the end) every acknowledged SET reads back.
fn assert_consistent(v: &serde_json::Value) {
    assert_eq!(v["gaps"], 0, "{v}");
    assert_eq!(v["repeats"], 0, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    if !v["lost"].is_null() {
        assert_eq!(v["lost"], 0, "{v}");
    }
    assert!(v["acked"].as_u64().unwrap_or(0) > 0, "the client got answers: {v}");
}

/// At most one node served the VIP at any moment: once b has sent from the
/// VIP, a never does again (and a never follows b back). Returns who sent.
fn assert_one_server(p: &Pair, pcap: &std::path::Path) -> Vec<String> {
    std::thread::sleep(Duration::from_millis(300));
    let senders = p.vip_senders(pcap);
    let mut order: Vec<String> = vec![];
    for (_, who) in &senders {
        assert!(who == "a" || who == "b", "an unknown host sent from the VIP: {who}");
        if order.last() != Some(who) {
            order.push(who.clone());
        }
    }
    assert!(order.len() <= 2 && order.first().is_none_or(|f| f == "a"), "both answered for the VIP: {order:?}");
    order
}

fn has_vip(p: &Pair, host: Host) -> bool {
    p.topo.stdout(host, &["ip", "-4", "addr", "show", "svc0"]).contains(&format!("{VIP}/"))
}

fn lease(p: &Pair, host: Host) -> serde_json::Value {
    p.status(host)["lease"].clone()
}

fn cut_replication_link_only(guard: Guard, prefix: &str) {
    let mut p = Pair::guarded(prefix, Server::Redis, guard, 0, None);
    p.up();
    let e0 = lease(&p, Host::A)["epoch"].as_u64().expect("a holds the lease");
    let pcap = p.capture();
    let (i, out) = start_counter(&mut p, 8);
    std::thread::sleep(Duration::from_secs(2));
    p.topo.cut(Link::Repl);
    // Heartbeats on the service network still pass: b sees a alive.
    let st = p.wait_state(Host::A, "alone", Duration::from_secs(15));
    let e1 = st["lease"]["epoch"].as_u64().expect("epoch");
    assert!(e1 > e0 && st["lease"]["held"] == true, "a went on alone only with the lease at a newer epoch: {st}");
    let b = p.wait_state(Host::B, "stale: the primary went on without this backup", Duration::from_secs(10));
    assert!(!has_vip(&p, Host::B), "b never took the VIP: {b}");
    let v = counter_result(&mut p, i, &out);
    assert_consistent(&v);
    assert_eq!(v["stalled_to_the_end"], false, "the client was served again: {v}");
    assert_eq!(assert_one_server(&p, &pcap), ["a"]);
    eprintln!("client's longest wait {} ms (the cut, then the lease's new epoch)", v["max_wait_ms"]);
}

#[test]
fn cutting_only_the_replication_link_never_promotes_and_a_goes_on_with_the_lease() {
    cut_replication_link_only(Guard::Witness, "wr");
}

#[test]
fn etcd_cutting_only_the_replication_link_never_promotes_and_a_goes_on_with_the_lease() {
    cut_replication_link_only(Guard::Etcd, "er");
}

#[test]
fn a_cut_off_from_everything_b_takes_over_and_a_never_answers_again() {
    let mut p = Pair::guarded("wa", Server::Redis, Guard::Witness, 0, None);
    p.up();
    let pcap = p.capture();
    let (i, out) = start_counter(&mut p, 10);
    std::thread::sleep(Duration::from_secs(2));
    // Every path between a and b, and a's way to the witness and clients.
    p.topo.cut(Link::Repl);
    p.topo.cut(Link::ASvc);
    let st = p.wait_state(Host::B, "live", Duration::from_secs(15));
    assert!(st["lease"]["held"] == true, "b promoted holding the lease: {st}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(!has_vip(&p, Host::A), "a gave up the VIP once its lease lapsed without a backup");
    p.topo.heal(Link::ASvc);
    p.topo.heal(Link::Repl);
    // Healed, a hears b's newer epoch (or the witness refuses it) and stops.
    assert_eq!(p.wait_exit(Host::A, Duration::from_secs(10)), Some(1), "{}", p.log(Host::A));
    let v = counter_result(&mut p, i, &out);
    assert_consistent(&v);
    assert_eq!(assert_one_server(&p, &pcap), ["a", "b"]);
    eprintln!("client's longest wait {} ms (detection, a's lease lapsing, takeover)", v["max_wait_ms"]);
}

#[test]
fn a_cut_off_from_its_clients_hands_the_service_to_b() {
    let mut p = Pair::guarded("wc", Server::Redis, Guard::Witness, 0, None);
    p.up();
    let e0 = lease(&p, Host::A)["epoch"].as_u64().expect("a holds the lease");
    let pcap = p.capture();
    let (i, out) = start_counter(&mut p, 10);
    std::thread::sleep(Duration::from_secs(2));
    // a loses the service network (clients, witness, b's service
    // heartbeats); the replication link still carries everything.
    p.topo.cut(Link::ASvc);
    let st = p.wait_state(Host::B, "live", Duration::from_secs(15));
    assert!(st["lease"]["epoch"].as_u64().unwrap_or(0) > e0 && st["lease"]["held"] == true, "{st}");
    // a waits up to 10 s for b to acknowledge the fence position; b stops
    // acknowledging once it decides, so under load a may wait all of it.
    assert_eq!(p.wait_exit(Host::A, Duration::from_secs(20)), Some(0), "{}", p.log(Host::A));
    assert!(p.log(Host::A).contains("handing the service over to the backup"), "{}", p.log(Host::A));
    let v = counter_result(&mut p, i, &out);
    assert_consistent(&v);
    assert_eq!(v["stalled_to_the_end"], false, "b served the client: {v}");
    assert_eq!(assert_one_server(&p, &pcap), ["a", "b"]);
    eprintln!("client's longest wait {} ms (a's lease lapsing, the hold, the switchover)", v["max_wait_ms"]);
}

#[test]
fn a_primary_restarted_at_once_does_not_cut_off_its_backup() {
    let mut p = Pair::guarded("wn", Server::Redis, Guard::Witness, 0, None);
    p.up();
    let e0 = lease(&p, Host::A)["epoch"].as_u64().expect("a holds the lease");
    let (i, out) = start_counter(&mut p, 8);
    std::thread::sleep(Duration::from_secs(2));
    // ftnet on a dies with its replica and is started again at once: its
    // new, empty history must not win over b's complete log of epoch e0.
    p.restart(Host::A, "primary");
    let st = p.wait_state(Host::B, "live", Duration::from_secs(15));
    assert!(st["lease"]["epoch"].as_u64().unwrap_or(0) > e0, "b took over the history: {st}");
    std::thread::sleep(Duration::from_secs(1));
    let a = p.status(Host::A);
    assert_eq!(a["state"], "acquiring the lease to start", "the restarted a waits: {a}");
    assert!(a["lease"]["last_denial"].as_str().unwrap_or("").contains("held by b"), "{a}");
    let v = counter_result(&mut p, i, &out);
    assert_consistent(&v);
    assert_eq!(v["stalled_to_the_end"], false, "b served the client: {v}");
    eprintln!("client's longest wait {} ms", v["max_wait_ms"]);
}

#[test]
fn b_cut_off_from_everything_never_promotes_and_a_goes_on_alone() {
    let mut p = Pair::guarded("wb", Server::Redis, Guard::Witness, 0, None);
    p.up();
    let pcap = p.capture();
    let (i, out) = start_counter(&mut p, 8);
    std::thread::sleep(Duration::from_secs(2));
    p.topo.cut(Link::Repl);
    p.topo.cut(Link::BSvc);
    p.wait_state(Host::A, "alone", Duration::from_secs(15));
    // b decided a was dead but the witness keeps refusing it.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!has_vip(&p, Host::B));
    p.topo.heal(Link::BSvc);
    p.topo.heal(Link::Repl);
    let st = p.wait_state(Host::B, "stale: the primary went on without this backup", Duration::from_secs(10));
    assert!(!has_vip(&p, Host::B), "{st}");
    let v = counter_result(&mut p, i, &out);
    assert_consistent(&v);
    assert_eq!(assert_one_server(&p, &pcap), ["a"]);
}

#[test]
fn without_the_witness_the_pair_runs_on_and_a_failover_waits_for_it() {
    let mut p = Pair::guarded("ww", Server::Redis, Guard::Witness, 0, None);
    p.up();
    let (i, out) = start_counter(&mut p, 12);
    std::thread::sleep(Duration::from_secs(1));
    p.kill_witness();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(p.status(Host::A)["state"], "replicating", "the pair runs on without its witness");
    p.topo.kill(Host::A);
    std::thread::sleep(Duration::from_secs(2));
    let st = p.status(Host::B);
    assert_eq!(st["state"], "promoting: waiting for the witness's lease", "no failover without the witness: {st}");
    assert!(!has_vip(&p, Host::B));
    p.start_witness();
    let st = p.wait_state(Host::B, "live", Duration::from_secs(15));
    eprintln!("b promoted once the witness was back: lease {}", st["lease"]);
    let v = counter_result(&mut p, i, &out);
    assert_consistent(&v);
}

fn kill_the_primary(guard: Guard, prefix: &str) {
    let mut p = Pair::guarded(prefix, Server::Redis, guard, 0, None);
    p.up();
    let e0 = lease(&p, Host::A)["epoch"].as_u64().expect("epoch");
    let pcap = p.capture();
    let (i, out) = start_counter(&mut p, 8);
    std::thread::sleep(Duration::from_secs(2));
    p.topo.kill(Host::A);
    let st = p.wait_state(Host::B, "live", Duration::from_secs(20));
    let e1 = st["lease"]["epoch"].as_u64().unwrap_or(0);
    assert!(e1 > e0, "b holds the lease at a newer epoch: {st}");
    // What an operator reads: who holds the lease, at which epoch, until when.
    let text = p.status_text(Host::B);
    let witness = match guard {
        Guard::Etcd => format!("etcd at http://{}:2379", netns::WITNESS),
        _ => format!("ftnet witness at {}:7800", netns::WITNESS),
    };
    assert!(text.contains(&format!("lease from {witness}: held at epoch {e1} (holder b, valid for ")), "{text}");
    let v = counter_result(&mut p, i, &out);
    assert_consistent(&v);
    assert_eq!(assert_one_server(&p, &pcap), ["a", "b"]);
    eprintln!(
        "client's longest wait {} ms (detect {} ms, takeover {} ms, plus the lease)",
        v["max_wait_ms"], st["detect_ms"], st["takeover_ms"]
    );
}

#[test]
fn killing_the_primary_fails_over_with_the_lease() {
    kill_the_primary(Guard::Witness, "wk");
}

#[test]
fn etcd_killing_the_primary_fails_over_with_the_lease() {
    kill_the_primary(Guard::Etcd, "ek");
}

#[test]
fn killing_the_backup_the_primary_takes_the_lease_and_goes_on_alone() {
    let mut p = Pair::guarded("wd", Server::Redis, Guard::Witness, 0, None);
    // A fence left on a by an earlier run (a node that lost its lease) must
    // not silence this one.
    let fence = "add table ip ftnet_fence
add chain ip ftnet_fence output { type filter hook output priority -10; policy accept; }
add rule ip ftnet_fence output ip saddr 10.77.0.100 meta l4proto tcp drop";
    p.topo.run(Host::A, &["nft", fence]);
    p.up();
    assert!(!p.topo.stdout(Host::A, &["nft", "list", "tables"]).contains("ftnet_fence"), "the old fence was lifted");
    let (i, out) = start_counter(&mut p, 8);
    std::thread::sleep(Duration::from_secs(2));
    p.topo.kill(Host::B);
    let st = p.wait_state(Host::A, "alone", Duration::from_secs(15));
    assert!(st["lease"]["held"] == true, "{st}");
    let v = counter_result(&mut p, i, &out);
    assert_consistent(&v);
    eprintln!("the client's stall when the backup died: {} ms", v["max_wait_ms"]);
}

/// A PING answered (the server serves; prints `ready`), then one byte every
/// 20 ms on the same connection for 3 s (no newline, so redis never
/// answers; only the server's kernel ACKs).
const TRICKLE: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], 6379), timeout=2)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.sendall(b"PING\r\n")
assert s.recv(64) == b"+PONG\r\n"
print("ready", flush=True)
end = time.time() + 3
sent = 0
while time.time() < end:
    try:
        s.send(b"x")
    except OSError:
        break
    sent += 1
    time.sleep(0.02)
print("sent", sent, flush=True)
"#;

/// A promoted node has no output commit; its lease is also held by the
/// kernel (an nft set element that times out). When all of its processes
/// stall (frozen here; its kernel alive and ACKing what a client sends), it
/// must fall silent when the lease runs out, not when its main loop next
/// runs — after that the witness may hand the service to someone else.
#[test]
fn a_promoted_node_frozen_falls_silent_when_its_lease_runs_out() {
    let mut p = Pair::guarded("wz", Server::Redis, Guard::Witness, 0, None);
    p.up();
    p.topo.kill(Host::A);
    p.wait_state(Host::B, "live", Duration::from_secs(20));
    let gate = p.topo.stdout(Host::B, &["nft", "list", "table", "ip", "ftnet_fence"]);
    assert!(gate.contains("ip saddr != @lease drop") && gate.contains(&format!("{VIP} timeout")), "{gate}");
    let pcap = p.capture();
    let out = p.path("trickle.out");
    let i = p.client_bg(&["python3", "-c", TRICKLE, &VIP.to_string()], &out);
    p.wait_printed(&out, "ready", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    let frozen_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
    p.topo.freeze(Host::B);
    assert_eq!(p.wait_bg(i, Duration::from_secs(15)), Some(0), "{}", std::fs::read_to_string(&out).unwrap_or_default());
    std::thread::sleep(Duration::from_millis(300));
    let o = std::process::Command::new("tcpdump")
        .args(["-tt", "-n", "-r", pcap.to_str().expect("utf8"), &format!("src host {VIP} and tcp")])
        .stderr(std::process::Stdio::null())
        .output()
        .expect("tcpdump -r");
    // Times relative to the freeze, ms.
    let sent: Vec<f64> = text(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .map(|t| (t - frozen_at) * 1e3)
        .collect();
    let after: Vec<f64> = sent.iter().copied().filter(|t| *t > 0.0).collect();
    eprintln!("segments from the VIP after the freeze, ms: {after:.0?}");
    // The capture saw b speak right up to the freeze (PONG, ACKs of the
    // trickle), so silence after it is b's, not the capture's.
    assert!(sent.iter().any(|t| (-250.0..=0.0).contains(t)), "nothing from the VIP just before the freeze: {sent:.0?}");
    let last = after.iter().cloned().fold(0.0, f64::max);
    assert!(
        last < (LEASE_MS + 100) as f64,
        "b's kernel still spoke {last:.0} ms after its processes froze (lease {LEASE_MS} ms): {after:.0?}"
    );
}

/// One trial of the partition campaign: a fresh pair under the counter, one
/// random single-link cut at a random moment, healed after a random time or
/// never. Whatever happens to availability, the counter the client saw has
/// no gap or repeat and at most one node ever served the VIP.
fn trial(n: u64) {
    let mut rng = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m
    };
    let link = [Link::Repl, Link::ASvc, Link::BSvc, Link::WSvc][next(4) as usize];
    let cut_at = Duration::from_millis(1000 + next(1500));
    let heal_after = (next(2) == 0).then(|| Duration::from_millis(300 + next(2500)));
    eprintln!("trial {n}: cut {link:?} at {cut_at:?}, heal after {heal_after:?}");
    let mut p = Pair::guarded(&format!("pc{n}"), Server::Redis, Guard::Witness, 0, None);
    p.up();
    let pcap = p.capture();
    let (i, out) = start_counter(&mut p, 6);
    std::thread::sleep(cut_at);
    p.topo.cut(link);
    if let Some(h) = heal_after {
        std::thread::sleep(h);
        p.topo.heal(link);
    }
    let v = counter_result(&mut p, i, &out);
    assert_consistent(&v);
    let order = assert_one_server(&p, &pcap);
    let (a, b) = (p.status(Host::A), p.status(Host::B));
    eprintln!(
        "trial {n}: served by {order:?}; a {} / b {}; {}",
        a["state"],
        b["state"],
        if v["stalled_to_the_end"] == true {
            "the service stalled to the end of the run".to_string()
        } else {
            format!("the client waited up to {} ms", v["max_wait_ms"])
        }
    );
}

fn campaign(first: u64) {
    for n in first..first + 10 {
        trial(n);
    }
}

#[test]
fn partition_campaign_trials_0_to_9() {
    campaign(0);
}

#[test]
fn partition_campaign_trials_10_to_19() {
    campaign(10);
}

#[test]
fn partition_campaign_trials_20_to_29() {
    campaign(20);
}

#[test]
fn partition_campaign_trials_30_to_39() {
    campaign(30);
}

#[test]
fn partition_campaign_trials_40_to_49() {
    campaign(40);
}

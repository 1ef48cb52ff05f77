//! Takeover benchmark (ignored by default; run by `bench/takeover/run.sh`):
//! for each connection count in `FT_BENCH_CONNS` (default 1,100,1000,10000)
//! and `FT_BENCH_RUNS` runs each, a pinging client on every connection,
//! kill a, take over on b, and print the takeover's step times and the
//! client's round-trip stall; then the single-connection stall per
//! direction (saturated both ways) and the keepalived/VRRP baseline.

#[path = "support/backup.rs"]
mod backup;
#[path = "support/detclient.rs"]
mod detclient;
#[path = "support/detsvc.rs"]
mod detsvc;
#[path = "support/eventsvc.rs"]
mod eventsvc;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/roles.rs"]
mod roles;
#[path = "support/scenario.rs"]
mod scenario;

use std::time::Duration;

use scenario::{Scenario, num, run};

/// Entry point of the roles; a no-op when run as a test.
#[test]
fn role() {
    roles::dispatch();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn env_list(k: &str, default: &str) -> Vec<usize> {
    std::env::var(k).unwrap_or_else(|_| default.into()).split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

#[test]
#[ignore = "benchmark: bench/takeover/run.sh"]
fn bench_takeover() {
    let runs = env_list("FT_BENCH_RUNS", "3").first().copied().unwrap_or(3);
    let ms = |line: &str, k: &str| num(line, k) as f64 / 1e3;
    for n in env_list("FT_BENCH_CONNS", "1,100,1000,10000") {
        let mut rows: Vec<[f64; 9]> = Vec::new();
        for r in 0..runs {
            let mut s = Scenario::new("tkbench", "pingmany", "echo=1,event=1");
            s.conns = n;
            s.go = true;
            s.settle = Duration::from_millis(if n >= 1000 { 1500 } else { 500 });
            s.client_secs = if n >= 10000 { 120 } else { 40 };
            let out = run(&s);
            // A failed run is reported and left out of the medians, not hidden.
            let name = format!("bench {n}");
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| out.assert_clean(&name))).is_err() {
                eprintln!("BENCHFAIL conns={n} run={r}: {out:#?}");
                continue;
            }
            let t = out.takeover().to_string();
            let su = out.summary().to_string();
            let row = [
                ms(&t, "total_us"),
                ms(&t, "build_us"),
                ms(&t, "vip_us"),
                ms(&t, "garp_us"),
                ms(&t, "rules_us"),
                ms(&t, "release_us"),
                ms(&t, "drop_at_arm_us"),
                num(&su, "ping_stall_med_us") as f64 / 1e3,
                num(&su, "ping_stall_max_us") as f64 / 1e3,
            ];
            eprintln!("BENCHRUN conns={n} run={r} {t} | {su}");
            rows.push(row);
        }
        let col = |i: usize| median(rows.iter().map(|r| r[i]).collect());
        eprintln!(
            "BENCH conns={n} runs={runs} median: takeover {:.2} ms = build {:.2} + vip {:.3} + garp {:.3} + rules {:.2} + release {:.2} (+ tails/FINs) | drop rule at arm {:.2} ms (off path) | client round-trip stall median {:.1} ms, max {:.1} ms",
            col(0),
            col(1),
            col(2),
            col(3),
            col(4),
            col(5),
            col(6),
            col(7),
            col(8)
        );
    }
    // Per direction, one connection saturated both ways (200 Mbit/s links).
    let mut rx = Vec::new();
    let mut tx = Vec::new();
    for _ in 0..runs {
        let mut s = Scenario::new("tkbboth", "both", "echo=1");
        s.total = 32 << 20;
        s.shape = Some("200mbit");
        s.settle = Duration::from_millis(500);
        let out = run(&s);
        out.assert_clean("bench both");
        eprintln!("BENCHRUN {}", out.report("both"));
        rx.push(num(out.summary(), "rx_stall_max_us") as f64 / 1e3);
        tx.push(num(out.summary(), "tx_stall_max_us") as f64 / 1e3);
    }
    eprintln!(
        "BENCH direction runs={runs} median stall: server->client {:.1} ms, client->server {:.1} ms",
        median(rx),
        median(tx)
    );
    // keepalived / VRRP baseline.
    let mut vip_ms = Vec::new();
    let mut err_ms = Vec::new();
    let mut back_ms = Vec::new();
    for _ in 0..runs {
        let (lines, rst, vm) = scenario::run_keepalived("tkbka");
        let r = lines.iter().find(|l| l.starts_with("@@result")).cloned().unwrap_or_default();
        eprintln!("BENCHRUN keepalived vip_on_b_after={vm:.1}ms rst_to_client={rst} {r}");
        vip_ms.push(vm);
        err_ms.push(num(&r, "error_after_ms") as f64);
        back_ms.push(num(&r, "reconnected_after_ms") as f64);
    }
    eprintln!(
        "BENCH keepalived runs={runs} median: VIP on b after {:.1} ms; the client's connection was reset {:.1} ms after the kill; a new connection worked after {:.1} ms",
        median(vip_ms),
        median(err_ms),
        median(back_ms)
    );
}

/// What makes the client retransmit its own unacknowledged bytes before its
/// RTO: one saturated connection (both ways), per nudge `FT_BENCH_RUNS` runs,
/// the client->server stall (time with unacknowledged client data and no
/// ACK progress, from the kill on).
#[test]
#[ignore = "experiment: bench/takeover/run.sh nudge"]
fn nudge_experiment() {
    let runs = env_list("FT_BENCH_RUNS", "5").first().copied().unwrap_or(5);
    let kinds: [(&str, &'static str, bool); 6] = [
        ("release only", "none", false),
        ("3 plain dup ACKs", "dupack3", false),
        ("3 SACK dup ACKs", "sackdup3", false),
        ("zero window then update", "zerowin", false),
        ("queue captured unacked client bytes + ACK", "ack", true),
        ("one extra pure ACK", "ack", false),
    ];
    for (label, nudge, queue) in kinds {
        let mut tx = Vec::new();
        let mut rx = Vec::new();
        for _ in 0..runs {
            let mut s = Scenario::new("tknudge", "both", "echo=1");
            s.total = 16 << 20;
            s.shape = Some("200mbit");
            s.settle = Duration::from_millis(500);
            s.nudge = nudge;
            s.queue_unacked = queue;
            let out = run(&s);
            out.assert_clean("nudge");
            let t = num(out.takeover(), "done").saturating_sub(out.kill_ns) as f64 / 1e6;
            let stx = num(out.summary(), "tx_stall_max_us") as f64 / 1e3;
            let srx = num(out.summary(), "rx_stall_max_us") as f64 / 1e3;
            eprintln!(
                "NUDGERUN {label}: client->server stall {stx:.1} ms, server->client {srx:.1} ms, kill->takeover-done {t:.1} ms"
            );
            tx.push(stx - t);
            rx.push(srx - t);
        }
        eprintln!(
            "NUDGE {label}: runs={runs} median stall beyond takeover-done: client->server {:.1} ms, server->client {:.1} ms",
            median(tx),
            median(rx)
        );
    }
}

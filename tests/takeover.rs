//! Takeover must-shows (testing tier 3, root): for each scenario, host a
//! serves the deterministic service on the VIP, host b tracks a's wire and
//! takes every connection over with TCP_REPAIR when a is killed
//! (`topo.kill`: freeze, cut links, SIGKILL). Each asserts that the client
//! saw no error, a capture in the client namespace shows no RST toward the
//! client, both byte streams are exact, and prints the stall (`STALL …`).
//!
//! b is fed by the real capture (`ftnet::net::capture` on a, `Receiver` on
//! b over the replication link); `FT_FEED=tap` swaps in the test-only wire
//! tap (see `support/backup.rs`). Roles run this same test binary (`role`,
//! selected by `FTNET_ROLE`) inside the namespaces.

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

fn require_root() -> bool {
    // SAFETY-free check: uid from /proc.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    assert!(root, "takeover tests need root (network namespaces, TCP_REPAIR)");
    root
}

fn conn_lines(out: &scenario::Outcome) -> Vec<&String> {
    out.backup.iter().filter(|l| l.starts_with("@@conn")).collect()
}

#[test]
fn idle_keepalive_connection() {
    require_root();
    let mut s = Scenario::new("tkidle", "idle", "echo=1");
    s.go = true;
    let out = run(&s);
    out.assert_clean("idle");
    out.report("idle");
}

#[test]
fn mid_download_slow_reader() {
    require_root();
    let mut s = Scenario::new("tkdl", "download", "echo=0");
    s.total = 24 << 20;
    s.settle = Duration::from_millis(500);
    let out = run(&s);
    out.assert_clean("download");
    out.report("download");
}

#[test]
fn mid_upload_acked_unread() {
    require_root();
    let mut s = Scenario::new("tkup", "upload", "echo=1,read=0");
    s.server_b = "echo=1";
    s.total = 4 << 20;
    s.settle = Duration::from_millis(500);
    let out = run(&s);
    out.assert_clean("upload");
    let c = conn_lines(&out);
    assert!(c.iter().all(|l| num(l, "in") == 4 << 20 && num(l, "eof") == 1), "{c:#?}");
    out.report("upload");
}

#[test]
fn both_directions_saturated() {
    require_root();
    let mut s = Scenario::new("tkboth", "both", "echo=1");
    s.total = 32 << 20;
    s.shape = Some("200mbit");
    s.settle = Duration::from_millis(500);
    let out = run(&s);
    out.assert_clean("both");
    out.report("both");
}

#[test]
fn handshake_syn_ack_sent_not_acknowledged() {
    require_root();
    let mut s = Scenario::new("tkhs", "handshake", "echo=1");
    s.handshake = true;
    let out = run(&s);
    out.assert_clean("handshake");
    assert_eq!(num(out.takeover(), "handshakes"), 1, "{}", out.takeover());
    out.report("handshake");
}

#[test]
fn half_closed_by_client() {
    require_root();
    let mut s = Scenario::new("tkhc", "halfclose", "echo=0,limit=4194304");
    s.total = 64 << 10;
    s.limit = 4 << 20;
    let out = run(&s);
    out.assert_clean("halfclose");
    let c = conn_lines(&out);
    assert!(c.iter().all(|l| num(l, "in") == 64 << 10 && num(l, "eof") == 1 && num(l, "out") == 4 << 20), "{c:#?}");
    out.report("halfclose");
}

#[test]
fn server_shut_down_for_writing() {
    require_root();
    let mut s = Scenario::new("tksw", "shutwr", "echo=0,limit=2097152,end=shutwr");
    s.limit = 2 << 20;
    let out = run(&s);
    out.assert_clean("shutwr");
    let tx = out.client.iter().find(|l| l.starts_with("@@result")).map(|l| num(l, "tx")).unwrap_or(0);
    let c = conn_lines(&out);
    assert!(tx > 0 && c.iter().all(|l| num(l, "in") == tx && num(l, "eof") == 1), "tx={tx} {c:#?}");
    out.report("shutwr");
}

#[test]
fn orphan_closed_with_megabytes_unread() {
    require_root();
    let mut s = Scenario::new("tkorph", "orphan", "echo=0,limit=4194304,end=close,read=0,sndbuf=33554432");
    s.limit = 4 << 20;
    s.go = true;
    s.wait_server_close = true;
    let out = run(&s);
    out.assert_clean("orphan");
    assert_eq!(num(out.takeover(), "orphans"), 1, "{}", out.takeover());
    let o = out.backup.iter().find(|l| l.starts_with("@@orphans")).cloned().unwrap_or_default();
    assert_eq!(num(&o, "drained"), 1, "{o}");
    out.report("orphan");
}

#[test]
fn thousand_connections_at_once() {
    require_root();
    let mut s = Scenario::new("tk1000", "pingmany", "echo=1,event=1");
    s.conns = 1000;
    s.go = true;
    s.settle = Duration::from_millis(500);
    s.client_secs = 30;
    let out = run(&s);
    out.assert_clean("many");
    assert_eq!(num(out.takeover(), "connections"), 1000, "{}", out.takeover());
    assert_eq!(num(out.summary(), "conns"), 1000, "{}", out.summary());
    out.report("many");
}

//! Role dispatch for the takeover test binaries (test-only): a test binary
//! re-runs itself inside a namespace with `FTNET_ROLE` set (see
//! `scenario.rs`), and its `role` test calls [`dispatch`].
#![allow(dead_code)]

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use super::{backup, detclient, detsvc, netns};

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_default()
}

fn env_num(k: &str) -> u64 {
    env(k).parse().unwrap_or(0)
}

/// Runs the role named by `FTNET_ROLE` and exits; returns at once without it.
pub fn dispatch() {
    let Ok(role) = std::env::var("FTNET_ROLE") else { return };
    let vip: std::net::Ipv4Addr = env("FT_VIP").parse().expect("FT_VIP");
    let port: u16 = env("FT_PORT").parse().expect("FT_PORT");
    let addr = SocketAddrV4::new(vip, port);
    let secs = env_num("FT_SECS").max(10);
    match role.as_str() {
        "capture" => {
            // The real primary-side capture (ftnet::net::capture) until stdin closes.
            let forward: std::net::SocketAddr = env("FT_FORWARD").parse().expect("FT_FORWARD");
            let cfg = ftnet::net::capture::CaptureConfig::new(7, vip, vec![port], forward);
            let cap = ftnet::net::capture::Capture::start(cfg).unwrap_or_else(|e| panic!("Capture::start: {e}"));
            println!("@@capture-ready");
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            drop(cap);
        }
        "server" => {
            let spec = detsvc::ServerSpec::parse(&env("FT_SPEC"));
            detsvc::run_server(addr, spec, Instant::now() + Duration::from_secs(300));
        }
        "backup" => backup::run_backup(backup::BackupParams {
            vip,
            port,
            ifname: netns::SERVICE_IF.to_string(),
            spec_a: detsvc::ServerSpec::parse(&env("FT_SPEC_A")),
            spec_b: detsvc::ServerSpec::parse(&env("FT_SPEC_B")),
            serve_for: Duration::from_secs(env_num("FT_SERVE_SECS").max(10)),
            queue_unacked: env("FT_QUEUE_UNACKED") == "1",
            nudge: env("FT_NUDGE"),
            listen: env("FT_LISTEN").parse().ok(),
        }),
        "client" => detclient::run_client(detclient::ClientParams {
            scenario: env("FT_SCENARIO"),
            addr,
            conns: env_num("FT_CONNS").max(1) as usize,
            total: env_num("FT_TOTAL"),
            limit: env_num("FT_LIMIT"),
            deadline: Instant::now() + Duration::from_secs(secs),
        }),
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

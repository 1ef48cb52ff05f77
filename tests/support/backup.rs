//! The backup role of the takeover tests (test-only): feeds a
//! `tcpstate::Tracker` from the primary's packets, and at the takeover
//! rebuilds every connection with `ftnet::net::takeover` and serves the
//! rebuilt sockets with the deterministic service from the tracker's stream
//! offsets.
//!
//! Two feeds:
//! - default, the REAL capture: `ftnet::net::capture::Capture` on a forwards
//!   every VIP segment over the replication link to a
//!   `ftnet::net::receiver::Receiver` here; the test sends `takeover` on
//!   stdin after killing a;
//! - `FT_FEED=tap`, a TEST-ONLY stand-in: a pcap from `tcpdump -i p-a` in the
//!   switch namespace (a perfect wire tap of host a) on stdin; its end (a's
//!   link is gone) starts the takeover.
//!
//! Also test-only: the replica's reads, which the real log records, are
//! inferred for the echo service from its output (it echoes only what it
//! read; the stateless service tolerates a read position that lags); the
//! "server closed" fact of orphans is taken from the service's spec (the
//! log's close record).
#![allow(dead_code)]

use std::io::{BufReader, Read};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use ftnet::net::takeover::{self, Rebuild, TakeoverConfig};
use ftnet::tcpstate::build::RepairPlan;
use ftnet::tcpstate::{ConnState, Direction, Observed, Tracker, TsClock};

use super::detsvc::{End, ServerSpec, serve, server_bytes, wall_ns};

/// Backup parameters.
#[derive(Debug, Clone)]
pub struct BackupParams {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub ifname: String,
    /// The primary's server (what its output bytes are, whether it closed).
    pub spec_a: ServerSpec,
    /// The backup's server, serving the rebuilt sockets.
    pub spec_b: ServerSpec,
    /// Serve at most this long after the takeover.
    pub serve_for: Duration,
    /// Also queue client bytes captured but not acknowledged by the primary.
    pub queue_unacked: bool,
    /// Experiment: crafted segments sent right after the takeover to make
    /// the client retransmit its own lost bytes early (`none`, `dupack3`,
    /// `sackdup3`, `zerowin`, `ack`).
    pub nudge: String,
    /// Feed from the real capture: listen for it here (else: pcap on stdin).
    pub listen: Option<SocketAddrV4>,
}

fn read_exact_or_eof(r: &mut impl Read, buf: &mut [u8]) -> bool {
    r.read_exact(buf).is_ok()
}

/// Runs the backup role until its serving deadline.
pub fn run_backup(p: BackupParams) {
    let mut cfg = TakeoverConfig::new(takeover::vip(p.vip, 24, &p.ifname));
    cfg.syn_replay_for = Duration::from_secs(4);
    cfg.orphan_timeout = p.serve_for;
    let armed = match takeover::arm(cfg) {
        Ok(a) => a,
        Err(e) => {
            println!("@@error arm: {e}");
            return;
        }
    };
    println!("@@armed");
    let service = SocketAddrV4::new(p.vip, p.port);
    if let Some(listen) = p.listen {
        return run_with_receiver(p.clone(), armed, listen, service);
    }
    let mut tracker = Tracker::new(&[service]);
    let mut input = BufReader::with_capacity(1 << 20, std::io::stdin().lock());
    let mut hdr = [0u8; 24];
    let mut packets = 0u64;
    if read_exact_or_eof(&mut input, &mut hdr) {
        let magic = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let nanos = magic == 0xa1b2_3c4d;
        let mut rec = [0u8; 16];
        let mut frame = vec![0u8; 1 << 18];
        // One iteration per captured frame; ends at EOF.
        while read_exact_or_eof(&mut input, &mut rec) {
            let sec = u64::from(u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]));
            let sub = u64::from(u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]));
            let incl = u32::from_le_bytes([rec[8], rec[9], rec[10], rec[11]]) as usize;
            let orig = u32::from_le_bytes([rec[12], rec[13], rec[14], rec[15]]) as usize;
            if incl > frame.len() || !read_exact_or_eof(&mut input, &mut frame[..incl]) {
                println!("@@error bad pcap record of {incl} bytes");
                break;
            }
            if incl < orig {
                println!("@@error truncated capture ({incl} of {orig} bytes)");
            }
            let wire_ns = sec * 1_000_000_000 + if nanos { sub } else { sub * 1000 };
            let obs = now_ns().saturating_sub(wall_ns().saturating_sub(wire_ns));
            if incl < 14 || frame[12..14] != [0x08, 0x00] {
                continue;
            }
            packets += 1;
            if let Ok(Observed::Tracked(t)) = tracker.observe(obs, &frame[14..incl])
                && t.direction == Direction::Outbound
                && p.spec_a.echo
            {
                infer_echo_reads(&mut tracker, &t.tuple);
            }
        }
    }
    let t_eof = wall_ns();
    take_over(&p, armed, &tracker, packets, t_eof);
}

/// CLOCK_MONOTONIC in ns: the tracker's clock in both feeding modes (the
/// Receiver stamps frames with it).
fn now_ns() -> u64 {
    ftnet::sys::fd::clock_ns(libc::CLOCK_MONOTONIC).max(0) as u64
}

/// The real capture: a `Receiver` on the replication link fed by
/// `ftnet::net::capture::Capture` on a; the takeover starts on a `takeover`
/// line on stdin (the test sends it after killing a).
fn run_with_receiver(p: BackupParams, armed: takeover::Armed, listen: SocketAddrV4, service: SocketAddrV4) {
    use std::io::BufRead;
    use std::sync::atomic::{AtomicBool, Ordering};
    let rx = match ftnet::net::receiver::Receiver::listen(listen.into(), &[service]) {
        Ok(r) => r,
        Err(e) => {
            println!("@@error receiver: {e}");
            return;
        }
    };
    let h = match rx.spawn() {
        Ok(h) => h,
        Err(e) => {
            println!("@@error receiver: {e}");
            return;
        }
    };
    let tracker = h.tracker();
    println!("@@receiving");
    // Stand-in for the log's read records (see the module docs), applied
    // every 5 ms while frames arrive.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let infer = if p.spec_a.echo {
        let (t, stop) = (tracker.clone(), stop.clone());
        Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(mut g) = t.lock() {
                    let tuples: Vec<_> = g.iter().map(|c| c.tuple()).collect();
                    for tu in tuples {
                        infer_echo_reads(&mut g, &tu);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }))
    } else {
        None
    };
    let stdin = std::io::stdin();
    for line in stdin.lock().lines().map_while(Result::ok).take(10) {
        if line.trim() == "takeover" {
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    if let Some(t) = infer {
        let _ = t.join();
    }
    let t_eof = wall_ns();
    let stats = h.stats();
    let guard = match tracker.lock() {
        Ok(g) => g,
        Err(_) => {
            println!("@@error tracker lock poisoned");
            return;
        }
    };
    println!(
        "@@receiver frames_in={} frames_out={} missed={} malformed={}",
        stats.frames_in, stats.frames_out, stats.missed, stats.malformed_packets
    );
    take_over(&p, armed, &guard, stats.frames_in + stats.frames_out, t_eof);
}

/// Builds a plan per connection, runs the takeover, serves the sockets.
fn take_over(p: &BackupParams, armed: takeover::Armed, tracker: &Tracker, packets: u64, t_eof: u64) {
    let now = now_ns();
    let mut rebuilds = Vec::new();
    let mut plans = Vec::new();
    let mut offsets = Vec::new();
    for conn in tracker.iter() {
        let tuple = conn.tuple();
        let port = tuple.client.port();
        let state = conn.state();
        let plan = match state {
            ConnState::Established | ConnState::CloseWait | ConnState::FinWait | ConnState::Closing => {
                let Some(isn) = conn.server_isn() else { continue };
                let snap = match conn.snapshot() {
                    Ok(s) => s,
                    Err(e) => {
                        println!("@@failed {tuple} snapshot: {e}");
                        continue;
                    }
                };
                let from = u64::from(snap.send_queue_seq.since(isn + 1));
                let mut to = u64::from(snap.snd_nxt.since(isn + 1));
                // What the log would say: a server that closes at its limit has
                // closed (the test kills a only after it did), even if its FIN
                // is still queued behind data on a.
                let closed = p.spec_a.end == End::Close && p.spec_a.limit.is_some();
                if closed {
                    to = p.spec_a.limit.unwrap_or(to);
                }
                let tail = server_bytes(&p.spec_a, port, from, to);
                let mut plan =
                    RepairPlan::from_snapshot(&snap, conn.server_ts_at(now, TsClock::Millis), TsClock::Millis, tail);
                plan.server_fin |= closed;
                if p.queue_unacked {
                    plan.recv_queue.extend_from_slice(conn.client_unacked());
                }
                let in_off = u64::from(snap.recv_queue_seq.since(conn.client_stream_start()));
                offsets.push((tuple, in_off, from));
                let orphan = closed;
                // Both ways of building: odd client ports fill a placeholder made
                // beforehand (as replay installs them), even ones build from scratch.
                let placeholder = if port % 2 == 1 {
                    let local = ftnet::sys::tcp_repair::sockaddr_in(tuple.server);
                    match ftnet::sys::tcp_repair::placeholder(&local, true) {
                        Ok(fd) => Some(fd),
                        Err(e) => {
                            println!("@@error placeholder {tuple}: {e}");
                            None
                        }
                    }
                } else {
                    None
                };
                Rebuild { plan, placeholder, syn_ack: None, orphan }
            }
            ConnState::SynReceived => match RepairPlan::for_handshake(conn, now, TsClock::Millis) {
                Ok(plan) => {
                    offsets.push((tuple, 0, 0));
                    Rebuild {
                        plan,
                        placeholder: None,
                        syn_ack: conn.syn_ack_packet().map(<[u8]>::to_vec),
                        orphan: false,
                    }
                }
                Err(e) => {
                    println!("@@failed {tuple} handshake: {e}");
                    continue;
                }
            },
            other => {
                println!("@@skip {tuple} {other:?}");
                continue;
            }
        };
        plans.push((plan.plan.clone(), conn.client_timestamp().map(|t| t.tsval), conn.client_unacked().len()));
        rebuilds.push(plan);
    }
    let to = match armed.execute(rebuilds) {
        Ok(t) => t,
        Err(e) => {
            println!("@@error takeover: {e}");
            return;
        }
    };
    let done = wall_ns();
    let r = &to.report;
    println!(
        "@@takeover packets={packets} t_eof={t_eof} done={done} connections={} handshakes={} orphans={} build_us={} vip_us={} garp_us={} rules_us={} drop_at_arm_us={} release_us={} tail_us={} total_us={} tail_bytes={} window_rejected={} failed={}",
        r.connections,
        r.handshakes,
        r.orphans,
        r.build_ns / 1000,
        r.vip_ns / 1000,
        r.garp_ns / 1000,
        r.rules_ns() / 1000,
        r.drop_rule_ns / 1000,
        r.release_ns / 1000,
        r.tail_ns / 1000,
        r.total_ns / 1000,
        r.tail_bytes,
        r.window_rejected,
        r.failed.len()
    );
    for (t, why) in &r.failed {
        println!("@@failed {t} {}", why.replace(' ', "_"));
    }
    if p.nudge != "none" && !p.nudge.is_empty() {
        nudge(&p.nudge, &plans, &to.live);
    }
    let deadline = Instant::now() + p.serve_for;
    let mut threads = Vec::new();
    let mut event_conns = Vec::new();
    for rb in to.live {
        let Some(&(_, in_off, from)) = offsets.iter().find(|o| o.0 == rb.tuple) else { continue };
        let port = rb.tuple.client.port();
        let stream = TcpStream::from(rb.fd);
        let spec = p.spec_b.clone();
        let out_off = from + rb.tail_written as u64;
        if p.spec_b.event {
            event_conns.push((stream, in_off, out_off));
            continue;
        }
        threads.push(
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || serve(stream, port, in_off, out_off, spec, deadline)),
        );
    }
    if p.spec_b.event {
        threads
            .push(std::thread::Builder::new().spawn(move || super::eventsvc::echo_loop(None, event_conns, deadline)));
    }
    let responder = to.responder.map(|r| std::thread::spawn(move || r.join()));
    let keeper = to.keeper.map(|k| std::thread::spawn(move || k.join()));
    if let Some(h) = responder
        && let Ok(s) = h.join()
    {
        println!("@@synreplay seen={} sent={} errors={}", s.syns_seen, s.syn_acks_sent, s.errors.len());
    }
    if let Some(h) = keeper
        && let Ok(s) = h.join()
    {
        println!(
            "@@orphans drained={} timed_out={} last_ms={} errors={}",
            s.drained,
            s.timed_out,
            s.last_drained_after.as_millis(),
            s.errors.len()
        );
    }
    for t in threads.into_iter().flatten() {
        let _ = t.join();
    }
    println!("@@backup-done");
}

/// The echo service wrote output offset `k` only after reading client byte
/// `k`: advance the tracker's read position to the server's output.
fn infer_echo_reads(tracker: &mut Tracker, tuple: &ftnet::tcpstate::FourTuple) {
    let Some(conn) = tracker.get(tuple) else { return };
    let (Some(isn), Some(nxt)) = (conn.server_isn(), conn.snd_nxt()) else { return };
    let mut out = u64::from(nxt.since(isn + 1));
    if conn.server_fin().is_some() {
        out = out.saturating_sub(1);
    }
    let start = conn.client_stream_start();
    let read = u64::from(conn.read_seq().since(start));
    let avail = u64::from(conn.client_next().since(start));
    let target = out.min(avail);
    if target > read {
        let _ = tracker.consume(tuple, target - read);
    }
}

/// Sends the experiment's crafted segments from each rebuilt socket's
/// address, with the socket's current TSval (`seq` = the rebuilt `snd_nxt`,
/// so the client processes the ACK field).
fn nudge(kind: &str, plans: &[(RepairPlan, Option<u32>, usize)], live: &[ftnet::net::takeover::Rebuilt]) {
    use std::os::fd::AsFd;
    let Ok(raw) = ftnet::sys::packet::RawIpSocket::open() else { return };
    let mut sent = 0;
    for rb in live {
        let Some((plan, client_ts, unacked)) = plans.iter().find(|p| p.0.tuple == rb.tuple) else { continue };
        let at = plan;
        let seq = plan.send_queue_seq + plan.tail.len() as u32;
        let ts = ftnet::sys::tcp_repair::get_timestamp(rb.fd.as_fd()).ok().zip(*client_ts);
        let win = plan
            .window
            .map_or(u16::MAX, |w| u16::try_from(w.rcv_wnd >> plan.options.server_wscale).unwrap_or(u16::MAX));
        let rcv = at.rcv_nxt();
        let pkts: Vec<Vec<u8>> = match kind {
            "dupack3" => (0..3).filter_map(|_| at.server_ack_packet(seq, win, &[], ts).ok()).collect(),
            // A SACK block for captured bytes beyond rcv_nxt, if any (else one byte past it).
            "sackdup3" => {
                let end = rcv + (*unacked).max(1) as u32;
                let lo = rcv + 1;
                (0..3).filter_map(|_| at.server_ack_packet(seq, win, &[(lo, end.latest(lo + 1))], ts).ok()).collect()
            }
            "zerowin" => [0u16, win].iter().filter_map(|w| at.server_ack_packet(seq, *w, &[], ts).ok()).collect(),
            "ack" => at.server_ack_packet(seq, win, &[], ts).ok().into_iter().collect(),
            _ => Vec::new(),
        };
        for (i, pk) in pkts.iter().enumerate() {
            if kind == "zerowin" && i == 1 {
                std::thread::sleep(Duration::from_millis(5));
            }
            if raw.send(pk, *rb.tuple.client.ip()).is_ok() {
                sent += 1;
            }
        }
    }
    println!("@@nudge kind={kind} sent={sent}");
}

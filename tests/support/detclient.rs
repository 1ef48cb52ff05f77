//! Client scenarios of the takeover tests (test-only), run as a role in the
//! client namespace. Each connection runs one scenario function; a sampler
//! measures stalls (see `detsvc`). Output lines: `@@ready`, one
//! `@@result …` per connection (or `@@summary …` for many), `@@done`.
#![allow(dead_code)]

use std::io::Read;
use std::net::{Shutdown, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::detsvc::{self, Control, Watch, cgen, sgen, stall_after, wait_flag, wall_ns};

/// Client parameters (from the role's environment).
#[derive(Debug, Clone)]
pub struct ClientParams {
    pub scenario: String,
    pub addr: SocketAddrV4,
    pub conns: usize,
    /// Upload/echo total or download total.
    pub total: u64,
    /// The server's output limit, where the scenario expects EOF.
    pub limit: u64,
    pub deadline: Instant,
}

/// One connection's outcome: its client port and what the scenario returned.
type ConnResult = (u16, Result<String, String>);

type ConnFn = fn(&mut TcpStream, u16, &Watch, &Control, &ClientParams, &AtomicUsize) -> Result<String, String>;

fn ready(r: &AtomicUsize) {
    r.fetch_add(1, Ordering::SeqCst);
}

fn ping(s: &mut TcpStream, port: u16, off: &mut u64, n: usize, w: &Watch) -> Result<Duration, String> {
    let mut b = vec![0u8; n];
    cgen(port, *off, &mut b);
    let t = Instant::now();
    w.expect_rx.store(true, Ordering::Relaxed);
    detsvc::write_all(s, &b)?;
    let mut buf = vec![0u8; n];
    detsvc::read_check(s, n, *off, |o, x| cgen(port, o, x), &mut buf)?;
    w.expect_rx.store(false, Ordering::Relaxed);
    *off += n as u64;
    Ok(t.elapsed())
}

fn idle(
    s: &mut TcpStream,
    port: u16,
    w: &Watch,
    c: &Control,
    p: &ClientParams,
    r: &AtomicUsize,
) -> Result<String, String> {
    let mut off = 0;
    for _ in 0..3 {
        ping(s, port, &mut off, 1000, w)?;
    }
    ready(r);
    if !wait_flag(&c.go, p.deadline) {
        return Err("no go".into());
    }
    let mut rtts = Vec::new();
    for _ in 0..10 {
        rtts.push(ping(s, port, &mut off, 1000, w)?.as_micros());
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(format!("first_ping_us={} max_ping_us={}", rtts[0], rtts.iter().max().unwrap_or(&0)))
}

fn download(
    s: &mut TcpStream,
    port: u16,
    w: &Watch,
    _c: &Control,
    p: &ClientParams,
    r: &AtomicUsize,
) -> Result<String, String> {
    w.expect_rx.store(true, Ordering::Relaxed);
    let mut buf = vec![0u8; 16 << 10];
    let mut off = 0u64;
    let mut signalled = false;
    while off < p.total {
        let n = (p.total - off).min(buf.len() as u64) as usize;
        detsvc::read_check(s, n, off, |o, x| sgen(port, o, x), &mut buf)?;
        off += n as u64;
        if !signalled && off >= 1 << 20 {
            signalled = true;
            ready(r);
        }
        std::thread::sleep(Duration::from_millis(2));
        if Instant::now() > p.deadline {
            return Err(format!("deadline at {off}"));
        }
    }
    w.expect_rx.store(false, Ordering::Relaxed);
    Ok(format!("rx={off}"))
}

/// Upload (and read the echo): `total` bytes, ready after `ready_after` were written.
fn upload_echo(
    s: &mut TcpStream,
    port: u16,
    w: &Watch,
    p: &ClientParams,
    r: &AtomicUsize,
    ready_after: u64,
) -> Result<String, String> {
    let mut ws = s.try_clone().map_err(|e| e.to_string())?;
    let total = p.total;
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let wr = written.clone();
    let deadline = p.deadline;
    let writer = std::thread::spawn(move || -> Result<(), String> {
        let mut b = vec![0u8; 16 << 10];
        let mut off = 0u64;
        while off < total && Instant::now() < deadline {
            let n = (total - off).min(b.len() as u64) as usize;
            cgen(port, off, &mut b[..n]);
            detsvc::write_all(&mut ws, &b[..n])?;
            off += n as u64;
            wr.store(off, Ordering::SeqCst);
        }
        ws.shutdown(Shutdown::Write).map_err(|e| format!("shutdown: {e}"))
    });
    let mut buf = vec![0u8; 64 << 10];
    let mut off = 0u64;
    let mut signalled = false;
    while off < total {
        if Instant::now() > p.deadline {
            return Err(format!("deadline with echo at {off}"));
        }
        let wn = written.load(Ordering::SeqCst);
        if !signalled && wn >= ready_after {
            signalled = true;
            ready(r);
        }
        w.expect_rx.store(wn > off, Ordering::Relaxed);
        if wn <= off {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let n = (wn - off).min(buf.len() as u64) as usize;
        detsvc::read_check(s, n, off, |o, x| cgen(port, o, x), &mut buf)?;
        off += n as u64;
    }
    w.expect_rx.store(false, Ordering::Relaxed);
    writer.join().map_err(|_| "writer panicked".to_string())??;
    let mut one = [0u8; 1];
    match s.read(&mut one) {
        Ok(0) => Ok(format!("echoed={off}")),
        Ok(_) => Err("bytes after the echo".into()),
        Err(e) => Err(format!("waiting for EOF: {e}")),
    }
}

fn upload(
    s: &mut TcpStream,
    port: u16,
    w: &Watch,
    _c: &Control,
    p: &ClientParams,
    r: &AtomicUsize,
) -> Result<String, String> {
    upload_echo(s, port, w, p, r, 32 << 10)
}

fn both(
    s: &mut TcpStream,
    port: u16,
    w: &Watch,
    _c: &Control,
    p: &ClientParams,
    r: &AtomicUsize,
) -> Result<String, String> {
    upload_echo(s, port, w, p, r, 2 << 20)
}

fn handshake(
    s: &mut TcpStream,
    port: u16,
    w: &Watch,
    _c: &Control,
    _p: &ClientParams,
    r: &AtomicUsize,
) -> Result<String, String> {
    ready(r);
    let mut off = 0;
    let mut max = Duration::ZERO;
    for _ in 0..5 {
        max = max.max(ping(s, port, &mut off, 1000, w)?);
    }
    Ok(format!("max_ping_us={}", max.as_micros()))
}

/// Reads `limit` server bytes slowly and expects EOF right after.
fn read_to_eof(
    s: &mut TcpStream,
    port: u16,
    w: &Watch,
    p: &ClientParams,
    r: Option<&AtomicUsize>,
    pace: Duration,
) -> Result<u64, String> {
    w.expect_rx.store(true, Ordering::Relaxed);
    let mut buf = vec![0u8; 16 << 10];
    let mut off = 0u64;
    let mut signalled = r.is_none();
    while off < p.limit {
        let n = (p.limit - off).min(buf.len() as u64) as usize;
        detsvc::read_check(s, n, off, |o, x| sgen(port, o, x), &mut buf)?;
        off += n as u64;
        if !signalled && off >= 512 << 10 {
            signalled = true;
            if let Some(r) = r {
                ready(r);
            }
        }
        if !pace.is_zero() {
            std::thread::sleep(pace);
        }
        if Instant::now() > p.deadline {
            return Err(format!("deadline at {off}"));
        }
    }
    let mut one = [0u8; 1];
    let res = match s.read(&mut one) {
        Ok(0) => Ok(off),
        Ok(_) => Err(format!("bytes past the server's end {off}")),
        Err(e) => Err(format!("waiting for the server's FIN: {e}")),
    };
    w.expect_rx.store(false, Ordering::Relaxed);
    res
}

fn halfclose(
    s: &mut TcpStream,
    port: u16,
    w: &Watch,
    _c: &Control,
    p: &ClientParams,
    r: &AtomicUsize,
) -> Result<String, String> {
    let mut b = vec![0u8; p.total as usize];
    cgen(port, 0, &mut b);
    detsvc::write_all(s, &b)?;
    s.shutdown(Shutdown::Write).map_err(|e| format!("shutdown: {e}"))?;
    let got = read_to_eof(s, port, w, p, Some(r), Duration::from_millis(4))?;
    Ok(format!("rx={got} tx={}", p.total))
}

fn shutwr(
    s: &mut TcpStream,
    port: u16,
    w: &Watch,
    _c: &Control,
    p: &ClientParams,
    r: &AtomicUsize,
) -> Result<String, String> {
    let mut ws = s.try_clone().map_err(|e| e.to_string())?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let deadline = p.deadline;
    let writer = std::thread::spawn(move || -> Result<u64, String> {
        let mut b = vec![0u8; 8 << 10];
        let mut off = 0u64;
        let mut after = 0;
        while Instant::now() < deadline && after < 20 {
            if stop2.load(Ordering::SeqCst) {
                after += 1;
            }
            cgen(port, off, &mut b);
            detsvc::write_all(&mut ws, &b)?;
            off += b.len() as u64;
            std::thread::sleep(Duration::from_millis(10));
        }
        ws.shutdown(Shutdown::Write).map_err(|e| format!("shutdown: {e}"))?;
        Ok(off)
    });
    let got = read_to_eof(s, port, w, p, Some(r), Duration::from_millis(4));
    stop.store(true, Ordering::SeqCst);
    let tx = writer.join().map_err(|_| "writer panicked".to_string())??;
    Ok(format!("rx={} tx={tx}", got?))
}

fn orphan(
    s: &mut TcpStream,
    port: u16,
    w: &Watch,
    c: &Control,
    p: &ClientParams,
    r: &AtomicUsize,
) -> Result<String, String> {
    ready(r);
    if !wait_flag(&c.go, p.deadline) {
        return Err("no go".into());
    }
    let got = read_to_eof(s, port, w, p, None, Duration::ZERO)?;
    Ok(format!("rx={got}"))
}

fn many(
    s: &mut TcpStream,
    port: u16,
    w: &Watch,
    c: &Control,
    p: &ClientParams,
    r: &AtomicUsize,
) -> Result<String, String> {
    let mut off = 0;
    let mut max = Duration::ZERO;
    ping(s, port, &mut off, 256, w)?;
    ready(r);
    let mut go_at: Option<Instant> = None;
    // Pings every 100 ms until 1.5 s after `go`, bounded by the deadline.
    while Instant::now() < p.deadline {
        if go_at.is_none() && c.go.load(Ordering::SeqCst) {
            go_at = Some(Instant::now());
        }
        if go_at.is_some_and(|g| g.elapsed() > Duration::from_millis(1500)) {
            return Ok(format!("pings={} max_ping_us={}", off / 256, max.as_micros()));
        }
        max = max.max(ping(s, port, &mut off, 256, w)?);
        std::thread::sleep(Duration::from_millis(100));
    }
    Err("deadline".into())
}

fn scenario_fn(name: &str) -> ConnFn {
    match name {
        "idle" => idle,
        "download" => download,
        "upload" => upload,
        "both" => both,
        "handshake" => handshake,
        "halfclose" => halfclose,
        "shutwr" => shutwr,
        "orphan" => orphan,
        "many" => many,
        _ => panic!("unknown client scenario {name}"),
    }
}

/// Runs the client role: connects, runs the scenario on every connection,
/// measures stalls, prints results.
pub fn run_client(p: ClientParams) {
    let ctl = detsvc::control();
    match p.scenario.as_str() {
        "pingmany" => return ping_many(&p, &ctl),
        "reconnect" => return reconnect(&p, &ctl),
        _ => {}
    }
    let f = scenario_fn(&p.scenario);
    let ready_count = Arc::new(AtomicUsize::new(0));
    let results: Arc<Mutex<Vec<ConnResult>>> = Arc::new(Mutex::new(Vec::new()));
    let mut watches = Vec::new();
    let mut threads = Vec::new();
    let connect_timeout = if p.scenario == "handshake" { Duration::from_secs(20) } else { Duration::from_secs(5) };
    if p.scenario == "handshake" {
        println!("@@connecting");
    }
    let t_connect = Instant::now();
    for i in 0..p.conns {
        let s = match detsvc::connect(p.addr, connect_timeout) {
            Ok(s) => s,
            Err(e) => {
                // Said at once, so a test waiting for @@ready shows why.
                println!("@@client-error connect: {e}");
                results.lock().unwrap().push((0, Err(e)));
                continue;
            }
        };
        if p.conns > 50 && i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let port = s.local_addr().map(|a| a.port()).unwrap_or(0);
        let watch =
            Arc::new(Watch { stream: s.try_clone().expect("clone"), expect_rx: false.into(), done: false.into() });
        watches.push(watch.clone());
        let (ctl, p2, rc, res) = (ctl.clone(), p.clone(), ready_count.clone(), results.clone());
        let mut s = s;
        threads.push(std::thread::Builder::new().stack_size(256 << 10).spawn(move || {
            let r = f(&mut s, port, &watch, &ctl, &p2, &rc);
            if let Err(e) = &r {
                println!("@@client-error port={port}: {e}");
            }
            watch.done.store(true, Ordering::SeqCst);
            res.lock().unwrap().push((port, r));
        }));
    }
    let connect_ms = t_connect.elapsed().as_millis();
    let period = if p.conns > 50 { Duration::from_millis(10) } else { Duration::from_millis(1) };
    let deadline = p.deadline;
    let ws = watches.clone();
    let sampler = std::thread::spawn(move || detsvc::sample(ws, period, deadline));
    let rc = ready_count.clone();
    let n = watches.len();
    let printer = std::thread::spawn(move || {
        while rc.load(Ordering::SeqCst) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        println!("@@ready");
    });
    for t in threads.into_iter().flatten() {
        let _ = t.join();
    }
    let _ = printer.join();
    let gaps = sampler.join().unwrap_or_default();
    // The kill instant comes from the test; wait for it a little.
    let until = Instant::now() + Duration::from_secs(5);
    while ctl.kill_ns.load(Ordering::SeqCst) == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    let kill = ctl.kill_ns.load(Ordering::SeqCst);
    let res = results.lock().unwrap();
    let mut rx_all = Vec::new();
    let mut tx_all = Vec::new();
    let mut failures = 0;
    for (i, (port, r)) in res.iter().enumerate() {
        let _ = i;
        let idx = watches.iter().position(|w| w.stream.local_addr().map(|a| a.port()).unwrap_or(0) == *port);
        let (rx, tx) = idx
            .and_then(|k| gaps.get(k))
            .map_or(((0, false), (0, false)), |(rx, tx)| (stall_after(rx, kill), stall_after(tx, kill)));
        rx_all.push(rx.0);
        tx_all.push(tx.0);
        if r.is_err() {
            failures += 1;
        }
        if p.conns <= 20 || r.is_err() {
            let (ok, info) = match r {
                Ok(s) => (1, s.clone()),
                Err(e) => (0, e.replace(' ', "_")),
            };
            println!(
                "@@result port={port} ok={ok} rx_stall_us={} rx_open={} tx_stall_us={} tx_open={} connect_ms={connect_ms} {info}",
                rx.0 / 1000,
                u8::from(rx.1),
                tx.0 / 1000,
                u8::from(tx.1)
            );
        }
    }
    rx_all.sort_unstable();
    tx_all.sort_unstable();
    let med = |v: &[u64]| v.get(v.len() / 2).copied().unwrap_or(0) / 1000;
    let max = |v: &[u64]| v.last().copied().unwrap_or(0) / 1000;
    println!(
        "@@summary conns={} failed={failures} rx_stall_med_us={} rx_stall_max_us={} tx_stall_med_us={} tx_stall_max_us={}",
        res.len(),
        med(&rx_all),
        max(&rx_all),
        med(&tx_all),
        max(&tx_all)
    );
    println!("@@done");
    let _ = wall_ns();
}

fn wait_kill(ctl: &Control) -> u64 {
    let until = Instant::now() + Duration::from_secs(20);
    while ctl.kill_ns.load(Ordering::SeqCst) == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    ctl.kill_ns.load(Ordering::SeqCst)
}

/// Many connections from one epoll thread (`eventsvc`): round-trip stalls.
fn ping_many(p: &ClientParams, ctl: &Arc<Control>) {
    let period = Duration::from_millis(if p.conns > 2000 { 1000 } else { 100 });
    let c2 = ctl.clone();
    let r = super::eventsvc::ping_loop(
        p.addr,
        p.conns,
        period,
        p.deadline,
        || println!("@@ready"),
        move || c2.go.load(Ordering::SeqCst),
    );
    let kill = wait_kill(ctl);
    let mut stalls: Vec<u64> = r
        .slow
        .iter()
        .map(|v| v.iter().filter(|(_, e)| *e > kill).map(|(s, e)| e - (*s).max(kill)).max().unwrap_or(0))
        .collect();
    stalls.sort_unstable();
    for e in r.errors.iter().take(20) {
        println!("@@result port=0 ok=0 {}", e.replace(' ', "_"));
    }
    let med = stalls.get(stalls.len() / 2).copied().unwrap_or(0) / 1000;
    let max = stalls.last().copied().unwrap_or(0) / 1000;
    println!(
        "@@summary conns={} failed={} ping_stall_med_us={med} ping_stall_max_us={max} rx_stall_med_us={med} rx_stall_max_us={max} tx_stall_med_us=0 tx_stall_max_us=0",
        r.connected,
        r.errors.len() + (r.conns - r.connected)
    );
    println!("@@done");
}

/// One connection pinging every 10 ms; on error, reconnects every 10 ms
/// (the keepalived baseline: its connection is reset).
fn reconnect(p: &ClientParams, ctl: &Arc<Control>) {
    let port_of = |s: &TcpStream| s.local_addr().map(|a| a.port()).unwrap_or(0);
    let Ok(mut s) = detsvc::connect(p.addr, Duration::from_secs(5)) else {
        println!("@@summary conns=0 failed=1");
        println!("@@done");
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let w = Watch { stream: s.try_clone().expect("clone"), expect_rx: false.into(), done: false.into() };
    let mut off = 0;
    let mut ready_sent = false;
    let mut err_at = 0u64;
    let mut err_text = String::new();
    let port = port_of(&s);
    while Instant::now() < p.deadline {
        match ping(&mut s, port, &mut off, 256, &w) {
            Ok(_) => {
                if !ready_sent {
                    ready_sent = true;
                    println!("@@ready");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                err_at = wall_ns();
                err_text = e;
                break;
            }
        }
    }
    let mut back_at = 0u64;
    while err_at > 0 && Instant::now() < p.deadline {
        if let Ok(mut s2) = detsvc::connect(p.addr, Duration::from_millis(200)) {
            let mut o = 0;
            let port = port_of(&s2);
            if ping(&mut s2, port, &mut o, 256, &w).is_ok() {
                back_at = wall_ns();
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let kill = wait_kill(ctl);
    println!(
        "@@result port={} ok={} error_after_ms={} reconnected_after_ms={} error={}",
        port_of(&s),
        u8::from(err_at == 0),
        err_at.saturating_sub(kill) / 1_000_000,
        back_at.saturating_sub(kill) / 1_000_000,
        err_text.replace(' ', "_")
    );
    println!("@@summary conns=1 failed={}", u8::from(err_at != 0));
    println!("@@done");
}

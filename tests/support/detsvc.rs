//! The deterministic test service for takeover tests (test-only).
//!
//! Bytes are pure functions of stream offsets: the server's byte at
//! server→client offset `i` is `sgen(port, i)`, the client's byte at
//! client→server offset `i` is `cgen(port, i)` (`port` = the client's port,
//! so connections differ). The server is stateless apart from its two
//! offsets: a copy on the backup is handed a rebuilt socket plus
//! `(in_off, out_off)` and carries on. An echo server's output is the
//! client's bytes (`cgen`), so the client checks both directions.
//!
//! The client measures stalls with a sampler thread reading `TCP_INFO` and
//! `SIOCOUTQ`: a client→server stall is time with unacknowledged data and no
//! `bytes_acked` progress; a server→client stall is time the client expects
//! data (an echo is due, a download is running) and `bytes_received` does
//! not move. Gaps are clipped at the kill instant the test sends, so the
//! figure is what the client saw from the failure on.
#![allow(dead_code)]

use std::io::{BufRead, Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock nanoseconds (CLOCK_REALTIME is shared by all test hosts).
pub fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn gen_fill(seed: u64, off: u64, buf: &mut [u8]) {
    let mut i = off;
    let mut k = 0;
    while k < buf.len() {
        let block = mix(seed ^ (i >> 3).wrapping_mul(0x2545_F491_4F6C_DD1D));
        let bytes = block.to_le_bytes();
        let start = (i & 7) as usize;
        let n = (8 - start).min(buf.len() - k);
        buf[k..k + n].copy_from_slice(&bytes[start..start + n]);
        k += n;
        i += n as u64;
    }
}

/// Server→client bytes from offset `off`.
pub fn sgen(port: u16, off: u64, buf: &mut [u8]) {
    gen_fill(0x5E00_0000_0000_0000 | u64::from(port), off, buf)
}

/// Client→server bytes from offset `off`.
pub fn cgen(port: u16, off: u64, buf: &mut [u8]) {
    gen_fill(0xC100_0000_0000_0000 | u64::from(port), off, buf)
}

/// Server output bytes `[from, to)` for `spec`.
pub fn server_bytes(spec: &ServerSpec, port: u16, from: u64, to: u64) -> Vec<u8> {
    let mut v = vec![0u8; to.saturating_sub(from) as usize];
    if spec.echo {
        cgen(port, from, &mut v)
    } else {
        sgen(port, from, &mut v)
    }
    v
}

/// What the server does once its output reaches the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Stay open; close after the client's EOF (echo: once all is echoed).
    Keep,
    /// `close()` at once (an orphan if data is still queued).
    Close,
    /// `shutdown(SHUT_WR)`, close after the client's EOF.
    ShutWr,
}

/// Server behaviour, as `key=value,…` (`echo=1,limit=N,end=close,read=0,sndbuf=N`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Echo (output = client bytes) instead of a source (`sgen`).
    pub echo: bool,
    /// Output length for a source (`None` = unbounded).
    pub limit: Option<u64>,
    /// What happens at the limit.
    pub end: End,
    /// Read (and check) the client's bytes.
    pub read: bool,
    /// `SO_SNDBUFFORCE` for accepted sockets.
    pub sndbuf: Option<i32>,
    /// Serve every connection from one epoll thread (echo only; `eventsvc`).
    pub event: bool,
}

impl ServerSpec {
    /// Parses the `key=value,…` form.
    pub fn parse(s: &str) -> ServerSpec {
        let mut spec = ServerSpec { echo: false, limit: None, end: End::Keep, read: true, sndbuf: None, event: false };
        for kv in s.split(',').filter(|x| !x.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "echo" => spec.echo = v == "1",
                "limit" => spec.limit = v.parse().ok(),
                "end" => {
                    spec.end = match v {
                        "close" => End::Close,
                        "shutwr" => End::ShutWr,
                        _ => End::Keep,
                    }
                }
                "read" => spec.read = v != "0",
                "sndbuf" => spec.sndbuf = v.parse().ok(),
                "event" => spec.event = v == "1",
                _ => panic!("bad server spec key {k}"),
            }
        }
        spec
    }
}

struct Shared {
    in_pos: Mutex<(u64, bool)>,
    cv: Condvar,
    mismatch: AtomicBool,
}

/// Serves one connection from offsets `(in_off, out_off)`; prints
/// `@@conn port=… in=… out=… eof=… mismatch=… err=…` when it ends.
/// Returns when the connection is finished (or after `deadline`).
pub fn serve(stream: TcpStream, port: u16, in_off: u64, out_off: u64, spec: ServerSpec, deadline: Instant) {
    let _ = stream.set_nonblocking(false);
    if let Some(b) = spec.sndbuf {
        let _ = ftnet::sys::tcp_repair::force_buffers(stream.as_fd(), Some(b), None);
    }
    let shared =
        Arc::new(Shared { in_pos: Mutex::new((in_off, false)), cv: Condvar::new(), mismatch: AtomicBool::new(false) });
    let err = Arc::new(Mutex::new(String::new()));
    let reader = if spec.read {
        let s = stream.try_clone().expect("clone");
        let (sh, er) = (shared.clone(), err.clone());
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        Some(std::thread::Builder::new().stack_size(256 << 10).spawn(move || read_loop(s, port, sh, er, deadline)))
    } else {
        None
    };
    let mut w = stream;
    let mut out = out_off;
    let mut buf = vec![0u8; 64 << 10];
    let mut ended = false;
    while Instant::now() < deadline {
        let (in_pos, eof) = *shared.in_pos.lock().unwrap();
        let target = if spec.echo { in_pos } else { spec.limit.unwrap_or(u64::MAX) };
        if out < target {
            let n = ((target - out) as usize).min(buf.len());
            if spec.echo {
                cgen(port, out, &mut buf[..n])
            } else {
                sgen(port, out, &mut buf[..n])
            }
            match w.write(&buf[..n]) {
                Ok(k) => out += k as u64,
                Err(e) => {
                    *err.lock().unwrap() = format!("write: {e}");
                    break;
                }
            }
            continue;
        }
        let at_limit = !spec.echo && spec.limit.is_some();
        if at_limit && !ended {
            ended = true;
            match spec.end {
                End::Close => break,
                End::ShutWr => {
                    let _ = w.shutdown(Shutdown::Write);
                }
                End::Keep => {}
            }
        }
        if eof && (!spec.echo || out >= in_pos) {
            break;
        }
        if !spec.read && !spec.echo && !at_limit {
            break;
        }
        let g = shared.in_pos.lock().unwrap();
        let _ = shared.cv.wait_timeout(g, Duration::from_millis(100)).unwrap();
    }
    drop(w);
    let (in_pos, eof) = match reader {
        Some(Ok(h)) => {
            let _ = h.join();
            *shared.in_pos.lock().unwrap()
        }
        _ => *shared.in_pos.lock().unwrap(),
    };
    println!(
        "@@conn port={port} in={in_pos} out={out} eof={} mismatch={} err={}",
        u8::from(eof),
        u8::from(shared.mismatch.load(Ordering::Relaxed)),
        err.lock().unwrap().replace(' ', "_")
    );
}

fn read_loop(mut s: TcpStream, port: u16, sh: Arc<Shared>, err: Arc<Mutex<String>>, deadline: Instant) {
    let mut buf = vec![0u8; 64 << 10];
    let mut want = vec![0u8; 64 << 10];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => {
                sh.in_pos.lock().unwrap().1 = true;
                sh.cv.notify_all();
                return;
            }
            Ok(n) => {
                let mut g = sh.in_pos.lock().unwrap();
                cgen(port, g.0, &mut want[..n]);
                if want[..n] != buf[..n] {
                    sh.mismatch.store(true, Ordering::Relaxed);
                    println!("@@mismatch port={port} at={}", g.0);
                }
                g.0 += n as u64;
                drop(g);
                sh.cv.notify_all();
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => {
                *err.lock().unwrap() = format!("read: {e}");
                sh.in_pos.lock().unwrap().1 = true;
                sh.cv.notify_all();
                return;
            }
        }
    }
}

/// The primary's server: listens on `addr`, serves every connection from
/// offset 0 until `deadline`.
pub fn run_server(addr: SocketAddrV4, spec: ServerSpec, deadline: Instant) {
    let l = TcpListener::bind(addr).expect("bind service address");
    if spec.event {
        println!("@@listening");
        super::eventsvc::echo_loop(Some(l), Vec::new(), deadline);
        return;
    }
    l.set_nonblocking(true).expect("nonblocking listener");
    println!("@@listening");
    while Instant::now() < deadline {
        match l.accept() {
            Ok((s, peer)) => {
                let port = peer.port();
                let spec = spec.clone();
                let _ = std::thread::Builder::new()
                    .stack_size(256 << 10)
                    .spawn(move || serve(s, port, 0, 0, spec, deadline));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

// ---------------------------------------------------------------------------
// Client side.

/// Progress counters one sampler watches.
pub struct Watch {
    /// The connection.
    pub stream: TcpStream,
    /// The client expects server bytes now.
    pub expect_rx: AtomicBool,
    /// Finished (stop sampling).
    pub done: AtomicBool,
}

/// A no-progress interval `[start, end)` in wall ns; `open` if it never ended.
#[derive(Debug, Clone, Copy)]
pub struct Gap {
    pub start: u64,
    pub end: u64,
    pub open: bool,
}

#[derive(Default)]
struct DirState {
    last: u64,
    since: Option<u64>,
    gaps: Vec<Gap>,
}

impl DirState {
    fn sample(&mut self, now: u64, counter: u64, expecting: bool) {
        if counter != self.last {
            if let Some(s) = self.since.take() {
                self.gaps.push(Gap { start: s, end: now, open: false });
            }
            self.last = counter;
            self.since = expecting.then_some(now);
        } else if expecting {
            self.since.get_or_insert(now);
        } else {
            self.since = None;
        }
    }
    fn finish(&mut self, now: u64) {
        if let Some(s) = self.since.take() {
            self.gaps.push(Gap { start: s, end: now, open: true });
        }
    }
}

/// Gaps per watched connection: (rx gaps, tx gaps).
pub type Gaps = Vec<(Vec<Gap>, Vec<Gap>)>;

/// Samples every watch each `period` until all are done or `deadline`.
pub fn sample(watches: Vec<Arc<Watch>>, period: Duration, deadline: Instant) -> Gaps {
    let mut st: Vec<(DirState, DirState)> = watches.iter().map(|_| Default::default()).collect();
    while Instant::now() < deadline && !watches.iter().all(|w| w.done.load(Ordering::Relaxed)) {
        for (w, (rx, tx)) in watches.iter().zip(st.iter_mut()) {
            if w.done.load(Ordering::Relaxed) {
                continue;
            }
            let fd = w.stream.as_fd();
            let now = wall_ns();
            if let Ok(info) = ftnet::sys::tcp_repair::tcp_info(fd) {
                rx.sample(now, info.bytes_received, w.expect_rx.load(Ordering::Relaxed));
                let outq = ftnet::sys::tcp_repair::outq(fd).unwrap_or(0);
                tx.sample(now, info.bytes_acked, outq > 0);
            }
        }
        std::thread::sleep(period);
    }
    let now = wall_ns();
    st.into_iter()
        .map(|(mut rx, mut tx)| {
            rx.finish(now);
            tx.finish(now);
            (rx.gaps, tx.gaps)
        })
        .collect()
}

/// The longest part of any gap after `kill` (ns), and whether a gap never ended.
pub fn stall_after(gaps: &[Gap], kill: u64) -> (u64, bool) {
    let mut worst = 0;
    let mut open = false;
    for g in gaps.iter().filter(|g| g.end > kill) {
        worst = worst.max(g.end - g.start.max(kill));
        open |= g.open;
    }
    (worst, open)
}

/// Control lines from the test on stdin: `kill NS`, `go`.
pub struct Control {
    pub kill_ns: AtomicU64,
    pub go: AtomicBool,
}

/// Starts a thread reading control lines from stdin.
pub fn control() -> Arc<Control> {
    let c = Arc::new(Control { kill_ns: AtomicU64::new(0), go: AtomicBool::new(false) });
    let c2 = c.clone();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines().map_while(Result::ok).take(100) {
            let mut it = line.split_whitespace();
            match (it.next(), it.next()) {
                (Some("kill"), Some(ns)) => c2.kill_ns.store(ns.parse().unwrap_or(0), Ordering::SeqCst),
                (Some("go"), _) => c2.go.store(true, Ordering::SeqCst),
                _ => {}
            }
        }
    });
    c
}

/// Waits until `flag` (bounded by `deadline`); false on timeout.
pub fn wait_flag(flag: &AtomicBool, deadline: Instant) -> bool {
    while !flag.load(Ordering::SeqCst) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// Reads exactly `n` bytes and checks them against `gen` from `off`.
pub fn read_check(
    s: &mut TcpStream,
    n: usize,
    off: u64,
    g: impl Fn(u64, &mut [u8]),
    buf: &mut [u8],
) -> Result<(), String> {
    let mut got = 0;
    let mut want = vec![0u8; buf.len()];
    while got < n {
        let k = (n - got).min(buf.len());
        let r = s.read(&mut buf[..k]).map_err(|e| format!("read at {}: {e}", off + got as u64))?;
        if r == 0 {
            return Err(format!("EOF at {} (wanted {})", off + got as u64, off + n as u64));
        }
        g(off + got as u64, &mut want[..r]);
        if want[..r] != buf[..r] {
            return Err(format!("wrong bytes at {}", off + got as u64));
        }
        got += r;
    }
    Ok(())
}

/// Connects with a bounded timeout.
pub fn connect(addr: SocketAddrV4, timeout: Duration) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&addr.into(), timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    // No client call may hang the test: every read and write is bounded.
    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    Ok(s)
}

/// Writes all of `data`, returning an error string on failure.
pub fn write_all(s: &mut TcpStream, data: &[u8]) -> Result<(), String> {
    s.write_all(data).map_err(|e| format!("write: {e}"))
}

//! Single-threaded, epoll-driven ping/echo for many connections (test-only:
//! the 1,000- and 10,000-connection takeovers, where a thread per connection
//! would exceed the pid limit). Same bytes as `detsvc`: the client's byte at
//! offset `i` is `cgen(port, i)`, the echo returns it unchanged.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use super::detsvc::{cgen, wall_ns};

const IN: u32 = libc::EPOLLIN as u32;

struct EchoConn {
    s: TcpStream,
    port: u16,
    in_pos: u64,
    out_pos: u64,
    bad: bool,
}

/// Echoes on every connection handed in (plus, with `listener`, every one it
/// accepts) until `deadline`; prints one `@@echo conns=… bytes=… mismatches=… errors=…`.
pub fn echo_loop(listener: Option<TcpListener>, start: Vec<(TcpStream, u64, u64)>, deadline: Instant) {
    let ep = ftnet::sys::fd::epoll_create().expect("epoll");
    let mut conns: HashMap<u64, EchoConn> = HashMap::new();
    let mut next = 1u64;
    let add = |conns: &mut HashMap<u64, EchoConn>, next: &mut u64, s: TcpStream, in_pos: u64, out_pos: u64| {
        let _ = s.set_nonblocking(true);
        let port = s.peer_addr().map(|a| a.port()).unwrap_or(0);
        if ftnet::sys::fd::epoll_ctl(ep.as_fd(), libc::EPOLL_CTL_ADD, s.as_fd(), IN, *next).is_ok() {
            conns.insert(*next, EchoConn { s, port, in_pos, out_pos, bad: false });
            *next += 1;
        }
    };
    if let Some(l) = &listener {
        let _ = l.set_nonblocking(true);
        let _ = ftnet::sys::fd::epoll_ctl(ep.as_fd(), libc::EPOLL_CTL_ADD, l.as_fd(), IN, 0);
    }
    for (s, i, o) in start {
        add(&mut conns, &mut next, s, i, o);
    }
    // Catch up the echo owed at takeover (bytes read by the primary beyond its output).
    for c in conns.values_mut() {
        flush(c);
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buf = vec![0u8; 64 << 10];
    let mut want = vec![0u8; 64 << 10];
    let (mut bytes, mut errors) = (0u64, 0u64);
    while Instant::now() < deadline {
        let n = ftnet::sys::fd::epoll_wait(ep.as_fd(), &mut events, 50).unwrap_or(0);
        for ev in &events[..n] {
            let key = ev.u64;
            if key == 0 {
                while let Some(Ok((s, _))) = listener.as_ref().map(TcpListener::accept) {
                    add(&mut conns, &mut next, s, 0, 0);
                }
                continue;
            }
            let Some(c) = conns.get_mut(&key) else { continue };
            let mut close = false;
            for _ in 0..64 {
                match c.s.read(&mut buf) {
                    Ok(0) => {
                        close = true;
                        break;
                    }
                    Ok(k) => {
                        cgen(c.port, c.in_pos, &mut want[..k]);
                        if want[..k] != buf[..k] {
                            c.bad = true;
                        }
                        c.in_pos += k as u64;
                        bytes += k as u64;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        errors += 1;
                        close = true;
                        break;
                    }
                }
            }
            flush(c);
            if close {
                let _ = ftnet::sys::fd::epoll_ctl(ep.as_fd(), libc::EPOLL_CTL_DEL, c.s.as_fd(), 0, 0);
            }
        }
    }
    let bad = conns.values().filter(|c| c.bad).count();
    println!("@@echo conns={} bytes={bytes} mismatch={bad} errors={errors}", conns.len());
}

fn flush(c: &mut EchoConn) {
    let mut b = [0u8; 4096];
    // Bounded: at most the owed bytes, 4 KiB at a time; stops at EAGAIN.
    while c.out_pos < c.in_pos {
        let n = ((c.in_pos - c.out_pos) as usize).min(b.len());
        cgen(c.port, c.out_pos, &mut b[..n]);
        match c.s.write(&b[..n]) {
            Ok(k) if k > 0 => c.out_pos += k as u64,
            _ => break,
        }
    }
}

/// Client: opens `conns` connections, pings 256 bytes on each every
/// `period` until `go` + 3 s, measuring every RTT with wall-clock stamps.
/// Returns per connection (max RTT overlapping `kill` once known, errors).
pub struct PingResult {
    pub conns: usize,
    pub connected: usize,
    pub errors: Vec<String>,
    /// Per connection: (send wall ns, rtt ns) of the worst ping.
    pub worst: Vec<(u64, u64)>,
    /// Per connection: every (send wall ns, receive wall ns) that took > 20 ms.
    pub slow: Vec<Vec<(u64, u64)>>,
}

struct PingConn {
    s: TcpStream,
    port: u16,
    off: u64,
    got: u64,
    sent_at: Option<u64>,
    next_at: Instant,
}

/// Runs the pinger; `ready` is called once every connection has one echo;
/// `go()` tells when to finish (3 s later: a ping lost with the primary may
/// wait for a backed-off retransmission).
pub fn ping_loop(
    addr: SocketAddrV4,
    conns: usize,
    period: Duration,
    deadline: Instant,
    mut ready: impl FnMut(),
    go: impl Fn() -> bool,
) -> PingResult {
    let ep = ftnet::sys::fd::epoll_create().expect("epoll");
    let mut res = PingResult {
        conns,
        connected: 0,
        errors: Vec::new(),
        worst: vec![(0, 0); conns],
        slow: vec![Vec::new(); conns],
    };
    let mut cs: Vec<Option<PingConn>> = Vec::with_capacity(conns);
    let start = Instant::now();
    for i in 0..conns {
        match TcpStream::connect_timeout(&addr.into(), Duration::from_secs(10)) {
            Ok(s) => {
                let _ = s.set_nonblocking(true);
                let port = s.local_addr().map(|a| a.port()).unwrap_or(0);
                let _ = ftnet::sys::fd::epoll_ctl(ep.as_fd(), libc::EPOLL_CTL_ADD, s.as_fd(), IN, i as u64);
                let phase = period.mul_f64((i % 97) as f64 / 97.0);
                cs.push(Some(PingConn { s, port, off: 0, got: 0, sent_at: None, next_at: start + phase }));
                res.connected += 1;
            }
            Err(e) => {
                res.errors.push(format!("connect: {e}"));
                cs.push(None);
            }
        }
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buf = vec![0u8; 4096];
    let mut want = vec![0u8; 4096];
    let mut ping = [0u8; 256];
    let mut readied = false;
    let mut go_at: Option<Instant> = None;
    while Instant::now() < deadline {
        if go_at.is_none() && go() {
            go_at = Some(Instant::now());
        }
        // After go + 3 s no new pings; the loop ends once every outstanding
        // echo is back (at most 2 s more).
        let draining = go_at.is_some_and(|g| g.elapsed() > Duration::from_millis(3000));
        if draining
            && (cs.iter().flatten().all(|c| c.sent_at.is_none())
                || go_at.is_some_and(|g| g.elapsed() > Duration::from_millis(5000)))
        {
            break;
        }
        let now = Instant::now();
        for c in cs.iter_mut().flatten() {
            if !draining && c.sent_at.is_none() && now >= c.next_at {
                cgen(c.port, c.off, &mut ping);
                // A 256-byte write to a socket with room never splits.
                if let Ok(256) = c.s.write(&ping) {
                    c.off += 256;
                    c.sent_at = Some(wall_ns());
                }
            }
        }
        if !readied && cs.iter().flatten().all(|c| c.got >= 256) {
            readied = true;
            ready();
        }
        let n = ftnet::sys::fd::epoll_wait(ep.as_fd(), &mut events, 2).unwrap_or(0);
        for ev in &events[..n] {
            let i = ev.u64 as usize;
            let Some(Some(c)) = cs.get_mut(i) else { continue };
            loop {
                match c.s.read(&mut buf) {
                    Ok(0) => {
                        res.errors.push(format!("port {}: EOF", c.port));
                        cs[i] = None;
                        break;
                    }
                    Ok(k) => {
                        cgen(c.port, c.got, &mut want[..k]);
                        if want[..k] != buf[..k] {
                            res.errors.push(format!("port {}: wrong echo at {}", c.port, c.got));
                        }
                        c.got += k as u64;
                        if c.got == c.off
                            && let Some(t) = c.sent_at.take()
                        {
                            let now = wall_ns();
                            let rtt = now.saturating_sub(t);
                            if rtt > res.worst[i].1 {
                                res.worst[i] = (t, rtt);
                            }
                            if rtt > 20_000_000 {
                                res.slow[i].push((t, now));
                            }
                            c.next_at = Instant::now() + period;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        res.errors.push(format!("port {}: {e}", c.port));
                        cs[i] = None;
                        break;
                    }
                }
            }
        }
    }
    for c in cs.iter().flatten() {
        if let Some(t) = c.sent_at {
            res.errors.push(format!("port {}: ping sent at {t} never echoed", c.port));
        }
    }
    res
}

//! A minimal blocking HTTP/1.1 JSON client for etcd's gateway, and base64.
//!
//! Invariants:
//! - every call finishes by its deadline: connects use `connect_timeout`,
//!   every read and write has the time left as its timeout;
//! - responses are bounded ([`MAX_HEAD`], [`MAX_BODY`]); `Content-Length`
//!   and chunked bodies are both read exactly, so a kept-alive connection
//!   stays in step (any doubt closes it);
//! - a failure to reach one endpoint moves on to the next; an HTTP error
//!   status is returned with its body.

use super::WitnessError;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Most bytes of a status line and headers.
const MAX_HEAD: usize = 16 << 10;
/// Most bytes of a response body.
const MAX_BODY: usize = 1 << 20;

/// An `http://HOST:PORT` endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub url: String,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, WitnessError> {
        let bad = || {
            WitnessError::Invalid(format!(
                "etcd endpoint {url:?} must be http://HOST:PORT (plain HTTP; https is not supported)"
            ))
        };
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() || host.contains(['/', '@', ' ']) || port == 0 {
            return Err(bad());
        }
        Ok(Endpoint { url: url.to_string(), host: host.to_string(), port })
    }
}

/// Posts JSON to one of several endpoints over a kept-alive connection.
#[derive(Debug)]
pub(crate) struct Http {
    endpoints: Vec<Endpoint>,
    /// The endpoint tried first (the last that worked).
    current: usize,
    conn: Option<BufReader<TcpStream>>,
}

fn timeout_err(endpoint: &Endpoint, what: &str) -> WitnessError {
    WitnessError::Etcd { endpoint: endpoint.url.clone(), what: format!("{what}: timed out") }
}

fn left(deadline: Instant) -> Option<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    (!d.is_zero()).then_some(d)
}

impl Http {
    pub fn new(endpoints: &[String]) -> Result<Http, WitnessError> {
        let endpoints = endpoints.iter().map(|e| Endpoint::parse(e)).collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(WitnessError::Invalid("no etcd endpoint".into()));
        }
        Ok(Http { endpoints, current: 0, conn: None })
    }

    /// The endpoint in use (for messages).
    pub fn endpoint(&self) -> &str {
        &self.endpoints[self.current].url
    }

    /// POSTs `body` to `path`; returns the status and the parsed JSON body.
    /// Tries each endpoint once, starting with the last that worked.
    pub fn post(
        &mut self,
        path: &str,
        body: &serde_json::Value,
        deadline: Instant,
    ) -> Result<(u16, serde_json::Value), WitnessError> {
        let body = body.to_string();
        let mut last_err = None;
        for i in 0..self.endpoints.len() {
            let idx = (self.current + i) % self.endpoints.len();
            if idx != self.current {
                self.conn = None;
            }
            // A kept-alive connection the server has closed fails at once:
            // try that endpoint again on a fresh connection. (Repeating a
            // request is harmless here: txns compare revisions, a repeated
            // lease grant only leaves a lease that expires.)
            let attempts = if self.conn.is_some() { 2 } else { 1 };
            for _ in 0..attempts {
                match self.exchange(idx, path, &body, deadline) {
                    Ok(r) => {
                        self.current = idx;
                        return Ok(r);
                    }
                    // The endpoint answered: a client error is final; a
                    // server error (no leader, ...) may be better elsewhere.
                    Err(e @ WitnessError::EtcdStatus { status: 400..=499, .. }) => return Err(e),
                    Err(e @ WitnessError::EtcdStatus { .. }) => {
                        last_err = Some(e);
                        break;
                    }
                    Err(e) => {
                        self.conn = None;
                        last_err = Some(e);
                    }
                }
                if left(deadline).is_none() {
                    break;
                }
            }
            if left(deadline).is_none() {
                break;
            }
        }
        Err(last_err.unwrap_or_else(|| timeout_err(&self.endpoints[self.current], path)))
    }

    fn connect(&self, ep: &Endpoint, deadline: Instant) -> Result<TcpStream, WitnessError> {
        let fail = |what: String| WitnessError::Etcd { endpoint: ep.url.clone(), what };
        let addrs = (ep.host.as_str(), ep.port).to_socket_addrs().map_err(|e| fail(format!("resolve: {e}")))?;
        let mut err = fail("resolves to no address".into());
        for a in addrs {
            let Some(t) = left(deadline) else { return Err(timeout_err(ep, "connect")) };
            match TcpStream::connect_timeout(&a, t) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => err = fail(format!("connect {a}: {e}")),
            }
        }
        Err(err)
    }

    fn exchange(
        &mut self,
        idx: usize,
        path: &str,
        body: &str,
        deadline: Instant,
    ) -> Result<(u16, serde_json::Value), WitnessError> {
        let ep = self.endpoints[idx].clone();
        let io = |what: &str, e: std::io::Error| {
            if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
                timeout_err(&ep, what)
            } else {
                WitnessError::Etcd { endpoint: ep.url.clone(), what: format!("{what}: {e}") }
            }
        };
        let conn = match self.conn.take() {
            Some(c) => c,
            None => BufReader::new(self.connect(&ep, deadline)?),
        };
        let mut conn = conn;
        let t = left(deadline).ok_or_else(|| timeout_err(&ep, path))?;
        conn.get_ref().set_write_timeout(Some(t)).map_err(|e| io("set timeout", e))?;
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            ep.host,
            ep.port,
            body.len()
        );
        conn.get_mut().write_all(req.as_bytes()).map_err(|e| io("send", e))?;
        let (status, close, bytes) = read_response(&mut conn, deadline).map_err(|e| io(path, e))?;
        if !close {
            self.conn = Some(conn);
        }
        let text = String::from_utf8_lossy(&bytes);
        if status != 200 {
            return Err(WitnessError::EtcdStatus {
                endpoint: ep.url.clone(),
                what: path.to_string(),
                status,
                body: text.trim().chars().take(500).collect(),
            });
        }
        let v = serde_json::from_str(text.trim())
            .map_err(|e| WitnessError::Etcd { endpoint: ep.url.clone(), what: format!("{path}: bad JSON: {e}") })?;
        Ok((status, v))
    }
}

fn bad(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Reads one line (through `\n`) with the time left as the timeout, within
/// `budget` bytes.
fn read_line<R: BufRead + ?Sized>(
    r: &mut R,
    budget: &mut usize,
    deadline: Instant,
    set_timeout: &dyn Fn(Duration) -> std::io::Result<()>,
) -> std::io::Result<String> {
    let mut line = Vec::new();
    loop {
        let t = left(deadline).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::TimedOut))?;
        set_timeout(t)?;
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if take > *budget {
            return Err(bad("response head too long".into()));
        }
        *budget -= take;
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            let s = String::from_utf8(line).map_err(|_| bad("response head is not UTF-8".into()))?;
            return Ok(s.trim_end_matches(['\r', '\n']).to_string());
        }
    }
}

fn read_exact_by<R: Read + ?Sized>(
    r: &mut R,
    n: usize,
    out: &mut Vec<u8>,
    deadline: Instant,
    set_timeout: &dyn Fn(Duration) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut need = n;
    let mut buf = [0u8; 8192];
    while need > 0 {
        let t = left(deadline).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::TimedOut))?;
        set_timeout(t)?;
        let k = r.read(&mut buf[..need.min(8192)])?;
        if k == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        out.extend_from_slice(&buf[..k]);
        need -= k;
    }
    Ok(())
}

/// Reads a response: status, whether the server closes the connection,
/// and the body.
fn read_response(conn: &mut BufReader<TcpStream>, deadline: Instant) -> std::io::Result<(u16, bool, Vec<u8>)> {
    let sock = conn.get_ref().try_clone()?;
    let set = move |t: Duration| sock.set_read_timeout(Some(t));
    parse_response(conn, deadline, &set)
}

fn parse_response<R: BufRead>(
    r: &mut R,
    deadline: Instant,
    set: &dyn Fn(Duration) -> std::io::Result<()>,
) -> std::io::Result<(u16, bool, Vec<u8>)> {
    let mut budget = MAX_HEAD;
    let status_line = read_line(r, &mut budget, deadline, set)?;
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("not an HTTP/1 response: {status_line:?}")));
    }
    let status: u16 = code.parse().map_err(|_| bad(format!("bad status line {status_line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    loop {
        let line = read_line(r, &mut budget, deadline, set)?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad(format!("bad header line {line:?}")));
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" => {
                length = Some(value.parse::<usize>().map_err(|_| bad(format!("bad Content-Length {value:?}")))?)
            }
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => close |= value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let line = read_line(r, &mut budget, deadline, set)?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, then the blank line.
                while !read_line(r, &mut budget, deadline, set)?.is_empty() {}
                break;
            }
            if size > MAX_BODY - body.len() {
                return Err(bad(format!("response body above {MAX_BODY} bytes")));
            }
            read_exact_by(r, size, &mut body, deadline, set)?;
            if !read_line(r, &mut budget, deadline, set)?.is_empty() {
                return Err(bad("chunk not followed by CRLF".into()));
            }
        }
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(bad(format!("response body of {n} bytes, above {MAX_BODY}")));
        }
        read_exact_by(r, n, &mut body, deadline, set)?;
    } else {
        // Until the server closes.
        close = true;
        let mut chunk = Vec::new();
        loop {
            match read_exact_by(r, 1, &mut chunk, deadline, set) {
                Ok(()) if chunk.len() > MAX_BODY => return Err(bad("response body too long".into())),
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
        }
        body = chunk;
    }
    Ok((status, close, body))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub(crate) fn b64encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(c.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(c.get(2).copied().unwrap_or(0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); `None` if malformed.
pub(crate) fn b64decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 {
        return None;
    }
    let val = |c: u8| B64.iter().position(|&b| b == c).map(|p| p as u32);
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for c in s.chunks(4) {
        let mut n = 0u32;
        for (i, &b) in c.iter().enumerate() {
            n |= val(b)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..c.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        for (plain, enc) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("/x/a", "L3gvYQ==")]
        {
            assert_eq!(b64encode(plain.as_bytes()), enc);
            assert_eq!(b64decode(enc).as_deref(), Some(plain.as_bytes()));
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(b64decode(&b64encode(&all)).unwrap(), all);
        assert_eq!(b64decode("Zg"), Some(b"f".to_vec()));
        assert_eq!(b64decode("Z"), None);
        assert_eq!(b64decode("Z!=="), None);
    }

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://10.79.0.3:2379").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("10.79.0.3", 2379));
        let e = Endpoint::parse("http://[::1]:2379/").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 2379));
        for bad in ["https://x:1", "x:1", "http://x", "http://:1", "http://x:0", "http://x:99999", "http://a/b:1"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    fn parse(text: &str) -> std::io::Result<(u16, bool, Vec<u8>)> {
        let mut r = std::io::BufReader::new(text.as_bytes());
        parse_response(&mut r, Instant::now() + Duration::from_secs(5), &|_| Ok(()))
    }

    #[test]
    fn responses() {
        let (s, c, b) = parse("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((s, c, b.as_slice()), (200, false, &b"{}"[..]));
        let chunked = "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nTrailer: X\r\n\r\n3\r\n{\"a\r\n\
                       4\r\n\":1}\r\n0\r\nGrpc-Trailer-Content-Type: application/grpc\r\n\r\n";
        let (s, c, b) = parse(chunked).unwrap();
        assert_eq!((s, c, b.as_slice()), (404, false, &b"{\"a\":1}"[..]));
        let (_, c, b) = parse("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc").unwrap();
        assert_eq!((c, b.as_slice()), (true, &b"abc"[..]));
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab").is_err());
        assert!(parse("SSH-2.0\r\n\r\n").is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
        assert!(parse(&format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1)).is_err());
        // A chunk size near usize::MAX is refused, not added up (no overflow).
        let huge = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\nffffffffffffffff\r\n";
        assert!(parse(huge).unwrap_err().to_string().contains("above"));
        assert!(parse(&format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD))).is_err());
    }
}

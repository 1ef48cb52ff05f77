//! Errors of the record/replay engine and the divergence report.
//!
//! A [`Divergence`] is what replay found different from the recording; it
//! names the process and thread (virtual ids), the syscall index and name,
//! the descriptor (and path), the byte offset and an excerpt of expected
//! versus actual. `ftnet replay` prints it and exits 3; every other
//! [`EngineError`] exits 1.

use crate::replica::digest::{Difference, Digest};
use crate::replica::log::LogError;
use crate::sys::SysError;
use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("refused: {call} by {process}: {why}")]
    Refused { call: String, process: String, why: String },
    #[error("replay diverged from the recording:\n{0}")]
    Divergence(Box<Divergence>),
    #[error("{0}")]
    Setup(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// The exit status `ftnet replay` uses for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            EngineError::Divergence(_) => 3,
            _ => 1,
        }
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;

/// What differed, where.
#[derive(Debug, Default)]
pub struct Divergence {
    /// `pid 2 (nginx) thread 3`.
    pub thread: String,
    /// Index of the intercepted call in the log (0-based), when known.
    pub index: Option<u64>,
    pub syscall: String,
    pub what: String,
    pub fd: Option<i32>,
    pub path: Option<String>,
    pub offset: Option<u64>,
    pub expected: String,
    pub actual: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  what:     {}", self.what)?;
        writeln!(f, "  thread:   {}", self.thread)?;
        if let Some(i) = self.index {
            writeln!(f, "  syscall:  #{i} {}", self.syscall)?;
        } else if !self.syscall.is_empty() {
            writeln!(f, "  syscall:  {}", self.syscall)?;
        }
        if let Some(fd) = self.fd {
            match &self.path {
                Some(p) => writeln!(f, "  fd:       {fd} ({p})")?,
                None => writeln!(f, "  fd:       {fd}")?,
            }
        }
        if let Some(o) = self.offset {
            writeln!(f, "  offset:   {o}")?;
        }
        writeln!(f, "  expected: {}", self.expected)?;
        write!(f, "  actual:   {}", self.actual)
    }
}

/// Renders bytes for a report: printable ASCII as is, the rest escaped.
pub fn excerpt(b: &[u8]) -> String {
    let mut s = String::from("\"");
    for &c in b.iter().take(48) {
        match c {
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'"' => s.push_str("\\\""),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s.push('"');
    if b.len() > 48 {
        s.push_str(&format!("… ({} bytes)", b.len()));
    }
    s
}

/// Fills `d` with where `expected` and the actual bytes differ. `base` is the
/// stream offset of the first byte.
pub fn describe_bytes(d: &mut Divergence, expected: &Digest, actual_bytes: &[u8], base: u64) {
    let actual = Digest::of(actual_bytes);
    let at = match expected.first_difference(&actual) {
        Some(Difference::At(i)) => {
            d.what.push_str(&format!(" (first difference at byte {i} of the call)"));
            i
        }
        Some(Difference::Within(a, b)) => {
            d.what.push_str(&format!(" (first difference within bytes {a}..{b} of the call)"));
            a
        }
        Some(Difference::Length { expected: e, actual: a }) => {
            d.what.push_str(&format!(" (length {a}, recording had {e})"));
            e.min(a)
        }
        None => 0,
    };
    d.offset = Some(base + at);
    let from = (at as usize).min(actual_bytes.len());
    d.actual = format!("{} byte(s), at the difference: {}", actual_bytes.len(), excerpt(&actual_bytes[from..]));
    let head_from = (at as usize).min(expected.head.len());
    d.expected = if head_from < expected.head.len() {
        format!("{} byte(s), at the difference: {}", expected.len, excerpt(&expected.head[head_from..]))
    } else {
        format!(
            "{} byte(s) with digest {} (the log keeps only the first {} bytes: {})",
            expected.len,
            hex(&expected.hash),
            expected.head.len(),
            excerpt(&expected.head)
        )
    };
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_offset_and_excerpts() {
        let expected = Digest::of(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        let mut d = Divergence { what: "output differs".into(), ..Default::default() };
        describe_bytes(&mut d, &expected, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHELLO", 100);
        assert_eq!(d.offset, Some(100 + 16), "the head covers 16 bytes; the rest is located by chunk");
        let text = d.to_string();
        assert!(text.contains("expected:"), "{text}");
        let mut d = Divergence::default();
        describe_bytes(&mut d, &expected, b"HTTP/1.0 200 OK", 0);
        assert_eq!(d.offset, Some(7));
        assert!(d.expected.contains("\"1 200 OK"), "{}", d.expected);
        assert!(d.actual.contains("\"0 200 OK"), "{}", d.actual);
    }
}

//! The log: what the primary records and the backup replays.
//!
//! File layout: the 12-byte preamble `FTNETLOG`, format version (u16 LE),
//! flags (u16 LE); then frames `kind: u8 | len: u32 LE | crc32: u32 LE | body`,
//! where the CRC covers kind, length and body, and the body is postcard. The
//! first frame is the [`Header`], then zero or more [`StateEntry`] frames,
//! then [`Event`] frames in the one tree-wide order, ending with
//! [`Event::End`].
//!
//! Invariants:
//! - a frame's length is checked against [`MAX_FRAME`] before anything is
//!   allocated, and its CRC before its body is decoded;
//! - every error names the byte offset of the frame that failed;
//! - records carry only what replay cannot compute: results and input bytes;
//!   outputs travel as [`Digest`]s;
//! - threads and processes are named by virtual ids (creation order), never by
//!   host pids.

use super::digest::Digest;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

pub const MAGIC: &[u8; 8] = b"FTNETLOG";
pub const FORMAT: u16 = 1;
/// The largest frame body accepted.
pub const MAX_FRAME: usize = 64 << 20;

/// A virtual thread id: the thread's creation index in the replica tree (the
/// root thread is 0).
pub type Vid = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Header = 1,
    State = 2,
    Event = 3,
}

/// A file whose contents must be identical on both nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub path: Vec<u8>,
    pub blake3: [u8; 32],
}

/// What the replay needs to start the same process in the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The path given to `execve` (it becomes `AT_EXECFN`).
    pub exe: Vec<u8>,
    pub argv: Vec<Vec<u8>>,
    pub env: Vec<Vec<u8>>,
    pub cwd: Vec<u8>,
    /// `(resource, soft, hard)` for every resource limit.
    pub rlimits: Vec<(i32, u64, u64)>,
    pub umask: u32,
    /// The executable, its interpreter and the libraries it names.
    pub files: Vec<FileDigest>,
    /// Kernel release and transparent-hugepage mode of the recording host.
    pub kernel: String,
    pub thp: String,
    /// Directories the replica writes, snapshotted before it started.
    pub state_dirs: Vec<Vec<u8>>,
    pub started_unix_ms: u64,
}

/// One entry of a snapshotted state directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateEntry {
    /// Index into [`Header::state_dirs`].
    pub dir: u32,
    /// Path relative to that directory.
    pub path: Vec<u8>,
    pub mode: u32,
    pub kind: StateKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateKind {
    Dir,
    File(Vec<u8>),
    Symlink(Vec<u8>),
}

/// Memory the supervisor wrote into the replica as part of a call's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mem {
    pub addr: u64,
    pub bytes: Vec<u8>,
}

/// How the call was answered; replay answers the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// Return this value (negative: `-errno`).
    Ret(i64),
    /// The call ran natively in the replica; it runs natively on replay too.
    Continue,
    /// A new connection: the replica got descriptor `fd`. On replay it is a
    /// TCP_REPAIR placeholder bound to `local` (see `tcpstate`).
    Accepted { fd: i32, cloexec: bool, nonblock: bool, local: Vec<u8>, peer: Vec<u8> },
}

/// Which bytes a [`Check`] covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckKind {
    /// Bytes the replica wrote (to a socket, pipe or file).
    Output,
    /// Bytes the replica read from a local file; replay reads its own copy.
    FileInput,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub kind: CheckKind,
    /// Byte offset in the descriptor's stream (file position or bytes moved
    /// so far on that descriptor), for reports.
    pub offset: u64,
    pub digest: Digest,
}

/// One intercepted system call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    pub tid: Vid,
    pub nr: u16,
    /// CRC32 of the six raw arguments: replay checks it made the same call.
    pub args: u32,
    pub answer: Answer,
    pub mem: Vec<Mem>,
    pub check: Option<Check>,
}

/// How a thread or process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// One entry of the tree-wide ordered stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The token passes to thread `to`.
    Switch {
        to: Vid,
    },
    Call(Call),
    /// A new thread or process `child` was created by `parent`; `nspid` is
    /// its id inside the replica's PID namespace.
    Spawn {
        parent: Vid,
        child: Vid,
        nspid: i32,
        thread: bool,
    },
    /// `sig` is made pending on `tid` just before its current call is answered.
    Inject {
        tid: Vid,
        sig: i32,
    },
    /// `tid` takes signal `sig` with this 128-byte siginfo.
    Deliver {
        tid: Vid,
        sig: i32,
        info: Vec<u8>,
    },
    /// `tid` executed rdtsc (`aux: None`) or rdtscp.
    Rdtsc {
        tid: Vid,
        tsc: u64,
        aux: Option<u32>,
    },
    /// `tid` completed an execve; `random` is the AT_RANDOM block it got.
    Exec {
        tid: Vid,
        exe: Vec<u8>,
        digest: [u8; 32],
        random: [u8; 16],
    },
    /// The token holder `tid` ended.
    Exited {
        tid: Vid,
        how: Exit,
    },
    /// The replica tree is gone; `status` is what `ftnet record` exited with.
    End {
        status: i32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("not an ftnet log (bad magic)")]
    BadMagic,
    #[error("log format version {0} is not supported (this ftnet reads version {FORMAT})")]
    Version(u16),
    #[error("corrupt log at offset {offset}: {what}")]
    Corrupt { offset: u64, what: String },
    #[error("truncated log at offset {offset}: {what}")]
    Truncated { offset: u64, what: String },
    #[error("log ends at offset {0} without an end record (the recording was interrupted)")]
    NoEnd(u64),
}

/// Serializes a body (postcard cannot fail on these types except for I/O-free
/// size limits, which do not apply to `to_allocvec`).
fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).unwrap_or_default()
}

/// Encodes one frame.
pub fn frame(kind: FrameKind, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + body.len());
    out.push(kind as u8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind as u8]);
    h.update(&(body.len() as u32).to_le_bytes());
    h.update(body);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// The preamble of a log file.
pub fn preamble() -> Vec<u8> {
    let mut p = MAGIC.to_vec();
    p.extend_from_slice(&FORMAT.to_le_bytes());
    p.extend_from_slice(&0u16.to_le_bytes());
    p
}

/// Where records go: a file, or (for the live pair) the link.
pub trait Sink {
    fn put(&mut self, kind: FrameKind, body: &[u8]) -> Result<(), LogError>;
    fn flush(&mut self) -> Result<(), LogError>;
}

impl Sink for Box<dyn Sink> {
    fn put(&mut self, kind: FrameKind, body: &[u8]) -> Result<(), LogError> {
        (**self).put(kind, body)
    }
    fn flush(&mut self) -> Result<(), LogError> {
        (**self).flush()
    }
}

/// A sink that keeps nothing (a live replica nobody replicates).
pub struct NullSink;

impl Sink for NullSink {
    fn put(&mut self, _: FrameKind, _: &[u8]) -> Result<(), LogError> {
        Ok(())
    }
    fn flush(&mut self) -> Result<(), LogError> {
        Ok(())
    }
}

/// A log file, created mode 0600 (it holds every input byte, enough to derive
/// the replica's TLS keys).
pub struct FileSink {
    path: String,
    out: std::io::BufWriter<std::fs::File>,
}

impl FileSink {
    pub fn create(path: &std::path::Path) -> Result<FileSink, LogError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let name = path.display().to_string();
        let io = |source| LogError::Io { path: name.clone(), source };
        let f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io)?;
        // An existing file keeps its old mode on open: force 0600.
        f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
        out.write_all(&preamble()).map_err(io)?;
        Ok(FileSink { path: name, out })
    }
}

impl Sink for FileSink {
    fn put(&mut self, kind: FrameKind, body: &[u8]) -> Result<(), LogError> {
        self.out.write_all(&frame(kind, body)).map_err(|source| LogError::Io { path: self.path.clone(), source })
    }
    fn flush(&mut self) -> Result<(), LogError> {
        let io = |source| LogError::Io { path: self.path.clone(), source };
        self.out.flush().map_err(io)?;
        self.out.get_ref().sync_data().map_err(io)
    }
}

/// Writes typed records to a [`Sink`] and counts what it wrote.
pub struct Writer<S: Sink> {
    pub sink: S,
    pub events: u64,
    pub bytes: u64,
}

impl<S: Sink> Writer<S> {
    pub fn new(sink: S) -> Writer<S> {
        Writer { sink, events: 0, bytes: 0 }
    }
    pub fn header(&mut self, h: &Header) -> Result<(), LogError> {
        self.put(FrameKind::Header, &encode(h))
    }
    pub fn state(&mut self, e: &StateEntry) -> Result<(), LogError> {
        self.put(FrameKind::State, &encode(e))
    }
    pub fn event(&mut self, e: &Event) -> Result<(), LogError> {
        self.events += 1;
        self.put(FrameKind::Event, &encode(e))
    }
    fn put(&mut self, kind: FrameKind, body: &[u8]) -> Result<(), LogError> {
        if body.len() > MAX_FRAME {
            return Err(LogError::Corrupt {
                offset: self.bytes,
                what: format!("record of {} bytes exceeds {MAX_FRAME}", body.len()),
            });
        }
        self.bytes += 9 + body.len() as u64;
        self.sink.put(kind, body)
    }
}

/// A decoded frame.
#[derive(Debug)]
pub enum Frame {
    Header(Header),
    State(StateEntry),
    Event(Event),
}

/// Reads frames from a byte stream, checking everything before trusting it.
pub struct Reader<R: Read> {
    input: R,
    offset: u64,
    events: u64,
}

impl<R: Read> Reader<R> {
    /// Checks the preamble.
    pub fn new(mut input: R) -> Result<Reader<R>, LogError> {
        let mut p = [0u8; 12];
        let mut got = 0;
        while got < p.len() {
            match input.read(&mut p[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(LogError::Corrupt { offset: 0, what: e.to_string() }),
            }
        }
        if p[..got.min(8)] != MAGIC[..got.min(8)] {
            return Err(LogError::BadMagic);
        }
        if got < p.len() {
            return Err(LogError::Truncated { offset: 0, what: format!("preamble cut after {got} of 12 bytes") });
        }
        if &p[..8] != MAGIC {
            return Err(LogError::BadMagic);
        }
        let v = u16::from_le_bytes([p[8], p[9]]);
        if v != FORMAT {
            return Err(LogError::Version(v));
        }
        let flags = u16::from_le_bytes([p[10], p[11]]);
        if flags != 0 {
            return Err(LogError::Corrupt { offset: 10, what: format!("unknown preamble flags {flags:#x}") });
        }
        Ok(Reader { input, offset: 12, events: 0 })
    }

    /// Byte offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of events read so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The next frame, or `None` at a clean end of input.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, LogError> {
        let at = self.offset;
        let mut h = [0u8; 9];
        let mut got = 0;
        while got < h.len() {
            let n =
                self.input.read(&mut h[got..]).map_err(|e| LogError::Corrupt { offset: at, what: e.to_string() })?;
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                return Err(LogError::Truncated {
                    offset: at,
                    what: format!("frame header cut after {got} of 9 bytes"),
                });
            }
            got += n;
        }
        let kind = h[0];
        let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]) as usize;
        let crc = u32::from_le_bytes([h[5], h[6], h[7], h[8]]);
        if !(1..=3).contains(&kind) {
            return Err(LogError::Corrupt { offset: at, what: format!("unknown frame kind {kind}") });
        }
        if len > MAX_FRAME {
            return Err(LogError::Corrupt { offset: at, what: format!("frame length {len} exceeds {MAX_FRAME}") });
        }
        let mut body = vec![0u8; len];
        read_exact(&mut self.input, &mut body, at, "frame body")?;
        let mut c = crc32fast::Hasher::new();
        c.update(&h[..5]);
        c.update(&body);
        if c.finalize() != crc {
            return Err(LogError::Corrupt { offset: at, what: "checksum mismatch".into() });
        }
        self.offset += 9 + len as u64;
        let bad = |e: postcard::Error| LogError::Corrupt { offset: at, what: format!("undecodable record: {e}") };
        Ok(Some(match kind {
            1 => Frame::Header(postcard::from_bytes(&body).map_err(bad)?),
            2 => Frame::State(postcard::from_bytes(&body).map_err(bad)?),
            _ => {
                self.events += 1;
                Frame::Event(postcard::from_bytes(&body).map_err(bad)?)
            }
        }))
    }
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], at: u64, what: &str) -> Result<(), LogError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(LogError::Truncated {
                    offset: at,
                    what: format!("{what} cut after {got} of {} bytes", buf.len()),
                });
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(LogError::Corrupt { offset: at, what: e.to_string() }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem(Vec<u8>);
    impl Sink for Mem {
        fn put(&mut self, kind: FrameKind, body: &[u8]) -> Result<(), LogError> {
            self.0.extend_from_slice(&frame(kind, body));
            Ok(())
        }
        fn flush(&mut self) -> Result<(), LogError> {
            Ok(())
        }
    }

    fn sample() -> (Header, Vec<Event>) {
        let h = Header {
            exe: b"/bin/true".to_vec(),
            argv: vec![b"true".to_vec()],
            env: vec![b"A=1".to_vec()],
            cwd: b"/".to_vec(),
            rlimits: vec![(3, 8 << 20, u64::MAX)],
            umask: 0o22,
            files: vec![FileDigest { path: b"/bin/true".to_vec(), blake3: [7; 32] }],
            kernel: "6.18".into(),
            thp: "madvise".into(),
            state_dirs: vec![],
            started_unix_ms: 1,
        };
        let ev = vec![
            Event::Switch { to: 0 },
            Event::Call(Call {
                tid: 0,
                nr: 0,
                args: 42,
                answer: Answer::Ret(5),
                mem: vec![super::Mem { addr: 0x1000, bytes: b"hello".to_vec() }],
                check: None,
            }),
            Event::Call(Call {
                tid: 0,
                nr: 1,
                args: 43,
                answer: Answer::Continue,
                mem: vec![],
                check: Some(Check { kind: CheckKind::Output, offset: 0, digest: Digest::of(b"out") }),
            }),
            Event::Deliver { tid: 0, sig: 15, info: vec![1; 128] },
            Event::End { status: 0 },
        ];
        (h, ev)
    }

    fn encode_all() -> Vec<u8> {
        let (h, ev) = sample();
        let mut w = Writer::new(Mem(preamble()));
        w.header(&h).unwrap();
        for e in &ev {
            w.event(e).unwrap();
        }
        w.sink.0
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, LogError> {
        let mut r = Reader::new(bytes)?;
        let mut out = vec![];
        while let Some(f) = r.next_frame()? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn round_trip() {
        let (h, ev) = sample();
        let frames = decode_all(&encode_all()).unwrap();
        assert!(matches!(&frames[0], Frame::Header(x) if *x == h));
        for (f, e) in frames[1..].iter().zip(&ev) {
            assert!(matches!(f, Frame::Event(x) if x == e));
        }
        assert_eq!(frames.len(), 1 + ev.len());
    }

    #[test]
    fn every_flipped_byte_is_caught_and_every_cut_is_named() {
        let good = encode_all();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(decode_all(&bad).is_err(), "flip at {i} went unnoticed");
        }
        for cut in 1..good.len() {
            match decode_all(&good[..cut]) {
                Err(LogError::Truncated { .. }) | Err(LogError::BadMagic) => {}
                Ok(frames) => {
                    // A cut exactly between frames is a clean (shorter) stream.
                    assert!(!frames.is_empty() || cut == 12, "cut at {cut}");
                }
                Err(e) => panic!("cut at {cut}: unexpected {e}"),
            }
        }
    }

    #[test]
    fn oversized_length_rejected_before_allocation() {
        let mut bytes = preamble();
        bytes.push(3);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        match decode_all(&bytes) {
            Err(LogError::Corrupt { offset: 12, what }) => assert!(what.contains("exceeds"), "{what}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_not_a_log() {
        assert!(matches!(decode_all(b"GARBAGE GARBAGE"), Err(LogError::BadMagic)));
        assert!(matches!(decode_all(b"FTN"), Err(LogError::Truncated { .. })));
        let mut v = preamble();
        v[8] = 9;
        assert!(matches!(decode_all(&v), Err(LogError::Version(9))));
    }
}

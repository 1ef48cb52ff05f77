//! The ftnet witness wire format: one sealed UDP datagram per request and
//! per answer.
//!
//! # Datagram (big-endian)
//! | offset | size | field | rule |
//! |---|---|---|---|
//! | 0 | 4 | magic | `b"FTWN"` |
//! | 4 | 1 | version | [`VERSION`] (1) |
//! | 5 | 1 | kind | 1 request, 2 answer |
//! | 6 | 2 | flags | 0 (any bit set is rejected) |
//! | 8 | 16 | id | random per request; the answer echoes it |
//! | 24 | 16 | salt | random per datagram |
//! | 40 | 4 | len | body length, at most [`MAX_BODY`] |
//! | 44 | len | body | ciphertext of the postcard body ([`RequestBody`] or [`AnswerBody`]) |
//! | 44+len | 16 | tag | Poly1305 over the header (associated data) and the ciphertext |
//!
//! The header is checked (length first, then magic, version, kind, flags,
//! and that `len` matches the datagram's size exactly) before anything is
//! decrypted or allocated; the body is decoded only after the tag verifies,
//! and must be consumed exactly.
//!
//! # Keys
//! `request key = derive(master, "ftnet 2026-01 witness request v1")`,
//! `answer key = derive(master, "ftnet 2026-01 witness answer v1")`
//! (blake3 `derive_key`, contexts no link key uses). Each datagram is sealed
//! with ChaCha20-Poly1305 under its own key `blake3::keyed_hash(direction
//! key, id ‖ salt)` and a zero nonce. A (key, nonce) pair repeats only if a
//! 256-bit random (id, salt) does, so the server may answer the same id
//! twice (a duplicated request) without reusing a nonce.

use crate::link::Key;
use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use serde::{Deserialize, Serialize};

pub const MAGIC: [u8; 4] = *b"FTWN";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 44;
pub const TAG_LEN: usize = 16;
/// Largest body (names are at most 128 bytes, reasons a few hundred).
pub const MAX_BODY: u32 = 2048;
/// Largest datagram.
pub const MAX_DATAGRAM: usize = HEADER_LEN + MAX_BODY as usize + TAG_LEN;

/// What a datagram carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Request = 1,
    Answer = 2,
}

/// Why a datagram was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{len} bytes, shorter than a {HEADER_LEN}-byte header and {TAG_LEN}-byte tag")]
    Short { len: usize },
    #[error("bad magic {found:02x?}")]
    Magic { found: [u8; 4] },
    #[error("version {found}, this witness speaks {VERSION}")]
    Version { found: u8 },
    #[error("unknown kind {found}")]
    Kind { found: u8 },
    #[error("expected a {expected:?}, got a {found:?}")]
    WrongKind { expected: Kind, found: Kind },
    #[error("reserved flags {found:#06x} set")]
    Flags { found: u16 },
    #[error("body length {declared} above the limit {MAX_BODY}")]
    TooLong { declared: u32 },
    #[error("body length {declared} does not match the {datagram}-byte datagram")]
    Size { declared: u32, datagram: usize },
    #[error("bad MAC (wrong key, or tampered)")]
    Mac,
    #[error("malformed {kind:?} body: {what}")]
    Body { kind: Kind, what: String },
    #[error("sealing failed: {0}")]
    Seal(String),
}

/// A checked datagram header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub id: [u8; 16],
    pub salt: [u8; 16],
    pub len: u32,
}

impl Header {
    /// Checks the header of `datagram` (the whole datagram: its size must
    /// match the declared length exactly).
    pub fn parse(datagram: &[u8]) -> Result<Header, WireError> {
        let Some(h) = datagram.first_chunk::<HEADER_LEN>() else {
            return Err(WireError::Short { len: datagram.len() });
        };
        if datagram.len() < HEADER_LEN + TAG_LEN {
            return Err(WireError::Short { len: datagram.len() });
        }
        let field = |at: usize| -> [u8; 16] {
            let mut b = [0u8; 16];
            b.copy_from_slice(&h[at..at + 16]);
            b
        };
        let magic = [h[0], h[1], h[2], h[3]];
        if magic != MAGIC {
            return Err(WireError::Magic { found: magic });
        }
        if h[4] != VERSION {
            return Err(WireError::Version { found: h[4] });
        }
        let kind = match h[5] {
            1 => Kind::Request,
            2 => Kind::Answer,
            found => return Err(WireError::Kind { found }),
        };
        let flags = u16::from_be_bytes([h[6], h[7]]);
        if flags != 0 {
            return Err(WireError::Flags { found: flags });
        }
        let len = u32::from_be_bytes([h[40], h[41], h[42], h[43]]);
        if len > MAX_BODY {
            return Err(WireError::TooLong { declared: len });
        }
        if datagram.len() != HEADER_LEN + len as usize + TAG_LEN {
            return Err(WireError::Size { declared: len, datagram: datagram.len() });
        }
        Ok(Header { kind, id: field(8), salt: field(24), len })
    }

    pub fn emit(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&MAGIC);
        h[4] = VERSION;
        h[5] = self.kind as u8;
        h[8..24].copy_from_slice(&self.id);
        h[24..40].copy_from_slice(&self.salt);
        h[40..].copy_from_slice(&self.len.to_be_bytes());
        h
    }
}

/// The two direction keys of the witness, derived from the pre-shared key.
#[derive(Clone)]
pub struct WireKeys {
    request: [u8; 32],
    answer: [u8; 32],
}

impl std::fmt::Debug for WireKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireKeys(..)")
    }
}

impl WireKeys {
    pub fn new(key: &Key) -> WireKeys {
        WireKeys {
            request: key.derive("ftnet 2026-01 witness request v1"),
            answer: key.derive("ftnet 2026-01 witness answer v1"),
        }
    }

    fn cipher(&self, kind: Kind, id: &[u8; 16], salt: &[u8; 16]) -> ChaCha20Poly1305 {
        let dir = match kind {
            Kind::Request => &self.request,
            Kind::Answer => &self.answer,
        };
        let mut m = [0u8; 32];
        m[..16].copy_from_slice(id);
        m[16..].copy_from_slice(salt);
        ChaCha20Poly1305::new(blake3::keyed_hash(dir, &m).as_bytes().into())
    }

    /// Seals `body` into a datagram.
    pub fn seal(&self, kind: Kind, id: [u8; 16], salt: [u8; 16], body: &[u8]) -> Result<Vec<u8>, WireError> {
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        if len > MAX_BODY {
            return Err(WireError::TooLong { declared: len });
        }
        let header = Header { kind, id, salt, len }.emit();
        let mut out = Vec::with_capacity(HEADER_LEN + body.len() + TAG_LEN);
        out.extend_from_slice(&header);
        out.extend_from_slice(body);
        let tag = self
            .cipher(kind, &id, &salt)
            .encrypt_in_place_detached(&Default::default(), &header, &mut out[HEADER_LEN..])
            .map_err(|e| WireError::Seal(e.to_string()))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Checks the header, that it is a `kind`, and the tag; returns the
    /// header and the plaintext body.
    pub fn open(&self, kind: Kind, datagram: &[u8]) -> Result<(Header, Vec<u8>), WireError> {
        let h = Header::parse(datagram)?;
        if h.kind != kind {
            return Err(WireError::WrongKind { expected: kind, found: h.kind });
        }
        let end = HEADER_LEN + h.len as usize;
        let (Some(ad), Some(body), Some(tag)) =
            (datagram.get(..HEADER_LEN), datagram.get(HEADER_LEN..end), datagram.get(end..end + TAG_LEN))
        else {
            return Err(WireError::Size { declared: h.len, datagram: datagram.len() });
        };
        let mut body = body.to_vec();
        let tag = chacha20poly1305::Tag::from_slice(tag);
        self.cipher(kind, &h.id, &h.salt)
            .decrypt_in_place_detached(&Default::default(), ad, &mut body, tag)
            .map_err(|_| WireError::Mac)?;
        Ok((h, body))
    }
}

/// What a request asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Start,
    Renew { epoch: u64 },
    Solo { epoch: u64 },
    Takeover { log_epoch: u64 },
    Release { epoch: u64 },
    Query,
}

impl From<super::Request> for Op {
    fn from(r: super::Request) -> Op {
        use super::Request as R;
        match r {
            R::Start => Op::Start,
            R::Renew { epoch } => Op::Renew { epoch },
            R::Solo { epoch } => Op::Solo { epoch },
            R::Takeover { log_epoch } => Op::Takeover { log_epoch },
            R::Release { epoch } => Op::Release { epoch },
        }
    }
}

impl Op {
    /// The lease request, or none for a query.
    pub fn request(self) -> Option<super::Request> {
        use super::Request as R;
        Some(match self {
            Op::Start => R::Start,
            Op::Renew { epoch } => R::Renew { epoch },
            Op::Solo { epoch } => R::Solo { epoch },
            Op::Takeover { log_epoch } => R::Takeover { log_epoch },
            Op::Release { epoch } => R::Release { epoch },
            Op::Query => return None,
        })
    }
}

/// A request's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestBody {
    /// The sender's CLOCK_REALTIME in ms: strictly increasing per node.
    pub time_ms: u64,
    pub service: String,
    /// The requesting node (empty for a query, which changes nothing).
    pub node: String,
    pub ttl_ms: u64,
    pub op: Op,
}

/// An answer's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnswerBody {
    Granted {
        epoch: u64,
        ttl_ms: u64,
    },
    Denied {
        holder: Option<String>,
        epoch: u64,
        remaining_ms: u64,
        reason: String,
    },
    State {
        holder: Option<String>,
        epoch: u64,
        solo: bool,
        remaining_ms: Option<u64>,
    },
    /// The request was authentic but not acted on (stale or skewed
    /// timestamp, invalid names, the state could not be written).
    Refused {
        reason: String,
    },
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, WireError> {
    postcard::to_allocvec(v).map_err(|e| WireError::Seal(e.to_string()))
}

fn decode<'a, T: Deserialize<'a>>(kind: Kind, body: &'a [u8]) -> Result<T, WireError> {
    let bad = |what: String| WireError::Body { kind, what };
    let (v, rest) = postcard::take_from_bytes(body).map_err(|e| bad(e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad(format!("{} trailing bytes", rest.len())));
    }
    Ok(v)
}

impl WireKeys {
    pub fn seal_request(&self, id: [u8; 16], salt: [u8; 16], body: &RequestBody) -> Result<Vec<u8>, WireError> {
        self.seal(Kind::Request, id, salt, &encode(body)?)
    }

    pub fn open_request(&self, datagram: &[u8]) -> Result<([u8; 16], RequestBody), WireError> {
        let (h, body) = self.open(Kind::Request, datagram)?;
        Ok((h.id, decode(Kind::Request, &body)?))
    }

    pub fn seal_answer(&self, id: [u8; 16], salt: [u8; 16], body: &AnswerBody) -> Result<Vec<u8>, WireError> {
        self.seal(Kind::Answer, id, salt, &encode(body)?)
    }

    pub fn open_answer(&self, datagram: &[u8]) -> Result<([u8; 16], AnswerBody), WireError> {
        let (h, body) = self.open(Kind::Answer, datagram)?;
        Ok((h.id, decode(Kind::Answer, &body)?))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn keys(b: u8) -> WireKeys {
        WireKeys::new(&Key::from_bytes(&[b; 32]).unwrap())
    }

    fn req() -> RequestBody {
        RequestBody {
            time_ms: 1_700_000_000_123,
            service: "ab".repeat(32),
            node: "node-a".into(),
            ttl_ms: 400,
            op: Op::Takeover { log_epoch: 7 },
        }
    }

    /// xorshift64*: a tiny PRNG for the fuzz loop.
    pub(crate) struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn round_trips() {
        let k = keys(1);
        let d = k.seal_request([1; 16], [2; 16], &req()).unwrap();
        assert_eq!(k.open_request(&d).unwrap(), ([1; 16], req()));
        let h = Header::parse(&d).unwrap();
        assert_eq!(Header::parse(&h.emit().iter().chain(&d[HEADER_LEN..]).copied().collect::<Vec<_>>()), Ok(h));
        for op in [
            Op::Start,
            Op::Renew { epoch: 1 },
            Op::Solo { epoch: u64::MAX },
            Op::Release { epoch: 0 },
            Op::Query,
            Op::Takeover { log_epoch: 3 },
        ] {
            let b = RequestBody { op, ..req() };
            assert_eq!(k.open_request(&k.seal_request([3; 16], [4; 16], &b).unwrap()).unwrap().1, b);
            if let Some(r) = op.request() {
                assert_eq!(Op::from(r), op);
            }
        }
        for a in [
            AnswerBody::Granted { epoch: 9, ttl_ms: 400 },
            AnswerBody::Denied { holder: Some("b".into()), epoch: 3, remaining_ms: 12, reason: "held by b".into() },
            AnswerBody::Denied { holder: None, epoch: 0, remaining_ms: 0, reason: String::new() },
            AnswerBody::State { holder: None, epoch: 2, solo: true, remaining_ms: None },
            AnswerBody::Refused { reason: "stale".into() },
        ] {
            let d = k.seal_answer([5; 16], [6; 16], &a).unwrap();
            assert_eq!(k.open_answer(&d).unwrap(), ([5; 16], a));
            // An answer is not a request, and the directions have their own keys.
            assert!(matches!(k.open_request(&d), Err(WireError::WrongKind { .. })));
            let mut as_req = d.clone();
            as_req[5] = Kind::Request as u8;
            assert_eq!(k.open(Kind::Request, &as_req).unwrap_err(), WireError::Mac);
        }
        // Same id, fresh salt: different ciphertexts.
        let a = k.seal_answer([5; 16], [6; 16], &AnswerBody::Granted { epoch: 1, ttl_ms: 1 }).unwrap();
        let b = k.seal_answer([5; 16], [7; 16], &AnswerBody::Granted { epoch: 1, ttl_ms: 1 }).unwrap();
        assert_ne!(a[HEADER_LEN..], b[HEADER_LEN..]);
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let k = keys(1);
        let d = k.seal_request([1; 16], [2; 16], &req()).unwrap();
        for i in 0..d.len() * 8 {
            let mut x = d.clone();
            x[i / 8] ^= 1 << (i % 8);
            assert!(k.open_request(&x).is_err(), "bit {i} flipped was accepted");
        }
        assert_eq!(keys(2).open_request(&d).unwrap_err(), WireError::Mac);
    }

    #[test]
    fn header_errors_are_specific() {
        let k = keys(1);
        let d = k.seal_request([1; 16], [2; 16], &req()).unwrap();
        let with = |i: usize, b: u8| {
            let mut x = d.clone();
            x[i] = b;
            Header::parse(&x)
        };
        assert_eq!(Header::parse(&d[..10]), Err(WireError::Short { len: 10 }));
        assert_eq!(Header::parse(&d[..HEADER_LEN + 3]), Err(WireError::Short { len: HEADER_LEN + 3 }));
        assert!(matches!(with(0, b'X'), Err(WireError::Magic { .. })));
        assert_eq!(with(4, 2), Err(WireError::Version { found: 2 }));
        assert_eq!(with(5, 9), Err(WireError::Kind { found: 9 }));
        assert_eq!(with(7, 1), Err(WireError::Flags { found: 1 }));
        assert!(matches!(with(40, 1), Err(WireError::TooLong { .. })));
        assert!(matches!(with(43, 0), Err(WireError::Size { .. })));
        assert!(matches!(Header::parse(&d[..d.len() - 1]), Err(WireError::Size { .. })));
        let mut long = d.clone();
        long.push(0);
        assert!(matches!(Header::parse(&long), Err(WireError::Size { .. })));
        let big = RequestBody { node: "x".repeat(MAX_BODY as usize), ..req() };
        assert!(matches!(k.seal_request([1; 16], [2; 16], &big), Err(WireError::TooLong { .. })));
        // Authentic but malformed bodies.
        let junk = k.seal(Kind::Request, [1; 16], [2; 16], &[0xff; 9]).unwrap();
        assert!(matches!(k.open_request(&junk), Err(WireError::Body { .. })));
        let mut trailing = postcard::to_allocvec(&req()).unwrap();
        trailing.push(0);
        let d = k.seal(Kind::Request, [1; 16], [2; 16], &trailing).unwrap();
        let e = k.open_request(&d).unwrap_err();
        assert!(e.to_string().contains("1 trailing bytes"), "{e}");
    }

    #[test]
    fn random_bytes_never_panic() {
        let k = keys(1);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let good = k.seal_request([1; 16], [2; 16], &req()).unwrap();
        let mut accepted = 0;
        for round in 0..20_000 {
            let input: Vec<u8> = match round % 3 {
                0 => (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
                1 => {
                    let mut g = good.clone();
                    for _ in 0..1 + rng.below(4) {
                        let i = rng.below(g.len());
                        g[i] = rng.next() as u8;
                    }
                    g.truncate(rng.below(g.len() + 8));
                    g
                }
                _ => {
                    // A valid header over random lengths and bytes.
                    let len = (rng.next() as u32) >> rng.below(32);
                    let mut h = Header { kind: Kind::Request, id: [0; 16], salt: [0; 16], len }.emit().to_vec();
                    h[5] = rng.below(4) as u8;
                    h.extend((0..rng.below(200)).map(|_| rng.next() as u8));
                    h
                }
            };
            let _ = Header::parse(&input);
            let _ = k.open_answer(&input);
            let _ = decode::<RequestBody>(Kind::Request, &input);
            let _ = decode::<AnswerBody>(Kind::Answer, &input);
            if k.open_request(&input).is_ok() {
                accepted += 1;
            }
        }
        // Only an untouched copy of the good datagram can pass.
        assert!(accepted < 20_000 / 3 / 4, "{accepted}");
    }
}

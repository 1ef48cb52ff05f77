//! The fixed-width link frame header (layout in the [module docs](super)).
//!
//! Invariants:
//! - [`Header::parse`] checks magic, version, kind, flags and the body
//!   length against the kind's limit, in that order, from a fixed-size
//!   array: it never panics and never depends on an unchecked length;
//! - [`Header::parse_prefix`] rejects a wrong prefix as soon as the bytes
//!   that decide it are present, so garbage fails without waiting;
//! - `Header::parse(&h.emit()) == Ok(h)` for every valid header.

use super::LinkError;

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"FTLK";
/// The link protocol version this code speaks.
pub const VERSION: u8 = 1;
/// Bytes of a frame header.
pub const HEADER_LEN: usize = 28;
/// Bytes of the authentication tag after every sealed body.
pub const TAG_LEN: usize = 16;
/// Bytes of the salt in a greeting.
pub const SALT_LEN: usize = 32;
/// Bytes of a whole greeting (header and salt, unsealed).
pub const GREETING_LEN: usize = HEADER_LEN + SALT_LEN;
/// Largest log body: a `replica::log` frame (9-byte header and at most
/// 64 MiB of record) with room to spare.
pub const MAX_LOG_BODY: u32 = (64 << 20) + (64 << 10);
/// Largest segment body: a `net::forward` frame (28-byte header and an IPv4
/// packet of at most 65,535 bytes).
pub const MAX_SEGMENT_BODY: u32 = 28 + 65_535;
/// Largest hello (argv, environment and library digests).
pub const MAX_HELLO_BODY: u32 = 1 << 20;
/// Largest small control body (ack, fence, promoted, bye).
pub const MAX_CONTROL_BODY: u32 = 4 << 10;
/// Largest body of any kind.
pub const MAX_BODY: u32 = MAX_LOG_BODY;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Cleartext salt, first on a connection (not sealed).
    Greeting = 0,
    /// [`super::Hello`], the first sealed frame.
    Hello = 1,
    /// A log frame exactly as `replica::log::frame` produced it (raw bytes).
    Log = 2,
    /// A forwarded segment exactly as `net::forward` encoded it (raw bytes).
    Segment = 3,
    /// [`super::Ack`]: received and applied positions (control space).
    Ack = 4,
    /// [`super::Fence`]: the primary gave up or hands over.
    Fence = 5,
    /// [`super::Promoted`]: the sender took over at an epoch.
    Promoted = 6,
    /// [`super::Bye`]: this connection closes, with the reason (control
    /// space: it can follow a hello that was refused).
    Bye = 7,
}

/// The sequence space a kind's `seq` field belongs to (also the nonce
/// purpose byte, so the spaces never share a nonce under one key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Space {
    /// Greeting (unsealed) and Hello: seq is 0, once per connection.
    Handshake = 1,
    /// Retained, acknowledged, contiguous across reconnects.
    Stream = 2,
    /// Acks and byes: a per-connection counter from 0; not retained.
    Control = 3,
}

impl Kind {
    /// The kind for a byte, if it names one.
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Greeting,
            1 => Kind::Hello,
            2 => Kind::Log,
            3 => Kind::Segment,
            4 => Kind::Ack,
            5 => Kind::Fence,
            6 => Kind::Promoted,
            7 => Kind::Bye,
            _ => return None,
        })
    }

    /// The largest body a frame of this kind may carry.
    pub fn max_body(self) -> u32 {
        match self {
            Kind::Greeting => SALT_LEN as u32,
            Kind::Hello => MAX_HELLO_BODY,
            Kind::Log => MAX_LOG_BODY,
            Kind::Segment => MAX_SEGMENT_BODY,
            Kind::Ack | Kind::Fence | Kind::Promoted | Kind::Bye => MAX_CONTROL_BODY,
        }
    }

    pub fn space(self) -> Space {
        match self {
            Kind::Greeting | Kind::Hello => Space::Handshake,
            Kind::Ack | Kind::Bye => Space::Control,
            Kind::Log | Kind::Segment | Kind::Fence | Kind::Promoted => Space::Stream,
        }
    }
}

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub epoch: u64,
    pub seq: u64,
    /// Plaintext body length (the sealed body adds [`TAG_LEN`]).
    pub len: u32,
}

impl Header {
    /// Parses and validates the header at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Header, LinkError> {
        match Header::parse_prefix(bytes)? {
            Some(h) => Ok(h),
            None => Err(LinkError::Protocol(format!("frame header truncated ({} of {HEADER_LEN} bytes)", bytes.len()))),
        }
    }

    /// Like [`Header::parse`], but `Ok(None)` when `bytes` is a valid prefix
    /// of a header that is not complete yet.
    pub fn parse_prefix(bytes: &[u8]) -> Result<Option<Header>, LinkError> {
        let Some(h) = bytes.get(..HEADER_LEN).and_then(|s| <&[u8; HEADER_LEN]>::try_from(s).ok()) else {
            let n = bytes.len().min(MAGIC.len());
            if bytes[..n] != MAGIC[..n] {
                let mut found = [0u8; 4];
                found[..n].copy_from_slice(&bytes[..n]);
                return Err(LinkError::BadMagic { found });
            }
            if let Some(&v) = bytes.get(4)
                && v != VERSION
            {
                return Err(LinkError::Version { found: v });
            }
            if let Some(&k) = bytes.get(5)
                && Kind::from_u8(k).is_none()
            {
                return Err(LinkError::UnknownKind { found: k });
            }
            return Ok(None);
        };
        let [m0, m1, m2, m3, version, kind, f0, f1, e @ ..] = *h;
        let [e0, e1, e2, e3, e4, e5, e6, e7, s0, s1, s2, s3, s4, s5, s6, s7, l0, l1, l2, l3] = e;
        if [m0, m1, m2, m3] != MAGIC {
            return Err(LinkError::BadMagic { found: [m0, m1, m2, m3] });
        }
        if version != VERSION {
            return Err(LinkError::Version { found: version });
        }
        let kind = Kind::from_u8(kind).ok_or(LinkError::UnknownKind { found: kind })?;
        let flags = u16::from_be_bytes([f0, f1]);
        if flags != 0 {
            return Err(LinkError::Flags { found: flags });
        }
        let len = u32::from_be_bytes([l0, l1, l2, l3]);
        if len > kind.max_body() {
            return Err(LinkError::Oversize { kind, len: u64::from(len), max: u64::from(kind.max_body()) });
        }
        Ok(Some(Header {
            kind,
            epoch: u64::from_be_bytes([e0, e1, e2, e3, e4, e5, e6, e7]),
            seq: u64::from_be_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
            len,
        }))
    }

    /// The header's bytes.
    pub fn emit(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&MAGIC);
        h[4] = VERSION;
        h[5] = self.kind as u8;
        h[8..16].copy_from_slice(&self.epoch.to_be_bytes());
        h[16..24].copy_from_slice(&self.seq.to_be_bytes());
        h[24..28].copy_from_slice(&self.len.to_be_bytes());
        h
    }

    /// Bytes of the whole frame on the wire (header, body, tag; a greeting
    /// has no tag).
    pub fn frame_len(&self) -> usize {
        let tag = if self.kind == Kind::Greeting { 0 } else { TAG_LEN };
        HEADER_LEN + self.len as usize + tag
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Kind; 8] =
        [Kind::Greeting, Kind::Hello, Kind::Log, Kind::Segment, Kind::Ack, Kind::Fence, Kind::Promoted, Kind::Bye];

    #[test]
    fn header_round_trip() {
        for kind in ALL {
            for (epoch, seq, len) in [(0, 0, 0), (u64::MAX, u64::MAX, kind.max_body()), (7, 1 << 40, 3)] {
                let h = Header { kind, epoch, seq, len: len.min(kind.max_body()) };
                assert_eq!(Header::parse(&h.emit()).unwrap(), h);
                assert_eq!(Kind::from_u8(kind as u8), Some(kind));
            }
        }
        let h = Header { kind: Kind::Log, epoch: 0x0102030405060708, seq: 0x1112131415161718, len: 0x00212223 };
        let b = h.emit();
        assert_eq!(&b[..8], b"FTLK\x01\x02\x00\x00");
        assert_eq!(&b[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[16..24], &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]);
        assert_eq!(&b[24..28], &[0, 0x21, 0x22, 0x23]);
        assert_eq!(h.frame_len(), 28 + 0x212223 + 16);
        assert_eq!(Header { kind: Kind::Greeting, epoch: 0, seq: 0, len: 32 }.frame_len(), GREETING_LEN);
    }

    #[test]
    fn malformed_headers_name_the_field() {
        let good = Header { kind: Kind::Ack, epoch: 1, seq: 2, len: 10 }.emit();
        let with = |i: usize, b: u8| {
            let mut x = good;
            x[i] = b;
            Header::parse(&x).unwrap_err()
        };
        assert!(matches!(with(0, b'X'), LinkError::BadMagic { found } if found == *b"XTLK"));
        assert!(matches!(with(4, 2), LinkError::Version { found: 2 }));
        assert!(matches!(with(5, 8), LinkError::UnknownKind { found: 8 }));
        assert!(matches!(with(5, 0xff), LinkError::UnknownKind { found: 0xff }));
        assert!(matches!(with(7, 1), LinkError::Flags { found: 1 }));
        assert!(matches!(with(24, 1), LinkError::Oversize { kind: Kind::Ack, len, .. } if len == (1 << 24) + 10));
        assert!(with(4, 9).to_string().contains("version 9"));
        assert!(with(24, 1).to_string().contains("exceeds"));
        // Each kind's limit is exact.
        for kind in ALL {
            let mut h = Header { kind, epoch: 0, seq: 0, len: kind.max_body() }.emit();
            assert!(Header::parse(&h).is_ok());
            h[24..28].copy_from_slice(&(kind.max_body() + 1).to_be_bytes());
            assert!(matches!(Header::parse(&h), Err(LinkError::Oversize { .. })), "{kind:?}");
            h[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
            assert!(matches!(Header::parse(&h), Err(LinkError::Oversize { .. })), "{kind:?}");
        }
    }

    #[test]
    fn prefixes_wait_and_wrong_prefixes_fail_early() {
        let good = Header { kind: Kind::Log, epoch: 1, seq: 2, len: 10 }.emit();
        for cut in 0..HEADER_LEN {
            assert!(matches!(Header::parse_prefix(&good[..cut]), Ok(None)), "cut {cut}");
            assert!(Header::parse(&good[..cut]).is_err());
        }
        assert!(matches!(Header::parse_prefix(b"GE"), Err(LinkError::BadMagic { found }) if found == *b"GE\0\0"));
        assert!(matches!(Header::parse_prefix(b"FTLK\x07"), Err(LinkError::Version { found: 7 })));
        assert!(matches!(Header::parse_prefix(b"FTLK\x01\x09"), Err(LinkError::UnknownKind { found: 9 })));
    }
}

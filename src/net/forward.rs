//! The wire format of forwarded segments (primary → backup), sans-IO.
//!
//! Every captured packet travels as one frame: a fixed 28-byte header, then
//! the IPv4 packet exactly as NFQUEUE delivered it (possibly a GSO
//! super-segment, checksums possibly unfinished). All integers big-endian.
//!
//! | offset | size | field | rule |
//! |---|---|---|---|
//! | 0 | 4 | magic | `b"FTSG"` |
//! | 4 | 1 | version | 1 |
//! | 5 | 1 | direction | 1 inbound (client → server), 2 outbound |
//! | 6 | 2 | flags | 0 (reserved) |
//! | 8 | 8 | seq | capture sequence number: +1 per captured packet, forwarded or not, so a gap shows what the backup missed |
//! | 16 | 8 | capture_ns | primary's CLOCK_MONOTONIC when the packet was read from the queue |
//! | 24 | 4 | len | packet length, [`MIN_PACKET_LEN`]..=[`MAX_PACKET_LEN`] |
//! | 28 | len | packet | the IPv4 packet |
//!
//! [`MAX_PACKET_LEN`] is 65,535: an IPv4 packet's total-length field cannot
//! say more, and NFQUEUE copies at most 65,531 bytes of a packet anyway (a
//! larger BIG TCP super-segment arrives truncated and is never forwarded).
//!
//! Invariants:
//! - the header is checked completely (magic, version, direction, flags,
//!   length bounds) before anything depends on the length: a decoder never
//!   allocates or waits for more than one maximum frame;
//! - parsing never panics: lengths are checked once, fields are read from a
//!   fixed-size array; every malformed header is a [`FrameError`] naming the
//!   field and the value found;
//! - `parse(emit(x)) == x` for every valid frame.

use std::io::{self, Read};

use crate::tcpstate::Direction;

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"FTSG";
/// The format version this code speaks.
pub const VERSION: u8 = 1;
/// Bytes of a frame header.
pub const HEADER_LEN: usize = 28;
/// Smallest packet: an IPv4 header.
pub const MIN_PACKET_LEN: usize = 20;
/// Largest packet: the IPv4 total-length limit.
pub const MAX_PACKET_LEN: usize = 65_535;
/// Largest frame.
pub const MAX_FRAME_LEN: usize = HEADER_LEN + MAX_PACKET_LEN;

/// A malformed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The magic is not `FTSG` (not a forwarding stream, or lost framing).
    #[error("forwarded frame: bad magic {found:02x?} (expected \"FTSG\")")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A version this code does not speak.
    #[error("forwarded frame: unsupported version {found} (this build speaks {VERSION})")]
    UnsupportedVersion {
        /// The version found.
        found: u8,
    },
    /// A direction byte other than 1 or 2.
    #[error("forwarded frame: bad direction byte {found} (1 inbound, 2 outbound)")]
    BadDirection {
        /// The byte found.
        found: u8,
    },
    /// Reserved flag bits set.
    #[error("forwarded frame: unknown flags {found:#06x}")]
    UnknownFlags {
        /// The flags found.
        found: u16,
    },
    /// A packet length outside `MIN_PACKET_LEN..=MAX_PACKET_LEN`.
    #[error("forwarded frame: packet length {len} outside {MIN_PACKET_LEN}..={MAX_PACKET_LEN}")]
    BadLength {
        /// The length found.
        len: u64,
    },
    /// Fewer bytes than a header.
    #[error("forwarded frame: header truncated ({have} of {HEADER_LEN} bytes)")]
    TruncatedHeader {
        /// Bytes present.
        have: usize,
    },
    /// The stream ended inside a frame.
    #[error("forwarded stream ended inside a frame ({have} bytes of a frame buffered)")]
    EndedMidFrame {
        /// Bytes of the incomplete frame.
        have: usize,
    },
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Which way the packet was going.
    pub direction: Direction,
    /// Capture sequence number.
    pub seq: u64,
    /// Primary's CLOCK_MONOTONIC at capture.
    pub capture_ns: u64,
    /// Packet length.
    pub len: u32,
}

fn check_len(len: u64) -> Result<(), FrameError> {
    if (MIN_PACKET_LEN as u64..=MAX_PACKET_LEN as u64).contains(&len) {
        Ok(())
    } else {
        Err(FrameError::BadLength { len })
    }
}

impl FrameHeader {
    /// A header for `packet`.
    pub fn new(direction: Direction, seq: u64, capture_ns: u64, packet: &[u8]) -> Result<FrameHeader, FrameError> {
        check_len(packet.len() as u64)?;
        Ok(FrameHeader { direction, seq, capture_ns, len: packet.len() as u32 })
    }

    /// Parses and validates the header at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
        let h: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(FrameError::TruncatedHeader { have: bytes.len() })?;
        let [
            m0,
            m1,
            m2,
            m3,
            version,
            dir,
            f0,
            f1,
            s0,
            s1,
            s2,
            s3,
            s4,
            s5,
            s6,
            s7,
            t0,
            t1,
            t2,
            t3,
            t4,
            t5,
            t6,
            t7,
            l0,
            l1,
            l2,
            l3,
        ] = *h;
        if [m0, m1, m2, m3] != MAGIC {
            return Err(FrameError::BadMagic { found: [m0, m1, m2, m3] });
        }
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion { found: version });
        }
        let direction = match dir {
            1 => Direction::Inbound,
            2 => Direction::Outbound,
            found => return Err(FrameError::BadDirection { found }),
        };
        let flags = u16::from_be_bytes([f0, f1]);
        if flags != 0 {
            return Err(FrameError::UnknownFlags { found: flags });
        }
        let len = u32::from_be_bytes([l0, l1, l2, l3]);
        check_len(u64::from(len))?;
        Ok(FrameHeader {
            direction,
            seq: u64::from_be_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
            capture_ns: u64::from_be_bytes([t0, t1, t2, t3, t4, t5, t6, t7]),
            len,
        })
    }

    /// The header's bytes.
    pub fn emit(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&MAGIC);
        h[4] = VERSION;
        h[5] = match self.direction {
            Direction::Inbound => 1,
            Direction::Outbound => 2,
        };
        h[8..16].copy_from_slice(&self.seq.to_be_bytes());
        h[16..24].copy_from_slice(&self.capture_ns.to_be_bytes());
        h[24..28].copy_from_slice(&self.len.to_be_bytes());
        h
    }

    /// Header plus packet length.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.len as usize
    }
}

/// A whole frame, borrowing its packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The header.
    pub header: FrameHeader,
    /// The IPv4 packet (`header.len` bytes).
    pub packet: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Parses the frame at the start of `buf`: `Ok(None)` if `buf` holds a
    /// valid header (or a prefix of one) but not yet the whole frame;
    /// otherwise the frame and the bytes it occupies.
    pub fn parse(buf: &'a [u8]) -> Result<Option<(Frame<'a>, usize)>, FrameError> {
        if buf.len() < HEADER_LEN {
            // Reject a wrong prefix early (nothing else can be checked yet).
            let n = buf.len().min(4);
            if buf[..n] != MAGIC[..n] {
                let mut found = [0u8; 4];
                found[..n].copy_from_slice(&buf[..n]);
                return Err(FrameError::BadMagic { found });
            }
            return Ok(None);
        }
        let header = FrameHeader::parse(buf)?;
        let end = header.frame_len();
        match buf.get(HEADER_LEN..end) {
            Some(packet) => Ok(Some((Frame { header, packet }, end))),
            None => Ok(None),
        }
    }

    /// Appends the frame for `packet` to `out`.
    pub fn emit(
        out: &mut Vec<u8>,
        direction: Direction,
        seq: u64,
        capture_ns: u64,
        packet: &[u8],
    ) -> Result<(), FrameError> {
        let h = FrameHeader::new(direction, seq, capture_ns, packet)?;
        out.extend_from_slice(&h.emit());
        out.extend_from_slice(packet);
        Ok(())
    }
}

/// Incremental decoder over a byte stream, with a fixed buffer of four
/// maximum frames (allocated once; no length read from the wire changes it).
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        FrameDecoder { buf: vec![0u8; 4 * MAX_FRAME_LEN].into_boxed_slice(), start: 0, end: 0 }
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Makes room at the end by moving the unconsumed bytes to the front
    /// when less than one maximum frame is free.
    fn compact(&mut self) {
        if self.buf.len() - self.end < MAX_FRAME_LEN {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Copies as much of `bytes` as fits; returns how many were taken.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        self.compact();
        let n = bytes.len().min(self.buf.len() - self.end);
        self.buf[self.end..self.end + n].copy_from_slice(&bytes[..n]);
        self.end += n;
        n
    }

    /// One `read` from `r` into the buffer; returns what `read` returned
    /// (0 at end of stream). Drain frames with [`FrameDecoder::next_frame`]
    /// first: a buffer full of undrained frames is an error, not an EOF.
    pub fn read_from(&mut self, r: &mut impl Read) -> io::Result<usize> {
        self.compact();
        if self.end == self.buf.len() {
            return Err(io::Error::other("frame decoder full: drain frames before reading more"));
        }
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// The next whole frame, if buffered. After an error the stream cannot
    /// be resynchronised; the caller must drop the connection.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        let at = self.start;
        let Some((header, used)) = Frame::parse(&self.buf[at..self.end])?.map(|(f, used)| (f.header, used)) else {
            return Ok(None);
        };
        self.start += used;
        if self.start == self.end {
            // Empty: the next read starts at the front (the bytes returned
            // below are not touched until then).
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(Frame { header, packet: &self.buf[at + HEADER_LEN..at + used] }))
    }

    /// At end of stream: an error if part of a frame is still buffered.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buffered() {
            0 => Ok(()),
            have => Err(FrameError::EndedMidFrame { have }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(len: usize, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; len];
        p[0] = 0x45;
        p
    }

    #[test]
    fn header_round_trip() {
        for (d, seq, ts, len) in [
            (Direction::Inbound, 0, 0, MIN_PACKET_LEN),
            (Direction::Outbound, u64::MAX, u64::MAX, MAX_PACKET_LEN),
            (Direction::Inbound, 7, 1_000_000_123_456_789, 1500),
        ] {
            let p = packet(len, 9);
            let h = FrameHeader::new(d, seq, ts, &p).unwrap();
            assert_eq!(FrameHeader::parse(&h.emit()).unwrap(), h);
            let mut out = Vec::new();
            Frame::emit(&mut out, d, seq, ts, &p).unwrap();
            let (f, used) = Frame::parse(&out).unwrap().unwrap();
            assert_eq!((f.header, f.packet, used), (h, &p[..], out.len()));
        }
    }

    #[test]
    fn malformed_headers_name_the_field() {
        let mut out = Vec::new();
        Frame::emit(&mut out, Direction::Inbound, 1, 2, &packet(40, 1)).unwrap();
        let h = &out[..HEADER_LEN];
        let with = |i: usize, b: u8| {
            let mut x = h.to_vec();
            x[i] = b;
            FrameHeader::parse(&x).unwrap_err()
        };
        assert_eq!(with(0, b'X'), FrameError::BadMagic { found: *b"XTSG" });
        assert_eq!(with(4, 2), FrameError::UnsupportedVersion { found: 2 });
        assert_eq!(with(5, 0), FrameError::BadDirection { found: 0 });
        assert_eq!(with(5, 3), FrameError::BadDirection { found: 3 });
        assert_eq!(with(7, 1), FrameError::UnknownFlags { found: 1 });
        assert_eq!(with(24, 1), FrameError::BadLength { len: (1 << 24) + 40 });
        assert_eq!(with(27, 19), FrameError::BadLength { len: 19 });
        assert_eq!(FrameHeader::parse(&h[..27]), Err(FrameError::TruncatedHeader { have: 27 }));
        assert!(with(4, 2).to_string().contains("version 2"));
        assert!(with(24, 1).to_string().contains("packet length 16777256"));
        // Oversized and undersized packets cannot be emitted either.
        assert_eq!(
            Frame::emit(&mut Vec::new(), Direction::Inbound, 0, 0, &[0; MAX_PACKET_LEN + 1]),
            Err(FrameError::BadLength { len: MAX_PACKET_LEN as u64 + 1 })
        );
        assert_eq!(
            Frame::emit(&mut Vec::new(), Direction::Inbound, 0, 0, &[0; 3]),
            Err(FrameError::BadLength { len: 3 })
        );
    }

    #[test]
    fn truncated_frames_wait_and_garbage_fails_early() {
        let mut out = Vec::new();
        Frame::emit(&mut out, Direction::Outbound, 5, 6, &packet(100, 2)).unwrap();
        for cut in 0..out.len() {
            assert_eq!(Frame::parse(&out[..cut]), Ok(None), "cut {cut}");
        }
        assert_eq!(Frame::parse(b"GE"), Err(FrameError::BadMagic { found: [b'G', b'E', 0, 0] }));
        assert!(matches!(Frame::parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n...."), Err(FrameError::BadMagic { .. })));
        // Pseudo-random garbage: errors or "need more", never a panic.
        let mut x = 0x9e37_79b9u32;
        for len in 0..200 {
            let mut g: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = Frame::parse(&g);
            if g.len() >= 6 {
                g[..4].copy_from_slice(&MAGIC);
                g[4] = VERSION;
                let _ = Frame::parse(&g);
            }
        }
    }

    #[test]
    fn decoder_reassembles_a_stream_in_any_split() {
        let packets: Vec<Vec<u8>> = (0..20).map(|i| packet(20 + i * 997 % 3000, i as u8)).collect();
        let mut stream = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            let d = if i % 3 == 0 { Direction::Outbound } else { Direction::Inbound };
            Frame::emit(&mut stream, d, i as u64, 1000 + i as u64, p).unwrap();
        }
        Frame::emit(&mut stream, Direction::Inbound, 99, 0, &packet(MAX_PACKET_LEN, 7)).unwrap();
        for chunk in [1, 7, 28, 29, 1000, 65_563, 1 << 20] {
            let mut dec = FrameDecoder::new();
            let mut got = Vec::new();
            let mut r = &stream[..];
            loop {
                let n = dec.read_from(&mut (&mut r).take(chunk as u64)).unwrap();
                while let Some(f) = dec.next_frame().unwrap() {
                    got.push((f.header.seq, f.packet.to_vec()));
                }
                if n == 0 {
                    break;
                }
            }
            dec.finish().unwrap();
            assert_eq!(got.len(), 21, "chunk {chunk}");
            for (i, p) in packets.iter().enumerate() {
                assert_eq!(got[i], (i as u64, p.clone()));
            }
            assert_eq!(got[20].1.len(), MAX_PACKET_LEN);
        }
    }

    #[test]
    fn decoder_reports_mid_frame_end_and_bad_frames() {
        let mut stream = Vec::new();
        Frame::emit(&mut stream, Direction::Inbound, 1, 1, &packet(60, 1)).unwrap();
        let mut dec = FrameDecoder::new();
        assert_eq!(dec.push(&stream[..50]), 50);
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(dec.finish(), Err(FrameError::EndedMidFrame { have: 50 }));
        let mut dec = FrameDecoder::new();
        let mut bad = stream.clone();
        bad[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
        dec.push(&bad);
        assert_eq!(dec.next_frame(), Err(FrameError::BadLength { len: u32::MAX as u64 }));
        // Many frames pushed in one go never overflow the fixed buffer.
        let mut dec = FrameDecoder::new();
        let mut big = Vec::new();
        for i in 0..10 {
            Frame::emit(&mut big, Direction::Outbound, i, 0, &packet(MAX_PACKET_LEN, 3)).unwrap();
        }
        let mut off = 0;
        let mut n = 0;
        while off < big.len() {
            off += dec.push(&big[off..]);
            while let Some(f) = dec.next_frame().unwrap() {
                assert_eq!(f.header.seq, n);
                n += 1;
            }
        }
        assert_eq!(n, 10);
    }
}

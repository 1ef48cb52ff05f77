//! IPv4 and TCP headers: zero-copy parsing views and an emitter.
//!
//! Follows smoltcp's `src/wire` contract. Invariants:
//! - a view is only built by `parse`, which checks every length once; after
//!   that each accessor reads a fixed-size array or a pre-split slice, so no
//!   accessor can panic or read out of bounds.
//! - malformed input yields a [`WireError`] naming the field and the numbers
//!   involved, never a panic.
//! - checksums are never verified by parsing: NFQUEUE hands us packets whose
//!   checksums are left to offload (unset or partial). [`tcp_checksum`] and
//!   [`fill_checksums`] exist for callers that must send a packet.
//! - GSO/TSO super-segments are accepted: the IPv4 total length may exceed
//!   any MTU, and a total length of 0 on a buffer above 65,535 bytes means
//!   "the whole buffer" (Linux BIG TCP). Bytes after the total length
//!   (link-layer padding) are ignored.
//! - [`Ipv4Repr`]/[`TcpRepr`] emit exactly what the views read back
//!   (round-trip tested in `wire_tests`).

use std::net::Ipv4Addr;

use thiserror::Error;

use super::options::{EmitOptionError, OptionError, OptionIter, TcpOption, emit_options, parse_options};
use super::seq::SeqNum;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// Size of an IPv4 header without options.
pub const IPV4_MIN_HEADER: usize = 20;
/// Size of a TCP header without options.
pub const TCP_MIN_HEADER: usize = 20;

/// Malformed IPv4 or TCP bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WireError {
    /// Fewer bytes than a minimal IPv4 header.
    #[error("IPv4 packet of {len} bytes is shorter than the 20-byte minimum header")]
    Ipv4Truncated {
        /// Bytes available.
        len: usize,
    },
    /// The version nibble is not 4.
    #[error("IP version {version}, expected 4")]
    NotIpv4 {
        /// The version nibble.
        version: u8,
    },
    /// IHL below 5 words.
    #[error("IPv4 header length field {ihl} (words) is below the minimum 5")]
    BadIhl {
        /// The IHL nibble.
        ihl: u8,
    },
    /// IHL points past the end of the buffer.
    #[error("IPv4 header length {header_len} exceeds the {len}-byte packet")]
    Ipv4HeaderBeyondPacket {
        /// Header length in bytes.
        header_len: usize,
        /// Bytes available.
        len: usize,
    },
    /// Total length smaller than the header or larger than the buffer.
    #[error("IPv4 total length {total_len} is invalid: header {header_len} bytes, buffer {len} bytes")]
    BadTotalLength {
        /// The total-length field.
        total_len: u16,
        /// Header length in bytes.
        header_len: usize,
        /// Bytes available.
        len: usize,
    },
    /// A fragment: its TCP header may be elsewhere, so it cannot be tracked.
    #[error("IPv4 fragment (offset {offset} x 8 bytes, more fragments: {more})")]
    Fragmented {
        /// Fragment offset in 8-byte units.
        offset: u16,
        /// The more-fragments flag.
        more: bool,
    },
    /// Not a TCP packet (only reported by [`Ipv4Packet::tcp`]).
    #[error("IPv4 protocol {protocol} is not TCP")]
    NotTcp {
        /// The protocol field.
        protocol: u8,
    },
    /// Fewer bytes than a minimal TCP header.
    #[error("TCP segment of {len} bytes is shorter than the 20-byte minimum header")]
    TcpTruncated {
        /// Bytes available.
        len: usize,
    },
    /// Data offset below 5 words.
    #[error("TCP data offset {offset} (words) is below the minimum 5")]
    BadDataOffset {
        /// The data-offset nibble.
        offset: u8,
    },
    /// Data offset points past the end of the segment.
    #[error("TCP header length {header_len} exceeds the {len}-byte segment")]
    TcpHeaderBeyondSegment {
        /// Header length in bytes.
        header_len: usize,
        /// Bytes available.
        len: usize,
    },
    /// A malformed TCP option (strict readings only; the tracker reads
    /// options leniently).
    #[error(transparent)]
    Option(#[from] OptionError),
}

fn u16_at(b: &[u8; 20], i: usize) -> u16 {
    let hi = b.get(i).copied().unwrap_or(0);
    let lo = b.get(i + 1).copied().unwrap_or(0);
    u16::from_be_bytes([hi, lo])
}

fn u32_at(b: &[u8; 20], i: usize) -> u32 {
    (u32::from(u16_at(b, i)) << 16) | u32::from(u16_at(b, i + 2))
}

/// A checked view of an IPv4 packet.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<'a> {
    bytes: &'a [u8],
    fixed: &'a [u8; 20],
    options: &'a [u8],
    payload: &'a [u8],
}

impl<'a> Ipv4Packet<'a> {
    /// Checks version, IHL and total length against `buf`.
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        let len = buf.len();
        let Some(first) = buf.first_chunk::<20>() else {
            return Err(WireError::Ipv4Truncated { len });
        };
        let version = first[0] >> 4;
        if version != 4 {
            return Err(WireError::NotIpv4 { version });
        }
        let ihl = first[0] & 0x0f;
        if ihl < 5 {
            return Err(WireError::BadIhl { ihl });
        }
        let header_len = usize::from(ihl) * 4;
        if header_len > len {
            return Err(WireError::Ipv4HeaderBeyondPacket { header_len, len });
        }
        let total_field = u16_at(first, 2);
        let total_len = if total_field == 0 && len > usize::from(u16::MAX) { len } else { usize::from(total_field) };
        let bad_total = WireError::BadTotalLength { total_len: total_field, header_len, len };
        if total_len < header_len {
            return Err(bad_total);
        }
        let (packet, _padding) = buf.split_at_checked(total_len).ok_or(bad_total)?;
        let (header, payload) = packet.split_at_checked(header_len).ok_or(bad_total)?;
        let (fixed, options) = header.split_first_chunk::<20>().ok_or(WireError::Ipv4Truncated { len })?;
        Ok(Ipv4Packet { bytes: packet, fixed, options, payload })
    }

    /// The packet's bytes up to its total length (trailing padding cut).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        IPV4_MIN_HEADER + self.options.len()
    }
    /// Header plus payload, as used (the total-length field, or the buffer
    /// for BIG TCP).
    pub fn total_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }
    /// DSCP and ECN byte.
    pub fn tos(&self) -> u8 {
        self.fixed[1]
    }
    /// Identification field.
    pub fn ident(&self) -> u16 {
        u16_at(self.fixed, 4)
    }
    /// Don't-fragment flag.
    pub fn dont_frag(&self) -> bool {
        u16_at(self.fixed, 6) & 0x4000 != 0
    }
    /// More-fragments flag.
    pub fn more_frags(&self) -> bool {
        u16_at(self.fixed, 6) & 0x2000 != 0
    }
    /// Fragment offset in 8-byte units.
    pub fn frag_offset(&self) -> u16 {
        u16_at(self.fixed, 6) & 0x1fff
    }
    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.fixed[8]
    }
    /// Protocol field.
    pub fn protocol(&self) -> u8 {
        self.fixed[9]
    }
    /// Header checksum as carried (not verified).
    pub fn checksum(&self) -> u16 {
        u16_at(self.fixed, 10)
    }
    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32_at(self.fixed, 12))
    }
    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32_at(self.fixed, 16))
    }
    /// IP options bytes.
    pub fn options(&self) -> &'a [u8] {
        self.options
    }
    /// Payload (up to the total length).
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The TCP segment inside; fails for other protocols and fragments.
    pub fn tcp(&self) -> Result<TcpPacket<'a>, WireError> {
        if self.protocol() != PROTO_TCP {
            return Err(WireError::NotTcp { protocol: self.protocol() });
        }
        if self.more_frags() || self.frag_offset() != 0 {
            return Err(WireError::Fragmented { offset: self.frag_offset(), more: self.more_frags() });
        }
        TcpPacket::parse(self.payload)
    }
}

/// TCP header flags (the low 8 bits of byte 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// FIN.
    pub const FIN: TcpFlags = TcpFlags(0x01);
    /// SYN.
    pub const SYN: TcpFlags = TcpFlags(0x02);
    /// RST.
    pub const RST: TcpFlags = TcpFlags(0x04);
    /// PSH.
    pub const PSH: TcpFlags = TcpFlags(0x08);
    /// ACK.
    pub const ACK: TcpFlags = TcpFlags(0x10);
    /// URG.
    pub const URG: TcpFlags = TcpFlags(0x20);
    /// ECE.
    pub const ECE: TcpFlags = TcpFlags(0x40);
    /// CWR.
    pub const CWR: TcpFlags = TcpFlags(0x80);

    /// All bits of `other` are set.
    pub fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }
    /// SYN set.
    pub fn syn(self) -> bool {
        self.contains(Self::SYN)
    }
    /// ACK set.
    pub fn ack(self) -> bool {
        self.contains(Self::ACK)
    }
    /// FIN set.
    pub fn fin(self) -> bool {
        self.contains(Self::FIN)
    }
    /// RST set.
    pub fn rst(self) -> bool {
        self.contains(Self::RST)
    }
}

impl std::ops::BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

/// A checked view of a TCP segment (header and payload).
#[derive(Debug, Clone, Copy)]
pub struct TcpPacket<'a> {
    fixed: &'a [u8; 20],
    options: &'a [u8],
    payload: &'a [u8],
}

impl<'a> TcpPacket<'a> {
    /// Checks the data offset against `seg`. Options are not validated here;
    /// read them with [`TcpPacket::options`].
    pub fn parse(seg: &'a [u8]) -> Result<Self, WireError> {
        let len = seg.len();
        let Some(first) = seg.first_chunk::<20>() else {
            return Err(WireError::TcpTruncated { len });
        };
        let offset = first[12] >> 4;
        if offset < 5 {
            return Err(WireError::BadDataOffset { offset });
        }
        let header_len = usize::from(offset) * 4;
        let beyond = WireError::TcpHeaderBeyondSegment { header_len, len };
        let (header, payload) = seg.split_at_checked(header_len).ok_or(beyond)?;
        let (fixed, options) = header.split_first_chunk::<20>().ok_or(beyond)?;
        Ok(TcpPacket { fixed, options, payload })
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        u16_at(self.fixed, 0)
    }
    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        u16_at(self.fixed, 2)
    }
    /// Sequence number.
    pub fn seq(&self) -> SeqNum {
        SeqNum(u32_at(self.fixed, 4))
    }
    /// Acknowledgement number (meaningful only with ACK).
    pub fn ack(&self) -> SeqNum {
        SeqNum(u32_at(self.fixed, 8))
    }
    /// Header length in bytes (data offset × 4).
    pub fn header_len(&self) -> usize {
        TCP_MIN_HEADER + self.options.len()
    }
    /// Flags.
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.fixed[13])
    }
    /// Raw (unscaled) window field.
    pub fn window(&self) -> u16 {
        u16_at(self.fixed, 14)
    }
    /// Checksum as carried (not verified).
    pub fn checksum(&self) -> u16 {
        u16_at(self.fixed, 16)
    }
    /// Urgent pointer.
    pub fn urgent(&self) -> u16 {
        u16_at(self.fixed, 18)
    }
    /// Raw options area.
    pub fn options_bytes(&self) -> &'a [u8] {
        self.options
    }
    /// Iterator over the options (see [`OptionIter`] for error behaviour).
    pub fn options(&self) -> OptionIter<'a> {
        OptionIter::new(self.options)
    }
    /// Payload bytes.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
    /// Sequence space the segment occupies: payload + SYN + FIN.
    pub fn seq_len(&self) -> u64 {
        let flags = self.flags();
        self.payload.len() as u64 + u64::from(flags.syn()) + u64::from(flags.fin())
    }
}

/// Fields of an IPv4 header for emitting (no IP options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Identification.
    pub ident: u16,
    /// Time to live.
    pub ttl: u8,
    /// Don't-fragment flag.
    pub dont_frag: bool,
}

impl Ipv4Repr {
    /// The fields of a parsed packet (its options are not represented).
    pub fn parse(p: &Ipv4Packet<'_>) -> Ipv4Repr {
        Ipv4Repr { src: p.src_addr(), dst: p.dst_addr(), ident: p.ident(), ttl: p.ttl(), dont_frag: p.dont_frag() }
    }
}

/// Fields of a TCP segment for emitting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRepr<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: SeqNum,
    /// Acknowledgement number (written even without ACK).
    pub ack: SeqNum,
    /// Flags.
    pub flags: TcpFlags,
    /// Raw window field.
    pub window: u16,
    /// Urgent pointer.
    pub urgent: u16,
    /// Options in order, without NOP/EOL padding (emit pads; parse drops
    /// padding, so reprs with explicit NOPs do not round-trip).
    pub options: Vec<TcpOption<'a>>,
    /// Payload.
    pub payload: &'a [u8],
}

impl<'a> TcpRepr<'a> {
    /// Reads a segment strictly: any malformed option is an error.
    pub fn parse(p: &TcpPacket<'a>) -> Result<TcpRepr<'a>, WireError> {
        Ok(TcpRepr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            seq: p.seq(),
            ack: p.ack(),
            flags: p.flags(),
            window: p.window(),
            urgent: p.urgent(),
            options: parse_options(p.options_bytes())?,
            payload: p.payload(),
        })
    }
}

/// Why a packet could not be emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EmitError {
    /// The TCP options are invalid or too long.
    #[error("cannot emit TCP options: {0}")]
    Options(#[from] EmitOptionError),
    /// The packet is longer than the total-length field can say and not
    /// long enough for BIG TCP's zero total length.
    #[error("IPv4 packet of {len} bytes cannot be emitted")]
    TooLong {
        /// Its length.
        len: usize,
    },
}

/// Builds a complete IPv4+TCP packet with valid IPv4 and TCP checksums. A
/// packet above 65,535 bytes gets total length 0 (BIG TCP), as Linux does.
pub fn emit_ipv4_tcp(ip: &Ipv4Repr, tcp: &TcpRepr<'_>) -> Result<Vec<u8>, EmitError> {
    let mut options = Vec::new();
    emit_options(&tcp.options, &mut options)?;
    let tcp_header_len = TCP_MIN_HEADER + options.len();
    let total = IPV4_MIN_HEADER + tcp_header_len + tcp.payload.len();
    let total_field = match u16::try_from(total) {
        Ok(t) => t,
        Err(_) if total > usize::from(u16::MAX) && total <= (1 << 30) => 0,
        Err(_) => return Err(EmitError::TooLong { len: total }),
    };
    let mut out = Vec::with_capacity(total);
    out.push(0x45);
    out.push(0);
    out.extend_from_slice(&total_field.to_be_bytes());
    out.extend_from_slice(&ip.ident.to_be_bytes());
    out.extend_from_slice(&(if ip.dont_frag { 0x4000u16 } else { 0 }).to_be_bytes());
    out.extend_from_slice(&[ip.ttl, PROTO_TCP, 0, 0]);
    out.extend_from_slice(&ip.src.octets());
    out.extend_from_slice(&ip.dst.octets());
    out.extend_from_slice(&tcp.src_port.to_be_bytes());
    out.extend_from_slice(&tcp.dst_port.to_be_bytes());
    out.extend_from_slice(&tcp.seq.0.to_be_bytes());
    out.extend_from_slice(&tcp.ack.0.to_be_bytes());
    // tcp_header_len <= 60, so the data offset fits the high nibble.
    let offset_words = u8::try_from(tcp_header_len / 4).unwrap_or(15);
    out.extend_from_slice(&[offset_words << 4, tcp.flags.0]);
    out.extend_from_slice(&tcp.window.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&tcp.urgent.to_be_bytes());
    out.extend_from_slice(&options);
    out.extend_from_slice(tcp.payload);
    fill_checksums(&mut out).map_err(|_| EmitError::TooLong { len: total })?;
    Ok(out)
}

/// One's-complement sum of `data` as big-endian 16-bit words, added to `acc`.
fn sum16(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        if let [hi, lo] = pair {
            acc += u64::from(u16::from_be_bytes([*hi, *lo]));
        }
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // acc <= 0xffff after folding.
    !(u16::try_from(acc).unwrap_or(0xffff))
}

/// The IPv4 header checksum of `header` (checksum field taken as zero).
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let before = header.get(..10).unwrap_or(header);
    let after = header.get(12..).unwrap_or(&[]);
    fold(sum16(sum16(0, before), after))
}

/// The TCP checksum of `segment` (header + payload, checksum field taken as
/// zero) with the IPv4 pseudo-header.
pub fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    let mut acc = sum16(0, &src.octets());
    acc = sum16(acc, &dst.octets());
    acc += u64::from(PROTO_TCP);
    acc += segment.len() as u64;
    acc = sum16(acc, segment.get(..16).unwrap_or(segment));
    acc = sum16(acc, segment.get(18..).unwrap_or(&[]));
    fold(acc)
}

/// Recomputes the IPv4 header checksum and the TCP checksum of an IPv4+TCP
/// packet in place (e.g. a recorded SYN-ACK whose checksum was left to
/// offload).
pub fn fill_checksums(packet: &mut [u8]) -> Result<(), WireError> {
    let (header_len, total_len, src, dst) = {
        let ip = Ipv4Packet::parse(packet)?;
        ip.tcp()?;
        (ip.header_len(), ip.total_len(), ip.src_addr(), ip.dst_addr())
    };
    let bad = WireError::Ipv4HeaderBeyondPacket { header_len, len: total_len };
    let sum = ipv4_header_checksum(packet.get(..header_len).ok_or(bad)?);
    packet.get_mut(10..12).ok_or(bad)?.copy_from_slice(&sum.to_be_bytes());
    let segment = packet.get_mut(header_len..total_len).ok_or(bad)?;
    let sum = tcp_checksum(src, dst, segment);
    segment
        .get_mut(16..18)
        .ok_or(WireError::TcpTruncated { len: total_len - header_len })?
        .copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

//! TCP options (RFC 9293 §3.1, RFC 7323, RFC 2018): parse and emit.
//!
//! Invariants:
//! - parsing never panics and never reads past the options area; every
//!   malformed option is reported as an [`OptionError`] naming the option
//!   kind, its byte offset inside the options area, and what was wrong.
//! - [`OptionIter`] mirrors Linux's `tcp_parse_options`: a structural error
//!   (missing length byte, length below 2, length running past the area) ends
//!   the iteration, because nothing after it can be located; a known option
//!   with the wrong length for its kind is reported and skipped, and the
//!   iteration goes on. End-of-list ends the iteration.
//! - [`OptionSummary::parse`] is the lenient, kernel-like reading used by the
//!   tracker: the options before an error keep their values, the first error
//!   is kept for reporting. [`parse_options`] is the strict reading.
//! - [`emit_options`] writes exactly what [`OptionIter`] reads back, padded
//!   with end-of-list bytes to a multiple of 4.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::seq::SeqNum;

/// Option kinds this module knows.
pub mod kind {
    /// End of option list.
    pub const EOL: u8 = 0;
    /// No operation (padding).
    pub const NOP: u8 = 1;
    /// Maximum segment size.
    pub const MSS: u8 = 2;
    /// Window scale.
    pub const WINDOW_SCALE: u8 = 3;
    /// SACK permitted.
    pub const SACK_PERMITTED: u8 = 4;
    /// SACK blocks.
    pub const SACK: u8 = 5;
    /// Timestamps.
    pub const TIMESTAMPS: u8 = 8;
}

/// Largest window-scale shift RFC 7323 allows; Linux clamps larger values.
pub const MAX_WINDOW_SCALE: u8 = 14;

/// Largest TCP options area: data offset 15 words minus the fixed header.
pub const MAX_OPTIONS_LEN: usize = 40;

/// A malformed TCP option. `at` is the byte offset of the option's kind byte
/// inside the options area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum OptionError {
    /// The options area ends right after the kind byte.
    #[error("TCP option kind {kind} at byte {at}: options area ends before its length byte")]
    MissingLength {
        /// Option kind.
        kind: u8,
        /// Offset of the kind byte.
        at: usize,
    },
    /// The length byte is 0 or 1 (it counts kind and length bytes, so >= 2).
    #[error("TCP option kind {kind} at byte {at}: length {len} is below the minimum 2")]
    LengthTooShort {
        /// Option kind.
        kind: u8,
        /// Offset of the kind byte.
        at: usize,
        /// The length byte.
        len: u8,
    },
    /// The option claims more bytes than remain in the options area.
    #[error("TCP option kind {kind} at byte {at}: length {len} overflows the {remaining} bytes left")]
    Overflow {
        /// Option kind.
        kind: u8,
        /// Offset of the kind byte.
        at: usize,
        /// The length byte.
        len: u8,
        /// Bytes left in the area from the kind byte on.
        remaining: usize,
    },
    /// A known option with a length its kind does not allow (skipped).
    #[error("TCP option kind {kind} at byte {at}: length {len} is invalid for this kind")]
    WrongLength {
        /// Option kind.
        kind: u8,
        /// Offset of the kind byte.
        at: usize,
        /// The length byte.
        len: u8,
    },
}

/// Up to four SACK blocks `[left, right)` as carried in one option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SackBlocks {
    blocks: [(SeqNum, SeqNum); 4],
    len: u8,
}

impl SackBlocks {
    /// Blocks from a slice; `None` when it holds more than four.
    pub fn from_slice(blocks: &[(SeqNum, SeqNum)]) -> Option<SackBlocks> {
        let mut out = SackBlocks::default();
        for (slot, block) in out.blocks.iter_mut().zip(blocks) {
            *slot = *block;
        }
        out.len = u8::try_from(blocks.len()).ok().filter(|&n| n <= 4)?;
        Some(out)
    }

    /// The blocks, left edge first in each pair.
    pub fn as_slice(&self) -> &[(SeqNum, SeqNum)] {
        self.blocks.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

/// One TCP option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpOption<'a> {
    /// Kind 0: end of the option list.
    EndOfList,
    /// Kind 1: padding.
    NoOp,
    /// Kind 2: maximum segment size the sender can receive.
    Mss(u16),
    /// Kind 3: window-scale shift the sender will apply to its own windows
    /// (raw value as sent, not clamped).
    WindowScale(u8),
    /// Kind 4: the sender accepts SACK.
    SackPermitted,
    /// Kind 5: SACK blocks.
    Sack(SackBlocks),
    /// Kind 8: timestamp value and echo reply.
    Timestamps {
        /// TSval: the sender's timestamp clock.
        tsval: u32,
        /// TSecr: the latest TSval the sender received.
        tsecr: u32,
    },
    /// Any other kind, with its data (without kind and length bytes).
    Unknown {
        /// Option kind.
        kind: u8,
        /// Option data.
        data: &'a [u8],
    },
}

impl TcpOption<'_> {
    /// Bytes this option takes when emitted.
    pub fn buffer_len(&self) -> usize {
        match self {
            TcpOption::EndOfList | TcpOption::NoOp => 1,
            TcpOption::Mss(_) => 4,
            TcpOption::WindowScale(_) => 3,
            TcpOption::SackPermitted => 2,
            TcpOption::Sack(b) => 2 + 8 * b.as_slice().len(),
            TcpOption::Timestamps { .. } => 10,
            TcpOption::Unknown { data, .. } => 2 + data.len(),
        }
    }

    /// Appends the option's bytes to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), EmitOptionError> {
        let len = u8::try_from(self.buffer_len()).map_err(|_| EmitOptionError::TooLong { len: self.buffer_len() })?;
        match *self {
            TcpOption::EndOfList => out.push(kind::EOL),
            TcpOption::NoOp => out.push(kind::NOP),
            TcpOption::Mss(mss) => {
                out.extend_from_slice(&[kind::MSS, len]);
                out.extend_from_slice(&mss.to_be_bytes());
            }
            TcpOption::WindowScale(shift) => out.extend_from_slice(&[kind::WINDOW_SCALE, len, shift]),
            TcpOption::SackPermitted => out.extend_from_slice(&[kind::SACK_PERMITTED, len]),
            TcpOption::Sack(blocks) => {
                if blocks.as_slice().is_empty() {
                    return Err(EmitOptionError::EmptySack);
                }
                out.extend_from_slice(&[kind::SACK, len]);
                for (left, right) in blocks.as_slice() {
                    out.extend_from_slice(&left.0.to_be_bytes());
                    out.extend_from_slice(&right.0.to_be_bytes());
                }
            }
            TcpOption::Timestamps { tsval, tsecr } => {
                out.extend_from_slice(&[kind::TIMESTAMPS, len]);
                out.extend_from_slice(&tsval.to_be_bytes());
                out.extend_from_slice(&tsecr.to_be_bytes());
            }
            TcpOption::Unknown { kind: k, data } => {
                if k == kind::EOL || k == kind::NOP {
                    return Err(EmitOptionError::SingleByteKind { kind: k });
                }
                out.extend_from_slice(&[k, len]);
                out.extend_from_slice(data);
            }
        }
        Ok(())
    }
}

/// Why options could not be emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EmitOptionError {
    /// One option is longer than its length byte can say.
    #[error("TCP option of {len} bytes does not fit a length byte")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The options together exceed the 40-byte options area.
    #[error("TCP options take {len} bytes, more than the 40-byte options area")]
    AreaTooLong {
        /// Their padded length.
        len: usize,
    },
    /// A SACK option needs at least one block.
    #[error("TCP SACK option with no blocks")]
    EmptySack,
    /// `Unknown` cannot carry kind 0 or 1, which have no length byte.
    #[error("TCP option kind {kind} has no length byte and cannot be emitted as unknown")]
    SingleByteKind {
        /// The kind.
        kind: u8,
    },
}

/// Appends `options` to `out`, padded with end-of-list bytes to a multiple
/// of 4; fails when the padded area would exceed 40 bytes.
pub fn emit_options(options: &[TcpOption<'_>], out: &mut Vec<u8>) -> Result<(), EmitOptionError> {
    let raw: usize = options.iter().map(TcpOption::buffer_len).sum();
    let padded = raw.div_ceil(4) * 4;
    if padded > MAX_OPTIONS_LEN {
        return Err(EmitOptionError::AreaTooLong { len: padded });
    }
    for option in options {
        option.emit(out)?;
    }
    out.resize(out.len() + (padded - raw), kind::EOL);
    Ok(())
}

/// Iterator over the options area of a TCP header. See the module docs for
/// when it stops after an error.
#[derive(Debug, Clone)]
pub struct OptionIter<'a> {
    area: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> OptionIter<'a> {
    /// Iterates over `area` (the bytes between the fixed TCP header and the
    /// payload).
    pub fn new(area: &'a [u8]) -> Self {
        OptionIter { area, pos: 0, done: false }
    }
}

fn be_u16(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(*b.first_chunk::<2>()?))
}

fn be_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(*b.first_chunk::<4>()?))
}

fn parse_known<'a>(k: u8, at: usize, len: u8, body: &'a [u8]) -> Result<TcpOption<'a>, OptionError> {
    let wrong = OptionError::WrongLength { kind: k, at, len };
    match k {
        kind::MSS => be_u16(body).filter(|_| body.len() == 2).map(TcpOption::Mss).ok_or(wrong),
        kind::WINDOW_SCALE => match body {
            [shift] => Ok(TcpOption::WindowScale(*shift)),
            _ => Err(wrong),
        },
        kind::SACK_PERMITTED => {
            if body.is_empty() {
                Ok(TcpOption::SackPermitted)
            } else {
                Err(wrong)
            }
        }
        kind::SACK => {
            if body.is_empty() || !body.len().is_multiple_of(8) || body.len() > 32 {
                return Err(wrong);
            }
            let mut blocks = [(SeqNum(0), SeqNum(0)); 4];
            let mut n = 0u8;
            for (slot, chunk) in blocks.iter_mut().zip(body.chunks_exact(8)) {
                let left = be_u32(chunk).ok_or(wrong)?;
                let right = chunk.get(4..).and_then(be_u32).ok_or(wrong)?;
                *slot = (SeqNum(left), SeqNum(right));
                n += 1;
            }
            Ok(TcpOption::Sack(SackBlocks { blocks, len: n }))
        }
        kind::TIMESTAMPS => {
            if body.len() != 8 {
                return Err(wrong);
            }
            let tsval = be_u32(body).ok_or(wrong)?;
            let tsecr = body.get(4..).and_then(be_u32).ok_or(wrong)?;
            Ok(TcpOption::Timestamps { tsval, tsecr })
        }
        _ => Ok(TcpOption::Unknown { kind: k, data: body }),
    }
}

impl<'a> Iterator for OptionIter<'a> {
    type Item = Result<TcpOption<'a>, OptionError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let at = self.pos;
        let Some(rest) = self.area.get(at..) else {
            self.done = true;
            return None;
        };
        let Some((&k, after)) = rest.split_first() else {
            self.done = true;
            return None;
        };
        match k {
            kind::EOL => {
                self.done = true;
                Some(Ok(TcpOption::EndOfList))
            }
            kind::NOP => {
                self.pos += 1;
                Some(Ok(TcpOption::NoOp))
            }
            _ => {
                let Some(&len) = after.first() else {
                    self.done = true;
                    return Some(Err(OptionError::MissingLength { kind: k, at }));
                };
                if len < 2 {
                    self.done = true;
                    return Some(Err(OptionError::LengthTooShort { kind: k, at, len }));
                }
                let Some(body) = rest.get(2..usize::from(len)) else {
                    self.done = true;
                    return Some(Err(OptionError::Overflow { kind: k, at, len, remaining: rest.len() }));
                };
                self.pos += usize::from(len);
                Some(parse_known(k, at, len, body))
            }
        }
    }
}

impl std::iter::FusedIterator for OptionIter<'_> {}

/// Strict reading: every option except padding (NOP, EOL), or the first
/// error of any kind.
pub fn parse_options(area: &[u8]) -> Result<Vec<TcpOption<'_>>, OptionError> {
    OptionIter::new(area).filter(|o| !matches!(o, Ok(TcpOption::NoOp | TcpOption::EndOfList))).collect()
}

/// The options the tracker cares about, read leniently (see module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OptionSummary {
    /// MSS option, if present.
    pub mss: Option<u16>,
    /// Window-scale option (raw, unclamped), if present.
    pub window_scale: Option<u8>,
    /// SACK-permitted option present.
    pub sack_permitted: bool,
    /// SACK blocks, if present.
    pub sack: Option<SackBlocks>,
    /// Timestamps `(tsval, tsecr)`, if present.
    pub timestamps: Option<(u32, u32)>,
    /// The first malformed option met, if any.
    pub error: Option<OptionError>,
}

impl OptionSummary {
    /// Reads `area` the way Linux does: later valid options override earlier
    /// ones of the same kind; errors are remembered, not fatal.
    pub fn parse(area: &[u8]) -> OptionSummary {
        let mut s = OptionSummary::default();
        for option in OptionIter::new(area) {
            match option {
                Ok(TcpOption::Mss(v)) => s.mss = Some(v),
                Ok(TcpOption::WindowScale(v)) => s.window_scale = Some(v),
                Ok(TcpOption::SackPermitted) => s.sack_permitted = true,
                Ok(TcpOption::Sack(b)) => s.sack = Some(b),
                Ok(TcpOption::Timestamps { tsval, tsecr }) => s.timestamps = Some((tsval, tsecr)),
                Ok(TcpOption::EndOfList | TcpOption::NoOp | TcpOption::Unknown { .. }) => {}
                Err(e) => {
                    s.error.get_or_insert(e);
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<TcpOption<'static>> {
        vec![
            TcpOption::Mss(1460),
            TcpOption::SackPermitted,
            TcpOption::Timestamps { tsval: 0xdead_beef, tsecr: 7 },
            TcpOption::NoOp,
            TcpOption::WindowScale(7),
            TcpOption::Unknown { kind: 30, data: &[1, 2, 3] },
        ]
    }

    #[test]
    fn round_trip_every_kind() {
        let opts = all_kinds();
        let mut out = Vec::new();
        emit_options(&opts, &mut out).unwrap();
        assert_eq!(out.len() % 4, 0);
        assert_eq!(out.len(), 28);
        let back: Vec<_> = OptionIter::new(&out).collect::<Result<_, _>>().unwrap();
        assert_eq!(&back[..opts.len()], &opts[..]);
        assert_eq!(back[opts.len()], TcpOption::EndOfList);
        let strict = parse_options(&out).unwrap();
        assert_eq!(strict.len(), 5, "NOP and EOL are dropped by the strict reading");

        let sack = SackBlocks::from_slice(&[(SeqNum(u32::MAX - 10), SeqNum(5)), (SeqNum(100), SeqNum(200))]).unwrap();
        let mut out = Vec::new();
        emit_options(&[TcpOption::NoOp, TcpOption::NoOp, TcpOption::Sack(sack)], &mut out).unwrap();
        assert_eq!(out.len(), 20);
        assert_eq!(parse_options(&out).unwrap(), vec![TcpOption::Sack(sack)]);
        let summary = OptionSummary::parse(&out);
        assert_eq!(summary.sack.unwrap().as_slice(), sack.as_slice());
        assert_eq!(summary.error, None);
    }

    #[test]
    fn emit_rejects_overlong() {
        let big = [0u8; 40];
        let mut out = Vec::new();
        assert_eq!(
            emit_options(&[TcpOption::Unknown { kind: 99, data: &big }], &mut out),
            Err(EmitOptionError::AreaTooLong { len: 44 })
        );
        assert!(SackBlocks::from_slice(&[(SeqNum(0), SeqNum(1)); 5]).is_none());
        assert_eq!(TcpOption::Sack(SackBlocks::default()).emit(&mut out), Err(EmitOptionError::EmptySack));
    }

    #[test]
    fn structural_errors_stop_iteration() {
        // MSS with length 0.
        let area = [kind::MSS, 0, 5, 180];
        let got: Vec<_> = OptionIter::new(&area).collect();
        assert_eq!(got, vec![Err(OptionError::LengthTooShort { kind: 2, at: 0, len: 0 })]);
        // NOP then timestamps claiming 10 bytes with 6 left.
        let area = [kind::NOP, kind::TIMESTAMPS, 10, 0, 0, 0, 0];
        let got: Vec<_> = OptionIter::new(&area).collect();
        assert_eq!(
            got,
            vec![Ok(TcpOption::NoOp), Err(OptionError::Overflow { kind: 8, at: 1, len: 10, remaining: 6 })]
        );
        // Kind byte is the last byte.
        let area = [kind::NOP, kind::NOP, kind::NOP, kind::WINDOW_SCALE];
        assert_eq!(parse_options(&area), Err(OptionError::MissingLength { kind: 3, at: 3 }));
        // Length 1.
        assert_eq!(parse_options(&[77, 1, 0, 0]), Err(OptionError::LengthTooShort { kind: 77, at: 0, len: 1 }));
    }

    #[test]
    fn wrong_length_is_skipped_like_linux() {
        // MSS with length 3, then a valid window scale.
        let area = [kind::MSS, 3, 9, kind::WINDOW_SCALE, 3, 7, kind::EOL, 0];
        let got: Vec<_> = OptionIter::new(&area).collect();
        assert_eq!(
            got,
            vec![
                Err(OptionError::WrongLength { kind: 2, at: 0, len: 3 }),
                Ok(TcpOption::WindowScale(7)),
                Ok(TcpOption::EndOfList)
            ]
        );
        let s = OptionSummary::parse(&area);
        assert_eq!(s.mss, None);
        assert_eq!(s.window_scale, Some(7));
        assert_eq!(s.error, Some(OptionError::WrongLength { kind: 2, at: 0, len: 3 }));
        // SACK with a partial block.
        assert_eq!(
            parse_options(&[kind::SACK, 6, 0, 0, 0, 0]),
            Err(OptionError::WrongLength { kind: 5, at: 0, len: 6 })
        );
        // Timestamps of 8 bytes, SACK-permitted of 3.
        assert!(parse_options(&[kind::TIMESTAMPS, 8, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(parse_options(&[kind::SACK_PERMITTED, 3, 0, 0]).is_err());
    }

    #[test]
    fn eol_ends_and_ignores_trailing_garbage() {
        let area = [kind::EOL, 0xff, 0xff, 0xff];
        assert_eq!(parse_options(&area), Ok(vec![]));
        assert_eq!(parse_options(&[]), Ok(vec![]));
    }
}

//! Digests of the bytes the replica moves, so outputs can be compared without
//! shipping them: a BLAKE3 hash of the whole, a CRC per 4 KiB chunk to locate
//! the first difference, and the first bytes verbatim for the report.
//!
//! Invariant: two byte strings have equal [`Digest`]s only if their lengths,
//! hashes, chunk CRCs and heads are all equal; [`Digest::first_difference`]
//! never claims a more precise offset than the data supports.

use serde::{Deserialize, Serialize};

/// Bytes of the head kept verbatim.
pub const HEAD: usize = 16;
/// Chunk size for the per-chunk CRCs.
pub const CHUNK: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub len: u64,
    pub hash: [u8; 16],
    pub head: Vec<u8>,
    pub chunks: Vec<u32>,
}

/// Where two digests first differ, as far as the digests can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Difference {
    /// Lengths differ.
    Length { expected: u64, actual: u64 },
    /// The first differing byte is exactly here.
    At(u64),
    /// The first difference lies within `[start, end)`.
    Within(u64, u64),
}

impl Digest {
    /// Digests `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest::of_parts(&[data])
    }

    /// Digests the concatenation of `parts` (an iovec).
    pub fn of_parts(parts: &[&[u8]]) -> Digest {
        let mut h = blake3::Hasher::new();
        let mut head = Vec::with_capacity(HEAD);
        let mut chunks = Vec::new();
        let mut crc = crc32fast::Hasher::new();
        let mut in_chunk = 0usize;
        let mut len = 0u64;
        for part in parts {
            h.update(part);
            len += part.len() as u64;
            if head.len() < HEAD {
                let take = (HEAD - head.len()).min(part.len());
                head.extend_from_slice(&part[..take]);
            }
            let mut rest: &[u8] = part;
            while !rest.is_empty() {
                let take = (CHUNK - in_chunk).min(rest.len());
                crc.update(&rest[..take]);
                in_chunk += take;
                rest = &rest[take..];
                if in_chunk == CHUNK {
                    chunks.push(std::mem::take(&mut crc).finalize());
                    in_chunk = 0;
                }
            }
        }
        if in_chunk > 0 {
            chunks.push(crc.finalize());
        }
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&h.finalize().as_bytes()[..16]);
        Digest { len, hash, head, chunks }
    }

    /// Locates the first difference between `self` (expected) and `actual`,
    /// or `None` when they are equal.
    pub fn first_difference(&self, actual: &Digest) -> Option<Difference> {
        if self == actual {
            return None;
        }
        if let Some(i) = self.head.iter().zip(&actual.head).position(|(a, b)| a != b) {
            return Some(Difference::At(i as u64));
        }
        if let Some(i) = self.chunks.iter().zip(&actual.chunks).position(|(a, b)| a != b) {
            let start = (i * CHUNK) as u64;
            let start = start.max(self.head.len().min(actual.head.len()) as u64);
            let end = (((i + 1) * CHUNK) as u64).min(self.len.min(actual.len));
            return Some(Difference::Within(start, end.max(start + 1)));
        }
        if self.len != actual.len {
            return Some(Difference::Length { expected: self.len, actual: actual.len });
        }
        Some(Difference::Within(0, self.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_data_equal_digest_and_parts_match_whole() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let a = Digest::of(&data);
        let b = Digest::of_parts(&[&data[..3], &data[3..5000], &data[5000..]]);
        assert_eq!(a, b);
        assert_eq!(a.len, 10_000);
        assert_eq!(a.chunks.len(), 3);
        assert_eq!(a.head, data[..HEAD].to_vec());
        assert_eq!(a.first_difference(&b), None);
    }

    #[test]
    fn difference_located_in_head_chunk_or_length() {
        let data: Vec<u8> = (0..9000u32).map(|i| i as u8).collect();
        let base = Digest::of(&data);
        let mut d = data.clone();
        d[5] ^= 1;
        assert_eq!(base.first_difference(&Digest::of(&d)), Some(Difference::At(5)));
        let mut d = data.clone();
        d[5000] ^= 1;
        assert_eq!(base.first_difference(&Digest::of(&d)), Some(Difference::Within(4096, 8192)));
        let d = &data[..8000];
        assert_eq!(
            base.first_difference(&Digest::of(d)),
            Some(Difference::Within(4096, 8000)),
            "the truncated last chunk differs"
        );
        let d = &data[..8192];
        assert_eq!(base.first_difference(&Digest::of(d)), Some(Difference::Length { expected: 9000, actual: 8192 }));
    }
}

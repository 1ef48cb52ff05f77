//! TCP sequence numbers: arithmetic modulo 2^32 (RFC 793 §3.3, RFC 1982).
//!
//! Invariants:
//! - every comparison is a wrapping comparison: `a.before(b)` holds when `b`
//!   lies in the half of the sequence space (2^31 values) that follows `a`.
//!   Two numbers exactly 2^31 apart each count as before the other (distance
//!   `i32::MIN`); the tracker never compares values that far apart, because a
//!   TCP window is below 2^30.
//! - `SeqNum` deliberately does not implement `Ord`/`PartialOrd`: the relation
//!   is not transitive across the whole space, so it must never be used for
//!   sorting. Use [`SeqNum::before`], [`SeqNum::after`] and friends.
//! - addition and subtraction wrap; nothing here can panic or overflow.

use std::fmt;
use std::ops::{Add, Sub};

use serde::{Deserialize, Serialize};

/// A TCP sequence (or acknowledgement) number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct SeqNum(pub u32);

impl SeqNum {
    /// Signed distance from `other` to `self`: positive when `self` is after
    /// `other`. Exactly 2^31 apart yields `i32::MIN` (counted as "before").
    pub fn diff(self, other: SeqNum) -> i32 {
        self.0.wrapping_sub(other.0).cast_signed()
    }

    /// Unsigned forward distance from `earlier` to `self` (mod 2^32).
    pub fn since(self, earlier: SeqNum) -> u32 {
        self.0.wrapping_sub(earlier.0)
    }

    /// `self` comes strictly before `other`.
    pub fn before(self, other: SeqNum) -> bool {
        self.diff(other) < 0
    }

    /// `self` comes before or equals `other`.
    pub fn before_eq(self, other: SeqNum) -> bool {
        self.diff(other) <= 0
    }

    /// `self` comes strictly after `other`.
    pub fn after(self, other: SeqNum) -> bool {
        self.diff(other) > 0
    }

    /// `self` comes after or equals `other`.
    pub fn after_eq(self, other: SeqNum) -> bool {
        self.diff(other) >= 0
    }

    /// The later of the two (wrapping); `self` when equal.
    pub fn latest(self, other: SeqNum) -> SeqNum {
        if other.after(self) { other } else { self }
    }

    /// The earlier of the two (wrapping); `self` when equal.
    pub fn earliest(self, other: SeqNum) -> SeqNum {
        if other.before(self) { other } else { self }
    }

    /// `lo <= self <= hi` walking forward from `lo` (inclusive both ends).
    pub fn within(self, lo: SeqNum, hi: SeqNum) -> bool {
        self.since(lo) <= hi.since(lo)
    }
}

impl Add<u32> for SeqNum {
    type Output = SeqNum;
    fn add(self, rhs: u32) -> SeqNum {
        SeqNum(self.0.wrapping_add(rhs))
    }
}

impl Sub<u32> for SeqNum {
    type Output = SeqNum;
    fn sub(self, rhs: u32) -> SeqNum {
        SeqNum(self.0.wrapping_sub(rhs))
    }
}

impl fmt::Debug for SeqNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SeqNum({})", self.0)
    }
}

impl fmt::Display for SeqNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Wrapping "a is after b" for 32-bit timestamp values (RFC 7323 §5.2 uses
/// the same modular comparison for TSval as for sequence numbers).
pub(crate) fn ts_after(a: u32, b: u32) -> bool {
    SeqNum(a).after(SeqNum(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_across_wrap() {
        let a = SeqNum(u32::MAX - 5);
        let b = a + 10;
        assert_eq!(b, SeqNum(4));
        assert!(a.before(b));
        assert!(b.after(a));
        assert!(a.before_eq(a) && a.after_eq(a));
        assert_eq!(b.since(a), 10);
        assert_eq!(a.diff(b), -10);
        assert_eq!(a.latest(b), b);
        assert_eq!(b.latest(a), b);
        assert_eq!(a.earliest(b), a);
        assert_eq!(b - 10, a);
    }

    #[test]
    fn within_inclusive_and_wrapping() {
        let lo = SeqNum(u32::MAX - 1);
        let hi = SeqNum(3);
        assert!(SeqNum(u32::MAX).within(lo, hi));
        assert!(SeqNum(0).within(lo, hi));
        assert!(lo.within(lo, hi));
        assert!(hi.within(lo, hi));
        assert!(!SeqNum(4).within(lo, hi));
        assert!(!SeqNum(u32::MAX - 2).within(lo, hi));
    }

    #[test]
    fn half_space_is_before() {
        let a = SeqNum(0);
        let b = SeqNum(1 << 31);
        assert!(a.before(b) && b.before(a));
        assert!(ts_after(5, u32::MAX));
        assert!(!ts_after(u32::MAX, 5));
    }
}

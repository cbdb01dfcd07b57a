//! The containers the model counts in, shaped as the kernel keeps the
//! counts: a value per lock mode, a value per reason, and a dense log2
//! histogram. Each is indexed by `probes-common`'s enums; only their JSON
//! forms, which are [`crate::wire::json`]'s, name things.

use std::ops::{Index, IndexMut};

use probes_common::{hist, LockMode, Reason};

/// One value per lock mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerMode<T> {
    pub shared: T,
    pub exclusive: T,
}

impl<T> PerMode<T> {
    pub fn from_fn(mut f: impl FnMut(LockMode) -> T) -> PerMode<T> {
        PerMode {
            shared: f(LockMode::Shared),
            exclusive: f(LockMode::Exclusive),
        }
    }

    /// `f` of each mode's value in `self` and `other`.
    pub fn zip_with<U, V>(&self, other: &PerMode<U>, mut f: impl FnMut(&T, &U) -> V) -> PerMode<V> {
        PerMode {
            shared: f(&self.shared, &other.shared),
            exclusive: f(&self.exclusive, &other.exclusive),
        }
    }
}

impl PerMode<u64> {
    /// The value of a kernel array indexed by `LockMode`.
    pub fn from_array(a: [u64; LockMode::COUNT]) -> PerMode<u64> {
        PerMode::from_fn(|m| a[m as usize])
    }

    pub fn sum(&self) -> u64 {
        self.shared + self.exclusive
    }

    /// `self - base`, never below zero.
    pub fn minus(&self, base: &PerMode<u64>) -> PerMode<u64> {
        self.zip_with(base, |a, b| a.saturating_sub(*b))
    }
}

impl<T> Index<LockMode> for PerMode<T> {
    type Output = T;
    fn index(&self, mode: LockMode) -> &T {
        match mode {
            LockMode::Shared => &self.shared,
            LockMode::Exclusive => &self.exclusive,
        }
    }
}

impl<T> IndexMut<LockMode> for PerMode<T> {
    fn index_mut(&mut self, mode: LockMode) -> &mut T {
        match mode {
            LockMode::Shared => &mut self.shared,
            LockMode::Exclusive => &mut self.exclusive,
        }
    }
}

/// One value per reason, in the kernel's slot order (an array, not a map: a
/// snapshot of 10,000 inodes would otherwise allocate 100,000 strings per
/// refresh).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerReason<T>([T; Reason::COUNT]);

impl<T> PerReason<T> {
    pub fn from_fn(f: impl FnMut(Reason) -> T) -> PerReason<T> {
        // `Reason::ALL` is in slot order (tested below).
        PerReason(Reason::ALL.map(f))
    }
}

impl PerReason<u64> {
    /// The value of a kernel array indexed by `Reason::slot`.
    pub fn from_slots(slots: &[u64; Reason::COUNT]) -> PerReason<u64> {
        PerReason(*slots)
    }

    /// `self - base`, never below zero.
    pub fn minus(&self, base: &PerReason<u64>) -> PerReason<u64> {
        PerReason::from_fn(|r| self[r].saturating_sub(base[r]))
    }
}

impl<T> Index<Reason> for PerReason<T> {
    type Output = T;
    fn index(&self, r: Reason) -> &T {
        &self.0[r.slot()]
    }
}

impl<T> IndexMut<Reason> for PerReason<T> {
    fn index_mut(&mut self, r: Reason) -> &mut T {
        &mut self.0[r.slot()]
    }
}

/// A log2 histogram of durations ([`probes_common::hist`]'s buckets). Only
/// the non-empty buckets are held, shortest first: a file's writes fill a
/// few of the 32, and every live file keeps five histograms (an empty one
/// holds no allocation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram(Box<[(u8, u64)]>);

/// One non-empty histogram bucket: `count` values `<= le_ns` (and above the
/// previous bucket's bound); `le_ns` is `None` for the unbounded last bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub le_ns: Option<u64>,
    pub count: u64,
}

const NO_COUNTS: [u64; hist::HIST_BUCKETS] = [0; hist::HIST_BUCKETS];

impl Histogram {
    pub fn from_counts(counts: &[u64; hist::HIST_BUCKETS]) -> Histogram {
        Histogram(
            (0u8..)
                .zip(counts)
                .filter(|(_, &n)| n > 0)
                .map(|(k, &n)| (k, n))
                .collect(),
        )
    }

    /// The count of every bucket, in bucket order.
    pub fn counts(&self) -> [u64; hist::HIST_BUCKETS] {
        let mut counts = NO_COUNTS;
        for &(k, n) in self.0.iter() {
            counts[usize::from(k)] = n;
        }
        counts
    }

    /// The largest value of bucket `k` (`None`: unbounded).
    pub fn le_ns(k: usize) -> Option<u64> {
        hist::upper_bound(k).map(|ub| ub - 1)
    }

    /// The non-empty buckets, shortest durations first.
    pub fn buckets(&self) -> impl Iterator<Item = Bucket> + '_ {
        self.0.iter().map(|&(k, count)| Bucket {
            le_ns: Histogram::le_ns(usize::from(k)),
            count,
        })
    }

    /// The histogram its non-empty buckets describe, or which bound is no
    /// bucket's.
    pub fn from_buckets(buckets: impl IntoIterator<Item = Bucket>) -> Result<Histogram, String> {
        let mut counts = NO_COUNTS;
        for b in buckets {
            let k = match b.le_ns {
                Some(le) => hist::bucket(le),
                None => hist::HIST_BUCKETS - 1,
            };
            if Histogram::le_ns(k) != b.le_ns {
                return Err(format!("{:?} is not a histogram bucket bound", b.le_ns));
            }
            counts[k] = counts[k].saturating_add(b.count);
        }
        Ok(Histogram::from_counts(&counts))
    }

    /// `self - base`, bucket by bucket, never below zero.
    pub fn minus(&self, base: &Histogram) -> Histogram {
        let (cur, base) = (self.counts(), base.counts());
        Histogram::from_counts(&std::array::from_fn(|k| cur[k].saturating_sub(base[k])))
    }

    /// Bucket-wise sum.
    pub fn plus(&self, other: &Histogram) -> Histogram {
        let (a, b) = (self.counts(), other.counts());
        Histogram::from_counts(&std::array::from_fn(|k| a[k] + b[k]))
    }

    /// The largest value of the bucket holding the 99th percentile, with
    /// `u64::MAX` for the unbounded bucket; `None` when empty.
    pub fn p99_le_ns(&self) -> Option<u64> {
        let total: u64 = self.0.iter().map(|&(_, n)| n).sum();
        if total == 0 {
            return None;
        }
        let target = total - total / 100; // ceil-ish of 0.99 * total
        let mut seen = 0;
        for &(k, n) in self.0.iter() {
            seen += n;
            if seen >= target {
                return Some(Histogram::le_ns(usize::from(k)).unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_mode_and_per_reason_index_by_the_enums() {
        let m = PerMode::from_array([3, 4]);
        assert_eq!((m[LockMode::Shared], m[LockMode::Exclusive]), (3, 4));
        assert_eq!(m.sum(), 7);
        assert_eq!(
            m.minus(&PerMode::from_array([1, 9])),
            PerMode::from_array([2, 0])
        );
        for r in Reason::ALL {
            assert_eq!(Reason::ALL[r.slot()], r);
        }
        let r = PerReason::from_slots(&[1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(r[Reason::Append], 4);
        assert_eq!(
            r.minus(&PerReason::from_slots(&[1, 1, 1, 1, 9, 1, 1]))[Reason::PastEof],
            0
        );
    }

    #[test]
    fn p99_picks_the_bucket_holding_the_99th_percentile() {
        let mut counts = NO_COUNTS;
        counts[13] = 990;
        counts[21] = 10;
        assert_eq!(Histogram::from_counts(&counts).p99_le_ns(), Some(8191));
        counts[21] = 11;
        assert_eq!(
            Histogram::from_counts(&counts).p99_le_ns(),
            Some((1 << 21) - 1)
        );
        counts[hist::HIST_BUCKETS - 1] = 1000;
        assert_eq!(Histogram::from_counts(&counts).p99_le_ns(), Some(u64::MAX));
        assert_eq!(Histogram::default().p99_le_ns(), None);
    }
}

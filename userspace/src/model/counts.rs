//! The containers the model counts in, shaped as the kernel keeps the
//! counts: a value per lock mode, a value per reason, and a dense log2
//! histogram. Each is indexed by `probes-common`'s enums; only their JSON
//! forms name things (`{"shared": ..}`, `{"append": ..}`, non-empty buckets).

use std::ops::{Index, IndexMut};

use probes_common::{hist, LockMode, Reason};
use serde::{Deserialize, Serialize};

/// One value per lock mode. In JSON `{"shared": .., "exclusive": ..}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
/// refresh). In JSON an object keyed by `Reason::name` in slot order; a
/// reason absent from a recording made before it existed reads as the
/// default.
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

impl<T: Serialize> Serialize for PerReason<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(Some(Reason::COUNT))?;
        for r in Reason::ALL {
            map.serialize_entry(r.name(), &self[r])?;
        }
        map.end()
    }
}

impl<'de, T: Deserialize<'de> + Default> Deserialize<'de> for PerReason<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PerReasonVisitor(std::marker::PhantomData))
    }
}

/// Reads what the derived `Deserialize` of a struct with one field per
/// reason read: unknown keys skipped (a newer recording still replays),
/// every reason required but `cache_io_mode`, which older recordings lack.
struct PerReasonVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de> + Default> serde::de::Visitor<'de> for PerReasonVisitor<T> {
    type Value = PerReason<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("counts by reason")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<PerReason<T>, A::Error> {
        let mut slots: [Option<T>; Reason::COUNT] = Default::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match Reason::ALL.into_iter().find(|r| r.name() == key) {
                Some(r) => slots[r.slot()] = Some(map.next_value::<T>()?),
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let mut missing = None;
        let read = PerReason::from_fn(|r| match (slots[r.slot()].take(), r) {
            (Some(v), _) => v,
            (None, Reason::CacheIoMode) => T::default(),
            (None, _) => {
                missing.get_or_insert(r);
                T::default()
            }
        });
        match missing {
            Some(r) => Err(serde::de::Error::missing_field(r.name())),
            None => Ok(read),
        }
    }
}

/// A log2 histogram of durations ([`probes_common::hist`]'s buckets), dense
/// as the kernel keeps it; an empty one holds no allocation. In JSON only its
/// non-empty buckets, as [`Bucket`]s.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram(Option<Box<[u64; hist::HIST_BUCKETS]>>);

/// One non-empty histogram bucket: `count` values `<= le_ns` (and above the
/// previous bucket's bound); `le_ns` is `null` for the unbounded last bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub le_ns: Option<u64>,
    pub count: u64,
}

const NO_COUNTS: [u64; hist::HIST_BUCKETS] = [0; hist::HIST_BUCKETS];

impl Histogram {
    pub fn from_counts(counts: &[u64; hist::HIST_BUCKETS]) -> Histogram {
        Histogram(counts.iter().any(|&n| n > 0).then(|| Box::new(*counts)))
    }

    /// The count of every bucket, in bucket order.
    pub fn counts(&self) -> &[u64; hist::HIST_BUCKETS] {
        self.0.as_deref().unwrap_or(&NO_COUNTS)
    }

    /// The largest value of bucket `k` (`None`: unbounded).
    pub fn le_ns(k: usize) -> Option<u64> {
        hist::upper_bound(k).map(|ub| ub - 1)
    }

    /// The non-empty buckets, shortest durations first.
    pub fn buckets(&self) -> impl Iterator<Item = Bucket> + '_ {
        self.counts()
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(k, &count)| Bucket {
                le_ns: Histogram::le_ns(k),
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
        let counts = self.counts();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let target = total - total / 100; // ceil-ish of 0.99 * total
        let mut seen = 0;
        for (k, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= target {
                return Some(Histogram::le_ns(k).unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }
}

impl Serialize for Histogram {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.buckets())
    }
}

impl<'de> Deserialize<'de> for Histogram {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Histogram::from_buckets(Vec::<Bucket>::deserialize(deserializer)?)
            .map_err(serde::de::Error::custom)
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
        let r = PerReason::from_slots(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(r[Reason::Append], 4);
        assert_eq!(
            r.minus(&PerReason::from_slots(&[1, 1, 1, 1, 9, 1]))[Reason::PastEof],
            0
        );
    }

    #[test]
    fn reason_counts_read_and_write_the_named_json_object() {
        let counts: PerReason<u64> = PerReason::from_slots(&[1, 2, 3, 4, 5, 6]);
        let json = serde_json::to_string(&counts).expect("json");
        assert_eq!(
            json,
            r#"{"eligible":1,"no_parallel_flag":2,"buffered":3,"append":4,"past_eof":5,"cache_io_mode":6}"#
        );
        let back: PerReason<u64> = serde_json::from_str(&json).expect("read back");
        assert_eq!(back, counts);
        assert_eq!(back[Reason::Append], 4);

        // A recording from before `cache_io_mode`, with a key from a newer one.
        let old: PerReason<u64> = serde_json::from_str(
            r#"{"eligible":1,"no_parallel_flag":2,"buffered":3,"append":4,"past_eof":5,"later":{"x":1}}"#,
        )
        .expect("older recording");
        assert_eq!(old, PerReason::from_slots(&[1, 2, 3, 4, 5, 0]));

        let missing = serde_json::from_str::<PerReason<u64>>(r#"{"eligible":1}"#)
            .expect_err("no_parallel_flag is required");
        assert!(
            missing
                .to_string()
                .contains("missing field `no_parallel_flag`"),
            "{missing}"
        );
        assert!(serde_json::from_str::<PerReason<u64>>(r#"{"eligible":"1"}"#).is_err());
    }

    #[test]
    fn histogram_json_lists_non_empty_buckets_and_reads_back_dense() {
        let mut counts = NO_COUNTS;
        counts[0] = 2;
        counts[13] = 5;
        counts[hist::HIST_BUCKETS - 1] = 1;
        let h = Histogram::from_counts(&counts);
        let json = serde_json::to_string(&h).expect("json");
        assert_eq!(
            json,
            r#"[{"le_ns":0,"count":2},{"le_ns":8191,"count":5},{"le_ns":null,"count":1}]"#
        );
        let back: Histogram = serde_json::from_str(&json).expect("read back");
        assert_eq!(back.counts(), &counts);
        assert_eq!(Histogram::default().counts(), &NO_COUNTS);
        assert_eq!(
            serde_json::to_string(&Histogram::default()).expect("json"),
            "[]"
        );
        let bad = serde_json::from_str::<Histogram>(r#"[{"le_ns":1000,"count":1}]"#);
        assert!(bad.is_err(), "1000 is no bucket's bound");
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

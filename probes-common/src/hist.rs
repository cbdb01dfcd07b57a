//! Log2 histograms of durations in nanoseconds.
//!
//! Bucket 0 holds 0 ns; bucket `k >= 1` holds `[2^(k-1), 2^k)` ns; the last
//! bucket also takes everything longer. 32 buckets reach ~1 s before the
//! overflow bucket, enough for lock waits and write latencies.

/// Number of buckets.
pub const HIST_BUCKETS: usize = 32;

/// The bucket of `ns`. Written as a branchy binary search: the BPF target has
/// no count-leading-zeros instruction and the verifier wants no loops here.
#[inline(always)]
pub fn bucket(ns: u64) -> usize {
    if ns == 0 {
        return 0;
    }
    let mut v = ns;
    let mut log = 0usize;
    if v >= 1 << 32 {
        v >>= 32;
        log += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        log += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        log += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        log += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        log += 2;
    }
    if v >= 1 << 1 {
        log += 1;
    }
    let b = log + 1;
    if b >= HIST_BUCKETS {
        HIST_BUCKETS - 1
    } else {
        b
    }
}

/// The exclusive upper bound of bucket `k` in ns (`None` for the last,
/// unbounded bucket). Values in bucket `k` are `< upper_bound(k)`.
pub const fn upper_bound(k: usize) -> Option<u64> {
    if k + 1 >= HIST_BUCKETS {
        None
    } else {
        Some(1 << k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log2() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 1);
        assert_eq!(bucket(2), 2);
        assert_eq!(bucket(3), 2);
        assert_eq!(bucket(4), 3);
        assert_eq!(bucket(1023), 10);
        assert_eq!(bucket(1024), 11);
        assert_eq!(bucket(u64::MAX), HIST_BUCKETS - 1);
        assert_eq!(bucket(1 << 40), HIST_BUCKETS - 1);
    }

    #[test]
    fn every_value_is_below_its_bucket_bound() {
        for shift in 0..63 {
            for v in [(1u64 << shift) - 1, 1 << shift, (1 << shift) + 1] {
                let b = bucket(v);
                if let Some(ub) = upper_bound(b) {
                    assert!(v < ub, "{v} in bucket {b} with bound {ub}");
                }
                if b > 0 {
                    let lower = upper_bound(b - 1).expect("lower bucket is bounded");
                    assert!(v >= lower, "{v} in bucket {b} below {lower}");
                }
            }
        }
    }
}

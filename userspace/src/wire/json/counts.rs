//! The JSON of the model's containers: a value per reason as an object keyed
//! by `Reason::name` in slot order, and a histogram as its non-empty buckets.
//! A value per mode is a plain struct (`{"shared": .., "exclusive": ..}`) and
//! derives its form.

use probes_common::Reason;
use serde::{Deserialize, Serialize};

use crate::model::counts::{Bucket, Histogram, PerReason};

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
    use probes_common::hist;

    use super::*;
    use crate::model::counts::NO_COUNTS;

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
}

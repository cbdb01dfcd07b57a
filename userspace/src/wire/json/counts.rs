//! The count containers' JSON: a value per mode or per reason as an object
//! keyed by the enum's name, in the kernel's order; a histogram as its
//! non-empty buckets.

use std::{
    fmt,
    marker::PhantomData,
    ops::{Index, IndexMut},
};

use probes_common::{LockMode, Reason};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use serde_with::{de::DeserializeAsWrap, ser::SerializeAsWrap, DeserializeAs, SerializeAs};

use super::object::read_object;
use crate::model::counts::{Bucket, Histogram, PerMode, PerReason};

/// `PerMode<T>` as `{"shared": .., "exclusive": ..}`, each value as `U`.
pub struct PerModeJson<U>(PhantomData<U>);

/// `PerReason<T>` as `{"eligible": .., "no_parallel_flag": .., ..}`, each
/// value as `U`.
pub struct PerReasonJson<U>(PhantomData<U>);

/// A histogram as its non-empty buckets, `[{"le_ns": .., "count": ..}]`.
pub struct HistogramJson;

/// The enums whose names key an object.
trait Key: Copy + 'static {
    /// In the order they are written.
    const ALL: &'static [Self];
    fn name(self) -> &'static str;
    /// Whether a recording may lack it (it was added later).
    fn optional(self) -> bool {
        false
    }
}

impl Key for LockMode {
    const ALL: &'static [LockMode] = &LockMode::ALL;
    fn name(self) -> &'static str {
        LockMode::name(self)
    }
}

impl Key for Reason {
    const ALL: &'static [Reason] = &Reason::ALL;
    fn name(self) -> &'static str {
        Reason::name(self)
    }
    fn optional(self) -> bool {
        // Recordings from before the reason existed lack it.
        self.info().since_schema > 1
    }
}

fn write_keyed<K: Key, C: Index<K, Output = T>, T, U: SerializeAs<T>, S: Serializer>(
    counts: &C,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(
        K::ALL
            .iter()
            .map(|&k| (k.name(), SerializeAsWrap::<T, U>::new(&counts[k]))),
    )
}

/// Reads an object with one key per `K`, as [`read_object`] reads it; an
/// optional key that is missing reads as the default.
struct Keyed<K, C, T, U>(PhantomData<(K, C, T, U)>);

impl<'de, K, C, T, U> de::Visitor<'de> for Keyed<K, C, T, U>
where
    K: Key,
    C: Default + IndexMut<K, Output = T>,
    U: DeserializeAs<'de, T>,
{
    type Value = C;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object keyed by ")?;
        f.write_str(
            &K::ALL
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", "),
        )
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<C, A::Error> {
        let mut read = C::default();
        read_object(
            map,
            |name| K::ALL.iter().position(|k| k.name() == name),
            |i, map| {
                read[K::ALL[i]] = map.next_value::<DeserializeAsWrap<T, U>>()?.into_inner();
                Ok(())
            },
            K::ALL
                .iter()
                .enumerate()
                .filter(|(_, k)| !k.optional())
                .map(|(i, k)| (i, k.name())),
        )?;
        Ok(read)
    }
}

fn read_keyed<'de, K, C, T, U, D>(deserializer: D) -> Result<C, D::Error>
where
    K: Key,
    C: Default + IndexMut<K, Output = T>,
    U: DeserializeAs<'de, T>,
    D: Deserializer<'de>,
{
    deserializer.deserialize_map(Keyed::<K, C, T, U>(PhantomData))
}

impl<T, U: SerializeAs<T>> SerializeAs<PerMode<T>> for PerModeJson<U> {
    fn serialize_as<S: Serializer>(counts: &PerMode<T>, serializer: S) -> Result<S::Ok, S::Error> {
        write_keyed::<LockMode, _, T, U, S>(counts, serializer)
    }
}

impl<'de, T: Default, U: DeserializeAs<'de, T>> DeserializeAs<'de, PerMode<T>> for PerModeJson<U> {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<PerMode<T>, D::Error> {
        read_keyed::<LockMode, _, T, U, D>(deserializer)
    }
}

impl<T, U: SerializeAs<T>> SerializeAs<PerReason<T>> for PerReasonJson<U> {
    fn serialize_as<S: Serializer>(
        counts: &PerReason<T>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        write_keyed::<Reason, _, T, U, S>(counts, serializer)
    }
}

impl<'de, T: Default, U: DeserializeAs<'de, T>> DeserializeAs<'de, PerReason<T>>
    for PerReasonJson<U>
{
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<PerReason<T>, D::Error> {
        read_keyed::<Reason, _, T, U, D>(deserializer)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "Bucket")]
struct BucketJson {
    le_ns: Option<u64>,
    count: u64,
}

/// One bucket as written: the histogram hands out buckets by value.
struct BucketOut(Bucket);

impl Serialize for BucketOut {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        BucketJson::serialize(&self.0, serializer)
    }
}

impl SerializeAs<Histogram> for HistogramJson {
    fn serialize_as<S: Serializer>(h: &Histogram, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(h.buckets().map(BucketOut))
    }
}

impl<'de> DeserializeAs<'de, Histogram> for HistogramJson {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<Histogram, D::Error> {
        #[derive(Deserialize)]
        struct BucketIn(#[serde(with = "BucketJson")] Bucket);
        let buckets = Vec::<BucketIn>::deserialize(deserializer)?;
        Histogram::from_buckets(buckets.into_iter().map(|b| b.0)).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use probes_common::hist;
    use serde_with::Same;

    use super::*;
    use crate::wire::json::tests::{from_json, to_json};

    type Reasons = PerReasonJson<Same>;

    #[test]
    fn reason_counts_read_and_write_the_named_json_object() {
        let counts: PerReason<u64> = PerReason::from_slots(&[1, 2, 3, 4, 5, 6, 7]);
        let json = to_json::<Reasons, _>(&counts);
        assert_eq!(
            json,
            r#"{"eligible":1,"no_parallel_flag":2,"buffered":3,"append":4,"past_eof":5,"cache_io_mode":6,"past_eof_at_lock":7}"#
        );
        let back: PerReason<u64> = from_json::<Reasons, _>(&json).expect("read back");
        assert_eq!(back, counts);
        assert_eq!(back[Reason::Append], 4);

        // A recording from before `cache_io_mode` and `past_eof_at_lock`,
        // with a key from a newer one.
        let old: PerReason<u64> = from_json::<Reasons, _>(
            r#"{"eligible":1,"no_parallel_flag":2,"buffered":3,"append":4,"past_eof":5,"later":{"x":1}}"#,
        )
        .expect("older recording");
        assert_eq!(old, PerReason::from_slots(&[1, 2, 3, 4, 5, 0, 0]));

        let missing = from_json::<Reasons, PerReason<u64>>(r#"{"eligible":1}"#)
            .expect_err("no_parallel_flag is required");
        assert!(
            missing
                .to_string()
                .contains("missing field `no_parallel_flag`"),
            "{missing}"
        );
        assert!(from_json::<Reasons, PerReason<u64>>(r#"{"eligible":"1"}"#).is_err());
    }

    #[test]
    fn mode_counts_read_and_write_shared_then_exclusive() {
        let counts = PerMode::from_array([3, 4]);
        let json = to_json::<PerModeJson<Same>, _>(&counts);
        assert_eq!(json, r#"{"shared":3,"exclusive":4}"#);
        assert_eq!(
            from_json::<PerModeJson<Same>, PerMode<u64>>(&json).expect("read back"),
            counts
        );
        let missing = from_json::<PerModeJson<Same>, PerMode<u64>>(r#"{"shared":3}"#)
            .expect_err("exclusive is required");
        assert!(
            missing.to_string().contains("missing field `exclusive`"),
            "{missing}"
        );
    }

    #[test]
    fn histogram_json_lists_non_empty_buckets_and_reads_back_dense() {
        let mut counts = [0; hist::HIST_BUCKETS];
        counts[0] = 2;
        counts[13] = 5;
        counts[hist::HIST_BUCKETS - 1] = 1;
        let h = Histogram::from_counts(&counts);
        let json = to_json::<HistogramJson, _>(&h);
        assert_eq!(
            json,
            r#"[{"le_ns":0,"count":2},{"le_ns":8191,"count":5},{"le_ns":null,"count":1}]"#
        );
        let back: Histogram = from_json::<HistogramJson, _>(&json).expect("read back");
        assert_eq!(back.counts(), counts);
        assert_eq!(to_json::<HistogramJson, _>(&Histogram::default()), "[]");
        let bad = from_json::<HistogramJson, Histogram>(r#"[{"le_ns":1000,"count":1}]"#);
        assert!(bad.is_err(), "1000 is no bucket's bound");
    }
}

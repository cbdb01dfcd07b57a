//! Reading an object field by field as serde's derived `Deserialize` of a
//! struct reads it, for the forms whose fields come from a list (the
//! per-mode and per-reason objects, the health counters) rather than from
//! a struct's declaration.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};

/// Reads the object `map` walks: a key that `position` does not know is
/// skipped (a newer recording still replays), a known one is read by
/// `read` with its position, and the first of `required` (positions and
/// names) that was not read is a missing field. At most 64 positions.
pub(super) fn read_object<'de, A: MapAccess<'de>>(
    mut map: A,
    position: impl Fn(&str) -> Option<usize>,
    mut read: impl FnMut(usize, &mut A) -> Result<(), A::Error>,
    mut required: impl Iterator<Item = (usize, &'static str)>,
) -> Result<(), A::Error> {
    // Bit i: position i was read.
    let mut seen = 0u64;
    while let Some(key) = map.next_key_seed(KeyIn(&position))? {
        match key {
            Some(i) => {
                read(i, &mut map)?;
                seen |= 1 << i;
            }
            None => {
                map.next_value::<de::IgnoredAny>()?;
            }
        }
    }
    match required.find(|&(i, _)| seen & (1 << i) == 0) {
        Some((_, name)) => Err(de::Error::missing_field(name)),
        None => Ok(()),
    }
}

/// A key as its position, looked up in place: keys are not allocated.
struct KeyIn<F>(F);

impl<'de, F: Fn(&str) -> Option<usize>> DeserializeSeed<'de> for KeyIn<F> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<F: Fn(&str) -> Option<usize>> Visitor<'_> for KeyIn<F> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        Ok((self.0)(v))
    }
}

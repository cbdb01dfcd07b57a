//! `open_flags` in JSON as the kernel's headers write them (`"0xc0"`), for
//! `#[serde(with = "crate::hex_flags")]`.

use core::fmt;

use serde::{de, Deserializer, Serializer};

pub fn serialize<S: Serializer>(flags: &u32, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_args!("{flags:#x}"))
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    struct Hex;
    impl de::Visitor<'_> for Hex {
        type Value = u32;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("open flags as a hexadecimal string such as \"0xc0\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u32, E> {
            // Recordings from before the first open was seen wrote "".
            if v.is_empty() {
                return Ok(0);
            }
            v.strip_prefix("0x")
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }
    deserializer.deserialize_str(Hex)
}

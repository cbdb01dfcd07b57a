//! The JSON of the kernel's types (`probes-common`): devices as `"MAJ:MIN"`,
//! write paths by name, open flags in hex as the kernel's headers write them,
//! and the programs' health counters by their field names.

use std::fmt;

use probes_common::{Dev, Health, OpenStats, WritePath};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use serde_with::{serde_as, DeserializeAs, SerializeAs};

use super::object::read_object;

/// A device as `"0:45"`, as `/proc/self/mountinfo` prints it.
pub struct DevJson;

/// A write path by [`WritePath::name`].
pub struct WritePathJson;

/// `open_flags` as `"0xc0"`.
struct HexFlags;

/// The programs' health counters by their field names, flattened into the
/// health object, but for the bookkeeping `NOT_WRITTEN` names.
pub struct HealthJson;

/// `Health`'s bookkeeping that userspace turns into other figures
/// (evictions) or uses only to decide whether to read the maps.
const NOT_WRITTEN: [&str; 3] = ["inode_inserts", "unconfigured", "opens"];

/// `Health` counters that recordings made before them lack: they read as 0
/// when missing, where the others are required.
const ADDED_LATER: [&str; 1] = ["writers_full"];

// `read_object` marks what it has read in a u64.
const _: () = assert!(Health::NAMES.len() <= 64);

impl SerializeAs<Dev> for DevJson {
    fn serialize_as<S: Serializer>(dev: &Dev, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(dev)
    }
}

impl<'de> DeserializeAs<'de, Dev> for DevJson {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<Dev, D::Error> {
        struct MajMin;
        impl de::Visitor<'_> for MajMin {
            type Value = Dev;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a device number such as \"0:45\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dev, E> {
                Dev::parse(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        deserializer.deserialize_str(MajMin)
    }
}

const WRITE_PATHS: [&str; WritePath::COUNT] = [WritePath::ALL[0].name(), WritePath::ALL[1].name()];

impl SerializeAs<WritePath> for WritePathJson {
    fn serialize_as<S: Serializer>(path: &WritePath, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(path.name())
    }
}

impl<'de> DeserializeAs<'de, WritePath> for WritePathJson {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<WritePath, D::Error> {
        struct Name;
        impl de::Visitor<'_> for Name {
            type Value = WritePath;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a write path")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WritePath, E> {
                WritePath::ALL
                    .into_iter()
                    .find(|p| p.name() == v)
                    .ok_or_else(|| E::unknown_variant(v, &WRITE_PATHS))
            }
        }
        deserializer.deserialize_str(Name)
    }
}

impl SerializeAs<u32> for HexFlags {
    fn serialize_as<S: Serializer>(flags: &u32, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{flags:#x}"))
    }
}

impl<'de> DeserializeAs<'de, u32> for HexFlags {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
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
}

/// What opens asked for and what the kernel kept.
#[serde_as]
#[derive(Serialize, Deserialize)]
#[serde(remote = "OpenStats")]
pub struct OpenStatsJson {
    opens: u64,
    passthrough: u64,
    direct_io: u64,
    parallel_asked: u64,
    parallel_kept: u64,
    passthrough_parallel_asked: u64,
    passthrough_parallel_kept: u64,
    #[serde_as(as = "HexFlags")]
    last_flags_asked: u32,
    #[serde_as(as = "HexFlags")]
    last_flags_kept: u32,
}

super::via_remote!(OpenStatsJson => OpenStats);

fn written(name: &str) -> bool {
    !NOT_WRITTEN.contains(&name)
}

impl SerializeAs<Health> for HealthJson {
    fn serialize_as<S: Serializer>(health: &Health, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(health.fields().filter(|(name, _)| written(name)))
    }
}

impl<'de> DeserializeAs<'de, Health> for HealthJson {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<Health, D::Error> {
        struct Counters;
        impl<'de> de::Visitor<'de> for Counters {
            type Value = Health;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("the programs' health counters")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Health, A::Error> {
                let mut health = Health::default();
                read_object(
                    map,
                    |key| Health::NAMES.iter().position(|&n| n == key && written(n)),
                    |i, map| match health.field_mut(Health::NAMES[i]) {
                        Some(field) => map.next_value().map(|v| *field = v),
                        None => map.next_value::<de::IgnoredAny>().map(drop),
                    },
                    Health::NAMES
                        .iter()
                        .copied()
                        .enumerate()
                        .filter(|(_, name)| written(name) && !ADDED_LATER.contains(name)),
                )?;
                Ok(health)
            }
        }
        deserializer.deserialize_map(Counters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::json::tests::{from_json, to_json};

    /// A file's open evidence is the kernel's `OpenStats` as it is, its flags
    /// written in hex as they always were.
    #[test]
    fn open_stats_json_writes_flags_in_hex() {
        let open = OpenStats {
            opens: 3,
            passthrough: 2,
            parallel_asked: 1,
            last_flags_asked: 0xc0,
            last_flags_kept: 0x80,
            ..OpenStats::default()
        };
        let json = to_json::<OpenStatsJson, _>(&open);
        assert_eq!(
            json,
            r#"{"opens":3,"passthrough":2,"direct_io":0,"parallel_asked":1,"parallel_kept":0,"passthrough_parallel_asked":0,"passthrough_parallel_kept":0,"last_flags_asked":"0xc0","last_flags_kept":"0x80"}"#
        );
        assert_eq!(
            from_json::<OpenStatsJson, OpenStats>(&json).expect("read back"),
            open
        );
        // Older recordings wrote "" before any open.
        let empty = json.replace("\"0xc0\"", "\"\"");
        let read: OpenStats = from_json::<OpenStatsJson, _>(&empty).expect("empty flags");
        assert_eq!(read.last_flags_asked, 0);
        let bad = json.replace("0xc0", "c0");
        let err = from_json::<OpenStatsJson, OpenStats>(&bad).expect_err("not hex");
        assert!(err.to_string().contains("0xc0"), "{err}");
    }

    /// What the health object leaves out is named as `Health` names it: a
    /// renamed field would otherwise appear in the JSON unannounced.
    #[test]
    fn the_health_left_out_is_healths() {
        for name in NOT_WRITTEN.into_iter().chain(ADDED_LATER) {
            assert!(Health::NAMES.contains(&name), "{name} is no Health field");
        }
    }

    #[test]
    fn write_paths_read_and_write_by_name() {
        for path in WritePath::ALL {
            let json = to_json::<WritePathJson, _>(&path);
            assert_eq!(json, format!("\"{}\"", path.name()));
            assert_eq!(
                from_json::<WritePathJson, WritePath>(&json).expect("read"),
                path
            );
        }
        let err = from_json::<WritePathJson, WritePath>("\"splice\"").expect_err("no such path");
        assert!(err.to_string().contains("passthrough"), "{err}");
    }
}

//! A stream's lines as JSON, one object per line: the documented
//! `stat --json` schema (docs/json.md) and the record/replay format.
//!
//! The JSON of every type in a line is declared in this module and nowhere
//! else: the line's own fields (`final`, `delta`, `removed` and their order)
//! here, the snapshot's parts in `snapshot`, the count containers in
//! `counts`, the kernel's types in `kernel` and `verify`'s verdict in
//! [`verdict`]. The model carries no serde of its own. Each form is a type
//! that writes and reads its model type (serde_with's `SerializeAs` and
//! `DeserializeAs`).

use std::{collections::HashMap, io, sync::Arc};

use probes_common::OpenStats;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_with::{ser::SerializeAsWrap, serde_as};

/// Makes the functions serde's `remote` derive gives `$json` the form of
/// `$model` for `serde_as` (with `serialize` only, for output-only forms).
macro_rules! via_remote {
    ($($json:ident => $model:ty),+ $(,)?) => {$(
        impl serde_with::SerializeAs<$model> for $json {
            fn serialize_as<S: serde::Serializer>(v: &$model, s: S) -> Result<S::Ok, S::Error> {
                $json::serialize(v, s)
            }
        }
        impl<'de> serde_with::DeserializeAs<'de, $model> for $json {
            fn deserialize_as<D: serde::Deserializer<'de>>(d: D) -> Result<$model, D::Error> {
                $json::deserialize(d)
            }
        }
    )+};
    (serialize $($json:ident => $model:ty),+ $(,)?) => {$(
        impl serde_with::SerializeAs<$model> for $json {
            fn serialize_as<S: serde::Serializer>(v: &$model, s: S) -> Result<S::Ok, S::Error> {
                $json::serialize(v, s)
            }
        }
    )+};
}
use via_remote;

mod counts;
mod kernel;
mod object;
mod snapshot;
pub mod verdict;
mod workload;

use self::{
    kernel::OpenStatsJson,
    snapshot::{
        DeviceTotalsJson, EntriesOut, EntryJson, FileIdJson, HealthReportJson, SourceJson,
        TotalsJson,
    },
};
use crate::{
    model::snapshot::{DeviceTotals, Entry, FileId, HealthReport, Snapshot, Source, Totals},
    wire::stream::{Encoder, Line, Lines},
};

/// A line as written, borrowing from the snapshot; `entries` is either the
/// entries themselves or their JSON as kept by [`Fragments`].
#[serde_as]
#[derive(Serialize)]
struct LineOut<'a, E: Serialize> {
    /// Seconds since the Unix epoch.
    timestamp: f64,
    /// Seconds since fuselock attached.
    elapsed_secs: f64,
    #[serde_as(as = "&SourceJson")]
    source: &'a Source,
    #[serde(rename = "final")]
    is_final: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    delta: bool,
    entries: E,
    #[serde(skip_serializing_if = "nothing_removed")]
    #[serde_as(as = "&[FileIdJson]")]
    removed: &'a [FileId],
    #[serde_as(as = "&TotalsJson")]
    totals: &'a Totals,
    #[serde_as(as = "&[DeviceTotalsJson]")]
    devices: &'a [DeviceTotals],
    #[serde_as(as = "&OpenStatsJson")]
    opens: &'a OpenStats,
    #[serde_as(as = "&HealthReportJson")]
    health: &'a HealthReport,
}

fn nothing_removed(removed: &&[FileId]) -> bool {
    removed.is_empty()
}

/// A line as read: what [`LineOut`] writes, `delta` and `removed` optional.
/// (Named `Snapshot` in errors, as before.)
#[serde_as]
#[derive(Deserialize)]
#[serde(rename = "Snapshot")]
struct LineIn {
    timestamp: f64,
    elapsed_secs: f64,
    #[serde_as(as = "SourceJson")]
    source: Source,
    #[serde(rename = "final")]
    is_final: bool,
    #[serde(default)]
    delta: bool,
    #[serde_as(as = "Vec<Arc<EntryJson>>")]
    entries: Vec<Arc<Entry>>,
    #[serde(default)]
    #[serde_as(as = "Vec<FileIdJson>")]
    removed: Vec<FileId>,
    #[serde_as(as = "TotalsJson")]
    totals: Totals,
    #[serde_as(as = "Vec<DeviceTotalsJson>")]
    devices: Vec<DeviceTotals>,
    #[serde_as(as = "OpenStatsJson")]
    opens: OpenStats,
    #[serde_as(as = "HealthReportJson")]
    health: HealthReport,
}

fn line_out<'a, E: Serialize>(line: &'a Line, entries: E) -> LineOut<'a, E> {
    let s = &line.snapshot;
    LineOut {
        timestamp: s.timestamp,
        elapsed_secs: s.elapsed_secs,
        source: &s.source,
        is_final: s.is_final,
        delta: line.delta,
        entries,
        removed: &line.removed,
        totals: &s.totals,
        devices: &s.devices,
        opens: &s.opens,
        health: &s.health,
    }
}

/// `line` as one JSON object (no newline).
pub fn to_string(line: &Line) -> serde_json::Result<String> {
    serde_json::to_string(&line_out(line, EntriesOut(&line.snapshot.entries)))
}

/// The line one JSON object stands for.
pub fn from_str(text: &str) -> serde_json::Result<Line> {
    let l: LineIn = serde_json::from_str(text)?;
    Ok(Line {
        snapshot: Snapshot {
            timestamp: l.timestamp,
            elapsed_secs: l.elapsed_secs,
            source: l.source,
            is_final: l.is_final,
            entries: l.entries.into(),
            totals: l.totals,
            devices: l.devices,
            opens: l.opens,
            health: l.health,
            // Not a part of the JSON lines: the exporter's alone.
            workloads: None,
        },
        delta: l.delta,
        removed: l.removed,
    })
}

/// Writes successive snapshots as a JSON-lines stream.
pub struct Writer {
    encoder: Encoder,
    /// Only when every line is whole: then most entries of a line are the
    /// same allocations as in the previous one, and formatting them again
    /// would be most of the line's cost. Delta lines carry only new
    /// allocations, so there nothing is kept.
    fragments: Option<Fragments>,
}

impl Writer {
    pub fn new(lines: Lines) -> Writer {
        Writer {
            encoder: Encoder::new(lines),
            fragments: (lines == Lines::Whole).then(Fragments::default),
        }
    }

    /// Writes the line for `snap`, and a newline.
    pub fn write(&mut self, snap: &Snapshot, out: &mut dyn io::Write) -> io::Result<()> {
        let line = self.encoder.encode(snap);
        match self.fragments.as_mut() {
            // Only a whole stream keeps fragments, and its every line is whole.
            Some(fragments) => {
                debug_assert!(!line.delta);
                let raw = fragments.update(&line.snapshot.entries)?;
                serde_json::to_writer(&mut *out, &line_out(&line, raw))?;
            }
            None => serde_json::to_writer(
                &mut *out,
                &line_out(&line, EntriesOut(&line.snapshot.entries)),
            )?,
        }
        out.write_all(b"\n")
    }
}

/// Each entry's JSON as last written, with the entry it was made from.
///
/// The collector hands out the same allocation for an entry that did not
/// change (see [`crate::collect`]); keeping the `Arc` keeps that address
/// from being reused by another entry while its JSON is kept here.
#[derive(Default)]
struct Fragments {
    kept: Vec<(Arc<Entry>, Box<RawValue>)>,
    /// How many entries the last update had to format.
    formatted: usize,
}

impl Fragments {
    /// The JSON of every entry of `entries`, in order: kept where the entry
    /// is the same allocation, formatted where it is not; the rest dropped.
    fn update(&mut self, entries: &[Arc<Entry>]) -> serde_json::Result<Vec<&RawValue>> {
        // The old entries stay alive until the end, so no address among
        // them can be taken by a new entry meanwhile.
        let mut before: Vec<Option<(Arc<Entry>, Box<RawValue>)>> = std::mem::take(&mut self.kept)
            .into_iter()
            .map(Some)
            .collect();
        // Built only when an entry is not where it was: the collector keeps
        // its order, but a new file (or an evicted one) shifts the rest.
        let mut by_address: Option<HashMap<*const Entry, usize>> = None;
        let mut kept = Vec::with_capacity(entries.len());
        self.formatted = 0;
        for (i, e) in entries.iter().enumerate() {
            let in_place = before
                .get(i)
                .and_then(Option::as_ref)
                .is_some_and(|(old, _)| Arc::ptr_eq(old, e));
            let at = if in_place {
                Some(i)
            } else {
                by_address
                    .get_or_insert_with(|| {
                        before
                            .iter()
                            .enumerate()
                            .filter_map(|(k, o)| o.as_ref().map(|(old, _)| (Arc::as_ptr(old), k)))
                            .collect()
                    })
                    .get(&Arc::as_ptr(e))
                    .copied()
            };
            let raw = match at.and_then(|k| before[k].take()) {
                Some((_, raw)) => raw,
                None => {
                    self.formatted += 1;
                    serde_json::value::to_raw_value(&SerializeAsWrap::<Entry, EntryJson>::new(e))?
                }
            };
            kept.push((e.clone(), raw));
        }
        self.kept = kept;
        Ok(self.kept.iter().map(|(_, raw)| &**raw).collect())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_with::{de::DeserializeAsWrap, DeserializeAs, SerializeAs};

    use super::*;
    use crate::{model::snapshot::Entries, wire::stream::tests::entry};

    /// `value` as JSON in the form `F`.
    pub(crate) fn to_json<F: SerializeAs<T>, T>(value: &T) -> String {
        serde_json::to_string(&SerializeAsWrap::<T, F>::new(value)).expect("json")
    }

    /// The value JSON `text` stands for in the form `F`.
    pub(crate) fn from_json<'de, F: DeserializeAs<'de, T>, T>(
        text: &'de str,
    ) -> serde_json::Result<T> {
        serde_json::from_str::<DeserializeAsWrap<T, F>>(text).map(DeserializeAsWrap::into_inner)
    }

    #[test]
    fn json_round_trips_with_documented_names() {
        let line = Line::whole(Snapshot {
            entries: Entries::from(vec![entry(2, 1)]),
            ..Default::default()
        });
        let text = to_string(&line).expect("serialise");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let e = &v["entries"][0];
        for key in [
            "dev",
            "ino",
            "name",
            "path",
            "writes",
            "bytes",
            "shared",
            "exclusive",
            "acquisitions",
        ] {
            assert!(e.get(key).is_some(), "entry lacks {key}: {e}");
        }
        assert_eq!(e["acquisitions"]["exclusive"]["past_eof"], 0);
        assert_eq!(v["final"], false);
        assert!(v.get("delta").is_none() && v.get("removed").is_none());
        let back = from_str(&text).expect("parse");
        assert_eq!(back.snapshot, line.snapshot);
        assert!(!back.delta && back.removed.is_empty());
    }

    #[test]
    fn the_line_keeps_its_field_order() {
        let line = Line {
            snapshot: Snapshot::default(),
            delta: true,
            removed: vec![entry(7, 1).id()],
        };
        let text = to_string(&line).expect("serialise");
        let keys: Vec<&str> = [
            "timestamp",
            "elapsed_secs",
            "source",
            "final",
            "delta",
            "entries",
            "removed",
            "totals",
            "devices",
            "opens",
            "health",
        ]
        .into_iter()
        .filter(|k| text.contains(&format!("\"{k}\":")))
        .collect();
        assert_eq!(keys.len(), 11, "{text}");
        let at = |k: &str| text.find(&format!("\"{k}\":")).expect("key");
        assert!(keys.windows(2).all(|w| at(w[0]) < at(w[1])), "{text}");
        assert!(text.contains(r#""removed":[{"dev":"0:45","ino":7,"path":"passthrough"}]"#));
    }

    /// With `--every-entry`, what is written is byte for byte what a fresh
    /// formatting writes, whether entries are kept, changed, added, removed
    /// or reordered.
    #[test]
    fn kept_fragments_write_the_same_bytes() {
        let (a, b, c) = (entry(2, 1), entry(3, 1), entry(4, 1));
        let lists = [
            vec![a.clone(), b.clone(), c.clone()],
            vec![a.clone(), entry(3, 2), c.clone()],
            vec![c.clone(), a.clone()],
            vec![c.clone(), a.clone(), entry(9, 9)],
            vec![],
            vec![a.clone()],
        ];
        let mut writer = Writer::new(Lines::Whole);
        for list in lists {
            let snap = Snapshot {
                entries: list.into(),
                ..Default::default()
            };
            let mut out = Vec::new();
            writer.write(&snap, &mut out).expect("write");
            let fresh = to_string(&Line::whole(snap)).expect("json") + "\n";
            assert_eq!(String::from_utf8(out).expect("utf-8"), fresh);
        }
    }

    /// A full map: a new file evicts an old one, so the list keeps its
    /// length while every entry after the new one moves by one place. Only
    /// the new entry is formatted.
    #[test]
    fn a_shifted_list_formats_only_its_new_entry() {
        let old: Vec<Arc<Entry>> = (10..20).map(|ino| entry(ino, 1)).collect();
        let mut shifted = vec![entry(1, 1)];
        shifted.extend_from_slice(&old[..9]);
        let mut fragments = Fragments::default();
        fragments.update(&old).expect("json");
        assert_eq!(fragments.formatted, 10);
        let raw: Vec<String> = fragments
            .update(&shifted)
            .expect("json")
            .iter()
            .map(|r| r.get().to_owned())
            .collect();
        assert_eq!(fragments.formatted, 1);
        let fresh: Vec<String> = shifted
            .iter()
            .map(|e| to_json::<EntryJson, Entry>(e))
            .collect();
        assert_eq!(raw, fresh);
    }
}

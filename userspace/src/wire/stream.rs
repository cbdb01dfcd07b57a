//! The JSON-lines snapshot stream (`stat --json`, `record`, `top --replay`):
//! whole snapshots in memory, deltas on the wire.
//!
//! With 10,000 live inodes a whole snapshot is megabytes of JSON; written
//! every second it would cost fuselock a core and fill a disk in a day. So a
//! stream starts with a whole snapshot and then writes, per line, only the
//! entries that changed since the previous line (`"delta": true`, plus the
//! keys of entries that left the map in `"removed"`); the final line of a run
//! is whole again, so `tail -1` still gives every entry. [`Decoder`] turns
//! such a stream back into whole snapshots; a line without `delta` is whole.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use crate::model::snapshot::{Entries, Entry, FileId, Snapshot};

/// Which lines of a stream list every entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lines {
    /// The first and the final line whole, the others deltas.
    Deltas,
    /// Every line whole (`--every-entry`).
    Whole,
}

/// One line of a stream: a snapshot, whole or as the changes since the
/// previous line.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// On a delta line, only the entries that changed since the previous
    /// line; otherwise every entry.
    pub snapshot: Snapshot,
    /// Whether the line lists only changes.
    pub delta: bool,
    /// On a delta line: entries gone from the map since the previous line.
    pub removed: Vec<FileId>,
}

impl Line {
    /// A line listing every entry of `snapshot`.
    pub fn whole(snapshot: Snapshot) -> Line {
        Line {
            snapshot,
            delta: false,
            removed: Vec::new(),
        }
    }
}

/// Turns successive whole snapshots into stream lines.
pub struct Encoder {
    lines: Lines,
    /// The entries of the previous line; `None` before the first.
    previous: Option<Entries>,
}

impl Encoder {
    pub fn new(lines: Lines) -> Encoder {
        Encoder {
            lines,
            previous: None,
        }
    }

    /// The line to write for `snap`.
    pub fn encode(&mut self, snap: &Snapshot) -> Line {
        let previous = self.previous.replace(snap.entries.clone());
        let whole = self.lines == Lines::Whole || snap.is_final;
        let (Some(previous), false) = (previous, whole) else {
            return Line::whole(snap.clone());
        };
        // The same list: nothing changed, and nothing needs comparing.
        let (entries, removed) = if previous.same_as(&snap.entries) {
            (Vec::new(), Vec::new())
        } else {
            changes(&previous, &snap.entries)
        };
        Line {
            snapshot: Snapshot {
                entries: entries.into(),
                ..snap.clone_without_entries()
            },
            delta: true,
            removed,
        }
    }
}

/// The entries of `current` not in `previous` (new, or changed), and the
/// keys of `previous` gone from `current`.
///
/// The collector hands out the same allocation for an entry that did not
/// change, so on an idle host every entry is found by its address and no key
/// is built; keys are compared only for the entries that are not.
fn changes(previous: &[Arc<Entry>], current: &[Arc<Entry>]) -> (Vec<Arc<Entry>>, Vec<FileId>) {
    // The same entries in the same order (the collector keeps its order):
    // one pass, comparing keys only where the allocation differs.
    if previous.len() == current.len() {
        let mut changed = Vec::new();
        let aligned = previous.iter().zip(current).all(|(p, c)| {
            if Arc::ptr_eq(p, c) {
                return true;
            }
            let same_key = p.id() == c.id();
            if same_key && **p != **c {
                changed.push(c.clone());
            }
            same_key
        });
        if aligned {
            return (changed, Vec::new());
        }
    }
    let same: HashSet<*const Entry> = previous.iter().map(Arc::as_ptr).collect();
    let unmatched: Vec<&Arc<Entry>> = current
        .iter()
        .filter(|e| !same.contains(&Arc::as_ptr(e)))
        .collect();
    let before: HashMap<FileId, &Arc<Entry>> = previous.iter().map(|e| (e.id(), e)).collect();
    let changed = unmatched
        .into_iter()
        .filter(|e| before.get(&e.id()).is_none_or(|p| ***p != ***e))
        .cloned()
        .collect();
    let now: HashSet<FileId> = current.iter().map(|e| e.id()).collect();
    let mut removed: Vec<FileId> = before.into_keys().filter(|k| !now.contains(k)).collect();
    // The order the JSON has always had: by device and path as text.
    removed.sort_by_cached_key(|k| (k.dev.to_string(), k.ino, k.path.name()));
    (changed, removed)
}

/// Turns stream lines back into whole snapshots.
#[derive(Default)]
pub struct Decoder {
    /// The entries as of the last line by key, and as the list last handed
    /// out; `None` before the first whole one.
    current: Option<(BTreeMap<FileId, Arc<Entry>>, Entries)>,
}

impl Decoder {
    /// The whole snapshot a line stands for, or why it cannot be one.
    pub fn decode(&mut self, line: Line) -> Result<Snapshot, &'static str> {
        if !line.delta {
            if !line.removed.is_empty() {
                return Err("a whole snapshot with `removed` entries");
            }
            let entries = &line.snapshot.entries;
            let by_key = entries.iter().map(|e| (e.id(), e.clone())).collect();
            self.current = Some((by_key, entries.clone()));
            return Ok(line.snapshot);
        }
        let Some((by_key, list)) = self.current.as_mut() else {
            return Err(
                "a delta line before any whole snapshot (is the start of the file missing?)",
            );
        };
        // An empty delta keeps the list, as the live collector does.
        if !line.removed.is_empty() || !line.snapshot.entries.is_empty() {
            for k in &line.removed {
                by_key.remove(k);
            }
            for e in line.snapshot.entries.iter() {
                by_key.insert(e.id(), e.clone());
            }
            *list = by_key.values().cloned().collect();
        }
        Ok(Snapshot {
            entries: list.clone(),
            ..line.snapshot.clone_without_entries()
        })
    }
}

impl Snapshot {
    /// Everything but the entries (cheap: entries are the bulk).
    pub fn clone_without_entries(&self) -> Snapshot {
        Snapshot {
            timestamp: self.timestamp,
            elapsed_secs: self.elapsed_secs,
            source: self.source.clone(),
            is_final: self.is_final,
            entries: Entries::default(),
            totals: self.totals.clone(),
            devices: self.devices.clone(),
            opens: self.opens,
            health: self.health.clone(),
            workloads: self.workloads.clone(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use probes_common::WriteStats;

    use super::*;
    use crate::{
        model::snapshot::{Counters, Histos},
        wire::json,
    };

    /// An entry of `ino` written `writes` times, named `f{ino}`.
    pub(crate) fn entry(ino: u64, writes: u64) -> Arc<Entry> {
        Arc::new(Entry {
            dev: probes_common::Dev(45),
            ino,
            name: Some(format!("f{ino}")),
            mount: Some("/mnt/fuse".into()),
            path: probes_common::WritePath::Passthrough,
            counters: Counters::from(&WriteStats {
                unlocked: writes,
                ..WriteStats::default()
            }),
            histograms: Histos::default(),
            writers: vec![],
            open: None,
        })
    }

    fn snap(entries: Vec<Arc<Entry>>, is_final: bool) -> Snapshot {
        Snapshot {
            entries: entries.into(),
            is_final,
            ..Snapshot::default()
        }
    }

    fn sorted(v: &[Arc<Entry>]) -> Vec<Entry> {
        let mut v = v.to_vec();
        v.sort_by_key(|e| e.id());
        v.into_iter().map(|e| (*e).clone()).collect()
    }

    /// Through JSON and back, as `record` and `top --replay` do.
    fn round_trip(lines: &[Line]) -> Vec<Snapshot> {
        let mut d = Decoder::default();
        lines
            .iter()
            .map(|l| {
                let text = json::to_string(l).expect("json");
                d.decode(json::from_str(&text).expect("parse"))
                    .expect("decode")
            })
            .collect()
    }

    #[test]
    fn deltas_carry_only_changes_and_decode_to_the_whole() {
        let a = entry(2, 1);
        let b = entry(3, 1);
        let c = entry(4, 1);
        let snaps = [
            snap(vec![a.clone(), b.clone(), c.clone()], false),
            // b changed (a new allocation with other counts), c left, d came.
            snap(vec![a.clone(), entry(3, 2), entry(5, 1)], false),
            // Nothing changed.
            snap(vec![a.clone(), entry(3, 2), entry(5, 1)], false),
            snap(vec![a.clone(), entry(3, 2), entry(5, 1)], true),
        ];
        let mut enc = Encoder::new(Lines::Deltas);
        let lines: Vec<Line> = snaps.iter().map(|s| enc.encode(s)).collect();
        assert!(!lines[0].delta);
        assert_eq!(lines[0].snapshot.entries.len(), 3);
        assert!(lines[1].delta);
        let inos: Vec<u64> = sorted(&lines[1].snapshot.entries)
            .iter()
            .map(|e| e.ino)
            .collect();
        assert_eq!(inos, [3, 5]);
        assert_eq!(lines[1].removed.len(), 1);
        assert_eq!(lines[1].removed[0].ino, 4);
        // Equal by value though not the same allocation: not sent again.
        assert!(lines[2].delta);
        assert!(lines[2].snapshot.entries.is_empty() && lines[2].removed.is_empty());
        // The final line is whole.
        assert!(!lines[3].delta);
        assert_eq!(lines[3].snapshot.entries.len(), 3);

        let decoded = round_trip(&lines);
        for (d, s) in decoded.iter().zip(&snaps) {
            assert_eq!(sorted(&d.entries), sorted(&s.entries));
        }
    }

    #[test]
    fn the_same_list_is_an_empty_delta_and_decodes_to_the_same_list() {
        let list: Entries = vec![entry(2, 1), entry(3, 1)].into();
        let line = |final_: bool| Snapshot {
            entries: list.clone(),
            is_final: final_,
            ..Snapshot::default()
        };
        let mut enc = Encoder::new(Lines::Deltas);
        let lines = [enc.encode(&line(false)), enc.encode(&line(false))];
        assert!(
            lines[1].delta && lines[1].snapshot.entries.is_empty() && lines[1].removed.is_empty()
        );
        let decoded = round_trip(&lines);
        assert_eq!(decoded[1].entries.len(), 2);
        // The list is shared, as the collector's is while nothing changes.
        assert!(decoded[1].entries.same_as(&decoded[0].entries));
    }

    #[test]
    fn reordered_entries_are_not_changes() {
        let (a, b) = (entry(2, 1), entry(3, 1));
        let mut enc = Encoder::new(Lines::Deltas);
        enc.encode(&snap(vec![a.clone(), b.clone()], false));
        let line = enc.encode(&snap(vec![b, entry(2, 1)], false));
        assert!(
            line.snapshot.entries.is_empty() && line.removed.is_empty(),
            "{line:?}"
        );
    }

    #[test]
    fn whole_lines_when_asked() {
        let mut enc = Encoder::new(Lines::Whole);
        let s = snap(vec![entry(2, 1)], false);
        for _ in 0..3 {
            let line = enc.encode(&s);
            assert!(!line.delta);
            assert_eq!(line.snapshot.entries.len(), 1);
        }
    }

    #[test]
    fn a_stream_must_start_whole() {
        let mut d = Decoder::default();
        let line = Line {
            snapshot: Snapshot::default(),
            delta: true,
            removed: Vec::new(),
        };
        assert!(d.decode(line).is_err());
        let bad = Line {
            snapshot: Snapshot::default(),
            delta: false,
            removed: vec![entry(1, 1).id()],
        };
        assert!(d.decode(bad).is_err());
    }
}

//! `--max-mounts`: the mounts exported under their own name.

use std::collections::HashSet;

use crate::model::snapshot::{DeviceTotals, Snapshot};

/// The label value the mounts past `--max-mounts` are summed under. No
/// mount point is called that: they are absolute paths, and a mount without
/// one is `dev:MAJ:MIN`.
const OTHER_MOUNTS: &str = "other";

/// At most `max` mounts are exported under their own name: the first seen,
/// for the exporter's whole life, so that a mount's series never moves to
/// `other` and back. The rest are summed into `mount="other"`.
pub(crate) struct MountCap {
    max: usize,
    named: HashSet<Result<String, probes_common::Dev>>,
}

impl MountCap {
    pub(crate) fn new(max: usize) -> MountCap {
        MountCap {
            max,
            named: HashSet::new(),
        }
    }

    /// `snapshot` with the mounts past the cap summed into one row per
    /// path, and how many distinct mounts were summed so.
    pub(crate) fn apply(&mut self, mut snapshot: Snapshot) -> (Snapshot, usize) {
        let mut folded = HashSet::new();
        let mut other: Vec<DeviceTotals> = Vec::new();
        snapshot.devices.retain(|d| {
            // A mount's label is its path, or its device where it has none.
            let key = d.mount.clone().ok_or(d.dev);
            if self.named.contains(&key) {
                return true;
            }
            if self.named.len() < self.max {
                self.named.insert(key);
                return true;
            }
            match other.iter_mut().find(|o| o.path == d.path) {
                Some(o) => o.counters.merge(&d.counters),
                None => other.push(DeviceTotals {
                    dev: probes_common::Dev(0),
                    mount: Some(OTHER_MOUNTS.to_owned()),
                    path: d.path,
                    counters: d.counters.clone(),
                }),
            }
            folded.insert(key);
            false
        });
        snapshot.devices.extend(other);
        (snapshot, folded.len())
    }
}

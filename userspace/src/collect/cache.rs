//! What the collector keeps between refreshes: each entry as last built
//! with what it was built from, the open evidence, and which keys the rings
//! of recent writes say were written since.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use probes_common::{
    maps::{DirtyRing, DIRTY_SLOTS},
    Dev, InodeKey, OpenStats, WritePath, WriteStats, WriterKey,
};

use crate::model::snapshot::{Entries, Entry, Writer};

/// Counters that move whenever any per-file map changes: every write's
/// return bumps `PATH_TOTALS`, every new file `inode_inserts`, every open
/// `opens` (and only the janitor deletes). Equal marks mean the per-file
/// maps hold what they held at the last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ChangeMarks {
    pub(super) writes: u64,
    pub(super) inode_inserts: u64,
    pub(super) opens: u64,
}

/// An entry as last built, with what it was built from.
pub(super) struct Cached {
    pub(super) stats: WriteStats,
    /// When the file was last written (`bpf_ktime_get_ns`), as last read.
    pub(super) last_write_ns: u64,
    pub(super) open: Option<OpenStats>,
    /// Every writer of the entry by tgid (the entry shows the top ones).
    pub(super) writers: HashMap<u32, Writer>,
    pub(super) entry: Arc<Entry>,
}

impl Cached {
    /// A file not read yet: an entry with no counts, to be built.
    pub(super) fn empty(key: &InodeKey, path: WritePath) -> Cached {
        Cached {
            stats: WriteStats::default(),
            last_write_ns: 0,
            open: None,
            writers: HashMap::new(),
            entry: Arc::new(Entry {
                dev: Dev(key.dev),
                ino: key.ino,
                name: None,
                mount: None,
                path,
                counters: Default::default(),
                histograms: Default::default(),
                writers: Vec::new(),
                open: None,
            }),
        }
    }
}

/// Per-file open evidence as last read, and its sum.
#[derive(Default)]
pub(super) struct OpenCache {
    /// `Health::opens` when read; `None`: read again.
    pub(super) mark: Option<u64>,
    pub(super) by_file: HashMap<InodeKey, OpenStats>,
    pub(super) totals: OpenStats,
}

impl OpenCache {
    /// The open evidence of an entry (keyed without the write path).
    pub(super) fn of(&self, key: &InodeKey) -> Option<&OpenStats> {
        self.by_file.get(&InodeKey { path: 0, ..*key })
    }
}

/// What the last full read of the per-inode maps found.
#[derive(Default)]
pub(super) struct InodeCache {
    pub(super) marks: Option<ChangeMarks>,
    pub(super) entries: BTreeMap<InodeKey, Cached>,
    /// `entries` as last handed out; `None` once an entry came or went.
    listed: Option<Listed>,
}

/// The list snapshots share, its keys in the same order, and the keys whose
/// entries were replaced since: a busy file among 10,000 idle ones then
/// costs a copy of the list with one slot changed, not a walk of the map.
struct Listed {
    entries: Entries,
    keys: Vec<InodeKey>,
    replaced: Vec<InodeKey>,
}

impl InodeCache {
    pub(super) fn insert(&mut self, key: InodeKey, cached: Cached) {
        let replaced = self.entries.insert(key, cached).is_some();
        match (&mut self.listed, replaced) {
            (Some(listed), true) => listed.replaced.push(key),
            _ => self.listed = None,
        }
    }

    /// Returns an entry taken out of `entries` to be updated (so the key
    /// set is as the list has it); `replaced` if its entry is a new one.
    pub(super) fn put_back(&mut self, key: InodeKey, cached: Cached, replaced: bool) {
        self.entries.insert(key, cached);
        if let (Some(listed), true) = (&mut self.listed, replaced) {
            listed.replaced.push(key);
        }
    }

    pub(super) fn remove(&mut self, key: &InodeKey) -> Option<Cached> {
        let removed = self.entries.remove(key);
        if removed.is_some() {
            self.listed = None;
        }
        removed
    }

    pub(super) fn retain(&mut self, mut keep: impl FnMut(&InodeKey) -> bool) {
        let before = self.entries.len();
        self.entries.retain(|k, _| keep(k));
        if self.entries.len() != before {
            self.listed = None;
        }
    }

    /// The entries in key order: the same list as last time if none changed.
    pub(super) fn list(&mut self) -> Entries {
        if let Some(listed) = &mut self.listed {
            if listed.replaced.is_empty() {
                return listed.entries.clone();
            }
            let mut entries = listed.entries.to_vec();
            let mut in_place = true;
            for key in listed.replaced.drain(..) {
                match (listed.keys.binary_search(&key), self.entries.get(&key)) {
                    (Ok(i), Some(cached)) => entries[i] = cached.entry.clone(),
                    _ => in_place = false,
                }
            }
            if in_place {
                listed.entries = entries.into();
                return listed.entries.clone();
            }
        }
        let listed = Listed {
            entries: self.entries.values().map(|c| c.entry.clone()).collect(),
            keys: self.entries.keys().copied().collect(),
            replaced: Vec::new(),
        };
        let entries = listed.entries.clone();
        self.listed = Some(listed);
        entries
    }
}

/// The keys written since `last` (each CPU's head then), or `None` when a
/// ring went more than half round since (its oldest slots may have been
/// overwritten while they were read).
pub(super) fn written_since(rings: &[DirtyRing], last: &[u64]) -> Option<HashSet<WriterKey>> {
    if rings.len() != last.len() {
        return None;
    }
    let mut keys = HashSet::new();
    for (ring, &from) in rings.iter().zip(last) {
        let n = ring.head.checked_sub(from)?;
        if n > (DIRTY_SLOTS / 2) as u64 {
            return None;
        }
        for i in from..ring.head {
            keys.insert(ring.keys[(i % DIRTY_SLOTS as u64) as usize]);
        }
    }
    Some(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::{Counters, Histos};

    fn key(ino: u64, tgid: u32) -> WriterKey {
        WriterKey {
            ino,
            dev: 45,
            path: 0,
            tgid,
            _pad: 0,
        }
    }

    fn ring(writes: &[WriterKey], head: u64) -> DirtyRing {
        let mut r = DirtyRing {
            head,
            ..DirtyRing::default()
        };
        // The last `writes.len()` writes before `head`, in order.
        for (i, k) in writes.iter().enumerate() {
            let n = head - writes.len() as u64 + i as u64;
            r.keys[(n % DIRTY_SLOTS as u64) as usize] = *k;
        }
        r
    }

    fn cached(ino: u64) -> Cached {
        Cached {
            stats: WriteStats::default(),
            last_write_ns: 0,
            open: None,
            writers: HashMap::new(),
            entry: Arc::new(Entry {
                dev: probes_common::Dev(45),
                ino,
                name: None,
                mount: None,
                path: probes_common::WritePath::Passthrough,
                counters: Counters::default(),
                histograms: Histos::default(),
                writers: vec![],
                open: None,
            }),
        }
    }

    #[test]
    fn the_entry_list_is_shared_until_an_entry_changes() {
        let k = |ino| InodeKey {
            ino,
            dev: 45,
            path: 0,
        };
        let mut cache = InodeCache::default();
        cache.insert(k(2), cached(2));
        cache.insert(k(3), cached(3));
        let first = cache.list();
        assert_eq!(first.iter().map(|e| e.ino).collect::<Vec<_>>(), [2, 3]);
        assert!(cache.list().same_as(&first), "nothing changed");
        cache.retain(|_| true);
        assert!(cache.list().same_as(&first), "nothing removed");
        assert!(cache.remove(&k(9)).is_none());
        assert!(cache.list().same_as(&first), "nothing to remove");
        cache.insert(k(3), cached(3));
        let second = cache.list();
        assert!(!second.same_as(&first), "an entry was replaced");
        // Patched in place: the other entry is the same allocation, the
        // replaced one is the cache's new one.
        assert!(Arc::ptr_eq(&second[0], &first[0]));
        assert!(!Arc::ptr_eq(&second[1], &first[1]));
        assert!(Arc::ptr_eq(&second[1], &cache.entries[&k(3)].entry));
        cache.insert(k(1), cached(1));
        assert_eq!(
            cache.list().iter().map(|e| e.ino).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        cache.retain(|key| key.ino != 2);
        assert_eq!(
            cache.list().iter().map(|e| e.ino).collect::<Vec<_>>(),
            [1, 3]
        );
    }

    #[test]
    fn written_since_takes_each_cpus_new_slots_once() {
        // CPU 0 wrapped round the ring (slots 1020..1030), CPU 1 wrote twice.
        let cpu0: Vec<WriterKey> = (0..10).map(|i| key(2 + i % 3, 7)).collect();
        let rings = [ring(&cpu0, 1030), ring(&[key(9, 8), key(9, 8)], 2)];
        let keys = written_since(&rings, &[1020, 0]).expect("within the rings");
        let mut got: Vec<(u64, u32)> = keys.iter().map(|k| (k.ino, k.tgid)).collect();
        got.sort_unstable();
        assert_eq!(got, [(2, 7), (3, 7), (4, 7), (9, 8)]);
        // Nothing new: nothing to look up.
        assert_eq!(written_since(&rings, &[1030, 2]), Some(HashSet::new()));
    }

    #[test]
    fn written_since_gives_up_past_half_a_ring_or_on_odd_heads() {
        let rings = [ring(&[], (DIRTY_SLOTS / 2 + 1) as u64)];
        assert_eq!(written_since(&rings, &[0]), None);
        assert!(written_since(&rings, &[1]).is_some());
        // A head behind the last one seen (the map was replaced) or another
        // CPU count: read everything.
        assert_eq!(written_since(&rings, &[600]), None);
        assert_eq!(written_since(&rings, &[0, 0]), None);
    }
}

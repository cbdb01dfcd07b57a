//! Keeping the collector's entry cache up to date: only what the rings of
//! recent writes name when they cover the interval, every entry otherwise.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use anyhow::{Context as _, Result};
use probes_common::{Dev, FileStats, InodeKey, OpenStats, WritePath, WriterKey};

use super::{
    cache::{written_since, Cached, ChangeMarks},
    name_of, writer_of, Collector, TOP_WRITERS,
};
use crate::model::snapshot::{Counters, Entry, Histos, Writer};

impl Collector {
    /// Brings the entry cache up to date. When the rings of recent writes
    /// cover everything since the last refresh, only the entries written
    /// since (and those whose open evidence moved) are looked up, key by
    /// key; otherwise every entry is read.
    pub(super) fn refresh_entries(&mut self, marks: ChangeMarks) -> Result<()> {
        if self.inodes.marks == Some(marks) {
            return Ok(());
        }
        // A new epoch first, then the rings (read after the marks: a write
        // counted in them has pushed its pair, or a push in its epoch came
        // before it on its CPU).
        self.epoch_value += 1;
        self.epoch
            .set(0, &self.epoch_value, 0)
            .context("writing EPOCH")?;
        let rings = self.dirty.get(&0, 0).context("reading DIRTY")?;
        let heads: Vec<u64> = rings.iter().map(|r| r.head).collect();
        let range = self
            .dirty_heads
            .as_ref()
            .and_then(|last| written_since(&rings, last));
        // The pairs pushed since the refresh before last. Only the janitor
        // deletes files, and it tells the cache: so these are every pair
        // whose counts moved, and every new file. After a refresh that read
        // every entry there is no such range, so the next one to find a
        // change reads every entry again: a write of the epoch before that
        // read can land after it, its push skipped for one made before.
        let written = match (&self.inodes.marks, &range, &self.last_range) {
            (Some(_), Some(now), Some(before)) => {
                Some(now.union(before).copied().collect::<HashSet<_>>())
            }
            _ => None,
        };
        match written {
            Some(keys) => self.refresh_written(&keys)?,
            None => self.refresh_all()?,
        }
        self.dirty_heads = Some(heads);
        self.last_range = range;
        self.inodes.marks = Some(marks);
        self.opens_moved = false;
        Ok(())
    }

    /// Looks up the files in `written` and those whose open evidence moved.
    pub(super) fn refresh_written(&mut self, written: &HashSet<WriterKey>) -> Result<()> {
        let mut touched: BTreeMap<InodeKey, Vec<u32>> = BTreeMap::new();
        for w in written {
            touched.entry(w.inode()).or_default().push(w.tgid);
        }
        if self.opens_moved {
            for (key, cached) in &self.inodes.entries {
                if cached.open.as_ref() != self.opens_cache.of(key) {
                    touched.entry(*key).or_default();
                }
            }
        }
        for (key, tgids) in touched {
            let Some(path) = WritePath::from_u32(key.path) else {
                continue;
            };
            let Some(file) = self
                .maps
                .files
                .lookup(&key)
                .context("reading FILES")?
                .and_then(|v| v.first().copied())
            else {
                // Gone (deleted), or never had room: no entry.
                self.inodes.remove(&key);
                continue;
            };
            let open = self.opens_cache.of(&key).copied();
            let (mut cached, before) = match self.inodes.entries.remove(&key) {
                Some(c) => {
                    let before = Some(c.entry.clone());
                    (c, before)
                }
                None => {
                    self.janitor.seen(key.dev, &self.mounts);
                    (Cached::empty(&key, path), None)
                }
            };
            let mut writers_moved = false;
            for tgid in tgids {
                let wkey = WriterKey::new(key, tgid);
                if let Some(w) = self.maps.writers.lookup(&wkey).context("reading WRITERS")? {
                    let writer = writer_of(&wkey, &w[0], &mut self.cgroups);
                    if cached.writers.get(&tgid) != Some(&writer) {
                        cached.writers.insert(tgid, writer);
                        writers_moved = true;
                    }
                }
            }
            if before.is_none()
                || file.stats != cached.stats
                || open != cached.open
                || writers_moved
            {
                cached.entry = Arc::new(self.build_entry(key, path, &file, &cached.writers, open));
                cached.stats = file.stats;
                cached.open = open;
            }
            cached.last_write_ns = file.last_write_ns;
            match before {
                Some(before) => {
                    let replaced = !Arc::ptr_eq(&before, &cached.entry);
                    self.inodes.put_back(key, cached, replaced);
                }
                None => self.inodes.insert(key, cached),
            }
        }
        Ok(())
    }

    /// An entry from what the maps hold for it.
    pub(super) fn build_entry(
        &self,
        key: InodeKey,
        path: WritePath,
        file: &FileStats,
        writers: &HashMap<u32, Writer>,
        open: Option<OpenStats>,
    ) -> Entry {
        let dev = Dev(key.dev);
        let mut top: Vec<Writer> = writers.values().cloned().collect();
        top.sort_by(|a, b| b.writes.cmp(&a.writes).then(a.pid.cmp(&b.pid)));
        top.truncate(TOP_WRITERS);
        Entry {
            mount: self.mounts.mount_of(dev).map(str::to_owned),
            name: name_of(file),
            dev,
            ino: key.ino,
            path,
            counters: Counters::from(&file.stats),
            histograms: Histos::from(&file.hists),
            writers: top,
            open,
        }
    }

    /// Reads `FILES` whole and rebuilds the entries whose counters or open
    /// evidence moved, reading the writers only of those.
    pub(super) fn refresh_all(&mut self) -> Result<()> {
        let mut current: Vec<(InodeKey, FileStats)> = Vec::with_capacity(self.inodes.entries.len());
        self.maps
            .files
            .for_each(|k, v| {
                if let (Some(_), Some(file)) = (WritePath::from_u32(k.path), v.first()) {
                    current.push((*k, *file));
                }
            })
            .context("reading FILES")?;
        current.sort_unstable_by_key(|(k, _)| *k);

        // Entries gone from the map leave the cache.
        self.inodes
            .retain(|k| current.binary_search_by_key(k, |(ck, _)| *ck).is_ok());
        let mut changed: Vec<(InodeKey, FileStats)> = Vec::new();
        for (key, file) in &current {
            let open = self.opens_cache.of(key);
            match self.inodes.entries.get_mut(key) {
                Some(c) if c.stats == file.stats && c.open.as_ref() == open => {
                    c.last_write_ns = file.last_write_ns;
                }
                _ => changed.push((*key, *file)),
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        let is_changed = |k: &InodeKey| changed.binary_search_by_key(k, |(ck, _)| *ck).is_ok();
        let mut writers: HashMap<InodeKey, HashMap<u32, Writer>> = HashMap::new();
        self.maps
            .writers
            .for_each(|k, v| {
                let key = k.inode();
                if let (true, Some(w)) = (is_changed(&key), v.first()) {
                    writers
                        .entry(key)
                        .or_default()
                        .insert(k.tgid, writer_of(k, w, &mut self.cgroups));
                }
            })
            .context("reading WRITERS")?;
        for (key, file) in changed {
            // The programs key entries by `WritePath` values only.
            let Some(path) = WritePath::from_u32(key.path) else {
                continue;
            };
            self.janitor.seen(key.dev, &self.mounts);
            let writers = writers.remove(&key).unwrap_or_default();
            let open = self.opens_cache.of(&key).copied();
            let entry = self.build_entry(key, path, &file, &writers, open);
            self.inodes.insert(
                key,
                Cached {
                    stats: file.stats,
                    last_write_ns: file.last_write_ns,
                    open,
                    writers,
                    entry: Arc::new(entry),
                },
            );
        }
        Ok(())
    }
}

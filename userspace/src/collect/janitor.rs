//! The collector's housekeeping: everything fuselock deletes from the maps,
//! and when. The per-file entries of a device that was unmounted are
//! deleted; when `FILES` nears its capacity, the files written longest ago
//! are forgotten (counted as evictions), as an LRU map would, since a map
//! that allocates on use cannot be one. The device and path totals are
//! never deleted, so no count is lost either way.

use std::collections::HashSet;

use anyhow::{Context as _, Result};
use probes_common::{Dev, InodeKey};

use crate::{
    collect::InodeMaps,
    kernel::mounts::{MountTable, MountWatch},
};

pub(super) struct Janitor {
    mounts_watch: MountWatch,
    /// Devices whose entries were seen while they were mounted here: when
    /// one leaves the mount table, its entries are dropped from the maps.
    mounted_devs: HashSet<u32>,
    max_inodes: u64,
    /// Files deleted because their device was unmounted.
    unmounted_files: u64,
    /// Files forgotten to make room: the evictions.
    evicted: u64,
}

/// Room kept free in `FILES` (a tenth): files that appear between two
/// refreshes find it, and a full map (whose inserts fail, counted in
/// `inode_insert_failed`) is rare.
const fn high_water(max: u64) -> u64 {
    max - max / 10
}

/// Where making room stops (a fifth free), so that it runs once per tenth
/// of the capacity of new files, not at every refresh.
const fn low_water(max: u64) -> u64 {
    let free = max / 5;
    max - if free == 0 { 1 } else { free }
}

impl Janitor {
    /// Starts watching the mount table: create it before reading the table,
    /// so that a mount in between is seen.
    pub(super) fn new(max_inodes: u32) -> Janitor {
        Janitor {
            mounts_watch: MountWatch::new(),
            mounted_devs: HashSet::new(),
            max_inodes: u64::from(max_inodes),
            unmounted_files: 0,
            evicted: 0,
        }
    }

    /// Notes that `dev` has entries, if it is mounted here now.
    pub(super) fn seen(&mut self, dev: u32, mounts: &MountTable) {
        if mounts.has(Dev(dev)) {
            self.mounted_devs.insert(dev);
        }
    }

    /// Files in `FILES` now, from the programs' insert count and what was
    /// deleted here (nothing else deletes from it): no map read.
    pub(super) fn live(&self, inode_inserts: u64) -> u64 {
        inode_inserts
            .saturating_sub(self.unmounted_files)
            .saturating_sub(self.evicted)
    }

    /// Files forgotten to make room so far.
    pub(super) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Deletes the per-file entries of the devices that were mounted and are
    /// not any more (re-reading `mounts` if the mount table changed), and
    /// returns those devices, each once.
    pub(super) fn forget_unmounted(
        &mut self,
        mounts: &mut MountTable,
        maps: &mut InodeMaps,
    ) -> Result<HashSet<u32>> {
        let gone = self.unmounted(mounts);
        if gone.is_empty() {
            return Ok(gone);
        }
        let of_gone = |k: &InodeKey| gone.contains(&k.dev);
        self.unmounted_files += maps
            .files
            .delete_where(|k, _| of_gone(k))
            .context("deleting from FILES")?;
        maps.opens
            .delete_where(|k, _| of_gone(k))
            .context("deleting from OPENS")?;
        maps.writers
            .delete_where(|k, _| gone.contains(&k.dev))
            .context("deleting from WRITERS")?;
        Ok(gone)
    }

    /// When `FILES` holds more than its high water mark, forgets the files
    /// written longest ago down to the low water mark, with their writers
    /// and open evidence; returns their keys. A write racing the delete of
    /// its file counts in the totals, and its file starts again.
    pub(super) fn make_room(
        &mut self,
        inode_inserts: u64,
        maps: &mut InodeMaps,
    ) -> Result<HashSet<InodeKey>> {
        if self.live(inode_inserts) < high_water(self.max_inodes) {
            return Ok(HashSet::new());
        }
        let mut by_age: Vec<(u64, InodeKey)> = Vec::new();
        maps.files
            .for_each(|k, v| {
                if let Some(file) = v.first() {
                    by_age.push((file.last_write_ns, *k));
                }
            })
            .context("reading FILES")?;
        let excess = by_age
            .len()
            .saturating_sub(low_water(self.max_inodes) as usize);
        if excess == 0 {
            return Ok(HashSet::new());
        }
        by_age.select_nth_unstable(excess - 1);
        let doomed: HashSet<InodeKey> = by_age[..excess].iter().map(|(_, k)| *k).collect();
        self.evicted += maps
            .files
            .delete_keys(&doomed)
            .context("deleting from FILES")?;
        maps.writers
            .delete_where(|k, _| doomed.contains(&k.inode()))
            .context("deleting from WRITERS")?;
        // Open evidence is kept per file, whatever its write paths.
        let files: HashSet<InodeKey> = doomed.iter().map(InodeKey::file).collect();
        maps.opens
            .delete_keys(&files)
            .context("deleting from OPENS")?;
        Ok(doomed)
    }

    /// Re-reads `mounts` if the mount table changed, and returns the devices
    /// that had entries while mounted and are mounted no more (each once).
    fn unmounted(&mut self, mounts: &mut MountTable) -> HashSet<u32> {
        if !self.mounts_watch.changed() {
            return HashSet::new();
        }
        *mounts = MountTable::read();
        let gone: HashSet<u32> = self
            .mounted_devs
            .iter()
            .copied()
            .filter(|d| !mounts.has(Dev(*d)))
            .collect();
        self.mounted_devs.retain(|d| !gone.contains(d));
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_made_from_a_tenth_free_down_to_a_fifth() {
        assert_eq!((high_water(16_384), low_water(16_384)), (14_746, 13_108));
        assert_eq!((high_water(500), low_water(500)), (450, 400));
        // A tiny map makes room once full, one file at a time.
        assert_eq!((high_water(4), low_water(4)), (4, 3));
        assert_eq!((high_water(1), low_water(1)), (1, 0));
    }
}

//! The collector's housekeeping: everything fuselock deletes from the maps,
//! and when. In-flight records whose return was missed are aged out; the
//! per-file entries of a device that was unmounted are deleted (the
//! collector then drops what it cached of them).

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use probes_common::{Dev, InFlight, InodeKey};

use crate::{
    collect::{batch::BatchReader, InodeMaps},
    kernel::mounts::{MountTable, MountWatch},
};

pub(super) struct Janitor {
    mounts_watch: MountWatch,
    /// Devices whose entries were seen while they were mounted here: when
    /// one leaves the mount table, its entries are dropped from the maps.
    mounted_devs: HashSet<u32>,
    /// In-flight write records, aged out after `inflight_max_age`.
    inflight: BatchReader<u64, InFlight>,
    inflight_max_age: Duration,
    inflight_aged_out: u64,
    /// `INODE_STATS` entries deleted here, which the kernel's insert count
    /// must not take for evictions.
    deleted: u64,
    /// When `INFLIGHT` is next scanned: an eighth of the max age apart, so
    /// a record is gone at most 12.5 % past its age, and a refresh on an
    /// idle host usually scans nothing.
    inflight_next_scan: Instant,
}

impl Janitor {
    /// Starts watching the mount table: create it before reading the table,
    /// so that a mount in between is seen.
    pub(super) fn new(inflight: BatchReader<u64, InFlight>, inflight_max_age: Duration) -> Janitor {
        Janitor {
            mounts_watch: MountWatch::new(),
            mounted_devs: HashSet::new(),
            inflight,
            inflight_max_age,
            inflight_aged_out: 0,
            deleted: 0,
            inflight_next_scan: Instant::now(),
        }
    }

    /// Notes that `dev` has entries, if it is mounted here now.
    pub(super) fn seen(&mut self, dev: u32, mounts: &MountTable) {
        if mounts.has(Dev(dev)) {
            self.mounted_devs.insert(dev);
        }
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
        self.deleted += maps
            .stats
            .delete_where(|k, _| of_gone(k))
            .context("deleting from INODE_STATS")?;
        maps.names
            .delete_where(|k, _| of_gone(k))
            .context("deleting from INODE_NAMES")?;
        maps.hists
            .delete_where(|k, _| of_gone(k))
            .context("deleting from INODE_HISTS")?;
        maps.opens
            .delete_where(|k, _| of_gone(k))
            .context("deleting from OPENS")?;
        maps.writers
            .delete_where(|k, _| gone.contains(&k.dev))
            .context("deleting from WRITERS")?;
        Ok(gone)
    }

    /// `INODE_STATS` entries deleted so far.
    pub(super) fn deleted(&self) -> u64 {
        self.deleted
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

    /// Records aged out so far.
    pub(super) fn inflight_aged_out(&self) -> u64 {
        self.inflight_aged_out
    }

    /// Deletes in-flight records older than `inflight_max_age`: a write
    /// whose return probe was missed would otherwise hold its slot for ever,
    /// and enough of them would fill `INFLIGHT`. Each is counted in
    /// `inflight_aged_out`; a write that was really still running finds no
    /// record when it returns and counts nothing more (not `exit_unmatched`,
    /// which is a record of another call).
    pub(super) fn age_out_inflight(&mut self) -> Result<()> {
        if Instant::now() < self.inflight_next_scan {
            return Ok(());
        }
        self.inflight_next_scan = Instant::now() + self.inflight_max_age / 8;
        let now = monotonic_ns();
        let max_age = u64::try_from(self.inflight_max_age.as_nanos()).unwrap_or(u64::MAX);
        self.inflight_aged_out += self
            .inflight
            .delete_where(|_, rec| {
                rec.first()
                    .is_some_and(|r| now.saturating_sub(r.start_ns) > max_age)
            })
            .context("ageing out INFLIGHT")?;
        Ok(())
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`, which stamps
/// the in-flight records.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

//! A finished write's map updates, declared once: the programs run
//! [`finish_write`] over the BPF maps, and the host tests' rig over the same
//! maps from userspace, so the two cannot drift apart.

use crate::config::Ablation;

use super::{
    bump::{Bump, Plain},
    health::Health,
    inflight::InFlight,
    keys::{InodeKey, WriterKey},
    stats::{FileStats, Histograms, WriteStats, NO_DEVICE_SLOT},
    writers::{DirtyRing, WriterStats, COMM_LEN},
};

/// What a map update found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// The key was there, and its value was updated.
    Found,
    /// The key was new: its value was inserted zeroed, then updated.
    Inserted,
    /// The key was new and the map had no room: nothing was updated.
    Full,
}

/// The maps a finished write updates. Each method runs its closure on one
/// value in place (the programs) or on a copy it writes back (the rig).
pub trait WriteMaps {
    /// How values shared between CPUs are bumped (atomically, in the kernel).
    type Shared: Bump;

    /// The slot of the device and path `key` (inode 0) in `DEV_STATS`,
    /// handed out on its first write; `None` when they are all taken.
    fn device_slot(&mut self, key: &InodeKey) -> Option<u32>;
    /// This CPU's totals in `DEV_STATS` slot `slot`.
    fn with_device_slot(&mut self, slot: u32, f: impl FnOnce(&mut WriteStats));
    /// The totals of `key`'s device and path without a slot (`DEV_TOTALS`,
    /// shared).
    fn with_device(&mut self, key: &InodeKey, f: impl FnOnce(&mut WriteStats)) -> Slot;
    /// The file `key` (`FILES`, shared); a new file's value gets its name.
    fn with_file(&mut self, key: &InodeKey, f: impl FnOnce(&mut FileStats)) -> Slot;
    /// One process's writes to one file (`WRITERS`, shared).
    fn with_writer(&mut self, key: &WriterKey, f: impl FnOnce(&mut WriterStats)) -> Slot;
    /// This CPU's ring of recent writes (`DIRTY`); `None` if unreadable.
    fn with_ring<R>(&mut self, f: impl FnOnce(&mut DirtyRing) -> R) -> Option<R>;
    /// This CPU's histograms of one path (`PATH_HISTS`).
    fn with_path_hists(&mut self, path: u32, f: impl FnOnce(&mut Histograms));
    /// This CPU's health counters (`HEALTH`).
    fn with_health(&mut self, f: impl FnOnce(&mut Health));
    /// The refresh epoch userspace last set (`EPOCH`).
    fn epoch(&self) -> u64;
    /// The writing thread's process id.
    fn tgid(&self) -> u32;
    /// Whether a benchmark switched `part` off (see [`Ablation`]).
    fn skips(&self, _part: Ablation) -> bool {
        false
    }
    /// The writing thread's name and cgroup id: read only when its pair
    /// enters the ring, once per refresh and CPU.
    fn identity(&self) -> ([u8; COMM_LEN], u64);
}

/// Counts one finished write (`ret`: its return value) at `now` in every
/// map, in the order userspace relies on: the file, the writer and the
/// pair in this CPU's ring (after every per-file update), the path's
/// histograms, and the device's totals last: userspace reads the devices'
/// counts of writes, whose sum per path is the path's totals, as the mark
/// that anything else changed.
#[inline(always)]
pub fn finish_write<M: WriteMaps>(maps: &mut M, rec: &InFlight, ret: i64, now: u64) {
    let histograms = !maps.skips(Ablation::Histograms);
    // The file's record of its device's slot, if the file has a value.
    let mut device_slot = None;
    if !maps.skips(Ablation::FileStats) {
        match maps.with_file(&rec.key, |f| {
            f.stats.account::<M::Shared>(rec, ret, now);
            if histograms {
                f.hists.record::<M::Shared>(rec, now);
            }
            // A plain store: any recent time will do to tell idle files.
            f.last_write_ns = now;
            device_slot = Some(f.device_slot);
        }) {
            Slot::Found => {}
            Slot::Inserted => maps.with_health(|h| h.inode_inserts += 1),
            Slot::Full => maps.with_health(|h| h.inode_insert_failed += 1),
        }
    }
    if !maps.skips(Ablation::Writers) {
        finish_writer(maps, rec);
    }
    if histograms {
        maps.with_path_hists(rec.key.path, |hists| hists.record::<Plain>(rec, now));
    }
    if !maps.skips(Ablation::DeviceTotals) {
        finish_device(maps, rec, device_slot, ret, now);
    }
}

/// The device and path's totals: in this CPU's `DEV_STATS` slot, which the
/// file's value records after its first write (so later writes find it
/// without a lookup), or in `DEV_TOTALS` for a device with no slot.
#[inline(always)]
fn finish_device<M: WriteMaps>(
    maps: &mut M,
    rec: &InFlight,
    recorded: Option<u32>,
    ret: i64,
    now: u64,
) {
    let device = rec.key.device();
    let slot = match recorded {
        Some(slot) if slot != 0 => slot,
        _ => {
            let slot = maps.device_slot(&device).map_or(NO_DEVICE_SLOT, |s| s + 1);
            if recorded.is_some() {
                maps.with_file(&rec.key, |f| f.device_slot = slot);
            }
            slot
        }
    };
    if slot == NO_DEVICE_SLOT {
        if maps.with_device(&device, |t| t.account::<M::Shared>(rec, ret, now)) == Slot::Full {
            maps.with_health(|h| h.dev_totals_full += 1);
        }
    } else {
        maps.with_device_slot(slot - 1, |t| t.account::<Plain>(rec, ret, now));
    }
}

/// The writer's count, and once per refresh and CPU its identity and the
/// pair's place in this CPU's ring, after every per-file update.
#[inline(always)]
fn finish_writer<M: WriteMaps>(maps: &mut M, rec: &InFlight) {
    let key = WriterKey::new(rec.key, maps.tgid());
    let epoch = maps.epoch();
    // A ring that cannot be read: push, rather than lose track of the pair.
    let first = maps
        .with_ring(|ring| ring.first_in_epoch(key, epoch))
        .unwrap_or(true);
    // The name and cgroup change only at exec and migration: once per
    // refresh is enough, and userspace shows the latest.
    let identity = if first { Some(maps.identity()) } else { None };
    if maps.with_writer(&key, |w| {
        M::Shared::add(&mut w.writes, 1);
        if let Some((comm, cgroup_id)) = identity {
            w.comm = comm;
            w.cgroup_id = cgroup_id;
        }
    }) == Slot::Full
    {
        maps.with_health(|h| h.writers_full += 1);
    }
    if first {
        // No room for the writer changes nothing here: the file's counts
        // moved all the same.
        maps.with_ring(|ring| ring.push(key));
    }
}

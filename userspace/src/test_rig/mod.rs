//! Test support: fuselock's maps, natively, filled the way its programs fill
//! them. The machines that build fuselock can create BPF maps but attach no
//! probes (no kprobes, no fentry); with [`rig`] a test creates the real maps
//! and writes to them through [`Kernel`], which runs the programs' own
//! `finish_write` (`probes-common`) over them, and then reads them with the
//! real collector and consumers.
//!
//! Built for the library's own tests and, with the `test-support` feature,
//! for other crates' tests; never in the `fuselock` binary. The tests in
//! `tests.rs` check what the collector reads back; an ignored one, which
//! `cargo xtask bench` runs (section 4), times each consumer's refresh on
//! this machine's CPU, next to the VM's emulated one.

use anyhow::{Context as _, Result};
use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues},
    util::nr_cpus,
    Ebpf,
};
use probes_common::{
    maps::{
        finish_write, DirtyRing, FileStats, Plain, Slot, WriteMaps, COMM_LEN, DEVICE_SLOTS,
        INFLIGHT_EXCLUSIVE, MAP_DEV_SLOTS, MAP_DEV_SLOT_NEXT, MAP_DEV_STATS, MAP_DEV_TOTALS,
        MAP_DIRTY, MAP_EPOCH, MAP_FILES, MAP_HEALTH, MAP_PATH_HISTS, MAP_WRITERS,
    },
    Health, Histograms, InFlight, InodeKey, Reason, Reasons, WritePath, WriteStats, WriterKey,
    WriterStats,
};

use crate::kernel::probes::{self, Attached};

/// Another handle on the map `name` of `ebpf`, of the same kind.
fn twin(ebpf: &Ebpf, name: &str) -> Result<Map> {
    let map = ebpf
        .map(name)
        .with_context(|| format!("map {name} missing"))?;
    let reopen = |d: &MapData| -> Result<MapData> {
        let id = d.info().context("map info")?.id();
        MapData::from_id(id).context("reopening a map by id")
    };
    Ok(match map {
        Map::HashMap(d) => Map::HashMap(reopen(d)?),
        Map::Array(d) => Map::Array(reopen(d)?),
        Map::PerCpuArray(d) => Map::PerCpuArray(reopen(d)?),
        _ => anyhow::bail!("map {name}: unexpected kind"),
    })
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(ebpf: &Ebpf, name: &str) -> Result<T> {
    T::try_from(twin(ebpf, name)?).with_context(|| format!("map {name}"))
}

/// The programs' side of the maps, for writes that all run on CPU 0: a
/// write's return is the programs' own `finish_write` over these maps,
/// each value read, updated and written back.
pub struct Kernel {
    files: HashMap<MapData, InodeKey, FileStats>,
    dev_slots: HashMap<MapData, InodeKey, u32>,
    dev_slot_next: Array<MapData, u64>,
    dev_stats: PerCpuArray<MapData, WriteStats>,
    dev_totals: HashMap<MapData, InodeKey, WriteStats>,
    writers: HashMap<MapData, WriterKey, WriterStats>,
    path_hists: PerCpuArray<MapData, Histograms>,
    health: PerCpuArray<MapData, Health>,
    dirty: PerCpuArray<MapData, DirtyRing>,
    epoch: Array<MapData, u64>,
    cpus: usize,
    /// The write being finished: who writes, and the name a new file gets.
    writing: Writing,
    /// The first error of a write's updates (the trait's methods return none).
    error: Option<anyhow::Error>,
}

#[derive(Default)]
struct Writing {
    name: String,
    tgid: u32,
    comm: String,
}

/// A per-CPU value with `v` on CPU 0 and zeros elsewhere.
fn on_cpu0<T: aya::Pod + Default + Clone>(cpus: usize, v: T) -> Result<PerCpuValues<T>> {
    let mut all = vec![T::default(); cpus];
    all[0] = v;
    PerCpuValues::try_from(all).context("per-CPU values")
}

/// Copies as much of `s` into `dst` as leaves a NUL at the end, as the
/// kernel's string helpers do; returns the bytes copied.
fn copy_truncated(dst: &mut [u8], s: &str) -> usize {
    let len = s.len().min(dst.len().saturating_sub(1));
    dst[..len].copy_from_slice(&s.as_bytes()[..len]);
    len
}

/// When every write ends: 1 µs after it started, 0.5 µs after the lock.
const WRITE_ENDS_NS: u64 = 1_000;

/// What the programs record of a write of `key` on a stock kernel
/// (exclusive, no parallel flag) started at 0 and locked at 500 ns: the
/// counters and histograms are then made from it by the programs' own
/// accounting.
fn in_flight(key: InodeKey) -> InFlight {
    InFlight {
        key,
        start_ns: 0,
        locked_ns: 500,
        reasons: Reasons::NONE.with(Reason::NoParallelFlag).bits(),
        mode: INFLIGHT_EXCLUSIVE,
        active: 1,
        ..InFlight::default()
    }
}

/// `bpf_map_update_elem`'s flag: insert only where the key is absent.
const BPF_NOEXIST: u64 = 1;

/// Runs `f` on a copy of `key`'s value in `map` and writes it back. A new
/// key gets a zeroed value, named by `named`, inserted first: the kernel
/// refuses it (E2BIG) when the map holds its maximum, as it refuses the
/// programs' insert, and then `f` does not run.
fn update<K: aya::Pod, V: aya::Pod + Default>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
    named: impl FnOnce(&mut V),
    f: impl FnOnce(&mut V),
) -> Result<Slot> {
    let (mut v, slot) = match map.get(key, 0) {
        Ok(v) => (v, Slot::Found),
        Err(aya::maps::MapError::KeyNotFound) => {
            let mut v = V::default();
            named(&mut v);
            match map.insert(key, &v, BPF_NOEXIST) {
                Ok(()) => {}
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::E2BIG) =>
                {
                    return Ok(Slot::Full)
                }
                Err(e) => return Err(e).context("inserting a map value"),
            }
            (v, Slot::Inserted)
        }
        Err(e) => return Err(e).context("reading a map value"),
    };
    f(&mut v);
    map.insert(key, &v, 0).context("writing a map value")?;
    Ok(slot)
}

impl Kernel {
    pub fn of(attached: &Attached) -> Result<Kernel> {
        let e = &attached.ebpf;
        Ok(Kernel {
            files: typed(e, MAP_FILES)?,
            dev_slots: typed(e, MAP_DEV_SLOTS)?,
            dev_slot_next: typed(e, MAP_DEV_SLOT_NEXT)?,
            dev_stats: typed(e, MAP_DEV_STATS)?,
            dev_totals: typed(e, MAP_DEV_TOTALS)?,
            writers: typed(e, MAP_WRITERS)?,
            path_hists: typed(e, MAP_PATH_HISTS)?,
            health: typed(e, MAP_HEALTH)?,
            dirty: typed(e, MAP_DIRTY)?,
            epoch: typed(e, MAP_EPOCH)?,
            cpus: nr_cpus()
                .map_err(|(_, e)| e)
                .context("counting CPUs")?
                .get() as usize,
            writing: Writing::default(),
            error: None,
        })
    }

    /// Keeps the first error of a write's updates.
    fn keep<T>(&mut self, r: Result<T>, otherwise: T) -> T {
        r.unwrap_or_else(|e| {
            self.error.get_or_insert(e);
            otherwise
        })
    }

    /// One write of `bytes` to `key` (a file named `name`) by process
    /// `tgid` named `comm`, as the programs count it.
    pub fn write(
        &mut self,
        key: InodeKey,
        name: &str,
        tgid: u32,
        comm: &str,
        bytes: u64,
    ) -> Result<()> {
        let ret = i64::try_from(bytes).context("a write's size")?;
        self.writing = Writing {
            name: name.to_owned(),
            tgid,
            comm: comm.to_owned(),
        };
        finish_write(self, &in_flight(key), ret, WRITE_ENDS_NS);
        self.error.take().map_or(Ok(()), Err)
    }

    /// Runs `f` on this "CPU"'s (CPU 0's) slot `index` of a per-CPU array.
    fn with_cpu0<T: aya::Pod + Default + Clone>(
        map: &mut PerCpuArray<MapData, T>,
        cpus: usize,
        index: u32,
        f: impl FnOnce(&mut T),
    ) -> Result<()> {
        let mut v = map.get(&index, 0).context("reading a per-CPU slot")?[0];
        f(&mut v);
        map.set(index, on_cpu0(cpus, v)?, 0)
            .context("writing a per-CPU slot")
    }
}

impl WriteMaps for Kernel {
    type Shared = Plain;

    fn device_slot(&mut self, key: &InodeKey) -> Option<u32> {
        if let Ok(slot) = self.dev_slots.get(key, 0) {
            return Some(slot);
        }
        let next = self.dev_slot_next.get(&0, 0).ok()?;
        let slot = u32::try_from(next).ok().filter(|s| *s < DEVICE_SLOTS)?;
        let r = self
            .dev_slot_next
            .set(0, &(next + 1), 0)
            .and_then(|()| self.dev_slots.insert(key, &slot, 0))
            .context("handing out a device slot");
        self.keep(r, ());
        Some(slot)
    }

    fn with_device_slot(&mut self, slot: u32, f: impl FnOnce(&mut WriteStats)) {
        let r = Self::with_cpu0(&mut self.dev_stats, self.cpus, slot, f);
        self.keep(r, ());
    }

    fn with_device(&mut self, key: &InodeKey, f: impl FnOnce(&mut WriteStats)) -> Slot {
        let r = update(&mut self.dev_totals, key, |_| {}, f);
        self.keep(r, Slot::Full)
    }

    fn with_file(&mut self, key: &InodeKey, f: impl FnOnce(&mut FileStats)) -> Slot {
        let name = std::mem::take(&mut self.writing.name);
        let r = update(
            &mut self.files,
            key,
            |v| v.name.len = copy_truncated(&mut v.name.name, &name) as u32,
            f,
        );
        self.keep(r, Slot::Full)
    }

    fn with_writer(&mut self, key: &WriterKey, f: impl FnOnce(&mut WriterStats)) -> Slot {
        let r = update(&mut self.writers, key, |_| {}, f);
        self.keep(r, Slot::Full)
    }

    fn with_ring<R>(&mut self, f: impl FnOnce(&mut DirtyRing) -> R) -> Option<R> {
        let mut out = None;
        let r = Self::with_cpu0(&mut self.dirty, self.cpus, 0, |ring| out = Some(f(ring)));
        self.keep(r, ());
        out
    }

    fn with_path_hists(&mut self, path: u32, f: impl FnOnce(&mut Histograms)) {
        let r = Self::with_cpu0(&mut self.path_hists, self.cpus, path, f);
        self.keep(r, ());
    }

    fn with_health(&mut self, f: impl FnOnce(&mut Health)) {
        let r = Self::with_cpu0(&mut self.health, self.cpus, 0, f);
        self.keep(r, ());
    }

    fn epoch(&self) -> u64 {
        self.epoch.get(&0, 0).unwrap_or(0)
    }

    fn tgid(&self) -> u32 {
        self.writing.tgid
    }

    fn identity(&self) -> ([u8; COMM_LEN], u64) {
        let mut comm = [0; COMM_LEN];
        copy_truncated(&mut comm, &self.writing.comm);
        (comm, 0)
    }
}

/// Maps and their writer, or `None` (and why, on standard output) where
/// this machine cannot create maps: not root, or a kernel without BPF.
pub fn rig_or_skip(max_inodes: u32) -> Option<(Attached, Kernel)> {
    match rig(max_inodes) {
        Ok(r) => Some(r),
        Err(e) => {
            println!("   skipped: {e:#}");
            None
        }
    }
}

/// Maps and their writer, or why this machine cannot have them.
pub fn rig(max_inodes: u32) -> Result<(Attached, Kernel)> {
    let attached = probes::maps_only(max_inodes).context("creating fuselock's maps")?;
    let kernel = Kernel::of(&attached)?;
    Ok((attached, kernel))
}

/// The kernel's encoding of the device holding `/` (a mounted one, so that
/// entries get a mount point and are never forgotten as unmounted).
fn root_dev() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    let dev = std::fs::metadata("/").map_or(0, |m| m.dev());
    crate::model::snapshot::kernel_dev(dev).map_or(0, |d| d.0)
}

pub fn key(ino: u64) -> InodeKey {
    InodeKey {
        ino,
        dev: root_dev(),
        path: WritePath::Passthrough as u32,
    }
}

#[cfg(test)]
mod tests;

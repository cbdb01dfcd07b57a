//! Test support: fuselock's maps, natively, filled the way its programs fill
//! them. The machines that build fuselock can create BPF maps but attach no
//! probes (no kprobes, no fentry); with [`rig`] a test creates the real maps
//! and writes to them through [`Kernel`], which does what the programs'
//! return (`probes-ebpf/src/write.rs`) does, with the same accounting from
//! `probes-common` (`WriteStats::account`, `Histograms::record`,
//! `WriterStats::count`, `DirtyRing::push`), and then reads them with the real
//! collector and consumers.
//!
//! Built for the library's own tests and, with the `test-support` feature,
//! for other crates' tests; never in the `fuselock` binary. The tests in
//! `tests.rs` check what the collector reads back; an ignored one, which
//! `cargo xtask bench` runs (section 4), times each consumer's refresh on
//! this machine's CPU, next to the VM's emulated one.

use anyhow::{Context as _, Result};
use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    util::nr_cpus,
    Ebpf,
};
use probes_common::{
    maps::{
        DirtyRing, COMM_LEN, INFLIGHT_EXCLUSIVE, MAP_DEV_TOTALS, MAP_DIRTY, MAP_EPOCH, MAP_HEALTH,
        MAP_INODE_HISTS, MAP_INODE_NAMES, MAP_INODE_STATS, MAP_PATH_HISTS, MAP_PATH_TOTALS,
        MAP_WRITERS,
    },
    Health, Histograms, InFlight, InodeKey, InodeName, Reason, Reasons, WritePath, WriteStats,
    WriterKey, WriterStats,
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
        Map::LruHashMap(d) => Map::LruHashMap(reopen(d)?),
        Map::PerCpuHashMap(d) => Map::PerCpuHashMap(reopen(d)?),
        Map::PerCpuLruHashMap(d) => Map::PerCpuLruHashMap(reopen(d)?),
        Map::Array(d) => Map::Array(reopen(d)?),
        Map::PerCpuArray(d) => Map::PerCpuArray(reopen(d)?),
        _ => anyhow::bail!("map {name}: unexpected kind"),
    })
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(ebpf: &Ebpf, name: &str) -> Result<T> {
    T::try_from(twin(ebpf, name)?).with_context(|| format!("map {name}"))
}

/// The programs' side of the maps, for writes that all run on CPU 0: what
/// `on_exit` does for a passthrough write on a stock kernel (exclusive, no
/// parallel flag), in its order, the per-path totals last.
pub struct Kernel {
    stats: PerCpuHashMap<MapData, InodeKey, WriteStats>,
    dev_totals: PerCpuHashMap<MapData, InodeKey, WriteStats>,
    names: HashMap<MapData, InodeKey, InodeName>,
    hists: HashMap<MapData, InodeKey, Histograms>,
    writers: PerCpuHashMap<MapData, WriterKey, WriterStats>,
    path_totals: PerCpuArray<MapData, WriteStats>,
    path_hists: PerCpuArray<MapData, Histograms>,
    health: PerCpuArray<MapData, Health>,
    dirty: PerCpuArray<MapData, DirtyRing>,
    epoch: Array<MapData, u64>,
    cpus: usize,
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
/// accounting (`WriteStats::account`, `Histograms::record`).
fn in_flight(key: InodeKey) -> InFlight {
    InFlight {
        key,
        start_ns: 0,
        locked_ns: 500,
        reasons: Reasons::from_bits(0).with(Reason::NoParallelFlag).bits(),
        mode: INFLIGHT_EXCLUSIVE,
        ..InFlight::default()
    }
}

impl Kernel {
    pub fn of(attached: &Attached) -> Result<Kernel> {
        let e = &attached.ebpf;
        Ok(Kernel {
            stats: typed(e, MAP_INODE_STATS)?,
            dev_totals: typed(e, MAP_DEV_TOTALS)?,
            names: typed(e, MAP_INODE_NAMES)?,
            hists: typed(e, MAP_INODE_HISTS)?,
            writers: typed(e, MAP_WRITERS)?,
            path_totals: typed(e, MAP_PATH_TOTALS)?,
            path_hists: typed(e, MAP_PATH_HISTS)?,
            health: typed(e, MAP_HEALTH)?,
            dirty: typed(e, MAP_DIRTY)?,
            epoch: typed(e, MAP_EPOCH)?,
            cpus: nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?.get() as usize,
        })
    }

    fn bump_percpu_hash(
        map: &mut PerCpuHashMap<MapData, InodeKey, WriteStats>,
        cpus: usize,
        key: InodeKey,
        rec: &InFlight,
        ret: i64,
    ) -> Result<bool> {
        let (mut v, new) = match map.get(&key, 0) {
            Ok(values) => (values[0], false),
            Err(_) => (WriteStats::default(), true),
        };
        v.account(rec, ret, WRITE_ENDS_NS);
        map.insert(&key, on_cpu0(cpus, v)?, 0)
            .context("updating a per-CPU hash")?;
        Ok(new)
    }

    /// One write of `bytes` to `key` by process `tgid` named `comm`.
    pub fn write(
        &mut self,
        key: InodeKey,
        name: &str,
        tgid: u32,
        comm: &str,
        bytes: u64,
    ) -> Result<()> {
        let cpus = self.cpus;
        let rec = in_flight(key);
        let ret = i64::try_from(bytes).context("a write's size")?;
        Self::bump_percpu_hash(
            &mut self.dev_totals,
            cpus,
            InodeKey { ino: 0, ..key },
            &rec,
            ret,
        )?;
        if Self::bump_percpu_hash(&mut self.stats, cpus, key, &rec, ret)? {
            let mut h = self.health.get(&0, 0).context("HEALTH")?[0];
            h.inode_inserts += 1;
            self.health.set(0, on_cpu0(cpus, h)?, 0).context("HEALTH")?;
            let mut n = InodeName::default();
            n.len = copy_truncated(&mut n.name, name) as u32;
            self.names.insert(&key, &n, 0).context("INODE_NAMES")?;
        }
        let mut h = self.hists.get(&key, 0).unwrap_or(Histograms::ZERO);
        h.record(&rec, WRITE_ENDS_NS, |slot| *slot += 1);
        self.hists.insert(&key, &h, 0).context("INODE_HISTS")?;

        let wkey = WriterKey::new(key, tgid);
        // count_writer: this CPU's count, and once per epoch its name and
        // a place in this CPU's ring.
        let epoch = self.epoch.get(&0, 0).context("EPOCH")?;
        let mut w = self
            .writers
            .get(&wkey, 0)
            .map_or(WriterStats::fresh(epoch), |values| values[0]);
        let push = w.count(epoch);
        if push {
            w.comm = [0; COMM_LEN];
            copy_truncated(&mut w.comm, comm);
        }
        self.writers
            .insert(&wkey, on_cpu0(cpus, w)?, 0)
            .context("WRITERS")?;
        if push {
            let mut ring = self.dirty.get(&0, 0).context("DIRTY")?[0];
            ring.push(wkey);
            self.dirty
                .set(0, on_cpu0(cpus, ring)?, 0)
                .context("DIRTY")?;
        }

        let path = key.path;
        let mut ph = self.path_hists.get(&path, 0).context("PATH_HISTS")?[0];
        ph.record(&rec, WRITE_ENDS_NS, |slot| *slot += 1);
        self.path_hists
            .set(path, on_cpu0(cpus, ph)?, 0)
            .context("PATH_HISTS")?;
        let mut t = self.path_totals.get(&path, 0).context("PATH_TOTALS")?[0];
        t.account(&rec, ret, WRITE_ENDS_NS);
        self.path_totals
            .set(path, on_cpu0(cpus, t)?, 0)
            .context("PATH_TOTALS")
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

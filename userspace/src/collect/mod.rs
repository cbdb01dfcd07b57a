//! Reads the maps into [`Snapshot`]s, with what the host tells about them
//! (mount points, writers' cgroups): every output consumes the snapshots it
//! produces, and none reads a map itself.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

pub mod batch;
mod cache;
pub mod cgroups;
mod janitor;
mod refresh;

use anyhow::{Context as _, Result};
use aya::maps::{Array, Map, MapData, PerCpuArray};
use probes_common::{
    maps::{
        max_writers, DirtyRing, MAP_DEV_SLOTS, MAP_DEV_STATS, MAP_DEV_TOTALS, MAP_DIRTY, MAP_EPOCH,
        MAP_FILES, MAP_HEALTH, MAP_OPENS, MAP_PATH_HISTS, MAP_WRITERS, MAX_DEVICES,
    },
    Dev, FileStats, Health, Histograms, InodeKey, OpenStats, WritePath, WriteStats, WriterKey,
    WriterStats,
};

use self::{
    cache::{ChangeMarks, InodeCache, OpenCache},
    cgroups::CgroupResolver,
    janitor::Janitor,
};
use crate::{
    collect::batch::BatchReader,
    kernel::misses::Misses,
    kernel::mounts::MountTable,
    kernel::probes::Attached,
    model::snapshot::{
        Counters, DeviceTotals, Entries, HealthReport, Histos, PathTotals, Snapshot, Source,
        Totals, WorkloadWrites, Writer,
    },
    model::workload::Workload,
};

/// How much a snapshot reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Every entry with its histograms, writers and open evidence.
    Full,
    /// Totals, devices, open totals and health only (`entries` empty).
    Totals,
}

/// Writers kept per entry.
const TOP_WRITERS: usize = 8;

/// The maps keyed by file: what the collector reads per entry, and what the
/// janitor deletes.
pub(super) struct InodeMaps {
    files: BatchReader<InodeKey, FileStats>,
    writers: BatchReader<WriterKey, WriterStats>,
    opens: BatchReader<InodeKey, OpenStats>,
}

pub struct Collector {
    maps: InodeMaps,
    /// Device totals: each device's slot, the slots' per-CPU values, and
    /// the devices beyond the slots.
    dev_slots: BatchReader<InodeKey, u32>,
    dev_stats: PerCpuArray<MapData, WriteStats>,
    dev_totals: BatchReader<InodeKey, WriteStats>,
    health: PerCpuArray<MapData, Health>,
    path_hists: PerCpuArray<MapData, Histograms>,
    /// Per-file open evidence, re-read only when `Health::opens` moved.
    opens_cache: OpenCache,
    /// Entries as last read, reused while their counters stand still.
    inodes: InodeCache,
    /// The rings of recent writes, each CPU's head at the last refresh, and
    /// the pairs pushed in the range read then (`None`: not known).
    dirty: PerCpuArray<MapData, DirtyRing>,
    dirty_heads: Option<Vec<u64>>,
    last_range: Option<HashSet<WriterKey>>,
    /// The epoch the rings dedup against, bumped before each ring read.
    epoch: Array<MapData, u64>,
    epoch_value: u64,
    /// Whether the open evidence was re-read since the entries were built.
    opens_moved: bool,
    /// Forgets the files of unmounted devices, and the idle ones when the
    /// map fills.
    janitor: Janitor,
    mounts: MountTable,
    /// Writers' cgroup ids to paths and workloads.
    cgroups: CgroupResolver,
    /// Whether snapshots sum writes by workload.
    follow_workloads: bool,
    /// The programs' skipped runs, read at each snapshot.
    misses: Misses,
    source: Source,
    max_inodes: u64,
    started: Instant,
}

/// A hash map's raw data, for batch reads.
fn take_hash<K: aya::Pod + Default, V: aya::Pod + Default>(
    attached: &mut Attached,
    name: &str,
    max: u32,
) -> Result<BatchReader<K, V>> {
    let map = attached
        .ebpf
        .take_map(name)
        .with_context(|| format!("map {name} missing from the object"))?;
    let (data, per_cpu) = match map {
        Map::HashMap(d) | Map::LruHashMap(d) => (d, false),
        Map::PerCpuHashMap(d) | Map::PerCpuLruHashMap(d) => (d, true),
        _ => anyhow::bail!("map {name} is not a hash map"),
    };
    BatchReader::new(data, per_cpu, max).with_context(|| format!("map {name}"))
}

fn take<T>(attached: &mut Attached, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = attached
        .ebpf
        .take_map(name)
        .with_context(|| format!("map {name} missing from the object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type or layout"))
}

fn sum_percpu(values: &[WriteStats]) -> WriteStats {
    let mut sum = WriteStats::default();
    for v in values {
        sum.merge(v);
    }
    sum
}

/// One process's writes to one entry.
fn writer_of(k: &WriterKey, w: &WriterStats, cgroups: &mut CgroupResolver) -> Writer {
    let len = w.comm.iter().position(|b| *b == 0).unwrap_or(w.comm.len());
    Writer {
        pid: k.tgid,
        comm: String::from_utf8_lossy(&w.comm[..len]).into_owned(),
        writes: w.writes,
        cgroup: cgroups.resolve(w.cgroup_id),
    }
}

/// A file's name as its value holds it.
fn name_of(file: &FileStats) -> Option<String> {
    (file.name.len > 0).then(|| String::from_utf8_lossy(file.name.as_bytes()).into_owned())
}

impl Collector {
    /// Takes the maps out of `attached` (the programs stay attached there).
    pub fn new(attached: &mut Attached) -> Result<Collector> {
        let max_inodes = attached.max_inodes;
        Ok(Collector {
            maps: InodeMaps {
                files: take_hash(attached, MAP_FILES, max_inodes)?,
                writers: take_hash(attached, MAP_WRITERS, max_writers(max_inodes))?,
                opens: take_hash(attached, MAP_OPENS, max_inodes)?,
            },
            dev_slots: take_hash(attached, MAP_DEV_SLOTS, MAX_DEVICES)?,
            dev_stats: take(attached, MAP_DEV_STATS)?,
            dev_totals: take_hash(attached, MAP_DEV_TOTALS, MAX_DEVICES)?,
            health: take(attached, MAP_HEALTH)?,
            path_hists: take(attached, MAP_PATH_HISTS)?,
            opens_cache: OpenCache::default(),
            inodes: InodeCache::default(),
            dirty: take(attached, MAP_DIRTY)?,
            dirty_heads: None,
            last_range: None,
            epoch: take(attached, MAP_EPOCH)?,
            epoch_value: 0,
            opens_moved: false,
            // The janitor's mount watch first: a mount between the two is
            // then seen.
            janitor: Janitor::new(max_inodes),
            mounts: MountTable::read(),
            cgroups: CgroupResolver::for_host(),
            follow_workloads: false,
            misses: Misses::new(attached),
            source: Source {
                kernel: attached.kernel.clone(),
                probe_mode: attached.mode.to_string(),
                contention: attached.contention,
                only_cgroup: attached.only_cgroup.clone(),
            },
            max_inodes: u64::from(max_inodes),
            started: Instant::now(),
        })
    }

    /// Per-file open evidence, read again only if an open was counted since.
    fn refresh_opens(&mut self, opens_mark: u64) -> Result<()> {
        if self.opens_cache.mark == Some(opens_mark) {
            return Ok(());
        }
        let cache = &mut self.opens_cache;
        cache.by_file.clear();
        cache.totals = OpenStats::default();
        self.maps
            .opens
            .for_each(|k, v| {
                if let Some(o) = v.first() {
                    cache.by_file.insert(*k, *o);
                    cache.totals.merge(o);
                }
            })
            .context("reading OPENS")?;
        cache.mark = Some(opens_mark);
        self.opens_moved = true;
        Ok(())
    }

    /// Deletes what the janitor says must go (the files of unmounted
    /// devices, and the idlest ones when `FILES` fills) and forgets it here.
    /// A new mount may reuse a device number, and its files the inode
    /// numbers: without this, a new file's counts would add to an
    /// unmounted one's. The device totals keep counting both. (An unmount
    /// and a remount within one refresh are not told apart.)
    fn housekeeping(&mut self, inode_inserts: u64) -> Result<()> {
        let gone = self
            .janitor
            .forget_unmounted(&mut self.mounts, &mut self.maps)?;
        let aged = self.janitor.make_room(inode_inserts, &mut self.maps)?;
        if gone.is_empty() && aged.is_empty() {
            return Ok(());
        }
        let forgotten = |k: &InodeKey| gone.contains(&k.dev) || aged.contains(k);
        self.inodes.retain(|k| !forgotten(k));
        self.inodes.marks = None;
        self.opens_cache.mark = None;
        if !gone.is_empty() {
            log::info!(
                "forgot the entries of unmounted device(s) {}",
                gone.iter()
                    .map(|d| Dev(*d).to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if !aged.is_empty() {
            log::info!(
                "forgot the {} files written longest ago: FILES holds at most {} (--max-inodes)",
                aged.len(),
                self.max_inodes
            );
        }
        Ok(())
    }

    /// The open evidence of the file `(dev, ino)` (`dev` in the kernel's
    /// encoding), as of the last snapshot: a file only opened, never
    /// written, has no entry to carry it.
    pub fn open_evidence_of(&self, dev: Dev, ino: u64) -> Option<OpenStats> {
        self.opens_cache
            .of(&InodeKey {
                ino,
                dev: dev.0,
                path: 0,
            })
            .copied()
    }

    /// Reads every counter now.
    pub fn snapshot(&mut self, is_final: bool) -> Result<Snapshot> {
        self.snapshot_with(is_final, Detail::Full)
    }

    /// Every (device, path)'s totals: its slot's per-CPU values, plus what
    /// it counted in `DEV_TOTALS` (a device beyond the slots).
    fn device_totals(&mut self) -> Result<BTreeMap<InodeKey, WriteStats>> {
        let mut totals: BTreeMap<InodeKey, WriteStats> = BTreeMap::new();
        for (key, slot) in self.dev_slots.read_all().context("reading DEV_SLOTS")? {
            let Some(&slot) = slot.first() else { continue };
            let values = self.dev_stats.get(&slot, 0).context("reading DEV_STATS")?;
            totals.entry(key).or_default().merge(&sum_percpu(&values));
        }
        for (key, values) in self.dev_totals.read_all().context("reading DEV_TOTALS")? {
            totals.entry(key).or_default().merge(&sum_percpu(&values));
        }
        Ok(totals)
    }

    /// Reads what `detail` asks for: the exporter without per-inode series
    /// needs only totals, and skips the per-file work (names, histograms,
    /// writers, one entry per file). Per-file maps are read only when
    /// something changed since the last read, and only the entries that
    /// changed are rebuilt; the others are shared with the last snapshot.
    pub fn snapshot_with(&mut self, is_final: bool, detail: Detail) -> Result<Snapshot> {
        let mut health = Health::default();
        for h in self.health.get(&0, 0).context("reading HEALTH")?.iter() {
            health.merge(h);
        }
        self.housekeeping(health.inode_inserts)?;
        // The devices' totals, whose sums are the paths': read after HEALTH,
        // and the mark that anything changed (the programs update them
        // last), so a write landing after them is seen at the next read.
        let device_totals = self.device_totals()?;
        let mut by_path = [WriteStats::ZERO; WritePath::COUNT];
        for (key, stats) in &device_totals {
            if let Some(total) = by_path.get_mut(key.path as usize) {
                total.merge(stats);
            }
        }
        let path_totals = |path: WritePath| -> Result<PathTotals> {
            let mut hists = Histograms::ZERO;
            for h in self
                .path_hists
                .get(&(path as u32), 0)
                .context("reading PATH_HISTS")?
                .iter()
            {
                hists.merge(h);
            }
            Ok(PathTotals {
                counters: Counters::from(&by_path[path as usize]),
                histograms: Histos::from(&hists),
            })
        };
        let totals = Totals {
            passthrough: path_totals(WritePath::Passthrough)?,
            direct_io: path_totals(WritePath::DirectIo)?,
        };
        let marks = ChangeMarks {
            writes: totals.passthrough.counters.writes + totals.direct_io.counters.writes,
            inode_inserts: health.inode_inserts,
            opens: health.opens,
        };
        self.refresh_opens(marks.opens)?;
        let live = self.janitor.live(health.inode_inserts);
        let entries = match detail {
            Detail::Full => {
                self.refresh_entries(marks)?;
                self.inodes.list()
            }
            Detail::Totals => Entries::default(),
        };

        let mut devices = Vec::new();
        for (key, stats) in device_totals {
            let Some(path) = WritePath::from_u32(key.path) else {
                continue;
            };
            self.janitor.seen(key.dev, &self.mounts);
            let dev = Dev(key.dev);
            devices.push(DeviceTotals {
                mount: self.mounts.mount_of(dev).map(str::to_owned),
                dev,
                path,
                counters: Counters::from(&stats),
            });
        }
        // The order the JSON has always had: by the names as text.
        devices.sort_by_cached_key(|d| (d.dev.to_string(), d.path.name()));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Snapshot {
            timestamp: now.as_secs_f64(),
            elapsed_secs: self.started.elapsed().as_secs_f64(),
            source: self.source.clone(),
            is_final,
            entries,
            totals,
            devices,
            opens: self.opens_cache.totals,
            health: HealthReport {
                recursion_misses: self.misses.read(),
                cgroups_unresolved: self.cgroups.unresolved(),
                ..HealthReport::new(&health, live, self.max_inodes, self.janitor.evicted())
            },
            workloads: (self.follow_workloads && detail == Detail::Full)
                .then(|| self.workload_writes()),
        })
    }

    /// Sums writes by workload ([`WorkloadWrites`]) in every snapshot with
    /// entries from now on.
    pub fn follow_workloads(&mut self) {
        self.follow_workloads = true;
    }

    /// Writes by workload over every writer of every file held (an entry
    /// shows only its top writers; this counts them all).
    fn workload_writes(&self) -> Arc<[WorkloadWrites]> {
        let mut by: BTreeMap<Workload, u64> = BTreeMap::new();
        for cached in self.inodes.entries.values() {
            for w in cached.writers.values() {
                if let Some(key) = w.cgroup.workload().and_then(Workload::grouped) {
                    *by.entry(key).or_default() += w.writes;
                }
            }
        }
        by.into_iter()
            .map(|(workload, writes)| WorkloadWrites { workload, writes })
            .collect()
    }
}

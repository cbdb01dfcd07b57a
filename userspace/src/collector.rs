//! Reads the maps into [`Snapshot`]s. It is the only code that knows the maps
//! exist; every output consumes the snapshots it produces.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use probes_common::{
    maps::{
        MAP_DEV_TOTALS, MAP_HEALTH, MAP_INODE_HISTS, MAP_INODE_NAMES, MAP_INODE_STATS, MAP_OPENS,
        MAP_PATH_HISTS, MAP_PATH_TOTALS, MAP_WRITERS, MAX_DEVICES, MAX_WRITERS,
    },
    Health, Histograms, InodeKey, InodeName, OpenStats, WritePath, WriteStats, WriterKey,
    WriterStats,
};

use crate::{
    batch::BatchReader,
    mounts::MountTable,
    probes::Attached,
    snapshot::{
        dev_name, Counters, DeviceTotals, Entry, HealthReport, Histos, OpenEvidence, PathTotals,
        Snapshot, Source, Totals, Writer,
    },
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

/// Changed entries up to which histograms are looked up one key at a time
/// rather than by reading the whole map.
const HIST_LOOKUPS_MAX: usize = 256;

/// Counters that move whenever any per-inode map changes: every write's
/// return bumps `PATH_TOTALS`, every new inode `inode_inserts` (and an LRU
/// eviction only happens on an insert), every open `opens`. Equal marks
/// mean the per-inode maps hold what they held at the last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ChangeMarks {
    writes: u64,
    inode_inserts: u64,
    opens: u64,
}

/// An entry as last built, with the summed counters it was built from.
struct Cached {
    stats: WriteStats,
    open: Option<OpenStats>,
    entry: Arc<Entry>,
}

/// What the last full read of the per-inode maps found.
#[derive(Default)]
struct InodeCache {
    marks: Option<ChangeMarks>,
    entries: BTreeMap<InodeKey, Cached>,
}

pub struct Collector {
    stats: BatchReader<InodeKey, WriteStats>,
    names: BatchReader<InodeKey, InodeName>,
    totals: PerCpuArray<MapData, WriteStats>,
    dev_totals: BatchReader<InodeKey, WriteStats>,
    health: PerCpuArray<MapData, Health>,
    hists: BatchReader<InodeKey, Histograms>,
    path_hists: PerCpuArray<MapData, Histograms>,
    writers: BatchReader<WriterKey, WriterStats>,
    opens: BatchReader<InodeKey, OpenStats>,
    /// Names already read, so each is fetched from the kernel once.
    name_cache: HashMap<InodeKey, Option<String>>,
    /// Per-file open evidence, re-read only when `Health::opens` moved.
    open_cache: (Option<u64>, HashMap<InodeKey, OpenStats>),
    /// Entries of the last full read, reused while their counters stand still.
    inodes: InodeCache,
    /// Live entries at the last totals-only read, and its marks.
    live_cache: Option<(ChangeMarks, u64)>,
    mounts: MountTable,
    /// Devices whose entries were seen while they were mounted here: when
    /// one leaves the mount table, its entries are dropped from the maps.
    mounted_devs: HashSet<u32>,
    /// Entries fuselock deleted itself (for exact eviction counts).
    deleted: u64,
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

fn writer_of(k: &WriterKey, w: &WriterStats) -> Writer {
    let comm_len = w.comm.iter().position(|b| *b == 0).unwrap_or(w.comm.len());
    Writer {
        pid: k.tgid,
        comm: String::from_utf8_lossy(&w.comm[..comm_len]).into_owned(),
        writes: w.writes,
    }
}

impl Collector {
    /// Takes the maps out of `attached` (the programs stay attached there).
    pub fn new(attached: &mut Attached) -> Result<Collector> {
        Ok(Collector {
            stats: take_hash(attached, MAP_INODE_STATS, attached.max_inodes)?,
            names: take_hash(attached, MAP_INODE_NAMES, attached.max_inodes)?,
            totals: take(attached, MAP_PATH_TOTALS)?,
            dev_totals: take_hash(attached, MAP_DEV_TOTALS, MAX_DEVICES)?,
            health: take(attached, MAP_HEALTH)?,
            hists: take_hash(attached, MAP_INODE_HISTS, attached.max_inodes)?,
            path_hists: take(attached, MAP_PATH_HISTS)?,
            writers: take_hash(attached, MAP_WRITERS, MAX_WRITERS)?,
            opens: take_hash(attached, MAP_OPENS, attached.max_inodes)?,
            name_cache: HashMap::new(),
            open_cache: (None, HashMap::new()),
            inodes: InodeCache::default(),
            live_cache: None,
            mounts: MountTable::read(),
            mounted_devs: HashSet::new(),
            deleted: 0,
            source: Source {
                kernel: attached.kernel.clone(),
                probe_mode: attached.mode.to_string(),
                contention: attached.contention,
            },
            max_inodes: u64::from(attached.max_inodes),
            started: Instant::now(),
        })
    }

    /// Names of keys not seen before, read in one batch when any is new.
    fn refresh_names(&mut self, keys: &[InodeKey]) -> Result<()> {
        if keys.iter().all(|k| self.name_cache.contains_key(k)) {
            return Ok(());
        }
        let cache = &mut self.name_cache;
        self.names
            .for_each(|key, names| {
                if let Some(n) = names.first().filter(|n| n.len > 0) {
                    cache.insert(
                        *key,
                        Some(String::from_utf8_lossy(n.as_bytes()).into_owned()),
                    );
                }
            })
            .context("reading INODE_NAMES")?;
        for k in keys {
            cache.entry(*k).or_insert(None);
        }
        Ok(())
    }

    /// Per-file open evidence, read again only if an open was counted since.
    fn refresh_opens(&mut self, opens_mark: u64) -> Result<()> {
        if self.open_cache.0 == Some(opens_mark) {
            return Ok(());
        }
        let cache = &mut self.open_cache.1;
        cache.clear();
        self.opens
            .for_each(|k, v| {
                if let Some(o) = v.first() {
                    cache.insert(*k, *o);
                }
            })
            .context("reading OPENS")?;
        self.open_cache.0 = Some(opens_mark);
        Ok(())
    }

    /// Drops the per-inode entries of devices that were mounted and are not
    /// any more. A new mount may reuse the device number, and its files the
    /// inode numbers: without this, a new file's counts would add to an
    /// unmounted one's. The never-evicted totals keep counting both. (An
    /// unmount and a remount within one refresh are not told apart.)
    fn forget_unmounted(&mut self) -> Result<()> {
        self.mounts = MountTable::read();
        let gone: HashSet<u32> = self
            .mounted_devs
            .iter()
            .copied()
            .filter(|d| !self.mounts.has(&dev_name(*d)))
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        let of_gone = |k: &InodeKey| gone.contains(&k.dev);
        self.deleted += self
            .stats
            .delete_where(of_gone)
            .context("deleting from INODE_STATS")?;
        self.names
            .delete_where(of_gone)
            .context("deleting from INODE_NAMES")?;
        self.hists
            .delete_where(of_gone)
            .context("deleting from INODE_HISTS")?;
        self.opens
            .delete_where(of_gone)
            .context("deleting from OPENS")?;
        self.writers
            .delete_where(|k| gone.contains(&k.dev))
            .context("deleting from WRITERS")?;
        self.inodes.entries.retain(|k, _| !of_gone(k));
        self.inodes.marks = None;
        self.live_cache = None;
        self.open_cache.0 = None;
        self.name_cache.retain(|k, _| !of_gone(k));
        self.mounted_devs.retain(|d| !gone.contains(d));
        log::info!(
            "forgot the entries of unmounted device(s) {}",
            gone.iter().map(|d| dev_name(*d)).collect::<Vec<_>>().join(", ")
        );
        Ok(())
    }

    /// Reads every counter now.
    pub fn snapshot(&mut self, is_final: bool) -> Result<Snapshot> {
        self.snapshot_with(is_final, Detail::Full)
    }

    /// Live entries, counted: all the exporter needs of the per-inode maps.
    fn count_live(&mut self, marks: ChangeMarks) -> Result<u64> {
        if let Some((m, live)) = self.live_cache {
            if m == marks {
                return Ok(live);
            }
        }
        let mut live = 0u64;
        self.stats
            .for_each(|_, _| live += 1)
            .context("reading INODE_STATS")?;
        self.live_cache = Some((marks, live));
        Ok(live)
    }

    /// Brings the entry cache up to date: reads `INODE_STATS`, and for the
    /// entries whose counters or open evidence moved (only those) their
    /// histograms, writers and names.
    fn refresh_entries(&mut self, marks: ChangeMarks) -> Result<()> {
        if self.inodes.marks == Some(marks) {
            return Ok(());
        }
        let mut current: Vec<(InodeKey, WriteStats)> =
            Vec::with_capacity(self.inodes.entries.len());
        self.stats
            .for_each(|k, v| current.push((*k, sum_percpu(v))))
            .context("reading INODE_STATS")?;
        current.sort_unstable_by_key(|(k, _)| *k);

        let changed: Vec<(InodeKey, WriteStats)> = current
            .iter()
            .filter(|(k, stats)| {
                let open = self.open_cache.1.get(&InodeKey { path: 0, ..*k });
                self.inodes
                    .entries
                    .get(k)
                    .is_none_or(|c| c.stats != *stats || c.open.as_ref() != open)
            })
            .copied()
            .collect();
        // Entries gone from the map (evicted) leave the cache.
        let mut entries = std::mem::take(&mut self.inodes.entries);
        entries.retain(|k, _| current.binary_search_by_key(k, |(ck, _)| *ck).is_ok());
        self.name_cache.retain(|k, _| entries.contains_key(k));

        if !changed.is_empty() {
            let keys: Vec<InodeKey> = changed.iter().map(|(k, _)| *k).collect();
            self.refresh_names(&keys)?;
            let is_changed = |k: &InodeKey| keys.binary_search(k).is_ok();
            let mut hists: HashMap<InodeKey, Histograms> = HashMap::with_capacity(keys.len());
            if keys.len() <= HIST_LOOKUPS_MAX {
                for k in &keys {
                    if let Some(h) = self.hists.lookup(k).context("reading INODE_HISTS")? {
                        hists.insert(*k, h[0]);
                    }
                }
            } else {
                self.hists
                    .for_each(|k, v| {
                        if is_changed(k) {
                            hists.insert(*k, v[0]);
                        }
                    })
                    .context("reading INODE_HISTS")?;
            }
            let mut writers: HashMap<InodeKey, Vec<Writer>> = HashMap::new();
            self.writers
                .for_each(|k, v| {
                    let key = InodeKey {
                        ino: k.ino,
                        dev: k.dev,
                        path: k.path,
                    };
                    if let (true, Some(w)) = (is_changed(&key), v.first()) {
                        writers.entry(key).or_default().push(writer_of(k, w));
                    }
                })
                .context("reading WRITERS")?;
            for (key, stats) in changed {
                let Some(path) = WritePath::from_u32(key.path) else {
                    continue;
                };
                let dev = dev_name(key.dev);
                if self.mounts.has(&dev) {
                    self.mounted_devs.insert(key.dev);
                }
                let mut top = writers.remove(&key).unwrap_or_default();
                top.sort_by(|a, b| b.writes.cmp(&a.writes).then(a.pid.cmp(&b.pid)));
                top.truncate(TOP_WRITERS);
                let open = self.open_cache.1.get(&InodeKey { path: 0, ..key }).copied();
                let entry = Entry {
                    mount: self.mounts.mount_of(&dev).map(str::to_owned),
                    name: self.name_cache.get(&key).cloned().flatten(),
                    dev,
                    ino: key.ino,
                    path: path.name().to_owned(),
                    counters: Counters::from(&stats),
                    histograms: hists.get(&key).map(Histos::from).unwrap_or_default(),
                    writers: top,
                    open: open.as_ref().map(OpenEvidence::from),
                };
                entries.insert(
                    key,
                    Cached {
                        stats,
                        open,
                        entry: Arc::new(entry),
                    },
                );
            }
        }
        self.inodes = InodeCache {
            marks: Some(marks),
            entries,
        };
        Ok(())
    }

    /// Reads what `detail` asks for: the exporter without per-inode series
    /// needs only totals, and skips the per-inode work (names, histograms,
    /// writers, one entry per inode). Per-inode maps are read only when
    /// something changed since the last read, and only the entries that
    /// changed are rebuilt; the others are shared with the last snapshot.
    pub fn snapshot_with(&mut self, is_final: bool, detail: Detail) -> Result<Snapshot> {
        self.forget_unmounted()?;
        let mut health = Health::default();
        for h in self.health.get(&0, 0).context("reading HEALTH")?.iter() {
            health.merge(h);
        }
        let path_totals = |path: WritePath| -> Result<PathTotals> {
            let values = self
                .totals
                .get(&(path as u32), 0)
                .context("reading PATH_TOTALS")?;
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
                counters: Counters::from(&sum_percpu(&values)),
                histograms: Histos::from(&hists),
            })
        };
        let totals = Totals {
            passthrough: path_totals(WritePath::Passthrough)?,
            direct_io: path_totals(WritePath::DirectIo)?,
        };
        // Read after HEALTH and PATH_TOTALS: a write landing in between makes
        // the marks stale, so the next read looks again rather than missing it.
        let marks = ChangeMarks {
            writes: totals.passthrough.counters.writes + totals.direct_io.counters.writes,
            inode_inserts: health.inode_inserts,
            opens: health.opens,
        };
        self.refresh_opens(marks.opens)?;
        let (entries, live) = match detail {
            Detail::Full => {
                self.refresh_entries(marks)?;
                let entries: Vec<Arc<Entry>> = self
                    .inodes
                    .entries
                    .values()
                    .map(|c| c.entry.clone())
                    .collect();
                let live = entries.len() as u64;
                (entries, live)
            }
            Detail::Totals => (Vec::new(), self.count_live(marks)?),
        };

        let mut devices = Vec::new();
        for (key, values) in self.dev_totals.read_all().context("reading DEV_TOTALS")? {
            let Some(path) = WritePath::from_u32(key.path) else {
                continue;
            };
            let dev = dev_name(key.dev);
            if self.mounts.has(&dev) {
                self.mounted_devs.insert(key.dev);
            }
            devices.push(DeviceTotals {
                mount: self.mounts.mount_of(&dev).map(str::to_owned),
                dev,
                path: path.name().to_owned(),
                counters: Counters::from(&sum_percpu(&values)),
            });
        }
        devices.sort_by(|a, b| (&a.dev, &a.path).cmp(&(&b.dev, &b.path)));
        let mut open_totals = OpenStats::default();
        for o in self.open_cache.1.values() {
            open_totals.merge(o);
        }
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
            opens: OpenEvidence::from(&open_totals),
            health: HealthReport::new(&health, live, self.max_inodes, self.deleted),
            ..Snapshot::default()
        })
    }
}

//! Reads the maps into [`Snapshot`]s. It is the only code that knows the maps
//! exist; every output consumes the snapshots it produces.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

pub mod batch;
mod cache;
mod janitor;

use anyhow::{Context as _, Result};
use aya::maps::{Array, Map, MapData, PerCpuArray};
use probes_common::{
    maps::{
        DirtyRing, MAP_DEV_TOTALS, MAP_DIRTY, MAP_EPOCH, MAP_HEALTH, MAP_INFLIGHT, MAP_INODE_HISTS,
        MAP_INODE_NAMES, MAP_INODE_STATS, MAP_OPENS, MAP_PATH_HISTS, MAP_PATH_TOTALS, MAP_WRITERS,
        MAX_DEVICES, MAX_INFLIGHT, MAX_WRITERS,
    },
    Dev, Health, Histograms, InodeKey, InodeName, OpenStats, WritePath, WriteStats, WriterKey,
    WriterStats,
};

use self::{
    cache::{written_since, Cached, ChangeMarks, InodeCache, OpenCache},
    janitor::Janitor,
};
use crate::{
    collect::batch::BatchReader,
    kernel::misses::Misses,
    kernel::mounts::MountTable,
    kernel::probes::Attached,
    model::snapshot::{
        Counters, DeviceTotals, Entries, Entry, HealthReport, Histos, PathTotals, Snapshot, Source,
        Totals, Writer,
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

/// The maps keyed by file: what the collector reads per entry, and what the
/// janitor deletes when a file's device is unmounted.
pub(super) struct InodeMaps {
    stats: BatchReader<InodeKey, WriteStats>,
    names: BatchReader<InodeKey, InodeName>,
    hists: BatchReader<InodeKey, Histograms>,
    writers: BatchReader<WriterKey, WriterStats>,
    opens: BatchReader<InodeKey, OpenStats>,
}

pub struct Collector {
    maps: InodeMaps,
    totals: PerCpuArray<MapData, WriteStats>,
    dev_totals: BatchReader<InodeKey, WriteStats>,
    health: PerCpuArray<MapData, Health>,
    path_hists: PerCpuArray<MapData, Histograms>,
    /// Names already read, so each is fetched from the kernel once.
    name_cache: HashMap<InodeKey, Option<String>>,
    /// Per-file open evidence, re-read only when `Health::opens` moved.
    opens_cache: OpenCache,
    /// Entries of the last full read, reused while their counters stand still.
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
    /// Live entries counted at the last totals-only read, with the
    /// `inode_inserts` they were counted at.
    live_cache: Option<(u64, u64)>,
    /// Ages out in-flight records and deletes the entries of unmounted
    /// devices.
    janitor: Janitor,
    mounts: MountTable,
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

/// One process's writes to one entry, summed over the CPUs it wrote from.
/// Each CPU names the process as of the last refresh it wrote in; the name
/// of the CPU that wrote most stands for all.
fn writer_of(k: &WriterKey, per_cpu: &[WriterStats]) -> Writer {
    let writes = per_cpu.iter().map(|w| w.writes).sum();
    let comm = per_cpu
        .iter()
        .filter(|w| w.comm[0] != 0)
        .max_by_key(|w| w.writes)
        .map_or(&[][..], |w| {
            let len = w.comm.iter().position(|b| *b == 0).unwrap_or(w.comm.len());
            &w.comm[..len]
        });
    Writer {
        pid: k.tgid,
        comm: String::from_utf8_lossy(comm).into_owned(),
        writes,
    }
}

impl Collector {
    /// Takes the maps out of `attached` (the programs stay attached there).
    pub fn new(attached: &mut Attached) -> Result<Collector> {
        Ok(Collector {
            maps: InodeMaps {
                stats: take_hash(attached, MAP_INODE_STATS, attached.max_inodes)?,
                names: take_hash(attached, MAP_INODE_NAMES, attached.max_inodes)?,
                hists: take_hash(attached, MAP_INODE_HISTS, attached.max_inodes)?,
                writers: take_hash(attached, MAP_WRITERS, MAX_WRITERS)?,
                opens: take_hash(attached, MAP_OPENS, attached.max_inodes)?,
            },
            totals: take(attached, MAP_PATH_TOTALS)?,
            dev_totals: take_hash(attached, MAP_DEV_TOTALS, MAX_DEVICES)?,
            health: take(attached, MAP_HEALTH)?,
            path_hists: take(attached, MAP_PATH_HISTS)?,
            name_cache: HashMap::new(),
            opens_cache: OpenCache::default(),
            inodes: InodeCache::default(),
            dirty: take(attached, MAP_DIRTY)?,
            dirty_heads: None,
            last_range: None,
            epoch: take(attached, MAP_EPOCH)?,
            epoch_value: 0,
            opens_moved: false,
            live_cache: None,
            // The janitor's mount watch first: a mount between the two is
            // then seen.
            janitor: Janitor::new(
                take_hash(attached, MAP_INFLIGHT, MAX_INFLIGHT)?,
                attached.inflight_max_age,
            ),
            mounts: MountTable::read(),
            misses: Misses::new(attached),
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
        self.maps
            .names
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

    /// Drops the per-inode entries of devices that were mounted and are not
    /// any more. A new mount may reuse the device number, and its files the
    /// inode numbers: without this, a new file's counts would add to an
    /// unmounted one's. The never-evicted totals keep counting both. (An
    /// unmount and a remount within one refresh are not told apart.)
    fn forget_unmounted(&mut self) -> Result<()> {
        let gone = self
            .janitor
            .forget_unmounted(&mut self.mounts, &mut self.maps)?;
        if gone.is_empty() {
            return Ok(());
        }
        let of_gone = |k: &InodeKey| gone.contains(&k.dev);
        self.inodes.retain(|k| !of_gone(k));
        self.inodes.marks = None;
        self.last_range = None;
        self.live_cache = None;
        self.opens_cache.mark = None;
        self.name_cache.retain(|k, _| !of_gone(k));
        log::info!(
            "forgot the entries of unmounted device(s) {}",
            gone.iter()
                .map(|d| Dev(*d).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
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

    /// Live entries, counted: all the exporter needs of the per-inode maps.
    /// The count moves only on an insert (which may evict) or a delete of
    /// ours, so writes to known files cost no read.
    fn count_live(&mut self, inode_inserts: u64) -> Result<u64> {
        if let Some((at, live)) = self.live_cache {
            if at == inode_inserts {
                return Ok(live);
            }
        }
        let mut live = 0u64;
        self.maps
            .stats
            .for_each(|_, _| live += 1)
            .context("reading INODE_STATS")?;
        self.live_cache = Some((inode_inserts, live));
        Ok(live)
    }

    /// Brings the entry cache up to date. When the rings of recent writes
    /// cover everything since the last refresh, only the entries written
    /// since (and those whose open evidence moved) are looked up, key by
    /// key; otherwise every entry is read.
    fn refresh_entries(&mut self, marks: ChangeMarks) -> Result<()> {
        if self.inodes.marks == Some(marks) {
            return Ok(());
        }
        // A new epoch first, then the rings (read after the marks: a write
        // counted in them has pushed its pair, or a push in its epoch came
        // before it).
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
        // The pairs pushed since the refresh before last. An insert may have
        // evicted an entry silently: then read them all.
        let written = match (&self.inodes.marks, &range, &self.last_range) {
            (Some(m), Some(now), Some(before)) if m.inode_inserts == marks.inode_inserts => {
                Some(now.union(before).copied().collect::<HashSet<_>>())
            }
            _ => None,
        };
        let done = match written {
            Some(keys) => self.refresh_written(&keys)?,
            None => false,
        };
        if !done {
            self.refresh_all()?;
        }
        self.dirty_heads = Some(heads);
        self.last_range = range;
        self.inodes.marks = Some(marks);
        self.opens_moved = false;
        Ok(())
    }

    /// Looks up the entries in `written` and those whose open evidence
    /// moved. `false` if one is not in the cache (the caller reads all).
    fn refresh_written(&mut self, written: &HashSet<WriterKey>) -> Result<bool> {
        let mut touched: BTreeMap<InodeKey, Vec<u32>> = BTreeMap::new();
        for w in written {
            let key = w.inode();
            touched.entry(key).or_default().push(w.tgid);
        }
        if self.opens_moved {
            for (key, cached) in &self.inodes.entries {
                let open = self.opens_cache.of(key);
                if cached.open.as_ref() != open {
                    touched.entry(*key).or_default();
                }
            }
        }
        if touched.keys().any(|k| !self.inodes.entries.contains_key(k)) {
            return Ok(false);
        }
        for (key, tgids) in touched {
            let Some(values) = self
                .maps
                .stats
                .lookup(&key)
                .context("reading INODE_STATS")?
            else {
                // Gone since (deleted): so is its entry.
                self.inodes.remove(&key);
                continue;
            };
            let stats = sum_percpu(values);
            let open = self.opens_cache.of(&key).copied();
            let Some(mut cached) = self.inodes.entries.remove(&key) else {
                continue;
            };
            let entry_before = cached.entry.clone();
            let mut writers_moved = false;
            for tgid in tgids {
                let wkey = WriterKey::new(key, tgid);
                if let Some(w) = self.maps.writers.lookup(&wkey).context("reading WRITERS")? {
                    let writer = writer_of(&wkey, w);
                    if cached.writers.get(&tgid) != Some(&writer) {
                        cached.writers.insert(tgid, writer);
                        writers_moved = true;
                    }
                }
            }
            if stats != cached.stats || open != cached.open || writers_moved {
                let hists = self
                    .maps
                    .hists
                    .lookup(&key)
                    .context("reading INODE_HISTS")?
                    .map(|h| h[0]);
                cached.entry = Arc::new(self.build_entry(
                    key,
                    entry_before.path,
                    &stats,
                    hists.as_ref(),
                    &cached.writers,
                    open,
                ));
                cached.stats = stats;
                cached.open = open;
            }
            let replaced = !Arc::ptr_eq(&entry_before, &cached.entry);
            self.inodes.put_back(key, cached, replaced);
        }
        Ok(true)
    }

    /// An entry from what the maps hold for it.
    fn build_entry(
        &self,
        key: InodeKey,
        path: WritePath,
        stats: &WriteStats,
        hists: Option<&Histograms>,
        writers: &HashMap<u32, Writer>,
        open: Option<OpenStats>,
    ) -> Entry {
        let dev = Dev(key.dev);
        let mut top: Vec<Writer> = writers.values().cloned().collect();
        top.sort_by(|a, b| b.writes.cmp(&a.writes).then(a.pid.cmp(&b.pid)));
        top.truncate(TOP_WRITERS);
        Entry {
            mount: self.mounts.mount_of(dev).map(str::to_owned),
            name: self.name_cache.get(&key).cloned().flatten(),
            dev,
            ino: key.ino,
            path,
            counters: Counters::from(stats),
            histograms: hists.map(Histos::from).unwrap_or_default(),
            writers: top,
            open,
        }
    }

    /// Reads `INODE_STATS` whole and rebuilds the entries whose counters or
    /// open evidence moved, reading only their histograms and writers.
    fn refresh_all(&mut self) -> Result<()> {
        let mut current: Vec<(InodeKey, WriteStats)> =
            Vec::with_capacity(self.inodes.entries.len());
        self.maps
            .stats
            .for_each(|k, v| {
                if WritePath::from_u32(k.path).is_some() {
                    current.push((*k, sum_percpu(v)));
                }
            })
            .context("reading INODE_STATS")?;
        current.sort_unstable_by_key(|(k, _)| *k);

        let changed: Vec<(InodeKey, WriteStats)> = current
            .iter()
            .filter(|(k, stats)| {
                let open = self.opens_cache.of(k);
                self.inodes
                    .entries
                    .get(k)
                    .is_none_or(|c| c.stats != *stats || c.open.as_ref() != open)
            })
            .copied()
            .collect();
        // Entries gone from the map (evicted) leave the cache.
        self.inodes
            .retain(|k| current.binary_search_by_key(k, |(ck, _)| *ck).is_ok());
        let entries = &self.inodes.entries;
        self.name_cache.retain(|k, _| entries.contains_key(k));
        if changed.is_empty() {
            return Ok(());
        }
        let keys: Vec<InodeKey> = changed.iter().map(|(k, _)| *k).collect();
        self.refresh_names(&keys)?;
        let is_changed = |k: &InodeKey| keys.binary_search(k).is_ok();
        let mut hists: HashMap<InodeKey, Histograms> = HashMap::with_capacity(keys.len());
        if keys.len() <= HIST_LOOKUPS_MAX {
            for k in &keys {
                if let Some(h) = self.maps.hists.lookup(k).context("reading INODE_HISTS")? {
                    hists.insert(*k, h[0]);
                }
            }
        } else {
            self.maps
                .hists
                .for_each(|k, v| {
                    if is_changed(k) {
                        hists.insert(*k, v[0]);
                    }
                })
                .context("reading INODE_HISTS")?;
        }
        let mut writers: HashMap<InodeKey, HashMap<u32, Writer>> = HashMap::new();
        self.maps
            .writers
            .for_each(|k, v| {
                let key = k.inode();
                if is_changed(&key) {
                    writers
                        .entry(key)
                        .or_default()
                        .insert(k.tgid, writer_of(k, v));
                }
            })
            .context("reading WRITERS")?;
        for (key, stats) in changed {
            // The programs key entries by `WritePath` values only.
            let Some(path) = WritePath::from_u32(key.path) else {
                continue;
            };
            self.janitor.seen(key.dev, &self.mounts);
            let writers = writers.remove(&key).unwrap_or_default();
            let open = self.opens_cache.of(&key).copied();
            let entry = self.build_entry(key, path, &stats, hists.get(&key), &writers, open);
            self.inodes.insert(
                key,
                Cached {
                    stats,
                    open,
                    writers,
                    entry: Arc::new(entry),
                },
            );
        }
        Ok(())
    }

    /// Reads what `detail` asks for: the exporter without per-inode series
    /// needs only totals, and skips the per-inode work (names, histograms,
    /// writers, one entry per inode). Per-inode maps are read only when
    /// something changed since the last read, and only the entries that
    /// changed are rebuilt; the others are shared with the last snapshot.
    pub fn snapshot_with(&mut self, is_final: bool, detail: Detail) -> Result<Snapshot> {
        self.forget_unmounted()?;
        self.janitor.age_out_inflight()?;
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
                let entries = self.inodes.list();
                let live = entries.len() as u64;
                (entries, live)
            }
            Detail::Totals => (Entries::default(), self.count_live(marks.inode_inserts)?),
        };

        let mut devices = Vec::new();
        for (key, values) in self.dev_totals.read_all().context("reading DEV_TOTALS")? {
            let Some(path) = WritePath::from_u32(key.path) else {
                continue;
            };
            self.janitor.seen(key.dev, &self.mounts);
            let dev = Dev(key.dev);
            devices.push(DeviceTotals {
                mount: self.mounts.mount_of(dev).map(str::to_owned),
                dev,
                path,
                counters: Counters::from(&sum_percpu(&values)),
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
                inflight_aged_out: self.janitor.inflight_aged_out(),
                recursion_misses: self.misses.read(),
                ..HealthReport::new(&health, live, self.max_inodes, self.janitor.deleted())
            },
        })
    }
}

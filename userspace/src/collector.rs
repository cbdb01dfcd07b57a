//! Reads the maps into [`Snapshot`]s. It is the only code that knows the maps
//! exist; every output consumes the snapshots it produces.

use std::{
    collections::HashMap,
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
    mounts: MountTable,
    source: Source,
    max_inodes: u64,
    started: Instant,
}

/// A hash map's raw data, for batch reads.
fn take_hash<K: aya::Pod + Default, V: aya::Pod>(
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
            mounts: MountTable::read(),
            source: Source {
                kernel: attached.kernel.clone(),
                probe_mode: attached.mode.to_string(),
                contention: attached.contention,
            },
            max_inodes: u64::from(attached.max_inodes),
            started: Instant::now(),
        })
    }

    fn sum_percpu(values: &[WriteStats]) -> WriteStats {
        let mut sum = WriteStats::default();
        for v in values {
            sum.merge(v);
        }
        sum
    }

    /// Names of keys not seen before, read in one batch when any is new.
    fn refresh_names(&mut self, keys: &[InodeKey]) -> Result<()> {
        if keys.iter().all(|k| self.name_cache.contains_key(k)) {
            return Ok(());
        }
        for (key, names) in self.names.read_all().context("reading INODE_NAMES")? {
            if let Some(n) = names.first().filter(|n| n.len > 0) {
                self.name_cache.insert(
                    key,
                    Some(String::from_utf8_lossy(n.as_bytes()).into_owned()),
                );
            }
        }
        Ok(())
    }

    fn name_of(&self, key: InodeKey) -> Option<String> {
        self.name_cache.get(&key).cloned().flatten()
    }

    /// Reads every counter now.
    pub fn snapshot(&mut self, is_final: bool) -> Result<Snapshot> {
        self.snapshot_with(is_final, Detail::Full)
    }

    /// Reads what `detail` asks for: the exporter without per-inode series
    /// needs only totals, and skips the per-inode work (names, histograms,
    /// writers, one entry per inode).
    pub fn snapshot_with(&mut self, is_final: bool, detail: Detail) -> Result<Snapshot> {
        let mut raw: Vec<(InodeKey, WriteStats)> = self
            .stats
            .read_all()
            .context("reading INODE_STATS")?
            .into_iter()
            .map(|(k, v)| (k, Self::sum_percpu(&v)))
            .collect();
        raw.sort_by_key(|(k, _)| *k);
        let live = raw.len() as u64;
        if detail == Detail::Totals {
            raw.clear();
        }
        let keys: Vec<InodeKey> = raw.iter().map(|(k, _)| *k).collect();
        self.refresh_names(&keys)?;
        let mut hists: HashMap<InodeKey, Histograms> = HashMap::new();
        if detail == Detail::Full {
            for (k, v) in self.hists.read_all().context("reading INODE_HISTS")? {
                if let Some(h) = v.into_iter().next() {
                    hists.insert(k, h);
                }
            }
        }
        let mut opens: HashMap<InodeKey, OpenStats> = HashMap::new();
        for (k, v) in self.opens.read_all().context("reading OPENS")? {
            if let Some(o) = v.into_iter().next() {
                opens.insert(k, o);
            }
        }

        // A device's mount may have appeared since the last read.
        if raw
            .iter()
            .any(|(k, _)| self.mounts.mount_of(&dev_name(k.dev)).is_none())
        {
            self.mounts = MountTable::read();
        }
        let mut writers: HashMap<InodeKey, Vec<Writer>> = HashMap::new();
        let all_writers = if detail == Detail::Full {
            self.writers.read_all().context("reading WRITERS")?
        } else {
            Vec::new()
        };
        for (k, w) in all_writers {
            let Some(w) = w.into_iter().next() else {
                continue;
            };
            let key = InodeKey {
                ino: k.ino,
                dev: k.dev,
                path: k.path,
            };
            let comm_len = w.comm.iter().position(|b| *b == 0).unwrap_or(w.comm.len());
            writers.entry(key).or_default().push(Writer {
                pid: k.tgid,
                comm: String::from_utf8_lossy(&w.comm[..comm_len]).into_owned(),
                writes: w.writes,
            });
        }
        let mut entries = Vec::with_capacity(raw.len());
        for (key, stats) in &raw {
            let Some(path) = WritePath::from_u32(key.path) else {
                continue;
            };
            let dev = dev_name(key.dev);
            let mut top = writers.remove(key).unwrap_or_default();
            top.sort_by(|a, b| b.writes.cmp(&a.writes).then(a.pid.cmp(&b.pid)));
            top.truncate(TOP_WRITERS);
            let file = InodeKey { path: 0, ..*key };
            entries.push(Entry {
                mount: self.mounts.mount_of(&dev).map(str::to_owned),
                name: self.name_of(*key),
                dev,
                ino: key.ino,
                path: path.name().to_owned(),
                counters: Counters::from(stats),
                histograms: hists.get(key).map(Histos::from).unwrap_or_default(),
                writers: top,
                open: opens.get(&file).map(OpenEvidence::from),
            });
        }
        if detail == Detail::Full {
            self.name_cache
                .retain(|k, _| raw.binary_search_by_key(k, |(rk, _)| *rk).is_ok());
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
                counters: Counters::from(&Self::sum_percpu(&values)),
                histograms: Histos::from(&hists),
            })
        };
        let totals = Totals {
            passthrough: path_totals(WritePath::Passthrough)?,
            direct_io: path_totals(WritePath::DirectIo)?,
        };
        let mut devices = Vec::new();
        for (key, values) in self.dev_totals.read_all().context("reading DEV_TOTALS")? {
            let Some(path) = WritePath::from_u32(key.path) else {
                continue;
            };
            let dev = dev_name(key.dev);
            if self.mounts.mount_of(&dev).is_none() {
                self.mounts = MountTable::read();
            }
            devices.push(DeviceTotals {
                mount: self.mounts.mount_of(&dev).map(str::to_owned),
                dev,
                path: path.name().to_owned(),
                counters: Counters::from(&Self::sum_percpu(&values)),
            });
        }
        devices.sort_by(|a, b| (&a.dev, &a.path).cmp(&(&b.dev, &b.path)));
        let mut open_totals = OpenStats::default();
        for o in opens.values() {
            open_totals.merge(o);
        }
        let mut health = Health::default();
        for h in self.health.get(&0, 0).context("reading HEALTH")?.iter() {
            health.merge(h);
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
            health: HealthReport::new(&health, live, self.max_inodes, 0),
        })
    }
}

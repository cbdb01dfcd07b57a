//! Reads the maps into [`Snapshot`]s. It is the only code that knows the maps
//! exist; every output consumes the snapshots it produces.

use std::{
    collections::HashMap,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap};
use probes_common::{
    maps::{
        MAP_DEV_TOTALS, MAP_HEALTH, MAP_INODE_HISTS, MAP_INODE_NAMES, MAP_INODE_STATS, MAP_OPENS,
        MAP_PATH_HISTS, MAP_PATH_TOTALS, MAP_WRITERS,
    },
    Health, Histograms, InodeKey, InodeName, OpenStats, WritePath, WriteStats, WriterKey,
    WriterStats,
};

use crate::{
    mounts::MountTable,
    probes::Attached,
    snapshot::{
        dev_name, Counters, DeviceTotals, Entry, HealthReport, Histos, OpenEvidence, PathTotals,
        Snapshot, Source, Totals, Writer,
    },
};

/// Writers kept per entry.
const TOP_WRITERS: usize = 8;

pub struct Collector {
    stats: PerCpuHashMap<MapData, InodeKey, WriteStats>,
    names: BpfHashMap<MapData, InodeKey, InodeName>,
    totals: PerCpuArray<MapData, WriteStats>,
    dev_totals: PerCpuHashMap<MapData, InodeKey, WriteStats>,
    health: PerCpuArray<MapData, Health>,
    hists: BpfHashMap<MapData, InodeKey, Histograms>,
    path_hists: Array<MapData, Histograms>,
    writers: BpfHashMap<MapData, WriterKey, WriterStats>,
    opens: BpfHashMap<MapData, InodeKey, OpenStats>,
    /// Names already read, so each is fetched from the kernel once.
    name_cache: HashMap<InodeKey, Option<String>>,
    mounts: MountTable,
    source: Source,
    max_inodes: u64,
    started: Instant,
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
            stats: take(attached, MAP_INODE_STATS)?,
            names: take(attached, MAP_INODE_NAMES)?,
            totals: take(attached, MAP_PATH_TOTALS)?,
            dev_totals: take(attached, MAP_DEV_TOTALS)?,
            health: take(attached, MAP_HEALTH)?,
            hists: take(attached, MAP_INODE_HISTS)?,
            path_hists: take(attached, MAP_PATH_HISTS)?,
            writers: take(attached, MAP_WRITERS)?,
            opens: take(attached, MAP_OPENS)?,
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

    fn name_of(&mut self, key: InodeKey) -> Option<String> {
        if let Some(cached) = self.name_cache.get(&key) {
            return cached.clone();
        }
        let name = self
            .names
            .get(&key, 0)
            .ok()
            .filter(|n| n.len > 0)
            .map(|n| String::from_utf8_lossy(n.as_bytes()).into_owned());
        // Cache only hits: a miss may be filled by the kernel a moment later.
        if name.is_some() {
            self.name_cache.insert(key, name.clone());
        }
        name
    }

    /// Reads every counter now.
    pub fn snapshot(&mut self, is_final: bool) -> Result<Snapshot> {
        let mut raw = Vec::new();
        for item in self.stats.iter() {
            let (key, values) = item.context("reading INODE_STATS")?;
            raw.push((key, Self::sum_percpu(&values)));
        }
        raw.sort_by_key(|(k, _)| *k);

        // A device's mount may have appeared since the last read.
        if raw
            .iter()
            .any(|(k, _)| self.mounts.mount_of(&dev_name(k.dev)).is_none())
        {
            self.mounts = MountTable::read();
        }
        let mut writers: HashMap<InodeKey, Vec<Writer>> = HashMap::new();
        for item in self.writers.iter() {
            let Ok((k, w)) = item else { continue };
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
                histograms: self
                    .hists
                    .get(key, 0)
                    .map(|h| Histos::from(&h))
                    .unwrap_or_default(),
                writers: top,
                open: self
                    .opens
                    .get(&file, 0)
                    .ok()
                    .map(|o| OpenEvidence::from(&o)),
            });
        }
        let live = raw.len() as u64;
        self.name_cache
            .retain(|k, _| raw.binary_search_by_key(k, |(rk, _)| *rk).is_ok());

        let path_totals = |path: WritePath| -> Result<PathTotals> {
            let values = self
                .totals
                .get(&(path as u32), 0)
                .context("reading PATH_TOTALS")?;
            let hists = self
                .path_hists
                .get(&(path as u32), 0)
                .context("reading PATH_HISTS")?;
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
        for item in self.dev_totals.iter() {
            let (key, values) = item.context("reading DEV_TOTALS")?;
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
        let mut opens = OpenEvidence::default();
        for item in self.opens.iter() {
            let Ok((_, o)) = item else { continue };
            opens.add(&o);
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
            opens,
            health: HealthReport::new(&health, live, self.max_inodes, 0),
        })
    }
}

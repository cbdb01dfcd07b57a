//! The collector and the consumers on real BPF maps, natively. The machines
//! that build fuselock can create BPF maps but attach no probes (no kprobes,
//! no fentry), so here the maps are filled the way the programs fill them
//! ([`Kernel`], after `probes-ebpf/src/write.rs`), and read by the real
//! collector, stream encoder, `top` state and drawing, and exporter.
//!
//! A test checks what the collector reads back; an ignored one, which
//! `cargo xtask bench` runs (section 4), times each consumer's refresh on
//! this machine's CPU, next to the VM's emulated one.

use std::{
    io::{self, Write as _},
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    util::nr_cpus,
    Ebpf,
};
use probes_common::{
    maps::{
        DirtyRing, DIRTY_SLOTS, INFLIGHT_EXCLUSIVE, MAP_DEV_TOTALS, MAP_DIRTY, MAP_EPOCH,
        MAP_HEALTH, MAP_INODE_HISTS, MAP_INODE_NAMES, MAP_INODE_STATS, MAP_PATH_HISTS,
        MAP_PATH_TOTALS, MAP_WRITERS, NAME_LEN,
    },
    Health, Histograms, InFlight, InodeKey, InodeName, Reason, Reasons, WritePath, WriteStats,
    WriterKey, WriterStats,
};

use crate::{
    collect::{Collector, Detail},
    kernel::probes::{self, Attached},
    model::snapshot::Snapshot,
};

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
            cpus: nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?,
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
        map.insert(key, on_cpu0(cpus, v)?, 0)
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
            let len = name.len().min(NAME_LEN - 1);
            n.name[..len].copy_from_slice(&name.as_bytes()[..len]);
            n.len = len as u32;
            self.names.insert(key, n, 0).context("INODE_NAMES")?;
        }
        let mut h = self.hists.get(&key, 0).unwrap_or(Histograms::ZERO);
        h.record(&rec, WRITE_ENDS_NS, |slot| *slot += 1);
        self.hists.insert(key, h, 0).context("INODE_HISTS")?;

        let wkey = WriterKey::new(key, tgid);
        // count_writer: this CPU's count, and once per epoch its name and
        // a place in this CPU's ring.
        let epoch = self.epoch.get(&0, 0).context("EPOCH")?;
        let mut w = self.writers.get(&wkey, 0).map_or(
            WriterStats {
                writes: 0,
                comm: [0; probes_common::maps::COMM_LEN],
                dirty_epoch: epoch.wrapping_sub(1),
            },
            |values| values[0],
        );
        w.writes += 1;
        let push = w.dirty_epoch != epoch;
        if push {
            w.dirty_epoch = epoch;
            w.comm = [0; probes_common::maps::COMM_LEN];
            let len = comm.len().min(probes_common::maps::COMM_LEN - 1);
            w.comm[..len].copy_from_slice(&comm.as_bytes()[..len]);
        }
        self.writers
            .insert(wkey, on_cpu0(cpus, w)?, 0)
            .context("WRITERS")?;
        if push {
            let mut ring = self.dirty.get(&0, 0).context("DIRTY")?[0];
            ring.keys[(ring.head as usize) & (DIRTY_SLOTS - 1)] = wkey;
            ring.head += 1;
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

/// Thread CPU time (user and system) in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// A consumer's work per refresh, from a snapshot taken by its collector.
trait Consumer {
    fn name(&self) -> &'static str;
    fn refresh(&mut self, collector: &mut Collector) -> Result<()>;
}

struct StatJson {
    encoder: crate::wire::stream::Encoder,
    name: &'static str,
}

impl Consumer for StatJson {
    fn name(&self) -> &'static str {
        self.name
    }
    fn refresh(&mut self, collector: &mut Collector) -> Result<()> {
        let snap = collector.snapshot(false)?;
        let mut out = io::sink();
        serde_json::to_writer(&mut out, &self.encoder.encode(&snap))?;
        writeln!(out)?;
        Ok(())
    }
}

struct Top {
    app: crate::commands::top::TopApp,
    terminal: ratatui::Terminal<ratatui::backend::TestBackend>,
}

impl Consumer for Top {
    fn name(&self) -> &'static str {
        "top (160x50, drawn to memory)"
    }
    fn refresh(&mut self, collector: &mut Collector) -> Result<()> {
        self.app.on_snapshot(collector.snapshot(false)?);
        let app = &self.app;
        self.terminal
            .draw(|f| crate::commands::top::draw_frame(f, app))
            .context("drawing")?;
        Ok(())
    }
}

struct Export {
    bodies: crate::commands::export::BodyCache,
}

impl Consumer for Export {
    fn name(&self) -> &'static str {
        "export (one scrape)"
    }
    fn refresh(&mut self, collector: &mut Collector) -> Result<()> {
        let snap: Snapshot = collector.snapshot_with(false, Detail::Totals)?;
        self.bodies.body(snap, false, 0)?;
        Ok(())
    }
}

/// CPU seconds per refresh over `n` refreshes, with `between` run (and not
/// timed) before each.
fn per_refresh(
    consumer: &mut dyn Consumer,
    collector: &mut Collector,
    n: u32,
    mut between: impl FnMut() -> Result<()>,
) -> Result<f64> {
    let mut cpu = 0.0;
    for _ in 0..n {
        between()?;
        let t0 = thread_cpu();
        consumer.refresh(collector)?;
        cpu += thread_cpu() - t0;
    }
    Ok(cpu / f64::from(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rig, or `None` (with why) where maps cannot be created: not
    /// root, or a kernel without BPF.
    fn rig_or_skip(max_inodes: u32) -> Option<(Attached, Kernel)> {
        match rig(max_inodes) {
            Ok(r) => Some(r),
            Err(e) => {
                println!("   skipped: {e:#}");
                None
            }
        }
    }

    #[test]
    fn collector_reads_back_exactly_what_was_written() {
        let Some((mut attached, mut kernel)) = rig_or_skip(4096) else {
            return;
        };
        let mut collector = Collector::new(&mut attached).expect("collector");
        for ino in 1..=3 {
            for _ in 0..ino {
                kernel
                    .write(key(ino), &format!("f{ino}"), 100, "fio", 4096)
                    .expect("write");
            }
        }
        let first = collector.snapshot(false).expect("snapshot");
        let writes: Vec<(u64, u64, Option<&str>)> = first
            .entries
            .iter()
            .map(|e| (e.ino, e.counters.writes, e.name.as_deref()))
            .collect();
        assert_eq!(
            writes,
            [(1, 1, Some("f1")), (2, 2, Some("f2")), (3, 3, Some("f3"))]
        );
        assert_eq!(first.totals.passthrough.counters.writes, 6);
        assert_eq!(first.health.live_inodes, 3);
        assert_eq!(first.entries[2].writers[0].comm, "fio");

        // Idle: the same list.
        let idle = collector.snapshot(false).expect("snapshot");
        assert!(idle.entries.same_as(&first.entries));

        // One file written: found through the ring, the others shared.
        for _ in 0..5 {
            kernel.write(key(2), "f2", 200, "dd", 4096).expect("write");
        }
        let busy = collector.snapshot(false).expect("snapshot");
        assert_eq!(busy.entries[1].counters.writes, 7);
        assert_eq!(busy.entries[1].writers.len(), 2);
        assert!(std::sync::Arc::ptr_eq(&busy.entries[0], &first.entries[0]));
        assert!(std::sync::Arc::ptr_eq(&busy.entries[2], &first.entries[2]));

        // More distinct writes than half a ring: every entry is read again,
        // and still exactly.
        let many = DIRTY_SLOTS as u64;
        for ino in 10..10 + many {
            kernel.write(key(ino), "g", 300, "cp", 512).expect("write");
        }
        let after = collector.snapshot(false).expect("snapshot");
        assert_eq!(after.entries.len() as u64, 3 + many);
        assert_eq!(after.totals.passthrough.counters.writes, 11 + many);
        let sum: u64 = after.entries.iter().map(|e| e.counters.writes).sum();
        assert_eq!(sum, 11 + many);
    }

    /// Times each consumer's refresh on this machine with 10,000 live
    /// inodes: every file idle, then one file written 1,000 times between
    /// refreshes. Run by `cargo xtask bench` (section 4).
    #[test]
    #[ignore]
    fn refresh_cost_natively() {
        const INODES: u64 = 10_000;
        const REFRESHES: u32 = 50;
        let consumers: Vec<Box<dyn Consumer>> = vec![
            Box::new(StatJson {
                encoder: crate::wire::stream::Encoder::new(crate::wire::stream::Lines::Deltas),
                name: "stat --json",
            }),
            Box::new(StatJson {
                encoder: crate::wire::stream::Encoder::new(crate::wire::stream::Lines::Whole),
                name: "stat --json --every-entry",
            }),
            Box::new(Top {
                app: crate::commands::top::TopApp::new("live".into(), Duration::from_secs(1)),
                terminal: ratatui::Terminal::new(ratatui::backend::TestBackend::new(160, 50))
                    .expect("terminal"),
            }),
            Box::new(Export {
                bodies: crate::commands::export::BodyCache::default(),
            }),
        ];
        println!(
            "\n4. the same refresh work natively, on this machine's CPU, with {INODES} live \
             inodes (real BPF maps, filled as the programs fill them; CPU time of the \
             refreshing thread, mean of {REFRESHES})"
        );
        println!(
            "   {:<30} {:>14} {:>14} {:>22}",
            "consumer", "first refresh", "idle refresh", "one file busy refresh"
        );
        for mut consumer in consumers {
            let Some((mut attached, mut kernel)) = rig_or_skip(16_384) else {
                return;
            };
            let mut collector = Collector::new(&mut attached).expect("collector");
            // The consumer is there first, as on a host where fuselock runs.
            consumer.refresh(&mut collector).expect("refresh");
            for ino in 0..INODES {
                kernel
                    .write(key(ino), &format!("many-{ino}"), 1000, "fio", 4096)
                    .expect("write");
            }
            let first = per_refresh(&mut *consumer, &mut collector, 1, || Ok(())).expect("first");
            let idle =
                per_refresh(&mut *consumer, &mut collector, REFRESHES, || Ok(())).expect("idle");
            let busy = per_refresh(&mut *consumer, &mut collector, REFRESHES, || {
                for _ in 0..1000 {
                    kernel.write(key(0), "many-0", 1000, "fio", 4096)?;
                }
                Ok(())
            })
            .expect("busy");
            let ms = |s: f64| format!("{:.3} ms", s * 1e3);
            println!(
                "   {:<30} {:>14} {:>14} {:>22}   ({:.3} % / {:.3} % of a core at 1 s)",
                consumer.name(),
                ms(first),
                ms(idle),
                ms(busy),
                idle * 100.0,
                busy * 100.0
            );
            let live = collector
                .snapshot(false)
                .expect("snapshot")
                .health
                .live_inodes;
            assert_eq!(live, INODES, "every inode live");
        }
    }

    /// A `stat --json` stream of 10,000 live inodes, for timing the real
    /// `top --replay` process (`cargo xtask bench`, section 4): a whole first
    /// line, 20 lines with every file idle, 20 with one file written 1,000
    /// times between lines, and a whole final line; clocks one second apart.
    /// Written to `$FUSELOCK_NATIVE_RECORDING`.
    #[test]
    #[ignore]
    fn recording_for_replay() {
        let Ok(path) = std::env::var("FUSELOCK_NATIVE_RECORDING") else {
            println!("   skipped: FUSELOCK_NATIVE_RECORDING not set");
            return;
        };
        let Some((mut attached, mut kernel)) = rig_or_skip(16_384) else {
            return;
        };
        let mut collector = Collector::new(&mut attached).expect("collector");
        for ino in 0..10_000 {
            kernel
                .write(key(ino), &format!("many-{ino}"), 1000, "fio", 4096)
                .expect("write");
        }
        let mut encoder = crate::wire::stream::Encoder::new(crate::wire::stream::Lines::Deltas);
        let mut out = io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        for second in 0..42u32 {
            if (21..41).contains(&second) {
                for _ in 0..1000 {
                    kernel
                        .write(key(0), "many-0", 1000, "fio", 4096)
                        .expect("write");
                }
            }
            let mut snap = collector.snapshot(second == 41).expect("snapshot");
            snap.elapsed_secs = f64::from(second);
            serde_json::to_writer(&mut out, &encoder.encode(&snap)).expect("json");
            writeln!(out).expect("write");
        }
        out.flush().expect("flush");
    }
}

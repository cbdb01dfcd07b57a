//! The snapshot: one consistent reading of every counter, the single input of
//! every output (`stat`'s table and JSON, `top`, `verify`, `export`).
//!
//! Snapshots are cumulative since fuselock attached; consumers that want rates
//! subtract two of them. Their JSON lines are [`crate::wire::json`]'s.

use std::{ops::Deref, sync::Arc};

use probes_common::{
    hist, Dev, Health, Histograms, LockMode, OpenStats, Reason, WritePath, WriteStats,
};

use crate::model::{
    counts::{Histogram, PerMode, PerReason},
    workload::Workload,
};

/// Acquisitions by mode and reason.
pub type Acquisitions = PerMode<PerReason<u64>>;

/// The counters of one (device, inode, path) or of a whole path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub writes: u64,
    pub bytes: u64,
    pub errors: u64,
    /// Acquisitions of the FUSE inode lock, shared.
    pub shared: u64,
    /// Acquisitions of the FUSE inode lock, exclusive.
    pub exclusive: u64,
    /// Writes during which the lock was never seen held.
    pub unlocked: u64,
    pub acquisitions: Acquisitions,
    pub contended: PerMode<u64>,
    pub wait_ns_total: PerMode<u64>,
    pub wait_ns_max: PerMode<u64>,
    pub hold_ns_total: PerMode<u64>,
    pub hold_ns_max: PerMode<u64>,
    pub latency_ns_total: u64,
    pub shared_extended: u64,
    /// Direct overwrites inside EOF that took the lock exclusive, their
    /// latency and their lock waits (absent from older recordings).
    pub overwrites_exclusive: u64,
    pub overwrites_exclusive_latency_ns: u64,
    pub overwrites_exclusive_wait_ns: u64,
}

impl From<&WriteStats> for Counters {
    fn from(s: &WriteStats) -> Counters {
        Counters {
            writes: s.writes(),
            bytes: s.bytes,
            errors: s.errors,
            shared: s.acquired(LockMode::Shared),
            exclusive: s.acquired(LockMode::Exclusive),
            unlocked: s.unlocked,
            acquisitions: PerMode::from_fn(|m| PerReason::from_fn(|r| s.acquired_for(m, r))),
            contended: PerMode::from_array(s.contended),
            wait_ns_total: PerMode::from_array(s.wait_ns_total),
            wait_ns_max: PerMode::from_array(s.wait_ns_max),
            hold_ns_total: PerMode::from_array(s.hold_ns_total),
            hold_ns_max: PerMode::from_array(s.hold_ns_max),
            latency_ns_total: s.latency_ns_total,
            shared_extended: s.shared_extended,
            overwrites_exclusive: s.overwrites_exclusive(),
            overwrites_exclusive_latency_ns: s.overwrites_exclusive_latency_ns,
            overwrites_exclusive_wait_ns: s.overwrites_exclusive_wait_ns,
        }
    }
}

impl Counters {
    /// Adds another row's counts: counts and totals add up, maxima take the
    /// larger (as [`WriteStats::merge`] combines per-CPU copies).
    pub fn merge(&mut self, other: &Counters) {
        self.writes += other.writes;
        self.bytes += other.bytes;
        self.errors += other.errors;
        self.shared += other.shared;
        self.exclusive += other.exclusive;
        self.unlocked += other.unlocked;
        for mode in LockMode::ALL {
            for reason in Reason::ALL {
                self.acquisitions[mode][reason] += other.acquisitions[mode][reason];
            }
            self.contended[mode] += other.contended[mode];
            self.wait_ns_total[mode] += other.wait_ns_total[mode];
            self.wait_ns_max[mode] = self.wait_ns_max[mode].max(other.wait_ns_max[mode]);
            self.hold_ns_total[mode] += other.hold_ns_total[mode];
            self.hold_ns_max[mode] = self.hold_ns_max[mode].max(other.hold_ns_max[mode]);
        }
        self.latency_ns_total += other.latency_ns_total;
        self.shared_extended += other.shared_extended;
        self.overwrites_exclusive += other.overwrites_exclusive;
        self.overwrites_exclusive_latency_ns += other.overwrites_exclusive_latency_ns;
        self.overwrites_exclusive_wait_ns += other.overwrites_exclusive_wait_ns;
    }

    /// Acquisitions of the lock in `mode`, for every reason.
    pub fn acquired(&self, mode: LockMode) -> u64 {
        match mode {
            LockMode::Shared => self.shared,
            LockMode::Exclusive => self.exclusive,
        }
    }
}

/// Wait, hold and latency histograms of an entry or a path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histos {
    pub wait_hist: PerMode<Histogram>,
    pub hold_hist: PerMode<Histogram>,
    pub latency_hist: Histogram,
}

impl From<&Histograms> for Histos {
    fn from(h: &Histograms) -> Histos {
        let by_mode = |a: &[[u64; hist::HIST_BUCKETS]; LockMode::COUNT]| {
            PerMode::from_fn(|m| Histogram::from_counts(&a[m as usize]))
        };
        Histos {
            wait_hist: by_mode(&h.wait),
            hold_hist: by_mode(&h.hold),
            latency_hist: Histogram::from_counts(&h.latency),
        }
    }
}

/// A process writing an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Writer {
    pub pid: u32,
    pub comm: String,
    pub writes: u64,
    pub cgroup: WriterCgroup,
}

/// The cgroup a writer ran in, as far as it is known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WriterCgroup {
    /// No cgroup id: a kernel without cgroups, or a recording from before
    /// writers' cgroups were read.
    #[default]
    None,
    /// An id with no directory under the cgroup root fuselock sees: the
    /// cgroup is gone, or fuselock runs in another cgroup namespace.
    Unresolved {
        id: u64,
    },
    Resolved(Arc<CgroupOrigin>),
}

impl WriterCgroup {
    pub fn id(&self) -> Option<u64> {
        match self {
            WriterCgroup::None => None,
            WriterCgroup::Unresolved { id } => Some(*id),
            WriterCgroup::Resolved(o) => Some(o.id),
        }
    }

    pub fn workload(&self) -> Option<&Workload> {
        match self {
            WriterCgroup::Resolved(o) => Some(&o.workload),
            _ => None,
        }
    }

    /// The workload a writer's row names in a narrow column: a pod, a
    /// container or a unit (`None` for the root cgroup, an unknown shape,
    /// or no cgroup, where the process name says more).
    pub fn short(&self) -> Option<String> {
        match self.workload()? {
            w @ (Workload::Pod(_) | Workload::Container(_) | Workload::Unit(_)) => {
                Some(w.to_string())
            }
            Workload::Root | Workload::Other => None,
        }
    }

    /// Everything known, for a detail view: the pod with its QoS class and
    /// container, and the path; or why there is nothing.
    pub fn describe(&self) -> String {
        match self {
            WriterCgroup::None => String::new(),
            WriterCgroup::Unresolved { id } => {
                format!("cgroup {id} (not found under the cgroup root)")
            }
            WriterCgroup::Resolved(o) => {
                let what = match &o.workload {
                    Workload::Pod(p) => {
                        let mut s = format!("pod {} ({}", o.workload, p.qos.name());
                        if p.name.is_some() {
                            s += &format!(", uid {}", p.uid);
                        }
                        s += ")";
                        if let Some(c) = &p.container {
                            s += &format!(", container {} {}", c.runtime.name(), c.short_id());
                        }
                        s
                    }
                    Workload::Container(_) => format!("container {}", o.workload),
                    Workload::Unit(u) => format!("unit {u}"),
                    Workload::Root => "root cgroup".to_owned(),
                    Workload::Other => "cgroup".to_owned(),
                };
                format!("{what}  {}", o.path)
            }
        }
    }
}

/// A resolved cgroup: its path under the cgroup root and what it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupOrigin {
    /// `bpf_get_current_cgroup_id()`: the directory's inode number.
    pub id: u64,
    /// `/kubepods.slice/…`, from the cgroup root.
    pub path: String,
    pub workload: Workload,
}

/// One (device, inode, path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The FUSE superblock's device.
    pub dev: Dev,
    pub ino: u64,
    /// The dentry name seen on the first write, if known.
    pub name: Option<String>,
    /// Mount point of `dev`, from /proc/self/mountinfo.
    pub mount: Option<String>,
    pub path: WritePath,
    pub counters: Counters,
    pub histograms: Histos,
    /// The processes writing it, most writes first (at most 8).
    pub writers: Vec<Writer>,
    /// What opens of this file asked for and what the kernel kept.
    pub open: Option<OpenStats>,
}

impl Entry {
    /// Which file, on which write path, the entry counts.
    pub fn id(&self) -> FileId {
        FileId {
            dev: self.dev,
            ino: self.ino,
            path: self.path,
        }
    }
}

/// A watched file on one write path: what identifies an entry across
/// snapshots, in the stream's `removed` list, and in `top`'s selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: Dev,
    pub ino: u64,
    pub path: WritePath,
}

/// The programs' health and the map bookkeeping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthReport {
    pub live_inodes: u64,
    pub max_inodes: u64,
    /// Files forgotten to make room in the per-file map, those written
    /// longest ago first (their writes still count in `totals` and
    /// `devices`).
    pub evictions: u64,
    /// What the programs count, as they declare it (`probes_common::Health`).
    pub kernel: Health,
    /// Runs of fuselock's programs the kernel skipped (their
    /// `recursion_misses`, plus kprobe mode's missed returns): each may be
    /// a write lost or misclassified, so counts are incomplete when it is
    /// not 0.
    pub recursion_misses: u64,
    /// Writers' cgroup ids that named no cgroup directory fuselock could
    /// see (gone, or another cgroup namespace), since start: those writers
    /// show their id alone. Names only, never counts.
    pub cgroups_unresolved: u64,
}

impl HealthReport {
    /// Every counter of events that may leave counts incomplete, by the name
    /// the metric's `kind` label and the table's warning give it: the one
    /// list both read, so neither can leave one out.
    pub fn losses(&self) -> [(&'static str, u64); 8] {
        let k = &self.kernel;
        [
            ("inode_insert_failed", k.inode_insert_failed),
            ("inflight_full", k.inflight_full),
            ("inflight_replaced", k.inflight_replaced),
            ("exit_unmatched", k.exit_unmatched),
            ("read_error", k.read_errors),
            ("lock_state_unknown", k.lock_state_unknown),
            ("dev_totals_full", k.dev_totals_full),
            ("recursion_miss", self.recursion_misses),
        ]
    }

    pub fn new(h: &Health, live_inodes: u64, max_inodes: u64, evictions: u64) -> HealthReport {
        HealthReport {
            live_inodes,
            max_inodes,
            evictions,
            kernel: *h,
            recursion_misses: 0,
            cgroups_unresolved: 0,
        }
    }
}

/// Where the numbers came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    /// `uname -r` of the observed kernel.
    pub kernel: String,
    /// `"fentry"` or `"kprobe"`.
    pub probe_mode: String,
    /// Whether lock waits are measured (`lock:contention_*` attached).
    pub contention: bool,
    /// With `--cgroup` or `--pod`: the cgroup whose tasks alone were
    /// counted (its path from the cgroup root). `None`: every task.
    pub only_cgroup: Option<String>,
}

/// The never-evicted counters of one (device, path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceTotals {
    pub dev: Dev,
    pub mount: Option<String>,
    pub path: WritePath,
    pub counters: Counters,
}

/// The never-evicted sums of one path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathTotals {
    pub counters: Counters,
    pub histograms: Histos,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub passthrough: PathTotals,
    pub direct_io: PathTotals,
}

impl Totals {
    /// The counters and histograms of one write path.
    pub fn of(&self, path: WritePath) -> &PathTotals {
        match path {
            WritePath::Passthrough => &self.passthrough,
            WritePath::DirectIo => &self.direct_io,
        }
    }

    pub fn get(&self, path: WritePath) -> &Counters {
        &self.of(path).counters
    }
}

/// Every counter at one moment. Always whole: a stream's delta lines are
/// [`crate::wire::stream`]'s, not the model's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Seconds since the Unix epoch.
    pub timestamp: f64,
    /// Seconds since fuselock attached.
    pub elapsed_secs: f64,
    pub source: Source,
    /// The last snapshot of a run (`stat -- COMMAND` prints only this one).
    pub is_final: bool,
    /// Entries are shared between snapshots: an entry that did not change is
    /// the same allocation in both, and a refresh in which none changed hands
    /// out the same list.
    pub entries: Entries,
    /// Never-evicted sums per path.
    pub totals: Totals,
    /// Never-evicted sums per (device, path): what monitoring counts.
    pub devices: Vec<DeviceTotals>,
    /// Open-time evidence summed over every file opened since attach.
    pub opens: OpenStats,
    pub health: HealthReport,
    /// Writes by pod, container or unit, summed over every writer of every
    /// file the maps hold now: only when asked for (`export --per-pod-top`).
    /// A file forgotten takes its writers' counts with it, so these are
    /// not counters; the exporter turns them into counters.
    pub workloads: Option<Arc<[WorkloadWrites]>>,
}

/// One workload's writes, over the files the maps hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadWrites {
    /// A pod whatever its container ([`Workload::grouped`]), a container,
    /// or a unit.
    pub workload: Workload,
    pub writes: u64,
}

/// A snapshot's entries: one shared list, so that a refresh in which nothing
/// changed costs consumers one pointer copy and one pointer compare
/// ([`Entries::same_as`]), not a pass over 10,000 entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entries(Arc<[Arc<Entry>]>);

impl Entries {
    /// Whether `self` and `other` are the same list (not merely equal).
    pub fn same_as(&self, other: &Entries) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Deref for Entries {
    type Target = [Arc<Entry>];

    fn deref(&self) -> &[Arc<Entry>] {
        &self.0
    }
}

impl<'a> IntoIterator for &'a Entries {
    type Item = &'a Arc<Entry>;
    type IntoIter = std::slice::Iter<'a, Arc<Entry>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl From<Vec<Arc<Entry>>> for Entries {
    fn from(v: Vec<Arc<Entry>>) -> Entries {
        Entries(v.into())
    }
}

impl FromIterator<Arc<Entry>> for Entries {
    fn from_iter<I: IntoIterator<Item = Arc<Entry>>>(iter: I) -> Entries {
        Entries(iter.into_iter().collect())
    }
}

/// The device of a userspace `dev_t` (`stat`'s `st_dev`), in the kernel's
/// encoding; `None` if it does not fit it.
pub fn kernel_dev(dev: u64) -> Option<Dev> {
    Dev::from_parts(libc::major(dev), libc::minor(dev))
}

#[cfg(test)]
mod tests {
    use probes_common::{Reason, Reasons};

    use super::*;
    use crate::model::counts::Bucket;

    #[test]
    fn dev_t_uses_kernel_encoding() {
        assert_eq!(Dev((8 << 20) | 1).to_string(), "8:1");
        assert_eq!(Dev(45).to_string(), "0:45");
        assert_eq!(kernel_dev(libc::makedev(8, 1)), Some(Dev((8 << 20) | 1)));
        assert_eq!(kernel_dev(libc::makedev(4096, 1)), None);
    }

    #[test]
    fn counters_decode_every_mode_and_reason() {
        let mut s = WriteStats {
            bytes: 7 * 4096,
            ..Default::default()
        };
        s.add_acquisitions(LockMode::Shared, Reasons::NONE, 3);
        s.add_acquisitions(LockMode::Exclusive, Reasons::NONE.with(Reason::Append), 3);
        s.add_acquisitions(
            LockMode::Exclusive,
            Reasons::NONE.with(Reason::Append).with(Reason::Buffered),
            1,
        );
        let c = Counters::from(&s);
        assert_eq!(c.writes, 7);
        assert_eq!((c.shared, c.exclusive), (3, 4));
        assert_eq!(c.acquired(LockMode::Exclusive), 4);
        assert_eq!(c.acquisitions[LockMode::Shared][Reason::Eligible], 3);
        assert_eq!(c.acquisitions[LockMode::Exclusive][Reason::Append], 4);
        assert_eq!(c.acquisitions[LockMode::Exclusive][Reason::Buffered], 1);
        assert_eq!(c.acquisitions[LockMode::Exclusive][Reason::PastEof], 0);
    }

    #[test]
    fn histograms_keep_non_empty_buckets_with_bounds() {
        let mut b = [0u64; hist::HIST_BUCKETS];
        b[hist::bucket(0)] += 1;
        b[hist::bucket(1500)] += 2;
        b[hist::bucket(u64::MAX)] += 3;
        let h = Histogram::from_counts(&b);
        assert_eq!(
            h.buckets().collect::<Vec<_>>(),
            [
                Bucket {
                    le_ns: Some(0),
                    count: 1
                },
                Bucket {
                    le_ns: Some(2047),
                    count: 2
                },
                Bucket {
                    le_ns: None,
                    count: 3
                },
            ]
        );
    }

    #[test]
    fn a_writers_cgroup_is_shown_short_in_a_column_and_whole_in_a_detail() {
        use crate::model::workload::{self, PodName};
        let uid = "3d1f2c4b-8a9e-4f6d-b2c1-0a1b2c3d4e5f";
        let id = "4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233445566778899";
        let path = format!("/kubepods/burstable/pod{uid}/{id}");
        let mut pod = workload::classify(&path);
        if let Workload::Pod(p) = &mut pod {
            p.name = Some(PodName {
                namespace: "prod".into(),
                name: "db-0".into(),
            });
        }
        let resolved = |path: &str, workload| {
            WriterCgroup::Resolved(Arc::new(CgroupOrigin {
                id: 7,
                path: path.into(),
                workload,
            }))
        };
        let c = resolved(&path, pod);
        assert_eq!(c.short().as_deref(), Some("prod/db-0"));
        assert_eq!(
            c.describe(),
            format!("pod prod/db-0 (Burstable, uid {uid}), container unknown 4a5b6c7d8e9f  {path}")
        );
        let unit = resolved(
            "/system.slice/a.service",
            Workload::Unit("a.service".into()),
        );
        assert_eq!(unit.short().as_deref(), Some("a.service"));
        assert_eq!(unit.describe(), "unit a.service  /system.slice/a.service");
        // The root cgroup and unknown shapes leave the column to the
        // process name; an id that did not resolve says so.
        assert_eq!(resolved("/", Workload::Root).short(), None);
        assert_eq!(resolved("/x/y", Workload::Other).describe(), "cgroup  /x/y");
        assert_eq!(
            WriterCgroup::Unresolved { id: 9 }.describe(),
            "cgroup 9 (not found under the cgroup root)"
        );
        assert_eq!(WriterCgroup::None.describe(), "");
        assert_eq!(WriterCgroup::None.id(), None);
    }
}

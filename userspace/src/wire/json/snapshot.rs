//! The JSON of the snapshot's parts: entries, totals, devices and health,
//! under the model's field names. Each form mirrors its model struct field
//! for field (serde's `remote`), so a field added to the model and not here
//! fails to compile.

use std::sync::Arc;

use probes_common::{Dev, Health, OpenStats, WritePath};
use serde::{Deserialize, Serialize, Serializer};
use serde_with::{ser::SerializeAsWrap, serde_as, Same};

use super::{
    counts::{HistogramJson, PerModeJson, PerReasonJson},
    kernel::{DevJson, HealthJson, OpenStatsJson, WritePathJson},
    workload::WriterCgroupJson,
};
use crate::model::{
    counts::{Histogram, PerMode},
    snapshot::{
        Acquisitions, Counters, DeviceTotals, Entry, FileId, HealthReport, Histos, PathTotals,
        Source, Totals, Writer, WriterCgroup,
    },
};

#[serde_as]
#[derive(Serialize, Deserialize)]
#[serde(remote = "Counters")]
pub struct CountersJson {
    writes: u64,
    bytes: u64,
    errors: u64,
    shared: u64,
    exclusive: u64,
    unlocked: u64,
    #[serde_as(as = "PerModeJson<PerReasonJson<Same>>")]
    acquisitions: Acquisitions,
    #[serde_as(as = "PerModeJson<Same>")]
    contended: PerMode<u64>,
    #[serde_as(as = "PerModeJson<Same>")]
    wait_ns_total: PerMode<u64>,
    #[serde_as(as = "PerModeJson<Same>")]
    wait_ns_max: PerMode<u64>,
    #[serde_as(as = "PerModeJson<Same>")]
    hold_ns_total: PerMode<u64>,
    #[serde_as(as = "PerModeJson<Same>")]
    hold_ns_max: PerMode<u64>,
    latency_ns_total: u64,
    shared_extended: u64,
    // Absent from recordings made before they were counted.
    #[serde(default)]
    overwrites_exclusive: u64,
    #[serde(default)]
    overwrites_exclusive_latency_ns: u64,
    #[serde(default)]
    overwrites_exclusive_wait_ns: u64,
}

#[serde_as]
#[derive(Serialize, Deserialize)]
#[serde(remote = "Histos")]
pub struct HistosJson {
    #[serde_as(as = "PerModeJson<HistogramJson>")]
    wait_hist: PerMode<Histogram>,
    #[serde_as(as = "PerModeJson<HistogramJson>")]
    hold_hist: PerMode<Histogram>,
    #[serde_as(as = "HistogramJson")]
    latency_hist: Histogram,
}

#[serde_as]
#[derive(Serialize, Deserialize)]
#[serde(remote = "Writer")]
pub struct WriterJson {
    pid: u32,
    comm: String,
    writes: u64,
    // Absent without a cgroup id, and from recordings made before writers'
    // cgroups were resolved.
    #[serde(default, skip_serializing_if = "no_cgroup")]
    #[serde_as(as = "WriterCgroupJson")]
    cgroup: WriterCgroup,
}

fn no_cgroup(c: &WriterCgroup) -> bool {
    *c == WriterCgroup::None
}

#[serde_as]
#[derive(Serialize, Deserialize)]
#[serde(remote = "Entry")]
pub struct EntryJson {
    #[serde_as(as = "DevJson")]
    dev: Dev,
    ino: u64,
    name: Option<String>,
    mount: Option<String>,
    #[serde_as(as = "WritePathJson")]
    path: WritePath,
    #[serde(flatten)]
    #[serde_as(as = "CountersJson")]
    counters: Counters,
    #[serde(flatten)]
    #[serde_as(as = "HistosJson")]
    histograms: Histos,
    #[serde_as(as = "Vec<WriterJson>")]
    writers: Vec<Writer>,
    #[serde_as(as = "Option<OpenStatsJson>")]
    open: Option<OpenStats>,
}

#[serde_as]
#[derive(Serialize, Deserialize)]
#[serde(remote = "FileId")]
pub struct FileIdJson {
    #[serde_as(as = "DevJson")]
    dev: Dev,
    ino: u64,
    #[serde_as(as = "WritePathJson")]
    path: WritePath,
}

#[serde_as]
#[derive(Serialize, Deserialize)]
#[serde(remote = "HealthReport")]
pub struct HealthReportJson {
    live_inodes: u64,
    max_inodes: u64,
    evictions: u64,
    #[serde(flatten)]
    #[serde_as(as = "HealthJson")]
    kernel: Health,
    // Absent from recordings made before it was counted. (Recordings
    // from before in-flight records lived in task storage also carry an
    // `inflight_aged_out`, which is read past.)
    #[serde(default)]
    recursion_misses: u64,
    // Absent from recordings made before writers' cgroups were resolved.
    #[serde(default)]
    cgroups_unresolved: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "Source")]
pub struct SourceJson {
    kernel: String,
    probe_mode: String,
    contention: bool,
    // Only with --cgroup or --pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    only_cgroup: Option<String>,
}

#[serde_as]
#[derive(Serialize, Deserialize)]
#[serde(remote = "DeviceTotals")]
pub struct DeviceTotalsJson {
    #[serde_as(as = "DevJson")]
    dev: Dev,
    mount: Option<String>,
    #[serde_as(as = "WritePathJson")]
    path: WritePath,
    #[serde(flatten)]
    #[serde_as(as = "CountersJson")]
    counters: Counters,
}

#[serde_as]
#[derive(Serialize, Deserialize)]
#[serde(remote = "PathTotals")]
pub struct PathTotalsJson {
    #[serde(flatten)]
    #[serde_as(as = "CountersJson")]
    counters: Counters,
    #[serde(flatten)]
    #[serde_as(as = "HistosJson")]
    histograms: Histos,
}

#[serde_as]
#[derive(Serialize, Deserialize)]
#[serde(remote = "Totals")]
pub struct TotalsJson {
    #[serde_as(as = "PathTotalsJson")]
    passthrough: PathTotals,
    #[serde_as(as = "PathTotalsJson")]
    direct_io: PathTotals,
}

super::via_remote!(
    CountersJson => Counters,
    HistosJson => Histos,
    WriterJson => Writer,
    EntryJson => Entry,
    FileIdJson => FileId,
    HealthReportJson => HealthReport,
    SourceJson => Source,
    DeviceTotalsJson => DeviceTotals,
    PathTotalsJson => PathTotals,
    TotalsJson => Totals,
);

/// A list of entries as written.
pub struct EntriesOut<'a>(pub &'a [Arc<Entry>]);

impl Serialize for EntriesOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.0
                .iter()
                .map(|e| SerializeAsWrap::<Entry, EntryJson>::new(e)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::json::tests::{from_json, to_json};

    /// The health object is the kernel's counters (declared once, in
    /// probes-common) between userspace's own: its JSON keeps the names and
    /// order recordings have always had, and older recordings still read.
    #[test]
    fn health_report_json_keeps_its_keys_and_order() {
        let kernel = Health {
            inode_inserts: 100,
            inode_insert_failed: 1,
            inflight_full: 2,
            inflight_replaced: 3,
            exit_unmatched: 4,
            read_errors: 5,
            lock_state_unknown: 6,
            cached_path_writes: 7,
            unconfigured: 8,
            dev_totals_full: 9,
            opens: 10,
            writers_full: 11,
        };
        let report = HealthReport {
            recursion_misses: 12,
            cgroups_unresolved: 13,
            ..HealthReport::new(&kernel, 40, 16384, 10)
        };
        let json = to_json::<HealthReportJson, _>(&report);
        assert_eq!(
            json,
            r#"{"live_inodes":40,"max_inodes":16384,"evictions":10,"inode_insert_failed":1,"inflight_full":2,"inflight_replaced":3,"exit_unmatched":4,"read_errors":5,"lock_state_unknown":6,"cached_path_writes":7,"dev_totals_full":9,"writers_full":11,"recursion_misses":12,"cgroups_unresolved":13}"#
        );
        // Bookkeeping that is not in the JSON reads back as 0.
        let back: HealthReport = from_json::<HealthReportJson, _>(&json).expect("read back");
        let unread = Health {
            inode_inserts: 0,
            unconfigured: 0,
            opens: 0,
            ..kernel
        };
        assert_eq!(back.kernel, unread);
        assert_eq!(back.recursion_misses, 12);

        // A recording from before `writers_full` and `recursion_misses`
        // (tests/fixtures/replay.jsonl has this line).
        let old: HealthReport = from_json::<HealthReportJson, _>(
            r#"{"live_inodes":0,"max_inodes":16384,"evictions":0,"inode_insert_failed":0,"inflight_full":0,"inflight_replaced":0,"exit_unmatched":0,"read_errors":0,"lock_state_unknown":0,"cached_path_writes":0,"dev_totals_full":0}"#,
        )
        .expect("older recording");
        assert_eq!(old.max_inodes, 16384);
        assert_eq!(old.recursion_misses, 0);
        // One from when in-flight records could be aged out: read past.
        let aged: HealthReport = from_json::<HealthReportJson, _>(
            r#"{"live_inodes":0,"max_inodes":16384,"evictions":0,"inode_insert_failed":0,"inflight_full":0,"inflight_replaced":0,"exit_unmatched":0,"read_errors":0,"lock_state_unknown":0,"cached_path_writes":0,"dev_totals_full":0,"inflight_aged_out":2,"recursion_misses":3}"#,
        )
        .expect("a recording with inflight_aged_out");
        assert_eq!(aged.recursion_misses, 3);
        // A kernel counter missing is an error, as before.
        let missing = from_json::<HealthReportJson, HealthReport>(
            r#"{"live_inodes":0,"max_inodes":1,"evictions":0}"#,
        )
        .expect_err("inode_insert_failed is required");
        assert!(missing.to_string().contains("missing field"), "{missing}");
    }

    #[test]
    fn file_ids_write_their_device_as_maj_min_and_their_path_by_name() {
        let id = FileId {
            dev: Dev(45),
            ino: 7,
            path: WritePath::DirectIo,
        };
        let json = to_json::<FileIdJson, _>(&id);
        assert_eq!(json, r#"{"dev":"0:45","ino":7,"path":"direct_io"}"#);
        assert_eq!(
            from_json::<FileIdJson, FileId>(&json).expect("read back"),
            id
        );
        for bad in [
            r#"{"dev":"0:45","ino":7,"path":"splice"}"#,
            r#"{"dev":"45","ino":7,"path":"direct_io"}"#,
        ] {
            assert!(from_json::<FileIdJson, FileId>(bad).is_err(), "{bad}");
        }
    }
}

//! A snapshot as Prometheus metrics. The snapshot is taken at scrape time
//! (as ebpf_exporter does): no second copy of the state lives here.

use fuselock_base::escape;
use probes_common::{hist, Dev, LockMode, Reason, WritePath};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{info::Info, MetricType},
    registry::Unit,
};

use crate::{
    model::verdict::{decide, Evidence, Verdict},
    model::{
        counts::Histogram,
        snapshot::{Counters, Snapshot},
    },
};

/// Labels for per-(mount, path) series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    mount: String,
    path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mount: String,
    path: String,
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    mount: String,
    path: String,
    mode: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HistLabels {
    path: String,
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InodeLabels {
    mount: String,
    path: String,
    dev: String,
    ino: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OnlyLabels {
    cgroup: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    kernel: String,
    probe_mode: String,
}

/// Encodes one scrape's snapshot.
#[derive(Debug)]
pub struct SnapshotMetrics {
    pub snapshot: Snapshot,
    /// Per-inode series for the K inodes with most writes (0: none).
    pub per_inode_top: usize,
}

const NS: f64 = 1e-9;

/// Log2 buckets in seconds, `(upper bound, count)`, per bucket.
fn buckets(h: &Histogram) -> Vec<(f64, u64)> {
    // Every bound is emitted (empty ones too) so series stay stable.
    h.counts()
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            (
                hist::upper_bound(k).map_or(f64::INFINITY, |ub| ub as f64 * NS),
                n,
            )
        })
        .collect()
}

fn counter<L: EncodeLabelSet + std::fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(L, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, value) in series {
        metric
            .encode_family(labels)?
            .encode_counter::<L, u64, f64>(value, None)?;
    }
    Ok(())
}

/// A label value from text a user may have chosen (a mount path, a file
/// name): escaped as the tables escape it. prometheus-client escapes only
/// `\\`, `"` and newline, and a scrape read on a terminal (`curl`) would
/// run a raw escape sequence. Names without such characters are unchanged.
pub(crate) fn label(s: &str) -> String {
    escape::text(s).into_owned()
}

fn mount_of(mount: &Option<String>, dev: &Dev) -> String {
    mount.as_deref().map_or_else(|| format!("dev:{dev}"), label)
}

fn per_mode(c: &Counters, mode: LockMode) -> (u64, u64) {
    (c.acquired(mode), c.contended[mode])
}

impl Collector for SnapshotMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.snapshot;
        let info = Info::new(BuildLabels {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel: label(&s.source.kernel),
            probe_mode: label(&s.source.probe_mode),
        });
        info.encode(encoder.encode_descriptor(
            "fuselock_build",
            "fuselock version, observed kernel release and probe mode",
            None,
            info.metric_type(),
        )?)?;
        // Only with --cgroup/--pod: every count below is of those tasks.
        if let Some(only) = &s.source.only_cgroup {
            let only = Info::new(OnlyLabels {
                cgroup: label(only),
            });
            only.encode(encoder.encode_descriptor(
                "fuselock_only_cgroup",
                "the cgroup whose tasks alone are counted (--cgroup, --pod)",
                None,
                only.metric_type(),
            )?)?;
        }

        let path_labels = |d: &crate::model::snapshot::DeviceTotals| PathLabels {
            mount: mount_of(&d.mount, &d.dev),
            path: d.path.name().to_owned(),
        };
        let devs = &s.devices;
        let per_device = |value: fn(&Counters) -> u64| -> Vec<(PathLabels, u64)> {
            devs.iter()
                .map(|d| (path_labels(d), value(&d.counters)))
                .collect()
        };
        for (name, help, unit, value) in [
            (
                "fuselock_writes",
                "FUSE writes seen, by mount and path (passthrough or direct_io)",
                None,
                (|c| c.writes) as fn(&Counters) -> u64,
            ),
            (
                "fuselock_written",
                "Bytes written by FUSE writes",
                Some(&Unit::Bytes),
                |c| c.bytes,
            ),
            (
                "fuselock_write_errors",
                "FUSE writes that returned an error",
                None,
                |c| c.errors,
            ),
        ] {
            counter(&mut encoder, name, help, unit, &per_device(value))?;
        }
        let mut by_reason = Vec::new();
        let mut contended = Vec::new();
        for d in devs {
            for mode in LockMode::ALL {
                for reason in Reason::ALL {
                    by_reason.push((
                        ReasonLabels {
                            mount: mount_of(&d.mount, &d.dev),
                            path: d.path.name().to_owned(),
                            mode: mode.name().to_owned(),
                            reason: reason.name().to_owned(),
                        },
                        d.counters.acquisitions[mode][reason],
                    ));
                }
                contended.push((
                    ModeLabels {
                        mount: mount_of(&d.mount, &d.dev),
                        path: d.path.name().to_owned(),
                        mode: mode.name().to_owned(),
                    },
                    per_mode(&d.counters, mode).1,
                ));
            }
        }
        counter(
            &mut encoder,
            "fuselock_lock_acquisitions",
            "FUSE inode lock acquisitions by mode and reason; a write counts once under each reason it has",
            None,
            &by_reason,
        )?;
        counter(
            &mut encoder,
            "fuselock_lock_contended",
            "FUSE inode lock acquisitions that had to wait",
            None,
            &contended,
        )?;
        counter(
            &mut encoder,
            "fuselock_shared_extended",
            "Writes that held the lock shared and still grew the file (the series' EOF race)",
            None,
            &per_device(|c| c.shared_extended),
        )?;

        // Histograms by path (and mode), from the never-evicted path totals.
        for (name, help, pick) in [
            (
                "fuselock_lock_wait",
                "Time writers waited for the FUSE inode lock",
                0,
            ),
            (
                "fuselock_lock_hold",
                "Time the FUSE inode lock was held by a write",
                1,
            ),
        ] {
            let mut metric = encoder.encode_descriptor(
                name,
                help,
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for path in WritePath::ALL {
                let t = s.totals.of(path);
                for mode in LockMode::ALL {
                    let (h, sum_ns) = if pick == 0 {
                        (
                            &t.histograms.wait_hist[mode],
                            t.counters.wait_ns_total[mode],
                        )
                    } else {
                        (
                            &t.histograms.hold_hist[mode],
                            t.counters.hold_ns_total[mode],
                        )
                    };
                    let b = buckets(h);
                    let count = b.iter().map(|(_, n)| n).sum();
                    let labels = HistLabels {
                        path: path.name().to_owned(),
                        mode: mode.name().to_owned(),
                    };
                    metric
                        .encode_family(&labels)?
                        .encode_histogram::<HistLabels>(sum_ns as f64 * NS, count, &b, None)?;
                }
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "fuselock_write_latency",
                "Latency of whole FUSE write calls",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for path in WritePath::ALL {
                let t = s.totals.of(path);
                let b = buckets(&t.histograms.latency_hist);
                let count = b.iter().map(|(_, n)| n).sum();
                let labels = PathLabels {
                    mount: String::new(),
                    path: path.name().to_owned(),
                };
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<PathLabels>(
                        t.counters.latency_ns_total as f64 * NS,
                        count,
                        &b,
                        None,
                    )?;
            }
        }

        let h = &s.health;
        let mut gauge = encoder.encode_descriptor(
            "fuselock_map_live_inodes",
            "Per-inode entries in the LRU map now",
            None,
            MetricType::Gauge,
        )?;
        gauge.encode_gauge(&(h.live_inodes as i64))?;
        counter(
            &mut encoder,
            "fuselock_map_evictions",
            "Per-inode entries evicted from the LRU map (their writes still count in the totals)",
            None,
            &[(
                KindLabels {
                    kind: "inode".into(),
                },
                h.evictions,
            )],
        )?;
        counter(
            &mut encoder,
            "fuselock_probe_errors",
            "Events that could make counts incomplete, by kind",
            None,
            &h.losses().map(|(k, v)| (KindLabels { kind: k.into() }, v)),
        )?;

        let verdict = decide(&Evidence::from_totals(s)).verdict;
        let mut gauge = encoder.encode_descriptor(
            "fuselock_patch_verdict",
            "1 for the current parallel-direct-writes verdict (active, not_active, inconclusive), 0 for the others",
            None,
            MetricType::Gauge,
        )?;
        for (v, name) in [
            (Verdict::Active, "active"),
            (Verdict::NotActive, "not_active"),
            (Verdict::Inconclusive, "inconclusive"),
        ] {
            gauge
                .encode_family(&VerdictLabels {
                    verdict: name.into(),
                })?
                .encode_gauge(&i64::from(v == verdict))?;
        }

        if self.per_inode_top > 0 {
            let mut top: Vec<&crate::model::snapshot::Entry> =
                s.entries.iter().map(|e| &**e).collect();
            top.sort_by_key(|e| std::cmp::Reverse(e.counters.writes));
            top.truncate(self.per_inode_top);
            counter(
                &mut encoder,
                "fuselock_inode_writes",
                "FUSE writes of the busiest inodes (--per-inode-top)",
                None,
                &top.iter()
                    .map(|e| {
                        (
                            InodeLabels {
                                mount: mount_of(&e.mount, &e.dev),
                                path: e.path.name().to_owned(),
                                dev: e.dev.to_string(),
                                ino: e.ino.to_string(),
                                name: e.name.as_deref().map(label).unwrap_or_default(),
                            },
                            e.counters.writes,
                        )
                    })
                    .collect::<Vec<_>>(),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::snapshot::{DeviceTotals, Entry},
        wire::metrics::Exposition,
    };

    /// A mount at a directory named with a terminal escape, a bell and a
    /// right-to-left override, and a file named with a line separator:
    /// every label value shows them escaped, in both formats.
    #[test]
    fn label_values_cannot_reach_a_terminal_raw() {
        let mount = "/mnt/m\u{1b}]0;pwned\u{7}x\u{202e}";
        let mut snap = Snapshot::default();
        snap.source.kernel = "6.12.117".into();
        snap.devices = vec![DeviceTotals {
            dev: Dev(45),
            mount: Some(mount.into()),
            path: WritePath::Passthrough,
            counters: Counters::default(),
        }];
        snap.entries = vec![std::sync::Arc::new(Entry {
            dev: Dev(45),
            ino: 7,
            name: Some("f\u{2028}FORGED\u{061c}".into()),
            mount: Some(mount.into()),
            path: WritePath::Passthrough,
            counters: Counters::default(),
            histograms: Default::default(),
            writers: vec![],
            open: None,
        })]
        .into();
        for exposition in Exposition::ALL {
            let text = exposition
                .render(vec![Box::new(SnapshotMetrics {
                    snapshot: snap.clone(),
                    per_inode_top: 5,
                })])
                .expect("render");
            for c in ['\u{1b}', '\u{7}', '\u{202e}', '\u{2028}', '\u{061c}'] {
                assert!(!text.contains(c), "{c:?} raw in:\n{text}");
            }
            // Escaped as the table escapes it; prometheus-client then
            // doubles each backslash, as its format asks.
            let shown = r#"mount="/mnt/m\\x1b]0;pwned\\x07x\\u{202e}""#;
            let lines = text.lines().filter(|l| l.contains(shown)).count();
            assert!(lines >= 18, "{lines} lines with {shown} in:\n{text}");
            assert!(
                text.contains(r#"name="f\\u{2028}FORGED\\u{61c}""#),
                "{text}"
            );
        }
    }

    /// Names without anything to escape are served as they are.
    #[test]
    fn plain_label_values_are_unchanged() {
        assert_eq!(label("/mnt/fuse"), "/mnt/fuse");
        assert_eq!(
            label("/tmp/fuselock-demo-kbfiJL/mnt"),
            "/tmp/fuselock-demo-kbfiJL/mnt"
        );
        assert_eq!(
            mount_of(&None, &Dev(45)),
            format!("dev:{}", Dev(45)),
            "a mount unknown is its device"
        );
    }
}

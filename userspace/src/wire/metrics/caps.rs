//! The exporter's caps on label values, as series: how many mounts past
//! `--max-mounts` are summed into `mount="other"`, and the per-pod counters
//! of `--per-pod-top`.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

/// `fuselock_export_folded_mounts`, served only once a mount was folded:
/// a host within the cap scrapes exactly as before.
#[derive(Debug)]
pub struct FoldedMounts(pub usize);

impl Collector for FoldedMounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.0 == 0 {
            return Ok(());
        }
        let gauge = ConstGauge::new(i64::try_from(self.0).unwrap_or(i64::MAX));
        gauge.encode(encoder.encode_descriptor(
            "fuselock_export_folded_mounts",
            "Mounts past --max-mounts, whose series are summed into mount=\"other\"",
            None,
            MetricType::Gauge,
        )?)
    }
}

/// The pod label value the pods past the cap are summed under: pod names
/// are DNS subdomains, with no `=` in them.
pub const OTHER_PODS: &str = "=other";

/// What one scrape serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodSeries {
    /// Each pod with a series of its own, then `other` if any pod was
    /// summed into it.
    pub rows: Vec<(PodLabels, u64)>,
    /// Pods writing now past the cap.
    pub folded: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodLabels {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
}

impl Collector for PodSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "fuselock_pod_writes",
            "FUSE writes by Kubernetes pod (--per-pod-top), from the writers' cgroups; pods past the cap are summed under pod=\"=other\"",
            None,
            MetricType::Counter,
        )?;
        for (labels, count) in &self.rows {
            ConstCounter::new(*count).encode(family.encode_family(labels)?)?;
        }
        if self.folded > 0 {
            let gauge = ConstGauge::new(i64::try_from(self.folded).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(
                "fuselock_export_folded_pods",
                "Pods writing now past --per-pod-top, whose writes are summed into pod=\"=other\"",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

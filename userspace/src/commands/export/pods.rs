//! `--per-pod-top K`: writes per Kubernetes pod as counters, for at most K
//! pods.
//!
//! The snapshot sums each pod's writes over the files the maps hold now
//! ([`Snapshot::workloads`]); a file forgotten to make room takes its
//! writers' counts with it, so those sums can go down. Here they become
//! counters: each scrape adds what a pod's sum grew by since the last one.
//! Writes a pod made to a file forgotten between two scrapes are lost to
//! its counter (the evictions metric counts such files); nothing is ever
//! counted twice, and a counter never goes back.

use std::collections::{BTreeMap, HashMap};

use crate::{
    model::{
        snapshot::Snapshot,
        workload::{PodName, Workload},
    },
    wire::metrics::{
        caps::{PodLabels, PodSeries, OTHER_PODS},
        label,
    },
};

/// The counters, and which pods have their own series: the first `max`
/// seen (the busiest first, among those seen in one scrape). A pod keeps
/// its series while it has writes in the maps, so that no series moves to
/// `other` and back; once it has none (the pod is gone, or its files were
/// forgotten), a new pod may take its place, so that pods that come and
/// go do not leave every later one in `other`.
#[derive(Debug)]
pub struct PodCounters {
    max: usize,
    /// Each pod's sum at the last scrape, by UID.
    last: HashMap<String, u64>,
    /// The counters of the pods with series of their own, by UID, with the
    /// latest name known (`None` until the node's log directory names it).
    named: BTreeMap<String, (Option<PodName>, u64)>,
    /// Every other pod's writes.
    other: u64,
}

impl PodCounters {
    pub fn new(max: usize) -> PodCounters {
        PodCounters {
            max,
            last: HashMap::new(),
            named: BTreeMap::new(),
            other: 0,
        }
    }

    /// Adds what each pod's sum in `snapshot` grew by, and the series to
    /// serve.
    pub fn apply(&mut self, snapshot: &Snapshot) -> PodSeries {
        let mut now: HashMap<String, u64> = HashMap::new();
        let mut names: HashMap<String, PodName> = HashMap::new();
        for w in snapshot.workloads.iter().flat_map(|w| w.iter()) {
            let Workload::Pod(pod) = &w.workload else {
                continue;
            };
            *now.entry(pod.uid.clone()).or_default() += w.writes;
            if let Some(name) = &pod.name {
                names.insert(pod.uid.clone(), name.clone());
            }
        }
        // Pods with no writes left in the maps give their series up, but
        // only when a new pod needs the room.
        let mut vacant: Vec<String> = self
            .named
            .keys()
            .filter(|uid| !now.contains_key(*uid))
            .cloned()
            .collect();
        // Among pods first seen in the same scrape, the busiest get series.
        let mut order: Vec<(&String, &u64)> = now.iter().collect();
        order.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let mut folded = 0;
        for (uid, sum) in order {
            let grew = sum.saturating_sub(self.last.get(uid).copied().unwrap_or(0));
            if let Some((name, count)) = self.named.get_mut(uid) {
                *count += grew;
                if let Some(n) = names.remove(uid) {
                    *name = Some(n);
                }
                continue;
            }
            if self.named.len() >= self.max {
                match vacant.pop() {
                    Some(gone) => {
                        self.named.remove(&gone);
                    }
                    None => {
                        self.other += grew;
                        folded += 1;
                        continue;
                    }
                }
            }
            self.named.insert(uid.clone(), (names.remove(uid), grew));
        }
        self.last = now;
        let mut rows: Vec<(PodLabels, u64)> = self
            .named
            .iter()
            .map(|(uid, (name, count))| {
                (
                    PodLabels {
                        namespace: name
                            .as_ref()
                            .map_or_else(String::new, |n| label(&n.namespace)),
                        pod: name.as_ref().map_or_else(String::new, |n| label(&n.name)),
                        uid: uid.clone(),
                    },
                    *count,
                )
            })
            .collect();
        if self.other > 0 || folded > 0 {
            rows.push((
                PodLabels {
                    namespace: String::new(),
                    pod: OTHER_PODS.to_owned(),
                    uid: String::new(),
                },
                self.other,
            ));
        }
        PodSeries { rows, folded }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{
        snapshot::WorkloadWrites,
        workload::{Pod, Qos},
    };

    fn pod(uid: &str, name: Option<&str>, writes: u64) -> WorkloadWrites {
        WorkloadWrites {
            workload: Workload::Pod(Pod {
                uid: uid.into(),
                qos: Qos::Burstable,
                container: None,
                name: name.map(|n| PodName {
                    namespace: "prod".into(),
                    name: n.into(),
                }),
            }),
            writes,
        }
    }

    fn snap(w: Vec<WorkloadWrites>) -> Snapshot {
        Snapshot {
            workloads: Some(Arc::from(w)),
            ..Snapshot::default()
        }
    }

    /// Two pods writing, one named.
    pub(in crate::commands::export) fn two_pods() -> Snapshot {
        snap(vec![pod("a", Some("db-0"), 3), pod("b", None, 4)])
    }

    fn count(s: &PodSeries, pod: &str) -> Option<u64> {
        s.rows.iter().find(|(l, _)| l.pod == pod).map(|(_, c)| *c)
    }

    #[test]
    fn sums_become_counters_that_never_go_back() {
        let mut c = PodCounters::new(8);
        let s = c.apply(&snap(vec![pod("a", Some("db-0"), 10)]));
        assert_eq!(count(&s, "db-0"), Some(10));
        let s = c.apply(&snap(vec![pod("a", Some("db-0"), 25)]));
        assert_eq!(count(&s, "db-0"), Some(25));
        // A file forgotten: the sum drops by 20; 5 new writes since.
        let s = c.apply(&snap(vec![pod("a", Some("db-0"), 10)]));
        assert_eq!(count(&s, "db-0"), Some(25), "never back, no double count");
        let s = c.apply(&snap(vec![pod("a", Some("db-0"), 16)]));
        assert_eq!(count(&s, "db-0"), Some(31));
        // Gone from the maps altogether, then back.
        c.apply(&snap(vec![]));
        let s = c.apply(&snap(vec![pod("a", Some("db-0"), 4)]));
        assert_eq!(count(&s, "db-0"), Some(35));
    }

    #[test]
    fn pods_past_the_cap_are_summed_and_counted() {
        let mut c = PodCounters::new(1);
        let s = c.apply(&snap(vec![
            pod("a", None, 3),
            pod("b", None, 4),
            pod("c", Some("db-0"), 5),
        ]));
        assert_eq!(count(&s, "db-0"), Some(5), "the busiest first");
        assert_eq!(count(&s, OTHER_PODS), Some(7));
        assert_eq!(s.folded, 2);
        // A name that appears later goes on the same series.
        let mut c = PodCounters::new(1);
        c.apply(&snap(vec![pod("a", None, 3)]));
        let s = c.apply(&snap(vec![pod("a", Some("db-0"), 4)]));
        assert_eq!(s.rows.len(), 1);
        assert_eq!(count(&s, "db-0"), Some(4));
        // A pod with nothing left in the maps gives its series up to a new
        // one; the other sum stays.
        let mut c = PodCounters::new(1);
        c.apply(&snap(vec![pod("a", Some("db-0"), 3), pod("b", None, 2)]));
        let s = c.apply(&snap(vec![pod("c", Some("web-1"), 6)]));
        assert_eq!(count(&s, "web-1"), Some(6));
        assert_eq!(count(&s, "db-0"), None);
        assert_eq!(count(&s, OTHER_PODS), Some(2));
        assert_eq!(s.folded, 0);
        // Nothing served without pods.
        assert_eq!(
            PodCounters::new(4).apply(&snap(vec![])),
            PodSeries::default()
        );
    }
}

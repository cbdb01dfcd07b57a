//! What `top` shows, computed from snapshots: pure functions with
//! zero-period guards, tested without a terminal.

use std::{collections::HashMap, sync::Arc};

use probes_common::{LockMode, Reason};

use crate::model::{
    counts::Histogram,
    snapshot::{Counters, Entry, FileId, Snapshot},
};

/// Numbers over the refresh interval (per second) or since start/reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Rates,
    Totals,
}

/// One table row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub file: FileId,
    pub name: String,
    pub mount: String,
    /// Per second in rates mode, counts in totals mode.
    pub writes: f64,
    pub bytes: f64,
    pub shared: f64,
    pub exclusive: f64,
    pub exclusive_by_reason: [f64; Reason::COUNT - 1],
    pub contended: f64,
    pub wait_avg_ns: Option<f64>,
    pub wait_p99_ns: Option<u64>,
    pub wait_max_ns: u64,
    /// `comm[pid]` of the busiest writer.
    pub top_writer: Option<String>,
    /// Lower-case text the filter matches against.
    pub haystack: String,
}

impl Row {
    pub fn shared_pct(&self) -> Option<f64> {
        pct(self.shared, self.shared + self.exclusive)
    }

    pub fn contended_pct(&self) -> Option<f64> {
        pct(self.contended, self.shared + self.exclusive)
    }
}

fn pct(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0).then(|| 100.0 * part / whole)
}

/// `cur - base` of every counter the table uses.
fn delta(cur: &Counters, base: Option<&Counters>) -> Counters {
    let Some(b) = base else { return cur.clone() };
    let sub = |a: u64, b: u64| a.saturating_sub(b);
    let mut d = cur.clone();
    d.writes = sub(cur.writes, b.writes);
    d.bytes = sub(cur.bytes, b.bytes);
    d.shared = sub(cur.shared, b.shared);
    d.exclusive = sub(cur.exclusive, b.exclusive);
    d.contended = cur.contended.minus(&b.contended);
    d.wait_ns_total = cur.wait_ns_total.minus(&b.wait_ns_total);
    d.acquisitions = cur
        .acquisitions
        .zip_with(&b.acquisitions, |c, b| c.minus(b));
    d
}

/// `cur - base` of a histogram.
fn hist_delta(cur: &Histogram, base: Option<&Histogram>) -> Histogram {
    match base {
        Some(base) => cur.minus(base),
        None => cur.clone(),
    }
}

/// The period rates are over: the refresh interval in rates mode, 1 in
/// totals mode. Zero or negative periods (a replay restarting, clock
/// oddities) give no rates rather than infinities (see [`row`]).
pub fn period(cur: &Snapshot, base: Option<&Snapshot>, mode: Mode) -> f64 {
    match (mode, base) {
        (Mode::Rates, Some(b)) => cur.elapsed_secs - b.elapsed_secs,
        (Mode::Rates, None) => cur.elapsed_secs,
        (Mode::Totals, _) => 1.0,
    }
}

/// `base`'s entries by key. Indexed once: a search per entry would be
/// quadratic, 50 million key comparisons a refresh at 10,000 inodes.
pub fn index(base: Option<&Snapshot>) -> HashMap<FileId, &Arc<Entry>> {
    base.map(|b| b.entries.iter().map(|p| (p.id(), p)).collect())
        .unwrap_or_default()
}

/// The rows for `cur`, relative to `base` (the previous snapshot in rates
/// mode, the reset point in totals mode). `App` does the same through its
/// row cache.
#[cfg(test)]
pub fn rows(cur: &Snapshot, base: Option<&Snapshot>, mode: Mode) -> Vec<Row> {
    let dt = period(cur, base, mode);
    let previous = index(base);
    cur.entries
        .iter()
        .map(|e| {
            let prev = previous.get(&e.id());
            row(e, prev.map(|p| &***p), dt)
        })
        .collect()
}

/// One entry's row, relative to `prev` (its base), over `dt` seconds.
pub fn row(e: &Entry, prev: Option<&Entry>, dt: f64) -> Row {
    let per = |n: u64| if dt > 0.0 { n as f64 / dt } else { 0.0 };
    let d = delta(&e.counters, prev.map(|p| &p.counters));
    let waits = d.contended.sum();
    let wait_ns = d.wait_ns_total.sum();
    let wait_hist = LockMode::ALL
        .map(|m| {
            hist_delta(
                &e.histograms.wait_hist[m],
                prev.map(|p| &p.histograms.wait_hist[m]),
            )
        })
        .iter()
        .fold(Histogram::default(), |sum, h| sum.plus(h));
    let name = e.name.clone().unwrap_or_else(|| format!("ino {}", e.ino));
    let mount = e.mount.clone().unwrap_or_else(|| format!("dev {}", e.dev));
    // The pod (or container, or unit) where one is known: on a node, the
    // question is which workload writes.
    let top_writer = e.writers.first().map(|w| match w.cgroup.short() {
        Some(workload) => format!("{workload} {}[{}]", w.comm, w.pid),
        None => format!("{}[{}]", w.comm, w.pid),
    });
    let haystack = format!(
        "{name} {mount} {} {} {}",
        e.writers
            .iter()
            .map(|w| w.comm.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        e.writers
            .iter()
            .map(|w| w.pid.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        // `/` finds a pod's, a container's or a unit's files too.
        e.writers
            .iter()
            .filter_map(|w| w.cgroup.short())
            .collect::<Vec<_>>()
            .join(" ")
    )
    .to_lowercase();
    Row {
        file: e.id(),
        writes: per(d.writes),
        bytes: per(d.bytes),
        shared: per(d.shared),
        exclusive: per(d.exclusive),
        exclusive_by_reason: Reason::EXCLUSIVE.map(|r| per(d.acquisitions[LockMode::Exclusive][r])),
        contended: per(waits),
        wait_avg_ns: (waits > 0).then(|| wait_ns as f64 / waits as f64),
        // A bucket bound can exceed the largest wait seen: cap it.
        wait_p99_ns: wait_hist.p99_le_ns().map(|p| {
            let max = e
                .counters
                .wait_ns_max
                .shared
                .max(e.counters.wait_ns_max.exclusive);
            if max > 0 {
                p.min(max)
            } else {
                p
            }
        }),
        wait_max_ns: e
            .counters
            .wait_ns_max
            .shared
            .max(e.counters.wait_ns_max.exclusive),
        top_writer,
        haystack,
        name,
        mount,
    }
}

/// Header numbers: all paths together.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    pub writes: f64,
    pub shared_pct: Option<f64>,
    pub contended: f64,
}

pub fn totals(cur: &Snapshot, base: Option<&Snapshot>, mode: Mode) -> Totals {
    let sum = |s: &Snapshot| -> (u64, u64, u64, u64) {
        let (p, d) = (&s.totals.passthrough.counters, &s.totals.direct_io.counters);
        (
            p.writes + d.writes,
            p.shared + d.shared,
            p.exclusive + d.exclusive,
            p.contended.shared + p.contended.exclusive + d.contended.shared + d.contended.exclusive,
        )
    };
    let c = sum(cur);
    let b = base.map(sum).unwrap_or_default();
    let dt = match mode {
        Mode::Rates => cur.elapsed_secs - base.map_or(0.0, |b| b.elapsed_secs),
        Mode::Totals => 1.0,
    };
    let per = |a: u64, b: u64| {
        if dt > 0.0 {
            a.saturating_sub(b) as f64 / dt
        } else {
            0.0
        }
    };
    let shared = c.1.saturating_sub(b.1) as f64;
    let all = shared + c.2.saturating_sub(b.2) as f64;
    Totals {
        writes: per(c.0, b.0),
        shared_pct: pct(shared, all),
        contended: per(c.3, b.3),
    }
}

/// Sample entries for tests of the model, the state and the drawing.
#[cfg(test)]
pub mod tests_support {
    use probes_common::{LockMode, Reason, Reasons, WriteStats};

    use crate::model::snapshot::{Counters, Entry, Writer};

    pub fn entry(name: &str, writes: u64, excl_append: u64, contended: u64) -> Entry {
        let mut s = WriteStats {
            bytes: writes * 4096,
            ..Default::default()
        };
        // Every write exclusive without the flag, `excl_append` of them appends.
        let no_flag = Reasons::NONE.with(Reason::NoParallelFlag);
        s.add_acquisitions(LockMode::Exclusive, no_flag, writes - excl_append);
        s.add_acquisitions(
            LockMode::Exclusive,
            no_flag.with(Reason::Append),
            excl_append,
        );
        s.contended[LockMode::Exclusive as usize] = contended;
        s.wait_ns_total[LockMode::Exclusive as usize] = contended * 1000;
        Entry {
            dev: probes_common::Dev(45),
            ino: name.len() as u64,
            name: Some(name.into()),
            mount: Some("/mnt/fuse".into()),
            path: probes_common::WritePath::Passthrough,
            counters: Counters::from(&s),
            histograms: Default::default(),
            writers: vec![Writer {
                pid: 4242,
                comm: "fio".into(),
                writes,
                cgroup: Default::default(),
            }],
            open: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{tests_support::entry, *};

    fn snap(elapsed: f64, entries: Vec<Entry>) -> Snapshot {
        Snapshot {
            elapsed_secs: elapsed,
            entries: entries.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_rows_wait_p99_is_over_the_waits_since_its_base() {
        use probes_common::hist;
        let waits = |n: u64, ns: u64| {
            let mut counts = [0; hist::HIST_BUCKETS];
            counts[hist::bucket(ns)] = n;
            Histogram::from_counts(&counts)
        };
        let mut base = entry("f", 100, 0, 0);
        base.histograms.wait_hist.exclusive = waits(1000, 5_000_000);
        let mut now = base.clone();
        // Since the base: 100 more waits, all short.
        now.histograms.wait_hist.exclusive = waits(1000, 5_000_000).plus(&waits(100, 3_000));
        now.counters.contended.exclusive = 100;
        now.counters.wait_ns_max.exclusive = 5_000_000;
        let since = row(&now, Some(&base), 1.0);
        assert_eq!(since.wait_p99_ns, Some(4095), "only the new, short waits");
        let whole = row(&now, None, 1.0);
        // All of them: the bucket's bound, 8.4 ms, capped at the longest wait.
        assert_eq!(whole.wait_p99_ns, Some(5_000_000));
        assert_eq!(
            hist_delta(&now.histograms.wait_hist.exclusive, None),
            now.histograms.wait_hist.exclusive
        );
    }

    #[test]
    fn rates_are_deltas_over_the_interval() {
        let a = snap(1.0, vec![entry("f", 100, 10, 4)]);
        let b = snap(3.0, vec![entry("f", 500, 30, 8)]);
        let r = &rows(&b, Some(&a), Mode::Rates)[0];
        assert_eq!(r.writes, 200.0);
        assert_eq!(r.exclusive_by_reason, [200.0, 0.0, 10.0, 0.0, 0.0, 0.0]);
        assert_eq!(r.contended, 2.0);
        assert_eq!(r.wait_avg_ns, Some(1000.0));
        assert_eq!(r.shared_pct(), Some(0.0));
        assert_eq!(r.contended_pct(), Some(1.0));
    }

    #[test]
    fn zero_period_gives_no_infinities() {
        let a = snap(2.0, vec![entry("f", 100, 0, 0)]);
        let r = &rows(&a, Some(&a), Mode::Rates)[0];
        assert_eq!(r.writes, 0.0);
        assert!(r.shared_pct().is_none());
        assert_eq!(totals(&a, Some(&a), Mode::Rates).writes, 0.0);
    }

    #[test]
    fn totals_mode_counts_since_reset() {
        let reset = snap(1.0, vec![entry("f", 100, 0, 0)]);
        let now = snap(9.0, vec![entry("f", 150, 0, 0), entry("new", 7, 0, 0)]);
        let r = rows(&now, Some(&reset), Mode::Totals);
        assert_eq!(r[0].writes, 50.0);
        assert_eq!(
            r[1].writes, 7.0,
            "entries born after the reset count from zero"
        );
    }
}

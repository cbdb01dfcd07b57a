//! Does the parallel-direct-writes patch take effect? A pure function of the
//! evidence in a snapshot, shared by `verify` and `top`'s badge.

use std::fmt::Write as _;

use probes_common::{LockMode, OpenStats, Reason};

use crate::model::snapshot::{Counters, Snapshot};

/// The answer, with its exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Eligible passthrough writes took the shared lock.
    Active,
    /// Eligible writes took the exclusive lock, or the kernel stripped the flag.
    NotActive,
    /// No eligible passthrough write was seen.
    Inconclusive,
}

impl Verdict {
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Active => 0,
            Verdict::NotActive => 1,
            Verdict::Inconclusive => 2,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Active => "ACTIVE",
            Verdict::NotActive => "NOT ACTIVE",
            Verdict::Inconclusive => "INCONCLUSIVE",
        }
    }
}

/// Why, in a word a script can match on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    SharedLockTaken,
    ExclusiveLockTaken,
    FlagStripped,
    NoPassthroughWrites,
    FlagNotRequested,
    NoEligibleWrites,
    /// The kernel skipped some of fuselock's probe runs: whatever the
    /// counts say, they are incomplete.
    CountsIncomplete,
}

/// Exit status when shared-lock writes grew the file (the canary), whatever
/// the verdict.
pub const EXIT_SHARED_EXTENDED: u8 = 5;

/// What the verdict is decided on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    pub passthrough: Counters,
    pub opens: OpenStats,
    /// Probe runs the kernel skipped (`health.recursion_misses`).
    pub recursion_misses: u64,
    /// Whether lock waits were measured (`--contention`).
    pub waits_measured: bool,
}

impl Evidence {
    /// Everything the snapshot saw.
    pub fn from_totals(snap: &Snapshot) -> Evidence {
        Evidence {
            passthrough: snap.totals.passthrough.counters.clone(),
            opens: snap.opens,
            recursion_misses: snap.health.recursion_misses,
            waits_measured: snap.source.contention,
        }
    }
}

/// What the series would give back: how much of the time of the direct
/// overwrites that took the lock exclusive went to waiting for it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeriesGain {
    /// Direct overwrites inside EOF that took the lock exclusive; the series
    /// takes it shared for them once the server asks for parallel writes.
    pub overwrites_exclusive: u64,
    /// Share (0 to 1) of those writes' time spent waiting for the lock;
    /// `None` when waits were not measured.
    pub wait_share: Option<f64>,
}

impl SeriesGain {
    /// Their throughput, relative to now, had they not waited at all: an
    /// upper bound, since under the series they still wait for the writes
    /// that keep the lock exclusive (appends, past EOF, buffered).
    pub fn speedup_bound(&self) -> Option<f64> {
        self.wait_share.map(|f| 1.0 / (1.0 - f).max(0.01))
    }

    /// One line for people.
    pub fn sentence(&self) -> String {
        let writes = plural(
            self.overwrites_exclusive,
            "direct overwrite",
            "direct overwrites",
        );
        match (self.wait_share, self.speedup_bound()) {
            (Some(share), Some(bound)) => format!(
                "{writes} took the exclusive lock and spent {} of their time waiting for it: \
                 taken shared, up to {bound:.2}x their throughput",
                percent(share)
            ),
            _ => format!(
                "{writes} took the exclusive lock; run with --contention to measure how long they waited"
            ),
        }
    }
}

/// `share` (0 to 1) as a percentage, with a decimal where it is small.
fn percent(share: f64) -> String {
    let pct = share * 100.0;
    if pct < 10.0 {
        format!("{pct:.1} %")
    } else {
        format!("{pct:.0} %")
    }
}

/// The series' gain for the writes counted in `c`; `None` when no direct
/// overwrite took the lock exclusive (the series is active, or there were
/// none).
pub fn series_gain(c: &Counters, waits_measured: bool) -> Option<SeriesGain> {
    if c.overwrites_exclusive == 0 {
        return None;
    }
    // No latency with writes counted: a recording from before it was.
    let measured = waits_measured && c.overwrites_exclusive_latency_ns > 0;
    Some(SeriesGain {
        overwrites_exclusive: c.overwrites_exclusive,
        wait_share: measured.then(|| {
            (c.overwrites_exclusive_wait_ns as f64 / c.overwrites_exclusive_latency_ns as f64)
                .min(1.0)
        }),
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub why: Why,
    /// One sentence for people.
    pub message: String,
    /// What to do next, when there is something to do.
    pub hint: Option<String>,
    /// Writes that held the shared lock and still grew the file.
    pub shared_extended: u64,
    /// Writes eligible at entry that reached past EOF once the lock was
    /// held and re-took it exclusive (`past_eof_at_lock`): the kernel
    /// re-checks EOF under the shared lock, as the series' v3 does.
    pub eof_rechecks: u64,
    /// With the series active: eligible writes that ran exclusive though
    /// still inside EOF when fuselock read it under the lock. EOF moved
    /// between the kernel's check and fuselock's read (a racing truncate
    /// or extension), so fuselock cannot name the kernel's reason.
    pub unseen_upgrades: u64,
}

impl Decision {
    /// The line that says the kernel re-checked EOF under the lock, if it
    /// was seen doing so.
    pub fn eof_recheck_sentence(&self) -> Option<String> {
        (self.verdict == Verdict::Active && self.eof_rechecks > 0).then(|| {
            format!(
                "EOF re-check seen: {} reached past EOF once the lock was held and re-took it \
                 exclusive, as the series' v3 does (v2 runs them shared and lets them grow the \
                 file)",
                plural(self.eof_rechecks, "eligible write", "eligible writes")
            )
        })
    }

    /// The line that owns up to exclusive acquisitions fuselock saw no
    /// reason for, while the series was active.
    pub fn unseen_upgrade_sentence(&self) -> Option<String> {
        (self.unseen_upgrades > 0).then(|| {
            format!(
                "{} ran exclusive though inside EOF when fuselock read it under the lock: EOF \
                 moved between the kernel's check and fuselock's (a racing truncate or \
                 extension), which fuselock cannot see",
                plural(self.unseen_upgrades, "eligible write", "eligible writes")
            )
        })
    }

    /// Whether "what the series would buy" means anything: not once the
    /// series is seen at work.
    pub fn series_missing(&self) -> bool {
        self.verdict != Verdict::Active
    }

    pub fn exit_code(&self) -> u8 {
        if self.shared_extended > 0 {
            EXIT_SHARED_EXTENDED
        } else {
            self.verdict.exit_code()
        }
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The verdict; INCONCLUSIVE, saying what the counts alone would say,
/// when the kernel skipped probe runs.
pub fn decide(e: &Evidence) -> Decision {
    let on_counts = decide_on_counts(e);
    if e.recursion_misses == 0 {
        return on_counts;
    }
    Decision {
        verdict: Verdict::Inconclusive,
        why: Why::CountsIncomplete,
        message: format!(
            "counts incomplete: the kernel skipped fuselock's probes {} (recursion_misses); \
             the counts alone say {}: {}",
            plural(e.recursion_misses, "time", "times"),
            on_counts.verdict.label(),
            on_counts.message
        ),
        hint: Some(
            "a preemptible kernel can skip fentry programs: run again with --probe-mode kprobe \
             (the default, auto, picks it where `fuselock doctor` finds such a kernel)"
                .into(),
        ),
        shared_extended: on_counts.shared_extended,
        eof_rechecks: on_counts.eof_rechecks,
        unseen_upgrades: on_counts.unseen_upgrades,
    }
}

fn decide_on_counts(e: &Evidence) -> Decision {
    let p = &e.passthrough;
    let shared_eligible = p.acquisitions[LockMode::Shared][Reason::Eligible];
    let exclusive_eligible = p.acquisitions[LockMode::Exclusive][Reason::Eligible];
    let o = &e.opens;
    let stripped = o
        .passthrough_parallel_asked
        .saturating_sub(o.passthrough_parallel_kept);
    let decision = |verdict: Verdict, why, message: String, hint: Option<&str>| Decision {
        verdict,
        why,
        message,
        hint: hint.map(str::to_owned),
        shared_extended: p.shared_extended,
        eof_rechecks: p.acquisitions[LockMode::Exclusive][Reason::PastEofAtLock],
        unseen_upgrades: if verdict == Verdict::Active {
            exclusive_eligible
        } else {
            0
        },
    };

    if shared_eligible > 0 {
        let mut message = format!(
            "{} took the shared lock",
            plural(
                shared_eligible,
                "eligible direct overwrite",
                "eligible direct overwrites"
            )
        );
        if exclusive_eligible > 0 {
            let _ = write!(message, " ({exclusive_eligible} others took it exclusive)");
        }
        return decision(Verdict::Active, Why::SharedLockTaken, message, None);
    }
    if exclusive_eligible > 0 {
        return decision(
            Verdict::NotActive,
            Why::ExclusiveLockTaken,
            format!(
                "{} took the exclusive lock",
                plural(exclusive_eligible, "eligible direct overwrite", "eligible direct overwrites")
            ),
            Some("the kernel keeps FOPEN_PARALLEL_DIRECT_WRITES but fuse_passthrough_write_iter() still locks exclusively: the lock half of the series is missing"),
        );
    }
    if stripped > 0 {
        return decision(
            Verdict::NotActive,
            Why::FlagStripped,
            format!(
                "the server asked for FOPEN_PARALLEL_DIRECT_WRITES on {} and the kernel stripped it{}",
                plural(o.passthrough_parallel_asked, "passthrough open", "passthrough opens"),
                if o.passthrough_parallel_kept == 0 { String::new() } else { format!(" on {stripped}") }
            ),
            Some("this kernel's fs/fuse/iomode.c drops the flag from opens without FOPEN_DIRECT_IO: the series is not applied"),
        );
    }
    if p.writes == 0 {
        return decision(
            Verdict::Inconclusive,
            Why::NoPassthroughWrites,
            "no FUSE passthrough writes were seen".into(),
            Some("drive some: `fuselock verify --exercise FILE` with FILE on a passthrough mount, or `fuselock verify -- YOUR-WORKLOAD`"),
        );
    }
    let no_flag = p.acquisitions[LockMode::Exclusive][Reason::NoParallelFlag]
        + p.acquisitions[LockMode::Shared][Reason::NoParallelFlag];
    if no_flag == p.shared + p.exclusive && o.passthrough_parallel_asked == 0 {
        return decision(
            Verdict::Inconclusive,
            Why::FlagNotRequested,
            format!(
                "{} seen, but the server never asked for FOPEN_PARALLEL_DIRECT_WRITES",
                plural(p.writes, "passthrough write", "passthrough writes")
            ),
            Some("reply FOPEN_PARALLEL_DIRECT_WRITES with FOPEN_PASSTHROUGH to OPEN and CREATE (libfuse: `fi->parallel_direct_writes = 1`; fuser: `FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES`; e.g. `fuselock testfs --parallel`); files opened before fuselock started show no open-time evidence"),
        );
    }
    // Every reason but the missing flag (ruled out above).
    let reasons: Vec<String> = Reason::EXCLUSIVE[1..]
        .iter()
        .map(|r| {
            (
                r,
                p.acquisitions[LockMode::Exclusive][*r] + p.acquisitions[LockMode::Shared][*r],
            )
        })
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{} {n}", r.name()))
        .collect();
    decision(
        Verdict::Inconclusive,
        Why::NoEligibleWrites,
        format!(
            "{} seen, none eligible ({})",
            plural(p.writes, "passthrough write", "passthrough writes"),
            if reasons.is_empty() { "no lock acquisitions".to_owned() } else { reasons.join(", ") }
        ),
        Some("eligible writes are O_DIRECT overwrites inside EOF, not appends: `fuselock verify --exercise FILE` issues some"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use probes_common::{Reasons, WriteStats};

    #[test]
    fn skipped_probe_runs_make_any_verdict_inconclusive() {
        let mut e = Evidence {
            passthrough: counters(|s| acquired(s, LockMode::Shared, &[Reason::Eligible], 256)),
            opens: opens(4, 4),
            recursion_misses: 0,
            waits_measured: false,
        };
        assert_eq!(decide(&e).verdict, Verdict::Active);
        e.recursion_misses = 117;
        let d = decide(&e);
        assert_eq!(
            (d.verdict, d.why),
            (Verdict::Inconclusive, Why::CountsIncomplete)
        );
        assert_eq!(d.exit_code(), 2);
        assert!(d.message.contains("117 times"), "{}", d.message);
        assert!(
            d.message.contains("the counts alone say ACTIVE"),
            "{}",
            d.message
        );
    }

    fn counters(f: impl FnOnce(&mut WriteStats)) -> Counters {
        let mut s = WriteStats::default();
        f(&mut s);
        Counters::from(&s)
    }

    fn acquired(s: &mut WriteStats, mode: LockMode, reasons: &[Reason], n: u64) {
        let set = reasons
            .iter()
            .filter(|r| **r != Reason::Eligible)
            .fold(Reasons::NONE, |set, r| set.with(*r));
        s.add_acquisitions(mode, set, n);
    }

    fn opens(asked: u64, kept: u64) -> OpenStats {
        OpenStats {
            passthrough_parallel_asked: asked,
            passthrough_parallel_kept: kept,
            ..Default::default()
        }
    }

    #[test]
    fn shared_eligible_is_active() {
        let e = Evidence {
            passthrough: counters(|s| {
                acquired(s, LockMode::Shared, &[Reason::Eligible], 12_345);
                acquired(s, LockMode::Exclusive, &[Reason::Append], 3);
            }),
            opens: opens(4, 4),
            recursion_misses: 0,
            waits_measured: false,
        };
        let d = decide(&e);
        assert_eq!((d.verdict, d.why), (Verdict::Active, Why::SharedLockTaken));
        assert_eq!(
            d.message,
            "12345 eligible direct overwrites took the shared lock"
        );
        assert_eq!(d.exit_code(), 0);
    }

    #[test]
    fn exclusive_eligible_is_not_active() {
        let e = Evidence {
            passthrough: counters(|s| acquired(s, LockMode::Exclusive, &[Reason::Eligible], 1000)),
            opens: opens(1, 1),
            recursion_misses: 0,
            waits_measured: false,
        };
        let d = decide(&e);
        assert_eq!(
            (d.verdict, d.why),
            (Verdict::NotActive, Why::ExclusiveLockTaken)
        );
        assert_eq!(
            d.message,
            "1000 eligible direct overwrites took the exclusive lock"
        );
        assert_eq!(d.exit_code(), 1);
    }

    /// v3 under a racing truncate: eligible writes that found the file
    /// shrunk once locked re-took the lock exclusive. The series is active,
    /// the re-check is named, and those writes are not what it would buy.
    #[test]
    fn writes_upgraded_at_the_eof_recheck_are_the_series_at_work() {
        let c = counters(|s| {
            acquired(s, LockMode::Shared, &[Reason::Eligible], 1972);
            acquired(s, LockMode::Exclusive, &[Reason::PastEofAtLock], 27);
            acquired(s, LockMode::Exclusive, &[Reason::PastEof], 1);
            acquired(s, LockMode::Exclusive, &[Reason::Eligible], 3);
        });
        let d = decide(&Evidence {
            passthrough: c.clone(),
            opens: opens(7, 7),
            ..Evidence::default()
        });
        assert_eq!(d.verdict, Verdict::Active);
        assert_eq!(
            d.message,
            "1972 eligible direct overwrites took the shared lock (3 others took it exclusive)"
        );
        assert_eq!(d.eof_rechecks, 27);
        assert_eq!(d.exit_code(), 0);
        assert!(d
            .eof_recheck_sentence()
            .is_some_and(|l| l.starts_with("EOF re-check seen: 27 eligible writes")));
        // The 3 ran exclusive with EOF back in place when fuselock looked:
        // said so, and not offered as what the series would buy.
        assert_eq!(d.unseen_upgrades, 3);
        assert!(d
            .unseen_upgrade_sentence()
            .is_some_and(|l| l.starts_with("3 eligible writes ran exclusive though inside EOF")));
        assert!(!d.series_missing());
        // Without the series the same kinds of counts name no re-check.
        let stock = decide(&Evidence {
            passthrough: counters(|s| {
                acquired(s, LockMode::Exclusive, &[Reason::Eligible], 10);
                acquired(s, LockMode::Exclusive, &[Reason::PastEofAtLock], 2);
            }),
            opens: opens(1, 1),
            ..Evidence::default()
        });
        assert_eq!(stock.verdict, Verdict::NotActive);
        assert_eq!(stock.eof_recheck_sentence(), None);
        assert_eq!(stock.unseen_upgrades, 0);
        assert!(stock.series_missing());
    }

    #[test]
    fn series_gain_is_the_exclusive_overwrites_share_of_time_waiting() {
        let c = counters(|s| {
            acquired(s, LockMode::Exclusive, &[Reason::NoParallelFlag], 1000);
            s.overwrites_exclusive_latency_ns = 4_000_000;
            s.overwrites_exclusive_wait_ns = 3_000_000;
        });
        let gain = series_gain(&c, true).expect("overwrites took the lock exclusive");
        assert_eq!(gain.overwrites_exclusive, 1000);
        assert_eq!(gain.wait_share, Some(0.75));
        assert_eq!(gain.speedup_bound(), Some(4.0));
        assert_eq!(
            gain.sentence(),
            "1000 direct overwrites took the exclusive lock and spent 75 % of their time waiting \
             for it: taken shared, up to 4.00x their throughput"
        );
        let mut light = c.clone();
        light.overwrites_exclusive_wait_ns = 16_000;
        let light = series_gain(&light, true).expect("exclusive overwrites");
        assert!(
            light.sentence().contains(
                "spent 0.4 % of their time waiting for it: \
                 taken shared, up to 1.00x"
            ),
            "{}",
            light.sentence()
        );
        // Without --contention nothing was measured: never report 0 %.
        let unmeasured = series_gain(&c, false).expect("still exclusive overwrites");
        assert_eq!(unmeasured.wait_share, None);
        assert!(unmeasured.sentence().contains("--contention"));
    }

    #[test]
    fn no_series_gain_without_exclusive_overwrites() {
        let active = counters(|s| acquired(s, LockMode::Shared, &[Reason::Eligible], 10));
        assert_eq!(series_gain(&active, true), None);
    }

    #[test]
    fn stripped_flag_is_not_active() {
        let e = Evidence {
            passthrough: counters(|s| {
                acquired(s, LockMode::Exclusive, &[Reason::NoParallelFlag], 40)
            }),
            opens: opens(5, 0),
            recursion_misses: 0,
            waits_measured: false,
        };
        let d = decide(&e);
        assert_eq!((d.verdict, d.why), (Verdict::NotActive, Why::FlagStripped));
        assert!(d.message.contains("asked for FOPEN_PARALLEL_DIRECT_WRITES on 5 passthrough opens and the kernel stripped it"));
    }

    #[test]
    fn nothing_seen_is_inconclusive_and_says_what_to_run() {
        let d = decide(&Evidence::default());
        assert_eq!(
            (d.verdict, d.why),
            (Verdict::Inconclusive, Why::NoPassthroughWrites)
        );
        assert!(d.hint.as_deref().unwrap_or_default().contains("--exercise"));
        assert_eq!(d.exit_code(), 2);
    }

    #[test]
    fn flag_never_asked_is_inconclusive() {
        let e = Evidence {
            passthrough: counters(|s| {
                acquired(s, LockMode::Exclusive, &[Reason::NoParallelFlag], 7)
            }),
            opens: opens(0, 0),
            recursion_misses: 0,
            waits_measured: false,
        };
        assert_eq!(decide(&e).why, Why::FlagNotRequested);
    }

    #[test]
    fn only_appends_is_inconclusive_and_lists_reasons() {
        let e = Evidence {
            passthrough: counters(|s| acquired(s, LockMode::Exclusive, &[Reason::Append], 9)),
            opens: opens(2, 2),
            recursion_misses: 0,
            waits_measured: false,
        };
        let d = decide(&e);
        assert_eq!(
            (d.verdict, d.why),
            (Verdict::Inconclusive, Why::NoEligibleWrites)
        );
        assert_eq!(
            d.message,
            "9 passthrough writes seen, none eligible (append 9)"
        );
    }

    #[test]
    fn canary_overrides_the_exit_status() {
        let e = Evidence {
            passthrough: counters(|s| {
                acquired(s, LockMode::Shared, &[Reason::Eligible], 10);
                s.shared_extended = 1;
            }),
            opens: opens(1, 1),
            recursion_misses: 0,
            waits_measured: false,
        };
        let d = decide(&e);
        assert_eq!(d.verdict, Verdict::Active);
        assert_eq!(d.exit_code(), EXIT_SHARED_EXTENDED);
    }
}

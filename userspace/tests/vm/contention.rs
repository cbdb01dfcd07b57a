//! Lock waits with and without the series, and what fuselock costs where
//! nothing writes to FUSE.

use serde_json::Value;

use super::{
    common::{churn, prog_stats, BpfStats, TestFs},
    harness::*,
};

/// T threads of O_DIRECT overwrites on one passthrough file: contention
/// (waits for the exclusive lock) vanishes with the patch. Histogram counts
/// sum to what they describe.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn contention_with_and_without_the_patch() {
    let fs = TestFs::mount(&["--parallel"]);
    let (writes, threads) = (4000, 4);
    let snap = stat_of(
        &fs,
        &[Load {
            file: "hot",
            kind: "overwrite",
            writes,
            threads,
        }],
    );
    let hot = entry(&snap, "hot");
    let sum = |hist: &Value| -> u64 {
        hist.as_array()
            .expect("histogram")
            .iter()
            .map(|b| b["count"].as_u64().expect("count"))
            .sum()
    };
    for mode in ["shared", "exclusive"] {
        assert_eq!(
            sum(&hot["hold_hist"][mode]),
            hot[mode].as_u64().expect("n"),
            "hold_hist/{mode}: {hot}"
        );
        assert_eq!(
            sum(&hot["wait_hist"][mode]),
            hot["contended"][mode].as_u64().expect("n"),
            "wait_hist/{mode}"
        );
    }
    assert_eq!(sum(&hot["latency_hist"]), writes);
    let writers = hot["writers"].as_array().expect("writers");
    assert_eq!(
        writers
            .iter()
            .map(|w| w["writes"].as_u64().expect("n"))
            .sum::<u64>(),
        writes,
        "{hot}"
    );
    // The load threads are named load-N; comm is the last thread seen.
    assert!(
        writers
            .iter()
            .all(|w| w["comm"].as_str().is_some_and(|c| c.starts_with("load-"))),
        "{hot}"
    );
    println!(
        "FIGURES kernel={:?} writes={writes} threads={threads} shared={} exclusive={} contended_shared={} \
         contended_exclusive={} wait_ns_total={} wait_ns_max={} hold_ns_total={}",
        kernel(),
        hot["shared"],
        hot["exclusive"],
        hot["contended"]["shared"],
        hot["contended"]["exclusive"],
        hot["wait_ns_total"]["exclusive"].as_u64().unwrap_or(0) + hot["wait_ns_total"]["shared"].as_u64().unwrap_or(0),
        hot["wait_ns_max"]["exclusive"].as_u64().unwrap_or(0).max(hot["wait_ns_max"]["shared"].as_u64().unwrap_or(0)),
        hot["hold_ns_total"]["exclusive"].as_u64().unwrap_or(0) + hot["hold_ns_total"]["shared"].as_u64().unwrap_or(0),
    );
    if kernel() == Kernel::Patched {
        assert_eq!(hot["shared"], writes, "{hot}");
        assert_eq!(hot["contended"]["exclusive"], 0, "{hot}");
        // Readers wait only behind a writer: here the only exclusive holder
        // is fuse_flush() when a thread closes its fd while others still
        // write, so at most each of T closes can stall the T-1 others.
        let waits = hot["contended"]["shared"].as_u64().expect("n");
        assert!(
            waits <= u64::from(threads * threads),
            "{waits} shared waits: {hot}"
        );
        assert_eq!(hot["overwrites_exclusive"], 0, "{hot}");
    } else {
        assert_eq!(hot["exclusive"], writes, "{hot}");
        assert!(
            hot["contended"]["exclusive"].as_u64().expect("n") > 0,
            "{hot}"
        );
        // Every write is a direct overwrite the series would run shared:
        // the time it would give back is all of theirs.
        assert_eq!(hot["overwrites_exclusive"], writes, "{hot}");
        assert_eq!(
            hot["overwrites_exclusive_latency_ns"], hot["latency_ns_total"],
            "{hot}"
        );
        assert_eq!(
            hot["overwrites_exclusive_wait_ns"], hot["wait_ns_total"]["exclusive"],
            "{hot}"
        );
    }
    assert_eq!(
        hot["shared_extended"], 0,
        "overwrites inside EOF never grow the file: {hot}"
    );
}

/// Lock waits are opt-in: without `--contention` the tracepoints stay
/// unattached (the snapshot says so) and nothing is counted as contended,
/// on a workload that contends.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn contention_tracepoints_are_opt_in() {
    let fs = TestFs::mount(&[]);
    let load = [Load {
        file: "queued",
        kind: "overwrite",
        writes: 2000,
        threads: 4,
    }];
    let off = stat_with(&fs, &load, &[]);
    assert_eq!(off["source"]["contention"], false, "{}", off["source"]);
    let e = entry(&off, "queued");
    assert_eq!(e["writes"], 2000);
    assert_eq!(e["contended"]["exclusive"], 0, "{e}");
    let on = stat_with(&fs, &load, &["--contention"]);
    assert_eq!(on["source"]["contention"], true, "{}", on["source"]);
    assert!(
        entry(&on, "queued")["contended"]["exclusive"].as_u64() > Some(0),
        "4 threads on one file never waited with --contention"
    );
}

/// By default fuselock hooks only FUSE functions: on an unrelated,
/// lock-heavy workload (the bench's: two threads renaming in one tmpfs
/// directory, so its inode lock is contended, plus mmap churn) its programs
/// run not once, by the kernel's own count. With `--contention` they run on those waits.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn by_default_nothing_runs_on_unrelated_work() {
    for (flags, expect_runs) in [(&[][..], false), (&["--contention"][..], true)] {
        let mut stat = stat_attached(flags);
        let stats = BpfStats::enable();
        let (runs0, _) = prog_stats(stat.id());
        churn(2, 3000);
        let (runs1, ns) = prog_stats(stat.id());
        drop(stats);
        let _ = stat.kill();
        let _ = stat.wait();
        println!(
            "{flags:?}: fuselock's programs ran {} times ({ns} ns in all)",
            runs1 - runs0
        );
        if expect_runs {
            assert!(
                runs1 > runs0,
                "--contention: no program ran on contended renames"
            );
        } else {
            assert_eq!(runs1, runs0, "by default a program ran on unrelated work");
        }
    }
}

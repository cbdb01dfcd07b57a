//! Exact counts and reasons for every kind of write, on each path, from one
//! thread and from many at once.

use std::process::Command;

use super::{
    common::{fuselock, TestFs},
    harness::*,
};

/// FOPEN_DIRECT_IO without the flag: everything exclusive.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn direct_io_without_flag_is_all_exclusive() {
    let fs = TestFs::mount(&["--direct-io"]);
    let snap = stat_of(
        &fs,
        &[
            Load {
                file: "overwrite",
                kind: "overwrite",
                writes: 41,
                threads: 4,
            },
            Load {
                file: "append",
                kind: "append",
                writes: 19,
                threads: 2,
            },
        ],
    );
    let d = "direct_io";
    check(
        &snap,
        "overwrite",
        &Expect {
            path: d,
            writes: 41,
            shared: &[],
            exclusive: &[("no_parallel_flag", 41)],
        },
    );
    check(
        &snap,
        "append",
        &Expect {
            path: d,
            writes: 19,
            shared: &[],
            exclusive: &[("no_parallel_flag", 19), ("append", 19)],
        },
    );
}

/// Every kind of write at once, `(file, kind, writes, threads)` each, on a
/// passthrough mount that asks for parallel writes: exact counts by mode
/// and reason, and nothing lost.
fn mixed_kinds_are_exact(loads: &[(&'static str, &'static str, u64, u32)]) {
    let fs = TestFs::mount(&["--parallel"]);
    let loads: Vec<Load> = loads
        .iter()
        .map(|&(file, kind, writes, threads)| Load {
            file,
            kind,
            writes,
            threads,
        })
        .collect();
    let snap = stat_concurrently(&fs, &loads, "", &[]);
    let p = "passthrough";
    let patched = kernel() == Kernel::Patched;
    for load in &loads {
        let n = load.writes;
        let own = match load.kind {
            "overwrite" => None,
            "buffered" => Some("buffered"),
            "append" => Some("append"),
            _ => Some("past_eof"),
        };
        // Stock kernels strip the flag: every write is exclusive for it,
        // plus its own reason; with the series only the reason is left.
        let mut exclusive: Vec<(&str, u64)> = own.map(|r| (r, n)).into_iter().collect();
        if !patched {
            exclusive.push(("no_parallel_flag", n));
        }
        let shared: &[(&str, u64)] = if patched && own.is_none() {
            &[("eligible", n)]
        } else {
            &[]
        };
        if patched && own.is_none() {
            exclusive.clear();
        }
        check(
            &snap,
            load.file,
            &Expect {
                path: p,
                writes: n,
                shared,
                exclusive: &exclusive,
            },
        );
    }
    let health = &snap["health"];
    println!(
        "{} threads on {} CPUs, probe mode {}, recursion_misses {}",
        loads.iter().map(|l| l.threads).sum::<u32>(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        snap["source"]["probe_mode"],
        health["recursion_misses"]
    );
    for key in [
        "recursion_misses",
        "inflight_full",
        "inflight_replaced",
        "exit_unmatched",
        "read_errors",
        "lock_state_unknown",
        "inode_insert_failed",
        "writers_full",
    ] {
        assert_eq!(health[key], 0, "health.{key}: {health}");
    }
}

/// `stat -- COMMAND` exits with the command's status, and a command that
/// cannot start is a clear error with fuselock's failure status.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn fuselock_exits_with_the_commands_status() {
    let out = Command::new(fuselock())
        .args(["stat", "--json", "--", "sh", "-c", "exit 7"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(7));
    fails_with(
        &["stat", "--", "/nonexistent/cmd"],
        4,
        "cannot run `/nonexistent/cmd`",
    );
}

/// The core tier: what `cargo xtask test` runs on every kernel of its matrix
/// (it selects tests by this module's name).
mod core_tier {
    use super::*;

    /// Stock 6.12 passthrough without the flag: every write exclusive, each for
    /// the missing flag plus its own reason.
    #[test]
    #[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
    fn passthrough_without_flag_is_all_exclusive() {
        let fs = TestFs::mount(&[]);
        let snap = stat_of(&fs, &mixed_loads());
        let p = "passthrough";
        check_mixed_without_flag(&snap, p);
        assert_eq!(snap["totals"]["passthrough"]["writes"], 37 + 23 + 29 + 31);
        assert_eq!(
            snap["totals"]["passthrough"]["exclusive"],
            37 + 23 + 29 + 31
        );
        assert_eq!(snap["totals"]["direct_io"]["writes"], 0);
    }

    /// Asking for the flag on passthrough opens: stock 6.12 strips it
    /// (fs/fuse/iomode.c), so nothing changes and every write is exclusive; with
    /// the series, O_DIRECT overwrites inside EOF take the lock shared and every
    /// other kind stays exclusive for its own reason only.
    #[test]
    #[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
    fn passthrough_with_flag_requested() {
        let fs = TestFs::mount(&["--parallel"]);
        let snap = stat_of(&fs, &mixed_loads());
        let p = "passthrough";
        if kernel() == Kernel::Patched {
            check_mixed_with_flag(&snap, p, false);
        } else {
            check_mixed_without_flag(&snap, p);
        }
        check_flag_asked_and_kept_if_patched(&snap);
    }

    /// FOPEN_DIRECT_IO with the flag: `fuse_dio_lock()` takes the lock shared for
    /// overwrites (direct or buffered: on this path buffered writes are direct
    /// too) and exclusive for appends and writes past EOF.
    #[test]
    #[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
    fn direct_io_with_flag_shares_overwrites() {
        let fs = TestFs::mount(&["--parallel", "--direct-io"]);
        let snap = stat_of(&fs, &mixed_loads());
        check_mixed_with_flag(&snap, "direct_io", true);
        assert_eq!(snap["totals"]["passthrough"]["writes"], 0);
        assert_eq!(snap["totals"]["direct_io"]["shared"], 37 + 31);
    }

    /// The direct-io path's fifth reason: while another open of the file reads
    /// through the page cache, the inode is in cached I/O mode
    /// (`FUSE_I_CACHE_IO_MODE`) and `fuse_dio_lock()` takes every direct write
    /// exclusively; before it opens, and after it closes, they share the lock.
    #[test]
    #[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
    fn direct_io_beside_a_cached_reader_is_exclusive_for_cache_io_mode() {
        let fs = TestFs::mount(&["--parallel", "--direct-io", "--cached-readers"]);
        let overwrites = |writes, threads| Load {
            file: "beside-reader",
            kind: "overwrite",
            writes,
            threads,
        };
        // fd 3 of the script is the reader: opened read-only, held across the
        // second load, closed before the third.
        let script = format!(
            "set -e; {}; exec 3<{}; {}; exec 3<&-; {}",
            overwrites(37, 3).shell(&fs),
            fs.path("beside-reader"),
            overwrites(41, 4).shell(&fs),
            overwrites(43, 2).shell(&fs),
        );
        let snap = stat_of_script(&script, &["--contention"]);
        check(
            &snap,
            "beside-reader",
            &Expect {
                path: "direct_io",
                writes: 37 + 41 + 43,
                shared: &[("eligible", 37 + 43)],
                exclusive: &[("cache_io_mode", 41)],
            },
        );
    }

    /// Many threads on one file and several files at once: counts stay exact
    /// under concurrency, and the contended exclusive acquisitions are seen.
    #[test]
    #[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
    fn concurrent_writers_are_counted_exactly() {
        let fs = TestFs::mount(&["--parallel"]);
        let loads: Vec<Load> = vec![
            Load {
                file: "hot",
                kind: "overwrite",
                writes: 1003,
                threads: 8,
            },
            Load {
                file: "f1",
                kind: "overwrite",
                writes: 101,
                threads: 2,
            },
            Load {
                file: "f2",
                kind: "overwrite",
                writes: 103,
                threads: 2,
            },
        ];
        // On 6.12 (voluntary preemption) eight writers on one exclusive lock
        // queue on two emulated CPUs when both run at once, which the host
        // decides: so a run that saw no wait runs again, up to three times,
        // every count exact each time. On the preemptible 7.x lines a holder
        // is rarely preempted and waiters may spin instead of sleeping, so
        // whether any write waits is only printed there.
        let six_twelve = matches!(
            std::env::var("FUSELOCK_TEST_KERNEL").as_deref(),
            Ok("stock" | "unpatched")
        );
        for attempt in 1..=3 {
            let snap = stat_concurrently(&fs, &loads, "", &["--contention"]);
            let p = "passthrough";
            for (name, n) in [("hot", 1003), ("f1", 101), ("f2", 103)] {
                let want = if kernel() == Kernel::Patched {
                    Expect {
                        path: p,
                        writes: n,
                        shared: &[("eligible", n)],
                        exclusive: &[],
                    }
                } else {
                    Expect {
                        path: p,
                        writes: n,
                        shared: &[],
                        exclusive: &[("no_parallel_flag", n)],
                    }
                };
                check(&snap, name, &want);
            }
            assert_no_lost_writes(&snap, "");
            if kernel() == Kernel::Patched {
                return;
            }
            let hot = entry(&snap, "hot");
            let contended = hot["contended"]["exclusive"].as_u64().expect("contended");
            let waited = hot["wait_ns_total"]["exclusive"].as_u64().expect("wait");
            // Contended acquisitions are timed, and only those.
            assert_eq!(contended > 0, waited > 0, "{hot}");
            assert!(contended <= 1003, "{hot}");
            assert_eq!(hot["contended"]["shared"], 0, "{hot}");
            println!("attempt {attempt}: contended exclusive acquisitions: {contended} of 1003");
            if contended > 0 || !six_twelve {
                return;
            }
        }
        panic!("no contention seen on 6.12 in three runs of eight writers on one file");
    }

    /// Every kind of write at once, 9 threads over 4 files: what a preemptible
    /// kernel (7.x, or 6.12 with `preempt=full`) got wrong in fentry mode, where
    /// a writer preempted inside a program made the next one on that CPU skip
    /// it. In the default mode every count is exact and the kernel skipped no
    /// probe run.
    #[test]
    #[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
    fn mixed_concurrent_kinds_are_exact_with_no_recursion_miss() {
        mixed_kinds_are_exact(&[
            ("overwrite", "overwrite", 401, 4),
            ("buffered", "buffered", 211, 2),
            ("append", "append", 157, 1),
            ("grow", "past-eof", 173, 2),
        ]);
    }
}

/// The scale tier: what `cargo xtask test` runs in a guest with many CPUs
/// (it selects tests by this module's name).
mod scale_tier {
    use super::*;

    /// On a host with many CPUs (`cargo xtask test` boots a 16-CPU guest for
    /// it), 32 threads doing every kind of write at once: every count is exact,
    /// with per-CPU values summed over 16 CPUs and one file's shared value
    /// updated from all of them.
    #[test]
    #[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
    fn many_cpus_count_32_writers_of_every_kind_exactly() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus < 16 {
            eprintln!("SKIPPED: needs 16 CPUs, this guest has {cpus} (cargo xtask test boots one)");
            return;
        }
        mixed_kinds_are_exact(&[
            ("overwrite", "overwrite", 960, 12),
            ("buffered", "buffered", 480, 8),
            ("append", "append", 240, 4),
            ("grow", "past-eof", 480, 8),
        ]);
    }
}

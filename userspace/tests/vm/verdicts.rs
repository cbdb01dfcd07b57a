//! `verify`: the verdict each kernel earns, and the EOF race that tells the
//! series' versions apart.

use serde_json::Value;

use super::{
    common::{fuselock, TestFs},
    harness::*,
};

/// A server that does not ask for the flag cannot show the patch working.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn verify_without_flag_is_inconclusive() {
    let fs = TestFs::mount(&[]);
    let file = fs.path("data");
    std::fs::write(&file, vec![1u8; 65536]).expect("write file");
    let (code, report) = verify(&["--exercise", &file]);
    assert_verdict(code, &report, 2, "INCONCLUSIVE", "flag_not_requested");
    assert!(report["hint"]
        .as_str()
        .is_some_and(|h| h.contains("FOPEN_PARALLEL_DIRECT_WRITES")));
}

/// Only appends: no eligible write, so no verdict on a patched kernel; on
/// the others the stripped flag at open already says NOT ACTIVE.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn verify_with_only_appends() {
    let fs = TestFs::mount(&["--parallel"]);
    let file = fs.path("log");
    let load = format!(
        "{} load {file} --kind append --writes 17 >/dev/null",
        fuselock()
    );
    let (code, report) = verify(&["--", "sh", "-c", &load]);
    if kernel() == Kernel::Patched {
        assert_eq!(
            (code, report["why"].as_str()),
            (2, Some("no_eligible_writes")),
            "{report}"
        );
        assert_eq!(
            report["message"],
            "17 passthrough writes seen, none eligible (append 17)"
        );
    } else {
        assert_eq!(
            (code, report["why"].as_str()),
            (1, Some("flag_stripped")),
            "{report}"
        );
    }
}

#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn verify_refuses_files_not_on_fuse() {
    std::fs::write("/tmp/not-fuse", b"x").expect("write");
    fails_with(
        &["verify", "--exercise", "/tmp/not-fuse"],
        3,
        "not on a FUSE file system",
    );
}

/// The core tier: what `cargo xtask test` runs on every kernel of its matrix
/// (it selects tests by this module's name).
mod core_tier {
    use super::*;

    /// `verify --exercise` decides on its own workload and restores the file.
    #[test]
    #[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
    fn verify_exercise_gives_the_kernels_verdict() {
        let fs = TestFs::mount(&["--parallel"]);
        let report = check_verify_exercise(&fs);
        if kernel() == Kernel::Patched {
            assert!(report.get("series_gain").is_none(), "{report}");
        } else {
            // Its 256 overwrites are what the series would run shared; lock
            // waits are not measured without --contention.
            assert_eq!(
                report["series_gain"],
                serde_json::json!({"overwrites_exclusive": 256, "wait_share": null}),
                "{report}"
            );
        }
        // The verdict names the kernel it was decided on.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
        assert_eq!(report["kernel"], release.trim(), "{report}");
    }
}

/// The series tier: what `cargo xtask test` also runs on the series kernels
/// (it selects tests by this module's name).
mod series_tier {
    use super::*;

    /// Concurrent O_DIRECT overwrites near EOF while the file is truncated and
    /// extended again: the versions of the series tell themselves apart. v2
    /// checks EOF before locking, so a write the truncate overtakes runs
    /// shared and grows the file (the canary, exit 5); v3 re-checks under the
    /// shared lock and re-takes it exclusive (`past_eof_at_lock`, ACTIVE, exit
    /// 0); without the series every write is exclusive. Every count is exact.
    #[test]
    #[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
    fn racing_truncates_tell_the_series_versions_apart() {
        const WRITES: u64 = 30_000;
        let fs = TestFs::mount(&["--parallel"]);
        let file = fs.path("raced");
        let script = format!(
            "{} load {file} --kind overwrite --writes {WRITES} --threads 2 --file-size 65536 >/dev/null & \
             i=0; while [ $i -lt 3000 ]; do truncate -s 4096 {file}; truncate -s 65536 {file}; i=$((i+1)); done; wait",
            fuselock()
        );
        let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"));
        // The race is a matter of timing: give it a few tries.
        for attempt in 1..=3 {
            let (code, report) = verify(&["--", "sh", "-c", &script]);
            let p = &report["evidence"]["passthrough"];
            let (shared, exclusive) = (
                &p["acquisitions"]["shared"],
                &p["acquisitions"]["exclusive"],
            );
            let extended = n(&report["shared_extended"]);
            let upgraded = n(&exclusive["past_eof_at_lock"]);
            println!(
                "attempt {attempt}: shared {} exclusive {} (past_eof {}, past_eof_at_lock {upgraded}), \
                 shared_extended {extended}, exit {code}",
                p["shared"], p["exclusive"], exclusive["past_eof"]
            );
            // Exact: every write counted once, shared or exclusive, each
            // exclusive one for a reason it had.
            assert_eq!(n(&p["writes"]), WRITES, "{report}");
            assert_eq!(n(&p["shared"]) + n(&p["exclusive"]), WRITES, "{report}");
            assert_eq!(n(&report["eof_rechecks"]), upgraded, "{report}");
            if kernel() != Kernel::Patched {
                assert_eq!((extended, upgraded), (0, 0), "{report}");
                assert_eq!(n(&p["shared"]), 0, "no shared lock without the series");
                assert_eq!(exclusive["no_parallel_flag"], p["exclusive"], "{report}");
                return;
            }
            // With the series, a write is exclusive only for EOF: past it at
            // entry, or once locked (v3's re-check), or past it when the kernel
            // checked though not when fuselock looked, before and after (a
            // truncate and the extension after it both fell in between: still
            // "eligible" as far as fuselock can see).
            assert_eq!(
                n(&exclusive["past_eof"]) + upgraded + n(&exclusive["eligible"]),
                n(&p["exclusive"]),
                "{report}"
            );
            assert_eq!(shared["eligible"], p["shared"], "{report}");
            // Those last ones are owned up to, and with the series at work no
            // exclusive overwrite is offered as what the series would buy.
            assert_eq!(report["unseen_upgrades"], exclusive["eligible"], "{report}");
            assert!(report.get("series_gain").is_none(), "{report}");
            if series_v3() {
                assert_eq!(
                    extended, 0,
                    "v3 never grows a file under the shared lock: {report}"
                );
                if upgraded > 0 {
                    assert_eq!(code, 0, "{report}");
                    assert_eq!(report["verdict"], "ACTIVE", "{report}");
                    return;
                }
            } else {
                if extended > 0 {
                    assert_eq!(code, 5, "the canary is its own exit status: {report}");
                    return;
                }
            }
        }
        panic!("three runs of racing truncates never caught the series on the race");
    }
}

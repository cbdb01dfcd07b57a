//! libfuse's reference passthrough server, `passthrough_hp` (libfuse 3.17,
//! built by `cargo xtask test` from Debian's source), as the FUSE server:
//! fuselock's counts and verdict on a server it did not write.
//!
//! passthrough_hp uses passthrough unless told `--nopassthrough`, and sets
//! `fi->parallel_direct_writes = 1` on every open and create whatever its
//! options, so every one of its opens asks for FOPEN_PARALLEL_DIRECT_WRITES:
//! an unpatched kernel strips it (NOT ACTIVE), the series keeps it (ACTIVE).

use std::process::Command;

use super::{
    check_flag_asked_and_kept_if_patched, check_mixed_with_flag, check_mixed_without_flag,
    check_verify_exercise, common::TestFs, fuselock, kernel, mixed_loads, stat_of_script, Kernel,
};

/// Where `cargo xtask test` puts it in the guest.
const PASSTHROUGH_HP: &str = "/bin/passthrough_hp";

/// `passthrough_hp --foreground SOURCE MOUNTPOINT`: defaults otherwise, as a
/// user would run it. As root it mounts with mount(2) itself, no fusermount3.
fn hp_mount() -> TestFs {
    TestFs::start("passthrough_hp", |source, mountpoint| {
        Command::new(PASSTHROUGH_HP)
            .arg("--foreground")
            .arg(source)
            .arg(mountpoint)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("spawn {PASSTHROUGH_HP} (put in the VM by `cargo xtask test`): {e}")
            })
    })
}

/// The core tier: what `cargo xtask test` runs on every kernel of its matrix
/// (it selects tests by this module's name).
mod core_tier {
    use super::*;

    /// The mixed workload (one file per kind, different N) through
    /// passthrough_hp: exact counts, each for the reason the kernel had.
    #[test]
    #[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
    fn passthrough_hp_counts_every_kind_exactly() {
        let fs = hp_mount();
        let loads = mixed_loads();
        let script: Vec<String> = loads
            .iter()
            .map(|l| {
                format!(
                    "{} load {} --kind {} --writes {} --threads {}",
                    fuselock(),
                    fs.path(l.file),
                    l.kind,
                    l.writes,
                    l.threads
                )
            })
            .collect();
        let snap = stat_of_script(&format!("set -e; {}", script.join("; ")), &[]);
        let p = "passthrough";
        if kernel() == Kernel::Patched {
            check_mixed_with_flag(&snap, p, false);
        } else {
            // Stock and unpatched 6.12 strip the flag at open (fs/fuse/iomode.c).
            check_mixed_without_flag(&snap, p);
        }
        let total = 37 + 23 + 29 + 31;
        assert_eq!(snap["totals"]["passthrough"]["writes"], total, "{snap}");
        assert_eq!(snap["totals"]["direct_io"]["writes"], 0, "{snap}");
        // passthrough_hp asks on every open; only the series keeps it.
        check_flag_asked_and_kept_if_patched(&snap);
        assert_eq!(snap["health"]["recursion_misses"], 0, "{snap}");
    }

    /// `verify --exercise` on a passthrough_hp mount: ACTIVE with the series,
    /// NOT ACTIVE (flag stripped) without it.
    #[test]
    #[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
    fn passthrough_hp_verify_exercise_gives_the_kernels_verdict() {
        check_verify_exercise(&hp_mount());
    }
}

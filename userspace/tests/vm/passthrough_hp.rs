//! libfuse's reference passthrough server, `passthrough_hp` (libfuse 3.17,
//! built by `cargo xtask test` from Debian's source), as the FUSE server:
//! fuselock's counts and verdict on a server it did not write.
//!
//! passthrough_hp uses passthrough unless told `--nopassthrough`, and sets
//! `fi->parallel_direct_writes = 1` on every open and create whatever its
//! options, so every one of its opens asks for FOPEN_PARALLEL_DIRECT_WRITES:
//! an unpatched kernel strips it (NOT ACTIVE), the series keeps it (ACTIVE).

use std::{
    path::PathBuf,
    process::{Child, Command},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use super::{
    check, check_mixed_without_flag, common::is_mounted, entry, fuselock, kernel, mixed_loads,
    stat_of_script, verify, Expect, Kernel,
};

/// Where `cargo xtask test` puts it in the guest.
const PASSTHROUGH_HP: &str = "/bin/passthrough_hp";

/// A passthrough_hp mount of a fresh directory, unmounted when dropped.
struct HpMount {
    server: Child,
    mountpoint: PathBuf,
    base: PathBuf,
}

static MOUNTS: AtomicU32 = AtomicU32::new(0);

impl HpMount {
    /// `passthrough_hp --foreground SOURCE MOUNTPOINT`: defaults otherwise,
    /// as a user would run it. As root it mounts with mount(2) itself, no
    /// fusermount3.
    fn mount() -> HpMount {
        let n = MOUNTS.fetch_add(1, Ordering::Relaxed);
        // The fuselock-e2e- prefix is what `check` expects of a mount.
        let base = PathBuf::from(format!("/tmp/fuselock-e2e-hp-{}-{n}", std::process::id()));
        let source = base.join("source");
        let mountpoint = base.join("mnt");
        std::fs::create_dir_all(&source).expect("source dir");
        std::fs::create_dir_all(&mountpoint).expect("mountpoint");
        let mut server = Command::new(PASSTHROUGH_HP)
            .arg("--foreground")
            .arg(&source)
            .arg(&mountpoint)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("spawn {PASSTHROUGH_HP} (put in the VM by `cargo xtask test`): {e}")
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(&mountpoint) {
            if let Ok(Some(status)) = server.try_wait() {
                panic!("passthrough_hp exited before mounting: {status}");
            }
            assert!(Instant::now() < deadline, "passthrough_hp did not mount");
            thread::sleep(Duration::from_millis(50));
        }
        HpMount {
            server,
            mountpoint,
            base,
        }
    }

    fn path(&self, name: &str) -> String {
        self.mountpoint.join(name).display().to_string()
    }
}

impl Drop for HpMount {
    fn drop(&mut self) {
        // libfuse unmounts on SIGTERM and exits.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.server.id() as i32, libc::SIGTERM) };
        let _ = self.server.wait();
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// The mixed workload (one file per kind, different N) through
/// passthrough_hp: exact counts, each for the reason the kernel had.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn passthrough_hp_counts_every_kind_exactly() {
    let fs = HpMount::mount();
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
        // The series keeps the flag: O_DIRECT overwrites inside EOF share
        // the lock, every other kind is exclusive for its own reason only.
        for (name, n, shared, exclusive) in [
            ("overwrite", 37, Some("eligible"), None),
            ("append", 23, None, Some("append")),
            ("past-eof", 29, None, Some("past_eof")),
            ("buffered", 31, None, Some("buffered")),
        ] {
            let shared: Vec<(&str, u64)> = shared.map(|r| (r, n)).into_iter().collect();
            let exclusive: Vec<(&str, u64)> = exclusive.map(|r| (r, n)).into_iter().collect();
            check(
                &snap,
                name,
                &Expect {
                    path: p,
                    writes: n,
                    shared: &shared,
                    exclusive: &exclusive,
                },
            );
        }
    } else {
        // Stock and unpatched 6.12 strip the flag at open (fs/fuse/iomode.c).
        check_mixed_without_flag(&snap, p);
    }
    let total = 37 + 23 + 29 + 31;
    assert_eq!(snap["totals"]["passthrough"]["writes"], total, "{snap}");
    assert_eq!(snap["totals"]["direct_io"]["writes"], 0, "{snap}");
    // Open-time evidence: passthrough_hp asked on every open (fuselock load
    // opens once per thread, 3 for the overwrites); only the series kept it.
    let open = &entry(&snap, "overwrite")["open"];
    let asked = open["passthrough_parallel_asked"]
        .as_u64()
        .expect("passthrough_parallel_asked");
    assert!(
        asked >= 3,
        "passthrough_hp did not ask for the flag: {open}"
    );
    let kept = &open["passthrough_parallel_kept"];
    if kernel() == Kernel::Patched {
        assert_eq!(kept, &open["passthrough_parallel_asked"], "{open}");
    } else {
        assert_eq!(kept, 0, "{open}");
    }
    assert_eq!(snap["health"]["recursion_misses"], 0, "{snap}");
}

/// `verify --exercise` on a passthrough_hp mount: ACTIVE with the series,
/// NOT ACTIVE (flag stripped) without it.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn passthrough_hp_verify_exercise_gives_the_kernels_verdict() {
    let fs = HpMount::mount();
    let file = fs.path("data");
    let content: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &content).expect("write file");
    let (code, report) = verify(&["--exercise", &file]);
    match kernel() {
        Kernel::Patched => {
            assert_eq!(
                (code, report["verdict"].as_str()),
                (0, Some("ACTIVE")),
                "{report}"
            );
            assert_eq!(report["why"], "shared_lock_taken", "{report}");
            assert_eq!(
                report["evidence"]["passthrough"]["acquisitions"]["shared"]["eligible"], 256,
                "{report}"
            );
            assert_eq!(report["shared_extended"], 0, "{report}");
        }
        Kernel::Stock | Kernel::Unpatched => {
            assert_eq!(
                (code, report["verdict"].as_str()),
                (1, Some("NOT_ACTIVE")),
                "{report}"
            );
            assert_eq!(report["why"], "flag_stripped", "{report}");
        }
    }
    // 256 direct overwrites, one buffered, one append, one past EOF.
    assert_eq!(
        report["evidence"]["passthrough"]["writes"],
        256 + 3,
        "{report}"
    );
    assert_eq!(report["evidence"]["recursion_misses"], 0, "{report}");
    assert_eq!(
        std::fs::read(&file).expect("read back"),
        content,
        "exercise changed the file"
    );
}

//! End-to-end tests on a real kernel with kprobes: run inside the VM by
//! `cargo xtask test` (they are `#[ignore]`d on the host, which cannot attach
//! probes). Each test mounts `fuselock testfs`, runs a workload of known
//! shape under `fuselock stat --json`, and asserts the **exact** counts.
//!
//! Every kind of write uses a different N, so a swapped reason cannot pass.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

const VM_ONLY: &str = "needs kprobes: runs in the VM via `cargo xtask test`";

fn fuselock() -> String {
    std::env::var("FUSELOCK_BIN").unwrap_or_else(|_| "fuselock".into())
}

/// A `fuselock testfs` mount over a fresh tmpfs backing directory.
struct TestFs {
    server: Child,
    mountpoint: PathBuf,
    backing: PathBuf,
}

static MOUNTS: AtomicU32 = AtomicU32::new(0);

fn is_mounted(mountpoint: &Path) -> bool {
    let needle = format!(" {} ", mountpoint.display());
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| m.contains(&needle))
}

impl TestFs {
    fn mount(flags: &[&str]) -> TestFs {
        let n = MOUNTS.fetch_add(1, Ordering::Relaxed);
        let base = PathBuf::from(format!("/tmp/fuselock-e2e-{}-{n}", std::process::id()));
        let backing = base.join("backing");
        let mountpoint = base.join("mnt");
        std::fs::create_dir_all(&backing).expect("backing dir");
        std::fs::create_dir_all(&mountpoint).expect("mountpoint");
        let server = Command::new(fuselock())
            .arg("testfs")
            .arg("--backing")
            .arg(&backing)
            .arg("--mountpoint")
            .arg(&mountpoint)
            .args(flags)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn fuselock testfs");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(&mountpoint) {
            assert!(Instant::now() < deadline, "testfs {flags:?} did not mount");
            thread::sleep(Duration::from_millis(50));
        }
        TestFs {
            server,
            mountpoint,
            backing,
        }
    }

    fn path(&self, name: &str) -> String {
        self.mountpoint.join(name).display().to_string()
    }
}

impl Drop for TestFs {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.server.id() as i32, libc::SIGTERM) };
        let _ = self.server.wait();
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.backing);
    }
}

/// One `fuselock load` invocation.
struct Load<'a> {
    file: &'a str,
    kind: &'a str,
    writes: u64,
    threads: u32,
}

impl Load<'_> {
    fn shell(&self, fs: &TestFs) -> String {
        format!(
            "{} load {} --kind {} --writes {} --threads {}",
            fuselock(),
            fs.path(self.file),
            self.kind,
            self.writes,
            self.threads
        )
    }
}

/// Runs `loads` one after another under `fuselock stat --json` and returns
/// its final snapshot.
fn stat_of(fs: &TestFs, loads: &[Load]) -> Value {
    let script: Vec<String> = loads.iter().map(|l| l.shell(fs)).collect();
    let script = format!("set -e; {}", script.join("; "));
    let out = Command::new(fuselock())
        .args(["stat", "--json", "--", "sh", "-c", &script])
        .stderr(Stdio::inherit())
        .output()
        .expect("run fuselock stat");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fuselock stat failed ({}): {stdout}",
        out.status
    );
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("a JSON snapshot");
    let snap: Value = serde_json::from_str(last).expect("valid JSON");
    assert_eq!(snap["final"], true);
    println!("snapshot: {last}");
    snap
}

fn entry<'a>(snap: &'a Value, name: &str) -> &'a Value {
    snap["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no entry for {name} in {snap}"))
}

/// What a file's entry must say, exactly.
struct Expect<'a> {
    path: &'a str,
    writes: u64,
    shared: &'a [(&'a str, u64)],
    exclusive: &'a [(&'a str, u64)],
}

const REASONS: [&str; 5] = [
    "eligible",
    "no_parallel_flag",
    "buffered",
    "append",
    "past_eof",
];

fn check(snap: &Value, name: &str, want: &Expect) {
    let e = entry(snap, name);
    let ctx = format!("{name}: {e}");
    assert_eq!(e["path"], want.path, "{ctx}");
    assert_eq!(e["writes"], want.writes, "{ctx}");
    assert_eq!(e["bytes"], want.writes * 4096, "{ctx}");
    assert_eq!(e["errors"], 0, "{ctx}");
    assert_eq!(e["unlocked"], 0, "{ctx}");
    let mut acquired = 0;
    for (mode, expected) in [("shared", want.shared), ("exclusive", want.exclusive)] {
        for reason in REASONS {
            let n = expected
                .iter()
                .find(|(r, _)| *r == reason)
                .map_or(0, |(_, n)| *n);
            assert_eq!(
                e["acquisitions"][mode][reason], n,
                "{mode}/{reason} of {ctx}"
            );
        }
        acquired += e[mode].as_u64().expect("count");
    }
    assert_eq!(
        acquired, want.writes,
        "every write is exactly one acquisition: {ctx}"
    );
    let mount = e["mount"].as_str().unwrap_or_default();
    assert!(mount.starts_with("/tmp/fuselock-e2e-"), "mount of {ctx}");
}

/// The mixed workload every scenario runs: one file per kind, different N.
fn mixed_loads() -> Vec<Load<'static>> {
    vec![
        Load {
            file: "overwrite",
            kind: "overwrite",
            writes: 37,
            threads: 3,
        },
        Load {
            file: "append",
            kind: "append",
            writes: 23,
            threads: 1,
        },
        Load {
            file: "past-eof",
            kind: "past-eof",
            writes: 29,
            threads: 2,
        },
        Load {
            file: "buffered",
            kind: "buffered",
            writes: 31,
            threads: 2,
        },
    ]
}

/// Stock 6.12 passthrough without the flag: every write exclusive, each for
/// the missing flag plus its own reason.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn passthrough_without_flag_is_all_exclusive() {
    let _ = VM_ONLY;
    let fs = TestFs::mount(&[]);
    let snap = stat_of(&fs, &mixed_loads());
    let p = "passthrough";
    check(
        &snap,
        "overwrite",
        &Expect {
            path: p,
            writes: 37,
            shared: &[],
            exclusive: &[("no_parallel_flag", 37)],
        },
    );
    check(
        &snap,
        "append",
        &Expect {
            path: p,
            writes: 23,
            shared: &[],
            exclusive: &[("no_parallel_flag", 23), ("append", 23)],
        },
    );
    check(
        &snap,
        "past-eof",
        &Expect {
            path: p,
            writes: 29,
            shared: &[],
            exclusive: &[("no_parallel_flag", 29), ("past_eof", 29)],
        },
    );
    check(
        &snap,
        "buffered",
        &Expect {
            path: p,
            writes: 31,
            shared: &[],
            exclusive: &[("no_parallel_flag", 31), ("buffered", 31)],
        },
    );
    assert_eq!(snap["totals"]["passthrough"]["writes"], 37 + 23 + 29 + 31);
    assert_eq!(
        snap["totals"]["passthrough"]["exclusive"],
        37 + 23 + 29 + 31
    );
    assert_eq!(snap["totals"]["direct_io"]["writes"], 0);
}

/// Stock 6.12 strips FOPEN_PARALLEL_DIRECT_WRITES from passthrough opens
/// (fs/fuse/iomode.c), so asking for it changes nothing: the flag is absent
/// at write time and every write is exclusive.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn passthrough_with_flag_requested_is_stripped_on_stock() {
    let fs = TestFs::mount(&["--parallel"]);
    let snap = stat_of(&fs, &mixed_loads());
    let p = "passthrough";
    check(
        &snap,
        "overwrite",
        &Expect {
            path: p,
            writes: 37,
            shared: &[],
            exclusive: &[("no_parallel_flag", 37)],
        },
    );
    check(
        &snap,
        "append",
        &Expect {
            path: p,
            writes: 23,
            shared: &[],
            exclusive: &[("no_parallel_flag", 23), ("append", 23)],
        },
    );
    check(
        &snap,
        "past-eof",
        &Expect {
            path: p,
            writes: 29,
            shared: &[],
            exclusive: &[("no_parallel_flag", 29), ("past_eof", 29)],
        },
    );
    check(
        &snap,
        "buffered",
        &Expect {
            path: p,
            writes: 31,
            shared: &[],
            exclusive: &[("no_parallel_flag", 31), ("buffered", 31)],
        },
    );
}

/// FOPEN_DIRECT_IO with the flag: `fuse_dio_lock()` takes the lock shared for
/// overwrites (direct or buffered: on this path buffered writes are direct
/// too) and exclusive for appends and writes past EOF.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn direct_io_with_flag_shares_overwrites() {
    let fs = TestFs::mount(&["--parallel", "--direct-io"]);
    let snap = stat_of(&fs, &mixed_loads());
    let d = "direct_io";
    check(
        &snap,
        "overwrite",
        &Expect {
            path: d,
            writes: 37,
            shared: &[("eligible", 37)],
            exclusive: &[],
        },
    );
    check(
        &snap,
        "append",
        &Expect {
            path: d,
            writes: 23,
            shared: &[],
            exclusive: &[("append", 23)],
        },
    );
    check(
        &snap,
        "past-eof",
        &Expect {
            path: d,
            writes: 29,
            shared: &[],
            exclusive: &[("past_eof", 29)],
        },
    );
    check(
        &snap,
        "buffered",
        &Expect {
            path: d,
            writes: 31,
            shared: &[("buffered", 31)],
            exclusive: &[],
        },
    );
    assert_eq!(snap["totals"]["passthrough"]["writes"], 0);
    assert_eq!(snap["totals"]["direct_io"]["shared"], 37 + 31);
}

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
    // Run the three concurrently.
    let script: Vec<String> = loads
        .iter()
        .map(|l| format!("{} &", l.shell(&fs)))
        .collect();
    let script = format!("{} wait", script.join(" "));
    let out = Command::new(fuselock())
        .args(["stat", "--json", "--", "sh", "-c", &script])
        .output()
        .expect("run fuselock stat");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let snap: Value = serde_json::from_str(stdout.lines().last().expect("line")).expect("json");
    println!("snapshot: {snap}");
    let p = "passthrough";
    for (name, n) in [("hot", 1003), ("f1", 101), ("f2", 103)] {
        check(
            &snap,
            name,
            &Expect {
                path: p,
                writes: n,
                shared: &[],
                exclusive: &[("no_parallel_flag", n)],
            },
        );
    }
    // Eight writers on one exclusive lock must have waited, and the waits
    // are timed.
    let hot = entry(&snap, "hot");
    assert!(
        hot["contended"]["exclusive"].as_u64().expect("contended") > 0,
        "no contention seen: {hot}"
    );
    assert!(
        hot["wait_ns_total"]["exclusive"].as_u64().expect("wait") > 0,
        "no wait time: {hot}"
    );
    assert_eq!(hot["contended"]["shared"], 0, "{hot}");
    let health = &snap["health"];
    for key in [
        "inflight_full",
        "inflight_replaced",
        "exit_unmatched",
        "read_errors",
        "lock_state_unknown",
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
    let out = Command::new(fuselock())
        .args(["stat", "--", "/nonexistent/cmd"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot run `/nonexistent/cmd`"), "{err}");
}

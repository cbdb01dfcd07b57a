//! Safe to run as root on a shared host: nothing of the user's is written,
//! no file is reached through a name someone else controls, privileges
//! really drop, and names cannot reach the terminal raw.

use std::{
    os::unix::{
        fs::PermissionsExt as _,
        process::{CommandExt as _, ExitStatusExt as _},
    },
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{
    as_the_unit, exported_probe_mode, exported_writes, exporter_command, exporter_mount, http_get,
    kernel, load_writes, root_probe_mode, serving, wait_for, Kernel,
};
use crate::common::{fuselock, TestFs};

/// Scratch files `verify --exercise` left in `dir`: read in the backing
/// directory, where no FUSE directory cache can hide a new entry.
fn scratch_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".fuselock-exercise."))
        .collect()
}

fn assert_kernels_verdict(code: i32, report: &Value) {
    match kernel() {
        Kernel::Patched => assert_eq!(
            (code, report["verdict"].as_str()),
            (0, Some("ACTIVE")),
            "{report}"
        ),
        Kernel::Stock | Kernel::Unpatched => assert_eq!(
            (code, report["verdict"].as_str()),
            (1, Some("NOT_ACTIVE")),
            "{report}"
        ),
    }
    assert_eq!(report["evidence"]["passthrough"]["writes"], 256 + 3);
}

/// An application appends numbered lines to a file while `verify
/// --exercise` is pointed at that very file: it writes all through the
/// exercise, every line it wrote is there, in order, and the verdict is the
/// one the kernel deserves.
///
/// The application pauses while fuselock attaches and detaches. Live text
/// patching of a function another vCPU runs in a tight loop leaves, under
/// qemu's multi-threaded TCG, a stale breakpoint often enough to fail this
/// test on the tiny kernels (docs/development.md, "When the guest kernel
/// oopses"); the exercise's writes, which are what the test is about, all
/// happen while the application writes.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn exercise_leaves_an_applications_writes_alone() {
    let fs = TestFs::mount(&["--parallel"]);
    let log = fs.path("app.log");
    std::fs::write(&log, b"").expect("create the log");
    let (stop, pause) = ("/tmp/app-stop", "/tmp/app-pause");
    let _ = std::fs::remove_file(stop);
    let _ = std::fs::remove_file(pause);
    let app = Command::new("sh")
        .args([
            "-c",
            &format!(
                "i=0; while [ ! -e {stop} ]; do \
                   if [ -e {pause} ]; then sleep 0.01; continue; fi; \
                   echo line-$i >> {log}; i=$((i+1)); \
                 done; echo $i"
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the application");
    let log_len = || std::fs::metadata(&log).map_or(0, |m| m.len());
    wait_for("the application's first lines", 30, || log_len() > 100);
    let paused = || {
        std::fs::write(pause, b"").expect("pause the application");
        // One write may be under way: paused once the log stands still.
        let mut before = log_len();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = log_len();
            if now == before {
                return now;
            }
            before = now;
        }
    };
    paused();

    let mut verify = Command::new(fuselock())
        .args(["verify", "--json", "--exercise", &log])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start verify");
    let stderr = std::io::BufReader::new(verify.stderr.take().expect("stderr"));
    let mut lines = std::io::BufRead::lines(stderr);
    let mut at_start = None;
    for line in lines.by_ref() {
        let line = line.expect("verify's stderr");
        eprintln!("{line}");
        if line.starts_with("verify: exercising the scratch file") {
            // Attached: the application writes through the exercise.
            at_start = Some(log_len());
            std::fs::remove_file(pause).expect("resume the application");
            break;
        }
    }
    let Some(at_start) = at_start else {
        let out = verify.wait_with_output().expect("verify");
        panic!(
            "verify did not start its exercise: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    };
    // The exercise removes its scratch file when done, before fuselock
    // detaches: pause the application as soon as it is gone.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !scratch_files(&fs.backing).is_empty() {
        assert!(Instant::now() < deadline, "the exercise did not end");
        std::thread::sleep(Duration::from_millis(5));
    }
    let at_end = paused();
    for line in lines {
        eprintln!("{}", line.expect("verify's stderr"));
    }
    let out = verify.wait_with_output().expect("verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let code = out.status.code().expect("exit status");
    assert!(
        at_end > at_start,
        "the application wrote nothing during the exercise ({at_start} bytes before and after): \
         the test proves nothing"
    );
    std::fs::write(stop, b"").expect("stop the application");
    let out = app.wait_with_output().expect("application");
    let _ = std::fs::remove_file(pause);
    let lines: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("line count");
    let expected: String = (0..lines).map(|i| format!("line-{i}\n")).collect();
    let content = std::fs::read_to_string(&log).expect("read the log");
    assert!(
        content == expected,
        "the application's {lines} lines were changed ({} bytes, expected {})",
        content.len(),
        expected.len()
    );
    println!(
        "the application wrote {lines} lines, {} bytes of them during the exercise, all intact",
        at_end - at_start
    );
    assert_kernels_verdict(code, &report);
    assert!(
        report["note"].is_null(),
        "same flags for both files: {report}"
    );
    assert!(report["exercise"]["scratch_file"]
        .as_str()
        .is_some_and(|s| s.contains("/.fuselock-exercise.")));
    assert_eq!(scratch_files(&fs.backing), Vec::<String>::new());
}

/// `kill -9` in the middle of an exercise leaves the scratch file; the next
/// run removes it, and leaves none of its own.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn a_killed_exercise_leaves_its_scratch_file_to_the_next_run() {
    let fs = TestFs::mount(&["--parallel"]);
    let dir = fs.mountpoint.to_str().expect("utf8").to_owned();
    let mut victim = Command::new(fuselock())
        .args(["verify", "--exercise", &dir])
        .stdout(Stdio::null())
        .spawn()
        .expect("start verify");
    let deadline = Instant::now() + Duration::from_secs(120);
    while scratch_files(&fs.backing).is_empty() {
        assert!(Instant::now() < deadline, "no scratch file appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    victim.kill().expect("kill -9");
    victim.wait().expect("wait");
    let left = scratch_files(&fs.backing);
    assert_eq!(left.len(), 1, "{left:?}");
    let out = Command::new(fuselock())
        .args(["verify", "--json", "--exercise", &dir])
        .output()
        .expect("verify again");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("removed {dir}/{}", left[0])),
        "the stale file was not removed: {err}"
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_kernels_verdict(out.status.code().expect("status"), &report);
    assert_eq!(scratch_files(&fs.backing), Vec::<String>::new());
}

/// SIGHUP (the terminal closed) in the middle of an exercise: it stops,
/// fuselock exits as interrupted, and its scratch file is gone, not left to
/// the next run.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn a_hangup_ends_the_exercise_and_removes_its_scratch_file() {
    let fs = TestFs::mount(&["--parallel"]);
    let dir = fs.mountpoint.to_str().expect("utf8").to_owned();
    let verify = Command::new(fuselock())
        .args(["verify", "--exercise", &dir])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start verify");
    let deadline = Instant::now() + Duration::from_secs(120);
    while scratch_files(&fs.backing).is_empty() {
        assert!(Instant::now() < deadline, "no scratch file appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill(2) on our own child.
    assert_eq!(
        unsafe { libc::kill(verify.id() as i32, libc::SIGHUP) },
        0,
        "SIGHUP"
    );
    let out = verify.wait_with_output().expect("verify");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.signal().is_none(),
        "killed by SIGHUP, not ended by it: {err}"
    );
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_eq!(scratch_files(&fs.backing), Vec::<String>::new(), "{err}");
}

/// Another file renamed to the scratch file's name while the exercise runs
/// (as a user who may write to the directory could): not one byte of it is
/// written. It is kept under a second name, so that its contents can be
/// checked whatever became of the first: the rename happens in the backing
/// directory, behind the kernel's dentry cache, where no check by name can
/// see it for the entry's TTL.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn a_file_renamed_over_the_scratch_file_is_not_written() {
    let fs = TestFs::mount(&["--parallel"]);
    let dir = fs.mountpoint.to_str().expect("utf8").to_owned();
    let victim = fs.backing.join("victim");
    let kept = fs.backing.join("victim-kept");
    let contents = b"someone else's file\n".repeat(4096);
    std::fs::write(&victim, &contents).expect("write the victim");
    std::fs::hard_link(&victim, &kept).expect("second name");
    let verify = Command::new(fuselock())
        .args(["verify", "--json", "--exercise", &dir])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start verify");
    let deadline = Instant::now() + Duration::from_secs(120);
    let scratch = loop {
        if let Some(name) = scratch_files(&fs.backing).pop() {
            break name;
        }
        assert!(Instant::now() < deadline, "no scratch file appeared");
        std::thread::sleep(Duration::from_millis(1));
    };
    std::fs::rename(&victim, fs.backing.join(&scratch)).expect("rename over the scratch file");
    let out = verify.wait_with_output().expect("verify");
    println!(
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&kept).expect("read the victim") == contents,
        "the file renamed to the scratch name was written"
    );
}

/// `record --force` as root: a file of another user's, and a hard link to
/// a file of root's, are refused (exit 3) and left as they were.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn record_force_refuses_other_users_files_and_hard_links() {
    let dir = Path::new("/tmp/record-force-safety");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("dir");
    let theirs = dir.join("theirs");
    std::fs::write(&theirs, b"theirs").expect("write");
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
    let precious = dir.join("precious");
    std::fs::write(&precious, b"precious").expect("write");
    let link = dir.join("link");
    std::fs::hard_link(&precious, &link).expect("hard link");
    for (file, why) in [(&theirs, "belongs to uid 65534"), (&link, "hard links")] {
        let out = Command::new(fuselock())
            .arg("record")
            .arg(file)
            .args(["--force", "--", "true"])
            .output()
            .expect("record");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains(why), "{err}");
    }
    assert_eq!(std::fs::read(&theirs).expect("read"), b"theirs");
    assert_eq!(std::fs::read(&precious).expect("read"), b"precious");
    let _ = std::fs::remove_dir_all(dir);
}

/// A file name with a terminal escape and a newline, written on a real
/// mount: `stat`'s table shows it escaped.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn names_are_escaped_in_the_table() {
    let fs = TestFs::mount(&[]);
    let evil = "evil\u{1b}]52;c;aGk=\u{7}\nFORGED 0:0:0 passthrough 999";
    let path = fs.path(evil);
    let out = Command::new(fuselock())
        .args(["stat", "--", &fuselock(), "load", &path, "--writes", "3"])
        .output()
        .expect("stat");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        !stdout.contains('\u{1b}') && !stdout.contains('\u{7}'),
        "raw control characters reached the terminal: {stdout:?}"
    );
    assert!(
        stdout.contains("evil\\x1b]52;c;aGk=\\x07\\nFORGED 0:0:0 passthrough 999"),
        "{stdout}"
    );
    assert!(
        !stdout.lines().any(|l| l.starts_with("FORGED")),
        "a forged row: {stdout}"
    );
}

/// `record`: an existing file or a symlink is refused and left alone; the
/// file it makes is private.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn record_refuses_existing_files_and_symlinks() {
    let dir = Path::new("/tmp/record-safety");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("dir");
    let existing = dir.join("existing");
    std::fs::write(&existing, b"precious").expect("write");
    let target = dir.join("target");
    let link = dir.join("link");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let record = |file: &Path, extra: &[&str]| {
        Command::new(fuselock())
            .arg("record")
            .arg(file)
            .args(extra)
            .args(["--", "true"])
            .output()
            .expect("record")
    };
    let out = record(&existing, &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));
    assert_eq!(std::fs::read(&existing).expect("read"), b"precious");
    for extra in [&[][..], &["--force"][..]] {
        let out = record(&link, extra);
        assert_eq!(out.status.code(), Some(3), "{extra:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("symbolic link"));
        assert!(!target.exists(), "written through the symlink");
    }
    let new = dir.join("new.jsonl");
    assert!(record(&new, &[]).status.success());
    let replaced = record(&existing, &["--force"]);
    assert!(replaced.status.success());
    for file in [&new, &existing] {
        let meta = std::fs::metadata(file).expect("stat");
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{}",
            file.display()
        );
        let text = std::fs::read_to_string(file).expect("read");
        assert!(text.starts_with('{'), "{text}");
    }
}

/// The shipped unit, read at build time: the test grants exactly what it
/// grants.
const UNIT: &str = include_str!("../../../deploy/systemd/fuselock-exporter.service");

/// The capabilities on the unit's `KEY=` line, as a mask.
fn unit_capabilities(key: &str) -> u64 {
    let line = UNIT
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in the unit"));
    line.split_whitespace()
        .map(|name| match name {
            "CAP_SYS_ADMIN" => 21,
            "CAP_SYS_RESOURCE" => 24,
            "CAP_PERFMON" => 38,
            "CAP_BPF" => 39,
            other => panic!("{other}: not in the test's table"),
        })
        .fold(0, |mask, cap: u64| mask | 1 << cap)
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The core tier: what `cargo xtask test` runs on every kernel of its matrix
/// (it selects tests by this module's name).
mod core_tier {
    use super::*;

    /// `export` with exactly what the shipped systemd unit gives it: a
    /// non-root user with the unit's capabilities as ambient capabilities and
    /// as the bounding set, no CAP_SETPCAP. It attaches the probes root would
    /// (kprobes on a preemptible kernel, where fentry would skip runs), keeps
    /// CAP_BPF alone, and serves exact counts (for a minute on 6.12).
    #[test]
    #[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
    fn export_keeps_serving_with_the_shipped_units_capabilities() {
        let Some(fs) = exporter_mount() else {
            return;
        };
        let port = 9951;
        let unit_caps = unit_capabilities("AmbientCapabilities=");
        assert_eq!(unit_caps, unit_capabilities("CapabilityBoundingSet="));
        let root_mode = root_probe_mode();
        let mut cmd = exporter_command(port);
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || as_the_unit(unit_caps));
        }
        let exporter = serving(cmd, port);
        let pid = exporter.0.id();
        assert_eq!(status_field(pid, "Uid:"), "65534 65534 65534 65534");
        assert_eq!(status_field(pid, "CapEff:"), "0000008000000000");
        assert_eq!(status_field(pid, "CapPrm:"), "0000008000000000");
        // Where root attaches kprobes (a preemptible kernel), so must the unit:
        // fentry there skips runs. Elsewhere the unit may pick kprobes where
        // root picks fentry (it cannot read debugfs for the preemption model),
        // exact either way.
        let unit_mode = exported_probe_mode(port);
        println!("probe mode: {unit_mode} under the unit, {root_mode} as root");
        if root_mode == "kprobe" {
            assert_eq!(unit_mode, "kprobe");
        }
        let long = std::env::var("FUSELOCK_TEST_KERNEL").as_deref() == Ok("stock");
        let started = Instant::now();
        let mut expected = 0;
        let rounds: &[(u32, u32)] = if long {
            &[(0, 111), (1, 222), (2, 333)]
        } else {
            &[(0, 111)]
        };
        for &(round, writes) in rounds {
            load_writes(&fs, &format!("f{round}"), writes);
            expected += u64::from(writes);
            wait_for(&format!("{expected} writes exported"), 30, || {
                exported_writes(port) == Some(expected)
            });
            if long {
                let until = Duration::from_secs(25 * u64::from(round + 1));
                std::thread::sleep(until.saturating_sub(started.elapsed()));
            }
        }
        if long {
            assert!(started.elapsed() >= Duration::from_secs(60));
        }
        assert_eq!(exported_writes(port), Some(expected));
        assert_eq!(
            http_get(&format!("http://127.0.0.1:{port}/healthz")).as_deref(),
            Some("ok\n")
        );
    }

    /// The README's first command: the table and the verdict, exit 0, and
    /// nothing left behind.
    #[test]
    #[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
    fn plain_demo_prints_its_table_and_verdict() {
        let out = Command::new(fuselock())
            .args(["demo", "--writes", "120"])
            .output()
            .expect("demo");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("{stdout}");
        assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
        for (file, excl_reason_column) in [
            ("overwrite", None),
            ("buffered", Some(7)),
            ("append.log", Some(8)),
            ("grow", Some(9)),
        ] {
            let row: Vec<&str> = stdout
                .lines()
                .find(|l| {
                    l.split_whitespace()
                        .next()
                        .is_some_and(|f| f.ends_with(&format!("/mnt/{file}")))
                })
                .unwrap_or_else(|| panic!("no row for {file}:\n{stdout}"))
                .split_whitespace()
                .collect();
            assert_eq!(row[2], "passthrough", "{row:?}");
            assert_eq!(row[3], "120", "WRITES of {file}: {row:?}");
            if let Some(column) = excl_reason_column {
                assert_eq!(row[5], "120", "every {file} write is exclusive: {row:?}");
                assert_eq!(row[column], "120", "{file}'s reason: {row:?}");
            }
        }
        let verdict = stdout
            .lines()
            .find(|l| l.contains("ACTIVE"))
            .unwrap_or_else(|| panic!("no verdict:\n{stdout}"));
        match kernel() {
            Kernel::Patched => assert_eq!(
                verdict,
                "ACTIVE: 256 eligible direct overwrites took the shared lock"
            ),
            Kernel::Stock | Kernel::Unpatched => {
                assert!(verdict.starts_with("NOT ACTIVE: "), "{verdict}");
            }
        }
        let left: Vec<_> = std::fs::read_dir("/tmp")
            .expect("/tmp")
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("fuselock-demo-")
            })
            .collect();
        assert!(left.is_empty(), "demo left {left:?}");
    }
}

//! What every VM test shares: which kernel booted, workloads of known shape
//! under `fuselock stat --json`, the exact expectations they are checked
//! against, `verify`, and small helpers (HTTP, waiting, the loaded programs).

use std::process::{Command, Stdio};

use serde_json::Value;

use super::common::{fuselock, TestFs};

mod contexts;
mod exporter;
pub(crate) use contexts::*;
pub(crate) use exporter::*;

/// Which kernel the VM booted: `cargo xtask test` says so in
/// `FUSELOCK_TEST_KERNEL`, since the expected lock modes differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// Debian's stock 6.12 cloud kernel.
    Stock,
    /// A tiny kernel with the parallel-direct-writes series, v2 or v3 (see
    /// [`series_v3`]): what they share.
    Patched,
    /// The same tree and config without it.
    Unpatched,
}

pub(crate) fn kernel() -> Kernel {
    match std::env::var("FUSELOCK_TEST_KERNEL").as_deref() {
        Ok("patched" | "patched-v3") => Kernel::Patched,
        Ok("unpatched") => Kernel::Unpatched,
        _ => Kernel::Stock,
    }
}

/// Whether the series is v3, which re-checks EOF under the shared lock.
pub(crate) fn series_v3() -> bool {
    std::env::var("FUSELOCK_TEST_KERNEL").as_deref() == Ok("patched-v3")
}

/// One `fuselock load` invocation.
pub(crate) struct Load<'a> {
    pub(crate) file: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) writes: u64,
    pub(crate) threads: u32,
}

impl Load<'_> {
    pub(crate) fn shell(&self, fs: &TestFs) -> String {
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
pub(crate) fn stat_of(fs: &TestFs, loads: &[Load]) -> Value {
    stat_with(fs, loads, &["--contention"])
}

/// [`stat_of`] with these flags for `fuselock stat`.
pub(crate) fn stat_with(fs: &TestFs, loads: &[Load], flags: &[&str]) -> Value {
    let script: Vec<String> = loads.iter().map(|l| l.shell(fs)).collect();
    stat_of_script(&format!("set -e; {}", script.join("; ")), flags)
}

/// Runs `loads` all at once, each with `load_flags` added, under `fuselock
/// stat --json` with `flags`, and returns its final snapshot.
pub(crate) fn stat_concurrently(
    fs: &TestFs,
    loads: &[Load],
    load_flags: &str,
    flags: &[&str],
) -> Value {
    let script: Vec<String> = loads
        .iter()
        .map(|l| format!("{} {load_flags} &", l.shell(fs)))
        .collect();
    stat_of_script(&format!("{} wait", script.join(" ")), flags)
}

/// Runs the shell `script` under `fuselock stat --json` with `flags`.
pub(crate) fn stat_of_script(script: &str, flags: &[&str]) -> Value {
    let out = Command::new(fuselock())
        .args(["stat", "--json"])
        .args(flags)
        .args(["--", "sh", "-c", script])
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

/// `fuselock stat --json` with `flags`, refreshing once an hour, once it
/// has printed its first snapshot (its probes are attached).
pub(crate) fn stat_attached(flags: &[&str]) -> std::process::Child {
    let mut child = Command::new(fuselock())
        .args(["stat", "--json", "--interval", "3600"])
        .args(flags)
        .stdout(Stdio::piped())
        .spawn()
        .expect("fuselock stat");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("first snapshot");
    assert!(line.starts_with('{'), "{line}");
    child
}

pub(crate) fn entry<'a>(snap: &'a Value, name: &str) -> &'a Value {
    snap["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no entry for {name} in {snap}"))
}

/// What a file's entry must say, exactly.
pub(crate) struct Expect<'a> {
    pub(crate) path: &'a str,
    pub(crate) writes: u64,
    pub(crate) shared: &'a [(&'a str, u64)],
    pub(crate) exclusive: &'a [(&'a str, u64)],
}

/// Every reason's JSON key, from the one declaration of the reasons: a
/// count under a reason an expectation does not name must be 0.
pub(crate) fn reasons() -> impl Iterator<Item = &'static str> {
    probes_common::Reason::ALL
        .into_iter()
        .map(probes_common::Reason::name)
}

pub(crate) fn check(snap: &Value, name: &str, want: &Expect) {
    let e = entry(snap, name);
    let ctx = format!("{name}: {e}");
    assert_eq!(e["path"], want.path, "{ctx}");
    assert_eq!(e["writes"], want.writes, "{ctx}");
    assert_eq!(e["bytes"], want.writes * 4096, "{ctx}");
    assert_eq!(e["errors"], 0, "{ctx}");
    assert_eq!(e["unlocked"], 0, "{ctx}");
    let mut acquired = 0;
    for (mode, expected) in [("shared", want.shared), ("exclusive", want.exclusive)] {
        for reason in reasons() {
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
pub(crate) fn mixed_loads() -> Vec<Load<'static>> {
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

/// The mixed workload's counts when the open lacks the flag at write time:
/// every write exclusive, for the missing flag plus its own reason.
pub(crate) fn check_mixed_without_flag(snap: &Value, path: &str) {
    check(
        snap,
        "overwrite",
        &Expect {
            path,
            writes: 37,
            shared: &[],
            exclusive: &[("no_parallel_flag", 37)],
        },
    );
    check(
        snap,
        "append",
        &Expect {
            path,
            writes: 23,
            shared: &[],
            exclusive: &[("no_parallel_flag", 23), ("append", 23)],
        },
    );
    check(
        snap,
        "past-eof",
        &Expect {
            path,
            writes: 29,
            shared: &[],
            exclusive: &[("no_parallel_flag", 29), ("past_eof", 29)],
        },
    );
    check(
        snap,
        "buffered",
        &Expect {
            path,
            writes: 31,
            shared: &[],
            exclusive: &[("no_parallel_flag", 31), ("buffered", 31)],
        },
    );
}

/// The mixed workload where the kernel keeps the flag: O_DIRECT overwrites
/// inside EOF share the lock, and every other kind is exclusive for its own
/// reason only, but buffered writes, which share it where they are direct
/// too (`buffered_shared`: FOPEN_DIRECT_IO).
pub(crate) fn check_mixed_with_flag(snap: &Value, path: &str, buffered_shared: bool) {
    let buffered = if buffered_shared {
        (Some("buffered"), None)
    } else {
        (None, Some("buffered"))
    };
    for (name, n, (shared, exclusive)) in [
        ("overwrite", 37, (Some("eligible"), None)),
        ("append", 23, (None, Some("append"))),
        ("past-eof", 29, (None, Some("past_eof"))),
        ("buffered", 31, buffered),
    ] {
        let shared: Vec<(&str, u64)> = shared.map(|r| (r, n)).into_iter().collect();
        let exclusive: Vec<(&str, u64)> = exclusive.map(|r| (r, n)).into_iter().collect();
        check(
            snap,
            name,
            &Expect {
                path,
                writes: n,
                shared: &shared,
                exclusive: &exclusive,
            },
        );
    }
}

/// Open-time evidence of the mixed workload's overwrite file, whose server
/// asked for the flag on every open: only a patched kernel kept it.
pub(crate) fn check_flag_asked_and_kept_if_patched(snap: &Value) {
    let open = &entry(snap, "overwrite")["open"];
    let asked = open["passthrough_parallel_asked"]
        .as_u64()
        .expect("passthrough_parallel_asked");
    // `fuselock load` opens once per thread, 3 for the overwrites.
    assert!(asked >= 3, "the server did not ask for the flag: {open}");
    let kept = &open["passthrough_parallel_kept"];
    if kernel() == Kernel::Patched {
        assert_eq!(kept, &open["passthrough_parallel_asked"], "{open}");
    } else {
        assert_eq!(kept, 0, "{open}");
    }
}

/// None of the health counters that mean a write was lost or misread
/// moved (`what` says which run, in a message).
pub(crate) fn assert_no_lost_writes(snap: &Value, what: &str) {
    let health = &snap["health"];
    for key in [
        "inflight_full",
        "inflight_replaced",
        "exit_unmatched",
        "read_errors",
        "lock_state_unknown",
    ] {
        assert_eq!(health[key], 0, "{what} health.{key}: {health}");
    }
}

/// Runs `fuselock ARGS`, which must exit with `code` and say `needle` on
/// stderr.
pub(crate) fn fails_with(args: &[&str], code: i32, needle: &str) {
    let out = Command::new(fuselock()).args(args).output().expect("run");
    assert_eq!(out.status.code(), Some(code));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "{err}");
}

/// `verify`'s exit status, verdict and reason are `code`, `verdict` and `why`.
pub(crate) fn assert_verdict(
    code: i32,
    report: &Value,
    expected_code: i32,
    verdict: &str,
    why: &str,
) {
    assert_eq!(
        (code, report["verdict"].as_str(), report["why"].as_str()),
        (expected_code, Some(verdict), Some(why)),
        "{report}"
    );
}

/// Runs `fuselock verify ARGS --json` and returns (exit status, report).
pub(crate) fn verify(args: &[&str]) -> (i32, Value) {
    let out = Command::new(fuselock())
        .args(["verify", "--json"])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run fuselock verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    println!("verify {args:?}: {report}");
    (out.status.code().expect("exit status"), report)
}

/// `verify --exercise` on a file of `fs`, whose server asks for the flag:
/// ACTIVE with the series, NOT ACTIVE (flag stripped) without it, on counts
/// the kernel skipped nothing of, and the file as it was. The report, for
/// more checks.
pub(crate) fn check_verify_exercise(fs: &TestFs) -> Value {
    let file = fs.path("data");
    let content: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &content).expect("write file");
    let (code, report) = verify(&["--exercise", &file]);
    match kernel() {
        Kernel::Patched => {
            assert_verdict(code, &report, 0, "ACTIVE", "shared_lock_taken");
            assert_eq!(
                report["evidence"]["passthrough"]["acquisitions"]["shared"]["eligible"], 256,
                "{report}"
            );
            assert_eq!(report["shared_extended"], 0, "{report}");
        }
        Kernel::Stock | Kernel::Unpatched => {
            assert_verdict(code, &report, 1, "NOT_ACTIVE", "flag_stripped");
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
    report
}

/// `wget -qO-` from busybox: the guest has no other HTTP client.
/// The VM boots with `lo` down.
pub(crate) fn loopback_up() {
    let _ = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
}

pub(crate) fn http_get(url: &str) -> Option<String> {
    let out = Command::new("wget").args(["-qO-", url]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Kills a child on drop.
pub(crate) struct Guard(pub(crate) std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

pub(crate) fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// Names of every BPF program loaded in the kernel, from
/// `BPF_PROG_GET_NEXT_ID` + `BPF_OBJ_GET_INFO_BY_FD` (no bpftool in the VM).
pub(crate) fn loaded_bpf_programs() -> Vec<String> {
    const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let mut names = Vec::new();
    let mut id: u32 = 0;
    loop {
        // attr: { start_id, next_id } for GET_NEXT_ID; { prog_id } for GET_FD_BY_ID.
        let mut attr = [0u32; 4];
        attr[0] = id;
        // SAFETY: bpf(2) with a zeroed attr large enough for these commands.
        let r =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_GET_NEXT_ID, attr.as_mut_ptr(), 16) };
        if r < 0 {
            return names;
        }
        id = attr[1];
        let mut attr = [0u32; 4];
        attr[0] = id;
        // SAFETY: as above.
        let fd =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_GET_FD_BY_ID, attr.as_mut_ptr(), 16) };
        if fd < 0 {
            continue;
        }
        // struct bpf_prog_info: name[16] at offset 64.
        let mut info = [0u8; 256];
        let mut attr = [0u64; 2];
        attr[0] = (fd as u64) | ((info.len() as u64) << 32); // bpf_fd, info_len
        attr[1] = info.as_mut_ptr() as u64;
        // SAFETY: info points at 256 writable bytes, the length we pass.
        let r =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, attr.as_mut_ptr(), 16) };
        // SAFETY: closing the fd we just got.
        unsafe { libc::close(fd as i32) };
        if r == 0 {
            let name = &info[64..80];
            let len = name.iter().position(|b| *b == 0).unwrap_or(16);
            names.push(String::from_utf8_lossy(&name[..len]).into_owned());
        }
    }
}

pub(crate) fn fuselock_programs() -> Vec<String> {
    loaded_bpf_programs()
        .into_iter()
        .filter(|n| {
            n.starts_with("write_")
                || n.starts_with("open_")
                || n.contains("_locked_")
                || n.starts_with("contention_")
        })
        .collect()
}

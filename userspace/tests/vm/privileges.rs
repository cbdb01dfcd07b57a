//! What fuselock holds once its probes are attached, read from the kernel's
//! side (`/proc/PID/task/*/status`) for every thread of every process it
//! runs: the command itself, the probe-event reaper, `demo`'s mount keeper.
//! Also: executables with file capabilities are refused, a root fuselock
//! leaves root for an account of its own, and the DaemonSet's security
//! context is enough for exact counts.

use std::{
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::{
    as_nobody, as_the_daemonset, exported_probe_mode, exported_writes, exporter_command,
    exporter_mount, load_writes, root_probe_mode, serving, stat_attached, wait_for,
};
use crate::common::{fuselock, running, tmux::Tmux};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
const BPF_ONLY: u64 = 1 << CAP_BPF;
/// Where fuselock looks for an unused uid when there is no `fuselock` user.
const SPARE_IDS_START: u32 = 1_879_048_192;

/// One thread's credentials.
#[derive(Debug)]
struct Creds {
    tid: String,
    uids: Vec<u32>,
    gids: Vec<u32>,
    groups: String,
    effective: u64,
    permitted: u64,
    inheritable: u64,
    ambient: u64,
    bounding: u64,
    no_new_privs: bool,
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
}

fn parse(tid: String, status: &str) -> Creds {
    let ids = |name| -> Vec<u32> {
        field(status, name)
            .split_whitespace()
            .map(|v| v.parse().expect("an id"))
            .collect()
    };
    let mask = |name| u64::from_str_radix(field(status, name), 16).expect("a mask");
    Creds {
        tid,
        uids: ids("Uid:"),
        gids: ids("Gid:"),
        groups: field(status, "Groups:").to_owned(),
        effective: mask("CapEff:"),
        permitted: mask("CapPrm:"),
        inheritable: mask("CapInh:"),
        ambient: mask("CapAmb:"),
        bounding: mask("CapBnd:"),
        no_new_privs: field(status, "NoNewPrivs:") == "1",
    }
}

/// Every thread of `pid`, as it is now; `None` once it has gone.
fn try_threads_of(pid: u32) -> Option<Vec<Creds>> {
    let mut all = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        // A thread that ended meanwhile holds nothing.
        if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
            all.push(parse(
                task.file_name().to_string_lossy().into_owned(),
                &status,
            ));
        }
    }
    (!all.is_empty()).then_some(all)
}

fn threads_of(pid: u32) -> Vec<Creds> {
    try_threads_of(pid).unwrap_or_else(|| panic!("process {pid} has gone"))
}

/// What a process must show in every one of its threads.
struct Expect {
    caps: u64,
    /// `Some(true)`: a uid of its own (not 0, not nobody's); `Some(false)`:
    /// still uid 0.
    left_root: Option<bool>,
}

fn assert_threads(pid: u32, what: &str, want: &Expect) -> Vec<Creds> {
    let threads = threads_of(pid);
    for t in &threads {
        let ctx = format!("{what} (pid {pid}), thread {}: {t:?}", t.tid);
        assert_eq!(t.effective, want.caps, "CapEff of {ctx}");
        assert_eq!(t.permitted, want.caps, "CapPrm of {ctx}");
        assert_eq!(t.inheritable, 0, "CapInh of {ctx}");
        assert_eq!(t.ambient, 0, "CapAmb of {ctx}");
        assert!(t.no_new_privs, "NoNewPrivs of {ctx}");
        match want.left_root {
            Some(true) => {
                let uid = t.uids[0];
                assert!(t.uids.iter().all(|&u| u == uid), "{ctx}");
                assert!(uid != 0 && uid != 65_534, "uid of {ctx}");
                assert!(t.gids.iter().all(|&g| g != 0 && g != 65_534), "{ctx}");
                assert_eq!(t.groups, "", "groups of {ctx}");
            }
            Some(false) => assert!(t.uids.iter().all(|&u| u == 0), "{ctx}"),
            None => {}
        }
    }
    println!(
        "{what} (pid {pid}): {} threads, each CapEff {:#x}, uids {:?}",
        threads.len(),
        want.caps,
        threads[0].uids
    );
    threads
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field(&status, "PPid:").parse().ok()
}

/// The probe-event reaper of `pid`; `None` where kprobe mode runs without
/// tracefs (then there are no events to reap).
fn reaper_of(pid: u32) -> Option<u32> {
    if !Path::new("/sys/kernel/tracing/kprobe_events").exists() {
        println!("no tracefs: kprobe mode attaches without a reaper");
        return None;
    }
    let reapers: Vec<u32> = running("reap-probe-events")
        .into_iter()
        .filter(|r| parent_of(*r) == Some(pid))
        .collect();
    assert_eq!(reapers.len(), 1, "reapers of {pid}: {reapers:?}");
    Some(reapers[0])
}

/// `pid`'s main thread holds CAP_BPF alone: the drop has happened.
fn dropped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .is_ok_and(|s| u64::from_str_radix(field(&s, "CapEff:"), 16) == Ok(BPF_ONLY))
}

/// A root fuselock and its reaper, once attached: every thread of fuselock
/// holds CAP_BPF alone under a uid of its own, the reaper nothing at all.
fn assert_dropped_with_reaper(pid: u32, what: &str) {
    wait_for(&format!("{what} to drop its privileges"), 120, || {
        dropped(pid)
    });
    assert_threads(
        pid,
        what,
        &Expect {
            caps: BPF_ONLY,
            left_root: Some(true),
        },
    );
    if let Some(reaper) = reaper_of(pid) {
        // The reaper drops as soon as it starts: give it that moment.
        wait_for("the reaper to drop its privileges", 30, || {
            threads_of(reaper).iter().all(|t| t.permitted == 0)
        });
        assert_threads(
            reaper,
            &format!("{what}'s probe-event reaper"),
            &Expect {
                caps: 0,
                left_root: Some(true),
            },
        );
    }
}

/// `stat` in kprobe mode (which starts the reaper): every thread and the
/// reaper drop.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn stat_drops_in_every_thread_and_its_reaper_holds_nothing() {
    let mut child = stat_attached(&["--probe-mode", "kprobe"]);
    let pid = child.id();
    assert_dropped_with_reaper(pid, "stat");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    assert!(child.wait().expect("wait").success());
}

/// `export` in kprobe mode, as root: the same, while it serves.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn export_drops_in_every_thread_and_its_reaper_holds_nothing() {
    let Some(_fs) = exporter_mount() else {
        return;
    };
    let port = 9954;
    let mut cmd = exporter_command(port);
    cmd.args(["--probe-mode", "kprobe"]);
    let exporter = serving(cmd, port);
    assert_dropped_with_reaper(exporter.0.id(), "export");
}

/// A shell command line in a 120x32 tmux terminal; `None` (and a loud
/// SKIPPED) on a kernel without ptys.
fn in_terminal(args: &str) -> Option<Tmux> {
    if !Path::new("/dev/pts/ptmx").exists() {
        eprintln!("SKIPPED: this kernel has no ptys (no /dev/pts/ptmx) for tmux");
        return None;
    }
    let cmd = format!("sh -c '{} {args}; echo EXITED $?; sleep 600'", fuselock());
    let t = Tmux::start(&cmd, 120, 32).expect("tmux is in the VM image");
    Some(t.with_patience(Duration::from_secs(90)))
}

/// The one process running `fuselock SUBCOMMAND` that `pick` accepts, once
/// there is one.
fn the_one(subcommand: &str, pick: impl Fn(&[String]) -> bool) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let found: Vec<u32> = running(subcommand)
            .into_iter()
            .filter(|p| pick(&cmdline(*p)))
            .collect();
        match found.as_slice() {
            [one] => return *one,
            [] if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("fuselock {subcommand}: {other:?}"),
        }
    }
}

/// `top` starts its threads (snapshots, signals, input) after the drop, and
/// every one of them holds CAP_BPF alone, as does the reaper nothing.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn top_drops_in_every_thread() {
    let Some(t) = in_terminal("top --probe-mode kprobe --interval 0.5") else {
        return;
    };
    t.wait_for("probes");
    let pid = the_one("top", |_| true);
    assert_dropped_with_reaper(pid, "top");
    let threads = threads_of(pid);
    assert!(
        threads.len() >= 4,
        "top's own threads should be running: {threads:?}"
    );
    t.keys(&["q"]);
    t.wait_for("EXITED 0");
}

/// `demo --top` drops like `top` (CAP_BPF alone, another user), while its
/// mount keeper keeps uid 0 — the mount admits its owner alone — and not a
/// single capability; the loads it runs hold none either. Quitting still
/// stops the workload, unmounts and removes the directory.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn demo_top_drops_and_its_keeper_holds_no_capability() {
    let Some(t) = in_terminal("demo --top --writes 200 --probe-mode kprobe") else {
        return;
    };
    t.wait_for("overwrite");
    let demo = the_one("demo", |args| !args.iter().any(|a| a == "--keeper"));
    let keeper = the_one("demo", |args| args.iter().any(|a| a == "--keeper"));
    assert_eq!(parent_of(keeper), Some(demo));
    assert_dropped_with_reaper(demo, "demo --top");
    let no_caps_as_root = Expect {
        caps: 0,
        left_root: Some(false),
    };
    assert_threads(keeper, "demo's mount keeper", &no_caps_as_root);
    let deadline = Instant::now() + Duration::from_secs(30);
    let load = loop {
        if let Some(&load) = running("load").first() {
            break load;
        }
        assert!(Instant::now() < deadline, "the workload is not running");
        std::thread::sleep(Duration::from_millis(20));
    };
    // A load may end while it is read: only one still there counts.
    for th in try_threads_of(load).unwrap_or_default() {
        assert_eq!(th.effective, 0, "a demo load holds capabilities: {th:?}");
        assert_eq!(th.permitted, 0, "a demo load holds capabilities: {th:?}");
    }
    t.keys(&["q"]);
    t.wait_for("EXITED 0");
    assert_eq!(running("load"), Vec::<u32>::new(), "workload left running");
    assert_eq!(running("testfs"), Vec::<u32>::new(), "server left running");
    assert_eq!(running("demo"), Vec::<u32>::new(), "keeper left running");
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    assert!(
        !mounts.contains("fuselock-demo-"),
        "demo mount left:\n{mounts}"
    );
    let left: Vec<_> = std::fs::read_dir("/tmp")
        .expect("/tmp")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("fuselock-demo-")
        })
        .collect();
    assert!(left.is_empty(), "demo left {left:?}");
}

/// A root `export` switches to an account of its own — the `fuselock` user
/// where there is one, else an id no account or process has — never to the
/// shared `nobody`, so a process running as nobody cannot stop it.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn root_export_leaves_root_for_an_account_nobody_else_has() {
    let Some(fs) = exporter_mount() else {
        return;
    };
    let port = 9955;
    let exporter = serving(exporter_command(port), port);
    let pid = exporter.0.id();
    let threads = assert_threads(
        pid,
        "export",
        &Expect {
            caps: BPF_ONLY,
            left_root: Some(true),
        },
    );
    let uid = threads[0].uids[0];
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    match passwd
        .lines()
        .find_map(|l| l.strip_prefix("fuselock:x:"))
        .and_then(|rest| rest.split(':').next()?.parse::<u32>().ok())
    {
        Some(own) => assert_eq!(uid, own, "the fuselock user's uid"),
        None => assert!(uid >= SPARE_IDS_START, "uid {uid}: not a spare one"),
    }
    assert!(threads.iter().all(|t| t.bounding == BPF_ONLY));
    // nobody's kill -STOP is refused, and the exporter keeps serving.
    let mut kill = Command::new("kill");
    kill.args(["-STOP", &pid.to_string()]);
    // SAFETY: only async-signal-safe system calls between fork and exec.
    unsafe {
        kill.pre_exec(as_nobody);
    }
    let status = kill.stderr(Stdio::null()).status().expect("kill as nobody");
    assert!(!status.success(), "nobody stopped the exporter");
    load_writes(&fs, "after-kill", 55);
    wait_for("55 writes exported", 30, || {
        exported_writes(port) == Some(55)
    });
}

/// `security.capability` of `path`: `caps` permitted and effective
/// (`struct vfs_cap_data`, revision 2), what `setcap caps+ep` writes.
/// `false` (and a loud SKIPPED) where the file system keeps no such xattr.
fn set_file_capabilities(path: &Path, caps: u64) -> bool {
    const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
    const VFS_CAP_FLAGS_EFFECTIVE: u32 = 1;
    let words = [
        VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE,
        caps as u32,
        0,
        (caps >> 32) as u32,
        0,
    ];
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: setxattr(2) with valid strings and a buffer of the given size.
    let r = unsafe {
        libc::setxattr(
            c_path.as_ptr(),
            c"security.capability".as_ptr(),
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            eprintln!("SKIPPED: /tmp keeps no security.capability here ({e})");
            return false;
        }
        panic!("setxattr: {e}");
    }
    true
}

/// A copy of fuselock with file capabilities (as `setcap
/// cap_bpf,cap_perfmon+ep` makes; written directly, since the VM has no
/// setcap), run by nobody: every command is refused before doing anything,
/// though its uids and gids are all nobody's.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn an_executable_with_file_capabilities_is_refused() {
    let dir = Path::new("/tmp/file-caps");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("dir");
    let copy = dir.join("fuselock");
    let which = Command::new("sh")
        .args(["-c", &format!("command -v {}", fuselock())])
        .output()
        .expect("which");
    let original = String::from_utf8_lossy(&which.stdout).trim().to_owned();
    std::fs::copy(&original, &copy).expect("copy fuselock");
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    if !set_file_capabilities(&copy, (1 << CAP_BPF) | (1 << CAP_PERFMON)) {
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    for args in [
        &["stat", "--", "true"][..],
        &["doctor"][..],
        &["export"][..],
    ] {
        let mut cmd = Command::new(&copy);
        cmd.args(args);
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            cmd.pre_exec(as_nobody);
        }
        let out = cmd.output().expect("run the copy");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {err}");
        assert!(
            err.contains("refuses to run in secure-execution mode"),
            "{args:?}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The DaemonSet, read at build time: the test grants exactly what it adds.
const DAEMONSET: &str = include_str!("../../../deploy/kubernetes/daemonset.yaml");

/// The capabilities on the DaemonSet's `add:` line, as a mask.
fn daemonset_capabilities() -> u64 {
    let line = DAEMONSET
        .lines()
        .find_map(|l| l.trim().strip_prefix("add: "))
        .expect("an add: line in the DaemonSet");
    line.trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|name| match name.trim().trim_matches('"') {
            "SYS_ADMIN" => CAP_SYS_ADMIN,
            "SYS_RESOURCE" => CAP_SYS_RESOURCE,
            "PERFMON" => CAP_PERFMON,
            "BPF" => CAP_BPF,
            other => panic!("{other}: not in the test's table"),
        })
        .fold(0, |mask, cap| mask | 1 << cap)
}

/// `export` in the DaemonSet's security context (see [`as_the_daemonset`]
/// for what is and is not reproduced): it attaches the probes root would
/// (kprobes where root picks them: the preemptible 7.x kernels, where
/// Debian's `perf_event_paranoid=3` wants CAP_SYS_ADMIN for them), keeps
/// CAP_BPF alone in every thread as uid 0 (no CAP_SETUID to leave it), and
/// serves exact counts.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn export_serves_exact_counts_in_the_daemonsets_security_context() {
    let Some(fs) = exporter_mount() else {
        return;
    };
    let caps = daemonset_capabilities();
    assert_ne!(
        caps & (1 << CAP_SYS_ADMIN),
        0,
        "the DaemonSet adds SYS_ADMIN"
    );
    let root_mode = root_probe_mode();
    let paranoid =
        std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").unwrap_or_default();
    let port = 9956;
    let mut cmd = exporter_command(port);
    // SAFETY: only async-signal-safe system calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || as_the_daemonset(caps));
    }
    let exporter = serving(cmd, port);
    let pid = exporter.0.id();
    let threads = assert_threads(
        pid,
        "export in the DaemonSet's context",
        &Expect {
            caps: BPF_ONLY,
            left_root: Some(false),
        },
    );
    // Without CAP_SETPCAP the bounding set stays the DaemonSet's.
    assert!(threads.iter().all(|t| t.bounding == caps), "{threads:?}");
    let mode = exported_probe_mode(port);
    println!(
        "probe mode: {mode} in the DaemonSet's context, {root_mode} as root \
         (perf_event_paranoid {})",
        paranoid.trim()
    );
    if root_mode == "kprobe" {
        assert_eq!(mode, "kprobe");
    }
    load_writes(&fs, "daemonset", 123);
    wait_for("123 writes exported", 30, || {
        exported_writes(port) == Some(123)
    });
}

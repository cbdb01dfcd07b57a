//! The binary on the host, where nothing can attach: every failure must be
//! one clear line with a documented exit status, and nothing left behind.

use std::{path::Path, process::Command};

#[path = "common/tls.rs"]
mod tls;

const FUSELOCK: &str = env!("CARGO_BIN_EXE_fuselock");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(FUSELOCK)
        .args(args)
        .output()
        .expect("run fuselock");
    (
        out.status.code().expect("exit status"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Bad invocations: exit 3, and the message names the problem.
#[test]
fn bad_usage_exits_3_with_the_reason() {
    for (args, needle) in [
        (
            &["stat", "--interval", "0"][..],
            "interval must be between 0.1 and 3600 seconds",
        ),
        (
            &["stat", "--interval", "soon"][..],
            "is not a number of seconds",
        ),
        (&["stat", "--max-inodes", "0"][..], "--max-inodes"),
        (
            &["stat", "--inflight-max-age", "0"][..],
            "--inflight-max-age",
        ),
        (&["stat", "--every-entry"][..], "--json"),
        (
            &["stat", "--probe-mode", "magic"][..],
            "invalid value 'magic'",
        ),
        (&["frobnicate"][..], "unrecognized subcommand"),
        (&["stat", "--nope"][..], "unexpected argument '--nope'"),
        (
            &["export", "--listen", "localhost"][..],
            "invalid value 'localhost'",
        ),
        (
            &["export", "--per-inode-top", "100000"][..],
            "--per-inode-top",
        ),
        (
            &["verify", "--duration", "0"][..],
            "interval must be between",
        ),
        (
            &["verify", "--exercise", "/nonexistent/file"][..],
            "--exercise /nonexistent/file",
        ),
        (
            &["verify", "--exercise", "/proc/version"][..],
            "not on a FUSE file system",
        ),
        (
            &["verify", "--exercise", "/tmp"][..],
            "not on a FUSE file system",
        ),
        (
            &["verify", "--exercise", "/dev/null"][..],
            "neither a regular file nor a directory",
        ),
        (&["load", "/tmp/x", "--threads", "0"][..], "thread"),
        (
            &["load", "/tmp/x", "--kind", "sideways"][..],
            "invalid value 'sideways'",
        ),
        (&["testfs", "--backing", "/tmp"][..], "--mountpoint"),
    ] {
        let (code, _, err) = run(args);
        assert_eq!(code, 3, "{args:?} exited {code}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: expected `{needle}` in: {err}"
        );
    }
}

#[test]
fn help_and_version_exit_0() {
    for args in [
        &["--help"][..],
        &["--version"][..],
        &["stat", "--help"][..],
        &["verify", "--help"][..],
    ] {
        let (code, out, _) = run(args);
        assert_eq!(code, 0, "{args:?}");
        assert!(!out.is_empty());
    }
    let (_, out, _) = run(&["verify", "--help"]);
    assert!(
        out.contains("Exit status: 0 ACTIVE, 1 NOT ACTIVE, 2 INCONCLUSIVE"),
        "{out}"
    );
}

/// On a kernel without kprobes or fentry (this project's development and CI
/// machines) attaching fails with a message that says what to do.
#[test]
fn no_kprobes_says_what_to_do() {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !is_root || Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        eprintln!("SKIPPED: needs root on a kernel without kprobes");
        return;
    }
    let (code, _, err) = run(&["stat", "--", "true"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("this kernel has no kprobe support"), "{err}");
    assert!(err.contains("cargo xtask vm"), "{err}");
    let (code, out, _) = run(&["doctor"]);
    assert_eq!(code, 4);
    assert!(out.contains("MISSING  probes attach"), "{out}");
    assert!(
        out.trim_end()
            .ends_with("fuselock cannot run here: fix the MISSING lines above"),
        "{out}"
    );
}

/// Without privileges: a one-line error before anything is loaded.
#[test]
fn without_privileges_says_use_sudo() {
    let has_setpriv = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !has_setpriv || !is_root {
        eprintln!("SKIPPED: needs root and setpriv to drop privileges");
        return;
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            FUSELOCK,
            "stat",
            "--",
            "true",
        ])
        .output()
        .expect("setpriv");
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "fuselock: fuselock needs root (or CAP_BPF and CAP_PERFMON) to load its probes: run it with sudo"
    );
}

#[test]
fn completions_and_man_page_are_generated() {
    let (code, out, _) = run(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("fuselock") && out.contains("verify") && out.contains("--exercise"),
        "{out}"
    );
    let (code, _, err) = run(&["completions", "tcsh"]);
    assert_eq!(code, 3, "{err}");
    let (code, out, _) = run(&["manpage"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(".TH fuselock"),
        "{}",
        &out[..out.len().min(200)]
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A setuid (or setgid) copy refuses every command before doing anything:
/// `load` would otherwise write any file, `testfs` mount anywhere.
#[test]
fn setuid_copies_refuse_every_command() {
    use std::os::unix::fs::PermissionsExt as _;
    if !is_root() {
        eprintln!("SKIPPED: needs root to make a setuid copy");
        return;
    }
    // Not /tmp, which may be mounted nosuid.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("setuid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let victim = dir.join("victim");
    std::fs::write(&victim, b"untouched").expect("write");
    for (bit, id) in [(0o4755, "uid"), (0o2755, "gid")] {
        let copy = dir.join(format!("fuselock-set{id}"));
        std::fs::copy(FUSELOCK, &copy).expect("copy");
        let c = std::ffi::CString::new(copy.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: chown(2) with a valid C string.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0, "chown");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(bit)).expect("chmod");
        let victim = victim.to_str().expect("utf8");
        for args in [
            &["load", victim, "--force", "--writes", "1"][..],
            &["testfs", "--backing", "/tmp", "--mountpoint", "/mnt"][..],
            &["record", victim, "--force"][..],
            &["stat", "--", "true"][..],
            &["doctor"][..],
            &["export"][..],
            &["verify", "--exercise", "/tmp"][..],
        ] {
            let out = Command::new(&copy).args(args).output().expect("run");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(4), "set{id} {args:?}: {err}");
            assert!(
                err.contains(&format!("fuselock refuses to run set{id}")),
                "set{id} {args:?}: {err}"
            );
        }
    }
    assert_eq!(std::fs::read(&victim).expect("read"), b"untouched");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// `record` attaches before it creates its file: a run that cannot attach
/// (this host has no kprobes) neither creates nor empties FILE.
#[test]
fn record_touches_no_file_when_it_cannot_attach() {
    if !is_root() || Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        eprintln!("SKIPPED: needs root on a kernel without kprobes");
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("record-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let existing = dir.join("existing.jsonl");
    std::fs::write(&existing, b"precious\n").expect("write");
    for force in [false, true] {
        let mut args = vec!["record", existing.to_str().expect("utf8")];
        if force {
            args.push("--force");
        }
        let (code, _, err) = run(&args);
        assert_eq!(code, 4, "{err}");
    }
    assert_eq!(std::fs::read(&existing).expect("read"), b"precious\n");
    let new = dir.join("new.jsonl");
    let (code, _, err) = run(&["record", new.to_str().expect("utf8")]);
    assert_eq!(code, 4, "{err}");
    assert!(!new.exists(), "record created its file before attaching");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// `--version` names the version, the commit and the eBPF object's hash, so
/// a bug report says exactly what ran.
#[test]
fn version_names_commit_and_ebpf_hash() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    let line = out.trim_end();
    let rest = line
        .strip_prefix(concat!("fuselock ", env!("CARGO_PKG_VERSION"), " ("))
        .unwrap_or_else(|| panic!("{line}"));
    let (commit, hash) = rest
        .strip_suffix(')')
        .and_then(|r| r.split_once(", eBPF object sha256 "))
        .unwrap_or_else(|| panic!("{line}"));
    assert!(
        commit == "unknown commit" || commit.starts_with("commit "),
        "{line}"
    );
    assert_eq!(hash.len(), 12, "{line}");
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{line}");
}

/// A web config that cannot be used stops `export` before anything is
/// attached (here attaching would fail with exit 4): exit 3 and one line.
/// The lines are printed: they are what a user sees.
#[test]
fn a_bad_web_config_exits_3_before_attaching() {
    let dir = std::env::temp_dir().join(format!("fuselock-cli-web-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    tls::write_self_signed(&dir, "server.crt", "server.key");
    let other = rcgen::KeyPair::generate().expect("key");
    std::fs::write(dir.join("other.key"), other.serialize_pem()).expect("write");
    let tls = |cert: &str, key: &str| {
        format!("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
    };
    for (what, yaml, needle) in [
        (
            "missing certificate",
            tls("missing.crt", "server.key"),
            "missing.crt: No such file or directory",
        ),
        ("unreadable key", tls("server.crt", "."), "Is a directory"),
        (
            "key not matching the certificate",
            tls("server.crt", "other.key"),
            "does not match the certificate",
        ),
        (
            "unknown field",
            format!(
                "{}  client_ca_files: ca.crt\n",
                tls("server.crt", "server.key")
            ),
            "unknown field `client_ca_files`",
        ),
        (
            "plain-text password",
            "basic_auth_users:\n  prometheus: hunter2\n".to_owned(),
            "is not a bcrypt hash",
        ),
    ] {
        let path = dir.join("web.yml");
        std::fs::write(&path, yaml).expect("write config");
        let (code, _, err) = run(&[
            "export",
            "--listen",
            "127.0.0.1:0",
            "--web.config.file",
            path.to_str().expect("utf-8"),
        ]);
        println!("{what}: {}", err.trim_end());
        assert_eq!(code, 3, "{what}: exited {code}: {err}");
        assert!(err.contains(needle), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
        assert!(
            err.starts_with("fuselock: --web.config.file "),
            "{what}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Beyond loopback without a web config: one warning line naming what is
/// exposed and the flag that protects it, before anything is attached.
#[test]
fn an_unprotected_wide_listen_address_is_warned_about() {
    let (_, _, err) = run(&["export", "--listen", "0.0.0.0:0", "--max-inodes", "0"]);
    assert!(
        !err.contains("serving metrics"),
        "warned before a usage error: {err}"
    );
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !is_root || Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        eprintln!("SKIPPED: needs root on a kernel without kprobes (the exporter would run)");
        return;
    }
    let (code, _, err) = run(&["export", "--listen", "0.0.0.0:0"]);
    println!("{err}");
    assert_eq!(code, 4, "{err}");
    let warning: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("without TLS or authentication"))
        .collect();
    assert_eq!(warning.len(), 1, "{err}");
    assert!(
        warning[0].contains("mount points") && warning[0].contains("--web.config.file"),
        "{err}"
    );
}

//! Checks that run before anything is loaded, each failing with what is wrong
//! and what to do about it.

use std::{collections::BTreeSet, fs, io::Read as _, path::Path};

use anyhow::{bail, Context as _, Result};

/// Linux capability numbers (`include/uapi/linux/capability.h`).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capabilities of this process, from /proc/self/status.
pub fn effective_caps() -> Result<u64> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("/proc/self/status has no CapEff line")?;
    u64::from_str_radix(line.trim(), 16).context("parsing CapEff")
}

fn has_cap(caps: u64, cap: u32) -> bool {
    caps & (1 << cap) != 0
}

/// Loading and attaching tracing programs needs CAP_SYS_ADMIN, or CAP_BPF with
/// CAP_PERFMON.
pub fn check_privileges() -> Result<()> {
    let caps = effective_caps()?;
    if has_cap(caps, CAP_SYS_ADMIN) || (has_cap(caps, CAP_BPF) && has_cap(caps, CAP_PERFMON)) {
        return Ok(());
    }
    bail!("fuselock needs root (or CAP_BPF and CAP_PERFMON) to load its probes: run it with sudo")
}

/// Refuses to run setuid, setgid or with file capabilities: such a
/// fuselock would hand kernel probes, root's file writes (`load`, `record`)
/// and mounts (`testfs`) to any user. Checked before any command runs.
pub fn check_not_setuid() -> Result<()> {
    // SAFETY: these calls cannot fail; getauxval returns 0 for an entry the
    // kernel did not pass.
    let ids = ExecIds {
        uid: unsafe { libc::getuid() },
        euid: unsafe { libc::geteuid() },
        gid: unsafe { libc::getgid() },
        egid: unsafe { libc::getegid() },
        at_secure: unsafe { libc::getauxval(libc::AT_SECURE) },
    };
    match elevated_exec(&ids) {
        Some(why) => bail!("{why}"),
        None => Ok(()),
    }
}

/// What the process was started with: its ids and the kernel's `AT_SECURE`.
#[derive(Clone, Copy, Debug)]
struct ExecIds {
    uid: libc::uid_t,
    euid: libc::uid_t,
    gid: libc::gid_t,
    egid: libc::gid_t,
    at_secure: libc::c_ulong,
}

/// Why `ids` show an execution that gained privileges, if they do.
/// Comparing ids alone misses file capabilities (`setcap`): those leave
/// every id as it is, and only `AT_SECURE` tells (the kernel sets it for
/// setuid, setgid, gained file capabilities and LSM transitions alike).
fn elevated_exec(ids: &ExecIds) -> Option<String> {
    let ExecIds {
        uid,
        euid,
        gid,
        egid,
        at_secure,
    } = *ids;
    if uid != euid {
        return Some(format!(
            "fuselock refuses to run setuid (uid {uid}, euid {euid}); run it as root instead"
        ));
    }
    if gid != egid {
        return Some(format!(
            "fuselock refuses to run setgid (gid {gid}, egid {egid}); run it as root instead"
        ));
    }
    if at_secure != 0 {
        return Some(
            "fuselock refuses to run in secure-execution mode (AT_SECURE: the executable has \
             file capabilities, or is setuid or setgid): remove them (`setcap -r`, \
             `chmod ug-s`) and run it as root or with the capabilities given to the process \
             (systemd's AmbientCapabilities=) instead"
                .to_owned(),
        );
    }
    None
}

/// Names of kernel functions, from /proc/kallsyms (readable without root;
/// addresses are hidden but names are not).
pub fn kernel_functions() -> Result<BTreeSet<String>> {
    let text = fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, kind, name) = (f.next()?, f.next()?, f.next()?);
            matches!(kind, "t" | "T").then(|| name.to_owned())
        })
        .collect())
}

/// Fails naming every required function this kernel lacks.
pub fn check_functions(available: &BTreeSet<String>, required: &[&str]) -> Result<()> {
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|f| !available.contains(*f))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "kernel function{} {} not found in /proc/kallsyms (inlined, renamed, or FUSE not loaded): \
         fuselock needs Linux >= 6.9 with FUSE passthrough; if FUSE is a module, `modprobe fuse`",
        if missing.len() > 1 { "s" } else { "" },
        missing.join(", ")
    )
}

/// Whether the perf `kprobe` PMU exists (kprobes attach through perf_event_open).
pub fn kprobes_available() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
        || Path::new("/sys/kernel/tracing/kprobe_events").exists()
        || Path::new("/sys/kernel/debug/tracing/kprobe_events").exists()
}

/// The kernel config, where the kernel or the distribution exposes it.
pub fn kernel_config(release: &str) -> Option<String> {
    if let Ok(text) = fs::read_to_string(format!("/boot/config-{release}")) {
        return Some(text);
    }
    // /proc/config.gz: gzip, which we do not decompress ourselves; zcat does.
    if Path::new("/proc/config.gz").exists() {
        let mut out = String::new();
        let child = std::process::Command::new("zcat")
            .arg("/proc/config.gz")
            .output()
            .ok()?;
        child.stdout.as_slice().read_to_string(&mut out).ok()?;
        return Some(out);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(uid: u32, euid: u32, gid: u32, egid: u32, at_secure: u64) -> ExecIds {
        ExecIds {
            uid,
            euid,
            gid,
            egid,
            at_secure,
        }
    }

    #[test]
    fn file_capabilities_are_refused_like_setuid() {
        assert_eq!(elevated_exec(&ids(0, 0, 0, 0, 0)), None);
        assert_eq!(elevated_exec(&ids(1000, 1000, 1000, 1000, 0)), None);
        // A setcap'd copy run by a user: every id as it was, AT_SECURE set.
        let why = elevated_exec(&ids(1000, 1000, 1000, 1000, 1)).expect("refused");
        assert!(why.contains("secure-execution mode"), "{why}");
        assert!(why.contains("setcap -r"), "{why}");
        let why = elevated_exec(&ids(1000, 0, 1000, 1000, 1)).expect("refused");
        assert!(
            why.contains("refuses to run setuid (uid 1000, euid 0)"),
            "{why}"
        );
        let why = elevated_exec(&ids(1000, 1000, 1000, 0, 1)).expect("refused");
        assert!(why.contains("refuses to run setgid"), "{why}");
    }

    #[test]
    fn this_test_is_not_in_secure_execution_mode() {
        check_not_setuid().expect("cargo test runs without setuid or file capabilities");
    }

    #[test]
    fn capability_bits() {
        assert!(has_cap(1 << 21, CAP_SYS_ADMIN));
        assert!(!has_cap(1 << 38, CAP_BPF));
    }

    #[test]
    fn missing_functions_are_named() {
        let have: BTreeSet<String> = ["vfs_write".to_owned()].into();
        let err = check_functions(
            &have,
            &["vfs_write", "fuse_file_write_iter", "fuse_direct_io"],
        )
        .expect_err("two are missing");
        let msg = err.to_string();
        assert!(
            msg.contains("functions fuse_file_write_iter, fuse_direct_io not found"),
            "{msg}"
        );
        assert!(check_functions(&have, &["vfs_write"]).is_ok());
    }

    #[test]
    fn host_kallsyms_is_readable() {
        let fns = kernel_functions().expect("kallsyms");
        assert!(
            fns.contains("vfs_write"),
            "vfs_write missing from /proc/kallsyms"
        );
    }
}

//! `fuselock doctor`: can fuselock run here? One line per check, with what
//! to do about each problem; exit 0 when it can, 4 when it cannot.

use std::fs;

use fuselock_base::procfs;
use probes_common::rwsem::RwsemLayout;

use crate::{
    kernel::memory,
    kernel::offsets::{self, KernelBtf},
    kernel::preempt,
    kernel::preflight,
    kernel::probes::{self, AttachOptions, ProbeMode},
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Missing,
    Info,
}

struct Check {
    status: Status,
    what: String,
    /// What to do, for a missing item.
    fix: Option<String>,
}

fn ok(what: impl Into<String>) -> Check {
    Check {
        status: Status::Ok,
        what: what.into(),
        fix: None,
    }
}

fn missing(what: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        status: Status::Missing,
        what: what.into(),
        fix: Some(fix.into()),
    }
}

fn info(what: impl Into<String>) -> Check {
    Check {
        status: Status::Info,
        what: what.into(),
        fix: None,
    }
}

/// `(major, minor)` of a release like `6.12.117+deb12-cloud-amd64`.
fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn checks() -> Vec<Check> {
    let mut v = Vec::new();
    let release = procfs::kernel_release();
    match version(&release) {
        Some(ver) if ver >= (6, 9) => v.push(ok(format!(
            "kernel {release} (FUSE passthrough needs >= 6.9)"
        ))),
        Some(_) => v.push(missing(
            format!("kernel {release}"),
            "FUSE passthrough needs Linux 6.9 or newer",
        )),
        None => v.push(info(format!("kernel {release} (version not parsed)"))),
    }
    match preflight::check_not_setuid().and_then(|()| preflight::check_privileges()) {
        Ok(()) => v.push(ok("privileges: CAP_SYS_ADMIN, or CAP_BPF + CAP_PERFMON")),
        Err(e) => v.push(missing("privileges", e.to_string())),
    }
    let lockdown = fs::read_to_string("/sys/kernel/security/lockdown").unwrap_or_default();
    if lockdown.contains("[confidentiality]") {
        v.push(missing("lockdown: confidentiality", "kernel lockdown blocks reading kernel memory from BPF; boot with lockdown=integrity or none"));
    } else if !lockdown.is_empty() {
        v.push(ok(format!("lockdown: {}", lockdown.trim())));
    }
    let btf = KernelBtf::load();
    match &btf {
        Ok(k) => {
            v.push(ok(format!("BTF: {}", offsets::VMLINUX_BTF)));
            if k.fuse_module.is_some() {
                v.push(ok(format!(
                    "BTF: {} (FUSE is a module)",
                    offsets::FUSE_MODULE_BTF
                )));
            }
            match offsets::resolve(k) {
                Ok(o) => {
                    v.push(ok("struct offsets: every field fuselock reads is in BTF"));
                    v.push(info(match RwsemLayout::from_u32(o.rwsem_layout) {
                        RwsemLayout::Classic => "inode lock: the classic rwsem (count and owner)",
                        RwsemLayout::Rt => {
                            "inode lock: PREEMPT_RT's rwbase_rt (readers count and rtmutex \
                             owner); waits are timed on the rwsem and on its rtmutex"
                        }
                    }));
                }
                Err(e) => v.push(missing("struct offsets", format!("{e:#}"))),
            }
        }
        Err(e) => v.push(missing("BTF", format!("{e:#}"))),
    }
    if let Some(config) = preflight::kernel_config(&release) {
        for opt in ["CONFIG_FUSE_PASSTHROUGH", "CONFIG_DEBUG_INFO_BTF"] {
            if config.lines().any(|l| l == format!("{opt}=y")) {
                v.push(ok(format!("{opt}=y")));
            } else {
                v.push(missing(
                    format!("{opt} not set"),
                    format!("rebuild the kernel with {opt}=y"),
                ));
            }
        }
        // Either attach mechanism will do; the attach test below decides.
        for opt in ["CONFIG_KPROBES", "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS"] {
            let set = config.lines().any(|l| l == format!("{opt}=y"));
            v.push(info(format!(
                "{opt} {}",
                if set { "=y" } else { "not set" }
            )));
        }
    } else {
        v.push(info(
            "kernel config not readable (/boot/config-*, /proc/config.gz); skipped",
        ));
    }
    match preflight::kernel_functions() {
        Ok(fns) => {
            for f in probes::required_functions() {
                if fns.contains(f) {
                    v.push(ok(format!("function {f}")));
                } else {
                    v.push(missing(format!("function {f}"), "not in /proc/kallsyms: inlined, renamed, or FUSE not loaded (`modprobe fuse`)"));
                }
            }
        }
        Err(e) => v.push(missing("/proc/kallsyms", format!("{e:#}"))),
    }
    if preflight::kprobes_available() {
        v.push(ok("kprobes: /sys/bus/event_source/devices/kprobe"));
    } else {
        v.push(info("kprobes: not available (fentry may still work)"));
    }
    for (path, what, without) in [
        ("/sys/fs/bpf", "bpffs", "not required"),
        (
            "/sys/kernel/tracing",
            "tracefs",
            "without it, kprobe mode's return probes get the kernel's default maxactive",
        ),
    ] {
        let mounted =
            fs::read_to_string("/proc/self/mounts").is_ok_and(|m| m.contains(&format!(" {path} ")));
        v.push(if mounted {
            ok(format!("{what} mounted at {path}"))
        } else {
            info(format!("{what} not mounted at {path} ({without})"))
        });
    }
    // Where fentry programs can be preempted they miss writes: `auto`
    // picks kprobes there (see probes::auto_choice).
    v.push(info(match preempt::detect() {
        Some(m) => format!("preemption model: {} (from {})", m.name, m.source),
        None => "preemption model: unknown".to_owned(),
    }));
    let (mode, why) = probes::auto_choice();
    v.push(info(format!("probe mode auto: {mode}, because the {why}")));
    if let Some(cpus) = memory::possible_cpus() {
        let max = probes_common::maps::DEFAULT_MAX_INODES;
        v.push(info(format!(
            "kernel memory: {}",
            memory::estimate(cpus, max).describe(max)
        )));
    }
    // The real test: load and attach, then detach (ebpf_exporter's --config.check).
    let attach = probes::attach(&AttachOptions {
        mode: ProbeMode::Auto,
        max_inodes: 1024,
        contention: true,
        debug_log: false,
        ablate: Vec::new(),
        only: None,
    });
    match attach {
        Ok(a) => v.push(ok(format!(
            "probes attach ({} mode{})",
            a.mode,
            if a.contention {
                ", lock:contention_* attached"
            } else {
                ", no contention tracepoints"
            }
        ))),
        Err(e) => v.push(missing("probes attach", format!("{e:#}"))),
    }
    v
}

pub fn run() -> i32 {
    let checks = checks();
    for c in &checks {
        let tag = match c.status {
            Status::Ok => "ok     ",
            Status::Missing => "MISSING",
            Status::Info => "info   ",
        };
        match &c.fix {
            Some(fix) => println!("{tag}  {}: {fix}", c.what),
            None => println!("{tag}  {}", c.what),
        }
    }
    if checks.iter().any(|c| c.status == Status::Missing) {
        println!("fuselock cannot run here: fix the MISSING lines above");
        i32::from(crate::exit::FAILURE)
    } else {
        println!("fuselock can run here");
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_versions() {
        assert_eq!(version("6.12.117+deb12-cloud-amd64"), Some((6, 12)));
        assert_eq!(version("6.9.0"), Some((6, 9)));
        assert_eq!(version("5.15"), Some((5, 15)));
        assert_eq!(version("x"), None);
        assert!(version("6.8.1").is_some_and(|v| v < (6, 9)));
    }
}

//! Attaching, dropping privileges and detaching: `doctor` on a capable
//! kernel, nothing left behind after any exit.

use std::process::{Command, Stdio};

use super::{
    common::{fuselock, TestFs},
    harness::*,
};

/// Once attached, a long-running fuselock keeps CAP_BPF (to read its maps)
/// and nothing else.
#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn capabilities_are_dropped_after_attaching() {
    let mut child = stat_attached(&[]);
    // No reader for the final snapshot: fuselock must exit 0 on the broken
    // pipe all the same, as any Unix filter does.
    drop(child.stdout.take());
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("status");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let exit = child.wait().expect("wait");
    for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .expect(field)
            .trim()
            .to_owned();
        assert_eq!(
            value, "0000008000000000",
            "{field} should be CAP_BPF only:\n{status}"
        );
    }
    assert!(
        exit.success(),
        "stat still exits cleanly without its other capabilities"
    );
}

/// The core tier: what `cargo xtask test` runs on every kernel of its matrix
/// (it selects tests by this module's name).
mod core_tier {
    use super::*;

    /// However fuselock ends — SIGINT, SIGTERM, SIGKILL — nothing of it stays
    /// in the kernel, and FUSE writes keep working.
    #[test]
    #[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
    fn nothing_is_left_attached_after_any_exit() {
        let fs = TestFs::mount(&[]);
        assert!(
            fuselock_programs().is_empty(),
            "programs before the test: {:?}",
            fuselock_programs()
        );
        for (signal, probe_mode) in [
            (libc::SIGINT, "auto"),
            (libc::SIGTERM, "kprobe"),
            (libc::SIGKILL, "auto"),
            (libc::SIGKILL, "kprobe"),
        ] {
            let mut child = stat_attached(&["--probe-mode", probe_mode]);
            assert!(
                !fuselock_programs().is_empty(),
                "attached programs are visible"
            );
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, signal) };
            let _ = child.wait();
            // Program teardown can trail the process exit by an RCU grace period.
            wait_for("the programs to go", 10, || fuselock_programs().is_empty());
            // kprobe mode's return probes are tracefs events, which a reaper
            // process deletes once fuselock is gone, even after SIGKILL.
            let kprobes =
                || std::fs::read_to_string("/sys/kernel/tracing/kprobe_events").unwrap_or_default();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !kprobes().trim().is_empty() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            assert!(
                kprobes().trim().is_empty(),
                "leftover kprobe events after signal {signal}: {}",
                kprobes()
            );
            let status = Command::new(fuselock())
                .args(["load", &fs.path("after"), "--writes", "10"])
                .stdout(Stdio::null())
                .status()
                .expect("load");
            assert!(
                status.success(),
                "writes fail after fuselock died with signal {signal}"
            );
        }
    }

    /// `doctor` on a kernel that has everything: all ok, exit 0.
    #[test]
    #[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
    fn doctor_is_happy_on_a_capable_kernel() {
        let out = Command::new(fuselock())
            .arg("doctor")
            .output()
            .expect("doctor");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{text}");
        assert!(!text.contains("MISSING"), "{text}");
        // auto picks kprobes where fentry programs can be preempted. Debian's
        // kernels say the model in debugfs (PREEMPT_DYNAMIC); the tiny test
        // kernels have no such file, and doctor reads their build instead.
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("info     preemption model: "))
            .unwrap_or_else(|| panic!("no preemption model line: {text}"));
        let model = line.split(' ').next().unwrap_or("unknown");
        // A PREEMPT_RT build is named so whatever debugfs offers, and its
        // inode lock is decoded as the rtmutex-based rwbase it is.
        let rt = std::fs::read_to_string("/proc/sys/kernel/version")
            .is_ok_and(|v| v.split_whitespace().any(|w| w == "PREEMPT_RT"));
        assert!(
            text.contains(if rt {
                "info     inode lock: PREEMPT_RT's rwbase_rt"
            } else {
                "info     inode lock: the classic rwsem"
            }),
            "{text}"
        );
        if rt {
            assert_eq!(line, "rt (from uname -v)", "{text}");
        } else if let Ok(debugfs) = std::fs::read_to_string("/sys/kernel/debug/sched/preempt") {
            let current = debugfs
                .split_whitespace()
                .find_map(|w| w.strip_prefix('(')?.strip_suffix(')'))
                .expect("a current model in debugfs");
            assert_eq!(
                line,
                format!("{current} (from /sys/kernel/debug/sched/preempt)"),
                "{text}"
            );
        }
        let mode = if ["full", "lazy", "rt", "unknown"].contains(&model) {
            "kprobe"
        } else {
            "fentry"
        };
        assert!(
            text.contains(&format!("info     probe mode auto: {mode}, because")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "ok       probes attach ({mode} mode, lock:contention_* attached)"
            )),
            "{text}"
        );
        assert!(text.trim_end().ends_with("fuselock can run here"), "{text}");
    }
}

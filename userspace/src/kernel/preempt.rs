//! The kernel's preemption model, which decides whether fentry/fexit
//! programs can be exact.
//!
//! The kernel runs at most one instance of an fentry/fexit program per CPU
//! (`__bpf_prog_enter_recur()` only disables migration, then checks a
//! per-CPU counter of the program). Where kernel code can be preempted
//! anywhere (`full`, `lazy`, `rt`), a writer preempted inside a program
//! makes the next writer on that CPU skip it; the kernel counts the skip in
//! the program's `recursion_misses`, and fuselock loses or misclassifies
//! that write. kprobe programs run with preemption disabled and do not have
//! this hole. With `none` or `voluntary` a program is never preempted.

use std::{fmt, fs};

/// How the model was found, most direct first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `/sys/kernel/debug/sched/preempt`: the model in force, on kernels
    /// that can switch it at boot (PREEMPT_DYNAMIC); needs debugfs.
    Debugfs,
    /// `preempt=` on the kernel command line (PREEMPT_DYNAMIC kernels).
    Cmdline,
    /// `uname -v`'s build words (`PREEMPT_RT`, `PREEMPT`, `PREEMPT_LAZY`);
    /// a `PREEMPT_DYNAMIC` kernel does not say which model it booted.
    Version,
    /// The build's default from the kernel config (`/boot/config-*`,
    /// `/proc/config.gz`): what a PREEMPT_DYNAMIC kernel boots without
    /// `preempt=`.
    Config,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Debugfs => "/sys/kernel/debug/sched/preempt",
            Source::Cmdline => "preempt= on /proc/cmdline",
            Source::Version => "uname -v",
            Source::Config => "the kernel config",
        })
    }
}

/// A preemption model and where it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    /// `none`, `voluntary`, `full`, `lazy` or `rt`.
    pub name: String,
    pub source: Source,
}

impl Model {
    /// Whether kernel code, BPF programs included, can be preempted anywhere.
    pub fn preemptible(&self) -> bool {
        matches!(self.name.as_str(), "full" | "lazy" | "rt")
    }
}

/// The current model in `/sys/kernel/debug/sched/preempt`'s text: the word
/// in parentheses, e.g. `none voluntary full (lazy)`.
fn from_debugfs(text: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('(')?.strip_suffix(')'))
        .map(str::to_owned)
}

fn from_cmdline(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("preempt="))
        .filter(|m| ["none", "voluntary", "full", "lazy"].contains(m))
        .map(str::to_owned)
}

/// `uname -v` names the static model of a build (`PREEMPT_RT`, `PREEMPT`,
/// `PREEMPT_LAZY`); a dynamic kernel says `PREEMPT_DYNAMIC` and no more.
fn from_version(version: &str) -> Option<String> {
    let words: Vec<&str> = version.split_whitespace().collect();
    // PREEMPT_RT first: an rt build may be dynamic too, and is always
    // preemptible.
    if words.contains(&"PREEMPT_RT") {
        return Some("rt".into());
    }
    if words.contains(&"PREEMPT_DYNAMIC") {
        return None;
    }
    if words.contains(&"PREEMPT_LAZY") {
        Some("lazy".into())
    } else if words.contains(&"PREEMPT") {
        Some("full".into())
    } else if words.is_empty() {
        None
    } else {
        // No preemption word: a none or voluntary build; which one does not
        // matter here.
        Some("none/voluntary".into())
    }
}

/// The build's default model from a kernel config.
fn from_config(config: &str) -> Option<String> {
    let set = |key: &str| config.lines().any(|l| l == format!("{key}=y"));
    if set("CONFIG_PREEMPT_RT") {
        Some("rt".into())
    } else if set("CONFIG_PREEMPT_LAZY") && !set("CONFIG_PREEMPT_DYNAMIC") {
        Some("lazy".into())
    } else if set("CONFIG_PREEMPT") {
        Some("full".into())
    } else if set("CONFIG_PREEMPT_VOLUNTARY") {
        Some("voluntary".into())
    } else if set("CONFIG_PREEMPT_NONE") {
        Some("none".into())
    } else {
        None
    }
}

/// The running kernel's model, or `None` when nothing says.
pub fn detect() -> Option<Model> {
    let read = |p: &str| fs::read_to_string(p).ok();
    let found = |name: String, source| Some(Model { name, source });
    // A PREEMPT_RT build says so in `uname -v` and is preemptible whatever
    // dynamic model debugfs offers it (`(full) lazy` on Debian's 7.3 rt).
    let version = read("/proc/sys/kernel/version");
    if version.as_deref().and_then(from_version).as_deref() == Some("rt") {
        return found("rt".into(), Source::Version);
    }
    if let Some(m) = read("/sys/kernel/debug/sched/preempt")
        .as_deref()
        .and_then(from_debugfs)
    {
        return found(m, Source::Debugfs);
    }
    if let Some(m) = read("/proc/cmdline").as_deref().and_then(from_cmdline) {
        return found(m, Source::Cmdline);
    }
    if let Some(m) = version.as_deref().and_then(from_version) {
        return found(m, Source::Version);
    }
    let release = fuselock_base::procfs::kernel_release();
    crate::kernel::preflight::kernel_config(&release)
        .as_deref()
        .and_then(from_config)
        .and_then(|m| found(m, Source::Config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debugfs_names_the_current_model() {
        assert_eq!(
            from_debugfs("none voluntary full (lazy)\n").as_deref(),
            Some("lazy")
        );
        assert_eq!(
            from_debugfs("none (voluntary) full\n").as_deref(),
            Some("voluntary")
        );
        assert_eq!(from_debugfs(""), None);
    }

    #[test]
    fn cmdline_and_version_words() {
        assert_eq!(
            from_cmdline("console=ttyS0 preempt=full quiet").as_deref(),
            Some("full")
        );
        assert_eq!(from_cmdline("console=ttyS0 quiet"), None);
        assert_eq!(
            from_version("#1 SMP PREEMPT_RT Debian 7.3.4").as_deref(),
            Some("rt")
        );
        assert_eq!(
            from_version("#1 SMP PREEMPT Mon Jan 1"),
            Some("full".into())
        );
        // An rt build that is dynamic too is rt all the same.
        assert_eq!(
            from_version("#1 SMP PREEMPT_DYNAMIC PREEMPT_RT Debian 7.3.4-1").as_deref(),
            Some("rt")
        );
        // Dynamic kernels do not say which model they booted.
        assert_eq!(
            from_version("#1 SMP PREEMPT_DYNAMIC Debian 6.12.118-1"),
            None
        );
        let static_build = from_version("#1 SMP Debian 6.1").expect("a model");
        assert!(!Model {
            name: static_build,
            source: Source::Version
        }
        .preemptible());
    }

    #[test]
    fn config_default_model() {
        assert_eq!(
            from_config("CONFIG_PREEMPT_VOLUNTARY=y\nCONFIG_PREEMPT_DYNAMIC=y\n").as_deref(),
            Some("voluntary")
        );
        assert_eq!(
            from_config("CONFIG_PREEMPT=y\nCONFIG_PREEMPT_DYNAMIC=y\n").as_deref(),
            Some("full")
        );
        assert_eq!(from_config("CONFIG_PREEMPT_RT=y\n").as_deref(), Some("rt"));
        assert!(Model {
            name: "lazy".into(),
            source: Source::Debugfs
        }
        .preemptible());
        assert!(!Model {
            name: "voluntary".into(),
            source: Source::Cmdline
        }
        .preemptible());
    }
}

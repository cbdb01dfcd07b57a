//! Loading and attaching the eBPF programs: a probe table, fentry first with
//! a kprobe fallback, and a handle whose drop detaches everything.

use std::fmt;

use anyhow::{anyhow, Context as _, Result};
use aya::{
    programs::{FEntry, FExit, KProbe, ProgramError, RawTracePoint},
    Btf, Ebpf, EbpfLoader,
};
use log::{debug, info, warn};
use probes_common::{
    config::{
        Ablation, CgroupFilter, Config, CONFIG_GLOBAL, FLAG_CGROUP_ID, FLAG_CONTENTION,
        FLAG_DEBUG_LOG,
    },
    maps::{max_writers, MAP_FILES, MAP_OPENS, MAP_WRITERS},
};

use fuselock_base::procfs;

use crate::{kernel::kretprobe::RetProbes, kernel::offsets, kernel::preempt, kernel::preflight};

/// The compiled programs, built by build.rs.
pub(crate) static PROBES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fuselock-probes"));

/// How the function hooks attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeMode {
    /// fentry/fexit where they are exact: the kernel has BPF trampolines
    /// and cannot preempt a running program (preemption model none or
    /// voluntary); else kprobes. See [`auto_choice`].
    Auto,
    /// BPF trampolines: cheapest, no limit on concurrent returns.
    Fentry,
    /// kprobes/kretprobes: works without trampolines.
    Kprobe,
}

impl fmt::Display for ProbeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeMode::Auto => "auto",
            ProbeMode::Fentry => "fentry",
            ProbeMode::Kprobe => "kprobe",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    Entry,
    Exit,
}

/// One kernel function fuselock hooks, and its program in each mode.
struct Probe {
    function: &'static str,
    hook: Hook,
    fentry_program: &'static str,
    kprobe_program: &'static str,
}

/// Attach order matters: returns and lock observers go first and the write
/// entry last, so every write that gets an in-flight record has all its
/// other hooks in place (a write already running at attach time is simply
/// not seen, rather than half-seen).
const PROBES: &[Probe] = &[
    Probe {
        function: "fuse_file_io_open",
        hook: Hook::Exit,
        fentry_program: "open_exit_fexit",
        kprobe_program: "open_exit_kretprobe",
    },
    Probe {
        function: "fuse_file_io_open",
        hook: Hook::Entry,
        fentry_program: "open_entry_fentry",
        kprobe_program: "open_entry_kprobe",
    },
    Probe {
        function: "fuse_file_write_iter",
        hook: Hook::Exit,
        fentry_program: "write_exit_fexit",
        kprobe_program: "write_exit_kretprobe",
    },
    Probe {
        function: "backing_file_write_iter",
        hook: Hook::Entry,
        fentry_program: "passthrough_locked_fentry",
        kprobe_program: "passthrough_locked_kprobe",
    },
    Probe {
        function: "fuse_direct_io",
        hook: Hook::Entry,
        fentry_program: "direct_locked_fentry",
        kprobe_program: "direct_locked_kprobe",
    },
    Probe {
        function: "fuse_file_write_iter",
        hook: Hook::Entry,
        fentry_program: "write_entry_fentry",
        kprobe_program: "write_entry_kprobe",
    },
];

/// The kernel functions fuselock needs.
pub fn required_functions() -> Vec<&'static str> {
    let mut f: Vec<&'static str> = PROBES.iter().map(|p| p.function).collect();
    f.sort_unstable();
    f.dedup();
    f
}

/// What `auto` prefers on this kernel, and why.
///
/// fentry costs less per write, but the kernel skips an fentry/fexit
/// program while the same program is active on the CPU, which a preemptible
/// kernel allows (see [`preempt`]): a skipped exit loses a write, a skipped
/// lock probe misclassifies one. kprobe programs run with preemption off.
/// An unknown model counts as preemptible: exact first.
pub fn auto_choice() -> (ProbeMode, String) {
    match preempt::detect() {
        Some(m) if m.preemptible() => (
            ProbeMode::Kprobe,
            format!(
                "preemption model {} (from {}): fentry programs can be preempted and skipped, kprobes cannot",
                m.name, m.source
            ),
        ),
        Some(m) => (
            ProbeMode::Fentry,
            format!(
                "preemption model {} (from {}): fentry programs are never preempted, and cost less",
                m.name, m.source
            ),
        ),
        None => (
            ProbeMode::Kprobe,
            "preemption model unknown (no /sys/kernel/debug/sched/preempt, preempt=, uname -v word \
             or kernel config): kprobes, which are exact under any model"
                .to_owned(),
        ),
    }
}

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    pub mode: ProbeMode,
    pub max_inodes: u32,
    /// Watch `lock:contention_*` for wait times.
    pub contention: bool,
    /// Log every write from the kernel (expensive; debugging only).
    pub debug_log: bool,
    /// Parts of the accounting a benchmark switched off.
    pub ablate: Vec<Ablation>,
    /// Count only the tasks under this cgroup: the programs' filter, and
    /// the cgroup's path for what fuselock shows.
    pub only: Option<(CgroupFilter, String)>,
}

/// Attached programs. Dropping it detaches and unloads them all.
pub struct Attached {
    pub ebpf: Ebpf,
    /// kprobe mode: the return probes with their own tracefs events, held
    /// until detach (their drop deletes the events).
    _retprobes: Option<RetProbes>,
    pub mode: ProbeMode,
    pub contention: bool,
    pub max_inodes: u32,
    pub kernel: String,
    /// The cgroup whose tasks alone are counted (`--cgroup`, `--pod`).
    pub only_cgroup: Option<String>,
}

/// Runs the checks, loads the programs with this kernel's offsets, and
/// attaches them.
pub fn attach(opts: &AttachOptions) -> Result<Attached> {
    preflight::check_not_setuid()?;
    preflight::check_privileges()?;
    let functions = preflight::kernel_functions()?;
    preflight::check_functions(&functions, &required_functions())?;
    let started = std::time::Instant::now();
    let kernel_btf = offsets::KernelBtf::load()?;
    let offsets = offsets::resolve(&kernel_btf)?;
    debug!(
        "start-up: kernel BTF read, offsets resolved at {:?}",
        started.elapsed()
    );
    let mut flags = 0;
    if opts.debug_log {
        flags |= FLAG_DEBUG_LOG;
    }
    if opts.contention {
        flags |= FLAG_CONTENTION;
    }
    for part in &opts.ablate {
        warn!(
            "benchmark ablation: {} switched off, counts are incomplete",
            part.name()
        );
        flags |= part.bit();
    }
    // /proc/self/cgroup exists exactly when the kernel has cgroups.
    if std::path::Path::new("/proc/self/cgroup").exists() {
        flags |= FLAG_CGROUP_ID;
    }
    let config = match &opts.only {
        Some((filter, _)) => Config::new(offsets, flags).with_cgroup_filter(*filter),
        None => Config::new(offsets, flags),
    };
    if opts.max_inodes == 0 {
        return Err(anyhow!("--max-inodes must be at least 1"));
    }

    let mut ebpf = load_object(&config, opts.max_inodes)?;
    debug!(
        "start-up: object loaded, maps created at {:?}",
        started.elapsed()
    );

    // fentry attaches by BTF id: every hooked function must be a BTF FUNC.
    let missing_in_btf: Vec<&str> = required_functions()
        .into_iter()
        .filter(|f| {
            !kernel_btf.vmlinux.has_func(f)
                && !kernel_btf
                    .fuse_module
                    .as_ref()
                    .is_some_and(|m| m.has_func(f))
        })
        .collect();
    let fentry_possible = || -> Result<()> {
        if missing_in_btf.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "{} not in the kernel's BTF",
                missing_in_btf.join(", ")
            ))
        }
    };
    let mut retprobes = None;
    let mode = match opts.mode {
        ProbeMode::Fentry => {
            fentry_possible()?;
            attach_fentry(&mut ebpf)?;
            ProbeMode::Fentry
        }
        ProbeMode::Kprobe => {
            retprobes = attach_kprobes(&mut ebpf)?;
            ProbeMode::Kprobe
        }
        ProbeMode::Auto => {
            let (preferred, why) = auto_choice();
            info!("probe mode auto: {why}");
            let fentry = |ebpf: &mut Ebpf| fentry_possible().and_then(|()| attach_fentry(ebpf));
            if preferred == ProbeMode::Kprobe {
                match attach_kprobes(&mut ebpf) {
                    Ok(r) => {
                        retprobes = r;
                        ProbeMode::Kprobe
                    }
                    Err(kprobe_err) => {
                        detach_kprobes(&mut ebpf);
                        warn!(
                            "kprobes unavailable ({kprobe_err:#}); using fentry, whose skipped runs \
                             show in health.recursion_misses"
                        );
                        fentry(&mut ebpf)
                            .map_err(|fentry_err| both_failed(&fentry_err, &kprobe_err))?;
                        ProbeMode::Fentry
                    }
                }
            } else {
                match fentry(&mut ebpf) {
                    Ok(()) => ProbeMode::Fentry,
                    Err(fentry_err) => {
                        info!("fentry unavailable ({fentry_err:#}); falling back to kprobes");
                        detach_fentry(&mut ebpf);
                        retprobes = attach_kprobes(&mut ebpf)
                            .map_err(|kprobe_err| both_failed(&fentry_err, &kprobe_err))?;
                        ProbeMode::Kprobe
                    }
                }
            }
        }
    };

    let contention = opts.contention && attach_contention(&mut ebpf);
    debug!(
        "start-up: {mode} programs attached at {:?}",
        started.elapsed()
    );
    Ok(Attached {
        ebpf,
        _retprobes: retprobes,
        mode,
        contention,
        max_inodes: opts.max_inodes,
        kernel: procfs::kernel_release(),
        only_cgroup: opts.only.as_ref().map(|(_, path)| path.clone()),
    })
}

fn both_failed(fentry_err: &anyhow::Error, kprobe_err: &anyhow::Error) -> anyhow::Error {
    anyhow!(
        "cannot attach probes: fentry failed ({fentry_err:#}) and kprobes failed \
         ({kprobe_err:#}); fuselock needs a kernel with BPF trampolines or kprobes"
    )
}

/// The object with its maps created and its programs not yet loaded.
fn load_object(config: &Config, max_inodes: u32) -> Result<Ebpf> {
    EbpfLoader::new()
        .override_global(CONFIG_GLOBAL, config, true)
        // The per-file maps allocate on use: their capacity bounds the
        // memory they may take, and the open evidence has room for every
        // file counted.
        .map_max_entries(MAP_FILES, max_inodes)
        .map_max_entries(MAP_OPENS, max_inodes)
        .map_max_entries(MAP_WRITERS, max_writers(max_inodes))
        // The task storage: aya has no userspace type for it, and fuselock
        // reads nothing of it from userspace.
        .allow_unsupported_maps()
        .load(PROBES_OBJECT)
        .context("loading fuselock's eBPF object")
}

/// The maps alone, no program loaded: for exercising the collector on a
/// kernel that can create maps but attach no probes (see `test_rig`).
#[cfg(any(test, feature = "test-support"))]
pub fn maps_only(max_inodes: u32) -> Result<Attached> {
    Ok(Attached {
        ebpf: load_object(&Config::UNSET, max_inodes)?,
        _retprobes: None,
        mode: ProbeMode::Fentry,
        contention: false,
        max_inodes,
        kernel: procfs::kernel_release(),
        only_cgroup: None,
    })
}

fn program_err(function: &str, program: &str) -> impl FnOnce(ProgramError) -> anyhow::Error {
    let what = format!("attaching {program} to {function}");
    move |e| anyhow!(e).context(what)
}

fn attach_fentry(ebpf: &mut Ebpf) -> Result<()> {
    let t = std::time::Instant::now();
    let btf = Btf::from_sys_fs().context("reading kernel BTF for fentry")?;
    debug!("start-up: aya parsed the kernel's BTF in {:?}", t.elapsed());
    for p in PROBES {
        let prog = ebpf
            .program_mut(p.fentry_program)
            .with_context(|| format!("program {} missing from the object", p.fentry_program))?;
        match p.hook {
            Hook::Entry => {
                let prog: &mut FEntry = prog.try_into()?;
                prog.load(p.function, &btf)
                    .map_err(program_err(p.function, p.fentry_program))?;
                prog.attach()
                    .map_err(program_err(p.function, p.fentry_program))?;
            }
            Hook::Exit => {
                let prog: &mut FExit = prog.try_into()?;
                prog.load(p.function, &btf)
                    .map_err(program_err(p.function, p.fentry_program))?;
                prog.attach()
                    .map_err(program_err(p.function, p.fentry_program))?;
            }
        }
        debug!("attached {} to {}", p.fentry_program, p.function);
    }
    Ok(())
}

/// Unloads whatever fentry programs got loaded (their links go with them).
fn detach_fentry(ebpf: &mut Ebpf) {
    for p in PROBES {
        let Some(prog) = ebpf.program_mut(p.fentry_program) else {
            continue;
        };
        let result = match p.hook {
            Hook::Entry => <&mut FEntry>::try_from(prog).map(|p| p.unload()),
            Hook::Exit => <&mut FExit>::try_from(prog).map(|p| p.unload()),
        };
        if let Ok(Err(e)) = result {
            debug!("unloading {}: {e}", p.fentry_program);
        }
    }
}

/// Unloads whatever kprobe programs got loaded (their links go with them).
fn detach_kprobes(ebpf: &mut Ebpf) {
    for p in PROBES {
        let Some(prog) = ebpf.program_mut(p.kprobe_program) else {
            continue;
        };
        if let Ok(Err(e)) = <&mut KProbe>::try_from(prog).map(|p| p.unload()) {
            debug!("unloading {}: {e}", p.kprobe_program);
        }
    }
}

/// Attaches the kprobe programs; the return probes come back, with their
/// own tracefs events (room for `kretprobe::MAXACTIVE` concurrent writers)
/// where tracefs allows, else attached by aya with the kernel's default.
fn attach_kprobes(ebpf: &mut Ebpf) -> Result<Option<RetProbes>> {
    if !preflight::kprobes_available() {
        return Err(anyhow!(
            "this kernel has no kprobe support (no /sys/bus/event_source/devices/kprobe); \
             run fuselock on a kernel with CONFIG_KPROBES=y, or try it in the VM: cargo xtask vm"
        ));
    }
    let returns: Vec<&str> = PROBES
        .iter()
        .filter(|p| p.hook == Hook::Exit)
        .map(|p| p.function)
        .collect();
    let mut retprobes = RetProbes::new(&returns)
        .map_err(|e| {
            warn!(
                "return probes with the kernel's default maxactive ({e:#}): with more writers \
                 inside a hooked function at once than max(10, 2 x CPUs), returns are missed \
                 and show in health as inflight_replaced"
            )
        })
        .ok();
    for p in PROBES {
        let prog: &mut KProbe = ebpf
            .program_mut(p.kprobe_program)
            .with_context(|| format!("program {} missing from the object", p.kprobe_program))?
            .try_into()?;
        prog.load()
            .map_err(program_err(p.function, p.kprobe_program))?;
        if let (Some(r), Hook::Exit) = (&mut retprobes, p.hook) {
            match r.attach(prog, p.function) {
                Ok(()) => {
                    debug!(
                        "attached {} to the return of {} (maxactive {})",
                        p.kprobe_program,
                        p.function,
                        crate::kernel::kretprobe::MAXACTIVE
                    );
                    continue;
                }
                Err(e) => warn!(
                    "return probe on {} with the kernel's default maxactive ({e:#})",
                    p.function
                ),
            }
        }
        prog.attach(p.function, 0)
            .map_err(program_err(p.function, p.kprobe_program))?;
        debug!("attached {} to {}", p.kprobe_program, p.function);
    }
    Ok(retprobes)
}

/// The contention tracepoints are optional: without them there are no wait
/// times, and fuselock says so rather than failing.
fn attach_contention(ebpf: &mut Ebpf) -> bool {
    for (program, tracepoint) in [
        ("contention_begin", "contention_begin"),
        ("contention_end", "contention_end"),
    ] {
        let result = (|| -> Result<()> {
            let prog: &mut RawTracePoint = ebpf
                .program_mut(program)
                .context("program missing from the object")?
                .try_into()?;
            prog.load()?;
            prog.attach(tracepoint)?;
            Ok(())
        })();
        if let Err(e) = result {
            warn!("lock:{tracepoint} unavailable ({e:#}); wait times will not be measured");
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_attaches_last() {
        let last = PROBES.last().expect("probes");
        assert_eq!(
            (last.function, last.hook),
            ("fuse_file_write_iter", Hook::Entry)
        );
    }

    #[test]
    fn every_program_exists_in_the_object() {
        // The ELF symbol table names every program.
        let text = String::from_utf8_lossy(PROBES_OBJECT);
        for p in PROBES {
            for name in [p.fentry_program, p.kprobe_program] {
                assert!(text.contains(name), "program {name} not in the eBPF object");
            }
        }
    }

    /// A bounds check or other panic path compiles to a subprogram the
    /// verifier rejects ("last insn is not an exit or jmp"): the object
    /// must have none.
    #[test]
    fn the_object_has_no_panic_paths() {
        let text = String::from_utf8_lossy(PROBES_OBJECT);
        for symbol in [
            "panic_bounds_check",
            "panic_fmt",
            "slice_index_fail",
            "slice_end_index_len_fail",
        ] {
            assert!(
                !text.contains(symbol),
                "the eBPF object references {symbol}"
            );
        }
    }

    #[test]
    fn required_functions_are_unique() {
        assert_eq!(
            required_functions(),
            [
                "backing_file_write_iter",
                "fuse_direct_io",
                "fuse_file_io_open",
                "fuse_file_write_iter"
            ]
        );
    }
}

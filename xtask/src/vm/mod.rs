//! The VM: a kernel with kprobes under qemu (TCG), a busybox initramfs with
//! fuselock on PATH, one command, its output streamed, its exit status
//! returned.
//!
//! The guest's init prints a marker line with the command's status and
//! powers off; the host watches the serial console for it, and a watchdog
//! kills qemu if it never comes (hang, panic, lockup).

use std::{
    io::{BufRead as _, Write as _},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{build, debian_kernel, kernel};

mod console;
mod guest_error;
mod initramfs;

pub use self::initramfs::{tmux_files, with_libraries};
use self::{console::*, guest_error::*, initramfs::*};

const EXIT_MARKER: &str = "FUSELOCK_VM_EXIT=";
/// The first line our init prints.
const INIT_BANNER: &str = "vm: kernel ";

/// A ready `fuselock testfs` mount at /mnt/fuse over a tmpfs backing directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MountKind {
    /// Passthrough, no parallel-writes flag requested.
    Passthrough,
    /// Passthrough, FOPEN_PARALLEL_DIRECT_WRITES requested.
    PassthroughParallel,
    /// FOPEN_DIRECT_IO with FOPEN_PARALLEL_DIRECT_WRITES (stock kernels' shared-lock path).
    DirectIo,
}

impl MountKind {
    fn testfs_flags(self) -> &'static str {
        match self {
            MountKind::Passthrough => "",
            MountKind::PassthroughParallel => "--parallel",
            MountKind::DirectIo => "--parallel --direct-io",
        }
    }
}

#[derive(clap::Args)]
pub struct VmArgs {
    /// `debian:LINE` (Debian's newest cloud kernel of LINE: 6.12, 7.0, 7.1,
    /// 7.2, 7.3 or newest; downloaded once), `stock` (= debian:6.12),
    /// `patched` or `unpatched` (the 6.12 pair built by `cargo xtask kernel`),
    /// `patched:7.3` or `unpatched:7.3` (the 7.3 pair, `cargo xtask kernel
    /// --line 7.3`), or a path to a bzImage.
    #[arg(long, default_value = "stock")]
    pub kernel: String,
    /// Extra kernel parameters, e.g. `preempt=full`.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub append: Option<String>,
    /// Extra files: HOST_PATH[:GUEST_PATH] (default guest path: /bin/NAME).
    #[arg(long = "add", value_name = "HOST_PATH[:GUEST_PATH]")]
    pub add: Vec<String>,
    /// Mount the test filesystem at /mnt/fuse before running COMMAND.
    #[arg(long, value_enum)]
    pub mount: Option<MountKind>,
    /// vCPUs. Beyond twice the host's cores, qemu runs them all on one
    /// thread in turn (64 boot in seconds that way).
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    #[arg(long, default_value_t = 1024)]
    pub memory_mb: u32,
    /// Kill the VM after this many seconds.
    #[arg(long, default_value_t = 1200)]
    pub timeout: u64,
    /// Only resolve (and download or build, once) the kernel, print its
    /// image's path and exit: no VM.
    #[arg(long)]
    pub fetch_only: bool,
    /// The command to run in the guest (through /bin/sh).
    #[arg(
        last = true,
        required_unless_present = "fetch_only",
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

/// One VM run.
#[derive(Clone)]
pub struct VmSpec {
    pub kernel: PathBuf,
    pub kernel_name: String,
    /// (host path, guest path)
    pub files: Vec<(PathBuf, String)>,
    pub mount: Option<MountKind>,
    pub command: Vec<String>,
    pub cpus: u32,
    pub memory_mb: u32,
    pub timeout: Duration,
    /// Extra kernel parameters.
    pub append: Option<String>,
    /// Forward this terminal to the guest console (size included).
    pub interactive: bool,
}

fn unalias(name: &str) -> &str {
    match name {
        "stock" => "debian:6.12",
        "patched" => "patched:6.12",
        "unpatched" => "unpatched:6.12",
        other => other,
    }
}

/// The series variant and line `name` asks to build, if it names one.
fn built_variant(name: &str) -> Option<(kernel::Variant, &str)> {
    let (variant, line) = unalias(name).split_once(':')?;
    kernel::Variant::ALL
        .into_iter()
        .find(|v| v.name() == variant)
        .map(|v| (v, line))
}

/// Whether `--kernel name` is built from source (minutes when not cached)
/// rather than downloaded.
pub fn kernel_is_built(name: &str) -> bool {
    built_variant(name).is_some()
}

/// Fetches the source `--kernel name` is built from, if it is built, so
/// that its build later starts at `make`.
pub fn fetch_kernel_source(name: &str) -> Result<()> {
    match built_variant(name) {
        Some((variant, line)) => kernel::fetch_source(series_of(name, line)?, variant),
        None => Ok(()),
    }
}

/// The series line `--kernel name` builds.
fn series_of(name: &str, line: &str) -> Result<&'static kernel::Series> {
    kernel::Series::for_line(line).map_err(|e| anyhow::anyhow!("--kernel {name}: {e}"))
}

/// What `--kernel` names: a Debian line (`debian:7.3`, `stock` =
/// `debian:6.12`), one of a built pair (`patched`, `unpatched` = the 6.12
/// pair, or `patched:7.3`, `unpatched:7.3`), or a path to a bzImage. Returns the image and a name for
/// messages.
pub fn resolve_kernel(name: &str) -> Result<(PathBuf, String)> {
    let name = unalias(name);
    if let Some(line) = name.strip_prefix("debian:") {
        let k = debian_kernel::ensure(debian_kernel::Wanted::parse(line)?)?;
        return Ok((k.vmlinuz, format!("Debian {}", k.release)));
    }
    if let Some((variant, line)) = built_variant(name) {
        return Ok((
            kernel::ensure(series_of(name, line)?, variant)?,
            format!("{line} {}", variant.describe()),
        ));
    }
    let p = PathBuf::from(name);
    if !p.is_file() {
        bail!("--kernel {name}: not debian:LINE[-rt|-generic] (6.12, 7.0 … 7.3, newest), stock, patched[:LINE], unpatched[:LINE], patched-v3:LINE (LINE 6.12 or 7.3), nor a file");
    }
    Ok((p, name.to_owned()))
}

pub fn run_cli(args: &VmArgs) -> Result<i32> {
    let (kernel, kernel_name) = resolve_kernel(&args.kernel)?;
    if args.fetch_only {
        println!("{}", kernel.display());
        eprintln!("vm: {} is {kernel_name}", args.kernel);
        return Ok(0);
    }
    let fuselock = build::fuselock_static()?;
    let mut files = vec![(fuselock, "/bin/fuselock".to_owned())];
    for add in &args.add {
        let (host, guest) = match add.split_once(':') {
            Some((h, g)) => (PathBuf::from(h), g.to_owned()),
            None => {
                let host = PathBuf::from(add);
                let name = host
                    .file_name()
                    .context("--add needs a file name")?
                    .to_string_lossy()
                    .into_owned();
                (host, format!("/bin/{name}"))
            }
        };
        if !host.is_file() {
            bail!("--add {add}: {} is not a file", host.display());
        }
        files.push((host, guest));
    }
    run(&VmSpec {
        kernel,
        kernel_name,
        files,
        mount: args.mount,
        command: args.command.clone(),
        cpus: args.cpus,
        memory_mb: args.memory_mb,
        timeout: Duration::from_secs(args.timeout),
        append: args.append.clone(),
        interactive: std::io::IsTerminal::is_terminal(&std::io::stdin()),
    })
}

/// Columns and rows of the terminal on stdin, if it is one.
fn terminal_size() -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ fills a winsize struct for a terminal fd.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Boots, streams the console to stdout, returns the guest command's status.
pub fn run(spec: &VmSpec) -> Result<i32> {
    run_keeping(spec, None).map(|done| done.code)
}

/// A VM run that reported its command's status.
pub struct Finished {
    pub code: i32,
    /// The console lines that start with `run_keeping`'s `keep`.
    pub kept: Vec<String>,
    /// Why the first boot did not count, when it did not.
    pub second_boot: Option<String>,
}

/// As `run`, and also returns the console lines that start with `keep`
/// (results a guest program prints for the host). A run that is not
/// interactive boots once more after a death fuselock cannot have caused
/// ([`earns_second_boot`]), and says so.
pub fn run_keeping(spec: &VmSpec, keep: Option<&str>) -> Result<Finished> {
    run_resuming(spec, keep, |_| None)
}

/// As [`run_keeping`]; when the first boot does not count, `resume` may
/// give the command to run on the second one instead, from the lines the
/// first boot kept (the test runner skips the tests that already passed).
pub fn run_resuming(
    spec: &VmSpec,
    keep: Option<&str>,
    resume: impl FnOnce(&[String]) -> Option<Vec<String>>,
) -> Result<Finished> {
    let mut kept = Vec::new();
    let (code, second_boot) = match boot(spec, keep, &mut kept) {
        Ok(code) => (code, None),
        Err(e) => {
            let why = earns_second_boot(&e).filter(|_| !spec.interactive);
            let Some(why) = why else {
                return Err(e);
            };
            eprintln!("\nvm: {why}; booting once more (see docs/development.md)");
            let command = resume(&kept);
            kept.clear();
            let code = match command {
                Some(command) => boot(
                    &VmSpec {
                        command,
                        ..spec.clone()
                    },
                    keep,
                    &mut kept,
                )?,
                None => boot(spec, keep, &mut kept)?,
            };
            (code, Some(why))
        }
    };
    Ok(Finished {
        code,
        kept,
        second_boot,
    })
}

/// One boot of the VM.
/// Boots `spec` once; the console lines that start with `keep` go to
/// `kept`, also when the boot fails.
fn boot(spec: &VmSpec, keep: Option<&str>, kept: &mut Vec<String>) -> Result<i32> {
    crate::setup::ensure_vm_tools()?;
    let initrd = initramfs(spec)?;
    let mut cmdline = "console=ttyS0 quiet panic=-1 mitigations=off".to_owned();
    if let Some(extra) = spec.append.as_deref().filter(|a| !a.trim().is_empty()) {
        cmdline.push(' ');
        cmdline.push_str(extra.trim());
    }
    // One host thread per vCPU (qemu's default) starves when vCPUs far
    // outnumber the host's cores: 64 took minutes to boot here and died of
    // a stale text-patching breakpoint. One thread running them in turn
    // boots 64 in about 13 s. (A few online CPUs with more possible ones,
    // `-smp 2,maxcpus=64`, gives the guest only 2 possible CPUs under TCG:
    // Linux counts hotpluggable MADT entries only under a hypervisor it
    // recognises, and TCG is none.)
    let host = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
    let tcg = if spec.cpus > 2 * host {
        "tcg,thread=single"
    } else {
        "tcg,thread=multi"
    };
    eprintln!(
        "vm: booting {} (qemu TCG, {} CPUs{}, {} MiB){}",
        spec.kernel_name,
        spec.cpus,
        if spec.cpus > 2 * host {
            " on one host thread"
        } else {
            ""
        },
        spec.memory_mb,
        spec.append
            .as_deref()
            .map(|a| format!(", with {a}"))
            .unwrap_or_default()
    );
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", tcg, "-cpu", "max", "-nographic", "-no-reboot"])
        .args([
            "-m",
            &spec.memory_mb.to_string(),
            "-smp",
            &spec.cpus.to_string(),
        ])
        .arg("-kernel")
        .arg(&spec.kernel)
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(&cmdline)
        // From a terminal the guest console is interactive (fuselock top
        // works there; qemu's escape is Ctrl-A x); otherwise no input.
        .stdin(if spec.interactive {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (run `cargo xtask setup`)")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let pid = child.id();

    let finished = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let finished = finished.clone();
        let timeout = spec.timeout;
        std::thread::spawn(move || {
            let start = Instant::now();
            while !finished.load(Ordering::Relaxed) {
                if start.elapsed() > timeout {
                    eprintln!(
                        "vm: no exit marker after {}s; killing qemu",
                        timeout.as_secs()
                    );
                    // SAFETY: kill(2) on our own child's pid.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    let console = if spec.interactive && keep.is_none() {
        Console {
            exit: forward_raw(stdout)?,
            oops: None,
            // Not told apart: an interactive run is not booted again.
            boot_panic: false,
        }
    } else {
        forward_lines(stdout, &mut std::io::stdout(), keep, kept)?
    };
    let status = child.wait()?;
    finished.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    let code = console.status(&spec.kernel_name, &status.to_string(), status.success())?;
    eprintln!(
        "vm: command exited {code} on {} after {:.1}s",
        spec.kernel_name,
        started.elapsed().as_secs_f64()
    );
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_oops(console: &str) -> Option<GuestOops> {
        let mut reader = OopsReader::default();
        console.lines().for_each(|l| reader.line(l));
        reader.found
    }

    /// A boot that never reached our init, or a stale patch breakpoint, says
    /// nothing about fuselock; every other failure is a result.
    #[test]
    fn only_faults_fuselock_could_not_cause_earn_a_second_boot() {
        let oops = |kind: &str, rip: &str| {
            anyhow::Error::new(GuestOops {
                kind: kind.to_owned(),
                rip: rip.to_owned(),
            })
            .context("the VM's kernel oopsed")
        };
        assert_eq!(
            earns_second_boot(&oops("int3", "fuse_file_io_open+0x5/0x130")).as_deref(),
            Some(
                "the guest kernel died of Oops: int3 at fuse_file_io_open+0x5/0x130, \
                 a stale breakpoint of live text patching"
            )
        );
        let never = anyhow::Error::new(GuestNeverBooted {
            kernel: "6.12".to_owned(),
            died_of: None,
        });
        assert!(earns_second_boot(&never)
            .is_some_and(|why| why.contains("before the VM's init printed its first line")));
        assert_eq!(
            earns_second_boot(&oops("int3", "fuse_write_iter+0x42/0x300")),
            None
        );
        assert_eq!(
            earns_second_boot(&oops("invalid opcode", "f+0x5/0x10")),
            None
        );
        assert_eq!(earns_second_boot(&anyhow::anyhow!("exit 1")), None);
    }

    /// How runs end, read from consoles as qemu prints them.
    fn status_of(console: &str, qemu_exited: bool) -> Result<i32> {
        let mut out = Vec::new();
        forward_lines(console.as_bytes(), &mut out, None, &mut Vec::new())
            .expect("console")
            .status("6.12", "exit status: 0", qemu_exited)
    }

    const BOOT_PANIC: &str = "\
        [    1.49] Oops: invalid opcode: 0000 [#1] PREEMPT SMP NOPTI\n\
        [    1.51] RIP: 0010:enqueue_timer+0xa5/0x100\n\
        [    1.51] Kernel panic - not syncing: Fatal exception in interrupt\n";

    #[test]
    fn only_a_panic_before_init_speaks_is_a_boot_that_never_happened() {
        let never = status_of(BOOT_PANIC, true).expect_err("no status");
        let never = never
            .downcast_ref::<GuestNeverBooted>()
            .expect("never booted");
        assert_eq!(
            never.to_string(),
            "the guest kernel (6.12) panicked of Oops: invalid opcode at \
             enqueue_timer+0xa5/0x100 before the VM's init printed its first line"
        );
        // Killed by the watchdog: a hang, whatever came before.
        let hang = status_of(BOOT_PANIC, false).expect_err("no status");
        assert!(
            hang.downcast_ref::<GuestNeverBooted>().is_none(),
            "{hang:#}"
        );
        // After init spoke, a panic is the run's own.
        let after = format!("vm: kernel 6.12, 2 CPUs\n{BOOT_PANIC}");
        let oops = status_of(&after, true).expect_err("no status");
        assert!(oops.downcast_ref::<GuestOops>().is_some(), "{oops:#}");
        // No banner and no panic (a garbled banner, say): no second boot.
        let garbled =
            status_of("vm: ker[ 2.0] x\nnel 6.12\ntest a ... ok\n", true).expect_err("no status");
        assert_eq!(earns_second_boot(&garbled), None);
        assert_eq!(
            status_of(&format!("vm: kernel 6.12\n{EXIT_MARKER}3\n"), true).expect("status"),
            3
        );
    }

    #[test]
    fn a_stale_patch_breakpoint_is_told_from_other_oopses() {
        // As Debian's 6.12 printed it in the VM (abridged).
        let stale = read_oops(
            "[    7.227414] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n\
             [    7.228299] RIP: 0010:fuse_file_io_open+0x5/0x130\n\
             [    7.231009] RIP: 0033:0x47b5e1\n",
        )
        .expect("an oops");
        assert_eq!(stale.kind, "int3");
        assert_eq!(stale.rip, "fuse_file_io_open+0x5/0x130");
        assert!(stale.is_stale_patch_breakpoint());

        let inside =
            read_oops("Oops: int3: 0000 [#1] SMP\nRIP: 0010:fuse_file_io_open+0x3c/0x100\n");
        assert!(!inside.expect("an oops").is_stale_patch_breakpoint());
        let gpf = read_oops(
            "Oops: general protection fault, probably for non-canonical address: 0000 [#1] SMP\n\
             RIP: 0010:fuse_file_io_open+0x5/0x100\n",
        )
        .expect("an oops");
        assert_eq!(
            gpf.kind,
            "general protection fault, probably for non-canonical address"
        );
        assert!(!gpf.is_stale_patch_breakpoint());
        assert_eq!(
            read_oops("vm: kernel 6.12.118, 2 CPUs\nRIP: 0010:x+0x1/0x2\n"),
            None
        );
    }

    #[test]
    fn quoting_survives_shell_metacharacters() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}

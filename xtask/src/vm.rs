//! The VM: a kernel with kprobes under qemu (TCG), a busybox initramfs with
//! fuselock on PATH, one command, its output streamed, its exit status
//! returned.
//!
//! The guest's init prints a marker line with the command's status and
//! powers off; the host watches the serial console for it, and a watchdog
//! kills qemu if it never comes (hang, panic, lockup).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{build, cache, cpio::Cpio, debian_kernel, kernel};

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

/// What `--kernel` names: a Debian line (`debian:7.3`, `stock` =
/// `debian:6.12`), one of a built pair (`patched`, `unpatched` = the 6.12
/// pair, or `patched:7.3`, `unpatched:7.3`), or a path to a bzImage. Returns the image and a name for
/// messages.
pub fn resolve_kernel(name: &str) -> Result<(PathBuf, String)> {
    let name = match name {
        "stock" => "debian:6.12",
        "patched" => "patched:6.12",
        "unpatched" => "unpatched:6.12",
        other => other,
    };
    if let Some(line) = name.strip_prefix("debian:") {
        let k = debian_kernel::ensure(debian_kernel::Wanted::parse(line)?)?;
        return Ok((k.vmlinuz, format!("Debian {}", k.release)));
    }
    if let Some((variant, line)) = name.split_once(':') {
        if let Some(variant) = kernel::Variant::ALL
            .into_iter()
            .find(|v| v.name() == variant)
        {
            let series = kernel::Series::for_line(line)
                .map_err(|e| anyhow::anyhow!("--kernel {name}: {e}"))?;
            return Ok((
                kernel::ensure(series, variant)?,
                format!("{line} {}", variant.describe()),
            ));
        }
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

/// Why a failed VM run says nothing about fuselock and earns one more boot,
/// if it does: the guest kernel panicked before our init printed its first
/// line, or died of a stale breakpoint of live text patching ([`GuestOops::is_stale_patch_breakpoint`]).
/// Any other failure is a result.
pub fn earns_second_boot(e: &anyhow::Error) -> Option<String> {
    if let Some(never) = e.downcast_ref::<GuestNeverBooted>() {
        return Some(never.to_string());
    }
    e.downcast_ref::<GuestOops>()
        .filter(|oops| oops.is_stale_patch_breakpoint())
        .map(|oops| {
            format!("the guest kernel died of {oops}, a stale breakpoint of live text patching")
        })
}

/// Line by line, firmware chatter held back: for logs and CI. Lines that
/// start with `keep` (if given) are also handed back.
fn forward_lines(
    console: impl std::io::Read,
    out: &mut dyn std::io::Write,
    keep: Option<&str>,
    kept: &mut Vec<String>,
) -> Result<Console> {
    let mut exit = None;
    let mut oops = OopsReader::default();
    // Firmware chatter before our init speaks is kept back, and shown only
    // if the guest never gets that far.
    let mut early: Vec<String> = Vec::new();
    let mut init_started = false;
    let mut boot_panic = false;
    for line in BufReader::new(console).split(b'\n') {
        let line = line.context("reading the console")?;
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches('\r');
        if let Some(code) = line.strip_prefix(EXIT_MARKER) {
            exit = code.trim().parse::<i32>().ok();
            continue;
        }
        oops.line(line);
        if !init_started {
            if let Some(pos) = line.find(INIT_BANNER) {
                init_started = true;
                let _ = writeln!(out, "{}", &line[pos..]);
            } else {
                boot_panic |= line.contains(KERNEL_PANIC);
                early.push(line.to_owned());
            }
            continue;
        }
        if keep.is_some_and(|k| line.starts_with(k)) {
            kept.push(line.to_owned());
        }
        let _ = writeln!(out, "{line}");
    }
    if !init_started {
        for line in &early {
            let _ = writeln!(out, "{line}");
        }
    }
    Ok(Console {
        exit,
        oops: oops.found,
        boot_panic,
    })
}

/// What the kernel prints when it gives up.
const KERNEL_PANIC: &str = "Kernel panic - not syncing";

/// What the console said of a run.
struct Console {
    /// The command's exit status, if the guest reported one.
    exit: Option<i32>,
    oops: Option<GuestOops>,
    /// The kernel panicked before our init printed its first line.
    boot_panic: bool,
}

impl Console {
    /// The command's status, or why there is none. `qemu_exited` says
    /// whether qemu ended by itself (the guest powered off, or panicked
    /// with `panic=-1` under `-no-reboot`), not killed by the watchdog.
    fn status(self, kernel: &str, qemu: &str, qemu_exited: bool) -> Result<i32> {
        match self {
            Console {
                exit: Some(code), ..
            } => Ok(code),
            Console {
                boot_panic: true,
                oops,
                ..
            } if qemu_exited => Err(anyhow::Error::new(GuestNeverBooted {
                kernel: kernel.to_owned(),
                died_of: oops,
            })),
            Console {
                oops: Some(oops), ..
            } => Err(anyhow::Error::new(oops).context(format!(
                "the VM's kernel ({kernel}) oopsed; see the console above"
            ))),
            Console { .. } => bail!(
                "the VM ended without reporting the command's status (qemu: {qemu}); see the console above"
            ),
        }
    }
}

/// Byte for byte, as it comes: a full-screen program in the guest draws
/// without newlines. The exit marker is still picked out of the stream.
fn forward_raw(mut stdout: std::process::ChildStdout) -> Result<Option<i32>> {
    use std::io::Read as _;
    let mut out = std::io::stdout();
    let mut tail = String::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stdout.read(&mut buf).context("reading the console")?;
        if n == 0 {
            break;
        }
        let _ = out.write_all(&buf[..n]);
        let _ = out.flush();
        tail.push_str(&String::from_utf8_lossy(&buf[..n]));
        if tail.len() > 8192 {
            tail = tail.split_off(tail.len() - 4096);
        }
    }
    Ok(tail.rsplit_once(EXIT_MARKER).and_then(|(_, rest)| {
        rest.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()
    }))
}

/// Columns and rows of the terminal on stdin, if it is one.
fn terminal_size() -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ fills a winsize struct for a terminal fd.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Single-quotes `s` for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn init_script(spec: &VmSpec) -> String {
    // A serial console has no size; take the host terminal's so full-screen
    // programs (fuselock top) fit it.
    let size = match (spec.interactive, terminal_size()) {
        (true, Some((cols, rows))) => format!("stty rows {rows} cols {cols} 2>/dev/null\n"),
        _ => String::new(),
    };
    let mount = match spec.mount {
        None => String::new(),
        Some(kind) => format!(
            r#"mkdir -p /backing /mnt/fuse
mount -t tmpfs backing /backing
fuselock testfs --backing /backing --mountpoint /mnt/fuse {flags} >/tmp/testfs.log 2>&1 &
for i in $(seq 1 100); do grep -q ' /mnt/fuse ' /proc/mounts && break; sleep 0.1; done
grep -q ' /mnt/fuse ' /proc/mounts || {{ echo "vm: testfs did not mount:"; cat /tmp/testfs.log; }}
echo "vm: /mnt/fuse mounted ({kind:?})"
"#,
            flags = kind.testfs_flags()
        ),
    };
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmp /tmp
mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=xterm
{size}
echo "vm: kernel $(uname -r), $(nproc) CPUs, preemption $(cat /sys/kernel/debug/sched/preempt 2>/dev/null || echo unknown)"
{mount}cd /tmp
/bin/sh /run.sh
echo "{EXIT_MARKER}$?"
poweroff -f
"#
    )
}

fn initramfs(spec: &VmSpec) -> Result<PathBuf> {
    let busybox = PathBuf::from("/bin/busybox");
    if !busybox.is_file() {
        bail!("/bin/busybox missing: run `cargo xtask setup` (installs busybox-static)");
    }
    let mut c = Cpio::new(Vec::new());
    for dir in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "mnt", "root",
        "etc", "run",
    ] {
        c.dir(dir)?;
    }
    c.char_dev("dev/console", 5, 1)?;
    c.char_dev("dev/null", 1, 3)?;
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    c.file("bin/busybox", 0o755, &read(&busybox)?)?;
    c.symlink("bin/sh", "busybox")?;
    c.file("init", 0o755, init_script(spec).as_bytes())?;
    let command: Vec<String> = spec.command.iter().map(|a| sh_quote(a)).collect();
    c.file(
        "run.sh",
        0o755,
        format!("exec {}\n", command.join(" ")).as_bytes(),
    )?;
    let mut dirs_made = std::collections::BTreeSet::new();
    for (host, guest) in &spec.files {
        let guest = guest.trim_start_matches('/');
        if let Some((parent, _)) = guest.rsplit_once('/') {
            let mut acc = String::new();
            for part in parent.split('/') {
                if !acc.is_empty() {
                    acc.push('/');
                }
                acc.push_str(part);
                if dirs_made.insert(acc.clone())
                    && !["bin", "usr", "usr/bin", "tmp", "root", "etc"].contains(&acc.as_str())
                {
                    c.dir(&acc)?;
                }
            }
        }
        c.file(guest, 0o755, &read(host)?)?;
    }
    let bytes = c.finish()?;
    let path = cache::workspace_root().join("target/vm/initramfs.cpio");
    std::fs::create_dir_all(path.parent().context("parent")?)?;
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
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
    let (code, kept, second_boot) = match boot(spec, keep) {
        Ok((code, kept)) => (code, kept, None),
        Err(e) => {
            let why = earns_second_boot(&e).filter(|_| !spec.interactive);
            let Some(why) = why else {
                return Err(e);
            };
            eprintln!("\nvm: {why}; booting once more (see docs/development.md)");
            let (code, kept) = boot(spec, keep)?;
            (code, kept, Some(why))
        }
    };
    Ok(Finished {
        code,
        kept,
        second_boot,
    })
}

/// One boot of the VM.
fn boot(spec: &VmSpec, keep: Option<&str>) -> Result<(i32, Vec<String>)> {
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

    let mut kept = Vec::new();
    let console = if spec.interactive && keep.is_none() {
        Console {
            exit: forward_raw(stdout)?,
            oops: None,
            // Not told apart: an interactive run is not booted again.
            boot_panic: false,
        }
    } else {
        forward_lines(stdout, &mut std::io::stdout(), keep, &mut kept)?
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
    Ok((code, kept))
}

/// The guest kernel panicked before our init printed its first line: nothing
/// of fuselock's had run.
#[derive(Debug)]
pub struct GuestNeverBooted {
    kernel: String,
    died_of: Option<GuestOops>,
}

impl std::fmt::Display for GuestNeverBooted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the guest kernel ({}) panicked", self.kernel)?;
        if let Some(oops) = &self.died_of {
            write!(f, " of {oops}")?;
        }
        f.write_str(" before the VM's init printed its first line")
    }
}

impl std::error::Error for GuestNeverBooted {}

/// A guest kernel oops read from the console: its kind (`int3`, `general
/// protection fault`, ...) and where it happened (`function+0x5/0x130`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestOops {
    pub kind: String,
    pub rip: String,
}

impl GuestOops {
    /// An unclaimed int3 at a function's patch site (the trap leaves RIP one
    /// byte past it: +0x1, or +0x5 after a 4-byte endbr/nop): a CPU ran a
    /// breakpoint byte of live text patching after the patcher had removed
    /// it and synchronised every CPU. The kernel's protocol rules that out
    /// on hardware, but under qemu's multi-threaded TCG it has happened when
    /// probes attached while another vCPU was entering the function.
    pub fn is_stale_patch_breakpoint(&self) -> bool {
        let offset = self
            .rip
            .split_once("+0x")
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|hex| u64::from_str_radix(hex, 16).ok());
        self.kind == "int3" && matches!(offset, Some(1 | 5))
    }
}

impl std::fmt::Display for GuestOops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Oops: {} at {}", self.kind, self.rip)
    }
}

impl std::error::Error for GuestOops {}

/// Reads a kernel oops from console lines, one at a time: the `Oops:` line
/// gives its kind, the first kernel `RIP:` after it the place.
#[derive(Default)]
struct OopsReader {
    kind: Option<String>,
    found: Option<GuestOops>,
}

impl OopsReader {
    fn line(&mut self, line: &str) {
        if self.found.is_some() {
            return;
        }
        if let Some((_, rest)) = line.split_once("Oops: ") {
            let kind = rest.split(':').next().unwrap_or(rest).trim();
            self.kind = Some(kind.to_owned());
        } else if let (Some(kind), Some((_, rip))) = (&self.kind, line.split_once("RIP: 0010:")) {
            self.found = Some(GuestOops {
                kind: kind.clone(),
                rip: rip.trim().to_owned(),
            });
        }
    }
}

/// tmux with its libraries, the C.UTF-8 character map (without which it
/// refuses to start: "need UTF-8 locale") and the terminfo entries of the
/// console's TERM (xterm) and of its panes (screen).
pub fn tmux_files() -> Result<Vec<(PathBuf, String)>> {
    let mut files = with_libraries("/usr/bin/tmux")?;
    for data in [
        "/usr/lib/locale/C.utf8/LC_CTYPE",
        "/lib/terminfo/x/xterm",
        "/lib/terminfo/s/screen",
    ] {
        if !Path::new(data).is_file() {
            bail!("{data} missing (from Debian's libc-bin and ncurses-base): tmux needs it");
        }
        files.push((PathBuf::from(data), data.to_owned()));
    }
    Ok(files)
}

/// A dynamically linked host binary with its libraries and loader, at the
/// same paths in the guest.
pub fn with_libraries(binary: &str) -> Result<Vec<(PathBuf, String)>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!("ldd {binary} failed");
    }
    let mut files = vec![(PathBuf::from(binary), binary.to_owned())];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push((PathBuf::from(p), p.to_owned()));
        }
    }
    Ok(files)
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

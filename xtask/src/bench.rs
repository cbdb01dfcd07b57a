//! `cargo xtask bench`: the overhead benchmark, in the VM on Debian's stock
//! kernel, next to bpftrace (Debian's package, copied into the initramfs with
//! the libraries it links).

use std::{process::Command, time::Duration};

use anyhow::{bail, Context as _, Result};

use crate::{build, cache, setup, toolchain, vm};

mod fio;
mod memory;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Writes per measured run.
    #[arg(long, default_value_t = 20_000)]
    pub writes: u64,
    /// Interleaved rounds per configuration (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: u64,
    /// Live inodes for the userspace-cost measurements (sections 3 and 4;
    /// section 4 sizes --max-inodes so that none is evicted).
    #[arg(long, default_value_t = 10_000)]
    pub inodes: u64,
    /// Which parts to run: `mem` fuselock's kernel memory at 2 and 64
    /// possible CPUs (two VM boots), 1 per-write overhead (1b: only its BPF
    /// time per write), 2 unrelated workload, 3 userspace cost in the VM, 4
    /// the same refresh work natively, `fio` the series' fio benchmark on
    /// each series pair (see --fio-pair) (two VM boots per pair),
    /// `ablation` what each part of a write's accounting costs (not by
    /// default). E.g. `mem,1234`, `fio`, `12,fio`, `1b`, `ablation`.
    #[arg(long, default_value = "mem,1234,fio")]
    pub sections: String,
    /// fio section: 4 KiB writes per fio run (split among the jobs; a
    /// multiple of 8).
    #[arg(long, default_value_t = 65_536)]
    pub fio_ios: u64,
    /// fio section: the series pairs to run on, by line (`6.12`, `7.3`;
    /// repeatable). Default: every pair `cargo xtask kernel` builds.
    #[arg(long = "fio-pair", value_name = "LINE")]
    pub fio_pairs: Vec<String>,
    /// fio section: the version of the series on the patched side of each
    /// pair: `v2` (`patched:LINE`) or `v3` (`patched-v3:LINE`).
    #[arg(long, value_enum, default_value_t = fio::SeriesVersion::V2)]
    pub fio_series: fio::SeriesVersion,
    /// fio section: rounds of 1/2/4/8 jobs, each with and without fuselock.
    #[arg(long, default_value_t = 5)]
    pub fio_rounds: u64,
    /// `debian:LINE`, `stock`, `patched`, `unpatched` or a bzImage path
    /// (sections 1-3; the fio section runs on the series pairs, see --fio-pair).
    #[arg(long, default_value = "stock")]
    pub kernel: String,
    /// Extra kernel parameters, e.g. `preempt=full`.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub append: Option<String>,
}

/// The sections `--sections` names: digits run together, or names
/// (`1b`, `fio`) between commas.
fn parse_sections(text: &str) -> Result<Vec<String>> {
    let mut sections = Vec::new();
    for token in text.split(',').filter(|t| !t.is_empty()) {
        match token {
            "fio" | "1b" | "ablation" | "mem" => sections.push(token.to_owned()),
            _ => {
                for c in token.chars() {
                    if !"1234".contains(c) {
                        bail!(
                            "--sections {text}: unknown section {c:?} (sections are mem, 1, 1b, ablation, 2, 3, 4 and fio)"
                        );
                    }
                    sections.push(c.to_string());
                }
            }
        }
    }
    if sections.is_empty() {
        bail!("--sections is empty: name 1, 1b, 2, 3, 4 and/or fio");
    }
    Ok(sections)
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let sections = parse_sections(&args.sections)?;
    let has = |s: &str| sections.iter().any(|x| x == s);
    let with_fio = has("fio");
    let digits: String = ["1", "1b", "ablation", "2", "3"]
        .into_iter()
        .filter(|s| has(s))
        .collect::<Vec<_>>()
        .join(",");
    setup::ensure_all()?;
    if has("mem") {
        memory::run(&args.kernel)?;
    }
    if !digits.is_empty() {
        in_vm(args, &digits)?;
    }
    if with_fio {
        fio::run(
            &args.fio_pairs,
            args.fio_series,
            args.fio_rounds,
            args.fio_ios,
            args.append.as_deref(),
        )?;
    }
    if has("4") {
        native(args.inodes)?;
    }
    Ok(())
}

/// Section 4: the collector and consumers on real BPF maps on this machine
/// (which can create maps but not attach probes), timed by a test of the
/// `test_rig` module; then the real `top` process replaying a stream recorded
/// from those maps, in a tmux terminal. After the VM, so that nothing else
/// runs meanwhile.
fn native(inodes: u64) -> Result<()> {
    let recording = std::env::temp_dir().join("fuselock-bench-replay.jsonl");
    let out = toolchain::cargo()
        .args([
            "test",
            "--release",
            "-p",
            "fuselock",
            "--lib",
            "--",
            "--ignored",
            "--test-threads",
            "1",
            "test_rig::tests::",
            "--nocapture",
        ])
        .env("FUSELOCK_NATIVE_RECORDING", &recording)
        .env("FUSELOCK_BENCH_INODES", inodes.to_string())
        .current_dir(cache::workspace_root())
        .output()
        .context("running the native refresh benchmark")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Only the benchmark's own lines, not the test harness's.
    for line in text.lines() {
        let harness = line.starts_with("running ") || line.starts_with("test ") || line == "ok";
        if !(harness || line.is_empty()) {
            println!("{line}");
        }
    }
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        bail!("the native refresh benchmark failed");
    }
    // A filter that matches no test passes with nothing printed: say so.
    if !text.contains("4. the same refresh work natively") {
        bail!("the native refresh benchmark did not run (no test matched `test_rig::tests::`)");
    }
    if recording.is_file() {
        let result = replay_top(&recording);
        let _ = std::fs::remove_file(&recording);
        result?;
    }
    Ok(())
}

/// CPU time of `pid`'s threads, in seconds: the sum of their scheduler
/// run times (nanoseconds; utime and stime count 10 ms ticks, too coarse
/// for a process that runs a millisecond a second).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing /proc/{pid}/task"))?
        .flatten()
    {
        // A thread that just ended has no file any more: it ran nothing since.
        if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
            ns += s
                .split(' ')
                .next()
                .and_then(|f| f.parse::<u64>().ok())
                .context("odd schedstat")?;
        }
    }
    Ok(ns as f64 * 1e-9)
}

/// The most memory `pid` has held resident (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmHWM in /proc/{pid}/status"))
}

/// The pid of the process whose arguments start with `fuselock top`.
fn find_top() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|p| {
        let pid: u32 = p.file_name().to_string_lossy().parse().ok()?;
        let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        (args.len() > 2 && args[0].ends_with(b"fuselock") && args[1] == b"top").then_some(pid)
    })
}

/// The whole `fuselock top` process, natively, replaying `recording` (one
/// line a second: 20 s idle, then 20 s with one busy file) in a 160x50
/// tmux terminal; CPU over 15 s of each phase.
fn replay_top(recording: &std::path::Path) -> Result<()> {
    let built = toolchain::cargo()
        .args(["build", "--release", "-p", "fuselock"])
        .current_dir(cache::workspace_root())
        .output()
        .context("building fuselock for this machine")?;
    if !built.status.success() {
        eprint!("{}", String::from_utf8_lossy(&built.stderr));
        bail!("cargo build --release -p fuselock failed");
    }
    let binary = cache::workspace_root().join("target/release/fuselock");
    setup::ensure_apt_packages(&["tmux"])?;
    let socket = "fuselock-bench-native";
    let started = Command::new("tmux")
        .args(["-L", socket, "new-session", "-d", "-x", "160", "-y", "50"])
        .arg(format!(
            "{} top --replay {} --interval 1",
            binary.display(),
            recording.display()
        ))
        .status()
        .context("starting tmux")?;
    if !started.success() {
        bail!("tmux would not start `fuselock top`");
    }
    let kill = || {
        let _ = Command::new("tmux")
            .args(["-L", socket, "kill-server"])
            .status();
    };
    let t0 = std::time::Instant::now();
    let pid = loop {
        if let Some(pid) = find_top() {
            break pid;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            kill();
            bail!("`fuselock top --replay` did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let window = |from: u64, to: u64| -> Result<f64> {
        std::thread::sleep(Duration::from_secs(from).saturating_sub(t0.elapsed()));
        let (c0, w0) = (cpu_seconds(pid)?, t0.elapsed());
        std::thread::sleep(Duration::from_secs(to).saturating_sub(t0.elapsed()));
        Ok((cpu_seconds(pid)? - c0) / (t0.elapsed() - w0).as_secs_f64())
    };
    let idle = window(3, 18);
    let busy = window(24, 39);
    let peak = peak_rss_kib(pid);
    kill();
    let (idle, busy, peak) = (idle?, busy?, peak?);
    let ms = |s: f64| format!("{:.3} ms", s * 1e3);
    println!(
        "   {:<30} {:>14} {:>14} {:>16} {:>22}   ({:.3} % / {:.3} % of a core at 1 s; peak RSS {:.1} MiB)",
        "top --replay, whole process",
        "-",
        ms(idle),
        "-",
        ms(busy),
        idle * 100.0,
        busy * 100.0,
        peak as f64 / 1024.0
    );
    Ok(())
}

fn in_vm(args: &BenchArgs, sections: &str) -> Result<()> {
    setup::ensure_apt_packages(&["bpftrace"])?;
    let (kernel, kernel_name) = vm::resolve_kernel(&args.kernel)?;
    let mut files = vec![
        (build::fuselock_static()?, "/bin/fuselock".to_owned()),
        (build::vm_bench_static()?, "/bin/vm-bench".to_owned()),
    ];
    files.extend(vm::with_libraries("/usr/bin/bpftrace")?);
    // `top` is measured in a real terminal: tmux's.
    files.extend(vm::tmux_files()?);
    let code = vm::run(&vm::VmSpec {
        kernel,
        kernel_name,
        files,
        mount: None,
        command: vec![
            "env".into(),
            format!("FUSELOCK_BENCH_WRITES={}", args.writes),
            format!("FUSELOCK_BENCH_ROUNDS={}", args.rounds),
            format!("FUSELOCK_BENCH_INODES={}", args.inodes),
            format!("FUSELOCK_BENCH_SECTIONS={sections}"),
            "vm-bench".into(),
        ],
        cpus: 2,
        memory_mb: 2048,
        timeout: Duration::from_secs(3600),
        append: args.append.clone(),
        interactive: false,
    })?;
    if code != 0 {
        bail!("the benchmark failed in the VM (exit {code})");
    }
    Ok(())
}

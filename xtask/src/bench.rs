//! `cargo xtask bench`: the overhead benchmark, in the VM on Debian's stock
//! kernel, next to bpftrace (Debian's package, copied into the initramfs with
//! the libraries it links).

use std::{process::Command, time::Duration};

use anyhow::{bail, Context as _, Result};

use crate::{build, cache, setup, vm};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Writes per measured run.
    #[arg(long, default_value_t = 20_000)]
    pub writes: u64,
    /// Interleaved rounds per configuration (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: u64,
    /// Live inodes for the userspace-cost measurement.
    #[arg(long, default_value_t = 10_000)]
    pub inodes: u64,
    /// Which parts to run: 1 per-write overhead, 2 unrelated workload,
    /// 3 userspace cost in the VM, 4 the same refresh work natively.
    #[arg(long, default_value = "1234")]
    pub sections: String,
    /// `stock`, `patched`, `unpatched` or a bzImage path.
    #[arg(long, default_value = "stock")]
    pub kernel: String,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    setup::ensure_all()?;
    if args.sections.chars().any(|c| "123".contains(c)) {
        in_vm(args)?;
    }
    if args.sections.contains('4') {
        native()?;
    }
    Ok(())
}

/// Section 4: the collector and consumers on real BPF maps on this machine
/// (which can create maps but not attach probes), timed by a test of the
/// `native` module. After the VM, so that nothing else runs meanwhile.
fn native() -> Result<()> {
    let out = Command::new(env!("CARGO"))
        .args([
            "test",
            "--release",
            "-p",
            "fuselock",
            "--bin",
            "fuselock",
            "--",
            "--ignored",
            "--exact",
            "native::tests::refresh_cost_natively",
            "--nocapture",
        ])
        .current_dir(cache::workspace_root())
        .output()
        .context("running the native refresh benchmark")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Only the benchmark's own lines, not the test harness's.
    for line in text.lines() {
        if !(line.starts_with("running ") || line.starts_with("test ") || line.is_empty()) {
            println!("{line}");
        }
    }
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        bail!("the native refresh benchmark failed");
    }
    Ok(())
}

fn in_vm(args: &BenchArgs) -> Result<()> {
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
            format!("FUSELOCK_BENCH_SECTIONS={}", args.sections),
            "vm-bench".into(),
        ],
        cpus: 2,
        memory_mb: 2048,
        timeout: Duration::from_secs(3600),
        interactive: false,
    })?;
    if code != 0 {
        bail!("the benchmark failed in the VM (exit {code})");
    }
    Ok(())
}

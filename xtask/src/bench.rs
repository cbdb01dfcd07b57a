//! `cargo xtask bench`: the overhead benchmark, in the VM on Debian's stock
//! kernel, next to bpftrace (Debian's package, copied into the initramfs with
//! the libraries it links).

use std::time::Duration;

use anyhow::{bail, Result};

use crate::{build, setup, vm};

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
    /// 3 userspace cost.
    #[arg(long, default_value = "123")]
    pub sections: String,
    /// `stock`, `patched`, `unpatched` or a bzImage path.
    #[arg(long, default_value = "stock")]
    pub kernel: String,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    setup::ensure_all()?;
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

//! `cargo xtask test`: the whole suite, the command CI runs.

use std::{process::Command, time::Instant};

use anyhow::{bail, Result};

use crate::{build, cache, dist, fuzz, install_test, setup, vm};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip the VM tests (host-only run).
    #[arg(long)]
    pub no_vm: bool,
    /// Skip the host steps (fmt, clippy, host tests, fuzzing): VM tests only.
    #[arg(long, conflicts_with = "no_vm")]
    pub vm_only: bool,
    /// Kernels to run the VM tests on (default: all three).
    #[arg(long = "kernel", value_parser = ["stock", "patched", "unpatched"])]
    pub kernels: Vec<String>,
    /// Only VM tests whose name contains this (libtest's filter).
    #[arg(long)]
    pub filter: Option<String>,
    /// Show the VM tests' own output (libtest's --nocapture).
    #[arg(long)]
    pub nocapture: bool,
    /// Also run the long tests (a million writes from 16 threads), which CI
    /// leaves out for their length.
    #[arg(long)]
    pub heavy: bool,
    /// Seconds to fuzz each fuzz target (0 skips fuzzing).
    #[arg(long, default_value_t = fuzz::DEFAULT_SECONDS, value_name = "N")]
    pub fuzz_seconds: u64,
}

fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    eprintln!("\n==> {name}");
    let t = Instant::now();
    f()?;
    eprintln!("==> {name}: ok ({:.0}s)", t.elapsed().as_secs_f64());
    Ok(())
}

fn cargo(args: &[&str]) -> Result<()> {
    setup::run_cmd(
        Command::new(env!("CARGO"))
            .args(args)
            .current_dir(cache::workspace_root()),
    )
}

pub fn run(args: &TestArgs) -> Result<()> {
    let t = Instant::now();
    step("toolchain set-up", setup::ensure_all)?;
    if !args.vm_only {
        step("cargo fmt --check", || {
            cargo(&["fmt", "--all", "--", "--check"])
        })?;
        step("cargo clippy", || {
            cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])
        })?;
        step("host tests", || cargo(&["test"]))?;
        step("install path: cargo xtask dist, dpkg -i, dpkg -r", || {
            install_test::run(&dist::run()?)
        })?;
        if args.fuzz_seconds > 0 {
            step(
                &format!("fuzzing, {}s per target", args.fuzz_seconds),
                || fuzz::fuzz(fuzz::TARGETS, args.fuzz_seconds),
            )?;
        }
    }
    if !args.no_vm {
        let fuselock = build::fuselock_static()?;
        let tests = build::vm_tests_static()?;
        // A real Prometheus scrapes `fuselock export` in the exporter test.
        let prometheus = vm::with_libraries("/usr/bin/prometheus")?;
        // tmux drives `fuselock top` in the VM as a person would.
        let tmux = vm::tmux_files()?;
        let all = ["stock", "patched", "unpatched"].map(str::to_owned);
        let kernels = if args.kernels.is_empty() {
            &all[..]
        } else {
            &args.kernels[..]
        };
        for kernel in kernels {
            let (image, kernel_name) = vm::resolve_kernel(kernel)?;
            step(&format!("VM end-to-end tests on {kernel_name}"), || {
                let code = vm::run(&vm::VmSpec {
                    kernel: image,
                    kernel_name: kernel_name.clone(),
                    files: [
                        vec![
                            (fuselock.clone(), "/bin/fuselock".into()),
                            (tests.clone(), "/bin/vm-tests".into()),
                        ],
                        prometheus.clone(),
                        tmux.clone(),
                    ]
                    .concat(),
                    mount: None,
                    command: [
                        "env",
                        &format!("FUSELOCK_TEST_KERNEL={kernel}"),
                        &format!("FUSELOCK_TEST_HEAVY={}", u8::from(args.heavy)),
                        "vm-tests",
                        "--include-ignored",
                        "--test-threads=1",
                    ]
                    .into_iter()
                    .map(str::to_owned)
                    .chain(args.nocapture.then(|| "--nocapture".to_owned()))
                    .chain(args.filter.clone())
                    .collect(),
                    cpus: 2,
                    memory_mb: 1024,
                    timeout: std::time::Duration::from_secs(1800),
                    interactive: false,
                })?;
                if code != 0 {
                    bail!("VM tests failed on {kernel_name} (exit {code})");
                }
                Ok(())
            })?;
        }
    }
    eprintln!(
        "\nall test steps passed in {:.0}s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

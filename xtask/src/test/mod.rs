//! `cargo xtask test`: the whole suite, the command CI runs.

use std::time::Instant;

use anyhow::{bail, ensure, Result};

mod host_checks;
mod kernels;
mod matrix;
mod resume;
mod timings;

pub use matrix::Matrix;

use host_checks::HostChecks;
use kernels::Kernels;
use matrix::{core_of, select, test_kernel_name, Run, Tier, SCALE, SCALE_CPUS};
use resume::{listed_tests, skips_for_passed};
use timings::Timings;

use crate::{build, dist, fuzz, install_test, kernel, libfuse, setup, toolchain, vm};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip the VM tests (host-only run).
    #[arg(long)]
    pub no_vm: bool,
    /// Skip the host steps (fmt, clippy, host tests, fuzzing): VM tests only.
    #[arg(long, conflicts_with = "no_vm")]
    pub vm_only: bool,
    /// Kernels to run the VM tests on, as `cargo xtask vm --kernel` names
    /// them (default: the kernels of --matrix).
    #[arg(long = "kernel")]
    pub kernels: Vec<String>,
    /// Which kernels run which VM tests when no --kernel is named: `ci`
    /// (the whole suite on Debian's stock 6.12 and the 6.12 series kernel,
    /// the core on every other kernel) or `full` (the whole suite on every
    /// series kernel too).
    #[arg(long, value_enum, default_value_t = Matrix::Ci, conflicts_with = "kernels")]
    pub matrix: Matrix,
    /// Extra kernel parameters for the kernels named with --kernel.
    #[arg(
        long,
        value_name = "ARGS",
        allow_hyphen_values = true,
        requires = "kernels"
    )]
    pub append: Option<String>,
    /// Run only the core VM tests (the `core_tier` modules, see
    /// [`matrix::CORE`]) on the kernels named.
    #[arg(long)]
    pub core: bool,
    /// Run only the scale tests (the `scale_tier` modules), in a guest with 16 CPUs,
    /// on the kernels named.
    #[arg(long, conflicts_with = "core")]
    pub scale: bool,
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

fn cargo(args: &[&str]) -> Result<()> {
    setup::run_cmd(toolchain::cargo().args(args))
}

pub fn run(args: &TestArgs) -> Result<()> {
    let started = Instant::now();
    let mut timings = Timings::default();
    // VM runs that passed only on a second boot, said again at the end.
    let mut reruns: Vec<String> = Vec::new();
    let result = run_steps(args, &mut timings, &mut reruns);
    let total = started.elapsed().as_secs_f64();
    eprint!("{}", timings.table(total));
    result?;
    eprintln!("\nall test steps passed in {total:.0}s");
    if !reruns.is_empty() {
        eprintln!(
            "{} VM run(s) passed only on a second boot, after the guest kernel died where fuselock could not have caused it:",
            reruns.len()
        );
        for rerun in &reruns {
            eprintln!("  {rerun}");
        }
    }
    Ok(())
}

/// The VM runs asked for: the matrix's, or one tier on each kernel named.
fn vm_runs(args: &TestArgs) -> Vec<Run> {
    if args.kernels.is_empty() {
        return args.matrix.runs();
    }
    args.kernels
        .iter()
        .map(|kernel| Run {
            kernel: kernel.clone(),
            append: args.append.clone(),
            tier: match (args.core, args.scale) {
                (true, _) => Tier::Core,
                (_, true) => Tier::Scale,
                _ => Tier::Whole,
            },
        })
        .collect()
}

fn run_steps(args: &TestArgs, timings: &mut Timings, reruns: &mut Vec<String>) -> Result<()> {
    let runs = if args.no_vm {
        Vec::new()
    } else {
        vm_runs(args)
    };
    timings.step("toolchain set-up", || {
        setup::ensure_all()?;
        if runs.iter().any(|r| vm::kernel_is_built(&r.kernel)) {
            kernel::ensure_build_deps()?;
        }
        Ok(())
    })?;
    // From here on, beside every other step (see `kernels`).
    let mut kernels = Kernels::start(runs.iter().map(|r| r.kernel.clone()))?;
    if args.no_vm {
        return host_steps(args, timings);
    }
    let (fuselock, tests) = timings.step("build: fuselock and the VM tests (musl)", || {
        Ok((build::fuselock_static()?, build::vm_tests_static()?))
    })?;
    let test_names = listed_tests(&tests)?;
    let (prometheus, tmux, passthrough_hp) =
        timings.step("guest programs: prometheus, tmux, passthrough_hp", || {
            Ok((
                // A real Prometheus scrapes `fuselock export` in the
                // exporter test.
                vm::with_libraries("/usr/bin/prometheus")?,
                // tmux drives `fuselock top` in the VM as a person would.
                vm::tmux_files()?,
                // libfuse's reference server, for the tests of a server
                // fuselock did not write (built from Debian's source
                // once, then cached).
                libfuse::vm_files()?,
            ))
        })?;
    // Beside the VM runs when no kernel is being built there (see
    // `host_checks`); before them otherwise.
    kernels.poll(timings)?;
    let mut host_checks = None;
    if !args.vm_only {
        if kernels.all_ready() {
            host_checks = Some(HostChecks::start(args.fuzz_seconds)?);
        } else {
            host_steps(args, timings)?;
        }
    }
    let mut todo = runs;
    while !todo.is_empty() {
        kernels.poll(timings)?;
        // A failed check fails the run now, not after the last boot.
        if let Some(checks) = &mut host_checks {
            if !checks.poll(timings)? {
                host_checks = None;
            }
        }
        // In the matrix's order, except that a run whose kernel is
        // ready goes before one whose kernel is still being built.
        let ready = todo
            .iter()
            .enumerate()
            .find_map(|(i, run)| kernels.get(&run.kernel).map(|image| (i, image.clone())));
        let Some((next, (image, kernel_name))) = ready else {
            timings.step("waiting for the kernels being built", || kernels.wait())?;
            continue;
        };
        let run = todo.remove(next);
        let what = format!(
            "VM {} on {kernel_name}{}",
            match run.tier {
                Tier::Core => "core tests".to_owned(),
                Tier::Whole => "end-to-end tests".to_owned(),
                Tier::Scale => format!("scale tests, {SCALE_CPUS} CPUs,"),
            },
            run.append
                .as_deref()
                .map(|a| format!(" with {a}"))
                .unwrap_or_default()
        );
        // libtest runs a test if any filter matches: a tier's tests by
        // their full paths, narrowed by --filter when given.
        let tiers: Option<Vec<&str>> = match run.tier {
            Tier::Whole => None,
            Tier::Core => Some(core_of(&run.kernel)),
            Tier::Scale => Some(vec![SCALE]),
        };
        let filters: Vec<String> = match &tiers {
            Some(tiers) => {
                for tier in tiers {
                    ensure!(
                        !select(&test_names, &[tier], None).is_empty(),
                        "no VM test is in `{tier}`: the tier's modules are gone from userspace/tests/vm/"
                    );
                }
                let selected = select(&test_names, tiers, args.filter.as_deref());
                if selected.is_empty() {
                    eprintln!("\n==> {what}: no test of this run matches the filter; skipped");
                    continue;
                }
                selected.into_iter().map(str::to_owned).collect()
            }
            None => args.filter.iter().cloned().collect(),
        };
        timings.step(&what, || {
            let spec = vm::VmSpec {
                kernel: image,
                kernel_name: kernel_name.clone(),
                files: [
                    vec![
                        (fuselock.clone(), "/bin/fuselock".into()),
                        (tests.clone(), "/bin/vm-tests".into()),
                    ],
                    prometheus.clone(),
                    tmux.clone(),
                    passthrough_hp.clone(),
                ]
                .concat(),
                mount: None,
                command: [
                    "env",
                    &format!("FUSELOCK_TEST_KERNEL={}", test_kernel_name(&run.kernel)),
                    &format!("FUSELOCK_TEST_HEAVY={}", u8::from(args.heavy)),
                    "vm-tests",
                    "--include-ignored",
                    "--test-threads=1",
                    // Results the host can read back (skips_for_passed).
                    "--color=never",
                ]
                .into_iter()
                .map(str::to_owned)
                .chain(args.nocapture.then(|| "--nocapture".to_owned()))
                .chain(filters)
                .collect(),
                cpus: if run.tier == Tier::Scale {
                    SCALE_CPUS
                } else {
                    2
                },
                memory_mb: 1024,
                timeout: std::time::Duration::from_secs(1800),
                append: run.append.clone(),
                interactive: false,
            };
            // A second boot (after a guest death fuselock cannot have
            // caused) runs only what the first did not pass.
            let done = vm::run_resuming(&spec, Some(""), |kept| {
                let skips = skips_for_passed(kept, &test_names);
                (!skips.is_empty()).then(|| [spec.command.clone(), skips].concat())
            })?;
            if let Some(why) = done.second_boot {
                reruns.push(format!("{what}: {why}"));
            }
            let code = done.code;
            if code != 0 {
                bail!("{what} failed (exit {code})");
            }
            Ok(())
        })?;
    }
    if let Some(checks) = host_checks {
        checks.wait(timings)?;
    }
    Ok(())
}

/// fmt, clippy, the host tests, the install path and fuzzing.
fn host_steps(args: &TestArgs, timings: &mut Timings) -> Result<()> {
    timings.step("cargo fmt --check", || {
        cargo(&["fmt", "--all", "--", "--check"])
    })?;
    // With the library's test support, so that its public use
    // (`userspace/tests/test_rig.rs`) is built, linted and run too.
    timings.step("cargo clippy", || {
        cargo(&[
            "clippy",
            "--all-targets",
            "--features",
            "fuselock/test-support",
            "--",
            "-D",
            "warnings",
        ])
    })?;
    timings.step("host tests", || {
        cargo(&["test", "--features", "fuselock/test-support"])
    })?;
    timings.step(
        "install path: cargo xtask dist, dpkg -i, -r, --purge",
        || install_test::run(&dist::run()?),
    )?;
    if args.fuzz_seconds > 0 {
        timings.step(
            &format!("fuzzing, {}s per target", args.fuzz_seconds),
            || fuzz::fuzz(fuzz::TARGETS, args.fuzz_seconds),
        )?;
    }
    Ok(())
}

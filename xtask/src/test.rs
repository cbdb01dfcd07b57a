//! `cargo xtask test`: the whole suite, the command CI runs.

use std::time::Instant;

use anyhow::{bail, ensure, Context as _, Result};

use crate::{build, dist, fuzz, install_test, libfuse, setup, toolchain, vm};

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
    /// Run only the core VM tests (see [`CORE`]) on the kernels named.
    #[arg(long)]
    pub core: bool,
    /// Run only the scale tests (see [`SCALE`]), in a guest with 16 CPUs,
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

/// The VM tests that cover every count and verdict, the exporter and clean
/// detach: what every line of the matrix runs (libtest filters, by name).
pub const CORE: &[&str] = &[
    "passthrough_without_flag_is_all_exclusive",
    "passthrough_with_flag_requested",
    "direct_io_with_flag_shares_overwrites",
    "direct_io_beside_a_cached_reader_is_exclusive_for_cache_io_mode",
    "concurrent_writers_are_counted_exactly",
    "mixed_concurrent_kinds_are_exact_with_no_recursion_miss",
    "verify_exercise_gives_the_kernels_verdict",
    // The same counts and verdict through libfuse's passthrough_hp.
    "passthrough_hp_counts_every_kind_exactly",
    "passthrough_hp_verify_exercise_gives_the_kernels_verdict",
    "prometheus_counts_exactly_the_writes_issued",
    // The shipped unit attaches what root would (kprobes where preemptible).
    "export_keeps_serving_with_the_shipped_units_capabilities",
    "nothing_is_left_attached_after_any_exit",
    "doctor_is_happy_on_a_capable_kernel",
    "plain_demo_prints_its_table_and_verdict",
];

/// What a series kernel (`patched:LINE`, `patched-v3:LINE`,
/// `unpatched:LINE`) also runs beside the core: the race on EOF that tells
/// the series' versions apart.
pub const SERIES_CORE: &[&str] = &["racing_truncates_tell_the_series_versions_apart"];

/// What a guest with many CPUs runs ([`SCALE_CPUS`]).
pub const SCALE: &[&str] = &["many_cpus_count_32_writers_of_every_kind_exactly"];
/// The CPUs of the scale run's guest.
const SCALE_CPUS: u32 = 16;

/// The core tests of `kernel`: [`CORE`], plus [`SERIES_CORE`] on a series pair.
fn core_of(kernel: &str) -> impl Iterator<Item = &'static str> {
    let series = is_series(kernel);
    CORE.iter()
        .chain(SERIES_CORE.iter().filter(move |_| series))
        .copied()
}

/// Whether `kernel` is one of the series kernels `cargo xtask kernel` builds.
fn is_series(kernel: &str) -> bool {
    matches!(
        test_kernel_name(kernel),
        "patched" | "patched-v3" | "unpatched"
    )
}

/// Which VM tests a run boots for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tier {
    /// Every test.
    Whole,
    /// [`CORE`] (and [`SERIES_CORE`] on a series pair).
    Core,
    /// [`SCALE`], in a guest with [`SCALE_CPUS`] CPUs.
    Scale,
}

/// One VM run of the suite.
struct Run {
    kernel: String,
    append: Option<String>,
    tier: Tier,
}

/// The kernels of a run of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Matrix {
    /// [`MATRIX`]: what CI runs, sized to its time limit.
    Ci,
    /// [`MATRIX`] with the whole suite on every series kernel.
    Full,
}

/// `cargo xtask test`'s kernels: the whole suite on Debian's stock 6.12 (the
/// reference kernel) and on 6.12 with the series' v2 (the lock modes flip),
/// the core on every other series kernel (v2's unpatched twin, v3, the 7.3
/// pair), on every other Debian line users run, on 6.12 booted preemptible
/// as some distributions boot it, and on the newest line's PREEMPT_RT
/// flavour (whose inode lock is built on an rtmutex); the scale test on the
/// newest line.
const MATRIX: &[(&str, Option<&str>, Tier)] = &[
    ("stock", None, Tier::Whole),
    ("patched", None, Tier::Whole),
    ("unpatched", None, Tier::Core),
    ("patched-v3:6.12", None, Tier::Core),
    ("patched:7.3", None, Tier::Core),
    ("unpatched:7.3", None, Tier::Core),
    ("patched-v3:7.3", None, Tier::Core),
    ("debian:6.12", Some("preempt=full"), Tier::Core),
    ("debian:7.0", None, Tier::Core),
    ("debian:7.1", None, Tier::Core),
    ("debian:7.2", None, Tier::Core),
    ("debian:7.3", None, Tier::Core),
    ("debian:7.3-rt", None, Tier::Core),
    ("debian:7.3", None, Tier::Scale),
];

impl Matrix {
    fn runs(self) -> Vec<Run> {
        MATRIX
            .iter()
            .map(|(kernel, append, tier)| Run {
                kernel: (*kernel).to_owned(),
                append: append.map(str::to_owned),
                tier: match (self, *tier) {
                    (Matrix::Full, Tier::Core) if is_series(kernel) => Tier::Whole,
                    (_, tier) => tier,
                },
            })
            .collect()
    }
}

/// What the tests are told about the kernel (`FUSELOCK_TEST_KERNEL`): the
/// series pair by its short name, since the expected lock modes differ.
fn test_kernel_name(kernel: &str) -> &str {
    kernel
        .split_once(':')
        .map_or(kernel, |(kind, _)| match kind {
            "patched" | "patched-v3" | "unpatched" => kind,
            _ => kernel,
        })
}

/// Each step's seconds, printed as a table when the run ends, passed or
/// not, so that the next person sees where the time goes.
#[derive(Default)]
struct Timings {
    steps: Vec<(String, f64, bool)>,
}

impl Timings {
    fn step<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        eprintln!("\n==> {name}");
        let t = Instant::now();
        let result = f();
        let secs = t.elapsed().as_secs_f64();
        let ok = result.is_ok();
        eprintln!(
            "==> {name}: {} ({secs:.0}s)",
            if ok { "ok" } else { "FAILED" }
        );
        self.steps.push((name.to_owned(), secs, ok));
        result
    }

    fn table(&self, total: f64) -> String {
        let width = self.steps.iter().map(|(n, ..)| n.len()).max().unwrap_or(0);
        let mut out = format!("\n{:<width$}  {:>7}  {:>5}\n", "step", "seconds", "share");
        for (name, secs, ok) in &self.steps {
            out += &format!(
                "{name:<width$}  {secs:>7.0}  {:>4.0}%{}\n",
                100.0 * secs / total.max(1.0),
                if *ok { "" } else { "  FAILED" }
            );
        }
        out += &format!(
            "{:<width$}  {total:>7.0}  ({:.1} min)\n",
            "total",
            total / 60.0
        );
        out
    }
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

fn run_steps(args: &TestArgs, timings: &mut Timings, reruns: &mut Vec<String>) -> Result<()> {
    timings.step("toolchain set-up", setup::ensure_all)?;
    if !args.vm_only {
        timings.step("cargo fmt --check", || {
            cargo(&["fmt", "--all", "--", "--check"])
        })?;
        // With the library's test support, so that its public use
        // (`userspace/tests/native.rs`) is built, linted and run too.
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
    }
    if !args.no_vm {
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
        let runs: Vec<Run> = if args.kernels.is_empty() {
            args.matrix.runs()
        } else {
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
        };
        // Every kernel first (downloaded, built or cached): a broken one
        // fails before the first long boot, and builds time apart from tests.
        let mut images = std::collections::BTreeMap::new();
        for run in &runs {
            if !images.contains_key(&run.kernel) {
                let resolved = timings.step(&format!("kernel {}", run.kernel), || {
                    vm::resolve_kernel(&run.kernel)
                })?;
                images.insert(run.kernel.clone(), resolved);
            }
        }
        for run in &runs {
            let (image, kernel_name) = images[&run.kernel].clone();
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
            // libtest runs a test if any filter matches: the core's names,
            // narrowed by --filter when given.
            let selected: Option<Vec<&str>> = match run.tier {
                Tier::Whole => None,
                Tier::Core => Some(core_of(&run.kernel).collect()),
                Tier::Scale => Some(SCALE.to_vec()),
            };
            let filters: Vec<String> = match (&args.filter, &selected) {
                (Some(f), Some(names)) => names
                    .iter()
                    .filter(|c| c.contains(f.as_str()))
                    .map(|c| (*c).to_owned())
                    .collect(),
                (Some(f), None) => vec![f.clone()],
                (None, Some(names)) => names.iter().map(|c| (*c).to_owned()).collect(),
                (None, None) => Vec::new(),
            };
            if selected.is_some() && args.filter.is_some() && filters.is_empty() {
                eprintln!("\n==> {what}: no test of this run matches the filter; skipped");
                continue;
            }
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
    }
    Ok(())
}

/// The VM tests' names, as the (static) test binary lists them on the host.
fn listed_tests(binary: &std::path::Path) -> Result<Vec<String>> {
    let out = std::process::Command::new(binary)
        .args(["--list", "--include-ignored"])
        .output()
        .with_context(|| format!("listing the tests of {}", binary.display()))?;
    ensure!(
        out.status.success(),
        "{} --list: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect())
}

/// `--skip NAME` for each test the console says passed. A test's result
/// may follow lines its programs printed (libtest captures only the test's
/// own output), so a test counts as passed once its `ok` is followed by the
/// next test's start: an `ok` some program printed just before the guest
/// died does not count. libtest skips every test whose name contains NAME,
/// so a name inside another test's name is not skipped: that test runs
/// again rather than the other not at all.
fn skips_for_passed(console: &[String], all: &[String]) -> Vec<String> {
    let mut passed = Vec::new();
    // The test running, and whether an `ok` followed its start.
    let mut running: Option<(&str, bool)> = None;
    for line in console {
        let line = line.trim();
        let started = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ... "));
        if let Some((name, result)) = started {
            if let Some((done, true)) = running {
                passed.push(done);
            }
            running = Some((name, result.trim() == "ok"));
        } else if line == "ok" {
            if let Some((_, ok)) = &mut running {
                *ok = true;
            }
        } else if line.starts_with("test result:") {
            if let Some((done, true)) = running.take() {
                passed.push(done);
            }
        }
    }
    passed
        .into_iter()
        .filter(|p| all.iter().filter(|n| n.contains(p)).count() == 1)
        .flat_map(|p| ["--skip".to_owned(), p.to_owned()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache;

    #[test]
    fn the_canary_runs_on_series_pairs_only() {
        let canary = SERIES_CORE[0];
        for pair in ["patched", "unpatched:6.12", "patched:7.3", "patched-v3:7.3"] {
            assert!(core_of(pair).any(|t| t == canary), "{pair}");
        }
        for line in ["stock", "debian:7.3"] {
            assert!(!core_of(line).any(|t| t == canary), "{line}");
            assert_eq!(core_of(line).count(), CORE.len());
        }
    }

    #[test]
    fn ci_runs_the_whole_suite_on_two_kernels_and_full_on_every_series_kernel() {
        let whole = |m: Matrix| -> Vec<String> {
            m.runs()
                .into_iter()
                .filter(|r| r.tier == Tier::Whole)
                .map(|r| r.kernel)
                .collect()
        };
        assert_eq!(whole(Matrix::Ci), ["stock", "patched"]);
        assert_eq!(
            whole(Matrix::Full),
            [
                "stock",
                "patched",
                "unpatched",
                "patched-v3:6.12",
                "patched:7.3",
                "unpatched:7.3",
                "patched-v3:7.3"
            ]
        );
        // Both pairs of both versions are in CI, at least for the core.
        for kernel in ["patched-v3:6.12", "patched-v3:7.3", "unpatched:7.3"] {
            assert!(
                Matrix::Ci.runs().iter().any(|r| r.kernel == kernel),
                "{kernel}"
            );
        }
    }

    #[test]
    fn the_timing_table_names_every_step_and_the_failed_one() {
        let mut t = Timings::default();
        t.step("fast", || Ok(())).expect("passes");
        assert!(t.step("broken", || -> Result<()> { bail!("no") }).is_err());
        let table = t.table(120.0);
        assert!(table.contains("\nfast "), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("broken") && l.ends_with("FAILED")),
            "{table}"
        );
        assert!(
            table
                .lines()
                .last()
                .is_some_and(|l| l.starts_with("total") && l.contains("(2.0 min)")),
            "{table}"
        );
    }

    #[test]
    fn a_second_boot_skips_only_what_passed_and_names_nothing_else() {
        let all: Vec<String> = [
            "counts::a",
            "counts::a_b",
            "verdicts::c",
            "scale::d",
            "scale::e",
        ]
        .map(String::from)
        .to_vec();
        let console: Vec<String> = [
            "running 4 tests",
            "test counts::a ... ok",
            "test counts::a_b ... verify: 259/259 writes",
            "ok",
            "test verdicts::c ... FAILED",
            "test scale::d ... ok",
            // An `ok` a program printed, then the guest died.
            "test scale::e ... healthz:",
            "ok",
            "[  341.497027] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI",
        ]
        .map(String::from)
        .to_vec();
        // counts::a is inside counts::a_b: skipping it would skip both.
        assert_eq!(
            skips_for_passed(&console, &all),
            ["--skip", "counts::a_b", "--skip", "scale::d"]
        );
        assert!(skips_for_passed(&[], &all).is_empty());
    }

    #[test]
    fn every_core_test_exists() {
        let dir = cache::workspace_root().join("userspace/tests/vm");
        let sources: String = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|f| std::fs::read_to_string(f.expect("dir entry").path()).expect("test source"))
            .collect();
        for name in CORE.iter().chain(SERIES_CORE).chain(SCALE) {
            assert!(
                sources.contains(&format!("fn {name}()")),
                "no VM test {name}"
            );
        }
    }
}

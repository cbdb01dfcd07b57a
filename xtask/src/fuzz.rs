//! `cargo xtask fuzz`: each cargo-fuzz target (`fuzz/fuzz_targets/`) for a bounded
//! time, starting from its committed regression corpus (`fuzz/corpus/<target>/`).
//!
//! The fuzzer adds inputs to the corpus it is given, so it gets a scratch copy in
//! the cache, not the checkout: a CI run leaves the clone as it found it. Crash
//! inputs go to the cache too (`fuzz/artifacts/<target>/`), where they outlive the
//! run; the error names the file and how to reproduce it.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Instant, SystemTime},
};

use anyhow::{bail, Context as _, Result};

use crate::{cache, setup, toolchain};

/// The fuzz targets, in the order they run.
pub const TARGETS: &[&str] = &["btf", "replay"];

/// Seconds each target runs by default, and in `cargo xtask test`.
pub const DEFAULT_SECONDS: u64 = 30;

/// cargo-fuzz's build options, the same for `build` and `run` so that `run`
/// finds the build up to date. Release with debug assertions (overflow checks
/// on), and no sanitizer: the fuzzed code has no `unsafe`, so AddressSanitizer
/// could only slow it down; panics, timeouts and the RSS limit need none.
const BUILD_FLAGS: &[&str] = &["--debug-assertions", "--sanitizer", "none"];

/// libFuzzer options besides the time: an input that takes 10 s is a hang, and
/// 2 GiB of memory for inputs of a few KiB is a leak or an unbounded allocation.
const LIBFUZZER_FLAGS: &[&str] = &[
    "-rss_limit_mb=2048",
    "-timeout=10",
    "-print_final_stats=1",
    "-print_funcs=0",
];

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// How long to fuzz each target.
    #[arg(long, default_value_t = DEFAULT_SECONDS, value_name = "N")]
    pub seconds: u64,
    /// Targets to run (default: all).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub targets: Vec<String>,
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    fuzz(&targets, args.seconds)
}

/// Builds the targets, then runs each for `seconds`; the first crash is an error.
pub fn fuzz(targets: &[&str], seconds: u64) -> Result<()> {
    let tools = setup::ensure_cargo_fuzz()?;
    let dir = cache::dir()?.join("fuzz");
    // Per process: two checkouts fuzzing at once must not share a corpus.
    let scratch = dir.join(format!("run-{}", std::process::id()));
    let result = fuzz_in(targets, seconds, &tools, &dir, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn fuzz_in(targets: &[&str], seconds: u64, tools: &Path, dir: &Path, scratch: &Path) -> Result<()> {
    let target_dir = dir.join("target");
    setup::announce(&format!(
        "building the fuzz targets (nightly, instrumented) in {}",
        target_dir.display()
    ));
    let t = Instant::now();
    setup::run_cmd(
        cargo_fuzz(tools, "build")?
            .args(BUILD_FLAGS)
            .arg("--target-dir")
            .arg(&target_dir),
    )?;
    eprintln!("fuzz: built in {:.0}s", t.elapsed().as_secs_f64());

    for &target in targets {
        let committed = cache::workspace_root().join("fuzz/corpus").join(target);
        let corpus = scratch.join("corpus").join(target);
        let copied = copy_corpus(&committed, &corpus)?;
        let artifacts = dir.join("artifacts").join(target);
        std::fs::create_dir_all(&artifacts)
            .with_context(|| format!("creating {}", artifacts.display()))?;
        eprintln!("fuzz: {target} for {seconds}s, from {copied} committed inputs");

        let started = SystemTime::now();
        let mut cmd = cargo_fuzz(tools, "run")?;
        cmd.args(BUILD_FLAGS)
            .arg("--target-dir")
            .arg(&target_dir)
            .arg(target)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(LIBFUZZER_FLAGS)
            // libFuzzer concatenates the prefix and the file name.
            .arg(format!("-artifact_prefix={}/", artifacts.display()));
        let (success, stats) = run_filtered(&mut cmd)?;
        if !success {
            let found = new_files(&artifacts, started);
            if found.is_empty() {
                bail!(
                    "fuzz target `{target}` failed, and left no crash input in {}",
                    artifacts.display()
                );
            }
            let list: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
            // Same flags and target directory as this run: no rebuild, same binary.
            bail!(
                "fuzz target `{target}` found a crash; the input is {}\n  \
                 reproduce: PATH={}:$PATH cargo +{} fuzz run {} --target-dir {} {target} {}\n  \
                 then fix it, add a unit test, and copy the input into fuzz/corpus/{target}/",
                list.join(", "),
                tools.display(),
                toolchain::nightly(),
                BUILD_FLAGS.join(" "),
                target_dir.display(),
                list[0],
            );
        }
        let grown = count_files(&corpus)?;
        eprintln!(
            "fuzz: {target}: {}, corpus {copied} -> {grown} inputs",
            stats.summary()
        );
    }
    Ok(())
}

/// `cargo +nightly fuzz SUBCOMMAND` from the workspace root, with the installed
/// cargo-fuzz first on `PATH`. The variables `cargo xtask` was run with name the
/// stable toolchain, so they are dropped.
fn cargo_fuzz(tools: &Path, subcommand: &str) -> Result<Command> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let paths = std::iter::once(tools.to_owned()).chain(std::env::split_paths(&path));
    let mut cmd = toolchain::toolchain_cargo(toolchain::nightly());
    cmd.args(["fuzz", subcommand])
        .env("PATH", std::env::join_paths(paths).unwrap_or(path));
    Ok(cmd)
}

/// Replaces `to` with a copy of the files in `from`; returns how many.
fn copy_corpus(from: &Path, to: &Path) -> Result<usize> {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mut n = 0;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        if path.is_file() {
            let dest = to.join(path.file_name().context("corpus file name")?);
            std::fs::copy(&path, &dest)
                .with_context(|| format!("copying {} to {}", path.display(), dest.display()))?;
            n += 1;
        }
    }
    if n == 0 {
        bail!("{} has no inputs", from.display());
    }
    Ok(n)
}

fn count_files(dir: &Path) -> Result<usize> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .count())
}

/// Files in `dir` modified at or after `since`.
fn new_files(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since)
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// libFuzzer's closing figures (`-print_final_stats=1`).
#[derive(Default)]
struct Stats {
    execs: Option<u64>,
    per_sec: Option<u64>,
    peak_rss_mb: Option<u64>,
    secs: Option<u64>,
}

impl Stats {
    fn read(&mut self, line: &str) {
        let number = |prefix: &str| {
            line.strip_prefix(prefix)
                .and_then(|rest| rest.trim().parse().ok())
        };
        if let Some(n) = number("stat::number_of_executed_units:") {
            self.execs = Some(n);
        } else if let Some(n) = number("stat::average_exec_per_sec:") {
            self.per_sec = Some(n);
        } else if let Some(n) = number("stat::peak_rss_mb:") {
            self.peak_rss_mb = Some(n);
        } else if let Some(rest) = line.strip_prefix("Done ") {
            // "Done 6522437 runs in 31 second(s)"
            self.secs = rest.split_whitespace().nth(3).and_then(|s| s.parse().ok());
        }
    }

    fn summary(&self) -> String {
        let show = |n: Option<u64>| n.map_or("?".to_owned(), |n| n.to_string());
        format!(
            "{} runs in {}s ({}/s), peak RSS {} MiB",
            show(self.execs),
            show(self.secs),
            show(self.per_sec),
            show(self.peak_rss_mb)
        )
    }
}

/// Runs `cmd`, passing its stderr on except libFuzzer's progress lines (one per
/// new input, thousands a minute) and its recommended dictionary; everything
/// else, crash reports above all, is shown as is.
fn run_filtered(cmd: &mut Command) -> Result<(bool, Stats)> {
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let mut stats = Stats::default();
    if let Some(stderr) = child.stderr.take() {
        let mut in_dictionary = false;
        for line in BufReader::new(stderr).split(b'\n') {
            let line = String::from_utf8_lossy(&line?).into_owned();
            stats.read(&line);
            if line.starts_with("###### Recommended dictionary") {
                in_dictionary = true;
            } else if line.starts_with("###### End of recommended dictionary") {
                in_dictionary = false;
            } else if !in_dictionary && !is_progress(&line) {
                eprintln!("{line}");
            }
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {cmd:?}"))?;
    Ok((status.success(), stats))
}

/// `#123\tNEW cov: ...`, `#4096\tpulse ...`, `#77\tREDUCE ...`; INITED and DONE stay.
fn is_progress(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('#') else {
        return false;
    };
    let mut words = rest.split_whitespace();
    let counter = words
        .next()
        .is_some_and(|w| w.chars().all(|c| c.is_ascii_digit()));
    counter && matches!(words.next(), Some("NEW" | "REDUCE" | "pulse"))
}

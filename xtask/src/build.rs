//! Static builds for the VM's busybox userland (no libraries there).

use std::{io::BufRead as _, path::PathBuf, process::Stdio};

use anyhow::{bail, Context as _, Result};

use crate::{cache, setup, toolchain};

pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// The C compiler cc-rs uses for [`MUSL_TARGET`].
const MUSL_CC: &str = "CC_x86_64_unknown_linux_musl";

/// Runs a cargo build with JSON messages and returns the executables built.
fn cargo_executables(args: &[&str]) -> Result<Vec<PathBuf>> {
    setup::ensure_build_tools()?;
    let mut cargo = toolchain::cargo();
    cargo
        .args(args)
        .args([
            "--target",
            MUSL_TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(cache::workspace_root())
        .stdout(Stdio::piped());
    // ring (the exporter's TLS crypto) compiles C and assembly, and for musl
    // the cc crate looks for an `x86_64-linux-musl-gcc` that Debian does not
    // ship. ring needs nothing from libc, so the system compiler does.
    if std::env::var_os(MUSL_CC).is_none() {
        cargo.env(MUSL_CC, "cc");
    }
    let mut child = cargo.spawn().context("running cargo")?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let mut exes = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" {
            if let Some(exe) = msg["executable"].as_str() {
                exes.push(PathBuf::from(exe));
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(exes)
}

/// The static fuselock binary.
pub fn fuselock_static() -> Result<PathBuf> {
    eprintln!("build: fuselock for {MUSL_TARGET} (release)");
    cargo_executables(&[
        "build",
        "--release",
        "--package",
        "fuselock",
        "--bin",
        "fuselock",
    ])?
    .into_iter()
    .find(|p| p.file_name().is_some_and(|n| n == "fuselock"))
    .context("cargo built no fuselock executable")
}

/// A harness target of the fuselock package named `name`, built static
/// without running it (`cargo test|bench --no-run`); its executable is
/// `NAME-HASH`.
fn static_harness(command: &str, kind: &str, name: &str) -> Result<PathBuf> {
    eprintln!("build: {kind} {name} for {MUSL_TARGET} (release)");
    let prefix = format!("{name}-");
    // `cargo bench` builds with the (optimised) bench profile and refuses --release.
    let profile: &[&str] = if command == "test" {
        &["--release"]
    } else {
        &[]
    };
    let kind_flag = format!("--{kind}");
    let args = [
        &[command][..],
        profile,
        &["--package", "fuselock", &kind_flag, name, "--no-run"],
    ]
    .concat();
    cargo_executables(&args)?
        .into_iter()
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .with_context(|| format!("cargo built no {kind} {name} executable"))
}

/// The VM end-to-end tests (`userspace/tests/vm/`).
pub fn vm_tests_static() -> Result<PathBuf> {
    static_harness("test", "test", "vm")
}

/// The VM benchmark (`userspace/benches/vm.rs`).
pub fn vm_bench_static() -> Result<PathBuf> {
    static_harness("bench", "bench", "vm")
}

/// The man page, rendered by the binary itself from its clap definition.
pub fn man_page() -> Result<PathBuf> {
    setup::ensure_build_tools()?;
    let out = toolchain::cargo()
        .args(["run", "--quiet", "--package", "fuselock", "--", "manpage"])
        .current_dir(cache::workspace_root())
        .output()
        .context("running fuselock manpage")?;
    if !out.status.success() {
        bail!(
            "fuselock manpage failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = cache::workspace_root().join("target/man");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("fuselock.1");
    std::fs::write(&path, out.stdout)?;
    Ok(path)
}

//! Static builds for the VM's busybox userland (no libraries there).

use std::{
    io::BufRead as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::cache;

pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// Runs a cargo build with JSON messages and returns the executables built.
fn cargo_executables(args: &[&str]) -> Result<Vec<PathBuf>> {
    let mut child = Command::new(env!("CARGO"))
        .args(args)
        .args([
            "--target",
            MUSL_TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(cache::workspace_root())
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo")?;
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

/// The VM end-to-end test binary (`userspace/tests/vm.rs`), static.
pub fn vm_tests_static() -> Result<PathBuf> {
    eprintln!("build: VM end-to-end tests for {MUSL_TARGET} (release)");
    cargo_executables(&[
        "test",
        "--release",
        "--package",
        "fuselock",
        "--test",
        "vm",
        "--no-run",
    ])?
    .into_iter()
    .find(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("vm-"))
    })
    .context("cargo built no vm test executable")
}

/// The VM benchmark (`userspace/benches/vm.rs`), static.
pub fn vm_bench_static() -> Result<PathBuf> {
    eprintln!("build: VM benchmark for {MUSL_TARGET} (release)");
    cargo_executables(&[
        "bench",
        "--package",
        "fuselock",
        "--bench",
        "vm",
        "--no-run",
    ])?
    .into_iter()
    .find(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("vm-"))
    })
    .context("cargo built no vm bench executable")
}

/// The man page, rendered by the binary itself from its clap definition.
pub fn man_page() -> Result<PathBuf> {
    let out = Command::new(env!("CARGO"))
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

//! Toolchain set-up: each step checks first, announces itself, and only then
//! acts, so running it again is cheap and quiet.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::cache;

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Pinned so a CI run never picks up a release with different defaults.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const CARGO_DEB_VERSION: &str = "3.8.0";
/// Debian packages: qemu runs the VM, busybox is its userland, prometheus
/// brings promtool and a real scraper for the exporter tests. The kernel
/// build tools are installed by `xtask kernel` when it first builds.
const APT_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "prometheus", "tmux"];
/// What booting the VM needs: qemu, and busybox for the guest's userland.
const VM_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static"];

#[derive(clap::Args)]
pub struct SetupArgs {}

pub fn run(_args: &SetupArgs) -> Result<()> {
    ensure_all()
}

pub fn ensure_all() -> Result<()> {
    ensure_apt_packages(APT_PACKAGES)?;
    ensure_build_tools()?;
    ensure_cargo_fuzz()?;
    ensure_cargo_deb()?;
    Ok(())
}

/// What any build of fuselock needs: nightly's `rust-src`, the musl target
/// and bpf-linker. Every build step calls this itself, so no command
/// depends on another having run set-up first.
pub fn ensure_build_tools() -> Result<()> {
    ensure_rustup()?;
    ensure_bpf_linker()
}

/// What booting the VM needs.
pub fn ensure_vm_tools() -> Result<()> {
    ensure_apt_packages(VM_PACKAGES)
}

pub fn announce(msg: &str) {
    eprintln!("setup: {msg}");
}

pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

pub fn ensure_apt_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    announce(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    let sudo = !is_root();
    let apt = |args: &[&str]| {
        let mut c = if sudo {
            Command::new("sudo")
        } else {
            Command::new("apt-get")
        };
        if sudo {
            c.arg("apt-get");
        }
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run_cmd(apt(&["update", "-q"]).stdout(std::process::Stdio::null()))?;
    run_cmd(apt(&["install", "-y", "-q", "--no-install-recommends"]).args(&missing))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn ensure_rustup() -> Result<()> {
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("the nightly toolchain is needed for the eBPF programs")?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        announce("adding rust-src to the nightly toolchain (eBPF builds core from source)");
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let targets = output(Command::new("rustup").args([
        "target",
        "list",
        "--installed",
        "--toolchain",
        "stable",
    ]))?;
    if !targets
        .lines()
        .any(|l| l.trim() == crate::build::MUSL_TARGET)
    {
        announce("adding the musl target (static binaries for the VM)");
        run_cmd(Command::new("rustup").args([
            "target",
            "add",
            crate::build::MUSL_TARGET,
            "--toolchain",
            "stable",
        ]))?;
    }
    Ok(())
}

/// Where bpf-linker lives; userspace's build.rs looks in the same place.
pub fn bpf_linker_root() -> Result<PathBuf> {
    Ok(cache::dir()?.join(format!("bpf-linker-{BPF_LINKER_VERSION}")))
}

/// bpf-linker's default feature wants a system LLVM that Debian lacks; build it
/// against the LLVM shared library nightly rustc ships instead.
pub fn ensure_bpf_linker() -> Result<()> {
    let root = bpf_linker_root()?;
    let bin = root.join("bin/bpf-linker");
    if bin.is_file() {
        return Ok(());
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib_dir.display()))?;
    let soname = llvm
        .file_name()
        .and_then(|n| n.to_str())
        .context("LLVM library name")?
        .to_owned();
    // "libLLVM.so.22.1-rust-..." → major version 22 picks the llvm-22 feature.
    let major: String = soname
        .trim_start_matches("libLLVM.so.")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    if major.is_empty() {
        bail!("cannot tell the LLVM major version from {soname}");
    }
    let prefix = cache::dir()?.join("llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for link in ["libLLVM.so", soname.as_str()] {
        let path = prefix_lib.join(link);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(&llvm, &path)
            .with_context(|| format!("linking {}", path.display()))?;
    }
    announce(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} into {} (about 3 minutes, once)",
        root.display()
    ));
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{major}")])
            .arg("--root")
            .arg(&root)
            .env("LLVM_PREFIX", &prefix),
    )
}

/// cargo-fuzz (`cargo xtask fuzz`), installed beside bpf-linker in the cache; returns
/// the directory holding the `cargo-fuzz` binary, to put on `PATH`.
pub fn ensure_cargo_fuzz() -> Result<PathBuf> {
    let root = cache::dir()?.join(format!("cargo-fuzz-{CARGO_FUZZ_VERSION}"));
    let bin_dir = root.join("bin");
    if bin_dir.join("cargo-fuzz").is_file() {
        return Ok(bin_dir);
    }
    announce(&format!(
        "installing cargo-fuzz {CARGO_FUZZ_VERSION} into {} (about 2 minutes, once)",
        root.display()
    ));
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "cargo-fuzz",
                "--locked",
                "--version",
                CARGO_FUZZ_VERSION,
            ])
            .arg("--root")
            .arg(&root),
    )?;
    Ok(bin_dir)
}

/// cargo-deb (`cargo xtask dist` makes the `.deb` with it), installed beside
/// cargo-fuzz in the cache; returns the path of the `cargo-deb` binary.
pub fn ensure_cargo_deb() -> Result<PathBuf> {
    let root = cache::dir()?.join(format!("cargo-deb-{CARGO_DEB_VERSION}"));
    let bin = root.join("bin/cargo-deb");
    if bin.is_file() {
        return Ok(bin);
    }
    announce(&format!(
        "installing cargo-deb {CARGO_DEB_VERSION} into {} (about 2 minutes, once)",
        root.display()
    ));
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "cargo-deb",
                "--locked",
                "--version",
                CARGO_DEB_VERSION,
            ])
            .arg("--root")
            .arg(&root),
    )?;
    Ok(bin)
}

//! Toolchain set-up: each step checks first, announces itself, and only then
//! acts, so running it again is cheap and quiet.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{cache, toolchain};

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

/// Makes `cmd`'s process get SIGTERM when the thread that starts it ends:
/// a kernel built on a thread of its own must not outlive `cargo xtask`
/// when another step fails and the process exits. (make passes the signal
/// on to its jobs.)
pub fn ends_with_its_thread(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: between fork and exec the closure calls only prctl, which is
    // async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
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

/// Whether rustup has `toolchain` installed.
fn toolchain_installed(toolchain: &str) -> Result<bool> {
    let list = output(Command::new("rustup").args(["toolchain", "list"]))?;
    Ok(list.lines().any(|l| {
        l.split_whitespace()
            .next()
            .is_some_and(|t| t.starts_with(toolchain))
    }))
}

/// Installs `toolchain` (an exact pin, never a floating channel) with
/// `components`, unless it is there.
fn ensure_toolchain(toolchain: &str, components: &[&str], why: &str) -> Result<()> {
    if !toolchain_installed(toolchain)? {
        announce(&format!("installing Rust {toolchain} ({why})"));
        let mut cmd = Command::new("rustup");
        cmd.args(["toolchain", "install", toolchain, "--profile", "minimal"]);
        for c in components {
            cmd.args(["--component", c]);
        }
        return run_cmd(&mut cmd);
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        toolchain,
        "--installed",
    ]))?;
    for c in components {
        if !installed.lines().any(|l| l.starts_with(c)) {
            announce(&format!("adding {c} to Rust {toolchain}"));
            run_cmd(Command::new("rustup").args([
                "component",
                "add",
                c,
                "--toolchain",
                toolchain,
            ]))?;
        }
    }
    Ok(())
}

/// The pinned toolchains with what the builds need of them: the
/// workspace's with clippy, rustfmt and the musl target, and the eBPF
/// programs' nightly with `rust-src`.
pub fn ensure_rustup() -> Result<()> {
    let stable = toolchain::stable();
    ensure_toolchain(stable, &["clippy", "rustfmt"], "userspace, xtask and tests")?;
    let nightly = toolchain::nightly();
    ensure_toolchain(
        nightly,
        &["rust-src"],
        "the eBPF programs: it builds core from source",
    )?;
    let targets = output(Command::new("rustup").args([
        "target",
        "list",
        "--installed",
        "--toolchain",
        stable,
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
            stable,
        ]))?;
    }
    Ok(())
}

/// Where bpf-linker lives, one build per nightly (it links against that
/// nightly's LLVM); userspace's build.rs looks in the same place.
pub fn bpf_linker_root() -> Result<PathBuf> {
    Ok(cache::dir()?.join(format!(
        "bpf-linker-{BPF_LINKER_VERSION}+{}",
        toolchain::nightly()
    )))
}

/// bpf-linker's default feature wants a system LLVM that Debian lacks; build it
/// against the LLVM shared library the pinned nightly ships instead, with the
/// `llvm-NN` feature of that library's major version.
pub fn ensure_bpf_linker() -> Result<()> {
    let root = bpf_linker_root()?;
    let bin = root.join("bin/bpf-linker");
    if bin.is_file() {
        return Ok(());
    }
    let nightly = toolchain::nightly();
    let sysroot = output(
        Command::new("rustc")
            .arg(format!("+{nightly}"))
            .args(["--print", "sysroot"]),
    )?;
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
    let major = llvm_major(&soname)
        .with_context(|| format!("cannot tell the LLVM major version from {soname}"))?;
    let prefix = cache::dir()?.join(format!("llvm-prefix+{nightly}"));
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for link in ["libLLVM.so", soname.as_str()] {
        let path = prefix_lib.join(link);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(&llvm, &path)
            .with_context(|| format!("linking {}", path.display()))?;
    }
    announce(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against {nightly}'s LLVM {major} into {} (1-3 minutes, once)",
        root.display()
    ));
    // Into a scratch root, then one rename: an interrupted build leaves
    // no binary that looks complete.
    let scratch = cache::TempDir::new(root.with_extension("partial"))?;
    run_cmd(
        toolchain::cargo()
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{major}")])
            .arg("--root")
            .arg(scratch.path())
            .env("LLVM_PREFIX", &prefix),
    )?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(scratch.path(), &root)
        .with_context(|| format!("moving bpf-linker into {}", root.display()))
}

/// "libLLVM.so.23.1-rust-1.101.0-nightly" → 23: the `llvm-NN` feature.
fn llvm_major(soname: &str) -> Option<u32> {
    let digits: String = soname
        .strip_prefix("libLLVM.so.")?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
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
        toolchain::cargo()
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
        toolchain::cargo()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_llvm_feature_follows_the_library() {
        assert_eq!(llvm_major("libLLVM.so.23.1-rust-1.101.0-nightly"), Some(23));
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(llvm_major("libLLVM-23.so"), None);
    }
}

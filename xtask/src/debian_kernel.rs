//! Debian's 6.12 cloud kernel, downloaded once and cached.
//!
//! The archive moves (old point releases disappear), so the newest available
//! `linux-image-6.12.*+deb12-cloud-amd64-unsigned` is resolved at download
//! time; once cached, the newest cached one is used without the network.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{cache, setup};

const PREFIX: &str = "linux-image-6.12.";
const SUFFIX: &str = "+deb12-cloud-amd64-unsigned";

/// A kernel ready to boot.
pub struct Kernel {
    pub vmlinuz: PathBuf,
    /// e.g. `6.12.117+deb12-cloud-amd64`.
    pub release: String,
}

fn version_key(pkg: &str) -> Vec<u64> {
    pkg.trim_start_matches("linux-image-")
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn cached(dir: &Path) -> Option<Kernel> {
    let mut found: Vec<(Vec<u64>, Kernel)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let release = name.strip_prefix("vmlinuz-")?.to_owned();
            Some((
                version_key(&release),
                Kernel {
                    vmlinuz: e.path(),
                    release,
                },
            ))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found.pop().map(|(_, k)| k)
}

fn newest_available() -> Result<String> {
    let out = Command::new("apt-cache")
        .args([
            "search",
            "--names-only",
            r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$",
        ])
        .output()
        .context("running apt-cache")?;
    let mut pkgs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|p| p.starts_with(PREFIX) && p.ends_with(SUFFIX))
        .map(str::to_owned)
        .collect();
    pkgs.sort_by_key(|p| version_key(p));
    pkgs.pop().context(
        "no linux-image-6.12.*+deb12-cloud-amd64-unsigned in the apt index; is bookworm-security in sources.list?",
    )
}

/// The stock Debian kernel, downloading it on first use.
pub fn stock() -> Result<Kernel> {
    let dir = cache::dir()?.join("kernels");
    std::fs::create_dir_all(&dir)?;
    if let Some(k) = cached(&dir) {
        return Ok(k);
    }
    let mut pkg = newest_available();
    if pkg.is_err() {
        eprintln!("kernel: refreshing the apt index");
        let mut update = Command::new("apt-get");
        update
            .args(["update", "-q"])
            .stdout(std::process::Stdio::null());
        setup::run_cmd(&mut update)?;
        pkg = newest_available();
    }
    let pkg = pkg?;
    eprintln!(
        "kernel: downloading {pkg} (once; cached in {})",
        dir.display()
    );
    let work = dir.join("download");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    setup::run_cmd(
        Command::new("apt-get")
            .arg("download")
            .arg(&pkg)
            .current_dir(&work),
    )?;
    let deb = std::fs::read_dir(&work)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download produced no .deb")?;
    let root = work.join("root");
    setup::run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let boot = root.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .context("the package has no /boot/vmlinuz-*")?;
    let name = vmlinuz.file_name().context("name")?.to_owned();
    std::fs::rename(&vmlinuz, dir.join(&name))?;
    let _ = std::fs::remove_dir_all(&work);
    match cached(&dir) {
        Some(k) => Ok(k),
        None => bail!("downloaded kernel not found in {}", dir.display()),
    }
}

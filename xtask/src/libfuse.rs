//! libfuse's reference passthrough server, `passthrough_hp`, for the VM
//! tests: a FUSE server fuselock did not write, so the tests show what
//! users of libfuse see.
//!
//! It is built from Debian's `fuse3` source package of trixie (libfuse
//! 3.17, which has FUSE passthrough; bookworm's 3.14 has not), fetched
//! through the project's own apt ([`crate::apt`]), with libfuse linked
//! statically so the guest needs only glibc and libstdc++. The binary is
//! cached by source version and [`RECIPE`]; once one is cached it is used
//! without the network, as the Debian kernels are.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{apt::Apt, cache, setup, vm};

/// Where Debian's libfuse with passthrough support is.
const SUITE: &str = "trixie";
const SOURCE_PACKAGE: &str = "fuse3";
/// Bumped whenever the build below changes, so a cached binary built the
/// old way is not used.
const RECIPE: u32 = 1;
/// What the build needs; dpkg-dev brings dpkg-source, which `apt-get
/// source` unpacks with.
const BUILD_PACKAGES: &[&str] = &["meson", "ninja-build", "g++", "pkg-config", "dpkg-dev"];
/// Where the tests find it in the guest.
pub const GUEST_PATH: &str = "/bin/passthrough_hp";

fn cache_root() -> Result<PathBuf> {
    let root = cache::dir()?.join("libfuse");
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    Ok(root)
}

/// The numbers of a Debian version, for ordering: `3.17.2-3` → [3, 17, 2, 3].
fn version_key(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The newest cached binary of this recipe: `libfuse/VERSION-rRECIPE/passthrough_hp`.
fn cached(root: &Path) -> Option<PathBuf> {
    let suffix = format!("-r{RECIPE}");
    std::fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = name.strip_suffix(&suffix)?.to_owned();
            let binary = e.path().join("passthrough_hp");
            binary.is_file().then_some((version, binary))
        })
        .max_by_key(|(version, _)| version_key(version))
        .map(|(_, binary)| binary)
}

/// The `Version:` field of a .dsc.
fn dsc_version(dsc: &str) -> Option<&str> {
    dsc.lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(str::trim)
        .filter(|v| !v.is_empty() && !v.contains('/'))
}

/// The path of a built `passthrough_hp`, building it on first use.
pub fn passthrough_hp() -> Result<PathBuf> {
    let root = cache_root()?;
    if let Some(binary) = cached(&root) {
        return Ok(binary);
    }
    setup::ensure_apt_packages(BUILD_PACKAGES)?;
    // Held until the build is cached: one build at a time.
    let apt = Apt::open_sources(SUITE)?;
    if let Some(binary) = cached(&root) {
        // Another xtask built it while this one waited for the lock.
        return Ok(binary);
    }
    // Under the lock any scratch directory left is an interrupted build's.
    for stale in std::fs::read_dir(&root)
        .with_context(|| format!("reading {}", root.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("build-"))
    {
        std::fs::remove_dir_all(stale.path())
            .with_context(|| format!("removing {}", stale.path().display()))?;
    }
    // Everything happens in a scratch directory that becomes the cache
    // entry by one rename: an interrupted build leaves no entry behind.
    let scratch = root.join(format!("build-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let started = std::time::Instant::now();
    let built = build(&apt, &scratch);
    let result = built.and_then(|(version, binary)| {
        let entry = root.join(format!("{version}-r{RECIPE}"));
        let staged = scratch.join("entry");
        std::fs::create_dir_all(&staged)
            .with_context(|| format!("creating {}", staged.display()))?;
        std::fs::copy(&binary, staged.join("passthrough_hp"))
            .with_context(|| format!("copying {}", binary.display()))?;
        if entry.exists() {
            std::fs::remove_dir_all(&entry)
                .with_context(|| format!("removing {}", entry.display()))?;
        }
        std::fs::rename(&staged, &entry)
            .with_context(|| format!("moving the build to {}", entry.display()))?;
        setup::announce(&format!(
            "passthrough_hp {version} built in {:.0}s, cached in {}",
            started.elapsed().as_secs_f64(),
            entry.display()
        ));
        Ok(entry.join("passthrough_hp"))
    });
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Fetches and builds in `scratch`; returns the source version and the binary.
fn build(apt: &Apt, scratch: &Path) -> Result<(String, PathBuf)> {
    apt.update()?;
    let spec = format!("{SOURCE_PACKAGE}/{SUITE}");
    setup::announce(&format!(
        "building libfuse's passthrough_hp from Debian's {spec} source package"
    ));
    let dsc_path = apt.source(&spec, scratch)?;
    let dsc = std::fs::read_to_string(&dsc_path)
        .with_context(|| format!("reading {}", dsc_path.display()))?;
    let version = dsc_version(&dsc)
        .with_context(|| format!("{} has no Version field", dsc_path.display()))?
        .to_owned();
    // dpkg-source unpacks into PACKAGE-UPSTREAM_VERSION (no epoch, no
    // Debian revision).
    let upstream = version
        .rsplit_once('-')
        .map_or(version.as_str(), |(u, _)| u);
    let upstream = upstream.split_once(':').map_or(upstream, |(_, u)| u);
    let src = scratch.join(format!("{SOURCE_PACKAGE}-{upstream}"));
    if !src.join("example/passthrough_hp.cc").is_file() {
        bail!(
            "{} has no example/passthrough_hp.cc: not the libfuse expected",
            src.display()
        );
    }
    let build_dir = scratch.join("build");
    // Static libfuse so the guest needs no libfuse3.so; no helper programs
    // (the VM mounts as root with mount(2), fusermount3 is not needed) and
    // no tests; no /etc/mtab bookkeeping, which the guest lacks.
    setup::run_cmd(
        Command::new("meson")
            .arg("setup")
            .arg(&build_dir)
            .arg(&src)
            .args([
                "-Ddefault_library=static",
                "-Dbuildtype=release",
                "-Dexamples=true",
                "-Dutils=false",
                "-Dtests=false",
                "-Ddisable-mtab=true",
            ])
            .stdout(std::process::Stdio::null()),
    )
    .context("configuring libfuse with meson")?;
    setup::run_cmd(
        Command::new("ninja")
            .arg("-C")
            .arg(&build_dir)
            .arg("example/passthrough_hp")
            .stdout(std::process::Stdio::null()),
    )
    .context("building passthrough_hp with ninja")?;
    let binary = build_dir.join("example/passthrough_hp");
    if !binary.is_file() {
        bail!("ninja built no {}", binary.display());
    }
    Ok((version, binary))
}

/// passthrough_hp and the libraries it links, for the guest: the binary at
/// [`GUEST_PATH`], the libraries where the host has them.
pub fn vm_files() -> Result<Vec<(PathBuf, String)>> {
    let binary = passthrough_hp()?;
    let host = binary
        .to_str()
        .with_context(|| format!("{} is not UTF-8", binary.display()))?;
    let mut files = vm::with_libraries(host)?;
    // with_libraries lists the binary first, at its host path.
    if let Some(first) = files.first_mut() {
        first.1 = GUEST_PATH.to_owned();
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsc_version_and_ordering() {
        let dsc = "Format: 3.0 (quilt)\nSource: fuse3\nVersion: 3.17.2-3\nMaintainer: x\n";
        assert_eq!(dsc_version(dsc), Some("3.17.2-3"));
        assert_eq!(dsc_version("Source: fuse3\n"), None);
        assert_eq!(dsc_version("Version: ../x/y\n"), None);
        assert!(version_key("3.17.10-1") > version_key("3.17.2-3"));
    }
}

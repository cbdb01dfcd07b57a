//! `cargo xtask kernel`: Linux 6.12 from Debian's `linux-source-6.12`, small
//! config, with and without the parallel-direct-writes series.
//!
//! One source tree serves both variants: the patched kernel is built first,
//! then the patch is reversed and the unpatched twin rebuilt incrementally
//! (~20 s), so the two differ by the patch only. Results are cached by
//! source package, patch and config.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{cache, setup};

const PATCH: &str = include_str!("../patches/fuse-passthrough-parallel-direct-writes-6.12.patch");
const PATCH_NAME: &str = "fuse-passthrough-parallel-direct-writes-6.12.patch";
const CONFIG: &str = include_str!("../patches/tiny-vm.config");
const BUILD_DEPS: &[&str] = &[
    "build-essential",
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "libssl-dev",
    "dwarves",
    "xz-utils",
    "cpio",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Patched,
    Unpatched,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Patched => "patched",
            Variant::Unpatched => "unpatched",
        }
    }
}

#[derive(clap::Args)]
pub struct KernelArgs {
    /// Build (or find cached) only the patched kernel.
    #[arg(long, conflicts_with = "unpatched")]
    pub patched: bool,
    /// Build (or find cached) only the unpatched twin.
    #[arg(long)]
    pub unpatched: bool,
}

pub fn run(args: &KernelArgs) -> Result<()> {
    let variants: &[Variant] = match (args.patched, args.unpatched) {
        (true, _) => &[Variant::Patched],
        (_, true) => &[Variant::Unpatched],
        _ => &[Variant::Patched, Variant::Unpatched],
    };
    for v in variants {
        println!("{}", ensure(*v)?.display());
    }
    Ok(())
}

/// FNV-1a: a stable cache key, not a security measure.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        h ^= 0xff;
    }
    h
}

fn announce(msg: &str) {
    eprintln!("kernel: {msg}");
}

/// The downloaded source package (cached).
fn source_deb() -> Result<PathBuf> {
    let dir = cache::dir()?.join("kernel-src/download");
    fs::create_dir_all(&dir)?;
    let find = || -> Option<PathBuf> {
        fs::read_dir(&dir)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("linux-source-6.12_") && n.ends_with(".deb"))
            })
    };
    if let Some(deb) = find() {
        return Ok(deb);
    }
    announce("downloading Debian's linux-source-6.12 (~150 MB, once)");
    setup::run_cmd(
        Command::new("apt-get")
            .args(["download", "linux-source-6.12"])
            .current_dir(&dir),
    )?;
    find().context("apt-get download produced no linux-source-6.12 .deb")
}

/// The extracted tree (cached), named after the source package.
fn source_tree(deb: &Path) -> Result<PathBuf> {
    let stem = deb
        .file_stem()
        .and_then(|s| s.to_str())
        .context("source package name")?;
    let base = cache::dir()?.join("kernel-src").join(stem);
    let tree = base.join("linux-source-6.12");
    let done = base.join(".extracted");
    if done.exists() {
        return Ok(tree);
    }
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(&base)?;
    announce(&format!(
        "extracting {} (about a minute, once)",
        deb.display()
    ));
    setup::run_cmd(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(base.join("pkg")),
    )?;
    let tarball = base.join("pkg/usr/src/linux-source-6.12.tar.xz");
    setup::run_cmd(
        Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .current_dir(&base),
    )?;
    let _ = fs::remove_dir_all(base.join("pkg"));
    if !tree.join("Makefile").exists() {
        bail!("{} has no kernel Makefile after extraction", tree.display());
    }
    fs::write(&done, b"")?;
    Ok(tree)
}

fn make(tree: &Path, args: &[&str]) -> Result<()> {
    setup::run_cmd(Command::new("make").arg("-C").arg(tree).args(args))
}

/// Puts `.config` in the state `key` describes.
fn configure(tree: &Path, key: &str) -> Result<()> {
    let stamp = tree.join(".fuselock-config");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == key) {
        return Ok(());
    }
    announce("configuring: tinyconfig + xtask/patches/tiny-vm.config");
    make(tree, &["-s", "tinyconfig"])?;
    let fragment = tree.join(".fuselock-fragment.config");
    fs::write(&fragment, CONFIG)?;
    setup::run_cmd(
        Command::new("scripts/kconfig/merge_config.sh")
            .args(["-m", ".config"])
            .arg(&fragment)
            .current_dir(tree)
            .stdout(std::process::Stdio::null()),
    )?;
    make(tree, &["-s", "olddefconfig"])?;
    // Kconfig drops options whose dependencies are unmet without a word:
    // check that every requested `=y` survived.
    let config = fs::read_to_string(tree.join(".config"))?;
    let missing: Vec<&str> = CONFIG
        .lines()
        .filter(|l| l.starts_with("CONFIG_") && l.ends_with("=y"))
        .filter(|l| !config.lines().any(|c| c == *l))
        .collect();
    if !missing.is_empty() {
        bail!(
            "kernel config lost options after olddefconfig: {}",
            missing.join(", ")
        );
    }
    fs::write(&stamp, key)?;
    Ok(())
}

/// Applies or reverses the patch so the tree is `variant`.
fn set_variant(tree: &Path, variant: Variant) -> Result<()> {
    let stamp = tree.join(".fuselock-patched");
    let patched = stamp.exists();
    let want = variant == Variant::Patched;
    if patched == want {
        return Ok(());
    }
    announce(&format!(
        "{} {PATCH_NAME}",
        if want { "applying" } else { "reverting" }
    ));
    let patch_file = tree.join(".fuselock.patch");
    fs::write(&patch_file, PATCH)?;
    let mut cmd = Command::new("patch");
    cmd.args(["-p1", "--forward", "--quiet", "-i"])
        .arg(&patch_file)
        .current_dir(tree);
    if !want {
        cmd.arg("-R");
    }
    setup::run_cmd(&mut cmd)?;
    if want {
        fs::write(&stamp, b"")?;
    } else {
        fs::remove_file(&stamp)?;
    }
    Ok(())
}

/// The bzImage of `variant`, built if not cached.
pub fn ensure(variant: Variant) -> Result<PathBuf> {
    let deb = source_deb()?;
    let deb_name = deb
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let key = format!(
        "{:016x}",
        fnv(&[deb_name.as_bytes(), PATCH.as_bytes(), CONFIG.as_bytes()])
    );
    let out_dir = cache::dir()?.join("kernels/built");
    fs::create_dir_all(&out_dir)?;
    let out = out_dir.join(format!("bzImage-{}-{key}", variant.name()));
    if out.exists() {
        return Ok(out);
    }
    setup::ensure_apt_packages(BUILD_DEPS)?;
    let tree = source_tree(&deb)?;
    configure(&tree, &key)?;
    set_variant(&tree, variant)?;
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    announce(&format!(
        "building the {} kernel from {deb_name} with {jobs} jobs (a clean build takes ~6 min on 2 cores; \
         the twin rebuilds incrementally)",
        variant.name()
    ));
    let log = out_dir.join(format!("build-{}.log", variant.name()));
    let log_file = fs::File::create(&log)?;
    let status = Command::new("make")
        .arg("-C")
        .arg(&tree)
        .arg(format!("-j{jobs}"))
        .arg("bzImage")
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .status()
        .context("running make")?;
    if !status.success() {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        for line in tail.iter().rev() {
            eprintln!("  {line}");
        }
        bail!("kernel build failed; full log in {}", log.display());
    }
    fs::copy(tree.join("arch/x86/boot/bzImage"), &out)?;
    announce(&format!(
        "{} kernel ready: {}",
        variant.name(),
        out.display()
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_touches_exactly_the_two_files() {
        let files: Vec<&str> = PATCH
            .lines()
            .filter_map(|l| l.strip_prefix("+++ b/"))
            .collect();
        assert_eq!(files, ["fs/fuse/iomode.c", "fs/fuse/passthrough.c"]);
        assert!(PATCH.contains("+\tif (!(ff->open_flags & (FOPEN_DIRECT_IO | FOPEN_PASSTHROUGH)))"));
        assert!(PATCH.contains("+\t\tinode_lock_shared(inode);"));
        assert!(PATCH.contains("+\t\tinode_unlock_shared(inode);"));
    }

    #[test]
    fn cache_key_depends_on_every_input() {
        let a = fnv(&[b"src", b"patch", b"config"]);
        assert_ne!(a, fnv(&[b"src", b"patch", b"config2"]));
        assert_ne!(a, fnv(&[b"srcp", b"atch", b"config"]));
        assert_eq!(a, fnv(&[b"src", b"patch", b"config"]));
    }
}

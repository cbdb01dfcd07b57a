//! `cargo xtask kernel`: Linux from Debian's `linux-source-LINE`, small
//! config, with and without the parallel-direct-writes series, for each line
//! the series is ported to ([`SERIES`]: 6.12 and 7.3), in the series' v2
//! (the version that started fuselock) and v3 (as posted today, with its
//! EOF re-check under the shared lock).
//!
//! One source tree per line serves every variant: the v2 kernel is built
//! first, then each other variant is a twin, its patch swapped in and the
//! tree rebuilt incrementally, so variants differ by their patch only.
//! Results are cached by source package, patch and config.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{apt::Apt, cache, setup};

/// A kernel line the series is ported to, with its ports.
#[derive(Debug, PartialEq, Eq)]
pub struct Series {
    /// `6.12`: Debian's source package is `linux-source-6.12`.
    pub line: &'static str,
    /// v2: the four-condition shared lock, EOF checked before locking.
    patch_name: &'static str,
    patch: &'static str,
    /// v3: both patches as the author posted them (`FOPEN_IOMODE()`
    /// helpers in `iomode.c`, `fuse_passthrough_lock()` re-checking EOF
    /// under the shared lock), changing the same lines.
    v3_name: &'static str,
    v3: &'static str,
    /// Options of `tiny-vm.config` this line knows by another name (old,
    /// new): Kconfig would drop the old name without a word.
    renamed: &'static [(&'static str, &'static str)],
}

macro_rules! series {
    ($line:literal $(, renamed $renamed:expr)?) => {
        Series {
            line: $line,
            renamed: &[$($renamed)?],
            patch_name: concat!("fuse-passthrough-parallel-direct-writes-", $line, ".patch"),
            patch: include_str!(concat!(
                "../patches/fuse-passthrough-parallel-direct-writes-",
                $line,
                ".patch"
            )),
            v3_name: concat!("fuse-passthrough-parallel-direct-writes-v3-", $line, ".patch"),
            v3: include_str!(concat!(
                "../patches/fuse-passthrough-parallel-direct-writes-v3-",
                $line,
                ".patch"
            )),
        }
    };
}

/// Every line with a port of the series, oldest first.
pub const SERIES: &[Series] = &[
    series!("6.12"),
    // /proc/sys is SYSCTL on 7.3 (6.12: PROC_SYSCTL, which selected SYSCTL).
    series!("7.3", renamed("CONFIG_PROC_SYSCTL", "CONFIG_SYSCTL")),
];

impl Series {
    /// The port for `line` (`6.12`, `7.3`), or an error naming the lines
    /// that have one.
    pub fn for_line(line: &str) -> Result<&'static Series> {
        SERIES.iter().find(|s| s.line == line).with_context(|| {
            let lines: Vec<&str> = SERIES.iter().map(|s| s.line).collect();
            format!(
                "no port of the series to Linux {line}: the lines built are {}",
                lines.join(", ")
            )
        })
    }

    fn source_package(&self) -> String {
        format!("linux-source-{}", self.line)
    }

    /// `tiny-vm.config` with this line's names for its options.
    fn config(&self) -> String {
        CONFIG
            .lines()
            .map(|l| {
                let renamed = self.renamed.iter().find_map(|(old, new)| {
                    let rest = l.strip_prefix(old)?;
                    rest.starts_with('=').then(|| format!("{new}{rest}"))
                });
                renamed.unwrap_or_else(|| l.to_owned()) + "\n"
            })
            .collect()
    }
}

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
    /// The series' v2.
    Patched,
    Unpatched,
    /// The series' v3.
    PatchedV3,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Patched, Variant::Unpatched, Variant::PatchedV3];

    /// The name in `--kernel NAME:LINE` and in the built image's name.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Patched => "patched",
            Variant::Unpatched => "unpatched",
            Variant::PatchedV3 => "patched-v3",
        }
    }

    /// What `cargo xtask vm` says the kernel is.
    pub fn describe(self) -> &'static str {
        match self {
            Variant::Patched => "tiny + parallel-direct-writes patch (v2)",
            Variant::Unpatched => "tiny, unpatched twin",
            Variant::PatchedV3 => "tiny + parallel-direct-writes series v3",
        }
    }

    /// The variant's patch on `series`' line (name, text), if any.
    fn patch(self, series: &Series) -> Option<(&'static str, &'static str)> {
        match self {
            Variant::Patched => Some((series.patch_name, series.patch)),
            Variant::Unpatched => None,
            Variant::PatchedV3 => Some((series.v3_name, series.v3)),
        }
    }

    /// What the built kernel's cache key covers beside the source and
    /// config: its own patch (the unpatched twin keeps v2's, as it always
    /// had, so that a cache built before v3 stays valid).
    fn key_patch(self, series: &Series) -> &'static str {
        self.patch(series).map_or(series.patch, |(_, text)| text)
    }
}

#[derive(clap::Args)]
pub struct KernelArgs {
    /// The kernel line: 6.12 or 7.3 (the lines the series is ported to).
    #[arg(long, default_value = "6.12", value_name = "LINE")]
    pub line: String,
    /// Build (or find cached) only these variants: patched (v2),
    /// unpatched, patched-v3 (default: all three).
    #[arg(long = "variant", value_name = "VARIANT", value_parser = parse_variant)]
    pub variants: Vec<Variant>,
}

fn parse_variant(name: &str) -> Result<Variant, String> {
    Variant::ALL
        .into_iter()
        .find(|v| v.name() == name)
        .ok_or_else(|| "one of patched, unpatched, patched-v3".to_owned())
}

pub fn run(args: &KernelArgs) -> Result<()> {
    let series = Series::for_line(&args.line)?;
    let variants: &[Variant] = if args.variants.is_empty() {
        &Variant::ALL
    } else {
        &args.variants
    };
    for v in variants {
        println!("{}", ensure(series, *v)?.display());
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

/// The downloaded source package of `series`' line (cached): the first
/// download resolves it through the project's apt, later runs use the cached
/// .deb without the network.
fn source_deb(series: &Series) -> Result<PathBuf> {
    let dir = cache::dir()?.join("kernel-src/download");
    fs::create_dir_all(&dir)?;
    let package = series.source_package();
    let prefix = format!("{package}_");
    let find = || -> Option<PathBuf> {
        fs::read_dir(&dir)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            })
    };
    if let Some(deb) = find() {
        return Ok(deb);
    }
    let apt = Apt::open()?;
    // Another run may have fetched it while we waited for apt's lock.
    if let Some(deb) = find() {
        return Ok(deb);
    }
    apt.update()?;
    announce(&format!("downloading Debian's {package} (~150 MB, once)"));
    // Into a directory of its own, then one rename: an interrupted download
    // leaves no .deb that looks complete.
    let work = cache::TempDir::new(dir.join(format!(".download-{}", std::process::id())))?;
    let deb = apt.download(&package, work.path())?;
    let target = dir.join(deb.file_name().context("downloaded .deb has no name")?);
    fs::rename(&deb, &target)
        .with_context(|| format!("moving {} into {}", deb.display(), dir.display()))?;
    Ok(target)
}

/// The extracted tree (cached), named after the source package.
fn source_tree(series: &Series, deb: &Path) -> Result<PathBuf> {
    let stem = deb
        .file_stem()
        .and_then(|s| s.to_str())
        .context("source package name")?;
    let package = series.source_package();
    let base = cache::dir()?.join("kernel-src").join(stem);
    let tree = base.join(&package);
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
    let tarball = base.join(format!("pkg/usr/src/{package}.tar.xz"));
    setup::run_cmd(setup::ends_with_its_thread(
        Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .current_dir(&base),
    ))?;
    let _ = fs::remove_dir_all(base.join("pkg"));
    if !tree.join("Makefile").exists() {
        bail!("{} has no kernel Makefile after extraction", tree.display());
    }
    fs::write(&done, b"")?;
    Ok(tree)
}

fn make(tree: &Path, args: &[&str]) -> Result<()> {
    setup::run_cmd(
        setup::ends_with_its_thread(&mut Command::new("make"))
            .arg("-C")
            .arg(tree)
            .args(args),
    )
}

/// Puts `.config` in the state `key` describes: tinyconfig with `config`
/// merged over it.
fn configure(tree: &Path, config: &str, key: &str) -> Result<()> {
    let stamp = tree.join(".fuselock-config");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == key) {
        return Ok(());
    }
    announce("configuring: tinyconfig + xtask/patches/tiny-vm.config");
    make(tree, &["-s", "tinyconfig"])?;
    let fragment = tree.join(".fuselock-fragment.config");
    fs::write(&fragment, config)?;
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
    let actual = fs::read_to_string(tree.join(".config"))?;
    let missing = lost_options(config, &actual);
    if !missing.is_empty() {
        bail!(
            "kernel config lost options after olddefconfig: {}",
            missing.join(", ")
        );
    }
    fs::write(&stamp, key)?;
    Ok(())
}

/// The `=y` options of the fragment `wanted` that the resulting `.config`
/// (`actual`) does not have.
fn lost_options<'a>(wanted: &'a str, actual: &str) -> Vec<&'a str> {
    wanted
        .lines()
        .filter(|l| l.starts_with("CONFIG_") && l.ends_with("=y"))
        .filter(|l| !actual.lines().any(|c| c == *l))
        .collect()
}

/// The variant the tree is in: `.fuselock-variant` names it; a tree from
/// before v3 marks v2 with `.fuselock-patched`.
fn tree_variant(tree: &Path) -> Variant {
    if let Ok(name) = fs::read_to_string(tree.join(".fuselock-variant")) {
        if let Some(v) = Variant::ALL.into_iter().find(|v| v.name() == name.trim()) {
            return v;
        }
    }
    if tree.join(".fuselock-patched").exists() {
        Variant::Patched
    } else {
        Variant::Unpatched
    }
}

/// Applies (`reverse` false) or reverses one patch in `tree`.
fn patch(tree: &Path, name: &str, text: &str, reverse: bool) -> Result<()> {
    announce(&format!(
        "{} {name}",
        if reverse { "reverting" } else { "applying" }
    ));
    let patch_file = tree.join(".fuselock.patch");
    fs::write(&patch_file, text)?;
    let mut cmd = Command::new("patch");
    cmd.args(["-p1", "--forward", "--quiet", "-i"])
        .arg(&patch_file)
        .current_dir(tree);
    if reverse {
        cmd.arg("-R");
    }
    setup::run_cmd(&mut cmd)
}

/// Swaps patches so the tree is `variant`: the current one's reversed,
/// the wanted one's applied.
fn set_variant(tree: &Path, series: &Series, variant: Variant) -> Result<()> {
    let current = tree_variant(tree);
    if current == variant {
        return Ok(());
    }
    if let Some((name, text)) = current.patch(series) {
        patch(tree, name, text, true)?;
    }
    let _ = fs::remove_file(tree.join(".fuselock-patched"));
    fs::write(tree.join(".fuselock-variant"), Variant::Unpatched.name())?;
    if let Some((name, text)) = variant.patch(series) {
        patch(tree, name, text, false)?;
    }
    fs::write(tree.join(".fuselock-variant"), variant.name())?;
    Ok(())
}

/// Downloads and extracts `series`' source (cached) unless `variant`'s
/// image is cached: what its build does first, fetched ahead so that the
/// build later starts at `make`.
pub fn fetch_source(series: &Series, variant: Variant) -> Result<()> {
    let build = Build::of(series, variant)?;
    if build.out.exists() {
        return Ok(());
    }
    source_tree(series, &build.deb).map(drop)
}

/// What a kernel image is built from, and where it is cached.
struct Build {
    deb: PathBuf,
    deb_name: String,
    config: String,
    /// The cache key: the source package, the patch and the config.
    key: String,
    out: PathBuf,
}

impl Build {
    fn of(series: &Series, variant: Variant) -> Result<Build> {
        let deb = source_deb(series)?;
        let config = series.config();
        let deb_name = deb
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let key = format!(
            "{:016x}",
            fnv(&[
                deb_name.as_bytes(),
                variant.key_patch(series).as_bytes(),
                config.as_bytes()
            ])
        );
        let out_dir = cache::dir()?.join("kernels/built");
        fs::create_dir_all(&out_dir)?;
        let out = out_dir.join(format!("bzImage-{}-{key}", variant.name()));
        Ok(Build {
            deb,
            deb_name,
            config,
            key,
            out,
        })
    }
}

/// Installs what building a kernel needs (apt, so in the foreground: a
/// background build must not take dpkg's lock from under another step).
pub fn ensure_build_deps() -> Result<()> {
    setup::ensure_apt_packages(BUILD_DEPS)
}

/// The bzImage of `variant` on `series`' line, built if not cached.
pub fn ensure(series: &Series, variant: Variant) -> Result<PathBuf> {
    let Build {
        deb,
        deb_name,
        config,
        key,
        out,
    } = Build::of(series, variant)?;
    if out.exists() {
        return Ok(out);
    }
    let out_dir = out.parent().context("the image's directory")?;
    ensure_build_deps()?;
    let tree = source_tree(series, &deb)?;
    configure(&tree, &config, &key)?;
    set_variant(&tree, series, variant)?;
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    announce(&format!(
        "building the {} {} kernel from {deb_name} with {jobs} jobs (a clean build took ~5 min for 6.12 and \
         ~10 min for 7.3 on 2 busy cores; a twin rebuilds incrementally in under a minute)",
        series.line,
        variant.name()
    ));
    let log = out_dir.join(format!("build-{}-{}.log", series.line, variant.name()));
    let log_file = fs::File::create(&log)?;
    let status = setup::ends_with_its_thread(&mut Command::new("make"))
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
        "{} {} kernel ready: {}",
        series.line,
        variant.name(),
        out.display()
    ));
    Ok(out)
}

#[cfg(test)]
mod tests;

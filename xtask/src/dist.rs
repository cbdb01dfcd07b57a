//! `cargo xtask dist`: what a user installs, in `target/dist/`.
//!
//! - `fuselock-VERSION-x86_64-linux-musl.tar.gz`: the stripped static binary,
//!   the man page, bash/zsh/fish completions, the systemd unit, the README
//!   and a `SHA256SUMS` of those files;
//! - `fuselock_VERSION-1_amd64.deb`, made by cargo-deb, installing the same
//!   files under `/usr`;
//! - `SHA256SUMS` of the tarball and the `.deb`, for checking a download.
//!
//! The man page and completions are written by the binary being shipped, so
//! they describe exactly its flags.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _, Result};
use sha2::{Digest as _, Sha256};

use crate::{build, cache, setup};

/// The unit in `deploy/` names the tarball's install location; the `.deb`
/// installs the binary to `/usr/bin`.
const UNIT: &str = "fuselock-exporter.service";
const UNIT_BIN: &str = "/usr/local/bin/fuselock";
const DEB_BIN: &str = "/usr/bin/fuselock";

/// Shell, file name in the tarball's `completions/`, and where the `.deb`
/// puts it (each shell's vendor directory on Debian).
const COMPLETIONS: &[(&str, &str, &str)] = &[
    (
        "bash",
        "fuselock.bash",
        "usr/share/bash-completion/completions/fuselock",
    ),
    (
        "zsh",
        "_fuselock",
        "usr/share/zsh/vendor-completions/_fuselock",
    ),
    (
        "fish",
        "fuselock.fish",
        "usr/share/fish/vendor_completions.d/fuselock.fish",
    ),
];

/// Where the `.deb` puts the man page and the unit.
pub const DEB_MAN: &str = "/usr/share/man/man1/fuselock.1.gz";
pub const DEB_UNIT: &str = "/lib/systemd/system/fuselock-exporter.service";

/// What `dist` made.
pub struct Artifacts {
    /// The stripped static binary (as in the tarball).
    pub binary: PathBuf,
    pub tarball: PathBuf,
    pub deb: PathBuf,
    /// `SHA256SUMS` of the tarball and the `.deb`, beside them.
    pub sums: PathBuf,
}

impl Artifacts {
    /// Every absolute path the `.deb` must install.
    pub fn deb_files() -> Vec<String> {
        [DEB_BIN, DEB_MAN, DEB_UNIT]
            .into_iter()
            .map(str::to_owned)
            .chain(COMPLETIONS.iter().map(|(_, _, dest)| format!("/{dest}")))
            .collect()
    }
}

#[derive(clap::Args)]
pub struct DistArgs {
    /// Then check them as `cargo xtask test` does: sums, `dpkg -i`,
    /// `fuselock --version`, `doctor`, `man -w`, `dpkg -r`.
    #[arg(long)]
    pub install_test: bool,
}

pub fn run_cli(args: &DistArgs) -> Result<()> {
    let artifacts = run()?;
    for p in [
        &artifacts.binary,
        &artifacts.tarball,
        &artifacts.deb,
        &artifacts.sums,
    ] {
        println!("{}", p.display());
    }
    if args.install_test {
        crate::install_test::run(&artifacts)?;
    }
    Ok(())
}

pub fn run() -> Result<Artifacts> {
    // strip comes with binutils; the rest is what any fuselock build needs.
    setup::ensure_apt_packages(&["binutils"])?;
    setup::ensure_rustup()?;
    setup::ensure_bpf_linker()?;
    let cargo_deb = setup::ensure_cargo_deb()?;
    let built = build::fuselock_static()?;
    let version = env!("CARGO_PKG_VERSION");
    let name = format!("fuselock-{version}-x86_64-linux-musl");

    let root = fs::canonicalize(cache::workspace_root()).context("the workspace root")?;
    let out = root.join("target/dist");
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    let stage = out.join(&name);
    fs::create_dir_all(stage.join("completions"))
        .with_context(|| format!("creating {}", stage.display()))?;

    eprintln!("dist: staging {}", stage.display());
    let binary = stage.join("fuselock");
    setup::run_cmd(
        Command::new("strip")
            .args(["--strip-all", "-o"])
            .arg(&binary)
            .arg(&built),
    )?;
    fs::write(
        stage.join("fuselock.1"),
        fuselock_output(&binary, &["manpage"])?,
    )?;
    for (shell, file, _) in COMPLETIONS {
        fs::write(
            stage.join("completions").join(file),
            fuselock_output(&binary, &["completions", shell])?,
        )?;
    }
    let unit = fs::read_to_string(root.join("deploy/systemd").join(UNIT))
        .with_context(|| format!("reading deploy/systemd/{UNIT}"))?;
    fs::write(stage.join(UNIT), &unit)?;
    fs::copy(root.join("README.md"), stage.join("README.md")).context("copying README.md")?;
    write_sums(&stage, &files_under(&stage)?)?;

    let tarball = out.join(format!("{name}.tar.gz"));
    eprintln!("dist: {}", tarball.display());
    setup::run_cmd(
        Command::new("tar")
            // Reproducible: fixed order, owner and times.
            .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
            .arg(format!("--mtime=@{}", source_date_epoch()))
            .args(["-I", "gzip -9n", "-cf"])
            .arg(&tarball)
            .arg("-C")
            .arg(&out)
            .arg(&name),
    )?;

    let deb = build_deb(&cargo_deb, &built, &stage, &unit, &out)?;
    let sums = write_sums(&out, &[file_name(&tarball)?, file_name(&deb)?])?;
    Ok(Artifacts {
        binary,
        tarball,
        deb,
        sums,
    })
}

/// The `.deb`'s assets go beside the built binary: cargo-deb maps the
/// `target/release/` prefix in `[package.metadata.deb]` to that directory.
fn build_deb(
    cargo_deb: &Path,
    built: &Path,
    stage: &Path,
    unit: &str,
    out: &Path,
) -> Result<PathBuf> {
    let release = built
        .parent()
        .context("the built binary has no directory")?;
    let assets = release.join("deb-assets");
    if assets.exists() {
        fs::remove_dir_all(&assets)?;
    }
    fs::create_dir_all(assets.join("completions"))?;
    fs::copy(stage.join("fuselock"), assets.join("fuselock"))?;
    for (_, file, _) in COMPLETIONS {
        let from = stage.join("completions").join(file);
        fs::copy(&from, assets.join("completions").join(file))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    let gz = fs::File::create(assets.join("fuselock.1.gz"))?;
    setup::run_cmd(
        Command::new("gzip")
            .args(["-9n", "-c"])
            .arg(stage.join("fuselock.1"))
            .stdout(gz),
    )?;
    ensure!(
        unit.contains(&format!("ExecStart={UNIT_BIN} ")),
        "deploy/systemd/{UNIT} no longer starts {UNIT_BIN}; update xtask/src/dist.rs"
    );
    fs::write(assets.join(UNIT), unit.replace(UNIT_BIN, DEB_BIN))?;

    eprintln!("dist: .deb (cargo-deb)");
    let output = Command::new(cargo_deb)
        // cargo-deb runs as a cargo subcommand: its first argument is "deb".
        .args(["deb", "--package", "fuselock", "--no-build", "--no-strip"])
        .args(["--target", build::MUSL_TARGET, "--output"])
        .arg(out)
        .current_dir(cache::workspace_root())
        .output()
        .context("running cargo-deb")?;
    if !output.status.success() {
        bail!(
            "cargo-deb failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    // cargo-deb prints the path of the package it wrote.
    let deb = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    ensure!(
        deb.is_file() && deb.extension().is_some_and(|e| e == "deb"),
        "cargo-deb did not report a .deb (stdout: {})",
        deb.display()
    );
    Ok(deb)
}

/// The standard output of `fuselock ARGS`.
fn fuselock_output(binary: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(binary)
        .args(args)
        .output()
        .with_context(|| format!("running {} {}", binary.display(), args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "fuselock {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Files under `dir`, as sorted relative paths.
pub fn files_under(dir: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let rel = path.strip_prefix(dir)?.to_str().context("non-UTF-8 path")?;
                files.push(rel.to_owned());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Writes `dir/SHA256SUMS` for `files` (relative to `dir`) in the format
/// `sha256sum -c` reads.
fn write_sums(dir: &Path, files: &[String]) -> Result<PathBuf> {
    let mut text = String::new();
    for file in files {
        let path = dir.join(file);
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let hex: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        text.push_str(&format!("{hex}  {file}\n"));
    }
    let sums = dir.join("SHA256SUMS");
    fs::write(&sums, text).with_context(|| format!("writing {}", sums.display()))?;
    Ok(sums)
}

fn file_name(path: &Path) -> Result<String> {
    Ok(path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("no file name in {}", path.display()))?
        .to_owned())
}

/// `SOURCE_DATE_EPOCH`, else the commit's time, else 0: file times in the
/// tarball that do not change between builds of one commit.
fn source_date_epoch() -> u64 {
    if let Some(t) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return t;
    }
    Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(cache::workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

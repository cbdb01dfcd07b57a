//! The install path, checked as a user takes it: the downloads match their
//! `SHA256SUMS`, the tarball holds exactly what its own `SHA256SUMS` lists,
//! and the `.deb` installs a working fuselock (version, doctor, man page,
//! completions, unit) and `dpkg -r` takes every file away again, `dpkg --purge`
//! the account its postinst made.
//!
//! It installs into the host's `/usr`, so it refuses to run where fuselock is
//! already installed rather than replace and then remove someone's copy.

use std::{
    collections::BTreeSet,
    fs,
    path::Path,
    process::{Command, Output},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{
    dist::{self, Artifacts},
    setup,
};

pub fn run(a: &Artifacts) -> Result<()> {
    check_sums(a)?;
    check_deb(a)
}

/// `sha256sum -c` (an implementation independent of the one that wrote the
/// sums) over the downloads and over the unpacked tarball.
fn check_sums(a: &Artifacts) -> Result<()> {
    let dir = a.sums.parent().context("SHA256SUMS has no directory")?;
    ok(Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(dir))?;

    let unpacked = dir.join("unpacked");
    if unpacked.exists() {
        fs::remove_dir_all(&unpacked)?;
    }
    fs::create_dir_all(&unpacked)?;
    ok(Command::new("tar")
        .arg("-xzf")
        .arg(&a.tarball)
        .arg("-C")
        .arg(&unpacked))?;
    let mut tops = fs::read_dir(&unpacked)?.collect::<Result<Vec<_>, _>>()?;
    ensure!(
        tops.len() == 1,
        "the tarball should hold one directory, holds {}",
        tops.len()
    );
    let top = tops.remove(0).path();
    ok(Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(&top))?;
    // Nothing in the tarball that the sums do not cover, and nothing missing.
    let listed: BTreeSet<String> = fs::read_to_string(top.join("SHA256SUMS"))?
        .lines()
        .filter_map(|l| l.split_once("  ").map(|(_, f)| f.to_owned()))
        .chain(["SHA256SUMS".to_owned()])
        .collect();
    let present: BTreeSet<String> = dist::files_under(&top)?.into_iter().collect();
    ensure!(
        listed == present,
        "tarball files {present:?} differ from SHA256SUMS {listed:?}"
    );
    for expected in [
        "fuselock",
        "fuselock.1",
        "fuselock-exporter.service",
        "completions/fuselock.bash",
        "completions/_fuselock",
        "completions/fuselock.fish",
    ] {
        ensure!(present.contains(expected), "the tarball lacks {expected}");
    }
    let version = stdout(Command::new(top.join("fuselock")).arg("--version"))?;
    eprintln!("install: tarball ok, {}", version.trim());
    fs::remove_dir_all(&unpacked)?;
    Ok(())
}

fn check_deb(a: &Artifacts) -> Result<()> {
    if package_installed() || Path::new("/usr/bin/fuselock").exists() {
        bail!(
            "fuselock is already installed on this host; the install test would replace and \
             then remove it. Remove it first (sudo dpkg -r fuselock)"
        );
    }
    // What the package holds, and which of those paths exist before it is
    // installed (directories like /usr/bin do, and must stay).
    let listing = stdout(
        Command::new("sh")
            .arg("-c")
            .arg("dpkg-deb --fsys-tarfile \"$1\" | tar -t")
            .arg("sh")
            .arg(&a.deb),
    )?;
    let contents: Vec<String> = listing
        .lines()
        .map(|l| l.trim_start_matches('.').trim_end_matches('/').to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    let existed: BTreeSet<&String> = contents
        .iter()
        .filter(|p| Path::new(p).symlink_metadata().is_ok())
        .collect();

    let account_existed = account_exists();
    ok(root(&["dpkg", "--install"]).arg(&a.deb))?;
    let installed = Installed { removed: false };
    ensure!(
        account_exists(),
        "postinst did not create the fuselock account"
    );

    // dpkg's own record of what it installed is what the package holds.
    let listed: BTreeSet<String> = stdout(&mut root(&["dpkg", "--listfiles", "fuselock"]))?
        .lines()
        .filter(|l| *l != "/.")
        .map(str::to_owned)
        .collect();
    let held: BTreeSet<String> = contents.iter().cloned().collect();
    ensure!(
        listed == held,
        "dpkg -L fuselock {listed:?} differs from the .deb's contents {held:?}"
    );
    for file in Artifacts::deb_files() {
        ensure!(listed.contains(&file), "dpkg -L fuselock lacks {file}");
        ensure!(Path::new(&file).is_file(), "{file} is not installed");
    }

    let installed_version = stdout(Command::new("/usr/bin/fuselock").arg("--version"))?;
    let shipped_version = stdout(Command::new(&a.binary).arg("--version"))?;
    ensure!(
        installed_version == shipped_version
            && installed_version.starts_with(concat!("fuselock ", env!("CARGO_PKG_VERSION"), " (")),
        "installed --version {installed_version:?}, shipped {shipped_version:?}"
    );
    eprintln!("install: {}", installed_version.trim());

    check_doctor()?;

    let man = stdout(Command::new("man").args(["-w", "fuselock"]))?;
    ensure!(
        man.trim() == dist::DEB_MAN,
        "man -w fuselock gave {man:?}, not {}",
        dist::DEB_MAN
    );
    eprintln!("install: man -w fuselock: {}", man.trim());

    // bash loads the completion and registers it for fuselock.
    ok(Command::new("bash")
        .arg("-c")
        .arg("source /usr/share/bash-completion/completions/fuselock && complete -p fuselock"))?;
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        // Also checks that ExecStart names the installed binary.
        ok(Command::new("systemd-analyze")
            .arg("verify")
            .arg(dist::DEB_UNIT))?;
    } else {
        eprintln!("install: SKIPPED systemd-analyze verify (no systemd-analyze)");
    }

    installed.remove()?;
    // A package with a postrm stays known to dpkg (`config-files`) until it
    // is purged, so that `postrm purge` can still run.
    let state = package_state();
    ensure!(
        matches!(
            state.as_deref(),
            Some("config-files" | "not-installed") | None
        ),
        "dpkg lists fuselock as {state:?} after dpkg -r"
    );
    let added: Vec<&String> = contents.iter().filter(|p| !existed.contains(p)).collect();
    let left: Vec<&&String> = added
        .iter()
        .filter(|p| Path::new(p).symlink_metadata().is_ok())
        .collect();
    ensure!(left.is_empty(), "dpkg -r left behind: {left:?}");
    eprintln!(
        "install: dpkg -r removed all {} files and directories dpkg -i added",
        added.len()
    );

    ok(&mut root(&["dpkg", "--purge", "fuselock"]))?;
    ensure!(
        !package_installed(),
        "dpkg still lists fuselock after dpkg --purge"
    );
    if !account_existed {
        ensure!(
            !account_exists(),
            "dpkg --purge left the fuselock account behind"
        );
    }
    eprintln!("install: dpkg --purge forgot the package and its account");
    Ok(())
}

/// `fuselock doctor` prints one verdict and exits 0 where fuselock can run,
/// 4 where it cannot (this project's build hosts have no kprobes).
fn check_doctor() -> Result<()> {
    let out = root(&["/usr/bin/fuselock", "doctor"])
        .output()
        .context("running fuselock doctor")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let verdict = text.lines().last().unwrap_or_default();
    match out.status.code() {
        Some(0) => ensure!(verdict == "fuselock can run here", "doctor exit 0: {text}"),
        Some(4) => ensure!(
            verdict.starts_with("fuselock cannot run here"),
            "doctor exit 4: {text}"
        ),
        other => bail!(
            "fuselock doctor exited {other:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
    eprintln!(
        "install: fuselock doctor exit {}: {verdict}",
        out.status.code().unwrap_or(-1)
    );
    Ok(())
}

/// Removes the package if a check fails while it is installed.
struct Installed {
    removed: bool,
}

impl Installed {
    fn remove(mut self) -> Result<()> {
        self.removed = true;
        ok(&mut root(&["dpkg", "--remove", "fuselock"]))
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.removed {
            eprintln!("install: removing the fuselock package after a failed check");
            if let Err(e) = ok(&mut root(&["dpkg", "--purge", "fuselock"])) {
                eprintln!("install: {e:#}");
            }
        }
    }
}

/// dpkg knows the package in any state but `not-installed` (`config-files`
/// included: `dpkg -r` would have left configuration behind).
fn package_installed() -> bool {
    package_state().is_some_and(|state| state != "not-installed")
}

/// The last word of dpkg's status for fuselock (`installed`,
/// `config-files`, ...), or None when dpkg has never heard of it.
fn package_state() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "fuselock"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .map(str::to_owned)
}

fn account_exists() -> bool {
    Command::new("getent")
        .args(["passwd", "fuselock"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `args` as root: directly when we are, else through sudo.
fn root(args: &[&str]) -> Command {
    let mut cmd = if setup::is_root() {
        Command::new(args[0])
    } else {
        let mut c = Command::new("sudo");
        c.arg(args[0]);
        c
    };
    cmd.args(&args[1..]);
    cmd
}

fn run_output(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn ok(cmd: &mut Command) -> Result<()> {
    run_output(cmd).map(drop)
}

fn stdout(cmd: &mut Command) -> Result<String> {
    Ok(String::from_utf8_lossy(&run_output(cmd)?.stdout).into_owned())
}

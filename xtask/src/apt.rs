//! The project's own apt configuration: a sources list, state and cache
//! directory under the fuselock cache, so looking up and downloading Debian
//! kernels from any suite never changes (or depends on) the machine's own
//! apt sources.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::cache;

/// The suites that carry the kernel lines users run (6.12 in
/// bookworm-security and trixie, 7.0/7.1/7.3 in trixie-backports, 7.2 in sid,
/// release candidates in experimental).
const SOURCES: &[(&str, &str)] = &[
    ("http://deb.debian.org/debian", "bookworm"),
    ("http://deb.debian.org/debian-security", "bookworm-security"),
    ("http://deb.debian.org/debian", "trixie"),
    ("http://deb.debian.org/debian", "trixie-backports"),
    ("http://deb.debian.org/debian", "sid"),
    ("http://deb.debian.org/debian", "experimental"),
];
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A private apt, locked for as long as this value lives: two xtask runs
/// never update or download through the same state at once.
pub struct Apt {
    root: PathBuf,
    _lock: File,
}

impl Apt {
    pub fn open() -> Result<Apt> {
        let root = cache::dir()?.join("apt");
        for sub in [
            "state/lists/partial",
            "cache/archives/partial",
            "etc/sources.list.d",
            "etc/preferences.d",
        ] {
            std::fs::create_dir_all(root.join(sub))
                .with_context(|| format!("creating {}", root.join(sub).display()))?;
        }
        let lock_path = root.join("lock");
        let lock = File::create(&lock_path)
            .with_context(|| format!("creating {}", lock_path.display()))?;
        // SAFETY: flock(2) on a file descriptor we own; released on close.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "locking {}: {}",
                lock_path.display(),
                std::io::Error::last_os_error()
            );
        }
        if !Path::new(KEYRING).is_file() {
            bail!("{KEYRING} missing: install Debian's debian-archive-keyring");
        }
        let list: String = SOURCES
            .iter()
            .map(|(uri, suite)| format!("deb [signed-by={KEYRING}] {uri} {suite} main\n"))
            .collect();
        let list_path = root.join("etc/sources.list");
        std::fs::write(&list_path, list)
            .with_context(|| format!("writing {}", list_path.display()))?;
        Ok(Apt { root, _lock: lock })
    }

    fn command(&self, program: &str) -> Command {
        let r = &self.root;
        let mut cmd = Command::new(program);
        for (key, value) in [
            ("Dir::State", r.join("state")),
            // Nothing is installed: an empty status file.
            ("Dir::State::status", PathBuf::from("/dev/null")),
            ("Dir::Cache", r.join("cache")),
            ("Dir::Etc::SourceList", r.join("etc/sources.list")),
            ("Dir::Etc::SourceParts", r.join("etc/sources.list.d")),
            ("Dir::Etc::Preferences", r.join("etc/preferences")),
            ("Dir::Etc::PreferencesParts", r.join("etc/preferences.d")),
        ] {
            cmd.arg("-o").arg(format!("{key}={}", value.display()));
        }
        cmd.args([
            "-o",
            "APT::Architecture=amd64",
            "-o",
            "APT::Architectures::=amd64",
            // The state belongs to whoever runs xtask; apt's _apt sandbox
            // user could not write it.
            "-o",
            "APT::Sandbox::User=root",
        ]);
        cmd
    }

    /// Refreshes the package index from the network.
    pub fn update(&self) -> Result<()> {
        eprintln!(
            "kernel: refreshing the package index of Debian's suites (private apt state in {})",
            self.root.display()
        );
        let out = self
            .command("apt-get")
            .args(["update", "-q", "-o", "APT::Update::Error-Mode=any"])
            .output()
            .context("running apt-get update")?;
        if !out.status.success() {
            bail!(
                "cannot refresh the Debian package index (network?): {}",
                last_error(&out.stderr)
            );
        }
        Ok(())
    }

    /// Package names matching the regular expression `pattern`.
    pub fn search_names(&self, pattern: &str) -> Result<Vec<String>> {
        let out = self
            .command("apt-cache")
            .args(["search", "--names-only", pattern])
            .output()
            .context("running apt-cache search")?;
        if !out.status.success() {
            bail!("apt-cache search failed: {}", last_error(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect())
    }

    /// Downloads `package`'s .deb into `dir` and returns its path.
    pub fn download(&self, package: &str, dir: &Path) -> Result<PathBuf> {
        let out = self
            .command("apt-get")
            .args(["download", "-q", package])
            .current_dir(dir)
            .output()
            .context("running apt-get download")?;
        if !out.status.success() {
            bail!(
                "cannot download {package} (network?): {}",
                last_error(&out.stderr)
            );
        }
        std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get download {package} produced no .deb"))
    }
}

/// The line of apt's stderr that says what failed: the first "Failed to
/// fetch" (it names the address), else the last `E:` line, else the last.
fn last_error(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find(|l| l.contains("Failed to fetch"))
        .or_else(|| lines.iter().rev().find(|l| l.starts_with("E:")))
        .or(lines.last())
        .map_or_else(|| "no message".to_owned(), |l| (*l).to_owned())
}

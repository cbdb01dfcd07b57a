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
/// release candidates in experimental), and whether each is served by the
/// security archive rather than the main one.
const SUITES: &[(&str, Archive)] = &[
    ("bookworm", Archive::Main),
    ("bookworm-security", Archive::Security),
    ("trixie", Archive::Main),
    ("trixie-backports", Archive::Main),
    ("sid", Archive::Main),
    ("experimental", Archive::Main),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Archive {
    Main,
    Security,
}

/// The Debian mirrors this machine already uses (its apt sources, read and
/// never changed): the URI that serves `bookworm` and the one that serves
/// `bookworm-security`. Using the machine's own mirrors keeps the project
/// working wherever apt itself is configured to work.
fn machine_mirrors() -> Result<(String, String)> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(dir.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    let mut pairs = Vec::new();
    for file in files {
        let name = file.to_string_lossy().into_owned();
        let Ok(content) = std::fs::read_to_string(&file) else {
            continue;
        };
        if name.ends_with(".sources") {
            pairs.extend(deb822_pairs(&content));
        } else if name.ends_with(".list") {
            pairs.extend(one_line_pairs(&content));
        }
    }
    let find = |suite: &str| {
        pairs
            .iter()
            .find(|(_, s)| s == suite)
            .map(|(uri, _)| uri.trim_end_matches('/').to_owned())
    };
    match (find("bookworm"), find("bookworm-security")) {
        (Some(main), Some(security)) => Ok((main, security)),
        _ => bail!(
            "this machine's apt sources (/etc/apt/sources.list and sources.list.d) name no Debian \
             mirror for both bookworm and bookworm-security: the kernel matrix looks up its \
             suites on the same mirrors"
        ),
    }
}

/// (URI, suite) pairs of deb822 `.sources` stanzas of type `deb`.
fn deb822_pairs(content: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for stanza in content.split("\n\n") {
        let field = |key: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')))
                .map(str::trim)
        };
        if !field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb")) {
            continue;
        }
        let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) else {
            continue;
        };
        for uri in uris.split_whitespace() {
            for suite in suites.split_whitespace() {
                pairs.push((uri.to_owned(), suite.to_owned()));
            }
        }
    }
    pairs
}

/// (URI, suite) pairs of one-line `deb [options] URI SUITE COMPONENTS` entries.
fn one_line_pairs(content: &str) -> Vec<(String, String)> {
    content
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("deb ")?.trim_start();
            let rest = match rest.strip_prefix('[') {
                Some(r) => r.split_once(']')?.1,
                None => rest,
            };
            let mut words = rest.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect()
}
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A private apt, locked for as long as this value lives: two xtask runs
/// never update or download through the same state at once.
pub struct Apt {
    root: PathBuf,
    _lock: File,
}

impl Apt {
    /// The binary packages of every suite in [`SUITES`] (the kernels).
    pub fn open() -> Result<Apt> {
        Apt::open_at("apt", |main, security| {
            SUITES
                .iter()
                .map(|(suite, archive)| {
                    let uri = if *archive == Archive::Security {
                        security
                    } else {
                        main
                    };
                    format!("deb [signed-by={KEYRING}] {uri} {suite} main\n")
                })
                .collect()
        })
    }

    /// The source packages of one suite of the main archive (`trixie`), in
    /// a state of their own: the kernels' index stays without `Sources`,
    /// and this one without every suite's `Packages`.
    pub fn open_sources(suite: &str) -> Result<Apt> {
        if !SUITES.contains(&(suite, Archive::Main)) {
            bail!("{suite} is not one of the main archive's suites this apt knows");
        }
        let suite = suite.to_owned();
        Apt::open_at(&format!("apt-src-{suite}"), move |main, _| {
            format!("deb-src [signed-by={KEYRING}] {main} {suite} main\n")
        })
    }

    /// A private apt under the cache's `dir`, whose sources list `list`
    /// writes from the machine's (main, security) mirrors.
    fn open_at(dir: &str, list: impl FnOnce(&str, &str) -> String) -> Result<Apt> {
        let root = cache::dir()?.join(dir);
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
        let (main, security) = machine_mirrors()?;
        let list = list(&main, &security);
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
            "apt: refreshing the index of Debian's suites (private apt state in {})",
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

impl Apt {
    /// Downloads the source package `spec` (`fuse3/trixie`) into `dir` and
    /// unpacks it there with its Debian patches applied. apt checks every
    /// file it fetches (.dsc and tarballs) against the hashes of the suite's
    /// signed `Sources` index, and dpkg-source checks the tarballs against
    /// the .dsc again before unpacking. Returns the .dsc's path.
    pub fn source(&self, spec: &str, dir: &Path) -> Result<PathBuf> {
        let out = self
            .command("apt-get")
            .args(["source", "-q", spec])
            .current_dir(dir)
            .output()
            .context("running apt-get source (dpkg-source comes with Debian's dpkg-dev)")?;
        if !out.status.success() {
            bail!(
                "cannot download or unpack the source package {spec}: {}",
                last_error(&out.stderr)
            );
        }
        std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "dsc"))
            .with_context(|| format!("apt-get source {spec} left no .dsc"))
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

#[cfg(test)]
mod mirror_tests {
    use super::*;

    #[test]
    fn mirrors_are_read_from_both_source_formats() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\
                      Components: main\n\nTypes: deb-src\nURIs: http://src.example\nSuites: bookworm\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security/\nSuites: bookworm-security\n";
        let pairs = deb822_pairs(deb822);
        assert!(pairs.contains(&("http://mirror.example/debian".into(), "bookworm".into())));
        assert!(!pairs.iter().any(|(u, _)| u.contains("src.example")));
        let one = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n\
                   deb http://m.example/debian-security bookworm-security main\ndeb-src http://x bookworm main\n";
        assert_eq!(
            one_line_pairs(one),
            [
                ("http://m.example/debian".to_owned(), "bookworm".to_owned()),
                (
                    "http://m.example/debian-security".to_owned(),
                    "bookworm-security".to_owned()
                ),
            ]
        );
    }
}

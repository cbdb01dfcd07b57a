//! Debian's kernels, one per line (6.12, 7.0, …) and flavour (cloud, rt,
//! generic), downloaded once and cached.
//!
//! The archive moves (old point releases disappear), so the newest image of
//! a line is resolved at download time through the project's own apt
//! ([`crate::apt`]); once cached, the newest cached one of that line is used
//! without the network. A cache entry appears by one `rename(2)` of a fully
//! extracted image: a failed or interrupted download leaves none behind.

use std::{
    fmt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{apt::Apt, cache, setup};

/// FUSE passthrough, the thing fuselock watches, appeared in 6.9.
const OLDEST: (u64, u64) = (6, 9);

/// A kernel line: `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Line(pub u64, pub u64);

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// A Debian kernel flavour: what its release names end with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Flavour {
    /// `-cloud-amd64`: virtual machines (the default, and the stock kernel).
    Cloud,
    /// `-rt-amd64`: PREEMPT_RT, where the inode lock is built on an rtmutex.
    Rt,
    /// `-amd64`: what bare-metal Debian hosts run.
    Generic,
}

impl Flavour {
    /// The release's last words: `6.12.118+deb12-<this>`.
    fn suffix(self) -> &'static str {
        match self {
            Flavour::Cloud => "cloud-amd64",
            Flavour::Rt => "rt-amd64",
            Flavour::Generic => "amd64",
        }
    }

    /// How `debian:LINE-<this>` names it (cloud has no suffix).
    fn name(self) -> Option<&'static str> {
        match self {
            Flavour::Cloud => None,
            Flavour::Rt => Some("rt"),
            Flavour::Generic => Some("generic"),
        }
    }

    /// Whether `release` (`6.12.118+deb12-rt-amd64`) is of this flavour:
    /// its words after `+debNN-` are exactly the suffix (so `amd64` is not
    /// `cloud-amd64`).
    fn is_of(self, release: &str) -> bool {
        release
            .split_once('+')
            .and_then(|(_, f)| f.split_once('-'))
            .is_some_and(|(deb, rest)| deb.starts_with("deb") && rest == self.suffix())
    }
}

/// What `debian:WHAT` asks for: a line (`7.3`, `7.3-rt`, `6.12-generic`) or
/// the newest cloud kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wanted {
    Line(Line, Flavour),
    Newest,
}

impl Wanted {
    pub fn parse(s: &str) -> Result<Wanted> {
        if s == "newest" {
            return Ok(Wanted::Newest);
        }
        let (line, flavour) = match s.split_once('-') {
            None => (s, Flavour::Cloud),
            Some((line, "rt")) => (line, Flavour::Rt),
            Some((line, "generic")) => (line, Flavour::Generic),
            Some((_, other)) => bail!(
                "debian:{s}: no flavour `{other}`; use debian:LINE (cloud), debian:LINE-rt \
                 (PREEMPT_RT) or debian:LINE-generic"
            ),
        };
        let parsed = line
            .split_once('.')
            .and_then(|(a, b)| Some(Line(a.parse().ok()?, b.parse().ok()?)));
        let Some(line) = parsed else {
            bail!("debian:{s}: not a kernel line; use debian:MAJOR.MINOR (6.12, 7.0 … 7.3), with -rt or -generic for those flavours, or debian:newest");
        };
        if (line.0, line.1) < OLDEST {
            bail!(
                "debian:{s}: Linux {line} has no FUSE passthrough (it needs >= {}.{})",
                OLDEST.0,
                OLDEST.1
            );
        }
        Ok(Wanted::Line(line, flavour))
    }
}

/// A kernel ready to boot.
pub struct Kernel {
    pub vmlinuz: PathBuf,
    /// e.g. `6.12.117+deb12-cloud-amd64`.
    pub release: String,
}

/// The numbers of a release or package name, for ordering:
/// `7.2.13+deb14-cloud-amd64` → [7, 2, 13, 14, 64].
fn version_key(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn line_of(release: &str) -> Option<Line> {
    let v = version_key(release);
    Some(Line(*v.first()?, *v.get(1)?))
}

/// The image packages of a release: `linux-image-6.12.N+debNN-FLAVOUR-unsigned`
/// up to 6.12, `linux-binary-7.X.N+debNN-FLAVOUR` from 7.0 on. Returns the
/// release (`6.12.117+deb12-cloud-amd64`) if it is of `flavour`.
fn release_of_package(pkg: &str, flavour: Flavour) -> Option<&str> {
    let rest = pkg
        .strip_prefix("linux-image-")
        .and_then(|r| r.strip_suffix("-unsigned"))
        .or_else(|| pkg.strip_prefix("linux-binary-"))?;
    let (version, _) = rest.split_once('+')?;
    let ok = flavour.is_of(rest)
        && version.split('.').count() == 3
        && version.split('.').all(|p| p.parse::<u64>().is_ok());
    ok.then_some(rest)
}

/// The cache directory of a line and flavour: `7.3`, `7.3-rt`.
fn line_dir(line: Line, flavour: Flavour) -> String {
    match flavour.name() {
        None => line.to_string(),
        Some(name) => format!("{line}-{name}"),
    }
}

fn cache_root() -> Result<PathBuf> {
    // Not `kernels/`: older checkouts take the newest `vmlinuz-*` there as
    // their 6.12, and must not find a 7.x one.
    Ok(cache::dir()?.join("debian-kernels"))
}

/// The newest cached kernel of `line` and `flavour`.
fn cached(root: &Path, line: Line, flavour: Flavour) -> Option<Kernel> {
    let dir = root.join(line_dir(line, flavour));
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let release = name.strip_prefix("vmlinuz-")?.to_owned();
            (line_of(&release) == Some(line) && flavour.is_of(&release)).then(|| Kernel {
                vmlinuz: e.path(),
                release,
            })
        })
        .max_by_key(|k| version_key(&k.release))
}

/// The newest image package of `flavour` of each line the index has.
fn available(apt: &Apt, flavour: Flavour) -> Result<Vec<(Line, String)>> {
    let names = apt.search_names(&format!(
        r"^linux-(image|binary)-[0-9]+\.[0-9]+\.[0-9]+\+deb[0-9]+-{}(-unsigned)?$",
        flavour.suffix()
    ))?;
    let mut newest: std::collections::BTreeMap<Line, String> = Default::default();
    for pkg in names {
        let Some(release) = release_of_package(&pkg, flavour) else {
            continue;
        };
        let Some(line) = line_of(release) else {
            continue;
        };
        let better = newest.get(&line).is_none_or(|cur| {
            version_key(release_of_package(cur, flavour).unwrap_or_default()) < version_key(release)
        });
        if better {
            newest.insert(line, pkg);
        }
    }
    Ok(newest.into_iter().collect())
}

/// The Debian kernel `wanted` names, downloading it on first use.
pub fn ensure(wanted: Wanted) -> Result<Kernel> {
    let root = cache_root()?;
    let (cached_line, flavour) = match wanted {
        Wanted::Line(line, flavour) => (Some(line), flavour),
        Wanted::Newest => (None, Flavour::Cloud),
    };
    if let Some(k) = cached_line.and_then(|l| cached(&root, l, flavour)) {
        return Ok(k);
    }
    let apt = Apt::open()?;
    // Another run may have fetched it while we waited for the lock.
    if let Some(k) = cached_line.and_then(|l| cached(&root, l, flavour)) {
        return Ok(k);
    }
    apt.update()?;
    let lines = available(&apt, flavour)?;
    let served: Vec<String> = lines
        .iter()
        .filter(|(l, _)| (l.0, l.1) >= OLDEST)
        .map(|(l, _)| l.to_string())
        .collect();
    let (line, pkg) = match wanted {
        Wanted::Newest => lines.last().cloned(),
        Wanted::Line(line, _) => lines.iter().find(|(l, _)| *l == line).cloned(),
    }
    .with_context(|| {
        format!(
            "Debian serves no {} kernel for {} (lines it serves: {})",
            flavour.suffix(),
            match wanted {
                Wanted::Line(l, _) => format!("line {l}"),
                Wanted::Newest => "any line".into(),
            },
            if served.is_empty() {
                "none".into()
            } else {
                served.join(", ")
            }
        )
    })?;
    if let Some(k) = cached(&root, line, flavour).filter(|k| pkg.contains(&k.release)) {
        return Ok(k);
    }
    download(&apt, &root, &line_dir(line, flavour), &pkg)
}

/// Downloads `pkg` and moves its vmlinuz into the cache with one rename.
fn download(apt: &Apt, root: &Path, dir: &str, pkg: &str) -> Result<Kernel> {
    let dest = root.join(dir);
    std::fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
    eprintln!(
        "kernel: downloading {pkg} (once; cached in {})",
        dest.display()
    );
    let work = cache::TempDir::new(root.join(format!(".download-{}", std::process::id())))?;
    let deb = apt.download(pkg, work.path())?;
    let tree = work.path().join("root");
    setup::run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))
        .with_context(|| format!("extracting {}", deb.display()))?;
    let (vmlinuz, release) = find_vmlinuz(&tree)
        .with_context(|| format!("{pkg} has no /boot/vmlinuz-* nor /usr/lib/modules/*/vmlinuz"))?;
    let target = dest.join(format!("vmlinuz-{release}"));
    std::fs::rename(&vmlinuz, &target)
        .with_context(|| format!("moving the kernel to {}", target.display()))?;
    Ok(Kernel {
        vmlinuz: target,
        release,
    })
}

/// 6.12, 7.0 and 7.1 ship `/boot/vmlinuz-RELEASE`; 7.2 and 7.3
/// `/usr/lib/modules/RELEASE/vmlinuz`.
fn find_vmlinuz(tree: &Path) -> Option<(PathBuf, String)> {
    let boot = std::fs::read_dir(tree.join("boot")).into_iter().flatten();
    for e in boot.filter_map(Result::ok) {
        if let Some(release) = e
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("vmlinuz-"))
        {
            return Some((e.path(), release.to_owned()));
        }
    }
    let modules = std::fs::read_dir(tree.join("usr/lib/modules"))
        .into_iter()
        .flatten();
    for e in modules.filter_map(Result::ok) {
        let image = e.path().join("vmlinuz");
        if image.is_file() {
            return Some((image, e.file_name().to_string_lossy().into_owned()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_and_old_ones_are_refused() {
        assert_eq!(
            Wanted::parse("7.3").unwrap(),
            Wanted::Line(Line(7, 3), Flavour::Cloud)
        );
        assert_eq!(
            Wanted::parse("6.12").unwrap(),
            Wanted::Line(Line(6, 12), Flavour::Cloud)
        );
        assert_eq!(
            Wanted::parse("7.3-rt").unwrap(),
            Wanted::Line(Line(7, 3), Flavour::Rt)
        );
        assert_eq!(
            Wanted::parse("6.12-generic").unwrap(),
            Wanted::Line(Line(6, 12), Flavour::Generic)
        );
        let flavour = Wanted::parse("7.3-cloud").unwrap_err().to_string();
        assert!(flavour.contains("no flavour `cloud`"), "{flavour}");
        assert_eq!(Wanted::parse("newest").unwrap(), Wanted::Newest);
        let old = Wanted::parse("5.10").unwrap_err().to_string();
        assert!(old.contains("no FUSE passthrough"), "{old}");
        assert!(Wanted::parse("seven").is_err());
        assert!(Wanted::parse("7").is_err());
    }

    #[test]
    fn image_packages_are_recognised() {
        use Flavour::*;
        assert_eq!(
            release_of_package("linux-image-6.12.118+deb12-cloud-amd64-unsigned", Cloud),
            Some("6.12.118+deb12-cloud-amd64")
        );
        assert_eq!(
            release_of_package("linux-binary-7.3.4+deb13-cloud-amd64", Cloud),
            Some("7.3.4+deb13-cloud-amd64")
        );
        // The signed meta and debug packages are not images.
        assert_eq!(
            release_of_package("linux-image-7.3.4+deb13-cloud-amd64", Cloud),
            None
        );
        assert_eq!(
            release_of_package("linux-image-7.2.13+deb14-cloud-amd64-dbg", Cloud),
            None
        );
        assert!(version_key("6.12.118+deb12") > version_key("6.12.99+deb13"));
        // Each flavour is its own: generic's `amd64` is not cloud's or rt's.
        assert_eq!(
            release_of_package("linux-image-6.12.118+deb12-rt-amd64-unsigned", Rt),
            Some("6.12.118+deb12-rt-amd64")
        );
        assert_eq!(
            release_of_package("linux-binary-7.3.4+deb13-rt-amd64", Rt),
            Some("7.3.4+deb13-rt-amd64")
        );
        assert_eq!(
            release_of_package("linux-binary-7.3.4+deb13-amd64", Generic),
            Some("7.3.4+deb13-amd64")
        );
        for (pkg, not) in [
            ("linux-binary-7.3.4+deb13-rt-amd64", Generic),
            ("linux-binary-7.3.4+deb13-cloud-amd64", Generic),
            ("linux-binary-7.3.4+deb13-amd64", Rt),
            ("linux-binary-7.3.4+deb13-rt-amd64", Cloud),
        ] {
            assert_eq!(release_of_package(pkg, not), None, "{pkg} is not {not:?}");
        }
        assert_eq!(line_dir(Line(7, 3), Rt), "7.3-rt");
        assert_eq!(line_dir(Line(6, 12), Cloud), "6.12");
    }
}

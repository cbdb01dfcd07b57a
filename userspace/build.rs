//! Builds the eBPF programs (probes-ebpf) with aya-build and leaves the object
//! in OUT_DIR for `include_bytes_aligned!`.
//!
//! aya-build needs `bpf-linker` on PATH. `cargo xtask setup` builds it into the
//! fuselock cache; we put that directory on PATH so a plain `cargo build`
//! works after setup without touching the user's shell.
//!
//! It also stamps what `fuselock --version` reports, so a bug report names
//! exactly what ran: the git commit and a hash of the embedded eBPF object.
use std::{env, fs, path::PathBuf, process::Command};

use sha2::{Digest as _, Sha256};

use anyhow::{bail, Context as _};

/// The eBPF programs' pinned nightly, from the workspace's
/// `toolchains.toml` (xtask reads the same file).
fn ebpf_nightly(workspace: &std::path::Path) -> anyhow::Result<String> {
    let file = workspace.join("toolchains.toml");
    println!("cargo:rerun-if-changed={}", file.display());
    let text = fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .find_map(|line| {
            let value = line.trim().strip_prefix("ebpf")?.trim_start();
            let value = value.strip_prefix('=')?.trim();
            Some(value.strip_prefix('"')?.strip_suffix('"')?.to_owned())
        })
        .with_context(|| format!("{} names no ebpf toolchain", file.display()))
}

/// Where `cargo xtask setup` builds bpf-linker for `nightly`:
/// `bpf-linker-VERSION+NIGHTLY/bin` in the fuselock cache.
fn bpf_linker_dirs(nightly: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = env::var_os("FUSELOCK_TOOLS_DIR") {
        dirs.push(PathBuf::from(dir).join("bin"));
    }
    // The same cache directory `cargo xtask` uses (xtask/src/cache.rs).
    let cache = env::var_os("FUSELOCK_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|c| c.join("fuselock"))
        });
    let suffix = format!("+{nightly}");
    if let Some(entries) = cache.and_then(|c| fs::read_dir(c).ok()) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("bpf-linker-") && name.ends_with(&suffix) {
                dirs.push(entry.path().join("bin"));
            }
        }
    }
    dirs
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=FUSELOCK_TOOLS_DIR");
    println!("cargo:rerun-if-env-changed=FUSELOCK_CACHE");
    let workspace = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("..");
    let ebpf_dir = workspace.join("probes-ebpf");
    let nightly = ebpf_nightly(&workspace)?;
    let path = env::var_os("PATH").unwrap_or_default();
    // The cache's bpf-linker first: it is built against the pinned nightly's
    // LLVM, which one found on PATH may not be.
    let mut search: Vec<PathBuf> = bpf_linker_dirs(&nightly);
    search.extend(env::split_paths(&path));
    let found = search.iter().any(|d| d.join("bpf-linker").is_file());
    if !found && env::var_os("AYA_BUILD_SKIP").is_none() {
        bail!(
            "bpf-linker for {nightly} not found in the fuselock cache or on PATH; run `cargo xtask setup` first"
        );
    }
    env::set_var("PATH", env::join_paths(search).context("PATH")?);

    let ebpf_dir = ebpf_dir
        .to_str()
        .context("non-UTF-8 path to probes-ebpf")?
        .to_owned();
    println!("cargo:rerun-if-changed=../probes-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "probes-ebpf",
            root_dir: &ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&nightly),
    )?;
    stamp_version()
}

/// Sets `FUSELOCK_VERSION` (what `--version` prints) and
/// `FUSELOCK_EBPF_SHA256`. `FUSELOCK_GIT_COMMIT` in the environment names the
/// commit where git cannot (a build from a source tarball).
fn stamp_version() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=FUSELOCK_GIT_COMMIT");
    let commit = match env::var("FUSELOCK_GIT_COMMIT") {
        Ok(commit) => format!("commit {commit}"),
        Err(_) => {
            git_commit().map_or_else(|| "unknown commit".to_owned(), |c| format!("commit {c}"))
        }
    };

    // The very file probes.rs embeds with include_bytes_aligned!.
    let object = PathBuf::from(env::var("OUT_DIR")?).join("fuselock-probes");
    let bytes = match fs::read(&object) {
        Ok(bytes) => bytes,
        // AYA_BUILD_SKIP (clippy without bpf-linker) leaves no object.
        Err(_) if env::var_os("AYA_BUILD_SKIP").is_some() => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", object.display())),
    };
    let digest = Sha256::digest(&bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=FUSELOCK_EBPF_SHA256={hex}");
    println!(
        "cargo:rustc-env=FUSELOCK_VERSION={} ({commit}, eBPF object sha256 {})",
        env::var("CARGO_PKG_VERSION")?,
        &hex[..12]
    );
    Ok(())
}

/// The checkout's commit (12 hex digits), or `None` outside a git checkout (a
/// source tarball) or without git. No `-dirty` mark: this script does not
/// rerun on every source edit, so such a mark would go stale.
fn git_commit() -> Option<String> {
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").ok()?;
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(&manifest_dir)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    // Rebuild when HEAD moves: HEAD itself (a checkout) and the branch it
    // names (a commit), wherever this worktree keeps them.
    if let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={p}");
    }
    // A missing path would make cargo rerun this script on every build.
    let mut refs = vec!["packed-refs".to_owned()];
    refs.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for r in &refs {
        if let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", r]) {
            if PathBuf::from(&p).exists() {
                println!("cargo:rerun-if-changed={p}");
            }
        }
    }
    Some(commit)
}

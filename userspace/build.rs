//! Builds the eBPF programs (probes-ebpf) with aya-build and leaves the object
//! in OUT_DIR for `include_bytes_aligned!`.
//!
//! aya-build needs `bpf-linker` on PATH. `cargo xtask setup` builds it into the
//! fuselock cache; we put that directory on PATH so a plain `cargo build`
//! works after setup without touching the user's shell.
use std::{env, path::PathBuf};

use anyhow::{bail, Context as _};

fn bpf_linker_dirs() -> Vec<PathBuf> {
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
    if let Some(cache) = cache {
        dirs.push(cache.join("bpf-linker-0.13.0").join("bin"));
    }
    dirs
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=FUSELOCK_TOOLS_DIR");
    println!("cargo:rerun-if-env-changed=FUSELOCK_CACHE");
    let path = env::var_os("PATH").unwrap_or_default();
    let mut search: Vec<PathBuf> = env::split_paths(&path).collect();
    search.extend(bpf_linker_dirs());
    let found = search.iter().any(|d| d.join("bpf-linker").is_file());
    if !found && env::var_os("AYA_BUILD_SKIP").is_none() {
        bail!(
            "bpf-linker not found on PATH or in the fuselock cache; run `cargo xtask setup` first"
        );
    }
    env::set_var("PATH", env::join_paths(search).context("PATH")?);

    let ebpf_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../probes-ebpf");
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
        aya_build::Toolchain::default(),
    )
}

//! The cache outside the checkout: downloaded kernels and built tools survive
//! fresh clones, and a fresh machine fills it once.

use std::{
    env,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// `$FUSELOCK_CACHE`, else `$XDG_CACHE_HOME/fuselock`, else `~/.cache/fuselock`.
pub fn dir() -> Result<PathBuf> {
    let dir = if let Some(d) = env::var_os("FUSELOCK_CACHE") {
        PathBuf::from(d)
    } else if let Some(d) = env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(d).join("fuselock")
    } else {
        PathBuf::from(env::var_os("HOME").context("HOME is not set")?).join(".cache/fuselock")
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating cache {}", dir.display()))?;
    Ok(dir)
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A scratch directory removed when dropped, whether the work in it (a
/// download, say) succeeded or not: results leave it by one rename.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `path` afresh (a leftover of an interrupted run is removed).
    pub fn new(path: PathBuf) -> Result<TempDir> {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

//! A file's identity and change marks, read without opening it: what the
//! web config's reload compares.

use std::{os::unix::fs::MetadataExt as _, path::PathBuf};

/// What identifies a file's contents without reading it. A Kubernetes
/// secret update swaps a symlink: following it changes the inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stamp {
    File {
        dev: u64,
        ino: u64,
        size: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
    },
    Missing(std::io::ErrorKind),
}

pub fn stamps(files: &[PathBuf]) -> Vec<Stamp> {
    files
        .iter()
        .map(|f| match std::fs::metadata(f) {
            Ok(m) => Stamp::File {
                dev: m.dev(),
                ino: m.ino(),
                size: m.size(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
            },
            Err(e) => Stamp::Missing(e.kind()),
        })
        .collect()
}

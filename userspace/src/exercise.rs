//! `verify --exercise FILE`: a short workload that gives the verdict
//! something to decide on, and leaves the file as it found it.
//!
//! The overwrites write each block's own original bytes back, so the
//! contents never change even if the run is interrupted; the writes that
//! extend the file (an append and one past EOF) are undone by truncating to
//! the original size at the end.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{bail, Context as _, Result};

use crate::UsageError;

fn usage(msg: String) -> anyhow::Error {
    UsageError(msg).into()
}

const BLOCK: usize = 4096;
/// Blocks overwritten (the region the file is at least made to cover).
const REGION_BLOCKS: usize = 16;
pub const THREADS: usize = 4;
pub const OVERWRITES_PER_THREAD: usize = 64;
/// `FUSE_SUPER_MAGIC` (`include/uapi/linux/magic.h`).
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// What was issued, for the record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExerciseReport {
    pub direct_overwrites: u64,
    pub buffered_overwrites: u64,
    pub appends: u64,
    pub past_eof: u64,
}

/// A file that looks like it can be exercised: exists, is regular, on FUSE.
/// Whether it is *passthrough* only the kernel can tell; `verify` checks
/// which path its writes took afterwards.
pub fn check_target(path: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(path)
        .map_err(|e| usage(format!("--exercise {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(usage(format!(
            "--exercise {}: not a regular file; name a file on a FUSE passthrough mount",
            path.display()
        )));
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .with_context(|| format!("--exercise {}: path contains a NUL byte", path.display()))?;
    // SAFETY: statfs(2) with a valid C string and a zeroed out-struct.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut fs) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    if fs.f_type as i64 != FUSE_SUPER_MAGIC {
        return Err(usage(format!(
            "--exercise {}: not on a FUSE file system (f_type {:#x}); name a file on a FUSE passthrough mount",
            path.display(),
            fs.f_type
        )));
    }
    Ok(path.to_path_buf())
}

/// A 4096-aligned buffer (O_DIRECT needs aligned memory).
struct Aligned {
    storage: Vec<u8>,
    offset: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let storage = vec![0u8; len + BLOCK];
        let offset = storage.as_ptr().align_offset(BLOCK).min(BLOCK);
        Aligned {
            storage,
            offset,
            len,
        }
    }
    fn as_slice(&self) -> &[u8] {
        &self.storage[self.offset..self.offset + self.len]
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.offset..self.offset + self.len]
    }
}

fn direct_writer(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| {
            format!(
                "opening {} with O_DIRECT (does the file system support O_DIRECT?)",
                path.display()
            )
        })
}

fn write_exact_once(file: &File, buf: &[u8], offset: u64, what: &str) -> Result<()> {
    let n = file
        .write_at(buf, offset)
        .with_context(|| format!("{what} at offset {offset}"))?;
    if n != buf.len() {
        bail!(
            "{what} at offset {offset}: short write ({n} of {} bytes)",
            buf.len()
        );
    }
    Ok(())
}

/// Runs the workload; `progress(done, total)` is called as writes complete.
pub fn run(path: &Path, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<ExerciseReport> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {} for reading and writing", path.display()))?;
    let original_size = file.metadata()?.len();
    let region = (REGION_BLOCKS * BLOCK) as u64;
    if original_size < region {
        // Overwrites must land inside EOF: grow the file (zeros), undone below.
        file.set_len(region)
            .context("growing the file for the overwrite region")?;
    }
    let result = exercise(path, &file, progress);
    let restore = file
        .set_len(original_size)
        .context("restoring the file's original size");
    let report = result?;
    restore?;
    Ok(report)
}

fn exercise(
    path: &Path,
    file: &File,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<ExerciseReport> {
    let mut original = Aligned::new(REGION_BLOCKS * BLOCK);
    file.read_exact_at(original.as_mut_slice(), 0)
        .context("reading the overwrite region")?;
    let original = original;
    let total = (THREADS * OVERWRITES_PER_THREAD + 3) as u64;
    let done = AtomicU64::new(0);

    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let original = &original;
                let done = &done;
                scope.spawn(move || -> Result<()> {
                    let f = direct_writer(path)?;
                    let mut block = Aligned::new(BLOCK);
                    for i in 0..OVERWRITES_PER_THREAD {
                        let b = (t + i * THREADS) % REGION_BLOCKS;
                        block
                            .as_mut_slice()
                            .copy_from_slice(&original.as_slice()[b * BLOCK..(b + 1) * BLOCK]);
                        write_exact_once(
                            &f,
                            block.as_slice(),
                            (b * BLOCK) as u64,
                            "O_DIRECT overwrite",
                        )?;
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_multiple_of(64) {
                            progress(n, total);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("an exercise thread panicked"))??;
        }
        Ok(())
    })?;

    // One write of each other kind, each with one reason of its own where
    // possible: buffered overwrite, append, O_DIRECT past EOF.
    write_exact_once(file, &original.as_slice()[..BLOCK], 0, "buffered overwrite")?;
    let appender = OpenOptions::new()
        .append(true)
        .open(path)
        .context("opening for append")?;
    // One write(2), no retry: exactness matters more than convenience.
    let n = io::Write::write(&mut &appender, &original.as_slice()[..BLOCK]).context("append")?;
    if n != BLOCK {
        bail!("append: short write ({n} of {BLOCK} bytes)");
    }
    let size = file.metadata()?.len();
    let past = size.div_ceil(BLOCK as u64) * BLOCK as u64 + BLOCK as u64;
    let mut block = Aligned::new(BLOCK);
    block
        .as_mut_slice()
        .copy_from_slice(&original.as_slice()[..BLOCK]);
    write_exact_once(
        &direct_writer(path)?,
        block.as_slice(),
        past,
        "O_DIRECT write past EOF",
    )?;
    progress(total, total);
    Ok(ExerciseReport {
        direct_overwrites: (THREADS * OVERWRITES_PER_THREAD) as u64,
        buffered_overwrites: 1,
        appends: 1,
        past_eof: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_files_not_on_fuse() {
        let dir = std::env::temp_dir().join(format!("fuselock-exercise-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("f");
        std::fs::write(&f, b"x").expect("write");
        let err = check_target(&f).expect_err("tmp is not FUSE");
        assert!(
            format!("{err:#}").contains("not on a FUSE file system"),
            "{err:#}"
        );
        let err = check_target(&dir).expect_err("a directory");
        assert!(format!("{err:#}").contains("not a regular file"), "{err:#}");
        let err = check_target(&dir.join("missing")).expect_err("missing");
        assert!(format!("{err:#}").contains("No such file"), "{err:#}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn aligned_buffers_are_aligned() {
        let b = Aligned::new(BLOCK);
        assert_eq!(b.as_slice().as_ptr() as usize % BLOCK, 0);
        assert_eq!(b.as_slice().len(), BLOCK);
    }
}

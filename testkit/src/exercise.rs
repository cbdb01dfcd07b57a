//! `verify --exercise PATH`: a short workload that gives the verdict
//! something to decide on, written to a scratch file of fuselock's own.
//!
//! It never writes to a file of the user's: applications may be writing to
//! it at the same moment, and no restore after the fact can be both exact
//! and race-free. Instead it creates `.fuselock-exercise.<pidns>.<pid>` with
//! `O_EXCL` in the named directory (or the named file's), on the same mount,
//! so the same server opens it, and removes it at the end, when interrupted,
//! and, if fuselock was killed, at the next run. Everything after the one
//! lookup of the directory goes through its descriptor (`openat` with
//! `O_NOFOLLOW`, `fstatfs`), so renaming a path component half-way cannot
//! redirect the writes anywhere else.

use std::{
    ffi::{CStr, CString, OsStr},
    fs::File,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::FileExt as _},
    },
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use anyhow::{bail, Context as _, Result};

use fuselock_base::{escape, procfs, UsageError};

use crate::{aligned::AlignedBuf, fs_type, FUSE_SUPER_MAGIC};

fn usage(msg: String) -> anyhow::Error {
    UsageError(msg).into()
}

const BLOCK: usize = 4096;
/// Blocks overwritten (the scratch file is made to cover them first).
const REGION_BLOCKS: usize = 16;
pub const THREADS: usize = 4;
pub const OVERWRITES_PER_THREAD: usize = 64;
const SCRATCH_PREFIX: &str = ".fuselock-exercise.";

/// What was issued, for the record.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExerciseReport {
    pub direct_overwrites: u64,
    pub buffered_overwrites: u64,
    pub appends: u64,
    pub past_eof: u64,
    /// The scratch file the writes went to (removed since).
    pub scratch_file: PathBuf,
    /// Its device and inode, to find its counts.
    #[serde(skip)]
    pub scratch_dev: u64,
    #[serde(skip)]
    pub scratch_ino: u64,
}

/// Where to exercise: a directory on a FUSE mount, held open, and the file
/// the user named in it, if they named a file.
pub struct Target {
    dir: OwnedFd,
    dir_path: PathBuf,
    /// The user's file (its name in `dir`): opened read-only once, so that
    /// its open flags can be set beside the scratch file's.
    pub named_file: Option<PathBuf>,
}

fn c_name(name: &OsStr) -> Result<CString> {
    CString::new(name.as_bytes()).context("a file name contains a NUL byte")
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open(2) with a valid C string; the fd is owned at once.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn openat(dir: &OwnedFd, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
    // SAFETY: openat(2) on a live directory descriptor with a valid C string.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Checks `path` (a FUSE directory, or a regular file in one) and holds its
/// directory open. Whether the mount is *passthrough* only the kernel can
/// tell; `verify` checks which path the writes took afterwards.
pub fn check_target(path: &Path) -> Result<Target> {
    let shown = escape::path(path);
    let meta = std::fs::metadata(path).map_err(|e| usage(format!("--exercise {shown}: {e}")))?;
    let (dir_path, named_file) = if meta.is_dir() {
        (path.to_path_buf(), None)
    } else if meta.is_file() {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        (parent, Some(path.to_path_buf()))
    } else {
        return Err(usage(format!(
            "--exercise {shown}: neither a regular file nor a directory; name a directory (or a \
             file) on a FUSE passthrough mount"
        )));
    };
    let dir = open_dir(&dir_path)
        .map_err(|e| usage(format!("--exercise {}: {e}", escape::path(&dir_path))))?;
    let f_type = fs_type(&dir).with_context(|| format!("fstatfs {}", escape::path(&dir_path)))?;
    if f_type != FUSE_SUPER_MAGIC {
        return Err(usage(format!(
            "--exercise {shown}: not on a FUSE file system (f_type {f_type:#x}); name a directory \
             (or a file) on a FUSE passthrough mount"
        )));
    }
    Ok(Target {
        dir,
        dir_path,
        named_file,
    })
}

fn scratch_name(pidns: u64, pid: u32) -> String {
    format!("{SCRATCH_PREFIX}{pidns}.{pid}")
}

/// Whether a scratch file named `name` was left by a process of namespace
/// `pidns` that no longer exists.
fn is_stale(name: &str, pidns: u64, alive: impl Fn(u32) -> bool) -> bool {
    let Some(rest) = name.strip_prefix(SCRATCH_PREFIX) else {
        return false;
    };
    let Some((ns, pid)) = rest.split_once('.') else {
        return false;
    };
    match (ns.parse::<u64>(), pid.parse::<u32>()) {
        (Ok(ns), Ok(pid)) => ns == pidns && !alive(pid),
        _ => false,
    }
}

/// The scratch file, removed when dropped.
struct Scratch<'a> {
    target: &'a Target,
    name: CString,
    display: PathBuf,
}

impl<'a> Scratch<'a> {
    /// Removes scratch files that killed fuselocks left, then creates ours.
    fn create(target: &'a Target) -> Result<(Scratch<'a>, File)> {
        let pidns = procfs::my_pid_namespace();
        remove_stale(target, pidns);
        let name = scratch_name(pidns, std::process::id());
        let display = target.dir_path.join(&name);
        let c = c_name(OsStr::new(&name))?;
        let file = openat(
            &target.dir,
            &c,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
            0o600,
        )
        .with_context(|| format!("creating the scratch file {}", escape::path(&display)))?;
        Ok((
            Scratch {
                target,
                name: c,
                display,
            },
            file,
        ))
    }

    fn open(&self, flags: libc::c_int) -> Result<File> {
        openat(&self.target.dir, &self.name, flags, 0).with_context(|| {
            format!(
                "opening {} (flags {flags:#o}; does the file system support O_DIRECT?)",
                escape::path(&self.display)
            )
        })
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        // SAFETY: unlinkat(2) on a live directory descriptor with a valid C string.
        if unsafe { libc::unlinkat(self.target.dir.as_raw_fd(), self.name.as_ptr(), 0) } != 0 {
            log::warn!(
                "cannot remove the scratch file {}: {}",
                escape::path(&self.display),
                io::Error::last_os_error()
            );
        }
    }
}

fn remove_stale(target: &Target, pidns: u64) {
    let Ok(entries) = std::fs::read_dir(&target.dir_path) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(text) = name.to_str() else { continue };
        if !is_stale(text, pidns, procfs::alive) {
            continue;
        }
        let Ok(c) = c_name(&name) else { continue };
        // SAFETY: unlinkat(2) on a live directory descriptor with a valid C string.
        if unsafe { libc::unlinkat(target.dir.as_raw_fd(), c.as_ptr(), 0) } == 0 {
            eprintln!(
                "verify: removed {}, left by a fuselock that was killed",
                escape::path(&target.dir_path.join(&name))
            );
        }
    }
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

fn check_cancel(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs the workload on a new scratch file in `target`'s directory and
/// removes it; `progress(done, total)` is called as writes complete, and
/// `cancel` stops it early (the file is removed all the same).
pub fn run(
    target: &Target,
    cancel: &AtomicBool,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<ExerciseReport> {
    if let Some(named) = &target.named_file {
        // Read-only, never written: its open flags are the evidence that the
        // scratch file stands for it.
        let name = named.file_name().context("the named file has no name")?;
        let _ = openat(&target.dir, &c_name(name)?, libc::O_RDONLY, 0)
            .with_context(|| format!("opening {} read-only", escape::path(named)))?;
    }
    let (scratch, file) = Scratch::create(target)?;
    eprintln!(
        "verify: exercising the scratch file {} (removed afterwards)",
        escape::path(&scratch.display)
    );
    if fs_type(&file)? != FUSE_SUPER_MAGIC {
        bail!("the scratch file is not on FUSE: the directory was replaced");
    }
    // Overwrites must land inside EOF.
    file.set_len((REGION_BLOCKS * BLOCK) as u64)
        .context("sizing the scratch file")?;
    exercise(&scratch, &file, cancel, progress)
}

fn exercise(
    scratch: &Scratch<'_>,
    file: &File,
    cancel: &AtomicBool,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<ExerciseReport> {
    let total = (THREADS * OVERWRITES_PER_THREAD + 3) as u64;
    let done = AtomicU64::new(0);
    let block = AlignedBuf::new(BLOCK, b'f')?;

    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (done, block) = (&done, &block);
                scope.spawn(move || -> Result<()> {
                    let f = scratch.open(libc::O_WRONLY | libc::O_DIRECT)?;
                    for i in 0..OVERWRITES_PER_THREAD {
                        check_cancel(cancel)?;
                        let b = (t + i * THREADS) % REGION_BLOCKS;
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
    check_cancel(cancel)?;
    write_exact_once(file, block.as_slice(), 0, "buffered overwrite")?;
    let appender = scratch.open(libc::O_WRONLY | libc::O_APPEND)?;
    // One write(2), no retry: exactness matters more than convenience.
    let n = io::Write::write(&mut &appender, block.as_slice()).context("append")?;
    if n != BLOCK {
        bail!("append: short write ({n} of {BLOCK} bytes)");
    }
    let size = file.metadata()?.len();
    let past = size.div_ceil(BLOCK as u64) * BLOCK as u64 + BLOCK as u64;
    write_exact_once(
        &scratch.open(libc::O_WRONLY | libc::O_DIRECT)?,
        block.as_slice(),
        past,
        "O_DIRECT write past EOF",
    )?;
    progress(total, total);
    let meta = file.metadata().context("stat of the scratch file")?;
    Ok(ExerciseReport {
        scratch_dev: std::os::unix::fs::MetadataExt::dev(&meta),
        scratch_ino: std::os::unix::fs::MetadataExt::ino(&meta),
        direct_overwrites: (THREADS * OVERWRITES_PER_THREAD) as u64,
        buffered_overwrites: 1,
        appends: 1,
        past_eof: 1,
        scratch_file: scratch.display.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_paths_not_on_fuse() {
        let dir = std::env::temp_dir().join(format!("fuselock-exercise-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("f");
        std::fs::write(&f, b"x").expect("write");
        for target in [&f, &dir] {
            let err = check_target(target).err().expect("tmp is not FUSE");
            assert!(
                format!("{err:#}").contains("not on a FUSE file system"),
                "{err:#}"
            );
        }
        let err = check_target(Path::new("/dev/null"))
            .err()
            .expect("a device");
        assert!(
            format!("{err:#}").contains("neither a regular file nor a directory"),
            "{err:#}"
        );
        let err = check_target(&dir.join("missing")).err().expect("missing");
        assert!(format!("{err:#}").contains("No such file"), "{err:#}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn only_dead_processes_of_our_namespace_leave_stale_files() {
        let dead = |_| false;
        let alive = |_| true;
        assert!(is_stale(
            ".fuselock-exercise.4026531836.77",
            4026531836,
            dead
        ));
        assert!(!is_stale(
            ".fuselock-exercise.4026531836.77",
            4026531836,
            alive
        ));
        // Another namespace's pid means nothing here: left alone.
        assert!(!is_stale(
            ".fuselock-exercise.4026532000.77",
            4026531836,
            dead
        ));
        for other in [
            "data",
            ".fuselock-exercise.",
            ".fuselock-exercise.x.1",
            ".fuselock-exercise.1",
        ] {
            assert!(!is_stale(other, 1, dead), "{other}");
        }
        assert_eq!(scratch_name(5, 9), ".fuselock-exercise.5.9");
    }
}

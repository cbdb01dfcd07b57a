//! `verify --exercise PATH`: a short workload that gives the verdict
//! something to decide on, written to a scratch file of fuselock's own.
//!
//! It never writes to a file of the user's: applications may be writing to
//! it at the same moment, and no restore after the fact can be both exact
//! and race-free. Instead it creates `.fuselock-exercise.<pidns>.<pid>` with
//! `O_EXCL` in the named directory (or the named file's), on the same mount,
//! so the same server opens it, and removes it at the end, when interrupted,
//! and, if fuselock was killed, at the next run.
//!
//! The directory is looked up once and held open; the scratch file is
//! created beneath that descriptor (`openat`, `O_NOFOLLOW`) and every later
//! open of it goes through the descriptor that created it
//! (`/proc/self/fd`), never through its name: anyone who may write to the
//! directory can rename another file to that name, and that file is then
//! neither written nor (the name is checked first) removed.

use std::{
    ffi::{CStr, CString, OsStr},
    fs::{File, Metadata},
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{
            ffi::OsStrExt as _,
            fs::{FileExt as _, FileTypeExt as _, MetadataExt as _},
        },
    },
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use anyhow::{bail, Context as _, Result};

use fuselock_base::{escape, procfs, UsageError};

use crate::{
    aligned::AlignedBuf,
    fd::{self, Identity},
    fs_type, FUSE_SUPER_MAGIC,
};

fn usage(msg: String) -> anyhow::Error {
    UsageError(msg).into()
}

const BLOCK: usize = 4096;
/// Blocks overwritten (the scratch file is made to cover them first).
const REGION_BLOCKS: usize = 16;
pub const THREADS: usize = 4;
pub const OVERWRITES_PER_THREAD: usize = 64;
const SCRATCH_PREFIX: &str = ".fuselock-exercise.";
/// Most directory entries the sweep for stale scratch files reads: a FUSE
/// server can list entries without end.
const SWEEP_MAX_ENTRIES: usize = 100_000;

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

/// What a file that is not a regular one is, for a message.
fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// Opens the user's file read-only, once, and never writes to it: its open
/// flags are the evidence that the scratch file stands for it.
///
/// `check_target` looked at it by path; it may have been replaced since. It
/// is looked up again with `O_PATH | O_NOFOLLOW`, which opens nothing in the
/// file system's sense (a FIFO put in its place cannot block root's
/// `verify`), its type is checked on that descriptor, and the read-only open
/// goes through that descriptor, to the file checked.
fn open_named(target: &Target, named: &Path) -> Result<File> {
    let shown = escape::path(named);
    let name = named
        .file_name()
        .with_context(|| format!("--exercise {shown} names no file"))?;
    let found = fd::openat(&target.dir, &c_name(name)?, libc::O_PATH, 0)
        .map_err(|e| usage(format!("--exercise {shown}: {e}")))?;
    let meta = found.metadata().with_context(|| format!("stat {shown}"))?;
    if !meta.is_file() {
        return Err(usage(format!(
            "--exercise {shown}: not a regular file any more ({}); name a regular file or a \
             directory on a FUSE passthrough mount",
            kind_of(&meta)
        )));
    }
    fd::reopen(&found, libc::O_RDONLY).with_context(|| format!("opening {shown} read-only"))
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

/// `unlinkat(2)` of `name` in `dir`.
fn unlink_at(dir: &OwnedFd, name: &CStr) -> io::Result<()> {
    // SAFETY: unlinkat(2) on a live directory descriptor with a valid C string.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The scratch file, held open from its creation, and its name removed
/// when dropped (if it is still its name).
struct Scratch<'a> {
    target: &'a Target,
    name: CString,
    display: PathBuf,
    /// The descriptor that created it: every other open goes through it.
    file: File,
    id: Identity,
}

impl<'a> Scratch<'a> {
    /// Removes scratch files that killed fuselocks left, then creates ours.
    fn create(target: &'a Target) -> Result<Scratch<'a>> {
        let pidns = procfs::my_pid_namespace();
        remove_stale(target, pidns);
        Scratch::create_named(target, &scratch_name(pidns, std::process::id()))
    }

    fn create_named(target: &'a Target, name: &str) -> Result<Scratch<'a>> {
        let display = target.dir_path.join(name);
        let c = c_name(OsStr::new(name))?;
        let file = fd::openat(
            &target.dir,
            &c,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
            0o600,
        )
        .with_context(|| format!("creating the scratch file {}", escape::path(&display)))?;
        let id = Identity::of(&file)
            .with_context(|| format!("stat of the scratch file {}", escape::path(&display)))?;
        Ok(Scratch {
            target,
            name: c,
            display,
            file,
            id,
        })
    }

    /// Another descriptor of the scratch file, opened with `flags` through
    /// the one that created it: whatever its name refers to by now.
    fn open(&self, flags: libc::c_int) -> Result<File> {
        fd::reopen(&self.file, flags).with_context(|| {
            format!(
                "opening {} (flags {flags:#o}; does the file system support O_DIRECT?)",
                escape::path(&self.display)
            )
        })
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        // Unlinked only while the name is still the scratch file's: a file
        // renamed to it since is someone else's. (Whoever can rename files
        // here can also unlink them: the window between this check and the
        // unlink gives them nothing.)
        let shown = escape::path(&self.display);
        match fd::lstat_at(&self.target.dir, &self.name) {
            Ok(meta) if Identity::of_metadata(&meta) == self.id => {
                if let Err(e) = unlink_at(&self.target.dir, &self.name) {
                    log::warn!("cannot remove the scratch file {shown}: {e}");
                }
            }
            Ok(_) => log::warn!(
                "{shown} is no longer fuselock's scratch file (another file was renamed to its \
                 name): left alone"
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                log::warn!("the scratch file {shown} was removed or renamed by someone else");
            }
            Err(e) => log::warn!("cannot check the scratch file {shown} before removing it: {e}"),
        }
    }
}

/// How a sweep for stale scratch files ended.
#[derive(Debug)]
enum SweepEnd {
    /// Every entry read.
    Done,
    /// `limit` entries read and there were more.
    Limit,
    /// The listing failed part-way.
    Failed(io::Error),
}

/// What a sweep for stale scratch files did.
#[derive(Debug)]
struct Sweep {
    removed: Vec<CString>,
    /// Names of stale scratch files that were not files of ours.
    left: usize,
    read: usize,
    end: SweepEnd,
}

/// Removes, in `dir`, the scratch files of `pidns`'s dead processes: at
/// most `limit` entries are read. Read through the descriptor; a name is
/// removed only if it is a regular file with one link, owned by this
/// process's effective uid: anything else with such a name was not left by
/// fuselock.
fn sweep_stale(
    dir: &OwnedFd,
    pidns: u64,
    alive: impl Fn(u32) -> bool,
    limit: usize,
) -> io::Result<Sweep> {
    // SAFETY: geteuid(2) cannot fail.
    let me = unsafe { libc::geteuid() };
    let mut sweep = Sweep {
        removed: Vec::new(),
        left: 0,
        read: 0,
        end: SweepEnd::Done,
    };
    for entry in fd::Listing::of(dir)? {
        if sweep.read == limit {
            sweep.end = SweepEnd::Limit;
            break;
        }
        sweep.read += 1;
        let name = match entry {
            Ok(name) => name,
            Err(e) => {
                sweep.end = SweepEnd::Failed(e);
                break;
            }
        };
        let Ok(text) = name.to_str() else { continue };
        if !is_stale(text, pidns, &alive) {
            continue;
        }
        let ours =
            fd::lstat_at(dir, &name).is_ok_and(|m| m.is_file() && m.uid() == me && m.nlink() == 1);
        if !ours {
            sweep.left += 1;
            continue;
        }
        match unlink_at(dir, &name) {
            Ok(()) => sweep.removed.push(name),
            Err(e) => log::debug!("cannot remove the stale scratch file {text}: {e}"),
        }
    }
    Ok(sweep)
}

fn remove_stale(target: &Target, pidns: u64) {
    let shown = escape::path(&target.dir_path);
    let sweep = match sweep_stale(&target.dir, pidns, procfs::alive, SWEEP_MAX_ENTRIES) {
        Ok(sweep) => sweep,
        Err(e) => {
            log::debug!("cannot list {shown} for stale scratch files: {e}");
            return;
        }
    };
    for name in &sweep.removed {
        eprintln!(
            "verify: removed {}, left by a fuselock that was killed",
            escape::path(&target.dir_path.join(OsStr::from_bytes(name.as_bytes())))
        );
    }
    if sweep.left > 0 {
        log::warn!(
            "{shown}: left alone {} files named like stale scratch files that are not regular \
             files of uid {} with one link",
            sweep.left,
            // SAFETY: geteuid(2) cannot fail.
            unsafe { libc::geteuid() }
        );
    }
    match sweep.end {
        SweepEnd::Done => {}
        SweepEnd::Limit => log::warn!(
            "{shown}: stopped looking for stale scratch files after {} entries (a server may \
             list without end)",
            sweep.read
        ),
        SweepEnd::Failed(e) => log::debug!(
            "{shown}: listing for stale scratch files failed after {} entries: {e}",
            sweep.read
        ),
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
        drop(open_named(target, named)?);
    }
    let scratch = Scratch::create(target)?;
    eprintln!(
        "verify: exercising the scratch file {} (removed afterwards)",
        escape::path(&scratch.display)
    );
    if fs_type(&scratch.file)? != FUSE_SUPER_MAGIC {
        bail!("the scratch file is not on FUSE: the directory was replaced");
    }
    // Overwrites must land inside EOF.
    scratch
        .file
        .set_len((REGION_BLOCKS * BLOCK) as u64)
        .context("sizing the scratch file")?;
    exercise(&scratch, cancel, progress)
}

fn exercise(
    scratch: &Scratch<'_>,
    cancel: &AtomicBool,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<ExerciseReport> {
    let file = &scratch.file;
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
    Ok(ExerciseReport {
        scratch_dev: scratch.id.dev,
        scratch_ino: scratch.id.ino,
        direct_overwrites: (THREADS * OVERWRITES_PER_THREAD) as u64,
        buffered_overwrites: 1,
        appends: 1,
        past_eof: 1,
        scratch_file: scratch.display.clone(),
    })
}

#[cfg(test)]
mod tests;

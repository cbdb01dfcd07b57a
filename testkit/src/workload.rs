//! `fuselock load`: issues an exact number of writes of one kind to one file.
//!
//! The lock probes count writes in the kernel and the tests compare those counts with the
//! report from here, so exactness comes first: every counted write is exactly one `pwrite(2)`
//! (or `write(2)` for appends) of `block_size` bytes, never retried, and every write of a kind
//! really is of that kind when the kernel looks at it (inside EOF, at EOF for appends, or past
//! EOF), however the threads are scheduled.
//!
//! PATH is looked up once: its directory is opened and checked, the file is opened (or created)
//! beneath that descriptor, and every writer's descriptor is opened through the first one
//! (`/proc/self/fd`). Renaming another file to PATH half-way does not get that file written.

use std::ffi::CString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use fuselock_base::{escape, UsageError};

use crate::{aligned::AlignedBuf, fd};

mod execute;

use execute::execute;
#[cfg(test)]
use execute::{slot_offset, Tally};

/// `O_DIRECT` transfers must be multiples of the logical block size; 512 is the smallest.
const DIRECT_IO_UNIT: usize = 512;

/// Linux's `MAX_RW_COUNT`: a larger write would be cut short by the kernel.
const MAX_WRITE: usize = 0x7fff_f000;

/// How many blocks per thread the file gets for overwrites when `--file-size` is not given.
const DEFAULT_SLOTS_PER_THREAD: u64 = 16;

/// Which lock-relevant case each write exercises.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WriteKind {
    /// O_DIRECT pwrite entirely inside EOF.
    Overwrite,
    /// O_APPEND|O_DIRECT write.
    Append,
    /// O_DIRECT pwrite that ends beyond EOF (one at a time across threads, so that each is).
    PastEof,
    /// Buffered (no O_DIRECT) pwrite entirely inside EOF.
    Buffered,
}

impl WriteKind {
    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overwrite => "overwrite",
            Self::Append => "append",
            Self::PastEof => "past-eof",
            Self::Buffered => "buffered",
        }
    }

    /// Whether writes of this kind use `O_DIRECT`.
    pub fn direct(self) -> bool {
        !matches!(self, Self::Buffered)
    }

    /// Whether the file is sized up front and written strictly inside that size.
    fn inside_eof(self) -> bool {
        matches!(self, Self::Overwrite | Self::Buffered)
    }
}

impl fmt::Display for WriteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Write to a file in a controlled way and report exactly what was issued.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// File to write (created if missing).
    pub path: PathBuf,
    /// Kind of write to issue.
    #[arg(long, value_enum, default_value = "overwrite")]
    pub kind: WriteKind,
    /// Total writes, split across threads exactly (the first `writes % threads` threads do one more).
    #[arg(long, default_value_t = 1000)]
    pub writes: u64,
    /// Writer threads, each with its own file descriptor.
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
    /// Bytes per write; must be a multiple of 512 for O_DIRECT kinds.
    #[arg(long, default_value_t = 4096)]
    pub block_size: usize,
    /// Size the file is made (ftruncate, never shrinking) before the run for overwrite and
    /// buffered kinds [default: threads * block_size * 16].
    #[arg(long)]
    pub file_size: Option<u64>,
    /// Print a JSON summary line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Write even if PATH is not on a FUSE file system (it is refused
    /// otherwise: `load` overwrites what it finds there).
    #[arg(long)]
    pub force: bool,
}

/// Refuses `what` (an open file or directory) unless it is on FUSE.
fn require_fuse(fd: &impl std::os::fd::AsRawFd, path: &Path) -> anyhow::Result<()> {
    let f_type = crate::fs_type(fd).with_context(|| format!("fstatfs {}", escape::path(path)))?;
    if f_type != crate::FUSE_SUPER_MAGIC {
        return Err(UsageError(format!(
            "{} is not on a FUSE file system (f_type {f_type:#x}): `fuselock load` overwrites \
             what it finds there; pass --force to write to it anyway",
            escape::path(path)
        ))
        .into());
    }
    Ok(())
}

/// What a run issued. `writes` is the number of write system calls made, whatever their result,
/// so it matches what the kernel saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub kind: WriteKind,
    /// Write system calls issued (successful, short and failed alike).
    pub writes: u64,
    /// Bytes the write calls reported written.
    pub bytes: u64,
    /// Writes that failed or wrote fewer than `block_size` bytes.
    pub errors: u64,
    /// Of `errors`, the writes that returned a short count.
    pub short_writes: u64,
    pub threads: u32,
    pub block_size: usize,
    /// From the moment all threads were released until the last one finished.
    pub elapsed: Duration,
    /// The first failure seen, for diagnosis.
    pub first_error: Option<String>,
}

impl LoadReport {
    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "kind": self.kind.as_str(),
            "writes": self.writes,
            "bytes": self.bytes,
            "errors": self.errors,
            "short_writes": self.short_writes,
            "threads": self.threads,
            "block_size": self.block_size,
            "elapsed_ns": u64::try_from(self.elapsed.as_nanos()).unwrap_or(u64::MAX),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "first_error": self.first_error,
        })
        .to_string()
    }

    /// The report as `--json` asks: JSON or the text line.
    pub fn render(&self, json: bool) -> String {
        if json {
            self.to_json()
        } else {
            self.to_string()
        }
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.writes as f64 / secs
        } else {
            0.0
        };
        write!(
            f,
            "load: {} {} writes of {} bytes from {} thread(s) in {:.3} s ({:.0} writes/s), \
             {} bytes written, {} errors ({} short)",
            self.writes,
            self.kind,
            self.block_size,
            self.threads,
            secs,
            rate,
            self.bytes,
            self.errors,
            self.short_writes
        )?;
        if let Some(err) = &self.first_error {
            write!(f, "; first error: {err}")?;
        }
        Ok(())
    }
}

/// Runs the workload and prints its summary line on stdout (JSON with `--json`).
///
/// Returns `Ok` even if some writes failed: check [`LoadReport::errors`]. Errors are for runs
/// that could not start (bad arguments, file not openable) or could not print the summary.
pub fn run(args: &LoadArgs) -> anyhow::Result<LoadReport> {
    // A bad argument is the user's to fix (exit 3), not a failure (4).
    let plan = Plan::new(args).map_err(|e| UsageError(format!("{e:#}")))?;
    let first = open_target(&args.path, args.force)?;
    let placement = prepare_file(&first, &args.path, &plan)?;
    let files = open_writers(&first, &args.path, plan.kind, plan.threads, args.force)?;
    // Not open while the writers write: it is not one of them.
    drop(first);
    let buffers = (0..plan.threads)
        .map(|t| AlignedBuf::new(plan.block_size, b'a' + (t % 26) as u8))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let report = execute(&plan, &placement, files, buffers)?;
    let mut out = io::stdout().lock();
    writeln!(out, "{}", report.render(args.json))
        .and_then(|()| out.flush())
        .context("cannot write the load summary to stdout")?;
    Ok(report)
}

/// Validated arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    kind: WriteKind,
    threads: u32,
    /// Writes each thread issues; sums to the requested total.
    per_thread: Vec<u64>,
    block_size: usize,
    /// Size the file must have for inside-EOF kinds.
    file_size: u64,
}

impl Plan {
    fn new(args: &LoadArgs) -> anyhow::Result<Self> {
        ensure!(args.threads >= 1, "--threads must be at least 1");
        ensure!(args.writes >= 1, "--writes must be at least 1");
        ensure!(args.block_size >= 1, "--block-size must be at least 1");
        ensure!(
            args.block_size <= MAX_WRITE,
            "--block-size {} is larger than one write(2) can transfer ({MAX_WRITE})",
            args.block_size
        );
        if args.kind.direct() {
            ensure!(
                args.block_size.is_multiple_of(DIRECT_IO_UNIT),
                "--block-size {} is not a multiple of {DIRECT_IO_UNIT}, which O_DIRECT ({} writes) \
                 requires; use --kind buffered for other sizes",
                args.block_size,
                args.kind
            );
        }
        let block = args.block_size as u64;
        let file_size = if args.kind.inside_eof() {
            let size = match args.file_size {
                Some(size) => size,
                None => u64::from(args.threads)
                    .checked_mul(block)
                    .and_then(|s| s.checked_mul(DEFAULT_SLOTS_PER_THREAD))
                    .context("default file size overflows; give --file-size")?,
            };
            ensure!(
                size >= block,
                "--file-size {size} is smaller than one block ({block} bytes)"
            );
            ensure!(size <= i64::MAX as u64, "--file-size {size} is too large");
            size
        } else {
            if args.file_size.is_some() {
                log::warn!("--file-size only applies to overwrite and buffered writes; ignored");
            }
            0
        };
        let parent = match args.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        ensure!(
            parent.is_dir(),
            "directory {} (for {}) does not exist",
            escape::path(parent),
            escape::path(&args.path)
        );
        Ok(Self {
            kind: args.kind,
            threads: args.threads,
            per_thread: split_writes(args.writes, args.threads),
            block_size: args.block_size,
            file_size,
        })
    }

    fn total_writes(&self) -> u64 {
        self.per_thread.iter().sum()
    }
}

/// Writes per thread: `total / threads` each, and one more for the first `total % threads`.
fn split_writes(total: u64, threads: u32) -> Vec<u64> {
    let threads = u64::from(threads.max(1));
    let (base, extra) = (total / threads, total % threads);
    (0..threads).map(|t| base + u64::from(t < extra)).collect()
}

/// Where writes go.
#[derive(Debug)]
enum Placement {
    /// Fixed offsets in `slots` whole blocks that all lie inside EOF.
    Inside { slots: u64 },
    /// The next past-EOF offset. The lock is held across each write, see [`past_eof_write`].
    PastEof { next: Mutex<u64> },
    /// `O_APPEND`: the kernel places each write at EOF.
    Append,
}

/// Opens PATH for writing, creating it if needed: once, and checked on the descriptors. Its
/// directory is opened first (and refused unless on FUSE, before anything is created), the file
/// beneath it with `O_NOFOLLOW` (a symlink there is refused) and `O_NONBLOCK` (a FIFO there
/// fails instead of waiting for a reader), and it must be a regular file (on FUSE).
fn open_target(path: &Path, force: bool) -> anyhow::Result<File> {
    let shown = escape::path(path);
    let dir_path = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{shown} names no file"))?;
    let name =
        CString::new(name.as_bytes()).with_context(|| format!("{shown} contains a NUL byte"))?;
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir_path)
        .with_context(|| format!("cannot open {}", escape::path(dir_path)))?;
    if !force {
        // Before creating anything: the directory the file goes in.
        require_fuse(&dir, path)?;
    }
    let file = fd::openat(
        &dir,
        &name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_NONBLOCK,
        0o666,
    )
    .map_err(|err| {
        let context = match err.raw_os_error() {
            Some(libc::ELOOP) => {
                format!("{shown} is a symbolic link: `fuselock load` does not write through one")
            }
            Some(libc::ENXIO) => format!("{shown} is a FIFO or socket, not a regular file"),
            _ => format!("cannot open or create {shown}"),
        };
        anyhow::Error::new(err).context(context)
    })?;
    let md = file
        .metadata()
        .with_context(|| format!("cannot stat {shown}"))?;
    ensure!(md.is_file(), "{shown} is not a regular file");
    if !force {
        // And the file itself, before its size or contents change.
        require_fuse(&file, path)?;
    }
    Ok(file)
}

/// Brings the file opened by [`open_target`] to the state the kind needs.
fn prepare_file(file: &File, path: &Path, plan: &Plan) -> anyhow::Result<Placement> {
    let md = file
        .metadata()
        .with_context(|| format!("cannot stat {}", escape::path(path)))?;
    let block = plan.block_size as u64;
    match plan.kind {
        WriteKind::Overwrite | WriteKind::Buffered => {
            if md.len() < plan.file_size {
                file.set_len(plan.file_size).with_context(|| {
                    format!(
                        "cannot extend {} to {} bytes",
                        escape::path(path),
                        plan.file_size
                    )
                })?;
            }
            Ok(Placement::Inside {
                slots: plan.file_size / block,
            })
        }
        WriteKind::PastEof => {
            let start = md.len().div_ceil(block) * block;
            let end = plan
                .total_writes()
                .checked_mul(block)
                .and_then(|bytes| bytes.checked_add(start))
                .filter(|&end| end <= i64::MAX as u64);
            ensure!(
                end.is_some(),
                "{} writes past offset {start} would exceed the largest file offset",
                plan.total_writes()
            );
            Ok(Placement::PastEof {
                next: Mutex::new(start),
            })
        }
        WriteKind::Append => Ok(Placement::Append),
    }
}

/// One descriptor per thread, all opened before any write so a failure leaves the file alone.
/// Each is opened through `first` (the descriptor of [`open_target`]), not through PATH again:
/// whatever PATH names by now, they are the file checked.
fn open_writers(
    first: &File,
    path: &Path,
    kind: WriteKind,
    threads: u32,
    force: bool,
) -> anyhow::Result<Vec<File>> {
    let flags = libc::O_WRONLY
        | if kind == WriteKind::Append {
            libc::O_APPEND
        } else {
            0
        }
        | if kind.direct() { libc::O_DIRECT } else { 0 };
    (0..threads)
        .map(|_| {
            fd::reopen(first, flags)
                .map_err(|err| {
                    let context = if kind.direct() && err.raw_os_error() == Some(libc::EINVAL) {
                        format!(
                            "the filesystem of {} does not support O_DIRECT (open returned \
                             EINVAL); use --kind buffered",
                            escape::path(path)
                        )
                    } else {
                        format!("cannot open {} for {kind} writes", escape::path(path))
                    };
                    anyhow::Error::new(err).context(context)
                })
                .and_then(|file| {
                    if !force {
                        require_fuse(&file, path)?;
                    }
                    Ok(file)
                })
        })
        .collect()
}

#[cfg(test)]
mod tests;

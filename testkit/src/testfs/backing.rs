//! The backing directory: paths resolved beneath it, files created in it,
//! and FUSE attributes from what it holds.

use std::ffi::{CString, OsString};
use std::fs::{File, Metadata, OpenOptions, Permissions};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use fuser::{FileAttr, FileType, INodeNo, TimeOrNow};

use super::fs::backing_open_flags;

/// The attribute changes of one SETATTR request that this filesystem applies.
#[derive(Debug)]
pub(super) struct AttrChanges {
    pub(super) mode: Option<u32>,
    pub(super) uid: Option<u32>,
    pub(super) gid: Option<u32>,
    pub(super) size: Option<u64>,
    pub(super) atime: Option<TimeOrNow>,
    pub(super) mtime: Option<TimeOrNow>,
}

impl AttrChanges {
    pub(super) fn file_times(&self) -> Option<std::fs::FileTimes> {
        if self.atime.is_none() && self.mtime.is_none() {
            return None;
        }
        let resolve = |t: &TimeOrNow| match t {
            TimeOrNow::SpecificTime(t) => *t,
            TimeOrNow::Now => SystemTime::now(),
        };
        let mut times = std::fs::FileTimes::new();
        if let Some(t) = &self.atime {
            times = times.set_accessed(resolve(t));
        }
        if let Some(t) = &self.mtime {
            times = times.set_modified(resolve(t));
        }
        Some(times)
    }
}

/// The FUSE file type shown for a backing entry; `None` for kinds this filesystem hides.
pub(super) fn exposed_kind(md: &Metadata) -> Option<FileType> {
    let ft = md.file_type();
    if ft.is_file() {
        Some(FileType::RegularFile)
    } else if ft.is_dir() {
        Some(FileType::Directory)
    } else {
        None
    }
}

pub(super) fn file_attr(ino: u64, kind: FileType, md: &Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: md.size(),
        blocks: md.blocks(),
        atime: unix_time(md.atime(), md.atime_nsec()),
        mtime: unix_time(md.mtime(), md.mtime_nsec()),
        ctime: unix_time(md.ctime(), md.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind,
        // The mask keeps the permission bits only, which fit in 12 bits.
        perm: (md.mode() & 0o7777) as u16,
        nlink: u32::try_from(md.nlink()).unwrap_or(u32::MAX),
        uid: md.uid(),
        gid: md.gid(),
        rdev: u32::try_from(md.rdev()).unwrap_or(0),
        blksize: u32::try_from(md.blksize()).unwrap_or(4096),
        flags: 0,
    }
}

/// `SystemTime` from a `stat` time (seconds may be negative, nanoseconds are `0..1e9`).
pub(super) fn unix_time(secs: i64, nsecs: i64) -> SystemTime {
    let nanos = Duration::from_nanos(u64::try_from(nsecs).unwrap_or(0));
    let whole = Duration::from_secs(secs.unsigned_abs());
    let base = if secs >= 0 {
        UNIX_EPOCH.checked_add(whole)
    } else {
        UNIX_EPOCH.checked_sub(whole)
    };
    base.and_then(|t| t.checked_add(nanos))
        .unwrap_or(UNIX_EPOCH)
}

/// The backing directory, held open: every backing path is resolved beneath
/// it with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so a symlink
/// or `..` planted anywhere in a path (the server runs as root, the files
/// belong to users) cannot lead a write, a truncate or an unlink outside.
pub(super) struct Beneath {
    pub(super) root: OwnedFd,
    /// For messages and statvfs only; never opened again.
    pub(super) path: PathBuf,
}

impl Beneath {
    pub(super) fn root(path: PathBuf) -> anyhow::Result<Beneath> {
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&path)
            .with_context(|| format!("opening the backing directory {}", path.display()))?;
        Ok(Beneath {
            root: dir.into(),
            path,
        })
    }

    /// `openat2(2)` of `rel` beneath the root, with raw flags (plus `O_CLOEXEC`).
    pub(super) fn open(&self, rel: &Path, flags: i32, mode: u32) -> io::Result<File> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let c = CString::new(rel.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: open_how is plain integers; zero is "no flags" for each.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_CLOEXEC) as u64;
        how.mode = u64::from(mode);
        how.resolve =
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: openat2(2) on a live directory fd, a valid C string and an
        // open_how of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.root.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        Ok(unsafe { File::from_raw_fd(fd as i32) })
    }

    /// `lstat` of `rel` (a final symlink is reported, not followed).
    pub(super) fn lstat(&self, rel: &Path) -> io::Result<Metadata> {
        self.open(rel, libc::O_PATH | libc::O_NOFOLLOW, 0)?
            .metadata()
    }

    /// The names in directory `rel` (`.` and `..` left out).
    pub(super) fn names(&self, rel: &Path) -> io::Result<Vec<OsString>> {
        let dir = self.open(rel, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        // The descriptor's own magic link: the directory already resolved
        // beneath the root, not its name again. Read to the end while `dir`
        // is open (its number must not be reused under the listing), and
        // nothing but names: entries' paths through it would not outlive it.
        std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect()
    }

    /// Removes the file `rel`.
    pub(super) fn unlink(&self, rel: &Path) -> io::Result<()> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        let name = rel
            .file_name()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let dir = self.open(parent, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        let c = CString::new(name.as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: unlinkat(2) on a live directory fd with a valid C string.
        if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Creates a backing file for CREATE, always with `O_EXCL`: a file that already exists is left
/// alone and the reply is `EEXIST`.
///
/// The kernel sends CREATE for a name it believes new, and then skips its own permission check
/// of the open (the caller made the file, so may open it). The server runs as root: opening,
/// and with `O_TRUNC` truncating, a file that appeared in the meantime would do both for a caller
/// who may have no right to. On `EEXIST` the kernel drops its dentry, so the caller's next open
/// looks the file up and is checked as usual.
///
/// Only a file this call made gets its mode (our own umask would otherwise narrow it) and owner
/// (the caller, not the root server) set.
pub(super) fn create_backing(
    backing: &Beneath,
    path: &Path,
    kernel_flags: i32,
    mode: u32,
    owner: (u32, u32),
) -> io::Result<File> {
    let flags = backing_open_flags(kernel_flags) | libc::O_CREAT | libc::O_EXCL;
    let file = backing.open(path, flags, mode)?;
    file.set_permissions(Permissions::from_mode(mode))?;
    std::os::unix::fs::fchown(&file, Some(owner.0), Some(owner.1))?;
    Ok(file)
}

/// Reads `size` bytes at `offset`, fewer only at end of file (FUSE's READ contract).
pub(super) fn read_full_at(file: &File, offset: u64, size: u32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; size as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

pub(super) fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let path = CString::new(path.as_os_str().as_bytes())?;
    let mut out = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and outlives the call; `out` is valid for writes of one
    // `statvfs`, which the call fills in completely when it succeeds.
    let rc = unsafe { libc::statvfs(path.as_ptr(), out.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `out`.
    Ok(unsafe { out.assume_init() })
}

/// What to tell the user when `FUSE_DEV_IOC_BACKING_OPEN` fails.
pub(super) fn backing_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EPERM) => "the ioctl needs CAP_SYS_ADMIN: run testfs as root",
        Some(libc::ELOOP) => {
            "the backing file is on a stacked filesystem (e.g. overlayfs); use a tmpfs or ext4 \
             backing directory"
        }
        Some(libc::EOPNOTSUPP) => "the backing filesystem cannot be read/written through iterators",
        _ => "the kernel did not accept the backing file for passthrough",
    }
}

//! Files reached through descriptors, so that a name someone else can change
//! is resolved at most once: `openat` beneath a held directory, reopening a
//! file through its own `/proc/self/fd` link, and listing a held directory.
//!
//! `verify --exercise` and `load` run as root in directories other users
//! may write to. Between two lookups of one name, such a user can rename
//! another file to it; whatever is opened, written or unlinked a second
//! time must therefore be the file of the first lookup.

use std::{
    ffi::{CStr, CString},
    fs::{File, Metadata},
    io,
    os::{
        fd::{AsRawFd, FromRawFd as _, IntoRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    ptr::NonNull,
};

/// Which file a descriptor refers to: its device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

impl Identity {
    pub(crate) fn of_metadata(meta: &Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// Asked of the descriptor (`fstat`), never of a name.
    pub(crate) fn of(file: &File) -> io::Result<Identity> {
        file.metadata().map(|m| Identity::of_metadata(&m))
    }
}

/// `openat(2)` of `name` in `dir`, never through a symlink in `name`'s last
/// component (`O_NOFOLLOW`), with `O_CLOEXEC`.
pub(crate) fn openat(
    dir: &impl AsRawFd,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<File> {
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

/// What `name` in `dir` is now, without following a symlink and without
/// opening it in the file system's sense (`O_PATH`: no FUSE OPEN, and a
/// FIFO cannot block).
pub(crate) fn lstat_at(dir: &impl AsRawFd, name: &CStr) -> io::Result<Metadata> {
    openat(dir, name, libc::O_PATH, 0)?.metadata()
}

/// Opens the file `file` refers to again, with `flags`: through the
/// descriptor's own `/proc/self/fd` link, which leads to its inode whatever
/// its name now refers to, even after a rename or an unlink. The new
/// descriptor is checked to be that file (a `/proc` that is not this
/// process's would show another), and refused otherwise.
pub(crate) fn reopen(file: &File, flags: libc::c_int) -> io::Result<File> {
    let link = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // No O_NOFOLLOW: the link is the point, and it cannot be replaced.
    // SAFETY: open(2) with a valid C string; the fd is owned at once.
    let fd = unsafe { libc::open(link.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let reopened = unsafe { File::from_raw_fd(fd) };
    if Identity::of(&reopened)? != Identity::of(file)? {
        return Err(io::Error::other(
            "/proc/self/fd led to another file than the descriptor's (is /proc this \
             process's?)",
        ));
    }
    Ok(reopened)
}

/// The names in a held directory, read through a descriptor of their own
/// (`fdopendir`): the directory is not looked up by name again, and its
/// held descriptor's offset is left alone.
pub(crate) struct Listing(NonNull<libc::DIR>);

impl Listing {
    pub(crate) fn of(dir: &impl AsRawFd) -> io::Result<Listing> {
        let fd: OwnedFd = openat(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?.into();
        let raw = fd.into_raw_fd();
        // SAFETY: fdopendir(3) takes ownership of a live descriptor on success.
        match NonNull::new(unsafe { libc::fdopendir(raw) }) {
            Some(dirp) => Ok(Listing(dirp)),
            None => {
                let err = io::Error::last_os_error();
                // SAFETY: still ours, as fdopendir failed.
                drop(unsafe { OwnedFd::from_raw_fd(raw) });
                Err(err)
            }
        }
    }
}

impl Iterator for Listing {
    type Item = io::Result<CString>;

    fn next(&mut self) -> Option<io::Result<CString>> {
        // readdir(3) tells the end from an error only through errno.
        // SAFETY: errno is this thread's; the stream is live and ours.
        let entry = unsafe {
            *libc::__errno_location() = 0;
            libc::readdir(self.0.as_ptr())
        };
        if entry.is_null() {
            let err = io::Error::last_os_error();
            return (err.raw_os_error() != Some(0)).then_some(Err(err));
        }
        // SAFETY: a non-null entry is valid until the next readdir, and its
        // d_name is NUL-terminated; the name is copied out at once.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        Some(Ok(name.to_owned()))
    }
}

impl Drop for Listing {
    fn drop(&mut self) {
        // SAFETY: the stream is live and closed once.
        unsafe { libc::closedir(self.0.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt as _;

    use super::*;

    fn tempdir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("fuselock-fd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn reopen_follows_the_inode_not_the_name() {
        let dir = tempdir("reopen");
        let (mine, other) = (dir.join("mine"), dir.join("other"));
        std::fs::write(&mine, b"").expect("write");
        std::fs::write(&other, b"keep me").expect("write");
        let file = File::options().write(true).open(&mine).expect("open");
        std::fs::rename(&other, &mine).expect("rename over");
        let again = reopen(&file, libc::O_WRONLY).expect("reopen");
        std::os::unix::fs::FileExt::write_at(&again, b"scratch", 0).expect("write");
        assert_eq!(std::fs::read(&mine).expect("read"), b"keep me");
        assert_eq!(file.metadata().expect("stat").len(), 7);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn listing_reads_every_name_through_the_descriptor() {
        let dir = tempdir("listing");
        for name in ["a", "b", "c"] {
            std::fs::write(dir.join(name), b"").expect("write");
        }
        let held = File::open(&dir).expect("open dir");
        // The name now leads elsewhere: the listing is still the held one's.
        let moved = dir.with_extension("moved");
        std::fs::rename(&dir, &moved).expect("rename");
        std::fs::create_dir(&dir).expect("mkdir");
        let mut names: Vec<Vec<u8>> = Listing::of(&held)
            .expect("listing")
            .map(|n| n.expect("entry").as_bytes().to_vec())
            .filter(|n| n != b"." && n != b"..")
            .collect();
        names.sort();
        assert_eq!(names, [b"a", b"b", b"c"]);
        let meta = lstat_at(&held, c"a").expect("lstat");
        assert!(meta.is_file());
        let name = std::ffi::OsStr::from_bytes(b"a");
        assert!(moved.join(name).exists());
        std::fs::remove_dir_all(&dir).expect("cleanup");
        std::fs::remove_dir_all(&moved).expect("cleanup");
    }
}

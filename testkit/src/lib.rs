//! fuselock's test kit: what makes FUSE writes happen, never what watches
//! them. `fuselock testfs` (a passthrough server), `fuselock load` (a load
//! generator), `verify --exercise` (a writer that proves the verdict on a
//! scratch file) and the tests use it; the monitoring path does not.

use std::{
    io,
    os::fd::AsRawFd,
    sync::{Mutex, MutexGuard, PoisonError},
};

mod aligned;
pub mod exercise;
pub(crate) mod fd;
pub mod testfs;
pub mod workload;

/// `FUSE_SUPER_MAGIC` (`include/uapi/linux/magic.h`).
pub const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// The file system type (`statfs.f_type`) of what `fd` refers to: asked of
/// the descriptor, so that no path is resolved again between the check and
/// the use.
pub fn fs_type(fd: &impl AsRawFd) -> io::Result<i64> {
    // SAFETY: fstatfs(2) on a live descriptor into a zeroed out-struct.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut fs) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // f_type is i64 on glibc and u64 on musl; FUSE_SUPER_MAGIC fits both.
    #[allow(clippy::cast_possible_wrap)]
    Ok(fs.f_type as i64)
}

/// Locks `mutex`, ignoring poisoning: every critical section here leaves its
/// data consistent (a table insert or remove, a cursor, a counter), so a
/// panic elsewhere does not make it unusable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

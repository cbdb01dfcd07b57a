//! What a task carries between the hooks of one write, and of one open, in
//! its own BPF task storage: no map shared by every writer on the host, no
//! capacity another user's writers can fill, and nothing to age out (the
//! kernel frees it with the task).

use super::keys::{InodeKey, LockMode};

/// `mode` values of [`InFlight`].
pub const INFLIGHT_UNLOCKED: u32 = 0;
pub const INFLIGHT_SHARED: u32 = 1;
pub const INFLIGHT_EXCLUSIVE: u32 = 2;

/// One FUSE write between entry and return of `fuse_file_write_iter()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    pub iocb: u64,
    pub file: u64,
    pub inode: u64,
    /// Address of the FUSE inode's `i_rwsem`: the only lock fuselock counts.
    pub rwsem: u64,
    pub key: InodeKey,
    pub start_ns: u64,
    /// When the lock was first seen held; 0 if never.
    pub locked_ns: u64,
    /// `lock:contention_begin` on `rwsem` by this task; 0 if not waiting.
    pub wait_start_ns: u64,
    /// Total time waited for `rwsem` during this write.
    pub wait_ns: u64,
    /// `iov_iter_count()` at entry: the bytes the write asks for.
    pub count: u64,
    pub i_size_entry: i64,
    /// `i_size` when the lock was first seen held.
    pub i_size_locked: i64,
    pub pos: i64,
    pub reasons: u32,
    /// `INFLIGHT_*`.
    pub mode: u32,
    /// Non-zero if this write waited for `rwsem`.
    pub contended: u32,
    /// Non-zero between the write's entry and its return.
    pub active: u32,
}

impl InFlight {
    /// The mode the lock was seen held in; `None` if it never was.
    #[inline(always)]
    pub const fn lock_mode(&self) -> Option<LockMode> {
        match self.mode {
            INFLIGHT_SHARED => Some(LockMode::Shared),
            INFLIGHT_EXCLUSIVE => Some(LockMode::Exclusive),
            _ => None,
        }
    }
}

/// An open between entry and return of `fuse_file_io_open()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenInFlight {
    pub file: u64,
    pub flags_asked: u32,
    /// Non-zero between the open's entry and its return.
    pub active: u32,
}

/// A task's storage: its write and its open in flight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskState {
    pub write: InFlight,
    pub open: OpenInFlight,
}

//! What the maps are keyed by: a file on one write path, and a process
//! writing it.

/// The FUSE write path a write took in `fuse_file_write_iter()`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WritePath {
    /// `FOPEN_PASSTHROUGH`: `fuse_passthrough_write_iter()`.
    Passthrough = 0,
    /// `FOPEN_DIRECT_IO` (which overrides passthrough): `fuse_direct_write_iter()`.
    DirectIo = 1,
}

impl WritePath {
    pub const COUNT: usize = 2;
    pub const ALL: [WritePath; 2] = [WritePath::Passthrough, WritePath::DirectIo];

    /// The path `fuse_file_write_iter()` dispatches to, or `None` for the
    /// page-cache path, which fuselock does not watch.
    #[inline(always)]
    pub fn of(open_flags: u32, has_backing_file: bool) -> Option<WritePath> {
        if open_flags & crate::classify::FOPEN_DIRECT_IO != 0 {
            Some(WritePath::DirectIo)
        } else if has_backing_file {
            Some(WritePath::Passthrough)
        } else {
            None
        }
    }

    pub const fn from_u32(v: u32) -> Option<WritePath> {
        match v {
            0 => Some(WritePath::Passthrough),
            1 => Some(WritePath::DirectIo),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            WritePath::Passthrough => "passthrough",
            WritePath::DirectIo => "direct_io",
        }
    }
}

impl core::fmt::Display for WritePath {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// The mode the FUSE inode's `i_rwsem` was held in.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockMode {
    Shared = 0,
    Exclusive = 1,
}

impl LockMode {
    pub const COUNT: usize = 2;
    pub const ALL: [LockMode; 2] = [LockMode::Shared, LockMode::Exclusive];

    pub const fn name(self) -> &'static str {
        match self {
            LockMode::Shared => "shared",
            LockMode::Exclusive => "exclusive",
        }
    }
}

/// Key of the per-file maps. `dev` is the kernel's `dev_t` of the FUSE
/// superblock (`MAJOR = dev >> 20`, `MINOR = dev & 0xfffff`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeKey {
    pub ino: u64,
    pub dev: u32,
    /// A [`WritePath`] discriminant.
    pub path: u32,
}

impl InodeKey {
    /// The key of this file's device and path in `DEV_TOTALS` (inode 0).
    #[inline(always)]
    pub const fn device(&self) -> InodeKey {
        InodeKey {
            ino: 0,
            dev: self.dev,
            path: self.path,
        }
    }

    /// The key of this file in `OPENS`, which does not know the write path
    /// yet (path 0).
    #[inline(always)]
    pub const fn file(&self) -> InodeKey {
        InodeKey {
            ino: self.ino,
            dev: self.dev,
            path: 0,
        }
    }
}

/// Key of the writers map: one process writing one (device, inode, path).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriterKey {
    pub ino: u64,
    pub dev: u32,
    pub path: u32,
    pub tgid: u32,
    pub _pad: u32,
}

impl WriterKey {
    /// Process `tgid` writing the entry `key`.
    #[inline(always)]
    pub const fn new(key: InodeKey, tgid: u32) -> WriterKey {
        WriterKey {
            ino: key.ino,
            dev: key.dev,
            path: key.path,
            tgid,
            _pad: 0,
        }
    }

    /// The entry written.
    #[inline(always)]
    pub const fn inode(&self) -> InodeKey {
        InodeKey {
            ino: self.ino,
            dev: self.dev,
            path: self.path,
        }
    }
}

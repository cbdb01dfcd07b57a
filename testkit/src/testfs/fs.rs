//! The filesystem itself: what the server tells the kernel at OPEN, and the
//! lookups every request is answered with (the requests are `requests.rs`).

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, Permissions};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use fuser::{BackingId, Errno, FileAttr, FileHandle, FileType, FopenFlags, INodeNo, Request};
use log::error;

use super::{
    backing::{backing_hint, create_backing, exposed_kind, file_attr, AttrChanges, Beneath},
    tables::{BackingKey, HandleTable, InodeTable, Node},
    TestfsArgs,
};
use crate::lock;

/// How long the kernel may cache attributes and directory entries.
///
/// Short, because the backing directory may also be changed behind the mount's back (a test
/// that inspects or resets the tmpfs directly), and long enough that a write loop is not
/// interleaved with a `GETATTR` per call.
pub(super) const TTL: Duration = Duration::from_secs(1);

/// What the server tells the kernel in every OPEN and CREATE reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct OpenPolicy {
    pub(super) io: IoMode,
    /// Ask for `FOPEN_PARALLEL_DIRECT_WRITES`.
    pub(super) parallel: bool,
    /// In `DirectIo` mode, read-only opens use the page cache.
    pub(super) cached_readers: bool,
}

/// Where file I/O goes once a file is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IoMode {
    /// `FOPEN_PASSTHROUGH`: the kernel reads and writes the backing file itself.
    Passthrough,
    /// `FOPEN_DIRECT_IO` without passthrough: every read and write is a request to this server.
    ///
    /// Not combined with passthrough: the kernel lets `FOPEN_DIRECT_IO` override passthrough for
    /// reads and writes anyway, and leaving passthrough out keeps this mode usable on kernels
    /// without it, as the classic FUSE baseline.
    DirectIo,
}

impl OpenPolicy {
    pub(super) fn from_args(args: &TestfsArgs) -> Self {
        let io = if args.direct_io {
            IoMode::DirectIo
        } else {
            IoMode::Passthrough
        };
        Self {
            io,
            parallel: args.parallel,
            cached_readers: args.cached_readers,
        }
    }

    /// The `open_flags` an open with the caller's `open_flags` (`O_*`) gets,
    /// `FOPEN_PASSTHROUGH` included.
    pub(super) fn fopen_flags_for(self, open_flags: i32) -> FopenFlags {
        let read_only = open_flags & libc::O_ACCMODE == libc::O_RDONLY;
        if self.io == IoMode::DirectIo && self.cached_readers && read_only {
            // No FOPEN_DIRECT_IO: `fuse_file_io_open()` puts the inode in cached I/O mode.
            return FopenFlags::empty();
        }
        self.fopen_flags()
    }

    /// The `open_flags` every open gets but cached readers, `FOPEN_PASSTHROUGH` included.
    pub(super) fn fopen_flags(self) -> FopenFlags {
        let mut flags = match self.io {
            IoMode::Passthrough => FopenFlags::FOPEN_PASSTHROUGH,
            IoMode::DirectIo => FopenFlags::FOPEN_DIRECT_IO,
        };
        if self.parallel {
            flags |= FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES;
        }
        flags
    }

    /// For the "mounted" line, e.g. `0xc0 = FOPEN_PARALLEL_DIRECT_WRITES|FOPEN_PASSTHROUGH`.
    pub(super) fn describe(self) -> String {
        let flags = self.fopen_flags();
        let names: Vec<&str> = flags.iter_names().map(|(name, _)| name).collect();
        let readers = if self.cached_readers {
            "; read-only opens: page cache"
        } else {
            ""
        };
        format!("{:#x} = {}{readers}", flags.bits(), names.join("|"))
    }
}

/// Open flags for the server's own descriptor of a backing file, from the flags the kernel
/// sent with OPEN or CREATE.
///
/// Only the access mode, `O_TRUNC` and the sync flags are kept, plus `O_NOFOLLOW` (symlinks are
/// not exposed, so none may be followed). In particular `O_DIRECT` and `O_APPEND` are dropped,
/// on purpose:
/// - with passthrough the kernel opens its *own* backing file from this descriptor's path, with
///   the FUSE file's flags (`backing_file_open(.., file->f_flags, ..)`), so the caller's
///   `O_DIRECT`/`O_APPEND` apply there whatever this descriptor says;
/// - with direct I/O the kernel sends explicit offsets (it resolves `O_APPEND` against its own
///   `i_size`), `pwrite` on an `O_APPEND` descriptor would ignore them, and `O_DIRECT` would
///   demand aligned buffers that request buffers are not.
pub(super) fn backing_open_flags(kernel_flags: i32) -> i32 {
    const KEPT: i32 = libc::O_ACCMODE | libc::O_TRUNC | libc::O_SYNC | libc::O_DSYNC;
    (kernel_flags & KEPT) | libc::O_NOFOLLOW
}

/// Requests that reached the server's data path, reported at exit: with passthrough both stay 0.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) reads: AtomicU64,
    pub(super) writes: AtomicU64,
}

/// A freshly opened handle, as the reply needs it.
pub(super) enum Opened {
    Passthrough { fh: FileHandle, id: Arc<BackingId> },
    Direct { fh: FileHandle },
}

pub(super) struct TestFs {
    /// The backing directory, every path resolved beneath it.
    pub(super) backing: Beneath,
    pub(super) policy: OpenPolicy,
    pub(super) inodes: Mutex<InodeTable>,
    pub(super) handles: Mutex<HandleTable<BackingId>>,
    pub(super) stats: Arc<Stats>,
}

impl TestFs {
    pub(super) fn new(backing: PathBuf, policy: OpenPolicy) -> anyhow::Result<Self> {
        let backing = Beneath::root(backing)?;
        let root = backing
            .lstat(Path::new(""))
            .with_context(|| format!("cannot stat {}", backing.path.display()))?;
        Ok(Self {
            backing,
            policy,
            inodes: Mutex::new(InodeTable::new(BackingKey::of(&root))),
            handles: Mutex::new(HandleTable::new()),
            stats: Arc::default(),
        })
    }

    /// The node of `ino`; its path is relative to the backing directory.
    pub(super) fn node(&self, ino: INodeNo) -> Result<Node, Errno> {
        lock(&self.inodes).node(ino.0).cloned().ok_or(Errno::ENOENT)
    }

    /// `lstat` of `ino`'s path, refused if the name now refers to another backing inode.
    pub(super) fn stat_node(&self, ino: INodeNo) -> Result<(Node, PathBuf, Metadata), Errno> {
        let node = self.node(ino)?;
        let md = self.backing.lstat(&node.rel).map_err(Errno::from)?;
        if BackingKey::of(&md) != node.key {
            return Err(Errno::ENOENT);
        }
        let rel = node.rel.clone();
        Ok((node, rel, md))
    }

    /// Path, relative to the backing directory, of the entry `name` in directory `parent`.
    pub(super) fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        let (node, _rel, md) = self.stat_node(parent)?;
        if !md.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(node.rel.join(name))
    }

    pub(super) fn handle_file(&self, fh: FileHandle) -> Result<Arc<File>, Errno> {
        lock(&self.handles).file(fh.0).ok_or(Errno::EBADF)
    }

    pub(super) fn lookup_entry(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        let rel = self.child(parent, name)?;
        let md = self.backing.lstat(&rel).map_err(Errno::from)?;
        let kind = exposed_kind(&md).ok_or(Errno::ENOENT)?;
        let ino = lock(&self.inodes).intern(BackingKey::of(&md), rel);
        Ok(file_attr(ino, kind, &md))
    }

    pub(super) fn attr(&self, ino: INodeNo, fh: Option<FileHandle>) -> Result<FileAttr, Errno> {
        // Prefer an open descriptor: it still works after the name is unlinked, and `fstat` on a
        // FUSE file arrives without a handle (the kernel's getattr passes none), so any open
        // handle of the inode will do.
        let open = match fh {
            Some(fh) => Some(self.handle_file(fh)?),
            None => lock(&self.handles).file_of_inode(ino.0),
        };
        let md = match open {
            Some(file) => file.metadata().map_err(Errno::from)?,
            None => self.stat_node(ino)?.2,
        };
        let kind = exposed_kind(&md).ok_or(Errno::ENOENT)?;
        Ok(file_attr(ino.0, kind, &md))
    }

    pub(super) fn set_attr(
        &self,
        ino: INodeNo,
        fh: Option<FileHandle>,
        changes: &AttrChanges,
    ) -> Result<FileAttr, Errno> {
        let file = match fh {
            Some(fh) => self.handle_file(fh)?,
            // A fresh descriptor by path, opened for writing if truncating; failing that (the
            // name is gone) an open handle of the inode, as for getattr.
            None => match self.open_for_setattr(ino, changes.size.is_some()) {
                Ok(file) => Arc::new(file),
                Err(err) => lock(&self.handles).file_of_inode(ino.0).ok_or(err)?,
            },
        };
        if let Some(mode) = changes.mode {
            file.set_permissions(Permissions::from_mode(mode & 0o7777))
                .map_err(Errno::from)?;
        }
        if changes.uid.is_some() || changes.gid.is_some() {
            std::os::unix::fs::fchown(&*file, changes.uid, changes.gid).map_err(Errno::from)?;
        }
        if let Some(size) = changes.size {
            file.set_len(size).map_err(Errno::from)?;
        }
        if let Some(times) = changes.file_times() {
            file.set_times(times).map_err(Errno::from)?;
        }
        let md = file.metadata().map_err(Errno::from)?;
        let kind = exposed_kind(&md).ok_or(Errno::ENOENT)?;
        Ok(file_attr(ino.0, kind, &md))
    }

    /// A descriptor to change `ino`'s attributes through when the kernel sent no handle.
    pub(super) fn open_for_setattr(&self, ino: INodeNo, truncating: bool) -> Result<File, Errno> {
        let (node, path, _md) = self.stat_node(ino)?;
        let access = if truncating {
            libc::O_WRONLY
        } else {
            libc::O_RDONLY
        };
        let file = self
            .backing
            .open(&path, access | libc::O_NOFOLLOW, 0)
            .map_err(Errno::from)?;
        let md = file.metadata().map_err(Errno::from)?;
        if BackingKey::of(&md) != node.key {
            return Err(Errno::ENOENT);
        }
        Ok(file)
    }

    /// `.`, `..` and the exposed children of directory `ino`, in a stable order.
    pub(super) fn dir_entries(
        &self,
        ino: INodeNo,
    ) -> Result<Vec<(u64, FileType, OsString)>, Errno> {
        let (node, path, md) = self.stat_node(ino)?;
        if !md.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let parent_ino = match node.rel.parent() {
            None => INodeNo::ROOT.0,
            Some(parent_rel) => {
                let parent_md = self.backing.lstat(parent_rel).map_err(Errno::from)?;
                lock(&self.inodes).intern(BackingKey::of(&parent_md), parent_rel.to_path_buf())
            }
        };
        let mut children = Vec::new();
        for name in self.backing.names(&path).map_err(Errno::from)? {
            // Entries may vanish while we list them; skip those, and anything not exposed.
            let Ok(child_md) = self.backing.lstat(&path.join(&name)) else {
                continue;
            };
            let Some(kind) = exposed_kind(&child_md) else {
                continue;
            };
            children.push((name, kind, BackingKey::of(&child_md)));
        }
        // Offsets are positions in this list, so keep it in a stable order across calls.
        children.sort_by(|a, b| a.0.cmp(&b.0));

        let mut entries = vec![
            (ino.0, FileType::Directory, ".".into()),
            (parent_ino, FileType::Directory, "..".into()),
        ];
        let mut inodes = lock(&self.inodes);
        for (name, kind, key) in children {
            let child_ino = inodes.intern(key, node.rel.join(&name));
            entries.push((child_ino, kind, name));
        }
        Ok(entries)
    }

    /// Opens the backing file of `ino` the way the kernel asked.
    pub(super) fn open_existing(&self, ino: INodeNo, flags: i32) -> Result<File, Errno> {
        let (node, path, md) = self.stat_node(ino)?;
        if !md.is_file() {
            return Err(Errno::EISDIR);
        }
        // Truncate only once the file is known to be the node's.
        let file = self
            .backing
            .open(&path, backing_open_flags(flags) & !libc::O_TRUNC, 0)
            .map_err(Errno::from)?;
        let opened = file.metadata().map_err(Errno::from)?;
        if BackingKey::of(&opened) != node.key {
            return Err(Errno::ENOENT);
        }
        if flags & libc::O_TRUNC != 0 {
            file.set_len(0).map_err(Errno::from)?;
        }
        Ok(file)
    }

    /// Records an open backing file and, with passthrough, registers it with the kernel.
    pub(super) fn register(
        &self,
        ino: u64,
        file: File,
        open_backing: impl FnOnce(&File) -> io::Result<BackingId>,
    ) -> Result<Opened, Errno> {
        let mut handles = lock(&self.handles);
        match self.policy.io {
            IoMode::DirectIo => {
                let fh = handles.insert(ino, file, None);
                Ok(Opened::Direct { fh: FileHandle(fh) })
            }
            IoMode::Passthrough => {
                let id = handles
                    .backing_for(ino, || open_backing(&file))
                    .map_err(|err| {
                        error!(
                            "cannot register a passthrough backing file: {err}; {}",
                            backing_hint(&err)
                        );
                        Errno::from(err)
                    })?;
                let fh = handles.insert(ino, file, Some(Arc::clone(&id)));
                Ok(Opened::Passthrough {
                    fh: FileHandle(fh),
                    id,
                })
            }
        }
    }

    pub(super) fn create_file(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(FileAttr, File), Errno> {
        let rel = self.child(parent, name)?;
        let owner = (req.uid(), req.gid());
        let file = create_backing(&self.backing, &rel, flags, mode & !umask & 0o7777, owner)
            .map_err(Errno::from)?;
        let md = file.metadata().map_err(Errno::from)?;
        let kind = exposed_kind(&md).ok_or(Errno::EIO)?;
        let ino = lock(&self.inodes).intern(BackingKey::of(&md), rel);
        Ok((file_attr(ino, kind, &md), file))
    }

    pub(super) fn remove_file(&self, parent: INodeNo, name: &OsStr) -> Result<(), Errno> {
        let rel = self.child(parent, name)?;
        let md = self.backing.lstat(&rel).map_err(Errno::from)?;
        if md.is_dir() {
            return Err(Errno::EISDIR);
        }
        self.backing.unlink(&rel).map_err(Errno::from)?;
        if md.nlink() <= 1 {
            lock(&self.inodes).retire(BackingKey::of(&md));
        }
        Ok(())
    }
}

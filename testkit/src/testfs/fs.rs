//! The filesystem itself: what each FUSE request does, and what the server
//! tells the kernel at OPEN.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, Permissions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use fuser::{
    BackingId, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use log::{debug, error, warn};

use super::{
    backing::{
        backing_hint, create_backing, exposed_kind, file_attr, read_full_at, statvfs, AttrChanges,
        Beneath,
    },
    tables::{BackingKey, HandleTable, InodeTable, Node},
    TestfsArgs,
};
use crate::lock;

/// How long the kernel may cache attributes and directory entries.
///
/// Short, because the backing directory may also be changed behind the mount's back (a test
/// that inspects or resets the tmpfs directly), and long enough that a write loop is not
/// interleaved with a `GETATTR` per call.
const TTL: Duration = Duration::from_secs(1);

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

impl Filesystem for TestFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        if self.policy.io == IoMode::DirectIo {
            return Ok(());
        }
        config
            .add_capabilities(InitFlags::FUSE_PASSTHROUGH)
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "the kernel ({}) does not offer FUSE passthrough: it needs Linux 6.9 or \
                         newer built with CONFIG_FUSE_PASSTHROUGH=y; use --direct-io to run \
                         without passthrough",
                        fuselock_base::procfs::kernel_release()
                    ),
                )
            })?;
        // Backing files on tmpfs or ext4 have stack depth 0; 1 is enough and still lets this
        // mount be a lower layer of an overlayfs.
        config.set_max_stack_depth(1).map_err(|max| {
            io::Error::other(format!("kernel refused max_stack_depth 1 (limit {max})"))
        })?;
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup_entry(parent, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(err) => reply.error(err),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(err) => reply.error(err),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let changes = AttrChanges {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        match self.set_attr(ino, fh, &changes) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(err) => reply.error(err),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.dir_entries(ino) {
            Ok(entries) => entries,
            Err(err) => return reply.error(err),
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (index, (child, kind, name)) in entries.iter().enumerate().skip(skip) {
            // The offset of an entry is the offset the next readdir resumes from.
            if reply.add(INodeNo(*child), index as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let opened = self
            .open_existing(ino, flags.0)
            .and_then(|file| self.register(ino.0, file, |file| reply.open_backing(file)));
        let fopen = self.policy.fopen_flags_for(flags.0);
        debug!("open ino {} flags {:#x} -> {:?}", ino.0, flags.0, fopen);
        match opened {
            Ok(Opened::Passthrough { fh, id }) => reply.opened_passthrough(fh, fopen, &id),
            Ok(Opened::Direct { fh }) => reply.opened(fh, fopen),
            Err(err) => reply.error(err),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let created = self
            .create_file(req, parent, name, mode, umask, flags)
            .and_then(|(attr, file)| {
                let opened = self.register(attr.ino.0, file, |file| reply.open_backing(file))?;
                Ok((attr, opened))
            });
        let fopen = self.policy.fopen_flags();
        match created {
            Ok((attr, Opened::Passthrough { fh, id })) => {
                reply.created_passthrough(&TTL, &attr, Generation(0), fh, fopen, &id)
            }
            Ok((attr, Opened::Direct { fh })) => {
                reply.created(&TTL, &attr, Generation(0), fh, fopen)
            }
            Err(err) => reply.error(err),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove_file(parent, name) {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(err),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        let result = self
            .handle_file(fh)
            .and_then(|file| read_full_at(&file, offset, size).map_err(Errno::from));
        match result {
            Ok(data) => reply.data(&data),
            Err(err) => reply.error(err),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        // One pwrite per WRITE request; a short count goes back to the kernel as it is.
        let result = self.handle_file(fh).and_then(|file| {
            let written = file.write_at(data, offset).map_err(Errno::from)?;
            u32::try_from(written).map_err(|_| Errno::EIO)
        });
        match result {
            Ok(written) => reply.written(written),
            Err(err) => reply.error(err),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes go straight to the backing file; there is nothing buffered to flush.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let released = lock(&self.handles).remove(fh.0);
        if released.is_none() {
            warn!("release of unknown file handle {}", fh.0);
        }
        // Dropped here, outside the lock: closes the descriptor and maybe the backing ID.
        drop(released);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.handle_file(fh).and_then(|file| {
            let synced = if datasync {
                file.sync_data()
            } else {
                file.sync_all()
            };
            synced.map_err(Errno::from)
        });
        match result {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(err),
        }
    }

    // No xattrs or SEEK_DATA/SEEK_HOLE. ENOSYS (rather than fuser's default, which answers the
    // same but logs a warning) makes the kernel stop asking for the rest of the mount.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: ReplyLseek,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match statvfs(&self.backing.path) {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                u32::try_from(st.f_bsize).unwrap_or(4096),
                u32::try_from(st.f_namemax).unwrap_or(255),
                u32::try_from(st.f_frsize).unwrap_or(4096),
            ),
            Err(err) => reply.error(Errno::from(err)),
        }
    }
}

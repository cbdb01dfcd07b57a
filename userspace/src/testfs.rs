//! `fuselock testfs`: a small FUSE server that exposes a backing directory through kernel
//! passthrough (or, with `--direct-io`, through classic FUSE direct I/O).
//!
//! It exists to give the lock probes something to look at: a FUSE inode whose writes the
//! kernel either hands straight to a backing file (`FOPEN_PASSTHROUGH`) or forwards to this
//! server (`FOPEN_DIRECT_IO`). It is deliberately simple: regular files and directories only,
//! no rename, no links, no xattrs, no locks.
//!
//! Every request is answered from the backing directory itself, so attributes (above all the
//! size) are never invented: the kernel's passthrough write path updates `i_size` on its own,
//! and a `getattr` must agree with it.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context as _};
use fuser::{
    BackingId, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, Session, SessionACL, SessionUnmounter, TimeOrNow,
    WriteFlags,
};
use log::{debug, error, warn};

/// How long the kernel may cache attributes and directory entries.
///
/// Short, because the backing directory may also be changed behind the mount's back (a test
/// that inspects or resets the tmpfs directly), and long enough that a write loop is not
/// interleaved with a `GETATTR` per call.
const TTL: Duration = Duration::from_secs(1);

/// Name shown as the mount's source and subtype in `/proc/mounts` (`fuse.fuselock-testfs`).
const FS_NAME: &str = "fuselock-testfs";

/// How often the main thread checks whether the session ended on its own (external `umount`).
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// `CAP_SYS_ADMIN`'s bit in `/proc/self/status`'s `CapEff` mask.
const CAP_SYS_ADMIN_BIT: u32 = 21;

/// Mount a FUSE passthrough view of a directory until interrupted.
#[derive(clap::Args, Debug, Clone)]
pub struct TestfsArgs {
    /// Directory whose files the mount exposes (e.g. a tmpfs).
    #[arg(long)]
    pub backing: PathBuf,
    /// Where to mount: an existing directory; neither it nor BACKING may contain the other.
    #[arg(long)]
    pub mountpoint: PathBuf,
    /// Ask for parallel direct writes (FOPEN_PARALLEL_DIRECT_WRITES) on every open.
    ///
    /// Stock kernels keep this flag only next to FOPEN_DIRECT_IO, so it takes effect with
    /// --direct-io; on passthrough opens they drop it (unless patched to honour it there).
    #[arg(long)]
    pub parallel: bool,
    /// Reply FOPEN_DIRECT_IO without passthrough: reads and writes then reach this server,
    /// which does them with pread/pwrite on the backing file. Works without passthrough support.
    #[arg(long)]
    pub direct_io: bool,
    /// With --direct-io, answer read-only opens without FOPEN_DIRECT_IO: they read through the
    /// page cache, and while one is open the kernel keeps the inode in cached I/O mode, which
    /// makes every direct write to it take the lock exclusively.
    #[arg(long, requires = "direct_io")]
    pub cached_readers: bool,
    /// Let users other than root use the mount (mount option allow_other).
    #[arg(long)]
    pub allow_other: bool,
    /// Threads serving FUSE requests. Only matters with --direct-io, where I/O reaches the server.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub server_threads: u16,
}

/// Mounts the filesystem and serves it until SIGINT, SIGTERM or SIGHUP arrives, or until
/// someone else unmounts it; then unmounts cleanly.
///
/// Prints `testfs: mounted BACKING on MOUNTPOINT (flags ...)` on stdout once the kernel has
/// completed the FUSE handshake, so scripts can wait for that line before using the mount.
pub fn run(args: &TestfsArgs) -> anyhow::Result<()> {
    let policy = OpenPolicy::from_args(args);
    let (backing, mountpoint) = check_paths(&args.backing, &args.mountpoint)?;
    check_environment()?;

    // Block the signals before any thread exists, so that fuser's threads inherit the mask
    // and the signals stay queued for `sigtimedwait` in this thread.
    let signals = BlockedSignals::block(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
        .context("cannot block SIGINT/SIGTERM/SIGHUP")?;

    let fs = TestFs::new(backing.clone(), policy)?;
    let stats = Arc::clone(&fs.stats);
    let config = mount_config(args);
    let mut session = Session::new(fs, &mountpoint, &config)
        .with_context(|| format!("cannot mount FUSE filesystem on {}", mountpoint.display()))?;
    announce(&format!(
        "testfs: mounted {} on {} (flags {})",
        backing.display(),
        mountpoint.display(),
        policy.describe()
    ))?;

    // Not `Session::spawn`: its handle unmounts again on drop even after a clean unmount (fuser
    // 0.18 counts a dead connection as mounted), warning about EINVAL. The unmounter instead
    // hands the mount over to the one unmount done here.
    let unmounter = session.unmount_callable();
    let server = thread::Builder::new()
        .name("testfs-session".to_owned())
        .spawn(move || session.run())
        .context("cannot start the FUSE session thread")?;
    let ending = wait_for_end(&signals, &server)?;
    let result = shut_down(server, unmounter, &mountpoint, &signals, ending);
    // With passthrough both counts are 0: the kernel did all file I/O itself.
    let announced = announce(&format!(
        "testfs: unmounted {} (requests served in userspace: {} reads, {} writes)",
        mountpoint.display(),
        stats.reads.load(Ordering::Relaxed),
        stats.writes.load(Ordering::Relaxed),
    ));
    result.and(announced)
}

/// What the server tells the kernel in every OPEN and CREATE reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OpenPolicy {
    io: IoMode,
    /// Ask for `FOPEN_PARALLEL_DIRECT_WRITES`.
    parallel: bool,
    /// In `DirectIo` mode, read-only opens use the page cache.
    cached_readers: bool,
}

/// Where file I/O goes once a file is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IoMode {
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
    fn from_args(args: &TestfsArgs) -> Self {
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
    fn fopen_flags_for(self, open_flags: i32) -> FopenFlags {
        let read_only = open_flags & libc::O_ACCMODE == libc::O_RDONLY;
        if self.io == IoMode::DirectIo && self.cached_readers && read_only {
            // No FOPEN_DIRECT_IO: `fuse_file_io_open()` puts the inode in cached I/O mode.
            return FopenFlags::empty();
        }
        self.fopen_flags()
    }

    /// The `open_flags` every open gets but cached readers, `FOPEN_PASSTHROUGH` included.
    fn fopen_flags(self) -> FopenFlags {
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
    fn describe(self) -> String {
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
fn backing_open_flags(kernel_flags: i32) -> i32 {
    const KEPT: i32 = libc::O_ACCMODE | libc::O_TRUNC | libc::O_SYNC | libc::O_DSYNC;
    (kernel_flags & KEPT) | libc::O_NOFOLLOW
}

/// Identity of a backing inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct BackingKey {
    dev: u64,
    ino: u64,
}

impl BackingKey {
    fn of(md: &Metadata) -> Self {
        Self {
            dev: md.dev(),
            ino: md.ino(),
        }
    }
}

/// One FUSE inode: which backing inode it stands for and where that was last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    key: BackingKey,
    /// Path relative to the backing root; empty for the root.
    rel: PathBuf,
}

/// Stable FUSE inode numbers for backing inodes.
///
/// Numbers are assigned rather than copied from `st_ino`: FUSE reserves 1 for the root, and a
/// backing tree may span devices. A number stays bound to its backing inode for the life of the
/// mount. Paths are always re-checked against the key before use, so a name that now refers to
/// a different file is reported as gone rather than silently served. FORGET is ignored: the
/// table only grows, which suits the small trees this serves.
#[derive(Debug)]
struct InodeTable {
    by_key: HashMap<BackingKey, u64>,
    nodes: HashMap<u64, Node>,
    next: u64,
}

impl InodeTable {
    fn new(root: BackingKey) -> Self {
        let root_ino = INodeNo::ROOT.0;
        Self {
            by_key: HashMap::from([(root, root_ino)]),
            nodes: HashMap::from([(
                root_ino,
                Node {
                    key: root,
                    rel: PathBuf::new(),
                },
            )]),
            next: root_ino + 1,
        }
    }

    /// The FUSE inode for `key`, assigning one if it is new. A known inode seen under another
    /// name (a hard link) is remembered under the newest name.
    fn intern(&mut self, key: BackingKey, rel: PathBuf) -> u64 {
        if let Some(&ino) = self.by_key.get(&key) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.rel = rel;
            }
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_key.insert(key, ino);
        self.nodes.insert(ino, Node { key, rel });
        ino
    }

    fn node(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    /// The backing inode is gone (last link removed), so the backing filesystem may reuse its
    /// number: a later file with the same key must get a new FUSE inode. The old FUSE inode keeps
    /// its node, so handles opened before the unlink still resolve.
    fn retire(&mut self, key: BackingKey) {
        self.by_key.remove(&key);
    }
}

/// One open file: the server's descriptor and, with passthrough, the kernel's backing ID.
#[derive(Debug)]
struct OpenFile<B> {
    ino: u64,
    file: Arc<File>,
    backing: Option<Arc<B>>,
}

/// Open file handles, and the backing IDs they share.
///
/// The kernel refuses a passthrough open (`EBUSY`) whose backing ID differs from the one already
/// attached to the same FUSE inode, so all opens of an inode share one ID for as long as any of
/// them is open. Each handle holds a strong reference; the ID is closed (`BackingId`'s `Drop`)
/// when the last handle is released. Generic so the bookkeeping can be tested without a kernel.
#[derive(Debug)]
struct HandleTable<B> {
    next_fh: u64,
    open: HashMap<u64, OpenFile<B>>,
    backing_by_ino: HashMap<u64, Weak<B>>,
}

impl<B> HandleTable<B> {
    fn new() -> Self {
        Self {
            next_fh: 1,
            open: HashMap::new(),
            backing_by_ino: HashMap::new(),
        }
    }

    /// The backing ID of `ino`: the live one if another handle holds it, else a new one.
    fn backing_for(
        &mut self,
        ino: u64,
        create: impl FnOnce() -> io::Result<B>,
    ) -> io::Result<Arc<B>> {
        if let Some(live) = self.backing_by_ino.get(&ino).and_then(Weak::upgrade) {
            return Ok(live);
        }
        let fresh = Arc::new(create()?);
        self.backing_by_ino.insert(ino, Arc::downgrade(&fresh));
        Ok(fresh)
    }

    fn insert(&mut self, ino: u64, file: File, backing: Option<Arc<B>>) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        let file = Arc::new(file);
        self.open.insert(fh, OpenFile { ino, file, backing });
        fh
    }

    fn file(&self, fh: u64) -> Option<Arc<File>> {
        self.open.get(&fh).map(|open| Arc::clone(&open.file))
    }

    /// Any open descriptor of `ino`.
    fn file_of_inode(&self, ino: u64) -> Option<Arc<File>> {
        self.open
            .values()
            .find(|open| open.ino == ino)
            .map(|open| Arc::clone(&open.file))
    }

    /// Forgets `fh`. Dropping the returned value closes the descriptor and, for the inode's last
    /// handle, the backing ID; do that after releasing the table's lock.
    fn remove(&mut self, fh: u64) -> Option<OpenFile<B>> {
        let open = self.open.remove(&fh)?;
        if open
            .backing
            .as_ref()
            .is_some_and(|b| Arc::strong_count(b) == 1)
        {
            self.backing_by_ino.remove(&open.ino);
        }
        Some(open)
    }
}

/// Requests that reached the server's data path, reported at exit: with passthrough both stay 0.
#[derive(Debug, Default)]
struct Stats {
    reads: AtomicU64,
    writes: AtomicU64,
}

/// A freshly opened handle, as the reply needs it.
enum Opened {
    Passthrough { fh: FileHandle, id: Arc<BackingId> },
    Direct { fh: FileHandle },
}

struct TestFs {
    /// The backing directory, every path resolved beneath it.
    backing: Beneath,
    policy: OpenPolicy,
    inodes: Mutex<InodeTable>,
    handles: Mutex<HandleTable<BackingId>>,
    stats: Arc<Stats>,
}

impl TestFs {
    fn new(backing: PathBuf, policy: OpenPolicy) -> anyhow::Result<Self> {
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
    fn node(&self, ino: INodeNo) -> Result<Node, Errno> {
        lock(&self.inodes).node(ino.0).cloned().ok_or(Errno::ENOENT)
    }

    /// `lstat` of `ino`'s path, refused if the name now refers to another backing inode.
    fn stat_node(&self, ino: INodeNo) -> Result<(Node, PathBuf, Metadata), Errno> {
        let node = self.node(ino)?;
        let md = self.backing.lstat(&node.rel).map_err(Errno::from)?;
        if BackingKey::of(&md) != node.key {
            return Err(Errno::ENOENT);
        }
        let rel = node.rel.clone();
        Ok((node, rel, md))
    }

    /// Path, relative to the backing directory, of the entry `name` in directory `parent`.
    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        let (node, _rel, md) = self.stat_node(parent)?;
        if !md.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(node.rel.join(name))
    }

    fn handle_file(&self, fh: FileHandle) -> Result<Arc<File>, Errno> {
        lock(&self.handles).file(fh.0).ok_or(Errno::EBADF)
    }

    fn lookup_entry(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        let rel = self.child(parent, name)?;
        let md = self.backing.lstat(&rel).map_err(Errno::from)?;
        let kind = exposed_kind(&md).ok_or(Errno::ENOENT)?;
        let ino = lock(&self.inodes).intern(BackingKey::of(&md), rel);
        Ok(file_attr(ino, kind, &md))
    }

    fn attr(&self, ino: INodeNo, fh: Option<FileHandle>) -> Result<FileAttr, Errno> {
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

    fn set_attr(
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
    fn open_for_setattr(&self, ino: INodeNo, truncating: bool) -> Result<File, Errno> {
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
    fn dir_entries(&self, ino: INodeNo) -> Result<Vec<(u64, FileType, OsString)>, Errno> {
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
    fn open_existing(&self, ino: INodeNo, flags: i32) -> Result<File, Errno> {
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
    fn register(
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

    fn create_file(
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

    fn remove_file(&self, parent: INodeNo, name: &OsStr) -> Result<(), Errno> {
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
                        kernel_release()
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

/// The attribute changes of one SETATTR request that this filesystem applies.
#[derive(Debug)]
struct AttrChanges {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
}

impl AttrChanges {
    fn file_times(&self) -> Option<std::fs::FileTimes> {
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
fn exposed_kind(md: &Metadata) -> Option<FileType> {
    let ft = md.file_type();
    if ft.is_file() {
        Some(FileType::RegularFile)
    } else if ft.is_dir() {
        Some(FileType::Directory)
    } else {
        None
    }
}

fn file_attr(ino: u64, kind: FileType, md: &Metadata) -> FileAttr {
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
fn unix_time(secs: i64, nsecs: i64) -> SystemTime {
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
struct Beneath {
    root: OwnedFd,
    /// For messages and statvfs only; never opened again.
    path: PathBuf,
}

impl Beneath {
    fn root(path: PathBuf) -> anyhow::Result<Beneath> {
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
    fn open(&self, rel: &Path, flags: i32, mode: u32) -> io::Result<File> {
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
    fn lstat(&self, rel: &Path) -> io::Result<Metadata> {
        self.open(rel, libc::O_PATH | libc::O_NOFOLLOW, 0)?
            .metadata()
    }

    /// The names in directory `rel` (`.` and `..` left out).
    fn names(&self, rel: &Path) -> io::Result<Vec<OsString>> {
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
    fn unlink(&self, rel: &Path) -> io::Result<()> {
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

/// Creates (or, unless `O_EXCL` was asked for, opens) a backing file for CREATE.
///
/// Creating with `O_EXCL` first tells whether this call made the file; only then are its mode
/// (our own umask would otherwise narrow it) and owner (the caller, not the root server) set.
fn create_backing(
    backing: &Beneath,
    path: &Path,
    kernel_flags: i32,
    mode: u32,
    owner: (u32, u32),
) -> io::Result<File> {
    let base = backing_open_flags(kernel_flags);
    match backing.open(path, base | libc::O_CREAT | libc::O_EXCL, mode) {
        Ok(file) => {
            file.set_permissions(Permissions::from_mode(mode))?;
            std::os::unix::fs::fchown(&file, Some(owner.0), Some(owner.1))?;
            Ok(file)
        }
        Err(err)
            if err.kind() == io::ErrorKind::AlreadyExists && kernel_flags & libc::O_EXCL == 0 =>
        {
            // An existing file: truncated (O_TRUNC) only once opened beneath the root.
            let file = backing.open(path, base & !libc::O_TRUNC, 0)?;
            if !file.metadata()?.is_file() {
                return Err(io::Error::from_raw_os_error(libc::EISDIR));
            }
            if base & libc::O_TRUNC != 0 {
                file.set_len(0)?;
            }
            Ok(file)
        }
        Err(err) => Err(err),
    }
}

/// Reads `size` bytes at `offset`, fewer only at end of file (FUSE's READ contract).
fn read_full_at(file: &File, offset: u64, size: u32) -> io::Result<Vec<u8>> {
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

fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
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
fn backing_hint(err: &io::Error) -> &'static str {
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

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown version".to_owned())
}

/// Canonical backing and mount paths, checked so the server never serves its own mount.
fn check_paths(backing: &Path, mountpoint: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let backing = backing
        .canonicalize()
        .with_context(|| format!("backing directory {}", backing.display()))?;
    let mountpoint = mountpoint
        .canonicalize()
        .with_context(|| format!("mountpoint {}", mountpoint.display()))?;
    ensure!(
        backing.is_dir(),
        "backing path {} is not a directory",
        backing.display()
    );
    ensure!(
        mountpoint.is_dir(),
        "mountpoint {} is not a directory",
        mountpoint.display()
    );
    // The server reaches backing files by path. If either directory contains the other, some
    // backing path leads into the mount, i.e. back to the server itself, which then deadlocks
    // waiting for its own answer.
    ensure!(
        !backing.starts_with(&mountpoint) && !mountpoint.starts_with(&backing),
        "backing directory {} and mountpoint {} overlap: the server would end up serving \
         itself; use two separate directories",
        backing.display(),
        mountpoint.display()
    );
    Ok((backing, mountpoint))
}

/// Fails early, with advice, where mounting could only fail obscurely.
fn check_environment() -> anyhow::Result<()> {
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse does not exist: load the module (`modprobe fuse`) or create the node (`mknod /dev/fuse c 10 229`)");
    }
    let status =
        std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    if cap_sys_admin_from_status(&status) != Some(true) {
        bail!(
            "testfs needs CAP_SYS_ADMIN (run it as root): mount(2) of a FUSE filesystem and the \
             FUSE_DEV_IOC_BACKING_OPEN ioctl for passthrough both require it"
        );
    }
    Ok(())
}

/// Whether `CapEff` in a `/proc/<pid>/status` text has `CAP_SYS_ADMIN`; `None` if absent.
fn cap_sys_admin_from_status(status: &str) -> Option<bool> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    let mask = u64::from_str_radix(hex, 16).ok()?;
    Some(mask & (1 << CAP_SYS_ADMIN_BIT) != 0)
}

fn mount_config(args: &TestfsArgs) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(FS_NAME.to_owned()),
        // fuser passes Subtype only to fusermount; as root the kernel needs it as a raw option.
        MountOption::CUSTOM(format!("subtype={FS_NAME}")),
        MountOption::DefaultPermissions,
    ];
    config.acl = if args.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(usize::from(args.server_threads));
    config
}

/// Prints a status line on stdout and flushes it at once: scripts wait for these lines.
fn announce(line: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}").context("cannot write to stdout")?;
    out.flush().context("cannot flush stdout")
}

/// Why the serving loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Signal(libc::c_int),
    /// The session thread ended by itself, i.e. the filesystem was unmounted from outside.
    SessionEnded,
}

/// The session thread; it returns when the kernel ends the connection (at unmount).
type Server = JoinHandle<io::Result<()>>;

fn wait_for_end(signals: &BlockedSignals, server: &Server) -> anyhow::Result<Ending> {
    loop {
        if server.is_finished() {
            return Ok(Ending::SessionEnded);
        }
        if let Some(signal) = signals.wait(POLL_INTERVAL)? {
            return Ok(Ending::Signal(signal));
        }
    }
}

/// Unmounts (unless that already happened) and waits for the session thread.
fn shut_down(
    server: Server,
    mut unmounter: SessionUnmounter,
    mountpoint: &Path,
    signals: &BlockedSignals,
    ending: Ending,
) -> anyhow::Result<()> {
    if let Ending::Signal(signal) = ending {
        debug!("signal {signal}: unmounting {}", mountpoint.display());
        if unmount(&mut unmounter, mountpoint)? == Unmounted::Lazily {
            announce(&format!(
                "testfs: {} is busy; detached it, serving open files until they are closed \
                 (signal again to quit now)",
                mountpoint.display()
            ))?;
            while !server.is_finished() {
                if signals.wait(POLL_INTERVAL)?.is_some() {
                    bail!("interrupted while files were still open on the detached mount");
                }
            }
        }
    }
    // After the unmount the kernel ends the connection and the session loop returns.
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the FUSE session thread panicked"))?
        .context("the FUSE session ended with an error")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unmounted {
    Now,
    /// The mount was busy and is detached; it goes away when its last file is closed.
    Lazily,
}

/// Unmounts through fuser (which then forgets the mount), or detaches it if files are open.
fn unmount(unmounter: &mut SessionUnmounter, mountpoint: &Path) -> anyhow::Result<Unmounted> {
    match unmounter.unmount() {
        Ok(()) => Ok(Unmounted::Now),
        Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
            detach(mountpoint)
                .with_context(|| format!("cannot detach {}", mountpoint.display()))?;
            Ok(Unmounted::Lazily)
        }
        // Someone unmounted it between the signal and now.
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => Ok(Unmounted::Now),
        Err(err) => Err(err).with_context(|| format!("cannot unmount {}", mountpoint.display())),
    }
}

/// `umount2(MNT_DETACH)`: the mount leaves the namespace now and ends with its last open file.
fn detach(mountpoint: &Path) -> io::Result<()> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Signals blocked in the calling thread (and in threads it spawns) for synchronous waiting;
/// the previous mask comes back on drop.
struct BlockedSignals {
    set: libc::sigset_t,
    previous: libc::sigset_t,
}

impl BlockedSignals {
    fn block(signals: &[libc::c_int]) -> io::Result<Self> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set it is given a valid pointer to.
        if unsafe { libc::sigemptyset(set.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sigemptyset succeeded, so `set` is initialised.
        let mut set = unsafe { set.assume_init() };
        for &signal in signals {
            // SAFETY: `set` is an initialised signal set; invalid numbers are reported as EINVAL.
            if unsafe { libc::sigaddset(&mut set, signal) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let mut previous = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: `set` is initialised, and `previous` is valid for writes of one sigset_t, which
        // pthread_sigmask fills in on success.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, previous.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: pthread_sigmask succeeded, so it stored the old mask in `previous`.
        let previous = unsafe { previous.assume_init() };
        Ok(Self { set, previous })
    }

    /// Waits up to `timeout` for one of the blocked signals; `None` if none came.
    fn wait(&self, timeout: Duration) -> anyhow::Result<Option<libc::c_int>> {
        let timeout = libc::timespec {
            // `time_t` is not named: the alias is deprecated on musl (it is i64 on x86_64 either way).
            tv_sec: timeout.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
        };
        // SAFETY: `self.set` and `timeout` are initialised and outlive the call; a null siginfo
        // pointer is allowed.
        let signal = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &timeout) };
        if signal >= 0 {
            return Ok(Some(signal));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(err).context("sigtimedwait failed"),
        }
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        // SAFETY: `previous` is the mask pthread_sigmask returned when the signals were blocked.
        let rc = unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, std::ptr::null_mut())
        };
        if rc != 0 {
            warn!(
                "cannot restore the signal mask: {}",
                io::Error::from_raw_os_error(rc)
            );
        }
    }
}

/// Locks `mutex`, ignoring poisoning: every critical section leaves its table consistent
/// (insert/remove only), so a panic elsewhere does not make the data unusable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(parallel: bool, direct_io: bool) -> TestfsArgs {
        TestfsArgs {
            backing: PathBuf::from("/b"),
            mountpoint: PathBuf::from("/m"),
            parallel,
            direct_io,
            cached_readers: false,
            allow_other: false,
            server_threads: 1,
        }
    }

    #[test]
    fn cached_readers_are_read_only_opens_without_direct_io() {
        let policy = OpenPolicy::from_args(&TestfsArgs {
            cached_readers: true,
            ..args(true, true)
        });
        assert_eq!(policy.fopen_flags_for(libc::O_RDONLY), FopenFlags::empty());
        for writer in [
            libc::O_WRONLY,
            libc::O_RDWR,
            libc::O_WRONLY | libc::O_DIRECT,
        ] {
            assert_eq!(policy.fopen_flags_for(writer).bits(), 0x41, "{writer:#x}");
        }
        // Without the option a reader is as direct as anyone.
        let plain = OpenPolicy::from_args(&args(true, true));
        assert_eq!(plain.fopen_flags_for(libc::O_RDONLY).bits(), 0x41);
        assert!(policy.describe().ends_with("read-only opens: page cache"));
    }

    #[test]
    fn fopen_flags_follow_the_options() {
        let flags = |parallel, direct_io| {
            OpenPolicy::from_args(&args(parallel, direct_io))
                .fopen_flags()
                .bits()
        };
        assert_eq!(flags(false, false), 0x80);
        assert_eq!(flags(true, false), 0xc0);
        assert_eq!(flags(false, true), 0x01);
        assert_eq!(flags(true, true), 0x41);
    }

    #[test]
    fn direct_io_never_asks_for_passthrough() {
        // ReplyOpen::opened panics on FOPEN_PASSTHROUGH, so this must hold for every combination.
        for parallel in [false, true] {
            let policy = OpenPolicy::from_args(&args(parallel, true));
            assert!(!policy.fopen_flags().contains(FopenFlags::FOPEN_PASSTHROUGH));
        }
    }

    #[test]
    fn describe_names_every_flag() {
        let policy = OpenPolicy::from_args(&args(true, false));
        assert_eq!(
            policy.describe(),
            "0xc0 = FOPEN_PARALLEL_DIRECT_WRITES|FOPEN_PASSTHROUGH"
        );
    }

    #[test]
    fn backing_flags_keep_access_mode_and_sync_only() {
        let kernel = libc::O_WRONLY
            | libc::O_DIRECT
            | libc::O_APPEND
            | libc::O_CREAT
            | libc::O_EXCL
            | libc::O_NOCTTY
            | libc::O_DSYNC
            | libc::O_LARGEFILE;
        assert_eq!(
            backing_open_flags(kernel),
            libc::O_WRONLY | libc::O_DSYNC | libc::O_NOFOLLOW
        );
        assert_eq!(
            backing_open_flags(libc::O_RDWR | libc::O_TRUNC),
            libc::O_RDWR | libc::O_TRUNC | libc::O_NOFOLLOW
        );
        assert_eq!(backing_open_flags(libc::O_RDONLY), libc::O_NOFOLLOW);
    }

    fn key(ino: u64) -> BackingKey {
        BackingKey { dev: 7, ino }
    }

    #[test]
    fn inode_table_starts_with_the_root() {
        let table = InodeTable::new(key(2));
        let root = table.node(1).expect("root node");
        assert_eq!(root.key, key(2));
        assert_eq!(root.rel, PathBuf::new());
    }

    #[test]
    fn inode_numbers_are_stable_per_backing_inode() {
        let mut table = InodeTable::new(key(2));
        let a = table.intern(key(10), "a".into());
        let b = table.intern(key(11), "b".into());
        assert_ne!(a, b);
        assert!(a > 1 && b > 1);
        assert_eq!(table.intern(key(10), "a".into()), a);
        // Same backing inode under another name (hard link): same number, newest name.
        assert_eq!(table.intern(key(10), "dir/a2".into()), a);
        assert_eq!(table.node(a).map(|n| n.rel.clone()), Some("dir/a2".into()));
        // Same st_ino on another device is another file.
        assert_ne!(table.intern(BackingKey { dev: 8, ino: 10 }, "c".into()), a);
    }

    #[test]
    fn retired_backing_inodes_get_new_numbers() {
        let mut table = InodeTable::new(key(2));
        let old = table.intern(key(10), "a".into());
        table.retire(key(10));
        // The old FUSE inode still resolves (open handles may refer to it)...
        assert_eq!(table.node(old).map(|n| n.key), Some(key(10)));
        // ...but a reused backing inode number is a new file.
        let new = table.intern(key(10), "a".into());
        assert_ne!(new, old);
    }

    #[derive(Debug)]
    struct FakeBacking(u32);

    fn scratch_file() -> File {
        File::open("/dev/null").expect("open /dev/null")
    }

    #[test]
    fn handles_share_one_backing_per_inode() {
        let mut table = HandleTable::<FakeBacking>::new();
        let first = table.backing_for(5, || Ok(FakeBacking(1))).expect("create");
        let fh1 = table.insert(5, scratch_file(), Some(Arc::clone(&first)));
        let second = table
            .backing_for(5, || panic!("must reuse the live backing"))
            .expect("reuse");
        assert!(Arc::ptr_eq(&first, &second));
        let fh2 = table.insert(5, scratch_file(), Some(second));
        assert_ne!(fh1, fh2);
        drop(first);

        // Releasing one handle keeps the ID for the other.
        drop(table.remove(fh1).expect("fh1 open"));
        let again = table
            .backing_for(5, || panic!("still held by fh2"))
            .expect("reuse");
        assert_eq!(again.0, 1);
        drop(again);

        // Releasing the last one drops it; the next open creates a new one.
        let last = table.remove(fh2).expect("fh2 open");
        assert!(table.backing_by_ino.is_empty());
        drop(last);
        let fresh = table.backing_for(5, || Ok(FakeBacking(2))).expect("create");
        assert_eq!(fresh.0, 2);
    }

    #[test]
    fn backing_paths_never_leave_the_backing_directory() {
        let base = std::env::temp_dir().join(format!("beneath-{}", std::process::id()));
        let backing = base.join("backing");
        std::fs::create_dir_all(backing.join("dir")).expect("mkdir");
        let outside = base.join("outside");
        std::fs::write(&outside, b"keep").expect("write");
        std::fs::write(backing.join("dir/file"), b"in").expect("write");
        std::os::unix::fs::symlink(&outside, backing.join("dir/link")).expect("symlink");
        std::os::unix::fs::symlink(&base, backing.join("up")).expect("symlink");
        let b = Beneath::root(backing.clone()).expect("open backing");
        let rw = libc::O_RDWR | libc::O_TRUNC;
        assert!(b.open(Path::new("dir/file"), libc::O_RDONLY, 0).is_ok());
        let mut names = b.names(Path::new("dir")).expect("list");
        names.sort();
        assert_eq!(names, ["file", "link"]);
        assert!(
            b.names(Path::new("up")).is_err(),
            "listed through a symlink"
        );
        for escape in ["dir/link", "up/outside", "../outside", "dir/../../outside"] {
            let err = b.open(Path::new(escape), rw, 0).expect_err(escape);
            assert!(
                matches!(err.raw_os_error(), Some(libc::ELOOP | libc::EXDEV)),
                "{escape}: {err}"
            );
        }
        assert!(b.unlink(Path::new("up/outside")).is_err());
        let created = create_backing(&b, Path::new("up/new"), libc::O_WRONLY, 0o644, (0, 0));
        assert!(created.is_err());
        assert_eq!(std::fs::read(&outside).expect("read"), b"keep");
        assert!(!base.join("new").exists());
        // An existing file opened with O_TRUNC by CREATE is truncated only
        // after it is found beneath the root.
        let f = create_backing(
            &b,
            Path::new("dir/file"),
            libc::O_WRONLY | libc::O_TRUNC,
            0o644,
            (0, 0),
        )
        .expect("existing");
        assert_eq!(f.metadata().expect("stat").len(), 0);
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn failed_backing_creation_leaves_no_trace() {
        let mut table = HandleTable::<FakeBacking>::new();
        let err = table
            .backing_for(5, || Err(io::Error::from_raw_os_error(libc::EPERM)))
            .expect_err("creation fails");
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        assert!(table.backing_by_ino.is_empty());
        assert!(table.open.is_empty());
    }

    #[test]
    fn unknown_handles_are_reported() {
        let mut table = HandleTable::<FakeBacking>::new();
        assert!(table.file(42).is_none());
        assert!(table.remove(42).is_none());
        let fh = table.insert(3, scratch_file(), None);
        assert!(table.file(fh).is_some());
        assert!(table.file_of_inode(3).is_some());
        assert!(table.file_of_inode(4).is_none());
        assert!(table.remove(fh).is_some());
        assert!(table.file(fh).is_none());
    }

    #[test]
    fn cap_sys_admin_is_read_from_cap_eff() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n";
        assert_eq!(cap_sys_admin_from_status(status), Some(true));
        let status = "CapEff:\t0000000000000000\n";
        assert_eq!(cap_sys_admin_from_status(status), Some(false));
        assert_eq!(cap_sys_admin_from_status("Name:\tx\n"), None);
    }

    #[test]
    fn unix_time_handles_both_sides_of_the_epoch() {
        assert_eq!(unix_time(0, 0), UNIX_EPOCH);
        assert_eq!(unix_time(5, 7), UNIX_EPOCH + Duration::new(5, 7));
        assert_eq!(
            unix_time(-5, 7),
            UNIX_EPOCH - Duration::from_secs(5) + Duration::from_nanos(7)
        );
    }

    #[test]
    fn mount_paths_must_not_nest_backing_in_mountpoint() {
        let base = std::env::temp_dir().join(format!("testfs-paths-{}", std::process::id()));
        let inner = base.join("inner");
        std::fs::create_dir_all(&inner).expect("mkdir");
        let sibling = base.join("sibling");
        std::fs::create_dir_all(&sibling).expect("mkdir");
        assert!(check_paths(&inner, &base).is_err());
        assert!(check_paths(&base, &inner).is_err());
        assert!(check_paths(&base, &base).is_err());
        assert!(check_paths(&inner, &sibling).is_ok());
        assert!(check_paths(&base.join("missing"), &sibling).is_err());
        std::fs::remove_dir_all(&base).expect("cleanup");
    }
}

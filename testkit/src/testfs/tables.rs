//! The server's bookkeeping: FUSE inode numbers for backing inodes, and
//! open handles with the backing IDs they share.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use fuser::INodeNo;

/// Identity of a backing inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct BackingKey {
    pub(super) dev: u64,
    pub(super) ino: u64,
}

impl BackingKey {
    pub(super) fn of(md: &Metadata) -> Self {
        Self {
            dev: md.dev(),
            ino: md.ino(),
        }
    }
}

/// One FUSE inode: which backing inode it stands for and where that was last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Node {
    pub(super) key: BackingKey,
    /// Path relative to the backing root; empty for the root.
    pub(super) rel: PathBuf,
}

/// Stable FUSE inode numbers for backing inodes.
///
/// Numbers are assigned rather than copied from `st_ino`: FUSE reserves 1 for the root, and a
/// backing tree may span devices. A number stays bound to its backing inode for the life of the
/// mount. Paths are always re-checked against the key before use, so a name that now refers to
/// a different file is reported as gone rather than silently served. FORGET is ignored: the
/// table only grows, which suits the small trees this serves.
#[derive(Debug)]
pub(super) struct InodeTable {
    pub(super) by_key: HashMap<BackingKey, u64>,
    pub(super) nodes: HashMap<u64, Node>,
    pub(super) next: u64,
}

impl InodeTable {
    pub(super) fn new(root: BackingKey) -> Self {
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
    pub(super) fn intern(&mut self, key: BackingKey, rel: PathBuf) -> u64 {
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

    pub(super) fn node(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    /// The backing inode is gone (last link removed), so the backing filesystem may reuse its
    /// number: a later file with the same key must get a new FUSE inode. The old FUSE inode keeps
    /// its node, so handles opened before the unlink still resolve.
    pub(super) fn retire(&mut self, key: BackingKey) {
        self.by_key.remove(&key);
    }
}

/// One open file: the server's descriptor and, with passthrough, the kernel's backing ID.
#[derive(Debug)]
pub(super) struct OpenFile<B> {
    pub(super) ino: u64,
    pub(super) file: Arc<File>,
    pub(super) backing: Option<Arc<B>>,
}

/// Open file handles, and the backing IDs they share.
///
/// The kernel refuses a passthrough open (`EBUSY`) whose backing ID differs from the one already
/// attached to the same FUSE inode, so all opens of an inode share one ID for as long as any of
/// them is open. Each handle holds a strong reference; the ID is closed (`BackingId`'s `Drop`)
/// when the last handle is released. Generic so the bookkeeping can be tested without a kernel.
#[derive(Debug)]
pub(super) struct HandleTable<B> {
    pub(super) next_fh: u64,
    pub(super) open: HashMap<u64, OpenFile<B>>,
    pub(super) backing_by_ino: HashMap<u64, Weak<B>>,
}

impl<B> HandleTable<B> {
    pub(super) fn new() -> Self {
        Self {
            next_fh: 1,
            open: HashMap::new(),
            backing_by_ino: HashMap::new(),
        }
    }

    /// The backing ID of `ino`: the live one if another handle holds it, else a new one.
    pub(super) fn backing_for(
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

    pub(super) fn insert(&mut self, ino: u64, file: File, backing: Option<Arc<B>>) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        let file = Arc::new(file);
        self.open.insert(fh, OpenFile { ino, file, backing });
        fh
    }

    pub(super) fn file(&self, fh: u64) -> Option<Arc<File>> {
        self.open.get(&fh).map(|open| Arc::clone(&open.file))
    }

    /// Any open descriptor of `ino`.
    pub(super) fn file_of_inode(&self, ino: u64) -> Option<Arc<File>> {
        self.open
            .values()
            .find(|open| open.ino == ino)
            .map(|open| Arc::clone(&open.file))
    }

    /// Forgets `fh`. Dropping the returned value closes the descriptor and, for the inode's last
    /// handle, the backing ID; do that after releasing the table's lock.
    pub(super) fn remove(&mut self, fh: u64) -> Option<OpenFile<B>> {
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

//! What each FUSE request does: the `fuser::Filesystem` side of [`TestFs`],
//! answered from the backing directory.

use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use fuser::{
    BsdFileFlags, Errno, FileHandle, Filesystem, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use log::{debug, warn};

use super::backing::{read_full_at, statvfs, AttrChanges};
use super::fs::{IoMode, Opened, TestFs, TTL};
use crate::lock;

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

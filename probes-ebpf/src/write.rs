//! Entry and return of `fuse_file_write_iter()`: classify, then count.

use core::marker::PhantomData;

use aya_ebpf::EbpfContext;
use aya_log_ebpf::{debug, error};
use probes_common::{
    classify,
    config::FLAG_DEBUG_LOG,
    maps::{finish_write, INFLIGHT_UNLOCKED},
    InodeKey, WriteFacts, WritePath,
};

use crate::{
    finish::BpfMaps,
    kernel::{self, now_ns, Access},
    maps::{config, configured, flag, health, task, task_or_create, watched},
};

/// Records the write in the task's storage if it takes the passthrough or direct-io
/// path. Everything the classifier needs is read here, before the kernel
/// makes its own decision.
#[inline(always)]
pub fn on_entry<A: Access, C: EbpfContext>(ctx: &C, iocb: u64, from: u64) {
    if !configured() || !watched() {
        return;
    }
    let Some((file, pos, ki_flags)) = kernel::kiocb::<A>(iocb) else {
        return;
    };
    let Some((ff, inode)) = kernel::file::<A>(file) else {
        return;
    };
    let Some((open_flags, backing)) = kernel::fuse_file(ff) else {
        return;
    };
    let Some(path) = WritePath::of(open_flags, backing != 0) else {
        health(|h| h.cached_path_writes += 1);
        return;
    };
    let Some(count) = kernel::iov_count::<A>(from) else {
        return;
    };
    let Some((ino, dev, i_size)) = kernel::inode_id::<A>(inode) else {
        return;
    };
    // Only `fuse_dio_lock()` looks at the inode's cached I/O mode, and a
    // passthrough inode never enters it: spare passthrough writes the read.
    let cache_io_mode = match path {
        WritePath::Passthrough => false,
        WritePath::DirectIo => {
            let Some(cache_io_mode) = kernel::cache_io_mode(inode) else {
                return;
            };
            cache_io_mode
        }
    };

    let reasons = classify(&WriteFacts {
        open_flags,
        ki_flags,
        pos,
        count,
        i_size,
        cache_io_mode,
    });
    let Some(task) = task_or_create() else {
        health(|h| h.inflight_full += 1);
        error!(
            ctx,
            "fuselock: no task storage for a write's record; a write to ino {} is not counted", ino
        );
        return;
    };
    if task.write.active != 0 {
        // The last write's return was never seen (a missed return probe),
        // or FUSE is stacked on FUSE: the older record is dropped.
        health(|h| h.inflight_replaced += 1);
    }
    // Field by field: a struct literal would zero the rest with a call to
    // the BPF target's byte-loop memset, and the volatile stores of zeros
    // keep LLVM from merging them into one.
    let rec = &mut task.write;
    rec.iocb = iocb;
    rec.file = file;
    rec.inode = inode;
    rec.rwsem = inode + u64::from(config!(offsets.inode_i_rwsem));
    rec.key = InodeKey {
        ino,
        dev,
        path: path as u32,
    };
    rec.start_ns = now_ns();
    rec.count = count;
    rec.i_size_entry = i_size;
    rec.pos = pos;
    rec.reasons = reasons.bits();
    for zero in [&mut rec.locked_ns, &mut rec.wait_start_ns, &mut rec.wait_ns] {
        // SAFETY: a field of the task's own storage.
        unsafe { core::ptr::write_volatile(zero, 0) };
    }
    rec.i_size_locked = 0;
    rec.mode = INFLIGHT_UNLOCKED;
    rec.contended = 0;
    rec.active = 1;
    if flag(FLAG_DEBUG_LOG) {
        debug!(
            ctx,
            "write entry dev={} ino={} path={} pos={} count={} i_size={} reasons={}",
            dev,
            ino,
            path as u32,
            pos,
            count,
            i_size,
            reasons.bits()
        );
    }
}

/// Counts a finished write. `iocb` is known under fexit and checked against
/// the record; a kretprobe only knows the task.
#[inline(always)]
pub fn on_exit<A: Access, C: EbpfContext>(ctx: &C, iocb: Option<u64>, ret: i64) {
    let Some(task) = task() else {
        return;
    };
    if task.write.active == 0 {
        // Entry not recorded: page-cache path, or the entry failed (counted).
        return;
    }
    task.write.active = 0;
    let rec = &task.write;
    if iocb.is_some_and(|iocb| iocb != rec.iocb) {
        health(|h| h.exit_unmatched += 1);
        return;
    }
    if !configured() {
        return;
    }
    let mut maps = BpfMaps::<A> {
        rec,
        access: PhantomData,
    };
    finish_write(&mut maps, rec, ret, now_ns());
    if flag(FLAG_DEBUG_LOG) {
        debug!(
            ctx,
            "write exit ino={} ret={} mode={}", rec.key.ino, ret, rec.mode
        );
    }
}

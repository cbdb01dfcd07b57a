//! Seeing which way the FUSE inode's `i_rwsem` is held, from inside the
//! critical section.
//!
//! `inode_lock()`/`inode_lock_shared()` are inline wrappers around
//! `down_write()`/`down_read()`, which run system-wide at high rates. Rather
//! than probing those, fuselock hooks a function that the FUSE write path
//! calls only while holding the lock and decodes the rwsem there. Only the
//! FUSE inode's own `i_rwsem` (its address was recorded at entry) is read, so
//! the backing filesystem's inode lock is never counted.

use probes_common::{
    classify::at_lock,
    config::Ablation,
    maps::{INFLIGHT_EXCLUSIVE, INFLIGHT_SHARED, INFLIGHT_UNLOCKED},
    rwsem::RwsemLayout,
    LockMode, Reason, Reasons, WritePath,
};

use crate::{
    kernel::{self, now_ns, Access},
    maps::{config, configured, current_task_btf, flag, health, task_of},
};

/// `FUSE_DIO_WRITE` (`fs/fuse/fuse_i.h`).
pub const FUSE_DIO_WRITE: u64 = 1 << 0;

/// A hook inside the FUSE write's critical section: `iocb` is the FUSE
/// write's (`None` where the hook does not know it, a kprobe on the
/// direct-io path).
#[inline(always)]
pub fn on_locked<A: Access>(path: WritePath, iocb: Option<u64>) {
    let me = current_task_btf();
    let Some(task) = task_of(me) else {
        return;
    };
    let rec = &mut task.write;
    if rec.active == 0 || rec.key.path != path as u32 || rec.mode != INFLIGHT_UNLOCKED {
        return;
    }
    if iocb.is_some_and(|iocb| iocb != rec.iocb) {
        // overlayfs or a nested write: not the FUSE write we recorded.
        return;
    }
    if !configured() {
        return;
    }
    // A typed pointer to the inode, from the hook's own typed argument; a
    // kprobe reads through the one recorded at entry.
    let inode = match (A::TYPED, iocb) {
        (true, Some(iocb)) => {
            let Some((file, _, _)) = kernel::kiocb::<A>(iocb) else {
                return;
            };
            let Some((_, inode)) = kernel::file::<A>(file) else {
                return;
            };
            inode
        }
        // Nothing typed to start from.
        (true, None) => return,
        (false, _) => rec.inode,
    };
    let Some((count, owner, i_size)) = kernel::lock_state::<A>(inode) else {
        return;
    };
    let layout = RwsemLayout::from_u32(config!(offsets.rwsem_layout));
    let exclusive = match layout.held_mode(count, owner, me as u64) {
        Some(LockMode::Shared) => false,
        Some(LockMode::Exclusive) => true,
        None => {
            health(|h| h.lock_state_unknown += 1);
            return;
        }
    };
    rec.mode = if exclusive {
        INFLIGHT_EXCLUSIVE
    } else {
        INFLIGHT_SHARED
    };
    rec.i_size_locked = i_size;
    // EOF judged again where the kernel judges it last, under the lock.
    let mut reasons = at_lock(
        Reasons::from_bits(rec.reasons),
        exclusive,
        rec.pos,
        rec.count,
        i_size,
    );
    // `fuse_dio_lock()` also upgrades when the inode entered cached I/O mode
    // meanwhile (another open that uses the page cache).
    if exclusive && reasons.is_eligible() && path == WritePath::DirectIo {
        if let Some(true) = kernel::cache_io_mode(rec.inode) {
            reasons = reasons.with(Reason::CacheIoMode);
        }
    }
    rec.reasons = reasons.bits();
    if !flag(Ablation::LockTiming.bit()) {
        rec.locked_ns = now_ns();
    }
}

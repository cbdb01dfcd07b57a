//! Seeing which way the FUSE inode's `i_rwsem` is held, from inside the
//! critical section.
//!
//! `inode_lock()`/`inode_lock_shared()` are inline wrappers around
//! `down_write()`/`down_read()`, which run system-wide at high rates. Rather
//! than probing those, fuselock hooks a function that the FUSE write path
//! calls only while holding the lock and decodes the rwsem there. Only the
//! FUSE inode's own `i_rwsem` (its address was recorded at entry) is read, so
//! the backing filesystem's inode lock is never counted.

use aya_ebpf::EbpfContext;
use probes_common::{
    config::Ablation,
    maps::{INFLIGHT_EXCLUSIVE, INFLIGHT_SHARED, INFLIGHT_UNLOCKED},
    rwsem::held_mode,
    LockMode, WritePath,
};

use crate::{
    kernel::{current_task, now_ns, read, read_words},
    maps::{config, configured, flag, health, task},
};

/// `FUSE_DIO_WRITE` (`fs/fuse/fuse_i.h`).
pub const FUSE_DIO_WRITE: u64 = 1 << 0;

#[inline(always)]
pub fn on_locked<C: EbpfContext>(_ctx: &C, path: WritePath, iocb: Option<u64>) {
    let Some(task) = task() else {
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
    let Some([count, owner]) = read_words(
        rec.rwsem,
        [config!(offsets.rwsem_count), config!(offsets.rwsem_owner)],
    ) else {
        return;
    };
    match held_mode(count, owner, current_task()) {
        Some(LockMode::Shared) => rec.mode = INFLIGHT_SHARED,
        Some(LockMode::Exclusive) => rec.mode = INFLIGHT_EXCLUSIVE,
        None => {
            health(|h| h.lock_state_unknown += 1);
            return;
        }
    }
    if flag(Ablation::LockTiming.bit()) {
        return;
    }
    rec.locked_ns = now_ns();
    rec.i_size_locked = read::<i64>(rec.inode, config!(offsets.inode_i_size)).unwrap_or(i64::MAX);
}

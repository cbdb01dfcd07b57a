//! Wait time for the FUSE inode lock from the `lock:contention_*` tracepoints.
//!
//! They fire for every contended lock on the host, but only on contention
//! (a task about to wait), so the cost is one look at the task's storage
//! on an already slow path. Only the in-flight write's own `i_rwsem` is matched.

use probes_common::maps::INFLIGHT_UNLOCKED;

use crate::{
    kernel::now_ns,
    maps::{config, task},
};

/// Whether `lock`, as a contention event names it, is the write's inode
/// lock: the rwsem itself, or on PREEMPT_RT the rtmutex inside it, on which
/// a writer waits before it waits for the readers to leave, and a reader's
/// slow path nests its own wait.
#[inline(always)]
fn is_inode_lock(lock: u64, rwsem: u64) -> bool {
    let rt_mutex = config!(offsets.rwsem_rt_mutex);
    lock == rwsem || (rt_mutex != 0 && lock == rwsem + u64::from(rt_mutex))
}

#[inline(always)]
pub fn on_begin(lock: u64) {
    let Some(task) = task() else {
        return;
    };
    let rec = &mut task.write;
    // A wait already running is not restarted: on PREEMPT_RT a reader's
    // wait on the rwsem nests one on its rtmutex.
    if rec.active != 0
        && rec.mode == INFLIGHT_UNLOCKED
        && rec.wait_start_ns == 0
        && is_inode_lock(lock, rec.rwsem)
    {
        rec.wait_start_ns = now_ns();
    }
}

#[inline(always)]
pub fn on_end(lock: u64) {
    let Some(task) = task() else {
        return;
    };
    let rec = &mut task.write;
    if rec.active != 0 && rec.wait_start_ns != 0 && is_inode_lock(lock, rec.rwsem) {
        rec.wait_ns += now_ns().saturating_sub(rec.wait_start_ns);
        rec.wait_start_ns = 0;
        rec.contended = 1;
    }
}

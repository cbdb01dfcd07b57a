//! Wait time for the FUSE inode lock from the `lock:contention_*` tracepoints.
//!
//! They fire for every contended lock on the host, but only on contention
//! (a task about to wait), so the cost is one look at the task's storage
//! on an already slow path. Only the in-flight write's own `i_rwsem` is matched.

use probes_common::maps::INFLIGHT_UNLOCKED;

use crate::{kernel::now_ns, maps::task};

#[inline(always)]
pub fn on_begin(lock: u64) {
    let Some(task) = task() else {
        return;
    };
    let rec = &mut task.write;
    if rec.active != 0 && rec.rwsem == lock && rec.mode == INFLIGHT_UNLOCKED {
        rec.wait_start_ns = now_ns();
    }
}

#[inline(always)]
pub fn on_end(lock: u64) {
    let Some(task) = task() else {
        return;
    };
    let rec = &mut task.write;
    if rec.active != 0 && rec.rwsem == lock && rec.wait_start_ns != 0 {
        rec.wait_ns += now_ns().saturating_sub(rec.wait_start_ns);
        rec.wait_start_ns = 0;
        rec.contended = 1;
    }
}

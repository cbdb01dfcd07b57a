//! The maps, with the layouts from `probes-common` (see its `maps` module
//! for what each holds and why it is shared or per CPU).

use aya_ebpf::{
    macros::{btf_map, map},
    maps::{Array, HashMap, PerCpuArray},
    Global,
};
use probes_common::{
    config::Config,
    maps::{Bump, DirtyRing, FileStats, DEFAULT_MAX_INODES, MAX_DEVICES, NO_PREALLOC},
    Health, Histograms, InodeKey, OpenStats, TaskState, WritePath, WriteStats, WriterKey,
    WriterStats,
};

use crate::task_storage::TaskStorage;

/// Overridden by the loader with offsets resolved from the running kernel.
#[unsafe(no_mangle)]
pub static FUSELOCK_CONFIG: Global<Config> = Global::new(Config::UNSET);

/// Capacities here are defaults: the loader sets `FILES`, `OPENS` and
/// `WRITERS` from `--max-inodes`.
#[map]
pub static FILES: HashMap<InodeKey, FileStats> =
    HashMap::with_max_entries(DEFAULT_MAX_INODES, NO_PREALLOC);

#[map]
pub static ZERO_FILE: Array<FileStats> = Array::with_max_entries(1, 0);

#[map]
pub static DEV_TOTALS: HashMap<InodeKey, WriteStats> =
    HashMap::with_max_entries(MAX_DEVICES, NO_PREALLOC);

#[map]
pub static WRITERS: HashMap<WriterKey, WriterStats> =
    HashMap::with_max_entries(2 * DEFAULT_MAX_INODES, NO_PREALLOC);

#[map]
pub static OPENS: HashMap<InodeKey, OpenStats> =
    HashMap::with_max_entries(DEFAULT_MAX_INODES, NO_PREALLOC);

#[map]
pub static PATH_TOTALS: PerCpuArray<WriteStats> =
    PerCpuArray::with_max_entries(WritePath::COUNT as u32, 0);

#[map]
pub static PATH_HISTS: PerCpuArray<Histograms> =
    PerCpuArray::with_max_entries(WritePath::COUNT as u32, 0);

#[map]
pub static HEALTH: PerCpuArray<Health> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: the latest writes, so userspace re-reads only what was written.
#[map]
pub static DIRTY: PerCpuArray<DirtyRing> = PerCpuArray::with_max_entries(1, 0);

/// Bumped by userspace at each refresh (see `DirtyRing`).
#[map]
pub static EPOCH: Array<u64> = Array::with_max_entries(1, 0);

#[btf_map]
pub static TASKS: TaskStorage<TaskState> = TaskStorage::new();

/// Bumps one health counter on this CPU.
#[inline(always)]
pub fn health(bump: impl FnOnce(&mut Health)) {
    if let Some(h) = HEALTH.get_ptr_mut(0) {
        // SAFETY: a per-CPU array slot, only touched by this CPU with
        // preemption disabled for the program's run.
        bump(unsafe { &mut *h });
    }
}

/// The configuration, or `None` (counted) if the loader did not set it.
#[inline(always)]
pub fn config() -> Option<Config> {
    let cfg = FUSELOCK_CONFIG.load();
    if cfg.is_configured() {
        Some(cfg)
    } else {
        health(|h| h.unconfigured += 1);
        None
    }
}

/// The current task's state, made on first use.
#[inline(always)]
pub fn task_or_create() -> Option<&'static mut TaskState> {
    // SAFETY: the current task's own storage, which only its own programs
    // touch, one at a time (a task runs on one CPU at once).
    TASKS.get_or_create().map(|t| unsafe { &mut *t })
}

/// The current task's state, if it ever wrote or opened a FUSE file.
#[inline(always)]
pub fn task() -> Option<&'static mut TaskState> {
    // SAFETY: as in `task_or_create`.
    TASKS.get().map(|t| unsafe { &mut *t })
}

/// Bumps for values CPUs share: BPF atomic instructions.
pub struct Atomic;

/// Attempts at raising a shared maximum before giving up: each failure
/// means another CPU raised it meanwhile, so a few suffice.
const RAISE_ATTEMPTS: usize = 4;

impl Bump for Atomic {
    #[inline(always)]
    fn add(slot: &mut u64, n: u64) {
        // SAFETY: `slot` points into a map value; the BPF atomic add is the
        // kernel's documented way to update shared map values.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                slot, n,
            );
        }
    }

    #[inline(always)]
    fn raise(slot: &mut u64, v: u64) {
        for _ in 0..RAISE_ATTEMPTS {
            // SAFETY: a map value's field, read as the compare-and-swap expects.
            let current = unsafe { core::ptr::read_volatile(slot) };
            if v <= current {
                return;
            }
            // SAFETY: as in `add`; BPF_CMPXCHG (Linux >= 5.12).
            let (_, swapped) = unsafe {
                core::intrinsics::atomic_cxchg::<
                    u64,
                    { core::intrinsics::AtomicOrdering::Relaxed },
                    { core::intrinsics::AtomicOrdering::Relaxed },
                >(slot, current, v)
            };
            if swapped {
                return;
            }
        }
    }
}

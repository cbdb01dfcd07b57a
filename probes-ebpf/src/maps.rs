//! The maps, with the layouts from `probes-common` (see its `maps` module
//! for what each holds and why it is shared or per CPU).

use aya_ebpf::{
    macros::{btf_map, map},
    maps::{Array, HashMap, PerCpuArray},
    Global,
};
use probes_common::{
    config::{Config, CONFIG_MAGIC, FLAG_CGROUP_FILTER},
    maps::{
        Bump, DirtyRing, FileStats, DEFAULT_MAX_INODES, DEVICE_SLOTS, MAX_DEVICES, NO_PREALLOC,
    },
    Health, Histograms, InodeKey, OpenStats, TaskState, WritePath, WriteStats, WriterKey,
    WriterStats,
};

use aya_ebpf::{
    bindings::task_struct,
    helpers::generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_task_btf},
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
pub static DEV_STATS: PerCpuArray<WriteStats> = PerCpuArray::with_max_entries(DEVICE_SLOTS, 0);

#[map]
pub static DEV_SLOTS: HashMap<InodeKey, u32> = HashMap::with_max_entries(MAX_DEVICES, NO_PREALLOC);

#[map]
pub static DEV_SLOT_NEXT: Array<u64> = Array::with_max_entries(1, 0);

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

/// Reads one field of the configuration: one load, not a copy of the whole
/// struct, and a volatile one, so that LLVM does not fold in the
/// unconfigured value the object carries (the loader overrides it). The
/// verifier knows each value (the global is read-only), so a branch on a
/// flag that is not set is pruned.
macro_rules! config {
    ($($field:tt)+) => {
        // SAFETY: `FUSELOCK_CONFIG` is a `Config` (a `Global` is
        // `repr(transparent)`), alive for the program's run.
        unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!(
                (*crate::maps::config_ptr()).$($field)+
            ))
        }
    };
}
pub(crate) use config;

/// The configuration global, as the `Config` it holds.
#[inline(always)]
pub fn config_ptr() -> *const Config {
    core::ptr::addr_of!(FUSELOCK_CONFIG).cast()
}

/// Whether the loader set the configuration; counted when not.
#[inline(always)]
pub fn configured() -> bool {
    if config!(magic) == CONFIG_MAGIC {
        true
    } else {
        health(|h| h.unconfigured += 1);
        false
    }
}

/// Whether flag `bit` of the configuration is set.
#[inline(always)]
pub fn flag(bit: u32) -> bool {
    config!(flags) & bit != 0
}

/// Whether the current task is one fuselock watches: every task, or with
/// `--cgroup`/`--pod` those under that cgroup (the check is dead code, and
/// pruned, without them: kernels without cgroups never see the helper).
#[inline(always)]
pub fn watched() -> bool {
    if !flag(FLAG_CGROUP_FILTER) {
        return true;
    }
    let (level, id) = (config!(cgroup_filter.level), config!(cgroup_filter.id));
    // SAFETY: a helper without pointer arguments.
    unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) == id }
}

/// The current task's state, made on first use.
#[inline(always)]
pub fn task_or_create() -> Option<&'static mut TaskState> {
    // SAFETY: the current task's own storage, which only its own programs
    // touch, one at a time (a task runs on one CPU at once).
    TASKS
        .get_or_create(current_task_btf())
        .map(|t| unsafe { &mut *t })
}

/// The current task's state, if it ever wrote or opened a FUSE file.
#[inline(always)]
pub fn task() -> Option<&'static mut TaskState> {
    task_of(current_task_btf())
}

/// The state of `current`, the running task as [`current_task_btf`] gave
/// it (a hook that also needs the task pointer asks once).
#[inline(always)]
pub fn task_of(current: *mut task_struct) -> Option<&'static mut TaskState> {
    // SAFETY: as in `task_or_create`.
    TASKS.get(current).map(|t| unsafe { &mut *t })
}

/// The running task, as a BTF-typed pointer.
#[inline(always)]
pub fn current_task_btf() -> *mut task_struct {
    // SAFETY: no arguments, always available to tracing programs.
    unsafe { bpf_get_current_task_btf() }
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
        raise_shared(slot, v);
    }
}

impl Atomic {
    /// Takes the next number below `limit` from the shared counter `next`:
    /// `None` once they are all taken (or, rarely, when other CPUs kept
    /// taking them during every attempt). A compare-and-swap loop, because
    /// bpf-linker's default CPU cannot use the value of an atomic add.
    #[inline(always)]
    pub fn take_below(next: &mut u64, limit: u64) -> Option<u64> {
        for _ in 0..RAISE_ATTEMPTS {
            // SAFETY: a map value's field, read as the compare-and-swap expects.
            let current = unsafe { core::ptr::read_volatile(next) };
            if current >= limit {
                return None;
            }
            // SAFETY: as in `add`; BPF_CMPXCHG (Linux >= 5.12).
            let (_, swapped) = unsafe {
                core::intrinsics::atomic_cxchg::<
                    u64,
                    { core::intrinsics::AtomicOrdering::Relaxed },
                    { core::intrinsics::AtomicOrdering::Relaxed },
                >(next, current, current + 1)
            };
            if swapped {
                return Some(current);
            }
        }
        None
    }
}

/// `*slot = max(*slot, v)` on a value CPUs share.
#[inline(always)]
fn raise_shared(slot: &mut u64, v: u64) {
    for _ in 0..RAISE_ATTEMPTS {
        // SAFETY: a map value's field, read as the compare-and-swap expects.
        let current = unsafe { core::ptr::read_volatile(slot) };
        if v <= current {
            return;
        }
        // SAFETY: as in `Atomic::add`; BPF_CMPXCHG (Linux >= 5.12).
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

//! The maps, with the layouts from `probes-common`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap},
    Global,
};
use probes_common::{
    config::Config,
    maps::{DirtyRing, OpenInFlight, DEFAULT_MAX_INODES, MAX_DEVICES, MAX_INFLIGHT, MAX_WRITERS},
    Health, Histograms, InFlight, InodeKey, InodeName, OpenStats, WritePath, WriteStats, WriterKey,
    WriterStats,
};

/// Overridden by the loader with offsets resolved from the running kernel.
#[unsafe(no_mangle)]
pub static FUSELOCK_CONFIG: Global<Config> = Global::new(Config::UNSET);

#[map]
pub static INODE_STATS: LruPerCpuHashMap<InodeKey, WriteStats> =
    LruPerCpuHashMap::with_max_entries(DEFAULT_MAX_INODES, 0);

#[map]
pub static INODE_NAMES: LruHashMap<InodeKey, InodeName> =
    LruHashMap::with_max_entries(DEFAULT_MAX_INODES, 0);

#[map]
pub static PATH_TOTALS: PerCpuArray<WriteStats> =
    PerCpuArray::with_max_entries(WritePath::COUNT as u32, 0);

#[map]
pub static DEV_TOTALS: PerCpuHashMap<InodeKey, WriteStats> =
    PerCpuHashMap::with_max_entries(MAX_DEVICES, 0);

#[map]
pub static HEALTH: PerCpuArray<Health> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static INODE_HISTS: LruHashMap<InodeKey, Histograms> =
    LruHashMap::with_max_entries(DEFAULT_MAX_INODES, 0);

/// Always-zero values to insert from: a zeroed `Histograms` (1.3 KiB) or
/// `WriteStats` does not fit on the 512-byte BPF stack next to the rest.
#[map]
pub static ZERO_HISTS: PerCpuArray<Histograms> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static ZERO_STATS: PerCpuArray<WriteStats> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU: every FUSE write on the host lands here, and one shared array
/// would bounce its cache lines between all CPUs.
#[map]
pub static PATH_HISTS: PerCpuArray<Histograms> =
    PerCpuArray::with_max_entries(WritePath::COUNT as u32, 0);

/// Per CPU: every write bumps its writer's count, and a shared value would
/// bounce between the CPUs of a parallel workload.
#[map]
pub static WRITERS: LruPerCpuHashMap<WriterKey, WriterStats> =
    LruPerCpuHashMap::with_max_entries(MAX_WRITERS, 0);

/// Per CPU: the latest writes, so userspace re-reads only what was written.
#[map]
pub static DIRTY: PerCpuArray<DirtyRing> = PerCpuArray::with_max_entries(1, 0);

/// Bumped by userspace at each refresh (see `DirtyRing`).
#[map]
pub static EPOCH: Array<u64> = Array::with_max_entries(1, 0);

#[map]
pub static OPENS: LruHashMap<InodeKey, OpenStats> =
    LruHashMap::with_max_entries(DEFAULT_MAX_INODES, 0);

#[map]
pub static OPENS_INFLIGHT: HashMap<u64, OpenInFlight> = HashMap::with_max_entries(MAX_INFLIGHT, 0);

#[map]
pub static INFLIGHT: HashMap<u64, InFlight> = HashMap::with_max_entries(MAX_INFLIGHT, 0);

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

/// Adds `n` to a counter shared between CPUs.
#[inline(always)]
pub fn atomic_add(counter: &mut u64, n: u64) {
    // SAFETY: `counter` points into a map value; the BPF atomic add is the
    // kernel's documented way to update shared map values.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            counter, n,
        );
    }
}

//! The maps, with the layouts from `probes-common`.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray},
    Global,
};
use probes_common::{
    config::Config,
    maps::{DEFAULT_MAX_INODES, MAX_INFLIGHT},
    Health, InFlight, InodeKey, InodeName, WritePath, WriteStats,
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
pub static HEALTH: PerCpuArray<Health> = PerCpuArray::with_max_entries(1, 0);

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

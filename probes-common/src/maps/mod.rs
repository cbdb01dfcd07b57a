//! Map names, capacities, keys and values: the layout contract between the
//! programs and userspace, one file per topic.
//!
//! Kernel memory follows use: the maps keyed by file, device or writer
//! allocate an element when a key first appears (`BPF_F_NO_PREALLOC`) and
//! hold values shared between CPUs (atomic adds), so a host pays for the
//! files written, not for its CPU count times a maximum. Per-CPU values are
//! kept for what every FUSE write of a mount touches: its device's totals
//! (whose sums are the per-path totals), the per-path histograms, the
//! health counters and the rings of recent writes.

mod bump;
mod finish;
mod health;
mod inflight;
mod keys;
mod opens;
mod stats;
mod writers;

pub use bump::{Bump, Plain};
pub use finish::{finish_write, Slot, WriteMaps};
pub use health::Health;
pub use inflight::{
    InFlight, OpenInFlight, TaskState, INFLIGHT_EXCLUSIVE, INFLIGHT_SHARED, INFLIGHT_UNLOCKED,
};
pub use keys::{InodeKey, LockMode, WritePath, WriterKey};
pub use opens::OpenStats;
pub use stats::{
    FileStats, Histograms, InodeName, WriteStats, NAME_LEN, NO_DEVICE_SLOT, REASON_SETS,
};
pub use writers::{DirtyRing, RecentPush, WriterStats, COMM_LEN, DIRTY_SLOTS, RECENT_SLOTS};

/// `BPF_F_NO_PREALLOC`: elements are allocated on insert.
pub const NO_PREALLOC: u32 = 1;

/// Every file written: `HASH<InodeKey, FileStats>`, allocated on use.
pub const MAP_FILES: &str = "FILES";
/// Totals per (device, path), never deleted while fuselock runs (a counter
/// exported to monitoring must never go backwards). Every FUSE write of a
/// busy mount adds to them, from every CPU: so each of the first
/// [`DEVICE_SLOTS`] (device, path) pairs gets a slot in a per-CPU array,
/// `DEV_STATS`, which a write finds through its file's value and updates
/// without atomics; `DEV_SLOTS` (`HASH<InodeKey (ino 0), u32>`) names each
/// slot's pair, and `DEV_SLOT_NEXT` (`ARRAY<u64>`) hands the slots out.
pub const MAP_DEV_STATS: &str = "DEV_STATS";
pub const MAP_DEV_SLOTS: &str = "DEV_SLOTS";
pub const MAP_DEV_SLOT_NEXT: &str = "DEV_SLOT_NEXT";
/// Slots in `DEV_STATS`: each costs a `WriteStats` on every possible CPU.
pub const DEVICE_SLOTS: u32 = 32;
/// The totals of the pairs beyond the slots: `HASH<InodeKey (ino 0),
/// WriteStats>`, shared, allocated on use; a full map is counted in
/// `Health::dev_totals_full`.
pub const MAP_DEV_TOTALS: &str = "DEV_TOTALS";
/// Capacity of `DEV_TOTALS` and `DEV_SLOTS`: FUSE mounts × paths on one host.
pub const MAX_DEVICES: u32 = 4_096;
/// Histograms per path, never evicted: `PERCPU_ARRAY<Histograms>` indexed by `WritePath`.
pub const MAP_PATH_HISTS: &str = "PATH_HISTS";
/// The programs' own health counters: `PERCPU_ARRAY<Health>` with one slot.
pub const MAP_HEALTH: &str = "HEALTH";
/// Each task's write and open in flight: `TASK_STORAGE<TaskState>`.
pub const MAP_TASKS: &str = "TASKS";
/// Who writes: `HASH<WriterKey, WriterStats>`, allocated on use.
pub const MAP_WRITERS: &str = "WRITERS";
/// Open-time evidence per file: `HASH<InodeKey (path 0), OpenStats>`,
/// allocated on use.
pub const MAP_OPENS: &str = "OPENS";
/// The per-CPU rings of recent writes (see [`DirtyRing`]).
pub const MAP_DIRTY: &str = "DIRTY";
/// One `u64` that userspace bumps at each refresh, before it reads the
/// rings (see [`DirtyRing`]).
pub const MAP_EPOCH: &str = "EPOCH";
/// One zeroed [`FileStats`], never written: what a new file's value is
/// inserted from (it does not fit on the 512-byte BPF stack).
pub const MAP_ZERO_FILE: &str = "ZERO_FILE";

/// Default capacity of the per-file maps (`FILES` and `OPENS`), a bound
/// on what they may take, not an allocation.
pub const DEFAULT_MAX_INODES: u32 = 16_384;
/// Capacity of `WRITERS` for `max_inodes` files: two processes per file
/// on average. A pair with no room loses only its place in its file's list
/// of writers, never a count (`Health::writers_full`).
pub const fn max_writers(max_inodes: u32) -> u32 {
    max_inodes.saturating_mul(2)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): `#[repr(C)]` structs of integers and integer arrays laid
    // out without padding (checked by the size tests), valid for any bit
    // pattern.
    unsafe impl aya::Pod for super::InodeKey {}
    unsafe impl aya::Pod for super::WriteStats {}
    unsafe impl aya::Pod for super::FileStats {}
    unsafe impl aya::Pod for super::Health {}
    unsafe impl aya::Pod for super::InFlight {}
    unsafe impl aya::Pod for super::InodeName {}
    unsafe impl aya::Pod for super::Histograms {}
    unsafe impl aya::Pod for super::WriterKey {}
    unsafe impl aya::Pod for super::WriterStats {}
    unsafe impl aya::Pod for super::DirtyRing {}
    unsafe impl aya::Pod for super::OpenStats {}
}

#[cfg(test)]
mod tests;

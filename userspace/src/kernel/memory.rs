//! The kernel memory fuselock's maps take, from their layouts: what
//! `doctor` and `--help` tell a user before attaching. (`cargo xtask bench
//! --sections mem` measures it; a VM test holds this estimate to the
//! measurement.)

use std::mem::size_of;

use probes_common::{
    maps::{
        max_writers, DirtyRing, FileStats, Histograms, InodeKey, OpenStats, WriteStats, WriterKey,
        WriterStats, DEVICE_SLOTS, MAX_DEVICES,
    },
    Health, WritePath,
};

/// A hash map element's header in the kernel (`struct htab_elem`, with its
/// free-list and hash), before the key and value.
const HTAB_ELEM: usize = 48;
/// One bucket of a hash map's table (`struct bucket`), allocated whole at
/// creation for `max_entries` rounded up to a power of two.
const HTAB_BUCKET: usize = 16;
/// aya-log's ring buffer of the programs' log records (`AYA_LOGS`).
const LOG_RING: usize = 128 << 10;

/// What fuselock's maps take in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelMemory {
    pub possible_cpus: u32,
    /// Attached, before any file is written.
    pub attached: u64,
    /// Each file written: its value, its open evidence and a writer.
    pub per_file: u64,
    /// With `max_inodes` files written: the most the maps may take.
    pub at_most: u64,
}

/// The memory of the maps on a host with `possible_cpus` possible CPUs
/// (the kernel sizes per-CPU values by them) and `max_inodes` files at most.
pub fn estimate(possible_cpus: u32, max_inodes: u32) -> KernelMemory {
    let per_cpu = DEVICE_SLOTS as usize * size_of::<WriteStats>()
        + WritePath::COUNT * size_of::<Histograms>()
        + size_of::<Health>()
        + size_of::<DirtyRing>();
    let buckets = |entries: u32| HTAB_BUCKET * entries.max(1).next_power_of_two() as usize;
    let tables =
        2 * buckets(max_inodes) + buckets(max_writers(max_inodes)) + 2 * buckets(MAX_DEVICES);
    let attached = per_cpu * possible_cpus as usize + tables + LOG_RING + size_of::<FileStats>();
    let element = |key: usize, value: usize| HTAB_ELEM + key.next_multiple_of(8) + value;
    let per_file = element(size_of::<InodeKey>(), size_of::<FileStats>())
        + element(size_of::<InodeKey>(), size_of::<OpenStats>())
        + element(size_of::<WriterKey>(), size_of::<WriterStats>());
    KernelMemory {
        possible_cpus,
        attached: attached as u64,
        per_file: per_file as u64,
        at_most: (attached + per_file * max_inodes as usize) as u64,
    }
}

/// This host's possible CPUs (`/sys/devices/system/cpu/possible`).
pub fn possible_cpus() -> Option<u32> {
    aya::util::nr_cpus().ok().map(|n| n.get())
}

impl KernelMemory {
    /// One sentence for `doctor` and `--help`.
    pub fn describe(&self, max_inodes: u32) -> String {
        format!(
            "about {} attached on {} possible CPUs, plus about {} per file written (at most {} \
             with --max-inodes {max_inodes})",
            mib(self.attached),
            self.possible_cpus,
            kib(self.per_file),
            mib(self.at_most),
        )
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn kib(bytes: u64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_memory_is_small_and_files_cost_what_they_hold() {
        let small = estimate(2, 16_384);
        let big = estimate(64, 16_384);
        // What each possible CPU adds: the device slots, the rings, the
        // path histograms and health, well under 80 KiB.
        let per_cpu = (big.attached - small.attached) / 62;
        assert!(per_cpu < 80 << 10, "{per_cpu} bytes per CPU");
        assert!(big.attached < 16 << 20, "{big:?}");
        assert!(big.per_file > size_of::<FileStats>() as u64);
        assert!(big.per_file < 4 << 10, "{big:?}");
        assert_eq!(big.at_most, big.attached + 16_384 * big.per_file);
        assert!(big.describe(16_384).contains("on 64 possible CPUs"));
    }
}

//! What a finished write adds to: counters, histograms, and a file's value
//! that holds both with its name.

use super::{bump::Bump, inflight::InFlight, keys::LockMode};
use crate::{
    hist::{self, HIST_BUCKETS},
    Reason, Reasons,
};

/// Sets of reasons a write can have: one bit per [`Reason`] but
/// `Eligible` (the empty set), as [`Reasons`] holds them.
pub const REASON_SETS: usize = 1 << (Reason::COUNT - 1);

/// Counters of the writes to one (device, inode, path) or one (device, path).
///
/// A write adds to as few counters as it can (each one an atomic add where
/// CPUs share the value): it counts once in `acquisitions`, under its lock
/// mode and the whole set of its reasons, and every other count of writes
/// and acquisitions is a sum of those (see the methods). In per-CPU maps
/// userspace sums the CPUs' copies, except `*_max`, which it maxes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteStats {
    /// Lock acquisitions by `[LockMode][reason set]`.
    pub acquisitions: [[u64; REASON_SETS]; LockMode::COUNT],
    /// Writes during which the FUSE inode lock was never seen held (zero-length
    /// writes and writes rejected before the lock or before the I/O).
    pub unlocked: u64,
    /// Bytes written (sum of positive return values).
    pub bytes: u64,
    /// Calls that returned an error.
    pub errors: u64,
    /// Sum of whole-call latencies.
    pub latency_ns_total: u64,
    /// Acquisitions by `[LockMode]` that had to wait.
    pub contended: [u64; LockMode::COUNT],
    pub wait_ns_total: [u64; LockMode::COUNT],
    pub wait_ns_max: [u64; LockMode::COUNT],
    /// Time from the first point inside the critical section to the return.
    pub hold_ns_total: [u64; LockMode::COUNT],
    pub hold_ns_max: [u64; LockMode::COUNT],
    /// Writes that held the lock shared and still grew the file: the race the
    /// patch's unlocked EOF check allows.
    pub shared_extended: u64,
    /// The whole-call latency and lock waits of the direct overwrites inside
    /// EOF that took the lock exclusive (eligible but, perhaps, for the
    /// server's flag): the time the series gives back.
    pub overwrites_exclusive_latency_ns: u64,
    pub overwrites_exclusive_wait_ns: u64,
}

impl Default for WriteStats {
    fn default() -> WriteStats {
        WriteStats::ZERO
    }
}

impl WriteStats {
    pub const ZERO: WriteStats = WriteStats {
        acquisitions: [[0; REASON_SETS]; LockMode::COUNT],
        unlocked: 0,
        bytes: 0,
        errors: 0,
        latency_ns_total: 0,
        contended: [0; LockMode::COUNT],
        wait_ns_total: [0; LockMode::COUNT],
        wait_ns_max: [0; LockMode::COUNT],
        hold_ns_total: [0; LockMode::COUNT],
        hold_ns_max: [0; LockMode::COUNT],
        shared_extended: 0,
        overwrites_exclusive_latency_ns: 0,
        overwrites_exclusive_wait_ns: 0,
    };

    /// Counts one finished write (`ret`: bytes written, or an error) at
    /// `now`: the programs' accounting for every value of counters, shared
    /// so that host tests fill maps exactly as the programs do.
    #[inline(always)]
    pub fn account<B: Bump>(&mut self, rec: &InFlight, ret: i64, now: u64) {
        if ret < 0 {
            B::add(&mut self.errors, 1);
        } else {
            B::add(&mut self.bytes, ret as u64);
        }
        let latency = now.saturating_sub(rec.start_ns);
        B::add(&mut self.latency_ns_total, latency);

        let Some(mode) = rec.lock_mode() else {
            B::add(&mut self.unlocked, 1);
            return;
        };
        let m = mode as usize;
        let reasons = Reasons::from_bits(rec.reasons);
        // `get_mut` rather than indexing throughout: a bounds check would
        // leave a panic path the verifier rejects.
        if let Some(count) = self
            .acquisitions
            .get_mut(m)
            .and_then(|row| row.get_mut(reasons.bits() as usize))
        {
            B::add(count, 1);
        }
        if mode == LockMode::Exclusive && reasons.is_direct_overwrite() {
            B::add(&mut self.overwrites_exclusive_latency_ns, latency);
            if rec.contended != 0 {
                B::add(&mut self.overwrites_exclusive_wait_ns, rec.wait_ns);
            }
        }
        if rec.contended != 0 {
            if let Some(c) = self.contended.get_mut(m) {
                B::add(c, 1);
            }
            if let Some(t) = self.wait_ns_total.get_mut(m) {
                B::add(t, rec.wait_ns);
            }
            if let Some(x) = self.wait_ns_max.get_mut(m) {
                B::raise(x, rec.wait_ns);
            }
        }
        let hold = now.saturating_sub(rec.locked_ns);
        if let Some(t) = self.hold_ns_total.get_mut(m) {
            B::add(t, hold);
        }
        if let Some(x) = self.hold_ns_max.get_mut(m) {
            B::raise(x, hold);
        }
        // The canary: under the shared lock a write must never extend the
        // file beyond the size it had when the lock was taken.
        if mode == LockMode::Shared && ret > 0 && rec.pos.wrapping_add(ret) > rec.i_size_locked {
            B::add(&mut self.shared_extended, 1);
        }
    }

    /// Adds `n` acquisitions in `mode` by writes with `reasons` (tests,
    /// and formats that read counts back).
    pub fn add_acquisitions(&mut self, mode: LockMode, reasons: Reasons, n: u64) {
        self.acquisitions[mode as usize][reasons.bits() as usize] += n;
    }

    /// Calls of `fuse_file_write_iter()` counted.
    pub fn writes(&self) -> u64 {
        self.acquisitions.iter().flatten().sum::<u64>() + self.unlocked
    }

    /// Lock acquisitions in `mode`, each write once.
    pub fn acquired(&self, mode: LockMode) -> u64 {
        self.acquisitions[mode as usize].iter().sum()
    }

    /// Lock acquisitions in `mode` of writes that had `reason` (`Eligible`:
    /// no reason at all).
    pub fn acquired_for(&self, mode: LockMode, reason: Reason) -> u64 {
        let row = &self.acquisitions[mode as usize];
        (0..REASON_SETS)
            .filter(|&set| Reasons::from_bits(set as u32).contains(reason))
            .map(|set| row[set])
            .sum()
    }

    /// Direct overwrites inside EOF that took the lock exclusive.
    pub fn overwrites_exclusive(&self) -> u64 {
        let row = &self.acquisitions[LockMode::Exclusive as usize];
        (0..REASON_SETS)
            .filter(|&set| Reasons::from_bits(set as u32).is_direct_overwrite())
            .map(|set| row[set])
            .sum()
    }

    /// Adds `other` into `self` the way per-CPU copies combine.
    pub fn merge(&mut self, other: &WriteStats) {
        for m in 0..LockMode::COUNT {
            for (a, b) in self.acquisitions[m].iter_mut().zip(&other.acquisitions[m]) {
                *a += b;
            }
            self.contended[m] += other.contended[m];
            self.wait_ns_total[m] += other.wait_ns_total[m];
            self.wait_ns_max[m] = self.wait_ns_max[m].max(other.wait_ns_max[m]);
            self.hold_ns_total[m] += other.hold_ns_total[m];
            self.hold_ns_max[m] = self.hold_ns_max[m].max(other.hold_ns_max[m]);
        }
        self.unlocked += other.unlocked;
        self.bytes += other.bytes;
        self.errors += other.errors;
        self.latency_ns_total += other.latency_ns_total;
        self.shared_extended += other.shared_extended;
        self.overwrites_exclusive_latency_ns += other.overwrites_exclusive_latency_ns;
        self.overwrites_exclusive_wait_ns += other.overwrites_exclusive_wait_ns;
    }
}

/// Histograms of one (device, inode, path) or one path. See [`crate::hist`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Histograms {
    /// Lock wait time by `[LockMode]` (contended acquisitions only).
    pub wait: [[u64; HIST_BUCKETS]; LockMode::COUNT],
    /// Lock hold time by `[LockMode]`.
    pub hold: [[u64; HIST_BUCKETS]; LockMode::COUNT],
    /// Whole-write latency.
    pub latency: [u64; HIST_BUCKETS],
}

impl Histograms {
    pub const ZERO: Histograms = Histograms {
        wait: [[0; HIST_BUCKETS]; LockMode::COUNT],
        hold: [[0; HIST_BUCKETS]; LockMode::COUNT],
        latency: [0; HIST_BUCKETS],
    };

    /// Records one finished write's latency, hold and wait at `now`.
    #[inline(always)]
    pub fn record<B: Bump>(&mut self, rec: &InFlight, now: u64) {
        fn bump_bucket<B: Bump>(buckets: &mut [u64; HIST_BUCKETS], ns: u64) {
            // `get_mut` rather than indexing: no panic path for the verifier.
            if let Some(slot) = buckets.get_mut(hist::bucket(ns)) {
                B::add(slot, 1);
            }
        }
        bump_bucket::<B>(&mut self.latency, now.saturating_sub(rec.start_ns));
        let Some(mode) = rec.lock_mode() else {
            return;
        };
        if let Some(hold) = self.hold.get_mut(mode as usize) {
            bump_bucket::<B>(hold, now.saturating_sub(rec.locked_ns));
        }
        if rec.contended != 0 {
            if let Some(wait) = self.wait.get_mut(mode as usize) {
                bump_bucket::<B>(wait, rec.wait_ns);
            }
        }
    }

    /// Adds `o`'s buckets (per-CPU copies combine this way).
    pub fn merge(&mut self, o: &Histograms) {
        fn add(a: &mut [u64; HIST_BUCKETS], b: &[u64; HIST_BUCKETS]) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        for m in 0..LockMode::COUNT {
            add(&mut self.wait[m], &o.wait[m]);
            add(&mut self.hold[m], &o.hold[m]);
        }
        add(&mut self.latency, &o.latency);
    }
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms::ZERO
    }
}

/// Longest file name kept (longer names are cut).
pub const NAME_LEN: usize = 64;

/// A file's dentry name, as seen the first time it was written.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InodeName {
    pub len: u32,
    pub _pad: u32,
    pub name: [u8; NAME_LEN],
}

impl Default for InodeName {
    fn default() -> InodeName {
        InodeName::EMPTY
    }
}

impl InodeName {
    pub const EMPTY: InodeName = InodeName {
        len: 0,
        _pad: 0,
        name: [0; NAME_LEN],
    };

    pub fn as_bytes(&self) -> &[u8] {
        let len = (self.len as usize).min(NAME_LEN);
        &self.name[..len]
    }
}

/// Everything fuselock keeps of one (device, inode, path), in one value so
/// that a write updates one map element: shared between CPUs (a per-CPU copy
/// would cost this size times the possible CPUs per file), so updated with
/// atomic adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStats {
    pub stats: WriteStats,
    pub hists: Histograms,
    /// `bpf_ktime_get_ns()` of the last write's return: when the map fills,
    /// userspace forgets the files idle longest.
    pub last_write_ns: u64,
    /// The file's device and path's slot in `DEV_STATS`, plus one, as the
    /// file's first write found it: 0 not looked up yet, [`NO_DEVICE_SLOT`]
    /// none (the device's totals are in `DEV_TOTALS`).
    pub device_slot: u32,
    pub _pad: u32,
    /// The dentry name, read when the file was first written.
    pub name: InodeName,
}

/// [`FileStats::device_slot`] of a file whose device has no slot.
pub const NO_DEVICE_SLOT: u32 = u32::MAX;

impl FileStats {
    pub const ZERO: FileStats = FileStats {
        stats: WriteStats::ZERO,
        hists: Histograms::ZERO,
        last_write_ns: 0,
        device_slot: 0,
        _pad: 0,
        name: InodeName::EMPTY,
    };
}

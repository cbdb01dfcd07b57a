//! Map names, keys and values: the layout contract between the programs and
//! userspace.

use crate::{
    hist::{self, HIST_BUCKETS},
    Reason, Reasons,
};

/// Per-(device, inode, path) counters: `LRU_PERCPU_HASH<InodeKey, WriteStats>`.
pub const MAP_INODE_STATS: &str = "INODE_STATS";
/// File names: `LRU_HASH<InodeKey, InodeName>`, filled when a key is first seen.
pub const MAP_INODE_NAMES: &str = "INODE_NAMES";
/// Never-evicted totals per (device, path): `PERCPU_HASH<InodeKey (ino 0), WriteStats>`.
/// Not LRU: a counter exported to monitoring must never go backwards; a full
/// map is counted in `Health::dev_totals_full`.
pub const MAP_DEV_TOTALS: &str = "DEV_TOTALS";
/// Capacity of `DEV_TOTALS`: FUSE mounts × paths on one host.
pub const MAX_DEVICES: u32 = 4_096;
/// Never-evicted totals per path: `PERCPU_ARRAY<WriteStats>` indexed by `WritePath`.
pub const MAP_PATH_TOTALS: &str = "PATH_TOTALS";
/// The programs' own health counters: `PERCPU_ARRAY<Health>` with one slot.
pub const MAP_HEALTH: &str = "HEALTH";
/// Writes in flight: `HASH<u64 pid_tgid, InFlight>`.
pub const MAP_INFLIGHT: &str = "INFLIGHT";
/// Wait, hold and latency histograms: `LRU_HASH<InodeKey, Histograms>`,
/// updated with atomic adds (a per-CPU copy of 1.3 KiB per inode would cost
/// too much memory on large machines).
pub const MAP_INODE_HISTS: &str = "INODE_HISTS";
/// Histograms per path, never evicted: `PERCPU_ARRAY<Histograms>` indexed by `WritePath`.
pub const MAP_PATH_HISTS: &str = "PATH_HISTS";
/// Who writes: `LRU_PERCPU_HASH<WriterKey, WriterStats>`.
pub const MAP_WRITERS: &str = "WRITERS";
/// Open-time evidence per file: `LRU_HASH<InodeKey (path = 0), OpenStats>`.
pub const MAP_OPENS: &str = "OPENS";
/// Opens in flight: `HASH<u64 pid_tgid, u64 file>` plus the flags the server sent.
pub const MAP_OPENS_INFLIGHT: &str = "OPENS_INFLIGHT";
/// Capacity of the writers map: as many (file, process) pairs as the
/// default number of files. Its values are per CPU, so each entry costs
/// 32 bytes on every CPU; an evicted pair loses only its place in a file's
/// list of writers, never a count.
pub const MAX_WRITERS: u32 = 16_384;
/// The per-CPU rings of recent writes (see [`DirtyRing`]).
pub const MAP_DIRTY: &str = "DIRTY";
/// Slots in each CPU's [`DirtyRing`] (a power of two).
pub const DIRTY_SLOTS: usize = 1024;
/// One `u64` that userspace bumps at each refresh, before it reads the
/// rings (see [`DirtyRing`]).
pub const MAP_EPOCH: &str = "EPOCH";

/// Default capacity of the per-inode maps.
pub const DEFAULT_MAX_INODES: u32 = 16_384;
/// Capacity of the in-flight map: concurrent FUSE writes, host-wide.
pub const MAX_INFLIGHT: u32 = 8_192;

/// The FUSE write path a write took in `fuse_file_write_iter()`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WritePath {
    /// `FOPEN_PASSTHROUGH`: `fuse_passthrough_write_iter()`.
    Passthrough = 0,
    /// `FOPEN_DIRECT_IO` (which overrides passthrough): `fuse_direct_write_iter()`.
    DirectIo = 1,
}

impl WritePath {
    pub const COUNT: usize = 2;
    pub const ALL: [WritePath; 2] = [WritePath::Passthrough, WritePath::DirectIo];

    /// The path `fuse_file_write_iter()` dispatches to, or `None` for the
    /// page-cache path, which fuselock does not watch.
    #[inline(always)]
    pub fn of(open_flags: u32, has_backing_file: bool) -> Option<WritePath> {
        if open_flags & crate::classify::FOPEN_DIRECT_IO != 0 {
            Some(WritePath::DirectIo)
        } else if has_backing_file {
            Some(WritePath::Passthrough)
        } else {
            None
        }
    }

    pub const fn from_u32(v: u32) -> Option<WritePath> {
        match v {
            0 => Some(WritePath::Passthrough),
            1 => Some(WritePath::DirectIo),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            WritePath::Passthrough => "passthrough",
            WritePath::DirectIo => "direct_io",
        }
    }
}

impl core::fmt::Display for WritePath {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// The mode the FUSE inode's `i_rwsem` was held in.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockMode {
    Shared = 0,
    Exclusive = 1,
}

impl LockMode {
    pub const COUNT: usize = 2;
    pub const ALL: [LockMode; 2] = [LockMode::Shared, LockMode::Exclusive];

    pub const fn name(self) -> &'static str {
        match self {
            LockMode::Shared => "shared",
            LockMode::Exclusive => "exclusive",
        }
    }
}

/// Key of the per-inode maps. `dev` is the kernel's `dev_t` of the FUSE
/// superblock (`MAJOR = dev >> 20`, `MINOR = dev & 0xfffff`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeKey {
    pub ino: u64,
    pub dev: u32,
    /// A [`WritePath`] discriminant.
    pub path: u32,
}

/// Counters of the writes to one (device, inode, path), or of one whole path.
///
/// Per-CPU: userspace sums the CPUs' copies, except `*_max`, which it maxes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Calls of `fuse_file_write_iter()` that took this path.
    pub writes: u64,
    /// Bytes written (sum of positive return values).
    pub bytes: u64,
    /// Calls that returned an error.
    pub errors: u64,
    /// Lock acquisitions by `[LockMode][Reason slot]`; a write counts once
    /// under each reason it has.
    pub acquisitions: [[u64; Reason::COUNT]; LockMode::COUNT],
    /// Lock acquisitions by `[LockMode]` (each write once).
    pub acquired: [u64; LockMode::COUNT],
    /// Writes during which the FUSE inode lock was never seen held (zero-length
    /// writes and writes rejected before the lock or before the I/O).
    pub unlocked: u64,
    /// Acquisitions by `[LockMode]` that had to wait.
    pub contended: [u64; LockMode::COUNT],
    pub wait_ns_total: [u64; LockMode::COUNT],
    pub wait_ns_max: [u64; LockMode::COUNT],
    /// Time from the first point inside the critical section to the return.
    pub hold_ns_total: [u64; LockMode::COUNT],
    pub hold_ns_max: [u64; LockMode::COUNT],
    /// Sum of whole-call latencies.
    pub latency_ns_total: u64,
    /// Writes that held the lock shared and still grew the file: the race the
    /// patch's unlocked EOF check allows.
    pub shared_extended: u64,
    /// Direct overwrites inside EOF that took the lock exclusive (eligible
    /// but, perhaps, for the server's flag), their whole-call latency and
    /// their lock waits: the writes and the time the series gives back.
    pub overwrites_exclusive: u64,
    pub overwrites_exclusive_latency_ns: u64,
    pub overwrites_exclusive_wait_ns: u64,
}

impl WriteStats {
    /// Counts one finished write (`ret`: bytes written, or an error) at
    /// `now`: the programs' accounting for every map of counters, shared so
    /// that host tests fill maps exactly as the programs do.
    #[inline(always)]
    pub fn account(&mut self, rec: &InFlight, ret: i64, now: u64) {
        self.writes += 1;
        if ret < 0 {
            self.errors += 1;
        } else {
            self.bytes += ret as u64;
        }
        self.latency_ns_total += now.saturating_sub(rec.start_ns);

        let Some(mode) = rec.lock_mode() else {
            self.unlocked += 1;
            return;
        };
        let m = mode as usize;
        self.acquired[m] += 1;
        let reasons = Reasons::from_bits(rec.reasons);
        let row = &mut self.acquisitions[m];
        for reason in Reason::ALL {
            // `get_mut`: if the loop is not unrolled the slot is not a
            // constant, and an indexing bounds check would leave a panic
            // path the verifier rejects.
            if let Some(count) = row.get_mut(reason.slot()) {
                if reasons.contains(reason) {
                    *count += 1;
                }
            }
        }
        if mode == LockMode::Exclusive && reasons.is_direct_overwrite() {
            self.overwrites_exclusive += 1;
            self.overwrites_exclusive_latency_ns += now.saturating_sub(rec.start_ns);
            if rec.contended != 0 {
                self.overwrites_exclusive_wait_ns += rec.wait_ns;
            }
        }
        if rec.contended != 0 {
            self.contended[m] += 1;
            self.wait_ns_total[m] += rec.wait_ns;
            if rec.wait_ns > self.wait_ns_max[m] {
                self.wait_ns_max[m] = rec.wait_ns;
            }
        }
        let hold = now.saturating_sub(rec.locked_ns);
        self.hold_ns_total[m] += hold;
        if hold > self.hold_ns_max[m] {
            self.hold_ns_max[m] = hold;
        }
        // The canary: under the shared lock a write must never extend the
        // file beyond the size it had when the lock was taken.
        if mode == LockMode::Shared && ret > 0 && rec.pos.wrapping_add(ret) > rec.i_size_locked {
            self.shared_extended += 1;
        }
    }

    /// Adds `other` into `self` the way per-CPU copies combine.
    pub fn merge(&mut self, other: &WriteStats) {
        self.writes += other.writes;
        self.bytes += other.bytes;
        self.errors += other.errors;
        for m in 0..LockMode::COUNT {
            for r in 0..Reason::COUNT {
                self.acquisitions[m][r] += other.acquisitions[m][r];
            }
            self.acquired[m] += other.acquired[m];
            self.contended[m] += other.contended[m];
            self.wait_ns_total[m] += other.wait_ns_total[m];
            self.wait_ns_max[m] = self.wait_ns_max[m].max(other.wait_ns_max[m]);
            self.hold_ns_total[m] += other.hold_ns_total[m];
            self.hold_ns_max[m] = self.hold_ns_max[m].max(other.hold_ns_max[m]);
        }
        self.unlocked += other.unlocked;
        self.latency_ns_total += other.latency_ns_total;
        self.shared_extended += other.shared_extended;
        self.overwrites_exclusive += other.overwrites_exclusive;
        self.overwrites_exclusive_latency_ns += other.overwrites_exclusive_latency_ns;
        self.overwrites_exclusive_wait_ns += other.overwrites_exclusive_wait_ns;
    }
}

/// Declares a struct of `u64` counters and its `merge`, so that the field list
/// is written once.
macro_rules! counters {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$field_meta:meta])* pub $field:ident: u64,)* }) => {
        $(#[$meta])*
        pub struct $name {
            $($(#[$field_meta])* pub $field: u64,)*
        }

        impl $name {
            /// The fields' names, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($field)),*];

            /// Adds `other`'s counters to these (per-CPU copies into one).
            pub fn merge(&mut self, other: &$name) {
                $(self.$field += other.$field;)*
            }

            /// Each field's name and value, in declaration order: for
            /// formats that write every counter without naming them again.
            pub fn fields(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [$((stringify!($field), self.$field)),*].into_iter()
            }

            /// The field called `name`.
            pub fn field_mut(&mut self, name: &str) -> Option<&mut u64> {
                match name {
                    $(stringify!($field) => Some(&mut self.$field),)*
                    _ => None,
                }
            }
        }
    };
}

counters! {
    /// The programs' own health: everything that could make counts incomplete
    /// is counted here, never dropped silently. This is the one declaration
    /// of these counters: userspace's health report embeds it, and formats
    /// that write every counter read them through [`Health::fields`]. Some
    /// are bookkeeping that userspace turns into other figures (evictions)
    /// or uses only to decide whether to read the maps.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Health {
        /// New keys inserted into `INODE_STATS`. Evictions are
        /// `inserts - live entries - entries userspace deleted`.
        pub inode_inserts: u64,
        /// Inserts into `INODE_STATS` that failed (the write's counts are in
        /// `PATH_TOTALS` only).
        pub inode_insert_failed: u64,
        /// Writes not tracked because `INFLIGHT` was full.
        pub inflight_full: u64,
        /// Writes that started while the same task had one in flight (a missed
        /// return probe, or FUSE stacked on FUSE); the older record is dropped.
        pub inflight_replaced: u64,
        /// Returns seen with no matching in-flight record.
        pub exit_unmatched: u64,
        /// Kernel memory reads that failed.
        pub read_errors: u64,
        /// Lock observations where the rwsem was not held by this task as expected.
        pub lock_state_unknown: u64,
        /// Writes to FUSE files on the page-cache path (not watched).
        pub cached_path_writes: u64,
        /// Program runs with no configuration (should never happen).
        pub unconfigured: u64,
        /// Writes whose device had no room in `DEV_TOTALS`.
        pub dev_totals_full: u64,
        /// Opens counted in `OPENS`: with the write counters in `PATH_TOTALS` and
        /// `inode_inserts`, it tells userspace whether any per-inode map changed
        /// since its last read, so an idle host costs no whole-map reads.
        pub opens: u64,
    }
}

/// `mode` values of [`InFlight`].
pub const INFLIGHT_UNLOCKED: u32 = 0;
pub const INFLIGHT_SHARED: u32 = 1;
pub const INFLIGHT_EXCLUSIVE: u32 = 2;

/// One FUSE write between entry and return of `fuse_file_write_iter()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    pub iocb: u64,
    pub file: u64,
    pub inode: u64,
    /// Address of the FUSE inode's `i_rwsem`: the only lock fuselock counts.
    pub rwsem: u64,
    pub key: InodeKey,
    pub start_ns: u64,
    /// When the lock was first seen held; 0 if never.
    pub locked_ns: u64,
    /// `lock:contention_begin` on `rwsem` by this task; 0 if not waiting.
    pub wait_start_ns: u64,
    /// Total time waited for `rwsem` during this write.
    pub wait_ns: u64,
    pub i_size_entry: i64,
    /// `i_size` when the lock was first seen held.
    pub i_size_locked: i64,
    pub pos: i64,
    pub reasons: u32,
    /// `INFLIGHT_*`.
    pub mode: u32,
    /// Non-zero if this write waited for `rwsem`.
    pub contended: u32,
    pub _pad: u32,
}

impl InFlight {
    /// The mode the lock was seen held in; `None` if it never was.
    #[inline(always)]
    pub const fn lock_mode(&self) -> Option<LockMode> {
        match self.mode {
            INFLIGHT_SHARED => Some(LockMode::Shared),
            INFLIGHT_EXCLUSIVE => Some(LockMode::Exclusive),
            _ => None,
        }
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
    /// Records one finished write's latency, hold and wait at `now`. `bump`
    /// adds one to a bucket: atomically where the value is shared between
    /// CPUs.
    #[inline(always)]
    pub fn record(&mut self, rec: &InFlight, now: u64, mut bump: impl FnMut(&mut u64)) {
        let mut bump_bucket = |buckets: &mut [u64; HIST_BUCKETS], ns: u64| {
            // `get_mut` rather than indexing: no panic path for the verifier.
            if let Some(slot) = buckets.get_mut(hist::bucket(ns)) {
                bump(slot);
            }
        };
        bump_bucket(&mut self.latency, now.saturating_sub(rec.start_ns));
        let Some(mode) = rec.lock_mode() else {
            return;
        };
        if let Some(hold) = self.hold.get_mut(mode as usize) {
            bump_bucket(hold, now.saturating_sub(rec.locked_ns));
        }
        if rec.contended != 0 {
            if let Some(wait) = self.wait.get_mut(mode as usize) {
                bump_bucket(wait, rec.wait_ns);
            }
        }
    }

    pub const ZERO: Histograms = Histograms {
        wait: [[0; HIST_BUCKETS]; LockMode::COUNT],
        hold: [[0; HIST_BUCKETS]; LockMode::COUNT],
        latency: [0; HIST_BUCKETS],
    };
}

impl Histograms {
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

/// Key of [`WriterStats`]: one process writing one (device, inode, path).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriterKey {
    pub ino: u64,
    pub dev: u32,
    pub path: u32,
    pub tgid: u32,
    pub _pad: u32,
}

impl WriterKey {
    /// Process `tgid` writing the entry `key`.
    #[inline(always)]
    pub const fn new(key: InodeKey, tgid: u32) -> WriterKey {
        WriterKey {
            ino: key.ino,
            dev: key.dev,
            path: key.path,
            tgid,
            _pad: 0,
        }
    }

    /// The entry written.
    #[inline(always)]
    pub const fn inode(&self) -> InodeKey {
        InodeKey {
            ino: self.ino,
            dev: self.dev,
            path: self.path,
        }
    }
}

pub const COMM_LEN: usize = 16;

/// A per-CPU value: each field is this CPU's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    pub writes: u64,
    /// `comm` of the process's thread that first wrote from this CPU in
    /// `dirty_epoch`.
    pub comm: [u8; COMM_LEN],
    /// The `EPOCH` in which this (entry, writer) was last put in this CPU's
    /// [`DirtyRing`]: once per refresh is enough (bookkeeping, not a count).
    pub dirty_epoch: u64,
}

impl WriterStats {
    /// A writer's value as first inserted in refresh epoch `epoch`: no
    /// writes yet, and not yet in this CPU's ring for that epoch.
    #[inline(always)]
    pub const fn fresh(epoch: u64) -> WriterStats {
        WriterStats {
            writes: 0,
            comm: [0; COMM_LEN],
            dirty_epoch: epoch.wrapping_sub(1),
        }
    }

    /// Counts one write in refresh epoch `epoch`. True for the first of the
    /// epoch on this CPU: the caller then records the name (`comm`) and puts
    /// the pair in this CPU's [`DirtyRing`].
    #[inline(always)]
    pub fn count(&mut self, epoch: u64) -> bool {
        self.writes += 1;
        if self.dirty_epoch == epoch {
            return false;
        }
        self.dirty_epoch = epoch;
        true
    }
}

/// What opens of one file asked for and what the kernel kept, read at the
/// entry and return of `fuse_file_io_open()` (where 6.12 strips
/// `FOPEN_PARALLEL_DIRECT_WRITES` from opens without `FOPEN_DIRECT_IO`).
///
/// The model's open-time evidence of a file too.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenStats {
    pub opens: u64,
    /// Opens whose server reply carried `FOPEN_PASSTHROUGH`.
    pub passthrough: u64,
    /// Opens whose server reply carried `FOPEN_DIRECT_IO`.
    pub direct_io: u64,
    /// Opens whose server reply asked for `FOPEN_PARALLEL_DIRECT_WRITES`.
    pub parallel_asked: u64,
    /// ... and of those, how many still had it after `fuse_file_io_open()`.
    pub parallel_kept: u64,
    /// Passthrough opens (without direct-io) that asked for it.
    pub passthrough_parallel_asked: u64,
    /// ... and kept it: only a patched kernel keeps it.
    pub passthrough_parallel_kept: u64,
    /// The `open_flags` of the last open as the server sent them, and as
    /// `fuse_file_io_open()` left them.
    pub last_flags_asked: u32,
    pub last_flags_kept: u32,
}

impl OpenStats {
    /// Adds another file's counts; the `last_flags_*` become `o`'s.
    pub fn merge(&mut self, o: &OpenStats) {
        self.opens += o.opens;
        self.passthrough += o.passthrough;
        self.direct_io += o.direct_io;
        self.parallel_asked += o.parallel_asked;
        self.parallel_kept += o.parallel_kept;
        self.passthrough_parallel_asked += o.passthrough_parallel_asked;
        self.passthrough_parallel_kept += o.passthrough_parallel_kept;
        self.last_flags_asked = o.last_flags_asked;
        self.last_flags_kept = o.last_flags_kept;
    }
}

/// An open between entry and return of `fuse_file_io_open()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenInFlight {
    pub file: u64,
    pub flags_asked: u32,
    pub _pad: u32,
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

/// Per CPU, the (inode, writer) pairs written lately: slot `i % DIRTY_SLOTS`
/// holds push number `i`. A write pushes its pair only if the pair was not
/// pushed yet in the current `EPOCH`, after all its per-inode updates; so a
/// busy file costs one slot per refresh, not one per write. Userspace bumps
/// the epoch, reads the rings, and looks up the pairs pushed since the
/// refresh before last: a write that skipped its push did so because a push
/// of its pair in its epoch came before it, and that push is in one of those
/// two ranges. When more than half a ring went by on a CPU, userspace reads
/// every entry instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirtyRing {
    /// Writes recorded on this CPU since attach.
    pub head: u64,
    pub keys: [WriterKey; DIRTY_SLOTS],
}

impl DirtyRing {
    /// Records that `key` was written: the oldest slot is overwritten once
    /// the ring is full, which the reader detects from `head`.
    #[inline(always)]
    pub fn push(&mut self, key: WriterKey) {
        // `get_mut` with a masked index: no bounds-check panic path for the
        // verifier.
        if let Some(slot) = self.keys.get_mut((self.head as usize) & (DIRTY_SLOTS - 1)) {
            *slot = key;
        }
        self.head += 1;
    }
}

impl Default for DirtyRing {
    fn default() -> DirtyRing {
        DirtyRing {
            head: 0,
            keys: [WriterKey::default(); DIRTY_SLOTS],
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): `#[repr(C)]` structs of integers and integer arrays laid
    // out without padding (checked by the size tests below), valid for any
    // bit pattern.
    unsafe impl aya::Pod for super::InodeKey {}
    unsafe impl aya::Pod for super::WriteStats {}
    unsafe impl aya::Pod for super::Health {}
    unsafe impl aya::Pod for super::InFlight {}
    unsafe impl aya::Pod for super::InodeName {}
    unsafe impl aya::Pod for super::Histograms {}
    unsafe impl aya::Pod for super::WriterKey {}
    unsafe impl aya::Pod for super::WriterStats {}
    unsafe impl aya::Pod for super::DirtyRing {}
    unsafe impl aya::Pod for super::OpenStats {}
    unsafe impl aya::Pod for super::OpenInFlight {}
}

#[cfg(test)]
mod tests;

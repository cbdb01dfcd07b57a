//! The "may this write take the inode lock shared?" classifier.
//!
//! It mirrors the four conditions of "fuse: allow parallel direct writes in
//! passthrough" (see `shared/reference/`), plus the fifth that the direct-io
//! path (`fuse_dio_wr_exclusive_lock()`) adds: the inode in cached I/O mode.
//! Unlike the kernel, which stops at the first failing condition, it records
//! every condition that fails, so users see all the reasons a write had to be
//! exclusive.

/// `FOPEN_PARALLEL_DIRECT_WRITES` (UAPI `linux/fuse.h`).
pub const FOPEN_PARALLEL_DIRECT_WRITES: u32 = 1 << 6;
/// `FOPEN_PASSTHROUGH` (UAPI `linux/fuse.h`).
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;
/// `FOPEN_DIRECT_IO` (UAPI `linux/fuse.h`).
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
/// `IOCB_DIRECT` (`include/linux/fs.h`; a macro, so not in BTF).
pub const IOCB_DIRECT: u32 = 1 << 17;
/// `IOCB_APPEND`, equal to `RWF_APPEND` since Linux 5.9.
pub const IOCB_APPEND: u32 = 0x10;

/// One reason a write cannot take the lock shared, or `Eligible` for none.
///
/// The discriminant is the reason's slot in [`crate::WriteStats::acquisitions`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// All four conditions hold: the patch lets this write run shared.
    Eligible = 0,
    /// The open lacks `FOPEN_PARALLEL_DIRECT_WRITES` in `ff->open_flags`.
    NoParallelFlag = 1,
    /// Not direct I/O (no `IOCB_DIRECT`).
    Buffered = 2,
    /// An append (`IOCB_APPEND`).
    Append = 3,
    /// `ki_pos + count > i_size`.
    PastEof = 4,
    /// `FUSE_I_CACHE_IO_MODE` is set on the inode: another open of the file
    /// does page-cache I/O (or waits to), and `fuse_dio_lock()` will not let
    /// direct writes share the lock beside it. A passthrough inode never
    /// enters that mode, so on that path this reason does not occur.
    CacheIoMode = 5,
    /// The write was eligible when it entered, reached past EOF by the
    /// time the lock was held, and ran exclusive. With the series' v3 (and
    /// `fuse_dio_lock()` on the direct-io path) that is the kernel's
    /// re-check of EOF under the shared lock; on v2 the same race lets the
    /// write run shared and grow the file (the canary); without the series
    /// the write was exclusive anyway.
    PastEofAtLock = 6,
}

/// How a reason is named wherever it is shown: the one declaration every
/// output reads (a new reason is its variant, its entry in [`Reason::info`]
/// and its classification).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReasonInfo {
    /// JSON keys, metric labels, `verify`'s text.
    pub name: &'static str,
    /// `stat`'s table: the column of exclusive acquisitions.
    pub column: &'static str,
    /// `top`'s exclusive column header.
    pub abbreviation: &'static str,
    /// The JSON schema version (docs/json.md) that first wrote it: older
    /// recordings lack it, and read it as 0.
    pub since_schema: u32,
}

impl Reason {
    /// Number of reason slots, `Eligible` included.
    pub const COUNT: usize = 7;
    /// Every reason in slot order.
    pub const ALL: [Reason; Self::COUNT] = [
        Reason::Eligible,
        Reason::NoParallelFlag,
        Reason::Buffered,
        Reason::Append,
        Reason::PastEof,
        Reason::CacheIoMode,
        Reason::PastEofAtLock,
    ];
    /// The reasons a write can have to be exclusive: every one but
    /// `Eligible`, in slot order (the columns of tables and `top`).
    pub const EXCLUSIVE: [Reason; Self::COUNT - 1] = [
        Reason::NoParallelFlag,
        Reason::Buffered,
        Reason::Append,
        Reason::PastEof,
        Reason::CacheIoMode,
        Reason::PastEofAtLock,
    ];

    /// How the reason is shown: an exhaustive match, so that a new reason
    /// cannot be left without a name anywhere.
    pub const fn info(self) -> ReasonInfo {
        let (name, column, abbreviation, since_schema) = match self {
            Reason::Eligible => ("eligible", "EXCL:ELIGIBLE", "ok", 1),
            Reason::NoParallelFlag => ("no_parallel_flag", "EXCL:NO_PARALLEL", "np", 1),
            Reason::Buffered => ("buffered", "EXCL:BUFFERED", "buf", 1),
            Reason::Append => ("append", "EXCL:APPEND", "app", 1),
            Reason::PastEof => ("past_eof", "EXCL:PAST_EOF", "eof", 1),
            Reason::CacheIoMode => ("cache_io_mode", "EXCL:CACHE_IO", "cio", 2),
            Reason::PastEofAtLock => ("past_eof_at_lock", "EXCL:EOF_AT_LOCK", "eol", 3),
        };
        ReasonInfo {
            name,
            column,
            abbreviation,
            since_schema,
        }
    }

    /// The name used in JSON, metrics and tables.
    pub const fn name(self) -> &'static str {
        self.info().name
    }

    pub const fn slot(self) -> usize {
        self as usize
    }

    const fn bit(self) -> u32 {
        match self {
            Reason::Eligible => 0,
            _ => 1 << (self as u32 - 1),
        }
    }
}

/// The set of failed conditions of one write; empty means eligible.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reasons(u32);

impl Reasons {
    pub const NONE: Reasons = Reasons(0);

    /// Every bit a reason can set.
    const MASK: u32 = (1 << (Reason::COUNT - 1)) - 1;

    pub const fn from_bits(bits: u32) -> Reasons {
        Reasons(bits & Self::MASK)
    }

    pub const fn bits(self) -> u32 {
        self.0
    }

    pub const fn is_eligible(self) -> bool {
        self.0 == 0
    }

    pub const fn contains(self, reason: Reason) -> bool {
        match reason {
            Reason::Eligible => self.0 == 0,
            _ => self.0 & reason.bit() != 0,
        }
    }

    /// A direct overwrite inside EOF, not an append: the series runs it
    /// shared once the server asks for parallel direct writes.
    pub const fn is_direct_overwrite(self) -> bool {
        self.0 & !Reason::NoParallelFlag.bit() == 0
    }

    #[must_use]
    pub const fn with(self, reason: Reason) -> Reasons {
        Reasons(self.0 | reason.bit())
    }
}

/// What the classifier needs to know about one write, read at the entry of
/// `fuse_file_write_iter()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteFacts {
    /// `ff->open_flags` of the open the write goes through.
    pub open_flags: u32,
    /// `iocb->ki_flags`.
    pub ki_flags: u32,
    /// `iocb->ki_pos`.
    pub pos: i64,
    /// `iov_iter_count(from)`.
    pub count: u64,
    /// `inode->i_size`.
    pub i_size: i64,
    /// `FUSE_I_CACHE_IO_MODE` in the FUSE inode's `state`.
    pub cache_io_mode: bool,
}

/// `ki_pos + count > i_size` with C's arithmetic: `loff_t + size_t` is
/// computed as unsigned and compared with `i_size` converted to unsigned.
#[inline(always)]
pub const fn past_eof(pos: i64, count: u64, i_size: i64) -> bool {
    (pos as u64).wrapping_add(count) > i_size as u64
}

/// The reasons of a write once its lock is held, judged where the kernel
/// judges EOF last (the series' v3 and `fuse_dio_lock()` re-check it under
/// the shared lock, where no truncate can move it):
/// - held exclusive, eligible when it entered, past EOF with the
///   `i_size_locked` the lock found: [`Reason::PastEofAtLock`] (the
///   kernel's re-check upgraded it);
/// - held shared, past EOF when it entered and for no other reason, inside
///   EOF under the lock: eligible (a truncate fuselock read at entry was
///   undone before the kernel checked).
///
/// Every other write keeps `entry`. A write held shared and past EOF under
/// the lock keeps it too: the series' v2 lets it grow the file, which the
/// canary (`shared_extended`) counts.
#[inline(always)]
pub fn at_lock(
    entry: Reasons,
    exclusive: bool,
    pos: i64,
    count: u64,
    i_size_locked: i64,
) -> Reasons {
    let past = past_eof(pos, count, i_size_locked);
    if exclusive && entry.is_eligible() && past {
        entry.with(Reason::PastEofAtLock)
    } else if !exclusive && entry.0 == Reason::PastEof.bit() && !past {
        Reasons::NONE
    } else {
        entry
    }
}

/// Every patch condition `facts` fails.
///
/// `past_eof` is the kernel's own expression, `ki_pos + count > i_size`, with
/// C's arithmetic: `loff_t + size_t` is computed as unsigned and compared with
/// `i_size` converted to unsigned. It is not evaluated for appends: an append's
/// position is only decided under the lock (it becomes EOF), the patch never
/// evaluates it for them, and on entry `ki_pos` is merely the descriptor's
/// file position, so the answer would be noise.
#[inline(always)]
pub fn classify(facts: &WriteFacts) -> Reasons {
    let mut reasons = Reasons::NONE;
    if facts.open_flags & FOPEN_PARALLEL_DIRECT_WRITES == 0 {
        reasons = reasons.with(Reason::NoParallelFlag);
    }
    if facts.ki_flags & IOCB_DIRECT == 0 {
        reasons = reasons.with(Reason::Buffered);
    }
    if facts.ki_flags & IOCB_APPEND != 0 {
        reasons = reasons.with(Reason::Append);
    } else if past_eof(facts.pos, facts.count, facts.i_size) {
        reasons = reasons.with(Reason::PastEof);
    }
    if facts.cache_io_mode {
        reasons = reasons.with(Reason::CacheIoMode);
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARALLEL: u32 = FOPEN_PARALLEL_DIRECT_WRITES | FOPEN_PASSTHROUGH;

    fn facts(open_flags: u32, ki_flags: u32, pos: i64, count: u64, i_size: i64) -> WriteFacts {
        WriteFacts {
            open_flags,
            ki_flags,
            pos,
            count,
            i_size,
            cache_io_mode: false,
        }
    }

    #[test]
    fn direct_overwrite_inside_eof_is_eligible() {
        let r = classify(&facts(PARALLEL, IOCB_DIRECT, 4096, 4096, 8192));
        assert!(r.is_eligible());
        assert!(r.contains(Reason::Eligible));
        assert!(!r.contains(Reason::PastEof));
    }

    #[test]
    fn write_ending_exactly_at_eof_is_not_past_eof() {
        assert!(classify(&facts(PARALLEL, IOCB_DIRECT, 0, 8192, 8192)).is_eligible());
        let r = classify(&facts(PARALLEL, IOCB_DIRECT, 1, 8192, 8192));
        assert_eq!(r, Reasons::NONE.with(Reason::PastEof));
    }

    #[test]
    fn each_condition_alone() {
        assert_eq!(
            classify(&facts(FOPEN_PASSTHROUGH, IOCB_DIRECT, 0, 1, 10)),
            Reasons::NONE.with(Reason::NoParallelFlag)
        );
        assert_eq!(
            classify(&facts(PARALLEL, 0, 0, 1, 10)),
            Reasons::NONE.with(Reason::Buffered)
        );
        assert_eq!(
            classify(&facts(PARALLEL, IOCB_DIRECT | IOCB_APPEND, 0, 1, 10)),
            Reasons::NONE.with(Reason::Append)
        );
        assert_eq!(
            classify(&facts(PARALLEL, IOCB_DIRECT, 10, 1, 10)),
            Reasons::NONE.with(Reason::PastEof)
        );
    }

    #[test]
    fn a_direct_overwrite_is_eligible_but_perhaps_for_the_flag() {
        for open_flags in [PARALLEL, FOPEN_PASSTHROUGH] {
            assert!(classify(&facts(open_flags, IOCB_DIRECT, 0, 1, 10)).is_direct_overwrite());
            assert!(!classify(&facts(open_flags, 0, 0, 1, 10)).is_direct_overwrite());
            assert!(!classify(&facts(open_flags, IOCB_DIRECT, 10, 1, 10)).is_direct_overwrite());
            let append = IOCB_DIRECT | IOCB_APPEND;
            assert!(!classify(&facts(open_flags, append, 0, 1, 10)).is_direct_overwrite());
        }
    }

    #[test]
    fn cached_io_mode_is_a_reason_of_its_own() {
        let cached = WriteFacts {
            cache_io_mode: true,
            ..facts(PARALLEL, IOCB_DIRECT, 0, 1, 10)
        };
        let r = classify(&cached);
        assert_eq!(r, Reasons::NONE.with(Reason::CacheIoMode));
        assert!(!r.is_direct_overwrite());
        assert_eq!(Reasons::from_bits(r.bits()), r, "the bit survives the map");
        let all = WriteFacts {
            cache_io_mode: true,
            ..facts(0, 0, 100, 1, 10)
        };
        assert_eq!(classify(&all).bits(), 0b11011);
    }

    #[test]
    fn records_every_failing_condition() {
        let r = classify(&facts(0, 0, 100, 1, 10));
        assert!(r.contains(Reason::NoParallelFlag));
        assert!(r.contains(Reason::Buffered));
        assert!(r.contains(Reason::PastEof));
        assert!(!r.contains(Reason::Append));
        assert!(!r.contains(Reason::Eligible));
        assert_eq!(r.bits(), 0b1011);
    }

    #[test]
    fn append_is_never_also_past_eof() {
        // On entry an append's ki_pos is the fd's position, possibly far past EOF.
        let r = classify(&facts(
            PARALLEL,
            IOCB_DIRECT | IOCB_APPEND,
            1 << 40,
            4096,
            0,
        ));
        assert_eq!(r, Reasons::NONE.with(Reason::Append));
    }

    #[test]
    fn past_eof_uses_c_unsigned_arithmetic() {
        // loff_t + size_t wraps as unsigned in C; a huge count wraps around.
        let r = classify(&facts(PARALLEL, IOCB_DIRECT, 8, u64::MAX, 100));
        assert!(r.is_eligible(), "8 + (2^64-1) wraps to 7, inside EOF");
        // A negative i_size compares as a huge unsigned value, like the kernel.
        assert!(classify(&facts(PARALLEL, IOCB_DIRECT, 0, 1, -1)).is_eligible());
    }

    #[test]
    fn other_flags_are_ignored() {
        let noise_open = PARALLEL | FOPEN_DIRECT_IO | (1 << 20);
        let noise_ki = IOCB_DIRECT | 1 | (1 << 3);
        assert!(classify(&facts(noise_open, noise_ki, 0, 1, 1)).is_eligible());
    }

    #[test]
    fn reason_names_and_slots_are_stable() {
        let names: [&str; Reason::COUNT] = Reason::ALL.map(Reason::name);
        assert_eq!(
            names,
            [
                "eligible",
                "no_parallel_flag",
                "buffered",
                "append",
                "past_eof",
                "cache_io_mode",
                "past_eof_at_lock"
            ]
        );
        assert_eq!(Reason::EXCLUSIVE, Reason::ALL[1..]);
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.slot(), i);
        }
    }

    #[test]
    fn every_reason_has_a_distinct_column_and_abbreviation() {
        for a in Reason::ALL {
            for b in Reason::ALL.iter().filter(|b| **b != a) {
                assert_ne!(a.info().column, b.info().column);
                assert_ne!(a.info().abbreviation, b.info().abbreviation);
            }
            assert!(a.info().column.starts_with("EXCL:"), "{a:?}");
            assert!(a.info().since_schema >= 1);
        }
    }

    #[test]
    fn eof_is_judged_again_under_the_lock() {
        let eligible = Reasons::NONE;
        // Inside EOF at entry (8192 bytes), past it once locked (4096).
        let at = |exclusive, size| at_lock(eligible, exclusive, 4096, 4096, size);
        assert_eq!(at(true, 4096), eligible.with(Reason::PastEofAtLock));
        // Still inside EOF: exclusive for another cause, not this one.
        assert_eq!(at(true, 8192), eligible);
        // Shared and past EOF: v2's race, which the canary counts instead.
        assert_eq!(at(false, 4096), eligible);
        // A write with a reason at entry was never eligible.
        let buffered = Reasons::NONE.with(Reason::Buffered);
        assert_eq!(at_lock(buffered, true, 4096, 4096, 0), buffered);
        // Past EOF at entry (4096 bytes), inside it once locked shared
        // (8192): the kernel checked after the file grew back.
        let past = Reasons::NONE.with(Reason::PastEof);
        assert_eq!(at_lock(past, false, 4096, 4096, 8192), eligible);
        // ... but not when it holds the lock exclusive, nor for an append's
        // or a buffered write's other reasons, nor while still past EOF.
        assert_eq!(at_lock(past, true, 4096, 4096, 8192), past);
        assert_eq!(
            at_lock(past.with(Reason::Buffered), false, 4096, 4096, 8192),
            past.with(Reason::Buffered)
        );
        assert_eq!(at_lock(past, false, 4096, 4096, 4096), past);
        assert!(!eligible.with(Reason::PastEofAtLock).is_direct_overwrite());
    }
}

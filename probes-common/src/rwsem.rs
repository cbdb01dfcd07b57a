//! Decoding the state of a held `struct rw_semaphore`.
//!
//! fuselock does not probe `down_read()`/`down_write()`: they run system-wide
//! at high rates and a probe there would be paid by every task on the host.
//! Instead it looks at the FUSE inode's `i_rwsem` from a point that runs while
//! the lock is held (see `probes-ebpf`), and decodes which way it is held.

use crate::LockMode;

/// `RWSEM_WRITER_LOCKED` (`kernel/locking/rwsem.c`).
pub const RWSEM_WRITER_LOCKED: u64 = 1 << 0;
/// `RWSEM_READER_SHIFT`: reader count lives in bits 8 and up.
pub const RWSEM_READER_SHIFT: u32 = 8;
/// Low bits of `owner` that are flags, not part of the task pointer.
pub const RWSEM_OWNER_FLAGS_MASK: u64 = 0x7;

/// `READER_BIAS` (`include/linux/rwbase_rt.h`): set in `readers` while no
/// writer holds or waits for a PREEMPT_RT rwsem.
pub const RT_READER_BIAS: u32 = 1 << 31;
/// `WRITER_BIAS`: `readers` is exactly this while a writer holds it.
pub const RT_WRITER_BIAS: u32 = 1 << 30;

/// How the kernel builds `struct rw_semaphore`, told apart by its BTF.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RwsemLayout {
    /// `kernel/locking/rwsem.c`: an `atomic_long_t count` whose bit 0 is the
    /// writer and whose bits 8 and up count readers, and an `owner` word.
    Classic = 0,
    /// PREEMPT_RT's `struct rwbase_rt` (`kernel/locking/rwbase_rt.c`): an
    /// `atomic_t readers` counted from [`RT_READER_BIAS`] (or exactly
    /// [`RT_WRITER_BIAS`] under a writer) and an `rt_mutex_base` whose
    /// `owner` is the writer while it holds the lock.
    Rt = 1,
}

impl RwsemLayout {
    /// The layout a configuration word names; an unknown word is the
    /// classic layout, which then fails to decode and is counted.
    pub const fn from_u32(word: u32) -> RwsemLayout {
        if word == RwsemLayout::Rt as u32 {
            RwsemLayout::Rt
        } else {
            RwsemLayout::Classic
        }
    }

    /// Which way the current task holds a rwsem it is known to hold, from
    /// the semaphore's count word (`count`, or `readers` in its low 32
    /// bits), its owner word and the current task pointer.
    ///
    /// Returns `None` when the words are not consistent with the current
    /// task holding the lock at all (a layout mismatch, or a caller that is
    /// not inside the critical section): the caller counts that instead of
    /// guessing.
    #[inline(always)]
    pub fn held_mode(self, count: u64, owner: u64, current_task: u64) -> Option<LockMode> {
        match self {
            RwsemLayout::Classic => held_mode(count, owner, current_task),
            RwsemLayout::Rt => held_mode_rt(count as u32, owner, current_task),
        }
    }
}

/// [`RwsemLayout::held_mode`] for PREEMPT_RT. A writer first takes the
/// rtmutex and removes [`RT_READER_BIAS`], then waits for the readers
/// inside to leave, and only then sets `readers` to [`RT_WRITER_BIAS`]: so
/// any other value with a non-zero count below the writer bias means
/// readers are inside, and since we hold it, we are one.
#[inline(always)]
pub fn held_mode_rt(readers: u32, owner: u64, current_task: u64) -> Option<LockMode> {
    if readers == RT_WRITER_BIAS {
        // `rt_mutex_base.owner`'s bit 0 is RT_MUTEX_HAS_WAITERS.
        (owner & !RWSEM_OWNER_FLAGS_MASK == current_task).then_some(LockMode::Exclusive)
    } else {
        let inside = readers & !RT_READER_BIAS;
        (inside != 0 && inside < RT_WRITER_BIAS).then_some(LockMode::Shared)
    }
}

/// Which way the current task holds a classic rwsem it is known to hold,
/// from the semaphore's `count` and `owner` words and the current task
/// pointer (see [`RwsemLayout::held_mode`]).
#[inline(always)]
pub fn held_mode(count: u64, owner: u64, current_task: u64) -> Option<LockMode> {
    if count & RWSEM_WRITER_LOCKED != 0 {
        // A writer holds it; only the owner field says whether it is us.
        // Readers may add a transient bias to `count` even then, so the
        // reader bits are not looked at.
        if owner & !RWSEM_OWNER_FLAGS_MASK == current_task {
            Some(LockMode::Exclusive)
        } else {
            None
        }
    } else if count >> RWSEM_READER_SHIFT != 0 {
        // No writer and at least one reader: since we hold it, we are a reader.
        Some(LockMode::Shared)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: u64 = 0xffff_8880_1234_5600;
    const OTHER: u64 = 0xffff_8880_6543_2100;
    const READER: u64 = 1 << RWSEM_READER_SHIFT;

    #[test]
    fn writer_owned_by_us_is_exclusive() {
        assert_eq!(held_mode(1, TASK, TASK), Some(LockMode::Exclusive));
        // Waiters and handoff bits in count do not matter.
        assert_eq!(
            held_mode(1 | 2 | 4, TASK | 0x1, TASK),
            Some(LockMode::Exclusive)
        );
        // A reader's transient bias does not turn it shared.
        assert_eq!(held_mode(1 | READER, TASK, TASK), Some(LockMode::Exclusive));
    }

    #[test]
    fn readers_are_shared_whoever_was_last_owner() {
        assert_eq!(held_mode(READER, TASK | 1, TASK), Some(LockMode::Shared));
        assert_eq!(
            held_mode((3 * READER) | 2, OTHER | 1, TASK),
            Some(LockMode::Shared)
        );
    }

    #[test]
    fn rt_writer_is_exclusive_only_when_it_is_us() {
        let rt = RwsemLayout::Rt;
        assert_eq!(
            rt.held_mode(u64::from(RT_WRITER_BIAS), TASK, TASK),
            Some(LockMode::Exclusive)
        );
        // RT_MUTEX_HAS_WAITERS in the owner word.
        assert_eq!(
            rt.held_mode(u64::from(RT_WRITER_BIAS), TASK | 1, TASK),
            Some(LockMode::Exclusive)
        );
        assert_eq!(rt.held_mode(u64::from(RT_WRITER_BIAS), OTHER, TASK), None);
        // The 32 bits after `readers` (padding, the wait lock) are ignored.
        assert_eq!(
            rt.held_mode(
                0xdead_beef_0000_0000 | u64::from(RT_WRITER_BIAS),
                TASK,
                TASK
            ),
            Some(LockMode::Exclusive)
        );
    }

    #[test]
    fn rt_readers_are_shared_with_or_without_a_writer_waiting() {
        let rt = RwsemLayout::Rt;
        // Fast path: the bias plus three readers, no writer anywhere.
        assert_eq!(
            rt.held_mode(u64::from(RT_READER_BIAS + 3), 0, TASK),
            Some(LockMode::Shared)
        );
        // A writer took the rtmutex and removed the bias; two readers are
        // still inside, and the owner is that writer, not us.
        assert_eq!(rt.held_mode(2, OTHER, TASK), Some(LockMode::Shared));
    }

    #[test]
    fn rt_unlocked_or_classic_words_are_not_guessed() {
        let rt = RwsemLayout::Rt;
        // Unlocked: the bias alone.
        assert_eq!(rt.held_mode(u64::from(RT_READER_BIAS), 0, TASK), None);
        // A writer waiting for the last reader to leave, and none left.
        assert_eq!(rt.held_mode(0, OTHER, TASK), None);
        // A classic writer's count read as RT is one reader at most; a
        // classic count of one reader (1 << 8) read as RT decodes as shared
        // too, which is why the layout comes from BTF and is never guessed.
        assert_eq!(RwsemLayout::from_u32(1), RwsemLayout::Rt);
        assert_eq!(RwsemLayout::from_u32(0), RwsemLayout::Classic);
        assert_eq!(RwsemLayout::from_u32(7), RwsemLayout::Classic);
    }

    #[test]
    fn inconsistent_states_are_not_guessed() {
        assert_eq!(held_mode(1, OTHER, TASK), None);
        assert_eq!(held_mode(0, 0, TASK), None);
        assert_eq!(held_mode(2 | 4, TASK, TASK), None);
    }
}

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

/// Which way the current task holds a rwsem it is known to hold, from the
/// semaphore's `count` and `owner` words and the current task pointer.
///
/// Returns `None` when the words are not consistent with the current task
/// holding the lock at all (a layout mismatch, or a caller that is not inside
/// the critical section): the caller counts that instead of guessing.
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
    fn inconsistent_states_are_not_guessed() {
        assert_eq!(held_mode(1, OTHER, TASK), None);
        assert_eq!(held_mode(0, 0, TASK), None);
        assert_eq!(held_mode(2 | 4, TASK, TASK), None);
    }
}

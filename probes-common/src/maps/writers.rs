//! Who writes each file, and the per-CPU rings that tell userspace which
//! (file, writer) pairs were written since its last refresh.

use super::keys::WriterKey;

pub const COMM_LEN: usize = 16;

/// One process's writes to one file. Shared between CPUs: `writes` is added
/// to atomically; the name and cgroup are those of the thread that last
/// put the pair in its CPU's ring (once per refresh per CPU, not per write).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    pub writes: u64,
    /// `comm` of the writing thread.
    pub comm: [u8; COMM_LEN],
    /// `bpf_get_current_cgroup_id()` of the writing thread: the inode
    /// number of its cgroup v2 directory.
    pub cgroup_id: u64,
}

/// Slots in each CPU's [`DirtyRing`] (a power of two).
pub const DIRTY_SLOTS: usize = 1024;
/// Slots of the cache of recent pushes in each ring (a power of two).
pub const RECENT_SLOTS: usize = 64;

/// A pair this CPU pushed, and the refresh epoch it pushed it in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecentPush {
    pub key: WriterKey,
    pub epoch: u64,
}

/// Per CPU, the (file, writer) pairs written lately: slot `i % DIRTY_SLOTS`
/// holds push number `i`. A write pushes its pair unless this CPU pushed
/// the same pair in the current `EPOCH` (`recent`, a small cache by hash of
/// the pair), after all its per-file updates; so a busy file costs one slot
/// per refresh and CPU, not one per write. Userspace bumps the epoch, reads
/// the rings, and looks up the pairs pushed since the refresh before last: a
/// write that skipped its push did so because a push of its pair in its
/// epoch came before it on its CPU, and that push is in one of those two
/// ranges. When more than half a ring went by on a CPU, userspace reads
/// every entry instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirtyRing {
    /// Writes recorded on this CPU since attach.
    pub head: u64,
    pub keys: [WriterKey; DIRTY_SLOTS],
    pub recent: [RecentPush; RECENT_SLOTS],
}

impl DirtyRing {
    /// Whether `key` is not yet pushed on this CPU in `epoch`; if so, it is
    /// noted as pushed (the caller pushes it once its updates are done).
    /// A cache miss only costs a slot: the pair is then pushed again.
    #[inline(always)]
    pub fn first_in_epoch(&mut self, key: WriterKey, epoch: u64) -> bool {
        let hash = (key.ino as u32)
            ^ ((key.ino >> 32) as u32)
            ^ key.dev.rotate_left(7)
            ^ key.path.rotate_left(13)
            ^ key.tgid.wrapping_mul(0x9e37_79b1);
        // `get_mut` with a masked index: no bounds-check panic path for the
        // verifier.
        let Some(slot) = self
            .recent
            .get_mut((hash ^ (hash >> 16)) as usize & (RECENT_SLOTS - 1))
        else {
            return true;
        };
        if slot.epoch == epoch && slot.key == key {
            return false;
        }
        *slot = RecentPush { key, epoch };
        true
    }

    /// Records that `key` was written: the oldest slot is overwritten once
    /// the ring is full, which the reader detects from `head`.
    #[inline(always)]
    pub fn push(&mut self, key: WriterKey) {
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
            recent: [RecentPush::default(); RECENT_SLOTS],
        }
    }
}

//! The BPF maps as `probes-common`'s [`WriteMaps`]: a finished write's
//! updates are declared there once (`finish_write`), and run here in place.

use core::marker::PhantomData;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_probe_read_kernel_str_bytes,
        generated::{bpf_get_current_cgroup_id, bpf_get_current_comm},
    },
    maps::HashMap,
};
use probes_common::{
    config::{Ablation, FLAG_CGROUP_ID},
    maps::{DirtyRing, FileStats, Slot, WriteMaps, COMM_LEN, DEVICE_SLOTS, NAME_LEN},
    Health, Histograms, InFlight, InodeKey, WriteStats, WriterKey, WriterStats,
};

use crate::{
    kernel::{pid_tgid, read, Access},
    maps::{
        config, flag, health, Atomic, DEV_SLOTS, DEV_SLOT_NEXT, DEV_STATS, DEV_TOTALS, DIRTY,
        EPOCH, FILES, PATH_HISTS, WRITERS, ZERO_FILE,
    },
};

/// What a new writer's value is inserted from: in read-only memory, so
/// that no insert zeroes one first.
static ZERO_WRITER: WriterStats = WriterStats {
    writes: 0,
    comm: [0; COMM_LEN],
    cgroup_id: 0,
};

/// The maps, for one write's return: what a new file is named after comes
/// from the write's `struct file`. Generic over the program's [`Access`],
/// though it reads nothing typed, so that each program has its own copy of
/// `finish_write`: LLVM then inlines its closures, each called once,
/// instead of sharing them between the fexit and kretprobe programs as BPF
/// subprograms.
pub struct BpfMaps<'a, A: Access> {
    pub rec: &'a InFlight,
    pub access: PhantomData<A>,
}

/// Runs `f` on `key`'s value in `map`, inserting `zero` first for a new
/// key; `named` fills a value this call inserted. Each closure is called
/// from one place, so that LLVM inlines it rather than make it a BPF
/// subprogram.
#[inline(always)]
fn with_value<K, V>(
    map: &HashMap<K, V>,
    key: &K,
    zero: Option<&V>,
    named: impl FnOnce(&mut V),
    f: impl FnOnce(&mut V),
) -> Slot {
    let (value, slot) = match map.get_ptr_mut(key) {
        Some(v) => (v, Slot::Found),
        None => {
            let Some(zero) = zero else {
                return Slot::Full;
            };
            // Another CPU may insert the key first: then this fails, and the
            // lookup below finds that CPU's value.
            let inserted = map.insert(key, zero, u64::from(BPF_NOEXIST)).is_ok();
            let Some(v) = map.get_ptr_mut(key) else {
                return Slot::Full;
            };
            (
                v,
                if inserted {
                    Slot::Inserted
                } else {
                    Slot::Found
                },
            )
        }
    };
    // SAFETY: a value of our own map, shared between CPUs: every counter
    // in it is bumped atomically (`Atomic`).
    let value = unsafe { &mut *value };
    if slot == Slot::Inserted {
        named(value);
    }
    f(value);
    slot
}

impl<A: Access> BpfMaps<'_, A> {
    /// Reads the dentry name of the write's file into `file`.
    #[inline(always)]
    fn name(&self, file: &mut FileStats) {
        let Some(dentry) = read::<u64>(self.rec.file, config!(offsets.file_f_path_dentry)) else {
            return;
        };
        let Some(name) = read::<u64>(dentry, config!(offsets.dentry_d_name_name)) else {
            return;
        };
        let buf: &mut [u8; NAME_LEN] = &mut file.name.name;
        // SAFETY: bpf_probe_read_kernel_str validates the source address and
        // bounds the copy by the buffer.
        match unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, buf) } {
            Ok(bytes) => file.name.len = bytes.len() as u32,
            Err(_) => health(|h| h.read_errors += 1),
        }
    }
}

impl<A: Access> WriteMaps for BpfMaps<'_, A> {
    type Shared = Atomic;

    #[inline(always)]
    fn device_slot(&mut self, key: &InodeKey) -> Option<u32> {
        if let Some(slot) = DEV_SLOTS.get_ptr(key) {
            // SAFETY: a value of our own map, never changed once inserted.
            return Some(unsafe { *slot });
        }
        let next = DEV_SLOT_NEXT.get_ptr_mut(0)?;
        // SAFETY: a value of our own array, changed only atomically.
        let slot = Atomic::take_below(unsafe { &mut *next }, u64::from(DEVICE_SLOTS))? as u32;
        // Another CPU may have given the device a slot meanwhile: then this
        // one stays unused, and the device keeps that CPU's.
        if DEV_SLOTS.insert(key, &slot, u64::from(BPF_NOEXIST)).is_ok() {
            return Some(slot);
        }
        // SAFETY: as above.
        DEV_SLOTS.get_ptr(key).map(|s| unsafe { *s })
    }

    #[inline(always)]
    fn with_device_slot(&mut self, slot: u32, f: impl FnOnce(&mut WriteStats)) {
        if let Some(totals) = DEV_STATS.get_ptr_mut(slot) {
            // SAFETY: a per-CPU slot, this CPU only.
            f(unsafe { &mut *totals });
        }
    }

    #[inline(always)]
    fn with_device(&mut self, key: &InodeKey, f: impl FnOnce(&mut WriteStats)) -> Slot {
        let zero = ZERO_FILE.get(0).map(|z| &z.stats);
        with_value(&DEV_TOTALS, key, zero, |_| {}, f)
    }

    #[inline(always)]
    fn with_file(&mut self, key: &InodeKey, f: impl FnOnce(&mut FileStats)) -> Slot {
        with_value(&FILES, key, ZERO_FILE.get(0), |v| self.name(v), f)
    }

    #[inline(always)]
    fn with_writer(&mut self, key: &WriterKey, f: impl FnOnce(&mut WriterStats)) -> Slot {
        with_value(&WRITERS, key, Some(&ZERO_WRITER), |_| {}, f)
    }

    #[inline(always)]
    fn with_ring<R>(&mut self, f: impl FnOnce(&mut DirtyRing) -> R) -> Option<R> {
        let ring = DIRTY.get_ptr_mut(0)?;
        // SAFETY: a per-CPU slot, this CPU only.
        Some(f(unsafe { &mut *ring }))
    }

    #[inline(always)]
    fn with_path_hists(&mut self, path: u32, f: impl FnOnce(&mut Histograms)) {
        if let Some(hists) = PATH_HISTS.get_ptr_mut(path) {
            // SAFETY: a per-CPU slot, this CPU only.
            f(unsafe { &mut *hists });
        }
    }

    #[inline(always)]
    fn with_health(&mut self, f: impl FnOnce(&mut Health)) {
        health(f);
    }

    #[inline(always)]
    fn epoch(&self) -> u64 {
        EPOCH.get(0).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn skips(&self, part: Ablation) -> bool {
        flag(part.bit())
    }

    #[inline(always)]
    fn tgid(&self) -> u32 {
        (pid_tgid() >> 32) as u32
    }

    #[inline(always)]
    fn identity(&self) -> ([u8; COMM_LEN], u64) {
        // Not zeroed first (the BPF target zeroes with a byte loop): the
        // helper fills it, or zeroes it on failure.
        let mut comm = core::mem::MaybeUninit::<[u8; COMM_LEN]>::uninit();
        // SAFETY: the helper writes `COMM_LEN` bytes into `comm`.
        unsafe { bpf_get_current_comm(comm.as_mut_ptr().cast(), COMM_LEN as u32) };
        // SAFETY: written above.
        let comm = unsafe { comm.assume_init() };
        let cgroup = if flag(FLAG_CGROUP_ID) {
            // SAFETY: no arguments; available to tracing programs on a
            // kernel with cgroups.
            unsafe { bpf_get_current_cgroup_id() }
        } else {
            0
        };
        (comm, cgroup)
    }
}

//! Open-time evidence: which flags the server asked for and which the kernel
//! kept, per file.

use aya_ebpf::bindings::BPF_NOEXIST;
use probes_common::{
    classify::{FOPEN_DIRECT_IO, FOPEN_PARALLEL_DIRECT_WRITES, FOPEN_PASSTHROUGH},
    maps::{Bump, OpenInFlight},
    InodeKey, OpenStats,
};

use crate::{
    kernel::{inode_id, read, Probed},
    maps::{config, configured, health, task, task_or_create, watched, Atomic, OPENS},
};

fn atomic_add(slot: &mut u64, n: u64) {
    Atomic::add(slot, n);
}

/// Entry: `ff->open_flags` is still what the server replied.
#[inline(always)]
pub fn on_entry(file: u64) {
    if !configured() || !watched() {
        return;
    }
    let Some(ff) = read::<u64>(file, config!(offsets.file_private_data)) else {
        return;
    };
    let Some(flags) = read::<u32>(ff, config!(offsets.fuse_file_open_flags)) else {
        return;
    };
    let Some(task) = task_or_create() else {
        health(|h| h.inflight_full += 1);
        return;
    };
    task.open = OpenInFlight {
        file,
        flags_asked: flags,
        active: 1,
    };
}

/// Return: `ff->open_flags` is what the kernel kept.
#[inline(always)]
pub fn on_exit(ret: i32) {
    let Some(task) = task() else {
        return;
    };
    if task.open.active == 0 {
        return;
    }
    task.open.active = 0;
    let rec = task.open;
    if ret != 0 {
        return;
    }
    if !configured() {
        return;
    }
    let Some(ff) = read::<u64>(rec.file, config!(offsets.file_private_data)) else {
        return;
    };
    let Some(kept) = read::<u32>(ff, config!(offsets.fuse_file_open_flags)) else {
        return;
    };
    let Some(inode) = read::<u64>(rec.file, config!(offsets.file_f_inode)) else {
        return;
    };
    let Some((ino, dev, _)) = inode_id::<Probed>(inode) else {
        return;
    };
    let key = InodeKey { ino, dev, path: 0 };
    let stats = match OPENS.get_ptr_mut(&key) {
        Some(s) => s,
        None => {
            let _ = OPENS.insert(&key, &OpenStats::default(), u64::from(BPF_NOEXIST));
            let Some(s) = OPENS.get_ptr_mut(&key) else {
                return;
            };
            s
        }
    };
    // SAFETY: a value of our own map; shared between CPUs, hence atomics.
    let s = unsafe { &mut *stats };
    let asked = rec.flags_asked;
    let asked_parallel = asked & FOPEN_PARALLEL_DIRECT_WRITES != 0;
    let kept_parallel = kept & FOPEN_PARALLEL_DIRECT_WRITES != 0;
    let passthrough_only = asked & FOPEN_PASSTHROUGH != 0 && asked & FOPEN_DIRECT_IO == 0;
    atomic_add(&mut s.opens, 1);
    if asked & FOPEN_PASSTHROUGH != 0 {
        atomic_add(&mut s.passthrough, 1);
    }
    if asked & FOPEN_DIRECT_IO != 0 {
        atomic_add(&mut s.direct_io, 1);
    }
    if asked_parallel {
        atomic_add(&mut s.parallel_asked, 1);
        if passthrough_only {
            atomic_add(&mut s.passthrough_parallel_asked, 1);
        }
        if kept_parallel {
            atomic_add(&mut s.parallel_kept, 1);
            if passthrough_only {
                atomic_add(&mut s.passthrough_parallel_kept, 1);
            }
        }
    }
    s.last_flags_asked = asked;
    s.last_flags_kept = kept;
    // Last: userspace re-reads OPENS when this moves (see Health::opens).
    health(|h| h.opens += 1);
}

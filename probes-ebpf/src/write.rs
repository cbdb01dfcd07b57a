//! Entry and return of `fuse_file_write_iter()`: classify, then count.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_comm, bpf_probe_read_kernel_str_bytes},
    EbpfContext,
};
use aya_log_ebpf::{debug, error};
use probes_common::{
    classify,
    config::{Config, FLAG_DEBUG_LOG},
    maps::{INFLIGHT_UNLOCKED, NAME_LEN},
    InFlight, InodeKey, InodeName, WriteFacts, WritePath, WriterKey, WriterStats,
};

use crate::{
    kernel::{inode_id, now_ns, pid_tgid, read, read_words},
    maps::{
        atomic_add, config, health, DEV_TOTALS, DIRTY, EPOCH, INFLIGHT, INODE_HISTS, INODE_NAMES,
        INODE_STATS, PATH_HISTS, PATH_TOTALS, WRITERS, ZERO_HISTS, ZERO_STATS,
    },
};

/// Records the write in `INFLIGHT` if it takes the passthrough or direct-io
/// path. Everything the classifier needs is read here, before the kernel
/// makes its own decision.
#[inline(always)]
pub fn on_entry<C: EbpfContext>(ctx: &C, iocb: u64, from: u64) {
    let Some(cfg) = config() else { return };
    let o = &cfg.offsets;
    let Some([file, pos, ki_flags]) =
        read_words(iocb, [o.kiocb_ki_filp, o.kiocb_ki_pos, o.kiocb_ki_flags])
    else {
        return;
    };
    let (pos, ki_flags) = (pos as i64, ki_flags as u32);
    let Some([ff, inode]) = read_words(file, [o.file_private_data, o.file_f_inode]) else {
        return;
    };
    let Some([open_flags, backing]) =
        read_words(ff, [o.fuse_file_open_flags, o.fuse_file_passthrough])
    else {
        return;
    };
    let open_flags = open_flags as u32;
    let Some(path) = WritePath::of(open_flags, backing != 0) else {
        health(|h| h.cached_path_writes += 1);
        return;
    };
    let Some(count) = read::<u64>(from, o.iov_iter_count) else {
        return;
    };
    let Some((ino, dev, i_size)) = inode_id(inode, o) else {
        return;
    };
    // Only `fuse_dio_lock()` looks at the inode's cached I/O mode, and a
    // passthrough inode never enters it: spare passthrough writes the read.
    let cache_io_mode = match path {
        WritePath::Passthrough => false,
        WritePath::DirectIo => {
            // `get_fuse_inode()`: the VFS inode is a member of the FUSE one.
            let fuse_inode = inode.wrapping_sub(u64::from(o.fuse_inode_inode));
            let Some(state) = read::<u64>(fuse_inode, o.fuse_inode_state) else {
                return;
            };
            state & (1 << (o.fuse_i_cache_io_mode & 63)) != 0
        }
    };

    let reasons = classify(&WriteFacts {
        open_flags,
        ki_flags,
        pos,
        count,
        i_size,
        cache_io_mode,
    });
    let record = InFlight {
        iocb,
        file,
        inode,
        rwsem: inode + u64::from(o.inode_i_rwsem),
        key: InodeKey {
            ino,
            dev,
            path: path as u32,
        },
        start_ns: now_ns(),
        i_size_entry: i_size,
        pos,
        reasons: reasons.bits(),
        mode: INFLIGHT_UNLOCKED,
        ..InFlight::default()
    };
    let id = pid_tgid();
    // Insert first and look only if that fails: the common case costs one
    // hash operation, not two.
    let inserted = INFLIGHT
        .insert(&id, &record, u64::from(BPF_NOEXIST)).is_ok() || {
        if INFLIGHT.get_ptr(&id).is_some() {
            health(|h| h.inflight_replaced += 1);
        }
        INFLIGHT
        .insert(&id, &record, 0).is_ok()
    };
    if !inserted {
        health(|h| h.inflight_full += 1);
        error!(
            ctx,
            "fuselock: in-flight map full; a write to ino {} is not counted", ino
        );
        return;
    }
    if cfg.has(FLAG_DEBUG_LOG) {
        debug!(
            ctx,
            "write entry dev={} ino={} path={} pos={} count={} i_size={} reasons={}",
            dev,
            ino,
            path as u32,
            pos,
            count,
            i_size,
            reasons.bits()
        );
    }
}

/// Counts a finished write. `iocb` is known under fexit and checked against
/// the record; a kretprobe only knows the task.
#[inline(always)]
pub fn on_exit<C: EbpfContext>(ctx: &C, iocb: Option<u64>, ret: i64) {
    let id = pid_tgid();
    let Some(rec) = INFLIGHT.get_ptr(&id) else {
        // Entry not recorded: page-cache path, or the entry failed (counted).
        return;
    };
    // SAFETY: a value of our own map, read before it is removed.
    let rec = unsafe { *rec };
    let _ = INFLIGHT.remove(&id);
    if iocb.is_some_and(|iocb| iocb != rec.iocb) {
        health(|h| h.exit_unmatched += 1);
        return;
    }
    let Some(cfg) = config() else { return };
    let now = now_ns();

    account_inode(ctx, &rec, ret, now, &cfg);
    // The per-path totals go last, on every path through here: userspace
    // reads them as the mark that a per-inode map changed, so by the time
    // they count this write, everything else it updates is in place.
    if let Some(h) = PATH_HISTS.get_ptr_mut(rec.key.path) {
        // SAFETY: a per-CPU slot, this CPU only.
        unsafe { &mut *h }.record(&rec, now, |slot| atomic_add(slot, 1));
    }
    if let Some(totals) = PATH_TOTALS.get_ptr_mut(rec.key.path) {
        // SAFETY: per-CPU slot, this CPU only.
        unsafe { &mut *totals }.account(&rec, ret, now);
    }

    if cfg.has(FLAG_DEBUG_LOG) {
        debug!(
            ctx,
            "write exit ino={} ret={} mode={}", rec.key.ino, ret, rec.mode
        );
    }
}

/// The per-device and per-inode counters, histograms and writers of one
/// write.
#[inline(always)]
fn account_inode<C: EbpfContext>(ctx: &C, rec: &InFlight, ret: i64, now: u64, cfg: &Config) {
    let dev_key = InodeKey { ino: 0, ..rec.key };
    let dev_totals = match DEV_TOTALS.get_ptr_mut(&dev_key) {
        Some(t) => Some(t),
        None => {
            if let Some(zero) = ZERO_STATS.get(0) {
                let _ = DEV_TOTALS
        .insert(&dev_key, &zero, u64::from(BPF_NOEXIST));
            }
            DEV_TOTALS.get_ptr_mut(&dev_key)
        }
    };
    match dev_totals {
        // SAFETY: per-CPU value, this CPU only.
        Some(t) => unsafe { &mut *t }.account(rec, ret, now),
        None => health(|h| h.dev_totals_full += 1),
    }
    let stats = match INODE_STATS.get_ptr_mut(&rec.key) {
        Some(s) => s,
        None => {
            let Some(zero) = ZERO_STATS.get(0) else {
                return;
            };
            if INODE_STATS
        .insert(&rec.key, &zero, u64::from(BPF_NOEXIST))
                .is_ok()
            {
                health(|h| h.inode_inserts += 1);
                remember_name(
                    rec,
                    cfg.offsets.file_f_path_dentry,
                    cfg.offsets.dentry_d_name_name,
                );
            }
            match INODE_STATS.get_ptr_mut(&rec.key) {
                Some(s) => s,
                None => {
                    health(|h| h.inode_insert_failed += 1);
                    error!(
                        ctx,
                        "fuselock: cannot insert ino {} into INODE_STATS", rec.key.ino
                    );
                    return;
                }
            }
        }
    };
    // SAFETY: per-CPU value, this CPU only.
    unsafe { &mut *stats }.account(rec, ret, now);

    let hists = match INODE_HISTS.get_ptr_mut(&rec.key) {
        Some(h) => Some(h),
        None => {
            if let Some(zero) = ZERO_HISTS.get(0) {
                let _ = INODE_HISTS
        .insert(&rec.key, &zero, u64::from(BPF_NOEXIST));
            }
            INODE_HISTS.get_ptr_mut(&rec.key)
        }
    };
    if let Some(h) = hists {
        // SAFETY: a map value; shared between CPUs, updated atomically.
        unsafe { &mut *h }.record(rec, now, |slot| atomic_add(slot, 1));
    }
    count_writer(rec);
}

/// Stores the dentry name of a file the first time its key is seen.
#[inline(always)]
fn remember_name(rec: &InFlight, f_path_dentry: u32, d_name_name: u32) {
    if INODE_NAMES
        .insert(&rec.key, &InodeName::EMPTY, u64::from(BPF_NOEXIST))
        .is_err()
    {
        return;
    }
    let Some(slot) = INODE_NAMES.get_ptr_mut(&rec.key) else {
        return;
    };
    let Some(dentry) = read::<u64>(rec.file, f_path_dentry) else {
        return;
    };
    let Some(name) = read::<u64>(dentry, d_name_name) else {
        return;
    };
    // SAFETY: our own map value; the helper bounds the copy by the buffer.
    let slot = unsafe { &mut *slot };
    let buf: &mut [u8; NAME_LEN] = &mut slot.name;
    // SAFETY: bpf_probe_read_kernel_str validates the source address.
    if let Ok(bytes) = unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, buf) } {
        slot.len = bytes.len() as u32;
    } else {
        health(|h| h.read_errors += 1);
    }
}

/// Counts the write against its process, on this CPU, and puts the pair in
/// this CPU's ring of recent writes once per epoch (see `DirtyRing`), after
/// every per-inode update the write makes.
#[inline(always)]
fn count_writer(rec: &InFlight) {
    let key = WriterKey::new(rec.key, (pid_tgid() >> 32) as u32);
    let epoch = EPOCH.get(0).copied().unwrap_or(0);
    let writer = match WRITERS.get_ptr_mut(&key) {
        Some(w) => w,
        None => {
            // A new element gets this value on this CPU and zeros on the
            // others; if another CPU inserted it first, this fails and the
            // lookup below finds its element, with this CPU's slot at zero.
            let _ = WRITERS
        .insert(&key, &WriterStats::fresh(epoch), u64::from(BPF_NOEXIST));
            match WRITERS.get_ptr_mut(&key) {
                Some(w) => w,
                // No room for the writer: the file's counts changed all the
                // same, so the pair still goes in the ring.
                None => return mark_dirty(key),
            }
        }
    };
    // SAFETY: a per-CPU value, this CPU only.
    let writer = unsafe { &mut *writer };
    if !writer.count(epoch) {
        return;
    }
    // The name is read once per refresh, not per write: it only changes at
    // exec, and userspace shows the latest.
    writer.comm = bpf_get_current_comm().unwrap_or_default();
    mark_dirty(key);
}

/// Puts the (entry, writer) pair in this CPU's ring of recent writes: a
/// refresh that finds it there finds every update the write made.
#[inline(always)]
fn mark_dirty(key: WriterKey) {
    let Some(ring) = DIRTY.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU slot, this CPU only.
    unsafe { &mut *ring }.push(key);
}

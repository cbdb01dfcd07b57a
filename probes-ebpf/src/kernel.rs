//! Reading kernel memory at offsets resolved from BTF.

use aya_ebpf::helpers::bpf_probe_read_kernel;

use probes_common::config::Offsets;

use crate::maps::health;

/// Reads a `T` at `base + offset`, counting failures.
#[inline(always)]
pub fn read<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        health(|h| h.read_errors += 1);
        return None;
    }
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one fails.
    match unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            health(|h| h.read_errors += 1);
            None
        }
    }
}

#[inline(always)]
pub fn pid_tgid() -> u64 {
    aya_ebpf::helpers::bpf_get_current_pid_tgid()
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: no arguments, always available to tracing programs.
    unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: no arguments, always available to tracing programs.
    unsafe { aya_ebpf::helpers::generated::bpf_get_current_task() }
}

/// `(i_ino, i_sb->s_dev)` of an inode: what names a file in every map.
#[inline(always)]
pub fn inode_id(inode: u64, o: &Offsets) -> Option<(u64, u32)> {
    let ino = read::<u64>(inode, o.inode_i_ino)?;
    let sb = read::<u64>(inode, o.inode_i_sb)?;
    let dev = read::<u32>(sb, o.super_block_s_dev)?;
    Some((ino, dev))
}

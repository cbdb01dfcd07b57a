//! Reading kernel memory at offsets resolved from BTF.

use aya_ebpf::helpers::bpf_probe_read_kernel;

use crate::maps::{config, health};

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

/// Words of kernel memory read at most at once by [`read_words`].
const WINDOW_WORDS: usize = 8;

/// The 8-byte words at `base + offsets[i]` (a narrower field is in the low
/// bytes). Each helper call costs more than the copy, so fields that lie
/// within 64 bytes of each other at word distances, as the ones read
/// together do on the kernels fuselock knows, come from one read of just
/// the words from the first to the last; others cost one read each.
#[inline(always)]
pub fn read_words<const N: usize>(base: u64, offsets: [u32; N]) -> Option<[u64; N]> {
    let lo = offsets.iter().copied().min().unwrap_or(0);
    let hi = offsets.iter().copied().max().unwrap_or(0);
    let fits =
        hi - lo <= 8 * (WINDOW_WORDS as u32 - 1) && offsets.iter().all(|&off| (off - lo) % 8 == 0);
    let mut words = [0u64; N];
    if fits {
        if base == 0 {
            health(|h| h.read_errors += 1);
            return None;
        }
        // Not zeroed first: the BPF target zeroes with a byte loop, and the
        // helper writes every byte read (or zeroes them on failure).
        let mut window = core::mem::MaybeUninit::<[u64; WINDOW_WORDS]>::uninit();
        // The offsets are the read-only configuration's, so the verifier
        // knows the size is at most the window.
        let size = (hi - lo + 8).min(8 * WINDOW_WORDS as u32);
        // SAFETY: bpf_probe_read_kernel validates the source address and
        // writes `size` bytes into the window.
        let ret = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                window.as_mut_ptr().cast(),
                size,
                (base + u64::from(lo)) as *const core::ffi::c_void,
            )
        };
        if ret != 0 {
            health(|h| h.read_errors += 1);
            return None;
        }
        let window = window.as_ptr().cast::<u64>();
        for (word, off) in words.iter_mut().zip(offsets) {
            *word = word_at(window, (off - lo) / 8)?;
        }
    } else {
        for (word, off) in words.iter_mut().zip(offsets) {
            *word = read::<u64>(base, off)?;
        }
    }
    Some(words)
}

/// Word `i` of a window read from the kernel, with a constant offset in
/// each arm: the verifier sees no variable-offset stack read and no
/// bounds-check panic path. Only words the read filled are asked for.
#[inline(always)]
fn word_at(window: *const u64, i: u32) -> Option<u64> {
    // SAFETY: `i` is below the words read (the caller's offsets lie within
    // `size`), so each word read here was written by the helper.
    Some(unsafe {
        match i {
            0 => *window,
            1 => *window.add(1),
            2 => *window.add(2),
            3 => *window.add(3),
            4 => *window.add(4),
            5 => *window.add(5),
            6 => *window.add(6),
            7 => *window.add(7),
            _ => return None,
        }
    })
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

/// `(i_ino, i_sb->s_dev, i_size)` of an inode: what names a file in every
/// map, and its size.
#[inline(always)]
pub fn inode_id(inode: u64) -> Option<(u64, u32, i64)> {
    let [ino, sb, size] = read_words(
        inode,
        [
            config!(offsets.inode_i_ino),
            config!(offsets.inode_i_sb),
            config!(offsets.inode_i_size),
        ],
    )?;
    let dev = read::<u32>(sb, config!(offsets.super_block_s_dev))?;
    Some((ino, dev, size as i64))
}

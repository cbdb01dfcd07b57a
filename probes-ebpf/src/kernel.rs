//! Reading kernel memory at offsets resolved from BTF, in the way the
//! running program can: plain loads through BTF-typed pointers (fentry and
//! fexit programs), or `bpf_probe_read_kernel` (kprobes).

use aya_ebpf::helpers::bpf_probe_read_kernel;
use probes_common::rwsem::RwsemLayout;

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

/// How a program reads kernel memory; the hooks are generic over it.
pub trait Access {
    /// Whether the pointers the program is handed, and those it reads from
    /// them, are BTF-typed, so that plain loads work.
    const TYPED: bool;
}

/// fentry and fexit programs: their arguments are BTF-typed pointers, and
/// so is every pointer field loaded from one. A load through one is a plain
/// instruction that the verifier checks against BTF (the field's offset and
/// width) and the JIT guards against faults: no helper call.
pub struct Typed;

impl Access for Typed {
    const TYPED: bool = true;
}

/// kprobe programs: their arguments are plain numbers, read through
/// `bpf_probe_read_kernel`, the fields of one object in one call.
pub struct Probed;

impl Access for Probed {
    const TYPED: bool = false;
}

/// The field of `base` at `off`, by a plain load: only for a BTF-typed
/// `base` ([`Typed`]), whose field at `off` is a `T` (offsets.rs checks the
/// widths against BTF).
#[inline(always)]
fn load<T: Copy>(base: u64, off: u32) -> T {
    // SAFETY: the verifier accepts this load only from a BTF-typed pointer,
    // at a field of this width, and the JIT turns a fault into zero.
    unsafe { core::ptr::read_volatile((base as *const u8).wrapping_add(off as usize).cast::<T>()) }
}

/// `iocb->ki_filp`, `ki_pos` and `ki_flags`.
#[inline(always)]
pub fn kiocb<A: Access>(iocb: u64) -> Option<(u64, i64, u32)> {
    let (filp, pos, flags) = (
        config!(offsets.kiocb_ki_filp),
        config!(offsets.kiocb_ki_pos),
        config!(offsets.kiocb_ki_flags),
    );
    if A::TYPED {
        if iocb == 0 {
            return None;
        }
        return Some((load(iocb, filp), load(iocb, pos), load(iocb, flags)));
    }
    let [file, pos, flags] = read_words(iocb, [filp, pos, flags])?;
    Some((file, pos as i64, flags as u32))
}

/// `file->private_data` (the FUSE file, as a number: it is a `void *`)
/// and `file->f_inode`.
#[inline(always)]
pub fn file<A: Access>(file: u64) -> Option<(u64, u64)> {
    let (private_data, f_inode) = (
        config!(offsets.file_private_data),
        config!(offsets.file_f_inode),
    );
    if A::TYPED {
        if file == 0 {
            return None;
        }
        return Some((load(file, private_data), load(file, f_inode)));
    }
    let [ff, inode] = read_words(file, [private_data, f_inode])?;
    Some((ff, inode))
}

/// `ff->open_flags` and `ff->passthrough` of a FUSE file: always read
/// through the helper, since `file->private_data` is a `void *` and the
/// verifier cannot type it.
#[inline(always)]
pub fn fuse_file(ff: u64) -> Option<(u32, u64)> {
    let [open_flags, backing] = read_words(
        ff,
        [
            config!(offsets.fuse_file_open_flags),
            config!(offsets.fuse_file_passthrough),
        ],
    )?;
    Some((open_flags as u32, backing))
}

/// `iov_iter_count(iter)`.
#[inline(always)]
pub fn iov_count<A: Access>(iter: u64) -> Option<u64> {
    let count = config!(offsets.iov_iter_count);
    if A::TYPED {
        return (iter != 0).then(|| load(iter, count));
    }
    read::<u64>(iter, count)
}

/// `(i_ino, i_sb->s_dev, i_size)` of an inode: what names a file in every
/// map, and its size.
#[inline(always)]
pub fn inode_id<A: Access>(inode: u64) -> Option<(u64, u32, i64)> {
    let (i_ino, i_sb, i_size, s_dev) = (
        config!(offsets.inode_i_ino),
        config!(offsets.inode_i_sb),
        config!(offsets.inode_i_size),
        config!(offsets.super_block_s_dev),
    );
    if A::TYPED {
        if inode == 0 {
            return None;
        }
        let sb: u64 = load(inode, i_sb);
        if sb == 0 {
            return None;
        }
        return Some((load(inode, i_ino), load(sb, s_dev), load(inode, i_size)));
    }
    let [ino, sb, size] = read_words(inode, [i_ino, i_sb, i_size])?;
    let dev = read::<u32>(sb, s_dev)?;
    Some((ino, dev, size as i64))
}

/// The count and owner words of `inode->i_rwsem` (see
/// [`probes_common::rwsem::RwsemLayout`]), and `inode->i_size`.
#[inline(always)]
pub fn lock_state<A: Access>(inode: u64) -> Option<(u64, u64, i64)> {
    let rwsem = config!(offsets.inode_i_rwsem);
    let (count, owner, i_size) = (
        rwsem + config!(offsets.rwsem_count),
        rwsem + config!(offsets.rwsem_owner),
        config!(offsets.inode_i_size),
    );
    if A::TYPED {
        if inode == 0 {
            return None;
        }
        // A typed load must be the field's width: RT's `readers` is an
        // `atomic_t`. The layout is a read-only constant, so the verifier
        // keeps one branch.
        let count = if RwsemLayout::from_u32(config!(offsets.rwsem_layout)) == RwsemLayout::Rt {
            u64::from(load::<u32>(inode, count))
        } else {
            load(inode, count)
        };
        return Some((count, load(inode, owner), load(inode, i_size)));
    }
    let [count, owner] = read_words(inode, [count, owner])?;
    let size = read::<i64>(inode, i_size)?;
    Some((count, owner, size))
}

/// Whether `FUSE_I_CACHE_IO_MODE` is set on the FUSE inode around the VFS
/// `inode` (`get_fuse_inode()`: the VFS inode is a member of the FUSE
/// one), read through the helper: the address comes from subtracting, which
/// a typed pointer does not allow.
#[inline(always)]
pub fn cache_io_mode(inode: u64) -> Option<bool> {
    let fuse_inode = inode.wrapping_sub(u64::from(config!(offsets.fuse_inode_inode)));
    let state = read::<u64>(fuse_inode, config!(offsets.fuse_inode_state))?;
    Some(state & (1 << (config!(offsets.fuse_i_cache_io_mode) & 63)) != 0)
}

/// `io->iocb` of a `struct fuse_io_priv`.
#[inline(always)]
pub fn io_priv_iocb<A: Access>(io: u64) -> Option<u64> {
    let iocb = config!(offsets.fuse_io_priv_iocb);
    if A::TYPED {
        return (io != 0).then(|| load(io, iocb));
    }
    read::<u64>(io, iocb)
}

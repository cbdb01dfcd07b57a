//! fuselock's eBPF programs.
//!
//! Every hook exists twice, as fentry/fexit and as kprobe/kretprobe: userspace
//! attaches the fentry set where the kernel has BPF trampolines and cannot
//! preempt a running program (cheaper, and fexit has no `maxactive` limit
//! that could drop returns under heavy concurrency), and kprobes elsewhere.
//! Both variants are thin wrappers around the same handlers in `write.rs`,
//! `lock.rs`, `open.rs` and `contention.rs`.
#![no_std]
#![no_main]
// Atomic adds on shared (non-per-CPU) map values: `AtomicU64` is not
// available on bpfel-unknown-none.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod contention;
mod finish;
mod kernel;
mod lock;
mod maps;
mod open;
mod task_storage;
mod write;

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe, raw_tracepoint},
    programs::{FEntryContext, FExitContext, ProbeContext, RawTracePointContext, RetProbeContext},
};
use probes_common::WritePath;

use crate::kernel::{Probed, Typed};

/// `ssize_t fuse_file_write_iter(struct kiocb *iocb, struct iov_iter *from)`:
/// the `write_iter` of every FUSE file, the common entry of all FUSE writes.
#[fentry(function = "fuse_file_write_iter")]
pub fn write_entry_fentry(ctx: FEntryContext) -> u32 {
    write::on_entry::<Typed, _>(&ctx, ctx.arg(0), ctx.arg(1));
    0
}

#[kprobe]
pub fn write_entry_kprobe(ctx: ProbeContext) -> u32 {
    write::on_entry::<Probed, _>(&ctx, ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0));
    0
}

/// Return of `fuse_file_write_iter`; fexit sees the arguments too, so it also
/// checks that the return belongs to the recorded `iocb`.
#[fexit(function = "fuse_file_write_iter")]
pub fn write_exit_fexit(ctx: FExitContext) -> u32 {
    // fexit's context holds the arguments followed by the return value.
    let iocb: u64 = ctx.arg(0);
    let ret: i64 = ctx.arg(2);
    write::on_exit::<Typed, _>(&ctx, Some(iocb), ret);
    0
}

#[kretprobe]
pub fn write_exit_kretprobe(ctx: RetProbeContext) -> u32 {
    let ret: i64 = ctx.ret();
    write::on_exit::<Probed, _>(&ctx, None, ret);
    0
}

/// `ssize_t backing_file_write_iter(struct file *file, struct iov_iter *iter,
/// struct kiocb *iocb, int flags, struct backing_file_ctx *ctx)`: called by
/// `fuse_passthrough_write_iter()` with the FUSE inode lock held.
#[fentry(function = "backing_file_write_iter")]
pub fn passthrough_locked_fentry(ctx: FEntryContext) -> u32 {
    lock::on_locked::<Typed>(WritePath::Passthrough, Some(ctx.arg(2)));
    0
}

#[kprobe]
pub fn passthrough_locked_kprobe(ctx: ProbeContext) -> u32 {
    lock::on_locked::<Probed>(WritePath::Passthrough, ctx.arg(2));
    0
}

/// `ssize_t fuse_direct_io(struct fuse_io_priv *io, struct iov_iter *iter,
/// loff_t *ppos, int flags)`: called by `fuse_direct_write_iter()` (inlined on
/// 6.12) with the FUSE inode lock held; `flags & FUSE_DIO_WRITE` for writes.
#[fentry(function = "fuse_direct_io")]
pub fn direct_locked_fentry(ctx: FEntryContext) -> u32 {
    let flags: u64 = ctx.arg(3);
    if flags & lock::FUSE_DIO_WRITE != 0 {
        // The write's iocb, typed, from `io->iocb`.
        let iocb = kernel::io_priv_iocb::<Typed>(ctx.arg(0));
        lock::on_locked::<Typed>(WritePath::DirectIo, iocb);
    }
    0
}

#[kprobe]
pub fn direct_locked_kprobe(ctx: ProbeContext) -> u32 {
    let flags: u64 = ctx.arg(3).unwrap_or(0);
    if flags & lock::FUSE_DIO_WRITE != 0 {
        lock::on_locked::<Probed>(WritePath::DirectIo, None);
    }
    0
}

/// `int fuse_file_io_open(struct file *file, struct inode *inode)`: where the
/// kernel decides which open flags survive (6.12 strips
/// `FOPEN_PARALLEL_DIRECT_WRITES` from opens without `FOPEN_DIRECT_IO`).
#[fentry(function = "fuse_file_io_open")]
pub fn open_entry_fentry(ctx: FEntryContext) -> u32 {
    open::on_entry(ctx.arg(0));
    0
}

#[kprobe]
pub fn open_entry_kprobe(ctx: ProbeContext) -> u32 {
    open::on_entry(ctx.arg(0).unwrap_or(0));
    0
}

#[fexit(function = "fuse_file_io_open")]
pub fn open_exit_fexit(ctx: FExitContext) -> u32 {
    let ret: i64 = ctx.arg(2);
    open::on_exit(ret as i32);
    0
}

#[kretprobe]
pub fn open_exit_kretprobe(ctx: RetProbeContext) -> u32 {
    let ret: i64 = ctx.ret();
    open::on_exit(ret as i32);
    0
}

/// `lock:contention_begin(void *lock, unsigned int flags)`: fires only when a
/// task is about to wait for a lock.
#[raw_tracepoint(tracepoint = "contention_begin")]
pub fn contention_begin(ctx: RawTracePointContext) -> u32 {
    contention::on_begin(ctx.arg(0));
    0
}

/// `lock:contention_end(void *lock, int ret)`.
#[raw_tracepoint(tracepoint = "contention_end")]
pub fn contention_end(ctx: RawTracePointContext) -> u32 {
    contention::on_end(ctx.arg(0));
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

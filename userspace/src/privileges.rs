//! Dropping privileges once the probes are attached.
//!
//! Loading and attaching need CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN);
//! afterwards fuselock only reads its maps, which still goes through bpf(2)
//! and so keeps CAP_BPF where unprivileged BPF is disabled (the default).
//! Every other capability — permitted, effective, inheritable and the
//! bounding set — is dropped, so a bug in a long-running fuselock (the
//! exporter on every host) cannot be turned into root.

use std::io;

use anyhow::{Context as _, Result};

const CAP_BPF: u32 = 39;
const LAST_CAP: u32 = 63;
/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Keeps CAP_BPF only. Call after attaching, and after spawning any child
/// that should keep the caller's privileges.
pub fn drop_all_but_bpf() -> Result<()> {
    for cap in 0..=LAST_CAP {
        if cap == CAP_BPF {
            continue;
        }
        // SAFETY: prctl(2) with integer arguments. EINVAL marks capabilities
        // this kernel does not know: the end of the list.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(e).context("dropping capabilities from the bounding set");
        }
    }
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget(2) with a v3 header and room for two data structs.
    if unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error()).context("reading capabilities");
    }
    let bpf_bit = 1u32 << (CAP_BPF - 32);
    let keep = data[1].permitted & bpf_bit;
    let new = [
        CapData::default(),
        CapData {
            effective: keep,
            permitted: keep,
            inheritable: 0,
        },
    ];
    // SAFETY: capset(2) with a v3 header and two data structs.
    if unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            new.as_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error()).context("dropping capabilities");
    }
    Ok(())
}

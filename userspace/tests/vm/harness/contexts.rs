//! Security contexts a test's child enters between fork and exec, as the
//! shipped deployments would start fuselock. Every function here runs in
//! the child after fork: async-signal-safe system calls only.

use std::io;

/// A raw system call's result: the error it set when it returned < 0.
fn check(ret: libc::c_long) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Drops every capability but `caps` from the bounding set.
fn keep_in_bounding_set(caps: u64) {
    for cap in 0..64u64 {
        // SAFETY: prctl(2) with integer arguments.
        if caps & (1 << cap) == 0
            && unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0
        {
            break; // EINVAL: past the last capability the kernel knows
        }
    }
}

/// Sets the permitted and effective sets to `caps`, and the inheritable
/// set to `caps` or to nothing.
fn set_capabilities(caps: u64, inheritable: bool) -> io::Result<()> {
    let header = [0x2008_0522u32, 0]; // _LINUX_CAPABILITY_VERSION_3, this process
    let (lo, hi) = (caps as u32, (caps >> 32) as u32);
    let (ilo, ihi) = if inheritable { (lo, hi) } else { (0, 0) };
    let data = [lo, lo, ilo, hi, hi, ihi];
    // SAFETY: capset(2) with our own buffers.
    check(unsafe { libc::syscall(libc::SYS_capset, header.as_ptr(), data.as_ptr()) })
}

/// Becomes uid and gid 65534 with no supplementary groups.
fn become_65534() -> io::Result<()> {
    // SAFETY: system calls with integer arguments.
    unsafe {
        check(libc::setgroups(0, std::ptr::null()).into())?;
        check(libc::setresgid(65534, 65534, 65534).into())?;
        check(libc::setresuid(65534, 65534, 65534).into())
    }
}

/// `nobody`: uid and gid 65534, no groups, no capabilities.
pub(crate) fn as_nobody() -> io::Result<()> {
    become_65534()
}

/// uid/gid 65534 holding `caps` as permitted, effective, inheritable and
/// ambient capabilities, with `caps` as the bounding set (what systemd does
/// for `DynamicUser=yes` with `AmbientCapabilities=` and
/// `CapabilityBoundingSet=`).
pub(crate) fn as_the_unit(caps: u64) -> io::Result<()> {
    keep_in_bounding_set(caps);
    // SAFETY: prctl(2) with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) }.into())?;
    become_65534()?;
    set_capabilities(caps, true)?;
    for cap in (0..64u64).filter(|cap| caps & (1 << cap) != 0) {
        // SAFETY: prctl(2) with integer arguments.
        check(
            unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap, 0, 0) }
                .into(),
        )?;
    }
    Ok(())
}

/// Writes `msg` to stderr (write(2) only).
fn say(msg: &[u8]) {
    // SAFETY: write(2) of a buffer we own.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

/// The DaemonSet's container as far as a VM can make it. Reproduced: uid
/// 0; exactly `caps` as bounding, permitted and effective sets, inheritable
/// and ambient empty (what containerd gives a root container with `drop:
/// ALL` and `add:`); `no_new_privs` (`allowPrivilegeEscalation: false`); a
/// mount namespace of its own with the root read-only
/// (`readOnlyRootFilesystem`), /sys read-only and no tracefs or debugfs (a
/// container's /sys has none). Not reproduced: the PID, network, cgroup
/// and IPC namespaces, the seccomp and AppArmor profiles, /proc's masked
/// paths; /tmp stays writable (fuselock writes nothing). A step the kernel
/// refuses is said on stderr.
pub(crate) fn as_the_daemonset(caps: u64) -> io::Result<()> {
    // SAFETY: system calls with integer arguments and static C strings.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS).into())?;
        check(
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
            .into(),
        )?;
        for dir in [c"/sys/kernel/tracing", c"/sys/kernel/debug"] {
            libc::umount2(dir.as_ptr(), libc::MNT_DETACH);
        }
        for (dir, name) in [(c"/sys", &b"/sys"[..]), (c"/", &b"/"[..])] {
            let ro = libc::mount(
                std::ptr::null(),
                dir.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                std::ptr::null(),
            );
            if ro != 0 {
                say(b"as_the_daemonset: could not make ");
                say(name);
                say(b" read-only\n");
            }
        }
    }
    keep_in_bounding_set(caps);
    set_capabilities(caps, false)?;
    // SAFETY: prctl(2) with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }.into())
}

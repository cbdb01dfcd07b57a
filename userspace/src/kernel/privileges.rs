//! Dropping privileges once the probes are attached.
//!
//! Loading and attaching need CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN);
//! afterwards fuselock only reads its maps, which still goes through bpf(2)
//! and so keeps CAP_BPF where unprivileged BPF is disabled (the default).
//!
//! What is dropped, each step on its own so that one the process may not
//! take does not stop the others:
//! - `no_new_privs`, so no execve can gain a capability or a uid again;
//! - the ambient set;
//! - the bounding set (needs CAP_SETPCAP, which a systemd unit or a pod
//!   usually does not grant; `no_new_privs` already covers what it guards);
//! - uid 0: a root fuselock becomes `nobody`, keeping CAP_BPF across the
//!   switch, so a bug cannot write root-owned files;
//! - every capability but CAP_BPF, in the permitted, effective and
//!   inheritable sets.

use std::{ffi::CStr, fmt, io};

use anyhow::{bail, Context as _, Result};
use log::{info, warn};

const CAP_SETPCAP: u32 = 8;
const CAP_BPF: u32 = 39;
const LAST_CAP: u32 = 63;
/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_VERSION_3: u32 = 0x2008_0522;
/// The uid and gid of `nobody` where the password file does not say.
const NOBODY_FALLBACK: u32 = 65_534;

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

/// The three capability sets, as 64-bit masks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

impl CapSets {
    /// This process's sets (capget(2)).
    pub fn current() -> Result<CapSets> {
        let mut header = CapHeader {
            version: CAP_VERSION_3,
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        // SAFETY: capget(2) with a v3 header and room for two data structs.
        let r = unsafe {
            libc::syscall(
                libc::SYS_capget,
                &mut header as *mut CapHeader,
                data.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error()).context("reading capabilities");
        }
        let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
        Ok(CapSets {
            effective: join(data[0].effective, data[1].effective),
            permitted: join(data[0].permitted, data[1].permitted),
            inheritable: join(data[0].inheritable, data[1].inheritable),
        })
    }

    fn set(self) -> io::Result<()> {
        let mut header = CapHeader {
            version: CAP_VERSION_3,
            pid: 0,
        };
        // Truncation is the split: low and high 32 bits.
        #[allow(clippy::cast_possible_truncation)]
        let half = |m: u64, high: bool| (if high { m >> 32 } else { m }) as u32;
        let data = [false, true].map(|high| CapData {
            effective: half(self.effective, high),
            permitted: half(self.permitted, high),
            inheritable: half(self.inheritable, high),
        });
        // SAFETY: capset(2) with a v3 header and two data structs.
        let r = unsafe {
            libc::syscall(
                libc::SYS_capset,
                &mut header as *mut CapHeader,
                data.as_ptr(),
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn has(self, cap: u32) -> bool {
        self.effective & (1 << cap) != 0
    }
}

/// What [`drop_to_bpf_only`] achieved; its `Display` is the log line.
#[derive(Debug, Default)]
pub struct Dropped {
    /// The uid switched to, if fuselock ran as root.
    pub now_uid: Option<u32>,
    /// Steps that could not be taken, with the reason.
    pub not_done: Vec<String>,
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "privileges dropped: only CAP_BPF kept, no_new_privs set")?;
        if let Some(uid) = self.now_uid {
            write!(f, ", running as uid {uid}")?;
        }
        for step in &self.not_done {
            write!(f, "; {step}")?;
        }
        Ok(())
    }
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: prctl(2) with integer arguments only.
    if unsafe { libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// uid and gid of `nobody`, from the password file where it has one.
fn nobody() -> (u32, u32) {
    const NAME: &CStr = c"nobody";
    // SAFETY: getpwnam(3) with a valid C string; the result is read at once,
    // before any other passwd call, and never stored.
    let pw = unsafe { libc::getpwnam(NAME.as_ptr()) };
    if pw.is_null() {
        (NOBODY_FALLBACK, NOBODY_FALLBACK)
    } else {
        // SAFETY: non-null pointer from getpwnam, valid until the next call.
        unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
    }
}

/// Leaves uid 0 for `nobody`, keeping the permitted capabilities across the
/// switch (`PR_SET_KEEPCAPS`).
fn leave_root() -> io::Result<u32> {
    let (uid, gid) = nobody();
    prctl(libc::PR_SET_KEEPCAPS, 1)?;
    // SAFETY: plain syscalls with integer arguments; setgroups with an
    // empty list.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(gid, gid, gid) != 0
            || libc::setresuid(uid, uid, uid) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    prctl(libc::PR_SET_KEEPCAPS, 0)?;
    // A uid change makes the process non-dumpable, which takes /proc/self's
    // fd and fdinfo away from fuselock itself. Dumpable is safe here: ptrace
    // also needs the tracer to hold every capability this process keeps.
    prctl(libc::PR_SET_DUMPABLE, 1)?;
    Ok(uid)
}

/// Keeps CAP_BPF only and leaves uid 0. Call after attaching, and after
/// spawning any child that should keep the caller's privileges. Each step the
/// process is not allowed to take is reported (logged) and skipped; only a
/// failure to shed the capabilities themselves is an error.
pub fn drop_to_bpf_only() -> Result<Dropped> {
    drop_privileges(true)
}

/// [`drop_to_bpf_only`] without leaving uid 0: for a command that must
/// still signal and clean up after root children of its own (`demo`'s
/// FUSE server and its private directory), which `nobody` may not.
pub fn drop_capabilities_keeping_uid() -> Result<Dropped> {
    drop_privileges(false)
}

fn drop_privileges(leave_uid_0: bool) -> Result<Dropped> {
    let mut dropped = Dropped::default();
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).context("setting no_new_privs")?;
    if let Err(e) = prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    ) {
        // Kernels before 4.3 have no ambient set: nothing to clear.
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e).context("clearing the ambient capabilities");
        }
    }
    let before = CapSets::current()?;
    if before.has(CAP_SETPCAP) {
        for cap in (0..=LAST_CAP).filter(|&c| c != CAP_BPF) {
            if let Err(e) = prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap)) {
                // EINVAL marks capabilities this kernel does not know: the end.
                if e.raw_os_error() == Some(libc::EINVAL) {
                    break;
                }
                return Err(e).context("dropping capabilities from the bounding set");
            }
        }
    } else {
        dropped
            .not_done
            .push("bounding set left as it is (no CAP_SETPCAP)".to_owned());
    }
    // SAFETY: geteuid cannot fail.
    if leave_uid_0 && unsafe { libc::geteuid() } == 0 {
        match leave_root() {
            Ok(uid) => dropped.now_uid = Some(uid),
            Err(e) => dropped
                .not_done
                .push(format!("still uid 0: cannot switch to nobody ({e})")),
        }
    }
    let keep = CapSets::current()?.permitted & (1 << CAP_BPF);
    CapSets {
        effective: keep,
        permitted: keep,
        inheritable: 0,
    }
    .set()
    .context("dropping capabilities")?;
    let after = CapSets::current()?;
    if after.permitted & !(1 << CAP_BPF) != 0 {
        bail!(
            "capabilities still held after dropping them: {:#x}",
            after.permitted
        );
    }
    if dropped.not_done.is_empty() {
        info!("{dropped}");
    } else {
        warn!("{dropped}");
    }
    Ok(dropped)
}

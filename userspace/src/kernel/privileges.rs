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
//! - uid 0: a root fuselock becomes the `fuselock` user, or a uid no account
//!   and no process has, keeping CAP_BPF across the switch, so that a bug
//!   can neither write root-owned files nor signal another user's processes;
//! - every capability but CAP_BPF, in the permitted, effective and
//!   inheritable sets.
//!
//! Linux keeps all of these per thread, not per process: a thread started
//! before the drop would keep everything (tokio's blocking pool, an
//! exercise's writers). So each step is taken by every thread of the
//! process — this one directly, the others in a signal handler — and the
//! drop ends by reading `/proc/self/task/*/status` to prove it.

use std::{
    fmt, io,
    sync::{atomic::Ordering, Mutex},
};

use anyhow::{Context as _, Result};
use log::{info, warn};

mod account;
mod threads;

pub use self::account::{drop_account, Account, USER};
pub use self::threads::TaskCreds;
use self::threads::{check_every_thread, on_every_thread, Handler, Step, REQUEST};

const CAP_SETPCAP: u32 = 8;
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
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

/// The three capability sets, as 64-bit masks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

impl CapSets {
    /// This thread's sets (capget(2)).
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

    fn has(self, cap: u32) -> bool {
        self.effective & (1 << cap) != 0
    }
}

/// Sets this thread's permitted and effective sets to `keep`, inheritable
/// to nothing. Only a system call: safe in a signal handler.
fn capset_only(keep: u64) -> Result<(), i32> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    // Truncation is the split: low and high 32 bits.
    #[allow(clippy::cast_possible_truncation)]
    let half = |high: bool| (if high { keep >> 32 } else { keep }) as u32;
    let data = [false, true].map(|high| CapData {
        effective: half(high),
        permitted: half(high),
        inheritable: 0,
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
        Err(errno())
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> Result<(), i32> {
    // SAFETY: prctl(2) with integer arguments only.
    if unsafe { libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) } == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

fn gettid() -> i32 {
    // SAFETY: gettid(2) cannot fail. A tid fits in pid_t.
    #[allow(clippy::cast_possible_truncation)]
    unsafe {
        libc::syscall(libc::SYS_gettid) as i32
    }
}

/// What to drop to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Plan {
    /// The capabilities kept (those of them the process holds).
    keep: u64,
    /// Whether a root process leaves uid 0.
    leave_root: bool,
}

/// What a drop achieved; its `Display` is the log line.
#[derive(Debug, Default)]
pub struct Dropped {
    /// The capabilities kept.
    pub kept: u64,
    /// The account switched to, if fuselock ran as root.
    pub now: Option<Account>,
    /// Steps that could not be taken, with the reason.
    pub not_done: Vec<String>,
    /// Threads that took the drop besides the calling one.
    pub other_threads: usize,
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kept = if self.kept == 1 << CAP_BPF {
            "only CAP_BPF kept"
        } else if self.kept == 0 {
            "no capability kept"
        } else {
            "some capabilities kept"
        };
        write!(
            f,
            "privileges dropped in every thread: {kept}, no_new_privs set"
        )?;
        if let Some(a) = &self.now {
            write!(f, ", running as uid {} gid {} ({})", a.uid, a.gid, a.source)?;
        }
        for step in &self.not_done {
            write!(f, "; {step}")?;
        }
        Ok(())
    }
}

/// Keeps CAP_BPF only and leaves uid 0, in every thread. Call after
/// attaching, and after spawning any child that should keep the caller's
/// privileges. Each step the process is not allowed to take is reported
/// (logged) and skipped; a thread left holding more than CAP_BPF is an
/// error.
pub fn drop_to_bpf_only() -> Result<Dropped> {
    let dropped = drop_privileges(Plan {
        keep: 1 << CAP_BPF,
        leave_root: true,
    })?;
    if dropped.now.is_some() {
        // A uid change makes the process non-dumpable, which makes
        // /proc/self/fd and /proc/self/fdinfo root's: fuselock reads its
        // programs' recursion misses there. Dumpable again is safe with an
        // account of fuselock's own: ptrace also needs the tracer to hold
        // CAP_BPF, and no core file is written (its memory holds the
        // exporter's TLS key).
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: setrlimit(2) with a valid struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) } != 0 {
            return Err(io::Error::last_os_error()).context("turning core dumps off");
        }
        prctl(libc::PR_SET_DUMPABLE, 1)
            .map_err(io::Error::from_raw_os_error)
            .context("making the process dumpable again")?;
    }
    Ok(dropped)
}

/// No capability at all, and uid 0 left as [`drop_to_bpf_only`] leaves it:
/// the probe-event reaper, which needs nothing but the `kprobe_events`
/// descriptor it opened before.
pub fn drop_everything() -> Result<Dropped> {
    drop_privileges(Plan {
        keep: 0,
        leave_root: true,
    })
}

/// No capability at all, keeping the uid: `demo`'s mount keeper, which must
/// still reach the root-owned FUSE mount (FUSE admits only its owner), signal
/// its root server and remove its private directory.
pub fn drop_capabilities_keeping_uid() -> Result<Dropped> {
    drop_privileges(Plan {
        keep: 0,
        leave_root: false,
    })
}

/// One drop at a time: the signal handler's request lives in statics.
static SERIAL: Mutex<()> = Mutex::new(());

fn drop_privileges(plan: Plan) -> Result<Dropped> {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut dropped = Dropped::default();
    let before = CapSets::current()?;
    let drop_bounding = before.has(CAP_SETPCAP);
    if !drop_bounding {
        dropped
            .not_done
            .push("bounding set left as it is (no CAP_SETPCAP)".to_owned());
    }
    // SAFETY: geteuid cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    let account = if plan.leave_root && is_root {
        if before.has(CAP_SETUID) && before.has(CAP_SETGID) {
            Some(drop_account()?)
        } else {
            dropped.not_done.push(
                "still uid 0: cannot switch to another user (no CAP_SETUID and CAP_SETGID)"
                    .to_owned(),
            );
            None
        }
    } else {
        None
    };
    let keep = before.permitted & plan.keep;
    REQUEST
        .drop_bounding
        .store(drop_bounding, Ordering::Relaxed);
    REQUEST.keep.store(keep, Ordering::Relaxed);
    REQUEST
        .change_ids
        .store(account.is_some(), Ordering::Relaxed);
    if let Some(a) = &account {
        REQUEST.uid.store(a.uid, Ordering::Relaxed);
        REQUEST.gid.store(a.gid, Ordering::Relaxed);
    }
    let handler = Handler::install()?;
    for step in [Step::Prepare, Step::Ids, Step::Shed] {
        dropped.other_threads = on_every_thread(step)?;
    }
    drop(handler);
    check_every_thread(keep, account.as_ref().map(|a| (a.uid, a.gid)))?;
    dropped.kept = keep;
    dropped.now = account;
    if dropped.not_done.is_empty() {
        info!("{dropped}");
    } else {
        warn!("{dropped}");
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests;

//! Taking each step of a drop in every thread of the process (Linux keeps
//! credentials per thread), and proving from `/proc` that every thread did.

use std::{
    collections::HashSet,
    io,
    sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{capset_only, errno, gettid, prctl, LAST_CAP};

/// The drop's steps. Each is taken by every thread before the next starts:
/// a uid change needs CAP_SETUID in the thread that makes it, so no thread
/// may shed it before all have changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Step {
    /// `no_new_privs`, the ambient and bounding sets, and keepcaps so that
    /// the uid change keeps the permitted set.
    Prepare = 1,
    /// No supplementary groups; the gid, then the uid.
    Ids = 2,
    /// Every capability but those kept; keepcaps off again.
    Shed = 3,
}

/// The request the signal handler serves: plain atomics, all it may touch.
pub(super) struct Request {
    pub(super) step: AtomicU8,
    pub(super) drop_bounding: AtomicBool,
    pub(super) change_ids: AtomicBool,
    pub(super) keep: AtomicU64,
    pub(super) uid: AtomicU32,
    pub(super) gid: AtomicU32,
    /// The thread asked to take the step.
    pub(super) target: AtomicI32,
    /// The thread that took it, once it has; and its errno (0: done).
    pub(super) done: AtomicI32,
    pub(super) result: AtomicI32,
}

pub(super) static REQUEST: Request = Request {
    step: AtomicU8::new(0),
    drop_bounding: AtomicBool::new(false),
    change_ids: AtomicBool::new(false),
    keep: AtomicU64::new(0),
    uid: AtomicU32::new(0),
    gid: AtomicU32::new(0),
    target: AtomicI32::new(0),
    done: AtomicI32::new(0),
    result: AtomicI32::new(0),
};

/// Takes `step` in the calling thread. System calls only: it runs in a
/// signal handler.
fn take_step(step: u8) -> Result<(), i32> {
    let keep = REQUEST.keep.load(Ordering::Relaxed);
    let change_ids = REQUEST.change_ids.load(Ordering::Relaxed);
    match step {
        s if s == Step::Prepare as u8 => {
            prctl(libc::PR_SET_NO_NEW_PRIVS, 1)?;
            if let Err(e) = prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            ) {
                // Kernels before 4.3 have no ambient set: nothing to clear.
                if e != libc::EINVAL {
                    return Err(e);
                }
            }
            if REQUEST.drop_bounding.load(Ordering::Relaxed) {
                for cap in (0..=LAST_CAP).filter(|&c| keep & (1 << c) == 0) {
                    match prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap)) {
                        Ok(()) => {}
                        // Past the last capability this kernel knows.
                        Err(libc::EINVAL) => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            if change_ids {
                prctl(libc::PR_SET_KEEPCAPS, 1)?;
            }
            Ok(())
        }
        s if s == Step::Ids as u8 => {
            if !change_ids {
                return Ok(());
            }
            let (uid, gid) = (
                REQUEST.uid.load(Ordering::Relaxed),
                REQUEST.gid.load(Ordering::Relaxed),
            );
            // Raw system calls, not libc's: those apply to every thread at
            // once, and abort the process if one thread's call fails.
            // SAFETY: system calls with integer arguments; setgroups with
            // an empty list.
            let failed = unsafe {
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                    || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                    || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
            };
            if failed {
                Err(errno())
            } else {
                Ok(())
            }
        }
        s if s == Step::Shed as u8 => {
            capset_only(keep)?;
            if change_ids {
                prctl(libc::PR_SET_KEEPCAPS, 0)?;
            }
            Ok(())
        }
        _ => Err(libc::EINVAL),
    }
}

/// The signal that asks another thread to take a step: the first real-time
/// signal the C library leaves to programs. Nothing else in fuselock uses it.
fn step_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_step_signal(_: libc::c_int) {
    // SAFETY: this thread's errno, restored before returning.
    let saved = unsafe { *libc::__errno_location() };
    let me = gettid();
    if REQUEST.target.load(Ordering::Acquire) == me {
        let result = take_step(REQUEST.step.load(Ordering::Acquire));
        REQUEST
            .result
            .store(result.err().unwrap_or(0), Ordering::Relaxed);
        REQUEST.done.store(me, Ordering::Release);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

/// [`on_step_signal`] installed, and what was installed before it put back
/// on drop.
pub(super) struct Handler {
    previous: libc::sigaction,
}

impl Handler {
    pub(super) fn install() -> Result<Handler> {
        // SAFETY: zeroed sigaction structs are valid; sigaction(2) with
        // valid pointers; the handler only makes system calls and touches
        // atomics.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_step_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(step_signal(), &action, &mut previous) != 0 {
                return Err(io::Error::last_os_error())
                    .context("installing the privilege drop's signal handler");
            }
            Ok(Handler { previous })
        }
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        // SAFETY: restores the action saved by `install`.
        unsafe { libc::sigaction(step_signal(), &self.previous, std::ptr::null_mut()) };
    }
}

/// The threads of this process, by tid.
fn threads() -> Result<Vec<i32>> {
    Ok(std::fs::read_dir("/proc/self/task")
        .context("listing /proc/self/task")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect())
}

/// Takes `step` here, then has every other thread take it, including
/// threads started meanwhile. Returns how many other threads did.
pub(super) fn on_every_thread(step: Step) -> Result<usize> {
    REQUEST.step.store(step as u8, Ordering::Release);
    take_step(step as u8)
        .map_err(io::Error::from_raw_os_error)
        .with_context(|| format!("dropping privileges ({step:?})"))?;
    let me = gettid();
    let mut done = HashSet::from([me]);
    // A thread may start threads of its own until it has taken the step;
    // those started later inherit it. Bounded all the same.
    for _ in 0..64 {
        let pending: Vec<i32> = threads()?
            .into_iter()
            .filter(|t| !done.contains(t))
            .collect();
        if pending.is_empty() {
            return Ok(done.len() - 1);
        }
        for tid in pending {
            in_thread(tid, step)?;
            done.insert(tid);
        }
    }
    bail!("dropping privileges ({step:?}): threads keep starting")
}

/// Has thread `tid` take `step` in its signal handler, and waits for it.
fn in_thread(tid: i32, step: Step) -> Result<()> {
    REQUEST.done.store(0, Ordering::Relaxed);
    REQUEST.result.store(0, Ordering::Relaxed);
    REQUEST.target.store(tid, Ordering::Release);
    // SAFETY: tgkill(2) to a thread of this process.
    let sent = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, step_signal()) };
    if sent != 0 {
        return match errno() {
            // It ended: nothing left to drop.
            libc::ESRCH => Ok(()),
            e => Err(io::Error::from_raw_os_error(e))
                .with_context(|| format!("signalling thread {tid} to drop privileges")),
        };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while REQUEST.done.load(Ordering::Acquire) != tid {
        if !std::path::Path::new(&format!("/proc/self/task/{tid}")).exists() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "thread {tid} did not drop its privileges ({step:?}) within 5 s: \
                 it blocks the signal"
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    match REQUEST.result.load(Ordering::Relaxed) {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e))
            .with_context(|| format!("dropping privileges ({step:?}) in thread {tid}")),
    }
}

/// One thread's credentials, from its `/proc/.../status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskCreds {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    pub permitted: u64,
    pub effective: u64,
    pub inheritable: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
}

impl TaskCreds {
    pub fn parse(status: &str) -> Option<TaskCreds> {
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name));
        let ids = |name: &str| -> Option<Vec<u32>> {
            field(name)?
                .split_whitespace()
                .map(|v| v.parse().ok())
                .collect()
        };
        let mask = |name: &str| u64::from_str_radix(field(name)?.trim(), 16).ok();
        Some(TaskCreds {
            uids: ids("Uid:")?,
            gids: ids("Gid:")?,
            permitted: mask("CapPrm:")?,
            effective: mask("CapEff:")?,
            inheritable: mask("CapInh:")?,
            // Older kernels have no ambient set.
            ambient: mask("CapAmb:").unwrap_or(0),
            no_new_privs: field("NoNewPrivs:")?.trim() == "1",
        })
    }

    /// What this thread still holds that a drop to `keep` (and to `ids`,
    /// if given) should have taken; `None` when nothing.
    pub fn excess(&self, keep: u64, ids: Option<(u32, u32)>) -> Option<String> {
        let extra = (self.permitted | self.effective | self.inheritable | self.ambient) & !keep;
        if extra != 0 {
            return Some(format!("holds capabilities {extra:#x}"));
        }
        if !self.no_new_privs {
            return Some("has no no_new_privs".to_owned());
        }
        if let Some((uid, gid)) = ids {
            if self.uids.iter().any(|&u| u != uid) || self.gids.iter().any(|&g| g != gid) {
                return Some(format!(
                    "runs as uids {:?}, gids {:?} (not {uid}, {gid})",
                    self.uids, self.gids
                ));
            }
        }
        None
    }
}

/// Proof from the kernel's side: every thread's status shows the drop.
pub(super) fn check_every_thread(keep: u64, ids: Option<(u32, u32)>) -> Result<()> {
    for tid in threads()? {
        // A thread that ended meanwhile holds nothing.
        let Ok(status) = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")) else {
            continue;
        };
        let creds = TaskCreds::parse(&status)
            .with_context(|| format!("/proc/self/task/{tid}/status lacks a field"))?;
        if let Some(why) = creds.excess(keep, ids) {
            bail!("thread {tid} still {why} after dropping privileges");
        }
    }
    Ok(())
}

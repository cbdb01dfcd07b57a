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
    collections::HashSet,
    fmt, io,
    sync::{
        atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use log::{info, warn};

const CAP_SETPCAP: u32 = 8;
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_BPF: u32 = 39;
const LAST_CAP: u32 = 63;
/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_VERSION_3: u32 = 0x2008_0522;

/// The account a root fuselock switches to: the `.deb` creates it.
pub const USER: &str = "fuselock";

/// Where a uid of its own is looked for when there is no `fuselock` user:
/// the range systemd's `UIDS-GIDS.md` leaves unused (from 1879048192),
/// below 2^31, which some tools read as negative.
const SPARE_IDS: std::ops::Range<u32> = 1_879_048_192..1_879_048_192 + 65_536;

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

/// The account a root fuselock becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
    /// Where it came from, for the log line.
    pub source: String,
}

/// `name`'s uid and gid in a password file's text.
fn user_in_passwd(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        let (_password, uid, gid) = (f.next()?, f.next()?, f.next()?);
        Some((uid.parse().ok()?, gid.parse().ok()?))
    })
}

/// The numeric ids in field `field` (0-based) of a password or group file.
fn ids_in(text: &str, field: usize) -> HashSet<u32> {
    text.lines()
        .filter_map(|l| l.split(':').nth(field)?.parse().ok())
        .collect()
}

/// The uids and gids (real, effective, saved, filesystem) of every process
/// that can be seen.
fn ids_of_processes() -> (HashSet<u32>, HashSet<u32>) {
    let (mut uids, mut gids) = (HashSet::new(), HashSet::new());
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (uids, gids);
    };
    for entry in dir.flatten() {
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        for (field, set) in [("Uid:", &mut uids), ("Gid:", &mut gids)] {
            if let Some(line) = status.lines().find_map(|l| l.strip_prefix(field)) {
                set.extend(
                    line.split_whitespace()
                        .filter_map(|v| v.parse::<u32>().ok()),
                );
            }
        }
    }
    (uids, gids)
}

/// The account to leave root for: `fuselock` where the password file has
/// it (not as uid or gid 0), else the first id of [`SPARE_IDS`] that no
/// account, group or process uses. Never the shared `nobody`: any process
/// running as nobody could then stop or kill fuselock.
fn choose_account(
    passwd: &str,
    group: &str,
    taken_by_processes: &(HashSet<u32>, HashSet<u32>),
) -> Result<Account> {
    match user_in_passwd(passwd, USER) {
        Some((uid, gid)) if uid != 0 && gid != 0 => {
            return Ok(Account {
                uid,
                gid,
                source: format!("the {USER} user"),
            })
        }
        Some(_) => warn!("the {USER} user in /etc/passwd has uid or gid 0: not using it"),
        None => {}
    }
    let (uids, gids) = (ids_in(passwd, 2), ids_in(group, 2));
    let (proc_uids, proc_gids) = taken_by_processes;
    let id = SPARE_IDS
        .clone()
        .find(|id| {
            !uids.contains(id)
                && !gids.contains(id)
                && !proc_uids.contains(id)
                && !proc_gids.contains(id)
        })
        .with_context(|| {
            format!(
                "no {USER} user in /etc/passwd, and every id from {} to {} is in use: \
                 create the {USER} system user",
                SPARE_IDS.start,
                SPARE_IDS.end - 1
            )
        })?;
    Ok(Account {
        uid: id,
        gid: id,
        source: format!("no {USER} user in /etc/passwd: an id no account or process uses"),
    })
}

/// [`choose_account`] on this host.
pub fn drop_account() -> Result<Account> {
    let read = |path: &str| match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("reading {path}")),
    };
    choose_account(
        &read("/etc/passwd")?,
        &read("/etc/group")?,
        &ids_of_processes(),
    )
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

/// The drop's steps. Each is taken by every thread before the next starts:
/// a uid change needs CAP_SETUID in the thread that makes it, so no thread
/// may shed it before all have changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    /// `no_new_privs`, the ambient and bounding sets, and keepcaps so that
    /// the uid change keeps the permitted set.
    Prepare = 1,
    /// No supplementary groups; the gid, then the uid.
    Ids = 2,
    /// Every capability but those kept; keepcaps off again.
    Shed = 3,
}

/// The request the signal handler serves: plain atomics, all it may touch.
struct Request {
    step: AtomicU8,
    drop_bounding: AtomicBool,
    change_ids: AtomicBool,
    keep: AtomicU64,
    uid: AtomicU32,
    gid: AtomicU32,
    /// The thread asked to take the step.
    target: AtomicI32,
    /// The thread that took it, once it has; and its errno (0: done).
    done: AtomicI32,
    result: AtomicI32,
}

static REQUEST: Request = Request {
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
struct Handler {
    previous: libc::sigaction,
}

impl Handler {
    fn install() -> Result<Handler> {
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
fn on_every_thread(step: Step) -> Result<usize> {
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
fn check_every_thread(keep: u64, ids: Option<(u32, u32)>) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use std::{
        io::Read as _,
        process::Command,
        sync::{mpsc, Arc, Condvar},
    };

    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
        app:x:1879048192:100::/:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nnogroup:x:65534:\nshared:x:1879048193:\n";

    #[test]
    fn the_fuselock_user_is_used_where_it_exists() {
        let passwd = format!("{PASSWD}fuselock:x:998:997::/nonexistent:/usr/sbin/nologin\n");
        let a = choose_account(&passwd, GROUP, &Default::default()).expect("account");
        assert_eq!((a.uid, a.gid), (998, 997));
        assert_eq!(a.source, "the fuselock user");
    }

    #[test]
    fn without_it_an_id_nothing_uses_is_chosen_never_nobody() {
        // 1879048192 is an account's, ...193 a group's, ...194 a process's
        // uid, ...195 a process's gid.
        let procs = (
            HashSet::from([0, 1_879_048_194]),
            HashSet::from([0, 1_879_048_195]),
        );
        let a = choose_account(PASSWD, GROUP, &procs).expect("account");
        assert_eq!((a.uid, a.gid), (1_879_048_196, 1_879_048_196));
        assert!(a.source.contains("no fuselock user"), "{}", a.source);
        // A fuselock account with uid 0 is not one to drop to.
        let passwd = format!("{PASSWD}fuselock:x:0:0::/:/bin/sh\n");
        let a = choose_account(&passwd, GROUP, &procs).expect("account");
        assert_ne!(a.uid, 0);
        assert_eq!(a.uid, 1_879_048_196);
    }

    #[test]
    fn a_threads_status_is_read_and_judged() {
        let status = "Name:\tfuselock\nUid:\t7\t7\t7\t7\nGid:\t8\t8\t8\t8\n\
            CapInh:\t0000000000000000\nCapPrm:\t0000008000000000\n\
            CapEff:\t0000008000000000\nCapBnd:\t000001ffffffffff\n\
            CapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
        let creds = TaskCreds::parse(status).expect("parsed");
        assert_eq!(creds.excess(1 << CAP_BPF, Some((7, 8))), None);
        assert!(creds
            .excess(0, None)
            .is_some_and(|w| w.contains("0x8000000000")));
        assert!(creds
            .excess(1 << CAP_BPF, Some((0, 0)))
            .is_some_and(|w| w.contains("uids [7, 7, 7, 7]")));
        let without_nnp = status.replace("NoNewPrivs:\t1", "NoNewPrivs:\t0");
        let creds = TaskCreds::parse(&without_nnp).expect("parsed");
        assert_eq!(
            creds.excess(1 << CAP_BPF, None).as_deref(),
            Some("has no no_new_privs")
        );
    }

    /// Set in the copy of the test binary that drops its privileges; names
    /// the drop to make.
    const CHILD: &str = "FUSELOCK_PRIVILEGES_TEST_CHILD";

    fn is_root() -> bool {
        // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    /// Runs `test` again in a process of its own (a drop cannot be undone),
    /// with `CHILD=mode`; its output when it passed.
    fn in_child(test: &str, mode: &str) -> String {
        let exe = std::env::current_exe().expect("test binary");
        let out = Command::new(exe)
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(CHILD, mode)
            .output()
            .expect("run the child");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{mode}: {text}");
        assert!(
            text.contains("CHILD OK"),
            "{mode}: the child did not run: {text}"
        );
        text
    }

    /// Threads started before the drop — one waiting on a condition
    /// variable as tokio's idle blocking threads do, one sleeping, one
    /// blocked reading a pipe — end up with exactly what the calling thread
    /// keeps, by their own capget(2) and by /proc.
    #[test]
    fn threads_started_before_the_drop_drop_too() {
        const TEST: &str = "kernel::privileges::tests::threads_started_before_the_drop_drop_too";
        match std::env::var(CHILD).as_deref() {
            Ok(mode) => return drop_with_threads(mode),
            Err(_) if !is_root() => {
                eprintln!("SKIPPED: needs root, to have privileges to drop");
                return;
            }
            Err(_) => {}
        }
        let text = in_child(TEST, "bpf");
        assert!(text.contains("running as uid "), "{text}");
        in_child(TEST, "keep-uid");
    }

    fn drop_with_threads(mode: &str) {
        let parked = Arc::new((Mutex::new(false), Condvar::new()));
        let (report, reports) = mpsc::channel();
        let mut threads = Vec::new();
        threads.push(std::thread::spawn({
            let (parked, report) = (Arc::clone(&parked), report.clone());
            move || {
                let (lock, wake) = &*parked;
                let mut go = lock.lock().expect("lock");
                while !*go {
                    go = wake.wait(go).expect("wait");
                }
                report
                    .send(CapSets::current().expect("capget"))
                    .expect("report");
            }
        }));
        threads.push(std::thread::spawn({
            let report = report.clone();
            move || {
                std::thread::sleep(Duration::from_millis(1500));
                report
                    .send(CapSets::current().expect("capget"))
                    .expect("report");
            }
        }));
        let (mut reader, mut writer) = std::io::pipe().expect("pipe");
        threads.push(std::thread::spawn(move || {
            let mut byte = [0];
            reader.read_exact(&mut byte).expect("read");
            report
                .send(CapSets::current().expect("capget"))
                .expect("report");
        }));
        std::thread::sleep(Duration::from_millis(100));
        let (dropped, keep, ids) = match mode {
            "bpf" => {
                let d = drop_to_bpf_only().expect("drop");
                let a = d.now.clone().expect("left root");
                assert_ne!(a.uid, 0);
                assert_ne!(a.uid, 65_534, "never the shared nobody");
                (d, 1 << CAP_BPF, Some((a.uid, a.gid)))
            }
            "keep-uid" => {
                let d = drop_capabilities_keeping_uid().expect("drop");
                assert!(d.now.is_none());
                (d, 0, None)
            }
            other => panic!("unknown mode {other}"),
        };
        assert!(dropped.other_threads >= 3, "{dropped:?}");
        check_every_thread(keep, ids).expect("every thread dropped");
        *parked.0.lock().expect("lock") = true;
        parked.1.notify_all();
        std::io::Write::write_all(&mut writer, b"x").expect("write");
        for _ in 0..3 {
            let sets = reports
                .recv_timeout(Duration::from_secs(10))
                .expect("a thread's report");
            assert_eq!(sets.permitted, keep, "{sets:?}");
            assert_eq!(sets.effective, keep, "{sets:?}");
            assert_eq!(sets.inheritable, 0, "{sets:?}");
        }
        for t in threads {
            t.join().expect("thread");
        }
        println!("{dropped}\nCHILD OK");
    }
}

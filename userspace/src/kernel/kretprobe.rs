//! Kretprobes with room for many tasks at once. aya attaches kprobes
//! through the perf `kprobe` PMU, where a kretprobe gets the kernel's
//! default `maxactive`, max(10, 2 × CPUs): with more tasks than that inside
//! the hooked function at once (writers queued on one file's lock), the
//! extra returns are missed and their writes go uncounted. A probe event
//! defined in tracefs (`r4096:…`) can have as many as the kernel allows.
//! aya has no API for attaching a program to an event it did not define,
//! so this is done by hand: perf_event_open on the event's tracepoint id,
//! then `PERF_EVENT_IOC_SET_BPF`.
//!
//! Unlike a PMU kprobe, such an event outlives the process that defined
//! it. So the events are handed to a reaper, a child process (`fuselock
//! reap-probe-events`) that waits for the end of a pipe from fuselock and
//! then deletes them: on a normal exit, and on SIGKILL alike.

use std::{
    collections::HashSet,
    fs::OpenOptions,
    io::{Read as _, Write as _},
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::programs::KProbe;
use log::debug;

use fuselock_base::procfs;

/// Concurrent returns a kretprobe can track: the kernel's maximum
/// (`KRETPROBE_MAXACTIVE_MAX`).
pub const MAXACTIVE: u32 = 4096;

/// Where our events live in tracefs: `events/fuselock/…`.
const GROUP: &str = "fuselock";

/// Return probes on kernel functions, each with its own tracefs event, and
/// the one reaper that deletes them all. Drop detaches the programs, then
/// lets the reaper delete the events and waits for it.
pub struct RetProbes {
    tracefs: PathBuf,
    me: Owner,
    perf: Vec<OwnedFd>,
    reaper: Child,
}

/// tracefs, where it is mounted and we may look; or why not.
fn tracefs() -> Result<PathBuf> {
    let mut denied = None;
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        let dir = PathBuf::from(dir);
        match std::fs::metadata(dir.join("kprobe_events")) {
            Ok(_) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                denied.get_or_insert(dir);
            }
            Err(_) => {}
        }
    }
    match denied {
        Some(dir) => bail!("tracefs is not accessible to this user ({})", dir.display()),
        None => bail!("tracefs is not mounted (no /sys/kernel/tracing/kprobe_events)"),
    }
}

fn append(file: &Path, line: &str) -> std::io::Result<()> {
    OpenOptions::new()
        .append(true)
        .open(file)?
        .write_all(line.as_bytes())
}

/// Who defined an event: a process, named by its PID namespace and its pid
/// there. kprobe_events is host-wide while pids are per namespace, so a
/// pid alone would let fuselocks in two containers take each other's
/// events for their own, or for stale ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Owner {
    pidns: u64,
    pid: u32,
}

impl Owner {
    fn me() -> Owner {
        Owner {
            pidns: procfs::my_pid_namespace(),
            pid: std::process::id(),
        }
    }
}

/// Every PID namespace some process is in, where all processes are
/// visible (from the initial namespace); `None` elsewhere.
fn live_pid_namespaces(me: Owner) -> Option<HashSet<u64>> {
    if me.pidns != procfs::INIT_PID_NAMESPACE {
        return None;
    }
    let entries = std::fs::read_dir("/proc").ok()?;
    Some(
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(procfs::pid_namespace_of))
            .collect(),
    )
}

/// The event of `owner` on `function`.
fn event_name(owner: Owner, function: &str) -> String {
    format!("r{}_{}_{function}", owner.pidns, owner.pid)
}

/// The owner of one of our events, from its name (`r<pidns>_<pid>_<fn>`;
/// fuselocks before namespaced names wrote `r<pid>_<fn>` from the initial
/// namespace).
fn owner_of(event: &str) -> Option<Owner> {
    let (first, rest) = event.strip_prefix('r')?.split_once('_')?;
    let first: u64 = first.parse().ok()?;
    let second = rest
        .split_once('_')
        .and_then(|(p, _)| p.parse::<u32>().ok());
    Some(match second {
        Some(pid) => Owner { pidns: first, pid },
        None => Owner {
            pidns: procfs::INIT_PID_NAMESPACE,
            pid: u32::try_from(first).ok()?,
        },
    })
}

/// The events in `defined` (kprobe_events' text) that fuselocks no longer
/// there left behind: those of a dead process of our own namespace, and,
/// seen from the initial namespace, those of a namespace no process is in.
fn stale_events(
    defined: &str,
    me: Owner,
    alive: impl Fn(u32) -> bool,
    live_namespaces: Option<&HashSet<u64>>,
) -> Vec<String> {
    let prefix = format!("{GROUP}/");
    defined
        .lines()
        .filter_map(|line| {
            // r4096:fuselock/r4026531836_1234_fuse_file_write_iter fuse_file_write_iter
            let (_, name) = line.split_whitespace().next()?.split_once(':')?;
            let event = name.strip_prefix(&prefix)?;
            let owner = owner_of(event)?;
            let stale = if owner.pidns == me.pidns {
                owner.pid != me.pid && !alive(owner.pid)
            } else {
                live_namespaces.is_some_and(|live| !live.contains(&owner.pidns))
            };
            stale.then(|| event.to_owned())
        })
        .collect()
}

/// Deletes events of ours left by a fuselock that was killed: an event
/// stays defined until deleted, and each holds memory for `MAXACTIVE`
/// returns.
fn delete_stale(tracefs: &Path, me: Owner) {
    let events = tracefs.join("kprobe_events");
    let Ok(defined) = std::fs::read_to_string(&events) else {
        return;
    };
    let live = live_pid_namespaces(me);
    for event in stale_events(&defined, me, procfs::alive, live.as_ref()) {
        if append(&events, &format!("-:{GROUP}/{event}\n")).is_ok() {
            debug!("deleted the stale probe event {GROUP}/{event}");
        }
    }
}

impl RetProbes {
    /// Ready to attach return probes on `functions`: stale events deleted,
    /// and the reaper for this process's events started before any exists,
    /// so that from the moment one does it goes when we do, however we go.
    pub fn new(functions: &[&str]) -> Result<RetProbes> {
        let tracefs = tracefs()?;
        let me = Owner::me();
        delete_stale(&tracefs, me);
        let events: Vec<String> = functions.iter().map(|f| event_name(me, f)).collect();
        let reaper = spawn_reaper(&tracefs, &events)?;
        Ok(RetProbes {
            tracefs,
            me,
            perf: Vec::new(),
            reaper,
        })
    }

    /// Attaches the loaded program `prog` to the return of `function` (one
    /// of those given to [`RetProbes::new`]).
    pub fn attach(&mut self, prog: &KProbe, function: &str) -> Result<()> {
        let event = event_name(self.me, function);
        let events = self.tracefs.join("kprobe_events");
        append(
            &events,
            &format!("r{MAXACTIVE}:{GROUP}/{event} {function}\n"),
        )
        .with_context(|| format!("defining a return probe in {}", events.display()))?;
        let id_file = self
            .tracefs
            .join("events")
            .join(GROUP)
            .join(&event)
            .join("id");
        let id: u64 = std::fs::read_to_string(&id_file)
            .with_context(|| format!("reading {}", id_file.display()))?
            .trim()
            .parse()
            .with_context(|| format!("{} is not a number", id_file.display()))?;
        let perf = open_tracepoint(id).context("perf_event_open on the probe event")?;
        let prog_fd = prog.fd().context("the program is not loaded")?;
        // SAFETY: ioctls on a perf event fd we own, with a program fd that
        // outlives the call.
        let attached = unsafe {
            libc::ioctl(
                perf.as_raw_fd(),
                PERF_EVENT_IOC_SET_BPF,
                prog_fd.as_fd().as_raw_fd(),
            ) == 0
                && libc::ioctl(perf.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) == 0
        };
        if !attached {
            return Err(std::io::Error::last_os_error())
                .context("attaching the program to the probe event");
        }
        self.perf.push(perf);
        Ok(())
    }
}

/// Missed hits of this process's return probes (`kprobe_profile`'s third
/// column): returns past `maxactive`. The file is opened once, while
/// fuselock is still privileged, and read again through that descriptor.
pub struct MissedReturns {
    profile: std::fs::File,
    /// `fuselock/r<pidns>_<pid>_`: the names of our events.
    prefix: String,
}

impl MissedReturns {
    /// `None` when tracefs is not there (then kprobe mode uses aya's
    /// attach, whose misses the programs' own counts cover).
    pub fn open() -> Option<MissedReturns> {
        let profile = std::fs::File::open(tracefs().ok()?.join("kprobe_profile")).ok()?;
        Some(MissedReturns {
            profile,
            prefix: format!("{GROUP}/{}", event_name(Owner::me(), "")),
        })
    }

    pub fn read(&mut self) -> std::io::Result<u64> {
        use std::io::Seek as _;
        self.profile.rewind()?;
        let mut text = String::new();
        self.profile.read_to_string(&mut text)?;
        Ok(missed_in_profile(&text, &self.prefix))
    }
}

fn missed_in_profile(profile: &str, prefix: &str) -> u64 {
    profile
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (event, _hits, missed) = (f.next()?, f.next()?, f.next()?);
            event
                .starts_with(prefix)
                .then(|| missed.parse::<u64>().ok())?
        })
        .sum()
}

impl Drop for RetProbes {
    fn drop(&mut self) {
        // Detach first: an event in use cannot be deleted.
        self.perf.clear();
        // Closing its stdin is the signal; wait until the events are gone.
        drop(self.reaper.stdin.take());
        let _ = self.reaper.wait();
    }
}

/// `fuselock reap-probe-events TRACEFS EVENT...`, holding the write end of
/// a pipe to its stdin.
fn spawn_reaper(tracefs: &Path, events: &[String]) -> Result<Child> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe().context("finding the fuselock executable")?;
    Command::new(exe)
        .arg("reap-probe-events")
        .arg(tracefs)
        .args(events)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        // Its own process group: a Ctrl-C for fuselock is not for it.
        .process_group(0)
        .spawn()
        .context("starting the probe-event reaper")
}

/// The reaper: waits for the end of stdin (fuselock gone, or done with
/// the events), then deletes `events`, retrying while the kernel still has
/// one in use (a dying fuselock's perf events are released as it exits).
/// An event never defined (fuselock stopped before it) is already gone.
///
/// It outlives fuselock's drop of privileges, so it makes its own at once:
/// `kprobe_events` is opened first, and writing to that descriptor is all
/// that deleting takes. Then it keeps no capability, leaves uid 0 as
/// fuselock does and sets `no_new_privs`.
pub fn reap(tracefs: &Path, events: &[String]) -> i32 {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: ignoring a signal has no preconditions.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let path = tracefs.join("kprobe_events");
    let mut file = match OpenOptions::new().append(true).open(&path) {
        Ok(file) => file,
        Err(e) => {
            eprintln!(
                "fuselock: the probe-event reaper cannot open {}: {e}",
                path.display()
            );
            return 1;
        }
    };
    match crate::kernel::privileges::drop_everything() {
        Ok(dropped) => debug!("probe-event reaper: {dropped}"),
        // Deleting the events still matters more than stopping here; the
        // message says what it kept.
        Err(e) => {
            eprintln!("fuselock: the probe-event reaper could not drop its privileges: {e:#}")
        }
    }
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut failed = 0;
    for event in events {
        loop {
            match file.write_all(format!("-:{GROUP}/{event}\n").as_bytes()) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
                Err(e) if Instant::now() < deadline => {
                    debug!("deleting {GROUP}/{event}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    eprintln!("fuselock: cannot delete the probe event {GROUP}/{event}: {e}");
                    failed += 1;
                    break;
                }
            }
        }
    }
    i32::from(failed > 0)
}

// From <linux/perf_event.h>: _IOW('$', 8, __u32) and _IO('$', 0).
const PERF_EVENT_IOC_SET_BPF: libc::Ioctl = 0x4004_2408;
const PERF_EVENT_IOC_ENABLE: libc::Ioctl = 0x2400;
const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// The perf event of tracepoint `id`, on every CPU of every task.
fn open_tracepoint(id: u64) -> std::io::Result<OwnedFd> {
    // struct perf_event_attr: type, size, config, sample_period, then
    // fields left zero; the kernel accepts any size from
    // PERF_ATTR_SIZE_VER0 (64) up.
    #[repr(C)]
    struct Attr {
        kind: u32,
        size: u32,
        config: u64,
        sample_period: u64,
        sample_type: u64,
        read_format: u64,
        flags: u64,
        wakeup_events: u32,
        bp_type: u32,
        config1: u64,
    }
    let attr = Attr {
        kind: PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<Attr>() as u32,
        config: id,
        sample_period: 1,
        sample_type: 0,
        read_format: 0,
        flags: 0,
        wakeup_events: 1,
        bp_type: 0,
        config1: 0,
    };
    // SAFETY: perf_event_open reads `attr`, which outlives the call; pid -1
    // with cpu 0 is "every task, and the event fires on any CPU" for a
    // tracepoint attached to a BPF program.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const Attr,
            -1 as libc::pid_t,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INIT: u64 = procfs::INIT_PID_NAMESPACE;
    const CONTAINER: u64 = 4_026_532_999;

    #[test]
    fn only_our_return_probes_misses_are_summed() {
        let profile = "  fuselock/r7_42_fuse_file_write_iter    1600    3\n\
                       \x20 fuselock/r7_42_fuse_file_io_open          7    1\n\
                       \x20 fuselock/r7_43_fuse_file_write_iter     10    9\n\
                       \x20 fuselock/r8_42_fuse_file_write_iter     10    9\n\
                       \x20 other/probe                            5    5\n";
        let me = Owner { pidns: 7, pid: 42 };
        let prefix = format!("{GROUP}/{}", event_name(me, ""));
        assert_eq!(missed_in_profile(profile, &prefix), 4);
    }

    #[test]
    fn only_events_of_gone_fuselocks_are_stale() {
        let defined = format!(
            "\
r4096:fuselock/r{INIT}_12_fuse_file_write_iter fuse_file_write_iter
r4096:fuselock/r{INIT}_99_fuse_file_io_open fuse_file_io_open
r4096:fuselock/r{INIT}_7_fuse_file_io_open fuse_file_io_open
r4096:fuselock/r{CONTAINER}_12_fuse_file_write_iter fuse_file_write_iter
r4096:fuselock/r34_fuse_file_write_iter fuse_file_write_iter
p:kprobes/aya_12_p_fuse_direct_io_0x0_3 fuse_direct_io
r:other/r12_x x
garbage
"
        );
        let me = Owner {
            pidns: INIT,
            pid: 7,
        };
        let alive = |pid: u32| pid == 99;
        // From the initial namespace, with the container still running: its
        // pid 12 is not our pid 12.
        let live: HashSet<u64> = [INIT, CONTAINER].into();
        assert_eq!(
            stale_events(&defined, me, alive, Some(&live)),
            [
                format!("r{INIT}_12_fuse_file_write_iter"),
                "r34_fuse_file_write_iter".to_owned()
            ],
        );
        // The container is gone: its events too.
        let live: HashSet<u64> = [INIT].into();
        assert_eq!(stale_events(&defined, me, alive, Some(&live)).len(), 3);
        // Inside the container, only its own dead pids count; the host's
        // events are not its business.
        let inside = Owner {
            pidns: CONTAINER,
            pid: 5,
        };
        assert_eq!(
            stale_events(&defined, inside, |_| false, None),
            [format!("r{CONTAINER}_12_fuse_file_write_iter")]
        );
        assert_eq!(
            event_name(me, "fuse_file_write_iter"),
            format!("r{INIT}_7_fuse_file_write_iter")
        );
    }

    #[test]
    fn names_fit_tracefs() {
        // MAX_EVENT_NAME_LEN is 64.
        let widest = Owner {
            pidns: u64::from(u32::MAX),
            pid: 4_194_304,
        };
        for f in crate::kernel::probes::required_functions() {
            assert!(event_name(widest, f).len() < 64, "{f}");
        }
    }
}

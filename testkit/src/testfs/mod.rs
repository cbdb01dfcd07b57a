//! `fuselock testfs`: a small FUSE server that exposes a backing directory through kernel
//! passthrough (or, with `--direct-io`, through classic FUSE direct I/O).
//!
//! It exists to give the lock probes something to look at: a FUSE inode whose writes the
//! kernel either hands straight to a backing file (`FOPEN_PASSTHROUGH`) or forwards to this
//! server (`FOPEN_DIRECT_IO`). It is deliberately simple: regular files and directories only,
//! no rename, no links, no xattrs, no locks.
//!
//! Every request is answered from the backing directory itself, so attributes (above all the
//! size) are never invented: the kernel's passthrough write path updates `i_size` on its own,
//! and a `getattr` must agree with it.

use std::ffi::CString;
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use log::{debug, warn};

mod backing;
mod fs;
mod requests;
mod tables;

use self::fs::{OpenPolicy, TestFs};

/// Name shown as the mount's source and subtype in `/proc/mounts` (`fuse.fuselock-testfs`).
const FS_NAME: &str = "fuselock-testfs";

/// How often the main thread checks whether the session ended on its own (external `umount`).
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// `CAP_SYS_ADMIN`'s bit in `/proc/self/status`'s `CapEff` mask.
const CAP_SYS_ADMIN_BIT: u32 = 21;

/// Mount a FUSE passthrough view of a directory until interrupted.
#[derive(clap::Args, Debug, Clone)]
pub struct TestfsArgs {
    /// Directory whose files the mount exposes (e.g. a tmpfs).
    #[arg(long)]
    pub backing: PathBuf,
    /// Where to mount: an existing directory; neither it nor BACKING may contain the other.
    #[arg(long)]
    pub mountpoint: PathBuf,
    /// Ask for parallel direct writes (FOPEN_PARALLEL_DIRECT_WRITES) on every open.
    ///
    /// Stock kernels keep this flag only next to FOPEN_DIRECT_IO, so it takes effect with
    /// --direct-io; on passthrough opens they drop it (unless patched to honour it there).
    #[arg(long)]
    pub parallel: bool,
    /// Reply FOPEN_DIRECT_IO without passthrough: reads and writes then reach this server,
    /// which does them with pread/pwrite on the backing file. Works without passthrough support.
    #[arg(long)]
    pub direct_io: bool,
    /// With --direct-io, answer read-only opens without FOPEN_DIRECT_IO: they read through the
    /// page cache, and while one is open the kernel keeps the inode in cached I/O mode, which
    /// makes every direct write to it take the lock exclusively.
    #[arg(long, requires = "direct_io")]
    pub cached_readers: bool,
    /// Let users other than root use the mount (mount option allow_other).
    #[arg(long)]
    pub allow_other: bool,
    /// Threads serving FUSE requests. Only matters with --direct-io, where I/O reaches the server.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub server_threads: u16,
}

/// Mounts the filesystem and serves it until SIGINT, SIGTERM or SIGHUP arrives, or until
/// someone else unmounts it; then unmounts cleanly.
///
/// Prints `testfs: mounted BACKING on MOUNTPOINT (flags ...)` on stdout once the kernel has
/// completed the FUSE handshake, so scripts can wait for that line before using the mount.
pub fn run(args: &TestfsArgs) -> anyhow::Result<()> {
    let policy = OpenPolicy::from_args(args);
    let (backing, mountpoint) = check_paths(&args.backing, &args.mountpoint)?;
    check_environment()?;

    // Block the signals before any thread exists, so that fuser's threads inherit the mask
    // and the signals stay queued for `sigtimedwait` in this thread.
    let signals = BlockedSignals::block(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
        .context("cannot block SIGINT/SIGTERM/SIGHUP")?;

    let fs = TestFs::new(backing.clone(), policy)?;
    let stats = Arc::clone(&fs.stats);
    let config = mount_config(args);
    let mut session = Session::new(fs, &mountpoint, &config)
        .with_context(|| format!("cannot mount FUSE filesystem on {}", mountpoint.display()))?;
    announce(&format!(
        "testfs: mounted {} on {} (flags {})",
        backing.display(),
        mountpoint.display(),
        policy.describe()
    ))?;

    // Not `Session::spawn`: its handle unmounts again on drop even after a clean unmount (fuser
    // 0.18 counts a dead connection as mounted), warning about EINVAL. The unmounter instead
    // hands the mount over to the one unmount done here.
    let unmounter = session.unmount_callable();
    let server = thread::Builder::new()
        .name("testfs-session".to_owned())
        .spawn(move || session.run())
        .context("cannot start the FUSE session thread")?;
    let ending = wait_for_end(&signals, &server)?;
    let result = shut_down(server, unmounter, &mountpoint, &signals, ending);
    // With passthrough both counts are 0: the kernel did all file I/O itself.
    let announced = announce(&format!(
        "testfs: unmounted {} (requests served in userspace: {} reads, {} writes)",
        mountpoint.display(),
        stats.reads.load(Ordering::Relaxed),
        stats.writes.load(Ordering::Relaxed),
    ));
    result.and(announced)
}

/// Canonical backing and mount paths, checked so the server never serves its own mount.
fn check_paths(backing: &Path, mountpoint: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let backing = backing
        .canonicalize()
        .with_context(|| format!("backing directory {}", backing.display()))?;
    let mountpoint = mountpoint
        .canonicalize()
        .with_context(|| format!("mountpoint {}", mountpoint.display()))?;
    ensure!(
        backing.is_dir(),
        "backing path {} is not a directory",
        backing.display()
    );
    ensure!(
        mountpoint.is_dir(),
        "mountpoint {} is not a directory",
        mountpoint.display()
    );
    // The server reaches backing files by path. If either directory contains the other, some
    // backing path leads into the mount, i.e. back to the server itself, which then deadlocks
    // waiting for its own answer.
    ensure!(
        !backing.starts_with(&mountpoint) && !mountpoint.starts_with(&backing),
        "backing directory {} and mountpoint {} overlap: the server would end up serving \
         itself; use two separate directories",
        backing.display(),
        mountpoint.display()
    );
    Ok((backing, mountpoint))
}

/// Fails early, with advice, where mounting could only fail obscurely.
fn check_environment() -> anyhow::Result<()> {
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse does not exist: load the module (`modprobe fuse`) or create the node (`mknod /dev/fuse c 10 229`)");
    }
    let status =
        std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    if cap_sys_admin_from_status(&status) != Some(true) {
        bail!(
            "testfs needs CAP_SYS_ADMIN (run it as root): mount(2) of a FUSE filesystem and the \
             FUSE_DEV_IOC_BACKING_OPEN ioctl for passthrough both require it"
        );
    }
    Ok(())
}

/// Whether `CapEff` in a `/proc/<pid>/status` text has `CAP_SYS_ADMIN`; `None` if absent.
fn cap_sys_admin_from_status(status: &str) -> Option<bool> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    let mask = u64::from_str_radix(hex, 16).ok()?;
    Some(mask & (1 << CAP_SYS_ADMIN_BIT) != 0)
}

fn mount_config(args: &TestfsArgs) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(FS_NAME.to_owned()),
        // fuser passes Subtype only to fusermount; as root the kernel needs it as a raw option.
        MountOption::CUSTOM(format!("subtype={FS_NAME}")),
        MountOption::DefaultPermissions,
    ];
    config.acl = if args.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(usize::from(args.server_threads));
    config
}

/// Prints a status line on stdout and flushes it at once: scripts wait for these lines.
fn announce(line: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}").context("cannot write to stdout")?;
    out.flush().context("cannot flush stdout")
}

/// Why the serving loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Signal(libc::c_int),
    /// The session thread ended by itself, i.e. the filesystem was unmounted from outside.
    SessionEnded,
}

/// The session thread; it returns when the kernel ends the connection (at unmount).
type Server = JoinHandle<io::Result<()>>;

fn wait_for_end(signals: &BlockedSignals, server: &Server) -> anyhow::Result<Ending> {
    loop {
        if server.is_finished() {
            return Ok(Ending::SessionEnded);
        }
        if let Some(signal) = signals.wait(POLL_INTERVAL)? {
            return Ok(Ending::Signal(signal));
        }
    }
}

/// Unmounts (unless that already happened) and waits for the session thread.
fn shut_down(
    server: Server,
    mut unmounter: SessionUnmounter,
    mountpoint: &Path,
    signals: &BlockedSignals,
    ending: Ending,
) -> anyhow::Result<()> {
    if let Ending::Signal(signal) = ending {
        debug!("signal {signal}: unmounting {}", mountpoint.display());
        if unmount(&mut unmounter, mountpoint)? == Unmounted::Lazily {
            announce(&format!(
                "testfs: {} is busy; detached it, serving open files until they are closed \
                 (signal again to quit now)",
                mountpoint.display()
            ))?;
            while !server.is_finished() {
                if signals.wait(POLL_INTERVAL)?.is_some() {
                    bail!("interrupted while files were still open on the detached mount");
                }
            }
        }
    }
    // After the unmount the kernel ends the connection and the session loop returns.
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the FUSE session thread panicked"))?
        .context("the FUSE session ended with an error")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unmounted {
    Now,
    /// The mount was busy and is detached; it goes away when its last file is closed.
    Lazily,
}

/// Unmounts through fuser (which then forgets the mount), or detaches it if files are open.
fn unmount(unmounter: &mut SessionUnmounter, mountpoint: &Path) -> anyhow::Result<Unmounted> {
    match unmounter.unmount() {
        Ok(()) => Ok(Unmounted::Now),
        Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
            detach(mountpoint)
                .with_context(|| format!("cannot detach {}", mountpoint.display()))?;
            Ok(Unmounted::Lazily)
        }
        // Someone unmounted it between the signal and now.
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => Ok(Unmounted::Now),
        Err(err) => Err(err).with_context(|| format!("cannot unmount {}", mountpoint.display())),
    }
}

/// `umount2(MNT_DETACH)`: the mount leaves the namespace now and ends with its last open file.
fn detach(mountpoint: &Path) -> io::Result<()> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Signals blocked in the calling thread (and in threads it spawns) for synchronous waiting;
/// the previous mask comes back on drop.
struct BlockedSignals {
    set: libc::sigset_t,
    previous: libc::sigset_t,
}

impl BlockedSignals {
    fn block(signals: &[libc::c_int]) -> io::Result<Self> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set it is given a valid pointer to.
        if unsafe { libc::sigemptyset(set.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sigemptyset succeeded, so `set` is initialised.
        let mut set = unsafe { set.assume_init() };
        for &signal in signals {
            // SAFETY: `set` is an initialised signal set; invalid numbers are reported as EINVAL.
            if unsafe { libc::sigaddset(&mut set, signal) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let mut previous = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: `set` is initialised, and `previous` is valid for writes of one sigset_t, which
        // pthread_sigmask fills in on success.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, previous.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: pthread_sigmask succeeded, so it stored the old mask in `previous`.
        let previous = unsafe { previous.assume_init() };
        Ok(Self { set, previous })
    }

    /// Waits up to `timeout` for one of the blocked signals; `None` if none came.
    fn wait(&self, timeout: Duration) -> anyhow::Result<Option<libc::c_int>> {
        let timeout = libc::timespec {
            // `time_t` is not named: the alias is deprecated on musl (it is i64 on x86_64 either way).
            tv_sec: timeout.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
        };
        // SAFETY: `self.set` and `timeout` are initialised and outlive the call; a null siginfo
        // pointer is allowed.
        let signal = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &timeout) };
        if signal >= 0 {
            return Ok(Some(signal));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(err).context("sigtimedwait failed"),
        }
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        // SAFETY: `previous` is the mask pthread_sigmask returned when the signals were blocked.
        let rc = unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, std::ptr::null_mut())
        };
        if rc != 0 {
            warn!(
                "cannot restore the signal mask: {}",
                io::Error::from_raw_os_error(rc)
            );
        }
    }
}

#[cfg(test)]
mod tests;

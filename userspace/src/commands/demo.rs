//! `fuselock demo`: everything in one command — a passthrough mount of the
//! built-in test filesystem in a private temporary directory, a mixed
//! workload (several threads, every reason), the counts, and the verdict;
//! all cleaned up on exit.
//!
//! The probes attach once, for every step: the workload's counts and the
//! verdict come from the same session.
//!
//! The mount lives in a keeper, a child (`fuselock demo --keeper`) that
//! mounts as root, then keeps uid 0 but no capability: that is all the
//! mount's owner-only access, stopping its root server and removing the
//! private directory take. So the demo itself drops like every other
//! command, to CAP_BPF and another user, and the keeper still cleans up
//! after it, however it ends (the end of its stdin is the signal).

use std::{
    ffi::{CString, OsString},
    io::{BufRead as _, Write as _},
    os::unix::ffi::{OsStrExt as _, OsStringExt as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use fuselock_base::escape;
use fuselock_testkit::exercise;

use crate::{
    cli::{DemoArgs, ProbeArgs},
    commands::session::Session,
    commands::verify::{self, Watch},
    wire::table,
};

/// A new directory only we can enter (mode 0700, `mkdtemp(3)`): nothing in
/// it can have been planted by another user, so no path under it needs
/// checking for symlinks.
fn private_temp_dir() -> Result<PathBuf> {
    let template = std::env::temp_dir().join("fuselock-demo-XXXXXX");
    let mut bytes = CString::new(template.into_os_string().into_vec())
        .context("the temporary directory's path contains a NUL byte")?
        .into_bytes_with_nul();
    // SAFETY: mkdtemp(3) rewrites the XXXXXX of a NUL-terminated buffer we own.
    if unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) }.is_null() {
        return Err(std::io::Error::last_os_error())
            .context("creating a private temporary directory");
    }
    bytes.pop();
    Ok(PathBuf::from(OsString::from_vec(bytes)))
}

/// The test file system, unmounted and removed on drop.
struct DemoMount {
    server: Child,
    base: PathBuf,
    mountpoint: PathBuf,
}

/// Whether a file system is mounted on `mountpoint`: its device then differs
/// from its parent's (both lie in our private directory).
fn is_mounted(mountpoint: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev());
    match (dev(mountpoint), mountpoint.parent().map(dev)) {
        (Ok(mine), Some(Ok(parent))) => mine != parent,
        _ => false,
    }
}

impl DemoMount {
    fn start(parallel: bool) -> Result<DemoMount> {
        let base = private_temp_dir()?;
        let backing = base.join("backing");
        let mountpoint = base.join("mnt");
        for dir in [&backing, &mountpoint] {
            std::fs::create_dir(dir).with_context(|| format!("creating {}", escape::path(dir)))?;
        }
        let exe = std::env::current_exe().context("finding the fuselock executable")?;
        let mut cmd = Command::new(exe);
        cmd.arg("testfs")
            .arg("--backing")
            .arg(&backing)
            .arg("--mountpoint")
            .arg(&mountpoint);
        if parallel {
            cmd.arg("--parallel");
        }
        let server = cmd
            .stdout(Stdio::null())
            .spawn()
            .context("starting fuselock testfs")?;
        let mut mount = DemoMount {
            server,
            base,
            mountpoint,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_mounted(&mount.mountpoint) {
            if let Some(status) = mount.server.try_wait()? {
                bail!("fuselock testfs exited ({status}) before mounting; see its message above");
            }
            if Instant::now() > deadline {
                bail!(
                    "fuselock testfs did not mount {} within 10 s",
                    escape::path(&mount.mountpoint)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(mount)
    }
}

impl Drop for DemoMount {
    fn drop(&mut self) {
        // The server unmounts on SIGTERM.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.server.id() as i32, libc::SIGTERM) };
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// One `fuselock load` per kind of write, as argv (no shell).
fn load_commands(exe: &Path, mount: &Path, writes: u64) -> Vec<Command> {
    [
        ("overwrite", "overwrite", 4),
        ("buffered", "buffered", 2),
        ("append.log", "append", 1),
        ("grow", "past-eof", 2),
    ]
    .into_iter()
    .map(|(file, kind, threads)| {
        let mut c = Command::new(exe);
        c.arg("load")
            .arg(mount.join(file))
            .args(["--kind", kind, "--writes"])
            .arg(writes.to_string())
            .args(["--threads", &threads.to_string()])
            .stdout(Stdio::null());
        c
    })
    .collect()
}

pub async fn run(args: DemoArgs) -> Result<i32> {
    if args.keeper {
        return keep(&args);
    }
    let mut keeper = Keeper::start(!args.no_parallel, args.writes)?;
    let exe = std::env::current_exe().context("finding the fuselock executable")?;
    let n = args.writes;
    // A demo shows everything, lock waits included (opt-in elsewhere for
    // their host-wide cost, which a throwaway VM does not mind).
    let mut probes = args.probes;
    probes.contention = true;
    if args.top {
        let code = run_top(probes, &mut keeper)?;
        keeper.finish()?;
        return Ok(code);
    }
    let mut session = Session::start(&probes)?;
    eprintln!("demo: {n} writes of each kind (O_DIRECT overwrite, buffered, append, past EOF) from 9 threads\n");
    let mut loads = Vec::new();
    for cmd in load_commands(&exe, &keeper.mountpoint, n) {
        loads.push(
            tokio::process::Command::from(cmd)
                .spawn()
                .context("starting fuselock load")?,
        );
    }
    let mut failed = 0;
    for load in &mut loads {
        if !load
            .wait()
            .await
            .context("waiting for fuselock load")?
            .success()
        {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} of the demo's {} loads failed", loads.len());
    }
    let snap = session.collector.snapshot(true)?;
    table::write_table(&mut std::io::stdout(), &snap).context("writing the table")?;
    println!();
    eprintln!(
        "demo: fuselock verify --exercise {}\n",
        escape::path(&keeper.mountpoint)
    );
    let target = exercise::check_target(&keeper.mountpoint)?;
    let outcome = verify::decide_on(
        &mut session,
        Watch::Exercise {
            target,
            progress: false,
        },
    )
    .await?;
    // The one attach and the writes are done: nothing more needs a
    // capability or uid 0 (the keeper cleans up). The exercise's threads
    // drop too.
    crate::kernel::privileges::drop_to_bpf_only()?;
    // The verdict is the demo's output, not its status: the demo succeeded.
    outcome.print(crate::wire::verdict::VerdictFormat::Text)?;
    drop(session);
    keeper.finish()?;
    Ok(0)
}

/// The keeper's side of the demo's mount: a child holding uid 0 without
/// capabilities. Requests go down its stdin, one per line (`start`, `stop`);
/// the end of its stdin tells it to stop everything and clean up.
struct Keeper {
    child: Child,
    requests: Option<ChildStdin>,
    replies: std::io::BufReader<ChildStdout>,
    mountpoint: PathBuf,
}

/// What the keeper prints once mounted, before the private directory.
const MOUNTED: &[u8] = b"mounted ";

impl Keeper {
    fn start(parallel: bool, writes: u64) -> Result<Keeper> {
        use std::os::unix::process::CommandExt as _;
        let exe = std::env::current_exe().context("finding the fuselock executable")?;
        let mut cmd = Command::new(exe);
        cmd.args(["demo", "--keeper", "--writes", &writes.to_string()]);
        if !parallel {
            cmd.arg("--no-parallel");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Its own process group: a Ctrl-C for the demo is not for the
            // keeper, which cleans up once the demo has gone.
            .process_group(0)
            .spawn()
            .context("starting the demo's mount keeper")?;
        let (Some(requests), Some(replies)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("the demo's mount keeper has no pipes");
        };
        let mut keeper = Keeper {
            child,
            requests: Some(requests),
            replies: std::io::BufReader::new(replies),
            mountpoint: PathBuf::new(),
        };
        let line = keeper.reply()?;
        let Some(base) = line.strip_prefix(MOUNTED) else {
            let status = keeper.child.wait()?;
            bail!(
                "the demo's mount keeper exited ({status}) before mounting; see its message above"
            );
        };
        keeper.mountpoint = PathBuf::from(OsString::from_vec(base.to_vec())).join("mnt");
        eprintln!(
            "demo: test file system mounted at {}",
            escape::path(&keeper.mountpoint)
        );
        Ok(keeper)
    }

    /// The keeper's next line, without its newline (empty at its end).
    fn reply(&mut self) -> Result<Vec<u8>> {
        let mut line = Vec::new();
        self.replies
            .read_until(b'\n', &mut line)
            .context("reading from the demo's mount keeper")?;
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        Ok(line)
    }

    fn request(&mut self, what: &str) -> Result<()> {
        let pipe = self
            .requests
            .as_mut()
            .context("the demo's mount keeper was told to finish")?;
        writeln!(pipe, "{what}")
            .and_then(|()| pipe.flush())
            .with_context(|| format!("asking the demo's mount keeper to {what}"))
    }

    /// Starts the `--top` workload in the keeper.
    fn start_workload(&mut self) -> Result<()> {
        self.request("start")
    }

    /// Stops the workload, once every load it runs has exited.
    fn stop_workload(&mut self) -> Result<()> {
        self.request("stop")?;
        match self.reply()?.as_slice() {
            b"stopped" => Ok(()),
            other => bail!(
                "the demo's mount keeper answered {:?} to stop",
                String::from_utf8_lossy(other)
            ),
        }
    }

    /// Has the keeper unmount and remove its directory, and waits for it.
    fn finish(mut self) -> Result<()> {
        drop(self.requests.take());
        let status = self
            .child
            .wait()
            .context("waiting for the demo's mount keeper")?;
        if !status.success() {
            bail!("the demo's mount keeper failed to clean up ({status}); see its message above");
        }
        Ok(())
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        // An early return: the keeper still cleans up at the end of stdin.
        if self.requests.take().is_some() {
            let _ = self.child.wait();
        }
    }
}

/// `fuselock demo --keeper`: mounts, says where, drops every capability
/// (keeping uid 0, which the mount admits alone), then serves the demo's
/// requests until its stdin ends, and cleans up.
fn keep(args: &DemoArgs) -> Result<i32> {
    let mount = DemoMount::start(!args.no_parallel)?;
    let exe = std::env::current_exe().context("finding the fuselock executable")?;
    let base = mount.base.as_os_str().as_bytes();
    if base.contains(&b'\n') {
        bail!("the temporary directory's path contains a newline");
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&[MOUNTED, base, b"\n"].concat())
        .and_then(|()| out.flush())
        .context("telling the demo where the mount is")?;
    crate::kernel::privileges::drop_capabilities_keeping_uid()?;
    let mut workload = None;
    for line in std::io::stdin().lock().lines() {
        match line.context("reading the demo's requests")?.as_str() {
            "start" => {
                workload
                    .get_or_insert_with(|| Workload::start(&exe, &mount.mountpoint, args.writes));
            }
            "stop" => {
                // Dropping it stops the loads and waits for them.
                workload = None;
                writeln!(out, "stopped")
                    .and_then(|()| out.flush())
                    .context("answering the demo")?;
            }
            other => bail!("the demo's mount keeper got an unknown request {other:?}"),
        }
    }
    drop(workload);
    drop(mount);
    Ok(0)
}

/// The demo workload in a loop on a thread of its own, until dropped; the
/// loads running then are stopped and waited for.
struct Workload {
    stop: Arc<AtomicBool>,
    running: Arc<Mutex<Vec<Child>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Workload {
    fn start(exe: &Path, mount: &Path, writes: u64) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let running: Arc<Mutex<Vec<Child>>> = Arc::default();
        let thread = std::thread::spawn({
            let (stop, running) = (Arc::clone(&stop), Arc::clone(&running));
            let (exe, mount) = (exe.to_path_buf(), mount.to_path_buf());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    {
                        let mut running = running.lock().unwrap_or_else(|p| p.into_inner());
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        for mut cmd in load_commands(&exe, &mount, writes) {
                            match cmd.stderr(Stdio::null()).spawn() {
                                Ok(child) => running.push(child),
                                Err(e) => log::warn!("starting a demo load: {e}"),
                            }
                        }
                    }
                    // Wait for this round without holding the lock long.
                    loop {
                        let mut running = running.lock().unwrap_or_else(|p| p.into_inner());
                        running.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
                        if running.is_empty() || stop.load(Ordering::Relaxed) {
                            break;
                        }
                        drop(running);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        });
        Workload {
            stop,
            running,
            thread: Some(thread),
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for child in running.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `demo --top`: `top` on the mount, the keeper's workload running from
/// when the probes are attached (and privileges dropped) until just before
/// they detach.
fn run_top(probes: ProbeArgs, keeper: &mut Keeper) -> Result<i32> {
    let code = crate::commands::top::run_with(
        crate::cli::TopArgs {
            probes,
            interval: Duration::from_secs(1),
            replay: None,
        },
        move || {
            keeper.start_workload()?;
            Ok(Running(keeper))
        },
    )?;
    Ok(code)
}

/// The keeper's workload, stopped on drop.
struct Running<'a>(&'a mut Keeper);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.stop_workload() {
            log::warn!("{e:#}");
        }
    }
}

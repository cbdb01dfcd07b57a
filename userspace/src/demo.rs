//! `fuselock demo`: everything in one command — a passthrough mount of the
//! built-in test filesystem over a temporary directory, a mixed workload
//! (several threads, every reason), the counts, and the verdict; all cleaned
//! up on exit.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    cli::{ProbeArgs, StatArgs, VerifyArgs},
    stat, verify,
};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub probes: ProbeArgs,
    /// Mount without asking for FOPEN_PARALLEL_DIRECT_WRITES.
    #[arg(long)]
    pub no_parallel: bool,
    /// Open `top` on the mount while the workload repeats, instead of
    /// printing counts and a verdict (q quits and cleans up).
    #[arg(long)]
    pub top: bool,
    /// Writes per kind (overwrite, buffered, append, past-eof).
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub writes: u64,
}

/// The test file system, unmounted and removed on drop.
struct DemoMount {
    server: Child,
    base: PathBuf,
    mountpoint: PathBuf,
}

fn is_mounted(mountpoint: &Path) -> bool {
    let needle = format!(" {} ", mountpoint.display());
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| m.contains(&needle))
}

impl DemoMount {
    fn start(parallel: bool) -> Result<DemoMount> {
        let base = std::env::temp_dir().join(format!("fuselock-demo-{}", std::process::id()));
        let backing = base.join("backing");
        let mountpoint = base.join("mnt");
        for dir in [&backing, &mountpoint] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
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
                    mount.mountpoint.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "demo: test file system mounted at {}",
            mount.mountpoint.display()
        );
        mount.mountpoint = mount.mountpoint.canonicalize()?;
        Ok(mount)
    }
}

impl Drop for DemoMount {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.server.id() as i32, libc::SIGTERM) };
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

pub async fn run(args: DemoArgs) -> Result<i32> {
    let mount = DemoMount::start(!args.no_parallel)?;
    let exe = std::env::current_exe()?.display().to_string();
    let m = mount.mountpoint.display().to_string();
    let n = args.writes;
    // Four files, one per kind, run together from several threads.
    let script = format!(
        "{exe} load {m}/overwrite --kind overwrite --writes {n} --threads 4 >/dev/null & \
         {exe} load {m}/buffered --kind buffered --writes {n} --threads 2 >/dev/null & \
         {exe} load {m}/append.log --kind append --writes {n} >/dev/null & \
         {exe} load {m}/grow --kind past-eof --writes {n} --threads 2 >/dev/null & wait"
    );
    // A demo shows everything, lock waits included (opt-in elsewhere for
    // their host-wide cost, which a throwaway VM does not mind).
    let mut args = args;
    args.probes.contention = true;
    if args.top {
        return run_top(args, &script, mount);
    }
    eprintln!("demo: {n} writes of each kind (O_DIRECT overwrite, buffered, append, past EOF) under `fuselock stat`\n");
    let code = stat::run(StatArgs {
        probes: args.probes.clone(),
        json: false,
        every_entry: false,
        interval: Duration::from_secs(1),
        command: ["sh", "-c", &script].map(Into::into).to_vec(),
    })
    .await?;
    if code != 0 {
        bail!("the demo workload failed (exit {code})");
    }
    let file = format!("{m}/overwrite");
    eprintln!("demo: fuselock verify --exercise {file}\n");
    // The verdict is the demo's output, not its status: the demo succeeded.
    verify::run(VerifyArgs {
        probes: args.probes,
        exercise: Some(file.into()),
        duration: Duration::from_secs(10),
        json: false,
        progress: false,
        command: vec![],
    })
    .await?;
    drop(mount);
    Ok(0)
}

/// The demo workload in a loop, in its own process group: stopped (and
/// waited for) when dropped.
struct Workload(std::process::Child);

impl Workload {
    fn start(script: &str) -> Result<Workload> {
        use std::os::unix::process::CommandExt as _;
        Command::new("sh")
            .args(["-c", &format!("while :; do {script}; done")])
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Workload)
            .context("starting the demo workload")
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group we created.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// `demo --top`: `top` on the mount, the workload running from when the
/// probes are attached until just before they detach.
fn run_top(args: DemoArgs, script: &str, mount: DemoMount) -> Result<i32> {
    let result = crate::top::run_with(
        crate::cli::TopArgs {
            probes: args.probes,
            interval: Duration::from_secs(1),
            replay: None,
        },
        || Workload::start(script),
    );
    drop(mount);
    result
}

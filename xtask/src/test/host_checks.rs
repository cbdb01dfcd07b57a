//! The host checks beside the VM runs.
//!
//! When every kernel is already cached, nothing else uses the host's second
//! core while a guest runs its mostly single-threaded tests, and the host
//! checks (fmt, clippy, host tests, the install path, fuzzing) are a fifth
//! of the run. So they run as a child `cargo xtask test --no-vm`, at the
//! lowest CPU priority so that the guests keep their timing, with its
//! output in a log printed when it ends: interleaved with a guest's console
//! it could be read by neither.

use std::{
    fs::{self, File},
    io::Read as _,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use super::timings::Timings;
use crate::{cache, setup};

pub(super) const NAME: &str = "host checks: fmt, clippy, host tests, install path, fuzzing";

pub(super) struct HostChecks {
    /// The child's exit and its seconds, sent when it exits (so that the
    /// timing table has its own time, not the next poll's).
    ended: mpsc::Receiver<std::io::Result<(ExitStatus, f64)>>,
    log: PathBuf,
}

impl HostChecks {
    /// Starts `cargo xtask test --no-vm` with the same fuzzing time.
    pub(super) fn start(fuzz_seconds: u64) -> Result<Self> {
        let dir = cache::workspace_root().join("target/xtask");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // The path as printed, without the workspace root's `xtask/..`.
        let dir = fs::canonicalize(&dir).unwrap_or(dir);
        let log = dir.join("host-checks.log");
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("opening {} twice", log.display()))?;
        let xtask = std::env::current_exe().context("finding the running xtask")?;
        let mut cmd = Command::new(xtask);
        cmd.args([
            "test",
            "--no-vm",
            "--fuzz-seconds",
            &fuzz_seconds.to_string(),
        ])
        .current_dir(cache::workspace_root())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
        setup::ends_with_its_thread(&mut cmd);
        // SAFETY: between fork and exec the closure calls only setpriority,
        // which is async-signal-safe, and allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                // Best effort: at normal priority the guests are only slower.
                libc::setpriority(libc::PRIO_PROCESS, 0, 19);
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        let (tx, ended) = mpsc::channel();
        thread::Builder::new()
            .name("host checks".to_owned())
            .spawn(move || {
                let status = child.wait();
                let _ = tx.send(status.map(|s| (s, started.elapsed().as_secs_f64())));
            })
            .context("starting the thread that waits for the host checks")?;
        eprintln!(
            "\n==> {NAME}: started beside the VM runs (cargo xtask test --no-vm; output in {})",
            log.display()
        );
        Ok(Self { ended, log })
    }

    /// Whether the checks are still running; once they end, their result,
    /// recorded in `timings`.
    pub(super) fn poll(&mut self, timings: &mut Timings) -> Result<bool> {
        match self.ended.try_recv() {
            Err(mpsc::TryRecvError::Empty) => Ok(true),
            Ok(ended) => self.record(ended, timings).map(|()| false),
            Err(mpsc::TryRecvError::Disconnected) => {
                bail!("the thread waiting for the host checks ended early")
            }
        }
    }

    /// Waits for the checks to end and records their result.
    pub(super) fn wait(self, timings: &mut Timings) -> Result<()> {
        eprintln!("\n==> waiting for the {NAME}");
        let ended = self
            .ended
            .recv()
            .context("the thread waiting for the host checks ended early")?;
        self.record(ended, timings)
    }

    fn record(
        &self,
        ended: std::io::Result<(ExitStatus, f64)>,
        timings: &mut Timings,
    ) -> Result<()> {
        let (status, secs) = ended.context("waiting for the host checks")?;
        timings.beside(NAME, secs, status.success());
        let mut log = String::new();
        File::open(&self.log)
            .and_then(|mut f| f.read_to_string(&mut log))
            .with_context(|| format!("reading {}", self.log.display()))?;
        if status.success() {
            // Their own timing table: the rest is in the log.
            eprint!("{}", own_table(&log));
            eprintln!("(their whole output: {})", self.log.display());
            return Ok(());
        }
        eprintln!("---- output of the host checks ----\n{log}---- end ----");
        bail!("the {NAME} failed ({status})")
    }
}

/// The timing table `cargo xtask test` ends its output with.
fn own_table(log: &str) -> &str {
    log.rfind("\nstep ")
        .map(|at| &log[at..])
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_childs_table_is_the_end_of_its_output() {
        let log = "cargo test\nstep in a test name\n\nstep  seconds  share\nclippy  70  50%\ntotal  140  (2.3 min)\n\nall test steps passed in 140s\n";
        assert_eq!(
            own_table(log),
            "\nstep  seconds  share\nclippy  70  50%\ntotal  140  (2.3 min)\n\nall test steps passed in 140s\n"
        );
        assert_eq!(own_table("no table"), "");
    }
}

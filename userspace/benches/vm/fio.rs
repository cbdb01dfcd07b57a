//! The `fio` section: the parallel-direct-writes series' own benchmark (fio
//! 4 KiB random O_DIRECT writes, 1/2/4/8 jobs on one shared file) on a
//! passthrough mount that asks for FOPEN_PARALLEL_DIRECT_WRITES, without
//! fuselock, with `fuselock stat` as it attaches by default, and with
//! `--contention`, in rotating order.
//!
//! Each run writes a fixed number of I/Os (not time-based), so fuselock's
//! write count for the file must equal the I/Os fio reports, exactly; a
//! mismatch fails the section. One `FIO_RESULT {json}` line per run is
//! printed for `cargo xtask bench`, which boots the unpatched and the
//! patched kernel and puts the two side by side.

use std::{
    fs::OpenOptions,
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use super::common::{fuselock, TestFs};

/// The file every job of a timed run writes, and the one warm-up runs write
/// (so they never show in the timed file's count).
const SHARED: &str = "fio-shared";
const WARM: &str = "fio-warm";
const BLOCK: u64 = 4096;
pub const JOBS: [u64; 4] = [1, 2, 4, 8];

/// What fio reported for one run.
struct FioRun {
    ios: u64,
    iops: f64,
}

/// `fuselock stat --json` attached for one run; the final snapshot is read
/// when it is stopped.
struct Attached {
    child: Child,
    lines: Option<JoinHandle<Vec<String>>>,
}

/// How a run watches fio: not at all, as fuselock attaches by default, or
/// also measuring lock waits (`--contention`), which give the series'
/// estimated gain and cost more.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Watch {
    None,
    Default,
    Contention,
}

impl Watch {
    const ALL: [Watch; 3] = [Watch::None, Watch::Default, Watch::Contention];

    fn name(self) -> &'static str {
        match self {
            Watch::None => "none",
            Watch::Default => "default",
            Watch::Contention => "contention",
        }
    }
}

impl Attached {
    fn start(contention: bool) -> Result<Attached> {
        let mut child = Command::new(fuselock())
            .args(["stat", "--json", "--interval", "3600"])
            .args(contention.then_some("--contention"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting fuselock stat")?;
        let stdout = child.stdout.take().context("fuselock stat's stdout")?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let lines = std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The first snapshot comes once the probes are attached.
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
                lines.push(line);
            }
            lines
        });
        let mut attached = Attached {
            child,
            lines: Some(lines),
        };
        if ready_rx.recv_timeout(Duration::from_secs(600)).is_err() {
            attached.stop_quietly();
            // Reaped: Drop must not signal that pid again.
            attached.lines = None;
            bail!("fuselock stat printed no snapshot within 600 s (did it fail to attach?)");
        }
        Ok(attached)
    }

    fn stop_quietly(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }

    /// Stops fuselock (SIGINT: it prints a final snapshot of every entry)
    /// and returns what it counted for `name` on passthrough.
    fn finish(mut self, name: &str) -> Result<Counted> {
        self.stop_quietly();
        let lines = self
            .lines
            .take()
            .context("fuselock stat's output already read")?
            .join()
            .map_err(|_| anyhow::anyhow!("the thread reading fuselock stat panicked"))?;
        let last = lines.last().context("fuselock stat printed nothing")?;
        let snap: serde_json::Value =
            serde_json::from_str(last).context("fuselock stat's last line is not JSON")?;
        ensure!(
            snap["final"] == true,
            "fuselock stat's last line is not its final snapshot"
        );
        let entries = snap["entries"]
            .as_array()
            .context("final snapshot without entries")?;
        let mut c = Counted::default();
        let (mut wait_ns, mut latency_ns) = (0, 0);
        for e in entries
            .iter()
            .filter(|e| e["name"] == name && e["path"] == "passthrough")
        {
            let n = |k: &str| e[k].as_u64().with_context(|| format!("entry without {k}"));
            c.writes += n("writes")?;
            c.shared += n("shared")?;
            c.exclusive += n("exclusive")?;
            wait_ns += n("overwrites_exclusive_wait_ns")?;
            latency_ns += n("overwrites_exclusive_latency_ns")?;
        }
        c.wait_share = (latency_ns > 0).then(|| wait_ns as f64 / latency_ns as f64);
        Ok(c)
    }
}

/// What fuselock counted for the shared file in one run.
#[derive(Default)]
struct Counted {
    writes: u64,
    shared: u64,
    exclusive: u64,
    /// The share of the exclusive direct overwrites' time spent waiting
    /// for the lock (what `verify` turns into the series' estimated gain);
    /// `None` when none took it exclusive.
    wait_share: Option<f64>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        if self.lines.is_some() {
            self.stop_quietly();
        }
    }
}

/// fio as the series benchmarked it: 4 KiB random direct writes from
/// `jobs` jobs into one shared file, `total` I/Os split evenly.
fn fio(fs: &TestFs, name: &str, jobs: u64, total: u64, file_bytes: u64) -> Result<FioRun> {
    let out = format!("/tmp/fio-{name}-{jobs}.json");
    let per_job = total / jobs;
    let status = Command::new("fio")
        .args([
            "--name=fuselock",
            "--rw=randwrite",
            "--bs=4k",
            "--direct=1",
            "--ioengine=psync",
            // The file exists at its full size: no layout writes, no
            // fallocate, so the only writes to it are the measured ones.
            "--fallocate=none",
            "--output-format=json",
        ])
        .arg(format!("--filename={}", fs.path(name)))
        .arg(format!("--numjobs={jobs}"))
        .arg(format!("--size={file_bytes}"))
        .arg(format!("--io_size={}", per_job * BLOCK))
        .arg(format!("--output={out}"))
        .stdout(Stdio::null())
        .status()
        .context("running fio")?;
    let text = std::fs::read_to_string(&out).with_context(|| format!("reading {out}"))?;
    ensure!(status.success(), "fio failed ({status}): {text}");
    let report: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("fio's JSON in {out}"))?;
    let mut ios = 0;
    let mut longest_ms = 0;
    for job in report["jobs"].as_array().context("fio JSON without jobs")? {
        ensure!(
            job["error"] == 0,
            "a fio job reported error {}",
            job["error"]
        );
        ios += job["write"]["total_ios"]
            .as_u64()
            .context("fio job without write.total_ios")?;
        longest_ms = longest_ms.max(
            job["write"]["runtime"]
                .as_u64()
                .context("fio job without write.runtime")?,
        );
    }
    ensure!(
        ios == per_job * jobs,
        "fio did {ios} writes, asked for {}",
        per_job * jobs
    );
    ensure!(longest_ms > 0, "fio reported a zero runtime");
    // As fio's group report: all jobs' I/Os over the longest job's runtime.
    Ok(FioRun {
        ios,
        iops: ios as f64 / (longest_ms as f64 / 1e3),
    })
}

/// Runs the section; `total` I/Os per run (a multiple of 8), `rounds`
/// rounds of 1/2/4/8 jobs, each without fuselock, with it, and with `--contention`.
pub fn section(rounds: u64, total: u64) -> Result<()> {
    ensure!(
        total > 0 && total.is_multiple_of(8),
        "FUSELOCK_BENCH_FIO_IOS must be a positive multiple of 8"
    );
    let started = Instant::now();
    let fs = TestFs::mount(&["--parallel"]);
    let file_bytes = total * BLOCK;
    for name in [SHARED, WARM] {
        // A full-size file made by truncate, before fuselock attaches: every
        // write fio issues is then an overwrite within i_size.
        OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(fs.path(name))
            .and_then(|f| f.set_len(file_bytes))
            .with_context(|| format!("creating {}", fs.path(name)))?;
    }
    println!(
        "\nfio: randwrite 4 KiB O_DIRECT psync on one shared file (passthrough, --parallel), \
         {total} I/Os per run, {rounds} rounds, without fuselock, with it and with --contention, rotating"
    );
    println!(
        "{:>5}  {:>7}  {:>10}  {:>11}  {:>15}  {:>8}  {:>9}",
        "round", "numjobs", "fuselock", "IOPS", "fuselock writes", "shared", "exclusive"
    );
    let mut mismatches = Vec::new();
    for round in 0..rounds {
        for (i, &jobs) in JOBS.iter().enumerate() {
            // Rotate which configuration goes first, so drift within a
            // round falls on all alike.
            let mut order = Watch::ALL;
            order.rotate_left((round as usize + i) % Watch::ALL.len());
            for watch in order {
                let attached = match watch {
                    Watch::None => None,
                    Watch::Default => Some(Attached::start(false)?),
                    Watch::Contention => Some(Attached::start(true)?),
                };
                // Untimed, on another file: attaching patches kernel text and
                // TCG re-translates it; fio's start-up is paid here too.
                fio(&fs, WARM, jobs, total / 8, file_bytes)?;
                let run = fio(&fs, SHARED, jobs, total, file_bytes)?;
                let counted = match attached {
                    Some(a) => {
                        let counted = a.finish(SHARED)?;
                        if counted.writes != run.ios {
                            mismatches.push(format!(
                                "round {round}, {jobs} jobs: fio did {} writes, fuselock counted {}",
                                run.ios, counted.writes
                            ));
                        }
                        Some(counted)
                    }
                    None => None,
                };
                let writes = counted.as_ref().map(|c| c.writes);
                let shared = counted.as_ref().map(|c| c.shared);
                let exclusive = counted.as_ref().map(|c| c.exclusive);
                let wait_share = counted.as_ref().and_then(|c| c.wait_share);
                let show = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
                println!(
                    "{round:>5}  {jobs:>7}  {:>10}  {:>11.0}  {:>15}  {:>8}  {:>9}",
                    watch.name(),
                    run.iops,
                    show(writes),
                    show(shared),
                    show(exclusive)
                );
                println!(
                    "FIO_RESULT {}",
                    serde_json::json!({
                        "round": round,
                        "jobs": jobs,
                        "fuselock": watch != Watch::None,
                        "contention": watch == Watch::Contention,
                        "ios": run.ios,
                        "iops": run.iops,
                        "fuselock_writes": writes,
                        "shared": shared,
                        "exclusive": exclusive,
                        "wait_share": wait_share,
                    })
                );
            }
        }
    }
    println!(
        "fio: section took {:.0} s in the VM",
        started.elapsed().as_secs_f64()
    );
    drop(fs);
    if !mismatches.is_empty() {
        bail!(
            "fuselock's write count differs from fio's I/Os:\n  {}",
            mismatches.join("\n  ")
        );
    }
    println!("fio: fuselock counted exactly fio's I/Os in every attached run");
    Ok(())
}

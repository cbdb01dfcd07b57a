//! `cargo xtask bench`: fuselock's overhead, measured side by side in one
//! run inside the VM (TCG inflates absolute times, so read the ratios).
//!
//! 1. Passthrough O_DIRECT overwrites (1, 2, 4 threads) with no tracer, with
//!    `fuselock stat`, and with the equivalent bpftrace script; rounds are
//!    interleaved so drift hits every configuration alike, and medians kept.
//!    Then the kernel's own accounting of each tool's programs (bpf_stats:
//!    run count and run time), per write: exact, and not at the mercy of
//!    TCG's timing noise. The floor is empty programs on the same attach
//!    points, of the kind fuselock attaches there, as many per write.
//! 2. An unrelated lock-heavy workload (create/rename/unlink on tmpfs from
//!    two threads in one directory, mmap churn) with and without fuselock:
//!    what the whole host pays, as paired rounds and as the run count and
//!    run time of fuselock's programs during it.
//! 3. fuselock's own CPU and RSS per refresh with 10,000 live inodes, idle
//!    and with one file busy, for `stat --json` (deltas and every entry) and
//!    `export`.
//!
//! `fio`: the series' own fio benchmark, with and without fuselock (`vm/fio.rs`).

#[path = "../tests/common/mod.rs"]
mod common;
// Not `benches/fio.rs`: cargo would take that for a bench target of its own.
#[path = "vm/fio.rs"]
mod fio;
#[path = "vm/memory.rs"]
mod memory;
#[path = "vm/per_write.rs"]
mod per_write;
#[path = "vm/unrelated.rs"]
mod unrelated;
#[path = "vm/userspace.rs"]
mod userspace;

use per_write::{ablation, bpf_time_per_write, per_write};
use unrelated::unrelated;
use userspace::userspace_cost;

use std::{
    fs::OpenOptions,
    io::{BufRead as _, BufReader},
    os::unix::fs::{FileExt as _, OpenOptionsExt as _},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{
    churn, fuselock, map_memlock, prog_stats, prog_stats_each, running, BpfStats, TestFs,
};

const BPFTRACE_SCRIPT: &str = include_str!("fuselock-equivalent.bt");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tracer {
    None,
    /// Empty programs where fuselock attaches, of the kind it attaches
    /// there: the cost of attaching at all.
    Floor,
    Fuselock,
    Bpftrace,
}

impl Tracer {
    fn name(self) -> &'static str {
        match self {
            Tracer::None => "no tracer",
            Tracer::Floor => "floor",
            Tracer::Fuselock => "fuselock",
            Tracer::Bpftrace => "bpftrace",
        }
    }
}

/// A tracer running in the background; stopped with SIGINT on drop.
struct Running {
    tracer: Tracer,
    child: Child,
    last_line: Arc<Mutex<String>>,
    /// Bytes it has written to stdout.
    out_bytes: Arc<AtomicU64>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let pid = self.child.id();
        step(format!("stopping {:?} (pid {pid})", self.tracer));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // bpftrace 0.17 sometimes sleeps on in epoll_wait after a SIGINT
        // (seen with the floor's script, which never prints); closing its
        // fds detaches its programs all the same. fuselock must not.
        if self.tracer == Tracer::Fuselock {
            eprintln!("bench: BUG: fuselock (pid {pid}) did not exit within 20 s of SIGINT");
            FAILED.store(true, Ordering::Relaxed);
        } else {
            eprintln!(
                "bench: {:?} (pid {pid}) ignored SIGINT for 20 s; killed",
                self.tracer
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Set when fuselock misbehaved in a way the figures cannot show: the
/// benchmark then ends with a failure.
static FAILED: AtomicBool = AtomicBool::new(false);

/// What the benchmark is doing and since when, for [`watchdog`].
static STEP: Mutex<Option<(String, Instant)>> = Mutex::new(None);

fn step(what: impl Into<String>) {
    *STEP.lock().expect("step lock") = Some((what.into(), Instant::now()));
}

/// A step stuck for `limit` ends the benchmark with what every task in the
/// guest is waiting in (and the kernel's list of blocked tasks on the
/// console), rather than leaving an idle VM until the caller's time runs out.
fn watchdog(limit: Duration) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(5));
        let stuck = STEP
            .lock()
            .expect("step lock")
            .as_ref()
            .filter(|(_, since)| since.elapsed() > limit)
            .map(|(what, _)| what.clone());
        let Some(what) = stuck else { continue };
        eprintln!("bench: no progress for {limit:?} while {what}; the guest's tasks:");
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let dir = entry.path();
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            let stat = read("stat");
            let Some((_, after_comm)) = stat.rsplit_once(") ") else {
                continue;
            };
            eprintln!(
                "bench:   {} {} state {} wchan {} | {}",
                entry.file_name().to_string_lossy(),
                read("comm").trim(),
                after_comm.chars().next().unwrap_or('?'),
                read("wchan"),
                read("cmdline").replace('\0', " ").trim()
            );
        }
        let _ = std::fs::write("/proc/sysrq-trigger", "w");
        std::thread::sleep(Duration::from_secs(2));
        std::process::exit(1);
    });
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts a tracer and waits until its probes are attached.
fn start(tracer: Tracer, interval: &str) -> Option<Running> {
    start_with(tracer, interval, &[])
}

fn start_with(tracer: Tracer, interval: &str, extra: &[&str]) -> Option<Running> {
    step(format!("starting {tracer:?}"));
    let mut cmd = match tracer {
        Tracer::None => return None,
        Tracer::Fuselock => {
            let mut c = Command::new(fuselock());
            c.args(["stat", "--json", "--interval", interval]);
            c.args(extra);
            c
        }
        Tracer::Floor | Tracer::Bpftrace => {
            let (path, script) = if tracer == Tracer::Floor {
                ("/tmp/fuselock-floor.bt", floor_script())
            } else {
                ("/tmp/fuselock-equivalent.bt", BPFTRACE_SCRIPT.to_owned())
            };
            std::fs::write(path, script).expect("write script");
            let mut c = Command::new("bpftrace");
            // Line-buffered: its "Attaching N probes" must reach us through a pipe.
            c.args(["-B", "line", path]);
            c
        }
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tracer");
    let stdout = child.stdout.take().expect("stdout");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let last_line = Arc::new(Mutex::new(String::new()));
    let out_bytes = Arc::new(AtomicU64::new(0));
    let (last, bytes) = (last_line.clone(), out_bytes.clone());
    std::thread::spawn(move || {
        // fuselock prints its first snapshot once attached; bpftrace says
        // "Attaching N probes..." before it attaches, so wait a moment more.
        let mut ready = Some(ready_tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            bytes.fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
            *last.lock().expect("lock") = line;
            // Only now: whoever waits may read the first line.
            if let Some(tx) = ready.take() {
                let _ = tx.send(());
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(600))
        .expect("tracer did not start");
    if matches!(tracer, Tracer::Floor | Tracer::Bpftrace) {
        std::thread::sleep(Duration::from_secs(3));
    }
    Some(Running {
        tracer,
        child,
        last_line,
        out_bytes,
    })
}

/// The probe mode fuselock picks here by default, from its first snapshot.
fn fuselock_probe_mode() -> String {
    let running = start(Tracer::Fuselock, "3600").expect("fuselock");
    let first = running.last_line.lock().expect("lock").clone();
    let snap: serde_json::Value = serde_json::from_str(&first).expect("a JSON snapshot");
    snap["source"]["probe_mode"]
        .as_str()
        .expect("source.probe_mode")
        .to_owned()
}

/// Empty programs on the attach points fuselock uses per passthrough write
/// (entry, the probe inside the lock, exit), of the kind it uses here.
fn floor_script() -> String {
    static MODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let (entry, exit) = match MODE.get_or_init(fuselock_probe_mode).as_str() {
        "kprobe" => ("kprobe", "kretprobe"),
        _ => ("kfunc", "kretfunc"),
    };
    format!(
        "{entry}:fuse_file_write_iter {{}}\n\
         {entry}:backing_file_write_iter {{}}\n\
         {exit}:fuse_file_write_iter {{}}\n"
    )
}

/// Runs `fuselock load` and returns writes per second.
fn load(fs: &TestFs, threads: u32, writes: u64) -> f64 {
    step(format!("writing {writes} times from {threads} threads"));
    let out = Command::new(fuselock())
        .args(["load", &fs.path("bench"), "--kind", "overwrite", "--json"])
        .args([
            "--threads",
            &threads.to_string(),
            "--writes",
            &writes.to_string(),
        ])
        .output()
        .expect("run load");
    assert!(
        out.status.success(),
        "load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("load json");
    assert_eq!(v["errors"], 0);
    writes as f64 / v["elapsed_s"].as_f64().expect("elapsed")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let writes = env_u64("FUSELOCK_BENCH_WRITES", 20_000);
    let rounds = env_u64("FUSELOCK_BENCH_ROUNDS", 3) as usize;
    let inodes = env_u64("FUSELOCK_BENCH_INODES", 10_000);
    let names = std::env::var("FUSELOCK_BENCH_SECTIONS").unwrap_or_else(|_| "1,2,3".into());
    let sections: Vec<&str> = names.split(',').collect();
    let has = |s: &str| sections.contains(&s);
    if has("mem") {
        if let Err(e) = memory::section(
            env_u64("FUSELOCK_BENCH_MEM_FILES", 10_000),
            env_u64("FUSELOCK_BENCH_MEM_EXTRA", 1_000),
        ) {
            eprintln!("bench: memory section failed: {e:#}");
            std::process::exit(1);
        }
    }
    if has("fio") {
        if let Err(e) = fio::section(rounds as u64, env_u64("FUSELOCK_BENCH_FIO_IOS", 65_536)) {
            eprintln!("bench: fio section failed: {e:#}");
            std::process::exit(1);
        }
    }
    if !["1", "1b", "ablation", "2", "3"].into_iter().any(has) {
        println!("\nbench: done");
        return;
    }
    // Sections 1-3 name their steps (starting, writing, stopping); none
    // takes minutes.
    watchdog(Duration::from_secs(420));
    let have_bpftrace = Command::new("bpftrace")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let tracers: Vec<Tracer> = if have_bpftrace {
        vec![
            Tracer::None,
            Tracer::Floor,
            Tracer::Fuselock,
            Tracer::Bpftrace,
        ]
    } else {
        eprintln!("bench: bpftrace not available in the VM; comparing with no tracer only");
        vec![Tracer::None, Tracer::Fuselock]
    };
    let fs = TestFs::mount(&[]);
    if has("1") {
        per_write(&fs, &tracers, writes, rounds);
    }
    if has("1b") && !has("1") {
        bpf_time_per_write(&fs, &tracers, writes);
    }
    if has("ablation") {
        ablation(&fs, writes, rounds);
    }
    if has("2") {
        unrelated(env_u64("FUSELOCK_BENCH_CHURN", 5_000));
    }
    if has("3") {
        userspace_cost(&fs, inodes);
    }
    println!("\nbench: done");
    if FAILED.load(Ordering::Relaxed) {
        std::process::exit(1);
    }
}

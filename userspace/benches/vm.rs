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

fn spawn_exporter() -> Running {
    let child = Command::new(fuselock())
        .args(["export", "--listen", "127.0.0.1:9948"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start exporter");
    for _ in 0..600 {
        if std::net::TcpStream::connect("127.0.0.1:9948").is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Running {
        tracer: Tracer::Fuselock,
        child,
        last_line: Arc::new(Mutex::new(String::new())),
        out_bytes: Arc::new(AtomicU64::new(0)),
    }
}

/// One HTTP/1.0 GET of /metrics; the body size.
fn scrape(addr: &str) -> usize {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .expect("request");
    let mut body = Vec::new();
    s.read_to_end(&mut body).expect("response");
    body.len()
}

/// utime + stime of `pid` in seconds, and its RSS in KiB.
fn cpu_and_rss(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split(' ')
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (ticks as f64 / hz, rss)
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

/// Section 1, per-write overhead: throughput, then the programs' own run
/// time.
fn per_write(fs: &TestFs, tracers: &[Tracer], writes: u64, rounds: usize) {
    println!("\n1. passthrough O_DIRECT overwrites, {writes} per run, median of {rounds} interleaved rounds");
    println!(
        "{:>7}  {:>10}  {:>14}  {:>12}  {:>16}",
        "threads", "tracer", "writes/s", "vs none", "mean latency us"
    );
    for threads in [1u32, 2, 4] {
        let mut results: Vec<(Tracer, Vec<f64>)> =
            tracers.iter().map(|t| (*t, Vec::new())).collect();
        let _ = load(fs, threads, writes / 10); // warm-up
        for _ in 0..rounds {
            for (tracer, samples) in &mut results {
                let running = start(*tracer, "3600");
                samples.push(load(fs, threads, writes));
                drop(running);
            }
        }
        let base = median(results[0].1.clone());
        for (tracer, samples) in results {
            let rate = median(samples);
            println!(
                "{threads:>7}  {:>10}  {rate:>14.0}  {:>11.3}x  {:>16.1}",
                tracer.name(),
                rate / base,
                f64::from(threads) * 1e6 / rate
            );
        }
    }
    bpf_time_per_write(fs, tracers, writes);
}

/// Section 1b: the programs' own run time per write (bpf_stats), next to
/// empty programs on the same attach points.
fn bpf_time_per_write(fs: &TestFs, tracers: &[Tracer], writes: u64) {
    println!(
        "\n1b. BPF programs per write, from the kernel's bpf_stats (run_cnt, run_time_ns), \
         {writes} writes; the floor is empty programs on the same attach points"
    );
    println!(
        "{:>7}  {:>10}  {:>10}  {:>12}  {:>12}  {:>9}",
        "threads", "tracer", "runs/write", "ns/write", "above floor", "x floor"
    );
    for threads in [1u32, 2, 4] {
        let mut floor = None;
        for tracer in tracers.iter().filter(|t| **t != Tracer::None) {
            let running = start(*tracer, "3600").expect("tracer");
            let pid = running.child.id();
            let stats = BpfStats::enable();
            let before = prog_stats_each(pid);
            load(fs, threads, writes);
            let after = prog_stats_each(pid);
            let memlock = map_memlock(pid);
            drop(stats);
            drop(running);
            // Per program, what each run of the writes cost: where the time goes.
            let each: Vec<(String, u64, u64)> = after
                .iter()
                .map(|(name, runs, ns)| {
                    let (r0, n0) = before
                        .iter()
                        .find(|(n, _, _)| n == name)
                        .map_or((0, 0), |(_, r, n)| (*r, *n));
                    (name.clone(), runs - r0, ns - n0)
                })
                .filter(|(_, runs, _)| *runs > 0)
                .collect();
            let (runs0, ns0) = before.iter().fold((0, 0), |(r, n), p| (r + p.1, n + p.2));
            let (runs1, ns1) = after.iter().fold((0, 0), |(r, n), p| (r + p.1, n + p.2));
            let per_write = (ns1 - ns0) as f64 / writes as f64;
            if *tracer == Tracer::Floor {
                floor = Some(per_write);
            }
            let (above, times) = floor.map_or(("-".to_owned(), "-".to_owned()), |f| {
                (
                    format!("{:.0}", per_write - f),
                    format!("{:.2}x", per_write / f),
                )
            });
            println!(
                "{threads:>7}  {:>10}  {:>10.2}  {per_write:>12.0}  {above:>12}  {times:>9}",
                tracer.name(),
                (runs1 - runs0) as f64 / writes as f64,
            );
            if *tracer == Tracer::Fuselock {
                if threads == 1 {
                    let (bytes, maps) = memlock;
                    println!(
                        "{:>7}  kernel memory of its {maps} maps: {:.1} MiB on {} CPUs",
                        "",
                        bytes as f64 / f64::from(1 << 20),
                        std::thread::available_parallelism().map_or(0, |n| n.get())
                    );
                }
                for (name, runs, ns) in each {
                    println!(
                        "{:>7}  {:>22}  {:>10.2}  {:>12.0}",
                        "",
                        name,
                        runs as f64 / writes as f64,
                        ns as f64 / writes as f64
                    );
                }
            }
        }
    }
}

/// BPF run time per write of the programs of `tracer` started with `extra`
/// arguments, over `writes` O_DIRECT overwrites from `threads` threads.
fn bpf_ns_per_write(fs: &TestFs, tracer: Tracer, extra: &[&str], threads: u32, writes: u64) -> f64 {
    let running = start_with(tracer, "3600", extra).expect("tracer");
    let pid = running.child.id();
    let stats = BpfStats::enable();
    let (_, ns0) = prog_stats(pid);
    load(fs, threads, writes);
    let (_, ns1) = prog_stats(pid);
    drop(stats);
    drop(running);
    (ns1 - ns0) as f64 / writes as f64
}

/// Section `ablation`: what each part of a write's accounting costs, as
/// BPF run time per write with that part switched off (`--ablate`, which
/// the verifier then prunes), next to the whole and the floor.
fn ablation(fs: &TestFs, writes: u64, rounds: usize) {
    const PARTS: [&str; 5] = [
        "device-totals",
        "writers",
        "histograms",
        "lock-timing",
        "file-stats",
    ];
    println!(
        "\nablation. BPF ns per write (bpf_stats) with one part of the accounting switched off, \
         {writes} O_DIRECT overwrites, median of {rounds} rounds"
    );
    let all = PARTS.join(",");
    let mut configs: Vec<(String, Tracer, Vec<&str>)> = vec![
        ("floor".into(), Tracer::Floor, vec![]),
        ("fuselock".into(), Tracer::Fuselock, vec![]),
    ];
    for part in PARTS {
        configs.push((
            format!("without {part}"),
            Tracer::Fuselock,
            vec!["--ablate", part],
        ));
    }
    configs.push((
        "without all five".into(),
        Tracer::Fuselock,
        vec!["--ablate", all.as_str()],
    ));
    println!(
        "{:>7}  {:>26}  {:>10}  {:>12}  {:>9}",
        "threads", "configuration", "ns/write", "vs whole", "x floor"
    );
    for threads in [1u32, 2, 4] {
        let medians: Vec<f64> = configs
            .iter()
            .map(|(_, tracer, extra)| {
                median(
                    (0..rounds)
                        .map(|_| bpf_ns_per_write(fs, *tracer, extra, threads, writes))
                        .collect(),
                )
            })
            .collect();
        let (floor, whole) = (medians[0], medians[1]);
        for ((name, _, _), ns) in configs.iter().zip(&medians) {
            println!(
                "{threads:>7}  {name:>26}  {ns:>10.0}  {:>+12.0}  {:>8.2}x",
                ns - whole,
                ns / floor
            );
        }
    }
}

/// Section 2: the host-wide cost on unrelated, lock-heavy work.
fn unrelated(iterations: u64) {
    const PAIRS: usize = 9;
    const THREADS: u64 = 2;
    println!("\n2. unrelated lock-heavy workload ({THREADS} threads x {iterations} x create/rename/unlink in one tmpfs directory + 64 KiB mmap churn), {PAIRS} rounds");
    let _ = churn(THREADS, iterations / 5);
    // Per round: no tracer, fuselock, fuselock --contention, in an
    // order that rotates so drift within a round cancels out.
    let configs: [(&str, Option<&[&str]>); 3] = [
        ("no tracer", None),
        ("fuselock", Some(&[])),
        ("fuselock --contention", Some(&["--contention"])),
    ];
    let mut ratios = [Vec::new(), Vec::new()];
    for round in 0..PAIRS {
        // Attaching and detaching patch kernel text, and TCG then throws
        // away its translated code: let that settle and warm up untimed
        // before each timed run, or the first run after it pays for TCG.
        let settle = || {
            std::thread::sleep(Duration::from_secs(2));
            let _ = churn(THREADS, iterations / 4);
        };
        let mut times = [0.0f64; 3];
        for k in 0..3 {
            let c = (round + k) % 3;
            let running = configs[c]
                .1
                .map(|extra| start_with(Tracer::Fuselock, "3600", extra));
            settle();
            times[c] = churn(THREADS, iterations).as_secs_f64();
            drop(running);
        }
        ratios[0].push(times[1] / times[0]);
        ratios[1].push(times[2] / times[0]);
    }
    for (name, r) in [configs[1].0, configs[2].0].iter().zip(ratios) {
        let mut sorted = r.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "   {name} / no tracer, time per round: {}",
            r.iter()
                .map(|x| format!("{x:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        println!(
            "     median {:.3}, range {:.3} .. {:.3}",
            median(r),
            sorted[0],
            sorted[PAIRS - 1]
        );
    }
    // The opt-in hook's own cost, from the kernel's accounting.
    let running = start_with(Tracer::Fuselock, "3600", &["--contention"]).expect("fuselock");
    let pid = running.child.id();
    let stats = BpfStats::enable();
    let (runs0, ns0) = prog_stats(pid);
    let wall = churn(THREADS, iterations);
    let (runs1, ns1) = prog_stats(pid);
    drop(stats);
    drop(running);
    let cpu_ns = wall.as_secs_f64() * 1e9 * THREADS as f64;
    println!(
        "   fuselock --contention's programs during one run (bpf_stats): {} runs, {:.1} us in all = {:.4} % of the workload's {:.2} s x {THREADS} threads",
        runs1 - runs0,
        (ns1 - ns0) as f64 / 1e3,
        (ns1 - ns0) as f64 / cpu_ns * 100.0,
        wall.as_secs_f64()
    );
}

/// A fuselock process to measure: its pid, and the bytes it has written to
/// us (if it writes to us).
struct Consumer<'a> {
    name: &'a str,
    pid: u32,
    out_bytes: Option<&'a AtomicU64>,
}

impl<'a> Consumer<'a> {
    fn of(name: &'a str, r: &'a Running) -> Consumer<'a> {
        Consumer {
            name,
            pid: r.child.id(),
            out_bytes: Some(&r.out_bytes),
        }
    }
}

fn send_signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Measures each consumer, and then `export` (scraped once a second), over
/// `secs` seconds of wall time each, alone: the others are stopped
/// (SIGSTOP) meanwhile. Run side by side on two emulated CPUs, with a
/// busy writer on one, they would slow each other down and each would be
/// charged for the wait (`--every-entry` alone takes most of a core).
fn measure_consumers(label: &str, consumers: &[Consumer], exporter: &Running, secs: u32) {
    let bytes = |c: &Consumer| c.out_bytes.map_or(0, |b| b.load(Ordering::Relaxed));
    let exporter_pid = exporter.child.id();
    let everyone: Vec<u32> = consumers
        .iter()
        .map(|c| c.pid)
        .chain([exporter_pid])
        .collect();
    // Only `pid` runs, after a settle in which it catches up on what
    // happened while it was stopped.
    let alone = |pid: u32| {
        for &other in &everyone {
            send_signal(
                other,
                if other == pid {
                    libc::SIGCONT
                } else {
                    libc::SIGSTOP
                },
            );
        }
        std::thread::sleep(Duration::from_secs(3));
    };
    println!("   {label} (each alone for {secs} s, the others stopped):");
    for c in consumers {
        alone(c.pid);
        let (cpu0, bytes0) = (cpu_and_rss(c.pid).0, bytes(c));
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(u64::from(secs)));
        let wall = t0.elapsed().as_secs_f64();
        let (cpu1, rss) = cpu_and_rss(c.pid);
        let out = match c.out_bytes {
            Some(_) => format!(
                "{:>9.0} bytes per refresh",
                (bytes(c) - bytes0) as f64 / wall
            ),
            None => format!("{:>9} to a terminal    ", "screen"),
        };
        // Each refreshes once per second of wall time.
        println!(
            "     {:<28} {:>8.1} ms CPU per refresh ({:>5.2} % of a core), {out}, RSS {rss} KiB",
            c.name,
            (cpu1 - cpu0) / wall * 1000.0,
            (cpu1 - cpu0) / wall * 100.0,
        );
    }
    alone(exporter_pid);
    let (exp0, _) = cpu_and_rss(exporter_pid);
    let t0 = Instant::now();
    let mut scraped = 0;
    for _ in 0..secs {
        scraped = scrape("127.0.0.1:9948");
        std::thread::sleep(Duration::from_secs(1));
    }
    let wall = t0.elapsed().as_secs_f64();
    let (exp1, exp_rss) = cpu_and_rss(exporter_pid);
    println!(
        "     {:<28} {:>8.1} ms CPU per scrape   ({:>5.2} % of a core at 1 s), {scraped:>9} bytes per scrape, RSS {exp_rss} KiB",
        "export, scraped every second",
        (exp1 - exp0) / f64::from(secs) * 1000.0,
        (exp1 - exp0) / wall * 100.0,
    );
    for &pid in &everyone {
        send_signal(pid, libc::SIGCONT);
    }
}

/// `fuselock top` in a detached tmux session (a real terminal), and its pid.
struct Top {
    pid: u32,
}

impl Top {
    fn start() -> Option<Top> {
        let ok = Command::new("tmux")
            .args(["-L", "bench", "new-session", "-d", "-x", "160", "-y", "50"])
            .arg(format!("{} top --interval 1", fuselock()))
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("bench: tmux unavailable; `top` not measured");
            return None;
        }
        // Its pid: the process whose arguments are `fuselock top ...`.
        for _ in 0..600 {
            if let Some(&pid) = running("top").first() {
                // Give it time to attach and draw.
                std::thread::sleep(Duration::from_secs(3));
                return Some(Top { pid });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("bench: `fuselock top` did not start; not measured");
        None
    }
}

impl Drop for Top {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", "bench", "kill-server"])
            .status();
    }
}

/// Section 3: fuselock's own cost with many live inodes. The files are written
/// once while the consumers watch; then they are measured while every file
/// is idle, and while one file is written continuously.
fn userspace_cost(fs: &TestFs, inodes: u64) {
    println!("\n3. fuselock userspace with {inodes} live inodes, 1 s refresh");
    let _ = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    let deltas = start(Tracer::Fuselock, "1").expect("fuselock");
    let every = start_with(Tracer::Fuselock, "1", &["--every-entry"]).expect("fuselock");
    let exporter = spawn_exporter();
    // Every consumer starts before the files exist, as on a host where
    // fuselock was already running: its start-up is not in the windows.
    let top = Top::start();
    let dir = fs.mountpoint.clone(); // flat file system: no mkdir
    let block = vec![7u8; 8192];
    let offset = block.as_ptr().align_offset(4096);
    let aligned = &block[offset..offset + 4096];
    for i in 0..inodes {
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join(format!("many-{i}")))
            .expect("create");
        f.write_at(aligned, 0).expect("write");
    }
    // Each consumer's first look at 10,000 new entries reads them all: let
    // that pass (and the exporter's first scrapes) before measuring.
    std::thread::sleep(Duration::from_secs(5));
    for _ in 0..2 {
        scrape("127.0.0.1:9948");
    }
    let mut consumers = vec![
        Consumer::of("stat --json", &deltas),
        Consumer::of("stat --json --every-entry", &every),
    ];
    if let Some(t) = &top {
        consumers.push(Consumer {
            name: "top (160x50 terminal)",
            pid: t.pid,
            out_bytes: None,
        });
    }
    measure_consumers("every file idle", &consumers, &exporter, 20);

    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (stop, path) = (stop.clone(), dir.join("many-0"));
        std::thread::spawn(move || {
            let block = vec![7u8; 8192];
            let offset = block.as_ptr().align_offset(4096);
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .expect("open busy file");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                f.write_at(&block[offset..offset + 4096], 0).expect("write");
                n += 1;
            }
            n
        })
    };
    measure_consumers("one file busy, the others idle", &consumers, &exporter, 20);
    stop.store(true, Ordering::Relaxed);
    let busy_writes = busy.join().expect("busy writer");
    let last: serde_json::Value =
        serde_json::from_str(&deltas.last_line.lock().expect("lock")).expect("last snapshot");
    let live = last["health"]["live_inodes"].as_u64().unwrap_or(0);
    println!("   live inodes in the map: {live}; busy file: {busy_writes} writes");
    drop(top);
    drop(exporter);
    drop(every);
    drop(deltas);
}

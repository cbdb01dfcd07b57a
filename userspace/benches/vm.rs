//! `cargo xtask bench`: fuselock's overhead, measured side by side in one
//! run inside the VM (TCG inflates absolute times, so read the ratios).
//!
//! 1. Passthrough O_DIRECT overwrites (1, 2, 4 threads) with no tracer, with
//!    `fuselock stat`, and with the equivalent bpftrace script; rounds are
//!    interleaved so drift hits every configuration alike, and medians kept.
//! 2. An unrelated lock-heavy workload (create/rename/unlink on tmpfs, mmap
//!    churn) with and without fuselock: what the whole host pays.
//! 3. fuselock's own CPU and RSS per refresh with 10,000 live inodes.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    fs::OpenOptions,
    io::{BufRead as _, BufReader},
    os::unix::fs::{FileExt as _, OpenOptionsExt as _},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{fuselock, TestFs};

const BPFTRACE_SCRIPT: &str = include_str!("fuselock-equivalent.bt");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tracer {
    None,
    Fuselock,
    Bpftrace,
}

impl Tracer {
    fn name(self) -> &'static str {
        match self {
            Tracer::None => "no tracer",
            Tracer::Fuselock => "fuselock",
            Tracer::Bpftrace => "bpftrace",
        }
    }
}

/// A tracer running in the background; stopped with SIGINT on drop.
struct Running {
    child: Child,
    last_line: Arc<Mutex<String>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts a tracer and waits until its probes are attached.
fn start(tracer: Tracer, interval: &str) -> Option<Running> {
    let mut cmd = match tracer {
        Tracer::None => return None,
        Tracer::Fuselock => {
            let mut c = Command::new(fuselock());
            c.args(["stat", "--json", "--interval", interval]);
            c
        }
        Tracer::Bpftrace => {
            std::fs::write("/tmp/fuselock-equivalent.bt", BPFTRACE_SCRIPT).expect("write script");
            let mut c = Command::new("bpftrace");
            // Line-buffered: its "Attaching N probes" must reach us through a pipe.
            c.args(["-B", "line", "/tmp/fuselock-equivalent.bt"]);
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
    let last = last_line.clone();
    std::thread::spawn(move || {
        // fuselock prints its first snapshot once attached; bpftrace says
        // "Attaching N probes..." before it attaches, so wait a moment more.
        let mut ready = Some(ready_tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(tx) = ready.take() {
                let _ = tx.send(());
            }
            *last.lock().expect("lock") = line;
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(600))
        .expect("tracer did not start");
    if tracer == Tracer::Bpftrace {
        std::thread::sleep(Duration::from_secs(3));
    }
    Some(Running { child, last_line })
}

/// Runs `fuselock load` and returns writes per second.
fn load(fs: &TestFs, threads: u32, writes: u64) -> f64 {
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

/// Create/rename/unlink on tmpfs plus mmap/munmap churn: lock-heavy, and
/// nothing to do with FUSE.
fn churn(iterations: u64) -> Duration {
    let dir = std::path::Path::new("/tmp/churn");
    std::fs::create_dir_all(dir).expect("churn dir");
    let start = Instant::now();
    for i in 0..iterations {
        let a = dir.join(format!("a{i}"));
        let b = dir.join(format!("b{i}"));
        std::fs::write(&a, b"x").expect("create");
        std::fs::rename(&a, &b).expect("rename");
        std::fs::remove_file(&b).expect("unlink");
        // SAFETY: an anonymous private mapping we touch and unmap ourselves.
        unsafe {
            let len = 64 * 1024;
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            for page in (0..len).step_by(4096) {
                *(p as *mut u8).add(page) = 1;
            }
            libc::munmap(p, len);
        }
    }
    start.elapsed()
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
        child,
        last_line: Arc::new(Mutex::new(String::new())),
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
    let churn_iterations = env_u64("FUSELOCK_BENCH_CHURN", 5_000);
    let inodes = env_u64("FUSELOCK_BENCH_INODES", 10_000);
    let have_bpftrace = Command::new("bpftrace")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let tracers: Vec<Tracer> = if have_bpftrace {
        vec![Tracer::None, Tracer::Fuselock, Tracer::Bpftrace]
    } else {
        eprintln!("bench: bpftrace not available in the VM; comparing with no tracer only");
        vec![Tracer::None, Tracer::Fuselock]
    };
    let sections = std::env::var("FUSELOCK_BENCH_SECTIONS").unwrap_or_else(|_| "123".into());
    let fs = TestFs::mount(&[]);

    // 1. Per-write overhead.
    if sections.contains('1') {
        println!("\n1. passthrough O_DIRECT overwrites, {writes} per run, median of {rounds} interleaved rounds");
        println!(
            "{:>7}  {:>10}  {:>14}  {:>12}  {:>16}",
            "threads", "tracer", "writes/s", "vs none", "mean latency us"
        );
        for threads in [1u32, 2, 4] {
            let mut results: Vec<(Tracer, Vec<f64>)> =
                tracers.iter().map(|t| (*t, Vec::new())).collect();
            let _ = load(&fs, threads, writes / 10); // warm-up
            for _ in 0..rounds {
                for (tracer, samples) in &mut results {
                    let running = start(*tracer, "3600");
                    samples.push(load(&fs, threads, writes));
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
    }

    // 2. The host-wide cost on unrelated, lock-heavy work.
    if sections.contains('2') {
        println!("\n2. unrelated lock-heavy workload ({churn_iterations} x create/rename/unlink on tmpfs + 64 KiB mmap churn), median of 5 interleaved rounds");
        let _ = churn(churn_iterations / 5);
        let mut none = Vec::new();
        let mut with = Vec::new();
        for _ in 0..5 {
            none.push(churn(churn_iterations).as_secs_f64());
            let running = start(Tracer::Fuselock, "3600");
            with.push(churn(churn_iterations).as_secs_f64());
            drop(running);
        }
        let (none, with) = (median(none), median(with));
        println!(
            "   no tracer {:.3} s, fuselock {:.3} s: ratio {:.3}",
            none,
            with,
            with / none
        );
    }
    if !sections.contains('3') {
        println!("\nbench: done");
        return;
    }

    // 3. fuselock's own cost with many live inodes: the files are written
    // once while `stat` watches, then both consumers are measured over
    // 10 s: `stat --json` serialising every entry each second, and
    // `export` scraped once a second (the production path).
    println!("\n3. fuselock userspace with {inodes} live inodes, 1 s refresh");
    let _ = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    let stat = start(Tracer::Fuselock, "1").expect("fuselock");
    let exporter = spawn_exporter();
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
    std::thread::sleep(Duration::from_secs(3));
    let scrapes = 10u32;
    let (stat0, _) = cpu_and_rss(stat.child.id());
    let (exp0, _) = cpu_and_rss(exporter.child.id());
    let t0 = Instant::now();
    let mut scraped = 0;
    for _ in 0..scrapes {
        scraped = scrape("127.0.0.1:9948");
        std::thread::sleep(Duration::from_secs(1));
    }
    let wall = t0.elapsed().as_secs_f64();
    let (stat1, stat_rss) = cpu_and_rss(stat.child.id());
    let (exp1, exp_rss) = cpu_and_rss(exporter.child.id());
    let last: serde_json::Value =
        serde_json::from_str(&stat.last_line.lock().expect("lock")).expect("last snapshot");
    let live = last["health"]["live_inodes"].as_u64().unwrap_or(0);
    // stat refreshes once per second of wall time; export once per scrape.
    let stat_ms = (stat1 - stat0) / wall * 1000.0;
    let exp_ms = (exp1 - exp0) / f64::from(scrapes) * 1000.0;
    println!("   live inodes in the map: {live}; window {wall:.1} s");
    println!(
        "   stat --json (every entry, every second): {stat_ms:.1} ms CPU per refresh ({:.1} % of a core), RSS {stat_rss} KiB",
        stat_ms / 10.0
    );
    println!(
        "   export, scraped every second ({scraped} bytes): {exp_ms:.1} ms CPU per scrape ({:.1} % of a core at 1 s), RSS {exp_rss} KiB",
        (exp1 - exp0) / wall * 100.0
    );
    drop(exporter);
    drop(stat);
    println!("\nbench: done");
}

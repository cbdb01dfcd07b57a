//! Section 3: fuselock's own CPU and RSS per refresh, for each consumer
//! (`stat --json`, `top`, `export`), idle and with one file busy.

use super::*;

pub(crate) fn spawn_exporter() -> Running {
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
pub(crate) fn scrape(addr: &str) -> usize {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .expect("request");
    let mut body = Vec::new();
    s.read_to_end(&mut body).expect("response");
    body.len()
}

/// utime + stime of `pid` in seconds, and its RSS in KiB.
pub(crate) fn cpu_and_rss(pid: u32) -> (f64, u64) {
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

/// A fuselock process to measure: its pid, and the bytes it has written to
/// us (if it writes to us).
pub(crate) struct Consumer<'a> {
    pub(crate) name: &'a str,
    pub(crate) pid: u32,
    pub(crate) out_bytes: Option<&'a AtomicU64>,
}

impl<'a> Consumer<'a> {
    pub(crate) fn of(name: &'a str, r: &'a Running) -> Consumer<'a> {
        Consumer {
            name,
            pid: r.child.id(),
            out_bytes: Some(&r.out_bytes),
        }
    }
}

pub(crate) fn send_signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Measures each consumer, and then `export` (scraped once a second), over
/// `secs` seconds of wall time each, alone: the others are stopped
/// (SIGSTOP) meanwhile. Run side by side on two emulated CPUs, with a
/// busy writer on one, they would slow each other down and each would be
/// charged for the wait (`--every-entry` alone takes most of a core).
pub(crate) fn measure_consumers(
    label: &str,
    consumers: &[Consumer],
    exporter: &Running,
    secs: u32,
) {
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
pub(crate) struct Top {
    pub(crate) pid: u32,
}

impl Top {
    pub(crate) fn start() -> Option<Top> {
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
pub(crate) fn userspace_cost(fs: &TestFs, inodes: u64) {
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

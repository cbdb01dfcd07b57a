//! `fuselock top` on live writes: tmux drives the real binary on the VM's
//! kernel while writers run, every key in the help is typed, and what each
//! does is checked on the screen.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::common::{fuselock, running, tmux::Tmux, TestFs};

/// Writers that keep going until dropped: a busy overwriter with two
/// threads, and an appender.
struct Writers {
    overwriter: Child,
    appender: Child,
}

impl Writers {
    fn start(fs: &TestFs) -> Writers {
        let spawn = |file: &str, kind: &str, threads: &str| {
            Command::new(fuselock())
                .args(["load", &fs.path(file), "--kind", kind])
                .args(["--writes", "1000000000", "--threads", threads])
                .stdout(Stdio::null())
                .spawn()
                .expect("writer")
        };
        Writers {
            overwriter: spawn("hot.db", "overwrite", "2"),
            appender: spawn("journal.log", "append", "1"),
        }
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        for c in [&mut self.overwriter, &mut self.appender] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The WRITES cell of the row naming `file` (rates or totals).
fn writes_of(screen: &str, file: &str) -> Option<String> {
    let words = |l: &str| -> Vec<String> {
        l.split(|c: char| c.is_whitespace() || c == '│')
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect()
    };
    // Narrow terminals drop columns, so find WRITES in the header; the
    // headers before it are one word each.
    let header = screen.lines().find(|l| l.contains("FILE"))?;
    let column = words(header).iter().position(|w| w == "WRITES")?;
    let row = screen.lines().find(|l| l.contains(file))?;
    words(row).get(column).cloned()
}

/// `fuselock ARGS` in a 120x32 tmux terminal, its exit status printed
/// after it as `EXITED N`; `None` (and a loud SKIPPED) on a kernel
/// without ptys, like the tiny test kernels.
fn in_terminal(args: &str, patience: Duration) -> Option<Tmux> {
    if !std::path::Path::new("/dev/pts/ptmx").exists() {
        eprintln!("SKIPPED: this kernel has no ptys (no /dev/pts/ptmx) for tmux");
        return None;
    }
    let cmd = format!("sh -c '{} {args}; echo EXITED $?; sleep 600'", fuselock());
    let t = Tmux::start(&cmd, 120, 32).expect("tmux is in the VM image");
    Some(t.with_patience(patience))
}

#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn top_on_live_writes_every_key_works() {
    let fs = TestFs::mount(&["--parallel"]);
    let Some(t) = in_terminal("top --interval 0.5", Duration::from_secs(60)) else {
        return;
    };
    // Attached (the header names the probes) before the writers start, and
    // detached after they stop: attaching patches the hooked functions'
    // text, and under TCG doing that while another vCPU runs them has
    // oopsed the guest (an int3 at the patch site). Live writes in between.
    t.wait_for("probes");
    let writers = Writers::start(&fs);
    // Live: both files show up.
    let s = t.wait_for("journal.log");
    // Started without --contention: the header says waits are not measured.
    assert!(
        s.contains("probes  no wait times (--contention)  up"),
        "{s}"
    );
    let s = t.wait_for("hot.db");
    assert!(s.contains("[rates]"), "{s}");
    assert!(t.alternate_screen(), "top runs on the alternate screen");
    // Rates are live: the busy file's writes/s is a number above zero.
    let rate = writes_of(&s, "hot.db").expect("hot.db row");
    assert!(
        rate != "0" && rate != "-",
        "writes/s of hot.db: {rate}\n{s}"
    );
    println!("main view, live:\n{s}");

    // Sort: s moves to the next column, S flips the order.
    t.keys(&["s"]);
    t.wait_for("sorted by bytes ↓");
    t.keys(&["S"]);
    t.wait_for("sorted by bytes ↑");
    t.keys(&["S", "s", "s", "s", "s", "s", "s"]);

    // Filter by name, then by the appender's pid.
    t.keys(&["/", "j", "o", "u", "r", "Enter"]);
    let s = t.wait_for("1 files");
    assert!(s.contains("journal.log") && !s.contains("hot.db"), "{s}");
    t.keys(&["/", "Escape"]);
    t.wait_for("2 files");
    let pid = writers.appender.id().to_string();
    let mut typed = vec!["/"];
    typed.extend(pid.split("").filter(|c| !c.is_empty()));
    typed.push("Enter");
    t.keys(&typed);
    let s = t.wait_for("1 files");
    assert!(
        s.contains("journal.log") && !s.contains("hot.db"),
        "pid {pid}: {s}"
    );
    t.keys(&["/", "Escape"]);
    t.wait_for("2 files");

    // Totals: cumulative counts. Freeze: the screen stops while writes go on.
    t.keys(&["t"]);
    let s = t.wait_for("totals since start/reset");
    let total = writes_of(&s, "hot.db").expect("row");
    t.keys(&["f"]);
    let frozen = t.wait_for("FROZEN");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        writes_of(&t.screen(), "hot.db"),
        writes_of(&frozen, "hot.db"),
        "frozen screen changed"
    );
    t.keys(&["f"]);
    // Unfrozen, the totals grow past what was on the frozen screen.
    let mut grew = false;
    for _ in 0..60 {
        let now = writes_of(&t.screen(), "hot.db");
        if now.is_some() && now != Some(total.clone()) && now != writes_of(&frozen, "hot.db") {
            grew = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        grew,
        "totals did not move after unfreezing:\n{}",
        t.screen()
    );

    // Reset: totals start again from zero, so they drop below the old value.
    let parse = |v: &str| -> f64 {
        let (num, mult) = match v.chars().last() {
            Some('k') => (&v[..v.len() - 1], 1e3),
            Some('M') => (&v[..v.len() - 1], 1e6),
            _ => (v, 1.0),
        };
        num.parse::<f64>().unwrap_or(f64::MAX) * mult
    };
    let before = parse(&writes_of(&t.screen(), "hot.db").expect("row"));
    t.keys(&["r"]);
    std::thread::sleep(Duration::from_secs(1));
    let after = parse(&writes_of(&t.screen(), "hot.db").expect("row"));
    assert!(after < before, "reset: {after} not below {before}");
    t.keys(&["t"]);
    t.wait_for("[rates]");

    // Detail of the selected row (j/k move; the busy file sorts first).
    t.keys(&["k", "j", "k", "Enter"]);
    let s = t.wait_for("detail (Esc: back)");
    println!("detail view, live:\n{s}");
    assert!(s.contains("open-time evidence"), "{s}");
    assert!(s.contains("acquisitions by reason"), "{s}");
    t.keys(&["Escape"]);
    t.wait_for("files, sorted by");

    // Help lists every key; mouse toggles on and off.
    t.keys(&["?"]);
    let s = t.wait_for("keys (? or Esc to close)");
    for k in ["s / S", "freeze", "reset", "detail view", "mouse", "quit"] {
        assert!(s.contains(k), "help lacks {k}: {s}");
    }
    t.keys(&["Escape", "m", "m"]);

    // q quits: the alternate screen is gone, the shell prints the status.
    drop(writers);
    t.keys(&["q"]);
    let s = t.wait_for("EXITED 0");
    assert!(!s.contains("files, sorted by"), "UI still on screen:\n{s}");
    assert!(!t.alternate_screen(), "alternate screen left on");
}

#[test]
#[ignore = "needs kprobes: runs in the VM via `cargo xtask test`"]
fn demo_top_runs_its_workload_while_attached_and_cleans_up() {
    let Some(t) = in_terminal("demo --top --writes 200", Duration::from_secs(90)) else {
        return;
    };
    // Every kind of the demo's workload shows up, live.
    let mut s = String::new();
    for file in ["overwrite", "buffered", "append.log", "grow"] {
        s = t.wait_for(file);
    }
    println!("demo --top:\n{s}");
    // The demo turns lock-wait times on.
    assert!(!s.contains("no wait times"), "{s}");
    // The workload repeats in rounds, with a moment between them when no
    // load runs: look for one for a few seconds, not at one instant.
    let deadline = Instant::now() + Duration::from_secs(10);
    while running("load").is_empty() {
        assert!(Instant::now() < deadline, "the workload is not running");
        std::thread::sleep(Duration::from_millis(20));
    }
    // q stops the workload before the probes detach, then unmounts.
    t.keys(&["q"]);
    t.wait_for("EXITED 0");
    assert_eq!(running("load"), Vec::<u32>::new(), "workload left running");
    assert_eq!(running("testfs"), Vec::<u32>::new(), "server left running");
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    assert!(
        !mounts.contains("fuselock-demo-"),
        "demo mount left:\n{mounts}"
    );
}

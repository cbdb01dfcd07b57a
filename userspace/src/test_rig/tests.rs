use std::{
    io::{self, Write as _},
    time::Duration,
};

use anyhow::Result;

use super::*;
use crate::{
    collect::{Collector, Detail},
    model::snapshot::Snapshot,
};

/// Thread CPU time (user and system) in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// A consumer's work per refresh, from a snapshot taken by its collector.
trait Consumer {
    fn name(&self) -> &'static str;
    fn refresh(&mut self, collector: &mut Collector) -> Result<()>;
}

struct StatJson {
    writer: crate::wire::json::Writer,
    name: &'static str,
}

impl Consumer for StatJson {
    fn name(&self) -> &'static str {
        self.name
    }
    fn refresh(&mut self, collector: &mut Collector) -> Result<()> {
        let snap = collector.snapshot(false)?;
        self.writer.write(&snap, &mut io::sink())?;
        Ok(())
    }
}

struct Top {
    app: crate::commands::top::TopApp,
    terminal: ratatui::Terminal<ratatui::backend::TestBackend>,
}

impl Consumer for Top {
    fn name(&self) -> &'static str {
        "top (160x50, drawn to memory)"
    }
    fn refresh(&mut self, collector: &mut Collector) -> Result<()> {
        self.app.on_snapshot(collector.snapshot(false)?);
        let app = &self.app;
        self.terminal
            .draw(|f| crate::commands::top::draw_frame(f, app))
            .context("drawing")?;
        Ok(())
    }
}

struct Export {
    bodies: crate::commands::export::BodyCache,
}

impl Consumer for Export {
    fn name(&self) -> &'static str {
        "export (one scrape)"
    }
    fn refresh(&mut self, collector: &mut Collector) -> Result<()> {
        let snap: Snapshot = collector.snapshot_with(false, Detail::Totals)?;
        self.bodies
            .body(snap, crate::wire::metrics::Exposition::Prometheus, 0)?;
        Ok(())
    }
}

/// CPU seconds per refresh over `n` refreshes, with `between` run (and not
/// timed) before each.
fn per_refresh(
    consumer: &mut dyn Consumer,
    collector: &mut Collector,
    n: u32,
    mut between: impl FnMut() -> Result<()>,
) -> Result<f64> {
    let mut cpu = 0.0;
    for _ in 0..n {
        between()?;
        let t0 = thread_cpu();
        consumer.refresh(collector)?;
        cpu += thread_cpu() - t0;
    }
    Ok(cpu / f64::from(n))
}

/// Live inodes for the benchmarks below: `$FUSELOCK_BENCH_INODES` (`cargo
/// xtask bench --inodes`), 10,000 without it; and the `--max-inodes` that
/// holds them all, so that nothing is evicted while they are timed.
fn bench_inodes() -> (u64, u32) {
    let inodes = std::env::var("FUSELOCK_BENCH_INODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000u64);
    let room = u32::try_from(inodes + inodes / 4).unwrap_or(u32::MAX);
    (inodes, room.max(16_384))
}

/// Times each consumer's refresh on this machine with [`bench_inodes`] live
/// inodes: every file idle, then one file written 1,000 times between
/// refreshes. Run by `cargo xtask bench` (section 4).
#[test]
#[ignore]
fn refresh_cost_natively() {
    let (inodes, max_inodes) = bench_inodes();
    const REFRESHES: u32 = 50;
    let consumers: Vec<Box<dyn Consumer>> = vec![
        Box::new(StatJson {
            writer: crate::wire::json::Writer::new(crate::wire::stream::Lines::Deltas),
            name: "stat --json",
        }),
        Box::new(StatJson {
            writer: crate::wire::json::Writer::new(crate::wire::stream::Lines::Whole),
            name: "stat --json --every-entry",
        }),
        Box::new(Top {
            app: crate::commands::top::TopApp::new("live".into(), Duration::from_secs(1)),
            terminal: ratatui::Terminal::new(ratatui::backend::TestBackend::new(160, 50))
                .expect("terminal"),
        }),
        Box::new(Export {
            bodies: crate::commands::export::BodyCache::default(),
        }),
    ];
    println!(
        "\n4. the same refresh work natively, on this machine's CPU, with {inodes} live \
         inodes (real BPF maps, --max-inodes {max_inodes}, filled as the programs fill \
         them; CPU time of the refreshing thread, mean of {REFRESHES})"
    );
    println!(
        "   {:<30} {:>14} {:>14} {:>16} {:>22}",
        "consumer", "first refresh", "idle refresh", "first busy", "one file busy refresh"
    );
    for mut consumer in consumers {
        let Some((mut attached, mut kernel)) = rig_or_skip(max_inodes) else {
            return;
        };
        let mut collector = Collector::new(&mut attached).expect("collector");
        // The consumer is there first, as on a host where fuselock runs.
        consumer.refresh(&mut collector).expect("refresh");
        for ino in 0..inodes {
            kernel
                .write(key(ino), &format!("many-{ino}"), 1000, "fio", 4096)
                .expect("write");
        }
        let mut busy_file = || -> Result<()> {
            for _ in 0..1000 {
                kernel.write(key(0), "many-0", 1000, "fio", 4096)?;
            }
            Ok(())
        };
        let first = per_refresh(&mut *consumer, &mut collector, 1, || Ok(())).expect("first");
        let idle = per_refresh(&mut *consumer, &mut collector, REFRESHES, || Ok(())).expect("idle");
        // After a refresh that read every file, the first one that finds a
        // change reads them all again (see `collect::refresh`): once per
        // start, or per burst that overran the rings.
        let first_busy =
            per_refresh(&mut *consumer, &mut collector, 1, &mut busy_file).expect("first busy");
        let busy =
            per_refresh(&mut *consumer, &mut collector, REFRESHES, &mut busy_file).expect("busy");
        let ms = |s: f64| format!("{:.3} ms", s * 1e3);
        println!(
            "   {:<30} {:>14} {:>14} {:>16} {:>22}   ({:.3} % / {:.3} % of a core at 1 s)",
            consumer.name(),
            ms(first),
            ms(idle),
            ms(first_busy),
            ms(busy),
            idle * 100.0,
            busy * 100.0
        );
        let live = collector
            .snapshot(false)
            .expect("snapshot")
            .health
            .live_inodes;
        assert_eq!(live, inodes, "every inode live");
    }
}

/// A `stat --json` stream of [`bench_inodes`] live inodes, for timing the real
/// `top --replay` process (`cargo xtask bench`, section 4): a whole first
/// line, 20 lines with every file idle, 20 with one file written 1,000
/// times between lines, and a whole final line; clocks one second apart.
/// Written to `$FUSELOCK_NATIVE_RECORDING`.
#[test]
#[ignore]
fn recording_for_replay() {
    let Ok(path) = std::env::var("FUSELOCK_NATIVE_RECORDING") else {
        println!("   skipped: FUSELOCK_NATIVE_RECORDING not set");
        return;
    };
    let (inodes, max_inodes) = bench_inodes();
    let Some((mut attached, mut kernel)) = rig_or_skip(max_inodes) else {
        return;
    };
    let mut collector = Collector::new(&mut attached).expect("collector");
    for ino in 0..inodes {
        kernel
            .write(key(ino), &format!("many-{ino}"), 1000, "fio", 4096)
            .expect("write");
    }
    let mut writer = crate::wire::json::Writer::new(crate::wire::stream::Lines::Deltas);
    let mut out = io::BufWriter::new(std::fs::File::create(&path).expect("create"));
    for second in 0..42u32 {
        if (21..41).contains(&second) {
            for _ in 0..1000 {
                kernel
                    .write(key(0), "many-0", 1000, "fio", 4096)
                    .expect("write");
            }
        }
        let mut snap = collector.snapshot(second == 41).expect("snapshot");
        snap.elapsed_secs = f64::from(second);
        writer.write(&snap, &mut out).expect("json");
    }
    out.flush().expect("flush");
}

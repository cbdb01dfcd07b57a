//! Sections 1 and 1b, and the ablation: what a FUSE write pays with each
//! tracer attached, by wall clock and by the kernel's own accounting of
//! the programs' run time.

use super::*;

/// Section 1, per-write overhead: throughput, then the programs' own run
/// time.
pub(crate) fn per_write(fs: &TestFs, tracers: &[Tracer], writes: u64, rounds: usize) {
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
pub(crate) fn bpf_time_per_write(fs: &TestFs, tracers: &[Tracer], writes: u64) {
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
pub(crate) fn bpf_ns_per_write(
    fs: &TestFs,
    tracer: Tracer,
    extra: &[&str],
    threads: u32,
    writes: u64,
) -> f64 {
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
pub(crate) fn ablation(fs: &TestFs, writes: u64, rounds: usize) {
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

//! Section 2: an unrelated lock-heavy workload, with and without fuselock.

use super::*;

/// Section 2: the host-wide cost on unrelated, lock-heavy work.
pub(crate) fn unrelated(iterations: u64) {
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

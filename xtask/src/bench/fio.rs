//! `cargo xtask bench --sections fio`: the parallel-direct-writes series'
//! fio benchmark on the unpatched and the patched kernel of each series pair
//! (6.12, 7.3; one VM boot each), with and without fuselock, and the table
//! the cover letter gives.
//!
//! The guest side is `userspace/benches/vm/fio.rs`; it prints one
//! `FIO_RESULT {json}` line per run, collected here from the console.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{build, kernel, setup, vm};

const RESULT: &str = "FIO_RESULT ";
const JOBS: [u64; 4] = [1, 2, 4, 8];
/// Each job count runs without fuselock, with it as it attaches by
/// default, and with `--contention`.
const WATCHES: u64 = 3;
/// The series' cover letter (fio randwrite 4K direct, XFS on null_blk):
/// IOPS before and after the series, per job count.
const COVER_LETTER: [(u64, f64, f64); 4] = [
    (1, 470e3, 480e3),
    (2, 650e3, 930e3),
    (4, 640e3, 1.53e6),
    (8, 635e3, 1.73e6),
];

/// The version of the series on a pair's patched side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SeriesVersion {
    V2,
    V3,
}

impl SeriesVersion {
    fn variant(self) -> kernel::Variant {
        match self {
            SeriesVersion::V2 => kernel::Variant::Patched,
            SeriesVersion::V3 => kernel::Variant::PatchedV3,
        }
    }
}

/// How a run watched fio.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Watch {
    None,
    /// fuselock as it attaches by default.
    Default,
    /// With `--contention` too: what gives the estimate.
    Contention,
}

/// One run as the guest reported it.
struct Run {
    round: u64,
    jobs: u64,
    watch: Watch,
    iops: f64,
    ios: u64,
    fuselock_writes: Option<u64>,
    shared: Option<u64>,
    exclusive: Option<u64>,
    /// Share of the exclusive overwrites' time spent waiting for the lock,
    /// as fuselock measured it (attached runs where writes took it exclusive).
    wait_share: Option<f64>,
}

fn parse(line: &str) -> Result<Run> {
    let json = line.strip_prefix(RESULT).context("not a result line")?;
    let v: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("bad result line: {line}"))?;
    let num = |k: &str| {
        v[k].as_u64()
            .with_context(|| format!("result line without {k}: {line}"))
    };
    Ok(Run {
        round: num("round")?,
        jobs: num("jobs")?,
        watch: match (
            v["fuselock"]
                .as_bool()
                .with_context(|| format!("result line without fuselock: {line}"))?,
            v["contention"].as_bool().unwrap_or(true),
        ) {
            (false, _) => Watch::None,
            (true, false) => Watch::Default,
            (true, true) => Watch::Contention,
        },
        iops: v["iops"]
            .as_f64()
            .with_context(|| format!("result line without iops: {line}"))?,
        ios: num("ios")?,
        fuselock_writes: v["fuselock_writes"].as_u64(),
        shared: v["shared"].as_u64(),
        exclusive: v["exclusive"].as_u64(),
        wait_share: v["wait_share"].as_f64(),
    })
}

/// Boots `kernel` and runs the guest section; its runs.
fn on_kernel(kernel: &str, rounds: u64, ios: u64, append: Option<&str>) -> Result<Vec<Run>> {
    let (image, kernel_name) = vm::resolve_kernel(kernel)?;
    let mut files = vec![
        (build::fuselock_static()?, "/bin/fuselock".to_owned()),
        (build::vm_bench_static()?, "/bin/vm-bench".to_owned()),
    ];
    files.extend(vm::with_libraries("/usr/bin/fio")?);
    let vm::Finished {
        code, kept: lines, ..
    } = vm::run_keeping(
        &vm::VmSpec {
            kernel: image,
            kernel_name,
            files,
            mount: None,
            command: vec![
                "env".into(),
                "FUSELOCK_BENCH_SECTIONS=fio".into(),
                format!("FUSELOCK_BENCH_ROUNDS={rounds}"),
                format!("FUSELOCK_BENCH_FIO_IOS={ios}"),
                "vm-bench".into(),
            ],
            cpus: 2,
            memory_mb: 2048,
            timeout: Duration::from_secs(3600),
            append: append.map(str::to_owned),
            interactive: false,
        },
        Some(RESULT),
    )?;
    if code != 0 {
        bail!("the fio section failed in the VM on the {kernel} kernel (exit {code}); see above");
    }
    let runs = lines.iter().map(|l| parse(l)).collect::<Result<Vec<_>>>()?;
    // Every run there and counted exactly: the guest checks too, but a
    // lost console line must not pass for a clean run.
    ensure!(
        runs.len() as u64 == rounds * JOBS.len() as u64 * WATCHES,
        "expected {} fio runs from the {kernel} kernel, got {}",
        rounds * JOBS.len() as u64 * WATCHES,
        runs.len()
    );
    for r in runs.iter().filter(|r| r.watch != Watch::None) {
        if r.fuselock_writes != Some(r.ios) {
            bail!(
                "{kernel}, round {}, {} jobs: fio did {} writes, fuselock counted {:?}",
                r.round,
                r.jobs,
                r.ios,
                r.fuselock_writes
            );
        }
    }
    Ok(runs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// "median (min–max)" of per-round values.
fn spread(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.2} ({min:.2}–{max:.2})", median(v.to_vec()))
}

/// IOPS per (jobs, fuselock, round).
fn by_key(runs: &[Run]) -> BTreeMap<(u64, Watch, u64), f64> {
    runs.iter()
        .map(|r| ((r.jobs, r.watch, r.round), r.iops))
        .collect()
}

/// The section on each pair in `lines` (every ported line when empty).
pub fn run(
    lines: &[String],
    version: SeriesVersion,
    rounds: u64,
    ios: u64,
    append: Option<&str>,
) -> Result<()> {
    ensure!(rounds > 0, "--rounds must be at least 1");
    ensure!(
        ios > 0 && ios.is_multiple_of(8),
        "--fio-ios must be a positive multiple of 8 (it is split among 1, 2, 4 and 8 jobs)"
    );
    // Every name is checked before the first (long) boot.
    let pairs: Vec<&kernel::Series> = if lines.is_empty() {
        kernel::SERIES.iter().collect()
    } else {
        lines
            .iter()
            .map(|l| kernel::Series::for_line(l))
            .collect::<Result<_>>()?
    };
    setup::ensure_apt_packages(&["fio"])?;
    for series in pairs {
        on_pair(series.line, version.variant(), rounds, ios, append)?;
    }
    Ok(())
}

/// The table of one pair: `unpatched:LINE` against `patched:LINE` (or
/// `patched-v3:LINE`).
fn on_pair(
    line: &str,
    patched_variant: kernel::Variant,
    rounds: u64,
    ios: u64,
    append: Option<&str>,
) -> Result<()> {
    let started = std::time::Instant::now();
    let patched_name = patched_variant.name();
    let unpatched = on_kernel(&format!("unpatched:{line}"), rounds, ios, append)?;
    let patched = on_kernel(&format!("{patched_name}:{line}"), rounds, ios, append)?;
    let (u, p) = (by_key(&unpatched), by_key(&patched));
    let get = |m: &BTreeMap<(u64, Watch, u64), f64>, k| {
        m.get(&k)
            .copied()
            .with_context(|| format!("no fio run for {k:?}"))
    };

    println!(
        "\nfio on the {line} pair (unpatched, {patched_name}): randwrite 4 KiB O_DIRECT, one shared \
         file on a passthrough mount asking for parallel direct writes; {ios} I/Os per run, \
         {rounds} rounds; TCG, 2 vCPUs"
    );
    println!(
        "IOPS: median over rounds without fuselock. Ratios: median (min–max over rounds); \
         overhead = IOPS with fuselock ÷ without, same round, as it attaches by default and with \
         --contention; estimate = 1 ÷ (1 − the share of the unpatched writes' time spent waiting \
         for the lock, from the --contention runs), fuselock's bound on what the series buys"
    );
    println!(
        "{:>7} | {:>14} | {:>12} | {:>19} | {:>19} | {:>19} | {:>19} | {:>19} | {:>19} | {:>28}",
        "numjobs",
        "unpatched IOPS",
        "patched IOPS",
        "patched ÷ unpatched",
        "estimate",
        "overhead unpatched",
        "overhead patched",
        "--contention unp.",
        "--contention pat.",
        "cover letter before/after (÷)"
    );
    for (jobs, before, after) in COVER_LETTER {
        let mut pu = Vec::new();
        let (mut over_u, mut over_p, mut cont_u, mut cont_p) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut iops_u, mut iops_p) = (Vec::new(), Vec::new());
        let estimate: Vec<f64> = unpatched
            .iter()
            .filter(|r| r.jobs == jobs && r.watch == Watch::Contention)
            .filter_map(|r| r.wait_share)
            .map(|f| 1.0 / (1.0 - f).max(0.01))
            .collect();
        for round in 0..rounds {
            let at = |m, watch| get(m, (jobs, watch, round));
            let (u0, p0) = (at(&u, Watch::None)?, at(&p, Watch::None)?);
            iops_u.push(u0);
            iops_p.push(p0);
            pu.push(p0 / u0);
            over_u.push(at(&u, Watch::Default)? / u0);
            over_p.push(at(&p, Watch::Default)? / p0);
            cont_u.push(at(&u, Watch::Contention)? / u0);
            cont_p.push(at(&p, Watch::Contention)? / p0);
        }
        println!(
            "{jobs:>7} | {:>14.0} | {:>12.0} | {:>19} | {:>19} | {:>19} | {:>19} | {:>19} | {:>19} | {:>28}",
            median(iops_u),
            median(iops_p),
            spread(&pu),
            if estimate.is_empty() {
                "-".to_owned()
            } else {
                spread(&estimate)
            },
            spread(&over_u),
            spread(&over_p),
            spread(&cont_u),
            spread(&cont_p),
            format!(
                "{:.0}K / {:.0}K ({:.2})",
                before / 1e3,
                after / 1e3,
                after / before
            )
        );
    }
    // What fuselock saw: the lock the kernel took for these writes.
    for (name, runs) in [("unpatched", &unpatched), (patched_name, &patched)] {
        let attached: Vec<&Run> = runs.iter().filter(|r| r.watch != Watch::None).collect();
        let writes: u64 = attached.iter().map(|r| r.ios).sum();
        let shared: u64 = attached.iter().filter_map(|r| r.shared).sum();
        let exclusive: u64 = attached.iter().filter_map(|r| r.exclusive).sum();
        println!(
            "{name}: in each of {} runs with fuselock attached, its write count for the file \
             equalled fio's I/Os ({writes} writes in all); it saw {shared} take the inode lock \
             shared, {exclusive} exclusive",
            attached.len()
        );
    }
    println!(
        "fio section, {line} pair: {:.0} s in all (two VM boots)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_parse_with_and_without_fuselock() {
        let with = parse(
            r#"FIO_RESULT {"exclusive":0,"fuselock":true,"fuselock_writes":2048,"iops":22021.5,"ios":2048,"jobs":1,"round":0,"shared":2048}"#,
        )
        .expect("parses");
        // Lines from before the default mode was measured were --contention's.
        assert_eq!(with.watch, Watch::Contention);
        assert_eq!(
            (with.jobs, with.ios, with.fuselock_writes),
            (1, 2048, Some(2048))
        );
        let without = parse(
            r#"FIO_RESULT {"exclusive":null,"fuselock":false,"fuselock_writes":null,"iops":28444.4,"ios":2048,"jobs":8,"round":3,"shared":null}"#,
        )
        .expect("parses");
        assert_eq!((without.round, without.fuselock_writes), (3, None));
        assert_eq!(without.watch, Watch::None);
        let default = parse(
            r#"FIO_RESULT {"contention":false,"exclusive":0,"fuselock":true,"fuselock_writes":2048,"iops":22021.5,"ios":2048,"jobs":1,"round":0,"shared":2048}"#,
        )
        .expect("parses");
        assert_eq!(default.watch, Watch::Default);
        assert_eq!(without.wait_share, None);
        let unpatched = parse(
            r#"FIO_RESULT {"exclusive":2048,"fuselock":true,"fuselock_writes":2048,"iops":21000.0,"ios":2048,"jobs":4,"round":0,"shared":0,"wait_share":0.25}"#,
        )
        .expect("parses");
        assert_eq!(unpatched.wait_share, Some(0.25));
        assert!(parse(r#"FIO_RESULT {"jobs":1}"#).is_err());
        assert!(parse("FIO_RESULT not json").is_err());
    }

    #[test]
    fn spread_is_median_and_range() {
        assert_eq!(spread(&[1.0, 0.5, 2.0]), "1.00 (0.50–2.00)");
        assert_eq!(median(vec![1.0, 3.0]), 2.0);
    }
}

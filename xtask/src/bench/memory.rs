//! The `mem` section: fuselock's kernel memory at default settings, on a
//! guest with 2 CPUs and on one with 64 (the kernel sizes per-CPU memory by
//! possible CPUs), next to the goals.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use crate::{build, vm};

const RESULT: &str = "MEM ";
/// Files written once each after attaching.
const FILES: u64 = 10_000;
/// A second batch, for the cost of each further file.
const EXTRA: u64 = 1_000;
/// The possible CPUs of the two guests.
const POSSIBLE_CPUS: [u32; 2] = [2, 64];
/// Goals at 64 possible CPUs (issue #25): attached and idle, and after
/// `FILES` files.
const IDLE_GOAL_MIB: f64 = 16.0;
const FILES_GOAL_MIB: f64 = 128.0;

struct Row {
    possible_cpus: u64,
    maps: u64,
    idle_memlock: u64,
    idle_percpu: u64,
    files_memlock: u64,
    files_percpu: u64,
    per_file_memlock: u64,
}

fn parse(line: &str) -> Result<Row> {
    let v: serde_json::Value = serde_json::from_str(line.trim_start_matches(RESULT))
        .with_context(|| format!("an odd memory line: {line}"))?;
    let n = |k: &str| {
        v[k].as_u64()
            .with_context(|| format!("{k} missing in {line}"))
    };
    Ok(Row {
        possible_cpus: n("possible_cpus")?,
        maps: n("maps")?,
        idle_memlock: n("idle_memlock")?,
        idle_percpu: n("idle_percpu")?,
        files_memlock: n("files_memlock")?,
        files_percpu: n("files_percpu")?,
        per_file_memlock: n("per_file_memlock")?,
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn on(kernel: &str, possible: u32) -> Result<Row> {
    let (image, kernel_name) = vm::resolve_kernel(kernel)?;
    let files = vec![
        (build::fuselock_static()?, "/bin/fuselock".to_owned()),
        (build::vm_bench_static()?, "/bin/vm-bench".to_owned()),
    ];
    let done = vm::run_keeping(
        &vm::VmSpec {
            kernel: image,
            kernel_name,
            files,
            mount: None,
            command: vec![
                "env".into(),
                "FUSELOCK_BENCH_SECTIONS=mem".into(),
                format!("FUSELOCK_BENCH_MEM_FILES={FILES}"),
                format!("FUSELOCK_BENCH_MEM_EXTRA={EXTRA}"),
                "vm-bench".into(),
            ],
            cpus: possible,
            memory_mb: 2048,
            timeout: Duration::from_secs(1800),
            append: None,
            interactive: false,
        },
        Some(RESULT),
    )?;
    if done.code != 0 {
        bail!(
            "the memory section failed in the VM with {possible} possible CPUs (exit {})",
            done.code
        );
    }
    let line = done
        .kept
        .first()
        .context("the memory section printed no result")?;
    parse(line)
}

pub fn run(kernel: &str) -> Result<()> {
    let rows = POSSIBLE_CPUS
        .iter()
        .map(|&cpus| on(kernel, cpus))
        .collect::<Result<Vec<_>>>()?;
    println!(
        "\nmem. kernel memory of fuselock at default settings ({kernel}): memlock of its maps \
         (fdinfo), and the kernel's Percpu growth; idle, then after {FILES} files written once \
         each"
    );
    println!(
        "{:>13}  {:>5}  {:>14}  {:>12}  {:>17}  {:>15}  {:>16}",
        "possible CPUs",
        "maps",
        "idle memlock",
        "idle Percpu",
        "memlock, 10k files",
        "Percpu, 10k files",
        "per further file"
    );
    for r in &rows {
        println!(
            "{:>13}  {:>5}  {:>10.1} MiB  {:>8.1} MiB  {:>13.1} MiB  {:>11.1} MiB  {:>10} bytes",
            r.possible_cpus,
            r.maps,
            mib(r.idle_memlock),
            mib(r.idle_percpu),
            mib(r.files_memlock),
            mib(r.files_percpu),
            r.per_file_memlock
        );
    }
    let big = rows
        .iter()
        .find(|r| r.possible_cpus == 64)
        .context("no row for 64 possible CPUs")?;
    let idle = mib(big.idle_memlock.max(big.idle_percpu));
    let files = mib(big.files_memlock.max(big.files_percpu));
    println!(
        "   goals at 64 possible CPUs: idle <= {IDLE_GOAL_MIB} MiB: {idle:.1} MiB ({}); after \
         {FILES} files <= {FILES_GOAL_MIB} MiB: {files:.1} MiB ({})",
        if idle <= IDLE_GOAL_MIB {
            "met"
        } else {
            "NOT met"
        },
        if files <= FILES_GOAL_MIB {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}

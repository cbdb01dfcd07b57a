//! The `mem` section: the kernel memory fuselock takes at default settings,
//! attached and idle, then after a number of files were written once each.
//! Two figures for each: the `memlock` of its maps (what the kernel charges
//! them, elements allocated on use included, from `/proc/PID/fdinfo`), and
//! the growth of the kernel's `Percpu` in `/proc/meminfo`. (`Slab` would
//! also count the file system's own inodes and dentries of the files
//! written.) The kernel sizes per-CPU memory by *possible* CPUs: `cargo
//! xtask bench` boots one guest with 2 and one with 64 possible CPUs (2
//! online), and prints one `MEM {json}` line each.

use std::{
    fs::OpenOptions,
    os::unix::fs::{FileExt as _, OpenOptionsExt as _},
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::common::{map_memlock, TestFs};

/// `Percpu` of `/proc/meminfo`, in bytes.
fn percpu() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    text.lines()
        .find_map(|l| l.strip_prefix("Percpu:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|v| v * 1024)
        .context("no Percpu in /proc/meminfo")
}

fn possible_cpus() -> Result<u32> {
    // "0-63": the last number plus one.
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .context("reading /sys/devices/system/cpu/possible")?;
    let last = text.trim().rsplit(['-', ',']).next().unwrap_or("0");
    Ok(last.parse::<u32>().context("odd possible CPU list")? + 1)
}

/// One O_DIRECT 4 KiB write to each of `n` new files in `dir`.
fn write_files(dir: &std::path::Path, prefix: &str, n: u64) -> Result<()> {
    let block = vec![7u8; 8192];
    let offset = block.as_ptr().align_offset(4096);
    let aligned = &block[offset..offset + 4096];
    for i in 0..n {
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join(format!("{prefix}-{i}")))
            .context("creating a file")?;
        f.write_at(aligned, 0).context("writing a file")?;
    }
    Ok(())
}

/// Measures and prints one `MEM {json}` line.
pub fn section(files: u64, extra: u64) -> Result<()> {
    let cpus = possible_cpus()?;
    let fs = TestFs::mount(&[]);
    // Let the mount's own allocations settle before the baseline.
    std::thread::sleep(Duration::from_secs(2));
    let percpu0 = percpu()?;
    let running = super::start(super::Tracer::Fuselock, "3600").context("fuselock")?;
    let pid = running.child.id();
    std::thread::sleep(Duration::from_secs(2));
    let (idle_memlock, maps) = map_memlock(pid);
    let percpu1 = percpu()?;
    write_files(&fs.mountpoint, "mem", files)?;
    std::thread::sleep(Duration::from_secs(2));
    let (files_memlock, _) = map_memlock(pid);
    let percpu2 = percpu()?;
    // The cost of each further file, from a second batch.
    write_files(&fs.mountpoint, "more", extra)?;
    std::thread::sleep(Duration::from_secs(2));
    let (more_memlock, _) = map_memlock(pid);
    drop(running);
    println!(
        "MEM {}",
        serde_json::json!({
            "possible_cpus": cpus,
            "maps": maps,
            "files": files,
            "idle_memlock": idle_memlock,
            "idle_percpu": percpu1.saturating_sub(percpu0),
            "files_memlock": files_memlock,
            "files_percpu": percpu2.saturating_sub(percpu0),
            "extra_files": extra,
            "per_file_memlock": more_memlock.saturating_sub(files_memlock) / extra.max(1),
        })
    );
    Ok(())
}

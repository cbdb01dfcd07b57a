//! The VM runs' kernels, resolved on a thread of their own.
//!
//! A series kernel takes minutes to build from a cold cache, and most of
//! the suite leaves a core idle: qemu TCG runs a guest on one host thread,
//! fuzzing runs one target at a time, and downloads wait on the network.
//! So the kernels are downloaded and built beside the other steps, at the
//! lowest CPU priority so that the foreground keeps its core, and each VM
//! run starts as soon as its kernel is ready.

use std::{collections::BTreeMap, path::PathBuf, sync::mpsc, thread, time::Instant};

use anyhow::{anyhow, Context as _, Result};

use super::timings::Timings;
use crate::vm;

/// A kernel image and the name the VM runs give it.
pub(super) type Image = (PathBuf, String);

/// One kernel, as the thread reports it.
struct Resolved {
    name: String,
    secs: f64,
    result: Result<Image>,
}

pub(super) struct Kernels {
    ready: BTreeMap<String, Image>,
    reports: mpsc::Receiver<Resolved>,
    /// Reports taken off the channel and not yet into `ready`.
    received: Vec<Resolved>,
    /// Kernels asked for and not yet reported.
    pending: usize,
}

impl Kernels {
    /// Starts resolving `names` (each once): the ones that only need a
    /// download first, so that runs on them can start while the series
    /// kernels build.
    pub(super) fn start(names: impl IntoIterator<Item = String>) -> Result<Self> {
        let unique = each_once(names);
        let pending = unique.len();
        let (tx, reports) = mpsc::channel();
        thread::Builder::new()
            .name("kernels".to_owned())
            .spawn(move || {
                lowest_priority();
                let (built, downloaded): (Vec<String>, Vec<String>) =
                    unique.into_iter().partition(|n| vm::kernel_is_built(n));
                // A report per kernel; false once the run no longer wants more
                // (it ended, or a kernel failed and so will the run).
                let resolve = |name: &String| {
                    let started = Instant::now();
                    let result = vm::resolve_kernel(name);
                    let failed = result.is_err();
                    let report = Resolved {
                        name: name.clone(),
                        secs: started.elapsed().as_secs_f64(),
                        result,
                    };
                    tx.send(report).is_ok() && !failed
                };
                if !downloaded.iter().all(resolve) {
                    return;
                }
                // Every line's source before the first build: the download
                // and the extraction then overlap the steps before the VM
                // runs instead of lengthening the wait for the last line.
                prefetch_sources(&built);
                built.iter().all(resolve);
            })
            .context("starting the thread that resolves the kernels")?;
        Ok(Self {
            ready: BTreeMap::new(),
            reports,
            received: Vec::new(),
            pending,
        })
    }

    /// The image of `name`, if it is ready.
    pub(super) fn get(&self, name: &str) -> Option<&Image> {
        self.ready.get(name)
    }

    /// Whether every kernel asked for is ready (as of the last
    /// [`Kernels::poll`]): then nothing is being built beside the steps.
    pub(super) fn all_ready(&self) -> bool {
        self.pending == 0 && self.received.is_empty()
    }

    /// Takes in what the thread has finished, without waiting; a kernel that
    /// failed fails the run now, before another long boot.
    pub(super) fn poll(&mut self, timings: &mut Timings) -> Result<()> {
        while let Ok(report) = self.reports.try_recv() {
            self.pending -= 1;
            self.received.push(report);
        }
        for report in std::mem::take(&mut self.received) {
            self.take(report, timings)?;
        }
        Ok(())
    }

    /// Waits until the thread finishes another kernel (taken in by the next
    /// [`Kernels::poll`]).
    pub(super) fn wait(&mut self) -> Result<()> {
        if self.pending == 0 {
            return Err(anyhow!("waiting for a kernel no one is resolving"));
        }
        let report = self
            .reports
            .recv()
            .map_err(|_| anyhow!("the kernel thread ended early"))?;
        self.pending -= 1;
        self.received.push(report);
        Ok(())
    }

    fn take(&mut self, report: Resolved, timings: &mut Timings) -> Result<()> {
        let Resolved { name, secs, result } = report;
        timings.beside(&format!("kernel {name}"), secs, result.is_ok());
        let image = result.map_err(|e| e.context(format!("kernel {name}")))?;
        self.ready.insert(name, image);
        Ok(())
    }
}

/// Each of `names` once, in their order.
fn each_once(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut unique: Vec<String> = Vec::new();
    for name in names {
        if !unique.contains(&name) {
            unique.push(name);
        }
    }
    unique
}

/// Fetches the source of each line in `built`, once per line.
fn prefetch_sources(built: &[String]) {
    for name in built {
        if let Err(e) = vm::fetch_kernel_source(name) {
            eprintln!("kernel: fetching the source of {name} ahead failed ({e:#}); its build will try again");
        }
    }
}

/// Gives the calling thread, and every process it starts, the lowest CPU
/// priority (on Linux the nice value is a thread's own, and children
/// inherit it). Best effort: a build at normal priority is only slower.
fn lowest_priority() {
    // SAFETY: gettid and setpriority touch no memory of ours.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kernel_once_in_order() {
        let names = [
            "stock",
            "patched",
            "unpatched",
            "patched-v3:7.3",
            "debian:7.3",
            "debian:7.3-rt",
            "debian:7.3",
        ]
        .map(String::from);
        assert_eq!(
            each_once(names),
            [
                "stock",
                "patched",
                "unpatched",
                "patched-v3:7.3",
                "debian:7.3",
                "debian:7.3-rt",
            ]
        );
    }
}

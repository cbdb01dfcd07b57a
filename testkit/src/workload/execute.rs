//! Running a plan: the writer threads, released together, and their tally.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt;
use std::sync::{Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{LoadReport, Placement, Plan};
use crate::{aligned::AlignedBuf, lock};

/// Offset of thread `thread`'s `i`-th overwrite: the writes of all threads interleave over the
/// slots (`i * threads + thread`), so concurrent writers hit different blocks of the same file.
/// Always `offset + block <= slots * block`.
pub(super) fn slot_offset(thread: u32, i: u64, threads: u32, slots: u64, block: u64) -> u64 {
    let index = u128::from(i) * u128::from(threads) + u128::from(thread);
    // The remainder is below `slots`, a u64.
    let slot = (index % u128::from(slots.max(1))) as u64;
    slot * block
}

/// Issues one past-EOF write at the shared cursor.
///
/// The write at `x` of `count` bytes is past EOF iff `x + count > i_size` when the kernel looks.
/// Offsets merely increasing in the order threads *take* them is not enough: a later, higher
/// write can complete first and carry `i_size` past an earlier one that has not reached the
/// kernel yet, which then lands inside EOF. No choice of offsets avoids that while writes are
/// in flight together, so the cursor's lock is held across the `pwrite`: every write starts at
/// or beyond the end of all writes before it, and the kernel updates `i_size` before `pwrite`
/// returns. Past-EOF writes are serialised across threads (the kernel takes the inode lock
/// exclusively for them anyway); exactness matters more here than parallelism.
///
/// The cursor moves on by a whole block even after a failed or short write: `i_size` is then
/// at most `x + block`, so the next write is still at or past EOF.
fn past_eof_write(file: &File, buf: &[u8], next: &Mutex<u64>) -> (u64, io::Result<usize>) {
    let mut next = lock(next);
    let offset = *next;
    let result = file.write_at(buf, offset);
    *next = offset + buf.len() as u64;
    (offset, result)
}

/// Counts of one thread, or of the whole run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Tally {
    pub(super) writes: u64,
    pub(super) bytes: u64,
    pub(super) errors: u64,
    pub(super) short_writes: u64,
    pub(super) first_error: Option<String>,
}

impl Tally {
    /// Records the result of one write system call that asked for `want` bytes.
    pub(super) fn record(&mut self, result: io::Result<usize>, want: usize, at: Option<u64>) {
        self.writes += 1;
        let place = || match at {
            Some(offset) => format!("write at offset {offset}"),
            None => "append write".to_owned(),
        };
        match result {
            Ok(n) if n == want => self.bytes += n as u64,
            Ok(n) => {
                self.bytes += n as u64;
                self.errors += 1;
                self.short_writes += 1;
                self.first_error.get_or_insert_with(|| {
                    format!("{}: short write, {n} of {want} bytes", place())
                });
            }
            Err(err) => {
                self.errors += 1;
                self.first_error
                    .get_or_insert_with(|| format!("{}: {err}", place()));
            }
        }
    }

    pub(super) fn merge(&mut self, other: Tally) {
        self.writes += other.writes;
        self.bytes += other.bytes;
        self.errors += other.errors;
        self.short_writes += other.short_writes;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Everything one writer thread needs.
struct Worker<'a> {
    index: u32,
    threads: u32,
    count: u64,
    file: File,
    buf: AlignedBuf,
    placement: &'a Placement,
}

impl Worker<'_> {
    fn run(self) -> Tally {
        let mut tally = Tally::default();
        let buf = self.buf.as_slice();
        let want = buf.len();
        for i in 0..self.count {
            let (at, result) = match self.placement {
                Placement::Inside { slots } => {
                    let offset = slot_offset(self.index, i, self.threads, *slots, want as u64);
                    (Some(offset), self.file.write_at(buf, offset))
                }
                Placement::PastEof { next } => {
                    let (offset, result) = past_eof_write(&self.file, buf, next);
                    (Some(offset), result)
                }
                // `write(2)` on an O_APPEND descriptor; `&File`'s `write` is exactly one call.
                Placement::Append => (None, (&self.file).write(buf)),
            };
            tally.record(result, want, at);
        }
        tally
    }
}

pub(super) fn execute(
    plan: &Plan,
    placement: &Placement,
    files: Vec<File>,
    buffers: Vec<AlignedBuf>,
) -> anyhow::Result<LoadReport> {
    let gate = StartGate::new(plan.threads);
    let (total, elapsed) = thread::scope(|scope| -> anyhow::Result<(Tally, Duration)> {
        let mut handles = Vec::with_capacity(files.len());
        let work = files.into_iter().zip(buffers).zip(&plan.per_thread);
        for (index, ((file, buf), &count)) in (0..plan.threads).zip(work) {
            let worker = Worker {
                index,
                threads: plan.threads,
                count,
                file,
                buf,
                placement,
            };
            let gate = &gate;
            let spawned = thread::Builder::new()
                .name(format!("load-{index}"))
                .spawn_scoped(scope, move || {
                    if gate.arrive_and_wait() {
                        worker.run()
                    } else {
                        Tally::default()
                    }
                });
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(err) => {
                    // Release the threads already waiting so the scope can end.
                    gate.cancel();
                    return Err(err).context("cannot spawn a writer thread");
                }
            }
        }
        gate.open_when_all_arrived();
        let start = Instant::now();
        let mut total = Tally::default();
        for handle in handles {
            let tally = handle
                .join()
                .map_err(|_| anyhow::anyhow!("a writer thread panicked"))?;
            total.merge(tally);
        }
        Ok((total, start.elapsed()))
    })?;
    Ok(LoadReport {
        kind: plan.kind,
        writes: total.writes,
        bytes: total.bytes,
        errors: total.errors,
        short_writes: total.short_writes,
        threads: plan.threads,
        block_size: plan.block_size,
        elapsed,
        first_error: total.first_error,
    })
}

/// Lets all writers start at once, like a `Barrier`, but can be cancelled if spawning a thread
/// fails, so that the threads already spawned do not wait forever.
#[derive(Debug)]
struct StartGate {
    expected: u32,
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GateState {
    arrived: u32,
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Open,
    Cancelled,
}

impl StartGate {
    fn new(expected: u32) -> Self {
        Self {
            expected,
            state: Mutex::new(GateState {
                arrived: 0,
                phase: Phase::Waiting,
            }),
            changed: Condvar::new(),
        }
    }

    /// Called by each writer: returns `true` once the gate opens, `false` if cancelled.
    fn arrive_and_wait(&self) -> bool {
        let mut state = lock(&self.state);
        state.arrived += 1;
        self.changed.notify_all();
        while state.phase == Phase::Waiting {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.phase == Phase::Open
    }

    /// Called by the coordinator: waits until every writer is ready, then releases them all.
    fn open_when_all_arrived(&self) {
        let mut state = lock(&self.state);
        while state.arrived < self.expected && state.phase == Phase::Waiting {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.phase == Phase::Waiting {
            state.phase = Phase::Open;
        }
        self.changed.notify_all();
    }

    fn cancel(&self) {
        lock(&self.state).phase = Phase::Cancelled;
        self.changed.notify_all();
    }
}

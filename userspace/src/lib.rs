//! The `fuselock` library: everything the `fuselock` binary does, so that
//! the binary only parses its arguments, dispatches and maps errors to exit
//! statuses (`src/main.rs`).
//!
//! The modules, from the kernel up:
//! - kernel side: `probes` (load and attach, the probe table), `kretprobe`,
//!   `btf` and `offsets`, `preflight`, `preempt`, `privileges`, `mounts`,
//!   `procfs`, `misses`;
//! - collection: `batch` (whole-map reads) and `collector` (snapshots, its
//!   caches and janitor);
//! - model: `snapshot`, `verdict`;
//! - wire formats: `stream` (the JSON lines), `replay`, `table`, `escape`;
//! - commands: `stat`, `verify`, `top`, `export`, `doctor`, `demo`,
//!   `session` (what they share), `cli` (their flags), `version`;
//! - the test kit: `testfs` (a FUSE server), `workload` and `exercise`
//!   (writers).

pub mod batch;
pub mod btf;
pub mod cli;
pub mod collector;
pub mod demo;
pub mod doctor;
pub mod escape;
pub mod exercise;
pub mod export;
pub mod kretprobe;
pub mod misses;
pub mod mounts;
#[cfg(test)]
pub mod native;
pub mod offsets;
pub mod preempt;
pub mod preflight;
pub mod privileges;
pub mod probes;
pub mod procfs;
pub mod replay;
pub mod session;
pub mod snapshot;
pub mod stat;
pub mod stream;
pub mod table;
pub mod testfs;
pub mod top;
pub mod verdict;
pub mod verify;
pub mod version;
pub mod workload;

/// A mistake in what the user asked for (exit status 3), as opposed to a
/// failure to do it (4).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Exit statuses, documented in the README.
pub mod exit {
    /// Bad usage: unknown flag, bad value.
    pub const USAGE: u8 = 3;
    /// fuselock could not do its job: privileges, kernel support, I/O.
    pub const FAILURE: u8 = 4;
}

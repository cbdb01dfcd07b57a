//! The `fuselock` library: everything the `fuselock` binary does, so that
//! the binary only parses its arguments, dispatches and maps errors to exit
//! statuses (`src/main.rs`).
//!
//! The layers, from the bottom up; a module imports only from layers below
//! its own:
//! - [`model`]: the typed snapshot and deltas, and the verdict (it imports
//!   nothing of fuselock's);
//! - [`kernel`]: load and attach the programs, the probe table, kretprobes,
//!   BTF and struct offsets, preflight checks, privileges, mounts, `/proc`;
//! - [`collect`]: reading the maps into the model's snapshots, with the change
//!   marks, caches and the janitor that clears what unmounts leave behind;
//! - [`wire`]: the model as JSON lines, their replay, the text table;
//! - [`cli`]: every command's flags, parsed and checked in one place;
//! - [`commands`]: stat, verify, top, export, doctor, demo.
//!
//! Beside them, used by `demo`, `verify --exercise` and the tests but never
//! by the monitoring path: the test kit, `testfs` (a FUSE server),
//! `workload` and `exercise` (writers). [`escape`] and [`version`] are leaves
//! any layer may use.

pub mod cli;
pub mod collect;
pub mod commands;
pub mod kernel;
pub mod model;
#[cfg(test)]
pub mod native;
pub mod version;
pub mod wire;

/// Exit statuses, documented in the README.
pub mod exit {
    /// Bad usage: unknown flag, bad value.
    pub const USAGE: u8 = 3;
    /// fuselock could not do its job: privileges, kernel support, I/O.
    pub const FAILURE: u8 = 4;
}

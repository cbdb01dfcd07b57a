//! The `fuselock` library: everything the `fuselock` binary does, so that
//! the binary only parses its arguments, dispatches and maps errors to exit
//! statuses (`src/main.rs`).
//!
//! The layers, from the bottom up; imports point down, never up:
//! - [`model`]: the typed snapshot, its counts and the verdict (it imports
//!   nothing of fuselock's but `probes-common`'s types);
//! - [`kernel`], beside it: load and attach the programs, the probe table,
//!   kretprobes, BTF and struct offsets, preflight checks, privileges, the
//!   mount table;
//! - [`collect`]: reading the maps through `kernel` into the model's
//!   snapshots, with the change marks, caches and the janitor that deletes
//!   what unmounts leave behind;
//! - [`wire`]: the model as JSON lines (whole and delta), their replay, the
//!   text table;
//! - [`cli`]: every command's flags, parsed and checked in one place;
//! - [`commands`]: stat, verify, top, export, doctor, demo.
//!
//! [`http`], the exporter's HTTP stack (server, web config, access, reload),
//! is a leaf that knows nothing of the layers above: `commands::export`
//! hands it a router.
//!
//! Two crates sit beside the library: `fuselock-base` (the usage error,
//! terminal escaping, `/proc`), which any layer may use, and
//! `fuselock-testkit` (the FUSE test server, the load generator, the
//! exercise writer), which only `cli`, `demo`, `verify --exercise` and the
//! binary's `testfs` and `load` use, never the monitoring path. [`version`]
//! is a leaf. [`test_rig`] (test support: the real maps, filled natively as the
//! programs fill them) is built only for tests and with the `test-support`
//! feature.

pub mod cli;
pub mod collect;
pub mod commands;
pub mod http;
pub mod kernel;
pub mod model;
#[cfg(any(test, feature = "test-support"))]
pub mod test_rig;
pub mod version;
pub mod wire;

/// Exit statuses, documented in the README.
pub mod exit {
    /// Bad usage: unknown flag, bad value.
    pub const USAGE: u8 = 3;
    /// fuselock could not do its job: privileges, kernel support, I/O.
    pub const FAILURE: u8 = 4;
}

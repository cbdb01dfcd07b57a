//! The model every output consumes: the [`counts`] containers (per mode, per
//! reason, histograms) indexed by `probes-common`'s enums, the typed [`snapshot::Snapshot`] (one
//! consistent reading of every counter, and the difference of two) and the
//! [`verdict`], a pure function of snapshots.
//!
//! It depends on nothing of fuselock but `probes-common`'s types.

pub mod counts;
pub mod snapshot;
pub mod verdict;
pub mod workload;

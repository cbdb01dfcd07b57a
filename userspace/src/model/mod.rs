//! The model every output consumes: the typed [`snapshot::Snapshot`] (one
//! consistent reading of every counter, and the difference of two) and the
//! [`verdict`], a pure function of snapshots.
//!
//! It depends on nothing of fuselock but `probes-common`'s types.

pub mod snapshot;
pub mod verdict;

//! The kernel side: everything that touches the running kernel, below the
//! collection layer. Loading and attaching the programs (`probes`, with
//! `kretprobe` for what aya's kprobes lack), the struct offsets they need
//! (`btf`, `offsets`), the checks made before loading (`preflight`,
//! `preempt`), what the kernel reports it skipped (`misses`), privileges,
//! and the mount table (`mounts`).
//!
//! Nothing here knows about snapshots or commands.

pub mod btf;
pub mod kretprobe;
pub mod memory;
pub mod misses;
pub mod mounts;
pub mod offsets;
pub mod preempt;
pub mod preflight;
pub mod privileges;
pub mod probes;

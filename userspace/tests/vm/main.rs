//! End-to-end tests on a real kernel with kprobes: run inside the VM by
//! `cargo xtask test` (they are `#[ignore]`d on the host, which cannot attach
//! probes). Each test mounts `fuselock testfs`, runs a workload of known
//! shape under `fuselock stat --json`, and asserts the **exact** counts.
//!
//! Every kind of write uses a different N, so a swapped reason cannot pass.
//! [`harness`] holds what the tests share; each other module is one topic.
//! Inside a topic, a test's tier is its module, which `cargo xtask test`
//! selects by path: `core_tier` runs on every kernel of the matrix,
//! `series_tier` also on the series kernels, `scale_tier` in a guest with
//! many CPUs; the others run where the whole suite does.

#[path = "../common/mod.rs"]
mod common;
mod harness;

mod contention;
mod counts;
mod export;
mod faults;
mod lifecycle;
mod passthrough_hp;
mod privileges;
mod safety;
mod scale;
mod top;
mod verdicts;
mod workloads;

// The topic modules name the harness and the common helpers through the
// crate root (`super::kernel`, `super::fuselock`).
use common::fuselock;
use harness::*;

//! End-to-end tests on a real kernel with kprobes: run inside the VM by
//! `cargo xtask test` (they are `#[ignore]`d on the host, which cannot attach
//! probes). Each test mounts `fuselock testfs`, runs a workload of known
//! shape under `fuselock stat --json`, and asserts the **exact** counts.
//!
//! Every kind of write uses a different N, so a swapped reason cannot pass.
//! [`harness`] holds what the tests share; each other module is one topic.

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

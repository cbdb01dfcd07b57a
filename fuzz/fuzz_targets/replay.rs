//! Arbitrary bytes as a recorded snapshot stream (`fuselock --replay FILE`).
//!
//! Whatever the bytes, `replay::parse` must return (an error is fine), never
//! panic, hang or run out of memory.

#![no_main]
// The included modules are compiled for the parts this target calls.
#![allow(dead_code)]

use libfuzzer_sys::fuzz_target;

#[path = "../../userspace/src/replay.rs"]
mod replay;
#[path = "../../userspace/src/snapshot.rs"]
mod snapshot;
#[path = "../../userspace/src/stream.rs"]
mod stream;

/// The shape of `fuselock::UsageError` (userspace/src/main.rs), which
/// `replay.rs` names as `crate::UsageError`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fuzz_target!(|data: &[u8]| {
    let _ = replay::parse(data, "fuzz");
});

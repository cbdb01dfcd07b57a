//! Arbitrary bytes as a recorded snapshot stream (`fuselock --replay FILE`).
//!
//! Whatever the bytes, `replay::parse` must return (an error is fine), never
//! panic, hang or run out of memory.

#![no_main]
// The included modules are compiled for the parts this target calls.
#![allow(dead_code)]

use libfuzzer_sys::fuzz_target;

// The same module paths as in the library (`crate::model::snapshot`, ...),
// without the rest of those layers. On an inline module, `#[path]` names the
// folder its file modules are read from.
#[path = "../../userspace/src/model"]
mod model {
    pub mod counts;
    pub mod snapshot;
    pub mod verdict;
    pub mod workload;
}
#[path = "../../userspace/src/wire"]
mod wire {
    pub mod json;
    pub mod replay;
    pub mod stream;
}

fuzz_target!(|data: &[u8]| {
    let _ = wire::replay::parse(data, "fuzz");
});

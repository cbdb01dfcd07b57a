//! Types and pure logic shared by fuselock's eBPF programs and its userspace.
//!
//! Everything the kernel side writes and userspace reads is defined here once:
//! the start-up configuration handed to the programs, the map keys and values,
//! and the classifier that decides why a FUSE write may not take the inode
//! lock shared. All types are `#[repr(C)]` with explicit padding so both sides
//! agree on the layout byte for byte.
#![no_std]

pub mod classify;
pub mod config;
pub mod dev;
pub mod hist;
pub mod maps;
pub mod rwsem;

pub use classify::{classify, Reason, Reasons, WriteFacts};
pub use config::Config;
pub use dev::Dev;
pub use maps::{
    FileStats, Health, Histograms, InFlight, InodeKey, InodeName, LockMode, OpenStats, TaskState,
    WritePath, WriteStats, WriterKey, WriterStats,
};

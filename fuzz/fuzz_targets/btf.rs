//! Arbitrary bytes as BTF (`userspace/src/kernel/btf`), then the lookups fuselock makes.
//!
//! The input is a base blob, optionally followed by split blobs: each blob ends
//! where its header says its last section ends, and whatever follows is parsed
//! as split BTF on top of everything before it (as a module's BTF is on
//! vmlinux's). A single valid blob is therefore a valid input, and so is a
//! concatenation of vmlinux-like and module-like blobs.
//!
//! Whatever the bytes, parsing and every lookup must return (an error is fine),
//! never panic, hang or use memory out of proportion to the input.

#![no_main]
// The included module is compiled whole; the fuzz target calls only part of it.
#![allow(dead_code)]

use libfuzzer_sys::fuzz_target;

#[path = "../../userspace/src/kernel/btf/mod.rs"]
mod btf;

use btf::Btf;

/// At most this many blobs per input: a base and split BTF stacked on it twice
/// (split-on-split is allowed by the format).
const MAX_LAYERS: usize = 3;

/// The member paths `userspace/src/kernel/offsets.rs` resolves, plus a few that the
/// seed corpus's small hand-made BTF has.
const PATHS: &[(&str, &[&str])] = &[
    ("kiocb", &["ki_filp"]),
    ("kiocb", &["ki_pos"]),
    ("kiocb", &["ki_flags"]),
    ("file", &["f_inode"]),
    ("file", &["private_data"]),
    ("file", &["f_path", "dentry"]),
    ("file", &["f_path"]),
    ("file", &[]),
    ("dentry", &["d_name", "name"]),
    ("inode", &["i_rwsem"]),
    ("inode", &["i_size"]),
    ("inode", &["i_ino"]),
    ("inode", &["i_sb"]),
    ("super_block", &["s_dev"]),
    ("rw_semaphore", &["count"]),
    ("rw_semaphore", &["owner"]),
    ("iov_iter", &["count"]),
    ("iov_iter", &["__ubuf_iovec", "iov_len"]),
    ("fuse_file", &["open_flags"]),
    ("fuse_file", &["passthrough"]),
    ("fuse_file", &["fh"]),
    ("holder", &["grid"]),
    ("holder", &["p", "mnt"]),
    ("", &[""]),
];

const FUNCS: &[&str] = &["fuse_file_write_iter", "vfs_write", "file"];

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut stack: Option<Btf> = None;
    for _ in 0..MAX_LAYERS {
        let (blob, after) = rest.split_at(blob_len(rest).min(rest.len()));
        let parsed = match &stack {
            None => Btf::parse(blob),
            Some(base) => Btf::parse_split(blob, base),
        };
        let Ok(btf) = parsed else { break };
        exercise(&btf);
        stack = Some(btf);
        if after.is_empty() {
            break;
        }
        rest = after;
    }
});

/// Every public query; results do not matter, only that they return.
fn exercise(btf: &Btf) {
    for &(name, path) in PATHS {
        let _ = btf.member_offset(name, path);
        let _ = btf.member_size(name, path);
        let _ = btf.has_struct(name);
    }
    for name in FUNCS {
        let _ = btf.has_func(name);
    }
    let _ = format!("{btf:?}");
}

/// Where the blob at the start of `bytes` ends by its own header: the end of its
/// header or of its furthest section, whichever is later. Garbage gives garbage,
/// which is fine: the parser judges the blob.
fn blob_len(bytes: &[u8]) -> usize {
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .map_or(0, |w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize)
    };
    let hdr_len = word(4);
    let type_end = word(8).saturating_add(word(12));
    let str_end = word(16).saturating_add(word(20));
    hdr_len.saturating_add(type_end.max(str_end)).max(24)
}

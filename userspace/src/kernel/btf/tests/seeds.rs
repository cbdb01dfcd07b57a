//! The seeds of the `btf` fuzz target, and proof that they are what they claim.

use super::*;

/// Every struct and member that `offsets::resolve` looks up, laid out like the
/// kernel's (anonymous unions, typedefs, an embedded rwsem), in a few hundred
/// bytes; `struct fuse_file` goes in a module-like split BTF.
fn offsets_like() -> (Builder, Builder) {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    let uint = b.int("unsigned int", 4);
    let long = b.int("long int", 8);
    let ulong = b.int("long unsigned int", 8);
    let uchar = b.int("unsigned char", 1);
    let loff_t = b.typedef("loff_t", long);
    let dev_t = b.typedef("dev_t", uint);
    let void_ptr = b.ptr(0);
    let const_uchar = b.constant(uchar);
    let name_ptr = b.ptr(const_uchar);

    // typedef struct { long counter; } atomic_long_t;
    let counter = b.structure("", 8, &[("counter", long, 0)]);
    let atomic_long_t = b.typedef("atomic_long_t", counter);
    let rwsem = b.structure(
        "rw_semaphore",
        40,
        &[("count", atomic_long_t, 0), ("owner", atomic_long_t, 64)],
    );
    // struct qstr { union { struct { u32 hash, len; }; u64 hash_len; }; const unsigned char *name; };
    let hash_len = b.structure("", 8, &[("hash", uint, 0), ("len", uint, 32)]);
    let hash_union = b.union("", 8, &[("", hash_len, 0), ("hash_len", ulong, 0)]);
    let qstr = b.structure("qstr", 16, &[("", hash_union, 0), ("name", name_ptr, 64)]);
    b.structure("dentry", 48, &[("d_flags", uint, 0), ("d_name", qstr, 256)]);
    let sb = b.structure(
        "super_block",
        24,
        &[("s_list", void_ptr, 0), ("s_dev", dev_t, 64)],
    );
    let sb_ptr = b.ptr(sb);
    let inode = b.structure(
        "inode",
        104,
        &[
            ("i_mode", uint, 0),
            ("i_sb", sb_ptr, 64),
            ("i_ino", ulong, 128),
            ("i_size", loff_t, 192),
            ("i_rwsem", rwsem, 256),
        ],
    );
    let inode_ptr = b.ptr(inode);
    let path = b.structure(
        "path",
        16,
        &[("mnt", void_ptr, 0), ("dentry", void_ptr, 64)],
    );
    let const_path = b.constant(path);
    let f_path = b.union("", 16, &[("f_path", const_path, 0), ("__f_path", path, 0)]);
    let file = b.structure(
        "file",
        48,
        &[
            ("f_count", long, 0),
            ("private_data", void_ptr, 64),
            ("", f_path, 128),
            ("f_inode", inode_ptr, 256),
            ("f_pos", loff_t, 320),
        ],
    );
    let file_ptr = b.ptr(file);
    b.structure(
        "kiocb",
        48,
        &[
            ("ki_filp", file_ptr, 0),
            ("ki_pos", loff_t, 64),
            ("ki_complete", void_ptr, 128),
            ("ki_flags", int, 256),
        ],
    );
    let size_t = b.typedef("size_t", ulong);
    let counted = b.structure("", 16, &[("ubuf", void_ptr, 0), ("count", size_t, 64)]);
    b.structure(
        "iov_iter",
        40,
        &[
            ("iter_type", uchar, 0),
            ("", counted, 64),
            ("nr_segs", ulong, 192),
        ],
    );
    b.func("vfs_write", long);

    let mut module = Builder::split_on(&b);
    let u32_t = module.typedef("u32", uint);
    let backing = module.structure("fuse_backing", 8, &[("file", file_ptr, 0)]);
    let backing_ptr = module.ptr(backing);
    module.structure(
        "fuse_file",
        32,
        &[
            ("fh", ulong, 0),
            ("open_flags", u32_t, 64),
            ("passthrough", backing_ptr, 128),
        ],
    );
    module.func("fuse_file_write_iter", long);
    (b, module)
}

/// Writes the seed inputs of the `btf` fuzz target (see `fuzz/fuzz_targets/btf.rs`:
/// a base blob, then split blobs stacked on it) into `fuzz/corpus/btf/`. Run it
/// after changing the builders above, then minimise the corpus (docs/development.md, "Fuzzing"):
/// `cargo test -p fuselock write_fuzz_seeds -- --ignored`.
#[test]
#[ignore = "writes files into fuzz/corpus"]
fn write_fuzz_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/btf");
    std::fs::create_dir_all(&dir).unwrap();
    let (vmlinux, fuse) = offsets_like();
    let (_, _, base, module) = split_pair();
    let mut second = Builder::split_on(&module);
    second.raw(1, info(KIND_STRUCT, false, 1), 4, &[0, 1, 0]);
    let mut bitfields = Builder::new();
    let uint = bitfields.int("unsigned int", 4);
    let name = bitfields.str("unsigned int");
    let three_bits = bitfields.raw(name, info(KIND_INT, false, 0), 4, &[3]);
    bitfields.bitfield_struct(
        "kiocb",
        8,
        &[("ki_pos", uint, 0, 3), ("ki_flags", uint, 32, 0)],
    );
    bitfields.structure(
        "file",
        8,
        &[("f_inode", three_bits, 0), ("private_data", uint, 4)],
    );

    let seeds: [(&str, Vec<u8>); 6] = [
        ("seed-offsets-vmlinux", vmlinux.build()),
        (
            "seed-offsets-vmlinux-and-fuse",
            [vmlinux.build(), fuse.build()].concat(),
        ),
        ("seed-kernel-like", base.build()),
        ("seed-split", [base.build(), module.build()].concat()),
        (
            "seed-split-on-split",
            [base.build(), module.build(), second.build()].concat(),
        ),
        ("seed-bitfields", bitfields.build()),
    ];
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// The offsets seed is what it claims to be: every lookup fuselock makes succeeds.
#[test]
fn offsets_seed_resolves_every_lookup() {
    let (vmlinux, fuse) = offsets_like();
    let base = vmlinux.parse();
    let btf = Btf::parse_split(&fuse.build(), &base).unwrap();
    for (name, path, size) in [
        ("kiocb", &["ki_filp"][..], 8),
        ("kiocb", &["ki_pos"], 8),
        ("kiocb", &["ki_flags"], 4),
        ("file", &["f_inode"], 8),
        ("file", &["private_data"], 8),
        ("file", &["f_path", "dentry"], 8),
        ("dentry", &["d_name", "name"], 8),
        ("inode", &["i_size"], 8),
        ("inode", &["i_ino"], 8),
        ("inode", &["i_sb"], 8),
        ("inode", &["i_rwsem"], 40),
        ("super_block", &["s_dev"], 4),
        ("rw_semaphore", &["count"], 8),
        ("rw_semaphore", &["owner"], 8),
        ("iov_iter", &["count"], 8),
        ("fuse_file", &["open_flags"], 4),
        ("fuse_file", &["passthrough"], 8),
    ] {
        assert_eq!(
            btf.member_size(name, path).unwrap(),
            size,
            "{name}.{path:?}"
        );
    }
    assert_eq!(btf.member_offset("inode", &["i_rwsem"]).unwrap(), 32);
    assert_eq!(
        btf.member_offset("dentry", &["d_name", "name"]).unwrap(),
        40
    );
    assert!(btf.has_func("fuse_file_write_iter") && !base.has_struct("fuse_file"));
}

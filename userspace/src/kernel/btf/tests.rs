//! Tests: hand-built blobs for the format's corners and malformed input, then the
//! host's own `/sys/kernel/btf`.

use std::{
    path::Path,
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

use super::{lookup::MAX_DEFINITIONS, parse::MAX_NAME_LEN, types::Kind, Btf, BtfError};

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;

/// Assembles BTF blobs type by type, so each test states exactly what the parser sees.
struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
    /// Where `strings` starts in the combined string space (non-zero for split BTF).
    first_str_off: u32,
    next_id: u32,
}

impl Builder {
    fn new() -> Self {
        Self {
            types: Vec::new(),
            strings: vec![0],
            first_str_off: 0,
            next_id: 1,
        }
    }

    /// A builder for split BTF continuing `base`'s ids and strings.
    fn split_on(base: &Builder) -> Self {
        Self {
            types: Vec::new(),
            strings: Vec::new(),
            first_str_off: base.first_str_off + len_u32(&base.strings),
            next_id: base.next_id,
        }
    }

    /// Adds a string, returning its offset; "" is offset 0 (the base's empty string).
    fn str(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let offset = self.first_str_off + len_u32(&self.strings);
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        offset
    }

    /// Appends a raw record and returns its id.
    fn raw(&mut self, name_off: u32, info: u32, size_or_type: u32, extra: &[u32]) -> u32 {
        for word in [name_off, info, size_or_type].iter().chain(extra) {
            self.types.extend_from_slice(&word.to_le_bytes());
        }
        self.next_id += 1;
        self.next_id - 1
    }

    fn ty(&mut self, name: &str, kind: u32, vlen: u32, size_or_type: u32, extra: &[u32]) -> u32 {
        let name_off = self.str(name);
        self.raw(name_off, info(kind, false, vlen), size_or_type, extra)
    }

    fn int(&mut self, name: &str, size: u32) -> u32 {
        self.ty(name, KIND_INT, 0, size, &[size * 8])
    }

    fn ptr(&mut self, target: u32) -> u32 {
        self.ty("", KIND_PTR, 0, target, &[])
    }

    fn typedef(&mut self, name: &str, target: u32) -> u32 {
        self.ty(name, KIND_TYPEDEF, 0, target, &[])
    }

    fn constant(&mut self, target: u32) -> u32 {
        self.ty("", KIND_CONST, 0, target, &[])
    }

    fn volatile(&mut self, target: u32) -> u32 {
        self.ty("", KIND_VOLATILE, 0, target, &[])
    }

    fn array(&mut self, elem: u32, nelems: u32) -> u32 {
        self.ty("", KIND_ARRAY, 0, 0, &[elem, elem, nelems])
    }

    fn fwd(&mut self, name: &str) -> u32 {
        self.ty(name, KIND_FWD, 0, 0, &[])
    }

    fn func(&mut self, name: &str, ret: u32) -> u32 {
        let proto = self.ty("", KIND_FUNC_PROTO, 0, ret, &[]);
        self.ty(name, KIND_FUNC, 0, proto, &[])
    }

    /// A struct with `(name, type, bit offset)` members.
    fn structure(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
        self.composite(KIND_STRUCT, name, size, members)
    }

    fn union(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
        self.composite(KIND_UNION, name, size, members)
    }

    fn composite(&mut self, kind: u32, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
        let mut extra = Vec::new();
        for &(member, ty, bit_offset) in members {
            extra.extend([self.str(member), ty, bit_offset]);
        }
        self.ty(name, kind, len_u32(members), size, &extra)
    }

    /// A kind_flag struct with `(name, type, bit offset, bitfield size)` members.
    fn bitfield_struct(&mut self, name: &str, size: u32, members: &[(&str, u32, u32, u32)]) -> u32 {
        let mut extra = Vec::new();
        for &(member, ty, bit_offset, bits) in members {
            extra.extend([self.str(member), ty, bits << 24 | bit_offset]);
        }
        let name_off = self.str(name);
        let info = info(KIND_STRUCT, true, len_u32(members));
        self.raw(name_off, info, size, &extra)
    }

    fn build(&self) -> Vec<u8> {
        blob(&self.types, &self.strings)
    }

    fn parse(&self) -> Btf {
        Btf::parse(&self.build()).expect("test BTF parses")
    }
}

fn info(kind: u32, kind_flag: bool, vlen: u32) -> u32 {
    u32::from(kind_flag) << 31 | kind << 24 | vlen
}

fn len_u32<T>(items: &[T]) -> u32 {
    u32::try_from(items.len()).expect("test data fits u32")
}

/// A BTF blob with a 24-byte header, the type section, then the string section.
fn blob(types: &[u8], strings: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
    out.extend_from_slice(&[1, 0]);
    for word in [24, 0, len_u32(types), len_u32(types), len_u32(strings)] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(types);
    out.extend_from_slice(strings);
    out
}

/// Overwrites the little-endian `u32` at `offset`.
fn set_u32(bytes: &mut [u8], offset: usize, value: u32) {
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

// Header field offsets.
const HDR_LEN: usize = 4;
const TYPE_OFF: usize = 8;
const TYPE_LEN: usize = 12;
const STR_OFF: usize = 16;
const STR_LEN: usize = 20;

/// Ids of the types in [`kernel_like`], for tests that refer to them.
struct Ids {
    long: u32,
    void_ptr: u32,
    path: u32,
}

/// A miniature of the kernel's `struct file`, `struct path` and `struct iov_iter`,
/// including their anonymous unions, typedefs and qualifiers.
fn kernel_like() -> (Builder, Ids) {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    let long = b.int("long int", 8);
    let ulong = b.int("long unsigned int", 8);
    let uchar = b.int("unsigned char", 1);
    let loff_t = b.typedef("loff_t", long);
    let size_t = b.typedef("size_t", ulong);
    let void_ptr = b.ptr(0);

    // struct path { void *mnt; void *dentry; };
    let path = b.structure(
        "path",
        16,
        &[("mnt", void_ptr, 0), ("dentry", void_ptr, 64)],
    );
    let const_path = b.constant(path);
    // struct file {
    //     int f_lock; void *private_data;
    //     union { const struct path f_path; struct path __f_path; };
    //     loff_t f_pos; volatile unsigned char f_name[12];
    // };
    let anon = b.union("", 16, &[("f_path", const_path, 0), ("__f_path", path, 0)]);
    let volatile_uchar = b.volatile(uchar);
    let name_array = b.array(volatile_uchar, 12);
    b.structure(
        "file",
        48,
        &[
            ("f_lock", int, 0),
            ("private_data", void_ptr, 64),
            ("", anon, 128),
            ("f_pos", loff_t, 256),
            ("f_name", name_array, 320),
        ],
    );

    // struct iov_iter {
    //     u8 iter_type; size_t iov_offset;
    //     union {
    //         struct iovec __ubuf_iovec;
    //         struct { union { void *__iov; void *ubuf; }; size_t count; };
    //     };
    //     unsigned long nr_segs;
    // };
    let iovec = b.structure(
        "iovec",
        16,
        &[("iov_base", void_ptr, 0), ("iov_len", size_t, 64)],
    );
    let ptrs = b.union("", 8, &[("__iov", void_ptr, 0), ("ubuf", void_ptr, 0)]);
    let counted = b.structure("", 16, &[("", ptrs, 0), ("count", size_t, 64)]);
    let outer = b.union("", 16, &[("__ubuf_iovec", iovec, 0), ("", counted, 0)]);
    b.structure(
        "iov_iter",
        40,
        &[
            ("iter_type", uchar, 0),
            ("iov_offset", size_t, 64),
            ("", outer, 128),
            ("nr_segs", ulong, 256),
        ],
    );

    // typedef struct path path_t; struct holder { const path_t p; int grid[2][3]; };
    let path_t = b.typedef("path_t", path);
    let const_path_t = b.constant(path_t);
    let row = b.array(int, 3);
    let grid = b.array(row, 2);
    b.structure("holder", 40, &[("p", const_path_t, 0), ("grid", grid, 128)]);

    b.func("vfs_write", long);
    let ids = Ids {
        long,
        void_ptr,
        path,
    };
    (b, ids)
}

fn sample() -> Btf {
    kernel_like().0.parse()
}

#[test]
fn direct_members() {
    let btf = sample();
    assert_eq!(btf.member_offset("file", &["f_lock"]).unwrap(), 0);
    assert_eq!(btf.member_offset("file", &["private_data"]).unwrap(), 8);
    assert_eq!(btf.member_size("file", &["f_lock"]).unwrap(), 4);
    // Pointer size comes from `long int`.
    assert_eq!(btf.member_size("file", &["private_data"]).unwrap(), 8);
    assert_eq!(btf.member_offset("iov_iter", &["nr_segs"]).unwrap(), 32);
}

#[test]
fn member_in_anonymous_union() {
    let btf = sample();
    assert_eq!(btf.member_offset("file", &["f_path"]).unwrap(), 16);
    assert_eq!(btf.member_offset("file", &["__f_path"]).unwrap(), 16);
    assert_eq!(btf.member_size("file", &["f_path"]).unwrap(), 16);
    // Descends through `const struct path`.
    assert_eq!(
        btf.member_offset("file", &["f_path", "dentry"]).unwrap(),
        24
    );
    assert_eq!(btf.member_size("file", &["f_path", "dentry"]).unwrap(), 8);
}

#[test]
fn member_in_nested_anonymous_members() {
    let btf = sample();
    // union -> struct -> member, like iov_iter.count on 6.x kernels.
    assert_eq!(btf.member_offset("iov_iter", &["count"]).unwrap(), 24);
    assert_eq!(btf.member_size("iov_iter", &["count"]).unwrap(), 8);
    // union -> struct -> union -> member.
    assert_eq!(btf.member_offset("iov_iter", &["ubuf"]).unwrap(), 16);
    assert_eq!(
        btf.member_offset("iov_iter", &["__ubuf_iovec", "iov_len"])
            .unwrap(),
        24
    );
}

#[test]
fn typedef_and_qualified_member_types() {
    let btf = sample();
    // loff_t -> long int
    assert_eq!(btf.member_size("file", &["f_pos"]).unwrap(), 8);
    assert_eq!(btf.member_offset("file", &["f_pos"]).unwrap(), 32);
    // const path_t -> path_t -> struct path
    assert_eq!(btf.member_offset("holder", &["p", "dentry"]).unwrap(), 8);
    assert_eq!(btf.member_size("holder", &["p"]).unwrap(), 16);
}

#[test]
fn array_member_sizes() {
    let btf = sample();
    // volatile unsigned char[12]
    assert_eq!(btf.member_size("file", &["f_name"]).unwrap(), 12);
    // int[2][3]
    assert_eq!(btf.member_size("holder", &["grid"]).unwrap(), 24);
    assert_eq!(btf.member_offset("holder", &["grid"]).unwrap(), 16);
}

#[test]
fn empty_path_is_the_struct_itself() {
    let btf = sample();
    assert_eq!(btf.member_offset("file", &[]).unwrap(), 0);
    assert_eq!(btf.member_size("file", &[]).unwrap(), 48);
    assert_eq!(btf.member_size("iov_iter", &[]).unwrap(), 40);
}

#[test]
fn missing_member_error_names_struct_and_member() {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    b.structure("fuse_file", 8, &[("fh", int, 0)]);
    let err = b
        .parse()
        .member_offset("fuse_file", &["passthrough"])
        .unwrap_err();
    assert!(matches!(err, BtfError::MemberNotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "struct fuse_file has no member `passthrough`"
    );

    let err = sample()
        .member_offset("file", &["f_path", "nope"])
        .unwrap_err();
    assert_eq!(err.to_string(), "struct file has no member `f_path.nope`");
    // An empty name must not match an anonymous member.
    let err = sample().member_offset("file", &[""]).unwrap_err();
    assert!(matches!(err, BtfError::MemberNotFound { .. }), "{err:?}");
}

/// `enum { NAME = value, ... }` of 4 bytes; `signed` sets the kind flag.
fn enumeration(b: &mut Builder, name: &str, signed: bool, values: &[(&str, u32)]) -> u32 {
    let mut extra = Vec::new();
    for (n, v) in values {
        extra.push(b.str(n));
        extra.push(*v);
    }
    let name_off = b.str(name);
    b.raw(
        name_off,
        info(KIND_ENUM, signed, len_u32(values)),
        4,
        &extra,
    )
}

#[test]
fn enumerators_of_anonymous_enums_are_found() {
    let (mut b, _) = kernel_like();
    // The kernel's `enum { FUSE_I_ADVISE_RDPLUS, ..., FUSE_I_CACHE_IO_MODE }`.
    enumeration(
        &mut b,
        "",
        false,
        &[("FUSE_I_ADVISE_RDPLUS", 0), ("FUSE_I_CACHE_IO_MODE", 5)],
    );
    enumeration(&mut b, "signs", true, &[("MINUS_ONE", u32::MAX)]);
    let btf = b.parse();
    assert_eq!(btf.enumerator("FUSE_I_CACHE_IO_MODE").unwrap(), 5);
    assert_eq!(btf.enumerator("FUSE_I_ADVISE_RDPLUS").unwrap(), 0);
    assert_eq!(btf.enumerator("MINUS_ONE").unwrap(), -1);
    // A prefix of a name is not the name.
    let err = btf.enumerator("FUSE_I_CACHE").unwrap_err();
    assert_eq!(err.to_string(), "no enum in BTF declares FUSE_I_CACHE");
}

#[test]
fn enumerators_of_a_split_layer_are_found() {
    let (base, _) = kernel_like();
    let mut split = Builder::split_on(&base);
    enumeration(&mut split, "", false, &[("FUSE_I_CACHE_IO_MODE", 6)]);
    let base_btf = base.parse();
    let btf = Btf::parse_split(&split.build(), &base_btf).expect("split parses");
    assert_eq!(btf.enumerator("FUSE_I_CACHE_IO_MODE").unwrap(), 6);
    assert!(base_btf.enumerator("FUSE_I_CACHE_IO_MODE").is_err());
}

#[test]
fn missing_struct() {
    let btf = sample();
    let err = btf.member_offset("fuse_file", &["fh"]).unwrap_err();
    assert!(matches!(&err, BtfError::StructNotFound { name } if name == "fuse_file"));
    assert_eq!(err.to_string(), "struct fuse_file not found in BTF");
    // Typedef names, functions and anonymous structs are not structs.
    assert!(btf.member_offset("loff_t", &[]).is_err());
    assert!(btf.member_offset("vfs_write", &[]).is_err());
    assert!(btf.member_offset("", &[]).is_err());
}

#[test]
fn descending_into_a_pointer_is_an_error() {
    let err = sample()
        .member_offset("file", &["private_data", "x"])
        .unwrap_err();
    assert!(matches!(err, BtfError::NotComposite { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "struct file member `private_data` is a pointer, not a struct or union, \
         so it has no member `x`"
    );
}

#[test]
fn bitfields_are_rejected() {
    let mut b = Builder::new();
    let uint = b.int("unsigned int", 4);
    b.bitfield_struct(
        "flags",
        8,
        &[
            ("f_a", uint, 0, 3),
            ("f_b", uint, 3, 5),
            ("whole", uint, 32, 0),
        ],
    );
    let btf = b.parse();
    let err = btf.member_offset("flags", &["f_b"]).unwrap_err();
    assert!(matches!(err, BtfError::Bitfield { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "struct flags member `f_b` is a bitfield, which has no byte offset"
    );
    // kind_flag structs still have ordinary members.
    assert_eq!(btf.member_offset("flags", &["whole"]).unwrap(), 4);
    assert_eq!(btf.member_size("flags", &["whole"]).unwrap(), 4);
}

#[test]
fn old_style_int_bitfields_are_rejected() {
    // Before kind_flag, a bitfield's width lived in a dedicated int type.
    let mut b = Builder::new();
    let name = b.str("unsigned int");
    let three_bits = b.raw(name, info(KIND_INT, false, 0), 4, &[3]);
    let shifted = b.raw(name, info(KIND_INT, false, 0), 4, &[2 << 16 | 32]);
    b.structure("old", 8, &[("a", three_bits, 0), ("b", shifted, 32)]);
    let btf = b.parse();
    for member in ["a", "b"] {
        let err = btf.member_offset("old", &[member]).unwrap_err();
        assert!(
            matches!(err, BtfError::Bitfield { .. }),
            "{member}: {err:?}"
        );
    }
}

#[test]
fn unaligned_members_are_rejected() {
    let mut b = Builder::new();
    let uchar = b.int("unsigned char", 1);
    b.structure("odd", 4, &[("a", uchar, 12)]);
    let err = b.parse().member_offset("odd", &["a"]).unwrap_err();
    assert!(
        matches!(err, BtfError::NotByteAligned { bit_offset: 12, .. }),
        "{err:?}"
    );
}

#[test]
fn duplicate_struct_definitions() {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    b.fwd("dup");
    b.structure("dup", 0, &[]);
    b.structure("dup", 8, &[("a", int, 0)]);
    b.structure("dup", 16, &[("pad", int, 0), ("b", int, 64)]);
    let btf = b.parse();
    // The first non-empty definition wins for the struct itself ...
    assert_eq!(btf.member_size("dup", &[]).unwrap(), 8);
    assert_eq!(btf.member_offset("dup", &["a"]).unwrap(), 0);
    // ... and the others are tried when it lacks the member.
    assert_eq!(btf.member_offset("dup", &["b"]).unwrap(), 8);
    let err = btf.member_offset("dup", &["c"]).unwrap_err();
    assert_eq!(err.to_string(), "struct dup has no member `c`");
}

#[test]
fn has_struct_and_has_func() {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    b.structure("present", 4, &[("x", int, 0)]);
    b.union("onion", 4, &[("x", int, 0)]);
    b.fwd("declared_only");
    b.func("do_thing", int);
    let btf = b.parse();
    assert!(btf.has_struct("present"));
    assert!(btf.has_struct("onion"));
    assert!(!btf.has_struct("declared_only"));
    assert!(!btf.has_struct("do_thing"));
    assert!(!btf.has_struct("int"));
    assert!(!btf.has_struct(""));
    assert!(btf.has_func("do_thing"));
    assert!(!btf.has_func("present"));
    assert!(!btf.has_func("missing"));
}

#[test]
fn index_finds_every_name() {
    // Enough names to exercise the sorted index, inserted in reverse order.
    let mut b = Builder::new();
    let int = b.int("int", 4);
    for i in (0..200).rev() {
        b.structure(&format!("s{i:03}"), 4, &[("x", int, 0)]);
        b.func(&format!("f{i:03}"), int);
    }
    let btf = b.parse();
    for i in 0..200 {
        assert!(btf.has_struct(&format!("s{i:03}")), "s{i:03}");
        assert!(btf.has_func(&format!("f{i:03}")), "f{i:03}");
    }
    assert!(!btf.has_struct("s200"));
    assert!(!btf.has_func("f"));
}

#[test]
fn pointer_size_needs_a_long() {
    let mut b = Builder::new();
    let ptr = b.ptr(0);
    b.structure("s", 8, &[("p", ptr, 0)]);
    let err = b.parse().member_size("s", &["p"]).unwrap_err();
    assert!(matches!(err, BtfError::UnknownPointerSize), "{err:?}");
}

/// vmlinux-like base plus a module-like split BTF on top of it.
fn split_pair() -> (Btf, Btf, Builder, Builder) {
    let (base_builder, ids) = kernel_like();
    let base = base_builder.parse();
    let mut module = Builder::split_on(&base_builder);
    // Member names: one new string, one reused from the base ("dentry").
    let dentry_name = base_builder.first_str_off
        + u32::try_from(
            base_builder
                .strings
                .windows(7)
                .position(|w| w == b"dentry\0")
                .expect("base has the string"),
        )
        .unwrap();
    let fh = module.str("fh");
    let file_ptr = module.ptr(ids.void_ptr);
    let name = module.str("fuse_file");
    module.raw(
        name,
        info(KIND_STRUCT, false, 3),
        32,
        &[fh, ids.long, 0, dentry_name, file_ptr, 64, 0, ids.path, 128],
    );
    let split = Btf::parse_split(&module.build(), &base).expect("split parses");
    (base, split, base_builder, module)
}

#[test]
fn split_btf_continues_ids_and_strings() {
    let (base, split, base_builder, _) = split_pair();
    let first_split_id = base_builder.next_id;
    assert_eq!(split.layers[1].first_id, first_split_id);
    assert_eq!(
        split.layers[1].first_str_off,
        len_u32(&base_builder.strings)
    );
    // The module's types, with names from both string sections.
    let fuse_file = split.type_by_id(first_split_id + 1).unwrap();
    assert_eq!(fuse_file.kind, Kind::Struct);
    assert_eq!(split.str_at(fuse_file.name_off).unwrap(), b"fuse_file");
    assert_eq!(split.member_offset("fuse_file", &["fh"]).unwrap(), 0);
    assert_eq!(split.member_size("fuse_file", &["fh"]).unwrap(), 8);
    // Named with the base's string "dentry".
    assert_eq!(split.member_offset("fuse_file", &["dentry"]).unwrap(), 8);
    // The split BTF still answers for the base, and the base knows nothing new.
    assert_eq!(
        split.member_offset("file", &["f_path", "dentry"]).unwrap(),
        24
    );
    assert!(split.has_func("vfs_write"));
    assert!(split.has_struct("fuse_file"));
    assert!(!base.has_struct("fuse_file"));
    // Ids past the split's last are out of range.
    let past = first_split_id + 2;
    assert!(matches!(
        split.type_by_id(past),
        Err(BtfError::TypeIdOutOfRange { id }) if id == past
    ));
}

#[test]
fn split_member_reaching_into_base_struct() {
    let (_, split, _, _) = split_pair();
    // The third member has no name in `split_pair`: it is an anonymous
    // `struct path` from the base, so its members are the module struct's.
    assert_eq!(split.member_offset("fuse_file", &["mnt"]).unwrap(), 16);
}

#[test]
fn split_on_split_with_no_strings_of_its_own() {
    let (_, split, _, module) = split_pair();
    // Named with the base's first string ("int", at offset 1), holding one
    // anonymous int member (unnamed padding, which lookups skip).
    let mut second = Builder::split_on(&module);
    second.raw(1, info(KIND_STRUCT, false, 1), 4, &[0, 1, 0]);
    assert!(second.strings.is_empty());
    let btf = Btf::parse_split(&second.build(), &split).unwrap();
    assert_eq!(btf.layers.len(), 3);
    assert_eq!(btf.layers[2].first_id, module.next_id);
    assert!(btf.has_struct("int"));
    assert!(btf.has_struct("fuse_file"));
    assert_eq!(btf.member_size("int", &[]).unwrap(), 4);
    assert!(btf.member_offset("int", &["int"]).is_err());
}

#[test]
fn split_string_offset_past_end() {
    let (base_builder, _) = kernel_like();
    let base = base_builder.parse();
    let mut module = Builder::split_on(&base_builder);
    let name = module.str("m");
    // One past the module's strings.
    let bad = name + 2;
    module.raw(bad, info(KIND_STRUCT, false, 0), 0, &[]);
    let err = Btf::parse_split(&module.build(), &base).unwrap_err();
    assert!(matches!(err, BtfError::StringOutOfBounds { offset } if offset == bad));
}

// ---- Malformed input -------------------------------------------------------

fn parse_err(bytes: &[u8]) -> BtfError {
    Btf::parse(bytes).expect_err("malformed BTF must not parse")
}

#[test]
fn truncated_header() {
    let full = sample_blob();
    for len in 0..24 {
        let err = parse_err(&full[..len]);
        assert!(
            matches!(err, BtfError::TooShort { .. }),
            "len {len}: {err:?}"
        );
    }
}

#[test]
fn bad_magic_version_and_endianness() {
    let mut bytes = sample_blob();
    bytes[0..2].copy_from_slice(&0xeb9f_u16.to_be_bytes());
    assert!(matches!(parse_err(&bytes), BtfError::BigEndian));
    assert!(parse_err(&bytes).to_string().contains("big-endian"));

    let err = parse_err(b"\x7fELF not btf at all, but long enough");
    assert!(
        matches!(err, BtfError::BadMagic { magic: 0x457f }),
        "{err:?}"
    );

    let mut bytes = sample_blob();
    bytes[2] = 2;
    assert!(matches!(
        parse_err(&bytes),
        BtfError::UnsupportedVersion { version: 2 }
    ));
}

#[test]
fn bad_header_length() {
    for hdr_len in [0, 23, u32::MAX] {
        let mut bytes = sample_blob();
        set_u32(&mut bytes, HDR_LEN, hdr_len);
        let err = parse_err(&bytes);
        assert!(
            matches!(err, BtfError::BadHeaderLen { .. }),
            "{hdr_len}: {err:?}"
        );
    }
    // A longer header (future fields) is fine if the offsets still fit.
    let (b, _) = kernel_like();
    let mut bytes = b.build();
    bytes.splice(24..24, [0; 8]);
    set_u32(&mut bytes, HDR_LEN, 32);
    Btf::parse(&bytes).unwrap();
}

#[test]
fn sections_out_of_bounds() {
    let bytes = sample_blob();
    let data_len = u32::try_from(bytes.len() - 24).unwrap();
    let cases = [
        (TYPE_LEN, data_len + 1),
        (TYPE_OFF, data_len),
        (TYPE_OFF, u32::MAX - 3),
        (STR_OFF, data_len),
        (STR_OFF, u32::MAX),
        (STR_LEN, u32::MAX),
    ];
    for (field, value) in cases {
        let mut bytes = bytes.clone();
        set_u32(&mut bytes, field, value);
        let err = parse_err(&bytes);
        assert!(
            matches!(
                err,
                BtfError::SectionOutOfBounds { .. } | BtfError::MisalignedTypeSection { .. }
            ),
            "field {field} = {value}: {err:?}"
        );
    }
    let mut misaligned = bytes.clone();
    set_u32(&mut misaligned, TYPE_OFF, 2);
    assert!(matches!(
        parse_err(&misaligned),
        BtfError::MisalignedTypeSection { offset: 2 }
    ));
}

#[test]
fn truncated_type_records() {
    let (b, _) = kernel_like();
    for cut in 1..12 {
        let types = &b.types[..b.types.len() - cut];
        let err = parse_err(&blob(types, &b.strings));
        assert!(
            matches!(err, BtfError::TruncatedType { .. }),
            "cut {cut}: {err:?}"
        );
    }
}

#[test]
fn vlen_past_end_of_type_section() {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    let name = b.str("s");
    // Claims two members, has one.
    b.raw(name, info(KIND_STRUCT, false, 2), 8, &[0, int, 0]);
    let err = parse_err(&b.build());
    assert!(
        matches!(err, BtfError::TruncatedType { id: 2, .. }),
        "{err:?}"
    );

    // Claims 65535 members.
    let mut b = Builder::new();
    b.raw(0, info(KIND_STRUCT, false, 0xffff), 8, &[]);
    assert!(matches!(
        parse_err(&b.build()),
        BtfError::TruncatedType { .. }
    ));
}

#[test]
fn unknown_kinds() {
    for kind in [0, 20, 31] {
        let mut b = Builder::new();
        b.int("int", 4);
        b.raw(0, info(kind, false, 0), 0, &[]);
        let err = parse_err(&b.build());
        assert!(
            matches!(err, BtfError::UnknownKind { id: 2, kind: k } if k == kind),
            "{err:?}"
        );
    }
}

#[test]
fn bad_string_sections() {
    let (b, _) = kernel_like();
    let err = parse_err(&blob(&b.types, b""));
    assert!(matches!(err, BtfError::BadStringSection { .. }), "{err:?}");
    let mut no_leading_nul = b.strings.clone();
    no_leading_nul[0] = b'x';
    let err = parse_err(&blob(&b.types, &no_leading_nul));
    assert!(matches!(err, BtfError::BadStringSection { .. }), "{err:?}");
    let unterminated = &b.strings[..b.strings.len() - 1];
    let err = parse_err(&blob(&b.types, unterminated));
    assert!(matches!(err, BtfError::BadStringSection { .. }), "{err:?}");
}

#[test]
fn type_name_past_string_section() {
    let mut b = Builder::new();
    let past = len_u32(&b.strings) + 100;
    b.raw(past, info(KIND_INT, false, 0), 4, &[32]);
    let err = parse_err(&b.build());
    assert!(matches!(err, BtfError::StringOutOfBounds { offset } if offset == past));
}

#[test]
fn member_name_past_string_section() {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    let name = b.str("s");
    b.raw(name, info(KIND_STRUCT, false, 1), 4, &[u32::MAX, int, 0]);
    let err = b.parse().member_offset("s", &["x"]).unwrap_err();
    assert!(matches!(err, BtfError::StringOutOfBounds { .. }), "{err:?}");
}

#[test]
fn member_type_id_out_of_range() {
    let mut b = Builder::new();
    b.structure("s", 4, &[("x", 999, 0)]);
    let btf = b.parse();
    let err = btf.member_size("s", &["x"]).unwrap_err();
    assert!(
        matches!(err, BtfError::TypeIdOutOfRange { id: 999 }),
        "{err:?}"
    );
    let err = btf.member_offset("s", &["x", "y"]).unwrap_err();
    assert!(
        matches!(err, BtfError::TypeIdOutOfRange { id: 999 }),
        "{err:?}"
    );
}

#[test]
fn typedef_cycles_are_errors() {
    let mut b = Builder::new();
    // [1] typedef a -> [2], [2] typedef b -> [1], [3] typedef self -> [3]
    b.typedef("a", 2);
    b.typedef("b", 1);
    b.typedef("me", 3);
    b.structure("s", 8, &[("x", 1, 0), ("y", 3, 0)]);
    let btf = b.parse();
    for member in ["x", "y"] {
        let err = btf.member_size("s", &[member]).unwrap_err();
        assert!(matches!(err, BtfError::ResolveLoop { .. }), "{err:?}");
        let err = btf.member_offset("s", &[member, "z"]).unwrap_err();
        assert!(matches!(err, BtfError::ResolveLoop { .. }), "{err:?}");
    }
}

#[test]
fn array_cycles_and_overflow_are_errors() {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    // int looped[1][1][1]..., and the same with 2 elements, whose size overflows first.
    let looped = b.array(b.next_id, 1);
    let doubling = b.array(b.next_id, 2);
    let huge = b.array(int, u32::MAX);
    b.structure(
        "s",
        8,
        &[
            ("looped", looped, 0),
            ("doubling", doubling, 0),
            ("huge", huge, 0),
        ],
    );
    let btf = b.parse();
    let err = btf.member_size("s", &["looped"]).unwrap_err();
    assert!(matches!(err, BtfError::ResolveLoop { .. }), "{err:?}");
    let err = btf.member_size("s", &["doubling"]).unwrap_err();
    assert!(matches!(err, BtfError::Overflow { .. }), "{err:?}");
    let err = btf.member_size("s", &["huge"]).unwrap_err();
    assert!(matches!(err, BtfError::Overflow { .. }), "{err:?}");
}

#[test]
fn anonymous_member_cycles_terminate() {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    // [2] anonymous struct containing itself anonymously, [3] and [4] each other.
    b.structure("", 4, &[("", 2, 0), ("a", int, 0)]);
    b.structure("", 4, &[("", 4, 0)]);
    b.structure("", 4, &[("", 3, 0)]);
    b.structure("s", 4, &[("", 2, 0), ("", 3, 0)]);
    let btf = b.parse();
    assert_eq!(btf.member_offset("s", &["a"]).unwrap(), 0);
    let err = btf.member_offset("s", &["missing"]).unwrap_err();
    assert!(matches!(err, BtfError::MemberNotFound { .. }), "{err:?}");
}

#[test]
fn deeply_nested_anonymous_members_are_bounded() {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    let mut inner = b.structure("", 4, &[("deep", int, 0)]);
    for _ in 0..100 {
        inner = b.structure("", 4, &[("", inner, 0)]);
    }
    b.structure("s", 4, &[("", inner, 0)]);
    let err = b.parse().member_offset("s", &["deep"]).unwrap_err();
    assert!(matches!(err, BtfError::TooDeep { .. }), "{err:?}");
}

#[test]
fn offset_overflow_is_an_error() {
    let mut b = Builder::new();
    // struct s { struct s a; } with `a` at the largest byte-aligned bit offset.
    let id = b.next_id;
    b.structure("s", 4, &[("a", id, u32::MAX - 7)]);
    let btf = b.parse();
    assert_eq!(btf.member_offset("s", &["a"]).unwrap(), (u32::MAX - 7) / 8);
    let err = btf.member_offset("s", &["a"; 9]).unwrap_err();
    assert!(matches!(err, BtfError::Overflow { .. }), "{err:?}");
}

// Lookups cost in proportion to the input, not to a product of its parts: these
// inputs took minutes (about 1 MiB each, through the `btf` fuzz target) before.

/// Thousands of member names pointing into one long string: comparing a name
/// used to read the string to its end, once per member.
#[test]
fn long_member_names_cost_no_more_than_the_name() {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    let long_name = b.str(&"a".repeat(1 << 20));
    let name = b.str("file");
    let members: Vec<u32> = (0..u32::from(u16::MAX))
        .flat_map(|i| [long_name, int, 32 * i])
        .collect();
    b.raw(
        name,
        info(KIND_STRUCT, false, u32::from(u16::MAX)),
        4 * u32::from(u16::MAX),
        &members,
    );
    let btf = b.parse();
    let started = Instant::now();
    for _ in 0..4 {
        let err = btf.member_offset("file", &["f_inode"]).unwrap_err();
        assert!(matches!(err, BtfError::MemberNotFound { .. }), "{err:?}");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "4 lookups took {took:?}");
}

/// Reading a name is bounded too: the kernel allows names shorter than 512 bytes.
#[test]
fn names_longer_than_the_kernel_allows_are_errors() {
    let mut b = Builder::new();
    b.structure(&"s".repeat(MAX_NAME_LEN + 1), 0, &[]);
    let err = Btf::parse(&b.build()).unwrap_err();
    assert!(
        matches!(err, BtfError::NameTooLong { offset: 1 }),
        "{err:?}"
    );
    let mut b = Builder::new();
    let longest = "s".repeat(MAX_NAME_LEN);
    b.structure(&longest, 0, &[]);
    assert!(b.parse().has_struct(&longest));
}

/// Many definitions of `struct file` sharing one anonymous member with many
/// members: every definition was tried, and each walked all of them.
#[test]
fn many_definitions_of_one_struct_are_bounded() {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    let shared = b.structure("", 4, &vec![("x", int, 0); 40_000]);
    for _ in 0..40_000 {
        b.structure("file", 4, &[("", shared, 0)]);
    }
    let btf = b.parse();
    let started = Instant::now();
    let err = btf.member_offset("file", &["f_inode"]).unwrap_err();
    assert!(matches!(err, BtfError::MemberNotFound { .. }), "{err:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "lookup took {took:?}");
    assert_eq!(btf.member_offset("file", &["x"]).unwrap(), 0);

    // The bound: a member only a later definition has is not found.
    let mut b = Builder::new();
    let int = b.int("int", 4);
    for _ in 0..MAX_DEFINITIONS {
        b.structure("dup", 4, &[("a", int, 0)]);
    }
    b.structure("dup", 8, &[("b", int, 32)]);
    let err = b.parse().member_offset("dup", &["b"]).unwrap_err();
    assert!(matches!(err, BtfError::MemberNotFound { .. }), "{err:?}");
}

#[test]
fn from_file_errors_name_the_file() {
    let missing = Path::new("/nonexistent/btf/vmlinux");
    let err = Btf::from_file(missing).unwrap_err();
    assert!(matches!(err, BtfError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/btf/vmlinux"),
        "{err}"
    );

    let dir = std::env::temp_dir().join(format!("btf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage");
    std::fs::write(&garbage, b"not btf").unwrap();
    let err = Btf::from_file(&garbage).unwrap_err();
    assert!(err.to_string().contains("garbage"), "{err}");
    let BtfError::InFile { source, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(matches!(**source, BtfError::BadMagic { .. }), "{source:?}");

    let good = dir.join("good");
    std::fs::write(&good, sample_blob()).unwrap();
    let btf = Btf::from_file(&good).unwrap();
    assert_eq!(btf.member_offset("file", &["f_pos"]).unwrap(), 32);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn endless_file_is_capped() {
    let zero = Path::new("/dev/zero");
    if !zero.exists() {
        return;
    }
    let err = Btf::from_file(zero).unwrap_err();
    assert!(matches!(err, BtfError::FileTooLarge { .. }), "{err:?}");
}

fn sample_blob() -> Vec<u8> {
    kernel_like().0.build()
}

/// Small deterministic PRNG (xorshift64*), so the mutation test needs no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
    }
}

/// Runs every public query; only panics (and hangs) matter, results don't.
fn exercise(btf: &Btf) {
    const PATHS: [(&str, &[&str]); 8] = [
        ("file", &["f_path", "dentry"]),
        ("file", &["f_name"]),
        ("iov_iter", &["count"]),
        ("iov_iter", &["__ubuf_iovec", "iov_len"]),
        ("holder", &["grid"]),
        ("holder", &["p", "mnt"]),
        ("fuse_file", &["mnt"]),
        ("fuse_file", &["dentry"]),
    ];
    for (name, path) in PATHS {
        let _ = btf.member_offset(name, path);
        let _ = btf.member_size(name, path);
        let _ = btf.has_struct(name);
        let _ = btf.has_func(name);
    }
    let _ = format!("{btf:?}");
}

/// Random corruption of valid blobs: whatever the bytes, no panic, no hang.
#[test]
fn mutated_blobs_never_panic() {
    let (base, _, base_builder, module) = split_pair();
    let base_blob = base_builder.build();
    let module_blob = module.build();
    let interesting = [
        0,
        1,
        4,
        12,
        24,
        0x7fff_ffff,
        0xffff_ffff,
        0x0400_0001,
        0x8400_ffff,
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut parsed = 0;
    for round in 0..6000 {
        let split = round % 2 == 1;
        let mut bytes = if split {
            module_blob.clone()
        } else {
            base_blob.clone()
        };
        for _ in 0..1 + rng.below(4) {
            match rng.below(4) {
                0 => {
                    let i = rng.below(bytes.len());
                    bytes[i] = u8::try_from(rng.next() & 0xff).unwrap();
                }
                1 => {
                    let i = rng.below(bytes.len() / 4) * 4;
                    set_u32(&mut bytes, i, interesting[rng.below(interesting.len())]);
                }
                2 => {
                    let i = rng.below(bytes.len() - 3);
                    let value = u32::try_from(rng.next() & 0xffff_ffff).unwrap();
                    set_u32(&mut bytes, i, value);
                }
                _ => bytes.truncate(rng.below(bytes.len() + 1).max(4)),
            }
        }
        let result = if split {
            Btf::parse_split(&bytes, &base)
        } else {
            Btf::parse(&bytes)
        };
        if let Ok(btf) = result {
            parsed += 1;
            exercise(&btf);
        }
    }
    // The mutations must leave some blobs parseable, or the queries go untested.
    assert!(parsed > 500, "only {parsed} mutated blobs parsed");
}

// ---- Seeds for the fuzz corpus ----------------------------------------------

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

// ---- The host's kernel BTF -------------------------------------------------

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// The host's vmlinux BTF, parsed once for all tests; `None` (after a loud
/// message) where the kernel exposes none.
fn vmlinux() -> Option<&'static Btf> {
    static BTF: OnceLock<Option<Btf>> = OnceLock::new();
    let btf = BTF.get_or_init(|| {
        let path = Path::new(VMLINUX);
        if !path.exists() {
            return None;
        }
        let start = Instant::now();
        let btf = Btf::from_file(path).expect("host vmlinux BTF parses");
        eprintln!("parsed {VMLINUX} in {:?}: {btf:?}", start.elapsed());
        Some(btf)
    });
    if btf.is_none() {
        eprintln!("!!!!!! SKIPPED: {VMLINUX} does not exist; kernel BTF tests did not run !!!!!!");
    }
    btf.as_ref()
}

/// Offsets checked with `pahole -C <struct> /sys/kernel/btf/vmlinux` on the
/// development host (6.18.44, x86_64). Layouts vary with version and config, so
/// other kernels only check that the members resolve.
const HOST_OFFSETS_6_18: [(&str, &[&str], u32); 23] = [
    ("file", &["f_lock"], 0),
    ("file", &["private_data"], 24),
    ("file", &["f_inode"], 32),
    ("file", &["f_path"], 64),
    ("file", &["f_path", "dentry"], 72),
    ("file", &["f_pos"], 112),
    ("path", &["dentry"], 8),
    ("kiocb", &["ki_filp"], 0),
    ("kiocb", &["ki_pos"], 8),
    ("kiocb", &["ki_flags"], 32),
    ("iov_iter", &["count"], 24),
    ("iov_iter", &["ubuf"], 16),
    ("inode", &["i_sb"], 40),
    ("inode", &["i_ino"], 64),
    ("inode", &["i_size"], 80),
    ("inode", &["i_rwsem"], 152),
    ("super_block", &["s_dev"], 16),
    ("rw_semaphore", &["count"], 0),
    ("rw_semaphore", &["owner"], 8),
    ("dentry", &["d_name"], 32),
    ("dentry", &["d_name", "name"], 40),
    ("qstr", &["name"], 8),
    ("qstr", &["len"], 4),
];

#[test]
fn vmlinux_member_offsets() {
    let Some(btf) = vmlinux() else { return };
    let exact = fuselock_base::procfs::kernel_release().starts_with("6.18.");
    if !exact {
        eprintln!(
            "kernel {} is not 6.18: checking that members resolve, not their offsets",
            fuselock_base::procfs::kernel_release()
        );
    }
    for (name, path, expected) in HOST_OFFSETS_6_18 {
        let offset = btf
            .member_offset(name, path)
            .unwrap_or_else(|e| panic!("{name}.{}: {e}", path.join(".")));
        if exact {
            assert_eq!(offset, expected, "{name}.{}", path.join("."));
        }
    }
    // True on any kernel: nested offsets add up.
    let f_path = btf.member_offset("file", &["f_path"]).unwrap();
    let dentry = btf.member_offset("path", &["dentry"]).unwrap();
    assert_eq!(
        btf.member_offset("file", &["f_path", "dentry"]).unwrap(),
        f_path + dentry
    );
}

#[test]
fn vmlinux_member_sizes() {
    let Some(btf) = vmlinux() else { return };
    let sizes: [(&str, &[&str], u32); 10] = [
        ("kiocb", &["ki_pos"], 8),
        ("kiocb", &["ki_flags"], 4),
        ("kiocb", &["ki_filp"], 8),
        ("iov_iter", &["count"], 8),
        ("inode", &["i_size"], 8),
        ("inode", &["i_sb"], 8),
        ("super_block", &["s_dev"], 4),
        ("dentry", &["d_name"], 16),
        ("file", &["f_path"], 16),
        ("qstr", &["name"], 8),
    ];
    for (name, path, expected) in sizes {
        let size = btf.member_size(name, path).unwrap();
        assert_eq!(size, expected, "{name}.{}", path.join("."));
    }
    let rwsem = btf.member_size("rw_semaphore", &[]).unwrap();
    assert_eq!(btf.member_size("inode", &["i_rwsem"]).unwrap(), rwsem);
}

#[test]
fn vmlinux_funcs_and_structs() {
    let Some(btf) = vmlinux() else { return };
    assert!(btf.has_func("vfs_write"));
    assert!(btf.has_func("vfs_read"));
    assert!(!btf.has_func("file"));
    assert!(!btf.has_func("no_such_function_in_any_kernel"));
    assert!(btf.has_struct("file"));
    assert!(btf.has_struct("kiocb"));
    assert!(!btf.has_struct("vfs_write"));
    assert!(!btf.has_struct("no_such_struct_in_any_kernel"));
}

#[test]
fn vmlinux_missing_member_is_named() {
    let Some(btf) = vmlinux() else { return };
    let err = btf.member_offset("file", &["no_such_member"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "struct file has no member `no_such_member`"
    );
    let err = btf
        .member_offset("file", &["f_path", "no_such_member"])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "struct file has no member `f_path.no_such_member`"
    );
    let err = btf
        .member_offset("no_such_struct_in_any_kernel", &["x"])
        .unwrap_err();
    assert!(matches!(err, BtfError::StructNotFound { .. }), "{err:?}");
}

/// Every type of the real BTF decodes, every name and member name resolves, and
/// every member type resolves through its modifiers.
#[test]
fn vmlinux_every_type_decodes() {
    let Some(btf) = vmlinux() else { return };
    let layer = &btf.layers[0];
    let (mut types, mut members) = (0, 0);
    for id in layer.ids() {
        let ty = btf.type_by_id(id).unwrap();
        btf.str_at(ty.name_off).unwrap();
        if ty.kind.is_modifier() {
            btf.skip_modifiers(id).unwrap();
        }
        for member in ty.members() {
            btf.str_at(member.name_off).unwrap();
            btf.skip_modifiers(member.type_id).unwrap();
            members += 1;
        }
        types += 1;
    }
    eprintln!("{types} types, {members} struct/union members");
    assert!(types > 10_000 && members > 10_000);
}

/// Module BTF, split on vmlinux: resolve a struct only the module defines.
#[test]
fn module_split_btf() {
    let Some(vmlinux) = vmlinux() else { return };
    let module = std::fs::read_dir("/sys/kernel/btf")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.file_name().is_some_and(|name| name != "vmlinux"))
        .min();
    let Some(module) = module else {
        eprintln!("!!!!!! SKIPPED: no module BTF in /sys/kernel/btf (modules built in?) !!!!!!");
        return;
    };
    let btf = Btf::from_split_file(&module, vmlinux).unwrap();
    let own = &btf.layers[1];
    assert_eq!(own.first_id, vmlinux.layers[0].next_id().unwrap());
    // The first module-only struct with a plain first member.
    let found = own.ids().find_map(|id| {
        let ty = btf.type_by_id(id).ok()?;
        let name = String::from_utf8(btf.str_at(ty.name_off).ok()?.to_vec()).ok()?;
        if ty.kind != Kind::Struct || name.is_empty() || vmlinux.has_struct(&name) {
            return None;
        }
        let member = ty.members().next()?;
        let member_name = String::from_utf8(btf.str_at(member.name_off).ok()?.to_vec()).ok()?;
        let whole_bytes = member.bitfield_size == 0 && member.bit_offset % 8 == 0;
        (!member_name.is_empty() && whole_bytes).then_some((name, member_name, member.bit_offset))
    });
    let Some((name, member, bit_offset)) = found else {
        panic!("{}: no module-only struct found", module.display());
    };
    eprintln!("{}: struct {name}.{member}", module.display());
    assert_eq!(
        btf.member_offset(&name, &[&member]).unwrap(),
        bit_offset / 8
    );
    // And the base is still reachable through the module's BTF.
    assert_eq!(
        btf.member_offset("file", &["f_inode"]).unwrap(),
        vmlinux.member_offset("file", &["f_inode"]).unwrap()
    );
}

/// Split BTF made by an independent encoder: `pahole` turns a small C object's
/// DWARF into BTF split on the host's vmlinux, as the kernel build does for
/// modules. Covers hosts without module BTF; skipped without gcc and pahole.
#[test]
fn pahole_generated_split_btf() {
    const SOURCE: &str = "
        struct list_head { struct list_head *next, *prev; };
        struct my_module_state {
            int refs;
            struct list_head link;
            union { long cookie; void *owner; };
            unsigned char tag[6];
            unsigned int flag_a : 3, flag_b : 5;
            unsigned long tail;
        };
        struct my_module_state g_state;
        int my_module_func(struct my_module_state *s) { return s->refs; }
    ";
    let Some(vmlinux) = vmlinux() else { return };
    let dir = std::env::temp_dir().join(format!("btf-pahole-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (source, object, btf_path) = (dir.join("mod.c"), dir.join("mod.o"), dir.join("mod.btf"));
    std::fs::write(&source, SOURCE).unwrap();
    let succeeded = |command: &mut Command| command.output().is_ok_and(|out| out.status.success());
    let built = succeeded(
        Command::new("gcc")
            .args(["-g", "-c", "-o"])
            .arg(&object)
            .arg(&source),
    ) && succeeded(
        Command::new("pahole")
            .args(["--btf_base", VMLINUX])
            .arg(format!("--btf_encode_detached={}", btf_path.display()))
            .arg(&object),
    );
    if !built {
        std::fs::remove_dir_all(&dir).unwrap();
        eprintln!("!!!!!! SKIPPED: gcc or pahole (dwarves) missing or failed !!!!!!");
        return;
    }
    let btf = Btf::from_split_file(&btf_path, vmlinux).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    assert_eq!(btf.layers[1].first_id, vmlinux.layers[0].next_id().unwrap());
    let offsets = [
        ("refs", 0, 4),
        ("link", 8, 16),
        ("cookie", 24, 8),
        ("owner", 24, 8),
        ("tag", 32, 6),
        ("tail", 40, 8),
    ];
    for (member, offset, size) in offsets {
        assert_eq!(
            btf.member_offset("my_module_state", &[member]).unwrap(),
            offset
        );
        assert_eq!(btf.member_size("my_module_state", &[member]).unwrap(), size);
    }
    // `struct list_head` is deduplicated against vmlinux's: the module's member
    // refers to a base id.
    let prev = btf.member_offset("my_module_state", &["link", "prev"]);
    assert_eq!(prev.unwrap(), 16);
    let list_heads: Vec<_> = btf.named("list_head").map(|ty| ty.id).collect();
    assert!(!list_heads.is_empty());
    assert!(list_heads.iter().all(|&id| id < btf.layers[1].first_id));
    let err = btf
        .member_offset("my_module_state", &["flag_b"])
        .unwrap_err();
    assert!(matches!(err, BtfError::Bitfield { .. }), "{err:?}");
    assert_eq!(btf.member_size("my_module_state", &[]).unwrap(), 48);
    assert!(btf.has_func("my_module_func"));
    assert!(btf.has_func("vfs_write"));
    assert!(!vmlinux.has_struct("my_module_state"));
}

/// The inode lock's layout comes from BTF: the classic rwsem, PREEMPT_RT's
/// `rwbase_rt` at the offsets its BTF gives, or a clear refusal.
#[test]
fn rwsem_layouts_are_told_apart_by_their_members() {
    use crate::kernel::offsets::{rwsem_fields, RwsemFields};
    use probes_common::rwsem::RwsemLayout;

    let mut classic = Builder::new();
    let long = classic.int("long", 8);
    let atomic_long = classic.structure("atomic_long_t", 8, &[("counter", long, 0)]);
    classic.structure(
        "rw_semaphore",
        40,
        &[("count", atomic_long, 0), ("owner", atomic_long, 64)],
    );
    assert_eq!(
        rwsem_fields(&classic.parse()).expect("classic"),
        RwsemFields {
            layout: RwsemLayout::Classic,
            count: 0,
            owner: 8,
            rt_mutex: 0
        }
    );

    // PREEMPT_RT, as include/linux/{rwbase_rt,rtmutex}.h lay it out.
    let mut rt = Builder::new();
    let int = rt.int("int", 4);
    rt.int("long", 8);
    let task = rt.fwd("task_struct");
    let task_ptr = rt.ptr(task);
    let atomic = rt.structure("atomic_t", 4, &[("counter", int, 0)]);
    let spinlock = rt.structure("raw_spinlock", 4, &[("raw_lock", int, 0)]);
    let waiters = rt.structure("rb_root_cached", 16, &[]);
    let rt_mutex = rt.structure(
        "rt_mutex_base",
        32,
        &[
            ("wait_lock", spinlock, 0),
            ("waiters", waiters, 64),
            ("owner", task_ptr, 192),
        ],
    );
    let rwbase = rt.structure(
        "rwbase_rt",
        40,
        &[("readers", atomic, 0), ("rtmutex", rt_mutex, 64)],
    );
    rt.structure("rw_semaphore", 40, &[("rwbase", rwbase, 0)]);
    assert_eq!(
        rwsem_fields(&rt.parse()).expect("rt"),
        RwsemFields {
            layout: RwsemLayout::Rt,
            count: 0,
            owner: 32,
            rt_mutex: 8
        }
    );

    let mut neither = Builder::new();
    let int = neither.int("int", 4);
    neither.structure("rw_semaphore", 4, &[("lock", int, 0)]);
    let err = format!(
        "{:#}",
        rwsem_fields(&neither.parse()).expect_err("no known layout")
    );
    assert!(
        err.contains("neither `count`") && err.contains("PREEMPT_RT"),
        "{err}"
    );
}

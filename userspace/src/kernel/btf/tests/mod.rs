//! Tests: hand-built blobs for the format's corners and malformed input, then the
//! host's own `/sys/kernel/btf`.

mod layouts;
mod malformed;
mod seeds;
mod vmlinux;

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

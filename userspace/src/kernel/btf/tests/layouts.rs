//! Layouts, lookups and split BTF, on hand-built blobs.

use super::*;

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

//! Malformed input: every error is named, nothing panics or hangs, and lookups
//! cost in proportion to the input.

use super::*;

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

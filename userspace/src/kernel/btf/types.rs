//! Views of single BTF type records, decoded on demand from the raw type section.
//!
//! The parser only checks that every record fits its section and has a known kind;
//! the kind-specific data is decoded here, lazily, when a lookup actually needs it.
//! That keeps parsing a 150k-type vmlinux BTF to one linear pass with no per-type
//! allocation.

/// Size of `struct btf_type`: `name_off`, `info`, `size_or_type`, each a `u32`.
pub(super) const TYPE_HEADER_LEN: usize = 12;

/// The BTF kinds, numbered as in `include/uapi/linux/btf.h`.
///
/// `Void` (0, `BTF_KIND_UNKN`) never appears in a type section; it stands for type id 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Void,
    Int,
    Ptr,
    Array,
    Struct,
    Union,
    Enum,
    Fwd,
    Typedef,
    Volatile,
    Const,
    Restrict,
    Func,
    FuncProto,
    Var,
    Datasec,
    Float,
    DeclTag,
    TypeTag,
    Enum64,
}

impl Kind {
    /// Maps the 5-bit kind field of `btf_type.info`; `None` for kinds this reader
    /// does not know (including 0, which is not valid inside a type section).
    pub(super) fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            1 => Self::Int,
            2 => Self::Ptr,
            3 => Self::Array,
            4 => Self::Struct,
            5 => Self::Union,
            6 => Self::Enum,
            7 => Self::Fwd,
            8 => Self::Typedef,
            9 => Self::Volatile,
            10 => Self::Const,
            11 => Self::Restrict,
            12 => Self::Func,
            13 => Self::FuncProto,
            14 => Self::Var,
            15 => Self::Datasec,
            16 => Self::Float,
            17 => Self::DeclTag,
            18 => Self::TypeTag,
            19 => Self::Enum64,
            _ => return None,
        })
    }

    /// Length of the kind-specific data that follows the 12-byte header.
    ///
    /// `vlen` is at most `u16::MAX`, so the products cannot overflow a `usize`.
    pub(super) fn extra_len(self, vlen: u16) -> usize {
        let vlen = usize::from(vlen);
        match self {
            Self::Int | Self::Var | Self::DeclTag => 4,
            Self::Array => 12,
            // {name_off, type, offset} / {type, offset, size} / {name_off, lo32, hi32}
            Self::Struct | Self::Union | Self::Datasec | Self::Enum64 => 12 * vlen,
            // {name_off, val} / {name_off, type}
            Self::Enum | Self::FuncProto => 8 * vlen,
            Self::Void
            | Self::Ptr
            | Self::Fwd
            | Self::Typedef
            | Self::Volatile
            | Self::Const
            | Self::Restrict
            | Self::Func
            | Self::Float
            | Self::TypeTag => 0,
        }
    }

    /// Kinds that only qualify or rename another type, and which a member lookup
    /// sees through: `typedef`, `const`, `volatile`, `restrict` and type tags.
    pub(super) fn is_modifier(self) -> bool {
        matches!(
            self,
            Self::Typedef | Self::Volatile | Self::Const | Self::Restrict | Self::TypeTag
        )
    }

    /// Struct or union: the kinds that have members.
    pub(super) fn is_composite(self) -> bool {
        matches!(self, Self::Struct | Self::Union)
    }

    /// Kinds whose `size_or_type` field is a size in bytes.
    pub(super) fn has_size(self) -> bool {
        matches!(
            self,
            Self::Int
                | Self::Struct
                | Self::Union
                | Self::Enum
                | Self::Enum64
                | Self::Float
                | Self::Datasec
        )
    }

    /// How the kind reads in an error message ("... is a pointer, not a struct").
    pub(super) fn describe(self) -> &'static str {
        match self {
            Self::Void => "void",
            Self::Int => "integer",
            Self::Ptr => "pointer",
            Self::Array => "array",
            Self::Struct => "struct",
            Self::Union => "union",
            Self::Enum => "enum",
            Self::Fwd => "forward declaration",
            Self::Typedef => "typedef",
            Self::Volatile => "volatile",
            Self::Const => "const",
            Self::Restrict => "restrict",
            Self::Func => "function",
            Self::FuncProto => "function prototype",
            Self::Var => "variable",
            Self::Datasec => "data section",
            Self::Float => "float",
            Self::DeclTag => "declaration tag",
            Self::TypeTag => "type tag",
            Self::Enum64 => "64-bit enum",
        }
    }
}

/// The fixed 12-byte part of a type record, before the kind has been validated.
#[derive(Debug, Clone, Copy)]
pub(super) struct RawHeader {
    pub(super) name_off: u32,
    pub(super) info: u32,
    pub(super) size_or_type: u32,
}

impl RawHeader {
    /// Reads the header at `offset`, or `None` if fewer than 12 bytes remain.
    pub(super) fn read(bytes: &[u8], offset: usize) -> Option<Self> {
        let record = bytes.get(offset..offset.checked_add(TYPE_HEADER_LEN)?)?;
        let (words, _) = record.as_chunks::<4>();
        let &[name_off, info, size_or_type] = words else {
            return None;
        };
        Some(Self {
            name_off: u32::from_le_bytes(name_off),
            info: u32::from_le_bytes(info),
            size_or_type: u32::from_le_bytes(size_or_type),
        })
    }

    /// Bits 0-15 of `info`: member / parameter / enumerator count.
    pub(super) fn vlen(self) -> u16 {
        (self.info & 0xffff) as u16
    }

    /// Bits 24-28 of `info`.
    pub(super) fn raw_kind(self) -> u32 {
        (self.info >> 24) & 0x1f
    }

    /// Bit 31 of `info`; for structs and unions it means member offsets carry bitfield sizes.
    pub(super) fn kind_flag(self) -> bool {
        self.info >> 31 == 1
    }
}

/// One type record whose kind is known and whose kind-specific data is in bounds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Type<'a> {
    pub(super) id: u32,
    pub(super) kind: Kind,
    pub(super) name_off: u32,
    pub(super) kind_flag: bool,
    /// Size in bytes or referenced type id, depending on [`Kind::has_size`].
    pub(super) size_or_type: u32,
    /// Kind-specific data, exactly [`Kind::extra_len`] bytes.
    extra: &'a [u8],
}

impl<'a> Type<'a> {
    /// Type id 0.
    pub(super) const VOID: Type<'static> = Type {
        id: 0,
        kind: Kind::Void,
        name_off: 0,
        kind_flag: false,
        size_or_type: 0,
        extra: &[],
    };

    /// Decodes the record starting at `offset` of a type section; `None` if it
    /// has an unknown kind or runs past the end of `bytes`.
    pub(super) fn decode(bytes: &'a [u8], offset: usize, id: u32) -> Option<Self> {
        let header = RawHeader::read(bytes, offset)?;
        let kind = Kind::from_raw(header.raw_kind())?;
        let start = offset.checked_add(TYPE_HEADER_LEN)?;
        let end = start.checked_add(kind.extra_len(header.vlen()))?;
        Some(Self {
            id,
            kind,
            name_off: header.name_off,
            kind_flag: header.kind_flag(),
            size_or_type: header.size_or_type,
            extra: bytes.get(start..end)?,
        })
    }

    /// The members of a struct or union, in declaration order; empty for other kinds.
    pub(super) fn members(&self) -> impl Iterator<Item = Member> + 'a {
        let records = if self.kind.is_composite() {
            self.extra
        } else {
            &[]
        };
        let kind_flag = self.kind_flag;
        u32_records(records).map(move |[name_off, type_id, offset]| {
            // With kind_flag set the offset word packs the bitfield size in its top 8 bits.
            let (bit_offset, bitfield_size) = if kind_flag {
                (offset & 0x00ff_ffff, offset >> 24)
            } else {
                (offset, 0)
            };
            Member {
                name_off,
                type_id,
                bit_offset,
                bitfield_size,
            }
        })
    }

    /// The `(name_off, value)` enumerators of an enum, sign-extended as the
    /// kind flag says; empty for other kinds (64-bit enums included, which
    /// the kernel's flag enums are not).
    pub(super) fn enumerators(&self) -> impl Iterator<Item = (u32, i64)> + 'a {
        let records = if self.kind == Kind::Enum {
            self.extra
        } else {
            &[]
        };
        let signed = self.kind_flag;
        u32_records(records).map(move |[name_off, value]| {
            let value = if signed {
                i64::from(value as i32)
            } else {
                i64::from(value)
            };
            (name_off, value)
        })
    }

    /// The `{type, index_type, nelems}` triple of an array.
    pub(super) fn array(&self) -> Option<Array> {
        if self.kind != Kind::Array {
            return None;
        }
        let [elem_type, _index_type, nelems] = u32_records(self.extra).next()?;
        Some(Array { elem_type, nelems })
    }

    /// True for an integer type that describes a bitfield rather than a whole
    /// integer: old (pre `kind_flag`) BTF encodes a bitfield member's width and bit
    /// offset in a dedicated int type instead of in the member record.
    pub(super) fn is_bitfield_int(&self) -> bool {
        if self.kind != Kind::Int {
            return false;
        }
        let Some(encoding) = u32_at(self.extra, 0) else {
            return false;
        };
        let nr_bits = u64::from(encoding & 0xff);
        let bit_offset = (encoding >> 16) & 0xff;
        bit_offset != 0 || nr_bits != u64::from(self.size_or_type) * 8
    }
}

/// One struct/union member record, with the offset word already split up.
#[derive(Debug, Clone, Copy)]
pub(super) struct Member {
    pub(super) name_off: u32,
    pub(super) type_id: u32,
    /// Offset from the start of the enclosing struct, in bits.
    pub(super) bit_offset: u32,
    /// Width of a bitfield member; 0 for ordinary members.
    pub(super) bitfield_size: u32,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Array {
    pub(super) elem_type: u32,
    pub(super) nelems: u32,
}

/// Little-endian `u32` at `offset`, or `None` past the end of `bytes`.
pub(super) fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let word = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(word.try_into().ok()?))
}

/// Splits `bytes` into records of `N` little-endian `u32`s; a trailing partial
/// record is ignored (the parser has already checked there is none).
fn u32_records<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u32; N]> + '_ {
    let (words, _) = bytes.as_chunks::<4>();
    let (records, _) = words.as_chunks::<N>();
    records.iter().map(|record| record.map(u32::from_le_bytes))
}

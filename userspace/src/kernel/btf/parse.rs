//! The binary parser: header, type section and string section of one BTF blob.
//!
//! Layout (all little-endian, see the kernel's `Documentation/bpf/btf.rst`):
//!
//! ```text
//! struct btf_header {            // hdr_len bytes, at least 24
//!     u16 magic;                 // 0xeB9F
//!     u8  version;               // 1
//!     u8  flags;
//!     u32 hdr_len;
//!     u32 type_off, type_len;    // relative to the end of the header
//!     u32 str_off,  str_len;     // relative to the end of the header
//! };
//! ```
//!
//! The type section is a sequence of variable-length records, one per type id
//! starting at 1; the string section is a run of NUL-terminated strings addressed by
//! byte offset. A split BTF (a kernel module's) continues the type ids *and* the
//! string offsets of its base, which is why a [`Layer`] records where its ids and
//! offsets start.
//!
//! Parsing validates everything that later bounds-checks rely on (every record fits,
//! every kind is known, every type's name offset is inside the string space, the
//! string section ends in a NUL) and builds the name index. Member records are
//! decoded lazily by lookups, which check their own bounds.

use std::sync::Arc;

use super::{
    index::NameIndex,
    types::{u32_at, Kind, RawHeader, Type, TYPE_HEADER_LEN},
    BtfError,
};

/// Size of the header fields this reader knows; a longer `hdr_len` is accepted and
/// the extra bytes ignored, a shorter one is an error.
const HEADER_LEN: usize = 24;
const MAGIC: u16 = 0xeb9f;
const VERSION: u8 = 1;

/// One parsed BTF blob: either a complete (base) BTF such as vmlinux, or one split
/// BTF whose ids and string offsets continue those of the layers below it.
pub(super) struct Layer {
    /// Id of the first type in this layer: 1 for a base, base's last id + 1 for a split.
    pub(super) first_id: u32,
    /// Offset at which this layer's strings start in the combined string space.
    pub(super) first_str_off: u32,
    /// The type section, copied out of the input.
    types: Box<[u8]>,
    /// Byte offset in `types` of each type record; index 0 is `first_id`.
    offsets: Box<[u32]>,
    /// The string section, copied out of the input; ends in a NUL.
    strings: Box<[u8]>,
    /// Structs, unions and functions by name.
    index: NameIndex,
    /// Pointer size from this layer's `long` integer type, if it has one.
    pub(super) ptr_size: Option<u32>,
}

/// A string section and where it starts in the combined (base + split) string space.
#[derive(Debug, Clone, Copy)]
pub(super) struct StrSection<'a> {
    start: u32,
    bytes: &'a [u8],
}

impl Layer {
    /// Parses `bytes` as a BTF blob stacked on `base` (empty for a base BTF).
    pub(super) fn parse(bytes: &[u8], base: &[Arc<Layer>]) -> Result<Self, BtfError> {
        let header = Header::parse(bytes)?;
        let data = bytes.get(header.hdr_len..).ok_or(BtfError::BadHeaderLen {
            hdr_len: header.hdr_len,
            len: bytes.len(),
        })?;
        if header.type_off % 4 != 0 {
            return Err(BtfError::MisalignedTypeSection {
                offset: header.type_off,
            });
        }
        let types = section(data, "type", header.type_off, header.type_len)?;
        let strings = section(data, "string", header.str_off, header.str_len)?;

        let (first_id, first_str_off) = match base.last() {
            None => (1, 0),
            Some(below) => (below.next_id()?, below.end_str_off()?),
        };
        check_strings(strings, base.is_empty())?;
        let str_end = first_str_off
            .checked_add(header.str_len)
            .ok_or(BtfError::TooManyStrings)?;

        let walk = walk_types(types, first_id, str_end)?;
        let own = StrSection {
            start: first_str_off,
            bytes: strings,
        };
        let string_space = || base.iter().map(|layer| layer.str_section()).chain([own]);
        let name_of = |off| lookup_str(string_space(), off);

        let index = NameIndex::build(&walk.named, name_of)?;
        let ptr_size = pointer_size(types, &walk.ints, name_of);
        Ok(Self {
            first_id,
            first_str_off,
            types: types.into(),
            offsets: walk.offsets.into_boxed_slice(),
            strings: strings.into(),
            index,
            ptr_size,
        })
    }

    /// Number of types in this layer.
    pub(super) fn len(&self) -> u32 {
        // `offsets` has at most `type_len / 12` entries, and `type_len` is a `u32`.
        u32::try_from(self.offsets.len()).unwrap_or(u32::MAX)
    }

    /// The id the next layer's first type gets.
    pub(super) fn next_id(&self) -> Result<u32, BtfError> {
        self.first_id
            .checked_add(self.len())
            .ok_or(BtfError::TooManyTypes)
    }

    /// The offset the next layer's strings start at.
    fn end_str_off(&self) -> Result<u32, BtfError> {
        u32::try_from(self.strings.len())
            .ok()
            .and_then(|len| self.first_str_off.checked_add(len))
            .ok_or(BtfError::TooManyStrings)
    }

    pub(super) fn str_section(&self) -> StrSection<'_> {
        StrSection {
            start: self.first_str_off,
            bytes: &self.strings,
        }
    }

    /// The type with global id `id`, or `None` if this layer doesn't hold it.
    pub(super) fn type_by_id(&self, id: u32) -> Option<Type<'_>> {
        let local = usize::try_from(id.checked_sub(self.first_id)?).ok()?;
        let offset = usize::try_from(*self.offsets.get(local)?).ok()?;
        Type::decode(&self.types, offset, id)
    }

    /// Ids, in increasing order, of this layer's structs, unions and functions that
    /// may be named `name`; the caller checks the names.
    pub(super) fn candidates<'s>(&'s self, name: &[u8]) -> impl Iterator<Item = u32> + 's {
        self.index.candidates(name)
    }

    pub(super) fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len()).map(|i| self.first_id + i)
    }
}

/// The header fields, with `hdr_len` converted for slicing.
#[derive(Debug, Clone, Copy)]
struct Header {
    hdr_len: usize,
    type_off: u32,
    type_len: u32,
    str_off: u32,
    str_len: u32,
}

impl Header {
    fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        if let [lo, hi, ..] = *bytes {
            match u16::from_le_bytes([lo, hi]) {
                MAGIC => {}
                magic if magic == MAGIC.swap_bytes() => return Err(BtfError::BigEndian),
                magic => return Err(BtfError::BadMagic { magic }),
            }
        }
        let too_short = BtfError::TooShort { len: bytes.len() };
        let [_, _, version, _flags, ..] = *bytes else {
            return Err(too_short);
        };
        if bytes.len() < HEADER_LEN {
            return Err(too_short);
        }
        if version != VERSION {
            return Err(BtfError::UnsupportedVersion { version });
        }
        let field = |offset| u32_at(bytes, offset).ok_or(BtfError::TooShort { len: bytes.len() });
        let hdr_len = usize::try_from(field(4)?).unwrap_or(usize::MAX);
        if hdr_len < HEADER_LEN || hdr_len > bytes.len() {
            return Err(BtfError::BadHeaderLen {
                hdr_len,
                len: bytes.len(),
            });
        }
        Ok(Self {
            hdr_len,
            type_off: field(8)?,
            type_len: field(12)?,
            str_off: field(16)?,
            str_len: field(20)?,
        })
    }
}

/// The `len` bytes at `offset` of the data after the header.
fn section<'a>(
    data: &'a [u8],
    name: &'static str,
    offset: u32,
    len: u32,
) -> Result<&'a [u8], BtfError> {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let end = start.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
    data.get(start..end).ok_or(BtfError::SectionOutOfBounds {
        section: name,
        offset,
        len,
        available: data.len(),
    })
}

/// Checks the string section the way libbpf does: it must end in a NUL so every
/// string is terminated, and a base BTF's must start with the empty string (offset 0
/// is "no name"). A split BTF may have no strings of its own.
fn check_strings(strings: &[u8], is_base: bool) -> Result<(), BtfError> {
    let problem = match (strings.first(), strings.last()) {
        (None, _) if is_base => "is empty",
        (None, _) => return Ok(()),
        (Some(&first), _) if is_base && first != 0 => "does not start with an empty string",
        (_, Some(&last)) if last != 0 => "does not end with a NUL byte",
        _ => return Ok(()),
    };
    Err(BtfError::BadStringSection { problem })
}

/// What one pass over the type section collects.
struct TypeWalk {
    /// Byte offset of each type record.
    offsets: Vec<u32>,
    /// `(name_off, id)` of the structs, unions and functions, for the name index.
    named: Vec<(u32, u32)>,
    /// Offsets of the integer types, to find `long` among them.
    ints: Vec<u32>,
}

/// Walks the type section once, checking that every record has a known kind and
/// fits, and that its name offset is below `str_end`.
fn walk_types(types: &[u8], first_id: u32, str_end: u32) -> Result<TypeWalk, BtfError> {
    let mut walk = TypeWalk {
        // Every record is at least a 12-byte header, so this bounds the
        // allocation by the input length.
        offsets: Vec::with_capacity(types.len() / TYPE_HEADER_LEN),
        named: Vec::new(),
        ints: Vec::new(),
    };
    let mut pos = 0;
    while pos < types.len() {
        let id = u32::try_from(walk.offsets.len())
            .ok()
            .and_then(|n| first_id.checked_add(n))
            .ok_or(BtfError::TooManyTypes)?;
        let offset = u32::try_from(pos).map_err(|_| BtfError::TooManyTypes)?;
        let header =
            RawHeader::read(types, pos).ok_or(BtfError::TruncatedType { id, offset: pos })?;
        let kind = Kind::from_raw(header.raw_kind()).ok_or(BtfError::UnknownKind {
            id,
            kind: header.raw_kind(),
        })?;
        if header.name_off >= str_end {
            return Err(BtfError::StringOutOfBounds {
                offset: header.name_off,
            });
        }
        pos = pos
            .checked_add(TYPE_HEADER_LEN + kind.extra_len(header.vlen()))
            .filter(|&end| end <= types.len())
            .ok_or(BtfError::TruncatedType { id, offset: pos })?;
        walk.offsets.push(offset);
        match kind {
            Kind::Struct | Kind::Union | Kind::Func if header.name_off != 0 => {
                walk.named.push((header.name_off, id));
            }
            Kind::Int => walk.ints.push(offset),
            _ => {}
        }
    }
    Ok(walk)
}

/// Pointer size, taken like libbpf does from the size of the `long` integer type,
/// as BTF does not record it anywhere else.
fn pointer_size<'s>(
    types: &[u8],
    int_offsets: &[u32],
    name_of: impl Fn(u32) -> Result<&'s [u8], BtfError>,
) -> Option<u32> {
    // gcc/pahole spell it "long int", clang "long".
    const LONG_NAMES: [&[u8]; 4] = [b"long int", b"long unsigned int", b"long", b"unsigned long"];
    int_offsets
        .iter()
        .filter_map(|&offset| RawHeader::read(types, usize::try_from(offset).ok()?))
        .filter(|header| matches!(header.size_or_type, 4 | 8))
        .find(|header| name_of(header.name_off).is_ok_and(|name| LONG_NAMES.contains(&name)))
        .map(|header| header.size_or_type)
}

/// Longest name this reader reads, without its NUL. The kernel rejects BTF names of
/// `KSYM_NAME_LEN` (512) bytes or more; bounding the search for a name's end keeps
/// each string read short whatever the string section holds, where a scan to the
/// NUL would make a lookup's cost the number of names times the longest string.
pub(super) const MAX_NAME_LEN: usize = 511;

/// The NUL-terminated string at `offset` of the combined string space made of
/// `sections` (in increasing `start` order): an offset belongs to the last section
/// starting at or before it. Longer than [`MAX_NAME_LEN`] is an error.
pub(super) fn lookup_str<'a>(
    sections: impl DoubleEndedIterator<Item = StrSection<'a>>,
    offset: u32,
) -> Result<&'a [u8], BtfError> {
    let tail = str_tail(sections, offset)?;
    let window = tail.get(..=MAX_NAME_LEN).unwrap_or(tail);
    match window.iter().position(|&b| b == 0) {
        Some(len) => Ok(window.get(..len).unwrap_or_default()),
        None if window.len() > MAX_NAME_LEN => Err(BtfError::NameTooLong { offset }),
        // A section with no terminating NUL (only a test can build one).
        None => Err(BtfError::StringOutOfBounds { offset }),
    }
}

/// Whether the string at `offset` (as [`lookup_str`] finds it) is `name`; reads
/// `name.len() + 1` bytes at most, so comparing costs no more than the name.
pub(super) fn str_is<'a>(
    sections: impl DoubleEndedIterator<Item = StrSection<'a>>,
    offset: u32,
    name: &[u8],
) -> Result<bool, BtfError> {
    let tail = str_tail(sections, offset)?;
    Ok(tail.get(..name.len()) == Some(name) && tail.get(name.len()) == Some(&0))
}

/// The bytes from `offset` to the end of the section holding it; an offset at or
/// past the end of its section is out of bounds.
fn str_tail<'a>(
    mut sections: impl DoubleEndedIterator<Item = StrSection<'a>>,
    offset: u32,
) -> Result<&'a [u8], BtfError> {
    let out_of_bounds = || BtfError::StringOutOfBounds { offset };
    let section = sections
        .rfind(|section| section.start <= offset)
        .ok_or_else(out_of_bounds)?;
    let local = usize::try_from(offset - section.start).unwrap_or(usize::MAX);
    section
        .bytes
        .get(local..)
        .filter(|tail| !tail.is_empty())
        .ok_or_else(out_of_bounds)
}

//! A small reader for BTF, the BPF Type Format in which the kernel describes its own
//! types under `/sys/kernel/btf/`.
//!
//! fuselock's probes read fields of kernel structs (`struct file`, `struct kiocb`,
//! `struct inode`, ...) whose layout differs between kernel versions and configs.
//! Userspace therefore looks the offsets up in the running kernel's BTF and hands
//! them to the probes. That is all this module does: find a struct by name, walk a
//! member path through it, and report the member's byte offset and size.
//!
//! # Why it is hand-written
//!
//! - The `btf-rs` crate covers this, but is LGPL-licensed, and fuselock keeps to
//!   permissively licensed dependencies.
//! - `aya-obj` has a complete BTF parser, but its type representations are
//!   crate-private, so aya users cannot walk struct members with it.
//!
//! Only what member lookups need is implemented; the format itself is small and
//! stable (`Documentation/bpf/btf.rst` in the kernel tree).
//!
//! # Robustness
//!
//! The bytes come from the kernel or from a file a user names, and this module is a
//! fuzzing target: every malformed input yields a [`BtfError`], never a panic. Type
//! chains (typedef → const → ...) and anonymous-member nesting are followed a bounded
//! number of steps, so a cyclic chain is an error rather than a hang, and memory use
//! is bounded by the input's length.
//!
//! # Split BTF
//!
//! A kernel module's BTF (`/sys/kernel/btf/<module>`) only holds the types vmlinux
//! lacks, and refers to vmlinux's types and strings: its type ids continue after the
//! base's last id, and its string offsets continue after the base's string section.
//! [`Btf::parse_split`] stacks such a blob on its base; the result resolves ids and
//! names of both, sharing (not copying) the base's data.
//!
//! # Example
//!
//! ```ignore
//! let vmlinux = Btf::from_file(Path::new("/sys/kernel/btf/vmlinux"))?;
//! let dentry_off = vmlinux.member_offset("file", &["f_path", "dentry"])?;
//! let pos_size = vmlinux.member_size("kiocb", &["ki_pos"])?; // 8
//! ```

mod index;
mod lookup;
mod parse;
mod types;

#[cfg(test)]
mod tests;

use std::{
    fmt,
    fs::File,
    io::{self, Read as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use self::{
    parse::{str_is, Layer},
    types::{Kind, Type},
};

/// Files larger than this are rejected before parsing. vmlinux BTF is a few MiB even
/// for large configs; the cap keeps a mistaken path (say `/dev/zero`) from eating
/// memory.
pub const MAX_FILE_LEN: u64 = 128 << 20;

/// Parsed BTF of the kernel (vmlinux) or of a kernel module stacked on it.
///
/// Cheap to clone: the parsed data is shared.
#[derive(Clone)]
pub struct Btf {
    /// The base BTF first, then each split BTF stacked on it.
    layers: Vec<Arc<Layer>>,
}

/// Why BTF could not be read, or a lookup in it failed.
///
/// Lookup errors name the struct and the (dotted) member path, since they usually
/// reach the user as "this kernel doesn't have what fuselock needs".
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("failed to read BTF from {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is larger than {MAX_FILE_LEN} bytes, too large to be BTF", path.display())]
    FileTooLarge { path: PathBuf },
    #[error("invalid BTF in {}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<BtfError>,
    },

    // Malformed input.
    #[error("BTF data is {len} bytes, too short for the 24-byte BTF header")]
    TooShort { len: usize },
    #[error("bad BTF magic {magic:#06x} (expected 0xeb9f)")]
    BadMagic { magic: u16 },
    #[error("BTF is big-endian; only little-endian BTF is supported")]
    BigEndian,
    #[error("unsupported BTF version {version} (only version 1 is known)")]
    UnsupportedVersion { version: u8 },
    #[error("BTF header length {hdr_len} is invalid for {len} bytes of data")]
    BadHeaderLen { hdr_len: usize, len: usize },
    #[error("BTF type section offset {offset} is not 4-byte aligned")]
    MisalignedTypeSection { offset: u32 },
    #[error(
        "BTF {section} section (offset {offset}, length {len}) runs past the end of the data \
         ({available} bytes after the header)"
    )]
    SectionOutOfBounds {
        section: &'static str,
        offset: u32,
        len: u32,
        available: usize,
    },
    #[error("BTF string section {problem}")]
    BadStringSection { problem: &'static str },
    #[error("BTF type [{id}] at offset {offset} of the type section is truncated")]
    TruncatedType { id: u32, offset: usize },
    #[error("BTF type [{id}] has unknown kind {kind}")]
    UnknownKind { id: u32, kind: u32 },
    #[error("BTF has more types than type ids can number")]
    TooManyTypes,
    #[error("BTF strings exceed the 4 GiB string offset space")]
    TooManyStrings,
    #[error("BTF string offset {offset} is out of bounds")]
    StringOutOfBounds { offset: u32 },
    #[error(
        "BTF string at offset {offset} is longer than a name may be ({} bytes)",
        parse::MAX_NAME_LEN
    )]
    NameTooLong { offset: u32 },
    #[error("BTF type id {id} is out of range")]
    TypeIdOutOfRange { id: u32 },
    #[error(
        "BTF type [{id}] does not resolve within {} steps (cyclic typedef/modifier chain?)",
        lookup::MAX_RESOLVE_HOPS
    )]
    ResolveLoop { id: u32 },
    #[error(
        "BTF type [{id}] nests anonymous structs/unions more than {} deep",
        lookup::MAX_ANON_DEPTH
    )]
    TooDeep { id: u32 },
    #[error("BTF has no `long` integer type to take the pointer size from")]
    UnknownPointerSize,

    // Lookups in well-formed BTF.
    #[error("struct {name} not found in BTF")]
    StructNotFound { name: String },
    #[error("no enum in BTF declares {name}")]
    EnumeratorNotFound { name: String },
    #[error("struct {struct_name} has no member `{member}`")]
    MemberNotFound { struct_name: String, member: String },
    #[error("struct {struct_name} member `{member}` is a bitfield, which has no byte offset")]
    Bitfield { struct_name: String, member: String },
    #[error(
        "struct {struct_name} member `{member}` is at bit offset {bit_offset}, \
         not on a byte boundary"
    )]
    NotByteAligned {
        struct_name: String,
        member: String,
        bit_offset: u64,
    },
    #[error(
        "struct {struct_name} member `{member}` is a {kind}, not a struct or union, \
         so it has no member `{next}`"
    )]
    NotComposite {
        struct_name: String,
        member: String,
        kind: &'static str,
        next: String,
    },
    #[error("struct {struct_name} member `{member}` is a {kind}, which has no size")]
    Unsized {
        struct_name: String,
        member: String,
        kind: &'static str,
    },
    #[error("struct {struct_name} member `{member}`: offset or size does not fit in 32 bits")]
    Overflow { struct_name: String, member: String },
}

impl Btf {
    /// Parses a complete BTF blob, such as `/sys/kernel/btf/vmlinux`.
    pub fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        let layer = Layer::parse(bytes, &[])?;
        Ok(Self {
            layers: vec![Arc::new(layer)],
        })
    }

    /// Parses a split BTF blob, such as `/sys/kernel/btf/<module>`, on top of `base`
    /// (normally vmlinux). The result resolves the types and strings of both.
    pub fn parse_split(bytes: &[u8], base: &Btf) -> Result<Self, BtfError> {
        let layer = Layer::parse(bytes, &base.layers)?;
        let mut layers = base.layers.clone();
        layers.push(Arc::new(layer));
        Ok(Self { layers })
    }

    /// Reads and parses a complete BTF file; errors name the file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let bytes = read_capped(path)?;
        Self::parse(&bytes).map_err(|e| e.in_file(path))
    }

    /// Reads and parses a split BTF file on top of `base`; errors name the file.
    pub fn from_split_file(path: &Path, base: &Btf) -> Result<Self, BtfError> {
        let bytes = read_capped(path)?;
        Self::parse_split(&bytes, base).map_err(|e| e.in_file(path))
    }

    /// Byte offset of a (possibly nested) member from the start of struct (or union)
    /// `struct_name`: `member_offset("file", &["f_path", "dentry"])` is
    /// `offsetof(struct file, f_path.dentry)`.
    ///
    /// Each path element is looked up the way C resolves `a.b`: members of anonymous
    /// structs and unions count as members of the enclosing one (on 6.x kernels
    /// `iov_iter.count` and `file.f_path` live in such anonymous members). Between
    /// elements, the member's type is followed through typedef, const, volatile and
    /// restrict to a struct or union; following a pointer is an error, as the result
    /// would not be an offset into `struct_name`.
    ///
    /// Bitfields and members not on a byte boundary are errors. If several structs
    /// share the name (BTF can carry more than one definition), the non-empty ones
    /// are tried first, in id order, and the first that has the path wins; if none
    /// has it, the error is the one from the first tried. Only the first
    /// [`MAX_DEFINITIONS`](lookup::MAX_DEFINITIONS) (16) are tried: kernel BTF has
    /// a few at most, and each try may walk every member. An empty path gives 0.
    pub fn member_offset(&self, struct_name: &str, path: &[&str]) -> Result<u32, BtfError> {
        Ok(self.resolve_path(struct_name, path)?.offset)
    }

    /// Size in bytes of the member [`member_offset`](Self::member_offset) finds, with
    /// typedefs and qualifiers resolved; arrays are element size × count, pointers
    /// the target's pointer size. An empty path gives the size of the struct itself.
    pub fn member_size(&self, struct_name: &str, path: &[&str]) -> Result<u32, BtfError> {
        self.resolve_path(struct_name, path)?.size(self)
    }

    /// Whether a struct or union named `name` is defined (a forward declaration
    /// does not count).
    pub fn has_struct(&self, name: &str) -> bool {
        self.named(name).any(|ty| ty.kind.is_composite())
    }

    /// Whether a function (a `FUNC` record, not a prototype) named `name` is
    /// described. pahole only encodes functions that exist out of line, so this is
    /// the usual check that a probe has something to attach to.
    pub fn has_func(&self, name: &str) -> bool {
        self.named(name).any(|ty| ty.kind == Kind::Func)
    }

    /// The value of the enumerator `name` (`FUSE_I_CACHE_IO_MODE`), from the
    /// first enum, in id order, that declares it. Enumerators are not in the
    /// name index: this walks every enum once, which a start-up lookup can
    /// afford.
    pub fn enumerator(&self, name: &str) -> Result<i64, BtfError> {
        let wanted = name.as_bytes();
        for layer in &self.layers {
            for id in layer.ids() {
                let Some(ty) = layer.type_by_id(id) else {
                    continue;
                };
                for (name_off, value) in ty.enumerators() {
                    if self.str_is(name_off, wanted)? {
                        return Ok(value);
                    }
                }
            }
        }
        Err(BtfError::EnumeratorNotFound {
            name: name.to_owned(),
        })
    }

    /// The NUL-terminated string at `offset` of the combined string space.
    #[cfg(test)]
    fn str_at(&self, offset: u32) -> Result<&[u8], BtfError> {
        parse::lookup_str(self.layers.iter().map(|layer| layer.str_section()), offset)
    }

    /// Whether the string at `offset` of the combined string space is `name`, at
    /// the cost of comparing `name` (a string may be far longer).
    fn str_is(&self, offset: u32, name: &[u8]) -> Result<bool, BtfError> {
        str_is(
            self.layers.iter().map(|layer| layer.str_section()),
            offset,
            name,
        )
    }

    /// The type with id `id`; id 0 is `void`.
    fn type_by_id(&self, id: u32) -> Result<Type<'_>, BtfError> {
        if id == 0 {
            return Ok(Type::VOID);
        }
        self.layers
            .iter()
            .rfind(|layer| layer.first_id <= id)
            .and_then(|layer| layer.type_by_id(id))
            .ok_or(BtfError::TypeIdOutOfRange { id })
    }

    /// The structs, unions and functions named `name`, in id order.
    fn named<'s>(&'s self, name: &'s str) -> impl Iterator<Item = Type<'s>> + 's {
        let name = name.as_bytes();
        self.layers
            .iter()
            .flat_map(move |layer| layer.candidates(name))
            .filter_map(|id| self.type_by_id(id).ok())
            .filter(move |ty| self.str_is(ty.name_off, name).unwrap_or(false))
    }

    /// Pointer size of the target the BTF describes.
    fn ptr_size(&self) -> Result<u32, BtfError> {
        self.layers
            .iter()
            .find_map(|layer| layer.ptr_size)
            .ok_or(BtfError::UnknownPointerSize)
    }
}

impl fmt::Debug for Btf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The data itself is megabytes; show the shape of each layer instead.
        let mut list = f.debug_list();
        for layer in &self.layers {
            list.entry(&format_args!(
                "types [{}, {}), strings from {}",
                layer.first_id,
                u64::from(layer.first_id) + u64::from(layer.len()),
                layer.first_str_off
            ));
        }
        list.finish()
    }
}

impl BtfError {
    /// Wraps a parse error with the file it came from.
    fn in_file(self, path: &Path) -> Self {
        Self::InFile {
            path: path.to_owned(),
            source: Box::new(self),
        }
    }
}

/// Reads at most [`MAX_FILE_LEN`] bytes of `path`.
///
/// `fs::read` reads to end of file however far that is; `/dev/zero` never ends.
fn read_capped(path: &Path) -> Result<Vec<u8>, BtfError> {
    let io_error = |source| BtfError::Io {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .map_err(io_error)?
        .take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_FILE_LEN {
        return Err(BtfError::FileTooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

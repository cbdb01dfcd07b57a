//! Member lookups: walking a member path through structs and unions.

use std::collections::HashSet;

use super::{
    types::{Kind, Type},
    Btf, BtfError,
};

/// How many typedef/qualifier (or array element) links a type chain may have.
/// Real chains are a handful long; libbpf uses the same bound. Anything longer is
/// a cycle in malformed BTF.
pub(super) const MAX_RESOLVE_HOPS: usize = 32;

/// How deep anonymous structs/unions may nest inside each other. The kernel nests
/// them three or four deep; the bound keeps recursion off the stack limit.
pub(super) const MAX_ANON_DEPTH: usize = 32;

/// How many definitions of one struct name a lookup tries. A try can walk every
/// member record of the BTF (through shared anonymous or nested members), so
/// without a bound, many definitions of one name would make a lookup's cost the
/// product of two input sizes. Deduplicated kernel BTF has one or two.
pub(super) const MAX_DEFINITIONS: usize = 16;

/// Where a member path leads.
#[derive(Debug, Clone, Copy)]
pub(super) struct Resolved<'n, 'p> {
    /// Byte offset from the start of the outermost struct.
    pub(super) offset: u32,
    /// The member's type as declared (typedefs not yet resolved).
    type_id: u32,
    /// The lookup, to name it in errors about the member's size.
    site: Site<'n, 'p>,
}

/// A member found in a struct, possibly inside anonymous members.
#[derive(Debug, Clone, Copy)]
struct Hit {
    /// Bit offset from the start of the struct searched.
    bit_offset: u64,
    type_id: u32,
    bitfield_size: u32,
}

/// The lookup being performed, for naming it in errors.
#[derive(Debug, Clone, Copy)]
struct Site<'n, 'p> {
    struct_name: &'n str,
    path: &'p [&'n str],
}

impl Btf {
    /// Resolves `path` in the best-matching definition of `struct_name`.
    pub(super) fn resolve_path<'n, 'p>(
        &self,
        struct_name: &'n str,
        path: &'p [&'n str],
    ) -> Result<Resolved<'n, 'p>, BtfError> {
        let site = Site { struct_name, path };
        let mut first_error = None;
        for root in self.composites_named(struct_name) {
            match self.resolve_in(root, site) {
                Ok(resolved) => return Ok(resolved),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| BtfError::StructNotFound {
            name: struct_name.to_owned(),
        }))
    }

    /// Structs and unions named `name`, the likeliest definition first: ones with a
    /// non-zero size before empty ones, each group in id order; at most
    /// [`MAX_DEFINITIONS`].
    fn composites_named<'s>(&'s self, name: &'s str) -> Vec<Type<'s>> {
        // Two passes rather than collecting and sorting: the bound holds for
        // memory too, however many definitions there are.
        let composites = |sized: bool| {
            self.named(name)
                .filter(move |ty| ty.kind.is_composite() && (ty.size_or_type != 0) == sized)
        };
        composites(true)
            .chain(composites(false))
            .take(MAX_DEFINITIONS)
            .collect()
    }

    fn resolve_in<'n, 'p>(
        &self,
        root: Type<'_>,
        site: Site<'n, 'p>,
    ) -> Result<Resolved<'n, 'p>, BtfError> {
        let mut offset = 0u32;
        let mut type_id = root.id;
        for (depth, name) in site.path.iter().enumerate() {
            let container = self.skip_modifiers(type_id)?;
            if !container.kind.is_composite() {
                return Err(site.not_composite(depth, container.kind));
            }
            let hit = self
                .find_member(container, name.as_bytes())?
                .ok_or_else(|| site.error(depth, ErrorKind::NotFound))?;
            if hit.bitfield_size != 0 || self.skip_modifiers(hit.type_id)?.is_bitfield_int() {
                return Err(site.error(depth, ErrorKind::Bitfield));
            }
            if hit.bit_offset % 8 != 0 {
                return Err(site.error(depth, ErrorKind::NotByteAligned(hit.bit_offset)));
            }
            offset = u32::try_from(hit.bit_offset / 8)
                .ok()
                .and_then(|bytes| offset.checked_add(bytes))
                .ok_or_else(|| site.error(depth, ErrorKind::Overflow))?;
            type_id = hit.type_id;
        }
        Ok(Resolved {
            offset,
            type_id,
            site,
        })
    }

    /// Finds member `name` of `container` the way C does, looking inside anonymous
    /// struct/union members too.
    fn find_member(&self, container: Type<'_>, name: &[u8]) -> Result<Option<Hit>, BtfError> {
        if name.is_empty() {
            // Would match the first anonymous member.
            return Ok(None);
        }
        // Each anonymous type is searched once: that stops cycles in malformed BTF
        // and bounds the work by the number of member records.
        let mut visited = HashSet::from([container.id]);
        self.search_members(container, name, 0, 0, &mut visited)
    }

    fn search_members(
        &self,
        container: Type<'_>,
        name: &[u8],
        base_bits: u64,
        depth: usize,
        visited: &mut HashSet<u32>,
    ) -> Result<Option<Hit>, BtfError> {
        for member in container.members() {
            let bit_offset = base_bits.saturating_add(u64::from(member.bit_offset));
            // Compared in place: a member name may point into a string far
            // longer than `name`, and reading it all for every member would make
            // the lookup quadratic.
            if self.str_is(member.name_off, name)? {
                return Ok(Some(Hit {
                    bit_offset,
                    type_id: member.type_id,
                    bitfield_size: member.bitfield_size,
                }));
            }
            if !self.str_is(member.name_off, b"")? {
                continue;
            }
            let inner = self.skip_modifiers(member.type_id)?;
            if !inner.kind.is_composite() || !visited.insert(inner.id) {
                // Unnamed padding bitfield, or an anonymous type already searched.
                continue;
            }
            if depth >= MAX_ANON_DEPTH {
                return Err(BtfError::TooDeep { id: container.id });
            }
            if let Some(hit) = self.search_members(inner, name, bit_offset, depth + 1, visited)? {
                return Ok(Some(hit));
            }
        }
        Ok(None)
    }

    /// Follows typedef/const/volatile/restrict/type-tag links from `id` to the
    /// underlying type.
    pub(super) fn skip_modifiers(&self, id: u32) -> Result<Type<'_>, BtfError> {
        let mut next = id;
        for _ in 0..MAX_RESOLVE_HOPS {
            let ty = self.type_by_id(next)?;
            if !ty.kind.is_modifier() {
                return Ok(ty);
            }
            next = ty.size_or_type;
        }
        Err(BtfError::ResolveLoop { id })
    }

    /// Size in bytes of type `id`, the type of the member `site` names.
    fn type_size(&self, id: u32, site: Site<'_, '_>) -> Result<u32, BtfError> {
        let depth = site.path.len().saturating_sub(1);
        let overflow = || site.error(depth, ErrorKind::Overflow);
        // Product of the element counts of the arrays walked through so far.
        let mut count = 1u32;
        let mut next = id;
        for _ in 0..MAX_RESOLVE_HOPS {
            let ty = self.skip_modifiers(next)?;
            let elem_size = match ty.kind {
                Kind::Array => {
                    let array = ty.array().ok_or(BtfError::TypeIdOutOfRange { id: ty.id })?;
                    count = count.checked_mul(array.nelems).ok_or_else(overflow)?;
                    next = array.elem_type;
                    continue;
                }
                Kind::Ptr => self.ptr_size()?,
                kind if kind.has_size() => ty.size_or_type,
                kind => return Err(site.error(depth, ErrorKind::Unsized(kind))),
            };
            return elem_size.checked_mul(count).ok_or_else(overflow);
        }
        Err(BtfError::ResolveLoop { id })
    }
}

impl Resolved<'_, '_> {
    /// Size in bytes of the member (or, for an empty path, of the struct).
    pub(super) fn size(&self, btf: &Btf) -> Result<u32, BtfError> {
        btf.type_size(self.type_id, self.site)
    }
}

/// The lookup errors that name a member.
#[derive(Debug, Clone, Copy)]
enum ErrorKind {
    NotFound,
    Bitfield,
    NotByteAligned(u64),
    Unsized(Kind),
    Overflow,
}

impl Site<'_, '_> {
    /// The path up to and including element `depth`, dotted: `f_path.dentry`.
    fn member(&self, depth: usize) -> String {
        let shown = self.path.get(..=depth).unwrap_or(self.path);
        shown.join(".")
    }

    fn error(&self, depth: usize, kind: ErrorKind) -> BtfError {
        let struct_name = self.struct_name.to_owned();
        let member = self.member(depth);
        match kind {
            ErrorKind::NotFound => BtfError::MemberNotFound {
                struct_name,
                member,
            },
            ErrorKind::Bitfield => BtfError::Bitfield {
                struct_name,
                member,
            },
            ErrorKind::NotByteAligned(bit_offset) => BtfError::NotByteAligned {
                struct_name,
                member,
                bit_offset,
            },
            ErrorKind::Unsized(kind) => BtfError::Unsized {
                struct_name,
                member,
                kind: kind.describe(),
            },
            ErrorKind::Overflow => BtfError::Overflow {
                struct_name,
                member,
            },
        }
    }

    /// Element `depth` of the path was looked up in something that has no members.
    fn not_composite(&self, depth: usize, kind: Kind) -> BtfError {
        BtfError::NotComposite {
            struct_name: self.struct_name.to_owned(),
            member: self.member(depth.saturating_sub(1)),
            kind: kind.describe(),
            next: self.path.get(depth).copied().unwrap_or_default().to_owned(),
        }
    }
}

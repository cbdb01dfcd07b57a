//! The name index of one layer: which structs, unions and functions might have a
//! given name.

use super::BtfError;

/// A hash table from name hash to type ids, laid out flat: entries are grouped by
/// bucket, and bucket `b` holds `entries[starts[b]..starts[b + 1]]`, in id order.
///
/// It is built in two linear passes (count, then place) with no per-entry
/// allocation. A sorted vector would take tens of milliseconds to sort in debug
/// builds, and a `HashMap<String, Vec<u32>>` would copy ~70k names out of the
/// string section for vmlinux. Hash collisions are fine: callers compare the names
/// of the ids they get back.
pub(super) struct NameIndex {
    /// `buckets + 1` offsets into `entries`; `buckets` is a power of two.
    starts: Box<[u32]>,
    entries: Box<[Entry]>,
    /// `buckets - 1`: the bits of the hash that pick a bucket.
    mask: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    hash: u64,
    id: u32,
}

impl NameIndex {
    /// Indexes `(name_off, id)` pairs, given in id order; `name_of` resolves the
    /// name offsets. Empty names are left out.
    pub(super) fn build<'s>(
        named: &[(u32, u32)],
        name_of: impl Fn(u32) -> Result<&'s [u8], BtfError>,
    ) -> Result<Self, BtfError> {
        let mut hashed = Vec::with_capacity(named.len());
        for &(name_off, id) in named {
            let name = name_of(name_off)?;
            if !name.is_empty() {
                hashed.push(Entry {
                    hash: name_hash(name),
                    id,
                });
            }
        }
        // At most one entry per bucket on average.
        let buckets = hashed.len().max(1).next_power_of_two();
        let mask = u64::try_from(buckets - 1).unwrap_or(0);

        // starts[b + 1] = number of entries in bucket b, then a running sum, so
        // that starts[b] is where bucket b begins.
        let mut starts = vec![0u32; buckets + 1];
        for entry in &hashed {
            if let Some(count) = starts.get_mut(bucket(entry.hash, mask) + 1) {
                *count += 1;
            }
        }
        let mut total = 0;
        for start in &mut starts {
            total += *start;
            *start = total;
        }

        // Visiting the entries in id order keeps each bucket in id order.
        let mut next_slot = starts.clone();
        let mut entries = vec![Entry::default(); hashed.len()];
        for entry in hashed {
            let Some(slot) = next_slot.get_mut(bucket(entry.hash, mask)) else {
                continue;
            };
            if let Some(place) = usize::try_from(*slot).ok().and_then(|i| entries.get_mut(i)) {
                *place = entry;
            }
            *slot += 1;
        }
        Ok(Self {
            starts: starts.into_boxed_slice(),
            entries: entries.into_boxed_slice(),
            mask,
        })
    }

    /// Ids, in increasing order, of the indexed types whose name may be `name`.
    pub(super) fn candidates(&self, name: &[u8]) -> impl Iterator<Item = u32> + '_ {
        let hash = name_hash(name);
        let b = bucket(hash, self.mask);
        let range = self.starts.get(b).zip(self.starts.get(b + 1));
        let bucket_entries = range
            .and_then(|(&start, &end)| {
                let start = usize::try_from(start).ok()?;
                let end = usize::try_from(end).ok()?;
                self.entries.get(start..end)
            })
            .unwrap_or_default();
        bucket_entries
            .iter()
            .filter(move |entry| entry.hash == hash)
            .map(|entry| entry.id)
    }
}

fn bucket(hash: u64, mask: u64) -> usize {
    usize::try_from(hash & mask).unwrap_or(0)
}

/// FNV-1a: simple, fast, and good enough for identifiers.
fn name_hash(name: &[u8]) -> u64 {
    name.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

//! Whole-map reads with `BPF_MAP_LOOKUP_BATCH`, and single-key lookups.
//!
//! aya reads a hash map one key at a time (`get_next_key` then a
//! lookup: two syscalls per entry, 20,000 per refresh at 10,000 inodes) and
//! has no batch API. This is the kernel's own interface for the job, a few
//! syscalls per map; hash maps have it since Linux 5.6, and fuselock needs
//! 6.9 anyway, so a kernel refusing it is an error, not a fallback.
//!
//! The reader keeps its buffers between reads and hands each entry to a
//! callback as a slice of per-CPU values: a refresh of 10,000 entries makes
//! no allocation per entry.

use std::{
    io,
    marker::PhantomData,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{maps::MapData, Pod};

/// `BPF_MAP_LOOKUP_ELEM`, `BPF_MAP_DELETE_ELEM` and `BPF_MAP_LOOKUP_BATCH`
/// (`include/uapi/linux/bpf.h`).
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`. The kernel accepts an attr
/// shorter than its own union and zero-fills the rest.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The element member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: bpf(2) with an attr of the command's layout whose pointers the
    // callers size for what the kernel writes; all alive for the call.
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<A>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Fails unless the loaded map has exactly the layout this build reads:
/// the raw reads below would otherwise return garbage, not an error.
fn check_layout<K, V>(map: &MapData, per_cpu: bool, max_entries: u32) -> io::Result<()> {
    let info = map.info().map_err(io::Error::other)?;
    let sizes = [
        ("key size", info.key_size(), size_of::<K>()),
        ("value size", info.value_size(), size_of::<V>()),
        ("max entries", info.max_entries(), max_entries as usize),
    ];
    for (what, loaded, ours) in sizes {
        if loaded as usize != ours {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{what} is {loaded} in the loaded eBPF object and {ours} in this build: \
                     the object and the binary come from different builds (rebuild both)"
                ),
            ));
        }
    }
    // Per-CPU values are laid out 8-byte aligned; ours are multiples of 8,
    // so `[V]` has the kernel's layout.
    if per_cpu && !size_of::<V>().is_multiple_of(8) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "per-CPU value size {} is not a multiple of 8",
                size_of::<V>()
            ),
        ));
    }
    Ok(())
}

/// Reads a hash map's entries: `(key, values)` with one value per possible
/// CPU for per-CPU maps, one otherwise.
pub struct BatchReader<K, V> {
    map: MapData,
    slots: usize,
    chunk: usize,
    keys: Vec<K>,
    values: Vec<V>,
    _kv: PhantomData<(K, V)>,
}

impl<K: Pod + Default, V: Pod + Default> BatchReader<K, V> {
    pub fn new(map: MapData, per_cpu: bool, max_entries: u32) -> io::Result<Self> {
        let slots = if per_cpu {
            aya::util::nr_cpus().map_err(|(_, e)| e)?.get() as usize
        } else {
            1
        };
        check_layout::<K, V>(&map, per_cpu, max_entries)?;
        Ok(BatchReader {
            map,
            slots,
            chunk: (max_entries as usize).clamp(64, 4096),
            keys: Vec::new(),
            values: Vec::new(),
            _kv: PhantomData,
        })
    }

    fn fd(&self) -> u32 {
        self.map.fd().as_fd().as_raw_fd() as u32
    }

    /// Calls `f` with every entry now (entries racing with the read may be
    /// seen or not).
    pub fn for_each(&mut self, mut f: impl FnMut(&K, &[V])) -> io::Result<()> {
        let mut in_batch = [0u8; 8];
        let mut out_batch = [0u8; 8];
        let mut first = true;
        loop {
            self.keys.resize(self.chunk, K::default());
            self.values.resize(self.chunk * self.slots, V::default());
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { in_batch.as_ptr() as u64 },
                out_batch: out_batch.as_mut_ptr() as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: self.chunk as u32,
                map_fd: self.fd(),
                ..BatchAttr::default()
            };
            let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
            if result.as_ref().err().and_then(io::Error::raw_os_error) == Some(libc::ENOSPC) {
                // One hash bucket holds more than `chunk` entries: retry bigger.
                self.chunk *= 2;
                continue;
            }
            let n = (attr.count as usize).min(self.chunk);
            for (key, values) in self.keys[..n]
                .iter()
                .zip(self.values.chunks_exact(self.slots))
            {
                f(key, values);
            }
            match result {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP)) => {
                    return Err(io::Error::new(io::ErrorKind::Unsupported, e));
                }
                Err(e) => return Err(e),
            }
            in_batch = out_batch;
            first = false;
        }
    }

    /// Every entry now, collected.
    pub fn read_all(&mut self) -> io::Result<Vec<(K, Vec<V>)>> {
        let mut out = Vec::new();
        self.for_each(|k, v| out.push((*k, v.to_vec())))?;
        Ok(out)
    }

    /// One key's values, `None` if the key is not in the map (any more).
    pub fn lookup(&mut self, key: &K) -> io::Result<Option<&[V]>> {
        self.values
            .resize(self.slots.max(self.values.len()), V::default());
        let mut attr = ElemAttr {
            map_fd: self.fd(),
            key: std::ptr::from_ref(key) as u64,
            value: self.values.as_mut_ptr() as u64,
            ..ElemAttr::default()
        };
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(()) => Ok(Some(&self.values[..self.slots])),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes the entries `doomed` picks (by key and values); how many went.
    pub fn delete_where(&mut self, doomed: impl Fn(&K, &[V]) -> bool) -> io::Result<u64> {
        let mut keys = Vec::new();
        self.for_each(|k, v| {
            if doomed(k, v) {
                keys.push(*k);
            }
        })?;
        self.delete_keys(&keys)
    }

    /// Removes `keys`; how many were there.
    pub fn delete_keys<'k>(&mut self, keys: impl IntoIterator<Item = &'k K>) -> io::Result<u64>
    where
        K: 'k,
    {
        let mut deleted = 0;
        for key in keys {
            let mut attr = ElemAttr {
                map_fd: self.fd(),
                key: std::ptr::from_ref(key) as u64,
                ..ElemAttr::default()
            };
            match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
                Ok(()) => deleted += 1,
                // Gone meanwhile: gone either way.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{FromRawFd as _, OwnedFd};

    use super::*;

    /// `BPF_MAP_CREATE` of a plain hash map (`union bpf_attr`'s first members).
    #[repr(C)]
    #[derive(Default)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    }

    fn hash_map(key_size: u32, value_size: u32, max_entries: u32) -> Option<MapData> {
        const BPF_MAP_CREATE: libc::c_long = 0;
        const BPF_MAP_TYPE_HASH: u32 = 1;
        let mut attr = CreateAttr {
            map_type: BPF_MAP_TYPE_HASH,
            key_size,
            value_size,
            max_entries,
        };
        // SAFETY: bpf(2) with BPF_MAP_CREATE's leading attr members; the
        // kernel zero-fills the rest.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_CREATE,
                std::ptr::from_mut(&mut attr),
                size_of::<CreateAttr>(),
            )
        };
        if fd < 0 {
            eprintln!(
                "skipped: cannot create BPF maps here: {}",
                io::Error::last_os_error()
            );
            return None;
        }
        // SAFETY: a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Some(MapData::from_fd(fd).expect("map info of a new map"))
    }

    #[test]
    fn a_map_of_another_layout_is_refused_at_start_up() {
        let Some(map) = hash_map(8, 16, 64) else {
            return;
        };
        assert!(BatchReader::<u64, [u64; 2]>::new(map, false, 64).is_ok());
        for (key, value, max, what) in [
            (
                4,
                16,
                64,
                "key size is 4 in the loaded eBPF object and 8 in this build",
            ),
            (
                8,
                24,
                64,
                "value size is 24 in the loaded eBPF object and 16 in this build",
            ),
            (
                8,
                16,
                32,
                "max entries is 32 in the loaded eBPF object and 64 in this build",
            ),
        ] {
            let Some(map) = hash_map(key, value, max) else {
                return;
            };
            let err = BatchReader::<u64, [u64; 2]>::new(map, false, 64)
                .err()
                .expect("a mismatched layout is an error");
            assert!(err.to_string().contains(what), "{err}");
        }
    }
}

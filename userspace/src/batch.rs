//! Whole-map reads with `BPF_MAP_LOOKUP_BATCH`, and single-key lookups.
//!
//! aya 0.14 reads a hash map one key at a time (`get_next_key` then a
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
            aya::util::nr_cpus().map_err(|(_, e)| e)?
        } else {
            1
        };
        // Per-CPU values are laid out 8-byte aligned; ours are multiples of 8,
        // so `[V]` has the kernel's layout.
        assert!(
            size_of::<V>().is_multiple_of(8) || !per_cpu,
            "per-CPU value size must be a multiple of 8"
        );
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
        let mut deleted = 0;
        for key in &keys {
            let mut attr = ElemAttr {
                map_fd: self.fd(),
                key: std::ptr::from_ref(key) as u64,
                ..ElemAttr::default()
            };
            match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
                Ok(()) => deleted += 1,
                // Evicted meanwhile: gone either way.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }
}

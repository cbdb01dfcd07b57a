//! Whole-map reads with `BPF_MAP_LOOKUP_BATCH`.
//!
//! aya 0.14 reads a hash map one key at a time (`get_next_key` then a
//! lookup: two syscalls per entry, 20,000 per refresh at 10,000 inodes) and
//! has no batch API. This is the kernel's own interface for the job, a few
//! syscalls per map; hash maps have it since Linux 5.6, and fuselock needs
//! 6.9 anyway, so a kernel refusing it is an error, not a fallback.

use std::{
    io,
    marker::PhantomData,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{maps::MapData, Pod};

/// `BPF_MAP_LOOKUP_BATCH` (`include/uapi/linux/bpf.h`).
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

/// Reads every entry of a hash map: `(key, values)` with one value per
/// possible CPU for per-CPU maps, one otherwise.
pub struct BatchReader<K, V> {
    map: MapData,
    slots: usize,
    chunk: usize,
    _kv: PhantomData<(K, V)>,
}

impl<K: Pod + Default, V: Pod> BatchReader<K, V> {
    pub fn new(map: MapData, per_cpu: bool, max_entries: u32) -> io::Result<Self> {
        let slots = if per_cpu {
            aya::util::nr_cpus().map_err(|(_, e)| e)?
        } else {
            1
        };
        // Per-CPU values are laid out 8-byte aligned; ours are multiples of 8.
        assert!(
            size_of::<V>().is_multiple_of(8) || !per_cpu,
            "per-CPU value size must be a multiple of 8"
        );
        Ok(BatchReader {
            map,
            slots,
            chunk: (max_entries as usize).clamp(64, 4096),
            _kv: PhantomData,
        })
    }

    /// Every entry now (entries racing with the read may be seen or not).
    pub fn read_all(&mut self) -> io::Result<Vec<(K, Vec<V>)>> {
        let vsize = size_of::<V>();
        let mut out = Vec::new();
        let mut in_batch = [0u8; 8];
        let mut out_batch = [0u8; 8];
        let mut first = true;
        loop {
            let mut keys: Vec<K> = (0..self.chunk).map(|_| K::default()).collect();
            let mut values = vec![0u8; self.chunk * self.slots * vsize];
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { in_batch.as_ptr() as u64 },
                out_batch: out_batch.as_mut_ptr() as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: self.chunk as u32,
                map_fd: self.map.fd().as_fd().as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            // SAFETY: bpf(2) with an attr pointing at buffers sized for
            // `count` keys and `count * slots` values, alive for the call.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &mut attr as *mut BatchAttr,
                    size_of::<BatchAttr>(),
                )
            };
            let err = (ret < 0).then(io::Error::last_os_error);
            let n = attr.count as usize;
            if err.as_ref().and_then(io::Error::raw_os_error) == Some(libc::ENOSPC) {
                // One hash bucket holds more than `chunk` entries: retry bigger.
                self.chunk *= 2;
                continue;
            }
            for (i, key) in keys.into_iter().take(n).enumerate() {
                let base = i * self.slots * vsize;
                let vals = (0..self.slots)
                    .map(|s| {
                        let at = base + s * vsize;
                        // SAFETY: V is Pod (valid for any bytes); read_unaligned
                        // because the Vec<u8> gives no alignment guarantee.
                        unsafe {
                            std::ptr::read_unaligned(values[at..at + vsize].as_ptr().cast::<V>())
                        }
                    })
                    .collect();
                out.push((key, vals));
            }
            match err {
                None => {}
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
                Some(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP)) => {
                    return Err(io::Error::new(io::ErrorKind::Unsupported, e));
                }
                Some(e) => return Err(e),
            }
            in_batch = out_batch;
            first = false;
        }
    }
}

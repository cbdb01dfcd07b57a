//! Buffers for `O_DIRECT`, which wants memory aligned to the logical block
//! size (512 or 4096 bytes).

use anyhow::bail;

/// The alignment of every buffer: the largest logical block size.
pub(crate) const BUFFER_ALIGN: usize = 4096;

/// A block of `len` bytes whose address is a multiple of [`BUFFER_ALIGN`].
///
/// Over-allocates a `Vec` and uses an aligned window of it, which needs no `unsafe`.
#[derive(Debug)]
pub(crate) struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` bytes, each `fill`.
    pub(crate) fn new(len: usize, fill: u8) -> anyhow::Result<Self> {
        let storage = vec![fill; len + BUFFER_ALIGN];
        let start = storage.as_ptr().align_offset(BUFFER_ALIGN);
        if start >= BUFFER_ALIGN {
            bail!("cannot align a write buffer to {BUFFER_ALIGN} bytes");
        }
        Ok(Self {
            storage,
            start,
            len,
        })
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned() {
        for len in [512, 4096, 4096 * 3 + 512] {
            let buf = AlignedBuf::new(len, 7).expect("alloc");
            assert_eq!(buf.as_slice().len(), len);
            assert_eq!(buf.as_slice().as_ptr() as usize % BUFFER_ALIGN, 0);
            assert!(buf.as_slice().iter().all(|&b| b == 7));
        }
    }
}

//! Open-time evidence: which flags the server asked for, and which the
//! kernel kept.

/// What opens of one file asked for and what the kernel kept, read at the
/// entry and return of `fuse_file_io_open()` (where 6.12 strips
/// `FOPEN_PARALLEL_DIRECT_WRITES` from opens without `FOPEN_DIRECT_IO`).
///
/// The model's open-time evidence of a file too.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenStats {
    pub opens: u64,
    /// Opens whose server reply carried `FOPEN_PASSTHROUGH`.
    pub passthrough: u64,
    /// Opens whose server reply carried `FOPEN_DIRECT_IO`.
    pub direct_io: u64,
    /// Opens whose server reply asked for `FOPEN_PARALLEL_DIRECT_WRITES`.
    pub parallel_asked: u64,
    /// ... and of those, how many still had it after `fuse_file_io_open()`.
    pub parallel_kept: u64,
    /// Passthrough opens (without direct-io) that asked for it.
    pub passthrough_parallel_asked: u64,
    /// ... and kept it: only a patched kernel keeps it.
    pub passthrough_parallel_kept: u64,
    /// The `open_flags` of the last open as the server sent them, and as
    /// `fuse_file_io_open()` left them.
    pub last_flags_asked: u32,
    pub last_flags_kept: u32,
}

impl OpenStats {
    /// Adds another file's counts; the `last_flags_*` become `o`'s.
    pub fn merge(&mut self, o: &OpenStats) {
        self.opens += o.opens;
        self.passthrough += o.passthrough;
        self.direct_io += o.direct_io;
        self.parallel_asked += o.parallel_asked;
        self.parallel_kept += o.parallel_kept;
        self.passthrough_parallel_asked += o.passthrough_parallel_asked;
        self.passthrough_parallel_kept += o.passthrough_parallel_kept;
        self.last_flags_asked = o.last_flags_asked;
        self.last_flags_kept = o.last_flags_kept;
    }
}

//! The start-up configuration handed to the eBPF programs as a read-only global.
//!
//! Rust eBPF has no CO-RE relocations, so userspace resolves every struct
//! offset the programs need from the running kernel's BTF and passes them here.

/// Set by userspace; a program that sees anything else was loaded without a
/// configuration and refuses to run (it counts `Health::unconfigured`).
pub const CONFIG_MAGIC: u64 = 0x6675_7365_6c6f_636b; // "fuselock"

/// Name of the global the loader overrides.
pub const CONFIG_GLOBAL: &str = "FUSELOCK_CONFIG";

/// Bit in [`Config::flags`]: log every write through aya-log (debugging only;
/// it costs a ring-buffer record per write).
pub const FLAG_DEBUG_LOG: u32 = 1 << 0;
/// Bit in [`Config::flags`]: watch `lock:contention_*` for wait times.
pub const FLAG_CONTENTION: u32 = 1 << 1;
/// Bit in [`Config::flags`]: the kernel has cgroups, so each writer's
/// cgroup id is read (`bpf_get_current_cgroup_id()`). The configuration is
/// a read-only global, so on a kernel without cgroups the verifier prunes
/// the call as dead code instead of refusing the program.
pub const FLAG_CGROUP_ID: u32 = 1 << 2;

/// Bit in [`Config::flags`]: count only the writes and opens of tasks
/// under one cgroup ([`Config::cgroup_filter`]), as `perf lock contention
/// -G` filters; off, the check is pruned as dead code.
pub const FLAG_CGROUP_FILTER: u32 = 1 << 3;

/// The cgroup whose tasks alone are watched under [`FLAG_CGROUP_FILTER`]:
/// a task is under it when its ancestor at `level` (the root is 0) is it,
/// which `bpf_get_current_ancestor_cgroup_id()` answers without a map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupFilter {
    /// The cgroup's id: its cgroup v2 directory's inode number.
    pub id: u64,
    pub level: u32,
    pub _reserved: u32,
}

/// A part of a write's accounting that a benchmark can switch off, to
/// measure what it costs (`cargo xtask bench --sections ablation`); never
/// set otherwise. Each is a bit of [`Config::flags`]: the configuration
/// is a read-only global, so the verifier prunes the part switched off as
/// dead code, as it prunes every branch on a flag that is not set.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ablation {
    /// The per-device totals (`DEV_TOTALS`).
    DeviceTotals = 1 << 16,
    /// The writer's count, name and place in the ring of recent writes.
    Writers = 1 << 17,
    /// The per-file and per-path histograms.
    Histograms = 1 << 18,
    /// The clock and `i_size` reads inside the lock (hold times, the EOF
    /// canary).
    LockTiming = 1 << 19,
    /// The per-file value (`FILES`).
    FileStats = 1 << 20,
}

impl Ablation {
    pub const ALL: [Ablation; 5] = [
        Ablation::DeviceTotals,
        Ablation::Writers,
        Ablation::Histograms,
        Ablation::LockTiming,
        Ablation::FileStats,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Ablation::DeviceTotals => "device-totals",
            Ablation::Writers => "writers",
            Ablation::Histograms => "histograms",
            Ablation::LockTiming => "lock-timing",
            Ablation::FileStats => "file-stats",
        }
    }

    pub const fn bit(self) -> u32 {
        self as u32
    }
}

/// Byte offsets of the kernel struct fields the programs read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// `struct kiocb`: `ki_filp`, `ki_pos`, `ki_flags`.
    pub kiocb_ki_filp: u32,
    pub kiocb_ki_pos: u32,
    pub kiocb_ki_flags: u32,
    /// `struct file`: `f_inode`, `private_data`, `f_path.dentry`.
    pub file_f_inode: u32,
    pub file_private_data: u32,
    pub file_f_path_dentry: u32,
    /// `struct dentry`: `d_name.name`.
    pub dentry_d_name_name: u32,
    /// `struct inode`: `i_rwsem`, `i_size`, `i_ino`, `i_sb`.
    pub inode_i_rwsem: u32,
    pub inode_i_size: u32,
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    /// `struct super_block`: `s_dev`.
    pub super_block_s_dev: u32,
    /// `struct rw_semaphore`: `count` and `owner` (classic), or
    /// `rwbase.readers` and `rwbase.rtmutex.owner` (PREEMPT_RT).
    pub rwsem_count: u32,
    pub rwsem_owner: u32,
    /// [`crate::rwsem::RwsemLayout`] as its `u32`.
    pub rwsem_layout: u32,
    /// PREEMPT_RT: `rwbase.rtmutex`, the lock a writer waits on first, whose
    /// contention events name it rather than the rwsem (0 when classic).
    pub rwsem_rt_mutex: u32,
    /// `struct iov_iter`: `count` (inside an anonymous union/struct).
    pub iov_iter_count: u32,
    /// `struct fuse_file`: `open_flags`, `passthrough`.
    pub fuse_file_open_flags: u32,
    pub fuse_file_passthrough: u32,
    /// `struct fuse_inode`: `inode` (the VFS inode inside it) and `state`.
    pub fuse_inode_inode: u32,
    pub fuse_inode_state: u32,
    /// The bit number of `FUSE_I_CACHE_IO_MODE` in `fuse_inode.state` (an
    /// enumerator, so it comes from BTF too).
    pub fuse_i_cache_io_mode: u32,
    /// `struct fuse_io_priv`: `iocb`, the write `fuse_direct_io()` serves.
    pub fuse_io_priv_iocb: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub magic: u64,
    pub cgroup_filter: CgroupFilter,
    pub offsets: Offsets,
    /// `FLAG_*` bits.
    pub flags: u32,
}

impl Config {
    /// The value compiled into the object: not configured.
    pub const UNSET: Config = Config {
        magic: 0,
        cgroup_filter: CgroupFilter {
            id: 0,
            level: 0,
            _reserved: 0,
        },
        offsets: Offsets {
            kiocb_ki_filp: 0,
            kiocb_ki_pos: 0,
            kiocb_ki_flags: 0,
            file_f_inode: 0,
            file_private_data: 0,
            file_f_path_dentry: 0,
            dentry_d_name_name: 0,
            inode_i_rwsem: 0,
            inode_i_size: 0,
            inode_i_ino: 0,
            inode_i_sb: 0,
            super_block_s_dev: 0,
            rwsem_count: 0,
            rwsem_owner: 0,
            rwsem_layout: 0,
            rwsem_rt_mutex: 0,
            iov_iter_count: 0,
            fuse_file_open_flags: 0,
            fuse_file_passthrough: 0,
            fuse_inode_inode: 0,
            fuse_inode_state: 0,
            fuse_i_cache_io_mode: 0,
            fuse_io_priv_iocb: 0,
        },
        flags: 0,
    };

    pub const fn new(offsets: Offsets, flags: u32) -> Config {
        Config {
            magic: CONFIG_MAGIC,
            cgroup_filter: CgroupFilter {
                id: 0,
                level: 0,
                _reserved: 0,
            },
            offsets,
            flags,
        }
    }

    /// This configuration, watching only the tasks under `filter`.
    #[must_use]
    pub const fn with_cgroup_filter(mut self, filter: CgroupFilter) -> Config {
        self.cgroup_filter = filter;
        self.flags |= FLAG_CGROUP_FILTER;
        self
    }

    pub const fn is_configured(&self) -> bool {
        self.magic == CONFIG_MAGIC
    }

    pub const fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }
}

#[cfg(feature = "user")]
// SAFETY: plain old data, `#[repr(C)]`, no padding (every field is a u32/u64,
// and `maps::tests` checks the size is the fields' sum), valid for any bit pattern.
unsafe impl aya::Pod for Config {}

//! Struct offsets for the eBPF programs, from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE relocations: the programs read fields at the
//! offsets resolved here, so one binary works on any kernel with BTF. Every
//! missing field is an error naming the struct, the field, and what it means.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use probes_common::{config::Offsets, rwsem::RwsemLayout};

use crate::kernel::btf::Btf;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
pub const FUSE_MODULE_BTF: &str = "/sys/kernel/btf/fuse";

/// The kernel's BTF: vmlinux, plus the fuse module's when FUSE is a module.
pub struct KernelBtf {
    pub vmlinux: Btf,
    /// Set when FUSE is a module; its types are split on `vmlinux`.
    pub fuse_module: Option<Btf>,
}

impl KernelBtf {
    pub fn load() -> Result<KernelBtf> {
        Self::load_from(Path::new(VMLINUX_BTF), Path::new(FUSE_MODULE_BTF))
    }

    pub fn load_from(vmlinux: &Path, fuse: &Path) -> Result<KernelBtf> {
        if !vmlinux.exists() {
            bail!(
                "{} does not exist: this kernel was built without BTF (CONFIG_DEBUG_INFO_BTF=y); \
                 fuselock needs BTF to find struct offsets",
                vmlinux.display()
            );
        }
        let vmlinux_btf =
            Btf::from_file(vmlinux).with_context(|| format!("reading {}", vmlinux.display()))?;
        let fuse_module = if vmlinux_btf.has_struct("fuse_file") {
            None
        } else if fuse.exists() {
            Some(
                Btf::from_split_file(fuse, &vmlinux_btf)
                    .with_context(|| format!("reading {}", fuse.display()))?,
            )
        } else {
            bail!(
                "FUSE is not in this kernel's BTF: if FUSE is a module, load it (`modprobe fuse`); \
                 a kernel without CONFIG_FUSE_FS cannot be watched"
            );
        };
        Ok(KernelBtf {
            vmlinux: vmlinux_btf,
            fuse_module,
        })
    }

    /// The BTF that describes FUSE's own structs.
    fn fuse(&self) -> &Btf {
        self.fuse_module.as_ref().unwrap_or(&self.vmlinux)
    }
}

fn field(btf: &Btf, strukt: &str, path: &[&str], size: u32) -> Result<u32> {
    let off = btf.member_offset(strukt, path).with_context(|| {
        format!(
            "kernel BTF: cannot find `struct {strukt}.{}`",
            path.join(".")
        )
    })?;
    let actual = btf.member_size(strukt, path).with_context(|| {
        format!(
            "kernel BTF: cannot size `struct {strukt}.{}`",
            path.join(".")
        )
    })?;
    if actual != size {
        bail!(
            "kernel BTF: `struct {strukt}.{}` is {actual} bytes, fuselock expects {size}; \
             this kernel's layout is not supported",
            path.join(".")
        );
    }
    Ok(off)
}

/// Resolves every offset the programs use.
pub fn resolve(kernel: &KernelBtf) -> Result<Offsets> {
    let v = &kernel.vmlinux;
    let f = kernel.fuse();
    let passthrough = f.member_offset("fuse_file", &["passthrough"]).context(
        "kernel BTF: `struct fuse_file` has no `passthrough` member: this kernel lacks FUSE \
         passthrough (Linux >= 6.9 with CONFIG_FUSE_PASSTHROUGH=y is needed)",
    )?;
    let rwsem = rwsem_fields(v)?;
    Ok(Offsets {
        kiocb_ki_filp: field(v, "kiocb", &["ki_filp"], 8)?,
        kiocb_ki_pos: field(v, "kiocb", &["ki_pos"], 8)?,
        kiocb_ki_flags: field(v, "kiocb", &["ki_flags"], 4)?,
        file_f_inode: field(v, "file", &["f_inode"], 8)?,
        file_private_data: field(v, "file", &["private_data"], 8)?,
        file_f_path_dentry: field(v, "file", &["f_path", "dentry"], 8)?,
        dentry_d_name_name: field(v, "dentry", &["d_name", "name"], 8)?,
        inode_i_rwsem: v
            .member_offset("inode", &["i_rwsem"])
            .context("kernel BTF: `struct inode.i_rwsem`")?,
        inode_i_size: field(v, "inode", &["i_size"], 8)?,
        inode_i_ino: field(v, "inode", &["i_ino"], 8)?,
        inode_i_sb: field(v, "inode", &["i_sb"], 8)?,
        super_block_s_dev: field(v, "super_block", &["s_dev"], 4)?,
        rwsem_count: rwsem.count,
        rwsem_owner: rwsem.owner,
        rwsem_layout: rwsem.layout as u32,
        rwsem_rt_mutex: rwsem.rt_mutex,
        iov_iter_count: field(v, "iov_iter", &["count"], 8)?,
        fuse_file_open_flags: field(f, "fuse_file", &["open_flags"], 4)?,
        fuse_file_passthrough: passthrough,
        fuse_inode_inode: f
            .member_offset("fuse_inode", &["inode"])
            .context("kernel BTF: `struct fuse_inode.inode`")?,
        fuse_inode_state: field(f, "fuse_inode", &["state"], 8)?,
        fuse_i_cache_io_mode: cache_io_mode_bit(f)?,
        fuse_io_priv_iocb: field(f, "fuse_io_priv", &["iocb"], 8)?,
    })
}

/// Where `struct rw_semaphore` keeps what tells how it is held.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RwsemFields {
    pub layout: RwsemLayout,
    pub count: u32,
    pub owner: u32,
    pub rt_mutex: u32,
}

/// The classic rwsem (`count`, `owner`), or PREEMPT_RT's, built on
/// `struct rwbase_rt` (`rwbase.readers`, `rwbase.rtmutex.owner`): which one
/// the kernel has is read from its BTF, never assumed.
pub(crate) fn rwsem_fields(v: &Btf) -> Result<RwsemFields> {
    if v.member_offset("rw_semaphore", &["count"]).is_ok() {
        return Ok(RwsemFields {
            layout: RwsemLayout::Classic,
            count: field(v, "rw_semaphore", &["count"], 8)?,
            owner: field(v, "rw_semaphore", &["owner"], 8)?,
            rt_mutex: 0,
        });
    }
    if v.member_offset("rw_semaphore", &["rwbase"]).is_err() {
        bail!(
            "kernel BTF: `struct rw_semaphore` has neither `count` (the classic rwsem) nor \
             `rwbase` (PREEMPT_RT's): this kernel's inode lock is not one fuselock can decode"
        );
    }
    let rt_mutex = v
        .member_offset("rw_semaphore", &["rwbase", "rtmutex"])
        .context("kernel BTF: `struct rw_semaphore.rwbase.rtmutex` (PREEMPT_RT)")?;
    Ok(RwsemFields {
        layout: RwsemLayout::Rt,
        count: field(v, "rw_semaphore", &["rwbase", "readers"], 4)?,
        owner: field(v, "rw_semaphore", &["rwbase", "rtmutex", "owner"], 8)?,
        rt_mutex,
    })
}

/// `FUSE_I_CACHE_IO_MODE`'s bit number in `fuse_inode.state`: an enumerator
/// of an anonymous enum in `fs/fuse/fuse_i.h`, so BTF carries it.
fn cache_io_mode_bit(fuse: &Btf) -> Result<u32> {
    const NAME: &str = "FUSE_I_CACHE_IO_MODE";
    let bit = fuse.enumerator(NAME).with_context(|| {
        format!(
            "kernel BTF: no {NAME}: this kernel lacks FUSE's I/O modes \
             (Linux >= 6.9 is needed)"
        )
    })?;
    match u32::try_from(bit) {
        Ok(bit) if bit < 64 => Ok(bit),
        _ => bail!("kernel BTF: {NAME} is {bit}, not a bit of `fuse_inode.state`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resolution against the machine's own kernel: every field must be found
    /// and the offsets must be plausible (inside their structs, distinct).
    #[test]
    fn resolves_against_the_host_kernel() {
        let vmlinux = Path::new(VMLINUX_BTF);
        if !vmlinux.exists() {
            eprintln!("SKIPPED: {VMLINUX_BTF} missing on this host");
            return;
        }
        let kernel = match KernelBtf::load() {
            Ok(k) => k,
            Err(e) if format!("{e:#}").contains("FUSE is not in this kernel") => {
                eprintln!("SKIPPED: FUSE not loaded on this host: {e:#}");
                return;
            }
            Err(e) => panic!("{e:#}"),
        };
        let o = resolve(&kernel).expect("resolve offsets");
        assert_ne!(o.file_f_inode, o.file_private_data);
        assert!(o.kiocb_ki_pos < 64 && o.kiocb_ki_flags < 64);
        assert_eq!(
            o.rwsem_owner,
            o.rwsem_count + 8,
            "owner follows count in struct rw_semaphore"
        );
        // Since 6.9: ADVISE_RDPLUS, INIT_RDPLUS, SIZE_UNSTABLE, BAD, BTIME,
        // CACHE_IO_MODE.
        assert_eq!(o.fuse_i_cache_io_mode, 5);
    }

    #[test]
    fn missing_btf_says_what_to_do() {
        let err = KernelBtf::load_from(
            Path::new("/nonexistent/vmlinux"),
            Path::new("/nonexistent/fuse"),
        )
        .err()
        .expect("must fail");
        assert!(
            format!("{err:#}").contains("CONFIG_DEBUG_INFO_BTF"),
            "{err:#}"
        );
    }
}

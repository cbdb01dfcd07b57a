//! The host's own kernel BTF, and BTF from an independent encoder.

use super::*;

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// The host's vmlinux BTF, parsed once for all tests; `None` (after a loud
/// message) where the kernel exposes none.
fn vmlinux() -> Option<&'static Btf> {
    static BTF: OnceLock<Option<Btf>> = OnceLock::new();
    let btf = BTF.get_or_init(|| {
        let path = Path::new(VMLINUX);
        if !path.exists() {
            return None;
        }
        let start = Instant::now();
        let btf = Btf::from_file(path).expect("host vmlinux BTF parses");
        eprintln!("parsed {VMLINUX} in {:?}: {btf:?}", start.elapsed());
        Some(btf)
    });
    if btf.is_none() {
        eprintln!("!!!!!! SKIPPED: {VMLINUX} does not exist; kernel BTF tests did not run !!!!!!");
    }
    btf.as_ref()
}

/// Offsets checked with `pahole -C <struct> /sys/kernel/btf/vmlinux` on the
/// development host (6.18.44, x86_64). Layouts vary with version and config, so
/// other kernels only check that the members resolve.
const HOST_OFFSETS_6_18: [(&str, &[&str], u32); 23] = [
    ("file", &["f_lock"], 0),
    ("file", &["private_data"], 24),
    ("file", &["f_inode"], 32),
    ("file", &["f_path"], 64),
    ("file", &["f_path", "dentry"], 72),
    ("file", &["f_pos"], 112),
    ("path", &["dentry"], 8),
    ("kiocb", &["ki_filp"], 0),
    ("kiocb", &["ki_pos"], 8),
    ("kiocb", &["ki_flags"], 32),
    ("iov_iter", &["count"], 24),
    ("iov_iter", &["ubuf"], 16),
    ("inode", &["i_sb"], 40),
    ("inode", &["i_ino"], 64),
    ("inode", &["i_size"], 80),
    ("inode", &["i_rwsem"], 152),
    ("super_block", &["s_dev"], 16),
    ("rw_semaphore", &["count"], 0),
    ("rw_semaphore", &["owner"], 8),
    ("dentry", &["d_name"], 32),
    ("dentry", &["d_name", "name"], 40),
    ("qstr", &["name"], 8),
    ("qstr", &["len"], 4),
];

#[test]
fn vmlinux_member_offsets() {
    let Some(btf) = vmlinux() else { return };
    let exact = fuselock_base::procfs::kernel_release().starts_with("6.18.");
    if !exact {
        eprintln!(
            "kernel {} is not 6.18: checking that members resolve, not their offsets",
            fuselock_base::procfs::kernel_release()
        );
    }
    for (name, path, expected) in HOST_OFFSETS_6_18 {
        let offset = btf
            .member_offset(name, path)
            .unwrap_or_else(|e| panic!("{name}.{}: {e}", path.join(".")));
        if exact {
            assert_eq!(offset, expected, "{name}.{}", path.join("."));
        }
    }
    // True on any kernel: nested offsets add up.
    let f_path = btf.member_offset("file", &["f_path"]).unwrap();
    let dentry = btf.member_offset("path", &["dentry"]).unwrap();
    assert_eq!(
        btf.member_offset("file", &["f_path", "dentry"]).unwrap(),
        f_path + dentry
    );
}

#[test]
fn vmlinux_member_sizes() {
    let Some(btf) = vmlinux() else { return };
    let sizes: [(&str, &[&str], u32); 10] = [
        ("kiocb", &["ki_pos"], 8),
        ("kiocb", &["ki_flags"], 4),
        ("kiocb", &["ki_filp"], 8),
        ("iov_iter", &["count"], 8),
        ("inode", &["i_size"], 8),
        ("inode", &["i_sb"], 8),
        ("super_block", &["s_dev"], 4),
        ("dentry", &["d_name"], 16),
        ("file", &["f_path"], 16),
        ("qstr", &["name"], 8),
    ];
    for (name, path, expected) in sizes {
        let size = btf.member_size(name, path).unwrap();
        assert_eq!(size, expected, "{name}.{}", path.join("."));
    }
    let rwsem = btf.member_size("rw_semaphore", &[]).unwrap();
    assert_eq!(btf.member_size("inode", &["i_rwsem"]).unwrap(), rwsem);
}

#[test]
fn vmlinux_funcs_and_structs() {
    let Some(btf) = vmlinux() else { return };
    assert!(btf.has_func("vfs_write"));
    assert!(btf.has_func("vfs_read"));
    assert!(!btf.has_func("file"));
    assert!(!btf.has_func("no_such_function_in_any_kernel"));
    assert!(btf.has_struct("file"));
    assert!(btf.has_struct("kiocb"));
    assert!(!btf.has_struct("vfs_write"));
    assert!(!btf.has_struct("no_such_struct_in_any_kernel"));
}

#[test]
fn vmlinux_missing_member_is_named() {
    let Some(btf) = vmlinux() else { return };
    let err = btf.member_offset("file", &["no_such_member"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "struct file has no member `no_such_member`"
    );
    let err = btf
        .member_offset("file", &["f_path", "no_such_member"])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "struct file has no member `f_path.no_such_member`"
    );
    let err = btf
        .member_offset("no_such_struct_in_any_kernel", &["x"])
        .unwrap_err();
    assert!(matches!(err, BtfError::StructNotFound { .. }), "{err:?}");
}

/// Every type of the real BTF decodes, every name and member name resolves, and
/// every member type resolves through its modifiers.
#[test]
fn vmlinux_every_type_decodes() {
    let Some(btf) = vmlinux() else { return };
    let layer = &btf.layers[0];
    let (mut types, mut members) = (0, 0);
    for id in layer.ids() {
        let ty = btf.type_by_id(id).unwrap();
        btf.str_at(ty.name_off).unwrap();
        if ty.kind.is_modifier() {
            btf.skip_modifiers(id).unwrap();
        }
        for member in ty.members() {
            btf.str_at(member.name_off).unwrap();
            btf.skip_modifiers(member.type_id).unwrap();
            members += 1;
        }
        types += 1;
    }
    eprintln!("{types} types, {members} struct/union members");
    assert!(types > 10_000 && members > 10_000);
}

/// Module BTF, split on vmlinux: resolve a struct only the module defines.
#[test]
fn module_split_btf() {
    let Some(vmlinux) = vmlinux() else { return };
    let module = std::fs::read_dir("/sys/kernel/btf")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.file_name().is_some_and(|name| name != "vmlinux"))
        .min();
    let Some(module) = module else {
        eprintln!("!!!!!! SKIPPED: no module BTF in /sys/kernel/btf (modules built in?) !!!!!!");
        return;
    };
    let btf = Btf::from_split_file(&module, vmlinux).unwrap();
    let own = &btf.layers[1];
    assert_eq!(own.first_id, vmlinux.layers[0].next_id().unwrap());
    // The first module-only struct with a plain first member.
    let found = own.ids().find_map(|id| {
        let ty = btf.type_by_id(id).ok()?;
        let name = String::from_utf8(btf.str_at(ty.name_off).ok()?.to_vec()).ok()?;
        if ty.kind != Kind::Struct || name.is_empty() || vmlinux.has_struct(&name) {
            return None;
        }
        let member = ty.members().next()?;
        let member_name = String::from_utf8(btf.str_at(member.name_off).ok()?.to_vec()).ok()?;
        let whole_bytes = member.bitfield_size == 0 && member.bit_offset % 8 == 0;
        (!member_name.is_empty() && whole_bytes).then_some((name, member_name, member.bit_offset))
    });
    let Some((name, member, bit_offset)) = found else {
        panic!("{}: no module-only struct found", module.display());
    };
    eprintln!("{}: struct {name}.{member}", module.display());
    assert_eq!(
        btf.member_offset(&name, &[&member]).unwrap(),
        bit_offset / 8
    );
    // And the base is still reachable through the module's BTF.
    assert_eq!(
        btf.member_offset("file", &["f_inode"]).unwrap(),
        vmlinux.member_offset("file", &["f_inode"]).unwrap()
    );
}

/// Split BTF made by an independent encoder: `pahole` turns a small C object's
/// DWARF into BTF split on the host's vmlinux, as the kernel build does for
/// modules. Covers hosts without module BTF; skipped without gcc and pahole.
#[test]
fn pahole_generated_split_btf() {
    const SOURCE: &str = "
        struct list_head { struct list_head *next, *prev; };
        struct my_module_state {
            int refs;
            struct list_head link;
            union { long cookie; void *owner; };
            unsigned char tag[6];
            unsigned int flag_a : 3, flag_b : 5;
            unsigned long tail;
        };
        struct my_module_state g_state;
        int my_module_func(struct my_module_state *s) { return s->refs; }
    ";
    let Some(vmlinux) = vmlinux() else { return };
    let dir = std::env::temp_dir().join(format!("btf-pahole-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (source, object, btf_path) = (dir.join("mod.c"), dir.join("mod.o"), dir.join("mod.btf"));
    std::fs::write(&source, SOURCE).unwrap();
    let succeeded = |command: &mut Command| command.output().is_ok_and(|out| out.status.success());
    let built = succeeded(
        Command::new("gcc")
            .args(["-g", "-c", "-o"])
            .arg(&object)
            .arg(&source),
    ) && succeeded(
        Command::new("pahole")
            .args(["--btf_base", VMLINUX])
            .arg(format!("--btf_encode_detached={}", btf_path.display()))
            .arg(&object),
    );
    if !built {
        std::fs::remove_dir_all(&dir).unwrap();
        eprintln!("!!!!!! SKIPPED: gcc or pahole (dwarves) missing or failed !!!!!!");
        return;
    }
    let btf = Btf::from_split_file(&btf_path, vmlinux).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    assert_eq!(btf.layers[1].first_id, vmlinux.layers[0].next_id().unwrap());
    let offsets = [
        ("refs", 0, 4),
        ("link", 8, 16),
        ("cookie", 24, 8),
        ("owner", 24, 8),
        ("tag", 32, 6),
        ("tail", 40, 8),
    ];
    for (member, offset, size) in offsets {
        assert_eq!(
            btf.member_offset("my_module_state", &[member]).unwrap(),
            offset
        );
        assert_eq!(btf.member_size("my_module_state", &[member]).unwrap(), size);
    }
    // `struct list_head` is deduplicated against vmlinux's: the module's member
    // refers to a base id.
    let prev = btf.member_offset("my_module_state", &["link", "prev"]);
    assert_eq!(prev.unwrap(), 16);
    let list_heads: Vec<_> = btf.named("list_head").map(|ty| ty.id).collect();
    assert!(!list_heads.is_empty());
    assert!(list_heads.iter().all(|&id| id < btf.layers[1].first_id));
    let err = btf
        .member_offset("my_module_state", &["flag_b"])
        .unwrap_err();
    assert!(matches!(err, BtfError::Bitfield { .. }), "{err:?}");
    assert_eq!(btf.member_size("my_module_state", &[]).unwrap(), 48);
    assert!(btf.has_func("my_module_func"));
    assert!(btf.has_func("vfs_write"));
    assert!(!vmlinux.has_struct("my_module_state"));
}

/// The inode lock's layout comes from BTF: the classic rwsem, PREEMPT_RT's
/// `rwbase_rt` at the offsets its BTF gives, or a clear refusal.
#[test]
fn rwsem_layouts_are_told_apart_by_their_members() {
    use crate::kernel::offsets::{rwsem_fields, RwsemFields};
    use probes_common::rwsem::RwsemLayout;

    let mut classic = Builder::new();
    let long = classic.int("long", 8);
    let atomic_long = classic.structure("atomic_long_t", 8, &[("counter", long, 0)]);
    classic.structure(
        "rw_semaphore",
        40,
        &[("count", atomic_long, 0), ("owner", atomic_long, 64)],
    );
    assert_eq!(
        rwsem_fields(&classic.parse()).expect("classic"),
        RwsemFields {
            layout: RwsemLayout::Classic,
            count: 0,
            owner: 8,
            rt_mutex: 0
        }
    );

    // PREEMPT_RT, as include/linux/{rwbase_rt,rtmutex}.h lay it out.
    let mut rt = Builder::new();
    let int = rt.int("int", 4);
    rt.int("long", 8);
    let task = rt.fwd("task_struct");
    let task_ptr = rt.ptr(task);
    let atomic = rt.structure("atomic_t", 4, &[("counter", int, 0)]);
    let spinlock = rt.structure("raw_spinlock", 4, &[("raw_lock", int, 0)]);
    let waiters = rt.structure("rb_root_cached", 16, &[]);
    let rt_mutex = rt.structure(
        "rt_mutex_base",
        32,
        &[
            ("wait_lock", spinlock, 0),
            ("waiters", waiters, 64),
            ("owner", task_ptr, 192),
        ],
    );
    let rwbase = rt.structure(
        "rwbase_rt",
        40,
        &[("readers", atomic, 0), ("rtmutex", rt_mutex, 64)],
    );
    rt.structure("rw_semaphore", 40, &[("rwbase", rwbase, 0)]);
    assert_eq!(
        rwsem_fields(&rt.parse()).expect("rt"),
        RwsemFields {
            layout: RwsemLayout::Rt,
            count: 0,
            owner: 32,
            rt_mutex: 8
        }
    );

    let mut neither = Builder::new();
    let int = neither.int("int", 4);
    neither.structure("rw_semaphore", 4, &[("lock", int, 0)]);
    let err = format!(
        "{:#}",
        rwsem_fields(&neither.parse()).expect_err("no known layout")
    );
    assert!(
        err.contains("neither `count`") && err.contains("PREEMPT_RT"),
        "{err}"
    );
}

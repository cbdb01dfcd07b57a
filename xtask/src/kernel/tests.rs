use super::*;

#[test]
fn options_kconfig_dropped_are_found() {
    let wanted = "CONFIG_A=y\n# comment\nCONFIG_B=y\nCONFIG_C=m\n";
    assert_eq!(
        lost_options(wanted, "CONFIG_A=y\nCONFIG_B=y\n"),
        Vec::<&str>::new()
    );
    assert_eq!(
        lost_options(wanted, "CONFIG_A=y\n# CONFIG_B is not set\n"),
        ["CONFIG_B=y"]
    );
}

/// The files a unified diff patches, in its order.
fn files_patched(patch: &str) -> Vec<&str> {
    patch
        .lines()
        .filter_map(|l| l.strip_prefix("+++ b/"))
        .collect()
}

#[test]
fn patch_touches_exactly_the_two_files() {
    assert_eq!(
        SERIES.iter().map(|s| s.line).collect::<Vec<_>>(),
        ["6.12", "7.3"]
    );
    for series in SERIES {
        let patch = series.patch;
        assert_eq!(
            files_patched(patch),
            ["fs/fuse/iomode.c", "fs/fuse/passthrough.c"],
            "{}",
            series.patch_name
        );
        for line in [
            "+\tif (!(ff->open_flags & (FOPEN_DIRECT_IO | FOPEN_PASSTHROUGH)))",
            "-\tinode_lock(inode);",
            "+\t\tinode_lock_shared(inode);",
            "+\t\tinode_unlock_shared(inode);",
            "+\tif (!(ff->open_flags & FOPEN_PARALLEL_DIRECT_WRITES))",
            "+\tif (!(iocb->ki_flags & IOCB_DIRECT))",
            "+\tif (iocb->ki_flags & IOCB_APPEND)",
            "+\tif (fuse_passthrough_io_past_eof(iocb, iter))",
        ] {
            assert!(patch.contains(line), "{}: {line}", series.patch_name);
        }
    }
}

/// v3 as the author posted it: the `FOPEN_IOMODE()` helpers decide the
/// flag in `iomode.c`, and `fuse_passthrough_lock()` re-checks EOF under
/// the shared lock and upgrades.
#[test]
fn v3_changes_the_lines_the_author_changes() {
    for series in SERIES {
        let patch = series.v3;
        assert_eq!(
            files_patched(patch),
            ["fs/fuse/iomode.c", "fs/fuse/passthrough.c"],
            "{}",
            series.v3_name
        );
        for line in [
            "+#define FOPEN_IOMODE_IS_CACHED(oflags) \\",
            "+\tif (FOPEN_IOMODE_IS_CACHED(ff->open_flags))",
            "-\tif (!(ff->open_flags & FOPEN_DIRECT_IO))",
            "+\tif (FOPEN_IOMODE_IS_DIRECT(ff->open_flags) &&",
            "+static void fuse_passthrough_lock(struct kiocb *iocb, struct iov_iter *iter,",
            "+\t\tif (fuse_passthrough_io_past_eof(iocb, iter)) {",
            "+\t\t\tinode_unlock_shared(inode);",
            "+\t\t\tinode_lock(inode);",
            "+\t\t\t*exclusive = true;",
            "-\tinode_lock(inode);",
            "+\tfuse_passthrough_lock(iocb, iter, &exclusive);",
            "+\tfuse_passthrough_unlock(iocb, exclusive);",
        ] {
            assert!(patch.contains(line), "{}: {line}", series.v3_name);
        }
    }
}

#[test]
fn variants_are_named_as_kernel_names_give_them() {
    for v in Variant::ALL {
        assert_eq!(parse_variant(v.name()), Ok(v));
    }
    assert!(parse_variant("v4").is_err());
}

#[test]
fn renamed_options_are_renamed_on_their_line_only() {
    let old = Series::for_line("6.12").unwrap().config();
    // 6.12's fragment is the file itself: its cache key is unchanged.
    assert_eq!(old, CONFIG);
    assert!(old.contains("\nCONFIG_PROC_SYSCTL=y\n"));
    let new = Series::for_line("7.3").unwrap().config();
    assert!(new.contains("\nCONFIG_SYSCTL=y\n"), "{new}");
    assert!(!new.contains("PROC_SYSCTL"));
    assert!(new.contains("\nCONFIG_SYSVIPC=y\n"));
    assert_eq!(new.lines().count(), CONFIG.lines().count());
}

#[test]
fn unknown_lines_name_the_built_ones() {
    assert_eq!(Series::for_line("7.3").unwrap().line, "7.3");
    let err = Series::for_line("7.1").unwrap_err().to_string();
    assert_eq!(
        err,
        "no port of the series to Linux 7.1: the lines built are 6.12, 7.3"
    );
}

#[test]
fn cache_key_depends_on_every_input() {
    let a = fnv(&[b"src", b"patch", b"config"]);
    assert_ne!(a, fnv(&[b"src", b"patch", b"config2"]));
    assert_ne!(a, fnv(&[b"srcp", b"atch", b"config"]));
    assert_eq!(a, fnv(&[b"src", b"patch", b"config"]));
}

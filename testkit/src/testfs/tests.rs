use std::fs::{File, Permissions};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::time::UNIX_EPOCH;

use fuser::FopenFlags;

use super::backing::{create_backing, unix_time, Beneath};
use super::fs::backing_open_flags;
use super::tables::{BackingKey, HandleTable, InodeTable};
use super::*;

fn args(parallel: bool, direct_io: bool) -> TestfsArgs {
    TestfsArgs {
        backing: PathBuf::from("/b"),
        mountpoint: PathBuf::from("/m"),
        parallel,
        direct_io,
        cached_readers: false,
        allow_other: false,
        server_threads: 1,
    }
}

#[test]
fn cached_readers_are_read_only_opens_without_direct_io() {
    let policy = OpenPolicy::from_args(&TestfsArgs {
        cached_readers: true,
        ..args(true, true)
    });
    assert_eq!(policy.fopen_flags_for(libc::O_RDONLY), FopenFlags::empty());
    for writer in [
        libc::O_WRONLY,
        libc::O_RDWR,
        libc::O_WRONLY | libc::O_DIRECT,
    ] {
        assert_eq!(policy.fopen_flags_for(writer).bits(), 0x41, "{writer:#x}");
    }
    // Without the option a reader is as direct as anyone.
    let plain = OpenPolicy::from_args(&args(true, true));
    assert_eq!(plain.fopen_flags_for(libc::O_RDONLY).bits(), 0x41);
    assert!(policy.describe().ends_with("read-only opens: page cache"));
}

#[test]
fn fopen_flags_follow_the_options() {
    let flags = |parallel, direct_io| {
        OpenPolicy::from_args(&args(parallel, direct_io))
            .fopen_flags()
            .bits()
    };
    assert_eq!(flags(false, false), 0x80);
    assert_eq!(flags(true, false), 0xc0);
    assert_eq!(flags(false, true), 0x01);
    assert_eq!(flags(true, true), 0x41);
}

#[test]
fn direct_io_never_asks_for_passthrough() {
    // ReplyOpen::opened panics on FOPEN_PASSTHROUGH, so this must hold for every combination.
    for parallel in [false, true] {
        let policy = OpenPolicy::from_args(&args(parallel, true));
        assert!(!policy.fopen_flags().contains(FopenFlags::FOPEN_PASSTHROUGH));
    }
}

#[test]
fn describe_names_every_flag() {
    let policy = OpenPolicy::from_args(&args(true, false));
    assert_eq!(
        policy.describe(),
        "0xc0 = FOPEN_PARALLEL_DIRECT_WRITES|FOPEN_PASSTHROUGH"
    );
}

#[test]
fn backing_flags_keep_access_mode_and_sync_only() {
    let kernel = libc::O_WRONLY
        | libc::O_DIRECT
        | libc::O_APPEND
        | libc::O_CREAT
        | libc::O_EXCL
        | libc::O_NOCTTY
        | libc::O_DSYNC
        | libc::O_LARGEFILE;
    assert_eq!(
        backing_open_flags(kernel),
        libc::O_WRONLY | libc::O_DSYNC | libc::O_NOFOLLOW
    );
    assert_eq!(
        backing_open_flags(libc::O_RDWR | libc::O_TRUNC),
        libc::O_RDWR | libc::O_TRUNC | libc::O_NOFOLLOW
    );
    assert_eq!(backing_open_flags(libc::O_RDONLY), libc::O_NOFOLLOW);
}

fn key(ino: u64) -> BackingKey {
    BackingKey { dev: 7, ino }
}

#[test]
fn inode_table_starts_with_the_root() {
    let table = InodeTable::new(key(2));
    let root = table.node(1).expect("root node");
    assert_eq!(root.key, key(2));
    assert_eq!(root.rel, PathBuf::new());
}

#[test]
fn inode_numbers_are_stable_per_backing_inode() {
    let mut table = InodeTable::new(key(2));
    let a = table.intern(key(10), "a".into());
    let b = table.intern(key(11), "b".into());
    assert_ne!(a, b);
    assert!(a > 1 && b > 1);
    assert_eq!(table.intern(key(10), "a".into()), a);
    // Same backing inode under another name (hard link): same number, newest name.
    assert_eq!(table.intern(key(10), "dir/a2".into()), a);
    assert_eq!(table.node(a).map(|n| n.rel.clone()), Some("dir/a2".into()));
    // Same st_ino on another device is another file.
    assert_ne!(table.intern(BackingKey { dev: 8, ino: 10 }, "c".into()), a);
}

#[test]
fn retired_backing_inodes_get_new_numbers() {
    let mut table = InodeTable::new(key(2));
    let old = table.intern(key(10), "a".into());
    table.retire(key(10));
    // The old FUSE inode still resolves (open handles may refer to it)...
    assert_eq!(table.node(old).map(|n| n.key), Some(key(10)));
    // ...but a reused backing inode number is a new file.
    let new = table.intern(key(10), "a".into());
    assert_ne!(new, old);
}

#[derive(Debug)]
struct FakeBacking(u32);

fn scratch_file() -> File {
    File::open("/dev/null").expect("open /dev/null")
}

#[test]
fn handles_share_one_backing_per_inode() {
    let mut table = HandleTable::<FakeBacking>::new();
    let first = table.backing_for(5, || Ok(FakeBacking(1))).expect("create");
    let fh1 = table.insert(5, scratch_file(), Some(Arc::clone(&first)));
    let second = table
        .backing_for(5, || panic!("must reuse the live backing"))
        .expect("reuse");
    assert!(Arc::ptr_eq(&first, &second));
    let fh2 = table.insert(5, scratch_file(), Some(second));
    assert_ne!(fh1, fh2);
    drop(first);

    // Releasing one handle keeps the ID for the other.
    drop(table.remove(fh1).expect("fh1 open"));
    let again = table
        .backing_for(5, || panic!("still held by fh2"))
        .expect("reuse");
    assert_eq!(again.0, 1);
    drop(again);

    // Releasing the last one drops it; the next open creates a new one.
    let last = table.remove(fh2).expect("fh2 open");
    assert!(table.backing_by_ino.is_empty());
    drop(last);
    let fresh = table.backing_for(5, || Ok(FakeBacking(2))).expect("create");
    assert_eq!(fresh.0, 2);
}

#[test]
fn backing_paths_never_leave_the_backing_directory() {
    let base = std::env::temp_dir().join(format!("beneath-{}", std::process::id()));
    let backing = base.join("backing");
    std::fs::create_dir_all(backing.join("dir")).expect("mkdir");
    let outside = base.join("outside");
    std::fs::write(&outside, b"keep").expect("write");
    std::fs::write(backing.join("dir/file"), b"in").expect("write");
    std::os::unix::fs::symlink(&outside, backing.join("dir/link")).expect("symlink");
    std::os::unix::fs::symlink(&base, backing.join("up")).expect("symlink");
    let b = Beneath::root(backing.clone()).expect("open backing");
    let rw = libc::O_RDWR | libc::O_TRUNC;
    assert!(b.open(Path::new("dir/file"), libc::O_RDONLY, 0).is_ok());
    let mut names = b.names(Path::new("dir")).expect("list");
    names.sort();
    assert_eq!(names, ["file", "link"]);
    assert!(
        b.names(Path::new("up")).is_err(),
        "listed through a symlink"
    );
    for escape in ["dir/link", "up/outside", "../outside", "dir/../../outside"] {
        let err = b.open(Path::new(escape), rw, 0).expect_err(escape);
        assert!(
            matches!(err.raw_os_error(), Some(libc::ELOOP | libc::EXDEV)),
            "{escape}: {err}"
        );
    }
    assert!(b.unlink(Path::new("up/outside")).is_err());
    let created = create_backing(&b, Path::new("up/new"), libc::O_WRONLY, 0o644, (0, 0));
    assert!(created.is_err());
    assert_eq!(std::fs::read(&outside).expect("read"), b"keep");
    assert!(!base.join("new").exists());
    std::fs::remove_dir_all(&base).expect("cleanup");
}

/// CREATE of a name that exists by now (the kernel believed it new, and checks no permission
/// for the open of a file the caller made): `EEXIST`, and the file is neither opened nor
/// truncated nor given to the caller.
#[test]
fn create_never_opens_an_existing_file() {
    let backing = std::env::temp_dir().join(format!("create-excl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&backing);
    std::fs::create_dir_all(&backing).expect("mkdir");
    let existing = backing.join("root-only");
    std::fs::write(&existing, b"keep").expect("write");
    std::fs::set_permissions(&existing, Permissions::from_mode(0o600)).expect("chmod");
    let before = std::fs::metadata(&existing).expect("stat");
    let b = Beneath::root(backing.clone()).expect("open backing");
    for flags in [
        libc::O_WRONLY | libc::O_TRUNC,
        libc::O_RDWR,
        libc::O_WRONLY | libc::O_EXCL,
    ] {
        let err = create_backing(&b, Path::new("root-only"), flags, 0o666, (1234, 1234))
            .expect_err("exists");
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{flags:#o}: {err}");
    }
    let after = std::fs::metadata(&existing).expect("stat");
    assert_eq!(std::fs::read(&existing).expect("read"), b"keep");
    assert_eq!(
        (after.mode(), after.uid(), after.gid()),
        (before.mode(), before.uid(), before.gid())
    );
    // A new name is created, with the caller's mode.
    let made = create_backing(&b, Path::new("new"), libc::O_WRONLY, 0o640, (0, 0)).expect("new");
    assert_eq!(made.metadata().expect("stat").mode() & 0o7777, 0o640);
    std::fs::remove_dir_all(&backing).expect("cleanup");
}

#[test]
fn failed_backing_creation_leaves_no_trace() {
    let mut table = HandleTable::<FakeBacking>::new();
    let err = table
        .backing_for(5, || Err(io::Error::from_raw_os_error(libc::EPERM)))
        .expect_err("creation fails");
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    assert!(table.backing_by_ino.is_empty());
    assert!(table.open.is_empty());
}

#[test]
fn unknown_handles_are_reported() {
    let mut table = HandleTable::<FakeBacking>::new();
    assert!(table.file(42).is_none());
    assert!(table.remove(42).is_none());
    let fh = table.insert(3, scratch_file(), None);
    assert!(table.file(fh).is_some());
    assert!(table.file_of_inode(3).is_some());
    assert!(table.file_of_inode(4).is_none());
    assert!(table.remove(fh).is_some());
    assert!(table.file(fh).is_none());
}

#[test]
fn cap_sys_admin_is_read_from_cap_eff() {
    let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n";
    assert_eq!(cap_sys_admin_from_status(status), Some(true));
    let status = "CapEff:\t0000000000000000\n";
    assert_eq!(cap_sys_admin_from_status(status), Some(false));
    assert_eq!(cap_sys_admin_from_status("Name:\tx\n"), None);
}

#[test]
fn unix_time_handles_both_sides_of_the_epoch() {
    assert_eq!(unix_time(0, 0), UNIX_EPOCH);
    assert_eq!(unix_time(5, 7), UNIX_EPOCH + Duration::new(5, 7));
    assert_eq!(
        unix_time(-5, 7),
        UNIX_EPOCH - Duration::from_secs(5) + Duration::from_nanos(7)
    );
}

#[test]
fn mount_paths_must_not_nest_backing_in_mountpoint() {
    let base = std::env::temp_dir().join(format!("testfs-paths-{}", std::process::id()));
    let inner = base.join("inner");
    std::fs::create_dir_all(&inner).expect("mkdir");
    let sibling = base.join("sibling");
    std::fs::create_dir_all(&sibling).expect("mkdir");
    assert!(check_paths(&inner, &base).is_err());
    assert!(check_paths(&base, &inner).is_err());
    assert!(check_paths(&base, &base).is_err());
    assert!(check_paths(&inner, &sibling).is_ok());
    assert!(check_paths(&base.join("missing"), &sibling).is_err());
    std::fs::remove_dir_all(&base).expect("cleanup");
}

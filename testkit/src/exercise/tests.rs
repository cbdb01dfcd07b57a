use std::{sync::mpsc, time::Duration};

use super::*;

/// A target on a fresh host directory (not FUSE): for what happens
/// after `check_target`.
fn host_target(name: &str) -> Target {
    let dir_path =
        std::env::temp_dir().join(format!("fuselock-exercise-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir_path);
    std::fs::create_dir_all(&dir_path).expect("mkdir");
    Target {
        dir: open_dir(&dir_path).expect("open dir"),
        dir_path,
        named_file: None,
    }
}

fn cleanup(target: Target) {
    std::fs::remove_dir_all(&target.dir_path).expect("cleanup");
}

/// A user who may write to the directory renames another file to the
/// scratch file's name between its creation and the next open: that
/// file is neither written through the reopen nor unlinked at the end.
#[test]
fn a_file_renamed_to_the_scratch_name_is_neither_written_nor_removed() {
    let target = host_target("renamed");
    let name = scratch_name(7, 9);
    let at_name = target.dir_path.join(&name);
    let victim = target.dir_path.join("victim");
    std::fs::write(&victim, b"keep me").expect("write");
    let scratch = Scratch::create_named(&target, &name).expect("create");
    std::fs::rename(&victim, &at_name).expect("rename over the scratch name");
    let writer = scratch.open(libc::O_WRONLY).expect("reopen");
    writer.write_at(b"scratch", 0).expect("write");
    assert_eq!(scratch.file.metadata().expect("stat").len(), 7);
    drop(writer);
    drop(scratch);
    assert_eq!(std::fs::read(&at_name).expect("still there"), b"keep me");
    cleanup(target);
}

#[test]
fn the_scratch_file_is_removed_while_its_name_is_its_own() {
    let target = host_target("removed");
    let name = scratch_name(7, 10);
    let scratch = Scratch::create_named(&target, &name).expect("create");
    let writer = scratch
        .open(libc::O_WRONLY | libc::O_APPEND)
        .expect("reopen");
    assert_eq!(
        Identity::of(&writer).expect("stat"),
        scratch.id,
        "another file"
    );
    drop(writer);
    drop(scratch);
    assert!(!target.dir_path.join(&name).exists(), "left behind");
    cleanup(target);
}

/// Cancelled (SIGINT, SIGTERM, SIGHUP): the writes stop, the run fails
/// and the scratch file goes with it.
#[test]
fn a_cancelled_exercise_removes_its_scratch_file() {
    let target = host_target("cancelled");
    let name = scratch_name(7, 11);
    let scratch = Scratch::create_named(&target, &name).expect("create");
    let cancel = AtomicBool::new(true);
    assert!(exercise(&scratch, &cancel, &|_, _| {}).is_err());
    drop(scratch);
    assert!(!target.dir_path.join(&name).exists(), "left behind");
    cleanup(target);
}

/// The named file, replaced by a FIFO after `check_target`: refused at
/// once (an open for reading would wait for a writer for ever), and so
/// are a symlink and a directory.
#[test]
fn a_named_file_replaced_by_a_fifo_is_refused_at_once() {
    let target = host_target("fifo");
    let fifo = target.dir_path.join("data");
    let c = CString::new(fifo.as_os_str().as_bytes()).expect("path");
    // SAFETY: mkfifo(3) with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let _ = tx.send(
                open_named(&target, &fifo)
                    .map(drop)
                    .map_err(|e| format!("{e:#}")),
            );
        });
        let result = rx.recv_timeout(Duration::from_secs(10));
        if result.is_err() {
            // Release the blocked open so that the test can end.
            let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
        }
        let err = result
            .expect("opening the named file blocked on a FIFO")
            .expect_err("a FIFO is not a regular file");
        assert!(
            err.contains("not a regular file any more (a FIFO)"),
            "{err}"
        );
    });
    let link = target.dir_path.join("link");
    std::os::unix::fs::symlink("data", &link).expect("symlink");
    let sub = target.dir_path.join("sub");
    std::fs::create_dir(&sub).expect("mkdir");
    for (path, kind) in [(&link, "a symbolic link"), (&sub, "a directory")] {
        let err = open_named(&target, path).expect_err("not a regular file");
        assert!(format!("{err:#}").contains(kind), "{err:#}");
    }
    let file = target.dir_path.join("file");
    std::fs::write(&file, b"x").expect("write");
    open_named(&target, &file).expect("a regular file");
    cleanup(target);
}

/// Only regular files of ours with one link and a dead owner's name are
/// removed; anything else named like them is left alone.
#[test]
fn the_sweep_removes_only_stale_regular_files_of_ours() {
    let target = host_target("sweep");
    let path = |pid: u32| target.dir_path.join(scratch_name(7, pid));
    std::fs::write(path(1), b"").expect("stale file");
    std::fs::create_dir(path(2)).expect("stale-named directory");
    std::os::unix::fs::symlink("elsewhere", path(3)).expect("stale-named symlink");
    std::fs::write(target.dir_path.join("linked"), b"keep").expect("write");
    std::fs::hard_link(target.dir_path.join("linked"), path(4)).expect("hard link");
    let someone_elses = path(5);
    std::fs::write(&someone_elses, b"").expect("write");
    // SAFETY: geteuid(2) cannot fail.
    let other_owner = unsafe { libc::geteuid() } == 0;
    if other_owner {
        std::os::unix::fs::chown(&someone_elses, Some(65534), Some(65534)).expect("chown");
    }
    std::fs::write(target.dir_path.join("data"), b"keep").expect("write");
    let sweep = sweep_stale(&target.dir, 7, |_| false, 100).expect("sweep");
    assert!(matches!(sweep.end, SweepEnd::Done), "{sweep:?}");
    let mut removed: Vec<_> = sweep
        .removed
        .iter()
        .map(|n| n.to_str().expect("utf8").to_owned())
        .collect();
    removed.sort();
    if other_owner {
        assert_eq!(removed, [scratch_name(7, 1)]);
        assert_eq!(sweep.left, 4);
    } else {
        // Not root: the file meant to be someone else's is ours.
        assert_eq!(removed, [scratch_name(7, 1), scratch_name(7, 5)]);
        assert_eq!(sweep.left, 3);
    }
    assert!(!path(1).exists());
    assert!(path(2).is_dir());
    assert!(path(3).symlink_metadata().is_ok());
    assert_eq!(std::fs::read(path(4)).expect("read"), b"keep");
    assert!(std::fs::read(target.dir_path.join("data")).is_ok());
    if other_owner {
        assert!(someone_elses.exists());
    }
    cleanup(target);
}

/// A directory that lists without end (a hostile server) is read up to
/// the limit, and the sweep says it stopped.
#[test]
fn the_sweep_reads_at_most_its_limit() {
    let target = host_target("limit");
    for i in 0..30 {
        std::fs::write(target.dir_path.join(format!("f{i}")), b"").expect("write");
    }
    let sweep = sweep_stale(&target.dir, 7, |_| false, 10).expect("sweep");
    assert!(matches!(sweep.end, SweepEnd::Limit), "{sweep:?}");
    assert_eq!(sweep.read, 10);
    let all = sweep_stale(&target.dir, 7, |_| false, 1000).expect("sweep");
    assert!(matches!(all.end, SweepEnd::Done), "{all:?}");
    // 30 files, `.` and `..`.
    assert_eq!(all.read, 32);
    cleanup(target);
}

#[test]
fn rejects_paths_not_on_fuse() {
    let dir = std::env::temp_dir().join(format!("fuselock-exercise-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let f = dir.join("f");
    std::fs::write(&f, b"x").expect("write");
    for target in [&f, &dir] {
        let err = check_target(target).err().expect("tmp is not FUSE");
        assert!(
            format!("{err:#}").contains("not on a FUSE file system"),
            "{err:#}"
        );
    }
    let err = check_target(Path::new("/dev/null"))
        .err()
        .expect("a device");
    assert!(
        format!("{err:#}").contains("neither a regular file nor a directory"),
        "{err:#}"
    );
    let err = check_target(&dir.join("missing")).err().expect("missing");
    assert!(format!("{err:#}").contains("No such file"), "{err:#}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn only_dead_processes_of_our_namespace_leave_stale_files() {
    let dead = |_| false;
    let alive = |_| true;
    assert!(is_stale(
        ".fuselock-exercise.4026531836.77",
        4026531836,
        dead
    ));
    assert!(!is_stale(
        ".fuselock-exercise.4026531836.77",
        4026531836,
        alive
    ));
    // Another namespace's pid means nothing here: left alone.
    assert!(!is_stale(
        ".fuselock-exercise.4026532000.77",
        4026531836,
        dead
    ));
    for other in [
        "data",
        ".fuselock-exercise.",
        ".fuselock-exercise.x.1",
        ".fuselock-exercise.1",
    ] {
        assert!(!is_stale(other, 1, dead), "{other}");
    }
    assert_eq!(scratch_name(5, 9), ".fuselock-exercise.5.9");
}

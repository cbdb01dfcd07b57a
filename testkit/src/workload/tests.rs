use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::thread;

use super::*;
use crate::lock;

#[test]
fn writes_split_exactly_across_threads() {
    assert_eq!(split_writes(10, 3), vec![4, 3, 3]);
    assert_eq!(split_writes(9, 3), vec![3, 3, 3]);
    assert_eq!(split_writes(2, 4), vec![1, 1, 0, 0]);
    assert_eq!(split_writes(1000, 1), vec![1000]);
    for total in 0..50 {
        for threads in 1..9 {
            let split = split_writes(total, threads);
            assert_eq!(split.len(), threads as usize);
            assert_eq!(split.iter().sum::<u64>(), total);
            let (min, max) = (split.iter().min(), split.iter().max());
            assert!(max.zip(min).is_some_and(|(max, min)| max - min <= 1));
            assert!(split.windows(2).all(|w| w[0] >= w[1]), "{split:?}");
        }
    }
}

#[test]
fn overwrite_offsets_stay_inside_the_file_and_aligned() {
    let block = 4096;
    for threads in 1..6u32 {
        for slots in 1..40u64 {
            for thread in 0..threads {
                for i in 0..100 {
                    let offset = slot_offset(thread, i, threads, slots, block);
                    assert_eq!(offset % block, 0);
                    assert!(offset + block <= slots * block);
                }
            }
        }
    }
    // Huge indices do not overflow.
    let offset = slot_offset(7, u64::MAX, 8, 3, 512);
    assert!(offset + 512 <= 3 * 512);
}

#[test]
fn concurrent_overwrites_hit_different_blocks() {
    // At the same step i, the threads write distinct slots when there are enough of them.
    let (threads, slots) = (4u32, 64u64);
    for i in 0..100 {
        let offsets: HashSet<u64> = (0..threads)
            .map(|t| slot_offset(t, i, threads, slots, 4096))
            .collect();
        assert_eq!(offsets.len(), threads as usize);
    }
}

/// Replays past-EOF writes from many threads against a model of `i_size` and checks that
/// each one ends beyond the size current when it starts.
#[test]
fn past_eof_writes_are_past_eof_under_any_interleaving() {
    let dir = scratch_dir("past-eof");
    let path = dir.join("f");
    let file = File::create(&path).expect("create");
    file.set_len(1000).expect("set_len");
    let block = 512u64;
    let next = Mutex::new(1000u64.div_ceil(block) * block);
    let violations = Arc::new(Mutex::new(Vec::new()));
    thread::scope(|scope| {
        for _ in 0..4 {
            let file = file.try_clone().expect("dup");
            let (next, violations) = (&next, Arc::clone(&violations));
            scope.spawn(move || {
                let buf = vec![0u8; block as usize];
                for _ in 0..200 {
                    // Under the cursor lock, as in past_eof_write: check, then write.
                    let mut cursor = lock(next);
                    let size = file.metadata().expect("stat").len();
                    if *cursor + block <= size {
                        lock(&violations).push((*cursor, size));
                    }
                    let offset = *cursor;
                    file.write_at(&buf, offset).expect("write");
                    *cursor = offset + block;
                }
            });
        }
    });
    assert!(lock(&violations).is_empty(), "{:?}", lock(&violations));
    assert_eq!(file.metadata().expect("stat").len(), 1024 + 800 * block);
    std::fs::remove_dir_all(dir).expect("cleanup");
}

#[test]
fn tally_counts_every_call_once() {
    let mut tally = Tally::default();
    tally.record(Ok(4096), 4096, Some(0));
    tally.record(Ok(100), 4096, Some(4096));
    tally.record(Err(io::Error::from_raw_os_error(libc::ENOSPC)), 4096, None);
    assert_eq!(tally.writes, 3);
    assert_eq!(tally.bytes, 4196);
    assert_eq!(tally.errors, 2);
    assert_eq!(tally.short_writes, 1);
    assert_eq!(
        tally.first_error.as_deref(),
        Some("write at offset 4096: short write, 100 of 4096 bytes")
    );
    let mut total = Tally::default();
    total.merge(tally.clone());
    total.merge(tally);
    assert_eq!(total.writes, 6);
    assert_eq!(total.errors, 4);
}

fn args(path: PathBuf, kind: WriteKind) -> LoadArgs {
    LoadArgs {
        path,
        kind,
        writes: 10,
        threads: 3,
        block_size: 4096,
        file_size: None,
        json: false,
        // These run on the host's /tmp, not on FUSE.
        force: true,
    }
}

#[test]
fn refuses_files_not_on_fuse_and_leaves_them_alone() {
    let dir = scratch_dir("not-fuse");
    let precious = dir.join("precious");
    std::fs::write(&precious, b"keep me").expect("write");
    for kind in [WriteKind::Overwrite, WriteKind::PastEof, WriteKind::Append] {
        let mut a = args(precious.clone(), kind);
        a.force = false;
        let err = run(&a).expect_err("not FUSE");
        assert!(
            format!("{err:#}").contains("not on a FUSE file system"),
            "{err:#}"
        );
    }
    assert_eq!(std::fs::read(&precious).expect("read"), b"keep me");
    // Nothing is created either.
    let mut a = args(dir.join("new"), WriteKind::Overwrite);
    a.force = false;
    run(&a).expect_err("not FUSE");
    assert!(!dir.join("new").exists());
}

/// Another file renamed to PATH between the first open and the writers' opens is not written:
/// the writers' descriptors are the first one's file.
#[test]
fn writers_write_the_file_first_opened_not_what_path_names_later() {
    let dir = scratch_dir("renamed");
    let path = dir.join("f");
    let other = dir.join("other");
    std::fs::write(&other, b"keep me").expect("write");
    let mut a = args(path.clone(), WriteKind::Buffered);
    a.threads = 2;
    let plan = Plan::new(&a).expect("valid");
    let first = open_target(&path, true).expect("create");
    let placement = prepare_file(&first, &path, &plan).expect("prepare");
    std::fs::rename(&other, &path).expect("rename over PATH");
    let files = open_writers(&first, &path, plan.kind, plan.threads, true).expect("open");
    let buffers = (0..plan.threads)
        .map(|_| AlignedBuf::new(plan.block_size, b'x'))
        .collect::<anyhow::Result<Vec<_>>>()
        .expect("buffers");
    let report = execute(&plan, &placement, files, buffers).expect("run");
    assert_eq!((report.writes, report.errors), (10, 0), "{report}");
    assert_eq!(std::fs::read(&path).expect("read"), b"keep me");
    let written = first.metadata().expect("stat").len();
    assert_eq!(written, plan.file_size);
    std::fs::remove_dir_all(dir).expect("cleanup");
}

/// A FIFO at PATH fails at once instead of waiting for a reader; a symlink is refused.
#[test]
fn a_fifo_or_symlink_at_path_is_refused_at_once() {
    use std::os::unix::ffi::OsStrExt as _;
    let dir = scratch_dir("fifo");
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).expect("path");
    // SAFETY: mkfifo(3) with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::scope(|scope| {
        scope.spawn(|| {
            let _ = tx
                .send(run(&args(fifo.clone(), WriteKind::Overwrite)).map_err(|e| format!("{e:#}")));
        });
        let result = rx.recv_timeout(Duration::from_secs(10));
        if result.is_err() {
            // Release the blocked open so that the test can end.
            let _ = File::open(&fifo);
        }
        let err = result
            .expect("load blocked on a FIFO")
            .expect_err("a FIFO is not a regular file");
        assert!(err.contains("is a FIFO or socket"), "{err}");
    });
    let target = dir.join("target");
    let link = dir.join("link");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let err = run(&args(link, WriteKind::Overwrite)).expect_err("a symlink");
    assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
    assert!(!target.exists(), "written through the symlink");
    std::fs::remove_dir_all(dir).expect("cleanup");
}

#[test]
fn arguments_are_validated() {
    let dir = scratch_dir("validate");
    let ok = args(dir.join("f"), WriteKind::Overwrite);
    let plan = Plan::new(&ok).expect("valid");
    assert_eq!(plan.file_size, 3 * 4096 * 16);
    assert_eq!(plan.per_thread, vec![4, 3, 3]);

    let bad = |change: fn(&mut LoadArgs)| {
        let mut a = ok.clone();
        change(&mut a);
        Plan::new(&a).expect_err("invalid").to_string()
    };
    assert!(bad(|a| a.threads = 0).contains("--threads"));
    assert!(bad(|a| a.writes = 0).contains("--writes"));
    assert!(bad(|a| a.block_size = 1000).contains("multiple of 512"));
    assert!(bad(|a| a.file_size = Some(100)).contains("smaller than one block"));
    assert!(bad(|a| a.path = "/nonexistent-dir/f".into()).contains("does not exist"));

    let mut buffered = ok.clone();
    buffered.kind = WriteKind::Buffered;
    buffered.block_size = 1000;
    assert!(Plan::new(&buffered).is_ok());
    std::fs::remove_dir_all(dir).expect("cleanup");
}

#[test]
fn every_kind_runs_and_counts_exactly() {
    let dir = scratch_dir("run");
    for kind in [
        WriteKind::Overwrite,
        WriteKind::Append,
        WriteKind::PastEof,
        WriteKind::Buffered,
    ] {
        let path = dir.join(kind.as_str());
        let mut a = args(path.clone(), kind);
        a.writes = 37;
        a.threads = 4;
        a.block_size = 4096;
        let report = match run(&a) {
            Ok(report) => report,
            // Some scratch filesystems (e.g. old tmpfs) reject O_DIRECT.
            Err(err) if format!("{err:#}").contains("does not support O_DIRECT") => continue,
            Err(err) => panic!("{kind}: {err:#}"),
        };
        assert_eq!(report.writes, 37, "{kind}");
        assert_eq!(report.errors, 0, "{kind}: {report}");
        assert_eq!(report.bytes, 37 * 4096);
        let size = std::fs::metadata(&path).expect("stat").len();
        match kind {
            WriteKind::Overwrite | WriteKind::Buffered => assert_eq!(size, 4 * 4096 * 16),
            WriteKind::Append | WriteKind::PastEof => assert_eq!(size, 37 * 4096),
        }
    }
    std::fs::remove_dir_all(dir).expect("cleanup");
}

#[test]
fn reports_render_as_text_and_json() {
    let report = LoadReport {
        kind: WriteKind::PastEof,
        writes: 8,
        bytes: 8 * 512,
        errors: 0,
        short_writes: 0,
        threads: 2,
        block_size: 512,
        elapsed: Duration::from_millis(1500),
        first_error: None,
    };
    let json: serde_json::Value = serde_json::from_str(&report.render(true)).expect("valid JSON");
    assert_eq!(json["kind"], "past-eof");
    assert_eq!(json["writes"], 8);
    assert_eq!(json["errors"], 0);
    assert_eq!(json["elapsed_ns"], 1_500_000_000u64);
    assert!(json["first_error"].is_null());
    let text = report.render(false);
    assert!(
        text.starts_with("load: 8 past-eof writes of 512 bytes"),
        "{text}"
    );
}

#[test]
fn kind_names_match_the_command_line() {
    use clap::ValueEnum as _;
    for kind in WriteKind::value_variants() {
        let name = kind.to_possible_value().expect("visible");
        assert_eq!(name.get_name(), kind.as_str());
    }
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("workload-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

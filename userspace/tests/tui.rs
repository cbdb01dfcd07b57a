//! `fuselock top` in a real terminal: tmux runs it on a recorded stream
//! (no kernel needed), keys are sent as a person would type them, and the
//! screen is read back with capture-pane.

use std::process::Command;

mod common;
use common::tmux::Tmux;

const FUSELOCK: &str = env!("CARGO_BIN_EXE_fuselock");
const REPLAY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/replay.jsonl");

fn top_cmd() -> String {
    // After top exits, print its status and keep the pane for inspection.
    format!("sh -c '{FUSELOCK} top --replay {REPLAY} --interval 0.2; echo EXITED $?; sleep 60'")
}

#[test]
fn every_key_does_what_help_says_and_the_terminal_is_restored() {
    let Some(t) = Tmux::start(&top_cmd(), 120, 32) else {
        return;
    };
    let s = t.wait_for("(replay finished)");
    assert!(s.contains("NOT ACTIVE"), "{s}");
    assert!(s.contains("4 files, sorted by writes ↓"), "{s}");
    // The busiest file first.
    let first_row = s.lines().find(|l| l.contains("/mnt/fuse")).expect("a row");
    assert!(first_row.contains("data.db"), "{s}");

    // Sort: next column is bytes, then flip the order.
    t.keys(&["s"]);
    t.wait_for("sorted by bytes ↓");
    t.keys(&["S"]);
    let s = t.wait_for("sorted by bytes ↑");
    let first_row = s.lines().find(|l| l.contains("/mnt/fuse")).expect("a row");
    assert!(first_row.contains("grow.dat"), "smallest first: {s}");

    // Filter by name.
    t.keys(&["/", "a", "p", "p", "Enter"]);
    let s = t.wait_for("1 files");
    assert!(s.contains("app.log") && !s.contains("data.db"), "{s}");
    t.keys(&["/", "Escape"]);
    t.wait_for("4 files");

    // Totals and freeze.
    t.keys(&["t"]);
    t.wait_for("totals since start/reset");
    t.keys(&["f"]);
    t.wait_for("FROZEN");
    t.keys(&["f", "t"]);
    t.wait_for("[rates]");

    // Detail and back.
    t.keys(&["S", "s", "s", "s", "s", "s"]); // back to writes, descending
    t.keys(&["Enter"]);
    let s = t.wait_for("detail (Esc: back)");
    assert!(s.contains("the kernel STRIPPED the flag"), "{s}");
    assert!(s.contains("wait, exclusive"), "{s}");
    t.keys(&["Escape"]);
    t.wait_for("files, sorted by");

    // Help lists every key.
    t.keys(&["?"]);
    let s = t.wait_for("keys (? or Esc to close)");
    for k in [
        "s / S",
        "freeze",
        "reset",
        "rates per second / totals",
        "detail view",
        "mouse",
        "quit",
    ] {
        assert!(s.contains(k), "help lacks {k}: {s}");
    }
    t.keys(&["Escape", "r", "m", "m", "j", "k"]);

    // Quit: the alternate screen is gone and the shell prints our status.
    t.keys(&["q"]);
    let s = t.wait_for("EXITED 0");
    assert!(
        !s.contains("files, sorted by"),
        "the UI is still on screen:\n{s}"
    );
}

#[test]
fn ctrl_c_and_sigterm_restore_the_terminal() {
    let Some(t) = Tmux::start(&top_cmd(), 100, 30) else {
        return;
    };
    t.wait_for("data.db");
    t.keys(&["C-c"]);
    t.wait_for("EXITED 0");

    let Some(t) = Tmux::start(&top_cmd(), 100, 30) else {
        return;
    };
    t.wait_for("data.db");
    // SIGTERM to this pane's fuselock only (other tests run in parallel).
    let pane = Command::new("tmux")
        .args([
            "-L",
            &t.session,
            "list-panes",
            "-t",
            &t.session,
            "-F",
            "#{pane_pid}",
        ])
        .output()
        .expect("list-panes");
    let shell = String::from_utf8_lossy(&pane.stdout).trim().to_owned();
    let killed = Command::new("pkill")
        .args(["-TERM", "-P", &shell, "-x", "fuselock"])
        .status()
        .expect("pkill");
    assert!(killed.success(), "no fuselock under pane shell {shell}");
    let s = t.wait_for("EXITED 0");
    assert!(!s.contains("files, sorted by"), "{s}");
}

#[test]
fn small_terminal_still_draws() {
    let Some(t) = Tmux::start(&top_cmd(), 80, 24) else {
        return;
    };
    let s = t.wait_for("data.db");
    assert!(s.contains("data.db"), "{s}");
    assert!(s.contains("q quit"), "{s}");
    t.keys(&["q"]);
    t.wait_for("EXITED 0");
}

#[test]
fn not_a_terminal_points_at_stat() {
    let out = Command::new(FUSELOCK)
        .args(["top", "--replay", REPLAY])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stdout is not a terminal; use `fuselock stat`"),
        "{err}"
    );
}

#[test]
fn bad_replay_files_are_one_line_errors() {
    let dir = std::env::temp_dir().join(format!("fuselock-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"not\": \"a snapshot\"}\n").expect("write");
    for (file, needle) in [
        (
            bad.display().to_string(),
            "bad.jsonl:1: not a fuselock snapshot",
        ),
        (
            "/nonexistent.jsonl".to_owned(),
            "--replay /nonexistent.jsonl: No such file",
        ),
        // A recording cut at the front: its first line is a delta.
        (
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/delta-first.jsonl"
            )
            .to_owned(),
            "delta-first.jsonl:1: a delta line before any whole snapshot",
        ),
    ] {
        // `script` gives top a terminal so it gets as far as reading the file.
        let out = Command::new("script")
            .args([
                "-qec",
                &format!("{FUSELOCK} top --replay {file}"),
                "/dev/null",
            ])
            .output()
            .expect("script");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(needle), "{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A recording whose end was damaged: top plays the lines before the bad
/// one, then leaves the terminal and says which line it could not read.
#[test]
fn a_bad_line_late_in_a_recording_ends_top_with_its_line_number() {
    let dir = std::env::temp_dir().join(format!("fuselock-late-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let damaged = dir.join("damaged.jsonl");
    let mut text = std::fs::read_to_string(REPLAY).expect("fixture");
    let good = text.lines().count();
    text.push_str("{\"timestamp\": 1, \"entries\": [\n");
    std::fs::write(&damaged, text).expect("write");
    let cmd = format!(
        "sh -c '{FUSELOCK} top --replay {} --interval 0.2; echo EXITED $?; sleep 60'",
        damaged.display()
    );
    let Some(t) = Tmux::start(&cmd, 120, 32) else {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    let s = t.wait_for("EXITED");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        s.contains(&format!(
            "damaged.jsonl:{}: not a fuselock snapshot",
            good + 1
        )),
        "{s}"
    );
    // A bad recording is bad input, late or early: exit 3.
    assert!(s.contains("EXITED 3"), "{s}");
}

/// Words of a screen line, borders aside.
fn words(line: &str) -> Vec<&str> {
    line.split(|c: char| c.is_whitespace() || c == '│')
        .filter(|w| !w.is_empty())
        .collect()
}

/// Columns use the room they have: at 140 and 200 columns the demo's long
/// mount path is whole and every column shows; at 80 whole columns are
/// dropped instead of cutting values, and a cut path keeps its end.
#[test]
fn columns_fit_80_140_and_200_columns() {
    const MOUNT: &str = "/tmp/fuselock-demo-114/mnt";
    let replay =
        std::env::temp_dir().join(format!("fuselock-demo-mount-{}.jsonl", std::process::id()));
    let text = std::fs::read_to_string(REPLAY).expect("fixture");
    std::fs::write(
        &replay,
        text.replace("\"/mnt/fuse\"", &format!("\"{MOUNT}\"")),
    )
    .expect("write");
    let screen_at = |w: u16| -> Option<String> {
        let cmd = format!(
            "sh -c '{FUSELOCK} top --replay {} --interval 0.2; sleep 60'",
            replay.display()
        );
        let t = Tmux::start(&cmd, w, 30)?;
        let s = t.wait_for("(replay finished)");
        t.keys(&["q"]);
        Some(s)
    };
    let screens = (screen_at(200), screen_at(140), screen_at(80));
    let _ = std::fs::remove_file(&replay);
    let (Some(wide), Some(mid), Some(narrow)) = screens else {
        return;
    };
    let row = |s: &str| -> String {
        s.lines()
            .find(|l| l.contains("data.db"))
            .expect("data.db row")
            .to_owned()
    };
    let header = |s: &str| -> String {
        s.lines()
            .find(|l| l.contains("FILE"))
            .expect("header")
            .to_owned()
    };
    for s in [&wide, &mid] {
        assert!(row(s).contains(MOUNT), "{s}");
        for h in ["PATH", "BYTES", "WAIT avg/p99/max", "TOP WRITER"] {
            assert!(header(s).contains(h), "{h}: {s}");
        }
    }
    let wide_words = words(&row(&wide))
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    let narrow_row = row(&narrow);
    for word in words(&narrow_row) {
        if let Some(tail) = word.strip_prefix('…') {
            assert!(
                MOUNT.ends_with(tail),
                "{word:?} is not the end of {MOUNT}: {narrow}"
            );
        } else {
            assert!(
                wide_words.iter().any(|w| w == word),
                "{word:?} is cut at 80: {narrow}"
            );
        }
    }
    assert!(!header(&narrow).contains("TOP WRITER"), "{narrow}");
    assert!(header(&narrow).contains("WRITES"), "{narrow}");
}

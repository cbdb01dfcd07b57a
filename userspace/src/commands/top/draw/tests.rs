use std::time::Duration;

use ratatui::{backend::TestBackend, Terminal};

use super::*;
use crate::{
    commands::top::{rows::tests_support::entry, state::App},
    model::{counts::Bucket, snapshot::Snapshot},
};

#[test]
fn the_exclusive_header_names_every_exclusive_reason_in_order() {
    assert_eq!(COLUMNS[6].header, "EXCL np/buf/app/eof/cio/eol");
}

fn screen(app: &App, w: u16, h: u16) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).expect("terminal");
    term.draw(|f| draw(f, app)).expect("draw");
    let buf = term.backend().buffer().clone();
    (0..h)
        .map(|y| {
            (0..w)
                .map(|x| buf[(x, y)].symbol().to_owned())
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn app() -> App {
    let mut app = App::new("replay test.jsonl".into(), Duration::from_secs(1));
    let mut hot = entry("hot.dat", 4000, 0, 69);
    hot.histograms.wait_hist.exclusive = Histogram::from_buckets([
        Bucket {
            le_ns: Some(1_048_575),
            count: 60,
        },
        Bucket {
            le_ns: Some(8_388_607),
            count: 9,
        },
    ])
    .expect("bucket bounds");
    let mut snap = Snapshot {
        elapsed_secs: 1.0,
        entries: vec![hot.clone().into(), entry("log", 10, 10, 0).into()].into(),
        ..Default::default()
    };
    snap.source.kernel = "6.12.117".into();
    snap.source.probe_mode = "fentry".into();
    app.on_snapshot(snap.clone());
    snap.elapsed_secs = 2.0;
    let mut entries = snap.entries.to_vec();
    std::sync::Arc::make_mut(&mut entries[0]).counters.writes += 500;
    snap.entries = entries.into();
    app.on_snapshot(snap);
    app
}

#[test]
fn main_view_shows_files_rates_and_verdict() {
    let s = screen(&app(), 140, 30);
    assert!(s.contains("INCONCLUSIVE"), "{s}");
    assert!(s.contains("kernel 6.12.117"), "{s}");
    assert!(s.contains("hot.dat"), "{s}");
    assert!(s.contains("/mnt/fuse"), "{s}");
    assert!(s.contains("fio[4242]"), "{s}");
    assert!(s.contains("2 files, sorted by writes"), "{s}");
    assert!(s.contains("contended acquisitions/s"), "{s}");
}

#[test]
fn fits_80x24() {
    let s = screen(&app(), 80, 24);
    assert!(s.contains("hot.dat"), "{s}");
    assert!(s.contains("q quit"), "{s}");
}

/// The demo's mount: long enough to need cutting on a narrow terminal.
fn demo_app() -> App {
    let mut app = app();
    let mut snap = Snapshot {
        elapsed_secs: 3.0,
        ..Default::default()
    };
    let mut hot = entry("overwrite", 25_700, 0, 166);
    hot.mount = Some("/tmp/fuselock-demo-114/mnt".into());
    hot.histograms.wait_hist.exclusive = Histogram::from_buckets([Bucket {
        le_ns: Some(8_388_607),
        count: 166,
    }])
    .expect("bucket bound");
    hot.writers[0].comm = "load-3".into();
    let mut log = entry("append.log", 400, 400, 0);
    log.mount = hot.mount.clone();
    snap.entries = vec![hot.into(), log.into()].into();
    app.on_snapshot(snap);
    app
}

/// The table's header line and the row of `name`.
fn table_lines(s: &str, name: &str) -> (String, String) {
    let header = s.lines().find(|l| l.contains("FILE")).expect("header");
    let row = s.lines().find(|l| l.contains(name)).expect("row");
    (header.to_owned(), row.to_owned())
}

fn words(line: &str) -> impl Iterator<Item = &str> {
    line.split(|c: char| c.is_whitespace() || c == '│')
        .filter(|w| !w.is_empty())
}

#[test]
fn columns_grow_with_the_terminal() {
    for w in [140, 200] {
        let s = screen(&demo_app(), w, 30);
        let (header, row) = table_lines(&s, "overwrite");
        assert!(row.contains("/tmp/fuselock-demo-114/mnt"), "{w}: {s}");
        for h in ["PATH", "WAIT avg/p99/max", "TOP WRITER"] {
            assert!(header.contains(h), "{w} lacks {h}: {s}");
        }
        assert!(row.contains("load-3[4242]"), "{w}: {s}");
    }
}

#[test]
fn a_narrow_terminal_drops_columns_and_cuts_paths_at_the_front() {
    let wide = screen(&demo_app(), 200, 30);
    let (_, wide_row) = table_lines(&wide, "overwrite");
    for w in [80, 64] {
        let s = screen(&demo_app(), w, 24);
        let (header, row) = table_lines(&s, "overwrite");
        assert!(
            header.contains("WRITES") && header.contains("SHARED"),
            "{s}"
        );
        assert!(!header.contains("TOP WRITER"), "{s}");
        // Every value shown is whole: each word of the row (a cut mount
        // aside) appears in the 200-column row too.
        for word in words(&row) {
            if !word.starts_with('…') {
                assert!(
                    words(&wide_row).any(|w| w == word),
                    "{word:?} is cut at {w} columns: {s}"
                );
            }
        }
        // And so is every header shown: nothing is left once the whole
        // headers are taken out.
        let rest = COLUMNS
            .iter()
            .fold(header.clone(), |h, c| h.replacen(c.header.as_ref(), "", 1));
        assert_eq!(words(&rest).count(), 0, "cut header at {w} columns: {s}");
    }
    // Where the mount must be cut, it keeps the end that tells it apart.
    let s = screen(&demo_app(), 44, 24);
    let (_, row) = table_lines(&s, "overwrite");
    assert!(row.contains("…ock-demo-114/mnt"), "{s}");
}

#[test]
fn detail_view_shows_histograms_reasons_and_writers() {
    let mut app = app();
    app.on_key(crate::commands::top::state::tests_key(
        ratatui::crossterm::event::KeyCode::Enter,
    ));
    let s = screen(&app, 140, 40);
    assert!(s.contains("detail (Esc: back)"), "{s}");
    assert!(s.contains("no_parallel_flag"), "{s}");
    assert!(s.contains("wait, exclusive"), "{s}");
    assert!(s.contains("<1.0ms"), "{s}");
    assert!(s.contains("fio"), "{s}");
    assert!(s.contains("no open seen since fuselock started"), "{s}");
}

#[test]
fn detail_view_says_what_the_series_would_buy_on_an_unpatched_kernel() {
    let mut app = App::new("replay test.jsonl".into(), Duration::from_secs(1));
    let mut hot = entry("hot.dat", 400, 0, 300);
    let c = &mut hot.counters;
    c.overwrites_exclusive = 400;
    c.overwrites_exclusive_latency_ns = 10_000_000;
    c.overwrites_exclusive_wait_ns = 6_000_000;
    let mut snap = Snapshot {
        elapsed_secs: 1.0,
        entries: vec![hot.into()].into(),
        ..Default::default()
    };
    snap.source.contention = true;
    app.on_snapshot(snap);
    app.on_key(crate::commands::top::state::tests_key(
        ratatui::crossterm::event::KeyCode::Enter,
    ));
    let s = screen(&app, 160, 40);
    let text = s.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        text.contains("the series would buy: 400 direct overwrites took the exclusive lock"),
        "{s}"
    );
    for part in ["spent 60 % of their time waiting", "up to 2.50x their"] {
        assert!(text.contains(part), "{s}");
    }
}

/// Names, mounts, comms and a replayed kernel release with controls,
/// bidirectional formatting and line separators: shown escaped, in the
/// table, the header and the detail view.
#[test]
fn names_reach_the_screen_escaped() {
    let raw = [
        '\u{1b}', '\u{7}', '\u{202e}', '\u{2066}', '\u{061c}', '\u{2028}', '\u{2029}',
    ];
    let mut app = App::new("replay x\u{202e}.jsonl".into(), Duration::from_secs(1));
    let mut evil = entry("a\u{202e}b\u{2028}c\u{1b}]0;x\u{7}", 10, 0, 0);
    evil.mount = Some("/mnt/m\u{061c}\u{2029}".into());
    evil.writers[0].comm = "w\u{2066}x".into();
    let mut snap = Snapshot {
        elapsed_secs: 1.0,
        entries: vec![evil.into()].into(),
        ..Default::default()
    };
    snap.source.kernel = "6.12\u{202e}".into();
    app.on_snapshot(snap);
    let main = screen(&app, 200, 30);
    app.on_key(crate::commands::top::state::tests_key(
        ratatui::crossterm::event::KeyCode::Enter,
    ));
    let detail = screen(&app, 200, 40);
    for s in [&main, &detail] {
        for c in raw {
            assert!(!s.contains(c), "{c:?} reached the screen raw: {s}");
        }
    }
    for shown in [
        "a\\u{202e}b\\u{2028}c\\x1b]0;x\\x07",
        "/mnt/m\\u{61c}\\u{2029}",
        "kernel 6.12\\u{202e}",
        "replay x\\u{202e}.jsonl",
    ] {
        assert!(main.contains(shown), "{shown} not in {main}");
    }
    assert!(main.contains("w\\u{2066}x[4242]"), "{main}");
    assert!(detail.contains("w\\u{2066}x"), "{detail}");
    assert!(
        detail.contains("a\\u{202e}b\\u{2028}c\\x1b]0;x\\x07 on /mnt/m\\u{61c}\\u{2029}"),
        "{detail}"
    );
}

#[test]
fn help_lists_every_key() {
    let mut app = app();
    app.on_key(crate::commands::top::state::tests_key(
        ratatui::crossterm::event::KeyCode::Char('?'),
    ));
    let s = screen(&app, 100, 30);
    for (k, _) in KEYS {
        assert!(s.contains(k), "help lacks {k}: {s}");
    }
}

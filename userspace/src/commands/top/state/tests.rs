use super::*;
use std::sync::Arc;

use crate::commands::top::rows::tests_support::entry;
use crate::model::snapshot::Entry;

fn key(c: KeyCode) -> KeyEvent {
    tests_key(c)
}

fn app_with(entries: Vec<crate::model::snapshot::Entry>) -> App {
    let mut app = App::new("test".into(), Duration::from_secs(1));
    app.on_snapshot(Snapshot {
        elapsed_secs: 1.0,
        entries: entries.iter().cloned().map(Into::into).collect(),
        ..Default::default()
    });
    app.on_snapshot(Snapshot {
        elapsed_secs: 2.0,
        entries: entries.into_iter().map(Into::into).collect(),
        ..Default::default()
    });
    app
}

#[test]
fn sort_filter_and_quit_keys() {
    let mut app = app_with(vec![entry("alpha", 10, 0, 0), entry("beta", 50, 0, 3)]);
    app.on_key(key(KeyCode::Char('t'))); // totals: non-zero values
    assert_eq!(app.rows()[0].name, "beta", "sorted by writes, descending");
    app.on_key(key(KeyCode::Char('S')));
    assert_eq!(app.rows()[0].name, "alpha");
    for c in ['s', 's', 's', 's', 's'] {
        app.on_key(key(KeyCode::Char(c)));
    }
    assert_eq!(app.sort, SortBy::Name);
    app.on_key(key(KeyCode::Char('/')));
    for c in "ALP".chars() {
        app.on_key(key(KeyCode::Char(c)));
    }
    app.on_key(key(KeyCode::Enter));
    let rows = app.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].name, "alpha");
    app.on_key(key(KeyCode::Char('/')));
    app.on_key(key(KeyCode::Esc));
    assert_eq!(app.rows().len(), 2);
    app.on_key(key(KeyCode::Char('q')));
    assert!(app.quit);
}

#[test]
fn freeze_ignores_new_snapshots_and_reset_rebases_totals() {
    let mut app = app_with(vec![entry("f", 10, 0, 0)]);
    app.on_key(key(KeyCode::Char('f')));
    app.on_snapshot(Snapshot {
        elapsed_secs: 3.0,
        entries: vec![entry("f", 99, 0, 0).into()].into(),
        ..Default::default()
    });
    assert_eq!(app.current.as_ref().map(|s| s.elapsed_secs), Some(2.0));
    app.on_key(key(KeyCode::Char('f')));
    app.on_key(key(KeyCode::Char('t')));
    app.on_key(key(KeyCode::Char('r')));
    app.on_snapshot(Snapshot {
        elapsed_secs: 3.0,
        entries: vec![entry("f", 15, 0, 0).into()].into(),
        ..Default::default()
    });
    assert_eq!(app.rows()[0].writes, 5.0);
}

#[test]
fn views_and_selection() {
    let mut app = app_with(vec![entry("a", 1, 0, 0), entry("bb", 2, 0, 0)]);
    app.on_key(key(KeyCode::Down));
    app.on_key(key(KeyCode::Down));
    assert_eq!(app.selected, 1, "selection stops at the last row");
    app.on_key(key(KeyCode::Enter));
    assert_eq!(app.view, View::Detail);
    app.on_key(key(KeyCode::Esc));
    app.on_key(key(KeyCode::Char('?')));
    assert_eq!(app.view, View::Help);
    app.on_key(key(KeyCode::Esc));
    assert_eq!(app.view, View::Main);
}

#[test]
fn an_entry_that_did_not_move_keeps_its_row() {
    let idle: Arc<Entry> = Arc::new(entry("idle", 7, 0, 0));
    let mut app = App::new("test".into(), Duration::from_secs(1));
    let snap = |t: f64, busy: u64| Snapshot {
        elapsed_secs: t,
        // Names of other lengths: the helper numbers inodes by name length.
        entries: vec![idle.clone(), Arc::new(entry("busy.db", busy, 0, 0))].into(),
        ..Default::default()
    };
    app.on_snapshot(snap(1.0, 10));
    app.on_snapshot(snap(2.0, 20));
    let row_of = |app: &App, name: &str| {
        app.rows()
            .iter()
            .find(|r| r.name == name)
            .cloned()
            .expect("row")
    };
    let (idle_before, busy_before) = (row_of(&app, "idle"), row_of(&app, "busy.db"));
    let built = app.rows_built;
    app.on_snapshot(snap(3.0, 50));
    let (idle_after, busy_after) = (row_of(&app, "idle"), row_of(&app, "busy.db"));
    assert_eq!(
        app.rows_built - built,
        1,
        "only the busy file's row is built"
    );
    assert_eq!(idle_before, idle_after);
    assert_eq!(idle_after.writes, 0.0);
    assert_eq!((busy_before.writes, busy_after.writes), (10.0, 30.0));
}

fn names_and_writes(app: &App) -> Vec<(String, f64)> {
    app.rows()
        .iter()
        .map(|r| (r.name.clone(), r.writes))
        .collect()
}

#[test]
fn the_same_entry_list_again_costs_no_recompute() {
    let entries: Vec<Arc<Entry>> = (0..100)
        .map(|i| Arc::new(entry(&"x".repeat(i + 1), i as u64, 0, 0)))
        .collect();
    let list: crate::model::snapshot::Entries = entries.into();
    let mut app = App::new("test".into(), Duration::from_secs(1));
    for t in 1..=3 {
        app.on_snapshot(Snapshot {
            elapsed_secs: f64::from(t),
            entries: list.clone(),
            ..Default::default()
        });
    }
    let tables = app.tables_computed;
    app.on_snapshot(Snapshot {
        elapsed_secs: 4.0,
        entries: list.clone(),
        ..Default::default()
    });
    app.on_key(key(KeyCode::Down));
    assert_eq!(app.tables_computed, tables, "table recomputed");
    assert_eq!(app.selected, 1);
    // A key that changes the table does recompute it.
    let before = names_and_writes(&app);
    app.on_key(key(KeyCode::Char('S')));
    let mut after = names_and_writes(&app);
    after.reverse();
    assert_eq!(after, before, "flipped order");
}

/// Whatever changes between refreshes (files written, added in the
/// middle, evicted), the table built incrementally is the table built
/// from scratch.
#[test]
fn incremental_table_matches_a_fresh_one() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    // Keyed by name length (the helper's inode number): 1..=60.
    let mut files: Vec<Arc<Entry>> = (1..=40)
        .map(|n| Arc::new(entry(&"f".repeat(n), 0, 0, 0)))
        .collect();
    let mut app = App::new("test".into(), Duration::from_secs(1));
    let mut previous: Option<Snapshot> = None;
    for t in 1..=60 {
        for _ in 0..next(4) {
            let i = next(files.len() as u64) as usize;
            let mut e = (*files[i]).clone();
            e.counters.writes += 1 + next(5);
            files[i] = Arc::new(e);
        }
        if next(5) == 0 && files.len() > 2 {
            files.remove(next(files.len() as u64) as usize);
        }
        if next(5) == 0 {
            let n = 1 + next(60) as usize;
            if !files.iter().any(|f| f.ino == n as u64) {
                files.push(Arc::new(entry(&"f".repeat(n), next(9), 0, 0)));
                files.sort_by_key(|f| f.ino);
            }
        }
        let snap = Snapshot {
            elapsed_secs: f64::from(t),
            entries: files.clone().into(),
            ..Default::default()
        };
        app.on_snapshot(snap.clone());
        if t % 7 == 0 {
            app.on_key(key(KeyCode::Char('s')));
        }
        // The rows: as rows.rs computes them, key by key.
        let by_name = |mut v: Vec<(String, f64)>| {
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let expected: Vec<(String, f64)> = rows::rows(&snap, previous.as_ref(), Mode::Rates)
            .into_iter()
            .map(|r| (r.name, r.writes))
            .collect();
        assert_eq!(by_name(names_and_writes(&app)), by_name(expected), "t={t}");
        // Their order: as sorted from scratch.
        let mut fresh = App::new("test".into(), Duration::from_secs(1));
        fresh.sort = app.sort;
        if let Some(p) = previous.replace(snap.clone()) {
            fresh.on_snapshot(p);
        }
        fresh.on_snapshot(snap);
        assert_eq!(names_and_writes(&app), names_and_writes(&fresh), "t={t}");
    }
}

#[test]
fn a_refresh_that_moves_a_few_rows_gives_the_table_a_full_sort_would() {
    let file = |i: u64, writes: u64| -> Arc<Entry> {
        let mut e = entry(&format!("f{:02}", i % 7), writes, 0, 0);
        e.ino = i;
        Arc::new(e)
    };
    // 64 files, names repeating so that ties are broken by the rank of
    // (mount, name) and then by key order.
    let mut files: Vec<Arc<Entry>> = (0..64).map(|i| file(i, i % 5)).collect();
    let snap = |t: u32, files: &[Arc<Entry>]| Snapshot {
        elapsed_secs: f64::from(t),
        entries: files.to_vec().into(),
        ..Default::default()
    };
    for totals in [false, true] {
        let mut app = App::new("test".into(), Duration::from_secs(1));
        if totals {
            app.on_key(key(KeyCode::Char('t')));
        }
        app.on_snapshot(snap(1, &files));
        for t in 2..12u32 {
            let before = snap(t - 1, &files);
            // Three files written since the last refresh, at moving places.
            for k in 0..3u64 {
                let i = (u64::from(t) * 11 + k * 23) % 64;
                let w = files[i as usize].counters.writes + u64::from(t) * (k + 1);
                files[i as usize] = file(i, w);
            }
            let now = snap(t, &files);
            let built = app.rows_built;
            app.on_snapshot(now.clone());
            // From the second rates period on, at most the three rows
            // written and the three written the refresh before (their rate
            // falls back to 0).
            assert!(t < 3 || app.rows_built - built <= 6, "t={t}: rows built");
            let mut fresh = App::new("test".into(), Duration::from_secs(1));
            if totals {
                fresh.on_key(key(KeyCode::Char('t')));
            }
            fresh.on_snapshot(before);
            fresh.on_snapshot(now);
            assert_eq!(
                names_and_writes(&app),
                names_and_writes(&fresh),
                "t={t}, totals={totals}"
            );
        }
    }
}

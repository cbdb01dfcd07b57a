//! The UI's state and what each key does to it: no terminal, no I/O.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::model::{self, Mode, Row};
use crate::{
    snapshot::{Entries, Entry, Snapshot},
    verdict::{decide, Evidence, Verdict},
};

/// Sparkline length: this many refreshes.
const HISTORY: usize = 240;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Main,
    Detail,
    Help,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    Writes,
    Bytes,
    Shared,
    Contended,
    WaitMax,
    Name,
}

impl SortBy {
    pub const ALL: [SortBy; 6] = [
        SortBy::Writes,
        SortBy::Bytes,
        SortBy::Shared,
        SortBy::Contended,
        SortBy::WaitMax,
        SortBy::Name,
    ];

    pub fn label(self) -> &'static str {
        match self {
            SortBy::Writes => "writes",
            SortBy::Bytes => "bytes",
            SortBy::Shared => "shared %",
            SortBy::Contended => "contended",
            SortBy::WaitMax => "wait max",
            SortBy::Name => "name",
        }
    }

    fn next(self) -> SortBy {
        let i = SortBy::ALL.iter().position(|s| *s == self).unwrap_or(0);
        SortBy::ALL[(i + 1) % SortBy::ALL.len()]
    }
}

/// Every key, for the help view and docs/top.md.
pub const KEYS: &[(&str, &str)] = &[
    ("↑/↓ j/k", "move the selection"),
    ("s / S", "next sort column / flip sort order"),
    (
        "/",
        "filter by name, mount, comm or pid (Enter applies, Esc clears)",
    ),
    ("f", "freeze / unfreeze the display"),
    ("r", "reset counters (totals count from now)"),
    ("t", "rates per second / totals"),
    ("Enter", "detail view of the selected file"),
    ("Esc", "back to the table"),
    ("m", "mouse on/off (wheel scrolls, click selects)"),
    ("?", "this help"),
    ("q / Ctrl-C", "quit"),
];

pub struct App {
    pub current: Option<Snapshot>,
    previous: Option<Snapshot>,
    baseline: Option<Snapshot>,
    pub view: View,
    pub sort: SortBy,
    pub descending: bool,
    pub filter: String,
    /// Some while the user types a filter.
    pub filter_input: Option<String>,
    pub frozen: bool,
    pub mode: Mode,
    pub selected: usize,
    pub mouse: bool,
    pub contended_history: VecDeque<u64>,
    /// "live" or "replay FILE".
    pub source: String,
    pub interval: Duration,
    pub quit: bool,
    /// Set when a replay has shown its last snapshot.
    pub finished: bool,
    /// The table as shown: computed when a snapshot or a key changes it,
    /// not on every redraw, and not at all while what it is computed from
    /// stands still (an idle host: the same entry lists again).
    rows: Vec<Arc<Row>>,
    /// What `rows` was computed from.
    rows_from: Option<TableInputs>,
    /// Each row with the entry and base entry it was built from (held, so
    /// neither address can be reused while cached), in entry order: an
    /// entry that did not move keeps its row from one refresh to the next.
    row_cache: Vec<Option<CachedRow>>,
    /// The mode the cached rows are in.
    row_cache_mode: Mode,
    /// Entry indices in table order (before the filter), as last sorted:
    /// the next sort starts from it and finds the rows nearly in order.
    order: Vec<usize>,
    /// Each entry's place in (mount, name) order, in entry order: ranked
    /// when the files change, so that a refresh's sort breaks ties between
    /// idle files by comparing numbers, not strings.
    name_rank: Vec<u32>,
}

struct CachedRow {
    entry: Arc<Entry>,
    base: Option<Arc<Entry>>,
    row: Arc<Row>,
}

/// Everything the table depends on. The entry lists are held, so their
/// addresses stay theirs while compared.
struct TableInputs {
    current: Entries,
    base: Option<Entries>,
    /// The rates' period; `None` where it cannot matter (no base, or the
    /// base lists the same entries: every rate is then 0).
    period: Option<f64>,
    mode: Mode,
    sort: SortBy,
    descending: bool,
    filter: String,
}

/// Whether `a` and `b` are both absent, or both there and `same`.
fn both_or_neither<T>(a: Option<&T>, b: Option<&T>, same: impl Fn(&T, &T) -> bool) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => same(a, b),
        (None, None) => true,
        _ => false,
    }
}

impl TableInputs {
    fn same_as(&self, other: &TableInputs) -> bool {
        self.current.same_as(&other.current)
            && both_or_neither(self.base.as_ref(), other.base.as_ref(), Entries::same_as)
            && self.period == other.period
            && self.mode == other.mode
            && self.sort == other.sort
            && self.descending == other.descending
            && self.filter == other.filter
    }
}

/// Whether two entries are the same file (dev, ino, path).
fn same_file(a: &Entry, b: &Entry) -> bool {
    a.ino == b.ino && a.dev == b.dev && a.path == b.path
}

impl App {
    pub fn new(source: String, interval: Duration) -> App {
        App {
            current: None,
            previous: None,
            baseline: None,
            view: View::Main,
            sort: SortBy::Writes,
            descending: true,
            filter: String::new(),
            filter_input: None,
            frozen: false,
            mode: Mode::Rates,
            selected: 0,
            mouse: false,
            contended_history: VecDeque::with_capacity(HISTORY),
            source,
            interval,
            quit: false,
            finished: false,
            rows: Vec::new(),
            rows_from: None,
            row_cache: Vec::new(),
            row_cache_mode: Mode::Rates,
            order: Vec::new(),
            name_rank: Vec::new(),
        }
    }

    pub fn on_snapshot(&mut self, snap: Snapshot) {
        if self.frozen {
            return;
        }
        if let Some(prev) = self.current.take() {
            self.previous = Some(prev);
        }
        self.current = Some(snap);
        if let Some(cur) = &self.current {
            let t = model::totals(cur, self.previous.as_ref(), Mode::Rates);
            if self.contended_history.len() == HISTORY {
                self.contended_history.pop_front();
            }
            self.contended_history.push_back(t.contended.round() as u64);
        }
        self.update_rows();
    }

    fn base(&self) -> Option<&Snapshot> {
        match self.mode {
            Mode::Rates => self.previous.as_ref(),
            Mode::Totals => self.baseline.as_ref(),
        }
    }

    /// Rows after filter and sort.
    pub fn rows(&self) -> &[Arc<Row>] {
        &self.rows
    }

    /// Rows for every entry, in entry order, from the cache where entry
    /// and base entry are the allocations they were last time; and whether
    /// the entries are the files, in the order and with the names, of the
    /// last call.
    fn all_rows(&mut self) -> (Vec<Arc<Row>>, bool) {
        let mut old = std::mem::take(&mut self.row_cache);
        if self.row_cache_mode != self.mode {
            old.clear();
            self.row_cache_mode = self.mode;
        }
        let Some(cur) = &self.current else {
            return (Vec::new(), false);
        };
        let base = self.base();
        let dt = model::period(cur, base, self.mode);
        let base_entries: &[Arc<Entry>] = base.map_or(&[], |b| &b.entries);
        // The collector keeps its entries in key order, so each entry is
        // normally at the same position in the base and in the cache; an
        // index is built only when one is not.
        let mut base_index = None;
        let mut cache_index: Option<HashMap<*const Entry, usize>> = None;
        let mut aligned = old.len() == cur.entries.len();
        let mut cache = Vec::with_capacity(cur.entries.len());
        let rows = cur
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let prev = match base_entries.get(i) {
                    Some(p) if Arc::ptr_eq(p, e) || same_file(p, e) => Some(p),
                    _ => base_index
                        .get_or_insert_with(|| model::index(base))
                        .get(&(e.dev.as_str(), e.ino, e.path.as_str()))
                        .copied(),
                };
                let slot = match old.get(i).and_then(Option::as_ref) {
                    Some(c) if Arc::ptr_eq(&c.entry, e) => Some(i),
                    // The same file, moved on: no cached row.
                    Some(c) if same_file(&c.entry, e) => None,
                    _ => {
                        aligned = false;
                        cache_index
                            .get_or_insert_with(|| {
                                old.iter()
                                    .enumerate()
                                    .filter_map(|(j, c)| {
                                        c.as_ref().map(|c| (Arc::as_ptr(&c.entry), j))
                                    })
                                    .collect()
                            })
                            .get(&Arc::as_ptr(e))
                            .copied()
                    }
                };
                // Same entry, same base, same mode: the same row. Such a pair
                // recurs within one pair of snapshots (the same period) or
                // for an entry that did not move (its delta is 0 over any
                // period).
                let reused = slot
                    .and_then(|j| old.get_mut(j))
                    .filter(|c| {
                        c.as_ref()
                            .is_some_and(|c| both_or_neither(c.base.as_ref(), prev, Arc::ptr_eq))
                    })
                    .and_then(Option::take);
                let cached = reused.unwrap_or_else(|| CachedRow {
                    entry: e.clone(),
                    base: prev.cloned(),
                    row: Arc::new(model::row(e, prev.map(|p| &**p), dt)),
                });
                // A rebuilt row in place of the same file's: a name learnt
                // since, or a new mount point, changes the name order.
                if let Some(c) = old.get(i).and_then(Option::as_ref) {
                    if aligned && (c.row.name != cached.row.name || c.row.mount != cached.row.mount)
                    {
                        aligned = false;
                    }
                }
                let row = cached.row.clone();
                cache.push(Some(cached));
                row
            })
            .collect();
        self.row_cache = cache;
        (rows, aligned)
    }

    fn table_inputs(&self) -> Option<TableInputs> {
        let cur = self.current.as_ref()?;
        let base = self.base();
        let varies = base.is_some_and(|b| !b.entries.same_as(&cur.entries));
        Some(TableInputs {
            current: cur.entries.clone(),
            base: base.map(|b| b.entries.clone()),
            period: varies.then(|| model::period(cur, base, self.mode)),
            mode: self.mode,
            sort: self.sort,
            descending: self.descending,
            filter: self.filter.clone(),
        })
    }

    /// Brings `rows` up to date with the snapshots, sort and filter.
    fn update_rows(&mut self) {
        let inputs = self.table_inputs();
        let unchanged = match (&inputs, &self.rows_from) {
            (Some(now), Some(then)) => now.same_as(then),
            (None, None) => true,
            _ => false,
        };
        if !unchanged {
            self.rows = self.compute_rows();
            self.rows_from = inputs;
        }
        self.move_selection(0);
    }

    fn compute_rows(&mut self) -> Vec<Arc<Row>> {
        let (all, aligned) = self.all_rows();
        let key = |r: &Row| -> f64 {
            match self.sort {
                SortBy::Writes => r.writes,
                SortBy::Bytes => r.bytes,
                SortBy::Shared => r.shared_pct().unwrap_or(-1.0),
                SortBy::Contended => r.contended,
                SortBy::WaitMax => r.wait_max_ns as f64,
                SortBy::Name => 0.0,
            }
        };
        if !aligned || self.name_rank.len() != all.len() {
            let mut by_name: Vec<usize> = (0..all.len()).collect();
            by_name.sort_by(|&a, &b| {
                (&all[a].mount, &all[a].name).cmp(&(&all[b].mount, &all[b].name))
            });
            self.name_rank = vec![0; all.len()];
            for (rank, &i) in by_name.iter().enumerate() {
                self.name_rank[i] = rank as u32;
            }
        }
        // Start from the last order when the files are the same: between two
        // refreshes few rows move, and the (stable) sort then runs in about
        // one pass instead of n log n comparisons.
        let mut order = std::mem::take(&mut self.order);
        if !aligned || order.len() != all.len() {
            order = (0..all.len()).collect();
        }
        // The keys side by side: a comparison touches no row.
        let mut keyed: Vec<(f64, u32, usize)> = order
            .iter()
            .map(|&i| (key(&all[i]), self.name_rank[i], i))
            .collect();
        let (by_name, descending) = (self.sort == SortBy::Name, self.descending);
        keyed.sort_by(|a, b| {
            // Ties between numbers go by name, A first when descending.
            let ord = if by_name {
                a.1.cmp(&b.1)
            } else {
                a.0.total_cmp(&b.0).then_with(|| b.1.cmp(&a.1))
            };
            if descending {
                ord.reverse()
            } else {
                ord
            }
        });
        order.clear();
        order.extend(keyed.iter().map(|k| k.2));
        let needle = self.filter.to_lowercase();
        let rows = order
            .iter()
            .map(|&i| &all[i])
            .filter(|r| needle.is_empty() || r.haystack.contains(&needle))
            .cloned()
            .collect();
        self.order = order;
        rows
    }

    pub fn totals(&self) -> model::Totals {
        self.current
            .as_ref()
            .map(|c| model::totals(c, self.base(), self.mode))
            .unwrap_or_default()
    }

    pub fn verdict(&self) -> Option<Verdict> {
        self.current
            .as_ref()
            .map(|c| decide(&Evidence::from_totals(c)).verdict)
    }

    pub fn selected_row(&self) -> Option<&Row> {
        self.rows.get(self.selected).map(|r| &**r)
    }

    fn move_selection(&mut self, by: isize) {
        let n = self.rows().len();
        if n == 0 {
            self.selected = 0;
            return;
        }
        self.selected = self.selected.saturating_add_signed(by).min(n - 1);
    }

    pub fn select(&mut self, index: usize) {
        self.selected = index;
        self.move_selection(0);
    }

    pub fn scroll(&mut self, by: isize) {
        self.move_selection(by);
    }

    pub fn on_key(&mut self, key: KeyEvent) {
        self.handle_key(key);
        // Sort, filter, mode and reset change the table; moving does not.
        self.update_rows();
    }

    fn handle_key(&mut self, key: KeyEvent) {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return;
        }
        if let Some(input) = &mut self.filter_input {
            match key.code {
                KeyCode::Enter => {
                    self.filter = input.clone();
                    self.filter_input = None;
                    self.selected = 0;
                }
                KeyCode::Esc => {
                    self.filter_input = None;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    input.pop();
                }
                KeyCode::Char(c) => input.push(c),
                _ => {}
            }
            return;
        }
        match key.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('?') => {
                self.view = if self.view == View::Help {
                    View::Main
                } else {
                    View::Help
                }
            }
            KeyCode::Esc => self.view = View::Main,
            KeyCode::Enter if self.view == View::Main && self.selected_row().is_some() => {
                self.view = View::Detail
            }
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::PageUp => self.move_selection(-10),
            KeyCode::PageDown => self.move_selection(10),
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('S') => self.descending = !self.descending,
            KeyCode::Char('/') => self.filter_input = Some(self.filter.clone()),
            KeyCode::Char('f') => self.frozen = !self.frozen,
            KeyCode::Char('r') => {
                self.baseline = self.current.clone();
                self.contended_history.clear();
            }
            KeyCode::Char('t') => {
                self.mode = match self.mode {
                    Mode::Rates => Mode::Totals,
                    Mode::Totals => Mode::Rates,
                }
            }
            KeyCode::Char('m') => self.mouse = !self.mouse,
            _ => {}
        }
    }
}

/// A plain key press, for tests.
#[cfg(test)]
pub fn tests_key(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::model::tests_support::entry;

    fn key(c: KeyCode) -> KeyEvent {
        tests_key(c)
    }

    fn app_with(entries: Vec<crate::snapshot::Entry>) -> App {
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
        app.on_snapshot(snap(3.0, 50));
        let (idle_after, busy_after) = (row_of(&app, "idle"), row_of(&app, "busy.db"));
        assert!(Arc::ptr_eq(&idle_before, &idle_after), "idle row rebuilt");
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
        let list: crate::snapshot::Entries = entries.into();
        let mut app = App::new("test".into(), Duration::from_secs(1));
        for t in 1..=3 {
            app.on_snapshot(Snapshot {
                elapsed_secs: f64::from(t),
                entries: list.clone(),
                ..Default::default()
            });
        }
        let table = app.rows().as_ptr();
        app.on_snapshot(Snapshot {
            elapsed_secs: 4.0,
            entries: list.clone(),
            ..Default::default()
        });
        app.on_key(key(KeyCode::Down));
        assert_eq!(app.rows().as_ptr(), table, "table recomputed");
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
            // The rows: as the model computes them, key by key.
            let by_name = |mut v: Vec<(String, f64)>| {
                v.sort_by(|a, b| a.0.cmp(&b.0));
                v
            };
            let expected: Vec<(String, f64)> = model::rows(&snap, previous.as_ref(), Mode::Rates)
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
}

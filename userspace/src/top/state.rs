//! The UI's state and what each key does to it: no terminal, no I/O.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::model::{self, Mode, Row};
use crate::{
    snapshot::{Entry, Snapshot},
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

/// Every key, for the help view and the README.
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
    /// not on every redraw (5 a second, 10,000 rows each).
    rows: Vec<Arc<Row>>,
    /// Each row by the allocations of its entry and base entry, which it
    /// holds (so neither address can be reused while cached): an entry that
    /// did not move keeps its row from one refresh to the next.
    row_cache: HashMap<RowKey, CachedRow>,
}

/// (entry, base entry, mode), by address.
type RowKey = (usize, usize, Mode);

struct CachedRow {
    _entry: Arc<Entry>,
    _base: Option<Arc<Entry>>,
    row: Arc<Row>,
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
            row_cache: HashMap::new(),
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
        self.rows = self.compute_rows();
        self.move_selection(0);
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

    /// Rows for every entry, from the cache where entry and base are the
    /// allocations they were last time.
    fn all_rows(&mut self) -> Vec<Arc<Row>> {
        let mut old = std::mem::take(&mut self.row_cache);
        let Some(cur) = &self.current else {
            return Vec::new();
        };
        let base = self.base();
        let dt = model::period(cur, base, self.mode);
        let previous = model::index(base);
        let mut cache = HashMap::with_capacity(cur.entries.len());
        let rows = cur
            .entries
            .iter()
            .map(|e| {
                let prev = previous
                    .get(&(e.dev.as_str(), e.ino, e.path.as_str()))
                    .copied();
                let key = (
                    Arc::as_ptr(e) as usize,
                    prev.map_or(0, |p| Arc::as_ptr(p) as usize),
                    self.mode,
                );
                // Same entry, same base, same mode: the same row. Such a pair
                // recurs within one pair of snapshots (the same period) or
                // for an entry that did not move (its delta is 0 over any
                // period).
                let row = match old.remove(&key) {
                    Some(c) => c.row,
                    None => Arc::new(model::row(e, prev.map(|p| &**p), dt)),
                };
                cache.insert(
                    key,
                    CachedRow {
                        _entry: e.clone(),
                        _base: prev.cloned(),
                        row: row.clone(),
                    },
                );
                row
            })
            .collect();
        self.row_cache = cache;
        rows
    }

    fn compute_rows(&mut self) -> Vec<Arc<Row>> {
        let needle = self.filter.to_lowercase();
        let mut rows: Vec<Arc<Row>> = self
            .all_rows()
            .into_iter()
            .filter(|r| r.haystack.contains(&needle))
            .collect();
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
        rows.sort_by(|a, b| {
            let ord = if self.sort == SortBy::Name {
                (&a.mount, &a.name).cmp(&(&b.mount, &b.name))
            } else {
                key(a)
                    .total_cmp(&key(b))
                    .then_with(|| (&b.mount, &b.name).cmp(&(&a.mount, &a.name)))
            };
            if self.descending {
                ord.reverse()
            } else {
                ord
            }
        });
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
        // Sort, filter, mode and reset all change the table.
        self.rows = self.compute_rows();
        self.move_selection(0);
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
            entries: vec![entry("f", 99, 0, 0).into()],
            ..Default::default()
        });
        assert_eq!(app.current.as_ref().map(|s| s.elapsed_secs), Some(2.0));
        app.on_key(key(KeyCode::Char('f')));
        app.on_key(key(KeyCode::Char('t')));
        app.on_key(key(KeyCode::Char('r')));
        app.on_snapshot(Snapshot {
            elapsed_secs: 3.0,
            entries: vec![entry("f", 15, 0, 0).into()],
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
            entries: vec![idle.clone(), Arc::new(entry("busy.db", busy, 0, 0))],
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
}

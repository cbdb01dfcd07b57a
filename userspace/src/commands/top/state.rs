//! The UI's state and what each key does to it: no terminal, no I/O.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::rows::{self, Mode, Row};
use crate::{
    model::snapshot::{Entries, Entry, Snapshot},
    model::verdict::{decide, Evidence, Verdict},
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
    a.id() == b.id()
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
            let t = rows::totals(cur, self.previous.as_ref(), Mode::Rates);
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
        let dt = rows::period(cur, base, self.mode);
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
                        .get_or_insert_with(|| rows::index(base))
                        .get(&e.id())
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
                    row: Arc::new(rows::row(e, prev.map(|p| &**p), dt)),
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
            period: varies.then(|| rows::period(cur, base, self.mode)),
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

    pub fn totals(&self) -> rows::Totals {
        self.current
            .as_ref()
            .map(|c| rows::totals(c, self.base(), self.mode))
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
mod tests;

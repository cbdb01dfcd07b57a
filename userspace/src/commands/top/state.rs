//! The UI's state and what each key does to it: no terminal, no I/O.

use std::{collections::VecDeque, time::Duration};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::rows::{self, Mode, Row};

mod table;

use crate::{
    model::snapshot::Snapshot,
    model::verdict::{decide, Evidence, Verdict},
};
use table::{CachedRow, TableInputs};

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
    /// The table as shown, as indices into `row_cache`: computed when a
    /// snapshot or a key changes it, not on every redraw, and not at all
    /// while what it is computed from stands still (an idle host: the same
    /// entry lists again).
    rows: Vec<usize>,
    /// What `rows` was computed from.
    rows_from: Option<TableInputs>,
    /// Each row with the entry and base entry it was built from (held, so
    /// neither address can be reused while cached), in entry order: an
    /// entry that did not move keeps its row from one refresh to the next,
    /// in place, so a refresh with one busy file among many rebuilds one
    /// row and moves no other.
    row_cache: Vec<CachedRow>,
    /// Tables computed and rows built since start: what the caches save.
    tables_computed: u64,
    rows_built: u64,
    /// The mode the cached rows are in.
    row_cache_mode: Mode,
    /// Entry indices in table order (before the filter), as last sorted:
    /// the next sort starts from it and finds the rows nearly in order.
    order: Vec<usize>,
    /// The sort `order` is in.
    order_sort: Option<(SortBy, bool)>,
    /// Each entry's place in (mount, name) order, in entry order: ranked
    /// when the files change, so that a refresh's sort breaks ties between
    /// idle files by comparing numbers, not strings.
    name_rank: Vec<u32>,
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
            tables_computed: 0,
            rows_built: 0,
            row_cache_mode: Mode::Rates,
            order: Vec::new(),
            order_sort: None,
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
        self.rows().get(self.selected)
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

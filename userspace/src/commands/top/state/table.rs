//! The table `top` shows: rows built from the snapshots only where an
//! entry or its base moved, kept in sort order by moving only those.

use std::{collections::HashMap, sync::Arc};

use super::{App, SortBy};
use crate::{
    commands::top::rows::{self, Mode, Row},
    model::snapshot::{Entries, Entry, FileId, Snapshot},
};

/// A row with the entry and base entry it was built from.
pub(super) struct CachedRow {
    entry: Arc<Entry>,
    base: Option<Arc<Entry>>,
    /// Boxed, so that a refresh's pass over the cache reads 24 bytes a row.
    row: Box<Row>,
}

impl CachedRow {
    /// The row of `entry` against `base` over `dt` seconds.
    fn build(entry: &Arc<Entry>, base: Option<&Arc<Entry>>, dt: f64) -> CachedRow {
        CachedRow {
            entry: entry.clone(),
            base: base.cloned(),
            row: Box::new(rows::row(entry, base.map(|p| &**p), dt)),
        }
    }
}

/// The table's rows in table order (sorted, then filtered).
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    order: &'a [usize],
    cache: &'a [CachedRow],
}

impl<'a> Rows<'a> {
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&'a Row> {
        let cache = self.cache;
        self.order
            .get(i)
            .and_then(|&c| cache.get(c))
            .map(|c| &*c.row)
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a Row> + 'a {
        let cache = self.cache;
        self.order
            .iter()
            .filter_map(move |&c| cache.get(c).map(|c| &*c.row))
    }
}

impl std::ops::Index<usize> for Rows<'_> {
    type Output = Row;

    fn index(&self, i: usize) -> &Row {
        &self.cache[self.order[i]].row
    }
}

/// Everything the table depends on. The entry lists are held, so their
/// addresses stay theirs while compared.
pub(super) struct TableInputs {
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

/// Each entry's base entry (the same file in the snapshot rates and
/// totals count from): at the entry's own index when the files did not
/// move, by key otherwise.
struct Bases<'s> {
    snapshot: Option<&'s Snapshot>,
    /// Built on the first entry not at its index.
    index: Option<HashMap<FileId, &'s Arc<Entry>>>,
}

impl<'s> Bases<'s> {
    fn entries(&self) -> &'s [Arc<Entry>] {
        self.snapshot.map_or(&[], |b| &b.entries)
    }

    /// Whether the base at `i` is the allocation `cached` (reads no entry).
    fn same_at(&self, i: usize, cached: Option<&Arc<Entry>>) -> bool {
        matches!((self.entries().get(i), cached), (Some(p), Some(c)) if Arc::ptr_eq(p, c))
    }

    fn of(&mut self, i: usize, e: &Arc<Entry>) -> Option<&'s Arc<Entry>> {
        match self.entries().get(i) {
            Some(p) if Arc::ptr_eq(p, e) || same_file(p, e) => Some(p),
            _ => {
                let snapshot = self.snapshot;
                self.index
                    .get_or_insert_with(|| rows::index(snapshot))
                    .get(&e.id())
                    .copied()
            }
        }
    }
}

impl App {
    /// Rows after filter and sort.
    pub fn rows(&self) -> Rows<'_> {
        Rows {
            order: &self.rows,
            cache: &self.row_cache,
        }
    }

    /// Brings the row cache up to the current snapshot and its base:
    /// only the rows whose entry or base entry is not the allocation they
    /// were built from are built again. Returns the indices of the rows
    /// built, if the cache lists the same files as before, in the same
    /// order and with the same names; `None` if it does not.
    fn refresh_row_cache(&mut self) -> Option<Vec<usize>> {
        if self.row_cache_mode != self.mode {
            self.row_cache.clear();
            self.row_cache_mode = self.mode;
        }
        let Some(cur) = &self.current else {
            self.row_cache.clear();
            return None;
        };
        let base = match self.mode {
            Mode::Rates => self.previous.as_ref(),
            Mode::Totals => self.baseline.as_ref(),
        };
        let dt = rows::period(cur, base, self.mode);
        let mut bases = Bases {
            snapshot: base,
            index: None,
        };
        if self.row_cache.len() == cur.entries.len() {
            // The collector keeps its entries in key order, so each file is
            // normally where it was: compared by address, no entry read.
            let mut names_kept = true;
            let mut in_place = true;
            let mut built = Vec::new();
            for (i, (c, e)) in self
                .row_cache
                .iter_mut()
                .zip(cur.entries.iter())
                .enumerate()
            {
                let same_entry = Arc::ptr_eq(&c.entry, e);
                if !same_entry && !same_file(&c.entry, e) {
                    in_place = false;
                    break;
                }
                if same_entry && bases.same_at(i, c.base.as_ref()) {
                    continue;
                }
                let prev = bases.of(i, e);
                if same_entry && both_or_neither(c.base.as_ref(), prev, Arc::ptr_eq) {
                    continue;
                }
                let built_row = CachedRow::build(e, prev, dt);
                names_kept &=
                    built_row.row.name == c.row.name && built_row.row.mount == c.row.mount;
                *c = built_row;
                self.rows_built += 1;
                built.push(i);
            }
            if in_place {
                return names_kept.then_some(built);
            }
        }
        // Files came or went: each entry that kept its allocation (and
        // base) keeps its row, found by address.
        let mut old: HashMap<*const Entry, CachedRow> = std::mem::take(&mut self.row_cache)
            .into_iter()
            .map(|c| (Arc::as_ptr(&c.entry), c))
            .collect();
        let mut built = 0;
        self.row_cache = cur
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let prev = bases.of(i, e);
                match old.remove(&Arc::as_ptr(e)) {
                    Some(c) if both_or_neither(c.base.as_ref(), prev, Arc::ptr_eq) => c,
                    _ => {
                        built += 1;
                        CachedRow::build(e, prev, dt)
                    }
                }
            })
            .collect();
        self.rows_built += built;
        None
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
    pub(super) fn update_rows(&mut self) {
        let inputs = self.table_inputs();
        let unchanged = match (&inputs, &self.rows_from) {
            (Some(now), Some(then)) => now.same_as(then),
            (None, None) => true,
            _ => false,
        };
        if !unchanged {
            self.compute_rows();
            self.rows_from = inputs;
        }
        self.move_selection(0);
    }

    fn compute_rows(&mut self) {
        self.tables_computed += 1;
        let built = self.refresh_row_cache();
        let cache = &self.row_cache;
        let n = cache.len();
        if built.is_none() || self.name_rank.len() != n {
            let mut by_name: Vec<usize> = (0..n).collect();
            by_name.sort_by(|&a, &b| {
                let (a, b) = (&cache[a].row, &cache[b].row);
                (&a.mount, &a.name).cmp(&(&b.mount, &b.name))
            });
            self.name_rank = vec![0; n];
            for (rank, &i) in by_name.iter().enumerate() {
                self.name_rank[i] = rank as u32;
            }
        }
        let sort = (self.sort, self.descending);
        let key = |r: &Row| -> f64 {
            match sort.0 {
                SortBy::Writes => r.writes,
                SortBy::Bytes => r.bytes,
                SortBy::Shared => r.shared_pct().unwrap_or(-1.0),
                SortBy::Contended => r.contended,
                SortBy::WaitMax => r.wait_max_ns as f64,
                SortBy::Name => 0.0,
            }
        };
        // Ties between numbers go by name, A first when descending; ranks
        // are unique, so this is a total order and any way of sorting by it
        // gives the same table.
        let name_rank = &self.name_rank;
        let cmp = |a: (f64, u32), b: (f64, u32)| {
            let ord = if sort.0 == SortBy::Name {
                a.1.cmp(&b.1)
            } else {
                a.0.total_cmp(&b.0).then_with(|| b.1.cmp(&a.1))
            };
            if sort.1 {
                ord.reverse()
            } else {
                ord
            }
        };
        let keyed = |i: usize| (key(&cache[i].row), name_rank[i]);
        let mut order = std::mem::take(&mut self.order);
        match built {
            // The same files in the same order, sorted the same way, and a
            // few rows built: those move to their new places, found by
            // bisection, and no other row is read.
            Some(built)
                if self.order_sort == Some(sort) && order.len() == n && built.len() * 8 < n =>
            {
                order.retain(|i| built.binary_search(i).is_err());
                for i in built {
                    let at = order.partition_point(|&o| cmp(keyed(o), keyed(i)).is_lt());
                    order.insert(at, i);
                }
            }
            built => {
                // Start from the last order when the files are the same: the
                // (stable) sort then runs in about one pass.
                if built.is_none() || order.len() != n {
                    order = (0..n).collect();
                }
                // The keys side by side: a comparison touches no row.
                let mut sorted: Vec<((f64, u32), usize)> =
                    order.iter().map(|&i| (keyed(i), i)).collect();
                sorted.sort_by(|a, b| cmp(a.0, b.0));
                order.clear();
                order.extend(sorted.iter().map(|k| k.1));
            }
        }
        self.order_sort = Some(sort);
        let needle = self.filter.to_lowercase();
        self.rows.clear();
        self.rows.extend(
            order
                .iter()
                .copied()
                .filter(|&i| needle.is_empty() || cache[i].row.haystack.contains(&needle)),
        );
        self.order = order;
    }
}

//! Drawing: a pure function of the state onto a ratatui frame. No I/O here,
//! so `TestBackend` can render it.

use std::{borrow::Cow, sync::LazyLock};

use fuselock_base::escape;
use probes_common::{Reason, WritePath};
use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Clear, Paragraph, Row as TableRow, Sparkline, Table, TableState, Wrap},
    Frame,
};

use super::{
    columns::{self, Column},
    rows::{Mode, Row},
    state::{App, View, KEYS},
};

use crate::model::{counts::Histogram, snapshot::Entry, verdict::Verdict};

fn rate(v: f64, mode: Mode) -> String {
    let v = if mode == Mode::Rates { v } else { v.round() };
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if mode == Mode::Rates && v > 0.0 && v < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn bytes(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = v;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.0}{}", UNITS[u])
}

fn duration(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.1}s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.1}ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.0}us", ns / 1e3)
    } else {
        format!("{ns:.0}ns")
    }
}

fn badge(v: Option<Verdict>) -> Span<'static> {
    let (text, color) = match v {
        Some(Verdict::Active) => (" ACTIVE ", Color::Green),
        Some(Verdict::NotActive) => (" NOT ACTIVE ", Color::Red),
        Some(Verdict::Inconclusive) | None => (" INCONCLUSIVE ", Color::Yellow),
    };
    Span::styled(
        text,
        Style::default()
            .fg(Color::Black)
            .bg(color)
            .add_modifier(Modifier::BOLD),
    )
}

pub fn draw(frame: &mut Frame, app: &App) {
    let [header, table, spark, footer] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(5),
        Constraint::Length(4),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_header(frame, header, app);
    match app.view {
        View::Detail => draw_detail(frame, table, app),
        View::Main | View::Help => draw_table(frame, table, app),
    }
    draw_sparkline(frame, spark, app);
    draw_footer(frame, footer, app);
    if app.view == View::Help {
        draw_help(frame, frame.area());
    }
}

fn draw_header(frame: &mut Frame, area: Rect, app: &App) {
    let t = app.totals();
    let unit = if app.mode == Mode::Rates { "/s" } else { "" };
    let (kernel, probes, uptime, evictions, misses) = match &app.current {
        Some(s) => (
            s.source.kernel.clone(),
            s.source.probe_mode.clone(),
            format!("{:.0}s", s.elapsed_secs),
            s.health.evictions,
            s.health.recursion_misses,
        ),
        None => ("-".into(), "-".into(), "-".into(), 0, 0),
    };
    // Status flags come first: a narrow terminal cuts the end of the line.
    let mut first = vec![
        Span::styled("fuselock ", Style::default().add_modifier(Modifier::BOLD)),
        badge(app.verdict()),
    ];
    if app.frozen {
        first.push(Span::styled(
            " FROZEN",
            Style::default()
                .fg(Color::Cyan)
                .add_modifier(Modifier::BOLD),
        ));
    }
    if app.finished {
        first.push(Span::styled(
            " (replay finished)",
            Style::default().fg(Color::Cyan),
        ));
    }
    let waits = match &app.current {
        Some(s) if !s.source.contention => "  no wait times (--contention)",
        _ => "",
    };
    // Counts of some writers only: said before anything else is read.
    if let Some(only) = app
        .current
        .as_ref()
        .and_then(|s| s.source.only_cgroup.as_deref())
    {
        first.push(Span::styled(
            format!(" ONLY {}", escape::text(only)),
            Style::default()
                .fg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
        ));
    }
    // A replayed file says what it likes about its kernel.
    first.push(Span::raw(format!(
        "  kernel {}  {} probes{waits}  up {uptime}  refresh {:.1}s  {}",
        escape::text(&kernel),
        escape::text(&probes),
        app.interval.as_secs_f64(),
        escape::text(&app.source)
    )));
    let second = Line::from(format!(
        "writes{unit} {}  shared {}  contended{unit} {}  evictions {}  missed {}  [{}]",
        rate(t.writes, app.mode),
        t.shared_pct.map_or("-".into(), |p| format!("{p:.0}%")),
        rate(t.contended, app.mode),
        evictions,
        misses,
        if app.mode == Mode::Rates {
            "rates"
        } else {
            "totals since start/reset"
        },
    ));
    frame.render_widget(
        Paragraph::new(vec![Line::from(first), second]).block(Block::default()),
        area,
    );
}

/// The file table's columns, most important first to last; `drop_order`
/// says which go first on a narrow terminal (see columns.rs).
static COLUMNS: LazyLock<[Column; 10]> = LazyLock::new(|| {
    let exclusive = Reason::EXCLUSIVE.map(abbreviation).join("/");
    [
        col("FILE", None, Some(12)),
        col("MOUNT", Some(6), Some(14)),
        col("PATH", Some(1), None),
        col("WRITES", Some(8), None),
        col("BYTES", Some(2), None),
        col("SHARED", Some(7), None),
        col(format!("EXCL {exclusive}"), Some(5), None),
        col("CONT", Some(4), None),
        col("WAIT avg/p99/max", Some(3), None),
        col("TOP WRITER", Some(0), None),
    ]
});

/// A reason's short name in the exclusive column's header.
const fn abbreviation(reason: Reason) -> &'static str {
    reason.info().abbreviation
}

fn col(
    header: impl Into<Cow<'static, str>>,
    drop_order: Option<u8>,
    min_cut: Option<usize>,
) -> Column {
    Column {
        header: header.into(),
        drop_order,
        min_cut,
    }
}

/// One row's values, in `COLUMNS` order.
fn row_cells(r: &Row, mode: Mode) -> Vec<String> {
    let excl = r.exclusive_by_reason.map(|v| rate(v, mode)).join("/");
    let wait = format!(
        "{}/{}/{}",
        r.wait_avg_ns.map_or("-".into(), duration),
        r.wait_p99_ns.map_or("-".into(), |v| if v == u64::MAX {
            ">1s".into()
        } else {
            duration(v as f64)
        }),
        if r.wait_max_ns == 0 {
            "-".into()
        } else {
            duration(r.wait_max_ns as f64)
        },
    );
    // Names, mounts and comms come from users: ratatui drops C0 and C1
    // controls but shows bidirectional overrides and line separators as
    // they are.
    vec![
        escape::text(&r.name).into_owned(),
        escape::text(&r.mount).into_owned(),
        match r.file.path {
            WritePath::Passthrough => "pt",
            WritePath::DirectIo => "dio",
        }
        .to_owned(),
        rate(r.writes, mode),
        bytes(r.bytes),
        r.shared_pct().map_or("-".into(), |p| format!("{p:.0}%")),
        excl,
        r.contended_pct().map_or("-".into(), |p| format!("{p:.0}%")),
        wait,
        r.top_writer
            .as_deref()
            .map_or_else(String::new, |w| escape::text(w).into_owned()),
    ]
}

fn draw_table(frame: &mut Frame, area: Rect, app: &App) {
    let rows = app.rows();
    let title = format!(
        " {} files, sorted by {} {} {}",
        rows.len(),
        app.sort.label(),
        if app.descending { "↓" } else { "↑" },
        if app.filter.is_empty() {
            String::new()
        } else {
            format!("- filter \"{}\" ", app.filter)
        }
    );
    // Only the rows that fit are formatted: with 10,000 files, building
    // every row on every redraw (5 a second) was most of top's CPU. The
    // window keeps the selection in view, as ratatui's own scrolling would.
    let visible = usize::from(area.height.saturating_sub(3)).max(1);
    let first = app.selected.saturating_sub(visible - 1);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .skip(first)
        .take(visible)
        .map(|r| row_cells(r, app.mode))
        .collect();
    // Inside the border; the table draws no highlight symbol.
    let room = usize::from(area.width.saturating_sub(2));
    let fitted = columns::fit(COLUMNS.as_slice(), &cells, room);
    let shown: Vec<(usize, usize)> = fitted
        .iter()
        .enumerate()
        .filter_map(|(i, w)| w.map(|w| (i, w)))
        .collect();
    let widths = shown
        .iter()
        .map(|&(_, w)| Constraint::Length(u16::try_from(w).unwrap_or(u16::MAX)));
    let header = shown
        .iter()
        .map(|&(i, _)| Cell::from(COLUMNS[i].header.as_ref()));
    let body = cells.into_iter().map(|row| {
        TableRow::new(
            shown
                .iter()
                .map(|&(i, w)| Cell::from(columns::cut_left(&row[i], w)))
                .collect::<Vec<_>>(),
        )
    });
    let table = Table::new(body, widths)
        .column_spacing(u16::try_from(columns::SPACING).unwrap_or(1))
        .header(
            TableRow::new(header)
                .style(Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)),
        )
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .block(Block::bordered().title(title));
    let mut state =
        TableState::default().with_selected((!rows.is_empty()).then_some(app.selected - first));
    frame.render_stateful_widget(table, area, &mut state);
}

fn hist_lines(title: &str, h: &Histogram) -> Vec<Line<'static>> {
    let mut lines = vec![Line::styled(
        title.to_owned(),
        Style::default().add_modifier(Modifier::BOLD),
    )];
    let max = h.counts().iter().copied().max().unwrap_or(0);
    if max == 0 {
        lines.push(Line::raw("  (none)"));
    }
    for b in h.buckets() {
        let bar = "█".repeat(((b.count as f64 / max as f64) * 20.0).ceil() as usize);
        let le = b
            .le_ns
            .map_or(">1s".into(), |v| format!("<{}", duration(v as f64 + 1.0)));
        lines.push(Line::raw(format!("  {le:>8} {bar:<20} {}", b.count)));
    }
    lines
}

fn draw_detail(frame: &mut Frame, area: Rect, app: &App) {
    let Some(row) = app.selected_row() else {
        frame.render_widget(
            Paragraph::new("no file selected").block(Block::bordered()),
            area,
        );
        return;
    };
    let entry: Option<&Entry> = app
        .current
        .as_ref()
        .and_then(|s| s.entries.iter().find(|e| e.id() == row.file).map(|e| &**e));
    let Some(e) = entry else { return };
    let c = &e.counters;
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let mut lines = vec![
        Line::styled(
            format!(
                "{} on {} ({}:{}), {}",
                escape::text(&row.name),
                escape::text(&row.mount),
                e.dev,
                e.ino,
                e.path
            ),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Line::raw(format!(
            "writes {}  bytes {}  errors {}  without lock {}",
            c.writes, c.bytes, c.errors, c.unlocked
        )),
        Line::raw(""),
        Line::styled(
            "acquisitions by reason    shared  exclusive",
            Style::default().add_modifier(Modifier::BOLD),
        ),
    ];
    let total = (c.shared + c.exclusive).max(1);
    for reason in probes_common::Reason::ALL {
        let s = c.acquisitions[probes_common::LockMode::Shared][reason];
        let x = c.acquisitions[probes_common::LockMode::Exclusive][reason];
        let bar = format!(
            "{}{}",
            "▒".repeat((s * 12 / total) as usize),
            "█".repeat((x * 12 / total) as usize)
        );
        lines.push(Line::raw(format!(
            "  {:<18} {s:>8} {x:>10} {bar}",
            reason.name()
        )));
    }
    let contention = app.current.as_ref().is_some_and(|s| s.source.contention);
    // Once this file's eligible writes run shared, exclusive overwrites
    // left are EOF races the series already handles.
    let series_missing =
        c.acquisitions[probes_common::LockMode::Shared][probes_common::Reason::Eligible] == 0;
    let gain = (e.path == WritePath::Passthrough && series_missing)
        .then(|| crate::model::verdict::series_gain(c, contention))
        .flatten();
    if let Some(gain) = gain {
        lines.push(Line::raw(format!(
            "  the series would buy: {}",
            gain.sentence()
        )));
    }
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        "open-time evidence",
        Style::default().add_modifier(Modifier::BOLD),
    ));
    match &e.open {
        Some(o) => {
            lines.push(Line::raw(format!(
                "  {} opens; FOPEN_PARALLEL_DIRECT_WRITES asked {} kept {}",
                o.opens, o.parallel_asked, o.parallel_kept
            )));
            let verdict = if o.passthrough_parallel_asked > o.passthrough_parallel_kept {
                "  the kernel STRIPPED the flag from passthrough opens"
            } else if o.passthrough_parallel_kept > 0 {
                "  the kernel KEPT the flag on passthrough opens"
            } else {
                "  the server did not ask for the flag on passthrough opens"
            };
            lines.push(Line::raw(verdict));
            lines.push(Line::raw(format!(
                "  last open flags {:#x} asked, {:#x} kept",
                o.last_flags_asked, o.last_flags_kept
            )));
        }
        None => lines.push(Line::raw("  no open seen since fuselock started")),
    }
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        "writers",
        Style::default().add_modifier(Modifier::BOLD),
    ));
    for w in &e.writers {
        lines.push(Line::raw(format!(
            "  {:>7} {:<16} {:>9}  {}",
            w.pid,
            escape::text(&w.comm),
            w.writes,
            escape::text(&w.cgroup.describe())
        )));
    }
    frame.render_widget(
        Paragraph::new(lines)
            .block(Block::bordered().title(" detail (Esc: back) "))
            .wrap(Wrap { trim: false }),
        left,
    );
    let h = &e.histograms;
    let mut hl = hist_lines("wait, exclusive", &h.wait_hist.exclusive);
    hl.extend(hist_lines("wait, shared", &h.wait_hist.shared));
    hl.extend(hist_lines("hold, exclusive", &h.hold_hist.exclusive));
    hl.extend(hist_lines("hold, shared", &h.hold_hist.shared));
    hl.extend(hist_lines("write latency", &h.latency_hist));
    frame.render_widget(
        Paragraph::new(hl).block(Block::bordered().title(" histograms ")),
        right,
    );
}

fn draw_sparkline(frame: &mut Frame, area: Rect, app: &App) {
    let data: Vec<u64> = app.contended_history.iter().copied().collect();
    let visible = &data[data
        .len()
        .saturating_sub(area.width.saturating_sub(2) as usize)..];
    let max = visible.iter().max().copied().unwrap_or(0);
    frame.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(format!(" contended acquisitions/s (max {max}) ")))
            .data(visible),
        area,
    );
}

fn draw_footer(frame: &mut Frame, area: Rect, app: &App) {
    let text = match &app.filter_input {
        Some(input) => format!("filter: {input}█  (Enter apply, Esc clear)"),
        None => "q quit  ? help  ↑↓ move  Enter detail  s/S sort  / filter  f freeze  r reset  t rates/totals  m mouse".into(),
    };
    frame.render_widget(
        Paragraph::new(text).style(Style::default().fg(Color::DarkGray)),
        area,
    );
}

fn draw_help(frame: &mut Frame, area: Rect) {
    let width = area.width.min(76);
    let height = (KEYS.len() as u16 + 4).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    let lines: Vec<Line> = KEYS
        .iter()
        .map(|(k, what)| Line::raw(format!(" {k:<12} {what}")))
        .collect();
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" keys (? or Esc to close) ")),
        popup,
    );
}

#[cfg(test)]
mod tests;

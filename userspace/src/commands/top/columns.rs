//! Fitting the file table's columns to the terminal, as htop and bottom do:
//! every column gets the width its widest visible value needs; when that
//! does not fit, the name columns are cut first (from the left, keeping the
//! end that tells paths apart: `…demo-114/mnt`), then whole columns of lower
//! priority are dropped. A number is never cut.

use std::borrow::Cow;

/// One column: its header, the order in which it is dropped when the
/// terminal is too narrow (lower goes first; `None`: never), and for a name
/// column the width below which it is not cut.
pub struct Column {
    pub header: Cow<'static, str>,
    pub drop_order: Option<u8>,
    pub min_cut: Option<usize>,
}

/// Columns are separated by one space (ratatui's default column spacing).
pub const SPACING: usize = 1;

/// Widths for each column that fits in `room` cells (`None`: dropped), given
/// each column's values. `cells[row][col]`.
pub fn fit(columns: &[Column], cells: &[Vec<String>], room: usize) -> Vec<Option<usize>> {
    let natural: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|row| width(&row[i]))
                .chain([width(&c.header)])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let least = |i: usize| columns[i].min_cut.map_or(natural[i], |m| m.min(natural[i]));
    let mut shown: Vec<bool> = vec![true; columns.len()];
    let need = |shown: &[bool], w: &dyn Fn(usize) -> usize| -> usize {
        let n = shown.iter().filter(|s| **s).count();
        (0..columns.len())
            .filter(|i| shown[*i])
            .map(w)
            .sum::<usize>()
            + SPACING * n.saturating_sub(1)
    };
    // Drop whole columns, lowest priority first, until the rest fit with
    // their name columns cut as far as they may be.
    let mut order: Vec<usize> = (0..columns.len())
        .filter(|i| columns[*i].drop_order.is_some())
        .collect();
    order.sort_by_key(|i| columns[*i].drop_order);
    for i in order {
        if need(&shown, &least) <= room {
            break;
        }
        shown[i] = false;
    }
    // Then cut the name columns only as much as the room requires, sharing
    // the shortfall in proportion to what each could give up.
    let mut widths: Vec<usize> = natural.clone();
    let over = need(&shown, &|i| natural[i]).saturating_sub(room);
    if over > 0 {
        let slack: Vec<usize> = (0..columns.len())
            .map(|i| if shown[i] { natural[i] - least(i) } else { 0 })
            .collect();
        let total: usize = slack.iter().sum();
        let mut left = over.min(total);
        for i in 0..columns.len() {
            if slack[i] == 0 || left == 0 {
                continue;
            }
            let cut = (over * slack[i])
                .div_ceil(total.max(1))
                .min(slack[i])
                .min(left);
            widths[i] -= cut;
            left -= cut;
        }
    }
    (0..columns.len())
        .map(|i| shown[i].then_some(widths[i]))
        .collect()
}

/// `text` in at most `width` cells; too long, it keeps its end behind `…`.
pub fn cut_left(text: &str, width: usize) -> String {
    let len = self::width(text);
    if len <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let keep = width - 1;
    let tail: String = text.chars().skip(len - keep).collect();
    format!("…{tail}")
}

/// Display width in cells. The table holds ASCII, file names aside; a char
/// per cell is close enough for names and exact for everything else.
fn width(s: &str) -> usize {
    s.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> Vec<Column> {
        vec![
            Column {
                header: Cow::Borrowed("NAME"),
                drop_order: None,
                min_cut: Some(6),
            },
            Column {
                header: Cow::Borrowed("N"),
                drop_order: Some(2),
                min_cut: None,
            },
            Column {
                header: Cow::Borrowed("LOW"),
                drop_order: Some(0),
                min_cut: None,
            },
        ]
    }

    fn cells() -> Vec<Vec<String>> {
        vec![vec!["/a/long/name/x".into(), "12345".into(), "abc".into()]]
    }

    #[test]
    fn everything_at_its_natural_width_when_it_fits() {
        assert_eq!(fit(&cols(), &cells(), 40), vec![Some(14), Some(5), Some(3)]);
    }

    #[test]
    fn names_are_cut_before_columns_are_dropped() {
        // 14 + 5 + 3 + 2 spaces = 24; 20 cells cut the name by 4.
        assert_eq!(fit(&cols(), &cells(), 20), vec![Some(10), Some(5), Some(3)]);
    }

    #[test]
    fn lowest_priority_goes_first_and_numbers_are_never_cut() {
        // The name can shrink to 6: 6 + 5 + 3 + 2 = 16 > 15, so LOW goes.
        assert_eq!(fit(&cols(), &cells(), 15), vec![Some(9), Some(5), None]);
        assert_eq!(fit(&cols(), &cells(), 8), vec![Some(8), None, None]);
    }

    #[test]
    fn cutting_keeps_the_distinguishing_end() {
        assert_eq!(cut_left("/tmp/fuselock-demo-114/mnt", 13), "…demo-114/mnt");
        assert_eq!(cut_left("short", 13), "short");
    }
}

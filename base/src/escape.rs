//! File names and paths made safe for a terminal, the way `ls -b` shows
//! them. Any user can name a file on a FUSE mount they mounted themselves,
//! and fuselock prints those names on root's terminal: a raw `\e]52;…`
//! would be run by the terminal, a raw newline would forge a table row.
//! JSON, metrics and `top` have their own escaping; this is for plain text.

use std::{borrow::Cow, fmt::Write as _, path::Path};

/// Whether `c` must not reach a terminal as it is: C0 and C1 controls, DEL,
/// and the bidirectional overrides that reorder what is shown.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        c if u32::from(c) < 0x100 => {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
}

/// `s` with control characters, bidirectional overrides and backslashes
/// escaped; borrowed when nothing needed it.
pub fn text(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c == '\\' || is_unsafe(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\\' || is_unsafe(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A path for a message: as [`text`], and each byte that is not UTF-8 as
/// `\xNN`.
pub fn path(p: &Path) -> String {
    let mut out = String::new();
    for chunk in p.as_os_str().as_encoded_bytes().utf8_chunks() {
        out.push_str(&text(chunk.valid()));
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{ffi::OsStr, os::unix::ffi::OsStrExt as _};

    use super::*;

    #[test]
    fn plain_names_are_borrowed() {
        assert!(matches!(text("overwrite"), Cow::Borrowed("overwrite")));
        assert!(matches!(text("é ü 文件"), Cow::Borrowed(_)));
    }

    #[test]
    fn controls_and_overrides_are_escaped() {
        assert_eq!(text("a\nb\tc\rd"), "a\\nb\\tc\\rd");
        assert_eq!(text("\u{1b}]52;c;aGk=\u{7}"), "\\x1b]52;c;aGk=\\x07");
        assert_eq!(text("x\u{7f}\u{9b}"), "x\\x7f\\x9b");
        assert_eq!(text("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(text("back\\slash"), "back\\\\slash");
    }

    #[test]
    fn invalid_utf8_in_paths_is_shown_as_bytes() {
        let p = Path::new(OsStr::from_bytes(b"/mnt/f\xff\xfe\n"));
        assert_eq!(path(p), "/mnt/f\\xff\\xfe\\n");
        assert_eq!(path(Path::new("/mnt/fuse/ok")), "/mnt/fuse/ok");
    }
}

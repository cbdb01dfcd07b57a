//! File names and paths made safe for a terminal, the way `ls -b` shows
//! them. Any user can name a file on a FUSE mount they mounted themselves,
//! and fuselock prints those names on root's terminal: a raw `\e]52;…`
//! would be run by the terminal, a raw newline would forge a table row, a
//! bidirectional override would show a name other than the one it is.
//! Every place that shows a name, a mount path or a `comm` as text uses
//! [`text`] or [`path`]: the tables, `top`, `verify`'s messages and the
//! metrics' label values. JSON has its own escaping.

use std::{borrow::Cow, fmt::Write as _, path::Path};

/// Whether `c` must not reach a terminal as it is:
/// - C0 and C1 controls and DEL (`char::is_control`; U+0085 NEL is C1);
/// - the bidirectional formatting characters, which reorder what is shown:
///   ALM, LRM, RLM, the embeddings and overrides, the isolates;
/// - the Unicode line and paragraph separators, which some terminals and
///   most viewers break lines at, as at a newline;
/// - the invisible format characters that make one name look like another
///   (zero-width space and joiners, word joiner and invisible operators,
///   the deprecated format controls, the byte order mark, the interlinear
///   annotation controls, the tag characters) and the soft hyphen.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Bidirectional formatting.
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                // Line and paragraph separators.
                | '\u{2028}'
                | '\u{2029}'
                // Invisible format characters.
                | '\u{00ad}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200d}'
                | '\u{2060}'..='\u{2064}'
                | '\u{206a}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{e0000}'..='\u{e007f}'
        )
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

/// `s` with the characters of [`is_unsafe`] and backslashes escaped
/// (`\x1b`, `\n`, `\u{202e}`, `\\`); borrowed when nothing needed it.
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
    fn every_bidirectional_formatting_character_is_escaped() {
        for c in ['\u{061c}', '\u{200e}', '\u{200f}']
            .into_iter()
            .chain('\u{202a}'..='\u{202e}')
            .chain('\u{2066}'..='\u{2069}')
        {
            let name = format!("a{c}b");
            assert_eq!(text(&name), format!("a\\u{{{:x}}}b", u32::from(c)));
        }
    }

    #[test]
    fn line_and_paragraph_separators_are_escaped() {
        assert_eq!(text("row\u{2028}FORGED"), "row\\u{2028}FORGED");
        assert_eq!(text("row\u{2029}FORGED"), "row\\u{2029}FORGED");
        // NEL is a C1 control; VT and FF are C0.
        assert_eq!(text("a\u{85}b\u{b}c\u{c}d"), "a\\x85b\\x0bc\\x0cd");
    }

    #[test]
    fn invisible_format_characters_are_escaped() {
        for c in ['\u{00ad}', '\u{180e}', '\u{feff}', '\u{e0001}', '\u{e0041}']
            .into_iter()
            .chain('\u{200b}'..='\u{200d}')
            .chain('\u{2060}'..='\u{2064}')
            .chain('\u{206a}'..='\u{206f}')
            .chain('\u{fff9}'..='\u{fffb}')
        {
            let name = format!("da{c}ta");
            let shown = text(&name);
            assert!(!shown.contains(c), "{c:?} left raw: {shown}");
            assert!(
                shown.starts_with("da\\") && shown.ends_with("ta"),
                "{shown}"
            );
        }
        assert_eq!(text("da\u{200b}ta"), "da\\u{200b}ta");
    }

    #[test]
    fn visible_text_of_any_script_is_left_alone() {
        for plain in [
            "Ελληνικά",
            "עברית",
            "العربية",
            "日本語",
            "emoji 😀",
            "a-b_c.d",
        ] {
            assert!(matches!(text(plain), Cow::Borrowed(_)), "{plain}");
        }
    }

    #[test]
    fn invalid_utf8_in_paths_is_shown_as_bytes() {
        let p = Path::new(OsStr::from_bytes(b"/mnt/f\xff\xfe\n"));
        assert_eq!(path(p), "/mnt/f\\xff\\xfe\\n");
        assert_eq!(path(Path::new("/mnt/fuse/ok")), "/mnt/fuse/ok");
    }
}

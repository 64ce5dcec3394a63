//! Control characters in text kiln did not write (a guest's log, a remote command's
//! output, names inside a component) made visible, so they cannot drive the user's
//! terminal: no title changes, clipboard writes (OSC 52), cursor moves or line
//! rewrites (CR), bells, and no bidirectional overrides that reorder what a line
//! seems to say. kiln's own colours are added after escaping, so they stay.
//!
//! Kept as they are: newline (every line gets its own prefix) and tab.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must not reach a terminal raw.
fn is_control(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{b}'..='\u{1f}' | '\u{7f}'..='\u{9f}')
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `\x1b`, `\r`, `\u{9b}`, ...: what a control character is shown as.
fn push_escaped(out: &mut String, c: char) {
    match c {
        '\r' => out.push_str("\\r"),
        c if u32::from(c) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
}

/// `text` with every control character except newline and tab made visible.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_control(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`escape_controls`], except that colour sequences (`ESC [ digits;... m`, SGR)
/// pass: for log lines whose formatter colours them. SGR only sets colours and
/// attributes; it cannot move the cursor, set titles or write the clipboard.
pub fn escape_controls_but_colours(text: &str) -> Cow<'_, str> {
    if !text.contains('\x1b') {
        return escape_controls(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    while let Some(i) = rest.find('\x1b') {
        out.push_str(&escape_controls(&rest[..i]));
        let seq = &rest[i + 1..];
        let sgr = seq.strip_prefix('[').and_then(|b| {
            let n = b.find(|c: char| !(c.is_ascii_digit() || c == ';'))?;
            b[n..].starts_with('m').then_some(n + 2)
        });
        match sgr {
            Some(n) => {
                out.push('\x1b');
                out.push_str(&seq[..n]);
                rest = &seq[n..];
            }
            None => {
                out.push_str("\\x1b");
                rest = seq;
            }
        }
    }
    out.push_str(&escape_controls(rest));
    Cow::Owned(out)
}

/// A serialized JSON line with the control characters serde leaves raw (DEL, C1,
/// bidirectional overrides) written as `\uXXXX` escapes: the same string to a JSON
/// reader, nothing a terminal acts on when the line is shown as is. They can only
/// occur inside strings, where the escape is valid.
pub fn escape_json_line(line: &str) -> Cow<'_, str> {
    if !line.chars().any(is_control) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        if is_control(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_made_visible() {
        let hostile = "a\x1b]52;c;SGVsbG8=\x07b\x1b]0;pwned\x07\rover\u{9b}2J\u{202e}x\ty";
        let shown = escape_controls(hostile);
        assert!(!shown.chars().any(is_control), "{shown}");
        assert_eq!(
            shown,
            "a\\x1b]52;c;SGVsbG8=\\x07b\\x1b]0;pwned\\x07\\rover\\u{9b}2J\\u{202e}x\ty"
        );
        assert!(matches!(escape_controls("plain\ttext"), Cow::Borrowed(_)));
        assert_eq!(escape_controls("two\nlines"), "two\nlines");
    }

    #[test]
    fn colours_pass_and_nothing_else() {
        let s = escape_controls_but_colours("\x1b[2mts\x1b[0m \x1b]0;t\x07 \x1b[2J x");
        assert_eq!(s, "\x1b[2mts\x1b[0m \\x1b]0;t\\x07 \\x1b[2J x");
    }

    #[test]
    fn json_lines_keep_their_value() {
        let v = serde_json::json!({ "line": "x\u{9b}y\u{7f}\x1b" });
        let line = v.to_string();
        let safe = escape_json_line(&line);
        assert!(!safe.chars().any(is_control), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, v);
    }
}

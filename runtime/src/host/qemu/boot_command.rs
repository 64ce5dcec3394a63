//! Packer's `boot_command` syntax, turned into QEMU key codes (QKeyCode names) for
//! QMP `send-key`. Plain text is typed on a US layout; specials are written in angle
//! brackets: `<enter>` `<return>` `<esc>` `<tab>` `<bs>` `<del>` `<spacebar>`
//! `<insert>` `<home>` `<end>` `<pageUp>` `<pageDown>` `<up>` `<down>` `<left>`
//! `<right>` `<f1>`..`<f12>`, modifiers `<leftAltOn>`/`<leftAltOff>` (also Ctrl,
//! Shift, Super, and right-hand ones) and waits `<wait>` (1 s), `<wait5>` (5 s),
//! `<wait1m30s>`, `<wait500ms>`. An angle-bracketed word that is none of these is
//! typed literally, as Packer does.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootCommandError {
    #[error("cannot type {0:?}: boot commands support ASCII text on a US keyboard layout")]
    UnsupportedChar(char),
    #[error("bad wait {0:?}: write <wait>, <wait5> (seconds) or <wait1m30s>/<wait500ms>")]
    BadWait(String),
}

/// One action of a boot command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootStep {
    /// Press these keys together and release them (modifiers come first).
    Press(Vec<&'static str>),
    /// Keep this modifier held for the following presses (`<leftCtrlOn>`).
    Hold(&'static str),
    /// Stop holding it (`<leftCtrlOff>`).
    Release(&'static str),
    Wait(Duration),
}

/// Parses a boot command into steps.
pub fn parse_boot_command(input: &str) -> Result<Vec<BootStep>, BootCommandError> {
    let mut steps = Vec::new();
    let mut rest = input;
    while let Some(c) = rest.chars().next() {
        if c == '<'
            && let Some(end) = rest.find('>')
            && let Some(step) = special(&rest[1..end])?
        {
            steps.push(step);
            rest = &rest[end + 1..];
            continue;
        }
        steps.push(BootStep::Press(char_keys(c)?));
        rest = &rest[c.len_utf8()..];
    }
    Ok(steps)
}

fn special(word: &str) -> Result<Option<BootStep>, BootCommandError> {
    let lower = word.to_ascii_lowercase();
    if let Some(d) = lower.strip_prefix("wait") {
        return parse_wait(d).map(|d| Some(BootStep::Wait(d)));
    }
    for (suffix, on) in [("on", true), ("off", false)] {
        if let Some(m) = lower.strip_suffix(suffix)
            && let Some(code) = modifier(m)
        {
            return Ok(Some(if on {
                BootStep::Hold(code)
            } else {
                BootStep::Release(code)
            }));
        }
    }
    if let Some(code) = modifier(&lower) {
        return Ok(Some(BootStep::Press(vec![code])));
    }
    let code = match lower.as_str() {
        "enter" | "return" => "ret",
        "esc" => "esc",
        "tab" => "tab",
        "bs" => "backspace",
        "del" => "delete",
        "spacebar" => "spc",
        "insert" => "insert",
        "home" => "home",
        "end" => "end",
        "pageup" => "pgup",
        "pagedown" => "pgdn",
        "up" => "up",
        "down" => "down",
        "left" => "left",
        "right" => "right",
        "f1" => "f1",
        "f2" => "f2",
        "f3" => "f3",
        "f4" => "f4",
        "f5" => "f5",
        "f6" => "f6",
        "f7" => "f7",
        "f8" => "f8",
        "f9" => "f9",
        "f10" => "f10",
        "f11" => "f11",
        "f12" => "f12",
        _ => return Ok(None),
    };
    Ok(Some(BootStep::Press(vec![code])))
}

fn modifier(name: &str) -> Option<&'static str> {
    Some(match name {
        "leftalt" => "alt",
        "rightalt" => "alt_r",
        "leftctrl" => "ctrl",
        "rightctrl" => "ctrl_r",
        "leftshift" => "shift",
        "rightshift" => "shift_r",
        "leftsuper" => "meta_l",
        "rightsuper" => "meta_r",
        _ => return None,
    })
}

fn parse_wait(d: &str) -> Result<Duration, BootCommandError> {
    let bad = || BootCommandError::BadWait(format!("<wait{d}>"));
    if d.is_empty() {
        return Ok(Duration::from_secs(1));
    }
    if d.bytes().all(|b| b.is_ascii_digit()) {
        return d.parse().map(Duration::from_secs).map_err(|_| bad());
    }
    humantime::parse_duration(d).map_err(|_| bad())
}

/// The keys that type `c` on a US layout.
fn char_keys(c: char) -> Result<Vec<&'static str>, BootCommandError> {
    const LOWER: [&str; 26] = [
        "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r",
        "s", "t", "u", "v", "w", "x", "y", "z",
    ];
    const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    let plain = |k: &'static str| Ok(vec![k]);
    let shifted = |k: &'static str| Ok(vec!["shift", k]);
    match c {
        'a'..='z' => plain(LOWER[(c as u8 - b'a') as usize]),
        'A'..='Z' => shifted(LOWER[(c as u8 - b'A') as usize]),
        '0'..='9' => plain(DIGITS[(c as u8 - b'0') as usize]),
        ' ' => plain("spc"),
        '\n' => plain("ret"),
        '\t' => plain("tab"),
        '-' => plain("minus"),
        '=' => plain("equal"),
        '[' => plain("bracket_left"),
        ']' => plain("bracket_right"),
        '\\' => plain("backslash"),
        ';' => plain("semicolon"),
        '\'' => plain("apostrophe"),
        '`' => plain("grave_accent"),
        ',' => plain("comma"),
        '.' => plain("dot"),
        '/' => plain("slash"),
        '!' => shifted("1"),
        '@' => shifted("2"),
        '#' => shifted("3"),
        '$' => shifted("4"),
        '%' => shifted("5"),
        '^' => shifted("6"),
        '&' => shifted("7"),
        '*' => shifted("8"),
        '(' => shifted("9"),
        ')' => shifted("0"),
        '_' => shifted("minus"),
        '+' => shifted("equal"),
        '{' => shifted("bracket_left"),
        '}' => shifted("bracket_right"),
        '|' => shifted("backslash"),
        ':' => shifted("semicolon"),
        '"' => shifted("apostrophe"),
        '~' => shifted("grave_accent"),
        '<' => shifted("comma"),
        '>' => shifted("dot"),
        '?' => shifted("slash"),
        other => Err(BootCommandError::UnsupportedChar(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BootStep::*;

    fn p(s: &str) -> Vec<BootStep> {
        parse_boot_command(s).unwrap()
    }

    #[test]
    fn text_and_specials() {
        assert_eq!(
            p("aB1 <enter>"),
            vec![
                Press(vec!["a"]),
                Press(vec!["shift", "b"]),
                Press(vec!["1"]),
                Press(vec!["spc"]),
                Press(vec!["ret"]),
            ]
        );
        assert_eq!(
            p("<esc><TAB><bs><spacebar><return><f12><pageDown>"),
            vec![
                Press(vec!["esc"]),
                Press(vec!["tab"]),
                Press(vec!["backspace"]),
                Press(vec!["spc"]),
                Press(vec!["ret"]),
                Press(vec!["f12"]),
                Press(vec!["pgdn"]),
            ]
        );
    }

    #[test]
    fn waits() {
        assert_eq!(p("<wait>"), vec![Wait(Duration::from_secs(1))]);
        assert_eq!(p("<wait5>"), vec![Wait(Duration::from_secs(5))]);
        assert_eq!(p("<wait10>"), vec![Wait(Duration::from_secs(10))]);
        assert_eq!(p("<wait1m30s>"), vec![Wait(Duration::from_secs(90))]);
        assert_eq!(p("<wait500ms>"), vec![Wait(Duration::from_millis(500))]);
        assert_eq!(
            parse_boot_command("<waitforever>"),
            Err(BootCommandError::BadWait("<waitforever>".into()))
        );
    }

    #[test]
    fn modifiers_hold_and_release() {
        assert_eq!(
            p("<leftCtrlOn>c<leftCtrlOff>"),
            vec![Hold("ctrl"), Press(vec!["c"]), Release("ctrl")]
        );
        assert_eq!(p("<rightAlt>"), vec![Press(vec!["alt_r"])]);
    }

    #[test]
    fn unknown_brackets_are_typed_literally() {
        assert_eq!(
            p("<x>"),
            vec![
                Press(vec!["shift", "comma"]),
                Press(vec!["x"]),
                Press(vec!["shift", "dot"]),
            ]
        );
        assert_eq!(
            p("a<"),
            vec![Press(vec!["a"]), Press(vec!["shift", "comma"])]
        );
    }

    #[test]
    fn a_preseed_line() {
        let steps = p("auto url=http://10.0.2.2:8080/preseed.cfg<enter>");
        assert_eq!(steps.len(), 42);
        assert_eq!(steps[13], Press(vec!["shift", "semicolon"]));
        assert_eq!(steps.last(), Some(&Press(vec!["ret"])));
    }

    #[test]
    fn non_ascii_is_an_error() {
        assert_eq!(
            parse_boot_command("é"),
            Err(BootCommandError::UnsupportedChar('é'))
        );
    }
}

//! `SHA256SUMS`-style files: GNU (`<hex>  <name>`, `<hex> *<name>`) and BSD
//! (`SHA256 (<name>) = <hex>`) lines, looked up by the downloaded file's name.
//!
//! Parsing is lenient about lines it does not understand (PGP clear-sign armour, comments,
//! blank lines) because real sums files carry them; it fails only when not one checksum
//! line is found, which means the URL points at something else (an HTML error page).

use crate::checksum::{Algorithm, Digest};

/// One `name → digest` line of a sums file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SumsEntry {
    pub(crate) name: String,
    pub(crate) digest: Digest,
}

/// Every checksum line in `text`. `Err` when there is none.
pub(crate) fn parse(text: &str) -> Result<Vec<SumsEntry>, String> {
    let entries: Vec<SumsEntry> = text.lines().filter_map(parse_line).collect();
    if entries.is_empty() {
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("");
        let first: String = first.chars().take(80).collect();
        return Err(if first.is_empty() {
            "the file is empty".to_string()
        } else {
            format!(
                "no checksum line in it (expected `<hex>  <name>` or `SHA256 (<name>) = <hex>`; \
                 the first line is {first:?})"
            )
        });
    }
    Ok(entries)
}

fn parse_line(line: &str) -> Option<SumsEntry> {
    let line = line.trim_end_matches(['\r', '\n']);
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    parse_bsd(trimmed).or_else(|| parse_gnu(trimmed))
}

/// `SHA256 (name) = hex`; the name may itself contain `) = `, so split at the last one.
fn parse_bsd(line: &str) -> Option<SumsEntry> {
    let (algo, rest) = line.split_once(" (")?;
    let algorithm = Algorithm::from_name(algo.trim())?;
    let (name, hex) = rest.rsplit_once(')')?;
    let hex = hex.trim_start().strip_prefix('=')?.trim();
    let digest = Digest::new(algorithm, hex).ok()?;
    Some(SumsEntry {
        name: name.to_string(),
        digest,
    })
}

/// `hex  name` (text mode), `hex *name` (binary mode), also a single space; a leading `\`
/// marks coreutils' escaped names (`\\` and `\n` in the name).
fn parse_gnu(line: &str) -> Option<SumsEntry> {
    let (escaped, line) = match line.strip_prefix('\\') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let split = line.find([' ', '\t'])?;
    let (hex, rest) = line.split_at(split);
    let algorithm = Algorithm::from_hex_len(hex.len())?;
    let digest = Digest::new(algorithm, hex).ok()?;
    // Exactly one separator, then an optional mode marker (' ' text or '*' binary).
    let rest = &rest[1..];
    let name = rest
        .strip_prefix('*')
        .or_else(|| rest.strip_prefix(' '))
        .unwrap_or(rest);
    if name.is_empty() {
        return None;
    }
    let name = if escaped {
        unescape(name)
    } else {
        name.to_string()
    };
    Some(SumsEntry { name, digest })
}

fn unescape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn normalize(name: &str) -> &str {
    let mut n = name;
    while let Some(rest) = n.strip_prefix("./") {
        n = rest;
    }
    n
}

/// The digest for a file known by any of `candidates` (its path relative to the sums
/// file first, then its base name). Exact names win; among several lines for the same name the
/// strongest algorithm wins.
pub(crate) fn lookup<'a>(entries: &'a [SumsEntry], candidates: &[String]) -> Option<&'a Digest> {
    candidates.iter().find_map(|want| {
        let want = normalize(want);
        entries
            .iter()
            .filter(|e| normalize(&e.name) == want)
            .max_by_key(|e| e.digest.algorithm())
            .map(|e| &e.digest)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const B: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    fn names(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn gnu_text_binary_and_dot_slash() {
        let text = format!(
            "{A}  debian-12.qcow2\n{B} *other.iso\n{A}  ./sub/x.img\n\\{B}  we\\\\ird\\nname\n"
        );
        let e = parse(&text).unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(lookup(&e, &names(&["debian-12.qcow2"])).unwrap().hex(), A);
        assert_eq!(lookup(&e, &names(&["other.iso"])).unwrap().hex(), B);
        assert_eq!(
            lookup(&e, &names(&["sub/x.img", "x.img"])).unwrap().hex(),
            A
        );
        assert_eq!(lookup(&e, &names(&["we\\ird\nname"])).unwrap().hex(), B);
        assert!(lookup(&e, &names(&["missing.iso"])).is_none());
    }

    #[test]
    fn gnu_name_with_spaces_and_single_space_separator() {
        let e = parse(&format!("{A} my file.iso\r\n")).unwrap();
        assert_eq!(e[0].name, "my file.iso");
        let e = parse(&format!("{A}  ./my file.iso\n")).unwrap();
        assert_eq!(lookup(&e, &names(&["my file.iso"])).unwrap().hex(), A);
    }

    #[test]
    fn bsd_format_and_algorithm_preference() {
        let md5 = "900150983cd24fb0d6963f7d28e17f72";
        let text = format!(
            "MD5 (disc1.iso) = {md5}\nSHA256 (disc1.iso) = {A}\nSHA256 (./odd) = name.iso) = {B}\n"
        );
        let e = parse(&text).unwrap();
        let d = lookup(&e, &names(&["disc1.iso"])).unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.hex(), A);
        assert_eq!(lookup(&e, &names(&["odd) = name.iso"])).unwrap().hex(), B);
    }

    #[test]
    fn skips_armour_and_fails_on_html() {
        let text = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n{A}  a.iso\n-----BEGIN PGP SIGNATURE-----\nxyz\n"
        );
        assert_eq!(parse(&text).unwrap().len(), 1);
        let err = parse("<html><body>Not Found</body></html>").unwrap_err();
        assert!(err.contains("no checksum line"), "{err}");
        assert!(parse("").unwrap_err().contains("empty"));
    }

    #[test]
    fn hostile_lines_do_not_panic() {
        for l in [
            "SHA256 (",
            "SHA256 (x",
            "SHA256 (x) =",
            "\\",
            "\\\\",
            "aaaa",
            A,
            &format!("{A} "),
            &format!("{A}  "),
            &format!("{A} *"),
            "é (x) = é",
            "ééééééééééééééééééééééééééééééé  x",
        ] {
            let _ = parse(l);
        }
    }
}

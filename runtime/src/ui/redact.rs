//! Secret redaction for everything kiln prints or writes.
//!
//! Each secret value is registered once; every output path (UI lines, JSON events,
//! the audit log, tracing logs, error messages) runs through the [`Redactor`].
//! Besides the plain value we also catch the encodings a value commonly takes on its
//! way through a build: shell-quoted, JSON-escaped, URL-encoded and base64 (at all
//! three byte alignments, so it is caught inside a longer base64 blob too). A value
//! of several lines (a PEM key, a certificate) is also matched line by line, since
//! output is often re-indented or cut into lines before anyone sees it.
//!
//! Output that arrives in pieces (a remote command's stdout, a guest's stdout) goes
//! through a [`RedactStream`]: at each piece's end it holds back the longest tail that
//! could still become a secret, so a value split across two pieces, or across a line
//! cut, is replaced whole. [`LineStream`] puts line splitting (with a cut for lines
//! without a newline) after that, so no cut can fall inside a secret either.
//!
//! Text is redacted before it is ever truncated: every truncation in kiln works on
//! redacted text, so a cut cannot leave a secret's prefix in clear.

use std::sync::{Arc, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;

/// Below this length the base64 alignment variants are too short to be distinctive.
const MIN_ALIGNED_B64: usize = 6;
/// Shortest line of a multi-line secret matched on its own (shorter ones would
/// redact common words; the whole value is still matched).
const MIN_LINE: usize = 6;

/// The registered needles, compiled for one-pass search. Replaced whole when a
/// secret is added, so readers work on a consistent snapshot without holding a lock.
#[derive(Default)]
struct Needles {
    /// (needle, replacement), longest first.
    list: Vec<(String, String)>,
    /// Leftmost-longest over `list`; `None` when there is nothing to redact.
    search: Option<AhoCorasick>,
}

impl Needles {
    fn build(list: Vec<(String, String)>) -> Needles {
        let search = if list.is_empty() {
            None
        } else {
            // Building only fails for automata beyond its size limits, which a few
            // secrets never reach; fall back to the plain loop below if it ever does.
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(list.iter().map(|(n, _)| n.as_bytes()))
                .ok()
        };
        Needles { list, search }
    }

    /// Replaces every needle in `text` (bytes, so it works before UTF-8 decoding).
    fn replace(&self, text: &[u8], out: &mut Vec<u8>) {
        match &self.search {
            Some(ac) => {
                let mut last = 0;
                for m in ac.find_iter(text) {
                    out.extend_from_slice(&text[last..m.start()]);
                    out.extend_from_slice(self.list[m.pattern().as_usize()].1.as_bytes());
                    last = m.end();
                }
                out.extend_from_slice(&text[last..]);
            }
            None => out.extend_from_slice(text),
        }
    }

    /// Where in `text` the emitted part ends: everything from the returned index on
    /// may be the start of a needle that continues in data not seen yet (the longest
    /// such tail that is a proper prefix of some needle).
    fn safe_end(&self, text: &[u8]) -> usize {
        let mut start = text.len();
        for (needle, _) in &self.list {
            let n = needle.as_bytes();
            let window = n.len().saturating_sub(1).min(text.len());
            let from = text.len() - window;
            // Only positions before the current best can make the tail longer.
            for i in from..start {
                if text[i] == n[0] && n.starts_with(&text[i..]) {
                    start = i;
                    break;
                }
            }
        }
        start
    }
}

#[derive(Clone, Default)]
pub struct Redactor {
    inner: Arc<RwLock<Arc<Needles>>>,
}

impl Redactor {
    /// Registers a secret value under `name`; every variant is replaced by `<secret:NAME>`.
    pub fn add(&self, name: &str, value: &str) {
        if value.is_empty() {
            return;
        }
        let replacement = format!("<secret:{name}>");
        let mut needles = vec![value.to_string()];
        needles.push(shell_escape::unix::escape(value.into()).into_owned());
        let json = serde_json::to_string(value).unwrap_or_default();
        needles.push(json.trim_matches('"').to_string());
        needles.push(url_encode(value));
        needles.extend(base64_variants(value.as_bytes()));
        if value.contains('\n') {
            needles.extend(
                value
                    .split('\n')
                    .map(str::trim)
                    .filter(|l| l.len() >= MIN_LINE)
                    .map(str::to_string),
            );
        }

        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let mut list = guard.list.clone();
        for n in needles {
            if !n.is_empty() && !list.iter().any(|(x, _)| *x == n) {
                list.push((n, replacement.clone()));
            }
        }
        // Longest first so a variant that contains another is replaced whole.
        list.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
        *guard = Arc::new(Needles::build(list));
    }

    pub fn is_empty(&self) -> bool {
        self.snapshot().list.is_empty()
    }

    fn snapshot(&self) -> Arc<Needles> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn redact(&self, text: &str) -> String {
        let needles = self.snapshot();
        if needles.list.is_empty() {
            return text.to_string();
        }
        let mut out = Vec::with_capacity(text.len());
        needles.replace(text.as_bytes(), &mut out);
        // Needles and replacements are whole UTF-8 strings, so splicing them keeps
        // the text valid; the lossy path is never taken.
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// A stream redactor for output that arrives in pieces.
    pub fn stream(&self) -> RedactStream {
        RedactStream {
            redactor: self.clone(),
            pending: Vec::new(),
        }
    }
}

/// Redacts a byte stream piece by piece; see the module doc.
pub struct RedactStream {
    redactor: Redactor,
    /// The tail held back from the last piece: a possible secret prefix.
    pending: Vec<u8>,
}

impl RedactStream {
    /// Takes the next piece; appends to `out` what can be shown now.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let needles = self.redactor.snapshot();
        if needles.list.is_empty() && self.pending.is_empty() {
            out.extend_from_slice(data);
            return;
        }
        self.pending.extend_from_slice(data);
        let cut = needles.safe_end(&self.pending);
        // Every match starting before `cut` is final: a longer one from the same start
        // would make the tail from there a needle prefix, and `cut` would lie before it.
        let mut last = 0;
        if let Some(ac) = &needles.search {
            for m in ac.find_iter(&self.pending[..]) {
                if m.start() >= cut {
                    break;
                }
                out.extend_from_slice(&self.pending[last..m.start()]);
                out.extend_from_slice(needles.list[m.pattern().as_usize()].1.as_bytes());
                last = m.end();
            }
        }
        let end = cut.max(last);
        out.extend_from_slice(&self.pending[last..end]);
        self.pending.drain(..end);
    }

    /// The stream ended: appends what was held back, redacted.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let rest = std::mem::take(&mut self.pending);
        self.redactor.snapshot().replace(&rest, out);
    }
}

/// Redacted lines from a byte stream: each complete line (without its `\n` or
/// `\r\n`), and a line that grows past `max_line` without a newline cut there.
/// Redaction happens before splitting and cutting.
pub struct LineStream {
    redact: RedactStream,
    partial: Vec<u8>,
    max_line: usize,
    scratch: Vec<u8>,
}

impl LineStream {
    pub fn new(redactor: &Redactor, max_line: usize) -> Self {
        LineStream {
            redact: redactor.stream(),
            partial: Vec::new(),
            max_line: max_line.max(1),
            scratch: Vec::new(),
        }
    }

    /// Takes the next piece; calls `emit` with every line it completes.
    pub fn push(&mut self, data: &[u8], emit: &mut dyn FnMut(&str)) {
        let mut safe = std::mem::take(&mut self.scratch);
        safe.clear();
        self.redact.push(data, &mut safe);
        self.split(&safe, emit);
        self.scratch = safe;
    }

    /// The stream ended: emits what is left, including a last line without a newline.
    pub fn finish(mut self, emit: &mut dyn FnMut(&str)) {
        let mut rest = Vec::new();
        self.redact.finish(&mut rest);
        self.split(&rest, emit);
        if !self.partial.is_empty() {
            self.emit_partial(emit);
        }
    }

    fn split(&mut self, mut rest: &[u8], emit: &mut dyn FnMut(&str)) {
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&rest[..pos]);
            self.emit_partial(emit);
            rest = &rest[pos + 1..];
        }
        self.partial.extend_from_slice(rest);
        while self.partial.len() > self.max_line {
            let tail = self.partial.split_off(self.max_line);
            self.emit_partial(emit);
            self.partial = tail;
        }
    }

    fn emit_partial(&mut self, emit: &mut dyn FnMut(&str)) {
        let line = self.partial.strip_suffix(b"\r").unwrap_or(&self.partial);
        emit(&String::from_utf8_lossy(line));
        self.partial.clear();
    }
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The base64 text that always appears when `value` is embedded at byte offset 0, 1
/// or 2 (mod 3) inside a longer encoded stream: encode with 0–2 bytes of padding in
/// front and drop the characters that depend on neighbouring bytes.
fn base64_variants(value: &[u8]) -> Vec<String> {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut out = vec![engine.encode(value)];
    if value.len() < MIN_ALIGNED_B64 {
        return out;
    }
    for pad in 0..3usize {
        let mut buf = vec![0u8; pad];
        buf.extend_from_slice(value);
        let enc = engine.encode(&buf);
        // Leading chars covering the padding bytes are unstable, as are trailing
        // chars covering a partial final group.
        let start = (pad * 4).div_ceil(3);
        let stable_bytes = buf.len() - buf.len() % 3;
        let end = stable_bytes / 3 * 4;
        if end > start + 4 {
            out.push(enc[start..end].to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_plain_and_encodings() {
        let r = Redactor::default();
        let secret = "s3cr3t 'pa$$' \"word\"";
        r.add("DB_PW", secret);
        let shell = shell_escape::unix::escape(secret.into()).into_owned();
        let json = serde_json::to_string(&serde_json::json!({ "pw": secret })).unwrap();
        for text in [
            format!("password is {secret}!"),
            format!("export PW={shell}"),
            json,
            format!("auth={}", url_encode(secret)),
        ] {
            let out = r.redact(&text);
            assert!(out.contains("<secret:DB_PW>"), "{text} -> {out}");
            assert!(!out.contains("pa$$"), "{out}");
        }
    }

    #[test]
    fn redacts_base64_at_any_alignment() {
        let r = Redactor::default();
        let secret = "correct horse battery staple";
        r.add("PW", secret);
        let engine = base64::engine::general_purpose::STANDARD;
        for prefix in ["", "a", "ab", "abc", "abcd"] {
            let blob = engine.encode(format!("{prefix}user:{secret}\n"));
            let out = r.redact(&format!("Authorization: Basic {blob}"));
            assert!(out.contains("<secret:PW>"), "prefix {prefix:?}: {out}");
        }
    }

    #[test]
    fn leaves_other_text_alone() {
        let r = Redactor::default();
        r.add("X", "hunter22");
        assert_eq!(r.redact("nothing to see"), "nothing to see");
    }

    const PEM: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACBvY2tlZC1rZXktZm9yLWtpbG4tdGVzdHMtb25seS0xMjM0NQAAAJg0xQ==\n-----END OPENSSH PRIVATE KEY-----\n";

    /// Every line of a multi-line secret is matched, also re-indented or alone.
    #[test]
    fn multi_line_secrets_are_matched_line_by_line() {
        let r = Redactor::default();
        r.add("KEY", PEM);
        let indented: String = PEM.lines().map(|l| format!("    {l}\n")).collect();
        for text in [
            PEM.to_string(),
            indented,
            PEM.lines().nth(2).unwrap().to_string(),
        ] {
            let out = r.redact(&text);
            for line in PEM.lines().skip(1).take(2) {
                assert!(!out.contains(line), "{out}");
            }
        }
        // And through the line splitter, which sees one line at a time.
        let mut lines = Vec::new();
        let mut ls = LineStream::new(&r, 64 << 10);
        for b in PEM.as_bytes() {
            ls.push(&[*b], &mut |l| lines.push(l.to_string()));
        }
        ls.finish(&mut |l| lines.push(l.to_string()));
        let all = lines.join("\n");
        assert!(!all.contains("b3BlbnNzaC1rZXkt"), "{all}");
        assert!(all.contains("<secret:KEY>"), "{all}");
    }

    /// A secret split across pieces at every possible point, and across the cut of
    /// an overlong line, is still replaced whole.
    #[test]
    fn secrets_straddling_pieces_and_line_cuts_are_replaced() {
        let r = Redactor::default();
        let secret = "hunter2-correct-horse";
        r.add("PW", secret);
        let text = format!("before {secret} after\n");
        for split in 0..text.len() {
            let mut out = Vec::new();
            let mut s = r.stream();
            s.push(&text.as_bytes()[..split], &mut out);
            s.push(&text.as_bytes()[split..], &mut out);
            s.finish(&mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "before <secret:PW> after\n"
            );
        }
        // A 1000-byte line cut every 64 bytes, with the secret across a cut.
        let max = 64;
        let long = format!("{}{secret}{}", "x".repeat(max - 5), "y".repeat(900));
        let mut lines = Vec::new();
        let mut ls = LineStream::new(&r, max);
        for piece in long.as_bytes().chunks(7) {
            ls.push(piece, &mut |l| lines.push(l.to_string()));
        }
        ls.finish(&mut |l| lines.push(l.to_string()));
        let all = lines.concat();
        assert!(!all.contains("hunter"), "{lines:?}");
        assert!(!all.contains("horse"), "{lines:?}");
        assert!(all.contains("<secret:PW>"), "{lines:?}");
        assert!(lines.iter().all(|l| l.len() <= max), "{lines:?}");
    }

    /// Lines without any secret prefix at their end are not held back, so output
    /// still streams line by line.
    #[test]
    fn streams_without_delay_when_nothing_could_be_a_secret() {
        let r = Redactor::default();
        r.add("PW", "hunter22");
        let mut lines = Vec::new();
        let mut ls = LineStream::new(&r, 1024);
        ls.push(b"one\ntwo\n", &mut |l| lines.push(l.to_string()));
        assert_eq!(lines, ["one", "two"]);
        // "hun" could start the secret: held until the next piece decides.
        let mut out = Vec::new();
        let mut s = r.stream();
        s.push(b"abc hun", &mut out);
        assert_eq!(out, b"abc ");
        s.push(b"ch", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"abc hunch");
    }

    #[test]
    fn no_secrets_is_a_pass_through() {
        let r = Redactor::default();
        let mut out = Vec::new();
        let mut s = r.stream();
        s.push(b"abc", &mut out);
        assert_eq!(out, b"abc");
    }
}

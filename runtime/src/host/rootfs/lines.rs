//! The container streams output in chunks; steps see it line by line, as over SSH.

use crate::host::machine::{OnLine, Stream};

/// Longest line handed on whole; a longer one is cut (output without newlines must
/// not grow a buffer without bound).
const MAX_LINE: usize = 64 * 1024;

#[derive(Default)]
pub struct Lines {
    out: Vec<u8>,
    err: Vec<u8>,
}

fn emit(buf: &mut Vec<u8>, stream: Stream, on_line: &mut OnLine<'_>) {
    let line = buf.strip_suffix(b"\r").unwrap_or(buf);
    on_line(stream, &String::from_utf8_lossy(line));
    buf.clear();
}

impl Lines {
    pub fn push(&mut self, stream: Stream, data: &[u8], on_line: &mut OnLine<'_>) {
        let buf = match stream {
            Stream::Stdout => &mut self.out,
            Stream::Stderr => &mut self.err,
        };
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            buf.extend_from_slice(&rest[..pos]);
            emit(buf, stream, on_line);
            rest = &rest[pos + 1..];
        }
        buf.extend_from_slice(rest);
        while buf.len() > MAX_LINE {
            let tail = buf.split_off(MAX_LINE);
            emit(buf, stream, on_line);
            *buf = tail;
        }
    }

    /// Hands on what is left of unterminated last lines.
    pub fn finish(&mut self, on_line: &mut OnLine<'_>) {
        for (buf, s) in [
            (&mut self.out, Stream::Stdout),
            (&mut self.err, Stream::Stderr),
        ] {
            if !buf.is_empty() {
                emit(buf, s, on_line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_become_lines_per_stream() {
        let mut got: Vec<(Stream, String)> = Vec::new();
        let mut cb = |s: Stream, l: &str| got.push((s, l.to_string()));
        let mut on: OnLine = &mut cb;
        let mut l = Lines::default();
        l.push(Stream::Stdout, b"a\r\nb", &mut on);
        l.push(Stream::Stderr, b"e1\n", &mut on);
        l.push(Stream::Stdout, b"c\nd", &mut on);
        l.finish(&mut on);
        l.push(Stream::Stdout, &vec![b'x'; MAX_LINE + 5], &mut on);
        l.finish(&mut on);
        let texts: Vec<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(&texts[..5], &["a", "e1", "bc", "d", &"x".repeat(MAX_LINE)]);
        assert_eq!(texts[5], "xxxxx");
        assert_eq!(got[1].0, Stream::Stderr);
    }
}

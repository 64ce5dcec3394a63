//! The tar format, both ways, written here rather than taken from a crate so that every
//! byte of a header is decided in one place: that is what makes layers reproducible
//! (numeric owners, empty user/group names, no atime/ctime records, fixed PAX header
//! names) and what lets the reader bound every header it is handed (PAX records and GNU
//! long names are read into memory, so their size is capped before a byte is buffered).
//!
//! Writing: POSIX ustar, with a PAX extended header only when a field does not fit
//! (long path or link, huge size or id) or an xattr is carried. Reading: ustar, PAX, GNU
//! (long names, base-256 numbers) and v7 headers; GNU sparse files are refused.

use std::io::{self, Read, Write};

pub(crate) const BLOCK: usize = 512;

/// Longest path or link target accepted when reading (Linux PATH_MAX).
pub(crate) const MAX_PATH: usize = 4096;
/// Largest PAX extended header accepted when reading.
pub(crate) const MAX_PAX: u64 = 1 << 20;
/// Largest GNU long name/link accepted when reading.
const MAX_GNU_LONG: u64 = MAX_PATH as u64 + 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    HardLink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
}

impl Kind {
    fn flag(self) -> u8 {
        match self {
            Kind::File => b'0',
            Kind::HardLink => b'1',
            Kind::Symlink => b'2',
            Kind::Char => b'3',
            Kind::Block => b'4',
            Kind::Dir => b'5',
            Kind::Fifo => b'6',
        }
    }
}

/// One entry's header, as written or as read (PAX and GNU extensions already applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    /// Relative path; directories end in `/` when written.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Data bytes that follow (regular files only).
    pub size: u64,
    /// Seconds since the epoch; never negative when written.
    pub mtime: i64,
    /// Symlink target or hard-link target path.
    pub link: Vec<u8>,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Extended attributes (`SCHILY.xattr.*`), sorted by name when written.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Header {
    pub(crate) fn new(path: Vec<u8>, kind: Kind) -> Header {
        Header {
            path,
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            link: Vec::new(),
            dev_major: 0,
            dev_minor: 0,
            xattrs: Vec::new(),
        }
    }
}

const MAX_OCTAL_11: u64 = 0o777_7777_7777;
const MAX_OCTAL_7: u64 = 0o7777777;

/// Streams tar entries to `out`. Entries must be appended in the order they should appear.
pub(crate) struct TarWriter<W> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        TarWriter { out }
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)
    }

    /// Appends `h` and, for regular files, exactly `h.size` bytes from `data`. A source
    /// that ends early is an error (padding it would record a file that never existed).
    pub(crate) fn append(&mut self, h: &Header, data: Option<&mut dyn Read>) -> io::Result<()> {
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let (prefix, name) = match split_ustar_path(&h.path) {
            Some(pn) => pn,
            None => {
                pax.push(("path".into(), h.path.clone()));
                (&[][..], truncate(&h.path, 100))
            }
        };
        let link = if h.link.len() > 100 {
            pax.push(("linkpath".into(), h.link.clone()));
            truncate(&h.link, 100)
        } else {
            &h.link[..]
        };
        let size = if h.kind == Kind::File { h.size } else { 0 };
        if size > MAX_OCTAL_11 {
            pax.push(("size".into(), size.to_string().into_bytes()));
        }
        if h.uid > MAX_OCTAL_7 {
            pax.push(("uid".into(), h.uid.to_string().into_bytes()));
        }
        if h.gid > MAX_OCTAL_7 {
            pax.push(("gid".into(), h.gid.to_string().into_bytes()));
        }
        for (k, v) in &h.xattrs {
            pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
        }
        if !pax.is_empty() {
            pax.sort();
            let body = pax_body(&pax);
            let mut ph = Header::new(pax_name(&h.path), Kind::File);
            ph.size = body.len() as u64;
            let block = ustar_block(&ph, b'x', &[], &ph.path.clone(), &[], ph.size)?;
            self.put(&block)?;
            self.put(&body)?;
            self.pad(body.len() as u64)?;
        }
        let block = ustar_block(h, h.kind.flag(), prefix, name, link, size.min(MAX_OCTAL_11))?;
        self.put(&block)?;
        if size > 0 {
            let data =
                data.ok_or_else(|| io::Error::other("a regular file entry needs its data"))?;
            let mut limited = data.take(size);
            let mut buf = vec![0u8; 256 * 1024];
            let mut left = size;
            while left > 0 {
                let n = limited.read(&mut buf)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{} shrank while it was being archived ({left} of {size} bytes missing)",
                            String::from_utf8_lossy(&h.path)
                        ),
                    ));
                }
                self.put(&buf[..n])?;
                left -= n as u64;
            }
            self.pad(size)?;
        }
        Ok(())
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        let rem = usize::try_from(len % BLOCK as u64).expect("less than BLOCK");
        if rem != 0 {
            self.put(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    /// Writes the end-of-archive marker (two zero blocks) and returns the output.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.put(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn truncate(b: &[u8], n: usize) -> &[u8] {
    &b[..b.len().min(n)]
}

/// Splits a path into ustar `prefix` (≤155) and `name` (≤100) at a `/`, as POSIX allows.
fn split_ustar_path(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.len() <= 100 {
        return Some((&[], path));
    }
    if path.len() > 256 {
        return None;
    }
    // The split `/` must leave a non-empty name of at most 100 bytes; a trailing `/`
    // (directories) stays with the name.
    let body = if path.ends_with(b"/") {
        &path[..path.len() - 1]
    } else {
        path
    };
    let mut best = None;
    for (i, &c) in body.iter().enumerate() {
        if c == b'/' && i <= 155 && path.len() - i - 1 <= 100 && i + 1 < path.len() {
            best = Some(i);
            break;
        }
    }
    best.map(|i| (&path[..i], &path[i + 1..]))
}

/// A deterministic name for a PAX header entry (Go's archive/tar convention).
fn pax_name(path: &[u8]) -> Vec<u8> {
    let trimmed = path.strip_suffix(b"/").unwrap_or(path);
    let base = trimmed.rsplit(|&c| c == b'/').next().unwrap_or(trimmed);
    let mut n = b"PaxHeaders.0/".to_vec();
    n.extend(
        base.iter()
            .map(|&c| if c.is_ascii_graphic() { c } else { b'_' }),
    );
    n.truncate(100);
    n
}

/// PAX records `"<len> <key>=<value>\n"`, where `<len>` counts the whole record.
fn pax_body(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let rest = k.len() + v.len() + 3;
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

fn put_octal(field: &mut [u8], v: u64) -> io::Result<()> {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() > digits {
        return Err(io::Error::other(format!(
            "{v} does not fit a tar header field"
        )));
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    Ok(())
}

fn ustar_block(
    h: &Header,
    flag: u8,
    prefix: &[u8],
    name: &[u8],
    link: &[u8],
    size: u64,
) -> io::Result<[u8; BLOCK]> {
    let mut b = [0u8; BLOCK];
    b[..name.len()].copy_from_slice(name);
    put_octal(&mut b[100..108], u64::from(h.mode & 0o7777))?;
    put_octal(&mut b[108..116], h.uid.min(MAX_OCTAL_7))?;
    put_octal(&mut b[116..124], h.gid.min(MAX_OCTAL_7))?;
    put_octal(&mut b[124..136], size)?;
    put_octal(
        &mut b[136..148],
        h.mtime.max(0).unsigned_abs().min(MAX_OCTAL_11),
    )?;
    b[156] = flag;
    b[157..157 + link.len()].copy_from_slice(link);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    // uname/gname stay empty: owners are numeric only.
    if matches!(h.kind, Kind::Char | Kind::Block) && flag != b'x' {
        put_octal(&mut b[329..337], u64::from(h.dev_major))?;
        put_octal(&mut b[337..345], u64::from(h.dev_minor))?;
    } else {
        put_octal(&mut b[329..337], 0)?;
        put_octal(&mut b[337..345], 0)?;
    }
    b[345..345 + prefix.len()].copy_from_slice(prefix);
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    let s = format!("{sum:06o}");
    b[148..154].copy_from_slice(s.as_bytes());
    b[154] = 0;
    b[155] = b' ';
    Ok(b)
}

/// Why a tar stream was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TarError {
    #[error("reading the tar stream: {0}")]
    Io(#[from] io::Error),
    #[error("the tar stream is corrupt: {0}")]
    Corrupt(String),
    #[error("the tar stream uses a feature kiln does not accept: {0}")]
    Unsupported(String),
}

/// Reads entries one by one; the current entry's data is read through `Read`.
pub(crate) struct TarReader<R> {
    inner: R,
    /// Data bytes of the current entry not read yet.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    done: bool,
}

impl<R: Read> TarReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        TarReader {
            inner,
            remaining: 0,
            padding: 0,
            done: false,
        }
    }

    pub(crate) fn inner_ref(&self) -> &R {
        &self.inner
    }

    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let want = usize::try_from(n.min(buf.len() as u64)).unwrap_or(buf.len());
            let got = self.inner.read(&mut buf[..want])?;
            if got == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the tar stream ends inside an entry",
                ));
            }
            n -= got as u64;
        }
        Ok(())
    }

    fn read_block(&mut self) -> Result<Option<[u8; BLOCK]>, TarError> {
        let mut b = [0u8; BLOCK];
        let mut got = 0;
        while got < BLOCK {
            let n = self.inner.read(&mut b[got..])?;
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                return Err(TarError::Corrupt("the stream ends inside a header".into()));
            }
            got += n;
        }
        Ok(Some(b))
    }

    fn read_meta(&mut self, size: u64, limit: u64, what: &str) -> Result<Vec<u8>, TarError> {
        if size > limit {
            return Err(TarError::Unsupported(format!(
                "a {what} of {size} bytes (at most {limit} accepted)"
            )));
        }
        let mut v = vec![0u8; usize::try_from(size).expect("at most limit, checked above")];
        self.inner.read_exact(&mut v)?;
        let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        self.skip(pad)?;
        Ok(v)
    }

    /// The next entry's header, or `None` at the end of the archive. Unread data of the
    /// previous entry is skipped.
    pub(crate) fn next_header(&mut self) -> Result<Option<Header>, TarError> {
        if self.done {
            return Ok(None);
        }
        self.skip(self.remaining + self.padding)?;
        self.remaining = 0;
        self.padding = 0;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: PaxRecords = Vec::new();
        loop {
            let Some(b) = self.read_block()? else {
                // A stream cut without the end marker: tolerated only between entries
                // and only if no extension header is pending.
                if long_name.is_some() || long_link.is_some() || !pax.is_empty() {
                    return Err(TarError::Corrupt(
                        "the stream ends after an extension header".into(),
                    ));
                }
                self.done = true;
                return Ok(None);
            };
            if b.iter().all(|&x| x == 0) {
                self.done = true;
                return Ok(None);
            }
            verify_checksum(&b)?;
            let flag = b[156];
            let size = parse_number(&b[124..136], "size")?;
            match flag {
                b'x' => {
                    let body = self.read_meta(size, MAX_PAX, "PAX header")?;
                    pax.extend(parse_pax(&body)?);
                    continue;
                }
                b'g' => {
                    // Global PAX headers carry archive-wide defaults (comments, charsets);
                    // applying them to every entry is not something layers rely on.
                    self.read_meta(size, MAX_PAX, "global PAX header")?;
                    continue;
                }
                b'L' => {
                    long_name = Some(trim_nul(self.read_meta(
                        size,
                        MAX_GNU_LONG,
                        "GNU long name",
                    )?));
                    continue;
                }
                b'K' => {
                    long_link = Some(trim_nul(self.read_meta(
                        size,
                        MAX_GNU_LONG,
                        "GNU long link",
                    )?));
                    continue;
                }
                b'S' => return Err(TarError::Unsupported("GNU sparse files".into())),
                b'M' | b'V' | b'N' => {
                    return Err(TarError::Unsupported(format!(
                        "GNU multi-volume/volume/old-long-name headers (type {:?})",
                        flag as char
                    )));
                }
                b'0' | 0 | b'7' | b'1'..=b'6' => {}
                other => {
                    // POSIX: readers treat unknown types as regular files; layers never
                    // hold them, so the data is skipped rather than written.
                    tracing::warn!(flag = ?(other as char), "skipping a tar entry of unknown type");
                    let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
                    self.skip(size + pad)?;
                    long_name = None;
                    long_link = None;
                    pax.clear();
                    continue;
                }
            }
            let gnu = &b[257..265] == b"ustar  \0";
            let ustar = &b[257..263] == b"ustar\0";
            let mut path = cstr(&b[0..100]).to_vec();
            if ustar && !gnu {
                let prefix = cstr(&b[345..500]);
                if !prefix.is_empty() {
                    let mut p = prefix.to_vec();
                    p.push(b'/');
                    p.extend_from_slice(&path);
                    path = p;
                }
            }
            let mut h = Header::new(path, Kind::File);
            h.link = cstr(&b[157..257]).to_vec();
            h.mode = u32::try_from(parse_number(&b[100..108], "mode")? & 0o7777)
                .expect("12 bits fit a u32");
            h.uid = parse_number(&b[108..116], "uid")?;
            h.gid = parse_number(&b[116..124], "gid")?;
            h.size = size;
            h.mtime = parse_signed(&b[136..148], "mtime")?;
            if ustar || gnu {
                h.dev_major = clamp_u32(parse_number(&b[329..337], "devmajor")?);
                h.dev_minor = clamp_u32(parse_number(&b[337..345], "devminor")?);
            }
            if let Some(n) = long_name {
                h.path = n;
            }
            if let Some(l) = long_link {
                h.link = l;
            }
            for (k, v) in pax {
                match &k[..] {
                    b"path" => h.path = v,
                    b"linkpath" => h.link = v,
                    b"size" => h.size = pax_u64(&v, "size")?,
                    b"uid" => h.uid = pax_u64(&v, "uid")?,
                    b"gid" => h.gid = pax_u64(&v, "gid")?,
                    b"mtime" => {
                        let s = String::from_utf8_lossy(&v);
                        let whole = s.split('.').next().unwrap_or("0");
                        h.mtime = whole.parse().map_err(|_| {
                            TarError::Corrupt(format!("PAX mtime {s:?} is not a number"))
                        })?;
                    }
                    _ if k.starts_with(b"GNU.sparse.") => {
                        return Err(TarError::Unsupported("PAX sparse files".into()));
                    }
                    _ if k.starts_with(b"SCHILY.xattr.") => {
                        let name = String::from_utf8_lossy(&k[13..]).into_owned();
                        h.xattrs.push((name, v));
                    }
                    _ => {}
                }
            }
            // v7 archives mark directories with a trailing slash only.
            h.kind = match flag {
                b'1' => Kind::HardLink,
                b'2' => Kind::Symlink,
                b'3' => Kind::Char,
                b'4' => Kind::Block,
                b'5' => Kind::Dir,
                b'6' => Kind::Fifo,
                _ if h.path.ends_with(b"/") => Kind::Dir,
                _ => Kind::File,
            };
            if h.path.len() > MAX_PATH || h.link.len() > MAX_PATH {
                return Err(TarError::Unsupported(format!(
                    "a path or link of more than {MAX_PATH} bytes"
                )));
            }
            // Only regular files carry data; a size on anything else is skipped.
            self.remaining = h.size;
            self.padding = (BLOCK as u64 - h.size % BLOCK as u64) % BLOCK as u64;
            if h.kind != Kind::File {
                h.size = 0;
            }
            return Ok(Some(h));
        }
    }
}

impl<R: Read> Read for TarReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = usize::try_from((buf.len() as u64).min(self.remaining)).unwrap_or(buf.len());
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the tar stream ends inside a file's data",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn cstr(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    &b[..end]
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

fn verify_checksum(b: &[u8; BLOCK]) -> Result<(), TarError> {
    let stored = parse_number(&b[148..156], "checksum")?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &x) in b.iter().enumerate() {
        let x = if (148..156).contains(&i) { b' ' } else { x };
        unsigned += u64::from(x);
        signed += i64::from(x.cast_signed());
    }
    if stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed) {
        Ok(())
    } else {
        Err(TarError::Corrupt("a header checksum does not match".into()))
    }
}

/// An octal (space/NUL padded) or GNU base-256 number.
fn parse_number(field: &[u8], what: &str) -> Result<u64, TarError> {
    let v = parse_signed(field, what)?;
    u64::try_from(v).map_err(|_| TarError::Corrupt(format!("negative {what}")))
}

fn parse_signed(field: &[u8], what: &str) -> Result<i64, TarError> {
    if let Some(&first) = field.first()
        && first & 0x80 != 0
    {
        // Base-256: big-endian two's complement with the marker bit.
        let negative = first & 0x40 != 0;
        let mut v: i128 = i128::from(first & 0x3f);
        if negative {
            v -= 0x40;
        }
        for &x in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(i128::from(x)))
                .ok_or_else(|| TarError::Corrupt(format!("{what} overflows")))?;
        }
        return i64::try_from(v).map_err(|_| TarError::Corrupt(format!("{what} overflows")));
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&c| c == b' ' || c == 0)
        .take_while(|&c| c != b' ' && c != 0)
        .collect();
    if s.is_empty() {
        return Ok(0);
    }
    let text =
        std::str::from_utf8(&s).map_err(|_| TarError::Corrupt(format!("{what} is not octal")))?;
    i64::from_str_radix(text, 8)
        .map_err(|_| TarError::Corrupt(format!("{what} {text:?} is not octal")))
}

fn pax_u64(v: &[u8], what: &str) -> Result<u64, TarError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| TarError::Corrupt(format!("PAX {what} is not a number")))
}

/// PAX records as (key, value) bytes.
type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

fn parse_pax(mut body: &[u8]) -> Result<PaxRecords, TarError> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.iter().all(|&c| c == 0) {
            break;
        }
        let sp = body
            .iter()
            .position(|&c| c == b' ')
            .ok_or_else(|| TarError::Corrupt("a PAX record has no length".into()))?;
        let len: usize = std::str::from_utf8(&body[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| TarError::Corrupt("a PAX record length is not a number".into()))?;
        if len <= sp + 1 || len > body.len() || body[len - 1] != b'\n' {
            return Err(TarError::Corrupt("a PAX record has a bad length".into()));
        }
        let rec = &body[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|&c| c == b'=')
            .ok_or_else(|| TarError::Corrupt("a PAX record has no '='".into()))?;
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        body = &body[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(headers: &[(Header, Vec<u8>)]) -> Vec<u8> {
        let mut w = TarWriter::new(Vec::new());
        for (h, data) in headers {
            let mut d = &data[..];
            w.append(h, Some(&mut d)).unwrap();
        }
        let bytes = w.finish().unwrap();
        let mut r = TarReader::new(&bytes[..]);
        for (h, data) in headers {
            let got = r.next_header().unwrap().unwrap();
            assert_eq!(&got, h);
            let mut buf = Vec::new();
            r.read_to_end(&mut buf).unwrap();
            assert_eq!(&buf, data);
        }
        assert!(r.next_header().unwrap().is_none());
        bytes
    }

    #[test]
    fn writes_and_reads_back_every_kind() {
        let mut f = Header::new(b"etc/hostname".to_vec(), Kind::File);
        f.size = 5;
        f.uid = 1000;
        f.gid = 1000;
        f.mtime = 1_700_000_000;
        f.mode = 0o4755;
        let mut d = Header::new(b"etc/".to_vec(), Kind::Dir);
        d.mode = 0o755;
        let mut s = Header::new(b"bin".to_vec(), Kind::Symlink);
        s.link = b"usr/bin".to_vec();
        let mut c = Header::new(b"dev/null".to_vec(), Kind::Char);
        c.dev_major = 1;
        c.dev_minor = 3;
        let mut l = Header::new(b"etc/hostname2".to_vec(), Kind::HardLink);
        l.link = b"etc/hostname".to_vec();
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90)).into_bytes();
        let mut long_split = Header::new(long, Kind::File);
        long_split.size = 1;
        let very_long = format!("{}/{}", "a".repeat(200), "b".repeat(150)).into_bytes();
        let mut pax = Header::new(very_long, Kind::File);
        pax.size = 600;
        // (No '\n' in the value: the tar crate, used below as an independent reader,
        // splits PAX records on newlines instead of using their lengths.)
        pax.xattrs = vec![("security.capability".into(), vec![1, 0, 0, 2, 0xff, 0])];
        pax.uid = 10_000_000;
        let mut ln = Header::new(b"x".to_vec(), Kind::Symlink);
        ln.link = vec![b'y'; 300];
        let bytes = roundtrip(&[
            (d, vec![]),
            (f, b"hello".to_vec()),
            (s, vec![]),
            (c, vec![]),
            (l, vec![]),
            (long_split, b"z".to_vec()),
            (pax, vec![7u8; 600]),
            (ln, vec![]),
        ]);
        // Readable by an independent implementation too.
        let mut a = tar::Archive::new(&bytes[..]);
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 8);
        assert_eq!(names[6], format!("{}/{}", "a".repeat(200), "b".repeat(150)));
    }

    #[test]
    fn headers_are_deterministic_and_nameless() {
        let mut f = Header::new(b"a".to_vec(), Kind::File);
        f.size = 1;
        let a = roundtrip(&[(f.clone(), b"1".to_vec())]);
        let b = roundtrip(&[(f, b"1".to_vec())]);
        assert_eq!(a, b);
        assert!(a[265..329].iter().all(|&c| c == 0), "uname/gname empty");
        assert_eq!(a.len(), 512 * 4);
    }

    #[test]
    fn pax_record_lengths_are_self_consistent() {
        for n in [0usize, 1, 5, 90, 95, 96, 97, 990, 995, 1000] {
            let body = pax_body(&[("path".into(), vec![b'p'; n])]);
            let parsed = parse_pax(&body).unwrap();
            assert_eq!(parsed[0].1.len(), n);
        }
    }

    #[test]
    fn refuses_oversized_meta_and_bad_checksums() {
        let mut b = [0u8; BLOCK];
        b[0] = b'x';
        b[156] = b'x';
        put_octal(&mut b[124..136], MAX_PAX + 1).unwrap();
        b[148..156].copy_from_slice(b"        ");
        let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
        b[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
        let mut r = TarReader::new(&b[..]);
        assert!(matches!(r.next_header(), Err(TarError::Unsupported(_))));
        b[0] = b'y';
        let mut r = TarReader::new(&b[..]);
        assert!(matches!(r.next_header(), Err(TarError::Corrupt(_))));
    }

    #[test]
    fn base256_numbers() {
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[11] = 0x10;
        assert_eq!(parse_number(&f, "x").unwrap(), 16);
        let neg = [0xffu8; 12];
        assert_eq!(parse_signed(&neg, "x").unwrap(), -1);
    }
}

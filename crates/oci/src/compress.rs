//! Layer compression behind a small trait, so the runtime can plug in its multithreaded
//! gzip (`ParallelGzWriter`, multi-member gzip) while this crate's defaults stay
//! single-threaded and dependency-light; and decompression with the format detected
//! from the stream's first bytes.
//!
//! Output is deterministic for a given compressor and level: the gzip header is fixed
//! (mtime 0, no file name, OS byte 255) and nothing time- or host-dependent goes in.

use std::io::{self, BufRead, Read, Write};

use crate::media;

/// The compression of a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The OCI media type of a layer compressed this way.
    pub fn layer_media_type(self) -> &'static str {
        match self {
            Compression::None => media::OCI_LAYER,
            Compression::Gzip => media::OCI_LAYER_GZIP,
            Compression::Zstd => media::OCI_LAYER_ZSTD,
        }
    }

    /// Detects the compression from the first bytes of a blob.
    pub fn detect(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A compressing writer that must be told when the stream ends (to write trailers).
pub trait FinishWrite: Write {
    /// Writes everything still buffered and the format's trailer.
    fn finish(self: Box<Self>) -> io::Result<()>;
}

/// Makes compressing writers for layers. Implement it to use another encoder (for
/// instance the runtime's multithreaded gzip); the output must be a valid stream of
/// [`Compressor::compression`] (multi-member gzip is fine) and deterministic for
/// reproducible digests.
pub trait Compressor: Send + Sync {
    fn compression(&self) -> Compression;
    /// Wraps `out`; everything written to the result is compressed into `out`.
    fn compress<'a>(&self, out: &'a mut dyn Write) -> io::Result<Box<dyn FinishWrite + 'a>>;
}

/// gzip through flate2, single-threaded, fixed header.
#[derive(Debug, Clone, Copy)]
pub struct Gzip {
    /// 0..=9; 6 is gzip's default.
    pub level: u32,
}

impl Default for Gzip {
    fn default() -> Self {
        Gzip { level: 6 }
    }
}

struct GzFinish<'a>(flate2::write::GzEncoder<&'a mut dyn Write>);

impl Write for GzFinish<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl FinishWrite for GzFinish<'_> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        let out = self.0.finish()?;
        out.flush()
    }
}

impl Compressor for Gzip {
    fn compression(&self) -> Compression {
        Compression::Gzip
    }
    fn compress<'a>(&self, out: &'a mut dyn Write) -> io::Result<Box<dyn FinishWrite + 'a>> {
        let enc = flate2::GzBuilder::new()
            .mtime(0)
            .operating_system(255)
            .write(out, flate2::Compression::new(self.level.min(9)));
        Ok(Box::new(GzFinish(enc)))
    }
}

/// zstd through libzstd; `threads` > 1 uses zstd's own workers.
#[derive(Debug, Clone, Copy)]
pub struct Zstd {
    /// 1..=22; 3 is zstd's default.
    pub level: i32,
    pub threads: u32,
}

impl Default for Zstd {
    fn default() -> Self {
        Zstd {
            level: 3,
            threads: 0,
        }
    }
}

struct ZstdFinish<'a>(zstd::stream::write::Encoder<'static, &'a mut dyn Write>);

impl Write for ZstdFinish<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl FinishWrite for ZstdFinish<'_> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        let out = self.0.finish()?;
        out.flush()
    }
}

impl Compressor for Zstd {
    fn compression(&self) -> Compression {
        Compression::Zstd
    }
    fn compress<'a>(&self, out: &'a mut dyn Write) -> io::Result<Box<dyn FinishWrite + 'a>> {
        let mut enc = zstd::stream::write::Encoder::new(out, self.level)?;
        if self.threads > 1 {
            enc.multithread(self.threads)?;
        }
        enc.include_checksum(true)?;
        Ok(Box::new(ZstdFinish(enc)))
    }
}

/// No compression (`application/vnd.oci.image.layer.v1.tar`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Uncompressed;

struct Plain<'a>(&'a mut dyn Write);

impl Write for Plain<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl FinishWrite for Plain<'_> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.0.flush()
    }
}

impl Compressor for Uncompressed {
    fn compression(&self) -> Compression {
        Compression::None
    }
    fn compress<'a>(&self, out: &'a mut dyn Write) -> io::Result<Box<dyn FinishWrite + 'a>> {
        Ok(Box::new(Plain(out)))
    }
}

/// A reader of the uncompressed bytes of `blob`, whatever its compression (gzip,
/// including multi-member; zstd, with libzstd's default 128 MiB window limit; plain).
pub fn decompress<'a, R: BufRead + 'a>(
    mut blob: R,
) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let c = Compression::detect(blob.fill_buf()?);
    let r: Box<dyn Read + 'a> = match c {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(blob)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(blob)?),
        Compression::None => Box::new(blob),
    };
    Ok((c, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compress_with(c: &dyn Compressor, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = c.compress(&mut out).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap();
        out
    }

    #[test]
    fn round_trips_and_is_deterministic() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in [
            &Gzip::default() as &dyn Compressor,
            &Zstd::default(),
            &Uncompressed,
        ] {
            let a = compress_with(c, &data);
            let b = compress_with(c, &data);
            assert_eq!(a, b);
            let (detected, mut r) = decompress(&a[..]).unwrap();
            assert_eq!(detected, c.compression());
            let mut back = Vec::new();
            r.read_to_end(&mut back).unwrap();
            assert_eq!(back, data);
        }
        let gz = compress_with(&Gzip::default(), b"x");
        // No flags (so no name/comment), mtime 0, OS "unknown".
        assert_eq!(gz[3], 0);
        assert_eq!(&gz[4..8], &[0, 0, 0, 0]);
        assert_eq!(gz[9], 255);
    }

    #[test]
    fn reads_multi_member_gzip() {
        let mut both = compress_with(&Gzip::default(), b"hello ");
        both.extend(compress_with(&Gzip::default(), b"world"));
        let (_, mut r) = decompress(&both[..]).unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello world");
    }
}

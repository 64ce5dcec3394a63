//! OCI image layout directories (`oci-layout`, `index.json`, `blobs/sha256/<hex>`): the
//! builder's output, a base image source (`oci-layout:DIR:TAG`), and the local blob store
//! pulls write into and pushes read from.
//!
//! Blobs are written to a temporary file beside their final place, synced, and renamed to
//! their digest only when complete, so a blob path always holds the whole blob. Every
//! read of a blob is verified against its descriptor (size and digest). `index.json` is
//! rewritten atomically under an advisory lock on `oci-layout`.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::compress::Compressor;
use crate::digest::{Digest, DigestReader, DigestWriter, LimitExceeded};
use crate::image::{
    BuiltImage, Descriptor, FormatError, ImageConfig, Index, MAX_DOC, Manifest, ManifestDoc,
    Platform, parse_manifest,
};
use crate::layer::{LayerError, LayerInfo, LayerOptions, write_layer};
use crate::media;

const LAYOUT_FILE: &str = "oci-layout";
const LAYOUT_JSON: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Why a layout operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{path}: {what}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} is not an OCI image layout (no valid oci-layout file): {reason}")]
    NotALayout { path: PathBuf, reason: String },
    #[error("no image tagged {tag:?} in {layout}: tags there are {available:?}")]
    TagNotFound {
        tag: String,
        layout: PathBuf,
        available: Vec<String>,
    },
    #[error("blob {digest} is missing from {layout}")]
    BlobMissing { digest: Digest, layout: PathBuf },
    #[error("blob {digest} in {layout} is corrupt: {reason}")]
    BlobCorrupt {
        digest: Digest,
        layout: PathBuf,
        reason: String,
    },
    #[error(
        "tag {0:?} is not valid: use 1..128 characters from [A-Za-z0-9_.-] (not starting with '.' or '-')"
    )]
    BadTag(String),
    #[error("the index for {tag:?} has no manifest for {platform}")]
    NoPlatform { tag: String, platform: String },
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Layer(#[from] LayerError),
}

/// A validated tag: Docker's tag grammar, which is also a safe OCI `ref.name`.
pub fn check_tag(tag: &str) -> Result<(), LayoutError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        && !tag.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(LayoutError::BadTag(tag.to_string()))
    }
}

/// An image read from a layout (or pulled into one).
#[derive(Debug, Clone)]
pub struct LocalImage {
    /// The image manifest's descriptor (not the index's).
    pub manifest_descriptor: Descriptor,
    pub manifest: Manifest,
    pub manifest_json: Vec<u8>,
    pub config: ImageConfig,
    pub config_json: Vec<u8>,
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct OciLayout {
    root: PathBuf,
}

impl OciLayout {
    /// Opens the layout at `dir`, creating it (and `dir`) if it does not exist yet.
    pub fn create(dir: &Path) -> Result<Self, LayoutError> {
        let io = |what, source| LayoutError::Io {
            what,
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir.join("blobs/sha256")).map_err(|e| io("cannot create", e))?;
        let marker = dir.join(LAYOUT_FILE);
        if !marker.exists() {
            write_atomic(&marker, LAYOUT_JSON).map_err(|e| io("cannot write oci-layout", e))?;
        }
        let l = OciLayout::open(dir)?;
        if !l.root.join("index.json").exists() {
            write_atomic(
                &l.root.join("index.json"),
                &Index::new(Vec::new()).to_json(),
            )
            .map_err(|e| io("cannot write index.json", e))?;
        }
        Ok(l)
    }

    /// Opens an existing layout.
    pub fn open(dir: &Path) -> Result<Self, LayoutError> {
        let not = |reason: String| LayoutError::NotALayout {
            path: dir.to_path_buf(),
            reason,
        };
        let text = read_bounded(&dir.join(LAYOUT_FILE), 4096).map_err(|e| not(e.to_string()))?;
        let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| not(e.to_string()))?;
        if v.get("imageLayoutVersion").and_then(|x| x.as_str()) != Some("1.0.0") {
            return Err(not("imageLayoutVersion is not \"1.0.0\"".into()));
        }
        Ok(OciLayout {
            root: dir.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `digest` lives (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Is the blob present with the descriptor's size? (Content is verified on read.)
    pub fn has_blob(&self, d: &Descriptor) -> bool {
        fs::metadata(self.blob_path(&d.digest)).is_ok_and(|m| m.is_file() && m.len() == d.size)
    }

    fn io(&self, what: &'static str, source: io::Error) -> LayoutError {
        LayoutError::Io {
            what,
            path: self.root.clone(),
            source,
        }
    }

    /// A writer for a new blob; [`BlobWriter::commit`] names it by its digest.
    pub fn blob_writer(&self) -> Result<BlobWriter, LayoutError> {
        let tmp = self.temp_blob()?;
        let file = tmp
            .reopen()
            .map_err(|e| self.io("cannot open a temporary blob", e))?;
        Ok(BlobWriter {
            tmp,
            out: DigestWriter::new(BufWriter::with_capacity(256 * 1024, file)),
            layout: self.clone(),
        })
    }

    /// A temporary file beside the blobs, for a blob being received.
    pub(crate) fn temp_blob(&self) -> Result<tempfile::NamedTempFile, LayoutError> {
        tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(self.root.join("blobs/sha256"))
            .map_err(|e| self.io("cannot create a temporary blob", e))
    }

    /// Stores a complete, verified temporary file as the blob `digest`.
    pub(crate) fn persist_blob(
        &self,
        tmp: tempfile::NamedTempFile,
        digest: &Digest,
    ) -> Result<(), LayoutError> {
        tmp.persist(self.blob_path(digest))
            .map_err(|e| self.io("cannot store a blob", e.error))?;
        Ok(())
    }

    /// Stores `bytes` as a blob.
    pub fn put_blob(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor, LayoutError> {
        let d = Descriptor::new(media_type, Digest::of(bytes), bytes.len() as u64);
        if self.has_blob(&d) {
            return Ok(d);
        }
        let mut w = self.blob_writer()?;
        w.write_all(bytes)
            .map_err(|e| self.io("cannot write a blob", e))?;
        w.commit(Some(&d.digest))?;
        Ok(d)
    }

    /// Writes the layer for `dir` (see [`write_layer`]) into the layout.
    pub fn write_layer(
        &self,
        dir: &Path,
        options: &LayerOptions,
        compressor: &dyn Compressor,
    ) -> Result<LayerInfo, LayoutError> {
        let tmp = self.temp_blob()?;
        let mut file = tmp
            .reopen()
            .map_err(|e| self.io("cannot open a temporary blob", e))?;
        let info = {
            let mut out = BufWriter::with_capacity(256 * 1024, &mut file);
            let info = write_layer(dir, options, compressor, &mut out)?;
            out.flush().map_err(|e| self.io("cannot write a blob", e))?;
            info
        };
        file.sync_data()
            .map_err(|e| self.io("cannot sync a blob", e))?;
        tmp.persist(self.blob_path(&info.digest))
            .map_err(|e| self.io("cannot store a blob", e.error))?;
        Ok(info)
    }

    /// A reader of the blob that fails (with `InvalidData`) if the content does not match
    /// the descriptor's size and digest.
    pub fn open_blob(&self, d: &Descriptor) -> Result<BlobReader, LayoutError> {
        let path = self.blob_path(&d.digest);
        let f = File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                LayoutError::BlobMissing {
                    digest: d.digest.clone(),
                    layout: self.root.clone(),
                }
            } else {
                self.io("cannot open a blob", e)
            }
        })?;
        Ok(BlobReader {
            inner: Some(DigestReader::new(f, d.size)),
            expected: d.digest.clone(),
            size: d.size,
        })
    }

    /// Reads a small blob (manifest, config) whole, verified; at most [`MAX_DOC`] bytes.
    pub fn read_blob(&self, d: &Descriptor) -> Result<Vec<u8>, LayoutError> {
        if d.size > MAX_DOC as u64 {
            return Err(FormatError::TooLarge { limit: MAX_DOC }.into());
        }
        let mut r = self.open_blob(d)?;
        let mut v = Vec::with_capacity(usize::try_from(d.size).unwrap_or(0));
        r.read_to_end(&mut v)
            .map_err(|e| LayoutError::BlobCorrupt {
                digest: d.digest.clone(),
                layout: self.root.clone(),
                reason: e.to_string(),
            })?;
        Ok(v)
    }

    /// Re-reads a blob and checks it against its descriptor.
    pub fn verify_blob(&self, d: &Descriptor) -> Result<(), LayoutError> {
        let mut r = self.open_blob(d)?;
        io::copy(&mut r, &mut io::sink()).map_err(|e| LayoutError::BlobCorrupt {
            digest: d.digest.clone(),
            layout: self.root.clone(),
            reason: e.to_string(),
        })?;
        Ok(())
    }

    /// The layout's `index.json`.
    pub fn index(&self) -> Result<Index, LayoutError> {
        let bytes = read_bounded(&self.root.join("index.json"), MAX_DOC as u64)
            .map_err(|e| self.io("cannot read index.json", e))?;
        match parse_manifest(&bytes, Some(media::OCI_INDEX))? {
            ManifestDoc::Index(i) => Ok(i),
            ManifestDoc::Image(_) => Err(FormatError::Unsupported(
                "index.json holds a manifest, not an index".into(),
            )
            .into()),
        }
    }

    /// Tags (`org.opencontainers.image.ref.name`) in `index.json`.
    pub fn tags(&self) -> Result<Vec<String>, LayoutError> {
        Ok(self
            .index()?
            .manifests
            .iter()
            .filter_map(|d| d.annotations.get(media::ANNOTATION_REF_NAME).cloned())
            .collect())
    }

    /// Points `tag` at `manifest` (replacing what it named before).
    pub fn tag(&self, tag: &str, manifest: &Descriptor) -> Result<(), LayoutError> {
        check_tag(tag)?;
        let _lock = self.lock()?;
        let mut index = self.index()?;
        index.manifests.retain(|d| {
            d.annotations
                .get(media::ANNOTATION_REF_NAME)
                .map(String::as_str)
                != Some(tag)
        });
        let mut d = manifest.clone();
        d.annotations
            .insert(media::ANNOTATION_REF_NAME.into(), tag.into());
        index.manifests.push(d);
        write_atomic(&self.root.join("index.json"), &index.to_json())
            .map_err(|e| self.io("cannot write index.json", e))
    }

    fn lock(&self) -> Result<File, LayoutError> {
        let f = File::open(self.root.join(LAYOUT_FILE))
            .map_err(|e| self.io("cannot open oci-layout", e))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| self.io("cannot lock oci-layout", e.into()))?;
        Ok(f)
    }

    /// Stores a built image's config and manifest and, with `tag`, names it.
    pub fn put_image(&self, image: &BuiltImage, tag: Option<&str>) -> Result<(), LayoutError> {
        for l in &image.layers {
            if !self.has_blob(l) {
                return Err(LayoutError::BlobMissing {
                    digest: l.digest.clone(),
                    layout: self.root.clone(),
                });
            }
        }
        self.put_blob(media::OCI_CONFIG, &image.config_json)?;
        self.put_blob(media::OCI_MANIFEST, &image.manifest_json)?;
        if let Some(t) = tag {
            self.tag(t, &image.manifest)?;
        }
        Ok(())
    }

    /// The descriptor `tag` names.
    pub fn resolve(&self, tag: &str) -> Result<Descriptor, LayoutError> {
        let index = self.index()?;
        let found = index.manifests.iter().find(|d| {
            d.annotations
                .get(media::ANNOTATION_REF_NAME)
                .map(String::as_str)
                == Some(tag)
        });
        match found {
            Some(d) => Ok(d.clone()),
            None => Err(LayoutError::TagNotFound {
                tag: tag.into(),
                layout: self.root.clone(),
                available: index
                    .manifests
                    .iter()
                    .filter_map(|d| d.annotations.get(media::ANNOTATION_REF_NAME).cloned())
                    .collect(),
            }),
        }
    }

    /// Reads the image `tag` names, following an index to `platform`'s manifest.
    pub fn read_image(&self, tag: &str, platform: &Platform) -> Result<LocalImage, LayoutError> {
        let d = self.resolve(tag)?;
        self.read_image_at(d, tag, platform)
    }

    /// Reads the image whose manifest (or index) is `d`.
    pub fn read_image_at(
        &self,
        mut d: Descriptor,
        tag: &str,
        platform: &Platform,
    ) -> Result<LocalImage, LayoutError> {
        // Nested indexes are allowed by the spec; two levels is more than any tool makes.
        for _ in 0..3 {
            let bytes = self.read_blob(&d)?;
            match parse_manifest(&bytes, Some(&d.media_type))? {
                ManifestDoc::Index(i) => {
                    d = i.find_platform(platform).cloned().ok_or_else(|| {
                        LayoutError::NoPlatform {
                            tag: tag.into(),
                            platform: platform.to_string(),
                        }
                    })?;
                }
                ManifestDoc::Image(m) => {
                    let config_json = self.read_blob(&m.config)?;
                    let config = ImageConfig::from_json(&config_json)?;
                    let mut md = d.clone();
                    md.annotations.clear();
                    return Ok(LocalImage {
                        manifest_descriptor: md,
                        manifest: *m,
                        manifest_json: bytes,
                        config,
                        config_json,
                    });
                }
            }
        }
        Err(FormatError::Unsupported("indexes nested more than two levels".into()).into())
    }
}

/// A new blob being written; dropped without [`BlobWriter::commit`], it leaves nothing.
pub struct BlobWriter {
    tmp: tempfile::NamedTempFile,
    out: DigestWriter<BufWriter<File>>,
    layout: OciLayout,
}

impl Write for BlobWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.out.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.out.written()
    }

    /// Finishes the blob and stores it under its digest. With `expected`, a different
    /// digest is refused and nothing is stored.
    pub fn commit(self, expected: Option<&Digest>) -> Result<(Digest, u64), LayoutError> {
        let (digest, size, buf) = self.out.finish();
        let file = buf
            .into_inner()
            .map_err(|e| self.layout.io("cannot write a blob", e.into_error()))?;
        file.sync_data()
            .map_err(|e| self.layout.io("cannot sync a blob", e))?;
        if let Some(exp) = expected
            && *exp != digest
        {
            return Err(LayoutError::BlobCorrupt {
                digest: exp.clone(),
                layout: self.layout.root.clone(),
                reason: format!("the content written has digest {digest}"),
            });
        }
        self.tmp
            .persist(self.layout.blob_path(&digest))
            .map_err(|e| self.layout.io("cannot store a blob", e.error))?;
        Ok((digest, size))
    }
}

/// A verifying reader of a stored blob.
pub struct BlobReader {
    inner: Option<DigestReader<File>>,
    expected: Digest,
    size: u64,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(inner) = self.inner.as_mut() else {
            return Ok(0);
        };
        let n = inner.read(buf).map_err(|e| {
            if LimitExceeded::is(&e) {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("blob {} is longer than {} bytes", self.expected, self.size),
                )
            } else {
                e
            }
        })?;
        if n == 0 && !buf.is_empty() {
            let (digest, len) = self
                .inner
                .take()
                .map(DigestReader::finish)
                .unwrap_or((Digest::of(b""), 0));
            if len != self.size || digest != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "blob {} has {len} bytes with digest {digest}, expected {} bytes",
                        self.expected, self.size
                    ),
                ));
            }
        }
        Ok(n)
    }
}

fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let mut v = Vec::new();
    f.take(limit + 1).read_to_end(&mut v)?;
    if v.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {limit} bytes", path.display()),
        ));
    }
    Ok(v)
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_data()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

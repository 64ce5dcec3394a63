//! `docker-archive` tars, the `docker save` format that `docker load`, `podman load` and
//! `skopeo … docker-archive:` read: `manifest.json`
//! (`[{"Config": "<hex>.json", "RepoTags": [...], "Layers": ["<diff_id hex>.tar", ...]}]`),
//! the config, and each layer as an uncompressed tar named by its diff_id.
//!
//! Writing streams each layer out of the layout twice (once to learn its uncompressed
//! size for the tar header, once to copy it), verifying its diff_id both times, so no
//! layer is ever held in memory or spooled to a temporary file. Entries are in a fixed
//! order with fixed headers, so the archive is reproducible too.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::compress::decompress;
use crate::digest::{Digest, DigestReader};
use crate::image::{Descriptor, FormatError, ImageConfig, MAX_DOC};
use crate::json::to_canonical_json;
use crate::layout::{LayoutError, LocalImage, OciLayout};
use crate::tarfmt::{Header, Kind, TarReader, TarWriter};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default, deserialize_with = "null_vec")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers", default, deserialize_with = "null_vec")]
    layers: Vec<String>,
}

fn null_vec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// Why a docker-archive could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("writing the archive failed: {0}")]
    Write(#[source] io::Error),
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("layer {digest} does not match its diff_id {diff_id} (the layout is corrupt)")]
    DiffIdMismatch { digest: Digest, diff_id: Digest },
    #[error("repo tag {0:?} is not NAME:TAG")]
    BadRepoTag(String),
    #[error("{path} is not a docker-archive: {reason}")]
    NotAnArchive { path: PathBuf, reason: String },
    #[error(transparent)]
    Format(#[from] FormatError),
}

fn check_repo_tag(t: &str) -> Result<(), ArchiveError> {
    let bad = || ArchiveError::BadRepoTag(t.to_string());
    let (name, tag) = t.rsplit_once(':').ok_or_else(bad)?;
    if name.is_empty() || name.contains('@') || tag.contains('/') {
        return Err(bad());
    }
    crate::layout::check_tag(tag).map_err(|_| bad())?;
    let name_ok = name.bytes().all(|b| {
        b.is_ascii_lowercase()
            || b.is_ascii_digit()
            || matches!(b, b'.' | b'_' | b'-' | b'/' | b':')
    });
    if name_ok { Ok(()) } else { Err(bad()) }
}

/// Writes `image` (whose blobs are in `layout`) as a docker-archive tar to `out`, tagged
/// `repo_tags` (`name:tag`, e.g. `localhost/app:1.0`).
pub fn write_docker_archive(
    layout: &OciLayout,
    image: &LocalImage,
    repo_tags: &[String],
    out: &mut dyn Write,
) -> Result<(), ArchiveError> {
    for t in repo_tags {
        check_repo_tag(t)?;
    }
    let diff_ids = &image.config.rootfs.diff_ids;
    if diff_ids.len() != image.manifest.layers.len() {
        return Err(FormatError::Inconsistent(format!(
            "{} layers but {} diff_ids",
            image.manifest.layers.len(),
            diff_ids.len()
        ))
        .into());
    }
    let config_name = format!("{}.json", Digest::of(&image.config_json).hex());
    let mut tar = TarWriter::new(out);
    let file_header = |name: String, size: u64| {
        let mut h = Header::new(name.into_bytes(), Kind::File);
        h.size = size;
        h
    };
    let cfg = &image.config_json;
    tar.append(
        &file_header(config_name.clone(), cfg.len() as u64),
        Some(&mut &cfg[..]),
    )
    .map_err(ArchiveError::Write)?;
    let mut layer_names = Vec::new();
    let mut written = HashSet::new();
    for (d, diff_id) in image.manifest.layers.iter().zip(diff_ids) {
        let name = format!("{}.tar", diff_id.hex());
        layer_names.push(name.clone());
        if !written.insert(diff_id.clone()) {
            continue;
        }
        let size = uncompressed_size(layout, d, diff_id)?;
        let blob = layout.open_blob(d)?;
        let (_, raw) =
            decompress(BufReader::with_capacity(256 * 1024, blob)).map_err(ArchiveError::Write)?;
        let mut r = DigestReader::new(raw, size);
        tar.append(&file_header(name, size), Some(&mut r))
            .map_err(ArchiveError::Write)?;
        // Whatever is left must be nothing, and the tar what the config says.
        io::copy(&mut r, &mut io::sink()).map_err(ArchiveError::Write)?;
        let (got, n) = r.finish();
        if got != *diff_id || n != size {
            return Err(ArchiveError::DiffIdMismatch {
                digest: d.digest.clone(),
                diff_id: diff_id.clone(),
            });
        }
    }
    let manifest = vec![ManifestEntry {
        config: config_name,
        repo_tags: repo_tags.to_vec(),
        layers: layer_names,
    }];
    let mj = to_canonical_json(&manifest).map_err(|e| ArchiveError::Write(io::Error::other(e)))?;
    tar.append(
        &file_header("manifest.json".into(), mj.len() as u64),
        Some(&mut &mj[..]),
    )
    .map_err(ArchiveError::Write)?;
    let out = tar.finish().map_err(ArchiveError::Write)?;
    out.flush().map_err(ArchiveError::Write)
}

/// Streams the layer once to measure its uncompressed size and check its diff_id.
fn uncompressed_size(
    layout: &OciLayout,
    d: &Descriptor,
    diff_id: &Digest,
) -> Result<u64, ArchiveError> {
    let blob = layout.open_blob(d)?;
    let (_, raw) =
        decompress(BufReader::with_capacity(256 * 1024, blob)).map_err(ArchiveError::Write)?;
    let mut r = DigestReader::new(raw, u64::MAX);
    io::copy(&mut r, &mut io::sink()).map_err(|e| ArchiveError::Read {
        path: layout.blob_path(&d.digest),
        source: e,
    })?;
    let (got, n) = r.finish();
    if got != *diff_id {
        return Err(ArchiveError::DiffIdMismatch {
            digest: d.digest.clone(),
            diff_id: diff_id.clone(),
        });
    }
    Ok(n)
}

/// A file inside the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub offset: u64,
    pub size: u64,
}

/// One image of an archive.
#[derive(Debug, Clone)]
pub struct ArchiveImage {
    pub repo_tags: Vec<String>,
    pub config: ImageConfig,
    pub config_json: Vec<u8>,
    /// The layer tars, bottom first (uncompressed, or compressed if a tool wrote them so).
    pub layers: Vec<Member>,
}

/// A docker-archive opened for reading.
#[derive(Debug)]
pub struct DockerArchive {
    path: PathBuf,
    pub images: Vec<ArchiveImage>,
}

struct Counting<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl DockerArchive {
    /// Indexes the archive at `path` and reads its `manifest.json` and configs.
    pub fn open(path: &Path) -> Result<Self, ArchiveError> {
        let read = |source| ArchiveError::Read {
            path: path.to_path_buf(),
            source,
        };
        let not = |reason: String| ArchiveError::NotAnArchive {
            path: path.to_path_buf(),
            reason,
        };
        let f = File::open(path).map_err(read)?;
        let mut tar = TarReader::new(Counting {
            inner: BufReader::new(f),
            pos: 0,
        });
        let mut members = Vec::new();
        let mut manifest = None;
        while let Some(h) = tar.next_header().map_err(|e| not(e.to_string()))? {
            if h.kind != Kind::File {
                continue;
            }
            let name = String::from_utf8_lossy(&h.path)
                .trim_start_matches("./")
                .to_string();
            let offset = tar_pos(&tar);
            if name == "manifest.json" {
                if h.size > MAX_DOC as u64 {
                    return Err(not("manifest.json is too large".into()));
                }
                let mut v = Vec::new();
                (&mut tar).take(h.size).read_to_end(&mut v).map_err(read)?;
                manifest = Some(v);
            }
            members.push(Member {
                name,
                offset,
                size: h.size,
            });
        }
        let manifest = manifest.ok_or_else(|| not("no manifest.json".into()))?;
        let entries: Vec<ManifestEntry> =
            serde_json::from_slice(&manifest).map_err(|e| not(format!("manifest.json: {e}")))?;
        let mut file = File::open(path).map_err(read)?;
        let find = |n: &str| {
            members
                .iter()
                .find(|m| m.name == n)
                .cloned()
                .ok_or_else(|| {
                    not(format!(
                        "{n} is listed in manifest.json but not in the archive"
                    ))
                })
        };
        let mut images = Vec::new();
        for e in entries {
            let cm = find(&e.config)?;
            if cm.size > MAX_DOC as u64 {
                return Err(not("a config is too large".into()));
            }
            let mut config_json =
                vec![0u8; usize::try_from(cm.size).expect("at most MAX_DOC, checked above")];
            file.seek(SeekFrom::Start(cm.offset)).map_err(read)?;
            file.read_exact(&mut config_json).map_err(read)?;
            let config = ImageConfig::from_json(&config_json)?;
            let layers = e
                .layers
                .iter()
                .map(|l| find(l))
                .collect::<Result<Vec<_>, _>>()?;
            images.push(ArchiveImage {
                repo_tags: e.repo_tags,
                config,
                config_json,
                layers,
            });
        }
        Ok(DockerArchive {
            path: path.to_path_buf(),
            images,
        })
    }

    /// A reader of one member's bytes.
    pub fn member_reader(&self, m: &Member) -> Result<impl io::BufRead + use<>, ArchiveError> {
        let read = |source| ArchiveError::Read {
            path: self.path.clone(),
            source,
        };
        let mut f = File::open(&self.path).map_err(read)?;
        f.seek(SeekFrom::Start(m.offset)).map_err(read)?;
        Ok(BufReader::with_capacity(256 * 1024, f).take(m.size))
    }

    /// Checks that every layer's content matches its config's diff_id and that each
    /// config file is named by its digest when the name is `<hex>.json`.
    pub fn verify(&self) -> Result<(), ArchiveError> {
        for img in &self.images {
            if img.layers.len() != img.config.rootfs.diff_ids.len() {
                return Err(FormatError::Inconsistent(format!(
                    "{} layers but {} diff_ids",
                    img.layers.len(),
                    img.config.rootfs.diff_ids.len()
                ))
                .into());
            }
            for (m, diff_id) in img.layers.iter().zip(&img.config.rootfs.diff_ids) {
                let (_, raw) =
                    decompress(self.member_reader(m)?).map_err(|e| ArchiveError::Read {
                        path: self.path.clone(),
                        source: e,
                    })?;
                let mut r = DigestReader::new(raw, u64::MAX);
                io::copy(&mut r, &mut io::sink()).map_err(|e| ArchiveError::Read {
                    path: self.path.clone(),
                    source: e,
                })?;
                let (got, _) = r.finish();
                if got != *diff_id {
                    return Err(ArchiveError::DiffIdMismatch {
                        digest: got,
                        diff_id: diff_id.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

fn tar_pos<R: Read>(t: &TarReader<Counting<R>>) -> u64 {
    t.inner_ref().pos
}

//! Blob and image transfers between a registry and an [`OciLayout`]: pulls stream each
//! blob to a temporary file while hashing it and keep it only if size and digest match;
//! pushes skip blobs the registry has, mount from another repository when told where
//! the blob lives, and stream the rest from disk (one PUT, or PATCH chunks for big
//! blobs). Manifests go last, so a failed push never leaves a manifest that references
//! missing blobs.

use std::io::{Seek, SeekFrom};

use futures_util::StreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Body, StatusCode, Url};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::digest::{Digest, Hasher};
use crate::image::{Descriptor, ImageConfig, Index, ManifestDoc, Platform};
use crate::layout::{LocalImage, OciLayout};
use crate::media;

use super::client::{RegistryClient, repo_scope};
use super::error::RegistryError;

/// How a blob got to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobPush {
    /// It was there already (HEAD said so): nothing was sent.
    Existed,
    /// Mounted from another repository of the same registry: nothing was sent.
    Mounted,
    /// Uploaded.
    Uploaded,
}

/// Push settings.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Repositories on the same registry that may hold the image's blobs already (the
    /// base image's): missing blobs are mounted from the first that has them.
    pub mount_from: Vec<String>,
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct PushReport {
    pub manifest_digest: Digest,
    /// `registry/repository@sha256:…`: the artifact id.
    pub reference: String,
    pub blobs: Vec<(Digest, BlobPush)>,
    pub bytes_uploaded: u64,
}

impl PushReport {
    pub fn count(&self, how: BlobPush) -> usize {
        self.blobs.iter().filter(|(_, h)| *h == how).count()
    }
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullReport {
    pub image: LocalImage,
    /// Blobs downloaded, and blobs the layout had already.
    pub fetched: usize,
    pub present: usize,
    pub bytes_fetched: u64,
}

impl RegistryClient {
    /// Downloads `d` from `repo` into `layout` (verified), unless it is there.
    /// Returns the bytes downloaded.
    pub async fn pull_blob(
        &self,
        repo: &str,
        d: &Descriptor,
        layout: &OciLayout,
    ) -> Result<u64, RegistryError> {
        if layout.has_blob(d) {
            return Ok(0);
        }
        let scopes = [repo_scope(repo, "pull")];
        let url = self.url(&format!("v2/{repo}/blobs/{}", d.digest))?;
        let mut resp = self.send(&scopes, &|c| Ok(c.get(url.clone()))).await?;
        if !resp.status().is_success() {
            return Err(self
                .fail(
                    "fetching a blob",
                    resp,
                    repo,
                    "blob",
                    &d.digest.to_string(),
                    &scopes,
                )
                .await);
        }
        let what = || format!("blob {}", d.digest);
        if let Some(len) = resp.content_length()
            && len != d.size
        {
            return Err(RegistryError::SizeMismatch {
                registry: self.registry().into(),
                what: what(),
                expected: d.size,
                actual: len,
            });
        }
        let tmp = layout.temp_blob()?;
        let std_file = tmp
            .reopen()
            .map_err(|e| RegistryClient::path_io(tmp.path(), e))?;
        let mut file =
            tokio::io::BufWriter::with_capacity(256 * 1024, tokio::fs::File::from_std(std_file));
        let mut hasher = Hasher::default();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport(e))? {
            hasher.update(&chunk);
            if hasher.len() > d.size {
                return Err(RegistryError::SizeMismatch {
                    registry: self.registry().into(),
                    what: what(),
                    expected: d.size,
                    actual: hasher.len(),
                });
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| RegistryClient::path_io(tmp.path(), e))?;
        }
        file.flush()
            .await
            .map_err(|e| RegistryClient::path_io(tmp.path(), e))?;
        let (digest, size) = hasher.finish();
        if size != d.size {
            return Err(RegistryError::SizeMismatch {
                registry: self.registry().into(),
                what: what(),
                expected: d.size,
                actual: size,
            });
        }
        if digest != d.digest {
            return Err(RegistryError::DigestMismatch {
                registry: self.registry().into(),
                what: what(),
                expected: d.digest.clone(),
                actual: digest,
            });
        }
        file.get_ref()
            .sync_data()
            .await
            .map_err(|e| RegistryClient::path_io(tmp.path(), e))?;
        drop(file);
        layout.persist_blob(tmp, &digest)?;
        Ok(size)
    }

    /// Pulls `reference` (a tag or digest) of `repo` into `layout`: an index is resolved
    /// to `platform`'s manifest; the manifest, config and layers are stored verified,
    /// and with `tag` the manifest is named in `index.json`.
    pub async fn pull(
        &self,
        repo: &str,
        reference: &str,
        platform: &Platform,
        layout: &OciLayout,
        tag: Option<&str>,
    ) -> Result<PullReport, RegistryError> {
        let top = self.get_manifest(repo, reference).await?;
        let fetched = match top.doc {
            ManifestDoc::Image(_) => top,
            ManifestDoc::Index(ref idx) => {
                let d = idx
                    .find_platform(platform)
                    .ok_or_else(|| RegistryError::NoPlatform {
                        registry: self.registry().into(),
                        reference: format!("{repo}:{reference}"),
                        platform: platform.to_string(),
                        available: idx
                            .manifests
                            .iter()
                            .filter_map(|m| m.platform.as_ref().map(|p| p.to_string()))
                            .collect(),
                    })?;
                let child = self.get_manifest(repo, &d.digest.to_string()).await?;
                if !matches!(child.doc, ManifestDoc::Image(_)) {
                    return Err(self.protocol(
                        "pulling",
                        "an index entry for a platform is not an image manifest".into(),
                    ));
                }
                child
            }
        };
        let ManifestDoc::Image(manifest) = fetched.doc.clone() else {
            return Err(self.protocol("pulling", "expected an image manifest".into()));
        };
        // The config first: it is small, and its diff_ids must match the layer count.
        let cfg_bytes = self.pull_blob(repo, &manifest.config, layout).await?;
        let config_json = layout.read_blob(&manifest.config)?;
        let config = ImageConfig::from_json(&config_json)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(crate::image::FormatError::Inconsistent(format!(
                "{} layers but {} diff_ids in the config",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            ))
            .into());
        }
        let mut present = usize::from(cfg_bytes == 0);
        let mut fetched_n = usize::from(cfg_bytes > 0);
        let mut bytes = cfg_bytes;
        let results: Vec<Result<u64, RegistryError>> =
            futures_util::stream::iter(manifest.layers.iter())
                .map(|l| self.pull_blob(repo, l, layout))
                .buffer_unordered(self.options.concurrency.max(1))
                .collect()
                .await;
        for r in results {
            let n = r?;
            if n > 0 {
                fetched_n += 1;
            } else {
                present += 1;
            }
            bytes += n;
        }
        layout.put_blob(&fetched.descriptor.media_type, &fetched.bytes)?;
        let mut md = fetched.descriptor.clone();
        md.platform = Some(config.platform());
        if let Some(t) = tag {
            layout.tag(t, &md)?;
        }
        tracing::info!(registry = self.registry(), repo, reference, digest = %md.digest, fetched = fetched_n, present, bytes, "pulled");
        Ok(PullReport {
            image: LocalImage {
                manifest_descriptor: md,
                manifest: *manifest,
                manifest_json: fetched.bytes,
                config,
                config_json,
            },
            fetched: fetched_n,
            present,
            bytes_fetched: bytes,
        })
    }

    /// Starts an upload; with `mount_from`, asks for a cross-repository mount first.
    /// `Ok(None)` means the blob was mounted.
    async fn start_upload(
        &self,
        repo: &str,
        digest: &Digest,
        from: Option<&str>,
    ) -> Result<Option<Url>, RegistryError> {
        let mut scopes = vec![repo_scope(repo, "pull,push")];
        let mut url = self.url(&format!("v2/{repo}/blobs/uploads/"))?;
        if let Some(f) = from {
            scopes.push(repo_scope(f, "pull"));
            url.query_pairs_mut()
                .append_pair("mount", &digest.to_string())
                .append_pair("from", f);
        }
        let resp = self
            .send(&scopes, &|c| {
                Ok(c.post(url.clone()).header(CONTENT_LENGTH, "0"))
            })
            .await?;
        match resp.status() {
            StatusCode::CREATED if from.is_some() => Ok(None),
            StatusCode::ACCEPTED => Ok(Some(self.location("starting an upload", resp.headers())?)),
            _ => Err(self
                .fail(
                    "starting an upload",
                    resp,
                    repo,
                    "upload",
                    &digest.to_string(),
                    &scopes,
                )
                .await),
        }
    }

    /// Cancels an upload session (best effort: the registry expires it anyway).
    async fn cancel_upload(&self, repo: &str, loc: Url) {
        let scopes = [repo_scope(repo, "pull,push")];
        if let Err(e) = self.send(&scopes, &|c| Ok(c.delete(loc.clone()))).await {
            tracing::debug!(repo, error = %e, "cancelling an upload failed");
        }
    }

    /// A body streaming `len` bytes of `path` from `offset`.
    fn file_body(path: &std::path::Path, offset: u64, len: u64) -> Result<Body, RegistryError> {
        let mut f = std::fs::File::open(path).map_err(|e| RegistryClient::path_io(path, e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| RegistryClient::path_io(path, e))?;
        let r = tokio::fs::File::from_std(f).take(len);
        Ok(Body::wrap_stream(
            tokio_util::io::ReaderStream::with_capacity(r, 64 * 1024),
        ))
    }

    /// Pushes the blob `d`, stored at `path`, to `repo`.
    pub async fn push_blob(
        &self,
        repo: &str,
        d: &Descriptor,
        path: &std::path::Path,
        mount_from: &[String],
    ) -> Result<BlobPush, RegistryError> {
        if let Some(size) = self.blob_exists(repo, &d.digest).await?
            && size == d.size
        {
            return Ok(BlobPush::Existed);
        }
        let on_disk = std::fs::metadata(path)
            .map_err(|e| RegistryClient::path_io(path, e))?
            .len();
        if on_disk != d.size {
            return Err(RegistryError::SizeMismatch {
                registry: self.registry().into(),
                what: format!("local blob {} at {}", d.digest, path.display()),
                expected: d.size,
                actual: on_disk,
            });
        }
        // Mount from the first candidate that has the blob; an attempt that does not
        // mount opens an upload session, kept for the last candidate and cancelled
        // otherwise.
        let candidates: Vec<&String> = mount_from.iter().filter(|f| *f != repo).collect();
        let mut location = None;
        for (i, from) in candidates.iter().enumerate() {
            match self.start_upload(repo, &d.digest, Some(from)).await? {
                None => {
                    tracing::debug!(repo, from = %from, digest = %d.digest, "blob mounted");
                    return Ok(BlobPush::Mounted);
                }
                Some(loc) if i + 1 == candidates.len() => location = Some(loc),
                Some(loc) => self.cancel_upload(repo, loc).await,
            }
        }
        let mut location = match location {
            Some(l) => l,
            None => self
                .start_upload(repo, &d.digest, None)
                .await?
                .ok_or_else(|| self.protocol("starting an upload", "no upload location".into()))?,
        };
        let scopes = [repo_scope(repo, "pull,push")];
        let digest_s = d.digest.to_string();
        if d.size > self.options.chunked_threshold {
            let chunk = self.options.chunk_size.max(1 << 20);
            let mut offset = 0;
            while offset < d.size {
                let len = chunk.min(d.size - offset);
                let loc = location.clone();
                let range = format!("{}-{}", offset, offset + len - 1);
                let resp = self
                    .send(&scopes, &|c| {
                        Ok(c.patch(loc.clone())
                            .header(CONTENT_TYPE, "application/octet-stream")
                            .header(CONTENT_LENGTH, len.to_string())
                            .header("Content-Range", range.clone())
                            .body(RegistryClient::file_body(path, offset, len)?))
                    })
                    .await?;
                if resp.status() != StatusCode::ACCEPTED {
                    return Err(self
                        .fail(
                            "uploading a chunk",
                            resp,
                            repo,
                            "upload",
                            &digest_s,
                            &scopes,
                        )
                        .await);
                }
                location = self.location("uploading a chunk", resp.headers())?;
                offset += len;
            }
            let mut put = location.clone();
            put.query_pairs_mut().append_pair("digest", &digest_s);
            let resp = self
                .send(&scopes, &|c| {
                    Ok(c.put(put.clone()).header(CONTENT_LENGTH, "0"))
                })
                .await?;
            if resp.status() != StatusCode::CREATED {
                return Err(self
                    .fail(
                        "finishing an upload",
                        resp,
                        repo,
                        "upload",
                        &digest_s,
                        &scopes,
                    )
                    .await);
            }
        } else {
            let mut put = location.clone();
            put.query_pairs_mut().append_pair("digest", &digest_s);
            let size = d.size;
            let resp = self
                .send(&scopes, &|c| {
                    Ok(c.put(put.clone())
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, size.to_string())
                        .body(RegistryClient::file_body(path, 0, size)?))
                })
                .await?;
            if resp.status() != StatusCode::CREATED {
                return Err(self
                    .fail("uploading a blob", resp, repo, "upload", &digest_s, &scopes)
                    .await);
            }
        }
        tracing::debug!(repo, digest = %d.digest, size = d.size, "blob uploaded");
        Ok(BlobPush::Uploaded)
    }

    /// Pushes `image` (blobs in `layout`) to `repo`: blobs first, then the manifest by
    /// digest and under each of `tags`.
    pub async fn push(
        &self,
        layout: &OciLayout,
        image: &LocalImage,
        repo: &str,
        tags: &[String],
        options: &PushOptions,
    ) -> Result<PushReport, RegistryError> {
        for t in tags {
            crate::layout::check_tag(t)?;
        }
        let mut blobs: Vec<&Descriptor> = image.manifest.layers.iter().collect();
        blobs.push(&image.manifest.config);
        let mut seen = std::collections::HashSet::new();
        blobs.retain(|d| seen.insert(d.digest.clone()));
        for d in &blobs {
            if !layout.has_blob(d) {
                return Err(crate::layout::LayoutError::BlobMissing {
                    digest: d.digest.clone(),
                    layout: layout.root().to_path_buf(),
                }
                .into());
            }
        }
        let results: Vec<(Digest, u64, Result<BlobPush, RegistryError>)> =
            futures_util::stream::iter(blobs.iter())
                .map(|d| async move {
                    let r = self
                        .push_blob(repo, d, &layout.blob_path(&d.digest), &options.mount_from)
                        .await;
                    (d.digest.clone(), d.size, r)
                })
                .buffer_unordered(self.options.concurrency.max(1))
                .collect()
                .await;
        let mut report = Vec::new();
        let mut uploaded = 0;
        for (digest, size, r) in results {
            let how = r?;
            if how == BlobPush::Uploaded {
                uploaded += size;
            }
            report.push((digest, how));
        }
        let mt = image
            .manifest
            .media_type
            .clone()
            .unwrap_or_else(|| media::OCI_MANIFEST.into());
        let digest = Digest::of(&image.manifest_json);
        self.put_manifest(repo, &digest.to_string(), &mt, &image.manifest_json)
            .await?;
        for t in tags {
            self.put_manifest(repo, t, &mt, &image.manifest_json)
                .await?;
        }
        let reference = format!("{}/{}@{}", self.registry(), repo, digest);
        tracing::info!(%reference, uploaded = report.iter().filter(|(_, h)| *h == BlobPush::Uploaded).count(), bytes = uploaded, "pushed");
        Ok(PushReport {
            manifest_digest: digest,
            reference,
            blobs: report,
            bytes_uploaded: uploaded,
        })
    }

    /// Pushes an index whose manifests were pushed already, by digest and under `tags`.
    pub async fn push_index(
        &self,
        repo: &str,
        index: &Index,
        tags: &[String],
    ) -> Result<Digest, RegistryError> {
        for t in tags {
            crate::layout::check_tag(t)?;
        }
        for m in &index.manifests {
            let got = self.get_manifest(repo, &m.digest.to_string()).await?;
            if got.descriptor.digest != m.digest {
                return Err(self.protocol(
                    "pushing an index",
                    format!("manifest {} is not in {repo}", m.digest),
                ));
            }
        }
        let json = index.to_json();
        let digest = Digest::of(&json);
        self.put_manifest(repo, &digest.to_string(), media::OCI_INDEX, &json)
            .await?;
        for t in tags {
            self.put_manifest(repo, t, media::OCI_INDEX, &json).await?;
        }
        Ok(digest)
    }
}

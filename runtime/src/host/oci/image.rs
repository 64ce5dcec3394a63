//! The image the OCI builder makes: its base (scratch, an OCI layout, or a pull), one
//! layer per step that changed something, and the finished image's outputs (an OCI
//! layout directory, a docker-archive tar). Everything here is blocking file work: the
//! callers run it in `spawn_blocking`. No grants in here: the capability layer decides
//! which paths and registries are used.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use kiln_oci::{
    BuiltImage, Changes, Compressor, Descriptor, Digest, ImageBuilder, LocalImage, OciLayout,
    Platform, Step, UnpackOptions, WhiteoutMode,
};

use super::store::{LayerMeta, Store};

/// The largest layer kiln unpacks (a decompression bomb stops here).
const MAX_LAYER: u64 = 256 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Layout(#[from] kiln_oci::LayoutError),
    #[error(transparent)]
    Format(#[from] kiln_oci::FormatError),
    #[error(transparent)]
    Changes(#[from] kiln_oci::ChangesError),
    #[error(transparent)]
    Layer(#[from] kiln_oci::LayerError),
    #[error("unpacking base layer {digest}: {source}")]
    Unpack {
        digest: Digest,
        #[source]
        source: kiln_oci::UnpackError,
    },
    #[error("squashing the layers: {0}")]
    Squash(#[from] kiln_oci::SquashError),
    #[error("writing the docker-archive: {0}")]
    Archive(#[from] kiln_oci::ArchiveError),
    #[error(transparent)]
    Store(#[from] super::store::StoreError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the cache entry for {0} is damaged (its layer description does not parse)")]
    BadEntry(String),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError + use<> {
    let path = path.to_path_buf();
    move |source| ImageError::Io { what, path, source }
}

/// What the steps start from.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// As the user wrote it (`scratch`, `oci-layout:DIR:TAG`, `host/repo:tag`).
    pub name: String,
    pub platform: Platform,
    /// The base's documents; `None` for scratch.
    pub image: Option<LocalImage>,
    /// Where its blobs are (kiln's pull store, or the user's layout).
    pub blobs: Option<OciLayout>,
    /// Its layers unpacked for overlayfs, bottom first.
    pub trees: Vec<PathBuf>,
    /// `repository` on `registry` the base came from (pushes there mount its blobs).
    pub pulled_from: Option<(String, String)>,
}

impl BaseImage {
    pub fn scratch(platform: Platform) -> Self {
        BaseImage {
            name: "scratch".into(),
            platform,
            image: None,
            blobs: None,
            trees: Vec::new(),
            pulled_from: None,
        }
    }

    /// A base whose documents and blobs are in `blobs`; unpacks the layers the store
    /// does not have yet (verified against their diff_ids).
    pub fn from_local(
        name: &str,
        image: LocalImage,
        blobs: OciLayout,
        store: &Store,
    ) -> Result<Self, ImageError> {
        let diff_ids = &image.config.rootfs.diff_ids;
        if diff_ids.len() != image.manifest.layers.len() {
            return Err(kiln_oci::FormatError::Inconsistent(format!(
                "{name}: {} layers but {} diff_ids in its config",
                image.manifest.layers.len(),
                diff_ids.len()
            ))
            .into());
        }
        let mut trees = Vec::new();
        for (d, diff_id) in image.manifest.layers.iter().zip(diff_ids) {
            if !store.has_layer_tree(diff_id.hex()) {
                let work = store.new_layer_work()?;
                let blob = blobs.open_blob(d)?;
                let mut o = UnpackOptions::new(WhiteoutMode::Overlay);
                o.expected_diff_id = Some(diff_id.clone());
                o.max_uncompressed = MAX_LAYER;
                let r = kiln_oci::unpack_layer(
                    BufReader::with_capacity(256 * 1024, blob),
                    &work.join("tree"),
                    &o,
                );
                if let Err(source) = r {
                    super::store::remove_tree(&work);
                    return Err(ImageError::Unpack {
                        digest: d.digest.clone(),
                        source,
                    });
                }
                store.publish_layer_tree(&work, diff_id.hex())?;
            }
            trees.push(store.layer_tree(diff_id.hex()));
        }
        Ok(BaseImage {
            name: name.to_string(),
            platform: image.config.platform(),
            image: Some(image),
            blobs: Some(blobs),
            trees,
            pulled_from: None,
        })
    }

    /// The base's `Env` as pairs (a `PATH` if it has none, as Docker does).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .image
            .as_ref()
            .and_then(|i| i.config.config.as_ref())
            .map(|c| {
                c.env
                    .iter()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.insert(0, ("PATH".into(), kiln_rootfs::DEFAULT_PATH.into()));
        }
        env
    }

    /// The manifest digest, when there is a base.
    pub fn digest(&self) -> Option<&Digest> {
        self.image.as_ref().map(|i| &i.manifest_descriptor.digest)
    }
}

/// One step's contribution to the image.
#[derive(Debug, Clone)]
pub enum StepRecord {
    Layer {
        created_by: String,
        layer: LayerMeta,
        /// The layer blob on disk.
        blob: PathBuf,
    },
    /// The step changed no file (an `empty_layer` history entry).
    Empty { created_by: String },
}

impl StepRecord {
    fn descriptor(layer: &LayerMeta) -> Result<(Descriptor, Digest), ImageError> {
        let bad = || ImageError::BadEntry(layer.digest.clone());
        let digest: Digest = layer.digest.parse().map_err(|_| bad())?;
        let diff_id: Digest = layer.diff_id.parse().map_err(|_| bad())?;
        Ok((
            Descriptor::new(&layer.media_type, digest, layer.size),
            diff_id,
        ))
    }
}

/// How to finish the image.
pub struct CommitOptions<'a> {
    pub changes: &'a Changes,
    pub squash: bool,
    /// Unix seconds for `created` and the history (and squashed files' mtimes).
    pub epoch: i64,
    pub compressor: &'a dyn Compressor,
}

/// A finished image, its blobs gathered in one layout of the build directory.
#[derive(Debug, Clone)]
pub struct Committed {
    pub layout: OciLayout,
    pub image: LocalImage,
    pub built: BuiltImage,
    pub layers: usize,
}

impl Committed {
    pub fn digest(&self) -> &Digest {
        &self.built.manifest.digest
    }
}

/// Puts the blob `src` (complete and verified when it was written) into `dest` as `d`:
/// a hard link when both are on one filesystem, else a verified copy.
fn link_blob(src: &Path, dest: &OciLayout, d: &Descriptor) -> Result<(), ImageError> {
    if dest.has_blob(d) {
        return Ok(());
    }
    let target = dest.blob_path(&d.digest);
    match std::fs::hard_link(src, &target) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(_) => {}
    }
    let mut r = File::open(src).map_err(io_err("cannot open", src))?;
    let mut w = dest.blob_writer()?;
    io::copy(&mut r, &mut w).map_err(io_err("cannot copy", src))?;
    w.commit(Some(&d.digest))?;
    Ok(())
}

/// Assembles the image in `<build_dir>/image`: base layers, then each step's layer,
/// the config changes, and with `squash` everything as one layer.
pub fn commit(
    build_dir: &Path,
    base: &BaseImage,
    steps: &[StepRecord],
    o: &CommitOptions,
) -> Result<Committed, ImageError> {
    let layout = OciLayout::create(&build_dir.join("image"))?;
    let mut b = match &base.image {
        Some(img) => {
            let blobs = base.blobs.as_ref().ok_or_else(|| {
                kiln_oci::FormatError::Inconsistent("a base image without its blobs".into())
            })?;
            for d in &img.manifest.layers {
                link_blob(&blobs.blob_path(&d.digest), &layout, d)?;
            }
            ImageBuilder::from_base(img.config.clone(), &img.manifest)?
        }
        None => ImageBuilder::scratch(&base.platform),
    };
    let step = |created_by: &str| Step {
        created_by: created_by.to_string(),
        created: Some(o.epoch),
        comment: None,
    };
    for s in steps {
        match s {
            StepRecord::Layer {
                created_by,
                layer,
                blob,
            } => {
                let (d, diff_id) = StepRecord::descriptor(layer)?;
                link_blob(blob, &layout, &d)?;
                b.add_layer(d, diff_id, &step(created_by));
            }
            StepRecord::Empty { created_by } => b.add_empty_step(&step(created_by)),
        }
    }
    o.changes.apply(b.container_config_mut())?;
    b.set_created(Some(o.epoch));
    if o.squash {
        let layers: Vec<(Descriptor, Digest)> = b
            .layers()
            .iter()
            .cloned()
            .zip(b.config().rootfs.diff_ids.iter().cloned())
            .collect();
        let n = layers.len();
        let info =
            kiln_oci::squash_layers(&layout, &layers, build_dir, Some(o.epoch), o.compressor)?;
        b.squash_into(
            info.descriptor(),
            info.diff_id.clone(),
            &step(&format!("kiln: {n} layers squashed into one")),
        );
    }
    let built = b.build();
    layout.put_image(&built, None)?;
    let image = layout.read_image_at(built.manifest.clone(), "build", &base.platform)?;
    Ok(Committed {
        layers: built.layers.len(),
        layout,
        image,
        built,
    })
}

/// Writes the image into the OCI layout at `dest` (created if needed; other tags there
/// stay) and names it `tag`.
pub fn write_layout(c: &Committed, dest: &Path, tag: &str) -> Result<(), ImageError> {
    kiln_oci::layout::check_tag(tag)?;
    let out = OciLayout::create(dest)?;
    for d in &c.built.layers {
        link_blob(&c.layout.blob_path(&d.digest), &out, d)?;
    }
    out.put_image(&c.built, Some(tag))?;
    Ok(())
}

/// Writes the image as a docker-archive tar at `dest` (replaced atomically), tagged
/// `repo_tags` (`name:tag`). Returns its size.
pub fn write_archive(c: &Committed, dest: &Path, repo_tags: &[String]) -> Result<u64, ImageError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".kiln-archive-")
        .tempfile_in(dir)
        .map_err(io_err("cannot create a temporary file in", dir))?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
        kiln_oci::write_docker_archive(&c.layout, &c.image, repo_tags, &mut w)?;
        w.flush().map_err(io_err("cannot write", dest))?;
    }
    tmp.as_file()
        .sync_data()
        .map_err(io_err("cannot sync", dest))?;
    let size = tmp.as_file().metadata().map(|m| m.len()).unwrap_or(0);
    tmp.persist(dest)
        .map_err(|e| io_err("cannot store", dest)(e.error))?;
    Ok(size)
}

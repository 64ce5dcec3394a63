//! The container backend of [`Machine`], for the OCI builder: every provisioning step
//! runs in its own container (`kiln_rootfs`: overlayfs over the image so far with a
//! fresh upper directory; mount, pid, uts and ipc namespaces, and a network namespace
//! unless the step holds `net`), entered by kiln's own binary as init. When the step
//! ends the container is stopped (every process gone, the pid namespace with it) and
//! its upper directory becomes the step's layer, which is also the next step's top
//! lower directory.
//!
//! | `Machine` | container |
//! |---|---|
//! | `exec` | [`Container::exec`] (`/bin/sh -c`, output split into lines) |
//! | `upload` | [`Container::upload_file`] |
//! | `upload_tree` | [`Container::upload_tree`] |
//! | `write_file` / `read_file` | [`Container::write_file`] / [`Container::read_file`] |
//! | `download` | [`Container::download_file`] |
//! | `facts` | [`Container::facts`] |
//! | `begin_step` | the cached layer for the step's key (`Skip`), or a new container |
//! | `end_step` | [`Container::stop`], then the upper dir as a layer (or none if unchanged) |
//!
//! Commands run only inside a step: outside one there is no container.
//! Every container is on the build's cleanup stack from the moment it starts, so a
//! Ctrl-C or a failure stops it even when the runner never reaches `end_step`.

mod shell;

use std::fs::File;
use std::io::BufWriter;
#[cfg(test)]
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kiln_oci::{Compressor, LayerOptions, LayerSource};
use kiln_rootfs::{Container, ContainerConfig, ExecRequest, InitProgram, Network};

use crate::cleanup::{CleanupId, CleanupStack};
use crate::host::machine::{
    ExecOutput, Facts, Machine, MachineError, OnOutput, Progress, StepInfo, StepStart, Stream,
    Terminal, UploadPath, Uploaded,
};
use crate::host::oci::store::{BuildDir, LayerMeta, StepMeta, Store, remove_tree};
use crate::host::oci::{StepRecord, diff};

/// How steps run and how their layers are made.
pub struct RootfsSettings {
    pub init: InitProgram,
    /// The environment every command starts with (the base image's `Env`).
    pub env: Vec<(String, String)>,
    /// Working directory of commands (the image's `WorkingDir`, else `/`).
    pub cwd: Option<String>,
    pub hostname: String,
    /// Layer mtimes are clamped to this (reproducible layers).
    pub epoch: i64,
    pub compressor: Arc<dyn Compressor>,
    /// Reuse cached layers (false with `--no-cache`); new layers are cached either way.
    pub read_cache: bool,
    /// Shown in messages (`target()`).
    pub name: String,
}

/// Where the builder's messages go (the build's UI).
pub type Note = Arc<dyn Fn(&str) + Send + Sync>;

struct Current {
    index: usize,
    container: Arc<Container>,
    dir: PathBuf,
    cleanup: CleanupId,
}

#[derive(Default)]
struct State {
    /// Lower directories for the next container, bottom first.
    lowers: Vec<PathBuf>,
    steps: Vec<StepRecord>,
    current: Option<Current>,
}

struct Inner {
    settings: RootfsSettings,
    store: Arc<Store>,
    build: Arc<BuildDir>,
    cleanup: CleanupStack,
    note: Note,
    state: Mutex<State>,
}

/// The build's container machine. Cheap to clone.
#[derive(Clone)]
pub struct RootfsMachine {
    inner: Arc<Inner>,
}

fn failed(e: kiln_rootfs::Error) -> MachineError {
    match e {
        kiln_rootfs::Error::TooLarge { .. } => MachineError::TooLarge(e.to_string()),
        other => MachineError::Failed(other.to_string()),
    }
}

fn local_io(what: &str) -> impl FnOnce(std::io::Error) -> MachineError + '_ {
    move |e| MachineError::Failed(format!("{what}: {e}"))
}

impl RootfsMachine {
    /// A machine whose first container stands on `base` (unpacked layers, bottom first).
    pub fn new(
        settings: RootfsSettings,
        base: Vec<PathBuf>,
        store: Arc<Store>,
        build: Arc<BuildDir>,
        cleanup: CleanupStack,
        note: Note,
    ) -> Self {
        RootfsMachine {
            inner: Arc::new(Inner {
                settings,
                store,
                build,
                cleanup,
                note,
                state: Mutex::new(State {
                    lowers: base,
                    ..State::default()
                }),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What each step contributed so far, in order.
    pub fn steps(&self) -> Vec<StepRecord> {
        self.state().steps.clone()
    }

    /// Whether a step's container is running.
    pub fn in_step(&self) -> bool {
        self.state().current.is_some()
    }

    fn container(&self) -> Result<Arc<Container>, MachineError> {
        self.state()
            .current
            .as_ref()
            .map(|c| c.container.clone())
            .ok_or_else(|| {
                MachineError::Failed(
                    "the oci builder runs commands and file transfers only inside provisioning \
                     steps: there is no container outside a step"
                        .into(),
                )
            })
    }

    /// The cached result of `step`, applied: its layer on top of the lowers.
    fn use_cached(&self, step: &StepInfo) -> Option<String> {
        let entry = self.inner.store.lookup_step(&step.key)?;
        let mut st = self.state();
        match &entry.meta.layer {
            Some(layer) => {
                st.lowers.push(entry.upper());
                st.steps.push(StepRecord::Layer {
                    created_by: step.describe.clone(),
                    layer: layer.clone(),
                    blob: entry.blob(),
                });
            }
            None => st.steps.push(StepRecord::Empty {
                created_by: step.describe.clone(),
            }),
        }
        Some(format!("Using cached layer for step {}", step.index))
    }

    async fn start_container(&self, step: &StepInfo) -> Result<(), MachineError> {
        let s = &self.inner.settings;
        let dir = self.inner.build.path().join(format!("step-{}", step.index));
        remove_tree(&dir);
        for d in ["upper", "work"] {
            std::fs::create_dir_all(dir.join(d))
                .map_err(local_io("creating the step's directories"))?;
        }
        let lowers = self.state().lowers.clone();
        let mut cfg =
            ContainerConfig::new(s.init.clone(), lowers, dir.join("upper"), dir.join("work"));
        cfg.env = s.env.clone();
        cfg.hostname = s.hostname.clone();
        cfg.network = if step.network {
            Network::Host
        } else {
            Network::None
        };
        let c = Arc::new(Container::start(cfg).await.map_err(failed)?);
        let stopper = c.clone();
        let cleanup = self.inner.cleanup.push(
            format!(
                "container of step {} (init pid {})",
                step.index,
                c.init_pid()
            ),
            move || async move {
                stopper.stop().await?;
                Ok(())
            },
        );
        tracing::debug!(step = step.index, pid = c.host_pid(), "container started");
        self.state().current = Some(Current {
            index: step.index,
            container: c,
            dir,
            cleanup,
        });
        Ok(())
    }

    /// Stops the running container, if any; returns its step directory.
    async fn stop_current(&self) -> Result<Option<(usize, PathBuf)>, MachineError> {
        let Some(cur) = self.state().current.take() else {
            return Ok(None);
        };
        let r = cur.container.stop().await;
        // Stopped (or gone trying): the processes are reaped either way.
        self.inner.cleanup.release(cur.cleanup);
        r.map_err(failed)?;
        Ok(Some((cur.index, cur.dir)))
    }

    /// Turns a finished step's directory into its layer (or none) and caches it.
    async fn commit_step(&self, step: &StepInfo, dir: PathBuf) -> Result<(), MachineError> {
        let started = Instant::now();
        let upper = dir.join("upper");
        remove_tree(&dir.join("work"));
        let lowers = self.state().lowers.clone();
        let compressor = self.inner.settings.compressor.clone();
        let epoch = self.inner.settings.epoch;
        let blob = dir.join("layer");
        let written = tokio::task::spawn_blocking(move || {
            write_step_layer(&upper, &lowers, epoch, &*compressor, &blob)
        })
        .await
        .map_err(|e| MachineError::Failed(format!("writing the layer: {e}")))??;
        let meta = StepMeta {
            version: 0,
            created_by: step.describe.clone(),
            layer: written.clone(),
            bytes: 0,
        };
        if written.is_none() {
            remove_tree(&dir.join("upper"));
        }
        let (upper, blob) = match self.inner.store.publish_step(&step.key, &dir, meta) {
            Some(e) => (e.upper(), e.blob()),
            None => (dir.join("upper"), dir.join("layer")),
        };
        let mut st = self.state();
        match written {
            Some(layer) => {
                (self.inner.note)(&format!(
                    "Step {} committed as layer {} ({}) in {:.1}s",
                    step.index,
                    short(&layer.digest),
                    human_bytes(layer.size),
                    started.elapsed().as_secs_f64()
                ));
                st.lowers.push(upper);
                st.steps.push(StepRecord::Layer {
                    created_by: step.describe.clone(),
                    layer,
                    blob,
                });
            }
            None => {
                (self.inner.note)(&format!("Step {} changed no file: no layer", step.index));
                st.steps.push(StepRecord::Empty {
                    created_by: step.describe.clone(),
                });
            }
        }
        Ok(())
    }
}

/// The layer of `upper` written to `blob` (`None` when the step changed nothing).
fn write_step_layer(
    upper: &Path,
    lowers: &[PathBuf],
    epoch: i64,
    compressor: &dyn Compressor,
    blob: &Path,
) -> Result<Option<LayerMeta>, MachineError> {
    let empty =
        diff::effectively_empty(upper, lowers).map_err(local_io("reading the step's changes"))?;
    if empty {
        return Ok(None);
    }
    let tmp = blob.with_extension("tmp");
    let file = File::create(&tmp).map_err(local_io("creating the layer file"))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let info = kiln_oci::write_layer(
        upper,
        &LayerOptions {
            source: LayerSource::OverlayUpper,
            source_date_epoch: Some(epoch),
        },
        compressor,
        &mut out,
    )
    .map_err(|e| MachineError::Failed(format!("writing the layer: {e}")))?;
    let file = out
        .into_inner()
        .map_err(|e| MachineError::Failed(format!("writing the layer: {}", e.error())))?;
    file.sync_data().map_err(local_io("syncing the layer"))?;
    drop(file);
    std::fs::rename(&tmp, blob).map_err(local_io("storing the layer"))?;
    // Blobs are named by their digest and shared by hard links: never written again.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(blob, std::fs::Permissions::from_mode(0o444));
    Ok(Some(LayerMeta {
        media_type: info.compression.layer_media_type().to_string(),
        digest: info.digest.to_string(),
        size: info.size,
        diff_id: info.diff_id.to_string(),
    }))
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn human_bytes(n: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let f = n as f64;
    if n >= 1 << 20 {
        format!("{:.1} MiB", f / f64::from(1u32 << 20))
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", f / 1024.0)
    } else {
        format!("{n} bytes")
    }
}

fn map_stream(s: kiln_rootfs::Stream) -> Stream {
    match s {
        kiln_rootfs::Stream::Stdout => Stream::Stdout,
        kiln_rootfs::Stream::Stderr => Stream::Stderr,
    }
}

#[async_trait::async_trait]
impl Machine for RootfsMachine {
    fn target(&self) -> String {
        format!("container {}", self.inner.settings.name)
    }

    async fn exec(
        &self,
        command: &str,
        env: &[(String, String)],
        on_output: OnOutput<'_>,
    ) -> Result<ExecOutput, MachineError> {
        let c = self.container()?;
        let mut req = ExecRequest::new(command);
        req.env = env.to_vec();
        req.cwd = self.inner.settings.cwd.clone();
        // Raw chunks, as over SSH: the machine facade splits lines and redacts.
        let out = c
            .exec(&req, &mut |s, d| on_output(map_stream(s), d))
            .await
            .map_err(failed)?;
        Ok(ExecOutput {
            exit_code: out.exit_code,
            signal: out.signal,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    async fn upload(
        &self,
        src: &cap_std::fs::File,
        dest: &str,
        mode: Option<u32>,
        progress: Progress<'_>,
    ) -> Result<Uploaded, MachineError> {
        let c = self.container()?;
        let f = src.try_clone().map_err(local_io("opening the file"))?;
        let bytes = c
            .upload_file(f.into_std(), dest, mode, progress)
            .await
            .map_err(failed)?;
        Ok(Uploaded {
            bytes,
            via: UploadPath::Normal,
            retried: false,
        })
    }

    async fn upload_tree(
        &self,
        src: &cap_std::fs::Dir,
        dest: &str,
        progress: Progress<'_>,
    ) -> Result<u64, MachineError> {
        let c = self.container()?;
        let d = src.try_clone().map_err(local_io("opening the directory"))?;
        c.upload_tree(d.into_std_file(), dest, progress)
            .await
            .map_err(failed)
    }

    async fn write_file(
        &self,
        dest: &str,
        contents: &[u8],
        mode: Option<u32>,
    ) -> Result<(), MachineError> {
        let c = self.container()?;
        c.write_file(dest, contents, mode).await.map_err(failed)
    }

    async fn read_file(&self, path: &str, max: u64) -> Result<Vec<u8>, MachineError> {
        let c = self.container()?;
        c.read_file(path, max).await.map_err(failed)
    }

    async fn download(
        &self,
        remote: &str,
        local: &mut cap_std::fs::File,
        progress: Progress<'_>,
    ) -> Result<u64, MachineError> {
        let c = self.container()?;
        let f = local
            .try_clone()
            .map_err(local_io("opening the local file"))?;
        c.download_file(remote, f.into_std(), progress)
            .await
            .map_err(failed)
    }

    async fn facts(&self) -> Result<Facts, MachineError> {
        let c = self.container()?;
        c.facts().await.map_err(failed)
    }

    /// A container does not drop its connection on purpose; if it died, it stays dead.
    async fn reconnect(&self) -> Result<(), MachineError> {
        match self.container()?.is_running() {
            true => Ok(()),
            false => Err(MachineError::Failed(
                "the step's container is gone and cannot be reconnected to".into(),
            )),
        }
    }

    async fn close(&self) {
        if let Ok(Some((_, dir))) = self.stop_current().await {
            remove_tree(&dir);
        }
    }

    fn wants_step_keys(&self) -> bool {
        true
    }

    /// A shell in the step's container: at `--on-error=ask` the failed step's
    /// container is kept until the menu is left, so this is the state the step left.
    async fn interactive_shell(&self, term: &Terminal) -> Result<Option<u32>, MachineError> {
        let pid = self
            .state()
            .current
            .as_ref()
            .map(|c| c.container.host_pid())
            .ok_or_else(|| {
                MachineError::Failed(
                    "no container is running here: a shell opens in a step's container \
                     (at a failed step or before one with --debug), not at a breakpoint() \
                     between steps"
                        .into(),
                )
            })?;
        let s = &self.inner.settings;
        shell::enter(pid, &s.env, s.cwd.as_deref(), term).await
    }

    fn login_command(&self) -> Option<String> {
        let pid = self.state().current.as_ref()?.container.host_pid();
        Some(shell::command_line(pid))
    }

    async fn begin_step(&self, step: &StepInfo) -> Result<StepStart, MachineError> {
        if self.in_step() {
            return Err(MachineError::Failed(format!(
                "step {} began while another step's container was running",
                step.index
            )));
        }
        if self.inner.settings.read_cache
            && let Some(reason) = self.use_cached(step)
        {
            return Ok(StepStart::Skip { reason });
        }
        self.start_container(step).await?;
        Ok(StepStart::Run)
    }

    async fn end_step(&self, step: &StepInfo, ok: bool) -> Result<(), MachineError> {
        let Some((index, dir)) = self.stop_current().await? else {
            return Ok(());
        };
        if index != step.index {
            remove_tree(&dir);
            return Err(MachineError::Failed(format!(
                "step {} ended, but the running container was step {index}'s",
                step.index
            )));
        }
        if !ok {
            remove_tree(&dir);
            return Ok(());
        }
        let r = self.commit_step(step, dir.clone()).await;
        if r.is_err() {
            remove_tree(&dir);
        }
        r
    }
}

/// Writes `bytes` to a file: used by tests and tools that fake a layer.
#[cfg(test)]
fn write(path: &Path, bytes: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(bytes).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_uppers_write_no_layer_and_changed_ones_a_reproducible_one() {
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("lower");
        let upper = t.path().join("upper");
        std::fs::create_dir_all(lower.join("tmp")).unwrap();
        std::fs::create_dir_all(upper.join("tmp")).unwrap();
        let lowers = vec![lower];
        let gz = kiln_oci::Gzip::default();
        let blob = t.path().join("layer");
        assert!(
            write_step_layer(&upper, &lowers, 0, &gz, &blob)
                .unwrap()
                .is_none()
        );
        assert!(!blob.exists());
        write(&upper.join("tmp/f"), b"hello");
        let a = write_step_layer(&upper, &lowers, 0, &gz, &blob)
            .unwrap()
            .unwrap();
        let bytes = std::fs::read(&blob).unwrap();
        std::fs::remove_file(&blob).unwrap();
        let b = write_step_layer(&upper, &lowers, 0, &gz, &blob)
            .unwrap()
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(bytes, std::fs::read(&blob).unwrap());
        assert_eq!(short(&a.digest).len(), 12);
    }
}

//! The step cache of a QEMU build: after each successful step the VM's state goes into
//! the store (`host::vm_cache`), and the next build restores the longest cached prefix
//! of its steps instead of booting and re-running them.
//!
//! Capturing step k (the VM keeps running; it is paused twice for milliseconds plus the
//! memory snapshot):
//!
//! 1. `sync` and `fsfreeze -f` every mounted disk file system over the build's SSH
//!    session, pause the VM, and switch its disk to a new overlay
//!    (`blockdev-snapshot-sync`): the old top, quiesced, becomes the step's *disk
//!    layer*. Resume, thaw.
//! 2. Pause again, `savevm` (an internal qcow2 snapshot: memory and device state) into
//!    the disk's top, switch to a new overlay again: the old top becomes the *memory
//!    layer* (the writes made since thaw, plus the snapshot). Resume.
//!
//! The memory snapshot is taken with the file systems thawed, so a restored guest is a
//! running, writable machine (a frozen one could not log an SSH user in on some
//! images). Why `savevm` and not `migrate` to a file: `migrate` to `file:`/`exec:`
//! failed under TCG on this project's CI with "Error in migration completion: Bad
//! address" (issue 14) while `savevm` worked; and an internal snapshot keeps a step's
//! memory inside the very file that holds the disk state it belongs to, so the pair is
//! published (and pruned) as one and cannot tear. The price is a copy of the memory
//! layer per restore (`loadvm` writes into the image it loads from).
//!
//! The VM's disk keeps its path (the builder's `.kiln-work.qcow2`) through all this:
//! each new overlay is created under a name of its own beside it (`.kiln-work.<layer>
//! .qcow2`, the name qemu knows it by) and `.kiln-work.qcow2` becomes a hard link to
//! it; each sealed top is moved into the store by the name qemu knows. Never renaming
//! a file *to* a name qemu holds matters: `blockdev-snapshot-sync` reopens the old top
//! read-only **by its file name**, so a new file put at that name would become the
//! disk's backing file and the guest would see I/O errors (it did: ext4 went
//! read-only). Layers are backed by absolute paths inside the store, so the final
//! conversion reads the whole chain down to the base image.
//!
//! Restoring step k: copy the memory layer to the work disk and start qemu with
//! `-loadvm` (no boot), wait for the guest's SSH banner, then the SSH connection is
//! opened anew, pinned to the host key recorded with the state, and the guest's clock
//! set. Where that cannot work (another qemu or machine type, other VM settings, no
//! memory layer, qemu refuses the snapshot, the guest does not answer) the disk layer
//! is booted instead, and the one line saying why is shown.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};

use super::{QemuError, Vm, VmSpec};
use crate::cleanup::CleanupStack;
use crate::host::image;
use crate::host::machine::{
    ExecOutput, Facts, Machine, MachineError, OnOutput, Progress, StepInfo, StepStart, Uploaded,
};
use crate::host::vm_cache::{self, Entry, Hold, LayerId, MemoryState, SNAPSHOT_TAG, VmCache};

/// How long a memory-restored guest may take to show its SSH banner before kiln gives
/// up on the memory state and boots the disk layer instead.
const RESTORED_BANNER_WAIT: Duration = Duration::from_secs(90);
/// How long the capture waits for a hot-plugged upload disk to go away.
const DETACH_WAIT: Duration = Duration::from_secs(10);
/// Freezing, thawing and syncing a guest; generous for a loaded TCG host.
const GUEST_COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// What a build keeps of its step states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// No step cache (`--no-cache`).
    Off,
    /// Disk layers only: a rebuild boots from the cached disk.
    Disk,
    /// Disk and memory: a rebuild does not boot at all.
    #[default]
    Memory,
}

/// One step of the build as planned before the VM starts.
#[derive(Debug, Clone)]
pub struct PlannedStep {
    pub index: usize,
    pub key: String,
    pub describe: String,
}

/// The state the VM comes back in, chosen before it starts.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The deepest cached step.
    pub entry: Entry,
}

/// How the VM was actually started.
#[derive(Debug, Clone, PartialEq)]
pub enum Restored {
    /// No cached state: a normal boot.
    Nothing,
    /// From the memory state after step `step`: no boot.
    Memory { step: usize, seconds: f64 },
    /// From the disk layer after step `step`, booted; `why` memory was not used.
    Disk { step: usize, why: String },
}

/// The name qemu opened the disk's current top by, when it is not the work disk's own
/// (after a capture), with the cleanup entry that removes that name.
type Top = Option<(PathBuf, crate::cleanup::CleanupId)>;

struct Capture {
    /// The layers under the VM's current disk, bottom up.
    chain: Vec<LayerId>,
    /// The key of the last step captured (or restored).
    parent: Option<String>,
    /// Why nothing more is captured, once that is so.
    off: Option<String>,
    /// Why memory states are no longer taken (disk layers still are).
    no_memory: Option<String>,
    /// Step index → key of what was restored (checked against the runner's keys).
    restored_keys: Vec<(usize, String)>,
    top: Top,
}

/// The step cache of one QEMU build.
pub struct VmStepCache {
    store: VmCache,
    hold: Hold,
    build: String,
    mode: CacheMode,
    hit: Option<Hit>,
    /// The VM's disk, absolute.
    work: OnceLock<PathBuf>,
    base: OnceLock<Option<PathBuf>>,
    vm: OnceLock<Arc<Vm>>,
    /// The build's cleanup stack, for the names new disk tops are created under.
    cleanup: OnceLock<CleanupStack>,
    devices: OnceLock<String>,
    restored: Mutex<Restored>,
    capture: tokio::sync::Mutex<Capture>,
    /// Guest facts for the quiesce commands (root or sudo).
    root_user: OnceLock<bool>,
}

impl std::fmt::Debug for VmStepCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmStepCache")
            .field("build", &self.build)
            .field("mode", &self.mode)
            .field("hit", &self.hit.as_ref().map(|h| h.entry.step))
            .finish()
    }
}

fn short(key: &str) -> &str {
    key.get(..12).unwrap_or(key)
}

impl VmStepCache {
    /// Looks up the longest cached prefix of `planned` (stopping before `stop_at`, a
    /// step the user wants to reach live, e.g. a breakpoint).
    pub fn open(
        store: VmCache,
        build: &str,
        mode: CacheMode,
        planned: Vec<PlannedStep>,
        stop_at: Option<usize>,
    ) -> Result<Arc<Self>, vm_cache::VmCacheError> {
        let hold = store.hold()?;
        let mut hit = None;
        let mut restored_keys = Vec::new();
        for p in &planned {
            if stop_at.is_some_and(|s| p.index >= s) {
                break;
            }
            match store.lookup(&p.key) {
                Ok(entry) => {
                    restored_keys.push((p.index, p.key.clone()));
                    hit = Some(Hit { entry });
                }
                Err(why) => {
                    tracing::debug!(
                        step = p.index,
                        key = short(&p.key),
                        "step cache miss: {why}"
                    );
                    break;
                }
            }
        }
        if let Some(h) = &hit {
            for l in &h.entry.chain {
                hold.add(l)?;
            }
            store.touch(&h.entry.key);
        }
        // The VM's disk will be a copy of the memory layer or a new overlay on the disk
        // layer: either way backed by the disk layer, so that is the top of the chain.
        let mut chain = hit
            .as_ref()
            .map(|h| h.entry.chain.clone())
            .unwrap_or_default();
        if let Some(m) = hit.as_ref().and_then(|h| h.entry.memory.as_ref())
            && chain.last() == Some(&m.layer)
        {
            chain.pop();
        }
        let parent = hit.as_ref().map(|h| h.entry.key.clone());
        Ok(Arc::new(VmStepCache {
            store,
            hold,
            build: build.to_string(),
            mode,
            hit,
            work: OnceLock::new(),
            base: OnceLock::new(),
            vm: OnceLock::new(),
            cleanup: OnceLock::new(),
            devices: OnceLock::new(),
            restored: Mutex::new(Restored::Nothing),
            capture: tokio::sync::Mutex::new(Capture {
                chain,
                parent,
                off: None,
                no_memory: None,
                restored_keys,
                top: None,
            }),
            root_user: OnceLock::new(),
        }))
    }

    pub fn hit(&self) -> Option<&Hit> {
        self.hit.as_ref()
    }

    pub fn restored(&self) -> Restored {
        self.restored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_restored(&self, r: Restored) {
        *self.restored.lock().unwrap_or_else(|p| p.into_inner()) = r;
    }

    /// The host key a restored guest must present (memory restores only: a booted
    /// guest may have regenerated its keys).
    pub fn pinned_host_key(&self) -> Option<String> {
        match self.restored() {
            Restored::Memory { .. } => self.hit.as_ref()?.entry.host_key.clone(),
            _ => None,
        }
    }

    /// Creates the VM's disk at `work` from the cached state (a copy of the memory
    /// layer when it will be loaded, an overlay on the disk layer otherwise), with its
    /// removal on `cleanup`. Returns the cleanup id; `None` when nothing is cached (the
    /// builder then makes its usual overlay).
    pub async fn prepare_disk(
        &self,
        work: &Path,
        base: Option<&Path>,
        cleanup: &CleanupStack,
    ) -> Result<Option<crate::cleanup::CleanupId>, String> {
        let work = std::path::absolute(work).map_err(|e| format!("{}: {e}", work.display()))?;
        let _ = self.work.set(work.clone());
        let _ = self.base.set(base.map(Path::to_path_buf));
        let Some(hit) = &self.hit else {
            return Ok(None);
        };
        let memory = self.memory_usable(&hit.entry);
        let id = match &memory {
            Ok(m) => copy_layer(&self.store.layer_path(&m.layer), &work, cleanup)?,
            Err(_) => {
                let disk = self.store.layer_path(&hit.entry.disk);
                image::create_overlay(&disk, &work, None, cleanup)
                    .await
                    .map_err(|e| e.to_string())?
                    .cleanup
            }
        };
        Ok(Some(id))
    }

    /// Whether the hit's memory layer can be loaded (before the VM's settings are
    /// known: only whether there is one and the mode allows it).
    fn memory_usable<'e>(&self, entry: &'e Entry) -> Result<&'e MemoryState, String> {
        if self.mode != CacheMode::Memory {
            return Err("memory restores are off (KILN_CACHE_MEMORY=0)".into());
        }
        entry
            .memory
            .as_ref()
            .ok_or_else(|| format!("step {} was cached without its memory state", entry.step))
    }

    /// Starts the VM for this build: from the cached memory state when it matches the
    /// VM's settings (no boot), else as `spec` says (booting the restored disk, if any).
    pub async fn start(
        &self,
        mut spec: VmSpec,
        cleanup: &CleanupStack,
    ) -> Result<Arc<Vm>, QemuError> {
        let devices = devices_digest(&spec).await;
        let _ = self.devices.set(devices.clone());
        let _ = self.cleanup.set(cleanup.clone());
        let Some(hit) = &self.hit else {
            let vm = Arc::new(super::start(spec, cleanup).await?);
            self.after_start(&vm).await;
            return Ok(vm);
        };
        let step = hit.entry.step;
        // An installer ISO is for the first boot only.
        spec.cdrom = None;
        let why = match self.memory_usable(&hit.entry) {
            Err(why) => why,
            Ok(m) if m.devices != devices => format!(
                "its memory state was saved by another qemu or with other VM settings \
                 ({} vs {})",
                m.qemu_version,
                qemu_version().await
            ),
            Ok(_) => {
                let started = Instant::now();
                let mut with_state = spec.clone();
                with_state.loadvm = Some(SNAPSHOT_TAG.to_string());
                match super::start(with_state, cleanup).await {
                    Ok(vm) => {
                        let vm = Arc::new(vm);
                        match self.settle_restored(&vm).await {
                            Ok(()) => {
                                self.set_restored(Restored::Memory {
                                    step,
                                    seconds: started.elapsed().as_secs_f64(),
                                });
                                self.after_start(&vm).await;
                                return Ok(vm);
                            }
                            Err(why) => {
                                if vm.kill().await {
                                    cleanup.release(vm.cleanup_id());
                                }
                                why
                            }
                        }
                    }
                    Err(QemuError::EarlyExit { stderr, .. }) => {
                        format!("qemu refused its memory state: {}", last_line(&stderr))
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        // The disk file holds the memory layer's copy: replace it with an overlay on
        // the disk layer (same cleanup entry: it removes whatever is at the path).
        let work = self
            .work
            .get()
            .cloned()
            .unwrap_or_else(|| spec.disk.clone());
        if self.memory_usable(&hit.entry).is_ok() {
            let _ = std::fs::remove_file(&work);
            let disk = self.store.layer_path(&hit.entry.disk);
            let out = tokio::process::Command::new(image_tool())
                .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(&disk)
                .arg(&work)
                .output()
                .await
                .map_err(|e| QemuError::Io {
                    what: "cannot run qemu-img for",
                    path: work.clone(),
                    source: e,
                })?;
            if !out.status.success() {
                return Err(QemuError::BadArgs(format!(
                    "cannot make a disk on the cached layer {}: {}",
                    disk.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        self.set_restored(Restored::Disk { step, why });
        let vm = Arc::new(super::start(spec, cleanup).await?);
        self.after_start(&vm).await;
        Ok(vm)
    }

    /// After `-loadvm`: the internal snapshot leaves the work disk (it would otherwise
    /// be carried into the next layer), and the guest's SSH server answers.
    async fn settle_restored(&self, vm: &Vm) -> Result<(), String> {
        vm.qmp(
            "blockdev-snapshot-delete-internal-sync",
            Some(json!({ "device": "disk0", "name": SNAPSHOT_TAG })),
        )
        .await
        .map_err(|e| format!("cannot drop the loaded snapshot from the work disk: {e}"))?;
        wait_for_banner(vm, RESTORED_BANNER_WAIT).await
    }

    async fn after_start(&self, vm: &Arc<Vm>) {
        let _ = self.vm.set(vm.clone());
        // Another writable disk (a qemuargs data disk) is state the cache does not
        // keep: caching steps would restore it wrong.
        if let Some(other) = other_writable_drive(vm).await {
            let mut c = self.capture.lock().await;
            c.off = Some(format!(
                "the VM has another writable disk ({other}) the step cache does not keep"
            ));
        }
    }

    /// What the user should read about the restore, once, after the VM started.
    pub fn restore_line(&self) -> Option<String> {
        match self.restored() {
            Restored::Nothing => None,
            Restored::Memory { step, seconds } => Some(format!(
                "Restored the VM's memory state after step {step} in {seconds:.1}s (no boot)"
            )),
            Restored::Disk { step, why } => {
                Some(format!("Booting the cached disk after step {step}: {why}"))
            }
        }
    }

    /// Why nothing is being captured, if so (for one warning).
    pub async fn off_reason(&self) -> Option<String> {
        self.capture.lock().await.off.clone()
    }

    /// Stops capturing for the rest of the build (a step was retried or skipped by
    /// hand: later states would not be what the steps as declared produce).
    pub async fn stop_capturing(&self, why: &str) {
        let mut c = self.capture.lock().await;
        if c.off.is_none() {
            c.off = Some(why.to_string());
        }
    }

    /// After a memory restore: the guest's clock is where it was when the state was
    /// saved; set it, and check the machine answers.
    pub async fn after_connect(&self, m: &dyn Machine) -> Result<(), String> {
        if let Ok(f) = m.facts().await {
            let _ = self
                .root_user
                .set(f.get("user").is_some_and(|u| u == "root"));
        }
        if !matches!(self.restored(), Restored::Memory { .. }) {
            return Ok(());
        }
        let now = vm_cache::unix_now();
        let sudo = self.sudo();
        let cmd = format!("{sudo}date -u -s @{now} >/dev/null && echo kiln-ok");
        let out = guest(m, &cmd).await.map_err(|e| e.to_string())?;
        if !String::from_utf8_lossy(&out.stdout).contains("kiln-ok") {
            // Not fatal: a guest that cannot set its clock still runs.
            let check = guest(m, "echo kiln-ok").await.map_err(|e| e.to_string())?;
            if !String::from_utf8_lossy(&check.stdout).contains("kiln-ok") {
                return Err("the restored machine does not answer commands".into());
            }
            tracing::warn!(
                "could not set the restored guest's clock: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn sudo(&self) -> &'static str {
        if self.root_user.get().copied().unwrap_or(true) {
            ""
        } else {
            "sudo -n "
        }
    }

    /// The runner is about to run step `info`: skip it if it is part of the restored
    /// prefix.
    async fn begin(&self, info: &StepInfo) -> Result<StepStart, MachineError> {
        let c = self.capture.lock().await;
        let Some(pos) = c.restored_keys.iter().position(|(i, _)| *i == info.index) else {
            return Ok(StepStart::Run);
        };
        if c.restored_keys[pos].1 != info.key {
            return Err(MachineError::Failed(format!(
                "the inputs of step {} changed after kiln restored the cached state; run the build again",
                info.index
            )));
        }
        let last = pos + 1 == c.restored_keys.len();
        let reason = if last {
            format!(
                "Using cached state after step {} (key {}…)",
                info.index,
                short(&info.key)
            )
        } else {
            format!(
                "Step {}/{} ({}): cached",
                info.index, info.total, info.describe
            )
        };
        Ok(StepStart::Skip { reason })
    }

    /// Step `info` succeeded: capture the VM's state into the store.
    async fn end(&self, inner: &dyn Machine, info: &StepInfo) -> Result<(), MachineError> {
        let mut c = self.capture.lock().await;
        if c.off.is_some() || self.mode == CacheMode::Off {
            return Ok(());
        }
        let Some(vm) = self.vm.get().cloned() else {
            return Ok(());
        };
        let Some(work) = self.work.get().cloned() else {
            return Ok(());
        };
        if !vm.is_running() {
            c.off = Some("the VM stopped".into());
            return Ok(());
        }
        let started = Instant::now();
        let with_memory = self.mode == CacheMode::Memory && c.no_memory.is_none() && {
            match wait_uploads_detached(&vm).await {
                Ok(()) => true,
                Err(why) => {
                    tracing::info!(step = info.index, "no memory state for this step: {why}");
                    false
                }
            }
        };
        let virtual_size = query_virtual_size(&vm).await.map_err(fail)?;

        // 1. The disk layer, with the file systems frozen.
        let frozen = self.freeze(inner).await;
        let disk = LayerId::new();
        self.hold.add(&disk).map_err(fail)?;
        let sealed = self
            .seal_top(&vm, &work, &mut c.top, &disk, virtual_size)
            .await;
        if frozen {
            self.thaw(inner).await?;
        }
        sealed?;
        c.chain.push(disk.clone());

        // 2. The memory layer.
        let mut memory = None;
        if with_memory {
            scrub_free_memory(inner).await;
            match self.save_memory(&vm, &work, &mut c.top, virtual_size).await {
                Ok(m) => {
                    c.chain.push(m.layer.clone());
                    memory = Some(m);
                }
                Err(SaveError::Refused(why)) => {
                    tracing::warn!("memory states are off for this build: {why}");
                    c.no_memory = Some(why);
                }
                Err(SaveError::Broken(e)) => return Err(e),
            }
        }
        let host_key = inner.host_key().await;
        let entry = Entry {
            v: 1,
            key: info.key.clone(),
            parent: c.parent.clone(),
            build: self.build.clone(),
            step: info.index,
            total: info.total,
            describe: info.describe.clone(),
            created: vm_cache::unix_now(),
            disk,
            quiesced: frozen,
            memory,
            chain: c.chain.clone(),
            base: self.base.get().cloned().flatten(),
            host_key,
            virtual_size,
        };
        self.store.publish(&entry).map_err(fail)?;
        c.parent = Some(info.key.clone());
        tracing::info!(step = info.index, key = short(&info.key), memory = entry.memory.is_some(),
            elapsed = ?started.elapsed(), "step state cached");
        Ok(())
    }

    /// `sync` and freeze the guest's disk file systems; false if the guest cannot
    /// (not Linux, no fsfreeze, no root): the layer is then only synced.
    async fn freeze(&self, m: &dyn Machine) -> bool {
        let sudo = self.sudo();
        let script = format!(
            "sync; m=$(awk '$1 ~ /^\\/dev\\// && $4 ~ /(^|,)rw(,|$)/ && $3 ~ /^(ext[234]|xfs|btrfs)$/ {{print $2}}' /proc/mounts | sort -r); \
             : > /dev/shm/kiln-frozen; \
             for d in $m; do {sudo}fsfreeze -f \"$d\" && echo \"$d\" >> /dev/shm/kiln-frozen || exit 1; done; echo kiln-frozen"
        );
        match guest(m, &script).await {
            Ok(o) if o.success() && String::from_utf8_lossy(&o.stdout).contains("kiln-frozen") => {
                true
            }
            Ok(o) => {
                tracing::info!(
                    "cannot freeze the guest's file systems (exit {}): {}; the layer is synced only",
                    o.exit_code,
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                // Thaw whatever did freeze.
                let _ = self.thaw(m).await;
                false
            }
            Err(e) => {
                tracing::info!("cannot freeze the guest's file systems: {e}");
                false
            }
        }
    }

    async fn thaw(&self, m: &dyn Machine) -> Result<(), MachineError> {
        let sudo = self.sudo();
        let script = format!(
            "r=0; while read -r d; do {sudo}fsfreeze -u \"$d\" || r=1; done < /dev/shm/kiln-frozen; rm -f /dev/shm/kiln-frozen; exit $r"
        );
        let out = guest(m, &script).await?;
        if out.success() {
            Ok(())
        } else {
            Err(MachineError::Failed(format!(
                "cannot thaw the guest's file systems after the step cache froze them: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Pauses the VM, switches its disk to a fresh overlay and moves the old top into
    /// the store as `layer`. The VM runs again when this returns, even on failure.
    async fn seal_top(
        &self,
        vm: &Vm,
        work: &Path,
        top: &mut Top,
        layer: &LayerId,
        virtual_size: u64,
    ) -> Result<(), MachineError> {
        vm.qmp("stop", None).await.map_err(fail)?;
        let r = self.switch_top(vm, work, top, layer, virtual_size).await;
        let resumed = vm.qmp("cont", None).await.map_err(fail);
        r?;
        resumed.map(|_| ())
    }

    /// Puts a new overlay on the disk (qemu writes it from now on) and moves the old
    /// top into the store as `layer`; `work` then names the new top (a hard link) and
    /// `top` the name qemu knows it by.
    async fn switch_top(
        &self,
        vm: &Vm,
        work: &Path,
        top: &mut Top,
        layer: &LayerId,
        virtual_size: u64,
    ) -> Result<(), MachineError> {
        let dest = self.store.layer_path(layer);
        // A name never used before: qemu reopens the old top by its name (below).
        let next = work.with_extension(format!("{}.qcow2", &layer.as_str()[..12]));
        let old_top = top.as_ref().map_or(work.to_path_buf(), |(p, _)| p.clone());
        // The new top names its backing file by its final place in the store.
        let out = tokio::process::Command::new(image_tool())
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-u", "-b"])
            .arg(&dest)
            .arg(&next)
            .arg(virtual_size.to_string())
            .output()
            .await
            .map_err(|e| MachineError::Failed(format!("cannot run qemu-img: {e}")))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&next);
            return Err(MachineError::Failed(format!(
                "qemu-img cannot create {}: {}",
                next.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let abs = std::path::absolute(&next).unwrap_or(next.clone());
        if let Err(e) = vm
            .qmp(
                "blockdev-snapshot-sync",
                Some(json!({
                    "device": "disk0", "snapshot-file": abs.display().to_string(),
                    "format": "qcow2", "mode": "existing",
                })),
            )
            .await
        {
            let _ = std::fs::remove_file(&next);
            return Err(fail(e));
        }
        // The new top's name is removed with the build (unless a later capture moves it
        // into the store first).
        let removal = self
            .cleanup
            .get()
            .map(|c| crate::host::image::push_remove(c, &next, "disk"));
        // From here qemu writes the new top and only reads the old one, through open
        // files: moving the old one by name is safe. If the move fails, the new top is
        // pointed back at where the old one still is.
        if let Err(e) = move_file(&old_top, &dest) {
            let _ = vm
                .qmp(
                    "change-backing-file",
                    Some(json!({ "device": "disk0", "image-node-name": top_node(vm).await.unwrap_or_default(),
                                 "backing-file": old_top.display().to_string() })),
                )
                .await;
            if let Some(id) = removal {
                *top = Some((next, id));
            }
            return Err(MachineError::Failed(format!(
                "cannot move the step's disk layer into the step cache ({}): {e}",
                dest.display()
            )));
        }
        if let Some((_, id)) = top.take()
            && let Some(c) = self.cleanup.get()
        {
            // That name is in the store now.
            c.release(id);
        }
        if let Some(id) = removal {
            *top = Some((next.clone(), id));
        }
        // `work` names the new top: a hard link put in place atomically.
        let link = work.with_extension("link.qcow2");
        let _ = std::fs::remove_file(&link);
        std::fs::hard_link(&next, &link)
            .and_then(|()| std::fs::rename(&link, work))
            .map_err(|e| {
                let _ = std::fs::remove_file(&link);
                MachineError::Failed(format!(
                    "cannot link {} to {}: {e}",
                    work.display(),
                    next.display()
                ))
            })
    }

    async fn save_memory(
        &self,
        vm: &Vm,
        work: &Path,
        top: &mut Top,
        virtual_size: u64,
    ) -> Result<MemoryState, SaveError> {
        let layer = LayerId::new();
        self.hold
            .add(&layer)
            .map_err(|e| SaveError::Broken(fail(e)))?;
        vm.qmp("stop", None)
            .await
            .map_err(|e| SaveError::Broken(fail(e)))?;
        let result = async {
            let said = vm
                .qmp(
                    "human-monitor-command",
                    Some(json!({ "command-line": format!("savevm {SNAPSHOT_TAG}") })),
                )
                .await
                .map_err(|e| SaveError::Refused(e.to_string()))?;
            // HMP answers errors as text.
            if let Some(text) = said.as_str().filter(|t| !t.trim().is_empty()) {
                return Err(SaveError::Refused(format!("qemu: {}", text.trim())));
            }
            self.switch_top(vm, work, top, &layer, virtual_size)
                .await
                .map_err(SaveError::Broken)
        }
        .await;
        let resumed = vm.qmp("cont", None).await;
        result?;
        resumed.map_err(|e| SaveError::Broken(fail(e)))?;
        let (qemu_version, machine) = running_versions(vm).await;
        Ok(MemoryState {
            vm_state_bytes: vm_cache::file_bytes(&self.store.layer_path(&layer)),
            layer,
            qemu_version,
            machine,
            devices: self.devices.get().cloned().unwrap_or_default(),
        })
    }
}

enum SaveError {
    /// qemu would not snapshot this VM: go on without memory states.
    Refused(String),
    /// The disk chain may be inconsistent: the build cannot go on.
    Broken(MachineError),
}

fn fail(e: impl std::fmt::Display) -> MachineError {
    MachineError::Failed(format!("step cache: {e}"))
}

fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_string()
}

fn image_tool() -> PathBuf {
    std::env::var_os("KILN_QEMU_IMG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-img"))
}

async fn guest(m: &dyn Machine, cmd: &str) -> Result<ExecOutput, MachineError> {
    match tokio::time::timeout(
        GUEST_COMMAND_TIMEOUT,
        m.exec(cmd, &[], &mut |_, out| {
            tracing::debug!("step cache (guest): {}", String::from_utf8_lossy(out));
        }),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(MachineError::Failed(format!(
            "the guest did not finish `{}` within {} s",
            cmd.split(';').next().unwrap_or(cmd),
            GUEST_COMMAND_TIMEOUT.as_secs()
        ))),
    }
}

/// The guest's free memory is zeroed before its memory is saved, because `savevm`
/// writes every page that is not all zeros, and a page the guest has freed still holds
/// what it held. Without this a step's memory state is the whole RAM the guest ever
/// touched: 498 MiB of a 512 MiB VM after a 200 MiB upload filled its page cache,
/// against 207 MiB before it. One `dd` allocates nearly all the memory the guest can
/// spare (the kernel hands it zeroed pages, taking back clean page cache to do so),
/// fills it from `/dev/zero` and exits, which leaves those pages free and zero. It
/// leaves a margin (a tenth of the available memory, at least 64 MiB) so nothing else
/// in the guest runs short, needs no root, and is best effort: a guest without
/// `/proc/meminfo` or `dd` just has a larger state.
async fn scrub_free_memory(m: &dyn Machine) {
    const SCRIPT: &str = "a=$(awk '/^MemAvailable:/ {print int($2/1024)}' /proc/meminfo 2>/dev/null); \
        a=${a:-0}; k=$((a / 10)); [ \"$k\" -ge 64 ] || k=64; n=$((a - k)); \
        [ \"$n\" -ge 16 ] || exit 0; \
        dd if=/dev/zero of=/dev/null bs=${n}M count=1 2>/dev/null; echo \"scrubbed ${n} MiB\"";
    let started = Instant::now();
    match guest(m, SCRIPT).await {
        Ok(o) => tracing::debug!(
            exit = o.exit_code,
            out = %String::from_utf8_lossy(&o.stdout).trim(),
            elapsed = ?started.elapsed(),
            "zeroed the guest's free memory before savevm"
        ),
        Err(e) => tracing::debug!("could not zero the guest's free memory: {e}"),
    }
}

/// Copies a cached layer to `work` (copy_file_range: a reflink where the file system
/// has them), with its removal on `cleanup`.
fn copy_layer(
    layer: &Path,
    work: &Path,
    cleanup: &CleanupStack,
) -> Result<crate::cleanup::CleanupId, String> {
    if work.exists() {
        return Err(format!(
            "{} already exists: kiln does not overwrite disks; remove it",
            work.display()
        ));
    }
    let id = crate::host::image::push_remove(cleanup, work, "disk");
    if let Err(e) = std::fs::copy(layer, work) {
        let _ = std::fs::remove_file(work);
        return Err(format!(
            "cannot copy {} to {}: {e}",
            layer.display(),
            work.display()
        ));
    }
    Ok(id)
}

/// Renames, or copies and removes across file systems (the cache and the output
/// directory may be on different ones).
fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let part = to.with_extension("qcow2.part");
            std::fs::copy(from, &part)?;
            std::fs::File::open(&part)?.sync_all()?;
            std::fs::rename(&part, to)?;
            std::fs::remove_file(from)
        }
        Err(e) => Err(e),
    }
}

async fn qemu_version() -> String {
    static V: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    V.get_or_init(|| async {
        match tokio::process::Command::new(super::qemu_binary())
            .arg("--version")
            .output()
            .await
        {
            Ok(o) => String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
            Err(e) => format!("unknown ({e})"),
        }
    })
    .await
    .clone()
}

/// What a memory state depends on besides the step keys: the qemu binary and the
/// settings that shape the VM's devices. Paths and ports are left out (they change
/// between builds and do not reach the guest).
async fn devices_digest(spec: &VmSpec) -> String {
    let mut h = Sha256::new();
    h.update(qemu_version().await.as_bytes());
    h.update(format!(
        "\0{}\0{:?}\0{}\0{}\0{}\0{}\0{}\0{:?}\0",
        spec.accel.qemu_name(),
        spec.cpu,
        spec.memory_mib,
        spec.cpus,
        spec.disk_interface,
        spec.net_device,
        spec.guest_ssh_port,
        spec.qemuargs,
    ));
    for d in &spec.extra_drives {
        h.update(format!(
            "{}:{}:{}:{}\0",
            d.interface, d.media, d.format, d.read_only
        ));
    }
    hex::encode(h.finalize())
}

async fn running_versions(vm: &Vm) -> (String, String) {
    let version = match vm.qmp("query-version", None).await {
        Ok(v) => format!(
            "{}.{}.{}",
            v["qemu"]["major"], v["qemu"]["minor"], v["qemu"]["micro"]
        ),
        Err(_) => String::new(),
    };
    let machine = vm
        .qmp(
            "qom-get",
            Some(json!({ "path": "/machine", "property": "type" })),
        )
        .await
        .ok()
        .and_then(|v| {
            v.as_str()
                .map(|s| s.trim_end_matches("-machine").to_string())
        })
        .unwrap_or_default();
    (version, machine)
}

async fn query_virtual_size(vm: &Vm) -> Result<u64, String> {
    let blocks = vm
        .qmp("query-block", None)
        .await
        .map_err(|e| e.to_string())?;
    blocks
        .as_array()
        .and_then(|a| a.iter().find(|b| b["device"] == "disk0"))
        .and_then(|b| b["inserted"]["image"]["virtual-size"].as_u64())
        .ok_or_else(|| "qemu does not report the size of disk0".to_string())
}

async fn top_node(vm: &Vm) -> Option<String> {
    let blocks = vm.qmp("query-block", None).await.ok()?;
    blocks.as_array()?.iter().find(|b| b["device"] == "disk0")?["inserted"]["node-name"]
        .as_str()
        .map(str::to_string)
}

/// A writable drive other than the build's disk, by name.
async fn other_writable_drive(vm: &Vm) -> Option<String> {
    let blocks = vm.qmp("query-block", None).await.ok()?;
    blocks.as_array()?.iter().find_map(|b| {
        let name = b["device"].as_str().or_else(|| b["qdev"].as_str())?;
        let ins = b.get("inserted")?;
        (name != "disk0" && ins["ro"] == false).then(|| name.to_string())
    })
}

/// The hot-plugged upload disks (`FileDisk`) are detached in the background; a memory
/// state taken with one still attached could not be loaded into a fresh VM.
async fn wait_uploads_detached(vm: &Vm) -> Result<(), String> {
    let deadline = Instant::now() + DETACH_WAIT;
    loop {
        let attached = match vm
            .qmp("qom-list", Some(json!({ "path": "/machine/peripheral" })))
            .await
        {
            Ok(list) => list.as_array().is_some_and(|a| {
                a.iter().any(|p| {
                    p["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("kiln-file-"))
                })
            }),
            Err(e) => return Err(e.to_string()),
        };
        if !attached {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err("an upload disk is still attached to the VM".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the guest's SSH server sends its banner on the forwarded port: one
/// connection held open (reconnecting every second would make a restored guest's
/// sshd throttle us), then checked again until `wait` is up.
async fn wait_for_banner(vm: &Vm, wait: Duration) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + wait;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        if !vm.is_running() {
            return Err(format!(
                "qemu exited after loading the memory state: {}",
                last_line(&vm.stderr_tail())
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", vm.ssh_port())).await?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        match tokio::time::timeout(left.min(Duration::from_secs(30)), attempt).await {
            Ok(Ok(b)) if &b == b"SSH-" => return Ok(()),
            Ok(Ok(_)) => last = "not an SSH banner".into(),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no banner".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "the restored guest's SSH server did not answer within {} s ({last})",
        wait.as_secs()
    ))
}

/// The build's machine with the step cache in front: restored steps are skipped,
/// successful ones captured. Everything else goes to the SSH machine inside.
pub struct CachedMachine {
    inner: Arc<dyn Machine>,
    cache: Arc<VmStepCache>,
}

impl CachedMachine {
    pub fn new(inner: Arc<dyn Machine>, cache: Arc<VmStepCache>) -> Self {
        CachedMachine { inner, cache }
    }
}

#[async_trait::async_trait]
impl Machine for CachedMachine {
    fn target(&self) -> String {
        self.inner.target()
    }
    async fn exec(
        &self,
        command: &str,
        env: &[(String, String)],
        on_output: OnOutput<'_>,
    ) -> Result<ExecOutput, MachineError> {
        self.inner.exec(command, env, on_output).await
    }
    async fn upload(
        &self,
        src: &cap_std::fs::File,
        dest: &str,
        mode: Option<u32>,
        progress: Progress<'_>,
    ) -> Result<Uploaded, MachineError> {
        self.inner.upload(src, dest, mode, progress).await
    }
    async fn upload_tree(
        &self,
        src: &cap_std::fs::Dir,
        dest: &str,
        progress: Progress<'_>,
    ) -> Result<u64, MachineError> {
        self.inner.upload_tree(src, dest, progress).await
    }
    async fn write_file(
        &self,
        dest: &str,
        contents: &[u8],
        mode: Option<u32>,
    ) -> Result<(), MachineError> {
        self.inner.write_file(dest, contents, mode).await
    }
    async fn read_file(&self, path: &str, max: u64) -> Result<Vec<u8>, MachineError> {
        self.inner.read_file(path, max).await
    }
    async fn download(
        &self,
        remote: &str,
        local: &mut cap_std::fs::File,
        progress: Progress<'_>,
    ) -> Result<u64, MachineError> {
        self.inner.download(remote, local, progress).await
    }
    async fn facts(&self) -> Result<Facts, MachineError> {
        self.inner.facts().await
    }
    async fn reconnect(&self) -> Result<(), MachineError> {
        self.inner.reconnect().await
    }
    async fn close(&self) {
        self.inner.close().await
    }
    async fn host_key(&self) -> Option<String> {
        self.inner.host_key().await
    }
    async fn interactive_shell(
        &self,
        term: &crate::host::machine::Terminal,
    ) -> Result<Option<u32>, MachineError> {
        self.inner.interactive_shell(term).await
    }
    fn login_command(&self) -> Option<String> {
        self.inner.login_command()
    }
    fn wants_step_keys(&self) -> bool {
        true
    }
    async fn begin_step(&self, step: &StepInfo) -> Result<StepStart, MachineError> {
        self.cache.begin(step).await
    }
    async fn end_step(&self, step: &StepInfo, ok: bool) -> Result<(), MachineError> {
        if !ok {
            return Ok(());
        }
        self.cache.end(self.inner.as_ref(), step).await
    }
    async fn step_cache_off(&self, why: &str) {
        self.cache.stop_capturing(why).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_within_a_file_system() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.qcow2");
        std::fs::write(&a, b"x").unwrap();
        let b = d.path().join("b.qcow2");
        move_file(&a, &b).unwrap();
        assert!(!a.exists());
        assert_eq!(std::fs::read(&b).unwrap(), b"x");
    }

    #[test]
    fn last_line_of_qemu_stderr() {
        assert_eq!(
            last_line("warning: x\nqemu: Snapshot 'kiln' does not exist\n\n"),
            "qemu: Snapshot 'kiln' does not exist"
        );
    }
}

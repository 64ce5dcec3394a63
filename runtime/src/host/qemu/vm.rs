//! Starting and controlling one `qemu-system-x86_64` process.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::spawn::{opt_escape, spawn_tied};
use tokio::sync::{Notify, watch};

use super::accel::Accel;
use super::boot_command::{BootStep, parse_boot_command};
use super::qmp::Qmp;
use super::{QemuError, qemu_binary};
use crate::cleanup::{CleanupId, CleanupStack};
use crate::host::image::ImageFormat;

/// qemu opens its QMP socket before the guest starts; 30 s covers a loaded host.
const QMP_WAIT: Duration = Duration::from_secs(30);
const PORT_TRIES: u32 = 8;
/// A qemu that stopped answering QMP is given this long to finish dying.
const EXIT_AFTER_LOSS: Duration = Duration::from_secs(30);
const STDERR_LINES: usize = 40;
/// Flags kiln needs to control the VM: a user's qemuargs may not replace them.
const RESERVED_FLAGS: &[&str] = &["-qmp", "-pidfile", "-daemonize", "-loadvm"];

/// An additional disk (a cloud-init seed disk, a second data disk).
#[derive(Debug, Clone)]
pub struct Drive {
    pub path: PathBuf,
    pub format: ImageFormat,
    /// qemu's `if=`: "virtio", "ide", "scsi", "none".
    pub interface: String,
    /// "disk" or "cdrom".
    pub media: String,
    pub read_only: bool,
}

impl Drive {
    /// A read-only virtio disk, the usual way to attach a seed disk.
    pub fn seed(path: impl Into<PathBuf>) -> Self {
        Drive {
            path: path.into(),
            format: ImageFormat::Raw,
            interface: "virtio".into(),
            media: "disk".into(),
            read_only: true,
        }
    }
}

/// Everything needed to start a VM. [`VmSpec::new`] fills Packer's defaults.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Shows up in `ps` and the cleanup log (Packer's `vm_name`).
    pub name: String,
    pub accel: Accel,
    /// `-cpu`; the accelerator's best model when `None`.
    pub cpu: Option<String>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// The boot disk the VM writes to (usually an overlay from `image::create_overlay`).
    pub disk: PathBuf,
    pub disk_format: ImageFormat,
    /// "virtio", "ide", "scsi", "virtio-scsi" (Packer's `disk_interface`).
    pub disk_interface: String,
    /// "virtio-net", "e1000", ... (Packer's `net_device`).
    pub net_device: String,
    /// An installer ISO; the VM boots from it once, then from the disk.
    pub cdrom: Option<PathBuf>,
    pub extra_drives: Vec<Drive>,
    /// Where `serial.log` goes (created if missing).
    pub output_dir: PathBuf,
    /// `false` opens a window (`-display gtk`), for debugging an installer.
    pub headless: bool,
    /// The guest port the host's forwarded port leads to.
    pub guest_ssh_port: u16,
    /// The port kiln's HTTP server listens on, for `{{ .HTTPPort }}` in qemuargs.
    pub http_port: Option<u16>,
    /// Packer-style extra arguments: each inner list is a flag and its values; a flag
    /// given here replaces all of kiln's defaults for that flag (so `-netdev` here
    /// replaces the default network). `{{ .SSHHostPort }}`, `{{ .HTTPIP }}`,
    /// `{{ .HTTPPort }}`, `{{ .Name }}` and `{{ .OutputDir }}` are substituted.
    pub qemuargs: Vec<Vec<String>>,
    /// Pause after each key of a boot command (Packer's `boot_key_interval`).
    pub boot_key_interval: Duration,
    /// Start from this internal snapshot of the disk (`-loadvm`): the step cache's
    /// memory restore (see `step_cache`).
    pub loadvm: Option<String>,
}

impl VmSpec {
    pub fn new(
        name: impl Into<String>,
        accel: Accel,
        disk: impl Into<PathBuf>,
        output_dir: impl Into<PathBuf>,
    ) -> Self {
        VmSpec {
            name: name.into(),
            accel,
            cpu: None,
            memory_mib: 512,
            cpus: 1,
            disk: disk.into(),
            disk_format: ImageFormat::Qcow2,
            disk_interface: "virtio".into(),
            net_device: "virtio-net".into(),
            cdrom: None,
            extra_drives: Vec::new(),
            output_dir: output_dir.into(),
            headless: true,
            guest_ssh_port: 22,
            http_port: None,
            qemuargs: Vec::new(),
            boot_key_interval: Duration::from_millis(50),
            loadvm: None,
        }
    }
}

struct Control {
    kill: Notify,
    exit: watch::Receiver<Option<String>>,
    pid: u32,
}

impl Control {
    async fn kill_and_wait(&self, timeout: Duration) -> bool {
        self.kill.notify_one();
        wait_for_exit(self.exit.clone(), timeout).await
    }
}

async fn wait_for_exit(mut rx: watch::Receiver<Option<String>>, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, rx.wait_for(Option::is_some))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// A running VM. Dropping it kills qemu.
pub struct Vm {
    name: String,
    ssh_port: u16,
    serial_log: PathBuf,
    qmp: tokio::sync::Mutex<Qmp>,
    control: Arc<Control>,
    cleanup: CleanupId,
    key_interval: Duration,
    stderr: Arc<Mutex<VecDeque<String>>>,
    qmp_path: PathBuf,
    // Holds the QMP socket and pidfile; removed when the last holder lets go, then
    // its ledger record is closed (a SIGKILLed kiln leaves it for `kiln cleanup`).
    _runtime_dir: Arc<(tempfile::TempDir, Option<crate::ledger::PathRecord>)>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("name", &self.name)
            .field("pid", &self.control.pid)
            .field("ssh_port", &self.ssh_port)
            .finish()
    }
}

impl Vm {
    /// The host port on 127.0.0.1 that leads to the guest's SSH port.
    pub fn ssh_port(&self) -> u16 {
        self.ssh_port
    }
    pub fn pid(&self) -> u32 {
        self.control.pid
    }
    pub fn serial_log_path(&self) -> &Path {
        &self.serial_log
    }
    /// The QMP socket, for poking at a VM by hand (`socat - UNIX:<path>`); it lives in
    /// a private temp dir that goes away with the VM.
    pub fn qmp_socket_path(&self) -> &Path {
        &self.qmp_path
    }
    /// The cleanup-stack entry that kills this VM; release it after a clean stop.
    pub fn cleanup_id(&self) -> CleanupId {
        self.cleanup
    }
    pub fn is_running(&self) -> bool {
        self.control.exit.borrow().is_none()
    }
    /// How qemu exited ("exit status: 0"), once it has.
    pub fn exit_status(&self) -> Option<String> {
        self.control.exit.borrow().clone()
    }
    /// The last lines qemu wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr)
    }

    /// Waits until qemu exits (however long that takes) and returns how it exited.
    pub async fn exited(&self) -> String {
        let mut rx = self.control.exit.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(s) => s.clone().unwrap_or_default(),
            // The watcher task is gone, so qemu is too.
            Err(_) => "unknown".into(),
        }
    }

    /// After a connection into the VM dropped: how qemu exited, if that is why, or None
    /// while it still runs. Asked of qemu itself rather than of the clock: a qemu that
    /// still answers QMP is alive (the guest rebooted or its sshd went away); one that
    /// does not is dying, and its exit is then waited for (up to `EXIT_AFTER_LOSS`).
    pub async fn exit_after_loss(&self) -> Option<String> {
        if let Some(status) = self.exit_status() {
            return Some(status);
        }
        if self.qmp("query-status", None).await.is_ok() {
            return None;
        }
        if self.wait_exit(EXIT_AFTER_LOSS).await {
            self.exit_status()
        } else {
            Some("no answer on its QMP socket".into())
        }
    }

    /// Presses the ACPI power button, as a graceful shutdown request. The guest may
    /// ignore it (no acpid/logind, or still booting); follow with [`Vm::wait_exit`].
    pub async fn powerdown(&self) -> Result<(), QemuError> {
        self.qmp("system_powerdown", None).await.map(|_| ())
    }

    /// Waits until qemu exits; false if it still runs after `timeout`.
    pub async fn wait_exit(&self, timeout: Duration) -> bool {
        wait_for_exit(self.control.exit.clone(), timeout).await
    }

    /// Kills qemu (SIGKILL) and waits for it to be gone.
    pub async fn kill(&self) -> bool {
        self.control.kill_and_wait(Duration::from_secs(10)).await
    }

    /// Runs a QMP command, e.g. `qmp("query-status", None)`.
    pub async fn qmp(&self, command: &str, arguments: Option<Value>) -> Result<Value, QemuError> {
        if !self.is_running() {
            return Err(QemuError::NotRunning);
        }
        let mut qmp = self.qmp.lock().await;
        Ok(qmp.execute(command, arguments).await?)
    }

    /// Types a Packer-syntax boot command (see [`super::boot_command`]).
    pub async fn send_boot_command(&self, command: &str) -> Result<(), QemuError> {
        let steps = parse_boot_command(command)?;
        let mut held: Vec<&'static str> = Vec::new();
        for step in steps {
            match step {
                BootStep::Wait(d) => tokio::time::sleep(d).await,
                BootStep::Hold(k) => {
                    if !held.contains(&k) {
                        held.push(k);
                    }
                }
                BootStep::Release(k) => held.retain(|h| *h != k),
                BootStep::Press(keys) => {
                    let mut seen = HashSet::new();
                    let chord: Vec<Value> = held
                        .iter()
                        .chain(keys.iter())
                        .filter(|k| seen.insert(**k))
                        .map(|k| json!({ "type": "qcode", "data": k }))
                        .collect();
                    self.qmp("send-key", Some(json!({ "keys": chord, "hold-time": 10 })))
                        .await?;
                    tokio::time::sleep(self.key_interval).await;
                }
            }
        }
        Ok(())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.control.kill.notify_one();
    }
}

/// Starts the VM. The kill is on `cleanup` from the moment qemu is spawned; release
/// [`Vm::cleanup_id`] once the VM has been stopped cleanly.
pub async fn start(spec: VmSpec, cleanup: &CleanupStack) -> Result<Vm, QemuError> {
    std::fs::create_dir_all(&spec.output_dir).map_err(|source| QemuError::Io {
        what: "cannot create the output directory",
        path: spec.output_dir.clone(),
        source,
    })?;
    let output_dir = std::path::absolute(&spec.output_dir).map_err(|source| QemuError::Io {
        what: "cannot resolve",
        path: spec.output_dir.clone(),
        source,
    })?;
    let mut last = String::new();
    for attempt in 1..=PORT_TRIES {
        let port = free_port().map_err(|source| QemuError::Io {
            what: "cannot find a free port on",
            path: "127.0.0.1".into(),
            source,
        })?;
        match start_once(&spec, &output_dir, port, cleanup).await {
            Err(QemuError::EarlyExit { stderr, .. }) if stderr.contains("host forwarding rule") => {
                tracing::debug!(port, attempt, "SSH forward port was taken; retrying");
                last = stderr;
            }
            other => return other,
        }
    }
    Err(QemuError::NoPort {
        tries: PORT_TRIES,
        last,
    })
}

fn free_port() -> std::io::Result<u16> {
    // The OS hands out a port that is free now; qemu binds it a moment later, and a
    // race with another process is caught by qemu's "host forwarding rule" error.
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

async fn start_once(
    spec: &VmSpec,
    output_dir: &Path,
    port: u16,
    cleanup: &CleanupStack,
) -> Result<Vm, QemuError> {
    // Unix socket paths are limited to 108 bytes, so the socket lives in a short
    // private temp dir rather than beside a possibly long output path.
    let dir = tempfile::Builder::new()
        .prefix("kiln-qemu-")
        .tempdir()
        .map_err(|source| QemuError::Io {
            what: "cannot create a runtime dir in",
            path: std::env::temp_dir(),
            source,
        })?;
    let record = cleanup
        .ledger()
        .and_then(|l| l.record_path(crate::ledger::Kind::QemuRuntimeDir, dir.path()));
    let runtime_dir = Arc::new((dir, record));
    let qmp_path = runtime_dir.0.path().join("qmp.sock");
    let pidfile = runtime_dir.0.path().join("qemu.pid");
    let serial_log = output_dir.join("serial.log");
    let args = build_args(spec, output_dir, port, &qmp_path, &pidfile, &serial_log)?;

    let binary = qemu_binary();
    let mut cmd = Command::new(&binary);
    cmd.args(args.iter().flatten())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tracing::debug!(binary = %binary.display(), args = ?args, "starting qemu");
    let mut child = match spawn_tied(cmd).await {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(QemuError::NotInstalled { binary });
        }
        Err(source) => {
            return Err(QemuError::Io {
                what: "cannot run",
                path: binary,
                source,
            });
        }
    };
    let pid = child.id().unwrap_or(0);
    let (exit_tx, exit_rx) = watch::channel(None);
    let control = Arc::new(Control {
        kill: Notify::new(),
        exit: exit_rx,
        pid,
    });
    let undo_control = control.clone();
    let undo_dir = runtime_dir.clone();
    let cleanup_id = cleanup.push(
        format!("qemu process {pid} ({})", spec.name),
        move || async move {
            let gone = undo_control.kill_and_wait(Duration::from_secs(10)).await;
            drop(undo_dir);
            if gone {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "qemu process {pid} did not die after SIGKILL"
                ))
            }
        },
    );

    let stderr = Arc::new(Mutex::new(VecDeque::new()));
    let stderr_done = tokio::spawn(collect_stderr(
        child.stderr.take().expect("stderr is piped"),
        stderr.clone(),
        pid,
    ));
    let owner_control = control.clone();
    tokio::spawn(async move {
        let status = tokio::select! {
            s = child.wait() => s,
            _ = owner_control.kill.notified() => {
                let _ = child.start_kill();
                child.wait().await
            }
        };
        let text = match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("unknown ({e})"),
        };
        tracing::debug!(pid, status = %text, "qemu exited");
        exit_tx.send_replace(Some(text));
    });

    let qmp = match connect_qmp(&qmp_path, &control).await {
        Ok(q) => q,
        Err(e) => {
            control.kill_and_wait(Duration::from_secs(10)).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), stderr_done).await;
            cleanup.release(cleanup_id);
            let text = tail(&stderr);
            return Err(match e {
                ConnectFailure::Exited(status) => QemuError::EarlyExit {
                    status,
                    stderr: text,
                },
                ConnectFailure::Timeout => QemuError::StartTimeout {
                    secs: QMP_WAIT.as_secs(),
                    stderr: text,
                },
                ConnectFailure::Qmp(e) => QemuError::Qmp(e),
            });
        }
    };
    tracing::info!(name = %spec.name, pid, ssh_port = port, accel = spec.accel.qemu_name(),
        "qemu started");
    Ok(Vm {
        name: spec.name.clone(),
        ssh_port: port,
        serial_log,
        qmp: tokio::sync::Mutex::new(qmp),
        control,
        cleanup: cleanup_id,
        key_interval: spec.boot_key_interval,
        stderr,
        qmp_path,
        _runtime_dir: runtime_dir,
    })
}

enum ConnectFailure {
    Exited(String),
    Timeout,
    Qmp(super::QmpError),
}

async fn connect_qmp(path: &Path, control: &Control) -> Result<Qmp, ConnectFailure> {
    let deadline = tokio::time::Instant::now() + QMP_WAIT;
    loop {
        if let Some(status) = control.exit.borrow().clone() {
            return Err(ConnectFailure::Exited(status));
        }
        if path.exists() {
            match Qmp::connect(path).await {
                Ok(q) => return Ok(q),
                Err(super::QmpError::Connect { .. }) => {}
                Err(e) => {
                    // A qemu that dies mid-handshake is an early exit, not a QMP bug.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if let Some(status) = control.exit.borrow().clone() {
                        return Err(ConnectFailure::Exited(status));
                    }
                    return Err(ConnectFailure::Qmp(e));
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ConnectFailure::Timeout);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn collect_stderr(
    stderr: tokio::process::ChildStderr,
    ring: Arc<Mutex<VecDeque<String>>>,
    pid: u32,
) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!(pid, "qemu: {line}");
        let mut r = ring.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() == STDERR_LINES {
            r.pop_front();
        }
        r.push_back(line);
    }
}

fn tail(ring: &Mutex<VecDeque<String>>) -> String {
    let r = ring.lock().unwrap_or_else(|p| p.into_inner());
    if r.is_empty() {
        "(qemu wrote nothing to stderr)".into()
    } else {
        r.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// The full argument list: kiln's defaults, with every flag the user's qemuargs
/// names replaced by the user's entries (Packer's rule).
fn build_args(
    spec: &VmSpec,
    output_dir: &Path,
    port: u16,
    qmp: &Path,
    pidfile: &Path,
    serial_log: &Path,
) -> Result<Vec<Vec<String>>, QemuError> {
    let s = |v: &str| v.to_string();
    let disk = std::path::absolute(&spec.disk).map_err(|source| QemuError::Io {
        what: "cannot resolve",
        path: spec.disk.clone(),
        source,
    })?;
    let mut d: Vec<Vec<String>> = vec![
        vec![s("-name"), spec.name.clone()],
        vec![
            s("-machine"),
            format!("type=pc,accel={}", spec.accel.qemu_name()),
        ],
        vec![
            s("-cpu"),
            spec.cpu
                .clone()
                .unwrap_or_else(|| spec.accel.default_cpu().to_string()),
        ],
        vec![s("-m"), format!("{}M", spec.memory_mib)],
        vec![s("-smp"), spec.cpus.to_string()],
    ];
    let (disk_if, disk_device) = match spec.disk_interface.as_str() {
        // Packer's virtio-scsi: a controller plus a scsi-hd on it.
        "virtio-scsi" => ("none", true),
        other => (other, false),
    };
    d.push(vec![
        s("-drive"),
        format!(
            "file={},if={disk_if},id=disk0,cache=writeback,discard=unmap,detect-zeroes=unmap,format={}",
            opt_escape(&disk),
            spec.disk_format
        ),
    ]);
    if disk_device {
        d.push(vec![s("-device"), s("virtio-scsi-pci,id=scsi0")]);
        d.push(vec![s("-device"), s("scsi-hd,bus=scsi0.0,drive=disk0")]);
    }
    if let Some(iso) = &spec.cdrom {
        let iso = std::path::absolute(iso).map_err(|source| QemuError::Io {
            what: "cannot resolve",
            path: iso.clone(),
            source,
        })?;
        d.push(vec![
            s("-drive"),
            format!(
                "file={},if=ide,index=2,media=cdrom,readonly=on,format=raw",
                opt_escape(&iso)
            ),
        ]);
    }
    for drive in &spec.extra_drives {
        let path = std::path::absolute(&drive.path).map_err(|source| QemuError::Io {
            what: "cannot resolve",
            path: drive.path.clone(),
            source,
        })?;
        d.push(vec![
            s("-drive"),
            format!(
                "file={},if={},media={},format={}{}",
                opt_escape(&path),
                drive.interface,
                drive.media,
                drive.format,
                if drive.read_only { ",readonly=on" } else { "" }
            ),
        ]);
    }
    d.push(vec![
        s("-netdev"),
        format!(
            "user,id=user.0,hostfwd=tcp:127.0.0.1:{port}-:{}",
            spec.guest_ssh_port
        ),
    ]);
    d.push(vec![
        s("-device"),
        format!("{},netdev=user.0", spec.net_device),
    ]);
    d.push(vec![
        s("-boot"),
        s(if spec.cdrom.is_some() { "once=d" } else { "c" }),
    ]);
    d.push(vec![
        s("-display"),
        s(if spec.headless { "none" } else { "gtk" }),
    ]);
    d.push(vec![
        s("-serial"),
        format!("file:{}", opt_escape(serial_log)),
    ]);

    let vars = [
        ("SSHHostPort", port.to_string()),
        ("HTTPIP", crate::host::httpd::GUEST_HOST_IP.to_string()),
        (
            "HTTPPort",
            spec.http_port.map(|p| p.to_string()).unwrap_or_default(),
        ),
        ("Name", spec.name.clone()),
        ("OutputDir", output_dir.display().to_string()),
    ];
    let mut user = Vec::new();
    for entry in &spec.qemuargs {
        let Some(flag) = entry.first() else {
            return Err(QemuError::BadArgs("an empty argument list".into()));
        };
        if !flag.starts_with('-') {
            return Err(QemuError::BadArgs(format!(
                "{entry:?} does not start with a flag like \"-netdev\""
            )));
        }
        if RESERVED_FLAGS.contains(&flag.as_str()) {
            return Err(QemuError::BadArgs(format!(
                "{flag} is how kiln controls the VM and cannot be replaced; remove it"
            )));
        }
        user.push(
            entry
                .iter()
                .map(|a| substitute(a, &vars))
                .collect::<Vec<_>>(),
        );
    }
    let overridden: HashSet<&str> = user.iter().map(|e| e[0].as_str()).collect();
    d.retain(|e| !overridden.contains(e[0].as_str()));
    d.extend(user);
    d.push(vec![
        s("-qmp"),
        format!("unix:{},server=on,wait=off", opt_escape(qmp)),
    ]);
    d.push(vec![s("-pidfile"), pidfile.display().to_string()]);
    if let Some(tag) = &spec.loadvm {
        d.push(vec![s("-loadvm"), tag.clone()]);
    }
    Ok(d)
}

fn substitute(arg: &str, vars: &[(&str, String)]) -> String {
    let mut out = arg.to_string();
    for (name, value) in vars {
        for pat in [format!("{{{{ .{name} }}}}"), format!("{{{{.{name}}}}}")] {
            out = out.replace(&pat, value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::qemu::Accel;

    fn spec() -> VmSpec {
        VmSpec::new("t", Accel::tcg("test"), "/d/disk.qcow2", "/out")
    }

    fn args(spec: &VmSpec) -> Vec<Vec<String>> {
        build_args(
            spec,
            Path::new("/out"),
            2222,
            Path::new("/r/qmp.sock"),
            Path::new("/r/pid"),
            Path::new("/out/serial.log"),
        )
        .unwrap()
    }

    fn find<'a>(a: &'a [Vec<String>], flag: &str) -> Vec<&'a str> {
        a.iter()
            .filter(|e| e[0] == flag)
            .map(|e| e[1].as_str())
            .collect()
    }

    #[test]
    fn defaults_forward_ssh_on_loopback_only() {
        let a = args(&spec());
        assert_eq!(
            find(&a, "-netdev"),
            vec!["user,id=user.0,hostfwd=tcp:127.0.0.1:2222-:22"]
        );
        assert_eq!(find(&a, "-machine"), vec!["type=pc,accel=tcg"]);
        assert_eq!(find(&a, "-cpu"), vec!["qemu64"]);
        assert_eq!(find(&a, "-display"), vec!["none"]);
        assert_eq!(find(&a, "-serial"), vec!["file:/out/serial.log"]);
        assert!(find(&a, "-drive")[0].starts_with("file=/d/disk.qcow2,if=virtio,"));
    }

    #[test]
    fn user_args_replace_defaults_of_the_same_flag() {
        let mut s = spec();
        s.qemuargs = vec![
            vec![
                "-netdev".into(),
                "user,id=n,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:2022".into(),
            ],
            vec!["-device".into(), "e1000,netdev=n".into()],
            vec!["-no-reboot".into()],
        ];
        let a = args(&s);
        assert_eq!(
            find(&a, "-netdev"),
            vec!["user,id=n,hostfwd=tcp:127.0.0.1:2222-:2022"]
        );
        assert_eq!(find(&a, "-device"), vec!["e1000,netdev=n"]);
        assert!(a.iter().any(|e| e == &vec!["-no-reboot".to_string()]));
    }

    #[test]
    fn reserved_and_malformed_args_are_refused() {
        let mut s = spec();
        s.qemuargs = vec![vec!["-qmp".into(), "tcp:0.0.0.0:4444".into()]];
        assert!(matches!(
            build_args(
                &s,
                Path::new("/o"),
                1,
                Path::new("/q"),
                Path::new("/p"),
                Path::new("/s")
            ),
            Err(QemuError::BadArgs(_))
        ));
        s.qemuargs = vec![vec!["netdev".into()]];
        assert!(
            build_args(
                &s,
                Path::new("/o"),
                1,
                Path::new("/q"),
                Path::new("/p"),
                Path::new("/s")
            )
            .is_err()
        );
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        assert_eq!(opt_escape(Path::new("/a,b/c")), "/a,,b/c");
    }

    #[test]
    fn cdrom_boots_once_and_seed_is_read_only() {
        let mut s = spec();
        s.cdrom = Some("/iso/debian.iso".into());
        s.extra_drives.push(Drive::seed("/out/seed.img"));
        let a = args(&s);
        assert_eq!(find(&a, "-boot"), vec!["once=d"]);
        let drives = find(&a, "-drive");
        assert!(drives[1].contains("media=cdrom"));
        assert_eq!(
            drives[2],
            "file=/out/seed.img,if=virtio,media=disk,format=raw,readonly=on"
        );
    }
}

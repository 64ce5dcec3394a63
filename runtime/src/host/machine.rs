//! The machine being built, as steps see it: a trait with one backend per way in (an
//! SSH session today; a container rootfs next). Steps and adapters reach a machine only
//! through this trait and only behind the `machine` capability's facade
//! (`caps::machine`), never through a backend's own types.
//!
//! Output is streamed: `exec` hands each piece of output to a callback as it arrives
//! (raw bytes: the facade redacts, splits lines and escapes them for display) and
//! keeps only a bounded tail; file reads take a size limit the caller sets.

use std::collections::BTreeMap;

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Result of a command run on the machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exit status, or -1 when the command was killed by a signal.
    pub exit_code: i32,
    /// The signal name without "SIG" (e.g. "TERM") when killed by a signal.
    pub signal: Option<String>,
    /// The last part of stdout (bounded by the backend).
    pub stdout: Vec<u8>,
    /// The last part of stderr (bounded by the backend).
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit_code == 0 && self.signal.is_none()
    }
}

/// How an upload reached the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadPath {
    /// The backend's normal transfer (SFTP for SSH).
    Normal,
    /// A hot-plugged read-only virtio disk of a VM kiln started.
    VirtioDisk,
}

/// Bytes written by an upload, and how they went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uploaded {
    pub bytes: u64,
    pub via: UploadPath,
    /// The connection dropped during the first attempt and it was made once more.
    pub retried: bool,
}

/// `os_id`, `os_version`, `arch`, `kernel`, `hostname`, `user`, ...
pub type Facts = BTreeMap<String, String>;

/// What went wrong on a machine, as the step runner tells the cases apart.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MachineError {
    /// The connection to the machine went away (a reboot, a shutdown, a network cut):
    /// a step that expects a disconnect treats this as success.
    #[error("{0}")]
    Disconnected(String),
    /// A remote file is larger than the caller allows.
    #[error("{0}")]
    TooLarge(String),
    /// kiln refused the call's arguments before reaching the machine (an argument
    /// over its size limit).
    #[error("{0}")]
    Invalid(String),
    /// Anything else, with the backend's message.
    #[error("{0}")]
    Failed(String),
}

impl MachineError {
    pub fn is_disconnect(&self) -> bool {
        matches!(self, MachineError::Disconnected(_))
    }
}

/// What the runner tells a backend about one provisioning step.
#[derive(Debug, Clone)]
pub struct StepInfo {
    /// 1-based position in the build's step list.
    pub index: usize,
    pub total: usize,
    /// The step as `inspect` shows it (`shell (2 commands)`), for layer history and logs.
    pub describe: String,
    /// `shell`, `file`, `closure`, `wasm`.
    pub kind: &'static str,
    /// The step's cache key: a digest over the build's base and every step up to and
    /// including this one as declared (see `runner::stepkey`).
    pub key: String,
    /// Whether the step holds the `net` capability (a container backend gives the step
    /// the network only then).
    pub network: bool,
}

/// Whether the runner should run a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepStart {
    Run,
    /// The backend already has this step's result (a cached layer, a restored VM):
    /// the reason is shown to the user.
    Skip {
        reason: String,
    },
}

/// What the user's terminal sends to an interactive shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TermInput {
    Data(Vec<u8>),
    Resize { cols: u32, rows: u32 },
}

/// Where a remote shell's output goes (the user's terminal).
pub type TermOutput = Box<dyn Fn(&[u8]) + Send + Sync>;

/// The user's terminal, lent to an interactive shell on the machine (`--on-error=ask`,
/// `[s]hell`): keys come in on `input` until it closes, output goes to `output`.
pub struct Terminal {
    /// `$TERM`.
    pub term: String,
    pub cols: u32,
    pub rows: u32,
    pub input: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<TermInput>>,
    pub output: TermOutput,
}

/// Receives each piece of a command's output as it arrives, raw.
pub type OnOutput<'a> = &'a mut (dyn FnMut(Stream, &[u8]) + Send);
/// Receives the number of bytes moved so far.
pub type Progress<'a> = &'a (dyn Fn(u64) + Send + Sync);

/// One backend of the machine being built.
#[async_trait::async_trait]
pub trait Machine: Send + Sync {
    /// `user@host:port`, a container name: for messages.
    fn target(&self) -> String;

    /// Runs `command` through the machine's shell with `env` exported first.
    async fn exec(
        &self,
        command: &str,
        env: &[(String, String)],
        on_output: OnOutput<'_>,
    ) -> Result<ExecOutput, MachineError>;

    /// Copies an open local file to `dest` (created or truncated), then sets `mode`.
    async fn upload(
        &self,
        src: &cap_std::fs::File,
        dest: &str,
        mode: Option<u32>,
        progress: Progress<'_>,
    ) -> Result<Uploaded, MachineError>;

    /// Copies the tree under `src` into `dest` (created if needed).
    async fn upload_tree(
        &self,
        src: &cap_std::fs::Dir,
        dest: &str,
        progress: Progress<'_>,
    ) -> Result<u64, MachineError>;

    /// Creates or replaces `dest` with `contents`.
    async fn write_file(
        &self,
        dest: &str,
        contents: &[u8],
        mode: Option<u32>,
    ) -> Result<(), MachineError>;

    /// Reads `path`, refusing more than `max` bytes with [`MachineError::TooLarge`].
    async fn read_file(&self, path: &str, max: u64) -> Result<Vec<u8>, MachineError>;

    /// Streams `remote` into the open local file. Returns the bytes received.
    async fn download(
        &self,
        remote: &str,
        local: &mut cap_std::fs::File,
        progress: Progress<'_>,
    ) -> Result<u64, MachineError>;

    /// Facts about the machine (asked once, then cached by the backend).
    async fn facts(&self) -> Result<Facts, MachineError>;

    /// Opens a new connection after the machine dropped the old one on purpose (a
    /// reboot step).
    async fn reconnect(&self) -> Result<(), MachineError>;

    /// Ends the connection; errors are ignored (the goal is gone either way).
    async fn close(&self);

    /// The SSH host key fingerprint the connection verified, if it is an SSH one.
    async fn host_key(&self) -> Option<String> {
        None
    }

    /// An interactive shell on the machine in the user's terminal; returns its exit
    /// status when the machine reports one.
    async fn interactive_shell(&self, _term: &Terminal) -> Result<Option<u32>, MachineError> {
        Err(MachineError::Failed(format!(
            "{}: this machine offers no interactive shell",
            self.target()
        )))
    }

    /// The command a user would type to log in by hand (`ssh -i ... -p ... user@host`).
    fn login_command(&self) -> Option<String> {
        None
    }

    /// The rest of this build must not be captured by a step cache (a step was
    /// retried or skipped by hand, so later states are not what the steps declare).
    async fn step_cache_off(&self, _why: &str) {}

    /// Whether this backend uses step cache keys ([`StepInfo::key`]). Computing them
    /// reads every file the steps upload, so backends that cache nothing say no.
    fn wants_step_keys(&self) -> bool {
        false
    }

    /// Called before each provisioning step. A backend that can restore the step's
    /// result (a cached layer, a VM snapshot) may answer [`StepStart::Skip`].
    async fn begin_step(&self, _step: &StepInfo) -> Result<StepStart, MachineError> {
        Ok(StepStart::Run)
    }

    /// Called after each step that ran, with whether it succeeded. A backend may
    /// capture the step's result here (commit a layer, snapshot a VM).
    async fn end_step(&self, _step: &StepInfo, _ok: bool) -> Result<(), MachineError> {
        Ok(())
    }
}

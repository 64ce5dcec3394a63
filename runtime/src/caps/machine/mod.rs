//! `machine`: exec, upload, download and facts on the machine being built.
//!
//! [`MachineCap`] is the checked facade: the only way kiln code (shell and file steps,
//! Rhai closures, WASM guests, builders) reaches a [`Machine`]. Every call goes
//! through [`Scope::run`], so each one is checked against the caller's grant, timed,
//! and audited with the same capability, object and outcome whichever sandbox made it.
//!
//! The facade is also where what crosses into the host is bounded and what comes back
//! is made fit to show: every argument is measured against `caps::limits` before
//! anything is built from it, and command output is redacted as a stream, split into
//! lines (a line without a newline is cut at [`MAX_LINE`]) and only then handed to
//! the UI, whatever the backend.

pub mod rhai;
pub mod transfer;
pub mod wasm;

use std::sync::Arc;

use super::broker::{Scope, ScopeError};
use super::grants::Use;
use super::limits::{self, TooLarge};
use super::spec::{CapSpec, Grammar};
use crate::host::machine::{
    ExecOutput, Facts, Machine, MachineError, Progress, StepInfo, StepStart, Stream, Terminal,
    UploadPath, Uploaded,
};
use crate::ui::LineStream;

pub static SPEC: CapSpec = CapSpec {
    key: "machine",
    summary: "run commands and move files on the machine being built",
    grammar: Grammar::Flag,
    wit: &["kiln:host/machine"],
    example: "allow: #{ machine: true }",
};

pub struct Cap;

impl super::Capability for Cap {
    fn spec(&self) -> &'static CapSpec {
        &SPEC
    }
    fn register_rhai(&self, engine: &mut ::rhai::Engine) {
        rhai::register(engine);
    }
    fn wasm(&self) -> Option<&'static dyn crate::wasm::host::Adapter> {
        Some(&wasm::Adapter)
    }
}

/// A failed machine call: refused by the broker, or failed on the machine.
pub type CallError = ScopeError<MachineError>;

/// Where command output goes as it arrives (the build's UI).
pub type OutputSink = Arc<dyn Fn(Stream, &str) + Send + Sync>;

/// Largest file `read_file` returns unless the caller asks for less.
pub const DEFAULT_READ_LIMIT: u64 = 64 << 20;

/// A line of command output without a newline is shown in pieces of this size, so a
/// binary blob cannot grow memory without bound.
pub const MAX_LINE: usize = 64 << 10;

/// The machine as one caller (step, builder) may use it.
#[derive(Clone)]
pub struct MachineCap {
    machine: Arc<dyn Machine>,
    scope: Scope,
    output: OutputSink,
    /// The step's `env`, exported before every command it runs.
    env: Vec<(String, String)>,
}

impl MachineCap {
    pub fn new(machine: Arc<dyn Machine>, scope: Scope, output: OutputSink) -> Self {
        MachineCap {
            machine,
            scope,
            output,
            env: Vec::new(),
        }
    }

    /// The same machine for another caller (a step with its own grants and env).
    pub fn for_scope(&self, scope: Scope, env: Vec<(String, String)>) -> Self {
        MachineCap {
            machine: self.machine.clone(),
            scope,
            output: self.output.clone(),
            env,
        }
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    pub fn target(&self) -> String {
        self.machine.target()
    }

    fn use_() -> Use {
        Use::flag(&SPEC)
    }

    /// Refuses a call whose argument is over its limit: audited with the size only
    /// (the text may be huge, or hold a secret that a cut would leave half redacted).
    fn refuse<T>(&self, op: &str, e: TooLarge) -> Result<T, CallError> {
        self.scope.event(
            SPEC.key,
            &format!("{op} (refused)"),
            &format!("error: {e}"),
            0.0,
        );
        Err(ScopeError::Failed(MachineError::Invalid(e.to_string())))
    }

    /// Checks each path argument of `op`.
    fn paths(&self, op: &str, paths: &[&str]) -> Result<(), CallError> {
        for p in paths {
            if let Err(e) = limits::path(p.len()) {
                return self.refuse(op, e);
            }
        }
        Ok(())
    }

    /// Runs `command` with the caller's env plus `extra`, streaming output to the UI.
    pub async fn exec(
        &self,
        command: &str,
        extra: &[(String, String)],
    ) -> Result<ExecOutput, CallError> {
        self.exec_audited(command, extra, command).await
    }

    /// [`MachineCap::exec`] audited as `exec <audit_as>` (a shell step's script path
    /// instead of its wrapper).
    pub async fn exec_audited(
        &self,
        command: &str,
        extra: &[(String, String)],
        audit_as: &str,
    ) -> Result<ExecOutput, CallError> {
        let mut env = self.env.clone();
        env.extend(extra.iter().cloned());
        if let Err(e) = limits::command(command, &env) {
            return self.refuse("exec", e);
        }
        let out = self.output.clone();
        let redactor = self.scope.broker().redactor();
        let mut stdout = LineStream::new(redactor, MAX_LINE);
        let mut stderr = LineStream::new(redactor, MAX_LINE);
        self.scope
            .run_with(
                &Self::use_(),
                &format!("exec {audit_as}"),
                async {
                    let r = self
                        .machine
                        .exec(command, &env, &mut |s, data| {
                            let lines = match s {
                                Stream::Stdout => &mut stdout,
                                Stream::Stderr => &mut stderr,
                            };
                            lines.push(data, &mut |line| out(s, line));
                        })
                        .await;
                    stdout.finish(&mut |line| out(Stream::Stdout, line));
                    stderr.finish(&mut |line| out(Stream::Stderr, line));
                    r
                },
                |o| match &o.signal {
                    Some(sig) => format!("ok (killed by {sig})"),
                    None => format!("ok (exit {})", o.exit_code),
                },
            )
            .await
    }

    /// Runs a command kiln itself needs (cleanup of a killed step): audited, no output.
    pub async fn exec_quiet(&self, command: &str, audit_as: &str) -> Result<ExecOutput, CallError> {
        if let Err(e) = limits::command(command, &[]) {
            return self.refuse("exec", e);
        }
        self.scope
            .run_with(
                &Self::use_(),
                &format!("exec {audit_as}"),
                self.machine.exec(command, &[], &mut |_, _| {}),
                |o| format!("ok (exit {})", o.exit_code),
            )
            .await
    }

    /// Copies an open local file (`src` is how the caller named it) to `dest`.
    pub async fn upload(
        &self,
        src: &str,
        file: &cap_std::fs::File,
        dest: &str,
        mode: Option<u32>,
        progress: Progress<'_>,
    ) -> Result<Uploaded, CallError> {
        self.paths("upload", &[src, dest])?;
        self.scope
            .run_with(
                &Self::use_(),
                &format!("upload {src} => {dest}"),
                self.machine.upload(file, dest, mode, progress),
                |u| match u.via {
                    UploadPath::Normal => format!("ok ({} bytes)", u.bytes),
                    UploadPath::VirtioDisk => format!("ok ({} bytes via a virtio disk)", u.bytes),
                },
            )
            .await
    }

    /// Copies a local directory tree to `dest`.
    pub async fn upload_tree(
        &self,
        src: &str,
        dir: &cap_std::fs::Dir,
        dest: &str,
        progress: Progress<'_>,
    ) -> Result<u64, CallError> {
        self.paths("upload", &[src, dest])?;
        self.scope
            .run_with(
                &Self::use_(),
                &format!("upload {src} => {dest}"),
                self.machine.upload_tree(dir, dest, progress),
                |n| format!("ok ({n} bytes)"),
            )
            .await
    }

    pub async fn write_file(
        &self,
        dest: &str,
        contents: &[u8],
        mode: Option<u32>,
    ) -> Result<(), CallError> {
        self.paths("write_file", &[dest])?;
        if let Err(e) = limits::check(
            "the data to write",
            contents.len(),
            limits::MAX_WRITE,
            "; upload a file from a granted directory instead (uploads are streamed)",
        ) {
            return self.refuse("write_file", e);
        }
        self.scope
            .run(
                &Self::use_(),
                &format!("write_file {dest}"),
                self.machine.write_file(dest, contents, mode),
            )
            .await
    }

    pub async fn read_file(&self, path: &str, max: u64) -> Result<Vec<u8>, CallError> {
        self.paths("read_file", &[path])?;
        self.scope
            .run_with(
                &Self::use_(),
                &format!("read_file {path}"),
                self.machine.read_file(path, max),
                |b| format!("ok ({} bytes)", b.len()),
            )
            .await
    }

    /// Streams `remote` into `file` (`local` is how the caller named it).
    pub async fn download(
        &self,
        remote: &str,
        local: &str,
        file: &mut cap_std::fs::File,
        progress: Progress<'_>,
    ) -> Result<u64, CallError> {
        self.paths("download", &[remote, local])?;
        self.scope
            .run_with(
                &Self::use_(),
                &format!("download {remote} => {local}"),
                self.machine.download(remote, file, progress),
                |n| format!("ok ({n} bytes)"),
            )
            .await
    }

    pub async fn facts(&self) -> Result<Facts, CallError> {
        self.scope
            .run(&Self::use_(), "facts", self.machine.facts())
            .await
    }

    pub async fn reconnect(&self) -> Result<(), CallError> {
        self.scope
            .run(&Self::use_(), "reconnect", self.machine.reconnect())
            .await
    }

    /// Closes the connection (not a use of the capability: the build is done with it).
    pub async fn close(&self) {
        self.machine.close().await;
    }

    /// The user's own shell on the machine (the pause menu's `[s]hell`): checked and
    /// audited like any command, with its exit status as the outcome.
    pub async fn interactive_shell(&self, term: &Terminal) -> Result<Option<u32>, CallError> {
        self.scope
            .run_with(
                &Self::use_(),
                "interactive shell",
                self.machine.interactive_shell(term),
                |s| match s {
                    Some(code) => format!("ok (exit {code})"),
                    None => "ok".to_string(),
                },
            )
            .await
    }

    /// `ssh -i ... -p ... user@host` for the same machine, when it is reached over SSH.
    pub fn login_command(&self) -> Option<String> {
        self.machine.login_command()
    }

    pub async fn host_key(&self) -> Option<String> {
        self.machine.host_key().await
    }

    /// No step cache captures the rest of this build (see [`Machine::step_cache_off`]).
    pub async fn step_cache_off(&self, why: &str) {
        self.machine.step_cache_off(why).await
    }

    pub fn wants_step_keys(&self) -> bool {
        self.machine.wants_step_keys()
    }

    /// Step boundaries, from the runner (not uses a step makes, so not audited as such).
    pub async fn begin_step(&self, step: &StepInfo) -> Result<StepStart, MachineError> {
        self.machine.begin_step(step).await
    }

    pub async fn end_step(&self, step: &StepInfo, ok: bool) -> Result<(), MachineError> {
        self.machine.end_step(step, ok).await
    }
}

//! Write kiln WASM provisioners in Rust.
//!
//! A provisioner is one function that takes its typed configuration and returns a
//! short summary:
//!
//! ```ignore
//! use kiln_guest::{machine, info, Context};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Config { package: String }
//!
//! kiln_guest::provisioner!(fn provision(cfg: Config) -> kiln_guest::Result<String> {
//!     info!("installing {}", cfg.package);
//!     machine::run(&format!("apt-get install -y {}", cfg.package)).context("apt-get failed")?;
//!     Ok(format!("installed {}", cfg.package))
//! });
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate-type `cdylib`);
//! the `.wasm` in `target/wasm32-wasip2/release/` is the component kiln loads.

use std::collections::BTreeMap;
use std::fmt;

/// Raw bindings generated from `wit/kiln.wit`. Prefer the wrappers in this crate.
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "provisioner",
        pub_export_macro: true,
        default_bindings_module: "kiln_guest::bindings",
    });
}

use bindings::kiln::host::types::Error as HostError;

#[doc(hidden)]
pub use serde_json as __serde_json;

/// The error a provisioner returns: a message plus the context it was raised in.
///
/// It renders as `outer context: inner context: cause`, which is what the build
/// log shows when the step fails.
pub struct Error {
    message: String,
    kind: ErrorKind,
}

/// What kind of failure an [`Error`] stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The host refused: the step lacks a grant.
    Denied,
    /// A file, secret or path does not exist.
    NotFound,
    /// Transport or file-system failure.
    Io,
    /// A host call ran out of time.
    Timeout,
    /// A command exited non-zero, a config was invalid, or anything else.
    Failed,
}

impl Error {
    /// An error with a message of your own.
    pub fn msg(message: impl fmt::Display) -> Self {
        Error {
            message: message.to_string(),
            kind: ErrorKind::Failed,
        }
    }

    /// What kind of failure this is (e.g. to tolerate a missing file).
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Adds the context the error happened in; outer context is printed first.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Error {
            message: format!("{context}: {}", self.message),
            kind: self.kind,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?}: {})", self.kind, self.message)
    }
}

impl From<HostError> for Error {
    fn from(e: HostError) -> Self {
        let (kind, message) = match e {
            HostError::Denied(m) => (ErrorKind::Denied, format!("denied: {m}")),
            HostError::NotFound(m) => (ErrorKind::NotFound, format!("not found: {m}")),
            HostError::Io(m) => (ErrorKind::Io, format!("I/O error: {m}")),
            HostError::Timeout(m) => (ErrorKind::Timeout, format!("timed out: {m}")),
            HostError::Failed(m) => (ErrorKind::Failed, m),
        };
        Error { message, kind }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::msg(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::Denied,
            _ => ErrorKind::Io,
        };
        Error {
            message: e.to_string(),
            kind,
        }
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::msg(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error::msg(message)
    }
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds context to any error convertible into [`Error`] (`.context("writing unit")?`).
pub trait Context<T> {
    /// Wraps the error with a fixed message.
    fn context(self, context: impl fmt::Display) -> Result<T>;
    /// Wraps the error with a message computed only on failure.
    fn with_context<C: fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(context))
    }
    fn with_context<C: fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.into().context(f()))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.ok_or_else(|| Error {
            message: context.to_string(),
            kind: ErrorKind::NotFound,
        })
    }
    fn with_context<C: fmt::Display>(self, f: impl FnOnce() -> C) -> Result<T> {
        self.ok_or_else(|| Error {
            message: f().to_string(),
            kind: ErrorKind::NotFound,
        })
    }
}

/// Returns early with an error built like `format!`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return ::core::result::Result::Err($crate::Error::msg(::std::format!($($arg)*))) };
}

/// Returns early with an error unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => { if !$cond { $crate::bail!($($arg)*); } };
}

/// The machine being built. Needs `allow: #{ machine: true }` on the step.
pub mod machine {
    use super::*;
    use crate::bindings::kiln::host::machine as raw;

    /// What a command printed and how it exited.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Output {
        pub exit_code: i32,
        pub stdout: Vec<u8>,
        pub stderr: Vec<u8>,
    }

    impl Output {
        /// Whether the command exited with status 0.
        pub fn success(&self) -> bool {
            self.exit_code == 0
        }

        /// Standard output as text (invalid UTF-8 replaced).
        pub fn stdout_str(&self) -> String {
            String::from_utf8_lossy(&self.stdout).into_owned()
        }

        /// Standard error as text (invalid UTF-8 replaced).
        pub fn stderr_str(&self) -> String {
            String::from_utf8_lossy(&self.stderr).into_owned()
        }

        /// Fails unless the command exited 0; the error quotes the end of stderr.
        pub fn check(self) -> Result<Self> {
            if self.success() {
                return Ok(self);
            }
            let stderr = self.stderr_str();
            let tail: String = {
                let t = stderr.trim_end();
                let start = t.char_indices().rev().nth(499).map(|(i, _)| i).unwrap_or(0);
                t[start..].to_string()
            };
            Err(Error::msg(format!(
                "command exited with status {}: {tail}",
                self.exit_code
            )))
        }
    }

    /// Runs a shell command on the machine. A non-zero exit is *not* an error here;
    /// use [`run`] or [`Output::check`] for that.
    pub fn exec(command: &str) -> Result<Output> {
        exec_with_env(command, &[])
    }

    /// Runs a shell command with extra environment variables.
    pub fn exec_with_env(command: &str, env: &[(&str, &str)]) -> Result<Output> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let out = raw::exec(command, &env)?;
        Ok(Output {
            exit_code: out.exit_code,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    /// Runs a shell command and fails if it exits non-zero.
    pub fn run(command: &str) -> Result<Output> {
        exec(command)?
            .check()
            .with_context(|| format!("`{command}`"))
    }

    /// Copies a file from a directory granted with `read` to the machine.
    /// Returns the number of bytes copied.
    pub fn upload(host_path: &str, guest_path: &str, mode: Option<u32>) -> Result<u64> {
        Ok(raw::upload(host_path, guest_path, mode)?)
    }

    /// Creates or replaces a file on the machine.
    pub fn write_file(
        guest_path: &str,
        contents: impl AsRef<[u8]>,
        mode: Option<u32>,
    ) -> Result<()> {
        Ok(raw::write_file(guest_path, contents.as_ref(), mode)?)
    }

    /// Reads a file from the machine.
    pub fn read_file(guest_path: &str) -> Result<Vec<u8>> {
        Ok(raw::read_file(guest_path)?)
    }

    /// Facts about the machine (`os_id`, `os_version`, `arch`, `hostname`, ...).
    pub fn facts() -> BTreeMap<String, String> {
        raw::facts().into_iter().collect()
    }
}

/// Named secrets. Each name needs `allow: #{ secrets: ["NAME"] }` on the step.
pub mod secrets {
    use super::*;

    /// A secret value. Its `Debug` output is redacted so it cannot leak into logs by accident.
    #[derive(Clone)]
    pub struct Secret(String);

    impl Secret {
        /// The value itself. Do not log it.
        pub fn expose(&self) -> &str {
            &self.0
        }
    }

    impl fmt::Debug for Secret {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Secret(***)")
        }
    }

    /// Reads a granted secret.
    pub fn get(name: &str) -> Result<Secret> {
        Ok(Secret(crate::bindings::kiln::host::secrets::get(name)?))
    }
}

/// What the build baked into the image, for its record in kiln's artifact registry
/// (the `registry(...)` post-processor records it with the build's provenance).
/// Needs the `metadata` capability, which WASM steps hold unless the step says
/// `allow: #{ metadata: false }`.
///
/// ```ignore
/// kiln_guest::metadata::consul_service(&kiln_guest::metadata::ConsulService {
///     name: "web".into(), port: Some(80), tags: vec!["v1".into()],
/// })?;
/// kiln_guest::metadata::label("consul", "1.17")?;
/// ```
pub mod metadata {
    use super::*;
    use crate::bindings::kiln::host::metadata as raw;

    /// A Consul service definition written into the image.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ConsulService {
        pub name: String,
        pub port: Option<u16>,
        pub tags: Vec<String>,
    }

    /// Reports that the build baked `service` (reporting a name again replaces it).
    pub fn consul_service(service: &ConsulService) -> Result<()> {
        Ok(raw::add_consul_service(&raw::ConsulService {
            name: service.name.clone(),
            port: service.port,
            tags: service.tags.clone(),
        })?)
    }

    /// Adds a label to the build's registry record (the post-processor's own labels win).
    pub fn label(key: &str, value: &str) -> Result<()> {
        Ok(raw::set_label(key, value)?)
    }
}

/// The build log (used through [`info!`], [`warn!`] and [`debug!`]).
pub mod log {
    pub use crate::bindings::kiln::host::log::{debug, info, warn};
}

/// Logs at info level, `format!` style.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::info(&::std::format!($($arg)*)) };
}

/// Logs at warn level, `format!` style.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::warn(&::std::format!($($arg)*)) };
}

/// Logs at debug level, `format!` style.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::debug(&::std::format!($($arg)*)) };
}

/// Parses the step's JSON config into `C` and runs `f`; used by [`provisioner!`].
#[doc(hidden)]
pub fn __run<C: serde::de::DeserializeOwned>(
    config_json: &str,
    f: impl FnOnce(C) -> Result<String>,
) -> std::result::Result<String, String> {
    let config: C = serde_json::from_str(config_json)
        .map_err(|e| format!("invalid provisioner config: {e}"))?;
    f(config).map_err(|e| e.to_string())
}

/// Exports a function as the component's `provision` entry point.
///
/// ```ignore
/// kiln_guest::provisioner!(fn provision(cfg: Config) -> kiln_guest::Result<String> {
///     Ok(format!("configured {}", cfg.name))
/// });
/// ```
/// `Config` is any `serde::Deserialize` type; an invalid config fails the step with
/// serde's message before your code runs.
#[macro_export]
macro_rules! provisioner {
    (fn $name:ident($cfg:ident : $ty:ty) -> $ret:ty $body:block) => {
        fn $name($cfg: $ty) -> $ret $body

        struct __KilnProvisioner;

        impl $crate::bindings::Guest for __KilnProvisioner {
            fn provision(config_json: ::std::string::String)
                -> ::core::result::Result<::std::string::String, ::std::string::String>
            {
                $crate::__run::<$ty>(&config_json, $name)
            }
        }

        $crate::bindings::export!(__KilnProvisioner with_types_in $crate::bindings);
    };
}

//! What a container is made of: the init program to run, the overlay's directories, the
//! hostname, network and base environment.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Error;

/// `PATH` as Docker sets it for an image that declares none. Nothing is put into a
/// container's environment implicitly; pass this in [`ContainerConfig::env`] (or the
/// image's own `Env`) so commands are found.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The program kiln starts as the container's init: normally kiln's own binary with a
/// hidden subcommand that calls [`crate::init_main`] first thing in `main`.
#[derive(Debug, Clone)]
pub struct InitProgram {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl InitProgram {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        InitProgram {
            program: program.into(),
            args: Vec::new(),
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// The running binary (through `/proc/self/exe`, so it still works when the file on
    /// disk was replaced by an upgrade) with `args`, e.g. `["__rootfs-init"]`.
    pub fn current_exe<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        InitProgram {
            program: PathBuf::from("/proc/self/exe"),
            args: args.into_iter().map(Into::into).collect(),
        }
    }
}

/// The container's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// A new network namespace with only a loopback interface (up): nothing outside the
    /// container is reachable, not even the host's 127.0.0.1.
    #[default]
    None,
    /// The host's network namespace, and the host's `/etc/resolv.conf` bound read-only
    /// over the image's. Only for steps granted network access.
    Host,
}

/// One container: a root filesystem made of an overlay over `lower` (bottom first) with
/// `upper` receiving every change, entered with new mount, pid, uts and ipc namespaces.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    pub init: InitProgram,
    /// Lower directories, bottom → top (unpacked image layers). Empty means `scratch`:
    /// the container starts from an empty root.
    pub lower: Vec<PathBuf>,
    /// Receives the step's changes (overlay whiteouts for deletions). Should be empty.
    pub upper: PathBuf,
    /// The overlay's work directory: empty, on the same filesystem as `upper`.
    pub work: PathBuf,
    pub hostname: String,
    pub network: Network,
    /// Environment every exec starts with (the image's `Env`, usually with `PATH`);
    /// an exec's own variables override these. Nothing from kiln's environment is passed.
    pub env: Vec<(String, String)>,
    /// How long start-up may take before it counts as failed.
    pub start_timeout: Duration,
}

impl ContainerConfig {
    pub fn new(
        init: InitProgram,
        lower: Vec<PathBuf>,
        upper: impl Into<PathBuf>,
        work: impl Into<PathBuf>,
    ) -> Self {
        ContainerConfig {
            init,
            lower,
            upper: upper.into(),
            work: work.into(),
            hostname: "kiln".into(),
            network: Network::None,
            env: vec![("PATH".into(), DEFAULT_PATH.into())],
            start_timeout: Duration::from_secs(60),
        }
    }

    /// Checks what can be checked before the init starts, so a typo fails with a clear
    /// message rather than a mount error.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        for (what, p) in self.lower.iter().map(|p| ("lower directory", p)).chain([
            ("upper directory", &self.upper),
            ("work directory", &self.work),
        ]) {
            check_dir(what, p)?;
        }
        let h = &self.hostname;
        let valid = !h.is_empty()
            && h.len() <= 64
            && h.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
            });
        if !valid {
            return Err(Error::Config(format!(
                "hostname {h:?} is not a valid host name (letters, digits, '-' and '.', at most 64 bytes)"
            )));
        }
        for (k, v) in &self.env {
            check_env(k, v)?;
        }
        Ok(())
    }
}

fn check_dir(what: &str, p: &Path) -> Result<(), Error> {
    let s = p.to_str().ok_or_else(|| {
        Error::Config(format!(
            "{what} {p:?} is not valid UTF-8; kiln needs UTF-8 paths"
        ))
    })?;
    if !p.is_absolute() {
        return Err(Error::Config(format!(
            "{what} {s:?} must be an absolute path"
        )));
    }
    if s.contains('\0') {
        return Err(Error::Config(format!("{what} {s:?} contains a NUL byte")));
    }
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::Config(format!("{what} {s:?} is not a directory"))),
        Err(e) => Err(Error::Config(format!("{what} {s:?}: {e}"))),
    }
}

pub(crate) fn check_env(k: &str, v: &str) -> Result<(), Error> {
    if k.is_empty() || k.contains('=') || k.contains('\0') {
        return Err(Error::Config(format!(
            "environment variable name {k:?} is empty or contains '=' or NUL"
        )));
    }
    if v.contains('\0') {
        return Err(Error::Config(format!(
            "environment variable {k} contains a NUL byte"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> ContainerConfig {
        ContainerConfig::new(InitProgram::new("/bin/true"), vec![], dir, dir)
    }

    #[test]
    fn validation_names_the_problem() {
        let t = std::env::temp_dir();
        assert!(cfg(&t).validate().is_ok());
        let mut c = cfg(&t);
        c.hostname = "bad host".into();
        assert!(matches!(c.validate(), Err(Error::Config(m)) if m.contains("hostname")));
        let mut c = cfg(&t);
        c.lower = vec!["relative".into()];
        assert!(matches!(c.validate(), Err(Error::Config(m)) if m.contains("absolute")));
        let mut c = cfg(&t);
        c.upper = "/nonexistent/kiln-upper".into();
        assert!(matches!(c.validate(), Err(Error::Config(m)) if m.contains("upper")));
        let mut c = cfg(&t);
        c.env = vec![("A=B".into(), "x".into())];
        assert!(c.validate().is_err());
    }
}

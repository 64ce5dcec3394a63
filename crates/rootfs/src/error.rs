//! The one error type of this crate. Messages say what went wrong and what the user can do;
//! no type of a dependency (rustix, serde, tar) leaks out of this module.

use std::fmt;

/// An errno as the kernel returned it, shown with its name and text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const ENODEV: Errno = Errno(libc::ENODEV);

    fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            libc::EPERM => "EPERM",
            libc::ENOENT => "ENOENT",
            libc::EACCES => "EACCES",
            libc::EBUSY => "EBUSY",
            libc::EEXIST => "EEXIST",
            libc::ENOTDIR => "ENOTDIR",
            libc::EISDIR => "EISDIR",
            libc::EINVAL => "EINVAL",
            libc::ENOSPC => "ENOSPC",
            libc::EROFS => "EROFS",
            libc::ENOSYS => "ENOSYS",
            libc::ENODEV => "ENODEV",
            libc::ELOOP => "ELOOP",
            libc::E2BIG => "E2BIG",
            libc::ENOEXEC => "ENOEXEC",
            libc::EXDEV => "EXDEV",
            libc::ENOMEM => "ENOMEM",
            libc::EAGAIN => "EAGAIN",
            libc::EOPNOTSUPP => "EOPNOTSUPP",
            _ => return None,
        })
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = std::io::Error::from_raw_os_error(self.0).to_string();
        // std appends " (os error N)"; the name says the same more usefully.
        let text = text
            .rsplit_once(" (os error")
            .map(|(t, _)| t.to_string())
            .unwrap_or(text);
        match self.name() {
            Some(n) => write!(f, "{n}: {text}"),
            None => write!(f, "errno {}: {text}", self.0),
        }
    }
}

/// ": EPERM: Operation not permitted; <detail>", leaving out what is missing.
fn os_part(errno: &Option<Errno>, detail: &str) -> String {
    match (errno, detail.is_empty()) {
        (Some(e), true) => format!(": {e}"),
        (Some(e), false) => format!(": {e}; {detail}"),
        (None, false) => format!(": {detail}"),
        (None, true) => String::new(),
    }
}

/// Why a file request failed, for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileErrorKind {
    NotFound,
    PermissionDenied,
    IsDirectory,
    NotDirectory,
    InvalidPath,
    Other,
}

impl fmt::Display for FileErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileErrorKind::NotFound => "no such file or directory",
            FileErrorKind::PermissionDenied => "permission denied",
            FileErrorKind::IsDirectory => "is a directory",
            FileErrorKind::NotDirectory => "a path component is not a directory",
            FileErrorKind::InvalidPath => "invalid path",
            FileErrorKind::Other => "failed",
        })
    }
}

/// Everything that can go wrong while starting or using a container.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid container settings: {0}")]
    Config(String),

    #[error("cannot start the container init {program:?}: {source}")]
    InitSpawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "cannot create the container's namespaces: {what} failed{}; \
         kiln must run as root (or with CAP_SYS_ADMIN) on a kernel with mount, pid, uts, ipc \
         and network namespaces; inside another container, it needs to be privileged",
        os_part(.errno, .detail)
    )]
    Namespaces {
        what: String,
        errno: Option<Errno>,
        detail: String,
    },

    #[error("mount failed in the container: {what} with options {options:?}{}", os_part(.errno, .detail))]
    Mount {
        /// What was mounted where, e.g. `overlay on the container root`.
        what: String,
        /// The option string (for the overlay: every lower dir, upperdir, workdir, ...).
        options: String,
        errno: Option<Errno>,
        /// The kernel's own message when there is one, and a hint.
        detail: String,
    },

    #[error("container setup failed: {what}{}", os_part(.errno, .detail))]
    Setup {
        what: String,
        errno: Option<Errno>,
        detail: String,
    },

    #[error("the container did not become ready within {waited:?}: {detail}")]
    StartTimeout {
        waited: std::time::Duration,
        detail: String,
    },

    #[error("the container died: {detail}")]
    ContainerDied { detail: String },

    /// The container was stopped (requests still running then end with this too).
    #[error("the container was stopped; start a new one for the next step")]
    Stopped,

    #[error("command did not start in the container: {reason} (command: {command:?})")]
    ExecStart { command: String, reason: String },

    #[error("file {path:?} in the container is larger than the allowed {max} bytes")]
    TooLarge { path: String, max: u64 },

    #[error("{op} of {path:?} in the container failed: {detail}")]
    File {
        op: &'static str,
        path: String,
        kind: FileErrorKind,
        errno: Option<Errno>,
        detail: String,
    },

    #[error("refused to unpack {path:?} into the container: {reason}")]
    UnsafePath { path: String, reason: String },

    #[error("protocol error talking to the container init: {0}")]
    Protocol(String),

    #[error("local I/O error during {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// True for errors after which the container is gone (every later request fails too).
    pub fn is_container_gone(&self) -> bool {
        matches!(
            self,
            Error::ContainerDied { .. } | Error::Stopped | Error::Protocol(_)
        )
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_shows_name_and_text() {
        assert_eq!(Errno::EPERM.to_string(), "EPERM: Operation not permitted");
        assert!(Errno(4000).to_string().starts_with("errno 4000: "));
    }

    #[test]
    fn mount_error_names_options_and_errno() {
        let e = Error::Mount {
            what: "overlay on the container root".into(),
            options: "lowerdir+=/a,upperdir=/u,workdir=/w".into(),
            errno: Some(Errno::EINVAL),
            detail: "overlay: missing 'workdir'".into(),
        };
        let s = e.to_string();
        assert!(s.contains("lowerdir+=/a,upperdir=/u,workdir=/w"), "{s}");
        assert!(
            s.ends_with(": EINVAL: Invalid argument; overlay: missing 'workdir'"),
            "{s}"
        );
    }
}

//! kiln's build container: a root filesystem made of an overlay over image layers,
//! entered with Linux namespaces, with no daemon and no container runtime. The OCI
//! builder runs one container per step and turns its upper directory into a layer.
//!
//! ```no_run
//! # async fn f() -> Result<(), kiln_rootfs::Error> {
//! use kiln_rootfs::{Container, ContainerConfig, ExecRequest, InitProgram};
//! let init = InitProgram::current_exe(["__rootfs-init"]);
//! let cfg = ContainerConfig::new(init, vec!["/layers/0".into()], "/step/upper", "/step/work");
//! let c = Container::start(cfg).await?;
//! let out = c.exec(&ExecRequest::new("echo hi"), &mut |_, _| {}).await?;
//! assert!(out.success());
//! c.stop().await?; // every process gone; /step/upper holds the step's changes
//! # Ok(()) }
//! ```
//!
//! # Invariants
//!
//! * **Nothing is mounted in the host's mount namespace.** The init unshares a mount
//!   namespace, makes every mount private, and mounts the overlay, /proc, /dev and /sys
//!   there only. When the container's last process exits the kernel drops the namespace
//!   and every mount in it, so a crash or SIGKILL of kiln leaves no mount behind.
//! * **A step's processes all end with the container.** They live in a new pid namespace
//!   whose pid 1 is the init; killing it makes the kernel kill the rest. The init dies with
//!   kiln (`PR_SET_PDEATHSIG`), [`Container::stop`] returns only after the whole namespace
//!   is reaped, and dropping a [`Container`] or an [`Execution`] kills what it started.
//! * **No path reaches the host.** Every file request is served by the init *inside* the
//!   container, after `pivot_root`: `..`, absolute symlinks and `/proc/self/root` resolve in
//!   the container's root. Uploaded trees are refused entries that leave their destination.
//! * **No host environment leaks.** Commands get exactly [`ContainerConfig::env`] plus the
//!   request's variables; the init itself starts with an empty environment.
//! * **The upper directory is the step's diff.** The overlay runs with `redirect_dir`,
//!   `metacopy` and `index` off (so no change keeps its data in a lower layer), mount points
//!   the image lacked are removed after stop, and lower directories are never written.
//! * **Everything the container sends is hostile.** Frames are bounded before allocation,
//!   unreadable messages end the connection, and a read never exceeds the caller's limit.
//! * Steps run as root with Docker's default capabilities minus `MKNOD` and `NET_RAW`,
//!   read-only /sys and /proc/sys, and masked /proc/kcore & co. (see `init/run.rs`).
//!
//! # Why not crun or runc
//!
//! kiln enters the namespaces itself instead of generating an OCI `config.json` for a
//! runtime: a runtime is one more program the user must install, and on this project's
//! build machines `crun` fails outright (`setrlimit RLIMIT_NOFILE` without
//! `CAP_SYS_RESOURCE`, and no support for hybrid cgroups; see the peers notes). A build
//! step needs none of a runtime's cgroup, seccomp or hook machinery, and driving our own
//! init gives streaming exec and file transfer over one socket, with no `runc exec` process
//! per command (see BENCH.md for the per-exec cost).
//!
//! # Threads
//!
//! kiln is a multi-threaded tokio program, so nothing here forks it and then runs code:
//! the init is a fresh `exec` of a program the caller names ([`InitProgram`], normally
//! kiln's own binary with a hidden subcommand that calls [`init_main`] before anything
//! else). It is spawned from one dedicated thread that lives as long as the process,
//! because the parent-death signal fires when the *thread* that forked the child exits.
//!
//! # Root and rootless
//!
//! kiln runs as root (or with `CAP_SYS_ADMIN`). A rootless run would need, in the init: a
//! user namespace first (`CLONE_NEWUSER`), with uid/gid maps written by the setuid helpers
//! `newuidmap`/`newgidmap` from the user's `/etc/subuid` and `/etc/subgid` ranges (a single
//! mapped uid is not enough for images whose files belong to other users); overlayfs
//! mounted with `userxattr` (Linux 5.11+), which stores whiteouts and opaque markers as
//! `user.overlay.*` xattrs, so the layer writer must read those instead of `trusted.*`;
//! sysfs cannot be mounted in a user namespace without its own network namespace, and
//! device nodes cannot be created (bind-mount the host's /dev/null & co. instead); files
//! unpacked from layers keep only the ownerships the map covers.

mod cleanup;
mod config;
mod conn;
mod container;
mod error;
mod exec;
mod init;
mod protocol;
mod spawn;
mod transfer;
mod tree;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use config::{ContainerConfig, DEFAULT_PATH, InitProgram, Network};
pub use container::Container;
pub use error::{Errno, Error, FileErrorKind};
pub use exec::{
    DEFAULT_CAPTURE, ExecEvent, ExecOutput, ExecRequest, Execution, Stream, signal_name,
};
pub use init::init_main;
pub use protocol::{FileKind, FileStat};

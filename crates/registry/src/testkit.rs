//! Test peers for the registry (feature `testkit`): a private PostgreSQL cluster, the HTTP
//! server on a free port, Terraform 1.0.3 and headless Chromium. Everything listens on
//! 127.0.0.1, lives under `/var/tmp/kiln-peers/` and is removed on drop; a peer that cannot
//! start is an error with the reason, never a skipped test.
//!
//! Install the peers with `tools/setup.d/{postgres,terraform,chromium}.sh`.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::server::Server;
use crate::store::Store;

/// Where peers keep their state.
pub const PEERS_DIR: &str = "/var/tmp/kiln-peers";
/// The Terraform binary `tools/setup.d/terraform.sh` installs (override: `KILN_TERRAFORM`).
pub const TERRAFORM_BIN: &str = "/var/tmp/kiln-peers/terraform-1.0.3/terraform";

/// Why a peer could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("{what} is not installed ({detail}); run {hint}")]
    Missing {
        what: &'static str,
        detail: String,
        hint: &'static str,
    },
    #[error("{what} did not start: {message}")]
    Start { what: &'static str, message: String },
    #[error("{what} failed ({status}): {output}")]
    Command {
        what: String,
        status: String,
        output: String,
    },
}

fn start_err(what: &'static str) -> impl Fn(std::io::Error) -> TestkitError {
    move |e| TestkitError::Start {
        what,
        message: e.to_string(),
    }
}

/// A port nobody listens on right now (on 127.0.0.1).
pub fn free_port() -> Result<u16, TestkitError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(start_err("a free port"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(start_err("a free port"))
}

fn peers_dir() -> Result<PathBuf, TestkitError> {
    let d = PathBuf::from(PEERS_DIR);
    std::fs::create_dir_all(&d).map_err(start_err("the peers directory"))?;
    Ok(d)
}

/// Output of a finished command.
#[derive(Debug, Clone)]
pub struct Finished {
    pub success: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` with output to files in `dir`, killing it after `timeout`.
pub fn run_with_timeout(
    what: &str,
    mut cmd: Command,
    dir: &Path,
    timeout: Duration,
) -> Result<Finished, TestkitError> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let out_path = dir.join(format!(".cmd-{n}.out"));
    let err_path = dir.join(format!(".cmd-{n}.err"));
    let io = |e: std::io::Error| TestkitError::Command {
        what: what.to_string(),
        status: "not started".into(),
        output: e.to_string(),
    };
    cmd.stdin(Stdio::null())
        .stdout(File::create(&out_path).map_err(io)?)
        .stderr(File::create(&err_path).map_err(io)?);
    let mut child = cmd.spawn().map_err(io)?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().map_err(io)? {
            Some(s) => break s,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(TestkitError::Command {
                    what: what.to_string(),
                    status: format!("killed after {} s", timeout.as_secs()),
                    output: std::fs::read_to_string(&err_path).unwrap_or_default(),
                });
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    Ok(Finished {
        success: status.success(),
        status: status.to_string(),
        stdout,
        stderr,
    })
}

// ---------------------------------------------------------------- PostgreSQL

/// A private PostgreSQL cluster on 127.0.0.1 (initdb + pg_ctl as user `postgres` when run
/// as root). Role `kiln` / password `kiln` owns database `kiln`; [`Postgres::create_database`]
/// makes a fresh one per test.
pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    watchdog: Option<Child>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Postgres(127.0.0.1:{})", self.port)
    }
}

fn pg_bin() -> Result<PathBuf, TestkitError> {
    let base = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(base)
        .map_err(|e| TestkitError::Missing {
            what: "PostgreSQL",
            detail: format!("{}: {e}", base.display()),
            hint: "tools/setup.d/postgres.sh",
        })?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b).ok_or(TestkitError::Missing {
        what: "PostgreSQL",
        detail: "no /usr/lib/postgresql/*/bin/initdb".into(),
        hint: "tools/setup.d/postgres.sh",
    })
}

fn is_root() -> bool {
    // The real uid from /proc (no libc dependency for one check).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A command run as `postgres` when we are root (PostgreSQL refuses to run as root).
fn as_pg(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Postgres {
    /// Starts a new cluster (2–10 s: initdb dominates).
    pub fn start() -> Result<Postgres, TestkitError> {
        let bin = pg_bin()?;
        let root = peers_dir()?;
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = root.join(format!(
            "registry-pg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("run")).map_err(start_err("PostgreSQL"))?;
        std::fs::write(dir.join("pwfile"), "kiln\n").map_err(start_err("PostgreSQL"))?;
        if is_root() {
            let ok = Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(&dir)
                .status()
                .map_err(start_err("PostgreSQL"))?;
            if !ok.success() {
                return Err(TestkitError::Start {
                    what: "PostgreSQL",
                    message: "chown to user postgres failed (is the postgresql package installed?)"
                        .into(),
                });
            }
        }
        let mut pg = Postgres {
            dir: dir.clone(),
            bin: bin.clone(),
            port: 0,
            watchdog: None,
        };
        let mut initdb = as_pg(&bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", dir.join("pwfile").display()))
            .args(["-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]);
        let r = run_with_timeout(
            "initdb",
            initdb,
            &std::env::temp_dir(),
            Duration::from_secs(180),
        )?;
        if !r.success {
            return Err(TestkitError::Start {
                what: "PostgreSQL",
                message: format!("initdb: {}{}", r.stdout, r.stderr),
            });
        }
        pg.spawn_watchdog()?;
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port()?;
            let mut ctl = as_pg(&bin.join("pg_ctl"));
            ctl.arg("-D")
                .arg(dir.join("data"))
                .arg("-l")
                .arg(dir.join("pg.log"))
                .args(["-w", "-t", "120", "-o"])
                .arg(format!(
                    "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c full_page_writes=off -c max_connections=200",
                    dir.join("run").display()
                ))
                .arg("start");
            let r = run_with_timeout(
                "pg_ctl start",
                ctl,
                &std::env::temp_dir(),
                Duration::from_secs(180),
            )?;
            if r.success {
                pg.port = port;
                break;
            }
            last = format!(
                "{}{}{}",
                r.stdout,
                r.stderr,
                std::fs::read_to_string(dir.join("pg.log")).unwrap_or_default()
            );
        }
        if pg.port == 0 {
            return Err(TestkitError::Start {
                what: "PostgreSQL",
                message: last,
            });
        }
        pg.psql("CREATE ROLE kiln LOGIN PASSWORD 'kiln'")?;
        pg.psql("CREATE DATABASE kiln OWNER kiln")?;
        Ok(pg)
    }

    /// One cluster for the whole test process, started on first use. It is stopped and
    /// removed by a watchdog when the process exits, however it exits.
    pub fn shared() -> Result<&'static Postgres, TestkitError> {
        static SHARED: OnceLock<Result<Postgres, String>> = OnceLock::new();
        match SHARED.get_or_init(|| Postgres::start().map_err(|e| e.to_string())) {
            Ok(pg) => Ok(pg),
            Err(e) => Err(TestkitError::Start {
                what: "PostgreSQL (shared)",
                message: e.clone(),
            }),
        }
    }

    /// Stops the cluster and removes its directory when this process ends, even on a panic
    /// abort or SIGKILL.
    fn spawn_watchdog(&mut self) -> Result<(), TestkitError> {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {stop} -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            stop = if is_root() {
                format!(
                    "runuser -u postgres -- '{}'",
                    self.bin.join("pg_ctl").display()
                )
            } else {
                format!("'{}'", self.bin.join("pg_ctl").display())
            },
            data = self.dir.join("data").display(),
            dir = self.dir.display(),
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(start_err("the PostgreSQL watchdog"))?;
        self.watchdog = Some(child);
        Ok(())
    }

    fn psql(&self, sql: &str) -> Result<(), TestkitError> {
        let mut c = as_pg(&self.bin.join("psql"));
        c.arg("-h")
            .arg(self.dir.join("run"))
            .arg("-p")
            .arg(self.port.to_string())
            .args([
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ]);
        let r = run_with_timeout("psql", c, &std::env::temp_dir(), Duration::from_secs(120))?;
        if r.success {
            Ok(())
        } else {
            Err(TestkitError::Command {
                what: format!("psql -c {sql:?}"),
                status: r.status,
                output: r.stderr,
            })
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `kiln`.
    pub fn url(&self) -> String {
        format!("postgres://kiln:kiln@127.0.0.1:{}/kiln", self.port)
    }

    /// A new empty database owned by `kiln`, and its URL.
    pub fn create_database(&self) -> Result<String, TestkitError> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "kiln_t{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.psql(&format!("CREATE DATABASE {name} OWNER kiln"))?;
        Ok(format!(
            "postgres://kiln:kiln@127.0.0.1:{}/{name}",
            self.port
        ))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut ctl = as_pg(&self.bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = ctl.status();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------- HTTP server

/// The registry server on a free 127.0.0.1 port, in a background task; stopped on drop.
pub struct TestServer {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// Binds and starts serving `store`. Needs a tokio runtime.
    pub async fn start(store: Store) -> Result<TestServer, TestkitError> {
        let server = Server::bind(store, SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(|e| TestkitError::Start {
                what: "the registry server",
                message: e.to_string(),
            })?;
        let addr = server.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if let Err(e) = server
                .run_until(async {
                    let _ = rx.await;
                })
                .await
            {
                tracing::error!(error = %e, "test registry server stopped");
            }
        });
        Ok(TestServer {
            addr,
            shutdown: Some(tx),
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

// ---------------------------------------------------------------- Terraform

/// The Terraform 1.0.3 binary (`KILN_TERRAFORM` overrides the installed path).
pub fn terraform_binary() -> Result<PathBuf, TestkitError> {
    let p = std::env::var_os("KILN_TERRAFORM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(TERRAFORM_BIN));
    if p.is_file() {
        Ok(p)
    } else {
        Err(TestkitError::Missing {
            what: "Terraform 1.0.3",
            detail: format!("{} does not exist", p.display()),
            hint: "tools/setup.d/terraform.sh",
        })
    }
}

/// A Terraform working directory with no network use: checkpoint off, an empty CLI
/// configuration, automation mode. Removed on drop.
pub struct Terraform {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Terraform {
    /// A fresh directory holding `main.tf`.
    pub fn new(main_tf: &str) -> Result<Terraform, TestkitError> {
        let bin = terraform_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("registry-tf-")
            .tempdir_in(peers_dir()?)
            .map_err(start_err("a Terraform directory"))?;
        std::fs::write(dir.path().join("main.tf"), main_tf).map_err(start_err("main.tf"))?;
        std::fs::write(dir.path().join("terraformrc"), "").map_err(start_err("terraformrc"))?;
        Ok(Terraform { bin, dir })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `terraform ARGS` (up to 5 minutes).
    pub fn run(&self, args: &[&str]) -> Result<Finished, TestkitError> {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .current_dir(self.dir.path())
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_INPUT", "0")
            .env("TF_CLI_CONFIG_FILE", self.dir.path().join("terraformrc"))
            .env("HOME", self.dir.path())
            .env_remove("TF_LOG");
        run_with_timeout(
            &format!("terraform {}", args.join(" ")),
            c,
            self.dir.path(),
            Duration::from_secs(300),
        )
    }
}

// ---------------------------------------------------------------- Chromium

/// Debian's chromium.
pub fn chromium_binary() -> Result<PathBuf, TestkitError> {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    Err(TestkitError::Missing {
        what: "chromium",
        detail: "no /usr/bin/chromium".into(),
        hint: "tools/setup.d/chromium.sh",
    })
}

/// Headless Chromium with a throwaway profile and no background network.
pub struct Chromium {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Chromium {
    pub fn new() -> Result<Chromium, TestkitError> {
        let bin = chromium_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("registry-chromium-")
            .tempdir_in(peers_dir()?)
            .map_err(start_err("a Chromium profile"))?;
        Ok(Chromium { bin, dir })
    }

    fn command(&self, extra: &[String], url: &str) -> Command {
        let mut c = Command::new(&self.bin);
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            self.dir.path().join("profile").display()
        ))
        .args(extra)
        .arg(url);
        c
    }

    /// The DOM after rendering `url`.
    pub fn dump_dom(&self, url: &str) -> Result<String, TestkitError> {
        let r = run_with_timeout(
            "chromium --dump-dom",
            self.command(&["--dump-dom".into()], url),
            self.dir.path(),
            Duration::from_secs(180),
        )?;
        if !r.success || r.stdout.is_empty() {
            return Err(TestkitError::Command {
                what: "chromium --dump-dom".into(),
                status: r.status,
                output: r.stderr,
            });
        }
        Ok(r.stdout)
    }

    /// A PNG screenshot of `url` at `width`×`height`, written to `out`.
    pub fn screenshot(
        &self,
        url: &str,
        width: u32,
        height: u32,
        out: &Path,
    ) -> Result<(), TestkitError> {
        let r = run_with_timeout(
            "chromium --screenshot",
            self.command(
                &[
                    format!("--screenshot={}", out.display()),
                    format!("--window-size={width},{height}"),
                ],
                url,
            ),
            self.dir.path(),
            Duration::from_secs(180),
        )?;
        if !r.success || !out.is_file() {
            return Err(TestkitError::Command {
                what: "chromium --screenshot".into(),
                status: r.status,
                output: r.stderr,
            });
        }
        Ok(())
    }
}

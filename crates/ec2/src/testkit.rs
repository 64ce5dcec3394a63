//! A moto_server for tests (feature `testkit`): started on a free 127.0.0.1 port, polled
//! until it answers, killed and its state removed on drop (also when the test panics).
//!
//! moto comes from `tools/setup.d/moto.sh` (a venv under `/var/tmp/kiln-peers/moto-venv`);
//! `KILN_MOTO_SERVER` overrides the binary. With [`MotoOptions::signature_checking`] moto
//! verifies SigV4 signatures and IAM policies: the first three calls are free
//! (`INITIAL_NO_AUTH_ACTION_COUNT=3`) and are spent here creating an IAM user with an
//! allow-all policy, whose keys [`MotoServer::credentials`] returns.

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::Idempotent;
use crate::params::Params;
use crate::retry::RetryPolicy;
use crate::secret::Secret;
use crate::{ClientConfig, Credentials, Ec2Client, Ec2Error};

/// Up to this long for moto to answer after it was started (a loaded 2-core machine).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const IAM_VERSION: &str = "2010-05-08";
/// Credentials moto accepts when it checks none.
pub const MOTO_ACCESS_KEY: &str = "testing";
pub const MOTO_SECRET_KEY: &str = "testing";

#[derive(Debug, Clone)]
pub struct MotoOptions {
    /// Verify signatures and IAM policies (moto's `INITIAL_NO_AUTH_ACTION_COUNT`).
    pub signature_checking: bool,
    /// moto's ~1300 default AMIs per region (needed for `source_ami_filter` tests; off makes
    /// the first EC2 call about 3 s faster).
    pub load_default_amis: bool,
}

impl Default for MotoOptions {
    fn default() -> Self {
        MotoOptions {
            signature_checking: false,
            load_default_amis: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error(
        "moto_server not found at {}: run tools/setup.d/moto.sh (or set KILN_MOTO_SERVER)",
        .0.display()
    )]
    NotInstalled(PathBuf),
    #[error("cannot start moto_server: {0}")]
    Spawn(String),
    #[error("moto_server did not answer on {endpoint} within {waited:?}; its log:\n{log}")]
    NotReady {
        endpoint: String,
        waited: Duration,
        log: String,
    },
    #[error("moto IAM bootstrap failed: {0}")]
    Bootstrap(#[from] Ec2Error),
}

/// A running moto_server.
pub struct MotoServer {
    child: Child,
    /// Closing it makes the watchdog kill moto.
    stdin: Option<ChildStdin>,
    port: u16,
    endpoint: String,
    credentials: Credentials,
    signature_checking: bool,
    // Dropped after the child is killed: holds the log.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for MotoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MotoServer")
            .field("pid", &self.child.id())
            .field("endpoint", &self.endpoint)
            .field("signature_checking", &self.signature_checking)
            .finish()
    }
}

fn moto_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let peers = std::env::var_os("KILN_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/kiln-peers"));
    peers.join("moto-venv/bin/moto_server")
}

fn free_port() -> Result<u16, TestkitError> {
    let l = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| TestkitError::Spawn(format!("no free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| TestkitError::Spawn(e.to_string()))
}

impl MotoServer {
    /// moto without signature checking, default AMIs loaded.
    pub async fn start() -> Result<MotoServer, TestkitError> {
        Self::start_with(MotoOptions::default()).await
    }

    pub async fn start_with(opts: MotoOptions) -> Result<MotoServer, TestkitError> {
        let bin = moto_binary();
        if !bin.is_file() {
            return Err(TestkitError::NotInstalled(bin));
        }
        // The port can be taken between probing and moto's bind: try a few.
        let mut last_err = None;
        for _ in 0..5 {
            match Self::spawn_once(&bin, &opts).await {
                Ok(server) => return server.bootstrap(opts.signature_checking).await,
                Err(e @ TestkitError::NotReady { .. }) if is_port_clash(&e) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| TestkitError::Spawn("no attempt made".into())))
    }

    async fn spawn_once(bin: &PathBuf, opts: &MotoOptions) -> Result<MotoServer, TestkitError> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-moto-")
            .tempdir()
            .map_err(|e| TestkitError::Spawn(format!("temp dir: {e}")))?;
        let port = free_port()?;
        let log = File::create(dir.path().join("moto.log"))
            .map_err(|e| TestkitError::Spawn(format!("log file: {e}")))?;
        let log2 = log
            .try_clone()
            .map_err(|e| TestkitError::Spawn(format!("log file: {e}")))?;
        // moto runs under a small sh watchdog: when our end of its stdin pipe closes (on
        // drop, or when this process dies, even by SIGKILL) the watchdog kills moto, so no
        // test run leaves a moto_server behind. The sh exits exactly when moto does.
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg("kiln-moto-watchdog")
            .arg(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log2)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        if opts.signature_checking {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "3");
        }
        if !opts.load_default_amis {
            cmd.env("MOTO_EC2_LOAD_DEFAULT_AMIS", "false");
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| TestkitError::Spawn(format!("{}: {e}", bin.display())))?;
        let stdin = child.stdin.take();
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut server = MotoServer {
            child,
            stdin,
            port,
            endpoint,
            credentials: Credentials::new(MOTO_ACCESS_KEY, Secret::new(MOTO_SECRET_KEY), None),
            signature_checking: opts.signature_checking,
            dir,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| TestkitError::Spawn(e.to_string()))?;
        let started = Instant::now();
        // moto's own API, not an AWS action: it does not use up the free auth calls.
        let url = format!("{}/moto-api/", self.endpoint);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(TestkitError::NotReady {
                    endpoint: self.endpoint.clone(),
                    waited: started.elapsed(),
                    log: format!("(exited with {status})\n{}", self.log_tail(30)),
                });
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(TestkitError::NotReady {
                    endpoint: self.endpoint.clone(),
                    waited: started.elapsed(),
                    log: self.log_tail(30),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// With signature checking: spend the free calls on an admin IAM user.
    async fn bootstrap(mut self, signature_checking: bool) -> Result<MotoServer, TestkitError> {
        if !signature_checking {
            return Ok(self);
        }
        let boot = self.client_with("us-east-1", self.credentials.clone())?;
        self.credentials = create_user(&boot, "kiln-admin", &allow_all_policy()).await?;
        Ok(self)
    }

    /// Creates another IAM user with the given policy document and returns its keys
    /// (signature-checking servers only). E.g. a user with only `ec2:Describe*` to see
    /// `UnauthorizedOperation`/`AccessDenied`.
    pub async fn create_user(&self, name: &str, policy: &str) -> Result<Credentials, TestkitError> {
        let admin = self.client_with("us-east-1", self.credentials.clone())?;
        create_user(&admin, name, policy).await
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The access key id of [`MotoServer::credentials`].
    pub fn access_key_id(&self) -> &str {
        self.credentials.access_key_id()
    }

    /// The secret of [`MotoServer::credentials`] (a throwaway key of this server), for
    /// tests that write it into profile files or environments.
    pub fn secret_access_key(&self) -> &str {
        self.credentials.secret_access_key()
    }

    /// Credentials moto accepts (the bootstrapped user's when signatures are checked).
    pub fn credentials(&self) -> Credentials {
        self.credentials.clone()
    }

    /// A client config for this server: its endpoint, quick retries, client tokens
    /// emulated (moto ignores them).
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            endpoint: Some(self.endpoint.clone()),
            retry: RetryPolicy {
                max_attempts: 4,
                base_delay: Duration::from_millis(20),
                max_delay: Duration::from_millis(200),
            },
            emulate_client_tokens: true,
            ..Default::default()
        }
    }

    /// A client for `region` with valid credentials.
    pub fn client(&self, region: &str) -> Result<Ec2Client, Ec2Error> {
        Ec2Client::new(region, self.credentials.clone(), self.client_config())
    }

    fn client_with(&self, region: &str, creds: Credentials) -> Result<Ec2Client, Ec2Error> {
        Ec2Client::new(region, creds, self.client_config())
    }

    /// Wipes all emulated state (`POST /moto-api/reset`). With signature checking this also
    /// forgets the IAM users, so only use it on servers without.
    pub async fn reset(&self) -> Result<(), TestkitError> {
        let r = reqwest::Client::new()
            .post(format!("{}/moto-api/reset", self.endpoint))
            .send()
            .await
            .map_err(|e| TestkitError::Spawn(format!("reset: {e}")))?;
        if !r.status().is_success() {
            return Err(TestkitError::Spawn(format!(
                "reset answered {}",
                r.status()
            )));
        }
        Ok(())
    }

    /// The last `lines` lines of moto's log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sh -c WATCHDOG name moto_server args...`: runs moto, kills it with SIGKILL once stdin
/// reaches EOF, and exits with moto's status. The watcher is stopped as soon as moto exits
/// by itself, so it never signals a pid that may have been reused.
const WATCHDOG: &str = r#"exec 3<&0
"$@" </dev/null 3<&- &
moto=$!
(while read -r _ <&3; do :; done; kill -9 "$moto" 2>/dev/null) &
watcher=$!
wait "$moto"
status=$?
kill "$watcher" 2>/dev/null
exit "$status""#;

fn is_port_clash(e: &TestkitError) -> bool {
    matches!(e, TestkitError::NotReady { log, .. } if log.contains("Address already in use"))
}

fn allow_all_policy() -> String {
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#
        .to_string()
}

async fn create_user(
    iam: &Ec2Client,
    name: &str,
    policy: &str,
) -> Result<Credentials, TestkitError> {
    let mut p = Params::new();
    p.set("UserName", name);
    iam.query("iam", IAM_VERSION, "CreateUser", &p, Idempotent::No)
        .await?;
    let mut p = Params::new();
    p.set("UserName", name)
        .set("PolicyName", "kiln-test")
        .set("PolicyDocument", policy);
    iam.query("iam", IAM_VERSION, "PutUserPolicy", &p, Idempotent::Yes)
        .await?;
    let mut p = Params::new();
    p.set("UserName", name);
    let body = iam
        .query("iam", IAM_VERSION, "CreateAccessKey", &p, Idempotent::No)
        .await?;
    let doc = crate::xml::parse(&body).map_err(|detail| Ec2Error::Malformed {
        action: "CreateAccessKey",
        detail,
    })?;
    let find = |name: &str| {
        doc.descendants()
            .find(|n| n.is_element() && n.tag_name().name() == name)
            .and_then(|n| n.text())
            .map(str::to_string)
    };
    match (find("AccessKeyId"), find("SecretAccessKey")) {
        (Some(ak), Some(sk)) => Ok(Credentials::new(ak, Secret::new(sk), None)),
        _ => Err(TestkitError::Bootstrap(Ec2Error::Malformed {
            action: "CreateAccessKey",
            detail: "no AccessKeyId/SecretAccessKey in the answer".into(),
        })),
    }
}

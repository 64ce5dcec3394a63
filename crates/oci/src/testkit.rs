//! Test peers (feature `testkit`): Debian's `docker-registry` (CNCF distribution 2.8) on a
//! free 127.0.0.1 port, plain HTTP, TLS with a generated CA plus htpasswd (bcrypt)
//! basic auth, or token auth against [`TokenServer`], a small token service that signs
//! ES256 JWTs with a key whose certificate the registry trusts (`rootcertbundle`).
//!
//! Every peer lives in its own temporary directory and is stopped (SIGTERM, then
//! SIGKILL) and removed on drop, also when a test panics. A peer that cannot start is an
//! error with the reason and the peer's log. Install the tools with
//! `tools/setup.d/registry.sh`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;

/// Why a peer did not start.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{tool} is not installed: run tools/setup.d/registry.sh")]
    MissingTool { tool: &'static str },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{tool} failed ({what}): {stderr}")]
    Tool {
        tool: &'static str,
        what: &'static str,
        stderr: String,
    },
    #[error("the registry exited before it was ready; its log:\n{log}")]
    Exited { log: String },
    #[error("the registry did not answer within {secs} s; its log:\n{log}")]
    Timeout { secs: u64, log: String },
    #[error("the token key does not load: {0}")]
    Key(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PeerError {
    let what = what.into();
    move |source| PeerError::Io { what, source }
}

/// A free TCP port on 127.0.0.1 (the kernel's choice; released before returning).
pub fn free_port() -> Result<u16, PeerError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("binding 127.0.0.1:0"))?;
    Ok(l.local_addr().map_err(io("reading the bound port"))?.port())
}

fn which(tool: &'static str) -> Result<PathBuf, PeerError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in
        std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
    {
        let p = dir.join(tool);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(PeerError::MissingTool { tool })
}

fn run(
    tool: &'static str,
    what: &'static str,
    args: &[&str],
    dir: &Path,
) -> Result<Vec<u8>, PeerError> {
    let bin = which(tool)?;
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("running {tool}")))?;
    if !out.status.success() {
        return Err(PeerError::Tool {
            tool,
            what,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(out.stdout)
}

/// A CA and a server certificate for 127.0.0.1/localhost, made with the openssl CLI.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestPki {
    pub fn generate(dir: &Path) -> Result<TestPki, PeerError> {
        std::fs::create_dir_all(dir).map_err(io("creating the PKI dir"))?;
        run(
            "openssl",
            "making the CA",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=kiln test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
            dir,
        )?;
        run(
            "openssl",
            "making the server key",
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "tls.key",
                "-out",
                "tls.csr",
            ],
            dir,
        )?;
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .map_err(io("writing ext.cnf"))?;
        run(
            "openssl",
            "signing the server certificate",
            &[
                "x509",
                "-req",
                "-in",
                "tls.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-out",
                "tls.crt",
            ],
            dir,
        )?;
        Ok(TestPki {
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("tls.crt"),
            server_key: dir.join("tls.key"),
        })
    }
}

/// How the registry authenticates clients.
#[derive(Debug, Clone)]
pub enum RegistryAuth {
    None,
    /// htpasswd (bcrypt) with one user.
    Htpasswd {
        user: String,
        password: String,
    },
    /// Bearer tokens from a token service.
    Token {
        realm: String,
        service: String,
        issuer: String,
        root_cert: PathBuf,
    },
}

/// A running `docker-registry serve`.
pub struct RegistryPeer {
    child: Child,
    dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`, as used in references.
    pub host: String,
    /// `http://…` or `https://…`.
    pub url: String,
    /// The CA to trust (TLS peers only).
    pub ca_file: Option<PathBuf>,
    log: PathBuf,
}

impl std::fmt::Debug for RegistryPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryPeer")
            .field("url", &self.url)
            .finish()
    }
}

impl RegistryPeer {
    /// Plain HTTP, no auth.
    pub fn plain() -> Result<Self, PeerError> {
        Self::start(false, RegistryAuth::None)
    }

    /// TLS (generated CA) and htpasswd basic auth for `user`/`password`.
    pub fn tls_basic(user: &str, password: &str) -> Result<Self, PeerError> {
        Self::start(
            true,
            RegistryAuth::Htpasswd {
                user: user.into(),
                password: password.into(),
            },
        )
    }

    /// Starts a registry; retries with another port if the chosen one was taken.
    pub fn start(tls: bool, auth: RegistryAuth) -> Result<Self, PeerError> {
        let bin = which("docker-registry")?;
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(&bin, tls, &auth) {
                Ok(p) => return Ok(p),
                Err(PeerError::Exited { log }) if log.contains("address already in use") => {
                    last = Some(PeerError::Exited { log });
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(PeerError::Exited { log: String::new() }))
    }

    fn try_start(bin: &Path, tls: bool, auth: &RegistryAuth) -> Result<Self, PeerError> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-registry-")
            .tempdir_in(peers_root()?)
            .map_err(io("creating the registry dir"))?;
        let d = dir.path();
        let port = free_port()?;
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: kiln-test-{port}\n",
            d.join("data").display()
        );
        let mut ca_file = None;
        if tls {
            let pki = TestPki::generate(&d.join("pki"))?;
            cfg += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                pki.server_cert.display(),
                pki.server_key.display()
            );
            ca_file = Some(pki.ca_cert);
        }
        match auth {
            RegistryAuth::None => {}
            RegistryAuth::Htpasswd { user, password } => {
                let line = run(
                    "htpasswd",
                    "hashing the password",
                    &["-Bbn", user, password],
                    d,
                )?;
                std::fs::write(d.join("htpasswd"), line).map_err(io("writing htpasswd"))?;
                cfg += &format!(
                    "auth:\n  htpasswd:\n    realm: kiln-registry\n    path: {}\n",
                    d.join("htpasswd").display()
                );
            }
            RegistryAuth::Token {
                realm,
                service,
                issuer,
                root_cert,
            } => {
                cfg += &format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                    root_cert.display()
                );
            }
        }
        std::fs::write(d.join("config.yml"), cfg).map_err(io("writing config.yml"))?;
        let log = d.join("registry.log");
        let out = std::fs::File::create(&log).map_err(io("creating registry.log"))?;
        let err = out.try_clone().map_err(io("opening registry.log"))?;
        let child = Command::new(bin)
            .arg("serve")
            .arg(d.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io("starting docker-registry"))?;
        let scheme = if tls { "https" } else { "http" };
        let mut peer = RegistryPeer {
            child,
            dir,
            host: format!("127.0.0.1:{port}"),
            url: format!("{scheme}://127.0.0.1:{port}"),
            ca_file,
            log,
        };
        peer.wait_ready(port)?;
        Ok(peer)
    }

    fn wait_ready(&mut self, port: u16) -> Result<(), PeerError> {
        let limit = Duration::from_secs(120);
        let start = Instant::now();
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Err(PeerError::Exited { log: self.log() });
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(PeerError::Timeout {
                    secs: limit.as_secs(),
                    log: self.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Requests in the access log as `(method, path, status)`.
    pub fn access_log(&self) -> Vec<(String, String, u16)> {
        let mut v = Vec::new();
        for line in self.log().lines() {
            // 127.0.0.1 - - [date] "PUT /v2/x/blobs/uploads/… HTTP/1.1" 201 0 "" "agent"
            let Some(start) = line.find('"') else {
                continue;
            };
            let rest = &line[start + 1..];
            let Some(end) = rest.find('"') else { continue };
            let mut req = rest[..end].split(' ');
            let (Some(m), Some(p)) = (req.next(), req.next()) else {
                continue;
            };
            if !m.bytes().all(|b| b.is_ascii_uppercase()) {
                continue;
            }
            let status = rest[end + 1..]
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            v.push((m.to_string(), p.to_string(), status));
        }
        v
    }

    /// The storage directory (blobs and repositories as the registry keeps them).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for RegistryPeer {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

fn stop_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        if let Some(pid) = i32::try_from(child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Where peers keep their state: `/var/tmp/kiln-peers` (created if needed).
fn peers_root() -> Result<PathBuf, PeerError> {
    let p = PathBuf::from("/var/tmp/kiln-peers");
    std::fs::create_dir_all(&p).map_err(io("creating /var/tmp/kiln-peers"))?;
    Ok(p)
}

/// A token service for the registry's `auth: token` mode: `GET /token?service=…&scope=…`
/// with Basic credentials returns an ES256 JWT granting the requested actions; wrong or
/// missing credentials get 401. It signs with a P-256 key whose self-signed certificate
/// is the registry's `rootcertbundle` and is sent in the JWT's `x5c` header.
pub struct TokenServer {
    /// `http://127.0.0.1:<port>/token`.
    pub realm: String,
    /// `127.0.0.1:<port>` (list it as insecure: the service is plain HTTP).
    pub host: String,
    pub service: String,
    pub issuer: String,
    /// The signing certificate (PEM), for `rootcertbundle`.
    pub cert: PathBuf,
    issued: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for TokenServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenServer")
            .field("realm", &self.realm)
            .finish()
    }
}

impl TokenServer {
    pub fn start(user: &str, password: &str) -> Result<Self, PeerError> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-token-")
            .tempdir_in(peers_root()?)
            .map_err(io("creating the token dir"))?;
        let d = dir.path();
        run(
            "openssl",
            "making the token key",
            &[
                "ecparam",
                "-genkey",
                "-name",
                "prime256v1",
                "-noout",
                "-out",
                "key.pem",
            ],
            d,
        )?;
        run(
            "openssl",
            "converting the token key",
            &[
                "pkcs8", "-topk8", "-nocrypt", "-in", "key.pem", "-outform", "DER", "-out",
                "key.p8",
            ],
            d,
        )?;
        run(
            "openssl",
            "making the token certificate",
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "key.pem",
                "-days",
                "2",
                "-subj",
                "/CN=kiln token issuer",
                "-out",
                "token.crt",
            ],
            d,
        )?;
        run(
            "openssl",
            "converting the token certificate",
            &[
                "x509",
                "-in",
                "token.crt",
                "-outform",
                "DER",
                "-out",
                "token.der",
            ],
            d,
        )?;
        let pkcs8 = std::fs::read(d.join("key.p8")).map_err(io("reading key.p8"))?;
        let cert_der = std::fs::read(d.join("token.der")).map_err(io("reading token.der"))?;
        let key = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
        )
        .map_err(|e| PeerError::Key(e.to_string()))?;
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io("binding the token service"))?;
        let port = listener
            .local_addr()
            .map_err(io("reading the token port"))?
            .port();
        listener
            .set_nonblocking(true)
            .map_err(io("configuring the token listener"))?;
        let service = "kiln-registry".to_string();
        let issuer = "kiln-token-issuer".to_string();
        let issued = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = TokenCtx {
            key,
            x5c: base64::engine::general_purpose::STANDARD.encode(&cert_der),
            user: user.into(),
            password: password.into(),
            service: service.clone(),
            issuer: issuer.clone(),
            issued: issued.clone(),
            refused: refused.clone(),
        };
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                        ctx.serve(s);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(TokenServer {
            realm: format!("http://127.0.0.1:{port}/token"),
            host: format!("127.0.0.1:{port}"),
            service,
            issuer,
            cert: d.join("token.crt"),
            issued,
            refused,
            stop,
            thread: Some(thread),
            _dir: dir,
        })
    }

    /// The registry auth settings that trust this service.
    pub fn registry_auth(&self) -> RegistryAuth {
        RegistryAuth::Token {
            realm: self.realm.clone(),
            service: self.service.clone(),
            issuer: self.issuer.clone(),
            root_cert: self.cert.clone(),
        }
    }

    /// Tokens issued, and requests refused (bad credentials).
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::Relaxed)
    }
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct TokenCtx {
    key: aws_lc_rs::signature::EcdsaKeyPair,
    x5c: String,
    user: String,
    password: String,
    service: String,
    issuer: String,
    issued: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

fn pct_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl TokenCtx {
    fn serve(&self, mut s: TcpStream) {
        let mut reader = BufReader::new(match s.try_clone() {
            Ok(c) => c,
            Err(_) => return,
        });
        let mut request_line = String::new();
        if reader
            .by_ref()
            .take(8192)
            .read_line(&mut request_line)
            .is_err()
        {
            return;
        }
        let mut auth = None;
        loop {
            let mut line = String::new();
            match reader.by_ref().take(8192).read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("authorization")
            {
                auth = Some(v.trim().to_string());
            }
        }
        let target = request_line.split_whitespace().nth(1).unwrap_or("");
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
        let mut scopes = Vec::new();
        let mut service = String::new();
        for kv in query.split('&') {
            if let Some((k, v)) = kv.split_once('=') {
                match k {
                    "scope" => scopes.push(pct_decode(v)),
                    "service" => service = pct_decode(v),
                    _ => {}
                }
            }
        }
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.user, self.password))
        );
        let (status, body) =
            if auth.as_deref() != Some(expected.as_str()) || service != self.service {
                self.refused.fetch_add(1, Ordering::Relaxed);
                (
                "401 Unauthorized",
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"invalid username or password"}]}"#
                    .to_string(),
            )
            } else {
                match self.token(&scopes) {
                    Some(t) => {
                        self.issued.fetch_add(1, Ordering::Relaxed);
                        (
                            "200 OK",
                            format!(r#"{{"token":"{t}","access_token":"{t}","expires_in":300}}"#),
                        )
                    }
                    None => (
                        "500 Internal Server Error",
                        r#"{"errors":[{"code":"UNKNOWN","message":"signing failed"}]}"#.into(),
                    ),
                }
            };
        let _ = write!(
            s,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.flush();
    }

    fn token(&self, scopes: &[String]) -> Option<String> {
        let now =
            i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()?;
        let mut access = Vec::new();
        for s in scopes {
            // repository:<name>:<actions>; names have no ':' but may be host-less paths.
            let (kind, rest) = s.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            access.push(serde_json::json!({
                "type": kind,
                "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }));
        }
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        let claims = serde_json::json!({
            "iss": self.issuer,
            "sub": self.user,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("kiln-{now}-{}", self.issued.load(Ordering::Relaxed)),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = self.key.sign(&rng, signing_input.as_bytes()).ok()?;
        Some(format!("{signing_input}.{}", b64url(sig.as_ref())))
    }
}

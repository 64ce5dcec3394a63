//! Test peers for downloads (feature `testkit`): the Range-capable HTTP(S) server
//! `tools/peers/http_range_server.py` started on a free port of 127.0.0.1, a throwaway CA
//! and server certificate made with the `openssl` CLI, and helpers for test files.
//!
//! Every peer lives in its own temporary directory, is killed (by its pid) and removed on
//! drop, also when the test panics. A peer that cannot start is an error with the reason;
//! readiness is polled generously (up to 90 s) so a loaded machine does not fail tests.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest as _;

const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a peer could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("test peer: {0}")]
pub struct PeerError(pub String);

fn perr(what: &str, e: impl std::fmt::Display) -> PeerError {
    PeerError(format!("{what}: {e}"))
}

/// The Python interpreter: `$KILN_PYTHON`, else Debian's `/usr/bin/python3`, else `python3`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let debian = Path::new("/usr/bin/python3");
    if debian.exists() {
        return debian.to_path_buf();
    }
    PathBuf::from("python3")
}

/// `tools/peers/http_range_server.py` of this repository (or `$KILN_HTTP_RANGE_SERVER`).
pub fn server_script() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_HTTP_RANGE_SERVER").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/peers/http_range_server.py")
}

/// One request as the server logged it (before answering it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct LoggedRequest {
    pub method: String,
    /// The request target: a path, or an absolute URL / `host:port` through the proxy.
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub host: Option<String>,
    pub proxy: bool,
    pub proxy_auth: bool,
}

/// Options of the server; see the script's help for what each does.
#[derive(Debug, Default, Clone)]
pub struct HttpServerBuilder {
    root: Option<PathBuf>,
    cut_after: Option<u64>,
    cut_times: Option<u32>,
    ignore_range: bool,
    no_validators: bool,
    tls: Option<(PathBuf, PathBuf)>,
    redirects: Vec<(String, String)>,
    statuses: Vec<(String, u16)>,
    stall_after: Option<u64>,
    hold_after: Option<u64>,
    throttle: Option<u64>,
    proxy: bool,
    proxy_auth: Option<String>,
}

impl HttpServerBuilder {
    /// Serve this directory (default: an empty `root/` in the peer's own directory).
    pub fn root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.root = Some(dir.into());
        self
    }
    /// Cut the connection after `n` body bytes on the first GET.
    pub fn cut_after(mut self, n: u64) -> Self {
        self.cut_after = Some(n);
        self
    }
    /// Cut the first `k` GETs instead of only the first.
    pub fn cut_times(mut self, k: u32) -> Self {
        self.cut_times = Some(k);
        self
    }
    pub fn ignore_range(mut self) -> Self {
        self.ignore_range = true;
        self
    }
    pub fn no_validators(mut self) -> Self {
        self.no_validators = true;
        self
    }
    /// Serve HTTPS with the CA's server certificate (valid for 127.0.0.1 and localhost).
    pub fn tls(mut self, ca: &TestCa) -> Self {
        self.tls = Some((ca.server_cert.clone(), ca.server_key.clone()));
        self
    }
    /// Answer `from` with a 302 to `to`.
    pub fn redirect(mut self, from: &str, to: &str) -> Self {
        self.redirects.push((from.into(), to.into()));
        self
    }
    /// Answer `path` with `code`.
    pub fn status(mut self, path: &str, code: u16) -> Self {
        self.statuses.push((path.into(), code));
        self
    }
    /// Send `n` body bytes, then nothing.
    pub fn stall_after(mut self, n: u64) -> Self {
        self.stall_after = Some(n);
        self
    }
    /// Send `n` body bytes, then wait for `HttpServer::release`.
    pub fn hold_after(mut self, n: u64) -> Self {
        self.hold_after = Some(n);
        self
    }
    pub fn throttle(mut self, bytes_per_sec: u64) -> Self {
        self.throttle = Some(bytes_per_sec);
        self
    }
    /// Be a forward proxy (absolute-form GET and CONNECT) instead of a file server.
    pub fn proxy(mut self) -> Self {
        self.proxy = true;
        self
    }
    /// As a proxy, require Basic credentials `user:pass`.
    pub fn proxy_auth(mut self, user_pass: &str) -> Self {
        self.proxy_auth = Some(user_pass.into());
        self
    }

    pub fn start(self) -> Result<HttpServer, PeerError> {
        let state = tempfile::Builder::new()
            .prefix("kiln-fetch-http-")
            .tempdir()
            .map_err(|e| perr("temp dir", e))?;
        let root = match &self.root {
            Some(r) => r.clone(),
            None => {
                let r = state.path().join("root");
                fs::create_dir(&r).map_err(|e| perr("root dir", e))?;
                r
            }
        };
        let ready = state.path().join("ready");
        let log = state.path().join("requests.jsonl");
        let release = state.path().join("release");
        let stderr_path = state.path().join("stderr");
        let script = server_script();
        if !script.exists() {
            return Err(PeerError(format!(
                "server script {} is missing",
                script.display()
            )));
        }
        let mut cmd = Command::new(python());
        cmd.arg(&script)
            .arg("--port")
            .arg("0")
            .arg("--ready-file")
            .arg(&ready)
            .arg("--log")
            .arg(&log);
        if !self.proxy {
            cmd.arg("--root").arg(&root);
        }
        let num = |cmd: &mut Command, flag: &str, v: Option<u64>| {
            if let Some(v) = v {
                cmd.arg(flag).arg(v.to_string());
            }
        };
        num(&mut cmd, "--cut-after", self.cut_after);
        num(&mut cmd, "--cut-times", self.cut_times.map(u64::from));
        num(&mut cmd, "--stall-after", self.stall_after);
        num(&mut cmd, "--throttle", self.throttle);
        if let Some(n) = self.hold_after {
            cmd.arg("--hold-after")
                .arg(n.to_string())
                .arg("--release")
                .arg(&release);
        }
        if self.ignore_range {
            cmd.arg("--ignore-range");
        }
        if self.no_validators {
            cmd.arg("--no-validators");
        }
        if let Some((cert, key)) = &self.tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        for (from, to) in &self.redirects {
            cmd.arg("--redirect").arg(format!("{from}={to}"));
        }
        for (path, code) in &self.statuses {
            cmd.arg("--status").arg(format!("{path}={code}"));
        }
        if self.proxy {
            cmd.arg("--proxy");
        }
        if let Some(a) = &self.proxy_auth {
            cmd.arg("--proxy-auth").arg(a);
        }
        let stderr = fs::File::create(&stderr_path).map_err(|e| perr("stderr file", e))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                perr(
                    &format!("starting {} {}", python().display(), script.display()),
                    e,
                )
            })?;
        let started = Instant::now();
        let port = loop {
            if let Ok(s) = fs::read_to_string(&ready)
                && let Ok(p) = s.trim().parse::<u16>()
            {
                break p;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let err = fs::read_to_string(&stderr_path).unwrap_or_default();
                return Err(PeerError(format!(
                    "http_range_server.py exited ({status}) before listening: {}",
                    err.trim()
                )));
            }
            if started.elapsed() > READY_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(PeerError(format!(
                    "http_range_server.py did not listen within {READY_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(30));
        };
        Ok(HttpServer {
            child,
            port,
            scheme: if self.tls.is_some() { "https" } else { "http" },
            root,
            log,
            release,
            _state: state,
        })
    }
}

/// A running server; killed and its directory removed on drop.
pub struct HttpServer {
    child: Child,
    port: u16,
    scheme: &'static str,
    root: PathBuf,
    log: PathBuf,
    release: PathBuf,
    _state: tempfile::TempDir,
}

impl HttpServer {
    pub fn builder() -> HttpServerBuilder {
        HttpServerBuilder::default()
    }

    /// A plain file server of an empty directory.
    pub fn start() -> Result<HttpServer, PeerError> {
        HttpServerBuilder::default().start()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http(s)://127.0.0.1:PORT/` + `path` (without its leading `/`).
    pub fn url(&self, path: &str) -> String {
        format!(
            "{}://127.0.0.1:{}/{}",
            self.scheme,
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// The served directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        let Ok(text) = fs::read_to_string(&self.log) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The GET requests for `path` (`/name`).
    pub fn gets(&self, path: &str) -> Vec<LoggedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path == path)
            .collect()
    }

    /// Polls the log until `pred` holds (true) or `timeout` passes (false).
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[LoggedRequest]) -> bool) -> bool {
        let start = Instant::now();
        loop {
            if pred(&self.requests()) {
                return true;
            }
            if start.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lets responses held by `hold_after` continue.
    pub fn release(&self) {
        let _ = fs::write(&self.release, b"go");
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway CA and a server certificate it signed for `127.0.0.1` and `localhost`.
pub struct TestCa {
    /// The CA certificate (PEM): what `ca_file` gets.
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCa {
    /// Generates the CA and server key pair with the `openssl` CLI (EC P-256).
    pub fn generate() -> Result<TestCa, PeerError> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-fetch-ca-")
            .tempdir()
            .map_err(|e| perr("temp dir", e))?;
        let d = dir.path();
        let ext = d.join("server.ext");
        fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .map_err(|e| perr("extension file", e))?;
        let run = |args: &[&str]| -> Result<(), PeerError> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .map_err(|e| perr("running openssl (install the openssl package)", e))?;
            if !out.status.success() {
                return Err(PeerError(format!(
                    "openssl {} failed: {}",
                    args.first().unwrap_or(&""),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            Ok(())
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca_args = vec!["req", "-x509"];
        ca_args.extend(ec);
        ca_args.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "3",
            "-subj",
            "/CN=kiln-fetch test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        run(&ca_args)?;
        let mut csr_args = vec!["req"];
        csr_args.extend(ec);
        csr_args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        run(&csr_args)?;
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "3",
            "-extfile",
            "server.ext",
        ])?;
        Ok(TestCa {
            ca_cert: d.join("ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            _dir: dir,
        })
    }
}

/// Writes `size` bytes of deterministic mixed content (random-looking blocks, zero runs,
/// text), like a disk image; returns its SHA-256 hex.
pub fn write_mixed_file(path: &Path, size: u64, seed: u64) -> io::Result<String> {
    let mut f = io::BufWriter::with_capacity(1 << 20, fs::File::create(path)?);
    let mut h = sha2::Sha256::new();
    let mut x = seed | 1;
    let mut left = size;
    let mut block = vec![0u8; 64 * 1024];
    let mut n: u64 = 0;
    while left > 0 {
        let len = block.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        match n % 4 {
            // Zero run (sparse disk areas).
            1 => block[..len].fill(0),
            // Text.
            2 => {
                let line = format!("kiln-fetch test block {n} seed {seed}\n");
                for (i, b) in block[..len].iter_mut().enumerate() {
                    *b = line.as_bytes()[i % line.len()];
                }
            }
            // xorshift64 noise (incompressible).
            _ => {
                for chunk in block[..len].chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let bytes = x.to_le_bytes();
                    chunk.copy_from_slice(&bytes[..chunk.len()]);
                }
            }
        }
        f.write_all(&block[..len])?;
        h.update(&block[..len]);
        left -= len as u64;
        n += 1;
    }
    f.flush()?;
    Ok(hex::encode(h.finalize()))
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The path of this crate's example binary `name`, built by `cargo test` next to the test
/// executables (`target/<profile>/examples/<name>`).
pub fn example_binary(name: &str) -> Result<PathBuf, PeerError> {
    let exe = std::env::current_exe().map_err(|e| perr("current_exe", e))?;
    // target/<profile>/deps/<test> → target/<profile>/examples/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| PeerError(format!("unexpected test binary path {}", exe.display())))?;
    let bin = profile_dir.join("examples").join(name);
    if bin.exists() {
        Ok(bin)
    } else {
        Err(PeerError(format!(
            "example binary {} is missing; build it with `cargo build --release -p kiln-fetch \
             --example {name}` (plain `cargo test -p kiln-fetch` builds it too)",
            bin.display()
        )))
    }
}

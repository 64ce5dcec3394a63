//! Test peers (feature `testkit`): a real Glance and a real Keystone on 127.0.0.1, each in its
//! own temporary state dir on a free port, started through the project's scripts
//! (`tools/peers/glance.sh`, `tools/peers/keystone.sh`, installed by `tools/setup.d/glance.sh`)
//! and stopped, with their state removed, on drop (also when the test panics).
//!
//! A peer that cannot start is an `Err` with the reason and the log tail: tests `expect` it, so
//! they fail loudly instead of skipping.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

/// Where the project's peer scripts are (`KILN_PEERS_DIR` overrides).
pub fn peers_dir() -> PathBuf {
    std::env::var_os("KILN_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/peers"))
}

/// The venv with glance, keystone and the `openstack` CLI.
pub fn venv() -> PathBuf {
    std::env::var_os("KILN_OPENSTACK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/kiln-peers/openstack-venv"))
}

fn state_root() -> PathBuf {
    let p = PathBuf::from("/var/tmp/kiln-peers");
    let _ = std::fs::create_dir_all(&p);
    p
}

fn parse_kv(out: &str, key: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
}

/// Runs `script start DIR` with `envs`, retrying on a lost port race; returns its stdout.
fn start_script(script: &str, dir: &Path, envs: &[(&str, String)]) -> Result<String, String> {
    let path = peers_dir().join(script);
    let mut last = String::new();
    for attempt in 1..=3 {
        let mut cmd = Command::new("bash");
        cmd.arg(&path).arg("start").arg(dir);
        cmd.env("KILN_OPENSTACK_VENV", venv());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        last = format!(
            "{} start failed (attempt {attempt}, exit {:?}): {}{}",
            path.display(),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        // only a port taken between the pick and the bind is worth another try
        if !last.contains("in use") && !last.contains("exited during start") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(format!(
        "{last}\n(is the peer installed? run tools/setup.d/glance.sh)"
    ))
}

fn stop_script(script: &str, dir: &Path) {
    let _ = Command::new("bash")
        .arg(peers_dir().join(script))
        .arg("stop")
        .arg(dir)
        .output();
}

/// How to start a Glance peer.
#[derive(Clone, Debug, Default)]
pub struct GlanceOptions {
    /// Require `X-Auth-Token: <token>` on every /v2 request (the kiln-noauth filter).
    pub token: Option<String>,
    /// Validate tokens against this Keystone instead (keystonemiddleware's auth_token), with
    /// its admin user as Glance's service user.
    pub keystone: Option<(String, String)>,
    /// Serve HTTPS with a throwaway CA ([`GlancePeer::cacert`]).
    pub tls: bool,
}

/// A running Glance (Images API v2) on 127.0.0.1.
pub struct GlancePeer {
    dir: tempfile::TempDir,
    url: String,
    pid: u32,
    cacert: Option<PathBuf>,
}

impl GlancePeer {
    /// Glance without a token check.
    pub fn start() -> Result<GlancePeer, String> {
        GlancePeer::start_with(GlanceOptions::default())
    }

    pub fn start_with(opts: GlanceOptions) -> Result<GlancePeer, String> {
        let dir = tempfile::Builder::new()
            .prefix("glance-")
            .tempdir_in(state_root())
            .map_err(|e| format!("temp dir: {e}"))?;
        let mut envs = Vec::new();
        if let Some(t) = &opts.token {
            envs.push(("GLANCE_TOKEN", t.clone()));
        }
        if let Some((url, admin_password)) = &opts.keystone {
            envs.push(("GLANCE_KEYSTONE_URL", url.clone()));
            envs.push(("GLANCE_KEYSTONE_PASSWORD", admin_password.clone()));
        }
        if opts.tls {
            envs.push(("GLANCE_TLS", "1".to_string()));
        }
        let out = start_script("glance.sh", dir.path(), &envs)?;
        let url = parse_kv(&out, "URL").ok_or(format!("glance.sh printed no URL: {out}"))?;
        let pid = parse_kv(&out, "PID")
            .and_then(|p| p.parse().ok())
            .ok_or(format!("glance.sh printed no PID: {out}"))?;
        let cacert = parse_kv(&out, "CACERT").map(PathBuf::from);
        Ok(GlancePeer {
            dir,
            url,
            pid,
            cacert,
        })
    }

    /// The CA that signed the peer's certificate (TLS peers only).
    pub fn cacert(&self) -> Option<&Path> {
        self.cacert.as_deref()
    }

    /// `http://127.0.0.1:PORT` or `https://…` (no `/v2`).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Files in Glance's file store (the data of images that have any).
    pub fn stored_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("images"))
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Runs the real `openstack` CLI against this Glance (`--os-auth-type none
    /// --os-endpoint URL ARGS`).
    pub fn openstack_cli(&self, args: &[&str]) -> Result<Output, String> {
        let mut cmd = Command::new(venv().join("bin/openstack"));
        cmd.args(["--os-auth-type", "none", "--os-endpoint", &self.url]);
        if let Some(ca) = &self.cacert {
            cmd.arg("--os-cacert").arg(ca);
        }
        cmd.args(args)
            .env_remove("OS_CLOUD")
            .output()
            .map_err(|e| format!("cannot run the openstack CLI: {e}"))
    }

    /// The last lines of Glance's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let p = self.dir.path().join("log/glance-api.log");
        let s = std::fs::read_to_string(p).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for GlancePeer {
    fn drop(&mut self) {
        stop_script("glance.sh", self.dir.path());
    }
}

/// A running Keystone (Identity v3) on 127.0.0.1, bootstrapped with user `admin` in project
/// `admin`, region `RegionOne`.
pub struct KeystonePeer {
    dir: tempfile::TempDir,
    url: String,
    admin_password: String,
    http: reqwest::Client,
    admin_token: tokio::sync::Mutex<Option<String>>,
}

/// A user made by [`KeystonePeer::create_user`], with the member role on its own project.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: String,
    pub name: String,
    pub password: String,
    pub project_id: String,
    pub project_name: String,
}

impl KeystonePeer {
    pub fn start() -> Result<KeystonePeer, String> {
        let dir = tempfile::Builder::new()
            .prefix("keystone-")
            .tempdir_in(state_root())
            .map_err(|e| format!("temp dir: {e}"))?;
        let out = start_script("keystone.sh", dir.path(), &[])?;
        let url = parse_kv(&out, "URL").ok_or(format!("keystone.sh printed no URL: {out}"))?;
        let admin_password = parse_kv(&out, "ADMIN_PASSWORD")
            .ok_or(format!("keystone.sh printed no ADMIN_PASSWORD: {out}"))?;
        Ok(KeystonePeer {
            dir,
            url,
            admin_password,
            http: reqwest::Client::new(),
            admin_token: tokio::sync::Mutex::new(None),
        })
    }

    /// `http://127.0.0.1:PORT` (append `/v3` for the API).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// Options that make a [`GlancePeer`] validate tokens against this Keystone.
    pub fn glance_options(&self) -> GlanceOptions {
        GlanceOptions {
            token: None,
            keystone: Some((self.url.clone(), self.admin_password.clone())),
            tls: false,
        }
    }

    async fn admin_token(&self) -> Result<String, String> {
        let mut cached = self.admin_token.lock().await;
        if let Some(t) = cached.as_ref() {
            return Ok(t.clone());
        }
        let t = self.new_admin_token().await?;
        *cached = Some(t.clone());
        Ok(t)
    }

    async fn new_admin_token(&self) -> Result<String, String> {
        let body = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"id": "default"}, "password": self.admin_password}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}});
        let r = self
            .http
            .post(format!("{}/v3/auth/tokens", self.url))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("keystone admin auth: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("keystone admin auth: HTTP {}", r.status()));
        }
        r.headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or("no X-Subject-Token".into())
    }

    /// An admin API call; returns the JSON answer.
    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let token = self.admin_token().await?;
        let mut b = self
            .http
            .request(method.clone(), format!("{}/v3{path}", self.url))
            .header("X-Auth-Token", token);
        if let Some(body) = body {
            b = b
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        let r = b
            .send()
            .await
            .map_err(|e| format!("keystone {path}: {e}"))?;
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!("keystone {method} {path}: HTTP {status}: {text}"));
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| format!("keystone {path}: {e}"))
    }

    /// Registers an `image` service with these `(interface, region, url)` endpoints.
    pub async fn register_image_endpoints(
        &self,
        endpoints: &[(&str, &str, &str)],
    ) -> Result<(), String> {
        let svc = self
            .admin(
                reqwest::Method::POST,
                "/services",
                Some(json!({"service": {"type": "image", "name": "glance"}})),
            )
            .await?;
        let sid = svc["service"]["id"]
            .as_str()
            .ok_or("no service id")?
            .to_string();
        for (iface, region, url) in endpoints {
            if *region != "RegionOne" {
                // regions other than the bootstrap one must exist first; ignore "exists"
                let _ = self
                    .admin(
                        reqwest::Method::POST,
                        "/regions",
                        Some(json!({"region": {"id": region}})),
                    )
                    .await;
            }
            self.admin(
                reqwest::Method::POST,
                "/endpoints",
                Some(json!({"endpoint": {"service_id": sid, "interface": iface,
                    "region_id": region, "url": url}})),
            )
            .await?;
        }
        Ok(())
    }

    /// A new user `name` with the `member` role on a new project `<name>-project`.
    pub async fn create_user(&self, name: &str, password: &str) -> Result<TestUser, String> {
        let project_name = format!("{name}-project");
        let p = self
            .admin(
                reqwest::Method::POST,
                "/projects",
                Some(json!({"project": {"name": project_name, "domain_id": "default"}})),
            )
            .await?;
        let project_id = p["project"]["id"]
            .as_str()
            .ok_or("no project id")?
            .to_string();
        let u = self
            .admin(
                reqwest::Method::POST,
                "/users",
                Some(
                    json!({"user": {"name": name, "password": password, "domain_id": "default",
                    "default_project_id": project_id}}),
                ),
            )
            .await?;
        let id = u["user"]["id"].as_str().ok_or("no user id")?.to_string();
        let roles = self
            .admin(reqwest::Method::GET, "/roles?name=member", None)
            .await?;
        let role = roles["roles"][0]["id"]
            .as_str()
            .ok_or("no member role")?
            .to_string();
        self.admin(
            reqwest::Method::PUT,
            &format!("/projects/{project_id}/users/{id}/roles/{role}"),
            None,
        )
        .await?;
        Ok(TestUser {
            id,
            name: name.to_string(),
            password: password.to_string(),
            project_id,
            project_name,
        })
    }

    /// Disables and re-enables `user`: Keystone revokes every token it had, the password
    /// still works (tests re-authentication).
    pub async fn revoke_user_tokens(&self, user: &TestUser) -> Result<(), String> {
        for enabled in [false, true] {
            self.admin(
                reqwest::Method::PATCH,
                &format!("/users/{}", user.id),
                Some(json!({"user": {"enabled": enabled}})),
            )
            .await?;
        }
        // Keystone compares revocation times in whole seconds: a token issued in the same
        // second as the revocation would count as revoked too
        tokio::time::sleep(Duration::from_millis(1100)).await;
        Ok(())
    }

    /// Creates an application credential for `user` (authenticating as that user, as Keystone
    /// requires); returns `(id, secret)`.
    pub async fn create_application_credential(
        &self,
        user: &TestUser,
        name: &str,
    ) -> Result<(String, String), String> {
        let body = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "id": user.id, "password": user.password}}},
            "scope": {"project": {"id": user.project_id}}}});
        let r = self
            .http
            .post(format!("{}/v3/auth/tokens", self.url))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("user auth: {e}"))?;
        let token = r
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or(format!("user auth: HTTP {}", r.status()))?;
        let r = self
            .http
            .post(format!(
                "{}/v3/users/{}/application_credentials",
                self.url, user.id
            ))
            .header("X-Auth-Token", token)
            .header("Content-Type", "application/json")
            .body(json!({"application_credential": {"name": name}}).to_string())
            .send()
            .await
            .map_err(|e| format!("application credential: {e}"))?;
        let status = r.status();
        let v: Value = serde_json::from_str(&r.text().await.unwrap_or_default())
            .map_err(|e| format!("application credential: HTTP {status}: {e}"))?;
        let ac = &v["application_credential"];
        match (ac["id"].as_str(), ac["secret"].as_str()) {
            (Some(id), Some(s)) => Ok((id.to_string(), s.to_string())),
            _ => Err(format!("application credential: HTTP {status}: {v}")),
        }
    }
}

impl Drop for KeystonePeer {
    fn drop(&mut self) {
        stop_script("keystone.sh", self.dir.path());
    }
}

/// Makes a qcow2 image of `virtual_mib` MiB with `data_mib` MiB of patterned data written
/// through `qemu-io` (so the file has real allocated clusters).
pub fn make_qcow2(path: &Path, virtual_mib: u64, data_mib: u64) -> Result<(), String> {
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(format!("{virtual_mib}M")))?;
    if data_mib > 0 {
        run(Command::new("qemu-io")
            .args(["-f", "qcow2", "-c"])
            .arg(format!("write -P 0x5a 0 {data_mib}M"))
            .arg(path))?;
    }
    Ok(())
}

/// Converts an image with `qemu-img convert -O <format>`.
pub fn convert(src: &Path, dst: &Path, format: &str) -> Result<(), String> {
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-O", format])
        .arg(src)
        .arg(dst))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

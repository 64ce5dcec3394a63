//! A real OpenSSH sshd on 127.0.0.1 with its own host key, client keys and config, owned by
//! one test (or benchmark) and killed on drop.
//!
//! It logs in as root (tests run as root here) with keys from its temp dir; with
//! `SshdOptions::password_auth` the user `kilntest` (created by `tools/peers/sshd.sh install`)
//! can log in with `PASSWORD`.
#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// User with a password for password-auth tests (see tools/peers/sshd.sh install).
pub const PASSWORD_USER: &str = "kilntest";
pub const PASSWORD: &str = "kilntest-pw";

#[derive(Clone, Debug)]
pub struct SshdOptions {
    /// Also accept passwords (user `PASSWORD_USER`).
    pub password_auth: bool,
    /// Also create RSA and ECDSA client keys and authorize them.
    pub extra_key_types: bool,
    /// Allow direct-tcpip (needed when this sshd is a bastion).
    pub allow_tcp_forwarding: bool,
    /// An `AuthorizedKeysCommand` line (run as root), e.g. one that asks moto for the
    /// public keys of the key pairs it handed out (tests/it/amazon.rs).
    pub authorized_keys_command: Option<String>,
    /// Passwords only through PAM's prompts: `UsePAM yes`, `PasswordAuthentication no`,
    /// `KbdInteractiveAuthentication yes` (user `PASSWORD_USER`).
    pub kbd_interactive_pam: bool,
    /// Trust user certificates signed by a CA made for this server (`TrustedUserCAKeys`);
    /// see `Sshd::user_ca` and `Sshd::sign_user_key`.
    pub trusted_user_ca: bool,
}

impl Default for SshdOptions {
    fn default() -> Self {
        SshdOptions {
            password_auth: false,
            extra_key_types: false,
            allow_tcp_forwarding: true,
            authorized_keys_command: None,
            kbd_interactive_pam: false,
            trusted_user_ca: false,
        }
    }
}

pub struct Sshd {
    pub port: u16,
    pub user: String,
    /// ed25519 client key (authorized for root).
    pub key_path: PathBuf,
    /// RSA and ECDSA client keys when `extra_key_types` was set.
    pub rsa_key_path: Option<PathBuf>,
    pub ecdsa_key_path: Option<PathBuf>,
    /// SHA256:... of the host key.
    pub host_key_fingerprint: String,
    /// known_hosts with this server's key under `[127.0.0.1]:port`.
    pub known_hosts_path: PathBuf,
    /// The user CA's private key when `trusted_user_ca` was set.
    pub user_ca: Option<PathBuf>,
    pub dir: tempfile::TempDir,
    child: Child,
}

fn run_checked(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("sshd peer: cannot run {what}: {e} (run tools/peers/sshd.sh install)")
    });
    assert!(
        out.status.success(),
        "sshd peer: {what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn keygen(path: &Path, kind: &str, bits: Option<&str>) {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-N", "", "-C", "kiln-test", "-t", kind]);
    if let Some(b) = bits {
        cmd.args(["-b", b]);
    }
    cmd.arg("-f").arg(path);
    run_checked(&mut cmd, &format!("ssh-keygen -t {kind}"));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("sshd peer: no free port on 127.0.0.1: {e}"))
}

/// True once the server sends its SSH banner (listening alone is not enough).
fn banner_ready(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 8];
    matches!(s.read_exact(&mut buf), Ok(()) if buf.starts_with(b"SSH-2.0"))
}

impl Sshd {
    /// Starts a key-only sshd; panics with the reason if it cannot.
    pub fn start() -> Sshd {
        Sshd::start_with(SshdOptions::default())
    }

    pub fn start_with(opts: SshdOptions) -> Sshd {
        let sshd_bin = Path::new("/usr/sbin/sshd");
        assert!(
            sshd_bin.exists(),
            "sshd peer: /usr/sbin/sshd is missing: run tools/peers/sshd.sh install"
        );
        if opts.password_auth || opts.kbd_interactive_pam {
            let known = Command::new("id")
                .arg(PASSWORD_USER)
                .output()
                .map(|o| o.status.success());
            assert!(
                matches!(known, Ok(true)),
                "sshd peer: user {PASSWORD_USER} is missing: run tools/peers/sshd.sh install"
            );
        }
        std::fs::create_dir_all("/run/sshd").expect("sshd peer: cannot create /run/sshd");
        let dir = tempfile::Builder::new()
            .prefix("kiln-sshd-")
            .tempdir()
            .expect("sshd peer: cannot create a temp dir");
        let d = dir.path();
        let host_key = d.join("ssh_host_ed25519_key");
        keygen(&host_key, "ed25519", None);
        let key_path = d.join("id_ed25519");
        keygen(&key_path, "ed25519", None);
        let mut authorized =
            std::fs::read_to_string(d.join("id_ed25519.pub")).expect("read pub key");
        let (mut rsa_key_path, mut ecdsa_key_path) = (None, None);
        if opts.extra_key_types {
            let rsa = d.join("id_rsa");
            keygen(&rsa, "rsa", Some("2048"));
            let ecdsa = d.join("id_ecdsa");
            keygen(&ecdsa, "ecdsa", Some("256"));
            for p in ["id_rsa.pub", "id_ecdsa.pub"] {
                authorized.push_str(&std::fs::read_to_string(d.join(p)).expect("read pub key"));
            }
            rsa_key_path = Some(rsa);
            ecdsa_key_path = Some(ecdsa);
        }
        std::fs::write(d.join("authorized_keys"), authorized).expect("write authorized_keys");
        let pubkey =
            std::fs::read_to_string(d.join("ssh_host_ed25519_key.pub")).expect("read host key");
        let fp_out = run_checked(
            Command::new("ssh-keygen")
                .args(["-l", "-E", "sha256", "-f"])
                .arg(d.join("ssh_host_ed25519_key.pub")),
            "ssh-keygen -l",
        );
        let host_key_fingerprint = fp_out
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("sshd peer: unexpected ssh-keygen -l output {fp_out:?}"))
            .to_string();
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let mut user_ca = None;
        let mut ca_line = String::new();
        if opts.trusted_user_ca {
            let ca = d.join("user_ca");
            keygen(&ca, "ed25519", None);
            ca_line = format!("TrustedUserCAKeys {}/user_ca.pub\n", d.display());
            user_ca = Some(ca);
        }

        // A port picked by bind(0) can be taken before sshd binds it: retry a few times.
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {hk}\nPidFile none\n\
                 AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nPermitRootLogin yes\n\
                 PubkeyAuthentication yes\nPasswordAuthentication {pw}\nKbdInteractiveAuthentication {kbd}\n\
                 UsePAM {kbd}\n{ca_line}Subsystem sftp internal-sftp\nAllowTcpForwarding {fwd}\nMaxSessions 100\n\
                 MaxStartups 100:30:200\nUseDNS no\nPrintMotd no\nPrintLastLog no\nLogLevel VERBOSE\n",
                hk = host_key.display(),
                d = d.display(),
                pw = yes_no(opts.password_auth && !opts.kbd_interactive_pam),
                kbd = yes_no(opts.kbd_interactive_pam),
                fwd = yes_no(opts.allow_tcp_forwarding),
            );
            let mut config = config;
            if let Some(cmd) = &opts.authorized_keys_command {
                config.push_str(&format!(
                    "AuthorizedKeysCommand {cmd}\nAuthorizedKeysCommandUser root\n"
                ));
            }
            let config_path = d.join("sshd_config");
            std::fs::write(&config_path, config).expect("write sshd_config");
            let log_path = d.join("sshd.log");
            let log = std::fs::File::create(&log_path).expect("create sshd.log");
            let mut child = Command::new(sshd_bin)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("sshd peer: cannot start /usr/sbin/sshd: {e}"));
            let started = Instant::now();
            let mut exited = false;
            // Generous: a loaded machine can take a while to start sshd.
            while started.elapsed() < Duration::from_secs(90) {
                if banner_ready(port) {
                    let known_hosts_path = d.join("known_hosts");
                    let mut parts = pubkey.split_whitespace();
                    let (kind, b64) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    std::fs::write(
                        &known_hosts_path,
                        format!("[127.0.0.1]:{port} {kind} {b64}\n"),
                    )
                    .expect("write known_hosts");
                    return Sshd {
                        port,
                        user: "root".into(),
                        key_path,
                        rsa_key_path,
                        ecdsa_key_path,
                        host_key_fingerprint,
                        known_hosts_path,
                        user_ca,
                        dir,
                        child,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    exited = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if !(exited && last_log.contains("Address already in use")) {
                break;
            }
        }
        panic!("sshd peer: sshd did not come up on 127.0.0.1; its log:\n{last_log}");
    }

    /// The `ssh` map for a build script whose project dir is `self.dir`.
    pub fn ssh_config_rhai(&self) -> String {
        format!(
            "#{{ host: \"127.0.0.1\", port: {}, user: \"{}\", private_key_file: \"id_ed25519\", host_key: \"{}\" }}",
            self.port, self.user, self.host_key_fingerprint
        )
    }

    /// Copies the client key into `<project>/keys/sshd-peer-<port>` and returns the `ssh` map
    /// for a build script rooted at `project`.
    pub fn ssh_config_rhai_in(&self, project: &Path) -> String {
        let rel = format!("keys/sshd-peer-{}", self.port);
        let dest = project.join(&rel);
        std::fs::create_dir_all(dest.parent().expect("keys dir")).expect("create keys dir");
        std::fs::copy(&self.key_path, &dest).expect("copy client key");
        format!(
            "#{{ host: \"127.0.0.1\", port: {}, user: \"{}\", private_key_file: \"{rel}\", host_key: \"{}\" }}",
            self.port, self.user, self.host_key_fingerprint
        )
    }

    /// Runs `cmd` with `sh -c` on "the machine" (it is this host, as the same user) and
    /// returns stdout; panics with stderr if it fails.
    pub fn run(&self, cmd: &str) -> String {
        run_checked(Command::new("sh").arg("-c").arg(cmd), cmd)
    }

    /// The pid of the listening sshd (its per-connection processes are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Makes a new ed25519 key pair `<dir>/<name>` that `authorized_keys` does not list.
    pub fn unauthorized_key(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        keygen(&p, "ed25519", None);
        p
    }

    /// Signs `<key>.pub` with the user CA (`trusted_user_ca`) for `principals`, valid
    /// for `validity` (`ssh-keygen -V`, e.g. "-5m:+1h"); returns `<key>-cert.pub`.
    pub fn sign_user_key(&self, key: &Path, principals: &str, validity: &str) -> PathBuf {
        let ca = self
            .user_ca
            .as_ref()
            .expect("sshd peer: started without trusted_user_ca");
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-q", "-s"])
            .arg(ca)
            .args(["-I", "kiln-test-cert", "-n", principals, "-V", validity])
            .arg(format!("{}.pub", key.display()));
        run_checked(&mut cmd, "ssh-keygen -s");
        PathBuf::from(format!("{}-cert.pub", key.display()))
    }

    /// The sshd log so far (useful in assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// How many times `needle` is in the log once it has been there at least `at_least`
    /// times, or after a minute. sshd's monitor writes a line such as "Failed password"
    /// on its own schedule, not before the client sees the refusal, so counting at once
    /// races it (CI saw 1 of 2). The minute is a ceiling, not a timing assertion.
    pub fn log_count(&self, needle: &str, at_least: usize) -> usize {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let n = self.log().matches(needle).count();
            if n >= at_least || std::time::Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

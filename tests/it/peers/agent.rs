//! A real OpenSSH `ssh-agent` on its own socket, owned by one test and killed on drop.
//! It runs in the foreground (`-D`) as the test's child, so the test knows its pid.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct SshAgent {
    pub socket: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl SshAgent {
    /// Starts `ssh-agent -D -a SOCK`; panics with the reason if it cannot.
    pub fn start() -> SshAgent {
        let dir = tempfile::Builder::new()
            .prefix("kiln-agent-")
            .tempdir()
            .expect("agent peer: temp dir");
        let socket = dir.path().join("agent.sock");
        let mut child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("agent peer: cannot start ssh-agent: {e} (run tools/peers/sshd.sh install)")
            });
        let started = Instant::now();
        // The socket file appears at bind(), before listen(): wait until it answers.
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!("agent peer: ssh-agent exited ({status}) before listening: {err}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "agent peer: ssh-agent did not listen on {} within 60 s",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        SshAgent {
            socket,
            child,
            _dir: dir,
        }
    }

    /// `ssh-add KEY` (a `KEY-cert.pub` next to it is added as a certificate too).
    pub fn add(&self, key: &Path) {
        let out = Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.socket)
            .output()
            .unwrap_or_else(|e| panic!("agent peer: cannot run ssh-add: {e}"));
        assert!(
            out.status.success(),
            "agent peer: ssh-add {} failed: {}",
            key.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `ssh-add -l`: what the agent holds, one line per identity, in its order.
    pub fn list(&self) -> String {
        let out = Command::new("ssh-add")
            .arg("-l")
            .env("SSH_AUTH_SOCK", &self.socket)
            .output()
            .unwrap_or_else(|e| panic!("agent peer: cannot run ssh-add -l: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

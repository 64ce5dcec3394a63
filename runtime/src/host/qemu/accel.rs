//! Choosing between KVM and TCG by trying, not by trusting `/dev/kvm`.
//!
//! A `/dev/kvm` that opens is not proof that KVM runs guests: on a nested `kvm_pvm`
//! host it opens, SeaBIOS even starts, and then every guest instruction is emulated
//! (an OS never boots; extlinux dies with "emulation failure"). Packer trusts the
//! device and then waits for SSH until it times out. kiln boots a 512-byte guest
//! (kvm_probe.S) under `-accel kvm` that goes through real, protected and long mode
//! and spins 20M iterations in 64-bit mode: real KVM finishes in milliseconds, TCG in
//! ~0.2 s, an emulating host not in 20 s. The verdict is cached for the process.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::OnceCell;

use super::spawn::{opt_escape, spawn_tied};
use super::{QemuError, qemu_binary};

/// The probe guest (source: kvm_probe.S beside this file).
const PROBE_BOOT_SECTOR: &[u8; 512] = include_bytes!("kvm_probe.bin");
/// isa-debug-exit turns the guest's `out 0x10` into exit status (0x10 << 1) | 1.
const PROBE_EXIT_OK: i32 = 33;
/// Real KVM needs ~0.2 s including qemu's start; this is the margin for a loaded host.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the user asked for (Packer's `accelerator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accelerator {
    /// KVM if a probe shows it runs guests here, else TCG.
    #[default]
    Auto,
    Kvm,
    /// Software emulation; works everywhere, slowly.
    Tcg,
}

impl std::str::FromStr for Accelerator {
    type Err = QemuError;
    fn from_str(s: &str) -> Result<Self, QemuError> {
        match s.to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Accelerator::Auto),
            "kvm" => Ok(Accelerator::Kvm),
            // Packer spells TCG "none" as well.
            "tcg" | "none" => Ok(Accelerator::Tcg),
            other => Err(QemuError::BadArgs(format!(
                "unknown accelerator {other:?}: use \"auto\", \"kvm\" or \"tcg\""
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelKind {
    Kvm,
    Tcg,
}

/// The accelerator chosen, with one sentence saying why (for the build log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accel {
    pub kind: AccelKind,
    pub reason: String,
}

impl Accel {
    pub fn tcg(reason: impl Into<String>) -> Self {
        Accel {
            kind: AccelKind::Tcg,
            reason: reason.into(),
        }
    }
    /// The value of `-machine accel=`.
    pub fn qemu_name(&self) -> &'static str {
        match self.kind {
            AccelKind::Kvm => "kvm",
            AccelKind::Tcg => "tcg",
        }
    }
    /// The `-cpu` model for this accelerator: the host's own CPU under KVM; under
    /// TCG qemu's plain `qemu64`. `max` would offer AES-NI and AVX2, but then guest
    /// OpenSSL picks vector code paths that TCG emulates slowly (scp with chacha20
    /// measured 8.7 MB/s with `max` against 12.0 MB/s with `qemu64`, same boot time).
    pub fn default_cpu(&self) -> &'static str {
        match self.kind {
            AccelKind::Kvm => "host",
            AccelKind::Tcg => "qemu64",
        }
    }
}

#[derive(Debug, Clone)]
struct KvmVerdict {
    usable: bool,
    reason: String,
}

static KVM_VERDICT: OnceCell<KvmVerdict> = OnceCell::const_new();

/// Decides the accelerator. `Auto` never fails because of KVM (it falls back to TCG
/// and says why); `Kvm` fails fast with the reason if KVM cannot run guests here.
pub async fn probe_accelerator(choice: Accelerator) -> Result<Accel, QemuError> {
    match choice {
        Accelerator::Tcg => Ok(Accel::tcg(
            "TCG chosen by the build's `accelerator` setting",
        )),
        Accelerator::Kvm => {
            let v = kvm_verdict().await?;
            if v.usable {
                Ok(Accel {
                    kind: AccelKind::Kvm,
                    reason: v.reason,
                })
            } else {
                Err(QemuError::KvmUnusable(format!(
                    "KVM is present but cannot run guests here: {}; use accelerator: \"tcg\" \
                     or \"auto\"",
                    v.reason
                )))
            }
        }
        Accelerator::Auto => {
            let v = kvm_verdict().await?;
            Ok(if v.usable {
                Accel {
                    kind: AccelKind::Kvm,
                    reason: v.reason,
                }
            } else {
                Accel::tcg(format!(
                    "using TCG (software emulation, several times slower) because {}",
                    v.reason
                ))
            })
        }
    }
}

async fn kvm_verdict() -> Result<KvmVerdict, QemuError> {
    KVM_VERDICT
        .get_or_try_init(|| async {
            if let Some(v) = cached_verdict() {
                return Ok(v);
            }
            let started = Instant::now();
            let v = judge_kvm().await?;
            tracing::debug!(usable = v.usable, reason = %v.reason,
                ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX), "KVM probe");
            store_verdict(&v);
            Ok(v)
        })
        .await
        .cloned()
}

/// What the verdict depends on: this boot of the host (KVM modules, CPU flags and
/// nesting cannot change without a reboot) and the qemu binary.
fn verdict_key() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let qemu = which(&qemu_binary())?;
    let meta = std::fs::metadata(&qemu).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(format!(
        "{} {} {} {mtime}",
        boot.trim(),
        qemu.display(),
        meta.len()
    ))
}

fn which(bin: &Path) -> Option<std::path::PathBuf> {
    if bin.components().count() > 1 {
        return Some(bin.to_path_buf());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

fn verdict_file() -> Option<std::path::PathBuf> {
    crate::cache_dir().map(|d| d.join("kvm-probe.json"))
}

/// A verdict probed earlier in this boot, so every build does not pay the probe.
fn cached_verdict() -> Option<KvmVerdict> {
    let text = std::fs::read_to_string(verdict_file()?).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    if v["key"].as_str()? != verdict_key()? {
        return None;
    }
    Some(KvmVerdict {
        usable: v["usable"].as_bool()?,
        reason: format!("{} (probed earlier this boot)", v["reason"].as_str()?),
    })
}

fn store_verdict(v: &KvmVerdict) {
    let (Some(file), Some(key)) = (verdict_file(), verdict_key()) else {
        return;
    };
    let doc = serde_json::json!({ "key": key, "usable": v.usable, "reason": v.reason });
    let tmp = file.with_extension("json.tmp");
    let written = file
        .parent()
        .map(std::fs::create_dir_all)
        .transpose()
        .and_then(|_| std::fs::write(&tmp, doc.to_string()))
        .and_then(|_| std::fs::rename(&tmp, &file));
    if let Err(e) = written {
        tracing::debug!("cannot cache the KVM verdict in {}: {e}", file.display());
    }
}

async fn judge_kvm() -> Result<KvmVerdict, QemuError> {
    let no = |reason: String| {
        Ok(KvmVerdict {
            usable: false,
            reason,
        })
    };
    let dev = Path::new("/dev/kvm");
    if !dev.exists() {
        return no(
            "/dev/kvm does not exist (no KVM on this host: enable virtualization \
                   or load kvm_intel/kvm_amd)"
                .into(),
        );
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        return no(format!(
            "/dev/kvm cannot be opened ({e}): add this user to the `kvm` group"
        ));
    }
    let hints = host_hints();
    match boot_probe().await? {
        Ok(ms) => Ok(KvmVerdict {
            usable: true,
            reason: format!(
                "KVM ran a test guest through real, protected and long mode in {ms} ms"
            ),
        }),
        Err(why) if hints.is_empty() => no(why),
        Err(why) => no(format!("{why} ({})", hints.join("; "))),
    }
}

/// Cheap facts that explain a failed probe; never decisive on their own.
fn host_hints() -> Vec<String> {
    let mut hints = Vec::new();
    if Path::new("/sys/module/kvm_pvm").exists() {
        hints.push(
            "the host's KVM is kvm_pvm, a nested pagetable-based VM that cannot run \
             unmodified guests"
                .to_string(),
        );
    }
    if let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") {
        let has_virt = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        if !has_virt {
            hints.push("the CPU shows no vmx/svm flag".to_string());
        }
    }
    hints
}

/// Boots the probe guest under KVM. `Ok(Ok(ms))`: it ran; `Ok(Err(why))`: it did not.
async fn boot_probe() -> Result<Result<u64, String>, QemuError> {
    let dir = tempfile::Builder::new()
        .prefix("kiln-kvm-probe")
        .tempdir()
        .map_err(|source| QemuError::Io {
            what: "cannot create a temp dir for the KVM probe in",
            path: std::env::temp_dir(),
            source,
        })?;
    let disk = dir.path().join("probe.img");
    let serial = dir.path().join("serial.txt");
    std::fs::File::create(&disk)
        .and_then(|mut f| f.write_all(PROBE_BOOT_SECTOR))
        .map_err(|source| QemuError::Io {
            what: "cannot write",
            path: disk.clone(),
            source,
        })?;
    let binary = qemu_binary();
    let mut cmd = Command::new(&binary);
    cmd.args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-machine", "pc,accel=kvm", "-m", "16", "-no-reboot"])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=floppy,snapshot=on",
            opt_escape(&disk)
        ))
        .args(["-boot", "a"])
        .arg("-serial")
        .arg(format!("file:{}", opt_escape(&serial)))
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = match spawn_tied(cmd).await {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(QemuError::NotInstalled { binary });
        }
        Err(source) => {
            return Err(QemuError::Io {
                what: "cannot run",
                path: binary,
                source,
            });
        }
    };
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let mut err_text = String::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + PROBE_TIMEOUT;
    // Watch stderr while waiting: an "internal error" means qemu has paused the guest
    // and will never exit by itself.
    let outcome = loop {
        tokio::select! {
            status = child.wait() => break Some(status),
            n = stderr.read(&mut buf) => {
                match n {
                    Ok(0) | Err(_) => {
                        match tokio::time::timeout_at(deadline, child.wait()).await {
                            Ok(status) => break Some(status),
                            Err(_) => break None,
                        }
                    }
                    Ok(n) => {
                        err_text.push_str(&String::from_utf8_lossy(&buf[..n]));
                        if err_text.contains("KVM internal error") {
                            break None;
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => break None,
        }
    };
    let elapsed = started.elapsed();
    let _ = child.start_kill();
    let _ = child.wait().await;
    let progress = std::fs::read_to_string(&serial).unwrap_or_default();
    let reached = if progress.contains('L') {
        "it reached 64-bit mode but ran at emulation speed"
    } else if progress.contains('P') {
        "it stopped in protected mode"
    } else if progress.contains('R') {
        "it stopped in real mode"
    } else {
        "it did not get past the firmware"
    };
    let err_line = first_error_line(&err_text);
    Ok(match outcome {
        Some(Ok(status)) if status.code() == Some(PROBE_EXIT_OK) => {
            Ok(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        }
        Some(Ok(status)) => Err(format!(
            "qemu -accel kvm exited with {status} while booting a test guest: {}",
            err_line.unwrap_or_else(|| "no message".into())
        )),
        Some(Err(e)) => Err(format!("waiting for the KVM test guest failed: {e}")),
        None => match err_line {
            Some(line) if err_text.contains("KVM internal error") => Err(format!(
                "a test guest under -accel kvm failed with \"{line}\" ({reached})"
            )),
            _ => Err(format!(
                "a 512-byte test guest under -accel kvm did not finish within {} s, \
                 where TCG needs ~0.2 s ({reached})",
                PROBE_TIMEOUT.as_secs()
            )),
        },
    })
}

/// The most telling line of qemu's stderr, skipping CPUID feature warnings.
fn first_error_line(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains("host doesn't support requested feature"))
        .collect();
    lines
        .iter()
        .find(|l| l.contains("KVM internal error") || l.contains("rror"))
        .or(lines.first())
        .map(|l| l.trim_start_matches("qemu-system-x86_64: ").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_image_is_a_boot_sector() {
        assert_eq!(PROBE_BOOT_SECTOR[510..], [0x55, 0xaa]);
        // cli; xor ax,ax: the first instructions of kvm_probe.S.
        assert_eq!(PROBE_BOOT_SECTOR[..3], [0xfa, 0x31, 0xc0]);
    }

    #[test]
    fn accelerator_names() {
        assert_eq!("auto".parse::<Accelerator>().unwrap(), Accelerator::Auto);
        assert_eq!("KVM".parse::<Accelerator>().unwrap(), Accelerator::Kvm);
        assert_eq!("none".parse::<Accelerator>().unwrap(), Accelerator::Tcg);
        assert!("hvf".parse::<Accelerator>().is_err());
    }

    #[test]
    fn error_line_skips_cpuid_warnings() {
        let s = "qemu-system-x86_64: warning: host doesn't support requested feature: \
                 CPUID.01H:ECX.pni [bit 0]\nKVM internal error. Suberror: 1\nextra\n";
        assert_eq!(
            first_error_line(s).as_deref(),
            Some("KVM internal error. Suberror: 1")
        );
        assert_eq!(first_error_line(""), None);
    }
}

//! Large uploads into a VM kiln started, as a read-only virtio disk instead of SSH.
//!
//! Under TCG the guest's SSH crypto caps an upload at ~15 MB/s; a hot-plugged disk is
//! read at memory-copy speed (~70 MB/s measured for 200 MiB under TCG). The host file
//! is handed to qemu as the very file kiln opened through the project's cap-std root
//! (`/proc/<kiln>/fd/<n>`, never a path re-resolved by name), attached read-only, and
//! the guest copies it with `dd` over the SSH session it already has. Anything that
//! does not work on a given guest (no ACPI hot-plug, a q35 machine, a non-root user,
//! busybox `dd`) makes this upload, and every later one, go over SSH instead. Like
//! every upload, the copy goes to a temporary name next to the destination and is
//! renamed into place once its size checks out (`host::ssh::store_script`).

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::Vm;
use crate::host::ssh::Session;

/// Smaller files go over SSH: attaching and detaching costs ~0.2-1 s, which SFTP
/// spends on ~10 MB.
pub const MIN_SIZE: u64 = 16 << 20;
/// How long the guest may take to notice the hot-plugged disk.
const APPEAR_TICKS: u32 = 150; // x 0.1 s
/// How long qemu waits for the guest to release the disk before we stop asking.
const DETACH_WAIT: Duration = Duration::from_secs(5);

pub struct FileDisk {
    vm: Arc<Vm>,
    seq: AtomicU32,
    /// Set after the first failure: the guest cannot do this, do not try again.
    disabled: AtomicBool,
}

impl FileDisk {
    pub fn new(vm: Arc<Vm>) -> Self {
        FileDisk {
            vm,
            seq: AtomicU32::new(0),
            disabled: AtomicBool::new(false),
        }
    }

    /// Whether an upload of `size` bytes should try this path.
    pub fn wants(&self, size: u64) -> bool {
        size >= MIN_SIZE && !self.disabled.load(Ordering::Relaxed) && self.vm.is_running()
    }

    /// Copies `file` (`size` bytes) to `dest` in the guest, then applies `mode`.
    /// `Err` carries why this path did not work; the caller then uploads over SSH.
    pub async fn upload(
        &self,
        session: &Session,
        file: &cap_std::fs::File,
        size: u64,
        dest: &str,
        mode: Option<u32>,
    ) -> Result<u64, String> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let node = format!("kiln-file-{n}");
        // virtio-blk serials are at most 20 bytes; the guest finds the disk by it.
        let serial = format!("kiln-{n}");
        let result = async {
            let script = guest_copy_script(&serial, dest, size, mode).map_err(|e| e.to_string())?;
            self.attach(file, &node, &serial).await?;
            let out = session
                .exec(&script, &[], &mut |_, _| {})
                .await
                .map_err(|e| e.to_string())?;
            if out.exit_code != 0 {
                let stderr = String::from_utf8_lossy(&out.stderr);
                return Err(match out.exit_code {
                    90 => "the guest did not see the hot-plugged disk".to_string(),
                    91 => "the SSH user cannot read block devices (not root)".to_string(),
                    c => format!("the guest copy failed (exit {c}): {}", stderr.trim()),
                });
            }
            Ok(size)
        }
        .await;
        // The guest is done with the disk; unplugging it (the guest's ACPI handshake
        // takes up to a second under TCG) need not hold up the next step.
        tokio::spawn(detach(self.vm.clone(), node));
        if let Err(why) = &result
            && !self.disabled.swap(true, Ordering::Relaxed)
        {
            tracing::info!("uploads go over SSH from now on: {why}");
        }
        result
    }

    async fn attach(
        &self,
        file: &cap_std::fs::File,
        node: &str,
        serial: &str,
    ) -> Result<(), String> {
        // qemu opens this magic link, which names the open file itself: a rename or a
        // symlink planted after kiln's cap-std open cannot redirect it.
        let fd_path = format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd());
        self.vm
            .qmp(
                "blockdev-add",
                Some(json!({
                    "driver": "raw",
                    "node-name": node,
                    "read-only": true,
                    "file": { "driver": "file", "filename": fd_path, "read-only": true },
                })),
            )
            .await
            .map_err(|e| e.to_string())?;
        self.vm
            .qmp(
                "device_add",
                Some(json!({
                    "driver": "virtio-blk-pci",
                    "drive": node,
                    "id": node,
                    "serial": serial,
                })),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Best effort: a guest that never releases the device keeps a read-only view of a
/// file it already received, until the VM stops.
async fn detach(vm: Arc<Vm>, node: String) {
    if vm
        .qmp("device_del", Some(json!({ "id": node })))
        .await
        .is_ok()
    {
        let deadline = Instant::now() + DETACH_WAIT;
        while Instant::now() < deadline && device_present(&vm, &node).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if let Err(e) = vm
        .qmp("blockdev-del", Some(json!({ "node-name": node })))
        .await
    {
        tracing::debug!(node, "blockdev-del: {e}");
    }
}

async fn device_present(vm: &Vm, id: &str) -> bool {
    match vm
        .qmp("qom-list", Some(json!({ "path": "/machine/peripheral" })))
        .await
    {
        Ok(list) => list
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["name"] == id)),
        Err(_) => false,
    }
}

/// The guest side: find the disk by serial, copy exactly `size` bytes (the device is
/// rounded up to whole sectors) to a temporary name, check the size, set the mode, and
/// rename it over `dest`. Exit codes 90/91 mean "this guest cannot", anything else is
/// the copy's own failure.
fn guest_copy_script(
    serial: &str,
    dest: &str,
    size: u64,
    mode: Option<u32>,
) -> Result<String, crate::host::ssh::SshError> {
    let store = crate::host::ssh::store_script(
        dest,
        mode,
        size,
        &crate::host::ssh::upload_token(),
        &format!("dd if=\"$dev\" of=\"$t\" bs=1M count={size} iflag=count_bytes status=none"),
    )?;
    Ok(format!(
        r#"dev=
i=0
while [ -z "$dev" ] && [ $i -lt {APPEAR_TICKS} ]; do
  for d in /sys/block/*; do
    if [ "$(cat "$d/serial" 2>/dev/null)" = '{serial}' ]; then dev=/dev/${{d##*/}}; fi
  done
  [ -n "$dev" ] || sleep 0.1
  i=$((i+1))
done
[ -n "$dev" ] || exit 90
[ -r "$dev" ] || exit 91
{store}"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_script_quotes_stages_and_sets_mode_before_the_rename() {
        let s = guest_copy_script("kiln-3", "/root/a b", 123, Some(0o100755)).unwrap();
        assert!(s.contains("= 'kiln-3'"));
        assert!(s.contains("d='/root/a b'"));
        assert!(s.contains("of=\"$t\" bs=1M count=123 iflag=count_bytes"));
        assert!(s.find("umask 077").unwrap() < s.find("dd if").unwrap());
        assert!(s.find("chmod 755 \"$t\"").unwrap() < s.find("mv -f").unwrap());
        let s = guest_copy_script("kiln-0", "/x", 1, None).unwrap();
        assert!(!s.contains("chmod 0"));
    }
}

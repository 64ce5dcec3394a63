//! Uploads land whole or not at all. Every upload is written under a temporary name
//! next to its destination (`.NAME.kiln-TOKEN`, same directory, so the same file
//! system) and renamed over the destination only once it is complete, so a cut
//! connection, a full disk or a killed kiln never leaves a partial file at the path a
//! step named. A retried upload first removes what an earlier attempt left.
//!
//! The exec-channel variants are POSIX shell scripts that check the byte count
//! themselves: a remote `cat` that loses its connection sees end-of-file and exits 0,
//! so "the writer succeeded" alone would publish a truncated file. Trees carry a
//! marker as their last tar entry for the same reason (tar accepts an archive cut at
//! an entry boundary).
//!
//! An existing destination keeps its owner (when the SSH user may set it) and, when
//! the upload sets no mode, its mode. Symbolic links are followed: the file they point
//! to is replaced, as writing through the link did. Destinations that are not regular
//! files (devices, fifos) are written in place.

use super::error::SshError;
use super::session::quote_path;

/// A fresh suffix for one upload's temporary name.
pub(crate) fn token() -> String {
    let mut t = uuid::Uuid::new_v4().simple().to_string();
    t.truncate(12);
    t
}

/// `dir/.name.kiln-TOKEN` for a remote path (string form: remote paths are `/`-separated).
pub(crate) fn temp_path(target: &str, token: &str) -> String {
    match target.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/.{name}.kiln-{token}"),
        None => format!(".{target}.kiln-{token}"),
    }
}

/// The name of the marker a tree upload appends as its last entry.
pub(crate) fn tree_marker(token: &str) -> String {
    format!(".kiln-complete-{token}")
}

/// Shell lines that set `$d` to the destination with symbolic links resolved (when the
/// system can: `readlink -f` is in GNU and busybox), and `$t` to the temporary name.
fn locate(dest: &str, token: &str) -> Result<String, SshError> {
    let d = quote_path(dest)?;
    Ok(format!(
        "d={d}\n\
         if [ -L \"$d\" ]; then r=$(readlink -f -- \"$d\" 2>/dev/null) && [ -n \"$r\" ] && d=$r; fi\n\
         t=\"$(dirname -- \"$d\")/.$(basename -- \"$d\").kiln-{token}\"\n"
    ))
}

/// A script that runs `writer` (a command writing the file `"$t"`, e.g. `cat > "$t"`),
/// checks that `"$t"` holds `size` bytes, applies the mode and the old file's owner, and
/// renames it over the destination. It exits non-zero and removes the temporary file on
/// any failure; the byte-count failure exits 75.
pub(crate) fn store_script(
    dest: &str,
    mode: Option<u32>,
    size: u64,
    token: &str,
    writer: &str,
) -> Result<String, SshError> {
    let chmod = match mode {
        Some(m) => format!("chmod {:o} \"$t\" || fail\n", m & 0o7777),
        // No mode asked for: keep the old file's, or what a new file would get.
        None => "if [ -e \"$d\" ]; then chmod --reference=\"$d\" \"$t\" 2>/dev/null || chmod \"$new\" \"$t\"; \
                 else chmod \"$new\" \"$t\"; fi || fail\n"
            .to_string(),
    };
    Ok(format!(
        "{locate}\
         if [ -d \"$d\" ]; then echo \"$d is a directory: name the file's full destination path\" >&2; exit 1; fi\n\
         if [ -e \"$d\" ] && [ ! -f \"$d\" ]; then t=$d; fi\n\
         fail() {{ [ \"$t\" = \"$d\" ] || rm -f -- \"$t\"; exit 1; }}\n\
         new=$(printf %o $((0666 & ~0$(umask))))\n\
         umask 077\n\
         {writer} || fail\n\
         [ \"$t\" = \"$d\" ] && exit 0\n\
         n=$(wc -c < \"$t\")\n\
         if [ \"$n\" -ne {size} ]; then rm -f -- \"$t\"; \
         echo \"received $n of {size} bytes; nothing was written to $d\" >&2; exit 75; fi\n\
         {chmod}\
         if [ -e \"$d\" ]; then chown --reference=\"$d\" \"$t\" 2>/dev/null; fi\n\
         mv -f -- \"$t\" \"$d\" || fail\n",
        locate = locate(dest, token)?,
    ))
}

/// A script that unpacks a tar stream from stdin into a staging directory next to
/// `dest`, checks that the stream's last entry (the marker) arrived, and then moves the
/// staging directory to `dest` (or, when `dest` exists, copies it in and removes it).
pub(crate) fn tree_script(dest: &str, token: &str) -> Result<String, SshError> {
    let marker = tree_marker(token);
    Ok(format!(
        "{locate}\
         fail() {{ rm -rf -- \"$t\"; exit 1; }}\n\
         mkdir -p -- \"$(dirname -- \"$d\")\" && mkdir -- \"$t\" || exit 1\n\
         tar -x -p --no-same-owner -f - -C \"$t\" || fail\n\
         if [ ! -e \"$t/{marker}\" ]; then echo \"the tree arrived incomplete; nothing was written to $d\" >&2; fail; fi\n\
         rm -f -- \"$t/{marker}\"\n\
         if [ -e \"$d\" ]; then \
           for e in \"$t\"/* \"$t\"/.[!.]* \"$t\"/..?*; do \
             [ -e \"$e\" ] || [ -L \"$e\" ] || continue; cp -pR -- \"$e\" \"$d/\" || fail; \
           done; rm -rf -- \"$t\"; \
         else mv -- \"$t\" \"$d\" || fail; fi\n",
        locate = locate(dest, token)?,
    ))
}

/// A script that removes what earlier attempts at uploading to `dest` left behind.
pub(crate) fn leftovers_script(dest: &str) -> Result<String, SshError> {
    Ok(format!(
        "{locate}rm -rf -- \"$(dirname -- \"$d\")/.$(basename -- \"$d\")\".kiln-*\n",
        locate = locate(dest, "x")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sh(script: &str, stdin: &[u8]) -> (i32, String) {
        use std::io::Write;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin)
            .expect("write");
        let out = child.wait_with_output().expect("wait");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn temp_names_sit_next_to_the_target() {
        assert_eq!(temp_path("/etc/app.conf", "ab"), "/etc/.app.conf.kiln-ab");
        assert_eq!(temp_path("x", "ab"), ".x.kiln-ab");
        assert_eq!(token().len(), 12);
        assert_ne!(token(), token());
    }

    #[test]
    fn a_short_stream_never_reaches_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.txt");
        std::fs::write(&dest, "old").unwrap();
        let s = store_script(
            dest.to_str().unwrap(),
            Some(0o640),
            10,
            "t1",
            "cat > \"$t\"",
        )
        .unwrap();
        let (code, err) = sh(&s, b"12345");
        assert_eq!(code, 75, "{err}");
        assert!(err.contains("received 5 of 10 bytes"), "{err}");
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "old");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "the temporary file was left: {left:?}");
    }

    #[test]
    fn a_whole_stream_replaces_the_file_and_follows_links() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.txt");
        std::fs::write(&real, "old").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link.txt");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let s = store_script(link.to_str().unwrap(), None, 3, "t2", "cat > \"$t\"").unwrap();
        let (code, err) = sh(&s, b"new");
        assert_eq!(code, 0, "{err}");
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "new");
        // No mode given: the old file's mode stays.
        let mode = std::fs::metadata(&real).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let s = store_script(dir.path().to_str().unwrap(), None, 1, "t3", "cat > \"$t\"").unwrap();
        let (code, err) = sh(&s, b"x");
        assert_ne!(code, 0);
        assert!(err.contains("is a directory"), "{err}");
    }

    #[test]
    fn leftovers_of_this_destination_only_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in [".a.kiln-1", ".a.kiln-2", ".b.kiln-1", "a"] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        std::fs::create_dir(d.join(".a.kiln-3")).unwrap();
        let (code, err) = sh(
            &leftovers_script(d.join("a").to_str().unwrap()).unwrap(),
            b"",
        );
        assert_eq!(code, 0, "{err}");
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".b.kiln-1", "a"]);
    }
}

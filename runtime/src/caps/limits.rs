//! Size limits on what a sandbox hands to the host. Every argument that crosses into
//! a facade (a command, its environment, a path, a file's contents, a name) is
//! measured against these before anything is built from it, so a guest or script
//! passing a 100 MiB string gets a clear error instead of kiln copying, quoting and
//! redacting it (and the SSH server dropping the session over an oversized request).
//! The refusal is audited with the argument's size, never its text.

/// One argument over its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is {len} bytes; kiln accepts at most {max} bytes{hint}")]
pub struct TooLarge {
    /// "the command", "the environment", "the path", ...
    pub what: &'static str,
    pub len: usize,
    pub max: usize,
    /// What to do instead, starting with "; ".
    pub hint: &'static str,
}

/// A command line for the machine's shell. SSH servers refuse requests over 256 KiB
/// (OpenSSH's packet limit), and the command travels with its exported environment.
pub const MAX_COMMAND: usize = 128 << 10;
/// The environment exported before a command, counted as the shell will see it
/// (each `'` in a value costs four bytes once quoted).
pub const MAX_ENV: usize = 64 << 10;
/// Environment variables per command.
pub const MAX_ENV_VARS: usize = 1024;
/// A path on the host or the machine (Linux's PATH_MAX).
pub const MAX_PATH: usize = 4096;
/// Contents of one `write_file`; larger files go through `upload`, which streams.
pub const MAX_WRITE: usize = 64 << 20;
/// A secret, region or other name.
pub const MAX_NAME: usize = 256;

/// `Ok` if `len` is within `max`.
pub fn check(
    what: &'static str,
    len: usize,
    max: usize,
    hint: &'static str,
) -> Result<(), TooLarge> {
    if len > max {
        return Err(TooLarge {
            what,
            len,
            max,
            hint,
        });
    }
    Ok(())
}

/// A path argument.
pub fn path(len: usize) -> Result<(), TooLarge> {
    check("the path", len, MAX_PATH, "")
}

/// A command and the environment exported before it.
pub fn command(command: &str, env: &[(String, String)]) -> Result<(), TooLarge> {
    check(
        "the command",
        command.len(),
        MAX_COMMAND,
        "; write a script with write_file or upload it, and run the script",
    )?;
    check("the environment", env.len(), MAX_ENV_VARS, " (variables)")?;
    let quoted: usize = env
        .iter()
        .map(|(k, v)| {
            let quotes = v.bytes().filter(|b| *b == b'\'').count();
            k.len()
                .saturating_add(v.len())
                .saturating_add(quotes.saturating_mul(3))
                .saturating_add(12)
        })
        .fold(0usize, usize::saturating_add);
    check(
        "the environment",
        quoted,
        MAX_ENV,
        "; pass large values in a file (write_file or upload) instead",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_refuse_by_size_and_name_the_argument() {
        assert!(command("true", &[("A".into(), "b".into())]).is_ok());
        let e = command(&"x".repeat(MAX_COMMAND + 1), &[]).unwrap_err();
        assert_eq!(e.what, "the command");
        assert!(e.to_string().contains("write a script"), "{e}");
        // Quotes count as the shell will see them: 20 000 quotes are 80 000 bytes.
        let e = command("true", &[("V".into(), "'".repeat(20_000))]).unwrap_err();
        assert_eq!(e.what, "the environment");
        let many: Vec<(String, String)> = (0..=MAX_ENV_VARS)
            .map(|i| (format!("V{i}"), String::new()))
            .collect();
        assert!(command("true", &many).is_err());
        assert!(path(MAX_PATH).is_ok() && path(MAX_PATH + 1).is_err());
    }
}

//! Passes huge arguments into the host: a 100 MiB command, a huge environment, a huge
//! path, and 100 MiB of file contents. The host must refuse each with an error, not
//! grow by gigabytes or drop the machine's connection. Returns what each call said.
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    /// Bytes per huge argument.
    size: usize,
}

kiln_guest::provisioner!(
    fn provision(cfg: Config) -> kiln_guest::Result<String> {
        use kiln_guest::machine;
        let mut report = Vec::new();
        let big = "'".repeat(cfg.size);
        let r = machine::exec(&format!("echo {big}"));
        report.push(format!("exec: {}", r.map(|_| "ran".to_string()).unwrap_or_else(|e| e.to_string())));
        let r = machine::exec_with_env("true", &[("BIG", big.as_str())]);
        report.push(format!("env: {}", r.map(|_| "ran".to_string()).unwrap_or_else(|e| e.to_string())));
        drop(big);
        let path = format!("/tmp/{}", "p".repeat(cfg.size));
        let r = machine::write_file(&path, b"x", None);
        report.push(format!("path: {}", r.map(|_| "written".to_string()).unwrap_or_else(|e| e.to_string())));
        drop(path);
        let contents = vec![b'x'; cfg.size];
        let r = machine::write_file("/tmp/big", &contents, None);
        report.push(format!("contents: {}", r.map(|_| "written".to_string()).unwrap_or_else(|e| e.to_string())));
        Ok(report.join("\n"))
    }
);

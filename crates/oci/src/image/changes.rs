//! Packer docker-builder `changes`, as a map (`env`, `entrypoint`, `cmd`, `workdir`,
//! `user`, `exposed_ports`, `labels`, `volumes`, `stop_signal`) or as Packer's list of
//! Dockerfile instructions (`"ENV K V"`, `"EXPOSE 80"`, ...), applied to a config with
//! Dockerfile semantics: `env`, `labels`, `exposed_ports` and `volumes` merge into what
//! the base has; the others replace; a relative `workdir` resolves against the current
//! one; setting `entrypoint` without `cmd` clears an inherited `cmd` (as `ENTRYPOINT`
//! does in a Dockerfile).

use serde::Deserialize;

use super::config::{ContainerConfig, Empty};

/// Config changes. Lists keep the caller's order (it decides `Env`'s order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Changes {
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    #[serde(default)]
    pub labels: Vec<(String, String)>,
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
}

/// A change that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangesError {
    #[error("env name {0:?} is empty or contains '=' or a NUL: use a plain variable name")]
    EnvName(String),
    #[error(
        "exposed port {0:?} is not PORT, PORT/PROTO or START-END[/PROTO] with ports 1..65535 \
         and PROTO tcp, udp or sctp"
    )]
    Port(String),
    #[error("stop_signal {0:?} is not a signal name (SIGTERM, TERM) or number")]
    Signal(String),
    #[error("volume {0:?} is not an absolute path")]
    Volume(String),
    #[error("workdir {0:?} is empty")]
    Workdir(String),
    #[error("label name is empty")]
    LabelName,
    #[error("change {line:?}: {reason}")]
    Instruction { line: String, reason: String },
}

impl Changes {
    /// Parses Packer's `changes` list (`docker commit --change` instructions): `ENV`,
    /// `ENTRYPOINT`, `CMD` (JSON or shell form), `WORKDIR`, `USER`, `EXPOSE`, `LABEL`,
    /// `VOLUME`, `STOPSIGNAL`.
    pub fn from_instructions<S: AsRef<str>>(lines: &[S]) -> Result<Changes, ChangesError> {
        let mut c = Changes::default();
        for line in lines {
            let line = line.as_ref().trim();
            let bad = |reason: &str| ChangesError::Instruction {
                line: line.to_string(),
                reason: reason.to_string(),
            };
            let (kw, rest) = match line.split_once(char::is_whitespace) {
                Some((k, r)) => (k, r.trim()),
                None => (line, ""),
            };
            if rest.is_empty() {
                return Err(bad("no argument"));
            }
            match kw.to_ascii_uppercase().as_str() {
                "ENV" => {
                    // `ENV K=V ...` when the first word has '=', else the legacy `ENV K V`.
                    if rest
                        .split_whitespace()
                        .next()
                        .is_some_and(|w| w.contains('='))
                    {
                        for w in words(rest).map_err(|r| bad(&r))? {
                            let (k, v) = w
                                .split_once('=')
                                .ok_or_else(|| bad("expected KEY=VALUE pairs"))?;
                            c.env.push((k.into(), v.into()));
                        }
                    } else {
                        let (k, v) = rest
                            .split_once(char::is_whitespace)
                            .ok_or_else(|| bad("expected ENV KEY VALUE"))?;
                        c.env.push((k.into(), v.trim().into()));
                    }
                }
                "LABEL" => {
                    for w in words(rest).map_err(|r| bad(&r))? {
                        let (k, v) = w
                            .split_once('=')
                            .ok_or_else(|| bad("expected KEY=VALUE pairs"))?;
                        c.labels.push((k.into(), v.into()));
                    }
                }
                "ENTRYPOINT" => c.entrypoint = Some(exec_form(rest).map_err(|r| bad(&r))?),
                "CMD" => c.cmd = Some(exec_form(rest).map_err(|r| bad(&r))?),
                "WORKDIR" => c.workdir = Some(rest.into()),
                "USER" => c.user = Some(rest.into()),
                "STOPSIGNAL" => c.stop_signal = Some(rest.into()),
                "EXPOSE" => c
                    .exposed_ports
                    .extend(rest.split_whitespace().map(String::from)),
                "VOLUME" => {
                    if rest.starts_with('[') {
                        let v: Vec<String> = serde_json::from_str(rest)
                            .map_err(|_| bad("VOLUME JSON array is malformed"))?;
                        c.volumes.extend(v);
                    } else {
                        c.volumes.extend(rest.split_whitespace().map(String::from));
                    }
                }
                "ONBUILD" | "MAINTAINER" | "HEALTHCHECK" | "SHELL" => {
                    return Err(bad(
                        "this instruction is not supported by kiln's oci builder",
                    ));
                }
                _ => return Err(bad("unknown instruction")),
            }
        }
        Ok(c)
    }

    /// Applies the changes to `cfg` (see the module docs for the semantics).
    pub fn apply(&self, cfg: &mut ContainerConfig) -> Result<(), ChangesError> {
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(ChangesError::EnvName(k.clone()));
            }
            let entry = format!("{k}={v}");
            let prefix = format!("{k}=");
            match cfg
                .env
                .iter_mut()
                .find(|e| e.starts_with(&prefix) || *e == k)
            {
                Some(e) => *e = entry,
                None => cfg.env.push(entry),
            }
        }
        if let Some(ep) = &self.entrypoint {
            cfg.entrypoint = if ep.is_empty() {
                None
            } else {
                Some(ep.clone())
            };
            if self.cmd.is_none() {
                cfg.cmd = None;
            }
        }
        if let Some(cmd) = &self.cmd {
            cfg.cmd = if cmd.is_empty() {
                None
            } else {
                Some(cmd.clone())
            };
        }
        if let Some(w) = &self.workdir {
            if w.is_empty() {
                return Err(ChangesError::Workdir(w.clone()));
            }
            let base = cfg
                .working_dir
                .clone()
                .filter(|b| !b.is_empty())
                .unwrap_or_else(|| "/".into());
            cfg.working_dir = Some(clean_path(&base, w));
        }
        if let Some(u) = &self.user {
            cfg.user = Some(u.clone());
        }
        for p in &self.exposed_ports {
            for key in port_keys(p)? {
                cfg.exposed_ports.insert(key, Empty {});
            }
        }
        for (k, v) in &self.labels {
            if k.is_empty() {
                return Err(ChangesError::LabelName);
            }
            cfg.labels.insert(k.clone(), v.clone());
        }
        for v in &self.volumes {
            if !v.starts_with('/') {
                return Err(ChangesError::Volume(v.clone()));
            }
            cfg.volumes.insert(v.clone(), Empty {});
        }
        if let Some(s) = &self.stop_signal {
            cfg.stop_signal = Some(check_signal(s)?);
        }
        Ok(())
    }
}

/// Shell-like words: whitespace-separated, double or single quotes group, `\` escapes
/// inside double quotes.
fn words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut have = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                have = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => cur.push(chars.next().ok_or("unterminated escape")?),
                        Some(c) => cur.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\'' => {
                have = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            c if c.is_whitespace() => {
                if have {
                    out.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            c => {
                have = true;
                cur.push(c);
            }
        }
    }
    if have {
        out.push(cur);
    }
    Ok(out)
}

/// `["a","b"]` (exec form) or `a b` (shell form → `/bin/sh -c "a b"`).
fn exec_form(s: &str) -> Result<Vec<String>, String> {
    if s.starts_with('[') {
        serde_json::from_str(s).map_err(|_| "the JSON array is malformed".to_string())
    } else {
        Ok(vec!["/bin/sh".into(), "-c".into(), s.into()])
    }
}

fn clean_path(base: &str, p: &str) -> String {
    let joined = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{base}/{p}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

fn port_keys(p: &str) -> Result<Vec<String>, ChangesError> {
    let bad = || ChangesError::Port(p.to_string());
    let (ports, proto) = match p.split_once('/') {
        Some((a, b)) => (a, b.to_ascii_lowercase()),
        None => (p, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad());
    }
    let num = |s: &str| s.parse::<u16>().ok().filter(|&n| n > 0).ok_or_else(bad);
    let (start, end) = match ports.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let n = num(ports)?;
            (n, n)
        }
    };
    if start > end || end - start > 1024 {
        return Err(bad());
    }
    Ok((start..=end).map(|n| format!("{n}/{proto}")).collect())
}

fn check_signal(s: &str) -> Result<String, ChangesError> {
    let ok = !s.is_empty()
        && (s.bytes().all(|b| b.is_ascii_digit())
            || s.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'+' || b == b'-'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(ChangesError::Signal(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ContainerConfig {
        ContainerConfig {
            env: vec!["PATH=/usr/bin".into(), "A=1".into()],
            cmd: Some(vec!["bash".into()]),
            working_dir: Some("/srv".into()),
            ..Default::default()
        }
    }

    #[test]
    fn map_semantics() {
        let mut c = base();
        Changes {
            env: vec![("A".into(), "2".into()), ("B".into(), "x y".into())],
            entrypoint: Some(vec!["/app".into()]),
            workdir: Some("app/../data".into()),
            exposed_ports: vec!["80".into(), "53/udp".into(), "8000-8001".into()],
            labels: vec![("version".into(), "1.0".into())],
            volumes: vec!["/data".into()],
            stop_signal: Some("SIGINT".into()),
            user: Some("1000:1000".into()),
            ..Default::default()
        }
        .apply(&mut c)
        .unwrap();
        assert_eq!(c.env, vec!["PATH=/usr/bin", "A=2", "B=x y"]);
        assert_eq!(c.entrypoint.as_deref(), Some(&["/app".to_string()][..]));
        assert_eq!(c.cmd, None, "ENTRYPOINT resets an inherited CMD");
        assert_eq!(c.working_dir.as_deref(), Some("/srv/data"));
        let ports: Vec<&str> = c.exposed_ports.keys().map(String::as_str).collect();
        assert_eq!(ports, vec!["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]);
        assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert!(c.volumes.contains_key("/data"));
    }

    #[test]
    fn entrypoint_and_cmd_together_keep_cmd() {
        let mut c = base();
        Changes {
            entrypoint: Some(vec!["/app".into()]),
            cmd: Some(vec!["--serve".into()]),
            ..Default::default()
        }
        .apply(&mut c)
        .unwrap();
        assert_eq!(c.cmd.as_deref(), Some(&["--serve".to_string()][..]));
    }

    #[test]
    fn invalid_changes_are_typed() {
        let mut c = base();
        let bad = |ch: Changes, c: &mut ContainerConfig| ch.apply(c).unwrap_err();
        assert!(matches!(
            bad(
                Changes {
                    env: vec![("A=B".into(), "x".into())],
                    ..Default::default()
                },
                &mut c
            ),
            ChangesError::EnvName(_)
        ));
        assert!(matches!(
            bad(
                Changes {
                    exposed_ports: vec!["0".into()],
                    ..Default::default()
                },
                &mut c
            ),
            ChangesError::Port(_)
        ));
        assert!(matches!(
            bad(
                Changes {
                    exposed_ports: vec!["80/icmp".into()],
                    ..Default::default()
                },
                &mut c
            ),
            ChangesError::Port(_)
        ));
        assert!(matches!(
            bad(
                Changes {
                    volumes: vec!["data".into()],
                    ..Default::default()
                },
                &mut c
            ),
            ChangesError::Volume(_)
        ));
        assert!(matches!(
            bad(
                Changes {
                    stop_signal: Some("kill -9".into()),
                    ..Default::default()
                },
                &mut c
            ),
            ChangesError::Signal(_)
        ));
    }

    #[test]
    fn packer_instruction_list() {
        let c = Changes::from_instructions(&[
            "ENV HOSTNAME www.example.com",
            "ENV A=1 B=\"two words\"",
            "EXPOSE 80 443",
            "LABEL version=1.0 \"maintainer\"=\"me <me@x>\"",
            "VOLUME /test1 /test2",
            "WORKDIR /path/to/workdir",
            "USER app",
            "ENTRYPOINT [\"/bin/app\", \"-v\"]",
            "CMD echo hi",
            "STOPSIGNAL SIGQUIT",
        ])
        .unwrap();
        assert_eq!(c.env[0], ("HOSTNAME".into(), "www.example.com".into()));
        assert_eq!(c.env[2], ("B".into(), "two words".into()));
        assert_eq!(c.labels[1], ("maintainer".into(), "me <me@x>".into()));
        assert_eq!(
            c.cmd.as_deref(),
            Some(&["/bin/sh".to_string(), "-c".into(), "echo hi".into()][..])
        );
        assert_eq!(c.exposed_ports, vec!["80", "443"]);
        assert!(Changes::from_instructions(&["ONBUILD RUN x"]).is_err());
        assert!(Changes::from_instructions(&["FROB x"]).is_err());
        assert!(Changes::from_instructions(&["ENV"]).is_err());
    }
}

//! Finding AWS credentials and the region the way the AWS CLI and SDKs do, in their order:
//!
//! 1. explicit `access_key` / `secret_key` (/ `session_token`) options;
//! 2. an explicit `profile` option: that profile and nothing else;
//! 3. the environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`;
//! 4. the profile named by `AWS_PROFILE` (or `default`) in the shared credentials file
//!    (`AWS_SHARED_CREDENTIALS_FILE`, `~/.aws/credentials`, sections `[name]`) and the config
//!    file (`AWS_CONFIG_FILE`, `~/.aws/config`, sections `[profile name]` / `[default]`);
//!    the credentials file wins where both set a key.
//!
//! The region: explicit, then `AWS_REGION`, `AWS_DEFAULT_REGION`, then the profile's `region`.
//! The environment and home directory come through [`Environment`], so tests never read the
//! real ones. Profiles that need a role, SSO or a credential process are reported as
//! unsupported rather than silently skipped.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::secret::Secret;

/// Profile files larger than this are refused (they are a few hundred bytes in practice).
const MAX_PROFILE_FILE: u64 = 1024 * 1024;

/// Where the process environment comes from.
pub trait Environment: Send + Sync {
    fn var(&self, name: &str) -> Option<String>;
    fn home_dir(&self) -> Option<PathBuf>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn home_dir(&self) -> Option<PathBuf> {
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .or_else(std::env::home_dir)
    }
}

/// A fixed environment, for tests and for callers that sandbox the process environment.
#[derive(Clone, Default)]
pub struct FixedEnvironment {
    vars: BTreeMap<String, String>,
    home: Option<PathBuf>,
}

impl FixedEnvironment {
    pub fn new() -> Self {
        FixedEnvironment::default()
    }
    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.to_string(), value.to_string());
        self
    }
    pub fn home(mut self, dir: impl Into<PathBuf>) -> Self {
        self.home = Some(dir.into());
        self
    }
}

impl fmt::Debug for FixedEnvironment {
    // The values may be secrets: show names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FixedEnvironment")
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("home", &self.home)
            .finish()
    }
}

impl Environment for FixedEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
    fn home_dir(&self) -> Option<PathBuf> {
        self.home.clone()
    }
}

/// What the caller (a template) says about credentials; everything optional.
#[derive(Clone, Default)]
pub struct CredentialsConfig {
    pub access_key: Option<String>,
    pub secret_key: Option<Secret>,
    pub session_token: Option<Secret>,
    pub profile: Option<String>,
}

impl fmt::Debug for CredentialsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialsConfig")
            .field(
                "access_key",
                &self.access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("secret_key", &self.secret_key)
            .field("session_token", &self.session_token)
            .field("profile", &self.profile)
            .finish()
    }
}

/// Where a set of credentials was found; printed in auth errors so the user knows which
/// keys to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    Explicit,
    Environment,
    Profile { name: String, file: PathBuf },
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::Explicit => f.write_str("the access_key/secret_key options"),
            CredentialSource::Environment => f.write_str(
                "environment variables AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN",
            ),
            CredentialSource::Profile { name, file } => {
                write!(f, "profile {name:?} in {}", file.display())
            }
        }
    }
}

/// A resolved access key. `Debug`/`Display` show only where it came from.
#[derive(Clone)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: Secret,
    session_token: Option<Secret>,
    source: CredentialSource,
}

impl Credentials {
    /// Explicit credentials.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: Secret,
        session_token: Option<Secret>,
    ) -> Self {
        Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key,
            session_token,
            source: CredentialSource::Explicit,
        }
    }

    pub fn source(&self) -> &CredentialSource {
        &self.source
    }

    pub(crate) fn access_key_id(&self) -> &str {
        &self.access_key_id
    }
    pub(crate) fn secret_access_key(&self) -> &str {
        self.secret_access_key.expose()
    }
    pub(crate) fn session_token(&self) -> Option<&str> {
        self.session_token.as_ref().map(Secret::expose)
    }

    /// Finds credentials in the AWS order (see the module docs).
    pub fn resolve(
        config: &CredentialsConfig,
        env: &dyn Environment,
    ) -> Result<Credentials, CredentialsError> {
        let mut looked = Vec::new();

        // 1. explicit options
        match (&config.access_key, &config.secret_key) {
            (Some(ak), Some(sk)) if !ak.is_empty() && !sk.is_empty() => {
                return Ok(Credentials::new(
                    ak.clone(),
                    sk.clone(),
                    config.session_token.clone(),
                ));
            }
            (Some(ak), _) if !ak.is_empty() => {
                return Err(CredentialsError::Incomplete {
                    place: "the builder options".into(),
                    present: "access_key",
                    missing: "secret_key",
                });
            }
            (_, Some(sk)) if !sk.is_empty() => {
                return Err(CredentialsError::Incomplete {
                    place: "the builder options".into(),
                    present: "secret_key",
                    missing: "access_key",
                });
            }
            _ => looked.push("the access_key/secret_key options: not set".to_string()),
        }

        let files = ProfileFiles::locate(env);

        // 2. an explicit profile option wins over the environment, as `aws --profile` does
        if let Some(name) = config.profile.as_deref().filter(|p| !p.is_empty()) {
            return match files.credentials(name, &mut looked)? {
                Some(c) => Ok(c),
                None => Err(CredentialsError::ProfileNotFound {
                    profile: name.to_string(),
                    looked,
                }),
            };
        }

        // 3. environment
        let ak = non_empty(env, "AWS_ACCESS_KEY_ID").or_else(|| non_empty(env, "AWS_ACCESS_KEY"));
        let sk =
            non_empty(env, "AWS_SECRET_ACCESS_KEY").or_else(|| non_empty(env, "AWS_SECRET_KEY"));
        match (ak, sk) {
            (Some(ak), Some(sk)) => {
                let token = non_empty(env, "AWS_SESSION_TOKEN")
                    .or_else(|| non_empty(env, "AWS_SECURITY_TOKEN"))
                    .map(Secret::new);
                return Ok(Credentials {
                    access_key_id: ak,
                    secret_access_key: Secret::new(sk),
                    session_token: token,
                    source: CredentialSource::Environment,
                });
            }
            (Some(_), None) => {
                return Err(CredentialsError::Incomplete {
                    place: "the environment".into(),
                    present: "AWS_ACCESS_KEY_ID",
                    missing: "AWS_SECRET_ACCESS_KEY",
                });
            }
            (None, Some(_)) => {
                return Err(CredentialsError::Incomplete {
                    place: "the environment".into(),
                    present: "AWS_SECRET_ACCESS_KEY",
                    missing: "AWS_ACCESS_KEY_ID",
                });
            }
            (None, None) => looked.push(
                "environment variables AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: not set"
                    .to_string(),
            ),
        }

        // 4. AWS_PROFILE or default
        let (name, named) =
            match non_empty(env, "AWS_PROFILE").or_else(|| non_empty(env, "AWS_DEFAULT_PROFILE")) {
                Some(p) => (p, true),
                None => ("default".to_string(), false),
            };
        match files.credentials(&name, &mut looked)? {
            Some(c) => Ok(c),
            None if named => Err(CredentialsError::ProfileNotFound {
                profile: name,
                looked,
            }),
            None => Err(CredentialsError::NotFound { looked }),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted> (from {})", self.source)
    }
}

/// The region to use when the caller gives none.
pub fn resolve_region(
    explicit: Option<&str>,
    profile: Option<&str>,
    env: &dyn Environment,
) -> Result<String, CredentialsError> {
    if let Some(r) = explicit.filter(|r| !r.is_empty()) {
        return Ok(r.to_string());
    }
    for var in ["AWS_REGION", "AWS_DEFAULT_REGION"] {
        if let Some(r) = non_empty(env, var) {
            return Ok(r);
        }
    }
    let name = profile
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .or_else(|| non_empty(env, "AWS_PROFILE"))
        .unwrap_or_else(|| "default".to_string());
    let files = ProfileFiles::locate(env);
    let mut looked = vec![
        "the region option: not set".to_string(),
        "environment variables AWS_REGION and AWS_DEFAULT_REGION: not set".to_string(),
    ];
    for (path, kind) in [
        (&files.config, FileKind::Config),
        (&files.credentials, FileKind::Credentials),
    ] {
        let Some(path) = path else { continue };
        match load(path, kind)? {
            Some(sections) => match sections.get(&name).and_then(|s| s.get("region")) {
                Some(r) if !r.is_empty() => return Ok(r.clone()),
                _ => looked.push(format!("profile {name:?} in {}: no region", path.display())),
            },
            None => looked.push(format!("{}: file not found", path.display())),
        }
    }
    Err(CredentialsError::NoRegion { looked })
}

/// Why no usable credentials (or region) were found. Never contains a secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "no AWS credentials found; looked at, in order: {}. Set access_key and secret_key, \
         export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or create a profile with \
         `aws configure`",
        numbered(.looked)
    )]
    NotFound { looked: Vec<String> },

    #[error(
        "AWS profile {profile:?} has no credentials; looked at: {}. Check the profile name \
         (`aws configure list-profiles`) or set AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE",
        numbered(.looked)
    )]
    ProfileNotFound {
        profile: String,
        looked: Vec<String>,
    },

    #[error("{present} is set in {place} but {missing} is not; set both")]
    Incomplete {
        place: String,
        present: &'static str,
        missing: &'static str,
    },

    #[error(
        "AWS profile {profile:?} in {} sets {setting}, which kiln does not support yet; give \
         the profile static keys (aws_access_key_id/aws_secret_access_key) or export \
         temporary credentials (e.g. `eval $(aws configure export-credentials --profile {profile} --format env)`)",
        .file.display()
    )]
    ProfileUnsupported {
        profile: String,
        file: PathBuf,
        setting: String,
    },

    #[error("cannot read AWS profile file {}: {detail}", .path.display())]
    Unreadable { path: PathBuf, detail: String },

    #[error(
        "no AWS region given; looked at, in order: {}. Set the region option or AWS_REGION",
        numbered(.looked)
    )]
    NoRegion { looked: Vec<String> },
}

fn numbered(items: &[String]) -> String {
    items
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{}) {s}", i + 1))
        .collect::<Vec<_>>()
        .join("; ")
}

fn non_empty(env: &dyn Environment, name: &str) -> Option<String> {
    env.var(name).filter(|v| !v.trim().is_empty())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Credentials,
    Config,
}

type Sections = BTreeMap<String, BTreeMap<String, String>>;

struct ProfileFiles {
    credentials: Option<PathBuf>,
    config: Option<PathBuf>,
}

impl ProfileFiles {
    fn locate(env: &dyn Environment) -> Self {
        let home = env.home_dir();
        let pick = |var: &str, default: &str| match non_empty(env, var) {
            Some(p) => Some(expand_home(&p, home.as_deref())),
            None => home.as_ref().map(|h| h.join(".aws").join(default)),
        };
        ProfileFiles {
            credentials: pick("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
            config: pick("AWS_CONFIG_FILE", "config"),
        }
    }

    /// The profile's static credentials, `None` when neither file defines keys for it.
    fn credentials(
        &self,
        name: &str,
        looked: &mut Vec<String>,
    ) -> Result<Option<Credentials>, CredentialsError> {
        // Merge config then credentials, remembering which file each key came from.
        let mut merged: BTreeMap<String, (String, PathBuf)> = BTreeMap::new();
        for (path, kind) in [
            (&self.config, FileKind::Config),
            (&self.credentials, FileKind::Credentials),
        ] {
            let Some(path) = path else {
                looked.push(format!(
                    "the {} file: no home directory to look in",
                    if kind == FileKind::Config {
                        "config"
                    } else {
                        "credentials"
                    }
                ));
                continue;
            };
            match load(path, kind)? {
                None => looked.push(format!(
                    "profile {name:?} in {}: file not found",
                    path.display()
                )),
                Some(sections) => match sections.get(name) {
                    None => looked.push(format!(
                        "profile {name:?} in {}: no such profile",
                        path.display()
                    )),
                    Some(values) => {
                        if !values.contains_key("aws_access_key_id") {
                            looked.push(format!(
                                "profile {name:?} in {}: no aws_access_key_id",
                                path.display()
                            ));
                        }
                        for (k, v) in values {
                            merged.insert(k.clone(), (v.clone(), path.clone()));
                        }
                    }
                },
            }
        }

        let get = |k: &str| merged.get(k).filter(|(v, _)| !v.is_empty());
        match (get("aws_access_key_id"), get("aws_secret_access_key")) {
            (Some((ak, file)), Some((sk, _))) => Ok(Some(Credentials {
                access_key_id: ak.clone(),
                secret_access_key: Secret::new(sk.clone()),
                session_token: get("aws_session_token").map(|(t, _)| Secret::new(t.clone())),
                source: CredentialSource::Profile {
                    name: name.to_string(),
                    file: file.clone(),
                },
            })),
            (Some((_, file)), None) | (None, Some((_, file))) => {
                Err(CredentialsError::Incomplete {
                    place: format!("profile {name:?} in {}", file.display()),
                    present: if get("aws_access_key_id").is_some() {
                        "aws_access_key_id"
                    } else {
                        "aws_secret_access_key"
                    },
                    missing: if get("aws_access_key_id").is_some() {
                        "aws_secret_access_key"
                    } else {
                        "aws_access_key_id"
                    },
                })
            }
            (None, None) => {
                for setting in [
                    "role_arn",
                    "credential_process",
                    "sso_session",
                    "sso_start_url",
                    "web_identity_token_file",
                    "credential_source",
                ] {
                    if let Some((_, file)) = get(setting) {
                        return Err(CredentialsError::ProfileUnsupported {
                            profile: name.to_string(),
                            file: file.clone(),
                            setting: setting.to_string(),
                        });
                    }
                }
                Ok(None)
            }
        }
    }
}

fn expand_home(path: &str, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(h)) => h.join(rest),
        _ => PathBuf::from(path),
    }
}

/// Reads and parses a profile file; `None` when it does not exist.
fn load(path: &Path, kind: FileKind) -> Result<Option<Sections>, CredentialsError> {
    let unreadable = |detail: String| CredentialsError::Unreadable {
        path: path.to_path_buf(),
        detail,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(e.to_string())),
    };
    if meta.len() > MAX_PROFILE_FILE {
        return Err(unreadable(format!(
            "{} bytes, more than the {MAX_PROFILE_FILE} allowed",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| unreadable(e.to_string()))?;
    Ok(Some(parse_profiles(&text, kind)))
}

/// The INI dialect of the AWS files: `[section]`, `key = value`, `#`/`;` comment lines,
/// indented continuation lines (nested settings such as `s3 =`), which are skipped. Keys are
/// case-insensitive. Values are kept verbatim (no inline comments: secrets may contain `#`).
fn parse_profiles(text: &str, kind: FileKind) -> Sections {
    let mut sections = Sections::new();
    let mut current: Option<String> = None;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if raw.starts_with([' ', '\t']) && current.is_some() && !line.starts_with('[') {
            continue; // a nested sub-setting
        }
        if let Some(inner) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let inner = inner.trim();
            current = match kind {
                FileKind::Credentials => Some(inner.to_string()),
                FileKind::Config => {
                    if inner == "default" {
                        Some("default".to_string())
                    } else {
                        inner
                            .strip_prefix("profile")
                            .filter(|r| r.starts_with(char::is_whitespace))
                            .map(|r| r.trim().to_string())
                    }
                }
            };
            if let Some(name) = &current {
                sections.entry(name.clone()).or_default();
            }
            continue;
        }
        let (Some(section), Some((k, v))) = (&current, line.split_once('=')) else {
            continue;
        };
        if let Some(values) = sections.get_mut(section) {
            values.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    const SK: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn home_with(creds: Option<&str>, config: Option<&str>) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join(".aws")).unwrap();
        if let Some(c) = creds {
            std::fs::write(d.path().join(".aws/credentials"), c).unwrap();
        }
        if let Some(c) = config {
            std::fs::write(d.path().join(".aws/config"), c).unwrap();
        }
        d
    }

    #[test]
    fn explicit_wins() {
        let env = FixedEnvironment::new()
            .var("AWS_ACCESS_KEY_ID", "ENV")
            .var("AWS_SECRET_ACCESS_KEY", "envsecret");
        let c = Credentials::resolve(
            &CredentialsConfig {
                access_key: Some("AKID".into()),
                secret_key: Some(SK.into()),
                ..Default::default()
            },
            &env,
        )
        .unwrap();
        assert_eq!(c.access_key_id(), "AKID");
        assert_eq!(c.source(), &CredentialSource::Explicit);
    }

    #[test]
    fn explicit_half_is_an_error() {
        let e = Credentials::resolve(
            &CredentialsConfig {
                access_key: Some("AKID".into()),
                ..Default::default()
            },
            &FixedEnvironment::new(),
        )
        .unwrap_err();
        assert!(matches!(
            e,
            CredentialsError::Incomplete {
                missing: "secret_key",
                ..
            }
        ));
    }

    #[test]
    fn environment_before_default_profile() {
        let home = home_with(
            Some(&format!(
                "[default]\naws_access_key_id = FILE\naws_secret_access_key = {SK}\n"
            )),
            None,
        );
        let env = FixedEnvironment::new()
            .home(home.path())
            .var("AWS_ACCESS_KEY_ID", "ENV")
            .var("AWS_SECRET_ACCESS_KEY", SK)
            .var("AWS_SESSION_TOKEN", "tok");
        let c = Credentials::resolve(&CredentialsConfig::default(), &env).unwrap();
        assert_eq!(c.access_key_id(), "ENV");
        assert_eq!(c.session_token(), Some("tok"));
        assert_eq!(c.source(), &CredentialSource::Environment);
    }

    #[test]
    fn explicit_profile_beats_environment() {
        let home = home_with(
            Some(&format!(
                "[ci]\naws_access_key_id = CI\naws_secret_access_key = {SK}\n"
            )),
            None,
        );
        let env = FixedEnvironment::new()
            .home(home.path())
            .var("AWS_ACCESS_KEY_ID", "ENV")
            .var("AWS_SECRET_ACCESS_KEY", SK);
        let c = Credentials::resolve(
            &CredentialsConfig {
                profile: Some("ci".into()),
                ..Default::default()
            },
            &env,
        )
        .unwrap();
        assert_eq!(c.access_key_id(), "CI");
        assert!(matches!(c.source(), CredentialSource::Profile { name, .. } if name == "ci"));
    }

    #[test]
    fn aws_profile_from_config_file_and_credentials_override() {
        let home = home_with(
            Some(&format!(
                "# comment\n[dev]\naws_secret_access_key={SK}\n\n[other]\naws_access_key_id = O\n"
            )),
            Some(
                "[default]\nregion = eu-west-1\n[profile dev]\naws_access_key_id = CONFIG\n\
                 aws_secret_access_key = old\nregion = eu-central-1\ns3 =\n  max_concurrent_requests = 4\n",
            ),
        );
        let env = FixedEnvironment::new()
            .home(home.path())
            .var("AWS_PROFILE", "dev");
        let c = Credentials::resolve(&CredentialsConfig::default(), &env).unwrap();
        assert_eq!(c.access_key_id(), "CONFIG");
        assert_eq!(c.secret_access_key(), SK, "credentials file wins");
        assert_eq!(resolve_region(None, None, &env).unwrap(), "eu-central-1");
        assert_eq!(
            resolve_region(None, Some("default"), &env).unwrap(),
            "eu-west-1"
        );
        assert_eq!(
            resolve_region(Some("us-west-2"), None, &env).unwrap(),
            "us-west-2"
        );
        let env = env.var("AWS_DEFAULT_REGION", "ap-south-1");
        assert_eq!(resolve_region(None, None, &env).unwrap(), "ap-south-1");
        let env = env.var("AWS_REGION", "sa-east-1");
        assert_eq!(resolve_region(None, None, &env).unwrap(), "sa-east-1");
    }

    #[test]
    fn file_locations_from_env() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("creds"),
            format!("[default]\naws_access_key_id = X\naws_secret_access_key = {SK}\naws_session_token = T\n"),
        )
        .unwrap();
        std::fs::write(d.path().join("conf"), "[default]\nregion = us-east-2\n").unwrap();
        let env = FixedEnvironment::new()
            .home("/nonexistent")
            .var(
                "AWS_SHARED_CREDENTIALS_FILE",
                d.path().join("creds").to_str().unwrap(),
            )
            .var("AWS_CONFIG_FILE", d.path().join("conf").to_str().unwrap());
        let c = Credentials::resolve(&CredentialsConfig::default(), &env).unwrap();
        assert_eq!(c.access_key_id(), "X");
        assert_eq!(c.session_token(), Some("T"));
        assert_eq!(resolve_region(None, None, &env).unwrap(), "us-east-2");
    }

    #[test]
    fn not_found_lists_every_place() {
        let home = home_with(None, Some("[profile other]\nregion=x\n"));
        let env = FixedEnvironment::new().home(home.path());
        let e = Credentials::resolve(&CredentialsConfig::default(), &env).unwrap_err();
        let CredentialsError::NotFound { looked } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(looked.len(), 4, "{looked:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("1) the access_key/secret_key options: not set"),
            "{msg}"
        );
        assert!(msg.contains("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: not set"));
        assert!(msg.contains("config: no such profile"));
        assert!(msg.contains("credentials: file not found"));
        assert!(msg.contains("aws configure"));

        let e = resolve_region(None, None, &env).unwrap_err();
        assert!(matches!(e, CredentialsError::NoRegion { .. }));
    }

    #[test]
    fn named_profile_missing_is_its_own_error() {
        let home = home_with(Some("[a]\n"), None);
        let env = FixedEnvironment::new()
            .home(home.path())
            .var("AWS_PROFILE", "nope");
        let e = Credentials::resolve(&CredentialsConfig::default(), &env).unwrap_err();
        assert!(
            matches!(e, CredentialsError::ProfileNotFound { ref profile, .. } if profile == "nope")
        );
    }

    #[test]
    fn unsupported_and_incomplete_profiles() {
        let home = home_with(
            Some("[half]\naws_access_key_id = A\n"),
            Some("[profile role]\nrole_arn = arn:aws:iam::1:role/x\nsource_profile = half\n"),
        );
        let env = FixedEnvironment::new().home(home.path());
        let cfg = |p: &str| CredentialsConfig {
            profile: Some(p.into()),
            ..Default::default()
        };
        let e = Credentials::resolve(&cfg("role"), &env).unwrap_err();
        assert!(
            matches!(e, CredentialsError::ProfileUnsupported { ref setting, .. } if setting == "role_arn")
        );
        let e = Credentials::resolve(&cfg("half"), &env).unwrap_err();
        assert!(matches!(
            e,
            CredentialsError::Incomplete {
                missing: "aws_secret_access_key",
                ..
            }
        ));
        let e = Credentials::resolve(
            &CredentialsConfig::default(),
            &FixedEnvironment::new().var("AWS_SECRET_ACCESS_KEY", SK),
        )
        .unwrap_err();
        assert!(matches!(
            e,
            CredentialsError::Incomplete {
                missing: "AWS_ACCESS_KEY_ID",
                ..
            }
        ));
    }

    #[test]
    fn secrets_never_printed() {
        let home = home_with(
            Some(&format!(
                "[default]\naws_access_key_id = AKIDSHOWN\naws_secret_access_key = {SK}\naws_session_token = SESSIONTOKEN\n"
            )),
            None,
        );
        let env = FixedEnvironment::new()
            .home(home.path())
            .var("AWS_SECRET_ACCESS_KEY_UNUSED", SK);
        let c = Credentials::resolve(&CredentialsConfig::default(), &env).unwrap();
        for text in [
            format!("{c:?}"),
            format!("{c}"),
            format!("{env:?}"),
            format!(
                "{:?}",
                CredentialsConfig {
                    access_key: Some("AKIDSHOWN".into()),
                    secret_key: Some(SK.into()),
                    session_token: Some("SESSIONTOKEN".into()),
                    profile: None
                }
            ),
        ] {
            assert!(!text.contains(SK), "{text}");
            assert!(!text.contains("SESSIONTOKEN"), "{text}");
            assert!(!text.contains("AKIDSHOWN"), "{text}");
        }
        // Errors about an incomplete profile name keys, not values.
        let home = home_with(
            Some(&format!("[default]\naws_secret_access_key = {SK}\n")),
            None,
        );
        let e = Credentials::resolve(
            &CredentialsConfig::default(),
            &FixedEnvironment::new().home(home.path()),
        )
        .unwrap_err();
        assert!(!e.to_string().contains(SK));
        assert!(!format!("{e:?}").contains(SK));
    }

    #[test]
    fn parser_edge_cases() {
        let s = parse_profiles(
            "[profile a]\nK = v=with=equals\n[profilex]\nz=1\n[ profile  b ]\nx = 1\n[sso-session s]\ny=2\n",
            FileKind::Config,
        );
        assert_eq!(s["a"]["k"], "v=with=equals");
        assert_eq!(s["b"]["x"], "1");
        assert_eq!(s.len(), 2, "{s:?}");
        let s = parse_profiles(
            "junk before\n[x]\n  indented = skipped\na=1\n",
            FileKind::Credentials,
        );
        assert_eq!(s["x"].len(), 1);
    }
}

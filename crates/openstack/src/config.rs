//! Where and how to authenticate, found the way the `openstack` CLI finds it.
//!
//! Precedence, highest first (the CLI's: its `--os-*` options default to the `OS_*` variables,
//! which therefore override the selected cloud's clouds.yaml entry):
//!
//! 1. explicit [`CloudOptions`] (the post-processor's map);
//! 2. `OS_*` environment variables;
//! 3. the cloud named by the `cloud` option or `OS_CLOUD` in `clouds.yaml`, with the same cloud
//!    from `secure.yaml` merged over it (secure.yaml wins, key by key, nested maps merged).
//!
//! clouds.yaml is the first of `$OS_CLIENT_CONFIG_FILE`, `./clouds.yaml`,
//! `$XDG_CONFIG_HOME/openstack/clouds.yaml`, `~/.config/openstack/clouds.yaml`,
//! `/etc/openstack/clouds.yaml` that exists (`.yml` accepted too); secure.yaml likewise
//! (`$OS_CLIENT_SECURE_FILE` first). No cloud selected means no file is read.
//!
//! The auth type, when not given, is inferred: an application-credential secret means
//! `v3applicationcredential`; a token without a password means `token`; an endpoint with no
//! auth URL and no credentials at all means `none`; anything else is `password`. As with the
//! CLI, user and project domains default to the domain id `default` (`OS_DEFAULT_DOMAIN`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::ConfigError;
use crate::secret::Secret;

/// The process environment as this crate sees it: `OS_*` variables, `HOME`, `XDG_CONFIG_HOME`,
/// the working directory and the system config dir. Injectable so tests never read the real ones.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    vars: BTreeMap<String, EnvValue>,
    home: Option<PathBuf>,
    cwd: Option<PathBuf>,
    system_dir: Option<PathBuf>,
}

/// An environment value; those that may hold secrets are kept as [`Secret`].
#[derive(Clone, Debug)]
enum EnvValue {
    Plain(String),
    Secret(Secret),
}

const SECRET_VARS: &[&str] = &[
    "OS_PASSWORD",
    "OS_TOKEN",
    "OS_APPLICATION_CREDENTIAL_SECRET",
];

impl Environment {
    /// An empty environment: no variables, no home, no working directory, `/etc/openstack`.
    pub fn empty() -> Environment {
        Environment::default()
    }

    /// The real process environment (only `OS_*`, `HOME`, `XDG_CONFIG_HOME` are kept).
    pub fn from_process() -> Environment {
        let mut env = Environment::empty();
        for (k, v) in std::env::vars_os() {
            let (Some(k), Some(v)) = (k.to_str(), v.to_str()) else {
                continue;
            };
            if k.starts_with("OS_") || k == "XDG_CONFIG_HOME" {
                env = env.var(k, v);
            }
        }
        env.home = std::env::var_os("HOME").map(PathBuf::from);
        env.cwd = std::env::current_dir().ok();
        env
    }

    /// Sets a variable (empty values count as unset, as they do for the CLI in practice).
    pub fn var(mut self, key: impl Into<String>, value: impl Into<String>) -> Environment {
        let key = key.into();
        let value = value.into();
        let v = if SECRET_VARS.contains(&key.as_str()) {
            EnvValue::Secret(Secret::new(value))
        } else {
            EnvValue::Plain(value)
        };
        self.vars.insert(key, v);
        self
    }

    pub fn home(mut self, dir: impl Into<PathBuf>) -> Environment {
        self.home = Some(dir.into());
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Environment {
        self.cwd = Some(dir.into());
        self
    }

    /// Replaces `/etc/openstack` (tests).
    pub fn system_dir(mut self, dir: impl Into<PathBuf>) -> Environment {
        self.system_dir = Some(dir.into());
        self
    }

    fn get(&self, key: &str) -> Option<String> {
        match self.vars.get(key)? {
            EnvValue::Plain(s) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
    }

    fn secret(&self, key: &str) -> Option<Secret> {
        match self.vars.get(key)? {
            EnvValue::Secret(s) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
    }

    /// The directories searched for clouds.yaml / secure.yaml, in order.
    fn search_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(cwd) = &self.cwd {
            dirs.push(cwd.clone());
        }
        if let Some(xdg) = self.get("XDG_CONFIG_HOME") {
            dirs.push(PathBuf::from(xdg).join("openstack"));
        }
        if let Some(home) = &self.home {
            let d = home.join(".config").join("openstack");
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        dirs.push(
            self.system_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("/etc/openstack")),
        );
        dirs
    }
}

/// Explicit settings (the highest layer). Every field is optional; unset fields come from
/// `OS_*` variables, then from clouds.yaml.
#[derive(Clone, Debug, Default)]
pub struct CloudOptions {
    /// The clouds.yaml entry to use (else `OS_CLOUD`).
    pub cloud: Option<String>,
    /// `password`, `v3applicationcredential`, `token` or `none` (aliases: `v3password`,
    /// `v3token`, `admin_token`, `applicationcredential`, `application_credential`, `noauth`).
    pub auth_type: Option<String>,
    pub auth_url: Option<String>,
    pub username: Option<String>,
    pub user_id: Option<String>,
    pub password: Option<Secret>,
    pub project_name: Option<String>,
    pub project_id: Option<String>,
    pub user_domain_name: Option<String>,
    pub user_domain_id: Option<String>,
    pub project_domain_name: Option<String>,
    pub project_domain_id: Option<String>,
    /// Applies to both user and project when their own domain is not set.
    pub domain_name: Option<String>,
    pub domain_id: Option<String>,
    pub default_domain: Option<String>,
    pub token: Option<Secret>,
    pub application_credential_id: Option<String>,
    pub application_credential_name: Option<String>,
    pub application_credential_secret: Option<Secret>,
    pub region_name: Option<String>,
    /// `public` (default), `internal` or `admin` (`publicURL` etc. accepted).
    pub interface: Option<String>,
    /// The image (Glance) endpoint, skipping the catalog; required for auth type `none`.
    pub endpoint: Option<String>,
    /// PEM bundle trusted instead of the system roots.
    pub cacert: Option<PathBuf>,
    /// Skip TLS verification. Only ever true when set explicitly.
    pub insecure: Option<bool>,
}

macro_rules! overlay_fields {
    ($low:ident, $high:ident, $($f:ident),*) => {
        CloudOptions { $($f: $high.$f.clone().or_else(|| $low.$f.clone()),)* }
    };
}

impl CloudOptions {
    /// `self` with every field that `higher` sets replaced by `higher`'s value.
    fn overlay(&self, higher: &CloudOptions) -> CloudOptions {
        let low = self;
        overlay_fields!(
            low,
            higher,
            cloud,
            auth_type,
            auth_url,
            username,
            user_id,
            password,
            project_name,
            project_id,
            user_domain_name,
            user_domain_id,
            project_domain_name,
            project_domain_id,
            domain_name,
            domain_id,
            default_domain,
            token,
            application_credential_id,
            application_credential_name,
            application_credential_secret,
            region_name,
            interface,
            endpoint,
            cacert,
            insecure
        )
    }

    fn from_env(env: &Environment) -> Result<CloudOptions, ConfigError> {
        let g = |k: &str| env.get(k);
        let insecure = match g("OS_INSECURE") {
            None => None,
            Some(v) => Some(parse_bool("OS_INSECURE", &v)?),
        };
        Ok(CloudOptions {
            cloud: g("OS_CLOUD"),
            auth_type: g("OS_AUTH_TYPE").or_else(|| g("OS_AUTH_PLUGIN")),
            auth_url: g("OS_AUTH_URL"),
            username: g("OS_USERNAME"),
            user_id: g("OS_USER_ID"),
            password: env.secret("OS_PASSWORD"),
            project_name: g("OS_PROJECT_NAME").or_else(|| g("OS_TENANT_NAME")),
            project_id: g("OS_PROJECT_ID").or_else(|| g("OS_TENANT_ID")),
            user_domain_name: g("OS_USER_DOMAIN_NAME"),
            user_domain_id: g("OS_USER_DOMAIN_ID"),
            project_domain_name: g("OS_PROJECT_DOMAIN_NAME"),
            project_domain_id: g("OS_PROJECT_DOMAIN_ID"),
            domain_name: g("OS_DOMAIN_NAME"),
            domain_id: g("OS_DOMAIN_ID"),
            default_domain: g("OS_DEFAULT_DOMAIN"),
            token: env.secret("OS_TOKEN"),
            application_credential_id: g("OS_APPLICATION_CREDENTIAL_ID"),
            application_credential_name: g("OS_APPLICATION_CREDENTIAL_NAME"),
            application_credential_secret: env.secret("OS_APPLICATION_CREDENTIAL_SECRET"),
            region_name: g("OS_REGION_NAME"),
            interface: g("OS_INTERFACE").or_else(|| g("OS_ENDPOINT_TYPE")),
            // the most specific wins: the image service's own override, glanceclient's
            // OS_IMAGE_URL, then the generic OS_ENDPOINT (`--os-endpoint`)
            endpoint: g("OS_IMAGE_ENDPOINT_OVERRIDE")
                .or_else(|| g("OS_IMAGE_URL"))
                .or_else(|| g("OS_ENDPOINT")),
            cacert: g("OS_CACERT").map(PathBuf::from),
            insecure,
        })
    }
}

/// Which catalog endpoint of a service to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interface {
    Public,
    Internal,
    Admin,
}

impl Interface {
    pub fn as_str(self) -> &'static str {
        match self {
            Interface::Public => "public",
            Interface::Internal => "internal",
            Interface::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Result<Interface, ConfigError> {
        let lower = s.to_ascii_lowercase();
        match lower.trim_end_matches("url") {
            "public" => Ok(Interface::Public),
            "internal" => Ok(Interface::Internal),
            "admin" => Ok(Interface::Admin),
            _ => Err(ConfigError::Invalid {
                what: "interface",
                value: s.to_string(),
                reason: "use public, internal or admin".into(),
            }),
        }
    }
}

/// A Keystone domain, by id or by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainRef {
    Id(String),
    Name(String),
}

/// A Keystone user, by id or by name within a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserRef {
    Id(String),
    Name { name: String, domain: DomainRef },
}

/// What the token is scoped to. Glance needs a project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    ProjectId(String),
    ProjectName {
        name: String,
        domain: DomainRef,
    },
    Domain(DomainRef),
    /// Keep the token's own scope (token auth).
    Unscoped,
}

/// An application credential, by id or by name (name needs the owning user).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppCredential {
    Id(String),
    Name { name: String, user: UserRef },
}

/// How to get a token. Secrets inside print as `<redacted>`.
#[derive(Clone, Debug)]
pub enum Auth {
    /// Keystone v3 password auth.
    Password {
        auth_url: String,
        user: UserRef,
        password: Secret,
        scope: Scope,
    },
    /// Keystone v3 application credential (the scope is the credential's own).
    ApplicationCredential {
        auth_url: String,
        credential: AppCredential,
        secret: Secret,
    },
    /// A pre-issued token: used as is with an explicit endpoint, else exchanged at `auth_url`
    /// for a (re-scoped) token with a catalog.
    Token {
        token: Secret,
        auth_url: Option<String>,
        scope: Scope,
    },
    /// No auth at all (standalone Glance); needs an explicit endpoint.
    None,
}

impl Auth {
    /// `password`, `v3applicationcredential`, `token` or `none`.
    pub fn kind(&self) -> &'static str {
        match self {
            Auth::Password { .. } => "password",
            Auth::ApplicationCredential { .. } => "v3applicationcredential",
            Auth::Token { .. } => "token",
            Auth::None => "none",
        }
    }
}

/// A resolved cloud: everything needed to connect, with no secret visible in `Debug`.
#[derive(Clone, Debug)]
pub struct CloudConfig {
    /// The clouds.yaml entry used, if any.
    pub cloud: Option<String>,
    pub auth: Auth,
    pub region_name: Option<String>,
    pub interface: Interface,
    /// Explicit image endpoint (skips the catalog).
    pub endpoint: Option<String>,
    pub cacert: Option<PathBuf>,
    pub insecure: bool,
    /// The clouds.yaml / secure.yaml files that were read.
    pub files: Vec<PathBuf>,
}

impl CloudConfig {
    /// Resolves `options` over `env` over clouds.yaml (see the module doc for the order).
    pub fn resolve(options: &CloudOptions, env: &Environment) -> Result<CloudConfig, ConfigError> {
        let env_layer = CloudOptions::from_env(env)?;
        let cloud = options.cloud.clone().or_else(|| env_layer.cloud.clone());
        let mut files = Vec::new();
        let yaml_layer = match &cloud {
            None => CloudOptions::default(),
            Some(name) => load_cloud(name, env, &mut files)?,
        };
        let merged = yaml_layer.overlay(&env_layer).overlay(options);
        let mut cfg = build(merged)?;
        cfg.cloud = cloud;
        cfg.files = files;
        Ok(cfg)
    }

    /// A one-line description for logs and manifests (never a secret).
    pub fn describe(&self) -> String {
        let who = match &self.auth {
            Auth::Password { auth_url, user, .. } => {
                format!("password auth as {} at {auth_url}", user_display(user))
            }
            Auth::ApplicationCredential {
                auth_url,
                credential,
                ..
            } => match credential {
                AppCredential::Id(id) => {
                    format!("application credential {id} at {auth_url}")
                }
                AppCredential::Name { name, user } => format!(
                    "application credential {name:?} of {} at {auth_url}",
                    user_display(user)
                ),
            },
            Auth::Token { auth_url, .. } => match auth_url {
                Some(u) => format!("token auth at {u}"),
                None => "pre-issued token".to_string(),
            },
            Auth::None => "no auth".to_string(),
        };
        let mut s = match &self.cloud {
            Some(c) => format!("cloud {c:?}: {who}"),
            None => who,
        };
        if let Some(e) = &self.endpoint {
            s.push_str(&format!(", image endpoint {e}"));
        }
        if let Some(r) = &self.region_name {
            s.push_str(&format!(", region {r}"));
        }
        s
    }
}

fn user_display(u: &UserRef) -> String {
    match u {
        UserRef::Id(id) => format!("user id {id}"),
        UserRef::Name { name, domain } => match domain {
            DomainRef::Id(d) => format!("{name:?} (domain id {d})"),
            DomainRef::Name(d) => format!("{name:?} (domain {d})"),
        },
    }
}

fn parse_bool(what: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::Invalid {
            what,
            value: v.to_string(),
            reason: "expected true or false".into(),
        }),
    }
}

fn check_url(what: &'static str, v: &str) -> Result<String, ConfigError> {
    match url::Url::parse(v) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {
            Ok(v.trim_end_matches('/').to_string())
        }
        Ok(_) => Err(ConfigError::Invalid {
            what,
            value: v.to_string(),
            reason: "must be an http:// or https:// URL with a host".into(),
        }),
        Err(e) => Err(ConfigError::Invalid {
            what,
            value: v.to_string(),
            reason: e.to_string(),
        }),
    }
}

/// Turns the merged layers into a [`CloudConfig`].
fn build(o: CloudOptions) -> Result<CloudConfig, ConfigError> {
    let has_creds = o.password.is_some()
        || o.token.is_some()
        || o.application_credential_secret.is_some()
        || o.username.is_some()
        || o.user_id.is_some();
    let kind = match o.auth_type.as_deref().map(str::to_ascii_lowercase) {
        Some(t) => match t.as_str() {
            "password" | "v3password" => "password",
            "v3applicationcredential" | "applicationcredential" | "application_credential" => {
                "v3applicationcredential"
            }
            "token" | "v3token" | "admin_token" => "token",
            "none" | "noauth" => "none",
            _ => {
                return Err(ConfigError::UnsupportedAuthType {
                    given: o.auth_type.clone().unwrap_or_default(),
                });
            }
        },
        None if o.application_credential_secret.is_some() => "v3applicationcredential",
        None if o.token.is_some() && o.password.is_none() => "token",
        None if o.endpoint.is_some() && o.auth_url.is_none() && !has_creds => "none",
        None => "password",
    };
    let default_domain = DomainRef::Id(o.default_domain.clone().unwrap_or("default".into()));
    let domain_of = |id: &Option<String>, name: &Option<String>| -> DomainRef {
        if let Some(id) = id {
            DomainRef::Id(id.clone())
        } else if let Some(n) = name {
            DomainRef::Name(n.clone())
        } else if let Some(id) = &o.domain_id {
            DomainRef::Id(id.clone())
        } else if let Some(n) = &o.domain_name {
            DomainRef::Name(n.clone())
        } else {
            default_domain.clone()
        }
    };
    let user = || -> Option<UserRef> {
        if let Some(id) = &o.user_id {
            Some(UserRef::Id(id.clone()))
        } else {
            o.username.as_ref().map(|n| UserRef::Name {
                name: n.clone(),
                domain: domain_of(&o.user_domain_id, &o.user_domain_name),
            })
        }
    };
    let scope = || -> Scope {
        if let Some(id) = &o.project_id {
            Scope::ProjectId(id.clone())
        } else if let Some(n) = &o.project_name {
            Scope::ProjectName {
                name: n.clone(),
                domain: domain_of(&o.project_domain_id, &o.project_domain_name),
            }
        } else if let Some(id) = &o.domain_id {
            Scope::Domain(DomainRef::Id(id.clone()))
        } else if let Some(n) = &o.domain_name {
            Scope::Domain(DomainRef::Name(n.clone()))
        } else {
            Scope::Unscoped
        }
    };
    let auth_url = |kind: &'static str| -> Result<String, ConfigError> {
        match &o.auth_url {
            Some(u) => check_url("auth_url", u),
            None => Err(ConfigError::Missing {
                auth_type: kind,
                missing: "auth_url",
                how: "auth.auth_url in clouds.yaml or OS_AUTH_URL",
            }),
        }
    };
    let auth = match kind {
        "password" => {
            let auth_url = auth_url("password")?;
            let user = user().ok_or(ConfigError::Missing {
                auth_type: "password",
                missing: "a user",
                how: "auth.username (or user_id) in clouds.yaml or OS_USERNAME / OS_USER_ID",
            })?;
            let password = o.password.clone().ok_or(ConfigError::Missing {
                auth_type: "password",
                missing: "a password",
                how: "auth.password in clouds.yaml / secure.yaml or OS_PASSWORD",
            })?;
            let scope = scope();
            if !matches!(scope, Scope::ProjectId(_) | Scope::ProjectName { .. }) {
                return Err(ConfigError::Missing {
                    auth_type: "password",
                    missing: "a project (Glance needs a project-scoped token)",
                    how: "auth.project_name or project_id in clouds.yaml or OS_PROJECT_NAME / OS_PROJECT_ID",
                });
            }
            Auth::Password {
                auth_url,
                user,
                password,
                scope,
            }
        }
        "v3applicationcredential" => {
            let auth_url = auth_url("v3applicationcredential")?;
            let secret = o
                .application_credential_secret
                .clone()
                .ok_or(ConfigError::Missing {
                    auth_type: "v3applicationcredential",
                    missing: "the application credential secret",
                    how: "auth.application_credential_secret or OS_APPLICATION_CREDENTIAL_SECRET",
                })?;
            let credential = if let Some(id) = &o.application_credential_id {
                AppCredential::Id(id.clone())
            } else if let Some(name) = &o.application_credential_name {
                AppCredential::Name {
                    name: name.clone(),
                    user: user().ok_or(ConfigError::Missing {
                        auth_type: "v3applicationcredential",
                        missing: "the credential's user (an application credential given by name)",
                        how: "auth.username / user_id or OS_USERNAME / OS_USER_ID, or use the credential id",
                    })?,
                }
            } else {
                return Err(ConfigError::Missing {
                    auth_type: "v3applicationcredential",
                    missing: "the application credential id or name",
                    how: "auth.application_credential_id or OS_APPLICATION_CREDENTIAL_ID",
                });
            };
            Auth::ApplicationCredential {
                auth_url,
                credential,
                secret,
            }
        }
        "token" => {
            let token = o.token.clone().ok_or(ConfigError::Missing {
                auth_type: "token",
                missing: "a token",
                how: "auth.token in clouds.yaml or OS_TOKEN",
            })?;
            let auth_url = match (&o.auth_url, &o.endpoint) {
                (Some(u), _) => Some(check_url("auth_url", u)?),
                (None, Some(_)) => None,
                (None, None) => {
                    return Err(ConfigError::Missing {
                        auth_type: "token",
                        missing: "an image endpoint or an auth_url (to look up the catalog)",
                        how: "OS_ENDPOINT / the endpoint option, or OS_AUTH_URL",
                    });
                }
            };
            Auth::Token {
                token,
                auth_url,
                scope: scope(),
            }
        }
        _ => {
            if o.endpoint.is_none() {
                return Err(ConfigError::Missing {
                    auth_type: "none",
                    missing: "an image endpoint",
                    how: "the endpoint option, OS_ENDPOINT or OS_IMAGE_URL (e.g. http://127.0.0.1:9292)",
                });
            }
            Auth::None
        }
    };
    let interface = match &o.interface {
        Some(i) => Interface::parse(i)?,
        None => Interface::Public,
    };
    let endpoint = match &o.endpoint {
        Some(e) => Some(check_url("endpoint", e)?),
        None => None,
    };
    Ok(CloudConfig {
        cloud: None,
        auth,
        region_name: o.region_name.clone(),
        interface,
        endpoint,
        cacert: o.cacert.clone(),
        insecure: o.insecure.unwrap_or(false),
        files: Vec::new(),
    })
}

// ---- clouds.yaml / secure.yaml ----

type YamlMap = serde_norway::Mapping;

fn find_file(
    env: &Environment,
    override_var: &str,
    stem: &str,
) -> Result<(Option<PathBuf>, Vec<PathBuf>), ConfigError> {
    let mut searched = Vec::new();
    if let Some(p) = env.get(override_var) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok((Some(p), vec![]));
        }
        searched.push(p);
    }
    for dir in env.search_dirs() {
        for ext in ["yaml", "yml"] {
            let p = dir.join(format!("{stem}.{ext}"));
            if p.is_file() {
                return Ok((Some(p), searched));
            }
            searched.push(p);
        }
    }
    Ok((None, searched))
}

/// clouds.yaml files are small; refuse anything absurd rather than read it whole.
const MAX_CONFIG_FILE: u64 = 4 << 20;

fn read_yaml(path: &Path) -> Result<YamlMap, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_CONFIG_FILE {
        return Err(ConfigError::Syntax {
            path: path.to_path_buf(),
            detail: format!("{len} bytes is larger than the {MAX_CONFIG_FILE} bytes allowed"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    let value: serde_norway::Value =
        serde_norway::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            // the location only: the error's own text could quote a line holding a password
            detail: match e.location() {
                Some(l) => format!("parse error at line {} column {}", l.line(), l.column()),
                None => "parse error".to_string(),
            },
        })?;
    match value {
        serde_norway::Value::Mapping(m) => Ok(m),
        serde_norway::Value::Null => Ok(YamlMap::new()),
        _ => Err(ConfigError::Syntax {
            path: path.to_path_buf(),
            detail: "the top level must be a map with a `clouds` key".into(),
        }),
    }
}

fn cloud_entry(doc: &YamlMap, name: &str) -> Option<YamlMap> {
    let clouds = doc.get("clouds")?.as_mapping()?;
    clouds.get(name)?.as_mapping().cloned()
}

fn cloud_names(doc: &YamlMap) -> Vec<String> {
    doc.get("clouds")
        .and_then(|c| c.as_mapping())
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Deep merge: maps merge key by key, anything else in `high` replaces `low`.
fn merge(low: &mut YamlMap, high: YamlMap) {
    for (k, v) in high {
        match (low.get_mut(&k), v) {
            (Some(serde_norway::Value::Mapping(l)), serde_norway::Value::Mapping(h)) => merge(l, h),
            (_, v) => {
                low.insert(k, v);
            }
        }
    }
}

fn display_paths(p: &[PathBuf]) -> String {
    p.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn load_cloud(
    name: &str,
    env: &Environment,
    files: &mut Vec<PathBuf>,
) -> Result<CloudOptions, ConfigError> {
    let (clouds_path, searched) = find_file(env, "OS_CLIENT_CONFIG_FILE", "clouds")?;
    let Some(clouds_path) = clouds_path else {
        return Err(ConfigError::NoCloudsFile {
            cloud: name.to_string(),
            searched: display_paths(&searched),
        });
    };
    let doc = read_yaml(&clouds_path)?;
    files.push(clouds_path.clone());
    let (secure_path, _) = find_file(env, "OS_CLIENT_SECURE_FILE", "secure")?;
    let secure = match &secure_path {
        Some(p) => {
            files.push(p.clone());
            Some(read_yaml(p)?)
        }
        None => None,
    };
    let mut entry = match cloud_entry(&doc, name) {
        Some(e) => e,
        // a cloud only in secure.yaml is unusual, but the CLI accepts it
        None => match secure.as_ref().and_then(|s| cloud_entry(s, name)) {
            Some(_) => YamlMap::new(),
            None => {
                let mut available = cloud_names(&doc);
                if available.is_empty() {
                    available.push("(none)".into());
                }
                return Err(ConfigError::UnknownCloud {
                    cloud: name.to_string(),
                    searched: clouds_path.display().to_string(),
                    available: available.join(", "),
                });
            }
        },
    };
    if let Some(s) = secure.as_ref().and_then(|s| cloud_entry(s, name)) {
        merge(&mut entry, s);
    }
    if entry.get("profile").is_some() {
        tracing::warn!(
            cloud = name,
            "clouds.yaml `profile` (vendor defaults) is not supported; set auth_url and region explicitly"
        );
    }
    options_from_yaml(&entry, &clouds_path)
}

/// A scalar as a string (ids can be written as numbers); None for null or missing.
fn scalar(m: &YamlMap, key: &str, path: &Path) -> Result<Option<String>, ConfigError> {
    // the CLI accepts `project-name` as well as `project_name`
    let dashed = key.replace('_', "-");
    let v = m.get(key).or_else(|| m.get(dashed.as_str()));
    match v {
        None | Some(serde_norway::Value::Null) => Ok(None),
        Some(serde_norway::Value::String(s)) => Ok((!s.is_empty()).then(|| s.clone())),
        Some(serde_norway::Value::Number(n)) => Ok(Some(n.to_string())),
        Some(serde_norway::Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(ConfigError::Syntax {
            path: path.to_path_buf(),
            detail: format!("`{key}` must be a single value"),
        }),
    }
}

fn options_from_yaml(entry: &YamlMap, path: &Path) -> Result<CloudOptions, ConfigError> {
    let empty = YamlMap::new();
    let auth = entry
        .get("auth")
        .and_then(|a| a.as_mapping())
        .unwrap_or(&empty);
    let a = |k: &str| scalar(auth, k, path);
    let t = |k: &str| scalar(entry, k, path);
    let insecure = match (t("insecure")?, t("verify")?) {
        (Some(i), _) => Some(parse_bool("insecure", &i)?),
        (None, Some(v)) => Some(!parse_bool("verify", &v)?),
        (None, None) => None,
    };
    // `regions: [a, b]` makes the first one the default, as in openstacksdk
    let first_region = match entry.get("regions").and_then(|r| r.as_sequence()) {
        Some(seq) => seq.first().and_then(|r| match r {
            serde_norway::Value::String(s) => Some(s.clone()),
            serde_norway::Value::Mapping(m) => m.get("name")?.as_str().map(str::to_string),
            _ => None,
        }),
        None => None,
    };
    Ok(CloudOptions {
        cloud: None,
        auth_type: t("auth_type")?,
        auth_url: a("auth_url")?,
        username: a("username")?,
        user_id: a("user_id")?,
        password: a("password")?.map(Secret::new),
        project_name: a("project_name")?.or(a("tenant_name")?),
        project_id: a("project_id")?.or(a("tenant_id")?),
        user_domain_name: a("user_domain_name")?,
        user_domain_id: a("user_domain_id")?,
        project_domain_name: a("project_domain_name")?,
        project_domain_id: a("project_domain_id")?,
        domain_name: a("domain_name")?,
        domain_id: a("domain_id")?,
        default_domain: a("default_domain")?.or(t("default_domain")?),
        token: a("token")?.map(Secret::new),
        application_credential_id: a("application_credential_id")?,
        application_credential_name: a("application_credential_name")?,
        application_credential_secret: a("application_credential_secret")?.map(Secret::new),
        region_name: t("region_name")?.or(first_region),
        interface: t("interface")?.or(t("endpoint_type")?),
        endpoint: t("image_endpoint_override")?.or(a("endpoint")?),
        cacert: t("cacert")?.map(PathBuf::from),
        insecure,
    })
}

#[cfg(test)]
mod tests;

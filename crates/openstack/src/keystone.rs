//! Keystone v3: getting a token (`POST /v3/auth/tokens`, the token in `X-Subject-Token`) and
//! picking a service's endpoint from the catalog that comes with it.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{AppCredential, Auth, DomainRef, Interface, Scope, UserRef};
use crate::error::Error;
use crate::http::{self, Caller};
use crate::secret::Secret;

/// A token and what Keystone said about it.
#[derive(Clone, Debug)]
pub(crate) struct Token {
    pub token: Secret,
    pub catalog: Vec<Service>,
    pub project_id: Option<String>,
    pub expires_at: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Service {
    #[serde(rename = "type")]
    pub service_type: String,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Endpoint {
    pub interface: String,
    pub url: String,
    #[serde(default)]
    pub region_id: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
}

#[derive(Deserialize)]
struct TokenBody {
    token: TokenInfo,
}

#[derive(Deserialize)]
struct TokenInfo {
    #[serde(default)]
    catalog: Vec<Service>,
    #[serde(default)]
    project: Option<IdOnly>,
    #[serde(default)]
    expires_at: Option<String>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

/// `http://host:5000`, `http://host:5000/`, `http://host/identity/v3/` → `…/v3`.
pub(crate) fn v3_base(auth_url: &str) -> String {
    let u = auth_url.trim_end_matches('/');
    if u.ends_with("/v3") {
        u.to_string()
    } else {
        format!("{u}/v3")
    }
}

fn domain_json(d: &DomainRef) -> Value {
    match d {
        DomainRef::Id(id) => json!({ "id": id }),
        DomainRef::Name(n) => json!({ "name": n }),
    }
}

fn user_json(u: &UserRef) -> Value {
    match u {
        UserRef::Id(id) => json!({ "id": id }),
        UserRef::Name { name, domain } => json!({ "name": name, "domain": domain_json(domain) }),
    }
}

fn scope_json(s: &Scope) -> Option<Value> {
    match s {
        Scope::ProjectId(id) => Some(json!({ "project": { "id": id } })),
        Scope::ProjectName { name, domain } => {
            Some(json!({ "project": { "name": name, "domain": domain_json(domain) } }))
        }
        Scope::Domain(d) => Some(json!({ "domain": domain_json(d) })),
        Scope::Unscoped => None,
    }
}

/// The request body for `auth`, or None when no Keystone call is needed.
pub(crate) fn request_body(auth: &Auth) -> Option<(String, Value, &'static str)> {
    let (url, identity, scope, credential) = match auth {
        Auth::Password {
            auth_url,
            user,
            password,
            scope,
        } => {
            let mut u = user_json(user);
            u["password"] = json!(password.expose());
            (
                auth_url,
                json!({ "methods": ["password"], "password": { "user": u } }),
                scope_json(scope),
                "user name, password, domain and project",
            )
        }
        Auth::ApplicationCredential {
            auth_url,
            credential,
            secret,
        } => {
            let c = match credential {
                AppCredential::Id(id) => json!({ "id": id, "secret": secret.expose() }),
                AppCredential::Name { name, user } => {
                    json!({ "name": name, "user": user_json(user), "secret": secret.expose() })
                }
            };
            (
                auth_url,
                json!({ "methods": ["application_credential"], "application_credential": c }),
                // an application credential carries its own project scope; Keystone refuses
                // an explicit one
                None,
                "application credential id/name and secret",
            )
        }
        Auth::Token {
            token,
            auth_url: Some(auth_url),
            scope,
        } => (
            auth_url,
            json!({ "methods": ["token"], "token": { "id": token.expose() } }),
            scope_json(scope),
            "token",
        ),
        Auth::Token { auth_url: None, .. } | Auth::None => return None,
    };
    let mut body = json!({ "auth": { "identity": identity } });
    if let Some(s) = scope {
        body["auth"]["scope"] = s;
    }
    Some((format!("{}/auth/tokens", v3_base(url)), body, credential))
}

/// Gets a token from Keystone for `auth`; None for auth that needs no Keystone call.
pub(crate) async fn authenticate(
    client: &reqwest::Client,
    auth: &Auth,
) -> Result<Option<Token>, Error> {
    let Some((url, body, credential)) = request_body(auth) else {
        return Ok(None);
    };
    let what = "Keystone authentication";
    tracing::debug!(url = %url, auth_type = auth.kind(), "requesting a Keystone token");
    let resp = client
        .post(&url)
        .header(reqwest::header::ACCEPT, "application/json")
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body).unwrap_or_default())
        .timeout(http::REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| http::transport(&url, e))?;
    if !resp.status().is_success() {
        let caller = Caller {
            service: "Keystone",
            credential,
            sent_token: matches!(auth, Auth::Token { .. }),
        };
        return Err(http::status_error(resp, what, &url, caller).await);
    }
    let token = resp
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(|s| Secret::new(s.to_string()))
        .ok_or_else(|| Error::InvalidResponse {
            what: what.to_string(),
            detail: "Keystone answered without an X-Subject-Token header (is auth_url a Keystone v3 endpoint?)"
                .into(),
        })?;
    let info: TokenBody = http::read_json(resp, what, &url).await?;
    Ok(Some(Token {
        token,
        catalog: info.token.catalog,
        project_id: info.token.project.map(|p| p.id),
        expires_at: info.token.expires_at,
    }))
}

/// Picks `service_type`'s endpoint for `interface` (and `region`, when given) from the catalog.
pub(crate) fn select_endpoint(
    catalog: &[Service],
    service_type: &'static str,
    interface: Interface,
    region: Option<&str>,
) -> Result<String, Error> {
    let matches_iface = |e: &&Endpoint| {
        e.interface
            .to_ascii_lowercase()
            .trim_end_matches("url")
            .eq(interface.as_str())
    };
    let in_region = |e: &&Endpoint| match region {
        None => true,
        Some(r) => e.region_id.as_deref() == Some(r) || e.region.as_deref() == Some(r),
    };
    let candidates: Vec<&Endpoint> = catalog
        .iter()
        .filter(|s| s.service_type == service_type)
        .flat_map(|s| s.endpoints.iter())
        .filter(matches_iface)
        .filter(in_region)
        .collect();
    match candidates.as_slice() {
        [] => Err(Error::NoEndpoint {
            service: service_type,
            interface: interface.as_str().to_string(),
            region: region
                .map(|r| format!(" in region {r}"))
                .unwrap_or_default(),
            available: describe_catalog(catalog, service_type),
        }),
        [one] => Ok(one.url.trim_end_matches('/').to_string()),
        many => {
            let mut regions: Vec<String> = many
                .iter()
                .map(|e| {
                    e.region_id
                        .clone()
                        .or_else(|| e.region.clone())
                        .unwrap_or_else(|| "(none)".into())
                })
                .collect();
            regions.sort();
            regions.dedup();
            if regions.len() > 1 {
                Err(Error::AmbiguousEndpoint {
                    service: service_type,
                    interface: interface.as_str().to_string(),
                    regions: regions.join(", "),
                })
            } else {
                // several endpoints in one region: Keystone's order, as keystoneauth does
                Ok(many[0].url.trim_end_matches('/').to_string())
            }
        }
    }
}

fn describe_catalog(catalog: &[Service], service_type: &str) -> String {
    let eps: Vec<String> = catalog
        .iter()
        .filter(|s| s.service_type == service_type)
        .flat_map(|s| s.endpoints.iter())
        .map(|e| {
            format!(
                "{} in {}",
                e.interface,
                e.region_id
                    .as_deref()
                    .or(e.region.as_deref())
                    .unwrap_or("no region")
            )
        })
        .collect();
    if eps.is_empty() {
        let types: Vec<&str> = catalog.iter().map(|s| s.service_type.as_str()).collect();
        if types.is_empty() {
            "no services at all (is the token scoped to a project?)".to_string()
        } else {
            format!("no {service_type} service, only {}", types.join(", "))
        }
    } else {
        format!("{service_type} endpoints {}", eps.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real `POST /v3/auth/tokens` answer from Keystone 30.0.0 (the peer in
    /// tools/peers/keystone.sh, after registering an image service with public, internal and
    /// admin endpoints in RegionOne and a public one in RegionTwo).
    const CAPTURED: &str = include_str!("../tests/data/keystone-token.json");

    fn catalog() -> Vec<Service> {
        let b: TokenBody = serde_json::from_str(CAPTURED).unwrap();
        b.token.catalog
    }

    #[test]
    fn parses_a_real_token_response() {
        let b: TokenBody = serde_json::from_str(CAPTURED).unwrap();
        assert_eq!(
            b.token.project.unwrap().id,
            "91d927ca0049403f8de412f71afe62d8"
        );
        assert_eq!(
            b.token.expires_at.as_deref(),
            Some("2026-12-02T00:28:22.000000Z")
        );
        assert_eq!(b.token.catalog.len(), 2);
    }

    #[test]
    fn picks_by_region_and_interface() {
        let c = catalog();
        assert_eq!(
            select_endpoint(&c, "image", Interface::Public, Some("RegionOne")).unwrap(),
            "http://127.0.0.1:9292"
        );
        assert_eq!(
            select_endpoint(&c, "image", Interface::Internal, Some("RegionOne")).unwrap(),
            "http://glance-internal.example:9292"
        );
        assert_eq!(
            select_endpoint(&c, "image", Interface::Public, Some("RegionTwo")).unwrap(),
            "https://image.region-two.example/v2"
        );
        // identity only in RegionOne: no region needed
        assert_eq!(
            select_endpoint(&c, "identity", Interface::Admin, None).unwrap(),
            "http://127.0.0.1:34705/v3"
        );
    }

    #[test]
    fn ambiguous_without_region() {
        let e = select_endpoint(&catalog(), "image", Interface::Public, None).unwrap_err();
        match e {
            Error::AmbiguousEndpoint { regions, .. } => assert_eq!(regions, "RegionOne, RegionTwo"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_endpoint_says_what_exists() {
        let e =
            select_endpoint(&catalog(), "image", Interface::Admin, Some("RegionTwo")).unwrap_err();
        match &e {
            Error::NoEndpoint { available, .. } => {
                assert!(available.contains("public in RegionTwo"), "{available}")
            }
            other => panic!("{other:?}"),
        }
        let e = select_endpoint(&catalog(), "volumev3", Interface::Public, None).unwrap_err();
        assert!(e.to_string().contains("only identity, image"), "{e}");
        let e = select_endpoint(&[], "image", Interface::Public, None).unwrap_err();
        assert!(e.to_string().contains("scoped to a project"), "{e}");
    }

    #[test]
    fn auth_bodies() {
        let auth = Auth::Password {
            auth_url: "http://k:5000".into(),
            user: UserRef::Name {
                name: "demo".into(),
                domain: DomainRef::Id("default".into()),
            },
            password: Secret::new("pw"),
            scope: Scope::ProjectName {
                name: "p".into(),
                domain: DomainRef::Name("Default".into()),
            },
        };
        let (url, body, _) = request_body(&auth).unwrap();
        assert_eq!(url, "http://k:5000/v3/auth/tokens");
        assert_eq!(
            body,
            json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
                "name": "demo", "domain": {"id": "default"}, "password": "pw"}}},
                "scope": {"project": {"name": "p", "domain": {"name": "Default"}}}}})
        );
        let auth = Auth::ApplicationCredential {
            auth_url: "http://k/identity/v3".into(),
            credential: AppCredential::Id("ac".into()),
            secret: Secret::new("s"),
        };
        let (url, body, _) = request_body(&auth).unwrap();
        assert_eq!(url, "http://k/identity/v3/auth/tokens");
        assert_eq!(
            body,
            json!({"auth": {"identity": {"methods": ["application_credential"],
                "application_credential": {"id": "ac", "secret": "s"}}}})
        );
        let auth = Auth::Token {
            token: Secret::new("t"),
            auth_url: None,
            scope: Scope::Unscoped,
        };
        assert!(request_body(&auth).is_none());
    }
}

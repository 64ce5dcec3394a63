//! The HTTP plumbing shared by the Keystone and Glance clients: the reqwest client (rustls,
//! cacert, timeouts), bounded response reads, error-body parsing, and the mapping of transport
//! failures and HTTP statuses to [`Error`] variants.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;

use crate::config::CloudConfig;
use crate::error::Error;

/// JSON answers (image lists, token responses with catalogs) stay well under this.
pub(crate) const MAX_JSON_BODY: usize = 8 << 20;
/// Error bodies are only read for their message.
const MAX_ERROR_BODY: usize = 64 << 10;
/// The longest remote message quoted in an error.
const MAX_MESSAGE: usize = 600;

/// Timeouts for everything but the upload body itself.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) fn client(cfg: &CloudConfig) -> Result<reqwest::Client, Error> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        // an upload can take long, but a connection that delivers nothing for this long is dead
        .read_timeout(Duration::from_secs(600))
        .user_agent(concat!("kiln-openstack/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &cfg.cacert {
        let pem = std::fs::read(path).map_err(|source| Error::LocalFile {
            what: "cannot read cacert",
            path: path.clone(),
            source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| Error::Tls {
            url: path.display().to_string(),
            detail: format!("cacert is not a PEM bundle: {e}"),
        })?;
        if certs.is_empty() {
            return Err(Error::Tls {
                url: path.display().to_string(),
                detail: "cacert holds no certificate".into(),
            });
        }
        // like the CLI's `verify=<bundle>`: trust exactly this bundle
        b = b.tls_certs_only(certs);
    }
    if cfg.insecure {
        tracing::warn!("TLS certificate verification is disabled (insecure)");
        b = b.tls_danger_accept_invalid_certs(true);
    }
    b.build().map_err(|e| Error::Tls {
        url: "(client setup)".into(),
        detail: e.to_string(),
    })
}

/// Classifies a reqwest failure: TLS, connect, or other transport trouble.
pub(crate) fn transport(url: &str, e: reqwest::Error) -> Error {
    let url = redact_url(url);
    if let Some(tls) = find_tls_error(&e) {
        return Error::Tls { url, detail: tls };
    }
    let detail = chain(&e);
    if e.is_connect() {
        Error::Connect { url, detail }
    } else {
        Error::Transport { url, detail }
    }
}

/// The full cause chain, since reqwest's top-level message alone ("error sending request")
/// says nothing.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// rustls errors travel inside `io::Error`s, whose `source()` skips the wrapped error, so
/// look inside each io::Error too.
fn find_tls_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(t) = c.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            if let Some(t) = inner.downcast_ref::<rustls::Error>() {
                return Some(t.to_string());
            }
            if let Some(t) = find_tls_error(inner) {
                return Some(t);
            }
        }
        cur = c.source();
    }
    None
}

/// URLs never carry credentials here, but strip any userinfo anyway before showing one.
pub(crate) fn redact_url(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut p) if !p.username().is_empty() || p.password().is_some() => {
            let _ = p.set_username("");
            let _ = p.set_password(None);
            p.to_string()
        }
        _ => u.to_string(),
    }
}

/// Reads a body up to `limit` bytes; more is an error, never buffered.
pub(crate) async fn read_bounded(
    resp: reqwest::Response,
    limit: usize,
    what: &str,
    url: &str,
) -> Result<Vec<u8>, Error> {
    if let Some(len) = resp.content_length()
        && len > limit as u64
    {
        return Err(Error::ResponseTooLarge {
            what: what.to_string(),
            limit,
        });
    }
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| transport(url, e))?;
        if out.len() + chunk.len() > limit {
            return Err(Error::ResponseTooLarge {
                what: what.to_string(),
                limit,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    what: &str,
    url: &str,
) -> Result<T, Error> {
    let body = read_bounded(resp, MAX_JSON_BODY, what, url).await?;
    serde_json::from_slice(&body).map_err(|e| Error::InvalidResponse {
        what: what.to_string(),
        detail: format!("not the JSON expected: {e}"),
    })
}

/// Which service answered, and which credential the request carried: shapes the 401 message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caller {
    pub service: &'static str,
    pub credential: &'static str,
    pub sent_token: bool,
}

/// Maps a non-success response to an error variant, with the server's message.
pub(crate) async fn status_error(
    resp: reqwest::Response,
    what: &str,
    url: &str,
    caller: Caller,
) -> Error {
    let status = resp.status();
    let message = match read_bounded(resp, MAX_ERROR_BODY, what, url).await {
        Ok(body) => error_message(&body),
        Err(_) => String::new(),
    };
    error_for(status, message, what, url, caller)
}

pub(crate) fn error_for(
    status: StatusCode,
    message: String,
    what: &str,
    url: &str,
    caller: Caller,
) -> Error {
    let what = what.to_string();
    let or_status = |m: String| {
        if m.is_empty() {
            status.canonical_reason().unwrap_or("").to_string()
        } else {
            m
        }
    };
    match status.as_u16() {
        401 => Error::AuthRejected {
            service: caller.service,
            url: redact_url(url),
            credential: caller.credential,
            message: or_status(message),
            expiry_hint: if caller.sent_token {
                ", or the token may have expired"
            } else {
                ""
            },
        },
        403 => Error::Forbidden {
            what,
            message: or_status(message),
        },
        404 => Error::NotFound {
            what,
            message: if message.is_empty() {
                String::new()
            } else {
                format!(": {message}")
            },
        },
        409 => Error::Conflict {
            what,
            message: or_status(message),
        },
        400 | 413 | 415 | 422 => Error::BadRequest {
            what,
            status: status.as_u16(),
            message: or_status(message),
        },
        s => Error::Api {
            what,
            service: caller.service,
            status: s,
            message: or_status(message),
        },
    }
}

/// The human part of an OpenStack error body: Glance's `{"message": …}`, Keystone's
/// `{"error": {"message": …}}`, or the text of an HTML page; cleaned and cut short.
pub(crate) fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let raw = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => v
            .get("message")
            .and_then(|m| m.as_str())
            .or_else(|| v.pointer("/error/message").and_then(|m| m.as_str()))
            .or_else(|| v.get("title").and_then(|m| m.as_str()))
            .map(str::to_string)
            .unwrap_or_else(|| text.to_string()),
        Err(_) => strip_tags(&text),
    };
    clean(&raw)
}

fn strip_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Drops Glance's `<br />` padding and the boilerplate sentence webob puts in front, collapses
/// whitespace, removes control characters, and cuts to a bounded length.
fn clean(s: &str) -> String {
    let s = s.replace("<br />", " ");
    let mut out = String::new();
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().filter(|c| !c.is_control()));
    }
    for boiler in [
        "The request media type application/octet-stream is not supported by this server. ",
        "The server could not comply with the request since it is either malformed or otherwise incorrect. ",
    ] {
        if let Some(rest) = out.strip_prefix(boiler) {
            out = rest.to_string();
        }
    }
    // the message is quoted mid-sentence ("…: <message>; check …")
    while out.ends_with('.') {
        out.pop();
    }
    if out.chars().count() > MAX_MESSAGE {
        out = out.chars().take(MAX_MESSAGE).collect::<String>() + "…";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glance_json_error_message() {
        let body = br#"{"message": "The request media type application/octet-stream is not supported by this server.\n<br /><br />\nImage disk_format vmdk does not match stream data qcow2", "code": "415 Unsupported Media Type", "title": "Unsupported Media Type"}"#;
        assert_eq!(
            error_message(body),
            "Image disk_format vmdk does not match stream data qcow2"
        );
    }

    #[test]
    fn keystone_json_error_message() {
        let body = br#"{"error":{"code":401,"message":"The request you have made requires authentication.","title":"Unauthorized"}}"#;
        assert_eq!(
            error_message(body),
            "The request you have made requires authentication"
        );
    }

    #[test]
    fn html_error_message() {
        let body = b"<html>\n <head>\n  <title>400 Bad Request</title>\n </head>\n <body>\n  <h1>400 Bad Request</h1>\n  Provided object does not match schema &#x27;image&#x27;<br /><br />\n </body>\n</html>";
        assert_eq!(
            error_message(body),
            "400 Bad Request 400 Bad Request Provided object does not match schema 'image'"
        );
    }

    #[test]
    fn long_messages_are_cut_and_control_chars_dropped() {
        let long = format!("{{\"message\": \"{}\\u001b[31m\"}}", "x".repeat(5000));
        let m = error_message(long.as_bytes());
        assert!(m.chars().count() <= MAX_MESSAGE + 1);
        assert!(!m.contains('\u{1b}'));
    }

    #[test]
    fn statuses_map_to_variants() {
        let c = Caller {
            service: "Glance",
            credential: "token",
            sent_token: true,
        };
        let e = |s: u16| error_for(StatusCode::from_u16(s).unwrap(), "m".into(), "w", "u", c);
        assert!(matches!(e(401), Error::AuthRejected { .. }));
        assert!(matches!(e(403), Error::Forbidden { .. }));
        assert!(matches!(e(404), Error::NotFound { .. }));
        assert!(matches!(e(409), Error::Conflict { .. }));
        assert!(matches!(e(400), Error::BadRequest { status: 400, .. }));
        assert!(matches!(e(415), Error::BadRequest { status: 415, .. }));
        assert!(matches!(e(503), Error::Api { status: 503, .. }));
        assert!(e(401).to_string().contains("token may have expired"));
    }

    #[test]
    fn userinfo_is_stripped_from_urls() {
        assert_eq!(
            redact_url("https://u:p@example.com/v3"),
            "https://example.com/v3"
        );
    }
}

//! Lenient reading of EC2's XML answers. Elements are matched by local name (namespaces
//! ignored), unknown elements are skipped, missing optional ones become `None`. DTDs are
//! refused, so no entity expansion. roxmltree types stay inside the crate.

use roxmltree::{Document, Node, ParsingOptions};

use crate::Tags;

/// At most this many XML nodes per answer, whatever the byte bound allows.
const NODES_LIMIT: u32 = 8_000_000;
/// Remote text copied into errors is cut to this many characters.
const MAX_MESSAGE_CHARS: usize = 1024;

pub(crate) fn parse(text: &str) -> Result<Document<'_>, String> {
    let opts = ParsingOptions {
        allow_dtd: false,
        nodes_limit: NODES_LIMIT,
        ..ParsingOptions::default()
    };
    Document::parse_with_options(text, opts).map_err(|e| format!("not well-formed XML: {e}"))
}

/// What an error body said. Both shapes are understood, and anything else that has an
/// `<Error><Code>` somewhere:
/// - EC2: `<Response><Errors><Error><Code/><Message/></Error></Errors><RequestID/></Response>`
/// - moto/IAM/STS: `<ErrorResponse><Errors><Error>...</Error></Errors><RequestId/></ErrorResponse>`
///   or `<ErrorResponse><Error><Type/><Code/><Message/></Error><RequestId/></ErrorResponse>`
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ErrorBody {
    pub code: Option<String>,
    pub message: Option<String>,
    pub request_id: Option<String>,
}

pub(crate) fn parse_error(body: &str) -> ErrorBody {
    let Ok(doc) = parse(body) else {
        return ErrorBody::default();
    };
    let root = doc.root_element();
    let error = root
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "Error");
    let request_id = root
        .descendants()
        .find(|n| {
            n.is_element() && matches!(n.tag_name().name(), "RequestID" | "RequestId" | "requestId")
        })
        .and_then(|n| n.text())
        .map(clean);
    ErrorBody {
        code: error.and_then(|e| e.text_of("Code")).map(|c| clean(&c)),
        message: error.and_then(|e| e.text_of("Message")).map(|m| clean(&m)),
        request_id,
    }
}

/// Remote text made safe to print: control characters replaced, length bounded.
pub(crate) fn clean(s: &str) -> String {
    let mut out: String = s
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE_CHARS)
        .collect();
    if s.trim().chars().count() > MAX_MESSAGE_CHARS {
        out.push('…');
    }
    out
}

/// Accessors on an element, by child local name.
pub(crate) trait NodeExt<'a, 'i: 'a>: Sized {
    fn child_named(&self, name: &str) -> Option<Node<'a, 'i>>;
    /// Trimmed text of the named child; `None` when absent or empty.
    fn text_of(&self, name: &str) -> Option<String>;
    /// The `<item>` children of the named list element (`<imagesSet><item/>...`).
    fn items(&self, set: &str) -> Vec<Node<'a, 'i>>;

    fn bool_of(&self, name: &str) -> Option<bool> {
        self.text_of(name).map(|t| t.eq_ignore_ascii_case("true"))
    }
    fn u64_of(&self, name: &str) -> Option<u64> {
        self.text_of(name).and_then(|t| t.parse().ok())
    }
    fn i64_of(&self, name: &str) -> Option<i64> {
        self.text_of(name).and_then(|t| t.parse().ok())
    }
    /// `<tagSet><item><key/><value/></item></tagSet>` as a map.
    fn tags(&self) -> Tags {
        let mut tags = Tags::new();
        for item in self.items("tagSet") {
            if let Some(k) = item.text_of("key") {
                tags.insert(k, item.text_of("value").unwrap_or_default());
            }
        }
        tags
    }
    /// A required child's text, or a description of what is missing.
    fn req(&self, name: &str) -> Result<String, String>;
}

impl<'a, 'i: 'a> NodeExt<'a, 'i> for Node<'a, 'i> {
    fn child_named(&self, name: &str) -> Option<Node<'a, 'i>> {
        self.children()
            .find(|c| c.is_element() && c.tag_name().name() == name)
    }

    fn text_of(&self, name: &str) -> Option<String> {
        let node = self.child_named(name)?;
        // Concatenate text children (entities and CDATA split them).
        let text: String = node
            .children()
            .filter(|c| c.is_text())
            .filter_map(|c| c.text())
            .collect();
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_string())
    }

    fn items(&self, set: &str) -> Vec<Node<'a, 'i>> {
        match self.child_named(set) {
            Some(s) => s
                .children()
                .filter(|c| c.is_element() && c.tag_name().name() == "item")
                .collect(),
            None => Vec::new(),
        }
    }

    fn req(&self, name: &str) -> Result<String, String> {
        self.text_of(name)
            .ok_or_else(|| format!("<{}> has no <{name}>", self.tag_name().name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec2_error_shape() {
        // As real EC2 answers (captured shape from the EC2 API reference "Error responses").
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>InvalidInstanceID.NotFound</Code><Message>The instance ID 'i-1a2b3c4d' does not exist</Message></Error></Errors><RequestID>ea966190-f9aa-478e-9ede-example</RequestID></Response>"#;
        assert_eq!(
            parse_error(body),
            ErrorBody {
                code: Some("InvalidInstanceID.NotFound".into()),
                message: Some("The instance ID 'i-1a2b3c4d' does not exist".into()),
                request_id: Some("ea966190-f9aa-478e-9ede-example".into()),
            }
        );
    }

    #[test]
    fn moto_auth_error_shape() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<ErrorResponse><Errors><Error><Code>AuthFailure</Code><Message>AWS was not able to validate the provided access credentials</Message></Error></Errors><RequestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</RequestId></ErrorResponse>"#;
        let e = parse_error(body);
        assert_eq!(e.code.as_deref(), Some("AuthFailure"));
        assert_eq!(
            e.request_id.as_deref(),
            Some("7a62c49f-347e-4fc4-9331-6e8eEXAMPLE")
        );
    }

    #[test]
    fn iam_error_shape_with_namespace() {
        let body = r#"<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><Error><Type>Sender</Type><Code>InvalidClientTokenId</Code><Message>The security token included in the request is invalid.</Message></Error><RequestId>abc</RequestId></ErrorResponse>"#;
        let e = parse_error(body);
        assert_eq!(e.code.as_deref(), Some("InvalidClientTokenId"));
        assert_eq!(e.request_id.as_deref(), Some("abc"));
    }

    #[test]
    fn garbage_is_not_an_error_body() {
        assert_eq!(parse_error("<html><h1>503</h1>"), ErrorBody::default());
        assert_eq!(parse_error(""), ErrorBody::default());
        assert_eq!(parse_error("\u{0}\u{1}binary"), ErrorBody::default());
        // A DTD (entity expansion) is refused outright.
        let bomb = r#"<!DOCTYPE r [<!ENTITY a "aaaa">]><Response><Errors><Error><Code>&a;</Code></Error></Errors></Response>"#;
        assert_eq!(parse_error(bomb), ErrorBody::default());
    }

    #[test]
    fn lenient_access() {
        let doc = parse(
            r#"<R xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><x>  1 </x><unknown><deep/></unknown>
               <tagSet><item><key>a</key><value>b</value></item><item><key>k</key></item></tagSet>
               <flag>true</flag><t>a&amp;b</t><empty/></R>"#,
        )
        .unwrap();
        let r = doc.root_element();
        assert_eq!(r.u64_of("x"), Some(1));
        assert_eq!(r.bool_of("flag"), Some(true));
        assert_eq!(r.text_of("t").as_deref(), Some("a&b"));
        assert_eq!(r.text_of("empty"), None);
        assert_eq!(r.text_of("missing"), None);
        let tags = r.tags();
        assert_eq!(tags.get("a").map(String::as_str), Some("b"));
        assert_eq!(tags.get("k").map(String::as_str), Some(""));
        assert!(r.req("nope").is_err());
    }

    #[test]
    fn clean_bounds_and_strips() {
        assert_eq!(clean(" a\nb\u{7}c "), "a b c");
        let long = "x".repeat(5000);
        assert_eq!(clean(&long).chars().count(), MAX_MESSAGE_CHARS + 1);
    }
}

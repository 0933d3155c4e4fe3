//! The headers every response gets: uvicorn's `--header NAME:VALUE` (repeatable), `--server-header`
//! and `--date-header`. The workers apply them (`worker::response_headers`); here they are read and
//! checked.

use hyper::header::{HeaderName, HeaderValue};

use super::kinds::{Form, Kind, wrong_type};

/// The value of the `Server` header `--server-header` adds.
pub const SERVER: &str = "hyperfork";

/// Headers hyper writes itself from the response's body and the connection's state: an extra header
/// of these names would corrupt the framing.
const HYPER_OWNS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

/// What each response gets besides the app's own headers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseHeaders {
    /// `--header`: added unless the app's response has a header of that name.
    pub extra: Vec<(HeaderName, HeaderValue)>,
    /// `--server-header`: `Server: hyperfork`, unless the app or `--header` sets one.
    pub server: bool,
    /// `--date-header`: hyper's `Date`, unless the app sets one.
    pub date: bool,
}

/// Parses one `NAME:VALUE` header (blanks around either part are dropped).
pub fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), String> {
    let Some((name, value)) = text.split_once(':') else {
        return Err(format!(
            "expected NAME:VALUE, e.g. X-Frame-Options:DENY, got {text:?}"
        ));
    };
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{:?} is not a header name (in {text:?})", name.trim()))?;
    if HYPER_OWNS.contains(&name.as_str()) {
        return Err(format!(
            "{name} is written by the server from the response itself; it cannot be set for every \
             response"
        ));
    }
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("{:?} is not a header value (in {text:?})", value.trim()))?;
    Ok((name, value))
}

/// `--header`: the flag repeats; in the environment, headers are separated by newlines, or without a
/// newline by blanks (as click splits uvicorn's `UVICORN_HEADERS`); TOML: an array of strings.
pub(crate) struct Headers;

impl Kind for Headers {
    type Value = Vec<(HeaderName, HeaderValue)>;
    const EXPECTED: &'static str = "NAME:VALUE headers separated by newlines or blanks";
    const FORM: Form = Form::Repeated;
    fn parse(text: &str) -> Result<Self::Value, String> {
        let items: Vec<&str> = if text.contains('\n') {
            text.lines().filter(|l| !l.trim().is_empty()).collect()
        } else {
            text.split_whitespace().collect()
        };
        items.into_iter().map(parse_header).collect()
    }
    fn from_flag(texts: &[String]) -> Result<Self::Value, String> {
        texts.iter().map(|t| parse_header(t)).collect()
    }
    fn from_toml(value: &toml::Value) -> Result<Self::Value, String> {
        let toml::Value::Array(items) = value else {
            return Err(wrong_type(value, "an array of \"NAME: VALUE\" strings"));
        };
        items
            .iter()
            .map(|item| match item {
                toml::Value::String(s) => parse_header(s),
                other => Err(wrong_type(other, "a \"NAME: VALUE\" string")),
            })
            .collect()
    }
    fn value_parser() -> clap::builder::ValueParser {
        clap::builder::ValueParser::new(|s: &str| parse_header(s).map(|_| s.to_string()))
    }
    fn show(value: &Self::Value) -> serde_json::Value {
        serde_json::Value::Array(
            value
                .iter()
                .map(|(n, v)| {
                    serde_json::Value::String(format!("{n}: {}", v.to_str().unwrap_or("(binary)")))
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_as_uvicorn_writes_them() {
        let (n, v) = parse_header("X-Frame-Options: DENY").unwrap();
        assert_eq!(
            (n.as_str(), v.to_str().unwrap()),
            ("x-frame-options", "DENY")
        );
        let (n, v) = parse_header("x-a:b:c").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("x-a", "b:c"));
        assert!(parse_header("no-colon").unwrap_err().contains("NAME:VALUE"));
        assert!(parse_header("bad name: x").is_err());
        assert!(
            parse_header("Content-Length: 3")
                .unwrap_err()
                .contains("content-length")
        );
        // click splits UVICORN_HEADERS on blanks; a newline keeps values with blanks.
        assert_eq!(Headers::parse("X-A:1 X-B:2").unwrap().len(), 2);
        let h = Headers::parse("Cache-Control: no-cache, no-store\nX-B: 2\n").unwrap();
        assert_eq!(h[0].1.to_str().unwrap(), "no-cache, no-store");
    }
}

//! The access log and the proxy headers, per request: who the client is ([`client`], uvicorn's rule
//! for `X-Forwarded-For`), and the access-log [`Record`] carried by the response body (`guard::Tracked`)
//! until the body is sent or dropped, then written as one INFO line under `hyperfork::access` (by
//! [`access_sink`](super::access_sink), in batches).
//!
//! With the access log off, a request costs no allocation here: the body wrapper holds `None`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};

use crate::app::{ClientAddr, ForwardedProto};
use crate::config::access::{AccessFormat, AccessSettings, Atom};

/// The peer of a connection, captured at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    /// A TCP peer.
    Tcp(SocketAddr),
    /// A unix-socket peer.
    Unix,
}

/// Who sent `req`, and the scheme a trusted proxy named: the peer, unless it is trusted
/// (`peer_trusted`) and proxy headers are on and it sent `X-Forwarded-For`.
pub(crate) fn client<T>(
    req: &Request<T>,
    peer: Peer,
    peer_trusted: bool,
    settings: &AccessSettings,
) -> (ClientAddr, Option<ForwardedProto>) {
    let own = match peer {
        Peer::Tcp(addr) => ClientAddr::Peer(addr),
        Peer::Unix => ClientAddr::Unix,
    };
    if !(settings.proxy_headers && peer_trusted) {
        return (own, None);
    }
    let proto = req
        .headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .map(|v| ForwardedProto(v.trim().to_ascii_lowercase()));
    let client = forwarded_for(req.headers(), settings).map_or(own, ClientAddr::Forwarded);
    (client, proto)
}

/// The rightmost untrusted hop of `X-Forwarded-For` (every header line, in order), or its leftmost
/// when every hop is trusted; `None` without the header.
fn forwarded_for(headers: &HeaderMap, settings: &AccessSettings) -> Option<String> {
    let mut hops: Vec<&str> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else { continue };
        hops.extend(text.split(',').map(str::trim).filter(|h| !h.is_empty()));
    }
    let trusted = |hop: &str| {
        hop.parse::<IpAddr>()
            .is_ok_and(|ip| settings.trusted.contains(ip))
    };
    hops.iter()
        .rev()
        .find(|hop| !trusted(hop))
        .or(hops.first())
        .map(|hop| (*hop).to_string())
}

/// One request's access-log line in the making.
pub(crate) struct Record {
    format: Arc<AccessFormat>,
    start: Instant,
    client: ClientAddr,
    method: Method,
    uri: Uri,
    version: Version,
    request_headers: Vec<Option<HeaderValue>>,
    status: StatusCode,
    response_headers: Vec<Option<HeaderValue>>,
    bytes: u64,
}

impl Record {
    /// Starts the record of `req`, from `client`.
    pub(crate) fn new<T>(
        format: &Arc<AccessFormat>,
        req: &Request<T>,
        client: ClientAddr,
    ) -> Record {
        Record {
            start: Instant::now(),
            client,
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            request_headers: headers(req.headers(), &format.request_headers),
            status: StatusCode::OK,
            response_headers: Vec::new(),
            bytes: 0,
            format: format.clone(),
        }
    }

    /// Notes the response's status and the headers the line shows.
    pub(crate) fn respond<T>(&mut self, resp: &Response<T>) {
        self.status = resp.status();
        self.response_headers = headers(resp.headers(), &self.format.response_headers);
    }

    /// Counts `n` more body bytes sent.
    pub(crate) fn sent(&mut self, n: usize) {
        self.bytes += n as u64;
    }

    /// Writes the line.
    pub(crate) fn emit(&self) {
        let line = Line {
            record: self,
            elapsed: self.start.elapsed(),
        };
        crate::worker::access_sink::write(line);
    }

    /// One atom's text, the request having taken `elapsed`.
    fn atom(&self, atom: &Atom, elapsed: Duration, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match atom {
            Atom::Literal(text) => f.write_str(text),
            Atom::Client => write!(f, "{}", self.client),
            Atom::Dash => f.write_str("-"),
            Atom::RequestLine => self.request_line(f),
            Atom::Method => write!(f, "{}", self.method),
            Atom::Path => f.write_str(self.uri.path()),
            Atom::Query => f.write_str(self.uri.query().unwrap_or("")),
            Atom::Protocol => write!(f, "{:?}", self.version),
            Atom::Status => write!(f, "{}", self.status.as_u16()),
            Atom::Bytes if self.bytes == 0 => f.write_str("-"),
            Atom::Bytes | Atom::BytesZero => write!(f, "{}", self.bytes),
            Atom::Micros => write!(f, "{}", elapsed.as_micros()),
            Atom::Millis => write!(f, "{}", elapsed.as_millis()),
            Atom::Seconds => write!(f, "{}", elapsed.as_secs()),
            Atom::DecimalSeconds => write!(f, "{:.6}", elapsed.as_secs_f64()),
            Atom::ShortDuration => write!(f, "{:.1}ms", elapsed.as_secs_f64() * 1000.0),
            Atom::Pid => write!(f, "{}", std::process::id()),
            Atom::RequestHeader(i) => header(f, self.request_headers.get(*i)),
            Atom::ResponseHeader(i) => header(f, self.response_headers.get(*i)),
        }
    }

    /// The request line, e.g. `GET /a?b=1 HTTP/1.1`, the target as the client wrote it.
    fn request_line(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.uri.path_and_query() {
            Some(pq) if self.uri.scheme().is_none() => {
                write!(f, "{} {} {:?}", self.method, pq, self.version)
            }
            _ => write!(f, "{} {} {:?}", self.method, self.uri, self.version),
        }
    }
}

/// A finished record, as its line (the clock read once).
struct Line<'a> {
    record: &'a Record,
    elapsed: Duration,
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.record;
        r.format
            .atoms
            .iter()
            .try_for_each(|a| r.atom(a, self.elapsed, f))
    }
}

/// A header's value, `-` when absent.
fn header(f: &mut fmt::Formatter<'_>, value: Option<&Option<HeaderValue>>) -> fmt::Result {
    match value.and_then(Option::as_ref) {
        Some(v) => f.write_str(&String::from_utf8_lossy(v.as_bytes())),
        None => f.write_str("-"),
    }
}

/// The values of `names` in `map` (the first of each).
fn headers(map: &HeaderMap, names: &[String]) -> Vec<Option<HeaderValue>> {
    names.iter().map(|n| map.get(n.as_str()).cloned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::access::Trusted;

    fn settings(trusted: &str) -> AccessSettings {
        AccessSettings {
            format: None,
            proxy_headers: true,
            trusted: Trusted::parse(trusted).unwrap(),
        }
    }

    fn xff(values: &[&str], trusted: &str) -> Option<String> {
        let mut map = HeaderMap::new();
        for v in values {
            map.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        forwarded_for(&map, &settings(trusted))
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop() {
        assert_eq!(
            xff(&["203.0.113.7"], "127.0.0.1").as_deref(),
            Some("203.0.113.7")
        );
        assert_eq!(
            xff(&["1.1.1.1, 203.0.113.7, 10.0.0.2"], "10.0.0.0/8").as_deref(),
            Some("203.0.113.7")
        );
        assert_eq!(
            xff(&["1.1.1.1", "10.0.0.2"], "10.0.0.0/8").as_deref(),
            Some("1.1.1.1")
        );
        assert_eq!(
            xff(&["10.0.0.1, 10.0.0.2"], "*").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(xff(&[], "*"), None);
    }

    #[test]
    fn an_untrusted_peer_is_the_client() {
        let req = Request::builder()
            .header("x-forwarded-for", "203.0.113.7")
            .body(())
            .unwrap();
        let peer = Peer::Tcp("127.0.0.1:4000".parse().unwrap());
        let (c, _) = client(&req, peer, false, &settings("10.0.0.1"));
        assert_eq!(c, ClientAddr::Peer("127.0.0.1:4000".parse().unwrap()));
        let (c, _) = client(&req, peer, true, &settings("127.0.0.1"));
        assert_eq!(c, ClientAddr::Forwarded("203.0.113.7".into()));
    }
}

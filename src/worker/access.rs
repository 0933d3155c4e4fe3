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

use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};

use crate::app::{ClientAddr, ForwardedProto};
use crate::config::access::{AccessFormat, AccessSettings, Atom};

/// Header names looked up on every request from a trusted proxy, made once: a `&str` key is parsed
/// into a name at each lookup.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

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
        .get(&X_FORWARDED_PROTO)
        .and_then(|v| v.to_str().ok())
        .map(|v| ForwardedProto(v.trim().to_ascii_lowercase()));
    let client = forwarded_for(req.headers(), settings).map_or(own, ClientAddr::Forwarded);
    (client, proto)
}

/// The rightmost untrusted hop of `X-Forwarded-For` (every header line, in order), or its leftmost
/// when every hop is trusted; `None` without the header.
fn forwarded_for(headers: &HeaderMap, settings: &AccessSettings) -> Option<String> {
    let mut hops: Vec<&str> = Vec::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
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
    /// Starts the record of `req`, from `client`, its header having arrived at `start` (the clock read
    /// once per request, shared with the request counters).
    pub(crate) fn new<T>(
        format: &Arc<AccessFormat>,
        req: &Request<T>,
        client: ClientAddr,
        start: Instant,
    ) -> Record {
        Record {
            start,
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
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.start);
        crate::worker::access_sink::write(now, |out| self.write_line(elapsed, out));
    }

    /// Appends the line to `out`, the request having taken `elapsed`: the atoms of the default line
    /// as bytes, straight (the common case costs no formatting machinery), the others through
    /// [`Record::atom`].
    fn write_line(&self, elapsed: Duration, out: &mut Vec<u8>) {
        for atom in &self.format.atoms {
            match atom {
                Atom::Literal(text) => out.extend_from_slice(text.as_bytes()),
                Atom::Dash => out.push(b'-'),
                Atom::Client => match &self.client {
                    ClientAddr::Peer(SocketAddr::V4(addr)) => {
                        for (i, octet) in addr.ip().octets().into_iter().enumerate() {
                            if i > 0 {
                                out.push(b'.');
                            }
                            push_decimal(out, u64::from(octet));
                        }
                        out.push(b':');
                        push_decimal(out, u64::from(addr.port()));
                    }
                    _ => self.push_atom(atom, elapsed, out),
                },
                Atom::RequestLine => match (self.uri.path_and_query(), protocol(self.version)) {
                    (Some(pq), Some(protocol)) if self.uri.scheme().is_none() => {
                        out.extend_from_slice(self.method.as_str().as_bytes());
                        out.push(b' ');
                        out.extend_from_slice(pq.as_str().as_bytes());
                        out.push(b' ');
                        out.extend_from_slice(protocol.as_bytes());
                    }
                    _ => self.push_atom(atom, elapsed, out),
                },
                Atom::Status => push_decimal(out, u64::from(self.status.as_u16())),
                Atom::Bytes if self.bytes == 0 => out.push(b'-'),
                Atom::Bytes | Atom::BytesZero => push_decimal(out, self.bytes),
                Atom::ShortDuration => push_short_duration(out, elapsed),
                _ => self.push_atom(atom, elapsed, out),
            }
        }
    }

    /// Appends one atom's text through its `Display`.
    fn push_atom(&self, atom: &Atom, elapsed: Duration, out: &mut Vec<u8>) {
        let text = AtomText {
            record: self,
            atom,
            elapsed,
        };
        // Writing into a `Vec` cannot fail.
        let _ = std::io::Write::write_fmt(out, format_args!("{text}"));
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

/// One atom of a finished record, as text.
struct AtomText<'a> {
    record: &'a Record,
    atom: &'a Atom,
    elapsed: Duration,
}

impl fmt::Display for AtomText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.record.atom(self.atom, self.elapsed, f)
    }
}

/// The protocol as the request line shows it (`format!("{version:?}")`), for the common versions.
fn protocol(version: Version) -> Option<&'static str> {
    match version {
        Version::HTTP_09 => Some("HTTP/0.9"),
        Version::HTTP_10 => Some("HTTP/1.0"),
        Version::HTTP_11 => Some("HTTP/1.1"),
        Version::HTTP_2 => Some("HTTP/2.0"),
        Version::HTTP_3 => Some("HTTP/3.0"),
        _ => None,
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends `elapsed` in milliseconds with one decimal and `ms`, rounded as `format!("{:.1}ms")`
/// rounds the milliseconds as a float (to the nearest, a tie to even).
fn push_short_duration(out: &mut Vec<u8>, elapsed: Duration) {
    let nanos = elapsed.as_nanos();
    let (mut tenths, rest) = (nanos / 100_000, nanos % 100_000);
    if rest > 50_000 || (rest == 50_000 && tenths % 2 == 1) {
        tenths += 1;
    }
    push_decimal(out, u64::try_from(tenths / 10).unwrap_or(u64::MAX));
    out.push(b'.');
    out.push(b'0' + (tenths % 10) as u8);
    out.extend_from_slice(b"ms");
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

    /// `record`'s line through the straight path and through `Display` only.
    fn both_ways(record: &Record, elapsed: Duration) -> (String, String) {
        let mut fast = Vec::new();
        record.write_line(elapsed, &mut fast);
        let mut slow = Vec::new();
        for atom in &record.format.atoms {
            record.push_atom(atom, elapsed, &mut slow);
        }
        (
            String::from_utf8(fast).unwrap(),
            String::from_utf8(slow).unwrap(),
        )
    }

    #[test]
    fn the_straight_line_is_the_display_line() {
        let all = "%(h)s %(l)s %(r)s %(m)s %(U)s %(q)s %(H)s %(s)s %(b)s %(B)s %(D)s %(M)s %(T)s \
                   %(L)s %(f)s %(a)s %({x-a}i)s %({x-b}o)s %%";
        for format in [
            Arc::new(AccessFormat::default_line()),
            Arc::new(AccessFormat::parse(all).unwrap()),
        ] {
            for (target, version, client) in [
                (
                    "/a?b=1",
                    Version::HTTP_11,
                    ClientAddr::Peer("10.1.2.3:4567".parse().unwrap()),
                ),
                (
                    "/",
                    Version::HTTP_2,
                    ClientAddr::Peer("[::1]:80".parse().unwrap()),
                ),
                (
                    "http://h/x",
                    Version::HTTP_10,
                    ClientAddr::Forwarded("203.0.113.7".into()),
                ),
                ("*", Version::HTTP_11, ClientAddr::Unix),
            ] {
                let req = Request::builder()
                    .method(if target == "*" { "OPTIONS" } else { "GET" })
                    .uri(target)
                    .version(version)
                    .header("x-a", "probe")
                    .body(())
                    .unwrap();
                let mut record = Record::new(&format, &req, client, Instant::now());
                let resp = Response::builder().status(404).body(()).unwrap();
                record.respond(&resp);
                for (bytes, micros) in [(0, 0), (13, 449), (12345, 1_250_001), (1, 99_999_999)] {
                    record.bytes = bytes;
                    let (fast, slow) = both_ways(&record, Duration::from_micros(micros));
                    assert_eq!(fast, slow);
                }
            }
        }
    }

    #[test]
    fn short_durations_round_as_the_float_format_does() {
        let mut n: u64 = 1;
        for _ in 0..100_000 {
            // A spread of durations from nanoseconds to hours (xorshift).
            n ^= n << 13;
            n ^= n >> 7;
            n ^= n << 17;
            let nanos = n % 10u64.pow(3 + n as u32 % 10);
            if nanos % 100_000 == 50_000 {
                continue;
            }
            let d = Duration::from_nanos(nanos);
            let mut out = Vec::new();
            push_short_duration(&mut out, d);
            let expected = format!("{:.1}ms", d.as_secs_f64() * 1000.0);
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{nanos} ns");
        }
    }

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

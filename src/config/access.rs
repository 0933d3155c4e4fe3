//! The access-log and proxy-header settings: the access-log format (gunicorn's `%(x)s` atoms, parsed
//! once at start into [`AccessFormat`]) and the proxies trusted to say who the client is
//! ([`Trusted`], from `--forwarded-allow-ips`).

use std::net::IpAddr;
use std::sync::Arc;

use super::kinds::Kind;

/// One piece of an access-log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Atom {
    /// Text written as it is.
    Literal(String),
    /// `%(h)s`: the client address.
    Client,
    /// `%(l)s` and `%(u)s`: always `-`.
    Dash,
    /// `%(r)s`: the request line, e.g. `GET /a?b=1 HTTP/1.1`.
    RequestLine,
    /// `%(m)s`: the method.
    Method,
    /// `%(U)s`: the path.
    Path,
    /// `%(q)s`: the query, without `?`.
    Query,
    /// `%(H)s`: the protocol, e.g. `HTTP/1.1`.
    Protocol,
    /// `%(s)s`: the status code.
    Status,
    /// `%(b)s`: body bytes sent, `-` if none.
    Bytes,
    /// `%(B)s`: body bytes sent, `0` if none.
    BytesZero,
    /// `%(D)s`: the duration in microseconds.
    Micros,
    /// `%(M)s`: the duration in whole milliseconds.
    Millis,
    /// `%(T)s`: the duration in whole seconds.
    Seconds,
    /// `%(L)s`: the duration in seconds, with six decimals.
    DecimalSeconds,
    /// The duration in milliseconds with one decimal and `ms` (the default line only).
    ShortDuration,
    /// `%(p)s`: the worker's pid.
    Pid,
    /// `%({name}i)s`, `%(f)s` (referer), `%(a)s` (user agent): a request header, `-` if absent.
    RequestHeader(usize),
    /// `%({name}o)s`: a response header, `-` if absent.
    ResponseHeader(usize),
}

/// A parsed access-log format: its atoms, and the header names its header atoms index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessFormat {
    /// The line, piece by piece.
    pub atoms: Vec<Atom>,
    /// Request headers the line shows (lower case), indexed by [`Atom::RequestHeader`].
    pub request_headers: Vec<String>,
    /// Response headers the line shows (lower case), indexed by [`Atom::ResponseHeader`].
    pub response_headers: Vec<String>,
}

impl AccessFormat {
    /// The default line: `127.0.0.1:51234 - "GET /users HTTP/1.1" 200 13 0.4ms`.
    pub fn default_line() -> AccessFormat {
        let lit = |s: &str| Atom::Literal(s.to_string());
        AccessFormat {
            atoms: vec![
                Atom::Client,
                lit(" - \""),
                Atom::RequestLine,
                lit("\" "),
                Atom::Status,
                lit(" "),
                Atom::Bytes,
                lit(" "),
                Atom::ShortDuration,
            ],
            request_headers: Vec::new(),
            response_headers: Vec::new(),
        }
    }

    /// Parses gunicorn's `%(x)s` atoms; `%%` is a `%`. The error names the bad atom.
    pub fn parse(text: &str) -> Result<AccessFormat, String> {
        let mut format = AccessFormat {
            atoms: Vec::new(),
            request_headers: Vec::new(),
            response_headers: Vec::new(),
        };
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('%') {
            literal.push_str(&rest[..at]);
            rest = &rest[at..];
            if let Some(after) = rest.strip_prefix("%%") {
                literal.push('%');
                rest = after;
                continue;
            }
            let Some(end) = rest.find(")s").filter(|_| rest.starts_with("%(")) else {
                let bad: String = rest.chars().take(8).collect();
                return Err(format!(
                    "bad atom {bad:?}: expected %(NAME)s, e.g. %(h)s, or %% for a %"
                ));
            };
            let name = &rest[2..end];
            let atom = format.atom(name).ok_or_else(|| {
                format!("unknown atom %({name})s (see docs/operations.md#access-log)")
            })?;
            if !literal.is_empty() {
                format
                    .atoms
                    .push(Atom::Literal(std::mem::take(&mut literal)));
            }
            format.atoms.push(atom);
            rest = &rest[end + 2..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            format.atoms.push(Atom::Literal(literal));
        }
        Ok(format)
    }

    /// The format written back with `%(x)s` atoms (`plan` shows it).
    pub fn to_text(&self) -> String {
        self.atoms
            .iter()
            .map(|a| match a {
                Atom::Literal(l) => l.replace('%', "%%"),
                Atom::Client => "%(h)s".into(),
                Atom::Dash => "%(l)s".into(),
                Atom::RequestLine => "%(r)s".into(),
                Atom::Method => "%(m)s".into(),
                Atom::Path => "%(U)s".into(),
                Atom::Query => "%(q)s".into(),
                Atom::Protocol => "%(H)s".into(),
                Atom::Status => "%(s)s".into(),
                Atom::Bytes => "%(b)s".into(),
                Atom::BytesZero => "%(B)s".into(),
                Atom::Micros => "%(D)s".into(),
                Atom::Millis => "%(M)s".into(),
                Atom::Seconds => "%(T)s".into(),
                Atom::DecimalSeconds => "%(L)s".into(),
                Atom::ShortDuration => "0.4ms".into(),
                Atom::Pid => "%(p)s".into(),
                Atom::RequestHeader(i) => format!("%({{{}}}i)s", self.request_headers[*i]),
                Atom::ResponseHeader(i) => format!("%({{{}}}o)s", self.response_headers[*i]),
            })
            .collect()
    }

    /// The atom called `name`, registering the header it shows.
    fn atom(&mut self, name: &str) -> Option<Atom> {
        if let Some(inner) = name.strip_prefix('{') {
            let (header, which) = inner.split_once('}')?;
            let header = header.to_ascii_lowercase();
            hyper::header::HeaderName::from_bytes(header.as_bytes()).ok()?;
            return match which {
                "i" => Some(Atom::RequestHeader(index(
                    &mut self.request_headers,
                    header,
                ))),
                "o" => Some(Atom::ResponseHeader(index(
                    &mut self.response_headers,
                    header,
                ))),
                _ => None,
            };
        }
        Some(match name {
            "h" => Atom::Client,
            "l" | "u" => Atom::Dash,
            "r" => Atom::RequestLine,
            "m" => Atom::Method,
            "U" => Atom::Path,
            "q" => Atom::Query,
            "H" => Atom::Protocol,
            "s" => Atom::Status,
            "b" => Atom::Bytes,
            "B" => Atom::BytesZero,
            "D" => Atom::Micros,
            "M" => Atom::Millis,
            "T" => Atom::Seconds,
            "L" => Atom::DecimalSeconds,
            "p" => Atom::Pid,
            "f" => Atom::RequestHeader(index(&mut self.request_headers, "referer".into())),
            "a" => Atom::RequestHeader(index(&mut self.request_headers, "user-agent".into())),
            _ => return None,
        })
    }
}

/// The position of `name` in `names`, added if missing.
fn index(names: &mut Vec<String>, name: String) -> usize {
    match names.iter().position(|n| *n == name) {
        Some(i) => i,
        None => {
            names.push(name);
            names.len() - 1
        }
    }
}

/// `--access-log-format`: a gunicorn-style format, parsed when the settings are read.
pub(crate) struct LogFormat;

impl Kind for LogFormat {
    type Value = Arc<AccessFormat>;
    const EXPECTED: &'static str = "a format of %(x)s atoms such as '%(h)s \"%(r)s\" %(s)s'";
    fn parse(text: &str) -> Result<Arc<AccessFormat>, String> {
        AccessFormat::parse(text).map(Arc::new)
    }
    fn show(value: &Arc<AccessFormat>) -> serde_json::Value {
        serde_json::Value::String(value.to_text())
    }
}

/// The peers trusted to set `X-Forwarded-For` and `X-Forwarded-Proto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trusted {
    /// `*`: every peer.
    pub any: bool,
    /// Networks: an address and a prefix length.
    pub nets: Vec<(IpAddr, u8)>,
}

impl Trusted {
    /// Parses a comma-separated list of IPs, CIDRs and `*`.
    pub fn parse(text: &str) -> Result<Trusted, String> {
        let mut trusted = Trusted {
            any: false,
            nets: Vec::new(),
        };
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "*" {
                trusted.any = true;
                continue;
            }
            let (ip, len) = item.split_once('/').unwrap_or((item, ""));
            let bad = || format!("{item:?} is not an IP address, a CIDR (10.0.0.0/8) or *");
            let ip: IpAddr = ip.parse().map_err(|_| bad())?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = match len {
                "" => max,
                n => n.parse::<u8>().ok().filter(|n| *n <= max).ok_or_else(bad)?,
            };
            trusted.nets.push((ip, len));
        }
        Ok(trusted)
    }

    /// Whether `ip` is trusted (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        if self.any {
            return true;
        }
        let ip = ip.to_canonical();
        self.nets.iter().any(|(net, len)| in_net(ip, *net, *len))
    }
}

/// Whether `ip` is in `net/len`.
fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net.to_canonical()) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// `--forwarded-allow-ips`: comma-separated IPs, CIDRs and `*`.
pub(crate) struct TrustedIps;

impl Kind for TrustedIps {
    type Value = Trusted;
    const EXPECTED: &'static str = "comma-separated IP addresses, CIDRs or *";
    fn parse(text: &str) -> Result<Trusted, String> {
        Trusted::parse(text)
    }
    fn show(value: &Trusted) -> serde_json::Value {
        let mut items: Vec<String> = value
            .nets
            .iter()
            .map(|(ip, len)| match (ip, len) {
                (std::net::IpAddr::V4(_), 32) | (std::net::IpAddr::V6(_), 128) => ip.to_string(),
                _ => format!("{ip}/{len}"),
            })
            .collect();
        if value.any {
            items.insert(0, "*".into());
        }
        serde_json::Value::String(items.join(","))
    }
}

/// What a worker needs for the access log and the proxy headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessSettings {
    /// The access-log line; `None`: no access log.
    pub format: Option<Arc<AccessFormat>>,
    /// Whether trusted peers' `X-Forwarded-For` and `X-Forwarded-Proto` are believed.
    pub proxy_headers: bool,
    /// The peers trusted to send them.
    pub trusted: Trusted,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_into_atoms() {
        let f =
            AccessFormat::parse("%(h)s %(r)s %(s)s %({User-Agent}i)s 100%% %({x-id}o)s").unwrap();
        assert_eq!(f.request_headers, ["user-agent"]);
        assert_eq!(f.response_headers, ["x-id"]);
        assert_eq!(f.atoms[0], Atom::Client);
        assert!(f.atoms.contains(&Atom::Literal(" 100% ".into())));
        let e = AccessFormat::parse("%(h)s %(z)s").unwrap_err();
        assert!(e.contains("%(z)s"), "{e}");
        assert!(AccessFormat::parse("%(h").is_err());
        assert!(AccessFormat::parse("50%").is_err());
    }

    #[test]
    fn trust_lists_match_ips_and_networks() {
        let t = Trusted::parse("127.0.0.1, 10.0.0.0/8,::1").unwrap();
        assert!(t.contains("127.0.0.1".parse().unwrap()));
        assert!(t.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(t.contains("10.20.30.40".parse().unwrap()));
        assert!(t.contains("::1".parse().unwrap()));
        assert!(!t.contains("127.0.0.2".parse().unwrap()));
        assert!(
            Trusted::parse("*")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Trusted::parse("10.0.0.0/33").is_err());
        assert!(Trusted::parse("nope").is_err());
    }
}

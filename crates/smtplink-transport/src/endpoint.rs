//! Endpoint URLs: `scheme://host:port/path?k=v` or `scheme:opaque`.
//!
//! The parser is hand-written because the forms smtplink needs are a small,
//! strict subset of URLs (no user info, no fragments, no host
//! percent-encoding) and because `exec:` must keep its text verbatim, which a
//! general URL library would normalise.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use crate::TransportError;

/// A parsed endpoint URL: which transport to use and where to go with it.
///
/// Two shapes are accepted:
///
/// * hierarchical, `scheme://authority/path?query`: `tcp://127.0.0.1:2525`,
///   `tcp://[::1]:2525`, `mem://relay`, `serial:///dev/ttyUSB0?baud=9600`.
///   The authority is an optional host (a name, an IPv4 address or an IPv6
///   address in brackets) and an optional `:port`. The path is kept verbatim;
///   query keys and values are percent-decoded (`%2F` is `/`; `+` stays `+`).
/// * opaque, `scheme:anything`: `exec:ssh gw nc localhost 25`, `stdio:`.
///   Everything after the first `:` is kept verbatim.
///
/// The scheme is matched case-insensitively and stored lower-case. Whether a
/// scheme is known, and whether a given transport needs a host, a port or a
/// path, is not the parser's business: [`Registry`](crate::Registry) and the
/// transports check that, with helpers such as [`Endpoint::host_and_port`].
///
/// `Display` writes a canonical form that parses back to an equal `Endpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    scheme: String,
    body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Body {
    Hierarchical {
        /// A name, an IPv4 address, or an IPv6 address without brackets
        /// (canonical text). A name never contains ':', so a ':' here means
        /// IPv6 and Display must bracket it.
        host: Option<String>,
        port: Option<u16>,
        /// Empty, or starting with '/'; never contains '?'.
        path: String,
        /// Decoded, in the order written; keys are unique and non-empty.
        query: Vec<(String, String)>,
    },
    Opaque(String),
}

impl Endpoint {
    /// Parses endpoint text; the same as [`str::parse`].
    pub fn parse(text: &str) -> Result<Endpoint, TransportError> {
        parse_endpoint(text).map_err(|reason| TransportError::InvalidEndpoint {
            endpoint: text.to_owned(),
            reason,
        })
    }

    /// The scheme, lower-case, e.g. `"tcp"` or `"x25+serial"`.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The host, if the endpoint has an authority with a host in it.
    ///
    /// IPv6 addresses come without brackets (`"::1"`), ready for
    /// [`IpAddr::from_str`].
    pub fn host(&self) -> Option<&str> {
        match &self.body {
            Body::Hierarchical { host, .. } => host.as_deref(),
            Body::Opaque(_) => None,
        }
    }

    /// The host as an IP address, if it is one rather than a name.
    pub fn host_ip(&self) -> Option<IpAddr> {
        self.host().and_then(|host| host.parse().ok())
    }

    /// The port, if the authority has one.
    pub fn port(&self) -> Option<u16> {
        match &self.body {
            Body::Hierarchical { port, .. } => *port,
            Body::Opaque(_) => None,
        }
    }

    /// The path: empty, or starting with `/` (e.g. `/dev/ttyUSB0`). Empty for
    /// opaque endpoints.
    pub fn path(&self) -> &str {
        match &self.body {
            Body::Hierarchical { path, .. } => path,
            Body::Opaque(_) => "",
        }
    }

    /// For an opaque endpoint (`exec:...`, `stdio:`), everything after the
    /// scheme's `:`, verbatim. `None` for hierarchical endpoints.
    pub fn opaque(&self) -> Option<&str> {
        match &self.body {
            Body::Opaque(text) => Some(text),
            Body::Hierarchical { .. } => None,
        }
    }

    /// True for the `scheme:anything` shape.
    pub fn is_opaque(&self) -> bool {
        matches!(self.body, Body::Opaque(_))
    }

    /// The decoded value of query parameter `key` (`""` for a bare `?key`).
    pub fn query(&self, key: &str) -> Option<&str> {
        self.query_pairs()
            .find(|(k, _)| *k == key)
            .map(|(_, value)| value)
    }

    /// All query parameters, decoded, in the order they were written.
    pub fn query_pairs(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let pairs: &[(String, String)] = match &self.body {
            Body::Hierarchical { query, .. } => query,
            Body::Opaque(_) => &[],
        };
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Query parameter `key` parsed as a `T`; `Ok(None)` when it is absent.
    ///
    /// The error names the key and the bad value, e.g.
    /// `invalid endpoint "serial:///dev/ttyS0?baud=fast": bad value 'fast' for baud: ...`.
    pub fn query_as<T>(&self, key: &str) -> Result<Option<T>, TransportError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.query(key) {
            None => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|err| {
                TransportError::invalid_endpoint(
                    self,
                    format!("bad value '{text}' for {key}: {err}"),
                )
            }),
        }
    }

    /// Fails if the query has a key outside `allowed`, so that a misspelt
    /// option is reported instead of silently ignored.
    pub fn ensure_query_keys(&self, allowed: &[&str]) -> Result<(), TransportError> {
        match self.query_pairs().find(|(key, _)| !allowed.contains(key)) {
            None => Ok(()),
            Some((key, _)) if allowed.is_empty() => Err(TransportError::invalid_endpoint(
                self,
                format!("unknown option '{key}' ({} takes no options)", self.scheme),
            )),
            Some((key, _)) => Err(TransportError::invalid_endpoint(
                self,
                format!(
                    "unknown option '{key}' ({} takes: {})",
                    self.scheme,
                    allowed.join(", ")
                ),
            )),
        }
    }

    /// The host and port, or an error naming whichever is missing
    /// (e.g. `invalid endpoint "tcp://host": missing port`).
    pub fn host_and_port(&self) -> Result<(&str, u16), TransportError> {
        if self.is_opaque() {
            return Err(TransportError::invalid_endpoint(
                self,
                format!("expected {}://host:port", self.scheme),
            ));
        }
        let host = self
            .host()
            .ok_or_else(|| TransportError::invalid_endpoint(self, "missing host"))?;
        let port = self
            .port()
            .ok_or_else(|| TransportError::invalid_endpoint(self, "missing port"))?;
        Ok((host, port))
    }

    /// `"host:port"`, with IPv6 hosts in brackets (`"[::1]:25"`), for
    /// socket APIs and resolvers. Fails like [`Endpoint::host_and_port`].
    pub fn socket_addr_str(&self) -> Result<String, TransportError> {
        let (host, port) = self.host_and_port()?;
        if host.contains(':') {
            Ok(format!("[{host}]:{port}"))
        } else {
            Ok(format!("{host}:{port}"))
        }
    }

    /// This endpoint with its host and port replaced by `addr`; scheme, path
    /// and query are kept. Listeners use it to report the address they
    /// actually bound (e.g. the port chosen for `:0`).
    pub fn with_socket_addr(&self, addr: SocketAddr) -> Endpoint {
        let (path, query) = match &self.body {
            Body::Hierarchical { path, query, .. } => (path.clone(), query.clone()),
            Body::Opaque(_) => (String::new(), Vec::new()),
        };
        Endpoint {
            scheme: self.scheme.clone(),
            body: Body::Hierarchical {
                // Ipv6Addr's Display never includes a scope id, so this stays
                // something the parser accepts.
                host: Some(addr.ip().to_string()),
                port: Some(addr.port()),
                path,
                query,
            },
        }
    }
}

impl FromStr for Endpoint {
    type Err = TransportError;

    fn from_str(text: &str) -> Result<Endpoint, TransportError> {
        Endpoint::parse(text)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.scheme)?;
        f.write_str(":")?;
        match &self.body {
            Body::Opaque(text) => f.write_str(text),
            Body::Hierarchical {
                host,
                port,
                path,
                query,
            } => {
                f.write_str("//")?;
                match host {
                    Some(host) if host.contains(':') => write!(f, "[{host}]")?,
                    Some(host) => f.write_str(host)?,
                    None => {}
                }
                if let Some(port) = port {
                    write!(f, ":{port}")?;
                }
                f.write_str(path)?;
                for (index, (key, value)) in query.iter().enumerate() {
                    f.write_str(if index == 0 { "?" } else { "&" })?;
                    write_encoded(f, key)?;
                    f.write_str("=")?;
                    write_encoded(f, value)?;
                }
                Ok(())
            }
        }
    }
}

/// Percent-encodes only what the parser would otherwise misread or reject,
/// so canonical text stays readable (`?dev=/dev/ttyS0`, not `%2Fdev%2F...`).
fn write_encoded(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    for ch in text.chars() {
        let needs_escape =
            ch.is_control() || ch.is_whitespace() || matches!(ch, '%' | '&' | '=' | '#');
        if needs_escape {
            let mut buf = [0u8; 4];
            for byte in ch.encode_utf8(&mut buf).bytes() {
                write!(f, "%{byte:02X}")?;
            }
        } else {
            write!(f, "{ch}")?;
        }
    }
    Ok(())
}

fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    if text.is_empty() {
        return Err("empty endpoint".into());
    }
    // Endpoints end up in logs and Received: headers; a stray CR/LF or other
    // control character is always a mistake and sometimes an injection.
    if let Some((index, ch)) = text.char_indices().find(|(_, ch)| ch.is_control()) {
        return Err(format!("control character {ch:?} at byte {index}"));
    }
    let Some((scheme, rest)) = text.split_once(':') else {
        return Err("missing scheme (expected e.g. tcp://host:port or mem://name)".into());
    };
    let scheme = parse_scheme(scheme)?;
    let body = match rest.strip_prefix("//") {
        Some(after_slashes) => parse_hierarchical(after_slashes)?,
        None => Body::Opaque(rest.to_owned()),
    };
    Ok(Endpoint { scheme, body })
}

fn parse_scheme(scheme: &str) -> Result<String, String> {
    let mut chars = scheme.chars();
    match chars.next() {
        None => return Err("missing scheme before ':'".into()),
        Some(first) if !first.is_ascii_alphabetic() => {
            return Err(format!("scheme '{scheme}' must start with a letter"));
        }
        Some(_) => {}
    }
    if let Some(bad) =
        chars.find(|ch| !(ch.is_ascii_alphanumeric() || matches!(ch, '+' | '.' | '-')))
    {
        return Err(format!("bad character '{bad}' in scheme '{scheme}'"));
    }
    Ok(scheme.to_ascii_lowercase())
}

fn parse_hierarchical(text: &str) -> Result<Body, String> {
    let authority_end = text.find(['/', '?']).unwrap_or(text.len());
    let (authority, rest) = text.split_at(authority_end);
    let (host, port) = parse_authority(authority)?;
    let (path, query_text) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    let query = match query_text {
        Some(query_text) => parse_query(query_text)?,
        None => Vec::new(),
    };
    Ok(Body::Hierarchical {
        host,
        port,
        path: path.to_owned(),
        query,
    })
}

fn parse_authority(authority: &str) -> Result<(Option<String>, Option<u16>), String> {
    if authority.contains('@') {
        return Err("user info ('user@') is not supported".into());
    }
    let (host, port_text) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((inside, after)) = bracketed.split_once(']') else {
            return Err(format!("unclosed '[' in '{authority}'"));
        };
        let address: Ipv6Addr = inside
            .parse()
            .map_err(|_| format!("bad IPv6 address '{inside}'"))?;
        let port_text = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port_text) => Some(port_text),
                None => return Err(format!("unexpected '{after}' after ']'")),
            },
        };
        (Some(address.to_string()), port_text)
    } else {
        let (host, port_text) = match authority.split_once(':') {
            Some((host, port_text)) => (host, Some(port_text)),
            None => (authority, None),
        };
        if port_text.is_some_and(|port_text| port_text.contains(':')) {
            return Err(format!(
                "too many ':' in '{authority}' (an IPv6 address goes in brackets: [::1]:25)"
            ));
        }
        if let Some(bad) = host
            .chars()
            .find(|ch| !(ch.is_ascii_alphanumeric() || matches!(ch, '-' | '.' | '_' | '~')))
        {
            return Err(format!("bad character '{bad}' in host '{host}'"));
        }
        let host = (!host.is_empty()).then(|| host.to_owned());
        (host, port_text)
    };
    let port = match port_text {
        None => None,
        Some("") => return Err("missing port after ':'".into()),
        Some(port_text) => Some(parse_port(port_text)?),
    };
    Ok((host, port))
}

fn parse_port(text: &str) -> Result<u16, String> {
    if !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(format!("bad port '{text}'"));
    }
    text.parse()
        .map_err(|_| format!("bad port '{text}' (must be 0 to 65535)"))
}

fn parse_query(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    // Empty segments ("a=1&&b=2", a trailing '&') carry nothing; skipping
    // them is what every URL library does.
    for segment in text.split('&').filter(|segment| !segment.is_empty()) {
        let (key, value) = segment.split_once('=').unwrap_or((segment, ""));
        let key = percent_decode(key)?;
        let value = percent_decode(value)?;
        if key.is_empty() {
            return Err(format!("empty option name in '{segment}'"));
        }
        // A repeated key is almost always a typo or a pasted-together
        // endpoint; picking one silently would hide it.
        if pairs.iter().any(|(existing, _)| *existing == key) {
            return Err(format!("option '{key}' given twice"));
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

fn percent_decode(text: &str) -> Result<String, String> {
    if !text.contains('%') {
        return Ok(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let escape = bytes.get(index + 1..index + 3);
            let value = escape
                .and_then(|pair| std::str::from_utf8(pair).ok())
                .filter(|pair| pair.bytes().all(|byte| byte.is_ascii_hexdigit()))
                .and_then(|pair| u8::from_str_radix(pair, 16).ok());
            let Some(value) = value else {
                let shown: String = text[index..].chars().take(3).collect();
                return Err(format!("bad percent-escape '{shown}'"));
            };
            decoded.push(value);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| format!("'{text}' is not UTF-8 once percent-decoded"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Endpoint {
        text.parse()
            .unwrap_or_else(|err| panic!("{text} should parse: {err}"))
    }

    fn reason(text: &str) -> String {
        match Endpoint::parse(text) {
            Err(TransportError::InvalidEndpoint { endpoint, reason }) => {
                assert_eq!(endpoint, text);
                reason
            }
            other => panic!("{text} should not parse, got {other:?}"),
        }
    }

    #[test]
    fn tcp_ipv4() {
        let ep = parse("tcp://127.0.0.1:2525");
        assert_eq!(ep.scheme(), "tcp");
        assert_eq!(ep.host(), Some("127.0.0.1"));
        assert_eq!(ep.host_ip(), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(ep.port(), Some(2525));
        assert_eq!(ep.path(), "");
        assert_eq!(ep.opaque(), None);
        assert_eq!(ep.socket_addr_str().unwrap(), "127.0.0.1:2525");
        assert_eq!(ep.to_string(), "tcp://127.0.0.1:2525");
    }

    #[test]
    fn tcp_ipv6_in_brackets() {
        let ep = parse("tcp://[::1]:2525");
        assert_eq!(ep.host(), Some("::1"));
        assert_eq!(ep.host_ip(), Some(IpAddr::from(Ipv6Addr::LOCALHOST)));
        assert_eq!(ep.port(), Some(2525));
        assert_eq!(ep.socket_addr_str().unwrap(), "[::1]:2525");
        assert_eq!(ep.to_string(), "tcp://[::1]:2525");
        // IPv6 text is canonicalised, so equal addresses give equal endpoints.
        assert_eq!(parse("tcp://[0:0::0:1]:2525"), ep);
    }

    #[test]
    fn tcp_host_name() {
        let ep = parse("tcp://localhost:25");
        assert_eq!(ep.host(), Some("localhost"));
        assert_eq!(ep.host_ip(), None);
        assert_eq!(ep.host_and_port().unwrap(), ("localhost", 25));
    }

    #[test]
    fn scheme_is_case_insensitive() {
        let ep = parse("TCP://Mail.Example:25");
        assert_eq!(ep.scheme(), "tcp");
        // Host names are left as written; the resolver ignores case anyway.
        assert_eq!(ep.host(), Some("Mail.Example"));
        assert_eq!(ep.to_string(), "tcp://Mail.Example:25");
    }

    #[test]
    fn mem_name() {
        let ep = parse("mem://name");
        assert_eq!(ep.scheme(), "mem");
        assert_eq!(ep.host(), Some("name"));
        assert_eq!(ep.port(), None);
        assert_eq!(ep.path(), "");
        assert_eq!(ep.query_pairs().count(), 0);
    }

    #[test]
    fn serial_path_and_query() {
        let ep = parse("serial:///dev/ttyUSB0?baud=9600&flow=none");
        assert_eq!(ep.scheme(), "serial");
        assert_eq!(ep.host(), None);
        assert_eq!(ep.port(), None);
        assert_eq!(ep.path(), "/dev/ttyUSB0");
        assert_eq!(ep.query("baud"), Some("9600"));
        assert_eq!(ep.query("flow"), Some("none"));
        assert_eq!(ep.query("parity"), None);
        assert_eq!(ep.query_as::<u32>("baud").unwrap(), Some(9600));
        assert_eq!(ep.query_as::<u32>("parity").unwrap(), None);
        assert_eq!(
            ep.query_pairs().collect::<Vec<_>>(),
            vec![("baud", "9600"), ("flow", "none")]
        );
        assert_eq!(ep.to_string(), "serial:///dev/ttyUSB0?baud=9600&flow=none");
        assert!(ep.host_and_port().is_err());
    }

    #[test]
    fn x25_forms() {
        let ep = parse("x25+tcp://relay.example:2525");
        assert_eq!(ep.scheme(), "x25+tcp");
        assert_eq!(ep.socket_addr_str().unwrap(), "relay.example:2525");

        let ep = parse("x25+serial:///dev/ttyS0?baud=9600&channel=smtp");
        assert_eq!(ep.scheme(), "x25+serial");
        assert_eq!(ep.path(), "/dev/ttyS0");
        assert_eq!(ep.query("channel"), Some("smtp"));
    }

    #[test]
    fn exec_is_opaque_and_verbatim() {
        let ep = parse("exec:ssh gw nc localhost 25");
        assert_eq!(ep.scheme(), "exec");
        assert!(ep.is_opaque());
        assert_eq!(ep.opaque(), Some("ssh gw nc localhost 25"));
        assert_eq!(ep.host(), None);
        assert_eq!(ep.query("x"), None);
        assert_eq!(ep.to_string(), "exec:ssh gw nc localhost 25");

        // '?', '%' and '//' later on are not special in the opaque form.
        let ep = parse("exec:sh -c 'nc host 25 ?a=%zz //x'");
        assert_eq!(ep.opaque(), Some("sh -c 'nc host 25 ?a=%zz //x'"));
    }

    #[test]
    fn stdio_is_empty_opaque() {
        let ep = parse("stdio:");
        assert_eq!(ep.scheme(), "stdio");
        assert_eq!(ep.opaque(), Some(""));
        assert_eq!(ep.to_string(), "stdio:");
    }

    #[test]
    fn query_values_are_percent_decoded_and_reencoded() {
        let ep = parse("serial:///dev/ttyS0?init=AT%26F%20E0&note=caf%C3%A9&flag");
        assert_eq!(ep.query("init"), Some("AT&F E0"));
        assert_eq!(ep.query("note"), Some("café"));
        assert_eq!(ep.query("flag"), Some(""));
        let text = ep.to_string();
        assert_eq!(text, "serial:///dev/ttyS0?init=AT%26F%20E0&note=café&flag=");
        assert_eq!(parse(&text), ep);
    }

    #[test]
    fn empty_query_segments_are_skipped() {
        let ep = parse("mem://x?a=1&&b=2&");
        assert_eq!(
            ep.query_pairs().collect::<Vec<_>>(),
            vec![("a", "1"), ("b", "2")]
        );
        assert_eq!(parse("mem://x?").to_string(), "mem://x");
    }

    #[test]
    fn empty_authority_and_port_only() {
        let ep = parse("mem://");
        assert_eq!(ep.host(), None);
        assert_eq!(ep.to_string(), "mem://");
        let ep = parse("tcp://:25");
        assert_eq!(ep.host(), None);
        assert_eq!(ep.port(), Some(25));
        let err = ep.host_and_port().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid endpoint \"tcp://:25\": missing host"
        );
    }

    #[test]
    fn missing_port_is_named() {
        let ep = parse("tcp://host");
        let err = ep.socket_addr_str().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid endpoint \"tcp://host\": missing port"
        );
    }

    #[test]
    fn unknown_scheme_still_parses() {
        let ep = parse("carrier-pigeon://loft:1");
        assert_eq!(ep.scheme(), "carrier-pigeon");
    }

    #[test]
    fn with_socket_addr_replaces_host_and_port_only() {
        let ep = parse("tcp://localhost:0?x=1");
        let bound = ep.with_socket_addr("[::1]:4000".parse().unwrap());
        assert_eq!(bound.to_string(), "tcp://[::1]:4000?x=1");
        let bound = ep.with_socket_addr("127.0.0.1:4001".parse().unwrap());
        assert_eq!(bound.to_string(), "tcp://127.0.0.1:4001?x=1");
    }

    #[test]
    fn ensure_query_keys_names_the_stray_key() {
        let ep = parse("serial:///dev/ttyS0?baud=1&fow=none");
        let err = ep.ensure_query_keys(&["baud", "flow"]).unwrap_err();
        assert!(err
            .to_string()
            .contains("unknown option 'fow' (serial takes: baud, flow)"));
        assert!(ep.ensure_query_keys(&["baud", "fow"]).is_ok());
        let err = parse("mem://x?a=1").ensure_query_keys(&[]).unwrap_err();
        assert!(err.to_string().contains("mem takes no options"), "{err}");
    }

    #[test]
    fn query_as_names_key_and_value() {
        let ep = parse("serial:///dev/ttyS0?baud=fast");
        let err = ep.query_as::<u32>("baud").unwrap_err();
        assert!(
            err.to_string().contains("bad value 'fast' for baud"),
            "{err}"
        );
    }

    #[test]
    fn bad_input() {
        assert_eq!(reason(""), "empty endpoint");
        assert!(reason("localhost").starts_with("missing scheme"));
        assert!(reason("127.0.0.1").starts_with("missing scheme"));
        assert_eq!(reason(":25"), "missing scheme before ':'");
        assert_eq!(
            reason("1tcp://h:1"),
            "scheme '1tcp' must start with a letter"
        );
        assert_eq!(reason("t_cp://h:1"), "bad character '_' in scheme 't_cp'");
        assert_eq!(reason("tcp://host:x"), "bad port 'x'");
        assert_eq!(reason("tcp://host:-1"), "bad port '-1'");
        assert_eq!(
            reason("tcp://host:65536"),
            "bad port '65536' (must be 0 to 65535)"
        );
        assert_eq!(reason("tcp://host:"), "missing port after ':'");
        assert_eq!(reason("tcp://[::1:25"), "unclosed '[' in '[::1:25'");
        assert_eq!(reason("tcp://[::1]x"), "unexpected 'x' after ']'");
        assert_eq!(reason("tcp://[nope]:25"), "bad IPv6 address 'nope'");
        assert!(reason("tcp://::1:25").contains("IPv6 address goes in brackets"));
        assert_eq!(
            reason("tcp://user@host:25"),
            "user info ('user@') is not supported"
        );
        assert_eq!(
            reason("tcp://ho st:25"),
            "bad character ' ' in host 'ho st'"
        );
        assert_eq!(reason("mem://x?a=%zz"), "bad percent-escape '%zz'");
        assert_eq!(reason("mem://x?a=%4"), "bad percent-escape '%4'");
        assert_eq!(
            reason("mem://x?a=%ff"),
            "'%ff' is not UTF-8 once percent-decoded"
        );
        assert_eq!(reason("mem://x?=v"), "empty option name in '=v'");
        assert_eq!(reason("mem://x?a=1&a=2"), "option 'a' given twice");
        assert_eq!(
            reason("exec:nc host 25\r\nRCPT"),
            "control character '\\r' at byte 15"
        );
    }

    fn host_strategy() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            "[A-Za-z0-9._~-]{1,12}".prop_map(Some),
            any::<std::net::Ipv4Addr>().prop_map(|ip| Some(ip.to_string())),
            any::<Ipv6Addr>().prop_map(|ip| Some(ip.to_string())),
        ]
    }

    fn hierarchical_strategy() -> impl Strategy<Value = Body> {
        let path = prop_oneof![Just(String::new()), "/[^?\\p{Cc}]{0,16}"];
        let query = proptest::collection::vec(("[^\\p{Cc}]{1,6}", "[^\\p{Cc}]{0,8}"), 0..4)
            .prop_map(|pairs| {
                let mut unique: Vec<(String, String)> = Vec::new();
                for (key, value) in pairs {
                    if !unique.iter().any(|(existing, _)| *existing == key) {
                        unique.push((key, value));
                    }
                }
                unique
            });
        (host_strategy(), any::<Option<u16>>(), path, query).prop_map(
            |(host, port, path, query)| Body::Hierarchical {
                host,
                port,
                path,
                query,
            },
        )
    }

    fn endpoint_strategy() -> impl Strategy<Value = Endpoint> {
        let opaque = "[^\\p{Cc}]{0,20}"
            .prop_filter("'//' starts the hierarchical form", |text: &String| {
                !text.starts_with("//")
            })
            .prop_map(Body::Opaque);
        let body = prop_oneof![hierarchical_strategy(), opaque];
        ("[a-z][a-z0-9+.-]{0,8}", body).prop_map(|(scheme, body)| Endpoint { scheme, body })
    }

    proptest! {
        #[test]
        fn display_parses_back_to_equal(ep in endpoint_strategy()) {
            let text = ep.to_string();
            let reparsed = Endpoint::parse(&text);
            prop_assert!(reparsed.is_ok(), "{text:?}: {reparsed:?}");
            prop_assert_eq!(reparsed.unwrap(), ep);
        }

        #[test]
        fn parse_of_anything_is_canonical_once_displayed(
            text in "[a-zA-Z0-9:/?&=%\\[\\]@.#+ _~-]{0,30}"
        ) {
            if let Ok(ep) = Endpoint::parse(&text) {
                let canonical = ep.to_string();
                prop_assert_eq!(Endpoint::parse(&canonical).unwrap(), ep);
            }
        }
    }
}

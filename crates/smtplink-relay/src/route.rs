//! The routing table: which next hop takes mail for a domain.
//!
//! An ordered list of routes, first match wins. A pattern is an exact
//! domain (`example.net`), a suffix (`*.example.net`: any subdomain, not
//! `example.net` itself) or `*` (everything). A target is `local` (this
//! node's Maildirs), `mx` (look up MX records) or one or more endpoint URLs
//! tried in order (`tcp://b:25,serial:///dev/ttyS0`). A recipient whose
//! domain matches no route is refused at RCPT time (550 5.7.1), so a table
//! without `*` is never an open relay.

use std::fmt;

use thiserror::Error;

/// Where mail for a domain goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// Deliver into this node's Maildirs.
    Local,
    /// Look up the domain's MX records (Internet delivery).
    Mx,
    /// Relay over these endpoints, tried in order until one answers.
    Via(Vec<String>),
    /// Keep it until the peer calls in on a link that allows TURN and
    /// turns it around (RFC 821 TURN, for point-to-point lines).
    Hold,
}

impl fmt::Display for RouteTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteTarget::Local => f.write_str("local"),
            RouteTarget::Mx => f.write_str("mx"),
            RouteTarget::Via(urls) => f.write_str(&urls.join(",")),
            RouteTarget::Hold => f.write_str("hold"),
        }
    }
}

/// Which domains a route applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainPattern {
    /// Exactly this domain (compared without regard to ASCII case).
    Exact(String),
    /// Any subdomain of this one (`*.example.net`).
    Subdomains(String),
    /// Every domain (`*`).
    Any,
}

impl DomainPattern {
    /// Parses `example.net`, `*.example.net` or `*`.
    pub fn parse(pattern: &str) -> Result<Self, RouteError> {
        let p = pattern.trim().to_ascii_lowercase();
        let bad = || RouteError::BadPattern(pattern.to_string());
        if p == "*" {
            return Ok(DomainPattern::Any);
        }
        let (subdomains, domain) = match p.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, p.clone()),
        };
        smtplink_engine::Domain::parse(&domain, true).map_err(|_| bad())?;
        Ok(if subdomains {
            DomainPattern::Subdomains(domain)
        } else {
            DomainPattern::Exact(domain)
        })
    }

    /// Whether `domain` (any case) matches.
    pub fn matches(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        match self {
            DomainPattern::Any => true,
            DomainPattern::Exact(d) => domain == *d,
            DomainPattern::Subdomains(d) => domain
                .strip_suffix(d.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainPattern::Any => f.write_str("*"),
            DomainPattern::Exact(d) => f.write_str(d),
            DomainPattern::Subdomains(d) => write!(f, "*.{d}"),
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Which domains.
    pub pattern: DomainPattern,
    /// Where they go.
    pub target: RouteTarget,
    /// After sending over this route, say TURN to receive the next hop's
    /// mail for us in the same session (trusted point-to-point links only).
    pub turn: bool,
    /// How to use TLS towards this route's next hops.
    pub tls: RouteTls,
    /// Credentials for AUTH (RFC 4954) at this route's next hops.
    pub auth: Option<smtplink_driver::ClientAuth>,
}

/// A route's TLS settings for its next hops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTls {
    /// When to use STARTTLS (default: when offered).
    pub policy: smtplink_engine::TlsPolicy,
    /// Whom to trust (`system`, `pem:PATH`, `pin:sha256:HEX`, `any`);
    /// `None`: `any` for opportunistic TLS (encrypt, do not
    /// authenticate: RFC 7435), `system` when TLS is required.
    pub trust: Option<String>,
    /// The name the certificate must carry; `None`: the endpoint's host,
    /// else the recipient domain.
    pub name: Option<String>,
}

impl Route {
    /// Parses the command-line form `DOMAIN=TARGET`, TARGET being `local`,
    /// `mx` or endpoint URLs separated by commas.
    /// A trailing `,turn` after endpoint URLs makes it a TURN route.
    pub fn parse(spec: &str) -> Result<Self, RouteError> {
        let (pattern, target) = spec
            .split_once('=')
            .ok_or_else(|| RouteError::BadSpec(spec.to_string()))?;
        let (target, turn) = match target.trim().strip_suffix(",turn") {
            Some(urls) => (urls, true),
            None => (target, false),
        };
        let target = parse_target(target)?;
        if turn && !matches!(target, RouteTarget::Via(_)) {
            return Err(RouteError::BadTarget(format!("{target},turn")));
        }
        Ok(Route {
            pattern: DomainPattern::parse(pattern)?,
            target,
            turn,
            tls: RouteTls::default(),
            auth: None,
        })
    }
}

/// Parses `local`, `mx` or comma-separated endpoint URLs.
pub fn parse_target(target: &str) -> Result<RouteTarget, RouteError> {
    let t = target.trim();
    match t.to_ascii_lowercase().as_str() {
        "local" => return Ok(RouteTarget::Local),
        "mx" => return Ok(RouteTarget::Mx),
        "hold" => return Ok(RouteTarget::Hold),
        _ => {}
    }
    let urls: Vec<String> = t
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() || urls.iter().any(|u| !u.contains(':')) {
        return Err(RouteError::BadTarget(target.to_string()));
    }
    Ok(RouteTarget::Via(urls))
}

/// Why a route could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RouteError {
    /// Not `DOMAIN=TARGET`.
    #[error("route {0:?} is not DOMAIN=TARGET (e.g. example.net=tcp://gw:25)")]
    BadSpec(String),
    /// The domain pattern is not a domain, `*.domain` or `*`.
    #[error("route pattern {0:?} is not a domain, *.domain or *")]
    BadPattern(String),
    /// The target is not `local`, `mx` or endpoint URLs.
    #[error("route target {0:?} is not local, mx or endpoint URLs separated by commas")]
    BadTarget(String),
}

/// The ordered routing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingTable {
    routes: Vec<Route>,
}

impl Default for RoutingTable {
    /// `*` → local: what a node with no routes configured does.
    fn default() -> Self {
        Self {
            routes: vec![Route {
                pattern: DomainPattern::Any,
                target: RouteTarget::Local,
                turn: false,
                tls: RouteTls::default(),
                auth: None,
            }],
        }
    }
}

impl RoutingTable {
    /// A table with these routes, in order; an empty list gives the default.
    pub fn new(routes: Vec<Route>) -> Self {
        if routes.is_empty() {
            Self::default()
        } else {
            Self { routes }
        }
    }

    /// The routes, in order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Where mail for `domain` goes; `None` means "relaying denied".
    pub fn lookup(&self, domain: &str) -> Option<&RouteTarget> {
        self.routes
            .iter()
            .find(|r| r.pattern.matches(domain))
            .map(|r| &r.target)
    }

    /// Whether a route to `target` says TURN after sending.
    pub fn turns_around(&self, target: &RouteTarget) -> bool {
        self.routes.iter().any(|r| r.turn && r.target == *target)
    }

    /// The TLS settings of the first route to `target` (hops are grouped
    /// by target; `mx` hops use the first `mx` route's settings).
    pub fn tls_for(&self, target: &RouteTarget) -> RouteTls {
        self.routes
            .iter()
            .find(|r| r.target == *target)
            .map(|r| r.tls.clone())
            .unwrap_or_default()
    }

    /// The AUTH credentials of the first route with this target, if any.
    pub fn auth_for(&self, target: &RouteTarget) -> Option<smtplink_driver::ClientAuth> {
        self.routes
            .iter()
            .find(|r| r.target == *target)
            .and_then(|r| r.auth.clone())
    }

    /// Whether any route needs the relay machinery (not only local).
    pub fn relays(&self) -> bool {
        self.routes.iter().any(|r| r.target != RouteTarget::Local)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn table(specs: &[&str]) -> RoutingTable {
        RoutingTable::new(specs.iter().map(|s| Route::parse(s).unwrap()).collect())
    }

    #[test]
    fn first_match_wins() {
        let t = table(&[
            "mail.example.net=local",
            "*.example.net=tcp://gw:25,tcp://backup:25",
            "example.net=tcp://b:2525",
        ]);
        assert_eq!(t.lookup("MAIL.Example.NET"), Some(&RouteTarget::Local));
        assert_eq!(
            t.lookup("x.y.example.net"),
            Some(&RouteTarget::Via(vec![
                "tcp://gw:25".into(),
                "tcp://backup:25".into()
            ]))
        );
        assert_eq!(
            t.lookup("example.net"),
            Some(&RouteTarget::Via(vec!["tcp://b:2525".into()]))
        );
        // No `*`: everything else is refused (not an open relay).
        assert_eq!(t.lookup("example.org"), None);
        assert_eq!(t.lookup("evilexample.net"), None);
    }

    #[test]
    fn default_table_is_everything_local() {
        let t = RoutingTable::default();
        assert_eq!(t.lookup("anything.example"), Some(&RouteTarget::Local));
        assert!(!t.relays());
        assert_eq!(RoutingTable::new(vec![]), t);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        assert!(matches!(
            Route::parse("example.net"),
            Err(RouteError::BadSpec(_))
        ));
        assert!(matches!(
            Route::parse("exa mple=local"),
            Err(RouteError::BadPattern(_))
        ));
        assert!(matches!(
            Route::parse("*.=local"),
            Err(RouteError::BadPattern(_))
        ));
        assert!(matches!(
            Route::parse("x.net="),
            Err(RouteError::BadTarget(_))
        ));
        assert!(matches!(
            Route::parse("x.net=gateway"),
            Err(RouteError::BadTarget(_))
        ));
        assert_eq!(Route::parse("X.NET = MX").unwrap().target, RouteTarget::Mx);
    }
}

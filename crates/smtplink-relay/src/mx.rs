//! MX resolution for routes that say `mx` (Internet delivery).
//!
//! RFC 5321 5.1: a domain's MX records, lowest preference first (ties in
//! random order), each exchange's A and AAAA addresses; no MX at all means
//! the domain itself is the one mail exchanger (implicit MX). RFC 7505: a
//! single MX of `.` (null MX) says the domain takes no mail. A domain that
//! does not exist (NXDOMAIN) fails for good; a DNS failure (SERVFAIL,
//! timeout, no nameserver) is temporary.
//!
//! The resolver is the system's (`/etc/resolv.conf`) or one nameserver
//! given by address, for tests and for sites with their own DNS. Only
//! plain DNS over UDP and TCP is used.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};

/// Which DNS resolver MX lookups use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResolverChoice {
    /// The system's configuration (`/etc/resolv.conf`).
    #[default]
    System,
    /// This nameserver only (recursive, or authoritative for the domains
    /// routed by MX), over UDP with TCP for long answers.
    Nameserver(SocketAddr),
}

impl FromStr for ResolverChoice {
    type Err = String;

    /// `system`, an IP address (port 53) or `ip:port` (`[v6]:port`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("system") {
            return Ok(ResolverChoice::System);
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(ResolverChoice::Nameserver(addr));
        }
        if let Ok(ip) = s.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
            return Ok(ResolverChoice::Nameserver(SocketAddr::new(ip, 53)));
        }
        Err(format!(
            "resolver {s:?} is not \"system\" or a nameserver's IP address with an optional port (e.g. 127.0.0.1:53)"
        ))
    }
}

impl fmt::Display for ResolverChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolverChoice::System => f.write_str("system"),
            ResolverChoice::Nameserver(addr) => write!(f, "{addr}"),
        }
    }
}

/// Why a domain's mail exchangers could not be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxError {
    /// RFC 7505: the domain publishes a null MX; it accepts no mail.
    NullMx {
        /// The recipient domain.
        domain: String,
    },
    /// The domain does not exist (NXDOMAIN), or is no domain name at all.
    NoSuchDomain {
        /// The recipient domain.
        domain: String,
        /// What was wrong.
        reason: String,
    },
    /// The domain exists but neither its MX hosts nor (without MX) the
    /// domain itself have an address.
    NoAddress {
        /// The recipient domain.
        domain: String,
        /// What was looked up.
        reason: String,
    },
    /// DNS failed (SERVFAIL, timeout, no nameserver): try again later.
    Temporary {
        /// The recipient domain.
        domain: String,
        /// The resolver's error.
        reason: String,
    },
}

impl MxError {
    /// Whether the recipient fails for good (no retry).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, MxError::Temporary { .. })
    }

    /// The RFC 3463 status code for a delivery status notification.
    pub fn status(&self) -> (u8, u16, u16) {
        match self {
            // RFC 7505 3.
            MxError::NullMx { .. } => (5, 1, 10),
            MxError::NoSuchDomain { .. } => (5, 1, 2),
            MxError::NoAddress { .. } => (5, 4, 4),
            MxError::Temporary { .. } => (4, 4, 3),
        }
    }

    /// The recipient domain.
    pub fn domain(&self) -> &str {
        match self {
            MxError::NullMx { domain }
            | MxError::NoSuchDomain { domain, .. }
            | MxError::NoAddress { domain, .. }
            | MxError::Temporary { domain, .. } => domain,
        }
    }
}

impl fmt::Display for MxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let domain = self.domain();
        match self {
            MxError::NullMx { .. } => write!(
                f,
                "MX lookup for {domain}: Recipient address has null MX (RFC 7505)"
            ),
            MxError::NoSuchDomain { reason, .. } => write!(
                f,
                "MX lookup for {domain}: bad destination system address: {reason}"
            ),
            MxError::NoAddress { reason, .. } => write!(
                f,
                "MX lookup for {domain}: no mail exchanger with an address: {reason}"
            ),
            MxError::Temporary { reason, .. } => {
                write!(f, "MX lookup for {domain}: temporary DNS failure: {reason}")
            }
        }
    }
}

impl std::error::Error for MxError {}

/// One mail exchanger of a domain, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// The exchange's name, without the final dot.
    pub exchange: String,
    /// MX preference (0 for an implicit MX).
    pub preference: u16,
    /// A addresses first, then AAAA; empty when it has none.
    pub addresses: Vec<IpAddr>,
}

/// The answer to one DNS question, classified the way mail routing needs.
enum Answer {
    Records(Vec<RData>),
    /// The name exists but has no records of this type (NODATA).
    NoData,
    NxDomain,
    Failed(String),
}

fn classify(result: Result<Lookup, NetError>, rtype: RecordType) -> Answer {
    match result {
        Ok(lookup) => {
            let records: Vec<RData> = lookup
                .answers()
                .iter()
                .filter(|r| r.record_type() == rtype)
                .map(|r| r.data.clone())
                .collect();
            if records.is_empty() {
                Answer::NoData
            } else {
                Answer::Records(records)
            }
        }
        Err(NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. }))) => {
            match response_code {
                ResponseCode::NXDomain => Answer::NxDomain,
                ResponseCode::NoError => Answer::NoData,
                other => Answer::Failed(format!("{other}")),
            }
        }
        Err(e) => Answer::Failed(e.to_string()),
    }
}

/// A domain literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`, RFC 5321 4.1.3)
/// as an address; `None` for a domain name, `Some(Err)` for a bad literal.
pub fn domain_literal(domain: &str) -> Option<Result<IpAddr, String>> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    let parsed = match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
            inner[5..].parse::<Ipv6Addr>().map(IpAddr::V6).ok()
        }
        _ => inner.parse::<Ipv4Addr>().map(IpAddr::V4).ok(),
    };
    Some(parsed.ok_or_else(|| format!("{domain} is not an address literal")))
}

/// The endpoint URLs for `hosts` in order, each address once.
pub fn endpoints(hosts: &[MxHost], port: u16) -> Vec<String> {
    let mut seen: Vec<IpAddr> = Vec::new();
    let mut urls = Vec::new();
    for ip in hosts.iter().flat_map(|h| h.addresses.iter()) {
        if !seen.contains(ip) {
            seen.push(*ip);
            urls.push(endpoint(*ip, port));
        }
    }
    urls
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    format!("tcp://{}", SocketAddr::new(ip, port))
}

/// MX lookups over one hickory resolver (which caches answers).
#[derive(Clone)]
pub struct MxResolver {
    resolver: TokioResolver,
}

impl fmt::Debug for MxResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MxResolver").finish_non_exhaustive()
    }
}

impl MxResolver {
    /// A resolver as chosen; the system configuration is read now.
    pub fn new(choice: ResolverChoice) -> Result<Self, String> {
        Self::with_timeout(choice, None)
    }

    /// Like [`MxResolver::new`], waiting `timeout` (instead of the
    /// configured or built-in 5 s) for each answer.
    pub fn with_timeout(choice: ResolverChoice, timeout: Option<Duration>) -> Result<Self, String> {
        let resolver = match choice {
            ResolverChoice::System => TokioResolver::builder_tokio()
                .and_then(|mut b| {
                    if let Some(t) = timeout {
                        b.options_mut().timeout = t;
                    }
                    b.build()
                })
                .map_err(|e| format!("system resolver configuration: {e}"))?,
            ResolverChoice::Nameserver(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                let mut builder = Resolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    TokioRuntimeProvider::default(),
                );
                // This nameserver answers everything; /etc/hosts does not.
                builder.options_mut().use_hosts_file = ResolveHosts::Never;
                if let Some(t) = timeout {
                    builder.options_mut().timeout = t;
                }
                builder
                    .build()
                    .map_err(|e| format!("resolver for nameserver {addr}: {e}"))?
            }
        };
        Ok(Self { resolver })
    }

    /// The endpoint URLs (`tcp://ip:port`) to try for `domain`, in order:
    /// an address literal as is, else the MX hosts' addresses.
    pub async fn next_hops(&self, domain: &str, port: u16) -> Result<Vec<String>, MxError> {
        if let Some(literal) = domain_literal(domain) {
            return match literal {
                Ok(ip) => Ok(vec![endpoint(ip, port)]),
                Err(reason) => Err(MxError::NoSuchDomain {
                    domain: domain.to_string(),
                    reason,
                }),
            };
        }
        let hosts = self.resolve(domain).await?;
        Ok(endpoints(&hosts, port))
    }

    /// The mail exchangers of `domain`, most preferred first, with their
    /// addresses. At least one has an address when this is `Ok`.
    pub async fn resolve(&self, domain: &str) -> Result<Vec<MxHost>, MxError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let name = fqdn(&domain).map_err(|reason| MxError::NoSuchDomain {
            domain: domain.clone(),
            reason,
        })?;
        let temporary = |reason: String| MxError::Temporary {
            domain: domain.clone(),
            reason,
        };
        let mx = classify(
            self.resolver.lookup(name.clone(), RecordType::MX).await,
            RecordType::MX,
        );
        let mut records: Vec<(u16, Name)> = match mx {
            Answer::Records(rdata) => rdata
                .into_iter()
                .filter_map(|r| match r {
                    RData::MX(mx) => Some((mx.preference, mx.exchange)),
                    _ => None,
                })
                .collect(),
            Answer::NoData => Vec::new(),
            Answer::NxDomain => {
                return Err(MxError::NoSuchDomain {
                    domain: domain.clone(),
                    reason: "no such domain (NXDOMAIN)".into(),
                })
            }
            Answer::Failed(e) => return Err(temporary(format!("MX query: {e}"))),
        };
        if records.is_empty() {
            // RFC 5321 5.1: no MX; the domain is its own mail exchanger.
            return match self.addresses(&name).await {
                Ok(addresses) if !addresses.is_empty() => Ok(vec![MxHost {
                    exchange: domain.clone(),
                    preference: 0,
                    addresses,
                }]),
                Ok(_) => Err(MxError::NoAddress {
                    domain: domain.clone(),
                    reason: "no MX and no A or AAAA records".into(),
                }),
                Err(Answer::NxDomain) => Err(MxError::NoSuchDomain {
                    domain: domain.clone(),
                    reason: "no such domain (NXDOMAIN)".into(),
                }),
                Err(Answer::Failed(e)) => Err(temporary(format!("address query: {e}"))),
                Err(_) => Err(temporary("address query failed".into())),
            };
        }
        // RFC 7505: a null MX ("." as the only exchange) takes no mail; a
        // stray "." beside real exchanges is skipped.
        if records.iter().all(|(_, x)| x.is_root()) {
            return Err(MxError::NullMx { domain });
        }
        records.retain(|(_, x)| !x.is_root());
        // Lowest preference first; equal ones in random order (RFC 5321 5.1).
        let random = RandomState::new();
        records.sort_by_cached_key(|(pref, x)| {
            let mut h = random.build_hasher();
            h.write(x.to_ascii().as_bytes());
            (*pref, h.finish())
        });
        let mut hosts = Vec::new();
        let mut failures = Vec::new();
        let mut temporary_failure = false;
        for (preference, exchange) in records {
            let mut exchange = exchange;
            exchange.set_fqdn(true);
            let shown = exchange.to_ascii().trim_end_matches('.').to_string();
            match self.addresses(&exchange).await {
                Ok(addresses) if !addresses.is_empty() => hosts.push(MxHost {
                    exchange: shown,
                    preference,
                    addresses,
                }),
                Ok(_) => failures.push(format!("{shown}: no A or AAAA records")),
                Err(Answer::NxDomain) => failures.push(format!("{shown}: no such host")),
                Err(Answer::Failed(e)) => {
                    temporary_failure = true;
                    failures.push(format!("{shown}: {e}"));
                }
                Err(_) => {
                    temporary_failure = true;
                    failures.push(format!("{shown}: address query failed"));
                }
            }
        }
        if hosts.is_empty() {
            let reason = failures.join("; ");
            return Err(if temporary_failure {
                temporary(reason)
            } else {
                MxError::NoAddress { domain, reason }
            });
        }
        Ok(hosts)
    }

    /// A then AAAA addresses of `name`; `Err` with the NXDOMAIN or
    /// failure when neither query gave an address.
    async fn addresses(&self, name: &Name) -> Result<Vec<IpAddr>, Answer> {
        let (a, aaaa) = tokio::join!(
            self.resolver.lookup(name.clone(), RecordType::A),
            self.resolver.lookup(name.clone(), RecordType::AAAA),
        );
        let mut out = Vec::new();
        let mut failure = None;
        let mut nxdomain = false;
        for answer in [classify(a, RecordType::A), classify(aaaa, RecordType::AAAA)] {
            match answer {
                Answer::Records(rdata) => out.extend(rdata.into_iter().filter_map(|r| match r {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })),
                Answer::NoData => {}
                Answer::NxDomain => nxdomain = true,
                Answer::Failed(e) => failure = Some(e),
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        match (failure, nxdomain) {
            (Some(e), _) => Err(Answer::Failed(e)),
            (None, true) => Err(Answer::NxDomain),
            (None, false) => Ok(out),
        }
    }
}

fn fqdn(domain: &str) -> Result<Name, String> {
    let mut name =
        Name::from_utf8(domain).map_err(|e| format!("{domain:?} is not a domain name: {e}"))?;
    if name.is_root() || name.num_labels() == 0 {
        return Err("empty domain".into());
    }
    name.set_fqdn(true);
    Ok(name)
}

/// A resolver built on first use and kept (with its cache) afterwards; a
/// failure to build one (say, no `/etc/resolv.conf`) is retried next time.
#[derive(Debug)]
pub struct SharedResolver {
    choice: ResolverChoice,
    built: Mutex<Option<Arc<MxResolver>>>,
}

impl SharedResolver {
    /// Nothing is read until [`SharedResolver::get`].
    pub fn new(choice: ResolverChoice) -> Self {
        Self {
            choice,
            built: Mutex::new(None),
        }
    }

    /// The resolver, built now if need be.
    pub fn get(&self) -> Result<Arc<MxResolver>, String> {
        let mut built = self
            .built
            .lock()
            .map_err(|_| "resolver lock poisoned".to_string())?;
        if let Some(r) = built.as_ref() {
            return Ok(r.clone());
        }
        let r = Arc::new(MxResolver::new(self.choice)?);
        *built = Some(r.clone());
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn resolver_choice_parses() {
        assert_eq!("system".parse(), Ok(ResolverChoice::System));
        assert_eq!(" System ".parse(), Ok(ResolverChoice::System));
        assert_eq!(
            "127.0.0.1:5353".parse(),
            Ok(ResolverChoice::Nameserver(
                "127.0.0.1:5353".parse().unwrap()
            ))
        );
        assert_eq!(
            "10.0.0.53".parse(),
            Ok(ResolverChoice::Nameserver("10.0.0.53:53".parse().unwrap()))
        );
        assert_eq!(
            "[::1]:53".parse(),
            Ok(ResolverChoice::Nameserver("[::1]:53".parse().unwrap()))
        );
        assert!("dns.example:53".parse::<ResolverChoice>().is_err());
        assert!("".parse::<ResolverChoice>().is_err());
        assert_eq!(ResolverChoice::System.to_string(), "system");
    }

    #[test]
    fn address_literals() {
        assert_eq!(
            domain_literal("[192.0.2.1]"),
            Some(Ok("192.0.2.1".parse().unwrap()))
        );
        assert_eq!(
            domain_literal("[IPv6:2001:db8::1]"),
            Some(Ok("2001:db8::1".parse().unwrap()))
        );
        assert!(matches!(domain_literal("[bogus]"), Some(Err(_))));
        assert!(matches!(domain_literal("[2001:db8::1]"), Some(Err(_))));
        assert_eq!(domain_literal("example.net"), None);
    }

    #[test]
    fn endpoints_keep_order_and_drop_repeats() {
        let hosts = vec![
            MxHost {
                exchange: "a".into(),
                preference: 10,
                addresses: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
            },
            MxHost {
                exchange: "b".into(),
                preference: 20,
                addresses: vec!["192.0.2.2".parse().unwrap(), "192.0.2.1".parse().unwrap()],
            },
        ];
        assert_eq!(
            endpoints(&hosts, 25),
            [
                "tcp://192.0.2.1:25",
                "tcp://[2001:db8::1]:25",
                "tcp://192.0.2.2:25"
            ]
        );
    }

    #[test]
    fn errors_say_mx_lookup_and_status() {
        let e = MxError::NullMx {
            domain: "null.example".into(),
        };
        assert!(e.is_permanent());
        assert_eq!(e.status(), (5, 1, 10));
        assert_eq!(
            e.to_string(),
            "MX lookup for null.example: Recipient address has null MX (RFC 7505)"
        );
        let e = MxError::Temporary {
            domain: "x.example".into(),
            reason: "timed out".into(),
        };
        assert!(!e.is_permanent());
        assert!(e.to_string().starts_with("MX lookup for x.example:"));
    }
}

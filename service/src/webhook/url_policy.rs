//! SSRF-safe policy for webhook target URLs: user input our servers connect to must not reach
//! loopback, the private network or cloud metadata. [`UrlPolicy::check`] runs when a URL is
//! configured; [`UrlPolicy::check_resolved`] before each delivery, against names that point
//! inside and DNS rebinding.
//!
//! Hosts are classified after WHATWG parsing, so every IPv4 spelling (`127.1`, `2130706433`,
//! `0x7f.1`, `0177.0.0.1`) is judged by the address it denotes.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use ipnet::{Ipv4Net, Ipv6Net};
use url::{Host, Url};

/// Bytes, of the input and its normalised form: within what HTTP clients and proxies accept.
pub const MAX_URL_LEN: usize = 2048;

/// Chosen explicitly per deployment, so relaxing the rules is never implied.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    strum::Display,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[strum(serialize_all = "lowercase")]
pub enum UrlPolicy {
    /// Public `https` targets only; the default, so a missing setting fails safe.
    #[default]
    Production,
    /// Also `http` and loopback/private targets. Link-local stays refused: cloud metadata
    /// answers there, and no receiver does.
    Development,
}

impl UrlPolicy {
    /// Shared by [`fmt::Display`] and [`FromStr`] so they round-trip.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Returns the normalised URL to store. It cannot see where a name resolves; deliveries
    /// must also go through [`UrlPolicy::check_resolved`].
    ///
    /// ```
    /// use agent_webhooks::webhook::url_policy::UrlPolicy;
    ///
    /// let url = UrlPolicy::Production.check("https://Example.com/hook").unwrap();
    /// assert_eq!(url.as_str(), "https://example.com/hook");
    ///
    /// let err = UrlPolicy::Production.check("https://127.1/").unwrap_err();
    /// assert_eq!(err.rule(), "loopback");
    /// assert!(UrlPolicy::Development.check("http://127.0.0.1:8080/").is_ok());
    /// ```
    pub fn check(&self, raw: &str) -> Result<Url, UrlPolicyError> {
        // Checked before parsing so oversized input costs nothing to reject.
        if raw.len() > MAX_URL_LEN {
            return Err(UrlPolicyError::TooLong {
                len: raw.len(),
                max: MAX_URL_LEN,
            });
        }
        let url = Url::parse(raw).map_err(UrlPolicyError::Unparseable)?;
        self.check_url(&url)?;
        Ok(url)
    }

    /// [`UrlPolicy::check`] for a parsed URL, e.g. one stored under an older policy.
    pub fn check_url(&self, url: &Url) -> Result<(), UrlPolicyError> {
        let len = url.as_str().len();
        if len > MAX_URL_LEN {
            return Err(UrlPolicyError::TooLong {
                len,
                max: MAX_URL_LEN,
            });
        }
        let scheme_allowed = match self {
            Self::Production => url.scheme() == "https",
            Self::Development => matches!(url.scheme(), "http" | "https"),
        };
        if !scheme_allowed {
            return Err(UrlPolicyError::SchemeNotAllowed {
                scheme: url.scheme().to_owned(),
                policy: *self,
            });
        }
        // Unreachable for http(s) after parsing; kept so the rule never
        // depends on that parser detail.
        let host = url.host().ok_or(UrlPolicyError::MissingHost)?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlPolicyError::UserInfo);
        }
        // Under every policy: nothing listens on port 0, and a name with an empty label is
        // not a DNS name (a resolver would refuse it, or worse, guess).
        if url.port() == Some(0) {
            return Err(UrlPolicyError::PortZero);
        }
        if let Host::Domain(name) = &host
            && (name.trim_end_matches('.').split('.').any(str::is_empty) || name.ends_with(".."))
        {
            return Err(UrlPolicyError::EmptyLabel {
                host: (*name).to_owned(),
            });
        }
        let rejection = match host {
            Host::Domain(_) if *self == Self::Development => None,
            Host::Domain(name) => {
                local_name_reason(name).map(|reason| UrlPolicyError::LocalHostName {
                    host: host.to_string(),
                    reason,
                })
            }
            Host::Ipv4(ip) => self.non_public_literal(&host, ip.into()),
            Host::Ipv6(ip) => self.non_public_literal(&host, ip.into()),
        };
        rejection.map_or(Ok(()), Err)
    }

    /// Refuses the URL if *any* address is non-public. Connect to exactly the returned
    /// addresses (keeping the host name for `Host` and SNI): resolving again reopens the
    /// DNS-rebinding hole. Wrap the call in a timeout: resolvers may be slow.
    pub async fn check_resolved<R: Resolver>(
        &self,
        url: &Url,
        resolver: &R,
    ) -> Result<Vec<SocketAddr>, UrlPolicyError> {
        self.check_url(url)?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| UrlPolicyError::SchemeNotAllowed {
                scheme: url.scheme().to_owned(),
                policy: *self,
            })?;
        let name = match url.host() {
            Some(Host::Domain(name)) => name,
            Some(Host::Ipv4(ip)) => return Ok(vec![SocketAddr::new(ip.into(), port)]),
            Some(Host::Ipv6(ip)) => return Ok(vec![SocketAddr::new(ip.into(), port)]),
            None => return Err(UrlPolicyError::MissingHost),
        };
        let ips = resolver.resolve(name, port).await.map_err(|source| {
            UrlPolicyError::ResolutionFailed {
                host: name.to_owned(),
                source,
            }
        })?;
        if ips.is_empty() {
            return Err(UrlPolicyError::NoAddresses {
                host: name.to_owned(),
            });
        }
        if let Some((addr, reason)) = ips.iter().find_map(|&ip| {
            classify_ip(ip)
                .filter(|&reason| self.refuses(reason))
                .map(|reason| (ip, reason))
        }) {
            return Err(UrlPolicyError::ResolvesToNonPublic {
                host: name.to_owned(),
                addr,
                reason,
            });
        }
        let mut addrs = Vec::with_capacity(ips.len());
        for addr in ips.into_iter().map(|ip| SocketAddr::new(ip, port)) {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        Ok(addrs)
    }
}

impl FromStr for UrlPolicy {
    type Err = ParseUrlPolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <Self as strum::VariantArray>::VARIANTS
            .iter()
            .copied()
            .find(|policy| s.eq_ignore_ascii_case(policy.as_str()))
            .ok_or_else(|| ParseUrlPolicyError {
                input: s.to_owned(),
            })
    }
}

/// Surfaced instead of silently falling back to a default.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown URL policy {input:?}; expected \"production\" or \"development\"")]
pub struct ParseUrlPolicyError {
    pub input: String,
}

/// One variant per rule, so users are told which rule failed. Hosts are given as the URL
/// parser serialised them.
#[allow(
    missing_docs,
    reason = "fields are named for what they hold; each variant says when it arises"
)]
#[derive(Debug, thiserror::Error)]
pub enum UrlPolicyError {
    #[error("rejected: URL is {len} bytes long, the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("rejected: not a valid URL ({0})")]
    Unparseable(url::ParseError),
    #[error("rejected: scheme {scheme:?} is not allowed by the {policy} policy")]
    SchemeNotAllowed { scheme: String, policy: UrlPolicy },
    #[error("rejected: URL has no host")]
    MissingHost,
    /// Credentials in the URL would be stored and logged in clear text.
    #[error("rejected: URL must not contain a username or password")]
    UserInfo,
    #[error("rejected: port 0 is not a port a receiver can listen on")]
    PortZero,
    /// A host name with an empty label (`a..b`, `.a`): not a DNS name.
    #[error("rejected: host {host} has an empty label")]
    EmptyLabel { host: String },
    #[error("rejected: host {host} is {reason}")]
    NonPublicAddress { host: String, reason: NonPublic },
    /// The host name only exists on local networks (e.g. `localhost`).
    #[error("rejected: host {host} is {reason}")]
    LocalHostName { host: String, reason: &'static str },
    #[error("rejected: host {host} resolves to {addr}, which is {reason}")]
    ResolvesToNonPublic {
        host: String,
        addr: IpAddr,
        reason: NonPublic,
    },
    /// A delivery that cannot be vetted must not run.
    #[error("rejected: could not resolve host {host}")]
    ResolutionFailed {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("rejected: host {host} resolves to no addresses")]
    NoAddresses { host: String },
}

impl UrlPolicyError {
    /// Stable short name for CLIs, logs and metrics; address rejections use the address class
    /// (e.g. `"loopback"`), literal or resolved.
    pub fn rule(&self) -> &'static str {
        match self {
            Self::TooLong { .. } => "length",
            Self::Unparseable(_) => "syntax",
            Self::SchemeNotAllowed { .. } => "scheme",
            Self::MissingHost => "host",
            Self::UserInfo => "userinfo",
            Self::PortZero => "port",
            Self::EmptyLabel { .. } => "host-name",
            Self::NonPublicAddress { reason, .. } | Self::ResolvesToNonPublic { reason, .. } => {
                reason.rule()
            }
            Self::LocalHostName { .. } => "local-name",
            Self::ResolutionFailed { .. } => "resolution",
            Self::NoAddresses { .. } => "no-addresses",
        }
    }
}

/// Shared by the literal-host and resolved-address rules so both agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NonPublic {
    /// `0.0.0.0` or `::`, which many stacks treat as "this host".
    Unspecified,
    ThisNetwork,
    /// `127.0.0.0/8` or `::1`.
    Loopback,
    /// RFC 1918: `10/8`, `172.16/12`, `192.168/16`.
    Private,
    /// Carrier-grade NAT, `100.64.0.0/10`.
    SharedAddressSpace,
    /// `169.254/16` (includes cloud metadata `169.254.169.254`) or `fe80::/10`.
    LinkLocal,
    Multicast,
    Broadcast,
    /// `192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    Benchmarking,
    /// IETF protocol assignments: `192.0.0.0/24`, `2001::/23`.
    ProtocolAssignment,
    /// `240/4`, and IPv6 outside global unicast `2000::/3`.
    Reserved,
    /// Deprecated forms: 6to4 relay anycast `192.88.99/24`, IPv4-compatible `::a.b.c.d`.
    Deprecated,
    /// Unique local `fc00::/7`.
    UniqueLocal,
    /// Site-local `fec0::/10`.
    SiteLocal,
    /// Teredo `2001::/32`; its embedded addresses cannot be vetted reliably.
    Teredo,
    /// Local-use NAT64 `64:ff9b:1::/48`, which is not globally reachable.
    LocalNat64,
}

impl NonPublic {
    pub const fn rule(self) -> &'static str {
        self.names().0
    }

    /// Side by side, so a new class cannot get one without the other.
    const fn names(self) -> (&'static str, &'static str) {
        match self {
            Self::Unspecified => ("unspecified", "an unspecified address"),
            Self::ThisNetwork => ("this-network", "a \"this network\" address (0.0.0.0/8)"),
            Self::Loopback => ("loopback", "a loopback address"),
            Self::Private => ("private", "a private address"),
            Self::SharedAddressSpace => ("cgnat", "a carrier-grade NAT address (100.64.0.0/10)"),
            Self::LinkLocal => ("link-local", "a link-local address"),
            Self::Multicast => ("multicast", "a multicast address"),
            Self::Broadcast => ("broadcast", "the broadcast address"),
            Self::Documentation => ("documentation", "a documentation address"),
            Self::Benchmarking => ("benchmarking", "a benchmarking address (198.18.0.0/15)"),
            Self::ProtocolAssignment => ("ietf-protocol", "an IETF protocol assignment address"),
            Self::Reserved => ("reserved", "a reserved address"),
            Self::Deprecated => ("deprecated", "a deprecated address form"),
            Self::UniqueLocal => ("unique-local", "a unique local address (fc00::/7)"),
            Self::SiteLocal => ("site-local", "a site-local address (fec0::/10)"),
            Self::Teredo => ("teredo", "a Teredo address (2001::/32)"),
            Self::LocalNat64 => ("nat64-local", "a local-use NAT64 address (64:ff9b:1::/48)"),
        }
    }
}

impl fmt::Display for NonPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.names().1)
    }
}

impl UrlPolicy {
    /// Whether this policy refuses a destination of `class`: production every non-public
    /// one, development only link-local (see [`UrlPolicy::Development`]).
    fn refuses(self, class: NonPublic) -> bool {
        match self {
            Self::Production => true,
            Self::Development => class == NonPublic::LinkLocal,
        }
    }

    fn non_public_literal(self, host: &Host<&str>, ip: IpAddr) -> Option<UrlPolicyError> {
        classify_ip(ip)
            .filter(|&reason| self.refuses(reason))
            .map(|reason| UrlPolicyError::NonPublicAddress {
                host: host.to_string(),
                reason,
            })
    }
}

/// `None` for a public destination. IPv6 forms that carry an IPv4 address (mapped,
/// compatible, NAT64, 6to4) are judged by that address.
pub fn classify_ip(ip: IpAddr) -> Option<NonPublic> {
    match ip.to_canonical() {
        IpAddr::V4(ip) => classify_v4(ip),
        IpAddr::V6(ip) => classify_v6(ip),
    }
}

fn first_hit(rules: impl IntoIterator<Item = (bool, NonPublic)>) -> Option<NonPublic> {
    rules
        .into_iter()
        .find_map(|(hit, class)| hit.then_some(class))
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

const fn v6(s: [u16; 8], len: u8) -> Ipv6Net {
    let [a, b, c, d, e, f, g, h] = s;
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), len)
}

/// IPv4 ranges `std` has no stable predicate for. Checked after the `std`
/// ones, so `0.0.0.0` is unspecified and `255.255.255.255` broadcast.
const V4_NETS: [(Ipv4Net, NonPublic); 6] = [
    (v4(0, 0, 0, 0, 8), NonPublic::ThisNetwork),
    (v4(100, 64, 0, 0, 10), NonPublic::SharedAddressSpace),
    (v4(192, 0, 0, 0, 24), NonPublic::ProtocolAssignment),
    (v4(192, 88, 99, 0, 24), NonPublic::Deprecated),
    (v4(198, 18, 0, 0, 15), NonPublic::Benchmarking),
    (v4(240, 0, 0, 0, 4), NonPublic::Reserved),
];

/// The `std` predicates' ranges are disjoint, so their order decides nothing.
fn classify_either(ip: IpAddr) -> Option<NonPublic> {
    first_hit([
        (ip.is_unspecified(), NonPublic::Unspecified),
        (ip.is_loopback(), NonPublic::Loopback),
        (ip.is_multicast(), NonPublic::Multicast),
    ])
}

fn classify_v4(ip: Ipv4Addr) -> Option<NonPublic> {
    let by_std = [
        (ip.is_broadcast(), NonPublic::Broadcast),
        (ip.is_private(), NonPublic::Private),
        (ip.is_link_local(), NonPublic::LinkLocal),
        (ip.is_documentation(), NonPublic::Documentation),
    ];
    let by_net = V4_NETS.map(|(net, class)| (net.contains(&ip), class));
    classify_either(ip.into()).or_else(|| first_hit(by_std.into_iter().chain(by_net)))
}

#[derive(Clone, Copy)]
enum V6Rule {
    Is(NonPublic),
    /// Traffic goes to the IPv4 address in the low 32 bits.
    EmbedsIpv4,
    /// Like `EmbedsIpv4`, but a deprecated form even for public addresses.
    EmbedsIpv4Deprecated,
    /// 6to4: traffic goes to the IPv4 address in bits 16..48.
    SixToFour,
    /// Global unicast not covered by an earlier, more specific range.
    Public,
}

/// IPv6 ranges `std` has no stable predicate for, checked after the `std`
/// ones (`::`, `::1`, `fc00::/7`, `fe80::/10`, `ff00::/8`). The first match
/// wins; an address matching none (outside global unicast `2000::/3`) is
/// reserved, so unknown space fails closed.
#[rustfmt::skip]
const V6_NETS: [(Ipv6Net, V6Rule); 11] = [
    // ::a.b.c.d, IPv4-compatible (deprecated by RFC 4291).
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 96), V6Rule::EmbedsIpv4Deprecated),
    // ::ffff:0:a.b.c.d, SIIT IPv4-translated (RFC 2765, obsolete).
    (v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96), V6Rule::EmbedsIpv4Deprecated),
    // Well-known NAT64 prefix: the translator connects to the IPv4 address.
    (v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96), V6Rule::EmbedsIpv4),
    (v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), V6Rule::Is(NonPublic::LocalNat64)),
    (v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32), V6Rule::Is(NonPublic::Teredo)),
    (v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23), V6Rule::Is(NonPublic::ProtocolAssignment)),
    (v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), V6Rule::Is(NonPublic::Documentation)),
    (v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16), V6Rule::SixToFour),
    (v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), V6Rule::Is(NonPublic::Documentation)),
    (v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3), V6Rule::Public),
    (v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), V6Rule::Is(NonPublic::SiteLocal)),
];

fn classify_v6(ip: Ipv6Addr) -> Option<NonPublic> {
    let by_std = [
        (ip.is_unique_local(), NonPublic::UniqueLocal),
        (ip.is_unicast_link_local(), NonPublic::LinkLocal),
    ];
    let [_, _, a, b, c, d, .., w, x, y, z] = ip.octets();
    let low = Ipv4Addr::new(w, x, y, z);
    let rule = V6_NETS.iter().find(|(net, _)| net.contains(&ip));
    let by_std = classify_either(ip.into()).or_else(|| first_hit(by_std));
    by_std.or_else(|| match rule.map(|&(_, rule)| rule) {
        Some(V6Rule::Is(class)) => Some(class),
        Some(V6Rule::EmbedsIpv4) => classify_v4(low),
        Some(V6Rule::EmbedsIpv4Deprecated) => classify_v4(low).or(Some(NonPublic::Deprecated)),
        Some(V6Rule::SixToFour) => classify_v4(Ipv4Addr::new(a, b, c, d)),
        Some(V6Rule::Public) => None,
        None => Some(NonPublic::Reserved),
    })
}

/// Host-name suffixes that only resolve on local networks, matched on whole
/// labels, with why. DNS names elsewhere are vetted at resolve time.
const LOCAL_SUFFIXES: &[(&str, &str)] = &[
    ("localhost", "a loopback name (RFC 6761)"),
    ("localdomain", "a local-domain name (.localdomain)"),
    ("local", "a multicast DNS name (RFC 6762)"),
    ("internal", "a private-use name (.internal)"),
    ("home.arpa", "a home-network name (RFC 8375)"),
];

/// Why a (lowercase, IDNA-normalised) host name is local-only, if it is.
fn local_name_reason(name: &str) -> Option<&'static str> {
    let name = name.trim_end_matches('.');
    let suffix = LOCAL_SUFFIXES.iter().find(|(suffix, _)| {
        name.strip_suffix(suffix)
            .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
    });
    match suffix {
        Some(&(_, reason)) => Some(reason),
        // Dotless names resolve only via search domains or hosts files.
        None if !name.contains('.') => Some("a single-label name (resolved only locally)"),
        None => None,
    }
}

/// A trait so tests and callers with their own DNS (caching, DoH) can plug in.
pub trait Resolver {
    /// Every address of `host`; `port` is for resolvers that want it (`getaddrinfo`).
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = io::Result<Vec<IpAddr>>> + Send;
}

/// The operating system's resolver, via [`tokio::net::lookup_host`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<IpAddr>> {
        let addrs = tokio::net::lookup_host((host, port)).await?;
        Ok(addrs.map(|addr| addr.ip()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const PROD: UrlPolicy = UrlPolicy::Production;
    const DEV: UrlPolicy = UrlPolicy::Development;

    fn rule_of(result: Result<Url, UrlPolicyError>) -> Option<&'static str> {
        result.err().map(|err| err.rule())
    }

    #[test]
    fn port_zero_and_empty_labels_are_rejected_by_every_policy() {
        for policy in [UrlPolicy::Production, UrlPolicy::Development] {
            for (url, rule) in [
                ("https://hooks.example.com:0/a", "port"),
                ("https://93.184.216.34:0/", "port"),
                ("https://a..b/", "host-name"),
                ("https://hooks..example.com/a", "host-name"),
                ("https://.example.com/", "host-name"),
                ("https://example.com../", "host-name"),
            ] {
                let err = policy.check(url).unwrap_err();
                assert_eq!(err.rule(), rule, "{policy:?} {url}: {err}");
            }
            // One trailing dot is a fully qualified name, not an empty label.
            assert!(policy.check("https://example.com./a").is_ok());
            assert!(policy.check("https://example.com:1/a").is_ok());
        }
    }

    /// (url, expected production rule, expected development rule); `None` = accepted.
    #[rustfmt::skip]
    const CASES: &[(&str, Option<&str>, Option<&str>)] = &[
        // Valid everywhere.
        ("https://example.com/hook", None, None),
        ("https://93.184.216.34/x", None, None),
        ("https://[2606:4700::1111]/", None, None),
        ("https://hooks.example.com:8443/a?b=c", None, None),
        ("https://EXAMPLE.com./hook", None, None),
        ("https://notlocalhost.com/", None, None),
        ("https://localhost.example.com/", None, None),
        ("https://hooks.mylocal/", None, None),
        ("https://api.example.notinternal/", None, None),
        ("https://[::ffff:93.184.216.34]/", None, None),
        ("https://[64:ff9b::5db8:d822]/", None, None),
        ("https://[2002:5db8:d822::1]/", None, None),
        // Scheme.
        ("http://127.0.0.1", Some("scheme"), None),
        ("http://example.com/", Some("scheme"), None),
        ("ftp://example.com/", Some("scheme"), Some("scheme")),
        ("file:///etc/passwd", Some("scheme"), Some("scheme")),
        ("gopher://127.0.0.1:6379/_", Some("scheme"), Some("scheme")),
        ("javascript:alert(1)", Some("scheme"), Some("scheme")),
        ("data:text/plain,hi", Some("scheme"), Some("scheme")),
        // Syntax.
        ("", Some("syntax"), Some("syntax")),
        ("https://", Some("syntax"), Some("syntax")),
        ("not a url", Some("syntax"), Some("syntax")),
        ("//example.com/", Some("syntax"), Some("syntax")),
        ("https://1.2.3.4.5/", Some("syntax"), Some("syntax")),
        ("https://256.0.0.1/", Some("syntax"), Some("syntax")),
        ("https://[::1/", Some("syntax"), Some("syntax")),
        ("https://exa mple.com/", Some("syntax"), Some("syntax")),
        // Userinfo.
        ("https://user:pw@example.com/", Some("userinfo"), Some("userinfo")),
        ("https://user@example.com/", Some("userinfo"), Some("userinfo")),
        ("https://:pw@example.com/", Some("userinfo"), Some("userinfo")),
        ("http://user:pw@127.0.0.1/", Some("scheme"), Some("userinfo")),
        // Loopback in every spelling.
        ("https://127.0.0.1/", Some("loopback"), None),
        ("https://127.1", Some("loopback"), None),
        ("https://2130706433/", Some("loopback"), None),
        ("https://0x7f.1/", Some("loopback"), None),
        ("https://0177.0.0.1/", Some("loopback"), None),
        ("https://0x7F000001/", Some("loopback"), None),
        ("https://127.0.0.1./", Some("loopback"), None),
        ("https://127.255.255.254:8443/", Some("loopback"), None),
        ("https://[::1]/", Some("loopback"), None),
        ("https://[0:0:0:0:0:0:0:1]/", Some("loopback"), None),
        ("https://[::ffff:127.0.0.1]/", Some("loopback"), None),
        ("https://[::ffff:7f00:1]/", Some("loopback"), None),
        ("https://[::127.0.0.1]/", Some("loopback"), None),
        ("https://[64:ff9b::7f00:1]/", Some("loopback"), None),
        ("https://[2002:7f00:1::]/", Some("loopback"), None),
        // Local names.
        ("https://localhost/", Some("local-name"), None),
        ("https://localhost./", Some("local-name"), None),
        ("https://foo.localhost/", Some("local-name"), None),
        ("https://LOCALHOST/", Some("local-name"), None),
        ("https://\u{ff4c}\u{ff4f}\u{ff43}\u{ff41}\u{ff4c}\u{ff48}\u{ff4f}\u{ff53}\u{ff54}/", Some("local-name"), None),
        ("https://localhost.localdomain/", Some("local-name"), None),
        ("https://printer.local/", Some("local-name"), None),
        ("https://metadata.google.internal/computeMetadata/v1/", Some("local-name"), None),
        ("https://router.home.arpa/", Some("local-name"), None),
        ("https://intranet/", Some("local-name"), None),
        // Other non-public IPv4.
        ("https://169.254.169.254/latest/meta-data", Some("link-local"), Some("link-local")),
        ("https://[64:ff9b::a9fe:a9fe]/", Some("link-local"), Some("link-local")),
        ("https://10.0.0.1/", Some("private"), None),
        ("https://172.16.5.4/", Some("private"), None),
        ("https://172.31.255.255/", Some("private"), None),
        ("https://192.168.1.1/", Some("private"), None),
        ("https://[2002:c0a8:0101::1]/", Some("private"), None),
        ("https://[::ffff:10.1.2.3]/", Some("private"), None),
        ("https://100.64.0.1/", Some("cgnat"), None),
        ("https://100.127.255.255/", Some("cgnat"), None),
        ("https://224.0.0.1/", Some("multicast"), None),
        ("https://239.255.255.250/", Some("multicast"), None),
        ("https://255.255.255.255/", Some("broadcast"), None),
        ("https://0.0.0.0/", Some("unspecified"), None),
        ("https://0/", Some("unspecified"), None),
        ("https://0.1.2.3/", Some("this-network"), None),
        ("https://192.0.2.1/", Some("documentation"), None),
        ("https://198.51.100.7/", Some("documentation"), None),
        ("https://203.0.113.9/", Some("documentation"), None),
        ("https://198.18.0.1/", Some("benchmarking"), None),
        ("https://198.19.255.255/", Some("benchmarking"), None),
        ("https://192.0.0.8/", Some("ietf-protocol"), None),
        ("https://192.88.99.1/", Some("deprecated"), None),
        ("https://240.0.0.1/", Some("reserved"), None),
        // Edges just outside non-public ranges stay public.
        ("https://172.32.0.1/", None, None),
        ("https://100.128.0.1/", None, None),
        ("https://198.20.0.1/", None, None),
        ("https://223.255.255.255/", None, None),
        // Other non-public IPv6.
        ("https://[::]/", Some("unspecified"), None),
        ("https://[fd00::1]/", Some("unique-local"), None),
        ("https://[fd00:ec2::254]/", Some("unique-local"), None),
        ("https://[fe80::1]/", Some("link-local"), Some("link-local")),
        ("https://[fec0::1]/", Some("site-local"), None),
        ("https://[ff02::1]/", Some("multicast"), None),
        ("https://[2001:db8::1]/", Some("documentation"), None),
        ("https://[3fff::1]/", Some("documentation"), None),
        ("https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", Some("teredo"), None),
        ("https://[2001:2::1]/", Some("ietf-protocol"), None),
        ("https://[64:ff9b:1::5db8:d822]/", Some("nat64-local"), None),
        ("https://[::5db8:d822]/", Some("deprecated"), None),
        ("https://[100::1]/", Some("reserved"), None),
        ("https://[4000::1]/", Some("reserved"), None),
    ];

    #[test]
    fn table_of_urls() {
        let mut failures = Vec::new();
        for &(raw, prod, dev) in CASES {
            for (policy, expected) in [(PROD, prod), (DEV, dev)] {
                let got = rule_of(policy.check(raw));
                if got != expected {
                    failures.push(format!(
                        "{policy} {raw:?}: expected {expected:?}, got {got:?}"
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn length_limit_applies_to_input_and_normalised_form() {
        let base = "https://example.com/";
        let at_limit = format!("{base}{}", "a".repeat(MAX_URL_LEN - base.len()));
        assert!(PROD.check(&at_limit).is_ok());
        for policy in [PROD, DEV] {
            let over = format!("{at_limit}a");
            match policy.check(&over) {
                Err(UrlPolicyError::TooLong { len, max }) => {
                    assert_eq!((len, max), (MAX_URL_LEN + 1, MAX_URL_LEN));
                }
                other => panic!("expected TooLong, got {other:?}"),
            }
            // 700 spaces become 2100 bytes of `%20` once normalised.
            let expands = format!("{base}a{}b", " ".repeat(700));
            assert!(expands.len() <= MAX_URL_LEN);
            assert_eq!(rule_of(policy.check(&expands)), Some("length"));
        }
    }

    #[test]
    fn check_returns_the_normalised_url() {
        let url = PROD.check("https://HOOKS.Example.com:443/a b").unwrap();
        assert_eq!(url.as_str(), "https://hooks.example.com/a%20b");
    }

    #[test]
    fn messages_say_which_rule_failed() {
        let cases = [
            (
                "https://127.0.0.1/",
                "rejected: host 127.0.0.1 is a loopback address",
            ),
            (
                "https://0x7f.1/",
                "rejected: host 127.0.0.1 is a loopback address",
            ),
            (
                "http://example.com/",
                "rejected: scheme \"http\" is not allowed by the production policy",
            ),
            (
                "https://a:b@example.com/",
                "rejected: URL must not contain a username or password",
            ),
            (
                "https://LocalHost./",
                "rejected: host localhost. is a loopback name (RFC 6761)",
            ),
            ("https://", "rejected: not a valid URL (empty host)"),
        ];
        for (raw, message) in cases {
            assert_eq!(PROD.check(raw).unwrap_err().to_string(), message, "{raw}");
        }
    }

    #[test]
    fn policy_parses_case_insensitively_and_round_trips() {
        assert_eq!(UrlPolicy::default(), PROD);
        for (input, expected) in [
            ("production", PROD),
            ("PRODUCTION", PROD),
            ("Development", DEV),
            ("development", DEV),
        ] {
            assert_eq!(input.parse::<UrlPolicy>(), Ok(expected), "{input}");
        }
        for policy in [PROD, DEV] {
            assert_eq!(policy.to_string().parse::<UrlPolicy>(), Ok(policy));
        }
        for bad in ["", "prod", "dev", " production", "staging"] {
            let err = bad.parse::<UrlPolicy>().unwrap_err();
            assert_eq!(err.input, bad);
        }
    }

    #[test]
    fn classify_ip_agrees_with_std_where_std_has_an_opinion() {
        let samples: [IpAddr; 8] = [
            Ipv4Addr::new(127, 3, 2, 1).into(),
            Ipv4Addr::new(192, 168, 7, 7).into(),
            Ipv4Addr::new(169, 254, 1, 1).into(),
            Ipv4Addr::new(8, 8, 8, 8).into(),
            Ipv6Addr::LOCALHOST.into(),
            Ipv6Addr::new(0xff05, 0, 0, 0, 0, 0, 0, 2).into(),
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 9).into(),
            Ipv6Addr::new(0x2606, 0x4700, 0, 0, 0, 0, 0, 0x1111).into(),
        ];
        let expected = [
            Some(NonPublic::Loopback),
            Some(NonPublic::Private),
            Some(NonPublic::LinkLocal),
            None,
            Some(NonPublic::Loopback),
            Some(NonPublic::Multicast),
            Some(NonPublic::LinkLocal),
            None,
        ];
        for (ip, expected) in samples.into_iter().zip(expected) {
            assert_eq!(classify_ip(ip), expected, "{ip}");
        }
    }

    /// Answers from a fixed table and counts calls; unknown names fail.
    #[derive(Default)]
    struct FakeResolver {
        answers: Vec<(&'static str, Vec<IpAddr>)>,
        calls: AtomicUsize,
    }

    impl FakeResolver {
        fn with(answers: &[(&'static str, &[&str])]) -> Self {
            let answers = answers
                .iter()
                .map(|(host, ips)| (*host, ips.iter().map(|ip| ip.parse().unwrap()).collect()))
                .collect();
            Self {
                answers,
                calls: AtomicUsize::new(0),
            }
        }
    }

    impl Resolver for FakeResolver {
        fn resolve(
            &self,
            host: &str,
            _port: u16,
        ) -> impl Future<Output = io::Result<Vec<IpAddr>>> + Send {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let answer = self
                .answers
                .iter()
                .find(|(name, _)| *name == host)
                .map(|(_, ips)| ips.clone())
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host"));
            std::future::ready(answer)
        }
    }

    fn fake() -> FakeResolver {
        FakeResolver::with(&[
            ("public.example.com", &["93.184.216.34", "2606:4700::1111"]),
            ("inside.example.com", &["10.0.0.5"]),
            ("mixed.example.com", &["93.184.216.34", "192.168.0.7"]),
            ("mapped.example.com", &["::ffff:127.0.0.1"]),
            ("dupes.example.com", &["93.184.216.34", "93.184.216.34"]),
            ("empty.example.com", &[]),
            ("metadata.example.com", &["10.0.0.5", "169.254.169.254"]),
        ])
    }

    async fn resolved(
        policy: UrlPolicy,
        raw: &str,
        resolver: &FakeResolver,
    ) -> Result<Vec<SocketAddr>, UrlPolicyError> {
        let url = Url::parse(raw).unwrap();
        policy.check_resolved(&url, resolver).await
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|addr| addr.parse().unwrap()).collect()
    }

    #[tokio::test]
    async fn resolved_public_addresses_are_returned_with_the_port() {
        let resolver = fake();
        let got = resolved(PROD, "https://public.example.com:8443/h", &resolver).await;
        assert_eq!(
            got.unwrap(),
            addrs(&["93.184.216.34:8443", "[2606:4700::1111]:8443"])
        );
        let got = resolved(PROD, "https://dupes.example.com/", &resolver).await;
        assert_eq!(got.unwrap(), addrs(&["93.184.216.34:443"]));
    }

    #[tokio::test]
    async fn any_non_public_resolved_address_rejects_in_production() {
        let resolver = fake();
        for (raw, bad, rule) in [
            ("https://inside.example.com/", "10.0.0.5", "private"),
            ("https://mixed.example.com/", "192.168.0.7", "private"),
            (
                "https://mapped.example.com/",
                "::ffff:127.0.0.1",
                "loopback",
            ),
        ] {
            match resolved(PROD, raw, &resolver).await {
                Err(err @ UrlPolicyError::ResolvesToNonPublic { addr, .. }) => {
                    assert_eq!(addr, bad.parse::<IpAddr>().unwrap(), "{raw}");
                    assert_eq!(err.rule(), rule, "{raw}");
                }
                other => panic!("{raw}: expected ResolvesToNonPublic, got {other:?}"),
            }
        }
        let got = resolved(DEV, "http://inside.example.com:8080/", &resolver).await;
        assert_eq!(got.unwrap(), addrs(&["10.0.0.5:8080"]));
        // Development allows private receivers, never the cloud metadata service.
        let got = resolved(DEV, "http://metadata.example.com/", &resolver).await;
        assert_eq!(got.unwrap_err().rule(), "link-local");
    }

    #[tokio::test]
    async fn resolver_failures_are_typed_errors() {
        let resolver = fake();
        match resolved(PROD, "https://missing.example.com/", &resolver).await {
            Err(UrlPolicyError::ResolutionFailed { host, source }) => {
                assert_eq!(host, "missing.example.com");
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected ResolutionFailed, got {other:?}"),
        }
        let got = resolved(PROD, "https://empty.example.com/", &resolver).await;
        assert_eq!(got.unwrap_err().rule(), "no-addresses");
    }

    #[tokio::test]
    async fn literals_skip_resolution_and_static_rules_run_first() {
        let resolver = fake();
        let got = resolved(PROD, "https://93.184.216.34:8443/", &resolver).await;
        assert_eq!(got.unwrap(), addrs(&["93.184.216.34:8443"]));
        let got = resolved(DEV, "http://[::1]/", &resolver).await;
        assert_eq!(got.unwrap(), addrs(&["[::1]:80"]));
        // A URL stored under a laxer policy is re-checked before any lookup.
        let got = resolved(PROD, "http://public.example.com/", &resolver).await;
        assert_eq!(got.unwrap_err().rule(), "scheme");
        let got = resolved(PROD, "https://localhost/", &resolver).await;
        assert_eq!(got.unwrap_err().rule(), "local-name");
        assert_eq!(resolver.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn system_resolver_resolves_localhost_in_development() {
        fn assert_send<T: Send>(value: T) -> T {
            value
        }
        let url = Url::parse("http://localhost:8080/").unwrap();
        // The sender runs on a multi-threaded runtime, so the future must be `Send`.
        let got = assert_send(DEV.check_resolved(&url, &SystemResolver))
            .await
            .unwrap();
        assert!(!got.is_empty());
        for addr in got {
            assert!(addr.ip().is_loopback(), "{addr}");
            assert_eq!(addr.port(), 8080);
        }
    }

    /// Non-public IPv4 ranges with the rule each must report, written
    /// independently of the implementation (which leans on `std` predicates).
    const NON_PUBLIC_V4: &[(&str, &str)] = &[
        ("0.0.0.0/8", "this-network"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "cgnat"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "ietf-protocol"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "deprecated"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
    ];

    fn expected_v4_rule(ip: Ipv4Addr) -> Option<&'static str> {
        match ip {
            Ipv4Addr::UNSPECIFIED => Some("unspecified"),
            Ipv4Addr::BROADCAST => Some("broadcast"),
            _ => NON_PUBLIC_V4
                .iter()
                .find(|(net, _)| net.parse::<Ipv4Net>().unwrap().contains(&ip))
                .map(|&(_, rule)| rule),
        }
    }

    fn non_public_v4() -> impl Strategy<Value = Ipv4Addr> {
        (prop::sample::select(NON_PUBLIC_V4), any::<u32>()).prop_map(|((net, _), bits)| {
            let net: Ipv4Net = net.parse().unwrap();
            Ipv4Addr::from_bits(net.network().to_bits() | (bits & net.hostmask().to_bits()))
        })
    }

    /// Spellings the WHATWG parser turns back into `ip` itself.
    fn ipv4_spellings(ip: Ipv4Addr) -> Vec<String> {
        let [a, b, c, d] = ip.octets();
        let n = u32::from(ip);
        let low16 = n & 0xffff;
        let low24 = n & 0x00ff_ffff;
        vec![
            format!("{a}.{b}.{c}.{d}"),
            format!("{a}.{b}.{c}.{d}."),
            format!("{n}"),
            format!("0x{n:x}"),
            format!("0X{n:08X}"),
            format!("0{n:o}"),
            format!("0x{a:x}.0x{b:x}.0x{c:x}.0x{d:x}"),
            format!("0{a:o}.0{b:o}.0{c:o}.0{d:o}"),
            format!("0x{a:02x}.{b}.0{c:o}.{d}"),
            format!("{a}.{b}.{low16}"),
            format!("{a}.0x{low24:x}"),
            format!("{a}.{low24}"),
        ]
    }

    /// IPv6 literals that carry `ip` as their destination.
    fn ipv6_embeddings(ip: Ipv4Addr) -> Vec<String> {
        let n = u32::from(ip);
        let (hi, lo) = (n >> 16, n & 0xffff);
        vec![
            format!("[::ffff:{ip}]"),
            format!("[::ffff:{hi:x}:{lo:x}]"),
            format!("[0:0:0:0:0:ffff:{hi:x}:{lo:x}]"),
            format!("[64:ff9b::{ip}]"),
            format!("[64:ff9b::{hi:x}:{lo:x}]"),
            format!("[2002:{hi:x}:{lo:x}::1]"),
            format!("[::{ip}]"),
        ]
    }

    /// Non-public IPv6 ranges with their rule, independent of `V6_NETS`.
    const NON_PUBLIC_V6: &[(&str, &str)] = &[
        ("fc00::/7", "unique-local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
        ("2001:db8::/32", "documentation"),
        ("2001::/32", "teredo"),
        ("::1/128", "loopback"),
    ];

    /// IPv6 forms that route to `ip`, which must therefore be judged by it.
    fn ipv6_carrying(ip: Ipv4Addr, tail: u16) -> [Ipv6Addr; 2] {
        let [a, b, c, d] = ip.octets();
        let (hi, lo) = (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
        [
            Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo),
            Ipv6Addr::new(0x2002, hi, lo, tail, 0, 0, 0, tail),
        ]
    }

    proptest! {
        #[test]
        fn non_public_ipv4_rejected_in_every_spelling(ip in non_public_v4()) {
            let expected = expected_v4_rule(ip);
            prop_assert!(expected.is_some());
            for host in ipv4_spellings(ip) {
                match PROD.check(&format!("https://{host}/x")) {
                    Err(err @ UrlPolicyError::NonPublicAddress { .. }) => {
                        prop_assert_eq!(Some(err.rule()), expected, "{}", host);
                        let UrlPolicyError::NonPublicAddress { host: parsed, .. } = err else {
                            unreachable!()
                        };
                        prop_assert_eq!(parsed, ip.to_string(), "{}", host);
                    }
                    other => prop_assert!(false, "{host}: expected NonPublicAddress, got {other:?}"),
                }
                let dev = rule_of(DEV.check(&format!("http://{host}/x")));
                prop_assert_eq!(dev, expected.filter(|&rule| rule == "link-local"), "{}", host);
            }
            for host in ipv6_embeddings(ip) {
                let result = PROD.check(&format!("https://{host}/"));
                prop_assert!(
                    matches!(result, Err(UrlPolicyError::NonPublicAddress { .. })),
                    "{}: {:?}", host, result
                );
            }
        }

        #[test]
        fn every_ipv4_is_classified_as_the_reference_table_says(ip in any::<Ipv4Addr>()) {
            let expected = expected_v4_rule(ip);
            prop_assert_eq!(rule_of(PROD.check(&format!("https://{ip}/"))), expected);
            prop_assert_eq!(classify_ip(ip.into()).map(NonPublic::rule), expected);
        }

        #[test]
        fn ipv4_mapped_ipv6_is_judged_as_ipv4(ip in any::<Ipv4Addr>()) {
            let mapped = ip.to_ipv6_mapped();
            prop_assert_eq!(classify_ip(mapped.into()), classify_ip(ip.into()), "{}", mapped);
            let raw = format!("https://[{mapped}]/");
            prop_assert_eq!(rule_of(PROD.check(&raw)), expected_v4_rule(ip), "{}", raw);
        }

        #[test]
        fn ipv6_forms_carrying_ipv4_are_judged_by_it(ip in any::<Ipv4Addr>(), tail in any::<u16>()) {
            let expected = expected_v4_rule(ip);
            for v6 in ipv6_carrying(ip, tail) {
                prop_assert_eq!(classify_ip(v6.into()).map(NonPublic::rule), expected, "{}", v6);
            }
            // `::` and `::1` are not IPv4-compatible forms but addresses of their own.
            let compatible = ip.to_ipv6_compatible();
            if ip.to_bits() > 1 {
                let got = classify_ip(compatible.into()).map(NonPublic::rule);
                prop_assert_eq!(got, expected.or(Some("deprecated")), "{}", compatible);
            }
        }

        #[test]
        fn non_public_ipv6_rejected(
            (net, rule) in prop::sample::select(NON_PUBLIC_V6),
            bits in any::<u128>(),
        ) {
            let net: Ipv6Net = net.parse().unwrap();
            let ip = Ipv6Addr::from_bits(net.network().to_bits() | (bits & net.hostmask().to_bits()));
            let raw = format!("https://[{ip}]/");
            prop_assert_eq!(rule_of(PROD.check(&raw)), Some(rule), "{}", raw);
            let dev = rule_of(DEV.check(&raw.replacen("https", "http", 1)));
            prop_assert_eq!(dev, Some(rule).filter(|&rule| rule == "link-local"), "{}", raw);
        }

        #[test]
        fn global_unicast_ipv6_accepted(bits in any::<u128>()) {
            let global: Ipv6Net = "2000::/3".parse().unwrap();
            let ip = Ipv6Addr::from_bits(global.network().to_bits() | (bits & global.hostmask().to_bits()));
            let special = ["2001::/23", "2002::/16", "3fff::/20"];
            prop_assume!(!special.iter().any(|net| net.parse::<Ipv6Net>().unwrap().contains(&ip)));
            prop_assert_eq!(rule_of(PROD.check(&format!("https://[{ip}]/"))), None, "{}", ip);
        }

        #[test]
        fn check_never_panics_on_text(s in "\\PC*") {
            let _ = PROD.check(&s);
            let _ = DEV.check(&s);
        }

        #[test]
        fn check_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let s = String::from_utf8_lossy(&bytes);
            let _ = PROD.check(&s);
            let _ = DEV.check(&s);
        }

        #[test]
        fn accepted_urls_are_https_and_stable(
            authority in prop_oneof!["\\PC*", "[a-zA-Z0-9.:%@\\[\\]x-]{0,40}"],
        ) {
            if let Ok(url) = PROD.check(&format!("https://{authority}/")) {
                prop_assert_eq!(url.scheme(), "https");
                prop_assert!(url.host().is_some());
                let again = PROD.check(url.as_str()).ok();
                prop_assert_eq!(again.as_ref(), Some(&url));
            }
        }
    }
}

//! `Outbound`: the one HTTP client that talks to hosts a device chose, guarded against
//! server-side request forgery.
//!
//! A device picks its push URL, so without care the server would fetch any URL an account
//! holder names, including the cloud metadata service or an admin page on the private network.
//!
//! Invariants:
//! - Only `https` URLs, unless `push.allow_http` is set.
//! - The host is resolved once per attempt; every resolved address is classified
//!   ([`classify`]) and the connection goes to one of the addresses that passed, never to a
//!   name. So a DNS answer that changes between the check and the connection (rebinding)
//!   cannot slip an internal address past the check.
//! - Loopback, private, link-local, CGNAT, multicast, unspecified, reserved, IPv6 ULA and
//!   link-local addresses (and IPv4 addresses embedded in IPv6 ones) are refused unless an
//!   operator lists a covering CIDR in `push.allowed_cidrs`.
//! - Redirects are never followed: a 3xx is just an answer.
//! - At most [`MAX_RESPONSE_BYTES`] of a response body are read; the rest is never pulled
//!   off the socket, and the connection is closed.
//! - Every step has a deadline: the TCP connection, and the whole exchange.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

pub use crate::cidr::Cidr;
use crate::cidr::canonical;

/// The most of a response body ever read. Push services answer with a few bytes at most; a
/// host that sends more gets its connection closed instead of our memory.
pub const MAX_RESPONSE_BYTES: usize = 4096;

/// What an address is, as far as reaching it from the server goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// On the public internet: may be reached.
    Public,
    Unspecified,
    Loopback,
    /// RFC 1918 private networks.
    Private,
    /// 169.254.0.0/16 (cloud metadata services live here) and fe80::/10.
    LinkLocal,
    /// 100.64.0.0/10, carrier-grade NAT.
    SharedCgnat,
    Multicast,
    Broadcast,
    /// IPv6 unique local addresses, fc00::/7.
    UniqueLocal,
    /// Documentation, benchmarking, protocol-assignment and other special-purpose ranges.
    Reserved,
}

/// The rules a destination must pass: the scheme and the resolved address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Plain `http` URLs are allowed (tests; a push service on a trusted network).
    pub allow_http: bool,
    /// Addresses allowed whatever their class.
    pub allowed: Vec<Cidr>,
}

/// Resolves a host name to addresses. The system resolver in production; tests plug in
/// their own to show what happens when a name resolves to an internal address.
pub trait Resolve: Send + Sync + fmt::Debug {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>>;
}

/// The operating system's resolver (`getaddrinfo`, through tokio's blocking pool).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

/// Deadlines of an outbound exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// For each TCP connection attempt.
    pub connect: Duration,
    /// For the whole exchange: resolution, connection, TLS, request, response head and body.
    pub request: Duration,
}

/// An HTTP client that only reaches destinations its [`Policy`] allows.
#[derive(Clone)]
pub struct Outbound {
    policy: Policy,
    timeouts: Timeouts,
    resolver: Arc<dyn Resolve>,
    tls: tokio_rustls::TlsConnector,
}

/// A request to send: the body is small and fully known up front.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(header::HeaderName, header::HeaderValue)>,
    pub body: Bytes,
}

/// What came back: the status, the headers and at most [`MAX_RESPONSE_BYTES`] of the body
/// (or the cap given to [`Outbound::send_limited`]).
#[derive(Debug, Clone)]
pub struct OutboundResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The body went on past the cap and was not read further.
    pub truncated: bool,
    /// The whole body arrived: not cut by the cap, the deadline or a broken connection.
    pub complete: bool,
}

/// Why an exchange did not produce a response.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The policy forbids this destination; trying again will not help.
    #[error("refused: {0}")]
    Refused(String),
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// A URL split into what a connection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// Without brackets for IPv6 literals.
    pub host: String,
    pub port: u16,
    /// `Host` header value.
    pub authority: String,
    pub path_and_query: String,
}

/// Classifies an address. Only [`AddressClass::Public`] may be reached without an allow-list.
pub fn classify(ip: IpAddr) -> AddressClass {
    match canonical(ip) {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    use AddressClass::*;
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        (0, _, _) => Unspecified,
        (127, _, _) => Loopback,
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => Private,
        (169, 254, _) => LinkLocal,
        (100, 64..=127, _) => SharedCgnat,
        (224..=239, _, _) => Multicast,
        (255, 255, 255) if ip == Ipv4Addr::BROADCAST => Broadcast,
        // 240.0.0.0/4 (future use), 192.0.0.0/24 (protocol assignments), the three
        // documentation networks and 198.18.0.0/15 (benchmarking).
        (240..=255, _, _)
        | (192, 0, 0)
        | (192, 0, 2)
        | (198, 51, 100)
        | (203, 0, 113)
        | (198, 18..=19, _) => Reserved,
        _ => Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    use AddressClass::*;
    let segments = ip.segments();
    let bits = u128::from(ip);
    if ip.is_unspecified() {
        return Unspecified;
    }
    if ip.is_loopback() {
        return Loopback;
    }
    // Addresses that carry an IPv4 address the traffic ends up at: NAT64 (64:ff9b::/96) and
    // 6to4 (2002::/16) are judged by that address, so 64:ff9b::7f00:1 is loopback.
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return classify_v4(Ipv4Addr::from((bits & 0xffff_ffff) as u32));
    }
    if segments[0] == 0x2002 {
        return classify_v4(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    match segments[0] {
        0xfc00..=0xfdff => UniqueLocal,
        // fe80::/10 link-local, and fec0::/10 (deprecated site-local) with it.
        0xfe80..=0xfeff => LinkLocal,
        0xff00..=0xffff => Multicast,
        _ if bits >> 96 == 0 => Reserved, // ::/96, the deprecated IPv4-compatible addresses
        _ if segments[0] == 0x2001 && segments[1] == 0x0db8 => Reserved, // documentation
        _ if segments[0] == 0x2001 && segments[1] < 0x0200 => Reserved, // Teredo, ORCHID, …
        _ if segments[0] == 0x0100 && segments[1..4] == [0, 0, 0] => Reserved, // discard-only
        _ => Public,
    }
}

// === Policy ===

impl Policy {
    /// Whether the server may connect to `ip`; the reason when it may not.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), String> {
        if self.allowed.iter().any(|cidr| cidr.contains(ip)) {
            return Ok(());
        }
        match classify(ip) {
            AddressClass::Public => Ok(()),
            class => Err(format!("{ip} is a {} address", class.describe(),)),
        }
    }

    /// Checks what can be checked without resolving: the scheme, the host's form, and the
    /// address when the host is an IP literal. `Ok` does not mean the URL will be reached: a
    /// name can still resolve to an address the policy refuses.
    pub fn check_url(&self, url: &str) -> Result<Target, String> {
        let target = Target::parse(url)?;
        if !target.https && !self.allow_http {
            return Err("must be an https URL (this server does not send to plain http)".into());
        }
        if let Ok(ip) = target.host.parse::<IpAddr>() {
            self.check_address(ip)?;
        } else if is_local_name(&target.host) {
            // Resolves to loopback everywhere (RFC 6761), so it is as good as 127.0.0.1.
            self.check_address(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
        }
        Ok(target)
    }
}

/// `localhost` and names under it, which resolvers answer with loopback without asking DNS.
fn is_local_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

impl AddressClass {
    fn describe(self) -> &'static str {
        use AddressClass::*;
        match self {
            Public => "public",
            Unspecified => "unspecified",
            Loopback => "loopback",
            Private => "private",
            LinkLocal => "link-local",
            SharedCgnat => "carrier-grade NAT",
            Multicast => "multicast",
            Broadcast => "broadcast",
            UniqueLocal => "unique local",
            Reserved => "reserved",
        }
    }
}

// === Target ===

impl Target {
    /// Splits an absolute http(s) URL. Userinfo is refused: a push URL has no use for a
    /// password, and `https://good.example@evil.example/` is a classic way to mislead a reader.
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: Uri = url
            .parse()
            .map_err(|_| "must be an absolute http or https URL".to_owned())?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("must be an absolute http or https URL".into()),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| "must be an absolute http or https URL".to_owned())?;
        if authority.as_str().contains('@') {
            return Err("must not carry a user name or password".into());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err("must name a host".into());
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        if port == 0 {
            return Err("must not use port 0".into());
        }
        Ok(Target {
            https,
            host,
            port,
            authority: authority.as_str().to_owned(),
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

// === Resolvers ===

impl Resolve for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

// === Outbound ===

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbound")
            .field("policy", &self.policy)
            .field("timeouts", &self.timeouts)
            .field("resolver", &self.resolver)
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// A client that trusts the Mozilla root certificates (built in, so the host's
    /// certificate store, or the lack of one, does not matter).
    pub fn new(policy: Policy, timeouts: Timeouts, resolver: Arc<dyn Resolve>) -> Outbound {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        Outbound::with_roots(policy, timeouts, resolver, roots)
    }

    /// A client that trusts `roots` only (a private push service, tests).
    pub fn with_roots(
        policy: Policy,
        timeouts: Timeouts,
        resolver: Arc<dyn Resolve>,
        roots: rustls::RootCertStore,
    ) -> Outbound {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Outbound {
            policy,
            timeouts,
            resolver,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Sends one request, within `timeouts.request`, to an address the policy allows, and
    /// reads at most [`MAX_RESPONSE_BYTES`] of the answer.
    ///
    /// Cancel safety: dropping the future closes the connection; nothing else is held.
    pub async fn send(&self, request: &OutboundRequest) -> Result<OutboundResponse, OutboundError> {
        self.send_limited(request, MAX_RESPONSE_BYTES).await
    }

    /// Like [`Outbound::send`], reading at most `max_body` bytes of the answer: for a
    /// destination whose answers are data (a storage the user linked), not just a status.
    pub async fn send_limited(
        &self,
        request: &OutboundRequest,
        max_body: usize,
    ) -> Result<OutboundResponse, OutboundError> {
        let deadline = Instant::now() + self.timeouts.request;
        let timed_out = |_| OutboundError::Timeout(self.timeouts.request);
        let target = self
            .policy
            .check_url(&request.url)
            .map_err(OutboundError::Refused)?;
        let stream = timeout_at(deadline, self.connect(&target))
            .await
            .map_err(timed_out)??;
        if target.https {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| OutboundError::Refused(format!("invalid TLS server name: {e}")))?;
            let tls = timeout_at(deadline, self.tls.connect(name, stream))
                .await
                .map_err(timed_out)?
                .map_err(OutboundError::Tls)?;
            exchange(
                tls,
                &target,
                request,
                deadline,
                self.timeouts.request,
                max_body,
            )
            .await
        } else {
            exchange(
                stream,
                &target,
                request,
                deadline,
                self.timeouts.request,
                max_body,
            )
            .await
        }
    }

    /// Resolves, keeps the addresses the policy allows, and connects to the first that
    /// answers. The address connected to is one that was checked: no second lookup.
    async fn connect(&self, target: &Target) -> Result<TcpStream, OutboundError> {
        let addrs = match target.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, target.port)],
            Err(_) => self
                .resolver
                .resolve(&target.host, target.port)
                .await
                .map_err(|source| OutboundError::Resolve {
                    host: target.host.clone(),
                    source,
                })?,
        };
        let mut refusals = Vec::new();
        let allowed: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|addr| match self.policy.check_address(addr.ip()) {
                Ok(()) => true,
                Err(reason) => {
                    refusals.push(reason);
                    false
                }
            })
            .collect();
        if allowed.is_empty() {
            return Err(if refusals.is_empty() {
                OutboundError::Resolve {
                    host: target.host.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
                }
            } else {
                OutboundError::Refused(format!(
                    "{} resolves to {}",
                    target.host,
                    refusals.join(", ")
                ))
            });
        }
        let mut last = None;
        for addr in allowed {
            match tokio::time::timeout(self.timeouts.connect, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connecting to {addr} took over {:?}", self.timeouts.connect),
                    ))
                }
            }
        }
        Err(OutboundError::Connect(last.unwrap_or_else(|| {
            std::io::Error::other("no address to connect to")
        })))
    }
}

/// One HTTP/1.1 request on a fresh connection, then the connection is closed.
async fn exchange<S>(
    io: S,
    target: &Target,
    request: &OutboundRequest,
    deadline: Instant,
    limit: Duration,
    max_body: usize,
) -> Result<OutboundResponse, OutboundError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timed_out = |_| OutboundError::Timeout(limit);
    let (mut sender, connection) = timeout_at(
        deadline,
        hyper::client::conn::http1::handshake(TokioIo::new(io)),
    )
    .await
    .map_err(timed_out)??;
    // The connection is driven by its own task, aborted when this exchange ends so that a
    // peer still sending a body does not keep the socket (or the task) alive.
    let driver = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let mut builder = Request::builder()
        .method(request.method.clone())
        .uri(&target.path_and_query)
        .header(header::HOST, &target.authority)
        .header(
            header::USER_AGENT,
            concat!("wheresmyfox/", env!("CARGO_PKG_VERSION")),
        )
        .header(header::CONNECTION, "close")
        .header(header::CONTENT_LENGTH, request.body.len());
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    let outgoing = builder
        .body(Full::new(request.body.clone()))
        .map_err(|e| OutboundError::Refused(format!("cannot build the request: {e}")))?;
    let response = timeout_at(deadline, sender.send_request(outgoing))
        .await
        .map_err(timed_out)??;
    let (parts, mut body) = response.into_parts();
    let mut collected = BytesMut::new();
    let mut truncated = false;
    let mut complete = false;
    // For a push service the status is what matters and the body is read only for the log;
    // either way it is read within the cap and the deadline, and a body that is slow or
    // endless is simply cut (and then not `complete`).
    loop {
        match timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    let room = max_body - collected.len();
                    if data.len() > room {
                        collected.extend_from_slice(&data[..room]);
                        truncated = true;
                        break;
                    }
                    collected.extend_from_slice(&data);
                }
            }
            Ok(None) => {
                complete = true;
                break;
            }
            Ok(Some(Err(_))) | Err(_) => break,
        }
    }
    drop(body);
    drop(driver);
    Ok(OutboundResponse {
        status: parts.status,
        headers: parts.headers,
        body: collected.freeze(),
        truncated,
        complete,
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv4_ranges_are_classified() {
        use AddressClass::*;
        for (addr, class) in [
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("10.0.0.1", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("169.254.169.254", LinkLocal),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("255.255.255.255", Broadcast),
            ("240.0.0.1", Reserved),
            ("192.0.2.10", Reserved),
            ("198.18.0.1", Reserved),
            ("172.15.255.255", Public),
            ("172.32.0.1", Public),
            ("100.63.255.255", Public),
            ("100.128.0.1", Public),
            ("8.8.8.8", Public),
            ("1.1.1.1", Public),
        ] {
            assert_eq!(classify(ip(addr)), class, "{addr}");
        }
    }

    #[test]
    fn ipv6_ranges_are_classified() {
        use AddressClass::*;
        for (addr, class) in [
            ("::", Unspecified),
            ("::1", Loopback),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("ff02::1", Multicast),
            ("2001:db8::1", Reserved),
            ("::7f00:1", Reserved),
            ("2606:4700:4700::1111", Public),
            ("2a00:1450:4001:80b::200e", Public),
        ] {
            assert_eq!(classify(ip(addr)), class, "{addr}");
        }
    }

    #[test]
    fn ipv4_inside_ipv6_is_judged_as_ipv4() {
        use AddressClass::*;
        assert_eq!(classify(ip("::ffff:127.0.0.1")), Loopback);
        assert_eq!(classify(ip("::ffff:169.254.169.254")), LinkLocal);
        assert_eq!(classify(ip("::ffff:8.8.8.8")), Public);
        assert_eq!(classify(ip("64:ff9b::7f00:1")), Loopback);
        assert_eq!(classify(ip("64:ff9b::a00:1")), Private);
        assert_eq!(classify(ip("64:ff9b::808:808")), Public);
        assert_eq!(classify(ip("2002:a00:1::1")), Private);
        assert_eq!(classify(ip("2002:808:808::1")), Public);
    }

    #[test]
    fn cidrs_parse_and_match() {
        let loopback: Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(loopback.contains(ip("127.1.2.3")));
        assert!(loopback.contains(ip("::ffff:127.0.0.1")));
        assert!(!loopback.contains(ip("128.0.0.1")));
        assert!(!loopback.contains(ip("::1")));
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains(ip("::1")));
        assert!(!one.contains(ip("::2")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("10.0.0.1")));
        let ula: Cidr = "fd00::/8".parse().unwrap();
        assert!(ula.contains(ip("fd12::1")));
        assert!(!ula.contains(ip("fc00::1")));
        assert_eq!(ula.to_string(), "fd00::/8");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("fd00::/129".parse::<Cidr>().is_err());
        assert!("example.com/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn the_policy_refuses_internal_addresses_unless_allowed() {
        let strict = Policy::default();
        assert!(strict.check_address(ip("8.8.8.8")).is_ok());
        let refused = strict.check_address(ip("169.254.169.254")).unwrap_err();
        assert!(refused.contains("link-local"), "{refused}");
        let lenient = Policy {
            allow_http: true,
            allowed: vec!["127.0.0.0/8".parse().unwrap()],
        };
        assert!(lenient.check_address(ip("127.0.0.1")).is_ok());
        assert!(lenient.check_address(ip("::1")).is_err());
        assert!(lenient.check_address(ip("10.0.0.1")).is_err());
    }

    #[test]
    fn urls_are_checked_before_any_lookup() {
        let strict = Policy::default();
        assert!(strict.check_url("https://push.example.com/x").is_ok());
        for (url, needle) in [
            ("http://push.example.com/x", "https"),
            ("ftp://push.example.com/x", "absolute"),
            ("push.example.com/x", "absolute"),
            ("https://10.1.2.3/x", "private"),
            ("https://[::1]:8443/x", "loopback"),
            ("https://[fe80::1]/x", "link-local"),
            ("https://169.254.169.254/latest/meta-data", "link-local"),
            ("https://localhost/x", "loopback"),
            ("https://a.localhost./x", "loopback"),
            ("https://user:pw@push.example.com/x", "password"),
            ("https://push.example.com:0/x", "port 0"),
        ] {
            let e = strict.check_url(url).unwrap_err();
            assert!(e.contains(needle), "{url}: {e}");
        }
        let target = strict
            .check_url("https://[2606:4700::1]:8443/a?b=c")
            .unwrap();
        assert_eq!(target.host, "2606:4700::1");
        assert_eq!(target.port, 8443);
        assert_eq!(target.authority, "[2606:4700::1]:8443");
        assert_eq!(target.path_and_query, "/a?b=c");
    }
}

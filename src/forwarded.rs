//! Who is really asking: the client's address, and the scheme and host it used, when requests
//! arrive through reverse proxies.
//!
//! Invariants:
//! - Forwarding headers (`Forwarded`, `X-Forwarded-For`, `X-Forwarded-Proto`,
//!   `X-Forwarded-Host`) are read only when the TCP peer is in `proxy.trusted`; from anyone else
//!   they are ignored, so a client cannot choose the address it is logged and limited under.
//! - The chain is walked from the right (the hop nearest to us), skipping trusted proxies; the
//!   first untrusted address is the client. What lies to its left was written by the client
//!   and is never believed.
//! - A value that cannot be parsed stops the walk at the last address we could vouch for: a
//!   hostile or broken header never yields an address nobody on the path wrote.
//! - `Forwarded` (RFC 7239), when present, wins over the `X-Forwarded-*` family.
//! - Pure: no I/O, no allocation beyond the answer, so it can be tested with any input.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

pub use crate::cidr::Cidr;
use crate::cidr::canonical;

/// How many hops are examined at most: a longer chain is someone padding the header.
const MAX_HOPS: usize = 32;

/// The scheme a client used to reach the outermost trusted proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http,
    Https,
}

/// What is known about the origin of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The real client address: used in logs and for anything keyed by client.
    pub client: IpAddr,
    /// The scheme the client used, when a trusted proxy told us.
    pub proto: Option<Proto>,
    /// The `Host` the client asked for (`host` or `host:port`), when a trusted proxy told us.
    pub host: Option<String>,
}

impl Origin {
    /// Only the address: nothing a proxy said about scheme or host is believed.
    fn bare(client: IpAddr) -> Origin {
        Origin {
            client,
            proto: None,
            host: None,
        }
    }
}

/// Resolves the origin of a request that came from `peer` with `headers`.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> Origin {
    let peer = canonical(peer);
    let untouched = Origin::bare(peer);
    if !is_trusted(peer, trusted) {
        return untouched;
    }
    if headers.contains_key(http::header::FORWARDED) {
        return from_forwarded(peer, headers, trusted);
    }
    if headers.contains_key("x-forwarded-for") {
        return from_x_forwarded(peer, headers, trusted);
    }
    untouched
}

/// The real client address of a request from `peer`; see [`resolve`].
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    resolve(peer, headers, trusted).client
}

fn is_trusted(ip: IpAddr, trusted: &[Cidr]) -> bool {
    trusted.iter().any(|cidr| cidr.contains(ip))
}

/// All values of a header, in order, as one comma-separated list (RFC 9110 §5.3). A value
/// that is not visible ASCII poisons the whole header: `None`.
fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut out = String::new();
    for value in headers.get_all(name) {
        let text = value.to_str().ok()?;
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(text);
    }
    Some(out)
}

// === Forwarded (RFC 7239) ===

/// One `Forwarded` element: the parameters one proxy added.
#[derive(Debug, Default)]
struct Element {
    for_node: Option<String>,
    proto: Option<String>,
    host: Option<String>,
}

fn from_forwarded(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> Origin {
    let stop = Origin::bare(peer);
    let Some(text) = joined(headers, http::header::FORWARDED.as_str()) else {
        return stop;
    };
    let Some(elements) = parse_forwarded(&text) else {
        return stop;
    };
    let mut vouched = peer;
    for element in elements.iter().rev().take(MAX_HOPS) {
        let Some(ip) = element.for_node.as_deref().and_then(parse_node) else {
            // `unknown`, an obfuscated name, or nothing: the trail ends at the last hop we trust.
            return Origin::bare(vouched);
        };
        if is_trusted(ip, trusted) {
            vouched = ip;
            continue;
        }
        return Origin {
            client: ip,
            proto: element.proto.as_deref().and_then(parse_proto),
            host: element.host.as_deref().and_then(parse_host),
        };
    }
    // Every hop is one of our proxies (or the chain was too long to believe further).
    Origin::bare(vouched)
}

/// Splits a `Forwarded` value into elements (`,`) of pairs (`;`), honouring quoted strings.
/// `None` when the syntax is broken anywhere: the header is then ignored as a whole.
fn parse_forwarded(text: &str) -> Option<Vec<Element>> {
    let mut elements = vec![Element::default()];
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
        let Some(&c) = chars.peek() else { break };
        if c == ',' || c == ';' {
            chars.next();
            if c == ',' {
                if elements.len() > MAX_HOPS * 4 {
                    return None;
                }
                elements.push(Element::default());
            }
            continue;
        }
        let mut name = String::new();
        while let Some(c) = chars.next_if(|c| is_token_char(*c)) {
            name.push(c.to_ascii_lowercase());
        }
        if name.is_empty() || chars.next() != Some('=') {
            return None;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| is_token_char(*c)) {
                value.push(c);
            }
            if value.is_empty() {
                return None;
            }
        }
        let element = elements.last_mut()?;
        let slot = match name.as_str() {
            "for" => &mut element.for_node,
            "proto" => &mut element.proto,
            "host" => &mut element.host,
            _ => continue,
        };
        // A parameter given twice in one element is not valid (RFC 7239 §4).
        if slot.replace(value).is_some() {
            return None;
        }
        while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
        if chars.peek().is_some_and(|c| *c != ',' && *c != ';') {
            return None;
        }
    }
    Some(elements)
}

/// `tchar` of RFC 9110, plus `:` `[` `]` which unquoted IPv6 nodes need in practice.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~:[]".contains(c)
}

/// A `for` node: `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]`, `[2001:db8::1]:4711`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Some(rest) = node.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.starts_with(':')) {
            return None;
        }
        return ip
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|ip| canonical(ip.into()));
    }
    if let Ok(ip) = node.parse::<std::net::Ipv4Addr>() {
        return Some(canonical(ip.into()));
    }
    let (ip, _port) = node.split_once(':')?;
    ip.parse::<std::net::Ipv4Addr>()
        .ok()
        .map(|ip| canonical(ip.into()))
}

// === X-Forwarded-* ===

fn from_x_forwarded(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> Origin {
    let stop = Origin::bare(peer);
    let Some(text) = joined(headers, "x-forwarded-for") else {
        return stop;
    };
    let hops: Vec<&str> = text.split(',').map(str::trim).collect();
    let mut vouched = peer;
    for (from_right, hop) in hops.iter().rev().take(MAX_HOPS).enumerate() {
        let Some(ip) = parse_x_forwarded_for(hop) else {
            return Origin::bare(vouched);
        };
        if is_trusted(ip, trusted) {
            vouched = ip;
            continue;
        }
        return Origin {
            client: ip,
            proto: nth_from_right(headers, "x-forwarded-proto", from_right, hops.len())
                .and_then(|p| parse_proto(&p)),
            host: nth_from_right(headers, "x-forwarded-host", from_right, hops.len())
                .and_then(|h| parse_host(&h)),
        };
    }
    Origin::bare(vouched)
}

/// An `X-Forwarded-For` entry: an address, or (as some proxies write) an address with a port.
fn parse_x_forwarded_for(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(canonical(addr.ip()));
    }
    None
}

/// The value of a companion header that describes the same hop as the `from_right`-th entry of
/// `X-Forwarded-For`. Proxies that append to both keep them aligned; one that sets a single
/// value (nginx's usual `proxy_set_header`) describes the hop it received, which is the client
/// when only one proxy is ours.
fn nth_from_right(
    headers: &HeaderMap,
    name: &str,
    from_right: usize,
    hops: usize,
) -> Option<String> {
    let text = joined(headers, name)?;
    let values: Vec<&str> = text.split(',').map(str::trim).collect();
    let value = if values.len() == hops {
        values[values.len() - 1 - from_right]
    } else {
        values.last()?
    };
    Some(value.to_owned())
}

fn parse_proto(value: &str) -> Option<Proto> {
    if value.eq_ignore_ascii_case("https") {
        Some(Proto::Https)
    } else if value.eq_ignore_ascii_case("http") {
        Some(Proto::Http)
    } else {
        None
    }
}

/// A host as a client would put it in `Host`: a DNS name, an IPv4 address or a bracketed IPv6
/// address, with an optional port. Anything else (user info, paths, the URI grammar's
/// sub-delimiters such as `;` or `,`, which no real host name carries) is dropped.
fn parse_host(value: &str) -> Option<String> {
    let authority: http::uri::Authority = value.parse().ok()?;
    let host = authority.host();
    let name = |h: &str| {
        !h.is_empty()
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    };
    let literal = |h: &str| {
        h.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
    };
    // `Authority` checks the port lazily: anything after the host must be `:` and a port.
    let port_ok =
        authority
            .as_str()
            .strip_prefix(host)
            .is_some_and(|rest| match rest.strip_prefix(':') {
                None => rest.is_empty(),
                Some(port) => port.len() <= 5 && port.parse::<u16>().is_ok(),
            });
    if authority.as_str().contains('@') || !(name(host) || literal(host)) || !port_ok {
        return None;
    }
    Some(authority.as_str().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    const PROXY: &str = "10.0.0.5";

    fn via_proxy(pairs: &[(&str, &[u8])]) -> Origin {
        resolve(ip(PROXY), &headers(pairs), &nets(&["10.0.0.0/8"]))
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("10.255.1.2")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped IPv6");
        let host: Cidr = "192.0.2.7".parse().unwrap();
        assert!(host.contains(ip("192.0.2.7")) && !host.contains(ip("192.0.2.8")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0/8",
            "host",
            "1.2.3.4/-1",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let claims = headers(&[
            ("x-forwarded-for", b"6.6.6.6"),
            ("forwarded", b"for=6.6.6.6;proto=https;host=evil.example"),
            ("x-forwarded-host", b"evil.example"),
        ]);
        let origin = resolve(ip("203.0.113.9"), &claims, &nets(&["10.0.0.0/8"]));
        assert_eq!(
            origin,
            Origin {
                client: ip("203.0.113.9"),
                proto: None,
                host: None
            }
        );
        // With nothing trusted (the default), even a private peer is taken at its word only.
        assert_eq!(client_addr(ip("10.0.0.5"), &claims, &[]), ip("10.0.0.5"));
    }

    #[test]
    fn x_forwarded_for_is_walked_from_the_right() {
        // The client put 6.6.6.6 in front; our proxy appended the address it saw.
        let o = via_proxy(&[("x-forwarded-for", b"6.6.6.6, 198.51.100.4")]);
        assert_eq!(o.client, ip("198.51.100.4"));
        // Two of our proxies in a row are skipped.
        let o = via_proxy(&[("x-forwarded-for", b"198.51.100.4, 10.1.1.1")]);
        assert_eq!(o.client, ip("198.51.100.4"));
        // Several header lines form one list.
        let o = via_proxy(&[
            ("x-forwarded-for", b"6.6.6.6"),
            ("x-forwarded-for", b"198.51.100.4, 10.1.1.1"),
        ]);
        assert_eq!(o.client, ip("198.51.100.4"));
        // Entries with ports, and IPv6.
        let o = via_proxy(&[("x-forwarded-for", b"198.51.100.4:5555")]);
        assert_eq!(o.client, ip("198.51.100.4"));
        let o = via_proxy(&[("x-forwarded-for", b"2001:db8::9")]);
        assert_eq!(o.client, ip("2001:db8::9"));
        let o = via_proxy(&[("x-forwarded-for", b"[2001:db8::9]:443")]);
        assert_eq!(o.client, ip("2001:db8::9"));
        // Only proxies: the leftmost of them.
        let o = via_proxy(&[("x-forwarded-for", b"10.9.9.9, 10.1.1.1")]);
        assert_eq!(o.client, ip("10.9.9.9"));
    }

    #[test]
    fn x_forwarded_proto_and_host_come_with_the_client_hop() {
        let o = via_proxy(&[
            ("x-forwarded-for", b"198.51.100.4"),
            ("x-forwarded-proto", b"https"),
            ("x-forwarded-host", b"Find.Example.com"),
        ]);
        assert_eq!(o.proto, Some(Proto::Https));
        assert_eq!(o.host.as_deref(), Some("find.example.com"));
        // Aligned lists: the values of the hop where the client was found.
        let o = via_proxy(&[
            ("x-forwarded-for", b"198.51.100.4, 10.1.1.1"),
            ("x-forwarded-proto", b"https, http"),
            ("x-forwarded-host", b"find.example.com, internal:8080"),
        ]);
        assert_eq!(o.proto, Some(Proto::Https));
        assert_eq!(o.host.as_deref(), Some("find.example.com"));
        // Junk is dropped, not passed on.
        let o = via_proxy(&[
            ("x-forwarded-for", b"198.51.100.4"),
            ("x-forwarded-proto", b"gopher"),
            ("x-forwarded-host", b"user@evil.example"),
        ]);
        assert_eq!((o.proto, o.host), (None, None));
    }

    #[test]
    fn forwarded_elements_are_walked_from_the_right() {
        let o = via_proxy(&[(
            "forwarded",
            b"for=6.6.6.6, for=198.51.100.4;proto=https;host=find.example.com, for=10.1.1.1",
        )]);
        assert_eq!(o.client, ip("198.51.100.4"));
        assert_eq!(o.proto, Some(Proto::Https));
        assert_eq!(o.host.as_deref(), Some("find.example.com"));
        let o = via_proxy(&[("forwarded", br#"For="[2001:db8:cafe::17]:4711""#)]);
        assert_eq!(o.client, ip("2001:db8:cafe::17"));
        let o = via_proxy(&[("forwarded", br#"for="198.51.100.4:4711";by=10.0.0.5"#)]);
        assert_eq!(o.client, ip("198.51.100.4"));
        // Forwarded wins over X-Forwarded-For.
        let o = via_proxy(&[
            ("forwarded", b"for=198.51.100.4"),
            ("x-forwarded-for", b"6.6.6.6"),
        ]);
        assert_eq!(o.client, ip("198.51.100.4"));
    }

    #[test]
    fn unknown_and_obfuscated_nodes_stop_at_the_last_trusted_hop() {
        let o = via_proxy(&[("forwarded", b"for=198.51.100.4, for=unknown")]);
        assert_eq!(o.client, ip(PROXY));
        let o = via_proxy(&[("forwarded", b"for=198.51.100.4, for=_hidden, for=10.1.1.1")]);
        assert_eq!(o.client, ip("10.1.1.1"));
        let o = via_proxy(&[("forwarded", b"proto=https")]);
        assert_eq!(o.client, ip(PROXY));
    }

    #[test]
    fn forwarded_hosts_are_bare_host_names_or_addresses() {
        for good in [
            "find.example.com",
            "find.example.com:8443",
            "10.0.0.1:80",
            "[2001:db8::1]:443",
        ] {
            assert_eq!(parse_host(good).as_deref(), Some(good), "{good}");
        }
        assert_eq!(
            parse_host("Find.Example.COM").as_deref(),
            Some("find.example.com")
        );
        // Found by the `forwarded` fuzz target: the URI grammar allows `;` in a host name, and
        // `http`'s `Authority` accepts anything after the colon until its port is asked for.
        for bad in [
            ";fi",
            "a,b",
            "user@host",
            "host/path",
            "",
            "[not-v6]",
            "a b",
        ] {
            assert_eq!(parse_host(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hostile_values_never_produce_an_address_nobody_wrote() {
        let cases: &[(&str, &[u8])] = &[
            ("x-forwarded-for", b""),
            ("x-forwarded-for", b",,,"),
            ("x-forwarded-for", b"6.6.6.6, not-an-ip"),
            ("x-forwarded-for", b"6.6.6.6, 198.51.100.4 extra"),
            ("x-forwarded-for", b"999.1.1.1"),
            ("x-forwarded-for", b"6.6.6.6\xff"),
            ("forwarded", b"for=\"6.6.6.6"),
            ("forwarded", b"for=6.6.6.6;for=7.7.7.7"),
            ("forwarded", b"for=6.6.6.6 junk"),
            ("forwarded", b"=6.6.6.6"),
            ("forwarded", b"for="),
            ("forwarded", b"for=[6.6.6.6]"),
            ("forwarded", b"for=\"[::1\""),
            ("forwarded", b"for=6.6.6.6\xff"),
        ];
        for (name, value) in cases {
            let o = via_proxy(&[(name, value)]);
            assert_eq!(
                o.client,
                ip(PROXY),
                "{name}: {:?}",
                String::from_utf8_lossy(value)
            );
        }
        // A huge chain of proxies is not walked to its end.
        let mut long = String::from("6.6.6.6");
        for _ in 0..1000 {
            long.push_str(", 10.0.0.1");
        }
        let o = via_proxy(&[("x-forwarded-for", long.as_bytes())]);
        assert_eq!(o.client, ip("10.0.0.1"));
        let long = "for=10.0.0.1,".repeat(1000);
        let o = via_proxy(&[("forwarded", long.as_bytes())]);
        assert_eq!(o.client, ip(PROXY));
    }

    #[test]
    fn mapped_peers_are_compared_as_ipv4() {
        let o = resolve(
            ip("::ffff:10.0.0.5"),
            &headers(&[("x-forwarded-for", b"198.51.100.4")]),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(o.client, ip("198.51.100.4"));
        assert_eq!(
            client_addr(ip("::ffff:203.0.113.1"), &HeaderMap::new(), &[]),
            ip("203.0.113.1")
        );
    }
}

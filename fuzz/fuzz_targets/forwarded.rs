//! The real client behind proxies: `Forwarded`, `X-Forwarded-For`, `-Proto` and `-Host`.
//!
//! Input: one byte picking the TCP peer (a trusted proxy or not), then header lines
//! `Name: value`. Properties: nothing panics; from an untrusted peer the headers are ignored;
//! a host taken from a trusted proxy is a bare `host[:port]`.

#![no_main]

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use wheresmyfox::forwarded::{Cidr, resolve};

const PEERS: [&str; 4] = ["127.0.0.1", "10.1.2.3", "203.0.113.9", "fd00::1"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let trusted: Vec<Cidr> = ["127.0.0.1", "10.0.0.0/8", "fd00::/8"]
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    let peer: IpAddr = PEERS[usize::from(pick) % PEERS.len()].parse().unwrap();
    let mut headers = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let origin = resolve(peer, &headers, &trusted);
    if !trusted.iter().any(|c| c.contains(peer)) {
        assert_eq!(
            origin.client, peer,
            "an untrusted peer's headers were believed"
        );
        assert!(origin.proto.is_none() && origin.host.is_none());
    }
    if let Some(host) = &origin.host {
        assert!(
            !host.is_empty() && !host.contains(['@', '/', ' ', ',', ';', '"']),
            "host {host:?}"
        );
    }
});

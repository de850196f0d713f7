//! Hawk for the device channel: verifying requests and signing responses.
//!
//! Standard Hawk 1 (the `hawk` crate), where the 2014 server rolled its own:
//! - the request MAC covers method, path and query, host, port, the payload hash and `ext`;
//!   the payload hash is required and recomputed from the body (never trusted from the header);
//! - timestamps more than the configured skew away are refused with the standard
//!   `WWW-Authenticate: Hawk ts="…", tsm="…", error="Stale timestamp"` answer, so a device can
//!   correct its clock offset and retry;
//! - MACs are compared in constant time (the crate's `Mac` equality);
//! - every answer carries a `Server-Authorization` header (`hawk.1.response`, with the hash
//!   of the response body) so a device can check that a wipe really came from this server.
//!
//! Nonces are checked by the caller against the device's [`NonceCache`] *after* the MAC, so
//! that nobody without the key can fill a device's cache.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hawk::{DigestAlgorithm, Header, Key, PayloadHasher, RequestBuilder};

use crate::error::ApiError;

/// The parts of a request that a Hawk MAC covers, besides the body.
#[derive(Debug, Clone)]
pub struct Signed<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub port: u16,
    /// Path and query exactly as sent.
    pub path: &'a str,
}

/// Nonces recently seen for one device, bounded in memory.
///
/// Entries older than the skew window are dropped (the timestamp check refuses such requests
/// anyway). When the cache is full the oldest entry is evicted and its timestamp becomes a
/// floor: any request at or below it is refused, so a replay of an evicted nonce still fails.
/// An honest device, whose timestamps only grow, never meets the floor unless it sends more
/// requests within one second than the cache holds; those are refused as replays (Hawk
/// timestamps have a resolution of one second, so they cannot be told apart from one).
#[derive(Debug, Clone, Default)]
pub struct NonceCache {
    entries: VecDeque<(u64, u64)>,
    floor: u64,
}

// === Verification ===

/// Parses an `Authorization: Hawk …` header value.
pub fn parse_authorization(value: &str) -> Result<Header, ApiError> {
    let rest = value
        .strip_prefix("Hawk ")
        .ok_or(ApiError::HawkHeader("the scheme must be Hawk"))?;
    if !timestamps_fit(rest) {
        return Err(ApiError::HawkHeader("ts is out of range"));
    }
    let header = Header::from_str(rest).map_err(|_| ApiError::HawkHeader("cannot parse it"))?;
    if header.id.is_none() || header.ts.is_none() || header.nonce.is_none() || header.mac.is_none()
    {
        return Err(ApiError::HawkHeader("id, ts, nonce and mac are required"));
    }
    if header.hash.is_none() {
        return Err(ApiError::HawkHeader("the payload hash is required"));
    }
    Ok(header)
}

/// Whether every `ts` attribute of a Hawk header's attribute list is a time the clock can hold.
///
/// Why: the `hawk` crate adds the parsed seconds to the Unix epoch with `+`, which panics for
/// values past what `SystemTime` holds (above `i64::MAX` seconds on Linux), and any client can
/// send `ts="18446744073709551615"`. Attribute values are quoted and cannot contain a quote, so
/// splitting on `"` alternates between `name=` parts and values, exactly as the crate reads them;
/// where the list is malformed the crate refuses it anyway, so erring towards `true` is safe.
pub fn timestamps_fit(attributes: &str) -> bool {
    let mut parts = attributes.split('"');
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        let name = name.trim_end().strip_suffix('=').unwrap_or(name);
        let name = name.trim_matches(|c: char| c == ',' || c.is_whitespace());
        if name == "ts"
            && let Ok(secs) = u64::from_str(value)
            && UNIX_EPOCH.checked_add(Duration::from_secs(secs)).is_none()
        {
            return false;
        }
    }
    true
}

/// The key for a device secret: the secret's bytes, used verbatim, with HMAC-SHA256.
pub fn key_for(secret: &str) -> Key {
    Key::new(secret.as_bytes(), DigestAlgorithm::Sha256).expect("HMAC-SHA256 keys accept any bytes")
}

/// The Hawk payload hash of a body with a given `Content-Type` (parameters dropped).
pub fn payload_hash(content_type: &str, body: &[u8]) -> Vec<u8> {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    PayloadHasher::hash(mime.as_bytes(), DigestAlgorithm::Sha256, body)
        .expect("SHA-256 hashing does not fail")
}

/// Checks the MAC (which covers the payload hash) and then the timestamp.
pub fn verify(
    header: &Header,
    key: &Key,
    signed: &Signed<'_>,
    content_type: &str,
    body: &[u8],
    skew: Duration,
    now: SystemTime,
) -> Result<(), ApiError> {
    let hash = payload_hash(content_type, body);
    let request = RequestBuilder::new(signed.method, signed.host, signed.port, signed.path)
        .hash(&hash[..])
        .request();
    // The crate's own clock check is switched off (a skew of ~136 years) so that a stale
    // timestamp can be told apart from a bad MAC and answered the standard way below.
    if !request.validate_header(header, key, Duration::from_secs(u32::MAX as u64)) {
        return Err(ApiError::HawkMac);
    }
    let ts = header.ts.unwrap_or(UNIX_EPOCH);
    let off = match now.duration_since(ts) {
        Ok(behind) => behind,
        Err(ahead) => ahead.duration(),
    };
    if off > skew {
        let now_secs = unix_secs(now);
        return Err(ApiError::HawkStale {
            skew_secs: skew.as_secs(),
            now: now_secs,
            tsm: timestamp_mac(key, now_secs),
        });
    }
    Ok(())
}

/// `tsm`: the MAC of the server's time, so the device can trust the clock it is told.
pub fn timestamp_mac(key: &Key, now_secs: u64) -> String {
    let mac = key
        .sign(format!("hawk.1.ts\n{now_secs}\n").as_bytes())
        .expect("HMAC signing does not fail");
    STANDARD.encode(mac)
}

/// The `WWW-Authenticate` value for a stale timestamp.
pub fn stale_challenge(now: u64, tsm: &str) -> String {
    format!("Hawk ts=\"{now}\", tsm=\"{tsm}\", error=\"Stale timestamp\"")
}

/// The `Server-Authorization` value for a response body of type `application/json`.
pub fn sign_response(header: &Header, key: &Key, signed: &Signed<'_>, body: &[u8]) -> String {
    sign_response_as(header, key, signed, "application/json", body)
}

/// The `Server-Authorization` value for a response body of type `content_type`.
pub fn sign_response_as(
    header: &Header,
    key: &Key,
    signed: &Signed<'_>,
    content_type: &str,
    body: &[u8],
) -> String {
    let hash = payload_hash(content_type, body);
    let request =
        RequestBuilder::new(signed.method, signed.host, signed.port, signed.path).request();
    let response_header = request
        .make_response_builder(header)
        .hash(&hash[..])
        .response()
        .make_header(key)
        .expect("the request header was verified, so it has ts and nonce");
    format!("Hawk {response_header}")
}

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Refuses a device secret that carries under 128 bits.
///
/// The secret is used verbatim as the Hawk key, so its strength is what its characters can
/// carry: 4 bits each for hex, 6 for base64 or any other printable ASCII (an under-estimate for
/// the latter, which errs on the safe side). A string of very few distinct characters is
/// refused too: a random 128-bit value essentially never looks like that, a placeholder does.
pub fn check_secret(secret: &str) -> Result<(), String> {
    const MIN_BITS: usize = 128;
    const MAX_LEN: usize = 512;
    if secret.len() > MAX_LEN {
        return Err(format!("secret: must be at most {MAX_LEN} characters"));
    }
    if let Some(bad) = secret.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(format!(
            "secret: must be printable ASCII (hex or base64), not {bad:?}"
        ));
    }
    let hex = secret.bytes().all(|b| b.is_ascii_hexdigit());
    let bits_per_char = if hex { 4 } else { 6 };
    let significant = secret.trim_end_matches('=').len();
    if significant * bits_per_char < MIN_BITS {
        return Err(format!(
            "secret: must carry at least {MIN_BITS} bits (32 hex or 22 base64 characters)"
        ));
    }
    let mut distinct: Vec<char> = secret.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 6 {
        return Err("secret: does not look random; generate 16 random bytes".to_owned());
    }
    Ok(())
}

// === NonceCache ===

impl NonceCache {
    /// Records a nonce; `false` if it was seen before (or is at or below the floor).
    pub fn check_and_insert(
        &mut self,
        ts: u64,
        nonce: &str,
        now: u64,
        window: u64,
        cap: usize,
    ) -> bool {
        let horizon = now.saturating_sub(window);
        while self.entries.front().is_some_and(|&(t, _)| t < horizon) {
            self.entries.pop_front();
        }
        if ts <= self.floor {
            return false;
        }
        let digest = {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            nonce.hash(&mut hasher);
            hasher.finish()
        };
        if self.entries.iter().any(|&(t, d)| t == ts && d == digest) {
            return false;
        }
        while self.entries.len() >= cap {
            if let Some((evicted, _)) = self.entries.pop_front() {
                self.floor = self.floor.max(evicted);
            }
        }
        // Kept ordered by timestamp so that expiry from the front is exact.
        let at = self.entries.partition_point(|&(t, _)| t <= ts);
        self.entries.insert(at, (ts, digest));
        true
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_cache_refuses_replays_and_stays_bounded() {
        let mut cache = NonceCache::default();
        let now = 1_000_000;
        assert!(cache.check_and_insert(now, "a", now, 120, 4));
        assert!(!cache.check_and_insert(now, "a", now, 120, 4));
        for i in 0..10_000u64 {
            // Two requests a second: fewer than the cache holds within one second.
            assert!(cache.check_and_insert(now + i / 2 + 1, &format!("n{i}"), now + i / 2, 120, 4));
            assert!(cache.len() <= 4);
        }
        // The very first nonce was evicted long ago, but its replay is still refused.
        assert!(!cache.check_and_insert(now, "a", now, 120, 4));
        assert!(!cache.check_and_insert(now + 1, "n0", now, 120, 4));
    }

    #[test]
    fn a_timestamp_past_the_clock_is_refused_not_a_panic() {
        // The crate's parser panicked on this (it adds the seconds to the epoch with `+`).
        let header = "Hawk id=\"d\", ts=\"18446744073709551615\", nonce=\"n\", \
                      hash=\"AAAA\", mac=\"AAAA\"";
        assert!(matches!(
            parse_authorization(header),
            Err(ApiError::HawkHeader("ts is out of range"))
        ));
        // Spacing and separators the crate tolerates do not hide it.
        assert!(!timestamps_fit(" ,ts =  \"9223372036854775808\""));
        // The largest representable values still parse (and are then refused as stale).
        let ok = "Hawk id=\"d\", ts=\"9223372036854775807\", nonce=\"n\", \
                  hash=\"AAAA\", mac=\"AAAA\"";
        assert!(parse_authorization(ok).is_ok());
        assert!(timestamps_fit("ext=\"ts=\", ts=\"1353832234\""));
    }

    #[test]
    fn weak_secrets_are_refused() {
        assert!(check_secret("0123456789abcdef0123456789abcdef").is_ok());
        assert!(check_secret("0123456789abcdef0123456789abcde").is_err());
        assert!(check_secret("q83vEjRWeJq83vEjRWeJqw==").is_ok());
        assert!(check_secret("q83vEjRWeJq83vEjRWeJ==").is_err());
        assert!(check_secret("00000000000000000000000000000000").is_err());
        assert!(check_secret("caf\u{e9}0123456789abcdef0123456789abcdef").is_err());
    }

    #[test]
    fn old_entries_expire() {
        let mut cache = NonceCache::default();
        assert!(cache.check_and_insert(100, "a", 100, 60, 8));
        assert!(cache.check_and_insert(300, "b", 300, 60, 8));
        assert_eq!(cache.len(), 1);
    }
}

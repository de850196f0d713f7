//! `Authorization: Hawk …` parsing and verification, as a device request meets them.
//!
//! Input: the header value, a newline, then the request body. The request line, key and clock
//! are fixed (the seeds carry headers signed for them, so verification is reached past the MAC).
//! Properties: nothing panics; a header that parses carries id, ts, nonce, mac and hash; a
//! request that verifies can be answered with a `Server-Authorization` header.

#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use wheresmyfox::hawk_auth::{self, Signed};

/// The secret the seeds are signed with (see `fuzz/seed.py`).
const SECRET: &str = "0123456789abcdef0123456789abcdef";
/// The server's clock: the seeds' `ts` is within 60 s of it.
const NOW_SECS: u64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let (value, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    // hyper hands the service raw header bytes; the service only reads a UTF-8 value.
    let Ok(value) = std::str::from_utf8(value) else {
        return;
    };
    let Ok(header) = hawk_auth::parse_authorization(value) else {
        return;
    };
    assert!(header.id.is_some() && header.ts.is_some() && header.nonce.is_some());
    assert!(header.mac.is_some() && header.hash.is_some());
    let key = hawk_auth::key_for(SECRET);
    let signed = Signed {
        method: "POST",
        host: "127.0.0.1",
        port: 8000,
        path: "/1/cmd/fuzzdevice",
    };
    let now = UNIX_EPOCH + Duration::from_secs(NOW_SECS);
    let verified = hawk_auth::verify(
        &header,
        &key,
        &signed,
        "application/json",
        body,
        Duration::from_secs(60),
        now,
    );
    if verified.is_ok() {
        let answer = hawk_auth::sign_response(&header, &key, &signed, b"{}");
        assert!(answer.starts_with("Hawk "));
    }
    let _ = hawk_auth::unix_secs(header.ts.unwrap_or(SystemTime::UNIX_EPOCH));
});

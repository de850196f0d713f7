//! Wall-clock time, in one place.
//!
//! Durations and timeouts use `tokio::time` (which tests can pause); this is only for the
//! timestamps that leave the process: Hawk, events, positions, expiry of stored records.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

//! Keyed rate limits: password guessing per account and per address, command flooding per owner.
//!
//! Each limit is a GCRA (the "generic cell rate algorithm" of ATM networks, the same arithmetic
//! as a token bucket) that keeps a single number per key: the time at which that key's bucket
//! would be full again. A key whose time has passed holds no information, so it can be dropped;
//! that is what keeps the table bounded under a flood of distinct keys (every client address of
//! a botnet, every email an attacker tries).

use std::hash::Hash;
use std::time::Duration;

use dashmap::DashMap;

use crate::config::LimitsConfig;
use crate::error::ApiError;
use crate::ids::UserId;

/// One limit: `burst` events at once, then one every `interval`, per key.
#[derive(Debug)]
pub struct RateLimit<K: Eq + Hash> {
    /// Refill interval in milliseconds; 0 turns the limit off.
    interval_ms: u64,
    /// `interval * burst`: how far ahead of now a key's full-again time may run.
    tolerance_ms: u64,
    /// Most keys held before idle ones are swept out early.
    max_keys: usize,
    /// Key → the time (ms) at which its bucket is full again.
    full_at: DashMap<K, u64>,
}

/// The limits the gateway applies.
#[derive(Debug)]
pub struct Limits {
    /// Sign-in attempts per account (a correct password gives its token back).
    pub sign_in_account: RateLimit<String>,
    /// Sign-in and sign-up attempts per client address.
    pub sign_in_address: RateLimit<std::net::IpAddr>,
    /// Commands queued per owner, over all their devices.
    pub commands_owner: RateLimit<UserId>,
}

// === RateLimit ===

impl<K: Eq + Hash + Clone> RateLimit<K> {
    /// `per_hour` events an hour after a burst of `burst`; `per_hour == 0` means no limit.
    pub fn per_hour(burst: u32, per_hour: u32, max_keys: usize) -> Self {
        let interval_ms = if per_hour == 0 {
            0
        } else {
            3_600_000 / u64::from(per_hour)
        };
        RateLimit {
            interval_ms,
            tolerance_ms: interval_ms * u64::from(burst.max(1)),
            max_keys,
            full_at: DashMap::new(),
        }
    }

    /// Takes one event for `key` at `now_ms`, or says how long until one is allowed.
    pub fn take(&self, key: &K, now_ms: u64) -> Result<(), Duration> {
        if self.interval_ms == 0 {
            return Ok(());
        }
        if self.full_at.len() >= self.max_keys && !self.full_at.contains_key(key) {
            self.sweep(now_ms);
            if self.full_at.len() >= self.max_keys {
                // Every key held is inside its window. Refusing the newcomer keeps memory
                // bounded and keeps what is known about the keys already held: evicting one
                // would let a flood of fresh keys wipe a guessed account's record.
                return Err(Duration::from_millis(self.interval_ms));
            }
        }
        let mut full_at = self.full_at.entry(key.clone()).or_insert(now_ms);
        let next = (*full_at).max(now_ms) + self.interval_ms;
        if next - now_ms > self.tolerance_ms {
            // Allowed again once the bucket has room for one more event.
            return Err(Duration::from_millis(next - now_ms - self.tolerance_ms));
        }
        *full_at = next;
        Ok(())
    }

    /// Gives back the event taken for `key` (a sign-in that turned out to be the owner's).
    pub fn give_back(&self, key: &K) {
        if let Some(mut full_at) = self.full_at.get_mut(key) {
            *full_at = full_at.saturating_sub(self.interval_ms);
        }
    }

    /// Drops every key whose bucket is full again: forgetting it changes nothing.
    pub fn sweep(&self, now_ms: u64) {
        self.full_at.retain(|_, full_at| *full_at > now_ms);
    }

    /// Keys held right now.
    pub fn keys(&self) -> usize {
        self.full_at.len()
    }
}

// === Limits ===

impl Limits {
    pub fn new(config: &LimitsConfig) -> Limits {
        Limits {
            sign_in_account: RateLimit::per_hour(
                config.sign_in_account_burst,
                config.sign_in_account_per_hour,
                config.max_keys,
            ),
            sign_in_address: RateLimit::per_hour(
                config.sign_in_address_burst,
                config.sign_in_address_per_hour,
                config.max_keys,
            ),
            commands_owner: RateLimit::per_hour(
                config.commands_owner_burst,
                config.commands_owner_per_minute.saturating_mul(60),
                config.max_keys,
            ),
        }
    }

    pub fn sweep(&self, now_ms: u64) {
        self.sign_in_account.sweep(now_ms);
        self.sign_in_address.sweep(now_ms);
        self.commands_owner.sweep(now_ms);
    }
}

/// The refusal for a wait of `retry_after` (rounded up to whole seconds, as `Retry-After` is).
pub fn refusal(retry_after: Duration) -> ApiError {
    ApiError::RateLimited {
        retry_after_secs: retry_after.as_millis().div_ceil(1000).max(1) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        // 3 at once, then one every 20 minutes.
        let limit = RateLimit::per_hour(3, 3, 100);
        let key = "a".to_owned();
        for _ in 0..3 {
            assert_eq!(limit.take(&key, 0), Ok(()));
        }
        let wait = limit.take(&key, 0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(20 * 60));
        assert!(limit.take(&key, 20 * 60 * 1000 - 1).is_err());
        assert_eq!(limit.take(&key, 20 * 60 * 1000), Ok(()));
        assert!(limit.take(&key, 20 * 60 * 1000).is_err());
    }

    #[test]
    fn keys_are_independent() {
        let limit = RateLimit::per_hour(1, 1, 100);
        assert_eq!(limit.take(&1, 0), Ok(()));
        assert!(limit.take(&1, 0).is_err());
        assert_eq!(limit.take(&2, 0), Ok(()));
    }

    #[test]
    fn giving_back_restores_one_event() {
        let limit = RateLimit::per_hour(2, 60, 100);
        limit.take(&"k", 0).unwrap();
        limit.take(&"k", 0).unwrap();
        assert!(limit.take(&"k", 0).is_err());
        limit.give_back(&"k");
        assert_eq!(limit.take(&"k", 0), Ok(()));
    }

    #[test]
    fn zero_rate_is_no_limit() {
        let limit = RateLimit::per_hour(1, 0, 100);
        for _ in 0..10_000 {
            assert_eq!(limit.take(&"k", 0), Ok(()));
        }
        assert_eq!(limit.keys(), 0);
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_bounded() {
        // One event a second after a burst of 5: a key that took one event is forgotten a
        // second later. A million addresses, one attempt each, two milliseconds apart: old
        // keys are swept as new ones arrive and every attempt is allowed.
        let limit = RateLimit::per_hour(5, 3600, 1000);
        for i in 0..1_000_000u64 {
            limit.take(&i, 2 * i).unwrap();
            assert!(limit.keys() <= 1000);
        }
        // A flood faster than keys expire: newcomers are refused, the table stays at its cap,
        // and a key inside its window keeps its state (an attacker cannot flush it).
        let limit = RateLimit::per_hour(1, 1, 10);
        limit.take(&u64::MAX, 0).unwrap();
        let refused = (0..100u64).filter(|i| limit.take(i, 1).is_err()).count();
        assert_eq!(refused, 91);
        assert_eq!(limit.keys(), 10);
        assert!(limit.take(&u64::MAX, 2).is_err());
    }

    #[test]
    fn refusals_round_up_to_whole_seconds() {
        assert!(matches!(
            refusal(Duration::from_millis(1)),
            ApiError::RateLimited {
                retry_after_secs: 1
            }
        ));
        assert!(matches!(
            refusal(Duration::from_millis(2001)),
            ApiError::RateLimited {
                retry_after_secs: 3
            }
        ));
    }
}

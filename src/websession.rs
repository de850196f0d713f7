//! `WebSessions`: an owner signed in from a browser, held in an HttpOnly cookie.
//!
//! - The cookie carries 256 random bits; only their SHA-256 is kept, in memory and in the
//!   journal, like bearer tokens: a copy of the disk cannot be replayed as a session.
//! - A session ends at the first of: sign-out, `web.session_idle_minutes` without a request,
//!   `web.session_max_hours` after sign-in. Both limits are read from the configuration at each
//!   check, so shortening them takes effect on restart for sessions already open.
//! - Use is journaled at most once a minute per session. A use lost to a crash can only make
//!   the session expire sooner, never later.
//! - The CSRF token is derived from the session token (a tagged SHA-256), so the server keeps
//!   nothing more for it, and a page can only learn it by reading a same-origin answer.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use rand::RngCore;
use ring::digest::{SHA256, digest};

use crate::accounts::{hex, token_digest, unhex};
use crate::clock::now_ms;
use crate::config::WebConfig;
use crate::error::ApiError;
use crate::ids::UserId;
use crate::store::record::Record;
use crate::store::{Commit, Durability, Journal};

/// Uses closer together than this are not journaled again.
const USE_JOURNAL_EVERY_MS: u64 = 60_000;

/// Every open browser session.
#[derive(Debug, Default)]
pub struct WebSessions {
    /// SHA-256 of a session token → session.
    sessions: DashMap<[u8; 32], WebSession>,
}

#[derive(Debug, Clone, Copy)]
struct WebSession {
    user: UserId,
    created_ms: u64,
    /// Last request seen (in memory; the idle limit counts from here).
    last_used_ms: u64,
    /// Last use written to the journal.
    journaled_use_ms: u64,
}

/// A session just opened: the cookie value and the page's CSRF token.
#[derive(Debug, Clone)]
pub struct OpenedSession {
    pub token: String,
    pub csrf: String,
    pub user: UserId,
}

/// What the journal and snapshots hold of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionImage {
    pub digest: String,
    pub user: UserId,
    pub created_ms: u64,
    pub last_used_ms: u64,
}

// === WebSessions ===

impl WebSessions {
    /// Opens a session for `user`; the commit completes when it is durable.
    pub fn open(&self, user: UserId, journal: &Journal) -> (OpenedSession, Commit) {
        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        let token = URL_SAFE_NO_PAD.encode(raw);
        let key = token_digest(&token);
        let now = now_ms();
        let commit = journal.append(
            &Record::WebSessionOpened {
                digest: hex(&key),
                user,
                created_ms: now,
            },
            Durability::Commands,
        );
        self.sessions.insert(
            key,
            WebSession {
                user,
                created_ms: now,
                last_used_ms: now,
                journaled_use_ms: now,
            },
        );
        let csrf = csrf_token(&token);
        (OpenedSession { token, csrf, user }, commit)
    }

    /// The user of a live session. `active`: the request counts as a use (it restarts the
    /// idle limit); the page's own background refreshes do not, so a page left open on a
    /// borrowed computer still signs itself out.
    pub fn authenticate(
        &self,
        token: &str,
        active: bool,
        limits: &WebConfig,
        journal: &Journal,
    ) -> Result<UserId, ApiError> {
        let key = token_digest(token);
        let now = now_ms();
        let mut session = self.sessions.get_mut(&key).ok_or(ApiError::InvalidToken)?;
        if !session.alive(now, limits) {
            drop(session);
            self.sessions.remove(&key);
            return Err(ApiError::InvalidToken);
        }
        if !active {
            return Ok(session.user);
        }
        session.last_used_ms = now;
        if now.saturating_sub(session.journaled_use_ms) >= USE_JOURNAL_EVERY_MS {
            session.journaled_use_ms = now;
            // Not waited for: a lost use only shortens the session (see the module notes).
            drop(journal.append(
                &Record::WebSessionUsed {
                    digest: hex(&key),
                    at_ms: now,
                },
                Durability::Positions,
            ));
        }
        Ok(session.user)
    }

    /// Ends a session (sign-out), durably. Unknown tokens are ignored.
    pub fn close(&self, token: &str, journal: &Journal) -> Commit {
        let key = token_digest(token);
        match self.sessions.remove(&key) {
            Some(_) => journal.append(
                &Record::WebSessionClosed { digest: hex(&key) },
                Durability::Commands,
            ),
            None => Commit::done(),
        }
    }

    /// Drops sessions past either limit; run periodically.
    pub fn purge_expired(&self, limits: &WebConfig) -> usize {
        let now = now_ms();
        let before = self.sessions.len();
        self.sessions.retain(|_, s| s.alive(now, limits));
        before - self.sessions.len()
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    // --- Recovery and snapshots ---

    /// Puts back a session from a snapshot or the journal (idempotent).
    pub fn restore(&self, image: &SessionImage) {
        if let Some(key) = unhex(&image.digest) {
            let mut entry = self.sessions.entry(key).or_insert(WebSession {
                user: image.user,
                created_ms: image.created_ms,
                last_used_ms: image.last_used_ms,
                journaled_use_ms: image.last_used_ms,
            });
            entry.last_used_ms = entry.last_used_ms.max(image.last_used_ms);
            entry.journaled_use_ms = entry.last_used_ms;
        }
    }

    /// Replays a use.
    pub fn restore_use(&self, digest: &str, at_ms: u64) {
        if let Some(key) = unhex(digest)
            && let Some(mut session) = self.sessions.get_mut(&key)
        {
            session.last_used_ms = session.last_used_ms.max(at_ms);
            session.journaled_use_ms = session.last_used_ms;
        }
    }

    /// Replays a sign-out.
    pub fn forget(&self, digest: &str) {
        if let Some(key) = unhex(digest) {
            self.sessions.remove(&key);
        }
    }

    /// Every session, for a snapshot. Expired ones are dropped at the next sweep or check.
    pub fn export(&self) -> Vec<SessionImage> {
        self.sessions
            .iter()
            .map(|s| SessionImage {
                digest: hex(s.key()),
                user: s.user,
                created_ms: s.created_ms,
                last_used_ms: s.last_used_ms,
            })
            .collect()
    }
}

// === WebSession ===

impl WebSession {
    fn alive(&self, now: u64, limits: &WebConfig) -> bool {
        let idle_ms = limits.session_idle_minutes.saturating_mul(60_000);
        let max_ms = limits.session_max_hours.saturating_mul(3_600_000);
        now < self.last_used_ms.saturating_add(idle_ms)
            && now < self.created_ms.saturating_add(max_ms)
    }
}

/// The CSRF token of a session: what a page must echo in `X-CSRF-Token` to change anything.
pub fn csrf_token(session_token: &str) -> String {
    let mut input = b"wheresmyfox csrf\0".to_vec();
    input.extend_from_slice(session_token.as_bytes());
    URL_SAFE_NO_PAD.encode(digest(&SHA256, &input))
}

/// Whether `offered` is the CSRF token of `session_token`. Both sides are hashed first, so the
/// comparison's timing says nothing about the expected value.
pub fn csrf_matches(session_token: &str, offered: &str) -> bool {
    let expected = digest(&SHA256, csrf_token(session_token).as_bytes());
    let offered = digest(&SHA256, offered.as_bytes());
    expected.as_ref() == offered.as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_is_bound_to_the_session() {
        let a = csrf_token("session a");
        assert!(csrf_matches("session a", &a));
        assert!(!csrf_matches("session b", &a));
        assert!(!csrf_matches("session a", ""));
    }

    #[test]
    fn idle_and_absolute_limits() {
        let limits = WebConfig {
            session_idle_minutes: 30,
            session_max_hours: 12,
            ..WebConfig::default()
        };
        let user = UserId::random();
        let session = WebSession {
            user,
            created_ms: 0,
            last_used_ms: 0,
            journaled_use_ms: 0,
        };
        assert!(session.alive(29 * 60_000, &limits));
        assert!(!session.alive(30 * 60_000, &limits));
        let busy = WebSession {
            last_used_ms: 12 * 3_600_000 - 1000,
            ..session
        };
        assert!(busy.alive(12 * 3_600_000 - 1, &limits));
        assert!(!busy.alive(12 * 3_600_000, &limits));
    }
}

//! `Accounts`: owners, their passwords and their session tokens.
//!
//! - Passwords are hashed with argon2id on the blocking pool (hashing is slow on purpose and
//!   must not stall the reactor that holds thousands of parked polls).
//! - Tokens are 256 random bits handed to the client once; only their SHA-256 is kept, so a
//!   copy of the server's memory or disk cannot be replayed as a session.
//! - Signing in with an unknown email costs the same hash as a known one, so response time
//!   does not reveal who has an account.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use rand::RngCore;
use ring::digest::{SHA256, digest};

use crate::clock::now_ms;
use crate::error::ApiError;
use crate::ids::UserId;
use crate::store::record::Record;
use crate::store::{Commit, Durability, Journal};
use crate::websession::WebSessions;

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest password accepted (argon2 is fed the whole thing; bound the work).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// All owner accounts and their sessions.
#[derive(Debug)]
pub struct Accounts {
    /// Normalised email → user id; the uniqueness constraint on emails.
    by_email: DashMap<String, UserId>,
    /// User id → account.
    users: DashMap<UserId, User>,
    /// SHA-256 of a token → session.
    tokens: DashMap<[u8; 32], Session>,
    /// Identity-provider subject (issuer and `sub`) → the account made for it. These accounts
    /// have no password and no entry in `by_email`: a provider's email claim never unlocks a
    /// local account.
    subjects: DashMap<String, UserId>,
    /// Browser sessions (cookies), beside the bearer tokens.
    pub web: WebSessions,
    /// Lifetime of a session token, in milliseconds.
    token_ttl_ms: u64,
    /// A hash to verify against when the email is unknown (constant-time sign-in).
    decoy_hash: std::sync::OnceLock<String>,
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: UserId,
    pub email: String,
    /// PHC string of the argon2id hash.
    password_hash: String,
    pub created_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct Session {
    user: UserId,
    expires_ms: u64,
}

/// A freshly issued token, to be handed to the client once.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub user: UserId,
}

// === Accounts ===

impl Accounts {
    pub fn new(token_ttl_hours: u64) -> Accounts {
        Accounts {
            by_email: DashMap::new(),
            users: DashMap::new(),
            tokens: DashMap::new(),
            web: WebSessions::default(),
            subjects: DashMap::new(),
            token_ttl_ms: token_ttl_hours.saturating_mul(3_600_000),
            decoy_hash: std::sync::OnceLock::new(),
        }
    }

    /// Creates an account, durably. Hashing runs on the blocking pool.
    pub async fn create(
        &self,
        email: &str,
        password: &str,
        journal: &Journal,
    ) -> Result<UserId, ApiError> {
        let email = normalise_email(email)?;
        check_password(password)?;
        if self.by_email.contains_key(&email) {
            return Err(ApiError::EmailTaken);
        }
        let password = password.to_owned();
        let password_hash = tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|e| ApiError::Internal(format!("hashing task failed: {e}")))??;
        // Checked again under the shard lock: two sign-ups with one email may race past the
        // early check while hashing.
        let (id, commit) = match self.by_email.entry(email.clone()) {
            Entry::Occupied(_) => return Err(ApiError::EmailTaken),
            Entry::Vacant(slot) => {
                let id = UserId::random();
                let created_ms = now_ms();
                let record = Record::AccountCreated {
                    user: id,
                    email: email.clone(),
                    password_hash: password_hash.clone(),
                    created_ms,
                };
                let commit = journal.append(&record, Durability::Commands);
                self.users.insert(
                    id,
                    User {
                        id,
                        email,
                        password_hash,
                        created_ms,
                    },
                );
                slot.insert(id);
                (id, commit)
            }
        };
        commit.wait().await?;
        Ok(id)
    }

    /// Checks a password and issues a session token, durably.
    pub async fn sign_in(
        &self,
        email: &str,
        password: &str,
        journal: &Journal,
    ) -> Result<IssuedToken, ApiError> {
        let user = self.verify_credentials(email, password).await?;
        let (issued, commit) = self.issue_token(user, journal);
        commit.wait().await?;
        Ok(issued)
    }

    /// The account an email and password belong to (for a bearer token or a browser session).
    pub async fn verify_credentials(
        &self,
        email: &str,
        password: &str,
    ) -> Result<UserId, ApiError> {
        let user = normalise_email(email)
            .ok()
            .and_then(|email| self.by_email.get(&email).map(|id| *id))
            .and_then(|id| self.users.get(&id).map(|u| u.clone()));
        let stored = match &user {
            Some(user) => user.password_hash.clone(),
            // Made on first use (hashing is slow on purpose), then kept.
            None => self
                .decoy_hash
                .get_or_init(|| hash_password("decoy password, never matches").unwrap_or_default())
                .clone(),
        };
        let password = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || verify_password(&password, &stored))
            .await
            .map_err(|e| ApiError::Internal(format!("hashing task failed: {e}")))?;
        match user {
            Some(user) if matches => Ok(user.id),
            _ => Err(ApiError::BadCredentials),
        }
    }

    /// The account of an identity-provider subject, created (durably) on first use.
    pub async fn user_for_subject(
        &self,
        subject: &str,
        email: Option<&str>,
        journal: &Journal,
    ) -> Result<UserId, ApiError> {
        if let Some(user) = self.subjects.get(subject) {
            return Ok(*user);
        }
        let (id, commit) = match self.subjects.entry(subject.to_owned()) {
            Entry::Occupied(known) => return Ok(*known.get()),
            Entry::Vacant(slot) => {
                let id = UserId::random();
                let created_ms = now_ms();
                // Shown to the owner only; never used to find or merge accounts.
                let email: String = email
                    .unwrap_or(subject)
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(254)
                    .collect();
                let commit = journal.append(
                    &Record::SubjectLinked {
                        subject: subject.to_owned(),
                        user: id,
                        email: email.clone(),
                        created_ms,
                    },
                    Durability::Commands,
                );
                self.users.insert(
                    id,
                    User {
                        id,
                        email,
                        password_hash: String::new(),
                        created_ms,
                    },
                );
                slot.insert(id);
                (id, commit)
            }
        };
        commit.wait().await?;
        Ok(id)
    }

    /// Puts back a subject's account (idempotent).
    pub fn restore_subject(&self, subject: String, user: UserId, email: String, created_ms: u64) {
        self.subjects.entry(subject).or_insert(user);
        self.users.entry(user).or_insert(User {
            id: user,
            email,
            password_hash: String::new(),
            created_ms,
        });
    }

    /// Every subject's account, for a snapshot: (subject, user, email, created).
    pub fn export_subjects(&self) -> Vec<(String, UserId, String, u64)> {
        self.subjects
            .iter()
            .filter_map(|s| {
                let user = self.users.get(s.value())?;
                Some((
                    s.key().clone(),
                    user.id,
                    user.email.clone(),
                    user.created_ms,
                ))
            })
            .collect()
    }

    /// Whether `user` has a password (accounts of identity-provider users have none).
    pub fn has_password(&self, user: &UserId) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| !u.password_hash.is_empty())
    }

    /// Whether `password` is the password of `user` (the step-up check before an erase).
    /// Hashing runs on the blocking pool, like sign-in.
    pub async fn check_password(&self, user: UserId, password: &str) -> Result<bool, ApiError> {
        let Some(stored) = self.users.get(&user).map(|u| u.password_hash.clone()) else {
            return Ok(false);
        };
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || verify_password(&password, &stored))
            .await
            .map_err(|e| ApiError::Internal(format!("hashing task failed: {e}")))
    }

    /// Issues a token for a user; the commit completes when it is durable.
    pub fn issue_token(&self, user: UserId, journal: &Journal) -> (IssuedToken, Commit) {
        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        let token = URL_SAFE_NO_PAD.encode(raw);
        let digest = token_digest(&token);
        let expires_ms = now_ms().saturating_add(self.token_ttl_ms);
        let commit = journal.append(
            &Record::TokenIssued {
                digest: hex(&digest),
                user,
                expires_ms,
            },
            Durability::Commands,
        );
        self.tokens.insert(digest, Session { user, expires_ms });
        (IssuedToken { token, user }, commit)
    }

    /// The user a bearer token belongs to, if it is known and unexpired.
    pub fn authenticate(&self, token: &str) -> Result<UserId, ApiError> {
        let digest = token_digest(token);
        let session = self
            .tokens
            .get(&digest)
            .map(|s| *s)
            .ok_or(ApiError::InvalidToken)?;
        if session.expires_ms <= now_ms() {
            self.tokens.remove(&digest);
            return Err(ApiError::InvalidToken);
        }
        Ok(session.user)
    }

    /// Revokes a token (sign-out), durably. Unknown tokens are ignored.
    pub fn revoke(&self, token: &str, journal: &Journal) -> Commit {
        let digest = token_digest(token);
        match self.tokens.remove(&digest) {
            Some(_) => journal.append(
                &Record::TokenRevoked {
                    digest: hex(&digest),
                },
                Durability::Commands,
            ),
            None => Commit::done(),
        }
    }

    // --- Recovery and snapshots ---

    /// Puts back an account from a snapshot or the journal (idempotent).
    pub fn restore_account(
        &self,
        id: UserId,
        email: String,
        password_hash: String,
        created_ms: u64,
    ) {
        self.by_email.entry(email.clone()).or_insert(id);
        self.users.entry(id).or_insert(User {
            id,
            email,
            password_hash,
            created_ms,
        });
    }

    /// Puts back a session (idempotent; expired ones are dropped).
    pub fn restore_token(&self, digest: &str, user: UserId, expires_ms: u64) {
        if let Some(digest) = unhex(digest)
            && expires_ms > now_ms()
        {
            self.tokens.insert(digest, Session { user, expires_ms });
        }
    }

    /// Replays a revocation.
    pub fn forget_token(&self, digest: &str) {
        if let Some(digest) = unhex(digest) {
            self.tokens.remove(&digest);
        }
    }

    /// Every account, for a snapshot: (id, email, password hash, created).
    pub fn export_accounts(&self) -> Vec<(UserId, String, String, u64)> {
        // Accounts of identity-provider subjects have no password and go with their subject.
        self.users
            .iter()
            .filter(|u| !u.password_hash.is_empty())
            .map(|u| (u.id, u.email.clone(), u.password_hash.clone(), u.created_ms))
            .collect()
    }

    /// Every unexpired session, for a snapshot: (digest, user, expiry).
    pub fn export_tokens(&self) -> Vec<(String, UserId, u64)> {
        let now = now_ms();
        self.tokens
            .iter()
            .filter(|s| s.expires_ms > now)
            .map(|s| (hex(s.key()), s.user, s.expires_ms))
            .collect()
    }

    /// Drops expired sessions; run periodically.
    pub fn purge_expired(&self) -> usize {
        let now = now_ms();
        let before = self.tokens.len();
        self.tokens.retain(|_, s| s.expires_ms > now);
        before - self.tokens.len()
    }

    pub fn user(&self, id: &UserId) -> Option<User> {
        self.users.get(id).map(|u| u.clone())
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }
}

/// Lower-case hex, as digests are stored.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A stored digest back to bytes; `None` unless 64 hex digits.
pub(crate) fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The SHA-256 kept in place of a bearer or session token.
pub(crate) fn token_digest(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

/// Lower-cases and trims; refuses what cannot be an address.
pub fn normalise_email(email: &str) -> Result<String, ApiError> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(email)
    } else {
        Err(ApiError::InvalidField(crate::protocol::ProtocolError {
            field: "email".into(),
            reason: "must be an email address".into(),
        }))
    }
}

fn check_password(password: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_LEN {
        return Err(ApiError::PasswordTooShort {
            min: MIN_PASSWORD_LEN,
        });
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(ApiError::InvalidField(crate::protocol::ProtocolError {
            field: "password".into(),
            reason: format!("must be at most {MAX_PASSWORD_LEN} bytes"),
        }));
    }
    Ok(())
}

fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("argon2: {e}")))
}

fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

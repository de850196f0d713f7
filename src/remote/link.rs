//! A linked storage's credentials, sealed under a key only the client holds.
//!
//! Firefox Cloud's design: remote-storage credentials are "stored in the server encrypted with
//! a symmetric key that the client will provide on every sync request". Here:
//!
//! - The client picks a random 256-bit **storage key**, keeps it with its other secrets, and
//!   sends it as `X-Storage-Key` (unpadded base64url) on each request that must reach the
//!   storage. It is never stored or logged by the server.
//! - The sealing key is HKDF-SHA256 of the storage key, salted with a **server secret** (from
//!   `storage.seal_key` when the operator set one, else the file `remote-storage.secret` in
//!   the data directory), bound to the user and the link: neither the client's key alone nor a
//!   copy of the server's disk alone opens the credentials.
//! - The user name and app password are sealed with XChaCha20-Poly1305 under a random nonce,
//!   with the user, the link's id and its URL as associated data, so sealed credentials moved
//!   to another user or URL do not open.
//! - Keys and credentials live in [`Zeroizing`] buffers, wiped when dropped. Copies the HTTP
//!   stack makes (the request's header map, the outbound request's `Authorization`) are freed
//!   with the request but not wiped: see docs/storage.md.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use http::HeaderMap;
use rand::RngCore;
use ring::hkdf;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::ApiError;
use crate::ids::UserId;

/// The header carrying the client's storage key.
pub const KEY_HEADER: &str = "x-storage-key";
/// The header carrying the new key when the client rotates it.
pub const NEW_KEY_HEADER: &str = "x-new-storage-key";
/// The server secret's file, in the data directory, when no sealing key is configured.
pub const SECRET_FILE: &str = "remote-storage.secret";

const LABEL: &[u8] = b"wheresmyfox remote-storage v1";

/// The client's storage key. `Debug` never shows it.
pub struct StorageKey(Zeroizing<[u8; 32]>);

/// A WebDAV user name and app password, in the clear, wiped when dropped.
pub struct Credentials {
    pub username: Zeroizing<String>,
    pub password: Zeroizing<String>,
}

/// The server's half of the sealing key.
pub struct ServerSecret(Zeroizing<[u8; 32]>);

/// A link as kept in the journal and snapshots: only the URL is in the clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLink {
    /// Random, so that relinking the same URL seals under a different key.
    pub id: String,
    pub url: String,
    /// base64url of nonce (24 bytes), ciphertext and tag.
    pub sealed: String,
    pub linked_ms: u64,
}

impl std::fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageKey(…)")
    }
}

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSecret(…)")
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(…)")
    }
}

// === StorageKey ===

impl StorageKey {
    /// A fresh random key (clients and tests).
    pub fn random() -> StorageKey {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::thread_rng().fill_bytes(key.as_mut());
        StorageKey(key)
    }

    /// The key as sent in the header.
    pub fn encode(&self) -> Zeroizing<String> {
        Zeroizing::new(URL_SAFE_NO_PAD.encode(self.0.as_ref()))
    }

    /// Reads `name` from `headers`: `None` if absent, an error if it is not a key.
    pub fn from_headers(headers: &HeaderMap, name: &str) -> Result<Option<StorageKey>, ApiError> {
        let Some(value) = headers.get(name) else {
            return Ok(None);
        };
        let bad = || ApiError::RemoteKeyMalformed {
            header: name.to_owned(),
        };
        let text = value.to_str().map_err(|_| bad())?.trim();
        let decoded = Zeroizing::new(URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?);
        let bytes: [u8; 32] = decoded.as_slice().try_into().map_err(|_| bad())?;
        Ok(Some(StorageKey(Zeroizing::new(bytes))))
    }
}

// === ServerSecret ===

impl ServerSecret {
    /// From the data directory's secret file when it has one; else from the operator's
    /// sealing key when there is one (nothing is then written); else a new random secret,
    /// written to the file (mode 0600). Whichever sealed the users' credentials keeps being
    /// used: setting `storage.seal_key` later does not change the secret.
    pub fn load(data_dir: &Path, seal_key: Option<&str>) -> std::io::Result<ServerSecret> {
        let mut secret = Zeroizing::new([0u8; 32]);
        let path = data_dir.join(SECRET_FILE);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == 32 => {
                secret.copy_from_slice(&bytes);
                return Ok(ServerSecret(secret));
            }
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} is damaged (it must hold 32 bytes)",
                    path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(material) = seal_key {
            let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"wheresmyfox remote-storage secret");
            salt.extract(material.as_bytes())
                .expand(&[LABEL], hkdf::HKDF_SHA256)
                .and_then(|okm| okm.fill(secret.as_mut()))
                .map_err(|_| std::io::Error::other("HKDF output length"))?;
            return Ok(ServerSecret(secret));
        }
        use std::io::Write;
        rand::thread_rng().fill_bytes(secret.as_mut());
        let mut file = crate::store::open_private(&path, true)?;
        file.write_all(secret.as_ref())?;
        file.sync_all()?;
        crate::store::sync_dir(&path)?;
        Ok(ServerSecret(secret))
    }

    /// The sealing key for one user's link.
    fn derive(&self, key: &StorageKey, user: UserId, link: &str) -> Zeroizing<[u8; 32]> {
        let user = user.to_string();
        let info = [LABEL, b"\0", user.as_bytes(), b"\0", link.as_bytes()];
        let mut out = Zeroizing::new([0u8; 32]);
        hkdf::Salt::new(hkdf::HKDF_SHA256, self.0.as_ref())
            .extract(key.0.as_ref())
            .expand(&info, hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(out.as_mut()))
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    }

    /// Seals `credentials` for `user`'s link `link` to `url`.
    pub fn seal(
        &self,
        key: &StorageKey,
        user: UserId,
        link: &str,
        url: &str,
        credentials: &Credentials,
    ) -> String {
        let sealing = self.derive(key, user, link);
        let cipher = XChaCha20Poly1305::new(sealing.as_ref().into());
        let mut nonce = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut nonce);
        let name = credentials.username.as_bytes();
        let mut plain = Zeroizing::new(Vec::with_capacity(
            4 + name.len() + credentials.password.len(),
        ));
        plain.extend_from_slice(&(name.len() as u32).to_be_bytes());
        plain.extend_from_slice(name);
        plain.extend_from_slice(credentials.password.as_bytes());
        let aad = associated_data(user, link, url);
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 sealing does not fail on in-memory input");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Opens what [`ServerSecret::seal`] made; the wrong key (or data moved to another user
    /// or URL) is [`ApiError::RemoteKeyWrong`].
    pub fn open(
        &self,
        key: &StorageKey,
        user: UserId,
        link: &StoredLink,
    ) -> Result<Credentials, ApiError> {
        let raw = URL_SAFE_NO_PAD
            .decode(&link.sealed)
            .map_err(|_| ApiError::RemoteKeyWrong)?;
        if raw.len() < 24 + 16 {
            return Err(ApiError::RemoteKeyWrong);
        }
        let (nonce, sealed) = raw.split_at(24);
        let sealing = self.derive(key, user, &link.id);
        let cipher = XChaCha20Poly1305::new(sealing.as_ref().into());
        let aad = associated_data(user, &link.id, &link.url);
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    XNonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: &aad,
                    },
                )
                .map_err(|_| ApiError::RemoteKeyWrong)?,
        );
        let length = plain
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .filter(|n| 4 + n <= plain.len())
            .ok_or(ApiError::RemoteKeyWrong)?;
        let text = |bytes: &[u8]| {
            std::str::from_utf8(bytes)
                .map(|s| Zeroizing::new(s.to_owned()))
                .map_err(|_| ApiError::RemoteKeyWrong)
        };
        Ok(Credentials {
            username: text(&plain[4..4 + length])?,
            password: text(&plain[4 + length..])?,
        })
    }
}

fn associated_data(user: UserId, link: &str, url: &str) -> Vec<u8> {
    let user = user.to_string();
    [
        LABEL,
        b"\0",
        user.as_bytes(),
        b"\0",
        link.as_bytes(),
        b"\0",
        url.as_bytes(),
    ]
    .concat()
}

/// A random link id (128 bits, hex).
pub fn new_link_id() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    crate::accounts::hex(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> Credentials {
        Credentials {
            username: Zeroizing::new("ada".into()),
            password: Zeroizing::new("xK3-app-password-Qz".into()),
        }
    }

    #[test]
    fn sealed_credentials_open_only_with_the_key_user_link_and_url_they_were_sealed_for() {
        let dir = tempfile::tempdir().unwrap();
        let secret = ServerSecret::load(dir.path(), None).unwrap();
        let again = ServerSecret::load(dir.path(), None).unwrap();
        let (key, user) = (StorageKey::random(), UserId::random());
        let link = StoredLink {
            id: new_link_id(),
            url: "https://cloud.example/dav/".into(),
            sealed: secret.seal(
                &key,
                user,
                "x",
                "https://cloud.example/dav/",
                &credentials(),
            ),
            linked_ms: 1,
        };
        // Sealed for link id "x", stored under another: does not open.
        assert!(matches!(
            again.open(&key, user, &link),
            Err(ApiError::RemoteKeyWrong)
        ));
        let link = StoredLink {
            sealed: secret.seal(&key, user, &link.id, &link.url, &credentials()),
            ..link
        };
        let opened = again.open(&key, user, &link).unwrap();
        assert_eq!(opened.username.as_str(), "ada");
        assert_eq!(opened.password.as_str(), "xK3-app-password-Qz");
        assert!(again.open(&StorageKey::random(), user, &link).is_err());
        assert!(again.open(&key, UserId::random(), &link).is_err());
        let moved = StoredLink {
            url: "https://evil.example/".into(),
            ..link.clone()
        };
        assert!(again.open(&key, user, &moved).is_err());
        // Another server secret (another data directory): does not open either.
        let other = tempfile::tempdir().unwrap();
        let stranger = ServerSecret::load(other.path(), None).unwrap();
        assert!(stranger.open(&key, user, &link).is_err());
        // The operator's sealing key is used where there is no file, and writes none; where
        // there is one, the file keeps being used.
        let keyed = tempfile::tempdir().unwrap();
        let operator = ServerSecret::load(keyed.path(), Some("k".repeat(40).as_str())).unwrap();
        assert!(operator.open(&key, user, &link).is_err());
        assert!(!keyed.path().join(SECRET_FILE).exists());
        let kept = ServerSecret::load(dir.path(), Some("k".repeat(40).as_str())).unwrap();
        assert!(kept.open(&key, user, &link).is_ok());
    }

    #[test]
    fn keys_are_read_from_headers_strictly() {
        let key = StorageKey::random();
        let mut headers = HeaderMap::new();
        assert!(
            StorageKey::from_headers(&headers, KEY_HEADER)
                .unwrap()
                .is_none()
        );
        headers.insert(KEY_HEADER, key.encode().parse().unwrap());
        let read = StorageKey::from_headers(&headers, KEY_HEADER)
            .unwrap()
            .unwrap();
        assert_eq!(read.0.as_ref(), key.0.as_ref());
        for bad in ["short", "!!!!", &URL_SAFE_NO_PAD.encode([0u8; 31])] {
            headers.insert(KEY_HEADER, bad.parse().unwrap());
            assert!(matches!(
                StorageKey::from_headers(&headers, KEY_HEADER),
                Err(ApiError::RemoteKeyMalformed { .. })
            ));
        }
    }
}

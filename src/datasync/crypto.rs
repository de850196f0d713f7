//! Client-side encryption of sync payloads. Pure: no I/O, so it can be tested and fuzzed alone.
//!
//! - The root key is derived on the client from a user secret that never leaves it
//!   ([`RootKey::derive`], argon2id), or from key material the client already holds, such as an
//!   account's scoped key ([`RootKey::from_key_material`], HKDF-SHA256). It is never sent.
//! - Each collection has its own random 256-bit key, stored as an ordinary record
//!   (`keys/<collection>`) sealed under the root key. Changing the user secret only re-seals
//!   those records.
//! - Every payload is sealed with XChaCha20-Poly1305 under a random 192-bit nonce (safe to pick
//!   at random at any volume), with `collection`, record id and key id as associated data: a
//!   server that moves a ciphertext to another record, collection or key is caught on opening.
//! - The plaintext is framed with its length and, optionally, padded to its Padmé size, so the
//!   server learns a size class rather than the exact size.
//!
//! Sealed payload (the record's `payload` string): `{"v":1,"kid":…,"n":…,"ct":…}` with `n` and
//! `ct` in unpadded base64url.

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};

/// The collection holding every collection's key, sealed under the root key.
pub const KEYS_COLLECTION: &str = "keys";

/// Domain separation for the associated data of every sealed payload.
const AAD_LABEL: &[u8] = b"wheresmyfox-sync-v1";

/// Why a payload cannot be opened (or a key made).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("the payload is not a sealed sync payload")]
    Malformed,
    #[error("the payload is sealed with key {found}, not {expected}")]
    WrongKey { found: String, expected: String },
    #[error(
        "the payload does not authenticate (altered, or moved from another record or collection)"
    )]
    Forged,
    #[error("key derivation failed: {0}")]
    Derivation(String),
}

/// A 256-bit key and its id. `Debug` never shows the key.
#[derive(Clone)]
pub struct SecretKey {
    /// Public: travels beside ciphertexts and names the key that sealed them.
    pub kid: String,
    bytes: [u8; 32],
}

/// The user's root key: seals the collection keys only.
#[derive(Clone, Debug)]
pub struct RootKey(pub SecretKey);

/// A collection's key, as stored (sealed) in `keys/<collection>`.
#[derive(Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    key: String,
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    v: u8,
    kid: String,
    n: String,
    ct: String,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        // Best effort: do not leave key bytes behind in freed memory.
        self.bytes.fill(0);
        std::hint::black_box(&self.bytes);
    }
}

// === Keys ===

impl SecretKey {
    fn from_bytes(bytes: [u8; 32], label: &str) -> SecretKey {
        // The id is a fingerprint: it names the key without revealing it.
        let mut input = label.as_bytes().to_vec();
        input.extend_from_slice(&bytes);
        let fingerprint = digest(&SHA256, &input);
        let kid = fingerprint.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        SecretKey { kid, bytes }
    }

    /// The raw key, for a client that keeps it in its own keychain. Never send it.
    pub fn expose(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// A fresh random key.
    pub fn random() -> SecretKey {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        SecretKey::from_bytes(bytes, "collection-key")
    }
}

impl RootKey {
    /// Derives the root key from a user secret (a passphrase that stays on the client) with
    /// argon2id (19 MiB, 2 passes), salted by the user id so that equal secrets of different
    /// users give different keys.
    pub fn derive(secret: &str, userid: &str) -> Result<RootKey, CryptoError> {
        let salt = digest(
            &SHA256,
            format!("wheresmyfox-sync-root-salt-v1\0{userid}").as_bytes(),
        );
        let params = Params::new(19 * 1024, 2, 1, Some(32))
            .map_err(|e| CryptoError::Derivation(e.to_string()))?;
        let mut bytes = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(secret.as_bytes(), &salt.as_ref()[..16], &mut bytes)
            .map_err(|e| CryptoError::Derivation(e.to_string()))?;
        Ok(RootKey(SecretKey::from_bytes(bytes, "root-key")))
    }

    /// Derives the root key from high-entropy key material the client already holds (an
    /// account's scoped sync key, say) with HKDF-SHA256: no stretching needed.
    pub fn from_key_material(material: &[u8], userid: &str) -> RootKey {
        struct Len;
        impl ring::hkdf::KeyType for Len {
            fn len(&self) -> usize {
                32
            }
        }
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, userid.as_bytes());
        let info = [b"wheresmyfox-sync-root-v1".as_slice()];
        let mut bytes = [0u8; 32];
        salt.extract(material)
            .expand(&info, Len)
            .and_then(|okm| okm.fill(&mut bytes))
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        RootKey(SecretKey::from_bytes(bytes, "root-key"))
    }

    /// Seals a collection key for storage as `keys/<collection>`.
    pub fn wrap(&self, collection: &str, key: &SecretKey) -> String {
        let stored = StoredKey {
            kid: key.kid.clone(),
            key: URL_SAFE_NO_PAD.encode(key.bytes),
        };
        let plaintext = serde_json::to_vec(&stored).expect("a stored key serializes");
        seal(&self.0, KEYS_COLLECTION, collection, &plaintext, false)
    }

    /// Opens `keys/<collection>`.
    pub fn unwrap(&self, collection: &str, payload: &str) -> Result<SecretKey, CryptoError> {
        let plaintext = open(&self.0, KEYS_COLLECTION, collection, payload)?;
        let stored: StoredKey =
            serde_json::from_slice(&plaintext).map_err(|_| CryptoError::Malformed)?;
        let raw = URL_SAFE_NO_PAD
            .decode(&stored.key)
            .map_err(|_| CryptoError::Malformed)?;
        let bytes: [u8; 32] = raw.try_into().map_err(|_| CryptoError::Malformed)?;
        let key = SecretKey::from_bytes(bytes, "collection-key");
        if key.kid != stored.kid {
            return Err(CryptoError::Malformed);
        }
        Ok(key)
    }
}

// === Sealing ===

/// The Padmé size for `len` bytes: at most 12% larger, and it reveals only O(log log len) bits.
pub fn padme(len: u64) -> u64 {
    if len < 2 {
        return len;
    }
    let e = 63 - u64::from(len.leading_zeros());
    let s = 63 - u64::from(e.leading_zeros()) + 1;
    let mask = (1u64 << (e - s)) - 1;
    (len + mask) & !mask
}

fn aad(collection: &str, id: &str, kid: &str) -> Vec<u8> {
    let mut aad = AAD_LABEL.to_vec();
    for part in [collection, id, kid] {
        aad.push(0);
        aad.extend_from_slice(part.as_bytes());
    }
    aad
}

/// Seals `plaintext` as the payload of record `collection/id`.
pub fn seal(key: &SecretKey, collection: &str, id: &str, plaintext: &[u8], pad: bool) -> String {
    let mut framed = (plaintext.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(plaintext);
    if pad {
        framed.resize(padme(framed.len() as u64) as usize, 0);
    }
    let mut nonce = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut nonce);
    let cipher = XChaCha20Poly1305::new((&key.bytes).into());
    let aad = aad(collection, id, &key.kid);
    let ciphertext = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &framed,
                aad: &aad,
            },
        )
        .expect("XChaCha20-Poly1305 encrypts any length this side of 256 GiB");
    serde_json::to_string(&Sealed {
        v: 1,
        kid: key.kid.clone(),
        n: URL_SAFE_NO_PAD.encode(nonce),
        ct: URL_SAFE_NO_PAD.encode(ciphertext),
    })
    .expect("a sealed payload serializes")
}

/// Bytes a sealed blob chunk adds to its plaintext: the nonce and the tag.
pub const CHUNK_OVERHEAD: usize = 24 + 16;

/// Associated data of blob chunk `index` of `blob`: a chunk moved to another place in the
/// blob, to another blob, or a blob cut short (only the last chunk says it is the last)
/// fails to open.
fn chunk_aad(blob: &str, index: u64, last: bool, kid: &str) -> Vec<u8> {
    let mut aad = b"wheresmyfox-blob-v1\0".to_vec();
    aad.extend_from_slice(blob.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&index.to_be_bytes());
    aad.push(u8::from(last));
    aad.extend_from_slice(kid.as_bytes());
    aad
}

/// Seals one chunk of a blob: nonce (24 bytes), then ciphertext and tag.
pub fn seal_chunk(
    key: &SecretKey,
    blob: &str,
    index: u64,
    last: bool,
    plaintext: &[u8],
) -> Vec<u8> {
    let mut nonce = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut nonce);
    let cipher = XChaCha20Poly1305::new((&key.bytes).into());
    let aad = chunk_aad(blob, index, last, &key.kid);
    let ciphertext = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .expect("XChaCha20-Poly1305 encrypts any length this side of 256 GiB");
    let mut sealed = nonce.to_vec();
    sealed.extend_from_slice(&ciphertext);
    sealed
}

/// Opens what [`seal_chunk`] made.
pub fn open_chunk(
    key: &SecretKey,
    blob: &str,
    index: u64,
    last: bool,
    sealed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < CHUNK_OVERHEAD {
        return Err(CryptoError::Malformed);
    }
    let (nonce, ciphertext) = sealed.split_at(24);
    let cipher = XChaCha20Poly1305::new((&key.bytes).into());
    let aad = chunk_aad(blob, index, last, &key.kid);
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .map_err(|_| CryptoError::Forged)
}

/// Opens the payload of record `collection/id`.
pub fn open(
    key: &SecretKey,
    collection: &str,
    id: &str,
    payload: &str,
) -> Result<Vec<u8>, CryptoError> {
    let sealed: Sealed = serde_json::from_str(payload).map_err(|_| CryptoError::Malformed)?;
    if sealed.v != 1 {
        return Err(CryptoError::Malformed);
    }
    if sealed.kid != key.kid {
        return Err(CryptoError::WrongKey {
            found: sealed.kid,
            expected: key.kid.clone(),
        });
    }
    let nonce = URL_SAFE_NO_PAD
        .decode(&sealed.n)
        .map_err(|_| CryptoError::Malformed)?;
    let ciphertext = URL_SAFE_NO_PAD
        .decode(&sealed.ct)
        .map_err(|_| CryptoError::Malformed)?;
    if nonce.len() != 24 {
        return Err(CryptoError::Malformed);
    }
    let cipher = XChaCha20Poly1305::new((&key.bytes).into());
    let framed = cipher
        .decrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &ciphertext,
                aad: &aad(collection, id, &key.kid),
            },
        )
        .map_err(|_| CryptoError::Forged)?;
    let (len, rest) = framed.split_at_checked(4).ok_or(CryptoError::Malformed)?;
    let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
    rest.get(..len)
        .map(<[u8]>::to_vec)
        .ok_or(CryptoError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let key = SecretKey::random();
        let payload = seal(&key, "contacts", "a1", b"Ada Lovelace", true);
        assert!(!payload.contains("Ada"));
        assert_eq!(
            open(&key, "contacts", "a1", &payload).unwrap(),
            b"Ada Lovelace"
        );
        // Moved to another record or collection: refused.
        assert_eq!(
            open(&key, "contacts", "b2", &payload),
            Err(CryptoError::Forged)
        );
        assert_eq!(open(&key, "tabs", "a1", &payload), Err(CryptoError::Forged));
        let other = SecretKey::random();
        assert!(matches!(
            open(&other, "contacts", "a1", &payload),
            Err(CryptoError::WrongKey { .. })
        ));
    }

    #[test]
    fn padding_hides_exact_sizes() {
        assert_eq!(padme(0), 0);
        assert_eq!(padme(1), 1);
        assert_eq!(padme(9), 10);
        assert_eq!(padme(1000), 1024);
        for len in [10u64, 100, 1000, 65_537, 1 << 30] {
            let padded = padme(len);
            assert!(padded >= len && (padded - len) as f64 <= len as f64 * 0.12);
        }
        let key = SecretKey::random();
        let a = seal(&key, "c", "x", &[7u8; 1001], true);
        let b = seal(&key, "c", "x", &[7u8; 1007], true);
        assert_eq!(a.len(), b.len());
    }

    #[test]
    fn root_key_wraps_collection_keys() {
        let root = RootKey::from_key_material(&[42u8; 32], "user-1");
        let same = RootKey::from_key_material(&[42u8; 32], "user-1");
        assert_eq!(root.0.kid, same.0.kid);
        assert_ne!(
            root.0.kid,
            RootKey::from_key_material(&[42u8; 32], "user-2").0.kid
        );
        let key = SecretKey::random();
        let wrapped = root.wrap("contacts", &key);
        let unwrapped = root.unwrap("contacts", &wrapped).unwrap();
        assert_eq!(unwrapped.kid, key.kid);
        assert_eq!(unwrapped.bytes, key.bytes);
        assert!(root.unwrap("tabs", &wrapped).is_err());
        let derived = RootKey::derive("correct horse battery staple", "user-1").unwrap();
        assert_eq!(
            derived.0.kid,
            RootKey::derive("correct horse battery staple", "user-1")
                .unwrap()
                .0
                .kid
        );
    }
}

//! Sealing device secrets at rest.
//!
//! The server must be able to use a device's Hawk key, so it cannot keep only a hash of it the
//! way it does for passwords and tokens. When the operator gives a sealing key
//! (`storage.seal_key`, or `WHERESMYFOX_SEAL_KEY` in the environment), secrets are written to the
//! journal and snapshots encrypted with AES-256-GCM under a key derived from it (HKDF-SHA256),
//! so a copy of the data directory alone does not let anyone impersonate a device or forge the
//! server's signatures. Without one they are written in the clear, protected only by the data
//! files' mode 0600. Either way they are held in memory while the server runs.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// A device secret as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredSecret {
    Plain(String),
    /// base64 of nonce (12 bytes) followed by ciphertext and tag.
    Sealed(String),
}

/// Seals and opens secrets; holds the derived key, if any.
pub struct Sealer {
    key: Option<LessSafeKey>,
    rng: SystemRandom,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "the data holds sealed device secrets but no sealing key was given (storage.seal_key or WHERESMYFOX_SEAL_KEY)"
    )]
    NoKey,
    #[error(
        "a sealed device secret does not open with the given sealing key (wrong key, or damaged data)"
    )]
    WrongKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("sealing", &self.key.is_some())
            .finish()
    }
}

// === Sealer ===

impl Sealer {
    /// A sealer from operator key material (any length of at least 32 bytes), or none.
    pub fn new(material: Option<&str>) -> Sealer {
        let key = material.map(|material| {
            let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"wheresmyfox secret sealing v1");
            let prk = salt.extract(material.as_bytes());
            let okm = prk
                .expand(&[b"device secrets"], &AES_256_GCM)
                .expect("an AES-256 key length is a valid HKDF output length");
            let mut bytes = [0u8; 32];
            okm.fill(&mut bytes).expect("32 bytes fit");
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).expect("32-byte key"))
        });
        Sealer {
            key,
            rng: SystemRandom::new(),
        }
    }

    pub fn is_sealing(&self) -> bool {
        self.key.is_some()
    }

    pub fn seal(&self, secret: &str) -> StoredSecret {
        let Some(key) = &self.key else {
            return StoredSecret::Plain(secret.to_owned());
        };
        let mut nonce = [0u8; 12];
        self.rng
            .fill(&mut nonce)
            .expect("the system random source works");
        let mut data = secret.as_bytes().to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .expect("sealing a short secret cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        StoredSecret::Sealed(STANDARD.encode(out))
    }

    pub fn open(&self, stored: &StoredSecret) -> Result<String, SealError> {
        match stored {
            StoredSecret::Plain(secret) => Ok(secret.clone()),
            StoredSecret::Sealed(text) => {
                let key = self.key.as_ref().ok_or(SealError::NoKey)?;
                let bytes = STANDARD.decode(text).map_err(|_| SealError::WrongKey)?;
                if bytes.len() < 12 + 16 {
                    return Err(SealError::WrongKey);
                }
                let (nonce, sealed) = bytes.split_at(12);
                let nonce =
                    Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::WrongKey)?;
                let mut sealed = sealed.to_vec();
                let plain = key
                    .open_in_place(nonce, Aad::empty(), &mut sealed)
                    .map_err(|_| SealError::WrongKey)?;
                String::from_utf8(plain.to_vec()).map_err(|_| SealError::WrongKey)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens() {
        let sealer = Sealer::new(Some("an operator key of at least thirty-two bytes"));
        let stored = sealer.seal("9f86d081884c7d659a2feaa0c55ad015");
        assert!(matches!(stored, StoredSecret::Sealed(ref s) if !s.contains("9f86d081")));
        assert_eq!(
            sealer.open(&stored).unwrap(),
            "9f86d081884c7d659a2feaa0c55ad015"
        );
        let other = Sealer::new(Some("a different operator key, also long enough"));
        assert!(matches!(other.open(&stored), Err(SealError::WrongKey)));
        assert!(matches!(
            Sealer::new(None).open(&stored),
            Err(SealError::NoKey)
        ));
        assert_eq!(
            Sealer::new(None).seal("abc"),
            StoredSecret::Plain("abc".into())
        );
    }
}

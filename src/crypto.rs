//! Encryption of SMTP passwords at rest: XChaCha20-Poly1305 keyed by
//! `SECRET_KEY` (32 bytes, base64). Stored form: `v1:` + base64(nonce ‖ ciphertext).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// A value that must never be printed: `Debug` shows only that it is set.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(********)")
    }
}

const PREFIX: &str = "v1:";
const NONCE_LEN: usize = 24;

/// How to make a key, for messages that ask for one.
pub const KEY_HINT: &str =
    "set SECRET_KEY to 32 random bytes in base64, e.g. the output of `openssl rand -base64 32`";

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use hmac::{KeyInit, Mac};
    let mut mac = HmacSha256::new_from_slice(key).expect("any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("SECRET_KEY: not 32 bytes of base64 ({KEY_HINT})")]
    BadKey,
    #[error("a stored secret cannot be decrypted with this SECRET_KEY")]
    Undecryptable,
}

/// A cipher built from `SECRET_KEY`, and the key that signs audit-log
/// checkpoints, derived from it. `Debug` prints nothing of either.
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
    signing: [u8; 32],
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Separates the signing key from the encryption key: both come from
/// `SECRET_KEY`, and neither reveals the other.
const SIGNING_KEY_LABEL: &[u8] = b"audit-alert audit-log checkpoints v1";

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(********)")
    }
}

impl SecretBox {
    pub fn from_key(key: &Secret) -> Result<Self, CryptoError> {
        let bytes = B64
            .decode(key.expose().trim())
            .map_err(|_| CryptoError::BadKey)?;
        let cipher = XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| CryptoError::BadKey)?;
        Ok(Self {
            cipher,
            signing: hmac_sha256(&bytes, SIGNING_KEY_LABEL),
        })
    }

    /// HMAC-SHA256 of `message` under the checkpoint signing key.
    pub fn sign(&self, message: &[u8]) -> [u8; 32] {
        hmac_sha256(&self.signing, message)
    }

    /// Whether `signature` is [`SecretBox::sign`]'s of `message`, compared in
    /// constant time.
    pub fn verify_signature(&self, message: &[u8], signature: &[u8]) -> bool {
        use hmac::{KeyInit, Mac};
        let mut mac = HmacSha256::new_from_slice(&self.signing).expect("any key length");
        mac.update(message);
        mac.verify_slice(signature).is_ok()
    }

    pub fn encrypt(&self, plaintext: &str) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(&nonce, plaintext.as_bytes())
            .expect("encryption into a Vec does not fail");
        let mut out = nonce.to_vec();
        out.extend(ciphertext);
        format!("{PREFIX}{}", B64.encode(out))
    }

    pub fn decrypt(&self, stored: &str) -> Result<Secret, CryptoError> {
        let raw = stored
            .strip_prefix(PREFIX)
            .and_then(|b| B64.decode(b).ok())
            .filter(|b| b.len() > NONCE_LEN)
            .ok_or(CryptoError::Undecryptable)?;
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), ciphertext)
            .map_err(|_| CryptoError::Undecryptable)?;
        String::from_utf8(plain)
            .map(Secret::new)
            .map_err(|_| CryptoError::Undecryptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Secret {
        Secret::new(B64.encode([byte; 32]))
    }

    #[test]
    fn round_trips_and_hides_the_plaintext() {
        let b = SecretBox::from_key(&key(7)).unwrap();
        let stored = b.encrypt("hunter2");
        assert!(stored.starts_with("v1:") && !stored.contains("hunter2"));
        assert_ne!(stored, b.encrypt("hunter2"), "fresh nonce each time");
        assert_eq!(b.decrypt(&stored).unwrap().expose(), "hunter2");
    }

    #[test]
    fn wrong_key_or_garbage_is_an_error() {
        let stored = SecretBox::from_key(&key(7)).unwrap().encrypt("x");
        let other = SecretBox::from_key(&key(8)).unwrap();
        assert!(other.decrypt(&stored).is_err());
        assert!(other.decrypt("plain").is_err());
        assert!(SecretBox::from_key(&Secret::new("short")).is_err());
    }
}

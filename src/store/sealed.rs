//! Secrets at rest: installation tokens are sealed with AES-256-GCM under a key derived from
//! the deployment secret before they reach disk or Redis, bound to the key they are stored
//! under (associated data), so a value copied to another key does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const NONCE_LEN: usize = 12;

/// Seals and opens small secrets.
pub(crate) struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer { key: <redacted> }")
    }
}

impl Sealer {
    /// A sealer keyed by HMAC-SHA256(secret, purpose label): replicas sharing the secret can
    /// open each other's values; nothing else can.
    pub(crate) fn new(secret: &[u8]) -> Sealer {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(b"ghgate/v1/sealed-values");
        let key = mac.finalize().into_bytes();
        Sealer { cipher: Aes256Gcm::new_from_slice(&key).expect("32-byte key") }
    }

    /// `nonce || ciphertext+tag`.
    pub(crate) fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = Nonce::try_from(&nonce_bytes[..]).expect("12-byte nonce");
        let sealed = self
            .cipher
            .encrypt(&nonce, Payload { msg: plaintext, aad })
            .expect("encryption in memory cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plaintext, or `None` when the value was not sealed by this key for this `aad`.
    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let nonce = Nonce::try_from(&sealed[..NONCE_LEN]).ok()?;
        self.cipher.decrypt(&nonce, Payload { msg: &sealed[NONCE_LEN..], aad }).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_secret_and_key() {
        let a = Sealer::new(b"secret-one");
        let sealed = a.seal(b"t:app:1", b"ghs_token");
        assert!(!sealed.windows(9).any(|w| w == b"ghs_token"), "not readable in clear");
        assert_eq!(a.open(b"t:app:1", &sealed).unwrap(), b"ghs_token");
        assert!(a.open(b"t:app:2", &sealed).is_none(), "bound to its key");
        assert!(Sealer::new(b"secret-two").open(b"t:app:1", &sealed).is_none());
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert!(a.open(b"t:app:1", &tampered).is_none());
    }
}

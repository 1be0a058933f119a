//! AES-256-GCM for vault values and reject bodies, with associated data that binds each
//! ciphertext to where it belongs, so a ciphertext copied onto another row fails to decrypt.
//!
//! Cipher state is built once per key and reused; nonces are 96 random bits per encryption
//! (see SECURITY.md for the 2^32 budget that implies).

use super::keyring::{KeyState, Keyring, KeyringError};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use std::collections::HashMap;
use std::fmt;
use zeroize::Zeroizing;

/// Version tag at the start of the associated data; changing the layout changes it.
const AAD_VERSION: &[u8] = b"etl-engine/v1";

/// Errors from encryption and decryption. Never contain plaintext or key material.
#[derive(Debug, thiserror::Error)]
pub enum CipherError {
    #[error(
        "key {0} is not in the keyring; add it back (as decrypt_only) to decrypt values written with it"
    )]
    UnknownKey(String),
    #[error(
        "key {0} is retired in the keyring and cannot decrypt (a retired key keeps no material)"
    )]
    RetiredKey(String),
    #[error(
        "key {0} is not loaded by this command (it loads only the keys it needs; recovery and rotation load decrypt-only keys)"
    )]
    NotLoaded(String),
    #[error("no active encryption key in the keyring")]
    NoActiveKey,
    #[error(
        "decryption with key {0} failed: the ciphertext, nonce or its binding (table, column, token) does not match, or the key is wrong"
    )]
    Authentication(String),
    #[error("stored nonce has {0} bytes, expected 12")]
    BadNonce(usize),
    #[error("encryption failed")]
    Encrypt,
    #[error(transparent)]
    Keyring(#[from] KeyringError),
}

/// What a ciphertext is bound to: the parts of its associated data besides the key id.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// Target table (vault values) or pipeline name (reject bodies).
    pub scope: &'a str,
    /// Column name, or `rejects` for reject bodies.
    pub column: &'a str,
    /// The token (vault values) or message id (reject bodies).
    pub token: &'a str,
}

/// A ciphertext with what is needed to decrypt it.
#[derive(Clone)]
pub struct Sealed {
    /// The key it was encrypted with.
    pub key_id: String,
    /// The random 96-bit nonce.
    pub nonce: [u8; 12],
    /// Ciphertext followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .field("len", &self.ciphertext.len())
            .finish()
    }
}

/// Length-prefixed fields, so ("ab","c") and ("a","bc") differ.
fn aad(binding: Binding<'_>, key_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + binding.token.len());
    for part in [
        AAD_VERSION,
        binding.scope.as_bytes(),
        binding.column.as_bytes(),
        binding.token.as_bytes(),
        key_id.as_bytes(),
    ] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// Encrypts with the active key and decrypts with any non-retired key of a keyring.
pub struct VaultCipher {
    /// Every key of the keyring with its state; cipher state only for the keys loaded.
    ciphers: HashMap<String, (KeyState, Option<Aes256Gcm>)>,
    active: Option<String>,
}

impl fmt::Debug for VaultCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultCipher")
            .field("keys", &self.ciphers.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

impl VaultCipher {
    /// Builds cipher state for every encryption key the keyring has loaded (see `KeyUse`);
    /// the others are known by id and state only, so errors can say why they do not decrypt.
    pub fn new(ring: &Keyring) -> Result<Self, CipherError> {
        let mut ciphers = HashMap::new();
        let mut active = None;
        for k in &ring.encryption_keys {
            let c = match (k.state, k.material()) {
                (KeyState::Retired, _) | (_, Err(_)) => None,
                (_, Ok(m)) => Some(Aes256Gcm::new_from_slice(m).map_err(|_| CipherError::Encrypt)?),
            };
            if k.state == KeyState::Active && c.is_some() {
                active = Some(k.id.clone());
            }
            ciphers.insert(k.id.clone(), (k.state, c));
        }
        Ok(Self { ciphers, active })
    }

    /// The id new ciphertexts are written with.
    pub fn active_key_id(&self) -> Option<&str> {
        self.active.as_deref()
    }

    /// Encrypts `plaintext` with the active key and a fresh random nonce.
    pub fn encrypt(&self, binding: Binding<'_>, plaintext: &[u8]) -> Result<Sealed, CipherError> {
        let key_id = self.active.as_deref().ok_or(CipherError::NoActiveKey)?;
        let cipher = self
            .ciphers
            .get(key_id)
            .and_then(|(_, c)| c.as_ref())
            .ok_or(CipherError::NoActiveKey)?;
        let nonce = next_nonce().map_err(|_| CipherError::Encrypt)?;
        let aad = aad(binding, key_id);
        let ciphertext = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| CipherError::Encrypt)?;
        Ok(Sealed {
            key_id: key_id.to_string(),
            nonce,
            ciphertext,
        })
    }

    /// Decrypts a stored value; fails if any byte or any part of the binding differs.
    pub fn decrypt(
        &self,
        binding: Binding<'_>,
        key_id: &str,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CipherError> {
        let (state, cipher) = self
            .ciphers
            .get(key_id)
            .ok_or_else(|| CipherError::UnknownKey(key_id.to_string()))?;
        if *state == KeyState::Retired {
            return Err(CipherError::RetiredKey(key_id.to_string()));
        }
        let cipher = cipher
            .as_ref()
            .ok_or_else(|| CipherError::NotLoaded(key_id.to_string()))?;
        let nonce: [u8; 12] = nonce
            .try_into()
            .map_err(|_| CipherError::BadNonce(nonce.len()))?;
        let aad = aad(binding, key_id);
        cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CipherError::Authentication(key_id.to_string()))
    }

    /// Re-encrypts a stored value under the active key, for rotation. The plaintext exists
    /// only in a zeroizing buffer inside this call. Returns `None` when the value is already
    /// under the active key.
    pub fn reencrypt(
        &self,
        binding: Binding<'_>,
        key_id: &str,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Option<Sealed>, CipherError> {
        let active = self.active.as_deref().ok_or(CipherError::NoActiveKey)?;
        if key_id == active {
            return Ok(None);
        }
        let plain = self.decrypt(binding, key_id, nonce, ciphertext)?;
        self.encrypt(binding, &plain).map(Some)
    }
}

/// Nonces per refill of a thread's nonce pool: one `getrandom` call serves this many
/// encryptions (a system call per encryption showed in profiles).
const POOL_NONCES: usize = 341;

thread_local! {
    /// Random bytes from the operating system, handed out 12 at a time and never twice.
    static NONCE_POOL: std::cell::RefCell<([u8; 12 * POOL_NONCES], usize)> =
        const { std::cell::RefCell::new(([0; 12 * POOL_NONCES], POOL_NONCES)) };
}

/// A fresh random 96-bit nonce: the next unused 12 bytes of this thread's pool, refilled from
/// the operating system's CSPRNG when used up. Random nonces stay unique with overwhelming
/// probability up to the key's budget of 2^32 encryptions (counted, see `key_usage`).
fn next_nonce() -> Result<[u8; 12], getrandom::Error> {
    NONCE_POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let (bytes, next) = &mut *pool;
        if *next == POOL_NONCES {
            getrandom::fill(bytes)?;
            *next = 0;
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&bytes[*next * 12..*next * 12 + 12]);
        *next += 1;
        Ok(nonce)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(token: &str) -> Binding<'_> {
        Binding {
            scope: "user_logins",
            column: "masked_ip",
            token,
        }
    }

    #[test]
    fn nonces_do_not_repeat_across_pool_refills() {
        let nonces: std::collections::HashSet<[u8; 12]> = (0..3 * POOL_NONCES)
            .map(|_| next_nonce().unwrap())
            .collect();
        assert_eq!(nonces.len(), 3 * POOL_NONCES);
    }

    #[test]
    fn round_trip_and_tamper() {
        let ring = Keyring::generate().unwrap();
        let c = VaultCipher::new(&ring).unwrap();
        let s = c.encrypt(binding("t1"), b"10.0.0.1").unwrap();
        assert_ne!(&s.ciphertext[..8], b"10.0.0.1");
        assert_eq!(
            &*c.decrypt(binding("t1"), &s.key_id, &s.nonce, &s.ciphertext)
                .unwrap(),
            b"10.0.0.1"
        );
        // Copied to another token's row: fails.
        assert!(matches!(
            c.decrypt(binding("t2"), &s.key_id, &s.nonce, &s.ciphertext),
            Err(CipherError::Authentication(_))
        ));
        // Another column: fails.
        let other = Binding {
            scope: "user_logins",
            column: "masked_device_id",
            token: "t1",
        };
        assert!(
            c.decrypt(other, &s.key_id, &s.nonce, &s.ciphertext)
                .is_err()
        );
        // Flipped byte: fails.
        let mut bad = s.ciphertext.clone();
        bad[0] ^= 1;
        assert!(c.decrypt(binding("t1"), &s.key_id, &s.nonce, &bad).is_err());
        // Unknown key id: names it.
        let err = c
            .decrypt(binding("t1"), "nope", &s.nonce, &s.ciphertext)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"));
        // Two encryptions of the same value differ (random nonce).
        let s2 = c.encrypt(binding("t1"), b"10.0.0.1").unwrap();
        assert_ne!(s.nonce, s2.nonce);
    }

    #[test]
    fn reencrypt_moves_to_the_active_key_and_keeps_the_binding() {
        let mut ring = Keyring::generate().unwrap();
        let old = VaultCipher::new(&ring).unwrap();
        let s = old.encrypt(binding("t1"), b"10.0.0.1").unwrap();
        let new_id = ring.add_encryption_key().unwrap();
        let c = VaultCipher::new(&ring).unwrap();
        let r = c
            .reencrypt(binding("t1"), &s.key_id, &s.nonce, &s.ciphertext)
            .unwrap()
            .unwrap();
        assert_eq!(r.key_id, new_id);
        assert_eq!(
            &*c.decrypt(binding("t1"), &r.key_id, &r.nonce, &r.ciphertext)
                .unwrap(),
            b"10.0.0.1"
        );
        // Already under the active key: nothing to do.
        assert!(
            c.reencrypt(binding("t1"), &r.key_id, &r.nonce, &r.ciphertext)
                .unwrap()
                .is_none()
        );
        // A value bound elsewhere is not laundered by rotation.
        assert!(
            c.reencrypt(binding("t2"), &s.key_id, &s.nonce, &s.ciphertext)
                .is_err()
        );
        // Debug never shows ciphertext or nonce bytes.
        let dbg = format!("{r:?} {c:?}");
        assert!(
            dbg.contains(&new_id) && !dbg.contains(&format!("{:?}", r.nonce)),
            "{dbg}"
        );
    }

    #[test]
    fn wrong_keyring_fails_cleanly() {
        let a = VaultCipher::new(&Keyring::generate().unwrap()).unwrap();
        let mut ring_b = Keyring::generate().unwrap();
        let s = a.encrypt(binding("t"), b"x").unwrap();
        // Same id, different material.
        ring_b.encryption_keys[0].id = s.key_id.clone();
        let b = VaultCipher::new(&ring_b).unwrap();
        assert!(matches!(
            b.decrypt(binding("t"), &s.key_id, &s.nonce, &s.ciphertext),
            Err(CipherError::Authentication(_))
        ));
    }
}

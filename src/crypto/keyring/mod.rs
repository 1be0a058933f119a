//! The keyring: versioned secret keys for hashing (HMAC) and for vault encryption (AES-256-GCM),
//! loaded from a JSON file or environment variable, never from a spec.
//!
//! A keyring is plain (each key's material in base64) or wrapped by an AWS KMS key (each key's
//! material a KMS ciphertext blob, unwrapped in memory at start: see [`kms`]). Every command
//! loads only the keys it needs ([`KeyUse`]): `run` never holds a decrypt-only key.
//!
//! Key bytes live only in zeroizing secret types; `Debug` prints ids and states, never material.
//! Errors never echo file content, because the file content *is* the secret.

use secrecy::{ExposeSecret, SecretBox};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

mod file;
pub mod kms;
mod manage;

pub use file::{KEYRING_ENV, KEYRING_JSON_ENV, stash_json_from_env};
pub use kms::KmsSettings;

/// Errors loading or using a keyring. Messages name files and key ids, never key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(
        "no keyring: set {KEYRING_ENV} to a keyring file (create one with `etl-engine keygen FILE`), set {KEYRING_JSON_ENV}, or name one in the spec under vault.keyring"
    )]
    Missing,
    #[error("cannot read keyring {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "keyring {origin} is not valid keyring JSON (line {line}, column {column}); the content is not shown because it is secret"
    )]
    Parse {
        origin: String,
        line: usize,
        column: usize,
    },
    #[error("keyring {origin}: key {id}: {problem}")]
    BadKey {
        origin: String,
        id: String,
        problem: String,
    },
    #[error("keyring {origin}: {problem}")]
    Invalid { origin: String, problem: String },
    #[error(
        "keyring {origin} already exists; refusing to overwrite it (keys in it may still be needed to decrypt)"
    )]
    Exists { origin: String },
    #[error("cannot write keyring {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "keyring {origin}: key {id} is not loaded by this command (it loads only the keys it needs: {need})"
    )]
    NotLoaded {
        origin: String,
        id: String,
        need: &'static str,
    },
    /// A KMS call failed; `detail` names the operation, the key id and the KMS key.
    #[error("keyring {origin}: {detail}")]
    Kms { origin: String, detail: String },
}

/// What a key may be used for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Used for new tokens / new ciphertexts. Exactly one per purpose.
    Active,
    /// Old ciphertexts still decrypt; nothing new is written with it.
    DecryptOnly,
    /// Kept for the record only (its id and state); its material is dropped from the file, so
    /// nothing can decrypt with it any more.
    Retired,
}

impl KeyState {
    /// The name used in keyring files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::DecryptOnly => "decrypt_only",
            KeyState::Retired => "retired",
        }
    }
}

impl std::str::FromStr for KeyState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.replace('-', "_").as_str() {
            "active" => Ok(KeyState::Active),
            "decrypt_only" => Ok(KeyState::DecryptOnly),
            "retired" => Ok(KeyState::Retired),
            _ => Err(format!(
                "unknown key state {s:?}; expected active, decrypt_only or retired"
            )),
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// HMAC-SHA-256 tokens (`hash_keys`). Long-lived: a new hash key changes every token.
    Hash,
    /// AES-256-GCM vault values and reject bodies (`encryption_keys`).
    Encryption,
}

impl Purpose {
    /// The name used on the command line and in the KMS encryption context.
    pub fn name(self) -> &'static str {
        match self {
            Purpose::Hash => "hash",
            Purpose::Encryption => "encryption",
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            Purpose::Hash => "hmac",
            Purpose::Encryption => "aes",
        }
    }
}

impl std::str::FromStr for Purpose {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hash" | "hashing" | "hmac" => Ok(Purpose::Hash),
            "encryption" | "encrypt" | "aes" => Ok(Purpose::Encryption),
            _ => Err(format!(
                "unknown key purpose {s:?}; expected hash or encryption"
            )),
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which keys a command loads (least key: a host holds only the material its command needs,
/// and with KMS only those blobs are unwrapped, one `kms:Decrypt` each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyUse {
    /// The active hash key (tokens).
    pub hash: bool,
    /// The active encryption key (new ciphertexts).
    pub active_encryption: bool,
    /// The decrypt-only encryption keys (old ciphertexts: recovery, rotation).
    pub old_encryption: bool,
}

impl KeyUse {
    /// `run`: the active hash key and the active encryption key, nothing that only decrypts.
    pub const WRITE: KeyUse = KeyUse {
        hash: true,
        active_encryption: true,
        old_encryption: false,
    };
    /// `vault-decrypt`, `rejects --show-bodies`: every encryption key that still decrypts.
    pub const RECOVER: KeyUse = KeyUse {
        hash: false,
        active_encryption: true,
        old_encryption: true,
    };
    /// `vault-rotate` and `vault-retokenize`: decrypt with any key, write with the active ones.
    pub const ROTATE: KeyUse = KeyUse {
        hash: true,
        active_encryption: true,
        old_encryption: true,
    };

    /// Keyring administration (`keyring add-key`, `set-state`, ...): nothing is unwrapped.
    pub const NONE: KeyUse = KeyUse {
        hash: false,
        active_encryption: false,
        old_encryption: false,
    };

    /// Whether a key of `purpose` in `state` is loaded for this use.
    pub fn wants(self, purpose: Purpose, state: KeyState) -> bool {
        match (purpose, state) {
            (_, KeyState::Retired) => false,
            (Purpose::Hash, KeyState::Active) => self.hash,
            (Purpose::Hash, KeyState::DecryptOnly) => false,
            (Purpose::Encryption, KeyState::Active) => self.active_encryption,
            (Purpose::Encryption, KeyState::DecryptOnly) => self.old_encryption,
        }
    }

    /// For messages: what this use loads.
    fn describe(self) -> &'static str {
        match (self.hash, self.active_encryption, self.old_encryption) {
            (_, _, true) => "the active keys and the decrypt-only encryption keys",
            (true, true, false) => "the active hash and encryption keys",
            (true, false, false) => "the active hash key",
            (false, true, false) => "the active encryption key",
            (false, false, false) => "no key material",
        }
    }
}

/// One 256-bit key.
pub struct Key {
    pub id: String,
    pub state: KeyState,
    /// The plaintext key bytes, when loaded (a plain keyring, or unwrapped by KMS).
    material: Option<SecretBox<[u8; 32]>>,
    /// The KMS ciphertext blob of the key bytes, in a KMS-wrapped keyring.
    wrapped: Option<Vec<u8>>,
    /// What the keyring was loaded for, to explain a missing key.
    loaded_for: KeyUse,
}

impl Key {
    /// The raw key bytes; call sites are the HMAC and AES constructors only. Fails for a key
    /// this command did not load (least key) or a retired key (no material at all).
    pub fn material(&self) -> Result<&[u8; 32], KeyringError> {
        self.material
            .as_ref()
            .map(|m| m.expose_secret())
            .ok_or_else(|| KeyringError::NotLoaded {
                origin: String::new(),
                id: self.id.clone(),
                need: self.loaded_for.describe(),
            })
    }

    /// Whether the key bytes are in memory.
    pub fn is_loaded(&self) -> bool {
        self.material.is_some()
    }

    fn with_material(id: String, state: KeyState, bytes: SecretBox<[u8; 32]>) -> Self {
        Key {
            id,
            state,
            material: Some(bytes),
            wrapped: None,
            loaded_for: KeyUse::ROTATE,
        }
    }

    fn generate(id: String) -> Result<Self, KeyringError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| KeyringError::Invalid {
            origin: "new keyring".into(),
            problem: format!("no secure random source: {e}"),
        })?;
        let material = SecretBox::new(Box::new(bytes));
        zeroize::Zeroize::zeroize(&mut bytes);
        Ok(Key::with_material(id, KeyState::Active, material))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("material", &"<redacted>")
            .field("wrapped", &self.wrapped.is_some())
            .finish()
    }
}

/// All keys, by purpose.
#[derive(Debug)]
pub struct Keyring {
    /// Where it came from (file path or env variable name), for messages.
    pub origin: String,
    /// The KMS key that wraps the material, for a KMS-wrapped keyring.
    pub kms: Option<KmsSettings>,
    pub hash_keys: Vec<Key>,
    pub encryption_keys: Vec<Key>,
}

impl Keyring {
    fn check(&self) -> Result<(), KeyringError> {
        let invalid = |problem: String| KeyringError::Invalid {
            origin: self.origin.clone(),
            problem,
        };
        let mut ids = std::collections::HashSet::new();
        for k in self.hash_keys.iter().chain(&self.encryption_keys) {
            if k.id.is_empty()
                || !k
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(invalid(format!(
                    "key id {:?} must be non-empty letters, digits, '-', '_' or '.'",
                    k.id
                )));
            }
            if !ids.insert(k.id.as_str()) {
                return Err(invalid(format!("key id {} appears twice", k.id)));
            }
        }
        for (name, keys) in [
            ("hash_keys", &self.hash_keys),
            ("encryption_keys", &self.encryption_keys),
        ] {
            let active = keys.iter().filter(|k| k.state == KeyState::Active).count();
            if active > 1 {
                return Err(invalid(format!(
                    "{name} has {active} active keys; exactly one may be active"
                )));
            }
            if !keys.is_empty() && active == 0 && name == "hash_keys" {
                return Err(invalid("hash_keys has no active key".into()));
            }
        }
        Ok(())
    }

    /// The active hashing key, with its material loaded.
    pub fn active_hash_key(&self) -> Result<&Key, KeyringError> {
        self.active(Purpose::Hash)
    }

    /// The active encryption key, with its material loaded.
    pub fn active_encryption_key(&self) -> Result<&Key, KeyringError> {
        self.active(Purpose::Encryption)
    }

    fn active(&self, purpose: Purpose) -> Result<&Key, KeyringError> {
        let key = self
            .keys(purpose)
            .iter()
            .find(|k| k.state == KeyState::Active)
            .ok_or_else(|| KeyringError::Invalid {
                origin: self.origin.clone(),
                problem: match purpose {
                    Purpose::Hash => "no active hash key (hash_keys)".into(),
                    Purpose::Encryption => "no active encryption key (encryption_keys)".into(),
                },
            })?;
        self.loaded(key)?;
        Ok(key)
    }

    /// The material of `key` (a key of this keyring), or an error naming the keyring.
    pub fn loaded<'a>(&self, key: &'a Key) -> Result<&'a [u8; 32], KeyringError> {
        key.material().map_err(|e| match e {
            KeyringError::NotLoaded { id, need, .. } => KeyringError::NotLoaded {
                origin: self.origin.clone(),
                id,
                need,
            },
            other => other,
        })
    }

    /// The keys of one purpose.
    pub fn keys(&self, purpose: Purpose) -> &[Key] {
        match purpose {
            Purpose::Hash => &self.hash_keys,
            Purpose::Encryption => &self.encryption_keys,
        }
    }

    /// The keys of one purpose, to change.
    fn keys_mut(&mut self, purpose: Purpose) -> &mut Vec<Key> {
        match purpose {
            Purpose::Hash => &mut self.hash_keys,
            Purpose::Encryption => &mut self.encryption_keys,
        }
    }

    /// Which purpose the key `id` serves, or an error naming the ids there are.
    pub fn purpose_of(&self, id: &str) -> Result<Purpose, KeyringError> {
        for purpose in [Purpose::Hash, Purpose::Encryption] {
            if self.keys(purpose).iter().any(|k| k.id == id) {
                return Ok(purpose);
            }
        }
        let ids: Vec<&str> = self
            .hash_keys
            .iter()
            .chain(&self.encryption_keys)
            .map(|k| k.id.as_str())
            .collect();
        Err(KeyringError::Invalid {
            origin: self.origin.clone(),
            problem: format!("no key {id} (keys: {})", ids.join(", ")),
        })
    }

    /// Ids, purposes and states of all keys; never material.
    pub fn summary(&self) -> Vec<(Purpose, &str, KeyState)> {
        let mut out = Vec::new();
        for purpose in [Purpose::Hash, Purpose::Encryption] {
            out.extend(
                self.keys(purpose)
                    .iter()
                    .map(|k| (purpose, k.id.as_str(), k.state)),
            );
        }
        out
    }

    /// A fixed, public keyring for spec unit tests and previews, so expected hashes are stable.
    /// Never usable by `run`: its ids say what it is.
    pub fn fixed_test_keyring() -> Self {
        let key = |id: &str, byte: u8| {
            Key::with_material(
                id.to_string(),
                KeyState::Active,
                SecretBox::new(Box::new([byte; 32])),
            )
        };
        Keyring {
            origin: "built-in test keyring".into(),
            kms: None,
            hash_keys: vec![key("test-hmac-not-secret", 0x11)],
            encryption_keys: vec![key("test-aes-not-secret", 0x22)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;

    #[test]
    fn round_trips_and_never_debugs_material() {
        let ring = Keyring::generate().unwrap();
        let json = ring.to_json().unwrap();
        let again = Keyring::from_json(&json, "t").unwrap();
        assert_eq!(
            again.hash_keys[0].material().unwrap(),
            ring.hash_keys[0].material().unwrap()
        );
        let dbg = format!("{again:?}");
        let b64 = B64.encode(ring.hash_keys[0].material().unwrap());
        assert!(!dbg.contains(&b64));
        assert!(dbg.contains("<redacted>"));
    }

    #[test]
    fn parse_errors_do_not_echo_content() {
        let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ=";
        let text = format!(
            "{{\"hash_keys\": [{{\"id\": \"a\", \"state\": \"active\", \"key\": \"{secret}\", }}]}}"
        );
        let err = Keyring::from_json(&text, "f.json").unwrap_err().to_string();
        assert!(!err.contains(secret), "{err}");
        assert!(err.contains("f.json"));
    }

    #[test]
    fn rejects_short_keys_and_two_active() {
        let short =
            r#"{"hash_keys":[{"id":"h","state":"active","key":"AAAA"}],"encryption_keys":[]}"#;
        let err = Keyring::from_json(short, "f").unwrap_err().to_string();
        assert!(err.contains("key h") && err.contains("32 bytes"), "{err}");
        let k = B64.encode([1u8; 32]);
        let two = format!(
            r#"{{"hash_keys":[{{"id":"a","state":"active","key":"{k}"}},{{"id":"b","state":"active","key":"{k}"}}],"encryption_keys":[]}}"#
        );
        assert!(
            Keyring::from_json(&two, "f")
                .unwrap_err()
                .to_string()
                .contains("exactly one")
        );
    }

    #[test]
    fn add_key_demotes_the_active_one_and_set_state_keeps_one_active() {
        let mut ring = Keyring::generate().unwrap();
        let first = ring.encryption_keys[0].id.clone();
        let second = ring.add_key(Purpose::Encryption).unwrap();
        assert_ne!(first, second);
        assert_eq!(ring.active_encryption_key().unwrap().id, second);
        assert_eq!(ring.encryption_keys[0].state, KeyState::DecryptOnly);
        // Re-activating the first demotes the second.
        assert_eq!(
            ring.set_state(&first, KeyState::Active).unwrap(),
            Some(second.clone())
        );
        assert_eq!(ring.active_encryption_key().unwrap().id, first);
        ring.check().unwrap();
        // The only active hash key cannot be demoted.
        let h = ring.hash_keys[0].id.clone();
        let err = ring
            .set_state(&h, KeyState::Retired)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&h) && err.contains("active hash key"), "{err}");
        // Unknown ids are named, with the ids there are.
        let err = ring
            .set_state("nope", KeyState::Retired)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope") && err.contains(&first), "{err}");
    }

    #[test]
    fn remove_key_refuses_the_active_key() {
        let mut ring = Keyring::generate().unwrap();
        let old = ring.encryption_keys[0].id.clone();
        let new = ring.add_key(Purpose::Encryption).unwrap();
        assert!(
            ring.remove_key(&new)
                .unwrap_err()
                .to_string()
                .contains("is active")
        );
        assert_eq!(ring.remove_key(&old).unwrap(), Purpose::Encryption);
        assert_eq!(ring.summary().len(), 2);
        assert!(ring.summary().iter().all(|(_, id, _)| *id != old));
    }

    #[test]
    fn replace_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let mut ring = Keyring::generate().unwrap();
        ring.write(&path, false).unwrap();
        let added = ring.add_key(Purpose::Hash).unwrap();
        ring.replace_file(&path).unwrap();
        let again = Keyring::from_file(&path).unwrap();
        assert_eq!(again.active_hash_key().unwrap().id, added);
        assert_eq!(again.hash_keys.len(), 2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// A plain keyring with an active and a decrypt-only key of each purpose, and a retired
    /// encryption key whose material is still in the file (as older versions wrote it).
    fn four_keys() -> String {
        let k = |b: u8| B64.encode([b; 32]);
        format!(
            r#"{{"hash_keys":[{{"id":"h1","state":"decrypt_only","key":"{}"}},{{"id":"h2","state":"active","key":"{}"}}],
               "encryption_keys":[{{"id":"e0","state":"retired","key":"{}"}},{{"id":"e1","state":"decrypt_only","key":"{}"}},{{"id":"e2","state":"active","key":"{}"}}]}}"#,
            k(1),
            k(2),
            k(3),
            k(4),
            k(5)
        )
    }

    #[test]
    fn each_use_loads_only_the_keys_it_needs() {
        let text = four_keys();
        let loaded = |u: KeyUse| -> Vec<String> {
            let ring = Keyring::parse(&text, "f", Some(u)).unwrap();
            ring.hash_keys
                .iter()
                .chain(&ring.encryption_keys)
                .filter(|k| k.is_loaded())
                .map(|k| k.id.clone())
                .collect()
        };
        assert_eq!(loaded(KeyUse::WRITE), ["h2", "e2"]);
        assert_eq!(loaded(KeyUse::RECOVER), ["e1", "e2"]);
        assert_eq!(loaded(KeyUse::ROTATE), ["h2", "e1", "e2"]);
        assert!(loaded(KeyUse::NONE).is_empty());
        // A writer asked for an old key says why it has none.
        let ring = Keyring::parse(&text, "f", Some(KeyUse::WRITE)).unwrap();
        let err = ring
            .loaded(&ring.encryption_keys[1])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("key e1 is not loaded") && err.contains("active hash and encryption"),
            "{err}"
        );
        // Administration keeps all live material, and drops the retired key's from the file.
        let ring = Keyring::from_json(&text, "f").unwrap();
        assert!(!ring.encryption_keys[0].is_loaded());
        let json = ring.to_json().unwrap();
        assert!(!json.contains(&B64.encode([3u8; 32])), "{}", &*json);
        assert!(json.contains(&B64.encode([4u8; 32])));
        let again = Keyring::from_json(&json, "f").unwrap();
        assert_eq!(again.summary().len(), 5);
    }

    #[test]
    fn retiring_drops_material_for_good() {
        let mut ring = Keyring::from_json(&four_keys(), "f").unwrap();
        ring.set_state("e1", KeyState::Retired).unwrap();
        assert!(!ring.encryption_keys[1].is_loaded());
        assert!(!ring.to_json().unwrap().contains(&B64.encode([4u8; 32])));
        let err = ring
            .set_state("e1", KeyState::DecryptOnly)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be used again"), "{err}");
    }

    #[test]
    fn kms_fields_must_agree_with_the_material() {
        let k = B64.encode([7u8; 32]);
        let cases = [
            // Plain material in a KMS-wrapped keyring.
            (
                format!(
                    r#"{{"kms_key_id":"alias/k","hash_keys":[{{"id":"h","state":"active","key":"{k}"}}],"encryption_keys":[]}}"#
                ),
                "plain `key` material",
            ),
            // A blob without a KMS key.
            (
                r#"{"hash_keys":[{"id":"h","state":"active","wrapped_key":"AAAA"}],"encryption_keys":[]}"#
                    .to_string(),
                "wrapped_key without kms_key_id",
            ),
            (
                r#"{"kms_key_id":"alias/k","hash_keys":[{"id":"h","state":"active"}],"encryption_keys":[]}"#
                    .to_string(),
                "no wrapped_key",
            ),
            (
                r#"{"kms_endpoint_url":"http://x","hash_keys":[],"encryption_keys":[]}"#.to_string(),
                "without kms_key_id",
            ),
        ];
        for (text, want) in cases {
            let err = Keyring::from_json(&text, "f").unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
            assert!(!err.contains(&k), "{err}");
        }
        // A wrapped keyring parses without KMS (nothing unwrapped) and writes back the blobs.
        let text = r#"{"kms_key_id":"arn:aws:kms:eu-west-1:111122223333:key/x","hash_keys":[{"id":"h","state":"active","wrapped_key":"AQID"}],"encryption_keys":[]}"#;
        let ring = Keyring::from_json(text, "f").unwrap();
        assert!(!ring.hash_keys[0].is_loaded());
        assert!(
            ring.to_json()
                .unwrap()
                .contains("\"wrapped_key\": \"AQID\"")
        );
        assert!(ring.active_hash_key().is_err());
    }

    #[cfg(unix)]
    #[test]
    fn force_replaces_loose_files_privately_and_refuses_symlinks() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let ring = Keyring::generate().unwrap();
        assert!(matches!(
            ring.write(&path, false),
            Err(KeyringError::Exists { .. })
        ));
        ring.write(&path, true).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        Keyring::from_file(&path).unwrap();
        // A symbolic link where the keyring goes: refused, with or without --force, and the
        // file it points to is untouched.
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "untouched").unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for force in [false, true] {
            let err = ring.write(&link, force).unwrap_err().to_string();
            assert!(
                err.contains("symbolic link") || err.contains("exists"),
                "{err}"
            );
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // A dangling link is refused too (it would create the file it names).
        let dangling = dir.path().join("dangling.json");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(ring.write(&dangling, false).is_err());
        assert!(!dir.path().join("nowhere").exists());
    }

    #[test]
    fn states_and_purposes_parse() {
        assert_eq!(
            "decrypt-only".parse::<KeyState>().unwrap(),
            KeyState::DecryptOnly
        );
        assert_eq!("retired".parse::<KeyState>().unwrap(), KeyState::Retired);
        assert!(
            "gone"
                .parse::<KeyState>()
                .unwrap_err()
                .contains("decrypt_only")
        );
        assert_eq!(
            "encryption".parse::<Purpose>().unwrap(),
            Purpose::Encryption
        );
        assert_eq!("hash".parse::<Purpose>().unwrap(), Purpose::Hash);
    }

    #[test]
    fn missing_keyring_is_one_line() {
        assert!(!KeyringError::Missing.to_string().contains('\n'));
    }
}

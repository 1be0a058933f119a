//! The keyring: versioned secret keys for hashing (HMAC) and for vault encryption (AES-256-GCM),
//! loaded from a JSON file or environment variable, never from a spec.
//!
//! Key bytes live only in zeroizing secret types; `Debug` prints ids and states, never material.
//! Errors never echo file content, because the file content *is* the secret.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::{ExposeSecret, SecretBox};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

mod manage;

/// Environment variable naming the keyring file.
pub const KEYRING_ENV: &str = "ETL_KEYRING";
/// Environment variable holding the keyring JSON itself (for platforms that inject secrets as env).
pub const KEYRING_JSON_ENV: &str = "ETL_KEYRING_JSON";

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
}

/// What a key may be used for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Used for new tokens / new ciphertexts. Exactly one per purpose.
    Active,
    /// Old ciphertexts still decrypt; nothing new is written with it.
    DecryptOnly,
    /// Kept for the record only; nothing decrypts with it.
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
    /// The name used on the command line.
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

/// On-disk form of one key.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    id: String,
    state: KeyState,
    /// Base64 of 32 random bytes.
    key: String,
}

/// On-disk form of the keyring.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    hash_keys: Vec<KeyFile>,
    encryption_keys: Vec<KeyFile>,
}

/// One 256-bit key.
pub struct Key {
    pub id: String,
    pub state: KeyState,
    material: SecretBox<[u8; 32]>,
}

impl Key {
    /// The raw key bytes; call sites are the HMAC and AES constructors only.
    pub fn material(&self) -> &[u8; 32] {
        self.material.expose_secret()
    }

    fn generate(id: String) -> Result<Self, KeyringError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| KeyringError::Invalid {
            origin: "new keyring".into(),
            problem: format!("no secure random source: {e}"),
        })?;
        let material = SecretBox::new(Box::new(bytes));
        zeroize::Zeroize::zeroize(&mut bytes);
        Ok(Key {
            id,
            state: KeyState::Active,
            material,
        })
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("material", &"<redacted>")
            .finish()
    }
}

/// All keys, by purpose.
#[derive(Debug)]
pub struct Keyring {
    /// Where it came from (file path or env variable name), for messages.
    pub origin: String,
    pub hash_keys: Vec<Key>,
    pub encryption_keys: Vec<Key>,
}

impl Keyring {
    /// Loads the keyring: the spec's `vault.keyring` path if given, else `ETL_KEYRING`, else
    /// `ETL_KEYRING_JSON`. No keyring is an error: there is no built-in default key.
    pub fn load(spec_path: Option<&Path>) -> Result<Self, KeyringError> {
        if let Some(p) = spec_path {
            return Self::from_file(p);
        }
        if let Some(p) = std::env::var_os(KEYRING_ENV).filter(|v| !v.is_empty()) {
            return Self::from_file(Path::new(&p));
        }
        if let Ok(json) = std::env::var(KEYRING_JSON_ENV)
            && !json.trim().is_empty()
        {
            let json = zeroize::Zeroizing::new(json);
            return Self::from_json(&json, KEYRING_JSON_ENV);
        }
        Err(KeyringError::Missing)
    }

    /// Reads a keyring file.
    pub fn from_file(path: &Path) -> Result<Self, KeyringError> {
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            KeyringError::Read {
                path: path.to_path_buf(),
                source,
            }
        })?);
        Self::from_json(&text, &path.display().to_string())
    }

    /// Parses keyring JSON; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, KeyringError> {
        let file: KeyringFile = serde_json::from_str(text).map_err(|e| KeyringError::Parse {
            origin: origin.to_string(),
            line: e.line(),
            column: e.column(),
        })?;
        let convert = |keys: Vec<KeyFile>| -> Result<Vec<Key>, KeyringError> {
            keys.into_iter()
                .map(|k| {
                    let bad = |problem: &str| KeyringError::BadKey {
                        origin: origin.to_string(),
                        id: k.id.clone(),
                        problem: problem.to_string(),
                    };
                    let mut raw = zeroize::Zeroizing::new(
                        B64.decode(k.key.trim())
                            .map_err(|_| bad("key is not valid base64"))?,
                    );
                    if raw.len() != 32 {
                        return Err(bad("key must be 32 bytes (256 bits) of base64"));
                    }
                    let mut bytes = [0u8; 32];
                    bytes.copy_from_slice(&raw);
                    zeroize::Zeroize::zeroize(&mut *raw);
                    let material = SecretBox::new(Box::new(bytes));
                    zeroize::Zeroize::zeroize(&mut bytes);
                    let mut key_text = k.key;
                    zeroize::Zeroize::zeroize(&mut key_text);
                    Ok(Key {
                        id: k.id,
                        state: k.state,
                        material,
                    })
                })
                .collect()
        };
        let ring = Keyring {
            origin: origin.to_string(),
            hash_keys: convert(file.hash_keys)?,
            encryption_keys: convert(file.encryption_keys)?,
        };
        ring.check()?;
        Ok(ring)
    }

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

    /// The active hashing key.
    pub fn active_hash_key(&self) -> Result<&Key, KeyringError> {
        self.hash_keys
            .iter()
            .find(|k| k.state == KeyState::Active)
            .ok_or_else(|| KeyringError::Invalid {
                origin: self.origin.clone(),
                problem: "no active hash key (hash_keys)".into(),
            })
    }

    /// The active encryption key.
    pub fn active_encryption_key(&self) -> Result<&Key, KeyringError> {
        self.encryption_keys
            .iter()
            .find(|k| k.state == KeyState::Active)
            .ok_or_else(|| KeyringError::Invalid {
                origin: self.origin.clone(),
                problem: "no active encryption key (encryption_keys)".into(),
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
        let key = |id: &str, byte: u8| Key {
            id: id.to_string(),
            state: KeyState::Active,
            material: SecretBox::new(Box::new([byte; 32])),
        };
        Keyring {
            origin: "built-in test keyring".into(),
            hash_keys: vec![key("test-hmac-not-secret", 0x11)],
            encryption_keys: vec![key("test-aes-not-secret", 0x22)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_never_debugs_material() {
        let ring = Keyring::generate().unwrap();
        let json = ring.to_json();
        let again = Keyring::from_json(&json, "t").unwrap();
        assert_eq!(again.hash_keys[0].material(), ring.hash_keys[0].material());
        let dbg = format!("{again:?}");
        let b64 = B64.encode(ring.hash_keys[0].material());
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

//! Changing a keyring: new keys, state changes, removal, and writing the file (the one place
//! key material is written out), always atomically and with owner-only permissions.

use super::{B64, Key, KeyFile, KeyState, Keyring, KeyringError, KeyringFile, Purpose};
use base64::Engine;
use std::path::{Path, PathBuf};

impl Keyring {
    /// A new keyring with one active key per purpose.
    pub fn generate() -> Result<Self, KeyringError> {
        let stamp = chrono::Utc::now().format("%Y%m%d");
        let mut suffix = [0u8; 3];
        getrandom::fill(&mut suffix).map_err(|e| KeyringError::Invalid {
            origin: "new keyring".into(),
            problem: format!("no secure random source: {e}"),
        })?;
        let suffix = hex::encode(suffix);
        Ok(Keyring {
            origin: "new keyring".into(),
            hash_keys: vec![Key::generate(format!("hmac-{stamp}-{suffix}"))?],
            encryption_keys: vec![Key::generate(format!("aes-{stamp}-{suffix}"))?],
        })
    }

    /// Adds a new active encryption key, demoting the current active one to decrypt-only.
    /// Returns the new key id.
    pub fn add_encryption_key(&mut self) -> Result<String, KeyringError> {
        self.add_key(Purpose::Encryption)
    }

    /// Adds a new active key for `purpose`, demoting the current active one to decrypt-only
    /// (so what it wrote stays readable). Returns the new key id.
    pub fn add_key(&mut self, purpose: Purpose) -> Result<String, KeyringError> {
        let mut suffix = [0u8; 3];
        getrandom::fill(&mut suffix).map_err(|e| KeyringError::Invalid {
            origin: self.origin.clone(),
            problem: format!("no secure random source: {e}"),
        })?;
        let stamp = chrono::Utc::now().format("%Y%m%d");
        let id = format!("{}-{stamp}-{}", purpose.id_prefix(), hex::encode(suffix));
        let key = Key::generate(id.clone())?;
        let keys = self.keys_mut(purpose);
        for k in keys.iter_mut() {
            if k.state == KeyState::Active {
                k.state = KeyState::DecryptOnly;
            }
        }
        keys.push(key);
        Ok(id)
    }

    /// Sets the state of key `id`. Making a key active demotes the purpose's current active
    /// key to decrypt-only; the hashing purpose must keep an active key. Returns the id of
    /// a key that was demoted, if any.
    pub fn set_state(&mut self, id: &str, state: KeyState) -> Result<Option<String>, KeyringError> {
        let purpose = self.purpose_of(id)?;
        let origin = self.origin.clone();
        let keys = self.keys_mut(purpose);
        let mut demoted = None;
        if state == KeyState::Active {
            for k in keys
                .iter_mut()
                .filter(|k| k.id != id && k.state == KeyState::Active)
            {
                k.state = KeyState::DecryptOnly;
                demoted = Some(k.id.clone());
            }
        } else if purpose == Purpose::Hash
            && keys
                .iter()
                .any(|k| k.id == id && k.state == KeyState::Active)
        {
            return Err(KeyringError::Invalid {
                origin,
                problem: format!(
                    "key {id} is the active hash key; make another hash key active first (tokens are made with it)"
                ),
            });
        }
        for k in keys.iter_mut().filter(|k| k.id == id) {
            k.state = state;
        }
        Ok(demoted)
    }

    /// Removes key `id` for good. The active key of a purpose cannot be removed; values still
    /// encrypted with a removed key can never be decrypted again (run `vault-rotate` first).
    pub fn remove_key(&mut self, id: &str) -> Result<Purpose, KeyringError> {
        let purpose = self.purpose_of(id)?;
        let origin = self.origin.clone();
        let keys = self.keys_mut(purpose);
        if keys
            .iter()
            .any(|k| k.id == id && k.state == KeyState::Active)
        {
            return Err(KeyringError::Invalid {
                origin,
                problem: format!(
                    "key {id} is active; add or activate another {} key first",
                    purpose.name()
                ),
            });
        }
        keys.retain(|k| k.id != id);
        Ok(purpose)
    }

    /// Replaces the keyring file at `path` atomically: the new content goes to a private
    /// temporary file in the same directory, which is then renamed over the old one, so a
    /// crash never leaves a half-written keyring.
    pub fn replace_file(&self, path: &Path) -> Result<(), KeyringError> {
        self.check()?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "keyring".into());
        let mut suffix = [0u8; 6];
        getrandom::fill(&mut suffix).map_err(|e| KeyringError::Invalid {
            origin: self.origin.clone(),
            problem: format!("no secure random source: {e}"),
        })?;
        let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(suffix)));
        self.write(&tmp, false)?;
        std::fs::rename(&tmp, path).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            KeyringError::Write {
                path: path.to_path_buf(),
                source,
            }
        })?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Serializes to JSON (the one place key material is written out: the keyring file).
    pub fn to_json(&self) -> zeroize::Zeroizing<String> {
        let conv = |keys: &[Key]| -> Vec<KeyFile> {
            keys.iter()
                .map(|k| KeyFile {
                    id: k.id.clone(),
                    state: k.state,
                    key: B64.encode(k.material()),
                })
                .collect()
        };
        let mut file = KeyringFile {
            hash_keys: conv(&self.hash_keys),
            encryption_keys: conv(&self.encryption_keys),
        };
        let out = serde_json::to_string_pretty(&file).unwrap_or_default();
        for k in file
            .hash_keys
            .iter_mut()
            .chain(file.encryption_keys.iter_mut())
        {
            zeroize::Zeroize::zeroize(&mut k.key);
        }
        zeroize::Zeroizing::new(out + "\n")
    }

    /// Writes the keyring to `path` with owner-only permissions. With `overwrite` false an
    /// existing file is never replaced.
    pub fn write(&self, path: &Path, overwrite: bool) -> Result<(), KeyringError> {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true);
        if overwrite {
            opts.create(true).truncate(true);
        } else {
            opts.create_new(true);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyringError::Exists {
                    origin: path.display().to_string(),
                }
            } else {
                KeyringError::Write {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        f.write_all(self.to_json().as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|source| KeyringError::Write {
                path: path.to_path_buf(),
                source,
            })
    }
}

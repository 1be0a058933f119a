//! Changing a keyring in memory: new keys, state changes, removal. Writing it is in `file`.

use super::{Key, KeyState, Keyring, KeyringError, Purpose};

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
            kms: None,
            hash_keys: vec![Key::generate(format!("hmac-{stamp}-{suffix}"))?],
            encryption_keys: vec![Key::generate(format!("aes-{stamp}-{suffix}"))?],
        })
    }

    /// Adds a new active encryption key, demoting the current active one to decrypt-only.
    /// Returns the new key id.
    pub fn add_encryption_key(&mut self) -> Result<String, KeyringError> {
        self.add_key(Purpose::Encryption)
    }

    /// Adds a new active key for `purpose` to a plain keyring, demoting the current active one
    /// to decrypt-only (so what it wrote stays readable). Returns the new key id. A KMS-wrapped
    /// keyring takes [`Keyring::add_wrapped_key`] instead.
    pub fn add_key(&mut self, purpose: Purpose) -> Result<String, KeyringError> {
        if let Some(k) = &self.kms {
            return Err(KeyringError::Invalid {
                origin: self.origin.clone(),
                problem: format!(
                    "the keyring is wrapped by KMS key {}; new keys are made by KMS",
                    k.key_id
                ),
            });
        }
        let id = Keyring::new_key_id(purpose, &self.origin)?;
        let key = Key::generate(id.clone())?;
        self.push_active(purpose, key);
        Ok(id)
    }

    /// A fresh key id: purpose prefix, date, random suffix.
    pub(super) fn new_key_id(purpose: Purpose, origin: &str) -> Result<String, KeyringError> {
        let mut suffix = [0u8; 3];
        getrandom::fill(&mut suffix).map_err(|e| KeyringError::Invalid {
            origin: origin.to_string(),
            problem: format!("no secure random source: {e}"),
        })?;
        let stamp = chrono::Utc::now().format("%Y%m%d");
        Ok(format!(
            "{}-{stamp}-{}",
            purpose.id_prefix(),
            hex::encode(suffix)
        ))
    }

    /// Appends `key` as the active key of `purpose`, demoting the current active one.
    pub(super) fn push_active(&mut self, purpose: Purpose, key: Key) {
        let keys = self.keys_mut(purpose);
        for k in keys.iter_mut() {
            if k.state == KeyState::Active {
                k.state = KeyState::DecryptOnly;
            }
        }
        keys.push(key);
    }

    /// Sets the state of key `id`. Making a key active demotes the purpose's current active
    /// key to decrypt-only; the hashing purpose must keep an active key. Returns the id of
    /// a key that was demoted, if any.
    pub fn set_state(&mut self, id: &str, state: KeyState) -> Result<Option<String>, KeyringError> {
        let purpose = self.purpose_of(id)?;
        let origin = self.origin.clone();
        let keys = self.keys_mut(purpose);
        if state != KeyState::Retired
            && keys
                .iter()
                .any(|k| k.id == id && k.state == KeyState::Retired)
        {
            return Err(KeyringError::Invalid {
                origin: origin.clone(),
                problem: format!(
                    "key {id} is retired and its material was dropped from the keyring; it cannot be used again"
                ),
            });
        }
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
            // A retired key keeps no material: not in memory, not in the file.
            if state == KeyState::Retired {
                k.material = None;
                k.wrapped = None;
            }
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
}

//! The keyring file: its JSON form, reading it (file or environment, only the keys a command
//! needs) and writing it — the one place key material or its KMS blobs are written out, always
//! atomically, owner-only and never through a symbolic link.

use super::kms::KmsSettings;
use super::{Key, KeyState, KeyUse, Keyring, KeyringError, Purpose};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::SecretBox;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use zeroize::{Zeroize, Zeroizing};

/// Environment variable naming the keyring file.
pub const KEYRING_ENV: &str = "ETL_KEYRING";
/// Environment variable holding the keyring JSON itself (for platforms that inject secrets as env).
pub const KEYRING_JSON_ENV: &str = "ETL_KEYRING_JSON";

/// `ETL_KEYRING_JSON` as read at start, before `main` removed it from the environment (so
/// child processes do not inherit it).
static STASHED_JSON: OnceLock<Zeroizing<String>> = OnceLock::new();

/// Moves `ETL_KEYRING_JSON` into process memory for [`Keyring::load`]. Returns whether the
/// variable is set, i.e. whether the caller should now remove it from the environment (which
/// only the binary's `main` can do safely, before any thread starts).
pub fn stash_json_from_env() -> bool {
    match std::env::var(KEYRING_JSON_ENV) {
        Ok(v) => {
            let _ = STASHED_JSON.set(Zeroizing::new(v));
            true
        }
        Err(std::env::VarError::NotPresent) => false,
        // Not UTF-8: not a keyring either; removed all the same.
        Err(std::env::VarError::NotUnicode(_)) => true,
    }
}

/// On-disk form of one key: plain material (`key`) or a KMS blob (`wrapped_key`); a retired
/// key has neither.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    id: String,
    state: KeyState,
    /// Base64 of 32 random bytes (plain keyring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// Base64 of the KMS ciphertext blob of the 32 bytes (KMS-wrapped keyring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wrapped_key: Option<String>,
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        if let Some(k) = &mut self.key {
            k.zeroize();
        }
    }
}

/// On-disk form of the keyring.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    /// The KMS key wrapping every key's material; absent for a plain keyring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kms_key_id: Option<String>,
    /// KMS endpoint override (tests, VPC endpoints); else the AWS defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kms_endpoint_url: Option<String>,
    /// KMS region; else the key ARN's region, else the AWS defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kms_region: Option<String>,
    hash_keys: Vec<KeyFile>,
    encryption_keys: Vec<KeyFile>,
}

/// Reads a keyring file, warning when others than its owner may read it.
fn read_private(path: &Path) -> Result<Zeroizing<String>, KeyringError> {
    let text =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| KeyringError::Read {
                path: path.to_path_buf(),
                source,
            })?,
        );
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "The keyring file is readable or writable by its group or others; make it owner-only (chmod 600)."
            );
        }
    }
    Ok(text)
}

impl Keyring {
    /// Loads the keyring for `use_`: the spec's `vault.keyring` path if given, else
    /// `ETL_KEYRING`, else `ETL_KEYRING_JSON`. Only the keys `use_` needs are kept in memory;
    /// a KMS-wrapped keyring has just those unwrapped. No keyring is an error: there is no
    /// built-in default key.
    pub async fn load(spec_path: Option<&Path>, use_: KeyUse) -> Result<Self, KeyringError> {
        let (text, origin) = if let Some(p) = spec_path {
            (read_private(p)?, p.display().to_string())
        } else if let Some(p) = std::env::var_os(KEYRING_ENV).filter(|v| !v.is_empty()) {
            let p = PathBuf::from(p);
            (read_private(&p)?, p.display().to_string())
        } else if let Some(json) = STASHED_JSON.get().filter(|j| !j.trim().is_empty()) {
            (
                Zeroizing::new(json.to_string()),
                KEYRING_JSON_ENV.to_string(),
            )
        } else if let Ok(json) = std::env::var(KEYRING_JSON_ENV)
            && !json.trim().is_empty()
        {
            (Zeroizing::new(json), KEYRING_JSON_ENV.to_string())
        } else {
            return Err(KeyringError::Missing);
        };
        let mut ring = Self::parse(&text, &origin, Some(use_))?;
        ring.unwrap_for(use_).await?;
        Ok(ring)
    }

    /// Reads a keyring file whole, for administration: plain material is kept (to write it
    /// back), KMS blobs stay wrapped.
    pub fn from_file(path: &Path) -> Result<Self, KeyringError> {
        let text = read_private(path)?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Parses keyring JSON whole (see [`Keyring::from_file`]); `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, KeyringError> {
        Self::parse(text, origin, None)
    }

    /// Parses keyring JSON. With `use_`, plain material of keys it does not need is dropped
    /// unread; with `None`, all of it is kept. A retired key's material is always dropped.
    pub(super) fn parse(
        text: &str,
        origin: &str,
        use_: Option<KeyUse>,
    ) -> Result<Self, KeyringError> {
        let mut file: KeyringFile =
            serde_json::from_str(text).map_err(|e| KeyringError::Parse {
                origin: origin.to_string(),
                line: e.line(),
                column: e.column(),
            })?;
        let kms = file.kms_key_id.take().map(|key_id| KmsSettings {
            key_id,
            endpoint_url: file.kms_endpoint_url.take(),
            region: file.kms_region.take(),
        });
        if kms.is_none() && (file.kms_endpoint_url.is_some() || file.kms_region.is_some()) {
            return Err(KeyringError::Invalid {
                origin: origin.to_string(),
                problem: "kms_endpoint_url or kms_region is set without kms_key_id".into(),
            });
        }
        let wrapped = kms.is_some();
        let convert = |purpose: Purpose,
                       keys: &mut Vec<KeyFile>|
         -> Result<Vec<Key>, KeyringError> {
            keys.iter_mut()
                .map(|k| {
                    let bad = |problem: &str| KeyringError::BadKey {
                        origin: origin.to_string(),
                        id: k.id.clone(),
                        problem: problem.to_string(),
                    };
                    let mut key = Key {
                        id: k.id.clone(),
                        state: k.state,
                        material: None,
                        wrapped: None,
                        loaded_for: use_.unwrap_or(KeyUse::ROTATE),
                    };
                    if k.state == KeyState::Retired {
                        return Ok(key);
                    }
                    match (wrapped, k.key.as_deref(), k.wrapped_key.as_deref()) {
                        (true, None, Some(blob)) => {
                            key.wrapped = Some(
                                B64.decode(blob.trim())
                                    .map_err(|_| bad("wrapped_key is not valid base64"))?,
                            );
                        }
                        (true, Some(_), _) => {
                            return Err(bad(
                                "plain `key` material in a KMS-wrapped keyring (kms_key_id); remove it",
                            ));
                        }
                        (true, None, None) => {
                            return Err(bad("no wrapped_key (the keyring names kms_key_id)"));
                        }
                        (false, _, Some(_)) => {
                            return Err(bad("wrapped_key without kms_key_id in the keyring"));
                        }
                        (false, None, None) => return Err(bad("no key material (`key`)")),
                        (false, Some(text), None) => {
                            if use_.is_none_or(|u| u.wants(purpose, k.state)) {
                                key.material = Some(decode_material(text).map_err(bad)?);
                            }
                        }
                    }
                    Ok(key)
                })
                .collect()
        };
        let ring = Keyring {
            origin: origin.to_string(),
            hash_keys: convert(Purpose::Hash, &mut file.hash_keys)?,
            encryption_keys: convert(Purpose::Encryption, &mut file.encryption_keys)?,
            kms,
        };
        ring.check()?;
        Ok(ring)
    }

    /// Serializes to JSON: plain material as base64, or KMS blobs; retired keys without any.
    /// Fails if a plain key's material is not loaded (it would be lost).
    pub fn to_json(&self) -> Result<Zeroizing<String>, KeyringError> {
        let conv = |keys: &[Key]| -> Result<Vec<KeyFile>, KeyringError> {
            keys.iter()
                .map(|k| {
                    let mut f = KeyFile {
                        id: k.id.clone(),
                        state: k.state,
                        key: None,
                        wrapped_key: None,
                    };
                    if k.state == KeyState::Retired {
                    } else if self.kms.is_some() {
                        f.wrapped_key =
                            Some(B64.encode(k.wrapped.as_deref().ok_or_else(|| {
                                KeyringError::BadKey {
                                    origin: self.origin.clone(),
                                    id: k.id.clone(),
                                    problem: "no KMS blob to write".into(),
                                }
                            })?));
                    } else {
                        f.key = Some(B64.encode(self.loaded(k)?));
                    }
                    Ok(f)
                })
                .collect()
        };
        let file = KeyringFile {
            kms_key_id: self.kms.as_ref().map(|k| k.key_id.clone()),
            kms_endpoint_url: self.kms.as_ref().and_then(|k| k.endpoint_url.clone()),
            kms_region: self.kms.as_ref().and_then(|k| k.region.clone()),
            hash_keys: conv(&self.hash_keys)?,
            encryption_keys: conv(&self.encryption_keys)?,
        };
        let out = serde_json::to_string_pretty(&file).unwrap_or_default();
        Ok(Zeroizing::new(out + "\n"))
    }

    /// Writes the keyring to `path`, owner-only. With `overwrite` false an existing file is
    /// never replaced; with it, the file is replaced atomically (see [`Keyring::replace_file`]),
    /// so an old file's loose permissions are not kept. A symbolic link at `path` is refused.
    pub fn write(&self, path: &Path, overwrite: bool) -> Result<(), KeyringError> {
        if overwrite {
            return self.replace_file(path);
        }
        refuse_symlink(path)?;
        write_new(path, &self.to_json()?)?;
        sync_dir(path);
        Ok(())
    }

    /// Replaces the keyring file at `path` atomically: the new content goes to a private
    /// temporary file in the same directory, which is then renamed over the old one, so a
    /// crash never leaves a half-written keyring. A symbolic link at `path` is refused rather
    /// than followed or replaced.
    pub fn replace_file(&self, path: &Path) -> Result<(), KeyringError> {
        self.check()?;
        refuse_symlink(path)?;
        let json = self.to_json()?;
        let dir = parent_dir(path);
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
        write_new(&tmp, &json)?;
        std::fs::rename(&tmp, path).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            KeyringError::Write {
                path: path.to_path_buf(),
                source,
            }
        })?;
        sync_dir(path);
        Ok(())
    }
}

/// Decodes base64 key text into 32 bytes held in a secret box, wiping the temporary copies.
fn decode_material(text: &str) -> Result<SecretBox<[u8; 32]>, &'static str> {
    let raw = Zeroizing::new(
        B64.decode(text.trim())
            .map_err(|_| "key is not valid base64")?,
    );
    if raw.len() != 32 {
        return Err("key must be 32 bytes (256 bits) of base64");
    }
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(&raw);
    let material = SecretBox::new(Box::new(bytes));
    bytes.zeroize();
    Ok(material)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Keyrings are never written through a symbolic link: a link planted where the keyring goes
/// would otherwise send key material wherever it points.
fn refuse_symlink(path: &Path) -> Result<(), KeyringError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(KeyringError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(
                "it is a symbolic link; refusing to write key material through it (name the real file)",
            ),
        }),
        _ => Ok(()),
    }
}

/// Creates `path` (which must not exist: `O_EXCL`, which also never follows a link) with mode
/// 0600 and writes `content` durably.
fn write_new(path: &Path, content: &str) -> Result<(), KeyringError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
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
    f.write_all(content.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|source| {
            let _ = std::fs::remove_file(path);
            KeyringError::Write {
                path: path.to_path_buf(),
                source,
            }
        })
}

/// Makes a create or rename in `path`'s directory durable.
fn sync_dir(path: &Path) {
    if let Ok(d) = std::fs::File::open(parent_dir(path)) {
        let _ = d.sync_all();
    }
}

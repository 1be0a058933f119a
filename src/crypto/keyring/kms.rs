//! Envelope encryption of keyring material with AWS KMS: each key's 32 bytes are stored as a
//! KMS ciphertext blob and unwrapped in memory with `kms:Decrypt` when a command starts.
//!
//! Every blob is bound to an encryption context naming its purpose and key id, so a blob copied
//! onto another key (or from the encryption keys to the hash keys) fails to unwrap instead of
//! silently turning one key into another. Credentials and endpoints follow the same rules as
//! the SQS client: the default AWS chain, `AWS_ENDPOINT_URL_KMS` / `AWS_ENDPOINT_URL`, and
//! dummy credentials only for a local emulator with none configured.

use super::{Key, KeyState, KeyUse, Keyring, KeyringError, Purpose};
use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_kms::primitives::Blob;
use secrecy::SecretBox;
use std::time::Duration;
use zeroize::{Zeroize, Zeroizing};

/// Encryption-context entry naming the key's purpose (`hash` or `encryption`).
pub const CONTEXT_PURPOSE: &str = "etl-engine:purpose";
/// Encryption-context entry naming the key id.
pub const CONTEXT_KEY_ID: &str = "etl-engine:key-id";

/// A KMS failure in one line: the service's error code and message, or for a failure to reach
/// KMS at all, the error chain. Never the raw response (the SDK's debug form holds headers).
fn describe<E, R>(e: &aws_sdk_kms::error::SdkError<E, R>) -> String
where
    E: aws_sdk_kms::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(s) => format!(
            "{}{}",
            s.code().unwrap_or("service error"),
            s.message().map(|m| format!(": {m}")).unwrap_or_default()
        ),
        None => aws_sdk_kms::error::DisplayErrorContext(e).to_string(),
    }
}

/// Which KMS key wraps a keyring, and how to reach KMS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsSettings {
    /// Key id, ARN or alias of the KMS key (`kms_key_id` in the file).
    pub key_id: String,
    /// Endpoint override (`kms_endpoint_url`), e.g. a VPC endpoint or a local emulator.
    pub endpoint_url: Option<String>,
    /// Region (`kms_region`); else the key ARN's region; else the AWS default chain.
    pub region: Option<String>,
}

impl KmsSettings {
    /// The region to call: explicit, else from an ARN (`arn:aws:kms:REGION:...`).
    fn region(&self) -> Option<String> {
        self.region.clone().or_else(|| {
            let parts: Vec<&str> = self.key_id.split(':').collect();
            (parts.len() > 4 && parts[0] == "arn" && !parts[3].is_empty())
                .then(|| parts[3].to_string())
        })
    }
}

/// A KMS client bound to one keyring's KMS key.
pub(super) struct KmsClient {
    client: aws_sdk_kms::Client,
    key_id: String,
    origin: String,
}

impl KmsClient {
    /// Builds the client: region and endpoint from `settings`, credentials from the AWS chain.
    pub(super) async fn connect(settings: &KmsSettings, origin: &str) -> Self {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(20))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts);
        if let Some(region) = settings.region() {
            loader = loader.region(aws_config::Region::new(region));
        }
        if let Some(ep) = &settings.endpoint_url {
            loader = loader.endpoint_url(ep);
        }
        // The endpoint the SDK will use: the keyring's, else the environment's.
        let endpoint = settings
            .endpoint_url
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL_KMS").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        if let Some(creds) = crate::aws::emulator_credentials(endpoint.as_deref()) {
            loader = loader.credentials_provider(creds);
        }
        let conf = loader.load().await;
        KmsClient {
            client: aws_sdk_kms::Client::new(&conf),
            key_id: settings.key_id.clone(),
            origin: origin.to_string(),
        }
    }

    fn error(&self, operation: &'static str, id: &str, problem: impl Into<String>) -> KeyringError {
        KeyringError::Kms {
            origin: self.origin.clone(),
            detail: format!(
                "KMS {operation} for key {id} with KMS key {} failed: {}",
                self.key_id,
                problem.into()
            ),
        }
    }

    /// Unwraps one key's blob; the context must name the same purpose and key id.
    pub(super) async fn decrypt(
        &self,
        purpose: Purpose,
        id: &str,
        blob: &[u8],
    ) -> Result<SecretBox<[u8; 32]>, KeyringError> {
        let out = self
            .client
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(Blob::new(blob.to_vec()))
            .encryption_context(CONTEXT_PURPOSE, purpose.name())
            .encryption_context(CONTEXT_KEY_ID, id)
            .send()
            .await
            .map_err(|e| {
                let invalid = e
                    .as_service_error()
                    .is_some_and(|s| s.is_invalid_ciphertext_exception());
                let detail = describe(&e);
                if invalid {
                    self.error(
                        "Decrypt",
                        id,
                        format!(
                            "the blob does not belong to this key (its encryption context names another purpose or key id, or another KMS key made it): {detail}"
                        ),
                    )
                } else {
                    self.error("Decrypt", id, detail)
                }
            })?;
        let mut plain = Zeroizing::new(out.plaintext.map(Blob::into_inner).unwrap_or_default());
        if plain.len() != 32 {
            let n = plain.len();
            plain.zeroize();
            return Err(self.error("Decrypt", id, format!("unwrapped {n} bytes, expected 32")));
        }
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&plain);
        let secret = SecretBox::new(Box::new(bytes));
        bytes.zeroize();
        Ok(secret)
    }

    /// Wraps existing key material (`keyring wrap`).
    pub(super) async fn encrypt(
        &self,
        purpose: Purpose,
        id: &str,
        material: &[u8; 32],
    ) -> Result<Vec<u8>, KeyringError> {
        let out = self
            .client
            .encrypt()
            .key_id(&self.key_id)
            .plaintext(Blob::new(material.to_vec()))
            .encryption_context(CONTEXT_PURPOSE, purpose.name())
            .encryption_context(CONTEXT_KEY_ID, id)
            .send()
            .await
            .map_err(|e| self.error("Encrypt", id, describe(&e)))?;
        out.ciphertext_blob
            .map(Blob::into_inner)
            .ok_or_else(|| self.error("Encrypt", id, "no ciphertext in the answer"))
    }

    /// New key material made inside KMS, returned only wrapped: the plaintext of a new key
    /// never exists outside KMS until a command unwraps it.
    pub(super) async fn generate(
        &self,
        purpose: Purpose,
        id: &str,
    ) -> Result<Vec<u8>, KeyringError> {
        let out = self
            .client
            .generate_data_key_without_plaintext()
            .key_id(&self.key_id)
            .number_of_bytes(32)
            .encryption_context(CONTEXT_PURPOSE, purpose.name())
            .encryption_context(CONTEXT_KEY_ID, id)
            .send()
            .await
            .map_err(|e| self.error("GenerateDataKeyWithoutPlaintext", id, describe(&e)))?;
        out.ciphertext_blob.map(Blob::into_inner).ok_or_else(|| {
            self.error(
                "GenerateDataKeyWithoutPlaintext",
                id,
                "no ciphertext in the answer",
            )
        })
    }
}

impl Keyring {
    /// Unwraps, with one `kms:Decrypt` each, the blobs of the keys `use_` needs; other blobs
    /// stay wrapped. A plain keyring is left as it is.
    pub(super) async fn unwrap_for(&mut self, use_: KeyUse) -> Result<(), KeyringError> {
        let Some(settings) = self.kms.clone() else {
            return Ok(());
        };
        let client = KmsClient::connect(&settings, &self.origin).await;
        for purpose in [Purpose::Hash, Purpose::Encryption] {
            for key in self.keys_mut(purpose).iter_mut() {
                if !use_.wants(purpose, key.state) || key.material.is_some() {
                    continue;
                }
                if let Some(blob) = &key.wrapped {
                    key.material = Some(client.decrypt(purpose, &key.id, blob).await?);
                }
            }
        }
        Ok(())
    }

    /// A new KMS-wrapped keyring: one hash key and one encryption key, both generated inside
    /// KMS (`GenerateDataKeyWithoutPlaintext`), so no plaintext key exists on this host.
    pub async fn generate_wrapped(settings: KmsSettings) -> Result<Self, KeyringError> {
        let mut ring = Keyring {
            origin: "new keyring".into(),
            kms: Some(settings),
            hash_keys: Vec::new(),
            encryption_keys: Vec::new(),
        };
        ring.add_wrapped_key(Purpose::Hash).await?;
        ring.add_wrapped_key(Purpose::Encryption).await?;
        Ok(ring)
    }

    /// Adds a new active key made inside KMS to a KMS-wrapped keyring, demoting the current
    /// active one of `purpose` to decrypt-only. Returns the new key id.
    pub async fn add_wrapped_key(&mut self, purpose: Purpose) -> Result<String, KeyringError> {
        let Some(settings) = self.kms.clone() else {
            return Err(KeyringError::Invalid {
                origin: self.origin.clone(),
                problem: "the keyring is not KMS-wrapped (no kms_key_id)".into(),
            });
        };
        let id = Keyring::new_key_id(purpose, &self.origin)?;
        let client = KmsClient::connect(&settings, &self.origin).await;
        let blob = client.generate(purpose, &id).await?;
        let key = Key {
            id: id.clone(),
            state: KeyState::Active,
            material: None,
            wrapped: Some(blob),
            loaded_for: KeyUse::NONE,
        };
        self.push_active(purpose, key);
        Ok(id)
    }

    /// Converts a plain keyring into a KMS-wrapped one: every key's material is wrapped with
    /// `kms:Encrypt` under its purpose and id, and the plaintext dropped from memory. Retired
    /// keys keep no material.
    pub async fn wrap(&mut self, settings: KmsSettings) -> Result<(), KeyringError> {
        if let Some(k) = &self.kms {
            return Err(KeyringError::Invalid {
                origin: self.origin.clone(),
                problem: format!("the keyring is already wrapped by KMS key {}", k.key_id),
            });
        }
        let client = KmsClient::connect(&settings, &self.origin).await;
        let mut wrapped = Vec::new();
        for purpose in [Purpose::Hash, Purpose::Encryption] {
            for key in self.keys(purpose) {
                if key.state == KeyState::Retired {
                    continue;
                }
                let material = self.loaded(key)?;
                wrapped.push((
                    purpose,
                    key.id.clone(),
                    client.encrypt(purpose, &key.id, material).await?,
                ));
            }
        }
        for (purpose, id, blob) in wrapped {
            for key in self.keys_mut(purpose).iter_mut().filter(|k| k.id == id) {
                key.wrapped = Some(blob.clone());
                key.material = None;
            }
        }
        self.kms = Some(settings);
        Ok(())
    }
}

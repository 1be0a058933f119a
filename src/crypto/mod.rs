//! Key material and the primitives built on it: the keyring, keyed tokens (HMAC-SHA-256) and
//! the AES-256-GCM cipher with bound associated data.
//!
//! Knows nothing of specs, tables or messages, so both the transforms (which make tokens) and
//! the sink and vault administration (which encrypt and decrypt) can use it.

pub mod cipher;
pub mod keyring;
pub mod tokenizer;

pub use cipher::{Binding, CipherError, Sealed, VaultCipher};
pub use keyring::{Key, KeyState, KeyUse, Keyring, KeyringError, KmsSettings, Purpose};
pub use tokenizer::{DomainTokenizer, Tokenizer};

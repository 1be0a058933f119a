//! The PII vault: keyring, AES-GCM cipher with bound associated data, and recovery.

pub mod cipher;
pub mod keyring;
pub mod recover;

pub use cipher::{Binding, CipherError, Sealed, VaultCipher};
pub use keyring::{Keyring, KeyringError};

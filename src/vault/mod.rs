//! The PII vault: keyring, AES-GCM cipher with bound associated data, recovery (of vaulted
//! values and of reject bodies) and rotation.

pub mod cipher;
pub mod keyring;
pub mod recover;
pub mod rejects;
pub mod retokenize;
pub mod rotate;

pub use cipher::{Binding, CipherError, Sealed, VaultCipher};
pub use keyring::{KeyState, Keyring, KeyringError, Purpose};

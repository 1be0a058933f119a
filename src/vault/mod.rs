//! Vault administration, above the sink: audited recovery of vaulted values and of reject
//! bodies, key rotation and re-tokenizing. The key material and ciphers themselves live in
//! [`crate::crypto`].

pub mod erase;
pub mod recover;
pub mod rejects;
pub mod retokenize;
pub mod rotate;

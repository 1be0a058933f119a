//! Tokens known to be in the vault, so each distinct value is encrypted and sent once per
//! process instead of once per batch.
//!
//! Filled only after a batch's transaction has committed (a token from a rolled-back batch may
//! not be stored). Bounded: two generations of at most [`GENERATION_CAP`] entries each; when
//! the current one is full, or older than [`GENERATION_AGE`], it becomes the previous one and
//! the oldest is dropped, so recently used tokens stay (a lookup in the previous generation
//! moves the token forward). An entry is the vault's key: the column's registered id and the
//! token's 32 bytes (34 bytes; with the hash table's control bytes and load factor about 37
//! bytes a slot at 131,072 slots per generation): at most about 10 MB for both.
//!
//! The age bound matters for erasure: a vault row deleted by another process is rewritten from
//! new data at most two generation ages later (it is written again as soon as it leaves the
//! cache); [`KnownTokens::clear`] forgets everything at once.

use crate::db::vault_v3::TOKEN_BYTES;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries per generation: 7/8 of 131,072, the most a hash table of 131,072 slots holds
/// before it doubles.
pub const GENERATION_CAP: usize = 114_688;

/// A generation is retired after this long even when not full.
pub const GENERATION_AGE: Duration = Duration::from_secs(300);

/// One cached token: the vault's key (the column's registered id and the token's bytes).
pub type Key = (i16, [u8; TOKEN_BYTES]);

/// Hashes vault keys cheaply (SipHash, the standard one, showed in profiles). A token is an
/// HMAC-SHA-256 under a secret key: its bytes are already uniformly random and nobody without
/// the key can choose ones that collide, so folding them 8 bytes at a time (FxHash's step) is
/// as good a hash as any, and no flooding attack is possible.
#[derive(Debug, Default, Clone, Copy)]
pub struct TokenHash;

impl BuildHasher for TokenHash {
    type Hasher = TokenHasher;
    fn build_hasher(&self) -> TokenHasher {
        TokenHasher(0)
    }
}

/// The hasher of [`TokenHash`].
#[derive(Debug, Default)]
pub struct TokenHasher(u64);

impl Hasher for TokenHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The cache's state behind its lock.
#[derive(Debug)]
struct Inner {
    /// The generation tokens are added to.
    current: HashSet<Key, TokenHash>,
    /// The generation before; looked up, never added to.
    previous: HashSet<Key, TokenHash>,
    /// When `current` started.
    started: Instant,
}

/// The known-token cache of one sink (shared by its writers).
#[derive(Debug)]
pub struct KnownTokens {
    /// The state; held only for a lookup or an insert pass over one batch.
    inner: Mutex<Inner>,
}

impl Default for KnownTokens {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                current: HashSet::default(),
                previous: HashSet::default(),
                started: Instant::now(),
            }),
        }
    }
}

impl Inner {
    /// Retires the current generation when full or old.
    fn roll(&mut self) {
        if self.current.len() >= GENERATION_CAP || self.started.elapsed() >= GENERATION_AGE {
            self.previous = std::mem::take(&mut self.current);
            self.started = Instant::now();
        }
    }
}

impl KnownTokens {
    /// Locks the state; a panic elsewhere while holding it cannot corrupt a set of tokens, so
    /// a poisoned lock is used as is.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// For each vault key, whether it is known to be in the vault.
    pub fn known<'a>(&self, keys: impl Iterator<Item = &'a Key>) -> Vec<bool> {
        let mut g = self.lock();
        g.roll();
        keys.map(|k| {
            if g.current.contains(k) {
                true
            } else if g.previous.contains(k) {
                // Still in use: keep it past the next roll.
                g.current.insert(*k);
                true
            } else {
                false
            }
        })
        .collect()
    }

    /// Records tokens a committed transaction stored (or found stored).
    pub fn remember<'a>(&self, keys: impl Iterator<Item = &'a Key>) {
        let mut g = self.lock();
        for k in keys {
            g.roll();
            g.current.insert(*k);
        }
    }

    /// Forgets every token (e.g. after vault rows were deleted).
    pub fn clear(&self) {
        let mut g = self.lock();
        g.current.clear();
        g.previous.clear();
    }

    /// Tokens cached now (both generations).
    pub fn len(&self) -> usize {
        let g = self.lock();
        g.current.len() + g.previous.len()
    }

    /// Whether no token is cached.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(column: i16, i: usize) -> Key {
        let mut t = [0u8; TOKEN_BYTES];
        t[..8].copy_from_slice(&(i as u64).to_be_bytes());
        (column, t)
    }

    #[test]
    fn only_remembered_tokens_are_known_per_column() {
        let k = KnownTokens::default();
        assert_eq!(k.known([key(1, 1)].iter()), vec![false]);
        k.remember([key(1, 1)].iter());
        assert_eq!(
            k.known([key(1, 1), key(2, 1), key(1, 2)].iter()),
            vec![true, false, false]
        );
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_recently_used_tokens() {
        let k = KnownTokens::default();
        let first = key(1, usize::MAX);
        let many: Vec<Key> = (0..3 * GENERATION_CAP).map(|i| key(1, i)).collect();
        k.remember(many.iter().take(GENERATION_CAP));
        k.remember([first].iter());
        for chunk in many[GENERATION_CAP..].chunks(1000) {
            // The first token keeps being used, so it survives every roll.
            assert_eq!(k.known([first].iter()), vec![true]);
            k.remember(chunk.iter());
        }
        assert!(k.len() <= 2 * GENERATION_CAP, "{}", k.len());
        assert_eq!(k.known([first].iter()), vec![true]);
        assert_eq!(
            k.known([many[GENERATION_CAP + 5]].iter()),
            vec![false],
            "an old, unused token left the cache"
        );
        k.clear();
        assert!(k.is_empty());
    }
}

//! Tokens known to be in the vault, so each distinct value is encrypted and sent once per
//! process instead of once per batch.
//!
//! Filled only after a batch's transaction has committed (a token from a rolled-back batch may
//! not be stored). Bounded: two generations of at most [`GENERATION_CAP`] entries each; when
//! the current one is full, or older than [`GENERATION_AGE`], it becomes the previous one and
//! the oldest is dropped, so recently used tokens stay (a lookup in the previous generation
//! moves the token forward). An entry is a small column id and the token's 32 bytes (36 bytes;
//! with the hash table's control bytes and load factor about 37 bytes a slot at 131,072 slots
//! per generation): at most about 10 MB for both. A token that is not 64 hex digits is never
//! cached (it is then simply written again, as before).
//!
//! The age bound matters for erasure: a vault row deleted by another process is rewritten from
//! new data at most two generation ages later (it is written again as soon as it leaves the
//! cache); [`KnownTokens::clear`] forgets everything at once.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries per generation: 7/8 of 131,072, the most a hash table of 131,072 slots holds
/// before it doubles.
pub const GENERATION_CAP: usize = 114_688;

/// A generation is retired after this long even when not full.
pub const GENERATION_AGE: Duration = Duration::from_secs(300);

/// One cached token: the (table, column) id and the token's bytes.
type Key = (u32, [u8; 32]);

/// The cache's state behind its lock.
#[derive(Debug)]
struct Inner {
    /// (table, column) → small id; as many entries as the spec has encrypted columns.
    columns: HashMap<(String, String), u32>,
    /// The generation tokens are added to.
    current: HashSet<Key>,
    /// The generation before; looked up, never added to.
    previous: HashSet<Key>,
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
                columns: HashMap::new(),
                current: HashSet::new(),
                previous: HashSet::new(),
                started: Instant::now(),
            }),
        }
    }
}

/// A 64-hex-digit token as its 32 bytes.
fn token_bytes(token: &str) -> Option<[u8; 32]> {
    let t = token.as_bytes();
    if t.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in t.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi << 4 | lo).ok()?;
    }
    Some(out)
}

impl Inner {
    /// The cache key of a token, assigning the column an id on first sight when `assign`.
    fn key(&mut self, table: &str, column: &str, token: &str, assign: bool) -> Option<Key> {
        let bytes = token_bytes(token)?;
        let id = match self.columns.get(&(table.to_string(), column.to_string())) {
            Some(id) => *id,
            None if assign => {
                let id = u32::try_from(self.columns.len()).ok()?;
                self.columns
                    .insert((table.to_string(), column.to_string()), id);
                id
            }
            None => return None,
        };
        Some((id, bytes))
    }

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

    /// For each (table, column, token), whether it is known to be in the vault.
    pub fn known<'a>(&self, items: impl Iterator<Item = (&'a str, &'a str, &'a str)>) -> Vec<bool> {
        let mut g = self.lock();
        g.roll();
        items
            .map(|(t, c, tok)| match g.key(t, c, tok, false) {
                Some(k) if g.current.contains(&k) => true,
                Some(k) if g.previous.contains(&k) => {
                    // Still in use: keep it past the next roll.
                    g.current.insert(k);
                    true
                }
                _ => false,
            })
            .collect()
    }

    /// Records tokens a committed transaction stored (or found stored).
    pub fn remember<'a>(&self, items: impl Iterator<Item = (&'a str, &'a str, &'a str)>) {
        let mut g = self.lock();
        for (t, c, tok) in items {
            g.roll();
            if let Some(k) = g.key(t, c, tok, true) {
                g.current.insert(k);
            }
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

    fn tok(i: usize) -> String {
        format!("{i:064x}")
    }

    #[test]
    fn only_remembered_tokens_are_known_per_column() {
        let k = KnownTokens::default();
        let (a, b) = (tok(1), tok(2));
        assert_eq!(k.known([("t", "c", a.as_str())].into_iter()), vec![false]);
        k.remember([("t", "c", a.as_str())].into_iter());
        let got = k.known(
            [
                ("t", "c", a.as_str()),
                ("t", "d", a.as_str()),
                ("t", "c", b.as_str()),
            ]
            .into_iter(),
        );
        assert_eq!(got, vec![true, false, false]);
    }

    #[test]
    fn tokens_that_are_not_64_hex_digits_are_never_cached() {
        let k = KnownTokens::default();
        let odd = format!("{}zz", &tok(3)[..62]);
        k.remember([("t", "c", "short"), ("t", "c", odd.as_str())].into_iter());
        assert!(k.is_empty());
        assert_eq!(k.known([("t", "c", "short")].into_iter()), vec![false]);
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_recently_used_tokens() {
        let k = KnownTokens::default();
        let first = tok(0);
        let many: Vec<String> = (0..3 * GENERATION_CAP).map(tok).collect();
        k.remember(
            many.iter()
                .take(GENERATION_CAP)
                .map(|t| ("t", "c", t.as_str())),
        );
        for chunk in many[GENERATION_CAP..].chunks(1000) {
            // The first token keeps being used, so it survives every roll.
            assert_eq!(
                k.known([("t", "c", first.as_str())].into_iter()),
                vec![true]
            );
            k.remember(chunk.iter().map(|t| ("t", "c", t.as_str())));
        }
        assert!(k.len() <= 2 * GENERATION_CAP, "{}", k.len());
        assert_eq!(
            k.known([("t", "c", first.as_str())].into_iter()),
            vec![true]
        );
        assert_eq!(
            k.known([("t", "c", many[GENERATION_CAP + 5].as_str())].into_iter()),
            vec![false],
            "an old, unused token left the cache"
        );
        k.clear();
        assert!(k.is_empty());
    }
}

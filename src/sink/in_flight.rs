//! Vault tokens this process is writing right now, so that its writers do not race each other
//! on the same new value.
//!
//! Two writers of one process that meet the same new token (a hot IP, before either has
//! committed it) would both COPY it into the vault: the second COPY waits for the first
//! transaction and then fails on the unique key, and its whole COPY is redone as
//! `INSERT … ON CONFLICT`. Instead, a writer claims the tokens it is about to write. Tokens
//! already claimed by another writer are not COPY'd but inserted with `ON CONFLICT DO NOTHING`
//! after the COPY: that waits for the other writer's transaction and then either finds the row
//! (it committed) or writes it (it rolled back), so every row still has its vault row when
//! this transaction commits. No cycle of waits can form, because every writer writes its
//! tokens in ascending key order across both statements: only the claimed tokens that sort
//! before the first one another writer holds are COPY'd, the rest go into the sorted `INSERT`.
//!
//! Claims are 64-bit hashes of the vault key (column id, token): a collision only sends a token down the
//! `ON CONFLICT` path, which is always correct.

use super::known_tokens::TokenHash;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

/// The claims of one sink's writers.
#[derive(Debug, Default)]
pub struct InFlight {
    /// Hashes of the claimed tokens.
    claimed: Arc<Mutex<HashSet<u64, TokenHash>>>,
    /// Tokens are keyed HMACs nobody outside can choose, so a cheap hash serves (see
    /// [`TokenHash`]).
    hasher: TokenHash,
}

/// A writer's claims, released when dropped (commit, rollback, error or cancellation alike).
#[derive(Debug)]
pub struct Claim {
    /// The set the hashes were added to.
    claimed: Arc<Mutex<HashSet<u64, TokenHash>>>,
    /// The hashes this claim added.
    mine: Vec<u64>,
}

impl InFlight {
    /// Claims every key not claimed yet; returns, per key in order, whether it is this
    /// writer's to COPY (`true`) or another writer's in flight (`false`), and the claim.
    pub fn claim<K: std::hash::Hash>(&self, keys: impl Iterator<Item = K>) -> (Vec<bool>, Claim) {
        let hashes: Vec<u64> = keys.map(|k| self.hasher.hash_one(k)).collect();
        let mut mine = Vec::with_capacity(hashes.len());
        let owned = match self.claimed.lock() {
            Ok(mut set) => hashes
                .iter()
                .map(|h| {
                    let new = set.insert(*h);
                    if new {
                        mine.push(*h);
                    }
                    new
                })
                .collect(),
            // A writer panicked while holding the lock: claim nothing, so every token takes
            // the always-correct ON CONFLICT path.
            Err(_) => vec![false; hashes.len()],
        };
        (
            owned,
            Claim {
                claimed: self.claimed.clone(),
                mine,
            },
        )
    }

    /// Tokens claimed right now.
    pub fn claimed(&self) -> usize {
        self.claimed.lock().map_or(0, |s| s.len())
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut set) = self.claimed.lock() {
            for h in &self.mine {
                set.remove(h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_sees_the_first_ones_tokens_until_its_claim_ends() {
        let f = InFlight::default();
        let (a, claim_a) = f.claim([("t", "c", "x"), ("t", "c", "y")].into_iter());
        assert_eq!(a, vec![true, true]);
        let (b, claim_b) = f.claim([("t", "c", "y"), ("t", "c", "z"), ("t", "d", "x")].into_iter());
        assert_eq!(
            b,
            vec![false, true, true],
            "y is a's; the same token of another column is not"
        );
        drop(claim_a);
        assert_eq!(f.claimed(), 2);
        let (c, _claim_c) = f.claim([("t", "c", "x"), ("t", "c", "z")].into_iter());
        assert_eq!(c, vec![true, false]);
        drop(claim_b);
        assert_eq!(f.claimed(), 1);
    }

    #[test]
    fn a_token_twice_in_one_claim_is_copied_once() {
        let f = InFlight::default();
        let (a, _c) = f.claim([("t", "c", "x"), ("t", "c", "x")].into_iter());
        assert_eq!(a, vec![true, false]);
    }
}

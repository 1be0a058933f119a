//! The in-flight memory budget: messages received (or read) and not yet written are charged
//! against a number of bytes, and receiving waits while the budget is spent.
//!
//! A count cap alone does not bound memory: 256 KiB bodies times a few thousand messages is
//! gigabytes. The charge is released when the batch holding the message has been written;
//! after that only the receipt handle is kept (bounded by the in-flight count cap).

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Fixed charge per message on top of its body: ids, receipt, attributes, row values.
const PER_MESSAGE_BYTES: u64 = 1024;

/// A byte budget shared by the tasks that receive and the tasks that write.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    permits: Arc<Semaphore>,
    /// The whole budget, in permits (one permit per byte, capped to what a semaphore holds).
    total: u32,
}

/// Bytes charged to the budget; given back when dropped.
#[derive(Debug)]
pub struct Charge(Option<OwnedSemaphorePermit>);

impl ByteBudget {
    /// A budget of `bytes` (at least 1 MiB, at most 4 GiB − 1: what one semaphore can count).
    pub fn new(bytes: u64) -> Self {
        let total = u32::try_from(bytes.clamp(1 << 20, u64::from(u32::MAX))).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// What a message with a body of `body_len` bytes is charged: the body twice (it is kept
    /// for a possible reject, and extracted values may copy parts of it) plus a fixed part.
    pub fn cost(body_len: usize) -> u64 {
        (body_len as u64).saturating_mul(2) + PER_MESSAGE_BYTES
    }

    /// Waits until `bytes` are free and takes them. A charge larger than the whole budget takes
    /// the whole budget, so one huge message still goes through, alone. Returns `None` only if
    /// the budget was closed.
    pub async fn charge(&self, bytes: u64) -> Option<Charge> {
        let n = u32::try_from(bytes.min(u64::from(self.total))).unwrap_or(self.total);
        self.permits
            .clone()
            .acquire_many_owned(n)
            .await
            .ok()
            .map(|p| Charge(Some(p)))
    }

    /// Takes `bytes` if they are free now, without waiting (see [`ByteBudget::charge`]).
    pub fn try_charge(&self, bytes: u64) -> Option<Charge> {
        let n = u32::try_from(bytes.min(u64::from(self.total))).unwrap_or(self.total);
        self.permits
            .clone()
            .try_acquire_many_owned(n)
            .ok()
            .map(|p| Charge(Some(p)))
    }

    /// Bytes currently charged.
    #[cfg(test)]
    pub fn used(&self) -> u64 {
        u64::from(self.total).saturating_sub(self.permits.available_permits() as u64)
    }
}

impl Charge {
    /// Merges another charge into this one, so a batch holds one charge for all its messages.
    pub fn merge(&mut self, other: Charge) {
        match (&mut self.0, other.0) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }

    /// An empty charge (nothing held), to merge into.
    pub fn none() -> Self {
        Charge(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn charges_wait_for_room_and_give_it_back_when_dropped() {
        let b = ByteBudget::new(2 << 20);
        let first = b.charge(1536 * 1024).await.expect("room");
        assert_eq!(b.used(), 1536 * 1024);
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.charge(1 << 20).await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "1.5 MiB of 2 MiB used: 1 MiB must wait"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("room once the first charge is dropped")
            .expect("join");
    }

    #[tokio::test]
    async fn a_message_larger_than_the_budget_takes_all_of_it_and_merged_charges_release_together()
    {
        let b = ByteBudget::new(1 << 20);
        let mut all = Charge::none();
        all.merge(b.charge(ByteBudget::cost(4 << 20)).await.expect("room"));
        assert_eq!(b.used(), 1 << 20);
        drop(all);
        assert_eq!(b.used(), 0);
        let mut two = b.charge(100).await.expect("room");
        two.merge(b.charge(200).await.expect("room"));
        assert_eq!(b.used(), 300);
        drop(two);
        assert_eq!(b.used(), 0);
    }
}

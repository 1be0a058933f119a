//! The receipts of messages received and not yet deleted, with their visibility deadlines:
//! what the heartbeat extends, what caps receiving by count, and what a failed run hands back.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Messages received and not yet deleted, by receipt handle, with their visibility deadline.
#[derive(Default)]
pub struct InFlight {
    map: std::sync::Mutex<HashMap<String, Instant>>,
    /// Woken whenever messages leave, so pollers waiting for room can go on.
    freed: Notify,
}

impl InFlight {
    /// Records receipts received, with their visibility deadline.
    pub fn add(&self, receipts: impl Iterator<Item = String>, deadline: Instant) {
        if let Ok(mut m) = self.map.lock() {
            for r in receipts {
                m.insert(r, deadline);
            }
        }
    }
    /// Forgets receipts (deleted or released), waking pollers waiting for room.
    pub fn remove<'a>(&self, receipts: impl Iterator<Item = &'a str>) {
        if let Ok(mut m) = self.map.lock() {
            for r in receipts {
                m.remove(r);
            }
        }
        self.freed.notify_waiters();
    }
    /// Receipts whose visibility ends within `window`.
    pub fn due(&self, window: Duration) -> Vec<String> {
        let now = Instant::now();
        let Ok(m) = self.map.lock() else {
            return Vec::new();
        };
        m.iter()
            .filter(|(_, d)| d.saturating_duration_since(now) <= window)
            .map(|(r, _)| r.clone())
            .collect()
    }
    /// Records a successful extension. Receipts deleted meanwhile are not added back.
    pub fn extended(&self, receipts: &[String], deadline: Instant) {
        if let Ok(mut m) = self.map.lock() {
            for r in receipts {
                if let Some(d) = m.get_mut(r) {
                    *d = deadline;
                }
            }
        }
    }
    /// How many messages are in flight.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Takes every receipt still held (for handing back to the queue when a run fails).
    pub fn take_all(&self) -> Vec<String> {
        let receipts = self
            .map
            .lock()
            .map(|mut m| m.drain().map(|(r, _)| r).collect())
            .unwrap_or_default();
        self.freed.notify_waiters();
        receipts
    }
    /// Waits until fewer than `cap` messages are in flight (or `stop` fires).
    pub async fn wait_for_room(&self, cap: usize, stop: &CancellationToken) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before checking, so a removal between the check and the wait is not missed.
            freed.as_mut().enable();
            if self.len() < cap {
                return;
            }
            tokio::select! {
                _ = freed => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

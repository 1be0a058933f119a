//! Live counters of a run, shared by the pipeline (which counts), progress reporting and
//! metrics (which read), and the summary printed at the end.
//!
//! A leaf module: counters are plain atomics, so every task can update them without locks and
//! readers see numbers that are at most a moment old.

use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What one written batch did, as counted in [`Stats`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchCounts {
    /// Target rows inserted or updated, in every output.
    pub rows: u64,
    /// The same rows by output table.
    pub rows_by_table: BTreeMap<String, u64>,
    /// Rows an `upsert` or `ignore` output left as they were (a stored or newer row won).
    pub unchanged_rows: u64,
    /// Messages acknowledged without rows: a `filter:` matched, or `unmatched: skip`.
    pub skipped: u64,
    /// Messages written to the rejects table.
    pub rejects: u64,
    /// Messages skipped because the ledger already had them.
    pub duplicates: u64,
    /// New vault rows.
    pub vault_rows: u64,
}

/// Live counters, shared with progress reporting and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub rows: AtomicU64,
    pub rejects: AtomicU64,
    pub duplicates: AtomicU64,
    /// Messages acknowledged without rows (a filter matched, or no output did with `unmatched: skip`).
    pub skipped: AtomicU64,
    /// Rows an upsert or ignore output left as they were.
    pub unchanged_rows: AtomicU64,
    /// Rows written by output table (a few tables per spec: a lock taken once per batch).
    pub rows_by_table: std::sync::Mutex<BTreeMap<String, u64>>,
    pub deleted: AtomicU64,
    pub retries: AtomicU64,
    pub in_flight: AtomicU64,
    /// SQS receive loops running now (0: not an SQS source, or not running).
    pub pollers: AtomicU64,
    pub batches: AtomicU64,
    pub released: AtomicU64,
    pub vault_rows: AtomicU64,
    /// Sum and count of batch commit latency in microseconds, and a histogram (see `LATENCY_BUCKETS_MS`).
    pub commit_micros_sum: AtomicU64,
    pub commit_buckets: [AtomicU64; LATENCY_BUCKETS_MS.len()],
    /// Encryptions by key id since start (nonce budget), flushed to the key-usage table.
    pub encryptions: std::sync::Mutex<HashMap<String, u64>>,
    /// When the last batch was written: the summary's rate counts time up to here, not the
    /// empty polls that end a drain.
    pub last_write: std::sync::Mutex<Option<Instant>>,
}

/// Upper bounds (ms) of the commit-latency histogram buckets.
pub const LATENCY_BUCKETS_MS: [u64; 10] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000];

impl Stats {
    /// Counts one written batch: what it wrote, its encryptions by key id, and how long it took.
    pub fn add_batch(
        &self,
        r: &BatchCounts,
        encryptions: &HashMap<String, u64>,
        elapsed: Duration,
    ) {
        self.rows.fetch_add(r.rows, Ordering::Relaxed);
        self.rejects.fetch_add(r.rejects, Ordering::Relaxed);
        self.duplicates.fetch_add(r.duplicates, Ordering::Relaxed);
        self.skipped.fetch_add(r.skipped, Ordering::Relaxed);
        self.unchanged_rows
            .fetch_add(r.unchanged_rows, Ordering::Relaxed);
        if !r.rows_by_table.is_empty()
            && let Ok(mut by) = self.rows_by_table.lock()
        {
            for (t, n) in &r.rows_by_table {
                *by.entry(t.clone()).or_default() += n;
            }
        }
        self.vault_rows.fetch_add(r.vault_rows, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        let micros = elapsed.as_micros() as u64;
        self.commit_micros_sum.fetch_add(micros, Ordering::Relaxed);
        let ms = micros / 1000;
        for (i, b) in LATENCY_BUCKETS_MS.iter().enumerate() {
            if ms <= *b {
                self.commit_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Ok(mut last) = self.last_write.lock() {
            *last = Some(Instant::now());
        }
        if !encryptions.is_empty()
            && let Ok(mut e) = self.encryptions.lock()
        {
            for (k, v) in encryptions {
                *e.entry(k.clone()).or_default() += v;
            }
        }
    }

    /// A snapshot for the summary of a run that started at `started`.
    pub fn summary(&self, started: Instant) -> Summary {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let elapsed = started.elapsed();
        // Busy time: up to the last write (the empty polls that end a drain are not work).
        let active = self
            .last_write
            .lock()
            .ok()
            .and_then(|l| *l)
            .map_or(elapsed, |l| l.saturating_duration_since(started));
        let secs = active.as_secs_f64().max(1e-9);
        Summary {
            received: g(&self.received),
            rows: g(&self.rows),
            rejects: g(&self.rejects),
            duplicates: g(&self.duplicates),
            skipped: g(&self.skipped),
            unchanged_rows: g(&self.unchanged_rows),
            rows_by_table: self
                .rows_by_table
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default(),
            deleted: g(&self.deleted),
            released: g(&self.released),
            retries: g(&self.retries),
            batches: g(&self.batches),
            elapsed_secs: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            active_secs: (active.as_secs_f64() * 1000.0).round() / 1000.0,
            messages_per_sec: ((g(&self.rows)
                + g(&self.rejects)
                + g(&self.duplicates)
                + g(&self.skipped)) as f64
                / secs)
                .round(),
            left_in_queue: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub received: u64,
    pub rows: u64,
    pub rejects: u64,
    pub duplicates: u64,
    /// Messages acknowledged without rows: a `filter:` matched, or `unmatched: skip`.
    pub skipped: u64,
    /// Rows an `upsert` (a stored or newer row won) or `ignore` output left as they were.
    pub unchanged_rows: u64,
    /// Rows written (inserted or updated) by output table; they add up to `rows`.
    pub rows_by_table: BTreeMap<String, u64>,
    pub deleted: u64,
    /// Messages handed back to the queue (visibility 0) after a batch could not be written.
    pub released: u64,
    pub retries: u64,
    pub batches: u64,
    /// Wall time of the whole run.
    pub elapsed_secs: f64,
    /// Time from start to the last write: what `messages_per_sec` is computed over.
    pub active_secs: f64,
    pub messages_per_sec: f64,
    /// With `--drain` on SQS: messages the queue still counted when the run ended (0 when it
    /// drained completely; absent when the counts could not be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left_in_queue: Option<u64>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "received {}, written {}, rejected {}, duplicates skipped {}, deleted {}, released {}, retries {} in {:.1} s ({} msgs/s over {:.1} s of writing)",
            self.received,
            self.rows,
            self.rejects,
            self.duplicates,
            self.deleted,
            self.released,
            self.retries,
            self.elapsed_secs,
            self.messages_per_sec,
            self.active_secs
        )?;
        if self.skipped > 0 {
            write!(f, "; skipped {} (filter or unmatched)", self.skipped)?;
        }
        if self.unchanged_rows > 0 {
            write!(
                f,
                "; {} row(s) left unchanged by upsert/ignore",
                self.unchanged_rows
            )?;
        }
        if self.rows_by_table.len() > 1 {
            let parts: Vec<String> = self
                .rows_by_table
                .iter()
                .map(|(t, n)| format!("{t} {n}"))
                .collect();
            write!(f, "; rows by table: {}", parts.join(", "))?;
        }
        match self.left_in_queue {
            Some(n) if n > 0 => write!(f, "; {n} message(s) left in the queue"),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_unchanged_and_rows_by_table_add_up_across_batches() {
        let stats = Stats::default();
        let batch = |a: u64, b: u64| BatchCounts {
            rows: a + b,
            rows_by_table: [("orders".to_string(), a), ("order_items".to_string(), b)]
                .into_iter()
                .collect(),
            unchanged_rows: 1,
            skipped: 2,
            ..BatchCounts::default()
        };
        stats.add_batch(&batch(1, 3), &HashMap::new(), Duration::from_millis(1));
        stats.add_batch(&batch(2, 5), &HashMap::new(), Duration::from_millis(1));
        let s = stats.summary(Instant::now());
        assert_eq!((s.rows, s.skipped, s.unchanged_rows), (11, 4, 2));
        assert_eq!(s.rows_by_table["orders"], 3);
        assert_eq!(s.rows_by_table["order_items"], 8);
        let line = s.to_string();
        assert!(line.starts_with("received 0, written 11, rejected 0, duplicates skipped 0"));
        assert!(line.contains("; skipped 4 (filter or unmatched)"), "{line}");
        assert!(
            line.contains("; rows by table: order_items 8, orders 3"),
            "{line}"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["rows_by_table"]["order_items"], 8);
        assert_eq!(json["skipped"], 4);
    }
}

//! Retrying transient failures with exponential backoff and jitter, bounded in time.
//!
//! The jitter keeps processes that failed together (a database restart hits every writer at
//! once) from retrying in lockstep; the bound turns an outage that does not end into an error
//! a person sees, instead of an engine that silently waits forever.

use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long and how fast to retry.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max_delay: Duration,
    /// Give up after this much time in total.
    pub max_elapsed: Duration,
}

impl Backoff {
    /// For Postgres writes: long enough to ride out a database restart.
    pub const WRITE: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max_delay: Duration::from_secs(5),
        max_elapsed: Duration::from_secs(300),
    };
    /// For SQS calls: long enough to ride out an endpoint restart.
    pub const SQS: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max_delay: Duration::from_secs(5),
        max_elapsed: Duration::from_secs(300),
    };

    /// The delay before retry `attempt` (1-based): `initial * 2^attempt`, capped at `max_delay`,
    /// then a random point in its upper half ("equal jitter": never less than half the step).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.initial.saturating_mul(1u32 << attempt.min(16));
        let cap = exp.min(self.max_delay);
        let mut r = [0u8; 4];
        let frac = if getrandom::fill(&mut r).is_ok() {
            f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX)
        } else {
            0.5
        };
        cap.mul_f64(0.5 + frac / 2.0)
    }
}

/// Runs `op` until it succeeds, fails permanently, runs out of time, or `cancel` fires
/// (then the last error is returned). `on_retry` is told about each retried error.
pub async fn retry<T, E, F, Fut>(
    backoff: Backoff,
    cancel: &CancellationToken,
    is_retriable: impl Fn(&E) -> bool,
    mut on_retry: impl FnMut(&E, u32, Duration),
    mut op: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                attempt += 1;
                if !is_retriable(&e) || start.elapsed() >= backoff.max_elapsed {
                    return Err(e);
                }
                let d = backoff.delay(attempt);
                on_retry(&e, attempt, d);
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = cancel.cancelled() => return Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retries_transient_then_succeeds_and_stops_on_permanent() {
        let b = Backoff {
            initial: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            max_elapsed: Duration::from_secs(5),
        };
        let cancel = CancellationToken::new();
        let mut n = 0;
        let r: Result<u32, &str> = retry(
            b,
            &cancel,
            |e| *e == "transient",
            |_, _, _| {},
            || {
                n += 1;
                let v = n;
                async move { if v < 3 { Err("transient") } else { Ok(v) } }
            },
        )
        .await;
        assert_eq!(r, Ok(3));
        let mut calls = 0;
        let r: Result<u32, &str> = retry(
            b,
            &cancel,
            |e| *e == "transient",
            |_, _, _| {},
            || {
                calls += 1;
                async { Err("permanent") }
            },
        )
        .await;
        assert_eq!((r, calls), (Err("permanent"), 1));
    }

    #[test]
    fn delays_grow_and_are_capped() {
        let b = Backoff::WRITE;
        assert!(b.delay(1) <= Duration::from_millis(200));
        assert!(b.delay(30) <= Duration::from_secs(5));
        assert!(b.delay(30) >= Duration::from_millis(2500));
    }
}

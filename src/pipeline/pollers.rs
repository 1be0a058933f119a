//! How many SQS receive loops run: a fixed number, or (`source.pollers: auto`) as many as the
//! queue and the writers call for.
//!
//! Against a remote endpoint each receive costs a round trip, so one loop moves at most
//! `10 / RTT` messages a second: 4 loops at 40 ms are 1,000 msgs/s whatever the backlog. The
//! [`Controller`] adds loops while receives come back full (a backlog waits) and nothing downstream
//! pushes back (writers keep up, the in-flight budget has room), and removes them when receives
//! come back empty (no backlog) or the pipeline pushes back (more loops would only wait). It is
//! pure (counts and a clock in, a loop count out) so it is tested without a queue; the
//! [`supervise`] task feeds it what the loops report and starts or retires loops.
//!
//! Retiring is gentle: a loop leaves only at the top of its loop, never with a receive in progress
//! or messages in hand, so nothing is left invisible in the queue. `--drain` is unchanged: loop 0
//! never retires, and once any loop ends for a reason other than retiring (the drain is done,
//! shutdown, a failure) no loop is started again.

use super::intake::{self, Exit, Poller};
use super::{Shared, task_failed};
use crate::spec::{MAX_POLLERS, Pollers};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Loops an `auto` source starts with: enough to notice a backlog, cheap when idle.
pub const AUTO_START: u32 = 2;

/// How often the supervisor reads the loops' counts and may change their number.
const TICK: Duration = Duration::from_millis(200);

/// A decision waits for at most this long for as many receives as there are loops (long polls on
/// an idle queue answer only every `wait_time_secs`).
const MAX_SAMPLE_AGE: Duration = Duration::from_secs(5);

/// After the pipeline pushed back, no loop is added for this long, so the count does not
/// oscillate around the writers' speed.
const PRESSURE_COOLDOWN: Duration = Duration::from_secs(2);

/// What the loops report, shared by the loops (which count) and the supervisor (which reads
/// and resets). Plain counters: the loops never wait on the controller.
#[derive(Debug, Default)]
pub(super) struct Signals {
    /// Loops with an index at or above this leave at the top of their loop.
    target: AtomicU32,
    receives: AtomicU64,
    /// Receives that returned as many messages as asked for.
    full: AtomicU64,
    empty: AtomicU64,
    /// Receives whose messages had to wait for room (in-flight cap, byte budget, writers).
    blocked: AtomicU64,
}

impl Signals {
    /// Whether loop `n` is still wanted.
    pub fn wanted(&self, n: u32) -> bool {
        n < self.target.load(Ordering::Relaxed)
    }

    /// Counts one receive that returned `got` messages of `asked`.
    pub fn received(&self, got: usize, asked: u32) {
        self.receives.fetch_add(1, Ordering::Relaxed);
        if got == 0 {
            self.empty.fetch_add(1, Ordering::Relaxed);
        } else if got >= asked as usize {
            self.full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one receive whose messages waited for the pipeline (counted once per receive).
    pub fn blocked(&self) {
        self.blocked.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts since the last call.
    fn take(&self) -> Sample {
        let t = |a: &AtomicU64| a.swap(0, Ordering::Relaxed);
        Sample {
            receives: t(&self.receives),
            full: t(&self.full),
            empty: t(&self.empty),
            blocked: t(&self.blocked),
        }
    }
}

/// What the loops did over some time.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub receives: u64,
    /// Receives that came back full.
    pub full: u64,
    /// Receives that came back empty.
    pub empty: u64,
    /// Receives whose messages had to wait for room downstream.
    pub blocked: u64,
}

impl Sample {
    fn add(&mut self, o: Sample) {
        self.receives += o.receives;
        self.full += o.full;
        self.empty += o.empty;
        self.blocked += o.blocked;
    }
}

/// Decides the number of loops from what they report. Time is passed in (time since some
/// start), so tests drive it with a fake clock.
#[derive(Debug)]
pub struct Controller {
    min: u32,
    max: u32,
    current: u32,
    /// What accumulated since the last decision.
    pending: Sample,
    /// When `pending` started.
    since: Duration,
    /// No growth before this (after the pipeline pushed back).
    grow_after: Duration,
}

impl Controller {
    /// A controller for `pollers`. `room` is how many loops the in-flight cap can feed at once
    /// (in-flight messages / messages per receive): more would only wait, so `auto` stays below.
    pub fn new(pollers: Pollers, room: u32) -> Self {
        let (min, max, start) = match pollers {
            Pollers::Fixed(n) => {
                let n = n.clamp(1, MAX_POLLERS);
                (n, n, n)
            }
            Pollers::Auto => {
                let max = room.clamp(1, MAX_POLLERS);
                (1, max, AUTO_START.min(max))
            }
        };
        Self {
            min,
            max,
            current: start,
            pending: Sample::default(),
            since: Duration::ZERO,
            grow_after: Duration::ZERO,
        }
    }

    /// The number of loops wanted now.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// Takes the counts since the last tick; returns the number of loops wanted from now on.
    pub fn tick(&mut self, s: Sample, now: Duration) -> u32 {
        if self.min == self.max {
            return self.current;
        }
        self.pending.add(s);
        let p = self.pending;
        let old = now.saturating_sub(self.since) >= MAX_SAMPLE_AGE;
        // Wait for about one receive per loop, so a decision reflects them all; on an idle
        // queue (long polls) take whatever came within the sample age.
        if p.receives < u64::from(self.current) && !(old && p.receives > 0) {
            return self.current;
        }
        let next = if p.blocked * 4 > p.receives {
            // The pipeline pushes back (writers, in-flight cap or byte budget): loops only wait.
            self.grow_after = now + PRESSURE_COOLDOWN;
            self.current - (self.current / 4).max(1)
        } else if p.empty * 2 > p.receives {
            // Mostly empty receives: no backlog to share out.
            self.current / 2
        } else if p.full * 5 >= p.receives * 4 && p.blocked == 0 && now >= self.grow_after {
            // A backlog and room downstream: grow fast, a remote queue needs many loops.
            self.current * 2
        } else {
            self.current
        };
        self.current = next.clamp(self.min, self.max);
        self.pending = Sample::default();
        self.since = now;
        self.current
    }
}

/// Runs the receive loops of one SQS source until they have all ended: starts loop 0.. up to
/// the controller's count, changes the count every [`TICK`], and keeps `stats.pollers` (the
/// gauge and the progress line) current. `make(n)` builds loop `n`.
pub(super) async fn supervise(
    pollers: Pollers,
    room: u32,
    make: impl Fn(u32, Arc<Signals>) -> Poller,
    shared: Shared,
    stop: CancellationToken,
) {
    let signals = Arc::new(Signals::default());
    let mut ctl = Controller::new(pollers, room);
    let started = Instant::now();
    let mut alive = [false; MAX_POLLERS as usize];
    let mut loops: JoinSet<(u32, Exit)> = JoinSet::new();
    // Once a loop ended for good (drain done, shutdown, failure), none is started again.
    let mut finishing = false;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = 0;
    loop {
        if !finishing && !stop.is_cancelled() {
            let want = ctl.current();
            signals.target.store(want, Ordering::Relaxed);
            if want != last {
                tracing::debug!(pollers = want, "Receive loops: {last} -> {want}.");
                last = want;
            }
            shared
                .stats
                .pollers
                .store(u64::from(want), Ordering::Relaxed);
            for n in 0..want {
                if !alive[n as usize] {
                    alive[n as usize] = true;
                    let p = make(n, signals.clone());
                    let (shared, stop) = (shared.clone(), stop.clone());
                    loops.spawn(async move { (n, intake::poll_loop(p, shared, stop).await) });
                }
            }
        }
        if loops.is_empty() {
            break;
        }
        tokio::select! {
            joined = loops.join_next() => match joined {
                Some(Ok((n, exit))) => {
                    alive[n as usize] = false;
                    finishing |= exit == Exit::Finished;
                }
                Some(Err(e)) => {
                    // A loop panicked: the run stops (the other loops see the failure).
                    shared.failure.fail(task_failed("poller", e));
                    finishing = true;
                }
                None => {}
            },
            _ = ticker.tick() => {
                if !finishing && !stop.is_cancelled() {
                    ctl.tick(signals.take(), started.elapsed());
                }
            }
        }
    }
    shared.stats.pollers.store(0, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(receives: u64, full: u64, empty: u64, blocked: u64) -> Sample {
        Sample {
            receives,
            full,
            empty,
            blocked,
        }
    }

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn a_backlog_doubles_the_loops_up_to_the_bound() {
        let mut c = Controller::new(Pollers::Auto, 64);
        assert_eq!(c.current(), AUTO_START);
        let mut seen = vec![c.current()];
        for i in 1..10 {
            let n = u64::from(c.current());
            seen.push(c.tick(s(n, n, 0, 0), at(200 * i)));
        }
        assert_eq!(seen, [2, 4, 8, 16, 32, 64, 64, 64, 64, 64]);
    }

    #[test]
    fn waits_for_about_one_receive_per_loop_before_deciding() {
        let mut c = Controller::new(Pollers::Auto, 64);
        assert_eq!(
            c.tick(s(1, 1, 0, 0), at(200)),
            2,
            "one receive of two loops"
        );
        assert_eq!(c.tick(s(1, 1, 0, 0), at(400)), 4, "the second completes it");
        // Four loops in long polls of an idle queue: one answer, but only after the sample age.
        assert_eq!(c.tick(s(1, 0, 1, 0), at(600)), 4);
        assert_eq!(c.tick(s(0, 0, 0, 0), at(5399)), 4, "not old enough yet");
        assert_eq!(
            c.tick(s(0, 0, 0, 0), at(5400)),
            2,
            "old enough: mostly empty, halve"
        );
    }

    #[test]
    fn empty_receives_halve_down_to_one() {
        let mut c = Controller::new(Pollers::Auto, 64);
        for i in 1..6 {
            c.tick(s(64, 64, 0, 0), at(200 * i));
        }
        assert_eq!(c.current(), 64);
        let mut seen = Vec::new();
        for i in 6..14 {
            let n = u64::from(c.current());
            seen.push(c.tick(s(n, 0, n, 0), at(200 * i)));
        }
        assert_eq!(seen, [32, 16, 8, 4, 2, 1, 1, 1]);
    }

    #[test]
    fn partial_receives_hold_the_count() {
        let mut c = Controller::new(Pollers::Auto, 64);
        c.tick(s(2, 2, 0, 0), at(200));
        assert_eq!(c.current(), 4);
        // Half full, a quarter empty: the loops keep up with what arrives.
        assert_eq!(c.tick(s(8, 4, 2, 0), at(400)), 4);
    }

    #[test]
    fn pushback_shrinks_and_holds_growth_for_a_while() {
        let mut c = Controller::new(Pollers::Auto, 64);
        for i in 1..5 {
            c.tick(s(64, 64, 0, 0), at(200 * i));
        }
        assert_eq!(c.current(), 32);
        // Writers behind: most receives waited for room, though they came back full.
        assert_eq!(c.tick(s(32, 32, 0, 20), at(1000)), 24);
        assert_eq!(c.tick(s(24, 24, 0, 24), at(1200)), 18);
        // Room again, still a backlog: no growth during the cooldown...
        assert_eq!(c.tick(s(18, 18, 0, 0), at(1400)), 18);
        assert_eq!(c.tick(s(18, 18, 0, 0), at(3100)), 18);
        // ...then growth resumes.
        assert_eq!(c.tick(s(18, 18, 0, 0), at(3300)), 36);
        // A single wait among many receives neither shrinks nor grows.
        assert_eq!(c.tick(s(36, 36, 0, 1), at(3500)), 36);
        // Pushback at one loop keeps one loop.
        let mut one = Controller::new(Pollers::Auto, 64);
        one.tick(s(2, 0, 2, 0), at(200));
        assert_eq!(one.current(), 1);
        assert_eq!(one.tick(s(1, 1, 0, 1), at(400)), 1);
    }

    #[test]
    fn bounds_fixed_counts_and_the_in_flight_room() {
        let mut fixed = Controller::new(Pollers::Fixed(8), 64);
        assert_eq!(fixed.current(), 8);
        assert_eq!(
            fixed.tick(s(8, 8, 0, 0), at(200)),
            8,
            "a pinned count stays"
        );
        assert_eq!(fixed.tick(s(8, 0, 8, 0), at(400)), 8);
        // A small in-flight cap (30 messages, 10 per receive) caps auto at 3 loops.
        let mut small = Controller::new(Pollers::Auto, 3);
        assert_eq!(small.current(), 2);
        assert_eq!(small.tick(s(2, 2, 0, 0), at(200)), 3);
        assert_eq!(small.tick(s(3, 3, 0, 0), at(400)), 3);
        let tiny = Controller::new(Pollers::Auto, 0);
        assert_eq!(tiny.current(), 1);
    }
}

//! Progress while a pipeline runs: a live status line on a terminal, or a structured log line
//! every few seconds when stderr is not a terminal (containers, CI, files).
//!
//! Both read the pipeline's live [`Stats`] counters; the queue-depth estimate
//! (`ApproximateNumberOfMessages`) is polled by its own task every few seconds, because one
//! SQS call per half-second tick would cost more than it tells.
//!
//! The live line and log output share stderr: [`log_writer`] is the writer the logger uses,
//! and it erases the live line before each log line, so the two never end up on one row. The
//! line is redrawn on the next tick, and erased for good when reporting stops.

use crate::source::QueueClient;
use crate::stats::Stats;
use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A single status line on stderr, redrawn in place about twice a second.
    Line,
    /// One structured log line (`Progress.`) per interval.
    Log,
    /// Nothing until the final summary.
    Off,
}

impl ProgressMode {
    /// `Line` when stderr is a terminal, `Log` otherwise.
    pub fn auto() -> Self {
        if std::io::stderr().is_terminal() {
            ProgressMode::Line
        } else {
            ProgressMode::Log
        }
    }
}

/// How often the live line is redrawn.
pub const LINE_INTERVAL: Duration = Duration::from_millis(500);
/// Default interval between progress log lines.
pub const DEFAULT_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How often the queue depth is asked for.
pub const DEPTH_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// The rate shown is averaged over at least this long, so it does not jump with every batch.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// The latest queue-depth estimate, shared by progress and metrics. Unknown until first polled
/// (and for file sources).
#[derive(Debug)]
pub struct QueueDepth {
    visible: AtomicI64,
    not_visible: AtomicI64,
}

impl Default for QueueDepth {
    fn default() -> Self {
        Self {
            visible: AtomicI64::new(-1),
            not_visible: AtomicI64::new(-1),
        }
    }
}

impl QueueDepth {
    /// Messages waiting in the queue (`ApproximateNumberOfMessages`), if known.
    pub fn visible(&self) -> Option<u64> {
        u64::try_from(self.visible.load(Ordering::Relaxed)).ok()
    }
    /// Messages received by some consumer and not yet deleted (`ApproximateNumberOfMessagesNotVisible`), if known.
    pub fn not_visible(&self) -> Option<u64> {
        u64::try_from(self.not_visible.load(Ordering::Relaxed)).ok()
    }
    fn set(&self, cell: &AtomicI64, v: Option<&String>) {
        if let Some(n) = v
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
        {
            cell.store(n, Ordering::Relaxed);
        }
    }
}

/// What to report on, and how.
pub struct ProgressConfig {
    /// The spec's `name`.
    pub pipeline: String,
    /// The pipeline's live counters.
    pub stats: Arc<Stats>,
    /// Shared with metrics; filled in by the depth poller when `queue` is set.
    pub depth: Arc<QueueDepth>,
    /// The source queue, for depth estimates; `None` for file sources.
    pub queue: Option<Arc<dyn QueueClient>>,
    /// Poll the queue depth even when progress is off (metrics want it).
    pub poll_depth: bool,
    /// How progress is shown.
    pub mode: ProgressMode,
    /// Interval between log lines in [`ProgressMode::Log`].
    pub log_interval: Duration,
}

/// Running progress reporting; [`Progress::finish`] stops it and erases the live line.
pub struct Progress {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Progress {
    /// Starts the reporter and, when there is a queue to ask, the depth poller.
    pub fn start(cfg: ProgressConfig) -> Self {
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        if let Some(q) = cfg.queue.clone()
            && (cfg.poll_depth || cfg.mode != ProgressMode::Off)
        {
            tasks.push(tokio::spawn(poll_depth(
                q,
                cfg.depth.clone(),
                DEPTH_POLL_INTERVAL,
                stop.clone(),
            )));
        }
        if cfg.mode != ProgressMode::Off {
            tasks.push(tokio::spawn(report(cfg, stop.clone())));
        }
        Self { stop, tasks }
    }

    /// Stops reporting and waits until the live line is erased, so what is printed next
    /// (the summary) starts on a clean row.
    pub async fn finish(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn poll_depth(
    queue: Arc<dyn QueueClient>,
    depth: Arc<QueueDepth>,
    every: Duration,
    stop: CancellationToken,
) {
    let names = vec![
        "ApproximateNumberOfMessages".to_string(),
        "ApproximateNumberOfMessagesNotVisible".to_string(),
    ];
    loop {
        match queue.queue_attributes(names.clone()).await {
            Ok(attrs) => {
                depth.set(&depth.visible, attrs.get("ApproximateNumberOfMessages"));
                depth.set(
                    &depth.not_visible,
                    attrs.get("ApproximateNumberOfMessagesNotVisible"),
                );
            }
            // Only an estimate for display: keep the last value and try again next time.
            Err(e) => tracing::debug!(error = %e, "Reading the queue depth failed."),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One reading of the counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    /// Messages received.
    pub received: u64,
    /// Rows written.
    pub written: u64,
    /// Messages rejected.
    pub rejected: u64,
    /// Redelivered messages skipped.
    pub duplicates: u64,
    /// Messages deleted from the queue.
    pub deleted: u64,
    /// Messages received and not yet deleted.
    pub in_flight: u64,
    /// Messages finished (written, rejected or skipped) per second, recently.
    pub rate_per_sec: f64,
    /// Queue depth estimate, if known.
    pub queue_depth: Option<u64>,
    /// SQS receive loops running now (none for a file source).
    pub pollers: Option<u64>,
    /// Time since reporting started.
    pub elapsed: Duration,
}

impl Snapshot {
    /// The live status line: short enough for an 80-column terminal, so it never wraps (a
    /// wrapped line could not be erased in place). The receive loops, elapsed time and pipeline
    /// name come last, in that order, and are left out when the numbers need the room.
    pub fn line(&self, pipeline: &str) -> String {
        let mut line = format!(
            "recv {}  written {}  rejected {}  dup {}  {} msg/s",
            compact(self.received),
            compact(self.written),
            compact(self.rejected),
            compact(self.duplicates),
            compact(self.rate_per_sec.round() as u64)
        );
        if let Some(d) = self.queue_depth {
            line.push_str(&format!("  queue ~{}", compact(d)));
        }
        let pollers = self.pollers.map(|n| format!("  pollers {n}"));
        for tail in pollers.into_iter().chain([
            format!("  {}s", self.elapsed.as_secs()),
            format!("  [{pipeline}]"),
        ]) {
            if line.chars().count() + tail.chars().count() <= MAX_LINE {
                line.push_str(&tail);
            }
        }
        line
    }
}

/// Columns the live line may use: one less than a classic terminal, so the cursor never wraps.
const MAX_LINE: usize = 79;

/// Numbers for the live line: exact below 10,000, then three significant digits (`12.3k`, `4.56M`).
fn compact(n: u64) -> String {
    if n < 10_000 {
        return n.to_string();
    }
    let (v, unit) = match n {
        // Cut-offs where rounding to three digits would print "1000k".
        n if n < 999_500 => (n as f64 / 1e3, "k"),
        n if n < 999_500_000 => (n as f64 / 1e6, "M"),
        n => (n as f64 / 1e9, "G"),
    };
    let digits = if v < 10.0 {
        2
    } else if v < 100.0 {
        1
    } else {
        0
    };
    format!("{v:.digits$}{unit}")
}

/// Turns successive counter readings into a recent rate.
struct RateWindow {
    samples: VecDeque<(Instant, u64)>,
    window: Duration,
}

impl RateWindow {
    fn new(window: Duration) -> Self {
        Self {
            samples: VecDeque::new(),
            window,
        }
    }
    fn rate(&mut self, now: Instant, done: u64) -> f64 {
        self.samples.push_back((now, done));
        // Keep one sample at or beyond the window's start so the span covers the whole window.
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| now.duration_since(*t) >= self.window)
        {
            self.samples.pop_front();
        }
        let Some(&(t0, d0)) = self.samples.front() else {
            return 0.0;
        };
        let secs = now.duration_since(t0).as_secs_f64();
        if secs <= 0.0 {
            0.0
        } else {
            done.saturating_sub(d0) as f64 / secs
        }
    }
}

fn snapshot(
    stats: &Stats,
    depth: &QueueDepth,
    rate: &mut RateWindow,
    started: Instant,
) -> Snapshot {
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let (written, rejected, duplicates) = (g(&stats.rows), g(&stats.rejects), g(&stats.duplicates));
    let now = Instant::now();
    Snapshot {
        received: g(&stats.received),
        written,
        rejected,
        duplicates,
        deleted: g(&stats.deleted),
        in_flight: g(&stats.in_flight),
        rate_per_sec: rate.rate(now, written + rejected + duplicates),
        queue_depth: depth.visible(),
        pollers: Some(g(&stats.pollers)).filter(|n| *n > 0),
        elapsed: now.duration_since(started),
    }
}

async fn report(cfg: ProgressConfig, stop: CancellationToken) {
    let every = match cfg.mode {
        ProgressMode::Line => LINE_INTERVAL,
        _ => cfg.log_interval.max(Duration::from_millis(100)),
    };
    let started = Instant::now();
    let mut rate = RateWindow::new(RATE_WINDOW.max(every));
    rate.rate(started, 0);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => break,
        }
        let s = snapshot(&cfg.stats, &cfg.depth, &mut rate, started);
        match cfg.mode {
            ProgressMode::Line => draw_line(&mut std::io::stderr(), &s.line(&cfg.pipeline)),
            _ => tracing::info!(
                pipeline = %cfg.pipeline,
                received = s.received,
                written = s.written,
                rejected = s.rejected,
                duplicates = s.duplicates,
                deleted = s.deleted,
                in_flight = s.in_flight,
                rate_per_sec = s.rate_per_sec.round() as u64,
                queue_depth = s.queue_depth,
                pollers = s.pollers,
                "Progress."
            ),
        }
    }
    if cfg.mode == ProgressMode::Line {
        erase_line(&mut std::io::stderr());
    }
}

/// Whether the live line is on screen. One per process, like stderr itself.
static LIVE_LINE: Mutex<bool> = Mutex::new(false);

fn live_line() -> MutexGuard<'static, bool> {
    // A panic while drawing leaves at worst a stale flag; keep going rather than lose logs.
    LIVE_LINE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Moves to the start of the row and clears it (ANSI "erase entire line").
const ERASE: &[u8] = b"\r\x1b[2K";

fn draw_line(out: &mut impl Write, line: &str) {
    let mut shown = live_line();
    let _ = out
        .write_all(ERASE)
        .and_then(|_| out.write_all(line.as_bytes()))
        .and_then(|_| out.flush());
    *shown = true;
}

fn erase_line(out: &mut impl Write) {
    let mut shown = live_line();
    if *shown {
        let _ = out.write_all(ERASE).and_then(|_| out.flush());
        *shown = false;
    }
}

/// The writer for log output: stderr, with the live progress line erased first when it is
/// shown. Pass it to the logger (e.g. `tracing_subscriber::fmt().with_writer(log_writer)`).
pub fn log_writer() -> LogWriter<std::io::Stderr> {
    LogWriter {
        out: std::io::stderr(),
    }
}

/// See [`log_writer`].
pub struct LogWriter<W: Write> {
    out: W,
}

impl<W: Write> Write for LogWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Holding the flag while writing keeps a redraw from landing inside a log line.
        let mut shown = live_line();
        if *shown {
            self.out.write_all(ERASE)?;
            *shown = false;
        }
        self.out.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_fits_a_terminal_and_shows_the_numbers() {
        let s = Snapshot {
            received: 1_234_567,
            written: 1_200_000,
            rejected: 34_000,
            duplicates: 12,
            deleted: 1_234_000,
            in_flight: 567,
            rate_per_sec: 3456.4,
            queue_depth: Some(98_765_432),
            pollers: Some(12),
            elapsed: Duration::from_secs(377),
        };
        let line = s.line("logins");
        assert_eq!(
            line,
            "recv 1.23M  written 1.20M  rejected 34.0k  dup 12  3456 msg/s  queue ~98.8M"
        );
        assert!(line.chars().count() <= MAX_LINE);
        let long = s.line(&"x".repeat(200));
        assert_eq!(long, line, "a long name is left out, not wrapped");
        let small = Snapshot {
            received: 150,
            written: 130,
            rejected: 20,
            duplicates: 0,
            rate_per_sec: 75.0,
            ..s
        };
        let no_depth = Snapshot {
            queue_depth: None,
            ..small
        }
        .line("logins");
        assert_eq!(
            no_depth,
            "recv 150  written 130  rejected 20  dup 0  75 msg/s  pollers 12  377s  [logins]"
        );
        let file = Snapshot {
            queue_depth: None,
            pollers: None,
            ..small
        }
        .line("logins");
        assert_eq!(
            file,
            "recv 150  written 130  rejected 20  dup 0  75 msg/s  377s  [logins]"
        );
    }

    #[test]
    fn compact_numbers() {
        let cases = [
            (0, "0"),
            (9_999, "9999"),
            (10_000, "10.0k"),
            (123_456, "123k"),
            (999_499, "999k"),
            (999_999, "1.00M"),
            (1_500_000, "1.50M"),
            (7_000_000_000, "7.00G"),
        ];
        for (n, want) in cases {
            assert_eq!(compact(n), want, "{n}");
        }
    }

    #[test]
    fn rate_averages_over_the_window() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(Duration::from_secs(5));
        assert_eq!(w.rate(t0, 0), 0.0);
        assert_eq!(w.rate(t0 + Duration::from_secs(1), 100), 100.0);
        assert_eq!(w.rate(t0 + Duration::from_secs(2), 300), 150.0);
        // After the window has passed, old samples no longer count.
        assert_eq!(w.rate(t0 + Duration::from_secs(10), 300), 0.0);
        // The span starts at the last sample before the window (t = 2 s), not at t0.
        let r = w.rate(t0 + Duration::from_secs(11), 1300);
        assert!((r - 1000.0 / 9.0).abs() < 1e-9, "{r}");
    }

    #[test]
    fn depth_ignores_garbage_and_keeps_last_value() {
        let d = QueueDepth::default();
        assert_eq!(d.visible(), None);
        d.set(&d.visible, Some(&"42".to_string()));
        assert_eq!(d.visible(), Some(42));
        d.set(&d.visible, Some(&"lots".to_string()));
        d.set(&d.visible, None);
        assert_eq!(d.visible(), Some(42));
    }

    // The global flag is shared, so the live-line tests run as one test.
    #[test]
    fn log_lines_erase_the_live_line_first() {
        let mut screen = Vec::new();
        draw_line(&mut screen, "logins: received 10");
        let mut w = LogWriter { out: Vec::new() };
        w.write_all(b"INFO a log line\n").unwrap();
        w.write_all(b"INFO another\n").unwrap();
        let logged = String::from_utf8(w.out).unwrap();
        // Erased once, before the first log line; the second needs nothing.
        assert_eq!(logged, "\r\x1b[2KINFO a log line\nINFO another\n");
        let mut tail = Vec::new();
        erase_line(&mut tail);
        assert!(tail.is_empty(), "nothing to erase after a log line");
        draw_line(&mut screen, "logins: received 20");
        erase_line(&mut tail);
        assert_eq!(tail, ERASE);
        assert_eq!(
            String::from_utf8(screen).unwrap(),
            "\r\x1b[2Klogins: received 10\r\x1b[2Klogins: received 20"
        );
    }
}

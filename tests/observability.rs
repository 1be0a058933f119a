//! Observability of a real run against LocalStack and Postgres: `/metrics` answers while the
//! engine runs and its counters match what reached the database; without a terminal, progress
//! comes as periodic structured log lines; on a terminal, as a live line that log output and the
//! final summary never share a row with.

mod common;
use common::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Parses the text exposition format into `series -> value` (series = name plus labels, as printed).
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad sample line {l:?}"));
            (
                series.to_string(),
                value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {l:?}")),
            )
        })
        .collect()
}

async fn scrape(client: &reqwest::Client, addr: &str) -> (String, HashMap<String, f64>) {
    let resp = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("the metrics endpoint answers");
    assert_eq!(resp.status(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        ct.starts_with("text/plain; version=0.0.4"),
        "content type {ct}"
    );
    let text = resp.text().await.unwrap();
    let m = parse_metrics(&text);
    (text, m)
}

/// Reads the child's stderr on a thread, handing over each line.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a JSON log line with `fields.message == message` that satisfies `pred`; keeps every line in `seen`.
fn wait_log(
    rx: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    message: &str,
    timeout: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("--log-format json printed a non-JSON line ({e}): {line}")
                });
                if v["fields"]["message"] == message && pred(&v["fields"]) {
                    return v["fields"].clone();
                }
            }
            Err(_) => panic!(
                "no {message:?} log line within {timeout:?}; stderr so far:\n{}",
                seen.join("\n")
            ),
        }
    }
}

struct Kill(Option<Child>);
impl Drop for Kill {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test]
async fn metrics_endpoint_and_progress_log_lines_during_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = sqs_endpoint();
    let db = fresh_db().await;
    exec(&db, USER_LOGINS_DDL).await;
    let (queue, _) = fresh_queue(&endpoint).await;
    let keyring = keygen(dir.path(), "keyring.json");
    let spec = logins_spec(dir.path(), &endpoint, &queue, &db, "json");
    let (valid, invalid) = classify_examples(&example_logins());
    let total = (valid + invalid) as f64;
    run_engine(
        &[
            "send",
            spec.to_str().unwrap(),
            example_logins().to_str().unwrap(),
        ],
        &[],
        true,
    );

    // No --drain: the engine keeps polling until SIGTERM, like a deployed replica.
    let child = engine()
        .args([
            "--log-format",
            "json",
            "run",
            spec.to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:0",
            "--progress-interval-secs",
            "1",
        ])
        .env("ETL_KEYRING", &keyring)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Kill(Some(child));
    let child = guard.0.as_mut().unwrap();
    let rx = stderr_lines(child);
    let mut seen = Vec::new();
    let serving = wait_log(
        &rx,
        &mut seen,
        "Serving metrics.",
        Duration::from_secs(30),
        |_| true,
    );
    let addr = serving["addr"]
        .as_str()
        .expect("the log line names the bound address")
        .to_string();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    assert_eq!(serving["pipeline"], "logins");

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let l = r#"{pipeline="logins"}"#;
    let get = |m: &HashMap<String, f64>, name: &str| -> f64 {
        *m.get(&format!("{name}{l}"))
            .unwrap_or_else(|| panic!("no {name}{l} in {:?}", m.keys().collect::<Vec<_>>()))
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let (text, m) = loop {
        let (text, m) = scrape(&client, &addr).await;
        if get(&m, "etl_messages_deleted_total") >= total
            && get(&m, "etl_messages_in_flight") == 0.0
        {
            break (text, m);
        }
        assert!(
            Instant::now() < deadline,
            "the counters never reached {total} deleted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(get(&m, "etl_messages_received_total"), total, "{text}");
    assert_eq!(get(&m, "etl_rows_written_total"), valid as f64, "{text}");
    assert_eq!(
        get(&m, "etl_messages_rejected_total"),
        invalid as f64,
        "{text}"
    );
    assert_eq!(get(&m, "etl_duplicates_skipped_total"), 0.0, "{text}");
    assert_eq!(get(&m, "etl_messages_deleted_total"), total, "{text}");
    assert!(m.contains_key(&format!("etl_retries_total{l}")), "{text}");
    for kind in ["counter", "gauge", "histogram"] {
        assert!(
            text.contains(&format!(" {kind}\n")),
            "no {kind} TYPE line:\n{text}"
        );
    }

    // The commit-latency histogram is cumulative and consistent with its count.
    let count = get(&m, "etl_batch_commit_seconds_count");
    assert!(count >= 1.0, "{text}");
    assert!(get(&m, "etl_batch_commit_seconds_sum") > 0.0, "{text}");
    let mut buckets: Vec<(f64, f64)> = m
        .iter()
        .filter_map(|(k, v)| {
            let le = k
                .strip_prefix(r#"etl_batch_commit_seconds_bucket{pipeline="logins",le=""#)?
                .strip_suffix("\"}")?;
            Some((
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                },
                *v,
            ))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() >= 2, "{text}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "buckets must be cumulative: {buckets:?}"
    );
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count));

    // What the metrics say is what the database holds.
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM user_logins")
        .fetch_one(&pool)
        .await
        .unwrap();
    let (rejects,): (i64,) = sqlx::query_as("SELECT count(*) FROM etl_rejects")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        (rows as f64, rejects as f64),
        (
            get(&m, "etl_rows_written_total"),
            get(&m, "etl_messages_rejected_total")
        )
    );
    pool.close().await;

    // The queue-depth estimate is polled every few seconds; once drained it reads 0.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (text, m) = scrape(&client, &addr).await;
        if m.get(&format!("etl_queue_messages_visible{l}")) == Some(&0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the queue depth estimate never reached 0:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Without a terminal, progress is a structured log line every --progress-interval-secs.
    let (w, r) = (valid as u64, invalid as u64);
    let progress = wait_log(&rx, &mut seen, "Progress.", Duration::from_secs(15), |f| {
        f["written"] == w && f["rejected"] == r && f["queue_depth"] == 0
    });
    assert_eq!(progress["pipeline"], "logins");
    assert_eq!(progress["received"], valid as u64 + invalid as u64);
    assert_eq!(progress["duplicates"], 0);
    assert!(progress["rate_per_sec"].is_u64(), "{progress}");

    // Other paths answer without a body of metrics.
    let health = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        client
            .get(format!("http://{addr}/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // SIGTERM: a clean shutdown with the usual summary, and the metrics port is released.
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = guard.0.take().unwrap().wait_with_output().unwrap();
    assert!(out.status.success(), "exit {:?}", out.status.code());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "received {}, written {valid}, rejected {invalid}",
            valid + invalid
        )),
        "{stdout}"
    );
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "the metrics port is closed after exit"
    );
    // Drain the rest of stderr: all of it JSON, none of it terminal control codes.
    for line in rx.iter() {
        seen.push(line);
    }
    let all = seen.join("\n");
    assert!(
        !all.contains('\x1b') && !all.contains('\r'),
        "control codes on a non-terminal stderr:\n{all}"
    );
    assert!(all.contains("Shutting down"), "{all}");
}

#[tokio::test]
async fn live_progress_line_on_a_terminal_never_shares_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = sqs_endpoint();
    let db = fresh_db().await;
    exec(&db, USER_LOGINS_DDL).await;
    let (queue, _) = fresh_queue(&endpoint).await;
    let keyring = keygen(dir.path(), "keyring.json");
    let spec = logins_spec(dir.path(), &endpoint, &queue, &db, "json");
    let (valid, invalid) = classify_examples(&example_logins());
    run_engine(
        &[
            "send",
            spec.to_str().unwrap(),
            example_logins().to_str().unwrap(),
        ],
        &[],
        true,
    );

    // `script` runs the engine on a pseudo-terminal, as a person at a shell would see it.
    let bin = env!("CARGO_BIN_EXE_etl-engine");
    let cmd = format!("'{bin}' run '{}' --drain", spec.display());
    let out = std::process::Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .env("ETL_KEYRING", &keyring)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        // Debug logs arrive while the line is shown, so erasing it before a log line is exercised.
        .env("RUST_LOG", "info,etl_engine=debug")
        .stdin(Stdio::null())
        .output()
        .expect("`script` (util-linux) runs a command on a pseudo-terminal");
    let screen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}:\n{screen:?}",
        out.status.code()
    );

    const ERASE: &str = "\r\x1b[2K";
    let segments: Vec<&str> = screen.split(ERASE).collect();
    let drawn: Vec<&&str> = segments.iter().filter(|s| s.starts_with("recv ")).collect();
    assert!(!drawn.is_empty(), "no live line on a terminal:\n{screen:?}");
    // A drawn line is always followed by an erase before anything else: never a newline, a log
    // line or the summary on the same row.
    for s in &drawn {
        assert!(
            !s.contains('\n') && !s.contains("INFO"),
            "output shared a row with the live line: {s:?}"
        );
        assert!(
            s.contains(" written ")
                && s.contains(" rejected ")
                && s.contains(" dup ")
                && s.contains(" msg/s"),
            "{s:?}"
        );
    }
    let first_drawn = segments
        .iter()
        .position(|s| s.starts_with("recv "))
        .unwrap();
    let logged_over_line = segments[first_drawn..]
        .iter()
        .filter(|s| !s.starts_with("recv ") && (s.contains("DEBUG") || s.contains("INFO")))
        .count();
    assert!(
        logged_over_line >= 1,
        "no log line was written while the live line was shown:\n{screen:?}"
    );
    let last = drawn.last().unwrap();
    assert!(
        last.contains("queue ~"),
        "the depth estimate is shown once polled: {last:?}"
    );
    // The final summary comes after the line is erased for good.
    let tail = segments.last().unwrap();
    let summary = format!(
        "logins: received {}, written {valid}, rejected {invalid}",
        valid + invalid
    );
    assert!(
        tail.contains(&summary),
        "the summary is not on a clean row after the last erase:\n{tail:?}\n\nscreen:\n{screen:?}"
    );
}

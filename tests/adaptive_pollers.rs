//! `source.pollers: auto` against LocalStack: with a backlog waiting, the engine adds receive
//! loops (the `etl_sqs_pollers` gauge rises above the two it starts with), and `--drain` still
//! takes every message and ends.

mod common;
use common::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Messages in the backlog: a few seconds of LocalStack's pace.
const MESSAGES: usize = 4000;

/// Loops `auto` starts with (the controller's start value).
const AUTO_START: f64 = 2.0;

#[tokio::test]
async fn auto_pollers_grow_on_a_backlog_and_the_drain_takes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = sqs_endpoint();
    let db = fresh_db().await;
    exec(&db, USER_LOGINS_DDL).await;
    let (queue, url) = fresh_queue(&endpoint).await;
    let keyring = keygen(dir.path(), "keyring.json");
    let spec = logins_spec(dir.path(), &endpoint, &queue, &db, "json");
    let text = std::fs::read_to_string(&spec).unwrap();
    assert!(
        text.contains("pollers: auto"),
        "the shipped spec leaves pollers to the engine"
    );
    let input = dir.path().join("backlog.jsonl");
    let lines: Vec<String> = (0..MESSAGES)
        .map(|i| {
            serde_json::json!({
                "user_id": format!("auto-{i:05}"),
                "device_type": "android",
                "ip": format!("10.2.{}.{}", i / 250, i % 250),
                "device_id": format!("d-{i}"),
                "locale": "FR",
                "app_version": "2.0.1",
            })
            .to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    run_engine(
        &["send", spec.to_str().unwrap(), input.to_str().unwrap()],
        &[],
        true,
    );

    let child = engine()
        .args([
            "--log-format",
            "json",
            "run",
            spec.to_str().unwrap(),
            "--drain",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("ETL_KEYRING", &keyring)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // The bound metrics port is in the "Serving metrics." log line.
    let mut child = child;
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("engine {pid} never served metrics"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["fields"]["message"] == "Serving metrics." {
            break v["fields"]["addr"].as_str().unwrap().to_string();
        }
    };

    // Scrape the gauge until the run ends; keep the highest value seen.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let series = r#"etl_sqs_pollers{pipeline="logins"} "#;
    let mut seen: Vec<f64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the drain did not end");
        if let Ok(resp) = client.get(format!("http://{addr}/metrics")).send().await
            && let Ok(text) = resp.text().await
            && let Some(v) = text
                .lines()
                .find_map(|l| l.strip_prefix(series))
                .and_then(|v| v.trim().parse::<f64>().ok())
        {
            seen.push(v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit {:?}", out.status.code());
    let max = seen.iter().copied().fold(0.0, f64::max);
    assert!(
        !seen.is_empty() && seen.iter().all(|v| (1.0..=64.0).contains(v)),
        "{seen:?}"
    );
    assert!(
        max > AUTO_START,
        "with a backlog the loops should grow above {AUTO_START}: {seen:?}"
    );

    // Every message landed once and left the queue.
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM user_logins").await,
        MESSAGES as i64
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM etl_ledger").await,
        MESSAGES as i64
    );
    pool.close().await;
    assert_eq!(queue_depth(&endpoint, &url).await, (0, 0));
}

//! The mixed-events pipeline (specs/events.yaml) end to end against real LocalStack and
//! Postgres, in tables created from `etl-engine ddl`: single events and arrays of events routed
//! by type, synthetic traffic skipped, unknown types rejected whole, the card recovered through
//! `vault-decrypt --where`, and an engine killed between commit and delete leaves no duplicate.
//! What the tables should hold is computed here from the examples, independently of the engine.

mod common;
mod examples_common;
use common::*;
use examples_common::*;
use serde_json::Value as J;

/// An event row: (table, user_id, what: url or amount, ts in epoch millis).
type Event = (String, String, String, i64);

/// What the examples must give: rows (as a sorted list), skipped and rejected messages, and the
/// events by message line (to find an array's rows).
struct Want {
    rows: Vec<Event>,
    skipped: usize,
    rejects: usize,
}

fn want() -> Want {
    let text = std::fs::read_to_string(root().join("examples/events.jsonl")).unwrap();
    let mut w = Want {
        rows: Vec::new(),
        skipped: 0,
        rejects: 0,
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let body: J = serde_json::from_str(line).unwrap();
        if body["synthetic"] == true {
            w.skipped += 1;
            continue;
        }
        let events = match &body {
            J::Array(a) => a.clone(),
            one => vec![one.clone()],
        };
        let rows: Option<Vec<Event>> = events
            .iter()
            .map(|e| {
                let user = e["user_id"].as_str()?.to_string();
                let ts = e["ts"].as_i64()?;
                match e["type"].as_str()? {
                    "page_view" => Some((
                        "page_views".to_string(),
                        user,
                        e["url"].as_str()?.to_string(),
                        ts,
                    )),
                    "purchase" => {
                        let amount = match &e["amount_cents"] {
                            J::Number(n) => n.as_i64()?,
                            J::String(s) => s.parse().ok()?,
                            _ => return None,
                        };
                        Some(("event_purchases".to_string(), user, amount.to_string(), ts))
                    }
                    _ => None,
                }
            })
            .collect();
        match rows {
            Some(r) => w.rows.extend(r),
            None => w.rejects += 1,
        }
    }
    w.rows.sort();
    w
}

/// The rows in both tables, sorted, and the number of distinct (message_id, position) per table.
async fn rows(db: &str) -> (Vec<Event>, i64) {
    let pool = sqlx::PgPool::connect(db).await.unwrap();
    let mut out: Vec<Event> = Vec::new();
    let views: Vec<(String, String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT user_id, url, ts FROM page_views")
            .fetch_all(&pool)
            .await
            .unwrap();
    out.extend(
        views
            .into_iter()
            .map(|(u, url, ts)| ("page_views".into(), u, url, ts.timestamp_millis())),
    );
    let buys: Vec<(String, i64, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT user_id, amount_cents, ts FROM event_purchases")
            .fetch_all(&pool)
            .await
            .unwrap();
    out.extend(buys.into_iter().map(|(u, a, ts)| {
        (
            "event_purchases".into(),
            u,
            a.to_string(),
            ts.timestamp_millis(),
        )
    }));
    out.sort();
    let distinct = count(
        &pool,
        "SELECT (SELECT count(DISTINCT (message_id, position)) FROM page_views) \
         + (SELECT count(DISTINCT (message_id, position)) FROM event_purchases)",
    )
    .await;
    pool.close().await;
    (out, distinct)
}

#[tokio::test]
async fn events_end_to_end() {
    let w = want();
    assert!(w.rows.len() >= 8 && w.rejects >= 3 && w.skipped >= 1);
    let endpoint = sqs_endpoint();
    let (queue, url) = fresh_queue(&endpoint).await;
    let db = fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let keyring = keygen(dir.path(), "k.json");
    let kr = keyring.to_str().unwrap();
    let spec = example_spec("events", "event-queue", dir.path(), &endpoint, &queue, &db);
    let spec_s = spec.to_str().unwrap();
    let ddl = create_tables_from_ddl(spec_s, &db).await;
    // The owner registers the spec's encrypted columns for recovery.
    run_engine(&["setup", spec_s], &[], true);
    assert_schema_file_agrees_with_ddl("schema/events.sql", &ddl).await;
    run_engine(&["test", spec_s], &[], true);
    run_engine(&["check", spec_s], &[("ETL_KEYRING", kr)], true);

    let examples = root().join("examples/events.jsonl");
    run_engine(&["send", spec_s, examples.to_str().unwrap()], &[], true);
    let summary_path = dir.path().join("summary.json");
    run_engine(
        &[
            "run",
            spec_s,
            "--drain",
            "--summary-json",
            summary_path.to_str().unwrap(),
        ],
        &[("ETL_KEYRING", kr)],
        true,
    );
    let summary: J =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    assert_eq!(summary["rows"], w.rows.len() as u64, "{summary}");
    assert_eq!(summary["rejects"], w.rejects as u64, "{summary}");
    assert_eq!(summary["skipped"], w.skipped as u64, "{summary}");
    let by_table = |t: &str| w.rows.iter().filter(|r| r.0 == t).count() as u64;
    for t in ["page_views", "event_purchases"] {
        assert_eq!(summary["rows_by_table"][t], by_table(t), "{summary}");
    }
    assert_eq!(queue_depth(&endpoint, &url).await, (0, 0));

    let (got, distinct) = rows(&db).await;
    assert_eq!(got, w.rows);
    assert_eq!(distinct, got.len() as i64, "every event once");

    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    // The array with three events: one message id, positions 1..3 across both tables.
    let positions: Vec<(String, i32)> = sqlx::query_as(
        "SELECT 'page_views', position FROM page_views WHERE user_id = 'u-102' \
         UNION ALL SELECT 'event_purchases', position FROM event_purchases WHERE user_id = 'u-102' \
         ORDER BY 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        positions,
        [
            ("page_views".to_string(), 1),
            ("event_purchases".to_string(), 2),
            ("page_views".to_string(), 3)
        ]
    );
    let ids = count(
        &pool,
        "SELECT count(DISTINCT message_id) FROM (SELECT message_id FROM page_views WHERE user_id = 'u-102' \
         UNION ALL SELECT message_id FROM event_purchases WHERE user_id = 'u-102') m",
    )
    .await;
    assert_eq!(ids, 1);
    // Tokens, never originals; rejects name the unknown type's element, never a value.
    assert_eq!(
        count(&pool, "SELECT count(*) FROM page_views WHERE ip LIKE '%.%'").await,
        0
    );
    let reasons: Vec<(String,)> = sqlx::query_as("SELECT reason FROM etl_rejects ORDER BY reason")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(reasons.len(), w.rejects);
    assert!(
        reasons
            .iter()
            .any(|(r,)| r.starts_with("route: no output matches element 1 of for_each $")),
        "{reasons:?}"
    );
    assert!(
        !reasons
            .iter()
            .any(|(r,)| r.contains("refund") || r.contains("u-10"))
    );
    pool.close().await;

    // The card of u-103's purchase, recovered through the output that encrypts it.
    let out = run_engine(
        &[
            "vault-decrypt",
            spec_s,
            "--column",
            "card_last4",
            "--output",
            "event_purchases",
            "--where",
            "user_id=u-103",
            "--reason",
            "test",
            "--format",
            "json",
        ],
        &[("ETL_KEYRING", kr)],
        true,
    );
    let got: J = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got[0]["value"], "0005", "{got}");
}

#[tokio::test]
async fn an_engine_killed_between_commit_and_delete_leaves_no_duplicate_events() {
    let w = want();
    let endpoint = sqs_endpoint();
    let (queue, url) = fresh_queue(&endpoint).await;
    let db = fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let keyring = keygen(dir.path(), "k.json");
    let kr = keyring.to_str().unwrap();
    let spec = example_spec("events", "event-queue", dir.path(), &endpoint, &queue, &db);
    let spec_s = spec.to_str().unwrap();
    create_tables_from_ddl(spec_s, &db).await;
    run_engine(&["setup", spec_s], &[], true);
    let examples = root().join("examples/events.jsonl");
    run_engine(&["send", spec_s, examples.to_str().unwrap()], &[], true);
    let messages = std::fs::read_to_string(&examples).unwrap().lines().count() as i64;

    // Deletes never reach SQS: the engine commits everything, then is SIGKILLed.
    let proxy = stall_deletes_proxy(&endpoint).await;
    let mut child = engine()
        .args(["run", spec_s])
        .env("ETL_KEYRING", kr)
        .env("ETL_SPEC_SOURCE__ENDPOINT_URL", &proxy)
        .env("ETL_SPEC_SOURCE__VISIBILITY_TIMEOUT_SECS", "3")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let committed = wait_for_count(&db, "SELECT count(*) FROM etl_ledger", messages, 60).await;
    assert_eq!(committed, messages);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(rows(&db).await.0, w.rows);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while queue_depth(&endpoint, &url).await.0 < messages as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "messages did not come back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let summary_path = dir.path().join("summary.json");
    run_engine(
        &[
            "run",
            spec_s,
            "--drain",
            "--summary-json",
            summary_path.to_str().unwrap(),
        ],
        &[("ETL_KEYRING", kr)],
        true,
    );
    let summary: J =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    assert_eq!(summary["duplicates"], messages as u64, "{summary}");
    assert_eq!(summary["rows"], 0, "{summary}");
    assert_eq!(queue_depth(&endpoint, &url).await, (0, 0));
    let (got, distinct) = rows(&db).await;
    assert_eq!(got, w.rows, "no event twice, none lost");
    assert_eq!(distinct, got.len() as i64);
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM etl_rejects").await,
        w.rejects as i64,
        "no reject twice either"
    );
    pool.close().await;
}

//! moto as a third SQS implementation (not LocalStack, not written here): the shipped
//! `specs/logins.yaml`, pointed at a moto server through `ETL_SPEC_*` variables, drains a small
//! queue with `protocol: auto`, `json` and `query`; every valid message is one row, none twice,
//! the invalid ones are rejects, and the queue ends empty. moto scans the whole queue on every
//! call, so the queues stay small (50 messages).

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// Messages per run; the last `INVALID` of them cannot become rows.
const MESSAGES: usize = 50;
/// Invalid messages among them: bad JSON and a null `user_id`, alternating.
const INVALID: usize = 4;

/// The moto server's endpoint (`scripts/test.sh` starts one; it also serves KMS).
fn moto_endpoint() -> String {
    std::env::var("ETL_TEST_MOTO_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4568".into())
}

/// The shipped logins spec, unchanged: the tests override its settings from the environment
/// the way a deployment would.
fn shipped_spec() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("specs/logins.yaml")
}

/// Writes `MESSAGES` login bodies (user ids `{tag}-NN`) as JSON Lines; returns the file.
fn write_messages(dir: &Path, tag: &str) -> PathBuf {
    let mut text = String::new();
    for i in 0..MESSAGES {
        let line = if i >= MESSAGES - INVALID {
            if i % 2 == 0 {
                format!(r#"{{"user_id": "{tag}-{i:02}", "ip": "10.0.0.{i}", "locale": RU"#)
            } else {
                r#"{"user_id": null, "app_version": "1.0.0", "device_type": "ios", "ip": "10.0.0.1", "locale": null, "device_id": "111-22-3333"}"#.to_string()
            }
        } else {
            let device = ["Android", "iOS"][i % 2];
            let locale = [None, Some("RU"), Some("US")][i % 3];
            serde_json::json!({
                "user_id": format!("{tag}-{i:02}"),
                "app_version": format!("{}.{}.0", i % 3, i % 10),
                "device_type": device,
                "ip": format!("10.1.{}.{}", i / 256, i % 256),
                "locale": locale,
                "device_id": format!("{:03}-{:02}-{:04}", i, i % 100, i * 7),
            })
            .to_string()
        };
        text.push_str(&line);
        text.push('\n');
    }
    let p = dir.join("messages.jsonl");
    std::fs::write(&p, text).expect("write messages");
    p
}

/// `send` then `run --drain` through moto with one protocol setting; checks rows, duplicates,
/// rejects, the summary and the queue.
async fn drain_through_moto(protocol: &str) {
    let endpoint = moto_endpoint();
    let (name, url) = fresh_queue(&endpoint).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = fresh_db().await;
    exec(&db, USER_LOGINS_DDL).await;
    let keyring = keygen(dir.path(), "keyring.json");
    let tag = unique("moto");
    let messages = write_messages(dir.path(), &tag);
    let spec = shipped_spec();
    let spec_s = spec.to_str().expect("utf-8 path");
    let summary = dir.path().join("summary.json");
    let envs = [
        ("ETL_SPEC_SOURCE__QUEUE", name.as_str()),
        ("ETL_SPEC_SOURCE__ENDPOINT_URL", endpoint.as_str()),
        ("ETL_SPEC_SOURCE__PROTOCOL", protocol),
        ("ETL_SPEC_SOURCE__WAIT_TIME_SECS", "1"),
        ("ETL_SPEC_TARGET__URL", db.as_str()),
        ("ETL_KEYRING", keyring.to_str().expect("utf-8 path")),
    ];

    run_engine(
        &["send", spec_s, messages.to_str().expect("utf-8 path")],
        &envs,
        true,
    );
    assert_eq!(
        queue_depth(&endpoint, &url).await,
        (MESSAGES as u64, 0),
        "moto must hold every message sent ({protocol})"
    );
    let out = run_engine(
        &[
            "run",
            spec_s,
            "--drain",
            "--summary-json",
            summary.to_str().expect("utf-8 path"),
        ],
        &envs,
        true,
    );
    let valid = MESSAGES - INVALID;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("written {valid}")), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary written"))
            .expect("summary is JSON");
    assert_eq!(report["rows"], valid as u64, "{report}");
    assert_eq!(report["rejects"], INVALID as u64, "{report}");

    let pool = sqlx::PgPool::connect(&db).await.expect("connect");
    let rows = count(&pool, "SELECT count(*) FROM user_logins").await;
    let distinct = count(&pool, "SELECT count(DISTINCT user_id) FROM user_logins").await;
    let ours = count(
        &pool,
        &format!("SELECT count(*) FROM user_logins WHERE user_id LIKE '{tag}-%'"),
    )
    .await;
    assert_eq!(rows, valid as i64, "rows ({protocol})");
    assert_eq!(distinct, rows, "no user id twice ({protocol})");
    assert_eq!(ours, rows, "every row is one of the messages sent");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM etl_rejects").await,
        INVALID as i64
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM etl_ledger").await,
        MESSAGES as i64,
        "one ledger entry per message, rows and rejects alike"
    );
    pool.close().await;
    assert_eq!(
        queue_depth(&endpoint, &url).await,
        (0, 0),
        "queue must be empty after --drain ({protocol})"
    );
}

#[tokio::test]
async fn moto_drains_logins_with_protocol_auto() {
    drain_through_moto("auto").await;
}

#[tokio::test]
async fn moto_drains_logins_with_protocol_json() {
    drain_through_moto("json").await;
}

#[tokio::test]
async fn moto_drains_logins_with_protocol_query() {
    drain_through_moto("query").await;
}

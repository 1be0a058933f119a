//! End to end against real LocalStack and Postgres: the example logins go through
//! `send` → `run --drain` → rows, rejects, vault, `vault-decrypt`; and a redelivered message
//! that is already in the ledger adds no row. The same scenario runs against the old,
//! query-only LocalStack with `protocol: auto` (issue: both SQS wire protocols).

mod common;
use common::*;
use sha2::Digest;
use std::collections::HashMap;

struct Example {
    user_ip: HashMap<String, String>,
    ip_counts: HashMap<String, usize>,
}

fn examples() -> Example {
    let text = std::fs::read_to_string(example_logins()).unwrap();
    let mut user_ip = HashMap::new();
    let mut ip_counts = HashMap::new();
    for l in text.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(l)
            && let (Some(u), Some(ip)) = (v["user_id"].as_str(), v["ip"].as_str())
        {
            user_ip.insert(u.to_string(), ip.to_string());
            *ip_counts.entry(ip.to_string()).or_default() += 1;
        }
    }
    Example { user_ip, ip_counts }
}

async fn scenario(endpoint: &str, queue_name: &str, protocol: &str) {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    exec(&db, USER_LOGINS_DDL).await;
    let keyring = keygen(dir.path(), "keyring.json");
    let kr = keyring.to_str().unwrap();
    let spec = logins_spec(dir.path(), endpoint, queue_name, &db, protocol);
    let spec_s = spec.to_str().unwrap();
    let (valid, invalid) = classify_examples(&example_logins());
    assert!(
        valid >= 100 && invalid >= 10,
        "the examples must exercise both paths"
    );

    run_engine(
        &["send", spec_s, example_logins().to_str().unwrap()],
        &[],
        true,
    );
    let summary_path = dir.path().join("summary.json");
    let out = run_engine(
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("written {valid}")), "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    assert_eq!(summary["rows"], valid as u64);
    assert_eq!(summary["rejects"], invalid as u64);

    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM user_logins")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows as usize, valid);
    let (rejects,): (i64,) = sqlx::query_as("SELECT count(*) FROM etl_rejects")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rejects as usize, invalid);
    let (json_rejects,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM etl_rejects WHERE reason LIKE 'decode:%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        json_rejects >= 1,
        "invalid JSON must be rejected with a decode reason"
    );
    // Reject bodies are stored encrypted, never in plain text.
    let (plain,): (i64,) = sqlx::query_as("SELECT count(*) FROM etl_rejects WHERE position('oops_wrong_msg_type' in encode(body_ciphertext, 'escape')) > 0")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(plain, 0);

    // Same IP → same mask; mask is neither the raw value nor its unkeyed SHA-256.
    let ex = examples();
    let (top_ip, top_count) = ex
        .ip_counts
        .iter()
        .max_by_key(|(_, c)| **c)
        .map(|(i, c)| (i.clone(), *c))
        .unwrap();
    assert!(top_count > 1);
    let (mask, n): (String, i64) = sqlx::query_as(
        "SELECT masked_ip, count(*) FROM user_logins GROUP BY 1 ORDER BY 2 DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(n as usize, top_count);
    assert_ne!(mask, top_ip);
    assert_ne!(mask, hex::encode(sha2::Sha256::digest(top_ip.as_bytes())));
    let (raw_anywhere,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM user_logins WHERE masked_ip = $1 OR masked_device_id LIKE '%-%'",
    )
    .bind(&top_ip)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(raw_anywhere, 0);

    // Recover by token, and by row selector (the spec's setup registers its encrypted columns).
    run_engine(&["setup", spec_s], &[], true);
    let out = run_engine(
        &[
            "vault-decrypt",
            spec_s,
            "--column",
            "masked_ip",
            "--token",
            &mask,
            "--reason",
            "test",
            "--format",
            "json",
        ],
        &[("ETL_KEYRING", kr)],
        true,
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got[0]["value"], top_ip.as_str());
    let (user,): (String,) =
        sqlx::query_as("SELECT user_id FROM user_logins WHERE locale IS NULL LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    let out = run_engine(
        &[
            "vault-decrypt",
            spec_s,
            "--column",
            "masked_ip",
            "--where",
            &format!("user_id={user}"),
            "--reason",
            "test",
        ],
        &[("ETL_KEYRING", kr)],
        true,
    );
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        line.trim().split('\t').nth(1),
        Some(ex.user_ip[&user].as_str()),
        "{line}"
    );
    let (audits,): (i64,) = sqlx::query_as("SELECT count(*) FROM etl_vault_audit")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(audits, 2);

    // Odd versions keep their order; dates come from SentTimestamp.
    let (v096, v910): (i32, i32) = (
        sqlx::query_as::<_, (i32,)>("SELECT min(app_version) FROM user_logins")
            .fetch_one(&pool)
            .await
            .unwrap()
            .0,
        sqlx::query_as::<_, (i32,)>("SELECT max(app_version) FROM user_logins")
            .fetch_one(&pool)
            .await
            .unwrap()
            .0,
    );
    assert!(v096 < v910);
    let (no_date,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM user_logins WHERE create_date IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(no_date, 0);
    pool.close().await;
}

/// Resolves a queue name's URL on any endpoint, through the engine's own auto-detecting client.
async fn queue_url(
    endpoint: &str,
    name: &str,
) -> std::sync::Arc<dyn etl_engine::source::QueueClient> {
    let setup = etl_engine::source::sqs::aws_setup(Some(endpoint), "us-east-1", 1)
        .await
        .unwrap();
    etl_engine::source::sqs::create_queue(&setup, name, &[])
        .await
        .unwrap();
    etl_engine::source::sqs::connect_with(&setup, name, etl_engine::spec::SqsProtocol::Auto)
        .await
        .unwrap()
}

#[tokio::test]
async fn examples_end_to_end_current_localstack() {
    let endpoint = sqs_endpoint();
    let (name, url) = fresh_queue(&endpoint).await;
    scenario(&endpoint, &name, "auto").await;
    assert_eq!(
        queue_depth(&endpoint, &url).await,
        (0, 0),
        "queue must be empty after --drain"
    );
}

#[tokio::test]
async fn examples_end_to_end_old_query_only_localstack() {
    let endpoint = legacy_sqs_endpoint();
    let name = unique("q").replace('_', "-");
    let q = queue_url(&endpoint, &name).await;
    assert_eq!(q.protocol_name(), "query");
    scenario(&endpoint, &name, "auto").await;
    let attrs = q.queue_attributes(vec!["All".into()]).await.unwrap();
    assert_eq!(
        attrs.get("ApproximateNumberOfMessages").map(String::as_str),
        Some("0")
    );
    assert_eq!(
        attrs
            .get("ApproximateNumberOfMessagesNotVisible")
            .map(String::as_str),
        Some("0")
    );
}

#[tokio::test]
async fn protocol_json_against_old_localstack_names_the_setting() {
    let endpoint = legacy_sqs_endpoint();
    let name = unique("q").replace('_', "-");
    queue_url(&endpoint, &name).await;
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    exec(&db, USER_LOGINS_DDL).await;
    let keyring = keygen(dir.path(), "k.json");
    let spec = logins_spec(dir.path(), &endpoint, &name, &db, "json");
    let out = run_engine(
        &["run", spec.to_str().unwrap(), "--drain"],
        &[("ETL_KEYRING", keyring.to_str().unwrap())],
        false,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("source.protocol") && err.contains("query"),
        "{err}"
    );
}

#[tokio::test]
async fn redelivered_message_already_in_ledger_adds_no_row() {
    let endpoint = sqs_endpoint();
    let (name, url) = fresh_queue(&endpoint).await;
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    exec(&db, USER_LOGINS_DDL).await;
    let keyring = keygen(dir.path(), "k.json");
    let kr = keyring.to_str().unwrap();
    let spec_path = logins_spec(dir.path(), &endpoint, &name, &db, "auto");

    let body = r#"{"user_id": "u-redeliver", "app_version": "2.3.0", "device_type": "android", "ip": "10.9.8.7", "locale": "RU", "device_id": "111-22-3333"}"#;
    let c = sqs_client(&endpoint).await;
    c.send_message()
        .queue_url(&url)
        .message_body(body)
        .send()
        .await
        .unwrap();

    // A previous run that committed the message but died before deleting it: receive it, write
    // it through the engine's own sink (ledger included), and let it become visible again.
    let spec = etl_engine::spec::load_spec(&spec_path).unwrap();
    let ring = etl_engine::crypto::Keyring::from_file(&keyring).unwrap();
    let q = etl_engine::source::sqs::connect(match &spec.source {
        etl_engine::spec::SourceConfig::Sqs(s) => s,
        _ => unreachable!(),
    })
    .await
    .unwrap();
    let msgs = q
        .receive(etl_engine::source::ReceiveRequest {
            max_messages: 10,
            wait_time_secs: 2,
            visibility_timeout_secs: 30,
        })
        .await
        .unwrap();
    assert_eq!(msgs.len(), 1);
    let receipt = msgs[0].receipt_handle.clone();
    let tok = etl_engine::transform::Tokenizer::new(ring.active_hash_key().unwrap()).unwrap();
    let processor = etl_engine::process::Processor::new(&spec, Some(tok), None).unwrap();
    let processed: Vec<_> = msgs.into_iter().map(|m| processor.process(m)).collect();
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    etl_engine::sink::schema::setup(&pool, &spec).await.unwrap();
    let cipher = std::sync::Arc::new(etl_engine::crypto::VaultCipher::new(&ring).unwrap());
    let sink = etl_engine::sink::Sink::new(pool.clone(), &spec, cipher);
    let report = sink.write(&processed).await.unwrap();
    assert_eq!(report.rows, 1);
    q.change_visibility_batch(
        vec![etl_engine::source::BatchEntry {
            id: "0".into(),
            value: receipt,
        }],
        0,
    )
    .await
    .unwrap();

    // The redelivery: the engine sees it again, skips it, and deletes it.
    let out = run_engine(
        &["run", spec_path.to_str().unwrap(), "--drain"],
        &[("ETL_KEYRING", kr)],
        true,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("written 0") && stdout.contains("duplicates skipped 1"),
        "{stdout}"
    );
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM user_logins")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    assert_eq!(queue_depth(&endpoint, &url).await, (0, 0));
}

#[tokio::test]
async fn missing_keyring_is_a_one_line_error_before_any_service() {
    let dir = tempfile::tempdir().unwrap();
    // Unreachable services: the keyring check must come first.
    let spec = logins_spec(
        dir.path(),
        "http://127.0.0.1:9",
        "nope",
        "postgres://u:p@127.0.0.1:9/db",
        "auto",
    );
    let out = run_engine(&["run", spec.to_str().unwrap(), "--drain"], &[], false);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("ETL_KEYRING") && err.contains("keygen"),
        "{err}"
    );
}

#[tokio::test]
async fn send_reports_lines_that_cannot_be_bodies_and_sends_the_rest() {
    let endpoint = sqs_endpoint();
    let (name, url) = fresh_queue(&endpoint).await;
    let dir = tempfile::tempdir().unwrap();
    // `send` never touches Postgres.
    let spec = logins_spec(
        dir.path(),
        &endpoint,
        &name,
        "postgres://u:p@127.0.0.1:9/none",
        "auto",
    );
    let text = std::fs::read_to_string(example_logins()).unwrap();
    let examples: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    // 12 lines, a blank line (skipped, as always), a line that is not UTF-8 (line 14), a line
    // over the 1 MiB SQS limit (15), then 12 more lines: 24 bodies in three batches.
    let secret = "send-secret-marker";
    let mut bytes = Vec::new();
    for l in &examples[..12] {
        bytes.extend_from_slice(l.as_bytes());
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(b"  \n");
    bytes.extend_from_slice(format!("{{\"user_id\": \"{secret}").as_bytes());
    bytes.extend_from_slice(b"\xff\"}\n");
    let mut long = format!("{{\"user_id\": \"{secret}").into_bytes();
    long.resize(2 << 20, b'x');
    long.extend_from_slice(b"\"}\n");
    bytes.extend_from_slice(&long);
    for l in &examples[12..24] {
        bytes.extend_from_slice(l.as_bytes());
        bytes.push(b'\n');
    }
    let input = dir.path().join("mixed.jsonl");
    std::fs::write(&input, &bytes).unwrap();

    let out = run_engine(
        &["send", spec.to_str().unwrap(), input.to_str().unwrap()],
        &[],
        false,
    );
    assert_eq!(out.status.code(), Some(1));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains("Sent 24 messages"), "{stdout}\n{stderr}");
    let i = input.display();
    assert!(
        stderr.contains(&format!("{i}: line 14 is not valid UTF-8; not sent")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{i}: line 15 is {} bytes, over the 1048576-byte SQS message limit; not sent",
            long.len() - 1
        )),
        "{stderr}"
    );
    assert!(stderr.contains("2 lines of"), "{stderr}");
    assert!(
        !stdout.contains(secret) && !stderr.contains(secret),
        "line contents reached the output"
    );
    assert_eq!(queue_depth(&endpoint, &url).await, (24, 0));
}

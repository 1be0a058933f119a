//! Delivery guarantees against real LocalStack and Postgres: visibility is extended while a
//! write is slow, receive limits and redrive policies, one bad row never fails a batch,
//! transient errors are retried (resuming after a partial commit), permanent ones stop the run
//! without losing messages, signals shut down cleanly, and the ledger can be pruned safely.
//!
//! Slow writes are made by holding a lock on a table from the test; transient errors by
//! cancelling the engine's blocked statement (SQLSTATE 57014).

mod common;
use common::*;
use etl_engine::process::{Processed, Processor};
use etl_engine::sink::{Sink, WriteProgress};
use etl_engine::source::ReceivedMessage;
use sqlx::{Connection, PgConnection, PgPool};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Spec knobs the tests turn.
struct Knobs {
    visibility_timeout_secs: u32,
    max_receive_count: u32,
    pollers: u32,
    batch_size: usize,
    flush_interval_ms: u64,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            visibility_timeout_secs: 30,
            max_receive_count: 10,
            pollers: 2,
            batch_size: 200,
            flush_interval_ms: 100,
        }
    }
}

/// A logins spec written out in full (independent of the example spec's formatting).
fn spec_file(dir: &Path, queue: &str, db: &str, k: &Knobs) -> PathBuf {
    let text = format!(
        r#"name: rel
source:
  type: sqs
  queue: {queue}
  endpoint_url: {endpoint}
  region: us-east-1
  wait_time_secs: 1
  visibility_timeout_secs: {vt}
  max_messages: 10
  pollers: {pollers}
  max_receive_count: {mrc}
target:
  url: {db}
  table: user_logins
  batch_size: {batch}
  flush_interval_ms: {flush}
  writers: 2
columns:
  user_id:
    path: $.user_id
    required: true
  device_type:
    path: $.device_type
    transforms:
      - type: lowercase
  masked_ip:
    path: $.ip
    transforms:
      - type: encrypt
  masked_device_id:
    path: $.device_id
    transforms:
      - type: encrypt
  locale:
    path: $.locale
  app_version:
    path: $.app_version
    transforms:
      - type: version_to_int
  create_date:
    meta: sent_timestamp
    transforms:
      - type: from_epoch
        unit: millis
        to: date
"#,
        endpoint = sqs_endpoint(),
        vt = k.visibility_timeout_secs,
        pollers = k.pollers,
        mrc = k.max_receive_count,
        batch = k.batch_size,
        flush = k.flush_interval_ms,
    );
    let p = dir.join("rel.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A valid login body with a unique user id.
fn body(tag: &str, i: usize) -> String {
    serde_json::json!({
        "user_id": format!("{tag}-{i:05}"),
        "app_version": format!("2.3.{}", i % 10),
        "device_type": "android",
        "ip": format!("10.0.{}.{}", i / 256 % 256, i % 256),
        "locale": "RU",
        "device_id": format!("{:03}-22-3333", i % 1000),
    })
    .to_string()
}

async fn send_bodies(url: &str, bodies: &[String]) {
    let c = sqs_client(&sqs_endpoint()).await;
    for chunk in bodies.chunks(10) {
        let mut req = c.send_message_batch().queue_url(url);
        for (i, b) in chunk.iter().enumerate() {
            req = req.entries(
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(b)
                    .build()
                    .unwrap(),
            );
        }
        let out = req.send().await.unwrap();
        assert!(out.failed.is_empty(), "send failed: {:?}", out.failed);
    }
}

/// Everything a test needs: a database with the target table, a queue, a keyring, a spec.
struct Setup {
    dir: tempfile::TempDir,
    db: String,
    queue_url: String,
    keyring: PathBuf,
    spec: PathBuf,
    pool: PgPool,
}

impl Setup {
    async fn new(k: Knobs) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let db = fresh_db().await;
        exec(&db, USER_LOGINS_DDL).await;
        let (name, queue_url) = fresh_queue(&sqs_endpoint()).await;
        let keyring = keygen(dir.path(), "k.json");
        let spec = spec_file(dir.path(), &name, &db, &k);
        let pool = PgPool::connect(&db).await.unwrap();
        Setup {
            dir,
            db,
            queue_url,
            keyring,
            spec,
            pool,
        }
    }
    fn spec_s(&self) -> &str {
        self.spec.to_str().unwrap()
    }
    fn kr(&self) -> &str {
        self.keyring.to_str().unwrap()
    }
    /// Runs `run --drain` to the end; returns the summary and stderr.
    fn drain(&self, expect_ok: bool) -> (serde_json::Value, String) {
        let summary = self
            .dir
            .path()
            .join(format!("summary-{}.json", unique("s")));
        let out = run_engine(
            &[
                "run",
                self.spec_s(),
                "--drain",
                "--summary-json",
                summary.to_str().unwrap(),
            ],
            &[("ETL_KEYRING", self.kr())],
            expect_ok,
        );
        let s = std::fs::read_to_string(&summary)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        (s, String::from_utf8_lossy(&out.stderr).into_owned())
    }
    /// Starts the engine in the background; stderr goes to a file (read with [`Engine::stderr`]).
    fn spawn(&self, drain: bool) -> Engine {
        let stderr_path = self.dir.path().join(format!("{}.log", unique("engine")));
        let summary = self.dir.path().join(format!("{}.json", unique("summary")));
        let mut c = engine();
        c.args([
            "run",
            self.spec_s(),
            "--summary-json",
            summary.to_str().unwrap(),
        ]);
        if drain {
            c.arg("--drain");
        }
        c.env("ETL_KEYRING", self.kr())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        Engine {
            child: c.spawn().unwrap(),
            stderr_path,
            summary,
        }
    }
    async fn count(&self, sql: &str) -> i64 {
        count(&self.pool, sql).await
    }
    /// (rows, distinct user ids) in the target table.
    async fn rows(&self) -> (i64, i64) {
        sqlx::query_as("SELECT count(*), count(DISTINCT user_id) FROM user_logins")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
    /// Holds `mode` lock on `table` until the returned connection's transaction ends.
    async fn lock(&self, table: &str, mode: &str) -> PgConnection {
        let mut c = PgConnection::connect(&self.db).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "BEGIN; LOCK TABLE {table} IN {mode} MODE"
        )))
        .execute(&mut c)
        .await
        .unwrap();
        c
    }
    /// Waits for a backend blocked on a lock while running a statement that mentions `needle`.
    async fn blocked_backend(&self, needle: &str, timeout: Duration) -> i32 {
        let start = Instant::now();
        loop {
            let pid: Option<(i32,)> = sqlx::query_as(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' \
                 AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid() LIMIT 1",
            )
            .bind(needle)
            .fetch_optional(&self.pool)
            .await
            .unwrap();
            if let Some((pid,)) = pid {
                return pid;
            }
            assert!(
                start.elapsed() < timeout,
                "no statement on {needle} blocked within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    async fn depth(&self) -> (u64, u64) {
        queue_depth(&sqs_endpoint(), &self.queue_url).await
    }
}

/// A background engine process.
struct Engine {
    child: Child,
    stderr_path: PathBuf,
    summary: PathBuf,
}

impl Engine {
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }
    /// Waits for exit; panics after `timeout` (killing the process).
    async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "engine did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
    fn summary(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&self.summary).unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test]
async fn heartbeat_keeps_messages_invisible_while_a_write_outlasts_the_visibility_timeout() {
    let s = Setup::new(Knobs {
        visibility_timeout_secs: 2,
        pollers: 1,
        ..Knobs::default()
    })
    .await;
    let bodies: Vec<String> = (0..3).map(|i| body("hb", i)).collect();
    send_bodies(&s.queue_url, &bodies).await;
    // Inserts into the target table wait on this lock: the write takes as long as we hold it.
    let mut lock = s.lock("user_logins", "SHARE").await;
    let mut engine = s.spawn(true);
    s.blocked_backend("user_logins", Duration::from_secs(20))
        .await;

    // A competing consumer polls for 4 visibility timeouts: if the engine let the timeout lapse,
    // SQS would hand it the messages (a second delivery).
    let c = sqs_client(&sqs_endpoint()).await;
    let until = Instant::now() + Duration::from_secs(8);
    let mut polls = 0;
    while Instant::now() < until {
        let got = c
            .receive_message()
            .queue_url(&s.queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(30)
            .send()
            .await
            .unwrap();
        assert!(
            got.messages().is_empty(),
            "a message became visible again while its batch was still being written"
        );
        polls += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(polls >= 20);
    assert_eq!(s.depth().await, (0, 3), "all three stay in flight");
    sqlx::raw_sql("COMMIT").execute(&mut lock).await.unwrap();

    let st = engine.wait(Duration::from_secs(30)).await;
    assert!(st.success(), "{}", engine.stderr());
    let sum = engine.summary();
    assert_eq!(
        (
            sum["received"].as_u64(),
            sum["rows"].as_u64(),
            sum["duplicates"].as_u64()
        ),
        (Some(3), Some(3), Some(0)),
        "{sum}"
    );
    assert_eq!(s.rows().await, (3, 3));
    assert_eq!(s.depth().await, (0, 0));
}

#[tokio::test]
async fn a_message_received_more_than_max_receive_count_times_is_rejected_with_the_reason() {
    let s = Setup::new(Knobs {
        max_receive_count: 2,
        ..Knobs::default()
    })
    .await;
    send_bodies(&s.queue_url, &[body("mrc", 1)]).await;
    // Two earlier deliveries that never completed.
    let c = sqs_client(&sqs_endpoint()).await;
    for n in 1..=2 {
        let got = c
            .receive_message()
            .queue_url(&s.queue_url)
            .visibility_timeout(0)
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
            )
            .wait_time_seconds(2)
            .send()
            .await
            .unwrap();
        let count = got.messages()[0].attributes().unwrap()
            [&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount]
            .clone();
        assert_eq!(count, n.to_string());
    }
    let (sum, err) = s.drain(true);
    assert_eq!(
        (sum["rows"].as_u64(), sum["rejects"].as_u64()),
        (Some(0), Some(1)),
        "{sum}\n{err}"
    );
    let (reason,): (String,) = sqlx::query_as("SELECT reason FROM etl_rejects")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert!(
        reason.contains("received 3 times") && reason.contains("max_receive_count (2)"),
        "{reason}"
    );
    assert_eq!(s.rows().await, (0, 0));
    assert_eq!(
        s.depth().await,
        (0, 0),
        "a rejected message is deleted, not left to loop"
    );
}

/// Creates a queue with a dead-letter queue; returns (queue name, queue url, dlq url).
async fn queue_with_dlq(max_receive_count: u32) -> (String, String, String) {
    let c = sqs_client(&sqs_endpoint()).await;
    let (_, dlq_url) = fresh_queue(&sqs_endpoint()).await;
    let arn = c
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    let name = unique("q").replace('_', "-");
    let policy =
        serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max_receive_count})
            .to_string();
    let url = c
        .create_queue()
        .queue_name(&name)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            policy,
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    (name, url, dlq_url)
}

async fn receive_and_abandon(url: &str, times: usize) {
    let c = sqs_client(&sqs_endpoint()).await;
    for _ in 0..times {
        let got = c
            .receive_message()
            .queue_url(url)
            .visibility_timeout(0)
            .wait_time_seconds(2)
            .send()
            .await
            .unwrap();
        assert_eq!(got.messages().len(), 1);
    }
}

#[tokio::test]
async fn the_queues_dead_letter_move_is_not_preempted_unless_max_receive_count_is_lower() {
    // Queue's limit 2 < ours 10: after two failed deliveries SQS moves the message to the DLQ on
    // the next receive; the engine neither writes nor rejects it.
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    exec(&db, USER_LOGINS_DDL).await;
    let keyring = keygen(dir.path(), "k.json");
    let (name, url, dlq) = queue_with_dlq(2).await;
    send_bodies(&url, &[body("dlq", 1)]).await;
    receive_and_abandon(&url, 2).await;
    let spec = spec_file(dir.path(), &name, &db, &Knobs::default());
    let out = run_engine(
        &["run", spec.to_str().unwrap(), "--drain"],
        &[("ETL_KEYRING", keyring.to_str().unwrap())],
        true,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("redrive policy") && err.contains("after 2 receives"),
        "{err}"
    );
    let pool = PgPool::connect(&db).await.unwrap();
    assert_eq!(
        (
            count(&pool, "SELECT count(*) FROM user_logins").await,
            count(&pool, "SELECT count(*) FROM etl_rejects").await
        ),
        (0, 0)
    );
    assert_eq!(
        queue_depth(&sqs_endpoint(), &dlq).await,
        (1, 0),
        "SQS moved it to the dead-letter queue"
    );

    // Ours 1 < queue's 5: the engine rejects it (with the reason) before SQS would move it.
    let dir2 = tempfile::tempdir().unwrap();
    let (name2, url2, dlq2) = queue_with_dlq(5).await;
    send_bodies(&url2, &[body("dlq", 2)]).await;
    receive_and_abandon(&url2, 1).await;
    let spec2 = spec_file(
        dir2.path(),
        &name2,
        &db,
        &Knobs {
            max_receive_count: 1,
            ..Knobs::default()
        },
    );
    let out = run_engine(
        &["run", spec2.to_str().unwrap(), "--drain"],
        &[("ETL_KEYRING", keyring.to_str().unwrap())],
        true,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is lower"), "{err}");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM etl_rejects WHERE reason LIKE '%max_receive_count (1)%'"
        )
        .await,
        1
    );
    assert_eq!(queue_depth(&sqs_endpoint(), &dlq2).await, (0, 0));
    assert_eq!(queue_depth(&sqs_endpoint(), &url2).await, (0, 0));
}

#[tokio::test]
async fn one_row_postgres_refuses_is_rejected_and_the_other_49_commit() {
    let s = Setup::new(Knobs {
        pollers: 1,
        batch_size: 100,
        flush_interval_ms: 1500,
        ..Knobs::default()
    })
    .await;
    let secret = "x".repeat(40); // device_type is varchar(32)
    let mut bodies: Vec<String> = (0..50).map(|i| body("split", i)).collect();
    let mut bad: serde_json::Value = serde_json::from_str(&bodies[17]).unwrap();
    bad["device_type"] = secret.clone().into();
    bodies[17] = bad.to_string();
    send_bodies(&s.queue_url, &bodies).await;
    let (sum, err) = s.drain(true);
    assert_eq!(
        (sum["rows"].as_u64(), sum["rejects"].as_u64()),
        (Some(49), Some(1)),
        "{sum}\n{err}"
    );
    let (reason,): (String,) = sqlx::query_as("SELECT reason FROM etl_rejects")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert!(
        reason.contains("22001") && reason.contains("character varying(32)"),
        "{reason}"
    );
    assert!(!reason.contains(&secret));
    // Nothing lost: the refused row's reject keeps its original body, readable (audited; the
    // spec's setup registers its pipeline for reading bodies).
    run_engine(&["setup", s.spec_s()], &[], true);
    let out = run_engine(
        &[
            "rejects",
            s.spec_s(),
            "--show-bodies",
            "--reason",
            "test: the refused row keeps its body",
            "--format",
            "json",
        ],
        &[("ETL_KEYRING", s.kr())],
        true,
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown[0]["body"], bodies[17].as_str(), "{shown}");
    assert_eq!(s.rows().await, (49, 49));
    assert_eq!(
        s.count("SELECT count(*) FROM user_logins WHERE user_id = 'split-00017'")
            .await,
        0
    );
    assert_eq!(s.count("SELECT count(*) FROM etl_ledger").await, 50);
    assert_eq!(s.depth().await, (0, 0));
}

/// Processes bodies the way the engine does, for driving the sink directly.
fn processed(
    spec: &etl_engine::spec::Spec,
    keyring: &Path,
    bodies: &[String],
) -> (Vec<Processed>, Arc<etl_engine::crypto::VaultCipher>) {
    let ring = etl_engine::crypto::Keyring::from_file(keyring).unwrap();
    let tok = etl_engine::transform::Tokenizer::new(ring.active_hash_key().unwrap()).unwrap();
    let processor = Processor::new(spec, Some(tok), None).unwrap();
    let now = chrono::Utc::now().timestamp_millis().to_string();
    let batch = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            processor.process(ReceivedMessage {
                message_id: format!("m-{i:03}"),
                receipt_handle: format!("r-{i:03}"),
                body: b.clone(),
                attributes: HashMap::from([("SentTimestamp".to_string(), now.clone())]),
                message_attributes: HashMap::new(),
            })
        })
        .collect();
    (
        batch,
        Arc::new(etl_engine::crypto::VaultCipher::new(&ring).unwrap()),
    )
}

async fn sink_for(s: &Setup, bodies: &[String]) -> (Sink, Vec<Processed>) {
    let spec = etl_engine::spec::load_spec(&s.spec).unwrap();
    etl_engine::sink::schema::setup(&s.pool, &spec)
        .await
        .unwrap();
    let (batch, cipher) = processed(&spec, &s.keyring, bodies);
    (Sink::new(s.pool.clone(), &spec, cipher), batch)
}

#[tokio::test]
async fn a_check_constraint_violation_is_isolated_within_one_batch() {
    let s = Setup::new(Knobs::default()).await;
    exec(
        &s.db,
        "ALTER TABLE user_logins ADD CONSTRAINT app_version_positive CHECK (app_version > 0)",
    )
    .await;
    let mut bodies: Vec<String> = (0..50).map(|i| body("chk", i)).collect();
    bodies[33] = bodies[33].replace("\"2.3.3\"", "\"0.0.0\"");
    let (sink, batch) = sink_for(&s, &bodies).await;
    let report = sink.write(&batch).await.unwrap();
    assert_eq!(
        (
            report.rows,
            report.rejects,
            report.duplicates,
            report.acked.len()
        ),
        (49, 1, 0, 50)
    );
    let (id, reason): (String, String) =
        sqlx::query_as("SELECT message_id, reason FROM etl_rejects")
            .fetch_one(&s.pool)
            .await
            .unwrap();
    assert_eq!(id, "m-033");
    assert!(
        reason.contains("23514") && reason.contains("app_version_positive"),
        "{reason}"
    );
    assert_eq!(s.rows().await, (49, 49));
}

#[tokio::test]
async fn a_transient_error_after_a_partial_commit_retries_only_the_uncommitted_part() {
    let s = Setup::new(Knobs::default()).await;
    exec(
        &s.db,
        "ALTER TABLE user_logins ADD CONSTRAINT app_version_positive CHECK (app_version > 0)",
    )
    .await;
    let mut bodies: Vec<String> = (0..50).map(|i| body("part", i)).collect();
    bodies[40] = bodies[40].replace("\"2.3.0\"", "\"0.0.0\"");
    let (sink, batch) = sink_for(&s, &bodies).await;
    // The bad row's reject will wait on this lock; the test then cancels it (SQLSTATE 57014),
    // after the good halves around it have committed.
    let mut lock = s.lock("etl_rejects", "SHARE").await;
    let mut progress = WriteProgress::new(&batch);
    let (first, ()) = tokio::join!(sink.write_resumable(&mut progress), async {
        let pid = s
            .blocked_backend("etl_rejects", Duration::from_secs(20))
            .await;
        sqlx::query("SELECT pg_cancel_backend($1)")
            .bind(pid)
            .execute(&s.pool)
            .await
            .unwrap();
    });
    let err = first.expect_err("the cancelled statement fails the attempt");
    assert!(
        err.is_retriable(),
        "a cancelled statement is transient: {err}"
    );
    let committed = progress.report.acked.len();
    assert!(
        committed > 0 && committed < 50,
        "part of the batch committed before the error: {committed}"
    );
    assert_eq!(committed + progress.pending_len(), 50);
    assert_eq!(
        s.rows().await.0 as usize,
        committed,
        "exactly the reported part is in the table"
    );
    assert!(!progress.is_done());

    sqlx::raw_sql("COMMIT").execute(&mut lock).await.unwrap();
    sink.write_resumable(&mut progress).await.unwrap();
    let r = &progress.report;
    assert_eq!(
        (r.rows, r.rejects, r.duplicates, r.acked.len()),
        (49, 1, 0, 50),
        "nothing was written twice"
    );
    assert_eq!(s.rows().await, (49, 49));
    assert_eq!(s.count("SELECT count(*) FROM etl_ledger").await, 50);
}

#[tokio::test]
async fn transient_postgres_errors_are_retried_until_the_write_succeeds() {
    let s = Setup::new(Knobs::default()).await;
    let bodies: Vec<String> = (0..20).map(|i| body("retry", i)).collect();
    send_bodies(&s.queue_url, &bodies).await;
    let mut lock = s.lock("user_logins", "SHARE").await;
    let mut engine = s.spawn(true);
    // Cancel the blocked insert twice; each time the engine must come back with a new attempt.
    for _ in 0..2 {
        let pid = s
            .blocked_backend("user_logins", Duration::from_secs(20))
            .await;
        sqlx::query("SELECT pg_cancel_backend($1)")
            .bind(pid)
            .execute(&s.pool)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.blocked_backend("user_logins", Duration::from_secs(20))
        .await;
    sqlx::raw_sql("COMMIT").execute(&mut lock).await.unwrap();
    let st = engine.wait(Duration::from_secs(60)).await;
    let err = engine.stderr();
    assert!(st.success(), "{err}");
    assert!(
        err.contains("retrying") && err.contains("canceling statement"),
        "{err}"
    );
    let sum = engine.summary();
    assert!(sum["retries"].as_u64().unwrap() >= 2, "{sum}");
    assert_eq!(
        (sum["rows"].as_u64(), sum["duplicates"].as_u64()),
        (Some(20), Some(0)),
        "{sum}"
    );
    assert_eq!(s.rows().await, (20, 20));
    assert_eq!(s.depth().await, (0, 0));
}

#[tokio::test]
async fn a_permanent_postgres_error_stops_the_run_and_hands_every_message_back() {
    let s = Setup::new(Knobs::default()).await;
    // As if the engine's role lost its INSERT privilege mid-run (SQLSTATE 42501).
    exec(
        &s.db,
        "CREATE FUNCTION deny() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         RAISE EXCEPTION 'permission denied for table user_logins' USING ERRCODE = 'insufficient_privilege'; END $$; \
         CREATE TRIGGER deny BEFORE INSERT ON user_logins FOR EACH ROW EXECUTE PROCEDURE deny();",
    )
    .await;
    let bodies: Vec<String> = (0..20).map(|i| body("perm", i)).collect();
    send_bodies(&s.queue_url, &bodies).await;
    let (_, err) = s.drain(false);
    assert!(
        err.contains("permission denied") && err.contains("retrying cannot help"),
        "{err}"
    );
    assert_eq!(s.rows().await, (0, 0));
    assert_eq!(
        s.count("SELECT count(*) FROM etl_rejects").await,
        0,
        "a broken table is not the messages' fault"
    );
    assert_eq!(s.count("SELECT count(*) FROM etl_ledger").await, 0);
    assert_eq!(
        s.depth().await,
        (20, 0),
        "every message is back in the queue at once"
    );
}

#[tokio::test]
async fn sigterm_flushes_commits_deletes_and_exits_zero() {
    let s = Setup::new(Knobs {
        visibility_timeout_secs: 30,
        pollers: 4,
        ..Knobs::default()
    })
    .await;
    let total = 2000;
    let bodies: Vec<String> = (0..total).map(|i| body("term", i)).collect();
    send_bodies(&s.queue_url, &bodies).await;
    let mut engine = s.spawn(false);
    let start = Instant::now();
    // The engine creates the ledger table at start; until then there is nothing to count.
    let ledger = |pool: PgPool| async move {
        sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM etl_ledger")
            .fetch_one(&pool)
            .await
            .map(|r| r.0)
            .unwrap_or(0)
    };
    while ledger(s.pool.clone()).await < 200 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "engine made no progress: {}",
            engine.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine.signal("TERM");
    let signalled = Instant::now();
    let st = engine.wait(Duration::from_secs(30)).await;
    let took = signalled.elapsed();
    assert_eq!(st.code(), Some(0), "{}", engine.stderr());
    assert!(
        took < Duration::from_secs(10),
        "shutdown took {took:?}, visibility timeout is 30 s"
    );

    let (rows, distinct) = s.rows().await;
    let (visible, in_flight) = s.depth().await;
    assert_eq!(rows, distinct, "no duplicates");
    assert_eq!(
        in_flight, 0,
        "everything received was committed and deleted"
    );
    assert_eq!(
        rows as u64 + visible,
        total as u64,
        "rows + queue account for every message"
    );
    assert!((rows as usize) < total, "the signal came mid-run");
    let sum = engine.summary();
    assert_eq!(sum["rows"].as_i64(), Some(rows), "{sum}");

    let (sum, _) = s.drain(true);
    assert_eq!(
        sum["rows"].as_u64(),
        Some(total as u64 - rows as u64),
        "{sum}"
    );
    assert_eq!(s.rows().await, (total as i64, total as i64));
    assert_eq!(s.depth().await, (0, 0));
}

#[tokio::test]
async fn a_second_signal_exits_at_once_with_130_and_loses_nothing() {
    let s = Setup::new(Knobs {
        visibility_timeout_secs: 20,
        ..Knobs::default()
    })
    .await;
    let bodies: Vec<String> = (0..50).map(|i| body("twice", i)).collect();
    send_bodies(&s.queue_url, &bodies).await;
    let mut lock = s.lock("user_logins", "SHARE").await;
    let mut engine = s.spawn(false);
    s.blocked_backend("user_logins", Duration::from_secs(20))
        .await;
    engine.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        engine.child.try_wait().unwrap().is_none(),
        "the first signal waits for the write in progress"
    );
    engine.signal("INT");
    let second = Instant::now();
    let st = engine.wait(Duration::from_secs(10)).await;
    assert_eq!(st.code(), Some(130), "{}", engine.stderr());
    assert!(second.elapsed() < Duration::from_secs(2));
    sqlx::raw_sql("COMMIT").execute(&mut lock).await.unwrap();
    assert_eq!(s.rows().await, (0, 0), "the interrupted write rolled back");
    // Nothing is lost: the messages come back after their visibility timeout.
    let (v, f) = s.depth().await;
    assert_eq!(v + f, 50);
    let start = Instant::now();
    while s.depth().await != (50, 0) {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "messages did not come back: {:?}",
            s.depth().await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s.drain(true);
    assert_eq!(s.rows().await, (50, 50));
    assert_eq!(s.depth().await, (0, 0));
}

#[tokio::test]
async fn shutdown_that_cannot_write_releases_the_messages_at_its_deadline() {
    let s = Setup::new(Knobs {
        visibility_timeout_secs: 4,
        ..Knobs::default()
    })
    .await;
    let bodies: Vec<String> = (0..30).map(|i| body("deadline", i)).collect();
    send_bodies(&s.queue_url, &bodies).await;
    let mut lock = s.lock("user_logins", "SHARE").await;
    let mut engine = s.spawn(false);
    s.blocked_backend("user_logins", Duration::from_secs(20))
        .await;
    // Wait until everything was received, so all 30 are in flight when the signal comes.
    let start = Instant::now();
    while s.depth().await != (0, 30) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not all received: {:?}",
            s.depth().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    engine.signal("TERM");
    let signalled = Instant::now();
    let st = engine.wait(Duration::from_secs(20)).await;
    let took = signalled.elapsed();
    let err = engine.stderr();
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains("shutdown deadline passed with 30 message(s) not written"),
        "{err}"
    );
    // Deadline is half the 4 s visibility timeout.
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(
        s.depth().await,
        (30, 0),
        "released at once, not after the visibility timeout"
    );
    sqlx::raw_sql("COMMIT").execute(&mut lock).await.unwrap();
    s.drain(true);
    assert_eq!(s.rows().await, (30, 30));
    assert_eq!(s.depth().await, (0, 0));
}

#[tokio::test]
async fn prune_ledger_deletes_old_entries_in_batches_and_refuses_an_age_below_queue_retention() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    exec(&db, USER_LOGINS_DDL).await;
    let c = sqs_client(&sqs_endpoint()).await;
    let name = unique("q").replace('_', "-");
    c.create_queue()
        .queue_name(&name)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::MessageRetentionPeriod,
            "7200",
        )
        .send()
        .await
        .unwrap();
    let spec = spec_file(dir.path(), &name, &db, &Knobs::default());
    let spec_s = spec.to_str().unwrap();
    let pool = PgPool::connect(&db).await.unwrap();
    etl_engine::sink::schema::setup(&pool, &etl_engine::spec::load_spec(&spec).unwrap())
        .await
        .unwrap();
    exec(
        &db,
        "INSERT INTO etl_ledger (pipeline, message_id, outcome, processed_at) \
           SELECT 'rel', 'old-' || i, 'row', now() - interval '10 hours' FROM generate_series(1, 2500) i; \
         INSERT INTO etl_ledger (pipeline, message_id, outcome, processed_at) \
           SELECT 'rel', 'new-' || i, 'row', now() - interval '1 hour' FROM generate_series(1, 30) i; \
         INSERT INTO etl_ledger (pipeline, message_id, outcome, processed_at) \
           SELECT 'other', 'old-' || i, 'row', now() - interval '10 hours' FROM generate_series(1, 40) i;",
    )
    .await;

    // 1 hour < the queue's 2 hours: refused, nothing deleted.
    let out = run_engine(
        &["prune-ledger", spec_s, "--older-than-hours", "1"],
        &[],
        false,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--older-than-hours")
            && err.contains("7200 s")
            && err.contains("at least 2 hours"),
        "{err}"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM etl_ledger").await, 2570);

    let out = run_engine(
        &[
            "prune-ledger",
            spec_s,
            "--older-than-hours",
            "3",
            "--dry-run",
        ],
        &[],
        true,
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Would prune 2500 "),
        "{out:?}"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM etl_ledger").await, 2570);

    let out = run_engine(
        &[
            "prune-ledger",
            spec_s,
            "--older-than-hours",
            "3",
            "--batch-size",
            "1000",
        ],
        &[],
        true,
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Pruned 2500 "),
        "{out:?}"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM etl_ledger WHERE pipeline = 'rel'"
        )
        .await,
        30,
        "recent entries stay"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM etl_ledger WHERE pipeline = 'other'"
        )
        .await,
        40,
        "other pipelines' entries stay"
    );

    // Default age: ledger.retention_hours (14 days), longer than the queue's retention.
    let out = run_engine(&["prune-ledger", spec_s], &[], true);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("Pruned 0 ledger entries older than 336 hours"),
        "{out:?}"
    );
}

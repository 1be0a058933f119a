//! Shared helpers for integration tests: service addresses from the environment (set by
//! `scripts/test.sh`, with localhost defaults), a fresh database and queue per test, keyrings,
//! specs, and running the real `etl-engine` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The admin database URL of the test Postgres.
pub fn db_url() -> String {
    std::env::var("ETL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}
/// The current (JSON + query protocol) SQS endpoint.
pub fn sqs_endpoint() -> String {
    std::env::var("ETL_TEST_SQS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}
/// The KMS endpoint (moto's KMS server; LocalStack's KMS fails on this host's Python).
pub fn kms_endpoint() -> String {
    std::env::var("ETL_TEST_KMS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:54568".into())
}

/// A new symmetric KMS key on the test KMS endpoint; returns its ARN.
pub async fn fresh_kms_key() -> String {
    let conf = aws_sdk_kms::Config::builder()
        .endpoint_url(kms_endpoint())
        .region(aws_sdk_kms::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .build();
    let out = aws_sdk_kms::Client::from_conf(conf)
        .create_key()
        .description("etl-engine test keyring")
        .send()
        .await
        .expect("test KMS must be running (scripts/test.sh starts it)");
    out.key_metadata
        .and_then(|m| m.arn)
        .expect("a new key has an ARN")
}

/// The old, query-only SQS endpoint.
pub fn legacy_sqs_endpoint() -> String {
    std::env::var("ETL_TEST_LEGACY_SQS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4567".into())
}

/// A short random suffix for names.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Creates a fresh database, sets up the engine's tables in it with their default names (as an
/// operator would, with `etl-engine setup`), and returns its URL. Tests never share tables.
pub async fn fresh_db() -> String {
    let url = fresh_db_bare().await;
    setup_default_tables(&url);
    url
}

/// Creates a fresh, empty database (no engine tables) and returns its URL.
pub async fn fresh_db_bare() -> String {
    let admin = sqlx::PgPool::connect(&db_url())
        .await
        .expect("test Postgres must be running (scripts/test.sh starts it)");
    let name = unique("t");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create database");
    admin.close().await;
    let base = db_url();
    let cut = base.rfind('/').expect("db url has a path");
    format!("{}/{name}", &base[..cut])
}

/// Runs `etl-engine setup` for the default engine table names on `url`, with the encrypted
/// columns of the logins spec most tests use (`user_logins.masked_ip`, `masked_device_id`), so
/// they are registered in the vault as that spec's own setup would register them.
pub fn setup_default_tables(url: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("setup.yaml");
    std::fs::write(
        &spec,
        "name: setup\nsource: {type: file, path: none.jsonl}\ntarget: {url: 'URL', table: user_logins}\n\
         columns: {masked_ip: {path: $.ip, transforms: [{type: encrypt}]}, \
         masked_device_id: {path: $.device_id, transforms: [{type: encrypt}]}}\n"
            .replace("URL", url),
    )
    .expect("write setup spec");
    run_engine(&["setup", spec.to_str().expect("utf-8 path")], &[], true);
}

/// The users' table.
pub const USER_LOGINS_DDL: &str = "CREATE TABLE IF NOT EXISTS user_logins(user_id varchar(128), device_type varchar(32), \
    masked_ip varchar(256), masked_device_id varchar(256), locale varchar(32), app_version integer, create_date date)";

/// Runs SQL on a database.
pub async fn exec(url: &str, sql: &str) {
    let pool = sqlx::PgPool::connect(url).await.expect("connect");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&pool)
        .await
        .expect("exec");
    pool.close().await;
}

/// The first column of the first row of `sql` as a number, e.g. a `count(*)`.
pub async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .0
}

/// An SDK client for an endpoint (JSON protocol).
pub async fn sqs_client(endpoint: &str) -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::Config::builder()
        .endpoint_url(endpoint)
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

/// Creates a queue with a random name on the current endpoint; returns (name, url).
pub async fn fresh_queue(endpoint: &str) -> (String, String) {
    let name = unique("q").replace('_', "-");
    let c = sqs_client(endpoint).await;
    let out = c
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .expect("test SQS must be running (scripts/test.sh starts it)");
    (name, out.queue_url.expect("queue url"))
}

/// Number of messages in a queue, visible + in flight.
pub async fn queue_depth(endpoint: &str, url: &str) -> (u64, u64) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let c = sqs_client(endpoint).await;
    let out = c
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes");
    let attrs = out.attributes.unwrap_or_default();
    let get = |a: A| {
        attrs
            .get(&a)
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    };
    (
        get(A::ApproximateNumberOfMessages),
        get(A::ApproximateNumberOfMessagesNotVisible),
    )
}

/// The engine binary.
pub fn engine() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_etl-engine"));
    c.env_remove("ETL_KEYRING")
        .env_remove("ETL_KEYRING_JSON")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test");
    c
}

/// Runs the engine and returns its output; panics with stderr if `expect_ok` does not match.
pub fn run_engine(args: &[&str], envs: &[(&str, &str)], expect_ok: bool) -> Output {
    let mut c = engine();
    c.args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().expect("run etl-engine");
    if out.status.success() != expect_ok {
        panic!(
            "etl-engine {args:?} exited {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Writes a new keyring in `dir` and returns its path.
pub fn keygen(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    run_engine(&["keygen", p.to_str().expect("utf-8 path")], &[], true);
    p
}

/// A logins spec (same columns as specs/logins.yaml) for a queue (name or URL) and database.
pub fn logins_spec(dir: &Path, endpoint: &str, queue: &str, db: &str, protocol: &str) -> PathBuf {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("specs/logins.yaml"))
            .expect("read specs/logins.yaml");
    let text = text
        .replace("queue: login-queue", &format!("queue: {queue}"))
        .replace(
            "endpoint_url: http://127.0.0.1:4566",
            &format!("endpoint_url: {endpoint}"),
        )
        .replace("protocol: auto", &format!("protocol: {protocol}"))
        .replace(
            "url: postgres://postgres:postgres@127.0.0.1:5432/postgres",
            &format!("url: {db}"),
        )
        .replace("wait_time_secs: 5 ", "wait_time_secs: 1 ");
    let p = dir.join("logins.yaml");
    std::fs::write(&p, text).expect("write spec");
    p
}

/// The example messages shipped in examples/logins.jsonl.
pub fn example_logins() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/logins.jsonl")
}

/// Counts (valid, invalid) example messages the way the engine should classify them.
pub fn classify_examples(path: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(path).expect("read examples");
    let mut ok = 0;
    let mut bad = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) if v.get("user_id").is_some_and(|u| !u.is_null()) => ok += 1,
            _ => bad += 1,
        }
    }
    (ok, bad)
}

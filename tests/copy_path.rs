//! The sink keeps every delivery guarantee, against a real Postgres: a message
//! redelivered while its first write is in progress is written once, two writers racing on the
//! same tokens both commit with one vault row each, a row Postgres refuses inside a batch
//! becomes a reject while the rest commits, and a connection killed before commit
//! leaves nothing half-written and a retry writes once. Also: known tokens are neither
//! encrypted nor sent again, and only tokens of committed batches become known.
//!
//! The fast path is a plain COPY into ledger, vault and outputs (numeric values in Postgres's
//! binary form, checked on generated decimals); the tests also show
//! its fallbacks: a stored ledger key or vault token turns the COPY into `INSERT … ON CONFLICT`
//! under a savepoint, and a column whose type changed under a running sink is planned again.
//!
//! A write is held before its commit by a lock the test takes on the target
//! table (the output insert waits on it after ledger and vault rows are inserted).

mod common;
use common::*;
use etl_engine::crypto::{Binding, Keyring, VaultCipher};
use etl_engine::process::{Processed, Processor};
use etl_engine::sink::{Sink, WriteProgress};
use etl_engine::source::ReceivedMessage;
use etl_engine::spec::Spec;
use sqlx::{Connection, PgConnection, PgPool};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A database with the engine's tables and `user_logins`, a keyring and the logins spec.
struct Db {
    _dir: tempfile::TempDir,
    url: String,
    pool: PgPool,
    spec: Spec,
    keyring: PathBuf,
}

impl Db {
    async fn new() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = fresh_db().await;
        exec(&url, USER_LOGINS_DDL).await;
        let keyring = keygen(dir.path(), "k.json");
        let spec_path = dir.path().join("copy.yaml");
        std::fs::write(
            &spec_path,
            format!(
                "name: copy\nsource: {{type: file, path: none.jsonl}}\ntarget: {{url: '{url}', table: user_logins}}\n\
                 columns:\n  user_id: {{path: $.user_id, required: true}}\n  device_type: {{path: $.device_type}}\n\
                 \x20 masked_ip: {{path: $.ip, transforms: [{{type: encrypt}}]}}\n\
                 \x20 masked_device_id: {{path: $.device_id, transforms: [{{type: encrypt}}]}}\n  locale: {{path: $.locale}}\n\
                 \x20 app_version: {{path: $.app_version, transforms: [{{type: version_to_int}}]}}\n"
            ),
        )
        .unwrap();
        let spec = etl_engine::spec::load_spec(&spec_path).unwrap();
        let pool = PgPool::connect(&url).await.unwrap();
        // Registers the spec's encrypted columns: the sink keys vault rows by their ids.
        etl_engine::sink::schema::setup(&pool, &spec).await.unwrap();
        Db {
            _dir: dir,
            url,
            pool,
            spec,
            keyring,
        }
    }

    fn cipher(&self) -> Arc<VaultCipher> {
        Arc::new(VaultCipher::new(&Keyring::from_file(&self.keyring).unwrap()).unwrap())
    }

    /// A sink of its own, as another process would have (its own known-token cache).
    fn sink(&self) -> Sink {
        Sink::new(self.pool.clone(), &self.spec, self.cipher())
    }

    /// Messages `ids` with bodies from `body`, processed as the engine does.
    fn batch(
        &self,
        ids: impl Iterator<Item = usize>,
        body: impl Fn(usize) -> String,
    ) -> Vec<Processed> {
        let ring = Keyring::from_file(&self.keyring).unwrap();
        let tok = etl_engine::transform::Tokenizer::new(ring.active_hash_key().unwrap()).unwrap();
        let processor = Processor::new(&self.spec, Some(tok), None).unwrap();
        ids.map(|i| {
            processor.process(ReceivedMessage {
                message_id: format!("m-{i:04}"),
                receipt_handle: format!("r-{i:04}"),
                body: body(i),
                attributes: HashMap::new(),
                message_attributes: HashMap::new(),
            })
        })
        .collect()
    }

    async fn count(&self, sql: &str) -> i64 {
        count(&self.pool, sql).await
    }

    /// Holds an exclusive lock on `user_logins` until the returned connection's transaction ends.
    async fn lock_target(&self) -> PgConnection {
        let mut c = PgConnection::connect(&self.url).await.unwrap();
        sqlx::raw_sql("BEGIN; LOCK TABLE user_logins IN SHARE MODE")
            .execute(&mut c)
            .await
            .unwrap();
        c
    }

    /// Pids of backends waiting on a lock while running a statement that mentions `needle`,
    /// once there are `n` of them.
    async fn blocked(&self, needle: &str, n: usize) -> Vec<i32> {
        let start = Instant::now();
        loop {
            let pids: Vec<(i32,)> = sqlx::query_as(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' \
                 AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid() ORDER BY pid",
            )
            .bind(needle)
            .fetch_all(&self.pool)
            .await
            .unwrap();
            if pids.len() >= n {
                return pids.into_iter().map(|p| p.0).collect();
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{n} statements on {needle} did not block in time (have {})",
                pids.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Target rows whose tokens have no vault row (must always be 0).
    async fn orphan_tokens(&self) -> i64 {
        self.count(
            "SELECT count(*) FROM user_logins l WHERE NOT EXISTS (SELECT 1 FROM etl_vault v \
             JOIN etl_vault_columns c ON c.id = v.column_id \
             WHERE c.target_table = 'user_logins' AND c.column_name = 'masked_ip' AND encode(v.token, 'hex') = l.masked_ip)",
        )
        .await
    }
}

/// A vault row as read back: column, token, key id, nonce, ciphertext.
type VaultRow = (String, String, String, Vec<u8>, Vec<u8>);

/// A login whose ip and device id come from `shared` (so tokens repeat across messages).
fn login(i: usize, shared: usize) -> String {
    serde_json::json!({
        "user_id": format!("u-{i:05}"),
        "device_type": "android",
        "ip": format!("10.1.{}.{}", shared / 256 % 256, shared % 256),
        "locale": "RU",
        "device_id": format!("dev-{shared:05}"),
        "app_version": "2.3.0",
    })
    .to_string()
}

#[tokio::test]
async fn a_message_redelivered_while_its_first_write_is_in_progress_is_written_once() {
    let db = Db::new().await;
    let (a, b) = (db.sink(), db.sink());
    let first = db.batch(0..50, |i| login(i, i));
    // The redelivery: half of the first batch again (one of them twice), and 25 new messages.
    let second = db.batch((25..75).chain([30]), |i| login(i, i));
    let mut lock = db.lock_target().await;
    let (ra, rb, ()) = tokio::join!(a.write(&first), b.write(&second), async {
        // One write waits on the target lock with its ledger rows copied; the other
        // waits on that write's uncommitted ledger keys (or on the lock, if it came first).
        db.blocked("", 2).await;
        sqlx::raw_sql("COMMIT").execute(&mut lock).await.unwrap();
    });
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.rows + rb.rows, 75, "{ra:?} {rb:?}");
    assert_eq!(
        ra.duplicates + rb.duplicates,
        26,
        "25 seen before, one twice"
    );
    assert_eq!(
        ra.acked.len() + rb.acked.len(),
        101,
        "every delivery is acknowledged"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM user_logins").await,
        db.count("SELECT count(DISTINCT user_id) FROM user_logins")
            .await
    );
    assert_eq!(db.count("SELECT count(*) FROM user_logins").await, 75);
    assert_eq!(db.count("SELECT count(*) FROM etl_ledger").await, 75);
    assert_eq!(db.orphan_tokens().await, 0);
}

#[tokio::test]
async fn two_writers_racing_on_the_same_tokens_both_commit_with_one_vault_row_each() {
    let db = Db::new().await;
    let (a, b) = (db.sink(), db.sink());
    // Different messages, the same 10 ips and device ids.
    let first = db.batch(0..40, |i| login(i, i % 10));
    let second = db.batch(100..140, |i| login(i, i % 10));
    let mut lock = db.lock_target().await;
    let (ra, rb, ()) = tokio::join!(a.write(&first), b.write(&second), async {
        db.blocked("", 2).await;
        sqlx::raw_sql("COMMIT").execute(&mut lock).await.unwrap();
    });
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!((ra.rows, rb.rows), (40, 40));
    assert_eq!(
        ra.vault_rows + rb.vault_rows,
        20,
        "one writer's rows won, the other skipped them"
    );
    assert_eq!(db.count("SELECT count(*) FROM etl_vault").await, 20);
    assert_eq!(db.orphan_tokens().await, 0);
    assert_eq!((a.tokens_in_flight(), b.tokens_in_flight()), (0, 0));
    // Every stored row decrypts to its value: no half of a row from each writer.
    let cipher = db.cipher();
    let rows: Vec<VaultRow> = sqlx::query_as(
        "SELECT c.column_name, encode(v.token, 'hex'), v.key_id, v.nonce, v.ciphertext FROM etl_vault v \
         JOIN etl_vault_columns c ON c.id = v.column_id WHERE c.column_name = 'masked_device_id'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 10);
    for (column, token, key_id, nonce, ct) in rows {
        let b = Binding {
            scope: "user_logins",
            column: &column,
            token: &token,
        };
        let plain = cipher.decrypt(b, &key_id, &nonce, &ct).unwrap();
        assert!(std::str::from_utf8(&plain).unwrap().starts_with("dev-"));
    }

    // Both sinks now know these tokens: new messages with them encrypt and send nothing.
    let third = db.batch(200..230, |i| login(i, i % 10));
    let r = a.write(&third).await.unwrap();
    assert_eq!((r.rows, r.vault_rows), (30, 0));
    assert!(
        r.encryptions.values().all(|n| *n == 0),
        "{:?}",
        r.encryptions
    );
    assert_eq!(a.known_tokens(), 20);
}

#[tokio::test]
async fn a_row_refused_inside_a_copy_stream_becomes_a_reject_and_the_rest_commits() {
    let db = Db::new().await;
    let sink = db.sink();
    // Both are refused by Postgres while it reads the COPY stream: a NUL character (22021) and
    // a locale over varchar(32) (22001), as they were when bound as arrays.
    let batch = db.batch(0..60, |i| match i {
        17 => login(i, i).replace("\"RU\"", "\"R\\u0000U\""),
        44 => login(i, i).replace("\"RU\"", &format!("\"{}\"", "x".repeat(40))),
        _ => login(i, i),
    });
    let r = sink.write(&batch).await.unwrap();
    assert_eq!(
        (r.rows, r.rejects, r.duplicates, r.acked.len()),
        (58, 2, 0, 60)
    );
    let rejects: Vec<(String, String)> =
        sqlx::query_as("SELECT message_id, reason FROM etl_rejects ORDER BY message_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rejects[0].0, "m-0017");
    assert!(rejects[0].1.contains("22021"), "{}", rejects[0].1);
    assert_eq!(rejects[1].0, "m-0044");
    assert!(rejects[1].1.contains("22001"), "{}", rejects[1].1);
    assert_eq!(db.count("SELECT count(*) FROM user_logins").await, 58);
    assert_eq!(db.count("SELECT count(*) FROM etl_ledger").await, 60);
    assert_eq!(db.orphan_tokens().await, 0);
}

#[tokio::test]
async fn a_connection_killed_between_copy_and_commit_leaves_nothing_and_the_retry_writes_once() {
    let db = Db::new().await;
    let sink = db.sink();
    let batch = db.batch(0..50, |i| login(i, i % 7));
    let mut progress = WriteProgress::new(&batch);
    let mut lock = db.lock_target().await;
    let (first, ()) = tokio::join!(sink.write_resumable(&mut progress), async {
        // Ledger and vault rows are copied; the output's COPY waits.
        let pid = db.blocked("user_logins", 1).await[0];
        let staged = db
            .count(&format!(
                "SELECT count(*) FROM pg_locks WHERE pid = {pid} AND locktype = 'transactionid'"
            ))
            .await;
        // Its own transaction id, and those of the savepoints its COPYs ran under.
        assert!(staged >= 1, "the write holds an open transaction");
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&db.pool)
            .await
            .unwrap();
    });
    sqlx::raw_sql("COMMIT").execute(&mut lock).await.unwrap();
    let err = first.expect_err("the killed connection fails the attempt");
    assert!(
        err.is_retriable(),
        "a dropped connection is transient: {err}"
    );
    assert_eq!(progress.pending_len(), 50);
    for t in ["etl_ledger", "etl_vault", "user_logins", "etl_rejects"] {
        assert_eq!(
            db.count(&format!("SELECT count(*) FROM {t}")).await,
            0,
            "{t}"
        );
    }
    assert_eq!(
        sink.known_tokens(),
        0,
        "nothing from a rolled-back batch is known"
    );

    sink.write_resumable(&mut progress).await.unwrap();
    let r = &progress.report;
    assert_eq!(
        (r.rows, r.duplicates, r.vault_rows, r.acked.len()),
        (50, 0, 14, 50)
    );
    assert_eq!(db.count("SELECT count(*) FROM user_logins").await, 50);
    assert_eq!(db.count("SELECT count(*) FROM etl_ledger").await, 50);
    assert_eq!(db.orphan_tokens().await, 0);
    // Written again: the ledger skips it all.
    let again = sink.write(&batch).await.unwrap();
    assert_eq!((again.rows, again.duplicates), (0, 50));
}

#[tokio::test]
async fn forgotten_tokens_are_written_again_after_their_vault_rows_are_deleted() {
    let db = Db::new().await;
    let sink = db.sink();
    sink.write(&db.batch(0..20, |i| login(i, i % 5)))
        .await
        .unwrap();
    assert_eq!(sink.known_tokens(), 10);
    sqlx::query("DELETE FROM etl_vault")
        .execute(&db.pool)
        .await
        .unwrap();
    sink.forget_known_tokens();
    let r = sink
        .write(&db.batch(20..40, |i| login(i, i % 5)))
        .await
        .unwrap();
    assert_eq!(r.vault_rows, 10);
    assert_eq!(db.orphan_tokens().await, 0);
}

#[tokio::test]
async fn stored_ledger_keys_and_vault_tokens_turn_the_copy_into_insert_on_conflict() {
    let db = Db::new().await;
    db.sink()
        .write(&db.batch(0..20, |i| login(i, i % 5)))
        .await
        .unwrap();
    let before: Vec<(Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT token, ciphertext FROM etl_vault ORDER BY token")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(before.len(), 10);
    // Another process (its own cache and gates): half the messages redelivered, half new, and
    // the 5 stored ips and device ids next to 5 new ones of each.
    let other = db.sink();
    let r = other
        .write(&db.batch(10..30, |i| login(i, i % 10)))
        .await
        .unwrap();
    assert_eq!((r.rows, r.duplicates, r.acked.len()), (10, 10, 20));
    assert_eq!(r.vault_rows, 10, "only the new tokens are stored");
    assert_eq!(db.count("SELECT count(*) FROM user_logins").await, 30);
    assert_eq!(db.count("SELECT count(*) FROM etl_ledger").await, 30);
    assert_eq!(db.count("SELECT count(*) FROM etl_vault").await, 20);
    let after: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT token, ciphertext FROM etl_vault WHERE token = ANY($1) ORDER BY token",
    )
    .bind(before.iter().map(|b| b.0.clone()).collect::<Vec<_>>())
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(after, before, "stored vault rows are kept as they were");
    assert_eq!(db.orphan_tokens().await, 0);
}

#[tokio::test]
async fn a_column_whose_type_changed_under_a_running_sink_is_planned_again() {
    let db = Db::new().await;
    let sink = db.sink();
    sink.write(&db.batch(0..10, |i| login(i, i))).await.unwrap();
    // A common migration while the engine runs: integer widened to bigint. The sink's plan
    // still encodes app_version as int4, which a bigint column cannot read in binary.
    exec(
        &db.url,
        "ALTER TABLE user_logins ALTER COLUMN app_version TYPE bigint",
    )
    .await;
    let batch = db.batch(10..20, |i| login(i, i));
    let err = sink
        .write(&batch)
        .await
        .expect_err("the stale plan fails once");
    assert!(err.is_retriable(), "{err}");
    assert!(err.to_string().contains("user_logins"), "{err}");
    let r = sink.write(&batch).await.unwrap();
    assert_eq!((r.rows, r.rejects), (10, 0), "no row becomes a reject");
    assert_eq!(
        db.count("SELECT count(*) FROM user_logins WHERE app_version = 2003000")
            .await,
        20
    );
}

#[tokio::test]
async fn writers_of_one_process_sharing_new_tokens_copy_each_once_and_wait_for_each_other() {
    let db = Db::new().await;
    let sink = Arc::new(db.sink());
    // Four writers of one process, different messages, the same 10 new ips and device ids.
    let batches: Vec<Vec<Processed>> = (0..4)
        .map(|w| db.batch(w * 100..w * 100 + 40, |i| login(i, i % 10)))
        .collect();
    let mut lock = db.lock_target().await;
    let writes = batches.iter().map(|b| {
        let sink = sink.clone();
        async move { sink.write(b).await }
    });
    let (results, ()) = tokio::join!(futures::future::join_all(writes), async {
        // The first writer to claim the tokens holds them until its commit; the others wait.
        db.blocked("", 2).await;
        sqlx::raw_sql("COMMIT").execute(&mut lock).await.unwrap();
    });
    let mut vault_rows = 0;
    for r in results {
        let r = r.unwrap();
        assert_eq!(r.rows, 40);
        vault_rows += r.vault_rows;
    }
    assert_eq!(vault_rows, 20, "each token stored by one writer");
    assert_eq!(db.count("SELECT count(*) FROM etl_vault").await, 20);
    assert_eq!(db.count("SELECT count(*) FROM user_logins").await, 160);
    assert_eq!(db.orphan_tokens().await, 0);
    assert_eq!(
        sink.tokens_in_flight(),
        0,
        "every claim ended with its write"
    );
}

#[tokio::test]
async fn generated_decimals_copied_in_binary_read_back_exactly() {
    use etl_engine::sink::copy::{CopyBuf, copy_in};
    use etl_engine::value::{Val, ValType};
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use rust_decimal::Decimal;

    let url = fresh_db().await;
    exec(&url, "CREATE TABLE nums (ord integer, n numeric)").await;
    // Every mantissa a Decimal holds (|m| < 2^96) at every scale it allows, small values
    // weighted up; plus the edges. The count follows PROPTEST_CASES (at least 2,000 here).
    let max = (1i128 << 96) - 1;
    let mantissa = prop_oneof![-10_000i128..10_000, -max..=max];
    let strategy = (mantissa, 0u32..=28)
        .prop_map(|(m, s)| Decimal::try_from_i128_with_scale(m, s).unwrap_or_default());
    let cases: usize = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2_000)
        .max(2_000);
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut values: Vec<Decimal> = [
        "0",
        "-0.00",
        "0.0000000000000000000000000001",
        "-1",
        "9999.9999",
        "10000.0001",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .chain([Decimal::MAX, Decimal::MIN])
    .collect();
    while values.len() < cases {
        values.push(strategy.new_tree(&mut runner).unwrap().current());
    }
    let mut buf = CopyBuf::new();
    for (i, d) in values.iter().enumerate() {
        buf.row(2);
        buf.val(ValType::Integer, &Val::Int(i as i32));
        buf.val(ValType::Numeric, &Val::Numeric(*d));
    }
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let n = copy_in(
        &mut conn,
        "COPY nums (ord, n) FROM STDIN (FORMAT binary)",
        buf,
    )
    .await
    .unwrap();
    assert_eq!(n as usize, values.len());
    let back: Vec<(String,)> = sqlx::query_as("SELECT n::text FROM nums ORDER BY ord")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    for (d, (text,)) in values.iter().zip(back) {
        let got: Decimal = text.parse().unwrap();
        assert_eq!(got, *d, "{d} came back as {text}");
        let digits = text.split_once('.').map_or(0, |(_, f)| f.len());
        assert_eq!(digits, d.scale() as usize, "{d}: display scale of {text}");
    }
}

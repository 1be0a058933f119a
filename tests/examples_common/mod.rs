//! Helpers for the end-to-end tests of the shipped example specs: a spec pointed at a test queue
//! and database, its tables created from `etl-engine ddl` (and compared with the shipped
//! schema/*.sql), and an SQS proxy that stalls deletes, to leave an engine killed between commit
//! and delete.
#![allow(dead_code)]

use super::common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// specs/NAME.yaml pointed at a test queue, endpoint and database (each replaced text must occur
/// exactly once, so a changed example spec fails loudly here rather than silently later).
pub fn example_spec(
    name: &str,
    default_queue: &str,
    dir: &Path,
    endpoint: &str,
    queue: &str,
    db: &str,
) -> PathBuf {
    let mut text = std::fs::read_to_string(root().join(format!("specs/{name}.yaml"))).unwrap();
    let replacements = [
        (format!("queue: {default_queue}"), format!("queue: {queue}")),
        (
            "endpoint_url: http://127.0.0.1:4566".to_string(),
            format!("endpoint_url: {endpoint}"),
        ),
        (
            "url: postgres://postgres:postgres@127.0.0.1:5432/postgres".to_string(),
            format!("url: {db}"),
        ),
        (
            "wait_time_secs: 5".to_string(),
            "wait_time_secs: 1".to_string(),
        ),
    ];
    for (needle, with) in replacements {
        assert_eq!(
            text.matches(&needle).count(),
            1,
            "specs/{name}.yaml should contain `{needle}` once"
        );
        text = text.replace(&needle, &with);
    }
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// Creates the spec's tables in `db` from `etl-engine ddl` output, and returns that output.
pub async fn create_tables_from_ddl(spec: &str, db: &str) -> String {
    let out = run_engine(&["ddl", spec], &[], true);
    let ddl = String::from_utf8(out.stdout).unwrap();
    assert!(ddl.contains("CREATE TABLE IF NOT EXISTS"), "{ddl}");
    exec(db, &ddl).await;
    ddl
}

/// Column names by table in the public schema of `db`, in column order.
pub async fn columns_by_table(db: &str) -> BTreeMap<String, Vec<String>> {
    let pool = sqlx::PgPool::connect(db).await.unwrap();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns \
         WHERE table_schema = 'public' ORDER BY table_name, ordinal_position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (t, c) in rows {
        out.entry(t).or_default().push(c);
    }
    out
}

/// The shipped schema/FILE creates the same tables with the same column names, in the same
/// order, as `etl-engine ddl` of the spec does (both applied to empty databases).
pub async fn assert_schema_file_agrees_with_ddl(schema_file: &str, ddl: &str) {
    let from_ddl = fresh_db_bare().await;
    exec(&from_ddl, ddl).await;
    let from_file = fresh_db_bare().await;
    exec(
        &from_file,
        &std::fs::read_to_string(root().join(schema_file)).unwrap(),
    )
    .await;
    let (a, b) = (
        columns_by_table(&from_ddl).await,
        columns_by_table(&from_file).await,
    );
    assert!(!a.is_empty());
    assert_eq!(
        b, a,
        "{schema_file} and `etl-engine ddl` disagree on tables or column names"
    );
}

/// A TCP proxy to an SQS endpoint that forwards everything except deletes: a connection that
/// carries a `DeleteMessage`/`DeleteMessageBatch` request is held open and never answered. An
/// engine behind it commits its rows and then waits on its deletes forever, so killing it leaves
/// exactly the state of a crash between commit and delete. Returns the proxy's endpoint.
pub async fn stall_deletes_proxy(endpoint: &str) -> String {
    let target = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(upstream) = TcpStream::connect(&target).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut ur, mut uw) = upstream.into_split();
                let up = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    // The tail of the previous chunk, so a name split across reads is seen.
                    let mut tail: Vec<u8> = Vec::new();
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        tail.extend_from_slice(&buf[..n]);
                        if tail.windows(13).any(|w| w == b"DeleteMessage") {
                            // Stall: keep the connection, never forward or answer.
                            std::future::pending::<()>().await;
                        }
                        if uw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        let keep = tail.len().saturating_sub(16);
                        tail.drain(..keep);
                    }
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut ur, &mut cw).await;
                };
                tokio::join!(up, down);
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// Waits until `sql` (a count) reaches at least `want`, up to `secs` seconds; returns the count.
pub async fn wait_for_count(db: &str, sql: &str, want: i64, secs: u64) -> i64 {
    let pool = sqlx::PgPool::connect(db).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut n = count(&pool, sql).await;
    while n < want && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        n = count(&pool, sql).await;
    }
    pool.close().await;
    n
}

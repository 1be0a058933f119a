//! The file source end to end against real Postgres: the example logins as a JSON Lines file go
//! through the same transforms, sink, ledger and rejects as SQS messages; a second run of the same
//! file adds nothing (message ids are file name + line number); a line that is not UTF-8 is a
//! reject that keeps its bytes, one over the line cap a reject that keeps its start; a missing
//! file is a clear error.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// `specs/logins.yaml` with its source block replaced by a file source reading `input`.
fn file_spec(dir: &Path, input: &Path, db: &str) -> PathBuf {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("specs/logins.yaml"))
            .unwrap();
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line.starts_with("source:") {
            out.push_str(&format!(
                "source:\n  type: file\n  path: {}\n",
                input.display()
            ));
            skipping = true;
            continue;
        }
        if skipping && !line.is_empty() && !line.starts_with([' ', '#']) {
            skipping = false;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    let out = out.replace(
        "url: postgres://postgres:postgres@127.0.0.1:5432/postgres",
        &format!("url: {db}"),
    );
    let p = dir.join("logins-file.yaml");
    std::fs::write(&p, out).unwrap();
    p
}

fn summary(dir: &Path, spec: &Path, keyring: &Path, name: &str) -> serde_json::Value {
    let path = dir.join(name);
    run_engine(
        &[
            "run",
            spec.to_str().unwrap(),
            "--summary-json",
            path.to_str().unwrap(),
        ],
        &[
            ("ETL_KEYRING", keyring.to_str().unwrap()),
            // Small chunks, so several readers process the file at once.
            ("ETL_SPEC_TARGET__BATCH_SIZE", "16"),
        ],
        true,
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test]
async fn a_file_goes_through_the_same_pipeline_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    exec(&db, USER_LOGINS_DDL).await;
    let keyring = keygen(dir.path(), "keyring.json");
    let input = dir.path().join("logins.jsonl");
    std::fs::copy(example_logins(), &input).unwrap();
    let (valid, invalid) = classify_examples(&input);
    let text = std::fs::read_to_string(&input).unwrap();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    // One more line that is not UTF-8: a reject, not the end of the run.
    let bad_line_no = text.lines().count() + 1;
    let bad_line: &[u8] = b"{\"user_id\": \"\xff\xfe\"}";
    let mut bytes = text.into_bytes();
    if bytes.last() != Some(&b'\n') {
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(bad_line);
    bytes.push(b'\n');
    // And one over the 1 MiB line cap: a reject keeping only its first 4096 bytes.
    let long_line_no = bad_line_no + 1;
    let mut long_line = b"{\"user_id\": \"".to_vec();
    long_line.resize(3 << 20, b'x');
    long_line.extend_from_slice(b"\"}");
    bytes.extend_from_slice(&long_line);
    bytes.push(b'\n');
    std::fs::write(&input, bytes).unwrap();
    lines += 2;
    let invalid = invalid + 2;
    let spec = file_spec(dir.path(), &input, &db);

    let first = summary(dir.path(), &spec, &keyring, "first.json");
    assert_eq!(
        (first["rows"].as_u64(), first["rejects"].as_u64()),
        (Some(valid as u64), Some(invalid as u64)),
        "{first}"
    );

    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM user_logins").await,
        valid as i64
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM etl_rejects").await,
        invalid as i64
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM etl_ledger").await,
        lines as i64
    );
    // Every ledger id is `logins.jsonl:<line>`, each line once.
    assert_eq!(
        count(&pool, "SELECT count(DISTINCT message_id) FROM etl_ledger WHERE message_id ~ '^logins\\.jsonl:[0-9]+$'").await,
        lines as i64
    );
    // Masked like the SQS path: tokens, not raw IPs.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM user_logins WHERE masked_ip !~ '^[0-9a-f]{64}$'"
        )
        .await,
        0
    );

    // The spec's own setup registers its pipeline for reading bodies.
    run_engine(&["setup", spec.to_str().unwrap()], &[], true);
    // The invalid line's reject holds the raw line, base64-encoded.
    let out = run_engine(
        &[
            "rejects",
            spec.to_str().unwrap(),
            "--message-id",
            &format!("logins.jsonl:{bad_line_no}"),
            "--show-bodies",
            "--reason",
            "test: invalid UTF-8 line",
            "--format",
            "json",
        ],
        &[("ETL_KEYRING", keyring.to_str().unwrap())],
        true,
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        shown[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("not valid UTF-8"),
        "{shown}"
    );
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(shown[0]["body"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw, bad_line);

    // The oversized line's reject says why and holds the line's start only.
    let out = run_engine(
        &[
            "rejects",
            spec.to_str().unwrap(),
            "--message-id",
            &format!("logins.jsonl:{long_line_no}"),
            "--show-bodies",
            "--reason",
            "test: oversized line",
            "--format",
            "json",
        ],
        &[("ETL_KEYRING", keyring.to_str().unwrap())],
        true,
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        shown[0]["reason"],
        format!(
            "decode: the line is {} bytes, over the 1048576-byte limit; the reject keeps its first 4096 bytes",
            long_line.len()
        ),
        "{shown}"
    );
    assert_eq!(
        shown[0]["body"].as_str().map(str::as_bytes),
        Some(&long_line[..4096])
    );

    // The same file again: everything is a duplicate, nothing is added.
    let second = summary(dir.path(), &spec, &keyring, "second.json");
    assert_eq!(
        second["duplicates"].as_u64(),
        Some(lines as u64),
        "{second}"
    );
    assert_eq!(second["rows"].as_u64(), Some(0), "{second}");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM user_logins").await,
        valid as i64
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM etl_rejects").await,
        invalid as i64
    );
    pool.close().await;

    // A missing file is an error naming it, not an empty run.
    let missing = dir.path().join("nope.jsonl");
    let spec = file_spec(dir.path(), &missing, &db);
    let out = run_engine(
        &["run", spec.to_str().unwrap()],
        &[("ETL_KEYRING", keyring.to_str().unwrap())],
        false,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.jsonl"), "{err}");
}

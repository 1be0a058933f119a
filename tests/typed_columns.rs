//! numeric, jsonb, uuid and text[] target columns against real Postgres: `check` accepts them
//! (and refuses a jsonb column fed plain JSON text, with the cast to add), and the file source
//! writes exact decimals, jsonb documents, canonical UUIDs and text arrays, all through a
//! `decode: [base64, gzip]` chain.

mod common;
use base64::Engine;
use common::*;
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;
use std::path::Path;

/// A spec reading `input` into `typed` with the new transforms and casts.
fn spec(dir: &Path, db: &str, input: &Path, payload_cast: bool) -> std::path::PathBuf {
    let cast = if payload_cast {
        "\n    transforms:\n      - type: parse_json\n      - type: cast\n        to: jsonb"
    } else {
        ""
    };
    let text = format!(
        "name: typed\nsource:\n  type: file\n  path: {}\ndecode: [base64, gzip]\ntarget:\n  url: {db}\n  table: typed\n\
         columns:\n\
         \x20 id:\n    path: $.id\n    required: true\n    transforms:\n      - type: cast\n        to: uuid\n\
         \x20 amount:\n    path: $.amount_cents\n    transforms:\n      - type: scale\n        decimals: 2\n\
         \x20 fee:\n    path: $.amount_cents\n    transforms:\n      - type: multiply\n        by: 0.015\n\
         \x20 phone:\n    path: $.phone\n    transforms:\n      - type: replace\n        pattern: \"[^0-9+]\"\n        with: \"\"\n\
         \x20 tags:\n    path: $.tags\n    transforms:\n      - type: cast\n        to: text[]\n\
         \x20 payload:\n    path: $.payload{cast}\n",
        input.display()
    );
    let p = dir.join("typed.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A body as the producer sends it: gzip, then base64.
fn packed(v: serde_json::Value) -> String {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(v.to_string().as_bytes()).unwrap();
    base64::engine::general_purpose::STANDARD.encode(e.finish().unwrap())
}

#[tokio::test]
async fn numeric_jsonb_uuid_and_text_array_columns() {
    let db = fresh_db().await;
    exec(
        &db,
        "CREATE TABLE typed(id uuid PRIMARY KEY, amount numeric(12,2), fee numeric, phone text, \
         tags text[], payload jsonb)",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let keyring = keygen(dir.path(), "k.json");
    let kr = keyring.to_str().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines = [
        packed(serde_json::json!({
            "id": "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "amount_cents": 1999,
            "phone": "+1 (555) 0100", "tags": ["a,b", "q\"x", null],
            "payload": "{\"n\": 1, \"k\": [true]}"
        })),
        packed(serde_json::json!({
            "id": "b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12", "amount_cents": "12345678901",
            "tags": [], "payload": "[1, 2]"
        })),
        "not base64!".to_string(),
    ];
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();

    // Without the cast, the jsonb column is refused and the message says what to add.
    let plain = spec(dir.path(), &db, &input, false);
    let out = run_engine(
        &["check", plain.to_str().unwrap()],
        &[("ETL_KEYRING", kr)],
        false,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("column payload is jsonb, but the spec produces json values for it")
            && err.contains("to: jsonb"),
        "{err}"
    );

    let spec = spec(dir.path(), &db, &input, true);
    let spec_s = spec.to_str().unwrap();
    run_engine(&["check", spec_s], &[("ETL_KEYRING", kr)], true);
    run_engine(&["run", spec_s], &[("ETL_KEYRING", kr)], true);

    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    type Row = (
        String,
        String,
        String,
        Option<String>,
        String,
        String,
        String,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id::text, amount::text, fee::text, phone, array_to_json(tags)::text, \
         payload::text, jsonb_typeof(payload) FROM typed ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into(),
                "19.99".into(),
                "29.985".into(),
                Some("+15550100".into()),
                r#"["a,b","q\"x",null]"#.into(),
                r#"{"k": [true], "n": 1}"#.into(),
                "object".into(),
            ),
            (
                "b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12".into(),
                "123456789.01".into(),
                "185185183.515".into(),
                None,
                "[]".into(),
                "[1, 2]".into(),
                "array".into(),
            ),
        ]
    );
    let reasons: Vec<(String,)> = sqlx::query_as("SELECT reason FROM etl_rejects")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        reasons,
        vec![("decode[0] base64: not valid base64".to_string(),)]
    );
    pool.close().await;
}

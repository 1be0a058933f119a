//! The SNS pipeline (specs/signups.yaml) end to end against real LocalStack and Postgres: the
//! example envelopes go through `send` → `run --drain`; rows carry the event's fields and the
//! envelope's MessageId, and the SubscriptionConfirmation and malformed messages are rejects; a
//! re-sent signup updates its row in place. The table comes from `etl-engine ddl`.
//! What should happen is computed here from the examples, independently of the engine.

mod common;
mod examples_common;
use common::*;
use examples_common::{assert_schema_file_agrees_with_ddl, create_tables_from_ddl};
use serde_json::Value as J;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// specs/signups.yaml pointed at a test queue and database.
fn signups_spec(dir: &Path, endpoint: &str, queue: &str, db: &str) -> PathBuf {
    let text = std::fs::read_to_string(root().join("specs/signups.yaml")).unwrap();
    let replacements = [
        ("queue: signup-queue", format!("queue: {queue}")),
        (
            "endpoint_url: http://127.0.0.1:4566",
            format!("endpoint_url: {endpoint}"),
        ),
        (
            "url: postgres://postgres:postgres@127.0.0.1:5432/postgres",
            format!("url: {db}"),
        ),
        ("wait_time_secs: 5", "wait_time_secs: 1".to_string()),
    ];
    let mut text = text;
    for (needle, with) in replacements {
        assert_eq!(
            text.matches(needle).count(),
            1,
            "specs/signups.yaml should contain `{needle}` once"
        );
        text = text.replace(needle, &with);
    }
    let p = dir.join("signups.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A signup the table should hold.
struct Expected {
    email: String,
    plan: String,
    signed_up_at: i64,
    sns_message_id: String,
}

/// Valid signups by user id, and the number of envelopes that must be rejected.
fn expected() -> (HashMap<String, Expected>, usize) {
    let text = std::fs::read_to_string(root().join("examples/signups.jsonl")).unwrap();
    let mut valid = HashMap::new();
    let mut invalid = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let env: J = serde_json::from_str(line).unwrap();
        let parsed = (|| {
            if env["Type"] != "Notification" {
                return None;
            }
            let event: J = serde_json::from_str(env["Message"].as_str()?).ok()?;
            Some((
                event["user_id"].as_str()?.to_string(),
                Expected {
                    email: event["email"].as_str()?.trim().to_lowercase(),
                    plan: event["plan"].as_str()?.to_string(),
                    signed_up_at: event["signed_up_at"].as_i64()?,
                    sns_message_id: env["MessageId"].as_str()?.to_string(),
                },
            ))
        })();
        match parsed {
            Some((id, e)) => {
                valid.insert(id, e);
            }
            None => invalid += 1,
        }
    }
    (valid, invalid)
}

#[tokio::test]
async fn signups_end_to_end() {
    let (want, invalid) = expected();
    assert!(
        want.len() >= 8 && invalid >= 3,
        "the examples must exercise rows and rejects"
    );

    let endpoint = sqs_endpoint();
    let (queue, url) = fresh_queue(&endpoint).await;
    let db = fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let keyring = keygen(dir.path(), "k.json");
    let kr = keyring.to_str().unwrap();
    let spec = signups_spec(dir.path(), &endpoint, &queue, &db);
    let spec_s = spec.to_str().unwrap();
    // The spec's setup registers its encrypted columns (vault keys, recovery).
    run_engine(&["setup", spec_s], &[], true);
    let ddl = create_tables_from_ddl(spec_s, &db).await;
    assert_schema_file_agrees_with_ddl("schema/signups.sql", &ddl).await;

    // The spec's own tests pass, and `check` accepts the uuid column.
    run_engine(&["test", spec_s], &[], true);
    run_engine(&["check", spec_s], &[("ETL_KEYRING", kr)], true);
    // `preview` decodes through the same chain: the envelopes' events, the confirmation a reject.
    let examples = root().join("examples/signups.jsonl");
    let out = run_engine(
        &["preview", spec_s, "--input", examples.to_str().unwrap()],
        &[],
        true,
    );
    let previewed: Vec<J> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(previewed.len(), want.len() + invalid);
    let rows: Vec<&J> = previewed.iter().filter_map(|p| p.get("row")).collect();
    assert_eq!(rows.len(), want.len());
    assert!(rows.iter().all(|r| {
        want.get(r["user_id"].as_str().unwrap())
            .is_some_and(|e| r["sns_message_id"] == e.sns_message_id.as_str())
    }));
    assert!(previewed.iter().any(|p| {
        p["reject"]
            .as_str()
            .is_some_and(|r| r.contains("SubscriptionConfirmation"))
    }));

    run_engine(
        &[
            "send",
            spec_s,
            root().join("examples/signups.jsonl").to_str().unwrap(),
        ],
        &[],
        true,
    );
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
    assert_eq!(summary["rows"], want.len() as u64, "{summary}");
    assert_eq!(summary["rejects"], invalid as u64, "{summary}");
    assert_eq!(
        queue_depth(&endpoint, &url).await,
        (0, 0),
        "queue must be empty after --drain"
    );

    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    type Row = (
        String,
        String,
        Option<String>,
        Option<String>,
        chrono::DateTime<chrono::Utc>,
        String,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT user_id::text, email, ip, plan, signed_up_at, sns_message_id FROM signups",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), want.len());
    let mut email_token = None;
    for (user_id, email, ip, plan, signed_up_at, sns_message_id) in &rows {
        let e = want
            .get(user_id)
            .unwrap_or_else(|| panic!("{user_id} should not be a row"));
        assert_eq!(sns_message_id, &e.sns_message_id, "{user_id}");
        assert_eq!(plan.as_deref(), Some(e.plan.as_str()), "{user_id}");
        assert_eq!(signed_up_at.timestamp(), e.signed_up_at, "{user_id}");
        assert!(email.len() == 64 && !email.contains('@'), "{user_id}");
        assert!(
            ip.as_ref()
                .is_some_and(|t| t.len() == 64 && !t.contains('.'))
        );
        email_token.get_or_insert((email.clone(), e.email.clone()));
    }
    // Two signups share an IP: one token, one vault row.
    let ip_tokens = count(&pool, "SELECT count(DISTINCT ip) FROM signups").await;
    let vault_ips = count(
        &pool,
        "SELECT count(*) FROM etl_vault v JOIN etl_vault_columns c ON c.id = v.column_id WHERE c.column_name = 'ip'",
    )
    .await;
    assert_eq!(ip_tokens, vault_ips);
    assert!(ip_tokens < rows.len() as i64, "the examples share an IP");

    // An encrypted email comes back normalized, through the audited recovery.
    let (token, email) = email_token.unwrap();
    let out = run_engine(
        &[
            "vault-decrypt",
            spec_s,
            "--column",
            "email",
            "--token",
            &token,
            "--reason",
            "test",
            "--format",
            "json",
        ],
        &[("ETL_KEYRING", kr)],
        true,
    );
    let got: J = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got[0]["value"], email.as_str());

    // Rejects, each with its reason; none quotes the envelope.
    let reasons: Vec<(String,)> = sqlx::query_as("SELECT reason FROM etl_rejects")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(reasons.len(), invalid);
    let has = |s: &str| reasons.iter().any(|(r,)| r.contains(s));
    for reason in [
        "decode[0] sns: an SNS SubscriptionConfirmation message, not a Notification",
        "decode[0] sns: malformed SNS envelope: `Message` is missing or not a string",
        "column user_id: required value is missing or null",
    ] {
        assert!(has(reason), "no reject with `{reason}`: {reasons:?}");
    }
    assert!(
        !reasons
            .iter()
            .any(|(r,)| r.contains("arn:aws") || r.contains("example.com")),
        "{reasons:?}"
    );

    // A producer re-sends a signup with another plan (a new SNS MessageId, a new SQS message):
    // the row is updated in place, not refused and not doubled.
    let text = std::fs::read_to_string(root().join("examples/signups.jsonl")).unwrap();
    let mut env: J = text
        .lines()
        .map(|l| serde_json::from_str::<J>(l).unwrap())
        .find(|e| {
            e["Type"] == "Notification"
                && e["Message"].as_str().is_some_and(|m| m.contains("user_id"))
        })
        .unwrap();
    let mut event: J = serde_json::from_str(env["Message"].as_str().unwrap()).unwrap();
    let user_id = event["user_id"].as_str().unwrap().to_lowercase();
    event["plan"] = "enterprise".into();
    env["Message"] = event.to_string().into();
    env["MessageId"] = "0d6c2d1e-7b1a-4f43-9d55-5f1c3b9a0001".into();
    let file = dir.path().join("resend.jsonl");
    std::fs::write(&file, env.to_string() + "\n").unwrap();
    run_engine(&["send", spec_s, file.to_str().unwrap()], &[], true);
    run_engine(&["run", spec_s, "--drain"], &[("ETL_KEYRING", kr)], true);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM signups").await,
        want.len() as i64,
        "updated in place"
    );
    let (plan, mid): (String, String) =
        sqlx::query_as("SELECT plan, sns_message_id FROM signups WHERE user_id::text = $1")
            .bind(&user_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (plan.as_str(), mid.as_str()),
        ("enterprise", "0d6c2d1e-7b1a-4f43-9d55-5f1c3b9a0001")
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM etl_rejects").await,
        invalid as i64,
        "no new reject"
    );
    pool.close().await;
}

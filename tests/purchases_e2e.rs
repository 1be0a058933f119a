//! The second pipeline (specs/purchases.yaml) end to end against real LocalStack and Postgres,
//! with no code written for it: the example purchases go through `send` → `run --drain`, and the
//! rows are checked against what the examples say, computed here independently of the engine.

mod common;
use common::*;
use serde_json::Value as J;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// specs/purchases.yaml pointed at a test queue and database.
fn purchases_spec(dir: &Path, endpoint: &str, queue: &str, db: &str) -> PathBuf {
    let text = std::fs::read_to_string(root().join("specs/purchases.yaml")).unwrap();
    for needle in [
        "queue: purchase-queue",
        "endpoint_url: http://127.0.0.1:4566",
        "url: postgres://postgres:postgres@127.0.0.1:5432/postgres",
        "wait_time_secs: 5",
    ] {
        assert_eq!(
            text.matches(needle).count(),
            1,
            "specs/purchases.yaml should contain `{needle}` once"
        );
    }
    let text = text
        .replace("queue: purchase-queue", &format!("queue: {queue}"))
        .replace(
            "endpoint_url: http://127.0.0.1:4566",
            &format!("endpoint_url: {endpoint}"),
        )
        .replace(
            "url: postgres://postgres:postgres@127.0.0.1:5432/postgres",
            &format!("url: {db}"),
        )
        .replace("wait_time_secs: 5", "wait_time_secs: 1");
    let p = dir.join("purchases.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

/// An example order the table should hold, read straight from the JSON.
struct Expected {
    customer_id: String,
    email: String,
    street: String,
    last4: Option<String>,
    amount_cents: i64,
    skus: Vec<String>,
    gift_skus: Vec<String>,
    is_gift: bool,
    placed_at: chrono::DateTime<chrono::FixedOffset>,
}

/// The valid orders by id, and how many messages must be rejected. Validity is decided here from
/// the rules the spec states, not by running the engine.
fn expected() -> (HashMap<String, Expected>, usize) {
    let text = std::fs::read_to_string(root().join("examples/purchases.jsonl")).unwrap();
    let mut valid = HashMap::new();
    let mut invalid = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parsed = serde_json::from_str::<J>(line).ok().and_then(|v| {
            let order_id = v["order_id"].as_str()?.to_string();
            let amount = match &v["payment"]["amount_cents"] {
                J::Number(n) => n.as_i64()?,
                J::String(s) => s.parse().ok()?,
                _ => return None,
            };
            let placed_at = chrono::DateTime::parse_from_rfc3339(v["placed_at"].as_str()?).ok()?;
            let is_gift = match &v["gift"] {
                J::Null => false,
                J::Bool(b) => *b,
                _ => return None,
            };
            // char(2): Postgres refuses anything longer.
            if v["customer"]["address"]["country"]
                .as_str()?
                .chars()
                .count()
                != 2
            {
                return None;
            }
            let items = v["items"].as_array()?;
            let sku = |i: &J| i["sku"].as_str().map(str::to_string);
            Some((
                order_id,
                Expected {
                    customer_id: v["customer"]["id"].as_str()?.to_string(),
                    email: v["customer"]["email"].as_str()?.to_string(),
                    street: v["customer"]["address"]["street"].as_str()?.to_string(),
                    last4: v["payment"]["card"]["last4"].as_str().map(str::to_string),
                    amount_cents: amount,
                    skus: items.iter().filter_map(sku).collect(),
                    gift_skus: items
                        .iter()
                        .filter(|i| i["gift"] == J::Bool(true))
                        .filter_map(sku)
                        .collect(),
                    is_gift,
                    placed_at,
                },
            ))
        });
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
async fn purchases_end_to_end() {
    let (want, invalid) = expected();
    assert!(
        want.len() >= 40 && invalid >= 8,
        "the examples must exercise rows and rejects"
    );
    assert!(want.values().any(|e| e.skus.len() == 1) && want.values().any(|e| e.skus.len() > 1));
    assert!(
        want.values().any(|e| e.last4.is_none()) && want.values().any(|e| !e.gift_skus.is_empty())
    );

    let endpoint = sqs_endpoint();
    let (queue, url) = fresh_queue(&endpoint).await;
    let db = fresh_db().await;
    exec(
        &db,
        &std::fs::read_to_string(root().join("schema/purchases.sql")).unwrap(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let keyring = keygen(dir.path(), "k.json");
    let kr = keyring.to_str().unwrap();
    let spec = purchases_spec(dir.path(), &endpoint, &queue, &db);
    let spec_s = spec.to_str().unwrap();
    // The spec's setup registers its encrypted columns (vault keys, recovery).
    run_engine(&["setup", spec_s], &[], true);

    run_engine(
        &[
            "send",
            spec_s,
            root().join("examples/purchases.jsonl").to_str().unwrap(),
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
        Option<String>,
        i64,
        Option<String>,
        Option<String>,
        bool,
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT order_id, customer_id, email_token, masked_street, masked_card_last4, amount_cents, skus, gift_skus, \
         is_gift, placed_at, received_at, country FROM purchases",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), want.len());

    let mut email_tokens: HashMap<String, HashSet<String>> = HashMap::new();
    let mut street_token = None;
    for (
        order_id,
        customer_id,
        email_token,
        street,
        last4,
        amount,
        skus,
        gift_skus,
        is_gift,
        placed_at,
        received_at,
        country,
    ) in &rows
    {
        let e = want
            .get(order_id)
            .unwrap_or_else(|| panic!("{order_id} should have been rejected"));
        assert_eq!(customer_id, &e.customer_id);
        assert_eq!(*amount, e.amount_cents, "{order_id}");
        assert_eq!(*is_gift, e.is_gift, "{order_id}");
        assert_eq!(
            *placed_at,
            e.placed_at.with_timezone(&chrono::Utc),
            "{order_id}"
        );
        assert!(
            received_at.is_some(),
            "{order_id}: SentTimestamp becomes received_at"
        );
        assert!(
            country
                .as_deref()
                .is_some_and(|c| c.len() == 2 && c == c.to_uppercase()),
            "{order_id}"
        );
        // Arrays stay arrays whatever their length; the filter keeps only gift items.
        let skus: Vec<String> = serde_json::from_str(skus.as_deref().unwrap()).unwrap();
        assert_eq!(skus, e.skus, "{order_id}");
        match gift_skus {
            None => assert!(e.gift_skus.is_empty(), "{order_id}"),
            Some(g) => assert_eq!(
                serde_json::from_str::<Vec<String>>(g).unwrap(),
                e.gift_skus,
                "{order_id}"
            ),
        }
        // Masked columns are tokens, never the value or its lowercase form.
        let token = email_token.clone().unwrap();
        assert!(
            token.len() == 64 && token != e.email && token != e.email.trim().to_lowercase(),
            "{order_id}"
        );
        email_tokens
            .entry(e.email.trim().to_lowercase())
            .or_default()
            .insert(token);
        assert_ne!(street.as_deref(), Some(e.street.as_str()));
        assert_eq!(
            last4.is_some(),
            e.last4.is_some(),
            "{order_id}: PayPal orders have no card"
        );
        if e.last4.is_some() {
            assert_ne!(last4, &e.last4, "{order_id}: card digits must be masked");
        }
        street_token.get_or_insert((street.clone().unwrap(), e.street.clone()));
    }
    // However the email was written (case, spaces), one customer has one token, and different
    // customers have different ones.
    assert!(
        email_tokens.values().all(|t| t.len() == 1),
        "{email_tokens:?}"
    );
    let distinct: HashSet<&String> = email_tokens.values().flatten().collect();
    assert_eq!(distinct.len(), email_tokens.len());

    // Hash-only email: nothing in the vault. Street and card: in the vault, recoverable.
    let vaulted: Vec<(String, i64)> =
        sqlx::query_as("SELECT c.column_name, count(*) FROM etl_vault v JOIN etl_vault_columns c ON c.id = v.column_id GROUP BY 1 ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    let vaulted: HashMap<String, i64> = vaulted.into_iter().collect();
    assert_eq!(vaulted.get("email_token"), None, "{vaulted:?}");
    let distinct_streets: HashSet<&String> = want.values().map(|e| &e.street).collect();
    assert_eq!(
        vaulted.get("masked_street"),
        Some(&(distinct_streets.len() as i64)),
        "one vault row per distinct value"
    );
    assert!(
        vaulted.get("masked_card_last4").is_some_and(|n| *n > 0),
        "{vaulted:?}"
    );
    let (token, street) = street_token.unwrap();
    let out = run_engine(
        &[
            "vault-decrypt",
            spec_s,
            "--column",
            "masked_street",
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
    assert_eq!(got[0]["value"], street.as_str());
    let out = run_engine(
        &[
            "vault-decrypt",
            spec_s,
            "--column",
            "email_token",
            "--token",
            &distinct.iter().next().unwrap().to_string(),
            "--reason",
            "test",
        ],
        &[("ETL_KEYRING", kr)],
        false,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("column email_token is not encrypted"),
        "a hash-only column cannot be recovered: {err}"
    );

    // Rejects: each with its reason, including the row Postgres refused (country too long).
    let reasons: Vec<(String,)> = sqlx::query_as("SELECT reason FROM etl_rejects")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(reasons.len(), invalid);
    let has = |s: &str| reasons.iter().any(|(r,)| r.contains(s));
    for reason in [
        "decode: body is not valid JSON",
        "required value is missing or null",
        "column placed_at: cast: text is not a timestamp",
        "column amount_cents: cast: text is not an integer",
        "column is_gift: cast: text is not a boolean",
        "postgres refused the row: value too long for type character(2)",
    ] {
        assert!(has(reason), "no reject with `{reason}`: {reasons:?}");
    }
    pool.close().await;
}

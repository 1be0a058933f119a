//! The orders pipeline (specs/orders.yaml) end to end against real LocalStack and Postgres, in
//! tables created from `etl-engine ddl`: one order row and one row per item, a re-sent order
//! updates in place, an older version changes nothing, the email comes back through
//! `vault-decrypt --where`, and an engine killed between commit and delete leaves no duplicate.
//! What the tables should hold is computed here from the examples, independently of the engine.

mod common;
mod examples_common;
use common::*;
use examples_common::*;
use serde_json::Value as J;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// One order version as the examples state it; None when the engine must reject it.
#[derive(Clone, Debug)]
struct Version {
    order_id: String,
    email: String,
    zip: String,
    total_cents: i64,
    placed_at: chrono::DateTime<chrono::Utc>,
    /// (sku, qty, price_cents) by line, from 1.
    items: Vec<(String, i64, i64)>,
}

fn parse_version(line: &str) -> Option<Version> {
    let v: J = serde_json::from_str(line).ok()?;
    let items = v["items"]
        .as_array()?
        .iter()
        .map(|i| {
            Some((
                i["sku"].as_str()?.to_string(),
                i["qty"].as_i64()?,
                i["price_cents"].as_i64()?,
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Version {
        order_id: v["order_id"].as_str()?.to_string(),
        email: v["customer"]["email"].as_str()?.trim().to_lowercase(),
        zip: v["customer"]["address"]["zip"].as_str()?.to_string(),
        total_cents: v["total_cents"].as_i64()?,
        placed_at: chrono::DateTime::parse_from_rfc3339(v["placed_at"].as_str()?)
            .ok()?
            .to_utc(),
        items,
    })
}

/// What the tables hold after every version in `lines` is written in any order: per order the
/// newest version; per (order, line) the newest version having that line. Plus the rejects.
struct Want {
    orders: BTreeMap<String, Version>,
    items: BTreeMap<(String, i32), (String, i64, i64)>,
    rejects: usize,
}

fn want(lines: &[String]) -> Want {
    let mut w = Want {
        orders: BTreeMap::new(),
        items: BTreeMap::new(),
        rejects: 0,
    };
    let mut item_at: HashMap<(String, i32), chrono::DateTime<chrono::Utc>> = HashMap::new();
    for l in lines.iter().filter(|l| !l.trim().is_empty()) {
        let Some(v) = parse_version(l) else {
            w.rejects += 1;
            continue;
        };
        for (i, item) in v.items.iter().enumerate() {
            let k = (v.order_id.clone(), i as i32 + 1);
            if item_at.get(&k).is_none_or(|at| *at <= v.placed_at) {
                item_at.insert(k.clone(), v.placed_at);
                w.items.insert(k, item.clone());
            }
        }
        if w.orders
            .get(&v.order_id)
            .is_none_or(|o| o.placed_at <= v.placed_at)
        {
            w.orders.insert(v.order_id.clone(), v);
        }
    }
    w
}

fn example_lines() -> Vec<String> {
    std::fs::read_to_string(root().join("examples/orders.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// orders by id: (email, zip, total, placed_at as epoch seconds).
type Orders = BTreeMap<String, (String, String, String, i64)>;
/// order_items in key order: (order_id, line, sku, qty, price).
type Items = Vec<(String, i32, String, i32, String)>;

/// The tables as they are: orders by id, items by (order, line).
async fn tables(
    db: &str,
) -> (
    BTreeMap<String, (String, String, String, i64)>,
    Vec<(String, i32, String, i32, String)>,
) {
    let pool = sqlx::PgPool::connect(db).await.unwrap();
    let orders: Vec<(
        String,
        String,
        String,
        String,
        chrono::DateTime<chrono::Utc>,
    )> = sqlx::query_as("SELECT order_id, email, zip, total::text, placed_at FROM orders")
        .fetch_all(&pool)
        .await
        .unwrap();
    let n = orders.len();
    let orders: BTreeMap<_, _> = orders
        .into_iter()
        .map(|(id, e, z, t, at)| (id, (e, z, t, at.timestamp())))
        .collect();
    assert_eq!(orders.len(), n, "one row per order_id");
    let items: Vec<(String, i32, String, i32, String)> = sqlx::query_as(
        "SELECT order_id, line, sku, qty, price::text FROM order_items ORDER BY order_id, line",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    (orders, items)
}

/// Dollars as Postgres prints a `numeric` made by `scale: 2` from cents.
fn dollars(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn assert_tables(w: &Want, got: &(Orders, Items)) {
    let (orders, items) = got;
    assert_eq!(
        orders.keys().collect::<Vec<_>>(),
        w.orders.keys().collect::<Vec<_>>()
    );
    for (id, v) in &w.orders {
        let (email, zip, total, at) = &orders[id];
        assert!(
            email.len() == 64 && !email.contains('@'),
            "{id}: email is a token"
        );
        assert_eq!(zip, &v.zip, "{id}");
        assert_eq!(total, &dollars(v.total_cents), "{id}");
        assert_eq!(*at, v.placed_at.timestamp(), "{id}");
    }
    let got_items: BTreeMap<(String, i32), (String, i64, String)> = items
        .iter()
        .map(|(o, l, s, q, p)| ((o.clone(), *l), (s.clone(), *q as i64, p.clone())))
        .collect();
    assert_eq!(got_items.len(), items.len(), "one row per (order_id, line)");
    let want_items: BTreeMap<(String, i32), (String, i64, String)> = w
        .items
        .iter()
        .map(|(k, (s, q, p))| (k.clone(), (s.clone(), *q, dollars(*p))))
        .collect();
    assert_eq!(got_items, want_items);
}

/// Runs `run --drain` and returns its summary.
fn drain(dir: &Path, spec: &str, kr: &str) -> J {
    let summary_path = dir.join("summary.json");
    run_engine(
        &[
            "run",
            spec,
            "--drain",
            "--summary-json",
            summary_path.to_str().unwrap(),
        ],
        &[("ETL_KEYRING", kr)],
        true,
    );
    serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap()
}

#[tokio::test]
async fn orders_end_to_end() {
    let lines = example_lines();
    let w = want(&lines);
    assert!(w.orders.len() >= 5 && w.items.len() >= 8 && w.rejects >= 3);

    let endpoint = sqs_endpoint();
    let (queue, url) = fresh_queue(&endpoint).await;
    let db = fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let keyring = keygen(dir.path(), "k.json");
    let kr = keyring.to_str().unwrap();
    let spec = example_spec("orders", "order-queue", dir.path(), &endpoint, &queue, &db);
    let spec_s = spec.to_str().unwrap();

    // The tables come from the spec; the shipped schema file agrees with them.
    let ddl = create_tables_from_ddl(spec_s, &db).await;
    // The owner registers the spec's encrypted columns for recovery.
    run_engine(&["setup", spec_s], &[], true);
    assert_schema_file_agrees_with_ddl("schema/orders.sql", &ddl).await;
    run_engine(&["test", spec_s], &[], true);
    run_engine(&["check", spec_s], &[("ETL_KEYRING", kr)], true);

    // `check` verifies the upsert keys: without the primary keys it refuses, naming the key.
    let no_keys = fresh_db().await;
    exec(
        &no_keys,
        &ddl.replace(",\n    PRIMARY KEY (\"order_id\", \"line\")", "")
            .replace(",\n    PRIMARY KEY (\"order_id\")", ""),
    )
    .await;
    let out = run_engine(
        &["check", spec_s],
        &[("ETL_KEYRING", kr), ("ETL_SPEC_TARGET__URL", &no_keys)],
        false,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs a primary key or unique index on exactly (order_id)"),
        "{err}"
    );

    run_engine(
        &[
            "send",
            spec_s,
            root().join("examples/orders.jsonl").to_str().unwrap(),
        ],
        &[],
        true,
    );
    let summary = drain(dir.path(), spec_s, kr);
    assert_eq!(summary["rejects"], w.rejects as u64, "{summary}");
    assert_eq!(summary["received"], lines.len() as u64, "{summary}");
    assert_eq!(queue_depth(&endpoint, &url).await, (0, 0));
    assert_tables(&w, &tables(&db).await);
    // The examples hold a retry (same order twice) and an older version: `want` folds them, so
    // the check above covers "updated in place" and "older ignored"; make sure they are there.
    let versions = lines.iter().filter_map(|l| parse_version(l)).count();
    assert!(versions > w.orders.len(), "the examples re-send orders");
    assert_eq!(
        w.orders["ord-2003"].email, "cy@example.net",
        "the older version lost"
    );

    // A second round: a newer version of ord-2001 (other quantities, other email) re-sent twice
    // (a producer retry: two message ids), and an older version of ord-2004.
    let mut v1: J = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v1["order_id"], "ord-2001");
    v1["placed_at"] = "2024-06-01T00:00:00Z".into();
    v1["customer"]["email"] = "ana.new@example.com".into();
    v1["items"][0]["qty"] = 5.into();
    v1["items"][1]["qty"] = 7.into();
    v1["total_cents"] = (5 * 1250 + 7 * 399).into();
    let mut v4: J = serde_json::from_str(&lines[3]).unwrap();
    assert_eq!(v4["order_id"], "ord-2004");
    v4["placed_at"] = "2020-01-01T00:00:00Z".into();
    v4["total_cents"] = 1.into();
    v4["items"][0]["qty"] = 99.into();
    let round2: Vec<String> = [&v1, &v1, &v4].iter().map(|v| v.to_string()).collect();
    let file = dir.path().join("round2.jsonl");
    std::fs::write(&file, round2.join("\n") + "\n").unwrap();
    run_engine(&["send", spec_s, file.to_str().unwrap()], &[], true);
    let summary = drain(dir.path(), spec_s, kr);
    assert_eq!(summary["rejects"], 0, "{summary}");
    // The older ord-2004 leaves its order row and 4 item rows as they were.
    assert!(
        summary["unchanged_rows"].as_u64().unwrap() >= 5,
        "{summary}"
    );
    assert!(
        summary["rows_by_table"]["order_items"].as_u64().unwrap() >= 2,
        "{summary}"
    );
    let all: Vec<String> = lines.iter().chain(&round2).cloned().collect();
    let w2 = want(&all);
    assert_eq!(w2.orders.len(), w.orders.len(), "no new order");
    assert_eq!(w2.orders["ord-2001"].total_cents, 5 * 1250 + 7 * 399);
    assert_eq!(
        w2.orders["ord-2004"].total_cents,
        w.orders["ord-2004"].total_cents
    );
    let got = tables(&db).await;
    assert_tables(&w2, &got);
    assert_eq!(got.0["ord-2001"].2, "90.43", "updated in place");

    // The new email comes back through the audited recovery, selected by order_id.
    for output in [None, Some("orders")] {
        let mut args = vec![
            "vault-decrypt",
            spec_s,
            "--column",
            "email",
            "--where",
            "order_id=ord-2001",
            "--reason",
            "test",
            "--format",
            "json",
        ];
        if let Some(o) = output {
            args.extend(["--output", o]);
        }
        let out = run_engine(&args, &[("ETL_KEYRING", kr)], true);
        let got: J = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got[0]["value"], "ana.new@example.com", "{got}");
    }
    // order_items encrypts nothing: asking it for the email names the problem.
    let out = run_engine(
        &[
            "vault-decrypt",
            spec_s,
            "--column",
            "email",
            "--output",
            "order_items",
            "--where",
            "order_id=ord-2001",
            "--reason",
            "test",
        ],
        &[("ETL_KEYRING", kr)],
        false,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("order_items"));
}

#[tokio::test]
async fn an_engine_killed_between_commit_and_delete_leaves_no_duplicate_orders() {
    let lines: Vec<String> = example_lines();
    let w = want(&lines);
    let endpoint = sqs_endpoint();
    let (queue, url) = fresh_queue(&endpoint).await;
    let db = fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let keyring = keygen(dir.path(), "k.json");
    let kr = keyring.to_str().unwrap();
    let spec = example_spec("orders", "order-queue", dir.path(), &endpoint, &queue, &db);
    let spec_s = spec.to_str().unwrap();
    create_tables_from_ddl(spec_s, &db).await;
    run_engine(&["setup", spec_s], &[], true);
    run_engine(
        &[
            "send",
            spec_s,
            root().join("examples/orders.jsonl").to_str().unwrap(),
        ],
        &[],
        true,
    );

    // The engine reaches SQS through a proxy that never answers deletes: it commits, then waits.
    let proxy = stall_deletes_proxy(&endpoint).await;
    let mut child = engine()
        .args(["run", spec_s])
        .env("ETL_KEYRING", kr)
        .env("ETL_SPEC_SOURCE__ENDPOINT_URL", &proxy)
        .env("ETL_SPEC_SOURCE__VISIBILITY_TIMEOUT_SECS", "3")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ledger = "SELECT count(*) FROM etl_ledger";
    let committed = wait_for_count(&db, ledger, lines.len() as i64, 60).await;
    assert_eq!(committed, lines.len() as i64, "every message committed");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    child.kill().unwrap(); // SIGKILL: no shutdown, no deletes
    child.wait().unwrap();
    let before = tables(&db).await;
    assert_tables(&w, &before);

    // Every message is still on the queue and comes back; a new engine skips them all.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while queue_depth(&endpoint, &url).await.0 < lines.len() as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "messages did not come back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let summary = drain(dir.path(), spec_s, kr);
    assert_eq!(summary["duplicates"], lines.len() as u64, "{summary}");
    assert_eq!(summary["rows"], 0, "{summary}");
    assert_eq!(queue_depth(&endpoint, &url).await, (0, 0));
    let after = tables(&db).await;
    assert_eq!(after, before);
    assert_tables(&w, &after);
}

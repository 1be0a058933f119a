//! `etl-engine check` against real services: a good setup passes; a target table with a missing
//! column or an incompatible type fails with one message naming each problem, and so does `run`,
//! before any message is received.

mod common;
use common::*;

#[tokio::test]
async fn check_passes_and_names_bad_columns() {
    let endpoint = sqs_endpoint();
    let (name, url) = fresh_queue(&endpoint).await;
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    exec(&db, USER_LOGINS_DDL).await;
    let keyring = keygen(dir.path(), "k.json");
    let kr = keyring.to_str().unwrap();
    let spec = logins_spec(dir.path(), &endpoint, &name, &db, "auto");
    let spec_s = spec.to_str().unwrap();
    let out = run_engine(&["check", spec_s], &[("ETL_KEYRING", kr)], true);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("compatible type") && text.contains("json protocol"),
        "{text}"
    );

    // Break the table: a boolean where a date goes, and a dropped column.
    exec(&db, "ALTER TABLE user_logins DROP COLUMN locale; ALTER TABLE user_logins ALTER COLUMN create_date TYPE boolean USING NULL").await;
    let c = sqs_client(&endpoint).await;
    c.send_message()
        .queue_url(&url)
        .message_body(r#"{"user_id":"u1"}"#)
        .send()
        .await
        .unwrap();
    for cmd in ["check", "run"] {
        let out = run_engine(
            &[cmd, spec_s, "--drain"]
                .into_iter()
                .filter(|a| cmd == "run" || *a != "--drain")
                .collect::<Vec<_>>(),
            &[("ETL_KEYRING", kr)],
            false,
        );
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("has no column locale"), "{cmd}: {err}");
        assert!(
            err.contains("column create_date is boolean, but the spec produces date values"),
            "{cmd}: {err}"
        );
    }
    // `run` stopped before receiving: the message is still there.
    assert_eq!(queue_depth(&endpoint, &url).await, (1, 0));
}

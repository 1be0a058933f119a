//! `--drain` on a FIFO queue: while one message of a group is in flight, SQS hides the rest of
//! that group, so an empty receive does not mean an empty queue. A drain with slow flushes
//! (flush interval above the long poll) must still take every message and exit 0, and FIFO
//! metadata (`attributes.MessageGroupId`, `attributes.SequenceNumber`) must reach columns.

mod common;

use common::*;

const GROUPS: usize = 5;
const MESSAGES: usize = 200;

/// Creates a FIFO queue and sends `MESSAGES` logins spread over `GROUPS` message groups.
async fn loaded_fifo_queue(endpoint: &str) -> (String, String) {
    use aws_sdk_sqs::types::{QueueAttributeName as A, SendMessageBatchRequestEntry as E};
    let name = format!("{}.fifo", unique("q").replace('_', "-"));
    let c = sqs_client(endpoint).await;
    let url = c
        .create_queue()
        .queue_name(&name)
        .attributes(A::FifoQueue, "true")
        .send()
        .await
        .expect("create FIFO queue")
        .queue_url
        .expect("queue url");
    for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(10) {
        let entries = chunk
            .iter()
            .map(|i| {
                let body = serde_json::json!({
                    "user_id": format!("fifo-{i:04}"),
                    "device_type": "ios",
                    "ip": format!("10.1.{}.{}", i / 250, i % 250),
                    "device_id": format!("d-{i}"),
                    "locale": "DE",
                    "app_version": "3.1.0",
                });
                E::builder()
                    .id(i.to_string())
                    .message_body(body.to_string())
                    .message_group_id(format!("group-{}", i % GROUPS))
                    .message_deduplication_id(format!("dedup-{i}"))
                    .build()
                    .expect("entry")
            })
            .collect::<Vec<_>>();
        let out = c
            .send_message_batch()
            .queue_url(&url)
            .set_entries(Some(entries))
            .send()
            .await
            .expect("send batch");
        assert!(out.failed.is_empty(), "{:?}", out.failed);
    }
    (name, url)
}

#[tokio::test]
async fn drain_on_a_fifo_queue_with_slow_flushes_takes_every_message() {
    let endpoint = sqs_endpoint();
    let (name, url) = loaded_fifo_queue(&endpoint).await;
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    exec(
        &db,
        &format!(
            "{USER_LOGINS_DDL}; ALTER TABLE user_logins ADD COLUMN message_group text, ADD COLUMN sequence_number text"
        ),
    )
    .await;
    let keyring = keygen(dir.path(), "k.json");
    let spec = logins_spec(dir.path(), &endpoint, &name, &db, "json");
    // FIFO metadata as columns, through the spec alone.
    let text = std::fs::read_to_string(&spec).unwrap().replace(
        "columns:\n",
        "columns:\n  message_group: {meta: attributes.MessageGroupId}\n  sequence_number: {meta: attributes.SequenceNumber}\n",
    );
    std::fs::write(&spec, text).unwrap();
    let out = run_engine(
        &["run", spec.to_str().unwrap(), "--drain"],
        &[
            ("ETL_KEYRING", keyring.to_str().unwrap()),
            // Flushes slower than the long poll: the case where pollers used to stop early.
            ("ETL_SPEC_TARGET__FLUSH_INTERVAL_MS", "2500"),
            ("ETL_SPEC_SOURCE__WAIT_TIME_SECS", "1"),
        ],
        true,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("left in the queue"), "{stdout}");

    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    assert_eq!(
        count(&pool, "SELECT count(*) FROM user_logins").await,
        MESSAGES as i64,
        "every message of every group: {stdout}"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(DISTINCT message_group) FROM user_logins"
        )
        .await,
        GROUPS as i64
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM user_logins WHERE sequence_number IS NULL"
        )
        .await,
        0
    );
    assert_eq!(queue_depth(&endpoint, &url).await, (0, 0));
}

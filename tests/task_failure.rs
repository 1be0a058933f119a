//! A task of the run that panics must stop the run with an error, delete nothing that did not
//! commit, and hand the messages it held back to the queue; a failure must also stop a run
//! with a large in-flight byte budget promptly.
//!
//! The queue is a small in-memory [`QueueClient`] (so a fault can be injected exactly where it
//! matters); the database is the real test PostgreSQL.

mod common;

use common::*;
use etl_engine::crypto::{Keyring, VaultCipher};
use etl_engine::pipeline::{self, PipelineError, RunOptions};
use etl_engine::process::Processor;
use etl_engine::sink::Sink;
use etl_engine::source::{
    BatchEntry, BatchFailure, QueueClient, ReceiveRequest, ReceivedMessage, Source, SqsError,
};
use etl_engine::stats::Stats;
use etl_engine::transform::Tokenizer;
use futures::future::BoxFuture;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// An in-memory queue: receive hands out visible messages and hides them; releasing
/// (visibility 0) makes them visible again; deleting panics when `panic_on_delete` is set.
#[derive(Default)]
struct MemQueue {
    /// message id → body, for every message not deleted.
    messages: Mutex<HashMap<String, String>>,
    /// Ids currently visible.
    visible: Mutex<BTreeSet<String>>,
    panic_on_delete: bool,
    deleted: AtomicU64,
    released: AtomicU64,
}

impl MemQueue {
    fn with(bodies: &[String], panic_on_delete: bool) -> Arc<Self> {
        let q = MemQueue {
            panic_on_delete,
            ..Default::default()
        };
        for (i, b) in bodies.iter().enumerate() {
            let id = format!("mem-{i:04}");
            q.messages.lock().unwrap().insert(id.clone(), b.clone());
            q.visible.lock().unwrap().insert(id);
        }
        Arc::new(q)
    }
    fn visible(&self) -> usize {
        self.visible.lock().unwrap().len()
    }
}

impl QueueClient for MemQueue {
    fn protocol_name(&self) -> &'static str {
        "memory"
    }
    fn receive(
        &self,
        req: ReceiveRequest,
    ) -> BoxFuture<'_, Result<Vec<ReceivedMessage>, SqsError>> {
        Box::pin(async move {
            let mut visible = self.visible.lock().unwrap();
            let messages = self.messages.lock().unwrap();
            let ids: Vec<String> = visible
                .iter()
                .take(req.max_messages as usize)
                .cloned()
                .collect();
            let now = chrono::Utc::now().timestamp_millis().to_string();
            Ok(ids
                .into_iter()
                .map(|id| {
                    visible.remove(&id);
                    ReceivedMessage {
                        message_id: id.clone(),
                        // The receipt is the id: enough to find the message again.
                        receipt_handle: id.clone(),
                        body: messages.get(&id).cloned().unwrap_or_default(),
                        attributes: HashMap::from([
                            ("SentTimestamp".to_string(), now.clone()),
                            ("ApproximateReceiveCount".to_string(), "1".to_string()),
                        ]),
                        message_attributes: HashMap::new(),
                    }
                })
                .collect())
        })
    }
    fn delete_batch(
        &self,
        entries: Vec<BatchEntry>,
    ) -> BoxFuture<'_, Result<Vec<BatchFailure>, SqsError>> {
        Box::pin(async move {
            if self.panic_on_delete {
                panic!("injected fault: delete_batch");
            }
            let mut messages = self.messages.lock().unwrap();
            for e in &entries {
                if messages.remove(&e.value).is_some() {
                    self.deleted.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok(Vec::new())
        })
    }
    fn change_visibility_batch(
        &self,
        entries: Vec<BatchEntry>,
        visibility_timeout_secs: i32,
    ) -> BoxFuture<'_, Result<Vec<BatchFailure>, SqsError>> {
        Box::pin(async move {
            if visibility_timeout_secs == 0 {
                let messages = self.messages.lock().unwrap();
                let mut visible = self.visible.lock().unwrap();
                for e in &entries {
                    if messages.contains_key(&e.value) && visible.insert(e.value.clone()) {
                        self.released.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            Ok(Vec::new())
        })
    }
    fn send_batch(
        &self,
        _entries: Vec<BatchEntry>,
    ) -> BoxFuture<'_, Result<Vec<BatchFailure>, SqsError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn queue_attributes(
        &self,
        _names: Vec<String>,
    ) -> BoxFuture<'_, Result<HashMap<String, String>, SqsError>> {
        Box::pin(async { Ok(HashMap::new()) })
    }
}

/// A database with the users' table, a keyring and a logins spec pointing at a queue that the
/// in-memory client stands in for.
struct Setup {
    _dir: tempfile::TempDir,
    spec: etl_engine::spec::Spec,
    ring: Keyring,
    pool: sqlx::PgPool,
}

impl Setup {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = fresh_db().await;
        exec(&db, USER_LOGINS_DDL).await;
        let keyring = keygen(dir.path(), "keyring.json");
        let path = logins_spec(dir.path(), "http://127.0.0.1:9", "mem-queue", &db, "json");
        let spec = etl_engine::spec::load_spec(&path).unwrap();
        let ring = Keyring::from_file(&keyring).unwrap();
        let pool = sqlx::PgPool::connect(&db).await.unwrap();
        etl_engine::sink::schema::setup(&pool, &spec).await.unwrap();
        Setup {
            _dir: dir,
            spec,
            ring,
            pool,
        }
    }

    /// Runs the pipeline against `queue` with `--drain`, bounded by a timeout.
    async fn run(
        &self,
        queue: Arc<MemQueue>,
        stats: Arc<Stats>,
    ) -> Result<etl_engine::stats::Summary, PipelineError> {
        let tok = Tokenizer::new(self.ring.active_hash_key().unwrap()).unwrap();
        let processor = Processor::new(&self.spec, Some(tok), Some(10)).unwrap();
        let cipher = Arc::new(VaultCipher::new(&self.ring).unwrap());
        let sink = Arc::new(Sink::new(self.pool.clone(), &self.spec, cipher));
        let run = pipeline::run(
            &self.spec,
            processor,
            sink,
            Source::Sqs {
                config: match &self.spec.source {
                    etl_engine::spec::SourceConfig::Sqs(c) => c.clone(),
                    other => panic!("an SQS spec, not {other:?}"),
                },
                client: queue as Arc<dyn QueueClient>,
            },
            RunOptions { drain: true },
            stats,
            CancellationToken::new(),
        );
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("a failed run stops promptly instead of hanging")
    }
}

fn bodies(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            serde_json::json!({
                "user_id": format!("u-{i:04}"),
                "device_type": "android",
                "ip": format!("10.0.{}.{}", i / 250, i % 250),
                "device_id": format!("d-{i}"),
                "locale": "RU",
                "app_version": "2.3.0",
            })
            .to_string()
        })
        .collect()
}

#[tokio::test]
async fn a_panicking_acker_fails_the_run_deletes_nothing_and_hands_every_message_back() {
    let s = Setup::new().await;
    let queue = MemQueue::with(&bodies(40), true);
    let stats = Arc::new(Stats::default());
    let result = s.run(queue.clone(), stats.clone()).await;

    match result {
        Err(PipelineError::TaskFailed { task, message }) => {
            assert_eq!(task, "acker");
            assert!(message.contains("injected fault"), "{message}");
        }
        other => panic!("expected the acker's failure, got {other:?}"),
    }
    // Nothing deleted: the only delete call panicked.
    assert_eq!(queue.deleted.load(Ordering::SeqCst), 0);
    assert_eq!(stats.deleted.load(Ordering::SeqCst), 0);
    // Every message this process held is visible again at once, not after its timeout.
    assert_eq!(queue.visible(), 40, "all messages handed back");
    // What committed stays committed, exactly once: the ledger skips it on redelivery.
    let ledger = count(&s.pool, "SELECT count(*) FROM etl_ledger").await;
    let rows = count(&s.pool, "SELECT count(*) FROM user_logins").await;
    assert_eq!(ledger, rows, "rows and ledger entries commit together");
    assert!(rows > 0, "the batch before the failure committed");

    // A second run with a healthy queue client finishes the job without duplicates.
    let healthy = MemQueue::with(&bodies(40), false);
    let stats = Arc::new(Stats::default());
    let summary = s.run(healthy.clone(), stats).await.expect("healthy run");
    assert_eq!(summary.deleted, 40);
    assert_eq!(
        summary.duplicates, rows as u64,
        "committed messages are skipped"
    );
    assert_eq!(count(&s.pool, "SELECT count(*) FROM user_logins").await, 40);
}

#[tokio::test]
async fn large_bodies_through_the_smallest_byte_budget_all_arrive() {
    let s = Setup::new().await;
    // 60 messages with 200 KiB of padding each: 12 MB of bodies against the smallest budget
    // (1 MiB, two messages' charge): receiving waits for writes and nothing deadlocks. (Peak
    // memory with the default budget is measured by `scripts/bench.sh --large-bodies`.)
    let pad = "x".repeat(200 * 1024);
    let bodies: Vec<String> = bodies(60)
        .into_iter()
        .map(|b| {
            let mut v: serde_json::Value = serde_json::from_str(&b).unwrap();
            v["padding"] = serde_json::Value::String(pad.clone());
            v.to_string()
        })
        .collect();
    let mut spec = s.spec.clone();
    if let etl_engine::spec::SourceConfig::Sqs(cfg) = &mut spec.source {
        cfg.max_in_flight_bytes = 1 << 20;
    }
    let s = Setup { spec, ..s };
    let queue = MemQueue::with(&bodies, false);
    let summary = s
        .run(queue.clone(), Arc::new(Stats::default()))
        .await
        .expect("run");
    assert_eq!(summary.deleted, 60);
    assert_eq!(count(&s.pool, "SELECT count(*) FROM user_logins").await, 60);
}

//! Where messages come from: the queue-client abstraction shared by both SQS wire
//! protocols, the received-message type every later stage reads, the file source, and the
//! JSON Lines reader it shares with `preview` and `send`.
//!
//! The pipeline talks to a queue only through [`QueueClient`], so the JSON protocol
//! (aws-sdk-sqs), the query protocol (old LocalStack) and in-memory fakes in unit tests
//! are interchangeable. Errors are classified here, where they occur, so retry logic
//! upstream never has to parse messages.

mod built;
pub mod file;
pub mod jsonl;
pub mod sqs;
pub mod sqs_json;
pub mod sqs_query;

pub use built::Source;

use futures::future::BoxFuture;
use std::collections::HashMap;
use std::fmt;

/// One message as received from a source, before decoding.
///
/// `body` may carry PII, so `Debug` prints only its length.
#[derive(Clone)]
pub struct ReceivedMessage {
    /// The source's message id (SQS MessageId, or `file:line` for the file source).
    pub message_id: String,
    /// The handle needed to delete the message or change its visibility (empty for files).
    pub receipt_handle: String,
    /// The raw body, exactly as sent.
    pub body: String,
    /// System attributes, e.g. `SentTimestamp`, `ApproximateReceiveCount`.
    pub attributes: HashMap<String, String>,
    /// String-valued message attributes set by the sender.
    pub message_attributes: HashMap<String, String>,
}

impl fmt::Debug for ReceivedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivedMessage")
            .field("message_id", &self.message_id)
            .field("body_len", &self.body.len())
            .field("attributes", &self.attributes)
            .field(
                "message_attributes",
                &self.message_attributes.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Parameters of one receive call.
#[derive(Debug, Clone, Copy)]
pub struct ReceiveRequest {
    /// 1..=10.
    pub max_messages: i32,
    /// Long-poll wait, 0..=20 seconds.
    pub wait_time_secs: i32,
    /// Visibility timeout applied to the received messages.
    pub visibility_timeout_secs: i32,
}

/// One entry of a batch call: the caller's id for the entry and the message's receipt handle
/// (for delete / change-visibility) or body (for send). `Debug` hides the value: a body may
/// carry PII.
#[derive(Clone)]
pub struct BatchEntry {
    pub id: String,
    pub value: String,
}

impl fmt::Debug for BatchEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchEntry")
            .field("id", &self.id)
            .field("value_len", &self.value.len())
            .finish()
    }
}

/// An entry that failed inside an otherwise successful batch call.
#[derive(Debug, Clone)]
pub struct BatchFailure {
    pub id: String,
    pub code: String,
    pub message: String,
    /// True when the failure was the caller's fault (SQS `SenderFault`); such entries are not retried.
    pub sender_fault: bool,
}

/// How an error should be handled by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Worth retrying with backoff: connection errors, timeouts, throttling, 5xx.
    Transient,
    /// Retrying will not help: access denied, queue does not exist, bad request.
    Permanent,
    /// The endpoint does not speak the protocol we used (e.g. an old LocalStack answering
    /// the JSON protocol with "Missing Action in request for query-protocol service").
    ProtocolMismatch,
}

/// An error from a queue call, classified where it occurred.
#[derive(Debug, thiserror::Error)]
#[error("{operation} failed: {message}")]
pub struct SqsError {
    pub kind: ErrorKind,
    /// The SQS operation, e.g. `ReceiveMessage`.
    pub operation: &'static str,
    /// Human-readable cause; never contains message bodies.
    pub message: String,
}

impl SqsError {
    pub fn new(kind: ErrorKind, operation: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            operation,
            message: message.into(),
        }
    }
    /// Whether retrying the same call later may succeed.
    pub fn is_retriable(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

/// Renders an error with its causes, since the top-level text of HTTP errors rarely says
/// what actually went wrong (e.g. "connection refused" is three sources down).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// SQS error codes that mean "try again later" whatever the HTTP status says; shared by both
/// protocol clients so retries behave the same over either.
pub const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "KmsThrottled",
    "KMSThrottlingException",
    "RequestTimeout",
];

/// Decides whether an error text from an endpoint means "you spoke the wrong protocol".
///
/// Old LocalStack (< 3.0) answers JSON-protocol requests with HTTP 500 and
/// "Operation detection failed. Missing Action in request for query-protocol service";
/// other endpoints say "unknown operation" or "InvalidAction".
pub fn is_protocol_mismatch_text(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("missing action in request")
        || t.contains("operation detection failed")
        || t.contains("unknownoperation")
        || t.contains("unknown operation")
        || t.contains("invalidaction")
}

/// The queue operations the engine and the example loader need, independent of wire protocol.
///
/// Batch calls take at most 10 entries (an SQS limit); callers chunk.
pub trait QueueClient: Send + Sync {
    /// Which wire protocol this client speaks, for logs.
    fn protocol_name(&self) -> &'static str;

    /// Receives up to `max_messages`, with all system attributes and all message attributes.
    fn receive(&self, req: ReceiveRequest)
    -> BoxFuture<'_, Result<Vec<ReceivedMessage>, SqsError>>;

    /// Deletes messages by receipt handle (`BatchEntry::value`). Returns per-entry failures.
    fn delete_batch(
        &self,
        entries: Vec<BatchEntry>,
    ) -> BoxFuture<'_, Result<Vec<BatchFailure>, SqsError>>;

    /// Sets the visibility timeout of messages by receipt handle. Returns per-entry failures.
    fn change_visibility_batch(
        &self,
        entries: Vec<BatchEntry>,
        visibility_timeout_secs: i32,
    ) -> BoxFuture<'_, Result<Vec<BatchFailure>, SqsError>>;

    /// Sends messages (`BatchEntry::value` is the body). Returns per-entry failures.
    fn send_batch(
        &self,
        entries: Vec<BatchEntry>,
    ) -> BoxFuture<'_, Result<Vec<BatchFailure>, SqsError>>;

    /// Reads queue attributes by name (e.g. `ApproximateNumberOfMessages`, `RedrivePolicy`,
    /// `MessageRetentionPeriod`); `All` is allowed.
    fn queue_attributes(
        &self,
        names: Vec<String>,
    ) -> BoxFuture<'_, Result<HashMap<String, String>, SqsError>>;
}

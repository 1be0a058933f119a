//! The SQS JSON protocol through aws-sdk-sqs: what current AWS, LocalStack ≥ 3 and moto speak.

use super::{
    BatchEntry, BatchFailure, ErrorKind, QueueClient, ReceiveRequest, ReceivedMessage, SqsError,
    TRANSIENT_CODES, error_chain, is_protocol_mismatch_text,
};
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use std::collections::HashMap;

/// Classifies an SDK error. The protocol-mismatch answer of old endpoints is an HTTP 500 whose
/// body the SDK cannot parse, so the raw body is checked as well as the error chain.
pub fn classify<E, R>(operation: &'static str, err: SdkError<E, R>) -> SqsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HasRawBody,
{
    let text = DisplayErrorContext(&err).to_string();
    let raw = err
        .raw_response()
        .map(|r| r.raw_body_text())
        .unwrap_or_default();
    if is_protocol_mismatch_text(&text) || is_protocol_mismatch_text(&raw) {
        return SqsError::new(
            ErrorKind::ProtocolMismatch,
            operation,
            "the endpoint does not speak the SQS JSON protocol (it answered: Missing Action in request for query-protocol service)",
        );
    }
    let kind = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ErrorKind::Transient
        }
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or_default();
            let status = se.raw().raw_status();
            if TRANSIENT_CODES.contains(&code) || status >= 500 {
                ErrorKind::Transient
            } else {
                ErrorKind::Permanent
            }
        }
        _ => ErrorKind::Permanent,
    };
    // One readable line: the service's code and message, or the chain of causes. The SDK's
    // full context adds a Debug dump of the raw response (headers, body) to every log line.
    let message = match &err {
        SdkError::ServiceError(se) => format!(
            "{}: {} (HTTP {})",
            se.err().code().unwrap_or("unknown error"),
            se.err().message().unwrap_or("no message"),
            se.raw().raw_status()
        ),
        other => error_chain(other),
    };
    SqsError::new(kind, operation, message)
}

/// Access to the raw HTTP response for classification.
pub trait HasRawBody {
    fn raw_body_text(&self) -> String;
    fn raw_status(&self) -> u16;
}

impl HasRawBody for aws_smithy_runtime_api::http::Response {
    fn raw_body_text(&self) -> String {
        self.body()
            .bytes()
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(2048)]).into_owned())
            .unwrap_or_default()
    }
    fn raw_status(&self) -> u16 {
        self.status().as_u16()
    }
}

/// An SQS queue over the JSON protocol.
#[derive(Clone)]
pub struct JsonClient {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl JsonClient {
    /// Wraps an SDK client for one queue URL.
    pub fn new(client: aws_sdk_sqs::Client, queue_url: String) -> Self {
        Self { client, queue_url }
    }

    /// The queue URL.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Resolves a queue name to its URL.
    pub async fn get_queue_url(
        client: &aws_sdk_sqs::Client,
        name: &str,
    ) -> Result<String, SqsError> {
        let out = client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| classify("GetQueueUrl", e))?;
        out.queue_url.ok_or_else(|| {
            SqsError::new(
                ErrorKind::Permanent,
                "GetQueueUrl",
                "no QueueUrl in the answer",
            )
        })
    }

    /// Creates a queue (idempotent) and returns its URL.
    pub async fn create_queue(
        client: &aws_sdk_sqs::Client,
        name: &str,
        attributes: &[(&str, &str)],
    ) -> Result<String, SqsError> {
        let mut req = client.create_queue().queue_name(name);
        for (k, v) in attributes {
            req = req.attributes(QueueAttributeName::from(*k), *v);
        }
        let out = req.send().await.map_err(|e| classify("CreateQueue", e))?;
        out.queue_url.ok_or_else(|| {
            SqsError::new(
                ErrorKind::Permanent,
                "CreateQueue",
                "no QueueUrl in the answer",
            )
        })
    }
}

fn failures(failed: &[aws_sdk_sqs::types::BatchResultErrorEntry]) -> Vec<BatchFailure> {
    failed
        .iter()
        .map(|f| BatchFailure {
            id: f.id().to_string(),
            code: f.code().to_string(),
            message: f.message().unwrap_or_default().to_string(),
            sender_fault: f.sender_fault(),
        })
        .collect()
}

fn build_err(operation: &'static str, e: impl std::fmt::Display) -> SqsError {
    SqsError::new(
        ErrorKind::Permanent,
        operation,
        format!("invalid request: {e}"),
    )
}

impl QueueClient for JsonClient {
    fn protocol_name(&self) -> &'static str {
        "json"
    }

    fn receive(
        &self,
        req: ReceiveRequest,
    ) -> BoxFuture<'_, Result<Vec<ReceivedMessage>, SqsError>> {
        async move {
            let out = self
                .client
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(req.max_messages)
                .wait_time_seconds(req.wait_time_secs)
                .visibility_timeout(req.visibility_timeout_secs)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .send()
                .await
                .map_err(|e| classify("ReceiveMessage", e))?;
            // A message without an id or receipt handle could never be ledgered or deleted:
            // fail the call loudly, as the query client does, rather than drop it silently.
            out.messages
                .unwrap_or_default()
                .into_iter()
                .map(|m| {
                    let message_id = m.message_id.filter(|s| !s.is_empty()).ok_or_else(|| {
                        SqsError::new(
                            ErrorKind::Permanent,
                            "ReceiveMessage",
                            "a Message has no MessageId",
                        )
                    })?;
                    let receipt_handle =
                        m.receipt_handle.filter(|s| !s.is_empty()).ok_or_else(|| {
                            SqsError::new(
                                ErrorKind::Permanent,
                                "ReceiveMessage",
                                format!("message {message_id} has no ReceiptHandle"),
                            )
                        })?;
                    Ok(ReceivedMessage {
                        message_id,
                        receipt_handle,
                        body: m.body.unwrap_or_default(),
                        attributes: m
                            .attributes
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k.as_str().to_string(), v))
                            .collect(),
                        message_attributes: m
                            .message_attributes
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(|(k, v)| v.string_value.map(|s| (k, s)))
                            .collect(),
                    })
                })
                .collect()
        }
        .boxed()
    }

    fn delete_batch(
        &self,
        entries: Vec<BatchEntry>,
    ) -> BoxFuture<'_, Result<Vec<BatchFailure>, SqsError>> {
        async move {
            let entries = entries
                .into_iter()
                .map(|e| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(e.id)
                        .receipt_handle(e.value)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| build_err("DeleteMessageBatch", e))?;
            let out = self
                .client
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| classify("DeleteMessageBatch", e))?;
            Ok(failures(out.failed()))
        }
        .boxed()
    }

    fn change_visibility_batch(
        &self,
        entries: Vec<BatchEntry>,
        visibility_timeout_secs: i32,
    ) -> BoxFuture<'_, Result<Vec<BatchFailure>, SqsError>> {
        async move {
            let entries = entries
                .into_iter()
                .map(|e| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(e.id)
                        .receipt_handle(e.value)
                        .visibility_timeout(visibility_timeout_secs)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| build_err("ChangeMessageVisibilityBatch", e))?;
            let out = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| classify("ChangeMessageVisibilityBatch", e))?;
            Ok(failures(out.failed()))
        }
        .boxed()
    }

    fn send_batch(
        &self,
        entries: Vec<BatchEntry>,
    ) -> BoxFuture<'_, Result<Vec<BatchFailure>, SqsError>> {
        async move {
            let entries = entries
                .into_iter()
                .map(|e| {
                    SendMessageBatchRequestEntry::builder()
                        .id(e.id)
                        .message_body(e.value)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| build_err("SendMessageBatch", e))?;
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| classify("SendMessageBatch", e))?;
            Ok(failures(out.failed()))
        }
        .boxed()
    }

    fn queue_attributes(
        &self,
        names: Vec<String>,
    ) -> BoxFuture<'_, Result<HashMap<String, String>, SqsError>> {
        async move {
            let mut req = self
                .client
                .get_queue_attributes()
                .queue_url(&self.queue_url);
            for n in names {
                req = req.attribute_names(QueueAttributeName::from(n.as_str()));
            }
            let out = req
                .send()
                .await
                .map_err(|e| classify("GetQueueAttributes", e))?;
            Ok(out
                .attributes
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.as_str().to_string(), v))
                .collect())
        }
        .boxed()
    }
}

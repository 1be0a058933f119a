//! SQS over the *query* protocol: form-encoded POSTs answered with XML.
//!
//! aws-sdk-sqs speaks only the JSON protocol, which old LocalStack (< 3.0) rejects, so
//! this client exists to run the same pipeline against those endpoints. It implements
//! [`QueueClient`] with the same error classification as the JSON client, so callers
//! never care which protocol is in use. Requests are signed with SigV4 exactly as AWS
//! expects, so the client also works against real SQS (which still accepts the query
//! protocol).
//!
//! [`transport`] turns an action into a signed POST and a 2xx answer into text (everything
//! else into a classified error); [`response`] turns that text into the engine's types.

mod response;
mod transport;

use super::{
    BatchEntry, BatchFailure, ErrorKind, QueueClient, ReceiveRequest, ReceivedMessage, SqsError,
};
use aws_credential_types::provider::SharedCredentialsProvider;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;
use transport::{REQUEST_TIMEOUT, Transport, queue_target};

/// A queue client speaking the SQS query protocol (`Action=...&Version=2012-11-05`, XML answers).
///
/// Holds one HTTP client, so connections are pooled across calls.
pub struct QueryClient {
    /// Signs and sends; owns the pooled HTTP client.
    transport: Transport,
    /// As given to [`QueryClient::new`]; sent along with every queue-level call.
    queue_url: String,
    /// Where queue-level calls are POSTed: the endpoint's origin with the queue URL's path.
    /// Endpoints such as LocalStack may put a host into queue URLs that does not resolve from
    /// here, while the configured endpoint is known to be reachable.
    queue_target: reqwest::Url,
}

impl fmt::Debug for QueryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryClient")
            .field("endpoint", &self.transport.endpoint.as_str())
            .field("region", &self.transport.region)
            .field("queue_url", &self.queue_url)
            .finish()
    }
}

impl QueryClient {
    /// Creates a client for one queue.
    ///
    /// `endpoint`: base URL such as `http://127.0.0.1:4566` or `https://sqs.us-east-1.amazonaws.com`.
    /// `queue_url`: the queue's URL as returned by `GetQueueUrl` / `CreateQueue`; only its path is
    /// used to address the queue, the host always comes from `endpoint`.
    pub fn new(
        endpoint: &str,
        region: &str,
        credentials: SharedCredentialsProvider,
        queue_url: String,
    ) -> Result<Self, SqsError> {
        let transport = Transport::new("CreateClient", endpoint, region, credentials)?;
        let queue_target = queue_target(&transport.endpoint, &queue_url)
            .map_err(|m| SqsError::new(ErrorKind::Permanent, "CreateClient", m))?;
        Ok(Self {
            transport,
            queue_url,
            queue_target,
        })
    }

    /// Looks up the URL of a queue by name (`GetQueueUrl`); used before [`QueryClient::new`]
    /// when the spec names a queue rather than a URL.
    pub async fn get_queue_url(
        endpoint: &str,
        region: &str,
        credentials: &SharedCredentialsProvider,
        queue_name: &str,
    ) -> Result<String, SqsError> {
        const OP: &str = "GetQueueUrl";
        // A one-off lookup: a client per call is fine here, and a process-wide one would tie
        // pooled connections to whichever async runtime happened to make the first call.
        let transport = Transport::new(OP, endpoint, region, credentials.clone())?;
        let url = transport.endpoint.clone();
        let text = transport
            .call(OP, &url, vec![("QueueName", queue_name.to_owned())])
            .await?;
        response::queue_url(OP, &text)
    }

    /// Creates a queue (idempotent in SQS when the attributes match) and returns its URL; used
    /// by tests and the example loader. `attributes` are SQS queue attributes such as
    /// `("VisibilityTimeout", "30")`.
    pub async fn create_queue(
        endpoint: &str,
        region: &str,
        credentials: &SharedCredentialsProvider,
        queue_name: &str,
        attributes: &[(&str, &str)],
    ) -> Result<String, SqsError> {
        const OP: &str = "CreateQueue";
        let transport = Transport::new(OP, endpoint, region, credentials.clone())?;
        let url = transport.endpoint.clone();
        let mut params = vec![("QueueName".to_owned(), queue_name.to_owned())];
        for (i, (name, value)) in attributes.iter().enumerate() {
            let n = i + 1;
            params.push((format!("Attribute.{n}.Name"), (*name).to_owned()));
            params.push((format!("Attribute.{n}.Value"), (*value).to_owned()));
        }
        let text = transport.call(OP, &url, params).await?;
        response::queue_url(OP, &text)
    }

    /// The queue URL this client was created for.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Sends one message with string-typed message attributes and returns its `MessageId`.
    ///
    /// [`QueueClient::send_batch`] carries bodies only; this exists for loaders and tests that
    /// need attributes on a message.
    pub async fn send_message(
        &self,
        body: &str,
        message_attributes: &[(&str, &str)],
    ) -> Result<String, SqsError> {
        const OP: &str = "SendMessage";
        let mut params = self.queue_params();
        params.push(("MessageBody".to_owned(), body.to_owned()));
        for (i, (name, value)) in message_attributes.iter().enumerate() {
            let n = i + 1;
            params.push((format!("MessageAttribute.{n}.Name"), (*name).to_owned()));
            params.push((
                format!("MessageAttribute.{n}.Value.StringValue"),
                (*value).to_owned(),
            ));
            params.push((
                format!("MessageAttribute.{n}.Value.DataType"),
                "String".to_owned(),
            ));
        }
        let text = self.transport.call(OP, &self.queue_target, params).await?;
        response::message_id(&text)
    }

    /// Parameters every queue-level call carries. The queue is addressed by path already;
    /// `QueueUrl` is sent as well because some endpoints route by it instead.
    fn queue_params(&self) -> Vec<(String, String)> {
        vec![("QueueUrl".to_owned(), self.queue_url.clone())]
    }

    /// Sends one batch action: each entry becomes `{entry_prefix}.{n}.Id` plus
    /// `{entry_prefix}.{n}.{value_field}`, and `extra` (if any) is repeated on every entry.
    async fn batch_call(
        &self,
        op: &'static str,
        entry_prefix: &str,
        entries: Vec<BatchEntry>,
        value_field: &str,
        extra: Option<(&str, String)>,
    ) -> Result<Vec<BatchFailure>, SqsError> {
        if entries.is_empty() {
            // SQS rejects an empty batch (EmptyBatchRequest); there is nothing to do anyway.
            return Ok(Vec::new());
        }
        let mut params = self.queue_params();
        for (i, entry) in entries.iter().enumerate() {
            let n = i + 1;
            params.push((format!("{entry_prefix}.{n}.Id"), entry.id.clone()));
            params.push((
                format!("{entry_prefix}.{n}.{value_field}"),
                entry.value.clone(),
            ));
            if let Some((name, value)) = &extra {
                params.push((format!("{entry_prefix}.{n}.{name}"), value.clone()));
            }
        }
        let text = self.transport.call(op, &self.queue_target, params).await?;
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        response::batch_failures(op, &text, &ids)
    }
}

impl QueueClient for QueryClient {
    fn protocol_name(&self) -> &'static str {
        "query"
    }

    fn receive(
        &self,
        req: ReceiveRequest,
    ) -> BoxFuture<'_, Result<Vec<ReceivedMessage>, SqsError>> {
        Box::pin(async move {
            const OP: &str = "ReceiveMessage";
            let mut params = self.queue_params();
            params.extend([
                ("AttributeName.1".to_owned(), "All".to_owned()),
                ("MessageAttributeName.1".to_owned(), "All".to_owned()),
                (
                    "MaxNumberOfMessages".to_owned(),
                    req.max_messages.to_string(),
                ),
                ("WaitTimeSeconds".to_owned(), req.wait_time_secs.to_string()),
                (
                    "VisibilityTimeout".to_owned(),
                    req.visibility_timeout_secs.to_string(),
                ),
            ]);
            let wait = Duration::from_secs(u64::try_from(req.wait_time_secs).unwrap_or(0));
            let text = self
                .transport
                .call_with_timeout(OP, &self.queue_target, params, REQUEST_TIMEOUT + wait)
                .await?;
            response::receive(&text)
        })
    }

    fn delete_batch(
        &self,
        entries: Vec<BatchEntry>,
    ) -> BoxFuture<'_, Result<Vec<BatchFailure>, SqsError>> {
        Box::pin(self.batch_call(
            "DeleteMessageBatch",
            "DeleteMessageBatchRequestEntry",
            entries,
            "ReceiptHandle",
            None,
        ))
    }

    fn change_visibility_batch(
        &self,
        entries: Vec<BatchEntry>,
        visibility_timeout_secs: i32,
    ) -> BoxFuture<'_, Result<Vec<BatchFailure>, SqsError>> {
        Box::pin(self.batch_call(
            "ChangeMessageVisibilityBatch",
            "ChangeMessageVisibilityBatchRequestEntry",
            entries,
            "ReceiptHandle",
            Some(("VisibilityTimeout", visibility_timeout_secs.to_string())),
        ))
    }

    fn send_batch(
        &self,
        entries: Vec<BatchEntry>,
    ) -> BoxFuture<'_, Result<Vec<BatchFailure>, SqsError>> {
        Box::pin(self.batch_call(
            "SendMessageBatch",
            "SendMessageBatchRequestEntry",
            entries,
            "MessageBody",
            None,
        ))
    }

    fn queue_attributes(
        &self,
        names: Vec<String>,
    ) -> BoxFuture<'_, Result<HashMap<String, String>, SqsError>> {
        Box::pin(async move {
            const OP: &str = "GetQueueAttributes";
            let mut params = self.queue_params();
            for (i, name) in names.into_iter().enumerate() {
                params.push((format!("AttributeName.{}", i + 1), name));
            }
            let text = self.transport.call(OP, &self.queue_target, params).await?;
            response::queue_attributes(&text)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Static dummy credentials; no test here reaches an endpoint that checks them.
    fn test_credentials() -> SharedCredentialsProvider {
        SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
            "a", "b", None, None, "test",
        ))
    }

    #[test]
    fn new_validates_inputs() {
        let creds = test_credentials();
        let client = QueryClient::new(
            "http://127.0.0.1:1",
            "us-east-1",
            creds.clone(),
            "http://127.0.0.1:1/0/q".into(),
        )
        .unwrap();
        assert_eq!(client.queue_url(), "http://127.0.0.1:1/0/q");
        assert_eq!(client.protocol_name(), "query");
        assert!(
            QueryClient::new(
                "127.0.0.1:1",
                "us-east-1",
                creds.clone(),
                "http://x/0/q".into()
            )
            .is_err()
        );
        assert!(QueryClient::new("http://127.0.0.1:1", "", creds, "http://x/0/q".into()).is_err());
    }

    #[tokio::test]
    async fn connection_refused_is_transient() {
        // Port 1 on loopback is essentially never listening.
        let client = QueryClient::new(
            "http://127.0.0.1:1",
            "us-east-1",
            test_credentials(),
            "http://127.0.0.1:1/0/q".into(),
        )
        .unwrap();
        let err = client
            .queue_attributes(vec!["All".into()])
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Transient, "{err}");
        assert_eq!(err.operation, "GetQueueAttributes");
    }
}

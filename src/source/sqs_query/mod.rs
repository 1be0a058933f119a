//! SQS over the *query* protocol: form-encoded POSTs answered with XML.
//!
//! aws-sdk-sqs speaks only the JSON protocol, which old LocalStack (< 3.0) rejects, so
//! this client exists to run the same pipeline against those endpoints. It implements
//! [`QueueClient`] with the same error classification as the JSON client, so callers
//! never care which protocol is in use. Requests are signed with SigV4 exactly as AWS
//! expects, so the client also works against real SQS (which still accepts the query
//! protocol).

use super::{
    BatchEntry, BatchFailure, ErrorKind, QueueClient, ReceiveRequest, ReceivedMessage, SqsError,
    TRANSIENT_CODES, error_chain, is_protocol_mismatch_text,
};
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use futures::future::BoxFuture;
use quick_xml::events::Event;
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime};

const API_VERSION: &str = "2012-11-05";
const SIGNING_NAME: &str = "sqs";
const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// Budget for one call; a receive adds its long-poll wait on top.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Ten messages of at most 1 MiB each, entity-escaped, stay well below this; anything larger
/// is not an SQS response and must not be buffered without bound.
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// SQS responses are a handful of levels deep; a bound keeps hostile input from growing the
/// parser's stack without limit.
const MAX_XML_DEPTH: usize = 32;

/// Error texts quoted from an endpoint are cut to this many characters, so a misbehaving
/// endpoint cannot flood the logs.
const MAX_QUOTED_ERROR_CHARS: usize = 300;

/// Error codes that mean "this will never work", even if an endpoint reports them with a 5xx.
const PERMANENT_CODES: &[&str] = &[
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "AccessDenied",
    "AccessDeniedException",
    "InvalidParameterValue",
];

/// A queue client speaking the SQS query protocol (`Action=...&Version=2012-11-05`, XML answers).
///
/// Holds one HTTP client, so connections are pooled across calls.
pub struct QueryClient {
    transport: Transport,
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
        let root = transport
            .call(OP, &url, vec![("QueueName", queue_name.to_owned())])
            .await?;
        parse_queue_url(OP, &root)
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
        let root = transport.call(OP, &url, params).await?;
        parse_queue_url(OP, &root)
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
        let root = self.transport.call(OP, &self.queue_target, params).await?;
        let result = expect_result(OP, &root)?;
        result
            .child_text_trimmed("MessageId")
            .map(str::to_owned)
            .ok_or_else(|| malformed(OP, "SendMessageResult has no MessageId"))
    }

    /// Parameters every queue-level call carries. The queue is addressed by path already;
    /// `QueueUrl` is sent as well because some endpoints route by it instead.
    fn queue_params(&self) -> Vec<(String, String)> {
        vec![("QueueUrl".to_owned(), self.queue_url.clone())]
    }

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
        let root = self.transport.call(op, &self.queue_target, params).await?;
        let result = expect_result(op, &root)?;
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        Ok(parse_batch_result(
            result,
            &format!("{op}ResultEntry"),
            &ids,
        ))
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
            let root = self
                .transport
                .call_with_timeout(OP, &self.queue_target, params, REQUEST_TIMEOUT + wait)
                .await?;
            parse_receive(&root)
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
            let root = self.transport.call(OP, &self.queue_target, params).await?;
            let result = expect_result(OP, &root)?;
            Ok(parse_name_value_list(result, "Attribute"))
        })
    }
}

/// HTTP client plus what is needed to sign for one endpoint and region.
struct Transport {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    region: String,
    credentials: SharedCredentialsProvider,
}

impl Transport {
    fn new(
        op: &'static str,
        endpoint: &str,
        region: &str,
        credentials: SharedCredentialsProvider,
    ) -> Result<Self, SqsError> {
        let endpoint = parse_http_url(endpoint).map_err(|m| {
            SqsError::new(ErrorKind::Permanent, op, format!("invalid endpoint: {m}"))
        })?;
        if region.is_empty() {
            return Err(SqsError::new(ErrorKind::Permanent, op, "region is empty"));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // A redirected POST would be replayed as a GET without the signed body.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("etl-engine/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                SqsError::new(
                    ErrorKind::Permanent,
                    op,
                    format!("cannot build HTTP client: {}", error_chain(&e)),
                )
            })?;
        Ok(Self {
            http,
            endpoint,
            region: region.to_owned(),
            credentials,
        })
    }

    async fn call<K: AsRef<str>>(
        &self,
        op: &'static str,
        url: &reqwest::Url,
        params: Vec<(K, String)>,
    ) -> Result<XmlNode, SqsError> {
        self.call_with_timeout(op, url, params, REQUEST_TIMEOUT)
            .await
    }

    /// Sends one signed action and returns the parsed XML document of a successful answer.
    async fn call_with_timeout<K: AsRef<str>>(
        &self,
        op: &'static str,
        url: &reqwest::Url,
        params: Vec<(K, String)>,
        timeout: Duration,
    ) -> Result<XmlNode, SqsError> {
        let body = encode_form(op, &params);
        let signed_headers = self.sign(op, url, &body, SystemTime::now()).await?;

        let mut request = self
            .http
            .post(url.clone())
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, FORM_CONTENT_TYPE);
        for (name, value) in &signed_headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let mut response = request
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error(op, url, &e))?;

        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| transport_error(op, url, &e))?
        {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(SqsError::new(
                    ErrorKind::Permanent,
                    op,
                    format!("response from {url} exceeds {MAX_RESPONSE_BYTES} bytes"),
                ));
            }
            bytes.extend_from_slice(&chunk);
        }

        if !status.is_success() {
            return Err(classify_http_error(
                op,
                status.as_u16(),
                &String::from_utf8_lossy(&bytes),
            ));
        }
        let text = String::from_utf8(bytes).map_err(|_| {
            malformed(
                op,
                format!("HTTP {} response from {url} is not UTF-8", status.as_u16()),
            )
        })?;
        parse_success_body(op, &text)
    }

    /// Signs with credentials resolved now, not at construction, because providers rotate them.
    async fn sign(
        &self,
        op: &'static str,
        url: &reqwest::Url,
        body: &str,
        time: SystemTime,
    ) -> Result<Vec<(String, String)>, SqsError> {
        let credentials = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| credentials_error(op, &e))?;
        let identity = credentials.into();
        let signing_params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(SIGNING_NAME)
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| {
                SqsError::new(
                    ErrorKind::Permanent,
                    op,
                    format!("cannot sign request: {e}"),
                )
            })?;
        let signing_params: aws_sigv4::http_request::SigningParams<'_> = signing_params.into();
        let signable = SignableRequest::new(
            "POST",
            url.as_str(),
            [("content-type", FORM_CONTENT_TYPE)].into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| {
            SqsError::new(
                ErrorKind::Permanent,
                op,
                format!("cannot sign request: {e}"),
            )
        })?;
        let (instructions, _signature) = sign(signable, &signing_params)
            .map_err(|e| {
                SqsError::new(
                    ErrorKind::Permanent,
                    op,
                    format!("cannot sign request: {e}"),
                )
            })?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect())
    }
}

/// Builds the form body of one action. `form_urlencoded` percent-encodes everything outside
/// the unreserved set (so `+`, `&`, `=`, quotes, newlines and any UTF-8 survive) and writes
/// spaces as `+`, which is what SQS decodes.
fn encode_form<K: AsRef<str>>(op: &str, params: &[(K, String)]) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("Action", op);
    form.append_pair("Version", API_VERSION);
    for (name, value) in params {
        form.append_pair(name.as_ref(), value);
    }
    form.finish()
}

/// Accepts only absolute http(s) URLs: the signer needs a host, and anything else cannot be
/// an SQS endpoint.
fn parse_http_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text.trim()).map_err(|e| format!("{text:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?}: scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?}: no host"));
    }
    Ok(url)
}

fn queue_target(endpoint: &reqwest::Url, queue_url: &str) -> Result<reqwest::Url, String> {
    let queue = parse_http_url(queue_url).map_err(|m| format!("invalid queue URL: {m}"))?;
    let path = queue.path();
    if path.trim_matches('/').is_empty() {
        return Err(format!(
            "invalid queue URL: {queue_url:?} has no queue path"
        ));
    }
    let mut target = endpoint.clone();
    target.set_path(path);
    target.set_query(None);
    target.set_fragment(None);
    Ok(target)
}

fn transport_error(op: &'static str, url: &reqwest::Url, err: &reqwest::Error) -> SqsError {
    // Only a request that could not even be built is hopeless; refused or reset connections,
    // timeouts and broken bodies are all worth another try.
    let kind = if err.is_builder() {
        ErrorKind::Permanent
    } else {
        ErrorKind::Transient
    };
    let what = if err.is_timeout() {
        "timed out"
    } else {
        "failed"
    };
    SqsError::new(kind, op, format!("POST {url} {what}: {}", error_chain(err)))
}

fn credentials_error(op: &'static str, err: &CredentialsError) -> SqsError {
    let kind = match err {
        CredentialsError::CredentialsNotLoaded(_) | CredentialsError::InvalidConfiguration(_) => {
            ErrorKind::Permanent
        }
        _ => ErrorKind::Transient,
    };
    SqsError::new(
        kind,
        op,
        format!("cannot resolve credentials: {}", error_chain(err)),
    )
}

fn malformed(op: &'static str, message: impl Into<String>) -> SqsError {
    SqsError::new(ErrorKind::Permanent, op, message)
}

/// Cuts endpoint-supplied text to one bounded line for inclusion in an error message.
fn quote(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > MAX_QUOTED_ERROR_CHARS {
        let cut: String = one_line.chars().take(MAX_QUOTED_ERROR_CHARS).collect();
        format!("{cut}...")
    } else {
        one_line
    }
}

/// Classifies a non-2xx answer. Error documents from SQS never echo message bodies, so their
/// code and message are safe to quote.
fn classify_http_error(op: &'static str, status: u16, body: &str) -> SqsError {
    let parsed = parse_xml(body).ok().and_then(|root| {
        let error = root.find_descendant("Error")?;
        Some((
            error
                .child_text_trimmed("Code")
                .unwrap_or_default()
                .to_owned(),
            error
                .child_text_trimmed("Message")
                .unwrap_or_default()
                .to_owned(),
            root.find_descendant("RequestId")
                .map(|r| r.text.trim().to_owned()),
        ))
    });

    let kind = match &parsed {
        _ if is_protocol_mismatch_text(body) => ErrorKind::ProtocolMismatch,
        Some((code, _, _)) if TRANSIENT_CODES.contains(&code.as_str()) => ErrorKind::Transient,
        Some((code, _, _)) if PERMANENT_CODES.contains(&code.as_str()) => ErrorKind::Permanent,
        _ if status == 429 || status >= 500 => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    };

    let message = match parsed {
        Some((code, message, request_id)) => {
            let mut text = format!("HTTP {status}: {}: {}", quote(&code), quote(&message));
            if let Some(id) = request_id.filter(|id| !id.is_empty()) {
                text.push_str(&format!(" (request id {})", quote(&id)));
            }
            text
        }
        None if body.trim().is_empty() => format!("HTTP {status} with an empty body"),
        None => format!("HTTP {status}: {}", quote(body)),
    };
    SqsError::new(kind, op, message)
}

/// Parses a 2xx body. Anything but an XML document here means the endpoint is not answering
/// the query protocol, which callers may want to react to by switching protocols.
fn parse_success_body(op: &'static str, text: &str) -> Result<XmlNode, SqsError> {
    if text.trim().is_empty() {
        return Err(malformed(op, "empty response body"));
    }
    match parse_xml(text) {
        Ok(root) => Ok(root),
        Err(e) => {
            let looks_like_json = text.trim_start().starts_with('{');
            if looks_like_json || is_protocol_mismatch_text(text) {
                Err(SqsError::new(
                    ErrorKind::ProtocolMismatch,
                    op,
                    "endpoint answered with JSON, not query-protocol XML",
                ))
            } else {
                // The parser's message names tags and positions, never content.
                Err(malformed(op, format!("response is not valid XML: {e}")))
            }
        }
    }
}

/// Returns `<{op}Result>` of a `<{op}Response>` document. A missing result element is read as an
/// empty one, as SQS omits it when there is nothing to report.
fn expect_result<'a>(op: &'static str, root: &'a XmlNode) -> Result<&'a XmlNode, SqsError> {
    let expected = format!("{op}Response");
    if root.name != expected {
        return Err(malformed(
            op,
            format!("expected <{expected}>, got <{}>", quote(&root.name)),
        ));
    }
    static EMPTY: XmlNode = XmlNode {
        name: String::new(),
        text: String::new(),
        children: Vec::new(),
    };
    Ok(root.child(&format!("{op}Result")).unwrap_or(&EMPTY))
}

fn parse_queue_url(op: &'static str, root: &XmlNode) -> Result<String, SqsError> {
    expect_result(op, root)?
        .child_text_trimmed("QueueUrl")
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| malformed(op, format!("{op}Result has no QueueUrl")))
}

fn parse_receive(root: &XmlNode) -> Result<Vec<ReceivedMessage>, SqsError> {
    const OP: &str = "ReceiveMessage";
    let result = expect_result(OP, root)?;
    let mut messages = Vec::new();
    for message in result.children_named("Message") {
        let message_id = message
            .child_text_trimmed("MessageId")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| malformed(OP, "a Message has no MessageId"))?
            .to_owned();
        // Without a receipt handle the message could never be deleted; better to fail loudly.
        let receipt_handle = message
            .child_text_trimmed("ReceiptHandle")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| malformed(OP, format!("message {message_id} has no ReceiptHandle")))?
            .to_owned();
        // The body is user data: taken exactly as decoded, never trimmed.
        let body = message
            .child("Body")
            .map(|b| b.text.clone())
            .unwrap_or_default();
        let attributes = parse_name_value_list(message, "Attribute");
        let message_attributes = message
            .children_named("MessageAttribute")
            .filter_map(|attr| {
                let name = attr.child_text_trimmed("Name")?;
                // Binary attributes have no StringValue; the pipeline only reads string ones.
                let value = attr.child("Value")?.child("StringValue")?;
                Some((name.to_owned(), value.text.clone()))
            })
            .collect();
        messages.push(ReceivedMessage {
            message_id,
            receipt_handle,
            body,
            attributes,
            message_attributes,
        });
    }
    Ok(messages)
}

/// Reads `<{element}><Name>..</Name><Value>..</Value></{element}>` lists (queue and system
/// attributes; all machine-generated, so trimmed).
fn parse_name_value_list(parent: &XmlNode, element: &str) -> HashMap<String, String> {
    parent
        .children_named(element)
        .filter_map(|attr| {
            let name = attr.child_text_trimmed("Name")?;
            let value = attr.child_text_trimmed("Value").unwrap_or_default();
            Some((name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// Collects the failures of a batch call. An entry the endpoint reported neither as success nor
/// as failure is returned as a retriable failure, so it is never silently taken as done.
fn parse_batch_result(
    result: &XmlNode,
    success_element: &str,
    sent_ids: &[&str],
) -> Vec<BatchFailure> {
    let mut failures: Vec<BatchFailure> = result
        .children_named("BatchResultErrorEntry")
        .map(|entry| BatchFailure {
            id: entry
                .child_text_trimmed("Id")
                .unwrap_or_default()
                .to_owned(),
            code: entry
                .child_text_trimmed("Code")
                .unwrap_or_default()
                .to_owned(),
            message: entry
                .child_text_trimmed("Message")
                .unwrap_or_default()
                .to_owned(),
            sender_fault: entry
                .child_text_trimmed("SenderFault")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        })
        .collect();
    let succeeded: Vec<&str> = result
        .children_named(success_element)
        .filter_map(|entry| entry.child_text_trimmed("Id"))
        .collect();
    for id in sent_ids {
        if !succeeded.contains(id) && !failures.iter().any(|f| f.id == *id) {
            failures.push(BatchFailure {
                id: (*id).to_owned(),
                code: "MissingBatchResult".to_owned(),
                message: "the endpoint reported neither success nor failure for this entry"
                    .to_owned(),
                sender_fault: false,
            });
        }
    }
    failures
}

/// An element with its decoded text and child elements; SQS responses are small, so a tree is
/// simpler and safer to navigate than a streaming state machine.
#[derive(Debug, Default)]
struct XmlNode {
    /// Local name, without any namespace prefix.
    name: String,
    /// Concatenated character data directly inside this element, entities resolved.
    text: String,
    children: Vec<XmlNode>,
}

impl XmlNode {
    fn child(&self, name: &str) -> Option<&XmlNode> {
        self.children.iter().find(|c| c.name == name)
    }

    fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a XmlNode> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Text of a child holding an identifier, code or number, where surrounding whitespace
    /// (e.g. from pretty-printed documents) carries no meaning.
    fn child_text_trimmed(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }

    fn find_descendant(&self, name: &str) -> Option<&XmlNode> {
        self.children.iter().find_map(|c| {
            if c.name == name {
                Some(c)
            } else {
                c.find_descendant(name)
            }
        })
    }
}

/// Parses a whole document and returns its root element.
fn parse_xml(text: &str) -> Result<XmlNode, String> {
    let mut reader = quick_xml::Reader::from_str(text);
    // The default configuration keeps all whitespace (bodies must survive byte for byte) and
    // checks that end tags match.
    let mut stack: Vec<XmlNode> = vec![XmlNode::default()];
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("at byte {}: {e}", reader.error_position()))?;
        match event {
            Event::Start(start) => {
                if stack.len() > MAX_XML_DEPTH {
                    return Err(format!("elements nested deeper than {MAX_XML_DEPTH}"));
                }
                stack.push(XmlNode {
                    name: local_name(&start),
                    ..XmlNode::default()
                });
            }
            Event::Empty(start) => {
                let node = XmlNode {
                    name: local_name(&start),
                    ..XmlNode::default()
                };
                top(&mut stack)?.children.push(node);
            }
            Event::End(_) => {
                let node = stack.pop().ok_or("unbalanced end tag")?;
                top(&mut stack)?.children.push(node);
            }
            Event::Text(t) => top(&mut stack)?.text.push_str(&t.xml10_content()),
            Event::CData(c) => top(&mut stack)?.text.push_str(&c.xml10_content()),
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().map_err(|e| e.to_string())? {
                    Some(ch) => ch.to_string(),
                    None => quick_xml::escape::resolve_xml_entity(&r)
                        .ok_or_else(|| format!("unknown entity &{};", quote(&r)))?
                        .to_owned(),
                };
                top(&mut stack)?.text.push_str(&resolved);
            }
            Event::Eof => break,
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if stack.len() != 1 {
        return Err("document ended inside an element".to_owned());
    }
    let document = stack.pop().ok_or("no document")?;
    document
        .children
        .into_iter()
        .next()
        .ok_or_else(|| "no root element".to_owned())
}

fn top(stack: &mut [XmlNode]) -> Result<&mut XmlNode, String> {
    // The document node is never popped while events arrive, so this only fails on
    // an end tag at the top level, which the reader already rejects.
    stack
        .last_mut()
        .ok_or_else(|| "end tag without start tag".to_owned())
}

fn local_name(start: &quick_xml::events::BytesStart<'_>) -> String {
    start.local_name().into_inner().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented ReceiveMessage sample (pretty-printed as in the API reference), extended
    /// with a message attribute, an entity-escaped body and a second message.
    const RECEIVE_SAMPLE: &str = r#"<ReceiveMessageResponse>
  <ReceiveMessageResult>
    <Message>
      <MessageId>5fea7756-0ea4-451a-a703-a558b933e274</MessageId>
      <ReceiptHandle>
        MbZj6wDWli+JvwwJaBV+3dcjk2YW2vA3+STFFljTM8tJJg6HRG6PYSasuWXPJB+Cw
      </ReceiptHandle>
      <MD5OfBody>fafb00f5732ab283681e124bf8747ed1</MD5OfBody>
      <Body>This is a test message</Body>
      <Attribute>
        <Name>SenderId</Name>
        <Value>195004372649</Value>
      </Attribute>
      <Attribute>
        <Name>SentTimestamp</Name>
        <Value>1238099229000</Value>
      </Attribute>
      <Attribute>
        <Name>ApproximateReceiveCount</Name>
        <Value>5</Value>
      </Attribute>
      <Attribute>
        <Name>ApproximateFirstReceiveTimestamp</Name>
        <Value>1250700979248</Value>
      </Attribute>
      <MessageAttribute>
        <Name>tenant</Name>
        <Value>
          <StringValue> acme &amp; co </StringValue>
          <DataType>String</DataType>
        </Value>
      </MessageAttribute>
      <MessageAttribute>
        <Name>blob</Name>
        <Value>
          <BinaryValue>AAEC</BinaryValue>
          <DataType>Binary</DataType>
        </Value>
      </MessageAttribute>
    </Message>
    <Message><MessageId>m2</MessageId><ReceiptHandle>rh2</ReceiptHandle><MD5OfBody>x</MD5OfBody><Body> {&quot;a&quot;:&quot;b&amp;&lt;&gt;'&quot;}&#xD;
line2	&#233;&#x1F600; </Body></Message>
  </ReceiveMessageResult>
  <ResponseMetadata>
    <RequestId>b6633655-283d-45b4-aee4-4e84e0ae6afa</RequestId>
  </ResponseMetadata>
</ReceiveMessageResponse>"#;

    #[test]
    fn parses_receive_with_attributes_and_escaped_body() {
        let root = parse_xml(RECEIVE_SAMPLE).unwrap();
        let messages = parse_receive(&root).unwrap();
        assert_eq!(messages.len(), 2);

        let first = &messages[0];
        assert_eq!(first.message_id, "5fea7756-0ea4-451a-a703-a558b933e274");
        assert_eq!(
            first.receipt_handle,
            "MbZj6wDWli+JvwwJaBV+3dcjk2YW2vA3+STFFljTM8tJJg6HRG6PYSasuWXPJB+Cw"
        );
        assert_eq!(first.body, "This is a test message");
        assert_eq!(first.attributes["SentTimestamp"], "1238099229000");
        assert_eq!(first.attributes["ApproximateReceiveCount"], "5");
        assert_eq!(first.attributes.len(), 4);
        // String attribute values are user data and keep their whitespace; binary ones are skipped.
        assert_eq!(first.message_attributes["tenant"], " acme & co ");
        assert!(!first.message_attributes.contains_key("blob"));

        let second = &messages[1];
        assert_eq!(second.body, " {\"a\":\"b&<>'\"}\r\nline2\t\u{e9}\u{1F600} ");
        assert!(second.attributes.is_empty());
        assert!(second.message_attributes.is_empty());
    }

    #[test]
    fn parses_empty_receive_in_both_shapes() {
        let with_empty_result = r#"<?xml version='1.0' encoding='utf-8'?>
<ReceiveMessageResponse xmlns="http://queue.amazonaws.com/doc/2012-11-05/"><ReceiveMessageResult/><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></ReceiveMessageResponse>"#;
        let without_result = "<ReceiveMessageResponse><ResponseMetadata/></ReceiveMessageResponse>";
        for doc in [with_empty_result, without_result] {
            assert!(parse_receive(&parse_xml(doc).unwrap()).unwrap().is_empty());
        }
    }

    #[test]
    fn message_without_receipt_handle_is_an_error() {
        let doc = "<ReceiveMessageResponse><ReceiveMessageResult><Message><MessageId>m</MessageId>\
                   <Body>secret</Body></Message></ReceiveMessageResult></ReceiveMessageResponse>";
        let err = parse_receive(&parse_xml(doc).unwrap()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Permanent);
        assert!(!err.message.contains("secret"));
    }

    #[test]
    fn wrong_response_element_is_rejected() {
        let root =
            parse_xml("<SendMessageResponse><SendMessageResult/></SendMessageResponse>").unwrap();
        assert_eq!(parse_receive(&root).unwrap_err().kind, ErrorKind::Permanent);
    }

    #[test]
    fn parses_batch_results_with_failures() {
        let doc = r#"<DeleteMessageBatchResponse>
    <DeleteMessageBatchResult>
        <DeleteMessageBatchResultEntry>
            <Id>msg1</Id>
        </DeleteMessageBatchResultEntry>
        <BatchResultErrorEntry>
            <Id>msg2</Id>
            <SenderFault>true</SenderFault>
            <Code>ReceiptHandleIsInvalid</Code>
            <Message>The input receipt handle &quot;x&quot; is not a valid receipt handle.</Message>
        </BatchResultErrorEntry>
        <BatchResultErrorEntry>
            <Id>msg3</Id>
            <Code>InternalError</Code>
            <Message>try again</Message>
            <SenderFault>false</SenderFault>
        </BatchResultErrorEntry>
    </DeleteMessageBatchResult>
    <ResponseMetadata>
        <RequestId>d6f86b7a-74d1-4439-b43f-196a1e29cd85</RequestId>
    </ResponseMetadata>
</DeleteMessageBatchResponse>"#;
        let root = parse_xml(doc).unwrap();
        let result = expect_result("DeleteMessageBatch", &root).unwrap();
        let failures = parse_batch_result(
            result,
            "DeleteMessageBatchResultEntry",
            &["msg1", "msg2", "msg3", "msg4"],
        );
        assert_eq!(failures.len(), 3);
        assert_eq!(failures[0].id, "msg2");
        assert_eq!(failures[0].code, "ReceiptHandleIsInvalid");
        assert_eq!(
            failures[0].message,
            "The input receipt handle \"x\" is not a valid receipt handle."
        );
        assert!(failures[0].sender_fault);
        assert_eq!(failures[1].id, "msg3");
        assert!(!failures[1].sender_fault);
        // Unaccounted-for entries come back as retriable failures.
        assert_eq!(failures[2].id, "msg4");
        assert_eq!(failures[2].code, "MissingBatchResult");
        assert!(!failures[2].sender_fault);
    }

    #[test]
    fn parses_send_batch_success_and_queue_attributes() {
        let send = "<SendMessageBatchResponse><SendMessageBatchResult><SendMessageBatchResultEntry>\
                    <Id>a</Id><MessageId>m</MessageId><MD5OfMessageBody>0</MD5OfMessageBody>\
                    </SendMessageBatchResultEntry></SendMessageBatchResult></SendMessageBatchResponse>";
        let root = parse_xml(send).unwrap();
        let result = expect_result("SendMessageBatch", &root).unwrap();
        assert!(parse_batch_result(result, "SendMessageBatchResultEntry", &["a"]).is_empty());

        let attrs = "<GetQueueAttributesResponse><GetQueueAttributesResult>\
                     <Attribute><Name>ApproximateNumberOfMessages</Name><Value>0</Value></Attribute>\
                     <Attribute><Name>RedrivePolicy</Name><Value>{&quot;maxReceiveCount&quot;:&quot;5&quot;}</Value></Attribute>\
                     </GetQueueAttributesResult></GetQueueAttributesResponse>";
        let root = parse_xml(attrs).unwrap();
        let map = parse_name_value_list(
            expect_result("GetQueueAttributes", &root).unwrap(),
            "Attribute",
        );
        assert_eq!(map["ApproximateNumberOfMessages"], "0");
        assert_eq!(map["RedrivePolicy"], r#"{"maxReceiveCount":"5"}"#);
    }

    #[test]
    fn parses_queue_url() {
        let doc = "<GetQueueUrlResponse><GetQueueUrlResult><QueueUrl>\n https://sqs.us-east-1.amazonaws.com/123456789012/q \
                   </QueueUrl></GetQueueUrlResult></GetQueueUrlResponse>";
        let url = parse_queue_url("GetQueueUrl", &parse_xml(doc).unwrap()).unwrap();
        assert_eq!(url, "https://sqs.us-east-1.amazonaws.com/123456789012/q");
        let empty = "<GetQueueUrlResponse><GetQueueUrlResult/></GetQueueUrlResponse>";
        assert!(parse_queue_url("GetQueueUrl", &parse_xml(empty).unwrap()).is_err());
    }

    fn error_doc(code: &str, message: &str) -> String {
        format!(
            "<?xml version='1.0' encoding='utf-8'?>\n<ErrorResponse xmlns=\"http://queue.amazonaws.com/doc/2012-11-05/\">\
             <Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message><Detail/></Error>\
             <RequestId>42</RequestId></ErrorResponse>"
        )
    }

    #[test]
    fn classifies_error_responses() {
        let cases = [
            (
                400,
                "AWS.SimpleQueueService.NonExistentQueue",
                ErrorKind::Permanent,
            ),
            (400, "QueueDoesNotExist", ErrorKind::Permanent),
            (403, "AccessDenied", ErrorKind::Permanent),
            (400, "InvalidParameterValue", ErrorKind::Permanent),
            (
                400,
                "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
                ErrorKind::Permanent,
            ),
            (400, "Throttling", ErrorKind::Transient),
            (400, "ThrottlingException", ErrorKind::Transient),
            (403, "RequestThrottled", ErrorKind::Transient),
            (400, "KMSThrottlingException", ErrorKind::Transient),
            (503, "ServiceUnavailable", ErrorKind::Transient),
            (500, "InternalError", ErrorKind::Transient),
            (500, "SomethingNew", ErrorKind::Transient),
            (500, "QueueDoesNotExist", ErrorKind::Permanent),
            (400, "InvalidAction", ErrorKind::ProtocolMismatch),
        ];
        for (status, code, kind) in cases {
            let err =
                classify_http_error("ReceiveMessage", status, &error_doc(code, "details here"));
            assert_eq!(err.kind, kind, "{status} {code}");
            assert_eq!(err.operation, "ReceiveMessage");
            assert!(err.message.contains(code), "{}", err.message);
            assert!(err.message.contains("details here"), "{}", err.message);
            assert!(err.to_string().starts_with("ReceiveMessage failed: "));
        }
    }

    #[test]
    fn classifies_non_xml_error_bodies() {
        // What old LocalStack answers to a JSON-protocol request.
        let mismatch = classify_http_error(
            "ReceiveMessage",
            500,
            "Operation detection failed. Missing Action in request for query-protocol service ServiceModel(sqs).",
        );
        assert_eq!(mismatch.kind, ErrorKind::ProtocolMismatch);
        let json = r#"{"__type":"com.amazonaws.sqs#UnknownOperationException","message":"nope"}"#;
        assert_eq!(
            classify_http_error("ReceiveMessage", 400, json).kind,
            ErrorKind::ProtocolMismatch
        );
        assert_eq!(
            classify_http_error("ReceiveMessage", 502, "<html>bad gateway").kind,
            ErrorKind::Transient
        );
        assert_eq!(
            classify_http_error("ReceiveMessage", 429, "").kind,
            ErrorKind::Transient
        );
        let not_found = classify_http_error("ReceiveMessage", 404, "");
        assert_eq!(not_found.kind, ErrorKind::Permanent);
        assert!(not_found.message.contains("404"));
        let long = classify_http_error("SendMessageBatch", 400, &"x".repeat(10_000));
        assert!(long.message.len() < 400);
    }

    #[test]
    fn success_body_that_is_not_xml() {
        assert_eq!(
            parse_success_body("ReceiveMessage", "{\"Messages\":[]}")
                .unwrap_err()
                .kind,
            ErrorKind::ProtocolMismatch
        );
        assert_eq!(
            parse_success_body("ReceiveMessage", "").unwrap_err().kind,
            ErrorKind::Permanent
        );
        assert_eq!(
            parse_success_body("ReceiveMessage", "<a><b></a>")
                .unwrap_err()
                .kind,
            ErrorKind::Permanent
        );
    }

    #[test]
    fn rejects_malformed_xml() {
        assert!(parse_xml("<a><b></a>").is_err());
        assert!(parse_xml("<a>").is_err());
        assert!(parse_xml("<a>&bogus;</a>").is_err());
        assert!(parse_xml("").is_err());
        let deep = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
        assert!(parse_xml(&deep).is_err());
    }

    #[test]
    fn form_encoding_survives_awkward_values() {
        let body = "{\"k\": \"a+b & c=d\"}\r\n\u{e9}\u{1F600}%20";
        let form = encode_form(
            "SendMessageBatch",
            &[(
                "SendMessageBatchRequestEntry.1.MessageBody",
                body.to_owned(),
            )],
        );
        assert!(form.starts_with(
            "Action=SendMessageBatch&Version=2012-11-05&SendMessageBatchRequestEntry.1.MessageBody="
        ));
        assert!(form.contains("%2B"), "{form}");
        assert!(!form.contains('"') && !form.contains('\n') && !form.contains(' '));
        assert_eq!(form.matches('&').count(), 2, "{form}");
        let decoded: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(
            decoded[2],
            (
                "SendMessageBatchRequestEntry.1.MessageBody".to_owned(),
                body.to_owned()
            )
        );
    }

    #[test]
    fn queue_target_keeps_endpoint_origin_and_queue_path() {
        let endpoint = parse_http_url("http://127.0.0.1:4566").unwrap();
        let target = queue_target(
            &endpoint,
            "http://sqs.us-east-1.localhost.localstack.cloud:4566/000000000000/q",
        )
        .unwrap();
        assert_eq!(target.as_str(), "http://127.0.0.1:4566/000000000000/q");
        let target = queue_target(
            &endpoint,
            "http://localhost:4566/queue/us-east-1/000000000000/q",
        )
        .unwrap();
        assert_eq!(
            target.as_str(),
            "http://127.0.0.1:4566/queue/us-east-1/000000000000/q"
        );
        assert!(queue_target(&endpoint, "http://127.0.0.1:4566/").is_err());
        assert!(queue_target(&endpoint, "not a url").is_err());
        assert!(parse_http_url("ftp://x/").is_err());
    }

    #[test]
    fn new_validates_inputs() {
        let creds = SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
            "a", "b", None, None, "test",
        ));
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
        let creds = SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
            "a", "b", None, None, "test",
        ));
        let client = QueryClient::new(
            "http://127.0.0.1:1",
            "us-east-1",
            creds,
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

    #[tokio::test]
    async fn signs_requests_with_sigv4() {
        // The expected signature was computed independently with botocore's SigV4Auth for the
        // same request, keys (the AWS documentation's example keys) and time.
        let creds = SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test",
        ));
        let transport = Transport::new(
            "Test",
            "https://sqs.us-east-1.amazonaws.com",
            "us-east-1",
            creds,
        )
        .unwrap();
        let url = queue_target(
            &transport.endpoint,
            "https://sqs.us-east-1.amazonaws.com/123456789012/q",
        )
        .unwrap();
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 2015-08-30T12:36:00Z
        let body = "Action=ReceiveMessage&Version=2012-11-05&QueueUrl=x%2By+z";
        let headers: HashMap<String, String> = transport
            .sign("Test", &url, body, time)
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(
            headers["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/sqs/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=893a1f5b4ac84472f6e0204f818755b911ca61b08123742cf67ff20bc9a95c5a"
        );
        assert_eq!(headers["x-amz-date"], "20150830T123600Z");
    }

    #[tokio::test]
    async fn sends_session_token_of_current_credentials() {
        let creds = SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
            "AKIDEXAMPLE",
            "secret",
            Some("token".into()),
            None,
            "test",
        ));
        let transport =
            Transport::new("Test", "http://127.0.0.1:4566", "eu-west-1", creds).unwrap();
        let url = transport.endpoint.clone();
        let headers: HashMap<String, String> = transport
            .sign("Test", &url, "Action=ListQueues", SystemTime::now())
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert!(headers["authorization"].contains("/eu-west-1/sqs/aws4_request"));
        assert_eq!(headers["x-amz-security-token"], "token");
    }
}

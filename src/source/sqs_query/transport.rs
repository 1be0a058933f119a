//! One signed query-protocol call over HTTP: form encoding, SigV4 signing, timeouts, the
//! response size cap, and the classification of everything that can go wrong before a 2xx
//! body is in hand.
//!
//! What a successful body *means* is left to [`super::response`]; this module only hands it
//! over as text, so the HTTP side can be tested without any XML and the other way round.

use super::response::{self, malformed, quote};
use crate::source::{ErrorKind, SqsError, TRANSIENT_CODES, error_chain, is_protocol_mismatch_text};
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use std::time::{Duration, SystemTime};

/// The only API version of the SQS query protocol; endpoints reject requests without it.
const API_VERSION: &str = "2012-11-05";
/// The service name SigV4 scopes signatures to.
const SIGNING_NAME: &str = "sqs";
/// Sent and signed as-is: SQS verifies the signature over this exact header value.
const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// Budget for one call; a receive adds its long-poll wait on top.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Separate from the request budget so an unreachable endpoint fails fast even for a
/// long-poll receive.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Ten messages of at most 1 MiB each, entity-escaped, stay well below this; anything larger
/// is not an SQS response and must not be buffered without bound.
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// Error codes that mean "this will never work", even if an endpoint reports them with a 5xx.
const PERMANENT_CODES: &[&str] = &[
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "AccessDenied",
    "AccessDeniedException",
    "InvalidParameterValue",
];

/// HTTP client plus what is needed to sign for one endpoint and region.
pub(super) struct Transport {
    /// One client per transport, so connections are pooled across calls.
    http: reqwest::Client,
    /// Validated absolute http(s) URL; account-level calls are POSTed here.
    pub(super) endpoint: reqwest::Url,
    /// Signing region, e.g. `us-east-1`.
    pub(super) region: String,
    /// Resolved on every call, because providers rotate credentials.
    credentials: SharedCredentialsProvider,
}

impl Transport {
    /// Validates `endpoint` and `region` and builds the HTTP client; `op` names the operation
    /// in any error.
    pub(super) fn new(
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

    /// [`Transport::call_with_timeout`] with the default budget.
    pub(super) async fn call<K: AsRef<str>>(
        &self,
        op: &'static str,
        url: &reqwest::Url,
        params: Vec<(K, String)>,
    ) -> Result<String, SqsError> {
        self.call_with_timeout(op, url, params, REQUEST_TIMEOUT)
            .await
    }

    /// Sends one signed action and returns the body of a successful (2xx) answer as text.
    /// Any other answer becomes a classified [`SqsError`].
    pub(super) async fn call_with_timeout<K: AsRef<str>>(
        &self,
        op: &'static str,
        url: &reqwest::Url,
        params: Vec<(K, String)>,
        timeout: Duration,
    ) -> Result<String, SqsError> {
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
        // Read chunk by chunk rather than all at once, so the cap holds even when the endpoint
        // sends no Content-Length or lies about it.
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
        String::from_utf8(bytes).map_err(|_| {
            malformed(
                op,
                format!("HTTP {} response from {url} is not UTF-8", status.as_u16()),
            )
        })
    }

    /// Signs with credentials resolved now, not at construction, because providers rotate them.
    pub(super) async fn sign(
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
        let cannot_sign = |e: &dyn std::fmt::Display| {
            SqsError::new(
                ErrorKind::Permanent,
                op,
                format!("cannot sign request: {e}"),
            )
        };
        let signing_params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(SIGNING_NAME)
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| cannot_sign(&e))?;
        let signing_params: aws_sigv4::http_request::SigningParams<'_> = signing_params.into();
        let signable = SignableRequest::new(
            "POST",
            url.as_str(),
            [("content-type", FORM_CONTENT_TYPE)].into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| cannot_sign(&e))?;
        let (instructions, _signature) = sign(signable, &signing_params)
            .map_err(|e| cannot_sign(&e))?
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

/// Where queue-level calls go: the endpoint's origin with the queue URL's path. Endpoints such
/// as LocalStack may put a host into queue URLs that does not resolve from here, while the
/// configured endpoint is known to be reachable.
pub(super) fn queue_target(
    endpoint: &reqwest::Url,
    queue_url: &str,
) -> Result<reqwest::Url, String> {
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

/// Classifies a failure to get any answer at all.
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

/// Missing or misconfigured credentials stay missing; anything else (e.g. a metadata service
/// that did not answer in time) may resolve on the next try.
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

/// Classifies a non-2xx answer. Error documents from SQS never echo message bodies, so their
/// code and message are safe to quote.
fn classify_http_error(op: &'static str, status: u16, body: &str) -> SqsError {
    let parsed = response::error_details(body);

    // The error code decides before the status does: endpoints report throttling with a 400
    // and a missing queue with a 500.
    let kind = match &parsed {
        _ if is_protocol_mismatch_text(body) => ErrorKind::ProtocolMismatch,
        Some(e) if TRANSIENT_CODES.contains(&e.code.as_str()) => ErrorKind::Transient,
        Some(e) if PERMANENT_CODES.contains(&e.code.as_str()) => ErrorKind::Permanent,
        _ if status == 429 || status >= 500 => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    };

    let message = match parsed {
        Some(e) => {
            let mut text = format!("HTTP {status}: {}: {}", quote(&e.code), quote(&e.message));
            if let Some(id) = e.request_id.filter(|id| !id.is_empty()) {
                text.push_str(&format!(" (request id {})", quote(&id)));
            }
            text
        }
        None if body.trim().is_empty() => format!("HTTP {status} with an empty body"),
        None => format!("HTTP {status}: {}", quote(body)),
    };
    SqsError::new(kind, op, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An SQS error document as LocalStack and AWS send it.
    fn error_doc(code: &str, message: &str) -> String {
        format!(
            "<?xml version='1.0' encoding='utf-8'?>\n<ErrorResponse xmlns=\"http://queue.amazonaws.com/doc/2012-11-05/\">\
             <Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message><Detail/></Error>\
             <RequestId>42</RequestId></ErrorResponse>"
        )
    }

    /// Static dummy credentials; nothing here checks signatures.
    fn test_credentials() -> SharedCredentialsProvider {
        SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
            "a", "b", None, None, "test",
        ))
    }

    /// Serves one HTTP exchange on loopback: reads the request, answers with `head` (status
    /// line and headers, without the blank line) followed by `body`. Returns the base URL.
    async fn serve_once(head: String, body: Vec<u8>) -> reqwest::Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url =
            reqwest::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            // Read the whole request first, so the client never sees a reset while sending.
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            // The client may hang up early (that is what the size cap does).
            let _ = socket.write_all(format!("{head}\r\n\r\n").as_bytes()).await;
            let _ = socket.write_all(&body).await;
        });
        url
    }

    /// Makes one call against a [`serve_once`] server answering with `head` and `body`.
    async fn call_server(head: &str, body: Vec<u8>) -> Result<String, SqsError> {
        let url = serve_once(head.to_owned(), body).await;
        let transport =
            Transport::new("Test", url.as_str(), "us-east-1", test_credentials()).unwrap();
        transport
            .call("Test", &url, vec![("QueueUrl", "q".to_owned())])
            .await
    }

    #[tokio::test]
    async fn returns_success_bodies_and_classifies_error_answers() {
        let ok = call_server(
            "HTTP/1.1 200 OK\r\nContent-Length: 6",
            b"<R>\xc3\xa9</R>"[..6].to_vec(),
        )
        .await;
        assert_eq!(ok.unwrap(), "<R>\u{e9}<");

        let body = error_doc("Throttling", "slow down");
        let throttled = call_server(
            &format!("HTTP/1.1 400 Bad Request\r\nContent-Length: {}", body.len()),
            body.into_bytes(),
        )
        .await
        .unwrap_err();
        assert_eq!(throttled.kind, ErrorKind::Transient, "{throttled}");
        assert!(
            throttled.message.contains("slow down (request id 42)"),
            "{throttled}"
        );

        let not_utf8 = call_server("HTTP/1.1 200 OK\r\nContent-Length: 2", vec![0xff, 0xfe])
            .await
            .unwrap_err();
        assert_eq!(not_utf8.kind, ErrorKind::Permanent);
        assert!(not_utf8.message.contains("not UTF-8"), "{not_utf8}");
    }

    #[tokio::test]
    async fn responses_over_the_size_cap_are_refused() {
        // Chunked, so no Content-Length announces the size: the cap must hold while reading.
        let chunk = vec![b'x'; 1024 * 1024];
        let mut body = Vec::new();
        for _ in 0..=MAX_RESPONSE_BYTES / chunk.len() {
            body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            body.extend_from_slice(&chunk);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        let err = call_server("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", body)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Permanent, "{err}");
        assert!(err.message.contains("exceeds"), "{err}");
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
        // A truncated error document is quoted raw and classified by status.
        let truncated = classify_http_error(
            "ReceiveMessage",
            400,
            "<ErrorResponse><Error><Code>Throttling",
        );
        assert_eq!(truncated.kind, ErrorKind::Permanent);
        assert!(truncated.message.contains("<ErrorResponse>"), "{truncated}");
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

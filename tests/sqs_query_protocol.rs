//! The query-protocol client against a real endpoint that speaks only that protocol
//! (LocalStack 2.3.2), and the error aws-sdk-sqs gets from the same endpoint, which the
//! automatic protocol switch depends on.
//!
//! The endpoint comes from `ETL_TEST_LEGACY_SQS_ENDPOINT` (default `http://127.0.0.1:4567`).
//! An unreachable endpoint fails the tests (`scripts/test.sh` starts one), so they never pass
//! without having run.

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use etl_engine::source::sqs_query::QueryClient;
use etl_engine::source::{
    BatchEntry, ErrorKind, QueueClient, ReceiveRequest, ReceivedMessage, is_protocol_mismatch_text,
};
use std::collections::HashMap;
use std::time::Duration;

const REGION: &str = "us-east-1";
const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4567";

/// Returns the endpoint to test against; panics when it is unreachable.
async fn endpoint() -> Option<String> {
    let configured = std::env::var("ETL_TEST_LEGACY_SQS_ENDPOINT")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let endpoint = configured
        .clone()
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
    let url = reqwest::Url::parse(&endpoint).expect("ETL_TEST_LEGACY_SQS_ENDPOINT is not a URL");
    let host = url.host_str().expect("endpoint has no host").to_owned();
    let port = url.port_or_known_default().expect("endpoint has no port");
    let reachable = matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect((host.as_str(), port))
        )
        .await,
        Ok(Ok(_))
    );
    let _ = configured;
    assert!(
        reachable,
        "no legacy SQS endpoint at {endpoint}: start one with scripts/test.sh or set ETL_TEST_LEGACY_SQS_ENDPOINT"
    );
    Some(endpoint)
}

fn credentials() -> SharedCredentialsProvider {
    SharedCredentialsProvider::new(Credentials::new("test", "test", None, None, "static"))
}

fn queue_name() -> String {
    format!("etl-query-test-{}", uuid::Uuid::new_v4().simple())
}

/// Bodies that break naive form encoding or XML handling.
fn awkward_bodies() -> Vec<String> {
    vec![
        r#"{"quote":"\"","amp":"&","lt":"<","gt":">","apos":"'","nested":{"a":[1,2.5,null]}}"#
            .to_owned(),
        "unicode: é ß 中文 🎉 \u{200b} Ωmega".to_owned(),
        "line1\nline2\r\nline3\rend".to_owned(),
        "  leading and trailing whitespace \t ".to_owned(),
        "a+b=c&d=e%20f;g?h#i".to_owned(),
        r#"<xml attr="1">&amp;&lt;</xml>"#.to_owned(),
        "]]> CDATA end <![CDATA[x]]> & &#xD; literal".to_owned(),
        "\\ backslash / slash 'single' \"double\"".to_owned(),
        "+".to_owned(),
        format!("{{\"big\":\"{}\"}}", "x&<>\"".repeat(2_000)),
    ]
}

/// Receives until `expected` distinct messages arrived or a few empty polls in a row.
async fn receive_all(client: &QueryClient, expected: usize) -> Vec<ReceivedMessage> {
    let mut received: HashMap<String, ReceivedMessage> = HashMap::new();
    let mut empty_polls = 0;
    while received.len() < expected && empty_polls < 3 {
        let batch = client
            .receive(ReceiveRequest {
                max_messages: 10,
                wait_time_secs: 1,
                visibility_timeout_secs: 60,
            })
            .await
            .expect("receive");
        if batch.is_empty() {
            empty_polls += 1;
        }
        for message in batch {
            received.insert(message.message_id.clone(), message);
        }
    }
    assert_eq!(received.len(), expected, "did not receive every message");
    received.into_values().collect()
}

fn handles(messages: &[ReceivedMessage]) -> Vec<BatchEntry> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| BatchEntry {
            id: format!("e{i}"),
            value: m.receipt_handle.clone(),
        })
        .collect()
}

#[tokio::test]
async fn round_trip_over_query_protocol() {
    let Some(endpoint) = endpoint().await else {
        return;
    };
    let creds = credentials();
    let name = queue_name();

    let created = QueryClient::create_queue(
        &endpoint,
        REGION,
        &creds,
        &name,
        &[("VisibilityTimeout", "30")],
    )
    .await
    .expect("create_queue");
    assert!(created.ends_with(&format!("/{name}")), "{created}");
    let looked_up = QueryClient::get_queue_url(&endpoint, REGION, &creds, &name)
        .await
        .expect("get_queue_url");
    assert_eq!(looked_up, created);

    let client = QueryClient::new(&endpoint, REGION, creds.clone(), looked_up).expect("new");
    assert_eq!(client.protocol_name(), "query");

    let bodies = awkward_bodies();
    let entries: Vec<BatchEntry> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| BatchEntry {
            id: format!("m{i}"),
            value: body.clone(),
        })
        .collect();
    assert_eq!(entries.len(), 10);
    let failures = client.send_batch(entries).await.expect("send_batch");
    assert!(failures.is_empty(), "{failures:?}");
    let tagged_body = "with attribute: {\"k\":\"v & w\"}";
    client
        .send_message(tagged_body, &[("tenant", "acme & co <ltd>")])
        .await
        .expect("send_message");

    let first = receive_all(&client, 11).await;
    let mut expected: Vec<&str> = bodies
        .iter()
        .map(String::as_str)
        .chain([tagged_body])
        .collect();
    let mut got: Vec<&str> = first.iter().map(|m| m.body.as_str()).collect();
    expected.sort_unstable();
    got.sort_unstable();
    assert!(got == expected, "bodies did not come back byte-identical");
    for message in &first {
        assert!(
            message
                .attributes
                .get("SentTimestamp")
                .is_some_and(|t| t.parse::<u64>().is_ok()),
            "{message:?}"
        );
        assert_eq!(
            message
                .attributes
                .get("ApproximateReceiveCount")
                .map(String::as_str),
            Some("1"),
            "{message:?}"
        );
        if message.body == tagged_body {
            assert_eq!(
                message.message_attributes.get("tenant").map(String::as_str),
                Some("acme & co <ltd>")
            );
        } else {
            assert!(message.message_attributes.is_empty());
        }
    }

    // Making the messages visible again must hand them out a second time.
    for chunk in first.chunks(10) {
        let failures = client
            .change_visibility_batch(handles(chunk), 0)
            .await
            .expect("change_visibility_batch");
        assert!(failures.is_empty(), "{failures:?}");
    }
    let second = receive_all(&client, 11).await;
    for message in &second {
        assert_eq!(
            message
                .attributes
                .get("ApproximateReceiveCount")
                .map(String::as_str),
            Some("2"),
            "{message:?}"
        );
    }

    for chunk in second.chunks(10) {
        let failures = client
            .delete_batch(handles(chunk))
            .await
            .expect("delete_batch");
        assert!(failures.is_empty(), "{failures:?}");
    }
    // A bad entry fails alone; the call itself succeeds.
    let failures = client
        .delete_batch(vec![BatchEntry {
            id: "bogus".into(),
            value: "not-a-receipt-handle".into(),
        }])
        .await
        .expect("delete_batch with a bad handle");
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].id, "bogus");
    assert_eq!(failures[0].code, "ReceiptHandleIsInvalid");

    let attributes = client
        .queue_attributes(vec![
            "ApproximateNumberOfMessages".into(),
            "ApproximateNumberOfMessagesNotVisible".into(),
        ])
        .await
        .expect("queue_attributes");
    assert_eq!(
        attributes
            .get("ApproximateNumberOfMessages")
            .map(String::as_str),
        Some("0"),
        "{attributes:?}"
    );
    assert_eq!(
        attributes
            .get("ApproximateNumberOfMessagesNotVisible")
            .map(String::as_str),
        Some("0"),
        "{attributes:?}"
    );
}

#[tokio::test]
async fn missing_queue_is_a_permanent_error() {
    let Some(endpoint) = endpoint().await else {
        return;
    };
    let creds = credentials();
    let name = queue_name();

    let err = QueryClient::get_queue_url(&endpoint, REGION, &creds, &name)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent, "{err}");
    assert_eq!(err.operation, "GetQueueUrl");
    assert!(err.message.contains("NonExistentQueue"), "{err}");

    let queue_url = format!("{endpoint}/000000000000/{name}");
    let client = QueryClient::new(&endpoint, REGION, creds, queue_url).expect("new");
    let err = client
        .receive(ReceiveRequest {
            max_messages: 1,
            wait_time_secs: 0,
            visibility_timeout_secs: 30,
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent, "{err}");
    assert_eq!(err.operation, "ReceiveMessage");
}

/// The JSON-protocol SDK cannot talk to this endpoint; the error must carry text that
/// `is_protocol_mismatch_text` recognises, so the JSON client can switch to the query client.
#[tokio::test]
async fn json_sdk_error_is_recognised_as_protocol_mismatch() {
    use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};

    let Some(endpoint) = endpoint().await else {
        return;
    };
    let config = aws_sdk_sqs::Config::builder()
        .endpoint_url(&endpoint)
        .region(aws_sdk_sqs::config::Region::new(REGION))
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        // The endpoint answers HTTP 500, which the SDK would otherwise retry with backoff.
        .retry_config(aws_sdk_sqs::config::retry::RetryConfig::disabled())
        .build();
    let sdk = aws_sdk_sqs::Client::from_conf(config);

    let err = sdk
        .get_queue_url()
        .queue_name(queue_name())
        .send()
        .await
        .unwrap_err();

    // The SDK cannot parse the XML error document as JSON, so it has no code or message.
    assert_eq!(err.code(), None);
    assert_eq!(err.message(), None);
    assert!(!is_protocol_mismatch_text(&err.to_string()));

    // The tell-tale text is in the raw response body (HTTP 500, an XML <ErrorResponse>) ...
    let raw = err
        .raw_response()
        .expect("service errors carry the raw response");
    assert_eq!(raw.status().as_u16(), 500);
    let body = raw
        .body()
        .bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    assert!(is_protocol_mismatch_text(&body), "raw body: {body}");

    // ... and, because DisplayErrorContext prints the raw response, in that text too.
    let context = DisplayErrorContext(&err).to_string();
    assert!(is_protocol_mismatch_text(&context), "{context}");

    // A receive on a queue URL fails the same way.
    let err = sdk
        .receive_message()
        .queue_url(format!("{endpoint}/000000000000/{}", queue_name()))
        .send()
        .await
        .unwrap_err();
    assert!(is_protocol_mismatch_text(
        &DisplayErrorContext(&err).to_string()
    ));
}

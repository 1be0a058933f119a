//! Connecting to an SQS queue as the spec says: builds the AWS configuration (region, endpoint,
//! credentials chain), resolves the queue URL, and picks the wire protocol — with `auto`, JSON
//! first and query if the endpoint answers that it only speaks query (old LocalStack).

use super::sqs_json::JsonClient;
use super::sqs_query::QueryClient;
use super::{ErrorKind, QueueClient, SqsError};
use crate::spec::{SqsProtocol, SqsSourceConfig};
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::SharedCredentialsProvider;
use std::sync::Arc;
use std::time::Duration;

/// The AWS configuration pieces both protocol clients need.
pub struct AwsSetup {
    pub sdk: aws_sdk_sqs::Client,
    pub credentials: SharedCredentialsProvider,
    pub region: String,
    /// Endpoint base URL (the override, or the regional AWS endpoint).
    pub endpoint: String,
}

/// Builds the AWS configuration. With an endpoint override on this machine (loopback,
/// `localhost`) or the compose service `localstack`, and no credentials in the environment,
/// dummy credentials are used: local emulators accept any, and the default chain would
/// otherwise wait for an instance-metadata service that does not exist there. Any other
/// endpoint (e.g. a VPC endpoint of real SQS) keeps the default chain, so role-based
/// credentials (instance profile, ECS, IRSA/web identity) still work.
pub async fn aws_setup(
    endpoint_url: Option<&str>,
    region: &str,
    wait_time_secs: u32,
) -> Result<AwsSetup, SqsError> {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(u64::from(wait_time_secs) + 20))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_string()))
        .timeout_config(timeouts);
    if let Some(ep) = endpoint_url {
        loader = loader.endpoint_url(ep);
        if let Some(creds) = crate::aws::emulator_credentials(Some(ep)) {
            loader = loader.credentials_provider(creds);
        }
    }
    let conf = loader.load().await;
    let credentials = conf.credentials_provider().ok_or_else(|| {
        SqsError::new(
            ErrorKind::Permanent,
            "configure",
            "no AWS credentials provider available",
        )
    })?;
    let endpoint = endpoint_url
        .map(str::to_string)
        .unwrap_or_else(|| format!("https://sqs.{region}.amazonaws.com"));
    // The SDK's own retries (standard mode: 3 attempts) are off, so the engine's retries
    // (`retry::retry` and its `Backoff`) are the only layer: under both, each engine attempt was
    // up to three SDK attempts, not counted in `etl_retries_total` and past the backoff's bound.
    let sqs_conf = aws_sdk_sqs::config::Builder::from(&conf)
        .retry_config(RetryConfig::disabled())
        .build();
    Ok(AwsSetup {
        sdk: aws_sdk_sqs::Client::from_conf(sqs_conf),
        credentials,
        region: region.to_string(),
        endpoint,
    })
}

fn is_url(queue: &str) -> bool {
    queue.starts_with("http://") || queue.starts_with("https://")
}

/// Connects to the queue of `cfg`, resolving its URL and protocol. Logs once which protocol is used.
pub async fn connect(cfg: &SqsSourceConfig) -> Result<Arc<dyn QueueClient>, SqsError> {
    let setup = aws_setup(cfg.endpoint_url.as_deref(), &cfg.region, cfg.wait_time_secs).await?;
    connect_with(&setup, &cfg.queue, cfg.protocol).await
}

/// Like [`connect`], with an existing setup (the loader and tests reuse one).
pub async fn connect_with(
    setup: &AwsSetup,
    queue: &str,
    protocol: SqsProtocol,
) -> Result<Arc<dyn QueueClient>, SqsError> {
    if protocol != SqsProtocol::Query {
        match probe_json(setup, queue).await {
            Ok(client) => {
                tracing::info!(
                    protocol = "json",
                    queue_url = client.queue_url(),
                    "Connected to the SQS queue."
                );
                return Ok(Arc::new(client));
            }
            Err(e) if e.kind == ErrorKind::ProtocolMismatch && protocol == SqsProtocol::Auto => {
                tracing::info!(
                    endpoint = %setup.endpoint,
                    "The SQS endpoint only speaks the query protocol; using it for the rest of the run."
                );
            }
            Err(e) if e.kind == ErrorKind::ProtocolMismatch => {
                return Err(SqsError::new(
                    ErrorKind::Permanent,
                    e.operation,
                    format!(
                        "the endpoint {} does not speak the SQS JSON protocol required by `source.protocol: json` \
                         (it is probably LocalStack before 3.0); set `source.protocol` to `auto` or `query`",
                        setup.endpoint
                    ),
                ));
            }
            Err(e) => return Err(e),
        }
    }
    let url = if is_url(queue) {
        queue.to_string()
    } else {
        QueryClient::get_queue_url(&setup.endpoint, &setup.region, &setup.credentials, queue)
            .await?
    };
    let client = QueryClient::new(
        &setup.endpoint,
        &setup.region,
        setup.credentials.clone(),
        url,
    )?;
    tracing::info!(
        protocol = "query",
        queue_url = client.queue_url(),
        "Connected to the SQS queue."
    );
    Ok(Arc::new(client))
}

/// Resolves the queue over JSON; a queue given as URL is probed with a cheap attribute read,
/// so a protocol mismatch shows up before the first receive.
async fn probe_json(setup: &AwsSetup, queue: &str) -> Result<JsonClient, SqsError> {
    if is_url(queue) {
        let client = JsonClient::new(setup.sdk.clone(), queue.to_string());
        client.queue_attributes(vec!["QueueArn".into()]).await?;
        Ok(client)
    } else {
        let url = JsonClient::get_queue_url(&setup.sdk, queue).await?;
        Ok(JsonClient::new(setup.sdk.clone(), url))
    }
}

/// Creates a queue over whichever protocol the endpoint speaks (used by the loader and tests).
pub async fn create_queue(
    setup: &AwsSetup,
    name: &str,
    attributes: &[(&str, &str)],
) -> Result<String, SqsError> {
    match JsonClient::create_queue(&setup.sdk, name, attributes).await {
        Err(e) if e.kind == ErrorKind::ProtocolMismatch => {
            QueryClient::create_queue(
                &setup.endpoint,
                &setup.region,
                &setup.credentials,
                name,
                attributes,
            )
            .await
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use crate::aws::is_local_emulator;

    #[test]
    fn dummy_credentials_only_for_local_emulators() {
        for local in [
            "http://127.0.0.1:4566",
            "http://localhost:4566/",
            "http://[::1]:4566",
            "http://localstack:4566",
            "http://sqs.us-east-1.localhost.localstack.cloud:4566",
            "HTTP://LOCALHOST",
        ] {
            assert!(is_local_emulator(local), "{local}");
        }
        for remote in [
            "https://sqs.eu-west-1.amazonaws.com",
            "https://vpce-0123-abcd.sqs.eu-west-1.vpce.amazonaws.com",
            "http://10.0.0.5:4566",
            "http://localhost.example.com",
            "http://user@sqs.internal:4566",
        ] {
            assert!(!is_local_emulator(remote), "{remote}");
        }
    }
}

//! A source built from its spec section: an SQS queue with a connected client, or a file.
//!
//! The pipeline runs a `Source`, never a config paired with an optional client, so "an SQS
//! source without a client" cannot be expressed.

use super::QueueClient;
use crate::spec::{FileSourceConfig, SourceConfig, SqsSourceConfig};
use std::sync::Arc;

/// Where a run's messages come from.
#[derive(Clone)]
pub enum Source {
    /// An SQS queue and the client connected to it.
    Sqs {
        /// The spec's `source` section.
        config: SqsSourceConfig,
        /// The connected client (JSON or query protocol).
        client: Arc<dyn QueueClient>,
    },
    /// A JSON Lines file.
    File(FileSourceConfig),
}

impl Source {
    /// Builds the source for `config`, connecting to SQS through `connect` (the caller decides
    /// how to retry it).
    pub async fn build<F, Fut, E>(config: &SourceConfig, connect: F) -> Result<Self, E>
    where
        F: FnOnce(SqsSourceConfig) -> Fut,
        Fut: std::future::Future<Output = Result<Arc<dyn QueueClient>, E>>,
    {
        Ok(match config {
            SourceConfig::Sqs(cfg) => Source::Sqs {
                config: cfg.clone(),
                client: connect(cfg.clone()).await?,
            },
            SourceConfig::File(f) => Source::File(f.clone()),
        })
    }

    /// The queue client, for SQS sources.
    pub fn queue(&self) -> Option<Arc<dyn QueueClient>> {
        match self {
            Source::Sqs { client, .. } => Some(client.clone()),
            Source::File(_) => None,
        }
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Sqs { config, client } => f
                .debug_struct("Sqs")
                .field("queue", &config.queue)
                .field("protocol", &client.protocol_name())
                .finish(),
            Source::File(c) => f.debug_tuple("File").field(&c.path).finish(),
        }
    }
}

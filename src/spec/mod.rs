//! Spec files: the serde types a person writes in YAML (`*Config`), and the validated,
//! compiled form the engine runs ([`Spec`]).
//!
//! Loading is two-phase (see [`load`]): the YAML plus environment overrides are merged by
//! figment into a loose JSON tree, then each section is deserialized on its own so that
//! *every* problem is reported at once, each with its key path and, where the YAML parser
//! knows it, the file position. [`load`] holds the entry points and what figment loaded,
//! `validate` checks section by section, `diagnose` places and words each problem.

mod diagnose;
pub mod load;
mod pollers;
pub mod position;
pub mod typecheck;
pub mod types;
mod validate;

pub use load::{SpecError, SpecIssue, load_spec, parse_spec_str};
pub use pollers::MAX_POLLERS;
pub use types::*;

use crate::value::ValType;
use jsonpath_rust::parser::model::JpQuery;
use std::path::PathBuf;

/// A validated spec, ready to run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The file it came from (for messages).
    pub file: PathBuf,
    /// Pipeline name: scopes ledger entries and rejects, and goes into the vault's associated data.
    pub name: String,
    pub source: SourceConfig,
    pub target: TargetConfig,
    pub vault: VaultConfig,
    pub rejects: RejectsConfig,
    pub ledger: LedgerConfig,
    /// Target columns, ordered by name (the spec's `columns` is a map); this is the write order.
    pub columns: Vec<Column>,
    /// Spec unit tests (`tests:` block).
    pub tests: Vec<SpecTestConfig>,
}

impl Spec {
    /// Whether any column writes to the vault (and so needs an encryption key).
    pub fn uses_vault(&self) -> bool {
        self.columns.iter().any(Column::encrypts)
    }
    /// Whether any column needs the hashing key.
    pub fn uses_hash(&self) -> bool {
        self.columns.iter().any(|c| c.hashes() || c.encrypts())
    }
}

/// One target column, compiled.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub source: ColumnSource,
    pub required: bool,
    /// The transforms, type-checked in order (the `transform` module builds and runs them).
    pub transforms: Vec<TransformConfig>,
    /// The type after the last transform; decides the Postgres array type used for writing.
    pub out_type: ValType,
}

impl Column {
    /// Whether the column's value goes to the vault (`encrypt`).
    pub fn encrypts(&self) -> bool {
        self.transforms
            .iter()
            .any(|t| matches!(t, TransformConfig::Encrypt {}))
    }
    /// Whether the column is masked by `hash` (a token that cannot be recovered).
    pub fn hashes(&self) -> bool {
        self.transforms
            .iter()
            .any(|t| matches!(t, TransformConfig::Hash {}))
    }
}

/// Where a column's value comes from.
#[derive(Debug, Clone)]
pub enum ColumnSource {
    /// A JSONPath into the message body, parsed once.
    Path { text: String, query: JpQuery },
    /// Message metadata.
    Meta(MetaField),
}

impl ColumnSource {
    /// The static type of the value this source yields.
    pub fn val_type(&self) -> ValType {
        match self {
            Self::Path { .. } => ValType::Json,
            Self::Meta(m) => m.val_type(),
        }
    }
}

/// Message metadata a column can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaField {
    MessageId,
    /// SQS SentTimestamp, epoch milliseconds.
    SentTimestamp,
    /// SQS ApproximateReceiveCount.
    ReceiveCount,
    /// Any SQS system attribute by name.
    Attribute(String),
    /// A sender-set message attribute by name.
    MessageAttribute(String),
}

impl MetaField {
    /// The names accepted in `meta:` (for errors and suggestions).
    pub const NAMES: &'static [&'static str] = &[
        "message_id",
        "sent_timestamp",
        "receive_count",
        "attributes.<Name>",
        "message_attributes.<Name>",
    ];

    /// Parses a `meta:` value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "message_id" => Some(Self::MessageId),
            "sent_timestamp" => Some(Self::SentTimestamp),
            "receive_count" => Some(Self::ReceiveCount),
            _ => {
                if let Some(n) = s.strip_prefix("attributes.").filter(|n| !n.is_empty()) {
                    Some(Self::Attribute(n.to_string()))
                } else {
                    s.strip_prefix("message_attributes.")
                        .filter(|n| !n.is_empty())
                        .map(|n| Self::MessageAttribute(n.to_string()))
                }
            }
        }
    }

    /// The static type of the value this field yields.
    pub fn val_type(&self) -> ValType {
        match self {
            Self::SentTimestamp => ValType::BigInt,
            Self::ReceiveCount => ValType::Integer,
            _ => ValType::Text,
        }
    }
}

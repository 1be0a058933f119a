//! Spec files: the serde types a person writes in YAML (`*Config`), and the validated,
//! compiled form the engine runs ([`Spec`]).
//!
//! Loading is two-phase (see [`load`]): the YAML plus environment overrides are merged by
//! figment into a loose JSON tree, then each section is deserialized on its own so that
//! *every* problem is reported at once, each with its key path and, where the YAML parser
//! knows it, the file position. [`load`] holds the entry points and what figment loaded,
//! `validate` checks section by section, `diagnose` places and words each problem.

pub mod condition;
mod decode_steps;
mod diagnose;
pub mod load;
mod outputs;
mod pollers;
pub mod position;
pub mod typecheck;
pub mod types;
mod validate;

pub use condition::Condition;
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
    /// The `decode:` steps as written (empty: the default, `json`).
    pub decode: Vec<DecodeStep>,
    /// Messages matching it are skipped (acknowledged, counted, not written).
    pub filter: Option<Condition>,
    /// The target tables, in spec order (the single-table form gives one).
    pub outputs: Vec<Output>,
    /// What happens to a message or element no output matches.
    pub unmatched: Unmatched,
    /// Spec unit tests (`tests:` block).
    pub tests: Vec<SpecTestConfig>,
}

impl Spec {
    /// Every column of every output.
    pub fn all_columns(&self) -> impl Iterator<Item = &Column> {
        self.outputs.iter().flat_map(|o| o.columns.iter())
    }
    /// Whether any column writes to the vault (and so needs an encryption key).
    pub fn uses_vault(&self) -> bool {
        self.all_columns().any(Column::encrypts)
    }
    /// Whether any column needs the hashing key.
    pub fn uses_hash(&self) -> bool {
        self.all_columns().any(|c| c.hashes() || c.encrypts())
    }
    /// The output writing to `table`.
    pub fn output(&self, table: &str) -> Option<&Output> {
        self.outputs.iter().find(|o| o.table == table)
    }
    /// The output tables, for messages.
    pub fn table_names(&self) -> Vec<&str> {
        self.outputs.iter().map(|o| o.table.as_str()).collect()
    }
}

/// One target table of a spec, compiled.
#[derive(Debug, Clone)]
pub struct Output {
    /// The table, as the spec names it (optionally schema-qualified).
    pub table: String,
    /// Only messages (or elements) matching it get a row here.
    pub when: Option<Condition>,
    /// Messages matching it are skipped by this output.
    pub filter: Option<Condition>,
    /// Fan-out: one row per element found.
    pub for_each: Option<ForEach>,
    /// How rows are written.
    pub write: Write,
    /// The columns, in spec order; this is the write order.
    pub columns: Vec<Column>,
}

/// A compiled `for_each:` path.
#[derive(Debug, Clone)]
pub struct ForEach {
    /// As written.
    pub text: String,
    /// Compiled.
    pub query: JpQuery,
}

/// A compiled write mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Plain `INSERT`.
    Insert,
    /// `ON CONFLICT DO NOTHING`.
    Ignore,
    /// `ON CONFLICT (key) DO UPDATE`.
    Upsert {
        /// Key columns, in spec order.
        key: Vec<String>,
        /// Update only when this column's new value is not older.
        only_if_newer: Option<String>,
    },
}

/// The default token domain of a column: `table.column` (the tokenizer derives one key per domain).
pub fn default_domain(table: &str, column: &str) -> String {
    format!("{table}.{column}")
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
    /// `token_domain:`, if the column names one.
    pub token_domain: Option<String>,
}

impl Column {
    /// Whether the column's value goes to the vault (`encrypt`).
    pub fn encrypts(&self) -> bool {
        self.transforms
            .iter()
            .any(|t| matches!(t, TransformConfig::Encrypt {}))
    }
    /// The token domain of the column when it writes to `table`: its `token_domain`, else
    /// `table.column`. The table is an input because one column may feed several tables.
    pub fn domain(&self, table: &str) -> String {
        self.token_domain
            .clone()
            .unwrap_or_else(|| default_domain(table, &self.name))
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
    /// `path: @…`: a JSONPath into the current `for_each` element (compiled as `$…`).
    Element { text: String, query: JpQuery },
    /// A JSONPath into the message body, parsed once.
    Path { text: String, query: JpQuery },
    /// Message metadata.
    Meta(MetaField),
}

impl ColumnSource {
    /// The static type of the value this source yields.
    pub fn val_type(&self) -> ValType {
        match self {
            Self::Path { .. } | Self::Element { .. } => ValType::Json,
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
    /// The current `for_each` element's index, from 0.
    ForEachIndex,
    /// The current `for_each` element's position, from 1 (e.g. an order's line number).
    ForEachPosition,
    /// A field of the SNS envelope (`decode:` must contain `sns`).
    Sns(SnsField),
}

/// The fields of an SNS notification envelope a column can read (`meta: sns.…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnsField {
    /// `sns.message_id`: the SNS `MessageId` (not the SQS one), text.
    MessageId,
    /// `sns.topic_arn`: `TopicArn`, text.
    TopicArn,
    /// `sns.timestamp`: `Timestamp`, when SNS published it, a timestamp.
    Timestamp,
    /// `sns.subject`: `Subject`, text (null when the publisher set none).
    Subject,
    /// `sns.message_attributes.<Name>`: an SNS message attribute's `Value`, text.
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
        "for_each.index",
        "for_each.position",
        "sns.message_id",
        "sns.topic_arn",
        "sns.timestamp",
        "sns.subject",
        "sns.message_attributes.<Name>",
    ];

    /// Parses a `meta:` value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "message_id" => Some(Self::MessageId),
            "sent_timestamp" => Some(Self::SentTimestamp),
            "receive_count" => Some(Self::ReceiveCount),
            "for_each.index" => Some(Self::ForEachIndex),
            "for_each.position" => Some(Self::ForEachPosition),
            "sns.message_id" => Some(Self::Sns(SnsField::MessageId)),
            "sns.topic_arn" => Some(Self::Sns(SnsField::TopicArn)),
            "sns.timestamp" => Some(Self::Sns(SnsField::Timestamp)),
            "sns.subject" => Some(Self::Sns(SnsField::Subject)),
            _ => {
                if let Some(n) = s
                    .strip_prefix("sns.message_attributes.")
                    .filter(|n| !n.is_empty())
                {
                    return Some(Self::Sns(SnsField::MessageAttribute(n.to_string())));
                }
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
            Self::ReceiveCount | Self::ForEachIndex | Self::ForEachPosition => ValType::Integer,
            Self::Sns(SnsField::Timestamp) => ValType::Timestamp,
            _ => ValType::Text,
        }
    }
}

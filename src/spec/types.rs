//! The serde types of a spec file, exactly as a person writes them.
//!
//! Every struct denies unknown keys, defaults live in named functions, and units are in
//! field names (`visibility_timeout_secs`). The JSON Schema under `schema/` is generated
//! from these types.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use super::pollers::Pollers;
pub use crate::value::CastType;

/// A whole spec file.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpecConfig {
    /// Pipeline name (required): scopes the ledger (exactly-once) and rejects, and is bound into
    /// the encryption of reject bodies. Set it once and never change it.
    pub name: String,
    /// Where messages come from.
    pub source: SourceConfig,
    /// How a message body becomes the JSON value columns read, applied in order; omitted means
    /// `[json]`. E.g. `[sns]` for SNS notifications delivered without raw message delivery,
    /// `[sns, base64, gzip]` for compressed events inside them. When the last step leaves text
    /// (`sns`, `base64`, `gzip`), it is parsed as JSON.
    #[serde(default)]
    pub decode: Vec<DecodeStep>,
    /// The database, batching, and (in the single-table form) the table and its write mode.
    pub target: TargetConfig,
    /// Messages matching this condition are acknowledged and counted as skipped, never written
    /// or rejected (e.g. `$.test == true`). Same syntax as an output's `when:`.
    #[serde(default)]
    pub filter: Option<String>,
    /// Several target tables, each with its columns, an optional condition (`when:`), fan-out
    /// (`for_each:`) and write mode. Instead of `target.table` + `columns`.
    #[serde(default)]
    pub outputs: Vec<OutputConfig>,
    /// What happens to a message (or a `for_each` element) that no output's `when:` matches.
    #[serde(default)]
    pub unmatched: Unmatched,
    /// Where encrypted originals go and where the keyring is.
    #[serde(default)]
    pub vault: VaultConfig,
    /// Where messages that can never succeed go.
    #[serde(default)]
    pub rejects: RejectsConfig,
    /// The table of processed message ids that makes writes exactly-once.
    #[serde(default)]
    pub ledger: LedgerConfig,
    /// Target columns by name (single-table form, with `target.table`): where each value comes
    /// from and how it is transformed.
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnConfig>,
    /// Spec unit tests, run by `etl-engine test` without any service.
    #[serde(default)]
    pub tests: Vec<SpecTestConfig>,
}

/// One step of `decode:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecodeStep {
    /// Text → JSON. Any JSON value is a body (object, array, scalar). Applied to a JSON string
    /// (a double-encoded body), parses the string's content.
    Json,
    /// An SNS notification envelope → its `Message` text. `TopicArn`, `MessageId`, `Timestamp`,
    /// `Subject` and `MessageAttributes` become metadata (`meta: sns.…`). Subscription and
    /// unsubscribe confirmations, and malformed envelopes, are rejects.
    Sns,
    /// Base64 text (standard alphabet, padding optional, whitespace ignored) → bytes.
    Base64,
    /// Gzip bytes → bytes, at most 8 MiB (more is a reject: a defence against zip bombs).
    Gzip,
}

impl DecodeStep {
    /// The names accepted in `decode:`, for suggestions.
    pub const NAMES: &'static [&'static str] = &["json", "sns", "base64", "gzip"];

    /// The spec name.
    pub fn name(self) -> &'static str {
        match self {
            DecodeStep::Json => "json",
            DecodeStep::Sns => "sns",
            DecodeStep::Base64 => "base64",
            DecodeStep::Gzip => "gzip",
        }
    }
}

/// The message source.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// An SQS queue.
    Sqs(SqsSourceConfig),
    /// A JSON Lines file, one message body per line (backfills, replays of dead-letter dumps).
    File(FileSourceConfig),
}

impl SourceConfig {
    /// The in-flight memory budget in bytes (`source.max_in_flight_bytes`).
    pub fn max_in_flight_bytes(&self) -> u64 {
        match self {
            SourceConfig::Sqs(s) => s.max_in_flight_bytes,
            SourceConfig::File(f) => f.max_in_flight_bytes,
        }
    }
}

/// SQS source settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqsSourceConfig {
    /// Queue name or queue URL.
    pub queue: String,
    /// Endpoint override, e.g. `http://127.0.0.1:4566` for LocalStack. Omit for AWS.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// AWS region.
    #[serde(default = "default_region")]
    pub region: String,
    /// Wire protocol: `auto` tries JSON and falls back to query for old endpoints.
    #[serde(default)]
    pub protocol: SqsProtocol,
    /// Long-poll wait per receive call, 0..=20 seconds.
    #[serde(default = "default_wait_time_secs")]
    pub wait_time_secs: u32,
    /// Visibility timeout requested on receive; extended while a batch is still being written.
    #[serde(default = "default_visibility_timeout_secs")]
    pub visibility_timeout_secs: u32,
    /// Messages per receive call, 1..=10.
    #[serde(default = "default_max_messages")]
    pub max_messages: u32,
    /// Concurrent receive loops: `auto` (the default) adapts them to the queue and the
    /// writers between 1 and 64; a number from 1 to 64 fixes them.
    #[serde(default)]
    pub pollers: Pollers,
    /// A message received more often than this goes to rejects instead of looping forever.
    #[serde(default = "default_max_receive_count")]
    pub max_receive_count: u32,
    /// Memory budget for messages received and not yet written, in bytes (each message is
    /// charged twice its body plus 1 KiB). Receiving waits while the budget is spent.
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: u64,
}

/// SQS wire protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SqsProtocol {
    /// JSON first; switch to query if the endpoint only speaks query.
    #[default]
    Auto,
    /// JSON protocol only (aws-sdk-sqs).
    Json,
    /// Query protocol only (form-encoded requests, XML answers).
    Query,
}

/// File source settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// Path of the JSON Lines file; relative paths are relative to the working directory.
    pub path: String,
    /// Memory budget for lines read and not yet written, in bytes (as for SQS).
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: u64,
}

/// Postgres target settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Postgres URL. Override with `ETL_SPEC_TARGET__URL`.
    pub url: String,
    /// Target table, optionally schema-qualified (single-table form; with `outputs:` leave it out).
    #[serde(default)]
    pub table: Option<String>,
    /// Write mode of the single-table form (see `outputs[].write`).
    #[serde(default)]
    pub write: WriteMode,
    /// Key columns of `write: upsert` in the single-table form.
    #[serde(default)]
    pub key: Vec<String>,
    /// With `write: upsert`: a row is updated only if this column's new value is not older.
    #[serde(default)]
    pub only_if_newer: Option<String>,
    /// Messages per write transaction.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// A partial batch is written after this long.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Concurrent write transactions (each holds one connection).
    #[serde(default = "default_writers")]
    pub writers: u32,
}

/// One target table of a spec with several outputs.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Target table, optionally schema-qualified.
    pub table: String,
    /// Only messages (or `for_each` elements) matching this condition get a row here:
    /// `$.type == 'page_view'`, `@.qty > 0` (element), `$.coupon` (present and not null/false),
    /// or a JSONPath filter such as `$[?(@.type == 'purchase')]` (matches when it finds anything).
    #[serde(default)]
    pub when: Option<String>,
    /// Messages matching this condition are skipped by this output (counted, not rejected).
    #[serde(default)]
    pub filter: Option<String>,
    /// One row per element the JSONPath finds (an array found is iterated): `$.items[*]`, or `$`
    /// for a body that is either one event or an array of events. Column paths starting with `@`
    /// read the element; `$` paths still read the whole message; `meta: for_each.index` (from 0)
    /// and `for_each.position` (from 1) number the elements.
    #[serde(default)]
    pub for_each: Option<String>,
    /// `insert` (default), `upsert` (needs `key`), or `ignore` (`ON CONFLICT DO NOTHING`).
    #[serde(default)]
    pub write: WriteMode,
    /// Key columns of `write: upsert`: a unique index or primary key on exactly these columns.
    #[serde(default)]
    pub key: Vec<String>,
    /// With `write: upsert`: a row is updated only if this column's new value is not older
    /// than the stored one, so a late, older message never overwrites a newer row.
    #[serde(default)]
    pub only_if_newer: Option<String>,
    /// Target columns by name.
    pub columns: BTreeMap<String, ColumnConfig>,
}

/// How rows are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// `INSERT`: every row is appended (the ledger still makes each message count once).
    #[default]
    Insert,
    /// `INSERT … ON CONFLICT (key) DO UPDATE`: a row per key, updated in place; within one
    /// batch the later message wins.
    Upsert,
    /// `INSERT … ON CONFLICT DO NOTHING`: rows conflicting with a stored row are dropped and
    /// counted as duplicates.
    Ignore,
}

/// What happens to a message that no output matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// It becomes a reject naming the reason (the default: nothing is dropped silently).
    #[default]
    Reject,
    /// It is acknowledged and counted as skipped.
    Skip,
}

/// Vault settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// Table holding encrypted originals.
    #[serde(default = "default_vault_table")]
    pub table: String,
    /// Keyring file. When absent, the `ETL_KEYRING` environment variable names it.
    #[serde(default)]
    pub keyring: Option<String>,
    /// Keep the undomained tokens of before token domains: the same value gets the same token
    /// in every column and spec on the keyring, so a hash-only column can be matched against
    /// a recoverable one. Only for deployments that cannot change tokens yet (SECURITY.md);
    /// `vault-retokenize` moves a vault to domained tokens.
    #[serde(default)]
    pub legacy_tokens: bool,
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            table: default_vault_table(),
            keyring: None,
            legacy_tokens: false,
        }
    }
}

/// Rejects settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectsConfig {
    /// Table holding rejected messages (bodies encrypted) with the reason.
    #[serde(default = "default_rejects_table")]
    pub table: String,
}

impl Default for RejectsConfig {
    fn default() -> Self {
        Self {
            table: default_rejects_table(),
        }
    }
}

/// Ledger settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// Table of processed message ids.
    #[serde(default = "default_ledger_table")]
    pub table: String,
    /// Entries older than this are pruned by `etl-engine prune-ledger`; keep it at least the
    /// queue's retention period (SQS maximum: 14 days).
    #[serde(default = "default_ledger_retention_hours")]
    pub retention_hours: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            table: default_ledger_table(),
            retention_hours: default_ledger_retention_hours(),
        }
    }
}

/// One target column.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    /// JSONPath into the message body, e.g. `$.user_id`. Exactly one of `path` and `meta`.
    #[serde(default)]
    pub path: Option<String>,
    /// Message metadata: `message_id`, `sent_timestamp`, `receive_count`,
    /// `attributes.<Name>` or `message_attributes.<Name>`.
    #[serde(default)]
    pub meta: Option<String>,
    /// A message where this value is missing or null is rejected.
    #[serde(default)]
    pub required: bool,
    /// Applied in order.
    #[serde(default)]
    pub transforms: Vec<TransformConfig>,
    /// Token domain of a `hash`/`encrypt` column: equal values give equal tokens only within
    /// one domain. Default: `TABLE.COLUMN` (this column alone). Columns that must join on
    /// tokens (even in other specs on the same keyring) name one domain here.
    #[serde(default)]
    pub token_domain: Option<String>,
}

/// A field-level transform.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TransformConfig {
    /// Keyed HMAC-SHA-256 of the value (hex): equal inputs give equal tokens.
    Hash {},
    /// Like `hash`, and the original is stored AES-256-GCM encrypted in the vault.
    Encrypt {},
    /// Convert to a type.
    Cast {
        /// Target type.
        to: CastType,
    },
    /// "2.3.0" → 2003000: major*1,000,000 + minor*1,000 + patch; keeps version ordering.
    VersionToInt {},
    /// Epoch number → date or timestamp (UTC).
    FromEpoch {
        /// Unit of the number.
        #[serde(default)]
        unit: EpochUnit,
        /// `date` or `timestamp`.
        to: CastType,
    },
    /// Value used when the input is null or missing.
    Default {
        /// The default (must fit the column's type at this point).
        value: serde_json::Value,
    },
    /// Strip leading and trailing whitespace.
    Trim {},
    /// Lowercase.
    Lowercase {},
    /// Uppercase.
    Uppercase {},
    /// Replace every match of a regular expression (the `regex` crate's syntax: no
    /// look-around or backreferences, linear time). E.g. phone digits only:
    /// `pattern: "[^0-9+]"`, `with: ""`.
    Replace {
        /// The regular expression.
        pattern: String,
        /// The replacement; `$1` or `${name}` insert a capture group, `$$` a dollar sign.
        #[serde(default)]
        with: String,
    },
    /// A string holding JSON → that JSON value (e.g. a field with an embedded document).
    /// A value that is already JSON (not a string) passes through.
    ParseJson {},
    /// Multiply a number by a constant, exactly (decimal arithmetic): the result is `numeric`.
    Multiply {
        /// The constant.
        by: serde_json::Number,
    },
    /// Divide a number by a non-zero constant, exactly up to 28 decimals: the result is
    /// `numeric`.
    Divide {
        /// The constant.
        by: serde_json::Number,
    },
    /// Move the decimal point `decimals` places left, exactly: cents → dollars with
    /// `decimals: 2` (1999 → 19.99). The result is `numeric`.
    Scale {
        /// Places, 0 to 28.
        decimals: u32,
    },
}

impl TransformConfig {
    /// The `type:` names, for suggestions.
    pub const NAMES: &'static [&'static str] = &[
        "hash",
        "encrypt",
        "cast",
        "version_to_int",
        "from_epoch",
        "default",
        "trim",
        "lowercase",
        "uppercase",
        "replace",
        "parse_json",
        "multiply",
        "divide",
        "scale",
    ];
}

/// Units of `from_epoch`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EpochUnit {
    #[default]
    Millis,
    Seconds,
}

/// One spec unit test.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpecTestConfig {
    /// Test name.
    pub name: String,
    /// The message body: a JSON value, or (with `raw: true`) the exact body text.
    pub body: serde_json::Value,
    /// Treat `body` as the exact text of the message (to test invalid JSON).
    #[serde(default)]
    pub raw: bool,
    /// Metadata: `message_id`, `sent_timestamp`, `receive_count`, `attributes`, `message_attributes`.
    #[serde(default)]
    pub meta: BTreeMap<String, serde_json::Value>,
    /// Expected row (column → value) when the message gives exactly one row.
    #[serde(default)]
    pub expect_row: Option<BTreeMap<String, serde_json::Value>>,
    /// Expected rows by output table, in order (tables not listed must get no rows).
    #[serde(default)]
    pub expect_rows: Option<BTreeMap<String, Vec<BTreeMap<String, serde_json::Value>>>>,
    /// Expected skip (a `filter:` or `unmatched: skip`): a substring of the reason, or "".
    #[serde(default)]
    pub expect_skip: Option<String>,
    /// Expected reject: a substring of the reason.
    #[serde(default)]
    pub expect_reject: Option<String>,
}

fn default_region() -> String {
    "us-east-1".to_string()
}
fn default_wait_time_secs() -> u32 {
    10
}
fn default_visibility_timeout_secs() -> u32 {
    60
}
fn default_max_messages() -> u32 {
    10
}
/// 64 MiB: ample for thousands of small messages in flight, and bounds a queue of large ones.
fn default_max_in_flight_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_max_receive_count() -> u32 {
    10
}
fn default_batch_size() -> usize {
    1000
}
fn default_flush_interval_ms() -> u64 {
    500
}
fn default_writers() -> u32 {
    2
}
fn default_vault_table() -> String {
    "etl_vault".to_string()
}
fn default_rejects_table() -> String {
    "etl_rejects".to_string()
}
fn default_ledger_table() -> String {
    "etl_ledger".to_string()
}
fn default_ledger_retention_hours() -> u64 {
    14 * 24
}

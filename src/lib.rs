//! etl-engine: moves JSON messages from SQS (or a JSON Lines file) into PostgreSQL, driven by a
//! YAML spec, masking PII on the way.
//!
//! The flow, one direction, each stage handing data forward:
//!
//! 1. [`source`] receives a batch of messages (SQS long poll, ≤10 per call) with metadata;
//! 2. [`decode`] turns each body into JSON — bad JSON becomes a reject, not a crash;
//! 3. [`route`] applies the spec's `filter:`, picks the outputs whose `when:` holds, and
//!    expands `for_each:` into one row per element;
//! 4. [`extract`] pulls each column's value (JSONPath into the body or element, or metadata);
//! 5. [`transform`] applies the column's transforms (hash, encrypt, casts, defaults, ...);
//!    [`process`] runs 2–5 for one message and yields its rows, a skip or a reject;
//! 6. [`sink`] writes vault rows, every output's rows, rejects and the ledger in ONE transaction;
//! 7. [`pipeline`] deletes the messages from SQS only after that commit.
//!
//! [`spec`] loads and validates the YAML that drives all of this; [`vault`] holds the keyring,
//! the cipher and PII recovery.

pub mod aws;
pub mod crypto;
pub mod db;
pub mod decode;
pub mod extract;
pub mod metrics;
pub mod pipeline;
pub mod process;
pub mod progress;
pub mod retry;
pub mod route;
pub mod sink;
pub mod source;
pub mod spec;
pub mod spec_test;
pub mod stats;
pub mod transform;
pub mod value;
pub mod vault;

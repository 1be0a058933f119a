//! Decode: a message body → the JSON value columns are extracted from, plus metadata the
//! decoding found (the SNS envelope's fields), through the spec's `decode:` steps in order.
//!
//! Between steps a body is either text (bytes) or a JSON value. `json` parses text; `sns`
//! takes an envelope (text, or JSON from a `json` before it) and yields its `Message` text;
//! `base64` and `gzip` turn text into text. When the last step leaves text, it is parsed as
//! JSON, so `decode: [sns]` means envelope → `Message` → JSON. Without `decode:` the body is
//! parsed as JSON directly, with no copy.
//!
//! Any JSON value is a body (object, array, scalar). A body that cannot be decoded is a reject
//! reason naming the step (`decode[1] gzip: …`), never a crash, and never quoting the body.

mod bytes;
mod sns;

pub use bytes::MAX_DECODED_BYTES;
pub use sns::{SnsMeta, SnsProblem};

use crate::spec::DecodeStep;
use serde_json::Value as J;
use std::borrow::Cow;
use std::fmt;

/// Which part of decoding failed, for the reason's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// The default decoding (no `decode:`): the body as JSON.
    Default,
    /// Step `index` of `decode:`.
    Step { index: usize, step: DecodeStep },
    /// The JSON parse that follows a last step leaving text.
    Final,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Default => f.write_str("decode"),
            At::Step { index, step } => write!(f, "decode[{index}] {}", step.name()),
            At::Final => f.write_str("decode (JSON after the last step)"),
        }
    }
}

/// What went wrong in a step. Never carries the body or any part of it.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum Problem {
    #[error("{what} is not valid JSON (line {line}, column {column}: {category})")]
    InvalidJson {
        /// "body" for the message as received, "text" after another step.
        what: &'static str,
        line: usize,
        column: usize,
        category: &'static str,
    },
    #[error("expects text, but the value is a JSON {0}")]
    NotText(&'static str),
    #[error(transparent)]
    Sns(#[from] SnsProblem),
    #[error("not valid base64")]
    Base64,
    #[error("not valid gzip data (truncated or corrupt)")]
    Gzip,
    #[error("gzip data expands to more than {MAX_DECODED_BYTES} bytes")]
    TooLarge,
}

/// Why a body could not be decoded: where, and what.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{at}: {problem}")]
pub struct DecodeError {
    pub at: At,
    pub problem: Problem,
}

/// Metadata found while decoding, for `meta:` columns.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DecodedMeta {
    /// The SNS envelope's fields, when `decode:` has `sns`.
    pub sns: Option<SnsMeta>,
}

/// A decoded body.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The value columns' JSONPaths read.
    pub body: J,
    /// What the steps found besides the body.
    pub meta: DecodedMeta,
}

/// A body between steps.
enum Data<'a> {
    /// Text or bytes (not necessarily UTF-8 after `base64` or `gzip`).
    Bytes(Cow<'a, [u8]>),
    /// A parsed JSON value.
    Json(J),
}

/// The `decode:` chain of one spec.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoder {
    /// The steps; empty is the default, the body as JSON.
    steps: Vec<DecodeStep>,
}

impl Decoder {
    /// A decoder running `steps` (as validated with the spec; empty means `[json]`).
    pub fn new(steps: Vec<DecodeStep>) -> Self {
        Self { steps }
    }

    /// Decodes one body.
    pub fn decode(&self, body: &str) -> Result<Decoded, DecodeError> {
        if self.steps.is_empty() || self.steps == [DecodeStep::Json] {
            return parse_json(body.as_bytes(), "body")
                .map(|body| Decoded {
                    body,
                    meta: DecodedMeta::default(),
                })
                .map_err(|problem| DecodeError {
                    at: At::Default,
                    problem,
                });
        }
        let mut data = Data::Bytes(Cow::Borrowed(body.as_bytes()));
        let mut meta = DecodedMeta::default();
        for (index, step) in self.steps.iter().enumerate() {
            let what = if index == 0 { "body" } else { "text" };
            data = run_step(*step, data, what, &mut meta).map_err(|problem| DecodeError {
                at: At::Step { index, step: *step },
                problem,
            })?;
        }
        let body = match data {
            Data::Json(v) => v,
            Data::Bytes(b) => parse_json(&b, "text").map_err(|problem| DecodeError {
                at: At::Final,
                problem,
            })?,
        };
        Ok(Decoded { body, meta })
    }
}

/// Runs one step; `what` names the input in a JSON error ("body" or "text").
fn run_step<'a>(
    step: DecodeStep,
    data: Data<'a>,
    what: &'static str,
    meta: &mut DecodedMeta,
) -> Result<Data<'a>, Problem> {
    Ok(match step {
        DecodeStep::Json => Data::Json(parse_json(&text(data)?, what)?),
        DecodeStep::Sns => {
            let envelope = match data {
                Data::Bytes(b) => parse_json(&b, what)?,
                Data::Json(v) => v,
            };
            let (message, sns) = sns::unwrap(envelope)?;
            meta.sns = Some(sns);
            Data::Bytes(Cow::Owned(message.into_bytes()))
        }
        DecodeStep::Base64 => Data::Bytes(Cow::Owned(bytes::base64(&text(data)?)?)),
        DecodeStep::Gzip => Data::Bytes(Cow::Owned(bytes::gunzip(&text(data)?)?)),
    })
}

/// The text of a body: its bytes, or the content of a JSON string (e.g. base64 in a JSON
/// string); other JSON values are not text.
fn text(data: Data<'_>) -> Result<Cow<'_, [u8]>, Problem> {
    match data {
        Data::Bytes(b) => Ok(b),
        Data::Json(J::String(s)) => Ok(Cow::Owned(s.into_bytes())),
        Data::Json(other) => Err(Problem::NotText(json_kind(&other))),
    }
}

/// The kind of a JSON value, for messages.
fn json_kind(v: &J) -> &'static str {
    match v {
        J::Null => "null",
        J::Bool(_) => "boolean",
        J::Number(_) => "number",
        J::String(_) => "string",
        J::Array(_) => "array",
        J::Object(_) => "object",
    }
}

/// Parses JSON text (any value); the error gives position and category only.
fn parse_json(bytes: &[u8], what: &'static str) -> Result<J, Problem> {
    serde_json::from_slice(bytes).map_err(|e| Problem::InvalidJson {
        what,
        line: e.line(),
        column: e.column(),
        category: match e.classify() {
            serde_json::error::Category::Eof => "unexpected end of input",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "data error",
            serde_json::error::Category::Io => "read error",
        },
    })
}

/// Decodes a body the default way (as JSON), for callers without a spec.
pub fn decode(body: &str) -> Result<J, DecodeError> {
    Decoder::default().decode(body).map(|d| d.body)
}

#[cfg(test)]
mod tests;

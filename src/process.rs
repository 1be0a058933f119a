//! One message through decode → filter → route → expand → extract → transforms, yielding the
//! rows of every output it goes to, a skip, or a reject reason.
//!
//! Pure and synchronous: no I/O, so it is shared by `run`, `preview` and `test`.

use crate::decode::{DecodedMeta, Decoder};
use crate::extract::{Element, extract};
use crate::route::{elements, holds};
use crate::source::ReceivedMessage;
use crate::source::file::{INVALID_UTF8_ATTRIBUTE, OVERSIZED_LINE_ATTRIBUTE};
use crate::source::jsonl::MAX_LINE_BYTES;
use crate::spec::{Condition, Output, Spec, Unmatched};
use crate::transform::{Context, DomainTokenizer, PendingVault, Tokenizer, Transform};
use crate::value::Val;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::sync::Arc;

/// What became of one message.
#[derive(Debug)]
pub enum Outcome {
    /// Rows for the outputs (possibly none, e.g. an empty array of events) and vault entries.
    Rows {
        rows: Vec<Row>,
        vault: Vec<PendingVault>,
    },
    /// Acknowledged and counted, not written: a `filter:` matched, or no output matched with
    /// `unmatched: skip`. The reason names the condition, never a value.
    Skip { reason: String },
    /// The message can never succeed; the reason names the stage and column, never a value.
    Reject { reason: String },
}

/// One row for one output.
#[derive(Debug, Clone)]
pub struct Row {
    /// Index of the output in the spec's `outputs`.
    pub output: usize,
    /// Values in the output's column order.
    pub values: Vec<Val>,
}

/// A processed message, with what the sink and the ack need. `Debug` shows the body's length
/// only: a reject body may carry PII.
pub struct Processed {
    pub message_id: String,
    pub receipt_handle: String,
    /// The original body. Kept for every message, not only rejects: Postgres may still refuse
    /// a valid-looking row at write time, and its reject must carry the body (encrypted) so
    /// nothing is lost. It is moved here from the received message, not copied.
    pub body: String,
    pub outcome: Outcome,
}

impl std::fmt::Debug for Processed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processed")
            .field("message_id", &self.message_id)
            .field("body_len", &self.body.len())
            .field("outcome", &self.outcome)
            .finish()
    }
}

/// Runs the per-message stages for one spec.
#[derive(Debug, Clone)]
pub struct Processor {
    /// The outputs, as the spec gives them.
    outputs: Arc<Vec<Output>>,
    /// Each output's columns' transform chains, built once, in column order.
    chains: Arc<Vec<Vec<Vec<Transform>>>>,
    /// Each output's columns' token makers (the column's domain), in column order; `None` for
    /// columns that neither hash nor encrypt.
    tokenizers: Arc<Vec<Vec<Option<DomainTokenizer>>>>,
    /// The spec's `decode:` steps.
    decoder: Decoder,
    /// The spec-level filter.
    filter: Option<Condition>,
    /// What a message or element no output matches becomes.
    unmatched: Unmatched,
    /// Whether reasons name the output (only when there are several).
    name_outputs: bool,
    max_receive_count: Option<u32>,
}

impl Processor {
    /// `tokenizer` is required when a column hashes or encrypts (checked by the caller).
    /// Fails, naming the column and transform, only for columns that skipped spec validation.
    pub fn new(
        spec: &Spec,
        tokenizer: Option<Tokenizer>,
        max_receive_count: Option<u32>,
    ) -> Result<Self, String> {
        let chains = spec
            .outputs
            .iter()
            .map(|o| {
                o.columns
                    .iter()
                    .map(Transform::build_chain)
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tokenizers = spec
            .outputs
            .iter()
            .map(|o| {
                o.columns
                    .iter()
                    .map(|c| {
                        tokenizer
                            .as_ref()
                            .filter(|_| c.hashes() || c.encrypts())
                            .map(|t| t.domain(&c.domain(&o.table)))
                    })
                    .collect()
            })
            .collect();
        Ok(Self {
            outputs: Arc::new(spec.outputs.clone()),
            chains: Arc::new(chains),
            tokenizers: Arc::new(tokenizers),
            decoder: Decoder::new(spec.decode.clone()),
            filter: spec.filter.clone(),
            unmatched: spec.unmatched,
            name_outputs: spec.outputs.len() > 1,
            max_receive_count,
        })
    }

    /// The outputs, in spec order (a [`Row`]'s `output` indexes this).
    pub fn outputs(&self) -> &[Output] {
        &self.outputs
    }

    /// The token maker of `column` in output `output` (its domain), if it hashes or encrypts.
    pub fn tokenizer_of(&self, output: usize, column: &str) -> Option<&DomainTokenizer> {
        let o = self.outputs.get(output)?;
        let i = o.columns.iter().position(|c| c.name == column)?;
        self.tokenizers[output][i].as_ref()
    }

    /// Processes one message.
    pub fn process(&self, msg: ReceivedMessage) -> Processed {
        let outcome = self.outcome(&msg);
        Processed {
            message_id: msg.message_id,
            receipt_handle: msg.receipt_handle,
            body: msg.body,
            outcome,
        }
    }

    fn outcome(&self, msg: &ReceivedMessage) -> Outcome {
        let reject = |reason: String| Outcome::Reject { reason };
        if let (Some(limit), Some(count)) = (
            self.max_receive_count,
            msg.attributes
                .get("ApproximateReceiveCount")
                .and_then(|c| c.parse::<u32>().ok()),
        ) && count > limit
        {
            return reject(format!(
                "received {count} times, more than source.max_receive_count ({limit})"
            ));
        }
        let not_utf8 = msg.attributes.contains_key(INVALID_UTF8_ATTRIBUTE);
        if let Some(len) = msg.attributes.get(OVERSIZED_LINE_ATTRIBUTE) {
            // The body is only the line's start (the reader never held the rest); the reason
            // says so, with sizes only, so nobody mistakes it for the whole message.
            let (kept, encoding) = if not_utf8 {
                let kept = B64.decode(&msg.body).map_or(0, |raw| raw.len());
                (kept, ", base64-encoded as they are not valid UTF-8")
            } else {
                (msg.body.len(), "")
            };
            return reject(format!(
                "decode: the line is {len} bytes, over the {MAX_LINE_BYTES}-byte limit; the reject keeps its first {kept} bytes{encoding}"
            ));
        }
        if not_utf8 {
            return reject(
                "decode: the line is not valid UTF-8 (the reject body holds the raw line, base64-encoded)"
                    .into(),
            );
        }
        let decoded = match self.decoder.decode(&msg.body) {
            Ok(d) => d,
            Err(e) => return reject(e.to_string()),
        };
        self.route(&decoded.body, &decoded.meta, msg)
    }

    /// Filter, route, expand and build the rows of a decoded message.
    fn route(
        &self,
        body: &serde_json::Value,
        meta: &DecodedMeta,
        msg: &ReceivedMessage,
    ) -> Outcome {
        let reject = |reason: String| Outcome::Reject { reason };
        if let Some(f) = &self.filter {
            match holds(f, body, None) {
                Ok(true) => {
                    return Outcome::Skip {
                        reason: format!("filter `{}` matched", f.text),
                    };
                }
                Ok(false) => {}
                Err(e) => return reject(format!("filter: {e}")),
            }
        }
        let mut rows = Vec::new();
        let mut vault = Vec::new();
        // Message-level outputs (no for_each): did any take the message, or skip it by filter?
        let mut message_taken = false;
        let mut message_outputs = false;
        // Per for_each path: for each element, whether an output took it.
        let mut element_groups: Vec<(&str, Vec<bool>)> = Vec::new();
        for (oi, (output, chains)) in self.outputs.iter().zip(self.chains.iter()).enumerate() {
            let label = |what: &str| {
                if self.name_outputs {
                    format!("output {}: {what}", output.table)
                } else {
                    what.to_string()
                }
            };
            let filtered = match &output.filter {
                Some(f) => match holds(f, body, None) {
                    Ok(b) => b,
                    Err(e) => return reject(label(&format!("filter: {e}"))),
                },
                None => false,
            };
            let Some(fe) = &output.for_each else {
                message_outputs = true;
                if filtered {
                    message_taken = true;
                    continue;
                }
                let take = match &output.when {
                    Some(w) => match holds(w, body, None) {
                        Ok(b) => b,
                        Err(e) => return reject(label(&format!("when: {e}"))),
                    },
                    None => true,
                };
                if take {
                    message_taken = true;
                    match self.row(oi, chains, (body, meta), None, msg, &mut vault) {
                        Ok(values) => rows.push(Row { output: oi, values }),
                        Err(e) => return reject(label(&e)),
                    }
                }
                continue;
            };
            let items = match elements(fe, body) {
                Ok(items) => items,
                Err(e) => return reject(label(&e)),
            };
            let gi = match element_groups.iter().position(|(p, _)| *p == fe.text) {
                Some(gi) => gi,
                None => {
                    element_groups.push((fe.text.as_str(), vec![false; items.len()]));
                    element_groups.len() - 1
                }
            };
            for (index, item) in items.into_iter().enumerate() {
                if filtered {
                    element_groups[gi].1[index] = true;
                    continue;
                }
                let take = match &output.when {
                    Some(w) => match holds(w, body, Some(item)) {
                        Ok(b) => b,
                        Err(e) => return reject(label(&format!("element {index}: when: {e}"))),
                    },
                    None => true,
                };
                if !take {
                    continue;
                }
                element_groups[gi].1[index] = true;
                let element = Element { value: item, index };
                match self.row(oi, chains, (body, meta), Some(element), msg, &mut vault) {
                    Ok(values) => rows.push(Row { output: oi, values }),
                    Err(e) => return reject(label(&format!("element {index}: {e}"))),
                }
            }
        }
        let unmatched = if message_outputs && !message_taken {
            Some("no output matches the message".to_string())
        } else {
            element_groups.iter().find_map(|(path, taken)| {
                taken
                    .iter()
                    .position(|t| !t)
                    .map(|i| format!("no output matches element {i} of for_each {path}"))
            })
        };
        match (unmatched, self.unmatched) {
            (Some(why), Unmatched::Reject) => reject(format!(
                "route: {why} (outputs: {}; set `unmatched: skip` to skip such messages)",
                self.outputs
                    .iter()
                    .map(|o| o.table.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            (Some(why), Unmatched::Skip) => Outcome::Skip { reason: why },
            (None, _) => Outcome::Rows { rows, vault },
        }
    }

    /// One output's row: every column extracted, checked and transformed, in order.
    fn row(
        &self,
        oi: usize,
        chains: &[Vec<Transform>],
        (body, meta): (&serde_json::Value, &DecodedMeta),
        element: Option<Element<'_>>,
        msg: &ReceivedMessage,
        vault: &mut Vec<PendingVault>,
    ) -> Result<Vec<Val>, String> {
        let output = &self.outputs[oi];
        let mut values = Vec::with_capacity(output.columns.len());
        for ((col, chain), tokenizer) in output
            .columns
            .iter()
            .zip(chains.iter())
            .zip(self.tokenizers[oi].iter())
        {
            let mut v = extract(&col.source, body, element, msg, meta)
                .map_err(|e| format!("column {}: extract: {e}", col.name))?;
            if col.required && v.is_null() {
                return Err(format!(
                    "column {}: required value is missing or null",
                    col.name
                ));
            }
            let mut ctx = Context {
                tokenizer: tokenizer.as_ref(),
                table: &output.table,
                column: &col.name,
                vault,
            };
            for t in chain {
                v = t
                    .apply(v, &mut ctx)
                    .map_err(|e| format!("column {}: {}: {e}", col.name, t.name()))?;
            }
            values.push(v);
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn message(body: &str, attributes: &[(&str, &str)]) -> ReceivedMessage {
        ReceivedMessage {
            message_id: "in.jsonl:3".into(),
            receipt_handle: String::new(),
            body: body.into(),
            attributes: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            message_attributes: HashMap::new(),
        }
    }

    fn reason(p: Processed) -> String {
        match p.outcome {
            Outcome::Reject { reason } => reason,
            other => panic!("expected a reject, got {other:?}"),
        }
    }

    /// A processor for a spec given as YAML (after `name` and `source`).
    fn processor(rest: &str) -> Processor {
        let text = format!("name: t\nsource: {{type: file, path: x.jsonl}}\n{rest}");
        let spec = crate::spec::parse_spec_str(&text, std::path::Path::new("t.yaml"), false)
            .unwrap_or_else(|e| panic!("{e}"));
        Processor::new(&spec, None, None).unwrap()
    }

    /// The rows of a processed message as (table, values as JSON).
    fn rows(p: &Processor, body: &str) -> Vec<(String, Vec<serde_json::Value>)> {
        match p.process(message(body, &[])).outcome {
            Outcome::Rows { rows, .. } => rows
                .into_iter()
                .map(|r| {
                    (
                        p.outputs()[r.output].table.clone(),
                        r.values.iter().map(Val::to_json).collect(),
                    )
                })
                .collect(),
            other => panic!("expected rows, got {other:?}"),
        }
    }

    const ORDERS: &str = "target: {url: 'postgres://h/db'}
outputs:
  - table: orders
    columns:
      order_id: {path: $.order_id, required: true}
      total: {path: $.total}
  - table: order_items
    for_each: $.items[*]
    columns:
      order_id: {path: $.order_id, required: true}
      line: {meta: for_each.position}
      sku: {path: '@.sku', required: true}
";

    #[test]
    fn fan_out_reads_the_element_and_the_whole_message() {
        let p = processor(ORDERS);
        let got = rows(
            &p,
            r#"{"order_id": "o1", "total": 5, "items": [{"sku": "a"}, {"sku": "b"}]}"#,
        );
        let j = |v: &str| serde_json::from_str::<serde_json::Value>(v).unwrap();
        assert_eq!(
            got,
            vec![
                ("orders".into(), vec![j(r#""o1""#), j("5")]),
                (
                    "order_items".into(),
                    vec![j(r#""o1""#), j("1"), j(r#""a""#)]
                ),
                (
                    "order_items".into(),
                    vec![j(r#""o1""#), j("2"), j(r#""b""#)]
                ),
            ]
        );
        // No items: the order alone. A bad item rejects the whole message, naming it.
        assert_eq!(rows(&p, r#"{"order_id": "o2", "items": []}"#).len(), 1);
        let r = reason(p.process(message(
            r#"{"order_id": "o3", "items": [{"sku": "a"}, {}]}"#,
            &[],
        )));
        assert_eq!(
            r,
            "output order_items: element 1: column sku: required value is missing or null"
        );
    }

    const EVENTS: &str = "target: {url: 'postgres://h/db'}
UNMATCHED
outputs:
  - table: page_views
    for_each: $
    when: \"@.type == 'page_view'\"
    columns:
      url: {path: '@.url'}
  - table: purchases
    for_each: $
    when: \"@.type == 'purchase'\"
    columns:
      amount: {path: '@.amount'}
";

    #[test]
    fn routing_by_type_for_single_events_and_arrays() {
        let p = processor(&EVENTS.replace("UNMATCHED", ""));
        let one = rows(&p, r#"{"type": "page_view", "url": "/a"}"#);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].0, "page_views");
        let many = rows(
            &p,
            r#"[{"type": "purchase", "amount": 3}, {"type": "page_view", "url": "/b"}]"#,
        );
        let tables: Vec<&str> = many.iter().map(|r| r.0.as_str()).collect();
        // Rows come output by output (spec order), elements in order within each.
        assert_eq!(tables, ["page_views", "purchases"]);
        // An unknown type is a reject (the whole message, so nothing is half-written) ...
        let r = reason(p.process(message(
            r#"[{"type": "page_view"}, {"type": "refund"}]"#,
            &[],
        )));
        assert!(
            r.starts_with("route: no output matches element 1 of for_each $"),
            "{r}"
        );
        // ... or a skip when the spec says so.
        let p = processor(&EVENTS.replace("UNMATCHED", "unmatched: skip"));
        assert!(matches!(
            p.process(message(r#"{"type": "refund"}"#, &[])).outcome,
            Outcome::Skip { .. }
        ));
    }

    #[test]
    fn a_filter_skips_before_anything_else() {
        let p = processor(
            "target: {url: 'postgres://h/db', table: t}\nfilter: \"$.test == true\"\ncolumns: {id: {path: $.id, required: true}}\n",
        );
        match p.process(message(r#"{"test": true}"#, &[])).outcome {
            Outcome::Skip { reason } => assert_eq!(reason, "filter `$.test == true` matched"),
            other => panic!("expected a skip, got {other:?}"),
        }
        assert_eq!(rows(&p, r#"{"id": 1, "test": false}"#).len(), 1);
    }

    #[test]
    fn an_oversized_line_is_a_reject_naming_sizes_only() {
        // Without the marker, `{}` would be a row.
        let processor =
            processor("target: {url: 'postgres://h/db', table: t}\ncolumns: {c: {path: $.c}}\n");
        assert!(matches!(
            processor.process(message("{}", &[])).outcome,
            Outcome::Rows { .. }
        ));

        let prefix = format!(
            "{{\"email\": \"secret@example.com\", \"pad\": \"{}",
            "x".repeat(4000)
        );
        let p = processor.process(message(&prefix, &[(OVERSIZED_LINE_ATTRIBUTE, "2000000")]));
        assert_eq!(p.body, prefix, "the reject body is the kept prefix");
        let r = reason(p);
        assert_eq!(
            r,
            format!(
                "decode: the line is 2000000 bytes, over the 1048576-byte limit; the reject keeps its first {} bytes",
                prefix.len()
            )
        );
        assert!(!r.contains("secret"));

        // A prefix that is not UTF-8 is base64 in the body; the reason counts the raw bytes.
        let p = processor.process(message(
            &B64.encode(b"{\"a\": \"\xff"),
            &[
                (OVERSIZED_LINE_ATTRIBUTE, "1048577"),
                (INVALID_UTF8_ATTRIBUTE, "true"),
            ],
        ));
        assert_eq!(
            reason(p),
            "decode: the line is 1048577 bytes, over the 1048576-byte limit; the reject keeps its first 8 bytes, base64-encoded as they are not valid UTF-8"
        );
    }

    #[test]
    fn a_line_that_is_not_utf8_is_a_reject() {
        let processor =
            processor("target: {url: 'postgres://h/db', table: t}\ncolumns: {c: {path: $.c}}\n");
        let p = processor.process(message(
            &B64.encode(b"\xff"),
            &[(INVALID_UTF8_ATTRIBUTE, "true")],
        ));
        assert!(reason(p).starts_with("decode: the line is not valid UTF-8"));
    }
}

//! Extract: a column's raw value from the decoded body or the current `for_each` element
//! (JSONPath), the message metadata, or the metadata decoding found (the SNS envelope).
//!
//! A JSONPath that matches nothing yields null (missing). A singular path (only names and
//! indexes, e.g. `$.customer.email`, `$.items[0]`) yields the value it found. Any other path
//! (wildcard, slice, filter, descendant, e.g. `$.items[*].sku`) yields a JSON array of its
//! matches, even when there is only one, so the column's shape does not depend on the data.

use crate::decode::DecodedMeta;
use crate::source::ReceivedMessage;
use crate::spec::{ColumnSource, MetaField, SnsField};
use crate::value::Val;
use crate::value::cast::parse_timestamp;
use serde_json::Value as J;

/// The current `for_each` element and its index, when an output fans out.
#[derive(Debug, Clone, Copy)]
pub struct Element<'a> {
    /// The element's value.
    pub value: &'a J,
    /// Its index, from 0.
    pub index: usize,
}

/// Extracts one column's value; `element` is the current `for_each` element, if any, and
/// `decoded` is what the `decode:` steps found besides the body.
pub fn extract(
    source: &ColumnSource,
    body: &J,
    element: Option<Element<'_>>,
    msg: &ReceivedMessage,
    decoded: &DecodedMeta,
) -> Result<Val, String> {
    match source {
        ColumnSource::Path { query, .. } => path_value(query, body),
        ColumnSource::Element { query, .. } => match element {
            Some(e) => path_value(query, e.value),
            // Validation refuses `@` paths outside a for_each output.
            None => Err("an `@` path outside a for_each output".into()),
        },
        ColumnSource::Meta(MetaField::ForEachIndex) => element
            .map(|e| index_val(e.index))
            .ok_or_else(|| "for_each.index outside a for_each output".to_string())?,
        ColumnSource::Meta(MetaField::ForEachPosition) => {
            element
                .map(|e| index_val(e.index + 1))
                .ok_or_else(|| "for_each.position outside a for_each output".to_string())?
        }
        ColumnSource::Meta(MetaField::Sns(field)) => sns_field(field, decoded),
        ColumnSource::Meta(field) => meta_value(field, msg),
    }
}

/// An element index as an integer value.
fn index_val(i: usize) -> Result<Val, String> {
    i32::try_from(i)
        .map(Val::Int)
        .map_err(|_| format!("for_each element {i} is past the integer range"))
}

/// Evaluates a JSONPath (see the module documentation for the shape of the result).
pub fn path_value(query: &jsonpath_rust::parser::model::JpQuery, body: &J) -> Result<Val, String> {
    if let Some(found) = singular_lookup(query, body) {
        return Ok(match found {
            None | Some(J::Null) => Val::Null,
            Some(v) => Val::Json(v.clone()),
        });
    }
    let found = jsonpath_rust::query::js_path_process(query, body)
        .map_err(|e| format!("JSONPath failed: {e}"))?;
    Ok(match found.len() {
        0 => Val::Null,
        1 if is_singular(query) => match found[0].val {
            J::Null => Val::Null,
            v => Val::Json(v.clone()),
        },
        _ => Val::Json(J::Array(found.iter().map(|r| r.val.clone()).collect())),
    })
}

/// A metadata field's value.
fn meta_value(field: &MetaField, msg: &ReceivedMessage) -> Result<Val, String> {
    Ok(match field {
        MetaField::MessageId => Val::Text(msg.message_id.clone()),
        MetaField::SentTimestamp => match msg.attributes.get("SentTimestamp") {
            Some(s) => Val::BigInt(
                s.parse()
                    .map_err(|_| "SentTimestamp is not a number".to_string())?,
            ),
            None => Val::Null,
        },
        MetaField::ReceiveCount => match msg.attributes.get("ApproximateReceiveCount") {
            Some(s) => Val::Int(
                s.parse()
                    .map_err(|_| "ApproximateReceiveCount is not a number".to_string())?,
            ),
            None => Val::Null,
        },
        MetaField::Attribute(name) => msg
            .attributes
            .get(name)
            .map(|s| Val::Text(s.clone()))
            .unwrap_or(Val::Null),
        MetaField::MessageAttribute(name) => msg
            .message_attributes
            .get(name)
            .map(|s| Val::Text(s.clone()))
            .unwrap_or(Val::Null),
        // Handled by `extract`, which knows the element and what decoding found.
        MetaField::ForEachIndex | MetaField::ForEachPosition | MetaField::Sns(_) => Val::Null,
    })
}

/// A field of the SNS envelope; null when there was none (the spec requires `sns` in
/// `decode:` for these, so that happens only for optional fields).
fn sns_field(field: &SnsField, decoded: &DecodedMeta) -> Result<Val, String> {
    let Some(sns) = &decoded.sns else {
        return Ok(Val::Null);
    };
    let text = |s: Option<&String>| s.map(|s| Val::Text(s.clone())).unwrap_or(Val::Null);
    Ok(match field {
        SnsField::MessageId => Val::Text(sns.message_id.clone()),
        SnsField::TopicArn => Val::Text(sns.topic_arn.clone()),
        SnsField::Subject => text(sns.subject.as_ref()),
        SnsField::MessageAttribute(name) => text(sns.message_attributes.get(name)),
        SnsField::Timestamp => match &sns.timestamp {
            Some(t) => Val::Timestamp(
                parse_timestamp(t).ok_or("sns.timestamp is not an ISO 8601 timestamp")?,
            ),
            None => Val::Null,
        },
    })
}

/// Follows a singular query (names and indexes only) directly through the value: `Some(found)`,
/// or `None` when the query is not singular. Most columns are paths like `$.user_id`; the
/// general evaluator also builds a normalized path string for every match, which is work on
/// every column of every message that nothing here reads. Same semantics as the evaluator
/// (checked by a test): a name selects a member of an object, an index an element of an array,
/// a negative index counts from the end.
fn singular_lookup<'a>(
    query: &jsonpath_rust::parser::model::JpQuery,
    body: &'a J,
) -> Option<Option<&'a J>> {
    use jsonpath_rust::parser::model::{Segment, Selector};
    let mut cur = Some(body);
    for s in &query.segments {
        cur = match s {
            Segment::Selector(Selector::Name(name)) => cur.and_then(|v| v.get(name.as_str())),
            Segment::Selector(Selector::Index(i)) => cur.and_then(|v| {
                let a = v.as_array()?;
                let idx = if *i >= 0 {
                    usize::try_from(*i).ok()?
                } else {
                    a.len()
                        .checked_sub(usize::try_from(i.unsigned_abs()).ok()?)?
                };
                a.get(idx)
            }),
            _ => return None,
        };
    }
    Some(cur)
}

/// Whether a query can match at most one node (RFC 9535 "singular query"): names and indexes only.
pub fn is_singular(query: &jsonpath_rust::parser::model::JpQuery) -> bool {
    use jsonpath_rust::parser::model::{Segment, Selector};
    query
        .segments
        .iter()
        .all(|s| matches!(s, Segment::Selector(Selector::Name(_) | Selector::Index(_))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    fn msg() -> ReceivedMessage {
        ReceivedMessage {
            message_id: "m1".into(),
            receipt_handle: String::new(),
            body: String::new(),
            attributes: HashMap::from([("SentTimestamp".into(), "1700000000000".into())]),
            message_attributes: HashMap::from([("tenant".into(), "acme".into())]),
        }
    }

    fn path(p: &str) -> ColumnSource {
        ColumnSource::Path {
            text: p.into(),
            query: jsonpath_rust::parser::parse_json_path(p).unwrap(),
        }
    }

    #[test]
    fn paths_and_metadata() {
        let body = json!({"a": {"b": 1}, "n": null, "items": [{"sku": "x"}, {"sku": "y"}]});
        assert_eq!(
            extract(&path("$.a.b"), &body, None, &msg(), &DecodedMeta::default()).unwrap(),
            Val::Json(json!(1))
        );
        assert_eq!(
            extract(
                &path("$.missing"),
                &body,
                None,
                &msg(),
                &DecodedMeta::default()
            )
            .unwrap(),
            Val::Null
        );
        assert_eq!(
            extract(&path("$.n"), &body, None, &msg(), &DecodedMeta::default()).unwrap(),
            Val::Null
        );
        assert_eq!(
            extract(
                &path("$.items[*].sku"),
                &body,
                None,
                &msg(),
                &DecodedMeta::default()
            )
            .unwrap(),
            Val::Json(json!(["x", "y"]))
        );
        assert_eq!(
            extract(
                &path("$.items[0].sku"),
                &body,
                None,
                &msg(),
                &DecodedMeta::default()
            )
            .unwrap(),
            Val::Json(json!("x"))
        );
        // One match of a wildcard or filter is still a list: the shape follows the path, not the data.
        let one = json!({"items": [{"sku": "x", "gift": true}, {"sku": "y", "gift": false}]});
        assert_eq!(
            extract(
                &path("$.items[?@.gift == true].sku"),
                &one,
                None,
                &msg(),
                &DecodedMeta::default()
            )
            .unwrap(),
            Val::Json(json!(["x"]))
        );
        assert_eq!(
            extract(
                &path("$.items[1:].sku"),
                &one,
                None,
                &msg(),
                &DecodedMeta::default()
            )
            .unwrap(),
            Val::Json(json!(["y"]))
        );
        assert_eq!(
            extract(
                &path("$.items[?@.gift == 7].sku"),
                &one,
                None,
                &msg(),
                &DecodedMeta::default()
            )
            .unwrap(),
            Val::Null
        );
        assert_eq!(
            extract(
                &ColumnSource::Meta(MetaField::SentTimestamp),
                &body,
                None,
                &msg(),
                &DecodedMeta::default()
            )
            .unwrap(),
            Val::BigInt(1_700_000_000_000)
        );
        assert_eq!(
            extract(
                &ColumnSource::Meta(MetaField::MessageAttribute("tenant".into())),
                &body,
                None,
                &msg(),
                &DecodedMeta::default()
            )
            .unwrap(),
            Val::Text("acme".into())
        );
        assert_eq!(
            extract(
                &ColumnSource::Meta(MetaField::ReceiveCount),
                &body,
                None,
                &msg(),
                &DecodedMeta::default()
            )
            .unwrap(),
            Val::Null
        );
    }

    #[test]
    fn sns_metadata() {
        let decoded = DecodedMeta {
            sns: Some(crate::decode::SnsMeta {
                message_id: "sns-1".into(),
                topic_arn: "arn:t".into(),
                timestamp: Some("2024-05-01T12:00:00.000Z".into()),
                subject: None,
                message_attributes: [("tenant".to_string(), "acme".to_string())].into(),
            }),
        };
        let get = |f: SnsField| {
            extract(
                &ColumnSource::Meta(MetaField::Sns(f)),
                &J::Null,
                None,
                &msg(),
                &decoded,
            )
        };
        assert_eq!(get(SnsField::MessageId), Ok(Val::Text("sns-1".into())));
        assert_eq!(get(SnsField::TopicArn), Ok(Val::Text("arn:t".into())));
        assert_eq!(get(SnsField::Subject), Ok(Val::Null));
        assert_eq!(
            get(SnsField::MessageAttribute("tenant".into())),
            Ok(Val::Text("acme".into()))
        );
        assert_eq!(
            get(SnsField::MessageAttribute("other".into())),
            Ok(Val::Null)
        );
        assert_eq!(
            get(SnsField::Timestamp).unwrap().to_text().as_deref(),
            Some("2024-05-01T12:00:00.000Z")
        );
    }

    #[test]
    fn singular_fast_path_agrees_with_the_evaluator() {
        let body = json!({
            "user_id": "u", "n": null, "a b": {"c": [10, 20, {"d": "deep"}]},
            "arr": [1, 2, 3], "obj": {"0": "zero"}, "num": 5
        });
        for p in [
            "$.user_id",
            "$.missing",
            "$.n",
            "$['a b'].c[2].d",
            "$[\"a b\"].c[0]",
            "$.arr[0]",
            "$.arr[-1]",
            "$.arr[-3]",
            "$.arr[-4]",
            "$.arr[3]",
            "$.obj[0]",
            "$.arr.x",
            "$.num.x",
            "$.user_id[0]",
            "$",
            "$.obj['0']",
        ] {
            let q = jsonpath_rust::parser::parse_json_path(p).unwrap();
            let fast = singular_lookup(&q, &body).expect(p).cloned();
            let slow = jsonpath_rust::query::js_path_process(&q, &body).unwrap();
            let slow = slow.first().map(|r| r.val.clone());
            assert_eq!(fast, slow, "{p}");
        }
        let q = jsonpath_rust::parser::parse_json_path("$.arr[*]").unwrap();
        assert!(
            singular_lookup(&q, &body).is_none(),
            "a wildcard is not singular"
        );
    }
}

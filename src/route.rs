//! Route and expand: whether a condition (`filter:`, `when:`) holds for a message or a
//! `for_each` element, and which elements a `for_each` path yields.
//!
//! Pure functions over the decoded body; the conditions were parsed when the spec was loaded.

use crate::extract::path_value;
use crate::spec::ForEach;
use crate::spec::condition::{CmpOp, Condition, Operand, Test};
use crate::value::Val;
use serde_json::Value as J;
use std::cmp::Ordering;

/// Whether `cond` holds for the message `body` (and the current element, for `@` paths).
pub fn holds(cond: &Condition, body: &J, element: Option<&J>) -> Result<bool, String> {
    match &cond.test {
        Test::Truthy(op) => Ok(match operand(op, body, element)? {
            Val::Null => false,
            Val::Json(J::Bool(b)) => b,
            Val::Json(J::Array(a)) if !is_singular(op) => !a.is_empty(),
            _ => true,
        }),
        Test::Compare { left, op, right } => {
            let v = match operand(left, body, element)? {
                Val::Json(v) => v,
                _ => J::Null,
            };
            Ok(match op {
                CmpOp::Eq => equal(&v, right),
                CmpOp::Ne => !equal(&v, right),
                CmpOp::Lt => order(&v, right) == Some(Ordering::Less),
                CmpOp::Le => matches!(order(&v, right), Some(Ordering::Less | Ordering::Equal)),
                CmpOp::Gt => order(&v, right) == Some(Ordering::Greater),
                CmpOp::Ge => matches!(order(&v, right), Some(Ordering::Greater | Ordering::Equal)),
            })
        }
    }
}

/// The elements a `for_each` path yields: the items of the array it finds (so `$.items` and
/// `$.items[*]` both work, and `$` takes a body that is an array of events apart), or the one
/// value it finds (so `$` also takes a body that is a single event), or every match of a path
/// that finds several. Nothing found (or null) yields no element.
pub fn elements<'a>(for_each: &ForEach, body: &'a J) -> Result<Vec<&'a J>, String> {
    let found = jsonpath_rust::query::js_path_process(&for_each.query, body)
        .map_err(|e| format!("for_each {}: JSONPath failed: {e}", for_each.text))?;
    Ok(match found.as_slice() {
        [] => Vec::new(),
        [one] => match one.val {
            J::Null => Vec::new(),
            J::Array(items) => items.iter().collect(),
            v => vec![v],
        },
        many => many.iter().map(|r| r.val).collect(),
    })
}

fn operand(op: &Operand, body: &J, element: Option<&J>) -> Result<Val, String> {
    let target = if op.element {
        element.ok_or_else(|| format!("{} reads a for_each element, and there is none", op.text))?
    } else {
        body
    };
    path_value(&op.query, target)
}

/// A path of names and indexes only finds at most one value.
fn is_singular(op: &Operand) -> bool {
    use jsonpath_rust::parser::model::{Segment, Selector};
    op.query
        .segments
        .iter()
        .all(|s| matches!(s, Segment::Selector(Selector::Name(_) | Selector::Index(_))))
}

/// JSON equality, with numbers compared by value (`1` equals `1.0`).
fn equal(a: &J, b: &J) -> bool {
    match (a, b) {
        (J::Number(x), J::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Numbers by value, strings lexically; anything else has no order (the comparison is false).
fn order(a: &J, b: &J) -> Option<Ordering> {
    match (a, b) {
        (J::Number(x), J::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (J::String(x), J::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::condition::{parse, parse_operand};
    use serde_json::json;

    fn check(cond: &str, body: &J, element: Option<&J>) -> bool {
        holds(&parse(cond).unwrap(), body, element).unwrap()
    }

    #[test]
    fn comparisons_and_presence() {
        let body = json!({"type": "purchase", "n": 3, "coupon": null, "test": false, "tags": []});
        assert!(check("$.type == 'purchase'", &body, None));
        assert!(!check("$.type == 'page_view'", &body, None));
        assert!(check("$.type != 'page_view'", &body, None));
        assert!(check("$.n == 3.0", &body, None));
        assert!(check("$.n > 2", &body, None));
        assert!(!check("$.n > 3", &body, None));
        assert!(check("$.n >= 3", &body, None));
        assert!(!check("$.type > 3", &body, None), "no order between kinds");
        assert!(!check("$.coupon", &body, None), "null is absent");
        assert!(!check("$.missing", &body, None));
        assert!(!check("$.test", &body, None), "false is false");
        assert!(check("$.tags", &body, None), "an empty array is present");
        assert!(check("$.missing == null", &body, None));
    }

    #[test]
    fn filters_and_elements() {
        let body = json!([{"type": "page_view"}, {"type": "purchase"}]);
        assert!(check("$[?(@.type == 'purchase')]", &body, None));
        assert!(!check("$[?(@.type == 'refund')]", &body, None));
        let el = json!({"qty": 2});
        assert!(check("@.qty > 1", &body, Some(&el)));
        assert!(holds(&parse("@.qty > 1").unwrap(), &body, None).is_err());
    }

    #[test]
    fn for_each_takes_arrays_apart_and_single_values_whole() {
        let fe = |p: &str| ForEach {
            text: p.into(),
            query: parse_operand(p).unwrap().query,
        };
        let order = json!({"items": [{"sku": "a"}, {"sku": "b"}], "none": null});
        assert_eq!(elements(&fe("$.items[*]"), &order).unwrap().len(), 2);
        assert_eq!(elements(&fe("$.items"), &order).unwrap().len(), 2);
        assert_eq!(elements(&fe("$.none"), &order).unwrap().len(), 0);
        assert_eq!(elements(&fe("$.missing"), &order).unwrap().len(), 0);
        let one = json!({"type": "page_view"});
        assert_eq!(elements(&fe("$"), &one).unwrap(), vec![&one]);
        let many = json!([{"type": "a"}, {"type": "b"}, {"type": "c"}]);
        assert_eq!(elements(&fe("$"), &many).unwrap().len(), 3);
    }
}

//! Conditions of `filter:` and `when:`, parsed once at load time so a typo is a spec error
//! naming the key, not a surprise per message.
//!
//! Three forms, chosen because people already write them in JSONPath tools and SQL:
//! - `PATH OP VALUE`, e.g. `$.type == 'page_view'`, `@.qty > 0`, `$.test != true`: the path's
//!   value compared with a JSON literal (strings in single or double quotes);
//! - `PATH` alone, e.g. `$.coupon`: true when the value is present and not null or false;
//! - a JSONPath filter, e.g. `$[?(@.type == 'purchase')]`: true when it finds anything.
//!
//! `$` reads the whole (decoded) message; `@` reads the current `for_each` element.

use jsonpath_rust::parser::model::JpQuery;
use serde_json::Value as J;

/// A parsed condition.
#[derive(Debug, Clone)]
pub struct Condition {
    /// As written in the spec, for messages.
    pub text: String,
    /// What to evaluate.
    pub test: Test,
}

/// The two shapes of a condition.
#[derive(Debug, Clone)]
pub enum Test {
    /// True when the operand is present and not null or false (for a path that is not singular,
    /// when it finds anything).
    Truthy(Operand),
    /// The operand compared with a literal.
    Compare {
        /// Left side.
        left: Operand,
        /// Operator.
        op: CmpOp,
        /// Right side, a JSON literal.
        right: J,
    },
}

/// Where a condition reads its value.
#[derive(Debug, Clone)]
pub struct Operand {
    /// The path as written (`$…` or `@…`).
    pub text: String,
    /// The compiled path (an `@` path compiled as `$…`, applied to the element).
    pub query: JpQuery,
    /// Whether it reads the `for_each` element (`@`) rather than the whole message (`$`).
    pub element: bool,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Condition {
    /// Whether the condition reads a `for_each` element (`@`).
    pub fn reads_element(&self) -> bool {
        match &self.test {
            Test::Truthy(o) | Test::Compare { left: o, .. } => o.element,
        }
    }
}

/// Parses a JSONPath operand: `$…` or `@…`.
pub fn parse_operand(text: &str) -> Result<Operand, String> {
    let text = text.trim();
    let (element, path) = match text.strip_prefix('@') {
        Some(rest) => (true, format!("${rest}")),
        None if text.starts_with('$') => (false, text.to_string()),
        None => {
            return Err(format!(
                "`{text}` must be a JSONPath starting with `$` (the message) or `@` (the for_each element)"
            ));
        }
    };
    let query = jsonpath_rust::parser::parse_json_path(&path)
        .map_err(|e| format!("invalid JSONPath `{text}`: {}", first_line(&e.to_string())))?;
    Ok(Operand {
        text: text.to_string(),
        query,
        element,
    })
}

/// Parses a condition (see the module documentation for the forms).
pub fn parse(text: &str) -> Result<Condition, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("an empty condition; write e.g. `$.type == 'page_view'`".into());
    }
    let test = match split_operator(trimmed) {
        Some((left, op, right)) => {
            let left = parse_operand(left)?;
            let right = parse_literal(right.trim())?;
            Test::Compare { left, op, right }
        }
        None => Test::Truthy(parse_operand(trimmed)?),
    };
    Ok(Condition {
        text: trimmed.to_string(),
        test,
    })
}

/// Finds the comparison operator outside quotes and brackets: `(left, op, right)`.
fn split_operator(s: &str) -> Option<(&str, CmpOp, &str)> {
    let bytes = s.as_bytes();
    let mut depth = 0i32;
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                b'\'' | b'"' => quote = Some(c),
                b'[' | b'(' => depth += 1,
                b']' | b')' => depth -= 1,
                b'=' | b'!' | b'<' | b'>' if depth == 0 => {
                    let two = bytes.get(i + 1) == Some(&b'=');
                    let op = match (c, two) {
                        (b'=', true) => CmpOp::Eq,
                        (b'!', true) => CmpOp::Ne,
                        (b'<', true) => CmpOp::Le,
                        (b'>', true) => CmpOp::Ge,
                        (b'<', false) => CmpOp::Lt,
                        (b'>', false) => CmpOp::Gt,
                        _ => {
                            i += 1;
                            continue;
                        }
                    };
                    let len = if two { 2 } else { 1 };
                    return Some((&s[..i], op, &s[i + len..]));
                }
                _ => {}
            },
        }
        i += 1;
    }
    None
}

/// A JSON literal, also accepting single-quoted strings (`'page_view'`).
fn parse_literal(s: &str) -> Result<J, String> {
    if let Some(inner) = s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return Ok(J::String(inner.to_string()));
    }
    serde_json::from_str(s).map_err(|_| {
        format!("`{s}` is not a value to compare with: quote strings ('text'), or use a number, true, false or null")
    })
}

fn first_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_parse_with_either_quote() {
        for (text, op, right) in [
            ("$.type == 'page_view'", CmpOp::Eq, J::from("page_view")),
            ("$.type==\"purchase\"", CmpOp::Eq, J::from("purchase")),
            ("@.qty > 0", CmpOp::Gt, J::from(0)),
            ("$.test != true", CmpOp::Ne, J::Bool(true)),
            ("$.n <= 2.5", CmpOp::Le, J::from(2.5)),
        ] {
            let c = parse(text).unwrap();
            match c.test {
                Test::Compare {
                    op: o, right: r, ..
                } => {
                    assert_eq!(o, op, "{text}");
                    assert_eq!(r, right, "{text}");
                }
                Test::Truthy(_) => panic!("{text} should compare"),
            }
        }
        assert!(parse("@.qty > 0").unwrap().reads_element());
    }

    #[test]
    fn a_jsonpath_filter_is_one_operand() {
        let c = parse("$[?(@.type == 'purchase')]").unwrap();
        assert!(matches!(c.test, Test::Truthy(_)));
        assert!(!c.reads_element());
    }

    #[test]
    fn bad_conditions_say_what_is_wrong() {
        assert!(parse("").unwrap_err().contains("empty"));
        assert!(
            parse("type == 'x'")
                .unwrap_err()
                .contains("must be a JSONPath")
        );
        assert!(
            parse("$.type == page_view")
                .unwrap_err()
                .contains("quote strings")
        );
        assert!(parse("$.[ == 1").is_err());
    }
}

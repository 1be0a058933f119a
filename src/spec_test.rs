//! Spec unit tests: the `tests:` block of a spec, run through the same decode → extract →
//! transforms code as `run`, with no queue and no database.
//!
//! Hashing and encryption use [`Keyring::fixed_test_keyring`], so tokens are the same on every
//! machine and can be written into expectations literally. To avoid pasting 64-hex tokens, an
//! expected value may also be `{hash_of: "raw value"}`: it stands for the test keyring's token of
//! that text (what both `hash` and `encrypt` put in the column).
//!
//! `expect_row` is the whole row: every column is compared, and a column left out of it fails
//! the test, so adding a column to a spec makes its tests say what the column should hold.

use crate::crypto::Keyring;
use crate::process::{Outcome, Processor};
use crate::source::ReceivedMessage;
use crate::spec::{SourceConfig, Spec, SpecTestConfig};
use crate::transform::{DomainTokenizer, Tokenizer};
use serde_json::Value as J;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// The key of an expected value that stands for a token: `{hash_of: "raw value"}`.
pub const HASH_OF: &str = "hash_of";

/// What one spec test found.
#[derive(Debug, Clone, PartialEq)]
pub struct TestReport {
    /// The test's `name`.
    pub name: String,
    /// Empty when the test passed.
    pub failures: Vec<Failure>,
}

impl TestReport {
    /// Whether the test passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// One way a test's expectation was not met. Values shown are the test's own fixtures and the
/// rows computed from them with the public test keyring, never production data.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// A column holds something other than expected.
    Column {
        column: String,
        expected: J,
        actual: J,
    },
    /// `expect_row` does not list a column the spec writes.
    Unlisted { column: String, actual: J },
    /// A row was expected, the message was rejected.
    Rejected { reason: String },
    /// A row or a reject was expected, the message was skipped.
    Skipped { reason: String },
    /// A reject or a skip was expected, the message gave rows (table, row).
    Accepted {
        rows: Vec<(String, BTreeMap<String, J>)>,
    },
    /// Another number of rows in a table than expected.
    RowCount {
        table: String,
        expected: usize,
        actual: usize,
    },
    /// Rejected or skipped, but for another reason.
    Reason { expected: String, actual: String },
}

fn show(v: &J) -> String {
    match v {
        J::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Column {
                column,
                expected,
                actual,
            } => {
                write!(
                    f,
                    "column {column}:\n  - expected: {}\n  + actual:   {}",
                    show(expected),
                    show(actual)
                )
            }
            Failure::Unlisted { column, actual } => {
                write!(
                    f,
                    "column {column}: not in expect_row (every column is checked)\n  + actual:   {}",
                    show(actual)
                )
            }
            Failure::Rejected { reason } => write!(
                f,
                "expected a row, but the message was rejected:\n  + reason:   {reason}"
            ),
            Failure::Skipped { reason } => write!(
                f,
                "expected a row or a reject, but the message was skipped:\n  + reason:   {reason}"
            ),
            Failure::Accepted { rows } => {
                write!(f, "expected a reject or a skip, but the message gave rows:")?;
                for (table, row) in rows {
                    write!(f, "\n  + {table}:")?;
                    for (k, v) in row {
                        write!(f, " {k}={}", show(v))?;
                    }
                }
                Ok(())
            }
            Failure::RowCount {
                table,
                expected,
                actual,
            } => write!(
                f,
                "table {table}:\n  - expected: {expected} rows\n  + actual:   {actual} rows"
            ),
            Failure::Reason { expected, actual } => {
                write!(
                    f,
                    "reject reason does not contain the expected text:\n  - expected: …{expected}…\n  + actual:   {actual}"
                )
            }
        }
    }
}

/// Builds the message a test describes: its body and metadata, as a source would deliver it.
/// Metadata not given is absent (as in a JSON Lines file), so columns reading it are null.
pub fn test_message(test: &SpecTestConfig, index: usize) -> ReceivedMessage {
    let body = match (&test.body, test.raw) {
        (J::String(s), true) => s.clone(),
        (other, _) => other.to_string(),
    };
    let text = |v: &J| match v {
        J::String(s) => s.clone(),
        other => other.to_string(),
    };
    let map = |v: Option<&J>| -> HashMap<String, String> {
        v.and_then(J::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), text(v))).collect())
            .unwrap_or_default()
    };
    let mut attributes = map(test.meta.get("attributes"));
    if let Some(v) = test.meta.get("sent_timestamp") {
        attributes.insert("SentTimestamp".into(), text(v));
    }
    if let Some(v) = test.meta.get("receive_count") {
        attributes.insert("ApproximateReceiveCount".into(), text(v));
    }
    ReceivedMessage {
        message_id: test
            .meta
            .get("message_id")
            .map(text)
            .unwrap_or_else(|| format!("test-{}", index + 1)),
        receipt_handle: String::new(),
        body,
        attributes,
        message_attributes: map(test.meta.get("message_attributes")),
    }
}

/// A processor for `spec` keyed with the fixed test keyring.
pub fn test_processor(spec: &Spec) -> Result<(Processor, Tokenizer), String> {
    let ring = Keyring::fixed_test_keyring();
    // The fixed keyring always has exactly one active hash key.
    let tokenizer = Tokenizer::new(&ring.hash_keys[0])
        .map_err(|e| e.to_string())?
        .legacy(spec.vault.legacy_tokens);
    let max_receive = match &spec.source {
        SourceConfig::Sqs(s) => Some(s.max_receive_count),
        SourceConfig::File(_) => None,
    };
    let processor = Processor::new(spec, Some(tokenizer.clone()), max_receive)?;
    Ok((processor, tokenizer))
}

/// Runs every test of `spec`, in order. Fails only if the spec's transforms cannot be built.
pub fn run_spec_tests(spec: &Spec) -> Result<Vec<TestReport>, String> {
    let (processor, _) = test_processor(spec)?;
    Ok(spec
        .tests
        .iter()
        .enumerate()
        .map(|(i, t)| TestReport {
            name: t.name.clone(),
            failures: check(&processor, t, i),
        })
        .collect())
}

fn check(processor: &Processor, test: &SpecTestConfig, index: usize) -> Vec<Failure> {
    let processed = processor.process(test_message(test, index));
    let outputs = processor.outputs();
    match (&processed.outcome, test) {
        (Outcome::Rows { rows, .. }, t) if t.expect_row.is_some() || t.expect_rows.is_some() => {
            // The rows by table, as JSON, in the order they were produced.
            type Got = (usize, BTreeMap<String, J>);
            let mut got: BTreeMap<&str, Vec<Got>> = BTreeMap::new();
            for r in rows {
                let o = &outputs[r.output];
                got.entry(o.table.as_str()).or_default().push((
                    r.output,
                    o.columns
                        .iter()
                        .zip(&r.values)
                        .map(|(c, v)| (c.name.clone(), v.to_json()))
                        .collect(),
                ));
            }
            let mut failures = Vec::new();
            if let Some(expected) = &t.expect_row {
                let all: Vec<&Got> = got.values().flatten().collect();
                match all.as_slice() {
                    [(oi, one)] => compare_row("", expected, one, (processor, *oi), &mut failures),
                    _ => failures.push(Failure::RowCount {
                        table: got.keys().copied().collect::<Vec<_>>().join(", "),
                        expected: 1,
                        actual: all.len(),
                    }),
                }
            }
            if let Some(expected) = &t.expect_rows {
                for o in outputs {
                    let want = expected.get(&o.table).map_or(&[][..], Vec::as_slice);
                    let have = got.get(o.table.as_str()).map_or(&[][..], Vec::as_slice);
                    if want.len() != have.len() {
                        failures.push(Failure::RowCount {
                            table: o.table.clone(),
                            expected: want.len(),
                            actual: have.len(),
                        });
                        continue;
                    }
                    for (i, (w, (oi, h))) in want.iter().zip(have).enumerate() {
                        let at = format!("{}[{i}].", o.table);
                        compare_row(&at, w, h, (processor, *oi), &mut failures);
                    }
                }
            }
            failures
        }
        (Outcome::Rows { rows, .. }, _) => vec![Failure::Accepted {
            rows: rows
                .iter()
                .map(|r| {
                    let o = &outputs[r.output];
                    (
                        o.table.clone(),
                        o.columns
                            .iter()
                            .zip(&r.values)
                            .map(|(c, v)| (c.name.clone(), v.to_json()))
                            .collect(),
                    )
                })
                .collect(),
        }],
        (Outcome::Reject { reason }, t) => match &t.expect_reject {
            Some(want) if reason.contains(want.as_str()) => Vec::new(),
            Some(want) => vec![Failure::Reason {
                expected: want.clone(),
                actual: reason.clone(),
            }],
            None => vec![Failure::Rejected {
                reason: reason.clone(),
            }],
        },
        (Outcome::Skip { reason }, t) => match &t.expect_skip {
            Some(want) if reason.contains(want.as_str()) => Vec::new(),
            Some(want) => vec![Failure::Reason {
                expected: want.clone(),
                actual: reason.clone(),
            }],
            None => vec![Failure::Skipped {
                reason: reason.clone(),
            }],
        },
    }
}

/// Compares one produced row with its expectation; every column must be listed.
fn compare_row(
    at: &str,
    expected: &BTreeMap<String, J>,
    actual: &BTreeMap<String, J>,
    (processor, output): (&Processor, usize),
    failures: &mut Vec<Failure>,
) {
    for (column, value) in actual {
        let column_at = format!("{at}{column}");
        match expected.get(column) {
            None => failures.push(Failure::Unlisted {
                column: column_at,
                actual: value.clone(),
            }),
            Some(e) if !matches(e, value, processor.tokenizer_of(output, column)) => {
                failures.push(Failure::Column {
                    column: column_at,
                    expected: e.clone(),
                    actual: value.clone(),
                })
            }
            Some(_) => {}
        }
    }
}

/// Whether `actual` meets `expected`: equal JSON, a `{hash_of: ...}` token, or the same instant
/// written another way (`2024-05-01T12:00:00+02:00` meets `2024-05-01T10:00:00.000Z`).
fn matches(expected: &J, actual: &J, tokenizer: Option<&DomainTokenizer>) -> bool {
    if expected == actual {
        return true;
    }
    if let J::Object(m) = expected
        && let (1, Some(J::String(raw))) = (m.len(), m.get(HASH_OF))
    {
        // `hash_of` names the token in the column's own domain; a column without tokens has none.
        return tokenizer
            .is_some_and(|t| actual.as_str() == Some(t.token(raw.as_bytes()).as_str()));
    }
    match (expected, actual) {
        (J::String(e), J::String(a)) => match (
            chrono::DateTime::parse_from_rfc3339(e),
            chrono::DateTime::parse_from_rfc3339(a),
        ) {
            (Ok(e), Ok(a)) => e == a,
            _ => false,
        },
        // 3 and 3.0 are the same number in YAML.
        (J::Number(e), J::Number(a)) => e.as_f64().is_some() && e.as_f64() == a.as_f64(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_spec_str;
    use std::path::Path;

    const SPEC: &str = r#"
name: t
source: {type: sqs, queue: q}
target: {url: "postgres://u@h/db", table: t}
columns:
  user_id: {path: $.user_id, required: true}
  masked_ip:
    path: $.ip
    transforms: [{type: encrypt}]
  day:
    meta: sent_timestamp
    transforms: [{type: from_epoch, to: date}]
  seen:
    meta: sent_timestamp
    transforms: [{type: from_epoch, to: timestamp}]
tests:
  - name: row
    body: {user_id: u1, ip: 10.0.0.1}
    meta: {sent_timestamp: 1700000000000}
    expect_row: {user_id: u1, masked_ip: {hash_of: 10.0.0.1}, day: "2023-11-14", seen: "2023-11-14T23:13:20+01:00"}
  - name: bad json
    body: '{"user_id": '
    raw: true
    expect_reject: "decode: body is not valid JSON"
"#;

    fn spec(text: &str) -> Spec {
        parse_spec_str(text, Path::new("t.yaml"), false).unwrap()
    }

    #[test]
    fn passing_tests_pass() {
        let reports = run_spec_tests(&spec(SPEC)).unwrap();
        assert_eq!(reports.len(), 2);
        assert!(reports.iter().all(TestReport::passed), "{reports:?}");
    }

    #[test]
    fn every_kind_of_mismatch_is_reported() {
        let changed = SPEC
            .replace(
                "masked_ip: {hash_of: 10.0.0.1}",
                "masked_ip: {hash_of: 10.0.0.2}",
            )
            .replace("day: \"2023-11-14\", ", "")
            .replace(
                "expect_reject: \"decode: body is not valid JSON\"",
                "expect_reject: \"required value\"",
            );
        let reports = run_spec_tests(&spec(&changed)).unwrap();
        let f = &reports[0].failures;
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(
            matches!(&f[0], Failure::Unlisted { column, actual } if column == "day" && actual == "2023-11-14")
        );
        let Failure::Column { column, actual, .. } = &f[1] else {
            panic!("{f:?}")
        };
        assert_eq!(column, "masked_ip");
        let ring = Keyring::fixed_test_keyring();
        assert_eq!(
            actual.as_str(),
            Some(
                Tokenizer::new(&ring.hash_keys[0])
                    .unwrap()
                    .domain("t.masked_ip")
                    .token(b"10.0.0.1")
                    .as_str()
            )
        );
        assert!(
            f[1].to_string()
                .contains("- expected: {\"hash_of\":\"10.0.0.2\"}"),
            "{}",
            f[1]
        );
        assert!(matches!(&reports[1].failures[..], [Failure::Reason { .. }]));

        let flipped = SPEC.replace("body: {user_id: u1, ip: 10.0.0.1}", "body: {ip: 10.0.0.1}");
        let reports = run_spec_tests(&spec(&flipped)).unwrap();
        let [Failure::Rejected { reason }] = &reports[0].failures[..] else {
            panic!("{reports:?}")
        };
        assert!(
            reason.contains("column user_id: required value"),
            "{reason}"
        );
    }

    #[test]
    fn metadata_reaches_the_message() {
        let t: SpecTestConfig = serde_json::from_value(serde_json::json!({
            "name": "m", "body": {"a": 1}, "expect_reject": "x",
            "meta": {"message_id": "id-1", "sent_timestamp": "17", "receive_count": 3,
                     "attributes": {"SenderId": "AID"}, "message_attributes": {"tenant": "acme", "n": 5}}
        }))
        .unwrap();
        let m = test_message(&t, 0);
        assert_eq!(m.message_id, "id-1");
        assert_eq!(m.body, r#"{"a":1}"#);
        assert_eq!(m.attributes["SentTimestamp"], "17");
        assert_eq!(m.attributes["ApproximateReceiveCount"], "3");
        assert_eq!(m.attributes["SenderId"], "AID");
        assert_eq!(m.message_attributes["n"], "5");
    }

    /// Two hashed columns from one field, in table `table`; `domains` are their `token_domain`s.
    fn two_columns(table: &str, domains: [Option<&str>; 2]) -> Spec {
        let d = |x: Option<&str>| {
            x.map(|n| format!(", token_domain: {n}"))
                .unwrap_or_default()
        };
        spec(&format!(
            r#"
name: {table}
source: {{type: sqs, queue: q}}
target: {{url: "postgres://u@h/db", table: {table}}}
columns:
  a: {{path: $.ip, transforms: [{{type: hash}}]{}}}
  b: {{path: $.ip, transforms: [{{type: encrypt}}]{}}}
tests:
  - name: hash_of compares in each column's own domain
    body: {{ip: 10.9.8.7}}
    expect_row: {{a: {{hash_of: 10.9.8.7}}, b: {{hash_of: 10.9.8.7}}}}
"#,
            d(domains[0]),
            d(domains[1])
        ))
    }

    /// The row of a message with `ip`, and its vault entries' domains.
    fn row(spec: &Spec, ip: &str) -> (Vec<String>, Vec<String>) {
        let (p, _) = test_processor(spec).unwrap();
        let msg = ReceivedMessage {
            message_id: "m".into(),
            receipt_handle: String::new(),
            body: format!(r#"{{"ip": "{ip}"}}"#),
            attributes: HashMap::new(),
            message_attributes: HashMap::new(),
        };
        match p.process(msg).outcome {
            Outcome::Rows { rows, vault } => (
                rows[0]
                    .values
                    .iter()
                    .map(|v| v.to_json().to_string())
                    .collect(),
                vault.iter().map(|v| v.domain.to_string()).collect(),
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn token_domains_separate_columns_unless_they_share_one() {
        // Default: one domain per table.column, so the same IP gets two unrelated tokens.
        let s = two_columns("logins", [None, None]);
        let (v, domains) = row(&s, "10.9.8.7");
        assert_ne!(v[0], v[1]);
        assert_eq!(domains, ["logins.b"]);
        assert!(run_spec_tests(&s).unwrap().iter().all(TestReport::passed));
        // Both columns in one named domain: one token (a join is possible).
        let shared = two_columns("logins", [Some("ip"), Some("ip")]);
        let (w, domains) = row(&shared, "10.9.8.7");
        assert_eq!(w[0], w[1]);
        assert_eq!(domains, ["ip"]);
        assert_ne!(w[0], v[0]);
        assert!(
            run_spec_tests(&shared)
                .unwrap()
                .iter()
                .all(TestReport::passed)
        );
        // Across specs (other target table): equal in the shared domain, unequal by default.
        let other = two_columns("purchases", [Some("ip"), None]);
        let (x, _) = row(&other, "10.9.8.7");
        assert_eq!(x[0], w[0]);
        assert_ne!(x[1], v[1]);
        // Legacy tokens: one token for the value everywhere, as before domains.
        let legacy = spec(&SPEC.replace(
            "target: {url: \"postgres://u@h/db\", table: t}",
            "target: {url: \"postgres://u@h/db\", table: t}\nvault: {legacy_tokens: true}",
        ));
        assert!(legacy.vault.legacy_tokens);
        assert!(
            run_spec_tests(&legacy)
                .unwrap()
                .iter()
                .all(TestReport::passed)
        );
        let ring = Keyring::fixed_test_keyring();
        let (p, _) = test_processor(&legacy).unwrap();
        assert_eq!(
            p.tokenizer_of(0, "masked_ip").unwrap().token(b"abc"),
            Tokenizer::new(&ring.hash_keys[0])
                .unwrap()
                .legacy(true)
                .domain("anything")
                .token(b"abc")
        );
    }

    #[test]
    fn token_domain_is_checked() {
        let bad = |col: &str| {
            let text = SPEC.replace("  user_id: {path: $.user_id, required: true}", col);
            parse_spec_str(&text, Path::new("t.yaml"), false)
                .unwrap_err()
                .to_string()
        };
        let err = bad("  user_id: {path: $.user_id, token_domain: ids}");
        assert!(
            err.contains("columns.user_id.token_domain") && err.contains("`hash` or `encrypt`"),
            "{err}"
        );
        let err =
            bad("  user_id: {path: $.user_id, transforms: [{type: hash}], token_domain: \"a b\"}");
        assert!(err.contains("columns.user_id.token_domain"), "{err}");
    }
}

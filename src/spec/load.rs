//! Loading a spec: figment parses the YAML and merges the environment overrides once; then
//! validation collects every problem with its key path and file position before anything runs.
//!
//! Environment overrides: `ETL_SPEC_<KEY>__<SUBKEY>...`, e.g. `ETL_SPEC_TARGET__URL` for
//! `target.url` or `ETL_SPEC_SOURCE__POLLERS=8`. Keys are matched lowercased; values are parsed
//! by figment (numbers, booleans). Which key came from which variable is figment's own record
//! (each value's tag and its provider's [`Metadata`]), never re-derived from the environment.

use super::Spec;
use super::diagnose::Diagnostics;
pub use super::diagnose::{SpecError, SpecIssue, suggest};
pub use super::validate::TEST_META_KEYS;
use super::validate::Validator;
use figment::providers::{Env, Format, Yaml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde_json::Value as J;
use std::path::Path;

/// Prefix of environment variables that override spec keys.
pub const ENV_PREFIX: &str = "ETL_SPEC_";

/// The name of the environment provider's metadata: how a value's tag is known to be a variable.
const ENV_SOURCE: &str = "`ETL_SPEC_` environment variables";

/// Loads and validates a spec file, applying environment overrides.
pub fn load_spec(path: &Path) -> Result<Spec, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    parse_spec_str(&text, path, true)
}

/// Validates spec text; `file` is used for messages.
pub fn parse_spec_str(text: &str, file: &Path, with_env: bool) -> Result<Spec, SpecError> {
    // The only YAML parse of the spec. figment's YAML provider is serde_yaml, which is deprecated
    // upstream; a maintained fork (e.g. serde_yaml_ng or serde_norway) slots in here as a small
    // `figment::providers::Format` implementation in place of `Yaml`, nothing else changes.
    let from_file = Figment::from(Yaml::string(text));
    let merged = if with_env {
        from_file.clone().merge(EnvOverrides)
    } else {
        from_file.clone()
    };
    let root: J = merged.extract().map_err(|e| syntax_error(file, e))?;
    let sources = Sources { from_file, merged };
    let mut v = Validator {
        d: Diagnostics::new(text, &sources),
    };
    let spec = v.spec(&root, file);
    let issues = v.d.into_issues();
    match spec {
        Some(s) if issues.is_empty() => Ok(s),
        _ => Err(SpecError::Invalid {
            file: file.to_path_buf(),
            issues,
        }),
    }
}

/// figment's error as a syntax error. The YAML provider's error is serde_yaml's message, which
/// ends with " at line L column C": that is the position (1-based, as serde_yaml counts).
fn syntax_error(file: &Path, err: figment::Error) -> SpecError {
    // figment chains the errors of several providers; the first is the one that stopped it.
    let Some(first) = err.into_iter().next() else {
        return SpecError::Syntax {
            file: file.to_path_buf(),
            message: "cannot be read".into(),
            position: None,
        };
    };
    let from_yaml = first
        .metadata
        .as_ref()
        .is_some_and(|m| m.name.starts_with(Yaml::NAME));
    let (message, position) = match &first.kind {
        figment::error::Kind::Message(m) if from_yaml => split_location(m),
        _ => (first.to_string(), None),
    };
    SpecError::Syntax {
        file: file.to_path_buf(),
        message,
        position,
    }
}

/// serde_yaml's "message at line L column C[, while …]" as the message and (line, column).
fn split_location(msg: &str) -> (String, Option<(usize, usize)>) {
    let Some(i) = msg.find(" at line ") else {
        return (msg.to_string(), None);
    };
    let mut words = msg[i + " at line ".len()..].split([' ', ',']);
    let line = words.next().and_then(|l| l.parse().ok());
    let column = match (words.next(), words.next()) {
        (Some("column"), Some(c)) => c.parse().ok(),
        _ => None,
    };
    (msg[..i].to_string(), line.zip(column))
}

/// The `ETL_SPEC_*` variables: figment's `Env` provider, with metadata that names a key's variable.
///
/// `Env`'s own metadata interpolates `target.url` as `TARGET.URL` (it knows neither the prefix
/// nor the `__` split); this one gives `ETL_SPEC_TARGET__URL`, the name a person set.
struct EnvOverrides;

impl Provider for EnvOverrides {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_SOURCE).interpolater(|_: &Profile, keys: &[&str]| {
            let keys: Vec<String> = keys.iter().map(|k| k.to_ascii_uppercase()).collect();
            format!("{ENV_PREFIX}{}", keys.join("__"))
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        // figment reads the environment with `vars_os`, so a variable that is not UTF-8
        // (anywhere in the environment) is no panic.
        Env::prefixed(ENV_PREFIX).split("__").data()
    }
}

/// What figment loaded: to tell, for a key path, whether its value is the file's or a variable's.
pub(super) struct Sources {
    /// The file alone: a mapping that figment merged with variables carries the variables' tag,
    /// so only this says whether the mapping was in the file. (A clone of parsed data, not a
    /// second parse.)
    from_file: Figment,
    /// The file with the variables merged over it: what was validated.
    merged: Figment,
}

/// One step of a key path: `columns`, `transforms[0]`'s `0`.
enum Step<'p> {
    /// A mapping key.
    Key(&'p str),
    /// A sequence index.
    Index(usize),
}

/// `columns.c.transforms[0].type` as steps.
fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indexes) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        out.extend(
            indexes
                .split(['[', ']'])
                .filter_map(|i| i.parse().ok())
                .map(Step::Index),
        );
    }
    out
}

/// The value one step below `v`.
fn child<'v>(v: &'v Value, step: &Step<'_>) -> Option<&'v Value> {
    match (v, step) {
        (Value::Dict(_, d), Step::Key(k)) => d.get(*k),
        (Value::Array(_, a), Step::Index(i)) => a.get(*i),
        _ => None,
    }
}

impl Sources {
    /// The variables that set the value at `path` (or at its closest existing ancestor), by
    /// name; empty when the value is the file's.
    pub(super) fn env_vars(&self, path: &str) -> Vec<String> {
        let Ok(root) = self.merged.find_value("") else {
            return Vec::new();
        };
        let steps = steps(path);
        let mut node = &root;
        let mut depth = 0;
        while let Some(next) = steps.get(depth).and_then(|s| child(node, s)) {
            node = next;
            depth += 1;
        }
        if !self.is_env(node) {
            return Vec::new();
        }
        if matches!(node, Value::Dict(..)) {
            let in_file = self.from_file.find_value("").ok().is_some_and(|f| {
                let mut cur = Some(&f);
                for s in &steps[..depth] {
                    cur = cur.and_then(|c| child(c, s));
                }
                cur.is_some()
            });
            if in_file {
                return Vec::new();
            }
        }
        let mut keys: Vec<String> = steps[..depth]
            .iter()
            .map(|s| match s {
                Step::Key(k) => k.to_string(),
                Step::Index(i) => i.to_string(),
            })
            .collect();
        let mut vars = Vec::new();
        self.env_leaves(node, &mut keys, &mut vars);
        vars
    }

    /// Whether figment's tag on `v` is the environment provider's.
    fn is_env(&self, v: &Value) -> bool {
        self.env_metadata(v).is_some()
    }

    /// The environment provider's metadata, when `v` came from it.
    fn env_metadata(&self, v: &Value) -> Option<&Metadata> {
        self.merged
            .get_metadata(v.tag())
            .filter(|m| m.name == ENV_SOURCE)
    }

    /// The variable names of the values under `v` (at key path `keys`) that variables set.
    fn env_leaves(&self, v: &Value, keys: &mut Vec<String>, out: &mut Vec<String>) {
        match v {
            Value::Dict(_, d) => {
                for (k, child) in d {
                    keys.push(k.clone());
                    self.env_leaves(child, keys, out);
                    keys.pop();
                }
            }
            leaf => {
                if let Some(m) = self.env_metadata(leaf) {
                    out.push(m.interpolate(&Profile::Default, keys));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::ValType;

    const GOOD: &str = r#"
source:
  type: sqs
  queue: login-queue
  endpoint_url: http://127.0.0.1:4566
target:
  url: postgres://postgres:postgres@127.0.0.1:5432/postgres
  table: user_logins
columns:
  user_id:
    path: $.user_id
    required: true
  app_version:
    path: $.app_version
    transforms:
      - type: version_to_int
  create_date:
    meta: sent_timestamp
    transforms:
      - type: from_epoch
        to: date
name: t
"#;

    fn parse(text: &str) -> Result<Spec, SpecError> {
        parse_spec_str(text, Path::new("specs/t.yaml"), false)
    }

    #[test]
    fn good_spec_compiles_with_types() {
        let s = parse(GOOD).unwrap();
        assert_eq!(s.name, "t");
        let v = s.all_columns().find(|c| c.name == "app_version").unwrap();
        assert_eq!(v.out_type, ValType::Integer);
        let d = s.all_columns().find(|c| c.name == "create_date").unwrap();
        assert_eq!(d.out_type, ValType::Date);
    }

    #[test]
    fn reports_all_problems_with_paths_positions_and_suggestions() {
        let bad = GOOD
            .replace("type: version_to_int", "type: versoin_to_int")
            .replace("  table: user_logins", "  tabel: user_logins")
            .replace("required: true", "requird: true");
        let err = parse(&bad).unwrap_err();
        let SpecError::Invalid { issues, .. } = &err else {
            panic!("{err}")
        };
        let text = err.to_string();
        assert!(text.contains("columns.app_version.transforms[0].type: unknown transform \"versoin_to_int\" (did you mean `version_to_int`?)"), "{text}");
        assert!(
            text.contains("target.tabel: unknown key `tabel` (did you mean `table`?)"),
            "{text}"
        );
        assert!(
            text.contains(
                "columns.user_id.requird: unknown key `requird` (did you mean `required`?)"
            ),
            "{text}"
        );
        // Positions point at the offending line.
        let t = issues
            .iter()
            .find(|i| i.path.ends_with("transforms[0].type"))
            .unwrap();
        assert_eq!(t.position, Some((16, 9)));
        assert!(text.contains("specs/t.yaml:16:9"), "{text}");
    }

    #[test]
    fn name_is_required() {
        let (text, issues) = issues_of(&GOOD.replace("name: t\n", ""));
        assert_eq!(issues.len(), 1, "{text}");
        assert!(text.contains("specs/t.yaml:1:1: name: required: the pipeline name scopes the ledger and rejects; set it once and never change it (it was \"t\" by default before)"), "{text}");
        let (text, _) = issues_of(&GOOD.replace("name: t\n", "name:\n"));
        assert!(
            text.contains("specs/t.yaml:22:1: name: required: "),
            "{text}"
        );
        let (text, _) = issues_of(&GOOD.replace("name: t\n", "name: 3\n"));
        assert!(text.contains("name: must be a non-empty string"), "{text}");
        // A misspelled name is one problem, the misspelling.
        let (text, issues) = issues_of(&GOOD.replace("name: t\n", "nmae: t\n"));
        assert_eq!(issues.len(), 1, "{text}");
        assert!(
            text.contains("nmae: unknown key `nmae` (did you mean `name`?)"),
            "{text}"
        );
    }

    #[test]
    fn wrong_type_transforms_are_spec_errors() {
        let bad = GOOD.replace(
            "- type: version_to_int",
            "- type: version_to_int\n      - type: trim",
        );
        let text = parse(&bad).unwrap_err().to_string();
        assert!(text.contains("columns.app_version.transforms[1]: `trim` needs a text value, but the value is integer"), "{text}");
    }

    #[test]
    fn limits_and_sources_are_checked() {
        let bad = GOOD
            .replace(
                "endpoint_url: http://127.0.0.1:4566",
                "endpoint_url: http://127.0.0.1:4566\n  max_messages: 11\n  max_in_flight_bytes: 1000",
            )
            .replace("meta: sent_timestamp", "meta: sent_timestmp");
        let text = parse(&bad).unwrap_err().to_string();
        assert!(
            text.contains("source.max_messages: must be between 1 and 10"),
            "{text}"
        );
        assert!(text.contains("did you mean `sent_timestamp`"), "{text}");
        assert!(
            text.contains("source.max_in_flight_bytes: must be between 1048576"),
            "{text}"
        );
    }

    #[test]
    fn an_empty_top_level_key_is_named_and_placed() {
        let text = parse(&format!("\"\": 1\n{GOOD}")).unwrap_err().to_string();
        assert!(
            text.contains(": \"\": an empty key is not allowed (keys: name, source"),
            "{text}"
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        // figment's YAML provider carries serde_yaml's location in its message.
        let err = parse("source: [unclosed\n").unwrap_err();
        assert!(
            matches!(
                err,
                SpecError::Syntax {
                    position: Some((2, 1)),
                    ..
                }
            ),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("specs/t.yaml:2:1: invalid YAML: "),
            "{text}"
        );
        assert!(!text.contains(" at line "), "{text}");

        let err = parse("name: t\n  source: x\n").unwrap_err();
        assert!(err.to_string().starts_with("specs/t.yaml:2:9: "), "{err}");
    }

    #[test]
    fn a_spec_that_is_not_a_mapping_is_an_error() {
        let err = parse("- a\n- b\n").unwrap_err();
        assert!(err.to_string().starts_with("specs/t.yaml"), "{err}");
    }

    /// Tests that set `ETL_SPEC_*` variables hold this lock: every `with_env` parse sees them.
    static ENV_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn env_overrides_apply() {
        let _g = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // Safety: tests that touch ETL_SPEC_* variables are serialized by ENV_LOCK.
        unsafe { std::env::set_var("ETL_SPEC_TARGET__TABLE", "other_table") };
        let s = parse_spec_str(GOOD, Path::new("t.yaml"), true);
        unsafe { std::env::remove_var("ETL_SPEC_TARGET__TABLE") };
        assert_eq!(s.unwrap().target.table.as_deref(), Some("other_table"));
    }

    #[test]
    fn env_override_values_are_parsed_and_other_variables_may_be_any_bytes() {
        use std::os::unix::ffi::OsStringExt;
        let _g = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let junk = std::ffi::OsString::from_vec(vec![0xff, 0xfe]);
        // Safety: tests that touch the environment are serialized by ENV_LOCK.
        unsafe {
            std::env::set_var("ETL_SPEC_SOURCE__POLLERS", "8");
            std::env::set_var("ETL_SPECLOAD_TEST_NOT_UTF8", &junk);
        }
        let s = parse_spec_str(GOOD, Path::new("t.yaml"), true);
        unsafe {
            std::env::remove_var("ETL_SPEC_SOURCE__POLLERS");
            std::env::remove_var("ETL_SPECLOAD_TEST_NOT_UTF8");
        }
        let s = s.unwrap();
        let crate::spec::SourceConfig::Sqs(sqs) = &s.source else {
            panic!("{:?}", s.source)
        };
        assert_eq!(sqs.pollers, crate::spec::Pollers::Fixed(8));
    }

    /// Parses `text` with the given `ETL_SPEC_*` variables set; returns the error text.
    fn env_error(text: &str, vars: &[(&str, &str)]) -> (String, Vec<SpecIssue>) {
        let _g = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for (k, v) in vars {
            // Safety: serialized by ENV_LOCK.
            unsafe { std::env::set_var(k, v) };
        }
        let res = parse_spec_str(text, Path::new("specs/t.yaml"), true);
        for (k, _) in vars {
            unsafe { std::env::remove_var(k) };
        }
        match res.unwrap_err() {
            e @ SpecError::Invalid { .. } => {
                let text = e.to_string();
                let SpecError::Invalid { issues, .. } = e else {
                    unreachable!()
                };
                (text, issues)
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn env_override_errors_name_the_variable_not_a_line() {
        let (text, issues) = env_error(GOOD, &[("ETL_SPEC_SOURCE__POLLERS", "lots")]);
        assert!(
            text.contains("source.pollers: invalid value: string \"lots\", expected `auto` or a whole number of receive loops (1 to 64) (set by environment variable ETL_SPEC_SOURCE__POLLERS)"),
            "{text}"
        );
        assert_eq!(
            issues[0].position, None,
            "the YAML line would point at the wrong value"
        );

        let (text, _) = env_error(GOOD, &[("ETL_SPEC_SOURCE__POLLERS", "100")]);
        assert!(text.contains("source.pollers: must be between 1 and 64 (set by environment variable ETL_SPEC_SOURCE__POLLERS)"), "{text}");

        let (text, _) = env_error(GOOD, &[("ETL_SPEC_TARGT__URL", "postgres://x/y")]);
        assert!(text.contains("targt: unknown key `targt` (did you mean `target`?) (set by environment variable ETL_SPEC_TARGT__URL)"), "{text}");

        // A key that exists only because variables set keys below it names them all.
        let (text, issues) = env_error(
            GOOD,
            &[
                ("ETL_SPEC_VAUL__TABLE", "v"),
                ("ETL_SPEC_VAUL__KEYRING", "k"),
            ],
        );
        assert!(
            text.contains("vaul: unknown key `vaul` (did you mean `vault`?)"),
            "{text}"
        );
        assert!(
            text.contains(
                "(set by environment variables ETL_SPEC_VAUL__KEYRING, ETL_SPEC_VAUL__TABLE)"
            ),
            "{text}"
        );
        assert_eq!(issues[0].position, None);

        // A mapping that is in the file, with a key a variable set: the mapping's problems are
        // the file's.
        let (text, _) = env_error(
            &GOOD.replace("  table: user_logins\n", ""),
            &[("ETL_SPEC_TARGET__URL", "postgres://x/y")],
        );
        assert!(
            text.contains("specs/t.yaml:6:1: target.table: missing: name the target table"),
            "{text}"
        );

        let (text, _) = env_error(GOOD, &[("ETL_SPEC_TARGET__TABEL", "x")]);
        assert!(text.contains("target.tabel: unknown key `tabel` (did you mean `table`?) (set by environment variable ETL_SPEC_TARGET__TABEL)"), "{text}");
    }

    fn issues_of(text: &str) -> (String, Vec<SpecIssue>) {
        let err = parse(text).unwrap_err();
        let rendered = err.to_string();
        match err {
            SpecError::Invalid { issues, .. } => (rendered, issues),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn misspelled_key_inside_a_transform_points_at_the_key() {
        let (text, issues) = issues_of(&GOOD.replace("        to: date", "        too: date"));
        assert_eq!(issues.len(), 1, "no follow-up 'missing key `to`': {text}");
        assert_eq!(issues[0].path, "columns.create_date.transforms[0].too");
        assert!(
            issues[0]
                .message
                .contains("unknown key `too` (did you mean `to`?)"),
            "{text}"
        );
        assert_eq!(issues[0].position, Some((21, 9)), "{text}");
    }

    #[test]
    fn misspelled_values_name_their_key_and_the_closest_value() {
        let (text, issues) = issues_of(&GOOD.replace("  type: sqs", "  type: sqss"));
        assert_eq!(issues.len(), 1, "{text}");
        assert!(
            text.contains(
                "specs/t.yaml:3:3: source.type: unknown type \"sqss\" (did you mean `sqs`?)"
            ),
            "{text}"
        );

        let cast = GOOD.replace(
            "      - type: version_to_int",
            "      - type: cast\n        to: interger",
        );
        let (text, issues) = issues_of(&cast);
        assert_eq!(
            issues[0].path, "columns.app_version.transforms[0].to",
            "{text}"
        );
        assert!(
            text.contains("unknown value \"interger\" (did you mean `integer`?)"),
            "{text}"
        );
        assert_eq!(issues[0].position, Some((17, 9)));

        let (text, _) =
            issues_of(&GOOD.replace("        to: date", "        to: date\n        unit: milis"));
        assert!(text.contains("columns.create_date.transforms[0].unit: unknown value \"milis\" (did you mean `millis`?)"), "{text}");

        let (text, _) = issues_of(&GOOD.replace(
            "  queue: login-queue",
            "  queue: login-queue\n  protocol: jsn",
        ));
        assert!(
            text.contains("source.protocol: unknown value \"jsn\" (did you mean `json`?)"),
            "{text}"
        );

        let (text, _) = issues_of(&GOOD.replace(
            "  queue: login-queue",
            "  queue: login-queue\n  pollers: many",
        ));
        assert!(text.contains("specs/t.yaml:5:3: source.pollers: invalid value: string \"many\", expected `auto` or a whole number"), "{text}");
    }

    #[test]
    fn misspelled_required_top_key_is_one_problem() {
        let (text, issues) = issues_of(&GOOD.replace("columns:", "colums:"));
        assert_eq!(issues.len(), 1, "{text}");
        assert!(
            text.contains("colums: unknown key `colums` (did you mean `columns`?)"),
            "{text}"
        );
    }

    #[test]
    fn unknown_metadata_fields_get_suggestions() {
        let (text, _) =
            issues_of(&GOOD.replace("meta: sent_timestamp", "meta: atributes.SenderId"));
        assert!(text.contains("columns.create_date.meta: unknown metadata field \"atributes.SenderId\" (did you mean `attributes.SenderId`?)"), "{text}");
        let (text, _) = issues_of(&GOOD.replace("meta: sent_timestamp", "meta: receive_cnt"));
        assert!(text.contains("(did you mean `receive_count`?)"), "{text}");
        let (text, _) = issues_of(&GOOD.replace("meta: sent_timestamp", "meta: attributes."));
        assert!(
            text.contains("unknown metadata field \"attributes.\" (expected one of: message_id"),
            "{text}"
        );
    }

    #[test]
    fn spec_tests_are_checked_up_front() {
        let with_tests = format!(
            "{GOOD}tests:\n  - name: t\n    body: {{}}\n    meta: {{sent_timestmp: 1}}\n    expect_rwo: {{}}\n  - name: u\n    body: {{}}\n    raw: true\n    expect_reject: x\n"
        );
        let (text, _) = issues_of(&with_tests);
        assert!(
            text.contains(
                "tests[0].expect_rwo: unknown key `expect_rwo` (did you mean `expect_row`?)"
            ),
            "{text}"
        );
        // The first test's other problems are still found after the unknown key is dropped.
        assert!(text.contains("tests[0].meta.sent_timestmp: unknown key `sent_timestmp` (did you mean `sent_timestamp`?)"), "{text}");
        assert!(
            text.contains("tests[1].body: with `raw: true` the body must be a string"),
            "{text}"
        );
    }

    #[test]
    fn invalid_jsonpath_is_one_line() {
        let (text, _) = issues_of(&GOOD.replace("path: $.user_id", "path: $.items[?@.x == ]"));
        assert!(text.contains("columns.user_id.path: invalid JSONPath `$.items[?@.x == ]`: expected comparable at character"), "{text}");
        assert_eq!(text.lines().count(), 2, "{text}");
    }
}

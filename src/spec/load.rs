//! Loading a spec: YAML + environment overrides through figment, then validation that
//! collects every problem with its key path and file position before anything runs.
//!
//! Environment overrides: `ETL_SPEC_<KEY>__<SUBKEY>...`, e.g. `ETL_SPEC_TARGET__URL` for
//! `target.url` or `ETL_SPEC_SOURCE__POLLERS=8`. Keys are matched lowercased.

use super::Spec;
use super::diagnose::Diagnostics;
pub use super::diagnose::{SpecError, SpecIssue, suggest};
use super::position::Positions;
pub use super::validate::TEST_META_KEYS;
use super::validate::Validator;
use figment::Figment;
use figment::providers::{Env, Format, Yaml};
use serde_json::Value as J;
use std::path::Path;

/// Prefix of environment variables that override spec keys.
pub const ENV_PREFIX: &str = "ETL_SPEC_";

/// Loads and validates a spec file, applying environment overrides.
pub fn load_spec(path: &Path) -> Result<Spec, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    parse_spec_str(&text, path, true)
}

/// Validates spec text; `file` is used for messages and the default pipeline name.
pub fn parse_spec_str(text: &str, file: &Path, with_env: bool) -> Result<Spec, SpecError> {
    // serde_yaml reports syntax errors with a position; figment's message would not.
    if let Err(e) = serde_yaml::from_str::<serde_yaml::Value>(text) {
        let position = e.location().map(|l| (l.line(), l.column()));
        return Err(SpecError::Syntax {
            file: file.to_path_buf(),
            message: strip_location(&e.to_string()),
            position,
        });
    }
    let mut fig = Figment::from(Yaml::string(text));
    if with_env {
        fig = fig.merge(Env::prefixed(ENV_PREFIX).split("__"));
    }
    let root: J = fig.extract().map_err(|e| SpecError::Syntax {
        file: file.to_path_buf(),
        message: e.to_string(),
        position: None,
    })?;
    let positions = Positions::index(text);
    let env = if with_env {
        // `vars()` panics on a variable that is not UTF-8 anywhere in the environment; only
        // our own prefix matters, and figment skips such variables too.
        env_overrides(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    } else {
        Vec::new()
    };
    let mut v = Validator {
        d: Diagnostics {
            issues: Vec::new(),
            positions: &positions,
            env,
        },
    };
    let spec = v.spec(&root, file);
    match spec {
        Some(s) if v.d.issues.is_empty() => Ok(s),
        _ => Err(SpecError::Invalid {
            file: file.to_path_buf(),
            issues: v.d.issues,
        }),
    }
}

/// serde_yaml's message without its " at line L column C" (the position is reported apart).
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// The spec keys set from the environment: (key path, variable name), as figment maps them.
fn env_overrides(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    vars.into_iter()
        .filter_map(|(name, _)| {
            let key = name.strip_prefix(ENV_PREFIX)?;
            (!key.is_empty()).then(|| {
                (
                    key.to_lowercase().split("__").collect::<Vec<_>>().join("."),
                    name.clone(),
                )
            })
        })
        .collect()
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
"#;

    fn parse(text: &str) -> Result<Spec, SpecError> {
        parse_spec_str(text, Path::new("specs/t.yaml"), false)
    }

    #[test]
    fn good_spec_compiles_with_types() {
        let s = parse(GOOD).unwrap();
        assert_eq!(s.name, "t");
        let v = s.columns.iter().find(|c| c.name == "app_version").unwrap();
        assert_eq!(v.out_type, ValType::Integer);
        let d = s.columns.iter().find(|c| c.name == "create_date").unwrap();
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
                "endpoint_url: http://127.0.0.1:4566\n  max_messages: 11",
            )
            .replace("meta: sent_timestamp", "meta: sent_timestmp");
        let text = parse(&bad).unwrap_err().to_string();
        assert!(
            text.contains("source.max_messages: must be between 1 and 10"),
            "{text}"
        );
        assert!(text.contains("did you mean `sent_timestamp`"), "{text}");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("source: [unclosed\n").unwrap_err();
        assert!(
            matches!(
                err,
                SpecError::Syntax {
                    position: Some(_),
                    ..
                }
            ),
            "{err}"
        );
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
        assert_eq!(s.unwrap().target.table, "other_table");
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
            text.contains("source.pollers: invalid type: string \"lots\", expected a whole number (0 or more) (set by environment variable ETL_SPEC_SOURCE__POLLERS)"),
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
        assert!(text.contains("specs/t.yaml:5:3: source.pollers: invalid type: string \"many\", expected a whole number"), "{text}");
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

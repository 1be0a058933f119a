//! Loading a spec: YAML + environment overrides through figment, then validation that
//! collects every problem with its key path and file position before anything runs.
//!
//! Environment overrides: `ETL_SPEC_<KEY>__<SUBKEY>...`, e.g. `ETL_SPEC_TARGET__URL` for
//! `target.url` or `ETL_SPEC_SOURCE__POLLERS=8`. Keys are matched lowercased.

use super::position::Positions;
use super::{Column, ColumnSource, MetaField, Spec, types::*};
use crate::transform::Transform;
use crate::value::ValType;
use figment::Figment;
use figment::providers::{Env, Format, Yaml};
use serde::de::DeserializeOwned;
use serde_json::Value as J;
use std::fmt;
use std::path::{Path, PathBuf};

/// Prefix of environment variables that override spec keys.
pub const ENV_PREFIX: &str = "ETL_SPEC_";

/// One problem in a spec.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecIssue {
    /// Key path, e.g. `columns.app_version.transforms[0]`.
    pub path: String,
    pub message: String,
    /// 1-based line and column, where known.
    pub position: Option<(usize, usize)>,
}

/// Why a spec could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read spec {file}: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("{file}{}: invalid YAML: {message}", position_suffix(*position))]
    Syntax { file: PathBuf, message: String, position: Option<(usize, usize)> },
    #[error("{}", render_issues(file, issues))]
    Invalid { file: PathBuf, issues: Vec<SpecIssue> },
}

fn position_suffix(p: Option<(usize, usize)>) -> String {
    p.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default()
}

fn render_issues(file: &Path, issues: &[SpecIssue]) -> String {
    let mut out = format!(
        "spec {} has {} problem{}:",
        file.display(),
        issues.len(),
        if issues.len() == 1 { "" } else { "s" }
    );
    for i in issues {
        out.push_str(&format!("\n  {}{}: {}: {}", file.display(), position_suffix(i.position), i.path, i.message));
    }
    out
}

impl fmt::Display for SpecIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Loads and validates a spec file, applying environment overrides.
pub fn load_spec(path: &Path) -> Result<Spec, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read { file: path.to_path_buf(), source })?;
    parse_spec_str(&text, path, true)
}

/// Validates spec text; `file` is used for messages and the default pipeline name.
pub fn parse_spec_str(text: &str, file: &Path, with_env: bool) -> Result<Spec, SpecError> {
    // serde_yaml reports syntax errors with a position; figment's message would not.
    if let Err(e) = serde_yaml::from_str::<serde_yaml::Value>(text) {
        let position = e.location().map(|l| (l.line(), l.column()));
        return Err(SpecError::Syntax { file: file.to_path_buf(), message: strip_location(&e.to_string()), position });
    }
    let mut fig = Figment::from(Yaml::string(text));
    if with_env {
        fig = fig.merge(Env::prefixed(ENV_PREFIX).split("__"));
    }
    let root: J = fig.extract().map_err(|e| SpecError::Syntax { file: file.to_path_buf(), message: e.to_string(), position: None })?;
    let positions = Positions::index(text);
    let mut v = Validator { issues: Vec::new(), positions: &positions };
    let spec = v.spec(&root, file);
    match spec {
        Some(s) if v.issues.is_empty() => Ok(s),
        _ => Err(SpecError::Invalid { file: file.to_path_buf(), issues: v.issues }),
    }
}

fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Closest name within a small edit distance, for "did you mean" hints.
pub fn suggest<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(wrong, c), c))
        .filter(|(d, c)| *d <= 3.max(c.len() / 3) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn with_suggestion(msg: String, wrong: &str, candidates: &[&str]) -> String {
    match suggest(wrong, candidates.iter().copied()) {
        Some(s) => format!("{msg} (did you mean `{s}`?)"),
        None => format!("{msg} (expected one of: {})", candidates.join(", ")),
    }
}

/// Parses serde's "unknown field `x`, expected one of `a`, `b`" / "unknown variant" messages.
fn parse_unknown(msg: &str) -> Option<(&'static str, String, Vec<String>)> {
    let kind = if msg.starts_with("unknown field") {
        "field"
    } else if msg.starts_with("unknown variant") {
        "variant"
    } else {
        return None;
    };
    let mut ticks = msg.split('`').skip(1).step_by(2);
    let wrong = ticks.next()?.to_string();
    Some((kind, wrong, ticks.map(str::to_string).collect()))
}

fn is_identifier(s: &str) -> bool {
    let part_ok = |p: &str| {
        let mut chars = p.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && p.len() <= 63
    };
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() <= 2 && parts.iter().all(|p| part_ok(p))
}

struct Validator<'a> {
    issues: Vec<SpecIssue>,
    positions: &'a Positions,
}

impl Validator<'_> {
    fn issue(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let position = self.positions.find(&path);
        self.issues.push(SpecIssue { path, message: message.into(), position });
    }

    /// Deserializes `value` as `T`, reporting every unknown key (with a suggestion) and the
    /// first other error, each at its own key path.
    fn section<T: DeserializeOwned>(&mut self, value: &J, path: &str) -> Option<T> {
        let mut value = value.clone();
        loop {
            let res: Result<T, _> = serde_path_to_error::deserialize(&value);
            let err = match res {
                Ok(t) => return Some(t),
                Err(e) => e,
            };
            let inner = err.inner().to_string();
            let sub = err.path().to_string();
            let mut full = if sub == "." || sub.is_empty() { path.to_string() } else { format!("{path}.{sub}") };
            full = full.trim_start_matches('.').replace(".[", "[");
            match parse_unknown(&inner) {
                Some(("field", wrong, expected)) => {
                    let cands: Vec<&str> = expected.iter().map(String::as_str).collect();
                    // serde_path_to_error's path already ends with the unknown key.
                    let key_path = full.clone();
                    self.issue(key_path, with_suggestion(format!("unknown key `{wrong}`"), &wrong, &cands));
                    // Drop the unknown key and try again, to find the next problem too.
                    if !remove_at(&mut value, err.path(), &wrong) {
                        return None;
                    }
                }
                Some((_, wrong, expected)) => {
                    let cands: Vec<&str> = expected.iter().map(String::as_str).collect();
                    let what = if full.ends_with("type") || full.ends_with(']') || cands.contains(&"hash") {
                        "transform"
                    } else {
                        "value"
                    };
                    let shown = if full.ends_with("type") || cands.contains(&"hash") { full.clone() } else { full.clone() };
                    self.issue(shown, with_suggestion(format!("unknown {what} \"{wrong}\""), &wrong, &cands));
                    return None;
                }
                None => {
                    let msg = if inner.starts_with("missing field") {
                        inner.replacen("missing field", "missing key", 1)
                    } else {
                        inner
                    };
                    self.issue(full, msg);
                    return None;
                }
            }
        }
    }

    fn spec(&mut self, root: &J, file: &Path) -> Option<Spec> {
        let Some(map) = root.as_object() else {
            self.issue("", "a spec must be a YAML mapping with keys source, target, columns");
            return None;
        };
        const TOP: &[&str] = &["name", "source", "target", "vault", "rejects", "ledger", "columns", "tests"];
        for k in map.keys() {
            if !TOP.contains(&k.as_str()) {
                self.issue(k.clone(), with_suggestion(format!("unknown key `{k}`"), k, TOP));
            }
        }
        let get = |k: &str| map.get(k).cloned().unwrap_or(J::Null);
        let opt = |k: &str| map.get(k).cloned().unwrap_or_else(|| J::Object(Default::default()));

        let name = match map.get("name") {
            None | Some(J::Null) => file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "pipeline".into()),
            Some(J::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => {
                self.issue("name", "must be a non-empty string");
                String::new()
            }
        };
        let source = if map.contains_key("source") { self.section::<SourceConfig>(&get("source"), "source") } else {
            self.issue("source", "missing key `source`");
            None
        };
        let target = if map.contains_key("target") { self.section::<TargetConfig>(&get("target"), "target") } else {
            self.issue("target", "missing key `target`");
            None
        };
        let vault = self.section::<VaultConfig>(&opt("vault"), "vault");
        let rejects = self.section::<RejectsConfig>(&opt("rejects"), "rejects");
        let ledger = self.section::<LedgerConfig>(&opt("ledger"), "ledger");
        let tests = match map.get("tests") {
            None | Some(J::Null) => Some(Vec::new()),
            Some(t) => self.section::<Vec<SpecTestConfig>>(t, "tests"),
        };

        if let Some(SourceConfig::Sqs(s)) = &source {
            self.check_sqs(s);
        }
        if let Some(t) = &target {
            self.check_target(t);
        }
        for (path, table) in [
            ("vault.table", vault.as_ref().map(|v| &v.table)),
            ("rejects.table", rejects.as_ref().map(|r| &r.table)),
            ("ledger.table", ledger.as_ref().map(|l| &l.table)),
        ] {
            if let Some(t) = table {
                if !is_identifier(t) {
                    self.issue(path, "must be a table name (letters, digits, _; optionally schema.table)");
                }
            }
        }

        let columns = match map.get("columns") {
            Some(J::Object(cols)) if !cols.is_empty() => self.columns(cols),
            Some(J::Object(_)) => {
                self.issue("columns", "needs at least one column");
                Vec::new()
            }
            Some(_) => {
                self.issue("columns", "must be a mapping of column name to column settings");
                Vec::new()
            }
            None => {
                self.issue("columns", "missing key `columns`");
                Vec::new()
            }
        };
        if let Some(tests) = &tests {
            for (i, t) in tests.iter().enumerate() {
                let p = format!("tests[{i}]");
                if t.expect_row.is_some() == t.expect_reject.is_some() {
                    self.issue(p.clone(), "needs exactly one of `expect_row` and `expect_reject`");
                }
                if let Some(row) = &t.expect_row {
                    for k in row.keys() {
                        if !columns.iter().any(|c| &c.name == k) {
                            let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
                            self.issue(format!("{p}.expect_row.{k}"), with_suggestion(format!("no column `{k}`"), k, &names));
                        }
                    }
                }
            }
        }
        Some(Spec {
            file: file.to_path_buf(),
            name,
            source: source?,
            target: target?,
            vault: vault?,
            rejects: rejects?,
            ledger: ledger?,
            columns,
            tests: tests?,
        })
    }

    fn check_sqs(&mut self, s: &SqsSourceConfig) {
        if s.queue.trim().is_empty() {
            self.issue("source.queue", "must name a queue or give its URL");
        }
        if !(1..=10).contains(&s.max_messages) {
            self.issue("source.max_messages", "must be between 1 and 10 (an SQS limit)");
        }
        if s.wait_time_secs > 20 {
            self.issue("source.wait_time_secs", "must be between 0 and 20 (an SQS limit)");
        }
        if !(1..=43_200).contains(&s.visibility_timeout_secs) {
            self.issue("source.visibility_timeout_secs", "must be between 1 and 43200 (12 hours, an SQS limit)");
        }
        if !(1..=64).contains(&s.pollers) {
            self.issue("source.pollers", "must be between 1 and 64");
        }
        if s.max_receive_count == 0 {
            self.issue("source.max_receive_count", "must be at least 1");
        }
        if let Some(e) = &s.endpoint_url {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                self.issue("source.endpoint_url", "must start with http:// or https://");
            }
        }
    }

    fn check_target(&mut self, t: &TargetConfig) {
        if !(t.url.starts_with("postgres://") || t.url.starts_with("postgresql://")) {
            self.issue("target.url", "must be a postgres:// URL");
        }
        if !is_identifier(&t.table) {
            self.issue("target.table", "must be a table name (letters, digits, _; optionally schema.table)");
        }
        if !(1..=50_000).contains(&t.batch_size) {
            self.issue("target.batch_size", "must be between 1 and 50000");
        }
        if t.flush_interval_ms == 0 {
            self.issue("target.flush_interval_ms", "must be at least 1");
        }
        if !(1..=32).contains(&t.writers) {
            self.issue("target.writers", "must be between 1 and 32");
        }
    }

    fn columns(&mut self, cols: &serde_json::Map<String, J>) -> Vec<Column> {
        /// A column with transforms left loose, so each transform is checked on its own.
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct LooseColumn {
            #[serde(default)]
            path: Option<String>,
            #[serde(default)]
            meta: Option<String>,
            #[serde(default)]
            required: bool,
            #[serde(default)]
            transforms: Vec<J>,
        }
        let mut out = Vec::new();
        for (name, value) in cols {
            let base = format!("columns.{name}");
            if !is_identifier(name) || name.contains('.') {
                self.issue(base.clone(), "column name must be letters, digits and _ (a Postgres column)");
            }
            let Some(col) = self.section::<LooseColumn>(value, &base) else { continue };
            let (source, mut ty) = match (&col.path, &col.meta) {
                (Some(p), None) => match jsonpath_rust::parser::parse_json_path(p) {
                    Ok(query) => (Some(ColumnSource::Path { text: p.clone(), query }), ValType::Json),
                    Err(e) => {
                        self.issue(format!("{base}.path"), format!("invalid JSONPath: {e}"));
                        (None, ValType::Json)
                    }
                },
                (None, Some(m)) => match MetaField::parse(m) {
                    Some(f) => {
                        let t = f.val_type();
                        (Some(ColumnSource::Meta(f)), t)
                    }
                    None => {
                        self.issue(format!("{base}.meta"), with_suggestion(format!("unknown metadata field \"{m}\""), m, MetaField::NAMES));
                        (None, ValType::Text)
                    }
                },
                (Some(_), Some(_)) => {
                    self.issue(base.clone(), "give either `path` or `meta`, not both");
                    (None, ValType::Json)
                }
                (None, None) => {
                    self.issue(base.clone(), "needs `path` (JSONPath into the body) or `meta` (message metadata)");
                    (None, ValType::Json)
                }
            };
            let mut transforms = Vec::new();
            let mut chain_ok = true;
            for (i, t) in col.transforms.iter().enumerate() {
                let tp = format!("{base}.transforms[{i}]");
                if let Some(tname) = t.get("type").and_then(J::as_str) {
                    if !TransformConfig::NAMES.contains(&tname) {
                        self.issue(
                            format!("{tp}.type"),
                            with_suggestion(format!("unknown transform \"{tname}\""), tname, TransformConfig::NAMES),
                        );
                        chain_ok = false;
                        continue;
                    }
                } else {
                    self.issue(tp.clone(), "a transform needs `type:` (e.g. `- type: hash`)");
                    chain_ok = false;
                    continue;
                }
                let Some(cfg) = self.section::<TransformConfig>(t, &tp) else {
                    chain_ok = false;
                    continue;
                };
                if !chain_ok {
                    continue;
                }
                match Transform::compile(&cfg, ty) {
                    Ok((tr, out)) => {
                        transforms.push(tr);
                        ty = out;
                    }
                    Err(msg) => {
                        self.issue(tp, msg);
                        chain_ok = false;
                    }
                }
            }
            if let Some(source) = source {
                out.push(Column { name: name.clone(), source, required: col.required, transforms, out_type: ty });
            }
        }
        out
    }
}

/// Removes key `key` from its object inside `value`; `at` is the path to the key itself.
fn remove_at(value: &mut J, at: &serde_path_to_error::Path, key: &str) -> bool {
    use serde_path_to_error::Segment;
    let mut cur = value;
    let segs: Vec<&Segment> = at.iter().collect();
    let parent = segs.len().saturating_sub(1);
    for seg in segs.into_iter().take(parent) {
        cur = match (seg, cur) {
            (Segment::Map { key }, J::Object(m)) => match m.get_mut(key) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Seq { index }, J::Array(a)) => match a.get_mut(*index) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Enum { .. }, c) => c,
            _ => return false,
        };
    }
    match cur {
        J::Object(m) => m.remove(key).is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let SpecError::Invalid { issues, .. } = &err else { panic!("{err}") };
        let text = err.to_string();
        assert!(text.contains("columns.app_version.transforms[0].type: unknown transform \"versoin_to_int\" (did you mean `version_to_int`?)"), "{text}");
        assert!(text.contains("target.tabel: unknown key `tabel` (did you mean `table`?)"), "{text}");
        assert!(text.contains("columns.user_id.requird: unknown key `requird` (did you mean `required`?)"), "{text}");
        // Positions point at the offending line.
        let t = issues.iter().find(|i| i.path.ends_with("transforms[0].type")).unwrap();
        assert_eq!(t.position, Some((16, 9)));
        assert!(text.contains("specs/t.yaml:16:9"), "{text}");
    }

    #[test]
    fn wrong_type_transforms_are_spec_errors() {
        let bad = GOOD.replace("- type: version_to_int", "- type: version_to_int\n      - type: trim");
        let text = parse(&bad).unwrap_err().to_string();
        assert!(text.contains("columns.app_version.transforms[1]: `trim` needs a text value, but the value is integer"), "{text}");
    }

    #[test]
    fn limits_and_sources_are_checked() {
        let bad = GOOD.replace("endpoint_url: http://127.0.0.1:4566", "endpoint_url: http://127.0.0.1:4566\n  max_messages: 11")
            .replace("meta: sent_timestamp", "meta: sent_timestmp");
        let text = parse(&bad).unwrap_err().to_string();
        assert!(text.contains("source.max_messages: must be between 1 and 10"), "{text}");
        assert!(text.contains("did you mean `sent_timestamp`"), "{text}");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("source: [unclosed\n").unwrap_err();
        assert!(matches!(err, SpecError::Syntax { position: Some(_), .. }), "{err}");
    }

    #[test]
    fn env_overrides_apply() {
        // Safety: this test owns this variable name; no other test reads it.
        unsafe { std::env::set_var("ETL_SPEC_TARGET__TABLE", "other_table") };
        let s = parse_spec_str(GOOD, Path::new("t.yaml"), true).unwrap();
        unsafe { std::env::remove_var("ETL_SPEC_TARGET__TABLE") };
        assert_eq!(s.target.table, "other_table");
    }
}

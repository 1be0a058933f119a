//! Loading a spec: YAML + environment overrides through figment, then validation that
//! collects every problem with its key path and file position before anything runs.
//!
//! Environment overrides: `ETL_SPEC_<KEY>__<SUBKEY>...`, e.g. `ETL_SPEC_TARGET__URL` for
//! `target.url` or `ETL_SPEC_SOURCE__POLLERS=8`. Keys are matched lowercased.

use super::position::Positions;
use super::{Column, ColumnSource, MetaField, Spec, types::*};
use crate::value::ValType;
use figment::Figment;
use figment::providers::{Env, Format, Yaml};
use serde::de::DeserializeOwned;
use serde_json::Value as J;
use std::fmt;
use std::path::{Path, PathBuf};

/// The keys of a spec test's `meta:`.
pub const TEST_META_KEYS: &[&str] = &[
    "message_id",
    "sent_timestamp",
    "receive_count",
    "attributes",
    "message_attributes",
];

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
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}{}: invalid YAML: {message}", position_suffix(*position))]
    Syntax {
        file: PathBuf,
        message: String,
        position: Option<(usize, usize)>,
    },
    #[error("{}", render_issues(file, issues))]
    Invalid {
        file: PathBuf,
        issues: Vec<SpecIssue>,
    },
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
        out.push_str(&format!(
            "\n  {}{}: {}: {}",
            file.display(),
            position_suffix(i.position),
            i.path,
            i.message
        ));
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
        issues: Vec::new(),
        positions: &positions,
        env,
    };
    let spec = v.spec(&root, file);
    match spec {
        Some(s) if v.issues.is_empty() => Ok(s),
        _ => Err(SpecError::Invalid {
            file: file.to_path_buf(),
            issues: v.issues,
        }),
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

struct Validator<'a> {
    issues: Vec<SpecIssue>,
    positions: &'a Positions,
    /// Keys overridden from the environment, so their problems name the variable, not a line.
    env: Vec<(String, String)>,
}

impl Validator<'_> {
    fn issue(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let mut message = message.into();
        let from_env = self.env.iter().find(|(p, _)| {
            p == &path
                || path.starts_with(&format!("{p}."))
                || path.starts_with(&format!("{p}["))
                // A key that exists only because a variable set something below it.
                || (p.starts_with(&format!("{path}.")) && self.positions.exact(&path).is_none())
        });
        let position = match from_env {
            Some((_, var)) => {
                message.push_str(&format!(" (set by environment variable {var})"));
                None
            }
            None => self.positions.find(&path),
        };
        self.issues.push(SpecIssue {
            path,
            message,
            position,
        });
    }

    /// Deserializes `value` as `T`, reporting every unknown key (with a suggestion) and the
    /// first other error, each at its own key path.
    fn section<T: DeserializeOwned>(&mut self, value: &J, path: &str) -> Option<T> {
        let mut value = value.clone();
        // Names already suggested for a misspelled key: their "missing key" follow-up is noise.
        let mut suggested: Vec<String> = Vec::new();
        loop {
            let res: Result<T, _> = serde_path_to_error::deserialize(&value);
            let err = match res {
                Ok(t) => return Some(t),
                Err(e) => e,
            };
            let inner = err.inner().to_string();
            let sub = err.path().to_string();
            let mut full = if sub == "." || sub.is_empty() {
                path.to_string()
            } else {
                format!("{path}.{sub}")
            };
            full = full.trim_start_matches('.').replace(".[", "[");
            // Internally tagged enums (`type: ...`) buffer their content before deserializing it,
            // so the path stops at the enum; the offending key inside it is found by looking.
            let node = node_at(&mut value, err.path()).map(|n| n.clone());
            let inside_enum = |key: Option<String>, full: &str| match key {
                Some(k) => join_key(full, &k),
                None => full.to_string(),
            };
            match parse_unknown(&inner) {
                Some(("field", wrong, expected)) => {
                    let cands: Vec<&str> = expected.iter().map(String::as_str).collect();
                    let ends_at_key = matches!(err.path().iter().next_back(), Some(serde_path_to_error::Segment::Map { key }) if *key == wrong);
                    let key_path = if ends_at_key {
                        full.clone()
                    } else {
                        join_key(&full, &wrong)
                    };
                    if let Some(s) = suggest(&wrong, cands.iter().copied()) {
                        suggested.push(s.to_string());
                    }
                    self.issue(
                        key_path,
                        with_suggestion(format!("unknown key `{wrong}`"), &wrong, &cands),
                    );
                    // Drop the unknown key and try again, to find the next problem too.
                    let removed = if ends_at_key {
                        remove_at(&mut value, err.path(), &wrong)
                    } else {
                        match node_at(&mut value, err.path()) {
                            Some(J::Object(m)) => m.remove(&wrong).is_some(),
                            _ => false,
                        }
                    };
                    if !removed {
                        return None;
                    }
                }
                Some((_, wrong, expected)) => {
                    let cands: Vec<&str> = expected.iter().map(String::as_str).collect();
                    let key = match &node {
                        Some(J::Object(m)) => m
                            .iter()
                            .find(|(_, v)| v.as_str() == Some(wrong.as_str()))
                            .map(|(k, _)| k.clone()),
                        _ => None,
                    };
                    let key_path = inside_enum(key, &full);
                    let what = if key_path.ends_with(".type") || key_path == "type" {
                        if cands.iter().all(|c| TransformConfig::NAMES.contains(c)) {
                            "transform"
                        } else {
                            "type"
                        }
                    } else {
                        "value"
                    };
                    self.issue(
                        key_path,
                        with_suggestion(format!("unknown {what} \"{wrong}\""), &wrong, &cands),
                    );
                    return None;
                }
                None => {
                    if let Some(missing) = inner
                        .strip_prefix("missing field `")
                        .and_then(|r| r.split('`').next())
                    {
                        if !suggested.iter().any(|s| s == missing) {
                            self.issue(full, format!("missing key `{missing}`"));
                        }
                        return None;
                    }
                    let key = match &node {
                        Some(J::Object(m)) => offending_key(&inner, m),
                        _ => None,
                    };
                    self.issue(inside_enum(key, &full), friendly_type_error(&inner));
                    return None;
                }
            }
        }
    }

    fn spec(&mut self, root: &J, file: &Path) -> Option<Spec> {
        let Some(map) = root.as_object() else {
            self.issue(
                "",
                "a spec must be a YAML mapping with keys source, target, columns",
            );
            return None;
        };
        const TOP: &[&str] = &[
            "name", "source", "target", "vault", "rejects", "ledger", "columns", "tests",
        ];
        // A misspelled required key is reported once, as the misspelling.
        let mut suggested = Vec::new();
        for k in map.keys() {
            if !TOP.contains(&k.as_str()) {
                suggested.extend(suggest(k, TOP.iter().copied()));
                self.issue(
                    k.clone(),
                    with_suggestion(format!("unknown key `{k}`"), k, TOP),
                );
            }
        }
        let missing = |v: &mut Self, key: &str| {
            if !suggested.contains(&key) {
                v.issue(key, format!("missing key `{key}`"));
            }
        };
        let get = |k: &str| map.get(k).cloned().unwrap_or(J::Null);
        let opt = |k: &str| {
            map.get(k)
                .cloned()
                .unwrap_or_else(|| J::Object(Default::default()))
        };

        let name = match map.get("name") {
            None | Some(J::Null) => file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "pipeline".into()),
            Some(J::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => {
                self.issue("name", "must be a non-empty string");
                String::new()
            }
        };
        let source = if map.contains_key("source") {
            self.section::<SourceConfig>(&get("source"), "source")
        } else {
            missing(self, "source");
            None
        };
        let target = if map.contains_key("target") {
            self.section::<TargetConfig>(&get("target"), "target")
        } else {
            missing(self, "target");
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
            if let Some(t) = table
                && !is_identifier(t)
            {
                self.issue(
                    path,
                    "must be a table name (letters, digits, _; optionally schema.table)",
                );
            }
        }

        let columns = match map.get("columns") {
            Some(J::Object(cols)) if !cols.is_empty() => self.columns(cols),
            Some(J::Object(_)) => {
                self.issue("columns", "needs at least one column");
                Vec::new()
            }
            Some(_) => {
                self.issue(
                    "columns",
                    "must be a mapping of column name to column settings",
                );
                Vec::new()
            }
            None => {
                missing(self, "columns");
                Vec::new()
            }
        };
        if let Some(tests) = &tests {
            for (i, t) in tests.iter().enumerate() {
                let p = format!("tests[{i}]");
                if t.expect_row.is_some() == t.expect_reject.is_some() {
                    self.issue(
                        p.clone(),
                        "needs exactly one of `expect_row` and `expect_reject`",
                    );
                }
                if t.raw && !t.body.is_string() {
                    self.issue(
                        format!("{p}.body"),
                        "with `raw: true` the body must be a string (the exact message text)",
                    );
                }
                for (k, v) in &t.meta {
                    let ok = match k.as_str() {
                        "message_id" => v.is_string(),
                        "sent_timestamp" | "receive_count" => {
                            v.as_u64().is_some()
                                || v.as_str().is_some_and(|s| s.parse::<u64>().is_ok())
                        }
                        "attributes" | "message_attributes" => v.as_object().is_some_and(|m| {
                            m.values()
                                .all(|x| !x.is_object() && !x.is_array() && !x.is_null())
                        }),
                        _ => {
                            self.issue(
                                format!("{p}.meta.{k}"),
                                with_suggestion(format!("unknown key `{k}`"), k, TEST_META_KEYS),
                            );
                            continue;
                        }
                    };
                    if !ok {
                        let want = match k.as_str() {
                            "message_id" => "a string",
                            "sent_timestamp" => "epoch milliseconds (a whole number)",
                            "receive_count" => "a whole number",
                            _ => "a mapping of name to a string, number or boolean",
                        };
                        self.issue(format!("{p}.meta.{k}"), format!("must be {want}"));
                    }
                }
                if let Some(row) = &t.expect_row {
                    for k in row.keys() {
                        if !columns.iter().any(|c| &c.name == k) {
                            let names: Vec<&str> =
                                columns.iter().map(|c| c.name.as_str()).collect();
                            self.issue(
                                format!("{p}.expect_row.{k}"),
                                with_suggestion(format!("no column `{k}`"), k, &names),
                            );
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
            self.issue(
                "source.max_messages",
                "must be between 1 and 10 (an SQS limit)",
            );
        }
        if s.wait_time_secs > 20 {
            self.issue(
                "source.wait_time_secs",
                "must be between 0 and 20 (an SQS limit)",
            );
        }
        if !(1..=43_200).contains(&s.visibility_timeout_secs) {
            self.issue(
                "source.visibility_timeout_secs",
                "must be between 1 and 43200 (12 hours, an SQS limit)",
            );
        }
        if !(1..=64).contains(&s.pollers) {
            self.issue("source.pollers", "must be between 1 and 64");
        }
        if s.max_receive_count == 0 {
            self.issue("source.max_receive_count", "must be at least 1");
        }
        if let Some(e) = &s.endpoint_url
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            self.issue("source.endpoint_url", "must start with http:// or https://");
        }
    }

    fn check_target(&mut self, t: &TargetConfig) {
        if !(t.url.starts_with("postgres://") || t.url.starts_with("postgresql://")) {
            self.issue("target.url", "must be a postgres:// URL");
        }
        if !is_identifier(&t.table) {
            self.issue(
                "target.table",
                "must be a table name (letters, digits, _; optionally schema.table)",
            );
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
                self.issue(
                    base.clone(),
                    "column name must be letters, digits and _ (a Postgres column)",
                );
            }
            let Some(col) = self.section::<LooseColumn>(value, &base) else {
                continue;
            };
            let (source, mut ty) = match (&col.path, &col.meta) {
                (Some(p), None) => match jsonpath_rust::parser::parse_json_path(p) {
                    Ok(query) => (
                        Some(ColumnSource::Path {
                            text: p.clone(),
                            query,
                        }),
                        ValType::Json,
                    ),
                    Err(e) => {
                        self.issue(
                            format!("{base}.path"),
                            format!(
                                "invalid JSONPath `{p}`: {}",
                                one_line_parse_error(&e.to_string())
                            ),
                        );
                        (None, ValType::Json)
                    }
                },
                (None, Some(m)) => match MetaField::parse(m) {
                    Some(f) => {
                        let t = f.val_type();
                        (Some(ColumnSource::Meta(f)), t)
                    }
                    None => {
                        // `atributes.Foo`: suggest on the part before the dot, keep the name.
                        let hint = m.split_once('.').and_then(|(pre, name)| {
                            suggest(pre, ["attributes", "message_attributes"])
                                .map(|s| format!("{s}.{name}"))
                        });
                        let msg = format!("unknown metadata field \"{m}\"");
                        let msg = match hint {
                            Some(h) if !name_is_empty(&h) => format!("{msg} (did you mean `{h}`?)"),
                            _ => with_suggestion(msg, m, MetaField::NAMES),
                        };
                        self.issue(format!("{base}.meta"), msg);
                        (None, ValType::Text)
                    }
                },
                (Some(_), Some(_)) => {
                    self.issue(base.clone(), "give either `path` or `meta`, not both");
                    (None, ValType::Json)
                }
                (None, None) => {
                    self.issue(
                        base.clone(),
                        "needs `path` (JSONPath into the body) or `meta` (message metadata)",
                    );
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
                            with_suggestion(
                                format!("unknown transform \"{tname}\""),
                                tname,
                                TransformConfig::NAMES,
                            ),
                        );
                        chain_ok = false;
                        continue;
                    }
                } else {
                    self.issue(
                        tp.clone(),
                        "a transform needs `type:` (e.g. `- type: hash`)",
                    );
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
                match super::typecheck::output_type(&cfg, ty) {
                    Ok(out) => {
                        transforms.push(cfg);
                        ty = out;
                    }
                    Err(msg) => {
                        self.issue(tp, msg);
                        chain_ok = false;
                    }
                }
            }
            if let Some(source) = source {
                out.push(Column {
                    name: name.clone(),
                    source,
                    required: col.required,
                    transforms,
                    out_type: ty,
                });
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

/// The node `at` points to (enum segments are transparent in a JSON tree).
fn node_at<'v>(value: &'v mut J, at: &serde_path_to_error::Path) -> Option<&'v mut J> {
    use serde_path_to_error::Segment;
    let mut cur = value;
    for seg in at.iter() {
        cur = match (seg, cur) {
            (Segment::Map { key }, J::Object(m)) => m.get_mut(key)?,
            (Segment::Seq { index }, J::Array(a)) => a.get_mut(*index)?,
            (Segment::Enum { .. }, c) => c,
            _ => return None,
        };
    }
    Some(cur)
}

/// `base.key`, or `key` at the top.
fn join_key(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

fn name_is_empty(meta: &str) -> bool {
    meta.ends_with('.')
}

/// serde names Rust types ("expected u32"); a spec author thinks in YAML values.
fn friendly_type_error(msg: &str) -> String {
    let Some((head, expected)) = msg.split_once(", expected ") else {
        return msg.to_string();
    };
    let want = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number (0 or more)",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        other => other,
    };
    format!("{head}, expected {want}")
}

/// The JSONPath parser's multi-line error as one line: "expected selector at character 3".
fn one_line_parse_error(msg: &str) -> String {
    let at = msg
        .split("-->")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|lc| lc.split(':').nth(1));
    let what = msg.lines().rev().find_map(|l| l.trim().strip_prefix("= "));
    match (what, at) {
        (Some(w), Some(c)) => format!("{w} at character {c}"),
        (Some(w), None) => w.to_string(),
        _ => msg.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// How serde describes a JSON value in "invalid type: ..., expected ..." messages.
fn describe_unexpected(v: &J) -> String {
    match v {
        J::Null => "null".into(),
        J::Bool(b) => format!("boolean `{b}`"),
        J::Number(n) if n.is_f64() => format!("floating point `{n}`"),
        J::Number(n) => format!("integer `{n}`"),
        J::String(s) => format!("string {s:?}"),
        J::Array(_) => "sequence".into(),
        J::Object(_) => "map".into(),
    }
}

/// For an "invalid type/value" error inside a tagged enum: the one key whose value serde
/// complained about (none when it is ambiguous).
fn offending_key(msg: &str, obj: &serde_json::Map<String, J>) -> Option<String> {
    let what = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "))?;
    let what = what.split(", expected").next()?;
    let mut hits = obj
        .iter()
        .filter(|(k, v)| *k != "type" && describe_unexpected(v) == what)
        .map(|(k, _)| k.clone());
    let first = hits.next()?;
    if hits.next().is_some() {
        None
    } else {
        Some(first)
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

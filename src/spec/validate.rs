//! Validating a spec section by section, building the compiled [`Spec`]: limits, table and
//! column names, sources, transform chains (type-checked) and the spec's own tests.

use super::diagnose::{Diagnostics, suggest, with_suggestion};
use super::{Column, ColumnSource, MAX_POLLERS, MetaField, Output, Spec, types::*};
use crate::value::ValType;
use serde_json::Value as J;
use std::path::Path;

/// The keys of a spec test's `meta:`.
pub const TEST_META_KEYS: &[&str] = &[
    "message_id",
    "sent_timestamp",
    "receive_count",
    "attributes",
    "message_attributes",
];

/// A Postgres identifier, optionally schema-qualified (`schema.table`).
pub(super) fn is_identifier(s: &str) -> bool {
    let part_ok = |p: &str| {
        let mut chars = p.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && p.len() <= 63
    };
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() <= 2 && parts.iter().all(|p| part_ok(p))
}

/// Walks the merged tree, recording problems in `d`.
pub(super) struct Validator<'a> {
    /// Where problems are recorded.
    pub(super) d: Diagnostics<'a>,
}

impl Validator<'_> {
    /// Validates the merged tree section by section; `None` when something essential is broken.
    pub(super) fn spec(&mut self, root: &J, file: &Path) -> Option<Spec> {
        let Some(map) = root.as_object() else {
            self.d.issue(
                "",
                "a spec must be a YAML mapping with keys name, source, target, and columns or outputs",
            );
            return None;
        };
        /// The top-level keys.
        const TOP: &[&str] = &[
            "name",
            "source",
            "decode",
            "target",
            "filter",
            "outputs",
            "unmatched",
            "columns",
            "vault",
            "rejects",
            "ledger",
            "tests",
        ];
        // A misspelled required key is reported once, as the misspelling.
        let mut suggested = Vec::new();
        for k in map.keys() {
            if k.is_empty() {
                // An empty (or null, `: x`) key has no name to put in a key path: quote it.
                self.d.issue(
                    "\"\"",
                    format!("an empty key is not allowed (keys: {})", TOP.join(", ")),
                );
                continue;
            }
            if !TOP.contains(&k.as_str()) {
                suggested.extend(suggest(k, TOP.iter().copied()));
                self.d.issue(
                    k.clone(),
                    with_suggestion(format!("unknown key `{k}`"), k, TOP),
                );
            }
        }
        let missing = |v: &mut Self, key: &str| {
            if !suggested.contains(&key) {
                v.d.issue(key, format!("missing key `{key}`"));
            }
        };
        let get = |k: &str| map.get(k).cloned().unwrap_or(J::Null);
        let opt = |k: &str| {
            map.get(k)
                .cloned()
                .unwrap_or_else(|| J::Object(Default::default()))
        };

        let name = match map.get("name") {
            Some(J::String(s)) if !s.is_empty() => s.clone(),
            // It used to default to the file name, so renaming a file silently moved the
            // pipeline to a new ledger scope (exactly-once lost) and hid its old rejects.
            None | Some(J::Null) if !suggested.contains(&"name") => {
                let was = file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let msg = format!(
                    "required: the pipeline name scopes the ledger and rejects; set it once and \
                     never change it (it was {was:?} by default before)"
                );
                if map.contains_key("name") {
                    self.d.issue("name", msg);
                } else {
                    // Not in the file at all: the file as a whole is at fault.
                    self.d.issue_at("name", msg, (1, 1));
                }
                String::new()
            }
            None | Some(J::Null) => String::new(),
            Some(_) => {
                self.d.issue("name", "must be a non-empty string");
                String::new()
            }
        };
        let source = if map.contains_key("source") {
            self.d.section::<SourceConfig>(&get("source"), "source")
        } else {
            missing(self, "source");
            None
        };
        let target = if map.contains_key("target") {
            self.d.section::<TargetConfig>(&get("target"), "target")
        } else {
            missing(self, "target");
            None
        };
        let vault = self.d.section::<VaultConfig>(&opt("vault"), "vault");
        let rejects = self.d.section::<RejectsConfig>(&opt("rejects"), "rejects");
        let ledger = self.d.section::<LedgerConfig>(&opt("ledger"), "ledger");
        let tests = match map.get("tests") {
            None | Some(J::Null) => Some(Vec::new()),
            Some(t) => self.d.section::<Vec<SpecTestConfig>>(t, "tests"),
        };

        if let Some(SourceConfig::Sqs(s)) = &source {
            self.check_sqs(s);
        }
        if let Some(s) = &source {
            self.check_budget(s.max_in_flight_bytes());
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
                self.d.issue(
                    path,
                    "must be a table name (letters, digits, _; optionally schema.table)",
                );
            }
        }

        let filter = match map.get("filter") {
            None | Some(J::Null) => None,
            Some(J::String(text)) => self.condition("filter", text),
            Some(_) => {
                self.d
                    .issue("filter", "must be a condition such as `$.test == true`");
                None
            }
        };
        let decode = self.decode(map.get("decode"));
        let unmatched = match map.get("unmatched") {
            None | Some(J::Null) => Some(Unmatched::default()),
            Some(u) => self.d.section::<Unmatched>(u, "unmatched"),
        };
        let outputs = self.outputs(map, target.as_ref(), &suggested);
        self.check_sns_meta(&decode, &outputs);
        if let Some(tests) = &tests {
            self.check_tests(tests, &outputs);
        }
        Some(Spec {
            file: file.to_path_buf(),
            name,
            source: source?,
            target: target?,
            vault: vault?,
            rejects: rejects?,
            ledger: ledger?,
            decode,
            filter,
            outputs,
            unmatched: unmatched?,
            tests: tests?,
        })
    }

    /// The spec's own tests: one expectation each, raw bodies, metadata, columns they name.
    fn check_tests(&mut self, tests: &[SpecTestConfig], outputs: &[Output]) {
        for (i, t) in tests.iter().enumerate() {
            let p = format!("tests[{i}]");
            let expectations = [
                t.expect_row.is_some(),
                t.expect_rows.is_some(),
                t.expect_reject.is_some(),
                t.expect_skip.is_some(),
            ];
            if expectations.iter().filter(|e| **e).count() != 1 {
                self.d.issue(
                    p.clone(),
                    "needs exactly one of `expect_row`, `expect_rows`, `expect_reject` and `expect_skip`",
                );
            }
            if t.raw && !t.body.is_string() {
                self.d.issue(
                    format!("{p}.body"),
                    "with `raw: true` the body must be a string (the exact message text)",
                );
            }
            for (k, v) in &t.meta {
                let ok = match k.as_str() {
                    "message_id" => v.is_string(),
                    "sent_timestamp" | "receive_count" => {
                        v.as_u64().is_some() || v.as_str().is_some_and(|s| s.parse::<u64>().is_ok())
                    }
                    "attributes" | "message_attributes" => v.as_object().is_some_and(|m| {
                        m.values()
                            .all(|x| !x.is_object() && !x.is_array() && !x.is_null())
                    }),
                    _ => {
                        self.d.issue(
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
                    self.d
                        .issue(format!("{p}.meta.{k}"), format!("must be {want}"));
                }
            }
            if let Some(row) = &t.expect_row {
                let columns: Vec<&Column> = outputs.iter().flat_map(|o| &o.columns).collect();
                self.check_expected_row(&format!("{p}.expect_row"), row, &columns);
            }
            for (table, rows) in t.expect_rows.iter().flatten() {
                let at = format!("{p}.expect_rows.{table}");
                match outputs.iter().find(|o| &o.table == table) {
                    Some(o) => {
                        let columns: Vec<&Column> = o.columns.iter().collect();
                        for (j, row) in rows.iter().enumerate() {
                            self.check_expected_row(&format!("{at}[{j}]"), row, &columns);
                        }
                    }
                    None => {
                        let names: Vec<&str> = outputs.iter().map(|o| o.table.as_str()).collect();
                        self.d.issue(
                            at,
                            with_suggestion(format!("no output table `{table}`"), table, &names),
                        );
                    }
                }
            }
        }
    }

    /// The columns an expected row names must exist.
    fn check_expected_row(
        &mut self,
        at: &str,
        row: &std::collections::BTreeMap<String, J>,
        columns: &[&Column],
    ) {
        for k in row.keys() {
            if !columns.iter().any(|c| &c.name == k) {
                let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
                self.d.issue(
                    format!("{at}.{k}"),
                    with_suggestion(format!("no column `{k}`"), k, &names),
                );
            }
        }
    }

    /// SQS limits and settings that serde cannot express.
    fn check_sqs(&mut self, s: &SqsSourceConfig) {
        if s.queue.trim().is_empty() {
            self.d
                .issue("source.queue", "must name a queue or give its URL");
        }
        if !(1..=10).contains(&s.max_messages) {
            self.d.issue(
                "source.max_messages",
                "must be between 1 and 10 (an SQS limit)",
            );
        }
        if s.wait_time_secs > 20 {
            self.d.issue(
                "source.wait_time_secs",
                "must be between 0 and 20 (an SQS limit)",
            );
        }
        if !(1..=43_200).contains(&s.visibility_timeout_secs) {
            self.d.issue(
                "source.visibility_timeout_secs",
                "must be between 1 and 43200 (12 hours, an SQS limit)",
            );
        }
        if let Pollers::Fixed(n) = s.pollers
            && !(1..=MAX_POLLERS).contains(&n)
        {
            self.d.issue("source.pollers", "must be between 1 and 64");
        }
        if s.max_receive_count == 0 {
            self.d
                .issue("source.max_receive_count", "must be at least 1");
        }
        if let Some(e) = &s.endpoint_url
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            self.d
                .issue("source.endpoint_url", "must start with http:// or https://");
        }
    }

    /// The in-flight memory budget: at least 1 MiB (one message of the SQS maximum size), and
    /// below 4 GiB (what one counter holds).
    fn check_budget(&mut self, bytes: u64) {
        if !(1 << 20..u64::from(u32::MAX)).contains(&bytes) {
            self.d.issue(
                "source.max_in_flight_bytes",
                "must be between 1048576 (1 MiB) and 4294967294 (4 GiB)",
            );
        }
    }

    /// The target's URL, table name and limits.
    fn check_target(&mut self, t: &TargetConfig) {
        if !(t.url.starts_with("postgres://") || t.url.starts_with("postgresql://")) {
            self.d.issue("target.url", "must be a postgres:// URL");
        }
        if !(1..=50_000).contains(&t.batch_size) {
            self.d
                .issue("target.batch_size", "must be between 1 and 50000");
        }
        if t.flush_interval_ms == 0 {
            self.d
                .issue("target.flush_interval_ms", "must be at least 1");
        }
        if !(1..=32).contains(&t.writers) {
            self.d.issue("target.writers", "must be between 1 and 32");
        }
    }

    /// Compiles each column: its source, then its transforms type-checked in order.
    pub(super) fn columns(
        &mut self,
        cols: &serde_json::Map<String, J>,
        prefix: &str,
    ) -> Vec<Column> {
        /// A column with transforms left loose, so each transform is checked on its own.
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct LooseColumn {
            #[serde(default)]
            path: Option<String>,
            #[serde(default)]
            meta: Option<String>,
            #[serde(default)]
            required: bool,
            #[serde(default)]
            transforms: Vec<J>,
            #[serde(default)]
            token_domain: Option<String>,
        }
        let mut out = Vec::new();
        // Spec order, as written in the file (figment's maps are sorted by key): it is the
        // write order, and the order in which a reject names the first missing column.
        // Columns only an environment variable adds come last.
        let mut ordered: Vec<(&String, &J)> = cols.iter().collect();
        ordered.sort_by_cached_key(|(name, _)| {
            self.d
                .exact_position(&format!("{prefix}.{name}"))
                .unwrap_or((usize::MAX, 0))
        });
        for (name, value) in ordered {
            let base = format!("{prefix}.{name}");
            if !is_identifier(name) || name.contains('.') {
                self.d.issue(
                    base.clone(),
                    "column name must be letters, digits and _ (a Postgres column)",
                );
            }
            let Some(col) = self.d.section::<LooseColumn>(value, &base) else {
                continue;
            };
            let (source, mut ty) = match (&col.path, &col.meta) {
                (Some(p), None) => match jsonpath_rust::parser::parse_json_path(
                    &p.strip_prefix('@')
                        .map_or_else(|| p.clone(), |rest| format!("${rest}")),
                ) {
                    Ok(query) if p.starts_with('@') => (
                        Some(ColumnSource::Element {
                            text: p.clone(),
                            query,
                        }),
                        ValType::Json,
                    ),
                    Ok(query) => (
                        Some(ColumnSource::Path {
                            text: p.clone(),
                            query,
                        }),
                        ValType::Json,
                    ),
                    Err(e) => {
                        self.d.issue(
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
                        self.d.issue(format!("{base}.meta"), msg);
                        (None, ValType::Text)
                    }
                },
                (Some(_), Some(_)) => {
                    self.d
                        .issue(base.clone(), "give either `path` or `meta`, not both");
                    (None, ValType::Json)
                }
                (None, None) => {
                    self.d.issue(
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
                        self.d.issue(
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
                    self.d.issue(
                        tp.clone(),
                        "a transform needs `type:` (e.g. `- type: hash`)",
                    );
                    chain_ok = false;
                    continue;
                }
                let Some(cfg) = self.d.section::<TransformConfig>(t, &tp) else {
                    chain_ok = false;
                    continue;
                };
                if let Err(e) = super::typecheck::check_args(&cfg) {
                    self.d.issue(format!("{tp}.{}", e.key), e.message);
                    chain_ok = false;
                    continue;
                }
                if !chain_ok {
                    continue;
                }
                match super::typecheck::output_type(&cfg, ty) {
                    Ok(out) => {
                        transforms.push(cfg);
                        ty = out;
                    }
                    Err(msg) => {
                        self.d.issue(tp, msg);
                        chain_ok = false;
                    }
                }
            }
            if let Some(d) = &col.token_domain {
                let tp = format!("{base}.token_domain");
                if d.is_empty()
                    || d.len() > 128
                    || !d
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                {
                    self.d
                        .issue(tp, "must be 1 to 128 letters, digits, '_', '.' or '-'");
                } else if !transforms
                    .iter()
                    .any(|t| matches!(t, TransformConfig::Hash {} | TransformConfig::Encrypt {}))
                {
                    self.d.issue(
                        tp,
                        "only a column with a `hash` or `encrypt` transform has tokens",
                    );
                }
            }
            if let Some(source) = source {
                out.push(Column {
                    name: name.clone(),
                    source,
                    required: col.required,
                    transforms,
                    out_type: ty,
                    token_domain: col.token_domain.clone(),
                });
            }
        }
        out
    }
}

/// A `meta:` suggestion like `attributes.` whose name part is empty is no help.
fn name_is_empty(meta: &str) -> bool {
    meta.ends_with('.')
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

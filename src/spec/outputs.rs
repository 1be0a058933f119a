//! Validating where rows go: the single-table form (`target.table` + `columns`) or several
//! `outputs:`, each with its conditions, fan-out and write mode, compiled into [`Output`]s.

use super::condition::{self, Condition};
use super::diagnose::with_suggestion;
use super::validate::{Validator, is_identifier};
use super::{Column, ColumnSource, ForEach, MetaField, Output, Write, types::*};
use serde_json::Value as J;

impl Validator<'_> {
    /// Compiles the outputs of a spec; problems are recorded, and the outputs that compiled
    /// are returned.
    pub(super) fn outputs(
        &mut self,
        map: &serde_json::Map<String, J>,
        target: Option<&TargetConfig>,
        suggested: &[&str],
    ) -> Vec<Output> {
        let has_outputs = map.get("outputs").is_some_and(|o| !o.is_null());
        let columns = map.get("columns").filter(|c| !c.is_null());
        if has_outputs {
            if columns.is_some() {
                self.d.issue(
                    "columns",
                    "give either `outputs` or `columns` (with `target.table`), not both",
                );
            }
            if let Some(t) = target {
                let single_table_keys = [
                    ("target.table", t.table.is_some()),
                    ("target.write", t.write != WriteMode::Insert),
                    ("target.key", !t.key.is_empty()),
                    ("target.only_if_newer", t.only_if_newer.is_some()),
                ];
                for (key, set) in single_table_keys {
                    if set {
                        self.d.issue(
                            key,
                            "belongs to the single-table form; with `outputs` set it on each output",
                        );
                    }
                }
            }
            return self.output_list(map.get("outputs").unwrap_or(&J::Null));
        }
        let Some(target) = target else {
            return Vec::new();
        };
        let table = match &target.table {
            Some(t) => t.clone(),
            None => {
                self.d.issue(
                    "target.table",
                    "missing: name the target table, or list several under `outputs:`",
                );
                String::new()
            }
        };
        let columns = match columns {
            Some(J::Object(cols)) if !cols.is_empty() => self.columns(cols, "columns"),
            Some(J::Object(_)) => {
                self.d.issue("columns", "needs at least one column");
                Vec::new()
            }
            Some(_) => {
                self.d.issue(
                    "columns",
                    "must be a mapping of column name to column settings",
                );
                Vec::new()
            }
            None => {
                if !suggested.contains(&"columns") && !suggested.contains(&"outputs") {
                    self.d.issue(
                        "columns",
                        "missing key `columns` (or list several tables under `outputs:`)",
                    );
                }
                Vec::new()
            }
        };
        if !table.is_empty() {
            self.check_table("target.table", &table);
        }
        let write = self.write_mode(
            "target",
            target.write,
            &target.key,
            target.only_if_newer.as_deref(),
            &columns,
        );
        self.check_element_use("columns", None, &columns);
        vec![Output {
            table,
            when: None,
            filter: None,
            for_each: None,
            write,
            columns,
        }]
    }

    /// The `outputs:` list.
    fn output_list(&mut self, value: &J) -> Vec<Output> {
        let Some(items) = value.as_array().filter(|a| !a.is_empty()) else {
            self.d
                .issue("outputs", "must be a list of at least one output table");
            return Vec::new();
        };
        let mut out: Vec<Output> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let base = format!("outputs[{i}]");
            let Some(cfg) = self.d.section::<OutputConfig>(item, &base) else {
                continue;
            };
            self.check_table(&format!("{base}.table"), &cfg.table);
            if out.iter().any(|o| o.table == cfg.table) {
                self.d.issue(
                    format!("{base}.table"),
                    format!(
                        "table `{}` is already an output; give each table once",
                        cfg.table
                    ),
                );
            }
            // Columns in spec order: read them from the loose tree, not the sorted serde map.
            let columns = match item.get("columns") {
                Some(J::Object(cols)) if !cols.is_empty() => {
                    self.columns(cols, &format!("{base}.columns"))
                }
                _ => {
                    self.d
                        .issue(format!("{base}.columns"), "needs at least one column");
                    Vec::new()
                }
            };
            let for_each =
                cfg.for_each
                    .as_ref()
                    .and_then(|text| match condition::parse_operand(text) {
                        Ok(op) if !op.element => Some(ForEach {
                            text: text.clone(),
                            query: op.query,
                        }),
                        Ok(_) => {
                            self.d.issue(
                                format!("{base}.for_each"),
                                "must be a JSONPath into the message, starting with `$`",
                            );
                            None
                        }
                        Err(e) => {
                            self.d.issue(format!("{base}.for_each"), e);
                            None
                        }
                    });
            let when = cfg
                .when
                .as_ref()
                .and_then(|t| self.condition(&format!("{base}.when"), t));
            let filter = cfg
                .filter
                .as_ref()
                .and_then(|t| self.condition(&format!("{base}.filter"), t));
            for (key, c) in [("when", &when), ("filter", &filter)] {
                if let Some(c) = c
                    && c.reads_element()
                    && cfg.for_each.is_none()
                {
                    self.d.issue(
                        format!("{base}.{key}"),
                        "reads `@` (a for_each element), but this output has no `for_each`",
                    );
                }
            }
            let write = self.write_mode(
                &base,
                cfg.write,
                &cfg.key,
                cfg.only_if_newer.as_deref(),
                &columns,
            );
            self.check_element_use(
                &format!("{base}.columns"),
                cfg.for_each.as_deref(),
                &columns,
            );
            out.push(Output {
                table: cfg.table,
                when,
                filter,
                for_each,
                write,
                columns,
            });
        }
        out
    }

    /// A condition, parsed; a problem is recorded at `path`.
    pub(super) fn condition(&mut self, path: &str, text: &str) -> Option<Condition> {
        match condition::parse(text) {
            Ok(c) => {
                if path == "filter" && c.reads_element() {
                    self.d.issue(
                        path,
                        "reads `@`, but a spec-level filter sees whole messages; use `$`",
                    );
                }
                Some(c)
            }
            Err(e) => {
                self.d.issue(path, e);
                None
            }
        }
    }

    /// A target table name.
    fn check_table(&mut self, path: &str, table: &str) {
        if !is_identifier(table) {
            self.d.issue(
                path,
                "must be a table name (letters, digits, _; optionally schema.table)",
            );
        }
    }

    /// `@` paths and `for_each.*` metadata need a `for_each`.
    fn check_element_use(&mut self, prefix: &str, for_each: Option<&str>, columns: &[Column]) {
        if for_each.is_some() {
            return;
        }
        for c in columns {
            let (key, what) = match &c.source {
                ColumnSource::Element { .. } => ("path", "an `@` path reads a for_each element"),
                ColumnSource::Meta(MetaField::ForEachIndex | MetaField::ForEachPosition) => {
                    ("meta", "for_each metadata numbers for_each elements")
                }
                _ => continue,
            };
            self.d.issue(
                format!("{prefix}.{}.{key}", c.name),
                format!("{what}, but this output has no `for_each`"),
            );
        }
    }

    /// The write mode and its key, checked against the output's columns.
    fn write_mode(
        &mut self,
        base: &str,
        mode: WriteMode,
        key: &[String],
        only_if_newer: Option<&str>,
        columns: &[Column],
    ) -> Write {
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        if mode != WriteMode::Upsert {
            if !key.is_empty() {
                self.d
                    .issue(format!("{base}.key"), "is only used with `write: upsert`");
            }
            if only_if_newer.is_some() {
                self.d.issue(
                    format!("{base}.only_if_newer"),
                    "is only used with `write: upsert`",
                );
            }
            return match mode {
                WriteMode::Ignore => Write::Ignore,
                _ => Write::Insert,
            };
        }
        if key.is_empty() {
            self.d.issue(
                format!("{base}.key"),
                "`write: upsert` needs `key: [column, ...]`, the columns of a unique index",
            );
        }
        for (i, k) in key.iter().enumerate() {
            match columns.iter().find(|c| &c.name == k) {
                None if !columns.is_empty() => self.d.issue(
                    format!("{base}.key[{i}]"),
                    with_suggestion(format!("no column `{k}`"), k, &names),
                ),
                Some(c) if !c.required => self.d.issue(
                    format!("{base}.key[{i}]"),
                    format!(
                        "key column `{k}` must be `required: true`: a NULL key never conflicts, so it would insert a new row every time"
                    ),
                ),
                _ => {}
            }
            if key[..i].contains(k) {
                self.d
                    .issue(format!("{base}.key[{i}]"), format!("`{k}` is listed twice"));
            }
        }
        if let Some(col) = only_if_newer
            && !columns.is_empty()
            && !columns.iter().any(|c| c.name == col)
        {
            self.d.issue(
                format!("{base}.only_if_newer"),
                with_suggestion(format!("no column `{col}`"), col, &names),
            );
        }
        Write::Upsert {
            key: key.to_vec(),
            only_if_newer: only_if_newer.map(str::to_string),
        }
    }
}

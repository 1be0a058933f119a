//! `CREATE TABLE` statements for a spec's outputs, so a new queue's tables come from its spec:
//! one column per spec column with the Postgres type its transforms produce, `NOT NULL` for
//! `required` columns and the upsert key as the primary key.
//!
//! Pure: it reads the compiled spec and returns text; `etl-engine ddl` prints it.

use crate::db::quote_ident;
use crate::spec::{Output, Spec, Write};
use crate::value::ValType;

/// The Postgres column type written for a value of static type `t`. Untyped JSON (whatever a
/// path found) is written as its text, so it is a `text` column; tokens are text as well.
pub fn pg_column_type(t: ValType) -> &'static str {
    match t {
        ValType::Json | ValType::Text => "text",
        ValType::Integer => "integer",
        ValType::BigInt => "bigint",
        ValType::Boolean => "boolean",
        ValType::Date => "date",
        ValType::Timestamp => "timestamptz",
        ValType::Numeric => "numeric",
        ValType::Jsonb => "jsonb",
        ValType::Uuid => "uuid",
        ValType::TextArray => "text[]",
    }
}

/// The `CREATE TABLE IF NOT EXISTS` statement of one output.
pub fn create_table(o: &Output) -> String {
    let key: &[String] = match &o.write {
        Write::Upsert { key, .. } => key,
        Write::Insert | Write::Ignore => &[],
    };
    let mut lines: Vec<String> = o
        .columns
        .iter()
        .map(|c| {
            // Key columns are required by validation; NOT NULL is stated for them anyway, so
            // the statement reads the same whether or not a primary key follows.
            let not_null = if c.required || key.contains(&c.name) {
                " NOT NULL"
            } else {
                ""
            };
            format!(
                "    {} {}{not_null}",
                quote_ident(&c.name),
                pg_column_type(c.out_type)
            )
        })
        .collect();
    if !key.is_empty() {
        let cols: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
        lines.push(format!("    PRIMARY KEY ({})", cols.join(", ")));
    }
    format!(
        "CREATE TABLE IF NOT EXISTS {} (\n{}\n);\n",
        quote_ident(&o.table),
        lines.join(",\n")
    )
}

/// The statements of every output of `spec`, in spec order, each preceded by a comment naming
/// the spec and its write mode.
pub fn create_tables(spec: &Spec) -> String {
    let mut out = String::new();
    for o in &spec.outputs {
        let mode = match &o.write {
            Write::Insert => "insert".to_string(),
            Write::Ignore => "ignore".to_string(),
            Write::Upsert { only_if_newer, .. } => match only_if_newer {
                Some(c) => format!("upsert, only if {c} is not older"),
                None => "upsert".to_string(),
            },
        };
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!(
            "-- Output {} of pipeline {} (write: {mode}).\n",
            o.table, spec.name
        ));
        out.push_str(&create_table(o));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_spec_str;

    fn spec(yaml: &str) -> Spec {
        parse_spec_str(yaml, std::path::Path::new("t.yaml"), false).unwrap()
    }

    const HEAD: &str =
        "name: t\nsource: {type: file, path: x.jsonl}\ntarget: {url: postgres://x/y}\n";

    #[test]
    fn types_follow_the_transforms_and_required_gives_not_null() {
        let s = spec(
            "name: t\nsource: {type: file, path: x.jsonl}\n\
             target: {url: postgres://x/y, table: s.t, write: upsert, key: [id]}\n\
             columns:\n\
             \x20 id: {path: $.id, required: true, transforms: [{type: cast, to: uuid}]}\n\
             \x20 raw: {path: $.raw}\n\
             \x20 amount: {path: $.c, transforms: [{type: scale, decimals: 2}]}\n\
             \x20 doc: {path: $.d, transforms: [{type: cast, to: jsonb}]}\n\
             \x20 tags: {path: $.tags, transforms: [{type: cast, to: \"text[]\"}]}\n\
             \x20 at: {path: $.at, required: true, transforms: [{type: cast, to: timestamp}]}\n\
             \x20 n: {path: $.n, transforms: [{type: cast, to: bigint}]}\n\
             \x20 email: {path: $.e, transforms: [{type: encrypt}]}\n",
        );
        let ddl = create_tables(&s);
        assert!(ddl.starts_with("-- Output s.t of pipeline t (write: upsert).\n"));
        assert!(
            ddl.contains("CREATE TABLE IF NOT EXISTS \"s\".\"t\" (\n"),
            "{ddl}"
        );
        for line in [
            "\"id\" uuid NOT NULL,",
            "\"raw\" text,",
            "\"amount\" numeric,",
            "\"doc\" jsonb,",
            "\"tags\" text[],",
            "\"at\" timestamptz NOT NULL,",
            "\"n\" bigint,",
            "\"email\" text,",
            "PRIMARY KEY (\"id\")\n);",
        ] {
            assert!(ddl.contains(line), "missing `{line}` in\n{ddl}");
        }
    }

    #[test]
    fn every_output_in_order_and_only_upsert_has_a_key() {
        let s = spec(&format!(
            "{HEAD}outputs:\n\
             \x20 - table: a\n\
             \x20   columns: {{x: {{path: $.x}}}}\n\
             \x20 - table: b\n\
             \x20   for_each: $.items[*]\n\
             \x20   write: upsert\n\
             \x20   key: [id, line]\n\
             \x20   only_if_newer: at\n\
             \x20   columns:\n\
             \x20     id: {{path: $.id, required: true}}\n\
             \x20     line: {{meta: for_each.position, required: true}}\n\
             \x20     at: {{path: $.at, transforms: [{{type: from_epoch, to: timestamp}}]}}\n"
        ));
        let ddl = create_tables(&s);
        let a = ddl.find("\"a\"").unwrap();
        let b = ddl.find("\"b\"").unwrap();
        assert!(a < b);
        assert_eq!(ddl.matches("PRIMARY KEY").count(), 1, "{ddl}");
        assert!(ddl.contains("PRIMARY KEY (\"id\", \"line\")"), "{ddl}");
        assert!(ddl.contains("\"line\" integer NOT NULL"), "{ddl}");
        assert!(ddl.contains("upsert, only if at is not older"), "{ddl}");
        assert!(
            ddl.contains("CREATE TABLE IF NOT EXISTS \"a\" (\n    \"x\" text\n);"),
            "{ddl}"
        );
    }
}

//! The spec tooling through the real binary, with no service running: the JSON Schema (fresh,
//! and it accepts the shipped specs), `test` (passes, and fails visibly when an expectation
//! changes), `preview` of the example messages, and spec errors that point at file:line:column.

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every spec shipped in specs/.
fn shipped_specs() -> Vec<PathBuf> {
    let mut specs: Vec<PathBuf> = std::fs::read_dir(root().join("specs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    specs.sort();
    assert!(
        specs.len() >= 2,
        "specs/ should hold the logins spec and a second pipeline: {specs:?}"
    );
    specs
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn schema_copy_is_fresh() {
    let generated = stdout(&run_engine(&["schema"], &[], true));
    let kept = std::fs::read_to_string(root().join("schema/spec.schema.json")).unwrap_or_default();
    assert!(
        generated == kept,
        "schema/spec.schema.json is stale: the spec types changed. Regenerate it with\n    cargo run --quiet -- schema > schema/spec.schema.json"
    );
}

fn yaml_as_json(path: &Path) -> serde_json::Value {
    let v: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::to_value(v).unwrap()
}

#[test]
fn schema_accepts_shipped_specs_and_rejects_misspellings() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("schema/spec.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema");
    for spec in shipped_specs() {
        let text = std::fs::read_to_string(&spec).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=../schema/spec.schema.json\n"),
            "{} must start with the yaml-language-server comment so editors find the schema",
            spec.display()
        );
        let doc = yaml_as_json(&spec);
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{} does not match the schema: {errors:#?}",
            spec.display()
        );

        // The schema is strict where the loader is: an unknown key or transform is an error.
        let mut bad = doc.clone();
        bad["target"]["tabel"] = "x".into();
        assert!(
            !validator.is_valid(&bad),
            "{}: unknown key accepted",
            spec.display()
        );
        let mut bad = doc.clone();
        // The first column: of the single-table form, or of the first output.
        let columns = if bad["columns"].is_object() {
            &mut bad["columns"]
        } else {
            &mut bad["outputs"][0]["columns"]
        };
        let (_, col) = columns.as_object_mut().unwrap().iter_mut().next().unwrap();
        col["transforms"] = serde_json::json!([{"type": "versoin_to_int"}]);
        assert!(
            !validator.is_valid(&bad),
            "{}: unknown transform accepted",
            spec.display()
        );
    }
}

#[test]
fn validate_takes_several_specs_and_names_the_invalid_one() {
    let specs = shipped_specs();
    let args: Vec<&str> = std::iter::once("validate")
        .chain(specs.iter().map(|p| p.to_str().unwrap()))
        .collect();
    let text = stdout(&run_engine(&args, &[], true));
    assert_eq!(
        text.lines().filter(|l| l.contains(": OK (")).count(),
        specs.len(),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: b\nsource: {type: file, path: x.jsonl}\ntarget: {url: u}\n",
    )
    .unwrap();
    let out = engine()
        .args([
            "validate",
            specs[0].to_str().unwrap(),
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(": OK ("),
        "the valid spec is still reported"
    );
    assert!(stderr(&out).contains("bad.yaml"), "{}", stderr(&out));
}

#[test]
fn ddl_covers_every_output_of_the_shipped_specs() {
    for (spec, tables) in [
        ("specs/orders.yaml", &["orders", "order_items"][..]),
        ("specs/events.yaml", &["page_views", "event_purchases"][..]),
        ("specs/signups.yaml", &["signups"][..]),
    ] {
        let ddl = stdout(&run_engine(
            &["ddl", root().join(spec).to_str().unwrap()],
            &[],
            true,
        ));
        assert_eq!(
            ddl.matches("CREATE TABLE IF NOT EXISTS").count(),
            tables.len(),
            "{ddl}"
        );
        for t in tables {
            assert!(
                ddl.contains(&format!("CREATE TABLE IF NOT EXISTS \"{t}\" (")),
                "{ddl}"
            );
        }
    }
    let ddl = stdout(&run_engine(
        &["ddl", root().join("specs/orders.yaml").to_str().unwrap()],
        &[],
        true,
    ));
    for line in [
        "\"total\" numeric NOT NULL",
        "\"placed_at\" timestamptz NOT NULL",
        "\"line\" integer NOT NULL",
        "PRIMARY KEY (\"order_id\")",
        "PRIMARY KEY (\"order_id\", \"line\")",
    ] {
        assert!(ddl.contains(line), "missing `{line}`:\n{ddl}");
    }
}

#[test]
fn shipped_specs_validate_and_their_tests_pass() {
    for spec in shipped_specs() {
        let s = spec.to_str().unwrap();
        run_engine(&["validate", s], &[], true);
        let out = run_engine(&["test", s], &[], true);
        let text = stdout(&out);
        let passed = text.lines().filter(|l| l.starts_with("PASS  ")).count();
        assert!(
            passed >= 5,
            "{} should carry at least 5 spec tests:\n{text}",
            spec.display()
        );
        assert!(!text.contains("FAIL"), "{text}");
        assert!(
            text.contains(&format!("{s}: {passed} passed, 0 failed")),
            "{text}"
        );
    }
}

#[test]
fn a_changed_expectation_fails_with_a_diff() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("specs/logins.yaml")).unwrap();
    assert_eq!(
        text.matches("      app_version: 96000\n").count(),
        1,
        "the odd-version test expects 96000"
    );
    let changed = dir.path().join("logins.yaml");
    std::fs::write(
        &changed,
        text.replace("      app_version: 96000\n", "      app_version: 96001\n"),
    )
    .unwrap();
    let out = run_engine(&["test", changed.to_str().unwrap()], &[], false);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let fail: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL  ")).collect();
    assert_eq!(fail.len(), 1, "{text}");
    assert!(fail[0].contains("odd version"), "{text}");
    assert!(
        text.contains("column app_version:\n        - expected: 96001\n        + actual:   96000"),
        "{text}"
    );
    assert!(text.contains("1 failed"), "{text}");

    // A reject expectation that no longer matches shows the actual reason.
    let text = std::fs::read_to_string(root().join("specs/logins.yaml")).unwrap();
    std::fs::write(
        &changed,
        text.replace(
            "expect_reject: \"decode: body is not valid JSON\"",
            "expect_reject: \"decode: truncated\"",
        ),
    )
    .unwrap();
    let out = run_engine(&["test", changed.to_str().unwrap()], &[], false);
    let text = stdout(&out);
    assert!(
        text.contains("- expected: …decode: truncated…")
            && text.contains("+ actual:   decode: body is not valid JSON"),
        "{text}"
    );
}

#[test]
fn spec_test_mistakes_are_spec_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("specs/logins.yaml")).unwrap();
    let bad = dir.path().join("logins.yaml");
    std::fs::write(
        &bad,
        text.replacen(
            "      device_type: android\n",
            "      device_typ: android\n",
            1,
        ),
    )
    .unwrap();
    let out = run_engine(&["test", bad.to_str().unwrap()], &[], false);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(
            "tests[0].expect_row.device_typ: no column `device_typ` (did you mean `device_type`?)"
        ),
        "{err}"
    );
}

#[test]
fn misspelled_keys_point_at_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("specs/logins.yaml")).unwrap();
    let line = text
        .lines()
        .position(|l| l.trim() == "to: date")
        .expect("create_date's from_epoch has `to: date`")
        + 1;
    let bad = dir.path().join("logins.yaml");
    std::fs::write(
        &bad,
        text.replace("        to: date\n", "        too: date\n")
            .replace("- type: version_to_int", "- type: versoin_to_int"),
    )
    .unwrap();
    let out = run_engine(&["validate", bad.to_str().unwrap()], &[], false);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let b = bad.display();
    assert!(
        err.contains(&format!("{b}:{line}:9: columns.create_date.transforms[0].too: unknown key `too` (did you mean `to`?)")),
        "{err}"
    );
    assert!(err.contains("columns.app_version.transforms[0].type: unknown transform \"versoin_to_int\" (did you mean `version_to_int`?)"), "{err}");
    assert!(err.contains("has 2 problems"), "{err}");
}

#[test]
fn a_spec_without_a_name_is_an_error_and_other_variables_may_be_any_bytes() {
    use std::os::unix::ffi::OsStringExt;
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("specs/logins.yaml")).unwrap();
    let bad = dir.path().join("logins.yaml");
    std::fs::write(&bad, text.replace("name: logins\n", "")).unwrap();
    // A variable that is not UTF-8 elsewhere in the environment is no panic; an override is
    // still applied and named.
    let out = engine()
        .args(["validate", bad.to_str().unwrap()])
        .env(
            "SPEC_TOOLS_TEST_NOT_UTF8",
            std::ffi::OsString::from_vec(vec![0xff, 0xfe]),
        )
        .env("ETL_SPEC_SOURCE__POLLERS", "100")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let b = bad.display();
    assert!(
        err.contains(&format!("{b}:1:1: name: required: the pipeline name scopes the ledger and rejects; set it once and never change it (it was \"logins\" by default before)")),
        "{err}"
    );
    assert!(
        err.contains("source.pollers: must be between 1 and 64 (set by environment variable ETL_SPEC_SOURCE__POLLERS)"),
        "{err}"
    );
    assert!(err.contains("has 2 problems"), "{err}");
}

/// Preview output (stdout is a pipe here, so JSON lines).
fn preview(args: &[&str], envs: &[(&str, &str)]) -> (Vec<serde_json::Value>, String) {
    let out = run_engine(args, envs, true);
    let lines = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines when stdout is not a terminal"))
        .collect();
    (lines, stderr(&out))
}

#[test]
fn preview_works_on_the_examples_without_services() {
    let spec = root().join("specs/logins.yaml");
    let examples = example_logins();
    // Unreachable services: preview must not need them.
    let no_services = [
        ("ETL_SPEC_TARGET__URL", "postgres://u:p@127.0.0.1:9/none"),
        ("ETL_SPEC_SOURCE__ENDPOINT_URL", "http://127.0.0.1:9"),
    ];
    let (lines, err) = preview(
        &[
            "preview",
            spec.to_str().unwrap(),
            "--input",
            examples.to_str().unwrap(),
        ],
        &no_services,
    );
    let (valid, invalid) = classify_examples(&examples);
    let rows: Vec<&serde_json::Value> = lines.iter().filter_map(|l| l.get("row")).collect();
    let rejects: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.get("reject").and_then(|r| r.as_str()))
        .collect();
    assert_eq!((rows.len(), rejects.len()), (valid, invalid), "{err}");
    assert!(
        err.contains("public test keyring"),
        "the note about test tokens is missing: {err}"
    );
    assert!(
        rejects
            .iter()
            .any(|r| r.starts_with("decode: body is not valid JSON")),
        "{rejects:?}"
    );
    assert!(
        rejects
            .iter()
            .any(|r| r.contains("column user_id: required value")),
        "{rejects:?}"
    );

    // Rows are transformed (masked, typed) and name every column.
    let text = std::fs::read_to_string(&examples).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let row = rows[0];
    assert_eq!(row["user_id"], first["user_id"]);
    let ip = first["ip"].as_str().unwrap();
    let masked = row["masked_ip"].as_str().unwrap();
    assert!(masked.len() == 64 && masked != ip, "{row}");
    assert!(row["app_version"].is_i64(), "{row}");
    assert_eq!(row.as_object().unwrap().len(), 7);
    let all = lines.iter().map(|l| l.to_string()).collect::<String>();
    assert!(!all.contains(ip), "a raw IP reached the preview output");

    // --limit, and the production keyring when one is configured (different tokens, no note).
    let dir = tempfile::tempdir().unwrap();
    let keyring = keygen(dir.path(), "k.json");
    let (limited, err) = preview(
        &[
            "preview",
            spec.to_str().unwrap(),
            "--input",
            examples.to_str().unwrap(),
            "--limit",
            "3",
        ],
        &[("ETL_KEYRING", keyring.to_str().unwrap())],
    );
    assert_eq!(limited.len(), 3);
    assert!(!err.contains("public test keyring"), "{err}");
    assert_ne!(
        limited[0]["row"]["masked_ip"], row["masked_ip"],
        "the configured keyring must be used"
    );
    assert_eq!(limited[0]["row"]["user_id"], row["user_id"]);
}

#[test]
fn preview_of_a_queue_spec_needs_an_input_file() {
    let spec = root().join("specs/logins.yaml");
    let out = run_engine(&["preview", spec.to_str().unwrap()], &[], false);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--input"), "{}", stderr(&out));
}

#[test]
fn preview_shows_lines_that_are_not_utf8_or_too_long_as_rejects() {
    const CAP: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(example_logins()).unwrap();
    let valid = text.lines().next().unwrap();
    // Lines 1 and 6 valid, 2 and 3 not UTF-8, 4 blank, 5 one byte over the cap (with "\r\n").
    let secret = "preview-secret-marker";
    let mut bytes = format!("{valid}\n{{\"user_id\": \"{secret}").into_bytes();
    bytes.extend_from_slice(b"\xff\"}\n{\"user_id\": \"\xff\xfe\"}\r\n\n");
    let mut long = format!("{{\"user_id\": \"{secret}\", \"pad\": \"").into_bytes();
    long.resize(CAP - 1, b'x');
    long.extend_from_slice(b"\"}");
    assert_eq!(long.len(), CAP + 1);
    bytes.extend_from_slice(&long);
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(format!("{valid}\n").as_bytes());
    let input = dir.path().join("mixed.jsonl");
    std::fs::write(&input, &bytes).unwrap();

    let spec = root().join("specs/logins.yaml");
    let out = run_engine(
        &[
            "preview",
            spec.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ],
        &[],
        true,
    );
    let (out_text, err) = (stdout(&out), stderr(&out));
    assert!(
        !out_text.contains(secret) && !err.contains(secret),
        "line contents reached the output"
    );
    let lines: Vec<serde_json::Value> = out_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at = |n: u64| -> &serde_json::Value {
        lines
            .iter()
            .find(|l| l["line"] == n)
            .unwrap_or_else(|| panic!("no line {n} in {lines:?}"))
    };
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(at(1).get("row").is_some(), "{}", at(1));
    for n in [2, 3] {
        let reject = at(n)["reject"].as_str().unwrap_or_default();
        assert!(reject.contains("not valid UTF-8"), "line {n}: {reject}");
    }
    assert_eq!(
        at(5)["reject"],
        "decode: the line is 1048577 bytes, over the 1048576-byte limit; the reject keeps its first 4096 bytes"
    );
    assert!(at(6).get("row").is_some(), "{}", at(6));
    assert!(err.contains("2 rows, 3 rejects"), "{err}");
}

//! No leaks: the real binary at the most verbose log level (RUST_LOG=trace, and trace asked
//! for by name for the HTTP and SDK crates) over messages with known IPs and device ids, plus
//! rejects carrying PII, never prints a raw PII value or any spelling of the key material; and
//! `Debug` of every type that carries PII or keys is redacted.

mod common;
mod vault_common;
use etl_engine::crypto::{Binding, Keyring, VaultCipher};
use etl_engine::process::Processor;
use etl_engine::source::{BatchEntry, ReceivedMessage};
use etl_engine::transform::Tokenizer;
use etl_engine::value::Val;
use etl_engine::vault::recover::{Recovered, Request, Selector};
use std::collections::HashMap;
use vault_common::*;

const MOST_VERBOSE: &str = "trace,aws_smithy_runtime=trace,aws_smithy_runtime::client::orchestrator::http=trace,\
aws_sdk_sqs=trace,hyper=trace,hyper_util=trace,h2=trace,reqwest=trace,rustls=trace,sqlx=trace";

#[tokio::test]
async fn most_verbose_logs_carry_no_pii_and_no_key_material() {
    let f = Fixture::new().await;
    let sent = logins(25, 4);
    let rejected = [
        r#"{"user_id": null, "ip": "192.0.2.44", "device_id": "555-99-4444"}"#,
        "garbage 192.0.2.45 555-99-4545",
    ];
    let mut bodies: Vec<String> = sent.iter().map(Login::body).collect();
    bodies.extend(rejected.iter().map(|s| s.to_string()));
    // Half through the engine's own `send` (the example loader), half through the SDK.
    let input = f.dir.path().join("input.jsonl");
    std::fs::write(&input, bodies[..13].join("\n")).unwrap();
    let env = [("RUST_LOG", MOST_VERBOSE)];
    let mut outputs = vec![(
        "send",
        f.engine(
            &["send", f.spec_s(), input.to_str().unwrap()],
            &f.keyring,
            &env,
        ),
    )];
    f.send(&bodies[13..]).await;

    outputs.push((
        "run",
        f.engine(
            &["run", f.spec_s(), "--drain", "--progress", "log"],
            &f.keyring,
            &env,
        ),
    ));
    let more = logins(5, 5);
    f.send(&more.iter().map(Login::body).collect::<Vec<_>>())
        .await;
    outputs.push((
        "run json",
        f.engine(
            &["--log-format", "json", "run", f.spec_s(), "--drain"],
            &f.keyring,
            &env,
        ),
    ));

    // Key management and rotation print ids and counts only.
    outputs.push((
        "keyring list",
        f.engine(&["keyring", "list", f.keyring_s()], &f.keyring, &env),
    ));
    outputs.push((
        "add-key",
        f.engine(
            &[
                "keyring",
                "add-key",
                f.keyring_s(),
                "--purpose",
                "encryption",
            ],
            &f.keyring,
            &env,
        ),
    ));
    outputs.push((
        "rotate",
        f.engine(
            &["vault-rotate", f.spec_s(), "--batch-size", "8"],
            &f.keyring,
            &env,
        ),
    ));
    for (what, out) in &outputs {
        exited(out, 0);
        assert!(
            !out.stderr.is_empty() || what.starts_with("keyring") || what == &"add-key",
            "{what}: no log output at all"
        );
    }

    // Recovery prints the value on stdout by design; its logs must not.
    let recover = f.engine(
        &[
            "vault-decrypt",
            f.spec_s(),
            "--column",
            "masked_ip",
            "--where",
            &format!("user_id={}", sent[0].user_id),
            "--reason",
            "leak test",
        ],
        &f.keyring,
        &env,
    );
    exited(&recover, 0);
    assert!(
        String::from_utf8_lossy(&recover.stdout).contains(&sent[0].ip),
        "recovery works"
    );

    let mut haystack = String::new();
    for (what, out) in &outputs {
        haystack.push_str(&format!(
            "=== {what}\n{}\n{}\n",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    haystack.push_str(&String::from_utf8_lossy(&recover.stderr));
    // The logs really were verbose: SQL statements at debug, the engine's own debug lines.
    assert!(
        haystack.contains("sqlx::query") && haystack.contains("DEBUG"),
        "RUST_LOG=trace produced no debug output:\n{haystack}"
    );

    let mut needles: Vec<String> = Vec::new();
    for l in sent.iter().chain(&more) {
        needles.push(l.ip.clone());
        needles.push(l.device_id.clone());
    }
    needles.extend(["192.0.2.44", "555-99-4444", "192.0.2.45", "555-99-4545"].map(String::from));
    needles.extend(key_spellings(&f.keyring));
    for n in &needles {
        if let Some(at) = haystack.find(n.as_str()) {
            let from = haystack[..at].rfind('\n').map(|i| i + 1).unwrap_or(0);
            let line: String = haystack[from..]
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(400)
                .collect();
            panic!("leaked {n:?} in:\n{line}");
        }
    }
}

#[test]
fn debug_of_pii_and_key_carrying_types_is_redacted() {
    let ip = "198.51.100.77";
    let body = format!(
        r#"{{"user_id": "u-1", "ip": "{ip}", "device_id": "555-00-7777", "app_version": "1.0.0"}}"#
    );
    let ring = Keyring::generate().unwrap();
    let key_b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .encode(ring.encryption_keys[0].material().unwrap())
    };
    let key_hex = hex::encode(ring.encryption_keys[0].material().unwrap());
    let secrets = [ip, "555-00-7777", &key_b64[..20], &key_hex[..20]];
    let check = |what: &str, dbg: String| {
        for s in secrets {
            assert!(!dbg.contains(s), "{what} Debug leaks {s:?}: {dbg}");
        }
    };

    let msg = ReceivedMessage {
        message_id: "m-1".into(),
        receipt_handle: "r".into(),
        body: body.clone(),
        attributes: HashMap::new(),
        message_attributes: HashMap::new(),
    };
    check("ReceivedMessage", format!("{msg:?}"));
    check(
        "Val",
        format!(
            "{:?} {:?}",
            Val::Text(ip.into()),
            Val::Json(serde_json::json!({ "ip": ip }))
        ),
    );
    check(
        "BatchEntry",
        format!(
            "{:?}",
            BatchEntry {
                id: "0".into(),
                value: body.clone()
            }
        ),
    );

    // A row (with pending vault values) and a reject (with its body), through the real processor.
    let spec_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("specs/logins.yaml");
    let spec = etl_engine::spec::load_spec(&spec_path).unwrap();
    let tok = Tokenizer::new(ring.active_hash_key().unwrap()).unwrap();
    check("Tokenizer", format!("{tok:?}"));
    let p = Processor::new(&spec, Some(tok), None).unwrap();
    let mut attrs = HashMap::new();
    attrs.insert("SentTimestamp".to_string(), "1700000000000".to_string());
    let row = p.process(ReceivedMessage {
        attributes: attrs,
        ..msg.clone()
    });
    assert!(
        matches!(row.outcome, etl_engine::process::Outcome::Rows { .. }),
        "{row:?}"
    );
    check("Processed (row)", format!("{row:?}"));
    let reject = p.process(ReceivedMessage {
        body: format!("not json {ip} 555-00-7777"),
        ..msg
    });
    assert!(
        reject.body.contains(ip),
        "the reject keeps its body for encryption"
    );
    check("Processed (reject)", format!("{reject:?}"));

    // Keys, cipher state, ciphertexts, recovered values, recovery requests.
    check("Keyring", format!("{ring:?}"));
    check("Key", format!("{:?}", ring.encryption_keys[0]));
    let cipher = VaultCipher::new(&ring).unwrap();
    check("VaultCipher", format!("{cipher:?}"));
    let sealed = cipher
        .encrypt(
            Binding {
                scope: "t",
                column: "c",
                token: "x",
            },
            ip.as_bytes(),
        )
        .unwrap();
    check("Sealed", format!("{sealed:?}"));
    check(
        "Recovered",
        format!(
            "{:?}",
            Recovered {
                token: "x".into(),
                value: zeroize::Zeroizing::new(ip.to_string())
            }
        ),
    );
    let req = Request {
        output: None,
        column: "masked_ip".into(),
        selector: Selector::Where(vec![("user_id".into(), ip.into())]),
        actor: "a".into(),
        reason: "r".into(),
    };
    check("Request", format!("{req:?}"));
}

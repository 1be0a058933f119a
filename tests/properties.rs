//! Property tests: the parsers that meet hostile input (message bodies, spec files, keyrings,
//! versions) and the vault's token/cipher round trip, on generated inputs.
//!
//! Case counts come from `PROPTEST_CASES` (proptest's default config reads it; 256 when unset),
//! so `cargo test --test properties` stays quick and `scripts/fuzz.sh` can run many more.
//! The SQS query-protocol XML parser is private; its properties live in
//! `src/source/sqs_query/response.rs`.

use base64::Engine;
use etl_engine::crypto::{Binding, DomainTokenizer, Keyring, Tokenizer, VaultCipher};
use etl_engine::decode::{Decoder, decode};
use etl_engine::process::{Outcome, Processor};
use etl_engine::source::ReceivedMessage;
use etl_engine::spec::DecodeStep;
use etl_engine::spec::{Spec, SpecError, parse_spec_str};
use etl_engine::spec_test::test_processor;
use etl_engine::transform::version::encode;
use proptest::prelude::*;
use serde_json::{Map, Value as J};
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

const LOGINS: &str = include_str!("../specs/logins.yaml");
const PURCHASES: &str = include_str!("../specs/purchases.yaml");

/// The logins fields a body may carry; generated objects use them so extraction and the
/// transforms run, not only the decoder.
const LOGIN_FIELDS: [&str; 6] = [
    "user_id",
    "device_type",
    "ip",
    "device_id",
    "locale",
    "app_version",
];

/// Built once: loading the spec per case would dominate the run time.
fn processor() -> &'static Processor {
    static P: OnceLock<Processor> = OnceLock::new();
    P.get_or_init(|| {
        let spec: Spec = parse_spec_str(LOGINS, Path::new("specs/logins.yaml"), false)
            .expect("shipped logins spec loads");
        test_processor(&spec).expect("test processor").0
    })
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        any::<i64>().prop_map(J::from),
        any::<u64>().prop_map(J::from),
        any::<f64>().prop_map(J::from),
        any::<String>().prop_map(J::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(J::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| J::Object(m.into_iter().collect())),
        ]
    })
}

/// One `decode:` step.
fn decode_step() -> impl Strategy<Value = DecodeStep> {
    prop_oneof![
        Just(DecodeStep::Json),
        Just(DecodeStep::Sns),
        Just(DecodeStep::Base64),
        Just(DecodeStep::Gzip),
    ]
}

/// A marker no reject reason can contain by chance: reasons are fixed English text plus
/// column names and numbers.
fn marker() -> impl Strategy<Value = String> {
    "[a-z0-9]{12}".prop_map(|s| format!("zqmark{s}"))
}

/// A value for one logins field, of a random type; every string carries `marker`.
fn field_value(marker: String) -> impl Strategy<Value = J> {
    prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        any::<i64>().prop_map(J::from),
        any::<f64>().prop_map(J::from),
        (any::<String>(), any::<String>()).prop_map({
            let m = marker.clone();
            move |(a, b)| J::String(format!("{a}{m}{b}"))
        }),
        // Version-like and padded strings reach deeper into the transforms.
        "[0-9]{1,5}(\\.[0-9]{1,4}){0,3}[a-z-]{0,3}".prop_map({
            let m = marker.clone();
            move |v| J::String(format!("{v}{m}"))
        }),
        prop::collection::vec(Just(J::String(marker.clone())), 0..3).prop_map(J::Array),
        Just(J::Object(Map::from_iter([(
            "k".to_string(),
            J::String(marker.clone())
        )]))),
    ]
}

/// A logins-shaped object: each field present or absent, of a random type.
fn login_object() -> impl Strategy<Value = (String, J)> {
    marker().prop_flat_map(|m| {
        let fields: Vec<_> = LOGIN_FIELDS
            .iter()
            .map(|_| prop::option::of(field_value(m.clone())))
            .collect();
        (Just(m), fields).prop_map(|(m, values)| {
            let obj: Map<String, J> = LOGIN_FIELDS
                .iter()
                .zip(values)
                .filter_map(|(k, v)| Some((k.to_string(), v?)))
                .collect();
            (m, J::Object(obj))
        })
    })
}

/// System attributes as SQS or a file would give them, valid or not.
fn attributes() -> impl Strategy<Value = HashMap<String, String>> {
    let number_or_junk = || prop_oneof!["[0-9]{1,14}", any::<String>()];
    (
        prop::option::of(number_or_junk()),
        prop::option::of(number_or_junk()),
    )
        .prop_map(|(sent, count)| {
            let mut a = HashMap::new();
            if let Some(s) = sent {
                a.insert("SentTimestamp".to_string(), s);
            }
            if let Some(c) = count {
                a.insert("ApproximateReceiveCount".to_string(), c);
            }
            a
        })
}

fn message(body: String, attributes: HashMap<String, String>) -> ReceivedMessage {
    ReceivedMessage {
        message_id: "m-1".into(),
        receipt_handle: "rh-1".into(),
        body,
        attributes,
        message_attributes: HashMap::new(),
    }
}

/// Runs one message; checks the outcome's shape and returns the reject reason, if any.
fn process(body: String, attrs: HashMap<String, String>) -> Result<Option<String>, TestCaseError> {
    let p = processor();
    match p.process(message(body, attrs)).outcome {
        Outcome::Rows { rows, .. } => {
            prop_assert_eq!(rows.len(), 1);
            prop_assert_eq!(rows[0].values.len(), p.outputs()[0].columns.len());
            Ok(None)
        }
        Outcome::Skip { reason } => Err(TestCaseError::fail(format!("unexpected skip: {reason}"))),
        Outcome::Reject { reason } => Ok(Some(reason)),
    }
}

proptest! {
    /// The decoder accepts exactly the JSON objects and never quotes the body in its error.
    #[test]
    fn decode_never_panics_nor_quotes_the_body(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let body = String::from_utf8_lossy(&bytes);
        if let Err(e) = decode(&body) {
            let reason = e.to_string();
            // Short bodies ("1", "a") appear in any text by chance; longer ones must not.
            if body.trim().len() >= 8 {
                prop_assert!(!reason.contains(body.trim()), "{reason}");
            }
        }
    }

    #[test]
    fn decode_accepts_every_json_value(v in json_value()) {
        prop_assert!(decode(&v.to_string()).is_ok());
    }

    /// Any chain of steps on any bytes: a value or an error naming a step, never a panic, and
    /// never a quote of the body.
    #[test]
    fn decode_chain_never_panics_nor_quotes(
        steps in prop::collection::vec(decode_step(), 0..5),
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let body = String::from_utf8_lossy(&bytes);
        if let Err(e) = Decoder::new(steps).decode(&body) {
            let reason = e.to_string();
            prop_assert!(reason.starts_with("decode"), "{}", reason);
            if body.trim().len() >= 8 {
                prop_assert!(!reason.contains(body.trim()), "{}", reason);
            }
        }
    }

    /// json → gzip → base64 (optionally inside an SNS envelope) decodes back to the value,
    /// and any truncation of the packed text is a clean error or a value, never a panic.
    #[test]
    fn decode_chain_round_trip(v in json_value(), sns in any::<bool>(), cut in any::<prop::sample::Index>()) {
        let text = v.to_string();
        let want: J = serde_json::from_str(&text).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
        let packed = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        let (body, mut steps) = if sns {
            let env = serde_json::json!({
                "Type": "Notification", "MessageId": "m-1", "TopicArn": "arn:t", "Message": packed,
            });
            (env.to_string(), vec![DecodeStep::Sns])
        } else {
            (packed.clone(), vec![])
        };
        steps.extend([DecodeStep::Base64, DecodeStep::Gzip]);
        let decoded = Decoder::new(steps.clone()).decode(&body).unwrap();
        prop_assert_eq!(&decoded.body, &want);
        prop_assert_eq!(decoded.meta.sns.is_some(), sns);
        steps.push(DecodeStep::Json);
        prop_assert_eq!(Decoder::new(steps.clone()).decode(&body).unwrap().body, want);

        let at = cut.index(body.len().max(1));
        if body.is_char_boundary(at) {
            let _ = Decoder::new(steps).decode(&body[..at]);
        }
    }

    #[test]
    fn process_random_bytes_row_or_clean_reject(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        attrs in attributes(),
    ) {
        let body = String::from_utf8_lossy(&bytes).into_owned();
        if let Some(reason) = process(body.clone(), attrs)? && body.trim().len() >= 8 {
            prop_assert!(!reason.contains(body.trim()), "{reason}");
        }
    }

    #[test]
    fn process_random_json_row_or_clean_reject(v in json_value(), attrs in attributes()) {
        let body = v.to_string();
        if let Some(reason) = process(body.clone(), attrs)? && body.len() >= 8 {
            prop_assert!(!reason.contains(&body), "{reason}");
        }
    }

    /// Reasons name the stage and column, never a value: the marker in every string value
    /// must not reach the reason.
    #[test]
    fn process_login_fields_of_random_types_never_quote_values(
        (m, obj) in login_object(),
        attrs in attributes(),
    ) {
        if let Some(reason) = process(obj.to_string(), attrs)? {
            prop_assert!(!reason.contains(&m), "{reason}");
        }
    }
}

/// A token of YAML-ish text: structure characters, keys the spec knows, and junk.
fn yaml_token() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "\n",
            "  ",
            "    ",
            "- ",
            ": ",
            ":",
            "{",
            "}",
            "[",
            "]",
            ", ",
            "&a ",
            "*a",
            "!!str ",
            "!!binary ",
            "'",
            "\"",
            "# c",
            "|\n",
            ">\n",
            "? ",
            "---\n",
            "...\n",
            "~",
            "null",
            "true",
            "name: ",
            "source:\n",
            "type: sqs",
            "type: file",
            "columns:\n",
            "path: $.x",
            "meta: sent_timestamp",
            "transforms:\n",
            "- type: encrypt",
            "target:\n",
            "table: t",
            "tests:\n",
            "url: postgres://x",
            "queue: q",
            "\t",
            "<<: *a",
            "%YAML 1.2\n",
        ])
        .prop_map(str::to_string),
        "[a-z_]{1,8}",
        "-?[0-9]{1,20}(\\.[0-9]{1,4})?",
        any::<char>().prop_map(String::from),
    ]
}

fn yaml_ish() -> impl Strategy<Value = String> {
    prop::collection::vec(yaml_token(), 0..60).prop_map(|t| t.concat())
}

/// One edit of a spec's lines.
#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize),
    Duplicate(usize),
    /// Adds (positive) or removes (negative) leading spaces.
    Indent(usize, i8),
    /// Replaces what follows the line's first `: ` with another YAML value.
    ReplaceValue(usize, &'static str),
    InsertKey(usize, usize, String, &'static str),
}

const OTHER_VALUES: [&str; 12] = [
    "123", "-1.5", "true", "null", "~", "[1, 2]", "{a: 1}", "'text'", "\"\"", "[]", "{}", "- x",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    let line = any::<prop::sample::Index>();
    let value = prop::sample::select(OTHER_VALUES.to_vec());
    prop_oneof![
        line.clone()
            .prop_map(|i| Mutation::Delete(i.index(usize::MAX))),
        line.clone()
            .prop_map(|i| Mutation::Duplicate(i.index(usize::MAX))),
        (line.clone(), -4i8..=4).prop_map(|(i, d)| Mutation::Indent(i.index(usize::MAX), d)),
        (line.clone(), value.clone())
            .prop_map(|(i, v)| Mutation::ReplaceValue(i.index(usize::MAX), v)),
        (line, 0usize..8, "[a-z_]{1,12}", value).prop_map(|(i, ind, k, v)| Mutation::InsertKey(
            i.index(usize::MAX),
            ind,
            k,
            v
        )),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for m in mutations {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match m {
            Mutation::Delete(i) => {
                lines.remove(i % n);
            }
            Mutation::Duplicate(i) => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Mutation::Indent(i, d) => {
                let l = &mut lines[i % n];
                if *d >= 0 {
                    l.insert_str(0, &" ".repeat(*d as usize));
                } else {
                    let strip = l.len() - l.trim_start_matches(' ').len();
                    l.drain(..strip.min(d.unsigned_abs() as usize));
                }
            }
            Mutation::ReplaceValue(i, v) => {
                let l = &mut lines[i % n];
                if let Some(at) = l.find(": ") {
                    l.truncate(at + 2);
                    l.push_str(v);
                }
            }
            Mutation::InsertKey(i, indent, k, v) => {
                lines.insert(i % n, format!("{}{k}: {v}", " ".repeat(*indent)));
            }
        }
    }
    lines.join("\n")
}

/// Checks the exact shape of a load error: a `file[:line:col]: invalid YAML: ` line, or a
/// header counting the problems followed by one `  file[:line:col]: key.path: message` line each.
fn check_spec_error(file: &str, e: &SpecError) -> Result<(), TestCaseError> {
    let text = e.to_string();
    match e {
        SpecError::Syntax { position, .. } => {
            let prefix = match position {
                Some((l, c)) => format!("{file}:{l}:{c}: invalid YAML: "),
                None => format!("{file}: invalid YAML: "),
            };
            prop_assert!(text.starts_with(&prefix), "{text}");
        }
        SpecError::Invalid { issues, .. } => {
            prop_assert!(
                !issues.is_empty(),
                "an invalid spec reports no issue: {text}"
            );
            let s = if issues.len() == 1 { "" } else { "s" };
            let header = format!("spec {file} has {} problem{s}:", issues.len());
            let mut lines = text.split("\n  ");
            prop_assert_eq!(lines.next(), Some(header.as_str()), "{}", text);
            for issue in issues {
                prop_assert!(!issue.path.is_empty(), "issue without a key path: {text}");
                let at = match issue.position {
                    Some((l, c)) => format!("{file}:{l}:{c}"),
                    None => file.to_string(),
                };
                let expected = format!("{at}: {}: ", issue.path);
                // Messages may span lines (hints), so search rather than split.
                prop_assert!(text.contains(&format!("\n  {expected}")), "{text}");
            }
        }
        SpecError::Read { .. } => prop_assert!(false, "no file is read: {text}"),
    }
    Ok(())
}

proptest! {
    #[test]
    fn spec_loader_random_yaml_errors_have_position_or_key_path(text in yaml_ish()) {
        let file = "random.yaml";
        if let Err(e) = parse_spec_str(&text, Path::new(file), false) {
            check_spec_error(file, &e)?;
        }
    }

    #[test]
    fn spec_loader_mutated_logins_errors_have_position_or_key_path(
        ms in prop::collection::vec(mutation(), 1..5),
    ) {
        let file = "specs/logins.yaml";
        if let Err(e) = parse_spec_str(&mutate(LOGINS, &ms), Path::new(file), false) {
            check_spec_error(file, &e)?;
        }
    }

    #[test]
    fn spec_loader_mutated_purchases_errors_have_position_or_key_path(
        ms in prop::collection::vec(mutation(), 1..5),
    ) {
        let file = "specs/purchases.yaml";
        if let Err(e) = parse_spec_str(&mutate(PURCHASES, &ms), Path::new(file), false) {
            check_spec_error(file, &e)?;
        }
    }
}

/// A valid keyring (fixed test keys, so the material to look for is known) as JSON.
fn valid_keyring() -> (J, Vec<String>) {
    let json: J = serde_json::from_str(&Keyring::fixed_test_keyring().to_json().unwrap()).unwrap();
    let mut keys = Vec::new();
    for list in ["hash_keys", "encryption_keys"] {
        for k in json[list].as_array().unwrap() {
            keys.push(k["key"].as_str().unwrap().to_string());
        }
    }
    (json, keys)
}

/// One edit of the keyring JSON: a field of a key replaced or removed, or a key list replaced.
#[derive(Debug, Clone)]
enum KeyringEdit {
    Field(bool, usize, &'static str, Option<J>),
    List(bool, J),
}

fn keyring_edit() -> impl Strategy<Value = KeyringEdit> {
    let field = prop::sample::select(vec!["id", "state", "key", "extra"]);
    prop_oneof![
        (
            any::<bool>(),
            0usize..2,
            field,
            prop::option::of(json_value())
        )
            .prop_map(|(h, i, f, v)| KeyringEdit::Field(h, i, f, v)),
        (any::<bool>(), json_value()).prop_map(|(h, v)| KeyringEdit::List(h, v)),
    ]
}

fn apply_edit(ring: &mut J, edit: &KeyringEdit) {
    let list = |hash: bool| if hash { "hash_keys" } else { "encryption_keys" };
    match edit {
        KeyringEdit::Field(hash, i, field, value) => {
            if let Some(k) = ring[list(*hash)].get_mut(*i).and_then(J::as_object_mut) {
                match value {
                    Some(v) => k.insert(field.to_string(), v.clone()),
                    None => k.remove(*field),
                };
            } else if let Some(keys) = ring[list(*hash)].as_array_mut() {
                // Index past the end: add a copy of a key (duplicate id, two active keys).
                if let Some(first) = keys.first().cloned() {
                    keys.push(first);
                }
            }
        }
        KeyringEdit::List(hash, v) => ring[list(*hash)] = v.clone(),
    }
}

fn check_keyring_error(text: &str, keys: &[String]) -> Result<(), TestCaseError> {
    if let Err(e) = Keyring::from_json(text, "keyring.json") {
        let msg = e.to_string();
        let dbg = format!("{e:?}");
        for k in keys {
            prop_assert!(!msg.contains(k.as_str()), "key material in {msg}");
            prop_assert!(!dbg.contains(k.as_str()), "key material in {dbg}");
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn keyring_random_json_errors_hide_key_material(v in json_value()) {
        let (_, keys) = valid_keyring();
        check_keyring_error(&v.to_string(), &keys)?;
    }

    #[test]
    fn keyring_mutations_errors_hide_key_material(
        edits in prop::collection::vec(keyring_edit(), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let (mut ring, keys) = valid_keyring();
        for e in &edits {
            apply_edit(&mut ring, e);
        }
        let mut text = serde_json::to_string_pretty(&ring).unwrap();
        if truncate {
            // Cut at a char boundary: a partial document must fail with a position only.
            let at = cut.index(text.len() + 1);
            let at = (0..=at).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            text.truncate(at);
        }
        check_keyring_error(&text, &keys)?;
    }
}

/// A version triple within `version_to_int`'s documented range.
fn triple() -> impl Strategy<Value = (u32, u32, u32)> {
    (0u32..=2146, 0u32..=999, 0u32..=999)
}

proptest! {
    #[test]
    fn version_encode_keeps_semver_order_and_round_trips(a in triple(), b in triple()) {
        let enc = |(x, y, z): (u32, u32, u32)| encode(&format!("{x}.{y}.{z}")).unwrap();
        let (ea, eb) = (enc(a), enc(b));
        prop_assert_eq!(ea.cmp(&eb), a.cmp(&b));
        let decoded = |e: i32| {
            let e = e as u32;
            (e / 1_000_000, e / 1_000 % 1_000, e % 1_000)
        };
        prop_assert_eq!(decoded(ea), a);
        // Missing parts are zeros, and a `v` prefix changes nothing.
        prop_assert_eq!(encode(&format!("{}.{}", a.0, a.1)), encode(&format!("{}.{}.0", a.0, a.1)));
        prop_assert_eq!(encode(&format!("v{}.{}.{}", a.0, a.1, a.2)), Ok(ea));
    }

    #[test]
    fn version_encode_random_strings_never_panic(s in any::<String>(), v in "[v ]?[0-9.]{0,12}") {
        let _ = encode(&s);
        if let Ok(n) = encode(&v) {
            prop_assert!((0..=2_146_999_999).contains(&n));
        }
    }
}

fn crypto() -> &'static (DomainTokenizer, VaultCipher) {
    static C: OnceLock<(DomainTokenizer, VaultCipher)> = OnceLock::new();
    C.get_or_init(|| {
        let ring = Keyring::fixed_test_keyring();
        (
            Tokenizer::new(&ring.hash_keys[0])
                .unwrap()
                .domain("user_logins.masked_ip"),
            VaultCipher::new(&ring).unwrap(),
        )
    })
}

/// Values as the vault sees them: empty, any unicode, and long.
fn vault_value() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), any::<String>(), ".{200,2000}",]
}

proptest! {
    #[test]
    fn vault_round_trip_binds_column_and_token(v in vault_value(), other in vault_value()) {
        let (tokenizer, cipher) = crypto();
        let token = tokenizer.token(v.as_bytes());
        let bind = |column, token| Binding { scope: "user_logins", column, token };
        let sealed = cipher.encrypt(bind("masked_ip", &token), v.as_bytes()).unwrap();
        let plain = cipher
            .decrypt(bind("masked_ip", &token), &sealed.key_id, &sealed.nonce, &sealed.ciphertext)
            .unwrap();
        prop_assert_eq!(plain.as_slice(), v.as_bytes());

        let other_column = cipher.decrypt(
            bind("masked_device_id", &token), &sealed.key_id, &sealed.nonce, &sealed.ciphertext,
        );
        prop_assert!(other_column.is_err());
        let other_token = tokenizer.token(other.as_bytes());
        if other != v {
            prop_assert_ne!(&other_token, &token);
            let moved = cipher.decrypt(
                bind("masked_ip", &other_token), &sealed.key_id, &sealed.nonce, &sealed.ciphertext,
            );
            prop_assert!(moved.is_err());
        } else {
            prop_assert_eq!(&other_token, &token);
        }
        prop_assert_eq!(tokenizer.token(v.as_bytes()), token);
    }
}

//! Tests of the decode chain and the SNS envelope.

use super::*;
use base64::Engine;
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::json;
use std::io::Write;

fn chain(steps: &[DecodeStep]) -> Decoder {
    Decoder::new(steps.to_vec())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn envelope(message: &str) -> J {
    json!({
        "Type": "Notification",
        "MessageId": "5b8a4f2e-0000-4000-8000-000000000001",
        "TopicArn": "arn:aws:sns:us-east-1:000000000000:signups",
        "Subject": null,
        "Message": message,
        "Timestamp": "2024-05-01T12:00:00.000Z",
        "SignatureVersion": "1",
        "MessageAttributes": {"tenant": {"Type": "String", "Value": "acme"}}
    })
}

#[test]
fn any_json_value_is_a_body() {
    for body in [r#"{"a": 1}"#, "[1, 2]", "7", "\"x\"", "null", "true"] {
        assert!(decode(body).is_ok(), "{body}");
    }
    let err = decode(r#"{"ip": "10.1.2.3" oops"#).unwrap_err();
    assert_eq!(err.at, At::Default);
    let msg = err.to_string();
    assert!(msg.starts_with("decode: body is not valid JSON"), "{msg}");
    assert!(!msg.contains("10.1.2.3"), "{msg}");
    // An explicit `[json]` is the default.
    assert_eq!(
        chain(&[DecodeStep::Json]).decode("[").unwrap_err().at,
        At::Default
    );
}

#[test]
fn sns_unwraps_the_message_and_its_metadata() {
    let body = envelope(r#"{"user_id": "u1"}"#).to_string();
    let d = chain(&[DecodeStep::Sns]).decode(&body).unwrap();
    assert_eq!(d.body, json!({"user_id": "u1"}));
    let sns = d.meta.sns.unwrap();
    assert_eq!(sns.message_id, "5b8a4f2e-0000-4000-8000-000000000001");
    assert_eq!(sns.topic_arn, "arn:aws:sns:us-east-1:000000000000:signups");
    assert_eq!(sns.timestamp.as_deref(), Some("2024-05-01T12:00:00.000Z"));
    assert_eq!(sns.subject, None);
    assert_eq!(sns.message_attributes["tenant"], "acme");
    // `[json, sns]` is the same; `[sns, json]` too.
    for steps in [
        &[DecodeStep::Json, DecodeStep::Sns][..],
        &[DecodeStep::Sns, DecodeStep::Json],
    ] {
        assert_eq!(
            chain(steps).decode(&body).unwrap().body,
            json!({"user_id": "u1"})
        );
    }
    // The Message may be any JSON, e.g. a batch of events.
    let batch = envelope("[1, 2]").to_string();
    assert_eq!(
        chain(&[DecodeStep::Sns]).decode(&batch).unwrap().body,
        json!([1, 2])
    );
}

#[test]
fn sns_refuses_confirmations_and_malformed_envelopes_without_quoting() {
    let sns = chain(&[DecodeStep::Sns]);
    let reason = |body: J| sns.decode(&body.to_string()).unwrap_err().to_string();

    let mut confirm = envelope("You have chosen to subscribe to the topic secret-topic");
    confirm["Type"] = json!("SubscriptionConfirmation");
    confirm["SubscribeURL"] = json!("https://sns.example/confirm?token=secret");
    let r = reason(confirm);
    assert!(
        r.starts_with("decode[0] sns: an SNS SubscriptionConfirmation message"),
        "{r}"
    );
    assert!(!r.contains("secret"), "{r}");
    let mut unsub = envelope("bye");
    unsub["Type"] = json!("UnsubscribeConfirmation");
    assert!(reason(unsub).contains("UnsubscribeConfirmation"));

    let mut no_message = envelope("x");
    no_message.as_object_mut().unwrap().remove("Message");
    assert_eq!(
        reason(no_message),
        "decode[0] sns: malformed SNS envelope: `Message` is missing or not a string"
    );
    let mut object_message = envelope("x");
    object_message["Message"] = json!({"user_id": "u1"});
    assert!(reason(object_message).contains("`Message` is missing or not a string"));
    let mut no_id = envelope("x");
    no_id.as_object_mut().unwrap().remove("MessageId");
    assert!(reason(no_id).contains("`MessageId`"));
    let mut weird = envelope("x");
    weird["Type"] = json!("secret-type");
    let r = reason(weird);
    assert!(
        r.contains("not Notification") && !r.contains("secret"),
        "{r}"
    );
    let mut attrs = envelope("x");
    attrs["MessageAttributes"] = json!({"a": "secret"});
    let r = reason(attrs);
    assert!(
        r.contains("MessageAttributes") && !r.contains("secret"),
        "{r}"
    );
    let mut subject = envelope("x");
    subject["Subject"] = json!(5);
    assert!(reason(subject).contains("`Subject` is not a string"));

    // A body that is not an envelope at all: raw delivery, or no object.
    let r = reason(json!({"user_id": "secret-user"}));
    assert!(
        r.contains("raw message delivery") && !r.contains("secret"),
        "{r}"
    );
    assert!(reason(json!([1])).contains("not a JSON object"));
    let r = sns.decode("{\"Type\": \"Notif").unwrap_err().to_string();
    assert!(
        r.starts_with("decode[0] sns: body is not valid JSON"),
        "{r}"
    );

    // A Message that is not JSON fails the final parse, which says where it was.
    let r = reason(envelope("card 4111 1111 1111 1111"));
    assert!(
        r.starts_with("decode (JSON after the last step): text is not valid JSON"),
        "{r}"
    );
    assert!(!r.contains("4111"), "{r}");
}

#[test]
fn sns_base64_gzip_chain() {
    let event = json!({"user_id": "u1", "plan": "pro"});
    let packed =
        base64::engine::general_purpose::STANDARD.encode(gzip(event.to_string().as_bytes()));
    let body = envelope(&packed).to_string();
    let steps = [DecodeStep::Sns, DecodeStep::Base64, DecodeStep::Gzip];
    let d = chain(&steps).decode(&body).unwrap();
    assert_eq!(d.body, event);
    assert!(d.meta.sns.is_some());
    let with_json = [
        DecodeStep::Sns,
        DecodeStep::Base64,
        DecodeStep::Gzip,
        DecodeStep::Json,
    ];
    assert_eq!(chain(&with_json).decode(&body).unwrap().body, event);

    // Base64 inside a JSON string body: `[json, base64, gzip]`.
    let quoted = J::String(packed.clone()).to_string();
    let steps = [DecodeStep::Json, DecodeStep::Base64, DecodeStep::Gzip];
    assert_eq!(chain(&steps).decode(&quoted).unwrap().body, event);
    // ... but a JSON object is not text for base64.
    let err = chain(&steps).decode("{\"a\": 1}").unwrap_err();
    assert_eq!(
        err.to_string(),
        "decode[1] base64: expects text, but the value is a JSON object"
    );
}

#[test]
fn hostile_input_names_the_step() {
    let b64 = chain(&[DecodeStep::Base64, DecodeStep::Gzip]);
    assert_eq!(
        b64.decode("not base64 at all!").unwrap_err().to_string(),
        "decode[0] base64: not valid base64"
    );
    let truncated = gzip(b"{\"a\": 1}");
    let truncated =
        base64::engine::general_purpose::STANDARD.encode(&truncated[..truncated.len() - 4]);
    assert_eq!(
        b64.decode(&truncated).unwrap_err().to_string(),
        "decode[1] gzip: not valid gzip data (truncated or corrupt)"
    );
    // A bomb: 16 MiB of spaces (valid JSON padding) in about 16 KiB of gzip.
    let mut e = GzEncoder::new(Vec::new(), Compression::best());
    e.write_all(b"{\"a\": 1}").unwrap();
    let pad = vec![b' '; 1 << 20];
    for _ in 0..16 {
        e.write_all(&pad).unwrap();
    }
    let bomb = base64::engine::general_purpose::STANDARD.encode(e.finish().unwrap());
    assert!(bomb.len() < 100_000);
    let err = b64.decode(&bomb).unwrap_err();
    assert_eq!(err.problem, Problem::TooLarge);
    assert_eq!(
        err.to_string(),
        "decode[1] gzip: gzip data expands to more than 8388608 bytes"
    );
    // Gzip of bytes that are not UTF-8: the final JSON parse refuses them cleanly.
    let binary = base64::engine::general_purpose::STANDARD.encode(gzip(b"\xff\xfe\x00"));
    assert!(matches!(
        b64.decode(&binary).unwrap_err().problem,
        Problem::InvalidJson { .. }
    ));
}

//! The XML documents SQS answers query-protocol calls with, as serde types, and their
//! translation into the engine's types.
//!
//! A document is read in two steps. A streaming pass ([`root_element`]) checks that the text is
//! one well-formed document of bounded depth and names its root element; then `quick_xml::de`
//! maps it onto the types below. The first step exists because the serde deserializer neither
//! looks at the root element's name nor reads past its end tag, and because its failure is what
//! tells "not XML at all" (JSON: the wrong protocol) apart from "XML of the wrong shape".
//!
//! Elements are matched by local name, so the `xmlns` SQS puts on the root (or a prefix) makes
//! no difference; attributes and unknown elements are ignored, as new SQS versions add some.
//! Text fields are `Option<String>` even where SQS always sends them: a missing field is then
//! reported in this module's words, which never quote a message body.

use crate::source::{
    BatchFailure, ErrorKind, ReceivedMessage, SqsError, is_protocol_mismatch_text,
};
use quick_xml::DeError;
use quick_xml::events::Event;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::num::NonZeroUsize;

/// SQS responses are a handful of levels deep. The deserializer itself does not recurse into
/// elements it skips, but a bound rejects absurd input before it gets that far.
const MAX_XML_DEPTH: usize = 32;

/// How many events the deserializer may hold back while collecting a list whose items are
/// interleaved with other elements (quick-xml's `overlapped-lists`, enabled because SQS does
/// not promise an element order). A real response needs a few hundred at most; the bound keeps
/// a hostile one from turning 32 MiB of tiny elements into gigabytes of buffered events.
const MAX_SKIPPED_EVENTS: NonZeroUsize = NonZeroUsize::new(10_000).unwrap();

/// Error texts quoted from an endpoint are cut to this many characters, so a misbehaving
/// endpoint cannot flood the logs.
const MAX_QUOTED_ERROR_CHARS: usize = 300;

/// `<ReceiveMessageResponse>`. SQS omits the result element when no message is available.
#[derive(Deserialize)]
struct ReceiveMessageResponse {
    /// Missing means no messages.
    #[serde(rename = "ReceiveMessageResult", default)]
    result: ReceiveMessageResult,
}

/// `<ReceiveMessageResult>`: zero to ten messages.
#[derive(Default, Deserialize)]
struct ReceiveMessageResult {
    /// In the order SQS sent them.
    #[serde(rename = "Message", default)]
    messages: Vec<Message>,
}

/// One `<Message>`. No `Debug`: the body may carry PII.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Message {
    /// Required; checked in [`Message::into_received`].
    message_id: Option<String>,
    /// Required; checked in [`Message::into_received`].
    receipt_handle: Option<String>,
    /// User data, taken exactly as decoded (never trimmed).
    body: Option<String>,
    /// System attributes such as `SentTimestamp`.
    #[serde(rename = "Attribute", default)]
    attributes: Vec<NameValue>,
    /// Attributes set by the sender.
    #[serde(rename = "MessageAttribute", default)]
    message_attributes: Vec<MessageAttribute>,
}

/// `<Name>..</Name><Value>..</Value>`: a system or queue attribute.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NameValue {
    /// An entry without a name is skipped.
    name: Option<String>,
    /// Missing reads as empty.
    value: Option<String>,
}

/// `<MessageAttribute>`: a name and a typed value.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MessageAttribute {
    /// An entry without a name is skipped.
    name: Option<String>,
    /// An entry without a value is skipped.
    value: Option<MessageAttributeValue>,
}

/// `<Value>` of a message attribute.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MessageAttributeValue {
    /// Absent for `Binary` attributes, which the pipeline does not read.
    string_value: Option<String>,
}

/// `<GetQueueUrlResponse>` or `<CreateQueueResponse>`; both carry just the queue URL. The
/// alias cannot mix the two up: the root element has been checked against the operation.
#[derive(Deserialize)]
struct QueueUrlResponse {
    /// Missing is reported as a missing URL.
    #[serde(rename = "GetQueueUrlResult", alias = "CreateQueueResult", default)]
    result: QueueUrlResult,
}

/// `<GetQueueUrlResult>` / `<CreateQueueResult>`.
#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct QueueUrlResult {
    /// Required.
    queue_url: Option<String>,
}

/// `<SendMessageResponse>`.
#[derive(Deserialize)]
struct SendMessageResponse {
    /// Missing is reported as a missing message id.
    #[serde(rename = "SendMessageResult", default)]
    result: SendMessageResult,
}

/// `<SendMessageResult>`; the MD5 digests in it are not checked.
#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SendMessageResult {
    /// Required.
    message_id: Option<String>,
}

/// The response of any of the three batch calls. The aliases cannot mix operations up: the
/// root element has been checked against the operation.
#[derive(Deserialize)]
struct BatchResponse {
    /// Missing means no entry is accounted for, so all are reported as failed.
    #[serde(
        rename = "DeleteMessageBatchResult",
        alias = "ChangeMessageVisibilityBatchResult",
        alias = "SendMessageBatchResult",
        default
    )]
    result: BatchResult,
}

/// `<{Op}BatchResult>`: one entry per request entry, either a success or an error.
#[derive(Default, Deserialize)]
struct BatchResult {
    /// Entries that succeeded; only their ids matter.
    #[serde(
        rename = "DeleteMessageBatchResultEntry",
        alias = "ChangeMessageVisibilityBatchResultEntry",
        alias = "SendMessageBatchResultEntry",
        default
    )]
    succeeded: Vec<BatchResultEntry>,
    /// Entries that failed.
    #[serde(rename = "BatchResultErrorEntry", default)]
    failed: Vec<BatchResultErrorEntry>,
}

/// A successful batch entry.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct BatchResultEntry {
    /// The caller's entry id.
    id: Option<String>,
}

/// `<BatchResultErrorEntry>`; endpoints are sloppy about which fields they fill, so all
/// default to empty.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct BatchResultErrorEntry {
    /// The caller's entry id.
    id: Option<String>,
    /// SQS error code, e.g. `ReceiptHandleIsInvalid`.
    code: Option<String>,
    /// Human-readable reason.
    message: Option<String>,
    /// `true` when retrying the entry cannot help.
    sender_fault: Option<String>,
}

/// `<GetQueueAttributesResponse>`.
#[derive(Deserialize)]
struct QueueAttributesResponse {
    /// Missing means no attributes.
    #[serde(rename = "GetQueueAttributesResult", default)]
    result: QueueAttributesResult,
}

/// `<GetQueueAttributesResult>`.
#[derive(Default, Deserialize)]
struct QueueAttributesResult {
    /// One entry per requested attribute the queue has.
    #[serde(rename = "Attribute", default)]
    attributes: Vec<NameValue>,
}

/// An error document, whatever its root is called: `<ErrorResponse><Error>..</Error>
/// <RequestId>..</RequestId></ErrorResponse>` as SQS sends it, or the
/// `<Response><Errors><Error>` shape other AWS XML services use.
#[derive(Deserialize)]
struct ErrorResponse {
    /// The SQS shape.
    #[serde(rename = "Error")]
    error: Option<ErrorBody>,
    /// The other shape; its first error is used.
    #[serde(rename = "Errors")]
    errors: Option<ErrorList>,
    /// Worth quoting: AWS support asks for it.
    #[serde(rename = "RequestId")]
    request_id: Option<String>,
}

/// `<Errors>`.
#[derive(Deserialize)]
struct ErrorList {
    /// Usually exactly one.
    #[serde(rename = "Error", default)]
    errors: Vec<ErrorBody>,
}

/// `<Error>`; `Type` and `Detail` are not used.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    /// Decides the error's kind.
    code: Option<String>,
    /// Human-readable reason.
    message: Option<String>,
}

/// What an error document says, trimmed.
pub(super) struct ErrorDetails {
    /// The error code, empty when the document has none.
    pub(super) code: String,
    /// The message, empty when the document has none.
    pub(super) message: String,
    /// The request id, if any.
    pub(super) request_id: Option<String>,
}

/// Reads a `ReceiveMessage` answer. A message without id or receipt handle fails the whole
/// call: such a message could never be deleted, and silently dropping it would hide that.
pub(super) fn receive(text: &str) -> Result<Vec<ReceivedMessage>, SqsError> {
    const OP: &str = "ReceiveMessage";
    let document: ReceiveMessageResponse = parse_document(OP, text)?;
    document
        .result
        .messages
        .into_iter()
        .map(|m| m.into_received(OP))
        .collect()
}

impl Message {
    /// Checks the required fields and converts; errors name the message id, never the body.
    fn into_received(self, op: &'static str) -> Result<ReceivedMessage, SqsError> {
        let message_id = non_empty(self.message_id)
            .ok_or_else(|| malformed(op, "a Message has no MessageId"))?;
        let receipt_handle = non_empty(self.receipt_handle).ok_or_else(|| {
            malformed(
                op,
                format!("message {} has no ReceiptHandle", quote(&message_id)),
            )
        })?;
        let message_attributes = self
            .message_attributes
            .into_iter()
            .filter_map(|a| Some((trimmed(a.name)?, a.value?.string_value?)))
            .collect();
        Ok(ReceivedMessage {
            message_id,
            receipt_handle,
            body: self.body.unwrap_or_default(),
            attributes: name_value_map(self.attributes),
            message_attributes,
        })
    }
}

/// Reads the queue URL from a `GetQueueUrl` or `CreateQueue` answer (`op` says which).
pub(super) fn queue_url(op: &'static str, text: &str) -> Result<String, SqsError> {
    let document: QueueUrlResponse = parse_document(op, text)?;
    non_empty(document.result.queue_url)
        .ok_or_else(|| malformed(op, format!("{op}Result has no QueueUrl")))
}

/// Reads the new message's id from a `SendMessage` answer.
pub(super) fn message_id(text: &str) -> Result<String, SqsError> {
    const OP: &str = "SendMessage";
    let document: SendMessageResponse = parse_document(OP, text)?;
    non_empty(document.result.message_id)
        .ok_or_else(|| malformed(OP, "SendMessageResult has no MessageId"))
}

/// Reads the attribute map from a `GetQueueAttributes` answer.
pub(super) fn queue_attributes(text: &str) -> Result<HashMap<String, String>, SqsError> {
    const OP: &str = "GetQueueAttributes";
    let document: QueueAttributesResponse = parse_document(OP, text)?;
    Ok(name_value_map(document.result.attributes))
}

/// Collects the failures of a batch call (`op` is `DeleteMessageBatch`,
/// `ChangeMessageVisibilityBatch` or `SendMessageBatch`). An entry the endpoint reported
/// neither as success nor as failure is returned as a retriable failure, so it is never
/// silently taken as done.
pub(super) fn batch_failures(
    op: &'static str,
    text: &str,
    sent_ids: &[&str],
) -> Result<Vec<BatchFailure>, SqsError> {
    let document: BatchResponse = parse_document(op, text)?;
    let result = document.result;
    let mut failures: Vec<BatchFailure> = result
        .failed
        .into_iter()
        .map(|entry| BatchFailure {
            id: trimmed(entry.id).unwrap_or_default(),
            code: trimmed(entry.code).unwrap_or_default(),
            message: trimmed(entry.message).unwrap_or_default(),
            sender_fault: trimmed(entry.sender_fault)
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        })
        .collect();
    let succeeded: Vec<String> = result
        .succeeded
        .into_iter()
        .filter_map(|entry| trimmed(entry.id))
        .collect();
    for id in sent_ids {
        if !succeeded.iter().any(|s| s == id) && !failures.iter().any(|f| f.id == *id) {
            failures.push(BatchFailure {
                id: (*id).to_owned(),
                code: "MissingBatchResult".to_owned(),
                message: "the endpoint reported neither success nor failure for this entry"
                    .to_owned(),
                sender_fault: false,
            });
        }
    }
    Ok(failures)
}

/// Reads the error document of a non-2xx answer; `None` when the body is not one (an HTML
/// page from a proxy, a JSON error, nothing), so the caller quotes the raw body instead.
pub(super) fn error_details(body: &str) -> Option<ErrorDetails> {
    root_element(body).ok()?;
    let document: ErrorResponse = deserialize(body).ok()?;
    let error = document
        .error
        .or_else(|| document.errors.and_then(|l| l.errors.into_iter().next()))?;
    Some(ErrorDetails {
        code: trimmed(error.code).unwrap_or_default(),
        message: trimmed(error.message).unwrap_or_default(),
        request_id: trimmed(document.request_id),
    })
}

/// A permanent error about an answer that cannot be used.
pub(super) fn malformed(op: &'static str, message: impl Into<String>) -> SqsError {
    SqsError::new(ErrorKind::Permanent, op, message)
}

/// Cuts endpoint-supplied text to one bounded line for inclusion in an error message.
pub(super) fn quote(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > MAX_QUOTED_ERROR_CHARS {
        let cut: String = one_line.chars().take(MAX_QUOTED_ERROR_CHARS).collect();
        format!("{cut}...")
    } else {
        one_line
    }
}

/// Reads attribute lists. Names and values are machine-generated (numbers, ARNs, JSON
/// policies), so surrounding whitespace from pretty-printing is dropped.
fn name_value_map(list: Vec<NameValue>) -> HashMap<String, String> {
    list.into_iter()
        .filter_map(|a| Some((trimmed(a.name)?, trimmed(a.value).unwrap_or_default())))
        .collect()
}

/// Text of an identifier, code or number, where surrounding whitespace (e.g. from
/// pretty-printed documents) carries no meaning.
fn trimmed(text: Option<String>) -> Option<String> {
    text.map(|t| t.trim().to_owned())
}

/// [`trimmed`], with an empty value read as missing.
fn non_empty(text: Option<String>) -> Option<String> {
    trimmed(text).filter(|t| !t.is_empty())
}

/// Parses a 2xx answer to `op` into `D`, the type of its `<{op}Response>` document.
fn parse_document<D: DeserializeOwned>(op: &'static str, text: &str) -> Result<D, SqsError> {
    if text.trim().is_empty() {
        return Err(malformed(op, "empty response body"));
    }
    let root = root_element(text).map_err(|reason| not_xml(op, text, &reason))?;
    let expected = format!("{op}Response");
    if root != expected {
        return Err(malformed(
            op,
            format!("expected <{expected}>, got <{}>", quote(&root)),
        ));
    }
    // What can fail here is structural, and quick-xml names fields, tags and limits in such
    // errors (`duplicate field`, mixed content in `Body`), not element text: every text-bearing
    // field above is a string, which accepts any text. So no message body leaks through here.
    deserialize(text).map_err(|e| {
        malformed(
            op,
            format!(
                "unexpected content in <{expected}>: {}",
                quote(&e.to_string())
            ),
        )
    })
}

/// The error for a 2xx body that is not an XML document. JSON means the endpoint is not
/// answering the query protocol, which callers may react to by switching protocols.
fn not_xml(op: &'static str, text: &str, reason: &str) -> SqsError {
    let looks_like_json = text.trim_start().starts_with('{');
    if looks_like_json || is_protocol_mismatch_text(text) {
        SqsError::new(
            ErrorKind::ProtocolMismatch,
            op,
            "endpoint answered with JSON, not query-protocol XML",
        )
    } else {
        // The reader's message names tags and positions, never content.
        malformed(op, format!("response is not valid XML: {reason}"))
    }
}

/// Runs the serde deserializer with this module's limits on a document [`root_element`]
/// has accepted.
fn deserialize<D: DeserializeOwned>(text: &str) -> Result<D, DeError> {
    let mut deserializer = quick_xml::de::Deserializer::from_str(text);
    deserializer.event_buffer_size(Some(MAX_SKIPPED_EVENTS));
    D::deserialize(&mut deserializer)
}

/// Checks that `text` is exactly one well-formed XML document, nested at most
/// [`MAX_XML_DEPTH`] deep and using only predefined entities, and returns the local name of
/// its root element. Streams with a depth counter, so no input can exhaust the stack.
fn root_element(text: &str) -> Result<String, String> {
    // The default configuration checks that end tags match their start tags.
    let mut reader = quick_xml::Reader::from_str(text);
    let mut depth = 0usize;
    let mut root: Option<String> = None;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("at byte {}: {e}", reader.error_position()))?;
        match &event {
            Event::Start(start) | Event::Empty(start) => {
                if depth == 0 {
                    if root.is_some() {
                        return Err("more than one root element".to_owned());
                    }
                    root = Some(start.local_name().into_inner().to_owned());
                }
                if matches!(event, Event::Start(_)) {
                    depth += 1;
                    if depth > MAX_XML_DEPTH {
                        return Err(format!("elements nested deeper than {MAX_XML_DEPTH}"));
                    }
                }
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Text(t) if depth == 0 && !t.xml10_content().trim().is_empty() => {
                return Err("text outside the root element".to_owned());
            }
            Event::CData(_) if depth == 0 => {
                return Err("text outside the root element".to_owned());
            }
            Event::GeneralRef(r) => {
                if depth == 0 {
                    return Err("text outside the root element".to_owned());
                }
                // Character references must denote a valid character; of named entities only
                // the five predefined ones exist, as DTDs are not processed.
                let known = r.resolve_char_ref().map_err(|e| e.to_string())?.is_some()
                    || quick_xml::escape::resolve_xml_entity(r).is_some();
                if !known {
                    return Err(format!("unknown entity &{};", quote(r)));
                }
            }
            Event::Eof => break,
            Event::Text(_)
            | Event::CData(_)
            | Event::Decl(_)
            | Event::Comment(_)
            | Event::PI(_)
            | Event::DocType(_) => {}
        }
    }
    if depth != 0 {
        return Err("document ended inside an element".to_owned());
    }
    root.ok_or_else(|| "no root element".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented ReceiveMessage sample (pretty-printed as in the API reference), extended
    /// with a message attribute, an entity-escaped body and a second message.
    const RECEIVE_SAMPLE: &str = r#"<ReceiveMessageResponse>
  <ReceiveMessageResult>
    <Message>
      <MessageId>5fea7756-0ea4-451a-a703-a558b933e274</MessageId>
      <ReceiptHandle>
        MbZj6wDWli+JvwwJaBV+3dcjk2YW2vA3+STFFljTM8tJJg6HRG6PYSasuWXPJB+Cw
      </ReceiptHandle>
      <MD5OfBody>fafb00f5732ab283681e124bf8747ed1</MD5OfBody>
      <Body>This is a test message</Body>
      <Attribute>
        <Name>SenderId</Name>
        <Value>195004372649</Value>
      </Attribute>
      <Attribute>
        <Name>SentTimestamp</Name>
        <Value>1238099229000</Value>
      </Attribute>
      <Attribute>
        <Name>ApproximateReceiveCount</Name>
        <Value>5</Value>
      </Attribute>
      <Attribute>
        <Name>ApproximateFirstReceiveTimestamp</Name>
        <Value>1250700979248</Value>
      </Attribute>
      <MessageAttribute>
        <Name>tenant</Name>
        <Value>
          <StringValue> acme &amp; co </StringValue>
          <DataType>String</DataType>
        </Value>
      </MessageAttribute>
      <MessageAttribute>
        <Name>blob</Name>
        <Value>
          <BinaryValue>AAEC</BinaryValue>
          <DataType>Binary</DataType>
        </Value>
      </MessageAttribute>
    </Message>
    <Message><MessageId>m2</MessageId><ReceiptHandle>rh2</ReceiptHandle><MD5OfBody>x</MD5OfBody><Body> {&quot;a&quot;:&quot;b&amp;&lt;&gt;'&quot;}&#xD;
line2	&#233;&#x1F600; </Body></Message>
  </ReceiveMessageResult>
  <ResponseMetadata>
    <RequestId>b6633655-283d-45b4-aee4-4e84e0ae6afa</RequestId>
  </ResponseMetadata>
</ReceiveMessageResponse>"#;

    /// Wraps `messages` (the inside of `<ReceiveMessageResult>`) into a whole document.
    fn receive_doc(messages: &str) -> String {
        format!(
            "<ReceiveMessageResponse><ReceiveMessageResult>{messages}</ReceiveMessageResult>\
             </ReceiveMessageResponse>"
        )
    }

    /// The kind and message of a receive that must fail.
    fn receive_error(doc: &str) -> (ErrorKind, String) {
        match receive(doc) {
            Ok(messages) => panic!("accepted {doc:?} as {} message(s)", messages.len()),
            Err(e) => {
                assert_eq!(e.operation, "ReceiveMessage");
                (e.kind, e.message)
            }
        }
    }

    #[test]
    fn parses_receive_with_attributes_and_escaped_body() {
        let messages = receive(RECEIVE_SAMPLE).unwrap();
        assert_eq!(messages.len(), 2);

        let first = &messages[0];
        assert_eq!(first.message_id, "5fea7756-0ea4-451a-a703-a558b933e274");
        assert_eq!(
            first.receipt_handle,
            "MbZj6wDWli+JvwwJaBV+3dcjk2YW2vA3+STFFljTM8tJJg6HRG6PYSasuWXPJB+Cw"
        );
        assert_eq!(first.body, "This is a test message");
        assert_eq!(first.attributes["SentTimestamp"], "1238099229000");
        assert_eq!(first.attributes["ApproximateReceiveCount"], "5");
        assert_eq!(first.attributes.len(), 4);
        // String attribute values are user data and keep their whitespace; binary ones are skipped.
        assert_eq!(first.message_attributes["tenant"], " acme & co ");
        assert!(!first.message_attributes.contains_key("blob"));

        let second = &messages[1];
        assert_eq!(second.body, " {\"a\":\"b&<>'\"}\r\nline2\t\u{e9}\u{1F600} ");
        assert!(second.attributes.is_empty());
        assert!(second.message_attributes.is_empty());
    }

    #[test]
    fn parses_empty_receive_in_both_shapes() {
        let with_empty_result = r#"<?xml version='1.0' encoding='utf-8'?>
<ReceiveMessageResponse xmlns="http://queue.amazonaws.com/doc/2012-11-05/"><ReceiveMessageResult/><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></ReceiveMessageResponse>"#;
        let without_result = "<ReceiveMessageResponse><ResponseMetadata/></ReceiveMessageResponse>";
        for doc in [with_empty_result, without_result] {
            assert!(receive(doc).unwrap().is_empty());
        }
    }

    #[test]
    fn namespaces_prefixes_and_cdata_do_not_matter() {
        // What LocalStack 2.3.2 sends, with MD5OfMessageAttributes between the two lists.
        let default_ns = r#"<?xml version='1.0' encoding='utf-8'?>
<ReceiveMessageResponse xmlns="http://queue.amazonaws.com/doc/2012-11-05/"><ReceiveMessageResult><Message><MessageId>m</MessageId><ReceiptHandle>r</ReceiptHandle><MD5OfBody>x</MD5OfBody><Body>hi</Body><Attribute><Name>SenderId</Name><Value>000000000000</Value></Attribute><MD5OfMessageAttributes>y</MD5OfMessageAttributes><MessageAttribute><Name>a</Name><Value><StringValue>x</StringValue><DataType>String</DataType></Value></MessageAttribute></Message></ReceiveMessageResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></ReceiveMessageResponse>"#;
        let prefixed = r#"<sqs:ReceiveMessageResponse xmlns:sqs="http://queue.amazonaws.com/doc/2012-11-05/"><sqs:ReceiveMessageResult><sqs:Message><sqs:MessageId>m</sqs:MessageId><sqs:ReceiptHandle>r</sqs:ReceiptHandle><sqs:Body><![CDATA[h]]>i</sqs:Body><sqs:Attribute><sqs:Name>SenderId</sqs:Name><sqs:Value>000000000000</sqs:Value></sqs:Attribute><sqs:MessageAttribute><sqs:Name>a</sqs:Name><sqs:Value><sqs:StringValue>x</sqs:StringValue></sqs:Value></sqs:MessageAttribute></sqs:Message></sqs:ReceiveMessageResult></sqs:ReceiveMessageResponse>"#;
        for doc in [default_ns, prefixed] {
            let messages = receive(doc).unwrap();
            assert_eq!(messages.len(), 1, "{doc}");
            assert_eq!(messages[0].message_id, "m");
            assert_eq!(messages[0].receipt_handle, "r");
            assert_eq!(messages[0].body, "hi");
            assert_eq!(messages[0].attributes["SenderId"], "000000000000");
            assert_eq!(messages[0].message_attributes["a"], "x");
        }
    }

    #[test]
    fn list_items_interleaved_with_other_elements_are_all_collected() {
        let doc = receive_doc(
            "<Message><Attribute><Name>A</Name><Value>1</Value></Attribute>\
             <MessageId>m</MessageId>\
             <MessageAttribute><Name>x</Name><Value><StringValue>1</StringValue></Value></MessageAttribute>\
             <Attribute><Name>B</Name><Value>2</Value></Attribute>\
             <ReceiptHandle>r</ReceiptHandle>\
             <MessageAttribute><Name>y</Name><Value><StringValue>2</StringValue></Value></MessageAttribute>\
             </Message><Unknown/><Message><MessageId>n</MessageId><ReceiptHandle>s</ReceiptHandle></Message>",
        );
        let messages = receive(&doc).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].attributes.len(), 2);
        assert_eq!(messages[0].message_attributes.len(), 2);
        assert_eq!(messages[0].message_attributes["y"], "2");
        assert_eq!(messages[1].message_id, "n");
    }

    #[test]
    fn message_without_receipt_handle_is_an_error() {
        let doc = receive_doc("<Message><MessageId>m</MessageId><Body>secret</Body></Message>");
        let (kind, message) = receive_error(&doc);
        assert_eq!(kind, ErrorKind::Permanent);
        assert!(message.contains("no ReceiptHandle"), "{message}");
        assert!(!message.contains("secret"));
    }

    #[test]
    fn missing_or_blank_required_fields_are_errors() {
        let cases = [
            (
                "<Message><ReceiptHandle>r</ReceiptHandle><Body>secret</Body></Message>",
                "no MessageId",
            ),
            (
                "<Message><MessageId> \n </MessageId><ReceiptHandle>r</ReceiptHandle></Message>",
                "no MessageId",
            ),
            (
                "<Message><MessageId>m</MessageId><ReceiptHandle/><Body>secret</Body></Message>",
                "no ReceiptHandle",
            ),
            // One bad message fails the whole receive, even after a good one.
            (
                "<Message><MessageId>a</MessageId><ReceiptHandle>r</ReceiptHandle></Message><Message/>",
                "no MessageId",
            ),
        ];
        for (messages, expected) in cases {
            let (kind, message) = receive_error(&receive_doc(messages));
            assert_eq!(kind, ErrorKind::Permanent, "{messages}");
            assert!(message.contains(expected), "{messages}: {message}");
            assert!(!message.contains("secret"), "{message}");
        }

        let send = "<SendMessageResponse><SendMessageResult><MD5OfMessageBody>0</MD5OfMessageBody>\
                    </SendMessageResult></SendMessageResponse>";
        let err = message_id(send).unwrap_err();
        assert_eq!(
            (err.kind, err.operation),
            (ErrorKind::Permanent, "SendMessage")
        );
        assert!(err.message.contains("no MessageId"), "{}", err.message);
        assert_eq!(
            message_id("<SendMessageResponse><SendMessageResult><MessageId> m </MessageId></SendMessageResult></SendMessageResponse>")
                .unwrap(),
            "m"
        );
    }

    #[test]
    fn wrong_nesting_is_an_error_or_ignored_never_misread() {
        // Elements inside text fields: the deserializer refuses mixed content.
        for messages in [
            "<Message><MessageId>m</MessageId><ReceiptHandle>r</ReceiptHandle><Body><b>secret</b></Body></Message>",
            "<Message><MessageId><Id>m</Id></MessageId><ReceiptHandle>r</ReceiptHandle><Body>secret</Body></Message>",
            "<Message><MessageId>m</MessageId><ReceiptHandle>r</ReceiptHandle><Body>secret</Body><Attribute><Name><n/></Name></Attribute></Message>",
        ] {
            let (kind, message) = receive_error(&receive_doc(messages));
            assert_eq!(kind, ErrorKind::Permanent, "{messages}");
            assert!(!message.contains("secret"), "{message}");
        }
        // A field given twice is ambiguous, so it is refused rather than one of them picked.
        let (kind, message) = receive_error(&receive_doc(
            "<Message><MessageId>a</MessageId><MessageId>b</MessageId><ReceiptHandle>r</ReceiptHandle></Message>",
        ));
        assert_eq!(kind, ErrorKind::Permanent);
        assert!(message.contains("MessageId"), "{message}");

        // Known elements in the wrong place are unknown there and ignored: a Message outside
        // the result, a Message inside a Message, text where elements belong.
        let misplaced = "<ReceiveMessageResponse><ResponseMetadata><ReceiveMessageResult>\
                         <Message><MessageId>m</MessageId></Message></ReceiveMessageResult></ResponseMetadata>\
                         <Message><MessageId>m</MessageId></Message></ReceiveMessageResponse>";
        assert!(receive(misplaced).unwrap().is_empty());
        let nested = receive_doc(
            "<Message>secret<MessageId>m</MessageId><ReceiptHandle>r</ReceiptHandle>\
             <Message><MessageId>inner</MessageId></Message></Message>",
        );
        let messages = receive(&nested).unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].message_id, "m");
        assert_eq!(messages[0].body, "");
    }

    #[test]
    fn wrong_response_element_is_rejected() {
        let err =
            receive("<SendMessageResponse><SendMessageResult/></SendMessageResponse>").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Permanent);
        assert!(
            err.message
                .contains("expected <ReceiveMessageResponse>, got <SendMessageResponse>")
        );
        // Batch responses share types, but not root elements.
        let delete =
            "<DeleteMessageBatchResponse><DeleteMessageBatchResult/></DeleteMessageBatchResponse>";
        assert!(batch_failures("SendMessageBatch", delete, &[]).is_err());
        let created = "<CreateQueueResponse><CreateQueueResult><QueueUrl>http://x/0/q</QueueUrl>\
                       </CreateQueueResult></CreateQueueResponse>";
        assert!(queue_url("GetQueueUrl", created).is_err());
        assert_eq!(queue_url("CreateQueue", created).unwrap(), "http://x/0/q");
    }

    #[test]
    fn truncated_documents_are_errors() {
        // Every strict prefix of a valid document, cut anywhere, including inside entities,
        // tags and the body.
        for (cut, _) in RECEIVE_SAMPLE.char_indices() {
            let err = receive(&RECEIVE_SAMPLE[..cut]).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Permanent, "cut at {cut}: {err}");
        }
        let batch = "<DeleteMessageBatchResponse><DeleteMessageBatchResult>\
                     <DeleteMessageBatchResultEntry><Id>a</Id></DeleteMessageBatchResultEntry>";
        assert_eq!(
            batch_failures("DeleteMessageBatch", batch, &["a"])
                .unwrap_err()
                .kind,
            ErrorKind::Permanent
        );
    }

    #[test]
    fn parses_batch_results_with_failures() {
        let doc = r#"<DeleteMessageBatchResponse>
    <DeleteMessageBatchResult>
        <DeleteMessageBatchResultEntry>
            <Id>msg1</Id>
        </DeleteMessageBatchResultEntry>
        <BatchResultErrorEntry>
            <Id>msg2</Id>
            <SenderFault>true</SenderFault>
            <Code>ReceiptHandleIsInvalid</Code>
            <Message>The input receipt handle &quot;x&quot; is not a valid receipt handle.</Message>
        </BatchResultErrorEntry>
        <BatchResultErrorEntry>
            <Id>msg3</Id>
            <Code>InternalError</Code>
            <Message>try again</Message>
            <SenderFault>false</SenderFault>
        </BatchResultErrorEntry>
    </DeleteMessageBatchResult>
    <ResponseMetadata>
        <RequestId>d6f86b7a-74d1-4439-b43f-196a1e29cd85</RequestId>
    </ResponseMetadata>
</DeleteMessageBatchResponse>"#;
        let failures =
            batch_failures("DeleteMessageBatch", doc, &["msg1", "msg2", "msg3", "msg4"]).unwrap();
        assert_eq!(failures.len(), 3);
        assert_eq!(failures[0].id, "msg2");
        assert_eq!(failures[0].code, "ReceiptHandleIsInvalid");
        assert_eq!(
            failures[0].message,
            "The input receipt handle \"x\" is not a valid receipt handle."
        );
        assert!(failures[0].sender_fault);
        assert_eq!(failures[1].id, "msg3");
        assert!(!failures[1].sender_fault);
        // Unaccounted-for entries come back as retriable failures.
        assert_eq!(failures[2].id, "msg4");
        assert_eq!(failures[2].code, "MissingBatchResult");
        assert!(!failures[2].sender_fault);
    }

    #[test]
    fn batch_result_of_each_operation() {
        for op in [
            "DeleteMessageBatch",
            "ChangeMessageVisibilityBatch",
            "SendMessageBatch",
        ] {
            let doc = format!(
                "<{op}Response><{op}Result><{op}ResultEntry><Id>a</Id></{op}ResultEntry>\
                 <BatchResultErrorEntry><Id>b</Id><Code>X</Code></BatchResultErrorEntry>\
                 <{op}ResultEntry><Id>c</Id></{op}ResultEntry></{op}Result></{op}Response>"
            );
            let failures = batch_failures(op, &doc, &["a", "b", "c"]).unwrap();
            assert_eq!(failures.len(), 1, "{op}");
            assert_eq!(
                (failures[0].id.as_str(), failures[0].code.as_str()),
                ("b", "X")
            );
            // Without a result element nothing is accounted for.
            let empty = format!("<{op}Response/>");
            assert_eq!(batch_failures(op, &empty, &["a", "b"]).unwrap().len(), 2);
        }
    }

    #[test]
    fn parses_send_batch_success_and_queue_attributes() {
        let send = "<SendMessageBatchResponse><SendMessageBatchResult><SendMessageBatchResultEntry>\
                    <Id>a</Id><MessageId>m</MessageId><MD5OfMessageBody>0</MD5OfMessageBody>\
                    </SendMessageBatchResultEntry></SendMessageBatchResult></SendMessageBatchResponse>";
        assert!(
            batch_failures("SendMessageBatch", send, &["a"])
                .unwrap()
                .is_empty()
        );

        let attrs = "<GetQueueAttributesResponse><GetQueueAttributesResult>\
                     <Attribute><Name>ApproximateNumberOfMessages</Name><Value>0</Value></Attribute>\
                     <Attribute><Name>RedrivePolicy</Name><Value>{&quot;maxReceiveCount&quot;:&quot;5&quot;}</Value></Attribute>\
                     </GetQueueAttributesResult></GetQueueAttributesResponse>";
        let map = queue_attributes(attrs).unwrap();
        assert_eq!(map["ApproximateNumberOfMessages"], "0");
        assert_eq!(map["RedrivePolicy"], r#"{"maxReceiveCount":"5"}"#);
        assert!(
            queue_attributes("<GetQueueAttributesResponse/>")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn parses_queue_url() {
        let doc = "<GetQueueUrlResponse><GetQueueUrlResult><QueueUrl>\n https://sqs.us-east-1.amazonaws.com/123456789012/q \
                   </QueueUrl></GetQueueUrlResult></GetQueueUrlResponse>";
        let url = queue_url("GetQueueUrl", doc).unwrap();
        assert_eq!(url, "https://sqs.us-east-1.amazonaws.com/123456789012/q");
        for missing in [
            "<GetQueueUrlResponse><GetQueueUrlResult/></GetQueueUrlResponse>",
            "<GetQueueUrlResponse><GetQueueUrlResult><QueueUrl> </QueueUrl></GetQueueUrlResult></GetQueueUrlResponse>",
            "<GetQueueUrlResponse><ResponseMetadata/></GetQueueUrlResponse>",
        ] {
            let err = queue_url("GetQueueUrl", missing).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Permanent);
            assert!(err.message.contains("has no QueueUrl"), "{}", err.message);
        }
    }

    #[test]
    fn reads_error_documents() {
        // What LocalStack 2.3.2 answers for a missing queue.
        let sqs = "<?xml version='1.0' encoding='utf-8'?>\n<ErrorResponse xmlns=\"http://queue.amazonaws.com/doc/2012-11-05/\">\
                   <Error><Code>AWS.SimpleQueueService.NonExistentQueue</Code><Message>The specified queue does not exist.</Message>\
                   <Type>Sender</Type></Error><RequestId> bdf2 </RequestId></ErrorResponse>";
        let details = error_details(sqs).unwrap();
        assert_eq!(details.code, "AWS.SimpleQueueService.NonExistentQueue");
        assert_eq!(details.message, "The specified queue does not exist.");
        assert_eq!(details.request_id.as_deref(), Some("bdf2"));

        let other = "<Response><Errors><Error><Code>Throttling</Code><Message>slow down</Message>\
                     </Error></Errors><RequestID>x</RequestID></Response>";
        let details = error_details(other).unwrap();
        assert_eq!(
            (details.code.as_str(), details.message.as_str()),
            ("Throttling", "slow down")
        );
        assert_eq!(details.request_id, None);

        let no_code =
            error_details("<ErrorResponse><Error><Message>m</Message></Error></ErrorResponse>")
                .unwrap();
        assert_eq!((no_code.code.as_str(), no_code.message.as_str()), ("", "m"));

        // Not error documents: the caller then quotes the raw body.
        for body in [
            "",
            "Internal Server Error",
            r#"{"__type":"InternalError"}"#,
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
            "<html>bad gateway",
            "<ErrorResponse><Error><Code>Throttling</Code>",
            "<ErrorResponse><Error><Code><b>x</b></Code></Error></ErrorResponse>",
        ] {
            assert!(error_details(body).is_none(), "{body}");
        }
    }

    #[test]
    fn success_body_that_is_not_xml() {
        let mismatch = receive("{\"Messages\":[]}").unwrap_err();
        assert_eq!(mismatch.kind, ErrorKind::ProtocolMismatch);
        // JSON that happens to contain markup is still JSON.
        assert_eq!(
            receive(r#"{"a":"<ReceiveMessageResponse/>"}"#)
                .unwrap_err()
                .kind,
            ErrorKind::ProtocolMismatch
        );
        assert_eq!(
            receive("Operation detection failed. Missing Action")
                .unwrap_err()
                .kind,
            ErrorKind::ProtocolMismatch
        );
        for (body, expected) in [
            ("", "empty response body"),
            ("  \n", "empty response body"),
            ("<a><b></a>", "not valid XML"),
            ("plain text", "text outside the root element"),
            ("<!-- only a comment -->", "no root element"),
        ] {
            let err = receive(body).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Permanent, "{body:?}");
            assert!(err.message.contains(expected), "{body:?}: {}", err.message);
        }
    }

    #[test]
    fn rejects_malformed_xml() {
        assert!(root_element("<a><b></a>").is_err());
        assert!(root_element("<a>").is_err());
        assert!(root_element("<a>&bogus;</a>").is_err());
        assert!(root_element("<a>&#0;</a>").is_err());
        assert!(root_element("").is_err());
        assert!(root_element("<a/><b/>").is_err());
        assert!(root_element("<a/>trailing").is_err());
        assert!(root_element("<a/>&amp;").is_err());
        assert!(root_element("<a/><garbage").is_err());
        let deep = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
        assert!(root_element(&deep).is_err());
        let just_deep_enough = format!(
            "{}{}",
            "<a>".repeat(MAX_XML_DEPTH),
            "</a>".repeat(MAX_XML_DEPTH)
        );
        assert_eq!(root_element(&just_deep_enough).unwrap(), "a");
        // Whitespace, a declaration, comments and a byte-order mark around the root are fine.
        assert_eq!(
            root_element("\u{feff}<?xml version='1.0'?>\n<!-- c --><sqs:R xmlns:sqs='u'/>\n")
                .unwrap(),
            "R"
        );
    }

    #[test]
    fn hostile_input_gives_errors_not_panics() {
        // Far deeper than any stack would survive if parsing recursed per level.
        let deep = receive_doc(&format!(
            "<Message>{}{}</Message>",
            "<x>".repeat(200_000),
            "</x>".repeat(200_000)
        ));
        let (kind, message) = receive_error(&deep);
        assert_eq!(kind, ErrorKind::Permanent);
        assert!(message.contains("nested deeper"), "{message}");
        assert!(error_details(&deep).is_none());

        // Entities a DTD would define are not expanded (no "billion laughs").
        let dtd = "<!DOCTYPE r [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;\">]>\
                   <ReceiveMessageResponse><ReceiveMessageResult><Message><MessageId>m</MessageId>\
                   <ReceiptHandle>r</ReceiptHandle><Body>&b;</Body></Message></ReceiveMessageResult>\
                   </ReceiveMessageResponse>";
        let (kind, message) = receive_error(dtd);
        assert_eq!(kind, ErrorKind::Permanent);
        assert!(message.contains("unknown entity"), "{message}");

        // Many elements between two items of one list: the look-ahead buffer is bounded.
        let spread = receive_doc(&format!(
            "<Message><MessageId>m</MessageId><ReceiptHandle>r</ReceiptHandle>\
             <Attribute><Name>A</Name></Attribute>{}<Attribute><Name>B</Name></Attribute></Message>",
            "<x/>".repeat(MAX_SKIPPED_EVENTS.get() + 1)
        ));
        let (kind, message) = receive_error(&spread);
        assert_eq!(kind, ErrorKind::Permanent);
        assert!(message.contains("limit exceeded"), "{message}");

        // Long endpoint-supplied names are cut when quoted.
        let long_root = format!("<{}/>", "R".repeat(10_000));
        assert!(receive(&long_root).unwrap_err().message.len() < 400);
    }

    /// Property tests: hostile documents never panic, and documents built from random
    /// message data parse back to exactly that data. `PROPTEST_CASES` sets the case count.
    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        /// Escapes text as SQS does: the five predefined entities, and `\r` as a character
        /// reference (a raw one would be read as a line break).
        fn escape(text: &str) -> String {
            let mut out = String::with_capacity(text.len());
            for c in text.chars() {
                match c {
                    '&' => out.push_str("&amp;"),
                    '<' => out.push_str("&lt;"),
                    '>' => out.push_str("&gt;"),
                    '"' => out.push_str("&quot;"),
                    '\'' => out.push_str("&apos;"),
                    '\r' => out.push_str("&#xD;"),
                    c => out.push(c),
                }
            }
            out
        }

        /// Characters XML 1.0 allows in a document, which are the ones SQS allows in a body.
        fn xml_char() -> impl Strategy<Value = char> {
            prop_oneof![
                prop::sample::select(vec!['&', '<', '>', '"', '\'', '\r', '\n', '\t', ' ', ']']),
                // Mapped, not filtered: a filter's rejects add up past proptest's limit
                // (65,536) in long runs, since many generated characters are controls.
                any::<char>().prop_map(|c| {
                    if matches!(c, '\t' | '\n' | '\r')
                        || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
                    {
                        c
                    } else {
                        '\u{FFFD}'
                    }
                }),
            ]
        }

        fn xml_text(max: usize) -> impl Strategy<Value = String> {
            prop::collection::vec(xml_char(), 0..max).prop_map(|c| c.into_iter().collect())
        }

        /// What one generated message holds.
        #[derive(Debug, Clone)]
        struct Generated {
            id: String,
            handle: String,
            body: String,
            attributes: BTreeMap<String, String>,
            message_attributes: BTreeMap<String, String>,
        }

        fn generated() -> impl Strategy<Value = Generated> {
            let system = prop::sample::select(vec![
                "SenderId",
                "SentTimestamp",
                "ApproximateReceiveCount",
                "ApproximateFirstReceiveTimestamp",
                "MessageGroupId",
            ]);
            (
                "[A-Za-z0-9-]{1,40}",
                "[A-Za-z0-9+/=]{1,80}",
                xml_text(64),
                prop::collection::btree_map(
                    system.prop_map(str::to_string),
                    "[A-Za-z0-9:._-]{1,20}",
                    0..4,
                ),
                // SQS refuses empty attribute values, so none are generated.
                prop::collection::btree_map(
                    "[A-Za-z][A-Za-z0-9_.-]{0,20}",
                    xml_text(24).prop_filter("non-empty", |v| !v.is_empty()),
                    0..4,
                ),
            )
                .prop_map(|(id, handle, body, attributes, message_attributes)| {
                    Generated {
                        id,
                        handle,
                        body,
                        attributes,
                        message_attributes,
                    }
                })
        }

        /// The `<Message>` element SQS would send for `g`.
        fn message_xml(g: &Generated) -> String {
            let mut out = format!(
                "<Message><MessageId>{}</MessageId><ReceiptHandle>{}</ReceiptHandle>\
                 <MD5OfBody>0</MD5OfBody><Body>{}</Body>",
                g.id,
                g.handle,
                escape(&g.body)
            );
            for (name, value) in &g.attributes {
                out.push_str(&format!(
                    "<Attribute><Name>{name}</Name><Value>{}</Value></Attribute>",
                    escape(value)
                ));
            }
            for (name, value) in &g.message_attributes {
                out.push_str(&format!(
                    "<MessageAttribute><Name>{name}</Name><Value><StringValue>{}</StringValue>\
                     <DataType>String</DataType></Value></MessageAttribute>",
                    escape(value)
                ));
            }
            out.push_str("</Message>");
            out
        }

        fn document(messages: &[Generated]) -> String {
            receive_doc(&messages.iter().map(message_xml).collect::<String>())
        }

        /// A random element tree: SQS names and others, text with special characters.
        fn xml_tree() -> impl Strategy<Value = String> {
            let name = prop::sample::select(vec![
                "ReceiveMessageResponse",
                "ReceiveMessageResult",
                "Message",
                "MessageId",
                "ReceiptHandle",
                "Body",
                "Attribute",
                "MessageAttribute",
                "Name",
                "Value",
                "StringValue",
                "x",
                "a:Body",
            ]);
            let leaf = prop_oneof![
                xml_text(16).prop_map(|t| escape(&t)),
                name.clone().prop_map(|n| format!("<{n}/>")),
            ];
            leaf.prop_recursive(6, 64, 5, move |inner| {
                (name.clone(), prop::collection::vec(inner, 0..5))
                    .prop_map(|(n, kids)| format!("<{n}>{}</{n}>", kids.concat()))
            })
        }

        /// Runs every parser of this module on `text`; none may panic.
        fn parse_all(text: &str) {
            let _ = receive(text);
            let _ = queue_url("GetQueueUrl", text);
            let _ = message_id(text);
            let _ = queue_attributes(text);
            let _ = batch_failures("DeleteMessageBatch", text, &["a"]);
            let _ = error_details(text);
        }

        proptest! {
            #[test]
            fn prop_random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                parse_all(&String::from_utf8_lossy(&bytes));
            }

            #[test]
            fn prop_random_xml_trees_never_panic(tree in xml_tree(), wrap in any::<bool>()) {
                let text = if wrap {
                    format!("<ReceiveMessageResponse>{tree}</ReceiveMessageResponse>")
                } else {
                    tree
                };
                parse_all(&text);
            }

            #[test]
            fn prop_generated_receive_round_trips(messages in prop::collection::vec(generated(), 0..4)) {
                let parsed = receive(&document(&messages)).unwrap();
                prop_assert_eq!(parsed.len(), messages.len());
                for (p, g) in parsed.iter().zip(&messages) {
                    prop_assert_eq!(&p.message_id, &g.id);
                    prop_assert_eq!(&p.receipt_handle, &g.handle);
                    prop_assert_eq!(&p.body, &g.body);
                    let attributes: BTreeMap<_, _> = p.attributes.clone().into_iter().collect();
                    prop_assert_eq!(&attributes, &g.attributes);
                    let message_attributes: BTreeMap<_, _> =
                        p.message_attributes.clone().into_iter().collect();
                    prop_assert_eq!(&message_attributes, &g.message_attributes);
                }
            }

            /// Every strict prefix is an error, and the error never quotes a body.
            #[test]
            fn prop_truncated_receive_is_an_error_without_body(
                messages in prop::collection::vec(generated(), 1..3),
                marker in "[a-z0-9]{12}",
                cut in any::<prop::sample::Index>(),
            ) {
                let marker = format!("zqmark{marker}");
                let messages: Vec<Generated> = messages
                    .into_iter()
                    .map(|mut g| {
                        g.body = format!("{}{marker}{}", g.body, g.body);
                        g
                    })
                    .collect();
                let doc = document(&messages);
                let at = cut.index(doc.len());
                let at = (0..=at).rev().find(|&i| doc.is_char_boundary(i)).unwrap_or(0);
                let err = receive(&doc[..at]).unwrap_err();
                prop_assert_eq!(err.kind, ErrorKind::Permanent, "{}", err.message);
                prop_assert!(!err.message.contains(&marker), "{}", err.message);
            }

            /// Random edits of a valid document (a character inserted, removed or replaced).
            #[test]
            fn prop_mutated_receive_never_panics(
                edits in prop::collection::vec(
                    (any::<prop::sample::Index>(), 0u8..3, prop::sample::select(vec![
                        '<', '>', '/', '&', ';', '"', '=', ' ', '!', '?', '[', ']', 'x', '#',
                    ])),
                    1..6,
                ),
            ) {
                let mut doc: Vec<char> = RECEIVE_SAMPLE.chars().collect();
                for (i, op, c) in edits {
                    let at = i.index(doc.len());
                    match op {
                        0 => doc.insert(at, c),
                        1 => {
                            doc.remove(at);
                        }
                        _ => doc[at] = c,
                    }
                }
                parse_all(&doc.into_iter().collect::<String>());
            }
        }
    }
}

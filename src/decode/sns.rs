//! The `sns` step: unwraps an SNS notification envelope (what SQS receives from an SNS
//! subscription without raw message delivery) into its `Message` text and metadata.
//!
//! An envelope is a JSON object with `Type: "Notification"`, `MessageId`, `TopicArn`,
//! `Message` (the event, as a string), usually `Timestamp`, and optionally `Subject` and
//! `MessageAttributes` (`{"Name": {"Type": "String", "Value": "…"}}`). Confirmations of a
//! subscription carry no event and are rejects, as are envelopes missing a required field.
//! Signatures are not verified: the queue's access policy is what decides who may send.
//! Problems name fields, never their values.

use serde_json::Value as J;
use std::collections::BTreeMap;

/// The envelope's fields a column can read (`meta: sns.…`). `Debug` shows which are present
/// only: a subject or an attribute may hold personal data.
#[derive(Clone, Default, PartialEq)]
pub struct SnsMeta {
    /// `MessageId`: SNS's id of the notification (stable across SNS's own retries).
    pub message_id: String,
    /// `TopicArn`.
    pub topic_arn: String,
    /// `Timestamp`, as sent (ISO 8601, UTC).
    pub timestamp: Option<String>,
    /// `Subject`, when the publisher set one.
    pub subject: Option<String>,
    /// `MessageAttributes`: name → `Value` (for `Binary` attributes, the base64 text).
    pub message_attributes: BTreeMap<String, String>,
}

impl std::fmt::Debug for SnsMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnsMeta")
            .field("has_timestamp", &self.timestamp.is_some())
            .field("has_subject", &self.subject.is_some())
            .field("message_attributes", &self.message_attributes.len())
            .finish_non_exhaustive()
    }
}

/// Why an envelope was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum SnsProblem {
    #[error("not an SNS envelope: the body is not a JSON object")]
    NotAnObject,
    #[error(
        "not an SNS envelope: no `Type` field (if the subscription uses raw message delivery, \
         drop `sns` from `decode:`)"
    )]
    NoType,
    #[error(
        "an SNS {0} message, not a Notification: it carries no event (confirm or remove the \
         subscription in SNS)"
    )]
    Confirmation(&'static str),
    #[error("an SNS message whose `Type` is not Notification")]
    OtherType,
    #[error("malformed SNS envelope: `{0}` is missing or not a string")]
    Field(&'static str),
    #[error("malformed SNS envelope: `{0}` is not a string")]
    NotAString(&'static str),
    #[error(
        "malformed SNS envelope: `MessageAttributes` is not a mapping of names to \
         {{\"Type\", \"Value\"}} objects"
    )]
    Attributes,
}

/// Splits an envelope into its `Message` text and metadata.
pub fn unwrap(envelope: J) -> Result<(String, SnsMeta), SnsProblem> {
    let J::Object(mut env) = envelope else {
        return Err(SnsProblem::NotAnObject);
    };
    match env.get("Type") {
        None | Some(J::Null) => return Err(SnsProblem::NoType),
        Some(J::String(t)) if t == "Notification" => {}
        Some(J::String(t)) if t == "SubscriptionConfirmation" => {
            return Err(SnsProblem::Confirmation("SubscriptionConfirmation"));
        }
        Some(J::String(t)) if t == "UnsubscribeConfirmation" => {
            return Err(SnsProblem::Confirmation("UnsubscribeConfirmation"));
        }
        Some(_) => return Err(SnsProblem::OtherType),
    }
    let mut required = |name: &'static str| match env.remove(name) {
        Some(J::String(s)) => Ok(s),
        _ => Err(SnsProblem::Field(name)),
    };
    let message = required("Message")?;
    let message_id = required("MessageId")?;
    let topic_arn = required("TopicArn")?;
    let mut optional = |name: &'static str| match env.remove(name) {
        None | Some(J::Null) => Ok(None),
        Some(J::String(s)) => Ok(Some(s)),
        Some(_) => Err(SnsProblem::NotAString(name)),
    };
    let timestamp = optional("Timestamp")?;
    let subject = optional("Subject")?;
    let message_attributes = match env.remove("MessageAttributes") {
        None | Some(J::Null) => BTreeMap::new(),
        Some(J::Object(attrs)) => attrs
            .into_iter()
            .map(|(name, a)| match a.get("Value") {
                Some(J::String(v)) => Ok((name, v.clone())),
                // SNS sends every value as a string; a number here is still a readable value.
                Some(v @ (J::Number(_) | J::Bool(_))) => Ok((name, v.to_string())),
                _ => Err(SnsProblem::Attributes),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(SnsProblem::Attributes),
    };
    Ok((
        message,
        SnsMeta {
            message_id,
            topic_arn,
            timestamp,
            subject,
            message_attributes,
        },
    ))
}

//! The envelope record kept beside each spooled message (`env/<id>.json`),
//! and what the server hands over to create one.
//!
//! Field names and enum spellings are part of the on-disk format: a spool
//! written by one version is read by the next. Add fields as `Option`s (a
//! missing `Option` field reads as `None`); never rename one.

use serde::{Deserialize, Serialize};

use super::MessageId;

/// RFC 3461 `RET`: how much of the message a failure DSN returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Ret {
    /// `RET=FULL`: the whole message.
    #[serde(rename = "FULL")]
    Full,
    /// `RET=HDRS`: only its header.
    #[serde(rename = "HDRS")]
    Hdrs,
}

/// One RFC 3461 `NOTIFY` keyword: when the sender wants a DSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Notify {
    /// `NEVER`: no DSN at all (only ever alone in the list).
    #[serde(rename = "NEVER")]
    Never,
    /// `SUCCESS`: on delivery.
    #[serde(rename = "SUCCESS")]
    Success,
    /// `FAILURE`: on permanent failure.
    #[serde(rename = "FAILURE")]
    Failure,
    /// `DELAY`: when delivery is delayed.
    #[serde(rename = "DELAY")]
    Delay,
}

/// Where one recipient stands. Only [`RecipientState::Pending`] recipients
/// are still to be tried; the others are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientState {
    /// Not delivered yet: tried again at `next_attempt`.
    Pending,
    /// The next hop (or the local Maildir) accepted it.
    Delivered,
    /// Permanently failed and no DSN is owed (NOTIFY without FAILURE, or the
    /// message is itself a bounce).
    Failed,
    /// Permanently failed or given up, and a DSN was queued for the sender.
    Bounced,
}

/// One message's envelope and delivery state, stored as
/// `env/<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeRecord {
    /// The message this record belongs to.
    pub id: MessageId,
    /// Envelope sender (MAIL FROM); `""` is the null sender `<>`.
    pub sender: String,
    /// When the message was accepted, in Unix seconds.
    pub arrived: u64,
    /// Size of `msg/<id>` in bytes (trace header fields included).
    pub size: u64,
    /// The peer it came from, as the logs and the `Received:` field name it.
    pub peer: String,
    /// The name the peer gave in HELO/EHLO.
    pub helo: String,
    /// RFC 3461 `ENVID`, xtext-decoded.
    pub envid: Option<String>,
    /// RFC 3461 `RET`.
    pub ret: Option<Ret>,
    /// The message is a delivery status notification (sent from `<>`); a
    /// failure of it is never bounced.
    pub is_bounce: bool,
    /// Every recipient, each with its own state.
    pub recipients: Vec<RecipientRecord>,
}

impl EnvelopeRecord {
    /// Whether any recipient is still [`RecipientState::Pending`].
    pub fn has_pending(&self) -> bool {
        self.recipients
            .iter()
            .any(|r| r.state == RecipientState::Pending)
    }

    /// The earliest `next_attempt` of the pending recipients, or `None` when
    /// nothing is pending (the record can be removed).
    pub fn next_attempt(&self) -> Option<u64> {
        self.recipients
            .iter()
            .filter(|r| r.state == RecipientState::Pending)
            .map(|r| r.next_attempt)
            .min()
    }

    /// Whether some pending recipient is due at `now` (Unix seconds).
    pub fn is_due(&self, now: u64) -> bool {
        self.next_attempt().is_some_and(|t| t <= now)
    }
}

/// One recipient of a spooled message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientRecord {
    /// The forward path (RCPT TO), without angle brackets.
    pub address: String,
    /// RFC 3461 `ORCPT` as `addr-type;address`, the address xtext-decoded
    /// (the form of the DSN `Original-Recipient:` field, RFC 3464 2.3.1).
    pub orcpt: Option<String>,
    /// RFC 3461 `NOTIFY`; `None` when the client gave none, and
    /// `[Notify::Never]` for `NEVER`.
    pub notify: Option<Vec<Notify>>,
    /// Where this recipient stands.
    pub state: RecipientState,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When to try next, in Unix seconds (meaningful while pending).
    pub next_attempt: u64,
    /// When it was last tried, in Unix seconds.
    pub last_attempt: Option<u64>,
    /// What the last attempt got: a reply (`"550 5.1.1 No such user"`) or a
    /// connection error (`"connect tcp://b:25: Connection refused"`).
    pub last_reply: Option<String>,
    /// The hop chosen for it, e.g. an endpoint URL or `local`.
    pub next_hop: Option<String>,
}

/// What the server knows at the end of DATA: everything in an
/// [`EnvelopeRecord`] except the id and size (the spool assigns and counts
/// them) and the delivery state (every recipient starts
/// [`RecipientState::Pending`] with no attempts, due at `arrived`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewEnvelope {
    /// Envelope sender (MAIL FROM); `""` is the null sender `<>`.
    pub sender: String,
    /// When the message was accepted, in Unix seconds.
    pub arrived: u64,
    /// The peer it came from.
    pub peer: String,
    /// The name the peer gave in HELO/EHLO.
    pub helo: String,
    /// RFC 3461 `ENVID`, xtext-decoded.
    pub envid: Option<String>,
    /// RFC 3461 `RET`.
    pub ret: Option<Ret>,
    /// The message is a delivery status notification.
    pub is_bounce: bool,
    /// The accepted recipients; at least one.
    pub recipients: Vec<NewRecipient>,
}

/// One accepted recipient, as the server knows it at the end of DATA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRecipient {
    /// The forward path (RCPT TO), without angle brackets.
    pub address: String,
    /// RFC 3461 `ORCPT` as `addr-type;address`, the address xtext-decoded.
    pub orcpt: Option<String>,
    /// RFC 3461 `NOTIFY`.
    pub notify: Option<Vec<Notify>>,
    /// The hop chosen at RCPT time, if routing already decided.
    pub next_hop: Option<String>,
}

impl NewRecipient {
    /// A recipient with no DSN parameters and no hop chosen yet.
    pub fn new(address: impl Into<String>) -> Self {
        NewRecipient {
            address: address.into(),
            ..NewRecipient::default()
        }
    }
}

impl NewEnvelope {
    /// The record to store for this envelope under `id`, `size` bytes long.
    pub(crate) fn into_record(self, id: MessageId, size: u64) -> EnvelopeRecord {
        let arrived = self.arrived;
        EnvelopeRecord {
            id,
            sender: self.sender,
            arrived,
            size,
            peer: self.peer,
            helo: self.helo,
            envid: self.envid,
            ret: self.ret,
            is_bounce: self.is_bounce,
            recipients: self
                .recipients
                .into_iter()
                .map(|r| RecipientRecord {
                    address: r.address,
                    orcpt: r.orcpt,
                    notify: r.notify,
                    state: RecipientState::Pending,
                    attempts: 0,
                    next_attempt: arrived,
                    last_attempt: None,
                    last_reply: None,
                    next_hop: r.next_hop,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// The on-disk spelling is a format: this pins it.
    #[test]
    fn json_field_names_are_stable() {
        let id = MessageId::parse("0068a1b2c3-1a2b3c4d-00001f40-00000001").unwrap();
        let record = NewEnvelope {
            sender: "a@example.org".into(),
            arrived: 7,
            peer: "tcp://192.0.2.1".into(),
            helo: "client".into(),
            envid: Some("E1".into()),
            ret: Some(Ret::Hdrs),
            is_bounce: false,
            recipients: vec![NewRecipient {
                address: "b@example.net".into(),
                orcpt: Some("rfc822;b@example.net".into()),
                notify: Some(vec![Notify::Failure, Notify::Delay]),
                next_hop: Some("tcp://b:25".into()),
            }],
        }
        .into_record(id, 42);
        let json: serde_json::Value = serde_json::to_value(&record).unwrap();
        let expected = serde_json::json!({
            "id": "0068a1b2c3-1a2b3c4d-00001f40-00000001",
            "sender": "a@example.org",
            "arrived": 7,
            "size": 42,
            "peer": "tcp://192.0.2.1",
            "helo": "client",
            "envid": "E1",
            "ret": "HDRS",
            "is_bounce": false,
            "recipients": [{
                "address": "b@example.net",
                "orcpt": "rfc822;b@example.net",
                "notify": ["FAILURE", "DELAY"],
                "state": "pending",
                "attempts": 0,
                "next_attempt": 7,
                "last_attempt": null,
                "last_reply": null,
                "next_hop": "tcp://b:25"
            }]
        });
        assert_eq!(json, expected);
        let back: EnvelopeRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn missing_optional_fields_read_as_none() {
        let json = r#"{"id":"0068a1b2c3-1a2b3c4d-00001f40-00000001","sender":"","arrived":1,
            "size":2,"peer":"p","helo":"h","is_bounce":true,
            "recipients":[{"address":"x@y","state":"bounced","attempts":3,"next_attempt":9}]}"#;
        let record: EnvelopeRecord = serde_json::from_str(json).unwrap();
        assert_eq!(record.envid, None);
        assert_eq!(record.recipients[0].state, RecipientState::Bounced);
        assert!(!record.has_pending());
        assert_eq!(record.next_attempt(), None);
    }

    #[test]
    fn due_looks_at_pending_recipients_only() {
        let id = MessageId::parse("0068a1b2c3-1a2b3c4d-00001f40-00000001").unwrap();
        let mut record = NewEnvelope {
            arrived: 100,
            recipients: vec![NewRecipient::new("a@x"), NewRecipient::new("b@x")],
            ..NewEnvelope::default()
        }
        .into_record(id, 0);
        assert!(record.is_due(100));
        assert!(!record.is_due(99));
        record.recipients[0].state = RecipientState::Delivered;
        record.recipients[1].next_attempt = 500;
        assert_eq!(record.next_attempt(), Some(500));
        assert!(!record.is_due(499));
        record.recipients[0].next_attempt = 0;
        assert!(!record.is_due(499), "a delivered recipient is never due");
    }
}

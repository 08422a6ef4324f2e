//! The types a set of inbound emails is processed with: each queued email with its envelope,
//! and what became of it. Shared by the consumer, processing, threading and bounces.

use tidings_common::announce::Announcements;
use tidings_common::db::models::LogStatus;
use tidings_common::events::RecordedEvent;
use tidings_common::inbound::InboundReport;

/// What became of one inbound email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Posted into an existing conversation.
    Threaded {
        conversation_id: i64,
        message_id: i64,
    },
    /// Started a new conversation: a customer's first email, as a ticket (SPEC I5).
    Created {
        conversation_id: i64,
        message_id: i64,
        item_id: i64,
        /// The `item_created` event recorded with the ticket, announced after commit.
        item_event: RecordedEvent,
    },
    /// Logged, never posted (automatic mail, a duplicate delivery).
    Ignored(String),
    /// Not posted; the reason says why.
    Rejected(String),
}

impl Disposition {
    /// The conversation and message it was posted as, if it was posted.
    pub fn posted_into(&self) -> Option<(i64, i64)> {
        match self {
            Disposition::Threaded {
                conversation_id,
                message_id,
            }
            | Disposition::Created {
                conversation_id,
                message_id,
                ..
            } => Some((*conversation_id, *message_id)),
            _ => None,
        }
    }

    /// The message it was posted as, if it was posted.
    pub fn posted(&self) -> Option<i64> {
        self.posted_into().map(|(_, message)| message)
    }

    /// What to announce once its transaction has committed: the posted message, and the
    /// ticket's `item_created` event.
    pub fn announcements(&self) -> Announcements {
        let mut announce = Announcements::default();
        announce.messages.extend(self.posted());
        if let Disposition::Created { item_event, .. } = self {
            announce.events.push(item_event.clone());
        }
        announce
    }

    /// What the email caused, as the email log shows it (SPEC L1).
    pub fn action(&self) -> String {
        match self {
            Disposition::Threaded {
                conversation_id,
                message_id,
            } => format!("posted message {message_id} into conversation {conversation_id}"),
            Disposition::Created {
                conversation_id,
                message_id,
                item_id,
                ..
            } => format!(
                "started conversation {conversation_id} with message {message_id} as ticket {item_id}"
            ),
            Disposition::Ignored(_) => "nothing posted (logged only)".into(),
            Disposition::Rejected(_) => "nothing posted (rejected)".into(),
        }
    }

    pub(crate) fn status(&self) -> LogStatus {
        match self {
            Disposition::Threaded { .. } => LogStatus::Threaded,
            Disposition::Created { .. } => LogStatus::Created,
            Disposition::Ignored(_) => LogStatus::Ignored,
            Disposition::Rejected(_) => LogStatus::Rejected,
        }
    }
}

/// The envelope the relay gave.
pub struct Envelope {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// The SMTP client's address and HELO name, when the listener received it.
    pub client: Option<(std::net::IpAddr, String)>,
}

/// One queued email: inspected, with its raw text and envelope.
pub struct Inbound {
    pub report: InboundReport,
    pub raw: Vec<u8>,
    pub envelope: Envelope,
}

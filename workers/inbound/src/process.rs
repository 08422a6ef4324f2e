//! Processing queued inbound email: the pure path (parse, classify, extract), then threading
//! and posting in one transaction (SPEC I2–I6, L2). The posted message then flows through
//! dispatch like any other.

use diesel::prelude::*;
use tidings_common::announce::Announcements;
use tidings_common::db::email_log;
use tidings_common::db::models::{LogStatus, NewEmailLogEntry};
use tidings_common::db::schema::inbound_emails;
use tidings_common::events::RecordedEvent;
use tidings_common::inbound::InboundReport;
use tidings_common::{Config, Result};

use crate::thread;

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

    fn status(&self) -> LogStatus {
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
}

fn sha256_hex(raw: &[u8]) -> String {
    use std::fmt::Write;
    let digest = <sha2::Sha256 as sha2::Digest>::digest(raw);
    digest.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Threads and posts one inspected email, in one transaction, exactly once per Message-ID and
/// sender.
pub fn process(
    conn: &mut PgConnection,
    config: &Config,
    report: &InboundReport,
    raw: &[u8],
    envelope: &Envelope,
) -> Result<Disposition> {
    let mut mail_from = envelope.mail_from.clone();
    tidings_common::inbound::without_nul(&mut mail_from);
    let mut rcpts = envelope.rcpts.clone();
    rcpts
        .iter_mut()
        .for_each(tidings_common::inbound::without_nul);
    let envelope = &Envelope { mail_from, rcpts };
    conn.transaction(|conn| {
        // A redelivery repeats the Message-ID *and* the sender; another sender reusing the
        // id is a different email.
        let sender = report.from.clone();
        let dedupe_key = match &report.message_id {
            Some(id) => format!("{id} from {}", sender.as_deref().unwrap_or("<no sender>")),
            None => format!("sha256:{}", sha256_hex(raw)),
        };
        let inserted: Option<i64> = diesel::insert_into(inbound_emails::table)
            .values((
                inbound_emails::dedupe_key.eq(&dedupe_key),
                inbound_emails::message_id_header.eq(&report.message_id),
                inbound_emails::mail_from.eq(&envelope.mail_from),
                inbound_emails::rcpt_to.eq(envelope.rcpts.join(",")),
                inbound_emails::sender.eq(&sender),
                inbound_emails::verdict.eq(report.verdict.as_str()),
                inbound_emails::reason
                    .eq(report.reason.as_ref().or(report.extraction_note.as_ref())),
                inbound_emails::quoted_text.eq(&report.quoted_text),
            ))
            .on_conflict_do_nothing()
            .returning(inbound_emails::id)
            .get_result(conn)
            .optional()?;
        let disposition = match inserted {
            None => Disposition::Ignored("duplicate delivery of an email already processed".into()),
            Some(row) => {
                let disposition = thread::decide(conn, config, report, envelope)?;
                let posted = disposition.posted_into();
                let (conversation_id, message_id) = (posted.map(|p| p.0), posted.map(|p| p.1));
                diesel::update(inbound_emails::table.find(row))
                    .set((
                        inbound_emails::conversation_id.eq(conversation_id),
                        inbound_emails::posted_message_id.eq(message_id),
                    ))
                    .execute(conn)?;
                disposition
            }
        };
        let posted = disposition.posted_into();
        let (conversation_id, message_id) = (posted.map(|p| p.0), posted.map(|p| p.1));
        let reason = match &disposition {
            Disposition::Ignored(r) | Disposition::Rejected(r) => Some(r.clone()),
            _ => report.extraction_note.clone(),
        };
        let entry = NewEmailLogEntry {
            reason,
            message_id,
            conversation_id,
            mail_from: sender,
            rcpt_to: Some(envelope.rcpts.join(",")),
            subject: report.subject.clone(),
            message_id_header: report.message_id.clone(),
            rule: Some(report.verdict.as_str().into()),
            action: Some(disposition.action()),
            ..NewEmailLogEntry::inbound(disposition.status())
        };
        email_log::write(conn, &[entry])?;
        Ok(disposition)
    })
}

//! The outbox of emails that are not message notifications: system notifications (SPEC M4,
//! E1–E3) and automation emails (M3). Rows are written in the transaction that decides on
//! them; the mailer claims, re-checks, renders, sends and records each one once.

use diesel::prelude::*;
use serde_json::Value;

use crate::db::email_log;
use crate::db::models::NewEmailLogEntry;
use crate::db::schema::{outbox_emails, people};
use crate::db::states::{LogStatus, OutboxState};

/// An email to queue.
#[derive(Debug, Clone)]
pub struct NewOutboxEmail {
    pub template: String,
    /// `system:<event>` or `automation:<id>`: what asked for it.
    pub source: String,
    pub system_event: Option<String>,
    pub automation_id: Option<i64>,
    pub recipient_id: i64,
    pub conversation_id: Option<i64>,
    /// What the template is given, besides `recipient` (added at send time).
    pub data: Value,
    /// Set to queue it already `skipped` with this reason, so the log shows why it never went.
    pub skipped: Option<String>,
}

/// Writes the rows; returns the ids of those to send. A row queued already skipped gets its
/// email log row here, naming its recipient and sender like every other.
pub fn enqueue(
    conn: &mut PgConnection,
    emails: Vec<NewOutboxEmail>,
    reply_domain: &str,
    mail_from: &str,
) -> QueryResult<Vec<i64>> {
    let mut ids = Vec::new();
    for email in emails {
        let salt: u64 = rand::random();
        let message_id = format!(
            "<tidings.o.p{}.{salt:016x}@{reply_domain}>",
            email.recipient_id
        );
        let state = if email.skipped.is_some() {
            OutboxState::Skipped
        } else {
            OutboxState::Pending
        };
        let id: i64 = diesel::insert_into(outbox_emails::table)
            .values((
                outbox_emails::template.eq(&email.template),
                outbox_emails::source.eq(&email.source),
                outbox_emails::system_event.eq(&email.system_event),
                outbox_emails::automation_id.eq(email.automation_id),
                outbox_emails::recipient_id.eq(email.recipient_id),
                outbox_emails::conversation_id.eq(email.conversation_id),
                outbox_emails::data.eq(&email.data),
                outbox_emails::state.eq(state),
                outbox_emails::reason.eq(&email.skipped),
                outbox_emails::email_message_id.eq(message_id),
            ))
            .returning(outbox_emails::id)
            .get_result(conn)?;
        if let Some(reason) = email.skipped {
            let rcpt_to: Option<String> = people::table
                .find(email.recipient_id)
                .select(people::email)
                .first::<Option<String>>(conn)
                .optional()?
                .flatten();
            let entry = NewEmailLogEntry {
                reason: Some(reason),
                rcpt_to,
                mail_from: Some(mail_from.to_string()),
                outbox_id: Some(id),
                conversation_id: email.conversation_id,
                rule: Some(email.source),
                ..NewEmailLogEntry::outbound(LogStatus::Skipped)
            };
            email_log::write(conn, &[entry])?;
        } else {
            ids.push(id);
        }
    }
    Ok(ids)
}

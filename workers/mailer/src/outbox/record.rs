//! Recording how each outbox email ended, only where the claim still holds, with a log row for
//! each; in one transaction, kept trying through a short database outage (the emails went out
//! already).

use std::sync::Arc;

use diesel::prelude::*;
use tidings_common::db::email_log;
use tidings_common::db::models::{LogStatus, NewEmailLogEntry, OutboxState};
use tidings_common::db::schema::outbox_emails;
use tidings_common::{Error, Result, clock};

use super::Outbox;
use super::OutboxEnd;
use crate::retry;

impl Outbox<'_> {
    pub(super) async fn record_outbox(&self, ended: Vec<OutboxEnd>) -> Result<()> {
        if ended.is_empty() {
            return Ok(());
        }
        let ended = Arc::new(ended);
        let mail_from = self.config.mail_from.clone();
        retry::record_through_outage(self.db, "outbox emails", move |conn| {
            conn.transaction(|conn| {
                for end in ended.iter() {
                    record(conn, end, &mail_from)?;
                }
                Ok::<_, Error>(())
            })
        })
        .await
    }
}

fn record(conn: &mut PgConnection, end: &OutboxEnd, mail_from: &str) -> Result<()> {
    let now = clock::now();
    let claim = outbox_emails::table
        .find(end.id)
        .filter(outbox_emails::state.eq(OutboxState::Sending))
        .filter(outbox_emails::claimed_at.eq(end.claimed_at));
    let updated: Option<(Option<i64>, String, String)> = diesel::update(claim)
        .set((
            outbox_emails::state.eq(end.state),
            outbox_emails::reason.eq(&end.reason),
            outbox_emails::smtp_reply.eq(&end.smtp_reply),
            outbox_emails::sent_at.eq((end.state == OutboxState::Sent).then_some(now)),
            outbox_emails::due_at.eq(end.retry_at.unwrap_or(now)),
        ))
        .returning((
            outbox_emails::conversation_id,
            outbox_emails::source,
            outbox_emails::email_message_id,
        ))
        .get_result(conn)
        .optional()?;
    // Not updated: the claim was taken over; its new owner records it.
    let Some((conversation_id, source, message_id_header)) = updated else {
        return Ok(());
    };
    let kind = tidings_common::observe::outbox_source(&source);
    match end.state {
        OutboxState::Sent => tidings_common::observe::email(kind, "sent"),
        OutboxState::Failed => tidings_common::observe::email(kind, "failed"),
        OutboxState::Pending => tidings_common::observe::email(kind, "deferred"),
        _ => {}
    }
    if let Some(kept) = &end.source {
        email_log::keep_sources(conn, &[(&message_id_header, &kept.raw, kept.cut)])?;
    }
    let entry = NewEmailLogEntry {
        reason: end.reason.clone(),
        outbox_id: Some(end.id),
        conversation_id,
        mail_from: Some(mail_from.to_string()),
        rcpt_to: end.rcpt_to.clone(),
        subject: end.subject.clone(),
        message_id_header: Some(message_id_header),
        smtp_reply: end.smtp_reply.clone(),
        rule: Some(source),
        ..NewEmailLogEntry::outbound(LogStatus::from(end.state))
    };
    email_log::write(conn, &[entry])?;
    Ok(())
}

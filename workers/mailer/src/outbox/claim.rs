//! Claiming due outbox emails and making every send-time check again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use tidings_common::db::email_log;
use tidings_common::db::models::{LogStatus, NewEmailLogEntry, OutboxEmail, OutboxState, Person};
use tidings_common::db::schema::*;
use tidings_common::db::states::claimable;
use tidings_common::{Result, clock};

/// A claimed outbox email and what the send-time checks found.
pub(super) struct Claimed {
    pub email: OutboxEmail,
    pub claimed_at: DateTime<Utc>,
    pub recipient: Option<Person>,
    /// Why it must not go, if it must not.
    pub skip: Option<String>,
}

/// Claims the due ones of `ids` and makes the send-time checks, in one transaction.
pub(super) fn claim(conn: &mut PgConnection, ids: &[i64], lease: Duration) -> Result<Vec<Claimed>> {
    conn.transaction(|conn| {
        let now = clock::now();
        let lapsed = clock::before(lease);
        let reason = claimable::gave_up_reason();
        let failed: Vec<(i64, Option<i64>, String)> = diesel::update(
            outbox_emails::table
                .filter(outbox_emails::id.eq_any(ids))
                .filter(claimable::poisoned_outbox_emails(lapsed)),
        )
        .set((
            outbox_emails::state.eq(OutboxState::Failed),
            outbox_emails::reason.eq(&reason),
        ))
        .returning((
            outbox_emails::id,
            outbox_emails::conversation_id,
            outbox_emails::email_message_id,
        ))
        .get_results(conn)?;
        if !failed.is_empty() {
            tracing::error!(count = failed.len(), reason, "outbox emails given up");
            let entries: Vec<NewEmailLogEntry> = failed
                .into_iter()
                .map(|(id, conversation_id, message_id)| NewEmailLogEntry {
                    reason: Some(reason.clone()),
                    outbox_id: Some(id),
                    conversation_id,
                    message_id_header: Some(message_id),
                    ..NewEmailLogEntry::outbound(LogStatus::Failed)
                })
                .collect();
            email_log::write(conn, &entries)?;
        }
        let rows: Vec<OutboxEmail> = diesel::update(
            outbox_emails::table
                .filter(outbox_emails::id.eq_any(ids))
                .filter(outbox_emails::due_at.le(now))
                .filter(claimable::outbox_emails(lapsed)),
        )
        .set((
            outbox_emails::state.eq(OutboxState::Sending),
            outbox_emails::claimed_at.eq(now),
            outbox_emails::attempts.eq(outbox_emails::attempts + 1),
        ))
        .returning(OutboxEmail::as_returning())
        .get_results(conn)?;
        let mut claimed = Vec::with_capacity(rows.len());
        for email in rows {
            let recipient: Option<Person> = people::table
                .find(email.recipient_id)
                .select(Person::as_select())
                .first(conn)
                .optional()?;
            let skip = send_time_check(conn, &email, recipient.as_ref())?;
            claimed.push(Claimed {
                claimed_at: email.claimed_at.unwrap_or(now),
                email,
                recipient,
                skip,
            });
        }
        Ok(claimed)
    })
}

/// Why an outbox email must not go now, if it must not.
fn send_time_check(
    conn: &mut PgConnection,
    email: &OutboxEmail,
    recipient: Option<&Person>,
) -> QueryResult<Option<String>> {
    let Some(recipient) = recipient else {
        return Ok(Some("recipient no longer exists".into()));
    };
    if !recipient.active {
        return Ok(Some("recipient is inactive".into()));
    }
    let Some(address) = &recipient.email else {
        return Ok(Some("recipient has no email address".into()));
    };
    let suppressed: bool = email_suppressions::table
        .find(address.to_ascii_lowercase())
        .select(email_suppressions::suppressed)
        .first(conn)
        .optional()?
        .unwrap_or(false);
    if suppressed {
        return Ok(Some("address suppressed after bounces".into()));
    }
    if let Some(event) = &email.system_event {
        let (enabled, can_disable): (bool, bool) = system_notifications::table
            .find(event)
            .select((
                system_notifications::enabled,
                system_notifications::can_disable,
            ))
            .first(conn)?;
        if !enabled && can_disable {
            return Ok(Some(format!("system notification {event} is disabled")));
        }
        let preference = match event.as_str() {
            "item_assigned" | "item_unassigned" => Some(("email_assignments", "E1")),
            "project_member_added" => Some(("email_project_members", "E2")),
            _ => None,
        };
        if let Some((column, rule)) = preference {
            let (assignments, members): (bool, bool) = user_preferences::table
                .find(recipient.id)
                .select((
                    user_preferences::email_assignments,
                    user_preferences::email_project_members,
                ))
                .first(conn)
                .optional()?
                .unwrap_or((false, false));
            let on = if column == "email_assignments" {
                assignments
            } else {
                members
            };
            if !on {
                return Ok(Some(format!("{rule}: {column} is off")));
            }
        }
    }
    if email.source.starts_with("automation:") {
        let enabled: Option<bool> = match email.automation_id {
            Some(id) => automations::table
                .find(id)
                .select(automations::enabled)
                .first(conn)
                .optional()?,
            None => None,
        };
        match enabled {
            None => return Ok(Some("its automation was deleted".into())),
            Some(false) => return Ok(Some("its automation is disabled".into())),
            Some(true) => {}
        }
    }
    Ok(None)
}

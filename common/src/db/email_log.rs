//! The email log (SPEC L1): the one writer of its rows and the one query over them, used by
//! the api's `/email-log`, the `tidings log` command and every role that sends or receives.

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::models::{EmailLogEntry, NewEmailLogEntry};
use super::schema::email_log;
use super::states::{Direction, LogStatus};

impl NewEmailLogEntry {
    /// A row for an email that went (or was meant to go) out, with every detail unset.
    pub fn outbound(status: LogStatus) -> Self {
        Self::new(Direction::Outbound, status)
    }

    /// A row for an email that came in, with every detail unset.
    pub fn inbound(status: LogStatus) -> Self {
        Self::new(Direction::Inbound, status)
    }

    fn new(direction: Direction, status: LogStatus) -> Self {
        NewEmailLogEntry {
            direction,
            status,
            reason: None,
            notification_id: None,
            message_id: None,
            conversation_id: None,
            mail_from: None,
            rcpt_to: None,
            subject: None,
            message_id_header: None,
            smtp_reply: None,
            rule: None,
            outbox_id: None,
            action: None,
            inbound_email_id: None,
        }
    }
}

/// Appends rows to the log.
pub fn write(conn: &mut PgConnection, entries: &[NewEmailLogEntry]) -> QueryResult<usize> {
    if entries.is_empty() {
        return Ok(0);
    }
    diesel::insert_into(email_log::table)
        .values(entries)
        .execute(conn)
}

/// Keeps sent emails' sources (Message-ID, the bytes accepted, whether they were cut) for the
/// log's raw view; a source already kept for a Message-ID stays. The rows go in in Message-ID
/// order, so two transactions that both record an email (a claim taken over after its lease)
/// wait for each other instead of deadlocking on the key.
pub fn keep_sources(
    conn: &mut PgConnection,
    sources: &[(&str, &[u8], bool)],
) -> QueryResult<usize> {
    use super::schema::outbound_sources as o;
    if sources.is_empty() {
        return Ok(0);
    }
    let mut sources: Vec<&(&str, &[u8], bool)> = sources.iter().collect();
    sources.sort_by_key(|(id, _, _)| *id);
    sources.dedup_by_key(|(id, _, _)| *id);
    let rows: Vec<_> = sources
        .into_iter()
        .map(|(id, raw, cut)| {
            (
                o::message_id_header.eq(*id),
                o::raw.eq(*raw),
                o::cut.eq(*cut),
            )
        })
        .collect();
    diesel::insert_into(o::table)
        .values(rows)
        .on_conflict_do_nothing()
        .execute(conn)
}

/// Which rows of the log to read.
#[derive(Debug, Clone)]
pub struct LogFilter {
    pub message_id: Option<i64>,
    /// Rows written at or after this time.
    pub since: Option<DateTime<Utc>>,
    pub direction: Option<Direction>,
    pub status: Option<LogStatus>,
    /// Rows from or to this address (any case).
    pub address: Option<String>,
    pub conversation_id: Option<i64>,
    /// Rows written before this time.
    pub until: Option<DateTime<Utc>>,
    /// Rows with an id below this (the next page; queued emails come on the first page).
    pub before: Option<i64>,
    /// Most rows to return.
    pub limit: i64,
}

impl LogFilter {
    /// Every row, newest first, at most `limit`.
    pub fn latest(limit: i64) -> LogFilter {
        LogFilter {
            message_id: None,
            since: None,
            direction: None,
            status: None,
            address: None,
            conversation_id: None,
            until: None,
            before: None,
            limit,
        }
    }
}

/// Rows of the log matching `filter`, newest first. An email still waiting to go (a
/// notification in its seen window or waiting for a retry, an outbox email not yet sent) has
/// no row yet: it is listed as `queued`, read from its own row, with id 0. Nothing is written
/// for it, so the hot path pays nothing for the listing.
pub fn query(conn: &mut PgConnection, filter: &LogFilter) -> QueryResult<Vec<EmailLogEntry>> {
    let mut rows = if filter.status == Some(LogStatus::Queued) {
        Vec::new()
    } else {
        logged(conn, filter)?
    };
    let wants_queued = filter.direction != Some(Direction::Inbound)
        && filter.status.is_none_or(|s| s == LogStatus::Queued)
        && filter.before.is_none();
    if wants_queued {
        rows.extend(queued(conn, filter)?);
        rows.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        rows.truncate(usize::try_from(filter.limit).unwrap_or(0));
    }
    Ok(rows)
}

/// The rows written to the log.
fn logged(conn: &mut PgConnection, filter: &LogFilter) -> QueryResult<Vec<EmailLogEntry>> {
    let mut q = email_log::table
        .select(EmailLogEntry::as_select())
        .order(email_log::id.desc())
        .limit(filter.limit)
        .into_boxed();
    if let Some(message_id) = filter.message_id {
        q = q.filter(email_log::message_id.eq(message_id));
    }
    if let Some(since) = filter.since {
        q = q.filter(email_log::created_at.ge(since));
    }
    if let Some(direction) = filter.direction {
        q = q.filter(email_log::direction.eq(direction));
    }
    if let Some(status) = filter.status {
        q = q.filter(email_log::status.eq(status));
    }
    if let Some(address) = &filter.address {
        let address = address.to_ascii_lowercase();
        q = q.filter(
            diesel::dsl::sql::<diesel::sql_types::Bool>("(lower(mail_from) = ")
                .bind::<diesel::sql_types::Text, _>(address.clone())
                .sql(" OR lower(rcpt_to) = ")
                .bind::<diesel::sql_types::Text, _>(address)
                .sql(")"),
        );
    }
    if let Some(conversation) = filter.conversation_id {
        q = q.filter(email_log::conversation_id.eq(conversation));
    }
    if let Some(until) = filter.until {
        q = q.filter(email_log::created_at.lt(until));
    }
    if let Some(before) = filter.before {
        q = q.filter(email_log::id.lt(before));
    }
    q.load(conn)
}

/// Emails waiting to go, as `queued` rows: pending notifications and outbox emails.
fn queued(conn: &mut PgConnection, filter: &LogFilter) -> QueryResult<Vec<EmailLogEntry>> {
    use super::schema::{conversations, notifications, outbox_emails, people};
    use super::states::SendState;
    let mut waiting = notifications::table
        .inner_join(people::table.on(people::id.eq(notifications::recipient_id)))
        .inner_join(conversations::table.on(conversations::id.eq(notifications::conversation_id)))
        .filter(notifications::is_open)
        .filter(notifications::state.eq(SendState::Pending))
        .select((
            notifications::id,
            notifications::created_at,
            notifications::due_at,
            notifications::attempts,
            notifications::message_id,
            notifications::conversation_id,
            notifications::email_message_id,
            people::email,
            conversations::subject,
        ))
        .order(notifications::id.desc())
        .limit(filter.limit)
        .into_boxed();
    if let Some(message_id) = filter.message_id {
        waiting = waiting.filter(notifications::message_id.eq(message_id));
    }
    if let Some(since) = filter.since {
        waiting = waiting.filter(notifications::created_at.ge(since));
    }
    if let Some(conversation) = filter.conversation_id {
        waiting = waiting.filter(notifications::conversation_id.eq(conversation));
    }
    if let Some(address) = &filter.address {
        waiting = waiting.filter(
            diesel::dsl::sql::<diesel::sql_types::Bool>("lower(people.email) = ")
                .bind::<diesel::sql_types::Text, _>(address.to_ascii_lowercase()),
        );
    }
    type Waiting = (
        i64,
        DateTime<Utc>,
        DateTime<Utc>,
        i32,
        i64,
        i64,
        String,
        Option<String>,
        String,
    );
    let mut rows: Vec<EmailLogEntry> = waiting
        .load::<Waiting>(conn)?
        .into_iter()
        .map(
            |(
                id,
                created_at,
                due_at,
                attempts,
                message_id,
                conversation_id,
                header,
                rcpt_to,
                subject,
            )| {
                EmailLogEntry {
                    id: 0,
                    created_at,
                    entry: NewEmailLogEntry {
                        reason: Some(waiting_reason(attempts, due_at)),
                        notification_id: Some(id),
                        message_id: Some(message_id),
                        conversation_id: Some(conversation_id),
                        rcpt_to,
                        subject: Some(subject),
                        message_id_header: Some(header),
                        ..NewEmailLogEntry::outbound(LogStatus::Queued)
                    },
                }
            },
        )
        .collect();
    if filter.message_id.is_none() {
        type Outboxed = (
            i64,
            DateTime<Utc>,
            DateTime<Utc>,
            i32,
            Option<i64>,
            String,
            String,
            i64,
        );
        let mut pending = outbox_emails::table
            .filter(outbox_emails::state.eq(SendState::Pending))
            .into_boxed();
        if let Some(conversation) = filter.conversation_id {
            pending = pending.filter(outbox_emails::conversation_id.eq(conversation));
        }
        if let Some(since) = filter.since {
            pending = pending.filter(outbox_emails::created_at.ge(since));
        }
        let outboxed: Vec<Outboxed> = pending
            .select((
                outbox_emails::id,
                outbox_emails::created_at,
                outbox_emails::due_at,
                outbox_emails::attempts,
                outbox_emails::conversation_id,
                outbox_emails::email_message_id,
                outbox_emails::source,
                outbox_emails::recipient_id,
            ))
            .order(outbox_emails::id.desc())
            .limit(filter.limit)
            .load(conn)?;
        let recipients: Vec<i64> = outboxed.iter().map(|o| o.7).collect();
        let addresses: std::collections::HashMap<i64, Option<String>> = people::table
            .filter(people::id.eq_any(&recipients))
            .select((people::id, people::email))
            .load::<(i64, Option<String>)>(conn)?
            .into_iter()
            .collect();
        let wanted = filter.address.as_deref().map(str::to_ascii_lowercase);
        let outboxed = outboxed.into_iter().filter(|o| match &wanted {
            Some(address) => addresses
                .get(&o.7)
                .cloned()
                .flatten()
                .is_some_and(|a| a.to_ascii_lowercase() == *address),
            None => true,
        });
        rows.extend(outboxed.map(
            |(id, created_at, due_at, attempts, conversation_id, header, source, recipient)| {
                EmailLogEntry {
                    id: 0,
                    created_at,
                    entry: NewEmailLogEntry {
                        reason: Some(waiting_reason(attempts, due_at)),
                        outbox_id: Some(id),
                        conversation_id,
                        rcpt_to: addresses.get(&recipient).cloned().flatten(),
                        message_id_header: Some(header),
                        rule: Some(source),
                        ..NewEmailLogEntry::outbound(LogStatus::Queued)
                    },
                }
            },
        ));
    }
    Ok(rows)
}

fn waiting_reason(attempts: i32, due_at: DateTime<Utc>) -> String {
    let due = due_at.format("%Y-%m-%d %H:%M:%S UTC");
    if attempts == 0 {
        format!("queued, due at {due}")
    } else {
        format!("queued for attempt {}, due at {due}", attempts + 1)
    }
}

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

/// Which rows of the log to read.
#[derive(Debug, Clone)]
pub struct LogFilter {
    pub message_id: Option<i64>,
    /// Rows written at or after this time.
    pub since: Option<DateTime<Utc>>,
    pub direction: Option<Direction>,
    pub status: Option<LogStatus>,
    /// Most rows to return.
    pub limit: i64,
}

/// Rows of the log matching `filter`, newest first.
pub fn query(conn: &mut PgConnection, filter: &LogFilter) -> QueryResult<Vec<EmailLogEntry>> {
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
    q.load(conn)
}

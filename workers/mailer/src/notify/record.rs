//! Recording how every claim of a set ended: one conditional update for all of them (only
//! where the claim still holds), and the email-log rows of those updated, in one transaction,
//! kept trying through a short database outage.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};
use tidings_common::db::email_log;
use tidings_common::db::models::{
    LogStatus, NewEmailLogEntry, Notification, NotificationState, SkipReason,
};
use tidings_common::{Error, Result, clock, live};
use tracing::warn;

use super::Notifications;
use super::{Ended, Finish};
use crate::retry;

/// The columns one end writes.
struct RowEnd {
    state: NotificationState,
    /// `None`: nothing to log (a released companion).
    log_status: Option<LogStatus>,
    reason: Option<String>,
    rule: Option<String>,
    reply: Option<String>,
    due_at: Option<DateTime<Utc>>,
    sent_at: Option<DateTime<Utc>>,
    coalesced_into: Option<i64>,
}

impl Finish {
    fn row(self, n: &Notification, now: DateTime<Utc>) -> RowEnd {
        let end = |state, log_status, reason| RowEnd {
            state,
            log_status,
            reason,
            rule: None,
            reply: None,
            due_at: None,
            sent_at: None,
            coalesced_into: None,
        };
        match self {
            Finish::Sent { reply } => RowEnd {
                reply: Some(reply),
                sent_at: Some(now),
                ..end(NotificationState::Sent, Some(LogStatus::Sent), None)
            },
            Finish::Skipped(v) => RowEnd {
                rule: Some(v.rule.to_string()),
                ..end(
                    NotificationState::Skipped,
                    Some(LogStatus::Skipped),
                    v.reason.map(|r| r.to_string()),
                )
            },
            Finish::Coalesced { into } => RowEnd {
                sent_at: Some(now),
                coalesced_into: Some(into),
                ..end(
                    NotificationState::Skipped,
                    Some(LogStatus::Skipped),
                    Some(SkipReason::Coalesced.to_string()),
                )
            },
            Finish::Failed { reason, reply } => RowEnd {
                reply,
                ..end(
                    NotificationState::Failed,
                    Some(LogStatus::Failed),
                    Some(reason),
                )
            },
            Finish::Deferred {
                reason,
                reply,
                retry_in,
            } => RowEnd {
                reply,
                due_at: Some(now + clock::chrono_duration(retry_in)),
                ..end(
                    NotificationState::Pending,
                    Some(LogStatus::Deferred),
                    Some(reason),
                )
            },
            Finish::Released => RowEnd {
                rule: n.rule.clone(),
                reply: n.smtp_reply.clone(),
                ..end(NotificationState::Pending, None, n.reason.clone())
            },
            // Not logged now: the email log lists it as queued, with its new due time.
            Finish::Held {
                until,
                detail,
                rule,
            } => RowEnd {
                rule: Some(rule.into()),
                due_at: Some(until),
                ..end(NotificationState::Pending, None, Some(detail))
            },
        }
    }
}

/// Counts one end in the metrics: emailed or skipped (by reason), the email's outcome, and
/// how late a sent email went out: sent − notified − window (notified is when dispatch wrote
/// the notification, right after the post), so a retried email's lateness includes its retries.
fn observe_end(n: &Notification, end: &RowEnd, now: DateTime<Utc>, window: std::time::Duration) {
    use tidings_common::observe;
    match (end.state, end.log_status) {
        (NotificationState::Sent, _) => {
            observe::notification_ended(true, None);
            observe::email("notification", "sent");
            let late = (now - n.created_at).to_std().unwrap_or_default();
            observe::lateness(late.saturating_sub(window));
        }
        (NotificationState::Skipped, _) => {
            observe::notification_ended(false, end.reason.as_deref());
        }
        (NotificationState::Failed, _) => observe::email("notification", "failed"),
        (NotificationState::Pending, Some(LogStatus::Deferred)) => {
            observe::email("notification", "deferred")
        }
        _ => {}
    }
}

/// Columns of the record statement, one array per column.
#[derive(Default, Clone)]
struct RecordRows {
    id: Vec<i64>,
    claimed_at: Vec<DateTime<Utc>>,
    state: Vec<NotificationState>,
    reason: Vec<Option<String>>,
    rule: Vec<Option<String>>,
    smtp_reply: Vec<Option<String>>,
    due_at: Vec<Option<DateTime<Utc>>>,
    sent_at: Vec<Option<DateTime<Utc>>>,
    coalesced_into: Vec<Option<i64>>,
}

impl Notifications<'_> {
    /// Records the end of every claim; see the module documentation.
    /// The live `delivery` events of the sends are written in the same transaction and
    /// announced after it commits.
    pub(super) async fn record_all(
        &self,
        ended: Vec<Ended>,
        publisher: &tidings_common::amqp::Publisher,
    ) -> Result<()> {
        if ended.is_empty() {
            return Ok(());
        }
        let mut ended = ended;
        // Rows are updated in id order, so two transactions that end the same notification
        // (a claim taken over after its lease) wait for each other instead of deadlocking.
        ended.sort_by_key(|e| e.claim.notification.id);
        let sources: Vec<(String, crate::pipeline::Source)> = ended
            .iter_mut()
            .filter_map(|e| {
                let kept = e.source.take()?;
                Some((e.claim.notification.email_message_id.clone(), kept))
            })
            .collect();
        let (rows, log) = self.rows(ended);
        let (updated, total, live) =
            retry::record_through_outage(self.db, "notifications", move |conn| {
                conn.transaction(|conn| {
                    let kept: Vec<(&str, &[u8], bool)> = sources
                        .iter()
                        .map(|(id, s)| (id.as_str(), s.raw.as_slice(), s.cut))
                        .collect();
                    email_log::keep_sources(conn, &kept)?;
                    record(conn, &rows, &log)
                })
            })
            .await?;
        if updated < total {
            warn!(
                taken_over = total - updated,
                "claims were taken over before they finished; leaving them to their new owner"
            );
        }
        tidings_common::announce::Announcements::live(live)
            .publish_or_leave_to_sweep(Ok(publisher.clone()), self.topology)
            .await;
        Ok(())
    }

    /// The record statement's columns, and the log row of each end worth logging.
    fn rows(&self, ended: Vec<Ended>) -> (RecordRows, HashMap<i64, NewEmailLogEntry>) {
        let now = clock::now();
        let mut rows = RecordRows::default();
        let mut log = HashMap::new();
        for e in ended {
            let n = &e.claim.notification;
            let end = e.finish.row(n, now);
            observe_end(n, &end, now, self.config.seen_window);
            if let Some(status) = end.log_status {
                let entry = NewEmailLogEntry {
                    reason: end.reason.clone(),
                    notification_id: Some(n.id),
                    message_id: Some(n.message_id),
                    conversation_id: Some(n.conversation_id),
                    mail_from: Some(self.config.mail_from.clone()),
                    rcpt_to: e.rcpt_to,
                    subject: e.subject,
                    message_id_header: Some(n.email_message_id.clone()),
                    smtp_reply: end.reply.clone(),
                    rule: end.rule.clone(),
                    ..NewEmailLogEntry::outbound(status)
                };
                log.insert(n.id, entry);
            }
            rows.id.push(n.id);
            rows.claimed_at.push(e.claim.claimed_at);
            rows.state.push(end.state);
            rows.reason.push(end.reason);
            rows.rule.push(end.rule);
            rows.smtp_reply.push(end.reply);
            rows.due_at.push(end.due_at);
            rows.sent_at.push(end.sent_at);
            rows.coalesced_into.push(end.coalesced_into);
        }
        (rows, log)
    }
}

/// Applies the ends where the claim still holds, logs those and writes their live `delivery`
/// events; returns (updated, total, the people with new events).
fn record(
    conn: &mut PgConnection,
    rows: &RecordRows,
    log: &HashMap<i64, NewEmailLogEntry>,
) -> Result<(usize, usize, Vec<i64>)> {
    #[derive(QueryableByName)]
    struct Updated {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let updated: Vec<Updated> = diesel::sql_query(
        "WITH v AS (
             SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[],
                                  $5::text[], $6::text[], $7::timestamptz[],
                                  $8::timestamptz[], $9::bigint[])
               AS v(id, claimed_at, state, reason, rule, smtp_reply, due_at, sent_at, coalesced_into))
         UPDATE notifications n
            SET state = v.state, reason = v.reason, rule = v.rule, smtp_reply = v.smtp_reply,
                due_at = COALESCE(v.due_at, n.due_at), sent_at = v.sent_at,
                coalesced_into = v.coalesced_into, updated_at = now()
           FROM v
          WHERE n.id = v.id AND n.state = $10 AND n.claimed_at = v.claimed_at
         RETURNING n.id",
    )
    .bind::<Array<BigInt>, _>(&rows.id)
    .bind::<Array<Timestamptz>, _>(&rows.claimed_at)
    .bind::<Array<Text>, _>(&rows.state)
    .bind::<Array<Nullable<Text>>, _>(&rows.reason)
    .bind::<Array<Nullable<Text>>, _>(&rows.rule)
    .bind::<Array<Nullable<Text>>, _>(&rows.smtp_reply)
    .bind::<Array<Nullable<Timestamptz>>, _>(&rows.due_at)
    .bind::<Array<Nullable<Timestamptz>>, _>(&rows.sent_at)
    .bind::<Array<Nullable<BigInt>>, _>(&rows.coalesced_into)
    .bind::<Text, _>(NotificationState::Sending)
    .load(conn)?;
    let entries: Vec<NewEmailLogEntry> = updated
        .iter()
        .filter_map(|u| log.get(&u.id).cloned())
        .collect();
    email_log::write(conn, &entries)?;
    let state_of: HashMap<i64, NotificationState> = rows
        .id
        .iter()
        .copied()
        .zip(rows.state.iter().copied())
        .collect();
    let ended: Vec<(i64, &str)> = updated
        .iter()
        .filter_map(|u| match state_of.get(&u.id) {
            Some(NotificationState::Sent) => Some((u.id, "sent")),
            Some(NotificationState::Failed) => Some((u.id, "failed")),
            _ => None,
        })
        .collect();
    let live = live::emailed(conn, &ended)?;
    Ok::<_, Error>((updated.len(), rows.id.len(), live))
}

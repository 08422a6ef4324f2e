//! Delivery status (D8): one query for every notification of a set of messages, shown as
//! whoever asks may see it: an admin sees addresses, SMTP replies and the deciding rule
//! ([`for_admin`]); a person's messenger sees who was notified, saw and was emailed, without
//! addresses ([`for_person`]).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};
use serde::Serialize;
use tidings_common::db::states::NotificationState;

use crate::error::ApiResult;

/// One notification with everything either view shows.
#[derive(Debug, QueryableByName)]
struct Row {
    #[diesel(sql_type = BigInt)]
    notification_id: i64,
    #[diesel(sql_type = BigInt)]
    message_id: i64,
    #[diesel(sql_type = BigInt)]
    recipient_id: i64,
    #[diesel(sql_type = Text)]
    recipient_name: String,
    #[diesel(sql_type = Text)]
    recipient_kind: String,
    #[diesel(sql_type = Timestamptz)]
    notified_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    seen_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Text)]
    state: String,
    /// The state of the notification whose email carried this one, when coalesced.
    #[diesel(sql_type = Nullable<Text>)]
    carrier_state: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    reason: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    rule: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    coalesced_into: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    emailed_to: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    sent_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    carrier_sent_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    smtp_reply: Option<String>,
    #[diesel(sql_type = Text)]
    email_message_id: String,
    #[diesel(sql_type = Timestamptz)]
    due_at: DateTime<Utc>,
}

/// Every notification of `message_ids`, by message and recipient.
fn rows(conn: &mut PgConnection, message_ids: &[i64]) -> QueryResult<Vec<Row>> {
    diesel::sql_query(
        "SELECT n.id AS notification_id, n.message_id, n.recipient_id,
                p.name AS recipient_name, p.kind AS recipient_kind, n.created_at AS notified_at,
                CASE WHEN sc.last_seen_message_id >= n.message_id THEN sc.seen_at END AS seen_at,
                n.state, carrier.state AS carrier_state, n.reason, n.rule, n.coalesced_into,
                CASE WHEN n.state = $2 OR n.coalesced_into IS NOT NULL THEN p.email END AS emailed_to,
                n.sent_at, carrier.sent_at AS carrier_sent_at,
                COALESCE(n.smtp_reply, carrier.smtp_reply) AS smtp_reply,
                COALESCE(carrier.email_message_id, n.email_message_id) AS email_message_id, n.due_at
         FROM notifications n
         JOIN people p ON p.id = n.recipient_id
         LEFT JOIN notifications carrier ON carrier.id = n.coalesced_into
         LEFT JOIN seen_cursors sc
           ON sc.person_id = n.recipient_id AND sc.conversation_id = n.conversation_id
         WHERE n.message_id = ANY($1)
         ORDER BY n.message_id, n.recipient_id",
    )
    .bind::<Array<BigInt>, _>(message_ids)
    .bind::<Text, _>(NotificationState::Sent)
    .load(conn)
}

/// One recipient of a message as an admin sees it: notified, seen, emailed or skipped, with
/// the address, the SMTP reply and the deciding rule (SPEC D8).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    notification_id: i64,
    recipient_id: i64,
    recipient_name: String,
    recipient_kind: String,
    notified_at: DateTime<Utc>,
    seen_at: Option<DateTime<Utc>>,
    email_state: String,
    email_reason: Option<String>,
    email_rule: Option<String>,
    coalesced_into: Option<i64>,
    emailed_to: Option<String>,
    emailed_at: Option<DateTime<Utc>>,
    smtp_reply: Option<String>,
    email_message_id: String,
    due_at: DateTime<Utc>,
}

/// One recipient's delivery of a message, as the messenger shows it (no addresses).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MeDelivery {
    message_id: i64,
    person_id: i64,
    person: String,
    notified_at: DateTime<Utc>,
    seen_at: Option<DateTime<Utc>>,
    /// `pending`, `sending`, `sent`, `skipped` or `failed`; for a message that went out in
    /// another one's email, that email's state.
    email_state: String,
    emailed_at: Option<DateTime<Utc>>,
    /// Why it was not emailed, or `bounced`.
    email_reason: Option<String>,
}

/// What an admin sees of the deliveries of `message_ids`, by message and recipient.
pub fn for_admin(conn: &mut PgConnection, message_ids: &[i64]) -> ApiResult<Vec<Delivery>> {
    Ok(rows(conn, message_ids)?
        .into_iter()
        .map(|r| Delivery {
            notification_id: r.notification_id,
            recipient_id: r.recipient_id,
            recipient_name: r.recipient_name,
            recipient_kind: r.recipient_kind,
            notified_at: r.notified_at,
            seen_at: r.seen_at,
            email_state: r.state,
            email_reason: r.reason,
            email_rule: r.rule,
            coalesced_into: r.coalesced_into,
            emailed_to: r.emailed_to,
            emailed_at: r.sent_at,
            smtp_reply: r.smtp_reply,
            email_message_id: r.email_message_id,
            due_at: r.due_at,
        })
        .collect())
}

/// What a person sees of the deliveries of `message_ids` (no addresses, no SMTP replies):
/// a notification that went out in another one's email shows that email's state and time.
pub fn for_person(conn: &mut PgConnection, message_ids: &[i64]) -> ApiResult<Vec<MeDelivery>> {
    Ok(rows(conn, message_ids)?
        .into_iter()
        .map(|r| MeDelivery {
            message_id: r.message_id,
            person_id: r.recipient_id,
            person: r.recipient_name,
            notified_at: r.notified_at,
            seen_at: r.seen_at,
            email_state: match r.coalesced_into {
                Some(_) => r.carrier_state.unwrap_or(r.state),
                None => r.state,
            },
            emailed_at: r.sent_at.or(r.carrier_sent_at),
            email_reason: r.reason,
        })
        .collect())
}

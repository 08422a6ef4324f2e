//! Delivery status as a person's messenger shows it (D8): notified, seen, emailed; no
//! addresses.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};
use serde::Serialize;

use crate::error::ApiResult;

/// One recipient's delivery of a message, as the messenger shows it (no addresses).
#[derive(Debug, QueryableByName, Serialize, utoipa::ToSchema)]
pub struct MeDelivery {
    #[diesel(sql_type = BigInt)]
    message_id: i64,
    #[diesel(sql_type = BigInt)]
    person_id: i64,
    #[diesel(sql_type = Text)]
    person: String,
    #[diesel(sql_type = Timestamptz)]
    notified_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    seen_at: Option<DateTime<Utc>>,
    /// `pending`, `sending`, `sent`, `skipped` or `failed`.
    #[diesel(sql_type = Text)]
    email_state: String,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    emailed_at: Option<DateTime<Utc>>,
    /// Why it was not emailed, or `bounced`.
    #[diesel(sql_type = Nullable<Text>)]
    email_reason: Option<String>,
}

pub fn deliveries_of(conn: &mut PgConnection, message_ids: &[i64]) -> ApiResult<Vec<MeDelivery>> {
    Ok(diesel::sql_query(
        "SELECT n.message_id, n.recipient_id AS person_id, p.name AS person,
                n.created_at AS notified_at,
                CASE WHEN sc.last_seen_message_id >= n.message_id THEN sc.seen_at END AS seen_at,
                CASE WHEN n.coalesced_into IS NOT NULL THEN carrier.state ELSE n.state END AS email_state,
                COALESCE(n.sent_at, carrier.sent_at) AS emailed_at, n.reason AS email_reason
         FROM notifications n
         JOIN people p ON p.id = n.recipient_id
         LEFT JOIN notifications carrier ON carrier.id = n.coalesced_into
         LEFT JOIN seen_cursors sc
           ON sc.person_id = n.recipient_id AND sc.conversation_id = n.conversation_id
         WHERE n.message_id = ANY($1)
         ORDER BY n.message_id, n.recipient_id",
    )
    .bind::<diesel::sql_types::Array<BigInt>, _>(message_ids)
    .load(conn)?)
}

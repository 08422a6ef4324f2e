//! Claiming due notifications for sending, with each the same recipient's other pending
//! notifications in the same conversation (to coalesce them into one email).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text, Timestamptz};
use tidings_common::db::email_log;
use tidings_common::db::models::{LogStatus, NewEmailLogEntry, Notification, NotificationState};
use tidings_common::db::schema::notifications;
use tidings_common::db::states::claimable;
use tidings_common::{Result, clock};

use super::Claim;

/// What the claim step found.
pub(super) struct Claimed {
    /// Grouped by (recipient, conversation); the first of each group came due first.
    pub groups: Vec<Vec<Claim>>,
    /// Ids that could not be claimed, with their state (`None`: no such notification).
    pub unclaimed: Vec<(i64, Option<NotificationState>)>,
}

/// Claims the due notifications `ids` (`pending`, or `sending` whose `lease` ran out) and
/// their companions, in one transaction.
///
/// Transaction-scoped advisory locks per (recipient, conversation), taken in key order, make
/// workers whose batches come due together take turns, so the first claims them all and the
/// others find their notifications already taken.
///
/// The claim commits without waiting for its WAL to reach the disk (`synchronous_commit =
/// off` for this transaction alone): it is a lease, not a result. The record that follows the
/// send commits durably, and its flush takes the claim's WAL with it. A claim lost to a
/// server crash leaves its notifications `pending`, so they are claimed and sent again, as a
/// claim whose worker died is after its lease; no email is lost either way. A claim then no
/// longer waits for the disk while a checkpoint or a vacuum keeps it busy.
pub(super) fn claim_all(conn: &mut PgConnection, ids: &[i64], lease: Duration) -> Result<Claimed> {
    conn.transaction(|conn| {
        diesel::sql_query("SET LOCAL synchronous_commit = off").execute(conn)?;
        lock_conversations(conn, ids)?;
        let now = clock::now();
        give_up_poisoned(conn, ids, now, clock::before(lease))?;
        let claimed = claim_due(conn, ids, now, clock::before(lease))?;
        let unclaimed = unclaimed_states(conn, ids, &claimed)?;
        let Some(first) = claimed.first() else {
            return Ok(Claimed {
                groups: Vec::new(),
                unclaimed,
            });
        };
        // The stored claim time (microseconds) is what later conditional updates compare.
        let claimed_at = first.claimed_at.unwrap_or(now);
        let companions = claim_companions(conn, &claimed, claimed_at)?;
        Ok(Claimed {
            groups: group(claimed.into_iter().chain(companions), claimed_at),
            unclaimed,
        })
    })
}

fn lock_conversations(conn: &mut PgConnection, ids: &[i64]) -> QueryResult<usize> {
    diesel::sql_query(
        "SELECT pg_advisory_xact_lock(k) FROM (
             SELECT DISTINCT hashtextextended(recipient_id || ':' || conversation_id, 0) AS k
             FROM notifications WHERE id = ANY($1) ORDER BY k) keys",
    )
    .bind::<Array<BigInt>, _>(ids)
    .execute(conn)
}

/// Fails the ones of `ids` that were claimed too often without ever finishing, with a log row
/// each; they are then no longer claimable, so they can never hold up a batch or a sweep.
fn give_up_poisoned(
    conn: &mut PgConnection,
    ids: &[i64],
    now: DateTime<Utc>,
    lapsed: DateTime<Utc>,
) -> QueryResult<()> {
    let reason = claimable::gave_up_reason();
    let failed: Vec<Notification> = diesel::update(
        notifications::table
            .filter(notifications::id.eq_any(ids))
            .filter(claimable::poisoned_notifications(lapsed)),
    )
    .set((
        notifications::state.eq(NotificationState::Failed),
        notifications::reason.eq(&reason),
        notifications::updated_at.eq(now),
    ))
    .returning(Notification::as_returning())
    .get_results(conn)?;
    if failed.is_empty() {
        return Ok(());
    }
    tracing::error!(count = failed.len(), reason, "notifications given up");
    let entries: Vec<NewEmailLogEntry> = failed
        .iter()
        .map(|n| NewEmailLogEntry {
            reason: Some(reason.clone()),
            notification_id: Some(n.id),
            message_id: Some(n.message_id),
            conversation_id: Some(n.conversation_id),
            message_id_header: Some(n.email_message_id.clone()),
            ..NewEmailLogEntry::outbound(LogStatus::Failed)
        })
        .collect();
    email_log::write(conn, &entries)?;
    Ok(())
}

/// Moves the claimable ones of `ids` to `sending`, stamped `now`.
fn claim_due(
    conn: &mut PgConnection,
    ids: &[i64],
    now: DateTime<Utc>,
    lapsed: DateTime<Utc>,
) -> QueryResult<Vec<Notification>> {
    diesel::update(
        notifications::table
            .filter(notifications::id.eq_any(ids))
            .filter(claimable::notifications_by_id(lapsed)),
    )
    .set((
        notifications::state.eq(NotificationState::Sending),
        notifications::claimed_at.eq(now),
        notifications::attempts.eq(notifications::attempts + 1),
        notifications::updated_at.eq(now),
    ))
    .returning(Notification::as_returning())
    .get_results(conn)
}

/// The states of the ids that were not claimed.
fn unclaimed_states(
    conn: &mut PgConnection,
    ids: &[i64],
    claimed: &[Notification],
) -> QueryResult<Vec<(i64, Option<NotificationState>)>> {
    let unclaimed: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !claimed.iter().any(|n| n.id == *id))
        .collect();
    if unclaimed.is_empty() {
        return Ok(Vec::new());
    }
    let states: BTreeMap<i64, NotificationState> = notifications::table
        .filter(notifications::id.eq_any(&unclaimed))
        .select((notifications::id, notifications::state))
        .load::<(i64, NotificationState)>(conn)?
        .into_iter()
        .collect();
    Ok(unclaimed
        .into_iter()
        .map(|id| (id, states.get(&id).copied()))
        .collect())
}

/// Claims the pending notifications of the same recipients in the same conversations,
/// through the (recipient, conversation) index (not `notifications_open`, for the reason given
/// at `claimable::notifications_by_id`).
fn claim_companions(
    conn: &mut PgConnection,
    claimed: &[Notification],
    claimed_at: DateTime<Utc>,
) -> QueryResult<Vec<Notification>> {
    let recipients: Vec<i64> = claimed.iter().map(|n| n.recipient_id).collect();
    let conversations: Vec<i64> = claimed.iter().map(|n| n.conversation_id).collect();
    diesel::sql_query(
        "UPDATE notifications n SET state = $4, claimed_at = $3, updated_at = now()
         FROM unnest($1::bigint[], $2::bigint[]) AS p(recipient_id, conversation_id)
         WHERE n.recipient_id = p.recipient_id AND n.conversation_id = p.conversation_id
           AND n.state = $5
         RETURNING n.*",
    )
    .bind::<Array<BigInt>, _>(&recipients)
    .bind::<Array<BigInt>, _>(&conversations)
    .bind::<Timestamptz, _>(claimed_at)
    .bind::<Text, _>(NotificationState::Sending)
    .bind::<Text, _>(NotificationState::Pending)
    .load(conn)
}

/// Groups claims by (recipient, conversation); in each, the notification that came due first
/// leads, claimed ones before companions.
fn group(
    notifications: impl Iterator<Item = Notification>,
    claimed_at: DateTime<Utc>,
) -> Vec<Vec<Claim>> {
    let mut groups: BTreeMap<(i64, i64), Vec<Claim>> = BTreeMap::new();
    for n in notifications {
        groups
            .entry((n.recipient_id, n.conversation_id))
            .or_default()
            .push(Claim {
                claimed_at,
                notification: n,
            });
    }
    groups
        .into_values()
        .map(|mut group| {
            group.sort_by_key(|c| {
                (
                    c.notification.state == NotificationState::Pending,
                    c.notification.message_id,
                )
            });
            group
        })
        .collect()
}

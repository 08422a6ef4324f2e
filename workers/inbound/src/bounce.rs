//! Bounces: marking the email a delivery status notification reports on as `bounced` (log and
//! delivery status), and suppressing the address after a hard bounce or the third soft one.

use diesel::prelude::*;
use tidings_common::Result;
use tidings_common::db::models::{Direction, LogStatus, NotificationState, OutboxState};
use tidings_common::db::schema::{email_log, notifications, people};
use tidings_common::inbound::InboundReport;

use crate::process::Disposition;

/// A bounce: marks the email it reports on as `bounced` (log and delivery status), and
/// suppresses the address after a hard bounce or the third soft one.
pub(crate) fn record_bounce(
    conn: &mut PgConnection,
    report: &InboundReport,
) -> Result<Disposition> {
    let bounce = report.bounce.clone().unwrap_or_default();
    let status = bounce.status.clone().unwrap_or_else(|| "5.0.0".into());
    let mut addresses = bounce.recipients.clone();
    if let Some(original) = &bounce.original_message_id {
        let bounced = mark_bounced(conn, original, &status)?;
        if addresses.is_empty() {
            addresses = bounced;
        }
    }
    let mut suppressed = Vec::new();
    for address in &addresses {
        if count_bounce(conn, address, bounce.permanent, &status)? {
            suppressed.push(address.clone());
        }
    }
    Ok(Disposition::Ignored(format!(
        "bounce {status} ({}) for {}{}",
        if bounce.permanent { "hard" } else { "soft" },
        if addresses.is_empty() {
            "an unknown address".to_string()
        } else {
            addresses.join(", ")
        },
        if suppressed.is_empty() {
            String::new()
        } else {
            format!("; suppressed: {}", suppressed.join(", "))
        },
    )))
}

/// Marks the sent email with Message-ID `original` as bounced, in the log and on its
/// notification or outbox row; returns the addresses it went to.
fn mark_bounced(conn: &mut PgConnection, original: &str, status: &str) -> Result<Vec<String>> {
    use tidings_common::db::schema::outbox_emails as o;
    let reply = format!("DSN {status}");
    diesel::update(
        email_log::table
            .filter(email_log::message_id_header.eq(original))
            .filter(email_log::direction.eq(Direction::Outbound))
            .filter(email_log::status.eq(LogStatus::Sent)),
    )
    .set((
        email_log::status.eq(LogStatus::Bounced),
        email_log::smtp_reply.eq(&reply),
    ))
    .execute(conn)?;
    let mut recipients: Vec<i64> = diesel::update(
        notifications::table
            .filter(notifications::email_message_id.eq(original))
            .filter(notifications::state.eq(NotificationState::Sent)),
    )
    .set((
        notifications::reason.eq("bounced"),
        notifications::smtp_reply.eq(&reply),
    ))
    .returning(notifications::recipient_id)
    .get_results::<i64>(conn)?;
    recipients.extend(
        diesel::update(
            o::table
                .filter(o::email_message_id.eq(original))
                .filter(o::state.eq(OutboxState::Sent)),
        )
        .set((o::reason.eq("bounced"), o::smtp_reply.eq(&reply)))
        .returning(o::recipient_id)
        .get_results::<i64>(conn)?,
    );
    let addresses: Vec<Option<String>> = people::table
        .filter(people::id.eq_any(&recipients))
        .select(people::email)
        .load(conn)?;
    Ok(addresses
        .into_iter()
        .flatten()
        .map(|a| a.to_ascii_lowercase())
        .collect())
}

/// Counts one bounce for `address`; returns whether the address is now suppressed (after a
/// hard bounce, or the third soft one).
fn count_bounce(
    conn: &mut PgConnection,
    address: &str,
    permanent: bool,
    status: &str,
) -> Result<bool> {
    use tidings_common::db::schema::email_suppressions as s;
    let hard = i32::from(permanent);
    let soft = i32::from(!permanent);
    Ok(diesel::insert_into(s::table)
        .values((
            s::address.eq(address),
            s::hard_bounces.eq(hard),
            s::soft_bounces.eq(soft),
            s::suppressed.eq(permanent),
            s::last_status.eq(status),
        ))
        .on_conflict(s::address)
        .do_update()
        .set((
            s::hard_bounces.eq(s::hard_bounces + hard),
            s::soft_bounces.eq(s::soft_bounces + soft),
            s::suppressed.eq(s::suppressed.or(diesel::dsl::sql::<diesel::sql_types::Bool>(
                &format!(
                    "{permanent} OR email_suppressions.soft_bounces + {soft} >= {SOFT_BOUNCES_TO_SUPPRESS}"
                ),
            ))),
            s::last_status.eq(status),
            s::updated_at.eq(diesel::dsl::now),
        ))
        .returning(s::suppressed)
        .get_result(conn)?)
}

/// Soft bounces in a row after which an address is suppressed.
const SOFT_BOUNCES_TO_SUPPRESS: i32 = 3;

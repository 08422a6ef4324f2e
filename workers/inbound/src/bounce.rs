//! Bounces: marking the email a delivery status notification proves it reports on as `bounced`
//! (log and delivery status), and suppressing the address after a hard bounce or the third soft
//! one.

use diesel::prelude::*;
use tidings_common::db::models::{Direction, LogStatus, NotificationState, OutboxState};
use tidings_common::db::schema::{email_log, notifications};
use tidings_common::inbound::InboundReport;
use tidings_common::mail::{self, SentEmail};
use tidings_common::{Config, Result};

use crate::set::{Disposition, Envelope};

/// A bounce, honoured only when it proves which of our emails failed: it came back to that
/// email's signed envelope sender (VERP), or it cites the Message-ID of an email we sent. Then
/// that email is marked `bounced` (log and delivery status) and the address *it was sent to*
/// counts a bounce (suppressed after a hard one or the third soft one). The addresses a report
/// names are never trusted on their own: anything else that looks like a bounce is logged and
/// suppresses nobody. A report that says `delivered`, `relayed`, `expanded` or `delayed` is
/// logged as what it is and changes nothing.
pub(crate) fn record_bounce(
    conn: &mut PgConnection,
    config: &Config,
    report: &InboundReport,
    envelope: &Envelope,
    bounced: &mut Vec<i64>,
) -> Result<Disposition> {
    let bounce = report.bounce.clone().unwrap_or_default();
    if let Some(what) = bounce.not_a_failure() {
        return Ok(Disposition::Ignored(format!(
            "a delivery report saying {what}; no delivery state changed, nobody suppressed"
        )));
    }
    let status = bounce.status.clone().unwrap_or_else(|| "5.0.0".into());
    let mut originals = Vec::new();
    for rcpt in &envelope.rcpts {
        let Some((local, domain)) = rcpt.rsplit_once('@') else {
            continue;
        };
        if !domain.eq_ignore_ascii_case(&config.reply_domain) {
            continue;
        }
        if let Some(email) = SentEmail::from_bounce_local(local, &config.token_secret) {
            originals.extend(message_id_of(conn, email)?);
        }
    }
    let proof = if originals.is_empty() {
        originals.extend(bounce.original_message_id.clone());
        "the Message-ID it cites"
    } else {
        "its signed bounce address"
    };
    if originals.is_empty() {
        return Ok(Disposition::Ignored(
            "looks like a bounce but proves nothing about our mail (not sent to a signed bounce address, cites no Message-ID of ours); nobody suppressed".into(),
        ));
    }
    let mut addresses = Vec::new();
    for original in &originals {
        addresses.extend(mark_bounced(conn, original, &status, bounced)?);
    }
    if addresses.is_empty() {
        return Ok(Disposition::Ignored(format!(
            "a bounce about no email we sent (by {proof}); nobody suppressed"
        )));
    }
    let mut suppressed = Vec::new();
    for address in &addresses {
        if count_bounce(conn, address, bounce.permanent, &status)? {
            suppressed.push(mail::mask_address(address));
        }
    }
    let masked: Vec<String> = addresses.iter().map(|a| mail::mask_address(a)).collect();
    Ok(Disposition::Ignored(format!(
        "bounce {status} ({}) for {}, proven by {proof}{}",
        if bounce.permanent { "hard" } else { "soft" },
        masked.join(", "),
        if suppressed.is_empty() {
            String::new()
        } else {
            format!("; suppressed: {}", suppressed.join(", "))
        },
    )))
}

/// The Message-ID of the email a signed bounce address stands for.
fn message_id_of(conn: &mut PgConnection, email: SentEmail) -> Result<Option<String>> {
    use tidings_common::db::schema::outbox_emails as o;
    Ok(match email {
        SentEmail::Notification(id) => notifications::table
            .find(id)
            .select(notifications::email_message_id)
            .first(conn)
            .optional()?,
        SentEmail::Outbox(id) => o::table
            .find(id)
            .select(o::email_message_id)
            .first(conn)
            .optional()?,
    })
}

/// Marks the sent email with Message-ID `original` as bounced, in the log and on its
/// notification or outbox row; returns the addresses it was sent to (none if we never sent it).
/// The bounced notifications are added to `bounced`, for their live `delivery` events.
fn mark_bounced(
    conn: &mut PgConnection,
    original: &str,
    status: &str,
    bounced: &mut Vec<i64>,
) -> Result<Vec<String>> {
    use tidings_common::db::schema::outbox_emails as o;
    let reply = format!("DSN {status}");
    let ours = email_log::table
        .filter(email_log::message_id_header.eq(original))
        .filter(email_log::direction.eq(Direction::Outbound));
    // A later report on the same email (a delay notice, then the failure) counts again.
    let sent_to: Vec<Option<String>> = ours
        .filter(email_log::status.eq_any([LogStatus::Sent, LogStatus::Bounced]))
        .select(email_log::rcpt_to)
        .load(conn)?;
    diesel::update(ours.filter(email_log::status.eq(LogStatus::Sent)))
        .set((
            email_log::status.eq(LogStatus::Bounced),
            email_log::smtp_reply.eq(&reply),
        ))
        .execute(conn)?;
    let before = bounced.len();
    bounced.extend(
        diesel::update(
            notifications::table
                .filter(notifications::email_message_id.eq(original))
                .filter(notifications::state.eq(NotificationState::Sent)),
        )
        .set((
            notifications::reason.eq("bounced"),
            notifications::smtp_reply.eq(&reply),
        ))
        .returning(notifications::id)
        .get_results::<i64>(conn)?,
    );
    for _ in before..bounced.len() {
        tidings_common::observe::email("notification", "bounced");
    }
    diesel::update(
        o::table
            .filter(o::email_message_id.eq(original))
            .filter(o::state.eq(OutboxState::Sent)),
    )
    .set((o::reason.eq("bounced"), o::smtp_reply.eq(&reply)))
    .returning(o::source)
    .get_results::<String>(conn)?
    .iter()
    .for_each(|source| {
        use tidings_common::observe;
        observe::email(observe::outbox_source(source), "bounced");
    });
    let mut addresses: Vec<String> = sent_to
        .into_iter()
        .flatten()
        .map(|a| a.to_ascii_lowercase())
        .collect();
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
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
